//! Transaction sessions (claim 11): symmetric only, on the key set the
//! central system put into the module over the operating channel.
//!
//! ```text
//!  central                                  module (key set: id, K, counter n)
//!   | cC ────────────────────────────────────▶ | n += 1 (committed first), cM
//!   |                                          | TH = H(label, suite, id, serial, cC, cM, n)
//!   | ◀──────────────── id, cM, n, MAC_module(TH)     keys = HKDF(salt TH, K)
//!   | n > last n? (atomic), verify MAC         |
//!   | MAC_central(TH) ───────────────────────▶ | verify: session open
//!   | ◀══ message s: AES-256-GCM(k_module, s) ═ |   s = 1, 2, … strictly in order
//!   | ══ receipt s: AES-256-GCM(k_central, s) ▶ |   names the payload's SHA-384
//! ```
//!
//! A replayed session start fails on the counter; a replayed, reordered or
//! forged message fails on the sequence number bound into nonce and
//! additional data, or on the tag. Either side closes the session at the first
//! failure.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use alloc::vec::Vec;
use hmac::{Hmac, Mac};
use sha2::Sha384;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{ChannelError, ChannelKind, Digest48, Role, Transcript, frame, unframe};
use crate::proto::len;

/// The public values of a transaction session start, in transcript order.
#[derive(Debug, Clone, Copy)]
pub struct TransactionValues<'a> {
    /// The key set identifier.
    pub key_set_id: &'a [u8; len::KEY_SET_ID],
    /// The module serial (8 bytes).
    pub serial: &'a [u8],
    /// The central system's challenge.
    pub central_challenge: &'a [u8; len::CHALLENGE],
    /// The module's challenge.
    pub module_challenge: &'a [u8; len::CHALLENGE],
    /// The module's session counter for this session.
    pub session_counter: u32,
}

impl TransactionValues<'_> {
    /// TH over all the values.
    pub fn transcript_hash(&self) -> Digest48 {
        let mut transcript = Transcript::new(ChannelKind::Transaction);
        transcript.append(self.key_set_id);
        transcript.append(self.serial);
        transcript.append(self.central_challenge);
        transcript.append(self.module_challenge);
        transcript.append(&self.session_counter.to_be_bytes());
        transcript.finish()
    }
}

/// The keys of one transaction session, derived from the key set's key and TH.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct TransactionKeys {
    module_key: [u8; 32],
    central_key: [u8; 32],
    module_confirmation_key: [u8; 48],
    central_confirmation_key: [u8; 48],
}

impl TransactionKeys {
    /// HKDF-SHA384 with salt TH over the key set's key.
    pub fn derive(key_set_key: &[u8; len::KEY_SET_KEY], th: &Digest48) -> Self {
        let kdf = hkdf::Hkdf::<Sha384>::new(Some(th), key_set_key);
        let mut keys = Self {
            module_key: [0; 32],
            central_key: [0; 32],
            module_confirmation_key: [0; 48],
            central_confirmation_key: [0; 48],
        };
        // Far below HKDF-SHA384's output limit: expand cannot fail.
        let _ = kdf.expand(b"imprint v1 tx module key", &mut keys.module_key);
        let _ = kdf.expand(b"imprint v1 tx central key", &mut keys.central_key);
        let _ = kdf.expand(
            b"imprint v1 tx confirmation module",
            &mut keys.module_confirmation_key,
        );
        let _ = kdf.expand(
            b"imprint v1 tx confirmation central",
            &mut keys.central_confirmation_key,
        );
        keys
    }

    /// The confirmation `role` (module or central) sends:
    /// HMAC-SHA384(k_role, label ‖ TH).
    pub fn confirmation(&self, role: Role, th: &Digest48) -> Result<[u8; 48], ChannelError> {
        Ok(self.mac(role, th)?.finalize().into_bytes().into())
    }

    /// Verifies a confirmation in constant time.
    pub fn verify_confirmation(
        &self,
        role: Role,
        th: &Digest48,
        code: &[u8],
    ) -> Result<(), ChannelError> {
        self.mac(role, th)?
            .verify_slice(code)
            .map_err(|_| ChannelError::BadConfirmation)
    }

    fn mac(&self, role: Role, th: &Digest48) -> Result<Hmac<Sha384>, ChannelError> {
        let key = match role {
            Role::Module => &self.module_confirmation_key,
            Role::Central => &self.central_confirmation_key,
            Role::Unit => return Err(ChannelError::BadConfirmation),
        };
        super::confirmation_mac(key, role, th)
    }

    /// The message protection of the open session, for either side.
    pub fn into_session(self, th: &Digest48) -> TransactionSession {
        TransactionSession {
            to_central: Aes256Gcm::new(&self.module_key.into()),
            to_module: Aes256Gcm::new(&self.central_key.into()),
            th: *th,
            sequence: 0,
        }
    }
}

/// The message protection of an open transaction session.
///
/// Messages (module → central) and receipts (central → module) alternate:
/// message `s` is answered by receipt `s`. The 96-bit GCM nonce is
/// `direction ‖ 000000 ‖ s` (direction `4D` for messages, `43` for receipts)
/// under a key per direction; the additional data is `direction ‖ s ‖ TH`.
/// The sealed form is the secure-messaging data field `85 L ct ‖ 8E 10 tag`.
pub struct TransactionSession {
    to_central: Aes256Gcm,
    to_module: Aes256Gcm,
    th: Digest48,
    sequence: u64,
}

const MESSAGE: u8 = b'M';
const RECEIPT: u8 = b'C';

impl TransactionSession {
    /// The number of the last message sealed or opened (0 before the first).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    fn nonce(direction: u8, sequence: u64) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut nonce = [0u8; 12];
        nonce[0] = direction;
        nonce[4..].copy_from_slice(&sequence.to_be_bytes());
        nonce.into()
    }

    fn aad(&self, direction: u8, sequence: u64) -> [u8; 57] {
        let mut aad = [0u8; 57];
        aad[0] = direction;
        aad[1..9].copy_from_slice(&sequence.to_be_bytes());
        aad[9..].copy_from_slice(&self.th);
        aad
    }

    fn seal(&self, direction: u8, sequence: u64, plain: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let cipher = if direction == MESSAGE {
            &self.to_central
        } else {
            &self.to_module
        };
        let aad = self.aad(direction, sequence);
        let sealed = cipher
            .encrypt(
                &Self::nonce(direction, sequence),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| ChannelError::SecureMessaging)?;
        Ok(frame(&sealed))
    }

    fn open(&self, direction: u8, sequence: u64, field: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let cipher = if direction == MESSAGE {
            &self.to_central
        } else {
            &self.to_module
        };
        let sealed = unframe(field)?;
        let aad = self.aad(direction, sequence);
        cipher
            .decrypt(
                &Self::nonce(direction, sequence),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| ChannelError::SecureMessaging)
    }

    /// Module side: seals the next message. Returns its sequence number and
    /// the sealed field.
    pub fn seal_message(&mut self, payload: &[u8]) -> Result<(u64, Vec<u8>), ChannelError> {
        let sequence = self
            .sequence
            .checked_add(1)
            .ok_or(ChannelError::CounterExhausted)?;
        let sealed = self.seal(MESSAGE, sequence, payload)?;
        self.sequence = sequence;
        Ok((sequence, sealed))
    }

    /// Central side: opens the next message; only the one numbered one past
    /// the last opened can authenticate.
    pub fn open_message(&mut self, field: &[u8]) -> Result<(u64, Vec<u8>), ChannelError> {
        let sequence = self
            .sequence
            .checked_add(1)
            .ok_or(ChannelError::CounterExhausted)?;
        let payload = self.open(MESSAGE, sequence, field)?;
        self.sequence = sequence;
        Ok((sequence, payload))
    }

    /// Central side: seals the receipt for the message just opened.
    pub fn seal_receipt(&self, receipt: &[u8]) -> Result<Vec<u8>, ChannelError> {
        self.seal(RECEIPT, self.sequence, receipt)
    }

    /// Module side: opens the receipt for the message just sealed.
    pub fn open_receipt(&self, field: &[u8]) -> Result<Vec<u8>, ChannelError> {
        self.open(RECEIPT, self.sequence, field)
    }
}
