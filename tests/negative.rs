//! Negative and fault-injection tests: torn connections, wrong states,
//! malformed input, tampering and replay. Every case must end with a precise
//! status word or error and a module in a defined state.

use imprint_apdu::applet::Applet;
use imprint_apdu::host::personalize::{BundleRejection, ModuleCertificateRequest, OpenChannel};
use imprint_apdu::host::{
    CardLink, InProcessTransport, PersonalizationOptions, PersonalizeError, Transport,
    TransportError, UnitCredentials, personalize,
};
use imprint_apdu::iso::sw;
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::keymem::{KeyMemory, KeySlot};
use imprint_apdu::pki::{self, Certificate};
use imprint_apdu::proto::AID;
use imprint_apdu::{Lifecycle, channel::encode_point, tlv};
use imprint_tests::*;

/// After a power loss: the module must be in PERSONALIZATION with nothing
/// operational, or OPERATING with material that verifies and matches its key.
fn assert_consistent(dir: &std::path::Path, pki: &Pki) -> Lifecycle {
    let mut memory = FileKeyMemory::open(dir).unwrap();
    let records = memory.load().unwrap();
    match records.lifecycle {
        Lifecycle::Personalization => {
            assert_eq!(records.module_cert, None);
            assert_eq!(records.unit_cert, None);
            assert_eq!(records.central_cert, None);
        }
        Lifecycle::Operating => {
            let module = Certificate::from_der(records.module_cert.as_ref().unwrap()).unwrap();
            let unit = Certificate::from_der(records.unit_cert.as_ref().unwrap()).unwrap();
            pki::verify_issued_by(&module, &unit, 0).unwrap();
            pki::verify_issued_by(&unit, &pki.central_root, 1).unwrap();
            let key = memory
                .public_key(KeySlot::Module)
                .unwrap()
                .expect("module key present");
            assert_eq!(
                module.public_key_sec1(),
                encode_point(&key),
                "certificate matches the key"
            );
            assert!(records.central_cert.is_some());
        }
        Lifecycle::Manufactured => panic!("module fell back to MANUFACTURED"),
    }
    records.lifecycle
}

fn torn_run(
    dir: &std::path::Path,
    unit: &UnitCredentials,
    limit: usize,
) -> (PersonalizeError, RecordingJournal) {
    let applet = Applet::new(FileKeyMemory::open(dir).unwrap()).unwrap();
    let tearing = TearingTransport {
        inner: InProcessTransport::new(applet),
        delivered: 0,
        limit,
    };
    let mut link = CardLink::new(tearing);
    let mut journal = RecordingJournal::default();
    let err = personalize(
        &mut link,
        &mut journal,
        unit,
        PersonalizationOptions::default(),
    )
    .unwrap_err();
    // Dropping the link drops the applet: the module loses power here.
    (err, journal)
}

#[test]
fn torn_connection_after_each_apdu_of_a_personalization_leaves_a_defined_state() {
    let pki = Pki::new();
    for repersonalize in [false, true] {
        let apdus = if repersonalize { 6 } else { 5 };
        for limit in 1..=apdus {
            let dir = tempfile::tempdir().unwrap();
            let mut link = file_module(dir.path());
            manufactured(&mut link, &pki);
            if repersonalize {
                personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).unwrap();
            }
            drop(link);

            let (err, journal) = torn_run(dir.path(), &pki.unit, limit);
            assert!(
                matches!(
                    err,
                    PersonalizeError::Transport(TransportError::Disconnected)
                ),
                "limit {limit}: {err}"
            );
            let state = assert_consistent(dir.path(), &pki);
            // Only the last APDU (the certificate bundle) can make a module operating,
            // and a re-personalized module stays operating until TERMINATE commits.
            let expected = if limit == apdus || (repersonalize && limit < 4) {
                Lifecycle::Operating
            } else {
                Lifecycle::Personalization
            };
            assert_eq!(
                state, expected,
                "repersonalize={repersonalize} limit={limit}"
            );
            // The journal saw the certificate only if the run got that far, and marked it failed.
            for (_, entry) in &journal.entries {
                assert!(matches!(entry, EntryState::Failed(_)), "{entry:?}");
            }
            assert_eq!(journal.entries.len(), usize::from(limit == apdus));

            // The module can always be personalized again.
            let mut link = file_module(dir.path());
            personalized(&mut link, &pki.unit, &mut RecordingJournal::default())
                .unwrap_or_else(|err| panic!("repersonalize={repersonalize} limit={limit}: {err}"));
            drop(link);
            assert_consistent(dir.path(), &pki);
        }
    }
}

#[test]
fn torn_manufacture_resumes_with_the_same_identity_key() {
    let pki = Pki::new();
    for limit in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        let applet = Applet::new(FileKeyMemory::open(dir.path()).unwrap()).unwrap();
        let mut link = CardLink::new(TearingTransport {
            inner: InProcessTransport::new(applet),
            delivered: 0,
            limit,
        });
        imprint_apdu::host::manufacture::manufacture(&mut link, &pki.manufacturer, 25).unwrap_err();
        drop(link);
        let before = FileKeyMemory::open(dir.path())
            .unwrap()
            .public_key(KeySlot::Identity)
            .unwrap();
        let mut link = file_module(dir.path());
        if limit == 3 {
            // The PUT DATA reached the module before the tear: manufacture is complete.
            assert_eq!(
                link.transport_mut().applet().lifecycle(),
                Lifecycle::Personalization
            );
        } else {
            assert_eq!(
                link.transport_mut().applet().lifecycle(),
                Lifecycle::Manufactured
            );
            let report = manufactured(&mut link, &pki);
            let after = link
                .transport_mut()
                .applet_mut()
                .memory_mut()
                .public_key(KeySlot::Identity)
                .unwrap()
                .unwrap();
            if let Some(before) = before {
                assert_eq!(before, after, "identity key is never formed twice");
            }
            assert_eq!(report.identity_cert.public_key_sec1(), encode_point(&after));
        }
        personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).unwrap();
    }
}

/// A module in each lifecycle state, selected, with no channel.
fn module_in(
    state: &str,
    pki: &Pki,
) -> CardLink<InProcessTransport<imprint_apdu::keymem::memory::MemoryKeyMemory>> {
    let mut link = ram_module();
    match state {
        "blank" => {}
        "identity-only" => {
            select(&mut link);
            assert_eq!(link.send([0, 0x47, 0x80, 0x01], &[]).unwrap().sw, sw::OK);
        }
        "personalization" => {
            manufactured(&mut link, pki);
        }
        "operating" => {
            manufactured(&mut link, pki);
            personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).unwrap();
        }
        "operating-pin" => {
            manufactured(&mut link, pki);
            personalized_with_pin(&mut link, &pki.unit, b"2468").unwrap();
        }
        other => panic!("{other}"),
    }
    select(&mut link);
    link
}

fn select<T: Transport>(link: &mut CardLink<T>) {
    assert_eq!(link.send([0, 0xA4, 0x04, 0x00], &AID).unwrap().sw, sw::OK);
}

#[test]
fn every_plain_command_in_every_wrong_state_gets_its_status_word() {
    let pki = Pki::new();
    let open = tlv::encode(0x7C, &[]);
    let suite_open = [0x00, 0x82, 0x01, 0x00];
    let suite_confirm = [0x00, 0x82, 0x01, 0x01];
    let verify = [0x00, 0x20, 0x00, 0x81];
    let sign = [0x00, 0x2A, 0x9E, 0x9A];
    let digest = vec![0x5A; 48];
    // (state, header, data, expected SW)
    let mut cases: Vec<(&str, [u8; 4], Vec<u8>, u16)> = vec![
        (
            "blank",
            [0, 0xDB, 0x3F, 0xFF],
            tlv::encode(0xDF22, b"x"),
            sw::CONDITIONS,
        ),
        ("blank", suite_open, open.clone(), sw::CONDITIONS),
        ("blank", [0, 0x47, 0x80, 0x02], vec![], sw::SECURITY_STATUS),
        ("blank", [0, 0xE6, 0, 0], vec![], sw::SECURITY_STATUS),
        (
            "identity-only",
            [0, 0x47, 0x80, 0x01],
            vec![],
            sw::CONDITIONS,
        ),
        ("identity-only", suite_open, open.clone(), sw::CONDITIONS),
        (
            "personalization",
            [0, 0x47, 0x80, 0x01],
            vec![],
            sw::CONDITIONS,
        ),
        (
            "personalization",
            [0, 0x47, 0x80, 0x02],
            vec![],
            sw::SECURITY_STATUS,
        ),
        (
            "personalization",
            [0, 0xDB, 0x3F, 0xFF],
            vec![],
            sw::SECURITY_STATUS,
        ),
        (
            "personalization",
            suite_confirm,
            open.clone(),
            sw::CONDITIONS,
        ),
        (
            "personalization",
            [0x0C, 0x47, 0x80, 0x02],
            vec![],
            sw::SECURITY_STATUS,
        ),
        (
            "personalization",
            [0, 0xE6, 0, 0],
            vec![],
            sw::SECURITY_STATUS,
        ),
        ("operating", [0, 0x47, 0x80, 0x01], vec![], sw::CONDITIONS),
        (
            "operating",
            [0, 0xDB, 0x3F, 0xFF],
            vec![],
            sw::SECURITY_STATUS,
        ),
        (
            "operating",
            [0x0C, 0xDB, 0x3F, 0xFF],
            vec![],
            sw::SECURITY_STATUS,
        ),
        (
            "operating",
            [0x00, 0xC0, 0x00, 0x00],
            vec![],
            sw::CONDITIONS,
        ),
        (
            "operating",
            [0x00, 0x99, 0x00, 0x00],
            vec![],
            sw::INS_NOT_SUPPORTED,
        ),
        (
            "operating",
            [0x00, 0xCA, 0x01, 0x02],
            vec![],
            sw::DATA_NOT_FOUND,
        ),
        (
            "operating",
            [0x00, 0x82, 0x02, 0x00],
            open.clone(),
            sw::WRONG_P1P2,
        ),
        (
            "operating",
            [0x00, 0x47, 0x00, 0x01],
            vec![],
            sw::WRONG_P1P2,
        ),
    ];
    let challenge = tlv::encode(0x7C, &tlv::encode(0x81, &[0x11; 32]));
    cases.extend(vec![
        // VERIFY and COMPUTE DIGITAL SIGNATURE exist only in OPERATING.
        ("blank", verify, b"1234".to_vec(), sw::CONDITIONS),
        ("blank", verify, vec![], sw::CONDITIONS),
        ("blank", sign, digest.clone(), sw::CONDITIONS),
        ("identity-only", verify, b"1234".to_vec(), sw::CONDITIONS),
        ("identity-only", sign, digest.clone(), sw::CONDITIONS),
        ("personalization", verify, b"1234".to_vec(), sw::CONDITIONS),
        ("personalization", sign, digest.clone(), sw::CONDITIONS),
        (
            "personalization",
            [0x0C, 0x2A, 0x9E, 0x9A],
            digest.clone(),
            sw::SECURITY_STATUS,
        ),
        // OPERATING without a PIN: nothing to verify; bad parameters and lengths.
        ("operating", verify, b"1234".to_vec(), sw::DATA_NOT_FOUND),
        ("operating", verify, vec![], sw::DATA_NOT_FOUND),
        // P2 82 is the TAN (claim 13): held in any state after manufacture,
        // refused before; P2 83 names nothing.
        (
            "operating",
            [0x00, 0x20, 0x00, 0x82],
            b"1234".to_vec(),
            sw::OK,
        ),
        (
            "operating",
            [0x00, 0x20, 0x00, 0x82],
            b"123".to_vec(),
            sw::WRONG_LENGTH,
        ),
        (
            "operating",
            [0x00, 0x20, 0x01, 0x82],
            b"1234".to_vec(),
            sw::WRONG_P1P2,
        ),
        (
            "personalization",
            [0x00, 0x20, 0x00, 0x82],
            vec![],
            sw::DATA_NOT_FOUND,
        ),
        (
            "identity-only",
            [0x00, 0x20, 0x00, 0x82],
            b"1234".to_vec(),
            sw::CONDITIONS,
        ),
        (
            "operating",
            [0x00, 0x20, 0x00, 0x83],
            b"1234".to_vec(),
            sw::WRONG_P1P2,
        ),
        (
            "operating",
            [0x00, 0x20, 0x01, 0x81],
            b"1234".to_vec(),
            sw::WRONG_P1P2,
        ),
        (
            "operating",
            [0x00, 0x2A, 0x9E, 0x9B],
            digest.clone(),
            sw::WRONG_P1P2,
        ),
        (
            "operating",
            [0x00, 0x2A, 0x80, 0x80],
            digest.clone(),
            sw::WRONG_P1P2,
        ),
        // Transaction sessions: ENCIPHER and DECIPHER need an open session,
        // INTERNAL AUTHENTICATE an OPERATING module with a key set.
        (
            "operating",
            [0x00, 0x2A, 0x86, 0x80],
            b"payload".to_vec(),
            sw::SECURITY_STATUS,
        ),
        (
            "operating",
            [0x00, 0x2A, 0x80, 0x86],
            digest.clone(),
            sw::SECURITY_STATUS,
        ),
        (
            "operating",
            [0x00, 0x2A, 0x86, 0x80],
            vec![0; 4097],
            sw::WRONG_LENGTH,
        ),
        (
            "operating",
            [0x00, 0x88, 0x01, 0x00],
            challenge.clone(),
            sw::DATA_NOT_FOUND,
        ),
        (
            "operating",
            [0x00, 0x88, 0x01, 0x01],
            challenge.clone(),
            sw::WRONG_P1P2,
        ),
        (
            "personalization",
            [0x00, 0x88, 0x01, 0x00],
            challenge.clone(),
            sw::CONDITIONS,
        ),
        (
            "operating",
            [0x00, 0x82, 0x01, 0x03],
            vec![0x7C, 0x00],
            sw::CONDITIONS,
        ),
        (
            "personalization",
            [0x00, 0x82, 0x01, 0x02],
            vec![0x7C, 0x00],
            sw::CONDITIONS,
        ),
        ("operating", sign, vec![0; 65], sw::WRONG_LENGTH),
        ("operating", sign, vec![], sw::WRONG_LENGTH),
        (
            "operating",
            [0x0C, 0x2A, 0x9E, 0x9A],
            digest.clone(),
            sw::SECURITY_STATUS,
        ),
        // OPERATING with a PIN: signing waits for VERIFY; bad lengths do not count.
        ("operating-pin", sign, digest.clone(), sw::SECURITY_STATUS),
        ("operating-pin", verify, vec![], 0x63C3),
        ("operating-pin", verify, b"123".to_vec(), sw::WRONG_LENGTH),
        ("operating-pin", verify, vec![b'1'; 17], sw::WRONG_LENGTH),
        (
            "operating-pin",
            [0x00, 0x20, 0xFF, 0x81],
            b"1234".to_vec(),
            sw::WRONG_LENGTH,
        ),
        ("operating-pin", [0x00, 0x20, 0xFF, 0x81], vec![], sw::OK),
    ]);
    for (state, header, data, expected) in cases {
        let mut link = module_in(state, &pki);
        let before = link.transport_mut().applet().records().clone();
        let response = link.send(header, &data).unwrap();
        assert_eq!(response.sw, expected, "{state} {header:02X?}");
        assert_eq!(
            link.transport_mut().applet().records(),
            &before,
            "{state} {header:02X?} changed state"
        );
    }
    // Nothing but SELECT works before SELECT.
    let mut link = ram_module();
    manufactured(&mut link, &pki);
    link.transport_mut().applet_mut().reset();
    assert_eq!(
        link.send([0, 0xCA, 0xDF, 0x21], &[]).unwrap().sw,
        sw::CONDITIONS
    );
    assert_eq!(
        link.send([0, 0xA4, 0x04, 0x00], &[0xA0, 0, 0, 0, 1])
            .unwrap()
            .sw,
        sw::NOT_FOUND
    );
}

#[test]
fn secured_commands_in_wrong_states_are_refused_inside_the_channel() {
    let pki = Pki::new();
    let mut link = module_in("operating", &pki);
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    assert_eq!(channel.lifecycle(), Lifecycle::Operating);
    let before = link.transport_mut().applet().records().clone();
    // In OPERATING, key generation and installation are not allowed until TERMINATE.
    let generate = channel
        .send(
            &mut link,
            [0x0C, 0x47, 0x80, 0x02],
            &tlv::encode(0x80, b"v"),
        )
        .unwrap();
    assert_eq!(generate.1, sw::CONDITIONS);
    let install = channel
        .send(&mut link, [0x0C, 0xDB, 0x3F, 0xFF], &[])
        .unwrap();
    assert_eq!(install.1, sw::CONDITIONS);
    let identity = channel
        .send(&mut link, [0x0C, 0x47, 0x80, 0x01], &[])
        .unwrap();
    assert_eq!(identity.1, sw::CONDITIONS);
    assert_eq!(link.transport_mut().applet().records(), &before);

    // After TERMINATE: PUT DATA before GENERATE is refused; bad variation values too.
    assert_eq!(
        channel.send(&mut link, [0x0C, 0xE6, 0, 0], &[]).unwrap().1,
        sw::OK
    );
    let mut bundle = tlv::encode(0xDF23, b"not a certificate");
    bundle.extend(tlv::encode(0xDF24, b"x"));
    bundle.extend(tlv::encode(0xDF25, b"x"));
    assert_eq!(
        channel
            .send(&mut link, [0x0C, 0xDB, 0x3F, 0xFF], &bundle)
            .unwrap()
            .1,
        sw::CONDITIONS
    );
    for variation in [vec![], vec![0u8; 65]] {
        let data = tlv::encode(0x80, &variation);
        assert_eq!(
            channel
                .send(&mut link, [0x0C, 0x47, 0x80, 0x02], &data)
                .unwrap()
                .1,
            sw::WRONG_DATA
        );
    }
    assert_eq!(
        channel
            .send(&mut link, [0x0C, 0x47, 0x80, 0x02], &[])
            .unwrap()
            .1,
        sw::WRONG_DATA
    );
    // With a key generated, a malformed bundle is 6A80 and nothing is committed.
    let generated = channel
        .send(
            &mut link,
            [0x0C, 0x47, 0x80, 0x02],
            &tlv::encode(0x80, b"v"),
        )
        .unwrap();
    assert_eq!(generated.1, sw::OK);
    assert_eq!(
        channel
            .send(&mut link, [0x0C, 0xDB, 0x3F, 0xFF], &bundle)
            .unwrap()
            .1,
        sw::WRONG_DATA
    );
    assert_eq!(
        link.transport_mut().applet().lifecycle(),
        Lifecycle::Personalization
    );
}

#[test]
fn tampered_and_replayed_secure_messaging_closes_the_channel() {
    let pki = Pki::new();
    let mut link = module_in("personalization", &pki);
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    let header = [0x0C, 0xCA, 0xDF, 0x21];

    // A good command, then the same bytes again: the replay fails (6988) and closes the channel.
    let sealed = channel.seal(header, &[]).unwrap();
    let apdu = imprint_apdu::host::transport::encode_extended(header, &sealed);
    let first = link.transport_mut().transmit(&apdu).unwrap();
    assert_eq!(first[first.len() - 2..], [0x90, 0x00]);
    let replay = link.transport_mut().transmit(&apdu).unwrap();
    assert_eq!(replay, [0x69, 0x88]);
    // The channel is gone: even a correctly sealed next command is refused.
    let next = channel.seal(header, &[]).unwrap();
    let next = link
        .transport_mut()
        .transmit(&imprint_apdu::host::transport::encode_extended(
            header, &next,
        ))
        .unwrap();
    assert_eq!(next, [0x69, 0x82]);

    // Every single-bit flip in a sealed command is detected, with the same status word.
    for index in 0..sealed.len() {
        let mut link = module_in("personalization", &pki);
        let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
        let mut sealed = channel.seal(header, &[]).unwrap();
        sealed[index] ^= 0x80;
        let apdu = imprint_apdu::host::transport::encode_extended(header, &sealed);
        assert_eq!(
            link.transport_mut().transmit(&apdu).unwrap(),
            [0x69, 0x88],
            "byte {index}"
        );
    }
    // A command sealed for one header and sent under another (reordering, header swap).
    let mut link = module_in("personalization", &pki);
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    let sealed = channel.seal([0x0C, 0xCA, 0xDF, 0x22], &[]).unwrap();
    let apdu = imprint_apdu::host::transport::encode_extended(header, &sealed);
    assert_eq!(link.transport_mut().transmit(&apdu).unwrap(), [0x69, 0x88]);
    // Two commands sealed in order, delivered in reverse.
    let mut link = module_in("personalization", &pki);
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    let one = channel.seal(header, &[]).unwrap();
    let two = channel.seal(header, &[]).unwrap();
    let apdu = imprint_apdu::host::transport::encode_extended(header, &two);
    assert_eq!(link.transport_mut().transmit(&apdu).unwrap(), [0x69, 0x88]);
    let apdu = imprint_apdu::host::transport::encode_extended(header, &one);
    assert_eq!(link.transport_mut().transmit(&apdu).unwrap(), [0x69, 0x82]);
}

#[test]
fn malformed_apdus_and_tlvs_get_precise_status_words() {
    let pki = Pki::new();
    let mut link = module_in("personalization", &pki);
    let raw = |link: &mut CardLink<_>, bytes: &[u8]| -> Vec<u8> {
        let transport: &mut InProcessTransport<_> = link.transport_mut();
        transport.transmit(bytes).unwrap()
    };
    let cases: Vec<(Vec<u8>, [u8; 2])> = vec![
        (vec![], [0x67, 0x00]),
        (vec![0x00], [0x67, 0x00]),
        (vec![0x00, 0xA4, 0x04], [0x67, 0x00]),
        (vec![0x00, 0xA4, 0x04, 0x00, 0x05, 0x01], [0x67, 0x00]),
        (vec![0x00, 0xA4, 0x04, 0x00, 0x00, 0x00], [0x67, 0x00]),
        (vec![0x01, 0xCA, 0xDF, 0x21, 0x00], [0x68, 0x81]),
        (vec![0x80, 0xCA, 0xDF, 0x21, 0x00], [0x6E, 0x00]),
        (vec![0x00, 0xC0, 0x01, 0x00, 0x00], [0x6A, 0x86]),
    ];
    for (apdu, expected) in cases {
        let response = raw(&mut link, &apdu);
        assert_eq!(response[response.len() - 2..], expected, "{apdu:02X?}");
    }
    select(&mut link);
    let auth = [0x00, 0x82, 0x01, 0x00];
    let good_point = encode_point(&p384::PublicKey::from(random_key().verifying_key()));
    let mut off_curve = good_point.clone();
    off_curve[96] ^= 1;
    let template = |cert: &[u8], point: &[u8], challenge: &[u8]| {
        let mut inner = tlv::encode(0xA0, cert);
        inner.extend(tlv::encode(0x85, point));
        inner.extend(tlv::encode(0x81, challenge));
        tlv::encode(0x7C, &inner)
    };
    let unit_cert = pki.unit.cert_by_manufacturer.der();
    let bad_templates: Vec<(&str, Vec<u8>)> = vec![
        ("indefinite length", vec![0x7C, 0x80, 0x00, 0x00]),
        ("non-minimal length", vec![0x7C, 0x81, 0x01, 0x00]),
        ("truncated", vec![0x7C, 0x10, 0xA0]),
        ("wrong template", tlv::encode(0x7D, &[])),
        (
            "trailing bytes",
            [template(unit_cert, &good_point, &[0; 32]), vec![0]].concat(),
        ),
        ("unknown tag", tlv::encode(0x7C, &tlv::encode(0x99, b"x"))),
        (
            "duplicate tag",
            tlv::encode(
                0x7C,
                &[tlv::encode(0x81, &[0; 32]), tlv::encode(0x81, &[0; 32])].concat(),
            ),
        ),
        (
            "missing certificate",
            tlv::encode(
                0x7C,
                &[tlv::encode(0x85, &good_point), tlv::encode(0x81, &[0; 32])].concat(),
            ),
        ),
        (
            "garbage certificate",
            template(b"\x30\x03\x02\x01\x01", &good_point, &[0; 32]),
        ),
        (
            "truncated certificate",
            template(&unit_cert[..unit_cert.len() - 1], &good_point, &[0; 32]),
        ),
        ("off-curve point", template(unit_cert, &off_curve, &[0; 32])),
        (
            "compressed point",
            template(unit_cert, &good_point[..49], &[0; 32]),
        ),
        (
            "short challenge",
            template(unit_cert, &good_point, &[0; 31]),
        ),
    ];
    for (name, data) in bad_templates {
        let response = link.send(auth, &data).unwrap();
        assert_eq!(response.sw, sw::WRONG_DATA, "{name}");
    }
    // A well-formed certificate of the wrong role (the module's own identity certificate)
    // is a refusal, not a format error.
    let identity = link
        .transport_mut()
        .applet()
        .records()
        .identity_cert
        .clone()
        .unwrap();
    let response = link
        .send(auth, &template(&identity, &good_point, &[0; 32]))
        .unwrap();
    assert_eq!(response.sw, sw::SECURITY_STATUS);
    assert_eq!(
        link.transport_mut().applet().lifecycle(),
        Lifecycle::Personalization
    );
}

#[test]
fn a_chain_longer_than_the_card_buffer_is_refused() {
    let pki = Pki::new();
    let mut link = module_in("personalization", &pki);
    let piece = vec![0u8; 255];
    let mut last = Vec::new();
    for _ in 0..40 {
        let mut apdu = vec![0x10, 0xDB, 0x3F, 0xFF, 0xFF];
        apdu.extend_from_slice(&piece);
        last = link.transport_mut().transmit(&apdu).unwrap();
        if last != [0x90, 0x00] {
            break;
        }
    }
    assert_eq!(last, [0x6A, 0x84]);
    // A chain whose header changes mid-way is refused.
    let mut apdu = vec![0x10, 0xDB, 0x3F, 0xFF, 0x01, 0x00];
    assert_eq!(link.transport_mut().transmit(&apdu).unwrap(), [0x90, 0x00]);
    apdu = vec![0x00, 0xCA, 0xDF, 0x21, 0x00];
    assert_eq!(link.transport_mut().transmit(&apdu).unwrap(), [0x68, 0x83]);
}

#[test]
fn personalization_works_without_extended_length_through_chaining_and_get_response() {
    let pki = Pki::new();
    let applet = Applet::new(imprint_apdu::keymem::memory::MemoryKeyMemory::new(
        random_seed(),
    ))
    .unwrap();
    let mut link = CardLink::new(LoggingTransport::new(
        InProcessTransport::new(applet).short_apdus_only(),
    ));
    manufacture_with(&mut link, &pki.manufacturer);
    let report = personalize(
        &mut link,
        &mut RecordingJournal::default(),
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .unwrap();
    assert!(
        report.apdus > 5,
        "chaining and GET RESPONSE add APDUs: {}",
        report.apdus
    );
    let log = &link.transport_mut().log;
    assert!(log.iter().all(|(command, _)| command.len() <= 261));
    assert!(
        log.iter().any(|(command, _)| command[0] & 0x10 != 0),
        "command chaining used"
    );
    assert!(
        log.iter().any(|(command, _)| command[1] == 0xC0),
        "GET RESPONSE used"
    );
}

#[test]
fn module_certificate_for_another_key_or_module_is_refused() {
    let pki = Pki::new();
    let (err, lifecycle) = pki.run_failing(
        &pki.unit,
        Some(Box::new(AlteredIssuer(
            |request: &mut ModuleCertificateRequest| {
                request.public_key =
                    encode_point(&p384::PublicKey::from(random_key().verifying_key()));
            },
        ))),
    );
    assert_eq!(lifecycle, Lifecycle::Personalization);
    assert!(
        matches!(
            err,
            PersonalizeError::CertificatesRejected(BundleRejection::ModuleKeyMismatch)
        ),
        "{err}"
    );
    let (err, _) = pki.run_failing(
        &pki.unit,
        Some(Box::new(AlteredIssuer(
            |request: &mut ModuleCertificateRequest| {
                request.serial = "0123456789abcdef".into();
            },
        ))),
    );
    assert!(
        matches!(
            err,
            PersonalizeError::CertificatesRejected(BundleRejection::SerialMismatch)
        ),
        "{err}"
    );
}

/// Found in review: a unit holding only a valid certificate from the
/// manufacturer could make up a "central" key, certify itself under it for the
/// year 2200, and so raise the module's time watermark past every real unit's
/// certificate, locking the module for good. The module now requires one
/// instant at which the whole bundle is valid, which caps the watermark by the
/// unit's own certificate from the manufacturer.
#[test]
fn a_unit_cannot_push_the_time_watermark_past_its_own_certificate() {
    use imprint_apdu::pki::Role;
    use imprint_apdu::pki::issue::{self, CertificateRequest, IssuerKey, Validity};
    const YEAR_2200: u64 = 7_258_118_400;
    const YEAR: u64 = 365 * 24 * 3600;
    let pki = Pki::new();
    let now = imprint_apdu::host::personalize::unix_now();

    let fake_key = random_key();
    let fake_root = issue::self_signed_root(
        Role::Central,
        "Made-up Central",
        &fake_key,
        Validity::new(now - 60, YEAR_2200 + 2 * YEAR).unwrap(),
    )
    .unwrap();
    let mut rogue = pki.unit.clone();
    rogue.central_delivery = issue::central_delivery_cert(
        IssuerKey {
            cert: &rogue.cert_by_manufacturer,
            key: &rogue.key,
        },
        &fake_root,
        Validity::new(now, now + 5 * YEAR).unwrap(),
    )
    .unwrap();
    let csr = CertificateRequest::new("Test Unit", &rogue.key).unwrap();
    rogue.cert_by_central = issue::personalizer_cert(
        IssuerKey {
            cert: &fake_root,
            key: &fake_key,
        },
        &csr,
        Validity::new(YEAR_2200, YEAR_2200 + YEAR).unwrap(),
    )
    .unwrap();

    let mut link = ram_module();
    manufacture_with(&mut link, &pki.manufacturer);
    let options = PersonalizationOptions {
        issuer: Some(Box::new(AlteredIssuer(
            |request: &mut ModuleCertificateRequest| {
                request.validity = Validity {
                    not_before_unix: YEAR_2200,
                    not_after_unix: YEAR_2200 + YEAR,
                };
            },
        ))),
        ..PersonalizationOptions::default()
    };
    let err =
        personalize(&mut link, &mut RecordingJournal::default(), &rogue, options).unwrap_err();
    assert!(
        matches!(
            err,
            PersonalizeError::CertificatesRejected(BundleRejection::NoCommonValidity)
        ),
        "{err}"
    );
    let records = link.transport_mut().applet().records().clone();
    assert_eq!(records.lifecycle, Lifecycle::Personalization);
    assert!(records.time_watermark < YEAR_2200);
    // An honest unit still personalizes the module.
    personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).unwrap();
}

/// A key memory whose erase wipes the key but then reports a failure.
struct EraseFails(imprint_apdu::keymem::memory::MemoryKeyMemory);

impl KeyMemory for EraseFails {
    fn load(
        &mut self,
    ) -> Result<imprint_apdu::keymem::Records, imprint_apdu::keymem::KeyMemoryError> {
        self.0.load()
    }
    fn commit(
        &mut self,
        records: &imprint_apdu::keymem::Records,
    ) -> Result<(), imprint_apdu::keymem::KeyMemoryError> {
        self.0.commit(records)
    }
    fn generate(
        &mut self,
        slot: KeySlot,
        variation: &[u8],
    ) -> Result<p384::PublicKey, imprint_apdu::keymem::KeyMemoryError> {
        self.0.generate(slot, variation)
    }
    fn erase(&mut self, slot: KeySlot) -> Result<(), imprint_apdu::keymem::KeyMemoryError> {
        self.0.erase(slot)?;
        Err(imprint_apdu::keymem::KeyMemoryError::Io)
    }
    fn public_key(
        &mut self,
        slot: KeySlot,
    ) -> Result<Option<p384::PublicKey>, imprint_apdu::keymem::KeyMemoryError> {
        self.0.public_key(slot)
    }
    fn sign_digest(
        &mut self,
        slot: KeySlot,
        digest: &[u8; 48],
    ) -> Result<p384::ecdsa::Signature, imprint_apdu::keymem::KeyMemoryError> {
        self.0.sign_digest(slot, digest)
    }
    fn agree(
        &mut self,
        slot: KeySlot,
        peer: &p384::PublicKey,
    ) -> Result<zeroize::Zeroizing<[u8; 48]>, imprint_apdu::keymem::KeyMemoryError> {
        self.0.agree(slot, peer)
    }
    fn random(&mut self, out: &mut [u8]) -> Result<(), imprint_apdu::keymem::KeyMemoryError> {
        self.0.random(out)
    }
}

/// Found in review: if erasing the module key failed after the key was gone,
/// the channel still remembered the generated key, and a bundle for it made
/// the module OPERATING without a module key.
#[test]
fn a_failed_erase_cannot_lead_to_operating_without_a_key() {
    use imprint_apdu::pki::issue::{self, IssuerKey};
    let pki = Pki::new();
    let applet = Applet::new(EraseFails(
        imprint_apdu::keymem::memory::MemoryKeyMemory::new(random_seed()),
    ))
    .unwrap();
    let mut link = CardLink::new(InProcessTransport::new(applet));
    let made = manufacture_with(&mut link, &pki.manufacturer);
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    let (data, status) = channel
        .send(
            &mut link,
            [0x0C, 0x47, 0x80, 0x02],
            &tlv::encode(0x80, b"v"),
        )
        .unwrap();
    assert_eq!(status, sw::OK);
    let template = tlv::decode_fields(&data, [0x7F49, 0x9E]).unwrap()[0].unwrap();
    let point = tlv::decode_single(template, 0x86).unwrap().to_vec();
    let (_, status) = channel.send(&mut link, [0x0C, 0xE6, 0, 0], &[]).unwrap();
    assert_eq!(status, sw::MEMORY_FAILURE);

    let module_cert = issue::module_cert(
        IssuerKey {
            cert: &pki.unit.cert_by_central,
            key: &pki.unit.key,
        },
        &made.serial,
        &point,
        &channel.nonce(),
        imprint_apdu::host::personalize::nested_validity(&pki.unit.cert_by_central, 5),
    )
    .unwrap();
    let mut bundle = tlv::encode(0xDF23, module_cert.der());
    bundle.extend(tlv::encode(0xDF24, pki.unit.cert_by_central.der()));
    bundle.extend(tlv::encode(0xDF25, pki.unit.central_delivery.der()));
    let (_, status) = channel
        .send(&mut link, [0x0C, 0xDB, 0x3F, 0xFF], &bundle)
        .unwrap();
    assert_eq!(status, sw::CONDITIONS);
    assert_eq!(
        link.transport_mut().applet().lifecycle(),
        Lifecycle::Personalization
    );
}
