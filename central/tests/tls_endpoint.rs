//! The central system's TLS endpoint against third-party TLS clients that
//! hold the module key through `libimprint_pkcs11.so` (DESIGN §4, "Standard
//! TLS path"): OpenSSL's `s_client` with the pkcs11 engine, and GnuTLS's
//! `gnutls-cli` with the provider given by `--provider` (no global p11-kit
//! configuration is written). After the admission callback starts refusing
//! the module (as the registry does once it is revoked), both fail.
//!
//! ```text
//!  s_client ─ engine pkcs11 ──┐
//!                             ├─ libimprint_pkcs11.so ─ file module (personalized in-process)
//!  gnutls-cli ─ --provider ───┘        │ module key, pkcs11:…;object=module
//!     │ TLS 1.3, client certificate     │
//!     ▼                                 │
//!  run_tls_endpoint (in-process, 127.0.0.1:0) ── ModuleClientVerifier ── admission(flag)
//! ```
//!
//! The first test runs the endpoint in this process with an admission flag
//! it flips; the second drives the real binary: `imprint-central serve
//! --tls-listen 127.0.0.1:0`, whose admission is the registry, and revokes
//! the module with `imprint-central revoke --module SERIAL`. Every external
//! process has a bounded wait. Without OpenSSL's pkcs11 engine or
//! gnutls-cli the test is skipped loudly; under `CI=true` it fails instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use imprint_apdu::host::status::read_status;
use imprint_apdu::pki::Certificate;
use imprint_apdu::pki::issue::to_pem;
use imprint_central::tls::{
    Admission, EndpointCertificate, EndpointConfig, EndpointNames, GREETING_PREFIX,
    run_tls_endpoint, server_config,
};
use imprint_central::{CentralAuthority, display, keyfile};
use imprint_tests::{Pki, RecordingJournal, file_module, manufacture_with, personalized};
use sha2::{Digest, Sha384};

/// How long any one client process may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The line each client sends after the greeting.
const LINE: &str = "hello from a module";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// Skips (returns `false`) when something is missing, or fails under CI.
fn require(found: bool, what: &str) -> bool {
    if !found {
        assert!(!ci(), "{what} is not available; CI=true");
        eprintln!("SKIPPED: {what} is not available");
    }
    found
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// `libimprint_pkcs11.so`, built by Cargo as a (dev-)dependency of this
/// crate into `target/<profile>/deps/`, beside the test executables.
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("target/<profile>/deps/<test>");
    let library = deps.join("libimprint_pkcs11.so");
    assert!(
        library.exists(),
        "{} is missing: cargo builds the cdylib as a dev-dependency",
        library.display()
    );
    library
}

/// The deployment, a personalized file module, the central directory and
/// the files the clients use.
struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
    config: PathBuf,
    serial: String,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new();
        let mut link = file_module(&dir.path().join("module"));
        let report = manufacture_with(&mut link, &pki.manufacturer);
        personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).expect("personalize");
        let status = read_status(&mut link).expect("status");
        let module = status.module_cert.expect("module certificate");
        let unit = status.unit_cert.expect("unit certificate by the central");
        drop(link);
        for (name, cert) in [
            ("module.pem", &module),
            ("unit.pem", &unit),
            ("central.pem", &pki.central_root),
        ] {
            std::fs::write(dir.path().join(name), to_pem(cert).expect("PEM")).expect(name);
        }
        let chain = format!(
            "{}{}",
            to_pem(&module).expect("PEM"),
            to_pem(&unit).expect("PEM")
        );
        std::fs::write(dir.path().join("chain.pem"), chain).expect("chain.pem");
        let config = dir.path().join("pkcs11.toml");
        std::fs::write(
            &config,
            format!(
                "[[module]]\nkind = \"file\"\npath = \"{}\"\n",
                dir.path().join("module").display()
            ),
        )
        .expect("config");
        Self {
            dir,
            pki,
            config,
            serial: report.serial,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The central directory made from the deployment's key and root.
    fn central(&self) -> CentralAuthority {
        let dir = self.path("central");
        keyfile::create_private_dir(&dir).expect("central dir");
        keyfile::write_signing_key(&dir.join(imprint_central::KEY_FILE), &self.pki.central_key)
            .expect("central key");
        std::fs::write(
            dir.join(imprint_central::CERT_FILE),
            to_pem(&self.pki.central_root).expect("PEM"),
        )
        .expect("central.pem");
        CentralAuthority::open(&dir).expect("central")
    }

    fn key_uri(&self) -> String {
        format!("pkcs11:token={};object=module;type=private", self.serial)
    }

    /// `openssl s_client` with the module key through the pkcs11 engine.
    fn openssl_client(&self, port: u16) -> ClientRun {
        let mut command = Command::new("openssl");
        command
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-tls1_3",
            ])
            .args([
                "-engine",
                "pkcs11",
                "-keyform",
                "engine",
                "-key",
                &self.key_uri(),
            ])
            .args(["-cert", "module.pem", "-cert_chain", "unit.pem"])
            .args(["-CAfile", "central.pem", "-verify_return_error"])
            .args(["-verify_ip", "127.0.0.1", "-ign_eof"])
            .env("PKCS11_MODULE_PATH", library())
            .env_remove("OPENSSL_CONF");
        self.run(command)
    }

    /// `gnutls-cli` with the module key as a PKCS#11 URI of our provider,
    /// loaded with `--provider` (no p11-kit configuration file needed).
    ///
    /// The certificate is `chain.pem` (module + unit): given the module
    /// certificate's URI (`…;object=module;type=cert`), GnuTLS 3.7 loads it
    /// from the token but does not pick up the unit certificate the token
    /// also holds ("Processed 1 client X.509 certificates", one certificate
    /// sent), so the endpoint rightly refuses the chain as of unknown CA.
    fn gnutls_client(&self, port: u16) -> ClientRun {
        let mut command = Command::new("gnutls-cli");
        command
            .arg("--provider")
            .arg(library())
            .args(["--x509keyfile", &self.key_uri()])
            .args(["--x509certfile", "chain.pem"])
            .args(["--x509cafile", "central.pem"])
            .args(["--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3"])
            .args(["--port", &port.to_string(), "127.0.0.1"]);
        self.run(command)
    }

    /// Runs a client: sends [`LINE`] and keeps standard input open until the
    /// server's answer arrives, the client exits, or [`TIMEOUT`] passes.
    fn run(&self, mut command: Command) -> ClientRun {
        let child = command
            .current_dir(self.dir.path())
            .env("IMPRINT_PKCS11_CONF", &self.config)
            .env_remove("IMPRINT_PKCS11_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running the TLS client");
        ClientRun::drive(child)
    }
}

/// What a client printed.
struct ClientRun {
    stdout: String,
    stderr: String,
    success: bool,
}

impl ClientRun {
    fn drive(mut child: Child) -> Self {
        let (sender, lines) = mpsc::channel::<(bool, String)>();
        for (is_stdout, stream) in [
            (
                true,
                Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            ),
            (false, Box::new(child.stderr.take().expect("stderr"))),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if sender.send((is_stdout, line)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        let mut stdin = child.stdin.take();
        if let Some(input) = stdin.as_mut() {
            // The client may already have gone (a refused handshake).
            let _ = input.write_all(format!("{LINE}\n").as_bytes());
            let _ = input.flush();
        }
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let deadline = Instant::now() + TIMEOUT;
        let mut closed_input_at = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok((is_stdout, line)) => {
                    let target = if is_stdout { &mut stdout } else { &mut stderr };
                    target.push_str(&line);
                    target.push('\n');
                    if is_stdout && line.starts_with("ok ") {
                        // The answer came: let the client finish.
                        stdin = None;
                        closed_input_at.get_or_insert_with(Instant::now);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if child.try_wait().ok().flatten().is_some() {
                        // Exited; the reader threads end with the pipes.
                        continue;
                    }
                    if closed_input_at.is_some_and(|at| at.elapsed() > Duration::from_secs(5)) {
                        break;
                    }
                }
            }
        }
        drop(stdin);
        let status = match child.try_wait().ok().flatten() {
            Some(status) => Some(status),
            None => {
                std::thread::sleep(Duration::from_millis(200));
                child.try_wait().ok().flatten()
            }
        };
        let status = match status {
            Some(status) => status,
            None => {
                let _ = child.kill();
                child.wait().expect("killed client")
            }
        };
        Self {
            stdout,
            stderr,
            success: status.success(),
        }
    }

    fn text(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// The in-process endpoint on a loopback port, stopped on drop.
struct Endpoint {
    runtime: tokio::runtime::Runtime,
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Endpoint {
    fn start(setup: &Setup, admission: Admission) -> Self {
        let central = setup.central();
        let endpoint = EndpointCertificate::load_or_create(
            &central,
            &setup.path("central"),
            &EndpointNames::default(),
        )
        .expect("endpoint certificate");
        let config = server_config(&endpoint, &central.cert, admission).expect("server config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(run_tls_endpoint(
            listener,
            config,
            EndpointConfig::default(),
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            runtime,
            port,
            stop: Some(stop),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Lets the loop see the signal before the runtime goes.
        self.runtime.block_on(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
    }
}

/// Whether OpenSSL's pkcs11 engine loads with our provider.
fn openssl_engine_available() -> bool {
    if !require(have("openssl"), "`openssl` (Debian: openssl)") {
        return false;
    }
    let loads = Command::new("openssl")
        .args(["engine", "-t", "pkcs11"])
        .env("PKCS11_MODULE_PATH", library())
        .env_remove("OPENSSL_CONF")
        .output()
        .is_ok_and(|output| output.status.success());
    require(
        loads,
        "OpenSSL's pkcs11 engine (Debian: libengine-pkcs11-openssl)",
    )
}

fn gnutls_available() -> bool {
    let provider_option = Command::new("gnutls-cli")
        .arg("--help")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("--provider"));
    require(
        have("gnutls-cli") && provider_option,
        "`gnutls-cli` with --provider (Debian: gnutls-bin)",
    )
}

#[test]
fn third_party_clients_authenticate_with_the_module_key_until_revoked() {
    // Both checks run so that a missing tool is reported even if the other is
    // missing too.
    let openssl = openssl_engine_available();
    let gnutls = gnutls_available();
    if !openssl || !gnutls {
        return;
    }
    let setup = Setup::new();
    let revoked = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let admission: Admission = {
        let revoked = Arc::clone(&revoked);
        let admitted = Arc::clone(&admitted);
        Arc::new(move |unit: &Certificate, module: &Certificate| {
            if revoked.load(Ordering::SeqCst) {
                return Err("module revoked".to_owned());
            }
            admitted.lock().expect("lock").push(format!(
                "{} by {}",
                module.module_serial().unwrap_or_default(),
                display::subject(unit)
            ));
            Ok(())
        })
    };
    let endpoint = Endpoint::start(&setup, admission);
    let greeting = format!("{GREETING_PREFIX}{}", setup.serial);
    let answer = format!("ok {}", display::hex(&Sha384::digest(LINE.as_bytes())));

    // (a) OpenSSL: TLS 1.3, the server verified by the client, the greeting
    // with the module serial, the answer to the line.
    let run = setup.openssl_client(endpoint.port);
    let text = run.text();
    eprintln!("s_client (admitted):\n{text}");
    for needle in [
        "TLSv1.3",
        "Verify return code: 0 (ok)",
        greeting.as_str(),
        answer.as_str(),
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }

    // (b) GnuTLS: the same with the key as a PKCS#11 URI (see `gnutls_client`).
    let run = setup.gnutls_client(endpoint.port);
    let text = run.text();
    eprintln!("gnutls-cli (admitted):\n{text}");
    for needle in ["TLS1.3", greeting.as_str(), answer.as_str()] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    assert_eq!(
        admitted.lock().expect("lock").len(),
        2,
        "both clients went through the admission"
    );

    // (c) Revoked: both clients fail, neither sees the greeting.
    revoked.store(true, Ordering::SeqCst);
    for (name, run) in [
        ("s_client", setup.openssl_client(endpoint.port)),
        ("gnutls-cli", setup.gnutls_client(endpoint.port)),
    ] {
        let text = run.text();
        eprintln!("{name} (revoked):\n{text}");
        assert!(
            !text.contains(GREETING_PREFIX),
            "{name} was greeted:\n{text}"
        );
        assert!(!text.contains(&answer), "{name} got an answer:\n{text}");
        assert!(
            text.to_lowercase().contains("revoked"),
            "{name} did not report the revocation alert:\n{text}"
        );
        if name == "gnutls-cli" {
            assert!(!run.success, "{name} succeeded:\n{text}");
        }
    }
    drop(endpoint);
}

#[test]
fn the_served_tls_endpoint_refuses_a_module_once_revoked() {
    let openssl = openssl_engine_available();
    let gnutls = gnutls_available();
    if !openssl || !gnutls {
        return;
    }
    let setup = Setup::new();
    let server =
        imprint_tests::central::CentralServer::start(&setup.pki, &["--tls-listen", "127.0.0.1:0"]);
    let port: u16 = server
        .tls_address
        .as_deref()
        .and_then(|address| address.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .expect("TLS endpoint address");
    let greeting = format!("{GREETING_PREFIX}{}", setup.serial);
    let answer = format!("ok {}", display::hex(&Sha384::digest(LINE.as_bytes())));

    for (name, run) in [
        ("s_client", setup.openssl_client(port)),
        ("gnutls-cli", setup.gnutls_client(port)),
    ] {
        let text = run.text();
        assert!(
            text.contains(&greeting) && text.contains(&answer),
            "{name} against imprint-central serve:\n{text}\n--- server log\n{}",
            server.log()
        );
    }

    let revoked = server.cli(&["revoke", "--module", &setup.serial]);
    assert!(
        revoked.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&revoked.stderr)
    );

    for (name, run) in [
        ("s_client", setup.openssl_client(port)),
        ("gnutls-cli", setup.gnutls_client(port)),
    ] {
        let text = run.text();
        assert!(
            !text.contains(GREETING_PREFIX),
            "{name} was greeted:\n{text}"
        );
        assert!(
            text.to_lowercase().contains("revoked"),
            "{name} did not report the revocation alert:\n{text}"
        );
    }
    let log = server.log();
    assert!(
        log.contains("refused a TLS client certificate") && log.contains(&setup.serial),
        "the refusal is logged with the serial:\n{log}"
    );
}
