//! Imprint's central system: the root key `C` of the operational PKI, the
//! offline operations on it, and the servers modules connect to (DESIGN §2;
//! claims 1, 4–6, 11, 21).
//!
//! The central system is the root that module certificates chain to. It
//! certifies personalization units (claim 6); a unit in turn certifies the
//! central key for delivery into modules (claims 4–5), so a module learns `C`
//! only through a unit it authenticated. In operation, [`server`] runs the
//! operating channel and transaction sessions ([`operating`] holds their
//! sans-IO steps, [`wire`] the frames, [`client`] the relaying host's side),
//! [`tls`] the TLS endpoint for PKCS#11 applications, and [`registry`] the
//! units, modules, key sets, journal and revocations.
//!
//! ```text
//!   init ──▶ DIR/central.key  (PKCS#8 PEM, 0600)  ─┐
//!    or  ──▶ DIR/central-key.toml (key in a PKCS#11 ─┤
//!            token: module, token, key label)       │
//!        └─▶ DIR/central.pem  (self-signed root)  ─┤ open()
//!                                                   ▼
//!   personalizer.csr ──▶ CentralAuthority::certify_personalizer ──▶ by-central.pem
//!                                                                    (Role::Personalizer,
//!                                                                     issued by C)
//! ```
//!
//! The key `C` lives either in a file or in an HSM through PKCS#11
//! ([`hsm`]); [`CentralKey`] is either, and signs certificates through
//! [`IssuerSigner`] the same way.
//!
//! [`keyfile`] holds the key-file helpers (0600 from creation, atomic
//! replacement, zeroized buffers) that the other roles' tools reuse, and
//! [`display`] the formatting of certificates for operators.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};

use imprint_apdu::host::personalize::{nested_validity, unix_now};
use imprint_apdu::pki::issue::{
    self, CertificateRequest, IssueError, IssuerKey, IssuerSigner, SHA384_DIGEST_LEN, Validity,
};
use imprint_apdu::pki::{self, Certificate, PkiError, Role};
use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{SigningKey, VerifyingKey};

pub mod client;
pub mod display;
pub mod hsm;
pub mod keyfile;
pub mod operating;
pub mod registry;
pub mod server;
pub mod tls;
pub mod wire;

#[cfg(test)]
mod tests;

use hsm::{HsmError, Pin, Pkcs11CentralKey, Pkcs11KeyConfig};
use keyfile::{KeyFileError, Overwrite};

/// File name of the central key inside the central directory.
pub const KEY_FILE: &str = "central.key";

/// File name of the description of a central key held in a PKCS#11 token
/// (module, token label, key label; no PIN), in place of [`KEY_FILE`].
pub const KEY_CONFIG_FILE: &str = "central-key.toml";

/// File name of the central root certificate inside the central directory.
pub const CERT_FILE: &str = "central.pem";

/// Default common name of the central root.
pub const DEFAULT_COMMON_NAME: &str = "Imprint central system";

/// Default lifetime of the central root, in years.
pub const DEFAULT_ROOT_YEARS: u32 = 20;

/// Default lifetime of a personalization unit's certificate issued by the
/// central system, in years. It is shorter than the manufacturer's default
/// because a module requires the unit's central certificate to lie within its
/// manufacturer certificate (through the central-delivery certificate).
pub const DEFAULT_PERSONALIZER_YEARS: u32 = 5;

/// A failure of the central system's operations.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    /// Reading or writing a key or certificate file failed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// `init` found a key already there.
    #[error("{path} already holds a central key; refusing to overwrite it", path = .0.display())]
    AlreadyInitialized(PathBuf),
    /// The certificate file does not hold an Imprint certificate.
    #[error("{path} does not hold a valid Imprint certificate", path = .path.display())]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: IssueError,
    },
    /// The certificate is not a valid self-signed central root.
    #[error("{path} is not a valid self-signed central root", path = .path.display())]
    NotCentralRoot {
        /// The certificate file.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: PkiError,
    },
    /// The key and the certificate in the central directory do not belong together.
    #[error("the central key {key} does not match the certificate {cert}", key = .key.display(), cert = .cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The central root has expired; nothing can be certified under it.
    #[error("the central root certificate expired on {not_after}")]
    Expired {
        /// Its notAfter, as UTC text.
        not_after: String,
    },
    /// The central key failed to sign.
    #[error("the central key failed to sign")]
    Signing,
    /// The central key in the PKCS#11 token cannot be created, opened or used.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The central directory holds both a key file and a PKCS#11 key description.
    #[error(
        "{dir} holds both {KEY_FILE} and {KEY_CONFIG_FILE}; keep only the one that holds the central key",
        dir = .0.display()
    )]
    AmbiguousKey(PathBuf),
    /// The PKCS#11 key description does not parse.
    #[error("{path} is not a valid central key description", path = .path.display())]
    BadKeyConfig {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: toml::de::Error,
    },
    /// The PKCS#11 key description cannot be encoded.
    #[error("cannot encode the central key description")]
    EncodeKeyConfig(#[source] toml::ser::Error),
    /// Issuing a certificate failed.
    #[error("cannot issue the {what}")]
    Issue {
        /// Which certificate.
        what: &'static str,
        /// Why.
        #[source]
        source: IssueError,
    },
}

/// The central key `C`: in a file, or in a PKCS#11 token.
///
/// Either signs certificates as an [`IssuerSigner`], so
/// `IssuerKey { cert: &central.cert, key: &central.key }` works for both.
pub enum CentralKey {
    /// A key read from `DIR/central.key`.
    File(SigningKey),
    /// A key in a PKCS#11 token, described by `DIR/central-key.toml`.
    Pkcs11(Pkcs11CentralKey),
}

impl fmt::Debug for CentralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(_) => f.write_str("CentralKey::File(..)"),
            Self::Pkcs11(key) => f.debug_tuple("CentralKey::Pkcs11").field(key).finish(),
        }
    }
}

impl CentralKey {
    /// The public half as an ECDSA verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            Self::File(key) => *key.verifying_key(),
            Self::Pkcs11(key) => *key.verifying_key(),
        }
    }

    /// Signs a 48-byte digest (ECDSA P-384, the digest used as it is).
    pub fn sign_digest(&self, digest: &[u8; 48]) -> Result<p384::ecdsa::Signature, CentralError> {
        match self {
            Self::File(key) => key.sign_prehash(digest).map_err(|_| CentralError::Signing),
            Self::Pkcs11(key) => Ok(key.sign_digest(digest)?),
        }
    }
}

impl IssuerSigner for CentralKey {
    fn public_key(&self) -> VerifyingKey {
        self.verifying_key()
    }

    fn sign_sha384_digest(
        &self,
        digest: &[u8; SHA384_DIGEST_LEN],
    ) -> Result<p384::ecdsa::Signature, p384::ecdsa::signature::Error> {
        match self {
            Self::File(key) => key.sign_sha384_digest(digest),
            Self::Pkcs11(key) => key
                .sign_digest(digest)
                .map_err(p384::ecdsa::signature::Error::from_source),
        }
    }
}

/// Where the central key of a directory lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// In the key file (`DIR/central.key`).
    File(PathBuf),
    /// In a PKCS#11 token, as `DIR/central-key.toml` describes.
    Pkcs11(Pkcs11KeyConfig),
}

impl KeyLocation {
    /// Finds the key of the central directory `dir`: `central.key` or
    /// `central-key.toml`, refusing both. With neither, the key file (whose
    /// absence opening then reports).
    pub fn of(dir: &Path) -> Result<Self, CentralError> {
        let key_path = dir.join(KEY_FILE);
        let config_path = dir.join(KEY_CONFIG_FILE);
        match (exists(&key_path), exists(&config_path)) {
            (true, true) => Err(CentralError::AmbiguousKey(dir.to_path_buf())),
            (false, true) => {
                let text = keyfile::read_text(&config_path)?;
                let config =
                    toml::from_str(&text).map_err(|source| CentralError::BadKeyConfig {
                        path: config_path,
                        source,
                    })?;
                Ok(Self::Pkcs11(config))
            }
            _ => Ok(Self::File(key_path)),
        }
    }
}

/// Whether something (even a dangling link) is at `path`.
fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// The central system's key and its self-signed root certificate.
pub struct CentralAuthority {
    /// The central key `C`.
    pub key: CentralKey,
    /// `C`'s self-signed [`Role::Central`] root certificate.
    pub cert: Certificate,
}

impl fmt::Debug for CentralAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CentralAuthority")
            .field("subject", &display::subject(&self.cert))
            .finish_non_exhaustive()
    }
}

impl CentralAuthority {
    /// Creates the central system in `dir` (mode 0700, created if needed): a
    /// fresh key in `central.key` (PKCS#8 PEM, 0600) and the self-signed root
    /// `CN=<common_name>` valid for `validity_years` in `central.pem`. Refuses
    /// to overwrite an existing key (or key description).
    pub fn init(dir: &Path, common_name: &str, validity_years: u32) -> Result<Self, CentralError> {
        refuse_existing_key(dir)?;
        let key_path = dir.join(KEY_FILE);
        keyfile::create_private_dir(dir)?;
        let key = CentralKey::File(keyfile::generate_signing_key()?);
        let (cert, pem) = self_signed(&key, common_name, validity_years)?;
        if let CentralKey::File(signing_key) = &key {
            keyfile::write_signing_key(&key_path, signing_key).map_err(|err| match err {
                KeyFileError::Exists(path) => CentralError::AlreadyInitialized(path),
                other => other.into(),
            })?;
        }
        write_certificate(dir, &pem)?;
        Ok(Self { key, cert })
    }

    /// Creates the central system in `dir` with its key in a PKCS#11 token:
    /// generates the P-384 pair `config.key_label` in the token (non-extractable,
    /// sensitive, sign-only), writes `central-key.toml` (module, token, key
    /// label; no PIN) and the self-signed root `CN=<common_name>` valid for
    /// `validity_years` in `central.pem`. Refuses when `dir` already holds a
    /// key or key description, or the token already holds a key with the label.
    pub fn init_pkcs11(
        dir: &Path,
        common_name: &str,
        validity_years: u32,
        config: &Pkcs11KeyConfig,
        pin: &Pin,
    ) -> Result<Self, CentralError> {
        refuse_existing_key(dir)?;
        let text = toml::to_string(config).map_err(CentralError::EncodeKeyConfig)?;
        keyfile::create_private_dir(dir)?;
        let key = CentralKey::Pkcs11(Pkcs11CentralKey::generate(config, pin)?);
        let (cert, pem) = self_signed(&key, common_name, validity_years)?;
        keyfile::write_atomic(
            &dir.join(KEY_CONFIG_FILE),
            text.as_bytes(),
            keyfile::PUBLIC_FILE_MODE,
            Overwrite::Refuse,
        )
        .map_err(|err| match err {
            KeyFileError::Exists(path) => CentralError::AlreadyInitialized(path),
            other => other.into(),
        })?;
        write_certificate(dir, &pem)?;
        Ok(Self { key, cert })
    }

    /// Loads the central system from `dir` and checks that the certificate is
    /// a valid self-signed central root for the key. A key in a PKCS#11 token
    /// is opened with the PIN from the environment ([`Pin::from_env`]).
    pub fn open(dir: &Path) -> Result<Self, CentralError> {
        Self::open_with_pin(dir, None)
    }

    /// As [`open`](Self::open), with the token's PIN given (`None`: from the
    /// environment, read only when the key is in a token).
    pub fn open_with_pin(dir: &Path, pin: Option<&Pin>) -> Result<Self, CentralError> {
        let cert_path = dir.join(CERT_FILE);
        let (key, key_path) = match KeyLocation::of(dir)? {
            KeyLocation::File(path) => (CentralKey::File(keyfile::read_signing_key(&path)?), path),
            KeyLocation::Pkcs11(config) => {
                let key = match pin {
                    Some(pin) => Pkcs11CentralKey::open(&config, pin)?,
                    None => Pkcs11CentralKey::open(&config, &Pin::from_env()?)?,
                };
                (CentralKey::Pkcs11(key), dir.join(KEY_CONFIG_FILE))
            }
        };
        let cert = read_certificate(&cert_path)?;
        pki::verify_self_signed_root(&cert, Role::Central).map_err(|source| {
            CentralError::NotCentralRoot {
                path: cert_path.clone(),
                source,
            }
        })?;
        let own = p384::PublicKey::from(key.verifying_key());
        if cert.public_key_sec1() != imprint_apdu::channel::encode_point(&own) {
            return Err(CentralError::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        Ok(Self { key, cert })
    }

    /// The central key `C`'s public half: the anchor modules check the
    /// central system against (claim 4).
    pub fn public_key(&self) -> p384::PublicKey {
        p384::PublicKey::from(self.key.verifying_key())
    }

    /// Signs a 48-byte digest with `C` (ECDSA P-384, the digest used as it is),
    /// in the token when the key is there.
    pub fn sign_digest(&self, digest: &[u8; 48]) -> Result<p384::ecdsa::Signature, CentralError> {
        self.key.sign_digest(digest)
    }

    /// Certifies a personalization unit's key (claim 6): a [`Role::Personalizer`]
    /// certificate for the request's key and common name, valid for
    /// `validity_years` from now (backdated a minute for clock skew) and kept
    /// within the root's validity.
    pub fn certify_personalizer(
        &self,
        csr: &CertificateRequest,
        validity_years: u32,
    ) -> Result<Certificate, CentralError> {
        let validity = issuer_validity(&self.cert, validity_years)?;
        issue::personalizer_cert(
            IssuerKey {
                cert: &self.cert,
                key: &self.key,
            },
            csr,
            validity,
        )
        .map_err(|source| CentralError::Issue {
            what: "personalization unit certificate",
            source,
        })
    }
}

/// Refuses to initialize `dir` when it holds a key file or a key description.
fn refuse_existing_key(dir: &Path) -> Result<(), CentralError> {
    for name in [KEY_FILE, KEY_CONFIG_FILE] {
        let path = dir.join(name);
        if exists(&path) {
            return Err(CentralError::AlreadyInitialized(path));
        }
    }
    Ok(())
}

/// The self-signed central root for `key` and its PEM.
fn self_signed(
    key: &CentralKey,
    common_name: &str,
    validity_years: u32,
) -> Result<(Certificate, String), CentralError> {
    let issue_err = |source| CentralError::Issue {
        what: "central root certificate",
        source,
    };
    let validity = Validity::years_from_now(validity_years).map_err(issue_err)?;
    let cert =
        issue::self_signed_root(Role::Central, common_name, key, validity).map_err(issue_err)?;
    let pem = issue::to_pem(&cert).map_err(issue_err)?;
    Ok((cert, pem))
}

fn write_certificate(dir: &Path, pem: &str) -> Result<(), CentralError> {
    keyfile::write_atomic(
        &dir.join(CERT_FILE),
        pem.as_bytes(),
        keyfile::PUBLIC_FILE_MODE,
        Overwrite::Replace,
    )?;
    Ok(())
}

/// A validity of `years` from a minute ago, nested in `issuer`'s validity;
/// fails if the issuer has expired.
fn issuer_validity(issuer: &Certificate, years: u32) -> Result<Validity, CentralError> {
    let expired = || CentralError::Expired {
        not_after: display::utc(issuer.not_after_unix()),
    };
    if issuer.not_after_unix() <= unix_now() {
        return Err(expired());
    }
    let nested = nested_validity(issuer, years);
    Validity::new(nested.not_before_unix, nested.not_after_unix).map_err(|_| expired())
}

/// Reads one PEM certificate from `path` under the strict Imprint profile.
pub fn read_certificate(path: &Path) -> Result<Certificate, CentralError> {
    let text = keyfile::read_text(path)?;
    issue::from_pem(&text).map_err(|source| CentralError::BadCertificate {
        path: path.to_path_buf(),
        source,
    })
}

/// Output of the command-line tools.
pub mod console {
    /// Ends the program after a failed write to standard output: quietly
    /// (status 0) when the reader went away (`imprint … | head`), with status 1
    /// and a message otherwise.
    pub fn stdout_failed(err: &std::io::Error) -> ! {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {err}");
        std::process::exit(1);
    }
}

/// `println!` for the command-line tools: a closed standard output ends the
/// program through [`console::stdout_failed`] instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::console::stdout_failed(&err);
        }
    }};
}
