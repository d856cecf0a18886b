//! Cards in PC/SC readers: the [`Transport`] over `pcscd`, reader listing and
//! reader watching for the station.
//!
//! ```text
//!  host flows ─▶ CardLink ─▶ PcscTransport ─▶ libpcsclite ─▶ pcscd ─▶ reader driver ─▶ card
//!                  │             │
//!                  │             └─ connect: T=1 preferred (T=0 accepted), then one probe:
//!                  │                SELECT our AID as an extended APDU (Le = 0000)
//!                  │                  answered (not 6700)     ─▶ extended length
//!                  │                  6700, or the reader/driver refuses it ─▶ short APDUs
//!                  └─ extended APDUs, or command chaining + GET RESPONSE (61xx) when short
//! ```
//!
//! The probe's answer is kept and returned for SELECTs of our AID on the same
//! connection until any other command goes to the card (nothing can have
//! changed the card's answer before that), so the probe costs no extra APDU
//! in a flow that starts with SELECT (all of ours do), nor does the station's
//! own look at the card before its flow.
//!
//! PC/SC errors that mean the card is gone (removed, reset by another
//! application, no card, reader unavailable) become
//! [`TransportError::Disconnected`]; so does a failed exchange (a
//! communication error, or an answer shorter than a status word) after which
//! the reader reports the card absent within a short grace period: drivers
//! report a card pulled mid-exchange that way before pcscd notices. Other
//! PC/SC errors travel as [`TransportError::Io`] around a
//! [`HostError::Pcsc`]. A card that vanishes during the probe fails the
//! connection with [`HostError::NoCard`] (not a fall-back to short APDUs).
//!
//! [`ReaderWatch`] follows one reader's card insertions and removals with
//! `SCardGetStatusChange` for the station.
//!
//! A reader that lists `FEATURE_VERIFY_PIN_DIRECT` among its PC/SC part 10
//! features gives the transport a PIN pad ([`pinpad`]): a VERIFY whose
//! digits the user types on the reader, which the host never holds.

use std::ffi::CString;
use std::fmt;
use std::time::{Duration, Instant};

use imprint_apdu::Lifecycle;
use imprint_apdu::host::personalize::SelectInfo;
use imprint_apdu::host::transport::encode_extended;
use imprint_apdu::host::{CardLink, InProcessTransport, Transport, TransportError};
use imprint_apdu::iso::sw;
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::pki;
use imprint_apdu::proto::{self, ins};
use imprint_pkcs11::softhsm::SoftHsmKeyMemory;
use pcsc::{Context, Disposition, Protocol, Protocols, Scope, ShareMode, State};

use crate::HostError;
use crate::station::ReaderChange;

pub mod pinpad;
#[cfg(test)]
mod tests;

/// Size of the receive buffer: the largest extended response (65 536 data
/// bytes) and its status word.
pub const RECEIVE_BUFFER: usize = 65_538;

/// How long a failed exchange waits for the reader to report the card absent
/// before the failure is taken for something other than a removal.
const REMOVAL_GRACE: Duration = Duration::from_millis(1500);

/// The SELECT header for our applet (by DF name, first occurrence).
const SELECT_HEADER: [u8; 4] = [0x00, ins::SELECT, 0x04, 0x00];

/// Whether other applications may use the card while we hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Other applications may exchange APDUs with the card between ours.
    Shared,
    /// Nobody else reaches the card until we disconnect: for flows that hold
    /// a secure channel open across several APDUs.
    Exclusive,
}

/// What happens to the card when the transport closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnClose {
    /// Leave it powered and as it is (polite to other applications).
    Leave,
    /// Reset it: volatile state such as a secure channel is cleared.
    Reset,
}

/// How to connect to a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Sharing with other applications.
    pub access: Access,
    /// Use short APDUs (chaining and GET RESPONSE) without probing for
    /// extended length.
    pub short_apdus: bool,
    /// What to do with the card when the transport closes.
    pub on_close: OnClose,
}

impl ConnectOptions {
    /// For flows that change the module (manufacture, personalize, reset, the
    /// station): exclusive access, card reset when done.
    pub fn exclusive() -> Self {
        Self {
            access: Access::Exclusive,
            short_apdus: false,
            on_close: OnClose::Reset,
        }
    }

    /// For reading (status, export, listing): shared access, card left as it is.
    pub fn shared() -> Self {
        Self {
            access: Access::Shared,
            short_apdus: false,
            on_close: OnClose::Leave,
        }
    }

    /// Forces short APDUs when `short` is true.
    pub fn short_apdus(mut self, short: bool) -> Self {
        self.short_apdus = short;
        self
    }
}

/// Why a transport uses short APDUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortReason {
    /// Asked for (`--short-apdus`).
    Forced,
    /// The card speaks T=0, which carries no extended APDUs (without ENVELOPE).
    ProtocolT0,
    /// The card answered 6700 (wrong length) to the extended probe.
    CardRefused,
    /// The reader, its driver or pcscd refused the extended probe.
    ReaderRefused(pcsc::Error),
}

/// How a transport moves commands and responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthMode {
    /// Extended-length APDUs (up to 65 535 command and 65 536 response bytes).
    Extended,
    /// Short APDUs, with command chaining and GET RESPONSE for large objects.
    Short(ShortReason),
}

impl fmt::Display for LengthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Extended => f.write_str("extended length"),
            Self::Short(ShortReason::Forced) => f.write_str("short APDUs (forced)"),
            Self::Short(ShortReason::ProtocolT0) => f.write_str("short APDUs (T=0)"),
            Self::Short(ShortReason::CardRefused) => {
                f.write_str("short APDUs (card refused extended length)")
            }
            Self::Short(ShortReason::ReaderRefused(err)) => {
                write!(f, "short APDUs (reader refused extended length: {err})")
            }
        }
    }
}

/// A card in a PC/SC reader, as a [`Transport`].
pub struct PcscTransport {
    card: Option<pcsc::Card>,
    reader: String,
    protocol: Protocol,
    length: LengthMode,
    probe_answer: Option<Vec<u8>>,
    cached_answer: Option<Vec<u8>>,
    exchanged: u32,
    buffer: Vec<u8>,
    on_close: OnClose,
    features: Option<pinpad::Features>,
}

impl fmt::Debug for PcscTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcscTransport")
            .field("reader", &self.reader)
            .field("protocol", &self.protocol)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl PcscTransport {
    /// Connects to the card in `reader` on a fresh PC/SC context. Fails with
    /// [`HostError::UnknownReader`] (listing the readers) if there is no such
    /// reader.
    pub fn open(reader: &str, options: ConnectOptions) -> Result<Self, HostError> {
        let context = establish()?;
        let names = reader_names_in(&context)?;
        if !names.iter().any(|name| name == reader) {
            return Err(HostError::UnknownReader {
                name: reader.to_owned(),
                available: names,
            });
        }
        Self::connect(&context, reader, options)
    }

    /// Connects to the card in `reader` through `context`, preferring T=1,
    /// and settles the length mode (see the module documentation).
    pub fn connect(
        context: &Context,
        reader: &str,
        options: ConnectOptions,
    ) -> Result<Self, HostError> {
        let name = reader_cstring(reader)?;
        let share = match options.access {
            Access::Shared => ShareMode::Shared,
            Access::Exclusive => ShareMode::Exclusive,
        };
        let (card, protocol) = match context.connect(&name, share, Protocols::T1) {
            Ok(card) => (card, Protocol::T1),
            Err(pcsc::Error::ProtoMismatch | pcsc::Error::UnsupportedCard) => {
                let card = context
                    .connect(&name, share, Protocols::T0 | Protocols::T1)
                    .map_err(|err| connect_error(reader, err))?;
                let protocol = card
                    .status2_owned()
                    .ok()
                    .and_then(|status| status.protocol2())
                    .unwrap_or(Protocol::T0);
                (card, protocol)
            }
            Err(err) => return Err(connect_error(reader, err)),
        };
        let mut transport = Self {
            card: Some(card),
            reader: reader.to_owned(),
            protocol,
            length: LengthMode::Extended,
            probe_answer: None,
            cached_answer: None,
            exchanged: 0,
            buffer: vec![0; RECEIVE_BUFFER],
            on_close: options.on_close,
            features: None,
        };
        transport.length = if options.short_apdus {
            LengthMode::Short(ShortReason::Forced)
        } else if protocol == Protocol::T0 {
            LengthMode::Short(ShortReason::ProtocolT0)
        } else {
            transport.probe()?
        };
        Ok(transport)
    }

    /// Sends the extended-length SELECT probe and decides the length mode.
    fn probe(&mut self) -> Result<LengthMode, HostError> {
        let command = select_extended();
        self.exchanged += 1;
        let result = match &self.card {
            Some(card) => card
                .transmit(&command, &mut self.buffer)
                .map(<[u8]>::to_vec),
            None => return Err(HostError::NoCard(self.reader.clone())),
        };
        match result {
            Ok(answer) if answer.len() >= 2 => {
                let status = status_word(&answer);
                if status == sw::WRONG_LENGTH {
                    return Ok(LengthMode::Short(ShortReason::CardRefused));
                }
                // A 61xx or 6Cxx answer asks for a follow-up: let the flow's
                // own SELECT go to the card instead of answering it from here.
                if !matches!(status & 0xFF00, 0x6100 | 0x6C00) {
                    self.probe_answer = Some(answer.clone());
                    self.cached_answer = Some(answer);
                }
                Ok(LengthMode::Extended)
            }
            // A card that vanishes during the probe gets the same empty
            // answer or communication error as an exchange the reader
            // refuses: tell them apart as `transmit` does.
            Ok(_) if self.card_left() => Err(HostError::NoCard(self.reader.clone())),
            Ok(_) => Ok(LengthMode::Short(ShortReason::ReaderRefused(
                pcsc::Error::InvalidValue,
            ))),
            Err(err) if card_gone(err) => Err(HostError::NoCard(self.reader.clone())),
            Err(err) if maybe_gone(err) && self.card_left() => {
                Err(HostError::NoCard(self.reader.clone()))
            }
            Err(err @ (pcsc::Error::NoService | pcsc::Error::ServiceStopped)) => {
                Err(HostError::PcscService(err))
            }
            Err(err) => Ok(LengthMode::Short(ShortReason::ReaderRefused(err))),
        }
    }

    /// The reader's name.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// The transmission protocol in use.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Extended length, or short APDUs and why.
    pub fn length_mode(&self) -> LengthMode {
        self.length
    }

    /// The card's answer (data and status word) to the extended SELECT
    /// probe, if the probe ran and the answer was final.
    pub fn probe_answer(&self) -> Option<&[u8]> {
        self.probe_answer.as_deref()
    }

    /// APDUs actually exchanged with the card: the probe included, SELECTs
    /// answered from the probe not.
    pub fn exchanged(&self) -> u32 {
        self.exchanged
    }

    /// The reader's PC/SC part 10 features, asked for once per connection
    /// with `CM_IOCTL_GET_FEATURE_REQUEST` (a request to the reader; the
    /// card sees nothing). A reader or driver that cannot answer it lists
    /// none: pcsc-lite answers `SCARD_E_UNSUPPORTED_FEATURE` for drivers
    /// without control support, vpcd's among them. A malformed list is an
    /// error, not an empty one.
    pub fn features(&mut self) -> Result<&pinpad::Features, HostError> {
        if self.features.is_none() {
            let Some(card) = &self.card else {
                return Err(HostError::NoCard(self.reader.clone()));
            };
            let code = pcsc::ctl_code(pcsc::ffi::DWORD::from(pinpad::GET_FEATURE_REQUEST));
            let mut answer = [0u8; pcsc::MAX_BUFFER_SIZE];
            let features = match card.control(code, &[], &mut answer) {
                Ok(answer) => pinpad::Features::parse(answer)?,
                Err(err) if card_gone(err) => return Err(HostError::NoCard(self.reader.clone())),
                Err(err @ (pcsc::Error::NoService | pcsc::Error::ServiceStopped)) => {
                    return Err(HostError::PcscService(err));
                }
                Err(_) => pinpad::Features::default(),
            };
            self.features = Some(features);
        }
        Ok(self.features.get_or_insert_default())
    }

    /// Disconnects, with the disposition chosen at connect time.
    pub fn close(mut self) -> Result<(), HostError> {
        self.disconnect()
    }

    fn disconnect(&mut self) -> Result<(), HostError> {
        let Some(card) = self.card.take() else {
            return Ok(());
        };
        let disposition = match self.on_close {
            OnClose::Leave => Disposition::LeaveCard,
            OnClose::Reset => Disposition::ResetCard,
        };
        match card.disconnect(disposition) {
            Ok(()) => Ok(()),
            // The card or reader is already gone: nothing left to release.
            Err((_, err)) if card_gone(err) => Ok(()),
            Err((_, source)) => Err(HostError::Pcsc {
                reader: Some(self.reader.clone()),
                op: "disconnect from the card",
                source,
            }),
        }
    }

    /// After a failed exchange: whether the reader reports the card gone
    /// within [`REMOVAL_GRACE`].
    fn card_left(&self) -> bool {
        let Some(card) = &self.card else {
            return true;
        };
        let deadline = Instant::now() + REMOVAL_GRACE;
        loop {
            match card.status2_owned() {
                Err(err) if card_gone(err) => return true,
                Err(_) => return false,
                Ok(status) if status.status().contains(pcsc::Status::ABSENT) => return true,
                Ok(status) if !status.status().contains(pcsc::Status::PRESENT) => return true,
                Ok(_) => {}
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PcscTransport {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `close` reports them.
        let _ = self.disconnect();
    }
}

impl Transport for PcscTransport {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        // Until another command reaches the card, a SELECT of our applet
        // would get the probe's answer again: give it without asking.
        if let Some(answer) = &self.cached_answer {
            if command == select_extended().as_slice() {
                return Ok(answer.clone());
            }
            self.cached_answer = None;
        }
        let Some(card) = &self.card else {
            return Err(TransportError::Disconnected);
        };
        self.exchanged += 1;
        let result = card.transmit(command, &mut self.buffer).map(<[u8]>::to_vec);
        match result {
            // vpcd, for one, answers an exchange the card never completed
            // with nothing at all.
            Ok(answer) if answer.len() < 2 && self.card_left() => Err(TransportError::Disconnected),
            Ok(answer) => Ok(answer),
            Err(err) if card_gone(err) => Err(TransportError::Disconnected),
            Err(err) if maybe_gone(err) && self.card_left() => Err(TransportError::Disconnected),
            Err(source) => Err(TransportError::Io(std::io::Error::other(HostError::Pcsc {
                reader: Some(self.reader.clone()),
                op: "exchange an APDU with the card",
                source,
            }))),
        }
    }

    fn supports_extended_length(&self) -> bool {
        self.length == LengthMode::Extended
    }

    fn has_pin_pad(&mut self) -> Result<bool, TransportError> {
        Ok(self
            .features()
            .map_err(feature_error)?
            .verify_pin_direct()
            .is_some())
    }

    fn verify_at_pin_pad(
        &mut self,
        header: [u8; 4],
        digits: u8,
    ) -> Result<Vec<u8>, TransportError> {
        let Some(code) = self.features().map_err(feature_error)?.verify_pin_direct() else {
            return Err(TransportError::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("reader {:?} offers no secure PIN entry", self.reader),
            )));
        };
        let structure = pinpad::verify_pin_structure(header, digits, digits)
            .ok_or(TransportError::TooLarge(usize::from(digits)))?;
        // The VERIFY reaches the card: the probe's answer may no longer hold.
        self.cached_answer = None;
        let Some(card) = &self.card else {
            return Err(TransportError::Disconnected);
        };
        self.exchanged += 1;
        let result = card
            .control(pcsc::ffi::DWORD::from(code), &structure, &mut self.buffer)
            .map(<[u8]>::to_vec);
        match result {
            Ok(answer) if answer.len() < 2 && self.card_left() => Err(TransportError::Disconnected),
            Ok(answer) => Ok(answer),
            Err(err) if card_gone(err) => Err(TransportError::Disconnected),
            Err(err) if maybe_gone(err) && self.card_left() => Err(TransportError::Disconnected),
            Err(source) => Err(TransportError::Io(std::io::Error::other(HostError::Pcsc {
                reader: Some(self.reader.clone()),
                op: "verify through the reader's PIN pad",
                source,
            }))),
        }
    }
}

/// A failure to learn the reader's features, as the flows see transport failures.
fn feature_error(err: HostError) -> TransportError {
    match err {
        HostError::NoCard(_) => TransportError::Disconnected,
        other => TransportError::Io(std::io::Error::other(other)),
    }
}

/// A link to a card in a PC/SC reader.
pub type ReaderLink = CardLink<PcscTransport>;

/// Opens a [`ReaderLink`] to the card in `reader` (see [`PcscTransport::open`]).
pub fn open_link(reader: &str, options: ConnectOptions) -> Result<ReaderLink, HostError> {
    Ok(CardLink::new(PcscTransport::open(reader, options)?))
}

/// A module reached either in-process (from its key-memory directory or a
/// SoftHSM token) or as a card in a PC/SC reader, so one command line serves
/// all three.
pub enum AnyTransport {
    /// A file-backed module in this process.
    File(InProcessTransport<FileKeyMemory>),
    /// A module in this process whose key memory is a SoftHSM token.
    SoftHsm(InProcessTransport<SoftHsmKeyMemory>),
    /// A card in a reader.
    Reader(PcscTransport),
}

impl Transport for AnyTransport {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        match self {
            Self::File(transport) => transport.transmit(command),
            Self::SoftHsm(transport) => transport.transmit(command),
            Self::Reader(transport) => transport.transmit(command),
        }
    }

    fn supports_extended_length(&self) -> bool {
        match self {
            Self::File(transport) => transport.supports_extended_length(),
            Self::SoftHsm(transport) => transport.supports_extended_length(),
            Self::Reader(transport) => transport.supports_extended_length(),
        }
    }

    fn has_pin_pad(&mut self) -> Result<bool, TransportError> {
        match self {
            // A module in this process has no reader, so no pad.
            Self::File(_) | Self::SoftHsm(_) => Ok(false),
            Self::Reader(transport) => transport.has_pin_pad(),
        }
    }

    fn verify_at_pin_pad(
        &mut self,
        header: [u8; 4],
        digits: u8,
    ) -> Result<Vec<u8>, TransportError> {
        match self {
            Self::File(transport) => transport.verify_at_pin_pad(header, digits),
            Self::SoftHsm(transport) => transport.verify_at_pin_pad(header, digits),
            Self::Reader(transport) => transport.verify_at_pin_pad(header, digits),
        }
    }
}

/// Establishes a PC/SC context.
pub fn establish() -> Result<Context, HostError> {
    Context::establish(Scope::User).map_err(service_error("establish a PC/SC context"))
}

/// The names of the PC/SC readers, in pcscd's order.
pub fn reader_names() -> Result<Vec<String>, HostError> {
    reader_names_in(&establish()?)
}

/// The names of the PC/SC readers known to `context`.
pub fn reader_names_in(context: &Context) -> Result<Vec<String>, HostError> {
    match context.list_readers_owned() {
        Ok(names) => Ok(names
            .iter()
            .map(|name| name.to_string_lossy().into_owned())
            .collect()),
        Err(pcsc::Error::NoReadersAvailable) => Ok(Vec::new()),
        Err(err) => Err(service_error("list the readers")(err)),
    }
}

/// Whether a card is in `reader`.
pub fn card_present(reader: &str) -> Result<bool, HostError> {
    let context = establish()?;
    let state = reader_states(&context, &[reader.to_owned()])?;
    Ok(state
        .first()
        .is_some_and(|(_, state)| state.contains(State::PRESENT)))
}

/// The current state of each reader, without waiting.
fn reader_states(context: &Context, names: &[String]) -> Result<Vec<(String, State)>, HostError> {
    let mut states = names
        .iter()
        .map(|name| {
            Ok(pcsc::ReaderState::new(
                reader_cstring(name)?,
                State::UNAWARE,
            ))
        })
        .collect::<Result<Vec<_>, HostError>>()?;
    if states.is_empty() {
        return Ok(Vec::new());
    }
    match context.get_status_change(Duration::ZERO, &mut states) {
        Ok(()) | Err(pcsc::Error::Timeout) => {}
        Err(pcsc::Error::UnknownReader) => {
            let available = reader_names_in(context)?;
            let name = names
                .iter()
                .find(|name| !available.contains(name))
                .cloned()
                .unwrap_or_default();
            return Err(HostError::UnknownReader { name, available });
        }
        Err(err) => return Err(service_error("read the readers' state")(err)),
    }
    Ok(names
        .iter()
        .cloned()
        .zip(states.iter().map(pcsc::ReaderState::event_state))
        .collect())
}

/// What `imprint readers` reports about one reader.
#[derive(Debug)]
pub struct ReaderReport {
    /// The reader's name.
    pub name: String,
    /// What is in it.
    pub card: CardReport,
}

/// A reader's card, as far as a quick look tells.
#[derive(Debug)]
pub enum CardReport {
    /// No card.
    Absent,
    /// The reader is unavailable (unplugged, driver failure).
    ReaderUnavailable,
    /// A card that does not answer to reset.
    Mute,
    /// A card another application holds exclusively.
    InUse,
    /// A card with our applet.
    Module {
        /// Its serial, once it has an identity key.
        serial: Option<String>,
        /// Its lifecycle.
        lifecycle: Lifecycle,
        /// Its command-set version.
        version: u8,
        /// How the transport talks to it.
        length: LengthMode,
    },
    /// A card without our applet: its answer to SELECT.
    Other {
        /// The status word.
        sw: u16,
    },
    /// The card could not be read.
    Unreadable(HostError),
}

impl fmt::Display for CardReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absent => f.write_str("no card"),
            Self::ReaderUnavailable => f.write_str("reader unavailable"),
            Self::Mute => f.write_str("card present: mute (no answer to reset)"),
            Self::InUse => f.write_str("card present: in use by another application"),
            Self::Module {
                serial,
                lifecycle,
                version,
                length,
            } => write!(
                f,
                "card present: Imprint module {}, {lifecycle} (command set {version}, {length})",
                serial.as_deref().unwrap_or("without serial"),
            ),
            Self::Other { sw } if *sw == sw::OK => {
                f.write_str("card present: other card (SELECT: 9000, not our FCI)")
            }
            Self::Other { sw } => write!(f, "card present: other card (SELECT: {sw:04X})"),
            Self::Unreadable(err) => write!(f, "card present: cannot read it: {}", chain(err)),
        }
    }
}

/// Looks at every reader: card presence and, for cards that answer, whether
/// they hold our applet, with serial and lifecycle. Cards are reached in
/// shared mode and left as they are.
pub fn survey() -> Result<Vec<ReaderReport>, HostError> {
    let context = establish()?;
    let names = reader_names_in(&context)?;
    let states = reader_states(&context, &names)?;
    Ok(states
        .into_iter()
        .map(|(name, state)| {
            let card = if state.intersects(State::UNKNOWN | State::UNAVAILABLE) {
                CardReport::ReaderUnavailable
            } else if !state.contains(State::PRESENT) {
                CardReport::Absent
            } else if state.contains(State::MUTE) {
                CardReport::Mute
            } else if state.contains(State::EXCLUSIVE) {
                CardReport::InUse
            } else {
                look_at_card(&context, &name)
            };
            ReaderReport { name, card }
        })
        .collect())
}

fn look_at_card(context: &Context, reader: &str) -> CardReport {
    let transport = match PcscTransport::connect(context, reader, ConnectOptions::shared()) {
        Ok(transport) => transport,
        Err(HostError::ReaderBusy(_)) => return CardReport::InUse,
        Err(HostError::NoCard(_)) => return CardReport::Absent,
        Err(HostError::CardMute(_)) => return CardReport::Mute,
        Err(err) => return CardReport::Unreadable(err),
    };
    let length = transport.length_mode();
    let mut link = CardLink::new(transport);
    let response = match link.send(SELECT_HEADER, &proto::AID) {
        Ok(response) => response,
        Err(TransportError::Disconnected) => return CardReport::Absent,
        Err(err) => return CardReport::Unreadable(HostError::Transport(err)),
    };
    if response.sw != sw::OK {
        return CardReport::Other { sw: response.sw };
    }
    match SelectInfo::parse(&response.data) {
        Some(info) => CardReport::Module {
            serial: info.serial.map(|serial| pki::serial_hex(&serial)),
            lifecycle: info.lifecycle,
            version: info.version,
            length,
        },
        None => CardReport::Other { sw: sw::OK },
    }
}

/// Follows one reader's card insertions and removals, for the station. Each
/// watch holds its own PC/SC context, so watches on several threads never
/// wait on each other.
pub struct ReaderWatch {
    context: Context,
    name: String,
    state: pcsc::ReaderState,
    present: bool,
    events: u32,
    options: ConnectOptions,
}

impl fmt::Debug for ReaderWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderWatch")
            .field("name", &self.name)
            .field("present", &self.present)
            .finish_non_exhaustive()
    }
}

impl ReaderWatch {
    /// Watches `reader`; cards are connected with `options`. A card already
    /// in the reader counts as inserted at the first [`ReaderWatch::wait`].
    pub fn new(reader: &str, options: ConnectOptions) -> Result<Self, HostError> {
        let context = establish()?;
        let state = pcsc::ReaderState::new(reader_cstring(reader)?, State::UNAWARE);
        Ok(Self {
            context,
            name: reader.to_owned(),
            state,
            present: false,
            events: 0,
            options,
        })
    }

    /// The reader's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `timeout` for a change of the reader's card. A card that
    /// was removed and another inserted between two calls is reported as
    /// inserted (pcscd's event counter tells).
    pub fn wait(&mut self, timeout: Duration) -> Result<ReaderChange, HostError> {
        match self
            .context
            .get_status_change(timeout, std::slice::from_mut(&mut self.state))
        {
            Ok(()) => {
                let (change, present) = classify(
                    self.present,
                    self.events,
                    self.state.event_state(),
                    self.state.event_count(),
                );
                self.present = present;
                self.events = self.state.event_count();
                self.state.sync_current_state();
                Ok(change)
            }
            Err(pcsc::Error::Timeout) => Ok(ReaderChange::Unchanged),
            Err(pcsc::Error::UnknownReader | pcsc::Error::ReaderUnavailable) => {
                self.present = false;
                Ok(ReaderChange::Unavailable)
            }
            Err(
                err @ (pcsc::Error::NoService
                | pcsc::Error::ServiceStopped
                | pcsc::Error::InvalidHandle
                | pcsc::Error::CommError),
            ) => {
                // pcscd went away (its socket closed: a communication
                // error) or restarted: a new context, and the reader's state
                // learned afresh (a card in it then counts as inserted).
                self.present = false;
                if let Ok(context) = establish() {
                    self.context = context;
                    self.state =
                        pcsc::ReaderState::new(reader_cstring(&self.name)?, State::UNAWARE);
                }
                Err(HostError::PcscService(err))
            }
            Err(err) => Err(service_error_for(&self.name, "watch the reader")(err)),
        }
    }

    /// Connects to the card in the reader.
    pub fn connect(&mut self) -> Result<PcscTransport, HostError> {
        PcscTransport::connect(&self.context, &self.name, self.options)
    }

    /// After a card was handled (and its transport closed): takes the
    /// reader's current state as known, so the handling itself (our
    /// exclusive connection, the reset) is not mistaken for an insertion.
    pub fn settle(&mut self) {
        for _ in 0..8 {
            match self
                .context
                .get_status_change(Duration::ZERO, std::slice::from_mut(&mut self.state))
            {
                Ok(()) => {
                    let state = self.state.event_state();
                    self.events = self.state.event_count();
                    self.present = state.contains(State::PRESENT);
                    self.state.sync_current_state();
                }
                Err(_) => return,
            }
        }
    }
}

/// What a reader's new state means, given whether a card was there and
/// pcscd's insertion/removal counter when we last looked; also whether a
/// card is there now. Flags that our own connection changes (in use,
/// exclusive) mean nothing here.
fn classify(
    was_present: bool,
    events_before: u32,
    state: State,
    events: u32,
) -> (ReaderChange, bool) {
    if state.intersects(State::UNKNOWN | State::UNAVAILABLE) {
        return (ReaderChange::Unavailable, false);
    }
    let present = state.contains(State::PRESENT);
    let change = match (was_present, present) {
        (false, true) => ReaderChange::Inserted,
        // Removed and another inserted between two looks.
        (true, true) if events != events_before => ReaderChange::Inserted,
        (true, false) => ReaderChange::Removed,
        _ => ReaderChange::Unchanged,
    };
    (change, present)
}

/// The extended SELECT of our AID with Le = 0000: the probe, and what
/// [`CardLink`] sends for SELECT in extended mode.
fn select_extended() -> Vec<u8> {
    encode_extended(SELECT_HEADER, &proto::AID)
}

fn status_word(answer: &[u8]) -> u16 {
    match answer {
        [.., sw1, sw2] => u16::from_be_bytes([*sw1, *sw2]),
        _ => 0,
    }
}

/// PC/SC errors that mean the card (or its reader) is gone, or was reset
/// under us so that its volatile state is lost.
pub fn card_gone(err: pcsc::Error) -> bool {
    matches!(
        err,
        pcsc::Error::RemovedCard
            | pcsc::Error::ResetCard
            | pcsc::Error::NoSmartcard
            | pcsc::Error::ReaderUnavailable
            | pcsc::Error::UnpoweredCard
            | pcsc::Error::UnknownReader
    )
}

/// PC/SC errors that a card pulled in the middle of an exchange produces
/// before pcscd notices the removal.
fn maybe_gone(err: pcsc::Error) -> bool {
    matches!(
        err,
        pcsc::Error::NotTransacted
            | pcsc::Error::CommError
            | pcsc::Error::CommDataLost
            | pcsc::Error::UnresponsiveCard
            | pcsc::Error::UnknownError
    )
}

fn connect_error(reader: &str, err: pcsc::Error) -> HostError {
    match err {
        pcsc::Error::NoSmartcard | pcsc::Error::RemovedCard => HostError::NoCard(reader.to_owned()),
        pcsc::Error::SharingViolation => HostError::ReaderBusy(reader.to_owned()),
        pcsc::Error::UnresponsiveCard | pcsc::Error::UnpoweredCard => {
            HostError::CardMute(reader.to_owned())
        }
        pcsc::Error::UnknownReader => HostError::UnknownReader {
            name: reader.to_owned(),
            available: reader_names().unwrap_or_default(),
        },
        other => service_error_for(reader, "connect to the card")(other),
    }
}

fn service_error(op: &'static str) -> impl Fn(pcsc::Error) -> HostError {
    move |source| match source {
        pcsc::Error::NoService | pcsc::Error::ServiceStopped => HostError::PcscService(source),
        source => HostError::Pcsc {
            reader: None,
            op,
            source,
        },
    }
}

fn service_error_for(reader: &str, op: &'static str) -> impl Fn(pcsc::Error) -> HostError {
    let reader = reader.to_owned();
    move |source| match source {
        pcsc::Error::NoService | pcsc::Error::ServiceStopped => HostError::PcscService(source),
        source => HostError::Pcsc {
            reader: Some(reader.clone()),
            op,
            source,
        },
    }
}

fn reader_cstring(reader: &str) -> Result<CString, HostError> {
    CString::new(reader).map_err(|_| HostError::UnknownReader {
        name: reader.to_owned(),
        available: Vec::new(),
    })
}

/// An error and its causes on one line, skipping causes whose text the
/// message already shows.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
