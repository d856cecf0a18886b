use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::iso::sw;
use crate::keymem::memory::MemoryKeyMemory;
use crate::proto::{Lifecycle, ins, tag};

/// The applet on RAM key memory, as a virtual card.
type TestCard = VirtualCard<Applet<MemoryKeyMemory>>;

fn card() -> TestCard {
    VirtualCard::new(Applet::new(MemoryKeyMemory::new([7; 48])).unwrap())
}

fn select_apdu() -> Vec<u8> {
    let mut apdu = vec![0x00, ins::SELECT, 0x04, 0x00, proto::AID.len() as u8];
    apdu.extend_from_slice(&proto::AID);
    apdu.push(0x00);
    apdu
}

/// GET DATA for the identity certificate: `6A88` when selected on a blank
/// card, `6985` when nothing is selected.
const GET_IDENTITY_CERT: [u8; 5] = [0x00, ins::GET_DATA, 0xDF, 0x21, 0x00];
const GENERATE_IDENTITY: [u8; 5] = [0x00, ins::GENERATE_KEY, 0x80, 0x01, 0x00];

fn sw_of(response: &[u8]) -> u16 {
    u16::from_be_bytes([response[response.len() - 2], response[response.len() - 1]])
}

fn apdu_sw(card: &mut TestCard, apdu: &[u8]) -> u16 {
    sw_of(&card.handle_message(apdu).expect("an APDU is answered"))
}

// ---------------------------------------------------------------- ATR

#[test]
fn atr_bytes_and_check_character() {
    assert_eq!(
        ATR,
        [
            0x3B, 0x88, 0x80, 0x01, 0x49, 0x4D, 0x50, 0x52, 0x49, 0x4E, 0x54, 0x01, 0x5D
        ]
    );
    assert_eq!(check_character(&ATR[1..12]), ATR[12]);
    assert_eq!(check_character(&ATR[1..]), 0, "T0..TCK XOR to zero");
    // Known ATR from ISO 7816-3 practice: 3B 80 80 01 01 (T=1, no historical bytes).
    assert_eq!(check_character(&[0x80, 0x80, 0x01]), 0x01);
}

/// Walks the ATR as ISO 7816-3 defines it and checks every structural rule.
#[test]
fn atr_is_a_well_formed_t1_atr_naming_the_applet() {
    assert_eq!(ATR[0], 0x3B, "direct convention");
    let t0 = ATR[1];
    let historical = usize::from(t0 & 0x0F);
    let mut y = t0 >> 4;
    let mut at = 2;
    let mut protocols = Vec::new();
    while y != 0 {
        // TAi, TBi, TCi present per bits 5..7; TDi per bit 8.
        for bit in [0x1, 0x2, 0x4] {
            if y & bit != 0 {
                at += 1;
            }
        }
        if y & 0x8 == 0 {
            break;
        }
        let td = ATR[at];
        at += 1;
        protocols.push(td & 0x0F);
        y = td >> 4;
    }
    assert!(protocols.contains(&1), "T=1 offered: {protocols:?}");
    assert_eq!(&ATR[at..at + historical], &HISTORICAL_BYTES);
    assert_eq!(&HISTORICAL_BYTES[..7], b"IMPRINT");
    assert_eq!(HISTORICAL_BYTES[7], proto::COMMAND_SET_VERSION);
    // TCK is present (T≠0 offered) and the last byte.
    assert_eq!(at + historical + 1, ATR.len());
    assert!(ATR.len() <= 33, "an ATR has at most 33 bytes");
}

// ---------------------------------------------------------------- messages

#[test]
fn messages_are_classified() {
    assert_eq!(Message::parse(&[]), Message::Empty);
    assert_eq!(Message::parse(&[0]), Message::Control(Control::PowerOff));
    assert_eq!(Message::parse(&[1]), Message::Control(Control::PowerOn));
    assert_eq!(Message::parse(&[2]), Message::Control(Control::Reset));
    assert_eq!(Message::parse(&[4]), Message::Control(Control::GetAtr));
    assert_eq!(Message::parse(&[3]), Message::UnknownControl(3));
    assert_eq!(Message::parse(&[0xFF]), Message::UnknownControl(0xFF));
    assert_eq!(Message::parse(&[0, 0]), Message::Apdu(&[0, 0]));
    for control in [
        Control::PowerOff,
        Control::PowerOn,
        Control::Reset,
        Control::GetAtr,
    ] {
        assert_eq!(Control::from_byte(control.byte()), Some(control));
    }
}

#[test]
fn control_codes_and_apdus() {
    let mut card = card();
    assert!(!card.is_powered());
    assert_eq!(card.handle_message(&[4]), Some(ATR.to_vec()));
    assert_eq!(card.handle_message(&[1]), None);
    assert!(card.is_powered());
    assert_eq!(card.handle_message(&[]), None);
    assert_eq!(card.handle_message(&[9]), None);
    assert_eq!(card.apdus_processed(), 0);

    let response = card.handle_message(&select_apdu()).unwrap();
    assert_eq!(sw_of(&response), sw::OK);
    assert_eq!(response[0], tag::FCI as u8);
    // Malformed APDUs get a status word, not a panic or silence.
    for apdu in [
        &[0x00, 0xA4][..],
        &[0x00, 0xA4, 0x04],
        &[0x00, 0xA4, 0x04, 0x00, 0x09],
    ] {
        let response = card.handle_message(apdu).unwrap();
        assert_eq!(response.len(), 2, "{apdu:02X?}");
        assert_ne!(sw_of(&response), sw::OK, "{apdu:02X?}");
    }
    assert_eq!(card.apdus_processed(), 4);
    assert_eq!(card.handle_message(&[0]), None);
    assert!(!card.is_powered());
}

#[test]
fn power_off_reset_and_removal_drop_volatile_state_and_keep_persistent_state() {
    type PowerDrop = fn(&mut TestCard);
    let ways: [(&str, PowerDrop); 4] = [
        ("power off", |card| {
            assert_eq!(card.handle_message(&[0]), None)
        }),
        ("power on", |card| {
            assert_eq!(card.handle_message(&[1]), None)
        }),
        ("reset", |card| assert_eq!(card.handle_message(&[2]), None)),
        ("removal", VirtualCard::remove),
    ];
    for (what, drop_power) in ways {
        let mut card = card();
        card.handle_message(&[1]);
        assert_eq!(apdu_sw(&mut card, &select_apdu()), sw::OK);
        // Persistent: the identity key (the serial appears in SELECT's FCI).
        assert_eq!(apdu_sw(&mut card, &GENERATE_IDENTITY), sw::OK, "{what}");
        assert_eq!(apdu_sw(&mut card, &GET_IDENTITY_CERT), sw::DATA_NOT_FOUND);
        // Volatile: a pending chain (CLA b5).
        assert_eq!(
            apdu_sw(&mut card, &[0x10, ins::PUT_DATA, 0x3F, 0xFF, 0x01, 0x00]),
            sw::OK
        );

        drop_power(&mut card);

        // Selection and the chain are gone: no "last command expected" error,
        // just "select first".
        assert_eq!(
            apdu_sw(&mut card, &GET_IDENTITY_CERT),
            sw::CONDITIONS,
            "{what}"
        );
        let response = card.handle_message(&select_apdu()).unwrap();
        assert_eq!(sw_of(&response), sw::OK, "{what}");
        assert!(
            response.windows(2).any(|w| w == [0xC1, 0x08]),
            "{what}: the serial (identity key) survives"
        );
        assert_eq!(card.applet().lifecycle(), Lifecycle::Manufactured);
    }
}

#[test]
fn a_pending_chain_without_reset_is_still_pending() {
    // The control for the test above: without a reset the chain is live.
    let mut card = card();
    assert_eq!(apdu_sw(&mut card, &select_apdu()), sw::OK);
    assert_eq!(
        apdu_sw(&mut card, &[0x10, ins::PUT_DATA, 0x3F, 0xFF, 0x01, 0x00]),
        sw::OK
    );
    assert_eq!(
        apdu_sw(&mut card, &GET_IDENTITY_CERT),
        sw::LAST_COMMAND_EXPECTED
    );
}

#[test]
fn frames_are_length_prefixed_and_bounded() {
    assert_eq!(encode_frame(&[]).unwrap(), [0, 0]);
    assert_eq!(encode_frame(&[0x90, 0x00]).unwrap(), [0, 2, 0x90, 0x00]);
    let largest = vec![0u8; MAX_PAYLOAD];
    assert_eq!(&encode_frame(&largest).unwrap()[..2], [0xFF, 0xFF]);
    let too_large = vec![0u8; MAX_PAYLOAD + 1];
    assert!(matches!(
        encode_frame(&too_large),
        Err(VpcdError::FrameTooLarge { len }) if len == MAX_PAYLOAD + 1
    ));
}

// ---------------------------------------------------------------- over TCP

/// The reader's side of the wire, as a test stand-in for vpcd.
struct FakeReader {
    stream: TcpStream,
}

impl FakeReader {
    fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self { stream }
    }

    /// Sends a frame the way old vpcd builds do: length, then body, in two writes.
    fn send(&mut self, payload: &[u8]) {
        let len = u16::try_from(payload.len()).unwrap().to_be_bytes();
        self.stream.write_all(&len).unwrap();
        self.stream.write_all(payload).unwrap();
    }

    fn receive(&mut self) -> Option<Vec<u8>> {
        let mut header = [0u8; 2];
        match self.stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(err) => panic!("reading from the card: {err}"),
        }
        let mut payload = vec![0; usize::from(u16::from_be_bytes(header))];
        self.stream.read_exact(&mut payload).unwrap();
        Some(payload)
    }

    fn transact(&mut self, payload: &[u8]) -> Vec<u8> {
        self.send(payload);
        self.receive().expect("an answer")
    }
}

fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Runs `run_connection` on a thread; returns its result and the card.
fn connection_thread(
    addr: SocketAddr,
    mut card: TestCard,
    fail_after_apdus: Option<u64>,
) -> thread::JoinHandle<(Result<ConnectionEnd, VpcdError>, TestCard)> {
    thread::spawn(move || {
        let stream = TcpStream::connect(addr).unwrap();
        let result = run_connection(stream, &mut card, fail_after_apdus, &mut |_| {});
        (result, card)
    })
}

#[test]
fn a_connection_answers_atr_and_apdus_until_the_reader_closes_it() {
    let (listener, addr) = listener();
    let card_thread = connection_thread(addr, card(), None);
    let mut reader = FakeReader::accept(&listener);
    reader.send(&[1]);
    assert_eq!(reader.transact(&[4]), ATR);
    // An empty frame and an unknown control code are ignored without an answer.
    reader.send(&[]);
    reader.send(&[7]);
    let response = reader.transact(&select_apdu());
    assert_eq!(sw_of(&response), sw::OK);
    assert_eq!(
        sw_of(&reader.transact(&GET_IDENTITY_CERT)),
        sw::DATA_NOT_FOUND
    );
    drop(reader);
    let (result, card) = card_thread.join().unwrap();
    assert_eq!(result.unwrap(), ConnectionEnd::Closed);
    assert_eq!(card.apdus_processed(), 2);
    assert!(!card.is_powered(), "removal powers the card down");
}

#[test]
fn a_frame_cut_short_ends_the_connection_with_an_error() {
    for (bytes, expected_got, expected_len) in
        [(&[0x00][..], 1, 2), (&[0x00, 0x0A, 1, 2, 3][..], 3, 10)]
    {
        let (listener, addr) = listener();
        let card_thread = connection_thread(addr, card(), None);
        let mut reader = FakeReader::accept(&listener);
        reader.stream.write_all(bytes).unwrap();
        drop(reader);
        let (result, _) = card_thread.join().unwrap();
        match result {
            Err(VpcdError::Truncated { got, expected }) => {
                assert_eq!((got, expected), (expected_got, expected_len));
            }
            other => panic!("{bytes:02X?}: {other:?}"),
        }
    }
}

#[test]
fn the_largest_frame_is_read_whole() {
    let (listener, addr) = listener();
    let card_thread = connection_thread(addr, card(), None);
    let mut reader = FakeReader::accept(&listener);
    // A 65535-byte body: an extended-length APDU whose Lc disagrees with its
    // length, which the applet refuses with a status word.
    let mut apdu = vec![0x00, 0xDB, 0x3F, 0xFF, 0x00, 0xFF, 0xFF];
    apdu.resize(MAX_PAYLOAD, 0xAB);
    let response = reader.transact(&apdu);
    assert_eq!(response.len(), 2);
    assert_ne!(sw_of(&response), sw::OK);
    // The stream is still in step.
    assert_eq!(reader.transact(&[4]), ATR);
    drop(reader);
    assert_eq!(
        card_thread.join().unwrap().0.unwrap(),
        ConnectionEnd::Closed
    );
}

#[test]
fn fault_injection_withholds_the_response_after_processing() {
    let (listener, addr) = listener();
    let card_thread = connection_thread(addr, card(), Some(2));
    let mut reader = FakeReader::accept(&listener);
    assert_eq!(sw_of(&reader.transact(&select_apdu())), sw::OK);
    reader.send(&GENERATE_IDENTITY);
    assert_eq!(reader.receive(), None, "no response, connection closed");
    let (result, mut card) = card_thread.join().unwrap();
    assert_eq!(result.unwrap(), ConnectionEnd::FailInjected);
    assert_eq!(card.apdus_processed(), 2);
    // The second APDU was processed: the identity key exists.
    let response = card.handle_message(&select_apdu()).unwrap();
    assert!(response.windows(2).any(|w| w == [0xC1, 0x08]));
}

#[test]
fn fault_injection_at_zero_processes_nothing() {
    let (listener, addr) = listener();
    let card_thread = connection_thread(addr, card(), Some(0));
    let mut reader = FakeReader::accept(&listener);
    // Control codes are not APDUs and still work.
    assert_eq!(reader.transact(&[4]), ATR);
    reader.send(&select_apdu());
    assert_eq!(reader.receive(), None);
    let (result, card) = card_thread.join().unwrap();
    assert_eq!(result.unwrap(), ConnectionEnd::FailInjected);
    assert_eq!(card.apdus_processed(), 0);
}

// ---------------------------------------------------------------- serve

type Log = Arc<Mutex<Vec<String>>>;

fn describe(event: &Event<'_>) -> String {
    match event {
        Event::Connected { .. } => "connected".into(),
        Event::ConnectFailed { attempt, .. } => format!("connect failed {attempt}"),
        Event::Disconnected { error: None } => "disconnected".into(),
        Event::Disconnected { error: Some(err) } => format!("disconnected: {err}"),
        Event::Reconnecting { attempt, .. } => format!("reconnecting {attempt}"),
        Event::Control(control) => format!("{control:?}"),
        Event::Ignored { payload } => format!("ignored {payload:02X?}"),
    }
}

fn serve_thread(
    addr: SocketAddr,
    options: ServeOptions,
) -> (thread::JoinHandle<(ServeOutcome, TestCard)>, Log) {
    let log = Log::default();
    let events = Arc::clone(&log);
    let handle = thread::spawn(move || {
        let mut card = card();
        let outcome = serve(addr, &mut card, &options, &mut |event| {
            events.lock().unwrap().push(describe(event));
        });
        (outcome, card)
    });
    (handle, log)
}

fn fast_options() -> ServeOptions {
    ServeOptions {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        ..ServeOptions::default()
    }
}

#[test]
fn serve_reconnects_after_the_reader_goes_away_and_comes_back() {
    let (listener, addr) = listener();
    let options = fast_options();
    let stop = options.stop.clone();
    let (server, log) = serve_thread(addr, options);

    let mut reader = FakeReader::accept(&listener);
    assert_eq!(reader.transact(&[4]), ATR);
    assert_eq!(sw_of(&reader.transact(&select_apdu())), sw::OK);
    assert_eq!(sw_of(&reader.transact(&GENERATE_IDENTITY)), sw::OK);
    // pcscd stops: the connection and the listening socket go away.
    drop(reader);
    drop(listener);
    thread::sleep(Duration::from_millis(150));
    // pcscd starts again on the same port.
    let listener = TcpListener::bind(addr).unwrap();
    let mut reader = FakeReader::accept(&listener);
    reader.send(&[1]);
    assert_eq!(reader.transact(&[4]), ATR);
    // Volatile state went with the connection: nothing is selected.
    assert_eq!(sw_of(&reader.transact(&GET_IDENTITY_CERT)), sw::CONDITIONS);
    // Persistent state stayed: the serial is reported.
    let response = reader.transact(&select_apdu());
    assert!(response.windows(2).any(|w| w == [0xC1, 0x08]));

    stop.stop();
    let (outcome, card) = server.join().unwrap();
    assert_eq!(outcome, ServeOutcome::Stopped);
    assert_eq!(card.apdus_processed(), 4);
    let log = log.lock().unwrap().clone();
    assert_eq!(log[0], "connected", "{log:?}");
    assert_eq!(log[1], "disconnected", "{log:?}");
    assert!(log.contains(&"connect failed 1".to_owned()), "{log:?}");
    assert!(log.contains(&"PowerOn".to_owned()), "{log:?}");
    assert_eq!(
        log.iter().filter(|line| *line == "connected").count(),
        2,
        "{log:?}"
    );
    drop(reader);
}

#[test]
fn stop_interrupts_a_blocked_read() {
    let (listener, addr) = listener();
    let options = ServeOptions::default();
    let stop = options.stop.clone();
    let (server, log) = serve_thread(addr, options);
    let mut reader = FakeReader::accept(&listener);
    assert_eq!(reader.transact(&[4]), ATR);
    let started = Instant::now();
    stop.stop();
    let (outcome, _) = server.join().unwrap();
    assert_eq!(outcome, ServeOutcome::Stopped);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(reader.receive(), None, "the card left the reader");
    let log = log.lock().unwrap().clone();
    assert_eq!(log, ["connected", "disconnected"]);
}

#[test]
fn stop_interrupts_the_backoff() {
    // A port with nobody listening: bind, note the address, close.
    let (listener, addr) = listener();
    drop(listener);
    let options = ServeOptions {
        initial_backoff: Duration::from_secs(30),
        max_backoff: Duration::from_secs(30),
        ..ServeOptions::default()
    };
    let stop = options.stop.clone();
    let (server, log) = serve_thread(addr, options);
    while log.lock().unwrap().len() < 2 {
        thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    stop.stop();
    assert_eq!(server.join().unwrap().0, ServeOutcome::Stopped);
    assert!(started.elapsed() < Duration::from_secs(5));
    let log = log.lock().unwrap().clone();
    assert_eq!(log, ["connect failed 1", "reconnecting 1"]);
}

#[test]
fn a_stopped_handle_stops_serve_before_it_connects() {
    let (_listener, addr) = listener();
    let options = ServeOptions::default();
    options.stop.stop();
    let mut card = card();
    let outcome = serve(addr, &mut card, &options, &mut |_| panic!("no events"));
    assert_eq!(outcome, ServeOutcome::Stopped);
    assert!(format!("{:?}", options.stop).contains("stopped: true"));
}

#[test]
fn serve_returns_when_fault_injection_fires() {
    let (listener, addr) = listener();
    let options = ServeOptions {
        fail_after_apdus: Some(1),
        ..fast_options()
    };
    let (server, _) = serve_thread(addr, options);
    let mut reader = FakeReader::accept(&listener);
    assert_eq!(reader.transact(&[4]), ATR);
    reader.send(&select_apdu());
    assert_eq!(reader.receive(), None);
    let (outcome, _) = server.join().unwrap();
    assert_eq!(outcome, ServeOutcome::FailInjected { apdus: 1 });
}
