//! The `imprint-central` binary: init, show, certify-personalizer and its
//! failure paths.

use std::path::Path;
use std::process::{Command, Output};

use imprint_apdu::pki::issue::{CertificateRequest, from_pem};
use imprint_apdu::pki::{Role, verify_issued_by};
use imprint_central::keyfile::generate_signing_key;

fn central(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imprint-central"));
    command.current_dir(dir);
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> Output {
    command.output().expect("spawn imprint-central")
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
fn init_show_certify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let out = ok(central(dir).args([
        "init",
        "--dir",
        "C",
        "--name",
        "Test central",
        "--years",
        "3",
    ]));
    assert!(out.contains("subject:     CN=Test central"), "{out}");

    let show = ok(central(dir).args(["show", "--dir", "C"]));
    assert!(show.contains("CN=Test central"), "{show}");
    assert!(show.contains("fingerprint: SHA-384 "), "{show}");
    assert!(show.contains("not after:"), "{show}");

    let stderr = fails(central(dir).args(["init", "--dir", "C"]));
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");

    let unit_key = generate_signing_key().expect("key");
    let csr = CertificateRequest::new("Test unit", &unit_key).expect("csr");
    std::fs::write(dir.join("unit.csr"), csr.to_pem().expect("pem")).expect("write csr");
    ok(central(dir).args([
        "certify-personalizer",
        "--dir",
        "C",
        "--csr",
        "unit.csr",
        "--out",
        "unit.pem",
        "--years",
        "2",
    ]));
    let root =
        from_pem(&std::fs::read_to_string(dir.join("C/central.pem")).expect("root")).expect("root");
    let unit =
        from_pem(&std::fs::read_to_string(dir.join("unit.pem")).expect("unit")).expect("unit");
    assert_eq!(unit.role(), Role::Personalizer);
    verify_issued_by(&unit, &root, 0).expect("issued by the central root");
}

#[test]
fn failures_are_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let stderr = fails(central(dir).args(["show", "--dir", "missing"]));
    assert!(stderr.contains("central.key"), "{stderr}");

    ok(central(dir).args(["init", "--dir", "C"]));
    std::fs::write(dir.join("bad.csr"), "not a request").expect("write");
    let stderr = fails(central(dir).args([
        "certify-personalizer",
        "--dir",
        "C",
        "--csr",
        "bad.csr",
        "--out",
        "x.pem",
    ]));
    assert!(
        stderr.contains("not a valid personalization unit certificate request"),
        "{stderr}"
    );
    assert!(!dir.join("x.pem").exists());

    let usage = run(central(dir).args(["init"]));
    assert_eq!(usage.status.code(), Some(2));
}
