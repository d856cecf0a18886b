//! The security-module applet: a sans-IO state machine from command APDU to
//! response APDU over a [`KeyMemory`].
//!
//! ```text
//!            bytes ──▶ parse ──▶ chaining ──▶ SM unwrap ──▶ dispatch ──▶ SM wrap ──▶ GET RESPONSE split ──▶ bytes
//!                                                             │
//!                                     lifecycle gate (6985) ──┤── KeyMemory (keys, atomic records)
//!
//!   MANUFACTURED ──PUT DATA(root, identity cert)──▶ PERSONALIZATION ──PUT DATA(cert bundle[, PIN])──▶ OPERATING
//!                                                        ▲                                              │
//!                                                        └──────────── TERMINATE (erases) ──────────────┘
//!
//!   PERSONALIZATION channel (claim 13): VERIFY (TAN, local, volatile) ──▶ INTERNAL AUTHENTICATE
//!              (TAN proof bound to TH, counter committed first) ──▶ GENERATE ──▶ PUT DATA
//!   OPERATING: VERIFY (user PIN, counter committed before the comparison) ──▶ PSO: COMPUTE DIGITAL SIGNATURE
//!              operating channel (central system, claims 1, 4) ──PUT DATA(key set)──▶ key memory (claim 11)
//!              transaction session (key set only) ──▶ PSO: ENCIPHER (message) / DECIPHER (receipt)
//! ```
//!
//! Volatile state (the open channel, a pending chain, pending response bytes,
//! the PIN-verified flag, a TAN entered for claim 13) is dropped by
//! [`Applet::reset`], as a card reset or power loss would. The TAN proof
//! counter is persistent, in the records.

use alloc::boxed::Box;
use alloc::vec::Vec;

use p384::PublicKey;
use zeroize::Zeroize;

use crate::channel::transaction::{TransactionKeys, TransactionSession, TransactionValues};
use crate::channel::{
    self, ChannelKind, HandshakeValues, OperatingValues, Role, SecureMessaging, SessionKeys,
    derive_scalar, encode_point, parse_point, sha384,
};
use crate::direct::DirectConnection;
use crate::iso::{CLA_CHAIN, CLA_SM, Command, Response, sw};
use crate::keymem::{self, KeyMemory, KeyMemoryError, KeySetRecord, KeySlot, PinRecord, Records};
use crate::pki::{self, Certificate};
use crate::proto::{self, Lifecycle, ins, len, tag};
use crate::tlv::{self, TlvError};

/// Largest command data a chain may accumulate (a certificate bundle is ~2 KiB).
pub const MAX_CHAIN_DATA: usize = 8 * 1024;

/// An applet instance bound to one key memory.
pub struct Applet<K: KeyMemory> {
    memory: K,
    records: Records,
    serial: Option<[u8; pki::SERIAL_LEN]>,
    selected: bool,
    /// The user PIN was verified since the last reset, deselection or failed VERIFY.
    pin_verified: bool,
    /// The TAN typed at the module's input unit (claim 13), held only in
    /// volatile memory until its one proof, a reset or the next SELECT.
    tan: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// The identification unit's answer (claims 16–18), handed over the local
    /// interface and held only in volatile memory until the unit fetches it
    /// inside the channel, a reset or the next SELECT.
    identification: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// The module's runtime has a network interface of its own and will open
    /// a direct connection the unit offers (claim 15). Set by the runtime,
    /// never by an APDU.
    direct_capable: bool,
    /// A direct connection the unit offered in the channel, until the
    /// runtime takes it (volatile).
    direct: Option<DirectConnection>,
    /// Personalization channels established since power-up: the current
    /// one's number tells a direct connection whether the channel that
    /// offered it is still the one open.
    channels: u64,
    session: Session,
    chain: Option<Chain>,
    pending: Vec<u8>,
}

enum Session {
    None,
    Opened(Box<Opening>),
    Established(Box<Established>),
    /// The operating channel, waiting for the central system's confirmation.
    OperatingOpened(Box<OperatingOpening>),
    /// The operating channel, open.
    Operating(Box<SecureMessaging>),
    /// A transaction session, waiting for the central system's confirmation.
    TransactionOpened(Box<TransactionOpening>),
    /// A transaction session, open.
    Transaction(Box<TransactionState>),
}

struct OperatingOpening {
    keys: SessionKeys,
    th: channel::Digest48,
    central: Certificate,
}

struct TransactionOpening {
    keys: TransactionKeys,
    th: channel::Digest48,
}

struct TransactionState {
    session: TransactionSession,
    /// SHA-384 of the payload sealed last, until its receipt arrives.
    awaiting_receipt: Option<channel::Digest48>,
}

struct Opening {
    keys: SessionKeys,
    th: channel::Digest48,
    unit_cert: Certificate,
    nonce: [u8; pki::NONCE_LEN],
}

struct Established {
    sm: SecureMessaging,
    th: channel::Digest48,
    unit_cert: Certificate,
    nonce: [u8; pki::NONCE_LEN],
    generated: Option<PublicKey>,
    /// The unit already offered a direct connection in this channel.
    direct_offered: bool,
    /// Its number among the channels since power-up.
    number: u64,
}

struct Chain {
    header: [u8; 4],
    data: Vec<u8>,
}

/// An error inside a command handler, carrying its status word.
struct Sw(u16);

impl From<TlvError> for Sw {
    fn from(_: TlvError) -> Self {
        Sw(sw::WRONG_DATA)
    }
}

impl From<KeyMemoryError> for Sw {
    fn from(_: KeyMemoryError) -> Self {
        Sw(sw::MEMORY_FAILURE)
    }
}

/// Encoding and structure errors (DER, profile shape, extensions) are the
/// sender's malformed data, `6A80`; everything about trust (signatures, roles,
/// issuers, validity, nonce, serial, keys) is a refusal, `6982`.
impl From<pki::PkiError> for Sw {
    fn from(err: pki::PkiError) -> Self {
        use pki::PkiError::*;
        match err {
            Der(_)
            | Malformed(_)
            | TrailingData
            | UnsupportedVersion
            | UnsupportedSignatureAlgorithm
            | UnsupportedKeyAlgorithm
            | InvalidPublicKey
            | InvalidSignatureEncoding
            | DuplicateExtension
            | UnknownCriticalExtension
            | MissingExtension(_)
            | MalformedExtension(_)
            | ProfileViolation(_) => Sw(sw::WRONG_DATA),
            _ => Sw(sw::SECURITY_STATUS),
        }
    }
}

type Outcome = Result<Vec<u8>, Sw>;

impl<K: KeyMemory> Applet<K> {
    /// Loads the applet's persistent state from `memory`.
    pub fn new(mut memory: K) -> Result<Self, KeyMemoryError> {
        let records = memory.load()?;
        let serial = memory
            .public_key(KeySlot::Identity)?
            .map(|key| pki::serial_from_public_key(&encode_point(&key)));
        Ok(Self {
            memory,
            records,
            serial,
            selected: false,
            pin_verified: false,
            tan: None,
            identification: None,
            direct_capable: false,
            direct: None,
            channels: 0,
            session: Session::None,
            chain: None,
            pending: Vec::new(),
        })
    }

    /// The lifecycle state as committed.
    pub fn lifecycle(&self) -> Lifecycle {
        self.records.lifecycle
    }

    /// The committed records (certificates, lifecycle, and the PIN's salted
    /// verifier and retry counter; no private keys).
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// The key memory, for inspection by tests and tools.
    pub fn memory(&self) -> &K {
        &self.memory
    }

    /// The key memory, mutably (tests inspect public keys through it).
    pub fn memory_mut(&mut self) -> &mut K {
        &mut self.memory
    }

    /// Whether the user PIN is verified now (volatile).
    pub fn pin_verified(&self) -> bool {
        self.pin_verified
    }

    /// Declares whether the module's runtime can open a network connection
    /// of its own (claim 15). Only then does the applet accept the unit's
    /// direct-connection offer; without it the offer gets `6A81` and the
    /// unit carries on through its relay.
    pub fn set_direct_capable(&mut self, capable: bool) {
        self.direct_capable = capable;
        if !capable {
            self.direct = None;
        }
    }

    /// The direct connection the unit offered in the current channel
    /// (claim 15), once: the runtime opens it and then feeds the unit's
    /// commands from it to [`Applet::process`].
    pub fn take_direct_connection(&mut self) -> Option<DirectConnection> {
        self.direct.take()
    }

    /// The number of the personalization channel established now, if one
    /// is. A runtime serving a direct connection checks it before every
    /// command: the connection belongs to the channel that offered it, and
    /// ends with it.
    pub fn personalization_channel(&self) -> Option<u64> {
        match &self.session {
            Session::Established(session) => Some(session.number),
            _ => None,
        }
    }

    /// A card reset or power cycle: drops the channel, chains, pending
    /// responses and the PIN verification.
    pub fn reset(&mut self) {
        self.selected = false;
        self.pin_verified = false;
        self.tan = None;
        self.identification = None;
        self.direct = None;
        self.session = Session::None;
        self.chain = None;
        self.pending.clear();
    }

    /// Whether an identification unit's answer is held now (volatile).
    pub fn holds_identification(&self) -> bool {
        self.identification.is_some()
    }

    /// Whether a TAN is held in volatile memory now (tests check it is wiped).
    pub fn holds_tan(&self) -> bool {
        self.tan.is_some()
    }

    /// Processes one command APDU and returns the response APDU bytes.
    ///
    /// Never panics on any input; every malformed command gets a status word.
    pub fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        let response = match Command::parse(apdu) {
            Ok(command) => self.process_command(&command),
            Err(status) => {
                self.chain = None;
                Response::status(status)
            }
        };
        response.to_bytes()
    }

    fn process_command(&mut self, command: &Command<'_>) -> Response {
        // Logical channels (b2 b1) and proprietary classes are not offered.
        if command.cla & 0x03 != 0 {
            return Response::status(sw::CHANNEL_NOT_SUPPORTED);
        }
        if command.cla & !(CLA_CHAIN | CLA_SM) != 0 {
            return Response::status(sw::CLA_NOT_SUPPORTED);
        }
        if command.ins == ins::GET_RESPONSE && command.cla == 0 {
            return self.get_response(command);
        }
        self.pending.clear();

        let header = [
            command.cla & !CLA_CHAIN,
            command.ins,
            command.p1,
            command.p2,
        ];
        if command.is_chained() {
            return self.extend_chain(header, command.data);
        }
        let (response_data, status) = match self.chain.take() {
            Some(mut chain) => {
                if chain.header != header {
                    return Response::status(sw::LAST_COMMAND_EXPECTED);
                }
                if chain.data.len() + command.data.len() > MAX_CHAIN_DATA {
                    return Response::status(sw::NOT_ENOUGH_MEMORY);
                }
                chain.data.extend_from_slice(command.data);
                let result = self.dispatch(header, &chain.data);
                // A chain may have carried a PIN.
                chain.data.zeroize();
                result
            }
            None => self.dispatch(header, command.data),
        };
        self.limit_response(response_data, status, command.ne)
    }

    fn extend_chain(&mut self, header: [u8; 4], data: &[u8]) -> Response {
        let chain = self.chain.get_or_insert_with(|| Chain {
            header,
            data: Vec::new(),
        });
        if chain.header != header {
            self.chain = None;
            return Response::status(sw::LAST_COMMAND_EXPECTED);
        }
        if chain.data.len() + data.len() > MAX_CHAIN_DATA {
            self.chain = None;
            return Response::status(sw::NOT_ENOUGH_MEMORY);
        }
        chain.data.extend_from_slice(data);
        Response::status(sw::OK)
    }

    /// Sends at most `ne` bytes now; the rest waits for GET RESPONSE (`61xx`).
    fn limit_response(&mut self, mut data: Vec<u8>, status: u16, ne: usize) -> Response {
        if data.len() <= ne || data.is_empty() {
            return Response { data, sw: status };
        }
        // Only successful responses carry data, so the final status is 9000.
        self.pending = data.split_off(ne);
        // SW2 = 00 means "256 bytes or more".
        let remaining = u8::try_from(self.pending.len()).unwrap_or(0);
        Response {
            data,
            sw: sw::MORE_DATA | u16::from(remaining),
        }
    }

    fn get_response(&mut self, command: &Command<'_>) -> Response {
        if command.p1 != 0 || command.p2 != 0 {
            return Response::status(sw::WRONG_P1P2);
        }
        if self.pending.is_empty() {
            return Response::status(sw::CONDITIONS);
        }
        let ne = if command.ne == 0 { 256 } else { command.ne };
        let data = core::mem::take(&mut self.pending);
        self.limit_response(data, sw::OK, ne)
    }

    /// Runs one complete (unchained) command. Returns response data and status.
    fn dispatch(&mut self, header: [u8; 4], data: &[u8]) -> (Vec<u8>, u16) {
        let [cla, instruction, p1, p2] = header;
        if instruction == ins::SELECT {
            return finish(self.select(cla, p1, p2, data));
        }
        if !self.selected {
            return (Vec::new(), sw::CONDITIONS);
        }
        if cla & CLA_SM == CLA_SM {
            return self.dispatch_secured(header, data);
        }
        if cla != 0 {
            return (Vec::new(), sw::SM_NOT_SUPPORTED);
        }
        let outcome = match instruction {
            ins::GET_DATA => self.get_data(p1, p2),
            ins::GENERATE_KEY => self.generate_plain(p1, p2, data),
            ins::PUT_DATA => self.put_data_plain(p1, p2, data),
            ins::PUT_DATA_OBJECT => self.hold_identification(p1, p2, data),
            ins::AUTHENTICATE => self.authenticate(p1, p2, data),
            ins::INTERNAL_AUTHENTICATE => self.open_transaction(p1, p2, data),
            ins::VERIFY => self.verify(p1, p2, data),
            ins::PSO => self.security_operation(p1, p2, data),
            ins::TERMINATE => Err(Sw(sw::SECURITY_STATUS)),
            _ => Err(Sw(sw::INS_NOT_SUPPORTED)),
        };
        finish(outcome)
    }

    fn secure_messaging(&mut self) -> Option<&mut SecureMessaging> {
        match &mut self.session {
            Session::Established(session) => Some(&mut session.sm),
            Session::Operating(sm) => Some(sm),
            _ => None,
        }
    }

    fn dispatch_secured(&mut self, header: [u8; 4], field: &[u8]) -> (Vec<u8>, u16) {
        let operating = matches!(self.session, Session::Operating(_));
        let Some(sm) = self.secure_messaging() else {
            self.session = Session::None;
            return (Vec::new(), sw::SECURITY_STATUS);
        };
        let mut plain = match sm.open_command(header, field) {
            Ok(plain) => plain,
            Err(_) => {
                // Any secure-messaging failure closes the channel, same SW for all.
                self.session = Session::None;
                return (Vec::new(), sw::SM_INCORRECT);
            }
        };
        let [_, instruction, p1, p2] = header;
        let outcome = match (operating, instruction) {
            (true, ins::GET_DATA) => self.get_data(p1, p2),
            (true, ins::PUT_DATA) => self.install_key_set(p1, p2, &plain),
            (true, _) => Err(Sw(sw::INS_NOT_SUPPORTED)),
            (false, ins) => self.dispatch_personalization(ins, p1, p2, &plain),
        };
        plain.zeroize();
        let (mut data, status) = finish(outcome);
        let Some(sm) = self.secure_messaging() else {
            data.zeroize();
            return (Vec::new(), sw::SM_INCORRECT);
        };
        let sealed = sm.seal_response(header, &data, status);
        // The plain response may be a forwarded identification or a TAN proof.
        data.zeroize();
        match sealed {
            Ok(sealed) => (sealed, sw::OK),
            Err(_) => {
                self.session = Session::None;
                (Vec::new(), sw::SM_INCORRECT)
            }
        }
    }

    /// The commands of an open personalization channel.
    fn dispatch_personalization(
        &mut self,
        instruction: u8,
        p1: u8,
        p2: u8,
        plain: &[u8],
    ) -> Outcome {
        match instruction {
            ins::GET_DATA if u32::from(u16::from_be_bytes([p1, p2])) == tag::IDENTIFICATION => {
                self.forward_identification()
            }
            ins::GET_DATA => self.get_data(p1, p2),
            ins::GENERATE_KEY => self.generate_module_key(p1, p2, plain),
            ins::PUT_DATA => self.install(p1, p2, plain),
            ins::TERMINATE => self.terminate(p1, p2, plain),
            ins::PSO => self.compute_signature(p1, p2, plain),
            ins::INTERNAL_AUTHENTICATE => self.prove_tan(p1, p2, plain),
            ins::PUT_DATA_OBJECT => self.accept_direct_offer(p1, p2, plain),
            _ => Err(Sw(sw::INS_NOT_SUPPORTED)),
        }
    }

    fn select(&mut self, cla: u8, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if cla != 0 {
            return Err(Sw(sw::SM_NOT_SUPPORTED));
        }
        // Selecting anything (even ourselves again) ends the channel and
        // forgets a TAN: it was entered for one personalization, right after
        // the SELECT that starts it.
        self.session = Session::None;
        self.tan = None;
        self.identification = None;
        self.direct = None;
        if p1 != 0x04 || (p2 & 0xF3) != 0x00 {
            return Err(Sw(sw::WRONG_P1P2));
        }
        if data != proto::AID {
            self.selected = false;
            self.pin_verified = false;
            return Err(Sw(sw::NOT_FOUND));
        }
        self.selected = true;
        let mut proprietary = Vec::new();
        tlv::write(
            &mut proprietary,
            tag::FCI_VERSION,
            &[proto::COMMAND_SET_VERSION],
        );
        if let Some(serial) = &self.serial {
            tlv::write(&mut proprietary, tag::FCI_SERIAL, serial);
        }
        tlv::write(
            &mut proprietary,
            tag::FCI_LIFECYCLE,
            &[self.records.lifecycle.code()],
        );
        let mut fci = Vec::new();
        tlv::write(&mut fci, tag::FCI_AID, &proto::AID);
        tlv::write(&mut fci, tag::FCI_PROPRIETARY, &proprietary);
        Ok(tlv::encode(tag::FCI, &fci))
    }

    fn get_data(&mut self, p1: u8, p2: u8) -> Outcome {
        let records = &self.records;
        let object = match u32::from(u16::from_be_bytes([p1, p2])) {
            tag::IDENTITY_CERT => records.identity_cert.clone(),
            tag::CHECKING_CERT => records.checking_cert.clone(),
            tag::MODULE_CERT => records.module_cert.clone(),
            tag::UNIT_CERT => records.unit_cert.clone(),
            tag::CENTRAL_CERT => records.central_cert.clone(),
            // The identification answer leaves the module only inside the
            // personalization channel (see `forward_identification`).
            tag::IDENTIFICATION => return Err(Sw(sw::SECURITY_STATUS)),
            tag::IDENTITY_PUBLIC_KEY => self
                .memory
                .public_key(KeySlot::Identity)?
                .map(|key| public_key_template(&key)),
            tag::KEY_SET_STATUS => records.key_set.as_ref().map(|key_set| {
                let mut status = Vec::with_capacity(40);
                tlv::write(&mut status, tag::KEY_SET_ID, &key_set.id);
                tlv::write(
                    &mut status,
                    tag::KEY_SET_EXPIRES,
                    &key_set.expires.to_be_bytes(),
                );
                tlv::write(
                    &mut status,
                    tag::KEY_SET_COUNTER,
                    &key_set.counter.to_be_bytes(),
                );
                status
            }),
            _ => return Err(Sw(sw::DATA_NOT_FOUND)),
        };
        object.ok_or(Sw(sw::DATA_NOT_FOUND))
    }

    /// GENERATE ASYMMETRIC KEY PAIR for the identity key, at manufacture (claim 8).
    fn generate_plain(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if p1 != proto::P1_GENERATE {
            return Err(Sw(sw::WRONG_P1P2));
        }
        match p2 {
            proto::KEY_REF_IDENTITY => {}
            // The module key is only ever generated inside the channel.
            proto::KEY_REF_MODULE => return Err(Sw(sw::SECURITY_STATUS)),
            _ => return Err(Sw(sw::WRONG_P1P2)),
        }
        if !data.is_empty() {
            return Err(Sw(sw::WRONG_DATA));
        }
        if self.records.lifecycle != Lifecycle::Manufactured || self.serial.is_some() {
            return Err(Sw(sw::CONDITIONS));
        }
        let key = self.memory.generate(KeySlot::Identity, &[])?;
        let point = encode_point(&key);
        self.serial = Some(pki::serial_from_public_key(&point));
        Ok(public_key_template(&key))
    }

    /// PUT DATA at manufacture: the checking certificate and the identity certificate.
    fn put_data_plain(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if u16::from_be_bytes([p1, p2]) != proto::PUT_DATA_TLV {
            return Err(Sw(sw::WRONG_P1P2));
        }
        if self.records.lifecycle != Lifecycle::Manufactured {
            // Outside manufacture, PUT DATA only exists inside the channel.
            return Err(Sw(if self.records.checking_cert.is_some() {
                sw::SECURITY_STATUS
            } else {
                sw::CONDITIONS
            }));
        }
        let identity_key = self
            .memory
            .public_key(KeySlot::Identity)?
            .ok_or(Sw(sw::CONDITIONS))?;
        let [root, identity] = tlv::decode_fields(data, [tag::CHECKING_CERT, tag::IDENTITY_CERT])?;
        let root = Certificate::from_der(tlv::required(root, tag::CHECKING_CERT)?)?;
        let identity = Certificate::from_der(tlv::required(identity, tag::IDENTITY_CERT)?)?;
        pki::verify_self_signed_root(&root, pki::Role::Manufacturer)?;
        expect_role(&identity, pki::Role::ModuleIdentity)?;
        pki::verify_issued_by(&identity, &root, 0)?;
        if identity.public_key_sec1() != encode_point(&identity_key) {
            return Err(Sw(sw::SECURITY_STATUS));
        }
        let serial = self.serial.ok_or(Sw(sw::CONDITIONS))?;
        if identity.module_serial() != Some(pki::serial_hex(&serial).as_str()) {
            return Err(Sw(sw::SECURITY_STATUS));
        }
        let mut records = self.records.clone();
        records.checking_cert = Some(root.der().to_vec());
        records.identity_cert = Some(identity.der().to_vec());
        records.time_watermark = records
            .time_watermark
            .max(root.not_before_unix())
            .max(identity.not_before_unix());
        records.lifecycle = Lifecycle::Personalization;
        self.commit(records)?;
        Ok(Vec::new())
    }

    /// MUTUAL AUTHENTICATE (open) and EXTERNAL AUTHENTICATE (confirm).
    fn authenticate(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if p1 != proto::SUITE_P384_AES256GCM {
            return Err(Sw(sw::WRONG_P1P2));
        }
        match p2 {
            proto::AUTH_STEP_OPEN => {
                self.session = Session::None;
                self.direct = None;
                self.open_channel(data)
            }
            proto::AUTH_STEP_OPERATING_OPEN => {
                self.session = Session::None;
                self.direct = None;
                self.open_operating(data)
            }
            proto::AUTH_STEP_CONFIRM => {
                match core::mem::replace(&mut self.session, Session::None) {
                    Session::Opened(opening) => self.confirm_channel(*opening, data),
                    Session::OperatingOpened(opening) => self.confirm_operating(*opening, data),
                    _ => Err(Sw(sw::CONDITIONS)),
                }
            }
            proto::AUTH_STEP_TRANSACTION_CONFIRM => {
                let Session::TransactionOpened(opening) =
                    core::mem::replace(&mut self.session, Session::None)
                else {
                    return Err(Sw(sw::CONDITIONS));
                };
                self.confirm_transaction(*opening, data)
            }
            _ => Err(Sw(sw::WRONG_P1P2)),
        }
    }

    fn open_channel(&mut self, data: &[u8]) -> Outcome {
        if !matches!(
            self.records.lifecycle,
            Lifecycle::Personalization | Lifecycle::Operating
        ) {
            return Err(Sw(sw::CONDITIONS));
        }
        let (Some(root_der), Some(identity_der)) =
            (&self.records.checking_cert, &self.records.identity_cert)
        else {
            return Err(Sw(sw::CONDITIONS));
        };
        let OpenRequest {
            cert: unit_cert_der,
            ephemeral: unit_ephemeral,
            challenge: unit_challenge,
            peer,
        } = OpenRequest::parse(data)?;

        // Claim 7: the unit's certificate is checked with the manufacturer's
        // checking key before anything else is done for this unit.
        let unit_cert = Certificate::from_der(unit_cert_der)?;
        let root = Certificate::from_der(root_der).map_err(|_| Sw(sw::MEMORY_FAILURE))?;
        expect_role(&unit_cert, pki::Role::Personalizer)?;
        pki::verify_issued_by(&unit_cert, &root, 0)?;
        pki::check_not_expired(&unit_cert, self.records.time_watermark)?;

        let (ephemeral_secret, ephemeral_point, module_challenge) =
            fresh_ephemeral(&mut self.memory)?;
        let mut nonce = [0u8; pki::NONCE_LEN];
        self.memory.random(&mut nonce)?;

        let th = HandshakeValues {
            unit_cert_hash: &sha384(unit_cert_der),
            unit_ephemeral,
            unit_challenge: &unit_challenge,
            module_cert_hash: &sha384(identity_der),
            module_ephemeral: &ephemeral_point,
            module_challenge: &module_challenge,
            module_nonce: &nonce,
        }
        .transcript_hash(ChannelKind::Personalization);
        let keys = SessionKeys::derive(&ephemeral_secret, &peer, &th);
        let signature = self.memory.sign_digest(
            KeySlot::Identity,
            &channel::signed_digest(Role::Module, &th),
        )?;
        let confirmation = keys
            .confirmation(Role::Module, &th)
            .map_err(|_| Sw(sw::UNKNOWN))?;

        let mut template = Vec::with_capacity(1024);
        tlv::write(&mut template, tag::AUTH_CERTIFICATE, identity_der);
        tlv::write(&mut template, tag::AUTH_EPHEMERAL, &ephemeral_point);
        tlv::write(&mut template, tag::AUTH_CHALLENGE, &module_challenge);
        tlv::write(&mut template, tag::AUTH_NONCE, &nonce);
        tlv::write(&mut template, tag::AUTH_SIGNATURE, &signature.to_bytes());
        tlv::write(&mut template, tag::AUTH_CONFIRMATION, &confirmation);
        self.session = Session::Opened(Box::new(Opening {
            keys,
            th,
            unit_cert,
            nonce,
        }));
        Ok(tlv::encode(tag::DYN_AUTH, &template))
    }

    fn confirm_channel(&mut self, opening: Opening, data: &[u8]) -> Outcome {
        let template = tlv::decode_single(data, tag::DYN_AUTH)?;
        let [signature, confirmation] =
            tlv::decode_fields(template, [tag::AUTH_SIGNATURE, tag::AUTH_CONFIRMATION])?;
        let signature = tlv::required(signature, tag::AUTH_SIGNATURE)?;
        let confirmation = tlv::required(confirmation, tag::AUTH_CONFIRMATION)?;
        let digest = channel::signed_digest(Role::Unit, &opening.th);
        channel::verify_raw_signature(opening.unit_cert.public_key(), &digest, signature)
            .map_err(|_| Sw(sw::AUTHENTICATION_FAILED))?;
        opening
            .keys
            .verify_confirmation(Role::Unit, &opening.th, confirmation)
            .map_err(|_| Sw(sw::AUTHENTICATION_FAILED))?;
        let Opening {
            keys,
            th,
            unit_cert,
            nonce,
        } = opening;
        self.channels = self.channels.wrapping_add(1);
        self.session = Session::Established(Box::new(Established {
            sm: keys.into_secure_messaging(),
            th,
            unit_cert,
            nonce,
            generated: None,
            direct_offered: false,
            number: self.channels,
        }));
        Ok(Vec::new())
    }

    /// GENERATE ASYMMETRIC KEY PAIR for the module key (claims 1, 2, 10).
    fn generate_module_key(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if p1 != proto::P1_GENERATE || p2 != proto::KEY_REF_MODULE {
            return Err(Sw(if p2 == proto::KEY_REF_IDENTITY {
                sw::CONDITIONS
            } else {
                sw::WRONG_P1P2
            }));
        }
        if self.records.lifecycle != Lifecycle::Personalization {
            return Err(Sw(sw::CONDITIONS));
        }
        let [variation] = tlv::decode_fields(data, [tag::VARIATION])?;
        let variation = tlv::required(variation, tag::VARIATION)?;
        if variation.is_empty() || variation.len() > len::VARIATION_MAX {
            return Err(Sw(sw::WRONG_DATA));
        }
        let th = match &self.session {
            Session::Established(session) => session.th,
            _ => return Err(Sw(sw::SECURITY_STATUS)),
        };
        // Forget any key generated earlier in this session before replacing it.
        if let Session::Established(session) = &mut self.session {
            session.generated = None;
        }
        let key = self.memory.generate(KeySlot::Module, variation)?;
        let point = encode_point(&key);
        let proof = self.memory.sign_digest(
            KeySlot::Module,
            &channel::possession_digest(&th, &point, variation),
        )?;
        if let Session::Established(session) = &mut self.session {
            session.generated = Some(key);
        }
        let mut out = public_key_template(&key);
        tlv::write(&mut out, tag::SIGNATURE, &proof.to_bytes());
        Ok(out)
    }

    /// PUT DATA of the certificate bundle: verify everything, commit, OPERATING.
    fn install(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if u16::from_be_bytes([p1, p2]) != proto::PUT_DATA_TLV {
            return Err(Sw(sw::WRONG_P1P2));
        }
        if self.records.lifecycle != Lifecycle::Personalization {
            return Err(Sw(sw::CONDITIONS));
        }
        let Session::Established(session) = &self.session else {
            return Err(Sw(sw::SECURITY_STATUS));
        };
        let generated = session.generated.ok_or(Sw(sw::CONDITIONS))?;
        let [module, unit, central, pin] = tlv::decode_fields(
            data,
            [
                tag::MODULE_CERT,
                tag::UNIT_CERT,
                tag::CENTRAL_CERT,
                tag::USER_PIN,
            ],
        )?;
        if pin.is_some_and(|pin| !(len::PIN_MIN..=len::PIN_MAX).contains(&pin.len())) {
            return Err(Sw(sw::WRONG_DATA));
        }
        let module = Certificate::from_der(tlv::required(module, tag::MODULE_CERT)?)?;
        let unit_by_central = Certificate::from_der(tlv::required(unit, tag::UNIT_CERT)?)?;
        let central = Certificate::from_der(tlv::required(central, tag::CENTRAL_CERT)?)?;
        let unit_by_manufacturer = &session.unit_cert;
        let watermark = self.records.time_watermark;

        // Claim 5: the central key, certified by the unit that authenticated.
        expect_role(&central, pki::Role::CentralDelivery)?;
        pki::verify_issued_by(&central, unit_by_manufacturer, 0)?;
        // Claim 6: the unit's key, certified by the central system.
        expect_role(&unit_by_central, pki::Role::Personalizer)?;
        if unit_by_central.public_key_sec1() != unit_by_manufacturer.public_key_sec1()
            || unit_by_central.subject_der() != unit_by_manufacturer.subject_der()
        {
            return Err(Sw(sw::SECURITY_STATUS));
        }
        pki::verify_issued_by(&unit_by_central, &central, 1)?;
        // Claims 1 and 9: the module certificate, for the key just generated,
        // carrying this session's nonce and this module's serial.
        expect_role(&module, pki::Role::ModuleKey)?;
        pki::verify_issued_by(&module, &unit_by_central, 0)?;
        if module.public_key_sec1() != encode_point(&generated) {
            return Err(Sw(sw::SECURITY_STATUS));
        }
        if module.nonce() != Some(session.nonce) {
            return Err(Sw(sw::SECURITY_STATUS));
        }
        let serial = self.serial.ok_or(Sw(sw::CONDITIONS))?;
        if module.module_serial() != Some(pki::serial_hex(&serial).as_str()) {
            return Err(Sw(sw::SECURITY_STATUS));
        }
        for cert in [&module, &unit_by_central, &central] {
            pki::check_not_expired(cert, watermark)?;
        }
        // Every certificate of the bundle must be valid at one common instant.
        // That instant bounds the new watermark by the unit's own certificate
        // from the manufacturer: without it a unit could push the watermark
        // past every other unit's certificates and lock the module for good.
        let bundle = [&module, &unit_by_central, &central, unit_by_manufacturer];
        let latest_start = bundle.iter().map(|cert| cert.not_before_unix()).max();
        let earliest_end = bundle.iter().map(|cert| cert.not_after_unix()).min();
        if latest_start > earliest_end {
            return Err(Sw(sw::SECURITY_STATUS));
        }
        // The key memory must still hold the key the certificate is for.
        if self.memory.public_key(KeySlot::Module)? != Some(generated) {
            return Err(Sw(sw::CONDITIONS));
        }

        let pin = match pin {
            Some(pin) => {
                let mut salt = [0u8; keymem::PIN_SALT_LEN];
                self.memory.random(&mut salt)?;
                Some(PinRecord::new(salt, pin))
            }
            None => None,
        };

        let mut records = self.records.clone();
        records.pin = pin;
        records.module_cert = Some(module.der().to_vec());
        records.unit_cert = Some(unit_by_central.der().to_vec());
        records.central_cert = Some(central.der().to_vec());
        records.time_watermark = [&module, &unit_by_central, &central, unit_by_manufacturer]
            .iter()
            .map(|cert| cert.not_before_unix())
            .fold(watermark, u64::max);
        records.lifecycle = Lifecycle::Operating;
        records.personalizations = records.personalizations.saturating_add(1);
        // A completed personalization is the one thing that re-opens the TAN
        // proofs (claim 13).
        records.tan_proofs = 0;
        self.pin_verified = false;
        self.commit(records)?;
        if let Session::Established(session) = &mut self.session {
            session.generated = None;
        }
        Ok(Vec::new())
    }

    /// TERMINATE: back to PERSONALIZATION, erasing operational material (claim 2).
    fn terminate(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if p1 != 0 || p2 != 0 {
            return Err(Sw(sw::WRONG_P1P2));
        }
        if !data.is_empty() {
            return Err(Sw(sw::WRONG_DATA));
        }
        if !matches!(
            self.records.lifecycle,
            Lifecycle::Personalization | Lifecycle::Operating
        ) {
            return Err(Sw(sw::CONDITIONS));
        }
        // Records first: once they say PERSONALIZATION the module key is
        // unusable, so a crash before the key is erased leaves nothing operational.
        // Forget the key generated in this channel first, whatever happens next.
        if let Session::Established(session) = &mut self.session {
            session.generated = None;
        }
        let mut records = self.records.clone();
        records.erase_operational();
        records.lifecycle = Lifecycle::Personalization;
        self.pin_verified = false;
        self.commit(records)?;
        self.memory.erase(KeySlot::Module)?;
        Ok(Vec::new())
    }

    /// VERIFY of the user PIN (`00 20 00 81`), its status query (no data),
    /// and the reset of the verification status (`00 20 FF 81`, no data).
    ///
    /// DESIGN §8a: the retry counter is decremented and committed before the
    /// PIN is compared; a commit that fails means no comparison.
    fn verify(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if p2 == proto::TAN_REF {
            return self.enter_tan(p1, data);
        }
        if !matches!(p1, proto::P1_VERIFY | proto::P1_VERIFY_RESET) || p2 != proto::PIN_REF_USER {
            return Err(Sw(sw::WRONG_P1P2));
        }
        if self.records.lifecycle != Lifecycle::Operating {
            return Err(Sw(sw::CONDITIONS));
        }
        let Some(pin) = &self.records.pin else {
            return Err(Sw(sw::DATA_NOT_FOUND));
        };
        let tries_left = pin.tries_left;
        if p1 == proto::P1_VERIFY_RESET {
            if !data.is_empty() {
                return Err(Sw(sw::WRONG_LENGTH));
            }
            self.pin_verified = false;
            return Ok(Vec::new());
        }
        if data.is_empty() {
            return match (self.pin_verified, tries_left) {
                (true, _) => Ok(Vec::new()),
                (false, 0) => Err(Sw(sw::PIN_BLOCKED)),
                (false, tries) => Err(Sw(sw::TRIES_LEFT | u16::from(tries))),
            };
        }
        // A value no PIN can have is refused before it counts: the limits are public.
        if !(len::PIN_MIN..=len::PIN_MAX).contains(&data.len()) {
            return Err(Sw(sw::WRONG_LENGTH));
        }
        self.pin_verified = false;
        if tries_left == 0 {
            return Err(Sw(sw::PIN_BLOCKED));
        }
        let mut records = self.records.clone();
        let Some(record) = &mut records.pin else {
            return Err(Sw(sw::DATA_NOT_FOUND));
        };
        record.tries_left = tries_left - 1;
        self.commit(records)?;

        let Some(record) = &self.records.pin else {
            return Err(Sw(sw::MEMORY_FAILURE));
        };
        if !record.matches(data) {
            return Err(Sw(sw::TRIES_LEFT | u16::from(record.tries_left)));
        }
        let mut records = self.records.clone();
        if let Some(record) = &mut records.pin {
            record.tries_left = proto::PIN_TRY_LIMIT;
        }
        self.commit(records)?;
        self.pin_verified = true;
        Ok(Vec::new())
    }

    /// VERIFY of the TAN (`00 20 00 82`, claim 13): the TAN typed at the
    /// module's input unit, held in volatile memory only. The module cannot
    /// check it (it never learns the TAN's verifier); it proves it to the unit
    /// inside the channel ([`Self::prove_tan`]). With no data: `9000` if a
    /// TAN is held, `6A88` if not. `00 20 FF 82` forgets it.
    fn enter_tan(&mut self, p1: u8, data: &[u8]) -> Outcome {
        if self.records.lifecycle == Lifecycle::Manufactured {
            return Err(Sw(sw::CONDITIONS));
        }
        match p1 {
            proto::P1_VERIFY_RESET if data.is_empty() => {
                self.tan = None;
                Ok(Vec::new())
            }
            proto::P1_VERIFY_RESET => Err(Sw(sw::WRONG_LENGTH)),
            proto::P1_VERIFY if data.is_empty() => match self.tan {
                Some(_) => Ok(Vec::new()),
                None => Err(Sw(sw::DATA_NOT_FOUND)),
            },
            proto::P1_VERIFY => {
                // Outside the public limits: refused, nothing held, nothing counted.
                if !(len::TAN_MIN..=len::TAN_MAX).contains(&data.len()) {
                    self.tan = None;
                    return Err(Sw(sw::WRONG_LENGTH));
                }
                self.tan = Some(zeroize::Zeroizing::new(data.to_vec()));
                Ok(Vec::new())
            }
            _ => Err(Sw(sw::WRONG_P1P2)),
        }
    }

    /// PUT DATA `00 DA DF 2A` (claims 16–18): the identification unit's
    /// answer, handed over the local interface by the host the user
    /// connected the id unit to. The module cannot check it (it holds no
    /// id-unit key); it keeps it in volatile memory and forwards it to the
    /// unit inside the channel. No data forgets it. Must be one `7C`
    /// template of at most [`len::IDENTIFICATION_MAX`] bytes.
    fn hold_identification(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if u32::from(u16::from_be_bytes([p1, p2])) != tag::IDENTIFICATION {
            return Err(Sw(sw::WRONG_P1P2));
        }
        if self.records.lifecycle == Lifecycle::Manufactured {
            return Err(Sw(sw::CONDITIONS));
        }
        self.identification = None;
        if data.is_empty() {
            return Ok(Vec::new());
        }
        if data.len() > len::IDENTIFICATION_MAX {
            return Err(Sw(sw::WRONG_LENGTH));
        }
        // Only the shape is checked: the unit judges the content.
        tlv::decode_single(data, tag::DYN_AUTH)?;
        self.identification = Some(zeroize::Zeroizing::new(data.to_vec()));
        Ok(Vec::new())
    }

    /// Secured PUT DATA `0C DA DF 2B` in the personalization channel
    /// (claim 15): the unit's offer of a direct connection. Held for the
    /// runtime ([`Applet::take_direct_connection`]); once per channel.
    /// `6A81` when the runtime has no network of its own: the unit then
    /// stays on the relay.
    fn accept_direct_offer(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if u32::from(u16::from_be_bytes([p1, p2])) != tag::DIRECT_CONNECTION {
            return Err(Sw(sw::WRONG_P1P2));
        }
        let Session::Established(session) = &mut self.session else {
            return Err(Sw(sw::SECURITY_STATUS));
        };
        if !self.direct_capable {
            return Err(Sw(sw::FUNC_NOT_SUPPORTED));
        }
        if session.direct_offered {
            return Err(Sw(sw::CONDITIONS));
        }
        let offer = DirectConnection::parse(data).map_err(|_| Sw(sw::WRONG_DATA))?;
        session.direct_offered = true;
        self.direct = Some(offer);
        Ok(Vec::new())
    }

    /// Secured GET DATA `0C CA DF 2A` in the personalization channel: the
    /// held identification answer, once; `6A88` when none is held.
    fn forward_identification(&mut self) -> Outcome {
        // The copy is wiped once sealed (`dispatch_secured`); the held one here.
        self.identification
            .take()
            .map(|answer| answer.to_vec())
            .ok_or(Sw(sw::DATA_NOT_FOUND))
    }

    /// INTERNAL AUTHENTICATE for the TAN (`0C 88 00 82`, personalization
    /// channel only, claim 13): `7C { 81 salt }` → `7C { 82 proof }` with
    /// `proof = HMAC-SHA384(HKDF(salt, TAN), "imprint v1 tan proof" ‖ TH)`.
    ///
    /// DESIGN §8a: the proof counter is advanced and committed before the
    /// proof is computed; at [`proto::TAN_PROOF_LIMIT`] the answer is `6983`
    /// until a personalization completes. The TAN is used once.
    fn prove_tan(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if p1 != 0 || p2 != proto::TAN_REF {
            return Err(Sw(sw::WRONG_P1P2));
        }
        let th = match &self.session {
            Session::Established(session) => session.th,
            _ => return Err(Sw(sw::SECURITY_STATUS)),
        };
        let template = tlv::decode_single(data, tag::DYN_AUTH)?;
        let [salt] = tlv::decode_fields(template, [tag::TAN_SALT])?;
        let salt: [u8; len::TAN_SALT] = tlv::required_array(salt, tag::TAN_SALT)?;
        // No TAN entered: nothing to prove, nothing counted.
        let tan = self.tan.take().ok_or(Sw(sw::DATA_NOT_FOUND))?;
        if self.records.tan_proofs >= proto::TAN_PROOF_LIMIT {
            return Err(Sw(sw::AUTH_METHOD_BLOCKED));
        }
        let mut records = self.records.clone();
        records.tan_proofs += 1;
        self.commit(records)?;
        let verifier = channel::tan_verifier(&salt, &tan);
        drop(tan);
        let proof = channel::tan_proof(&verifier, &th).map_err(|_| Sw(sw::UNKNOWN))?;
        Ok(tlv::encode(
            tag::DYN_AUTH,
            &tlv::encode(tag::TAN_PROOF, &proof),
        ))
    }

    /// MUTUAL AUTHENTICATE of the operating channel (claims 1, 4): the central
    /// system presents its root certificate, which must carry the key the
    /// module took as its anchor at personalization. The module answers with
    /// its module certificate and chain, and proves its module key through
    /// the static-ephemeral secret in the key schedule.
    fn open_operating(&mut self, data: &[u8]) -> Outcome {
        if self.records.lifecycle != Lifecycle::Operating {
            return Err(Sw(sw::CONDITIONS));
        }
        let (Some(anchor_der), Some(module_der), Some(unit_der)) = (
            &self.records.central_cert,
            &self.records.module_cert,
            &self.records.unit_cert,
        ) else {
            return Err(Sw(sw::CONDITIONS));
        };
        let OpenRequest {
            cert: central_der,
            ephemeral: central_ephemeral,
            challenge: central_challenge,
            peer,
        } = OpenRequest::parse(data)?;

        // Claim 4: the central system is the one whose key came with the module
        // certificate; nothing else is trusted here.
        let central = Certificate::from_der(central_der)?;
        expect_role(&central, pki::Role::Central)?;
        pki::verify_self_signed_root(&central, pki::Role::Central)?;
        let anchor = Certificate::from_der(anchor_der).map_err(|_| Sw(sw::MEMORY_FAILURE))?;
        if central.public_key_sec1() != anchor.public_key_sec1()
            || central.subject_der() != anchor.subject_der()
        {
            return Err(Sw(sw::SECURITY_STATUS));
        }
        pki::check_not_expired(&central, self.records.time_watermark)?;

        let (ephemeral_secret, ephemeral_point, module_challenge) =
            fresh_ephemeral(&mut self.memory)?;
        let ephemeral_ephemeral = channel::ecdh(&ephemeral_secret, &peer);
        let ephemeral_static = self.memory.agree(KeySlot::Module, &peer)?;

        let th = OperatingValues {
            central_cert_hash: &sha384(central_der),
            central_ephemeral,
            central_challenge: &central_challenge,
            module_cert_hash: &sha384(module_der),
            unit_cert_hash: &sha384(unit_der),
            module_ephemeral: &ephemeral_point,
            module_challenge: &module_challenge,
        }
        .transcript_hash();
        let keys = SessionKeys::derive_operating(&ephemeral_ephemeral, &ephemeral_static, &th);
        let confirmation = keys
            .confirmation(Role::Module, &th)
            .map_err(|_| Sw(sw::UNKNOWN))?;

        let mut template = Vec::with_capacity(module_der.len() + unit_der.len() + 256);
        tlv::write(&mut template, tag::AUTH_CERTIFICATE, module_der);
        tlv::write(&mut template, tag::AUTH_CHAIN_CERTIFICATE, unit_der);
        tlv::write(&mut template, tag::AUTH_EPHEMERAL, &ephemeral_point);
        tlv::write(&mut template, tag::AUTH_CHALLENGE, &module_challenge);
        tlv::write(&mut template, tag::AUTH_CONFIRMATION, &confirmation);
        self.session = Session::OperatingOpened(Box::new(OperatingOpening { keys, th, central }));
        Ok(tlv::encode(tag::DYN_AUTH, &template))
    }

    /// EXTERNAL AUTHENTICATE of the central system: its signature with `C`
    /// over the transcript, checked with the anchor, and its key confirmation.
    fn confirm_operating(&mut self, opening: OperatingOpening, data: &[u8]) -> Outcome {
        let template = tlv::decode_single(data, tag::DYN_AUTH)?;
        let [signature, confirmation] =
            tlv::decode_fields(template, [tag::AUTH_SIGNATURE, tag::AUTH_CONFIRMATION])?;
        let signature = tlv::required(signature, tag::AUTH_SIGNATURE)?;
        let confirmation = tlv::required(confirmation, tag::AUTH_CONFIRMATION)?;
        let digest = channel::signed_digest(Role::Central, &opening.th);
        channel::verify_raw_signature(opening.central.public_key(), &digest, signature)
            .map_err(|_| Sw(sw::AUTHENTICATION_FAILED))?;
        opening
            .keys
            .verify_confirmation(Role::Central, &opening.th, confirmation)
            .map_err(|_| Sw(sw::AUTHENTICATION_FAILED))?;
        let OperatingOpening { keys, .. } = opening;
        self.session = Session::Operating(Box::new(keys.into_secure_messaging()));
        Ok(Vec::new())
    }

    /// PUT DATA of a transaction key set on the operating channel (claim 11):
    /// it replaces any earlier set, and its session counter starts at zero.
    fn install_key_set(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if u16::from_be_bytes([p1, p2]) != proto::PUT_DATA_TLV {
            return Err(Sw(sw::WRONG_P1P2));
        }
        if self.records.lifecycle != Lifecycle::Operating {
            return Err(Sw(sw::CONDITIONS));
        }
        let template = tlv::decode_single(data, tag::KEY_SET)?;
        let [id, key, expires] = tlv::decode_fields(
            template,
            [tag::KEY_SET_ID, tag::KEY_SET_KEY, tag::KEY_SET_EXPIRES],
        )?;
        let key_set = KeySetRecord {
            id: tlv::required_array(id, tag::KEY_SET_ID)?,
            key: tlv::required_array(key, tag::KEY_SET_KEY)?,
            expires: u64::from_be_bytes(tlv::required_array(expires, tag::KEY_SET_EXPIRES)?),
            counter: 0,
        };
        let mut records = self.records.clone();
        records.key_set = Some(key_set);
        self.commit(records)?;
        Ok(Vec::new())
    }

    /// INTERNAL AUTHENTICATE: opens a transaction session on the key set. The
    /// session counter is advanced and committed before anything else, so no
    /// two sessions ever share a counter, even across power loss.
    fn open_transaction(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        self.session = Session::None;
        if p1 != proto::SUITE_P384_AES256GCM || p2 != proto::TRANSACTION_OPEN {
            return Err(Sw(sw::WRONG_P1P2));
        }
        if self.records.lifecycle != Lifecycle::Operating {
            return Err(Sw(sw::CONDITIONS));
        }
        self.require_pin()?;
        let template = tlv::decode_single(data, tag::DYN_AUTH)?;
        let [challenge] = tlv::decode_fields(template, [tag::AUTH_CHALLENGE])?;
        let central_challenge: [u8; len::CHALLENGE] =
            tlv::required_array(challenge, tag::AUTH_CHALLENGE)?;
        let serial = self.serial.ok_or(Sw(sw::CONDITIONS))?;
        let mut records = self.records.clone();
        let key_set = records.key_set.as_mut().ok_or(Sw(sw::DATA_NOT_FOUND))?;
        key_set.counter = key_set.counter.checked_add(1).ok_or(Sw(sw::CONDITIONS))?;
        let counter = key_set.counter;
        self.commit(records)?;

        let mut module_challenge = [0u8; len::CHALLENGE];
        self.memory.random(&mut module_challenge)?;
        let key_set = self
            .records
            .key_set
            .as_ref()
            .ok_or(Sw(sw::MEMORY_FAILURE))?;
        let th = TransactionValues {
            key_set_id: &key_set.id,
            serial: &serial,
            central_challenge: &central_challenge,
            module_challenge: &module_challenge,
            session_counter: counter,
        }
        .transcript_hash();
        let keys = TransactionKeys::derive(&key_set.key, &th);
        let confirmation = keys
            .confirmation(Role::Module, &th)
            .map_err(|_| Sw(sw::UNKNOWN))?;
        let mut template = Vec::with_capacity(160);
        tlv::write(&mut template, tag::AUTH_KEY_SET_ID, &key_set.id);
        tlv::write(&mut template, tag::AUTH_CHALLENGE, &module_challenge);
        tlv::write(
            &mut template,
            tag::AUTH_SESSION_COUNTER,
            &counter.to_be_bytes(),
        );
        tlv::write(&mut template, tag::AUTH_CONFIRMATION, &confirmation);
        self.session = Session::TransactionOpened(Box::new(TransactionOpening { keys, th }));
        Ok(tlv::encode(tag::DYN_AUTH, &template))
    }

    /// EXTERNAL AUTHENTICATE of the central system on a transaction session.
    fn confirm_transaction(&mut self, opening: TransactionOpening, data: &[u8]) -> Outcome {
        let template = tlv::decode_single(data, tag::DYN_AUTH)?;
        let [confirmation] = tlv::decode_fields(template, [tag::AUTH_CONFIRMATION])?;
        let confirmation = tlv::required(confirmation, tag::AUTH_CONFIRMATION)?;
        opening
            .keys
            .verify_confirmation(Role::Central, &opening.th, confirmation)
            .map_err(|_| Sw(sw::AUTHENTICATION_FAILED))?;
        let TransactionOpening { keys, th } = opening;
        self.session = Session::Transaction(Box::new(TransactionState {
            session: keys.into_session(&th),
            awaiting_receipt: None,
        }));
        Ok(Vec::new())
    }

    /// PERFORM SECURITY OPERATION, by P1-P2.
    fn security_operation(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        match u16::from_be_bytes([p1, p2]) {
            proto::PSO_ENCIPHER => self.seal_transaction_message(data),
            proto::PSO_DECIPHER => self.open_transaction_receipt(data),
            _ => self.compute_signature(p1, p2, data),
        }
    }

    /// ENCIPHER: the next transaction message, sealed for the central system.
    /// One message at a time: the next waits for this one's receipt.
    fn seal_transaction_message(&mut self, payload: &[u8]) -> Outcome {
        if payload.len() > proto::TRANSACTION_PAYLOAD_MAX {
            return Err(Sw(sw::WRONG_LENGTH));
        }
        self.require_pin()?;
        let Session::Transaction(state) = &mut self.session else {
            return Err(Sw(sw::SECURITY_STATUS));
        };
        if state.awaiting_receipt.is_some() {
            return Err(Sw(sw::CONDITIONS));
        }
        match state.session.seal_message(payload) {
            Ok((_, sealed)) => {
                state.awaiting_receipt = Some(sha384(payload));
                Ok(sealed)
            }
            Err(_) => {
                self.session = Session::None;
                Err(Sw(sw::CONDITIONS))
            }
        }
    }

    /// DECIPHER: the central system's receipt for the message sealed last.
    /// Any failure closes the session.
    fn open_transaction_receipt(&mut self, field: &[u8]) -> Outcome {
        let Session::Transaction(state) = &mut self.session else {
            return Err(Sw(sw::SECURITY_STATUS));
        };
        let Some(expected) = state.awaiting_receipt else {
            return Err(Sw(sw::CONDITIONS));
        };
        let receipt = match state.session.open_receipt(field) {
            Ok(receipt) if receipt.len() <= proto::RECEIPT_MAX => receipt,
            _ => {
                self.session = Session::None;
                return Err(Sw(sw::SM_INCORRECT));
            }
        };
        let acknowledged = tlv::decode_fields(
            &receipt,
            [tag::RECEIPT_NUMBER, tag::RECEIPT_DIGEST, tag::RECEIPT_REPLY],
        )
        .ok()
        .and_then(|[number, digest, _]| number.filter(|n| n.len() == 8).and(digest));
        if acknowledged != Some(&expected[..]) {
            self.session = Session::None;
            return Err(Sw(sw::SECURITY_STATUS));
        }
        state.awaiting_receipt = None;
        Ok(receipt)
    }

    /// With a PIN set, key use needs it verified since the last reset.
    fn require_pin(&self) -> Result<(), Sw> {
        if self.records.pin.is_some() && !self.pin_verified {
            return Err(Sw(sw::SECURITY_STATUS));
        }
        Ok(())
    }

    /// PERFORM SECURITY OPERATION: COMPUTE DIGITAL SIGNATURE with the module
    /// key over a digest the host computed. Response: raw `r ‖ s`.
    fn compute_signature(&mut self, p1: u8, p2: u8, data: &[u8]) -> Outcome {
        if u16::from_be_bytes([p1, p2]) != proto::PSO_CDS {
            return Err(Sw(sw::WRONG_P1P2));
        }
        if self.records.lifecycle != Lifecycle::Operating {
            return Err(Sw(sw::CONDITIONS));
        }
        self.require_pin()?;
        let value = keymem::ecdsa_hash_value(data).ok_or(Sw(sw::WRONG_LENGTH))?;
        let signature = self.memory.sign_digest(KeySlot::Module, &value)?;
        Ok(signature.to_bytes().to_vec())
    }

    fn commit(&mut self, records: Records) -> Result<(), Sw> {
        match self.memory.commit(&records) {
            Ok(()) => {
                self.records = records;
                Ok(())
            }
            Err(err) => {
                // Re-read what is really committed; keep the cache if even that fails.
                if let Ok(committed) = self.memory.load() {
                    self.records = committed;
                }
                Err(err.into())
            }
        }
    }
}

/// The opener's first message of a handshake (personalization or operating
/// channel): `7C { A0 certificate, 85 ephemeral point, 81 challenge }`.
struct OpenRequest<'a> {
    cert: &'a [u8],
    ephemeral: &'a [u8],
    challenge: [u8; len::CHALLENGE],
    /// The ephemeral point, validated.
    peer: PublicKey,
}

impl<'a> OpenRequest<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, Sw> {
        let template = tlv::decode_single(data, tag::DYN_AUTH)?;
        let [cert, ephemeral, challenge] = tlv::decode_fields(
            template,
            [
                tag::AUTH_CERTIFICATE,
                tag::AUTH_EPHEMERAL,
                tag::AUTH_CHALLENGE,
            ],
        )?;
        let ephemeral = tlv::required(ephemeral, tag::AUTH_EPHEMERAL)?;
        Ok(Self {
            cert: tlv::required(cert, tag::AUTH_CERTIFICATE)?,
            ephemeral,
            challenge: tlv::required_array(challenge, tag::AUTH_CHALLENGE)?,
            peer: parse_point(ephemeral).map_err(|_| Sw(sw::WRONG_DATA))?,
        })
    }
}

/// The module's side of a handshake: ephemeral secret, its point, a challenge.
type Ephemeral = (
    zeroize::Zeroizing<p384::NonZeroScalar>,
    Vec<u8>,
    [u8; len::CHALLENGE],
);

/// A fresh ephemeral key pair and challenge from the key memory's
/// randomness, for the module's side of a handshake.
fn fresh_ephemeral<K: KeyMemory>(memory: &mut K) -> Result<Ephemeral, Sw> {
    let mut randomness = zeroize::Zeroizing::new([0u8; 48]);
    memory.random(&mut randomness[..])?;
    let secret = zeroize::Zeroizing::new(
        derive_scalar(&randomness, &[], b"ephemeral").ok_or(Sw(sw::UNKNOWN))?,
    );
    let point = encode_point(&PublicKey::from_secret_scalar(&secret));
    let mut challenge = [0u8; len::CHALLENGE];
    memory.random(&mut challenge)?;
    Ok((secret, point, challenge))
}

fn finish(outcome: Outcome) -> (Vec<u8>, u16) {
    match outcome {
        Ok(data) => (data, sw::OK),
        Err(Sw(status)) => (Vec::new(), status),
    }
}

fn expect_role(cert: &Certificate, role: pki::Role) -> Result<(), Sw> {
    if cert.role() == role {
        Ok(())
    } else {
        Err(Sw(sw::SECURITY_STATUS))
    }
}

/// `7F49 { 86 <point> }`.
pub fn public_key_template(key: &PublicKey) -> Vec<u8> {
    tlv::encode(
        tag::PUBLIC_KEY,
        &tlv::encode(tag::EC_POINT, &encode_point(key)),
    )
}

#[cfg(test)]
mod tests;
