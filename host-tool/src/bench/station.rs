//! Station throughput through `pcscd`: cards per minute with every reader
//! working, against the first reader alone.
//!
//! ```text
//!  warm-up round (all readers, not measured: every card ends OPERATING)
//!  first reader alone:  rounds of run_station(count = 1) ─┐
//!  every reader:        rounds of run_station(count = n) ─┴▶ busy time, cards/min, ratio
//!  a round: fresh ReaderWatches (a card present counts as inserted) ─▶ each card
//!           re-personalized once ─▶ busy = start ─▶ the last card finished
//! ```
//!
//! The station personalizes a card once per run, so each round is a station
//! run of its own; its busy time ends when its last card is finished (the
//! workers' stop afterwards is not counted). Within a round the readers work
//! in parallel, as at a real station; between rounds they wait for each
//! other, which a real station's operators would not, so the figure for
//! several readers is slightly pessimistic.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use imprint_apdu::host::{IssuanceJournal, UnitCredentials};

use super::Timings;
use crate::HostError;
use crate::pcsc::{self, ConnectOptions, ReaderWatch};
use crate::station::{CardOutcome, StationConfig, StationEvent, StationObserver, run_station};

/// How long a station worker waits for reader events between looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// How long a round may take before the bench gives up on it (a card that
/// left its reader would otherwise keep the station waiting).
const ROUND_LIMIT: Duration = Duration::from_secs(30);

/// Cards personalized by the station on a set of readers.
#[derive(Debug, Clone)]
pub struct Throughput {
    /// The readers.
    pub readers: Vec<String>,
    /// Cards personalized.
    pub cards: usize,
    /// The rounds' busy time, added up.
    pub busy: Duration,
    /// Per card, from insertion (the round's start) to release, as the station reports it.
    pub per_card: Timings,
}

impl Throughput {
    /// Cards per minute.
    pub fn per_minute(&self) -> f64 {
        self.cards as f64 * 60.0 / self.busy.as_secs_f64()
    }
}

/// Both configurations.
#[derive(Debug, Clone)]
pub struct StationBench {
    /// The first reader alone.
    pub one: Throughput,
    /// Every reader.
    pub all: Throughput,
}

impl StationBench {
    /// Cards per minute with every reader over cards per minute with one.
    pub fn ratio(&self) -> f64 {
        self.all.per_minute() / self.one.per_minute()
    }
}

/// Everything a station run needs besides its readers.
pub struct Setup<'a> {
    /// The personalization unit.
    pub unit: &'a UnitCredentials,
    /// The issuance journal.
    pub journal: &'a Mutex<dyn IssuanceJournal + Send + 'a>,
    /// How cards are connected.
    pub options: ConnectOptions,
    /// Lifetime of module certificates in years.
    pub validity_years: u32,
}

/// Measures station throughput on `readers` (each holding an Imprint module
/// that can be personalized): at least `cards` cards with the first reader
/// alone, and at least `cards` with every reader, after one warm-up round.
pub fn throughput(
    readers: &[String],
    setup: &Setup<'_>,
    cards: usize,
) -> Result<StationBench, HostError> {
    let Some(first) = readers.first() else {
        return Err(HostError::NoReaders);
    };
    round(readers, setup)?;
    let one = measure(std::slice::from_ref(first), setup, cards)?;
    let all = measure(readers, setup, cards)?;
    Ok(StationBench { one, all })
}

fn measure(readers: &[String], setup: &Setup<'_>, cards: usize) -> Result<Throughput, HostError> {
    let rounds = cards.max(1).div_ceil(readers.len());
    let mut busy = Duration::ZERO;
    let mut per_card = Vec::with_capacity(rounds * readers.len());
    for _ in 0..rounds {
        let (spent, times) = round(readers, setup)?;
        busy += spent;
        per_card.extend(times);
    }
    Ok(Throughput {
        readers: readers.to_vec(),
        cards: per_card.len(),
        busy,
        per_card: Timings::of(&per_card).unwrap_or_default(),
    })
}

/// One station run that personalizes the card in each reader once. Returns
/// its busy time and each card's time.
fn round(readers: &[String], setup: &Setup<'_>) -> Result<(Duration, Vec<Duration>), HostError> {
    for reader in readers {
        if !pcsc::card_present(reader)? {
            return Err(HostError::NoCard(reader.clone()));
        }
    }
    let watches = readers
        .iter()
        .map(|name| ReaderWatch::new(name, setup.options))
        .collect::<Result<Vec<_>, _>>()?;
    let clock = LastFinished::default();
    let stop = AtomicBool::new(false);
    let config = StationConfig {
        unit: setup.unit,
        journal: setup.journal,
        count: Some(readers.len()),
        validity_years: setup.validity_years,
        observer: &clock,
        stop: &stop,
        poll: POLL,
    };
    let over = AtomicBool::new(false);
    let started = Instant::now();
    let summary = std::thread::scope(|scope| {
        // A watchdog: a card that left its reader must not hang the bench.
        scope.spawn(|| {
            while !over.load(Ordering::SeqCst) && started.elapsed() < ROUND_LIMIT {
                std::thread::sleep(POLL);
            }
            stop.store(true, Ordering::SeqCst);
        });
        let summary = run_station(watches, &config);
        over.store(true, Ordering::SeqCst);
        summary
    });
    let finished = clock
        .0
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut times = Vec::with_capacity(readers.len());
    let mut served = Vec::with_capacity(readers.len());
    for card in summary.cards {
        match card.outcome {
            CardOutcome::Done { .. } => {
                times.push(card.elapsed);
                served.push(card.reader);
            }
            CardOutcome::Failed { error, .. } => {
                return Err(HostError::BenchCardFailed {
                    reader: card.reader,
                    source: Box::new(error),
                });
            }
            // A fresh run has personalized nothing yet.
            CardOutcome::Skipped => {}
        }
    }
    // The watchdog stopped a round in which a card never came.
    if let Some(idle) = readers.iter().find(|reader| !served.contains(reader)) {
        return Err(HostError::NoCard(idle.clone()));
    }
    Ok((finished.map_or(started.elapsed(), |at| at - started), times))
}

/// Notes when the last card of a round was finished.
#[derive(Default)]
struct LastFinished(Mutex<Option<Instant>>);

impl StationObserver for LastFinished {
    fn event(&self, _reader: &str, event: &StationEvent<'_>) {
        if let StationEvent::Finished(_) = event {
            let mut last = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *last = Some(Instant::now());
        }
    }
}
