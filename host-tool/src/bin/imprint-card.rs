//! `imprint-card`: a file-backed Imprint module as a virtual smartcard in
//! vsmartcard's `vpcd` reader inside `pcscd`.
//!
//! ```text
//!  --module DIR ─▶ FileKeyMemory (locked) ─▶ Applet ─▶ VirtualCard ─▶ vpcd::serve
//!                                                                      │ TCP client
//!  PC/SC clients ─▶ pcscd ─▶ vpcd reader "Virtual PCD 00 00" :35963 ◀──┘
//! ```
//!
//! With `--direct` the module has a network interface of its own (claim 15):
//! when a personalization unit offers a direct connection inside the
//! channel, this process dials the unit and finishes the personalization
//! over that connection, sharing the applet with the reader's side.
//!
//! With `--idunit DIR` the card is an identification unit (claims 16–18,
//! issued by `imprint idunit issue`) instead of a module: the user's second
//! card, for `imprint personalize --idunit-reader`.
//!
//! Exit status: 0 after SIGINT, SIGTERM or SIGHUP (the current APDU finishes,
//! the card leaves the reader); 1 on a start-up error; 86 when
//! `--fail-after-apdus` fires (the response to the last APDU is never sent).

#![forbid(unsafe_code)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use imprint_apdu::Applet;
use imprint_apdu::idunit::IdUnit;
use imprint_apdu::idunit::file::FileIdStore;
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::vpcd::{self, CardApplet, Event, ServeOptions, ServeOutcome, VirtualCard};
use imprint_host::remote::{DirectRun, NetworkedModule, RemoteError};

/// The exit status when `--fail-after-apdus` fires.
const FAIL_INJECTED_EXIT: u8 = 86;

const AFTER_HELP: &str = "\
Debian's vpcd gives two readers: \"Virtual PCD 00 00\" on port 35963 and
\"Virtual PCD 00 01\" on port 35964. pcscd must run (`pcscd -f`); the card
connects to it, and reconnects when pcscd restarts.

The card behaves like one: power off, power on and reset drop the secure
channel, the selection and pending chains; everything the module committed
stays in DIR. Only one process may use DIR at a time.

Exit status: 0 after SIGINT/SIGTERM/SIGHUP, 1 on errors, 86 when
--fail-after-apdus fires.";

/// Runs an Imprint module (file-backed key memory) as a virtual smartcard in
/// a vpcd reader of pcscd.
#[derive(Parser)]
#[command(name = "imprint-card", version, after_help = AFTER_HELP)]
struct Cli {
    /// The module directory (created, as a blank module, if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "idunit")]
    module: Option<PathBuf>,
    /// Be an identification unit instead (claims 16–18): the directory
    /// `imprint idunit issue --dir DIR` wrote.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["module", "direct"])]
    idunit: Option<PathBuf>,
    /// The vpcd reader's address (the card is the TCP client).
    #[arg(long, value_name = "HOST:PORT", default_value = vpcd::DEFAULT_ADDR)]
    vpcd: String,
    /// Power-loss testing: after processing N APDUs in all, exit at once with
    /// status 86 without sending the last response.
    #[arg(long, value_name = "N")]
    fail_after_apdus: Option<u64>,
    /// Give the module a network interface of its own (claim 15): accept a
    /// personalization unit's direct-connection offer and dial it.
    #[arg(long)]
    direct: bool,
    /// With --direct: seconds to wait for the unit on the direct connection.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    direct_timeout: u64,
    /// Log nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &cli.idunit {
        let idunit = open_idunit(dir)?;
        let what = format!(
            "identification unit {} ({} values left)",
            dir.display(),
            idunit.values_left()
        );
        return serve(cli, VirtualCard::new(idunit), &what);
    }
    let dir = cli
        .module
        .as_deref()
        .ok_or_else(|| anyhow!("--module DIR or --idunit DIR is required"))?;
    let applet = open_applet(dir)?;
    if cli.direct {
        let quiet = cli.quiet;
        // Each direct connection is reported as it ends: the card may run
        // for months.
        let report = move |outcome: &Result<DirectRun, RemoteError>| match outcome {
            Ok(run) if !quiet => eprintln!(
                "imprint-card: direct connection to {}: {} commands, journal {} at the unit",
                run.address, run.commands, run.journal_id
            ),
            Ok(_) => {}
            Err(err) => eprintln!("imprint-card: direct connection failed: {err}"),
        };
        let module = NetworkedModule::new(applet, Duration::from_secs(cli.direct_timeout))
            .with_reporter(Arc::new(report));
        let what = module.with_applet(|applet| {
            format!(
                "module {} ({}, direct connections)",
                dir.display(),
                applet.lifecycle()
            )
        });
        let code = serve(cli, VirtualCard::new(module.clone()), &what);
        // A connection still running finishes (within its own deadline).
        module.finish_direct_runs();
        return code;
    }
    let what = format!("module {} ({})", dir.display(), applet.lifecycle());
    serve(cli, VirtualCard::new(applet), &what)
}

fn log(cli: &Cli, line: &str) {
    if !cli.quiet {
        eprintln!("imprint-card: {line}");
    }
}

fn serve<A: CardApplet>(
    cli: &Cli,
    mut card: VirtualCard<A>,
    what: &str,
) -> anyhow::Result<ExitCode> {
    let addr = resolve(&cli.vpcd)?;
    let options = ServeOptions {
        fail_after_apdus: cli.fail_after_apdus,
        ..ServeOptions::default()
    };
    let stop = options.stop.clone();
    ctrlc::set_handler(move || stop.stop()).context("cannot install the signal handler")?;

    let log = |line: &str| log(cli, line);
    log(&format!("{what}, vpcd reader at {addr}"));
    let outcome = vpcd::serve(addr, &mut card, &options, &mut |event| match event {
        Event::Connected { addr } => log(&format!("connected to vpcd at {addr} (card inserted)")),
        Event::Disconnected { error: None } => log("disconnected (card removed)"),
        // A failed connection is worth reporting even when quiet.
        Event::Disconnected { error: Some(err) } => {
            eprintln!("imprint-card: disconnected (card removed): {err}");
        }
        Event::ConnectFailed {
            addr,
            attempt: 1,
            error,
        } => log(&format!(
            "cannot reach vpcd at {addr} ({error}); is pcscd running? retrying"
        )),
        Event::Reconnecting { attempt: 0, .. } => log("reconnecting"),
        _ => {}
    });
    match outcome {
        ServeOutcome::Stopped => {
            log("stopped");
            Ok(ExitCode::SUCCESS)
        }
        ServeOutcome::FailInjected { apdus } => {
            log(&format!(
                "fault injection: exiting after {apdus} APDUs without answering the last"
            ));
            // Exit at once, as a power cut would: nothing more reaches the reader.
            std::process::exit(i32::from(FAIL_INJECTED_EXIT))
        }
    }
}

/// The first IPv4 address of `host:port` (vpcd listens on IPv4 only), or the
/// first address of any family.
fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("--vpcd {addr:?} cannot be resolved as HOST:PORT"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("--vpcd {addr:?} resolves to no address"))
}

/// An identification unit `imprint idunit issue` wrote; never a new one.
fn open_idunit(dir: &Path) -> anyhow::Result<IdUnit<FileIdStore>> {
    if !dir.is_dir() {
        bail!(
            "no identification unit in {}: issue one with `imprint idunit issue --dir`",
            dir.display()
        );
    }
    let store = FileIdStore::open(dir)
        .with_context(|| format!("cannot open the identification unit in {}", dir.display()))?;
    IdUnit::new(store).map_err(|err| anyhow!("the identification unit in {}: {err}", dir.display()))
}

fn open_applet(dir: &Path) -> anyhow::Result<Applet<FileKeyMemory>> {
    let memory = FileKeyMemory::open(dir).map_err(|err| {
        if err.kind() == std::io::ErrorKind::WouldBlock {
            anyhow!(
                "module directory {} is in use by another process (another imprint-card, or an imprint command); one process at a time",
                dir.display()
            )
        } else {
            anyhow::Error::new(err).context(format!("cannot open module directory {}", dir.display()))
        }
    })?;
    Applet::new(memory).with_context(|| format!("cannot load the module in {}", dir.display()))
}
