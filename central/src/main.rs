//! `imprint-central`: the central system's key operations, its servers and its registry.
//!
//! ```text
//!  imprint-central init ──▶ DIR/central.key + DIR/central.pem
//!  imprint-central init --pkcs11 MODULE --token LABEL ──▶ key in the token + DIR/central-key.toml + DIR/central.pem
//!  unit's personalizer.csr ──▶ imprint-central certify-personalizer ──▶ by-central.pem
//!  imprint-central show ──▶ subject, fingerprint, validity of DIR/central.pem
//!  imprint-central serve --listen ADDR [--tls-listen ADDR] ──▶ operating server, TLS endpoint
//!  imprint-central revoke / modules / transactions ──▶ DIR/registry.sqlite
//! ```

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use imprint_apdu::host::personalize::unix_now;
use imprint_apdu::pki::issue::{self, CertificateRequest};
use imprint_central::keyfile::{self, Overwrite};
use imprint_central::{
    CentralAuthority, DEFAULT_COMMON_NAME, DEFAULT_PERSONALIZER_YEARS, DEFAULT_ROOT_YEARS, display,
};

use imprint_central::out;
use imprint_central::registry::{ModuleState, Registry};

/// The central system of Imprint: the root key of the operational PKI.
///
/// Typical use: `init` once, then `certify-personalizer` for every
/// personalization unit's certificate request (`personalizer.csr`, made by
/// `imprint personalizer init`). The resulting certificate goes back to the
/// unit, together with `central.pem`, for `imprint personalizer install`.
#[derive(Parser)]
#[command(name = "imprint-central", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the central key (DIR/central.key, PKCS#8 PEM, mode 0600) and its
    /// self-signed root certificate (DIR/central.pem). Refuses to overwrite an existing key.
    ///
    /// With --pkcs11 the key is generated in a PKCS#11 token instead (non-extractable)
    /// and DIR/central-key.toml records where (module, token, key label; no PIN).
    /// The token's user PIN comes from --pin-file, IMPRINT_CENTRAL_PIN or
    /// IMPRINT_CENTRAL_PIN_FILE; later commands read it from the environment.
    Init {
        /// The central system's directory (created with mode 0700).
        #[arg(long)]
        dir: PathBuf,
        /// Generate the key in a token of this PKCS#11 library (e.g. libsofthsm2.so).
        #[arg(long, value_name = "MODULE_PATH", requires = "token")]
        pkcs11: Option<PathBuf>,
        /// Label of the token that gets the key (with --pkcs11).
        #[arg(long, value_name = "LABEL", requires = "pkcs11")]
        token: Option<String>,
        /// CKA_LABEL and CKA_ID of the key pair in the token (with --pkcs11).
        #[arg(long, value_name = "LABEL", requires = "pkcs11", default_value = imprint_central::hsm::DEFAULT_KEY_LABEL)]
        key_label: String,
        /// File holding the token's user PIN (with --pkcs11; else IMPRINT_CENTRAL_PIN
        /// or IMPRINT_CENTRAL_PIN_FILE).
        #[arg(long, value_name = "FILE", requires = "pkcs11")]
        pin_file: Option<PathBuf>,
        /// Common name of the root certificate.
        #[arg(long, default_value = DEFAULT_COMMON_NAME)]
        name: String,
        /// Lifetime of the root certificate in years.
        #[arg(long, default_value_t = DEFAULT_ROOT_YEARS, value_parser = clap::value_parser!(u32).range(1..=100))]
        years: u32,
    },
    /// Certify a personalization unit's key (claim 6) from its PKCS#10 request,
    /// writing the unit's certificate issued by the central system as PEM.
    CertifyPersonalizer {
        /// The central system's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The unit's certificate request (PEM `CERTIFICATE REQUEST`).
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Lifetime in years (kept within the root's). Keep it within the
        /// unit's manufacturer certificate, which modules require.
        #[arg(long, default_value_t = DEFAULT_PERSONALIZER_YEARS, value_parser = clap::value_parser!(u32).range(1..=100))]
        years: u32,
    },
    /// Print the central root's subject, SHA-384 fingerprint and validity.
    Show {
        /// The central system's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Revoke a module (by serial) or a personalization unit's key (by the
    /// SHA-384 fingerprint of its certificate by the central system, as
    /// certify-personalizer prints it). A running server refuses it at once.
    Revoke(RevokeArgs),
    /// List the modules the central system has seen: serial, state, unit,
    /// last contact, age of the current key set and number of transactions.
    Modules {
        /// The central system's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the transaction journal, one line per transaction.
    Transactions {
        /// The central system's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Serve modules: the operating channel and transaction sessions on
    /// --listen, and optionally the TLS endpoint for PKCS#11 applications on
    /// --tls-listen. Prints each bound address, then runs until SIGINT or SIGTERM.
    Serve(ServeArgs),
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
        Command::Init {
            dir,
            name,
            years,
            pkcs11,
            token,
            key_label,
            pin_file,
        } => {
            let context = || format!("initializing the central system in {}", dir.display());
            let central = match (pkcs11, token) {
                (Some(module), Some(token)) => {
                    let pin = imprint_central::hsm::Pin::from_file_or_env(pin_file.as_deref())
                        .with_context(context)?;
                    let config = imprint_central::hsm::Pkcs11KeyConfig {
                        module,
                        token,
                        key_label,
                    };
                    CentralAuthority::init_pkcs11(&dir, &name, years, &config, &pin)
                        .with_context(context)?
                }
                _ => CentralAuthority::init(&dir, &name, years).with_context(context)?,
            };
            match &central.key {
                imprint_central::CentralKey::Pkcs11(key) => {
                    let config = key.config();
                    out!(
                        "central key:         token {:?}, key {:?} (PKCS#11 module {})",
                        config.token,
                        config.key_label,
                        config.module.display()
                    );
                    out!(
                        "key description:     {}",
                        dir.join(imprint_central::KEY_CONFIG_FILE).display()
                    );
                }
                imprint_central::CentralKey::File(_) => out!(
                    "central key:         {}",
                    dir.join(imprint_central::KEY_FILE).display()
                ),
            }
            out!(
                "central certificate: {}",
                dir.join(imprint_central::CERT_FILE).display()
            );
            print_certificate(&central.cert);
        }
        Command::CertifyPersonalizer {
            dir,
            csr,
            out,
            years,
        } => {
            let central = open(&dir)?;
            let request = read_csr(&csr)?;
            let cert = central
                .certify_personalizer(&request, years)
                .with_context(|| format!("certifying the unit of {}", csr.display()))?;
            // Recorded before the certificate leaves (DESIGN §8).
            open_registry(&dir)?
                .record_unit(&cert, unix_now())
                .context("recording the unit in the registry")?;
            let pem = issue::to_pem(&cert).context("encoding the certificate")?;
            keyfile::write_atomic(
                &out,
                pem.as_bytes(),
                keyfile::PUBLIC_FILE_MODE,
                Overwrite::Replace,
            )?;
            out!(
                "certified {:?} for {} year(s): {}",
                request.common_name(),
                years,
                out.display()
            );
            print_certificate(&cert);
        }
        Command::Show { dir } => {
            let central = open(&dir)?;
            print_certificate(&central.cert);
        }
        Command::Revoke(args) => revoke(args)?,
        Command::Modules { dir } => modules(&dir)?,
        Command::Transactions { dir } => transactions(&dir)?,
        Command::Serve(args) => serve(args)?,
    }
    Ok(())
}

/// Options of `serve`.
#[derive(clap::Args)]
struct ServeArgs {
    /// The central system's directory.
    #[arg(long)]
    dir: PathBuf,
    /// Address of the operating server (host:port; port 0 picks a free one).
    #[arg(long)]
    listen: String,
    /// Address of the TLS endpoint for PKCS#11 applications (host:port).
    #[arg(long)]
    tls_listen: Option<String>,
    /// DNS names and IP addresses the TLS endpoint's certificate names
    /// (used when the certificate is created).
    #[arg(long = "tls-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    tls_names: Vec<String>,
    /// Connections served at once on each listener; more are refused as busy.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_connections: u32,
    /// Seconds to wait for each frame of a conversation (slow peers).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    frame_timeout: u64,
    /// Seconds an open transaction session may stay idle.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    idle_timeout: u64,
    /// Lifetime of each transaction key set, in seconds (default 30 days).
    #[arg(long, default_value_t = 30 * 24 * 3600, value_parser = clap::value_parser!(u64).range(1..=10 * 365 * 24 * 3600))]
    key_set_lifetime: u64,
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMPRINT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    use imprint_central::server::{ServeOptions, ServerLimits};
    use std::time::Duration;
    let options = ServeOptions {
        dir: args.dir,
        listen: args.listen,
        tls_listen: args.tls_listen,
        tls_names: args.tls_names,
        limits: ServerLimits {
            max_connections: args.max_connections as usize,
            frame_timeout: Duration::from_secs(args.frame_timeout),
            idle_timeout: Duration::from_secs(args.idle_timeout),
            key_set_lifetime: Duration::from_secs(args.key_set_lifetime),
        },
    };
    imprint_central::server::run(options, |what, address| {
        out!("{what} listening on {address}");
    })?;
    Ok(())
}

fn open(dir: &Path) -> anyhow::Result<CentralAuthority> {
    CentralAuthority::open(dir)
        .with_context(|| format!("opening the central system in {}", dir.display()))
}

fn read_csr(path: &Path) -> anyhow::Result<CertificateRequest> {
    let text = keyfile::read_text(path)?;
    CertificateRequest::from_pem(&text).with_context(|| {
        format!(
            "{} is not a valid personalization unit certificate request",
            path.display()
        )
    })
}

fn print_certificate(cert: &imprint_apdu::pki::Certificate) {
    out!("subject:     {}", display::subject(cert));
    out!("issuer:      {}", display::issuer(cert));
    out!("role:        {}", cert.role());
    out!("fingerprint: SHA-384 {}", display::fingerprint(cert));
    out!("not before:  {}", display::utc(cert.not_before_unix()));
    out!("not after:   {}", display::utc(cert.not_after_unix()));
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

/// Options of `revoke`: exactly one of --module and --personalizer.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["module", "personalizer"])))]
struct RevokeArgs {
    /// The central system's directory.
    #[arg(long)]
    dir: PathBuf,
    /// Serial of the module to revoke (16 hex characters).
    #[arg(long, value_name = "SERIAL")]
    module: Option<String>,
    /// SHA-384 fingerprint of the unit's certificate by the central system
    /// (hex, colons allowed); revokes every certificate of the unit's key.
    #[arg(long, value_name = "FINGERPRINT")]
    personalizer: Option<String>,
}

/// Opens the registry of an initialized central directory (never creating one).
fn open_registry(dir: &Path) -> anyhow::Result<Registry> {
    if !dir.join(imprint_central::CERT_FILE).is_file() {
        anyhow::bail!(
            "{} is not a central system directory (no {}); run imprint-central init first",
            dir.display(),
            imprint_central::CERT_FILE
        );
    }
    Registry::open(dir).with_context(|| format!("opening the registry in {}", dir.display()))
}

fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let mut registry = open_registry(&args.dir)?;
    let now = unix_now();
    match (args.module, args.personalizer) {
        (Some(serial), None) => {
            if !registry.revoke_module(&serial, now)? {
                anyhow::bail!("no such module: {serial}");
            }
            out!("revoked module {}", serial.to_ascii_lowercase());
        }
        (None, Some(fingerprint)) => {
            if !registry.revoke_unit(&fingerprint, now)? {
                anyhow::bail!("no such personalization unit: {fingerprint}");
            }
            out!("revoked personalization unit {fingerprint} (every certificate of its key)");
        }
        _ => anyhow::bail!("give exactly one of --module and --personalizer"),
    }
    Ok(())
}

fn modules(dir: &Path) -> anyhow::Result<()> {
    let modules = open_registry(dir)?.modules()?;
    let now = unix_now();
    out!(
        "{:<16}  {:<12}  {:<16}  {:<20}  {:<16}  {:>12}",
        "SERIAL",
        "STATE",
        "UNIT",
        "LAST SEEN (UTC)",
        "KEY SET AGE",
        "TRANSACTIONS"
    );
    for module in modules {
        let state = match (module.state, module.unit_revoked) {
            (ModuleState::Revoked, _) => "revoked",
            (ModuleState::Active, true) => "unit revoked",
            (ModuleState::Active, false) => "active",
        };
        let key_set = match (module.key_set_created, module.key_set_expires) {
            (Some(created), Some(expires)) if expires <= now => {
                format!("{} (expired)", age(now.saturating_sub(created)))
            }
            (Some(created), _) => age(now.saturating_sub(created)),
            (None, _) => "none".to_owned(),
        };
        let unit: String = module.unit_fingerprint.chars().take(16).collect();
        out!(
            "{:<16}  {:<12}  {:<16}  {:<20}  {:<16}  {:>12}",
            module.serial,
            state,
            unit,
            display::utc(module.last_seen),
            key_set,
            module.transactions
        );
    }
    Ok(())
}

/// A duration in its largest whole unit: `42 s`, `5 min`, `3 h`, `12 d`.
fn age(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

fn transactions(dir: &Path) -> anyhow::Result<()> {
    let journal = open_registry(dir)?.transactions()?;
    out!("NUMBER  TIME (UTC)  SERIAL  KEY SET  SESSION  SEQUENCE  PAYLOAD SHA-384");
    for entry in journal {
        let record = &entry.record;
        out!(
            "{}  {}  {}  {}  {}  {}  {}",
            entry.number,
            display::utc(record.time),
            record.serial,
            display::hex(&record.key_set_id),
            record.session_counter,
            record.sequence,
            display::hex(&record.payload_digest)
        );
    }
    Ok(())
}
