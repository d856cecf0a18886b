//! The stations' directories: the manufacturer's and the personalization
//! unit's keys and certificates on disk.
//!
//! ```text
//!  manufacturer/                         personalizer/
//!    manufacturer.key  M, PKCS#8 0600      personalizer.key      P, PKCS#8 0600
//!    manufacturer.pem  M's root            personalizer.csr      P's request (init)
//!                                          by-manufacturer.pem   P certified by M   (claim 7)
//!                                          by-central.pem        P certified by C   (claim 6)
//!                                          central-delivery.pem  C certified by P   (claims 4-5)
//!                                          manufacturer.pem      copy of M's root   (claim 8)
//!                                          journal.sqlite        issuance journal
//!
//!  Personalizer::init ─▶ CSR ─▶ Manufacturer::certify_personalizer ─┐
//!                        CSR ─▶ CentralAuthority::certify_personalizer ─┤
//!                                                 Personalizer::install ◀─┘
//!                                      (checks both, issues central-delivery.pem)
//! ```

use std::path::{Path, PathBuf};

use imprint_apdu::host::personalize::{nested_validity, unix_now};
use imprint_apdu::host::{ManufacturerCredentials, UnitCredentials};
use imprint_apdu::pki::issue::{self, CertificateRequest, IssueError, IssuerKey, Validity};
use imprint_apdu::pki::{self, Certificate, Role};
use imprint_central::display;
use imprint_central::keyfile::{self, KeyFileError, Overwrite};
use p384::ecdsa::SigningKey;

use crate::HostError;

#[cfg(test)]
mod tests;

/// The manufacturer's key file.
pub const MANUFACTURER_KEY: &str = "manufacturer.key";
/// The manufacturer's root certificate (also copied into the unit's directory).
pub const MANUFACTURER_CERT: &str = "manufacturer.pem";
/// The unit's key file.
pub const PERSONALIZER_KEY: &str = "personalizer.key";
/// The unit's certificate request.
pub const PERSONALIZER_CSR: &str = "personalizer.csr";
/// The unit's certificate issued by the manufacturer.
pub const BY_MANUFACTURER: &str = "by-manufacturer.pem";
/// The unit's certificate issued by the central system.
pub const BY_CENTRAL: &str = "by-central.pem";
/// The unit's certificate over the central key.
pub const CENTRAL_DELIVERY: &str = "central-delivery.pem";
/// The unit's issuance journal.
pub const JOURNAL: &str = "journal.sqlite";

/// Default common name of the manufacturer root.
pub const DEFAULT_MANUFACTURER_NAME: &str = "Imprint manufacturer";
/// Default lifetime of the manufacturer root, in years.
pub const DEFAULT_MANUFACTURER_YEARS: u32 = 20;
/// Default lifetime of a unit's certificate from the manufacturer, in years.
/// Longer than the central system's default: modules require the unit's
/// central certificate to lie within its manufacturer certificate.
pub const DEFAULT_UNIT_BY_MANUFACTURER_YEARS: u32 = 10;
/// Default lifetime of module identity certificates, in years.
pub const DEFAULT_IDENTITY_YEARS: u32 = 20;
/// Default common name of a personalization unit.
pub const DEFAULT_PERSONALIZER_NAME: &str = "Imprint personalization unit";
/// Default upper bound of the central-delivery certificate's lifetime, in years.
pub const DEFAULT_DELIVERY_YEARS: u32 = 10;

/// The three roles set up in one directory, for demos, benchmarks and tests.
pub struct Roles {
    /// The manufacturer (`DIR/manufacturer`).
    pub manufacturer: Manufacturer,
    /// The central system (`DIR/central`).
    pub central: imprint_central::CentralAuthority,
    /// The personalization unit's directory (`DIR/personalizer`).
    pub unit_dir: PathBuf,
    /// The unit, installed: certified by the manufacturer (10 years) and the
    /// central system (5 years).
    pub unit: UnitCredentials,
}

/// Creates a manufacturer, a central system and a personalization unit
/// certified by both in `dir`, each named after `label` ("Imprint demo" gives
/// "Imprint demo manufacturer", …).
pub fn create_all(dir: &Path, label: &str) -> Result<Roles, HostError> {
    let manufacturer = Manufacturer::init(
        &dir.join("manufacturer"),
        &format!("{label} manufacturer"),
        20,
    )?;
    let central = imprint_central::CentralAuthority::init(
        &dir.join("central"),
        &format!("{label} central system"),
        20,
    )?;
    let unit_dir = dir.join("personalizer");
    let csr = Personalizer::init(&unit_dir, &format!("{label} personalization unit"))?;
    let by_manufacturer = manufacturer.certify_personalizer(&csr, 10)?;
    let by_central = central.certify_personalizer(&csr, 5)?;
    let unit = Personalizer::install(
        &unit_dir,
        manufacturer.root(),
        &by_manufacturer,
        &central.cert,
        &by_central,
        10,
    )?;
    Ok(Roles {
        manufacturer,
        central,
        unit_dir,
        unit,
    })
}

/// The journal path of the unit in `dir`.
pub fn journal_path(dir: &Path) -> PathBuf {
    dir.join(JOURNAL)
}

/// The manufacturer's station: its checking key `M` and root certificate.
pub struct Manufacturer {
    credentials: ManufacturerCredentials,
}

impl std::fmt::Debug for Manufacturer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manufacturer")
            .field("subject", &display::subject(&self.credentials.root))
            .finish_non_exhaustive()
    }
}

impl Manufacturer {
    /// Creates the manufacturer in `dir` (0700): `manufacturer.key` (0600) and
    /// the self-signed root `CN=<common_name>` in `manufacturer.pem`. Refuses
    /// to overwrite an existing key.
    pub fn init(dir: &Path, common_name: &str, validity_years: u32) -> Result<Self, HostError> {
        let key_path = dir.join(MANUFACTURER_KEY);
        refuse_existing(&key_path)?;
        keyfile::create_private_dir(dir)?;
        let key = keyfile::generate_signing_key()?;
        let issue_err = |source| HostError::Issue {
            what: "manufacturer root certificate",
            source,
        };
        let validity = Validity::years_from_now(validity_years).map_err(issue_err)?;
        let root = issue::self_signed_root(Role::Manufacturer, common_name, &key, validity)
            .map_err(issue_err)?;
        write_key(&key_path, &key)?;
        write_certificate(&dir.join(MANUFACTURER_CERT), &root)?;
        Ok(Self {
            credentials: ManufacturerCredentials { key, root },
        })
    }

    /// Loads the manufacturer from `dir`, checking that the root is a valid
    /// self-signed manufacturer root for the key.
    pub fn open(dir: &Path) -> Result<Self, HostError> {
        let key = keyfile::read_signing_key(&dir.join(MANUFACTURER_KEY))?;
        let root = read_certificate(
            &dir.join(MANUFACTURER_CERT),
            "manufacturer root certificate",
        )?;
        pki::verify_self_signed_root(&root, Role::Manufacturer).map_err(|source| {
            HostError::Chain {
                what: "manufacturer root certificate",
                source,
            }
        })?;
        if root.public_key_sec1() != sec1(&key) {
            return Err(HostError::NotForThisUnit("manufacturer root certificate"));
        }
        Ok(Self {
            credentials: ManufacturerCredentials { key, root },
        })
    }

    /// The key and root, as the manufacturing flow takes them.
    pub fn credentials(&self) -> &ManufacturerCredentials {
        &self.credentials
    }

    /// Gives the credentials back.
    pub fn into_credentials(self) -> ManufacturerCredentials {
        self.credentials
    }

    /// The root certificate.
    pub fn root(&self) -> &Certificate {
        &self.credentials.root
    }

    /// Certifies a personalization unit (claim 7): a [`Role::Personalizer`]
    /// certificate for the request's key and name, valid `validity_years`
    /// from a minute ago and within the root.
    pub fn certify_personalizer(
        &self,
        csr: &CertificateRequest,
        validity_years: u32,
    ) -> Result<Certificate, HostError> {
        let issue_err = |source| HostError::Issue {
            what: "personalization unit certificate",
            source,
        };
        let validity =
            issuer_validity(&self.credentials.root, validity_years).map_err(issue_err)?;
        issue::personalizer_cert(
            IssuerKey {
                cert: &self.credentials.root,
                key: &self.credentials.key,
            },
            csr,
            validity,
        )
        .map_err(issue_err)
    }
}

/// The personalization unit's directory.
#[derive(Debug, Clone, Copy)]
pub struct Personalizer;

impl Personalizer {
    /// Creates the unit in `dir` (0700): a fresh key in `personalizer.key`
    /// (0600) and its certificate request `CN=<common_name>` in
    /// `personalizer.csr`, to be certified by the manufacturer and by the
    /// central system. Refuses to overwrite an existing key.
    pub fn init(dir: &Path, common_name: &str) -> Result<CertificateRequest, HostError> {
        let key_path = dir.join(PERSONALIZER_KEY);
        refuse_existing(&key_path)?;
        keyfile::create_private_dir(dir)?;
        let key = keyfile::generate_signing_key()?;
        let issue_err = |source| HostError::Issue {
            what: "certificate request",
            source,
        };
        let csr = CertificateRequest::new(common_name, &key).map_err(issue_err)?;
        let pem = csr.to_pem().map_err(issue_err)?;
        write_key(&key_path, &key)?;
        keyfile::write_atomic(
            &dir.join(PERSONALIZER_CSR),
            pem.as_bytes(),
            keyfile::PUBLIC_FILE_MODE,
            Overwrite::Replace,
        )?;
        Ok(csr)
    }

    /// The unit's certificate request, as written by [`Personalizer::init`].
    pub fn csr(dir: &Path) -> Result<CertificateRequest, HostError> {
        read_csr(&dir.join(PERSONALIZER_CSR))
    }

    /// Installs the unit's certificates: checks that `by_manufacturer` and
    /// `by_central` are [`Role::Personalizer`] certificates for this unit's key
    /// with the same subject, issued by `manufacturer_root` and `central_root`
    /// (both valid self-signed roots); then issues, with the unit's key, the
    /// central-delivery certificate over the central root (claims 4–5) and
    /// writes everything into `dir`.
    ///
    /// The central-delivery certificate gets the widest validity modules
    /// accept — within the manufacturer certificate and the central root, and
    /// no longer than `validity_years` from now — and must contain the
    /// validity of `by_central`, since a module checks
    /// `by_manufacturer ⊇ central-delivery ⊇ by_central`.
    pub fn install(
        dir: &Path,
        manufacturer_root: &Certificate,
        by_manufacturer: &Certificate,
        central_root: &Certificate,
        by_central: &Certificate,
        validity_years: u32,
    ) -> Result<UnitCredentials, HostError> {
        let key = keyfile::read_signing_key(&dir.join(PERSONALIZER_KEY))?;
        let own = sec1(&key);
        let chain = |what| move |source| HostError::Chain { what, source };
        pki::verify_self_signed_root(manufacturer_root, Role::Manufacturer)
            .map_err(chain("manufacturer root certificate"))?;
        pki::verify_self_signed_root(central_root, Role::Central)
            .map_err(chain("central root certificate"))?;
        for (what, cert, root) in [
            (
                "unit certificate from the manufacturer",
                by_manufacturer,
                manufacturer_root,
            ),
            (
                "unit certificate from the central system",
                by_central,
                central_root,
            ),
        ] {
            if cert.role() != Role::Personalizer {
                return Err(HostError::WrongRole {
                    what,
                    expected: Role::Personalizer,
                    found: cert.role(),
                });
            }
            if cert.public_key_sec1() != own {
                return Err(HostError::NotForThisUnit(what));
            }
            pki::verify_issued_by(cert, root, 0).map_err(chain(what))?;
        }
        if by_manufacturer.subject_der() != by_central.subject_der() {
            return Err(HostError::SubjectMismatch {
                by_manufacturer: display::subject(by_manufacturer),
                by_central: display::subject(by_central),
            });
        }

        let not_before = by_manufacturer
            .not_before_unix()
            .max(central_root.not_before_unix());
        let widest_end = by_manufacturer
            .not_after_unix()
            .min(central_root.not_after_unix());
        let requested_end = unix_now().saturating_add(u64::from(validity_years) * 365 * 24 * 3600);
        let not_after = widest_end.min(requested_end);
        // No nesting of the central certificate inside the delivery window is
        // needed: modules do not require it below a delivery certificate.
        let issue_err = |source| HostError::Issue {
            what: "central-delivery certificate",
            source,
        };
        let validity = Validity::new(not_before, not_after).map_err(issue_err)?;
        let central_delivery = issue::central_delivery_cert(
            IssuerKey {
                cert: by_manufacturer,
                key: &key,
            },
            central_root,
            validity,
        )
        .map_err(issue_err)?;
        // The checks a module makes on the bundle (claims 5-6).
        pki::verify_issued_by(by_central, &central_delivery, 1).map_err(chain(
            "unit certificate from the central system, under the central-delivery certificate",
        ))?;

        let unit = UnitCredentials {
            key,
            cert_by_manufacturer: by_manufacturer.clone(),
            cert_by_central: by_central.clone(),
            central_delivery,
            manufacturer_root: manufacturer_root.clone(),
        };
        unit.check()?;
        write_certificate(&dir.join(MANUFACTURER_CERT), manufacturer_root)?;
        write_certificate(&dir.join(BY_MANUFACTURER), by_manufacturer)?;
        write_certificate(&dir.join(BY_CENTRAL), by_central)?;
        write_certificate(&dir.join(CENTRAL_DELIVERY), &unit.central_delivery)?;
        Ok(unit)
    }

    /// Loads the installed unit from `dir` and checks its credentials: roles
    /// and keys ([`UnitCredentials::check`]) and the chain a module verifies
    /// (manufacturer root → unit → central delivery → unit by central).
    pub fn open(dir: &Path) -> Result<UnitCredentials, HostError> {
        let key = keyfile::read_signing_key(&dir.join(PERSONALIZER_KEY))?;
        let read = |name: &str, what| read_certificate(&dir.join(name), what);
        let unit = UnitCredentials {
            key,
            cert_by_manufacturer: read(BY_MANUFACTURER, "unit certificate from the manufacturer")?,
            cert_by_central: read(BY_CENTRAL, "unit certificate from the central system")?,
            central_delivery: read(CENTRAL_DELIVERY, "central-delivery certificate")?,
            manufacturer_root: read(MANUFACTURER_CERT, "manufacturer root certificate")?,
        };
        unit.check()?;
        let chain = |what| move |source| HostError::Chain { what, source };
        pki::verify_self_signed_root(&unit.manufacturer_root, Role::Manufacturer)
            .map_err(chain("manufacturer root certificate"))?;
        pki::verify_issued_by(&unit.cert_by_manufacturer, &unit.manufacturer_root, 0)
            .map_err(chain("unit certificate from the manufacturer"))?;
        pki::verify_issued_by(&unit.central_delivery, &unit.cert_by_manufacturer, 0)
            .map_err(chain("central-delivery certificate"))?;
        pki::verify_issued_by(&unit.cert_by_central, &unit.central_delivery, 1)
            .map_err(chain("unit certificate from the central system"))?;
        Ok(unit)
    }
}

/// Reads one PEM certificate under the strict profile; `what` names it in errors.
pub fn read_certificate(path: &Path, what: &'static str) -> Result<Certificate, HostError> {
    let text = keyfile::read_text(path)?;
    issue::from_pem(&text).map_err(|source| HostError::BadFile {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// Reads a PEM certificate request and checks its self-signature.
pub fn read_csr(path: &Path) -> Result<CertificateRequest, HostError> {
    let text = keyfile::read_text(path)?;
    CertificateRequest::from_pem(&text).map_err(|source| HostError::BadFile {
        path: path.to_path_buf(),
        what: "certificate request",
        source,
    })
}

/// Writes one certificate as PEM (0644), replacing the file atomically.
pub fn write_certificate(path: &Path, cert: &Certificate) -> Result<(), HostError> {
    write_certificates(path, std::slice::from_ref(cert))
}

/// Writes certificates as concatenated PEM (0644), replacing the file atomically.
pub fn write_certificates(path: &Path, certs: &[Certificate]) -> Result<(), HostError> {
    let pem = issue::to_pem_bundle(certs).map_err(|source| HostError::Issue {
        what: "PEM encoding",
        source,
    })?;
    keyfile::write_atomic(
        path,
        pem.as_bytes(),
        keyfile::PUBLIC_FILE_MODE,
        Overwrite::Replace,
    )?;
    Ok(())
}

fn refuse_existing(key_path: &Path) -> Result<(), HostError> {
    if std::fs::symlink_metadata(key_path).is_ok() {
        return Err(HostError::AlreadyInitialized(key_path.to_path_buf()));
    }
    Ok(())
}

fn write_key(path: &Path, key: &SigningKey) -> Result<(), HostError> {
    keyfile::write_signing_key(path, key).map_err(|err| match err {
        KeyFileError::Exists(path) => HostError::AlreadyInitialized(path),
        other => other.into(),
    })
}

fn sec1(key: &SigningKey) -> Vec<u8> {
    imprint_apdu::channel::encode_point(&p384::PublicKey::from(key.verifying_key()))
}

/// A validity of `years` from a minute ago, nested in `issuer`'s; fails if the
/// issuer has expired.
pub(crate) fn issuer_validity(issuer: &Certificate, years: u32) -> Result<Validity, IssueError> {
    let nested = nested_validity(issuer, years);
    Validity::new(nested.not_before_unix, nested.not_after_unix)
}
