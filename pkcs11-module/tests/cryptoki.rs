//! `libimprint_pkcs11.so` loaded by the `cryptoki` crate, over in-process
//! modules on file key memories. Each scenario runs in a child process (see
//! `common`).

mod common;

use std::path::Path;
use std::thread;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use imprint_apdu::Lifecycle;
use imprint_apdu::pki::Certificate;
use imprint_tests::{
    Pki, RecordingJournal, file_module, manufacture_with, personalized, personalized_with_pin,
};
use p384::ecdsa::Signature;
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha384};

use common::{module_dir, run_child};

/// Manufactures the module in `dir` and, unless `operating` is false,
/// personalizes it (with `pin` if given). Returns its serial.
fn make_module(pki: &Pki, dir: &Path, operating: bool, pin: Option<&[u8]>) -> String {
    let mut link = file_module(dir);
    let manufactured = manufacture_with(&mut link, &pki.manufacturer);
    if operating {
        personalize(pki, dir, &mut link, pin);
    }
    manufactured.serial
}

fn personalize<T: imprint_apdu::host::Transport>(
    pki: &Pki,
    dir: &Path,
    link: &mut imprint_apdu::host::CardLink<T>,
    pin: Option<&[u8]>,
) {
    let report = match pin {
        None => personalized(link, &pki.unit, &mut RecordingJournal::default()),
        Some(pin) => personalized_with_pin(link, &pki.unit, pin),
    }
    .unwrap_or_else(|err| panic!("personalizing {}: {err}", dir.display()));
    assert_eq!(
        report.certificate.role(),
        imprint_apdu::pki::Role::ModuleKey
    );
}

fn load() -> Pkcs11 {
    let pkcs11 = Pkcs11::new(common::library()).expect("load the provider");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    pkcs11
}

fn rv(result: Result<impl std::fmt::Debug, Error>) -> RvError {
    match result {
        Err(Error::Pkcs11(rv, _)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

fn private_key(session: &Session) -> ObjectHandle {
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .expect("find");
    assert_eq!(keys.len(), 1, "one private key");
    keys[0]
}

/// The certificate with the private key's CKA_ID.
fn paired_certificate(session: &Session, key: ObjectHandle) -> Certificate {
    let id = match &session
        .get_attributes(key, &[AttributeType::Id])
        .expect("id")[..]
    {
        [Attribute::Id(id)] => id.clone(),
        other => panic!("CKA_ID: {other:?}"),
    };
    let certs = session
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Id(id),
        ])
        .expect("find");
    assert_eq!(certs.len(), 1, "one certificate with the key's ID");
    match &session
        .get_attributes(certs[0], &[AttributeType::Value])
        .expect("value")[..]
    {
        [Attribute::Value(der)] => Certificate::from_der(der).expect("certificate"),
        other => panic!("CKA_VALUE: {other:?}"),
    }
}

fn verifies(cert: &Certificate, message: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    cert.public_key()
        .verify_prehash(&Sha384::digest(message), &signature)
        .is_ok()
}

// ------------------------------------------------------------------ slots, objects, signatures

#[test]
fn slots_tokens_objects_and_signatures() {
    run_child(
        "child_slots_tokens_objects_and_signatures",
        &["operating", "manufactured", "pin"],
    );
}

#[test]
#[ignore = "run by slots_tokens_objects_and_signatures in a child process"]
fn child_slots_tokens_objects_and_signatures() {
    let pki = Pki::new();
    let serial = make_module(&pki, &module_dir("operating"), true, None);
    let blank_serial = make_module(&pki, &module_dir("manufactured"), false, None);
    make_module(&pki, &module_dir("pin"), true, Some(b"1234"));
    let pkcs11 = load();

    let info = pkcs11.get_library_info().expect("C_GetInfo");
    assert_eq!(info.manufacturer_id(), "Imprint");
    let slots = pkcs11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 3);

    // OPERATING: label = serial, initialized; key and certificate pair up.
    let token = pkcs11.get_token_info(slots[0]).expect("token");
    assert_eq!(token.label(), serial);
    assert_eq!(token.serial_number(), serial);
    assert!(token.token_initialized());
    assert!(!token.login_required());
    let session = pkcs11.open_ro_session(slots[0]).expect("session");
    let key = private_key(&session);
    let cert = paired_certificate(&session, key);
    assert_eq!(cert.module_serial(), Some(serial.as_str()));
    let message = b"a message for the module key";
    let signature = session
        .sign(&Mechanism::EcdsaSha384, key, message)
        .expect("sign");
    assert_eq!(signature.len(), 96);
    assert!(verifies(&cert, message, &signature));
    let digest = Sha384::digest(message);
    let signature = session.sign(&Mechanism::Ecdsa, key, &digest).expect("sign");
    assert!(verifies(&cert, message, &signature));
    // The key can be neither read nor weakened.
    let value = session.get_attributes(key, &[AttributeType::Value]);
    assert!(matches!(value.as_deref(), Ok([]) | Err(_)), "{value:?}");
    assert_eq!(
        rv(session.update_attributes(key, &[Attribute::Sensitive(false)])),
        RvError::ActionProhibited
    );
    assert_eq!(rv(session.destroy_object(key)), RvError::ActionProhibited);

    // MANUFACTURED only: no module key; signing refuses.
    let token = pkcs11.get_token_info(slots[1]).expect("token");
    assert_eq!(token.label(), blank_serial);
    assert!(!token.token_initialized());
    let blank = pkcs11.open_ro_session(slots[1]).expect("session");
    let objects = blank.find_objects(&[]).expect("find");
    assert_eq!(objects.len(), 1, "only the identity certificate");
    assert!(
        blank
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .expect("find")
            .is_empty()
    );
    assert_eq!(
        rv(blank.sign(&Mechanism::EcdsaSha384, objects[0], b"x")),
        RvError::KeyHandleInvalid
    );
    // A key handle of another token is no key here either.
    assert_eq!(
        rv(blank.sign(&Mechanism::EcdsaSha384, key, b"x")),
        RvError::KeyHandleInvalid
    );

    // A user PIN: the key appears after C_Login.
    let token = pkcs11.get_token_info(slots[2]).expect("token");
    assert!(token.login_required() && token.user_pin_initialized());
    let pin_session = pkcs11.open_rw_session(slots[2]).expect("session");
    assert!(
        pin_session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .expect("find")
            .is_empty()
    );
    assert_eq!(
        rv(pin_session.login(UserType::User, Some(&AuthPin::from("4321")))),
        RvError::PinIncorrect
    );
    assert!(
        pkcs11
            .get_token_info(slots[2])
            .unwrap()
            .user_pin_count_low()
    );
    pin_session
        .login(UserType::User, Some(&AuthPin::from("1234")))
        .expect("login");
    let key = private_key(&pin_session);
    let cert = paired_certificate(&pin_session, key);
    let signature = pin_session
        .sign(&Mechanism::EcdsaSha384, key, message)
        .expect("sign");
    assert!(verifies(&cert, message, &signature));
    pin_session.logout().expect("logout");
    assert_eq!(
        rv(pin_session.sign(&Mechanism::EcdsaSha384, key, message)),
        RvError::KeyHandleInvalid
    );
    drop((session, blank, pin_session));
    pkcs11.finalize().expect("C_Finalize");
}

// ------------------------------------------------------------------ lifecycle

#[test]
fn re_personalization_invalidates_the_key_handle() {
    run_child(
        "child_re_personalization_invalidates_the_key_handle",
        &["m"],
    );
}

#[test]
#[ignore = "run by re_personalization_invalidates_the_key_handle in a child process"]
fn child_re_personalization_invalidates_the_key_handle() {
    let pki = Pki::new();
    let dir = module_dir("m");
    make_module(&pki, &dir, true, None);
    let pkcs11 = load();
    let slot = pkcs11.get_slots_with_token().expect("slots")[0];

    let session = pkcs11.open_ro_session(slot).expect("session");
    let old_key = private_key(&session);
    let old_cert = paired_certificate(&session, old_key);
    drop(session);

    // With no session open the module is free: re-personalize it.
    let mut link = file_module(&dir);
    personalize(&pki, &dir, &mut link, None);
    drop(link);

    let session = pkcs11.open_ro_session(slot).expect("session");
    assert_eq!(
        rv(session.sign(&Mechanism::EcdsaSha384, old_key, b"x")),
        RvError::KeyHandleInvalid,
        "the old key handle is gone"
    );
    let key = private_key(&session);
    assert_ne!(key, old_key);
    let cert = paired_certificate(&session, key);
    assert_ne!(cert.public_key_sec1(), old_cert.public_key_sec1());
    let signature = session
        .sign(&Mechanism::EcdsaSha384, key, b"after")
        .expect("sign");
    assert!(verifies(&cert, b"after", &signature));
    assert!(!verifies(&old_cert, b"after", &signature));
    drop(session);
    pkcs11.finalize().expect("C_Finalize");
}

// ------------------------------------------------------------------ threads

#[test]
fn eight_threads_sign_concurrently() {
    run_child("child_eight_threads_sign_concurrently", &["m"]);
}

#[test]
#[ignore = "run by eight_threads_sign_concurrently in a child process"]
fn child_eight_threads_sign_concurrently() {
    let pki = Pki::new();
    make_module(&pki, &module_dir("m"), true, None);
    let pkcs11 = load();
    let slot = pkcs11.get_slots_with_token().expect("slots")[0];
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let pkcs11 = pkcs11.clone();
            thread::spawn(move || {
                let session = pkcs11.open_ro_session(slot).expect("session");
                let key = private_key(&session);
                let cert = paired_certificate(&session, key);
                for n in 0..20 {
                    let message = format!("thread {thread} message {n}");
                    let mechanism = if n % 2 == 0 {
                        Mechanism::EcdsaSha384
                    } else {
                        Mechanism::Ecdsa
                    };
                    let data = if n % 2 == 0 {
                        message.as_bytes().to_vec()
                    } else {
                        Sha384::digest(message.as_bytes()).to_vec()
                    };
                    let signature = session.sign(&mechanism, key, &data).expect("sign");
                    assert!(verifies(&cert, message.as_bytes(), &signature));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("signing thread");
    }
    pkcs11.finalize().expect("C_Finalize");
}

// ------------------------------------------------------------------ slot events

#[test]
fn slot_events_follow_the_module() {
    run_child("child_slot_events_follow_the_module", &["late"]);
}

#[test]
#[ignore = "run by slot_events_follow_the_module in a child process"]
fn child_slot_events_follow_the_module() {
    let pki = Pki::new();
    let dir = module_dir("late");
    let pkcs11 = load();
    assert!(pkcs11.get_slots_with_token().expect("slots").is_empty());
    assert_eq!(pkcs11.get_all_slots().expect("slots").len(), 1);
    assert_eq!(pkcs11.get_slot_event().expect("no event"), None);

    // A blocking wait returns when the module appears.
    let waiter = {
        let pkcs11 = pkcs11.clone();
        thread::spawn(move || pkcs11.wait_for_slot_event())
    };
    thread::sleep(std::time::Duration::from_millis(300));
    make_module(&pki, &dir, false, None);
    let slot = waiter.join().expect("waiter").expect("an event");
    assert_eq!(slot.id(), 0);
    let token = pkcs11.get_token_info(slot).expect("token");
    assert!(!token.token_initialized());
    let mut link = file_module(&dir);
    let status = imprint_apdu::host::status::read_status(&mut link).expect("status");
    assert_eq!(status.info.lifecycle, Lifecycle::Personalization);
    drop(link);

    // C_Finalize ends a blocked C_WaitForSlotEvent.
    let waiter = {
        let pkcs11 = pkcs11.clone();
        thread::spawn(move || pkcs11.wait_for_slot_event())
    };
    thread::sleep(std::time::Duration::from_millis(300));
    pkcs11.finalize().expect("C_Finalize");
    assert_eq!(
        rv(waiter.join().expect("waiter")),
        RvError::CryptokiNotInitialized
    );
}
