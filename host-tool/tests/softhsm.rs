//! A module over a real SoftHSM token, end to end through the command lines:
//! `imprint manufacturer manufacture --module softhsm:LABEL`, `imprint
//! personalize … --module softhsm:LABEL --pin-file`, `imprint module
//! export-chain`, then `libimprint_pkcs11.so` with a configuration of kind
//! `softhsm` under OpenSC's `pkcs11-tool` (listing, objects, a signature
//! verified by `openssl` against the exported module certificate, the
//! self-test logged in), and a reset and re-personalization that replace the
//! key.
//!
//! Every program is a process of its own with `SOFTHSM2_CONF` naming the
//! test's token directory (made by `softhsm-config/create-token.sh`): SoftHSM
//! reads that variable once per process. Without SoftHSM, OpenSC or OpenSSL the
//! test is skipped, except under `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const TOKEN_LABEL: &str = "imprint cli token";
const SO_PIN: &str = "so-pin-0000";
const SOFTHSM_PIN: &str = "softhsm-user-pin";
const MODULE_PIN: &str = "482916";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// Skips (returns `false`) when `program` is missing, or fails under CI.
fn have(program: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            !ci(),
            "`{program}` is not installed (Debian: {package}); CI=true"
        );
        eprintln!("SKIPPED: `{program}` is not installed (Debian: {package})");
    }
    found
}

fn softhsm_library_present() -> bool {
    let found = imprint_pkcs11::softhsm::find_library().is_some_and(|path| path.is_file());
    if !found {
        assert!(!ci(), "the SoftHSM library is not installed; CI=true");
        eprintln!("SKIPPED: softhsm2 not installed");
    }
    found
}

/// The provider built with this test: Cargo builds `imprint-pkcs11`'s cdylib
/// beside its rlib, in `target/<profile>/deps/`, where this test runs.
fn provider() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let library = exe
        .parent()
        .expect("target/<profile>/deps")
        .join("libimprint_pkcs11.so");
    assert!(library.exists(), "{} is missing", library.display());
    library
}

/// `imprint-central`, beside `imprint` or built once (as in `cli.rs`).
fn central_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let imprint = Path::new(env!("CARGO_BIN_EXE_imprint"));
        let path = imprint.with_file_name("imprint-central");
        if !path.exists() {
            let profile_dir = imprint.parent().expect("binary directory");
            let mut build =
                Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
            build.args(["build", "-p", "imprint-central", "--bin", "imprint-central"]);
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            if let Some(target_dir) = profile_dir.parent() {
                build.arg("--target-dir").arg(target_dir);
            }
            let status = build
                .status()
                .expect("running cargo to build imprint-central");
            assert!(status.success(), "building imprint-central failed");
        }
        path
    })
}

/// The test's directory and the environment every program gets.
struct Setup {
    dir: tempfile::TempDir,
    softhsm_conf: PathBuf,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(self.dir.path())
            .env("SOFTHSM2_CONF", &self.softhsm_conf)
            .env("IMPRINT_PKCS11_CONF", self.path("pkcs11.toml"))
            .env_remove("IMPRINT_SOFTHSM_PIN_FILE")
            .env_remove("IMPRINT_PKCS11_LOG");
        command
    }

    fn imprint(&self) -> Command {
        self.command(env!("CARGO_BIN_EXE_imprint"))
    }

    /// Runs `command`; fails unless it succeeds. Returns standard output.
    fn ok(&self, command: &mut Command) -> String {
        let output = command.output().expect("spawn");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{command:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn pkcs11_tool(&self, args: &[&str]) -> String {
        let provider = provider();
        let mut command = self.command("pkcs11-tool");
        command.arg("--module").arg(&provider).args(args);
        self.ok(&mut command)
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Roles M, C and P, and a fresh SoftHSM token with its PIN file.
fn set_up() -> Setup {
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
    let setup = Setup {
        softhsm_conf: token_dir.join("softhsm2.conf"),
        dir,
    };
    std::fs::write(setup.path("softhsm.pin"), format!("{SOFTHSM_PIN}\n")).expect("pin file");
    std::fs::write(setup.path("module.pin"), format!("{MODULE_PIN}\n")).expect("pin file");
    std::fs::write(
        setup.path("pkcs11.toml"),
        format!(
            "[[module]]\nkind = \"softhsm\"\ntoken_label = \"{TOKEN_LABEL}\"\npin_file = \"{}\"\n",
            setup.path("softhsm.pin").display()
        ),
    )
    .expect("configuration");

    setup.ok(setup.imprint().args(["manufacturer", "init", "--dir", "M"]));
    setup.ok(setup
        .command(central_path())
        .args(["init", "--dir", "C", "--name", "Test central"]));
    setup.ok(setup.imprint().args(["personalizer", "init", "--dir", "P"]));
    let csr = "P/personalizer.csr";
    setup.ok(setup.imprint().args([
        "manufacturer",
        "certify-personalizer",
        "--dir",
        "M",
        "--csr",
        csr,
        "--out",
        "by-m.pem",
    ]));
    setup.ok(setup.command(central_path()).args([
        "certify-personalizer",
        "--dir",
        "C",
        "--csr",
        csr,
        "--out",
        "by-c.pem",
    ]));
    setup.ok(setup.imprint().args([
        "personalizer",
        "install",
        "--dir",
        "P",
        "--manufacturer-cert",
        "M/manufacturer.pem",
        "--by-manufacturer",
        "by-m.pem",
        "--central-cert",
        "C/central.pem",
        "--by-central",
        "by-c.pem",
    ]));
    setup
}

/// The module certificate's public key (PEM), from `imprint module export-chain`.
fn exported_module_key(setup: &Setup, name: &str) -> PathBuf {
    let chain = setup.path(&format!("{name}.chain.pem"));
    setup.ok(setup
        .imprint()
        .args(["module", "export-chain", "--module"])
        .arg(format!("softhsm:{TOKEN_LABEL}"))
        .arg("--out")
        .arg(&chain)
        .env("IMPRINT_SOFTHSM_PIN_FILE", setup.path("softhsm.pin")));
    let public = setup.path(&format!("{name}.pub.pem"));
    // `openssl x509` reads the first certificate of the bundle: the module's.
    setup.ok(setup.command("openssl").args([
        "x509",
        "-in",
        text(&chain),
        "-pubkey",
        "-noout",
        "-out",
        text(&public),
    ]));
    public
}

/// Signs `data` with `pkcs11-tool` (logged in) and verifies with `openssl`
/// against `public`.
fn sign_and_verify(setup: &Setup, public: &Path, data: &Path) {
    let signature = setup.path("signature.der");
    setup.pkcs11_tool(&[
        "--login",
        "--pin",
        MODULE_PIN,
        "--sign",
        "-m",
        "ECDSA-SHA384",
        "--label",
        "module",
        "--signature-format",
        "openssl",
        "-i",
        text(data),
        "-o",
        text(&signature),
    ]);
    let verified = setup.ok(setup.command("openssl").args([
        "dgst",
        "-sha384",
        "-verify",
        text(public),
        "-signature",
        text(&signature),
        text(data),
    ]));
    assert!(verified.contains("Verified OK"), "{verified}");
}

#[test]
fn softhsm_module_through_the_cli_and_pkcs11_tool() {
    if !softhsm_library_present()
        || !have("softhsm2-util", "softhsm2")
        || !have("pkcs11-tool", "opensc")
        || !have("openssl", "openssl")
    {
        return;
    }
    let setup = set_up();
    let module = format!("softhsm:{TOKEN_LABEL}");

    // Without the SoftHSM PIN file the tool says what is missing.
    let output = setup
        .imprint()
        .args(["module", "status", "--module", &module])
        .output()
        .expect("spawn");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--softhsm-pin-file"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let manufactured = setup.ok(setup.imprint().args([
        "manufacturer",
        "manufacture",
        "--dir",
        "M",
        "--module",
        &module,
        "--softhsm-pin-file",
        "softhsm.pin",
    ]));
    let serial = manufactured
        .split_whitespace()
        .nth(1)
        .expect("module <serial> manufactured")
        .to_owned();
    assert_eq!(serial.len(), 16, "{manufactured}");

    // Before personalization: a token that is not initialized, no key.
    let slots = setup.pkcs11_tool(&["-L"]);
    assert!(slots.contains("Imprint SoftHSM module"), "{slots}");
    assert!(!slots.contains("token initialized"), "{slots}");

    setup.ok(setup
        .imprint()
        .args([
            "personalize",
            "--personalizer",
            "P",
            "--module",
            &module,
            "--pin-file",
            "module.pin",
        ])
        .env("IMPRINT_SOFTHSM_PIN_FILE", setup.path("softhsm.pin")));
    let status = setup.ok(setup
        .imprint()
        .args(["module", "status", "--module", &module])
        .env("IMPRINT_SOFTHSM_PIN_FILE", setup.path("softhsm.pin")));
    assert!(status.contains("OPERATING"), "{status}");

    let slots = setup.pkcs11_tool(&["-L"]);
    assert!(
        slots.contains(&format!("token label        : {serial}")),
        "{slots}"
    );
    assert!(slots.contains("token initialized"), "{slots}");
    assert!(slots.contains("login required"), "{slots}");

    let public_objects = setup.pkcs11_tool(&["-O"]);
    assert!(
        public_objects.contains("label:      central"),
        "{public_objects}"
    );
    assert!(
        !public_objects.contains("Private Key Object"),
        "{public_objects}"
    );
    let objects = setup.pkcs11_tool(&["--login", "--pin", MODULE_PIN, "-O"]);
    for needle in [
        "Private Key Object; EC",
        "Public Key Object; EC",
        "label:      module",
        "label:      identity",
        "label:      unit",
        "label:      central",
        "Usage:      sign",
        "Access:     sensitive, always sensitive, never extractable, local",
    ] {
        assert!(objects.contains(needle), "no {needle:?} in:\n{objects}");
    }

    let data = setup.path("data.txt");
    std::fs::write(&data, b"signed on a SoftHSM-backed module\n").expect("data");
    let first_key = exported_module_key(&setup, "first");
    sign_and_verify(&setup, &first_key, &data);

    let test = setup.pkcs11_tool(&["--test", "--login", "--pin", MODULE_PIN]);
    assert!(test.contains("No errors"), "{test}");

    // Reset: the module key is erased, the token is no longer initialized.
    setup.ok(setup
        .imprint()
        .args([
            "module",
            "reset",
            "--personalizer",
            "P",
            "--module",
            &module,
        ])
        .env("IMPRINT_SOFTHSM_PIN_FILE", setup.path("softhsm.pin")));
    let slots = setup.pkcs11_tool(&["-L"]);
    assert!(!slots.contains("token initialized"), "{slots}");
    let objects = setup.pkcs11_tool(&["-O"]);
    assert!(!objects.contains("Private Key Object"), "{objects}");
    assert!(!objects.contains("Public Key Object"), "{objects}");

    // Re-personalized: a new key, which signs; the old certificate no longer verifies.
    setup.ok(setup.imprint().args([
        "personalize",
        "--personalizer",
        "P",
        "--module",
        &module,
        "--pin-file",
        "module.pin",
        "--softhsm-pin-file",
        "softhsm.pin",
    ]));
    let second_key = exported_module_key(&setup, "second");
    assert_ne!(
        std::fs::read(&first_key).expect("first key"),
        std::fs::read(&second_key).expect("second key"),
        "re-personalization makes a new module key"
    );
    sign_and_verify(&setup, &second_key, &data);
}
