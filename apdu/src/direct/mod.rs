//! The direct-connection offer (claim 15): what the personalization unit
//! hands the module, inside the end-to-end channel a relay set up, so that
//! the rest of the personalization runs over the module's own network
//! connection to the unit instead of through the relay.
//!
//! ```text
//!  unit ──secured PUT DATA 0C DA DF 2B { 80 address, 81 ticket }──▶ applet
//!                                                   │ held in volatile memory
//!  module runtime ◀── Applet::take_direct_connection┘
//!        └── TCP to `address`, DIRECT(ticket) ──▶ unit: same channel, same counters
//! ```
//!
//! The offer travels encrypted and authenticated under the channel's secure
//! messaging, so the relay can neither read the ticket nor redirect the
//! module. The direct connection needs no protection of its own: every later
//! command on it is under the same channel.

use alloc::string::String;
use alloc::vec::Vec;

use zeroize::Zeroizing;

use crate::proto::{len, tag};
use crate::tlv::{self, TlvError};

/// A direct connection the unit offered: where to connect, and the ticket
/// that ties the new connection to the waiting personalization.
#[derive(Clone)]
pub struct DirectConnection {
    /// The unit's address, `host:port` (UTF-8, 1 to 255 bytes).
    pub address: String,
    /// The one-time ticket: [`len::DIRECT_TICKET_ID`] bytes of id, then
    /// [`len::DIRECT_TICKET_SECRET`] bytes of secret. Wiped when dropped.
    pub ticket: Zeroizing<[u8; len::DIRECT_TICKET]>,
}

/// Why an offer's data field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectOfferError {
    /// The data objects are malformed, missing or of the wrong length.
    #[error("malformed direct-connection offer: {0}")]
    Tlv(#[from] TlvError),
    /// The address is empty, longer than 255 bytes, or not UTF-8.
    #[error("the direct-connection address must be 1 to 255 bytes of UTF-8")]
    Address,
}

impl DirectConnection {
    /// The id part of the ticket (not secret: the unit looks the run up by it).
    pub fn ticket_id(&self) -> [u8; len::DIRECT_TICKET_ID] {
        let mut id = [0u8; len::DIRECT_TICKET_ID];
        id.copy_from_slice(&self.ticket[..len::DIRECT_TICKET_ID]);
        id
    }

    /// The value of the PUT DATA `DF2B` data field: `80 address ‖ 81 ticket`.
    /// Wiped when dropped: it carries the ticket.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            self.address.len() + len::DIRECT_TICKET + 6,
        ));
        tlv::write(&mut out, tag::DIRECT_ADDRESS, self.address.as_bytes());
        tlv::write(&mut out, tag::DIRECT_TICKET, &self.ticket[..]);
        out
    }

    /// Parses the PUT DATA `DF2B` data field strictly: both objects, once
    /// each, nothing else, the ticket exactly 48 bytes.
    pub fn parse(data: &[u8]) -> Result<Self, DirectOfferError> {
        let [address, ticket] =
            tlv::decode_fields(data, [tag::DIRECT_ADDRESS, tag::DIRECT_TICKET])?;
        let address = tlv::required(address, tag::DIRECT_ADDRESS)?;
        if address.is_empty() || address.len() > len::DIRECT_ADDRESS_MAX {
            return Err(DirectOfferError::Address);
        }
        let address = core::str::from_utf8(address).map_err(|_| DirectOfferError::Address)?;
        let ticket = Zeroizing::new(tlv::required_array(ticket, tag::DIRECT_TICKET)?);
        Ok(Self {
            address: String::from(address),
            ticket,
        })
    }
}

/// The ticket is a bearer secret: compared in constant time.
impl PartialEq for DirectConnection {
    fn eq(&self, other: &Self) -> bool {
        let tickets_equal: bool =
            subtle::ConstantTimeEq::ct_eq(&self.ticket[..], &other.ticket[..]).into();
        tickets_equal & (self.address == other.address)
    }
}

impl Eq for DirectConnection {}

/// The ticket is a bearer secret: never printed.
impl core::fmt::Debug for DirectConnection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DirectConnection")
            .field("address", &self.address)
            .field("ticket", &"<secret>")
            .finish()
    }
}

#[cfg(test)]
mod tests;
