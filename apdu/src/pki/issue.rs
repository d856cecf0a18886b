//! Host-side issuance of Imprint certificates and personalizer certificate requests (`std`).
//!
//! Every function here returns a [`Certificate`] that was parsed back through
//! [`Certificate::from_der`] and whose signature was checked against the issuer, so what we
//! issue always passes our own parser and [`verify_issued_by`].

use std::string::String;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use std::vec::Vec;

use der::{
    DateTime, Decode, Encode, Tag, Tagged,
    asn1::{Any, BitString, ObjectIdentifier, OctetString},
    pem::LineEnding,
};
use p384::ecdsa::{
    DerSignature, Signature, SigningKey, VerifyingKey,
    signature::{self, Keypair, Signer, Verifier, hazmat::PrehashSigner},
};
use sha2::{Digest, Sha384};
use spki::DynSignatureAlgorithmIdentifier;
use x509_cert::{
    attr::AttributeTypeAndValue,
    builder::{Builder, CertificateBuilder, profile::BuilderProfile},
    certificate::TbsCertificate,
    ext::{
        Extension,
        pkix::{
            AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage,
            SubjectKeyIdentifier,
        },
    },
    name::{Name, RdnSequence, RelativeDistinguishedName},
    request::{CertReq, RequestBuilder},
    serial_number::SerialNumber,
    spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef},
    time::Time,
};

use super::{
    Certificate, MODULE_CN_PREFIX, NONCE_LEN, PkiError, Role, check_signature_algorithm,
    is_serial_hex, key_identifier, oid, parse_public_key_sec1, parse_spki, serial_from_public_key,
    serial_hex, verify_issued_by, verify_self_signed_root,
};

/// PEM label of certificates.
pub const PEM_LABEL_CERTIFICATE: &str = "CERTIFICATE";

/// PEM label of PKCS#10 certificate requests.
pub const PEM_LABEL_CERTIFICATE_REQUEST: &str = "CERTIFICATE REQUEST";

/// Maximum length of a common name in bytes (X.520 `ub-common-name`).
pub const MAX_COMMON_NAME_LEN: usize = 64;

/// Length in bytes of random certificate serial numbers.
pub const CERT_SERIAL_LEN: usize = 16;

const SECONDS_PER_YEAR: u64 = 365 * 24 * 60 * 60;

/// Errors of certificate issuance and PEM handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// A profile check failed (input certificate, request, or the issued certificate itself).
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The X.509 builder failed.
    #[error("certificate builder error: {0}")]
    Builder(#[from] x509_cert::builder::Error),
    /// DER encoding or decoding failed.
    #[error("DER error: {0}")]
    Der(#[from] der::Error),
    /// PEM encoding or decoding failed.
    #[error("PEM error: {0}")]
    Pem(#[from] der::pem::Error),
    /// A PEM block has an unexpected label.
    #[error("unexpected PEM label {found:?}, expected {expected:?}")]
    PemLabel {
        /// The label required here.
        expected: &'static str,
        /// The label found.
        found: String,
    },
    /// The PEM input contains no certificate.
    #[error("no certificate in PEM input")]
    NoCertificate,
    /// The issuer certificate does not have a role allowed to issue this certificate.
    #[error("issuer has role {found}, expected one of {expected:?}")]
    WrongIssuerRole {
        /// Roles allowed to issue this certificate.
        expected: &'static [Role],
        /// The issuer certificate's role.
        found: Role,
    },
    /// The role given to [`self_signed_root`] is not a root role.
    #[error("{0} is not a root role")]
    NotARootRole(Role),
    /// The issuer's private key does not belong to the issuer certificate.
    #[error("issuer key does not match the issuer certificate")]
    IssuerKeyMismatch,
    /// The common name is empty, too long or contains control characters.
    #[error("invalid common name: {0}")]
    InvalidCommonName(&'static str),
    /// A module serial is not 16 lowercase hex characters.
    #[error("invalid module serial (expected 16 lowercase hex characters)")]
    InvalidModuleSerial,
    /// The system clock is before the Unix epoch or a time computation overflowed.
    #[error("system clock or time arithmetic error")]
    Clock,
    /// The operating system random number generator failed.
    #[error("random number generator failure: {0}")]
    Random(getrandom::Error),
}

/// A validity period in seconds since the Unix epoch (notBefore < notAfter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore, seconds since the Unix epoch.
    pub not_before_unix: u64,
    /// notAfter, seconds since the Unix epoch.
    pub not_after_unix: u64,
}

impl Validity {
    /// A validity period from `not_before_unix` to `not_after_unix`; requires notBefore < notAfter.
    pub fn new(not_before_unix: u64, not_after_unix: u64) -> Result<Self, IssueError> {
        if not_before_unix >= not_after_unix {
            return Err(PkiError::InvalidValidity.into());
        }
        Ok(Self {
            not_before_unix,
            not_after_unix,
        })
    }

    /// From now (whole seconds) for `years` years of 365 days.
    pub fn years_from_now(years: u32) -> Result<Self, IssueError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IssueError::Clock)?
            .as_secs();
        let end = u64::from(years)
            .checked_mul(SECONDS_PER_YEAR)
            .and_then(|d| now.checked_add(d))
            .ok_or(IssueError::Clock)?;
        Self::new(now, end)
    }

    /// This period cut down to lie within `issuer`'s validity (nesting is required by
    /// [`verify_issued_by`]); fails if nothing remains.
    pub fn clamped_to(self, issuer: &Certificate) -> Result<Self, IssueError> {
        Self::new(
            self.not_before_unix.max(issuer.not_before_unix()),
            self.not_after_unix.min(issuer.not_after_unix()),
        )
    }

    fn within(&self, cert: &Certificate) -> bool {
        self.not_before_unix >= cert.not_before_unix()
            && self.not_after_unix <= cert.not_after_unix()
    }

    fn to_x509(self) -> Result<x509_cert::time::Validity, IssueError> {
        Ok(x509_cert::time::Validity::new(
            unix_to_time(self.not_before_unix)?,
            unix_to_time(self.not_after_unix)?,
        ))
    }
}

/// Length in bytes of a SHA-384 digest, what an [`IssuerSigner`] signs.
pub const SHA384_DIGEST_LEN: usize = 48;

/// A private key that signs certificates: ECDSA P-384 over a SHA-384 digest.
///
/// Implemented for [`SigningKey`] (a key in memory); a key held in an HSM implements it too, so
/// an issuer's private key never has to leave the token. The trait is object safe:
/// [`IssuerKey`] holds a `&dyn IssuerSigner`, to which a `&SigningKey` coerces at the struct
/// literal.
pub trait IssuerSigner {
    /// The public half of the key.
    fn public_key(&self) -> VerifyingKey;

    /// Signs a SHA-384 `digest` as it is (no further hashing).
    ///
    /// Fails when the key cannot sign (an HSM error, a logged-out session, …); the cause is
    /// kept as the error's source.
    fn sign_sha384_digest(
        &self,
        digest: &[u8; SHA384_DIGEST_LEN],
    ) -> Result<Signature, signature::Error>;
}

impl IssuerSigner for SigningKey {
    fn public_key(&self) -> VerifyingKey {
        *self.verifying_key()
    }

    fn sign_sha384_digest(
        &self,
        digest: &[u8; SHA384_DIGEST_LEN],
    ) -> Result<Signature, signature::Error> {
        self.sign_prehash(digest)
    }
}

/// An issuing certificate together with its private key.
#[derive(Clone, Copy)]
pub struct IssuerKey<'a> {
    /// The issuer's certificate.
    pub cert: &'a Certificate,
    /// The issuer's private key; must match `cert`'s public key.
    pub key: &'a dyn IssuerSigner,
}

impl core::fmt::Debug for IssuerKey<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IssuerKey")
            .field("cert_role", &self.cert.role())
            .finish_non_exhaustive()
    }
}

/// Creates a self-signed root certificate of role `Manufacturer` or `Central` with subject
/// `CN=<common_name>`, signed by `key` (a [`SigningKey`] or any other [`IssuerSigner`]).
pub fn self_signed_root(
    role: Role,
    common_name: &str,
    key: &dyn IssuerSigner,
    validity: Validity,
) -> Result<Certificate, IssueError> {
    if !role.is_root() {
        return Err(IssueError::NotARootRole(role));
    }
    let name = common_name_to_name(common_name)?;
    let point = sec1_uncompressed(&key.public_key());
    let extensions = role_extensions(role, &point, None, None)?;
    let der = build_der(
        name.clone(),
        name,
        spki_from_point(&point)?,
        validity,
        extensions,
        key,
    )?;
    let cert = Certificate::from_der(&der)?;
    check_issued_role(&cert, role)?;
    verify_self_signed_root(&cert, role)?;
    Ok(cert)
}

/// Issues a `Personalizer` certificate for the key and common name of `request`. The issuer is
/// the `Manufacturer` or the `Central` root; issuing the same request with both gives two
/// certificates with the same subject and key.
pub fn personalizer_cert(
    issuer: IssuerKey<'_>,
    request: &CertificateRequest,
    validity: Validity,
) -> Result<Certificate, IssueError> {
    const ISSUERS: &[Role] = &[Role::Manufacturer, Role::Central];
    let subject = common_name_to_name(request.common_name())?;
    let point = sec1_uncompressed(request.public_key());
    issue(
        issuer,
        ISSUERS,
        Role::Personalizer,
        subject,
        &point,
        validity,
        None,
    )
}

/// Issues the `CentralDelivery` certificate: the personalization unit (issuer, a `Personalizer`
/// certificate and key) certifies the central root's subject name and public key. `validity`
/// must lie within both the personalizer's and the central root's validity.
pub fn central_delivery_cert(
    issuer: IssuerKey<'_>,
    central_root: &Certificate,
    validity: Validity,
) -> Result<Certificate, IssueError> {
    verify_self_signed_root(central_root, Role::Central)?;
    if !validity.within(central_root) {
        return Err(PkiError::NotYetValidForIssuer.into());
    }
    let subject = central_root.x509().tbs_certificate().subject().clone();
    let point = central_root.public_key_sec1();
    issue(
        issuer,
        &[Role::Personalizer],
        Role::CentralDelivery,
        subject,
        &point,
        validity,
        None,
    )
}

/// Issues a `ModuleIdentity` certificate (issuer: `Manufacturer` root) for the identity key
/// `identity_point_sec1` (uncompressed SEC1); the subject serial is
/// [`serial_from_public_key`] of that point.
pub fn identity_cert(
    issuer: IssuerKey<'_>,
    identity_point_sec1: &[u8],
    validity: Validity,
) -> Result<Certificate, IssueError> {
    parse_public_key_sec1(identity_point_sec1)?;
    let serial = serial_hex(&serial_from_public_key(identity_point_sec1));
    let subject = module_name(&serial)?;
    issue(
        issuer,
        &[Role::Manufacturer],
        Role::ModuleIdentity,
        subject,
        identity_point_sec1,
        validity,
        None,
    )
}

/// Issues a `ModuleKey` certificate (issuer: `Personalizer`) for module `serial` (16 lowercase
/// hex characters), module key `module_point_sec1` (uncompressed SEC1) and the module's
/// personalization `nonce`.
pub fn module_cert(
    issuer: IssuerKey<'_>,
    serial: &str,
    module_point_sec1: &[u8],
    nonce: &[u8; NONCE_LEN],
    validity: Validity,
) -> Result<Certificate, IssueError> {
    if !is_serial_hex(serial) {
        return Err(IssueError::InvalidModuleSerial);
    }
    parse_public_key_sec1(module_point_sec1)?;
    let subject = module_name(serial)?;
    issue(
        issuer,
        &[Role::Personalizer],
        Role::ModuleKey,
        subject,
        module_point_sec1,
        validity,
        Some(nonce),
    )
}

/// PEM (`CERTIFICATE`, LF line endings) of a certificate.
pub fn to_pem(cert: &Certificate) -> Result<String, IssueError> {
    Ok(der::pem::encode_string(
        PEM_LABEL_CERTIFICATE,
        LineEnding::LF,
        cert.der(),
    )?)
}

/// Parses one PEM `CERTIFICATE` block under the strict profile.
pub fn from_pem(pem: &str) -> Result<Certificate, IssueError> {
    let der = decode_pem(pem, PEM_LABEL_CERTIFICATE)?;
    Ok(Certificate::from_der(&der)?)
}

/// Parses a bundle of concatenated PEM blocks; every block must be a `CERTIFICATE` that passes
/// the strict profile. Text outside the blocks is ignored. Fails if there is no certificate.
pub fn certificates_from_pem_bundle(pem: &str) -> Result<Vec<Certificate>, IssueError> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    const DASHES: &str = "-----";
    let mut certs = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let block = rest
            .get(start..)
            .ok_or(der::pem::Error::PreEncapsulationBoundary)?;
        let end = block
            .find(END)
            .ok_or(der::pem::Error::PostEncapsulationBoundary)?;
        let after_end = block
            .get(end.saturating_add(END.len())..)
            .ok_or(der::pem::Error::PostEncapsulationBoundary)?;
        let close = after_end
            .find(DASHES)
            .ok_or(der::pem::Error::PostEncapsulationBoundary)?;
        let block_len = end
            .saturating_add(END.len())
            .saturating_add(close)
            .saturating_add(DASHES.len());
        let one = block
            .get(..block_len)
            .ok_or(der::pem::Error::PostEncapsulationBoundary)?;
        certs.push(from_pem(one)?);
        rest = block.get(block_len..).unwrap_or_default();
    }
    if certs.is_empty() {
        return Err(IssueError::NoCertificate);
    }
    Ok(certs)
}

/// Concatenated PEM of several certificates.
pub fn to_pem_bundle(certs: &[Certificate]) -> Result<String, IssueError> {
    certs.iter().map(to_pem).collect()
}

/// A PKCS#10 request made by a personalization unit for its own key, with subject
/// `CN=<common_name>`. Parsing checks canonical DER, ecdsa-with-SHA384, a P-384 named-curve
/// key (as for certificates) and the self-signature. Requested attributes and extensions are
/// ignored: the issued profile is fixed.
#[derive(Clone, Debug)]
pub struct CertificateRequest {
    der: Vec<u8>,
    common_name: String,
    public_key: VerifyingKey,
}

impl CertificateRequest {
    /// Creates and signs a request for `key` with subject `CN=<common_name>`.
    pub fn new(common_name: &str, key: &SigningKey) -> Result<Self, IssueError> {
        let subject = common_name_to_name(common_name)?;
        let request = RequestBuilder::new(subject)?.build::<_, DerSignature>(key)?;
        Self::from_der(&request.to_der()?)
    }

    /// Parses and verifies a DER request.
    pub fn from_der(der: &[u8]) -> Result<Self, IssueError> {
        let request = CertReq::from_der(der).map_err(PkiError::from)?;
        if request.to_der()? != der {
            return Err(PkiError::Malformed("non-canonical DER encoding").into());
        }
        check_signature_algorithm(&request.algorithm)?;
        let (public_key, _) = parse_spki(&request.info.public_key)?;
        let common_name = name_to_common_name(&request.info.subject)?;
        let info_der = request.info.to_der()?;
        let signature = request
            .signature
            .as_bytes()
            .and_then(|bytes| DerSignature::from_bytes(bytes).ok())
            .ok_or(PkiError::InvalidSignatureEncoding)?;
        public_key
            .verify(&info_der, &signature)
            .map_err(|_| PkiError::BadSignature)?;
        Ok(Self {
            der: der.to_vec(),
            common_name,
            public_key,
        })
    }

    /// Parses and verifies a PEM `CERTIFICATE REQUEST`.
    pub fn from_pem(pem: &str) -> Result<Self, IssueError> {
        Self::from_der(&decode_pem(pem, PEM_LABEL_CERTIFICATE_REQUEST)?)
    }

    /// The DER encoding.
    pub fn to_der(&self) -> Vec<u8> {
        self.der.clone()
    }

    /// PEM (`CERTIFICATE REQUEST`, LF line endings).
    pub fn to_pem(&self) -> Result<String, IssueError> {
        Ok(der::pem::encode_string(
            PEM_LABEL_CERTIFICATE_REQUEST,
            LineEnding::LF,
            &self.der,
        )?)
    }

    /// The requested common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// The requesting unit's public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.public_key
    }
}

// ---------------------------------------------------------------------------------------------

/// Builder profile with everything fixed in advance.
struct FixedProfile {
    subject: Name,
    issuer: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for FixedProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

#[allow(clippy::too_many_arguments)]
fn issue(
    issuer: IssuerKey<'_>,
    allowed_issuers: &'static [Role],
    role: Role,
    subject: Name,
    subject_point: &[u8],
    validity: Validity,
    nonce: Option<&[u8; NONCE_LEN]>,
) -> Result<Certificate, IssueError> {
    if !allowed_issuers.contains(&issuer.cert.role()) {
        return Err(IssueError::WrongIssuerRole {
            expected: allowed_issuers,
            found: issuer.cert.role(),
        });
    }
    if issuer.cert.public_key_sec1() != sec1_uncompressed(&issuer.key.public_key()) {
        return Err(IssueError::IssuerKeyMismatch);
    }
    if !validity.within(issuer.cert) {
        return Err(PkiError::NotYetValidForIssuer.into());
    }
    let issuer_point = issuer.cert.public_key_sec1();
    let extensions = role_extensions(role, subject_point, Some(&issuer_point), nonce)?;
    let issuer_name = issuer.cert.x509().tbs_certificate().subject().clone();
    let der = build_der(
        subject,
        issuer_name,
        spki_from_point(subject_point)?,
        validity,
        extensions,
        issuer.key,
    )?;
    let cert = Certificate::from_der(&der)?;
    check_issued_role(&cert, role)?;
    verify_issued_by(&cert, issuer.cert, 0)?;
    Ok(cert)
}

fn check_issued_role(cert: &Certificate, role: Role) -> Result<(), IssueError> {
    if cert.role() != role {
        return Err(PkiError::WrongRole { expected: role }.into());
    }
    Ok(())
}

/// Builds and signs a certificate with exactly the given fields; the result is not checked.
pub(crate) fn build_der(
    subject: Name,
    issuer: Name,
    spki: SubjectPublicKeyInfoOwned,
    validity: Validity,
    extensions: Vec<Extension>,
    signer: &dyn IssuerSigner,
) -> Result<Vec<u8>, IssueError> {
    let profile = FixedProfile {
        subject,
        issuer,
        extensions,
    };
    let builder = CertificateBuilder::new(profile, random_serial()?, validity.to_x509()?, spki)?;
    let cert = builder.build::<_, DerSignature>(&BuilderSigner(signer))?;
    Ok(cert.to_der()?)
}

/// Adapts an [`IssuerSigner`] to the traits the x509-cert builder wants: the TBS bytes are
/// hashed with SHA-384 here and the digest signed by the issuer's key.
struct BuilderSigner<'a>(&'a dyn IssuerSigner);

impl Keypair for BuilderSigner<'_> {
    type VerifyingKey = VerifyingKey;

    fn verifying_key(&self) -> VerifyingKey {
        self.0.public_key()
    }
}

impl DynSignatureAlgorithmIdentifier for BuilderSigner<'_> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(AlgorithmIdentifierOwned {
            oid: oid::ECDSA_WITH_SHA384,
            parameters: None,
        })
    }
}

impl PrehashSigner<Signature> for BuilderSigner<'_> {
    fn sign_prehash(&self, prehash: &[u8]) -> Result<Signature, signature::Error> {
        let digest: &[u8; SHA384_DIGEST_LEN] =
            prehash.try_into().map_err(|_| signature::Error::new())?;
        self.0.sign_sha384_digest(digest)
    }
}

impl Signer<DerSignature> for BuilderSigner<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<DerSignature, signature::Error> {
        let digest: [u8; SHA384_DIGEST_LEN] = Sha384::digest(msg).into();
        Ok(self.sign_prehash(&digest)?.to_der())
    }
}

/// The extensions of `role`'s profile, in a fixed order.
pub(crate) fn role_extensions(
    role: Role,
    subject_point: &[u8],
    issuer_point: Option<&[u8]>,
    nonce: Option<&[u8; NONCE_LEN]>,
) -> Result<Vec<Extension>, IssueError> {
    let mut exts = vec![
        extension(
            oid::BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: role.is_ca(),
                path_len_constraint: role.path_len(),
            },
        )?,
        extension(oid::KEY_USAGE, true, &KeyUsage(role.key_usage()))?,
        extension(
            oid::EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(role.purposes().to_vec()),
        )?,
        extension(
            oid::SUBJECT_KEY_IDENTIFIER,
            false,
            &SubjectKeyIdentifier(OctetString::new(key_identifier(subject_point).as_slice())?),
        )?,
    ];
    if let Some(point) = issuer_point {
        exts.push(extension(
            oid::AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(key_identifier(point).as_slice())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?);
    }
    if let Some(nonce) = nonce {
        exts.push(extension(
            oid::NONCE_EXTENSION,
            false,
            &OctetString::new(nonce.as_slice())?,
        )?);
    }
    Ok(exts)
}

/// An extension whose extnValue is the DER encoding of `value`.
pub(crate) fn extension<T: Encode>(
    extn_id: ObjectIdentifier,
    critical: bool,
    value: &T,
) -> Result<Extension, IssueError> {
    Ok(Extension {
        extn_id,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// SPKI of id-ecPublicKey / secp384r1 for an uncompressed SEC1 point (checked).
pub(crate) fn spki_from_point(point_sec1: &[u8]) -> Result<SubjectPublicKeyInfoOwned, IssueError> {
    parse_public_key_sec1(point_sec1)?;
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: oid::EC_PUBLIC_KEY,
            parameters: Some(Any::encode_from(&oid::SECP384R1)?),
        },
        subject_public_key: BitString::from_bytes(point_sec1)?,
    })
}

/// The uncompressed SEC1 encoding of a P-384 public key.
pub(crate) fn sec1_uncompressed(key: &VerifyingKey) -> Vec<u8> {
    key.to_sec1_point(false).as_bytes().to_vec()
}

/// A name built from `(attribute type, value)` pairs, one attribute per RDN, in order.
pub(crate) fn name_from_attributes(
    attributes: &[(ObjectIdentifier, Any)],
) -> Result<Name, IssueError> {
    let mut rdns = RdnSequence::default();
    for (oid, value) in attributes {
        rdns.push(RelativeDistinguishedName::try_from(vec![
            AttributeTypeAndValue {
                oid: *oid,
                value: value.clone(),
            },
        ])?);
    }
    Ok(Name::from_der(&rdns.to_der()?)?)
}

/// `CN=<common_name>` as a UTF8String.
fn common_name_to_name(common_name: &str) -> Result<Name, IssueError> {
    check_common_name(common_name)?;
    name_from_attributes(&[(
        oid::COMMON_NAME,
        Any::new(Tag::Utf8String, common_name.as_bytes())?,
    )])
}

/// `CN=Imprint module <serial>` (UTF8String) followed by `serialNumber=<serial>`
/// (PrintableString).
pub(crate) fn module_name(serial: &str) -> Result<Name, IssueError> {
    if !is_serial_hex(serial) {
        return Err(IssueError::InvalidModuleSerial);
    }
    let common_name = format!("{MODULE_CN_PREFIX}{serial}");
    name_from_attributes(&[
        (
            oid::COMMON_NAME,
            Any::new(Tag::Utf8String, common_name.as_bytes())?,
        ),
        (
            oid::SERIAL_NUMBER,
            Any::new(Tag::PrintableString, serial.as_bytes())?,
        ),
    ])
}

fn check_common_name(common_name: &str) -> Result<(), IssueError> {
    if common_name.is_empty() {
        return Err(IssueError::InvalidCommonName("empty"));
    }
    if common_name.len() > MAX_COMMON_NAME_LEN {
        return Err(IssueError::InvalidCommonName("longer than 64 bytes"));
    }
    if common_name.chars().any(char::is_control) {
        return Err(IssueError::InvalidCommonName("contains control characters"));
    }
    Ok(())
}

/// The common name of a request subject that is exactly one RDN holding one CN
/// (UTF8String or PrintableString).
fn name_to_common_name(name: &Name) -> Result<String, IssueError> {
    const BAD: IssueError = IssueError::InvalidCommonName("subject must be exactly one CN");
    let mut rdns = name.iter_rdn();
    let (Some(rdn), None) = (rdns.next(), rdns.next()) else {
        return Err(BAD);
    };
    let mut atvs = rdn.iter();
    let (Some(atv), None) = (atvs.next(), atvs.next()) else {
        return Err(BAD);
    };
    if atv.oid != oid::COMMON_NAME
        || !matches!(atv.value.tag(), Tag::Utf8String | Tag::PrintableString)
    {
        return Err(BAD);
    }
    let common_name = std::str::from_utf8(atv.value.value())
        .map_err(|_| IssueError::InvalidCommonName("not UTF-8"))?;
    check_common_name(common_name)?;
    Ok(common_name.to_owned())
}

fn decode_pem(pem: &str, expected: &'static str) -> Result<Vec<u8>, IssueError> {
    let (label, der) = der::pem::decode_vec(pem.trim().as_bytes())?;
    if label != expected {
        return Err(IssueError::PemLabel {
            expected,
            found: label.to_owned(),
        });
    }
    Ok(der)
}

/// A positive random serial number of exactly [`CERT_SERIAL_LEN`] bytes.
fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; CERT_SERIAL_LEN];
    getrandom::fill(&mut bytes).map_err(IssueError::Random)?;
    if let Some(first) = bytes.first_mut() {
        // Positive (top bit clear) and exactly 16 significant bytes (second bit set).
        *first = (*first & 0x7f) | 0x40;
    }
    Ok(SerialNumber::new(&bytes)?)
}

fn unix_to_time(unix: u64) -> Result<Time, IssueError> {
    let datetime = DateTime::from_unix_duration(Duration::from_secs(unix))
        .map_err(|_| PkiError::InvalidValidity)?;
    Ok(Time::from(datetime))
}
