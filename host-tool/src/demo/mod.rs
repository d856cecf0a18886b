//! The whole flow on N file-backed modules, verified afterwards.
//!
//! ```text
//!  DIR/manufacturer ── Manufacturer::init ───────────────┐ certify (claim 7)
//!  DIR/central ─────── CentralAuthority::init ───────────┤ certify (claim 6)
//!  DIR/personalizer ── Personalizer::init ─ CSR ─────────┴▶ install (claims 4-5)
//!  DIR/modules/<n> ─── manufacture (claim 8) ─▶ personalize (claims 1, 3, 7-10)
//!                                             ─▶ journal.sqlite
//!  DIR/modules/1 ───── personalize again (claim 2: old key and certificate erased)
//!  every module ────── read_status ─▶ OPERATING, chain to the central root, nonce, 0600
//!  DIR/central ─────── in-process operating server on loopback (claims 1, 4, 11, 21)
//!  every module ────── connect (operating channel, key set) ─▶ one transaction ─▶ receipt
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::host::{PersonalizationOptions, UnitCredentials, personalize};
use imprint_apdu::pki::{self, Certificate, PkiError};
use imprint_apdu::proto::Lifecycle;
use imprint_central::CentralAuthority;

use crate::HostError;
use crate::journal::{IssuanceStatus, SqliteJournal};
use crate::module;
use crate::roles;

#[cfg(test)]
mod tests;

/// Lifetime of the demo's module certificates, in years.
const MODULE_YEARS: u32 = 5;

/// One module of the demo.
#[derive(Debug, Clone)]
pub struct DemoRow {
    /// 1-based module number (its directory is `DIR/modules/<index>`).
    pub index: usize,
    /// Module serial.
    pub serial: String,
    /// APDUs of manufacturing.
    pub manufacture_apdus: u32,
    /// APDUs of the first personalization.
    pub personalization_apdus: u32,
    /// Wall time of the first personalization.
    pub personalization_time: Duration,
    /// APDUs of the re-personalization, for the re-personalized module.
    pub repersonalization_apdus: Option<u32>,
    /// Commands of the operating channel with the central system.
    pub connect_commands: u32,
    /// Wall time of the operating channel.
    pub connect_time: Duration,
    /// Wall time of one transaction session with one transaction.
    pub transaction_time: Duration,
    /// Whether every check passed.
    pub verified: bool,
    /// The checks that failed.
    pub failures: Vec<CheckFailure>,
}

impl DemoRow {
    /// Whether this module was re-personalized.
    pub fn repersonalized(&self) -> bool {
        self.repersonalization_apdus.is_some()
    }
}

/// The outcome of [`run_demo`].
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The demo's directory.
    pub dir: PathBuf,
    /// One row per module.
    pub rows: Vec<DemoRow>,
    /// APDUs of a first personalization (module 1).
    pub first_personalization_apdus: u32,
    /// APDUs of a re-personalization (module 1).
    pub repersonalization_apdus: u32,
    /// Whether every module passed every check.
    pub all_verified: bool,
}

/// A check of the demo that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
    /// The module is not OPERATING.
    NotOperating(Lifecycle),
    /// The module reports another serial than at manufacture.
    SerialChanged {
        /// The serial at manufacture.
        expected: String,
        /// The serial reported now.
        found: Option<String>,
    },
    /// A certificate the module must hold is absent.
    MissingCertificate(&'static str),
    /// A link of the module's chain does not verify.
    Chain {
        /// Which link.
        link: &'static str,
        /// Why.
        error: PkiError,
    },
    /// The module certificate carries no nonce (claim 9).
    NonceMissing,
    /// The module certificate names another module.
    WrongSubject,
    /// The central anchor in the module is not the central system's key (claims 4-5).
    WrongCentralAnchor,
    /// The journal's latest entry for the module is not its installed certificate.
    JournalMismatch,
    /// The journal does not hold the expected number of installed entries.
    JournalCount {
        /// Expected installed entries.
        expected: usize,
        /// Installed entries found.
        found: usize,
    },
    /// Re-personalization kept the old module key (claim 2).
    KeyNotRenewed,
    /// Re-personalization kept the old module certificate (claim 2).
    CertificateNotReplaced,
    /// The operating channel or the transaction with the central system failed.
    Operating(String),
    /// The central system's receipt does not acknowledge the payload sent.
    WrongReceipt,
    /// A key-memory file is not mode 0600.
    LooseFile {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOperating(state) => write!(f, "module is {state}, not OPERATING"),
            Self::SerialChanged { expected, found } => {
                write!(
                    f,
                    "module reports serial {found:?}, manufactured as {expected}"
                )
            }
            Self::MissingCertificate(what) => write!(f, "module holds no {what}"),
            Self::Chain { link, error } => write!(f, "{link} does not verify: {error}"),
            Self::NonceMissing => f.write_str("module certificate carries no nonce"),
            Self::WrongSubject => f.write_str("module certificate names another module"),
            Self::WrongCentralAnchor => {
                f.write_str("module's central anchor is not the central system's key")
            }
            Self::JournalMismatch => {
                f.write_str("journal's latest entry is not the installed module certificate")
            }
            Self::JournalCount { expected, found } => {
                write!(
                    f,
                    "journal holds {found} installed entries, expected {expected}"
                )
            }
            Self::KeyNotRenewed => f.write_str("re-personalization kept the old module key"),
            Self::CertificateNotReplaced => {
                f.write_str("re-personalization kept the old module certificate")
            }
            Self::Operating(reason) => write!(f, "with the central system: {reason}"),
            Self::WrongReceipt => {
                f.write_str("the central system's receipt is not for the payload sent")
            }
            Self::LooseFile { path, mode } => {
                write!(
                    f,
                    "key memory file {} has mode {mode:03o}, not 600",
                    path.display()
                )
            }
        }
    }
}

/// Runs the demo in `dir` (created if needed; must not hold an earlier demo)
/// with `modules` modules. Fails on the first step that cannot proceed; checks
/// that merely fail are reported in the rows and in
/// [`DemoReport::all_verified`].
pub fn run_demo(dir: &Path, modules: usize) -> Result<DemoReport, HostError> {
    if modules == 0 {
        return Err(HostError::NoModules);
    }
    imprint_central::keyfile::create_private_dir(dir)?;

    // The three roles.
    let roles::Roles {
        manufacturer,
        central,
        unit_dir,
        unit,
    } = roles::create_all(dir, "Imprint demo")?;
    let mut journal = SqliteJournal::open(&roles::journal_path(&unit_dir))?;

    // Manufacture and personalize every module.
    let mut rows = Vec::with_capacity(modules);
    for index in 1..=modules {
        let module_dir = module_dir(dir, index);
        let mut link = module::open(&module_dir, true)?;
        let made = manufacture(
            &mut link,
            manufacturer.credentials(),
            roles::DEFAULT_IDENTITY_YEARS,
        )?;
        // One process opens a module at a time: release it first.
        drop(link);
        // A fresh power-up for personalization, as at another station.
        let mut link = module::open(&module_dir, false)?;
        let report = personalize(
            &mut link,
            &mut journal,
            &unit,
            options(format!("imprint demo module {index}")),
        )?;
        rows.push(DemoRow {
            index,
            serial: made.serial,
            manufacture_apdus: made.apdus,
            personalization_apdus: report.apdus,
            personalization_time: report.elapsed,
            repersonalization_apdus: None,
            connect_commands: 0,
            connect_time: Duration::ZERO,
            transaction_time: Duration::ZERO,
            verified: false,
            failures: Vec::new(),
        });
    }

    // Claim 2: re-personalize module 1; its old key and certificate must go.
    let first_dir = module_dir(dir, 1);
    let before = module::status(&first_dir)?.module_cert;
    let mut link = module::open(&first_dir, false)?;
    let again = personalize(
        &mut link,
        &mut journal,
        &unit,
        options("imprint demo module 1, re-personalized".to_owned()),
    )?;
    drop(link);
    let after = module::status(&first_dir)?.module_cert;
    let mut first_failures = Vec::new();
    match (&before, &after) {
        (Some(old), Some(new)) => {
            if old.public_key_sec1() == new.public_key_sec1() {
                first_failures.push(CheckFailure::KeyNotRenewed);
            }
            if old.der() == new.der() {
                first_failures.push(CheckFailure::CertificateNotReplaced);
            }
        }
        _ => first_failures.push(CheckFailure::MissingCertificate("module certificate")),
    }

    for row in &mut rows {
        let expected_installed = if row.index == 1 { 2 } else { 1 };
        let mut failures = verify_module(
            &module_dir(dir, row.index),
            &row.serial,
            &unit,
            &central.cert,
            &journal,
            expected_installed,
        )?;
        if row.index == 1 {
            row.repersonalization_apdus = Some(again.apdus);
            failures.append(&mut first_failures);
        }
        row.verified = failures.is_empty();
        row.failures = failures;
    }
    // The modules' operating life: the central system registers the unit
    // it certified, and each module connects and runs one transaction.
    let central_dir = dir.join("central");
    imprint_central::registry::Registry::open(&central_dir)?.record_unit(
        &unit.cert_by_central,
        imprint_apdu::host::personalize::unix_now(),
    )?;
    operate_modules(dir, &central_dir, &mut rows)?;
    for row in &mut rows {
        row.verified = row.failures.is_empty();
    }

    let first_personalization_apdus = rows.first().map_or(0, |row| row.personalization_apdus);
    let all_verified = rows.iter().all(|row| row.verified);
    Ok(DemoReport {
        dir: dir.to_path_buf(),
        rows,
        first_personalization_apdus,
        repersonalization_apdus: again.apdus,
        all_verified,
    })
}

/// Runs the central system's operating server in this process on loopback
/// and, for every module, the operating channel and one transaction.
fn operate_modules(dir: &Path, central_dir: &Path, rows: &mut [DemoRow]) -> Result<(), HostError> {
    use imprint_central::client::{self, TransactionClient};
    use imprint_central::registry::Registry;
    use imprint_central::server::{AcceptAll, CentralService, ServerLimits, serve};
    use std::sync::Arc;
    use std::time::Instant;

    let service = Arc::new(CentralService::new(
        CentralAuthority::open(central_dir)?,
        Registry::open(central_dir)?,
        Arc::new(AcceptAll),
        ServerLimits::default(),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(HostError::CentralServer)?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(HostError::CentralServer)?;
    let address = listener
        .local_addr()
        .map_err(HostError::CentralServer)?
        .to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(serve(listener, Arc::clone(&service), async {
        let _ = stopped.await;
    }));

    for row in rows.iter_mut() {
        let payload = format!("demo transaction of module {}", row.index);
        let mut link = module::open(&module_dir(dir, row.index), false)?;
        let outcome = (|| {
            let mut stream = client::connect(&address, client::DEFAULT_TIMEOUT)?;
            let started = Instant::now();
            let report = client::operate(&mut link, &mut stream)?;
            row.connect_time = started.elapsed();
            row.connect_commands = report.commands;
            let mut stream = client::connect(&address, client::DEFAULT_TIMEOUT)?;
            let started = Instant::now();
            let mut session = TransactionClient::open(&mut link, &mut stream, None)?;
            let receipt = session.transact(payload.as_bytes())?;
            session.close()?;
            row.transaction_time = started.elapsed();
            Ok::<_, client::ClientError>(receipt)
        })();
        match outcome {
            Ok(receipt)
                if receipt.payload_digest == imprint_apdu::channel::sha384(payload.as_bytes()) => {}
            Ok(_) => row.failures.push(CheckFailure::WrongReceipt),
            Err(err) => row.failures.push(CheckFailure::Operating(err.to_string())),
        }
    }
    let _ = stop.send(());
    let _ = runtime.block_on(server);
    let journaled = service.with_registry(|registry| registry.transactions())?;
    let expected = rows.len();
    if journaled.len() != expected
        && let Some(row) = rows.first_mut()
    {
        row.failures.push(CheckFailure::Operating(format!(
            "the central system journaled {} transactions, expected {expected}",
            journaled.len()
        )));
    }
    Ok(())
}

fn module_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join("modules").join(index.to_string())
}

fn options(variation: String) -> PersonalizationOptions {
    PersonalizationOptions {
        variation: variation.into_bytes(),
        validity_years: MODULE_YEARS,
        issuer: None,
        ..Default::default()
    }
}

/// Checks one module after the demo: OPERATING, the chain module → unit (by
/// central) → central root, nonce and subject, the central anchor, the
/// journal, and the key memory's file modes.
fn verify_module(
    dir: &Path,
    serial: &str,
    unit: &UnitCredentials,
    central_root: &Certificate,
    journal: &SqliteJournal,
    expected_installed: usize,
) -> Result<Vec<CheckFailure>, HostError> {
    let status = module::status(dir)?;
    let mut failures = Vec::new();
    if status.info.lifecycle != Lifecycle::Operating {
        failures.push(CheckFailure::NotOperating(status.info.lifecycle));
    }
    if status.serial.as_deref() != Some(serial) {
        failures.push(CheckFailure::SerialChanged {
            expected: serial.to_owned(),
            found: status.serial.clone(),
        });
    }
    let chain = |link, result: Result<(), PkiError>| {
        result
            .err()
            .map(|error| CheckFailure::Chain { link, error })
    };
    match (&status.module_cert, &status.unit_cert) {
        (Some(module_cert), Some(unit_by_central)) => {
            failures.extend(chain(
                "module certificate under the unit's central certificate",
                pki::verify_issued_by(module_cert, unit_by_central, 0),
            ));
            failures.extend(chain(
                "unit's central certificate under the central root",
                pki::verify_issued_by(unit_by_central, central_root, 1),
            ));
            if unit_by_central.der() != unit.cert_by_central.der() {
                failures.push(CheckFailure::Chain {
                    link: "unit's central certificate",
                    error: PkiError::KeyMismatch,
                });
            }
            if module_cert.nonce().is_none() {
                failures.push(CheckFailure::NonceMissing);
            }
            if module_cert.module_serial() != Some(serial) {
                failures.push(CheckFailure::WrongSubject);
            }
            let entries = journal.entries_for(serial)?;
            let installed = entries
                .iter()
                .filter(|entry| entry.status == IssuanceStatus::Installed)
                .count();
            if installed != expected_installed {
                failures.push(CheckFailure::JournalCount {
                    expected: expected_installed,
                    found: installed,
                });
            }
            let latest_matches = entries.last().is_some_and(|entry| {
                entry.status == IssuanceStatus::Installed
                    && entry.certificate == module_cert.der()
                    && Some(entry.nonce.as_slice()) == module_cert.nonce().as_ref().map(|n| &n[..])
            });
            if !latest_matches {
                failures.push(CheckFailure::JournalMismatch);
            }
        }
        (None, _) => failures.push(CheckFailure::MissingCertificate("module certificate")),
        (_, None) => failures.push(CheckFailure::MissingCertificate(
            "unit certificate issued by the central system",
        )),
    }
    match &status.central_cert {
        Some(anchor) if anchor.public_key_sec1() == central_root.public_key_sec1() => {}
        Some(_) => failures.push(CheckFailure::WrongCentralAnchor),
        None => failures.push(CheckFailure::MissingCertificate("central anchor")),
    }
    failures.extend(
        module::loose_files(dir)?
            .into_iter()
            .map(|(path, mode)| CheckFailure::LooseFile { path, mode }),
    );
    Ok(failures)
}
