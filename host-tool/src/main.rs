//! `imprint`: the manufacturer's and the personalization unit's command line.
//!
//! ```text
//!  imprint manufacturer init ─▶ M/manufacturer.{key,pem}
//!  imprint personalizer init ─▶ P/personalizer.{key,csr}
//!     P/personalizer.csr ─▶ imprint manufacturer certify-personalizer ─▶ by-manufacturer.pem
//!     P/personalizer.csr ─▶ imprint-central certify-personalizer ───────▶ by-central.pem
//!  imprint personalizer install ─▶ P/{by-*,central-delivery,manufacturer}.pem
//!  imprint manufacturer manufacture ─▶ module DIR or card in a reader (identity key + certificate)
//!  imprint personalize ─▶ module DIR or card in a reader OPERATING, P/journal.sqlite
//!  imprint module status | reset | export-chain;  imprint journal list
//!  imprint journal export ─▶ FILE (field unit, claim 12) ─▶ imprint journal import (main unit)
//!  imprint bench crypto | pcsc | station | relay  (P-384 rates; round trips, personalizations
//!                 and station throughput through pcscd; relayed against direct personalization)
//!  imprint readers;  imprint station ─▶ every card inserted into the readers, once each
//!  imprint relay init ─▶ R/relay.{key,pub.pem} ─▶ imprint personalizer relay register | list
//!  imprint personalizer serve ◀─TCP─ imprint relay --module|--reader (claim 14: the unit
//!                                     personalizes a module through a relay, end to end)
//! ```
//!
//! Module commands take `--module DIR` (a file-backed module in this process),
//! `--module softhsm:LABEL` (a module in this process over the SoftHSM token
//! LABEL) or `--reader NAME` (a card behind pcscd), exactly one of the two.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{ArgGroup, Args, Parser, Subcommand};
use imprint_apdu::host::identification::{
    IdUnitLink, IdentificationSource, InProcessIdUnit, id_hex,
};
use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::host::status::{ModuleStatus, read_status};
use imprint_apdu::host::{
    CardLink, PersonalizationOptions, personalize_with_identification, reset_module,
};
use imprint_apdu::idunit::IdUnit;
use imprint_apdu::idunit::file::FileIdStore;
use imprint_apdu::pki::Certificate;
use imprint_apdu::proto::len::VARIATION_MAX;
use imprint_central::display;
use imprint_central::keyfile::{self, Overwrite};
use imprint_host::journal::{IssuanceStatus, SqliteJournal, transfer};
use imprint_host::pcsc::{
    AnyTransport, ConnectOptions, LengthMode, PcscTransport, ReaderWatch, ShortReason,
};
use imprint_host::roles::{self, Manufacturer, Personalizer};
use imprint_host::station::{
    self, DEFAULT_POLL, PlainLog, StationConfig, StationObserver, TerminalProgress,
};
use imprint_host::tan_prompt::TanEntry;
use imprint_host::{HostError, bench, demo, module, pcsc, remote};

use imprint_central::out;

const AFTER_HELP: &str = "\
Step by step (each role in its own directory):
  imprint manufacturer init --dir M
  imprint-central init --dir C
  imprint personalizer init --dir P
  imprint manufacturer certify-personalizer --dir M --csr P/personalizer.csr --out by-m.pem
  imprint-central certify-personalizer --dir C --csr P/personalizer.csr --out by-c.pem
  imprint personalizer install --dir P --manufacturer-cert M/manufacturer.pem \\
      --by-manufacturer by-m.pem --central-cert C/central.pem --by-central by-c.pem
  imprint manufacturer manufacture --dir M --module MOD
  imprint personalize --personalizer P --module MOD
  imprint module status --module MOD

A module over a SoftHSM token (SOFTHSM2_CONF set; the token's user PIN in a file):
  imprint manufacturer manufacture --dir M --module softhsm:LABEL --softhsm-pin-file PIN
  imprint personalize --personalizer P --module softhsm:LABEL --softhsm-pin-file PIN

Cards in PC/SC readers: `--reader NAME` instead of `--module DIR`.
  imprint readers
  imprint manufacturer manufacture --dir M --reader \"Virtual PCD 00 00\"
  imprint personalize --personalizer P --reader \"Virtual PCD 00 00\"
  imprint station --personalizer P --count 10

Through a relay (the unit as a network service, claim 14):
  imprint relay init --dir R
  imprint personalizer relay register --personalizer P --name phone-1 --public-key R/relay.pub.pem
  imprint personalizer serve --personalizer P --listen 0.0.0.0:7400 --registered-relays-only
  imprint relay --reader \"Virtual PCD 00 00\" --personalizer unit-host:7400 --relay-key R

Every failure prints `error: <reason>` on standard error and exits with status 1.";

/// Imprint host tool: manufacturer, personalization unit and issuance journal
/// for Imprint security modules (file-backed modules reached in-process, or
/// cards in PC/SC readers).
#[derive(Parser)]
#[command(name = "imprint", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole flow on N fresh modules and verify every step: create the
    /// manufacturer, the central system and a personalization unit certified
    /// by both; manufacture and personalize each module; re-personalize module
    /// 1 (claim 2); check every module. Exits 0 only if everything verified.
    Demo {
        /// Number of modules.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
        modules: u64,
        /// Directory to work in (must not hold an earlier demo). Default: a
        /// fresh temporary directory, printed and kept for inspection.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The manufacturer: its root key M, unit certification (claim 7) and module
    /// manufacture (claim 8).
    #[command(subcommand)]
    Manufacturer(ManufacturerCommand),
    /// The personalization unit's key P and certificates.
    #[command(subcommand)]
    Personalizer(PersonalizerCommand),
    /// Personalize a module (claims 1-10): mutual authentication, a fresh module
    /// key, its certificate journaled then installed with the unit's and the
    /// central system's. An OPERATING module is re-personalized (claim 2).
    /// Prints the serial, APDU count, time and journal id.
    Personalize(PersonalizeArgs),
    /// Connect an OPERATING module to its central system (claims 1, 4, 11):
    /// the host relays the operating channel, on which the central system and
    /// the module authenticate each other end to end and the central system
    /// installs a fresh transaction key set in the module's key memory.
    Connect(ConnectArgs),
    /// Run transactions between an OPERATING module and its central system
    /// on the key set of the last `connect` (symmetric only): each --data is
    /// sealed by the module, journaled by the central system, and answered by
    /// a receipt the module checks. Prints one line per receipt.
    Transact(TransactArgs),
    /// Relay a personalization (claim 14): play the mobile appliance between
    /// the module (--module or --reader) and a remote personalization unit
    /// (--personalizer HOST:PORT). The relay authenticates with its own key
    /// and forwards the end-to-end channel's APDUs, which it cannot read.
    /// `imprint relay init --dir DIR` creates the relay's key.
    Relay(RelayArgs),
    /// Inspect, reset or export a module.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// The personalization unit's issuance journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// One-off transaction numbers (claim 13): issue them to users, list
    /// them, unlock a module serial locked by failed tries. The unit keeps
    /// only salted verifiers, never a TAN.
    #[command(subcommand)]
    Tan(TanCommand),
    /// Identification units (claims 16-18): create one and register it with
    /// the unit, or list them. The unit keeps each unit's key and only
    /// verifiers of its one-off values.
    #[command(subcommand)]
    Idunit(IdUnitCommand),
    /// List the PC/SC readers: one line each with whether a card is in it
    /// and, for a card with the Imprint applet, its serial and lifecycle.
    /// Cards are reached in shared mode and not reset: a SELECT of the
    /// Imprint applet is all they receive.
    Readers,
    /// Station mode: wait for cards on every reader (or the named ones) and
    /// personalize each newly inserted card once, several readers in
    /// parallel. Shows a progress display on a terminal, plain log lines
    /// (`reader=… serial=… step=… result=…`) otherwise. A card pulled mid-way
    /// fails with a clear message (its journal entry, if any, marked failed)
    /// and the station goes on. Ctrl-C stops after the cards in hand. Prints a
    /// summary at the end. Exit status: 0 if every finished card was
    /// personalized, 1 if any failed or the station could not start.
    Station(StationArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Where the module is: `--module DIR`, `--module softhsm:LABEL` or `--reader NAME`.
#[derive(Args)]
#[group(skip)]
#[command(group(ArgGroup::new("target").required(true).multiple(false).args(["module", "reader"])))]
struct TargetArgs {
    /// The module: its key-memory directory (a file-backed module run in this
    /// process), or `softhsm:LABEL` for a module run in this process over the
    /// SoftHSM token labelled LABEL (write `./softhsm:…` for a directory of
    /// that name).
    #[arg(long, value_name = "DIR")]
    module: Option<PathBuf>,
    /// With --module softhsm:LABEL: the file holding the token's SoftHSM user
    /// PIN (one trailing newline ignored). The library is found in the usual
    /// places or named by IMPRINT_SOFTHSM_LIB; SOFTHSM2_CONF names the tokens.
    #[arg(long, value_name = "FILE", env = "IMPRINT_SOFTHSM_PIN_FILE")]
    softhsm_pin_file: Option<PathBuf>,
    /// The card in this PC/SC reader (as `imprint readers` names it).
    #[arg(long, value_name = "NAME")]
    reader: Option<String>,
    /// With --reader: short APDUs only (command chaining and GET RESPONSE),
    /// even where the reader takes extended-length APDUs.
    #[arg(long, conflicts_with = "module")]
    short_apdus: bool,
}

/// Options of `connect`.
#[derive(Args)]
struct ConnectArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The central system's operating server (host:port).
    #[arg(long, value_name = "HOST:PORT")]
    central: String,
    /// Seconds to wait for the central system.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

/// Options of `transact`.
#[derive(Args)]
struct TransactArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The central system's operating server (host:port).
    #[arg(long, value_name = "HOST:PORT")]
    central: String,
    /// A transaction payload (text); repeat for several transactions in one session.
    #[arg(long, required = true, value_name = "TEXT")]
    data: Vec<String>,
    /// The file holding the module's user PIN, if it has one (one trailing
    /// newline ignored).
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
    /// Seconds to wait for the central system.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

fn run_connect(args: ConnectArgs) -> anyhow::Result<()> {
    use imprint_central::client;
    let target = Target::from(args.target);
    let timeout = std::time::Duration::from_secs(args.timeout);
    let mut link = target.open(false, ConnectOptions::exclusive())?;
    let mut stream = client::connect(&args.central, timeout)
        .with_context(|| format!("connecting to the central system at {}", args.central))?;
    let started = std::time::Instant::now();
    let report = client::operate(&mut link, &mut stream).with_context(|| {
        format!(
            "connecting {target} to the central system at {}",
            args.central
        )
    })?;
    out!("serial:     {}", report.serial);
    out!("key set:    {}", hex(&report.key_set_id));
    out!(
        "expires:    {}",
        imprint_central::display::utc(report.expires)
    );
    out!("commands:   {}", report.commands);
    out!(
        "time:       {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

fn run_transact(args: TransactArgs) -> anyhow::Result<()> {
    use imprint_central::client::{self, TransactionClient};
    let pin = match &args.pin_file {
        Some(path) => Some(
            imprint_pkcs11::softhsm::read_pin_file(path)
                .with_context(|| format!("reading the PIN file {}", path.display()))?,
        ),
        None => None,
    };
    let target = Target::from(args.target);
    let timeout = std::time::Duration::from_secs(args.timeout);
    let mut link = target.open(false, ConnectOptions::exclusive())?;
    let mut stream = client::connect(&args.central, timeout)
        .with_context(|| format!("connecting to the central system at {}", args.central))?;
    let context = || {
        format!(
            "transacting between {target} and the central system at {}",
            args.central
        )
    };
    let mut session = TransactionClient::open(
        &mut link,
        &mut stream,
        pin.as_ref().map(|pin| pin.as_slice()),
    )
    .with_context(context)?;
    for data in &args.data {
        let receipt = session.transact(data.as_bytes()).with_context(context)?;
        out!(
            "receipt {}: sha384 {} reply {:?}",
            receipt.number,
            hex(&receipt.payload_digest),
            String::from_utf8_lossy(&receipt.reply)
        );
    }
    session.close().with_context(context)?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A module to work on, from [`TargetArgs`].
enum Target {
    Module(PathBuf),
    SoftHsm {
        label: String,
        pin_file: Option<PathBuf>,
    },
    Reader {
        name: String,
        short_apdus: bool,
    },
}

impl From<TargetArgs> for Target {
    fn from(args: TargetArgs) -> Self {
        match (args.module, args.reader) {
            (_, Some(name)) => Self::Reader {
                name,
                short_apdus: args.short_apdus,
            },
            (Some(dir), None) => match dir
                .to_str()
                .and_then(|text| text.strip_prefix(module::SOFTHSM_PREFIX))
            {
                Some(label) => Self::SoftHsm {
                    label: label.to_owned(),
                    pin_file: args.softhsm_pin_file,
                },
                None => Self::Module(dir),
            },
            // clap's group requires one of the two.
            (None, None) => Self::Module(PathBuf::from(".")),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Module(dir) => write!(f, "the module in {}", dir.display()),
            Self::SoftHsm { label, .. } => write!(f, "the module on SoftHSM token {label:?}"),
            Self::Reader { name, .. } => write!(f, "the card in reader {name:?}"),
        }
    }
}

impl Target {
    /// Opens the module: a file-backed one (created if `create`), or the card
    /// in the reader with `options`.
    fn open(
        &self,
        create: bool,
        options: ConnectOptions,
    ) -> anyhow::Result<CardLink<AnyTransport>> {
        let transport = match self {
            Self::Module(dir) => AnyTransport::File(module::open(dir, create)?.into_transport()),
            Self::SoftHsm { label, pin_file } => {
                let pin_file = pin_file.as_deref().ok_or_else(|| {
                    anyhow!(
                        "--module softhsm:{label} needs --softhsm-pin-file FILE (or IMPRINT_SOFTHSM_PIN_FILE)"
                    )
                })?;
                AnyTransport::SoftHsm(
                    module::open_softhsm(label, pin_file)
                        .with_context(|| format!("opening {self}"))?
                        .into_transport(),
                )
            }
            Self::Reader { name, short_apdus } => AnyTransport::Reader(
                PcscTransport::open(name, options.short_apdus(*short_apdus))
                    .with_context(|| format!("opening {self}"))?,
            ),
        };
        Ok(CardLink::new(transport))
    }

    /// Reads the module's public state over a fresh connection.
    fn status(&self) -> anyhow::Result<ModuleStatus> {
        let mut link = self.open(false, ConnectOptions::shared())?;
        read_status(&mut link).with_context(|| format!("reading {self}"))
    }
}

#[derive(Subcommand)]
enum ManufacturerCommand {
    /// Create the manufacturer key (DIR/manufacturer.key, mode 0600) and its
    /// self-signed root (DIR/manufacturer.pem). Refuses to overwrite a key.
    Init {
        /// The manufacturer's directory (created with mode 0700).
        #[arg(long)]
        dir: PathBuf,
        /// Common name of the root certificate.
        #[arg(long, default_value = roles::DEFAULT_MANUFACTURER_NAME)]
        name: String,
        /// Lifetime of the root in years.
        #[arg(long, default_value_t = roles::DEFAULT_MANUFACTURER_YEARS, value_parser = years())]
        years: u32,
    },
    /// Certify a personalization unit from its request (claim 7); writes PEM.
    CertifyPersonalizer {
        /// The manufacturer's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The unit's request (P/personalizer.csr).
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the unit's certificate (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Lifetime in years (within the root). The unit's certificate from the
        /// central system must not outlast this one.
        #[arg(long, default_value_t = roles::DEFAULT_UNIT_BY_MANUFACTURER_YEARS, value_parser = years())]
        years: u32,
    },
    /// Manufacture a module (claim 8): it forms its permanent identity key and
    /// receives its identity certificate and the manufacturer's checking
    /// certificate. Creates the module directory if needed.
    Manufacture {
        /// The manufacturer's directory.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        /// Lifetime of the identity certificate in years (within the root).
        #[arg(long, default_value_t = roles::DEFAULT_IDENTITY_YEARS, value_parser = years())]
        years: u32,
    },
}

#[derive(Subcommand)]
enum PersonalizerCommand {
    /// Create the unit's key (DIR/personalizer.key, mode 0600) and its
    /// certificate request (DIR/personalizer.csr) for the manufacturer and the
    /// central system to certify. Refuses to overwrite a key.
    Init {
        /// The unit's directory (created with mode 0700).
        #[arg(long)]
        dir: PathBuf,
        /// Common name of the unit.
        #[arg(long, default_value = roles::DEFAULT_PERSONALIZER_NAME)]
        name: String,
    },
    /// Check and install the unit's certificates from the manufacturer and the
    /// central system, and issue its certificate over the central key
    /// (central-delivery.pem, claims 4-5).
    Install {
        /// The unit's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The manufacturer's root certificate (M/manufacturer.pem).
        #[arg(long)]
        manufacturer_cert: PathBuf,
        /// The unit's certificate from the manufacturer.
        #[arg(long)]
        by_manufacturer: PathBuf,
        /// The central system's root certificate (C/central.pem).
        #[arg(long)]
        central_cert: PathBuf,
        /// The unit's certificate from the central system.
        #[arg(long)]
        by_central: PathBuf,
        /// Upper bound of the central-delivery certificate's lifetime in years.
        #[arg(long, default_value_t = roles::DEFAULT_DELIVERY_YEARS, value_parser = years())]
        years: u32,
    },
    /// Run the unit as a network service for modules behind relays (claim
    /// 14): each connection presents one module (HELLO), the relay
    /// authenticates with its key, the unit records which relay presented
    /// which module and personalizes it end to end through the relay. Prints
    /// `personalizer listening on ADDR`, then one line per connection.
    Serve {
        /// The unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
        /// Address to listen on (host:port; port 0 picks a free port).
        #[arg(long, value_name = "HOST:PORT")]
        listen: String,
        /// Refuse relays not registered with `imprint personalizer relay register`.
        #[arg(long)]
        registered_relays_only: bool,
        /// Connections served at once; more are refused as busy.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
        max_connections: u64,
        /// Seconds to wait for any frame from a relay, and for a module's
        /// direct connection after it accepted one.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
        /// Claim 15: once a relay has set up the channel, offer the module a
        /// direct connection to this address (HOST:PORT, as the module can
        /// reach this service; usually the public form of --listen). Modules
        /// without a network of their own decline and stay on the relay.
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "direct")]
        direct_address: Option<String>,
        /// Like --direct-address, with the address this service is bound to
        /// (for a loopback or single-address host, and for --listen …:0).
        #[arg(long)]
        direct: bool,
        /// Claim 13 over a relay: personalize only after the user entered a
        /// TAN issued by this unit (`imprint tan issue`) at the relay, which
        /// sends it to the module locally (`imprint relay --tan`).
        #[arg(long)]
        require_tan: bool,
    },
    /// The relays this unit knows (claim 14).
    #[command(subcommand)]
    Relay(UnitRelayCommand),
}

#[derive(Subcommand)]
enum UnitRelayCommand {
    /// Register a relay's public key (from `imprint relay init`) under a name.
    Register {
        /// The unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
        /// The operator's name for the relay.
        #[arg(long)]
        name: String,
        /// The relay's public key (relay.pub.pem).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
    },
    /// List the registered relays, then which relay presented which module.
    List {
        /// The unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
    },
}

/// Options of `relay`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct RelayArgs {
    #[command(subcommand)]
    command: Option<RelayCommand>,
    #[command(flatten)]
    target: TargetArgs,
    /// The personalization unit's service (host:port of `imprint personalizer serve`).
    #[arg(long, value_name = "HOST:PORT")]
    personalizer: Option<String>,
    /// The relay's key: its directory (from `imprint relay init`) or the key file.
    #[arg(long, value_name = "DIR_OR_FILE")]
    relay_key: Option<PathBuf>,
    /// Seconds to wait for the unit.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Claim 15, with --module DIR: run the module with a network interface
    /// of its own, so it accepts the unit's direct-connection offer and
    /// finishes the personalization over its own connection to the unit.
    #[arg(long, requires = "module")]
    direct: bool,
    /// Claim 13: when the unit asks for a TAN, read it here without echo (one
    /// line from stdin when not a terminal) and send it to the module
    /// locally; it never crosses to the unit.
    #[arg(long, conflicts_with = "tan_file")]
    tan: bool,
    /// Like --tan, with the TAN read from FILE (one trailing newline ignored).
    #[arg(long, value_name = "FILE")]
    tan_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum RelayCommand {
    /// Create the relay's key (DIR/relay.key, mode 0600) and DIR/relay.pub.pem
    /// for the unit's operator to register. Refuses to overwrite a key.
    Init {
        /// The relay's directory (created with mode 0700).
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct PersonalizeArgs {
    /// The personalization unit's directory.
    #[arg(long)]
    personalizer: PathBuf,
    #[command(flatten)]
    target: TargetArgs,
    /// Variation value for the module's key generation (claim 10), 1 to 64
    /// bytes as hex. Default: 32 random bytes.
    #[arg(long)]
    variation: Option<String>,
    /// Lifetime of the module certificate in years (within the unit's).
    #[arg(long, default_value_t = 5, value_parser = years())]
    years: u32,
    /// Give the module a user PIN (what PKCS#11 `C_Login` checks): the
    /// contents of FILE, 4 to 16 bytes, one trailing newline ignored.
    /// Without it the module has no PIN.
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
    /// Prove a TAN (claim 13), sent to the module over the local interface
    /// only and proved by the module inside the secure channel before any
    /// key is generated. When the reader offers a PIN pad (PC/SC secure PIN
    /// entry) the TAN is typed there and the host never sees it; otherwise
    /// it is asked for on the terminal without echo (or read as one line
    /// from stdin when it is not a terminal).
    #[arg(long, conflicts_with = "tan_file")]
    tan: bool,
    /// With --tan: type the TAN at the host even if the reader has a PIN pad.
    #[arg(long, requires = "tan")]
    tan_at_host: bool,
    /// Like --tan, with the TAN read from FILE (one trailing newline ignored).
    #[arg(long, value_name = "FILE")]
    tan_file: Option<PathBuf>,
    /// The unit's policy: refuse to personalize without a TAN.
    #[arg(long, env = "IMPRINT_REQUIRE_TAN")]
    require_tan: bool,
    /// The unit's policy (claims 16-18): personalize only after an
    /// identification unit the user connected vouched for it.
    #[arg(long, env = "IMPRINT_REQUIRE_IDENTIFICATION")]
    require_identification: bool,
    /// The identification unit is a file-backed id unit in DIR (made by
    /// `imprint idunit issue`).
    #[arg(long, value_name = "DIR", conflicts_with = "idunit_reader")]
    idunit_module: Option<PathBuf>,
    /// The identification unit is the card in PC/SC reader NAME.
    #[arg(long, value_name = "NAME")]
    idunit_reader: Option<String>,
}

#[derive(Subcommand)]
enum IdUnitCommand {
    /// Create a file-backed identification unit in DIR with a fresh id,
    /// key and one-off values (OS random generator), and register it (its
    /// key and the values' verifiers) with the personalization unit.
    Issue {
        /// The personalization unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
        /// Where the id unit lives (created, 0700; must not hold one).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// How many one-off identification values.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        values: u32,
        /// Issue it for this module serial (16 hex digits): it then vouches
        /// for that module only. Without: for any module of this unit.
        #[arg(long, value_name = "SERIAL")]
        module: Option<String>,
    },
    /// List the registered identification units: id, values open and used.
    List {
        /// The personalization unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
    },
}

fn run_idunit(command: IdUnitCommand) -> anyhow::Result<()> {
    match command {
        IdUnitCommand::Issue {
            personalizer,
            dir,
            values,
            module,
        } => {
            let serial = module.as_deref().map(parse_serial).transpose()?;
            open_unit(&personalizer)?;
            if dir.join("idunit.tlv").exists() {
                bail!("{} already holds an identification unit", dir.display());
            }
            let mut journal = SqliteJournal::open(&roles::journal_path(&personalizer))?;
            let record = journal.register_idunit(values, serial.as_deref())?;
            FileIdStore::create(&dir, &record).with_context(|| {
                format!("creating the identification unit in {}", dir.display())
            })?;
            out!("identification unit: {}", id_hex(&record.id));
            out!("values:              {}", record.values.len());
            out!(
                "vouches for:         {}",
                serial.as_deref().unwrap_or("any module of this unit")
            );
            out!("directory:           {}", dir.display());
        }
        IdUnitCommand::List { personalizer } => {
            let journal = SqliteJournal::open(&roles::journal_path(&personalizer))?;
            for unit in journal.idunits()? {
                out!(
                    "{}  open {}  used {}  module {}",
                    unit.id,
                    unit.open,
                    unit.used,
                    unit.serial.as_deref().unwrap_or("any")
                );
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum TanCommand {
    /// Issue TANs: prints each id and TAN once. Give each TAN to the user who
    /// will present the module; it is valid for one personalization.
    Issue {
        /// The personalization unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
        /// Bind the TANs to this module serial (16 hex digits). Unbound TANs
        /// authorize any module of this unit.
        #[arg(long, value_name = "SERIAL")]
        module: Option<String>,
        /// Lifetime: a number with s, m, h or d (seconds, minutes, hours, days).
        #[arg(long, default_value = "7d", value_parser = parse_lifetime)]
        expires: u64,
        /// How many TANs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
    },
    /// List the TANs: id, binding, expiry, state and failures (never a TAN).
    List {
        /// The personalization unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
    },
    /// Clear a module serial's TAN failure counter (it locks after
    /// failed proofs).
    Unlock {
        /// The personalization unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
        /// The module serial.
        #[arg(long, value_name = "SERIAL")]
        module: String,
    },
}

/// `7d`, `12h`, `30m`, `45s` → seconds.
fn parse_lifetime(text: &str) -> Result<u64, String> {
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: expected a number with s, m, h or d")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with s, m, h or d"))?;
    number
        .checked_mul(scale)
        .filter(|seconds| *seconds <= 10 * 365 * 86_400)
        .ok_or_else(|| format!("{text:?}: at most ten years"))
}

/// A module serial as the journal writes it: 16 lowercase hex digits.
fn parse_serial(text: &str) -> anyhow::Result<String> {
    let serial = text.to_ascii_lowercase();
    if serial.len() != 16 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("module serial {text:?} is not 16 hex digits");
    }
    Ok(serial)
}

fn run_tan(command: TanCommand) -> anyhow::Result<()> {
    match command {
        TanCommand::Issue {
            personalizer,
            module,
            expires,
            count,
        } => {
            let serial = module.as_deref().map(parse_serial).transpose()?;
            // The unit must exist: TANs belong to one unit's journal.
            open_unit(&personalizer)?;
            let mut journal = SqliteJournal::open(&roles::journal_path(&personalizer))?;
            let expires_at = imprint_apdu::host::personalize::unix_now().saturating_add(expires);
            let tans = journal.issue_tans(count, serial.as_deref(), expires_at)?;
            out!(
                "{} TAN(s), for {}, valid until {}; shown once, the unit keeps only verifiers:",
                tans.len(),
                serial.as_deref().unwrap_or("any module"),
                display::utc(expires_at)
            );
            for (id, tan) in &tans {
                out!("TAN {id}: {}", tan.as_str());
            }
        }
        TanCommand::List { personalizer } => {
            let journal = SqliteJournal::open_existing(&roles::journal_path(&personalizer))
                .context("no journal yet (no TAN issued)")?;
            let now =
                i64::try_from(imprint_apdu::host::personalize::unix_now()).unwrap_or(i64::MAX);
            out!(
                "{:>5}  {:<16}  {:<20}  {:<7}  {:>8}  issuance",
                "id",
                "module",
                "expires",
                "state",
                "failures"
            );
            let tans = journal.tans()?;
            for tan in &tans {
                let expires = u64::try_from(tan.expires_at)
                    .map_or_else(|_| tan.expires_at.to_string(), display::utc);
                out!(
                    "{:>5}  {:<16}  {:<20}  {:<7}  {:>8}  {}",
                    tan.id,
                    tan.serial.as_deref().unwrap_or("any"),
                    expires,
                    tan.state(now),
                    tan.failures,
                    tan.issuance_id.map(|id| id.to_string()).unwrap_or_default()
                );
            }
            out!("{} TANs", tans.len());
        }
        TanCommand::Unlock {
            personalizer,
            module,
        } => {
            let serial = parse_serial(&module)?;
            let mut journal = SqliteJournal::open_existing(&roles::journal_path(&personalizer))
                .context("no journal yet (no TAN issued)")?;
            let failures = journal.unlock_serial(&serial)?;
            out!("module {serial}: {failures} failed TAN tries cleared");
        }
    }
    Ok(())
}

/// The TAN for `imprint personalize` typed at the host: from FILE
/// (`--tan-file`), from the terminal without echo, or one line of stdin
/// (`--tan`).
fn read_tan(
    tan_file: Option<&Path>,
    tan: bool,
) -> anyhow::Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    if let Some(path) = tan_file {
        let tan = imprint_pkcs11::softhsm::read_pin_file(path)
            .with_context(|| format!("reading the TAN file {}", path.display()))?;
        return Ok(Some(zeroize::Zeroizing::new(tan.to_vec())));
    }
    if !tan {
        return Ok(None);
    }
    let line = imprint_host::tan_prompt::read_secret_line("TAN: ").context("reading the TAN")?;
    Ok(Some(line))
}

#[derive(Subcommand)]
enum ModuleCommand {
    /// Print the module's serial, lifecycle and certificates.
    Status {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Return the module to PERSONALIZATION through the unit's authenticated
    /// channel, erasing its module key, module certificate and central anchor
    /// (claim 2). The identity key survives.
    Reset {
        #[command(flatten)]
        target: TargetArgs,
        /// The personalization unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
    },
    /// Write the module certificate followed by the unit's certificate issued
    /// by the central system (PEM): the chain to verify against the central
    /// root. Fails unless the module is OPERATING.
    ExportChain {
        #[command(flatten)]
        target: TargetArgs,
        /// Where to write the PEM chain.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct StationArgs {
    /// The personalization unit's directory (its journal records every card).
    #[arg(long)]
    personalizer: PathBuf,
    /// Watch this reader; repeat for several. Default: every reader present
    /// when the station starts.
    #[arg(long = "reader", value_name = "NAME")]
    readers: Vec<String>,
    /// Exit after N cards finished (personalized or failed; skipped cards,
    /// already personalized in this run, do not count).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Plain log lines even when standard output is a terminal.
    #[arg(long)]
    plain: bool,
    /// Short APDUs only (command chaining and GET RESPONSE), even where the
    /// readers take extended-length APDUs.
    #[arg(long)]
    short_apdus: bool,
    /// Lifetime of module certificates in years (within the unit's).
    #[arg(long, default_value_t = 5, value_parser = years())]
    years: u32,
}

#[derive(Subcommand)]
enum JournalCommand {
    /// List issued module certificates, oldest first.
    List {
        /// The personalization unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
        /// Only this module serial.
        #[arg(long)]
        serial: Option<String>,
    },
    /// Field station (claim 12): write this unit's own journal entries as a
    /// signed, hash-chained export for the main issuance database, with the
    /// unit's certificates. Signed with the unit's key, which stays in DIR.
    Export {
        /// The (field) personalization unit's directory.
        #[arg(long, value_name = "DIR")]
        personalizer: PathBuf,
        /// Where to write the export (refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Field station (claim 12): verify a field unit's export against this
    /// unit (same manufacturer, same central system, signature, hash chain,
    /// every certificate issued by the field unit) and only then add its
    /// entries, with their origin, to this unit's journal in one transaction.
    /// The same export is imported once.
    Import {
        /// The main personalization unit's directory.
        #[arg(long, value_name = "DIR")]
        personalizer: PathBuf,
        /// The export written by `imprint journal export`.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// ECDSA P-384 signatures and verifications per second of our stack
    /// (RustCrypto p384, hedged signing of SHA-384 digests) against
    /// `openssl speed -seconds 3 ecdsap384` in the same run, with ratios.
    Crypto {
        /// Seconds to measure each of signing and verifying.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Through pcscd, on the card in one reader (an Imprint module, e.g.
    /// `imprint-card`): the raw APDU round trip (a SELECT loop: median and
    /// p90). With --personalizer, also whole personalizations of that card
    /// (re-personalized each time, every certificate journaled): APDUs on the
    /// wire, median time per card, and the ratio to the floor, which is the
    /// APDU count times the median round trip plus the P-384 operations of
    /// both sides at our rates measured in the same run.
    Pcsc {
        /// The reader holding the card.
        #[arg(long, value_name = "NAME")]
        reader: String,
        /// Timed SELECT round trips (after 20 not timed).
        #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        rounds: u64,
        /// The personalization unit's directory: also time whole
        /// personalizations, journaled in its journal.
        #[arg(long)]
        personalizer: Option<PathBuf>,
        /// Personalizations to time (after one not timed).
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        cards: u64,
        /// Short APDUs only for the personalizations.
        #[arg(long)]
        short_apdus: bool,
    },
    /// Station throughput through pcscd: cards per minute personalized by the
    /// station with every named reader working, against the first reader
    /// alone, and the ratio. Each reader must hold an Imprint module; the
    /// cards are re-personalized again and again (every certificate
    /// journaled), one station run per round.
    Station {
        /// The personalization unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
        /// A reader holding a card; repeat for several (the first is also
        /// measured alone).
        #[arg(long = "reader", value_name = "NAME", required = true)]
        readers: Vec<String>,
        /// Cards to personalize with each configuration (after one warm-up
        /// round, not timed).
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        cards: u64,
        /// Short APDUs only.
        #[arg(long)]
        short_apdus: bool,
    },
    /// Personalization through a relay on loopback (claim 14) against a
    /// direct local personalization, measured in the same run: the unit's
    /// service (`personalizer serve`) on 127.0.0.1 and a registered relay
    /// with a module in this process, against `personalize()` on such a
    /// module. Every run is a first personalization of a freshly
    /// manufactured file-backed module (in a temporary directory, like the
    /// unit and its SQLite journal); the flows alternate. Prints median and
    /// p90 of each, the APDUs the module processed, the TCP frames, and the
    /// ratio of the medians. Needs no reader and no pcscd.
    Relay {
        /// Timed personalizations per flow (after one not timed).
        #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        runs: u64,
    },
}

fn years() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=100)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { modules, dir } => run_demo(modules, dir),
        Command::Manufacturer(command) => run_manufacturer(command),
        Command::Personalizer(command) => run_personalizer(command),
        Command::Personalize(args) => run_personalize(args),
        Command::Connect(args) => run_connect(args),
        Command::Transact(args) => run_transact(args),
        Command::Relay(args) => run_relay(args),
        Command::Module(command) => run_module(command),
        Command::Journal(JournalCommand::List {
            personalizer,
            serial,
        }) => list_journal(&personalizer, serial),
        Command::Journal(JournalCommand::Export { personalizer, out }) => {
            export_journal(&personalizer, &out)
        }
        Command::Journal(JournalCommand::Import {
            personalizer,
            input,
        }) => import_journal(&personalizer, &input),
        Command::Tan(command) => run_tan(command),
        Command::Idunit(command) => run_idunit(command),
        Command::Readers => list_readers(),
        Command::Station(args) => run_station(args),
        Command::Bench(command) => run_bench(command),
    }
}

fn run_demo(modules: u64, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = match dir {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("imprint-demo-")
            .tempdir()
            .context("creating a temporary directory")?
            .keep(),
    };
    out!("demo directory: {}", dir.display());
    let modules = usize::try_from(modules).context("too many modules")?;
    let report =
        demo::run_demo(&dir, modules).with_context(|| format!("demo in {}", dir.display()))?;
    out!();
    out!(
        "{:>3}  {:<16}  {:>11}  {:>11}  {:>8}  {:<15}  {:>12}  {:>9}  {}",
        "#",
        "serial",
        "manufacture",
        "personalize",
        "time ms",
        "re-personalized",
        "connect",
        "1 tx ms",
        "verified"
    );
    for row in &report.rows {
        out!(
            "{:>3}  {:<16}  {:>11}  {:>11}  {:>8.1}  {:<15}  {:>12}  {:>9.1}  {}",
            row.index,
            row.serial,
            format!("{} APDUs", row.manufacture_apdus),
            format!("{} APDUs", row.personalization_apdus),
            row.personalization_time.as_secs_f64() * 1000.0,
            match row.repersonalization_apdus {
                Some(apdus) => format!("yes ({apdus} APDUs)"),
                None => "no".to_owned(),
            },
            format!(
                "{} / {:.0} ms",
                row.connect_commands,
                row.connect_time.as_secs_f64() * 1000.0
            ),
            row.transaction_time.as_secs_f64() * 1000.0,
            if row.verified { "yes" } else { "NO" },
        );
    }
    out!();
    out!(
        "APDUs of a first personalization: {}",
        report.first_personalization_apdus
    );
    out!(
        "APDUs of a re-personalization:    {}",
        report.repersonalization_apdus
    );
    out!("connect: commands of the operating channel with the central system (key set installed)");
    out!("1 tx: one transaction session with one transaction, journaled and acknowledged");
    let failed: Vec<_> = report.rows.iter().filter(|row| !row.verified).collect();
    if failed.is_empty() {
        out!("all {} modules verified", report.rows.len());
        return Ok(());
    }
    for row in &failed {
        for failure in &row.failures {
            eprintln!("module {} ({}): {failure}", row.index, row.serial);
        }
    }
    bail!(
        "{} of {} modules failed verification",
        failed.len(),
        report.rows.len()
    )
}

fn run_manufacturer(command: ManufacturerCommand) -> anyhow::Result<()> {
    match command {
        ManufacturerCommand::Init { dir, name, years } => {
            let manufacturer = Manufacturer::init(&dir, &name, years)
                .with_context(|| format!("initializing the manufacturer in {}", dir.display()))?;
            out!(
                "manufacturer key:         {}",
                dir.join(roles::MANUFACTURER_KEY).display()
            );
            out!(
                "manufacturer certificate: {}",
                dir.join(roles::MANUFACTURER_CERT).display()
            );
            print_certificate("", manufacturer.root());
        }
        ManufacturerCommand::CertifyPersonalizer {
            dir,
            csr,
            out,
            years,
        } => {
            let manufacturer = open_manufacturer(&dir)?;
            let request = roles::read_csr(&csr)?;
            let cert = manufacturer
                .certify_personalizer(&request, years)
                .with_context(|| format!("certifying the unit of {}", csr.display()))?;
            roles::write_certificate(&out, &cert)?;
            out!("certified {:?}: {}", request.common_name(), out.display());
            print_certificate("", &cert);
        }
        ManufacturerCommand::Manufacture { dir, target, years } => {
            let manufacturer = open_manufacturer(&dir)?;
            let target = Target::from(target);
            let mut link = target.open(true, ConnectOptions::exclusive())?;
            let report = manufacture(&mut link, manufacturer.credentials(), years)
                .with_context(|| format!("manufacturing {target}"))?;
            out!(
                "module {} manufactured ({} APDUs)",
                report.serial,
                report.apdus
            );
            print_certificate("identity certificate: ", &report.identity_cert);
        }
    }
    Ok(())
}

fn open_manufacturer(dir: &Path) -> anyhow::Result<Manufacturer> {
    Manufacturer::open(dir)
        .with_context(|| format!("opening the manufacturer in {}", dir.display()))
}

fn run_personalizer(command: PersonalizerCommand) -> anyhow::Result<()> {
    match command {
        PersonalizerCommand::Init { dir, name } => {
            let request = Personalizer::init(&dir, &name).with_context(|| {
                format!("initializing the personalization unit in {}", dir.display())
            })?;
            out!(
                "unit key:            {}",
                dir.join(roles::PERSONALIZER_KEY).display()
            );
            out!(
                "certificate request: {}",
                dir.join(roles::PERSONALIZER_CSR).display()
            );
            out!("subject:             CN={}", request.common_name());
            out!("next: have the request certified by the manufacturer and by the central system,");
            out!("      then run `imprint personalizer install`");
        }
        PersonalizerCommand::Install {
            dir,
            manufacturer_cert,
            by_manufacturer,
            central_cert,
            by_central,
            years,
        } => {
            let manufacturer_root =
                roles::read_certificate(&manufacturer_cert, "manufacturer root certificate")?;
            let by_manufacturer = roles::read_certificate(
                &by_manufacturer,
                "unit certificate from the manufacturer",
            )?;
            let central_root = roles::read_certificate(&central_cert, "central root certificate")?;
            let by_central =
                roles::read_certificate(&by_central, "unit certificate from the central system")?;
            let unit = Personalizer::install(
                &dir,
                &manufacturer_root,
                &by_manufacturer,
                &central_root,
                &by_central,
                years,
            )
            .with_context(|| format!("installing the personalization unit in {}", dir.display()))?;
            out!("personalization unit installed in {}", dir.display());
            print_certificate("unit (by manufacturer): ", &unit.cert_by_manufacturer);
            print_certificate("unit (by central):      ", &unit.cert_by_central);
            print_certificate("central delivery:       ", &unit.central_delivery);
        }
        PersonalizerCommand::Serve {
            personalizer,
            listen,
            registered_relays_only,
            max_connections,
            timeout,
            direct_address,
            direct,
            require_tan,
        } => {
            let config = remote::ServeConfig {
                require_tan,
                unit_dir: personalizer.clone(),
                registered_relays_only,
                max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
                timeout: Duration::from_secs(timeout),
                direct_address,
            };
            let mut server = remote::Server::bind(&listen, config).with_context(|| {
                format!(
                    "starting the personalization service of {}",
                    personalizer.display()
                )
            })?;
            let bound = server.local_addr()?;
            if direct {
                if bound.ip().is_unspecified() {
                    bail!(
                        "--direct offers the bound address, and {bound} is no address a module can dial: give --direct-address HOST:PORT"
                    );
                }
                server.set_direct_address(Some(bound.to_string()))?;
            }
            out!("personalizer listening on {bound}");
            server.run(Arc::new(|log: &remote::ConnectionLog| {
                let serial = log.serial.as_deref().unwrap_or("-");
                let relay = log.relay.as_deref().unwrap_or("-");
                let direct = log
                    .direct_peer
                    .map_or_else(|| "-".to_owned(), |peer| peer.to_string());
                match &log.result {
                    Ok(id) => out!(
                        "peer={} relay={relay} serial={serial} direct={direct} result=installed journal={id}",
                        log.peer
                    ),
                    Err(reason) => out!(
                        "peer={} relay={relay} serial={serial} direct={direct} result=failed reason={reason:?}",
                        log.peer
                    ),
                }
            }))?;
        }
        PersonalizerCommand::Relay(UnitRelayCommand::Register {
            personalizer,
            name,
            public_key,
        }) => {
            let key = remote::read_relay_public_key(&public_key)?;
            let mut journal = SqliteJournal::open(&roles::journal_path(&personalizer))?;
            let relay = journal.register_relay(&name, &key)?;
            out!(
                "relay registered: {} (key sha384 {})",
                relay.name,
                relay.fingerprint
            );
        }
        PersonalizerCommand::Relay(UnitRelayCommand::List { personalizer }) => {
            let journal = SqliteJournal::open_existing(&roles::journal_path(&personalizer))?;
            let relays = journal.relays()?;
            out!("registered relays: {}", relays.len());
            for relay in &relays {
                out!(
                    "relay {} key={} registered={}",
                    relay.name,
                    relay.fingerprint,
                    display::utc(u64::try_from(relay.registered_at).unwrap_or_default())
                );
            }
            let presentations = journal.presentations()?;
            out!("presentations: {}", presentations.len());
            for presentation in &presentations {
                let relay = presentation
                    .relay_name
                    .clone()
                    .unwrap_or_else(|| format!("unregistered:{}", presentation.relay_fingerprint));
                let journal_id = presentation
                    .journal_id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string());
                out!(
                    "serial={} relay={relay} journal={journal_id} at={} direct={} outcome={}",
                    presentation.serial,
                    display::utc(u64::try_from(presentation.presented_at).unwrap_or_default()),
                    presentation.direct_peer.as_deref().unwrap_or("-"),
                    presentation.outcome
                );
            }
        }
    }
    Ok(())
}

fn run_relay(args: RelayArgs) -> anyhow::Result<()> {
    if let Some(RelayCommand::Init { dir }) = args.command {
        let public = remote::init_relay(&dir)
            .with_context(|| format!("creating the relay key in {}", dir.display()))?;
        out!("relay key:  {}", dir.join(remote::RELAY_KEY).display());
        out!(
            "public key: {}",
            dir.join(remote::RELAY_PUBLIC_KEY).display()
        );
        out!("key sha384: {}", remote::key_fingerprint(&public));
        out!("next: have the unit's operator run `imprint personalizer relay register`");
        return Ok(());
    }
    let target = args.target;
    let (Some(personalizer), Some(relay_key)) = (args.personalizer, args.relay_key) else {
        bail!(
            "relay needs --module DIR or --reader NAME, --personalizer HOST:PORT and --relay-key DIR_OR_FILE"
        );
    };
    let key = remote::load_relay_key(&relay_key)
        .with_context(|| format!("reading the relay key {}", relay_key.display()))?;
    let target = Target::from(target);
    let timeout = Duration::from_secs(args.timeout);
    let relay = |link: &mut dyn FnMut(
        &mut std::net::TcpStream,
    ) -> Result<remote::RelayReport, remote::RemoteError>| {
        let mut stream = imprint_central::client::connect(&personalizer, timeout)
            .with_context(|| format!("connecting to the personalization unit at {personalizer}"))?;
        let started = std::time::Instant::now();
        let report = link(&mut stream).with_context(|| {
            format!("relaying {target} to the personalization unit at {personalizer}")
        })?;
        out!("serial:     {}", report.serial);
        out!(
            "relay key:  {}",
            remote::key_fingerprint(key.verifying_key())
        );
        out!("relayed:    {} commands", report.commands);
        if report.handed_over {
            out!("direct:     the module finished over its own connection to the unit");
        }
        out!(
            "time:       {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        out!("journal id: {} (at the unit)", report.journal_id);
        print_certificate("module certificate: ", &report.certificate);
        anyhow::Ok(())
    };
    // Asked for only when the unit asks (ENTER TAN): the prompt waits till then.
    let tan_file = args.tan_file.clone();
    let has_tan = args.tan || tan_file.is_some();
    let mut read_tan_here = move || {
        read_tan(tan_file.as_deref(), true)
            .map_err(|err| remote::RemoteError::TanUnreadable(format!("{err:#}")))?
            .ok_or(remote::RemoteError::TanNotGiven)
    };
    if !args.direct {
        let mut link = target.open(false, ConnectOptions::exclusive())?;
        return relay(&mut |stream| {
            let tan: Option<remote::TanSource<'_>> = has_tan.then_some(&mut read_tan_here);
            remote::relay_personalization_with_tan(&mut link, stream, &key, tan)
        });
    }
    let Target::Module(dir) = &target else {
        bail!(remote::RemoteError::DirectNeedsModule);
    };
    let applet = module::open(dir, false)?.into_transport().into_applet();
    let networked = remote::NetworkedModule::new(applet, timeout);
    let mut link = CardLink::new(networked.clone());
    let relayed = relay(&mut |stream| {
        let tan: Option<remote::TanSource<'_>> = has_tan.then_some(&mut read_tan_here);
        remote::relay_personalization_with_tan(&mut link, stream, &key, tan)
    });
    // The module's own side of the story: what its direct connection did.
    for run in networked.finish_direct_runs() {
        match run {
            Ok(run) => out!(
                "module:     dialed {} itself; {} commands over the direct connection",
                run.address,
                run.commands
            ),
            Err(err) => eprintln!("module: its direct connection failed: {err}"),
        }
    }
    relayed
}

fn open_unit(dir: &Path) -> anyhow::Result<imprint_apdu::host::UnitCredentials> {
    Personalizer::open(dir)
        .with_context(|| format!("opening the personalization unit in {}", dir.display()))
}

fn run_personalize(args: PersonalizeArgs) -> anyhow::Result<()> {
    let variation = match &args.variation {
        Some(text) => {
            let bytes = display::parse_hex(text)
                .ok_or_else(|| anyhow!("--variation {text:?} is not hex"))?;
            if bytes.is_empty() || bytes.len() > VARIATION_MAX {
                bail!(
                    "--variation must be 1 to {VARIATION_MAX} bytes, got {}",
                    bytes.len()
                );
            }
            bytes
        }
        None => {
            let mut bytes = vec![0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|_| anyhow!("the operating system random generator failed"))?;
            bytes
        }
    };
    let pin = match &args.pin_file {
        Some(path) => Some(
            imprint_pkcs11::softhsm::read_pin_file(path)
                .with_context(|| format!("reading the PIN file {}", path.display()))?,
        ),
        None => None,
    };
    // A reader may have a PIN pad: where the TAN is typed is settled once
    // the card is connected. Every other case reads it here, as before.
    let target = Target::from(args.target);
    let ask_reader = args.tan && !args.tan_at_host && matches!(target, Target::Reader { .. });
    let mut tan = if ask_reader {
        None
    } else {
        read_tan(args.tan_file.as_deref(), args.tan)?
    };
    let unit = open_unit(&args.personalizer)?;
    let journal_path = roles::journal_path(&args.personalizer);
    let mut journal = SqliteJournal::open(&journal_path)?;
    let mut link = target.open(false, ConnectOptions::exclusive())?;
    let mut tan_at_pin_pad = false;
    if ask_reader {
        let entry = imprint_host::tan_prompt::choose_tan_entry(link.transport_mut(), false)
            .with_context(|| format!("asking {target} for its PIN pad"))?;
        match entry {
            TanEntry::PinPad => {
                out!("TAN: enter it at the reader's PIN pad");
                tan_at_pin_pad = true;
            }
            TanEntry::Host => tan = read_tan(None, true)?,
        }
    }
    let options = PersonalizationOptions {
        variation,
        validity_years: args.years,
        issuer: None,
        pin,
        tan,
        tan_at_pin_pad,
        require_tan: args.require_tan,
        require_identification: args.require_identification,
        direct: None,
    };
    let mut idunit: Option<Box<dyn IdentificationSource>> =
        match (&args.idunit_module, &args.idunit_reader) {
            (Some(dir), _) => {
                let store = FileIdStore::open(dir).with_context(|| {
                    format!("opening the identification unit in {}", dir.display())
                })?;
                let applet = IdUnit::new(store).map_err(|err| {
                    anyhow!("the identification unit in {}: {err}", dir.display())
                })?;
                Some(Box::new(IdUnitLink::new(InProcessIdUnit::new(applet))))
            }
            (None, Some(name)) => Some(Box::new(IdUnitLink::new(
                PcscTransport::open(name, ConnectOptions::exclusive().short_apdus(true))
                    .with_context(|| {
                        format!("opening the identification unit in reader {name:?}")
                    })?,
            ))),
            (None, None) => None,
        };
    let report = personalize_with_identification(
        &mut link,
        &mut journal,
        &unit,
        options,
        idunit
            .as_deref_mut()
            .map(|source| source as &mut dyn IdentificationSource),
    )
    .with_context(|| format!("personalizing {target}"))?;
    out!("serial:     {}", report.serial);
    out!("was:        {}", report.lifecycle_before);
    out!("APDUs:      {}", report.apdus);
    out!(
        "time:       {:.1} ms",
        report.elapsed.as_secs_f64() * 1000.0
    );
    out!(
        "journal id: {} ({})",
        report.journal_id,
        journal_path.display()
    );
    print_certificate("module certificate: ", &report.certificate);
    Ok(())
}

fn run_module(command: ModuleCommand) -> anyhow::Result<()> {
    match command {
        ModuleCommand::Status { target } => {
            let status = Target::from(target).status()?;
            print_status(&status);
        }
        ModuleCommand::Reset {
            target,
            personalizer,
        } => {
            let unit = open_unit(&personalizer)?;
            let target = Target::from(target);
            let mut link = target.open(false, ConnectOptions::exclusive())?;
            let apdus =
                reset_module(&mut link, &unit).with_context(|| format!("resetting {target}"))?;
            // A file-backed module reloads from its directory (a power-up);
            // a card is read on the same connection.
            let status = match &target {
                Target::Module(_) | Target::SoftHsm { .. } => {
                    drop(link);
                    target.status()?
                }
                Target::Reader { .. } => {
                    read_status(&mut link).with_context(|| format!("reading {target}"))?
                }
            };
            out!(
                "module {} is now {}: module key, module certificate, unit certificate and central anchor erased ({apdus} APDUs)",
                status.serial.as_deref().unwrap_or("without serial"),
                status.info.lifecycle
            );
        }
        ModuleCommand::ExportChain { target, out } => {
            let target = Target::from(target);
            let status = target.status()?;
            let chain = module::operating_chain(&status)
                .with_context(|| format!("exporting the chain of {target}"))?;
            roles::write_certificates(&out, &chain)?;
            out!(
                "wrote the module certificate and the unit's central certificate to {}",
                out.display()
            );
            print_certificate("module: ", &chain[0]);
            print_certificate("unit:   ", &chain[1]);
        }
    }
    Ok(())
}

fn print_status(status: &ModuleStatus) {
    out!(
        "serial:      {}",
        status
            .serial
            .as_deref()
            .unwrap_or("(none: no identity key yet)")
    );
    out!("lifecycle:   {}", status.info.lifecycle);
    out!("command set: version {}", status.info.version);
    for (name, cert) in [
        ("identity certificate", &status.identity_cert),
        ("module certificate", &status.module_cert),
        ("unit certificate (by central)", &status.unit_cert),
        ("central anchor", &status.central_cert),
    ] {
        match cert {
            Some(cert) => {
                out!("{name}: present");
                print_certificate("  ", cert);
                if let Some(nonce) = cert.nonce() {
                    out!("  nonce:       {}", display::hex(&nonce));
                }
            }
            None => out!("{name}: absent"),
        }
    }
}

fn list_journal(personalizer: &Path, serial: Option<String>) -> anyhow::Result<()> {
    let path = roles::journal_path(personalizer);
    let journal = SqliteJournal::open_existing(&path)
        .context("no issuance journal yet (nothing personalized)")?;
    let entries = match &serial {
        Some(serial) => journal.entries_for(serial)?,
        None => journal.entries()?,
    };
    out!(
        "{:>5}  {:<16}  {:<9}  {:<20}  {:<32}  {:<24}  reason",
        "id",
        "serial",
        "status",
        "issued at",
        "fingerprint (SHA-384, start)",
        "origin (unit#id)"
    );
    for entry in &entries {
        let issued_at = u64::try_from(entry.issued_at)
            .map_or_else(|_| entry.issued_at.to_string(), display::utc);
        let origin = entry
            .origin
            .as_ref()
            .map_or_else(|| "local".to_owned(), |origin| origin.short());
        out!(
            "{:>5}  {:<16}  {:<9}  {:<20}  {:<32}  {:<24}  {}",
            entry.id,
            entry.serial,
            entry.status.as_str(),
            issued_at,
            entry.fingerprint.get(..32).unwrap_or(&entry.fingerprint),
            origin,
            entry.reason.as_deref().unwrap_or(""),
        );
    }
    let installed = entries
        .iter()
        .filter(|entry| entry.status == IssuanceStatus::Installed)
        .count();
    out!("{} entries, {installed} installed", entries.len());
    Ok(())
}

fn export_journal(personalizer: &Path, out: &Path) -> anyhow::Result<()> {
    let unit = Personalizer::open(personalizer)
        .with_context(|| format!("personalization unit {}", personalizer.display()))?;
    let path = roles::journal_path(personalizer);
    let journal = SqliteJournal::open_existing(&path)
        .context("no issuance journal yet (nothing personalized)")?;
    let count = journal.local_entries()?.len();
    let bytes = transfer::export_journal(&journal, &unit)?;
    let parsed = transfer::parse_export(&bytes)?;
    keyfile::write_atomic(out, &bytes, keyfile::PUBLIC_FILE_MODE, Overwrite::Refuse)?;
    out!(
        "exported {count} entries of {} ({} bytes) to {}",
        display::subject(&unit.cert_by_central),
        bytes.len(),
        out.display()
    );
    out!("chain hash: {}", display::hex(&parsed.final_hash));
    Ok(())
}

fn import_journal(personalizer: &Path, input: &Path) -> anyhow::Result<()> {
    let unit = Personalizer::open(personalizer)
        .with_context(|| format!("personalization unit {}", personalizer.display()))?;
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    // Everything is checked before the journal is opened for writing.
    let export = transfer::verify_export(&bytes, &unit)
        .with_context(|| format!("importing {}", input.display()))?;
    let path = roles::journal_path(personalizer);
    let mut journal = SqliteJournal::open(&path)?;
    let report = journal
        .import(&export)
        .with_context(|| format!("importing {}", input.display()))?;
    out!(
        "imported {} from {} ({}): {} new, {} updated, {} already present",
        input.display(),
        export.origin_subject,
        export.origin_unit.get(..16).unwrap_or(&export.origin_unit),
        report.inserted,
        report.updated,
        report.unchanged
    );
    out!("chain hash: {}", report.export_hash);
    out!("journal: {}", path.display());
    Ok(())
}

fn list_readers() -> anyhow::Result<()> {
    let reports = pcsc::survey()?;
    if reports.is_empty() {
        out!("no PC/SC readers");
        return Ok(());
    }
    let width = reports
        .iter()
        .map(|report| report.name.len())
        .max()
        .unwrap_or(0);
    for report in &reports {
        out!("{:<width$}  {}", report.name, report.card);
    }
    Ok(())
}

fn run_station(args: StationArgs) -> anyhow::Result<()> {
    let unit = open_unit(&args.personalizer)?;
    let journal_path = roles::journal_path(&args.personalizer);
    let journal = Mutex::new(SqliteJournal::open(&journal_path)?);
    let available = pcsc::reader_names()?;
    let mut names: Vec<String> = Vec::new();
    if args.readers.is_empty() {
        names = available;
    } else {
        for name in args.readers {
            if !available.contains(&name) {
                return Err(HostError::UnknownReader {
                    name,
                    available: available.clone(),
                }
                .into());
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return Err(HostError::NoReaders.into());
    }
    let options = ConnectOptions::exclusive().short_apdus(args.short_apdus);
    let watches = names
        .iter()
        .map(|name| ReaderWatch::new(name, options))
        .collect::<Result<Vec<_>, _>>()?;
    let count = args
        .count
        .map(usize::try_from)
        .transpose()
        .context("--count is too large")?;

    out!(
        "station: {} reader(s): {}; journal {}",
        names.len(),
        names
            .iter()
            .map(|name| format!("{name:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        journal_path.display()
    );
    let terminal = (!args.plain && std::io::stdout().is_terminal())
        .then(|| Arc::new(TerminalProgress::new(&names)));
    let plain = PlainLog::new(std::io::stdout());
    let observer: &dyn StationObserver = match &terminal {
        Some(progress) => progress.as_ref(),
        None => &plain,
    };

    // Ctrl-C (or SIGTERM): finish the cards in hand, then stop; a second one
    // quits at once.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let display = terminal.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        let note = "stopping after the cards in hand; Ctrl-C again quits at once";
        match &display {
            Some(progress) => progress.note(note),
            None => eprintln!("{note}"),
        }
    })
    .context("installing the Ctrl-C handler")?;
    let config = StationConfig {
        unit: &unit,
        journal: &journal,
        count,
        validity_years: args.years,
        observer,
        stop: &stop,
        poll: DEFAULT_POLL,
    };
    let summary = station::run_station(watches, &config);
    if let Some(progress) = &terminal {
        progress.finish();
    }
    out!();
    out!("{}", summary.to_string().trim_end());
    if !summary.all_done() {
        bail!(
            "{} of {} cards failed",
            summary.failed(),
            summary.done() + summary.failed()
        );
    }
    Ok(())
}

fn run_bench(command: BenchCommand) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        out!(
            "note: debug build of imprint (dependencies are optimized); use --release for the reference figures"
        );
    }
    match command {
        BenchCommand::Crypto { seconds } => run_bench_crypto(seconds),
        BenchCommand::Pcsc {
            reader,
            rounds,
            personalizer,
            cards,
            short_apdus,
        } => run_bench_pcsc(
            &reader,
            usize::try_from(rounds).context("--rounds is too large")?,
            personalizer.as_deref(),
            usize::try_from(cards).context("--cards is too large")?,
            short_apdus,
        ),
        BenchCommand::Station {
            personalizer,
            readers,
            cards,
            short_apdus,
        } => run_bench_station(
            &personalizer,
            readers,
            usize::try_from(cards).context("--cards is too large")?,
            short_apdus,
        ),
        BenchCommand::Relay { runs } => {
            run_bench_relay(usize::try_from(runs).context("--runs is too large")?)
        }
    }
}

fn run_bench_crypto(seconds: f64) -> anyhow::Result<()> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 600.0) {
        bail!("--seconds must be more than 0 and at most 600, got {seconds}");
    }
    out!("measuring our P-384 stack for {seconds} s each ...");
    let (sign, verify) = bench::crypto_rates(Duration::from_secs_f64(seconds))?;
    out!("running `openssl speed -seconds 3 ecdsap384` ...");
    let openssl = bench::openssl_speed().context("measuring the OpenSSL baseline")?;
    out!();
    out!(
        "{:<26} {:>10} {:>10}",
        "ECDSA P-384, one core",
        "sign/s",
        "verify/s"
    );
    out!(
        "{:<26} {:>10.1} {:>10.1}",
        "imprint (RustCrypto p384)",
        sign,
        verify
    );
    out!(
        "{:<26} {:>10.1} {:>10.1}",
        "openssl speed",
        openssl.sign_per_s,
        openssl.verify_per_s
    );
    out!(
        "{:<26} {:>9.2}x {:>9.2}x",
        "ratio ours/openssl",
        sign / openssl.sign_per_s,
        verify / openssl.verify_per_s
    );
    Ok(())
}

/// Seconds the pcsc bench measures each P-384 operation for.
const BENCH_RATE_SECONDS: f64 = 1.0;

/// Lifetime of the module certificates the benches issue, in years.
const BENCH_YEARS: u32 = 5;

fn run_bench_pcsc(
    reader: &str,
    rounds: usize,
    personalizer: Option<&Path>,
    cards: usize,
    short_apdus: bool,
) -> anyhow::Result<()> {
    // Open the unit first: a wrong directory fails before anything is timed.
    let unit = personalizer.map(open_unit).transpose()?;
    out!(
        "raw APDU round trip through pcscd: SELECT on the card in {reader:?}, {rounds} rounds ..."
    );
    let trips = bench::pcscd::select_round_trips(reader, rounds)
        .with_context(|| format!("timing SELECTs on the card in {reader:?}"))?;
    out!(
        "  median {:.1} µs, p90 {:.1} µs (min {:.1} µs, max {:.1} µs)",
        bench::us(trips.median),
        bench::us(trips.p90),
        bench::us(trips.min),
        bench::us(trips.max)
    );
    let (Some(unit), Some(dir)) = (unit, personalizer) else {
        return Ok(());
    };

    out!();
    out!("measuring our P-384 stack for {BENCH_RATE_SECONDS} s per operation ...");
    let rates = bench::p384_rates(Duration::from_secs_f64(BENCH_RATE_SECONDS))?;
    out!(
        "  sign {:.0}/s, verify {:.0}/s, ECDH {:.0}/s, key generation {:.0}/s",
        rates.sign_per_s,
        rates.verify_per_s,
        rates.ecdh_per_s,
        rates.keygen_per_s
    );

    out!();
    out!(
        "whole personalizations through pcscd: the card in {reader:?}, {cards} cards after one not timed ..."
    );
    let journal_path = roles::journal_path(dir);
    let mut journal = SqliteJournal::open(&journal_path)?;
    let options = ConnectOptions::exclusive().short_apdus(short_apdus);
    let run =
        bench::pcscd::personalizations(reader, options, &unit, &mut journal, cards, BENCH_YEARS)
            .with_context(|| format!("personalizing the card in {reader:?}"))?;
    let ops = bench::PERSONALIZATION_OPS;
    let crypto = ops.time_at(&rates);
    let floor = bench::floor(run.apdus, trips.median, crypto);
    out!(
        "  {}, {}; journal {}",
        if run.repersonalization {
            "re-personalizations"
        } else {
            "first personalizations"
        },
        run.length,
        journal_path.display()
    );
    let probed = !matches!(
        run.length,
        LengthMode::Short(ShortReason::Forced | ShortReason::ProtocolT0)
    );
    out!(
        "  APDUs on the wire      {} per card{}",
        run.apdus,
        if probed {
            " (the probe SELECT included)"
        } else {
            ""
        }
    );
    out!(
        "  median per card        {:.2} ms (p90 {:.2} ms)",
        bench::ms(run.total.median),
        bench::ms(run.total.p90)
    );
    out!(
        "    connect and probe    {:.2} ms",
        bench::ms(run.connect.median)
    );
    out!(
        "    personalize          {:.2} ms, of which the journal {:.2} ms",
        bench::ms(run.personalize.median),
        bench::ms(run.journal.median)
    );
    out!(
        "    disconnect (reset)   {:.2} ms",
        bench::ms(run.disconnect.median)
    );
    out!(
        "  P-384 operations       {} sign, {} verify, {} ECDH, {} key generation (both sides): {:.2} ms at our rates",
        ops.sign,
        ops.verify,
        ops.ecdh,
        ops.keygen,
        bench::ms(crypto)
    );
    out!(
        "  floor                  {:.2} ms = {} x {:.1} µs + {:.2} ms",
        bench::ms(floor),
        run.apdus,
        bench::us(trips.median),
        bench::ms(crypto)
    );
    out!(
        "  ratio median/floor     {:.2}",
        run.total.median.as_secs_f64() / floor.as_secs_f64()
    );
    Ok(())
}

fn run_bench_station(
    personalizer: &Path,
    readers: Vec<String>,
    cards: usize,
    short_apdus: bool,
) -> anyhow::Result<()> {
    let unit = open_unit(personalizer)?;
    let available = pcsc::reader_names()?;
    let mut names: Vec<String> = Vec::new();
    for name in readers {
        if !available.contains(&name) {
            return Err(HostError::UnknownReader {
                name,
                available: available.clone(),
            }
            .into());
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let journal_path = roles::journal_path(personalizer);
    let journal = Mutex::new(SqliteJournal::open(&journal_path)?);
    let setup = bench::station::Setup {
        unit: &unit,
        journal: &journal,
        options: ConnectOptions::exclusive().short_apdus(short_apdus),
        validity_years: BENCH_YEARS,
    };
    out!(
        "station throughput through pcscd: {} reader(s), {cards} cards per configuration after a round not timed; journal {} ...",
        names.len(),
        journal_path.display()
    );
    let result = bench::station::throughput(&names, &setup, cards)?;
    let width = names
        .iter()
        .map(|name| name.len() + 2)
        .max()
        .unwrap_or(0)
        .max(14);
    out!();
    out!(
        "  {:<width$}  {:>5}  {:>8}  {:>10}  {:>15}",
        "readers",
        "cards",
        "busy s",
        "cards/min",
        "median per card"
    );
    for (label, run) in [
        (format!("{:?}", names[0]), &result.one),
        (format!("all {} readers", names.len()), &result.all),
    ] {
        out!(
            "  {label:<width$}  {:>5}  {:>8.2}  {:>10.1}  {:>12.2} ms",
            run.cards,
            run.busy.as_secs_f64(),
            run.per_minute(),
            bench::ms(run.per_card.median)
        );
    }
    out!(
        "  ratio {} readers / 1 reader: {:.2}",
        names.len(),
        result.ratio()
    );
    Ok(())
}

fn run_bench_relay(runs: usize) -> anyhow::Result<()> {
    out!(
        "personalization through a relay on loopback (and through a relay that hands over to the module's own connection, claim 15) against a direct local one: {runs} runs per flow after one not timed, alternating; each a first personalization of a fresh file-backed module ..."
    );
    let result = bench::relay::compare(runs)?;
    out!();
    out!(
        "  {:<20}  {:>9}  {:>9}  {:>12}  {:>10}  {:>10}",
        "flow",
        "median ms",
        "p90 ms",
        "module APDUs",
        "unit APDUs",
        "TCP frames"
    );
    for row in &result.rows {
        out!(
            "  {:<20}  {:>9.2}  {:>9.2}  {:>12}  {:>10}  {:>10}",
            row.flow.label(),
            bench::ms(row.timings.median),
            bench::ms(row.timings.p90),
            row.counts.module_apdus,
            row.counts.unit_apdus,
            row.counts
                .frames
                .map_or_else(|| "-".to_owned(), |frames| frames.to_string())
        );
    }
    for flow in bench::relay::Flow::ALL.into_iter().skip(1) {
        if let Some(ratio) = result.ratio(flow) {
            out!("  ratio {flow} / direct (medians): {ratio:.2}");
        }
    }
    out!(
        "  module APDUs: processed by the module; unit APDUs: sent by the unit's personalize(), end to end;"
    );
    out!(
        "  the relayed run's extra module APDU is the relay's own SELECT, for the serial in HELLO;"
    );
    out!(
        "  TCP frames: a COMMAND and a RESPONSE per unit APDU, plus HELLO, RELAY CHALLENGE, RELAY AUTH, PERSONALIZED;"
    );
    out!(
        "  relay, then direct (claim 15): one more unit APDU (the sealed offer), and HANDED OVER, DIRECT and the"
    );
    out!(
        "  module's own PERSONALIZED; the last two unit APDUs go over the module's own connection"
    );
    Ok(())
}

fn print_certificate(prefix: &str, cert: &Certificate) {
    let pad = " ".repeat(prefix.chars().count());
    out!("{prefix}subject:     {}", display::subject(cert));
    out!("{pad}issuer:      {}", display::issuer(cert));
    out!("{pad}role:        {}", cert.role());
    out!("{pad}fingerprint: SHA-384 {}", display::fingerprint(cert));
    out!("{pad}validity:    {}", display::validity(cert));
}

/// The error and its causes on one line, skipping a cause whose text the
/// message already shows.
fn chain(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}
