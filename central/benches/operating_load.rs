//! Load on the operating server: N in-process modules against one server on
//! loopback, each setting up the operating channel once, then running T
//! transactions in one transaction session (DESIGN §7: figures and ratios
//! from one run, no timed assertions).
//!
//! ```text
//!  W worker threads ── each takes the next module ──▶ operate (asymmetric: ECDH ×2 + σ_C + chain)
//!       (host relays, module in-process)              open a transaction session (HMAC)
//!                                                     T × (seal ─▶ journal (SQLite) ─▶ receipt ─▶ check)
//!  server: imprint_central::server::serve on 127.0.0.1, its registry in a temporary directory
//! ```
//!
//! Baseline in the same run: a bare frame round trip to the server (a HELLO
//! that the server answers at once with a module command), the floor under
//! any step that crosses the network.
//!
//! `IMPRINT_BENCH_MODULES` (default 200), `IMPRINT_BENCH_TRANSACTIONS`
//! (default 50), `IMPRINT_BENCH_WORKERS` (default 16). Run:
//! `cargo bench -p imprint-central --bench operating_load`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imprint_apdu::host::{CardLink, InProcessTransport};
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_central::client::{self, TransactionClient};
use imprint_central::registry::Registry;
use imprint_central::server::{AcceptAll, CentralService, ServerLimits, serve};
use imprint_central::wire::{Frame, Purpose, read_frame, write_frame};
use imprint_central::{CentralAuthority, keyfile};
use imprint_tests::{Pki, operating_ram_module};

type Link = CardLink<InProcessTransport<MemoryKeyMemory>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|value| *value > 0)
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[derive(Default)]
struct Samples {
    setups: Vec<Duration>,
    sessions: Vec<Duration>,
    transactions: Vec<Duration>,
}

fn main() {
    let modules = env_usize("IMPRINT_BENCH_MODULES", 200);
    let transactions = env_usize("IMPRINT_BENCH_TRANSACTIONS", 50);
    let workers = env_usize("IMPRINT_BENCH_WORKERS", 16).min(modules);

    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("central dir");
    keyfile::write_signing_key(
        &dir.path().join(imprint_central::KEY_FILE),
        &pki.central_key,
    )
    .expect("central key");
    std::fs::write(
        dir.path().join(imprint_central::CERT_FILE),
        imprint_apdu::pki::issue::to_pem(&pki.central_root).expect("pem"),
    )
    .expect("central root");
    let mut registry = Registry::open(dir.path()).expect("registry");
    registry
        .record_unit(
            &pki.unit.cert_by_central,
            imprint_apdu::host::personalize::unix_now(),
        )
        .expect("unit");
    let central = CentralAuthority::open(dir.path()).expect("central");
    let service = Arc::new(CentralService::new(
        central,
        registry,
        Arc::new(AcceptAll),
        ServerLimits::default(),
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(serve(listener, Arc::clone(&service), async {
        let _ = stopped.await;
    }));

    eprintln!("personalizing {modules} in-process modules …");
    let links: Vec<Mutex<Link>> = (0..modules)
        .map(|_| Mutex::new(operating_ram_module(&pki)))
        .collect();

    // Baseline: HELLO out, the server's first command back, on a fresh connection.
    let mut round_trips = Vec::new();
    for _ in 0..200 {
        let mut stream = client::connect(&address, client::DEFAULT_TIMEOUT).expect("connect");
        let started = Instant::now();
        write_frame(
            &mut stream,
            &Frame::Hello {
                purpose: Purpose::Transact,
                serial: [0; 8],
            },
        )
        .expect("hello");
        let _ = read_frame(&mut stream).expect("first command");
        round_trips.push(started.elapsed());
    }
    round_trips.sort();

    let samples = Mutex::new(Samples::default());
    let next = AtomicUsize::new(0);
    let payload = vec![0x42u8; 256];

    // Phase 1: every module sets up its operating channel once.
    let setup_started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(link) = links.get(index) else { break };
                    let mut link = link.lock().expect("link");
                    let mut stream =
                        client::connect(&address, client::DEFAULT_TIMEOUT).expect("connect");
                    let started = Instant::now();
                    client::operate(&mut link, &mut stream).expect("operating channel");
                    let elapsed = started.elapsed();
                    samples.lock().expect("samples").setups.push(elapsed);
                }
            });
        }
    });
    let setup_wall = setup_started.elapsed();

    // Phase 2: every module runs its transactions in one session.
    next.store(0, Ordering::Relaxed);
    let transact_started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut local = Samples::default();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(link) = links.get(index) else { break };
                    let mut link = link.lock().expect("link");
                    let mut stream =
                        client::connect(&address, client::DEFAULT_TIMEOUT).expect("connect");
                    let started = Instant::now();
                    let mut session = TransactionClient::open(&mut link, &mut stream, None)
                        .expect("transaction session");
                    local.sessions.push(started.elapsed());
                    for _ in 0..transactions {
                        let started = Instant::now();
                        session.transact(&payload).expect("transaction");
                        local.transactions.push(started.elapsed());
                    }
                    session.close().expect("close");
                }
                let mut shared = samples.lock().expect("samples");
                shared.sessions.extend(local.sessions);
                shared.transactions.extend(local.transactions);
            });
        }
    });
    let transact_wall = transact_started.elapsed();

    let _ = stop.send(());
    let _ = runtime.block_on(server);
    let journaled = service
        .with_registry(|registry| registry.transactions().map(|all| all.len()))
        .expect("journal");

    let mut samples = samples.into_inner().expect("samples");
    samples.setups.sort();
    samples.sessions.sort();
    samples.transactions.sort();
    let setup_median = percentile(&samples.setups, 0.5);
    let transaction_median = percentile(&samples.transactions, 0.5);
    let round_trip = percentile(&round_trips, 0.5);

    println!(
        "operating server load: {modules} modules, {transactions} transactions each, {workers} concurrent hosts, 2 cores shared with the hosts and modules"
    );
    println!(
        "baseline frame round trip (HELLO → first command): median {:.3} ms",
        ms(round_trip)
    );
    println!(
        "channel setups:       {:>8.1} /s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} in {:.2} s)",
        modules as f64 / setup_wall.as_secs_f64(),
        ms(setup_median),
        ms(percentile(&samples.setups, 0.99)),
        samples.setups.len(),
        setup_wall.as_secs_f64()
    );
    println!(
        "transaction sessions: {:>8} open  p50 {:>7.2} ms   p99 {:>7.2} ms",
        samples.sessions.len(),
        ms(percentile(&samples.sessions, 0.5)),
        ms(percentile(&samples.sessions, 0.99))
    );
    println!(
        "transactions:         {:>8.1} /s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} in {:.2} s, {} journaled)",
        samples.transactions.len() as f64 / transact_wall.as_secs_f64(),
        ms(transaction_median),
        ms(percentile(&samples.transactions, 0.99)),
        samples.transactions.len(),
        transact_wall.as_secs_f64(),
        journaled
    );
    println!(
        "ratio setup / transaction (medians): {:.1}; transaction / frame round trip: {:.1}",
        setup_median.as_secs_f64() / transaction_median.as_secs_f64(),
        transaction_median.as_secs_f64() / round_trip.as_secs_f64()
    );
    drop(dir);
}
