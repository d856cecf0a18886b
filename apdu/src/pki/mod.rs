//! Imprint PKI: the strict X.509 certificate profile shared by security modules and host tools.
//!
//! Every certificate is X.509 v3, DER, ECDSA P-384 with SHA-384. A certificate's [`Role`] is
//! carried by an extendedKeyUsage purpose under the Imprint OID arc (see [`oid`]; the standard
//! TLS purposes some roles carry beside it are fixed by [`Role::purposes`]), and the
//! remaining extensions must match that role's profile exactly:
//!
//! | Role              | issuer                                 | cA    | pathLen | keyUsage (critical)                          |
//! |-------------------|----------------------------------------|-------|---------|----------------------------------------------|
//! | `Manufacturer`    | itself                                 | true  | absent  | keyCertSign, cRLSign                         |
//! | `Central`         | itself                                 | true  | absent  | keyCertSign, cRLSign, digitalSignature       |
//! | `Personalizer`    | Manufacturer, Central, CentralDelivery | true  | 0       | keyCertSign, digitalSignature                |
//! | `CentralDelivery` | Personalizer                           | true  | 1       | keyCertSign, cRLSign, digitalSignature       |
//! | `ModuleIdentity`  | Manufacturer                           | false | absent  | digitalSignature                             |
//! | `ModuleKey`       | Personalizer                           | false | absent  | digitalSignature                             |
//!
//! This module needs only `alloc`; issuance lives in the `std`-only `issue` submodule.

use alloc::{borrow::ToOwned, format, string::String, vec::Vec};
use core::fmt;

use der::{
    Decode, Encode, Tag, Tagged,
    asn1::{ObjectIdentifier, OctetStringRef},
    flagset::FlagSet,
};
use p384::ecdsa::{DerSignature, VerifyingKey, signature::Verifier};
use sha2::{Digest, Sha384};
use x509_cert::{
    certificate::Version,
    ext::{
        Extension,
        pkix::{
            AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
            SubjectKeyIdentifier,
        },
    },
    name::Name,
    spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned},
};

#[cfg(feature = "std")]
pub mod issue;

#[cfg(all(test, feature = "std"))]
mod tests;

/// Length in bytes of the nonce a module sends over the personalization channel and that the
/// personalization unit echoes in the module key certificate's NONCE extension.
pub const NONCE_LEN: usize = 16;

/// Length in bytes of a module serial; shown as `2 * SERIAL_LEN` lowercase hex characters.
pub const SERIAL_LEN: usize = 8;

/// Length in bytes of subject/authority key identifiers (first bytes of SHA-384 of the key).
pub const KEY_ID_LEN: usize = 20;

/// Length in bytes of an uncompressed SEC1 P-384 point (`0x04 || X || Y`).
pub const P384_POINT_LEN: usize = 97;

/// Prefix of the common name of module certificates; the module serial (hex) follows it.
pub const MODULE_CN_PREFIX: &str = "Imprint module ";

/// Object identifiers used by the Imprint profile.
pub mod oid {
    use der::asn1::ObjectIdentifier;

    /// Imprint base arc `1.3.6.1.4.1.32473.73`.
    ///
    /// PLACEHOLDER: `32473` is the IANA private enterprise number reserved for documentation
    /// (RFC 5612). It must be replaced by a registered PEN before certificates are issued in
    /// production; every Imprint OID below hangs off this arc.
    pub const IMPRINT_ARC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.73");

    /// NONCE certificate extension (`base.1.1`): extnValue is a DER OCTET STRING of exactly
    /// [`NONCE_LEN`](super::NONCE_LEN) bytes. Only in `ModuleKey` certificates, non-critical.
    pub const NONCE_EXTENSION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.73.1.1");

    /// Key purpose of the manufacturer root (`base.2.1`).
    pub const KP_MANUFACTURER: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.73.2.1");

    /// Key purpose of the central system key: central root and central delivery (`base.2.2`).
    pub const KP_CENTRAL: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.73.2.2");

    /// Key purpose of a personalization unit signing key (`base.2.3`).
    pub const KP_PERSONALIZER: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.73.2.3");

    /// Key purpose of a module identity key (`base.2.4`).
    pub const KP_MODULE_IDENTITY: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.73.2.4");

    /// Key purpose of a module (TLS client) key (`base.2.5`).
    pub const KP_MODULE: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.73.2.5");

    /// `id-kp-serverAuth` (RFC 5280): on the central root and central delivery certificates,
    /// so that TLS stacks accept them above the central system's TLS server certificate.
    pub const KP_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

    /// `id-kp-clientAuth` (RFC 5280): on module key certificates, and on the CA certificates
    /// above them (personalizer, central root, central delivery), because TLS stacks such as
    /// OpenSSL require every certificate of a client chain that has an extendedKeyUsage to
    /// include clientAuth.
    pub const KP_CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

    /// `id-ecPublicKey` (RFC 5480).
    pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

    /// `secp384r1` named curve (RFC 5480).
    pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

    /// `ecdsa-with-SHA384` (RFC 5758).
    pub const ECDSA_WITH_SHA384: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

    /// X.520 `commonName`.
    pub const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

    /// X.520 `serialNumber` attribute.
    pub const SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");

    /// `id-ce-subjectKeyIdentifier`.
    pub const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");

    /// `id-ce-keyUsage`.
    pub const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");

    /// `id-ce-basicConstraints`.
    pub const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

    /// `id-ce-authorityKeyIdentifier`.
    pub const AUTHORITY_KEY_IDENTIFIER: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.5.29.35");

    /// `id-ce-extKeyUsage`.
    pub const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
}

/// The role of a certificate in the Imprint PKI, derived from its extendedKeyUsage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Self-signed manufacturer root.
    Manufacturer,
    /// Self-signed central system root.
    Central,
    /// Personalization unit signing key, issued by the manufacturer root and by the central root.
    Personalizer,
    /// A personalization unit's certificate over the central system's key and name.
    CentralDelivery,
    /// Module identity key, issued by the manufacturer root.
    ModuleIdentity,
    /// Module key (TLS client), issued by a personalization unit; carries the module's nonce.
    ModuleKey,
}

impl Role {
    /// Whether certificates of this role are CA certificates (basicConstraints cA=TRUE).
    pub const fn is_ca(self) -> bool {
        matches!(
            self,
            Role::Manufacturer | Role::Central | Role::Personalizer | Role::CentralDelivery
        )
    }

    /// Whether certificates of this role are self-signed roots.
    pub const fn is_root(self) -> bool {
        matches!(self, Role::Manufacturer | Role::Central)
    }

    /// Whether certificates of this role have a module subject (CN + serialNumber).
    pub const fn is_module(self) -> bool {
        matches!(self, Role::ModuleIdentity | Role::ModuleKey)
    }

    /// The basicConstraints pathLenConstraint this role's certificates carry.
    pub const fn path_len(self) -> Option<u8> {
        match self {
            Role::Personalizer => Some(0),
            Role::CentralDelivery => Some(1),
            _ => None,
        }
    }

    /// The exact keyUsage bits this role's certificates carry.
    pub fn key_usage(self) -> FlagSet<KeyUsages> {
        match self {
            Role::Manufacturer => KeyUsages::KeyCertSign | KeyUsages::CRLSign,
            Role::Central | Role::CentralDelivery => {
                KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature
            }
            Role::Personalizer => KeyUsages::KeyCertSign | KeyUsages::DigitalSignature,
            Role::ModuleIdentity | Role::ModuleKey => KeyUsages::DigitalSignature.into(),
        }
    }

    /// The exact extendedKeyUsage purposes this role's certificates carry, in issuing order.
    ///
    /// Besides the role's Imprint purpose, which alone decides the role, the certificates on a
    /// module's TLS client chain carry `id-kp-clientAuth` (OpenSSL's `sslclient` purpose check
    /// requires it of every certificate in the chain that has an extendedKeyUsage), and the
    /// central system's certificates also carry `id-kp-serverAuth` (for its TLS server chain).
    pub const fn purposes(self) -> &'static [ObjectIdentifier] {
        match self {
            Role::Manufacturer => &[oid::KP_MANUFACTURER],
            Role::Central | Role::CentralDelivery => {
                &[oid::KP_SERVER_AUTH, oid::KP_CLIENT_AUTH, oid::KP_CENTRAL]
            }
            Role::Personalizer => &[oid::KP_CLIENT_AUTH, oid::KP_PERSONALIZER],
            Role::ModuleIdentity => &[oid::KP_MODULE_IDENTITY],
            Role::ModuleKey => &[oid::KP_CLIENT_AUTH, oid::KP_MODULE],
        }
    }

    /// The roles whose certificates may issue a certificate of this role (checked by
    /// [`verify_issued_by`]). A `CentralDelivery` certificate carries the central key, so it
    /// may stand in for the central root as issuer of `Personalizer` certificates.
    pub const fn allowed_issuers(self) -> &'static [Role] {
        match self {
            Role::Manufacturer => &[Role::Manufacturer],
            Role::Central => &[Role::Central],
            Role::Personalizer => &[Role::Manufacturer, Role::Central, Role::CentralDelivery],
            Role::CentralDelivery => &[Role::Personalizer],
            Role::ModuleIdentity => &[Role::Manufacturer],
            Role::ModuleKey => &[Role::Personalizer],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Errors of certificate parsing and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The input is not valid DER for the expected ASN.1 structure.
    #[error("DER decoding failed: {0}")]
    Der(der::ErrorKind),
    /// Valid DER, but the structure violates the profile in the way described.
    #[error("malformed certificate: {0}")]
    Malformed(&'static str),
    /// Bytes follow the outermost DER structure.
    #[error("trailing data after the DER structure")]
    TrailingData,
    /// The certificate is not X.509 v3.
    #[error("unsupported certificate version (only v3 is accepted)")]
    UnsupportedVersion,
    /// A signature algorithm other than ecdsa-with-SHA384 without parameters, or the two
    /// signature algorithm fields disagree.
    #[error("unsupported signature algorithm (only ecdsa-with-SHA384 is accepted)")]
    UnsupportedSignatureAlgorithm,
    /// The subject key is not id-ecPublicKey with namedCurve secp384r1 (explicit curve
    /// parameters, other curves and other algorithms are rejected).
    #[error("unsupported key algorithm (only id-ecPublicKey on namedCurve secp384r1)")]
    UnsupportedKeyAlgorithm,
    /// The subject public key is not a valid uncompressed P-384 point.
    #[error("invalid P-384 public key")]
    InvalidPublicKey,
    /// The signature value is not a strict DER ECDSA-Sig-Value with in-range scalars.
    #[error("invalid signature encoding")]
    InvalidSignatureEncoding,
    /// The same extension OID appears more than once.
    #[error("duplicate extension")]
    DuplicateExtension,
    /// A critical extension this profile does not know.
    #[error("unknown critical extension")]
    UnknownCriticalExtension,
    /// A required extension is absent.
    #[error("missing extension: {0}")]
    MissingExtension(&'static str),
    /// A known extension is malformed, has the wrong criticality, or carries unexpected values.
    #[error("malformed extension: {0}")]
    MalformedExtension(&'static str),
    /// The extensions or names contradict the profile of the certificate's role.
    #[error("certificate does not match its role profile: {0}")]
    ProfileViolation(&'static str),
    /// The certificate does not have the role required here.
    #[error("wrong certificate role, expected {expected}")]
    WrongRole {
        /// The role that was required.
        expected: Role,
    },
    /// A certificate of role `issuer` may not issue a certificate of role `child`.
    #[error("a {issuer} certificate may not issue a {child} certificate")]
    IssuerRoleNotAllowed {
        /// Role of the issued certificate.
        child: Role,
        /// Role of the would-be issuer.
        issuer: Role,
    },
    /// The would-be issuer is not a CA certificate.
    #[error("issuer is not a CA")]
    NotACa,
    /// The issuer's pathLenConstraint does not allow this many CA certificates below it.
    #[error("path length constraint exceeded")]
    PathLengthExceeded,
    /// The issuer lacks the keyCertSign key usage.
    #[error("issuer lacks keyCertSign")]
    KeyUsageMissing,
    /// The child's issuer name (or authority key identifier) does not match the issuer.
    #[error("issuer name or key identifier mismatch")]
    IssuerMismatch,
    /// The signature does not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// notBefore is not strictly before notAfter, or a validity cannot be represented.
    #[error("invalid validity period")]
    InvalidValidity,
    /// notAfter lies before the module's time watermark.
    #[error("certificate expired (notAfter before the watermark)")]
    Expired,
    /// The child's validity period is not nested within the issuer's validity period.
    #[error("certificate validity is not within the issuer's validity")]
    NotYetValidForIssuer,
    /// A module key certificate lacks the NONCE extension.
    #[error("nonce extension missing")]
    NonceMissing,
    /// The NONCE extension does not carry the expected nonce.
    #[error("nonce mismatch")]
    NonceMismatch,
    /// The module serial does not match (the identity key, or the expected serial).
    #[error("module serial mismatch")]
    SerialMismatch,
    /// The certificate's public key is not the expected key.
    #[error("public key mismatch")]
    KeyMismatch,
    /// The certificate is not self-issued (issuer name differs from subject name).
    #[error("certificate is not self-signed")]
    NotSelfSigned,
}

impl From<der::Error> for PkiError {
    fn from(err: der::Error) -> Self {
        match err.kind() {
            der::ErrorKind::TrailingData { .. } => PkiError::TrailingData,
            kind => PkiError::Der(kind),
        }
    }
}

/// A certificate parsed under the strict Imprint profile.
///
/// [`Certificate::from_der`] accepts only:
/// - canonical DER (decoded by the `der` crate, re-encoded byte-for-byte identical, no trailing
///   bytes), X.509 v3, no issuer/subject unique identifiers, a positive serial number;
/// - `signatureAlgorithm` == `tbsCertificate.signature` == ecdsa-with-SHA384 without parameters,
///   and a signature value that is a strict DER ECDSA-Sig-Value;
/// - an SPKI of id-ecPublicKey with namedCurve secp384r1 (explicit parameters rejected) whose
///   point is a valid uncompressed P-384 point;
/// - notBefore < notAfter;
/// - no duplicate extension OIDs, no unknown critical extension (known: basicConstraints,
///   keyUsage, extKeyUsage, subjectKeyIdentifier, authorityKeyIdentifier, NONCE), every known
///   extension strictly DER-encoded; basicConstraints and keyUsage present and critical;
///   subjectKeyIdentifier present, non-critical and equal to [`key_identifier`] of the key;
///   authorityKeyIdentifier (keyIdentifier only, non-critical) present unless self-issued;
/// - exactly one [`Role`] from the extendedKeyUsage's Imprint purposes, plus exactly the
///   standard TLS purposes of that role's profile (see [`Role::purposes`]; no other purposes),
///   with cA, pathLenConstraint and keyUsage bits exactly as in that role's profile; roots are
///   self-issued (issuer name == subject name) and no other role is; `Central` vs
///   `CentralDelivery` is told apart by being self-issued;
/// - module roles have the subject `CN=Imprint module <serial>, serialNumber=<serial>`
///   (UTF8String CN, PrintableString serialNumber of 16 lowercase hex characters); for
///   `ModuleIdentity` the serial must equal [`serial_from_public_key`] of its key;
/// - `ModuleKey` carries the non-critical NONCE extension; no other role does.
///
/// Parsing does not verify any signature; use [`verify_issued_by`] and
/// [`verify_self_signed_root`] for that.
#[derive(Clone, Debug)]
pub struct Certificate {
    der: Vec<u8>,
    cert: x509_cert::Certificate,
    tbs_der: Vec<u8>,
    subject_der: Vec<u8>,
    issuer_der: Vec<u8>,
    role: Role,
    public_key: VerifyingKey,
    public_key_sec1: Vec<u8>,
    key_id: [u8; KEY_ID_LEN],
    authority_key_id: Option<Vec<u8>>,
    ca: bool,
    path_len: Option<u8>,
    key_usage: FlagSet<KeyUsages>,
    module_serial: Option<String>,
    nonce: Option<[u8; NONCE_LEN]>,
    not_before: u64,
    not_after: u64,
    fingerprint: [u8; 48],
    signature: DerSignature,
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Certificate {}

/// Extensions extracted from a certificate, before the role profile is applied.
#[derive(Default)]
struct ParsedExtensions {
    basic: Option<BasicConstraints>,
    key_usage: Option<FlagSet<KeyUsages>>,
    purposes: Option<Vec<ObjectIdentifier>>,
    ski: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
    nonce: Option<[u8; NONCE_LEN]>,
}

impl Certificate {
    /// Parses and checks a DER certificate under the strict profile described on [`Certificate`].
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let cert = x509_cert::Certificate::from_der(der)?;
        let tbs = cert.tbs_certificate();

        if tbs.version() != Version::V3 {
            return Err(PkiError::UnsupportedVersion);
        }
        // Canonical DER: what we re-encode must be exactly what we were given. This also rules
        // out explicitly encoded DEFAULT values, unsorted SETs and non-RFC 5280 time encodings.
        if cert.to_der()? != der {
            return Err(PkiError::Malformed("non-canonical DER encoding"));
        }

        check_signature_algorithm(cert.signature_algorithm())?;
        check_signature_algorithm(tbs.signature())?;
        let signature = cert
            .signature()
            .as_bytes()
            .and_then(|bytes| DerSignature::from_bytes(bytes).ok())
            .ok_or(PkiError::InvalidSignatureEncoding)?;

        let serial = tbs.serial_number().as_bytes();
        match serial.first() {
            None => return Err(PkiError::Malformed("empty serial number")),
            Some(first) if first & 0x80 != 0 => {
                return Err(PkiError::Malformed("negative serial number"));
            }
            Some(_) if serial.iter().all(|b| *b == 0) => {
                return Err(PkiError::Malformed("zero serial number"));
            }
            Some(_) => {}
        }
        if tbs.issuer_unique_id().is_some() || tbs.subject_unique_id().is_some() {
            return Err(PkiError::Malformed("unique identifiers are not allowed"));
        }

        let (public_key, public_key_sec1) = parse_spki(tbs.subject_public_key_info())?;
        let key_id = key_identifier(&public_key_sec1);

        let not_before = tbs.validity().not_before.to_unix_duration().as_secs();
        let not_after = tbs.validity().not_after.to_unix_duration().as_secs();
        if not_before >= not_after {
            return Err(PkiError::InvalidValidity);
        }

        if tbs.subject().is_empty() {
            return Err(PkiError::Malformed("empty subject name"));
        }
        if tbs.issuer().is_empty() {
            return Err(PkiError::Malformed("empty issuer name"));
        }
        let subject_der = tbs.subject().to_der()?;
        let issuer_der = tbs.issuer().to_der()?;
        let self_issued = subject_der == issuer_der;

        let exts = parse_extensions(tbs.extensions())?;

        let basic = exts
            .basic
            .ok_or(PkiError::MissingExtension("basicConstraints"))?;
        let key_usage = exts
            .key_usage
            .ok_or(PkiError::MissingExtension("keyUsage"))?;
        let purposes = exts
            .purposes
            .ok_or(PkiError::MissingExtension("extKeyUsage"))?;
        let ski = exts
            .ski
            .ok_or(PkiError::MissingExtension("subjectKeyIdentifier"))?;
        if ski.as_slice() != key_id.as_slice() {
            return Err(PkiError::MalformedExtension(
                "subjectKeyIdentifier does not match the subject key",
            ));
        }

        let role = role_from_purposes(&purposes, self_issued)?;

        // Role profile.
        if basic.ca != role.is_ca() {
            return Err(PkiError::ProfileViolation("basicConstraints cA"));
        }
        if basic.path_len_constraint != role.path_len() {
            return Err(PkiError::ProfileViolation(
                "basicConstraints pathLenConstraint",
            ));
        }
        if key_usage != role.key_usage() {
            return Err(PkiError::ProfileViolation("keyUsage bits"));
        }
        if self_issued != role.is_root() {
            return Err(PkiError::ProfileViolation(
                "only root certificates may be self-issued",
            ));
        }
        match (&exts.aki, self_issued) {
            (None, false) => return Err(PkiError::MissingExtension("authorityKeyIdentifier")),
            (Some(aki), true) if aki.as_slice() != key_id.as_slice() => {
                return Err(PkiError::MalformedExtension(
                    "authorityKeyIdentifier of a root must equal its subjectKeyIdentifier",
                ));
            }
            _ => {}
        }
        match (role, exts.nonce.is_some()) {
            (Role::ModuleKey, false) => return Err(PkiError::NonceMissing),
            (Role::ModuleKey, true) | (_, false) => {}
            (_, true) => {
                return Err(PkiError::ProfileViolation(
                    "NONCE extension outside a module key certificate",
                ));
            }
        }
        let module_serial = if role.is_module() {
            let serial = parse_module_subject(tbs.subject())?;
            if role == Role::ModuleIdentity
                && serial != serial_hex(&serial_from_public_key(&public_key_sec1))
            {
                return Err(PkiError::SerialMismatch);
            }
            Some(serial)
        } else {
            None
        };

        let tbs_der = tbs.to_der()?;
        let fingerprint = sha384(der);

        Ok(Self {
            der: der.to_vec(),
            tbs_der,
            subject_der,
            issuer_der,
            role,
            public_key,
            public_key_sec1,
            key_id,
            authority_key_id: exts.aki,
            ca: basic.ca,
            path_len: basic.path_len_constraint,
            key_usage,
            module_serial,
            nonce: exts.nonce,
            not_before,
            not_after,
            fingerprint,
            signature,
            cert,
        })
    }

    /// The DER encoding this certificate was parsed from.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The DER encoding of the TBSCertificate (the signed part).
    pub fn tbs_der(&self) -> &[u8] {
        &self.tbs_der
    }

    /// The decoded `x509-cert` structure.
    pub fn x509(&self) -> &x509_cert::Certificate {
        &self.cert
    }

    /// The role this certificate was parsed as.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The subject public key.
    pub fn public_key(&self) -> &p384::ecdsa::VerifyingKey {
        &self.public_key
    }

    /// The subject public key as an uncompressed SEC1 point (97 bytes).
    pub fn public_key_sec1(&self) -> Vec<u8> {
        self.public_key_sec1.clone()
    }

    /// The subject key identifier (equal to [`key_identifier`] of the subject key).
    pub fn key_identifier(&self) -> &[u8; KEY_ID_LEN] {
        &self.key_id
    }

    /// The authority key identifier, if present (absent only on roots).
    pub fn authority_key_identifier(&self) -> Option<&[u8]> {
        self.authority_key_id.as_deref()
    }

    /// The DER encoding of the subject name. Names are compared byte-for-byte.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// The DER encoding of the issuer name. Names are compared byte-for-byte.
    pub fn issuer_der(&self) -> &[u8] {
        &self.issuer_der
    }

    /// Whether this is a CA certificate (basicConstraints cA).
    pub fn is_ca(&self) -> bool {
        self.ca
    }

    /// The basicConstraints pathLenConstraint, if any.
    pub fn path_len_constraint(&self) -> Option<u8> {
        self.path_len
    }

    /// The keyUsage bits.
    pub fn key_usage(&self) -> FlagSet<KeyUsages> {
        self.key_usage
    }

    /// The module serial (16 lowercase hex characters) from the subject's serialNumber
    /// attribute; `Some` only for `ModuleIdentity` and `ModuleKey` certificates.
    pub fn module_serial(&self) -> Option<&str> {
        self.module_serial.as_deref()
    }

    /// The nonce from the NONCE extension; `Some` only for `ModuleKey` certificates.
    pub fn nonce(&self) -> Option<[u8; NONCE_LEN]> {
        self.nonce
    }

    /// notBefore as seconds since the Unix epoch.
    pub fn not_before_unix(&self) -> u64 {
        self.not_before
    }

    /// notAfter as seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> u64 {
        self.not_after
    }

    /// SHA-384 of the certificate's DER encoding.
    pub fn fingerprint(&self) -> [u8; 48] {
        self.fingerprint
    }

    /// Whether the certificate is self-issued (issuer name == subject name) and its signature
    /// verifies with its own public key.
    pub fn is_self_signed(&self) -> bool {
        self.issuer_der == self.subject_der && self.signature_verifies_with(&self.public_key)
    }

    fn signature_verifies_with(&self, key: &VerifyingKey) -> bool {
        key.verify(&self.tbs_der, &self.signature).is_ok()
    }
}

/// Checks that `child` was issued by `issuer`.
///
/// In order: the issuer's role may issue the child's role ([`Role::allowed_issuers`]); the
/// child's issuer name equals the issuer's subject name (byte-equal DER) and, if present, the
/// child's authorityKeyIdentifier equals the issuer's subjectKeyIdentifier; the issuer is a CA
/// with keyCertSign; the issuer's pathLenConstraint allows `cas_below`; the ECDSA P-384
/// SHA-384 signature over the child's TBS DER verifies with the issuer's key (the signature
/// must be strict DER, low-S is not required); and the child's validity period lies within the
/// issuer's (the module has no clock, so nesting plus a watermark is the time rule), except
/// below a `CentralDelivery` issuer, whose validity is the unit's attestation window.
///
/// `cas_below` is the number of (non-self-issued) intermediate CA certificates that follow
/// `issuer` in the path, not counting the final certificate of the path. For a path
/// `root -> personalizer -> module key` pass 0 for the last link and 1 for the first.
pub fn verify_issued_by(
    child: &Certificate,
    issuer: &Certificate,
    cas_below: u8,
) -> Result<(), PkiError> {
    if !child.role.allowed_issuers().contains(&issuer.role) {
        return Err(PkiError::IssuerRoleNotAllowed {
            child: child.role,
            issuer: issuer.role,
        });
    }
    if child.issuer_der != issuer.subject_der {
        return Err(PkiError::IssuerMismatch);
    }
    if let Some(aki) = &child.authority_key_id
        && aki.as_slice() != issuer.key_id.as_slice()
    {
        return Err(PkiError::IssuerMismatch);
    }
    if !issuer.ca {
        return Err(PkiError::NotACa);
    }
    if !issuer.key_usage.contains(KeyUsages::KeyCertSign) {
        return Err(PkiError::KeyUsageMissing);
    }
    if let Some(max) = issuer.path_len
        && cas_below > max
    {
        return Err(PkiError::PathLengthExceeded);
    }
    if !child.signature_verifies_with(&issuer.public_key) {
        return Err(PkiError::BadSignature);
    }
    // A CentralDelivery certificate only attests the central key to a module;
    // its validity is the unit's attestation window, not the central key's, so
    // certificates the central system issued earlier need not nest inside it.
    let nested = child.not_before >= issuer.not_before && child.not_after <= issuer.not_after;
    if !nested && issuer.role != Role::CentralDelivery {
        return Err(PkiError::NotYetValidForIssuer);
    }
    Ok(())
}

/// Checks that `cert` is a self-signed root of role `expected_role`: the role matches, it is a
/// CA, its issuer name equals its subject name and its signature verifies with its own key.
pub fn verify_self_signed_root(cert: &Certificate, expected_role: Role) -> Result<(), PkiError> {
    if cert.role != expected_role || !expected_role.is_root() {
        return Err(PkiError::WrongRole {
            expected: expected_role,
        });
    }
    if !cert.ca {
        return Err(PkiError::NotACa);
    }
    if cert.issuer_der != cert.subject_der {
        return Err(PkiError::NotSelfSigned);
    }
    if !cert.signature_verifies_with(&cert.public_key) {
        return Err(PkiError::BadSignature);
    }
    Ok(())
}

/// The module's rule for time without a clock: rejects a certificate whose notAfter is before
/// `watermark_unix` (the latest notBefore the module has ever accepted), so a module never goes
/// back to an expired unit.
pub fn check_not_expired(cert: &Certificate, watermark_unix: u64) -> Result<(), PkiError> {
    if cert.not_after < watermark_unix {
        return Err(PkiError::Expired);
    }
    Ok(())
}

/// Checks that `cert` has role `expected`.
pub fn require_role(cert: &Certificate, expected: Role) -> Result<(), PkiError> {
    if cert.role == expected {
        Ok(())
    } else {
        Err(PkiError::WrongRole { expected })
    }
}

/// Checks that `cert` carries exactly the nonce `expected` (a `ModuleKey` certificate).
pub fn check_nonce(cert: &Certificate, expected: &[u8; NONCE_LEN]) -> Result<(), PkiError> {
    let nonce = cert.nonce.ok_or(PkiError::NonceMissing)?;
    // Not secret, but compare without early exit anyway.
    let diff = nonce
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff == 0 {
        Ok(())
    } else {
        Err(PkiError::NonceMismatch)
    }
}

/// Checks that `cert` is a module certificate for the module serial `expected`.
pub fn check_module_serial(
    cert: &Certificate,
    expected: &[u8; SERIAL_LEN],
) -> Result<(), PkiError> {
    match cert.module_serial() {
        Some(serial) if serial == serial_hex(expected) => Ok(()),
        _ => Err(PkiError::SerialMismatch),
    }
}

/// Checks that the subject key of `cert` is the uncompressed SEC1 point `expected_sec1`.
pub fn check_public_key(cert: &Certificate, expected_sec1: &[u8]) -> Result<(), PkiError> {
    if cert.public_key_sec1.as_slice() == expected_sec1 {
        Ok(())
    } else {
        Err(PkiError::KeyMismatch)
    }
}

/// Parses an uncompressed SEC1 P-384 point (97 bytes, `0x04 || X || Y`) that lies on the curve.
pub fn parse_public_key_sec1(point_sec1: &[u8]) -> Result<VerifyingKey, PkiError> {
    if point_sec1.len() != P384_POINT_LEN || point_sec1.first() != Some(&0x04) {
        return Err(PkiError::InvalidPublicKey);
    }
    VerifyingKey::from_sec1_bytes(point_sec1).map_err(|_| PkiError::InvalidPublicKey)
}

/// Module serial from an identity public key: the first 8 bytes of SHA-384 of the uncompressed
/// SEC1 point.
pub fn serial_from_public_key(point_sec1: &[u8]) -> [u8; SERIAL_LEN] {
    let digest = sha384(point_sec1);
    let mut out = [0u8; SERIAL_LEN];
    out.iter_mut().zip(digest.iter()).for_each(|(o, d)| *o = *d);
    out
}

/// Key identifier used for subjectKeyIdentifier / authorityKeyIdentifier: the first 20 bytes of
/// SHA-384 of the subjectPublicKey BIT STRING contents (the uncompressed SEC1 point).
pub fn key_identifier(point_sec1: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = sha384(point_sec1);
    let mut out = [0u8; KEY_ID_LEN];
    out.iter_mut().zip(digest.iter()).for_each(|(o, d)| *o = *d);
    out
}

/// The module serial as 16 lowercase hex characters.
pub fn serial_hex(serial: &[u8; SERIAL_LEN]) -> String {
    serial.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is a module serial in its text form: exactly 16 lowercase hex characters.
pub fn is_serial_hex(s: &str) -> bool {
    s.len() == 2 * SERIAL_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn sha384(data: &[u8]) -> [u8; 48] {
    Sha384::digest(data).into()
}

pub(crate) fn check_signature_algorithm(alg: &AlgorithmIdentifierOwned) -> Result<(), PkiError> {
    if alg.oid != oid::ECDSA_WITH_SHA384 || alg.parameters.is_some() {
        return Err(PkiError::UnsupportedSignatureAlgorithm);
    }
    Ok(())
}

/// Strict SPKI check; returns the key and its uncompressed SEC1 encoding.
pub(crate) fn parse_spki(
    spki: &SubjectPublicKeyInfoOwned,
) -> Result<(VerifyingKey, Vec<u8>), PkiError> {
    if spki.algorithm.oid != oid::EC_PUBLIC_KEY {
        return Err(PkiError::UnsupportedKeyAlgorithm);
    }
    let params = spki
        .algorithm
        .parameters
        .as_ref()
        .ok_or(PkiError::UnsupportedKeyAlgorithm)?;
    if params.tag() != Tag::ObjectIdentifier {
        // e.g. explicit ECParameters (a SEQUENCE) or implicitlyCA (NULL)
        return Err(PkiError::UnsupportedKeyAlgorithm);
    }
    let curve: ObjectIdentifier = params
        .decode_as()
        .map_err(|_| PkiError::UnsupportedKeyAlgorithm)?;
    if curve != oid::SECP384R1 {
        return Err(PkiError::UnsupportedKeyAlgorithm);
    }
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or(PkiError::InvalidPublicKey)?;
    let key = parse_public_key_sec1(point)?;
    Ok((key, point.to_vec()))
}

fn parse_extensions(
    extensions: Option<&x509_cert::ext::Extensions>,
) -> Result<ParsedExtensions, PkiError> {
    let extensions = extensions.ok_or(PkiError::MissingExtension("extensions"))?;
    if extensions.is_empty() {
        return Err(PkiError::Malformed("empty extensions sequence"));
    }
    for (i, ext) in extensions.iter().enumerate() {
        if extensions
            .iter()
            .skip(i.saturating_add(1))
            .any(|other| other.extn_id == ext.extn_id)
        {
            return Err(PkiError::DuplicateExtension);
        }
    }

    let mut out = ParsedExtensions::default();
    for ext in extensions {
        match ext.extn_id {
            oid::BASIC_CONSTRAINTS => {
                require_critical(ext, true, "basicConstraints must be critical")?;
                out.basic = Some(decode_extension(ext, "basicConstraints")?);
            }
            oid::KEY_USAGE => {
                require_critical(ext, true, "keyUsage must be critical")?;
                let ku: KeyUsage = decode_extension(ext, "keyUsage")?;
                out.key_usage = Some(ku.0);
            }
            oid::EXT_KEY_USAGE => {
                let eku: ExtendedKeyUsage = decode_extension(ext, "extKeyUsage")?;
                if eku.0.is_empty() {
                    return Err(PkiError::MalformedExtension("empty extKeyUsage"));
                }
                out.purposes = Some(eku.0);
            }
            oid::SUBJECT_KEY_IDENTIFIER => {
                require_critical(ext, false, "subjectKeyIdentifier must not be critical")?;
                let ski: SubjectKeyIdentifier = decode_extension(ext, "subjectKeyIdentifier")?;
                out.ski = Some(ski.0.as_bytes().to_vec());
            }
            oid::AUTHORITY_KEY_IDENTIFIER => {
                require_critical(ext, false, "authorityKeyIdentifier must not be critical")?;
                let aki: AuthorityKeyIdentifier = decode_extension(ext, "authorityKeyIdentifier")?;
                if aki.authority_cert_issuer.is_some() || aki.authority_cert_serial_number.is_some()
                {
                    return Err(PkiError::MalformedExtension(
                        "authorityKeyIdentifier must carry only keyIdentifier",
                    ));
                }
                let key_id = aki.key_identifier.ok_or(PkiError::MalformedExtension(
                    "authorityKeyIdentifier without keyIdentifier",
                ))?;
                out.aki = Some(key_id.as_bytes().to_vec());
            }
            oid::NONCE_EXTENSION => {
                require_critical(ext, false, "NONCE extension must not be critical")?;
                let bytes = ext.extn_value.as_bytes();
                let value = <&OctetStringRef>::from_der(bytes)
                    .map_err(|_| PkiError::MalformedExtension("NONCE is not a DER OCTET STRING"))?;
                let nonce: [u8; NONCE_LEN] = value
                    .as_bytes()
                    .try_into()
                    .map_err(|_| PkiError::MalformedExtension("NONCE length"))?;
                out.nonce = Some(nonce);
            }
            _ if ext.critical => return Err(PkiError::UnknownCriticalExtension),
            _ => {}
        }
    }
    Ok(out)
}

fn require_critical(ext: &Extension, critical: bool, msg: &'static str) -> Result<(), PkiError> {
    if ext.critical == critical {
        Ok(())
    } else {
        Err(PkiError::MalformedExtension(msg))
    }
}

/// Decodes an extension value strictly: DER, no trailing bytes, canonical re-encoding.
fn decode_extension<'a, T>(ext: &'a Extension, what: &'static str) -> Result<T, PkiError>
where
    T: Decode<'a, Error = der::Error> + Encode,
{
    let bytes = ext.extn_value.as_bytes();
    let value = T::from_der(bytes).map_err(|_| PkiError::MalformedExtension(what))?;
    let reencoded = value
        .to_der()
        .map_err(|_| PkiError::MalformedExtension(what))?;
    if reencoded != bytes {
        return Err(PkiError::MalformedExtension(what));
    }
    Ok(value)
}

fn role_from_purposes(purposes: &[ObjectIdentifier], self_issued: bool) -> Result<Role, PkiError> {
    let mut role: Option<Role> = None;
    let mut client_auth = false;
    let mut server_auth = false;
    for purpose in purposes {
        let this = match *purpose {
            oid::KP_MANUFACTURER => Role::Manufacturer,
            oid::KP_CENTRAL if self_issued => Role::Central,
            oid::KP_CENTRAL => Role::CentralDelivery,
            oid::KP_PERSONALIZER => Role::Personalizer,
            oid::KP_MODULE_IDENTITY => Role::ModuleIdentity,
            oid::KP_MODULE => Role::ModuleKey,
            oid::KP_CLIENT_AUTH | oid::KP_SERVER_AUTH => {
                let seen = if *purpose == oid::KP_CLIENT_AUTH {
                    &mut client_auth
                } else {
                    &mut server_auth
                };
                if *seen {
                    return Err(PkiError::MalformedExtension(
                        "duplicate extKeyUsage purpose",
                    ));
                }
                *seen = true;
                continue;
            }
            _ => {
                return Err(PkiError::MalformedExtension(
                    "extKeyUsage purpose outside the Imprint profile",
                ));
            }
        };
        if role.is_some() {
            return Err(PkiError::MalformedExtension(
                "extKeyUsage names more than one Imprint role",
            ));
        }
        role = Some(this);
    }
    let role = role.ok_or(PkiError::MalformedExtension(
        "extKeyUsage names no Imprint role",
    ))?;
    // The standard TLS purposes must be exactly those of the role's profile (in any order).
    if client_auth != role.purposes().contains(&oid::KP_CLIENT_AUTH) {
        return Err(PkiError::MalformedExtension(
            "clientAuth purpose does not match the role's profile",
        ));
    }
    if server_auth != role.purposes().contains(&oid::KP_SERVER_AUTH) {
        return Err(PkiError::MalformedExtension(
            "serverAuth purpose does not match the role's profile",
        ));
    }
    Ok(role)
}

/// Parses `CN=Imprint module <serial>, serialNumber=<serial>` and returns the serial.
fn parse_module_subject(name: &Name) -> Result<String, PkiError> {
    const BAD: PkiError = PkiError::ProfileViolation(
        "module subject must be CN=Imprint module <serial> + serialNumber",
    );
    let mut rdns = name.iter_rdn();
    let (Some(cn_rdn), Some(sn_rdn), None) = (rdns.next(), rdns.next(), rdns.next()) else {
        return Err(BAD);
    };
    let single = |rdn: &'_ x509_cert::name::RelativeDistinguishedName| {
        let mut atvs = rdn.iter();
        match (atvs.next(), atvs.next()) {
            (Some(atv), None) => Ok(atv.clone()),
            _ => Err(BAD),
        }
    };
    let cn = single(cn_rdn)?;
    let sn = single(sn_rdn)?;
    if cn.oid != oid::COMMON_NAME
        || cn.value.tag() != Tag::Utf8String
        || sn.oid != oid::SERIAL_NUMBER
        || sn.value.tag() != Tag::PrintableString
    {
        return Err(BAD);
    }
    let serial = core::str::from_utf8(sn.value.value()).map_err(|_| BAD)?;
    if !is_serial_hex(serial) {
        return Err(BAD);
    }
    let common_name = core::str::from_utf8(cn.value.value()).map_err(|_| BAD)?;
    if common_name.strip_prefix(MODULE_CN_PREFIX) != Some(serial) {
        return Err(BAD);
    }
    Ok(serial.to_owned())
}
