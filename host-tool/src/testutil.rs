//! Helpers shared by the unit tests.

use imprint_apdu::host::IssuedCertificate;
use imprint_apdu::pki::issue::{self, CertificateRequest, IssuerKey, Validity};
use imprint_apdu::pki::{NONCE_LEN, Role};
use imprint_central::keyfile::generate_signing_key;

/// A module certificate for `serial` with `nonce`, under a throwaway central
/// root and unit.
pub fn issued(serial: &str, nonce: u8) -> IssuedCertificate {
    let validity = Validity::years_from_now(5).expect("validity");
    let root_key = generate_signing_key().expect("key");
    let root =
        issue::self_signed_root(Role::Central, "Test central", &root_key, validity).expect("root");
    let unit_key = generate_signing_key().expect("key");
    let csr = CertificateRequest::new("Test unit", &unit_key).expect("csr");
    let unit = issue::personalizer_cert(
        IssuerKey {
            cert: &root,
            key: &root_key,
        },
        &csr,
        validity,
    )
    .expect("unit");
    let module_key = generate_signing_key().expect("key");
    let point =
        imprint_apdu::channel::encode_point(&p384::PublicKey::from(module_key.verifying_key()));
    let nonce = [nonce; NONCE_LEN];
    let certificate = issue::module_cert(
        IssuerKey {
            cert: &unit,
            key: &unit_key,
        },
        serial,
        &point,
        &nonce,
        validity,
    )
    .expect("module certificate");
    IssuedCertificate {
        serial: serial.to_owned(),
        certificate,
        nonce,
        tan: None,
        identification: None,
    }
}

/// The three roles in a temporary directory, and the unit's journal.
pub struct UnitFixture {
    /// Removed when dropped; keep it until the end.
    pub dir: tempfile::TempDir,
    /// The manufacturer, to manufacture modules.
    pub manufacturer: crate::roles::Manufacturer,
    /// The unit.
    pub unit: imprint_apdu::host::UnitCredentials,
    /// The unit's journal.
    pub journal: crate::journal::SqliteJournal,
}

/// A fresh [`UnitFixture`].
pub fn unit_fixture() -> UnitFixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let crate::roles::Roles {
        manufacturer,
        unit_dir,
        unit,
        ..
    } = crate::roles::create_all(dir.path(), "Test").expect("roles");
    let journal = crate::journal::SqliteJournal::open(&crate::roles::journal_path(&unit_dir))
        .expect("journal");
    UnitFixture {
        dir,
        manufacturer,
        unit,
        journal,
    }
}
