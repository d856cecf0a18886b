//! One end-to-end test per patent claim (`cargo test claim`), each running the
//! personalization unit's flow against the applet in-process.

use imprint_apdu::applet::Applet;
use imprint_apdu::channel::encode_point;
use imprint_apdu::host::personalize::{
    BundleRejection, ModuleCertificateIssuer, ModuleCertificateRequest, reset_module,
};
use imprint_apdu::host::status::read_status;
use imprint_apdu::host::{
    CardLink, InProcessTransport, PersonalizationOptions, PersonalizeError, UnitCredentials,
    personalize,
};
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::keymem::{KeyMemory, KeySlot};
use imprint_apdu::pki::issue::{self, IssueError, IssuerKey};
use imprint_apdu::pki::{self, Certificate, Role};
use imprint_apdu::{Lifecycle, iso::sw};
use imprint_tests::*;

fn module_key_point<K: KeyMemory>(link: &mut CardLink<InProcessTransport<K>>) -> Option<Vec<u8>> {
    // Tests may look inside the key memory; only public keys come out of it.
    let applet = link.transport_mut().applet_mut();
    let memory = applet_memory(applet);
    memory
        .public_key(KeySlot::Module)
        .unwrap()
        .map(|key| encode_point(&key))
}

fn applet_memory<K: KeyMemory>(applet: &mut Applet<K>) -> &mut K {
    applet.memory_mut()
}

#[test]
fn claim01_module_key_generated_certified_and_module_operating() {
    let pki = Pki::new();
    let mut link = ram_module();
    let manufactured = manufactured(&mut link, &pki);
    assert_eq!(
        link.transport_mut().applet().lifecycle(),
        Lifecycle::Personalization
    );

    let mut journal = RecordingJournal::default();
    let report = personalized(&mut link, &pki.unit, &mut journal).expect("personalization");
    assert_eq!(report.serial, manufactured.serial);
    assert_eq!(
        link.transport_mut().applet().lifecycle(),
        Lifecycle::Operating
    );

    // The module key was created in the module; its public half is what was certified.
    let point = module_key_point(&mut link).expect("module key in key memory");
    assert_eq!(report.certificate.public_key_sec1(), point);

    // What the module holds chains to the central system, as the central
    // system will check it: module ← unit (by central) ← central root.
    let status = read_status(&mut link).expect("status");
    assert_eq!(status.info.lifecycle, Lifecycle::Operating);
    let module_cert = status.module_cert.expect("module certificate");
    let unit_cert = status.unit_cert.expect("unit certificate");
    assert_eq!(module_cert.der(), report.certificate.der());
    pki::verify_issued_by(&module_cert, &unit_cert, 0).expect("module cert by unit");
    pki::verify_issued_by(&unit_cert, &pki.central_root, 1).expect("unit cert by central");
    assert_eq!(
        report.apdus, 5,
        "first personalization: SELECT, 2× AUTHENTICATE, GENERATE, PUT DATA"
    );
}

#[test]
fn claim02_reentering_personalization_erases_the_module_key() {
    let pki = Pki::new();
    let mut link = ram_module();
    manufactured(&mut link, &pki);
    let mut journal = RecordingJournal::default();
    let first = personalized(&mut link, &pki.unit, &mut journal).unwrap();
    let identity_before = link
        .transport_mut()
        .applet()
        .records()
        .identity_cert
        .clone();

    reset_module(&mut link, &pki.unit).expect("reset");
    let applet = link.transport_mut().applet_mut();
    assert_eq!(applet.lifecycle(), Lifecycle::Personalization);
    let records = applet.records().clone();
    assert_eq!(records.module_cert, None);
    assert_eq!(records.central_cert, None);
    assert_eq!(records.unit_cert, None);
    assert_eq!(records.identity_cert, identity_before, "identity survives");
    assert!(records.checking_cert.is_some(), "checking key survives");
    assert_eq!(module_key_point(&mut link), None, "module key erased");

    let second = personalized(&mut link, &pki.unit, &mut journal).unwrap();
    assert_ne!(
        first.certificate.public_key_sec1(),
        second.certificate.public_key_sec1()
    );

    // Re-personalizing an OPERATING module directly also erases first (TERMINATE in the flow).
    let third = personalized(&mut link, &pki.unit, &mut journal).unwrap();
    assert_eq!(third.apdus, 6, "re-personalization adds TERMINATE");
    assert_ne!(
        second.certificate.public_key_sec1(),
        third.certificate.public_key_sec1()
    );
}

#[test]
fn claim03_channel_is_authenticated_and_protected_against_corruption() {
    let pki = Pki::new();
    let mut link = ram_module();
    manufactured(&mut link, &pki);
    let applet = link.into_transport().into_applet();

    // Flip one byte of the GENERATE command (the 4th APDU, first under secure messaging).
    let tampering = TamperingTransport {
        inner: InProcessTransport::new(applet),
        count: 0,
        tamper: |n: usize, mut apdu: Vec<u8>| {
            if n == 4 {
                let last = apdu.len() - 3;
                apdu[last] ^= 0x01;
            }
            apdu
        },
    };
    let mut link = CardLink::new(tampering);
    let mut journal = RecordingJournal::default();
    let err = personalize(
        &mut link,
        &mut journal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PersonalizeError::ChannelClosed(_)), "{err}");
    let applet = link.into_transport().inner.into_applet();
    assert_eq!(applet.lifecycle(), Lifecycle::Personalization);
    assert!(
        journal.entries.is_empty(),
        "nothing issued over a corrupted channel"
    );

    // The same flow without tampering succeeds on the same module.
    let mut link = CardLink::new(InProcessTransport::new(applet));
    personalized(&mut link, &pki.unit, &mut journal).expect("clean run");
}

#[test]
fn claim04_central_key_is_delivered_with_the_module_certificate() {
    let pki = Pki::new();
    let mut link = ram_module();
    manufactured(&mut link, &pki);
    personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).unwrap();
    let status = read_status(&mut link).unwrap();
    let anchor = status.central_cert.expect("central anchor");
    assert_eq!(anchor.role(), Role::CentralDelivery);
    assert_eq!(anchor.public_key_sec1(), pki.central_root.public_key_sec1());
    assert_eq!(anchor.subject_der(), pki.central_root.subject_der());
}

#[test]
fn claim05_central_key_certificate_must_be_signed_by_the_unit() {
    let deployment = Pki::new();
    // A central-key certificate issued by another unit (same manufacturer).
    let other = new_unit(
        &deployment.manufacturer,
        &deployment.central_key,
        &deployment.central_root,
        "Other Unit",
    );
    let mut unit = deployment.unit.clone();
    unit.central_delivery = other.central_delivery;
    let (err, lifecycle) = deployment.run_failing(&unit, None);
    assert_eq!(lifecycle, Lifecycle::Personalization);
    assert!(
        matches!(
            err,
            PersonalizeError::CertificatesRejected(BundleRejection::CentralCertificate(_))
        ),
        "{err}"
    );
}

#[test]
fn claim06_unit_certificate_must_be_signed_by_the_central_system() {
    let deployment = Pki::new();
    let (other_central_key, other_central_root) = new_central("Other Central");
    let other = new_unit(
        &deployment.manufacturer,
        &other_central_key,
        &other_central_root,
        "Test Unit",
    );
    let mut unit = deployment.unit.clone();
    // Same unit key, but its "by central" certificate comes from a foreign central system.
    let csr = issue::CertificateRequest::new("Test Unit", &unit.key).unwrap();
    unit.cert_by_central = issue::personalizer_cert(
        IssuerKey {
            cert: &other_central_root,
            key: &other_central_key,
        },
        &csr,
        issue::Validity::years_from_now(10).unwrap(),
    )
    .unwrap();
    drop(other);
    let (err, lifecycle) = deployment.run_failing(&unit, None);
    assert_eq!(lifecycle, Lifecycle::Personalization);
    assert!(
        matches!(
            err,
            PersonalizeError::CertificatesRejected(BundleRejection::UnitCertificate(_))
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("not signed by the central system"),
        "{err}"
    );
}

#[test]
fn claim07_unit_is_checked_with_the_manufacturer_checking_key_first() {
    let deployment = Pki::new();
    // A unit certified by another manufacturer: the module refuses it at the
    // first authentication step, before anything is generated or issued.
    let other_manufacturer = new_manufacturer("Rogue Manufacturer");
    let mut unit = new_unit(
        &other_manufacturer,
        &deployment.central_key,
        &deployment.central_root,
        "Rogue Unit",
    );
    unit.manufacturer_root = deployment.manufacturer.root.clone();
    let mut link = ram_module();
    manufacture_with(&mut link, &deployment.manufacturer);
    let mut journal = RecordingJournal::default();
    let err = personalize(
        &mut link,
        &mut journal,
        &unit,
        PersonalizationOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "module rejected the personalization unit: its certificate is not signed by the manufacturer checking key"
    );
    assert_eq!(
        link.apdu_count(),
        3 + 2,
        "manufacture (3) + SELECT + MUTUAL AUTHENTICATE"
    );
    assert!(journal.entries.is_empty());
    assert_eq!(module_key_point(&mut link), None);
}

#[test]
fn claim08_identity_key_is_formed_once_certified_and_authenticates_the_module() {
    let pki = Pki::new();
    let mut link = ram_module();
    let report = manufactured(&mut link, &pki);
    pki::verify_issued_by(&report.identity_cert, &pki.manufacturer.root, 0).unwrap();
    assert_eq!(report.identity_cert.role(), Role::ModuleIdentity);

    // A second identity key generation is refused, in every later state.
    let select = link
        .send([0, 0xA4, 4, 0], &imprint_apdu::proto::AID)
        .unwrap();
    assert_eq!(select.sw, sw::OK);
    let again = link.send([0, 0x47, 0x80, 0x01], &[]).unwrap();
    assert_eq!(again.sw, sw::CONDITIONS);

    // The unit only personalizes modules whose identity it can verify (challenge-response):
    // a module manufactured by someone else is refused by the unit.
    let rogue = new_manufacturer("Rogue Manufacturer");
    let mut rogue_link = ram_module();
    manufacture_with(&mut rogue_link, &rogue);
    // The rogue module trusts units of the rogue manufacturer only; give it one
    // that is also certified by our central system, so only identity fails.
    let mut unit = new_unit(&rogue, &pki.central_key, &pki.central_root, "Unit");
    unit.manufacturer_root = pki.manufacturer.root.clone();
    let err = personalize(
        &mut rogue_link,
        &mut RecordingJournal::default(),
        &unit,
        PersonalizationOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, PersonalizeError::ModuleNotAuthentic(_)),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("identity certificate is not issued by the manufacturer"),
        "{err}"
    );
}

struct NonceIssuer(Option<[u8; 16]>);

impl ModuleCertificateIssuer for NonceIssuer {
    fn issue(
        &self,
        unit: &UnitCredentials,
        request: &ModuleCertificateRequest,
    ) -> Result<Certificate, IssueError> {
        let nonce = self.0.unwrap_or(request.nonce);
        issue::module_cert(
            IssuerKey {
                cert: &unit.cert_by_central,
                key: &unit.key,
            },
            &request.serial,
            &request.public_key,
            &nonce,
            request.validity,
        )
    }
}

#[test]
fn claim09_module_nonce_is_signed_into_the_module_certificate() {
    let deployment = Pki::new();
    let unit = deployment.unit.clone();
    let mut link = ram_module();
    manufacture_with(&mut link, &deployment.manufacturer);
    let mut journal = RecordingJournal::default();
    let report = personalize(
        &mut link,
        &mut journal,
        &unit,
        PersonalizationOptions::default(),
    )
    .unwrap();
    let nonce = report.certificate.nonce().expect("nonce extension");
    assert_eq!(journal.entries[0].0.nonce, nonce);

    // A certificate with another nonce (e.g. replayed from an earlier session) is refused.
    let (err, lifecycle) =
        deployment.run_failing(&unit, Some(Box::new(NonceIssuer(Some([7u8; 16])))));
    assert_eq!(lifecycle, Lifecycle::Personalization);
    assert!(
        matches!(
            err,
            PersonalizeError::CertificatesRejected(BundleRejection::NonceMismatch)
        ),
        "{err}"
    );
}

#[test]
fn claim10_variation_value_enters_module_key_generation() {
    let pki = Pki::new();
    let seed = random_seed();
    let mut keys = Vec::new();
    for variation in [b"variation A".to_vec(), b"variation B".to_vec()] {
        // Same card randomness (same seed), different variation: different keys.
        let applet = Applet::new(imprint_apdu::keymem::memory::MemoryKeyMemory::new(seed)).unwrap();
        let mut link = CardLink::new(InProcessTransport::new(applet));
        manufactured(&mut link, &pki);
        let options = PersonalizationOptions {
            variation,
            ..PersonalizationOptions::default()
        };
        let report = personalize(
            &mut link,
            &mut RecordingJournal::default(),
            &pki.unit,
            options,
        )
        .unwrap();
        keys.push(report.certificate.public_key_sec1());
    }
    // Same variation, different card randomness: different keys (the host cannot choose the key).
    for _ in 0..2 {
        let mut link = ram_module();
        manufactured(&mut link, &pki);
        let options = PersonalizationOptions {
            variation: b"variation A".to_vec(),
            ..PersonalizationOptions::default()
        };
        let report = personalize(
            &mut link,
            &mut RecordingJournal::default(),
            &pki.unit,
            options,
        )
        .unwrap();
        keys.push(report.certificate.public_key_sec1());
    }
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn claim19_security_module_keeps_private_keys_in_its_key_memory() {
    // The security module of claim 19 on a file-backed key memory: private keys
    // live in 0600 files and never cross the data interface.
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let memory = FileKeyMemory::open(dir.path()).unwrap();
    let logging = LoggingTransport::new(InProcessTransport::new(Applet::new(memory).unwrap()));
    let mut link = CardLink::new(logging);
    manufacture_with(&mut link, &pki.manufacturer);
    personalize(
        &mut link,
        &mut RecordingJournal::default(),
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap();
    for file in ["identity.key", "module.key", "records.tlv"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let log = &link.transport_mut().log;
    for file in ["identity.key", "module.key"] {
        let scalar = std::fs::read(dir.path().join(file)).unwrap();
        assert_eq!(scalar.len(), 48);
        for (command, response) in log {
            assert!(
                !contains(command, &scalar[..16]) && !contains(response, &scalar[..16]),
                "{file} leaked"
            );
        }
    }
}

#[test]
fn claim20_personalization_unit_journals_before_sending() {
    let pki = Pki::new();
    let mut link = ram_module();
    manufactured(&mut link, &pki);
    let mut journal = RecordingJournal::default();
    let report = personalized(&mut link, &pki.unit, &mut journal).unwrap();
    assert_eq!(journal.entries.len(), 1);
    assert_eq!(journal.entries[0].1, EntryState::Installed);
    assert_eq!(
        journal.entries[0].0.certificate.der(),
        report.certificate.der()
    );

    // A journal that refuses to record stops the run before the certificate is sent.
    struct RefusingJournal;
    impl imprint_apdu::host::IssuanceJournal for RefusingJournal {
        fn record_issued(
            &mut self,
            _: &imprint_apdu::host::IssuedCertificate,
        ) -> Result<i64, imprint_apdu::host::JournalError> {
            Err(imprint_apdu::host::JournalError("disk full".into()))
        }
        fn mark_installed(&mut self, _: i64) -> Result<(), imprint_apdu::host::JournalError> {
            unreachable!()
        }
        fn mark_failed(&mut self, _: i64, _: &str) -> Result<(), imprint_apdu::host::JournalError> {
            unreachable!()
        }
    }
    let mut link = ram_module();
    manufactured(&mut link, &pki);
    let err = personalize(
        &mut link,
        &mut RefusingJournal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PersonalizeError::Journal(_)), "{err}");
    assert_eq!(
        link.transport_mut().applet().lifecycle(),
        Lifecycle::Personalization
    );
    assert_eq!(
        link.apdu_count(),
        3 + 4,
        "the PUT DATA with the certificate was never sent"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
