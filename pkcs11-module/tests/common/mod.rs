//! Shared by the suites that load `libimprint_pkcs11.so` itself.
//!
//! A loaded provider is one global state per process, configured from the
//! environment at `C_Initialize`. So each scenario runs in a child process:
//! the parent test writes a configuration naming module directories in a
//! fresh temporary directory and runs one `#[ignore]`d child test of the same
//! executable with `IMPRINT_PKCS11_CONF` and [`MODULES_ENV`] set; the child
//! makes the modules (it needs the deployment's keys to re-personalize them)
//! and then loads the library.
//!
//! ```text
//!  parent test ─▶ tempdir/pkcs11.toml ─▶ <this test binary> child_xxx --exact --ignored
//!                                           └─ personalizes tempdir/<module>, loads the .so
//! ```

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable that gives the child the modules' parent directory.
pub const MODULES_ENV: &str = "IMPRINT_PKCS11_TEST_MODULES";

/// The provider built with this test. Cargo builds the crate's cdylib as a
/// dependency of its integration tests into `target/<profile>/deps/`, beside
/// the test executables; only a plain `cargo build` copies it up to
/// `target/<profile>/libimprint_pkcs11.so`, so that copy may be stale here.
pub fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("target/<profile>/deps/<test>");
    let library = deps.join("libimprint_pkcs11.so");
    assert!(
        library.exists(),
        "{} is missing: cargo builds the cdylib with the crate",
        library.display()
    );
    library
}

/// Whether CI asked for every test to run (a missing tool then fails).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// Skips (returns `false`) when `program` is missing, or fails under CI.
pub fn have(program: &str, package: &str) -> bool {
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

/// The configuration text for in-process `file` modules in `dir`.
pub fn file_modules_config(dir: &Path, modules: &[&str]) -> String {
    modules
        .iter()
        .map(|name| {
            format!(
                "[[module]]\nkind = \"file\"\npath = \"{}\"\n\n",
                dir.join(name).display()
            )
        })
        .collect()
}

/// Runs the `#[ignore]`d test `child` of this executable in a child
/// process, with a configuration of `file` modules named `modules` in a
/// fresh directory, and fails if it fails.
pub fn run_child(child: &str, modules: &[&str]) {
    run_child_with(child, |dir| file_modules_config(dir, modules));
}

/// Runs the `#[ignore]`d test `child` in a child process with the
/// configuration `config` makes for the fresh modules directory.
pub fn run_child_with(child: &str, config: impl FnOnce(&Path) -> String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(dir.path());
    let config = dir.path().join("pkcs11.toml");
    std::fs::write(&config, text).expect("config");
    let output = Command::new(std::env::current_exe().expect("test executable"))
        .args([
            child,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IMPRINT_PKCS11_CONF", &config)
        .env(MODULES_ENV, dir.path())
        .env_remove("IMPRINT_PKCS11_LOG")
        .output()
        .expect("running the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child test {child} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// In a child: the directory of module `name`.
pub fn module_dir(name: &str) -> PathBuf {
    let dir = std::env::var_os(MODULES_ENV)
        .expect("this test runs as a child of its parent test, which sets the environment");
    PathBuf::from(dir).join(name)
}

/// The vpcd reader these suites use (`IMPRINT_TEST_VPCD_READER`, default 1).
pub fn reader() -> imprint_tests::pcscd::Reader {
    imprint_tests::pcscd::Reader::for_tests()
}

/// The reader's PC/SC name.
pub fn reader_name() -> String {
    reader().name
}

/// Exclusive use of the reader among cooperating test processes.
pub fn lock_reader() -> std::fs::File {
    reader().lock()
}

/// Whether pcscd with the vpcd driver is there (started if root may);
/// `false`: skip (a failure under `CI=true`).
pub fn pcsc_stack() -> bool {
    imprint_tests::pcscd::pcsc_stack().is_some()
}

/// The applet over a module directory, as a card in [`reader`].
pub struct Card(imprint_tests::pcscd::ThreadCard);

impl Card {
    /// Inserts the module in `dir`.
    pub fn insert(dir: &Path) -> Self {
        Self(imprint_tests::pcscd::ThreadCard::insert(&reader(), dir))
    }

    /// Pulls the card.
    pub fn remove(self) {
        self.0.remove();
    }
}

/// The SoftHSM SO PIN of the tokens these suites create.
pub const SOFTHSM_SO_PIN: &str = "so-pin-0000";
/// The SoftHSM user PIN of the tokens these suites create (the provider's
/// credential for the token, not a module PIN).
pub const SOFTHSM_USER_PIN: &str = "softhsm-user-pin";
/// Set in a SoftHSM child: the file holding [`SOFTHSM_USER_PIN`].
pub const SOFTHSM_PIN_FILE_ENV: &str = "IMPRINT_PKCS11_TEST_SOFTHSM_PIN_FILE";

/// Creates a SoftHSM token labelled `label` with `softhsm-config/create-token.sh`
/// in a temporary directory, writes a `softhsm`-kind configuration for it, and
/// runs the `#[ignore]`d `child` test of this executable with
/// `IMPRINT_PKCS11_CONF`, `SOFTHSM2_CONF` and [`SOFTHSM_PIN_FILE_ENV`] set
/// (SoftHSM reads its configuration once per process). Without SoftHSM: skip
/// loudly, or fail under `CI=true`.
pub fn run_child_on_softhsm_token(child: &str, label: &str) {
    let installed = imprint_pkcs11::softhsm::find_library().is_some_and(|path| path.is_file())
        && Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
    if !installed {
        assert!(!ci(), "softhsm2 is not installed; CI=true");
        eprintln!("SKIPPED: softhsm2 not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let token_dir = dir.path().join("token");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-config/create-token.sh");
    let created = Command::new("bash")
        .arg(&script)
        .arg(&token_dir)
        .args([label, SOFTHSM_SO_PIN, SOFTHSM_USER_PIN])
        .output()
        .expect("run create-token.sh");
    assert!(
        created.status.success(),
        "create-token.sh failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let pin_file = dir.path().join("softhsm.pin");
    std::fs::write(&pin_file, format!("{SOFTHSM_USER_PIN}\n")).expect("pin file");
    let config = dir.path().join("pkcs11.toml");
    std::fs::write(
        &config,
        format!(
            "[[module]]\nkind = \"softhsm\"\ntoken_label = \"{label}\"\npin_file = \"{}\"\n",
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
        .env(SOFTHSM_PIN_FILE_ENV, &pin_file)
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
