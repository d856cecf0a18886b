//! Remote personalization through a relay (claim 14): the unit as a network
//! service, and the relay (the "mobile appliance") between it and a module.
//!
//! ```text
//!  module ◀─local─▶ relay (imprint relay)  ◀──TCP, wire frames──▶ unit (imprint personalizer serve)
//!     SELECT ──────▶ serial
//!                   HELLO (personalize, serial) ────────────────▶
//!                   ◀──────────── RELAY CHALLENGE (c, SHA-384(unit cert by M))
//!                   RELAY AUTH (relay key, sig) ────────────────▶ verify, registry, presentation row
//!     ◀── APDUs ──  ◀──────────── COMMAND / RESPONSE ──────────▶ personalize() over FrameTransport
//!                   ◀──────────── PERSONALIZED (journal id, certificate) or ERROR
//! ```
//!
//! The relay signs `SHA-384("imprint v1 relay" ‖ c ‖ serial ‖ SHA-384(unit
//! certificate by the manufacturer))` ([`relay_auth_digest`]), so the unit
//! learns which registered relay presents which module: the module is
//! identified indirectly, through the relay. The personalization channel
//! itself stays end to end between unit and module: the relay forwards
//! secured APDUs it cannot read, and any change it makes is detected by the
//! module's or the unit's MAC and counter checks.
//!
//! Claim 13 over the relay: a unit serving with `--require-tan` asks the
//! relay (ENTER TAN) to have its user type the TAN and send it to the module
//! locally; only the status word comes back.
//!
//! Claim 15: a unit started with a direct address offers the module, inside
//! the channel, that address and a one-time ticket ([`direct`]). A module
//! whose runtime has a network of its own dials the unit, and the run goes on
//! over that connection, in the same channel; the relay is told HANDED OVER
//! and only waits for the result. A module without a network declines
//! (`6A81`) and the run stays on the relay.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use imprint_apdu::host::personalize::SelectInfo;
use imprint_apdu::host::transport::{CardLink, Transport, TransportError};
use imprint_apdu::host::{
    IssuanceJournal, IssuedCertificate, JournalError, PersonalizationOptions, PersonalizeError,
    UnitCredentials, personalize,
};
use imprint_apdu::iso::{Command, sw};
use imprint_apdu::pki::{self, Certificate};
use imprint_apdu::proto::{self, ins};
use imprint_central::client::{self, ClientError};
use imprint_central::keyfile::{self, KeyFileError, Overwrite};
use imprint_central::wire::{
    ErrorCode, Frame, FrameError, Purpose, RELAY_CHALLENGE_LEN, RELAY_PUBLIC_KEY_LEN, WireError,
    read_frame, relay_auth_digest, write_frame,
};
use p384::ecdsa::signature::hazmat::{PrehashVerifier, RandomizedPrehashSigner};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use p384::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use sha2::{Digest, Sha384};
use zeroize::Zeroizing;

use crate::HostError;
use crate::journal::SqliteJournal;
use crate::journal::relays::relay_fingerprint;
use crate::roles::{self, Personalizer};

pub mod direct;
#[cfg(test)]
mod tests;

pub use direct::{
    DirectPathRefusal, DirectRun, DirectRunReporter, DirectTickets, IssuedTicket, NetworkedModule,
    TicketRefusal,
};

/// The relay's private key file in its directory.
pub const RELAY_KEY: &str = "relay.key";

/// The relay's public key file in its directory, for the unit's operator.
pub const RELAY_PUBLIC_KEY: &str = "relay.pub.pem";

/// What a relay waits after HANDED OVER, in multiples of the unit's
/// timeout: the module's connection, then the commands still to come.
const HANDED_OVER_TIMEOUTS: u32 = 4;

/// Checks a direct address: 1 to 255 bytes (the offer's limit), `HOST:PORT`
/// with a non-empty host and a port from 1 to 65535.
pub(crate) fn check_direct_address(address: &str) -> Result<(), RemoteError> {
    let bad = || RemoteError::BadDirectAddress(address.to_owned());
    if address.is_empty() || address.len() > imprint_apdu::proto::len::DIRECT_ADDRESS_MAX {
        return Err(bad());
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(port) if port != 0 && !host.is_empty() => Ok(()),
        _ => Err(bad()),
    }
}

/// Default time either side waits for the other.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A failure of remote personalization, on either side.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The unit's directory, journal or relay registry failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A key file could not be read or written.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The peer's connection failed or sent a malformed frame.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Relaying between the module and the unit failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The personalization failed (on the unit's side).
    #[error(transparent)]
    Personalize(#[from] PersonalizeError),
    /// The unit ended the conversation with an ERROR frame.
    #[error("the personalization unit refused ({code}): {reason}")]
    Refused {
        /// Category.
        code: ErrorCode,
        /// Its reason.
        reason: String,
    },
    /// A frame that does not fit the conversation.
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    /// HELLO named another purpose than personalization.
    #[error("this personalization unit only personalizes (HELLO named another purpose)")]
    WrongPurpose,
    /// The module does not answer SELECT with the Imprint applet and a serial.
    #[error("not an Imprint module, or not manufactured yet (SELECT status {0:04X})")]
    NotImprint(u16),
    /// A relay public key file that is not a P-384 public key.
    #[error("{path} is not a PEM P-384 public key", path = .0.display())]
    BadPublicKey(PathBuf),
    /// The relay's public key is not a valid P-384 point.
    #[error("the relay's public key is not a valid P-384 point")]
    InvalidRelayKey,
    /// The relay's signature does not verify over this challenge, serial and unit.
    #[error("the relay's signature does not verify for this unit, challenge and module serial")]
    RelaySignature,
    /// The relay is not registered and the unit accepts registered relays only.
    #[error("relay {0} is not registered with this unit")]
    UnregisteredRelay(String),
    /// The module behind the relay is not the one named in HELLO.
    #[error("the module's serial differs from the serial its relay presented in HELLO")]
    SerialMismatch,
    /// The listening socket could not be opened.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address asked for.
        address: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The operating system's random generator failed.
    #[error("the operating system random generator failed")]
    Random,
    /// A DIRECT frame whose ticket no run waits for.
    #[error(transparent)]
    Ticket(#[from] TicketRefusal),
    /// The module's runtime ended its direct connection (claim 15).
    #[error(transparent)]
    DirectPath(#[from] direct::DirectPathRefusal),
    /// `--direct-address` is no address a module could dial.
    #[error("the direct address {0:?} is not HOST:PORT (1 to 255 bytes, a port from 1 to 65535)")]
    BadDirectAddress(String),
    /// The unit asked for a TAN and the relay has none to enter.
    #[error(
        "the personalization unit requires a TAN: run imprint relay with --tan (typed at \
         the relay) or --tan-file FILE"
    )]
    TanNotGiven,
    /// The relay's user could not give the TAN.
    #[error("cannot read the TAN at the relay: {0}")]
    TanUnreadable(String),
    /// The unit asked the relay to enter something other than the TAN.
    #[error(
        "the personalization unit asked the relay to enter data for {0:02X?}; a relay enters only the TAN (VERIFY 00 20 00 82)"
    )]
    NotTanEntry([u8; 4]),
    /// A module's direct connection ended without a result (its thread stopped).
    #[error("the module's direct connection ended without a result")]
    DirectRunLost,
    /// The relay was asked for a direct connection on a module it cannot run one for.
    #[error(
        "--direct needs a module in this process (--module DIR); a card in a reader \
         opens its direct connection from its own runtime (imprint-card --direct)"
    )]
    DirectNeedsModule,
}

impl RemoteError {
    /// The ERROR frame code the unit sends for this failure.
    fn code(&self) -> ErrorCode {
        match self {
            Self::Wire(WireError::Io(err)) if is_timeout(err) => ErrorCode::Timeout,
            Self::Wire(_) | Self::Unexpected(_) | Self::WrongPurpose => ErrorCode::Malformed,
            Self::InvalidRelayKey
            | Self::RelaySignature
            | Self::UnregisteredRelay(_)
            | Self::SerialMismatch
            | Self::Ticket(_)
            | Self::DirectPath(_)
            | Self::TanNotGiven
            | Self::NotTanEntry(_) => ErrorCode::Refused,
            Self::Personalize(PersonalizeError::Transport(TransportError::Io(err)))
                if is_timeout(err) =>
            {
                ErrorCode::Timeout
            }
            Self::Personalize(_) => ErrorCode::ModuleError,
            _ => ErrorCode::Internal,
        }
    }
}

/// Tells the peer why this side ends the conversation (ERROR with the
/// error's code and text, best effort: it may be gone) and returns the error.
pub(crate) fn refuse(stream: &mut TcpStream, err: RemoteError) -> RemoteError {
    let _ = write_frame(
        stream,
        &Frame::Error {
            code: err.code(),
            reason: err.to_string(),
        },
    );
    err
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

// ---------------------------------------------------------------------------
// The relay's credential.

/// Creates a relay key in `dir` (created 0700): `relay.key` (PKCS#8 PEM,
/// 0600) and `relay.pub.pem` (the public key for the unit's operator to
/// register). Refuses to overwrite a key. Returns the public key.
pub fn init_relay(dir: &Path) -> Result<VerifyingKey, RemoteError> {
    keyfile::create_private_dir(dir)?;
    let key = keyfile::generate_signing_key()?;
    keyfile::write_signing_key(&dir.join(RELAY_KEY), &key)?;
    let public = *key.verifying_key();
    let pem = public
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| RemoteError::InvalidRelayKey)?;
    keyfile::write_atomic(
        &dir.join(RELAY_PUBLIC_KEY),
        pem.as_bytes(),
        keyfile::PUBLIC_FILE_MODE,
        Overwrite::Replace,
    )?;
    Ok(public)
}

/// Reads the relay's key from its directory (`DIR/relay.key`) or from the key file itself.
pub fn load_relay_key(dir_or_file: &Path) -> Result<SigningKey, RemoteError> {
    let path = if dir_or_file.is_dir() {
        dir_or_file.join(RELAY_KEY)
    } else {
        dir_or_file.to_path_buf()
    };
    Ok(keyfile::read_signing_key(&path)?)
}

/// Reads a relay's public key (`relay.pub.pem`, SubjectPublicKeyInfo PEM).
pub fn read_relay_public_key(path: &Path) -> Result<p384::PublicKey, RemoteError> {
    let text = keyfile::read_text(path)?;
    p384::PublicKey::from_public_key_pem(&text)
        .map_err(|_| RemoteError::BadPublicKey(path.to_path_buf()))
}

/// The fingerprint of a relay key, as the unit records it.
pub fn key_fingerprint(key: &VerifyingKey) -> String {
    relay_fingerprint(key.to_sec1_point(false).as_bytes())
}

// ---------------------------------------------------------------------------
// The unit's side.

/// How `imprint personalizer serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The unit's directory (credentials and journal).
    pub unit_dir: PathBuf,
    /// Refuse relays not registered with `imprint personalizer relay register`.
    pub registered_relays_only: bool,
    /// Connections served at once; more are answered with ERROR (busy).
    pub max_connections: usize,
    /// How long the unit waits for any frame, and for a module's direct
    /// connection after it accepted the offer.
    pub timeout: Duration,
    /// Claim 15: the address (`host:port`) the unit offers modules for a
    /// direct connection, once the relay has set up the channel. `None`:
    /// every run stays on its relay.
    pub direct_address: Option<String>,
    /// Claim 13 over a relay: personalize only after the user entered a TAN
    /// issued by this unit at the relay (the module's input unit), which
    /// sends it to the module locally; the module proves it in the channel.
    pub require_tan: bool,
}

/// How one connection ended, for the unit's log.
#[derive(Debug, Clone)]
pub struct ConnectionLog {
    /// The peer.
    pub peer: SocketAddr,
    /// The serial the relay presented, once known.
    pub serial: Option<String>,
    /// The relay: its registered name, or `unregistered:<fingerprint>`.
    pub relay: Option<String>,
    /// The module's direct connection, when the run moved onto one (claim 15).
    pub direct_peer: Option<SocketAddr>,
    /// `Ok(journal id)` when the module committed its certificate.
    pub result: Result<i64, String>,
}

/// A bound personalization service.
pub struct Server {
    listener: TcpListener,
    config: ServeConfig,
    unit: Arc<UnitCredentials>,
    active: Arc<AtomicUsize>,
    tickets: Arc<DirectTickets>,
}

impl Server {
    /// Opens the unit in `config.unit_dir` and its journal (migrating it), and
    /// binds `address` (port 0: any free port).
    pub fn bind(address: &str, config: ServeConfig) -> Result<Self, RemoteError> {
        if let Some(direct) = &config.direct_address {
            check_direct_address(direct)?;
        }
        let unit = Personalizer::open(&config.unit_dir)?;
        // Open once now so a broken journal fails at start, not per connection.
        SqliteJournal::open(&roles::journal_path(&config.unit_dir))?;
        let listener = TcpListener::bind(address).map_err(|source| RemoteError::Listen {
            address: address.to_owned(),
            source,
        })?;
        Ok(Self {
            listener,
            config,
            unit: Arc::new(unit),
            active: Arc::new(AtomicUsize::new(0)),
            tickets: Arc::new(DirectTickets::default()),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, RemoteError> {
        self.listener
            .local_addr()
            .map_err(|source| RemoteError::Listen {
                address: "the bound socket".into(),
                source,
            })
    }

    /// Offers modules a direct connection to `address` (claim 15), or no
    /// longer does (`None`). For a service bound to port 0, whose address is
    /// known only now.
    pub fn set_direct_address(&mut self, address: Option<String>) -> Result<(), RemoteError> {
        if let Some(address) = &address {
            check_direct_address(address)?;
        }
        self.config.direct_address = address;
        Ok(())
    }

    /// Serves connections forever, one thread each (the personalization flow
    /// is synchronous); `log` is called once per finished connection.
    pub fn run(self, log: Arc<dyn Fn(&ConnectionLog) + Send + Sync>) -> Result<(), RemoteError> {
        for stream in self.listener.incoming() {
            let Ok(mut stream) = stream else {
                // A connection that failed before accept completed concerns nobody else.
                continue;
            };
            let previous = self.active.fetch_add(1, Ordering::SeqCst);
            // Each run waiting for its module's direct connection holds a
            // slot for that connection too, or a full service would refuse
            // the very connection its runs wait for.
            if previous >= self.config.max_connections + self.tickets.waiting() {
                self.active.fetch_sub(1, Ordering::SeqCst);
                let _ = stream.set_write_timeout(Some(self.config.timeout));
                let _ = write_frame(
                    &mut stream,
                    &Frame::Error {
                        code: ErrorCode::Busy,
                        reason: "the personalization unit is at its connection limit".into(),
                    },
                );
                continue;
            }
            let unit = Arc::clone(&self.unit);
            let config = self.config.clone();
            let active = Arc::clone(&self.active);
            let tickets = Arc::clone(&self.tickets);
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let entry = serve_connection(stream, &unit, &config, &tickets);
                active.fetch_sub(1, Ordering::SeqCst);
                if let Some(entry) = entry {
                    log(&entry);
                }
            });
        }
        Ok(())
    }
}

/// Serves one connection to the end and says how it went: a relay's
/// (HELLO), or a module's direct connection (DIRECT, claim 15), which is
/// handed to the run waiting for its ticket and logged by that run (`None`).
/// Failures are answered with an ERROR frame (best effort: the peer may be gone).
pub fn serve_connection(
    mut stream: TcpStream,
    unit: &UnitCredentials,
    config: &ServeConfig,
    tickets: &DirectTickets,
) -> Option<ConnectionLog> {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut log = ConnectionLog {
        peer,
        serial: None,
        relay: None,
        direct_peer: None,
        result: Err(String::new()),
    };
    let mut direct = None;
    let result = match first_frame(&mut stream, config) {
        Ok(Frame::Hello {
            purpose: Purpose::Personalize,
            serial,
        }) => run_connection(
            &mut stream,
            serial,
            unit,
            config,
            tickets,
            &mut log,
            &mut direct,
        ),
        Ok(Frame::Direct(ticket)) => match stream.try_clone() {
            Ok(handle) => match tickets.redeem(&ticket, handle) {
                Ok(()) => return None,
                Err(refusal) => Err(refusal.into()),
            },
            Err(err) => Err(WireError::Io(err).into()),
        },
        Ok(Frame::Hello { .. }) => Err(RemoteError::WrongPurpose),
        Ok(other) => Err(RemoteError::Unexpected(other.name())),
        Err(err) => Err(err),
    };
    log.direct_peer = direct
        .as_ref()
        .and_then(|stream: &TcpStream| stream.peer_addr().ok());
    log.result = match result {
        Ok(id) => Ok(id),
        Err(err) => {
            let reason = error_chain(&err);
            let frame = Frame::Error {
                code: err.code(),
                reason: reason.clone(),
            };
            for stream in std::iter::once(&mut stream).chain(direct.as_mut()) {
                let _ = write_frame(stream, &frame);
            }
            Err(reason)
        }
    };
    Some(log)
}

/// Sets the connection's deadlines and reads its first frame.
fn first_frame(stream: &mut TcpStream, config: &ServeConfig) -> Result<Frame, RemoteError> {
    configure(stream, config.timeout)?;
    Ok(read_frame(stream)?)
}

fn configure(stream: &TcpStream, timeout: Duration) -> Result<(), WireError> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(())
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// One relayed run, after the relay's HELLO for `serial`. When the module
/// moves onto a direct connection, that connection ends up in `direct`.
fn run_connection(
    stream: &mut TcpStream,
    serial: [u8; pki::SERIAL_LEN],
    unit: &UnitCredentials,
    config: &ServeConfig,
    tickets: &DirectTickets,
    log: &mut ConnectionLog,
    direct: &mut Option<TcpStream>,
) -> Result<i64, RemoteError> {
    let serial_hex = pki::serial_hex(&serial);
    log.serial = Some(serial_hex.clone());

    // The relay's authentication: a fresh challenge, bound to this unit and
    // to the module serial of the HELLO.
    let mut challenge = [0u8; RELAY_CHALLENGE_LEN];
    getrandom::fill(&mut challenge).map_err(|_| RemoteError::Random)?;
    let unit_certificate_hash: [u8; 48] = Sha384::digest(unit.cert_by_manufacturer.der()).into();
    write_frame(
        stream,
        &Frame::RelayChallenge {
            challenge,
            unit_certificate_hash,
        },
    )?;
    let (public_key, signature) = match read_frame(stream)? {
        Frame::RelayAuth {
            public_key,
            signature,
        } => (public_key, signature),
        other => return Err(RemoteError::Unexpected(other.name())),
    };
    // from_sec1_bytes validates the point (on the curve, not the identity).
    let relay_key =
        VerifyingKey::from_sec1_bytes(&public_key).map_err(|_| RemoteError::InvalidRelayKey)?;
    let signature = Signature::from_slice(&signature).map_err(|_| RemoteError::RelaySignature)?;
    let digest = relay_auth_digest(&challenge, &serial, &unit_certificate_hash);
    relay_key
        .verify_prehash(&digest, &signature)
        .map_err(|_| RemoteError::RelaySignature)?;
    let fingerprint = relay_fingerprint(&public_key);

    let mut journal = SqliteJournal::open(&roles::journal_path(&config.unit_dir))?;
    let registered = journal.relay_by_fingerprint(&fingerprint)?;
    log.relay = Some(match &registered {
        Some(relay) => relay.name.clone(),
        None => format!("unregistered:{fingerprint}"),
    });
    if registered.is_none() && config.registered_relays_only {
        return Err(RemoteError::UnregisteredRelay(fingerprint));
    }
    let presentation =
        journal.record_presentation(&serial_hex, &fingerprint, registered.map(|r| r.id))?;

    let mut variation = vec![0u8; 32];
    getrandom::fill(&mut variation).map_err(|_| RemoteError::Random)?;
    let ticket = match &config.direct_address {
        Some(address) => Some(tickets.issue(address)?),
        None => None,
    };
    let options = PersonalizationOptions {
        variation,
        direct: ticket.as_ref().map(|ticket| ticket.offer.clone()),
        // The TAN is typed at the relay and goes to the module from there:
        // for the flow, the relay is the module's input unit, like a PIN pad.
        tan_at_pin_pad: config.require_tan,
        require_tan: config.require_tan,
        ..PersonalizationOptions::default()
    };
    let mut transport = FrameTransport::new(stream, serial);
    transport.tan_at_relay = config.require_tan;
    if let Some(ticket) = &ticket {
        transport = transport.with_direct_ticket(ticket, config.timeout);
    }
    let mut link = CardLink::new(transport);
    let mut presenting = PresentingJournal {
        journal: &mut journal,
        presentation,
    };
    let result = personalize(&mut link, &mut presenting, unit, options);
    let transport = link.into_transport();
    let serial_mismatch = transport.serial_mismatch;
    let direct_peer = transport.direct_peer;
    *direct = transport.direct;
    // A ticket the module never used is withdrawn here, whatever happened.
    drop(ticket);
    log.direct_peer = direct_peer;
    // Noted before the outcome, but its failure does not stop the outcome.
    let noted = direct_peer
        .map(|peer| journal.set_presentation_direct_peer(presentation, &peer.to_string()))
        .transpose();
    let result = match result {
        Err(_) if serial_mismatch => Err(RemoteError::SerialMismatch),
        other => other.map_err(RemoteError::from),
    };
    match result {
        Ok(report) => {
            journal.finish_presentation(presentation, "installed")?;
            noted?;
            let done = Frame::Personalized {
                journal_id: u64::try_from(report.journal_id).unwrap_or_default(),
                certificate: report.certificate.der().to_vec(),
            };
            // The module's runtime learns the result on its own connection;
            // the relay (and its user) on theirs. Installed is installed:
            // a peer gone by now changes nothing the journal says.
            if let Some(direct) = direct.as_mut() {
                let _ = write_frame(direct, &done);
            }
            if direct.is_some() {
                let _ = write_frame(stream, &done);
            } else {
                write_frame(stream, &done)?;
            }
            Ok(report.journal_id)
        }
        Err(err) => {
            journal.finish_presentation(presentation, &format!("failed: {err}"))?;
            noted?;
            Err(err)
        }
    }
}

/// The journal of a relayed run: the issuance journal, plus the link from
/// the relay presentation to the journal entry.
struct PresentingJournal<'a> {
    journal: &'a mut SqliteJournal,
    presentation: i64,
}

impl IssuanceJournal for PresentingJournal<'_> {
    fn record_issued(&mut self, issued: &IssuedCertificate) -> Result<i64, JournalError> {
        let id = self.journal.record_issued(issued)?;
        self.journal
            .set_presentation_journal_id(self.presentation, id)
            .map_err(|err| JournalError(Box::new(err)))?;
        Ok(id)
    }

    fn mark_installed(&mut self, id: i64) -> Result<(), JournalError> {
        self.journal.mark_installed(id)
    }

    fn mark_failed(&mut self, id: i64, reason: &str) -> Result<(), JournalError> {
        self.journal.mark_failed(id, reason)
    }

    fn tan_salt(&mut self) -> Result<Option<[u8; 32]>, JournalError> {
        IssuanceJournal::tan_salt(self.journal)
    }

    fn check_tan(
        &mut self,
        serial: &str,
        th: &imprint_apdu::channel::Digest48,
        proof: &[u8],
    ) -> Result<imprint_apdu::host::tan::TanCheck, JournalError> {
        self.journal.check_tan(serial, th, proof)
    }
}

/// The unit's [`Transport`] to a module behind a relay: each command APDU
/// goes out as a COMMAND frame (header and data field), each RESPONSE frame
/// comes back as the response APDU. The relay does chaining and GET RESPONSE
/// with the module, so this transport takes extended lengths.
///
/// With a direct-connection ticket (claim 15), [`Transport::switch_to_direct`]
/// tells the relay HANDED OVER, waits for the module's own connection, and
/// carries every later command over it.
pub struct FrameTransport<'a> {
    stream: &'a mut TcpStream,
    expected_serial: [u8; pki::SERIAL_LEN],
    exchanges: u32,
    serial_mismatch: bool,
    ticket: Option<(&'a IssuedTicket<'a>, Duration)>,
    direct: Option<TcpStream>,
    direct_peer: Option<SocketAddr>,
    tan_at_relay: bool,
}

impl<'a> FrameTransport<'a> {
    /// A transport over `stream` to the module the relay presented as `serial`.
    pub fn new(stream: &'a mut TcpStream, serial: [u8; pki::SERIAL_LEN]) -> Self {
        Self {
            stream,
            expected_serial: serial,
            exchanges: 0,
            serial_mismatch: false,
            ticket: None,
            direct: None,
            direct_peer: None,
            tan_at_relay: false,
        }
    }

    /// Lets the run move onto the module's direct connection, which must
    /// present `ticket` within `timeout` of the switch.
    pub fn with_direct_ticket(mut self, ticket: &'a IssuedTicket<'a>, timeout: Duration) -> Self {
        self.ticket = Some((ticket, timeout));
        self
    }

    fn path(&mut self) -> &mut TcpStream {
        match &mut self.direct {
            Some(direct) => direct,
            None => self.stream,
        }
    }
}

fn wire_to_transport(err: WireError) -> TransportError {
    match err {
        WireError::Io(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
            TransportError::Disconnected
        }
        WireError::Io(err) => TransportError::Io(err),
        WireError::Frame(err) => {
            TransportError::Io(io::Error::new(io::ErrorKind::InvalidData, err))
        }
    }
}

impl Transport for FrameTransport<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let parsed =
            Command::parse(command).map_err(|_| TransportError::TooLarge(command.len()))?;
        write_frame(
            self.path(),
            &Frame::Command {
                header: [parsed.cla, parsed.ins, parsed.p1, parsed.p2],
                data: parsed.data.to_vec(),
            },
        )
        .map_err(wire_to_transport)?;
        let (data, status) = match read_frame(self.path()).map_err(wire_to_transport)? {
            Frame::Response { data, sw } => (data, sw),
            // The relay, or the module's runtime on its direct connection,
            // gave up and said why.
            Frame::Error { code, reason } => {
                return Err(TransportError::Io(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("the module's side ended the connection ({code}): {reason}"),
                )));
            }
            other => {
                return Err(TransportError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    FrameError::BadBody(other.name()),
                )));
            }
        };
        self.exchanges = self.exchanges.saturating_add(1);
        // The first exchange is SELECT: the serial it reports is the one the
        // handshake then authenticates (the identity certificate must name
        // it), so checking it here binds the relay's HELLO to the module.
        if self.exchanges == 1 && parsed.ins == ins::SELECT {
            let reported = (status == sw::OK)
                .then(|| SelectInfo::parse(&data))
                .flatten()
                .and_then(|info| info.serial);
            if reported.is_some_and(|serial| serial != self.expected_serial) {
                self.serial_mismatch = true;
                return Err(TransportError::Disconnected);
            }
        }
        let mut bytes = data;
        bytes.extend_from_slice(&status.to_be_bytes());
        Ok(bytes)
    }

    fn has_pin_pad(&mut self) -> Result<bool, TransportError> {
        Ok(self.tan_at_relay)
    }

    /// The relay is the module's input unit (claim 13): it has the user
    /// enter the TAN and sends the VERIFY to the module itself. Only the
    /// status word comes back.
    fn verify_at_pin_pad(
        &mut self,
        header: [u8; 4],
        digits: u8,
    ) -> Result<Vec<u8>, TransportError> {
        if !self.tan_at_relay {
            return Err(TransportError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "this unit does not ask relays for TANs",
            )));
        }
        write_frame(self.stream, &Frame::EnterTan { header, digits }).map_err(wire_to_transport)?;
        match read_frame(self.stream).map_err(wire_to_transport)? {
            Frame::Response { sw, .. } => Ok(sw.to_be_bytes().to_vec()),
            Frame::Error { code, reason } => Err(TransportError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the relay ended the connection ({code}): {reason}"),
            ))),
            other => Err(TransportError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                FrameError::BadBody(other.name()),
            ))),
        }
    }

    fn switch_to_direct(&mut self) -> Result<(), TransportError> {
        let (ticket, timeout) = self
            .ticket
            .take()
            .ok_or(TransportError::DirectUnsupported)?;
        // From here the relay forwards nothing: it holds the module (so the
        // card is not reset) and waits for the result, as long as the unit
        // may take: the module's connection, then every command's deadline.
        let wait_seconds = u32::try_from(
            timeout
                .saturating_mul(HANDED_OVER_TIMEOUTS)
                .as_secs()
                .saturating_add(1),
        )
        .unwrap_or(u32::MAX);
        write_frame(self.stream, &Frame::HandedOver { wait_seconds }).map_err(wire_to_transport)?;
        let direct = ticket
            .wait(timeout)
            .ok_or(TransportError::DirectNotOpened(timeout))?;
        configure(&direct, timeout).map_err(wire_to_transport)?;
        self.direct_peer = direct.peer_addr().ok();
        self.direct = Some(direct);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The relay's side.

/// Answers ENTER TAN: the user's TAN to the module as VERIFY, locally; the
/// module's status word to the unit.
fn enter_tan<T: Transport>(
    link: &mut CardLink<T>,
    stream: &mut TcpStream,
    header: [u8; 4],
    digits: u8,
    tan: &mut Option<TanSource<'_>>,
) -> Result<(), RemoteError> {
    // Nothing else: the unit must not make the relay send its user's input
    // anywhere but into the TAN's VERIFY.
    if header != [0x00, ins::VERIFY, proto::P1_VERIFY, proto::TAN_REF] {
        return Err(refuse(stream, RemoteError::NotTanEntry(header)));
    }
    let Some(source) = tan.as_mut() else {
        return Err(refuse(stream, RemoteError::TanNotGiven));
    };
    let entered = source()?;
    let sw = if entered.len() == usize::from(digits) {
        link.send(header, &entered).map_err(ClientError::from)?.sw
    } else {
        // What a PIN pad answers to an entry of the wrong length.
        0x6403
    };
    write_frame(
        stream,
        &Frame::Response {
            data: Vec::new(),
            sw,
        },
    )?;
    Ok(())
}

/// What a relayed personalization did, as the relay saw it.
#[derive(Debug, Clone)]
pub struct RelayReport {
    /// The module serial.
    pub serial: String,
    /// The unit's journal id of the installed certificate.
    pub journal_id: u64,
    /// The module certificate the unit reports.
    pub certificate: Certificate,
    /// Logical commands relayed to the module, SELECT included.
    pub commands: u32,
    /// The unit moved the run onto the module's own direct connection after
    /// the handshake (claim 15); the relay forwarded nothing after that.
    pub handed_over: bool,
}

/// SELECT: the module's serial (it must be manufactured).
pub fn select_serial<T: Transport>(
    link: &mut CardLink<T>,
) -> Result<[u8; pki::SERIAL_LEN], RemoteError> {
    let response = link
        .send([0x00, ins::SELECT, 0x04, 0x00], &proto::AID)
        .map_err(ClientError::from)?;
    (response.sw == sw::OK)
        .then(|| SelectInfo::parse(&response.data))
        .flatten()
        .and_then(|info| info.serial)
        .ok_or(RemoteError::NotImprint(response.sw))
}

/// The relay's authentication, after HELLO: answers the unit's challenge
/// with `key`'s signature over [`relay_auth_digest`].
pub fn authenticate_relay(
    stream: &mut TcpStream,
    key: &SigningKey,
    serial: &[u8; pki::SERIAL_LEN],
) -> Result<(), RemoteError> {
    let (challenge, unit_certificate_hash) = match read_frame(stream)? {
        Frame::RelayChallenge {
            challenge,
            unit_certificate_hash,
        } => (challenge, unit_certificate_hash),
        Frame::Error { code, reason } => return Err(RemoteError::Refused { code, reason }),
        other => return Err(RemoteError::Unexpected(other.name())),
    };
    let digest = relay_auth_digest(&challenge, serial, &unit_certificate_hash);
    let signature: Signature = key
        .sign_prehash_with_rng(&mut getrandom::SysRng, &digest)
        .map_err(|_| RemoteError::Random)?;
    let mut public_key = [0u8; RELAY_PUBLIC_KEY_LEN];
    public_key.copy_from_slice(key.verifying_key().to_sec1_point(false).as_bytes());
    write_frame(
        stream,
        &Frame::RelayAuth {
            public_key,
            signature: signature.to_bytes().into(),
        },
    )?;
    Ok(())
}

/// Where a relay gets the TAN a unit asks for (claim 13): its user, at the
/// relay, which is the module's input unit. Wiped when dropped.
pub type TanSource<'a> = &'a mut dyn FnMut() -> Result<Zeroizing<Vec<u8>>, RemoteError>;

/// Plays the mobile appliance (claim 14): selects the module behind `link`
/// for its serial, presents it to the unit on `stream` under the relay's
/// `key`, then forwards the unit's commands and the module's responses until
/// the unit reports the result. The relay holds no channel key: every
/// secured APDU is opaque to it.
pub fn relay_personalization<T: Transport>(
    link: &mut CardLink<T>,
    stream: &mut TcpStream,
    key: &SigningKey,
) -> Result<RelayReport, RemoteError> {
    relay_personalization_with_tan(link, stream, key, None)
}

/// [`relay_personalization`], entering the TAN from `tan` when the unit asks
/// for one (ENTER TAN): the relay sends it to the module locally as VERIFY
/// `00 20 00 82` and returns only the status word, so the TAN never crosses
/// the long-distance connection.
pub fn relay_personalization_with_tan<T: Transport>(
    link: &mut CardLink<T>,
    stream: &mut TcpStream,
    key: &SigningKey,
    mut tan: Option<TanSource<'_>>,
) -> Result<RelayReport, RemoteError> {
    let before = link.command_count();
    let serial = select_serial(link)?;
    write_frame(
        stream,
        &Frame::Hello {
            purpose: Purpose::Personalize,
            serial,
        },
    )?;
    authenticate_relay(stream, key, &serial)?;
    let mut outcome = client::relay(link, stream);
    while let Ok(Frame::EnterTan { header, digits }) = outcome {
        enter_tan(link, stream, header, digits, &mut tan)?;
        outcome = client::relay(link, stream);
    }
    let commands = link.command_count() - before;
    let handed_over = matches!(outcome, Ok(Frame::HandedOver { .. }));
    if let Ok(Frame::HandedOver { wait_seconds }) = outcome {
        // Claim 15: the module talks to the unit directly now. The relay
        // keeps the module connected, untouched, until the unit reports,
        // for as long as the unit said it may take.
        stream
            .set_read_timeout(Some(Duration::from_secs(u64::from(wait_seconds.max(1)))))
            .map_err(WireError::Io)?;
        outcome = read_frame(stream).map_err(ClientError::from);
        if let Ok(Frame::Error { code, reason }) = outcome {
            outcome = Err(ClientError::Central { code, reason });
        }
    }
    match outcome {
        Ok(Frame::Personalized {
            journal_id,
            certificate,
        }) => Ok(RelayReport {
            serial: pki::serial_hex(&serial),
            journal_id,
            certificate: Certificate::from_der(&certificate)
                .map_err(|_| RemoteError::Unexpected("PERSONALIZED (certificate)"))?,
            commands,
            handed_over,
        }),
        Ok(other) => Err(RemoteError::Unexpected(other.name())),
        Err(ClientError::Central { code, reason }) => Err(RemoteError::Refused { code, reason }),
        Err(err) => Err(err.into()),
    }
}
