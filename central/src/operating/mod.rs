//! The central system's side of the operating channel and of transaction
//! sessions, as sans-IO steps: each step takes the module's response and
//! gives the next command for the module (the server relays them through the
//! host).
//!
//! ```text
//!  OperatingHandshake::start ──AUTHENTICATE 02──▶ module
//!        on_open(response) ── chain module ◀ unit ◀ C, MAC ──▶ AuthenticatedModule
//!                                  (the server checks the registry here)
//!  AuthenticatedModule::confirm ──AUTHENTICATE 01 (σ_C, MAC)──▶ module
//!        on_confirm ──▶ OperatingChannel ──SM PUT DATA key set──▶ module   (claim 11)
//!
//!  TransactionChallenge::start ──INTERNAL AUTHENTICATE (cC)──▶ module
//!        on_open ──▶ TransactionClaim (key set id, counter)
//!                         (the server looks the key set up, then checks the counter)
//!  TransactionClaim::verify(K) ──AUTHENTICATE 03 (MAC)──▶ module ──▶ CentralTransactions
//!        open_message / seal_receipt, strictly in order
//! ```
//!
//! `docs/protocol.md` ("Operating channel", "Transaction sessions") specifies
//! every byte.

use imprint_apdu::Response;
use imprint_apdu::channel::transaction::{TransactionKeys, TransactionSession, TransactionValues};
use imprint_apdu::channel::{
    self, ChannelError, Digest48, OperatingValues, Role, SecureMessaging, SessionKeys,
    derive_scalar, encode_point, parse_point, sha384,
};
use imprint_apdu::iso::{CLA_SM, sw};
use imprint_apdu::pki::{self, Certificate, PkiError};
use imprint_apdu::proto::{self, ins, len, tag};
use imprint_apdu::tlv;
use p384::{NonZeroScalar, PublicKey};
use zeroize::Zeroizing;

use crate::CentralAuthority;

/// A command for the module, which the host relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleCommand {
    /// CLA INS P1 P2.
    pub header: [u8; 4],
    /// The command data field.
    pub data: Vec<u8>,
}

/// Why a step of the operating channel or of a transaction session failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatingError {
    /// The module answered with an error status word.
    #[error("the module refused {step} with status {sw:04X}{hint}", hint = status_hint(*.sw))]
    ModuleStatus {
        /// The step.
        step: &'static str,
        /// Its status word.
        sw: u16,
    },
    /// The module's response does not have the expected shape.
    #[error("the module's {0} response is malformed")]
    Malformed(&'static str),
    /// A certificate of the module's chain does not decode or verify.
    #[error("the module's {what} is not valid: {source}")]
    Chain {
        /// Which certificate.
        what: &'static str,
        /// Why.
        #[source]
        source: PkiError,
    },
    /// A certificate of the module's chain is not valid at this time.
    #[error("the module's {0} is not valid at this time")]
    NotValidNow(&'static str),
    /// The module's key confirmation does not verify: it does not hold the
    /// module key of its certificate, or the exchange was tampered with.
    #[error("the module's key confirmation does not verify")]
    BadConfirmation,
    /// Secure messaging with the module failed.
    #[error("secure messaging with the module failed")]
    SecureMessaging,
    /// A transaction message was replayed, reordered, forged or too large.
    #[error("the transaction message was replayed, reordered, forged or too large")]
    BadMessage,
    /// The central key could not sign.
    #[error("the central key failed to sign")]
    Signing,
    /// The random source failed.
    #[error("the random source failed")]
    Random,
}

fn status_hint(sw: u16) -> &'static str {
    match sw {
        sw::SECURITY_STATUS => {
            " (security status not satisfied: wrong central system, or PIN not verified)"
        }
        sw::CONDITIONS => " (conditions of use not satisfied: is the module OPERATING?)",
        sw::DATA_NOT_FOUND => " (no key set: run the operating channel first)",
        sw::AUTHENTICATION_FAILED => " (authentication failed)",
        _ => "",
    }
}

fn expect_ok(step: &'static str, response: &Response) -> Result<(), OperatingError> {
    if response.sw == sw::OK {
        Ok(())
    } else {
        Err(OperatingError::ModuleStatus {
            step,
            sw: response.sw,
        })
    }
}

fn random<const N: usize>() -> Result<[u8; N], OperatingError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| OperatingError::Random)?;
    Ok(out)
}

fn ephemeral_key() -> Result<(Zeroizing<NonZeroScalar>, Vec<u8>), OperatingError> {
    let randomness = Zeroizing::new(random::<48>()?);
    let secret = Zeroizing::new(
        derive_scalar(&randomness, &[], b"ephemeral").ok_or(OperatingError::Random)?,
    );
    let point = encode_point(&PublicKey::from_secret_scalar(&secret));
    Ok((secret, point))
}

fn chain_error(what: &'static str) -> impl Fn(PkiError) -> OperatingError {
    move |source| OperatingError::Chain { what, source }
}

fn valid_now(cert: &Certificate, now: u64, what: &'static str) -> Result<(), OperatingError> {
    if cert.not_before_unix() <= now && now <= cert.not_after_unix() {
        Ok(())
    } else {
        Err(OperatingError::NotValidNow(what))
    }
}

/// The first step of the operating channel.
pub struct OperatingHandshake {
    ephemeral: Zeroizing<NonZeroScalar>,
    ephemeral_point: Vec<u8>,
    challenge: [u8; len::CHALLENGE],
    central_cert_hash: Digest48,
}

impl OperatingHandshake {
    /// Draws the ephemeral key and challenge; the command presents `C`'s root
    /// certificate, which the module checks against its anchor (claim 4).
    pub fn start(central: &CentralAuthority) -> Result<(Self, ModuleCommand), OperatingError> {
        let (ephemeral, ephemeral_point) = ephemeral_key()?;
        let challenge = random()?;
        let mut template = Vec::with_capacity(1024);
        tlv::write(&mut template, tag::AUTH_CERTIFICATE, central.cert.der());
        tlv::write(&mut template, tag::AUTH_EPHEMERAL, &ephemeral_point);
        tlv::write(&mut template, tag::AUTH_CHALLENGE, &challenge);
        let command = ModuleCommand {
            header: [
                0x00,
                ins::AUTHENTICATE,
                proto::SUITE_P384_AES256GCM,
                proto::AUTH_STEP_OPERATING_OPEN,
            ],
            data: tlv::encode(tag::DYN_AUTH, &template),
        };
        Ok((
            Self {
                ephemeral,
                ephemeral_point,
                challenge,
                central_cert_hash: sha384(central.cert.der()),
            },
            command,
        ))
    }

    /// Checks the module's answer: its module certificate chains through the
    /// unit's certificate issued by this central system to `central_root`
    /// (claim 6), both valid `now`, and its key confirmation proves the
    /// module key (claim 1).
    pub fn on_open(
        self,
        response: &Response,
        central_root: &Certificate,
        now: u64,
    ) -> Result<AuthenticatedModule, OperatingError> {
        expect_ok("the operating channel", response)?;
        let malformed = |_| OperatingError::Malformed("operating channel");
        let template = tlv::decode_single(&response.data, tag::DYN_AUTH).map_err(malformed)?;
        let [module, unit, ephemeral, challenge, confirmation] = tlv::decode_fields(
            template,
            [
                tag::AUTH_CERTIFICATE,
                tag::AUTH_CHAIN_CERTIFICATE,
                tag::AUTH_EPHEMERAL,
                tag::AUTH_CHALLENGE,
                tag::AUTH_CONFIRMATION,
            ],
        )
        .map_err(malformed)?;
        let module_der = tlv::required(module, tag::AUTH_CERTIFICATE).map_err(malformed)?;
        let unit_der = tlv::required(unit, tag::AUTH_CHAIN_CERTIFICATE).map_err(malformed)?;
        let module_ephemeral = tlv::required(ephemeral, tag::AUTH_EPHEMERAL).map_err(malformed)?;
        let module_challenge: [u8; len::CHALLENGE] =
            tlv::required_array(challenge, tag::AUTH_CHALLENGE).map_err(malformed)?;
        let confirmation =
            tlv::required(confirmation, tag::AUTH_CONFIRMATION).map_err(malformed)?;

        let module_cert =
            Certificate::from_der(module_der).map_err(chain_error("module certificate"))?;
        let unit_cert = Certificate::from_der(unit_der).map_err(chain_error("unit certificate"))?;
        pki::require_role(&module_cert, pki::Role::ModuleKey)
            .map_err(chain_error("module certificate"))?;
        pki::require_role(&unit_cert, pki::Role::Personalizer)
            .map_err(chain_error("unit certificate"))?;
        pki::verify_issued_by(&unit_cert, central_root, 1)
            .map_err(chain_error("unit certificate"))?;
        pki::verify_issued_by(&module_cert, &unit_cert, 0)
            .map_err(chain_error("module certificate"))?;
        valid_now(&unit_cert, now, "unit certificate")?;
        valid_now(&module_cert, now, "module certificate")?;
        let serial = module_cert
            .module_serial()
            .ok_or(OperatingError::Malformed("module certificate serial"))?
            .to_owned();

        let peer = parse_point(module_ephemeral)
            .map_err(|_| OperatingError::Malformed("operating channel ephemeral key"))?;
        let module_key = PublicKey::from(module_cert.public_key());
        let ephemeral_ephemeral = channel::ecdh(&self.ephemeral, &peer);
        let ephemeral_static = channel::ecdh(&self.ephemeral, &module_key);
        let th = OperatingValues {
            central_cert_hash: &self.central_cert_hash,
            central_ephemeral: &self.ephemeral_point,
            central_challenge: &self.challenge,
            module_cert_hash: &sha384(module_der),
            unit_cert_hash: &sha384(unit_der),
            module_ephemeral,
            module_challenge: &module_challenge,
        }
        .transcript_hash();
        let keys = SessionKeys::derive_operating(&ephemeral_ephemeral, &ephemeral_static, &th);
        keys.verify_confirmation(Role::Module, &th, confirmation)
            .map_err(|_| OperatingError::BadConfirmation)?;
        Ok(AuthenticatedModule {
            module_cert,
            unit_cert,
            serial,
            keys,
            th,
        })
    }
}

/// A module whose chain and key confirmation verified. The central system
/// has not yet authenticated itself to it.
pub struct AuthenticatedModule {
    /// The module certificate.
    pub module_cert: Certificate,
    /// The unit's certificate issued by this central system.
    pub unit_cert: Certificate,
    /// The module serial from its certificate (16 hex digits).
    pub serial: String,
    keys: SessionKeys,
    th: Digest48,
}

impl AuthenticatedModule {
    /// The central system's signature with `C` and its key confirmation.
    pub fn confirm(
        self,
        central: &CentralAuthority,
    ) -> Result<(OperatingConfirmation, ModuleCommand), OperatingError> {
        let signature = central
            .sign_digest(&channel::signed_digest(Role::Central, &self.th))
            .map_err(|_| OperatingError::Signing)?;
        let confirmation = self
            .keys
            .confirmation(Role::Central, &self.th)
            .map_err(|_| OperatingError::Signing)?;
        let mut template = Vec::with_capacity(160);
        tlv::write(&mut template, tag::AUTH_SIGNATURE, &signature.to_bytes());
        tlv::write(&mut template, tag::AUTH_CONFIRMATION, &confirmation);
        let command = ModuleCommand {
            header: [
                0x00,
                ins::AUTHENTICATE,
                proto::SUITE_P384_AES256GCM,
                proto::AUTH_STEP_CONFIRM,
            ],
            data: tlv::encode(tag::DYN_AUTH, &template),
        };
        Ok((OperatingConfirmation { keys: self.keys }, command))
    }
}

/// Waiting for the module to accept the central system.
pub struct OperatingConfirmation {
    keys: SessionKeys,
}

impl OperatingConfirmation {
    /// The module accepted: the channel is open.
    pub fn on_confirm(self, response: &Response) -> Result<OperatingChannel, OperatingError> {
        expect_ok("the central system's authentication", response)?;
        if !response.data.is_empty() {
            return Err(OperatingError::Malformed("confirmation"));
        }
        Ok(OperatingChannel {
            sm: self.keys.into_secure_messaging(),
        })
    }
}

/// The open operating channel.
pub struct OperatingChannel {
    sm: SecureMessaging,
}

/// The header of PUT DATA of a key set under secure messaging.
const PUT_KEY_SET: [u8; 4] = [CLA_SM, ins::PUT_DATA, 0x3F, 0xFF];

impl OperatingChannel {
    /// The secured PUT DATA of a transaction key set (claim 11).
    pub fn install_key_set(
        &mut self,
        id: &[u8; len::KEY_SET_ID],
        key: &[u8; len::KEY_SET_KEY],
        expires: u64,
    ) -> Result<ModuleCommand, OperatingError> {
        let mut inner = Zeroizing::new(Vec::with_capacity(72));
        tlv::write(&mut inner, tag::KEY_SET_ID, id);
        tlv::write(&mut inner, tag::KEY_SET_KEY, key);
        tlv::write(&mut inner, tag::KEY_SET_EXPIRES, &expires.to_be_bytes());
        let plain = Zeroizing::new(tlv::encode(tag::KEY_SET, &inner));
        let data = self
            .sm
            .seal_command(PUT_KEY_SET, &plain)
            .map_err(|_| OperatingError::SecureMessaging)?;
        Ok(ModuleCommand {
            header: PUT_KEY_SET,
            data,
        })
    }

    /// The module's secured answer to the key set.
    pub fn on_install(&mut self, response: &Response) -> Result<(), OperatingError> {
        expect_ok("secure messaging", response)?;
        let (data, status) = self
            .sm
            .open_response(PUT_KEY_SET, &response.data)
            .map_err(|_| OperatingError::SecureMessaging)?;
        if status != sw::OK {
            return Err(OperatingError::ModuleStatus {
                step: "the key set",
                sw: status,
            });
        }
        if !data.is_empty() {
            return Err(OperatingError::Malformed("key set"));
        }
        Ok(())
    }
}

/// The first step of a transaction session.
pub struct TransactionChallenge {
    challenge: [u8; len::CHALLENGE],
    serial: [u8; pki::SERIAL_LEN],
}

impl TransactionChallenge {
    /// INTERNAL AUTHENTICATE with a fresh challenge, for the module `serial`.
    pub fn start(serial: [u8; pki::SERIAL_LEN]) -> Result<(Self, ModuleCommand), OperatingError> {
        let challenge = random()?;
        let command = ModuleCommand {
            header: [
                0x00,
                ins::INTERNAL_AUTHENTICATE,
                proto::SUITE_P384_AES256GCM,
                proto::TRANSACTION_OPEN,
            ],
            data: tlv::encode(tag::DYN_AUTH, &tlv::encode(tag::AUTH_CHALLENGE, &challenge)),
        };
        Ok((Self { challenge, serial }, command))
    }

    /// The module's claim: which key set, which counter. Nothing is verified
    /// yet; the caller looks the key set up and calls [`TransactionClaim::verify`].
    pub fn on_open(self, response: &Response) -> Result<TransactionClaim, OperatingError> {
        expect_ok("the transaction session", response)?;
        let malformed = |_| OperatingError::Malformed("transaction session");
        let template = tlv::decode_single(&response.data, tag::DYN_AUTH).map_err(malformed)?;
        let [id, challenge, counter, confirmation] = tlv::decode_fields(
            template,
            [
                tag::AUTH_KEY_SET_ID,
                tag::AUTH_CHALLENGE,
                tag::AUTH_SESSION_COUNTER,
                tag::AUTH_CONFIRMATION,
            ],
        )
        .map_err(malformed)?;
        Ok(TransactionClaim {
            key_set_id: tlv::required_array(id, tag::AUTH_KEY_SET_ID).map_err(malformed)?,
            session_counter: u32::from_be_bytes(
                tlv::required_array(counter, tag::AUTH_SESSION_COUNTER).map_err(malformed)?,
            ),
            module_challenge: tlv::required_array(challenge, tag::AUTH_CHALLENGE)
                .map_err(malformed)?,
            confirmation: tlv::required_array(confirmation, tag::AUTH_CONFIRMATION)
                .map_err(malformed)?,
            central_challenge: self.challenge,
            serial: self.serial,
        })
    }
}

/// What a module claims when it opens a transaction session.
pub struct TransactionClaim {
    /// The key set it names.
    pub key_set_id: [u8; len::KEY_SET_ID],
    /// Its session counter.
    pub session_counter: u32,
    module_challenge: [u8; len::CHALLENGE],
    confirmation: [u8; len::CONFIRMATION],
    central_challenge: [u8; len::CHALLENGE],
    serial: [u8; pki::SERIAL_LEN],
}

impl TransactionClaim {
    /// Verifies the module's confirmation with the key set's key. On success
    /// the caller must still accept the counter (atomically, in the registry)
    /// before it sends the returned confirmation to the module.
    pub fn verify(
        &self,
        key: &[u8; len::KEY_SET_KEY],
    ) -> Result<(CentralTransactions, ModuleCommand), OperatingError> {
        let th = TransactionValues {
            key_set_id: &self.key_set_id,
            serial: &self.serial,
            central_challenge: &self.central_challenge,
            module_challenge: &self.module_challenge,
            session_counter: self.session_counter,
        }
        .transcript_hash();
        let keys = TransactionKeys::derive(key, &th);
        keys.verify_confirmation(Role::Module, &th, &self.confirmation)
            .map_err(|_| OperatingError::BadConfirmation)?;
        let confirmation = keys
            .confirmation(Role::Central, &th)
            .map_err(|_| OperatingError::BadConfirmation)?;
        let command = ModuleCommand {
            header: [
                0x00,
                ins::AUTHENTICATE,
                proto::SUITE_P384_AES256GCM,
                proto::AUTH_STEP_TRANSACTION_CONFIRM,
            ],
            data: tlv::encode(
                tag::DYN_AUTH,
                &tlv::encode(tag::AUTH_CONFIRMATION, &confirmation),
            ),
        };
        Ok((
            CentralTransactions {
                session: keys.into_session(&th),
            },
            command,
        ))
    }
}

/// Checks the module's answer to the central system's transaction confirmation.
pub fn on_transaction_confirm(response: &Response) -> Result<(), OperatingError> {
    expect_ok("the central system's transaction confirmation", response)?;
    if response.data.is_empty() {
        Ok(())
    } else {
        Err(OperatingError::Malformed("transaction confirmation"))
    }
}

/// The central system's side of an open transaction session.
pub struct CentralTransactions {
    session: TransactionSession,
}

/// A receipt, as the module returns it after checking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The central system's journal number.
    pub number: u64,
    /// SHA-384 of the payload it acknowledges.
    pub payload_digest: Digest48,
    /// The application's reply.
    pub reply: Vec<u8>,
}

impl Receipt {
    /// The receipt's plaintext: `C0 number ‖ C1 digest ‖ C2 reply`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.reply.len() + 72);
        tlv::write(&mut out, tag::RECEIPT_NUMBER, &self.number.to_be_bytes());
        tlv::write(&mut out, tag::RECEIPT_DIGEST, &self.payload_digest);
        tlv::write(&mut out, tag::RECEIPT_REPLY, &self.reply);
        out
    }

    /// Decodes [`Receipt::encode`].
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let [number, digest, reply] = tlv::decode_fields(
            bytes,
            [tag::RECEIPT_NUMBER, tag::RECEIPT_DIGEST, tag::RECEIPT_REPLY],
        )
        .ok()?;
        Some(Self {
            number: u64::from_be_bytes(number?.try_into().ok()?),
            payload_digest: digest?.try_into().ok()?,
            reply: reply.unwrap_or_default().to_vec(),
        })
    }
}

/// Largest reply an application handler may put in a receipt.
pub const REPLY_MAX: usize = proto::RECEIPT_MAX - 72;

impl CentralTransactions {
    /// Opens the next message: only the one numbered one past the last opened
    /// authenticates. Returns its sequence number and payload.
    pub fn open_message(&mut self, sealed: &[u8]) -> Result<(u64, Vec<u8>), OperatingError> {
        let (sequence, payload) = self
            .session
            .open_message(sealed)
            .map_err(|_: ChannelError| OperatingError::BadMessage)?;
        if payload.len() > proto::TRANSACTION_PAYLOAD_MAX {
            return Err(OperatingError::BadMessage);
        }
        Ok((sequence, payload))
    }

    /// Seals the receipt for the message just opened.
    pub fn seal_receipt(&self, receipt: &Receipt) -> Result<Vec<u8>, OperatingError> {
        if receipt.reply.len() > REPLY_MAX {
            return Err(OperatingError::BadMessage);
        }
        self.session
            .seal_receipt(&receipt.encode())
            .map_err(|_| OperatingError::SecureMessaging)
    }
}

#[cfg(test)]
mod tests;
