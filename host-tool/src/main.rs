//! `imprint`: the manufacturer's and the personalization unit's command line.
//!
//! ```text
//!  imprint manufacturer init ─▶ M/manufacturer.{key,pem}
//!  imprint personalizer init ─▶ P/personalizer.{key,csr}
//!     P/personalizer.csr ─▶ imprint manufacturer certify-personalizer ─▶ by-manufacturer.pem
//!     P/personalizer.csr ─▶ imprint-central certify-personalizer ───────▶ by-central.pem
//!  imprint personalizer install ─▶ P/{by-*,central-delivery,manufacturer}.pem
//!  imprint manufacturer manufacture ─▶ module DIR (identity key + certificate)
//!  imprint personalize ─▶ module DIR OPERATING, P/journal.sqlite
//!  imprint module status | reset | export-chain;  imprint journal list;  imprint bench crypto
//! ```

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::host::status::ModuleStatus;
use imprint_apdu::host::{PersonalizationOptions, personalize, reset_module};
use imprint_apdu::pki::Certificate;
use imprint_apdu::proto::len::VARIATION_MAX;
use imprint_central::display;
use imprint_host::journal::{IssuanceStatus, SqliteJournal};
use imprint_host::roles::{self, Manufacturer, Personalizer};
use imprint_host::{bench, demo, module};

/// `println!` that ends the program quietly when standard output is closed
/// (`imprint … | head`) instead of panicking, and with status 1 on other
/// write errors.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout().lock(), $($arg)*) {
            stdout_failed(&err);
        }
    }};
}

fn stdout_failed(err: &std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {err}");
    std::process::exit(1);
}

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

Every failure prints `error: <reason>` on standard error and exits with status 1.";

/// Imprint host tool: manufacturer, personalization unit and issuance journal
/// for Imprint security modules (file-backed modules reached in-process).
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
    /// Inspect, reset or export a module.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// The personalization unit's issuance journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
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
        /// The module (its key-memory directory).
        #[arg(long)]
        module: PathBuf,
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
}

#[derive(Args)]
struct PersonalizeArgs {
    /// The personalization unit's directory.
    #[arg(long)]
    personalizer: PathBuf,
    /// The module (its key-memory directory).
    #[arg(long)]
    module: PathBuf,
    /// Variation value for the module's key generation (claim 10), 1 to 64
    /// bytes as hex. Default: 32 random bytes.
    #[arg(long)]
    variation: Option<String>,
    /// Lifetime of the module certificate in years (within the unit's).
    #[arg(long, default_value_t = 5, value_parser = years())]
    years: u32,
}

#[derive(Subcommand)]
enum ModuleCommand {
    /// Print the module's serial, lifecycle and certificates.
    Status {
        /// The module (its key-memory directory).
        #[arg(long)]
        module: PathBuf,
    },
    /// Return the module to PERSONALIZATION through the unit's authenticated
    /// channel, erasing its module key, module certificate and central anchor
    /// (claim 2). The identity key survives.
    Reset {
        /// The module (its key-memory directory).
        #[arg(long)]
        module: PathBuf,
        /// The personalization unit's directory.
        #[arg(long)]
        personalizer: PathBuf,
    },
    /// Write the module certificate followed by the unit's certificate issued
    /// by the central system (PEM): the chain to verify against the central
    /// root. Fails unless the module is OPERATING.
    ExportChain {
        /// The module (its key-memory directory).
        #[arg(long)]
        module: PathBuf,
        /// Where to write the PEM chain.
        #[arg(long)]
        out: PathBuf,
    },
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
        Command::Module(command) => run_module(command),
        Command::Journal(JournalCommand::List {
            personalizer,
            serial,
        }) => list_journal(&personalizer, serial),
        Command::Bench(BenchCommand::Crypto { seconds }) => run_bench(seconds),
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
        "{:>3}  {:<16}  {:>11}  {:>11}  {:>8}  {:<15}  {}",
        "#",
        "serial",
        "manufacture",
        "personalize",
        "time ms",
        "re-personalized",
        "verified"
    );
    for row in &report.rows {
        out!(
            "{:>3}  {:<16}  {:>11}  {:>11}  {:>8.1}  {:<15}  {}",
            row.index,
            row.serial,
            format!("{} APDUs", row.manufacture_apdus),
            format!("{} APDUs", row.personalization_apdus),
            row.personalization_time.as_secs_f64() * 1000.0,
            match row.repersonalization_apdus {
                Some(apdus) => format!("yes ({apdus} APDUs)"),
                None => "no".to_owned(),
            },
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
        ManufacturerCommand::Manufacture { dir, module, years } => {
            let manufacturer = open_manufacturer(&dir)?;
            let mut link = module::open(&module, true)?;
            let report = manufacture(&mut link, manufacturer.credentials(), years)
                .with_context(|| format!("manufacturing the module in {}", module.display()))?;
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
    }
    Ok(())
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
    let unit = open_unit(&args.personalizer)?;
    let journal_path = roles::journal_path(&args.personalizer);
    let mut journal = SqliteJournal::open(&journal_path)?;
    let mut link = module::open(&args.module, false)?;
    let options = PersonalizationOptions {
        variation,
        validity_years: args.years,
        issuer: None,
    };
    let report = personalize(&mut link, &mut journal, &unit, options)
        .with_context(|| format!("personalizing the module in {}", args.module.display()))?;
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
        ModuleCommand::Status { module } => {
            let status = module_status(&module)?;
            print_status(&status);
        }
        ModuleCommand::Reset {
            module,
            personalizer,
        } => {
            let unit = open_unit(&personalizer)?;
            let mut link = module::open(&module, false)?;
            let apdus = reset_module(&mut link, &unit)
                .with_context(|| format!("resetting the module in {}", module.display()))?;
            drop(link);
            let status = module_status(&module)?;
            out!(
                "module {} is now {}: module key, module certificate, unit certificate and central anchor erased ({apdus} APDUs)",
                status.serial.as_deref().unwrap_or("without serial"),
                status.info.lifecycle
            );
        }
        ModuleCommand::ExportChain { module, out } => {
            let status = module_status(&module)?;
            let chain = module::operating_chain(&status).with_context(|| {
                format!("exporting the chain of the module in {}", module.display())
            })?;
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

fn module_status(module: &Path) -> anyhow::Result<ModuleStatus> {
    module::status(module).with_context(|| format!("reading the module in {}", module.display()))
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
        "{:>5}  {:<16}  {:<9}  {:<20}  {:<32}  reason",
        "id",
        "serial",
        "status",
        "issued at",
        "fingerprint (SHA-384, start)"
    );
    for entry in &entries {
        let issued_at = u64::try_from(entry.issued_at)
            .map_or_else(|_| entry.issued_at.to_string(), display::utc);
        out!(
            "{:>5}  {:<16}  {:<9}  {:<20}  {:<32}  {}",
            entry.id,
            entry.serial,
            entry.status,
            issued_at,
            entry.fingerprint.get(..32).unwrap_or(&entry.fingerprint),
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

fn run_bench(seconds: f64) -> anyhow::Result<()> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 600.0) {
        bail!("--seconds must be more than 0 and at most 600, got {seconds}");
    }
    if cfg!(debug_assertions) {
        out!(
            "note: debug build of imprint (dependencies are optimized); use --release for the reference figures"
        );
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
