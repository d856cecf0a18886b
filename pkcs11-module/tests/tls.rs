//! Claim 1's operating connection through third-party software: OpenSSL's
//! `s_client`, holding the module key through `libimprint_pkcs11.so` and
//! OpenSSL's pkcs11 engine (Debian: libengine-pkcs11-openssl), completes a
//! TLS 1.3 handshake with client authentication against `openssl s_server
//! -Verify` that trusts the central system's root certificate.
//!
//! ```text
//!  s_client ─ engine pkcs11 ─ libimprint_pkcs11.so ─ file module (module key)
//!     │  module.pem + unit.pem (issued by the central system)
//!     ▼
//!  s_server -Verify -CAfile central.pem  (server.pem issued by the central root)
//! ```
//!
//! Everything runs on loopback with bounded waits; the server is killed at
//! the end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use imprint_apdu::host::status::read_status;
use imprint_apdu::pki::issue::to_pem;
use imprint_tests::{Pki, RecordingJournal, file_module, manufacture_with, personalized};
use p384::pkcs8::{EncodePrivateKey, LineEnding};

/// How long any one OpenSSL process may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Two modules in one provider configuration: `module` personalized under
/// the deployment whose central root the server trusts, `foreign` under
/// another deployment.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    serial: String,
    foreign_serial: String,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new();
        let serial = personalize(dir.path(), "module", &pki, "");
        let foreign_serial = personalize(dir.path(), "foreign", &Pki::new(), "foreign-");

        let central = to_pem(&pki.central_root).expect("central PEM");
        std::fs::write(dir.path().join("central.pem"), central).expect("central.pem");
        let central_key = pki
            .central_key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("central key PEM");
        std::fs::write(dir.path().join("central.key"), central_key.as_bytes())
            .expect("central.key");

        let config = dir.path().join("pkcs11.toml");
        std::fs::write(
            &config,
            common::file_modules_config(dir.path(), &["module", "foreign"]),
        )
        .expect("config");
        Self {
            dir,
            config,
            serial,
            foreign_serial,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `openssl` in the directory; fails unless it succeeds.
    fn openssl(&self, args: &[&str]) -> String {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("running openssl");
        assert!(
            output.status.success(),
            "openssl {args:?} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A P-384 TLS server key and certificate (`sslserver` purpose, IP
    /// 127.0.0.1) issued by the central root with OpenSSL.
    fn issue_server_certificate(&self) {
        std::fs::write(
            self.path("server.ext"),
            "[server]\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = IP:127.0.0.1\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n",
        )
        .expect("server.ext");
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-sha384",
            "-nodes",
            "-subj",
            "/CN=Imprint central TLS endpoint (test)",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "central.pem",
            "-CAkey",
            "central.key",
            "-set_serial",
            "1",
            "-days",
            "1",
            "-sha384",
            "-extfile",
            "server.ext",
            "-extensions",
            "server",
            "-out",
            "server.pem",
        ]);
        let verified = self.openssl(&[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "central.pem",
            "server.pem",
        ]);
        assert!(verified.contains("server.pem: OK"), "{verified}");
    }

    /// `s_client` with the module key of token `serial` through the pkcs11
    /// engine, presenting `<prefix>module.pem` and `<prefix>unit.pem`; sends
    /// an HTTP request to the `-www` server and returns when it closes.
    fn client(&self, port: u16, serial: &str, prefix: &str) -> Output {
        let key = format!("pkcs11:token={serial};object=module;type=private");
        let connect = format!("127.0.0.1:{port}");
        let cert = format!("{prefix}module.pem");
        let chain = format!("{prefix}unit.pem");
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &connect, "-tls1_3"])
            .args(["-engine", "pkcs11", "-keyform", "engine", "-key", &key])
            .args(["-cert", &cert, "-cert_chain", &chain])
            .args(["-CAfile", "central.pem", "-verify_return_error"])
            .args(["-verify_ip", "127.0.0.1", "-ign_eof"])
            .current_dir(self.dir.path())
            .env("PKCS11_MODULE_PATH", common::library())
            .env("IMPRINT_PKCS11_CONF", &self.config)
            .env_remove("IMPRINT_PKCS11_LOG")
            .env_remove("OPENSSL_CONF")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running openssl s_client");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .expect("request");
        wait_bounded(child)
    }
}

/// Manufactures and personalizes the file module `name` in `dir` with `pki`;
/// writes `<prefix>module.pem` and `<prefix>unit.pem` (the module's
/// certificate and the unit certificate by the central system, as the module
/// reports them). Returns the serial (the token label).
fn personalize(dir: &Path, name: &str, pki: &Pki, prefix: &str) -> String {
    let mut link = file_module(&dir.join(name));
    let report = manufacture_with(&mut link, &pki.manufacturer);
    personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).expect("personalize");
    let status = read_status(&mut link).expect("status");
    let module = status.module_cert.expect("module certificate");
    let unit = status
        .unit_cert
        .expect("unit certificate by the central system");
    std::fs::write(
        dir.join(format!("{prefix}module.pem")),
        to_pem(&module).expect("PEM"),
    )
    .expect("module.pem");
    std::fs::write(
        dir.join(format!("{prefix}unit.pem")),
        to_pem(&unit).expect("PEM"),
    )
    .expect("unit.pem");
    report.serial
}

/// Waits for `child` at most [`TIMEOUT`], killing it past that.
fn wait_bounded(mut child: Child) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("waiting for openssl").is_some() {
            break;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collecting openssl");
            panic!(
                "openssl did not finish within {TIMEOUT:?}:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collecting openssl")
}

/// A running `openssl s_server`, killed on drop; its output is collected by
/// a reader thread.
struct Server {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// `s_server -tls1_3 -Verify 2 -CAfile central.pem -www` on a free
    /// loopback port; returns once it accepts connections.
    fn start(setup: &Setup) -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("free loopback port")
            .port();
        let accept = format!("127.0.0.1:{port}");
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", &accept, "-tls1_3", "-Verify", "2"])
            .args(["-CAfile", "central.pem", "-verify_return_error"])
            .args(["-cert", "server.pem", "-key", "server.key", "-www"])
            .current_dir(setup.dir.path())
            .env_remove("OPENSSL_CONF")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running openssl s_server");
        let (sender, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut server = Self { child, port, lines };
        let seen = server.collect_until(|line| line.contains("ACCEPT"));
        assert!(
            seen.iter().any(|line| line.contains("ACCEPT")),
            "s_server did not start:\n{}",
            seen.join("\n")
        );
        server
    }

    /// Server output lines until one satisfies `done` or [`TIMEOUT`] passes.
    fn collect_until(&mut self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let stop = done(&line);
                    seen.push(line);
                    if stop {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        seen
    }

    /// Server output lines that arrive within `wait`.
    fn drain(&mut self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        seen
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether OpenSSL's pkcs11 engine loads; skips (or fails under CI) if not.
fn engine_available() -> bool {
    if !common::have("openssl", "openssl") {
        return false;
    }
    let loads = Command::new("openssl")
        .args(["engine", "-t", "pkcs11"])
        .env("PKCS11_MODULE_PATH", common::library())
        .env_remove("OPENSSL_CONF")
        .output()
        .is_ok_and(|output| output.status.success());
    if !loads {
        assert!(
            !common::ci(),
            "OpenSSL's pkcs11 engine is not installed (Debian: libengine-pkcs11-openssl); CI=true"
        );
        eprintln!(
            "SKIPPED: OpenSSL's pkcs11 engine is not installed (Debian: libengine-pkcs11-openssl)"
        );
    }
    loads
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn openssl_tls13_client_authentication_with_the_module_key() {
    if !engine_available() {
        return;
    }
    let setup = Setup::new();
    setup.issue_server_certificate();
    // OpenSSL's `sslclient` purpose holds on the chain the client presents.
    let verified = setup.openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        "central.pem",
        "-untrusted",
        "unit.pem",
        "module.pem",
    ]);
    assert!(verified.contains("module.pem: OK"), "{verified}");

    let mut server = Server::start(&setup);

    // The module of the trusted deployment: the handshake completes, both
    // sides verify, and the server's status page shows the module's
    // certificate as the client certificate.
    let output = setup.client(server.port, &setup.serial, "");
    let client = text(&output);
    eprintln!("s_client (trusted module):\n{client}");
    assert!(output.status.success(), "{client}");
    for needle in [
        "Protocol  : TLSv1.3",
        "Verify return code: 0 (ok)",
        "HTTP/1.0 200 ok",
        "Client certificate",
        &format!("Imprint module {}", setup.serial),
    ] {
        assert!(client.contains(needle), "no {needle:?} in:\n{client}");
    }
    assert!(
        !client.contains("no client certificate available"),
        "{client}"
    );

    // A module personalized under another central root: the server refuses
    // its certificate, and no status page is served.
    let output = setup.client(server.port, &setup.foreign_serial, "foreign-");
    let client = text(&output);
    eprintln!("s_client (foreign module):\n{client}");
    assert!(!client.contains("HTTP/1.0 200 ok"), "{client}");
    assert!(client.contains("alert unknown ca"), "{client}");
    let served = server.drain(Duration::from_millis(500)).join("\n");
    eprintln!("s_server:\n{served}");
    for needle in [
        // The trusted module's chain, verified up to the central root.
        &format!("depth=0 CN = Imprint module {}", setup.serial),
        // The foreign module's unit certificate leads to no trusted root.
        "unable to get local issuer certificate",
        "certificate verify failed",
    ] {
        assert!(served.contains(needle), "no {needle:?} in:\n{served}");
    }
    drop(server);
}
