use std::collections::VecDeque;
use std::sync::Arc;

use imprint_apdu::Applet;
use imprint_apdu::host::InProcessTransport;
use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::keymem::memory::MemoryKeyMemory;

use super::*;
use crate::journal::{IssuanceStatus, SqliteJournal};
use crate::roles::Manufacturer;

/// The roles of a test station, in a temporary directory.
struct Fixture {
    _dir: tempfile::TempDir,
    manufacturer: Manufacturer,
    unit: UnitCredentials,
    journal: Mutex<SqliteJournal>,
}

fn fixture() -> Fixture {
    let crate::testutil::UnitFixture {
        dir,
        manufacturer,
        unit,
        journal,
    } = crate::testutil::unit_fixture();
    Fixture {
        _dir: dir,
        manufacturer,
        unit,
        journal: Mutex::new(journal),
    }
}

type Module = Arc<Mutex<InProcessTransport<MemoryKeyMemory>>>;

fn blank_module(seed: u8, short_apdus: bool) -> Module {
    let applet = Applet::new(MemoryKeyMemory::new([seed; 48])).expect("applet");
    let transport = InProcessTransport::new(applet);
    Arc::new(Mutex::new(if short_apdus {
        transport.short_apdus_only()
    } else {
        transport
    }))
}

fn manufactured_module(fixture: &Fixture, seed: u8, short_apdus: bool) -> Module {
    let module = blank_module(seed, short_apdus);
    {
        let mut transport = lock(&module);
        let mut link = CardLink::new(&mut *transport);
        manufacture(&mut link, fixture.manufacturer.credentials(), 20).expect("manufacture");
    }
    module
}

fn lifecycle(module: &Module) -> Lifecycle {
    lock(module).applet().lifecycle()
}

/// When a fake card leaves its reader: the APDU that never reaches it.
#[derive(Clone, Copy)]
enum Pull {
    /// After this many APDUs.
    AfterApdus(u32),
    /// At the `nth` (1-based) APDU with this instruction byte.
    At { instruction: u8, nth: u32 },
}

/// A card the fake readers hold.
#[derive(Clone)]
enum FakeCard {
    /// An Imprint module, pulled mid-way if `pull` says so.
    Imprint { module: Module, pull: Option<Pull> },
    /// A card without our applet: answers 6A82 to everything.
    Foreign,
}

fn card(module: &Module) -> FakeCard {
    FakeCard::Imprint {
        module: Arc::clone(module),
        pull: None,
    }
}

fn pulled_by(module: &Module, pull: Pull) -> FakeCard {
    FakeCard::Imprint {
        module: Arc::clone(module),
        pull: Some(pull),
    }
}

fn pulled_at(module: &Module, instruction: u8, nth: u32) -> FakeCard {
    pulled_by(module, Pull::At { instruction, nth })
}

struct FakeTransport {
    card: FakeCard,
    sent: u32,
    seen: [u32; 256],
    gone: bool,
}

impl Transport for FakeTransport {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        match &self.card {
            FakeCard::Foreign => Ok(vec![0x6A, 0x82]),
            FakeCard::Imprint { module, pull } => {
                let instruction = command.get(1).copied().unwrap_or(0);
                self.seen[usize::from(instruction)] += 1;
                self.gone |= match pull {
                    None => false,
                    Some(Pull::AfterApdus(limit)) => self.sent >= *limit,
                    Some(Pull::At {
                        instruction: pulled,
                        nth,
                    }) => instruction == *pulled && self.seen[usize::from(instruction)] == *nth,
                };
                if self.gone {
                    return Err(TransportError::Disconnected);
                }
                self.sent += 1;
                lock(module).transmit(command)
            }
        }
    }

    fn supports_extended_length(&self) -> bool {
        match &self.card {
            FakeCard::Foreign => true,
            FakeCard::Imprint { module, .. } => lock(module).supports_extended_length(),
        }
    }
}

/// A reader with a queue of cards: each is inserted when the previous one
/// has been handled and removed.
struct FakeReader {
    name: String,
    queue: VecDeque<FakeCard>,
    current: Option<FakeCard>,
    handled: bool,
}

fn reader(name: &str, cards: Vec<FakeCard>) -> FakeReader {
    FakeReader {
        name: name.to_owned(),
        queue: cards.into(),
        current: None,
        handled: false,
    }
}

impl CardReader for FakeReader {
    type Card = FakeTransport;

    fn name(&self) -> &str {
        &self.name
    }

    fn wait(&mut self, timeout: Duration) -> Result<ReaderChange, HostError> {
        if self.current.is_some() && self.handled {
            self.current = None;
            self.handled = false;
            return Ok(ReaderChange::Removed);
        }
        if self.current.is_none()
            && let Some(card) = self.queue.pop_front()
        {
            self.current = Some(card);
            return Ok(ReaderChange::Inserted);
        }
        std::thread::sleep(timeout);
        Ok(ReaderChange::Unchanged)
    }

    fn connect(&mut self) -> Result<FakeTransport, HostError> {
        let card = self
            .current
            .clone()
            .ok_or_else(|| HostError::NoCard(self.name.clone()))?;
        Ok(FakeTransport {
            card,
            sent: 0,
            seen: [0; 256],
            gone: false,
        })
    }

    fn release(&mut self, card: Option<FakeTransport>) {
        // Like the PC/SC reader's reset on disconnect: volatile state goes.
        if let Some(FakeTransport {
            card: FakeCard::Imprint { module, .. },
            ..
        }) = card
        {
            lock(&module).applet_mut().reset();
        }
        self.handled = true;
    }
}

/// Records every event; counts plain log lines too.
#[derive(Default)]
struct Recorder {
    lines: Mutex<Vec<String>>,
}

impl StationObserver for Recorder {
    fn event(&self, reader: &str, event: &StationEvent<'_>) {
        if let Some(line) = log_line(reader, event) {
            lock(&self.lines).push(line);
        }
    }
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }
}

/// Runs the station with a watchdog: a run that does not end by itself
/// within a minute is stopped, and the test's counts then fail.
fn run(
    fixture: &Fixture,
    readers: Vec<FakeReader>,
    count: Option<usize>,
    observer: &dyn StationObserver,
    stop: &AtomicBool,
) -> StationSummary {
    let config = StationConfig {
        unit: &fixture.unit,
        journal: &fixture.journal,
        count,
        validity_years: 5,
        observer,
        stop,
        poll: Duration::from_millis(5),
    };
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !finished.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::SeqCst);
        });
        let summary = run_station(readers, &config);
        finished.store(true, Ordering::SeqCst);
        summary
    })
}

fn failure(record: &CardRecord) -> (&HostError, JournalNote) {
    match &record.outcome {
        CardOutcome::Failed { error, journal } => (error, *journal),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn two_readers_one_card_pulled_during_put_data() {
    let fixture = fixture();
    let good = manufactured_module(&fixture, 1, false);
    let pulled = manufactured_module(&fixture, 2, false);
    let recorder = Recorder::default();
    let stop = AtomicBool::new(false);
    let summary = run(
        &fixture,
        vec![
            reader("Reader A", vec![card(&good)]),
            reader("Reader B", vec![pulled_at(&pulled, ins::PUT_DATA, 1)]),
        ],
        Some(2),
        &recorder,
        &stop,
    );

    assert_eq!(
        (summary.done(), summary.failed(), summary.skipped()),
        (1, 1, 0)
    );
    assert!(!summary.all_done());
    assert!(summary.median_time().is_some());
    let done = summary.cards.iter().find(|c| c.is_done()).expect("done");
    assert_eq!(done.reader, "Reader A");
    assert_eq!(done.apdus, 6);
    let failed = summary
        .cards
        .iter()
        .find(|c| c.is_failed())
        .expect("failed");
    assert_eq!(failed.reader, "Reader B");
    assert_eq!(failed.step, "PUT DATA (certificates)");
    let (error, journal) = failure(failed);
    assert!(matches!(
        error,
        HostError::CardRemoved {
            step: "PUT DATA (certificates)"
        }
    ));
    let JournalNote::MarkedFailed(id) = journal else {
        panic!("expected a journal entry marked failed, got {journal:?}");
    };
    let serial = failed.serial.clone().expect("serial");
    assert_eq!(
        failed.to_string(),
        format!(
            "reader \"Reader B\": module {serial}: card removed during PUT DATA (certificates); journal entry {id} marked failed"
        )
    );

    // The journal: the good card installed, the pulled one failed with a reason.
    let journal = lock(&fixture.journal);
    let entries = journal.entries().expect("entries");
    assert_eq!(entries.len(), 2);
    let entry = entries.iter().find(|e| e.id == id).expect("entry");
    assert_eq!(entry.status, IssuanceStatus::Failed);
    assert_eq!(entry.serial, serial);
    let reason = entry.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("Reader B"), "{reason}");
    assert!(reason.contains("PUT DATA (certificates)"), "{reason}");
    let installed = entries
        .iter()
        .filter(|e| e.status == IssuanceStatus::Installed)
        .count();
    assert_eq!(installed, 1);

    // The cards: consistent, the pulled one not OPERATING.
    assert_eq!(lifecycle(&good), Lifecycle::Operating);
    assert_eq!(lifecycle(&pulled), Lifecycle::Personalization);

    // Per reader.
    let tallies = summary.per_reader();
    assert_eq!(tallies[0].reader, "Reader A");
    assert_eq!((tallies[0].done, tallies[0].failed), (1, 0));
    assert!(tallies[0].median.is_some());
    assert_eq!((tallies[1].done, tallies[1].failed), (0, 1));
    assert_eq!(tallies[1].median, None);

    // The log has a failed line naming the step and the journal entry.
    let lines = recorder.lines();
    let line = lines
        .iter()
        .find(|line| line.contains("result=failed"))
        .expect("failed line");
    assert!(line.starts_with("reader=\"Reader B\" serial="), "{line}");
    assert!(line.contains("step=\"PUT DATA (certificates)\""), "{line}");
    assert!(line.contains(&format!("journal={id}")), "{line}");
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("reader=\"Reader A\"") && line.contains("result=done")),
        "{lines:?}"
    );
}

#[test]
fn a_card_pulled_in_the_middle_of_a_chain_stays_consistent() {
    // Short APDUs: PUT DATA of the certificates goes in 255-byte pieces; the
    // card leaves after the first piece.
    let fixture = fixture();
    let pulled = manufactured_module(&fixture, 3, true);
    let stop = AtomicBool::new(false);
    let summary = run(
        &fixture,
        vec![reader("Reader", vec![pulled_at(&pulled, ins::PUT_DATA, 2)])],
        Some(1),
        &Recorder::default(),
        &stop,
    );
    assert_eq!((summary.done(), summary.failed()), (0, 1));
    let (error, journal) = failure(&summary.cards[0]);
    assert!(matches!(
        error,
        HostError::CardRemoved {
            step: "PUT DATA (certificates)"
        }
    ));
    assert!(matches!(journal, JournalNote::MarkedFailed(_)));
    assert_eq!(lifecycle(&pulled), Lifecycle::Personalization);
}

#[test]
fn a_card_pulled_during_key_generation_leaves_nothing_in_the_journal() {
    let fixture = fixture();
    let pulled = manufactured_module(&fixture, 4, false);
    let stop = AtomicBool::new(false);
    let summary = run(
        &fixture,
        vec![reader(
            "Reader",
            vec![pulled_at(&pulled, ins::GENERATE_KEY, 1)],
        )],
        Some(1),
        &Recorder::default(),
        &stop,
    );
    let record = &summary.cards[0];
    let (error, journal) = failure(record);
    assert!(matches!(
        error,
        HostError::CardRemoved {
            step: "GENERATE ASYMMETRIC KEY PAIR"
        }
    ));
    assert_eq!(journal, JournalNote::NothingIssued);
    assert!(
        record
            .to_string()
            .ends_with("card removed during GENERATE ASYMMETRIC KEY PAIR; nothing was issued"),
        "{record}"
    );
    assert!(
        lock(&fixture.journal)
            .entries()
            .expect("entries")
            .is_empty()
    );
    assert_eq!(lifecycle(&pulled), Lifecycle::Personalization);
}

#[test]
fn the_station_goes_on_after_a_pulled_card_and_personalizes_it_when_reinserted() {
    let fixture = fixture();
    let module = manufactured_module(&fixture, 5, false);
    let stop = AtomicBool::new(false);
    let summary = run(
        &fixture,
        vec![reader(
            "Reader",
            vec![pulled_at(&module, ins::PUT_DATA, 1), card(&module)],
        )],
        Some(2),
        &Recorder::default(),
        &stop,
    );
    assert_eq!((summary.done(), summary.failed()), (1, 1));
    assert!(summary.cards[0].is_failed());
    assert!(summary.cards[1].is_done());
    assert_eq!(lifecycle(&module), Lifecycle::Operating);
    let statuses: Vec<_> = lock(&fixture.journal)
        .entries()
        .expect("entries")
        .iter()
        .map(|entry| entry.status)
        .collect();
    assert_eq!(
        statuses,
        [IssuanceStatus::Failed, IssuanceStatus::Installed]
    );
}

#[test]
fn a_card_personalized_in_this_run_is_skipped_when_reinserted() {
    let fixture = fixture();
    let first = manufactured_module(&fixture, 6, false);
    let second = manufactured_module(&fixture, 7, false);
    let recorder = Recorder::default();
    let stop = AtomicBool::new(false);
    let summary = run(
        &fixture,
        vec![reader(
            "Reader",
            vec![card(&first), card(&first), card(&second)],
        )],
        Some(2),
        &recorder,
        &stop,
    );
    let outcomes: Vec<_> = summary
        .cards
        .iter()
        .map(|card| (card.is_done(), card.is_skipped()))
        .collect();
    assert_eq!(outcomes, [(true, false), (false, true), (true, false)]);
    assert_eq!(
        (summary.done(), summary.failed(), summary.skipped()),
        (2, 0, 1)
    );
    assert!(summary.all_done());
    // One certificate per card: the skipped card was not touched again.
    assert_eq!(lock(&fixture.journal).entries().expect("entries").len(), 2);
    assert!(
        recorder
            .lines()
            .iter()
            .any(|line| line.contains("result=skipped"))
    );
}

#[test]
fn unmanufactured_and_foreign_cards_fail_clearly() {
    let fixture = fixture();
    let blank = blank_module(8, false);
    let stop = AtomicBool::new(false);
    let summary = run(
        &fixture,
        vec![reader("Reader", vec![card(&blank), FakeCard::Foreign])],
        Some(2),
        &Recorder::default(),
        &stop,
    );
    assert_eq!(summary.failed(), 2);
    let (error, journal) = failure(&summary.cards[0]);
    assert!(matches!(
        error,
        HostError::Personalize(PersonalizeError::NotManufactured)
    ));
    assert_eq!(journal, JournalNote::NotStarted);
    let (error, _) = failure(&summary.cards[1]);
    assert!(matches!(error, HostError::NotImprintModule { sw: 0x6A82 }));
    assert_eq!(
        summary.cards[1].to_string(),
        "reader \"Reader\": not an Imprint module (SELECT: 6A82)"
    );
    assert_eq!(lifecycle(&blank), Lifecycle::Manufactured);
}

#[test]
fn count_bounds_the_cards_touched() {
    let fixture = fixture();
    let modules: Vec<_> = (10..13)
        .map(|seed| manufactured_module(&fixture, seed, false))
        .collect();
    let stop = AtomicBool::new(false);
    let summary = run(
        &fixture,
        vec![
            reader("Reader A", vec![card(&modules[0]), card(&modules[1])]),
            reader("Reader B", vec![card(&modules[2])]),
        ],
        Some(2),
        &Recorder::default(),
        &stop,
    );
    assert_eq!(summary.done(), 2);
    let operating = modules
        .iter()
        .filter(|module| lifecycle(module) == Lifecycle::Operating)
        .count();
    assert_eq!(operating, 2);
    assert_eq!(lock(&fixture.journal).entries().expect("entries").len(), 2);
}

#[test]
fn several_readers_work_in_parallel_with_short_apdus() {
    let fixture = fixture();
    let modules: Vec<_> = (20..26)
        .map(|seed| manufactured_module(&fixture, seed, true))
        .collect();
    let readers = modules
        .chunks(2)
        .enumerate()
        .map(|(index, pair)| reader(&format!("Reader {index}"), pair.iter().map(card).collect()))
        .collect();
    let stop = AtomicBool::new(false);
    let summary = run(&fixture, readers, Some(6), &Recorder::default(), &stop);
    assert_eq!((summary.done(), summary.failed()), (6, 0));
    assert!(
        summary
            .per_reader()
            .iter()
            .all(|tally| tally.done == 2 && tally.median.is_some())
    );
    // Short APDUs: chaining and GET RESPONSE add APDUs beyond the six commands.
    assert!(summary.cards.iter().all(|card| card.apdus > 6));
    assert!(
        modules
            .iter()
            .all(|module| lifecycle(module) == Lifecycle::Operating)
    );
}

#[test]
fn the_stop_flag_ends_an_idle_station() {
    let fixture = fixture();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let summary = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::SeqCst);
        });
        run(
            &fixture,
            vec![
                reader("Reader A", Vec::new()),
                reader("Reader B", Vec::new()),
            ],
            None,
            &Recorder::default(),
            &stop,
        )
    });
    assert!(summary.cards.is_empty());
    assert_eq!(summary.readers, ["Reader A", "Reader B"]);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        summary.to_string(),
        "cards done: 0, failed: 0, skipped: 0; median time per card: -\n  Reader A  done 0, failed 0, skipped 0; median -\n  Reader B  done 0, failed 0, skipped 0; median -\n"
    );
}

#[test]
fn the_terminal_display_takes_every_event() {
    let fixture = fixture();
    let good = manufactured_module(&fixture, 30, false);
    let pulled = manufactured_module(&fixture, 31, false);
    let progress = TerminalProgress::with_draw_target(
        &["Reader A".to_owned(), "Reader B".to_owned()],
        ProgressDrawTarget::hidden(),
    );
    let stop = AtomicBool::new(false);
    let summary = run(
        &fixture,
        vec![
            reader("Reader A", vec![card(&good)]),
            reader("Reader B", vec![pulled_by(&pulled, Pull::AfterApdus(2))]),
        ],
        Some(2),
        &progress,
        &stop,
    );
    progress.note("stopping");
    progress.finish();
    assert_eq!((summary.done(), summary.failed()), (1, 1));
}

#[test]
fn median_of_odd_even_and_no_values() {
    let ms = Duration::from_millis;
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[ms(7)]), Some(ms(7)));
    assert_eq!(median(&[ms(9), ms(1), ms(5)]), Some(ms(5)));
    assert_eq!(median(&[ms(4), ms(1), ms(10), ms(2)]), Some(ms(3)));
}

fn record(reader: &str, outcome: CardOutcome, millis: u64) -> CardRecord {
    CardRecord {
        reader: reader.to_owned(),
        serial: Some("0123456789abcdef".to_owned()),
        step: "PUT DATA (certificates)",
        outcome,
        apdus: 6,
        elapsed: Duration::from_millis(millis),
    }
}

fn done(journal_id: i64) -> CardOutcome {
    CardOutcome::Done {
        journal_id,
        lifecycle_before: Lifecycle::Personalization,
    }
}

#[test]
fn summary_counts_and_medians_per_reader() {
    let summary = StationSummary {
        readers: vec!["A".to_owned(), "B".to_owned(), "C".to_owned()],
        cards: vec![
            record("A", done(1), 100),
            record("B", done(2), 300),
            record(
                "A",
                CardOutcome::Failed {
                    error: HostError::CardRemoved {
                        step: "PUT DATA (certificates)",
                    },
                    journal: JournalNote::MarkedFailed(3),
                },
                5000,
            ),
            record("A", done(4), 200),
            record("B", CardOutcome::Skipped, 1),
        ],
    };
    assert_eq!(
        (summary.done(), summary.failed(), summary.skipped()),
        (3, 1, 1)
    );
    // Failed and skipped cards do not enter the median.
    assert_eq!(summary.median_time(), Some(Duration::from_millis(200)));
    let tallies = summary.per_reader();
    assert_eq!(
        tallies[0],
        ReaderTally {
            reader: "A".to_owned(),
            done: 2,
            failed: 1,
            skipped: 0,
            median: Some(Duration::from_millis(150)),
        }
    );
    assert_eq!((tallies[1].done, tallies[1].skipped), (1, 1));
    assert_eq!(tallies[2].median, None);
    let text = summary.to_string();
    assert!(
        text.starts_with("cards done: 3, failed: 1, skipped: 1; median time per card: 200.0 ms\n"),
        "{text}"
    );
    assert!(
        text.contains("  A  done 2, failed 1, skipped 0; median 150.0 ms\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "failed cards:\n  reader \"A\": module 0123456789abcdef: card removed during PUT DATA (certificates); journal entry 3 marked failed\n"
        ),
        "{text}"
    );
}

#[test]
fn log_lines_are_key_value_with_quoting() {
    assert_eq!(field("abc"), "abc");
    assert_eq!(field(""), "\"\"");
    assert_eq!(field("two words"), "\"two words\"");
    assert_eq!(field("say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
    assert_eq!(field("a=b"), "\"a=b\"");

    let line = |event: &StationEvent<'_>| log_line("Virtual PCD 00 00", event);
    assert_eq!(
        line(&StationEvent::Waiting).as_deref(),
        Some("reader=\"Virtual PCD 00 00\" step=waiting")
    );
    assert_eq!(
        line(&StationEvent::Apdu {
            serial: Some("0123456789abcdef"),
            step: "MUTUAL AUTHENTICATE",
            apdus: 3,
            new_step: true,
        })
        .as_deref(),
        Some(
            "reader=\"Virtual PCD 00 00\" serial=0123456789abcdef step=\"MUTUAL AUTHENTICATE\" apdus=3"
        )
    );
    assert_eq!(
        line(&StationEvent::Apdu {
            serial: None,
            step: "PUT DATA (certificates)",
            apdus: 7,
            new_step: false,
        }),
        None
    );
    let finished = record("Virtual PCD 00 00", done(7), 812);
    assert_eq!(
        line(&StationEvent::Finished(&finished)).as_deref(),
        Some(
            "reader=\"Virtual PCD 00 00\" serial=0123456789abcdef step=done result=done apdus=6 ms=812.0 journal=7"
        )
    );
    let failed = record(
        "Virtual PCD 00 00",
        CardOutcome::Failed {
            error: HostError::CardRemoved {
                step: "GENERATE ASYMMETRIC KEY PAIR",
            },
            journal: JournalNote::NothingIssued,
        },
        40,
    );
    assert_eq!(
        line(&StationEvent::Finished(&failed)).as_deref(),
        Some(
            "reader=\"Virtual PCD 00 00\" serial=0123456789abcdef step=\"PUT DATA (certificates)\" result=failed apdus=6 ms=40.0 journal=- error=\"card removed during GENERATE ASYMMETRIC KEY PAIR; nothing was issued\""
        )
    );
}

#[test]
fn plain_log_writes_lines() {
    let log = PlainLog::new(Vec::new());
    log.event("R", &StationEvent::Inserted);
    log.event("R", &StationEvent::Removed);
    let text = String::from_utf8(log.into_inner()).expect("utf-8");
    assert_eq!(text, "reader=R step=inserted\nreader=R step=removed\n");
}

#[test]
fn commands_are_named_by_instruction() {
    assert_eq!(command_name(&[0x00, 0xA4, 0x04, 0x00]), Some("SELECT"));
    assert_eq!(
        command_name(&[0x00, 0x82, 0x01, proto::AUTH_STEP_OPEN]),
        Some("MUTUAL AUTHENTICATE")
    );
    assert_eq!(
        command_name(&[0x00, 0x82, 0x01, proto::AUTH_STEP_CONFIRM]),
        Some("EXTERNAL AUTHENTICATE")
    );
    assert_eq!(
        command_name(&[0x1C, 0xDB, 0x3F, 0xFF, 0xFF]),
        Some("PUT DATA (certificates)")
    );
    assert_eq!(
        command_name(&[0x0C, 0x47, 0x80, 0x02]),
        Some("GENERATE ASYMMETRIC KEY PAIR")
    );
    assert_eq!(command_name(&[0x00, 0xC0, 0x00, 0x00, 0x00]), None);
    assert_eq!(command_name(&[0x00]), Some("APDU"));
}
