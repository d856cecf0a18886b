//! Sign operations: mechanisms, host-side hashing, and the value the module
//! signs.
//!
//! ```text
//!  CKM_ECDSA         data = the hash value (any length ≥ 1) ─┐
//!  CKM_ECDSA_SHA256  SHA-256(data), single or multi-part  ───┼─▶ leftmost 48 bytes ─▶ PSO: COMPUTE
//!  CKM_ECDSA_SHA384  SHA-384(data), single or multi-part  ───┘                         DIGITAL SIGNATURE
//!                                                                                       ─▶ r ‖ s (96 bytes)
//! ```
//!
//! The module signs the hash value as FIPS 186-5 says ECDSA does: its
//! leftmost 384 bits (`docs/apdu.md`, 7.13). A hash value longer than 48
//! bytes is cut to 48 bytes here, which gives the same number; shorter ones
//! go as they are. The signature is PKCS#11's `r ‖ s`, each half 48 bytes.

use cryptoki_sys::*;
use sha2::{Digest, Sha256, Sha384};

use crate::error::Error;

/// Length of a P-384 ECDSA signature in PKCS#11 format.
pub const SIGNATURE_LEN: usize = 96;

/// The longest hash value the module takes as it is.
const HASH_VALUE_MAX: usize = 48;

/// A signing mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `CKM_ECDSA`: the data is the hash value; single-part only.
    Ecdsa,
    /// `CKM_ECDSA_SHA256`: SHA-256 on the host.
    EcdsaSha256,
    /// `CKM_ECDSA_SHA384`: SHA-384 on the host.
    EcdsaSha384,
}

impl Mechanism {
    /// The mechanism for a `CK_MECHANISM` with `parameter`.
    pub fn from_ck(kind: CK_MECHANISM_TYPE, parameter: &[u8]) -> Result<Self, Error> {
        let mechanism = match kind {
            CKM_ECDSA => Self::Ecdsa,
            CKM_ECDSA_SHA256 => Self::EcdsaSha256,
            CKM_ECDSA_SHA384 => Self::EcdsaSha384,
            _ => return Err(Error::MechanismInvalid),
        };
        if !parameter.is_empty() {
            return Err(Error::MechanismParamInvalid);
        }
        Ok(mechanism)
    }
}

enum Hasher {
    None,
    Sha256(Sha256),
    Sha384(Sha384),
}

/// An active sign operation of a session.
pub struct SignOperation {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// The key's handle.
    pub key: CK_OBJECT_HANDLE,
    hasher: Hasher,
    multipart: bool,
}

impl SignOperation {
    /// Starts an operation with `mechanism` and `key`.
    pub fn new(mechanism: Mechanism, key: CK_OBJECT_HANDLE) -> Self {
        let hasher = match mechanism {
            Mechanism::Ecdsa => Hasher::None,
            Mechanism::EcdsaSha256 => Hasher::Sha256(Sha256::new()),
            Mechanism::EcdsaSha384 => Hasher::Sha384(Sha384::new()),
        };
        Self {
            mechanism,
            key,
            hasher,
            multipart: false,
        }
    }

    /// Whether `C_SignUpdate` was called.
    pub fn is_multipart(&self) -> bool {
        self.multipart
    }

    /// Feeds a part (`C_SignUpdate`). `CKM_ECDSA` is single-part only.
    pub fn update(&mut self, data: &[u8]) -> Result<(), Error> {
        self.multipart = true;
        match &mut self.hasher {
            Hasher::None => Err(Error::FunctionNotSupported),
            Hasher::Sha256(hash) => {
                hash.update(data);
                Ok(())
            }
            Hasher::Sha384(hash) => {
                hash.update(data);
                Ok(())
            }
        }
    }

    /// The hash value to sign for single-part `data` (`C_Sign`).
    pub fn single_part_value(&self, data: &[u8]) -> Result<Vec<u8>, Error> {
        match self.mechanism {
            Mechanism::Ecdsa => hash_value(data),
            Mechanism::EcdsaSha256 => Ok(Sha256::digest(data).to_vec()),
            Mechanism::EcdsaSha384 => Ok(Sha384::digest(data).to_vec()),
        }
    }

    /// The hash value to sign after the parts (`C_SignFinal`).
    pub fn final_value(&self) -> Result<Vec<u8>, Error> {
        match &self.hasher {
            Hasher::None => Err(Error::FunctionNotSupported),
            Hasher::Sha256(hash) => Ok(hash.clone().finalize().to_vec()),
            Hasher::Sha384(hash) => Ok(hash.clone().finalize().to_vec()),
        }
    }
}

/// A `CKM_ECDSA` input as the module takes it: at least one byte; longer
/// than 48 bytes, its leftmost 48 bytes (the same ECDSA number).
fn hash_value(data: &[u8]) -> Result<Vec<u8>, Error> {
    if data.is_empty() {
        return Err(Error::DataLenRange);
    }
    Ok(data[..data.len().min(HASH_VALUE_MAX)].to_vec())
}
