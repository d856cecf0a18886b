//! Tests of the SoftHSM key memory against a real SoftHSM v2 token.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, in `C_Initialize`, and a
//! test cannot set an environment variable for itself without `unsafe`. So
//! each token test creates a token directory of its own with
//! `softhsm-config/create-token.sh`, then runs its body in a child process (the
//! test binary itself, filtered to that one test) with `SOFTHSM2_CONF` pointing
//! there. Without SoftHSM the tests fail under `CI=true` and are skipped
//! (with a note on stderr) elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass, ObjectHandle};
use der::Encode;
use imprint_apdu::Applet;
use imprint_apdu::Lifecycle;
use imprint_apdu::host::{
    CardLink, InProcessTransport, PersonalizationOptions, personalize, reset_module,
};
use imprint_apdu::keymem::{KeyMemory, KeyMemoryError, KeySlot, Records};
use imprint_apdu::pki::Certificate;
use imprint_tests::{Pki, RecordingJournal, manufacture_with};
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use p384::elliptic_curve::sec1::ToSec1Point;
use sha2::{Digest, Sha384};

use super::*;

const TOKEN_LABEL: &str = "imprint test token";
const SO_PIN: &str = "so-pin-0000";
const USER_PIN: &str = "user-pin-0000";

/// Set in the child process that runs a test's body: the token directory.
const CHILD_ENV: &str = "IMPRINT_SOFTHSM_TEST_TOKEN_DIR";

/// The SoftHSM library, if SoftHSM (library and `softhsm2-util`) is installed.
fn softhsm_installed() -> Option<PathBuf> {
    let library = find_library().filter(|path| path.is_file())?;
    let util = Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .ok()?;
    util.status.success().then_some(library)
}

fn open_test_token() -> SoftHsmKeyMemory {
    let library = find_library().expect("SoftHSM library");
    SoftHsmKeyMemory::open(library, TOKEN_LABEL, USER_PIN.as_bytes()).expect("open the test token")
}

/// Runs `body` on a fresh token, in a child process of its own (see the
/// module docs). `body` must be a closure written in the test function: its
/// type name names the test for the child.
fn on_fresh_token<F: FnOnce(SoftHsmKeyMemory)>(body: F) {
    if std::env::var_os(CHILD_ENV).is_some() {
        body(open_test_token());
        return;
    }
    if softhsm_installed().is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "softhsm2 is not installed (required under CI)"
        );
        eprintln!("SKIPPED: softhsm2 not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-config/create-token.sh");
    let created = Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .args([TOKEN_LABEL, SO_PIN, USER_PIN])
        .output()
        .expect("run create-token.sh");
    assert!(
        created.status.success(),
        "create-token.sh failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let conf = dir.path().join("softhsm2.conf");
    assert!(conf.is_file(), "create-token.sh wrote the configuration");
    assert!(
        String::from_utf8_lossy(&created.stdout).starts_with("export SOFTHSM2_CONF="),
        "create-token.sh prints the export line"
    );

    // `crate::softhsm::tests::the_test::{{closure}}` → `softhsm::tests::the_test`;
    // should the form of type names change, the child runs no test and the
    // "1 passed" check below fails.
    let closure = std::any::type_name::<F>();
    let name = closure
        .strip_suffix("::{{closure}}")
        .and_then(|path| path.split_once("::"))
        .map_or(closure, |(_, path)| path);
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_ENV, dir.path())
        .output()
        .expect("run the test in a child process");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && stdout.contains("1 passed"),
        "{name} failed on SoftHSM:\n{stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
}

fn records_objects(memory: &SoftHsmKeyMemory) -> Vec<(ObjectHandle, Option<u64>)> {
    memory
        .records_objects()
        .expect("records objects")
        .into_iter()
        .map(|object| (object.handle, object.generation))
        .collect()
}

/// Creates a records object by hand, as an interrupted commit would leave it.
fn create_records_object(memory: &SoftHsmKeyMemory, value: Option<Vec<u8>>) {
    let mut template = records_template();
    template.push(Attribute::Private(true));
    template.extend(value.map(Attribute::Value));
    memory
        .session
        .create_object(&template)
        .expect("create a records object");
}

fn records_value(generation: u64, records: &Records) -> Vec<u8> {
    let mut value = generation.to_be_bytes().to_vec();
    value.extend(records.encode());
    value
}

fn sample_records(count: u32) -> Records {
    Records {
        lifecycle: Lifecycle::Personalization,
        checking_cert: Some(vec![0x30, 0x03, 0x02, 0x01, 0x07]),
        time_watermark: 1_800_000_000 + u64::from(count),
        personalizations: count,
        ..Records::default()
    }
}

fn count_key_objects(memory: &SoftHsmKeyMemory, slot: KeySlot) -> usize {
    memory.key_objects(slot).expect("key objects").len()
}

/// The points of every EC public key object in the token, whatever its label.
fn all_public_points(memory: &SoftHsmKeyMemory) -> Vec<PublicKey> {
    memory
        .session
        .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)])
        .expect("find public keys")
        .into_iter()
        .map(|object| memory.read_point(object).expect("EC point"))
        .collect()
}

fn digest(message: &[u8]) -> [u8; 48] {
    Sha384::digest(message).into()
}

fn verify(key: &PublicKey, digest: &[u8; 48], signature: &Signature) {
    VerifyingKey::from(key)
        .verify_prehash(digest, signature)
        .expect("signature verifies");
}

// ---- Without a token ----

#[test]
fn pin_files_lose_one_trailing_newline_only() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("pin");
    for (content, pin) in [
        (&b"1234"[..], &b"1234"[..]),
        (b"1234\n", b"1234"),
        (b"1234\r\n", b"1234"),
        (b"1234\n\n", b"1234\n"),
        (b" 12 34 \n", b" 12 34 "),
    ] {
        std::fs::write(&path, content).expect("write");
        assert_eq!(read_pin_file(&path).expect("read").as_slice(), pin);
    }
    assert!(read_pin_file(&dir.path().join("missing")).is_err());
}

#[test]
fn no_library_means_no_token() {
    assert!(!token_present(
        Path::new("/nonexistent/libsofthsm2.so"),
        "x"
    ));
}

#[test]
fn ec_params_are_the_der_oid_of_secp384r1() {
    let oid = der::asn1::ObjectIdentifier::new_unwrap("1.3.132.0.34");
    assert_eq!(oid.to_der().unwrap(), SECP384R1_PARAMS);
}

#[test]
fn ec_point_is_unwrapped_strictly() {
    let key = PublicKey::from_sec1_bytes(
        p384::ProjectivePoint::GENERATOR
            .to_affine()
            .to_sec1_point(false)
            .as_bytes(),
    )
    .unwrap();
    let point = key.to_sec1_point(false).as_bytes().to_vec();
    let mut der = vec![0x04, 0x61];
    der.extend(&point);
    assert_eq!(decode_ec_point(&der), Ok(key));

    let mut long_form = vec![0x04, 0x81, 0x61];
    long_form.extend(&point);
    let mut trailing = der.clone();
    trailing.push(0);
    let mut compressed = vec![0x04, 0x31];
    compressed.extend(key.to_sec1_point(true).as_bytes());
    let mut off_curve = der.clone();
    off_curve[50] ^= 1;
    let mut wrong_tag = der.clone();
    wrong_tag[0] = 0x03;
    for bad in [
        &point[..],
        &long_form,
        &trailing,
        &compressed,
        &off_curve,
        &wrong_tag,
        &der[..40],
        &[0x04, 0x01, 0x00],
        &[],
    ] {
        assert_eq!(decode_ec_point(bad), Err(KeyMemoryError::Corrupt));
    }
}

#[test]
fn records_value_carries_a_generation() {
    let records = sample_records(3);
    let (generation, decoded) = decode_records_value(&records_value(9, &records)).unwrap();
    assert_eq!(generation, 9);
    assert_eq!(decoded, Ok(records));
    assert!(decode_records_value(&[0; 7]).is_none());
    let (generation, decoded) = decode_records_value(&[0, 0, 0, 0, 0, 0, 0, 1, 0xFF]).unwrap();
    assert_eq!(generation, 1);
    assert_eq!(decoded, Err(KeyMemoryError::Corrupt));
}

#[test]
fn key_memory_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<SoftHsmKeyMemory>();
}

#[test]
fn key_labels_name_the_slots() {
    assert_eq!(key_label(KeySlot::Identity), "imprint identity key");
    assert_eq!(key_label(KeySlot::Module), "imprint module key");
}

// ---- On a fresh SoftHSM token ----

/// Opening checks the label and the PIN, and a token serves one key memory at a time.
#[test]
fn open_finds_the_token_by_label() {
    on_fresh_token(|memory| {
        assert_eq!(memory.token_label(), TOKEN_LABEL);
        let library = find_library().unwrap();
        assert!(matches!(
            SoftHsmKeyMemory::open(&library, TOKEN_LABEL, USER_PIN.as_bytes()),
            Err(SoftHsmError::InUse(_))
        ));
        drop(memory);
        assert!(matches!(
            SoftHsmKeyMemory::open(&library, TOKEN_LABEL, b"wrong pin"),
            Err(SoftHsmError::PinIncorrect)
        ));
        assert!(matches!(
            SoftHsmKeyMemory::open(&library, "no such token", USER_PIN.as_bytes()),
            Err(SoftHsmError::TokenNotFound(_))
        ));
        assert!(matches!(
            SoftHsmKeyMemory::open(
                Path::new("/nonexistent/libpkcs11.so"),
                TOKEN_LABEL,
                USER_PIN.as_bytes()
            ),
            Err(SoftHsmError::Load { .. })
        ));
        let mut memory = open_test_token();
        assert_eq!(memory.load(), Ok(Records::default()));
    });
}

#[test]
fn records_commit_load_round_trip_and_generations() {
    on_fresh_token(|mut memory| {
        assert_eq!(memory.load(), Ok(Records::default()), "a blank token");
        assert!(records_objects(&memory).is_empty());

        let first = sample_records(1);
        memory.commit(&first).unwrap();
        assert_eq!(memory.load(), Ok(first.clone()));
        assert!(matches!(records_objects(&memory)[..], [(_, Some(1))]));

        let second = sample_records(2);
        memory.commit(&second).unwrap();
        assert!(
            matches!(records_objects(&memory)[..], [(_, Some(2))]),
            "the older generation is destroyed after the new one exists"
        );
        assert_eq!(memory.load(), Ok(second.clone()));

        // The records persist in the token.
        drop(memory);
        let mut memory = open_test_token();
        assert_eq!(memory.load(), Ok(second.clone()));

        // A crash between creating generation 3 and destroying generation 2.
        let third = sample_records(3);
        create_records_object(&memory, Some(records_value(3, &third)));
        assert_eq!(records_objects(&memory).len(), 2);
        assert_eq!(memory.load(), Ok(third.clone()), "load takes the newest");
        assert!(
            matches!(records_objects(&memory)[..], [(_, Some(3))]),
            "load cleans up the leftover"
        );

        // A crash while writing generation 4: undecodable records, or no value at all.
        create_records_object(&memory, Some(records_value(4, &third)[..20].to_vec()));
        create_records_object(&memory, Some(vec![0, 0, 0]));
        create_records_object(&memory, None);
        assert_eq!(records_objects(&memory).len(), 4);
        assert_eq!(memory.load(), Ok(third.clone()), "the newest that decodes");
        assert_eq!(records_objects(&memory).len(), 1);

        let fourth = sample_records(4);
        memory.commit(&fourth).unwrap();
        assert_eq!(memory.load(), Ok(fourth.clone()));

        // The next generation is above every generation that decodes; a
        // commit destroys every older object, decodable or not.
        create_records_object(&memory, Some(records_value(40, &fourth)[..12].to_vec()));
        create_records_object(&memory, Some(vec![0xFF; 30]));
        let fifth = sample_records(5);
        memory.commit(&fifth).unwrap();
        assert!(matches!(records_objects(&memory)[..], [(_, Some(5))]));
        assert_eq!(memory.load(), Ok(fifth.clone()));

        // Two different records of one generation: nobody committed that.
        create_records_object(&memory, Some(records_value(5, &fourth)));
        assert_eq!(memory.load(), Err(KeyMemoryError::Corrupt));

        // Nothing decodes: corrupt, not blank.
        for (handle, _) in records_objects(&memory) {
            memory.session.destroy_object(handle).unwrap();
        }
        create_records_object(&memory, Some(vec![0xFF; 30]));
        assert_eq!(memory.load(), Err(KeyMemoryError::Corrupt));
        memory.commit(&first).unwrap();
        assert_eq!(memory.load(), Ok(first));
    });
}

#[test]
fn generate_sign_verify() {
    on_fresh_token(|mut memory| {
        assert_eq!(memory.public_key(KeySlot::Module), Ok(None));
        assert_eq!(
            memory.sign_digest(KeySlot::Module, &digest(b"m")),
            Err(KeyMemoryError::NoKey)
        );

        let key = memory
            .generate(KeySlot::Module, b"variation value")
            .unwrap();
        assert_eq!(memory.public_key(KeySlot::Module), Ok(Some(key)));
        assert_eq!(count_key_objects(&memory, KeySlot::Module), 2);
        assert_eq!(
            memory.public_key(KeySlot::Identity),
            Ok(None),
            "other slot untouched"
        );

        let value = digest(b"a message");
        let first = memory.sign_digest(KeySlot::Module, &value).unwrap();
        verify(&key, &value, &first);
        let second = memory.sign_digest(KeySlot::Module, &value).unwrap();
        verify(&key, &value, &second);
        assert_ne!(first, second, "ECDSA nonces are fresh");

        let identity = memory.generate(KeySlot::Identity, &[]).unwrap();
        assert_ne!(identity, key);
        verify(
            &identity,
            &value,
            &memory.sign_digest(KeySlot::Identity, &value).unwrap(),
        );

        let mut random = [[0u8; 32]; 2];
        for out in &mut random {
            memory.random(out).unwrap();
        }
        assert_ne!(random[0], random[1]);
        assert_ne!(random[0], [0; 32]);
        memory.random(&mut []).unwrap();
    });
}

/// The private key is sensitive, never extractable, and cannot be weakened,
/// copied, wrapped or used for anything but ECDSA and, for the module key,
/// the ECDH of the operating channel.
#[test]
fn private_key_attributes() {
    on_fresh_token(|mut memory| {
        memory.generate(KeySlot::Module, b"v").unwrap();
        let key = memory
            .private_key(KeySlot::Module)
            .unwrap()
            .expect("private key");
        let session = &memory.session;

        let attributes = session
            .get_attributes(
                key,
                &[
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::AlwaysSensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::Local,
                    AttributeType::Sign,
                    AttributeType::Derive,
                    AttributeType::Decrypt,
                    AttributeType::Unwrap,
                    AttributeType::Copyable,
                    AttributeType::Modifiable,
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::AllowedMechanisms,
                ],
            )
            .unwrap();
        let name = b"imprint module key".to_vec();
        for expected in [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::AlwaysSensitive(true),
            Attribute::Extractable(false),
            Attribute::NeverExtractable(true),
            Attribute::Local(true),
            Attribute::Sign(true),
            Attribute::Derive(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Copyable(false),
            Attribute::Modifiable(false),
            Attribute::Label(name.clone()),
            Attribute::Id(name),
            Attribute::AllowedMechanisms(vec![MechanismType::ECDSA, MechanismType::ECDH1_DERIVE]),
        ] {
            assert!(
                attributes.contains(&expected),
                "{expected:?} in {attributes:?}"
            );
        }

        // The private value cannot be read.
        let info = session
            .get_attribute_info(key, &[AttributeType::Value])
            .unwrap();
        assert!(
            matches!(
                info[..],
                [AttributeInfo::Sensitive | AttributeInfo::Unavailable]
            ),
            "{info:?}"
        );
        let value = session
            .get_attributes(key, &[AttributeType::Value])
            .unwrap();
        assert!(
            value.iter().all(
                |attribute| !matches!(attribute, Attribute::Value(bytes) if !bytes.is_empty())
            ),
            "CKA_VALUE came back: {value:?}"
        );

        // Nothing can weaken, copy or wrap it.
        assert!(
            session
                .update_attributes(key, &[Attribute::Sensitive(false)])
                .is_err()
        );
        assert!(
            session
                .update_attributes(key, &[Attribute::Extractable(true)])
                .is_err()
        );
        assert!(session.copy_object(key, &[]).is_err());
        assert!(
            session
                .copy_object(key, &[Attribute::Token(false)])
                .is_err()
        );
        let wrapping = session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(false),
                    Attribute::ValueLen(32.into()),
                    Attribute::Wrap(true),
                ],
            )
            .unwrap();
        assert!(
            session
                .wrap_key(&Mechanism::AesKeyWrapPad, wrapping, key)
                .is_err()
        );
        // Only raw ECDSA over a hash value.
        assert!(
            session
                .sign(&Mechanism::EcdsaSha384, key, b"message")
                .is_err()
        );
        assert_eq!(
            session
                .sign(&Mechanism::Ecdsa, key, &digest(b"m"))
                .unwrap()
                .len(),
            96
        );
    });
}

/// The module key agrees the operating channel's static-ephemeral secret
/// inside the token: the same x-coordinate the central system computes from
/// its ephemeral secret and the module's public key; the identity key does not
/// agree at all.
#[test]
fn the_module_key_agrees_keys_inside_the_token() {
    on_fresh_token(|mut memory| {
        let module = memory.generate(KeySlot::Module, b"v").unwrap();
        let peer_secret = p384::SecretKey::from_slice(&[0x17; 48]).unwrap();
        let peer = peer_secret.public_key();
        let inside = memory.agree(KeySlot::Module, &peer).unwrap();
        let outside = imprint_apdu::channel::ecdh(&peer_secret.to_nonzero_scalar(), &module);
        assert_eq!(*inside, *outside);
        // No session object is left behind.
        let secrets = memory
            .session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .unwrap();
        assert!(secrets.is_empty(), "{secrets:?}");

        memory.generate(KeySlot::Identity, &[]).unwrap();
        assert!(memory.agree(KeySlot::Identity, &peer).is_err());
    });
}

#[test]
fn erase_removes_both_objects() {
    on_fresh_token(|mut memory| {
        let identity = memory.generate(KeySlot::Identity, &[]).unwrap();
        let module = memory.generate(KeySlot::Module, b"v").unwrap();
        assert_eq!(count_key_objects(&memory, KeySlot::Module), 2);

        memory.erase(KeySlot::Module).unwrap();
        assert_eq!(count_key_objects(&memory, KeySlot::Module), 0);
        assert!(!all_public_points(&memory).contains(&module));
        assert_eq!(memory.public_key(KeySlot::Module), Ok(None));
        assert_eq!(
            memory.sign_digest(KeySlot::Module, &digest(b"m")),
            Err(KeyMemoryError::NoKey)
        );
        memory.erase(KeySlot::Module).unwrap();

        assert_eq!(
            count_key_objects(&memory, KeySlot::Identity),
            2,
            "identity untouched"
        );
        assert_eq!(memory.public_key(KeySlot::Identity), Ok(Some(identity)));
    });
}

#[test]
fn generating_twice_gives_different_keys() {
    on_fresh_token(|mut memory| {
        let first = memory.generate(KeySlot::Module, b"same variation").unwrap();
        let second = memory.generate(KeySlot::Module, b"same variation").unwrap();
        assert_ne!(first, second);
        assert_eq!(
            count_key_objects(&memory, KeySlot::Module),
            2,
            "the old pair is gone"
        );
        assert_eq!(all_public_points(&memory), vec![second]);
        let value = digest(b"m");
        verify(
            &second,
            &value,
            &memory.sign_digest(KeySlot::Module, &value).unwrap(),
        );
    });
}

/// A public half left without its private half (generation cut short) is no key.
#[test]
fn an_orphaned_public_half_is_no_key() {
    on_fresh_token(|mut memory| {
        memory.generate(KeySlot::Module, b"v").unwrap();
        let value = digest(b"m");
        memory.sign_digest(KeySlot::Module, &value).unwrap();
        let private = memory.private_key(KeySlot::Module).unwrap().unwrap();
        memory.session.destroy_object(private).unwrap();
        assert_eq!(memory.public_key(KeySlot::Module), Ok(None));
        assert_eq!(
            memory.sign_digest(KeySlot::Module, &value),
            Err(KeyMemoryError::NoKey),
            "a remembered handle of a destroyed key is dropped"
        );
        let key = memory.generate(KeySlot::Module, b"v").unwrap();
        assert_eq!(count_key_objects(&memory, KeySlot::Module), 2);
        assert_eq!(memory.public_key(KeySlot::Module), Ok(Some(key)));
    });
}

type SoftHsmLink = CardLink<InProcessTransport<SoftHsmKeyMemory>>;

fn memory_of(link: &mut SoftHsmLink) -> &mut SoftHsmKeyMemory {
    link.transport_mut().applet_mut().memory_mut()
}

fn module_cert_key(link: &mut SoftHsmLink) -> VerifyingKey {
    let der = link
        .transport_mut()
        .applet()
        .records()
        .module_cert
        .clone()
        .expect("module certificate");
    *Certificate::from_der(&der).unwrap().public_key()
}

/// The whole applet on SoftHSM: manufactured, personalized, reset,
/// re-personalized, restarted; the certificates name the keys in the token.
#[test]
fn applet_on_softhsm() {
    on_fresh_token(|memory| {
        let pki = Pki::new();
        let mut link = CardLink::new(InProcessTransport::new(Applet::new(memory).unwrap()));
        manufacture_with(&mut link, &pki.manufacturer);
        let identity = memory_of(&mut link)
            .public_key(KeySlot::Identity)
            .unwrap()
            .expect("identity key");

        let mut journal = RecordingJournal::default();
        let first = personalize(
            &mut link,
            &mut journal,
            &pki.unit,
            PersonalizationOptions::default(),
        )
        .expect("personalize on SoftHSM");
        assert_eq!(
            link.transport_mut().applet().lifecycle(),
            Lifecycle::Operating
        );
        let first_key = memory_of(&mut link)
            .public_key(KeySlot::Module)
            .unwrap()
            .expect("module key");
        assert_eq!(
            *first.certificate.public_key(),
            VerifyingKey::from(&first_key)
        );
        assert_eq!(module_cert_key(&mut link), VerifyingKey::from(&first_key));

        // TERMINATE erases the module key in the token.
        reset_module(&mut link, &pki.unit).expect("reset");
        assert_eq!(
            link.transport_mut().applet().lifecycle(),
            Lifecycle::Personalization
        );
        assert_eq!(count_key_objects(memory_of(&mut link), KeySlot::Module), 0);
        assert!(!all_public_points(memory_of(&mut link)).contains(&first_key));

        let second = personalize(
            &mut link,
            &mut journal,
            &pki.unit,
            PersonalizationOptions::default(),
        )
        .expect("personalize again");
        let second_key = memory_of(&mut link)
            .public_key(KeySlot::Module)
            .unwrap()
            .unwrap();
        assert_ne!(second_key, first_key);
        assert_eq!(
            *second.certificate.public_key(),
            VerifyingKey::from(&second_key)
        );

        // Re-personalizing an OPERATING module: the old module key object is
        // gone, the new one is there, and the identity key survives.
        let third = personalize(
            &mut link,
            &mut journal,
            &pki.unit,
            PersonalizationOptions::default(),
        )
        .expect("re-personalize");
        let memory = memory_of(&mut link);
        let third_key = memory.public_key(KeySlot::Module).unwrap().unwrap();
        assert_ne!(third_key, second_key);
        assert_eq!(count_key_objects(memory, KeySlot::Module), 2);
        let points = all_public_points(memory);
        assert!(!points.contains(&second_key), "old module key object gone");
        assert!(points.contains(&third_key), "new module key object present");
        assert_eq!(memory.public_key(KeySlot::Identity), Ok(Some(identity)));
        assert_eq!(
            *third.certificate.public_key(),
            VerifyingKey::from(&third_key)
        );
        assert_eq!(module_cert_key(&mut link), VerifyingKey::from(&third_key));
        let personalizations = link.transport_mut().applet().records().personalizations;

        // Power cycle: everything comes back from the token.
        drop(link);
        let applet = Applet::new(open_test_token()).unwrap();
        assert_eq!(applet.lifecycle(), Lifecycle::Operating);
        assert_eq!(applet.records().personalizations, personalizations);
        let mut link = CardLink::new(InProcessTransport::new(applet));
        assert_eq!(module_cert_key(&mut link), VerifyingKey::from(&third_key));
        assert_eq!(
            memory_of(&mut link).public_key(KeySlot::Identity),
            Ok(Some(identity))
        );
    });
}
