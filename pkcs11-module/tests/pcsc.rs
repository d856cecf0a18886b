//! The card backend through the real PC/SC stack: `pcscd` with vsmartcard's
//! `vpcd` reader, the applet as a virtual card (served from a thread of the
//! child process), and `libimprint_pkcs11.so` loaded by `cryptoki`.
//!
//! ```text
//!  cryptoki ─▶ libimprint_pkcs11.so ─PC/SC─▶ pcscd ─▶ vpcd "Virtual PCD 00 0n" ◀─TCP─ vpcd::serve(Applet) thread
//! ```
//!
//! Insertion, signing, removal (sessions close, the slot reports the event)
//! and re-insertion (new object handles). The reader is shared with the host
//! tool's PC/SC suites through the same lock file per reader. Outside CI, a
//! machine without pcscd, the vpcd driver, or root to start pcscd skips.

mod common;
use common::Card;

use std::thread::{self};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use imprint_apdu::pki::Certificate;
use imprint_tests::{Pki, RecordingJournal, file_module, manufacture_with, personalized};
use p384::ecdsa::Signature;
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha384};

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn a_card_in_a_pcsc_reader_is_a_token() {
    if !common::pcsc_stack() {
        return;
    }
    let _reader = common::lock_reader();
    common::run_child_with("child_a_card_in_a_pcsc_reader_is_a_token", |_| {
        format!("[card]\nreaders = [\"{}\"]\n", common::reader_name())
    });
}

/// Polls the token list until the slot has a token (`true`) or none.
fn wait_for_token(pkcs11: &Pkcs11, slot: Slot, present: bool) {
    let start = Instant::now();
    loop {
        let slots = pkcs11.get_slots_with_token().expect("slots");
        if slots.contains(&slot) == present {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "the token did not {} within {WAIT:?}",
            if present { "appear" } else { "leave" }
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `C_WaitForSlotEvent(CKF_DONT_BLOCK)` until it reports `slot`.
fn wait_for_event(pkcs11: &Pkcs11, slot: Slot) {
    let start = Instant::now();
    loop {
        if let Some(event) = pkcs11.get_slot_event().expect("C_WaitForSlotEvent") {
            assert_eq!(event, slot);
            return;
        }
        assert!(start.elapsed() < WAIT, "no slot event within {WAIT:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn key_and_certificate(session: &Session) -> (ObjectHandle, Certificate) {
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .expect("find");
    assert_eq!(keys.len(), 1);
    let certs = session
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Label(b"module".to_vec()),
        ])
        .expect("find");
    let der = match &session
        .get_attributes(certs[0], &[AttributeType::Value])
        .expect("value")[..]
    {
        [Attribute::Value(der)] => der.clone(),
        other => panic!("CKA_VALUE: {other:?}"),
    };
    (keys[0], Certificate::from_der(&der).expect("certificate"))
}

fn signs(session: &Session, key: ObjectHandle, cert: &Certificate) {
    let message = b"signed by a card in a reader";
    let signature = session
        .sign(&Mechanism::EcdsaSha384, key, message)
        .expect("sign");
    let signature = Signature::from_slice(&signature).expect("r || s");
    cert.public_key()
        .verify_prehash(&Sha384::digest(message), &signature)
        .expect("the signature verifies against the module certificate");
}

#[test]
#[ignore = "run by a_card_in_a_pcsc_reader_is_a_token in a child process"]
fn child_a_card_in_a_pcsc_reader_is_a_token() {
    let dir = common::module_dir("card");
    let pki = Pki::new();
    let serial = {
        let mut link = file_module(&dir);
        let report = manufacture_with(&mut link, &pki.manufacturer);
        personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).expect("personalize");
        report.serial
    };

    let pkcs11 = Pkcs11::new(common::library()).expect("load");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slots = pkcs11.get_all_slots().expect("slots");
    assert_eq!(slots.len(), 1, "one slot: the configured reader");
    let slot = slots[0];
    let info = pkcs11.get_slot_info(slot).expect("slot info");
    assert_eq!(info.slot_description(), common::reader_name());
    assert!(info.removable_device() && info.hardware_slot());
    // A card another suite left may take a moment to go.
    wait_for_token(&pkcs11, slot, false);
    while pkcs11.get_slot_event().expect("events").is_some() {}

    // Insertion: an event, a token labelled with the serial, a signature.
    let card = Card::insert(&dir);
    wait_for_event(&pkcs11, slot);
    wait_for_token(&pkcs11, slot, true);
    let token = pkcs11.get_token_info(slot).expect("token");
    assert_eq!(token.label(), serial);
    assert!(token.token_initialized());
    let session = pkcs11.open_ro_session(slot).expect("session");
    let (key, cert) = key_and_certificate(&session);
    signs(&session, key, &cert);

    // Removal: an event, the session is gone, no token.
    card.remove();
    wait_for_event(&pkcs11, slot);
    let refused = session.sign(&Mechanism::EcdsaSha384, key, b"x");
    assert!(
        matches!(
            refused,
            Err(Error::Pkcs11(
                RvError::SessionHandleInvalid | RvError::DeviceRemoved,
                _
            ))
        ),
        "{refused:?}"
    );
    drop(session);
    wait_for_token(&pkcs11, slot, false);
    assert!(matches!(
        pkcs11.get_token_info(slot),
        Err(Error::Pkcs11(RvError::TokenNotPresent, _))
    ));

    // Re-insertion: the same module, new handles.
    let card = Card::insert(&dir);
    wait_for_event(&pkcs11, slot);
    wait_for_token(&pkcs11, slot, true);
    let session = pkcs11.open_ro_session(slot).expect("session");
    assert!(matches!(
        session.sign(&Mechanism::EcdsaSha384, key, b"x"),
        Err(Error::Pkcs11(RvError::KeyHandleInvalid, _))
    ));
    let (key, cert) = key_and_certificate(&session);
    signs(&session, key, &cert);
    drop(session);
    pkcs11.finalize().expect("C_Finalize");
    card.remove();
}

#[test]
fn a_card_with_a_pin_over_short_apdus() {
    if !common::pcsc_stack() {
        return;
    }
    let _reader = common::lock_reader();
    common::run_child_with("child_a_card_with_a_pin_over_short_apdus", |_| {
        format!(
            "[card]\nreaders = [\"{}\"]\nshort_apdus = true\n",
            common::reader_name()
        )
    });
}

#[test]
#[ignore = "run by a_card_with_a_pin_over_short_apdus in a child process"]
fn child_a_card_with_a_pin_over_short_apdus() {
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let dir = common::module_dir("card");
    let pki = Pki::new();
    {
        let mut link = file_module(&dir);
        manufacture_with(&mut link, &pki.manufacturer);
        imprint_tests::personalized_with_pin(&mut link, &pki.unit, b"4711").expect("personalize");
    }
    let pkcs11 = Pkcs11::new(common::library()).expect("load");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = pkcs11.get_all_slots().expect("slots")[0];
    wait_for_token(&pkcs11, slot, false);
    let card = Card::insert(&dir);
    wait_for_token(&pkcs11, slot, true);

    let token = pkcs11.get_token_info(slot).expect("token");
    assert!(token.login_required() && token.user_pin_initialized());
    let session = pkcs11.open_ro_session(slot).expect("session");
    assert!(
        session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .expect("find")
            .is_empty(),
        "the key is private until login"
    );
    assert!(matches!(
        session.login(UserType::User, Some(&AuthPin::from("0000"))),
        Err(Error::Pkcs11(RvError::PinIncorrect, _))
    ));
    session
        .login(UserType::User, Some(&AuthPin::from("4711")))
        .expect("login");
    // Certificates of several hundred bytes come back over short APDUs
    // (GET RESPONSE), the signature too.
    let (key, cert) = key_and_certificate(&session);
    signs(&session, key, &cert);
    session.logout().expect("logout");
    drop(session);
    pkcs11.finalize().expect("C_Finalize");
    card.remove();
}
