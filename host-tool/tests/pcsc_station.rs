//! `imprint station` through the real PC/SC stack: two `imprint-card`
//! processes, one in each vpcd reader of the machine's `pcscd`, and the
//! station binary personalizing both; then runs where one card vanishes
//! mid-way (`--fail-after-apdus N`).
//!
//! ```text
//!  roles (library) ─▶ P/ ── imprint station --personalizer P --count 2 --plain ──┐
//!                                                                               ▼
//!  module A ─▶ imprint-card ─TCP─▶ "Virtual PCD 00 00" ─┐                     pcscd
//!  module B ─▶ imprint-card ─TCP─▶ "Virtual PCD 00 01" ─┴──────────────────────▶┘
//!  afterwards: exit status, summary, module directories, P/journal.sqlite
//! ```
//!
//! Every test holds both readers' locks (reader 00 first, then 01).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imprint_apdu::Lifecycle;
use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::pki::Certificate;
use imprint_central::CentralAuthority;
use imprint_host::journal::{IssuanceStatus, JournalEntry, SqliteJournal};
use imprint_host::module;
use imprint_host::roles::{self, Manufacturer, Personalizer};

mod common;
use common::*;

/// How long a station run may take before the test gives up on it.
const STATION_LIMIT: Duration = Duration::from_secs(60);

/// The APDUs of a first personalization through pcscd: the probe SELECT,
/// MUTUAL AUTHENTICATE, EXTERNAL AUTHENTICATE, GENERATE, PUT DATA.
const PUT_DATA: u32 = 5;
const GENERATE: u32 = 4;

/// A deployment on disk: manufacturer, central system, a personalization unit.
struct Station {
    work: tempfile::TempDir,
    manufacturer: Manufacturer,
    central_root: Certificate,
    readers: [Reader; 2],
    _locks: [File; 2],
}

impl Station {
    /// `None` when the PC/SC stack is unavailable outside CI (the test skips).
    fn new() -> Option<Self> {
        pcsc_stack()?;
        let readers = [Reader::index(0), Reader::index(1)];
        let locks = [readers[0].lock(), readers[1].lock()];
        let work = tempfile::tempdir().expect("tempdir");
        let dir = work.path();
        let manufacturer =
            Manufacturer::init(&dir.join("manufacturer"), "Test maker", 20).expect("manufacturer");
        let central =
            CentralAuthority::init(&dir.join("central"), "Test central", 20).expect("central");
        let unit = dir.join("personalizer");
        let csr = Personalizer::init(&unit, "Test station").expect("unit");
        let by_manufacturer = manufacturer
            .certify_personalizer(&csr, 10)
            .expect("certified by the manufacturer");
        let by_central = central
            .certify_personalizer(&csr, 5)
            .expect("certified by central");
        Personalizer::install(
            &unit,
            manufacturer.root(),
            &by_manufacturer,
            &central.cert,
            &by_central,
            10,
        )
        .expect("unit installed");
        Some(Self {
            work,
            manufacturer,
            central_root: central.cert,
            readers,
            _locks: locks,
        })
    }

    fn unit(&self) -> PathBuf {
        self.work.path().join("personalizer")
    }

    /// A freshly manufactured module directory; returns it and its serial.
    fn manufacture(&self, name: &str) -> (PathBuf, String) {
        let dir = self.work.path().join(name);
        let mut link = module::open(&dir, true).expect("module directory");
        let report = manufacture(&mut link, self.manufacturer.credentials(), 20).expect(name);
        (dir, report.serial)
    }

    /// Runs `imprint station` on both readers with `--count 2 --plain`.
    fn run(&self, tag: &str) -> StationRun {
        let stdout_path = self.work.path().join(format!("{tag}.stdout"));
        let stderr_path = self.work.path().join(format!("{tag}.stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_imprint"))
            .arg("station")
            .arg("--personalizer")
            .arg(self.unit())
            .args(["--count", "2", "--plain"])
            .args(["--reader", &self.readers[0].name])
            .args(["--reader", &self.readers[1].name])
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("stdout file"))
            .stderr(File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("starting imprint station");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > STATION_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "imprint station still running after {STATION_LIMIT:?}; it said:\n{}",
                    std::fs::read_to_string(&stdout_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        StationRun {
            code: status.code(),
            stdout: std::fs::read_to_string(&stdout_path).expect("stdout"),
            stderr: std::fs::read_to_string(&stderr_path).expect("stderr"),
        }
    }

    fn journal(&self) -> Vec<JournalEntry> {
        SqliteJournal::open_existing(&roles::journal_path(&self.unit()))
            .expect("the station's journal")
            .entries()
            .expect("journal entries")
    }
}

struct StationRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl StationRun {
    fn context(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The plain log line that finished the card in `reader`.
    fn finished_line(&self, reader: &Reader) -> &str {
        let prefix = format!("reader=\"{}\" ", reader.name);
        self.stdout
            .lines()
            .find(|line| line.starts_with(&prefix) && line.contains(" result="))
            .unwrap_or_else(|| panic!("no result line for {:?}:\n{}", reader.name, self.context()))
    }
}

fn journal_of<'a>(entries: &'a [JournalEntry], serial: &str) -> Vec<&'a JournalEntry> {
    entries
        .iter()
        .filter(|entry| entry.serial == serial)
        .collect()
}

fn imprint_module_status(reader: &Reader) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(["module", "status", "--reader", &reader.name])
        .output()
        .expect("imprint module status");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn station_personalizes_a_card_in_each_reader() {
    let Some(station) = Station::new() else {
        return;
    };
    let (dir_a, serial_a) = station.manufacture("module-a");
    let (dir_b, serial_b) = station.manufacture("module-b");
    let card_a = insert_card(&station.readers[0], &dir_a, &["--quiet"]);
    let card_b = insert_card(&station.readers[1], &dir_b, &["--quiet"]);

    let run = station.run("both");
    assert_eq!(run.code, Some(0), "{}", run.context());
    assert!(
        run.stdout
            .contains("cards done: 2, failed: 0, skipped: 0; median time per card: "),
        "{}",
        run.context()
    );
    for (reader, serial) in [
        (&station.readers[0], &serial_a),
        (&station.readers[1], &serial_b),
    ] {
        let line = run.finished_line(reader);
        assert!(
            line.contains(&format!(
                "serial={serial} step=done result=done apdus={PUT_DATA} "
            )),
            "{line}"
        );
        assert!(
            run.stdout.contains(&format!(
                "reader=\"{}\" serial={serial} step=\"PUT DATA (certificates)\" apdus={PUT_DATA}\n",
                reader.name
            )),
            "progress lines name each command and count the APDUs on the wire:\n{}",
            run.stdout
        );
        let status = imprint_module_status(reader);
        assert!(
            status.contains(&format!("serial:      {serial}")),
            "{status}"
        );
        assert!(status.contains("lifecycle:   OPERATING"), "{status}");
    }
    drop((card_a, card_b));

    let entries = station.journal();
    assert_eq!(entries.len(), 2, "{entries:?}");
    for (dir, serial) in [(&dir_a, &serial_a), (&dir_b, &serial_b)] {
        let records = assert_consistent(dir, &station.central_root);
        assert_eq!(records.lifecycle, Lifecycle::Operating);
        let journaled = journal_of(&entries, serial);
        assert_eq!(journaled.len(), 1, "{entries:?}");
        assert_eq!(journaled[0].status, IssuanceStatus::Installed);
        assert_eq!(
            records.module_cert.as_deref(),
            Some(journaled[0].certificate.as_slice()),
            "the journaled certificate is the installed one"
        );
    }
}

/// The card in the second reader vanishes after processing its `n`th APDU;
/// the first card is personalized. Returns the run and the failed module.
fn station_with_a_vanishing_card(station: &Station, n: u32) -> (StationRun, PathBuf, String) {
    let (dir_a, serial_a) = station.manufacture(&format!("n{n}-a"));
    let (dir_b, serial_b) = station.manufacture(&format!("n{n}-b"));
    let card_a = insert_card(&station.readers[0], &dir_a, &["--quiet"]);
    let mut card_b = insert_card(
        &station.readers[1],
        &dir_b,
        &["--fail-after-apdus", &n.to_string()],
    );

    let run = station.run(&format!("n{n}"));
    assert_eq!(run.code, Some(1), "{}", run.context());
    assert!(
        run.stdout
            .contains("cards done: 1, failed: 1, skipped: 0; median time per card: "),
        "{}",
        run.context()
    );
    assert!(
        run.stderr.contains("error: 1 of 2 cards failed"),
        "{}",
        run.context()
    );
    let done = run.finished_line(&station.readers[0]);
    assert!(
        done.contains(&format!("serial={serial_a} step=done result=done")),
        "{done}"
    );
    assert_eq!(card_b.wait_exit(WAIT).code(), Some(86), "{}", card_b.log());
    drop((card_a, card_b));

    let records = assert_consistent(&dir_a, &station.central_root);
    assert_eq!(records.lifecycle, Lifecycle::Operating);
    let entries = station.journal();
    let journaled = journal_of(&entries, &serial_a);
    assert_eq!(journaled.len(), 1, "{entries:?}");
    assert_eq!(journaled[0].status, IssuanceStatus::Installed);
    (run, dir_b, serial_b)
}

#[test]
fn station_reports_a_card_pulled_during_put_data_and_marks_its_entry_failed() {
    let Some(station) = Station::new() else {
        return;
    };
    let (run, dir, serial) = station_with_a_vanishing_card(&station, PUT_DATA);
    let failed = run.finished_line(&station.readers[1]);
    assert!(
        failed.contains(&format!(
            "serial={serial} step=\"PUT DATA (certificates)\" result=failed apdus={PUT_DATA} "
        )),
        "{failed}"
    );
    let entries = station.journal();
    let journaled = journal_of(&entries, &serial);
    assert_eq!(journaled.len(), 1, "{entries:?}");
    let entry = journaled[0];
    assert_eq!(entry.status, IssuanceStatus::Failed);
    let reason = entry.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "(station, reader \"{}\", during PUT DATA (certificates))",
            station.readers[1].name
        )),
        "{reason}"
    );
    let message = format!(
        "card removed during PUT DATA (certificates); journal entry {} marked failed",
        entry.id
    );
    assert!(failed.contains(&message), "{failed}");
    assert!(
        run.stdout.contains(&format!(
            "failed cards:\n  reader \"{}\": module {serial}: {message}",
            station.readers[1].name
        )),
        "{}",
        run.context()
    );

    // The card committed before it vanished: the response was lost, the
    // journal says failed, and the module is OPERATING with that certificate.
    let records = assert_consistent(&dir, &station.central_root);
    assert_eq!(records.lifecycle, Lifecycle::Operating);
    assert_eq!(
        records.module_cert.as_deref(),
        Some(entry.certificate.as_slice())
    );
}

#[test]
fn station_reports_a_card_pulled_before_anything_was_issued() {
    let Some(station) = Station::new() else {
        return;
    };
    let (run, dir, serial) = station_with_a_vanishing_card(&station, GENERATE);
    let failed = run.finished_line(&station.readers[1]);
    assert!(
        failed.contains(&format!(
            "serial={serial} step=\"GENERATE ASYMMETRIC KEY PAIR\" result=failed apdus={GENERATE} "
        )),
        "{failed}"
    );
    assert!(
        failed.contains(
            " journal=- error=\"card removed during GENERATE ASYMMETRIC KEY PAIR; nothing was issued\""
        ),
        "{failed}"
    );
    assert!(journal_of(&station.journal(), &serial).is_empty());
    let records = assert_consistent(&dir, &station.central_root);
    assert_eq!(records.lifecycle, Lifecycle::Personalization);
}

#[test]
fn station_reports_a_card_pulled_while_connecting() {
    let Some(station) = Station::new() else {
        return;
    };
    // The first APDU is the transport's probe SELECT.
    let (run, dir, serial) = station_with_a_vanishing_card(&station, 1);
    let failed = run.finished_line(&station.readers[1]);
    assert!(
        failed.contains("serial=- step=connect result=failed apdus=0 "),
        "{failed}"
    );
    assert!(
        failed.contains(" journal=- error=\"card removed during connect\""),
        "{failed}"
    );
    assert!(journal_of(&station.journal(), &serial).is_empty());
    let records = assert_consistent(&dir, &station.central_root);
    assert_eq!(records.lifecycle, Lifecycle::Personalization);
}

/// `imprint bench pcsc` and `imprint bench station` on the two cards: they
/// run and report their figures (no timing is asserted).
#[test]
fn bench_commands_run_on_a_card_in_each_reader() {
    let Some(station) = Station::new() else {
        return;
    };
    let (dir_a, _) = station.manufacture("bench-a");
    let (dir_b, _) = station.manufacture("bench-b");
    let _card_a = insert_card(&station.readers[0], &dir_a, &["--quiet"]);
    let _card_b = insert_card(&station.readers[1], &dir_b, &["--quiet"]);
    let bench = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_imprint"))
            .arg("bench")
            .args(args)
            .output()
            .expect("imprint bench");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "imprint bench {args:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let unit = station.unit();
    let unit = unit.to_str().expect("UTF-8 path");

    let pcsc = bench(&[
        "pcsc",
        "--reader",
        &station.readers[0].name,
        "--rounds",
        "50",
        "--personalizer",
        unit,
        "--cards",
        "2",
    ]);
    for expected in [
        "  median ",
        "re-personalizations, extended length",
        // The probe SELECT, the handshake, TERMINATE, GENERATE, PUT DATA.
        "  APDUs on the wire      6 per card",
        "  floor                  ",
        "  ratio median/floor     ",
    ] {
        assert!(pcsc.contains(expected), "{expected:?} missing:\n{pcsc}");
    }

    let throughput = bench(&[
        "station",
        "--personalizer",
        unit,
        "--reader",
        &station.readers[0].name,
        "--reader",
        &station.readers[1].name,
        "--cards",
        "2",
    ]);
    assert!(
        throughput.contains("  all 2 readers ")
            && throughput.contains("ratio 2 readers / 1 reader: "),
        "{throughput}"
    );

    // Every certificate the benches issued is journaled and installed: pcsc
    // 1 + 2; station: a round on both readers, 2 on one, 2 on both.
    let entries = station.journal();
    assert_eq!(entries.len(), 9, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|entry| entry.status == IssuanceStatus::Installed)
    );
}
