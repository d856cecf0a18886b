//! The `imprint-central` binary: init, show, certify-personalizer, the
//! registry commands (revoke, modules, transactions) and their failure paths.

use std::path::Path;
use std::process::{Command, Output};

use imprint_apdu::pki::issue::{self, CertificateRequest, IssuerKey, Validity, from_pem};
use imprint_apdu::pki::{Certificate, Role, verify_issued_by};
use imprint_central::keyfile::generate_signing_key;
use imprint_central::registry::Registry;

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

fn certify_unit(dir: &Path, name: &str) -> (p384::ecdsa::SigningKey, Certificate, String) {
    let unit_key = generate_signing_key().expect("key");
    let csr = CertificateRequest::new(name, &unit_key).expect("csr");
    std::fs::write(dir.join("unit.csr"), csr.to_pem().expect("pem")).expect("write csr");
    let out = ok(central(dir).args([
        "certify-personalizer",
        "--dir",
        "C",
        "--csr",
        "unit.csr",
        "--out",
        "unit.pem",
    ]));
    let unit =
        from_pem(&std::fs::read_to_string(dir.join("unit.pem")).expect("unit")).expect("unit");
    let fingerprint = imprint_central::display::fingerprint(&unit);
    assert!(
        out.contains(&format!("fingerprint: SHA-384 {fingerprint}")),
        "{out}"
    );
    (unit_key, unit, fingerprint)
}

/// A module certificate issued by the unit, as a module would present it.
fn module_cert(
    unit_key: &p384::ecdsa::SigningKey,
    unit: &Certificate,
    serial: &str,
) -> Certificate {
    let module_key = generate_signing_key().expect("module key");
    let point =
        imprint_apdu::channel::encode_point(&p384::PublicKey::from(module_key.verifying_key()));
    let validity = Validity::new(unit.not_before_unix(), unit.not_after_unix()).expect("validity");
    issue::module_cert(
        IssuerKey {
            cert: unit,
            key: unit_key,
        },
        serial,
        &point,
        &[1; imprint_apdu::pki::NONCE_LEN],
        validity,
    )
    .expect("module cert")
}

#[test]
fn empty_registry_lists() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let stderr = fails(central(dir).args(["modules", "--dir", "C"]));
    assert!(
        stderr.contains("not a central system directory"),
        "{stderr}"
    );
    assert!(!dir.join("C").exists());

    ok(central(dir).args(["init", "--dir", "C"]));
    let modules = ok(central(dir).args(["modules", "--dir", "C"]));
    let lines: Vec<&str> = modules.lines().collect();
    assert_eq!(lines.len(), 1, "{modules}");
    assert!(lines[0].starts_with("SERIAL"), "{modules}");
    assert!(lines[0].contains("TRANSACTIONS"), "{modules}");

    let journal = ok(central(dir).args(["transactions", "--dir", "C"]));
    let lines: Vec<&str> = journal.lines().collect();
    assert_eq!(lines.len(), 1, "{journal}");
    assert!(lines[0].starts_with("NUMBER"), "{journal}");
}

#[test]
fn certify_records_the_unit_and_revoke_revokes() {
    const SERIAL: &str = "0011223344556677";
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    ok(central(dir).args(["init", "--dir", "C"]));
    let (unit_key, unit, fingerprint) = certify_unit(dir, "Unit 1");

    let registry_dir = dir.join("C");
    let mut registry = Registry::open(&registry_dir).expect("registry");
    registry
        .check_module(&unit, SERIAL)
        .expect("the unit was recorded");
    registry
        .module_seen(&module_cert(&unit_key, &unit, SERIAL), &unit, 1_800_000_000)
        .expect("module seen");

    let modules = ok(central(dir).args(["modules", "--dir", "C"]));
    let row = modules.lines().nth(1).expect("a row");
    assert!(row.starts_with(SERIAL), "{modules}");
    assert!(row.contains("active"), "{modules}");
    assert!(row.contains(&fingerprint[..16]), "{modules}");
    assert!(row.contains("2027-01-15T08:00:00Z"), "{modules}");
    assert!(row.contains("none"), "{modules}");

    let out = ok(central(dir).args([
        "revoke",
        "--dir",
        "C",
        "--module",
        &SERIAL.to_ascii_uppercase(),
    ]));
    assert!(out.contains(&format!("revoked module {SERIAL}")), "{out}");
    assert_eq!(
        registry
            .check_module(&unit, SERIAL)
            .expect_err("revoked")
            .to_string(),
        "the module is revoked"
    );
    let modules = ok(central(dir).args(["modules", "--dir", "C"]));
    assert!(modules.contains("revoked"), "{modules}");

    let stderr = fails(central(dir).args(["revoke", "--dir", "C", "--module", "ffffffffffffffff"]));
    assert!(
        stderr.contains("no such module: ffffffffffffffff"),
        "{stderr}"
    );

    // The fingerprint as an operator may paste it: uppercase, with colons.
    let pasted = unit
        .fingerprint()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let out = ok(central(dir).args(["revoke", "--dir", "C", "--personalizer", &pasted]));
    assert!(out.contains("revoked personalization unit"), "{out}");
    assert_eq!(
        registry
            .check_module(&unit, "8899aabbccddeeff")
            .expect_err("revoked")
            .to_string(),
        "the personalization unit is revoked"
    );

    let unknown = "ab".repeat(48);
    let stderr = fails(central(dir).args(["revoke", "--dir", "C", "--personalizer", &unknown]));
    assert!(stderr.contains("no such personalization unit"), "{stderr}");
    let stderr = fails(central(dir).args(["revoke", "--dir", "C", "--personalizer", "12:34"]));
    assert!(stderr.contains("not a SHA-384 fingerprint"), "{stderr}");

    // Exactly one of --module and --personalizer.
    let usage = run(central(dir).args(["revoke", "--dir", "C"]));
    assert_eq!(usage.status.code(), Some(2));
    let usage = run(central(dir).args([
        "revoke",
        "--dir",
        "C",
        "--module",
        SERIAL,
        "--personalizer",
        &fingerprint,
    ]));
    assert_eq!(usage.status.code(), Some(2));

    let journal = ok(central(dir).args(["transactions", "--dir", "C"]));
    assert_eq!(journal.lines().count(), 1, "{journal}");
}
