//! The operating channel and transaction sessions end to end: modules as
//! in-process applets on file key memories, the central system as a real
//! `imprint-central serve` on loopback. The claim bodies are shared with
//! `host-tool/tests/pcsc_operating.rs` (the same through pcscd).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use imprint_apdu::host::{CardLink, Transport};
use imprint_apdu::iso::sw;
use imprint_apdu::proto::{self, ins};
use imprint_central::client::{self, ClientError};
use imprint_central::display;
use imprint_central::wire::{ErrorCode, Frame, MAX_FRAME, Purpose, read_frame, write_frame};
use imprint_tests::central::{CentralServer, central_dir_for};
use imprint_tests::claims::Harness;
use imprint_tests::operating::*;
use imprint_tests::*;

#[test]
fn claim01_operating_channel_uses_the_module_key_and_its_certificate() {
    claim01_operating(&mut InProcessHarness::default());
}

#[test]
fn claim04_module_checks_the_central_system_with_the_delivered_key() {
    claim04_central_authenticated(&mut InProcessHarness::default());
}

#[test]
fn claim11_symmetric_key_set_is_exchanged_and_kept_in_the_key_memory() {
    claim11_key_set_for_transactions(&mut InProcessHarness::default());
}

#[test]
fn claim21_central_system_serves_checks_and_revokes() {
    claim21_central_system(&mut InProcessHarness::default());
}

fn expect_error(stream: &mut TcpStream) -> (ErrorCode, String) {
    match read_frame(stream) {
        Ok(Frame::Error { code, reason }) => (code, reason),
        other => panic!("expected an ERROR frame, got {other:?}"),
    }
}

/// Opens a transaction session frame by frame, so a test can misbehave after it.
fn open_session<T: Transport>(server: &CentralServer, link: &mut CardLink<T>) -> TcpStream {
    let mut stream = client::connect(&server.address, client::DEFAULT_TIMEOUT).expect("connect");
    let serial = client::select_operating(link).expect("select");
    write_frame(
        &mut stream,
        &Frame::Hello {
            purpose: Purpose::Transact,
            serial,
        },
    )
    .expect("hello");
    assert_eq!(
        client::relay(link, &mut stream).expect("relay"),
        Frame::Ready
    );
    stream
}

fn pso<T: Transport>(link: &mut CardLink<T>, p1p2: u16, data: &[u8]) -> (Vec<u8>, u16) {
    let [p1, p2] = p1p2.to_be_bytes();
    let response = link.send([0x00, ins::PSO, p1, p2], data).expect("pso");
    (response.data, response.sw)
}

#[test]
fn a_module_that_is_not_operating_cannot_open_the_channel() {
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    let mut harness = InProcessHarness::default();
    let (mut link, _) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    match server.operate(&mut link) {
        Err(ClientError::NotOperating(lifecycle)) => {
            assert_eq!(lifecycle, imprint_apdu::Lifecycle::Personalization)
        }
        other => panic!("expected NotOperating, got {other:?}"),
    }
}

#[test]
fn a_unit_the_central_system_did_not_register_is_refused() {
    let mut harness = InProcessHarness::default();
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    // Certified by the same central key, but never recorded in its registry.
    let Pki {
        manufacturer,
        central_key,
        central_root,
        ..
    } = pki;
    let unit = new_unit(
        &manufacturer,
        &central_key,
        &central_root,
        "Unregistered unit",
    );
    let unregistered = Pki {
        manufacturer,
        central_key,
        central_root,
        unit,
    };
    let (mut link, _, _) = operating_module(&mut harness, &unregistered);
    assert_refused(
        server.operate(&mut link),
        ErrorCode::Refused,
        "not registered",
    );
    assert!(server.registry().modules().expect("modules").is_empty());
}

#[test]
fn a_revoked_unit_is_refused_for_channels_and_transactions() {
    let mut harness = InProcessHarness::default();
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    let (mut link, _, _) = operating_module(&mut harness, &pki);
    server.operate(&mut link).expect("operating channel");
    let fingerprint = display::fingerprint(&pki.unit.cert_by_central);
    let output = server.cli(&["revoke", "--personalizer", &fingerprint]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_refused(server.operate(&mut link), ErrorCode::Refused, "revoked");
    assert_refused(
        server.transact(&mut link, &[b"after revocation"]),
        ErrorCode::Refused,
        "revoked",
    );
    assert!(server.journal().is_empty());
}

#[test]
fn replayed_reordered_and_tampered_messages_are_refused_and_not_journaled() {
    let mut harness = InProcessHarness::default();
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    let (mut link, _, _) = operating_module(&mut harness, &pki);
    server.operate(&mut link).expect("operating channel");

    // A legitimate message, then the same message again (a replay, or a
    // reordering of an earlier message after a later one).
    let mut stream = open_session(&server, &mut link);
    let (first, status) = pso(&mut link, proto::PSO_ENCIPHER, b"pay 10");
    assert_eq!(status, sw::OK);
    write_frame(&mut stream, &Frame::Message(first.clone())).expect("message");
    let Ok(Frame::Receipt(receipt)) = read_frame(&mut stream) else {
        panic!("no receipt")
    };
    assert_eq!(pso(&mut link, proto::PSO_DECIPHER, &receipt).1, sw::OK);
    let (_second, status) = pso(&mut link, proto::PSO_ENCIPHER, b"pay 20");
    assert_eq!(status, sw::OK);
    write_frame(&mut stream, &Frame::Message(first)).expect("replay");
    let (code, reason) = expect_error(&mut stream);
    assert_eq!(code, ErrorCode::Refused);
    assert!(reason.contains("replayed, reordered, forged"), "{reason}");

    // A tampered message in a fresh session.
    let mut stream = open_session(&server, &mut link);
    let (mut sealed, status) = pso(&mut link, proto::PSO_ENCIPHER, b"pay 30");
    assert_eq!(status, sw::OK);
    let last = sealed.len() - 1;
    sealed[last] ^= 0x01;
    write_frame(&mut stream, &Frame::Message(sealed)).expect("tampered");
    assert_eq!(expect_error(&mut stream).0, ErrorCode::Refused);

    // A receipt the central system did not make is refused by the module,
    // which then closes the session.
    let stream = open_session(&server, &mut link);
    let (_, status) = pso(&mut link, proto::PSO_ENCIPHER, b"pay 40");
    assert_eq!(status, sw::OK);
    let forged = [
        0x85, 0x02, 0x00, 0x00, 0x8E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(
        pso(&mut link, proto::PSO_DECIPHER, &forged).1,
        sw::SM_INCORRECT
    );
    assert_eq!(
        pso(&mut link, proto::PSO_ENCIPHER, b"pay 50").1,
        sw::SECURITY_STATUS,
        "the session is closed"
    );
    drop(stream);

    let journal = server.journal();
    assert_eq!(journal.len(), 1, "only the first, legitimate transaction");
    assert_eq!(
        journal[0].record.payload_digest,
        imprint_apdu::channel::sha384(b"pay 10")
    );
}

#[test]
fn a_replayed_session_start_is_refused() {
    let mut harness = InProcessHarness::default();
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    let (mut link, _, _) = operating_module(&mut harness, &pki);
    server.operate(&mut link).expect("operating channel");
    let serial = client::select_operating(&mut link).expect("serial");

    // Record a module's session start, then present it again to a new challenge.
    let hello = Frame::Hello {
        purpose: Purpose::Transact,
        serial,
    };
    let mut stream = client::connect(&server.address, client::DEFAULT_TIMEOUT).expect("connect");
    client::select_operating(&mut link).expect("select");
    write_frame(&mut stream, &hello).expect("hello");
    let Ok(Frame::Command { header, data }) = read_frame(&mut stream) else {
        panic!("no challenge")
    };
    let recorded = link.send(header, &data).expect("module");
    drop(stream);

    let mut stream = client::connect(&server.address, client::DEFAULT_TIMEOUT).expect("connect");
    write_frame(&mut stream, &hello).expect("hello");
    let Ok(Frame::Command { .. }) = read_frame(&mut stream) else {
        panic!("no challenge")
    };
    write_frame(
        &mut stream,
        &Frame::Response {
            data: recorded.data,
            sw: recorded.sw,
        },
    )
    .expect("replayed response");
    let (code, reason) = expect_error(&mut stream);
    assert_eq!(code, ErrorCode::Refused);
    assert!(reason.contains("key confirmation"), "{reason}");
}

#[test]
fn a_module_whose_counter_was_rolled_back_is_refused() {
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    let mut harness = InProcessHarness::default();
    let (mut link, dir, _) = operating_module(&mut harness, &pki);
    server.operate(&mut link).expect("operating channel");
    let saved = std::fs::read(dir.join("records.tlv")).expect("records");
    server
        .transact(&mut link, &[b"one"])
        .expect("first session");
    drop(link);

    // Restore the key memory from before the session: its counter repeats.
    std::fs::write(dir.join("records.tlv"), saved).expect("restore");
    let mut link = file_module(&dir);
    assert_refused(
        server.transact(&mut link, &[b"again"]),
        ErrorCode::Refused,
        "session counter 1 replayed",
    );
    assert_eq!(server.journal().len(), 1);
}

#[test]
fn an_expired_key_set_is_refused() {
    let mut harness = InProcessHarness::default();
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &["--key-set-lifetime", "1"]);
    let (mut link, _, _) = operating_module(&mut harness, &pki);
    server.operate(&mut link).expect("operating channel");
    std::thread::sleep(Duration::from_millis(2100));
    assert_refused(
        server.transact(&mut link, &[b"late"]),
        ErrorCode::Refused,
        "expired",
    );
    // A new operating channel gives a fresh key set.
    server.operate(&mut link).expect("rotation");
    assert!(server.transact(&mut link, &[b"fresh"]).is_ok());
}

/// Sends `bytes` on a fresh connection and returns what the server answered
/// before it closed the connection.
fn garbage(address: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // The server may close as soon as it has seen enough; a failed write is fine.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

fn error_of(answer: &[u8]) -> ErrorCode {
    match read_frame(&mut &answer[..]) {
        Ok(Frame::Error { code, .. }) => code,
        other => panic!("expected an ERROR frame, got {other:?} from {answer:02x?}"),
    }
}

#[test]
fn garbage_and_oversized_frames_do_not_disturb_legitimate_modules() {
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &["--frame-timeout", "3"]);
    let mut harness = InProcessHarness::default();
    let mut links: Vec<_> = (0..3)
        .map(|_| {
            let (mut link, _, _) = operating_module(&mut harness, &pki);
            server.operate(&mut link).expect("operating channel");
            link
        })
        .collect();
    const PER_MODULE: usize = 20;

    std::thread::scope(|scope| {
        let server = &server;
        let workers: Vec<_> = links
            .iter_mut()
            .map(|link| {
                scope.spawn(move || {
                    let payloads: Vec<Vec<u8>> = (0..PER_MODULE)
                        .map(|i| format!("payment {i}").into_bytes())
                        .collect();
                    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                    server
                        .transact(link, &refs)
                        .expect("legitimate transactions")
                })
            })
            .collect();

        let oversized = ((MAX_FRAME as u32) + 1).to_be_bytes();
        assert_eq!(
            error_of(&garbage(&server.address, &oversized)),
            ErrorCode::Malformed
        );
        assert_eq!(
            error_of(&garbage(&server.address, &u32::MAX.to_be_bytes())),
            ErrorCode::Malformed
        );
        assert_eq!(
            error_of(&garbage(&server.address, &[0, 0, 0, 1, 0x7F])),
            ErrorCode::Malformed
        );
        assert_eq!(
            error_of(&garbage(&server.address, &[0, 0, 0, 0])),
            ErrorCode::Malformed
        );
        // A HELLO, then a response that answers nothing the module said.
        let mut hello = Frame::Hello {
            purpose: Purpose::Transact,
            serial: [0x11; 8],
        }
        .encode();
        hello.extend(
            Frame::Response {
                data: vec![0xAB; 64],
                sw: 0x9000,
            }
            .encode(),
        );
        let answer = garbage(&server.address, &hello);
        let mut reader = &answer[..];
        assert!(matches!(read_frame(&mut reader), Ok(Frame::Command { .. })));
        assert_eq!(error_of(reader), ErrorCode::Refused);
        // Pseudo-random bytes.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = garbage(&server.address, &bytes);
        }

        for worker in workers {
            let receipts = worker.join().expect("worker");
            assert_eq!(receipts.len(), PER_MODULE);
        }
    });
    assert_eq!(
        server.journal().len(),
        3 * PER_MODULE,
        "exactly the legitimate transactions"
    );
}

#[test]
fn a_silent_peer_times_out_and_the_connection_limit_holds() {
    let mut harness = InProcessHarness::default();
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &["--frame-timeout", "1", "--max-connections", "1"]);
    let started = Instant::now();
    let mut silent = TcpStream::connect(&server.address).expect("connect");
    std::thread::sleep(Duration::from_millis(100));
    // The only slot is taken: a second connection is told the server is busy.
    let mut second = TcpStream::connect(&server.address).expect("connect");
    assert_eq!(expect_error(&mut second).0, ErrorCode::Busy);
    assert_eq!(expect_error(&mut silent).0, ErrorCode::Timeout);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The slot is free again.
    let (mut link, _, _) = operating_module(&mut harness, &pki);
    server.operate(&mut link).expect("after the timeout");
    let log = server.log();
    assert!(log.contains("timed out"), "{log}");
}

#[test]
fn the_central_directory_keeps_its_unit_registration() {
    let mut harness = InProcessHarness::default();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("dir");
    central_dir_for(&pki, dir.path());
    let server = CentralServer::start_in(dir, &[]);
    let (mut link, _, _) = operating_module(&mut harness, &pki);
    server.operate(&mut link).expect("operating channel");
}

#[test]
fn a_revocation_stops_an_open_session_at_its_next_message() {
    let mut harness = InProcessHarness::default();
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    let (mut link, _, serial) = operating_module(&mut harness, &pki);
    server.operate(&mut link).expect("operating channel");
    let mut stream = client::connect(&server.address, client::DEFAULT_TIMEOUT).expect("connect");
    let mut session =
        client::TransactionClient::open(&mut link, &mut stream, None).expect("session");
    session.transact(b"before").expect("first transaction");
    let output = server.cli(&["revoke", "--module", &serial]);
    assert!(output.status.success());
    assert_refused(session.transact(b"after"), ErrorCode::Refused, "revoked");
    assert_eq!(server.journal().len(), 1);
}

/// The application's handler, recording what it was shown.
struct Recording(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl imprint_central::server::TransactionHandler for Recording {
    fn handle(
        &self,
        _: &imprint_central::server::TransactionContext,
        payload: &[u8],
    ) -> Result<Vec<u8>, imprint_central::server::HandlerRefusal> {
        self.0.lock().expect("seen").push(payload.to_vec());
        Ok(b"ok".to_vec())
    }
}

#[test]
fn the_application_never_sees_a_message_from_a_module_revoked_mid_session() {
    use imprint_central::server::{CentralService, ServerLimits, serve};
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    central_dir_for(&pki, dir.path());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let service = std::sync::Arc::new(CentralService::new(
        imprint_central::CentralAuthority::open(dir.path()).expect("central"),
        imprint_central::registry::Registry::open(dir.path()).expect("registry"),
        std::sync::Arc::new(Recording(std::sync::Arc::clone(&seen))),
        ServerLimits::default(),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(serve(listener, std::sync::Arc::clone(&service), async {
        let _ = stopped.await;
    }));

    let mut link = operating_ram_module(&pki);
    let serial = imprint_apdu::pki::serial_hex(
        &imprint_apdu::host::status::read_status(&mut link)
            .expect("status")
            .info
            .serial
            .expect("serial"),
    );
    let mut stream = client::connect(&address, client::DEFAULT_TIMEOUT).expect("connect");
    client::operate(&mut link, &mut stream).expect("operating channel");
    let mut stream = client::connect(&address, client::DEFAULT_TIMEOUT).expect("connect");
    let mut session =
        client::TransactionClient::open(&mut link, &mut stream, None).expect("session");
    session.transact(b"before").expect("a transaction");

    // Revoked while the session is open (as `imprint-central revoke` does).
    service
        .with_registry(|registry| registry.revoke_module(&serial, display_now()))
        .expect("revoke");
    let refused = session.transact(b"after").expect_err("refused");
    assert!(refused.to_string().contains("revoked"), "{refused}");
    assert_eq!(
        *seen.lock().expect("seen"),
        vec![b"before".to_vec()],
        "the application saw nothing after the revocation"
    );
    let _ = stop.send(());
    let _ = runtime.block_on(server);
}

fn display_now() -> u64 {
    imprint_apdu::host::personalize::unix_now()
}
