//! `imprint-central`: the central system's offline operations.
//!
//! ```text
//!  imprint-central init ──▶ DIR/central.key + DIR/central.pem
//!  unit's personalizer.csr ──▶ imprint-central certify-personalizer ──▶ by-central.pem
//!  imprint-central show ──▶ subject, fingerprint, validity of DIR/central.pem
//! ```

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use imprint_apdu::pki::issue::{self, CertificateRequest};
use imprint_central::keyfile::{self, Overwrite};
use imprint_central::{
    CentralAuthority, DEFAULT_COMMON_NAME, DEFAULT_PERSONALIZER_YEARS, DEFAULT_ROOT_YEARS, display,
};

use imprint_central::out;

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
    Init {
        /// The central system's directory (created with mode 0700).
        #[arg(long)]
        dir: PathBuf,
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
        Command::Init { dir, name, years } => {
            let central = CentralAuthority::init(&dir, &name, years)
                .with_context(|| format!("initializing the central system in {}", dir.display()))?;
            out!(
                "central key:         {}",
                dir.join(imprint_central::KEY_FILE).display()
            );
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
    }
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
