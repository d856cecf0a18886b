//! The manufacturer's flow (claim 8): the module forms its identity key once,
//! the manufacturer certifies it, and the module stores that certificate with
//! the manufacturer's checking certificate.
//!
//! APDUs (3): SELECT, GENERATE ASYMMETRIC KEY PAIR (identity), PUT DATA.
//! Runs in the factory, in plain: nothing secret crosses.

use super::credentials::ManufacturerCredentials;
use super::personalize::{SelectInfo, unix_now};
use super::transport::{CardLink, Transport, TransportError};
use crate::channel::parse_point;
use crate::iso::sw;
use crate::pki::issue::{self, IssueError, IssuerKey, Validity};
use crate::pki::{self, Certificate};
use crate::proto::{self, Lifecycle, ins, tag};
use crate::tlv;

/// A manufacturing failure.
#[derive(Debug, thiserror::Error)]
pub enum ManufactureError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The module answered a command with an error status.
    #[error(transparent)]
    Status(#[from] super::Refused),
    /// The module is past manufacture.
    #[error("module is already manufactured (state {0}); its identity key is permanent")]
    AlreadyManufactured(Lifecycle),
    /// A response that does not decode.
    #[error("malformed response to {0}")]
    Malformed(&'static str),
    /// Issuing the identity certificate failed.
    #[error("issuing the identity certificate failed: {0}")]
    Issue(#[from] IssueError),
}

/// The outcome of manufacturing one module.
#[derive(Debug, Clone)]
pub struct ManufactureReport {
    /// The module serial.
    pub serial: String,
    /// Its identity certificate.
    pub identity_cert: Certificate,
    /// APDUs exchanged.
    pub apdus: u32,
}

/// Manufactures the module on `link`. If an earlier run formed the identity key
/// but stopped before storing the certificate, the existing key is certified
/// (the identity key is never formed twice).
pub fn manufacture<T: Transport>(
    link: &mut CardLink<T>,
    manufacturer: &ManufacturerCredentials,
    validity_years: u32,
) -> Result<ManufactureReport, ManufactureError> {
    let before = link.apdu_count();
    let response = link.send([0x00, ins::SELECT, 0x04, 0x00], &proto::AID)?;
    if response.sw != sw::OK {
        return Err(ManufactureError::Status(super::Refused {
            step: "SELECT",
            sw: response.sw,
        }));
    }
    let info = SelectInfo::parse(&response.data).ok_or(ManufactureError::Malformed("SELECT"))?;
    if info.lifecycle != Lifecycle::Manufactured {
        return Err(ManufactureError::AlreadyManufactured(info.lifecycle));
    }
    let (step, response) = if info.serial.is_some() {
        let [p1, p2] = (tag::IDENTITY_PUBLIC_KEY as u16).to_be_bytes();
        (
            "GET DATA (identity key)",
            link.send([0x00, ins::GET_DATA, p1, p2], &[])?,
        )
    } else {
        (
            "GENERATE ASYMMETRIC KEY PAIR (identity)",
            link.send(
                [
                    0x00,
                    ins::GENERATE_KEY,
                    proto::P1_GENERATE,
                    proto::KEY_REF_IDENTITY,
                ],
                &[],
            )?,
        )
    };
    if response.sw != sw::OK {
        return Err(ManufactureError::Status(super::Refused {
            step,
            sw: response.sw,
        }));
    }
    let point = tlv::decode_single(&response.data, tag::PUBLIC_KEY)
        .and_then(|template| tlv::decode_single(template, tag::EC_POINT))
        .map_err(|_| ManufactureError::Malformed(step))?;
    parse_point(point).map_err(|_| ManufactureError::Malformed(step))?;

    let now = unix_now();
    let validity = Validity {
        not_before_unix: now
            .saturating_sub(60)
            .max(manufacturer.root.not_before_unix()),
        not_after_unix: now
            .saturating_add(u64::from(validity_years) * 365 * 24 * 3600)
            .min(manufacturer.root.not_after_unix()),
    };
    let identity_cert = issue::identity_cert(
        IssuerKey {
            cert: &manufacturer.root,
            key: &manufacturer.key,
        },
        point,
        validity,
    )?;
    let mut data = Vec::with_capacity(2048);
    tlv::write(&mut data, tag::CHECKING_CERT, manufacturer.root.der());
    tlv::write(&mut data, tag::IDENTITY_CERT, identity_cert.der());
    let [p1, p2] = proto::PUT_DATA_TLV.to_be_bytes();
    let response = link.send([0x00, ins::PUT_DATA, p1, p2], &data)?;
    if response.sw != sw::OK {
        return Err(ManufactureError::Status(super::Refused {
            step: "PUT DATA (identity certificate)",
            sw: response.sw,
        }));
    }
    let serial = pki::serial_hex(&pki::serial_from_public_key(point));
    Ok(ManufactureReport {
        serial,
        identity_cert,
        apdus: link.apdu_count() - before,
    })
}
