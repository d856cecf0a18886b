//! Cards in PC/SC readers: one slot per reader.
//!
//! ```text
//!  PcscDevice ──connect (shared, T=1 preferred)──▶ probe: SELECT AID as an extended APDU
//!      │                                             answered, not 6700 ─▶ extended length
//!      │                                             6700 / reader refuses ─▶ short APDUs
//!      │                                             other status word ─▶ no applet: no token
//!      └─ PcscConnection::exchange ─▶ SCardBeginTransaction ─▶ APDUs ─▶ SCardEndTransaction
//! ```
//!
//! This is a small transport of its own rather than the host tool's
//! (`imprint-host`'s `PcscTransport`): that crate brings SQLite, clap and the
//! station into every process that loads the provider, and its transport is
//! built for exclusive personalization flows. Here the card is shared with
//! other applications, and each operation (SELECT then VERIFY or COMPUTE
//! DIGITAL SIGNATURE) runs inside one PC/SC transaction.
//!
//! A card removed, or reset by another application, ends the connection: the
//! token layer closes the slot's sessions and reports `CKR_DEVICE_REMOVED`.

use std::ffi::CString;
use std::time::Duration;

use imprint_apdu::host::transport::encode_extended;
use imprint_apdu::host::{Transport, TransportError};
use imprint_apdu::proto::{self, ins};
use pcsc::{Context, Disposition, Protocols, ReaderState, Scope, ShareMode, State};

use super::{BackendError, Connection, Device, Presence, SlotDescription};
use crate::config::CardConfig;
use crate::error::Error;

/// The receive buffer: the largest extended response and its status word.
const RECEIVE_BUFFER: usize = 65_538;

/// Lists the readers the configuration selects.
pub struct ReaderScan {
    context: Context,
    config: CardConfig,
}

impl ReaderScan {
    /// Establishes a PC/SC context for the card backend.
    pub fn new(config: CardConfig) -> Result<Self, BackendError> {
        Ok(Self {
            context: Context::establish(Scope::User)?,
            config,
        })
    }

    /// The names of the selected readers present now, in pcscd's order.
    pub fn readers(&self) -> Vec<String> {
        let names = match self.context.list_readers_owned() {
            Ok(names) => names,
            Err(pcsc::Error::NoReadersAvailable) => Vec::new(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot list the PC/SC readers");
                Vec::new()
            }
        };
        names
            .iter()
            .map(|name| name.to_string_lossy().into_owned())
            .filter(|name| {
                self.config
                    .readers
                    .as_ref()
                    .is_none_or(|wanted| wanted.iter().any(|w| w == name))
            })
            .collect()
    }

    /// The slot device of `reader`.
    pub fn device(&self, reader: &str) -> Option<PcscDevice> {
        Some(PcscDevice {
            context: self.context.clone(),
            reader: CString::new(reader).ok()?,
            name: reader.to_owned(),
            short_apdus: self.config.short_apdus,
        })
    }
}

/// A PC/SC reader as a slot.
pub struct PcscDevice {
    context: Context,
    reader: CString,
    name: String,
    short_apdus: bool,
}

impl PcscDevice {
    /// The reader's name.
    pub fn reader(&self) -> &str {
        &self.name
    }
}

impl Device for PcscDevice {
    fn describe(&self) -> SlotDescription {
        SlotDescription {
            description: self.name.clone(),
            manufacturer: "PC/SC".into(),
            removable: true,
            hardware: true,
        }
    }

    fn presence(&mut self) -> Presence {
        let mut states = [ReaderState::new(self.reader.clone(), State::UNAWARE)];
        match self.context.get_status_change(Duration::ZERO, &mut states) {
            Ok(()) | Err(pcsc::Error::Timeout) => {
                let state = states[0].event_state();
                Presence {
                    present: state.contains(State::PRESENT)
                        && !state.intersects(State::UNKNOWN | State::UNAVAILABLE),
                    events: states[0].event_count(),
                }
            }
            Err(_) => Presence::default(),
        }
    }

    fn connect(&mut self) -> Result<Box<dyn Connection>, BackendError> {
        let connect = |protocols| {
            self.context
                .connect(&self.reader, ShareMode::Shared, protocols)
                .map_err(|err| match err {
                    pcsc::Error::NoSmartcard
                    | pcsc::Error::RemovedCard
                    | pcsc::Error::UnknownReader
                    | pcsc::Error::ReaderUnavailable
                    | pcsc::Error::UnpoweredCard
                    | pcsc::Error::UnresponsiveCard => BackendError::NotPresent,
                    pcsc::Error::SharingViolation => BackendError::Busy,
                    other => BackendError::Pcsc(other),
                })
        };
        let (card, t0) = match connect(Protocols::T1) {
            Ok(card) => (card, false),
            Err(BackendError::Pcsc(pcsc::Error::ProtoMismatch | pcsc::Error::UnsupportedCard)) => {
                (connect(Protocols::T0 | Protocols::T1)?, true)
            }
            Err(err) => return Err(err),
        };
        let mut connection = PcscConnection {
            card: Some(card),
            extended: !(self.short_apdus || t0),
            buffer: vec![0; RECEIVE_BUFFER],
        };
        if connection.extended {
            connection.extended = connection.probe()?;
        }
        tracing::debug!(reader = %self.name, extended = connection.extended, "connected");
        Ok(Box::new(connection))
    }
}

/// A shared connection to a card. Dropping it disconnects and leaves the
/// card as it is (the pcsc crate's own drop would reset it, disturbing the
/// other applications that share it); the token layer resets the PIN
/// verification itself before it lets go of a logged-in card.
struct PcscConnection {
    card: Option<pcsc::Card>,
    extended: bool,
    buffer: Vec<u8>,
}

impl Drop for PcscConnection {
    fn drop(&mut self) {
        if let Some(card) = self.card.take() {
            // A card already gone has nothing left to release.
            let _ = card.disconnect(Disposition::LeaveCard);
        }
    }
}

impl PcscConnection {
    /// Sends SELECT of our AID as an extended APDU: whether extended length
    /// works, or an error if the card has no applet or left.
    fn probe(&mut self) -> Result<bool, BackendError> {
        let command = encode_extended([0x00, ins::SELECT, 0x04, 0x00], &proto::AID);
        let Some(card) = &self.card else {
            return Err(BackendError::NotPresent);
        };
        match card.transmit(&command, &mut self.buffer) {
            Ok([.., 0x67, 0x00]) => Ok(false),
            Ok([.., 0x90, 0x00] | [.., 0x61, _]) => Ok(true),
            Ok([.., sw1, sw2]) => {
                tracing::debug!(sw = format_args!("{sw1:02X}{sw2:02X}"), "no applet");
                Err(BackendError::NoApplet)
            }
            Ok(_) => Ok(false),
            Err(err) if gone(err) => Err(BackendError::NotPresent),
            Err(pcsc::Error::NoService | pcsc::Error::ServiceStopped) => {
                Err(BackendError::Pcsc(pcsc::Error::NoService))
            }
            // The reader or driver refused the extended APDU.
            Err(_) => Ok(false),
        }
    }
}

impl Connection for PcscConnection {
    fn exchange(
        &mut self,
        exchange: &mut dyn FnMut(&mut dyn Transport) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let extended = self.extended;
        let card = self.card.as_mut().ok_or(Error::DeviceRemoved)?;
        let transaction = card.transaction().map_err(|err| {
            tracing::debug!(error = %err, "cannot begin a transaction");
            if gone(err) {
                Error::DeviceRemoved
            } else {
                Error::DeviceError
            }
        })?;
        let mut transport = TransactionTransport {
            card: &transaction,
            extended,
            buffer: &mut self.buffer,
        };
        exchange(&mut transport)
        // The transaction ends here, leaving the card as it is.
    }
}

struct TransactionTransport<'a> {
    card: &'a pcsc::Card,
    extended: bool,
    buffer: &'a mut [u8],
}

impl Transport for TransactionTransport<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        match self.card.transmit(command, self.buffer) {
            Ok(answer) if answer.len() >= 2 => Ok(answer.to_vec()),
            Ok(_) => Err(TransportError::ShortResponse),
            Err(err) if gone(err) => Err(TransportError::Disconnected),
            Err(err) => Err(TransportError::Io(std::io::Error::other(err))),
        }
    }

    fn supports_extended_length(&self) -> bool {
        self.extended
    }
}

/// PC/SC errors after which the card's volatile state is lost: it was
/// removed, or reset by another application.
fn gone(err: pcsc::Error) -> bool {
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
