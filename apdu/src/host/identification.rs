//! The personalization unit's side of the identification unit (claims
//! 16–18): how the unit judges a forwarded answer, and how the host the user
//! connected the id unit to obtains one.
//!
//! ```text
//!  unit: challenge (32, fresh per personalization, drawn inside the channel)
//!    └▶ Action::Identify ─▶ driver: IdentificationSource::authenticate(challenge) ─▶ id unit
//!                           driver: PUT DATA 00 DA DF 2A (answer) ─▶ module (volatile)
//!  unit: secured GET DATA 0C CA DF 2A ─▶ answer, end to end through the module
//!    └▶ Action::CheckIdentification ─▶ store: judge() ─▶ Accepted(value) ─▶ consumed with the issuance record
//!                                                  └▶ Refused ─▶ nothing issued
//! ```
//!
//! The unit stores `K_id` (it must, to verify an HMAC) and each value only as
//! `SHA-384("imprint v1 identification value" ‖ unit salt ‖ value)`.

use sha2::{Digest, Sha384};
use zeroize::Zeroizing;

use super::transport::{CardLink, Transport, TransportError};
use crate::idunit::{
    self, CHALLENGE_LEN, ID_LEN, IdentificationAnswer, KEY_LEN, VALUE_LEN,
    identification_mac_matches,
};
use crate::iso::sw;
use crate::proto::{ins, tag};
use crate::tlv;

/// Why the unit refused an identification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentificationRefusal {
    /// The id unit is not registered with this unit (a foreign id unit).
    #[error("the identification unit {0} is not registered with this personalization unit")]
    UnknownUnit(String),
    /// The MAC does not verify with the registered key over this
    /// personalization's challenge: forged, or replayed from another one.
    #[error(
        "the identification from unit {0} does not verify for this personalization's \
         challenge (forged, or replayed from another personalization)"
    )]
    NotAuthentic(String),
    /// The id unit was issued for another module (`imprint idunit issue
    /// --module SERIAL`): it vouches for that module only.
    #[error("the identification unit {unit} vouches for module {bound} only, not for {serial}")]
    OtherModule {
        /// The id unit.
        unit: String,
        /// The module it was issued for.
        bound: String,
        /// The module being personalized.
        serial: String,
    },
    /// The value was not issued to this id unit.
    #[error("the identification value was not issued to identification unit {0}")]
    UnknownValue(String),
    /// The value was consumed by an earlier personalization.
    #[error("the identification value {0} was already used; it is one-off")]
    Used(i64),
}

/// What a unit's store answers to an identification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentificationCheck {
    /// The value with this store id is open and authentic; it is consumed
    /// with the issuance record ([`super::IssuedCertificate::identification`]).
    Accepted(i64),
    /// Refused.
    Refused(IdentificationRefusal),
}

/// One identification value as a store keeps it (never the value).
#[derive(Debug, Clone)]
pub struct IdValueRow {
    /// The store's id.
    pub id: i64,
    /// [`value_verifier`] of the value.
    pub verifier: [u8; 48],
    /// Consumed by a personalization.
    pub used: bool,
}

/// `SHA-384("imprint v1 identification value" ‖ salt ‖ value)`: values are
/// 128-bit random, so a salted hash is enough; the salt keeps verifiers of
/// two units apart.
pub fn value_verifier(salt: &[u8; 32], value: &[u8; VALUE_LEN]) -> [u8; 48] {
    let mut hash = Sha384::new();
    hash.update(b"imprint v1 identification value");
    hash.update(salt);
    hash.update(value);
    hash.finalize().into()
}

/// Hex of an id-unit identifier, as the CLI and messages print it.
pub fn id_hex(id: &[u8; ID_LEN]) -> String {
    id.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// An id unit as the unit registered it.
#[derive(Debug, Clone, Copy)]
pub struct IdUnitRegistration<'a> {
    /// Its key `K_id`.
    pub key: &'a [u8; KEY_LEN],
    /// The module serial it was issued for, if bound to one.
    pub serial: Option<&'a str>,
}

/// The policy: is `answer` the id unit's authentic answer to `challenge`,
/// vouching for the module `serial`, with an open value issued to it?
/// `registration` is that of `answer.id` (`None`: not registered); `values`
/// are that id unit's rows. The MAC is compared in constant time; every
/// row's verifier is compared whatever matched before.
pub fn judge(
    challenge: &[u8; CHALLENGE_LEN],
    serial: &str,
    answer: &IdentificationAnswer,
    registration: Option<IdUnitRegistration<'_>>,
    salt: &[u8; 32],
    values: &[IdValueRow],
) -> IdentificationCheck {
    let unit = id_hex(&answer.id);
    let Some(registration) = registration else {
        return IdentificationCheck::Refused(IdentificationRefusal::UnknownUnit(unit));
    };
    let mac_matches = identification_mac_matches(
        registration.key,
        challenge,
        &answer.id,
        &answer.value,
        &answer.mac,
    );
    if !mac_matches {
        return IdentificationCheck::Refused(IdentificationRefusal::NotAuthentic(unit));
    }
    if let Some(bound) = registration.serial.filter(|bound| *bound != serial) {
        return IdentificationCheck::Refused(IdentificationRefusal::OtherModule {
            unit,
            bound: bound.to_owned(),
            serial: serial.to_owned(),
        });
    }
    let verifier = value_verifier(salt, &answer.value);
    let mut matched = None;
    for row in values {
        let equal: bool = subtle::ConstantTimeEq::ct_eq(&row.verifier[..], &verifier[..]).into();
        if equal {
            matched = Some(row);
        }
    }
    match matched {
        None => IdentificationCheck::Refused(IdentificationRefusal::UnknownValue(unit)),
        Some(row) if row.used => IdentificationCheck::Refused(IdentificationRefusal::Used(row.id)),
        Some(row) => IdentificationCheck::Accepted(row.id),
    }
}

/// A failure to obtain an identification from the id unit.
#[derive(Debug, thiserror::Error)]
pub enum IdUnitError {
    /// The id unit's transport failed.
    #[error("identification unit: {0}")]
    Transport(#[from] TransportError),
    /// The id unit has no identification values left.
    #[error("the identification unit has no identification values left (6983): issue a new one")]
    Exhausted,
    /// The id unit answered with an error status.
    #[error("the identification unit answered {sw:04X} to {step}")]
    Status {
        /// The command.
        step: &'static str,
        /// Its status word.
        sw: u16,
    },
}

/// Where the driver obtains the id unit's answer to a challenge.
pub trait IdentificationSource {
    /// Asks the id unit to answer `challenge`; returns its answer (`7C`
    /// template) as is. The driver hands it to the module unread.
    fn authenticate(
        &mut self,
        challenge: &[u8; CHALLENGE_LEN],
    ) -> Result<Zeroizing<Vec<u8>>, IdUnitError>;
}

/// An id unit behind any [`Transport`]: an in-process applet or a second reader.
pub struct IdUnitLink<T: Transport> {
    link: CardLink<T>,
}

impl<T: Transport> IdUnitLink<T> {
    /// Wraps the id unit's transport.
    pub fn new(transport: T) -> Self {
        Self {
            link: CardLink::new(transport),
        }
    }

    /// The card link (APDU counts, the transport).
    pub fn link_mut(&mut self) -> &mut CardLink<T> {
        &mut self.link
    }

    /// SELECT the id unit; returns its identifier and values left.
    pub fn select(&mut self) -> Result<([u8; ID_LEN], u16), IdUnitError> {
        let response = self
            .link
            .send([0x00, ins::SELECT, 0x04, 0x00], &idunit::AID)?;
        if response.sw != sw::OK {
            return Err(IdUnitError::Status {
                step: "SELECT",
                sw: response.sw,
            });
        }
        let malformed = IdUnitError::Status {
            step: "SELECT (malformed FCI)",
            sw: response.sw,
        };
        let parse = || -> Option<([u8; ID_LEN], u16)> {
            let fci = tlv::decode_single(&response.data, tag::FCI).ok()?;
            let [_, proprietary] =
                tlv::decode_fields(fci, [tag::FCI_AID, tag::FCI_PROPRIETARY]).ok()?;
            let [_, id, left] = tlv::decode_fields(
                proprietary?,
                [
                    tag::FCI_VERSION,
                    idunit::idtag::FCI_ID,
                    idunit::idtag::FCI_VALUES_LEFT,
                ],
            )
            .ok()?;
            let id = tlv::required_array(id, idunit::idtag::FCI_ID).ok()?;
            let left = tlv::required_array(left, idunit::idtag::FCI_VALUES_LEFT).ok()?;
            Some((id, u16::from_be_bytes(left)))
        };
        parse().ok_or(malformed)
    }
}

impl<T: Transport> IdentificationSource for IdUnitLink<T> {
    fn authenticate(
        &mut self,
        challenge: &[u8; CHALLENGE_LEN],
    ) -> Result<Zeroizing<Vec<u8>>, IdUnitError> {
        self.select()?;
        let data = tlv::encode(tag::DYN_AUTH, &tlv::encode(tag::AUTH_CHALLENGE, challenge));
        let response = self
            .link
            .send([0x00, ins::INTERNAL_AUTHENTICATE, 0x00, 0x00], &data)?;
        match response.sw {
            sw::OK => Ok(Zeroizing::new(response.data)),
            sw::AUTH_METHOD_BLOCKED => Err(IdUnitError::Exhausted),
            other => Err(IdUnitError::Status {
                step: "INTERNAL AUTHENTICATE",
                sw: other,
            }),
        }
    }
}

/// An id-unit applet running in this process, as a [`Transport`].
pub struct InProcessIdUnit<S: idunit::IdUnitStore> {
    applet: idunit::IdUnit<S>,
}

impl<S: idunit::IdUnitStore> InProcessIdUnit<S> {
    /// Wraps an id-unit applet.
    pub fn new(applet: idunit::IdUnit<S>) -> Self {
        Self { applet }
    }

    /// The applet.
    pub fn applet(&self) -> &idunit::IdUnit<S> {
        &self.applet
    }
}

impl<S: idunit::IdUnitStore> Transport for InProcessIdUnit<S> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.applet.process(command))
    }

    fn supports_extended_length(&self) -> bool {
        // The id unit speaks short APDUs only; its answers fit in 256 bytes.
        false
    }
}
