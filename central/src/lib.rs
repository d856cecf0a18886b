//! Imprint's central system: the root key `C` of the operational PKI and the
//! offline operations on it (DESIGN §2; claims 4–6).
//!
//! The central system is the root that module certificates chain to. It
//! certifies personalization units (claim 6); a unit in turn certifies the
//! central key for delivery into modules (claims 4–5), so a module learns `C`
//! only through a unit it authenticated. Its network server (the operating
//! channel, claim 11) comes later; this crate holds the key and what can be
//! done with it offline.
//!
//! ```text
//!   init ──▶ DIR/central.key  (PKCS#8 PEM, 0600)  ─┐
//!        └─▶ DIR/central.pem  (self-signed root)  ─┤ open()
//!                                                   ▼
//!   personalizer.csr ──▶ CentralAuthority::certify_personalizer ──▶ by-central.pem
//!                                                                    (Role::Personalizer,
//!                                                                     issued by C)
//! ```
//!
//! [`keyfile`] holds the key-file helpers (0600 from creation, atomic
//! replacement, zeroized buffers) that the other roles' tools reuse, and
//! [`display`] the formatting of certificates for operators.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};

use imprint_apdu::host::personalize::{nested_validity, unix_now};
use imprint_apdu::pki::issue::{self, CertificateRequest, IssueError, IssuerKey, Validity};
use imprint_apdu::pki::{self, Certificate, PkiError, Role};
use p384::ecdsa::SigningKey;

pub mod display;
pub mod keyfile;

#[cfg(test)]
mod tests;

use keyfile::{KeyFileError, Overwrite};

/// File name of the central key inside the central directory.
pub const KEY_FILE: &str = "central.key";

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

/// The central system's key and its self-signed root certificate.
pub struct CentralAuthority {
    /// The central key `C`.
    pub key: SigningKey,
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
    /// to overwrite an existing key.
    pub fn init(dir: &Path, common_name: &str, validity_years: u32) -> Result<Self, CentralError> {
        let key_path = dir.join(KEY_FILE);
        if key_path.exists() {
            return Err(CentralError::AlreadyInitialized(key_path));
        }
        keyfile::create_private_dir(dir)?;
        let key = keyfile::generate_signing_key()?;
        let issue_err = |source| CentralError::Issue {
            what: "central root certificate",
            source,
        };
        let validity = Validity::years_from_now(validity_years).map_err(issue_err)?;
        let cert = issue::self_signed_root(Role::Central, common_name, &key, validity)
            .map_err(issue_err)?;
        let pem = issue::to_pem(&cert).map_err(issue_err)?;
        keyfile::write_signing_key(&key_path, &key).map_err(|err| match err {
            KeyFileError::Exists(path) => CentralError::AlreadyInitialized(path),
            other => other.into(),
        })?;
        keyfile::write_atomic(
            &dir.join(CERT_FILE),
            pem.as_bytes(),
            keyfile::PUBLIC_FILE_MODE,
            Overwrite::Replace,
        )?;
        Ok(Self { key, cert })
    }

    /// Loads the central system from `dir` and checks that the certificate is
    /// a valid self-signed central root for the key.
    pub fn open(dir: &Path) -> Result<Self, CentralError> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let key = keyfile::read_signing_key(&key_path)?;
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

    /// Signs a 48-byte digest with `C` (ECDSA P-384, the digest used as it is).
    pub fn sign_digest(&self, digest: &[u8; 48]) -> Result<p384::ecdsa::Signature, CentralError> {
        use p384::ecdsa::signature::hazmat::PrehashSigner;
        self.key
            .sign_prehash(digest)
            .map_err(|_| CentralError::Signing)
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
