//! The module's secure key memory, as the applet sees it.
//!
//! The applet never holds a long-term private key: it asks the key memory to
//! generate, use and erase keys by slot. Everything else the module keeps
//! (lifecycle, certificates, the time watermark, the user PIN's verifier and
//! retry counter) is one [`Records`] value that the key memory replaces
//! atomically on [`KeyMemory::commit`].
//!
//! ```text
//!  Applet ──generate/sign/erase(slot)──▶ KeyMemory ──▶ file directory | SoftHSM | RAM
//!         ──load/commit(Records)──────▶
//! ```

use alloc::vec::Vec;

use p384::PublicKey;
use p384::ecdsa::Signature;
use sha2::{Digest, Sha384};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::proto::{Lifecycle, PIN_TRY_LIMIT, TAN_PROOF_LIMIT};
use crate::tlv;

#[cfg(feature = "std")]
pub mod file;
pub mod memory;

/// A private key slot of the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    /// The permanent identity key (claim 8): formed once, never erased.
    Identity,
    /// The module key (claim 1): fresh at every personalization.
    Module,
}

/// A key-memory failure. The applet answers `6581` and keeps its last committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyMemoryError {
    /// Storage could not be read or written.
    #[error("key memory i/o failure")]
    Io,
    /// Stored records or keys do not decode.
    #[error("key memory contents are corrupt")]
    Corrupt,
    /// No key in that slot.
    #[error("no key in slot")]
    NoKey,
    /// The random number source failed.
    #[error("random source failure")]
    Random,
    /// The key memory refused or failed a cryptographic operation.
    #[error("key operation failed")]
    Crypto,
}

/// Everything the module keeps except private keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
    /// The manufacturer's checking certificate (claim 7). Written once.
    pub checking_cert: Option<Vec<u8>>,
    /// The identity certificate (claim 8). Written once.
    pub identity_cert: Option<Vec<u8>>,
    /// The module certificate (claim 1).
    pub module_cert: Option<Vec<u8>>,
    /// The unit's certificate issued by the central system (claim 6).
    pub unit_cert: Option<Vec<u8>>,
    /// The unit's certificate over the central key: the operating anchor (claims 4, 5).
    pub central_cert: Option<Vec<u8>>,
    /// The latest notBefore (Unix seconds) of any certificate the module accepted.
    /// The module has no clock; this is its notion of "now" (see docs/protocol.md).
    pub time_watermark: u64,
    /// How many personalizations have completed on this module.
    pub personalizations: u32,
    /// The user PIN's verifier and retry counter, if a PIN was set at
    /// personalization. Operational material: erased with the module key.
    pub pin: Option<PinRecord>,
    /// The transaction key set the central system installed (claim 11).
    /// Operational material: erased with the module key.
    pub key_set: Option<KeySetRecord>,
    /// TAN proofs given since the last completed personalization (claim 13),
    /// `0..=TAN_PROOF_LIMIT`. Not operational material: TERMINATE keeps it,
    /// only a completed personalization sets it back to zero.
    pub tan_proofs: u8,
}

/// A transaction key set as the module keeps it (claim 11).
///
/// `Debug` shows the identifier, expiry and counter, never the key; the key
/// is zeroized on drop and compared in constant time.
#[derive(Clone, Zeroize, zeroize::ZeroizeOnDrop)]
pub struct KeySetRecord {
    /// Identifier chosen by the central system.
    pub id: [u8; crate::proto::len::KEY_SET_ID],
    /// The key.
    pub key: [u8; crate::proto::len::KEY_SET_KEY],
    /// End of the lifetime the central system set (Unix seconds). The module
    /// has no clock: it reports this; the central system enforces it.
    pub expires: u64,
    /// Session counter of the last transaction session opened on this set.
    pub counter: u32,
}

impl PartialEq for KeySetRecord {
    fn eq(&self, other: &Self) -> bool {
        let key_equal: bool = self.key.ct_eq(&other.key).into();
        key_equal
            && self.id == other.id
            && self.expires == other.expires
            && self.counter == other.counter
    }
}

impl Eq for KeySetRecord {}

impl core::fmt::Debug for KeySetRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeySetRecord")
            .field("id", &self.id)
            .field("expires", &self.expires)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// What the module keeps of the user PIN: a salted SHA-384 verifier and the
/// retry counter (see `docs/protocol.md`, "User PIN").
///
/// `Debug` shows the counter only.
#[derive(Clone, PartialEq, Eq)]
pub struct PinRecord {
    /// Random salt drawn from the key memory when the PIN was set.
    pub salt: [u8; PIN_SALT_LEN],
    /// `SHA-384("imprint v1 user pin" ‖ salt ‖ PIN)`.
    pub verifier: [u8; 48],
    /// Wrong presentations left before the PIN is blocked, `0..=PIN_TRY_LIMIT`.
    pub tries_left: u8,
}

/// Length of the PIN salt.
pub const PIN_SALT_LEN: usize = 16;

impl PinRecord {
    /// The record of a freshly set `pin`, with a full retry counter.
    pub fn new(salt: [u8; PIN_SALT_LEN], pin: &[u8]) -> Self {
        Self {
            salt,
            verifier: pin_verifier(&salt, pin),
            tries_left: PIN_TRY_LIMIT,
        }
    }

    /// Whether `pin` is the PIN, compared in constant time. Does not touch
    /// the counter: the caller decrements and commits it first.
    pub fn matches(&self, pin: &[u8]) -> bool {
        let mut candidate = pin_verifier(&self.salt, pin);
        let equal = candidate.ct_eq(&self.verifier).into();
        candidate.zeroize();
        equal
    }
}

impl core::fmt::Debug for PinRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PinRecord")
            .field("tries_left", &self.tries_left)
            .finish_non_exhaustive()
    }
}

/// `SHA-384("imprint v1 user pin" ‖ salt ‖ pin)`. Label, salt and a PIN of at
/// most 16 bytes fit one SHA-384 block, so the time does not depend on the PIN.
fn pin_verifier(salt: &[u8; PIN_SALT_LEN], pin: &[u8]) -> [u8; 48] {
    let mut hash = Sha384::new();
    hash.update(b"imprint v1 user pin");
    hash.update(salt);
    hash.update(pin);
    hash.finalize().into()
}

mod record_tag {
    pub const VERSION: u32 = 0xC0;
    pub const LIFECYCLE: u32 = 0xC1;
    pub const CHECKING: u32 = 0xC2;
    pub const IDENTITY: u32 = 0xC3;
    pub const MODULE: u32 = 0xC4;
    pub const UNIT: u32 = 0xC5;
    pub const CENTRAL: u32 = 0xC6;
    pub const WATERMARK: u32 = 0xC7;
    pub const COUNT: u32 = 0xC8;
    pub const PIN_VERIFIER: u32 = 0xC9;
    pub const PIN_TRIES: u32 = 0xCA;
    pub const KEY_SET: u32 = 0xCB;
    pub const KEY_SET_COUNTER: u32 = 0xCC;
    /// Added with the TAN (claim 13); absent means zero, so records written
    /// before it still decode, and a zero counter is not written.
    pub const TAN_PROOFS: u32 = 0xCD;
}

const RECORDS_VERSION: u8 = 1;

impl Records {
    /// Drops everything operational (claim 2): module certificate, central
    /// anchor, unit certificate, the user PIN with its retry counter, and the
    /// transaction key set. Identity and checking certificates stay.
    pub fn erase_operational(&mut self) {
        self.module_cert = None;
        self.unit_cert = None;
        self.central_cert = None;
        self.pin = None;
        self.key_set = None;
    }

    /// Encodes as BER-TLV.
    pub fn encode(&self) -> Vec<u8> {
        use record_tag::*;
        let mut out = Vec::new();
        tlv::write(&mut out, VERSION, &[RECORDS_VERSION]);
        tlv::write(&mut out, LIFECYCLE, &[self.lifecycle.code()]);
        for (tag, value) in [
            (CHECKING, &self.checking_cert),
            (IDENTITY, &self.identity_cert),
            (MODULE, &self.module_cert),
            (UNIT, &self.unit_cert),
            (CENTRAL, &self.central_cert),
        ] {
            if let Some(value) = value {
                tlv::write(&mut out, tag, value);
            }
        }
        tlv::write(&mut out, WATERMARK, &self.time_watermark.to_be_bytes());
        tlv::write(&mut out, COUNT, &self.personalizations.to_be_bytes());
        if let Some(pin) = &self.pin {
            let mut verifier = [0u8; PIN_SALT_LEN + 48];
            verifier[..PIN_SALT_LEN].copy_from_slice(&pin.salt);
            verifier[PIN_SALT_LEN..].copy_from_slice(&pin.verifier);
            tlv::write(&mut out, PIN_VERIFIER, &verifier);
            tlv::write(&mut out, PIN_TRIES, &[pin.tries_left]);
        }
        if let Some(key_set) = &self.key_set {
            let mut value = [0u8; KEY_SET_VALUE_LEN];
            value[..16].copy_from_slice(&key_set.id);
            value[16..48].copy_from_slice(&key_set.key);
            value[48..].copy_from_slice(&key_set.expires.to_be_bytes());
            tlv::write(&mut out, KEY_SET, &value);
            value.zeroize();
            tlv::write(&mut out, KEY_SET_COUNTER, &key_set.counter.to_be_bytes());
        }
        if self.tan_proofs != 0 {
            tlv::write(&mut out, TAN_PROOFS, &[self.tan_proofs]);
        }
        out
    }

    /// Decodes [`Records::encode`], rejecting anything else.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyMemoryError> {
        use record_tag::*;
        let fields = tlv::decode_fields(
            bytes,
            [
                VERSION,
                LIFECYCLE,
                CHECKING,
                IDENTITY,
                MODULE,
                UNIT,
                CENTRAL,
                WATERMARK,
                COUNT,
                PIN_VERIFIER,
                PIN_TRIES,
                KEY_SET,
                KEY_SET_COUNTER,
                TAN_PROOFS,
            ],
        )
        .map_err(|_| KeyMemoryError::Corrupt)?;
        let [
            version,
            lifecycle,
            checking,
            identity,
            module,
            unit,
            central,
            watermark,
            count,
            pin_verifier,
            pin_tries,
            key_set,
            key_set_counter,
            tan_proofs,
        ] = fields;
        let corrupt = |_| KeyMemoryError::Corrupt;
        if tlv::required_array::<1>(version, VERSION).map_err(corrupt)? != [RECORDS_VERSION] {
            return Err(KeyMemoryError::Corrupt);
        }
        let [code] = tlv::required_array::<1>(lifecycle, LIFECYCLE).map_err(corrupt)?;
        Ok(Self {
            lifecycle: Lifecycle::from_code(code).ok_or(KeyMemoryError::Corrupt)?,
            checking_cert: checking.map(<[u8]>::to_vec),
            identity_cert: identity.map(<[u8]>::to_vec),
            module_cert: module.map(<[u8]>::to_vec),
            unit_cert: unit.map(<[u8]>::to_vec),
            central_cert: central.map(<[u8]>::to_vec),
            time_watermark: u64::from_be_bytes(
                tlv::required_array(watermark, WATERMARK).map_err(corrupt)?,
            ),
            personalizations: u32::from_be_bytes(
                tlv::required_array(count, COUNT).map_err(corrupt)?,
            ),
            pin: decode_pin(pin_verifier, pin_tries)?,
            key_set: decode_key_set(key_set, key_set_counter)?,
            tan_proofs: match tan_proofs {
                None => 0,
                Some(&[count]) if (1..=TAN_PROOF_LIMIT).contains(&count) => count,
                Some(_) => return Err(KeyMemoryError::Corrupt),
            },
        })
    }
}

/// Identifier (16), key (32) and expiry (8).
const KEY_SET_VALUE_LEN: usize = 56;

fn decode_key_set(
    value: Option<&[u8]>,
    counter: Option<&[u8]>,
) -> Result<Option<KeySetRecord>, KeyMemoryError> {
    let (value, counter) = match (value, counter) {
        (None, None) => return Ok(None),
        (Some(value), Some(counter)) if value.len() == KEY_SET_VALUE_LEN => (value, counter),
        _ => return Err(KeyMemoryError::Corrupt),
    };
    let (id, rest) = value.split_at(16);
    let (key, expires) = rest.split_at(32);
    Ok(Some(KeySetRecord {
        id: id.try_into().map_err(|_| KeyMemoryError::Corrupt)?,
        key: key.try_into().map_err(|_| KeyMemoryError::Corrupt)?,
        expires: u64::from_be_bytes(expires.try_into().map_err(|_| KeyMemoryError::Corrupt)?),
        counter: u32::from_be_bytes(counter.try_into().map_err(|_| KeyMemoryError::Corrupt)?),
    }))
}

/// Brings a digest of 1 to 64 bytes to the 48-byte value that P-384 ECDSA
/// signs, as FIPS 186-5 (6.4.1) and SEC 1 (4.1.3, step 5) define it: the
/// leftmost 384 bits (the bit length of the group order) of the digest. A
/// longer digest (SHA-512) is cut to its first 48 bytes; a shorter one
/// (SHA-1, SHA-256) is the same integer, so it is padded with zeros on the
/// left. `None` for an empty or longer digest.
///
/// Signing the result gives a signature that verifies against the original
/// digest in any conforming ECDSA implementation (`CKM_ECDSA`, OpenSSL).
pub fn ecdsa_hash_value(digest: &[u8]) -> Option<[u8; 48]> {
    if digest.is_empty() || digest.len() > crate::proto::len::DIGEST_MAX {
        return None;
    }
    let mut value = [0u8; 48];
    let used = digest.len().min(48);
    value[48 - used..].copy_from_slice(&digest[..used]);
    Some(value)
}

/// The PIN objects come as a pair or not at all; the verifier is salt and hash
/// (64 bytes), the counter one byte no larger than the try limit.
fn decode_pin(
    verifier: Option<&[u8]>,
    tries: Option<&[u8]>,
) -> Result<Option<PinRecord>, KeyMemoryError> {
    match (verifier, tries) {
        (None, None) => Ok(None),
        (Some(verifier), Some(&[tries_left])) if tries_left <= PIN_TRY_LIMIT => {
            let (salt, hash) = verifier
                .split_at_checked(PIN_SALT_LEN)
                .ok_or(KeyMemoryError::Corrupt)?;
            Ok(Some(PinRecord {
                salt: salt.try_into().map_err(|_| KeyMemoryError::Corrupt)?,
                verifier: hash.try_into().map_err(|_| KeyMemoryError::Corrupt)?,
                tries_left,
            }))
        }
        _ => Err(KeyMemoryError::Corrupt),
    }
}

/// The secure key memory of a security module (claim 19's "secure key memory").
///
/// Implementations: [`file::FileKeyMemory`] (a directory per module),
/// [`memory::MemoryKeyMemory`] (RAM, for tests and fuzzing), and a SoftHSM
/// token in the PKCS#11 provider.
pub trait KeyMemory {
    /// Reads the committed records (defaults for a blank module).
    fn load(&mut self) -> Result<Records, KeyMemoryError>;

    /// Replaces the records atomically: after a crash at any point, `load`
    /// returns either the old records or the new ones.
    fn commit(&mut self, records: &Records) -> Result<(), KeyMemoryError>;

    /// Generates a fresh key pair in `slot`, replacing (and erasing) any key
    /// there. The key is derived from the memory's own randomness mixed with
    /// `variation` through [`crate::channel::derive_scalar`] or an equivalent
    /// inside the token. Returns the public key.
    fn generate(&mut self, slot: KeySlot, variation: &[u8]) -> Result<PublicKey, KeyMemoryError>;

    /// Erases the key in `slot`, if any.
    fn erase(&mut self, slot: KeySlot) -> Result<(), KeyMemoryError>;

    /// The public key in `slot`, if a key is there.
    fn public_key(&mut self, slot: KeySlot) -> Result<Option<PublicKey>, KeyMemoryError>;

    /// Signs a 48-byte hash value with the key in `slot` (ECDSA, RFC 6979
    /// hedged with fresh randomness where the memory has it). The value is a
    /// SHA-384 digest, or any other digest brought to 48 bytes by
    /// [`ecdsa_hash_value`]; it is used as it is, never hashed again.
    fn sign_digest(
        &mut self,
        slot: KeySlot,
        digest: &[u8; 48],
    ) -> Result<Signature, KeyMemoryError>;

    /// ECDH with the key in `slot` and `peer`: the x-coordinate of the shared
    /// point. Used only by the operating channel, where it proves possession
    /// of the module key in a way a signature oracle cannot imitate.
    fn agree(
        &mut self,
        slot: KeySlot,
        peer: &PublicKey,
    ) -> Result<zeroize::Zeroizing<[u8; 48]>, KeyMemoryError>;

    /// Fills `out` with random bytes from the memory's generator.
    fn random(&mut self, out: &mut [u8]) -> Result<(), KeyMemoryError>;
}

#[cfg(test)]
mod tests;
