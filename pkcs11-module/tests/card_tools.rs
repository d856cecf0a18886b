//! The card backend driven by third-party tools, and the module key's
//! protection on every backend.
//!
//! A personalized module with a user PIN is served as a virtual card in a
//! vpcd reader of the machine's `pcscd` (from a thread of the test process,
//! as in `pcsc.rs`), and the real OpenSC `pkcs11-tool` and GnuTLS `p11tool`
//! load `libimprint_pkcs11.so` with a `[card]` configuration: listing,
//! objects with and without login, a signature that `openssl` verifies
//! against the certificate read from the card, and `pkcs11-tool --test`.
//!
//! ```text
//!  pkcs11-tool / p11tool ─▶ libimprint_pkcs11.so ─PC/SC─▶ pcscd ─▶ vpcd ◀─TCP─ vpcd::serve(Applet) thread
//! ```
//!
//! Then, through the `cryptoki` crate in a child process (see `common`), on
//! the card, `file` and `softhsm` backends: the private key's `CKA_VALUE` is
//! never returned, the key is sensitive and never extractable, and it can be
//! neither weakened, copied nor wrapped.
//!
//! The reader is shared with the other PC/SC suites through the same lock
//! file per reader. Outside CI, a machine without a tool, pcscd, the vpcd
//! driver, SoftHSM or root to start pcscd skips.

mod common;
use common::Card;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::{self};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use imprint_apdu::Applet;
use imprint_apdu::host::{CardLink, InProcessTransport};
use imprint_pkcs11::softhsm::{SoftHsmKeyMemory, find_library};
use imprint_tests::{Pki, file_module, manufacture_with, personalized_with_pin};

const WAIT: Duration = Duration::from_secs(15);

/// The module's user PIN in every scenario.
const PIN: &str = "472911";

// ------------------------------------------------------------------ the PC/SC stack

fn card_config() -> String {
    format!("[card]\nreaders = [\"{}\"]\n", common::reader_name())
}

/// Manufactures and personalizes the module in `dir` with the user PIN;
/// returns its serial.
fn personalize_file_module(dir: &Path) -> String {
    let pki = Pki::new();
    let mut link = file_module(dir);
    let report = manufacture_with(&mut link, &pki.manufacturer);
    personalized_with_pin(&mut link, &pki.unit, PIN.as_bytes()).expect("personalize");
    report.serial
}

// ------------------------------------------------------------------ the tools

/// A personalized module with a PIN, in the reader as a card, and the
/// provider's configuration naming that reader.
struct CardSetup {
    dir: tempfile::TempDir,
    config: PathBuf,
    serial: String,
    library: String,
    card: Option<Card>,
    _reader: File,
}

impl CardSetup {
    /// `None`: skipped (no PC/SC stack).
    fn new() -> Option<Self> {
        if !common::pcsc_stack() {
            return None;
        }
        let reader = common::lock_reader();
        let dir = tempfile::tempdir().expect("temp dir");
        let module = dir.path().join("card");
        let serial = personalize_file_module(&module);
        let config = dir.path().join("pkcs11.toml");
        std::fs::write(&config, card_config()).expect("config");
        let library = common::library().display().to_string();
        let mut setup = Self {
            dir,
            config,
            serial,
            library,
            card: None,
            _reader: reader,
        };
        // A card another suite left may take a moment to go.
        setup.wait_for_token(false);
        setup.card = Some(Card::insert(&module));
        setup.wait_for_token(true);
        Some(setup)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Polls `pkcs11-tool -L` until the reader's slot shows our token, or none.
    fn wait_for_token(&self, present: bool) {
        let start = Instant::now();
        loop {
            let output = self.output("pkcs11-tool", &["--module", &self.library, "-L"]);
            let listed = String::from_utf8_lossy(&output.stdout);
            let shown = listed.contains(&format!("token label        : {}", self.serial));
            let any = listed.contains("token label");
            if (present && shown) || (!present && !any) {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "the token did not {} within {WAIT:?}:\n{listed}",
                if present { "appear" } else { "leave" }
            );
            thread::sleep(Duration::from_millis(200));
        }
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
            .env_remove("GNUTLS_PIN")
            .output()
            .unwrap_or_else(|err| panic!("running {program}: {err}"))
    }
}

impl Drop for CardSetup {
    fn drop(&mut self) {
        if let Some(card) = self.card.take() {
            card.remove();
        }
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn pkcs11_tool_on_a_card_with_a_pin() {
    if !common::have("pkcs11-tool", "opensc") || !common::have("openssl", "openssl") {
        return;
    }
    let Some(setup) = CardSetup::new() else {
        return;
    };
    let module = setup.library.clone();

    let slots = setup.run("pkcs11-tool", &["--module", &module, "-L"]);
    for needle in [
        format!("token label        : {}", setup.serial),
        common::reader_name(),
        "token initialized".to_owned(),
        "login required".to_owned(),
        "PIN initialized".to_owned(),
    ] {
        assert!(slots.contains(&needle), "no {needle:?} in:\n{slots}");
    }

    // Without login: the certificates and the public key, no private key.
    let public = setup.run("pkcs11-tool", &["--module", &module, "-O"]);
    for needle in [
        "Public Key Object; EC",
        "label:      module",
        "label:      identity",
        "label:      unit",
        "label:      central",
    ] {
        assert!(public.contains(needle), "no {needle:?} in:\n{public}");
    }
    assert!(!public.contains("Private Key Object"), "{public}");

    // With login: the private key, sensitive and never extractable.
    let private = setup.run(
        "pkcs11-tool",
        &["--module", &module, "--login", "--pin", PIN, "-O"],
    );
    for needle in [
        "Private Key Object; EC",
        "Usage:      sign",
        "Access:     sensitive, always sensitive, never extractable, local",
    ] {
        assert!(private.contains(needle), "no {needle:?} in:\n{private}");
    }

    // A signature over the card, verified with the certificate read from it.
    let data = setup.path("data.txt");
    std::fs::write(&data, b"signed by a card through pkcs11-tool\n").expect("data");
    let signature = setup.path("signature.der");
    setup.run(
        "pkcs11-tool",
        &[
            "--module",
            &module,
            "--login",
            "--pin",
            PIN,
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
    let public_key = setup.path("module.pub.pem");
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
            text(&public_key),
        ],
    );
    let verified = setup.run(
        "openssl",
        &[
            "dgst",
            "-sha384",
            "-verify",
            text(&public_key),
            "-signature",
            text(&signature),
            text(&data),
        ],
    );
    assert!(verified.contains("Verified OK"), "{verified}");
    eprintln!("openssl: {}", verified.trim());

    // A different message does not verify with that signature.
    let other = setup.path("other.txt");
    std::fs::write(&other, b"not what the card signed\n").expect("data");
    let refused = setup.output(
        "openssl",
        &[
            "dgst",
            "-sha384",
            "-verify",
            text(&public_key),
            "-signature",
            text(&signature),
            text(&other),
        ],
    );
    assert!(!refused.status.success(), "{refused:?}");

    // pkcs11-tool's self-test, logged in (its signature part knows RSA
    // only, so it reports signatures as not implemented for an EC token).
    let test = setup.run(
        "pkcs11-tool",
        &["--module", &module, "--test", "--login", "--pin", PIN],
    );
    assert!(test.contains("No errors"), "{test}");
    assert!(!test.contains("not logged in"), "{test}");
    eprintln!(
        "pkcs11-tool --test: {}",
        test.lines().last().unwrap_or_default()
    );
}

#[test]
fn p11tool_on_a_card_with_a_pin() {
    if !common::have("p11tool", "gnutls-bin") {
        return;
    }
    let Some(setup) = CardSetup::new() else {
        return;
    };
    // GnuTLS needs the provider's absolute path.
    let module = setup.library.clone();
    assert!(Path::new(&module).is_absolute());
    let url = format!("pkcs11:token={}", setup.serial);

    let tokens = setup.run("p11tool", &["--provider", &module, "--list-tokens"]);
    assert!(tokens.contains(&setup.serial), "{tokens}");

    // Without login: the certificates, no private key.
    let public = setup.run("p11tool", &["--provider", &module, "--list-all", &url]);
    for label in ["module", "identity", "unit", "central"] {
        assert!(
            public.contains(&format!("object={label};type=cert")),
            "no {label} certificate in:\n{public}"
        );
    }
    assert!(!public.contains("type=private"), "{public}");

    // Logged in: the private key object too.
    let pin = format!("--set-pin={PIN}");
    let private = setup.run(
        "p11tool",
        &["--provider", &module, "--login", &pin, "--list-all", &url],
    );
    assert!(
        private.contains("object=module;type=cert"),
        "no module certificate in:\n{private}"
    );
    assert!(
        private.contains("object=module;type=private"),
        "no private key in:\n{private}"
    );
    assert!(private.contains("Type: Private key"), "{private}");
    eprintln!(
        "p11tool --login --list-all: {}",
        private
            .lines()
            .filter_map(|line| line.trim().strip_prefix("URL: "))
            .filter_map(|url| url.split(';').find(|part| part.starts_with("object=")))
            .zip(
                private
                    .lines()
                    .filter_map(|line| line.trim().strip_prefix("Type: "))
            )
            .map(|(object, kind)| format!("{object} ({kind})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

// ------------------------------------------------------------------ the key cannot be read out

fn rv(result: Result<impl std::fmt::Debug, Error>) -> RvError {
    match result {
        Err(Error::Pkcs11(rv, _)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

fn load() -> Pkcs11 {
    let pkcs11 = Pkcs11::new(common::library()).expect("load the provider");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    pkcs11
}

/// Logs in on `slot` and checks that the module key cannot leave it.
fn key_cannot_be_read_out(pkcs11: &Pkcs11, slot: Slot) {
    let session = pkcs11.open_rw_session(slot).expect("session");
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .expect("login");
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .expect("find");
    assert_eq!(keys.len(), 1, "the module key, after login");
    let key = keys[0];
    key_value_is_never_returned(&session, key);
    key_flags_are_sensitive(&session, key);
    key_cannot_be_changed_copied_or_wrapped(&session, key);
    session.logout().expect("logout");
}

fn key_value_is_never_returned(session: &Session, key: ObjectHandle) {
    // The length query: CKR_ATTRIBUTE_SENSITIVE.
    let info = session
        .get_attribute_info(key, &[AttributeType::Value])
        .expect("C_GetAttributeValue");
    assert!(
        matches!(info[..], [AttributeInfo::Sensitive]),
        "CKA_VALUE's length: {info:?}"
    );
    // A read of the value, alone and among other attributes.
    for template in [
        &[AttributeType::Value][..],
        &[
            AttributeType::Label,
            AttributeType::Value,
            AttributeType::Id,
        ][..],
    ] {
        match session.get_attributes(key, template) {
            Err(Error::Pkcs11(RvError::AttributeSensitive, _)) => {}
            Ok(attributes) => assert!(
                !attributes
                    .iter()
                    .any(|attribute| matches!(attribute, Attribute::Value(_))),
                "CKA_VALUE returned: {attributes:?}"
            ),
            Err(other) => panic!("reading CKA_VALUE: {other}"),
        }
    }
    // Nor any other part of the private key.
    let other = session
        .get_attributes(key, &[AttributeType::PrivateExponent])
        .unwrap_or_default();
    assert!(other.is_empty(), "{other:?}");
}

fn key_flags_are_sensitive(session: &Session, key: ObjectHandle) {
    let attributes = session
        .get_attributes(
            key,
            &[
                AttributeType::Sensitive,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Extractable,
                AttributeType::Private,
                AttributeType::Modifiable,
                AttributeType::Copyable,
            ],
        )
        .expect("flags");
    let expected = [
        Attribute::Sensitive(true),
        Attribute::AlwaysSensitive(true),
        Attribute::NeverExtractable(true),
        Attribute::Extractable(false),
        Attribute::Private(true),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
    ];
    assert_eq!(attributes, expected);
}

fn key_cannot_be_changed_copied_or_wrapped(session: &Session, key: ObjectHandle) {
    for template in [
        vec![Attribute::Extractable(true)],
        vec![Attribute::Sensitive(false)],
        vec![Attribute::Sensitive(false), Attribute::Extractable(true)],
    ] {
        assert_eq!(
            rv(session.update_attributes(key, &template)),
            RvError::ActionProhibited,
            "C_SetAttributeValue {template:?}"
        );
    }
    for template in [
        vec![],
        vec![Attribute::Sensitive(false), Attribute::Extractable(true)],
    ] {
        assert_eq!(
            rv(session.copy_object(key, &template)),
            RvError::ActionProhibited,
            "C_CopyObject {template:?}"
        );
    }
    // Wrapped under the module's own public key, or under the key itself.
    let public = session
        .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)])
        .expect("find");
    assert_eq!(public.len(), 1, "the module's public key");
    for wrapping in [public[0], key] {
        assert_eq!(
            rv(session.wrap_key(&Mechanism::RsaPkcs, wrapping, key)),
            RvError::KeyUnextractable,
            "C_WrapKey"
        );
    }
    // The flags are unchanged after all that, and the key still signs.
    key_flags_are_sensitive(session, key);
    let signature = session
        .sign(&Mechanism::EcdsaSha384, key, b"still the module's key")
        .expect("sign");
    assert_eq!(signature.len(), 96);
}

#[test]
fn card_key_cannot_be_read_out() {
    if !common::pcsc_stack() {
        return;
    }
    let _reader = common::lock_reader();
    common::run_child_with("child_card_key_cannot_be_read_out", |_| card_config());
}

#[test]
#[ignore = "run by card_key_cannot_be_read_out in a child process"]
fn child_card_key_cannot_be_read_out() {
    let dir = common::module_dir("card");
    personalize_file_module(&dir);
    let pkcs11 = load();
    let slot = pkcs11.get_all_slots().expect("slots")[0];
    let card = Card::insert(&dir);
    let start = Instant::now();
    while !pkcs11
        .get_slots_with_token()
        .expect("slots")
        .contains(&slot)
    {
        assert!(start.elapsed() < WAIT, "the card did not appear");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        pkcs11
            .get_slot_info(slot)
            .expect("slot info")
            .hardware_slot()
    );
    key_cannot_be_read_out(&pkcs11, slot);
    pkcs11.finalize().expect("C_Finalize");
    card.remove();
}

#[test]
fn file_module_key_cannot_be_read_out() {
    common::run_child("child_file_module_key_cannot_be_read_out", &["module"]);
}

#[test]
#[ignore = "run by file_module_key_cannot_be_read_out in a child process"]
fn child_file_module_key_cannot_be_read_out() {
    personalize_file_module(&common::module_dir("module"));
    let pkcs11 = load();
    let slots = pkcs11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 1, "the file module's slot");
    key_cannot_be_read_out(&pkcs11, slots[0]);
    pkcs11.finalize().expect("C_Finalize");
}

const TOKEN_LABEL: &str = "imprint sensitive-key token";
use common::SOFTHSM_USER_PIN as SOFTHSM_PIN;

#[test]
fn softhsm_module_key_cannot_be_read_out() {
    common::run_child_on_softhsm_token("child_softhsm_module_key_cannot_be_read_out", TOKEN_LABEL);
}

#[test]
#[ignore = "run by softhsm_module_key_cannot_be_read_out in a child process"]
fn child_softhsm_module_key_cannot_be_read_out() {
    assert!(
        std::env::var_os("SOFTHSM2_CONF").is_some(),
        "run as a child"
    );
    // The module is personalized through this process's own view of the
    // token, before the provider is loaded.
    {
        let library = find_library().expect("SoftHSM library");
        let memory = SoftHsmKeyMemory::open(library, TOKEN_LABEL, SOFTHSM_PIN.as_bytes())
            .expect("open the token");
        let mut link = CardLink::new(InProcessTransport::new(
            Applet::new(memory).expect("applet"),
        ));
        let pki = Pki::new();
        manufacture_with(&mut link, &pki.manufacturer);
        personalized_with_pin(&mut link, &pki.unit, PIN.as_bytes()).expect("personalize");
    }
    let pkcs11 = load();
    let slots = pkcs11.get_slots_with_token().expect("slots");
    assert_eq!(slots.len(), 1, "the SoftHSM module's slot");
    key_cannot_be_read_out(&pkcs11, slots[0]);
    pkcs11.finalize().expect("C_Finalize");
}
