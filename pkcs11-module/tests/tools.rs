//! Third-party PKCS#11 consumers load `libimprint_pkcs11.so` over an
//! in-process `file` module: OpenSC's `pkcs11-tool` (listing, objects, a
//! signature that `openssl` verifies against the exported certificate),
//! GnuTLS's `p11tool`, NSS's `modutil`/`certutil` and OpenSSL's pkcs11 engine.
//! Each tool is a process of its own, configured through `IMPRINT_PKCS11_CONF`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imprint_tests::{
    Pki, RecordingJournal, file_module, manufacture_with, personalized, personalized_with_pin,
};

/// A personalized module directory and its configuration file.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    serial: String,
}

impl Setup {
    fn new(pin: Option<&[u8]>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new();
        let module = dir.path().join("module");
        let serial = {
            let mut link = file_module(&module);
            let report = manufacture_with(&mut link, &pki.manufacturer);
            match pin {
                None => personalized(&mut link, &pki.unit, &mut RecordingJournal::default()),
                Some(pin) => personalized_with_pin(&mut link, &pki.unit, pin),
            }
            .expect("personalize");
            report.serial
        };
        let config = dir.path().join("pkcs11.toml");
        std::fs::write(
            &config,
            common::file_modules_config(dir.path(), &["module"]),
        )
        .expect("config");
        Self {
            dir,
            config,
            serial,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `program` with the provider's configuration; fails unless it succeeds.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let output = self.output(program, args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn output(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .env("IMPRINT_PKCS11_CONF", &self.config)
            .env_remove("IMPRINT_PKCS11_LOG")
            .output()
            .unwrap_or_else(|err| panic!("running {program}: {err}"))
    }
}

fn library() -> String {
    common::library().display().to_string()
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn pkcs11_tool_lists_shows_objects_and_signs() {
    if !common::have("pkcs11-tool", "opensc") || !common::have("openssl", "openssl") {
        return;
    }
    let setup = Setup::new(None);
    let module = library();

    let slots = setup.run("pkcs11-tool", &["--module", &module, "-L"]);
    assert!(
        slots.contains(&format!("token label        : {}", setup.serial)),
        "{slots}"
    );
    assert!(slots.contains("token initialized"), "{slots}");

    let objects = setup.run("pkcs11-tool", &["--module", &module, "-O"]);
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
    std::fs::write(&data, b"signed through pkcs11-tool\n").expect("data");
    let signature = setup.path("signature.der");
    setup.run(
        "pkcs11-tool",
        &[
            "--module",
            &module,
            "--sign",
            "-m",
            "ECDSA-SHA384",
            "--label",
            "module",
            "--signature-format",
            "openssl",
            "-i",
            text(&data),
            "-o",
            text(&signature),
        ],
    );
    let cert = setup.path("module.der");
    setup.run(
        "pkcs11-tool",
        &[
            "--module",
            &module,
            "--read-object",
            "--type",
            "cert",
            "--label",
            "module",
            "-o",
            text(&cert),
        ],
    );
    let public = setup.path("module.pub.pem");
    setup.run(
        "openssl",
        &[
            "x509",
            "-inform",
            "der",
            "-in",
            text(&cert),
            "-pubkey",
            "-noout",
            "-out",
            text(&public),
        ],
    );
    let verified = setup.run(
        "openssl",
        &[
            "dgst",
            "-sha384",
            "-verify",
            text(&public),
            "-signature",
            text(&signature),
            text(&data),
        ],
    );
    assert!(verified.contains("Verified OK"), "{verified}");

    // pkcs11-tool's self-test passes: it reports what is not offered.
    let test = setup.run("pkcs11-tool", &["--module", &module, "--test"]);
    assert!(test.contains("No errors"), "{test}");
}

#[test]
fn pkcs11_tool_logs_in_with_the_user_pin() {
    if !common::have("pkcs11-tool", "opensc") {
        return;
    }
    let setup = Setup::new(Some(b"123456"));
    let module = library();
    let slots = setup.run("pkcs11-tool", &["--module", &module, "-L"]);
    assert!(slots.contains("login required"), "{slots}");
    let public = setup.run("pkcs11-tool", &["--module", &module, "-O"]);
    assert!(!public.contains("Private Key Object"), "{public}");
    let private = setup.run(
        "pkcs11-tool",
        &["--module", &module, "--login", "--pin", "123456", "-O"],
    );
    assert!(private.contains("Private Key Object; EC"), "{private}");
    let wrong = setup.output(
        "pkcs11-tool",
        &["--module", &module, "--login", "--pin", "654321", "-O"],
    );
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("CKR_PIN_INCORRECT"),
        "{wrong:?}"
    );
}

#[test]
fn gnutls_p11tool_lists_the_certificates() {
    if !common::have("p11tool", "gnutls-bin") {
        return;
    }
    let setup = Setup::new(None);
    let module = library();
    let tokens = setup.run("p11tool", &["--provider", &module, "--list-tokens"]);
    assert!(tokens.contains(&setup.serial), "{tokens}");
    let url = format!("pkcs11:token={}", setup.serial);
    let certs = setup.run(
        "p11tool",
        &["--provider", &module, "--list-all-certs", &url],
    );
    for label in ["module", "identity", "unit", "central"] {
        assert!(
            certs.contains(&format!("object={label}")),
            "no {label} in:\n{certs}"
        );
    }
}

#[test]
fn nss_certutil_lists_the_certificates() {
    if !common::have("modutil", "libnss3-tools") {
        return;
    }
    let setup = Setup::new(None);
    let db = setup.path("nssdb");
    std::fs::create_dir(&db).expect("nss db dir");
    let db = format!("sql:{}", db.display());
    setup.run("certutil", &["-N", "-d", &db, "--empty-password"]);
    setup.run(
        "modutil",
        &[
            "-dbdir",
            &db,
            "-add",
            "imprint",
            "-libfile",
            &library(),
            "-force",
        ],
    );
    let listed = setup.run("modutil", &["-dbdir", &db, "-list", "imprint"]);
    assert!(listed.contains(&setup.serial), "{listed}");
    let certs = setup.run("certutil", &["-d", &db, "-L", "-h", &setup.serial]);
    assert!(
        certs.contains(&format!("{}:module", setup.serial)),
        "{certs}"
    );
}

#[test]
fn openssl_engine_signs_with_the_module_key() {
    if !common::have("openssl", "openssl") {
        return;
    }
    // Debian's libengine-pkcs11-openssl; the engine finds the provider
    // through PKCS11_MODULE_PATH.
    let engine_loads = Command::new("openssl")
        .args(["engine", "-t", "pkcs11"])
        .env("PKCS11_MODULE_PATH", library())
        .output()
        .is_ok_and(|output| output.status.success());
    if !engine_loads {
        assert!(
            !common::ci(),
            "OpenSSL's pkcs11 engine is not installed (Debian: libengine-pkcs11-openssl); CI=true"
        );
        eprintln!(
            "SKIPPED: OpenSSL's pkcs11 engine is not installed (Debian: libengine-pkcs11-openssl)"
        );
        return;
    }
    let setup = Setup::new(None);
    let data = setup.path("data.txt");
    std::fs::write(&data, b"signed through OpenSSL's pkcs11 engine\n").expect("data");
    let signature = setup.path("signature.der");
    let key = format!("pkcs11:token={};object=module;type=private", setup.serial);
    let output = Command::new("openssl")
        .args(["dgst", "-sha384", "-engine", "pkcs11", "-keyform", "engine"])
        .args(["-sign", &key, "-out", text(&signature), text(&data)])
        .env("PKCS11_MODULE_PATH", library())
        .env("IMPRINT_PKCS11_CONF", &setup.config)
        .output()
        .expect("openssl");
    assert!(output.status.success(), "{output:?}");

    // Verify with the module certificate as the module itself reports it.
    let mut link = file_module(&setup.path("module"));
    let status = imprint_apdu::host::status::read_status(&mut link).expect("status");
    drop(link);
    let der = setup.path("module.der");
    std::fs::write(&der, status.module_cert.expect("module certificate").der()).expect("der");
    let public = setup.path("module.pub.pem");
    setup.run(
        "openssl",
        &[
            "x509",
            "-inform",
            "der",
            "-in",
            text(&der),
            "-pubkey",
            "-noout",
            "-out",
            text(&public),
        ],
    );
    let verified = setup.run(
        "openssl",
        &[
            "dgst",
            "-sha384",
            "-verify",
            text(&public),
            "-signature",
            text(&signature),
            text(&data),
        ],
    );
    assert!(verified.contains("Verified OK"), "{verified}");
}
