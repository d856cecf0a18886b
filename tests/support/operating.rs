//! The operating part of the claims (1, 4, 11, 21), generic over how a
//! module is reached, against a real `imprint-central serve` on loopback:
//! in-process in `tests/operating.rs`, as `imprint-card` behind pcscd in
//! `host-tool/tests/pcsc_operating.rs`.

use std::path::PathBuf;

use imprint_apdu::channel::sha384;
use imprint_apdu::host::{CardLink, PersonalizationOptions, Transport, personalize};
use imprint_apdu::iso::sw;
use imprint_apdu::proto::{ins, tag};
use imprint_apdu::{Lifecycle, tlv};
use imprint_central::client::ClientError;
use imprint_central::wire::ErrorCode;
use p384::ecdsa::SigningKey;

use crate::central::CentralServer;
use crate::claims::Harness;
use crate::{Pki, RecordingJournal, manufacture_with};

/// A module personalized by `pki`'s unit: OPERATING, trusting `pki`'s central system.
pub fn operating_module<H: Harness>(
    harness: &mut H,
    pki: &Pki,
) -> (CardLink<H::T>, PathBuf, String) {
    let (mut link, dir) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    let report = personalize(
        &mut link,
        &mut RecordingJournal::default(),
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .expect("personalization");
    (link, dir, report.serial)
}

/// What GET DATA `DF29` reports of the module's key set: identifier, expiry, counter.
pub fn key_set_status<T: Transport>(link: &mut CardLink<T>) -> Option<([u8; 16], u64, u32)> {
    let select = link
        .send([0x00, ins::SELECT, 0x04, 0x00], &imprint_apdu::proto::AID)
        .expect("select");
    assert_eq!(select.sw, sw::OK);
    let [p1, p2] = (tag::KEY_SET_STATUS as u16).to_be_bytes();
    let response = link
        .send([0x00, ins::GET_DATA, p1, p2], &[])
        .expect("get data");
    if response.sw == sw::DATA_NOT_FOUND {
        return None;
    }
    assert_eq!(response.sw, sw::OK);
    let [id, expires, counter] = tlv::decode_fields(
        &response.data,
        [tag::KEY_SET_ID, tag::KEY_SET_EXPIRES, tag::KEY_SET_COUNTER],
    )
    .expect("key set status");
    Some((
        id.expect("id").try_into().expect("16 bytes"),
        u64::from_be_bytes(expires.expect("expiry").try_into().expect("8 bytes")),
        u32::from_be_bytes(counter.expect("counter").try_into().expect("4 bytes")),
    ))
}

/// Asserts that `result` is the central system's refusal with `code`, and
/// that its reason contains `reason`.
pub fn assert_refused<R: std::fmt::Debug>(
    result: Result<R, ClientError>,
    code: ErrorCode,
    reason: &str,
) {
    match result {
        Err(ClientError::Central {
            code: got,
            reason: text,
        }) => {
            assert_eq!(got, code, "{text}");
            assert!(text.contains(reason), "{text:?} does not say {reason:?}");
        }
        other => panic!("expected a refusal ({code}: {reason}), got {other:?}"),
    }
}

/// Claim 1 (operating part): in the operating state the module sets up a
/// secure connection to the central system using its private module key,
/// and sends its public key with the certificate, which the central system
/// checks.
pub fn claim01_operating<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    let (mut link, dir, serial) = operating_module(harness, &pki);

    let report = server.operate(&mut link).expect("operating channel");
    assert_eq!(report.serial, serial);
    assert_eq!(
        report.commands, 4,
        "SELECT, AUTHENTICATE (open), AUTHENTICATE (confirm), PUT DATA (key set)"
    );
    // The central system checked and recorded the module's certificate.
    let modules = server.registry().modules().expect("modules");
    let module = modules
        .iter()
        .find(|module| module.serial == serial)
        .expect("module recorded by the central system");
    assert!(module.last_seen > 0);

    // The private module key is what the channel rests on: a module whose
    // key memory holds another key than its certificate's is refused.
    let other = SigningKey::from_slice(&[0x42; 48]).expect("scalar");
    std::fs::write(dir.join("module.key"), other.to_bytes()).expect("replace the module key");
    assert_refused(
        server.operate(&mut link),
        ErrorCode::Refused,
        "key confirmation does not verify",
    );
}

/// Claim 4: the central system's key, delivered with the module certificate,
/// is what the module checks the central system against. Another central
/// system is refused by the module; its own is accepted.
pub fn claim04_central_authenticated<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let stranger = Pki::new();
    let ours = CentralServer::start(&pki, &[]);
    let theirs = CentralServer::start(&stranger, &[]);
    let (mut link, _, _) = operating_module(harness, &pki);

    assert_refused(theirs.operate(&mut link), ErrorCode::ModuleError, "6982");
    assert!(theirs.registry().modules().expect("modules").is_empty());
    ours.operate(&mut link).expect("its own central system");
}

/// Claim 11: over the operating channel the central system puts a fresh
/// symmetric key set into the module's key memory; later transactions use
/// only that key; a new operating channel rotates it.
pub fn claim11_key_set_for_transactions<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    let (mut link, _, serial) = operating_module(harness, &pki);
    assert_eq!(key_set_status(&mut link), None, "no key set before");

    let report = server.operate(&mut link).expect("operating channel");
    let (id, expires, counter) = key_set_status(&mut link).expect("key set in the module");
    assert_eq!(
        (id, expires, counter),
        (report.key_set_id, report.expires, 0)
    );
    let stored = server
        .registry()
        .key_set(&id)
        .expect("registry")
        .expect("the central system keeps its copy");
    assert_eq!(stored.serial, serial);
    assert!(!stored.retired);

    let payloads: [&[u8]; 3] = [b"first", b"second", b"third"];
    let receipts = server.transact(&mut link, &payloads).expect("transactions");
    for (receipt, payload) in receipts.iter().zip(payloads) {
        assert_eq!(receipt.payload_digest, sha384(payload));
        assert_eq!(receipt.reply, b"accepted");
    }
    assert!(
        receipts
            .windows(2)
            .all(|pair| pair[0].number < pair[1].number)
    );
    assert_eq!(key_set_status(&mut link).map(|status| status.2), Some(1));
    let journal = server.journal();
    assert_eq!(journal.len(), 3);
    for (entry, (sequence, payload)) in journal.iter().zip((1u32..).zip(payloads)) {
        assert_eq!(entry.record.serial, serial);
        assert_eq!(entry.record.key_set_id, id);
        assert_eq!(entry.record.session_counter, 1);
        assert_eq!(entry.record.sequence, sequence);
        assert_eq!(entry.record.payload_digest, sha384(payload));
    }

    // Rotation: a new operating channel replaces the key set on both sides.
    let rotated = server.operate(&mut link).expect("second operating channel");
    assert_ne!(rotated.key_set_id, id);
    assert_eq!(
        key_set_status(&mut link),
        Some((rotated.key_set_id, rotated.expires, 0))
    );
    let old = server
        .registry()
        .key_set(&id)
        .expect("registry")
        .expect("old set");
    assert!(old.retired, "the replaced key set is retired");
    server
        .transact(&mut link, &[b"after rotation"])
        .expect("transaction on the new key set");
    assert_eq!(server.journal().len(), 4);
}

/// Claim 21: the central system as a whole: its key in its key memory, its
/// registry, and its refusal of what it revoked, while the journal keeps
/// exactly what it accepted.
pub fn claim21_central_system<H: Harness>(harness: &mut H) {
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    let (mut link, _, serial) = operating_module(harness, &pki);
    server.operate(&mut link).expect("operating channel");
    server
        .transact(&mut link, &[b"before"])
        .expect("transaction");
    assert_eq!(link_lifecycle(&mut link), Lifecycle::Operating);

    let output = server.cli(&["revoke", "--module", &serial]);
    assert!(
        output.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_refused(
        server.transact(&mut link, &[b"after"]),
        ErrorCode::Refused,
        "revoked",
    );
    assert_refused(server.operate(&mut link), ErrorCode::Refused, "revoked");
    assert_eq!(server.journal().len(), 1, "only the accepted transaction");
    let listing = server.cli(&["modules"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.lines()
            .any(|line| line.contains(&serial) && line.contains("revoked")),
        "{text}"
    );
}

fn link_lifecycle<T: Transport>(link: &mut CardLink<T>) -> Lifecycle {
    imprint_apdu::host::status::read_status(link)
        .expect("status")
        .info
        .lifecycle
}
