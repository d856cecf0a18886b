//! The frames between a host and the central system's operating server.
//!
//! ```text
//!  frame = length (u32, big-endian, 1..=MAX_FRAME) ‖ type (u8) ‖ body
//!
//!  host                                   central system
//!   | HELLO (version, purpose, serial) ───▶ |
//!   | ◀─────────── COMMAND (header, data)   |   the central system drives the module:
//!   | RESPONSE (data, SW) ───────────────▶  |   the host only relays APDUs
//!   |            …                          |
//!   | ◀──── DONE (key set id, expiry)       |   operate: key set installed
//!   | ◀──── READY                           |   transact: session open, then
//!   | MESSAGE (sealed by the module) ────▶  |     one RECEIPT (sealed for the
//!   | ◀──── RECEIPT                         |     module) per MESSAGE
//!   | CLOSE ─────────────────────────────▶  |
//!   | ◀──── ERROR (code, reason)            |   at any point, then the connection closes
//! ```
//!
//! The same frames carry remote personalization (claim 14), between a relay
//! (the mobile appliance, holding the module) and a personalization unit:
//!
//! ```text
//!  relay                                  personalization unit
//!   | HELLO (version, personalize, serial) ─▶ |
//!   | ◀── RELAY CHALLENGE (challenge, SHA-384(unit certificate by manufacturer))
//!   | RELAY AUTH (relay public key, signature) ─▶ |  signature over relay_auth_digest()
//!   | ◀─────────── COMMAND / RESPONSE ──────▶ |  the personalization channel, end to end
//!   | ◀──── PERSONALIZED (journal id, module certificate) or ERROR
//! ```
//!
//! With a direct connection (claim 15), the unit hands the module an address
//! and a ticket inside the channel; the module's runtime connects on its own:
//!
//! ```text
//!  relay            personalization unit                 module runtime
//!   | ◀── COMMAND (sealed PUT DATA DF2B: address, ticket) ─ … ─▶ held
//!   | ◀── HANDED OVER       |                                 |
//!   |   (idle, card held)   | ◀──────── DIRECT (ticket) ───── |  new connection
//!   |                       | ◀──── COMMAND / RESPONSE ─────▶ |  same channel
//!   | ◀── PERSONALIZED      | ──── PERSONALIZED or ERROR ───▶ |
//! ```
//!
//! The APDUs and the sealed messages are end to end between the central
//! system and the module; nothing in a frame is secret from the host, and
//! nothing the host changes goes unnoticed by either end.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha384};

/// Version of the frame protocol, sent in HELLO.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest frame (type and body) either side accepts. A module's operating
/// handshake response (two certificates) is about 1.3 KiB; a transaction
/// message at most 4 KiB plus its tag.
pub const MAX_FRAME: usize = 16 * 1024;

/// Module serial length on the wire.
pub const SERIAL_LEN: usize = 8;

/// Length of the unit's challenge to a relay.
pub const RELAY_CHALLENGE_LEN: usize = 32;

/// Length of a direct-connection ticket (claim 15): 16 bytes of id, 32 of secret.
pub const DIRECT_TICKET_LEN: usize = 48;

/// Length of a relay's public key on the wire (uncompressed SEC1 P-384).
pub const RELAY_PUBLIC_KEY_LEN: usize = 97;

/// Length of a relay's signature on the wire (`r ‖ s`).
pub const RELAY_SIGNATURE_LEN: usize = 96;

/// Domain label of the relay's signature, so it cannot be taken for any other
/// signature of the system.
pub const RELAY_AUTH_LABEL: &[u8] = b"imprint v1 relay";

/// What a relay signs to authenticate to a personalization unit:
/// `SHA-384("imprint v1 relay" ‖ challenge ‖ serial ‖ unit_certificate_hash)`.
///
/// The unit's fresh challenge stops replay in time, the module serial stops a
/// signature being used to present another module, and the hash of the unit's
/// certificate stops it being forwarded to another unit.
pub fn relay_auth_digest(
    challenge: &[u8; RELAY_CHALLENGE_LEN],
    serial: &[u8; SERIAL_LEN],
    unit_certificate_hash: &[u8; 48],
) -> [u8; 48] {
    let mut hash = Sha384::new();
    hash.update(RELAY_AUTH_LABEL);
    hash.update(challenge);
    hash.update(serial);
    hash.update(unit_certificate_hash);
    hash.finalize().into()
}

/// What the host wants from the central system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Run the operating channel: authenticate both ways and install a fresh
    /// transaction key set (claims 1, 4, 11).
    Operate,
    /// Open a transaction session on the installed key set.
    Transact,
    /// Personalize the module through a relay (claim 14): spoken to a
    /// personalization unit's `imprint personalizer serve`, not to the
    /// central system.
    Personalize,
}

impl Purpose {
    fn code(self) -> u8 {
        match self {
            Self::Operate => 1,
            Self::Transact => 2,
            Self::Personalize => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Operate),
            2 => Some(Self::Transact),
            3 => Some(Self::Personalize),
            _ => None,
        }
    }
}

/// Why the central system ended a conversation (ERROR frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A frame did not decode, was too large, or came out of order.
    Malformed,
    /// Authentication or the registry refused (unknown unit, revoked, replay, …).
    Refused,
    /// The module answered a command with an error status word.
    ModuleError,
    /// The peer was too slow or idle too long.
    Timeout,
    /// The server is at its connection limit.
    Busy,
    /// The central system failed internally (registry, key).
    Internal,
}

impl ErrorCode {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Malformed => 1,
            Self::Refused => 2,
            Self::ModuleError => 3,
            Self::Timeout => 4,
            Self::Busy => 5,
            Self::Internal => 6,
        }
    }

    /// Decodes [`ErrorCode::code`].
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => Self::Malformed,
            2 => Self::Refused,
            3 => Self::ModuleError,
            4 => Self::Timeout,
            5 => Self::Busy,
            6 => Self::Internal,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed",
            Self::Refused => "refused",
            Self::ModuleError => "module error",
            Self::Timeout => "timeout",
            Self::Busy => "busy",
            Self::Internal => "internal error",
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Host → central: the first frame.
    Hello {
        /// What the host wants.
        purpose: Purpose,
        /// The module's serial as SELECT reported it.
        serial: [u8; SERIAL_LEN],
    },
    /// Central → host: send this command to the module.
    Command {
        /// CLA INS P1 P2.
        header: [u8; 4],
        /// The command data field.
        data: Vec<u8>,
    },
    /// Host → central: the module's complete response.
    Response {
        /// Response data.
        data: Vec<u8>,
        /// Status word.
        sw: u16,
    },
    /// Central → host: the transaction session is open.
    Ready,
    /// Host → central: a transaction message sealed by the module.
    Message(Vec<u8>),
    /// Central → host: the receipt for the last message, sealed for the module.
    Receipt(Vec<u8>),
    /// Central → host: the operating channel installed a key set.
    Done {
        /// The key set's identifier.
        key_set_id: [u8; 16],
        /// End of its lifetime (Unix seconds).
        expires: u64,
    },
    /// Host → central: end of the transaction session.
    Close,
    /// Unit → relay: prove who you are (remote personalization, claim 14).
    RelayChallenge {
        /// Fresh random bytes from the unit.
        challenge: [u8; RELAY_CHALLENGE_LEN],
        /// SHA-384 of the unit's certificate by the manufacturer (DER), so the
        /// relay's signature names the unit it was made for.
        unit_certificate_hash: [u8; 48],
    },
    /// Relay → unit: the relay's answer to [`Frame::RelayChallenge`].
    RelayAuth {
        /// The relay's P-384 public key, uncompressed SEC1 (97 bytes).
        public_key: [u8; RELAY_PUBLIC_KEY_LEN],
        /// ECDSA P-384 signature `r ‖ s` (96 bytes) over [`relay_auth_digest`].
        signature: [u8; RELAY_SIGNATURE_LEN],
    },
    /// Unit → relay: the module committed its certificate; the run is over.
    Personalized {
        /// The unit's journal id of the certificate.
        journal_id: u64,
        /// The module certificate (DER), as journaled.
        certificate: Vec<u8>,
    },
    /// Unit → relay: have the user enter the TAN at the relay, the module's
    /// input unit (claim 13), and send it to the module locally as the
    /// VERIFY `header` (exactly `digits` digits). The relay answers RESPONSE
    /// with the module's status word; the TAN never reaches the unit.
    EnterTan {
        /// CLA INS P1 P2 of the VERIFY.
        header: [u8; 4],
        /// How many digits the TAN has.
        digits: u8,
    },
    /// Module → unit, the first frame of a direct connection (claim 15):
    /// the ticket the unit handed the module inside the channel.
    Direct(DirectTicket),
    /// Unit → relay: the module accepted a direct connection; the relay
    /// forwards nothing more and waits for the result (claim 15), at most
    /// this long.
    HandedOver {
        /// Seconds the relay may have to wait for PERSONALIZED or ERROR.
        wait_seconds: u32,
    },
    /// Central → host: the conversation failed; the connection closes.
    Error {
        /// Category.
        code: ErrorCode,
        /// Human-readable reason, never secret.
        reason: String,
    },
}

/// A direct-connection ticket on the wire. A bearer secret until the unit
/// has used it: never printed, compared in constant time, wiped when dropped.
#[derive(Clone)]
pub struct DirectTicket(pub [u8; DIRECT_TICKET_LEN]);

impl PartialEq for DirectTicket {
    fn eq(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

impl Eq for DirectTicket {}

impl std::fmt::Debug for DirectTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectTicket(<secret>)")
    }
}

impl Drop for DirectTicket {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// A frame that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is zero or above [`MAX_FRAME`].
    #[error("frame length {0} is outside 1..={MAX_FRAME}")]
    BadLength(usize),
    /// The type byte is unknown.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The body does not fit its type.
    #[error("malformed body of a {0} frame")]
    BadBody(&'static str),
    /// The HELLO names a protocol version this side does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
}

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const COMMAND: u8 = 0x02;
    pub const RESPONSE: u8 = 0x03;
    pub const READY: u8 = 0x04;
    pub const MESSAGE: u8 = 0x05;
    pub const RECEIPT: u8 = 0x06;
    pub const DONE: u8 = 0x07;
    pub const CLOSE: u8 = 0x08;
    pub const ERROR: u8 = 0x09;
    pub const RELAY_CHALLENGE: u8 = 0x0A;
    pub const RELAY_AUTH: u8 = 0x0B;
    pub const PERSONALIZED: u8 = 0x0C;
    pub const DIRECT: u8 = 0x0D;
    pub const HANDED_OVER: u8 = 0x0E;
    pub const ENTER_TAN: u8 = 0x0F;
}

impl Frame {
    /// The frame's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "HELLO",
            Self::Command { .. } => "COMMAND",
            Self::Response { .. } => "RESPONSE",
            Self::Ready => "READY",
            Self::Message(_) => "MESSAGE",
            Self::Receipt(_) => "RECEIPT",
            Self::Done { .. } => "DONE",
            Self::Close => "CLOSE",
            Self::Error { .. } => "ERROR",
            Self::RelayChallenge { .. } => "RELAY CHALLENGE",
            Self::RelayAuth { .. } => "RELAY AUTH",
            Self::Personalized { .. } => "PERSONALIZED",
            Self::EnterTan { .. } => "ENTER TAN",
            Self::Direct(_) => "DIRECT",
            Self::HandedOver { .. } => "HANDED OVER",
        }
    }

    /// Type byte and body (the frame without its length prefix).
    pub fn encode_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Hello { purpose, serial } => {
                out.extend_from_slice(&[kind::HELLO, PROTOCOL_VERSION, purpose.code()]);
                out.extend_from_slice(serial);
            }
            Self::Command { header, data } => {
                out.push(kind::COMMAND);
                out.extend_from_slice(header);
                out.extend_from_slice(data);
            }
            Self::Response { data, sw } => {
                out.push(kind::RESPONSE);
                out.extend_from_slice(data);
                out.extend_from_slice(&sw.to_be_bytes());
            }
            Self::Ready => out.push(kind::READY),
            Self::Message(sealed) => {
                out.push(kind::MESSAGE);
                out.extend_from_slice(sealed);
            }
            Self::Receipt(sealed) => {
                out.push(kind::RECEIPT);
                out.extend_from_slice(sealed);
            }
            Self::Done {
                key_set_id,
                expires,
            } => {
                out.push(kind::DONE);
                out.extend_from_slice(key_set_id);
                out.extend_from_slice(&expires.to_be_bytes());
            }
            Self::Close => out.push(kind::CLOSE),
            Self::RelayChallenge {
                challenge,
                unit_certificate_hash,
            } => {
                out.push(kind::RELAY_CHALLENGE);
                out.extend_from_slice(challenge);
                out.extend_from_slice(unit_certificate_hash);
            }
            Self::RelayAuth {
                public_key,
                signature,
            } => {
                out.push(kind::RELAY_AUTH);
                out.extend_from_slice(public_key);
                out.extend_from_slice(signature);
            }
            Self::Personalized {
                journal_id,
                certificate,
            } => {
                out.push(kind::PERSONALIZED);
                out.extend_from_slice(&journal_id.to_be_bytes());
                out.extend_from_slice(certificate);
            }
            Self::EnterTan { header, digits } => {
                out.push(kind::ENTER_TAN);
                out.extend_from_slice(header);
                out.push(*digits);
            }
            Self::Direct(ticket) => {
                out.push(kind::DIRECT);
                out.extend_from_slice(&ticket.0);
            }
            Self::HandedOver { wait_seconds } => {
                out.push(kind::HANDED_OVER);
                out.extend_from_slice(&wait_seconds.to_be_bytes());
            }
            Self::Error { code, reason } => {
                out.push(kind::ERROR);
                out.extend_from_slice(&code.code().to_be_bytes());
                // Keep an error frame within the limit whatever the reason says.
                let mut end = reason.len().min(1024);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&reason.as_bytes()[..end]);
            }
        }
        out
    }

    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let payload = self.encode_payload();
        let mut out = Vec::with_capacity(payload.len() + 4);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes a frame's type and body (after the length prefix).
    pub fn decode_payload(payload: &[u8]) -> Result<Self, FrameError> {
        let (&kind, body) = payload.split_first().ok_or(FrameError::BadLength(0))?;
        let empty = |frame: Frame, name| {
            if body.is_empty() {
                Ok(frame)
            } else {
                Err(FrameError::BadBody(name))
            }
        };
        match kind {
            kind::HELLO => match body {
                [PROTOCOL_VERSION, purpose, serial @ ..] => Ok(Self::Hello {
                    purpose: Purpose::from_code(*purpose).ok_or(FrameError::BadBody("HELLO"))?,
                    serial: serial
                        .try_into()
                        .map_err(|_| FrameError::BadBody("HELLO"))?,
                }),
                [version, ..] => Err(FrameError::UnsupportedVersion(*version)),
                [] => Err(FrameError::BadBody("HELLO")),
            },
            kind::COMMAND => {
                let (header, data) = body
                    .split_first_chunk::<4>()
                    .ok_or(FrameError::BadBody("COMMAND"))?;
                Ok(Self::Command {
                    header: *header,
                    data: data.to_vec(),
                })
            }
            kind::RESPONSE => {
                let (data, sw) = body
                    .split_last_chunk::<2>()
                    .ok_or(FrameError::BadBody("RESPONSE"))?;
                Ok(Self::Response {
                    data: data.to_vec(),
                    sw: u16::from_be_bytes(*sw),
                })
            }
            kind::READY => empty(Self::Ready, "READY"),
            kind::MESSAGE => Ok(Self::Message(body.to_vec())),
            kind::RECEIPT => Ok(Self::Receipt(body.to_vec())),
            kind::DONE => {
                let body: &[u8; 24] = body.try_into().map_err(|_| FrameError::BadBody("DONE"))?;
                let (id, expires) = body.split_at(16);
                Ok(Self::Done {
                    key_set_id: id.try_into().map_err(|_| FrameError::BadBody("DONE"))?,
                    expires: u64::from_be_bytes(
                        expires
                            .try_into()
                            .map_err(|_| FrameError::BadBody("DONE"))?,
                    ),
                })
            }
            kind::CLOSE => empty(Self::Close, "CLOSE"),
            kind::RELAY_CHALLENGE => {
                let body: &[u8; RELAY_CHALLENGE_LEN + 48] = body
                    .try_into()
                    .map_err(|_| FrameError::BadBody("RELAY CHALLENGE"))?;
                let (challenge, hash) = body.split_at(RELAY_CHALLENGE_LEN);
                Ok(Self::RelayChallenge {
                    challenge: challenge
                        .try_into()
                        .map_err(|_| FrameError::BadBody("RELAY CHALLENGE"))?,
                    unit_certificate_hash: hash
                        .try_into()
                        .map_err(|_| FrameError::BadBody("RELAY CHALLENGE"))?,
                })
            }
            kind::RELAY_AUTH => {
                let body: &[u8; RELAY_PUBLIC_KEY_LEN + RELAY_SIGNATURE_LEN] = body
                    .try_into()
                    .map_err(|_| FrameError::BadBody("RELAY AUTH"))?;
                let (public_key, signature) = body.split_at(RELAY_PUBLIC_KEY_LEN);
                Ok(Self::RelayAuth {
                    public_key: public_key
                        .try_into()
                        .map_err(|_| FrameError::BadBody("RELAY AUTH"))?,
                    signature: signature
                        .try_into()
                        .map_err(|_| FrameError::BadBody("RELAY AUTH"))?,
                })
            }
            kind::PERSONALIZED => {
                let (id, certificate) = body
                    .split_first_chunk::<8>()
                    .ok_or(FrameError::BadBody("PERSONALIZED"))?;
                if certificate.is_empty() {
                    return Err(FrameError::BadBody("PERSONALIZED"));
                }
                Ok(Self::Personalized {
                    journal_id: u64::from_be_bytes(*id),
                    certificate: certificate.to_vec(),
                })
            }
            kind::ENTER_TAN => {
                let [a, b, c, d, digits]: [u8; 5] = body
                    .try_into()
                    .map_err(|_| FrameError::BadBody("ENTER TAN"))?;
                Ok(Self::EnterTan {
                    header: [a, b, c, d],
                    digits,
                })
            }
            kind::DIRECT => Ok(Self::Direct(DirectTicket(
                body.try_into().map_err(|_| FrameError::BadBody("DIRECT"))?,
            ))),
            kind::HANDED_OVER => Ok(Self::HandedOver {
                wait_seconds: u32::from_be_bytes(
                    body.try_into()
                        .map_err(|_| FrameError::BadBody("HANDED OVER"))?,
                ),
            }),
            kind::ERROR => {
                let (code, reason) = body
                    .split_first_chunk::<2>()
                    .ok_or(FrameError::BadBody("ERROR"))?;
                Ok(Self::Error {
                    code: ErrorCode::from_code(u16::from_be_bytes(*code))
                        .ok_or(FrameError::BadBody("ERROR"))?,
                    reason: String::from_utf8_lossy(reason).into_owned(),
                })
            }
            other => Err(FrameError::UnknownType(other)),
        }
    }

    /// Checks a length prefix.
    pub fn check_length(prefix: [u8; 4]) -> Result<usize, FrameError> {
        let length = u32::from_be_bytes(prefix) as usize;
        if length == 0 || length > MAX_FRAME {
            return Err(FrameError::BadLength(length));
        }
        Ok(length)
    }
}

/// A failure to exchange frames over a blocking stream.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or timed out.
    #[error("connection to the central system failed: {0}")]
    Io(#[from] io::Error),
    /// The peer sent a frame that does not decode.
    #[error("the central system sent a malformed frame: {0}")]
    Frame(#[from] FrameError),
}

/// Writes one frame to a blocking stream.
pub fn write_frame(stream: &mut impl Write, frame: &Frame) -> Result<(), WireError> {
    stream.write_all(&frame.encode())?;
    stream.flush()?;
    Ok(())
}

/// Reads one frame from a blocking stream.
pub fn read_frame(stream: &mut impl Read) -> Result<Frame, WireError> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let length = Frame::check_length(prefix)?;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload)?;
    Ok(Frame::decode_payload(&payload)?)
}

#[cfg(test)]
mod tests;
