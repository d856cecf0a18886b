//! Personalization through a relay on loopback (claim 14) against a direct
//! local personalization, measured in the same run, with the APDU count of
//! each.
//!
//! ```text
//!  setup (not timed): manufacturer, central system, unit (its journal in SQLite),
//!                     remote::Server on 127.0.0.1:0 in a thread, relay key registered
//!  per round, each flow in turn, on a module manufactured for it (file-backed key memory
//!  in the bench's temporary directory, powered up afresh; not timed):
//!    Direct:  ⟦ personalize(module link, journal, unit) ⟧
//!    Relayed: ⟦ connect ─▶ relay_personalization ─▶ PERSONALIZED ⟧ ─▶ the unit's log line
//!    HandedOver (claim 15, a second service offering direct connections; the module a
//!      NetworkedModule): ⟦ connect ─▶ relay_personalization (handshake, offer, HANDED OVER)
//!      ∥ the module dials, DIRECT, GENERATE, PUT DATA ─▶ both PERSONALIZED ⟧ ─▶ log line
//!  ⟦ ⟧ timed; every run is a first personalization (PERSONALIZATION ─▶ OPERATING)
//! ```
//!
//! The flows alternate within each round so that both see the same machine
//! (load, caches, disk) over the whole run; each gets one run not timed
//! first. A further flow is one more [`Flow`] variant and one more method of
//! [`Rig`] returning a [`Sample`].

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::host::{CardLink, PersonalizationOptions, UnitCredentials, personalize};
use imprint_apdu::proto::Lifecycle;
use imprint_central::client;
use p384::ecdsa::SigningKey;

use super::Timings;
use crate::HostError;
use crate::journal::SqliteJournal;
use crate::module;
use crate::remote::{self, ConnectionLog, RemoteError, ServeConfig, Server};
use crate::roles::{self, Manufacturer};

/// Bytes of fresh randomness sent as each module's variation value, as
/// `imprint personalizer serve` sends.
const VARIATION_LEN: usize = 32;

/// How long either side of a relayed run waits for the other, and how long
/// the bench waits for the unit's log line of a finished run.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Frames of a relayed run besides the COMMAND/RESPONSE pairs: HELLO, RELAY
/// CHALLENGE, RELAY AUTH and PERSONALIZED.
const HANDSHAKE_FRAMES: u32 = 4;

/// Frames a hand-over adds besides COMMAND/RESPONSE pairs: HANDED OVER to
/// the relay, and on the module's own connection DIRECT and PERSONALIZED.
const HAND_OVER_FRAMES: u32 = 3;

/// A failure of the relay benchmark.
#[derive(Debug, thiserror::Error)]
pub enum RelayBenchError {
    /// Setting up the roles, a module or the journal, or a direct run, failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The unit's service or a relayed run failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The bench's temporary directory could not be created.
    #[error("cannot create the benchmark's temporary directory")]
    TempDir(#[source] io::Error),
    /// The unit's side of a relayed run ended otherwise than installed.
    #[error("the unit's side of a relayed run failed: {0}")]
    Unit(String),
    /// The claim-15 flow did not move onto the module's direct connection.
    #[error("the run was not handed over to the module's direct connection")]
    NotHandedOver,
    /// The unit did not log the end of a relayed run in time.
    #[error("the unit did not report the end of a relayed run within {0:?}")]
    UnitSilent(Duration),
    /// A run found the module in another state than a first personalization needs.
    #[error("{flow}: the module was {found} before the run, not PERSONALIZATION")]
    NotFirst {
        /// The flow.
        flow: Flow,
        /// The lifecycle found.
        found: Lifecycle,
    },
    /// Two runs of one flow exchanged different numbers of APDUs or frames,
    /// so the counts printed would describe neither.
    #[error("{flow}: the APDU or frame count changed between runs ({first:?}, then {then:?})")]
    Inconsistent {
        /// The flow.
        flow: Flow,
        /// The counts of the first run.
        first: Counts,
        /// The counts of a later run.
        then: Counts,
    },
}

/// The ways of personalizing a module that the benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The baseline: `personalize()` on a module in this process, as
    /// `imprint personalize --module` and the station do.
    Direct,
    /// The unit as a network service on loopback and a relay between it and
    /// a module in this process (claim 14), as `imprint personalizer serve`
    /// and `imprint relay --module` do.
    Relayed,
    /// Claim 15: the relay sets the channel up, then the module (with a
    /// network of its own) finishes over its own connection to the unit, as
    /// `imprint personalizer serve --direct` and `imprint relay --module DIR
    /// --direct` do.
    HandedOver,
}

impl Flow {
    /// Every flow, in the order of the table; the first is the baseline.
    pub const ALL: [Self; 3] = [Self::Direct, Self::Relayed, Self::HandedOver];

    /// Its row label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct (local)",
            Self::Relayed => "relayed (loopback)",
            Self::HandedOver => "relay, then direct",
        }
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What one personalization exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// APDUs the module processed (counted at the module's side of its link;
    /// each chained piece and GET RESPONSE would count).
    pub module_apdus: u32,
    /// Of them, the APDUs of the unit's `personalize()`: what went end to
    /// end between unit and module. Direct: the unit's own count. Relayed:
    /// the COMMAND frames (one logical command each; the in-process module
    /// takes extended length, so one APDU each).
    pub unit_apdus: u32,
    /// Frames over TCP, both directions; `None` without a network.
    pub frames: Option<u32>,
}

/// One personalization, measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Wall time of the personalization (what each [`Flow`] spans is in
    /// the module's diagram).
    pub elapsed: Duration,
    /// What it exchanged.
    pub counts: Counts,
}

/// One flow's timed runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowResult {
    /// The flow.
    pub flow: Flow,
    /// Wall time per personalization.
    pub timings: Timings,
    /// What each run exchanged (the same for every run).
    pub counts: Counts,
}

/// The benchmark's outcome: one row per flow, the baseline first.
#[derive(Debug, Clone)]
pub struct RelayBench {
    /// Timed runs per flow.
    pub runs: usize,
    /// One row per flow, in [`Flow::ALL`]'s order.
    pub rows: Vec<FlowResult>,
}

impl RelayBench {
    /// The row of `flow`.
    pub fn row(&self, flow: Flow) -> Option<&FlowResult> {
        self.rows.iter().find(|row| row.flow == flow)
    }

    /// The median of `flow` over the median of the direct baseline.
    pub fn ratio(&self, flow: Flow) -> Option<f64> {
        let baseline = self.row(Flow::Direct)?.timings.median.as_secs_f64();
        let median = self.row(flow)?.timings.median.as_secs_f64();
        (baseline > 0.0).then(|| median / baseline)
    }
}

/// Sets a [`Rig`] up, runs every flow once not timed, then `runs` rounds in
/// which each flow personalizes one fresh module in turn.
pub fn compare(runs: usize) -> Result<RelayBench, RelayBenchError> {
    let mut rig = Rig::new()?;
    for flow in Flow::ALL {
        rig.run(flow)?;
    }
    let mut samples: Vec<Vec<Sample>> = Flow::ALL.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs.max(1) {
        for (flow, sample) in Flow::ALL.into_iter().zip(samples.iter_mut()) {
            sample.push(rig.run(flow)?);
        }
    }
    let rows = Flow::ALL
        .into_iter()
        .zip(samples)
        .map(|(flow, samples)| summarize(flow, &samples))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RelayBench {
        runs: runs.max(1),
        rows,
    })
}

fn summarize(flow: Flow, samples: &[Sample]) -> Result<FlowResult, RelayBenchError> {
    let first = samples
        .first()
        .map(|sample| sample.counts)
        .unwrap_or(Counts {
            module_apdus: 0,
            unit_apdus: 0,
            frames: None,
        });
    if let Some(then) = samples.iter().map(|s| s.counts).find(|c| *c != first) {
        return Err(RelayBenchError::Inconsistent { flow, first, then });
    }
    let times: Vec<Duration> = samples.iter().map(|sample| sample.elapsed).collect();
    Ok(FlowResult {
        flow,
        timings: Timings::of(&times).unwrap_or_default(),
        counts: first,
    })
}

/// Everything the flows share: the roles and modules in a temporary
/// directory (removed when dropped), the unit's journal, its service on
/// loopback and a registered relay key.
pub struct Rig {
    dir: PathBuf,
    manufacturer: Manufacturer,
    unit: UnitCredentials,
    journal: SqliteJournal,
    relay_key: SigningKey,
    unit_address: SocketAddr,
    unit_logs: Receiver<ConnectionLog>,
    direct_address: SocketAddr,
    direct_logs: Receiver<ConnectionLog>,
    modules: usize,
    // Last, so dropped last: the directory outlives the journal and modules in it.
    _tmp: tempfile::TempDir,
}

impl Rig {
    /// Creates the manufacturer, the central system and the unit (installed,
    /// its journal created), a relay key registered with the unit, and starts
    /// the unit's service on 127.0.0.1 (any free port) in a thread of its
    /// own. The service thread lives until the process ends:
    /// [`Server::run`] serves forever, and idles in `accept` afterwards.
    pub fn new() -> Result<Self, RelayBenchError> {
        let tmp = tempfile::Builder::new()
            .prefix("imprint-bench-relay-")
            .tempdir()
            .map_err(RelayBenchError::TempDir)?;
        let dir = tmp.path().to_path_buf();
        let roles::Roles {
            manufacturer,
            unit_dir,
            unit,
            ..
        } = roles::create_all(&dir, "Imprint bench")?;
        let mut journal = SqliteJournal::open(&roles::journal_path(&unit_dir))?;

        let relay_dir = dir.join("relay");
        remote::init_relay(&relay_dir)?;
        let public = remote::read_relay_public_key(&relay_dir.join(remote::RELAY_PUBLIC_KEY))?;
        journal.register_relay("bench-relay", &public)?;
        let relay_key = remote::load_relay_key(&relay_dir)?;

        let config = ServeConfig {
            unit_dir,
            registered_relays_only: true,
            max_connections: 4,
            timeout: TIMEOUT,
            direct_address: None,
            require_tan: false,
        };
        let (unit_address, unit_logs) = serve(Server::bind("127.0.0.1:0", config.clone())?)?;
        let mut offering = Server::bind("127.0.0.1:0", config)?;
        let offered = offering.local_addr()?;
        offering.set_direct_address(Some(offered.to_string()))?;
        let (direct_address, direct_logs) = serve(offering)?;
        Ok(Self {
            dir,
            manufacturer,
            unit,
            journal,
            relay_key,
            unit_address,
            unit_logs,
            direct_address,
            direct_logs,
            modules: 0,
            _tmp: tmp,
        })
    }

    /// One personalization by `flow` of a freshly manufactured module.
    pub fn run(&mut self, flow: Flow) -> Result<Sample, RelayBenchError> {
        match flow {
            Flow::Direct => self.direct(),
            Flow::Relayed => self.relayed(),
            Flow::HandedOver => self.handed_over(),
        }
    }

    /// Manufactures a module in a directory of its own and powers it up
    /// afresh, as a module arrives at a unit or a relay.
    fn fresh_module(&mut self) -> Result<module::ModuleLink, RelayBenchError> {
        self.modules += 1;
        let dir = self.dir.join("modules").join(self.modules.to_string());
        let mut link = module::open(&dir, true)?;
        manufacture(
            &mut link,
            self.manufacturer.credentials(),
            roles::DEFAULT_IDENTITY_YEARS,
        )
        .map_err(HostError::from)?;
        drop(link);
        Ok(module::open(&dir, false)?)
    }

    /// The baseline: the unit's `personalize()` straight on the module's
    /// link, journaled in the unit's journal (opened once, as a station
    /// does). Timed: the personalization alone.
    pub fn direct(&mut self) -> Result<Sample, RelayBenchError> {
        let mut link = self.fresh_module()?;
        let options = options()?;
        let before = link.apdu_count();
        let started = Instant::now();
        let report = personalize(&mut link, &mut self.journal, &self.unit, options)
            .map_err(HostError::from)?;
        let elapsed = started.elapsed();
        first_personalization(Flow::Direct, report.lifecycle_before)?;
        Ok(Sample {
            elapsed,
            counts: Counts {
                module_apdus: link.apdu_count() - before,
                unit_apdus: report.apdus,
                frames: None,
            },
        })
    }

    /// Through the relay: connecting to the unit's service, the relay's
    /// SELECT and authentication, every APDU as a COMMAND/RESPONSE frame
    /// pair, up to the PERSONALIZED frame. The unit opens its journal per
    /// connection and records the presentation, as `serve` always does;
    /// that is part of what a relayed run costs. Timed: connect to
    /// PERSONALIZED; the unit's log line is awaited afterwards, so that its
    /// end of the connection never overlaps the next run.
    pub fn relayed(&mut self) -> Result<Sample, RelayBenchError> {
        let mut link = self.fresh_module()?;
        let before = link.apdu_count();
        let started = Instant::now();
        let mut stream =
            client::connect(&self.unit_address.to_string(), TIMEOUT).map_err(RemoteError::from)?;
        let report = remote::relay_personalization(&mut link, &mut stream, &self.relay_key)?;
        let elapsed = started.elapsed();
        drop(stream);
        await_unit(&self.unit_logs)?;
        // The relay's own SELECT (for the serial it presents in HELLO) is
        // its only command that is not one of the unit's COMMAND frames.
        let commands = report.commands.saturating_sub(1);
        Ok(Sample {
            elapsed,
            counts: Counts {
                module_apdus: link.apdu_count() - before,
                unit_apdus: commands,
                frames: Some(2 * commands + HANDSHAKE_FRAMES),
            },
        })
    }
}

impl Rig {
    /// Claim 15: the relay's connect, SELECT, authentication, handshake and
    /// the sealed offer; then the module's own connection (DIRECT,
    /// GENERATE, PUT DATA). Timed: connect until both the relay and the
    /// module's runtime have the unit's PERSONALIZED.
    pub fn handed_over(&mut self) -> Result<Sample, RelayBenchError> {
        let applet = self.fresh_module()?.into_transport().into_applet();
        let module = remote::NetworkedModule::new(applet, TIMEOUT);
        let mut local = CardLink::new(module.clone());
        let started = Instant::now();
        let mut stream = client::connect(&self.direct_address.to_string(), TIMEOUT)
            .map_err(RemoteError::from)?;
        let report = remote::relay_personalization(&mut local, &mut stream, &self.relay_key)?;
        let runs = module.finish_direct_runs();
        let elapsed = started.elapsed();
        drop(stream);
        await_unit(&self.direct_logs)?;
        if !report.handed_over {
            return Err(RelayBenchError::NotHandedOver);
        }
        let mut direct_commands = 0;
        for run in runs {
            direct_commands += run?.commands;
        }
        // Relayed: the relay's SELECT, then the unit's commands up to the offer.
        let relayed = report.commands.saturating_sub(1);
        let unit_apdus = relayed + direct_commands;
        Ok(Sample {
            elapsed,
            counts: Counts {
                module_apdus: local.apdu_count() + direct_commands,
                unit_apdus,
                frames: Some(2 * unit_apdus + HANDSHAKE_FRAMES + HAND_OVER_FRAMES),
            },
        })
    }
}

/// Runs `server` in a thread of its own until the process ends; its log
/// lines arrive on the receiver.
fn serve(server: Server) -> Result<(SocketAddr, Receiver<ConnectionLog>), RelayBenchError> {
    let address = server.local_addr()?;
    let (sender, logs) = channel();
    std::thread::spawn(move || {
        // Serves until the process ends; its error would only be a
        // listening socket gone, which the next relayed run reports.
        let _ = server.run(Arc::new(move |log: &ConnectionLog| {
            let _ = sender.send(log.clone());
        }));
    });
    Ok((address, logs))
}

/// Waits for the unit's log line of the run that just ended, so that its end
/// of the connection never overlaps the next run.
fn await_unit(logs: &Receiver<ConnectionLog>) -> Result<(), RelayBenchError> {
    match logs.recv_timeout(TIMEOUT) {
        Ok(ConnectionLog { result: Ok(_), .. }) => Ok(()),
        Ok(ConnectionLog {
            result: Err(reason),
            ..
        }) => Err(RelayBenchError::Unit(reason)),
        Err(_) => Err(RelayBenchError::UnitSilent(TIMEOUT)),
    }
}

/// The options `imprint personalizer serve` uses: a fresh random variation
/// value, everything else the default.
fn options() -> Result<PersonalizationOptions, RelayBenchError> {
    let mut variation = vec![0u8; VARIATION_LEN];
    getrandom::fill(&mut variation).map_err(|_| HostError::Random)?;
    Ok(PersonalizationOptions {
        variation,
        ..PersonalizationOptions::default()
    })
}

/// Both columns must be first personalizations: a re-personalization has
/// one APDU more (TERMINATE), which would make the comparison unfair.
fn first_personalization(flow: Flow, found: Lifecycle) -> Result<(), RelayBenchError> {
    if found == Lifecycle::Personalization {
        Ok(())
    } else {
        Err(RelayBenchError::NotFirst { flow, found })
    }
}
