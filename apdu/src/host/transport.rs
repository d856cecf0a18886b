//! Moving APDUs: the [`Transport`] trait, the in-process transport, and
//! [`CardLink`], which adds extended length or command chaining and GET
//! RESPONSE on top of any transport.

use std::time::{Duration, Instant};

use crate::Applet;
use crate::iso::{CLA_CHAIN, Response, sw};
use crate::keymem::KeyMemory;
use crate::proto::ins;

/// A failure to move bytes to or from the module.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The card was removed, powered off, or the connection dropped.
    #[error("the module disconnected")]
    Disconnected,
    /// The response was shorter than a status word.
    #[error("the module sent a response shorter than a status word")]
    ShortResponse,
    /// The command or response does not fit this transport's limits.
    #[error("APDU of {0} bytes does not fit the transport")]
    TooLarge(usize),
    /// An I/O error below the transport.
    #[error("transport i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The module accepted a direct connection (claim 15) but this transport
    /// cannot move onto one.
    #[error("this transport cannot move onto a direct connection to the module")]
    DirectUnsupported,
    /// The module accepted a direct connection (claim 15) but never opened it.
    #[error("the module did not open the direct connection it accepted (in {0:?})")]
    DirectNotOpened(Duration),
}

/// Moves one command APDU to the module and returns the response APDU bytes.
pub trait Transport {
    /// Sends `command` and waits for the response (`data || SW1 SW2`).
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError>;

    /// Whether the reader and card accept extended-length APDUs.
    fn supports_extended_length(&self) -> bool {
        true
    }

    /// Claim 15: the module accepted the unit's direct-connection offer;
    /// from now on carry commands over the connection the module opens
    /// instead of this one. Only the unit's network transport can.
    fn switch_to_direct(&mut self) -> Result<(), TransportError> {
        Err(TransportError::DirectUnsupported)
    }

    /// Whether the module's input unit takes the TAN itself, so that
    /// [`Transport::verify_at_pin_pad`] can be used: a reader's PIN pad (PC/SC
    /// secure PIN entry), or a relay whose user types it (claims 13 and 14).
    /// Default: no.
    fn has_pin_pad(&mut self) -> Result<bool, TransportError> {
        Ok(false)
    }

    /// Secure PIN entry: the reader sends the VERIFY `header` with reference
    /// data of exactly `digits` ASCII digits that the user types on the
    /// reader's own PIN pad, so the host never holds them. Returns the
    /// response (`SW1 SW2`), which may be the reader's own status (`64xx`
    /// for a timeout or cancel). Default: no PIN pad.
    fn verify_at_pin_pad(
        &mut self,
        header: [u8; 4],
        digits: u8,
    ) -> Result<Vec<u8>, TransportError> {
        let _ = (header, digits);
        Err(TransportError::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this transport has no PIN pad",
        )))
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).transmit(command)
    }
    fn supports_extended_length(&self) -> bool {
        (**self).supports_extended_length()
    }
    fn switch_to_direct(&mut self) -> Result<(), TransportError> {
        (**self).switch_to_direct()
    }

    fn has_pin_pad(&mut self) -> Result<bool, TransportError> {
        (**self).has_pin_pad()
    }
    fn verify_at_pin_pad(
        &mut self,
        header: [u8; 4],
        digits: u8,
    ) -> Result<Vec<u8>, TransportError> {
        (**self).verify_at_pin_pad(header, digits)
    }
}

/// The applet running in this process, reached by function call.
pub struct InProcessTransport<K: KeyMemory> {
    applet: Applet<K>,
    extended_length: bool,
}

impl<K: KeyMemory> InProcessTransport<K> {
    /// Wraps an applet.
    pub fn new(applet: Applet<K>) -> Self {
        Self {
            applet,
            extended_length: true,
        }
    }

    /// Behaves like a reader without extended length (forces chaining and GET RESPONSE).
    pub fn short_apdus_only(mut self) -> Self {
        self.extended_length = false;
        self
    }

    /// The applet, for inspection.
    pub fn applet(&self) -> &Applet<K> {
        &self.applet
    }

    /// The applet, mutably (tests reset it to simulate power loss).
    pub fn applet_mut(&mut self) -> &mut Applet<K> {
        &mut self.applet
    }

    /// Gives the applet back.
    pub fn into_applet(self) -> Applet<K> {
        self.applet
    }
}

impl<K: KeyMemory> Transport for InProcessTransport<K> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        if !self.extended_length && command.len() > 261 {
            return Err(TransportError::TooLarge(command.len()));
        }
        Ok(self.applet.process(command))
    }

    fn supports_extended_length(&self) -> bool {
        self.extended_length
    }
}

/// Sends logical commands over a [`Transport`]: one extended APDU when the
/// transport allows, command chaining in 255-byte pieces otherwise; fetches
/// `61xx` remainders with GET RESPONSE. Counts APDUs and time on the wire.
pub struct CardLink<T: Transport> {
    transport: T,
    apdus: u32,
    commands: u32,
    wire_time: Duration,
}

impl<T: Transport> CardLink<T> {
    /// Wraps a transport.
    pub fn new(transport: T) -> Self {
        Self {
            transport,
            apdus: 0,
            commands: 0,
            wire_time: Duration::ZERO,
        }
    }

    /// APDUs exchanged so far (each chained piece and GET RESPONSE counts).
    pub fn apdu_count(&self) -> u32 {
        self.apdus
    }

    /// Logical commands sent so far (each [`CardLink::send`], however many
    /// APDUs chaining and GET RESPONSE made of it).
    pub fn command_count(&self) -> u32 {
        self.commands
    }

    /// Time spent inside [`Transport::transmit`].
    pub fn wire_time(&self) -> Duration {
        self.wire_time
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Gives the transport back.
    pub fn into_transport(self) -> T {
        self.transport
    }

    fn transmit(&mut self, apdu: &[u8]) -> Result<Response, TransportError> {
        let started = Instant::now();
        let bytes = self.transport.transmit(apdu);
        self.wire_time += started.elapsed();
        self.apdus = self.apdus.saturating_add(1);
        Response::from_bytes(&bytes?).ok_or(TransportError::ShortResponse)
    }

    /// Sends a VERIFY whose reference data the user types at the reader's
    /// PIN pad ([`Transport::verify_at_pin_pad`]): one command, one APDU.
    /// The user's typing is not counted as wire time.
    pub fn verify_at_pin_pad(
        &mut self,
        header: [u8; 4],
        digits: u8,
    ) -> Result<Response, TransportError> {
        self.commands = self.commands.saturating_add(1);
        self.apdus = self.apdus.saturating_add(1);
        let bytes = self.transport.verify_at_pin_pad(header, digits)?;
        Response::from_bytes(&bytes).ok_or(TransportError::ShortResponse)
    }

    /// Sends one logical command and returns the complete response.
    pub fn send(&mut self, header: [u8; 4], data: &[u8]) -> Result<Response, TransportError> {
        if data.len() > usize::from(u16::MAX) {
            return Err(TransportError::TooLarge(data.len()));
        }
        self.commands = self.commands.saturating_add(1);
        let mut response = if self.transport.supports_extended_length() {
            self.transmit(&encode_extended(header, data))?
        } else {
            let mut pieces = data.chunks(255).peekable();
            if pieces.peek().is_none() {
                self.transmit(&encode_short(header, &[], true))?
            } else {
                loop {
                    let Some(piece) = pieces.next() else {
                        return Err(TransportError::ShortResponse);
                    };
                    let last = pieces.peek().is_none();
                    let mut piece_header = header;
                    if !last {
                        piece_header[0] |= CLA_CHAIN;
                    }
                    let response = self.transmit(&encode_short(piece_header, piece, last))?;
                    if last || response.sw != sw::OK {
                        break response;
                    }
                }
            }
        };
        let mut data = std::mem::take(&mut response.data);
        while response.sw & 0xFF00 == sw::MORE_DATA {
            // A card or relay that keeps answering 61xx must not make the
            // host loop or grow without bound: no response exceeds 65536 bytes.
            if data.len() > MAX_RESPONSE_DATA {
                return Err(TransportError::TooLarge(data.len()));
            }
            let le = (response.sw & 0xFF) as u8;
            response = self.transmit(&[0x00, ins::GET_RESPONSE, 0x00, 0x00, le])?;
            data.extend_from_slice(&response.data);
        }
        if data.len() > MAX_RESPONSE_DATA {
            return Err(TransportError::TooLarge(data.len()));
        }
        Ok(Response {
            data,
            sw: response.sw,
        })
    }
}

/// The largest response data field an APDU exchange can carry (extended Le = 0000).
pub const MAX_RESPONSE_DATA: usize = 65_536;

/// Extended-length encoding with Le = 0000 (up to 65536 response bytes).
pub fn encode_extended(header: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut apdu = Vec::with_capacity(data.len() + 9);
    apdu.extend_from_slice(&header);
    if data.is_empty() {
        apdu.extend_from_slice(&[0, 0, 0]);
    } else {
        let lc = u16::try_from(data.len()).unwrap_or(u16::MAX);
        apdu.push(0);
        apdu.extend_from_slice(&lc.to_be_bytes());
        apdu.extend_from_slice(data);
        apdu.extend_from_slice(&[0, 0]);
    }
    apdu
}

/// Short encoding; `expect_response` adds Le = 00 (256 bytes).
pub fn encode_short(header: [u8; 4], data: &[u8], expect_response: bool) -> Vec<u8> {
    let mut apdu = Vec::with_capacity(data.len() + 6);
    apdu.extend_from_slice(&header);
    if !data.is_empty() {
        apdu.push(data.len() as u8);
        apdu.extend_from_slice(data);
    }
    if expect_response {
        apdu.push(0);
    }
    apdu
}

#[cfg(test)]
mod tests;
