//! The central system's TLS endpoint (DESIGN §4, "Standard TLS path").
//!
//! Any TLS client that holds a module key through `libimprint_pkcs11.so`
//! (OpenSSL's pkcs11 engine, GnuTLS, …) authenticates to this endpoint with
//! the module certificate and the unit's certificate issued by the central
//! system. The client chain is checked with Imprint's own strict PKI code
//! ([`imprint_apdu::pki`]), not with webpki; the registry then decides
//! admission (a revoked module or unit is refused).
//!
//! ```text
//!  client (module key via PKCS#11)                      central system
//!  ───────────────────────────────                      ───────────────────────────────────────
//!  ClientHello (TLS 1.3, P-384)        ───────────▶     ServerConfig (ring, TLS 1.3 only,
//!                                                         ECDSA P-384 SHA-384 only)
//!                                      ◀───────────     endpoint.pem (leaf issued by C)
//!                                                        CertificateRequest (hint: C's subject)
//!  Certificate: module.pem + unit.pem  ───────────▶     ModuleClientVerifier:
//!  CertificateVerify (module key)                         module ─issued by─▶ unit  (pathLen 0)
//!                                                         unit   ─issued by─▶ C     (pathLen 1)
//!                                                         validity at `now`, then admission(unit, module)
//!                                      ◀───────────     "imprint central: authenticated module <SERIAL>\n"
//!  one line (≤ 4 KiB)                  ───────────▶
//!                                      ◀───────────     "ok <sha384-hex of the line>\n", close
//! ```
//!
//! The endpoint's own certificate ([`EndpointCertificate`]) is a P-384 leaf
//! issued by the central key `C` (serverAuth, digitalSignature, cA false, SAN
//! names of the caller), kept in `DIR/endpoint.key` (PKCS#8 PEM, 0600) and
//! `DIR/endpoint.pem`. The accept loop ([`run_tls_endpoint`]) bounds the
//! number of connections, the handshake time and the idle time.
//!
//! Sessions are never resumed: a resumed TLS 1.3 session carries no client
//! certificate, so it would skip the chain check and the admission. Every
//! connection is a full handshake, and a revocation applies to the next one.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use der::asn1::{BitString, Ia5String, OctetString};
use der::{Decode, Encode};
use imprint_apdu::host::personalize::unix_now;
use imprint_apdu::pki::{self, Certificate, PkiError, Role};
use p384::ecdsa::signature::{Keypair, Verifier};
use p384::ecdsa::{DerSignature, SigningKey, VerifyingKey};
use p384::pkcs8::EncodePrivateKey;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use sha2::{Digest, Sha384};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, SubjectPublicKeyInfoOwned,
    SubjectPublicKeyInfoRef,
};
use x509_cert::time::{Time, Validity};

use crate::keyfile::{self, KeyFileError, Overwrite};
use crate::{CentralAuthority, CentralError, display};

#[cfg(test)]
mod tests;

/// File name of the endpoint's private key inside the central directory.
pub const ENDPOINT_KEY_FILE: &str = "endpoint.key";

/// File name of the endpoint's certificate inside the central directory.
pub const ENDPOINT_CERT_FILE: &str = "endpoint.pem";

/// Common name of the endpoint's certificate.
pub const ENDPOINT_COMMON_NAME: &str = "Imprint central TLS endpoint";

/// Lifetime of a freshly issued endpoint certificate, in days (cut to `C`'s).
pub const ENDPOINT_CERT_DAYS: u64 = 365;

/// An endpoint certificate expiring within this many seconds is re-issued by
/// [`EndpointCertificate::load_or_create`].
pub const RENEW_BEFORE_SECS: u64 = 7 * 24 * 60 * 60;

/// Most intermediates a client may send; more is refused before any parsing.
pub const MAX_INTERMEDIATES: usize = 4;

/// Most unit certificates remembered as verified by [`ModuleClientVerifier`].
pub const MAX_CACHED_UNITS: usize = 4096;

/// The only TLS signature scheme offered and accepted.
pub const SIGNATURE_SCHEME: SignatureScheme = SignatureScheme::ECDSA_NISTP384_SHA384;

/// Greeting prefix written after a successful handshake; the module serial
/// and a newline follow.
pub const GREETING_PREFIX: &str = "imprint central: authenticated module ";

/// `id-kp-serverAuth`.
const KP_SERVER_AUTH: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

/// `id-ce-subjectAltName`.
const SUBJECT_ALT_NAME: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("2.5.29.17");

/// `ecdsa-with-SHA384`.
const ECDSA_WITH_SHA384: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// `commonName`.
const COMMON_NAME: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

/// A failure of the TLS endpoint: its certificate, its configuration, or a
/// client chain it refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing the endpoint's key or certificate failed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The central key failed to sign the endpoint certificate.
    #[error("the central key failed to sign the endpoint certificate")]
    Signing(#[source] CentralError),
    /// Building or encoding the endpoint certificate failed.
    #[error("cannot build the endpoint certificate: {0}")]
    Build(#[from] x509_cert::builder::Error),
    /// DER encoding or decoding failed.
    #[error("DER error: {0}")]
    Der(#[from] der::Error),
    /// PEM encoding or decoding of the endpoint certificate failed.
    #[error("PEM error: {0}")]
    Pem(#[from] der::pem::Error),
    /// The endpoint's private key could not be encoded as PKCS#8.
    #[error("cannot encode the endpoint key as PKCS#8")]
    Pkcs8(#[source] p384::pkcs8::Error),
    /// The operating system's random generator failed.
    #[error("the operating system random generator failed")]
    Random,
    /// A DNS name for the certificate's subjectAltName is empty or not ASCII.
    #[error("invalid DNS name {0:?} for the endpoint certificate")]
    InvalidDnsName(String),
    /// The certificate must name at least one DNS name or IP address.
    #[error("the endpoint certificate needs at least one DNS name or IP address")]
    NoNames,
    /// The central root has expired (or expires before a useful endpoint
    /// certificate could be issued).
    #[error("the central root certificate expired on {not_after}")]
    CentralExpired {
        /// Its notAfter, as UTC text.
        not_after: String,
    },
    /// The system clock is before 1970 or time arithmetic overflowed.
    #[error("system clock or time arithmetic error")]
    Clock,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A client certificate does not parse under the strict Imprint profile.
    #[error("client certificate rejected by the Imprint profile: {0}")]
    BadCertificate(#[source] PkiError),
    /// The client's end-entity certificate is not a module key certificate.
    #[error("the client certificate is a {found} certificate, not a module key certificate")]
    NotAModule {
        /// The role found.
        found: Role,
    },
    /// The client sent more intermediates than [`MAX_INTERMEDIATES`].
    #[error("the client sent {0} intermediate certificates (at most {MAX_INTERMEDIATES})")]
    TooManyIntermediates(usize),
    /// No intermediate is a unit certificate that issued the module
    /// certificate.
    #[error("no unit certificate among the intermediates issued the module certificate")]
    NoIssuingUnit,
    /// The unit that issued the module certificate is not certified by this
    /// central system.
    #[error("the unit certificate is not issued by this central system: {0}")]
    UnitNotCertified(#[source] PkiError),
    /// A certificate of the chain is not yet valid at the current time.
    #[error("the {which} certificate is not valid before {not_before}")]
    NotYetValid {
        /// `module`, `unit` or `central`.
        which: &'static str,
        /// Its notBefore, as UTC text.
        not_before: String,
    },
    /// A certificate of the chain has expired.
    #[error("the {which} certificate expired on {not_after}")]
    Expired {
        /// `module`, `unit` or `central`.
        which: &'static str,
        /// Its notAfter, as UTC text.
        not_after: String,
    },
    /// The admission callback (the registry) refused the module.
    #[error("admission refused: {0}")]
    AdmissionRefused(String),
}

// ---------------------------------------------------------------------------------------------
// The endpoint certificate.

/// The names the endpoint certificate carries in its subjectAltName.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointNames {
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
}

impl Default for EndpointNames {
    /// `localhost`, `127.0.0.1` and `::1`.
    fn default() -> Self {
        Self {
            dns: vec!["localhost".to_owned()],
            ips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        }
    }
}

impl EndpointNames {
    fn general_names(&self) -> Result<Vec<GeneralName>, TlsError> {
        if self.dns.is_empty() && self.ips.is_empty() {
            return Err(TlsError::NoNames);
        }
        let mut names = Vec::with_capacity(self.dns.len() + self.ips.len());
        for dns in &self.dns {
            if dns.is_empty() || !dns.is_ascii() || dns.chars().any(|c| c.is_ascii_control()) {
                return Err(TlsError::InvalidDnsName(dns.clone()));
            }
            let name =
                Ia5String::new(dns.as_str()).map_err(|_| TlsError::InvalidDnsName(dns.clone()))?;
            names.push(GeneralName::DnsName(name));
        }
        names.extend(self.ips.iter().map(|ip| GeneralName::from(*ip)));
        Ok(names)
    }
}

/// The endpoint's TLS server key and its certificate issued by the central
/// key `C`.
pub struct EndpointCertificate {
    key: SigningKey,
    cert_der: Vec<u8>,
    not_after: u64,
}

impl fmt::Debug for EndpointCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointCertificate")
            .field("not_after", &display::utc(self.not_after))
            .finish_non_exhaustive()
    }
}

impl EndpointCertificate {
    /// Loads `DIR/endpoint.key` and `DIR/endpoint.pem`, creating what is
    /// missing: a fresh key (PKCS#8 PEM, mode 0600) if there is none, and a
    /// new certificate issued by `central` if there is none or the one there
    /// is not issued by `central`'s key, is not for the key, names other
    /// names than `names`, or expires within [`RENEW_BEFORE_SECS`].
    pub fn load_or_create(
        central: &CentralAuthority,
        dir: &Path,
        names: &EndpointNames,
    ) -> Result<Self, TlsError> {
        let key_path = dir.join(ENDPOINT_KEY_FILE);
        let cert_path = dir.join(ENDPOINT_CERT_FILE);
        let key = if key_path.exists() {
            keyfile::read_signing_key(&key_path)?
        } else {
            keyfile::create_private_dir(dir)?;
            let key = keyfile::generate_signing_key()?;
            keyfile::write_signing_key(&key_path, &key)?;
            key
        };
        if let Some(existing) = Self::load_certificate(&cert_path, &key, central, names) {
            return Ok(existing);
        }
        let issued = Self::issue(central, key, names, unix_now())?;
        let pem = issued.certificate_pem()?;
        keyfile::write_atomic(
            &cert_path,
            pem.as_bytes(),
            keyfile::PUBLIC_FILE_MODE,
            Overwrite::Replace,
        )?;
        tracing::info!(
            path = %cert_path.display(),
            not_after = %display::utc(issued.not_after),
            "issued a new TLS endpoint certificate"
        );
        Ok(issued)
    }

    /// The certificate in `path` if it is still good for `key`, `central`
    /// and `names`; `None` (re-issue) otherwise.
    fn load_certificate(
        path: &Path,
        key: &SigningKey,
        central: &CentralAuthority,
        names: &EndpointNames,
    ) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let (label, der) = der::pem::decode_vec(text.trim().as_bytes()).ok()?;
        if label != "CERTIFICATE" {
            return None;
        }
        let cert = x509_cert::Certificate::from_der(&der).ok()?;
        let tbs = cert.tbs_certificate();
        let own_spki = SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).ok()?;
        if tbs.subject_public_key_info() != &own_spki
            || tbs.issuer().to_der().ok()? != central.cert.subject_der()
        {
            return None;
        }
        let tbs_der = tbs.to_der().ok()?;
        let signature = DerSignature::from_bytes(cert.signature().as_bytes()?).ok()?;
        VerifyingKey::from(central.public_key())
            .verify(&tbs_der, &signature)
            .ok()?;
        let wanted = SubjectAltName(names.general_names().ok()?);
        let found = tbs
            .get_extension::<SubjectAltName>()
            .ok()
            .flatten()
            .map(|(_, san)| san)?;
        if found != wanted {
            return None;
        }
        let not_after = tbs.validity().not_after.to_unix_duration().as_secs();
        let not_before = tbs.validity().not_before.to_unix_duration().as_secs();
        let now = unix_now();
        if not_before > now.saturating_add(60)
            || not_after < now.saturating_add(RENEW_BEFORE_SECS)
            || not_after > central.cert.not_after_unix()
        {
            return None;
        }
        Some(Self {
            key: key.clone(),
            cert_der: der,
            not_after,
        })
    }

    /// Issues a certificate for `key` with `central`'s key: backdated a
    /// minute from `now`, valid [`ENDPOINT_CERT_DAYS`] and cut to `C`'s
    /// validity; P-384/ECDSA-SHA384, serverAuth, digitalSignature, cA false,
    /// subjectAltName `names`.
    pub fn issue(
        central: &CentralAuthority,
        key: SigningKey,
        names: &EndpointNames,
        now: u64,
    ) -> Result<Self, TlsError> {
        let root = &central.cert;
        let expired = || TlsError::CentralExpired {
            not_after: display::utc(root.not_after_unix()),
        };
        let not_before = now.saturating_sub(60).max(root.not_before_unix());
        let not_after = ENDPOINT_CERT_DAYS
            .checked_mul(24 * 60 * 60)
            .and_then(|lifetime| now.checked_add(lifetime))
            .ok_or(TlsError::Clock)?
            .min(root.not_after_unix());
        if not_after <= now || not_before >= not_after {
            return Err(expired());
        }
        let subject_point = key.verifying_key().to_sec1_point(false);
        let issuer_point = root.public_key_sec1();
        let extensions = vec![
            extension(
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
                pki::oid::BASIC_CONSTRAINTS,
                true,
            )?,
            extension(
                &KeyUsage(KeyUsages::DigitalSignature.into()),
                pki::oid::KEY_USAGE,
                true,
            )?,
            extension(
                &ExtendedKeyUsage(vec![KP_SERVER_AUTH]),
                pki::oid::EXT_KEY_USAGE,
                false,
            )?,
            extension(
                &SubjectAltName(names.general_names()?),
                SUBJECT_ALT_NAME,
                false,
            )?,
            extension(
                &SubjectKeyIdentifier(OctetString::new(
                    pki::key_identifier(subject_point.as_bytes()).as_slice(),
                )?),
                pki::oid::SUBJECT_KEY_IDENTIFIER,
                false,
            )?,
            extension(
                &AuthorityKeyIdentifier {
                    key_identifier: Some(OctetString::new(
                        pki::key_identifier(&issuer_point).as_slice(),
                    )?),
                    authority_cert_issuer: None,
                    authority_cert_serial_number: None,
                },
                pki::oid::AUTHORITY_KEY_IDENTIFIER,
                false,
            )?,
        ];
        let profile = EndpointProfile {
            subject: common_name(ENDPOINT_COMMON_NAME)?,
            issuer: Name::from_der(root.subject_der())?,
            extensions,
        };
        let validity = Validity::new(unix_to_time(not_before)?, unix_to_time(not_after)?);
        let spki = SubjectPublicKeyInfoOwned::from_key(key.verifying_key())
            .map_err(|_| TlsError::Der(der::ErrorKind::Failed.into()))?;
        let builder = CertificateBuilder::new(profile, random_serial()?, validity, spki)?;
        let cert_der = sign_with_central(central, builder)?;
        Ok(Self {
            key,
            cert_der,
            not_after,
        })
    }

    /// The certificate's DER.
    pub fn certificate_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert_der.clone())
    }

    /// The certificate as PEM (`CERTIFICATE`, LF line endings).
    pub fn certificate_pem(&self) -> Result<String, TlsError> {
        Ok(der::pem::encode_string(
            "CERTIFICATE",
            der::pem::LineEnding::LF,
            &self.cert_der,
        )?)
    }

    /// The private key as PKCS#8 DER, for rustls.
    pub fn private_key_der(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let document = self.key.to_pkcs8_der().map_err(TlsError::Pkcs8)?;
        Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            document.as_bytes().to_vec(),
        )))
    }

    /// The certificate's notAfter, seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> u64 {
        self.not_after
    }

    /// The endpoint's public key.
    pub fn public_key(&self) -> VerifyingKey {
        *self.key.verifying_key()
    }

    /// Paths of the key and certificate files in `dir`.
    pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join(ENDPOINT_KEY_FILE), dir.join(ENDPOINT_CERT_FILE))
    }
}

/// The only place the central key signs the endpoint certificate: the TBS is
/// hashed with SHA-384 and signed through [`CentralAuthority::sign_digest`],
/// so an HSM-backed central key only has to keep that method.
fn sign_with_central(
    central: &CentralAuthority,
    mut builder: CertificateBuilder<EndpointProfile>,
) -> Result<Vec<u8>, TlsError> {
    let signer = CentralSigner {
        public: VerifyingKey::from(central.public_key()),
    };
    let tbs = builder.finalize(&signer)?;
    let digest: [u8; 48] = Sha384::digest(&tbs).into();
    let signature = central
        .sign_digest(&digest)
        .map_err(TlsError::Signing)?
        .to_der();
    let cert = builder.assemble(BitString::from_bytes(signature.as_bytes())?, &signer)?;
    Ok(cert.to_der()?)
}

/// The central key as the x509 builder's signer identity (its public key and
/// signature algorithm); the signing itself is in [`sign_with_central`].
struct CentralSigner {
    public: VerifyingKey,
}

impl Keypair for CentralSigner {
    type VerifyingKey = VerifyingKey;

    fn verifying_key(&self) -> VerifyingKey {
        self.public
    }
}

impl DynSignatureAlgorithmIdentifier for CentralSigner {
    fn signature_algorithm_identifier(&self) -> x509_cert::spki::Result<AlgorithmIdentifierOwned> {
        Ok(AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA384,
            parameters: None,
        })
    }
}

/// Builder profile with every field fixed in advance.
struct EndpointProfile {
    subject: Name,
    issuer: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for EndpointProfile {
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

fn extension<T: Encode>(
    value: &T,
    extn_id: der::asn1::ObjectIdentifier,
    critical: bool,
) -> Result<Extension, TlsError> {
    Ok(Extension {
        extn_id,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

fn common_name(text: &str) -> Result<Name, TlsError> {
    use x509_cert::attr::AttributeTypeAndValue;
    use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
    let mut rdns = RdnSequence::default();
    rdns.push(RelativeDistinguishedName::try_from(vec![
        AttributeTypeAndValue {
            oid: COMMON_NAME,
            value: der::asn1::Any::new(der::Tag::Utf8String, text.as_bytes())?,
        },
    ])?);
    Ok(Name::from_der(&rdns.to_der()?)?)
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| TlsError::Random)?;
    if let Some(first) = bytes.first_mut() {
        *first = (*first & 0x7f) | 0x40;
    }
    Ok(SerialNumber::new(&bytes)?)
}

fn unix_to_time(unix: u64) -> Result<Time, TlsError> {
    let datetime = der::DateTime::from_unix_duration(Duration::from_secs(unix))?;
    Ok(Time::from(datetime))
}

// ---------------------------------------------------------------------------------------------
// Client chain verification.

/// The admission decision after the chain verified: given the unit's
/// certificate issued by the central system and the module certificate,
/// `Ok(())` admits, `Err(reason)` refuses (the server wires it to the
/// registry: a revoked module or unit is refused).
pub type Admission = Arc<dyn Fn(&Certificate, &Certificate) -> Result<(), String> + Send + Sync>;

/// An admission that admits every module whose chain verifies.
pub fn admit_all() -> Admission {
    Arc::new(|_, _| Ok(()))
}

/// A client chain that verified: the module certificate and the unit's
/// certificate (issued by the central system) that issued it.
#[derive(Debug, Clone)]
pub struct VerifiedModule {
    /// The module key certificate (the TLS client certificate).
    pub module: Certificate,
    /// The unit's certificate issued by the central system.
    pub unit: Certificate,
}

impl VerifiedModule {
    /// The module serial (16 lowercase hex characters).
    pub fn serial(&self) -> &str {
        self.module.module_serial().unwrap_or_default()
    }
}

/// rustls client-certificate verifier that checks module chains with
/// Imprint's strict PKI code against the central root, then asks the
/// [`Admission`] callback.
pub struct ModuleClientVerifier {
    central_root: Certificate,
    root_hints: Vec<DistinguishedName>,
    admission: Admission,
    algorithms: WebPkiSupportedAlgorithms,
    /// SHA-384 fingerprints of unit certificates already verified as issued
    /// by the central root (a pure function of the two certificates), so a
    /// handshake costs one certificate signature check instead of two. Cleared
    /// when it reaches [`MAX_CACHED_UNITS`].
    verified_units: Mutex<HashSet<[u8; 48]>>,
}

impl fmt::Debug for ModuleClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleClientVerifier")
            .field("central_root", &display::subject(&self.central_root))
            .finish_non_exhaustive()
    }
}

impl ModuleClientVerifier {
    /// A verifier trusting `central_root` (a [`Role::Central`] root) with
    /// `admission` as the final decision.
    pub fn new(central_root: Certificate, admission: Admission) -> Self {
        let root_hints = vec![DistinguishedName::from(central_root.subject_der().to_vec())];
        Self {
            central_root,
            root_hints,
            admission,
            algorithms: p384_algorithms(),
            verified_units: Mutex::new(HashSet::new()),
        }
    }

    /// Checks a client chain at `now_unix`: the end entity parses under the
    /// strict profile as a [`Role::ModuleKey`] certificate; one of the
    /// intermediates is a [`Role::Personalizer`] certificate that issued it
    /// (pathLen 0 below it) and that the central root issued (one CA below
    /// the root); the module, unit and root certificates are valid at
    /// `now_unix`; then the admission callback decides.
    pub fn verify_chain(
        &self,
        end_entity: &[u8],
        intermediates: &[&[u8]],
        now_unix: u64,
    ) -> Result<VerifiedModule, TlsError> {
        if intermediates.len() > MAX_INTERMEDIATES {
            return Err(TlsError::TooManyIntermediates(intermediates.len()));
        }
        let module = Certificate::from_der(end_entity).map_err(TlsError::BadCertificate)?;
        if module.role() != Role::ModuleKey {
            return Err(TlsError::NotAModule {
                found: module.role(),
            });
        }
        let mut unit_error = None;
        let mut unit = None;
        for der in intermediates {
            let Ok(candidate) = Certificate::from_der(der) else {
                continue;
            };
            if candidate.role() != Role::Personalizer
                || pki::verify_issued_by(&module, &candidate, 0).is_err()
            {
                continue;
            }
            match self.unit_issued_by_root(&candidate) {
                Ok(()) => {
                    unit = Some(candidate);
                    break;
                }
                Err(err) => unit_error = Some(err),
            }
        }
        let unit = match (unit, unit_error) {
            (Some(unit), _) => unit,
            (None, Some(err)) => return Err(TlsError::UnitNotCertified(err)),
            (None, None) => return Err(TlsError::NoIssuingUnit),
        };
        for (which, cert) in [
            ("module", &module),
            ("unit", &unit),
            ("central", &self.central_root),
        ] {
            check_validity(which, cert, now_unix)?;
        }
        (self.admission)(&unit, &module).map_err(TlsError::AdmissionRefused)?;
        Ok(VerifiedModule { module, unit })
    }
}

impl ModuleClientVerifier {
    /// `pki::verify_issued_by(unit, central_root, 1)`, remembered on success.
    fn unit_issued_by_root(&self, unit: &Certificate) -> Result<(), PkiError> {
        let fingerprint = unit.fingerprint();
        let cache = || {
            self.verified_units
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if cache().contains(&fingerprint) {
            return Ok(());
        }
        pki::verify_issued_by(unit, &self.central_root, 1)?;
        let mut cache = cache();
        if cache.len() >= MAX_CACHED_UNITS {
            cache.clear();
        }
        cache.insert(fingerprint);
        Ok(())
    }
}

/// Checks notBefore ≤ `now` ≤ notAfter.
fn check_validity(which: &'static str, cert: &Certificate, now: u64) -> Result<(), TlsError> {
    if now < cert.not_before_unix() {
        return Err(TlsError::NotYetValid {
            which,
            not_before: display::utc(cert.not_before_unix()),
        });
    }
    pki::check_not_expired(cert, now).map_err(|_| TlsError::Expired {
        which,
        not_after: display::utc(cert.not_after_unix()),
    })
}

/// The rustls error (and so the TLS alert) for a refused chain.
fn to_rustls_error(err: TlsError) -> rustls::Error {
    let kind = match &err {
        TlsError::BadCertificate(_) => CertificateError::BadEncoding,
        TlsError::NotAModule { .. } => CertificateError::InvalidPurpose,
        TlsError::NoIssuingUnit | TlsError::UnitNotCertified(_) => CertificateError::UnknownIssuer,
        TlsError::NotYetValid { .. } => CertificateError::NotValidYet,
        TlsError::Expired { .. } => CertificateError::Expired,
        TlsError::AdmissionRefused(_) => CertificateError::Revoked,
        _ => CertificateError::Other(OtherError(Arc::new(err))),
    };
    rustls::Error::InvalidCertificate(kind)
}

/// The ring provider's verification algorithms for ECDSA P-384 SHA-384 only.
fn p384_algorithms() -> WebPkiSupportedAlgorithms {
    let all = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    match all
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == SIGNATURE_SCHEME)
    {
        Some(entry) => WebPkiSupportedAlgorithms {
            all: entry.1,
            mapping: std::slice::from_ref(entry),
        },
        // The ring provider always has it; without it nothing verifies.
        None => WebPkiSupportedAlgorithms {
            all: &[],
            mapping: &[],
        },
    }
}

impl ClientCertVerifier for ModuleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let intermediates: Vec<&[u8]> = intermediates.iter().map(|c| c.as_ref()).collect();
        match self.verify_chain(end_entity.as_ref(), &intermediates, now.as_secs()) {
            Ok(verified) => {
                tracing::debug!(serial = verified.serial(), "client chain verified");
                Ok(ClientCertVerified::assertion())
            }
            Err(err) => {
                let serial = Certificate::from_der(end_entity.as_ref())
                    .ok()
                    .and_then(|cert| cert.module_serial().map(str::to_owned))
                    .unwrap_or_else(|| "-".to_owned());
                tracing::warn!(serial = %serial, reason = %err, "refused a TLS client certificate");
                Err(to_rustls_error(err))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The server speaks TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SIGNATURE_SCHEME {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SIGNATURE_SCHEME]
    }
}

// ---------------------------------------------------------------------------------------------
// Server configuration and the accept loop.

/// The crypto provider of the endpoint: ring, with TLS_AES_256_GCM_SHA384
/// and the secp384r1 key exchange only (everything P-384 / SHA-384, as the
/// rest of Imprint).
pub fn provider() -> CryptoProvider {
    let ring = rustls::crypto::ring::default_provider();
    CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384],
        kx_groups: vec![rustls::crypto::ring::kx_group::SECP384R1],
        ..ring
    }
}

/// The rustls server configuration: TLS 1.3 only, the endpoint certificate
/// alone as the server chain, a client certificate required and checked by
/// [`ModuleClientVerifier`], and no session resumption (no tickets, no
/// session cache), so every connection is checked and admitted afresh.
pub fn server_config(
    endpoint: &EndpointCertificate,
    central_root: &Certificate,
    admission: Admission,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(ModuleClientVerifier::new(central_root.clone(), admission));
    let config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![endpoint.certificate_der()],
            endpoint.private_key_der()?,
        )?;
    let mut config = config;
    // No resumption: a resumed TLS 1.3 session skips the client certificate,
    // and with it the chain check and the admission, so a revoked module
    // could come back on an old ticket.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Connections handled at once; further clients wait in the listen queue.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for each read or write after the handshake.
    pub idle_timeout: Duration,
    /// Longest application line read, newline included.
    pub max_line: usize,
}

impl Default for EndpointConfig {
    /// 256 connections, 10 s handshake, 30 s idle, 4 KiB line.
    fn default() -> Self {
        Self {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_line: 4096,
        }
    }
}

/// The TLS endpoint: a server configuration and its limits.
#[derive(Clone)]
pub struct TlsEndpoint {
    config: Arc<ServerConfig>,
    limits: EndpointConfig,
}

impl fmt::Debug for TlsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsEndpoint")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl TlsEndpoint {
    /// An endpoint with `config` (see [`server_config`]) and `limits`.
    pub fn new(config: Arc<ServerConfig>, limits: EndpointConfig) -> Self {
        Self { config, limits }
    }

    /// Serves `listener` until `shutdown` completes, then stops accepting
    /// and waits for the connections in flight (each bounded by the limits).
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        run_tls_endpoint(listener, self.config, self.limits, shutdown).await;
    }
}

/// The accept loop: at most `limits.max_connections` connections at once
/// (a tokio semaphore; further clients wait in the listen queue), each with
/// the handshake and idle timeouts. Returns after `shutdown` completes and
/// the connections in flight have ended. The lead's `imprint-central serve
/// --tls-listen ADDR` calls this.
pub async fn run_tls_endpoint(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: EndpointConfig,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "TLS endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            handle_connection(acceptor, stream, peer, limits).await;
            drop(permit);
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// One connection: handshake, greeting, one line, answer, close.
async fn handle_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    limits: EndpointConfig,
) {
    let _ = stream.set_nodelay(true);
    let mut tls =
        match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                tracing::info!(%peer, error = %err, "TLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "TLS handshake timed out");
                return;
            }
        };
    let serial = {
        let (_, connection) = tls.get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| Certificate::from_der(der.as_ref()).ok())
            .and_then(|cert| cert.module_serial().map(str::to_owned))
    };
    let Some(serial) = serial else {
        // The verifier admitted only module certificates; nothing else can get here.
        tracing::warn!(%peer, "TLS connection without a module certificate");
        return;
    };
    tracing::info!(%peer, serial = %serial, "module authenticated over TLS");
    let greeting = format!("{GREETING_PREFIX}{serial}\n");
    if !with_timeout(limits.idle_timeout, tls.write_all(greeting.as_bytes())).await {
        return;
    }
    if !with_timeout(limits.idle_timeout, tls.flush()).await {
        return;
    }
    let mut line = Vec::with_capacity(256);
    let read = {
        let limit = u64::try_from(limits.max_line).unwrap_or(u64::MAX);
        let mut reader = BufReader::new((&mut tls).take(limit));
        tokio::time::timeout(limits.idle_timeout, reader.read_until(b'\n', &mut line)).await
    };
    let answer = match read {
        Ok(Ok(0)) => None,
        Ok(Ok(_)) if !line.ends_with(b"\n") && line.len() >= limits.max_line => {
            tracing::info!(%peer, serial = %serial, "TLS client line too long");
            Some("error line too long\n".to_owned())
        }
        Ok(Ok(_)) => {
            let content = line.strip_suffix(b"\n").unwrap_or(&line);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            Some(format!("ok {}\n", display::hex(&Sha384::digest(content))))
        }
        Ok(Err(err)) => {
            tracing::info!(%peer, serial = %serial, error = %err, "TLS read failed");
            None
        }
        Err(_) => {
            tracing::info!(%peer, serial = %serial, "TLS client idle for too long");
            None
        }
    };
    if let Some(answer) = answer
        && !with_timeout(limits.idle_timeout, tls.write_all(answer.as_bytes())).await
    {
        return;
    }
    let _ = tokio::time::timeout(limits.idle_timeout, tls.shutdown()).await;
}

/// Runs an I/O future under `limit`; `false` on error or timeout.
async fn with_timeout(limit: Duration, io: impl Future<Output = std::io::Result<()>>) -> bool {
    matches!(tokio::time::timeout(limit, io).await, Ok(Ok(())))
}
