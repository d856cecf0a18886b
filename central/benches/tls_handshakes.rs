//! Handshakes per second of the central system's TLS endpoint against
//! `openssl s_server` as the baseline, measured in the same run with the same
//! certificates and the same load generator (DESIGN §7: ratios, no timed
//! assertions).
//!
//! ```text
//!  load generator (rustls client, C tasks)            servers (same endpoint.pem / endpoint.key)
//!  module-like chain: module.pem + unit.pem  ──TLS 1.3──▶ (a) run_tls_endpoint (in-process, ring)
//!  module key from a PKCS#8 file              ──TLS 1.3──▶ (b) openssl s_server -tls1_3 -Verify 2 -rev
//!  one connection = TCP connect + handshake with client certificate + one line
//!  each way (the server can only answer once it has verified the client chain)
//! ```
//!
//! `IMPRINT_BENCH_HANDSHAKES` (default 300) handshakes per round,
//! `IMPRINT_BENCH_CLIENTS` (default 8) concurrent clients, 5 rounds per
//! server, alternating; prints the median handshakes/s of each and the ratio
//! ours/openssl. Run: `cargo bench -p imprint-central --bench tls_handshakes`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imprint_apdu::pki::issue::{self, IssuerKey, Validity};
use imprint_apdu::pki::{self, Certificate};
use imprint_central::tls::{
    EndpointCertificate, EndpointConfig, EndpointNames, admit_all, provider, run_tls_endpoint,
    server_config,
};
use imprint_central::{CentralAuthority, keyfile};
use imprint_tests::{Pki, random_key};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ROUNDS: usize = 5;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|value| *value > 0)
        .unwrap_or(default)
}

/// The central directory (key, root, endpoint key and certificate) and the
/// module-like client files, all from one fixture deployment.
struct Fixture {
    dir: tempfile::TempDir,
    central: CentralAuthority,
    endpoint: EndpointCertificate,
    client: Arc<rustls::ClientConfig>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new();
        let central_dir = dir.path().join("central");
        keyfile::create_private_dir(&central_dir).expect("dir");
        keyfile::write_signing_key(
            &central_dir.join(imprint_central::KEY_FILE),
            &pki.central_key,
        )
        .expect("central key");
        std::fs::write(
            central_dir.join(imprint_central::CERT_FILE),
            issue::to_pem(&pki.central_root).expect("pem"),
        )
        .expect("central.pem");
        let central = CentralAuthority::open(&central_dir).expect("central");
        let endpoint =
            EndpointCertificate::load_or_create(&central, &central_dir, &EndpointNames::default())
                .expect("endpoint certificate");

        // A module key in a file and its certificate issued by the unit.
        let module_key = random_key();
        let key_path = dir.path().join("module.key");
        keyfile::write_signing_key(&key_path, &module_key).expect("module key");
        let point = module_key.verifying_key().to_sec1_point(false);
        let serial = pki::serial_hex(&pki::serial_from_public_key(point.as_bytes()));
        let module = issue::module_cert(
            IssuerKey {
                cert: &pki.unit.cert_by_central,
                key: &pki.unit.key,
            },
            &serial,
            point.as_bytes(),
            &[1; pki::NONCE_LEN],
            Validity::years_from_now(1)
                .expect("validity")
                .clamped_to(&pki.unit.cert_by_central)
                .expect("nested"),
        )
        .expect("module certificate");
        let client = client_config(
            &pki.central_root,
            &module,
            &pki.unit.cert_by_central,
            &key_path,
        );
        Self {
            dir,
            central,
            endpoint,
            client,
        }
    }
}

fn client_config(
    root: &Certificate,
    module: &Certificate,
    unit: &Certificate,
    key_path: &std::path::Path,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.der().to_vec()))
        .expect("root");
    let chain = [module, unit]
        .iter()
        .map(|cert| CertificateDer::from(cert.der().to_vec()))
        .collect();
    let key = PrivateKeyDer::from_pem_file(key_path).expect("module key file");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    Arc::new(config)
}

/// One connection: connect, handshake, send a line, read `lines` lines.
async fn one(
    address: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    lines: usize,
) -> std::io::Result<()> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(address.ip().into());
    let tls = connector.connect(name, tcp).await?;
    let mut tls = BufReader::new(tls);
    tls.get_mut().write_all(b"ping\n").await?;
    for _ in 0..lines {
        let mut line = String::new();
        if tls.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let _ = tls.get_mut().shutdown().await;
    Ok(())
}

/// `total` connections over `clients` concurrent tasks; handshakes/s.
async fn round(
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    total: usize,
    clients: usize,
    lines: usize,
) -> f64 {
    let connector = tokio_rustls::TlsConnector::from(config);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let next = Arc::clone(&next);
        let connector = connector.clone();
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                one(address, &connector, lines).await.expect("connection");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("client task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `openssl s_server` on `port`, killed on drop.
struct OpensslServer(Child);

impl OpensslServer {
    fn start(fixture: &Fixture, port: u16) -> Option<Self> {
        let central = fixture.dir.path().join("central");
        let child = Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .args(["-tls1_3", "-Verify", "2", "-verify_return_error"])
            .args(["-cert", "endpoint.pem", "-key", "endpoint.key"])
            .args(["-CAfile", "central.pem", "-rev", "-quiet"])
            .current_dir(&central)
            .env_remove("OPENSSL_CONF")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Self(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let total = env_usize("IMPRINT_BENCH_HANDSHAKES", 300);
    let clients = env_usize("IMPRINT_BENCH_CLIENTS", 8);
    let fixture = Fixture::new();

    // (a) Our endpoint, in its own runtime.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("server runtime");
    let config = server_config(&fixture.endpoint, &fixture.central.cert, admit_all())
        .expect("server config");
    let listener = server_runtime
        .block_on(async { tokio::net::TcpListener::bind("127.0.0.1:0").await })
        .expect("bind");
    let ours = listener.local_addr().expect("address");
    let limits = EndpointConfig {
        max_connections: clients.max(1) * 2,
        ..EndpointConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    server_runtime.spawn(run_tls_endpoint(listener, config, limits, async {
        let _ = stopped.await;
    }));

    // (b) openssl s_server with the same certificate and key.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let openssl = OpensslServer::start(&fixture, port);
    let theirs = SocketAddr::from(([127, 0, 0, 1], port));
    if openssl.is_none() {
        eprintln!("openssl s_server not available: measuring our endpoint only");
    }

    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let run = |address, lines, count| {
        client_runtime.block_on(round(
            address,
            Arc::clone(&fixture.client),
            count,
            clients,
            lines,
        ))
    };
    // Warm-up.
    run(ours, 2, 20);
    if openssl.is_some() {
        run(theirs, 1, 20);
    }
    let (mut ours_rates, mut openssl_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours_rates.push(run(ours, 2, total));
        if openssl.is_some() {
            openssl_rates.push(run(theirs, 1, total));
        }
    }
    println!(
        "TLS 1.3 handshakes with client certificate (ECDSA P-384, secp384r1), \
         {total} per round, {clients} concurrent clients, {ROUNDS} rounds, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let fmt = |rates: &[f64]| {
        rates
            .iter()
            .map(|rate| format!("{rate:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ours_median = median(&mut ours_rates.clone());
    println!(
        "  imprint endpoint (rustls/ring): median {ours_median:8.1} handshakes/s  [{}]",
        fmt(&ours_rates)
    );
    if !openssl_rates.is_empty() {
        let openssl_median = median(&mut openssl_rates.clone());
        println!(
            "  openssl s_server (baseline):    median {openssl_median:8.1} handshakes/s  [{}]",
            fmt(&openssl_rates)
        );
        println!("  ratio ours/openssl: {:.2}", ours_median / openssl_median);
    }
    let _ = stop.send(());
    drop(openssl);
}
