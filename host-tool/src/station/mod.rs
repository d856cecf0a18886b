//! Station mode: personalize every card inserted into any of several readers,
//! each exactly once, with one worker thread per reader.
//!
//! ```text
//!  reader 1 ── worker ─┐                      ┌─▶ StationObserver (terminal bars or log lines)
//!  reader 2 ── worker ─┼── StationEvent ──────┤
//!  reader n ── worker ─┘                      └─▶ StationSummary (done, failed, skipped, medians)
//!
//!  worker: wait (≤ poll) ─▶ inserted ─▶ connect ─▶ SELECT ─┬─ not ours / MANUFACTURED ─▶ failed
//!                                                          ├─ done in this run ───────▶ skipped
//!                                                          └─ personalize ─▶ done | failed
//!          shared by the workers: the issuance journal (Mutex), the serials done in this run,
//!          the tally (--count), the stop flag (Ctrl-C, or --count reached)
//! ```
//!
//! The logic is generic over [`CardReader`], implemented for PC/SC by
//! [`ReaderWatch`] and in the tests by an in-memory fake.
//!
//! A card pulled mid-way fails with [`HostError::CardRemoved`] naming the
//! command in flight; if its certificate was already journaled, the entry is
//! marked failed (by [`personalize()`]) and the failure says so. The module
//! itself stays consistent: it commits the certificates atomically, so it is
//! either OPERATING with everything or not OPERATING. The worker then waits
//! for the next card.
//!
//! `--count N` counts finished cards (done and failed); skipped cards do not
//! count. A worker claims one of the N places before it starts on a card, so
//! no more than N cards are touched.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use imprint_apdu::Lifecycle;
use imprint_apdu::host::personalize::SelectInfo;
use imprint_apdu::host::{
    CardLink, IssuanceJournal, IssuedCertificate, JournalError, PersonalizationOptions,
    PersonalizeError, Transport, TransportError, UnitCredentials, personalize,
};
use imprint_apdu::iso::sw;
use imprint_apdu::pki;
use imprint_apdu::proto::{self, ins};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::HostError;
use crate::pcsc::{PcscTransport, ReaderWatch, chain};

#[cfg(test)]
mod tests;

/// How long a worker waits for a reader event before it looks at the stop flag.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// Bytes of fresh randomness sent as each card's variation value (claim 10).
const VARIATION_LEN: usize = 32;

/// What changed in a reader since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderChange {
    /// Nothing (the wait timed out, or only flags we do not follow changed).
    Unchanged,
    /// A card was inserted (or removed and another inserted).
    Inserted,
    /// The card was removed.
    Removed,
    /// The reader is unavailable (unplugged, driver failure).
    Unavailable,
}

/// A reader as the station sees it: card events and connections.
pub trait CardReader: Send {
    /// The connection to a card in this reader.
    type Card: Transport;

    /// The reader's name.
    fn name(&self) -> &str;

    /// Waits up to `timeout` for a change. A card already present when the
    /// station starts is reported as inserted.
    fn wait(&mut self, timeout: Duration) -> Result<ReaderChange, HostError>;

    /// Connects to the card in the reader.
    fn connect(&mut self) -> Result<Self::Card, HostError>;

    /// APDUs actually exchanged with `card`, where the connection knows it
    /// better than a count of commands (a PC/SC connection answers repeated
    /// SELECTs from its probe). `None`: count the commands.
    fn exchanged(card: &Self::Card) -> Option<u32> {
        let _ = card;
        None
    }

    /// Called when the station is done with a card (`None` if connecting
    /// failed): closes the connection and takes the reader's state as known,
    /// so that only a new insertion is reported next.
    fn release(&mut self, card: Option<Self::Card>);
}

impl CardReader for ReaderWatch {
    type Card = PcscTransport;

    fn name(&self) -> &str {
        ReaderWatch::name(self)
    }

    fn wait(&mut self, timeout: Duration) -> Result<ReaderChange, HostError> {
        ReaderWatch::wait(self, timeout)
    }

    fn connect(&mut self) -> Result<PcscTransport, HostError> {
        ReaderWatch::connect(self)
    }

    fn exchanged(card: &PcscTransport) -> Option<u32> {
        Some(card.exchanged())
    }

    fn release(&mut self, card: Option<PcscTransport>) {
        if let Some(card) = card {
            // A card that is gone needs no disconnect; other failures leave
            // nothing we could act on.
            let _ = card.close();
        }
        self.settle();
    }
}

/// What happened on a reader, for progress displays.
#[derive(Debug)]
pub enum StationEvent<'a> {
    /// The reader waits for a card.
    Waiting,
    /// A card was inserted.
    Inserted,
    /// A command APDU is about to go to the card.
    Apdu {
        /// The module serial, once SELECT told it.
        serial: Option<&'a str>,
        /// The command (chained pieces and GET RESPONSE count for their command).
        step: &'static str,
        /// APDUs sent to this card so far, this one included.
        apdus: u32,
        /// Whether this is the first APDU of `step`.
        new_step: bool,
    },
    /// The station is finished with a card.
    Finished(&'a CardRecord),
    /// The card was left untouched: `--count` places are all taken.
    Ignored,
    /// The card was removed.
    Removed,
    /// The reader became unavailable.
    ReaderUnavailable,
    /// Watching the reader failed; the worker retries.
    ReaderError(&'a HostError),
}

/// Receives the workers' events. Called from the worker threads.
pub trait StationObserver: Sync {
    /// One event on `reader`.
    fn event(&self, reader: &str, event: &StationEvent<'_>);
}

/// What became of the issuance journal entry of a failed card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalNote {
    /// The card failed before personalization began.
    NotStarted,
    /// Personalization began but no certificate was issued.
    NothingIssued,
    /// The certificate was journaled and its entry marked failed.
    MarkedFailed(i64),
    /// The certificate was journaled but marking its entry failed did not work.
    LeftIssued(i64),
}

/// What became of one card.
#[derive(Debug)]
pub enum CardOutcome {
    /// Personalized: the module is OPERATING with its new certificate.
    Done {
        /// The journal entry of its certificate.
        journal_id: i64,
        /// The lifecycle it was in before.
        lifecycle_before: Lifecycle,
    },
    /// Not personalized.
    Failed {
        /// Why.
        error: HostError,
        /// Its journal entry, if any.
        journal: JournalNote,
    },
    /// Already personalized in this station run; left as it is.
    Skipped,
}

/// One card the station finished with.
#[derive(Debug)]
pub struct CardRecord {
    /// The reader it was in.
    pub reader: String,
    /// The module serial, if SELECT told it.
    pub serial: Option<String>,
    /// The command in flight when the station finished (for failures: where it failed).
    pub step: &'static str,
    /// What became of it.
    pub outcome: CardOutcome,
    /// APDUs exchanged with it (on the wire where the connection tells; see
    /// [`CardReader::exchanged`]).
    pub apdus: u32,
    /// From insertion to the end of its handling.
    pub elapsed: Duration,
}

impl CardRecord {
    /// Whether it was personalized.
    pub fn is_done(&self) -> bool {
        matches!(self.outcome, CardOutcome::Done { .. })
    }

    /// Whether it failed.
    pub fn is_failed(&self) -> bool {
        matches!(self.outcome, CardOutcome::Failed { .. })
    }

    /// Whether it was skipped.
    pub fn is_skipped(&self) -> bool {
        matches!(self.outcome, CardOutcome::Skipped)
    }

    /// For a failure: the reason and the fate of its journal entry, e.g.
    /// `card removed during PUT DATA (certificates); journal entry 7 marked failed`.
    pub fn problem(&self) -> Option<String> {
        let CardOutcome::Failed { error, journal } = &self.outcome else {
            return None;
        };
        let mut text = chain(error);
        match journal {
            JournalNote::NotStarted => {}
            JournalNote::NothingIssued => text.push_str("; nothing was issued"),
            JournalNote::MarkedFailed(id) => {
                text.push_str(&format!("; journal entry {id} marked failed"));
            }
            JournalNote::LeftIssued(id) => {
                text.push_str(&format!(
                    "; journal entry {id} could not be marked failed and stays 'issued'"
                ));
            }
        }
        Some(text)
    }
}

impl fmt::Display for CardRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reader {:?}: ", self.reader)?;
        if let Some(serial) = &self.serial {
            write!(f, "module {serial}: ")?;
        }
        match &self.outcome {
            CardOutcome::Done {
                journal_id,
                lifecycle_before,
            } => write!(
                f,
                "personalized (was {lifecycle_before}) in {:.1} ms, {} APDUs, journal entry {journal_id}",
                millis(self.elapsed),
                self.apdus
            ),
            CardOutcome::Failed { .. } => f.write_str(&self.problem().unwrap_or_default()),
            CardOutcome::Skipped => f.write_str("already personalized in this run; skipped"),
        }
    }
}

/// Counts of one reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderTally {
    /// The reader.
    pub reader: String,
    /// Cards personalized.
    pub done: usize,
    /// Cards failed.
    pub failed: usize,
    /// Cards skipped.
    pub skipped: usize,
    /// Median time of its personalized cards.
    pub median: Option<Duration>,
}

/// What a station run did.
#[derive(Debug, Default)]
pub struct StationSummary {
    /// The readers watched, in the order given.
    pub readers: Vec<String>,
    /// Every card, in the order the station finished with them.
    pub cards: Vec<CardRecord>,
}

impl StationSummary {
    /// Cards personalized.
    pub fn done(&self) -> usize {
        self.cards.iter().filter(|card| card.is_done()).count()
    }

    /// Cards failed.
    pub fn failed(&self) -> usize {
        self.cards.iter().filter(|card| card.is_failed()).count()
    }

    /// Cards skipped (already personalized in this run).
    pub fn skipped(&self) -> usize {
        self.cards.iter().filter(|card| card.is_skipped()).count()
    }

    /// Median time per personalized card (failed and skipped cards excluded).
    pub fn median_time(&self) -> Option<Duration> {
        median(
            &self
                .cards
                .iter()
                .filter(|card| card.is_done())
                .map(|card| card.elapsed)
                .collect::<Vec<_>>(),
        )
    }

    /// Counts per reader, in reader order.
    pub fn per_reader(&self) -> Vec<ReaderTally> {
        self.readers
            .iter()
            .map(|reader| {
                let cards = || self.cards.iter().filter(|card| &card.reader == reader);
                ReaderTally {
                    reader: reader.clone(),
                    done: cards().filter(|card| card.is_done()).count(),
                    failed: cards().filter(|card| card.is_failed()).count(),
                    skipped: cards().filter(|card| card.is_skipped()).count(),
                    median: median(
                        &cards()
                            .filter(|card| card.is_done())
                            .map(|card| card.elapsed)
                            .collect::<Vec<_>>(),
                    ),
                }
            })
            .collect()
    }

    /// Whether no card failed.
    pub fn all_done(&self) -> bool {
        self.failed() == 0
    }
}

impl fmt::Display for StationSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cards done: {}, failed: {}, skipped: {}; median time per card: {}",
            self.done(),
            self.failed(),
            self.skipped(),
            show_median(self.median_time())
        )?;
        let width = self.readers.iter().map(String::len).max().unwrap_or(0);
        for tally in self.per_reader() {
            writeln!(
                f,
                "  {:<width$}  done {}, failed {}, skipped {}; median {}",
                tally.reader,
                tally.done,
                tally.failed,
                tally.skipped,
                show_median(tally.median),
            )?;
        }
        let failures: Vec<_> = self.cards.iter().filter(|card| card.is_failed()).collect();
        if !failures.is_empty() {
            writeln!(f, "failed cards:")?;
            for card in failures {
                writeln!(f, "  {card}")?;
            }
        }
        Ok(())
    }
}

/// The median of `values` (the mean of the two middle values for an even
/// count); `None` when empty.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        len if len % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2),
    }
}

fn show_median(value: Option<Duration>) -> String {
    value.map_or_else(|| "-".to_owned(), |d| format!("{:.1} ms", millis(d)))
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Everything a station run needs besides its readers.
pub struct StationConfig<'a> {
    /// The personalization unit.
    pub unit: &'a UnitCredentials,
    /// The issuance journal, shared by the workers.
    pub journal: &'a Mutex<dyn IssuanceJournal + Send + 'a>,
    /// Stop after this many finished (done or failed) cards; `None`: until stopped.
    pub count: Option<usize>,
    /// Lifetime of module certificates in years.
    pub validity_years: u32,
    /// Receives progress events.
    pub observer: &'a dyn StationObserver,
    /// Set to stop: workers finish the card in hand, then return. The station
    /// sets it itself when `count` cards are finished.
    pub stop: &'a AtomicBool,
    /// How long a worker waits for reader events between looks at `stop`.
    pub poll: Duration,
}

/// Runs the station on `readers` until `config.stop` is set or
/// `config.count` cards are finished, and returns what it did.
pub fn run_station<R: CardReader>(readers: Vec<R>, config: &StationConfig<'_>) -> StationSummary {
    let names: Vec<String> = readers.iter().map(|r| r.name().to_owned()).collect();
    if config.count == Some(0) {
        return StationSummary {
            readers: names,
            cards: Vec::new(),
        };
    }
    let shared = Shared {
        config,
        seen: Mutex::new(HashSet::new()),
        tally: Mutex::new(Tally::default()),
    };
    std::thread::scope(|scope| {
        for reader in readers {
            let shared = &shared;
            scope.spawn(move || worker(reader, shared));
        }
    });
    let tally = shared
        .tally
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    StationSummary {
        readers: names,
        cards: tally.records,
    }
}

struct Shared<'c, 'a> {
    config: &'c StationConfig<'a>,
    /// Serials personalized in this run.
    seen: Mutex<HashSet<String>>,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    claimed: usize,
    finished: usize,
    records: Vec<CardRecord>,
}

impl Shared<'_, '_> {
    fn stopping(&self) -> bool {
        self.config.stop.load(Ordering::SeqCst)
    }

    /// Takes one of the `--count` places; false if all are taken.
    fn claim(&self) -> bool {
        let mut tally = lock(&self.tally);
        match self.config.count {
            Some(count) if tally.claimed >= count => false,
            _ => {
                tally.claimed += 1;
                true
            }
        }
    }

    fn finish(&self, record: CardRecord) {
        self.config
            .observer
            .event(&record.reader, &StationEvent::Finished(&record));
        let counted = !record.is_skipped();
        let mut tally = lock(&self.tally);
        tally.records.push(record);
        if counted {
            tally.finished += 1;
            if self
                .config
                .count
                .is_some_and(|count| tally.finished >= count)
            {
                self.config.stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked holding a lock leaves consistent data behind:
    // the journal is transactional and the tallies are plain counters.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn worker<R: CardReader>(mut reader: R, shared: &Shared<'_, '_>) {
    let config = shared.config;
    let name = reader.name().to_owned();
    config.observer.event(&name, &StationEvent::Waiting);
    let mut troubled = false;
    while !shared.stopping() {
        match reader.wait(config.poll) {
            Ok(ReaderChange::Unchanged) => {
                if troubled {
                    troubled = false;
                    config.observer.event(&name, &StationEvent::Waiting);
                }
            }
            Ok(ReaderChange::Inserted) => {
                troubled = false;
                handle_card(&mut reader, shared);
            }
            Ok(ReaderChange::Removed) => {
                troubled = false;
                config.observer.event(&name, &StationEvent::Removed);
                config.observer.event(&name, &StationEvent::Waiting);
            }
            Ok(ReaderChange::Unavailable) => {
                if !troubled {
                    config
                        .observer
                        .event(&name, &StationEvent::ReaderUnavailable);
                }
                troubled = true;
                std::thread::sleep(config.poll);
            }
            Err(err) => {
                if !troubled {
                    config
                        .observer
                        .event(&name, &StationEvent::ReaderError(&err));
                }
                troubled = true;
                std::thread::sleep(config.poll);
            }
        }
    }
}

/// How handling a card ended, before it is recorded.
enum Conclusion {
    Recorded(CardOutcome),
    /// All `--count` places are taken; the card was left untouched.
    Ignored,
}

fn handle_card<R: CardReader>(reader: &mut R, shared: &Shared<'_, '_>) {
    let config = shared.config;
    let started = Instant::now();
    let name = reader.name().to_owned();
    config.observer.event(&name, &StationEvent::Inserted);
    let tracker = Tracker::new(&name, config.observer);
    let conclusion = match reader.connect() {
        Ok(card) => {
            let mut link = CardLink::new(Observed {
                inner: card,
                tracker: &tracker,
                wire: R::exchanged,
            });
            let conclusion = examine_and_personalize(&mut link, &tracker, shared);
            let card = link.into_transport().inner;
            if let Some(apdus) = R::exchanged(&card) {
                tracker.apdus.set(apdus);
            }
            reader.release(Some(card));
            conclusion
        }
        Err(error) => {
            reader.release(None);
            let error = match error {
                HostError::NoCard(_) => HostError::CardRemoved { step: "connect" },
                other => other,
            };
            shared.fail(error)
        }
    };
    match conclusion {
        Conclusion::Recorded(outcome) => shared.finish(CardRecord {
            reader: name.clone(),
            serial: tracker.serial.borrow().clone(),
            step: tracker.step.get(),
            outcome,
            apdus: tracker.apdus.get(),
            elapsed: started.elapsed(),
        }),
        Conclusion::Ignored => config.observer.event(&name, &StationEvent::Ignored),
    }
}

impl Shared<'_, '_> {
    /// A failure before personalization began (it still takes a place).
    fn fail(&self, error: HostError) -> Conclusion {
        if self.claim() {
            Conclusion::Recorded(CardOutcome::Failed {
                error,
                journal: JournalNote::NotStarted,
            })
        } else {
            Conclusion::Ignored
        }
    }
}

fn examine_and_personalize<T: Transport>(
    link: &mut CardLink<Observed<'_, '_, T>>,
    tracker: &Tracker<'_>,
    shared: &Shared<'_, '_>,
) -> Conclusion {
    let config = shared.config;
    let response = match link.send([0x00, ins::SELECT, 0x04, 0x00], &proto::AID) {
        Ok(response) => response,
        Err(err) => return shared.fail(transport_failure(err, tracker)),
    };
    if response.sw != sw::OK {
        return shared.fail(HostError::NotImprintModule { sw: response.sw });
    }
    let Some(info) = SelectInfo::parse(&response.data) else {
        return shared.fail(HostError::MalformedSelect);
    };
    let serial = info.serial.map(|serial| pki::serial_hex(&serial));
    tracker.serial.replace(serial.clone());
    if info.lifecycle == Lifecycle::Manufactured {
        return shared.fail(HostError::Personalize(PersonalizeError::NotManufactured));
    }
    if serial
        .as_ref()
        .is_some_and(|serial| lock(&shared.seen).contains(serial))
    {
        return Conclusion::Recorded(CardOutcome::Skipped);
    }
    if !shared.claim() {
        return Conclusion::Ignored;
    }
    let mut variation = vec![0u8; VARIATION_LEN];
    if getrandom::fill(&mut variation).is_err() {
        return Conclusion::Recorded(CardOutcome::Failed {
            error: HostError::Random,
            journal: JournalNote::NotStarted,
        });
    }
    let options = PersonalizationOptions {
        variation,
        validity_years: config.validity_years,
        issuer: None,
        ..Default::default()
    };
    let mut journal = CardJournal {
        journal: config.journal,
        tracker,
        recorded: None,
        marked_failed: false,
    };
    match personalize(link, &mut journal, config.unit, options) {
        Ok(report) => {
            lock(&shared.seen).insert(report.serial.clone());
            Conclusion::Recorded(CardOutcome::Done {
                journal_id: report.journal_id,
                lifecycle_before: report.lifecycle_before,
            })
        }
        Err(err) => {
            let error = match err {
                PersonalizeError::Transport(err) => transport_failure(err, tracker),
                other => HostError::Personalize(other),
            };
            let journal = match (journal.recorded, journal.marked_failed) {
                (None, _) => JournalNote::NothingIssued,
                (Some(id), true) => JournalNote::MarkedFailed(id),
                (Some(id), false) => JournalNote::LeftIssued(id),
            };
            Conclusion::Recorded(CardOutcome::Failed { error, journal })
        }
    }
}

fn transport_failure(err: TransportError, tracker: &Tracker<'_>) -> HostError {
    match err {
        TransportError::Disconnected => HostError::CardRemoved {
            step: tracker.step.get(),
        },
        other => HostError::Transport(other),
    }
}

/// The name of the command an APDU carries, as messages and progress show
/// it; `None` for GET RESPONSE, which continues the previous command.
pub fn command_name(apdu: &[u8]) -> Option<&'static str> {
    let [_, instruction, _, p2, ..] = apdu else {
        return Some("APDU");
    };
    Some(match *instruction {
        ins::SELECT => "SELECT",
        ins::AUTHENTICATE if *p2 == proto::AUTH_STEP_OPEN => "MUTUAL AUTHENTICATE",
        ins::AUTHENTICATE => "EXTERNAL AUTHENTICATE",
        ins::GENERATE_KEY => "GENERATE ASYMMETRIC KEY PAIR",
        ins::PUT_DATA => "PUT DATA (certificates)",
        ins::TERMINATE => "TERMINATE",
        ins::GET_DATA => "GET DATA",
        ins::GET_RESPONSE => return None,
        _ => "APDU",
    })
}

/// Per-card progress: the command in flight, the APDU count, the serial.
struct Tracker<'a> {
    reader: &'a str,
    observer: &'a dyn StationObserver,
    step: Cell<&'static str>,
    apdus: Cell<u32>,
    serial: RefCell<Option<String>>,
}

impl<'a> Tracker<'a> {
    fn new(reader: &'a str, observer: &'a dyn StationObserver) -> Self {
        Self {
            reader,
            observer,
            step: Cell::new("connect"),
            apdus: Cell::new(0),
            serial: RefCell::new(None),
        }
    }

    fn on_command(&self, apdu: &[u8]) {
        let apdus = self.apdus.get() + 1;
        self.apdus.set(apdus);
        let previous = self.step.get();
        let step = command_name(apdu).unwrap_or(previous);
        self.step.set(step);
        let serial = self.serial.borrow();
        self.observer.event(
            self.reader,
            &StationEvent::Apdu {
                serial: serial.as_deref(),
                step,
                apdus,
                new_step: step != previous || apdus == 1,
            },
        );
    }
}

/// A transport that tells the tracker about every command.
struct Observed<'t, 'a, T> {
    inner: T,
    tracker: &'t Tracker<'a>,
    /// APDUs on the wire, where the connection knows ([`CardReader::exchanged`]):
    /// the count is corrected after each exchange, so that progress counts
    /// the probe and not the SELECTs answered from it.
    wire: fn(&T) -> Option<u32>,
}

impl<T: Transport> Transport for Observed<'_, '_, T> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.tracker.on_command(command);
        let result = self.inner.transmit(command);
        if let Some(apdus) = (self.wire)(&self.inner) {
            self.tracker.apdus.set(apdus);
        }
        result
    }

    fn supports_extended_length(&self) -> bool {
        self.inner.supports_extended_length()
    }
}

/// The shared journal, seen by one card: remembers its entry and adds the
/// reader and command to a failure reason.
struct CardJournal<'j, 't, 'a> {
    journal: &'j Mutex<dyn IssuanceJournal + Send + 'j>,
    tracker: &'t Tracker<'a>,
    recorded: Option<i64>,
    marked_failed: bool,
}

impl IssuanceJournal for CardJournal<'_, '_, '_> {
    fn record_issued(&mut self, issued: &IssuedCertificate) -> Result<i64, JournalError> {
        let id = lock(self.journal).record_issued(issued)?;
        self.recorded = Some(id);
        Ok(id)
    }

    fn mark_installed(&mut self, id: i64) -> Result<(), JournalError> {
        lock(self.journal).mark_installed(id)
    }

    fn mark_failed(&mut self, id: i64, reason: &str) -> Result<(), JournalError> {
        let reason = format!(
            "{reason} (station, reader {:?}, during {})",
            self.tracker.reader,
            self.tracker.step.get()
        );
        lock(self.journal).mark_failed(id, &reason)?;
        self.marked_failed = true;
        Ok(())
    }
    fn tan_salt(&mut self) -> Result<Option<[u8; 32]>, JournalError> {
        lock(self.journal).tan_salt()
    }

    fn check_tan(
        &mut self,
        serial: &str,
        th: &imprint_apdu::channel::Digest48,
        proof: &[u8],
    ) -> Result<imprint_apdu::host::tan::TanCheck, JournalError> {
        lock(self.journal).check_tan(serial, th, proof)
    }
}

/// Plain log lines, one per event worth a line:
/// `reader="…" serial=… step=… result=…`. For pipes, files and CI logs.
pub struct PlainLog<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> PlainLog<W> {
    /// Logs to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<W: Write + Send> StationObserver for PlainLog<W> {
    fn event(&self, reader: &str, event: &StationEvent<'_>) {
        if let Some(line) = log_line(reader, event) {
            let mut out = lock(&self.out);
            // A closed log must not stop the station.
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// The plain log line for an event, if it gets one.
pub fn log_line(reader: &str, event: &StationEvent<'_>) -> Option<String> {
    let reader = field(reader);
    Some(match event {
        StationEvent::Waiting => format!("reader={reader} step=waiting"),
        StationEvent::Inserted => format!("reader={reader} step=inserted"),
        StationEvent::Apdu {
            serial,
            step,
            apdus,
            new_step,
        } => {
            if !new_step {
                return None;
            }
            format!(
                "reader={reader} serial={} step={} apdus={apdus}",
                serial.unwrap_or("-"),
                field(step)
            )
        }
        StationEvent::Finished(record) => {
            let serial = record.serial.as_deref().unwrap_or("-");
            match &record.outcome {
                CardOutcome::Done { journal_id, .. } => format!(
                    "reader={reader} serial={serial} step=done result=done apdus={} ms={:.1} journal={journal_id}",
                    record.apdus,
                    millis(record.elapsed)
                ),
                CardOutcome::Failed { journal, .. } => {
                    let journal = match journal {
                        JournalNote::MarkedFailed(id) | JournalNote::LeftIssued(id) => {
                            id.to_string()
                        }
                        JournalNote::NotStarted | JournalNote::NothingIssued => "-".to_owned(),
                    };
                    format!(
                        "reader={reader} serial={serial} step={} result=failed apdus={} ms={:.1} journal={journal} error={}",
                        field(record.step),
                        record.apdus,
                        millis(record.elapsed),
                        field(&record.problem().unwrap_or_default())
                    )
                }
                CardOutcome::Skipped => format!(
                    "reader={reader} serial={serial} step=SELECT result=skipped reason={}",
                    field("already personalized in this run")
                ),
            }
        }
        StationEvent::Ignored => format!(
            "reader={reader} step=SELECT result=ignored reason={}",
            field("--count reached; card left untouched")
        ),
        StationEvent::Removed => format!("reader={reader} step=removed"),
        StationEvent::ReaderUnavailable => {
            format!("reader={reader} step=reader result=unavailable")
        }
        StationEvent::ReaderError(err) => format!(
            "reader={reader} step=reader result=error error={}",
            field(&chain(*err))
        ),
    })
}

/// A log field value: bare if it has no space, quote, `=` or backslash,
/// else double-quoted with `"` and `\` escaped.
fn field(value: &str) -> String {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '=' | '\\'))
    {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// A progress display for a terminal: one spinner per reader with the card's
/// serial, the command in flight and the APDU count, a totals line, and a
/// line per finished card printed above them.
pub struct TerminalProgress {
    multi: MultiProgress,
    bars: Vec<(String, ProgressBar)>,
    totals: ProgressBar,
    counts: Mutex<[usize; 3]>,
    note: Mutex<Option<String>>,
}

impl TerminalProgress {
    /// Draws on standard output.
    pub fn new(readers: &[String]) -> Self {
        Self::with_draw_target(readers, ProgressDrawTarget::stdout())
    }

    /// Draws on `target`.
    pub fn with_draw_target(readers: &[String], target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let width = readers.iter().map(String::len).max().unwrap_or(0);
        let style = ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = readers
            .iter()
            .map(|reader| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(format!("{reader:<width$}"));
                bar.set_message("waiting for a card");
                bar.enable_steady_tick(Duration::from_millis(120));
                (reader.clone(), bar)
            })
            .collect();
        let totals = multi.add(ProgressBar::new_spinner());
        totals.set_style(
            ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        totals.set_message(totals_message([0; 3], None));
        Self {
            multi,
            bars,
            totals,
            counts: Mutex::new([0; 3]),
            note: Mutex::new(None),
        }
    }

    /// Shows a note on the totals line (e.g. that the station is stopping).
    pub fn note(&self, note: &str) {
        let counts = *lock(&self.counts);
        lock(&self.note).replace(note.to_owned());
        self.totals.set_message(totals_message(counts, Some(note)));
    }

    /// Stops the spinners, leaving their last messages on screen, and removes
    /// the totals line (the summary follows).
    pub fn finish(&self) {
        for (_, bar) in &self.bars {
            bar.finish();
        }
        self.totals.finish_and_clear();
    }

    fn bar(&self, reader: &str) -> Option<&ProgressBar> {
        self.bars
            .iter()
            .find(|(name, _)| name == reader)
            .map(|(_, bar)| bar)
    }
}

fn totals_message([done, failed, skipped]: [usize; 3], note: Option<&str>) -> String {
    format!(
        "cards done: {done}, failed: {failed}, skipped: {skipped}  ({})",
        note.unwrap_or("Ctrl-C stops after the cards in hand")
    )
}

impl StationObserver for TerminalProgress {
    fn event(&self, reader: &str, event: &StationEvent<'_>) {
        let Some(bar) = self.bar(reader) else {
            return;
        };
        match event {
            StationEvent::Waiting | StationEvent::Removed => bar.set_message("waiting for a card"),
            StationEvent::Inserted => bar.set_message("card inserted"),
            StationEvent::Apdu {
                serial,
                step,
                apdus,
                ..
            } => bar.set_message(format!(
                "{} {step} ({apdus} APDUs)",
                serial.unwrap_or("card")
            )),
            StationEvent::Finished(record) => {
                let serial = record.serial.as_deref().unwrap_or("card");
                let index = match &record.outcome {
                    CardOutcome::Done { .. } => {
                        bar.set_message(format!(
                            "{serial} done in {:.0} ms; remove the card",
                            millis(record.elapsed)
                        ));
                        0
                    }
                    CardOutcome::Failed { .. } => {
                        bar.set_message(format!(
                            "{serial} FAILED: {}; remove the card",
                            record.problem().unwrap_or_default()
                        ));
                        1
                    }
                    CardOutcome::Skipped => {
                        bar.set_message(format!(
                            "{serial} already done in this run; remove the card"
                        ));
                        2
                    }
                };
                let counts = {
                    let mut counts = lock(&self.counts);
                    counts[index] += 1;
                    *counts
                };
                let note = lock(&self.note).clone();
                self.totals
                    .set_message(totals_message(counts, note.as_deref()));
                // Scrollback keeps a line per card.
                let _ = self.multi.println(record.to_string());
            }
            StationEvent::Ignored => {
                bar.set_message("--count reached; card left untouched");
            }
            StationEvent::ReaderUnavailable => bar.set_message("reader unavailable"),
            StationEvent::ReaderError(err) => {
                bar.set_message(format!("reader error: {}", chain(*err)));
            }
        }
    }
}
