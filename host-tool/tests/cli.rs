//! The `imprint` and `imprint-central` binaries through the whole
//! step-by-step flow, and their failure paths.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use imprint_apdu::pki::issue::{certificates_from_pem_bundle, from_pem};
use imprint_apdu::pki::{Role, verify_issued_by};

fn imprint() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imprint"))
}

/// `imprint-central` sits beside `imprint` when both packages are built
/// (`cargo test -p imprint-host -p imprint-central`); otherwise it is built
/// here once.
fn central() -> Command {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
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
    });
    Command::new(path)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command` in `dir` and requires success.
fn ok(dir: &Path, command: &mut Command) -> String {
    let output = command.current_dir(dir).output().expect("spawn");
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Runs `command` in `dir` and requires failure with status 1 and an `error:` line.
fn fails(dir: &Path, command: &mut Command) -> Output {
    let output = command.current_dir(dir).output().expect("spawn");
    assert_eq!(
        output.status.code(),
        Some(1),
        "{command:?} should fail:\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).starts_with("error: "),
        "{}",
        text(&output.stderr)
    );
    output
}

/// Manufacturer M, central C, unit P certified by both and installed.
fn set_up_roles(dir: &Path) {
    ok(
        dir,
        imprint().args([
            "manufacturer",
            "init",
            "--dir",
            "M",
            "--name",
            "Test manufacturer",
        ]),
    );
    ok(
        dir,
        central().args(["init", "--dir", "C", "--name", "Test central"]),
    );
    let out = ok(
        dir,
        imprint().args(["personalizer", "init", "--dir", "P", "--name", "Test unit"]),
    );
    assert!(out.contains("personalizer.csr"), "{out}");
    certify_and_install(dir, "M", "P");
}

fn certify_and_install(dir: &Path, manufacturer: &str, unit: &str) {
    let csr = format!("{unit}/personalizer.csr");
    let by_m = format!("{unit}-by-m.pem");
    let by_c = format!("{unit}-by-c.pem");
    ok(
        dir,
        imprint().args([
            "manufacturer",
            "certify-personalizer",
            "--dir",
            manufacturer,
            "--csr",
            &csr,
            "--out",
            &by_m,
        ]),
    );
    ok(
        dir,
        central().args([
            "certify-personalizer",
            "--dir",
            "C",
            "--csr",
            &csr,
            "--out",
            &by_c,
        ]),
    );
    let root = format!("{manufacturer}/manufacturer.pem");
    ok(
        dir,
        imprint().args([
            "personalizer",
            "install",
            "--dir",
            unit,
            "--manufacturer-cert",
            &root,
            "--by-manufacturer",
            &by_m,
            "--central-cert",
            "C/central.pem",
            "--by-central",
            &by_c,
        ]),
    );
}

#[test]
fn step_by_step_flow() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    set_up_roles(dir);

    let out = manufacture_module(dir, "MOD");
    assert!(out.contains("manufactured (3 APDUs)"), "{out}");

    let out = ok(
        dir,
        imprint().args(["personalize", "--personalizer", "P", "--module", "MOD"]),
    );
    assert!(out.contains("APDUs:      5"), "{out}");
    assert!(out.contains("journal id: 1"), "{out}");

    let status = ok(dir, imprint().args(["module", "status", "--module", "MOD"]));
    assert!(status.contains("lifecycle:   OPERATING"), "{status}");
    assert!(status.contains("module certificate: present"), "{status}");
    assert!(status.contains("central anchor: present"), "{status}");
    assert!(status.contains("nonce:"), "{status}");

    ok(
        dir,
        imprint().args([
            "module",
            "export-chain",
            "--module",
            "MOD",
            "--out",
            "chain.pem",
        ]),
    );
    let chain = certificates_from_pem_bundle(
        &std::fs::read_to_string(dir.join("chain.pem")).expect("chain"),
    )
    .expect("parse chain");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].role(), Role::ModuleKey);
    assert_eq!(chain[1].role(), Role::Personalizer);
    let central_root = from_pem(&std::fs::read_to_string(dir.join("C/central.pem")).expect("root"))
        .expect("parse root");
    verify_issued_by(&chain[0], &chain[1], 0).expect("module under unit");
    verify_issued_by(&chain[1], &central_root, 1).expect("unit under central root");

    let out = ok(
        dir,
        imprint().args(["module", "reset", "--module", "MOD", "--personalizer", "P"]),
    );
    assert!(out.contains("PERSONALIZATION"), "{out}");
    let status = ok(dir, imprint().args(["module", "status", "--module", "MOD"]));
    assert!(status.contains("lifecycle:   PERSONALIZATION"), "{status}");
    assert!(status.contains("module certificate: absent"), "{status}");
    assert!(status.contains("identity certificate: present"), "{status}");

    let refused = fails(
        dir,
        imprint().args([
            "module",
            "export-chain",
            "--module",
            "MOD",
            "--out",
            "again.pem",
        ]),
    );
    assert!(
        text(&refused.stderr).contains("not OPERATING"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!dir.join("again.pem").exists());

    let out = ok(
        dir,
        imprint().args([
            "personalize",
            "--personalizer",
            "P",
            "--module",
            "MOD",
            "--variation",
            "00112233",
        ]),
    );
    assert!(out.contains("journal id: 2"), "{out}");
    let status = ok(dir, imprint().args(["module", "status", "--module", "MOD"]));
    assert!(status.contains("lifecycle:   OPERATING"), "{status}");

    let journal = ok(
        dir,
        imprint().args(["journal", "list", "--personalizer", "P"]),
    );
    assert!(journal.contains("2 entries, 2 installed"), "{journal}");
}

#[test]
fn a_unit_certified_by_another_manufacturer_is_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    set_up_roles(dir);
    ok(
        dir,
        imprint().args([
            "manufacturer",
            "init",
            "--dir",
            "M2",
            "--name",
            "Other manufacturer",
        ]),
    );
    ok(
        dir,
        imprint().args([
            "personalizer",
            "init",
            "--dir",
            "P2",
            "--name",
            "Rogue unit",
        ]),
    );
    certify_and_install(dir, "M2", "P2");
    manufacture_module(dir, "MOD");

    let output = fails(
        dir,
        imprint().args(["personalize", "--personalizer", "P2", "--module", "MOD"]),
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("module rejected the personalization unit"),
        "{stderr}"
    );

    // Nothing was issued, and the module still accepts its own manufacturer's unit.
    let journal = ok(
        dir,
        imprint().args(["journal", "list", "--personalizer", "P2"]),
    );
    assert!(journal.contains("0 entries"), "{journal}");
    ok(
        dir,
        imprint().args(["personalize", "--personalizer", "P", "--module", "MOD"]),
    );
}

#[test]
fn failures_are_clear_and_non_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();

    let output = fails(
        dir,
        imprint().args(["module", "status", "--module", "nowhere"]),
    );
    assert!(
        text(&output.stderr).contains("no module at"),
        "{}",
        text(&output.stderr)
    );

    let output = fails(
        dir,
        imprint().args(["personalize", "--personalizer", "P", "--module", "nowhere"]),
    );
    assert!(
        text(&output.stderr).contains("personalizer.key"),
        "{}",
        text(&output.stderr)
    );

    ok(dir, imprint().args(["personalizer", "init", "--dir", "P"]));
    let output = fails(dir, imprint().args(["personalizer", "init", "--dir", "P"]));
    assert!(
        text(&output.stderr).contains("already exists"),
        "{}",
        text(&output.stderr)
    );

    let output = fails(
        dir,
        imprint().args([
            "personalize",
            "--personalizer",
            "P",
            "--module",
            "m",
            "--variation",
            "xyz",
        ]),
    );
    assert!(
        text(&output.stderr).contains("not hex"),
        "{}",
        text(&output.stderr)
    );

    // Not installed yet: the missing certificate file is named.
    ok(dir, imprint().args(["manufacturer", "init", "--dir", "M"]));
    manufacture_module(dir, "MOD");
    let output = fails(
        dir,
        imprint().args(["personalize", "--personalizer", "P", "--module", "MOD"]),
    );
    assert!(
        text(&output.stderr).contains("by-manufacturer.pem"),
        "{}",
        text(&output.stderr)
    );

    // A second manufacture is refused: the identity key is permanent.
    let output = fails(
        dir,
        imprint().args([
            "manufacturer",
            "manufacture",
            "--dir",
            "M",
            "--module",
            "MOD",
        ]),
    );
    assert!(
        text(&output.stderr).contains("already manufactured"),
        "{}",
        text(&output.stderr)
    );

    let output = imprint()
        .current_dir(dir)
        .arg("personalize")
        .output()
        .expect("spawn");
    assert_eq!(output.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn demo_command_verifies_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let demo_dir = tmp.path().join("demo");
    let demo_arg = demo_dir.to_str().expect("utf-8 path");
    let out = ok(
        tmp.path(),
        imprint().args(["demo", "--modules", "2", "--dir", demo_arg]),
    );
    assert!(out.contains("all 2 modules verified"), "{out}");
    assert!(out.contains("APDUs of a first personalization: 5"), "{out}");
    assert!(out.contains("APDUs of a re-personalization:    6"), "{out}");
    // The same directory again: refused, not overwritten.
    fails(
        tmp.path(),
        imprint().args(["demo", "--modules", "1", "--dir", demo_arg]),
    );
}

#[test]
fn help_documents_every_command() {
    let help = ok(Path::new("."), imprint().arg("--help"));
    for command in [
        "demo",
        "manufacturer",
        "personalizer",
        "personalize",
        "module",
        "journal",
        "tan",
        "idunit",
        "bench",
    ] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
    let help = ok(Path::new("."), imprint().args(["module", "--help"]));
    for command in ["status", "reset", "export-chain"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}

/// The TANs `imprint tan issue` printed, in order.
fn printed_tans(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|line| line.strip_prefix("TAN ")?.split_once(": "))
        .map(|(_, tan)| tan.to_owned())
        .collect()
}

/// `imprint manufacturer manufacture --dir M --module MODULE` in `dir`;
/// returns its standard output.
fn manufacture_module(dir: &Path, module: &str) -> String {
    ok(
        dir,
        imprint().args([
            "manufacturer",
            "manufacture",
            "--dir",
            "M",
            "--module",
            module,
        ]),
    )
}

/// Runs `imprint personalize` with `tan` on stdin (`--tan`, not a terminal).
fn personalize_with_stdin_tan(dir: &Path, module: &str, tan: &str) -> Output {
    personalize_with_stdin_tan_and(dir, module, tan, &[])
}

/// [`personalize_with_stdin_tan`] with `extra` arguments.
fn personalize_with_stdin_tan_and(dir: &Path, module: &str, tan: &str, extra: &[&str]) -> Output {
    use std::io::Write;
    let mut child = imprint()
        .args([
            "personalize",
            "--personalizer",
            "P",
            "--module",
            module,
            "--tan",
            "--require-tan",
        ])
        .args(extra)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{tan}\n").as_bytes())
        .expect("write TAN");
    child.wait_with_output().expect("wait")
}

/// Claim 13 through the binary: `tan issue`, `personalize --tan`/`--tan-file`,
/// `--require-tan`, `tan list`, and every refusal leaving the journal as it was.
#[test]
fn tan_protected_personalization_through_the_cli() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    set_up_roles(dir);
    let out = manufacture_module(dir, "MOD");
    let serial = out
        .split_whitespace()
        .nth(1)
        .expect("serial in the manufacture output")
        .to_owned();

    // A unit that requires a TAN refuses without one.
    let output = fails(
        dir,
        imprint().args([
            "personalize",
            "--personalizer",
            "P",
            "--module",
            "MOD",
            "--require-tan",
        ]),
    );
    assert!(
        text(&output.stderr).contains("requires a TAN"),
        "{}",
        text(&output.stderr)
    );

    let out = ok(
        dir,
        imprint().args(["tan", "issue", "--personalizer", "P", "--module", &serial]),
    );
    let tans = printed_tans(&out);
    assert_eq!(tans.len(), 1, "{out}");
    assert_eq!(tans[0].len(), 10);
    assert!(tans[0].bytes().all(|b| b.is_ascii_digit()));
    let journal = std::fs::read(dir.join("P/journal.sqlite")).expect("journal");
    assert!(
        !journal.windows(10).any(|w| w == tans[0].as_bytes()),
        "the unit never stores a TAN"
    );

    // Wrong TAN typed at the host (stdin): refused, nothing issued.
    let output = personalize_with_stdin_tan(dir, "MOD", "0000000000");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("TAN refused: the TAN is wrong"),
        "{}",
        text(&output.stderr)
    );

    // The right TAN from a file: personalized with 7 APDUs.
    std::fs::write(dir.join("tan.txt"), format!("{}\n", tans[0])).expect("tan file");
    let out = ok(
        dir,
        imprint().args([
            "personalize",
            "--personalizer",
            "P",
            "--module",
            "MOD",
            "--tan-file",
            "tan.txt",
            "--require-tan",
        ]),
    );
    assert!(out.contains("APDUs:      7"), "{out}");
    assert!(out.contains("journal id: 1"), "{out}");

    // Reused: refused, the journal keeps its one entry.
    let output = personalize_with_stdin_tan(dir, "MOD", &tans[0]);
    assert!(
        text(&output.stderr).contains("already used"),
        "{}",
        text(&output.stderr)
    );
    // Expired and bound to another module: refused with what is wrong.
    let out = ok(
        dir,
        imprint().args(["tan", "issue", "--personalizer", "P", "--expires", "0s"]),
    );
    let expired = printed_tans(&out).remove(0);
    let output = personalize_with_stdin_tan(dir, "MOD", &expired);
    assert!(
        text(&output.stderr).contains("expired"),
        "{}",
        text(&output.stderr)
    );
    let out = ok(
        dir,
        imprint().args([
            "tan",
            "issue",
            "--personalizer",
            "P",
            "--module",
            "00112233445566FF",
        ]),
    );
    let foreign = printed_tans(&out).remove(0);
    let output = personalize_with_stdin_tan(dir, "MOD", &foreign);
    assert!(
        text(&output.stderr).contains("bound to module 00112233445566ff"),
        "{}",
        text(&output.stderr)
    );

    let list = ok(
        dir,
        imprint().args(["journal", "list", "--personalizer", "P"]),
    );
    assert!(list.contains("1 entries, 1 installed"), "{list}");
    let list = ok(dir, imprint().args(["tan", "list", "--personalizer", "P"]));
    assert!(list.contains("used"), "{list}");
    assert!(list.contains("expired"), "{list}");
    assert!(list.contains("open"), "{list}");
    assert!(list.contains("3 TANs"), "{list}");
    for tan in [&tans[0], &expired, &foreign] {
        assert!(
            !list.contains(tan.as_str()),
            "tan list shows a TAN:\n{list}"
        );
    }

    // Bad arguments are refused before anything happens.
    fails(
        dir,
        imprint().args(["tan", "issue", "--personalizer", "P", "--module", "xyz"]),
    );
    let out = ok(
        dir,
        imprint().args(["tan", "unlock", "--personalizer", "P", "--module", &serial]),
    );
    assert!(out.contains("failed TAN tries cleared"), "{out}");
}

/// `--tan-at-host` only goes with `--tan`; with it (and on a module without
/// a reader, so without a PIN pad, at all) the TAN is typed at the host as
/// before, and nothing mentions a pad.
#[test]
fn tan_at_host_goes_with_tan_and_types_the_tan_at_the_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    set_up_roles(dir);
    manufacture_module(dir, "MOD");
    let output = imprint()
        .args([
            "personalize",
            "--personalizer",
            "P",
            "--module",
            "MOD",
            "--tan-at-host",
        ])
        .current_dir(dir)
        .output()
        .expect("spawn");
    assert_eq!(output.status.code(), Some(2), "usage errors exit 2");
    assert!(
        text(&output.stderr).contains("required arguments were not provided:\n  --tan\n"),
        "{}",
        text(&output.stderr)
    );

    let out = ok(dir, imprint().args(["tan", "issue", "--personalizer", "P"]));
    let tan = printed_tans(&out).remove(0);
    let output = personalize_with_stdin_tan_and(dir, "MOD", &tan, &["--tan-at-host"]);
    let out = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(out.contains("APDUs:      7"), "{out}");
    assert!(!out.contains("PIN pad"), "{out}");
}

/// Claims 16–18 through the binary: `idunit issue`, `personalize
/// --require-identification` without and with `--idunit-module`, the value
/// used up, `idunit list`.
#[test]
fn identification_unit_through_the_cli() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    set_up_roles(dir);
    manufacture_module(dir, "MOD");
    let out = ok(
        dir,
        imprint().args([
            "idunit",
            "issue",
            "--personalizer",
            "P",
            "--dir",
            "ID",
            "--values",
            "1",
        ]),
    );
    assert!(out.contains("identification unit:"), "{out}");
    let id = out
        .lines()
        .find_map(|line| line.strip_prefix("identification unit: "))
        .expect("id line")
        .trim()
        .to_owned();
    assert_eq!(id.len(), 32, "{out}");

    let personalize = |extra: &[&str]| {
        let mut command = imprint();
        command.args([
            "personalize",
            "--personalizer",
            "P",
            "--module",
            "MOD",
            "--require-identification",
        ]);
        command.args(extra);
        command
    };
    let output = fails(dir, &mut personalize(&[]));
    assert!(
        text(&output.stderr).contains("requires an identification unit"),
        "{}",
        text(&output.stderr)
    );
    let out = ok(dir, &mut personalize(&["--idunit-module", "ID"]));
    assert!(out.contains("journal id:"), "{out}");
    let output = fails(dir, &mut personalize(&["--idunit-module", "ID"]));
    assert!(
        text(&output.stderr).contains("no identification values left"),
        "{}",
        text(&output.stderr)
    );
    let list = ok(
        dir,
        imprint().args(["idunit", "list", "--personalizer", "P"]),
    );
    assert!(list.contains(&format!("{id}  open 0  used 1")), "{list}");
    // A second issue into the same directory is refused.
    fails(
        dir,
        imprint().args(["idunit", "issue", "--personalizer", "P", "--dir", "ID"]),
    );
}
