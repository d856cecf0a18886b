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
//! The APDUs and the sealed messages are end to end between the central
//! system and the module; nothing in a frame is secret from the host, and
//! nothing the host changes goes unnoticed by either end.

use std::io::{self, Read, Write};

/// Version of the frame protocol, sent in HELLO.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest frame (type and body) either side accepts. A module's operating
/// handshake response (two certificates) is about 1.3 KiB; a transaction
/// message at most 4 KiB plus its tag.
pub const MAX_FRAME: usize = 16 * 1024;

/// Module serial length on the wire.
pub const SERIAL_LEN: usize = 8;

/// What the host wants from the central system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Run the operating channel: authenticate both ways and install a fresh
    /// transaction key set (claims 1, 4, 11).
    Operate,
    /// Open a transaction session on the installed key set.
    Transact,
}

impl Purpose {
    fn code(self) -> u8 {
        match self {
            Self::Operate => 1,
            Self::Transact => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Operate),
            2 => Some(Self::Transact),
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
    /// Central → host: the conversation failed; the connection closes.
    Error {
        /// Category.
        code: ErrorCode,
        /// Human-readable reason, never secret.
        reason: String,
    },
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
