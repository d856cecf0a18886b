//! The personalization unit's flow (claims 1–10) as a sans-IO state machine,
//! and [`personalize`], its blocking driver.
//!
//! APDUs of a first personalization (5): SELECT, MUTUAL AUTHENTICATE,
//! EXTERNAL AUTHENTICATE, GENERATE ASYMMETRIC KEY PAIR, PUT DATA (bundle).
//! A re-personalization adds TERMINATE after the handshake (6). An optional
//! user PIN rides in the bundle, under secure messaging, and adds no APDU.
//! A TAN (claim 13) adds two: VERIFY of the TAN after SELECT (local, plain;
//! built by the reader from its PIN pad when the TAN is entered there)
//! and INTERNAL AUTHENTICATE for its proof right after the handshake, before
//! TERMINATE or GENERATE, so nothing changes on the module for a user who did
//! not consent.
//! An identification unit (claims 16–18) adds two APDUs to the module, right
//! after the TAN step: the driver's plain PUT DATA `00 DA DF 2A` with the id
//! unit's answer to the unit's challenge, and the unit's secured GET DATA
//! `0C CA DF 2A` that fetches it end to end.

use std::time::{Duration, Instant};

use p384::ecdsa::signature::hazmat::RandomizedPrehashSigner;
use p384::{NonZeroScalar, PublicKey};
use zeroize::Zeroizing;

use super::credentials::{CredentialsError, UnitCredentials};
use super::transport::{CardLink, Transport, TransportError};
use crate::channel::{
    self, ChannelKind, Digest48, HandshakeValues, Role, SecureMessaging, SessionKeys,
    derive_scalar, encode_point, parse_point, sha384,
};
use crate::iso::{CLA_SM, Response, sw};
use crate::pki::issue::{self, IssueError, IssuerKey, Validity};
use crate::pki::{self, Certificate, PkiError};
use crate::proto::{self, Lifecycle, ins, len, tag};
use crate::tlv;

use super::identification::{
    IdUnitError, IdentificationCheck, IdentificationRefusal, IdentificationSource,
};
use super::tan::{
    TAN_DIGITS, TAN_SALT_LEN, TanCheck, TanRefusal, pin_pad_status_meaning, tan_length_ok,
};
use crate::direct::DirectConnection;
use crate::idunit::IdentificationAnswer;

/// Choices for one personalization.
pub struct PersonalizationOptions {
    /// The variation value sent to the module for key generation (claim 10), 1–64 bytes.
    pub variation: Vec<u8>,
    /// Lifetime of the module certificate (clamped to the unit's own certificate).
    pub validity_years: u32,
    /// Who signs the module certificate. `None`: the unit's own key.
    pub issuer: Option<Box<dyn ModuleCertificateIssuer>>,
    /// The user PIN to set, 4 to 16 bytes, sent only inside the secure
    /// channel (tag `DF27` of the bundle). `None`: the module key needs no PIN.
    /// The module stores a salted hash; this buffer is wiped when dropped.
    pub pin: Option<Zeroizing<Vec<u8>>>,
    /// The TAN the user entered (claim 13), 4 to 16 bytes. It goes to the
    /// module over the local interface only (plain VERIFY `00 20 00 82`),
    /// never to the unit's journal; the module proves it inside the channel.
    pub tan: Option<Zeroizing<Vec<u8>>>,
    /// The TAN is typed on the reader's PIN pad (PC/SC secure PIN entry,
    /// [`Transport::verify_at_pin_pad`]) instead: the reader builds the
    /// VERIFY with the digits, so the unit and its host never hold the TAN.
    /// `tan` must then be `None`; the TAN has [`TAN_DIGITS`] digits.
    pub tan_at_pin_pad: bool,
    /// The unit's policy: refuse to personalize without a TAN.
    pub require_tan: bool,
    /// The unit's policy (claims 16–18): personalize only after an
    /// identification unit connected by the user vouched for it.
    pub require_identification: bool,
    /// Claim 15: once the channel is up, offer the module this direct
    /// connection (secured PUT DATA `0C DA DF 2B`) and, if it accepts, move
    /// the rest of the run onto it ([`Action::SwitchToDirect`]). A module
    /// without a network of its own declines (`6A81`) and the run goes on
    /// where it started.
    pub direct: Option<DirectConnection>,
}

impl Default for PersonalizationOptions {
    fn default() -> Self {
        Self {
            variation: b"imprint".to_vec(),
            validity_years: 5,
            issuer: None,
            pin: None,
            tan: None,
            tan_at_pin_pad: false,
            require_tan: false,
            require_identification: false,
            direct: None,
        }
    }
}

/// What the module asked to be certified.
#[derive(Debug, Clone)]
pub struct ModuleCertificateRequest {
    /// The module serial (from its identity certificate).
    pub serial: String,
    /// The new module public key, uncompressed SEC1.
    pub public_key: Vec<u8>,
    /// The module's nonce for this personalization (claim 9).
    pub nonce: [u8; pki::NONCE_LEN],
    /// Validity to use.
    pub validity: Validity,
}

/// Signs module certificates. The default uses the unit's key; an HSM-backed
/// unit supplies its own.
pub trait ModuleCertificateIssuer {
    /// Issues the certificate for `request` under the unit's key.
    fn issue(
        &self,
        unit: &UnitCredentials,
        request: &ModuleCertificateRequest,
    ) -> Result<Certificate, IssueError>;
}

impl ModuleCertificateRequest {
    /// Issues this request with the unit's own key, under its certificate from
    /// the central system (the default issuer).
    pub fn issue_with_unit_key(&self, unit: &UnitCredentials) -> Result<Certificate, IssueError> {
        issue::module_cert(
            IssuerKey {
                cert: &unit.cert_by_central,
                key: &unit.key,
            },
            &self.serial,
            &self.public_key,
            &self.nonce,
            self.validity,
        )
    }
}

struct UnitKeyIssuer;

impl ModuleCertificateIssuer for UnitKeyIssuer {
    fn issue(
        &self,
        unit: &UnitCredentials,
        request: &ModuleCertificateRequest,
    ) -> Result<Certificate, IssueError> {
        request.issue_with_unit_key(unit)
    }
}

/// A module certificate the unit has issued and must journal before sending.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// Module serial.
    pub serial: String,
    /// The certificate.
    pub certificate: Certificate,
    /// The module's nonce it carries.
    pub nonce: [u8; pki::NONCE_LEN],
    /// The TAN the module proved (claim 13), by its store id: the journal
    /// consumes it in the same transaction that records this certificate,
    /// and refuses the record if the TAN is no longer open.
    pub tan: Option<i64>,
    /// The identification value the id unit gave (claims 16–18), by its
    /// store id: consumed in the same transaction that records this
    /// certificate; the record is refused if the value is no longer open.
    pub identification: Option<i64>,
}

/// A journal failure.
#[derive(Debug, thiserror::Error)]
#[error("issuance journal failure: {0}")]
pub struct JournalError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Where every issued certificate is recorded before it leaves the unit.
pub trait IssuanceJournal {
    /// Records an issued certificate durably; returns its journal id.
    fn record_issued(&mut self, issued: &IssuedCertificate) -> Result<i64, JournalError>;
    /// Marks an entry installed: the module committed it.
    fn mark_installed(&mut self, id: i64) -> Result<(), JournalError>;
    /// Marks an entry failed, with the reason.
    fn mark_failed(&mut self, id: i64, reason: &str) -> Result<(), JournalError>;

    /// The unit-wide TAN salt (claim 13), created once by the store. `None`:
    /// this journal keeps no TANs, so TAN personalizations are refused.
    fn tan_salt(&mut self) -> Result<Option<[u8; TAN_SALT_LEN]>, JournalError> {
        Ok(None)
    }

    /// Judges a module's TAN proof over `th` with [`super::tan::judge`] and
    /// commits the failure counters it asks for, atomically. A journal with
    /// no TANs has nothing a proof could match.
    fn check_tan(
        &mut self,
        serial: &str,
        th: &Digest48,
        proof: &[u8],
    ) -> Result<TanCheck, JournalError> {
        let _ = (serial, th, proof);
        Ok(TanCheck::Refused(TanRefusal::Wrong))
    }

    /// Judges an identification unit's answer to `challenge`, for the
    /// module `serial`, with [`super::identification::judge`]. A journal with
    /// no id units knows none.
    fn check_identification(
        &mut self,
        serial: &str,
        challenge: &[u8; len::CHALLENGE],
        answer: &IdentificationAnswer,
    ) -> Result<IdentificationCheck, JournalError> {
        let _ = (serial, challenge);
        Ok(IdentificationCheck::Refused(
            IdentificationRefusal::UnknownUnit(super::identification::id_hex(&answer.id)),
        ))
    }
}

/// Which check of the certificate bundle the module refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleRejection {
    /// The unit's certificate over the central key.
    #[error("the unit's certificate over the central key does not verify: {0}")]
    CentralCertificate(PkiError),
    /// The unit's certificate issued by the central system.
    #[error("the unit certificate is not signed by the central system: {0}")]
    UnitCertificate(PkiError),
    /// The unit's central-issued certificate is for another key or subject.
    #[error("the unit certificate from the central system is for another unit")]
    UnitCertificateForeign,
    /// The module certificate.
    #[error("the module certificate does not verify: {0}")]
    ModuleCertificate(PkiError),
    /// The module certificate is for another key.
    #[error("the module certificate is for another key")]
    ModuleKeyMismatch,
    /// The module certificate lacks this session's nonce.
    #[error("the module certificate does not carry this personalization's nonce")]
    NonceMismatch,
    /// The module certificate names another module.
    #[error("the module certificate names another module")]
    SerialMismatch,
    /// No instant exists at which every certificate of the bundle is valid.
    #[error("the certificates of the bundle have no common validity period")]
    NoCommonValidity,
    /// Local checks pass; the module still refused.
    #[error("the module refused the bundle (6982) for a reason the unit cannot reproduce")]
    Unexplained,
}

/// Why the module refused the unit in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnitRejection {
    /// The module's checking key does not verify the unit's certificate.
    #[error("its certificate is not signed by the manufacturer checking key")]
    NotSignedByManufacturer,
    /// The unit's certificate expired before the module's time watermark.
    #[error("its certificate has expired")]
    Expired,
    /// The unit's signature or key confirmation failed.
    #[error("its authentication failed")]
    AuthenticationFailed,
}

/// Why the unit refused the module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleCheck {
    /// The identity certificate is not a module identity issued by the manufacturer.
    #[error("its identity certificate is not issued by the manufacturer: {0}")]
    IdentityCertificate(PkiError),
    /// The identity certificate names another serial than the module reports.
    #[error("its identity certificate names another module")]
    SerialMismatch,
    /// The transcript signature by the identity key failed (claim 8).
    #[error("its identity signature does not verify")]
    IdentitySignature,
    /// Key confirmation failed.
    #[error("its key confirmation does not verify")]
    KeyConfirmation,
    /// The proof of possession of the new module key failed.
    #[error("its proof of possession of the new key does not verify")]
    Possession,
}

/// A personalization failure, precise enough for an operator to act on.
#[derive(Debug, thiserror::Error)]
pub enum PersonalizeError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The module answered a command with an error status.
    #[error(transparent)]
    Status(#[from] super::Refused),
    /// The module speaks another version of the command set.
    #[error("module speaks command-set version {0}; this unit speaks version 1")]
    UnsupportedVersion(u8),
    /// The module has no identity certificate yet.
    #[error("module is not manufactured yet (state MANUFACTURED): run the manufacturer first")]
    NotManufactured,
    /// The module did not accept the unit.
    #[error("module rejected the personalization unit: {0}")]
    UnitRejected(UnitRejection),
    /// The module failed the unit's checks.
    #[error("module is not authentic: {0}")]
    ModuleNotAuthentic(ModuleCheck),
    /// The module refused the certificates.
    #[error("module rejected the certificates: {0}")]
    CertificatesRejected(BundleRejection),
    /// Secure messaging failed; the channel is closed.
    #[error("secure channel failure in {0}: the channel is closed")]
    ChannelClosed(&'static str),
    /// A response the unit cannot decode.
    #[error("malformed response to {0}")]
    Malformed(&'static str),
    /// The state machine was driven out of order.
    #[error("personalization flow driven out of order")]
    OutOfOrder,
    /// Issuing the module certificate failed.
    #[error("issuing the module certificate failed: {0}")]
    Issue(#[from] IssueError),
    /// The journal failed; nothing was sent.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The unit's own credentials are inconsistent.
    #[error("personalization unit misconfigured: {0}")]
    Credentials(#[from] CredentialsError),
    /// The OS random generator failed.
    #[error("random generator failure")]
    Random,
    /// The user PIN in the options is not 4 to 16 bytes long.
    #[error("the user PIN must be 4 to 16 bytes long")]
    InvalidPin,
    /// The TAN in the options is not 4 to 16 bytes long.
    #[error("the TAN must be 4 to 16 bytes long")]
    InvalidTan,
    /// Both a TAN and entry at the PIN pad were asked for.
    #[error("a TAN was given and entry at the reader's PIN pad was asked for: choose one")]
    TanTwice,
    /// Entry at the PIN pad was asked for and the reader has no PIN pad.
    #[error(
        "the TAN was to be entered at the reader's PIN pad, but the reader offers no \
         secure PIN entry (FEATURE_VERIFY_PIN_DIRECT)"
    )]
    NoPinPad,
    /// The VERIFY of the TAN through the reader's PIN pad failed: the
    /// reader's own status (`64xx`, `6B80`) or the card's.
    #[error("TAN entry at the module's input unit (the reader's PIN pad, or the relay) failed: {sw:04X} ({meaning})", meaning = pin_pad_status_meaning(*sw))]
    TanAtPinPad {
        /// SW1-SW2 from the reader or the card.
        sw: u16,
    },
    /// The unit's policy requires a TAN and none was entered.
    #[error("this personalization unit requires a TAN: enter the TAN issued for this module")]
    TanRequired,
    /// A TAN was entered but the unit's journal keeps no TANs.
    #[error("a TAN was entered but this unit's journal keeps no TANs")]
    TanUnsupported,
    /// The module holds no TAN for the proof (it was reset or deselected).
    #[error("the module holds no TAN (was the card reset after the TAN was entered?)")]
    TanNotEntered,
    /// The module refuses further TAN proofs until a personalization completes.
    #[error(
        "the module refuses further TAN proofs (6983): it gave {limit} since its last \
         completed personalization; personalize it once without a TAN at a unit that \
         does not require one, or return it to the issuer",
        limit = proto::TAN_PROOF_LIMIT
    )]
    ModuleTanBlocked,
    /// The unit refused the module's TAN proof; failures were counted.
    #[error("TAN refused: {0}")]
    TanRefused(TanRefusal),
    /// The unit requires an identification and the driver has no id unit.
    #[error(
        "this personalization unit requires an identification unit: connect one \
         (--idunit-module DIR or --idunit-reader NAME)"
    )]
    IdentificationUnavailable,
    /// Obtaining the identification from the id unit failed.
    #[error("identification unit: {0}")]
    IdUnit(#[from] IdUnitError),
    /// The module holds no identification answer (it was handed none, or was reset).
    #[error(
        "the module holds no identification (6A88): the identification unit's answer \
         was not handed to it, or the module was reset"
    )]
    IdentificationNotHanded,
    /// The module forwarded something that is not an id unit's answer.
    #[error("the identification the module forwarded is malformed")]
    IdentificationMalformed,
    /// The unit refused the identification; nothing was issued.
    #[error("identification refused: {0}")]
    IdentificationRefused(IdentificationRefusal),
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Send this command (header and data field) and feed the response back.
    Send {
        /// CLA INS P1 P2.
        header: [u8; 4],
        /// Command data field.
        data: Vec<u8>,
    },
    /// Record this certificate in the journal, then call [`Personalization::recorded`].
    Record(Box<IssuedCertificate>),
    /// Have the reader send the VERIFY `header` with the `digits` the user
    /// types on its PIN pad ([`super::CardLink::verify_at_pin_pad`]), then
    /// feed the response to [`Personalization::on_response`].
    VerifyAtPinPad {
        /// CLA INS P1 P2 of the VERIFY.
        header: [u8; 4],
        /// How many digits the pad asks for.
        digits: u8,
    },
    /// Judge this TAN proof with the unit's TAN store
    /// ([`IssuanceJournal::check_tan`]), then call [`Personalization::tan_checked`].
    CheckTan {
        /// The module serial (authenticated by the handshake).
        serial: String,
        /// This channel's transcript hash.
        th: Digest48,
        /// The module's proof.
        proof: [u8; len::TAN_PROOF],
    },
    /// Obtain the identification unit's answer to `challenge` and hand it
    /// to the module over the local interface (plain PUT DATA
    /// [`identification_handover_header`]), then call
    /// [`Personalization::identification_handed`].
    Identify {
        /// The unit's fresh challenge for this personalization.
        challenge: [u8; len::CHALLENGE],
    },
    /// Judge the identification the module forwarded with the unit's store
    /// ([`IssuanceJournal::check_identification`]), then call
    /// [`Personalization::identification_checked`].
    CheckIdentification {
        /// The module serial (authenticated by the handshake).
        serial: String,
        /// The unit's challenge.
        challenge: [u8; len::CHALLENGE],
        /// The id unit's answer, as the module forwarded it.
        answer: Box<IdentificationAnswer>,
    },
    /// The module accepted the direct-connection offer (claim 15): move the
    /// transport onto the module's direct connection
    /// ([`Transport::switch_to_direct`]), then call
    /// [`Personalization::switched_to_direct`]. Every later command is still
    /// under this channel's secure messaging.
    SwitchToDirect,
    /// Finished; the module is OPERATING.
    Done,
}

enum State {
    Select,
    EnterTan,
    Open,
    Confirm,
    OfferDirect,
    AwaitSwitch,
    ProveTan,
    AwaitTanCheck,
    Identify,
    AwaitHandover,
    FetchIdentification,
    AwaitIdentificationCheck,
    Terminate,
    Generate,
    Issue,
    AwaitRecord,
    Install,
    Done,
}

struct Handshake {
    secret: Zeroizing<NonZeroScalar>,
    point: Vec<u8>,
    challenge: [u8; len::CHALLENGE],
}

struct Channel {
    sm: SecureMessaging,
    th: Digest48,
    nonce: [u8; pki::NONCE_LEN],
}

/// The unit's side of one personalization.
pub struct Personalization<'u> {
    unit: &'u UnitCredentials,
    options: PersonalizationOptions,
    state: State,
    serial: Option<String>,
    lifecycle_before: Option<Lifecycle>,
    handshake: Option<Handshake>,
    pending_confirmation: Option<(Vec<u8>, Digest48, [u8; pki::NONCE_LEN], SessionKeys)>,
    channel: Option<Channel>,
    module_point: Option<Vec<u8>>,
    issued: Option<IssuedCertificate>,
    last_header: [u8; 4],
    reset_only: bool,
    tan_salt: Option<[u8; TAN_SALT_LEN]>,
    tan_proof: Option<[u8; len::TAN_PROOF]>,
    tan_id: Option<i64>,
    id_challenge: Option<[u8; len::CHALLENGE]>,
    id_answer: Option<IdentificationAnswer>,
    id_value: Option<i64>,
    direct: DirectOutcome,
}

/// What became of the direct-connection offer (claim 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectOutcome {
    /// None was offered.
    #[default]
    NotOffered,
    /// The module has no network of its own (`6A81`): the run stayed on its
    /// first path.
    Declined,
    /// The run moved onto the module's direct connection after the handshake.
    Switched,
}

impl<'u> Personalization<'u> {
    /// A flow that only re-enters PERSONALIZATION (claim 2): SELECT, the
    /// handshake, TERMINATE. The module key and operational certificates are erased.
    pub fn reset(unit: &'u UnitCredentials) -> Result<Self, PersonalizeError> {
        let mut flow = Self::new(unit, PersonalizationOptions::default())?;
        flow.reset_only = true;
        Ok(flow)
    }

    /// Starts a personalization with `unit`'s credentials.
    pub fn new(
        unit: &'u UnitCredentials,
        options: PersonalizationOptions,
    ) -> Result<Self, PersonalizeError> {
        unit.check()?;
        if options.variation.is_empty() || options.variation.len() > len::VARIATION_MAX {
            return Err(PersonalizeError::Malformed(
                "the variation value (must be 1 to 64 bytes)",
            ));
        }
        if options
            .pin
            .as_ref()
            .is_some_and(|pin| !(len::PIN_MIN..=len::PIN_MAX).contains(&pin.len()))
        {
            return Err(PersonalizeError::InvalidPin);
        }
        match &options.tan {
            Some(_) if options.tan_at_pin_pad => return Err(PersonalizeError::TanTwice),
            Some(tan) if !tan_length_ok(tan) => return Err(PersonalizeError::InvalidTan),
            None if options.require_tan && !options.tan_at_pin_pad => {
                return Err(PersonalizeError::TanRequired);
            }
            _ => {}
        }
        Ok(Self {
            unit,
            options,
            state: State::Select,
            serial: None,
            lifecycle_before: None,
            handshake: None,
            pending_confirmation: None,
            channel: None,
            module_point: None,
            issued: None,
            last_header: [0; 4],
            reset_only: false,
            tan_salt: None,
            tan_proof: None,
            tan_id: None,
            id_challenge: None,
            id_answer: None,
            id_value: None,
            direct: DirectOutcome::NotOffered,
        })
    }

    /// Whether this flow proves a TAN: then [`Self::set_tan_salt`] must be
    /// called before the flow runs.
    pub fn uses_tan(&self) -> bool {
        self.options.tan.is_some() || self.options.tan_at_pin_pad
    }

    /// Whether the TAN is entered at the reader's PIN pad
    /// ([`Action::VerifyAtPinPad`]): the driver needs a transport with one.
    pub fn tan_at_pin_pad(&self) -> bool {
        self.options.tan_at_pin_pad && !self.reset_only
    }

    /// The unit's TAN salt, from its TAN store.
    pub fn set_tan_salt(&mut self, salt: [u8; TAN_SALT_LEN]) {
        self.tan_salt = Some(salt);
    }

    /// The result of [`Action::CheckTan`]: continues on an accepted TAN,
    /// fails the flow (nothing issued) on a refusal.
    pub fn tan_checked(&mut self, check: TanCheck) -> Result<(), PersonalizeError> {
        if !matches!(self.state, State::AwaitTanCheck) {
            return Err(PersonalizeError::OutOfOrder);
        }
        match check {
            TanCheck::Accepted(id) => {
                self.tan_id = Some(id);
                self.state = self.after_tan();
                Ok(())
            }
            TanCheck::Refused(refusal) => {
                self.state = State::Done;
                self.channel = None;
                Err(PersonalizeError::TanRefused(refusal))
            }
        }
    }

    /// Whether this flow asks an identification unit ([`Action::Identify`]).
    pub fn uses_identification(&self) -> bool {
        self.options.require_identification && !self.reset_only
    }

    /// The driver handed the id unit's answer to the module
    /// ([`Action::Identify`]); the unit fetches it next.
    pub fn identification_handed(&mut self) -> Result<(), PersonalizeError> {
        if !matches!(self.state, State::AwaitHandover) {
            return Err(PersonalizeError::OutOfOrder);
        }
        self.state = State::FetchIdentification;
        Ok(())
    }

    /// The result of [`Action::CheckIdentification`]: continues on an
    /// accepted identification, fails the flow (nothing issued) otherwise.
    pub fn identification_checked(
        &mut self,
        check: IdentificationCheck,
    ) -> Result<(), PersonalizeError> {
        if !matches!(self.state, State::AwaitIdentificationCheck) {
            return Err(PersonalizeError::OutOfOrder);
        }
        self.id_answer = None;
        match check {
            IdentificationCheck::Accepted(id) => {
                self.id_value = Some(id);
                self.state = self.after_authentication();
                Ok(())
            }
            IdentificationCheck::Refused(refusal) => {
                self.state = State::Done;
                self.channel = None;
                Err(PersonalizeError::IdentificationRefused(refusal))
            }
        }
    }

    /// The driver moved the transport onto the direct connection
    /// ([`Action::SwitchToDirect`]); the run goes on there.
    pub fn switched_to_direct(&mut self) -> Result<(), PersonalizeError> {
        if !matches!(self.state, State::AwaitSwitch) {
            return Err(PersonalizeError::OutOfOrder);
        }
        self.direct = DirectOutcome::Switched;
        self.state = self.after_channel();
        Ok(())
    }

    /// What became of the direct-connection offer.
    pub fn direct_outcome(&self) -> DirectOutcome {
        self.direct
    }

    /// Right after the key confirmation: the direct-connection offer if
    /// one is configured, else the TAN step.
    fn after_confirmation(&self) -> State {
        if self.options.direct.is_some() && !self.reset_only {
            State::OfferDirect
        } else {
            self.after_channel()
        }
    }

    /// Once the channel is on its final path: the TAN proof, if a TAN was
    /// entered, before anything changes on the module.
    fn after_channel(&self) -> State {
        if self.uses_tan() && !self.reset_only {
            State::ProveTan
        } else {
            self.after_tan()
        }
    }

    /// After the channel and the TAN step: the identification step, if the
    /// policy asks for it, before anything changes on the module.
    fn after_tan(&self) -> State {
        if self.uses_identification() {
            State::Identify
        } else {
            self.after_authentication()
        }
    }

    fn after_authentication(&self) -> State {
        if self.reset_only || self.lifecycle_before == Some(Lifecycle::Operating) {
            State::Terminate
        } else {
            State::Generate
        }
    }

    /// The module serial, once known.
    pub fn serial(&self) -> Option<&str> {
        self.serial.as_deref()
    }

    /// The lifecycle the module reported when selected.
    pub fn lifecycle_before(&self) -> Option<Lifecycle> {
        self.lifecycle_before
    }

    /// The certificate issued in this run, once issued.
    pub fn issued(&self) -> Option<&IssuedCertificate> {
        self.issued.as_ref()
    }

    /// The next action.
    pub fn next_action(&mut self) -> Result<Action, PersonalizeError> {
        let action = match self.state {
            State::Select => plain([0x00, ins::SELECT, 0x04, 0x00], proto::AID.to_vec()),
            State::EnterTan if self.options.tan_at_pin_pad => {
                // The reader fills the data field from its pad: the same
                // VERIFY, the same local interface, no TAN on the host.
                Action::VerifyAtPinPad {
                    header: [0x00, ins::VERIFY, proto::P1_VERIFY, proto::TAN_REF],
                    digits: TAN_DIGITS,
                }
            }
            State::EnterTan => {
                let tan = self
                    .options
                    .tan
                    .as_ref()
                    .ok_or(PersonalizeError::OutOfOrder)?;
                // The local interface only: this APDU goes to the module
                // beside the user, never over a long-distance link.
                plain(
                    [0x00, ins::VERIFY, proto::P1_VERIFY, proto::TAN_REF],
                    tan.to_vec(),
                )
            }
            State::ProveTan => {
                let salt = self.tan_salt.ok_or(PersonalizeError::TanUnsupported)?;
                let data = tlv::encode(tag::DYN_AUTH, &tlv::encode(tag::TAN_SALT, &salt));
                self.secured(
                    [CLA_SM, ins::INTERNAL_AUTHENTICATE, 0, proto::TAN_REF],
                    &data,
                )?
            }
            State::AwaitTanCheck => {
                let serial = self.serial.clone().ok_or(PersonalizeError::OutOfOrder)?;
                let th = self
                    .channel
                    .as_ref()
                    .ok_or(PersonalizeError::OutOfOrder)?
                    .th;
                let proof = self.tan_proof.ok_or(PersonalizeError::OutOfOrder)?;
                Action::CheckTan { serial, th, proof }
            }
            State::Identify => {
                let mut challenge = [0u8; len::CHALLENGE];
                getrandom::fill(&mut challenge).map_err(|_| PersonalizeError::Random)?;
                self.id_challenge = Some(challenge);
                self.state = State::AwaitHandover;
                Action::Identify { challenge }
            }
            State::AwaitHandover => return Err(PersonalizeError::OutOfOrder),
            State::FetchIdentification => {
                let [p1, p2] = identification_tag_bytes();
                self.secured([CLA_SM, ins::GET_DATA, p1, p2], &[])?
            }
            State::AwaitIdentificationCheck => {
                let challenge = self.id_challenge.ok_or(PersonalizeError::OutOfOrder)?;
                let answer = self.id_answer.clone().ok_or(PersonalizeError::OutOfOrder)?;
                Action::CheckIdentification {
                    serial: self.serial.clone().ok_or(PersonalizeError::OutOfOrder)?,
                    challenge,
                    answer: Box::new(answer),
                }
            }
            State::Open => {
                let mut randomness = Zeroizing::new([0u8; 48]);
                getrandom::fill(&mut randomness[..]).map_err(|_| PersonalizeError::Random)?;
                let secret = Zeroizing::new(
                    derive_scalar(&randomness, &[], b"ephemeral")
                        .ok_or(PersonalizeError::Random)?,
                );
                let point = encode_point(&PublicKey::from_secret_scalar(&secret));
                let mut challenge = [0u8; len::CHALLENGE];
                getrandom::fill(&mut challenge).map_err(|_| PersonalizeError::Random)?;
                let mut template = Vec::with_capacity(1024);
                tlv::write(
                    &mut template,
                    tag::AUTH_CERTIFICATE,
                    self.unit.cert_by_manufacturer.der(),
                );
                tlv::write(&mut template, tag::AUTH_EPHEMERAL, &point);
                tlv::write(&mut template, tag::AUTH_CHALLENGE, &challenge);
                self.handshake = Some(Handshake {
                    secret,
                    point,
                    challenge,
                });
                plain(
                    auth_header(proto::AUTH_STEP_OPEN),
                    tlv::encode(tag::DYN_AUTH, &template),
                )
            }
            State::Confirm => {
                let (_, th, _, keys) = self
                    .pending_confirmation
                    .as_ref()
                    .ok_or(PersonalizeError::OutOfOrder)?;
                let digest = channel::signed_digest(Role::Unit, th);
                let signature: p384::ecdsa::Signature = self
                    .unit
                    .key
                    .sign_prehash_with_rng(&mut getrandom::SysRng, &digest)
                    .map_err(|_| PersonalizeError::Random)?;
                let confirmation = keys
                    .confirmation(Role::Unit, th)
                    .map_err(|_| PersonalizeError::Random)?;
                let mut template = Vec::new();
                tlv::write(&mut template, tag::AUTH_SIGNATURE, &signature.to_bytes());
                tlv::write(&mut template, tag::AUTH_CONFIRMATION, &confirmation);
                plain(
                    auth_header(proto::AUTH_STEP_CONFIRM),
                    tlv::encode(tag::DYN_AUTH, &template),
                )
            }
            State::OfferDirect => {
                let offer = self
                    .options
                    .direct
                    .as_ref()
                    .ok_or(PersonalizeError::OutOfOrder)?
                    .encode();
                let [p1, p2] = direct_tag_bytes();
                self.secured([CLA_SM, ins::PUT_DATA_OBJECT, p1, p2], &offer)?
            }
            State::AwaitSwitch => Action::SwitchToDirect,
            State::Terminate => self.secured([CLA_SM, ins::TERMINATE, 0, 0], &[])?,
            State::Generate => {
                let data = tlv::encode(tag::VARIATION, &self.options.variation);
                self.secured(
                    [
                        CLA_SM,
                        ins::GENERATE_KEY,
                        proto::P1_GENERATE,
                        proto::KEY_REF_MODULE,
                    ],
                    &data,
                )?
            }
            State::Issue => {
                let issued = self.issue()?;
                self.state = State::AwaitRecord;
                Action::Record(Box::new(issued))
            }
            State::AwaitRecord => return Err(PersonalizeError::OutOfOrder),
            State::Install => {
                let issued = self.issued.as_ref().ok_or(PersonalizeError::OutOfOrder)?;
                // Wiped after sealing: it may carry the PIN.
                let mut data = Zeroizing::new(Vec::with_capacity(2048));
                tlv::write(&mut data, tag::MODULE_CERT, issued.certificate.der());
                tlv::write(&mut data, tag::UNIT_CERT, self.unit.cert_by_central.der());
                tlv::write(
                    &mut data,
                    tag::CENTRAL_CERT,
                    self.unit.central_delivery.der(),
                );
                if let Some(pin) = &self.options.pin {
                    tlv::write(&mut data, tag::USER_PIN, pin);
                }
                let [p1, p2] = proto::PUT_DATA_TLV.to_be_bytes();
                self.secured([CLA_SM, ins::PUT_DATA, p1, p2], &data)?
            }
            State::Done => Action::Done,
        };
        if let Action::Send { header, .. } = &action {
            self.last_header = *header;
        }
        Ok(action)
    }

    /// Confirms that the certificate from [`Action::Record`] is durably journaled.
    pub fn recorded(&mut self) -> Result<(), PersonalizeError> {
        match self.state {
            State::AwaitRecord => {
                self.state = State::Install;
                Ok(())
            }
            _ => Err(PersonalizeError::OutOfOrder),
        }
    }

    /// Feeds the response to the last [`Action::Send`].
    pub fn on_response(&mut self, response: &Response) -> Result<(), PersonalizeError> {
        match self.state {
            State::Select => self.on_select(response),
            State::Open => self.on_open(response),
            State::Confirm => {
                if response.sw != sw::OK {
                    return Err(match response.sw {
                        sw::AUTHENTICATION_FAILED => {
                            PersonalizeError::UnitRejected(UnitRejection::AuthenticationFailed)
                        }
                        other => status("EXTERNAL AUTHENTICATE", other),
                    });
                }
                let (_, th, nonce, keys) = self
                    .pending_confirmation
                    .take()
                    .ok_or(PersonalizeError::OutOfOrder)?;
                self.channel = Some(Channel {
                    sm: keys.into_secure_messaging(),
                    th,
                    nonce,
                });
                self.state = self.after_confirmation();
                Ok(())
            }
            State::OfferDirect => {
                const STEP: &str = "PUT DATA (direct connection)";
                let (_, inner) = self.open_secured(response, STEP)?;
                match inner {
                    sw::OK => self.state = State::AwaitSwitch,
                    sw::FUNC_NOT_SUPPORTED => {
                        self.direct = DirectOutcome::Declined;
                        self.state = self.after_channel();
                    }
                    other => return Err(status(STEP, other)),
                }
                Ok(())
            }
            State::EnterTan => {
                if response.sw != sw::OK {
                    return Err(match response.sw {
                        // The reader's own 64xx, or the card's answer to
                        // the VERIFY the reader built: either way the pad's.
                        other if self.options.tan_at_pin_pad => {
                            PersonalizeError::TanAtPinPad { sw: other }
                        }
                        sw::WRONG_LENGTH => PersonalizeError::InvalidTan,
                        other => status("VERIFY (TAN)", other),
                    });
                }
                self.state = State::Open;
                Ok(())
            }
            State::ProveTan => self.on_tan_proof(response),
            State::FetchIdentification => self.on_identification(response),
            State::Terminate => {
                let (_, inner) = self.open_secured(response, "TERMINATE")?;
                if inner != sw::OK {
                    return Err(status("TERMINATE", inner));
                }
                self.state = if self.reset_only {
                    State::Done
                } else {
                    State::Generate
                };
                Ok(())
            }
            State::Generate => self.on_generate(response),
            State::Install => {
                let (_, inner) = self.open_secured(response, "PUT DATA (certificates)")?;
                match inner {
                    sw::OK => {
                        self.state = State::Done;
                        Ok(())
                    }
                    sw::SECURITY_STATUS => Err(PersonalizeError::CertificatesRejected(
                        self.diagnose_bundle(),
                    )),
                    other => Err(status("PUT DATA (certificates)", other)),
                }
            }
            State::Issue
            | State::AwaitRecord
            | State::AwaitTanCheck
            | State::Identify
            | State::AwaitHandover
            | State::AwaitIdentificationCheck
            | State::AwaitSwitch
            | State::Done => Err(PersonalizeError::OutOfOrder),
        }
    }

    fn on_select(&mut self, response: &Response) -> Result<(), PersonalizeError> {
        if response.sw != sw::OK {
            return Err(status("SELECT", response.sw));
        }
        let info =
            SelectInfo::parse(&response.data).ok_or(PersonalizeError::Malformed("SELECT"))?;
        if info.version != proto::COMMAND_SET_VERSION {
            return Err(PersonalizeError::UnsupportedVersion(info.version));
        }
        // The FCI is not authenticated: it only picks the flow. The serial is
        // checked against the identity certificate, and the lifecycle by what
        // the module accepts inside the channel.
        self.lifecycle_before = Some(info.lifecycle);
        if info.lifecycle == Lifecycle::Manufactured {
            return Err(PersonalizeError::NotManufactured);
        }
        self.serial = info.serial.map(|serial| pki::serial_hex(&serial));
        self.state = if self.uses_tan() && !self.reset_only {
            State::EnterTan
        } else {
            State::Open
        };
        Ok(())
    }

    fn on_tan_proof(&mut self, response: &Response) -> Result<(), PersonalizeError> {
        const STEP: &str = "INTERNAL AUTHENTICATE (TAN)";
        let (data, inner) = self.open_secured(response, STEP)?;
        match inner {
            sw::OK => {}
            sw::AUTH_METHOD_BLOCKED => return Err(PersonalizeError::ModuleTanBlocked),
            sw::DATA_NOT_FOUND => return Err(PersonalizeError::TanNotEntered),
            other => return Err(status(STEP, other)),
        }
        let malformed = |_| PersonalizeError::Malformed(STEP);
        let template = tlv::decode_single(&data, tag::DYN_AUTH).map_err(malformed)?;
        let [proof] = tlv::decode_fields(template, [tag::TAN_PROOF]).map_err(malformed)?;
        self.tan_proof = Some(tlv::required_array(proof, tag::TAN_PROOF).map_err(malformed)?);
        self.state = State::AwaitTanCheck;
        Ok(())
    }

    fn on_identification(&mut self, response: &Response) -> Result<(), PersonalizeError> {
        const STEP: &str = "GET DATA (identification)";
        let (data, inner) = self.open_secured(response, STEP)?;
        match inner {
            sw::OK => {}
            sw::DATA_NOT_FOUND => return Err(PersonalizeError::IdentificationNotHanded),
            other => return Err(status(STEP, other)),
        }
        let answer = IdentificationAnswer::parse(&data)
            .map_err(|_| PersonalizeError::IdentificationMalformed)?;
        self.id_answer = Some(answer);
        self.state = State::AwaitIdentificationCheck;
        Ok(())
    }

    fn on_open(&mut self, response: &Response) -> Result<(), PersonalizeError> {
        const STEP: &str = "MUTUAL AUTHENTICATE";
        if response.sw != sw::OK {
            return Err(match response.sw {
                sw::SECURITY_STATUS => PersonalizeError::UnitRejected(self.diagnose_unit()),
                other => status(STEP, other),
            });
        }
        let handshake = self.handshake.take().ok_or(PersonalizeError::OutOfOrder)?;
        let malformed = |_| PersonalizeError::Malformed(STEP);
        let template = tlv::decode_single(&response.data, tag::DYN_AUTH).map_err(malformed)?;
        let [cert, ephemeral, challenge, nonce, signature, confirmation] = tlv::decode_fields(
            template,
            [
                tag::AUTH_CERTIFICATE,
                tag::AUTH_EPHEMERAL,
                tag::AUTH_CHALLENGE,
                tag::AUTH_NONCE,
                tag::AUTH_SIGNATURE,
                tag::AUTH_CONFIRMATION,
            ],
        )
        .map_err(malformed)?;
        let identity_der = tlv::required(cert, tag::AUTH_CERTIFICATE).map_err(malformed)?;
        let module_ephemeral = tlv::required(ephemeral, tag::AUTH_EPHEMERAL).map_err(malformed)?;
        let module_challenge: [u8; len::CHALLENGE] =
            tlv::required_array(challenge, tag::AUTH_CHALLENGE).map_err(malformed)?;
        let nonce: [u8; pki::NONCE_LEN] =
            tlv::required_array(nonce, tag::AUTH_NONCE).map_err(malformed)?;
        let signature = tlv::required(signature, tag::AUTH_SIGNATURE).map_err(malformed)?;
        let confirmation =
            tlv::required(confirmation, tag::AUTH_CONFIRMATION).map_err(malformed)?;

        // Claim 8: the module proves its identity key, certified by the manufacturer.
        let not_authentic = PersonalizeError::ModuleNotAuthentic;
        let identity = Certificate::from_der(identity_der)
            .map_err(|err| not_authentic(ModuleCheck::IdentityCertificate(err)))?;
        if identity.role() != pki::Role::ModuleIdentity {
            return Err(not_authentic(ModuleCheck::IdentityCertificate(
                PkiError::WrongRole {
                    expected: pki::Role::ModuleIdentity,
                },
            )));
        }
        pki::verify_issued_by(&identity, &self.unit.manufacturer_root, 0)
            .and_then(|()| pki::check_not_expired(&identity, unix_now()))
            .map_err(|err| not_authentic(ModuleCheck::IdentityCertificate(err)))?;
        if identity.module_serial() != self.serial.as_deref() {
            return Err(not_authentic(ModuleCheck::SerialMismatch));
        }
        let peer = parse_point(module_ephemeral).map_err(|_| PersonalizeError::Malformed(STEP))?;
        let th = HandshakeValues {
            unit_cert_hash: &sha384(self.unit.cert_by_manufacturer.der()),
            unit_ephemeral: &handshake.point,
            unit_challenge: &handshake.challenge,
            module_cert_hash: &sha384(identity_der),
            module_ephemeral,
            module_challenge: &module_challenge,
            module_nonce: &nonce,
        }
        .transcript_hash(ChannelKind::Personalization);
        channel::verify_raw_signature(
            identity.public_key(),
            &channel::signed_digest(Role::Module, &th),
            signature,
        )
        .map_err(|_| not_authentic(ModuleCheck::IdentitySignature))?;
        let keys = SessionKeys::derive(&handshake.secret, &peer, &th);
        keys.verify_confirmation(Role::Module, &th, confirmation)
            .map_err(|_| not_authentic(ModuleCheck::KeyConfirmation))?;
        self.pending_confirmation = Some((identity_der.to_vec(), th, nonce, keys));
        self.state = State::Confirm;
        Ok(())
    }

    fn on_generate(&mut self, response: &Response) -> Result<(), PersonalizeError> {
        const STEP: &str = "GENERATE ASYMMETRIC KEY PAIR";
        let (data, inner) = self.open_secured(response, STEP)?;
        if inner != sw::OK {
            return Err(status(STEP, inner));
        }
        let malformed = |_| PersonalizeError::Malformed(STEP);
        let [key, proof] =
            tlv::decode_fields(&data, [tag::PUBLIC_KEY, tag::SIGNATURE]).map_err(malformed)?;
        let key = tlv::required(key, tag::PUBLIC_KEY).map_err(malformed)?;
        let point = tlv::decode_single(key, tag::EC_POINT).map_err(malformed)?;
        let public = parse_point(point).map_err(|_| PersonalizeError::Malformed(STEP))?;
        let proof = tlv::required(proof, tag::SIGNATURE).map_err(malformed)?;
        let channel = self.channel.as_ref().ok_or(PersonalizeError::OutOfOrder)?;
        let digest = channel::possession_digest(&channel.th, point, &self.options.variation);
        channel::verify_raw_signature(&p384::ecdsa::VerifyingKey::from(&public), &digest, proof)
            .map_err(|_| PersonalizeError::ModuleNotAuthentic(ModuleCheck::Possession))?;
        self.module_point = Some(point.to_vec());
        self.state = State::Issue;
        Ok(())
    }

    fn issue(&mut self) -> Result<IssuedCertificate, PersonalizeError> {
        let channel = self.channel.as_ref().ok_or(PersonalizeError::OutOfOrder)?;
        let serial = self.serial.clone().ok_or(PersonalizeError::OutOfOrder)?;
        let public_key = self
            .module_point
            .clone()
            .ok_or(PersonalizeError::OutOfOrder)?;
        let request = ModuleCertificateRequest {
            serial: serial.clone(),
            public_key,
            nonce: channel.nonce,
            validity: nested_validity(&self.unit.cert_by_central, self.options.validity_years),
        };
        let certificate = match &self.options.issuer {
            Some(issuer) => issuer.issue(self.unit, &request)?,
            None => UnitKeyIssuer.issue(self.unit, &request)?,
        };
        let issued = IssuedCertificate {
            serial,
            certificate,
            nonce: channel.nonce,
            tan: self.tan_id,
            identification: self.id_value,
        };
        self.issued = Some(issued.clone());
        Ok(issued)
    }

    fn secured(&mut self, header: [u8; 4], data: &[u8]) -> Result<Action, PersonalizeError> {
        let channel = self.channel.as_mut().ok_or(PersonalizeError::OutOfOrder)?;
        let sealed = channel
            .sm
            .seal_command(header, data)
            .map_err(|_| PersonalizeError::ChannelClosed("sealing a command"))?;
        Ok(Action::Send {
            header,
            data: sealed,
        })
    }

    fn open_secured(
        &mut self,
        response: &Response,
        step: &'static str,
    ) -> Result<(Vec<u8>, u16), PersonalizeError> {
        if response.sw != sw::OK {
            self.channel = None;
            return Err(match response.sw {
                sw::SM_INCORRECT | sw::SECURITY_STATUS => PersonalizeError::ChannelClosed(step),
                other => status(step, other),
            });
        }
        let header = self.last_header;
        let channel = self.channel.as_mut().ok_or(PersonalizeError::OutOfOrder)?;
        match channel.sm.open_response(header, &response.data) {
            Ok(opened) => Ok(opened),
            Err(_) => {
                self.channel = None;
                Err(PersonalizeError::ChannelClosed(step))
            }
        }
    }

    fn diagnose_unit(&self) -> UnitRejection {
        let cert = &self.unit.cert_by_manufacturer;
        // Whatever the local view, a 6982 here means the module's checking key
        // did not accept the unit; expiry is the one cause the unit can tell apart.
        if pki::verify_issued_by(cert, &self.unit.manufacturer_root, 0).is_ok()
            && pki::check_not_expired(cert, unix_now()).is_err()
        {
            UnitRejection::Expired
        } else {
            UnitRejection::NotSignedByManufacturer
        }
    }

    fn diagnose_bundle(&self) -> BundleRejection {
        let unit = self.unit;
        if let Err(err) =
            pki::verify_issued_by(&unit.central_delivery, &unit.cert_by_manufacturer, 0)
        {
            return BundleRejection::CentralCertificate(err);
        }
        if unit.cert_by_central.public_key_sec1() != unit.cert_by_manufacturer.public_key_sec1()
            || unit.cert_by_central.subject_der() != unit.cert_by_manufacturer.subject_der()
        {
            return BundleRejection::UnitCertificateForeign;
        }
        if let Err(err) = pki::verify_issued_by(&unit.cert_by_central, &unit.central_delivery, 1) {
            return BundleRejection::UnitCertificate(err);
        }
        let Some(issued) = &self.issued else {
            return BundleRejection::Unexplained;
        };
        let module = &issued.certificate;
        if let Err(err) = pki::verify_issued_by(module, &unit.cert_by_central, 0) {
            return BundleRejection::ModuleCertificate(err);
        }
        if self.module_point.as_deref() != Some(module.public_key_sec1().as_slice()) {
            return BundleRejection::ModuleKeyMismatch;
        }
        if module.nonce() != self.channel.as_ref().map(|c| c.nonce) {
            return BundleRejection::NonceMismatch;
        }
        if module.module_serial() != self.serial.as_deref() {
            return BundleRejection::SerialMismatch;
        }
        let bundle = [
            module,
            &unit.cert_by_central,
            &unit.central_delivery,
            &unit.cert_by_manufacturer,
        ];
        let latest_start = bundle.iter().map(|cert| cert.not_before_unix()).max();
        let earliest_end = bundle.iter().map(|cert| cert.not_after_unix()).min();
        if latest_start > earliest_end {
            return BundleRejection::NoCommonValidity;
        }
        BundleRejection::Unexplained
    }
}

fn direct_tag_bytes() -> [u8; 2] {
    let [_, _, p1, p2] = tag::DIRECT_CONNECTION.to_be_bytes();
    [p1, p2]
}

fn identification_tag_bytes() -> [u8; 2] {
    // DF2A fits two bytes: P1-P2 of GET DATA / PUT DATA name it.
    let [_, _, p1, p2] = tag::IDENTIFICATION.to_be_bytes();
    [p1, p2]
}

/// The plain PUT DATA that hands the id unit's answer to the module over the
/// local interface: `00 DA DF 2A`.
pub fn identification_handover_header() -> [u8; 4] {
    let [p1, p2] = identification_tag_bytes();
    [0x00, ins::PUT_DATA_OBJECT, p1, p2]
}

fn plain(header: [u8; 4], data: Vec<u8>) -> Action {
    Action::Send { header, data }
}

fn auth_header(step: u8) -> [u8; 4] {
    [0x00, ins::AUTHENTICATE, proto::SUITE_P384_AES256GCM, step]
}

fn status(step: &'static str, sw: u16) -> PersonalizeError {
    PersonalizeError::Status(super::Refused { step, sw })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A validity of `years` from now, kept inside `issuer`'s validity (the module
/// requires nesting because it has no clock).
pub fn nested_validity(issuer: &Certificate, years: u32) -> Validity {
    let now = unix_now();
    let not_before = now.saturating_sub(60).max(issuer.not_before_unix());
    let not_after = now
        .saturating_add(u64::from(years) * 365 * 24 * 3600)
        .min(issuer.not_after_unix());
    Validity {
        not_before_unix: not_before,
        not_after_unix: not_after,
    }
}

/// What SELECT reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectInfo {
    /// Command-set version.
    pub version: u8,
    /// Serial, once the identity key exists.
    pub serial: Option<[u8; pki::SERIAL_LEN]>,
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
}

impl SelectInfo {
    /// Parses the FCI returned by SELECT.
    pub fn parse(fci: &[u8]) -> Option<Self> {
        let fci = tlv::decode_single(fci, tag::FCI).ok()?;
        let [aid, proprietary] =
            tlv::decode_fields(fci, [tag::FCI_AID, tag::FCI_PROPRIETARY]).ok()?;
        if aid? != proto::AID {
            return None;
        }
        let [version, serial, lifecycle] = tlv::decode_fields(
            proprietary?,
            [tag::FCI_VERSION, tag::FCI_SERIAL, tag::FCI_LIFECYCLE],
        )
        .ok()?;
        let [version] = tlv::required_array::<1>(version, tag::FCI_VERSION).ok()?;
        let serial = match serial {
            Some(bytes) => Some(bytes.try_into().ok()?),
            None => None,
        };
        let [lifecycle] = tlv::required_array::<1>(lifecycle, tag::FCI_LIFECYCLE).ok()?;
        Some(Self {
            version,
            serial,
            lifecycle: Lifecycle::from_code(lifecycle)?,
        })
    }
}

/// The outcome of a personalization run.
#[derive(Debug, Clone)]
pub struct PersonalizationReport {
    /// Module serial.
    pub serial: String,
    /// The lifecycle the module was in before.
    pub lifecycle_before: Lifecycle,
    /// The installed module certificate.
    pub certificate: Certificate,
    /// The journal id of the issuance.
    pub journal_id: i64,
    /// APDUs exchanged.
    pub apdus: u32,
    /// Logical commands (equal to `apdus` unless chaining or GET RESPONSE were needed).
    pub commands: u32,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Whether the run moved onto a direct connection (claim 15).
    pub direct: DirectOutcome,
}

/// Runs a personalization to the end over `link`, journaling the certificate
/// before it is sent and marking it installed or failed afterwards.
pub fn personalize<T: Transport>(
    link: &mut CardLink<T>,
    journal: &mut dyn IssuanceJournal,
    unit: &UnitCredentials,
    options: PersonalizationOptions,
) -> Result<PersonalizationReport, PersonalizeError> {
    personalize_with_identification(link, journal, unit, options, None)
}

/// [`personalize`], with the identification unit the user connected
/// (claims 16–18). `idunit` is asked only when the options require an
/// identification; its answer goes to the module, never to the unit directly.
pub fn personalize_with_identification<T: Transport>(
    link: &mut CardLink<T>,
    journal: &mut dyn IssuanceJournal,
    unit: &UnitCredentials,
    options: PersonalizationOptions,
    idunit: Option<&mut dyn IdentificationSource>,
) -> Result<PersonalizationReport, PersonalizeError> {
    let started = Instant::now();
    let apdus_before = link.apdu_count();
    let commands_before = link.command_count();
    let mut flow = Personalization::new(unit, options)?;
    if flow.uses_tan() {
        let salt = journal
            .tan_salt()?
            .ok_or(PersonalizeError::TanUnsupported)?;
        flow.set_tan_salt(salt);
    }
    if flow.uses_identification() && idunit.is_none() {
        return Err(PersonalizeError::IdentificationUnavailable);
    }
    // Before any APDU: a flow that holds no TAN cannot fall back to sending one.
    if flow.tan_at_pin_pad() && !link.transport_mut().has_pin_pad()? {
        return Err(PersonalizeError::NoPinPad);
    }
    let mut journal_id = None;
    let result = drive(link, journal, &mut flow, &mut journal_id, idunit);
    match (&result, journal_id) {
        (Ok(()), Some(id)) => journal.mark_installed(id)?,
        (Err(err), Some(id)) => journal.mark_failed(id, &err.to_string())?,
        _ => {}
    }
    result?;
    let issued = flow.issued().cloned().ok_or(PersonalizeError::OutOfOrder)?;
    Ok(PersonalizationReport {
        serial: issued.serial,
        lifecycle_before: flow.lifecycle_before().unwrap_or_default(),
        certificate: issued.certificate,
        journal_id: journal_id.ok_or(PersonalizeError::OutOfOrder)?,
        apdus: link.apdu_count() - apdus_before,
        commands: link.command_count() - commands_before,
        elapsed: started.elapsed(),
        direct: flow.direct_outcome(),
    })
}

fn drive<T: Transport>(
    link: &mut CardLink<T>,
    journal: &mut dyn IssuanceJournal,
    flow: &mut Personalization<'_>,
    journal_id: &mut Option<i64>,
    mut idunit: Option<&mut dyn IdentificationSource>,
) -> Result<(), PersonalizeError> {
    loop {
        match flow.next_action()? {
            Action::Send { header, data } => {
                let response = link.send(header, &data)?;
                flow.on_response(&response)?;
            }
            Action::VerifyAtPinPad { header, digits } => {
                let response = link.verify_at_pin_pad(header, digits)?;
                flow.on_response(&response)?;
            }
            Action::Record(issued) => {
                *journal_id = Some(journal.record_issued(&issued)?);
                flow.recorded()?;
            }
            Action::CheckTan { serial, th, proof } => {
                let check = journal.check_tan(&serial, &th, &proof)?;
                flow.tan_checked(check)?;
            }
            Action::Identify { challenge } => {
                let source = idunit
                    .as_deref_mut()
                    .ok_or(PersonalizeError::IdentificationUnavailable)?;
                let answer = source.authenticate(&challenge)?;
                // The local interface: the module holds it, unread, for the unit.
                let response = link.send(identification_handover_header(), &answer)?;
                if response.sw != sw::OK {
                    return Err(status("PUT DATA (identification)", response.sw));
                }
                flow.identification_handed()?;
            }
            Action::CheckIdentification {
                serial,
                challenge,
                answer,
            } => {
                let check = journal.check_identification(&serial, &challenge, &answer)?;
                flow.identification_checked(check)?;
            }
            Action::SwitchToDirect => {
                link.transport_mut().switch_to_direct()?;
                flow.switched_to_direct()?;
            }
            Action::Done => return Ok(()),
        }
    }
}

/// Re-enters PERSONALIZATION on a module through the unit's channel (claim 2).
/// Returns the APDU count.
pub fn reset_module<T: Transport>(
    link: &mut CardLink<T>,
    unit: &UnitCredentials,
) -> Result<u32, PersonalizeError> {
    let before = link.apdu_count();
    let mut flow = Personalization::reset(unit)?;
    loop {
        match flow.next_action()? {
            Action::Send { header, data } => {
                let response = link.send(header, &data)?;
                flow.on_response(&response)?;
            }
            Action::Record(_)
            | Action::VerifyAtPinPad { .. }
            | Action::CheckTan { .. }
            | Action::Identify { .. }
            | Action::CheckIdentification { .. }
            | Action::SwitchToDirect => {
                return Err(PersonalizeError::OutOfOrder);
            }
            Action::Done => return Ok(link.apdu_count() - before),
        }
    }
}

/// An authenticated secure channel to a module, outside any flow: for
/// operator tools and for tests that exercise commands under secure messaging.
pub struct OpenChannel {
    channel: Channel,
    lifecycle: Lifecycle,
}

impl OpenChannel {
    /// SELECT and the handshake with `unit`'s credentials.
    pub fn open<T: Transport>(
        link: &mut CardLink<T>,
        unit: &UnitCredentials,
    ) -> Result<Self, PersonalizeError> {
        let mut flow = Personalization::reset(unit)?;
        loop {
            if matches!(flow.state, State::Terminate | State::Generate) {
                let channel = flow.channel.take().ok_or(PersonalizeError::OutOfOrder)?;
                let lifecycle = flow.lifecycle_before.ok_or(PersonalizeError::OutOfOrder)?;
                return Ok(Self { channel, lifecycle });
            }
            match flow.next_action()? {
                Action::Send { header, data } => {
                    let response = link.send(header, &data)?;
                    flow.on_response(&response)?;
                }
                Action::Record(_)
                | Action::VerifyAtPinPad { .. }
                | Action::CheckTan { .. }
                | Action::Identify { .. }
                | Action::CheckIdentification { .. }
                | Action::SwitchToDirect
                | Action::Done => {
                    return Err(PersonalizeError::OutOfOrder);
                }
            }
        }
    }

    /// The lifecycle the module reported at SELECT.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle
    }

    /// The module's nonce for this channel.
    pub fn nonce(&self) -> [u8; pki::NONCE_LEN] {
        self.channel.nonce
    }

    /// The transcript hash of this channel.
    pub fn transcript_hash(&self) -> Digest48 {
        self.channel.th
    }

    /// Seals a command for `header` (CLA must carry the SM bits) without sending it.
    pub fn seal(&mut self, header: [u8; 4], data: &[u8]) -> Result<Vec<u8>, PersonalizeError> {
        self.channel
            .sm
            .seal_command(header, data)
            .map_err(|_| PersonalizeError::ChannelClosed("sealing a command"))
    }

    /// Opens the response to the command last sealed.
    pub fn open_response(
        &mut self,
        header: [u8; 4],
        response: &Response,
    ) -> Result<(Vec<u8>, u16), PersonalizeError> {
        if response.sw != sw::OK {
            return Err(status("a secured command", response.sw));
        }
        self.channel
            .sm
            .open_response(header, &response.data)
            .map_err(|_| PersonalizeError::ChannelClosed("opening a response"))
    }

    /// Seals, sends and opens one command. Returns the inner data and status word.
    pub fn send<T: Transport>(
        &mut self,
        link: &mut CardLink<T>,
        header: [u8; 4],
        data: &[u8],
    ) -> Result<(Vec<u8>, u16), PersonalizeError> {
        let sealed = self.seal(header, data)?;
        let response = link.send(header, &sealed)?;
        self.open_response(header, &response)
    }
}
