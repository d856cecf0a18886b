//! The claim tests' bodies, generic over how a module is reached: in-process
//! (`tests/claims.rs`) or as `imprint-card` behind pcscd
//! (`host-tool/tests/pcsc_claims.rs`). The same assertions run over both, so
//! the applet and the protocol cannot fork between them.
//!
//! Inspection goes through the module's data interface (SELECT, GET DATA)
//! plus, where a claim is about the key memory itself, the module directory.

use std::path::{Path, PathBuf};

use imprint_apdu::channel::encode_point;
use imprint_apdu::host::personalize::{
    BundleRejection, ModuleCertificateIssuer, ModuleCertificateRequest, OpenChannel, reset_module,
};
use imprint_apdu::host::status::{ModuleStatus, read_status};
use imprint_apdu::host::{
    CardLink, ManufacturerCredentials, PersonalizationOptions, PersonalizeError, Transport,
    UnitCredentials, personalize,
};
use imprint_apdu::iso::sw;
use imprint_apdu::pki::issue::{self, IssuerKey};
use imprint_apdu::pki::{self, Role};
use imprint_apdu::{Lifecycle, tlv};
use p384::ecdsa::SigningKey;

use crate::{
    AlteredIssuer, EntryState, LoggingTransport, Pki, RecordingJournal, TamperingTransport,
    manufacture_with, new_central, new_manufacturer, new_unit,
};

/// How a test reaches modules. Every module lives in a directory of its own
/// (a file key memory), wherever the applet runs.
pub trait Harness {
    /// The transport to a module.
    type T: Transport;
    /// A blank module in a fresh directory. May end the previous module's
    /// connection (one card per reader).
    fn blank_module(&mut self) -> (CardLink<Self::T>, PathBuf);
}

/// The module key's public point, read from the key memory directory
/// (tests may look inside the key memory; the module never sends it).
pub fn module_key_in(dir: &Path) -> Option<Vec<u8>> {
    key_in(dir, "module.key")
}

fn key_in(dir: &Path, file: &str) -> Option<Vec<u8>> {
    let bytes = std::fs::read(dir.join(file)).ok()?;
    let key = SigningKey::from_slice(&bytes).expect("48-byte scalar");
    Some(encode_point(&p384::PublicKey::from(key.verifying_key())))
}

fn status<T: Transport>(link: &mut CardLink<T>) -> ModuleStatus {
    read_status(link).expect("module status")
}

/// Claim 1: module key created in the module, certified by the unit, module OPERATING.
pub fn claim01<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let (mut link, dir) = harness.blank_module();
    let manufactured = manufacture_with(&mut link, &pki.manufacturer);
    assert_eq!(status(&mut link).info.lifecycle, Lifecycle::Personalization);

    let mut journal = RecordingJournal::default();
    let report = personalize(
        &mut link,
        &mut journal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .expect("personalization");
    assert_eq!(report.serial, manufactured.serial);
    assert_eq!(
        report.commands, 5,
        "SELECT, 2× AUTHENTICATE, GENERATE, PUT DATA"
    );

    // The key was created in the module; its public half is what was certified.
    let point = module_key_in(&dir).expect("module key in the key memory");
    assert_eq!(report.certificate.public_key_sec1(), point);

    // What the module holds chains to the central system as it will check it.
    let status = status(&mut link);
    assert_eq!(status.info.lifecycle, Lifecycle::Operating);
    let module_cert = status.module_cert.expect("module certificate");
    let unit_cert = status.unit_cert.expect("unit certificate");
    assert_eq!(module_cert.der(), report.certificate.der());
    pki::verify_issued_by(&module_cert, &unit_cert, 0).expect("module cert by unit");
    pki::verify_issued_by(&unit_cert, &pki.central_root, 1).expect("unit cert by central");
    assert_eq!(journal.entries.len(), 1);
    assert_eq!(journal.entries[0].1, EntryState::Installed);
}

/// Claim 2: re-entering personalization erases the module key.
pub fn claim02<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let (mut link, dir) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    let mut journal = RecordingJournal::default();
    let first = personalize(
        &mut link,
        &mut journal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap();
    let identity_before = status(&mut link)
        .identity_cert
        .expect("identity")
        .der()
        .to_vec();

    reset_module(&mut link, &pki.unit).expect("reset");
    let after_reset = status(&mut link);
    assert_eq!(after_reset.info.lifecycle, Lifecycle::Personalization);
    assert!(after_reset.module_cert.is_none());
    assert!(after_reset.unit_cert.is_none());
    assert!(after_reset.central_cert.is_none());
    assert_eq!(
        after_reset.identity_cert.unwrap().der(),
        identity_before,
        "identity survives"
    );
    assert_eq!(module_key_in(&dir), None, "module key erased");
    assert!(
        key_in(&dir, "identity.key").is_some(),
        "identity key survives"
    );

    let second = personalize(
        &mut link,
        &mut journal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap();
    assert_ne!(
        first.certificate.public_key_sec1(),
        second.certificate.public_key_sec1()
    );

    // Re-personalizing an OPERATING module erases first (TERMINATE inside the flow).
    let third = personalize(
        &mut link,
        &mut journal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap();
    assert_eq!(third.commands, 6, "re-personalization adds TERMINATE");
    assert_ne!(
        second.certificate.public_key_sec1(),
        third.certificate.public_key_sec1()
    );
    assert_eq!(
        module_key_in(&dir),
        Some(third.certificate.public_key_sec1())
    );
}

/// Claim 3: the personalization connection is authenticated and protected.
pub fn claim03<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let (mut link, _dir) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    // Flip one byte inside the first command under secure messaging (GENERATE):
    // the 4th command of the flow, identified by its INS.
    let tampering = TamperingTransport {
        inner: link.into_transport(),
        count: 0,
        tamper: |_: usize, mut apdu: Vec<u8>| {
            if apdu.len() > 8 && apdu[0] & 0x0C == 0x0C && apdu[1] == 0x47 {
                let at = apdu.len() - 3;
                apdu[at] ^= 0x01;
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
    assert!(
        journal.entries.is_empty(),
        "nothing issued over a corrupted channel"
    );
    let mut link = CardLink::new(link.into_transport().inner);
    assert_eq!(status(&mut link).info.lifecycle, Lifecycle::Personalization);

    // Replay of a sealed command is refused and closes the channel.
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    let header = [0x0C, 0xCA, 0xDF, 0x21];
    let sealed = channel.seal(header, &[]).unwrap();
    assert_eq!(link.send(header, &sealed).unwrap().sw, sw::OK);
    assert_eq!(link.send(header, &sealed).unwrap().sw, sw::SM_INCORRECT);

    // The same flow without tampering succeeds on the same module.
    personalize(
        &mut link,
        &mut journal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .expect("clean run");
}

/// Claim 4: the central system's key arrives with the module certificate.
pub fn claim04<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let (mut link, _dir) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    personalize(
        &mut link,
        &mut RecordingJournal::default(),
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap();
    let anchor = status(&mut link).central_cert.expect("central anchor");
    assert_eq!(anchor.role(), Role::CentralDelivery);
    assert_eq!(anchor.public_key_sec1(), pki.central_root.public_key_sec1());
    assert_eq!(anchor.subject_der(), pki.central_root.subject_der());
}

/// Runs a personalization that must fail on a fresh module; returns the error
/// and checks that nothing operational was committed.
fn failing<H: Harness>(
    harness: &mut H,
    manufacturer: &ManufacturerCredentials,
    unit: &UnitCredentials,
    issuer: Option<Box<dyn ModuleCertificateIssuer>>,
) -> PersonalizeError {
    let (mut link, _dir) = harness.blank_module();
    manufacture_with(&mut link, manufacturer);
    let options = PersonalizationOptions {
        issuer,
        ..PersonalizationOptions::default()
    };
    let mut journal = RecordingJournal::default();
    let err =
        personalize(&mut link, &mut journal, unit, options).expect_err("personalization must fail");
    let status = status(&mut link);
    assert_eq!(status.info.lifecycle, Lifecycle::Personalization);
    assert!(
        status.module_cert.is_none(),
        "nothing operational committed"
    );
    for (_, state) in &journal.entries {
        assert!(
            matches!(state, EntryState::Failed(_)),
            "journal marks the failure: {state:?}"
        );
    }
    err
}

/// Claim 5: the central-key certificate must be signed by the unit.
pub fn claim05<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let other = new_unit(
        &pki.manufacturer,
        &pki.central_key,
        &pki.central_root,
        "Other Unit",
    );
    let mut unit = pki.unit.clone();
    unit.central_delivery = other.central_delivery;
    let err = failing(harness, &pki.manufacturer, &unit, None);
    assert!(
        matches!(
            err,
            PersonalizeError::CertificatesRejected(BundleRejection::CentralCertificate(_))
        ),
        "{err}"
    );
}

/// Claim 6: the unit's certificate must be signed by the central system.
pub fn claim06<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let (other_key, other_root) = new_central("Other Central");
    let mut unit = pki.unit.clone();
    let csr = issue::CertificateRequest::new("Test Unit", &unit.key).unwrap();
    unit.cert_by_central = issue::personalizer_cert(
        IssuerKey {
            cert: &other_root,
            key: &other_key,
        },
        &csr,
        issue::Validity::years_from_now(10).unwrap(),
    )
    .unwrap();
    let err = failing(harness, &pki.manufacturer, &unit, None);
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

/// Claim 7: the unit is checked with the manufacturer's checking key first.
pub fn claim07<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let rogue = new_manufacturer("Rogue Manufacturer");
    let mut unit = new_unit(&rogue, &pki.central_key, &pki.central_root, "Rogue Unit");
    unit.manufacturer_root = pki.manufacturer.root.clone();
    let (mut link, dir) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    let before = link.command_count();
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
        link.command_count() - before,
        2,
        "refused at MUTUAL AUTHENTICATE, before anything else"
    );
    assert!(journal.entries.is_empty());
    assert_eq!(module_key_in(&dir), None);
}

/// Claim 8: identity key formed once, certified by the manufacturer, used to
/// authenticate the module to the unit.
pub fn claim08<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let (mut link, _dir) = harness.blank_module();
    let report = manufacture_with(&mut link, &pki.manufacturer);
    pki::verify_issued_by(&report.identity_cert, &pki.manufacturer.root, 0).unwrap();
    assert_eq!(report.identity_cert.role(), Role::ModuleIdentity);
    let select = link
        .send([0, 0xA4, 4, 0], &imprint_apdu::proto::AID)
        .unwrap();
    assert_eq!(select.sw, sw::OK);
    assert_eq!(
        link.send([0, 0x47, 0x80, 0x01], &[]).unwrap().sw,
        sw::CONDITIONS,
        "formed once"
    );
    drop(link);

    // A module made by another manufacturer cannot prove an identity the unit trusts.
    let rogue = new_manufacturer("Rogue Manufacturer");
    let (mut link, _dir) = harness.blank_module();
    manufacture_with(&mut link, &rogue);
    let mut unit = new_unit(&rogue, &pki.central_key, &pki.central_root, "Unit");
    unit.manufacturer_root = pki.manufacturer.root.clone();
    let err = personalize(
        &mut link,
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

/// Claim 9: the module's nonce is signed into the module certificate.
pub fn claim09<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let (mut link, _dir) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    let mut journal = RecordingJournal::default();
    let report = personalize(
        &mut link,
        &mut journal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap();
    let nonce = report.certificate.nonce().expect("nonce extension");
    assert_eq!(journal.entries[0].0.nonce, nonce);
    drop(link);

    let err = failing(
        harness,
        &pki.manufacturer,
        &pki.unit,
        Some(Box::new(AlteredIssuer(
            |request: &mut ModuleCertificateRequest| request.nonce = [7; 16],
        ))),
    );
    assert!(
        matches!(
            err,
            PersonalizeError::CertificatesRejected(BundleRejection::NonceMismatch)
        ),
        "{err}"
    );
}

/// Claim 10: the variation value enters key generation, and the module's own
/// randomness too (the host can neither choose nor repeat a key).
pub fn claim10<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let mut keys = Vec::new();
    for variation in [b"variation A".as_slice(), b"variation A", b"variation B"] {
        let (mut link, _dir) = harness.blank_module();
        manufacture_with(&mut link, &pki.manufacturer);
        let options = PersonalizationOptions {
            variation: variation.to_vec(),
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
    assert_ne!(keys[0], keys[1], "same variation, different modules");
    assert_ne!(keys[0], keys[2]);
    assert_ne!(keys[1], keys[2]);
    // A variation value of the wrong size is refused inside the channel.
    let (mut link, _dir) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    let too_long = tlv::encode(0x80, &[0u8; 65]);
    let (_, inner) = channel
        .send(&mut link, [0x0C, 0x47, 0x80, 0x02], &too_long)
        .unwrap();
    assert_eq!(inner, sw::WRONG_DATA);
}

/// Claim 19: the module keeps private keys in its key memory (0600 files) and
/// never sends them over its data interface.
pub fn claim19<H: Harness>(harness: &mut H) {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let (link, dir) = harness.blank_module();
    let mut link = CardLink::new(LoggingTransport::new(link.into_transport()));
    manufacture_with(&mut link, &pki.manufacturer);
    personalize(
        &mut link,
        &mut RecordingJournal::default(),
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap();
    for file in ["identity.key", "module.key", "records.tlv"] {
        let mode = std::fs::metadata(dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let log = &link.transport_mut().log;
    assert!(!log.is_empty());
    for file in ["identity.key", "module.key"] {
        let scalar = std::fs::read(dir.join(file)).unwrap();
        assert_eq!(scalar.len(), 48);
        for (command, response) in log {
            let leaked = |bytes: &[u8]| bytes.windows(16).any(|w| w == &scalar[..16]);
            assert!(!leaked(command) && !leaked(response), "{file} leaked");
        }
    }
}

/// Claim 20: the unit journals every certificate before it sends it.
pub fn claim20<H: Harness>(harness: &mut H) {
    struct RefusingJournal;
    impl imprint_apdu::host::IssuanceJournal for RefusingJournal {
        fn record_issued(
            &mut self,
            _: &imprint_apdu::host::IssuedCertificate,
        ) -> Result<i64, imprint_apdu::host::JournalError> {
            Err(imprint_apdu::host::JournalError("disk full".into()))
        }
        fn mark_installed(&mut self, _: i64) -> Result<(), imprint_apdu::host::JournalError> {
            Err(imprint_apdu::host::JournalError("never recorded".into()))
        }
        fn mark_failed(&mut self, _: i64, _: &str) -> Result<(), imprint_apdu::host::JournalError> {
            Err(imprint_apdu::host::JournalError("never recorded".into()))
        }
    }
    let pki = Pki::new();
    let (mut link, _dir) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    let before = link.command_count();
    let err = personalize(
        &mut link,
        &mut RefusingJournal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PersonalizeError::Journal(_)), "{err}");
    assert_eq!(
        link.command_count() - before,
        4,
        "the PUT DATA with the certificate was never sent"
    );
    assert_eq!(status(&mut link).info.lifecycle, Lifecycle::Personalization);
}

/// Claim 13: a one-off TAN entered at the module's input unit protects the
/// personalization. The TAN goes to the module only over the local
/// interface; the module proves it bound to this channel's transcript before
/// any key is generated or erased; the unit consumes it with the issuance
/// record. Without it, with a used one or a wrong one, nothing is issued and
/// the module is untouched.
pub fn claim13<H: Harness>(harness: &mut H) {
    use imprint_apdu::host::tan::TanRefusal;
    use zeroize::Zeroizing;

    let pki = Pki::new();
    let (link, dir) = harness.blank_module();
    let mut link = CardLink::new(LoggingTransport::new(link.into_transport()));
    let manufactured = manufacture_with(&mut link, &pki.manufacturer);
    let mut journal = RecordingJournal::default();
    let tan = "4711081512";
    let tan_id = journal.issue_tan(tan, Some(&manufactured.serial), 3600);
    let with_tan = |tan: &str| PersonalizationOptions {
        tan: Some(Zeroizing::new(tan.as_bytes().to_vec())),
        require_tan: true,
        ..PersonalizationOptions::default()
    };

    // A unit that requires a TAN refuses to start without one: no APDU.
    let before = link.apdu_count();
    let err = personalize(
        &mut link,
        &mut journal,
        &pki.unit,
        PersonalizationOptions {
            require_tan: true,
            ..PersonalizationOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, PersonalizeError::TanRequired), "{err}");
    assert_eq!(link.apdu_count(), before);

    // The right TAN: personalized, the TAN consumed with the issuance record.
    link.transport_mut().log.clear();
    let report = personalize(&mut link, &mut journal, &pki.unit, with_tan(tan)).expect("with TAN");
    assert_eq!(
        report.commands, 7,
        "SELECT, VERIFY (TAN), 2× AUTHENTICATE, INTERNAL AUTHENTICATE (TAN), GENERATE, PUT DATA"
    );
    assert!(journal.tan(tan_id).used, "TAN consumed");
    assert_eq!(journal.entries.len(), 1);
    assert_eq!(journal.entries[0].0.tan, Some(tan_id));
    assert_eq!(journal.entries[0].1, EntryState::Installed);
    // The TAN crossed once, in the plain local VERIFY 00 20 00 82, and in
    // no other command; the proof came back under secure messaging only.
    let carrying: Vec<_> = link
        .transport_mut()
        .log
        .iter()
        .filter(|(command, _)| command.windows(tan.len()).any(|w| w == tan.as_bytes()))
        .map(|(command, _)| command[..4].to_vec())
        .collect();
    assert_eq!(carrying, vec![vec![0x00, 0x20, 0x00, 0x82]]);
    let secured_tan_proof = link
        .transport_mut()
        .log
        .iter()
        .find(|(command, _)| command[..4] == [0x0C, 0x88, 0x00, 0x82])
        .expect("TAN proof command");
    assert_eq!(
        &secured_tan_proof.1[secured_tan_proof.1.len() - 2..],
        [0x90, 0x00]
    );
    assert_eq!(
        secured_tan_proof.1[0], 0x85,
        "the proof is a secure-messaging cryptogram"
    );
    let installed_key = module_key_in(&dir).expect("module key");
    assert_eq!(installed_key, report.certificate.public_key_sec1());

    // The same TAN again: refused by the unit before TERMINATE or GENERATE,
    // so the module keeps its key and certificate; nothing issued.
    let err = personalize(&mut link, &mut journal, &pki.unit, with_tan(tan)).unwrap_err();
    assert!(
        matches!(err, PersonalizeError::TanRefused(TanRefusal::Used(id)) if id == tan_id),
        "{err}"
    );
    assert!(err.to_string().contains("already used"), "{err}");
    // A wrong TAN: refused the same way.
    let err = personalize(&mut link, &mut journal, &pki.unit, with_tan("0000000000")).unwrap_err();
    assert!(
        matches!(err, PersonalizeError::TanRefused(TanRefusal::Wrong)),
        "{err}"
    );
    assert_eq!(
        journal.entries.len(),
        1,
        "nothing issued without a valid TAN"
    );
    assert_eq!(module_key_in(&dir), Some(installed_key), "module untouched");
    let mut link = CardLink::new(link.into_transport().inner);
    let status = status(&mut link);
    assert_eq!(status.info.lifecycle, Lifecycle::Operating);
    assert_eq!(
        status.module_cert.expect("module certificate").der(),
        report.certificate.der()
    );

    // A fresh TAN bound to this module re-personalizes it.
    let second = journal.issue_tan("1234567890", Some(&manufactured.serial), 3600);
    let again = personalize(&mut link, &mut journal, &pki.unit, with_tan("1234567890"))
        .expect("second TAN");
    assert_eq!(again.commands, 8, "re-personalization adds TERMINATE");
    assert!(journal.tan(second).used);
}

/// Options of a unit that requires an identification unit (claims 16–18).
fn identification_required() -> PersonalizationOptions {
    PersonalizationOptions {
        require_identification: true,
        ..PersonalizationOptions::default()
    }
}

/// Claim 16: the user connects an identification unit; it sends an
/// identification value, checkable by the unit, to the module, which
/// forwards it; the unit personalizes only if the check is positive.
pub fn claim16<H: Harness>(harness: &mut H) {
    use imprint_apdu::host::identification::IdentificationRefusal;
    use imprint_apdu::host::personalize_with_identification;

    let pki = Pki::new();
    let (link, dir) = harness.blank_module();
    let mut link = CardLink::new(LoggingTransport::new(link.into_transport()));
    manufacture_with(&mut link, &pki.manufacturer);
    let mut journal = RecordingJournal::default();
    let record = journal.issue_idunit(3);
    let mut idunit = crate::ram_idunit(&record);

    // The unit requires an identification: without an id unit it does not start.
    let before = link.apdu_count();
    let err = personalize(
        &mut link,
        &mut journal,
        &pki.unit,
        identification_required(),
    )
    .unwrap_err();
    assert!(
        matches!(err, PersonalizeError::IdentificationUnavailable),
        "{err}"
    );
    assert_eq!(link.apdu_count(), before, "no APDU without an id unit");

    // A foreign id unit (not registered with this unit): the check is
    // negative, nothing issued, the module unchanged.
    let foreign = crate::random_idunit(1);
    let err = personalize_with_identification(
        &mut link,
        &mut journal,
        &pki.unit,
        identification_required(),
        Some(&mut crate::ram_idunit(&foreign)),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PersonalizeError::IdentificationRefused(IdentificationRefusal::UnknownUnit(_))
        ),
        "{err}"
    );
    assert!(journal.entries.is_empty(), "nothing issued");
    assert_eq!(module_key_in(&dir), None, "no module key generated");

    // The registered id unit: personalized, its value consumed with the record.
    link.transport_mut().log.clear();
    let report = personalize_with_identification(
        &mut link,
        &mut journal,
        &pki.unit,
        identification_required(),
        Some(&mut idunit),
    )
    .expect("personalized with the identification unit");
    assert_eq!(
        report.commands, 7,
        "SELECT, 2× AUTHENTICATE, PUT DATA (identification), GET DATA (identification), \
         GENERATE, PUT DATA"
    );
    assert_eq!(journal.entries.len(), 1);
    let value = journal.entries[0]
        .0
        .identification
        .expect("identification recorded");
    assert!(journal.idvalue(value).used, "value consumed");
    assert_eq!(journal.entries[0].1, EntryState::Installed);
    assert_eq!(
        module_key_in(&dir).expect("module key"),
        report.certificate.public_key_sec1()
    );
    // The module got the id unit's answer from the local host, in a plain
    // PUT DATA 00 DA DF 2A; the unit fetched it with a secured GET DATA.
    let headers: Vec<[u8; 4]> = link
        .transport_mut()
        .log
        .iter()
        .map(|(command, _)| [command[0], command[1], command[2], command[3]])
        .collect();
    let handover = headers
        .iter()
        .position(|h| *h == [0x00, 0xDA, 0xDF, 0x2A])
        .expect("hand-over");
    let fetch = headers
        .iter()
        .position(|h| *h == [0x0C, 0xCA, 0xDF, 0x2A])
        .expect("secured fetch");
    let generate = headers.iter().position(|h| h[1] == 0x47).expect("GENERATE");
    assert!(handover < fetch && fetch < generate, "{headers:02X?}");
    let mut link = CardLink::new(link.into_transport().inner);
    assert_eq!(status(&mut link).info.lifecycle, Lifecycle::Operating);
}

/// Claim 17: the identification value is a one-off number produced
/// beforehand: registered (as a verifier) when the id unit was issued,
/// given out once by the id unit, and refused by the unit once used.
pub fn claim17<H: Harness>(harness: &mut H) {
    use imprint_apdu::host::identification::IdentificationRefusal;
    use imprint_apdu::host::personalize_with_identification;

    let pki = Pki::new();
    let (mut link, dir) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    let mut journal = RecordingJournal::default();
    // Produced beforehand: the unit holds the verifiers before any personalization.
    let record = journal.issue_idunit(2);
    assert_eq!(journal.idvalues.len(), 2);
    assert!(journal.idvalues.iter().all(|(_, row)| !row.used));
    // A copy of the id unit as it was issued: it will offer the first value again.
    let mut stale_copy = crate::ram_idunit(&record);
    let mut idunit = crate::ram_idunit(&record);

    let first = personalize_with_identification(
        &mut link,
        &mut journal,
        &pki.unit,
        identification_required(),
        Some(&mut idunit),
    )
    .expect("first personalization");
    let first_value = journal.entries[0].0.identification.expect("value");
    assert_eq!(
        idunit.link_mut().transport_mut().applet().values_left(),
        1,
        "the id unit gave its value out once"
    );

    // The same value again (a copy of the id unit replays it, with a valid
    // MAC over the new challenge): refused as used; nothing issued, the
    // module keeps its key and certificate.
    let err = personalize_with_identification(
        &mut link,
        &mut journal,
        &pki.unit,
        identification_required(),
        Some(&mut stale_copy),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PersonalizeError::IdentificationRefused(IdentificationRefusal::Used(id)) if id == first_value
        ),
        "{err}"
    );
    assert!(err.to_string().contains("one-off"), "{err}");
    assert_eq!(journal.entries.len(), 1, "nothing issued");
    assert_eq!(
        module_key_in(&dir).expect("module key"),
        first.certificate.public_key_sec1(),
        "module untouched"
    );

    // The id unit's next value re-personalizes; then it has none left.
    let again = personalize_with_identification(
        &mut link,
        &mut journal,
        &pki.unit,
        identification_required(),
        Some(&mut idunit),
    )
    .expect("second value");
    assert_eq!(again.commands, 8, "re-personalization adds TERMINATE");
    let second_value = journal.entries[1].0.identification.expect("value");
    assert_ne!(second_value, first_value);
    let err = personalize_with_identification(
        &mut link,
        &mut journal,
        &pki.unit,
        identification_required(),
        Some(&mut idunit),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PersonalizeError::IdUnit(imprint_apdu::host::identification::IdUnitError::Exhausted)
        ),
        "{err}"
    );
    assert_eq!(journal.entries.len(), 2);
}

/// Claim 18: the value travels between the id unit and the unit over a
/// cryptographically authenticated connection: the id unit's HMAC with the
/// key registered with the unit, over the unit's fresh challenge, and the
/// personalization channel between module and unit. A change on the way
/// (at the module's interface) is refused; the value never crosses the
/// channel in the clear.
pub fn claim18<H: Harness>(harness: &mut H) {
    use imprint_apdu::host::identification::IdentificationRefusal;
    use imprint_apdu::host::personalize_with_identification;

    let pki = Pki::new();
    let (link, dir) = harness.blank_module();
    let mut journal = RecordingJournal::default();
    let record = journal.issue_idunit(2);
    // Flip one bit of the value inside the hand-over to the module.
    let mut link = CardLink::new(TamperingTransport {
        inner: link.into_transport(),
        count: 0,
        tamper: |_, mut command: Vec<u8>| {
            if command.len() > 30 && command[..4] == [0x00, 0xDA, 0xDF, 0x2A] {
                // Ten bytes from the end lies inside the 48-byte MAC
                // whatever the Le encoding (one or two bytes).
                let at = command.len() - 10;
                command[at] ^= 0x01;
            }
            command
        },
    });
    manufacture_with(&mut link, &pki.manufacturer);
    let mut idunit = crate::ram_idunit(&record);
    let err = personalize_with_identification(
        &mut link,
        &mut journal,
        &pki.unit,
        identification_required(),
        Some(&mut idunit),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PersonalizeError::IdentificationRefused(IdentificationRefusal::NotAuthentic(_))
        ),
        "{err}"
    );
    assert!(journal.entries.is_empty(), "nothing issued");
    assert!(
        journal.idvalues.iter().all(|(_, row)| !row.used),
        "a refused identification consumes nothing at the unit"
    );
    assert_eq!(module_key_in(&dir), None);

    // Untampered, through a logging link: the value appears in the plain
    // hand-over to the module (the local interface) and in no secured
    // command or response of the channel.
    let mut link = CardLink::new(LoggingTransport::new(link.into_transport().inner));
    let value_before = idunit.link_mut().transport_mut().applet().values_left();
    personalize_with_identification(
        &mut link,
        &mut journal,
        &pki.unit,
        identification_required(),
        Some(&mut idunit),
    )
    .expect("authentic identification");
    assert_eq!(
        idunit.link_mut().transport_mut().applet().values_left(),
        value_before - 1
    );
    let value = record.values[1];
    let carrying: Vec<_> = link
        .transport_mut()
        .log
        .iter()
        .filter(|(command, response)| {
            command.windows(value.len()).any(|w| w == value)
                || response.windows(value.len()).any(|w| w == value)
        })
        .map(|(command, _)| command[..4].to_vec())
        .collect();
    assert_eq!(carrying, vec![vec![0x00, 0xDA, 0xDF, 0x2A]]);
    let fetch = link
        .transport_mut()
        .log
        .iter()
        .find(|(command, _)| command[..4] == [0x0C, 0xCA, 0xDF, 0x2A])
        .expect("secured fetch");
    assert_eq!(fetch.1[0], 0x85, "the forwarded answer is a cryptogram");
    assert_eq!(journal.entries.len(), 1);
}
