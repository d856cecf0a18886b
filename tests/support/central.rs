//! A real `imprint-central serve` for end-to-end tests: a central directory
//! made from a test [`Pki`] (its central key and root, its unit recorded in
//! the registry), the binary started on a loopback port, and killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use imprint_apdu::host::{CardLink, Transport};
use imprint_apdu::pki::issue;
use imprint_central::client::{self, ClientError, OperateReport, TransactionClient};
use imprint_central::operating::Receipt;
use imprint_central::registry::{JournaledTransaction, Registry};

use crate::Pki;

/// The `imprint-central` binary of this build. `cargo test --workspace`
/// builds every workspace binary before the tests run; for a narrower run
/// (or a stale binary) it is built here, once per test process.
pub fn central_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>/deps/<test>");
            let release = profile_dir
                .file_name()
                .is_some_and(|name| name == "release");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args([
                "build",
                "--quiet",
                "-p",
                "imprint-central",
                "--bin",
                "imprint-central",
            ]);
            if release {
                build.arg("--release");
            }
            let status = build.status().expect("running cargo build");
            assert!(status.success(), "cargo build of imprint-central failed");
            let binary = profile_dir.join("imprint-central");
            assert!(binary.exists(), "{} is missing", binary.display());
            binary
        })
        .clone()
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Writes `pki`'s central key and root into `dir` as `imprint-central init`
/// would, and records `pki`'s unit in the registry, as `certify-personalizer`
/// does for the units it certifies.
pub fn central_dir_for(pki: &Pki, dir: &Path) {
    imprint_central::keyfile::create_private_dir(dir).expect("central dir");
    imprint_central::keyfile::write_signing_key(
        &dir.join(imprint_central::KEY_FILE),
        &pki.central_key,
    )
    .expect("central key");
    std::fs::write(
        dir.join(imprint_central::CERT_FILE),
        issue::to_pem(&pki.central_root).expect("pem"),
    )
    .expect("central certificate");
    Registry::open(dir)
        .expect("registry")
        .record_unit(&pki.unit.cert_by_central, now())
        .expect("record unit");
}

/// A running `imprint-central serve`.
pub struct CentralServer {
    /// The central directory (key, certificate, registry).
    pub dir: tempfile::TempDir,
    /// The operating server's address.
    pub address: String,
    /// The TLS endpoint's address, when started with `--tls-listen`.
    pub tls_address: Option<String>,
    child: Child,
    log: PathBuf,
}

impl CentralServer {
    /// Starts a server for `pki`'s central system with `extra` arguments to `serve`.
    pub fn start(pki: &Pki, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("central dir");
        central_dir_for(pki, dir.path());
        Self::start_in(dir, extra)
    }

    /// Starts a server on an existing central directory.
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let log = dir.path().join("serve.log");
        let mut child = Command::new(central_binary())
            .arg("serve")
            .arg("--dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("IMPRINT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting imprint-central serve");
        let wants_tls = extra.contains(&"--tls-listen");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut address = None;
        let mut tls_address = None;
        while address.is_none() || (wants_tls && tls_address.is_none()) {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "imprint-central serve exited early:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            };
            if let Some(rest) = line.strip_prefix("operating server listening on ") {
                address = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("TLS endpoint listening on ") {
                tls_address = Some(rest.trim().to_owned());
            }
        }
        Self {
            dir,
            address: address.expect("address"),
            tls_address,
            child,
            log,
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `imprint-central ARGS --dir DIR`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(central_binary())
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            .output()
            .expect("running imprint-central")
    }

    /// The registry, opened beside the running server.
    pub fn registry(&self) -> Registry {
        Registry::open(self.dir.path()).expect("registry")
    }

    /// The transaction journal.
    pub fn journal(&self) -> Vec<JournaledTransaction> {
        self.registry().transactions().expect("journal")
    }

    /// Runs the operating channel for the module behind `link`.
    pub fn operate<T: Transport>(
        &self,
        link: &mut CardLink<T>,
    ) -> Result<OperateReport, ClientError> {
        let mut stream = client::connect(&self.address, client::DEFAULT_TIMEOUT)?;
        client::operate(link, &mut stream)
    }

    /// Runs one transaction session with `payloads` for the module behind `link`.
    pub fn transact<T: Transport>(
        &self,
        link: &mut CardLink<T>,
        payloads: &[&[u8]],
    ) -> Result<Vec<Receipt>, ClientError> {
        let mut stream = client::connect(&self.address, client::DEFAULT_TIMEOUT)?;
        let mut session = TransactionClient::open(link, &mut stream, None)?;
        let receipts = payloads
            .iter()
            .map(|payload| session.transact(payload))
            .collect::<Result<Vec<_>, _>>()?;
        session.close()?;
        Ok(receipts)
    }
}

impl Drop for CentralServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
