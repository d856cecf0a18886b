//! The host's side of the operating server: a relay between a module (any
//! [`Transport`]: in-process, PC/SC) and the central system over TCP.
//!
//! ```text
//!  module ◀──APDUs──▶ CardLink ◀── operate()/TransactionClient ──frames──▶ central system
//! ```
//!
//! The host holds no key: it forwards the central system's commands to the
//! module and the module's responses back, and asks the module to seal each
//! transaction message and to check each receipt.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use imprint_apdu::Lifecycle;
use imprint_apdu::host::personalize::SelectInfo;
use imprint_apdu::host::transport::{CardLink, Transport, TransportError};
use imprint_apdu::iso::sw;
use imprint_apdu::pki;
use imprint_apdu::proto::{self, ins};

use crate::operating::Receipt;
use crate::wire::{ErrorCode, Frame, Purpose, WireError, read_frame, write_frame};

/// How long the host waits for the central system before it gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A failure on the host's side of the operating server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Talking to the central system failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Talking to the module failed.
    #[error("talking to the module failed: {0}")]
    Transport(#[from] TransportError),
    /// The central system ended the conversation with an error.
    #[error("the central system refused ({code}): {reason}")]
    Central {
        /// Category.
        code: ErrorCode,
        /// Its reason.
        reason: String,
    },
    /// The central system sent a frame that does not fit the conversation.
    #[error("the central system sent an unexpected {0} frame")]
    Unexpected(&'static str),
    /// The module is not in OPERATING.
    #[error("the module is {0}, not OPERATING: personalize it first")]
    NotOperating(Lifecycle),
    /// SELECT did not find our applet, or found no serial.
    #[error(
        "the module does not answer SELECT of the Imprint applet with its serial (status {0:04X})"
    )]
    NotImprint(u16),
    /// The module refused a step the host asked of it.
    #[error("the module refused {step} with status {sw:04X}")]
    ModuleStatus {
        /// The step.
        step: &'static str,
        /// Its status word.
        sw: u16,
    },
    /// The module returned a receipt that does not decode.
    #[error("the module returned a malformed receipt")]
    BadReceipt,
    /// The central address does not resolve.
    #[error("cannot resolve the central system's address {0}")]
    Address(String),
}

/// Opens a TCP connection to the central system with `timeout` for connect,
/// reads and writes.
pub fn connect(address: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let addresses: Vec<_> = address
        .to_socket_addrs()
        .map_err(|_| ClientError::Address(address.to_owned()))?
        .collect();
    let mut last = None;
    for candidate in addresses {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(stream) => {
                stream
                    .set_read_timeout(Some(timeout))
                    .map_err(WireError::Io)?;
                stream
                    .set_write_timeout(Some(timeout))
                    .map_err(WireError::Io)?;
                stream.set_nodelay(true).map_err(WireError::Io)?;
                return Ok(stream);
            }
            Err(err) => last = Some(err),
        }
    }
    Err(match last {
        Some(err) => WireError::Io(err).into(),
        None => ClientError::Address(address.to_owned()),
    })
}

/// SELECT: the module's serial, and a check that it is OPERATING.
pub fn select_operating<T: Transport>(
    link: &mut CardLink<T>,
) -> Result<[u8; pki::SERIAL_LEN], ClientError> {
    let response = link.send([0x00, ins::SELECT, 0x04, 0x00], &proto::AID)?;
    let info = (response.sw == sw::OK)
        .then(|| SelectInfo::parse(&response.data))
        .flatten()
        .ok_or(ClientError::NotImprint(response.sw))?;
    let serial = info.serial.ok_or(ClientError::NotImprint(response.sw))?;
    if info.lifecycle != Lifecycle::Operating {
        return Err(ClientError::NotOperating(info.lifecycle));
    }
    Ok(serial)
}

/// Presents the user PIN, if the module has one and `pin` is given.
pub fn verify_pin<T: Transport>(link: &mut CardLink<T>, pin: &[u8]) -> Result<(), ClientError> {
    let response = link.send(
        [0x00, ins::VERIFY, proto::P1_VERIFY, proto::PIN_REF_USER],
        pin,
    )?;
    if response.sw == sw::OK {
        Ok(())
    } else {
        Err(ClientError::ModuleStatus {
            step: "the PIN",
            sw: response.sw,
        })
    }
}

/// Relays the central system's commands to the module until the central
/// system sends something else, which it returns (ERROR becomes an error).
pub fn relay<T: Transport>(
    link: &mut CardLink<T>,
    stream: &mut TcpStream,
) -> Result<Frame, ClientError> {
    loop {
        match read_frame(stream)? {
            Frame::Command { header, data } => {
                let response = link.send(header, &data)?;
                write_frame(
                    stream,
                    &Frame::Response {
                        data: response.data,
                        sw: response.sw,
                    },
                )?;
            }
            Frame::Error { code, reason } => return Err(ClientError::Central { code, reason }),
            other => return Ok(other),
        }
    }
}

/// What the operating channel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperateReport {
    /// The module serial (16 hex digits).
    pub serial: String,
    /// The key set the central system installed.
    pub key_set_id: [u8; 16],
    /// Its expiry (Unix seconds).
    pub expires: u64,
    /// Logical commands sent to the module, SELECT included.
    pub commands: u32,
}

/// Runs the operating channel (claims 1, 4, 11) between the module behind
/// `link` and the central system on `stream`: the central system
/// authenticates the module, the module the central system, and the central
/// system installs a fresh transaction key set.
pub fn operate<T: Transport>(
    link: &mut CardLink<T>,
    stream: &mut TcpStream,
) -> Result<OperateReport, ClientError> {
    let before = link.command_count();
    let serial = select_operating(link)?;
    write_frame(
        stream,
        &Frame::Hello {
            purpose: Purpose::Operate,
            serial,
        },
    )?;
    match relay(link, stream)? {
        Frame::Done {
            key_set_id,
            expires,
        } => Ok(OperateReport {
            serial: pki::serial_hex(&serial),
            key_set_id,
            expires,
            commands: link.command_count() - before,
        }),
        other => Err(ClientError::Unexpected(other.name())),
    }
}

/// An open transaction session, driven by the host.
pub struct TransactionClient<'a, T: Transport> {
    link: &'a mut CardLink<T>,
    stream: &'a mut TcpStream,
    serial: [u8; pki::SERIAL_LEN],
}

impl<'a, T: Transport> TransactionClient<'a, T> {
    /// Selects the module, presents `pin` if given, and opens a transaction
    /// session with the central system.
    pub fn open(
        link: &'a mut CardLink<T>,
        stream: &'a mut TcpStream,
        pin: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let serial = select_operating(link)?;
        if let Some(pin) = pin {
            verify_pin(link, pin)?;
        }
        write_frame(
            stream,
            &Frame::Hello {
                purpose: Purpose::Transact,
                serial,
            },
        )?;
        match relay(link, stream)? {
            Frame::Ready => Ok(Self {
                link,
                stream,
                serial,
            }),
            other => Err(ClientError::Unexpected(other.name())),
        }
    }

    /// The module's serial.
    pub fn serial(&self) -> String {
        pki::serial_hex(&self.serial)
    }

    /// One transaction: the module seals `payload`, the central system
    /// journals it and answers with a receipt, the module checks the receipt.
    pub fn transact(&mut self, payload: &[u8]) -> Result<Receipt, ClientError> {
        let sealed = self.module_step(proto::PSO_ENCIPHER, payload, "the transaction message")?;
        write_frame(self.stream, &Frame::Message(sealed))?;
        let receipt = match read_frame(self.stream)? {
            Frame::Receipt(sealed) => sealed,
            Frame::Error { code, reason } => return Err(ClientError::Central { code, reason }),
            other => return Err(ClientError::Unexpected(other.name())),
        };
        let plain = self.module_step(proto::PSO_DECIPHER, &receipt, "the receipt")?;
        Receipt::decode(&plain).ok_or(ClientError::BadReceipt)
    }

    fn module_step(
        &mut self,
        p1p2: u16,
        data: &[u8],
        step: &'static str,
    ) -> Result<Vec<u8>, ClientError> {
        let [p1, p2] = p1p2.to_be_bytes();
        let response = self.link.send([0x00, ins::PSO, p1, p2], data)?;
        if response.sw != sw::OK {
            return Err(ClientError::ModuleStatus {
                step,
                sw: response.sw,
            });
        }
        Ok(response.data)
    }

    /// Ends the session.
    pub fn close(self) -> Result<(), ClientError> {
        write_frame(self.stream, &Frame::Close)?;
        Ok(())
    }
}
