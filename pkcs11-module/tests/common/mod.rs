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
