//! A key memory in RAM, for tests, fuzzing and benchmarks.
//!
//! It draws its randomness from a seeded [`Drbg`], so runs are reproducible.
//! Seed it from a real random source anywhere randomness matters.

use alloc::vec::Vec;

use p384::PublicKey;
use p384::ecdsa::signature::hazmat::RandomizedPrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use zeroize::Zeroizing;

use super::{KeyMemory, KeyMemoryError, KeySlot, Records};
use crate::channel::derive_scalar;

/// A deterministic random bit generator: HKDF-SHA384 expansion of a seed with
/// a block counter, the key ratcheted after every request so earlier output
/// cannot be recomputed from the current state.
///
/// For reproducible tests and for targets without an OS generator, seeded
/// from real entropy. Not a replacement for the OS generator on a host.
pub struct Drbg {
    key: Zeroizing<[u8; 48]>,
}

impl Drbg {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: [u8; 48]) -> Self {
        Self {
            key: Zeroizing::new(seed),
        }
    }

    /// Fills `out` and advances the state.
    pub fn fill(&mut self, out: &mut [u8]) {
        let kdf = hkdf::Hkdf::<sha2::Sha384>::new(None, &self.key[..]);
        for (block, chunk) in out.chunks_mut(48 * 255).enumerate() {
            let info = (block as u64).to_be_bytes();
            // Chunks are at most 255 × 48 bytes, HKDF's limit for SHA-384.
            let _ = kdf.expand_multi_info(&[b"output", &info], chunk);
        }
        let mut next = [0u8; 48];
        let _ = kdf.expand(b"ratchet", &mut next);
        *self.key = next;
    }
}

impl rand_core::TryRng for Drbg {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        self.fill(&mut bytes);
        Ok(u32::from_be_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        self.fill(&mut bytes);
        Ok(u64::from_be_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.fill(dst);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for Drbg {}

/// A key memory held in RAM.
pub struct MemoryKeyMemory {
    records: Vec<u8>,
    identity: Option<SigningKey>,
    module: Option<SigningKey>,
    drbg: Drbg,
}

impl MemoryKeyMemory {
    /// A blank module whose randomness comes from `seed`.
    pub fn new(seed: [u8; 48]) -> Self {
        Self {
            records: Records::default().encode(),
            identity: None,
            module: None,
            drbg: Drbg::new(seed),
        }
    }

    fn slot(&mut self, slot: KeySlot) -> &mut Option<SigningKey> {
        match slot {
            KeySlot::Identity => &mut self.identity,
            KeySlot::Module => &mut self.module,
        }
    }
}

impl KeyMemory for MemoryKeyMemory {
    fn load(&mut self) -> Result<Records, KeyMemoryError> {
        Records::decode(&self.records)
    }

    fn commit(&mut self, records: &Records) -> Result<(), KeyMemoryError> {
        self.records = records.encode();
        Ok(())
    }

    fn generate(&mut self, slot: KeySlot, variation: &[u8]) -> Result<PublicKey, KeyMemoryError> {
        *self.slot(slot) = None;
        let mut randomness = Zeroizing::new([0u8; 48]);
        self.drbg.fill(&mut randomness[..]);
        let scalar =
            derive_scalar(&randomness, variation, b"key memory").ok_or(KeyMemoryError::Crypto)?;
        let key = SigningKey::from(scalar);
        let public = PublicKey::from(key.verifying_key());
        *self.slot(slot) = Some(key);
        Ok(public)
    }

    fn erase(&mut self, slot: KeySlot) -> Result<(), KeyMemoryError> {
        *self.slot(slot) = None;
        Ok(())
    }

    fn public_key(&mut self, slot: KeySlot) -> Result<Option<PublicKey>, KeyMemoryError> {
        Ok(self
            .slot(slot)
            .as_ref()
            .map(|key| PublicKey::from(key.verifying_key())))
    }

    fn sign_digest(
        &mut self,
        slot: KeySlot,
        digest: &[u8; 48],
    ) -> Result<Signature, KeyMemoryError> {
        let key = match slot {
            KeySlot::Identity => self.identity.as_ref(),
            KeySlot::Module => self.module.as_ref(),
        }
        .ok_or(KeyMemoryError::NoKey)?;
        key.sign_prehash_with_rng(&mut self.drbg, digest)
            .map_err(|_| KeyMemoryError::Crypto)
    }

    fn agree(
        &mut self,
        slot: KeySlot,
        peer: &PublicKey,
    ) -> Result<Zeroizing<[u8; 48]>, KeyMemoryError> {
        let key = self.slot(slot).as_ref().ok_or(KeyMemoryError::NoKey)?;
        Ok(crate::channel::ecdh(key.as_nonzero_scalar(), peer))
    }

    fn random(&mut self, out: &mut [u8]) -> Result<(), KeyMemoryError> {
        self.drbg.fill(out);
        Ok(())
    }
}
