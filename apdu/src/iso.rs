//! Command and response APDUs (ISO/IEC 7816-3/-4) and the status words this card uses.

use alloc::vec::Vec;

/// Status words, as ISO/IEC 7816-4 defines them. Only the ones this card sends.
pub mod sw {
    /// Normal processing.
    pub const OK: u16 = 0x9000;
    /// `61xx`: more response bytes are waiting; fetch them with GET RESPONSE.
    pub const MORE_DATA: u16 = 0x6100;
    /// Verification failed (a signature or MAC in an authentication step).
    pub const AUTHENTICATION_FAILED: u16 = 0x6300;
    /// `63Cx`: VERIFY failed or is not done yet; `x` = tries left (0 to 15).
    pub const TRIES_LEFT: u16 = 0x63C0;
    /// Memory failure: the key memory could not commit.
    pub const MEMORY_FAILURE: u16 = 0x6581;
    /// Wrong length (the APDU matches no case, or Nc is outside what the command allows).
    pub const WRONG_LENGTH: u16 = 0x6700;
    /// Logical channels not supported (a non-zero channel in CLA).
    pub const CHANNEL_NOT_SUPPORTED: u16 = 0x6881;
    /// Secure messaging not supported (an SM class byte where none is allowed).
    pub const SM_NOT_SUPPORTED: u16 = 0x6882;
    /// The last command of a chain was expected.
    pub const LAST_COMMAND_EXPECTED: u16 = 0x6883;
    /// Security status not satisfied (a certificate failed verification, no
    /// channel, or the PIN is not verified).
    pub const SECURITY_STATUS: u16 = 0x6982;
    /// Authentication method blocked: the PIN's retry counter is 0, or the
    /// module gave its [`crate::proto::TAN_PROOF_LIMIT`] TAN proofs since the
    /// last completed personalization.
    pub const PIN_BLOCKED: u16 = 0x6983;
    /// The same status word under the name the TAN commands use.
    pub const AUTH_METHOD_BLOCKED: u16 = PIN_BLOCKED;
    /// Conditions of use not satisfied (command not allowed in this lifecycle state).
    pub const CONDITIONS: u16 = 0x6985;
    /// Secure messaging data objects incorrect: the channel is closed.
    pub const SM_INCORRECT: u16 = 0x6988;
    /// Incorrect parameters in the command data field (malformed TLV or DER).
    pub const WRONG_DATA: u16 = 0x6A80;
    /// Function not supported.
    pub const FUNC_NOT_SUPPORTED: u16 = 0x6A81;
    /// Application or file not found (SELECT of another AID).
    pub const NOT_FOUND: u16 = 0x6A82;
    /// Not enough memory space (chain buffer full).
    pub const NOT_ENOUGH_MEMORY: u16 = 0x6A84;
    /// Incorrect parameters P1-P2.
    pub const WRONG_P1P2: u16 = 0x6A86;
    /// Referenced data not found (GET DATA of an absent object, VERIFY without a PIN).
    pub const DATA_NOT_FOUND: u16 = 0x6A88;
    /// Instruction code not supported.
    pub const INS_NOT_SUPPORTED: u16 = 0x6D00;
    /// Class not supported.
    pub const CLA_NOT_SUPPORTED: u16 = 0x6E00;
    /// No precise diagnosis.
    pub const UNKNOWN: u16 = 0x6F00;
}

/// A parsed command APDU, borrowing its data field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    /// Class byte, as sent.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// The command data field (empty when Lc is absent).
    pub data: &'a [u8],
    /// Ne, the maximum response length the host accepts (0 when Le is absent).
    pub ne: usize,
}

impl<'a> Command<'a> {
    /// Parses a command APDU in any of the ISO 7816-3 cases, short or extended.
    ///
    /// Returns the status word to answer with when the bytes are not an APDU.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, u16> {
        let view = iso7816::command::CommandView::try_from(bytes).map_err(|err| match err {
            iso7816::command::FromSliceError::InvalidClass => sw::CLA_NOT_SUPPORTED,
            _ => sw::WRONG_LENGTH,
        })?;
        // CommandView has validated the header, so these four bytes exist.
        let header = bytes.get(..4).ok_or(sw::WRONG_LENGTH)?;
        Ok(Self {
            cla: header[0],
            ins: header[1],
            p1: view.p1,
            p2: view.p2,
            data: view.data(),
            ne: view.expected(),
        })
    }

    /// True when the class byte says "more commands of this chain follow".
    pub fn is_chained(&self) -> bool {
        self.cla & CLA_CHAIN != 0
    }

    /// The secure-messaging indication of the class byte (bits 4 and 3).
    pub fn secure_messaging(&self) -> bool {
        self.cla & CLA_SM_MASK == CLA_SM
    }
}

/// Class bit for command chaining.
pub const CLA_CHAIN: u8 = 0x10;
/// Class bits for "secure messaging, command header authenticated".
pub const CLA_SM: u8 = 0x0C;
/// Mask of the secure-messaging bits in an interindustry class byte.
pub const CLA_SM_MASK: u8 = 0x0C;

/// A response APDU: data field and status word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data field.
    pub data: Vec<u8>,
    /// SW1-SW2.
    pub sw: u16,
}

impl Response {
    /// A bare status word with no data.
    pub fn status(sw: u16) -> Self {
        Self {
            data: Vec::new(),
            sw,
        }
    }

    /// Data with `9000`.
    pub fn ok(data: Vec<u8>) -> Self {
        Self { data, sw: sw::OK }
    }

    /// Serializes as `data || SW1 SW2`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.to_be_bytes());
        out
    }

    /// Parses `data || SW1 SW2`; `None` when fewer than two bytes arrived.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let split = bytes.len().checked_sub(2)?;
        let (data, status) = bytes.split_at(split);
        Some(Self {
            data: data.to_vec(),
            sw: u16::from_be_bytes([status[0], status[1]]),
        })
    }
}
