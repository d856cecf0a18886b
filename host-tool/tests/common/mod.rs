//! The PC/SC test bench shared by the suites that run through the machine's
//! `pcscd`: vpcd readers, `imprint-card` processes as cards, and the rules for
//! skipping (only outside CI, only when not root) and for sharing readers
//! between test processes (a lock file per reader).
//!
//! ```text
//!  test ──PC/SC──▶ pcscd ──vpcd reader "Virtual PCD 00 0n"──TCP──▶ imprint-card ──▶ module dir
//! ```

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use imprint_apdu::Lifecycle;
use imprint_apdu::channel::encode_point;
use imprint_apdu::host::CardLink;
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::keymem::{KeyMemory, KeySlot, Records};
use imprint_apdu::pki::{self, Certificate};
use imprint_host::pcsc::{ConnectOptions, LengthMode, PcscTransport};

#[allow(unused_imports)] // each suite uses a different part of the bench
pub use imprint_tests::pcscd::{
    PCSCD_SOCKET, Reader, find_program, is_root, pcscd_alive, skip, start_pcscd, wait_until,
};

pub const PCSCD_PID_FILE: &str = "/run/pcscd/pcscd.pid";
pub const WAIT: Duration = Duration::from_secs(10);

/// The shared bench's [`imprint_tests::pcscd::pcsc_stack`], plus `opensc-tool`,
/// which these suites use to see cards. `None`: skip the test.
pub fn pcsc_stack() -> Option<()> {
    if find_program("opensc-tool").is_none() {
        return skip("`opensc-tool` is not installed (Debian: opensc)");
    }
    imprint_tests::pcscd::pcsc_stack()
}

/// Whether `opensc-tool -l` lists `reader` with a card in it.
pub fn card_present(reader: &Reader) -> bool {
    let Ok(output) = Command::new("opensc-tool").arg("-l").output() else {
        return false;
    };
    String::from_utf8_lossy(&output.stdout).lines().any(|line| {
        line.trim_end().ends_with(&reader.name) && line.split_whitespace().nth(1) == Some("Yes")
    })
}

/// Waits until `reader` has been empty for a while.
///
/// pcscd learns that a card left only at its next presence poll (about every
/// 400 ms), and until then routes APDUs to the dead connection. Worse, when a
/// card vanishes mid-command and a client then resets it, pcscd already shows
/// the reader empty; if a new card connects before the next poll, the poll
/// still finds "a card", pcscd sees no change, and the new card stays
/// invisible. So the reader must have looked empty across a few polls.
pub fn wait_for_empty_reader(reader: &Reader) {
    const QUIET: Duration = Duration::from_millis(1200);
    let start = Instant::now();
    let mut empty_since: Option<Instant> = None;
    loop {
        if card_present(reader) {
            empty_since = None;
        } else if empty_since.get_or_insert_with(Instant::now).elapsed() >= QUIET {
            return;
        }
        assert!(
            start.elapsed() < WAIT + QUIET,
            "{:?} still holds a card after {WAIT:?}",
            reader.name
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `imprint-card` in an empty `reader` and waits until pcscd sees it.
pub fn insert_card(reader: &Reader, module: &Path, extra: &[&str]) -> CardProcess {
    wait_for_empty_reader(reader);
    let card = CardProcess::start(module, &reader.addr(), extra);
    wait_for_card(reader, &card);
    card
}

/// Starts `imprint-card --idunit DIR` (an identification unit, claims 16–18)
/// in an empty `reader` and waits until pcscd sees it.
pub fn insert_idunit(reader: &Reader, idunit: &Path) -> CardProcess {
    wait_for_empty_reader(reader);
    let card = CardProcess::start_as("--idunit", idunit, &reader.addr(), &["--quiet"]);
    wait_for_card(reader, &card);
    card
}

pub fn wait_for_card(reader: &Reader, card: &CardProcess) {
    let start = Instant::now();
    while !card_present(reader) {
        assert!(
            start.elapsed() < WAIT,
            "no card in {:?} after {WAIT:?}; imprint-card said:\n{}",
            reader.name,
            card.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the `imprint` binary with `args` to the end.
pub fn imprint(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(args)
        .output()
        .expect("imprint")
}

/// A process's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------- the card process

/// An `imprint-card` child, killed when dropped.
pub struct CardProcess {
    child: Child,
    log: PathBuf,
}

impl CardProcess {
    pub fn start(module: &Path, addr: &str, extra: &[&str]) -> Self {
        Self::start_as("--module", module, addr, extra)
    }

    /// `imprint-card ROLE DIR`: `--module` or `--idunit`.
    pub fn start_as(role: &str, dir: &Path, addr: &str, extra: &[&str]) -> Self {
        let log = dir.with_extension(format!("{}.log", unique()));
        let stderr = File::create(&log).expect("card log");
        let child = Command::new(env!("CARGO_BIN_EXE_imprint-card"))
            .arg(role)
            .arg(dir)
            .args(["--vpcd", addr])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting imprint-card");
        Self { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "imprint-card did not exit; it said:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for CardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- module directories

/// Copies the module directory `from` to `to` (created), recursively, without
/// the `lock` file: a copy is a module of its own, with the same keys and records.
pub fn copy_module_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|err| panic!("creating {}: {err}", to.display()));
    for entry in std::fs::read_dir(from).expect("read the module directory") {
        let entry = entry.expect("directory entry");
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_name() == "lock" {
            continue;
        }
        if entry.file_type().expect("file type").is_dir() {
            copy_module_dir(&source, &target);
        } else {
            std::fs::copy(&source, &target)
                .unwrap_or_else(|err| panic!("copying {}: {err}", source.display()));
        }
    }
}

/// After a torn connection (or any run), with no process holding the module:
/// its records are PERSONALIZATION with no operational certificate, or
/// OPERATING with a module certificate that chains through the unit's
/// certificate to `central_root` and certifies the key in `module.key`.
/// Returns the records.
pub fn assert_consistent(dir: &Path, central_root: &Certificate) -> Records {
    let mut memory = FileKeyMemory::open(dir)
        .unwrap_or_else(|err| panic!("opening the module {}: {err}", dir.display()));
    let records = memory.load().expect("the module's records load");
    match records.lifecycle {
        Lifecycle::Personalization => {
            assert_eq!(
                records.module_cert, None,
                "PERSONALIZATION: no module certificate"
            );
            assert_eq!(
                records.unit_cert, None,
                "PERSONALIZATION: no unit certificate"
            );
            assert_eq!(
                records.central_cert, None,
                "PERSONALIZATION: no central anchor"
            );
        }
        Lifecycle::Operating => {
            let der = |cert: &Option<Vec<u8>>, what: &str| {
                Certificate::from_der(
                    cert.as_deref()
                        .unwrap_or_else(|| panic!("OPERATING without a {what}")),
                )
                .unwrap_or_else(|err| panic!("the {what} does not parse: {err}"))
            };
            let module = der(&records.module_cert, "module certificate");
            let unit = der(&records.unit_cert, "unit certificate");
            der(&records.central_cert, "central anchor");
            pki::verify_issued_by(&module, &unit, 0).expect("module certificate by the unit");
            pki::verify_issued_by(&unit, central_root, 1).expect("unit certificate by central");
            let key = memory
                .public_key(KeySlot::Module)
                .expect("module.key reads")
                .expect("OPERATING with a module key");
            assert_eq!(
                module.public_key_sec1(),
                encode_point(&key),
                "the module certificate certifies the key in module.key"
            );
        }
        Lifecycle::Manufactured => panic!("the module fell back to MANUFACTURED"),
    }
    records
}

/// One vpcd reader, held for the whole test; each new module is a fresh
/// `imprint-card` process on a fresh directory.
pub struct PcscHarness {
    reader: Reader,
    short_apdus: bool,
    card_args: Vec<&'static str>,
    card: Option<CardProcess>,
    dirs: Vec<tempfile::TempDir>,
    _lock: File,
}

impl PcscHarness {
    /// `None` when the PC/SC stack is unavailable outside CI (the test skips).
    pub fn new(short_apdus: bool) -> Option<Self> {
        pcsc_stack()?;
        let reader = Reader::for_tests();
        let lock = reader.lock();
        Some(Self {
            reader,
            short_apdus,
            card_args: vec!["--quiet"],
            card: None,
            dirs: Vec::new(),
            _lock: lock,
        })
    }
}

impl PcscHarness {
    /// Every card this harness inserts from now on runs `imprint-card` with
    /// these arguments too (e.g. `--direct`, a network of its own).
    pub fn with_card_args(mut self, args: &[&'static str]) -> Self {
        self.card_args.extend_from_slice(args);
        self
    }

    /// The vpcd reader's PC/SC name.
    pub fn reader_name(&self) -> &str {
        &self.reader.name
    }
}

impl imprint_tests::claims::Harness for PcscHarness {
    type T = PcscTransport;

    fn blank_module(&mut self) -> (CardLink<PcscTransport>, PathBuf) {
        // One card per reader: the previous one leaves first.
        self.card = None;
        let dir = tempfile::tempdir().expect("tempdir");
        let module = dir.path().join("module");
        self.dirs.push(dir);
        let card = insert_card(&self.reader, &module, &self.card_args);
        let options = ConnectOptions::exclusive().short_apdus(self.short_apdus);
        let transport = PcscTransport::open(&self.reader.name, options).unwrap_or_else(|err| {
            panic!(
                "connecting to {:?}: {err}\nimprint-card said:\n{}",
                self.reader.name,
                card.log()
            )
        });
        if self.short_apdus {
            assert!(
                matches!(transport.length_mode(), LengthMode::Short(_)),
                "{}",
                transport.length_mode()
            );
        }
        self.card = Some(card);
        (CardLink::new(transport), module)
    }
}

/// One test per `name => body`: the body runs on a [`PcscHarness`] with
/// extended-length APDUs, or the test skips when the PC/SC stack is missing
/// outside CI.
#[allow(unused_macros)] // only the claim suites define tests with it
macro_rules! over_pcscd {
    ($($name:ident => $body:path),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let Some(mut harness) = PcscHarness::new(false) else { return };
                $body(&mut harness);
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use over_pcscd;
