//! `libimprint_pkcs11.so` loaded by the `cryptoki` crate over an in-process
//! module whose key memory is a real SoftHSM token (configuration kind
//! `softhsm`): no key before OPERATING, a key that signs after, and the old
//! key gone after a re-personalization.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process and a provider is one global
//! state per process, so the scenario runs in a child process of this test
//! binary: the parent creates the token with `softhsm-config/create-token.sh`
//! and writes the configuration; the child, with `SOFTHSM2_CONF` and
//! `IMPRINT_PKCS11_CONF` set, manufactures and personalizes the module through
//! its own `SoftHsmKeyMemory` (between the provider's sessions, as a host tool
//! would) and loads the library.

mod common;

use std::path::PathBuf;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use imprint_apdu::Applet;
use imprint_apdu::host::{CardLink, InProcessTransport};
use imprint_apdu::keymem::{KeyMemory, KeySlot};
use imprint_apdu::pki::Certificate;
use imprint_pkcs11::softhsm::{SoftHsmKeyMemory, find_library};
use imprint_tests::{Pki, RecordingJournal, manufacture_with, personalized};
use p384::ecdsa::Signature;
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha384};

const TOKEN_LABEL: &str = "imprint provider token";
use common::{SOFTHSM_PIN_FILE_ENV as PIN_FILE_ENV, SOFTHSM_USER_PIN as SOFTHSM_PIN};

/// In the child: the module on the token, powered up in this process.
fn token_module() -> CardLink<InProcessTransport<SoftHsmKeyMemory>> {
    let library: PathBuf = find_library().expect("SoftHSM library");
    let memory = SoftHsmKeyMemory::open(library, TOKEN_LABEL, SOFTHSM_PIN.as_bytes())
        .expect("open the token");
    CardLink::new(InProcessTransport::new(
        Applet::new(memory).expect("applet"),
    ))
}

fn load() -> Pkcs11 {
    let pkcs11 = Pkcs11::new(common::library()).expect("load the provider");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    pkcs11
}

fn private_keys(session: &Session) -> Vec<ObjectHandle> {
    session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .expect("find")
}

fn module_certificate(session: &Session) -> Certificate {
    let certs = session
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Label(b"module".to_vec()),
        ])
        .expect("find");
    assert_eq!(certs.len(), 1, "one module certificate");
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

fn token_initialized(pkcs11: &Pkcs11, slot: Slot) -> bool {
    pkcs11
        .get_token_info(slot)
        .expect("token info")
        .token_initialized()
}

#[test]
fn softhsm_backend_lifecycle() {
    common::run_child_on_softhsm_token("child_softhsm_backend_lifecycle", TOKEN_LABEL);
}

#[test]
#[ignore = "run by softhsm_backend_lifecycle in a child process"]
fn child_softhsm_backend_lifecycle() {
    assert!(std::env::var_os(PIN_FILE_ENV).is_some(), "run as a child");
    let pki = Pki::new();
    let serial = {
        let mut link = token_module();
        manufacture_with(&mut link, &pki.manufacturer).serial
    };

    let pkcs11 = load();
    let slots = pkcs11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 1, "the SoftHSM module's slot has a token");
    let slot = slots[0];
    let description = pkcs11.get_slot_info(slot).expect("slot info");
    assert!(
        description
            .slot_description()
            .starts_with("Imprint SoftHSM module"),
        "{description:?}"
    );
    assert_eq!(pkcs11.get_token_info(slot).expect("info").label(), serial);

    // MANUFACTURED: no module key.
    assert!(!token_initialized(&pkcs11, slot));
    let session = pkcs11.open_ro_session(slot).expect("session");
    assert!(private_keys(&session).is_empty(), "no key before OPERATING");
    drop(session);

    // With no session open the token is free: personalize it.
    {
        let mut link = token_module();
        personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).expect("personalize");
    }
    assert!(token_initialized(&pkcs11, slot));
    let session = pkcs11.open_ro_session(slot).expect("session");
    let keys = private_keys(&session);
    assert_eq!(keys.len(), 1, "the module key once OPERATING");
    let old_key = keys[0];
    let old_cert = module_certificate(&session);
    let signature = session
        .sign(&Mechanism::EcdsaSha384, old_key, b"before")
        .expect("sign");
    assert!(verifies(&old_cert, b"before", &signature));
    drop(session);

    // Re-personalized: the old key is gone from the token and from the provider.
    let new_point = {
        let mut link = token_module();
        personalized(&mut link, &pki.unit, &mut RecordingJournal::default())
            .expect("re-personalize");
        drop(link);
        let library = find_library().expect("library");
        let mut memory = SoftHsmKeyMemory::open(library, TOKEN_LABEL, SOFTHSM_PIN.as_bytes())
            .expect("open the token");
        memory
            .public_key(KeySlot::Module)
            .expect("module key")
            .expect("a module key")
    };
    assert_ne!(
        new_point.as_affine(),
        old_cert.public_key().as_affine(),
        "the token's module key is new"
    );
    let session = pkcs11.open_ro_session(slot).expect("session");
    match session.sign(&Mechanism::EcdsaSha384, old_key, b"x") {
        Err(Error::Pkcs11(RvError::KeyHandleInvalid, _)) => {}
        other => panic!("the old key handle should be invalid, got {other:?}"),
    }
    let keys = private_keys(&session);
    assert_eq!(keys.len(), 1, "one module key");
    let cert = module_certificate(&session);
    assert_ne!(cert.public_key_sec1(), old_cert.public_key_sec1());
    let signature = session
        .sign(&Mechanism::EcdsaSha384, keys[0], b"after")
        .expect("sign");
    assert!(verifies(&cert, b"after", &signature));
    assert!(!verifies(&old_cert, b"after", &signature));
    drop(session);
    pkcs11.finalize().expect("C_Finalize");
}
