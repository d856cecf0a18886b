//! The cryptographic core shared by both ends of a channel: transcript hash,
//! key schedule, signatures over the transcript, key confirmation and the
//! AES-GCM secure messaging of ISO/IEC 7816-4 style APDUs.
//!
//! ```text
//!  unit                                             module
//!   | cert_M(P), eP, cU  ───────────────────────────▶ | verify cert_M(P) with M
//!   |                                                 | eM, cM, nonce; Z = ECDH(eM, eP)
//!   |                                                 | TH = H(label, suite, H(cert P), eP, cU,
//!   |                                                 |        H(cert ID), eM, cM, nonce)
//!   | ◀─────────── cert_M(ID), eM, cM, nonce, σ_ID(TH), MAC_km(TH)
//!   | verify, Z = ECDH(eP, eM)                        |
//!   | σ_P(TH), MAC_ku(TH) ──────────────────────────▶ | verify: channel open
//!   | ◀═════════ AES-256-GCM, one counter, one key per direction ═════════▶ |
//! ```
//!
//! The operating channel (claims 1, 4, 11) has the same shape between the
//! central system and an OPERATING module, with two differences: the central
//! system signs with `C`, which the module checks against its anchor; the
//! module proves its module key by static-ephemeral ECDH mixed into the key
//! schedule (something COMPUTE DIGITAL SIGNATURE can never produce), and
//! confirms with its MAC. [`transaction`] holds the symmetric sessions that
//! follow on the key set the operating channel installed.
//!
//! `docs/protocol.md` specifies every byte; `tests.rs` checks its test vectors.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use alloc::vec::Vec;
use hmac::{Hmac, Mac};
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use p384::elliptic_curve::ecdh::diffie_hellman;
use p384::{NonZeroScalar, PublicKey};
use sha2::{Digest, Sha384};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::proto::{SUITE_P384_AES256GCM, len, tag};
use crate::tlv;

/// Which channel a transcript belongs to. Its label is hashed first, so a
/// transcript of one channel can never be taken for one of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Personalization unit ↔ module (claims 3, 7, 8, 9).
    Personalization,
    /// Central system ↔ operating module (claims 1, 4, 11).
    Operating,
    /// A transaction session on a key set (claim 11).
    Transaction,
}

impl ChannelKind {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Personalization => b"imprint v1 personalization channel",
            Self::Operating => b"imprint v1 operating channel",
            Self::Transaction => b"imprint v1 transaction session",
        }
    }
}

/// Who signs or MACs: part of every signed and MACed message (no reflection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The personalization unit: the side that opens a personalization channel.
    Unit,
    /// The security module.
    Module,
    /// The central system: the side that opens an operating channel and
    /// confirms transaction sessions.
    Central,
}

impl Role {
    fn signature_label(self) -> &'static [u8] {
        match self {
            Self::Unit => b"imprint v1 signature by unit",
            Self::Module => b"imprint v1 signature by module",
            Self::Central => b"imprint v1 signature by central",
        }
    }
    fn confirmation_label(self) -> &'static [u8] {
        match self {
            Self::Unit => b"imprint v1 key confirmation unit",
            Self::Module => b"imprint v1 key confirmation module",
            Self::Central => b"imprint v1 key confirmation central",
        }
    }
}

/// Why a channel step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// A point is not an uncompressed, valid, non-identity P-384 point.
    #[error("invalid public key point")]
    InvalidPoint,
    /// A signature does not decode or does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A key-confirmation code does not verify.
    #[error("bad key confirmation")]
    BadConfirmation,
    /// A secure-messaging APDU failed decoding or authentication.
    #[error("secure messaging failure")]
    SecureMessaging,
    /// The message counter would wrap.
    #[error("message counter exhausted")]
    CounterExhausted,
}

/// A SHA-384 digest.
pub type Digest48 = [u8; 48];

/// SHA-384 of `data`.
pub fn sha384(data: &[u8]) -> Digest48 {
    Sha384::digest(data).into()
}

/// Parses an uncompressed SEC1 P-384 point, rejecting compressed, identity and
/// off-curve encodings (DESIGN §8a: points are validated before use).
pub fn parse_point(bytes: &[u8]) -> Result<PublicKey, ChannelError> {
    if bytes.len() != len::POINT || bytes.first() != Some(&0x04) {
        return Err(ChannelError::InvalidPoint);
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| ChannelError::InvalidPoint)
}

/// Uncompressed SEC1 encoding of a public key (97 bytes).
pub fn encode_point(key: &PublicKey) -> Vec<u8> {
    use p384::elliptic_curve::sec1::ToSec1Point;
    key.to_sec1_point(false).as_bytes().to_vec()
}

/// Derives a non-zero P-384 scalar from uniformly random input and an optional
/// variation value, through HKDF-SHA384. Used for ephemeral keys and for key
/// generation inside key memories (claim 10: the variation enters through the
/// KDF together with the card's randomness, so the host can neither choose nor
/// cancel the key).
pub fn derive_scalar(
    randomness: &[u8; 48],
    variation: &[u8],
    label: &[u8],
) -> Option<NonZeroScalar> {
    let kdf = hkdf::Hkdf::<Sha384>::new(Some(b"imprint v1 key generation"), randomness);
    for counter in 0u8..8 {
        let mut okm = [0u8; 48];
        let info: [&[u8]; 3] = [label, variation, &[counter]];
        kdf.expand_multi_info(&info, &mut okm).ok()?;
        let scalar = p384::SecretKey::from_slice(&okm).ok();
        okm.zeroize();
        if let Some(secret) = scalar {
            return Some(secret.to_nonzero_scalar());
        }
    }
    None
}

/// Accumulates the transcript of a channel handshake.
///
/// Every field is appended with a two-byte length so that no two different
/// sequences of fields hash the same.
#[derive(Clone)]
pub struct Transcript {
    hash: Sha384,
}

impl Transcript {
    /// Starts a transcript for `kind` with the negotiated suite.
    pub fn new(kind: ChannelKind) -> Self {
        let mut transcript = Self {
            hash: Sha384::new(),
        };
        transcript.append(kind.label());
        transcript.append(&[SUITE_P384_AES256GCM]);
        transcript
    }

    /// Appends one field.
    pub fn append(&mut self, field: &[u8]) {
        let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
        self.hash.update(len.to_be_bytes());
        self.hash.update(field);
    }

    /// The transcript hash TH.
    pub fn finish(self) -> Digest48 {
        self.hash.finalize().into()
    }
}

/// The personalization handshake's public values, in transcript order.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeValues<'a> {
    /// SHA-384 of the unit's certificate DER.
    pub unit_cert_hash: &'a Digest48,
    /// The unit's ephemeral point.
    pub unit_ephemeral: &'a [u8],
    /// The unit's challenge.
    pub unit_challenge: &'a [u8],
    /// SHA-384 of the module's identity certificate DER.
    pub module_cert_hash: &'a Digest48,
    /// The module's ephemeral point.
    pub module_ephemeral: &'a [u8],
    /// The module's challenge.
    pub module_challenge: &'a [u8],
    /// The module's nonce (claim 9).
    pub module_nonce: &'a [u8],
}

impl HandshakeValues<'_> {
    /// TH over all the values.
    pub fn transcript_hash(&self, kind: ChannelKind) -> Digest48 {
        let mut transcript = Transcript::new(kind);
        for field in [
            &self.unit_cert_hash[..],
            self.unit_ephemeral,
            self.unit_challenge,
            &self.module_cert_hash[..],
            self.module_ephemeral,
            self.module_challenge,
            self.module_nonce,
        ] {
            transcript.append(field);
        }
        transcript.finish()
    }
}

/// The operating handshake's public values, in transcript order.
#[derive(Debug, Clone, Copy)]
pub struct OperatingValues<'a> {
    /// SHA-384 of the central system's root certificate DER.
    pub central_cert_hash: &'a Digest48,
    /// The central system's ephemeral point.
    pub central_ephemeral: &'a [u8],
    /// The central system's challenge.
    pub central_challenge: &'a [u8],
    /// SHA-384 of the module certificate DER.
    pub module_cert_hash: &'a Digest48,
    /// SHA-384 of the unit's certificate issued by the central system.
    pub unit_cert_hash: &'a Digest48,
    /// The module's ephemeral point.
    pub module_ephemeral: &'a [u8],
    /// The module's challenge.
    pub module_challenge: &'a [u8],
}

impl OperatingValues<'_> {
    /// TH over all the values.
    pub fn transcript_hash(&self) -> Digest48 {
        let mut transcript = Transcript::new(ChannelKind::Operating);
        for field in [
            &self.central_cert_hash[..],
            self.central_ephemeral,
            self.central_challenge,
            &self.module_cert_hash[..],
            &self.unit_cert_hash[..],
            self.module_ephemeral,
            self.module_challenge,
        ] {
            transcript.append(field);
        }
        transcript.finish()
    }
}

/// The x-coordinate of `secret · peer`: an ECDH shared secret.
pub fn ecdh(secret: &NonZeroScalar, peer: &PublicKey) -> zeroize::Zeroizing<[u8; 48]> {
    let shared = diffie_hellman(secret, peer.as_affine());
    let mut out = zeroize::Zeroizing::new([0u8; 48]);
    out.copy_from_slice(shared.raw_secret_bytes());
    out
}

/// The keys of one channel, derived from the ECDH secret and TH.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    command_key: [u8; 32],
    response_key: [u8; 32],
    unit_confirmation_key: [u8; 48],
    module_confirmation_key: [u8; 48],
}

impl SessionKeys {
    /// HKDF-SHA384 with salt TH over the x-coordinate of `secret · peer`.
    pub fn derive(secret: &NonZeroScalar, peer: &PublicKey, th: &Digest48) -> Self {
        Self::expand(&ecdh(secret, peer)[..], th)
    }

    /// The operating channel's keys: HKDF-SHA384 with salt TH over
    /// `Z_ee ‖ Z_se`, the ephemeral-ephemeral secret followed by the secret of
    /// the central system's ephemeral key with the module key.
    pub fn derive_operating(
        ephemeral_ephemeral: &[u8; 48],
        ephemeral_static: &[u8; 48],
        th: &Digest48,
    ) -> Self {
        let mut ikm = zeroize::Zeroizing::new([0u8; 96]);
        ikm[..48].copy_from_slice(ephemeral_ephemeral);
        ikm[48..].copy_from_slice(ephemeral_static);
        Self::expand(&ikm[..], th)
    }

    fn expand(ikm: &[u8], th: &Digest48) -> Self {
        let kdf = hkdf::Hkdf::<Sha384>::new(Some(th), ikm);
        let mut keys = Self {
            command_key: [0; 32],
            response_key: [0; 32],
            unit_confirmation_key: [0; 48],
            module_confirmation_key: [0; 48],
        };
        // Output lengths are far below HKDF-SHA384's limit of 255 × 48 bytes,
        // so expand cannot fail.
        let _ = kdf.expand(b"imprint v1 sm command key", &mut keys.command_key);
        let _ = kdf.expand(b"imprint v1 sm response key", &mut keys.response_key);
        let _ = kdf.expand(
            b"imprint v1 confirmation key unit",
            &mut keys.unit_confirmation_key,
        );
        let _ = kdf.expand(
            b"imprint v1 confirmation key module",
            &mut keys.module_confirmation_key,
        );
        keys
    }

    /// The key-confirmation code `role` sends: HMAC-SHA384(k_role, label ‖ TH).
    pub fn confirmation(&self, role: Role, th: &Digest48) -> Result<[u8; 48], ChannelError> {
        Ok(self
            .confirmation_mac(role, th)?
            .finalize()
            .into_bytes()
            .into())
    }

    /// Verifies a key-confirmation code in constant time.
    pub fn verify_confirmation(
        &self,
        role: Role,
        th: &Digest48,
        code: &[u8],
    ) -> Result<(), ChannelError> {
        self.confirmation_mac(role, th)?
            .verify_slice(code)
            .map_err(|_| ChannelError::BadConfirmation)
    }

    fn confirmation_mac(&self, role: Role, th: &Digest48) -> Result<Hmac<Sha384>, ChannelError> {
        let key = match role {
            Role::Unit | Role::Central => &self.unit_confirmation_key,
            Role::Module => &self.module_confirmation_key,
        };
        confirmation_mac(key, role, th)
    }

    /// Turns the keys into the secure-messaging state of one side.
    pub fn into_secure_messaging(self) -> SecureMessaging {
        SecureMessaging {
            command: Aes256Gcm::new(&self.command_key.into()),
            response: Aes256Gcm::new(&self.response_key.into()),
            counter: 0,
        }
    }
}

/// HMAC-SHA384(key, role's confirmation label ‖ TH), not yet finalized.
fn confirmation_mac(
    key: &[u8; 48],
    role: Role,
    th: &Digest48,
) -> Result<Hmac<Sha384>, ChannelError> {
    let mut mac = <Hmac<Sha384> as hmac::KeyInit>::new_from_slice(key)
        .map_err(|_| ChannelError::BadConfirmation)?;
    mac.update(role.confirmation_label());
    mac.update(th);
    Ok(mac)
}

/// The digest a role signs: SHA-384(role label ‖ TH).
pub fn signed_digest(role: Role, th: &Digest48) -> Digest48 {
    let mut hash = Sha384::new();
    hash.update(role.signature_label());
    hash.update(th);
    hash.finalize().into()
}

/// The digest a freshly generated module key signs to prove possession:
/// SHA-384(label ‖ TH ‖ point ‖ variation).
pub fn possession_digest(th: &Digest48, point: &[u8], variation: &[u8]) -> Digest48 {
    let mut hash = Sha384::new();
    hash.update(b"imprint v1 module key possession");
    hash.update(th);
    hash.update(point);
    hash.update(variation);
    hash.finalize().into()
}

/// The TAN verifier the unit stores instead of the TAN (claim 13):
/// `HKDF-SHA384(salt = unit salt, ikm = TAN, info = "imprint v1 tan verifier")`,
/// 48 bytes. The module derives the same value from the TAN typed at its
/// input unit and the salt the unit sends.
pub fn tan_verifier(salt: &[u8], tan: &[u8]) -> zeroize::Zeroizing<[u8; 48]> {
    let kdf = hkdf::Hkdf::<Sha384>::new(Some(salt), tan);
    let mut out = zeroize::Zeroizing::new([0u8; 48]);
    // 48 bytes are far below HKDF-SHA384's output limit: expand cannot fail.
    let _ = kdf.expand(b"imprint v1 tan verifier", &mut out[..]);
    out
}

/// The module's proof of the TAN in one personalization channel:
/// `HMAC-SHA384(V, "imprint v1 tan proof" ‖ TH)`. Bound to TH, so a proof
/// from one channel is worthless in any other.
pub fn tan_proof(verifier: &[u8; 48], th: &Digest48) -> Result<[u8; 48], ChannelError> {
    Ok(tan_mac(verifier, th)?.finalize().into_bytes().into())
}

/// Checks a TAN proof against a verifier in constant time.
pub fn tan_proof_matches(verifier: &[u8; 48], th: &Digest48, proof: &[u8]) -> bool {
    tan_mac(verifier, th).is_ok_and(|mac| mac.verify_slice(proof).is_ok())
}

fn tan_mac(verifier: &[u8; 48], th: &Digest48) -> Result<Hmac<Sha384>, ChannelError> {
    let mut mac = <Hmac<Sha384> as hmac::KeyInit>::new_from_slice(verifier)
        .map_err(|_| ChannelError::BadConfirmation)?;
    mac.update(b"imprint v1 tan proof");
    mac.update(th);
    Ok(mac)
}

/// Verifies a raw `r ‖ s` signature over a prehashed digest.
pub fn verify_raw_signature(
    key: &VerifyingKey,
    digest: &Digest48,
    raw: &[u8],
) -> Result<(), ChannelError> {
    let signature = Signature::from_slice(raw).map_err(|_| ChannelError::BadSignature)?;
    key.verify_prehash(digest, &signature)
        .map_err(|_| ChannelError::BadSignature)
}

/// Secure messaging for one channel, held by each side.
///
/// Command data field: `85 L ciphertext ‖ 8E 10 tag`; response data field:
/// `85 L ciphertext(data ‖ SW1 SW2) ‖ 8E 10 tag`, outer status `9000`.
/// The 96-bit GCM nonce is `00000000 ‖ counter` under a key per direction,
/// and the additional data binds the counter and the command header.
pub struct SecureMessaging {
    command: Aes256Gcm,
    response: Aes256Gcm,
    counter: u64,
}

/// The AES-GCM tag length.
const TAG_LEN: usize = 16;

impl SecureMessaging {
    fn nonce(&self) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        nonce.into()
    }

    fn aad(&self, direction: u8, header: [u8; 4]) -> [u8; 13] {
        let mut aad = [0u8; 13];
        aad[0] = direction;
        aad[1..9].copy_from_slice(&self.counter.to_be_bytes());
        // The chaining bit is transport framing, not meaning: mask it out.
        aad[9] = header[0] & !crate::iso::CLA_CHAIN;
        aad[10..].copy_from_slice(&header[1..]);
        aad
    }

    fn advance(&mut self) -> Result<(), ChannelError> {
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(ChannelError::CounterExhausted)?;
        Ok(())
    }

    /// The number of the next command (starts at 1).
    pub fn next_counter(&self) -> u64 {
        self.counter.saturating_add(1)
    }

    /// Unit side: protects `data` for a command with `header` (CLA must carry
    /// the SM bits). Returns the command data field.
    pub fn seal_command(&mut self, header: [u8; 4], data: &[u8]) -> Result<Vec<u8>, ChannelError> {
        self.advance()?;
        let aad = self.aad(b'C', header);
        let sealed = self
            .command
            .encrypt(
                &self.nonce(),
                Payload {
                    msg: data,
                    aad: &aad,
                },
            )
            .map_err(|_| ChannelError::SecureMessaging)?;
        Ok(frame(&sealed))
    }

    /// Module side: checks and decrypts a command data field.
    pub fn open_command(&mut self, header: [u8; 4], field: &[u8]) -> Result<Vec<u8>, ChannelError> {
        self.advance()?;
        let sealed = unframe(field)?;
        let aad = self.aad(b'C', header);
        self.command
            .decrypt(
                &self.nonce(),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| ChannelError::SecureMessaging)
    }

    /// Module side: protects a response to the command just opened.
    pub fn seal_response(
        &mut self,
        header: [u8; 4],
        data: &[u8],
        sw: u16,
    ) -> Result<Vec<u8>, ChannelError> {
        let mut plain = Vec::with_capacity(data.len() + 2);
        plain.extend_from_slice(data);
        plain.extend_from_slice(&sw.to_be_bytes());
        let aad = self.aad(b'R', header);
        let sealed = self.response.encrypt(
            &self.nonce(),
            Payload {
                msg: &plain,
                aad: &aad,
            },
        );
        plain.zeroize();
        Ok(frame(&sealed.map_err(|_| ChannelError::SecureMessaging)?))
    }

    /// Unit side: checks and decrypts the response to the command just sealed.
    /// Returns the inner data and status word.
    pub fn open_response(
        &mut self,
        header: [u8; 4],
        field: &[u8],
    ) -> Result<(Vec<u8>, u16), ChannelError> {
        let sealed = unframe(field)?;
        let aad = self.aad(b'R', header);
        let mut plain = self
            .response
            .decrypt(
                &self.nonce(),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| ChannelError::SecureMessaging)?;
        let split = plain
            .len()
            .checked_sub(2)
            .ok_or(ChannelError::SecureMessaging)?;
        let sw = u16::from_be_bytes([plain[split], plain[split + 1]]);
        plain.truncate(split);
        Ok((plain, sw))
    }
}

pub(crate) fn frame(sealed: &[u8]) -> Vec<u8> {
    let split = sealed.len().saturating_sub(TAG_LEN);
    let (ciphertext, gcm_tag) = sealed.split_at(split);
    let mut out = Vec::with_capacity(sealed.len() + 8);
    tlv::write(&mut out, tag::SM_CRYPTOGRAM, ciphertext);
    tlv::write(&mut out, tag::SM_MAC, gcm_tag);
    out
}

pub(crate) fn unframe(field: &[u8]) -> Result<Vec<u8>, ChannelError> {
    let [ciphertext, gcm_tag] = tlv::decode_fields(field, [tag::SM_CRYPTOGRAM, tag::SM_MAC])
        .map_err(|_| ChannelError::SecureMessaging)?;
    let ciphertext = ciphertext.ok_or(ChannelError::SecureMessaging)?;
    let gcm_tag = gcm_tag.ok_or(ChannelError::SecureMessaging)?;
    if gcm_tag.len() != TAG_LEN {
        return Err(ChannelError::SecureMessaging);
    }
    let mut sealed = Vec::with_capacity(ciphertext.len() + TAG_LEN);
    sealed.extend_from_slice(ciphertext);
    sealed.extend_from_slice(gcm_tag);
    Ok(sealed)
}

pub mod transaction;

#[cfg(test)]
mod tests;
