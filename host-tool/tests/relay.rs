//! Remote personalization through a relay (claim 14): the unit as a network
//! service (`remote::Server`), a relay with its own registered key, and
//! misbehaving relays built from the same library pieces. Claim 15 at the
//! end: the relay only sets up a direct connection between module and unit.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use imprint_apdu::direct::DirectConnection;
use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::host::personalize::OpenChannel;
use imprint_apdu::host::transport::{Transport, TransportError};
use imprint_apdu::host::{
    CardLink, InProcessTransport, PersonalizationOptions, UnitCredentials, personalize,
};
use imprint_apdu::iso::CLA_SM;
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::pki::verify_issued_by;
use imprint_apdu::proto::len;
use imprint_apdu::proto::{Lifecycle, ins};
use imprint_central::client;
use imprint_central::wire::{self, ErrorCode, Frame, Purpose};
use imprint_host::journal::{IssuanceStatus, SqliteJournal};
use imprint_host::remote::{self, ConnectionLog, RemoteError, ServeConfig, Server};
use imprint_host::roles::{self, Manufacturer, Personalizer};
use imprint_host::{demo, module};
use p384::ecdsa::SigningKey;
use p384::ecdsa::signature::hazmat::RandomizedPrehashSigner;

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    unit_dir: PathBuf,
    unit: UnitCredentials,
    manufacturer: Manufacturer,
    next_module: usize,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        // The demo builds the three roles (and personalizes one module locally).
        demo::run_demo(&dir.join("world"), 1).expect("demo world");
        let unit_dir = dir.join("world").join("personalizer");
        let unit = Personalizer::open(&unit_dir).expect("unit");
        let manufacturer =
            Manufacturer::open(&dir.join("world").join("manufacturer")).expect("manufacturer");
        Self {
            _tmp: tmp,
            dir,
            unit_dir,
            unit,
            manufacturer,
            next_module: 0,
        }
    }

    /// A freshly manufactured module; returns its directory and serial.
    fn module(&mut self) -> (PathBuf, String) {
        self.next_module += 1;
        let dir = self.dir.join(format!("module-{}", self.next_module));
        let mut link = module::open(&dir, true).expect("module");
        let made =
            manufacture(&mut link, self.manufacturer.credentials(), 20).expect("manufacture");
        (dir, made.serial)
    }

    /// A module personalized once, locally: its next personalization is a
    /// re-personalization (TERMINATE, then GENERATE and PUT DATA, all secured).
    fn operating_module(&mut self) -> (PathBuf, String) {
        let (dir, serial) = self.module();
        let mut link = module::open(&dir, false).expect("module");
        personalize(
            &mut link,
            &mut self.journal(),
            &self.unit,
            PersonalizationOptions::default(),
        )
        .expect("first personalization");
        (dir, serial)
    }

    fn relay_key(&self, name: &str, register: bool) -> SigningKey {
        let dir = self.dir.join(format!("relay-{name}"));
        remote::init_relay(&dir).expect("relay init");
        if register {
            let public =
                remote::read_relay_public_key(&dir.join(remote::RELAY_PUBLIC_KEY)).expect("pub");
            self.journal()
                .register_relay(name, &public)
                .expect("register");
        }
        remote::load_relay_key(&dir).expect("relay key")
    }

    fn journal(&self) -> SqliteJournal {
        SqliteJournal::open(&roles::journal_path(&self.unit_dir)).expect("journal")
    }

    fn serve(&self, registered_relays_only: bool) -> (SocketAddr, Receiver<ConnectionLog>) {
        self.serve_with(registered_relays_only, 4, Duration::from_secs(10))
    }

    /// The service's configuration in these tests: registered relays only,
    /// 4 connections, 10 s, no direct connections, no TAN.
    fn config(&self) -> ServeConfig {
        ServeConfig {
            unit_dir: self.unit_dir.clone(),
            registered_relays_only: true,
            max_connections: 4,
            timeout: Duration::from_secs(10),
            direct_address: None,
            require_tan: false,
        }
    }

    fn serve_with(
        &self,
        registered_relays_only: bool,
        max_connections: usize,
        timeout: Duration,
    ) -> (SocketAddr, Receiver<ConnectionLog>) {
        let server = Server::bind(
            "127.0.0.1:0",
            ServeConfig {
                registered_relays_only,
                max_connections,
                timeout,
                ..self.config()
            },
        )
        .expect("bind");
        spawn(server)
    }
}

/// Runs `server` in a thread; its connection logs arrive on the receiver.
fn spawn(server: Server) -> (SocketAddr, Receiver<ConnectionLog>) {
    let address = server.local_addr().expect("address");
    let (sender, receiver) = channel();
    std::thread::spawn(move || {
        let _ = server.run(Arc::new(move |log: &ConnectionLog| {
            let _ = sender.send(log.clone());
        }));
    });
    (address, receiver)
}

fn connect(address: SocketAddr) -> TcpStream {
    client::connect(&address.to_string(), Duration::from_secs(10)).expect("connect")
}

fn serial_bytes(hex: &str) -> [u8; 8] {
    imprint_central::display::parse_hex(hex)
        .and_then(|bytes| bytes.try_into().ok())
        .expect("serial")
}

fn lifecycle(dir: &Path) -> Lifecycle {
    module::status(dir).expect("status").info.lifecycle
}

#[test]
fn claim14_mobile_appliance_relays_and_identifies_the_module_indirectly() {
    let mut world = World::new();
    let key = world.relay_key("phone-1", true);
    let (address, logs) = world.serve(true);
    let (module_dir, serial) = world.module();

    let mut link = module::open(&module_dir, false).expect("module");
    let mut stream = connect(address);
    let report = remote::relay_personalization(&mut link, &mut stream, &key).expect("relayed");
    drop(link);
    assert_eq!(report.serial, serial);
    assert!(report.commands >= 5, "{report:?}");

    // The module is OPERATING with a certificate from that unit.
    let status = module::status(&module_dir).expect("status");
    assert_eq!(status.info.lifecycle, Lifecycle::Operating);
    let certificate = status.module_cert.expect("module certificate");
    assert_eq!(certificate.der(), report.certificate.der());
    verify_issued_by(&certificate, &world.unit.cert_by_central, 0).expect("issued by the unit");

    // The unit journaled it and knows which relay presented which module.
    let log = logs.recv_timeout(Duration::from_secs(10)).expect("log");
    assert_eq!(log.serial.as_deref(), Some(serial.as_str()));
    assert_eq!(log.relay.as_deref(), Some("phone-1"));
    let journal = world.journal();
    let entries = journal.entries_for(&serial).expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].status, IssuanceStatus::Installed);
    assert_eq!(entries[0].certificate, certificate.der());
    assert_eq!(Ok(entries[0].id), log.result);
    let presentations = journal.presentations().expect("presentations");
    assert_eq!(presentations.len(), 1);
    let presentation = &presentations[0];
    assert_eq!(presentation.serial, serial);
    assert_eq!(presentation.relay_name.as_deref(), Some("phone-1"));
    assert_eq!(
        presentation.relay_fingerprint,
        remote::key_fingerprint(key.verifying_key())
    );
    assert_eq!(presentation.journal_id, Some(entries[0].id));
    assert_eq!(presentation.outcome, "installed");
}

#[test]
fn an_unregistered_relay_is_refused_when_only_registered_relays_may_present() {
    let mut world = World::new();
    let key = world.relay_key("stranger", false);
    let (address, _logs) = world.serve(true);
    let (module_dir, serial) = world.module();
    let before = lifecycle(&module_dir);

    let mut link = module::open(&module_dir, false).expect("module");
    let mut stream = connect(address);
    let err = remote::relay_personalization(&mut link, &mut stream, &key).expect_err("refused");
    drop(link);
    match &err {
        RemoteError::Refused { code, reason } => {
            assert_eq!(*code, ErrorCode::Refused);
            assert!(reason.contains("not registered"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(lifecycle(&module_dir), before);
    let journal = world.journal();
    assert!(journal.entries_for(&serial).expect("entries").is_empty());
    assert!(journal.presentations().expect("presentations").is_empty());
}

#[test]
fn an_unregistered_relay_is_recorded_by_its_key_when_the_unit_is_open() {
    let mut world = World::new();
    let key = world.relay_key("stranger", false);
    let (address, _logs) = world.serve(false);
    let (module_dir, serial) = world.module();
    let mut link = module::open(&module_dir, false).expect("module");
    let mut stream = connect(address);
    remote::relay_personalization(&mut link, &mut stream, &key).expect("relayed");
    drop(link);
    assert_eq!(lifecycle(&module_dir), Lifecycle::Operating);
    let presentations = world.journal().presentations().expect("presentations");
    assert_eq!(presentations.len(), 1);
    assert_eq!(presentations[0].serial, serial);
    assert_eq!(presentations[0].relay_name, None);
    assert_eq!(
        presentations[0].relay_fingerprint,
        remote::key_fingerprint(key.verifying_key())
    );
}

/// How a misbehaving relay treats the end-to-end channel.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Flips one bit in the middle of the first secured command.
    FlipCommand,
    /// Flips one bit in the data of the first secured response.
    FlipResponse,
    /// Does not forward GENERATE ASYMMETRIC KEY PAIR; answers 9000 itself.
    DropGenerate,
    /// Sends the module the earlier GENERATE again instead of PUT DATA.
    ReplayInsteadOfPutData,
    /// Reorders: holds the first secured command (GENERATE) back and answers
    /// the unit at once with the module's previous response, as if GENERATE
    /// had been answered; GENERATE reaches the module only later.
    AnswerBeforeDelivering,
    /// Reorders responses from GENERATE on: forwards each command but
    /// answers it with the module's previous response, keeping the fresh one
    /// for the next. On a re-personalization the previous response is
    /// TERMINATE's: secured under this very channel, only out of turn.
    ShiftResponsesFromGenerate,
    /// Forwards PUT DATA, then flips one bit of the module's answer: the
    /// module has committed, the unit cannot know it.
    FlipPutDataResponse,
}

/// A relay's module side that tampers: between the COMMAND frames and the module.
struct Tamper<T: Transport> {
    inner: T,
    mode: Misbehaviour,
    done: bool,
    last_secured: Option<Vec<u8>>,
    /// The module's latest response, for answering out of turn.
    last_response: Option<Vec<u8>>,
    /// A command held back from the module (reordering).
    held_command: Option<Vec<u8>>,
    /// A module response held back from the unit (reordering).
    held_response: Option<Vec<u8>>,
    /// Commands the unit sent after the tampering.
    after_tampering: u32,
}

impl<T: Transport> Tamper<T> {
    fn new(inner: T, mode: Misbehaviour) -> Self {
        Self {
            inner,
            mode,
            done: false,
            last_secured: None,
            last_response: None,
            held_command: None,
            held_response: None,
            after_tampering: 0,
        }
    }

    /// Passes `command` to the module, noting its response.
    fn forward(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let response = self.inner.transmit(command)?;
        self.last_response = Some(response.clone());
        Ok(response)
    }

    /// The module's previous response: what a reordering relay answers with.
    fn stale_response(&self) -> Vec<u8> {
        self.last_response
            .clone()
            .expect("the module answered before the first secured command")
    }

    /// The late half of a reordering: delivers the held command to the
    /// module now, whatever the unit did meanwhile.
    fn deliver_held(&mut self) -> Option<Result<Vec<u8>, TransportError>> {
        let command = self.held_command.take()?;
        Some(self.forward(&command))
    }
}

impl<T: Transport> Transport for Tamper<T> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let secured = command.first().is_some_and(|cla| cla & CLA_SM == CLA_SM);
        let ins_byte = command.get(1).copied();
        if self.done {
            self.after_tampering += 1;
            // A shifting relay keeps answering one response late.
            if let Some(late) = self.held_response.take() {
                self.held_response = Some(self.forward(command)?);
                return Ok(late);
            }
            return self.forward(command);
        }
        if !secured {
            return self.forward(command);
        }
        let previous = self.last_secured.replace(command.to_vec());
        match self.mode {
            Misbehaviour::FlipCommand => {
                self.done = true;
                let mut changed = command.to_vec();
                // Extended APDU: header (4), 00 Lc Lc (3), data, Le (2).
                let middle = 7 + (changed.len() - 9) / 2;
                changed[middle] ^= 0x01;
                self.inner.transmit(&changed)
            }
            Misbehaviour::FlipResponse => {
                self.done = true;
                let mut response = self.inner.transmit(command)?;
                assert!(response.len() > 2, "a secured response carries data");
                response[0] ^= 0x01;
                Ok(response)
            }
            Misbehaviour::DropGenerate if ins_byte == Some(ins::GENERATE_KEY) => {
                self.done = true;
                Ok(vec![0x90, 0x00])
            }
            Misbehaviour::ReplayInsteadOfPutData if ins_byte == Some(ins::PUT_DATA) => {
                self.done = true;
                let replayed = previous.expect("an earlier secured command");
                self.inner.transmit(&replayed)
            }
            Misbehaviour::AnswerBeforeDelivering => {
                self.done = true;
                self.held_command = Some(command.to_vec());
                Ok(self.stale_response())
            }
            Misbehaviour::ShiftResponsesFromGenerate if ins_byte == Some(ins::GENERATE_KEY) => {
                self.done = true;
                let stale = self.stale_response();
                self.held_response = Some(self.forward(command)?);
                Ok(stale)
            }
            Misbehaviour::FlipPutDataResponse if ins_byte == Some(ins::PUT_DATA) => {
                self.done = true;
                let mut response = self.forward(command)?;
                response[0] ^= 0x01;
                Ok(response)
            }
            _ => self.forward(command),
        }
    }

    fn supports_extended_length(&self) -> bool {
        self.inner.supports_extended_length()
    }
}

/// The module side of a relay, over a module in this process.
type ModuleTransport = InProcessTransport<FileKeyMemory>;

/// A relayed run through a relay that misbehaved.
struct TamperedRun {
    module_dir: PathBuf,
    serial: String,
    /// The unit's journal entries for the module before the run.
    earlier_entries: Vec<i64>,
    /// What the relay got back.
    error: RemoteError,
    /// The relay's module side, still holding the module.
    relay: Tamper<ModuleTransport>,
}

/// Relays the personalization of `module` (its directory and serial)
/// through a relay that misbehaves as `mode`; the run must fail.
fn relay_tampered(
    address: SocketAddr,
    key: &SigningKey,
    mode: Misbehaviour,
    (module_dir, serial): (PathBuf, String),
    journal: &SqliteJournal,
) -> TamperedRun {
    let earlier_entries = journal
        .entries_for(&serial)
        .expect("entries")
        .iter()
        .map(|entry| entry.id)
        .collect();
    let link = module::open(&module_dir, false).expect("module");
    let mut link = CardLink::new(Tamper::new(link.into_transport(), mode));
    let mut stream = connect(address);
    let error = remote::relay_personalization(&mut link, &mut stream, key)
        .expect_err("the tampering is detected");
    eprintln!("{mode:?}: {error}");
    TamperedRun {
        module_dir,
        serial,
        earlier_entries,
        error,
        relay: link.into_transport(),
    }
}

/// The relay was refused, the unit logged and recorded a failure, and
/// nothing was issued: the module waits for a personalization without a
/// module certificate (where a first personalization found it; where
/// TERMINATE left a re-personalized one, its old material erased), and any
/// journal entry is failed.
fn assert_refused_and_nothing_issued(
    world: &World,
    logs: &Receiver<ConnectionLog>,
    mode: Misbehaviour,
    run: TamperedRun,
) {
    let TamperedRun {
        module_dir,
        serial,
        earlier_entries,
        error,
        relay,
    } = run;
    // One opener at a time: release the module before looking at it.
    drop(relay);
    assert!(
        matches!(error, RemoteError::Refused { .. } | RemoteError::Client(_)),
        "{mode:?}: {error:?}"
    );
    let log = logs.recv_timeout(Duration::from_secs(10)).expect("log");
    assert!(log.result.is_err(), "{mode:?}: {log:?}");
    assert_eq!(
        lifecycle(&module_dir),
        Lifecycle::Personalization,
        "{mode:?}"
    );
    assert!(
        module::status(&module_dir)
            .expect("status")
            .module_cert
            .is_none(),
        "{mode:?}"
    );
    let journal = world.journal();
    for entry in journal.entries_for(&serial).expect("entries") {
        if !earlier_entries.contains(&entry.id) {
            assert_eq!(entry.status, IssuanceStatus::Failed, "{mode:?}");
        }
    }
    let presentation = journal
        .presentations()
        .expect("presentations")
        .into_iter()
        .find(|p| p.serial == serial)
        .expect("presentation recorded");
    assert!(
        presentation.outcome.starts_with("failed"),
        "{mode:?}: {presentation:?}"
    );
}

#[test]
fn a_relay_that_changes_drops_or_replays_an_apdu_is_detected() {
    let mut world = World::new();
    let key = world.relay_key("rogue", true);
    let (address, logs) = world.serve(true);
    for mode in [
        Misbehaviour::FlipCommand,
        Misbehaviour::FlipResponse,
        Misbehaviour::DropGenerate,
        Misbehaviour::ReplayInsteadOfPutData,
    ] {
        let module = world.module();
        let run = relay_tampered(address, &key, mode, module, &world.journal());
        assert_refused_and_nothing_issued(&world, &logs, mode, run);
    }
}

#[test]
fn a_relay_that_reorders_apdus_is_detected() {
    let mut world = World::new();
    let key = world.relay_key("reorderer", true);
    let (address, logs) = world.serve(true);
    for mode in [
        Misbehaviour::AnswerBeforeDelivering,
        Misbehaviour::ShiftResponsesFromGenerate,
    ] {
        let module = match mode {
            Misbehaviour::ShiftResponsesFromGenerate => world.operating_module(),
            _ => world.module(),
        };
        let mut run = relay_tampered(address, &key, mode, module, &world.journal());
        // The unit checks each response before it sends the next command, so
        // a relay never holds two commands to swap: what it can reorder is a
        // response, given out of turn. The unit stops at that response.
        assert_eq!(run.relay.after_tampering, 0, "{mode:?}");
        match &run.error {
            RemoteError::Refused { code, reason } => {
                assert_eq!(*code, ErrorCode::ModuleError, "{mode:?}: {reason}");
                assert!(
                    reason.contains("secure channel failure"),
                    "{mode:?}: {reason}"
                );
            }
            other => panic!("{mode:?}: unexpected {other:?}"),
        }
        // The relay delivers the held GENERATE after all, once the unit has
        // given up. Its counter is in turn, so the module still runs it; that
        // leaves a module key nobody certified, which the next
        // personalization replaces, and nothing is issued.
        if let Some(late) = run.relay.deliver_held() {
            let late = late.expect("the module answers the late GENERATE");
            assert_eq!(late[late.len() - 2..], [0x90, 0x00], "{mode:?}");
        }
        assert_refused_and_nothing_issued(&world, &logs, mode, run);
    }
}

#[test]
fn a_relay_that_garbles_the_answer_to_put_data_leaves_an_operating_module_with_a_failed_entry() {
    // The last answer of the channel can always be lost on its way: this is
    // a card pulled right after it committed (docs/station.md §4), not
    // unchecked material. The module verified and committed the bundle; the
    // unit, unable to open the answer, marks the entry failed, and the
    // module holds exactly that entry's certificate.
    let mut world = World::new();
    let key = world.relay_key("last-word", true);
    let (address, logs) = world.serve(true);
    let mode = Misbehaviour::FlipPutDataResponse;
    let module = world.module();
    let run = relay_tampered(address, &key, mode, module, &world.journal());
    drop(run.relay);
    match &run.error {
        RemoteError::Refused { code, reason } => {
            assert_eq!(*code, ErrorCode::ModuleError, "{reason}");
            assert!(reason.contains("PUT DATA"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let log = logs.recv_timeout(Duration::from_secs(10)).expect("log");
    assert!(log.result.is_err(), "{log:?}");
    let status = module::status(&run.module_dir).expect("status");
    assert_eq!(status.info.lifecycle, Lifecycle::Operating);
    let certificate = status.module_cert.expect("module certificate");
    let journal = world.journal();
    let entries = journal.entries_for(&run.serial).expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].status, IssuanceStatus::Failed);
    assert_eq!(entries[0].certificate, certificate.der());
    let presentation = journal
        .presentations()
        .expect("presentations")
        .into_iter()
        .find(|p| p.serial == run.serial)
        .expect("presentation recorded");
    assert_eq!(presentation.journal_id, Some(entries[0].id));
    assert!(
        presentation.outcome.starts_with("failed"),
        "{presentation:?}"
    );
}

/// Answers the unit's challenge with a signature made for `signed_serial`
/// and `signed_unit_hash` instead of what the unit asked for.
fn present_with_misbound_signature(
    address: SocketAddr,
    key: &SigningKey,
    hello_serial: [u8; 8],
    signed_serial: Option<[u8; 8]>,
    signed_unit_hash: Option<[u8; 48]>,
) -> Frame {
    let mut stream = connect(address);
    wire::write_frame(
        &mut stream,
        &Frame::Hello {
            purpose: Purpose::Personalize,
            serial: hello_serial,
        },
    )
    .expect("hello");
    let Frame::RelayChallenge {
        challenge,
        unit_certificate_hash,
    } = wire::read_frame(&mut stream).expect("challenge")
    else {
        panic!("no challenge");
    };
    let digest = wire::relay_auth_digest(
        &challenge,
        &signed_serial.unwrap_or(hello_serial),
        &signed_unit_hash.unwrap_or(unit_certificate_hash),
    );
    let signature: p384::ecdsa::Signature = key
        .sign_prehash_with_rng(&mut getrandom::SysRng, &digest)
        .expect("sign");
    let mut public_key = [0u8; 97];
    public_key.copy_from_slice(
        p384::PublicKey::from(key.verifying_key())
            .to_sec1_bytes()
            .as_ref(),
    );
    wire::write_frame(
        &mut stream,
        &Frame::RelayAuth {
            public_key,
            signature: signature.to_bytes().into(),
        },
    )
    .expect("auth");
    wire::read_frame(&mut stream).expect("answer")
}

#[test]
fn a_relay_signature_for_another_module_or_unit_is_refused() {
    let mut world = World::new();
    let key = world.relay_key("phone-2", true);
    let (address, _logs) = world.serve(true);
    let (_, serial) = world.module();
    let serial = serial_bytes(&serial);
    let mut other = serial;
    other[7] ^= 1;
    for (signed_serial, signed_unit) in [(Some(other), None), (None, Some([7u8; 48]))] {
        match present_with_misbound_signature(address, &key, serial, signed_serial, signed_unit) {
            Frame::Error { code, reason } => {
                assert_eq!(code, ErrorCode::Refused);
                assert!(reason.contains("signature"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Both refused before any record or APDU.
    assert!(world.journal().presentations().expect("p").is_empty());
}

#[test]
fn a_relay_presenting_another_module_than_it_named_is_refused() {
    let mut world = World::new();
    let key = world.relay_key("phone-3", true);
    let (address, _logs) = world.serve(true);
    let (module_dir, _) = world.module();
    let (_, named) = world.module();
    let named = serial_bytes(&named);
    let before = lifecycle(&module_dir);
    let mut link = module::open(&module_dir, false).expect("module");
    let mut stream = connect(address);
    wire::write_frame(
        &mut stream,
        &Frame::Hello {
            purpose: Purpose::Personalize,
            serial: named,
        },
    )
    .expect("hello");
    remote::authenticate_relay(&mut stream, &key, &named).expect("authenticated");
    let err = client::relay(&mut link, &mut stream).expect_err("refused");
    drop(link);
    assert!(err.to_string().contains("serial"), "{err}");
    assert_eq!(lifecycle(&module_dir), before);
}

fn imprint(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(args)
        .output()
        .expect("imprint")
}

#[test]
fn the_imprint_binaries_serve_register_relay_and_list() {
    use std::ffi::OsStr;
    use std::io::{BufRead, BufReader};

    let mut world = World::new();
    let (module_dir, serial) = world.module();
    let relay_dir = world.dir.join("cli-relay");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    let init = imprint(&[
        OsStr::new("relay"),
        OsStr::new("init"),
        OsStr::new("--dir"),
        relay_dir.as_os_str(),
    ]);
    assert!(init.status.success(), "{}", text(&init.stderr));
    let public_key = relay_dir.join(remote::RELAY_PUBLIC_KEY);
    let register = |name: &str| {
        imprint(&[
            OsStr::new("personalizer"),
            OsStr::new("relay"),
            OsStr::new("register"),
            OsStr::new("--personalizer"),
            world.unit_dir.as_os_str(),
            OsStr::new("--name"),
            OsStr::new(name),
            OsStr::new("--public-key"),
            public_key.as_os_str(),
        ])
    };
    let registered = register("tablet");
    assert!(registered.status.success(), "{}", text(&registered.stderr));
    // The same key under another name is refused.
    let again = register("tablet-2");
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already registered"),
        "{}",
        text(&again.stderr)
    );

    let mut service = std::process::Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args([
            OsStr::new("personalizer"),
            OsStr::new("serve"),
            OsStr::new("--personalizer"),
        ])
        .arg(&world.unit_dir)
        .args(["--listen", "127.0.0.1:0", "--registered-relays-only"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let mut lines = BufReader::new(service.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("text");
    let address = first
        .strip_prefix("personalizer listening on ")
        .unwrap_or_else(|| panic!("{first:?}"))
        .to_owned();
    // Drain the service's log so it never writes to a closed pipe.
    let log = std::thread::spawn(move || lines.next().and_then(Result::ok));

    let relayed = imprint(&[
        OsStr::new("relay"),
        OsStr::new("--module"),
        module_dir.as_os_str(),
        OsStr::new("--personalizer"),
        OsStr::new(&address),
        OsStr::new("--relay-key"),
        relay_dir.as_os_str(),
    ]);
    let stdout = text(&relayed.stdout);
    assert!(
        relayed.status.success(),
        "{stdout}{}",
        text(&relayed.stderr)
    );
    assert!(
        stdout.contains(&format!("serial:     {serial}")),
        "{stdout}"
    );
    let logged = log.join().expect("log thread").expect("a log line");
    assert!(
        logged.contains("relay=tablet") && logged.contains("result=installed"),
        "{logged}"
    );
    let _ = service.kill();
    let _ = service.wait();
    assert_eq!(lifecycle(&module_dir), Lifecycle::Operating);

    let list = imprint(&[
        OsStr::new("personalizer"),
        OsStr::new("relay"),
        OsStr::new("list"),
        OsStr::new("--personalizer"),
        world.unit_dir.as_os_str(),
    ]);
    let listing = text(&list.stdout);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(listing.contains("registered relays: 1"), "{listing}");
    assert!(
        listing.contains(&format!("serial={serial} relay=tablet journal=")),
        "{listing}"
    );
    assert!(listing.contains("outcome=installed"), "{listing}");
}

#[test]
fn a_silent_relay_times_out_and_a_full_unit_answers_busy() {
    let world = World::new();
    let (address, logs) = world.serve_with(true, 1, Duration::from_secs(1));
    // The first connection says HELLO, then nothing: it holds the only slot
    // until the unit's timeout.
    let mut silent = connect(address);
    wire::write_frame(
        &mut silent,
        &Frame::Hello {
            purpose: Purpose::Personalize,
            serial: [1; 8],
        },
    )
    .expect("hello");
    assert!(matches!(
        wire::read_frame(&mut silent).expect("challenge"),
        Frame::RelayChallenge { .. }
    ));
    let mut second = connect(address);
    match wire::read_frame(&mut second).expect("an answer") {
        Frame::Error { code, .. } => assert_eq!(code, ErrorCode::Busy),
        other => panic!("unexpected {other:?}"),
    }
    match wire::read_frame(&mut silent).expect("an answer") {
        Frame::Error { code, .. } => assert_eq!(code, ErrorCode::Timeout),
        other => panic!("unexpected {other:?}"),
    }
    let log = logs.recv_timeout(Duration::from_secs(10)).expect("log");
    assert!(log.result.is_err(), "{log:?}");
    assert!(world.journal().presentations().expect("p").is_empty());
}

// ---------------------------------------------------------------------------
// Claim 15: the relay's connections only set up a direct connection.

impl World {
    /// A service that offers modules a direct connection to itself.
    fn serve_direct(&self, timeout: Duration) -> (SocketAddr, Receiver<ConnectionLog>) {
        self.serve_direct_with(timeout, 4)
    }

    /// [`Self::serve_direct`] serving at most `max_connections` at once.
    fn serve_direct_with(
        &self,
        timeout: Duration,
        max_connections: usize,
    ) -> (SocketAddr, Receiver<ConnectionLog>) {
        let mut server = Server::bind(
            "127.0.0.1:0",
            ServeConfig {
                max_connections,
                timeout,
                ..self.config()
            },
        )
        .expect("bind");
        let address = server.local_addr().expect("address");
        server
            .set_direct_address(Some(address.to_string()))
            .expect("a direct address");
        spawn(server)
    }

    /// The unit logged the run as failed and journaled nothing for `serial`.
    fn assert_failed_with_nothing_issued(&self, logs: &Receiver<ConnectionLog>, serial: &str) {
        let log = logs.recv_timeout(Duration::from_secs(10)).expect("log");
        assert!(log.result.is_err(), "{log:?}");
        let entries = self.journal().entries_for(serial).expect("entries");
        assert!(entries.is_empty(), "nothing issued: {entries:?}");
    }

    /// The module in `dir`, run with a network interface of its own.
    fn networked(&self, dir: &Path) -> remote::NetworkedModule<FileKeyMemory> {
        let applet = module::open(dir, false)
            .expect("module")
            .into_transport()
            .into_applet();
        remote::NetworkedModule::new(applet, Duration::from_secs(10))
    }
}

#[test]
fn claim15_relay_connections_only_set_up_a_direct_connection_between_module_and_unit() {
    let mut world = World::new();
    let key = world.relay_key("phone-1", true);
    // One connection at a time: the module's own connection still gets in,
    // on the slot its waiting run holds for it.
    let (address, logs) = world.serve_direct_with(Duration::from_secs(10), 1);
    let (module_dir, serial) = world.module();
    let networked = world.networked(&module_dir);

    let mut local = CardLink::new(networked.clone());
    let mut stream = connect(address);
    let report =
        remote::relay_personalization(&mut local, &mut stream, &key).expect("personalized");
    assert!(report.handed_over, "the unit moved the run off the relay");
    // The relay carried its own SELECT, the unit's SELECT, the two-step
    // handshake and the sealed offer: nothing that changes the module.
    assert_eq!(report.commands, 5, "{report:?}");

    let runs = networked.finish_direct_runs();
    assert_eq!(runs.len(), 1);
    let run = runs
        .into_iter()
        .next()
        .expect("one run")
        .expect("direct run");
    assert_eq!(
        run.address,
        address.to_string(),
        "the module dialed the unit itself"
    );
    assert_eq!(
        run.commands, 2,
        "GENERATE and PUT DATA went over the direct connection"
    );
    assert_eq!(run.journal_id, report.journal_id);
    assert_eq!(run.certificate.der(), report.certificate.der());

    // The module is OPERATING with the unit's certificate.
    let (lifecycle_now, installed) =
        networked.with_applet(|applet| (applet.lifecycle(), applet.records().module_cert.clone()));
    assert_eq!(lifecycle_now, Lifecycle::Operating);
    assert_eq!(installed.as_deref(), Some(report.certificate.der()));
    verify_issued_by(&report.certificate, &world.unit.cert_by_central, 0)
        .expect("issued by the unit");

    // The unit journaled it, knows the relay that presented the module
    // (claim 14) and the module's own connection that finished the run.
    let log = logs.recv_timeout(Duration::from_secs(10)).expect("log");
    assert_eq!(log.serial.as_deref(), Some(serial.as_str()));
    assert_eq!(log.relay.as_deref(), Some("phone-1"));
    let direct_peer = log.direct_peer.expect("a direct peer");
    assert_ne!(
        Some(direct_peer),
        stream.local_addr().ok(),
        "not the relay's connection"
    );
    let journal = world.journal();
    let entries = journal.entries_for(&serial).expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].status, IssuanceStatus::Installed);
    assert_eq!(Ok(entries[0].id), log.result);
    let presentation = &journal.presentations().expect("presentations")[0];
    assert_eq!(presentation.outcome, "installed");
    assert_eq!(presentation.direct_peer, Some(direct_peer.to_string()));
}

#[test]
fn a_module_without_a_network_declines_and_the_relay_carries_the_whole_run() {
    let mut world = World::new();
    let key = world.relay_key("phone-1", true);
    let (address, logs) = world.serve_direct(Duration::from_secs(10));
    let (module_dir, _serial) = world.module();
    let mut link = module::open(&module_dir, false).expect("module");
    let mut stream = connect(address);
    let report = remote::relay_personalization(&mut link, &mut stream, &key).expect("relayed");
    drop(link);
    assert!(!report.handed_over);
    assert_eq!(
        report.commands, 7,
        "the claim 14 run and the declined offer"
    );
    assert_eq!(lifecycle(&module_dir), Lifecycle::Operating);
    let log = logs.recv_timeout(Duration::from_secs(10)).expect("log");
    assert_eq!(log.direct_peer, None);
    assert_eq!(
        world.journal().presentations().expect("presentations")[0].direct_peer,
        None
    );
}

#[test]
fn a_module_that_accepts_but_never_dials_leaves_nothing_issued() {
    let mut world = World::new();
    let key = world.relay_key("phone-1", true);
    let (address, logs) = world.serve_direct(Duration::from_secs(2));
    let (module_dir, serial) = world.module();
    // Says it has a network, then never uses it.
    let link = module::open(&module_dir, false).expect("module");
    let mut module = link.into_transport();
    module.applet_mut().set_direct_capable(true);
    let mut link = CardLink::new(module);
    let mut stream = connect(address);
    let err = remote::relay_personalization(&mut link, &mut stream, &key)
        .expect_err("no direct connection");
    drop(link);
    assert!(
        err.to_string()
            .contains("did not open the direct connection"),
        "{err}"
    );
    world.assert_failed_with_nothing_issued(&logs, &serial);
    assert_eq!(lifecycle(&module_dir), Lifecycle::Personalization);
    assert!(
        module::status(&module_dir)
            .expect("status")
            .module_cert
            .is_none()
    );
}

#[test]
fn a_relay_that_resets_the_module_after_the_hand_over_only_stops_the_run() {
    let mut world = World::new();
    let key = world.relay_key("rogue", true);
    let (address, logs) = world.serve_direct(Duration::from_secs(10));
    let (module_dir, serial) = world.module();
    let networked = world.networked(&module_dir);

    /// Forwards until the offer, then resets the card under the module.
    struct ResetAfterOffer(remote::NetworkedModule<FileKeyMemory>);
    impl Transport for ResetAfterOffer {
        fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
            let response = self.0.process(command);
            if command.get(1) == Some(&ins::PUT_DATA_OBJECT) {
                // The module's runtime took the offer; now the card loses power.
                self.0.with_applet(|applet| applet.reset());
            }
            Ok(response)
        }
    }
    let mut local = CardLink::new(ResetAfterOffer(networked.clone()));
    let mut stream = connect(address);
    let err = remote::relay_personalization(&mut local, &mut stream, &key)
        .expect_err("the channel died with the reset");
    assert!(matches!(err, RemoteError::Refused { .. }), "{err:?}");
    let runs = networked.finish_direct_runs();
    assert_eq!(runs.len(), 1, "the module dialed");
    assert!(runs[0].is_err(), "the module's side failed too: {runs:?}");
    let log = logs.recv_timeout(Duration::from_secs(10)).expect("log");
    let reason = log.result.expect_err("failed");
    assert!(
        reason.contains("the channel that offered this direct connection is closed"),
        "the module's runtime ended the direct connection with the channel: {reason}"
    );
    let entries = world.journal().entries_for(&serial).expect("entries");
    assert!(entries.is_empty(), "nothing issued: {entries:?}");
    assert!(networked.with_applet(|applet| applet.records().module_cert.is_none()));
    assert_eq!(
        networked.with_applet(|applet| applet.lifecycle()),
        Lifecycle::Personalization
    );
}

#[test]
fn a_forged_direct_ticket_is_refused() {
    let world = World::new();
    let (address, logs) = world.serve_direct(Duration::from_secs(10));
    let mut stream = connect(address);
    wire::write_frame(
        &mut stream,
        &Frame::Direct(wire::DirectTicket([0x42; wire::DIRECT_TICKET_LEN])),
    )
    .expect("send");
    match wire::read_frame(&mut stream).expect("answer") {
        Frame::Error { code, reason } => {
            assert_eq!(code, ErrorCode::Refused);
            assert!(reason.contains("no personalization waits"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let log = logs.recv_timeout(Duration::from_secs(10)).expect("log");
    assert!(log.result.is_err());
}

/// A unit endpoint played by the test: accepts the module's direct
/// connection and checks the ticket.
fn accept_direct(listener: &std::net::TcpListener, offer: &DirectConnection) -> TcpStream {
    let (mut stream, _) = listener.accept().expect("the module dials");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    match wire::read_frame(&mut stream).expect("DIRECT") {
        Frame::Direct(ticket) => assert!(ticket.0 == *offer.ticket, "the offered ticket"),
        other => panic!("unexpected {other:?}"),
    }
    stream
}

/// Sends `header` over the direct connection; the module's runtime must end
/// it with ERROR `reason` and close.
fn assert_direct_refuses(stream: &mut TcpStream, header: [u8; 4], reason: &str) {
    wire::write_frame(
        stream,
        &Frame::Command {
            header,
            data: vec![0x5A; 48],
        },
    )
    .expect("send");
    match wire::read_frame(stream).expect("an answer") {
        Frame::Error { code, reason: got } => {
            assert_eq!(code, ErrorCode::Refused);
            assert!(got.contains(reason), "{got}");
        }
        other => panic!("the module answered {other:?}"),
    }
    assert!(
        wire::read_frame(stream).is_err(),
        "and closed the connection"
    );
}

#[test]
fn a_direct_connection_carries_only_the_offering_channels_sealed_commands() {
    let mut world = World::new();
    let (module_dir, _serial) = world.module();
    let networked = world.networked(&module_dir);
    let mut local = CardLink::new(networked.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let offer = |listener: &std::net::TcpListener| {
        let mut ticket = [0u8; len::DIRECT_TICKET];
        getrandom::fill(&mut ticket).expect("random");
        DirectConnection {
            address: listener.local_addr().expect("address").to_string(),
            ticket: zeroize::Zeroizing::new(ticket),
        }
    };
    let header = [CLA_SM, ins::PUT_DATA_OBJECT, 0xDF, 0x2B];

    // A plain command on the direct path (COMPUTE DIGITAL SIGNATURE, or a
    // VERIFY that would spend PIN tries) never reaches the applet.
    let first = offer(&listener);
    let mut channel = OpenChannel::open(&mut local, &world.unit).expect("channel");
    let (_, status) = channel
        .send(&mut local, header, &first.encode())
        .expect("offer");
    assert_eq!(status, 0x9000);
    let mut stream = accept_direct(&listener, &first);
    assert_direct_refuses(
        &mut stream,
        [0x00, 0x2A, 0x9E, 0x9A],
        "only the offering channel's sealed commands",
    );

    // Once the offering channel is gone, not even a sealed command passes.
    let second = offer(&listener);
    let mut channel = OpenChannel::open(&mut local, &world.unit).expect("channel");
    channel
        .send(&mut local, header, &second.encode())
        .expect("offer");
    let mut stream = accept_direct(&listener, &second);
    networked.with_applet(|applet| applet.reset());
    assert_direct_refuses(
        &mut stream,
        [CLA_SM, ins::GENERATE_KEY, 0x80, 0x02],
        "is closed",
    );

    let runs = networked.finish_direct_runs();
    assert_eq!(runs.len(), 2);
    assert!(matches!(
        runs[0],
        Err(RemoteError::DirectPath(
            remote::DirectPathRefusal::NotSealed
        ))
    ));
    assert!(matches!(
        runs[1],
        Err(RemoteError::DirectPath(
            remote::DirectPathRefusal::ChannelClosed
        ))
    ));
    assert_eq!(
        networked.with_applet(|applet| applet.lifecycle()),
        Lifecycle::Personalization
    );
}

// ---------------------------------------------------------------------------
// Claim 13 over the relay: the TAN is entered at the relay, the module's
// input unit, and never crosses to the unit.

impl World {
    /// A service that requires a TAN, and one TAN issued for `serial`.
    fn serve_requiring_tan(&self, serial: &str) -> (SocketAddr, Receiver<ConnectionLog>, String) {
        let tans = self
            .journal()
            .issue_tans(1, Some(serial), u64::MAX / 4)
            .expect("a TAN");
        let tan = tans[0].1.to_string();
        let server = Server::bind(
            "127.0.0.1:0",
            ServeConfig {
                require_tan: true,
                ..self.config()
            },
        )
        .expect("bind");
        let (address, logs) = spawn(server);
        (address, logs, tan)
    }
}

/// Relays the module in `dir` to `address`, the relay's user giving `tan`.
fn relay_with_tan(
    dir: &Path,
    address: SocketAddr,
    key: &SigningKey,
    tan: Option<&str>,
) -> Result<remote::RelayReport, RemoteError> {
    let mut link = module::open(dir, false).expect("module");
    let mut stream = connect(address);
    let mut typed = || {
        Ok(zeroize::Zeroizing::new(
            tan.unwrap_or_default().as_bytes().to_vec(),
        ))
    };
    let source: Option<remote::TanSource<'_>> = tan.is_some().then_some(&mut typed);
    remote::relay_personalization_with_tan(&mut link, &mut stream, key, source)
}

#[test]
fn claim13_a_tan_entered_at_the_relay_protects_the_remote_personalization() {
    let mut world = World::new();
    let key = world.relay_key("phone-1", true);
    let (module_dir, serial) = world.module();
    let (address, logs, tan) = world.serve_requiring_tan(&serial);

    // Without a TAN at the relay: refused, nothing issued.
    let err = relay_with_tan(&module_dir, address, &key, None).expect_err("no TAN");
    assert!(matches!(err, RemoteError::TanNotGiven), "{err}");
    world.assert_failed_with_nothing_issued(&logs, &serial);

    // A wrong TAN: refused by the unit, and counted.
    let err = relay_with_tan(&module_dir, address, &key, Some("0000000000")).expect_err("wrong");
    assert!(err.to_string().contains("TAN refused"), "{err}");
    world.assert_failed_with_nothing_issued(&logs, &serial);
    assert_eq!(world.journal().tans().expect("tans")[0].failures, 1);
    assert_eq!(lifecycle(&module_dir), Lifecycle::Personalization);

    // The TAN issued for this module: personalized, the TAN consumed with
    // the record. The relay sent the VERIFY itself: one more command.
    let report = relay_with_tan(&module_dir, address, &key, Some(&tan)).expect("personalized");
    // The relay's SELECT, the unit's SELECT, VERIFY (sent by the relay),
    // the handshake (2), the TAN proof, GENERATE and PUT DATA.
    assert_eq!(report.commands, 8);
    assert_eq!(lifecycle(&module_dir), Lifecycle::Operating);
    let log = logs.recv_timeout(Duration::from_secs(10)).expect("log");
    let journal_id = log.result.expect("installed");
    let tans = world.journal().tans().expect("tans");
    assert!(tans[0].used_at.is_some(), "consumed");
    assert_eq!(tans[0].issuance_id, Some(journal_id));
}

#[test]
fn a_unit_cannot_make_the_relay_enter_anything_but_the_tan() {
    let mut world = World::new();
    let key = world.relay_key("phone-1", false);
    let (module_dir, _serial) = world.module();
    // A unit that asks for the user PIN's VERIFY (00 20 00 81) instead.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let unit = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the relay");
        assert!(matches!(
            wire::read_frame(&mut stream).expect("HELLO"),
            Frame::Hello { .. }
        ));
        wire::write_frame(
            &mut stream,
            &Frame::RelayChallenge {
                challenge: [1; wire::RELAY_CHALLENGE_LEN],
                unit_certificate_hash: [2; 48],
            },
        )
        .expect("challenge");
        assert!(matches!(
            wire::read_frame(&mut stream).expect("RELAY AUTH"),
            Frame::RelayAuth { .. }
        ));
        wire::write_frame(
            &mut stream,
            &Frame::EnterTan {
                header: [0x00, ins::VERIFY, 0x00, 0x81],
                digits: 6,
            },
        )
        .expect("ENTER TAN");
        wire::read_frame(&mut stream).expect("the relay's answer")
    });
    let mut asked = false;
    let mut typed = || {
        asked = true;
        Ok(zeroize::Zeroizing::new(b"123456".to_vec()))
    };
    let mut link = module::open(&module_dir, false).expect("module");
    let mut stream = connect(address);
    let err =
        remote::relay_personalization_with_tan(&mut link, &mut stream, &key, Some(&mut typed))
            .expect_err("refused");
    drop(link);
    assert!(matches!(err, RemoteError::NotTanEntry(_)), "{err}");
    assert!(!asked, "the user was never asked");
    match unit.join().expect("unit") {
        Frame::Error { code, reason } => {
            assert_eq!(code, ErrorCode::Refused);
            assert!(reason.contains("enters only the TAN"), "{reason}");
        }
        other => panic!("the relay answered {other:?}"),
    }
}
