//! Reading a module's public state: SELECT and GET DATA, no channel needed.

use super::personalize::SelectInfo;
use super::transport::{CardLink, Transport, TransportError};
use crate::iso::sw;
use crate::pki::{self, Certificate};
use crate::proto::{self, ins, tag};

/// A failure reading status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The module answered a command with an error status.
    #[error(transparent)]
    Status(#[from] super::Refused),
    /// A response that does not decode.
    #[error("malformed {0} from the module")]
    Malformed(&'static str),
}

/// A module's public state.
#[derive(Debug, Clone)]
pub struct ModuleStatus {
    /// What SELECT reported.
    pub info: SelectInfo,
    /// Module serial as hex, once known.
    pub serial: Option<String>,
    /// Identity certificate (claim 8).
    pub identity_cert: Option<Certificate>,
    /// Module certificate (claim 1).
    pub module_cert: Option<Certificate>,
    /// Unit certificate issued by the central system (claim 6).
    pub unit_cert: Option<Certificate>,
    /// The central anchor delivered by the unit (claims 4, 5).
    pub central_cert: Option<Certificate>,
}

/// Reads status and every public certificate.
pub fn read_status<T: Transport>(link: &mut CardLink<T>) -> Result<ModuleStatus, StatusError> {
    let response = link.send([0x00, ins::SELECT, 0x04, 0x00], &proto::AID)?;
    if response.sw != sw::OK {
        return Err(StatusError::Status(super::Refused {
            step: "SELECT",
            sw: response.sw,
        }));
    }
    let info = SelectInfo::parse(&response.data).ok_or(StatusError::Malformed("FCI"))?;
    let mut read = |object: u32, name: &'static str| -> Result<Option<Certificate>, StatusError> {
        let [p1, p2] = (object as u16).to_be_bytes();
        let response = link.send([0x00, ins::GET_DATA, p1, p2], &[])?;
        match response.sw {
            sw::OK => Certificate::from_der(&response.data)
                .map(Some)
                .map_err(|_| StatusError::Malformed(name)),
            sw::DATA_NOT_FOUND => Ok(None),
            other => Err(StatusError::Status(super::Refused {
                step: "GET DATA",
                sw: other,
            })),
        }
    };
    Ok(ModuleStatus {
        serial: info.serial.map(|s| pki::serial_hex(&s)),
        identity_cert: read(tag::IDENTITY_CERT, "identity certificate")?,
        module_cert: read(tag::MODULE_CERT, "module certificate")?,
        unit_cert: read(tag::UNIT_CERT, "unit certificate")?,
        central_cert: read(tag::CENTRAL_CERT, "central certificate")?,
        info,
    })
}
