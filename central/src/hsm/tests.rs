//! The central key in a real SoftHSM token.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process and central forbids the
//! `unsafe` that setting it here would need, so every token scenario runs in
//! a child process: the parent test creates a token in a temporary directory
//! (`softhsm-config/create-token.sh`) and runs one `#[ignore]`d `child_*`
//! test of this executable with `SOFTHSM2_CONF` and [`TOKEN_ENV`] set.
//! Without SoftHSM the parents skip loudly, or fail under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;

use imprint_apdu::pki::issue::CertificateRequest;
use imprint_apdu::pki::{Role, verify_issued_by};
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha384};

use super::*;
use crate::{CentralAuthority, CentralError, CentralKey, KEY_CONFIG_FILE, KEY_FILE, keyfile};

/// Set in a child: the temporary directory of the parent (token, PIN file).
const TOKEN_ENV: &str = "IMPRINT_CENTRAL_TEST_TOKEN_DIR";

const TOKEN_LABEL: &str = "imprint central test";
const SO_PIN: &str = "so-pin-0000";
const USER_PIN: &str = "central-user-pin";

/// Where distributions install SoftHSM v2's library; `IMPRINT_SOFTHSM_LIB` overrides.
const LIBRARY_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

fn library() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("IMPRINT_SOFTHSM_LIB").filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    LIBRARY_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// Creates a token and runs the ignored test `child` against it in a child
/// process; skips loudly without SoftHSM (fails under `CI=true`).
fn run_child(child: &str) {
    let installed = library().is_some_and(|path| path.is_file())
        && Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
    if !installed {
        assert!(!ci(), "softhsm2 is not installed; CI=true");
        eprintln!("SKIPPED: softhsm2 not installed (Debian: softhsm2)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-config/create-token.sh");
    let created = Command::new("bash")
        .arg(&script)
        .arg(dir.path().join("token"))
        .args([TOKEN_LABEL, SO_PIN, USER_PIN])
        .output()
        .expect("run create-token.sh");
    assert!(
        created.status.success(),
        "create-token.sh failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let output = Command::new(std::env::current_exe().expect("test executable"))
        .args([
            child,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOFTHSM2_CONF", dir.path().join("token/softhsm2.conf"))
        .env(TOKEN_ENV, dir.path())
        .env_remove(PIN_ENV)
        .env_remove(PIN_FILE_ENV)
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

/// In a child: the parent's temporary directory.
fn child_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os(TOKEN_ENV).expect("runs as a child of its parent test, which sets it"),
    )
}

fn config(key_label: &str) -> Pkcs11KeyConfig {
    Pkcs11KeyConfig {
        module: library().expect("libsofthsm2.so"),
        token: TOKEN_LABEL.to_owned(),
        key_label: key_label.to_owned(),
    }
}

fn pin() -> Pin {
    Pin::new(USER_PIN.as_bytes().to_vec()).expect("pin")
}

fn digest(message: &[u8]) -> [u8; 48] {
    Sha384::digest(message).into()
}

#[test]
fn key_generation_signing_and_protection() {
    run_child("hsm::tests::child_key_generation_signing_and_protection");
}

#[test]
#[ignore = "runs as a child of key_generation_signing_and_protection"]
fn child_key_generation_signing_and_protection() {
    let config = config(DEFAULT_KEY_LABEL);
    let key = Pkcs11CentralKey::generate(&config, &pin()).expect("generate");
    assert_eq!(key.config(), &config);

    let protection = key.protection().expect("attributes");
    assert_eq!(
        protection,
        KeyProtection {
            sensitive: true,
            extractable: false,
            always_sensitive: true,
            never_extractable: true,
            private: true,
        }
    );

    let public = VerifyingKey::from(key.public_key());
    for message in [&b"one"[..], b"two", b""] {
        let digest = digest(message);
        let signature = key.sign_digest(&digest).expect("sign");
        assert_eq!(signature.normalize_s(), signature, "low s");
        public
            .verify_prehash(&digest, &signature)
            .expect("verifies under public_key()");
    }

    // A second handle on the same key, as `open` finds it.
    let opened = Pkcs11CentralKey::open(&config, &pin()).expect("open");
    assert_eq!(opened.public_key(), key.public_key());
    let signature = opened.sign_digest(&digest(b"x")).expect("sign");
    public
        .verify_prehash(&digest(b"x"), &signature)
        .expect("verifies");

    let err = Pkcs11CentralKey::generate(&config, &pin()).expect_err("label taken");
    assert!(matches!(err, HsmError::KeyExists { .. }), "{err:?}");

    let err = Pkcs11CentralKey::open(&self::config("no such key"), &pin()).expect_err("missing");
    assert!(matches!(err, HsmError::KeyNotFound { .. }), "{err:?}");

    let mut other_token = config.clone();
    other_token.token = "no such token".to_owned();
    let err = Pkcs11CentralKey::open(&other_token, &pin()).expect_err("no token");
    assert!(matches!(err, HsmError::TokenNotFound(_)), "{err:?}");

    // Signing from several threads through the shared session.
    std::thread::scope(|scope| {
        for n in 0u8..4 {
            let key = &key;
            let public = &public;
            scope.spawn(move || {
                let digest = digest(&[n]);
                let signature = key.sign_digest(&digest).expect("sign");
                public.verify_prehash(&digest, &signature).expect("verify");
            });
        }
    });
}

#[test]
fn wrong_pin_is_refused() {
    run_child("hsm::tests::child_wrong_pin_is_refused");
}

#[test]
#[ignore = "runs as a child of wrong_pin_is_refused"]
fn child_wrong_pin_is_refused() {
    // First login of this process: the token checks the PIN.
    let wrong = Pin::new(b"not-the-pin".to_vec()).expect("pin");
    let err = Pkcs11CentralKey::generate(&config(DEFAULT_KEY_LABEL), &wrong).expect_err("wrong");
    assert!(matches!(err, HsmError::PinIncorrect), "{err:?}");
    assert_eq!(err.to_string(), "the token rejected the user PIN");
    assert!(!format!("{err:?}").contains("not-the-pin"));
    // Nothing was made.
    Pkcs11CentralKey::generate(&config(DEFAULT_KEY_LABEL), &pin()).expect("right PIN");
}

#[test]
fn central_authority_in_a_token() {
    run_child("hsm::tests::child_central_authority_in_a_token");
}

#[test]
#[ignore = "runs as a child of central_authority_in_a_token"]
fn child_central_authority_in_a_token() {
    let dir = child_dir().join("central");
    let config = config("central C");
    let created =
        CentralAuthority::init_pkcs11(&dir, "HSM central", 5, &config, &pin()).expect("init");
    assert!(matches!(created.key, CentralKey::Pkcs11(_)));
    assert!(!dir.join(KEY_FILE).exists());
    let text = std::fs::read_to_string(dir.join(KEY_CONFIG_FILE)).expect("description");
    assert!(!text.contains(USER_PIN), "{text}");
    assert_eq!(
        toml::from_str::<Pkcs11KeyConfig>(&text).expect("parses"),
        config
    );

    let err = CentralAuthority::init_pkcs11(&dir, "again", 5, &config, &pin()).expect_err("twice");
    assert!(
        matches!(err, CentralError::AlreadyInitialized(_)),
        "{err:?}"
    );
    let err = CentralAuthority::init(&dir, "file", 5).expect_err("file over token");
    assert!(
        matches!(err, CentralError::AlreadyInitialized(_)),
        "{err:?}"
    );

    let opened = CentralAuthority::open_with_pin(&dir, Some(&pin())).expect("open");
    assert_eq!(opened.cert.der(), created.cert.der());
    assert_eq!(opened.public_key(), created.public_key());

    let digest = digest(b"central");
    let signature = opened.sign_digest(&digest).expect("sign");
    VerifyingKey::from(opened.public_key())
        .verify_prehash(&digest, &signature)
        .expect("verifies under public_key()");

    let unit_key = keyfile::generate_signing_key().expect("key");
    let csr = CertificateRequest::new("Unit", &unit_key).expect("csr");
    let unit = opened.certify_personalizer(&csr, 2).expect("certify");
    assert_eq!(unit.role(), Role::Personalizer);
    verify_issued_by(&unit, &opened.cert, 0).expect("chains to the root");

    // Without a PIN in the environment, `open` says so.
    let err = CentralAuthority::open(&dir).expect_err("no PIN");
    assert!(
        matches!(err, CentralError::Hsm(HsmError::PinMissing)),
        "{err:?}"
    );

    // A key file beside the description is ambiguous.
    std::fs::write(dir.join(KEY_FILE), "stray").expect("write");
    let err = CentralAuthority::open_with_pin(&dir, Some(&pin())).expect_err("both");
    assert!(matches!(err, CentralError::AmbiguousKey(_)), "{err:?}");
}

#[test]
fn ec_point_is_decoded_strictly() {
    let key = keyfile::generate_signing_key().expect("key");
    let point = key.verifying_key().to_sec1_point(false).as_bytes().to_vec();
    let mut der = vec![0x04, 0x61];
    der.extend_from_slice(&point);
    let public = decode_ec_point(&der).expect("decodes");
    assert_eq!(VerifyingKey::from(public), *key.verifying_key());

    // A bare point, a BER long length, trailing bytes, a compressed point.
    assert!(decode_ec_point(&point).is_err());
    let mut long = vec![0x04, 0x81, 0x61];
    long.extend_from_slice(&point);
    assert!(decode_ec_point(&long).is_err());
    let mut trailing = der.clone();
    trailing.push(0);
    assert!(decode_ec_point(&trailing).is_err());
    let compressed = key.verifying_key().to_sec1_point(true).as_bytes().to_vec();
    let mut short = vec![0x04, u8::try_from(compressed.len()).expect("len")];
    short.extend_from_slice(&compressed);
    assert!(matches!(
        decode_ec_point(&short),
        Err(HsmError::BadPublicKey)
    ));
}

#[test]
fn pins_are_read_and_hidden() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("pin");
    std::fs::write(&path, "1234\r\n").expect("write");
    let pin = Pin::from_file(&path).expect("pin");
    assert_eq!(pin.0.as_slice(), b"1234");
    assert_eq!(format!("{pin:?}"), "Pin(..)");
    std::fs::write(&path, "\n").expect("write");
    assert!(matches!(Pin::from_file(&path), Err(HsmError::PinEmpty)));
    assert!(matches!(
        Pin::from_file(&tmp.path().join("missing")),
        Err(HsmError::PinFile { .. })
    ));
    assert!(matches!(Pin::new(Vec::new()), Err(HsmError::PinEmpty)));
}

#[test]
fn key_labels_are_checked() {
    assert!(check_key_label(DEFAULT_KEY_LABEL).is_ok());
    assert!(check_key_label("").is_err());
    assert!(check_key_label("a\nb").is_err());
    assert!(check_key_label(&"x".repeat(MAX_KEY_LABEL_LEN + 1)).is_err());
}

#[test]
fn key_description_is_strict() {
    let config = Pkcs11KeyConfig {
        module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        token: "token \"quoted\"".to_owned(),
        key_label: DEFAULT_KEY_LABEL.to_owned(),
    };
    let text = toml::to_string(&config).expect("encode");
    assert_eq!(
        toml::from_str::<Pkcs11KeyConfig>(&text).expect("decode"),
        config
    );
    let extra = format!("{text}pin = \"1234\"\n");
    assert!(toml::from_str::<Pkcs11KeyConfig>(&extra).is_err());
}

#[test]
fn open_reports_a_bad_description_and_both_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join(KEY_CONFIG_FILE), "module = 1\n").expect("write");
    let err = CentralAuthority::open(tmp.path()).expect_err("bad");
    assert!(matches!(err, CentralError::BadKeyConfig { .. }), "{err:?}");
    std::fs::write(tmp.path().join(KEY_FILE), "x").expect("write");
    let err = CentralAuthority::open(tmp.path()).expect_err("both");
    assert!(matches!(err, CentralError::AmbiguousKey(_)), "{err:?}");
    assert!(err.to_string().contains("holds both"), "{err}");
}

#[test]
fn the_key_is_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Pkcs11CentralKey>();
    send_sync::<CentralAuthority>();
}
