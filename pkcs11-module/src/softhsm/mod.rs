//! A SoftHSM token as the applet's secure key memory.
//!
//! The applet runs in-process; its key memory is a token of a PKCS#11 library
//! loaded at run time (SoftHSM v2 in practice, any library that has the
//! mechanisms below in principle). Keys are generated inside the token and
//! never leave it; the applet's lifecycle, its erasure on re-personalization
//! and its APDU interface are exactly those of the card.
//!
//! ```text
//!  Applet ──KeyMemory──▶ SoftHsmKeyMemory ──cryptoki──▶ libsofthsm2.so ──▶ DIR/tokens/<token>/*.object
//!                         one R/W session,               (loaded at run time,
//!                         logged in as user               SOFTHSM2_CONF names DIR)
//! ```
//!
//! # Storage layout in the token
//!
//! Every object is a token object (`CKA_TOKEN`) and private (`CKA_PRIVATE`):
//! invisible without the user PIN, and stored by SoftHSM encrypted under the
//! token's key, which the PIN unlocks.
//!
//! | What | Class | Attributes |
//! |---|---|---|
//! | identity key | `CKO_PRIVATE_KEY` + `CKO_PUBLIC_KEY`, `CKK_EC` | `CKA_LABEL` = `CKA_ID` = `"imprint identity key"` |
//! | module key | `CKO_PRIVATE_KEY` + `CKO_PUBLIC_KEY`, `CKK_EC` | `CKA_LABEL` = `CKA_ID` = `"imprint module key"` |
//! | records | `CKO_DATA` | `CKA_APPLICATION` = `"imprint"`, `CKA_LABEL` = `"imprint records"`, `CKA_VALUE` = generation ‖ [`Records::encode`] |
//!
//! **Keys** are P-384 pairs made by `C_GenerateKeyPair` (`CKM_EC_KEY_PAIR_GEN`,
//! `CKA_EC_PARAMS` = the DER OID of secp384r1). The private half is
//! `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`, not `CKA_COPYABLE`, not
//! `CKA_MODIFIABLE`, may sign (`CKA_ALLOWED_MECHANISMS` = `CKM_ECDSA` only) and
//! may not derive, decrypt or unwrap (`CKA_WRAP` is no attribute of a private
//! key: SoftHSM rejects it); the public half may only verify, not encrypt,
//! wrap or derive. The public key is read back from `CKA_EC_POINT`, a DER
//! OCTET STRING around the uncompressed SEC1 point, unwrapped strictly.
//! Signatures are `CKM_ECDSA` over the 48-byte hash value, raw `r ‖ s`, with
//! the token's nonce (SoftHSM's OpenSSL backend derives it from the private
//! key, the digest and fresh randomness: hedged, though not RFC 6979). The
//! private key's handle is remembered between signatures and looked up again
//! if it goes stale.
//!
//! **The variation value** (claim 10) cannot be turned into a scalar here: the
//! token makes its keys from its own generator. Before every generation the
//! memory feeds `C_SeedRandom` with a domain label, the variation value and 48
//! fresh bytes from the operating system. SoftHSM hands seed material to its
//! crypto backend, which mixes it into its generator state rather than replacing
//! that state (OpenSSL's `RAND_seed` reseeds the primary DRBG with it as
//! additional input, and the DRBGs that key generation draws from reseed from
//! the primary; Botan's `add_entropy` likewise). The token's own entropy stays
//! in the state, so the host can neither choose nor cancel the key, and two
//! tokens given the same value get different keys. A token that refuses
//! `C_SeedRandom` cannot take the variation value: generation then fails with
//! [`KeyMemoryError::Crypto`] rather than ignore it.
//!
//! **Erasure**: `generate` destroys every object of the slot before it makes
//! the new pair; `erase` destroys them. SoftHSM unlinks the object's file; the
//! key bytes in it were encrypted under the token key.
//!
//! # Records: atomic replacement
//!
//! `CKA_VALUE` of a records object is an 8-byte big-endian generation number
//! followed by [`Records::encode`]. [`KeyMemory::commit`] creates the object of
//! generation *n + 1* first and only then destroys the older ones;
//! [`KeyMemory::load`] takes the highest generation that decodes and destroys
//! the others (leftovers of an interrupted commit). Records objects are never
//! modified after creation (`CKA_MODIFIABLE` false).
//!
//! What SoftHSM itself guarantees about its files (file object store, the only
//! one Debian builds): each object is one file, written with buffered stdio
//! calls (truncate, write the attributes, flush) under a `fcntl` lock, with no
//! `fsync`, and an object is destroyed by unlinking its file. A file that does
//! not parse is skipped as invalid; one cut at an attribute boundary parses
//! with attributes missing. So a write is not atomic by itself, but:
//!
//! - a process crash at any point leaves the old object intact (it is never
//!   rewritten) and the new one either complete, missing, unparsable or
//!   without a complete `CKA_VALUE`: `load` returns the old records or the new
//!   ones, never a mix;
//! - after a *power loss* the same holds only as far as the filesystem keeps
//!   the new file's data before the old file's unlink (SoftHSM does not sync
//!   either). Where that matters, put the token directory on a filesystem
//!   mounted `sync` (or ext4 with `data=journal`), or use a real HSM.
//!
//! # Library and context
//!
//! The library is loaded once per process and path ([`find_library`] looks in
//! the usual places, `IMPRINT_SOFTHSM_LIB` overrides) and initialized with OS
//! locking; `CKR_CRYPTOKI_ALREADY_INITIALIZED` is accepted, and the library is
//! never finalized, so other users of it in the same process are not pulled
//! from under. SoftHSM reads `SOFTHSM2_CONF` in `C_Initialize`, hence once per
//! process. A token is open in at most one [`SoftHsmKeyMemory`] per process at a
//! time (two applets on one token would race their records).
//!
//! # Errors
//!
//! Token, session and device failures are [`KeyMemoryError::Io`]; records that
//! do not decode are [`KeyMemoryError::Corrupt`]; an empty slot is
//! [`KeyMemoryError::NoKey`]; a refused or failed key operation is
//! [`KeyMemoryError::Crypto`]; a failed `C_GenerateRandom` is
//! [`KeyMemoryError::Random`].

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as Pkcs11Error, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::RawAuthPin;
use der::Decode;
use der::asn1::OctetStringRef;
use imprint_apdu::keymem::{KeyMemory, KeyMemoryError, KeySlot, Records};
use p384::PublicKey;
use p384::ecdsa::Signature;
use zeroize::{Zeroize, Zeroizing};

/// Environment variable naming the PKCS#11 library to load, overriding
/// [`LIBRARY_CANDIDATES`].
pub const LIBRARY_ENV: &str = "IMPRINT_SOFTHSM_LIB";

/// Where distributions install SoftHSM v2's PKCS#11 library, tried in order
/// by [`find_library`]. On Debian, `dpkg -L softhsm2 | grep libsofthsm2.so`
/// lists the package's copies.
pub const LIBRARY_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
];

/// `CKA_APPLICATION` of the records object.
pub const RECORDS_APPLICATION: &str = "imprint";

/// `CKA_LABEL` of the records object.
pub const RECORDS_LABEL: &str = "imprint records";

/// Length of the generation number in front of the encoded records.
const GENERATION_LEN: usize = 8;

/// `CKA_EC_PARAMS` for P-384: the DER encoding of OID 1.3.132.0.34 (secp384r1).
const SECP384R1_PARAMS: [u8; 7] = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

/// Length of an uncompressed SEC1 P-384 point.
const POINT_LEN: usize = 97;

/// Length of a raw P-384 ECDSA signature, `r ‖ s`.
const SIGNATURE_LEN: usize = 96;

/// Domain label in front of the seed material given to `C_SeedRandom`.
const SEED_LABEL: &[u8] = b"imprint v1 softhsm key generation seed";

/// Fresh operating-system randomness added to every seed.
const OS_SEED_LEN: usize = 48;

/// The identity key only signs; the module key also agrees keys (ECDH) for
/// the operating channel.
fn allowed_mechanisms(slot: KeySlot) -> Vec<MechanismType> {
    match slot {
        KeySlot::Identity => vec![MechanismType::ECDSA],
        KeySlot::Module => vec![MechanismType::ECDSA, MechanismType::ECDH1_DERIVE],
    }
}

/// `CKA_LABEL` and `CKA_ID` of the key pair in `slot`.
pub fn key_label(slot: KeySlot) -> &'static str {
    match slot {
        KeySlot::Identity => "imprint identity key",
        KeySlot::Module => "imprint module key",
    }
}

/// The PKCS#11 library to load: the file named by [`LIBRARY_ENV`] if set (even
/// if it does not exist, so a wrong override fails loudly), else the first of
/// [`LIBRARY_CANDIDATES`] that exists.
pub fn find_library() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(LIBRARY_ENV).filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    LIBRARY_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// Reads a PIN from `path`: the file's bytes, without one trailing `\n` or
/// `\r\n`. The returned buffer is zeroized when dropped.
pub fn read_pin_file(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut pin = Zeroizing::new(std::fs::read(path)?);
    if pin.last() == Some(&b'\n') {
        pin.pop();
        if pin.last() == Some(&b'\r') {
            pin.pop();
        }
    }
    Ok(pin)
}

/// Whether `library` loads and has exactly one initialized token labelled
/// `token_label`. Loads and initializes the library (once per process), as
/// [`SoftHsmKeyMemory::open`] would; opens no session.
pub fn token_present(library: &Path, token_label: &str) -> bool {
    let Ok(context) = context(library) else {
        return false;
    };
    let Ok(slots) = context.get_slots_with_initialized_token() else {
        return false;
    };
    slots
        .into_iter()
        .filter(|&slot| {
            context
                .get_token_info(slot)
                .is_ok_and(|info| info.label() == token_label)
        })
        .count()
        == 1
}

/// Why a token could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SoftHsmError {
    /// The PKCS#11 library could not be loaded.
    #[error("cannot load the PKCS#11 library {path:?}")]
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
    #[error("no token labelled {0:?}")]
    TokenNotFound(String),
    /// More than one initialized token has the label.
    #[error("more than one token labelled {0:?}")]
    AmbiguousToken(String),
    /// The token is already open as a key memory in this process.
    #[error("token {0:?} is already open as a key memory in this process")]
    InUse(String),
    /// `C_OpenSession` failed.
    #[error("cannot open a read-write session")]
    Session(#[source] Pkcs11Error),
    /// The token rejected the user PIN.
    #[error("the token rejected the user PIN")]
    PinIncorrect,
    /// The user PIN is locked.
    #[error("the user PIN is locked")]
    PinLocked,
    /// `C_Login` failed for another reason.
    #[error("cannot log in")]
    Login(#[source] Pkcs11Error),
}

/// Loaded and initialized libraries, by canonical path, kept for the life of
/// the process.
fn context(library: &Path) -> Result<Pkcs11, SoftHsmError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let path = library
        .canonicalize()
        .unwrap_or_else(|_| library.to_path_buf());
    let mut contexts = lock(CONTEXTS.get_or_init(Mutex::default));
    if let Some(context) = contexts.get(&path) {
        return Ok(context.clone());
    }
    let context = Pkcs11::new(&path).map_err(|source| SoftHsmError::Load {
        path: path.clone(),
        source,
    })?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Pkcs11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => return Err(SoftHsmError::Initialize(err)),
    }
    contexts.insert(path, context.clone());
    Ok(context)
}

/// Tokens open as key memories in this process: (library, token serial).
fn open_tokens() -> MutexGuard<'static, HashSet<(PathBuf, String)>> {
    static OPEN: OnceLock<Mutex<HashSet<(PathBuf, String)>>> = OnceLock::new();
    lock(OPEN.get_or_init(Mutex::default))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks a token in use until dropped.
struct Claim {
    key: (PathBuf, String),
}

impl Drop for Claim {
    fn drop(&mut self) {
        open_tokens().remove(&self.key);
    }
}

/// The key memory of one module: a SoftHSM (PKCS#11) token, through one
/// read-write session logged in as the user. See the [module](self) docs for
/// what it stores and how.
pub struct SoftHsmKeyMemory {
    // Declared before `_claim`: the session closes before the claim is released.
    session: Session,
    label: String,
    /// Private key handles by slot (identity, module), kept between signatures
    /// so that a signature costs one `C_Sign`, not a search first.
    signing_keys: [Option<ObjectHandle>; 2],
    _claim: Claim,
}

impl fmt::Debug for SoftHsmKeyMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftHsmKeyMemory")
            .field("token", &self.label)
            .finish_non_exhaustive()
    }
}

impl SoftHsmKeyMemory {
    /// Loads `library` (once per process), finds the initialized token
    /// labelled `token_label`, opens a read-write session on it and logs in
    /// as the user with `user_pin`. The PIN is copied only into a buffer that
    /// is zeroized when the login returns, and never logged.
    pub fn open(
        library: impl AsRef<Path>,
        token_label: &str,
        user_pin: &[u8],
    ) -> Result<Self, SoftHsmError> {
        let library = library.as_ref();
        let context = context(library)?;
        let mut found = Vec::new();
        for slot in context
            .get_slots_with_initialized_token()
            .map_err(SoftHsmError::Slots)?
        {
            let info = context.get_token_info(slot).map_err(SoftHsmError::Slots)?;
            if info.label() == token_label {
                found.push((slot, info.serial_number().to_owned()));
            }
        }
        let (slot, serial) = match found.len() {
            0 => return Err(SoftHsmError::TokenNotFound(token_label.to_owned())),
            1 => found.remove(0),
            _ => return Err(SoftHsmError::AmbiguousToken(token_label.to_owned())),
        };

        let key = (
            library
                .canonicalize()
                .unwrap_or_else(|_| library.to_path_buf()),
            serial,
        );
        let claim = {
            let mut open = open_tokens();
            if !open.insert(key.clone()) {
                return Err(SoftHsmError::InUse(token_label.to_owned()));
            }
            Claim { key }
        };

        let session = context
            .open_rw_session(slot)
            .map_err(SoftHsmError::Session)?;
        let pin = RawAuthPin::new(Box::new(user_pin.to_vec()));
        match session.login_with_raw(UserType::User, &pin) {
            // Another session of this process already logged the user in.
            Ok(()) | Err(Pkcs11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(Pkcs11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(SoftHsmError::PinIncorrect);
            }
            Err(Pkcs11Error::Pkcs11(RvError::PinLocked, _)) => {
                return Err(SoftHsmError::PinLocked);
            }
            Err(err) => return Err(SoftHsmError::Login(err)),
        }
        drop(pin);
        Ok(Self {
            session,
            label: token_label.to_owned(),
            signing_keys: [None; 2],
            _claim: claim,
        })
    }

    /// The label of the token.
    pub fn token_label(&self) -> &str {
        &self.label
    }

    fn signing_key(&mut self, slot: KeySlot) -> &mut Option<ObjectHandle> {
        &mut self.signing_keys[match slot {
            KeySlot::Identity => 0,
            KeySlot::Module => 1,
        }]
    }

    /// Every object of `slot`'s key pair (private and public halves, and any
    /// half left over by an interrupted generation).
    fn key_objects(&self, slot: KeySlot) -> Result<Vec<ObjectHandle>, KeyMemoryError> {
        let mut objects = self.find_key(slot, ObjectClass::PRIVATE_KEY)?;
        objects.extend(self.find_key(slot, ObjectClass::PUBLIC_KEY)?);
        Ok(objects)
    }

    fn find_key(
        &self,
        slot: KeySlot,
        class: ObjectClass,
    ) -> Result<Vec<ObjectHandle>, KeyMemoryError> {
        let name = key_label(slot).as_bytes().to_vec();
        self.session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Token(true),
                Attribute::KeyType(KeyType::EC),
                Attribute::Label(name.clone()),
                Attribute::Id(name),
            ])
            .map_err(|err| token_error(err, KeyMemoryError::Io))
    }

    /// The one private key of `slot`, if any.
    fn private_key(&self, slot: KeySlot) -> Result<Option<ObjectHandle>, KeyMemoryError> {
        match self.find_key(slot, ObjectClass::PRIVATE_KEY)?.as_slice() {
            [] => Ok(None),
            [key] => Ok(Some(*key)),
            _ => Err(KeyMemoryError::Corrupt),
        }
    }

    /// Reads and strictly unwraps `CKA_EC_POINT` of a public key object.
    fn read_point(&self, object: ObjectHandle) -> Result<PublicKey, KeyMemoryError> {
        let attributes = self
            .session
            .get_attributes(object, &[AttributeType::EcPoint])
            .map_err(|err| token_error(err, KeyMemoryError::Corrupt))?;
        let Some(Attribute::EcPoint(der)) = attributes.into_iter().next() else {
            return Err(KeyMemoryError::Corrupt);
        };
        decode_ec_point(&der)
    }

    /// Feeds the variation value and fresh OS randomness to the token's generator.
    fn seed(&self, variation: &[u8]) -> Result<(), KeyMemoryError> {
        let length = u16::try_from(variation.len()).map_err(|_| KeyMemoryError::Crypto)?;
        let mut seed = Zeroizing::new(Vec::with_capacity(
            SEED_LABEL.len() + 2 + variation.len() + OS_SEED_LEN,
        ));
        seed.extend_from_slice(SEED_LABEL);
        seed.extend_from_slice(&length.to_be_bytes());
        seed.extend_from_slice(variation);
        let mut fresh = Zeroizing::new([0u8; OS_SEED_LEN]);
        getrandom::fill(&mut fresh[..]).map_err(|_| KeyMemoryError::Random)?;
        seed.extend_from_slice(&fresh[..]);
        self.session
            .seed_random(&seed)
            .map_err(|err| token_error(err, KeyMemoryError::Crypto))
    }

    /// Every records object: handle, generation and records, the latter two
    /// `None` where the value is missing or does not decode.
    fn records_objects(&self) -> Result<Vec<RecordsObject>, KeyMemoryError> {
        let handles = self
            .session
            .find_objects(&records_template())
            .map_err(|err| token_error(err, KeyMemoryError::Io))?;
        let mut objects = Vec::with_capacity(handles.len());
        for handle in handles {
            let attributes = self
                .session
                .get_attributes(handle, &[AttributeType::Value])
                .map_err(|err| token_error(err, KeyMemoryError::Io))?;
            let mut object = RecordsObject {
                handle,
                generation: None,
                records: None,
            };
            for attribute in attributes {
                if let Attribute::Value(value) = attribute {
                    let value = Zeroizing::new(value);
                    if let Some((generation, records)) = decode_records_value(&value) {
                        object.generation = Some(generation);
                        object.records = records.ok();
                    }
                }
            }
            objects.push(object);
        }
        Ok(objects)
    }

    /// Destroys objects, best effort: what stays is cleaned up next time.
    fn destroy_quietly(&self, objects: impl IntoIterator<Item = ObjectHandle>) {
        for object in objects {
            let _ = self.session.destroy_object(object);
        }
    }
}

/// One records object as found in the token.
struct RecordsObject {
    handle: ObjectHandle,
    /// `None` when `CKA_VALUE` is missing or shorter than the generation.
    generation: Option<u64>,
    /// `None` when the generation is unknown or the records do not decode.
    records: Option<Records>,
}

/// What identifies records objects (and is set on them).
fn records_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Application(RECORDS_APPLICATION.as_bytes().to_vec()),
        Attribute::Label(RECORDS_LABEL.as_bytes().to_vec()),
    ]
}

/// Splits a records value into its generation and decoded records.
fn decode_records_value(value: &[u8]) -> Option<(u64, Result<Records, KeyMemoryError>)> {
    let (generation, encoded) = value.split_first_chunk::<GENERATION_LEN>()?;
    Some((u64::from_be_bytes(*generation), Records::decode(encoded)))
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the SEC1 point. Anything else
/// (BER lengths, trailing bytes, a bare point, a compressed or foreign point,
/// the identity) is corrupt.
fn decode_ec_point(der: &[u8]) -> Result<PublicKey, KeyMemoryError> {
    let point = <&OctetStringRef>::from_der(der).map_err(|_| KeyMemoryError::Corrupt)?;
    let point = point.as_bytes();
    if point.len() != POINT_LEN || point[0] != 0x04 {
        return Err(KeyMemoryError::Corrupt);
    }
    PublicKey::from_sec1_bytes(point).map_err(|_| KeyMemoryError::Corrupt)
}

/// Maps a PKCS#11 failure: token, session and device failures are `Io`,
/// anything else `otherwise`.
fn token_error(err: Pkcs11Error, otherwise: KeyMemoryError) -> KeyMemoryError {
    use RvError::*;
    match err {
        Pkcs11Error::Pkcs11(
            DeviceError
            | DeviceMemory
            | DeviceRemoved
            | TokenNotPresent
            | TokenNotRecognized
            | TokenWriteProtected
            | SessionClosed
            | SessionHandleInvalid
            | SessionReadOnly
            | UserNotLoggedIn
            | CryptokiNotInitialized
            | HostMemory
            | GeneralError
            | CantLock
            | FunctionFailed,
            _,
        ) => KeyMemoryError::Io,
        Pkcs11Error::Pkcs11(..) => otherwise,
        _ => KeyMemoryError::Io,
    }
}

impl KeyMemory for SoftHsmKeyMemory {
    fn load(&mut self) -> Result<Records, KeyMemoryError> {
        let objects = self.records_objects()?;
        if objects.is_empty() {
            return Ok(Records::default());
        }
        let newest = objects
            .iter()
            .filter(|object| object.records.is_some())
            .filter_map(|object| object.generation)
            .max()
            .ok_or(KeyMemoryError::Corrupt)?;
        let mut chosen: Option<&RecordsObject> = None;
        for object in &objects {
            if object.generation == Some(newest)
                && let Some(records) = &object.records
            {
                match chosen.and_then(|chosen| chosen.records.as_ref()) {
                    // Two different records of one generation: nobody committed that.
                    Some(other) if other != records => return Err(KeyMemoryError::Corrupt),
                    Some(_) => {}
                    None => chosen = Some(object),
                }
            }
        }
        let chosen = chosen.ok_or(KeyMemoryError::Corrupt)?;
        self.destroy_quietly(
            objects
                .iter()
                .map(|object| object.handle)
                .filter(|&handle| handle != chosen.handle),
        );
        chosen.records.clone().ok_or(KeyMemoryError::Corrupt)
    }

    fn commit(&mut self, records: &Records) -> Result<(), KeyMemoryError> {
        let older = self.records_objects()?;
        // Above every generation that decodes. An undecodable object (a torn
        // write) may carry any number; it never wins a load, so it does not count.
        let newest = older
            .iter()
            .filter(|object| object.records.is_some())
            .filter_map(|object| object.generation)
            .max();
        let generation = match newest {
            Some(newest) => newest.checked_add(1).ok_or(KeyMemoryError::Corrupt)?,
            None => 1,
        };
        let mut value = Zeroizing::new(generation.to_be_bytes().to_vec());
        value.extend_from_slice(&Zeroizing::new(records.encode()));
        let mut template = records_template();
        template.extend([
            Attribute::Private(true),
            Attribute::Modifiable(false),
            Attribute::Value(value.to_vec()),
        ]);
        let created = self.session.create_object(&template);
        for attribute in &mut template {
            if let Attribute::Value(bytes) = attribute {
                bytes.zeroize();
            }
        }
        created.map_err(|err| token_error(err, KeyMemoryError::Io))?;
        // The new generation is committed; older ones are leftovers from here on.
        self.destroy_quietly(older.iter().map(|object| object.handle));
        Ok(())
    }

    fn generate(&mut self, slot: KeySlot, variation: &[u8]) -> Result<PublicKey, KeyMemoryError> {
        self.erase(slot)?;
        self.seed(variation)?;
        let name = key_label(slot).as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(true),
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
            // The module key proves itself on the operating channel by ECDH.
            Attribute::Derive(slot == KeySlot::Module),
            Attribute::Unwrap(false),
            Attribute::Copyable(false),
            Attribute::Modifiable(false),
            Attribute::AllowedMechanisms(allowed_mechanisms(slot)),
        ];
        let (public, private) = self
            .session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|err| token_error(err, KeyMemoryError::Crypto))?;
        match self.read_point(public) {
            Ok(key) => {
                *self.signing_key(slot) = Some(private);
                Ok(key)
            }
            Err(err) => {
                self.destroy_quietly([private, public]);
                Err(err)
            }
        }
    }

    fn erase(&mut self, slot: KeySlot) -> Result<(), KeyMemoryError> {
        *self.signing_key(slot) = None;
        for object in self.key_objects(slot)? {
            self.session
                .destroy_object(object)
                .map_err(|err| token_error(err, KeyMemoryError::Io))?;
        }
        Ok(())
    }

    fn public_key(&mut self, slot: KeySlot) -> Result<Option<PublicKey>, KeyMemoryError> {
        // A public half without its private half (a generation cut short) is no key.
        if self.private_key(slot)?.is_none() {
            return Ok(None);
        }
        match self.find_key(slot, ObjectClass::PUBLIC_KEY)?.as_slice() {
            [public] => self.read_point(*public).map(Some),
            _ => Err(KeyMemoryError::Corrupt),
        }
    }

    fn sign_digest(
        &mut self,
        slot: KeySlot,
        digest: &[u8; 48],
    ) -> Result<Signature, KeyMemoryError> {
        let mut signed = None;
        if let Some(key) = *self.signing_key(slot) {
            match self.session.sign(&Mechanism::Ecdsa, key, digest) {
                // The object went away behind this session's back: look again.
                Err(Pkcs11Error::Pkcs11(
                    RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                    _,
                )) => *self.signing_key(slot) = None,
                result => signed = Some(result),
            }
        }
        let result = match signed {
            Some(result) => result,
            None => {
                let key = self.private_key(slot)?.ok_or(KeyMemoryError::NoKey)?;
                *self.signing_key(slot) = Some(key);
                self.session.sign(&Mechanism::Ecdsa, key, digest)
            }
        };
        let signature = result.map_err(|err| token_error(err, KeyMemoryError::Crypto))?;
        if signature.len() != SIGNATURE_LEN {
            return Err(KeyMemoryError::Crypto);
        }
        Signature::from_slice(&signature).map_err(|_| KeyMemoryError::Crypto)
    }

    fn agree(
        &mut self,
        slot: KeySlot,
        peer: &PublicKey,
    ) -> Result<Zeroizing<[u8; 48]>, KeyMemoryError> {
        use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
        let key = self.private_key(slot)?.ok_or(KeyMemoryError::NoKey)?;
        let point = imprint_apdu::channel::encode_point(peer);
        let params = Ecdh1DeriveParams::new(EcKdf::null(), &point);
        // A session object that lives only for this call: the shared secret
        // has to be read out, the private key never is.
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(48.into()),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        let secret = self
            .session
            .derive_key(&Mechanism::Ecdh1Derive(params), key, &template)
            .map_err(|err| token_error(err, KeyMemoryError::Crypto))?;
        let value = self.session.get_attributes(secret, &[AttributeType::Value]);
        self.destroy_quietly([secret]);
        let mut shared = Zeroizing::new([0u8; 48]);
        match value
            .map_err(|err| token_error(err, KeyMemoryError::Crypto))?
            .as_mut_slice()
        {
            [Attribute::Value(bytes)] if bytes.len() == 48 => {
                shared.copy_from_slice(bytes);
                bytes.zeroize();
                Ok(shared)
            }
            [Attribute::Value(bytes)] => {
                bytes.zeroize();
                Err(KeyMemoryError::Crypto)
            }
            _ => Err(KeyMemoryError::Crypto),
        }
    }

    fn random(&mut self, out: &mut [u8]) -> Result<(), KeyMemoryError> {
        if out.is_empty() {
            return Ok(());
        }
        self.session
            .generate_random_slice(out)
            .map_err(|err| token_error(err, KeyMemoryError::Random))
    }
}

#[cfg(test)]
mod tests;
