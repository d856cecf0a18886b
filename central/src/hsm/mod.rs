//! The central key `C` in an HSM, through PKCS#11 (SoftHSM v2 in the tests,
//! any token with `CKM_EC_KEY_PAIR_GEN` and `CKM_ECDSA` in principle).
//!
//! ```text
//!  init --pkcs11 MODULE --token LABEL ──▶ C_GenerateKeyPair (P-384, in the token)
//!                                     └─▶ DIR/central-key.toml (module, token, key label; no PIN)
//!  open(DIR) ──▶ central-key.toml ──▶ Pkcs11CentralKey::open ──▶ one R/W session, user logged in
//!  sign_digest(48 bytes) ──Mutex<Session>──▶ C_Sign(CKM_ECDSA) ──▶ r ‖ s ──▶ Signature
//! ```
//!
//! # The key in the token
//!
//! A P-384 pair made by `C_GenerateKeyPair` (`CKM_EC_KEY_PAIR_GEN`,
//! `CKA_EC_PARAMS` = the DER OID of secp384r1), both halves token objects
//! with `CKA_LABEL` = `CKA_ID` = the key label ([`DEFAULT_KEY_LABEL`] unless
//! chosen). The private half is `CKA_PRIVATE`, `CKA_SENSITIVE`, not
//! `CKA_EXTRACTABLE`, not `CKA_COPYABLE`, not `CKA_MODIFIABLE`, and may only
//! sign (`CKA_SIGN`, `CKA_ALLOWED_MECHANISMS` = `CKM_ECDSA`; no decrypt,
//! derive, unwrap or sign-recover). The public half may only verify. The
//! public key is read from `CKA_EC_POINT`, a DER OCTET STRING around the
//! uncompressed SEC1 point, unwrapped strictly; signatures are `CKM_ECDSA`
//! over the 48-byte digest, raw `r ‖ s`, normalized to low `s`.
//!
//! # Tokens, PINs and the library
//!
//! The token is found by its label, never by slot id (SoftHSM renumbers its
//! slots when a token is initialized); exactly one initialized token must
//! carry it. The user PIN comes from [`PIN_ENV`] or a file named by
//! [`PIN_FILE_ENV`] or the command line; it is held in a buffer that is
//! zeroized when dropped and never logged. The token checks the PIN at the
//! process's first login: PKCS#11 login state is per application, so while
//! another session of this process is logged in, a second `C_Login` reports
//! `CKR_USER_ALREADY_LOGGED_IN` and is accepted.
//!
//! A library is loaded and initialized (OS locking) once per process and
//! path, accepts `CKR_CRYPTOKI_ALREADY_INITIALIZED`, and is never finalized.
//! SoftHSM reads `SOFTHSM2_CONF` in `C_Initialize`, hence once per process.
//!
//! The session sits behind a [`Mutex`], so a [`Pkcs11CentralKey`] is `Send +
//! Sync` and signatures are serialized (a PKCS#11 session runs one operation
//! at a time).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as Pkcs11Error, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;
use der::Decode;
use der::asn1::OctetStringRef;
use p384::PublicKey;
use p384::ecdsa::{Signature, VerifyingKey};
use zeroize::Zeroizing;

#[cfg(test)]
mod tests;

/// Environment variable holding the token's user PIN.
pub const PIN_ENV: &str = "IMPRINT_CENTRAL_PIN";

/// Environment variable naming a file that holds the token's user PIN (one
/// trailing newline is ignored). [`PIN_ENV`] wins when both are set.
pub const PIN_FILE_ENV: &str = "IMPRINT_CENTRAL_PIN_FILE";

/// `CKA_LABEL` and `CKA_ID` of the central key pair unless another label is chosen.
pub const DEFAULT_KEY_LABEL: &str = "imprint central key";

/// Longest key label accepted (bytes).
pub const MAX_KEY_LABEL_LEN: usize = 64;

/// `CKA_EC_PARAMS` for P-384: the DER encoding of OID 1.3.132.0.34 (secp384r1).
const SECP384R1_PARAMS: [u8; 7] = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

/// Length of an uncompressed SEC1 P-384 point.
const POINT_LEN: usize = 97;

/// Length of a raw P-384 ECDSA signature, `r ‖ s`.
const SIGNATURE_LEN: usize = 96;

/// Why the central key in a token could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The PKCS#11 library could not be loaded.
    #[error("cannot load the PKCS#11 library {path}", path = .path.display())]
    Load {
        /// The library.
        path: PathBuf,
        /// What the loader said.
        #[source]
        source: Pkcs11Error,
    },
    /// `C_Initialize` failed.
    #[error("cannot initialize the PKCS#11 library")]
    Initialize(#[source] Pkcs11Error),
    /// Listing slots or reading token information failed.
    #[error("cannot list the library's tokens")]
    Slots(#[source] Pkcs11Error),
    /// No initialized token has the label.
    #[error("no initialized token labelled {0:?}")]
    TokenNotFound(String),
    /// More than one initialized token has the label.
    #[error("more than one token labelled {0:?}")]
    AmbiguousToken(String),
    /// `C_OpenSession` failed.
    #[error("cannot open a read-write session on the token")]
    Session(#[source] Pkcs11Error),
    /// No PIN was given.
    #[error("no user PIN for the token: set {PIN_ENV} or {PIN_FILE_ENV}, or give --pin-file")]
    PinMissing,
    /// The PIN file could not be read.
    #[error("cannot read the PIN file {path}", path = .path.display())]
    PinFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The PIN is empty.
    #[error("the user PIN is empty")]
    PinEmpty,
    /// The token rejected the user PIN.
    #[error("the token rejected the user PIN")]
    PinIncorrect,
    /// The user PIN is locked.
    #[error("the token's user PIN is locked")]
    PinLocked,
    /// `C_Login` failed for another reason.
    #[error("cannot log in to the token")]
    Login(#[source] Pkcs11Error),
    /// The key label is empty, too long or contains control characters.
    #[error("invalid key label: {0}")]
    InvalidKeyLabel(&'static str),
    /// The token already holds a key with the label (generation refuses to add a second).
    #[error("token {token:?} already holds a key labelled {label:?}; refusing to create another")]
    KeyExists {
        /// The token label.
        token: String,
        /// The key label.
        label: String,
    },
    /// The token holds no key pair with the label.
    #[error("token {token:?} holds no key pair labelled {label:?}")]
    KeyNotFound {
        /// The token label.
        token: String,
        /// The key label.
        label: String,
    },
    /// The token holds more than one private or public key with the label.
    #[error("token {token:?} holds more than one key labelled {label:?}")]
    AmbiguousKey {
        /// The token label.
        token: String,
        /// The key label.
        label: String,
    },
    /// Searching for objects or reading an attribute failed.
    #[error("cannot read the key objects from the token")]
    Objects(#[source] Pkcs11Error),
    /// `C_GenerateKeyPair` failed.
    #[error("the token failed to generate a P-384 key pair")]
    Generate(#[source] Pkcs11Error),
    /// `CKA_EC_POINT` is not a DER OCTET STRING around an uncompressed P-384 point.
    #[error("the token's public key is not an uncompressed P-384 point")]
    BadPublicKey,
    /// `C_Sign` failed.
    #[error("the token failed to sign")]
    Sign(#[source] Pkcs11Error),
    /// The token returned something that is not a P-384 `r ‖ s` signature.
    #[error("the token returned a malformed signature")]
    BadSignature,
}

/// Where the central key lives in a token: what `DIR/central-key.toml` holds.
/// No PIN.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11KeyConfig {
    /// The PKCS#11 library (module) to load.
    pub module: PathBuf,
    /// The label of the token holding the key.
    pub token: String,
    /// `CKA_LABEL` (and `CKA_ID`) of the key pair.
    pub key_label: String,
}

/// A token's user PIN, zeroized when dropped; its `Debug` shows no digit.
pub struct Pin(Zeroizing<Vec<u8>>);

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(..)")
    }
}

impl Pin {
    /// A PIN from its bytes; refuses an empty one.
    pub fn new(bytes: Vec<u8>) -> Result<Self, HsmError> {
        let pin = Zeroizing::new(bytes);
        if pin.is_empty() {
            return Err(HsmError::PinEmpty);
        }
        Ok(Self(pin))
    }

    /// Reads a PIN from `path`: the file's bytes without one trailing `\n`
    /// or `\r\n`.
    pub fn from_file(path: &Path) -> Result<Self, HsmError> {
        let mut bytes =
            Zeroizing::new(std::fs::read(path).map_err(|source| HsmError::PinFile {
                path: path.to_path_buf(),
                source,
            })?);
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Self::new(std::mem::take(&mut *bytes))
    }

    /// The PIN from [`PIN_ENV`], else from the file named by [`PIN_FILE_ENV`].
    pub fn from_env() -> Result<Self, HsmError> {
        if let Some(value) = std::env::var_os(PIN_ENV).filter(|value| !value.is_empty()) {
            let value = Zeroizing::new(value.into_encoded_bytes());
            return Self::new(value.to_vec());
        }
        match std::env::var_os(PIN_FILE_ENV).filter(|value| !value.is_empty()) {
            Some(path) => Self::from_file(Path::new(&path)),
            None => Err(HsmError::PinMissing),
        }
    }

    /// The PIN from `pin_file` if given, else [`Pin::from_env`].
    pub fn from_file_or_env(pin_file: Option<&Path>) -> Result<Self, HsmError> {
        match pin_file {
            Some(path) => Self::from_file(path),
            None => Self::from_env(),
        }
    }
}

/// The private key's protection attributes as the token reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyProtection {
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`.
    pub never_extractable: bool,
    /// `CKA_PRIVATE`.
    pub private: bool,
}

/// The central key `C` in a PKCS#11 token: one read-write session, logged
/// in as the user, behind a mutex.
pub struct Pkcs11CentralKey {
    config: Pkcs11KeyConfig,
    session: Mutex<KeySession>,
    public: VerifyingKey,
}

/// The session and the private key's handle, looked up again if it goes stale.
struct KeySession {
    session: Session,
    private: ObjectHandle,
}

impl fmt::Debug for Pkcs11CentralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11CentralKey")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Pkcs11CentralKey {
    /// Generates the central key pair in the token `config.token` of
    /// `config.module`, labelled `config.key_label`. Refuses when the token
    /// already holds a key with that label.
    pub fn generate(config: &Pkcs11KeyConfig, pin: &Pin) -> Result<Self, HsmError> {
        check_key_label(&config.key_label)?;
        let session = login(config, pin)?;
        let existing = find_key(&session, &config.key_label, ObjectClass::PRIVATE_KEY)?.len()
            + find_key(&session, &config.key_label, ObjectClass::PUBLIC_KEY)?.len();
        if existing != 0 {
            return Err(HsmError::KeyExists {
                token: config.token.clone(),
                label: config.key_label.clone(),
            });
        }
        let name = config.key_label.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(SECP384R1_PARAMS.to_vec()),
            Attribute::Label(name.clone()),
            Attribute::Id(name.clone()),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::Modifiable(false),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::KeyType(KeyType::EC),
            Attribute::Label(name.clone()),
            Attribute::Id(name),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::SignRecover(false),
            Attribute::Decrypt(false),
            Attribute::Derive(false),
            Attribute::Unwrap(false),
            Attribute::Copyable(false),
            Attribute::Modifiable(false),
            Attribute::AllowedMechanisms(vec![MechanismType::ECDSA]),
        ];
        let (public, private) = session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(HsmError::Generate)?;
        match read_point(&session, public) {
            Ok(key) => Ok(Self::new(config, session, private, key)),
            Err(err) => {
                // Best effort: a half-made key must not be found by `open` later.
                let _ = session.destroy_object(private);
                let _ = session.destroy_object(public);
                Err(err)
            }
        }
    }

    /// Opens the existing central key pair `config.key_label` in the token
    /// `config.token` of `config.module`.
    pub fn open(config: &Pkcs11KeyConfig, pin: &Pin) -> Result<Self, HsmError> {
        check_key_label(&config.key_label)?;
        let session = login(config, pin)?;
        let private = one_key(&session, config, ObjectClass::PRIVATE_KEY)?;
        let public = one_key(&session, config, ObjectClass::PUBLIC_KEY)?;
        let key = read_point(&session, public)?;
        Ok(Self::new(config, session, private, key))
    }

    fn new(
        config: &Pkcs11KeyConfig,
        session: Session,
        private: ObjectHandle,
        public: PublicKey,
    ) -> Self {
        Self {
            config: config.clone(),
            session: Mutex::new(KeySession { session, private }),
            public: VerifyingKey::from(public),
        }
    }

    /// Where the key lives (module, token, key label).
    pub fn config(&self) -> &Pkcs11KeyConfig {
        &self.config
    }

    /// The public key, as read from the token at generation or opening.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.public)
    }

    /// The public key as an ECDSA verifying key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// Signs a 48-byte digest in the token (`CKM_ECDSA`, the digest used as
    /// it is); the signature is normalized to low `s`.
    pub fn sign_digest(&self, digest: &[u8; 48]) -> Result<Signature, HsmError> {
        let mut guard = lock(&self.session);
        let state = &mut *guard;
        let raw = match state.session.sign(&Mechanism::Ecdsa, state.private, digest) {
            // The object went away behind this session's back: look again.
            Err(Pkcs11Error::Pkcs11(
                RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                _,
            )) => {
                state.private = one_key(&state.session, &self.config, ObjectClass::PRIVATE_KEY)?;
                state.session.sign(&Mechanism::Ecdsa, state.private, digest)
            }
            other => other,
        }
        .map_err(HsmError::Sign)?;
        if raw.len() != SIGNATURE_LEN {
            return Err(HsmError::BadSignature);
        }
        let signature = Signature::from_slice(&raw).map_err(|_| HsmError::BadSignature)?;
        Ok(signature.normalize_s())
    }

    /// The private key's protection attributes, read from the token.
    pub fn protection(&self) -> Result<KeyProtection, HsmError> {
        let guard = lock(&self.session);
        let attributes = guard
            .session
            .get_attributes(
                guard.private,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Private,
                ],
            )
            .map_err(HsmError::Objects)?;
        // Absent attributes read as the unsafe value.
        let mut protection = KeyProtection {
            sensitive: false,
            extractable: true,
            always_sensitive: false,
            never_extractable: false,
            private: false,
        };
        for attribute in attributes {
            match attribute {
                Attribute::Sensitive(value) => protection.sensitive = value,
                Attribute::Extractable(value) => protection.extractable = value,
                Attribute::AlwaysSensitive(value) => protection.always_sensitive = value,
                Attribute::NeverExtractable(value) => protection.never_extractable = value,
                Attribute::Private(value) => protection.private = value,
                _ => {}
            }
        }
        Ok(protection)
    }
}

/// A key label: 1 to [`MAX_KEY_LABEL_LEN`] bytes, no control characters.
fn check_key_label(label: &str) -> Result<(), HsmError> {
    if label.is_empty() {
        return Err(HsmError::InvalidKeyLabel("empty"));
    }
    if label.len() > MAX_KEY_LABEL_LEN {
        return Err(HsmError::InvalidKeyLabel("longer than 64 bytes"));
    }
    if label.chars().any(char::is_control) {
        return Err(HsmError::InvalidKeyLabel("contains control characters"));
    }
    Ok(())
}

/// Loaded and initialized libraries, by canonical path, kept for the life of
/// the process.
fn context(library: &Path) -> Result<Pkcs11, HsmError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let path = library
        .canonicalize()
        .unwrap_or_else(|_| library.to_path_buf());
    let mut contexts = lock(CONTEXTS.get_or_init(Mutex::default));
    if let Some(context) = contexts.get(&path) {
        return Ok(context.clone());
    }
    let context = Pkcs11::new(&path).map_err(|source| HsmError::Load {
        path: path.clone(),
        source,
    })?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Pkcs11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => return Err(HsmError::Initialize(err)),
    }
    contexts.insert(path, context.clone());
    Ok(context)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The slot of the one initialized token labelled `label`.
fn find_token(context: &Pkcs11, label: &str) -> Result<Slot, HsmError> {
    let mut found = Vec::new();
    for slot in context
        .get_slots_with_initialized_token()
        .map_err(HsmError::Slots)?
    {
        let info = context.get_token_info(slot).map_err(HsmError::Slots)?;
        if info.label() == label {
            found.push(slot);
        }
    }
    match found.as_slice() {
        [] => Err(HsmError::TokenNotFound(label.to_owned())),
        [slot] => Ok(*slot),
        _ => Err(HsmError::AmbiguousToken(label.to_owned())),
    }
}

/// Loads the library, finds the token, opens a read-write session and logs
/// in as the user. The PIN is copied only into a buffer zeroized when the
/// login returns.
fn login(config: &Pkcs11KeyConfig, pin: &Pin) -> Result<Session, HsmError> {
    let context = context(&config.module)?;
    let slot = find_token(&context, &config.token)?;
    let session = context.open_rw_session(slot).map_err(HsmError::Session)?;
    let raw = RawAuthPin::new(Box::new(pin.0.to_vec()));
    match session.login_with_raw(UserType::User, &raw) {
        // Another session of this process already logged the user in.
        Ok(()) | Err(Pkcs11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(Pkcs11Error::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid, _)) => {
            Err(HsmError::PinIncorrect)
        }
        Err(Pkcs11Error::Pkcs11(RvError::PinLocked, _)) => Err(HsmError::PinLocked),
        Err(err) => Err(HsmError::Login(err)),
    }
}

fn find_key(
    session: &Session,
    label: &str,
    class: ObjectClass,
) -> Result<Vec<ObjectHandle>, HsmError> {
    let name = label.as_bytes().to_vec();
    session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Token(true),
            Attribute::KeyType(KeyType::EC),
            Attribute::Label(name.clone()),
            Attribute::Id(name),
        ])
        .map_err(HsmError::Objects)
}

/// The one key object of `class` with the configured label.
fn one_key(
    session: &Session,
    config: &Pkcs11KeyConfig,
    class: ObjectClass,
) -> Result<ObjectHandle, HsmError> {
    match find_key(session, &config.key_label, class)?.as_slice() {
        [] => Err(HsmError::KeyNotFound {
            token: config.token.clone(),
            label: config.key_label.clone(),
        }),
        [key] => Ok(*key),
        _ => Err(HsmError::AmbiguousKey {
            token: config.token.clone(),
            label: config.key_label.clone(),
        }),
    }
}

/// Reads and strictly unwraps `CKA_EC_POINT` of a public key object.
fn read_point(session: &Session, object: ObjectHandle) -> Result<PublicKey, HsmError> {
    let attributes = session
        .get_attributes(object, &[AttributeType::EcPoint])
        .map_err(HsmError::Objects)?;
    let Some(Attribute::EcPoint(der)) = attributes.into_iter().next() else {
        return Err(HsmError::BadPublicKey);
    };
    decode_ec_point(&der)
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the SEC1 point. Anything else
/// (BER lengths, trailing bytes, a bare point, a compressed or foreign point,
/// the identity) is refused.
fn decode_ec_point(der: &[u8]) -> Result<PublicKey, HsmError> {
    let point = <&OctetStringRef>::from_der(der).map_err(|_| HsmError::BadPublicKey)?;
    let point = point.as_bytes();
    if point.len() != POINT_LEN || point.first() != Some(&0x04) {
        return Err(HsmError::BadPublicKey);
    }
    PublicKey::from_sec1_bytes(point).map_err(|_| HsmError::BadPublicKey)
}
