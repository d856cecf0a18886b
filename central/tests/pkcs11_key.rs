//! `imprint-central` with the central key in a SoftHSM token: `init --pkcs11`,
//! `show`, `certify-personalizer` (checked with `openssl verify`), a wrong
//! or missing PIN, and the key object's protection attributes.
//!
//! Each test makes its own token in a temporary directory with
//! `softhsm-config/create-token.sh` and points `SOFTHSM2_CONF` at it in the
//! processes it starts. Without SoftHSM (or openssl) a test skips loudly; it
//! fails instead under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imprint_apdu::pki::issue::{CertificateRequest, from_pem};
use imprint_apdu::pki::{Role, verify_issued_by};
use imprint_central::hsm::{self, KeyProtection, Pin};
use imprint_central::keyfile::generate_signing_key;
use imprint_central::{CentralAuthority, CentralKey};
use p384::ecdsa::VerifyingKey;
use p384::ecdsa::signature::hazmat::PrehashVerifier;

const TOKEN_LABEL: &str = "imprint central";
const SO_PIN: &str = "so-pin-0000";
const USER_PIN: &str = "central-user-pin";
const KEY_LABEL: &str = "test central key";

/// Set in a child: the central directory to open.
const DIR_ENV: &str = "IMPRINT_CENTRAL_TEST_DIR";

const LIBRARY_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// SoftHSM's library (`IMPRINT_SOFTHSM_LIB` overrides), or `None` (skip) when
/// SoftHSM is not installed; fails under `CI=true`.
fn softhsm() -> Option<PathBuf> {
    let library = std::env::var_os("IMPRINT_SOFTHSM_LIB")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            LIBRARY_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|path| path.is_file())
        })
        .filter(|path| path.is_file());
    let util = Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if library.is_none() || !util {
        assert!(!ci(), "softhsm2 is not installed; CI=true");
        eprintln!("SKIPPED: softhsm2 is not installed (Debian: softhsm2)");
        return None;
    }
    library
}

fn have_openssl() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(!ci(), "openssl is not installed; CI=true");
        eprintln!("SKIPPED: openssl is not installed (Debian: openssl)");
    }
    found
}

/// A temporary directory with a fresh token: `tmp/token/softhsm2.conf`.
struct Token {
    tmp: tempfile::TempDir,
    library: PathBuf,
}

impl Token {
    fn new() -> Option<Self> {
        let library = softhsm()?;
        let tmp = tempfile::tempdir().expect("tempdir");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-config/create-token.sh");
        let created = Command::new("bash")
            .arg(&script)
            .arg(tmp.path().join("token"))
            .args([TOKEN_LABEL, SO_PIN, USER_PIN])
            .output()
            .expect("run create-token.sh");
        assert!(
            created.status.success(),
            "create-token.sh failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        Some(Self { tmp, library })
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn conf(&self) -> PathBuf {
        self.path().join("token/softhsm2.conf")
    }

    /// `imprint-central` in the temporary directory, on this token, with no PIN.
    fn central(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_imprint-central"));
        command
            .current_dir(self.path())
            .env("SOFTHSM2_CONF", self.conf())
            .env_remove(hsm::PIN_ENV)
            .env_remove(hsm::PIN_FILE_ENV);
        command
    }

    /// `init --pkcs11` of `dir` with the PIN from a file.
    fn init(&self, dir: &str) -> Command {
        let pin_file = self.path().join("user.pin");
        std::fs::write(&pin_file, format!("{USER_PIN}\n")).expect("pin file");
        let mut command = self.central();
        command
            .args(["init", "--dir", dir, "--name", "HSM central", "--pkcs11"])
            .arg(&self.library)
            .args([
                "--token",
                TOKEN_LABEL,
                "--key-label",
                KEY_LABEL,
                "--pin-file",
            ])
            .arg(&pin_file);
        command
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> Output {
    command.output().expect("spawn")
}

fn ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn fails(command: &mut Command) -> String {
    let output = run(command);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{command:?}: {}",
        text(&output.stdout)
    );
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn init_show_certify_with_the_key_in_softhsm() {
    let Some(token) = Token::new() else { return };
    let dir = token.path();

    let out = ok(&mut token.init("C"));
    assert!(out.contains("subject:     CN=HSM central"), "{out}");
    assert!(out.contains(TOKEN_LABEL), "{out}");
    assert!(!out.contains(USER_PIN), "{out}");
    assert!(!dir.join("C/central.key").exists());
    let description = std::fs::read_to_string(dir.join("C/central-key.toml")).expect("toml");
    assert!(description.contains(KEY_LABEL), "{description}");
    assert!(!description.contains(USER_PIN), "{description}");

    let show = ok(token
        .central()
        .env(hsm::PIN_ENV, USER_PIN)
        .args(["show", "--dir", "C"]));
    assert!(show.contains("CN=HSM central"), "{show}");
    assert!(show.contains("fingerprint: SHA-384 "), "{show}");

    let unit_key = generate_signing_key().expect("key");
    let csr = CertificateRequest::new("HSM unit", &unit_key).expect("csr");
    std::fs::write(dir.join("unit.csr"), csr.to_pem().expect("pem")).expect("write csr");
    ok(token.central().env(hsm::PIN_ENV, USER_PIN).args([
        "certify-personalizer",
        "--dir",
        "C",
        "--csr",
        "unit.csr",
        "--out",
        "by-central.pem",
        "--years",
        "2",
    ]));
    let root = from_pem(&std::fs::read_to_string(dir.join("C/central.pem")).expect("root"))
        .expect("root parses");
    let unit = from_pem(&std::fs::read_to_string(dir.join("by-central.pem")).expect("cert"))
        .expect("unit parses");
    assert_eq!(unit.role(), Role::Personalizer);
    verify_issued_by(&unit, &root, 0).expect("chains to central.pem");

    if have_openssl() {
        let verified = ok(Command::new("openssl").current_dir(dir).args([
            "verify",
            "-CAfile",
            "C/central.pem",
            "by-central.pem",
        ]));
        assert!(verified.contains("by-central.pem: OK"), "{verified}");
    }

    // The PIN file may also come from the environment.
    let pin_file = dir.join("env.pin");
    std::fs::write(&pin_file, USER_PIN).expect("pin file");
    ok(token
        .central()
        .env(hsm::PIN_FILE_ENV, &pin_file)
        .args(["show", "--dir", "C"]));

    // The key object in the token, through the library in a child process.
    run_child(&token, "C", "child_key_object_is_protected_and_signs");
}

#[test]
fn wrong_or_missing_pin_and_refusals() {
    let Some(token) = Token::new() else { return };
    let dir = token.path();
    ok(&mut token.init("C"));

    let stderr = fails(
        token
            .central()
            .env(hsm::PIN_ENV, "wrong-pin-1234")
            .args(["show", "--dir", "C"]),
    );
    assert!(
        stderr.contains("the token rejected the user PIN"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-pin-1234"), "{stderr}");

    let stderr = fails(token.central().args(["show", "--dir", "C"]));
    assert!(stderr.contains("no user PIN"), "{stderr}");
    assert!(stderr.contains(hsm::PIN_ENV), "{stderr}");

    // The directory is taken.
    let stderr = fails(&mut token.init("C"));
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");

    // The token already holds a key with the label: another directory may not take it over.
    let stderr = fails(&mut token.init("D"));
    assert!(stderr.contains("already holds a key labelled"), "{stderr}");
    assert!(!dir.join("D/central-key.toml").exists());

    // A wrong token label.
    let stderr = fails(
        token
            .central()
            .env(hsm::PIN_ENV, USER_PIN)
            .args(["init", "--dir", "E", "--pkcs11"])
            .arg(&token.library)
            .args(["--token", "no such token"]),
    );
    assert!(
        stderr.contains("no initialized token labelled \"no such token\""),
        "{stderr}"
    );

    // --token without --pkcs11 is a usage error.
    let output = run(token.central().args(["init", "--dir", "F", "--token", "x"]));
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));

    // Both a key file and a key description: refused precisely.
    std::fs::write(dir.join("C/central.key"), "stray").expect("write");
    let stderr = fails(
        token
            .central()
            .env(hsm::PIN_ENV, USER_PIN)
            .args(["show", "--dir", "C"]),
    );
    assert!(
        stderr.contains("holds both central.key and central-key.toml"),
        "{stderr}"
    );
}

/// Runs the ignored test `child` of this executable with `SOFTHSM2_CONF` for
/// `token` and [`DIR_ENV`] naming `dir` inside it.
fn run_child(token: &Token, dir: &str, child: &str) {
    let output = Command::new(std::env::current_exe().expect("test executable"))
        .args([
            child,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOFTHSM2_CONF", token.conf())
        .env(DIR_ENV, token.path().join(dir))
        .env_remove(hsm::PIN_ENV)
        .env_remove(hsm::PIN_FILE_ENV)
        .output()
        .expect("running the child test");
    let stdout = text(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child test {child} failed ({}):\n{stdout}\n{}",
        output.status,
        text(&output.stderr)
    );
}

#[test]
#[ignore = "runs as a child of init_show_certify_with_the_key_in_softhsm"]
fn child_key_object_is_protected_and_signs() {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("set by the parent test"));
    let pin = Pin::new(USER_PIN.as_bytes().to_vec()).expect("pin");
    let central = CentralAuthority::open_with_pin(&dir, Some(&pin)).expect("open");
    let CentralKey::Pkcs11(key) = &central.key else {
        panic!("the key is not in the token: {:?}", central.key);
    };
    assert_eq!(key.config().key_label, KEY_LABEL);
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
    let digest = [0x5a; 48];
    let signature = central.sign_digest(&digest).expect("sign");
    VerifyingKey::from(central.public_key())
        .verify_prehash(&digest, &signature)
        .expect("verifies under public_key()");
    assert_eq!(
        central.cert.public_key_sec1(),
        imprint_apdu::channel::encode_point(&central.public_key())
    );
}
