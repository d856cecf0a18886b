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

use std::path::{Path, PathBuf};
use std::process::Command;

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
const SO_PIN: &str = "so-pin-0000";
const SOFTHSM_PIN: &str = "softhsm-user-pin";

/// Set in the child: the SoftHSM PIN file.
const PIN_FILE_ENV: &str = "IMPRINT_PKCS11_TEST_SOFTHSM_PIN_FILE";

/// Creates a token and runs `child` with it, or skips without SoftHSM.
fn run_child_on_token(child: &str) {
    let installed = find_library().is_some_and(|path| path.is_file())
        && Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
    if !installed {
        assert!(!common::ci(), "softhsm2 is not installed; CI=true");
        eprintln!("SKIPPED: softhsm2 not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let token_dir = dir.path().join("token");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-config/create-token.sh");
    let created = Command::new("bash")
        .arg(&script)
        .arg(&token_dir)
        .args([TOKEN_LABEL, SO_PIN, SOFTHSM_PIN])
        .output()
        .expect("run create-token.sh");
    assert!(
        created.status.success(),
        "create-token.sh failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let pin_file = dir.path().join("softhsm.pin");
    std::fs::write(&pin_file, format!("{SOFTHSM_PIN}\n")).expect("pin file");
    let config = dir.path().join("pkcs11.toml");
    std::fs::write(
        &config,
        format!(
            "[[module]]\nkind = \"softhsm\"\ntoken_label = \"{TOKEN_LABEL}\"\npin_file = \"{}\"\n",
            pin_file.display()
        ),
    )
    .expect("configuration");
    let output = Command::new(std::env::current_exe().expect("test executable"))
        .args([
            child,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IMPRINT_PKCS11_CONF", &config)
        .env("SOFTHSM2_CONF", token_dir.join("softhsm2.conf"))
        .env(PIN_FILE_ENV, &pin_file)
        .env_remove("IMPRINT_PKCS11_LOG")
        .output()
        .expect("running the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child test {child} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

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
    run_child_on_token("child_softhsm_backend_lifecycle");
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
