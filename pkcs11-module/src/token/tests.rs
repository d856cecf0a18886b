//! The token model against in-process modules on file key memories,
//! manufactured and personalized with the end-to-end suites' fixtures.

use std::path::{Path, PathBuf};

use cryptoki_sys::*;
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::pki::Certificate;
use imprint_tests::{
    Pki, RecordingJournal, file_module, manufacture_with, personalized, personalized_with_pin,
};
use p384::ecdsa::Signature;
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha256, Sha384};

use super::*;
use crate::backend::inproc::{FileSource, InProcessDevice};

/// A module directory and the deployment that made it.
struct Module {
    dir: tempfile::TempDir,
    pki: Pki,
}

impl Module {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Manufactured only: PERSONALIZATION, identity certificate, no module key.
    fn manufactured() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new();
        let mut link = file_module(dir.path());
        manufacture_with(&mut link, &pki.manufacturer);
        Self { dir, pki }
    }

    /// OPERATING, with a user PIN if given.
    fn operating(pin: Option<&[u8]>) -> Self {
        let module = Self::manufactured();
        module.personalize(pin);
        module
    }

    /// (Re-)personalizes the module (no session may hold it).
    fn personalize(&self, pin: Option<&[u8]>) {
        let mut link = file_module(self.path());
        match pin {
            None => personalized(&mut link, &self.pki.unit, &mut RecordingJournal::default()),
            Some(pin) => personalized_with_pin(&mut link, &self.pki.unit, pin),
        }
        .expect("personalization");
    }
}

fn provider(paths: &[&Path]) -> Provider {
    Provider::with_devices(
        paths
            .iter()
            .map(|path| Box::new(InProcessDevice::new(FileSource::new(path))) as Box<dyn Device>)
            .collect(),
    )
}

fn session(provider: &mut Provider) -> CK_SESSION_HANDLE {
    provider
        .open_session(0, CKF_SERIAL_SESSION)
        .expect("open session")
}

fn find(
    provider: &mut Provider,
    session: CK_SESSION_HANDLE,
    template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
) -> Vec<CK_OBJECT_HANDLE> {
    provider.find_init(session, template).expect("find init");
    let found = provider.find(session, 100).expect("find");
    provider.find_final(session).expect("find final");
    found
}

fn class(class: CK_OBJECT_CLASS) -> (CK_ATTRIBUTE_TYPE, Vec<u8>) {
    (CKA_CLASS, objects::ulong(class))
}

fn label(label: &str) -> (CK_ATTRIBUTE_TYPE, Vec<u8>) {
    (CKA_LABEL, label.as_bytes().to_vec())
}

fn attribute(
    provider: &Provider,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    kind: CK_ATTRIBUTE_TYPE,
) -> Vec<u8> {
    let mut query = [AttributeRequest {
        kind,
        buffer: None,
        len: 0,
    }];
    provider
        .get_attributes(session, object, &mut query)
        .expect("length");
    let mut value = vec![0u8; query[0].len as usize];
    let mut request = [AttributeRequest {
        kind,
        buffer: Some(&mut value),
        len: 0,
    }];
    provider
        .get_attributes(session, object, &mut request)
        .expect("value");
    value
}

fn the_one(
    provider: &mut Provider,
    session: CK_SESSION_HANDLE,
    template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
) -> CK_OBJECT_HANDLE {
    let found = find(provider, session, template);
    assert_eq!(found.len(), 1, "exactly one object for {template:?}");
    found[0]
}

fn private_key(provider: &mut Provider, session: CK_SESSION_HANDLE) -> CK_OBJECT_HANDLE {
    the_one(provider, session, &[class(CKO_PRIVATE_KEY)])
}

fn module_cert(provider: &mut Provider, session: CK_SESSION_HANDLE) -> Certificate {
    let handle = the_one(
        provider,
        session,
        &[class(CKO_CERTIFICATE), label(objects::LABEL_MODULE)],
    );
    Certificate::from_der(&attribute(provider, session, handle, CKA_VALUE)).expect("certificate")
}

fn sign(
    provider: &mut Provider,
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_TYPE,
    key: CK_OBJECT_HANDLE,
    data: &[u8],
) -> Result<Vec<u8>> {
    provider.sign_init(session, mechanism, &[], key)?;
    let mut signature = [0u8; 128];
    let mut output = Output::new(Some(&mut signature));
    provider.sign(session, data, &mut output)?;
    let len = output.len;
    Ok(signature[..len].to_vec())
}

fn verifies(cert: &Certificate, digest: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    cert.public_key().verify_prehash(digest, &signature).is_ok()
}

#[test]
fn operating_token_shows_its_serial_lifecycle_and_six_objects() {
    let module = Module::operating(None);
    let mut provider = provider(&[module.path()]);
    assert_eq!(provider.slot_list(true), vec![0]);
    let slot = provider.slot_info(0).expect("slot");
    assert!(slot.token_present);
    let token = provider.token_info(0).expect("token");
    assert_eq!(token.lifecycle, Lifecycle::Operating);
    assert_eq!(token.label.len(), 16, "the serial: {}", token.label);
    assert_eq!(token.label, token.serial);
    assert_eq!(token.flags & CKF_TOKEN_INITIALIZED, CKF_TOKEN_INITIALIZED);
    assert_eq!(token.flags & CKF_LOGIN_REQUIRED, 0, "no PIN: no login");
    assert_eq!(token.pin, PinState::NotSet);

    let s = session(&mut provider);
    assert_eq!(find(&mut provider, s, &[]).len(), 6);
    let key = private_key(&mut provider, s);
    let public = the_one(&mut provider, s, &[class(CKO_PUBLIC_KEY)]);
    let cert = the_one(
        &mut provider,
        s,
        &[class(CKO_CERTIFICATE), label(objects::LABEL_MODULE)],
    );
    let id = attribute(&provider, s, cert, CKA_ID);
    assert_eq!(attribute(&provider, s, key, CKA_ID), id);
    assert_eq!(attribute(&provider, s, public, CKA_ID), id);
    // Key and certificate are found together by ID, as NSS and OpenSSL pair them.
    assert_eq!(find(&mut provider, s, &[(CKA_ID, id.clone())]).len(), 3);

    for (kind, value) in [
        (CKA_SIGN, true),
        (CKA_SENSITIVE, true),
        (CKA_ALWAYS_SENSITIVE, true),
        (CKA_NEVER_EXTRACTABLE, true),
        (CKA_EXTRACTABLE, false),
        (CKA_PRIVATE, false),
        (CKA_MODIFIABLE, false),
        (CKA_DECRYPT, false),
        (CKA_DERIVE, false),
    ] {
        assert_eq!(
            attribute(&provider, s, key, kind),
            objects::bool_value(value),
            "attribute {kind:#x}"
        );
    }
    assert_eq!(
        attribute(&provider, s, key, CKA_EC_PARAMS),
        objects::EC_PARAMS_P384
    );
    let module_cert = module_cert(&mut provider, s);
    let point = attribute(&provider, s, public, CKA_EC_POINT);
    assert_eq!(&point[..2], &[0x04, 0x61], "DER OCTET STRING of 97 bytes");
    assert_eq!(point[2..], module_cert.public_key_sec1()[..]);
    assert_eq!(
        module_cert.module_serial(),
        Some(token.serial.as_str()),
        "the module certificate names the serial in the label"
    );

    let authorities = find(
        &mut provider,
        s,
        &[
            class(CKO_CERTIFICATE),
            (CKA_CERTIFICATE_CATEGORY, objects::ulong(2)),
        ],
    );
    assert_eq!(authorities.len(), 2, "unit and central certificates");
    let central = the_one(&mut provider, s, &[label(objects::LABEL_CENTRAL)]);
    let central = Certificate::from_der(&attribute(&provider, s, central, CKA_VALUE)).unwrap();
    assert_eq!(
        central.public_key_sec1(),
        module.pki.central_root.public_key_sec1(),
        "the central system's certificate is over the central key"
    );
}

#[test]
fn attribute_reads_follow_the_pkcs11_rules() {
    let module = Module::operating(None);
    let mut provider = provider(&[module.path()]);
    let s = session(&mut provider);
    let key = private_key(&mut provider, s);

    let mut small = [0u8; 2];
    let mut id = [0u8; 64];
    let mut requests = [
        AttributeRequest {
            kind: CKA_VALUE,
            buffer: None,
            len: 0,
        },
        AttributeRequest {
            kind: CKA_MODULUS,
            buffer: None,
            len: 0,
        },
        AttributeRequest {
            kind: CKA_LABEL,
            buffer: Some(&mut small),
            len: 0,
        },
        AttributeRequest {
            kind: CKA_ID,
            buffer: Some(&mut id),
            len: 0,
        },
        AttributeRequest {
            kind: CKA_KEY_TYPE,
            buffer: None,
            len: 0,
        },
    ];
    let result = provider.get_attributes(s, key, &mut requests);
    assert_eq!(result, Err(Error::AttributeSensitive), "the first failure");
    assert_eq!(requests[0].len, CK_UNAVAILABLE_INFORMATION, "sensitive");
    assert_eq!(
        requests[1].len, CK_UNAVAILABLE_INFORMATION,
        "no such attribute"
    );
    assert_eq!(
        requests[2].len, CK_UNAVAILABLE_INFORMATION,
        "buffer too small"
    );
    assert_eq!(requests[3].len, 20, "the others are still answered");
    assert_eq!(requests[4].len, std::mem::size_of::<CK_ULONG>() as CK_ULONG);

    let mut only_invalid = [AttributeRequest {
        kind: CKA_MODULUS,
        buffer: None,
        len: 0,
    }];
    assert_eq!(
        provider.get_attributes(s, key, &mut only_invalid),
        Err(Error::AttributeTypeInvalid)
    );
    let mut only_small = [AttributeRequest {
        kind: CKA_LABEL,
        buffer: Some(&mut [0u8; 1]),
        len: 0,
    }];
    assert_eq!(
        provider.get_attributes(s, key, &mut only_small),
        Err(Error::BufferTooSmall)
    );
    assert_eq!(
        provider.get_attributes(s, 9999, &mut []),
        Err(Error::ObjectHandleInvalid)
    );
    assert_eq!(
        provider.get_attributes(9999, key, &mut []),
        Err(Error::SessionHandleInvalid)
    );
    // Nothing about the key can be changed, copied, wrapped or derived.
    assert_eq!(
        provider.refuse_object_change(s, key),
        Err(Error::ActionProhibited)
    );
    assert_eq!(
        provider.refuse_key_use(s, key, true),
        Err(Error::KeyUnextractable)
    );
    assert_eq!(
        provider.refuse_key_use(s, key, false),
        Err(Error::KeyFunctionNotPermitted)
    );
}

#[test]
fn signatures_verify_against_the_module_certificate() {
    let module = Module::operating(None);
    let mut provider = provider(&[module.path()]);
    let s = session(&mut provider);
    let key = private_key(&mut provider, s);
    let cert = module_cert(&mut provider, s);
    let message = b"signed by the module key";

    let signature = sign(&mut provider, s, CKM_ECDSA_SHA384, key, message).expect("sign");
    assert_eq!(signature.len(), 96, "r || s");
    assert!(verifies(&cert, &Sha384::digest(message), &signature));

    let signature = sign(&mut provider, s, CKM_ECDSA_SHA256, key, message).expect("sign");
    assert!(verifies(&cert, &Sha256::digest(message), &signature));

    let digest = Sha384::digest(message);
    let signature = sign(&mut provider, s, CKM_ECDSA, key, &digest).expect("sign");
    assert!(verifies(&cert, &digest, &signature));

    // Multi-part, in three pieces.
    provider
        .sign_init(s, CKM_ECDSA_SHA384, &[], key)
        .expect("init");
    for part in message.chunks(7) {
        provider.sign_update(s, part).expect("update");
    }
    let mut buffer = [0u8; 96];
    let mut output = Output::new(Some(&mut buffer));
    provider.sign_final(s, &mut output).expect("final");
    assert!(verifies(&cert, &Sha384::digest(message), &buffer));
}

#[test]
fn the_sign_state_machine_and_length_conventions() {
    let module = Module::operating(None);
    let mut provider = provider(&[module.path()]);
    let s = session(&mut provider);
    let key = private_key(&mut provider, s);

    let mut output = Output::new(None);
    assert_eq!(
        provider.sign(s, b"x", &mut output),
        Err(Error::OperationNotInitialized)
    );
    provider
        .sign_init(s, CKM_ECDSA_SHA384, &[], key)
        .expect("init");
    assert_eq!(
        provider.sign_init(s, CKM_ECDSA_SHA384, &[], key),
        Err(Error::OperationActive)
    );
    // Length query: the operation stays.
    let mut query = Output::new(None);
    provider.sign(s, b"x", &mut query).expect("length query");
    assert_eq!(query.len, 96);
    // Too small: the length, and the operation stays.
    let mut small = [0u8; 10];
    let mut output = Output::new(Some(&mut small));
    assert_eq!(
        provider.sign(s, b"x", &mut output),
        Err(Error::BufferTooSmall)
    );
    assert_eq!(output.len, 96);
    let mut buffer = [0u8; 96];
    let mut output = Output::new(Some(&mut buffer));
    provider.sign(s, b"x", &mut output).expect("sign");
    // The operation ended.
    let mut output = Output::new(Some(&mut buffer));
    assert_eq!(
        provider.sign(s, b"x", &mut output),
        Err(Error::OperationNotInitialized)
    );

    // CKM_ECDSA is single-part: an update ends the operation.
    provider.sign_init(s, CKM_ECDSA, &[], key).expect("init");
    assert_eq!(
        provider.sign_update(s, b"x"),
        Err(Error::FunctionNotSupported)
    );
    assert_eq!(
        provider.sign_update(s, b"x"),
        Err(Error::OperationNotInitialized)
    );
    // An empty hash value is not one.
    assert_eq!(
        sign(&mut provider, s, CKM_ECDSA, key, &[]),
        Err(Error::DataLenRange)
    );

    let public = the_one(&mut provider, s, &[class(CKO_PUBLIC_KEY)]);
    let cert = the_one(&mut provider, s, &[label(objects::LABEL_IDENTITY)]);
    for (mechanism, parameter, key, expected) in [
        (CKM_RSA_PKCS, &[][..], key, Error::MechanismInvalid),
        (CKM_ECDSA, &[1u8][..], key, Error::MechanismParamInvalid),
        (CKM_ECDSA, &[][..], public, Error::KeyFunctionNotPermitted),
        (CKM_ECDSA, &[][..], cert, Error::KeyHandleInvalid),
        (CKM_ECDSA, &[][..], 424_242, Error::KeyHandleInvalid),
    ] {
        assert_eq!(
            provider.sign_init(s, mechanism, parameter, key),
            Err(expected)
        );
    }
}

#[test]
fn before_operating_there_is_no_key_to_sign_with() {
    let module = Module::manufactured();
    let mut provider = provider(&[module.path()]);
    let token = provider.token_info(0).expect("token");
    assert_eq!(token.lifecycle, Lifecycle::Personalization);
    assert_eq!(token.flags & CKF_TOKEN_INITIALIZED, 0);
    let s = session(&mut provider);
    let all = find(&mut provider, s, &[]);
    assert_eq!(all.len(), 1, "only the identity certificate");
    assert_eq!(
        attribute(&provider, s, all[0], CKA_LABEL),
        objects::LABEL_IDENTITY.as_bytes()
    );
    assert!(find(&mut provider, s, &[class(CKO_PRIVATE_KEY)]).is_empty());
    assert_eq!(
        provider.sign_init(s, CKM_ECDSA_SHA384, &[], all[0]),
        Err(Error::KeyHandleInvalid)
    );
    assert_eq!(
        provider.login(s, CKU_USER, b"1234"),
        Err(Error::UserPinNotInitialized)
    );
}

#[test]
fn after_re_personalization_the_old_key_handle_is_gone() {
    let module = Module::operating(None);
    let mut provider = provider(&[module.path()]);
    let s = session(&mut provider);
    let old_key = private_key(&mut provider, s);
    let old_cert = module_cert(&mut provider, s);
    // While a session is open the module is held: nobody can personalize it.
    let busy = FileKeyMemory::open(module.path()).expect_err("held by the session");
    assert_eq!(busy.kind(), std::io::ErrorKind::WouldBlock);
    provider.close_session(s).expect("close");

    module.personalize(None);

    let s = session(&mut provider);
    assert_eq!(
        provider.sign_init(s, CKM_ECDSA_SHA384, &[], old_key),
        Err(Error::KeyHandleInvalid)
    );
    let key = private_key(&mut provider, s);
    assert_ne!(key, old_key);
    let cert = module_cert(&mut provider, s);
    assert_ne!(cert.public_key_sec1(), old_cert.public_key_sec1());
    let signature = sign(&mut provider, s, CKM_ECDSA_SHA384, key, b"new").expect("sign");
    assert!(verifies(&cert, &Sha384::digest(b"new"), &signature));
    assert!(!verifies(&old_cert, &Sha384::digest(b"new"), &signature));

    // Reading the unchanged module again keeps its handles.
    provider.close_session(s).expect("close");
    provider.token_info(0).expect("token");
    let s = session(&mut provider);
    assert_eq!(private_key(&mut provider, s), key);
}

#[test]
fn a_user_pin_maps_to_login() {
    let module = Module::operating(Some(b"1234"));
    let mut provider = provider(&[module.path()]);
    let token = provider.token_info(0).expect("token");
    assert_eq!(
        token.flags & (CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED),
        CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED
    );
    assert_eq!(token.pin, PinState::TriesLeft(3));
    let s = session(&mut provider);
    let rw = provider
        .open_session(0, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .expect("rw session");
    assert_eq!(
        provider.session_info(s).unwrap().state,
        CKS_RO_PUBLIC_SESSION
    );

    // The private key is private: hidden until login.
    assert!(find(&mut provider, s, &[class(CKO_PRIVATE_KEY)]).is_empty());
    assert_eq!(find(&mut provider, s, &[]).len(), 5);
    assert_eq!(provider.logout(s), Err(Error::UserNotLoggedIn));
    assert_eq!(provider.login(s, CKU_USER, b"12"), Err(Error::PinLenRange));
    assert_eq!(
        provider.login(s, CKU_SO, b"1234"),
        Err(Error::UserTypeInvalid)
    );
    assert_eq!(
        provider.login(s, CKU_USER, b"9999"),
        Err(Error::PinIncorrect)
    );
    let token = provider.token_info(0).expect("token");
    assert_eq!(token.pin, PinState::TriesLeft(2));
    assert_eq!(token.flags & CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_COUNT_LOW);

    provider.login(s, CKU_USER, b"1234").expect("login");
    assert_eq!(
        provider.login(rw, CKU_USER, b"1234"),
        Err(Error::UserAlreadyLoggedIn),
        "login is per token"
    );
    assert_eq!(
        provider.session_info(rw).unwrap().state,
        CKS_RW_USER_FUNCTIONS
    );
    let key = private_key(&mut provider, s);
    assert_eq!(attribute(&provider, s, key, CKA_PRIVATE), [CK_TRUE]);
    let cert = module_cert(&mut provider, s);
    let signature = sign(&mut provider, rw, CKM_ECDSA_SHA384, key, b"pin").expect("sign");
    assert!(verifies(&cert, &Sha384::digest(b"pin"), &signature));

    // After logout the handle is invalid, even once logged in again.
    provider.logout(s).expect("logout");
    assert_eq!(
        provider.sign_init(s, CKM_ECDSA_SHA384, &[], key),
        Err(Error::KeyHandleInvalid)
    );
    provider.login(s, CKU_USER, b"1234").expect("login");
    assert_eq!(
        provider.sign_init(s, CKM_ECDSA_SHA384, &[], key),
        Err(Error::KeyHandleInvalid)
    );
    let key = private_key(&mut provider, s);
    provider
        .sign_init(s, CKM_ECDSA_SHA384, &[], key)
        .expect("the new handle");

    // Closing every session logs out.
    provider.close_all_sessions(0).expect("close all");
    let s = session(&mut provider);
    assert_eq!(
        provider.session_info(s).unwrap().state,
        CKS_RO_PUBLIC_SESSION
    );
    assert!(find(&mut provider, s, &[class(CKO_PRIVATE_KEY)]).is_empty());

    // Three wrong PINs block it.
    for _ in 0..2 {
        assert_eq!(
            provider.login(s, CKU_USER, b"0000"),
            Err(Error::PinIncorrect)
        );
    }
    assert_eq!(
        provider.token_info(0).unwrap().flags & CKF_USER_PIN_FINAL_TRY,
        CKF_USER_PIN_FINAL_TRY
    );
    assert_eq!(
        provider.login(s, CKU_USER, b"0000"),
        Err(Error::PinIncorrect)
    );
    assert_eq!(provider.login(s, CKU_USER, b"1234"), Err(Error::PinLocked));
    let token = provider.token_info(0).expect("token");
    assert_eq!(token.pin, PinState::Blocked);
    assert_eq!(token.flags & CKF_USER_PIN_LOCKED, CKF_USER_PIN_LOCKED);
}

#[test]
fn sessions_finds_and_handles_are_checked() {
    let module = Module::operating(None);
    let mut provider = provider(&[module.path()]);
    assert_eq!(
        provider.open_session(0, 0),
        Err(Error::SessionParallelNotSupported)
    );
    assert_eq!(
        provider.open_session(7, CKF_SERIAL_SESSION),
        Err(Error::SlotIdInvalid)
    );
    assert_eq!(provider.token_info(7), Err(Error::SlotIdInvalid));
    let s = session(&mut provider);
    assert_eq!(provider.find(s, 1), Err(Error::OperationNotInitialized));
    assert_eq!(provider.find_final(s), Err(Error::OperationNotInitialized));
    provider.find_init(s, &[]).expect("init");
    assert_eq!(provider.find_init(s, &[]), Err(Error::OperationActive));
    let mut seen = Vec::new();
    loop {
        let batch = provider.find(s, 4).expect("find");
        if batch.is_empty() {
            break;
        }
        seen.extend(batch);
    }
    assert_eq!(seen.len(), 6, "in batches of at most 4");
    provider.find_final(s).expect("final");
    assert!(find(&mut provider, s, &[(CKA_LABEL, b"no such label".to_vec())]).is_empty());
    assert_eq!(provider.token_info(0).unwrap().sessions, 1);
    provider.close_session(s).expect("close");
    assert_eq!(provider.close_session(s), Err(Error::SessionHandleInvalid));
    assert_eq!(provider.session_info(s), Err(Error::SessionHandleInvalid));
    assert_eq!(provider.find_init(s, &[]), Err(Error::SessionHandleInvalid));
    assert_eq!(provider.mechanism_list(0).unwrap(), MECHANISMS.to_vec());
    assert_eq!(
        provider.mechanism_info(0, CKM_RSA_PKCS),
        Err(Error::MechanismInvalid)
    );
    let info = provider.mechanism_info(0, CKM_ECDSA).expect("info");
    assert_eq!((info.min_key_bits, info.max_key_bits), (384, 384));
    assert_eq!(info.flags & CKF_SIGN, CKF_SIGN);
}

#[test]
fn slots_follow_their_module_directories() {
    let parent = tempfile::tempdir().expect("temp dir");
    let missing: PathBuf = parent.path().join("later");
    let present = Module::operating(None);
    let mut provider = provider(&[missing.as_path(), present.path()]);
    assert_eq!(provider.slot_list(false), vec![0, 1]);
    assert_eq!(provider.slot_list(true), vec![1]);
    assert!(!provider.slot_info(0).unwrap().token_present);
    assert_eq!(provider.token_info(0), Err(Error::TokenNotPresent));
    assert_eq!(
        provider.open_session(0, CKF_SERIAL_SESSION),
        Err(Error::TokenNotPresent)
    );
    assert_eq!(provider.poll_slot_event(), None);

    // The module appears: an event for slot 0, then none.
    std::fs::create_dir(&missing).expect("mkdir");
    assert_eq!(provider.poll_slot_event(), Some(0));
    assert_eq!(provider.poll_slot_event(), None);
    let token = provider.token_info(0).expect("a blank module");
    assert_eq!(token.lifecycle, Lifecycle::Manufactured);

    // It goes away with a session open: the session goes with it.
    let s = session(&mut provider);
    std::fs::remove_dir_all(&missing).expect("rm");
    assert_eq!(provider.poll_slot_event(), Some(0));
    assert_eq!(provider.session_info(s), Err(Error::SessionHandleInvalid));
}

#[test]
fn a_module_in_use_elsewhere_has_no_token() {
    let module = Module::operating(None);
    let mut provider = provider(&[module.path()]);
    let held = FileKeyMemory::open(module.path()).expect("open");
    assert!(!provider.slot_info(0).unwrap().token_present);
    assert_eq!(
        provider.open_session(0, CKF_SERIAL_SESSION),
        Err(Error::TokenNotPresent)
    );
    drop(held);
    assert!(provider.slot_info(0).unwrap().token_present);
}
