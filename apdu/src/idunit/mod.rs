//! The identification unit (claims 16–18): a second, small applet, e.g. the
//! user's own card in a second reader. It holds a one-off identification
//! value list produced beforehand and a key `K_id` registered with the
//! personalization unit, and vouches for a personalization by answering the
//! unit's challenge.
//!
//! ```text
//!  imprint idunit issue ─▶ store: id (16), K_id (32), values (16 each)   (unit keeps K_id, verifiers)
//!  unit ──challenge──▶ driver ──INTERNAL AUTHENTICATE──▶ IdUnit
//!                                 ◀── 7C{86 id, 80 value, 84 HMAC(K_id, label ‖ challenge ‖ id ‖ value)}
//!  driver ──PUT DATA DF2A (plain, local)──▶ module ──secured GET DATA DF2A──▶ unit: verify, consume
//! ```
//!
//! The value is removed from the store and the store committed *before*
//! the answer leaves the applet, so a value is one-off at the id unit too:
//! a power loss after the commit loses the value, never repeats it.
//!
//! Sans-IO and `no_std`, like the module applet: [`IdUnit::process`] maps a
//! command APDU to a response APDU over an [`IdUnitStore`].

use alloc::vec::Vec;

use hmac::{Hmac, Mac};
use sha2::Sha384;
use zeroize::{Zeroize, Zeroizing};

use crate::iso::{Command, Response, sw};
use crate::proto::{ins, tag};
use crate::tlv;

#[cfg(feature = "std")]
pub mod file;
pub mod memory;

/// The identification unit's AID: `F0` ‖ ASCII "IMPRINTID".
pub const AID: [u8; 10] = [0xF0, 0x49, 0x4D, 0x50, 0x52, 0x49, 0x4E, 0x54, 0x49, 0x44];
/// Version of the identification unit's command set, in its FCI.
pub const COMMAND_SET_VERSION: u8 = 1;
/// Length of an id-unit identifier.
pub const ID_LEN: usize = 16;
/// Length of `K_id`.
pub const KEY_LEN: usize = 32;
/// Length of one identification value.
pub const VALUE_LEN: usize = 16;
/// Length of the unit's challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Length of the MAC (HMAC-SHA384).
pub const MAC_LEN: usize = 48;
/// Most values one id unit holds (bounds the store and the GET DATA counter).
pub const MAX_VALUES: usize = 1000;
/// The label that opens the MAC input, so this MAC is never valid as any
/// other of the system's MACs.
pub const MAC_LABEL: &[u8] = b"imprint v1 identification";

/// Data-object tags of the identification unit.
pub mod idtag {
    /// GET DATA: the id-unit identifier (16 bytes). Also `86` inside `7C`.
    pub const ID: u32 = 0xDF30;
    /// GET DATA: identification values left, 2 bytes big-endian.
    pub const VALUES_LEFT: u32 = 0xDF31;
    /// Inside `7C` of the answer: the id-unit identifier.
    pub const AUTH_ID: u32 = 0x86;
    /// Inside `7C` of the answer: the identification value.
    pub const AUTH_VALUE: u32 = 0x80;
    /// Inside `7C` of the answer: the MAC.
    pub const AUTH_MAC: u32 = 0x84;
    /// Inside the FCI's `A5`: the id-unit identifier.
    pub const FCI_ID: u32 = 0xC3;
    /// Inside the FCI's `A5`: values left, 2 bytes big-endian.
    pub const FCI_VALUES_LEFT: u32 = 0xC4;
}

/// A store failure. The applet answers `6581` and keeps its last committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdStoreError {
    /// Storage could not be read or written.
    #[error("identification unit store i/o failure")]
    Io,
    /// The stored record does not decode.
    #[error("identification unit store is corrupt")]
    Corrupt,
}

/// Everything an identification unit keeps. `Debug` never shows the key or
/// the values; both are zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct IdUnitRecord {
    /// The id-unit identifier, as registered with the unit.
    pub id: [u8; ID_LEN],
    /// `K_id`, shared with the unit; never readable through the applet.
    pub key: Zeroizing<[u8; KEY_LEN]>,
    /// The unused identification values, in the order they are given out.
    pub values: Vec<[u8; VALUE_LEN]>,
}

impl Drop for IdUnitRecord {
    fn drop(&mut self) {
        self.values.zeroize();
    }
}

impl core::fmt::Debug for IdUnitRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdUnitRecord")
            .field("id", &self.id)
            .field("values_left", &self.values.len())
            .finish_non_exhaustive()
    }
}

const REC_ID: u32 = 0xC0;
const REC_KEY: u32 = 0xC1;
const REC_VALUES: u32 = 0xC2;

impl IdUnitRecord {
    /// The record as the stores keep it: `C0 id ‖ C1 key ‖ C2 values`.
    /// The caller wipes the returned bytes (they carry the key).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut values = Zeroizing::new(Vec::with_capacity(self.values.len() * VALUE_LEN));
        for value in &self.values {
            values.extend_from_slice(value);
        }
        let mut out = Zeroizing::new(Vec::with_capacity(64 + values.len()));
        tlv::write(&mut out, REC_ID, &self.id);
        tlv::write(&mut out, REC_KEY, &self.key[..]);
        tlv::write(&mut out, REC_VALUES, &values);
        out
    }

    /// Decodes [`Self::encode`], strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, IdStoreError> {
        let corrupt = |_| IdStoreError::Corrupt;
        let [id, key, values] =
            tlv::decode_fields(bytes, [REC_ID, REC_KEY, REC_VALUES]).map_err(corrupt)?;
        let id = tlv::required_array(id, REC_ID).map_err(corrupt)?;
        let key = Zeroizing::new(tlv::required_array(key, REC_KEY).map_err(corrupt)?);
        let values = tlv::required(values, REC_VALUES).map_err(corrupt)?;
        if values.len() % VALUE_LEN != 0 || values.len() / VALUE_LEN > MAX_VALUES {
            return Err(IdStoreError::Corrupt);
        }
        let values = values
            .chunks_exact(VALUE_LEN)
            .map(|chunk| {
                let mut value = [0u8; VALUE_LEN];
                value.copy_from_slice(chunk);
                value
            })
            .collect();
        Ok(Self { id, key, values })
    }
}

/// Where an identification unit keeps its record.
pub trait IdUnitStore {
    /// The committed record.
    fn load(&mut self) -> Result<IdUnitRecord, IdStoreError>;
    /// Replaces the record atomically: after a crash, either the old or the
    /// new record is there.
    fn commit(&mut self, record: &IdUnitRecord) -> Result<(), IdStoreError>;
}

/// `HMAC-SHA384(K_id, "imprint v1 identification" ‖ challenge ‖ id ‖ value)`.
/// Fixed-length fields, so the concatenation is unambiguous.
pub fn identification_mac(
    key: &[u8; KEY_LEN],
    challenge: &[u8; CHALLENGE_LEN],
    id: &[u8; ID_LEN],
    value: &[u8; VALUE_LEN],
) -> [u8; MAC_LEN] {
    identification_hmac(key, challenge, id, value)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a MAC from [`identification_mac`] in constant time.
pub fn identification_mac_matches(
    key: &[u8; KEY_LEN],
    challenge: &[u8; CHALLENGE_LEN],
    id: &[u8; ID_LEN],
    value: &[u8; VALUE_LEN],
    mac: &[u8],
) -> bool {
    identification_hmac(key, challenge, id, value)
        .verify_slice(mac)
        .is_ok()
}

fn identification_hmac(
    key: &[u8; KEY_LEN],
    challenge: &[u8; CHALLENGE_LEN],
    id: &[u8; ID_LEN],
    value: &[u8; VALUE_LEN],
) -> Hmac<Sha384> {
    // HMAC takes keys of any length, so a 32-byte key is always accepted;
    // the fallback (an empty key) is unreachable and could only fail checks.
    let mut mac = <Hmac<Sha384> as hmac::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha384> as hmac::KeyInit>::new(&Default::default()));
    mac.update(MAC_LABEL);
    mac.update(challenge);
    mac.update(id);
    mac.update(value);
    mac
}

/// The id unit's answer, as the unit decodes it after the module forwarded it.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentificationAnswer {
    /// The id-unit identifier.
    pub id: [u8; ID_LEN],
    /// The identification value.
    pub value: Zeroizing<[u8; VALUE_LEN]>,
    /// The MAC over the unit's challenge.
    pub mac: [u8; MAC_LEN],
}

impl core::fmt::Debug for IdentificationAnswer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentificationAnswer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl IdentificationAnswer {
    /// Decodes `7C { 86 id, 80 value, 84 mac }`, strictly (one template, no
    /// trailing bytes, exact lengths).
    pub fn parse(bytes: &[u8]) -> Result<Self, tlv::TlvError> {
        let template = tlv::decode_single(bytes, tag::DYN_AUTH)?;
        let [id, value, mac] = tlv::decode_fields(
            template,
            [idtag::AUTH_ID, idtag::AUTH_VALUE, idtag::AUTH_MAC],
        )?;
        Ok(Self {
            id: tlv::required_array(id, idtag::AUTH_ID)?,
            value: Zeroizing::new(tlv::required_array(value, idtag::AUTH_VALUE)?),
            mac: tlv::required_array(mac, idtag::AUTH_MAC)?,
        })
    }

    /// Encodes the answer template.
    pub fn encode(&self) -> Vec<u8> {
        let mut template = Vec::with_capacity(ID_LEN + VALUE_LEN + MAC_LEN + 6);
        tlv::write(&mut template, idtag::AUTH_ID, &self.id);
        tlv::write(&mut template, idtag::AUTH_VALUE, &self.value[..]);
        tlv::write(&mut template, idtag::AUTH_MAC, &self.mac);
        tlv::encode(tag::DYN_AUTH, &template)
    }
}

/// The identification unit applet.
pub struct IdUnit<S: IdUnitStore> {
    store: S,
    record: IdUnitRecord,
    selected: bool,
}

impl<S: IdUnitStore> IdUnit<S> {
    /// Loads the committed record from `store`.
    pub fn new(mut store: S) -> Result<Self, IdStoreError> {
        let record = store.load()?;
        Ok(Self {
            store,
            record,
            selected: false,
        })
    }

    /// The id-unit identifier.
    pub fn id(&self) -> [u8; ID_LEN] {
        self.record.id
    }

    /// Identification values left.
    pub fn values_left(&self) -> usize {
        self.record.values.len()
    }

    /// The store, for inspection.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// A card reset: deselects.
    pub fn reset(&mut self) {
        self.selected = false;
    }

    /// Processes one command APDU; never panics on any input.
    pub fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        let response = match Command::parse(apdu) {
            Ok(command) => match self.dispatch(&command) {
                Ok(data) if command.ne != 0 && data.len() > command.ne => {
                    // Every answer is under 256 bytes: a host asking for less
                    // is told the exact length (ISO 7816-3 `6Cxx`).
                    let exact = u8::try_from(data.len()).unwrap_or(0);
                    Response::status(0x6C00 | u16::from(exact))
                }
                Ok(data) => Response { data, sw: sw::OK },
                Err(status) => Response::status(status),
            },
            Err(status) => Response::status(status),
        };
        response.to_bytes()
    }

    fn dispatch(&mut self, command: &Command<'_>) -> Result<Vec<u8>, u16> {
        if command.cla & 0x03 != 0 {
            return Err(sw::CHANNEL_NOT_SUPPORTED);
        }
        if command.cla != 0 {
            // No chaining, no secure messaging: the answer carries its own MAC.
            return Err(sw::CLA_NOT_SUPPORTED);
        }
        match command.ins {
            ins::SELECT => self.select(command),
            _ if !self.selected => Err(sw::CONDITIONS),
            ins::GET_DATA => self.get_data(command),
            ins::INTERNAL_AUTHENTICATE => self.authenticate(command),
            _ => Err(sw::INS_NOT_SUPPORTED),
        }
    }

    fn values_left_bytes(&self) -> [u8; 2] {
        u16::try_from(self.record.values.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes()
    }

    fn select(&mut self, command: &Command<'_>) -> Result<Vec<u8>, u16> {
        if command.p1 != 0x04 || (command.p2 & 0xF3) != 0x00 {
            return Err(sw::WRONG_P1P2);
        }
        if command.data != AID {
            self.selected = false;
            return Err(sw::NOT_FOUND);
        }
        self.selected = true;
        let mut proprietary = Vec::new();
        tlv::write(&mut proprietary, tag::FCI_VERSION, &[COMMAND_SET_VERSION]);
        tlv::write(&mut proprietary, idtag::FCI_ID, &self.record.id);
        tlv::write(
            &mut proprietary,
            idtag::FCI_VALUES_LEFT,
            &self.values_left_bytes(),
        );
        let mut fci = Vec::new();
        tlv::write(&mut fci, tag::FCI_AID, &AID);
        tlv::write(&mut fci, tag::FCI_PROPRIETARY, &proprietary);
        Ok(tlv::encode(tag::FCI, &fci))
    }

    fn get_data(&mut self, command: &Command<'_>) -> Result<Vec<u8>, u16> {
        if !command.data.is_empty() {
            return Err(sw::WRONG_LENGTH);
        }
        match u32::from(u16::from_be_bytes([command.p1, command.p2])) {
            idtag::ID => Ok(self.record.id.to_vec()),
            idtag::VALUES_LEFT => Ok(self.values_left_bytes().to_vec()),
            _ => Err(sw::DATA_NOT_FOUND),
        }
    }

    /// INTERNAL AUTHENTICATE `00 88 00 00`, `7C { 81 challenge }`: gives the
    /// next value, MACed over the challenge. The value leaves the store
    /// (committed) before the answer is built.
    fn authenticate(&mut self, command: &Command<'_>) -> Result<Vec<u8>, u16> {
        if command.p1 != 0 || command.p2 != 0 {
            return Err(sw::WRONG_P1P2);
        }
        let template =
            tlv::decode_single(command.data, tag::DYN_AUTH).map_err(|_| sw::WRONG_DATA)?;
        let [challenge] =
            tlv::decode_fields(template, [tag::AUTH_CHALLENGE]).map_err(|_| sw::WRONG_DATA)?;
        let challenge: [u8; CHALLENGE_LEN] =
            tlv::required_array(challenge, tag::AUTH_CHALLENGE).map_err(|_| sw::WRONG_DATA)?;
        if self.record.values.is_empty() {
            // Exhausted: the authentication method is used up (ISO 7816-4 `6983`).
            return Err(sw::AUTH_METHOD_BLOCKED);
        }
        let mut next = self.record.clone();
        let value = Zeroizing::new(next.values.remove(0));
        self.store.commit(&next).map_err(|_| sw::MEMORY_FAILURE)?;
        self.record = next;
        let answer = IdentificationAnswer {
            id: self.record.id,
            mac: identification_mac(&self.record.key, &challenge, &self.record.id, &value),
            value,
        };
        Ok(answer.encode())
    }
}

#[cfg(test)]
mod tests;
