//! The crate's error type.

use std::path::PathBuf;

use imprint_apdu::host::credentials::CredentialsError;
use imprint_apdu::host::manufacture::ManufactureError;
use imprint_apdu::host::status::StatusError;
use imprint_apdu::host::{PersonalizeError, TransportError};
use imprint_apdu::keymem::KeyMemoryError;
use imprint_apdu::pki::issue::IssueError;
use imprint_apdu::pki::{PkiError, Role};
use imprint_apdu::proto::Lifecycle;
use imprint_central::CentralError;
use imprint_central::keyfile::KeyFileError;

/// Everything that can fail in the host tool's library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// A key, certificate or request file could not be read or written.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The central system failed (the demo creates one).
    #[error(transparent)]
    Central(#[from] CentralError),
    /// The central system's registry failed (the demo runs one).
    #[error(transparent)]
    Registry(#[from] imprint_central::registry::RegistryError),
    /// The demo's in-process central server could not start.
    #[error("cannot start the demo's central server: {0}")]
    CentralServer(#[source] std::io::Error),
    /// A directory or file operation failed.
    #[error("cannot {op} {path}", path = .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A role directory already holds a key.
    #[error("{path} already exists; refusing to overwrite an existing key", path = .0.display())]
    AlreadyInitialized(PathBuf),
    /// A file that should hold a certificate or request does not.
    #[error("{path} does not hold a valid {what}", path = .path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// Why it was refused.
        #[source]
        source: IssueError,
    },
    /// A certificate has another role than required.
    #[error("the {what} has role {found}, expected {expected}")]
    WrongRole {
        /// Which certificate.
        what: &'static str,
        /// The role required.
        expected: Role,
        /// The role found.
        found: Role,
    },
    /// A certificate does not verify against the certificate that should have issued it.
    #[error("the {what} does not verify")]
    Chain {
        /// Which link of the chain.
        what: &'static str,
        /// Why.
        #[source]
        source: PkiError,
    },
    /// A certificate is for another key than this unit's.
    #[error("the {0} is not for this personalization unit's key")]
    NotForThisUnit(&'static str),
    /// The two certificates of the unit name different subjects.
    #[error(
        "the unit's certificates name different subjects ({by_manufacturer} from the manufacturer, {by_central} from the central system); modules require the same name"
    )]
    SubjectMismatch {
        /// Subject of the certificate from the manufacturer.
        by_manufacturer: String,
        /// Subject of the certificate from the central system.
        by_central: String,
    },
    /// The unit's certificates cannot be nested as modules require.
    /// Issuing a certificate failed.
    #[error("cannot issue the {what}")]
    Issue {
        /// Which certificate.
        what: &'static str,
        /// Why.
        #[source]
        source: IssueError,
    },
    /// The unit's credentials are inconsistent.
    #[error("the personalization unit's credentials are inconsistent")]
    Credentials(#[from] CredentialsError),
    /// The module directory does not exist.
    #[error("no module at {path} (a module is created by `imprint manufacturer manufacture`)", path = .0.display())]
    NoModule(PathBuf),
    /// No SoftHSM library was found.
    #[error(
        "no SoftHSM library found (install softhsm2, or set IMPRINT_SOFTHSM_LIB to libsofthsm2.so)"
    )]
    NoSoftHsmLibrary,
    /// A module's SoftHSM token could not be opened.
    #[error("cannot open the SoftHSM token {label:?}")]
    SoftHsm {
        /// The token's label.
        label: String,
        /// Why.
        #[source]
        source: imprint_pkcs11::softhsm::SoftHsmError,
    },
    /// The module's key memory could not be loaded.
    #[error("cannot load the module's key memory in {path}", path = .path.display())]
    KeyMemory {
        /// The module directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: KeyMemoryError,
    },
    /// The module is not in the lifecycle state an operation needs.
    #[error("module {serial} is {found}, not {expected}")]
    Lifecycle {
        /// The module serial, or "without serial".
        serial: String,
        /// The state needed.
        expected: Lifecycle,
        /// The module's state.
        found: Lifecycle,
    },
    /// An OPERATING module lacks a certificate it must hold.
    #[error("module {serial} holds no {what}")]
    MissingCertificate {
        /// The module serial.
        serial: String,
        /// Which certificate.
        what: &'static str,
    },
    /// Manufacturing failed.
    #[error(transparent)]
    Manufacture(#[from] ManufactureError),
    /// Personalizing or resetting failed.
    #[error(transparent)]
    Personalize(#[from] PersonalizeError),
    /// Moving APDUs to or from a module failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Reading a module's status failed.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The journal database failed.
    #[error("issuance journal {path}: {op}", path = .path.display())]
    Sqlite {
        /// The journal file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite refused WAL mode for the journal.
    #[error("issuance journal {path}: journal mode is {mode:?}, WAL is required", path = .path.display())]
    JournalNotWal {
        /// The journal file.
        path: PathBuf,
        /// The mode SQLite kept.
        mode: String,
    },
    /// The journal was written by a newer version of this tool.
    #[error(
        "issuance journal {path} has schema version {found}; this tool supports up to {supported}",
        path = .path.display()
    )]
    JournalTooNew {
        /// The journal file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this tool knows.
        supported: i64,
    },
    /// No journal entry has that id.
    #[error("no issuance journal entry with id {0}")]
    JournalEntryNotFound(i64),
    /// The journal entry is not in status 'issued', so it cannot be marked again.
    #[error("issuance journal entry {id} is already {status}; only 'issued' entries can be marked")]
    JournalEntryNotPending {
        /// The entry.
        id: i64,
        /// Its current status.
        status: String,
    },
    /// The TAN the module proved was consumed, expired or locked between
    /// its check and the issuance record: nothing was recorded or sent.
    #[error("TAN {0} is no longer open (used, expired or locked meanwhile); nothing was issued")]
    TanNoLongerOpen(i64),
    /// The identification value the id unit gave was consumed between its
    /// check and the issuance record: nothing was recorded or sent.
    #[error("identification value {0} is no longer open (used meanwhile); nothing was issued")]
    IdentificationNoLongerOpen(i64),
    /// `imprint idunit issue --values` out of range.
    #[error("an identification unit holds 1 to {max} values")]
    IdUnitValueCount {
        /// The most values an id unit holds.
        max: usize,
    },
    /// A journal row holds a value this tool does not know.
    #[error("issuance journal entry {id} is corrupt: {what}")]
    JournalCorrupt {
        /// The entry.
        id: i64,
        /// What is wrong.
        what: &'static str,
    },
    /// A journal export failed verification; nothing was imported.
    #[error("journal export refused")]
    ExportRefused(#[from] crate::journal::transfer::ExportRejection),
    /// This export was imported into this journal before.
    #[error(
        "this export (chain hash {export_hash}) was already imported at {at}; nothing imported again",
        at = imprint_central::display::utc(u64::try_from(*.imported_at).unwrap_or(0))
    )]
    AlreadyImported {
        /// The export's final chain hash (hex).
        export_hash: String,
        /// When it was imported (seconds since the Unix epoch).
        imported_at: i64,
    },
    /// An imported entry contradicts an entry imported before from the same unit.
    #[error(
        "the export's entry {origin_id} contradicts the entry imported before under that id: {what}; nothing imported"
    )]
    ImportConflict {
        /// The entry's id in the field unit's journal.
        origin_id: i64,
        /// How it differs.
        what: &'static str,
    },
    /// A journal export would have a field too long for its length prefix.
    #[error("the journal export would hold a field longer than its format allows")]
    ExportTooLarge,
    /// A relay name or key is already registered with this unit.
    #[error("relay {0:?} is already registered with this unit (same name or same key)")]
    RelayAlreadyRegistered(String),
    /// The demo was asked for no modules.
    #[error("the demo needs at least one module")]
    NoModules,
    /// The `openssl` program is not installed.
    #[error("`openssl` was not found on PATH; install OpenSSL to get the baseline")]
    OpensslMissing,
    /// `openssl` could not be run.
    #[error("cannot run `openssl`")]
    OpensslSpawn(#[source] std::io::Error),
    /// `openssl speed` exited with an error.
    #[error("`openssl speed` failed ({status}): {stderr}")]
    OpensslFailed {
        /// Its exit status.
        status: String,
        /// The last line of its standard error.
        stderr: String,
    },
    /// The output of `openssl speed` has no parsable nistp384 line.
    #[error(
        "cannot find sign/s and verify/s for nistp384 in the output of `openssl speed`: {excerpt:?}"
    )]
    OpensslUnparsable {
        /// The start of the output.
        excerpt: String,
    },
    /// A card failed during a benchmark.
    #[error("benchmark: the card in reader {reader:?} failed")]
    BenchCardFailed {
        /// The reader.
        reader: String,
        /// Why.
        #[source]
        source: Box<HostError>,
    },
    /// A signature made by the bench did not verify: the crypto stack is broken.
    #[error("a signature made by the bench did not verify; the P-384 stack is broken")]
    BenchSelfCheck,
    /// The operating system's random generator failed.
    #[error("the operating system random generator failed")]
    Random,
    /// The PC/SC service (pcscd) cannot be reached.
    #[error("cannot reach the PC/SC service (is pcscd running?)")]
    PcscService(#[source] pcsc::Error),
    /// A PC/SC call failed.
    #[error("{prefix}cannot {op}", prefix = reader_prefix(.reader.as_deref()))]
    Pcsc {
        /// The reader concerned, if any.
        reader: Option<String>,
        /// What was being done.
        op: &'static str,
        /// The PC/SC error.
        #[source]
        source: pcsc::Error,
    },
    /// No PC/SC reader has the name asked for.
    #[error("no PC/SC reader named {name:?} (readers: {available})", available = reader_list(.available))]
    UnknownReader {
        /// The name asked for.
        name: String,
        /// The readers there are.
        available: Vec<String>,
    },
    /// There are no PC/SC readers.
    #[error("no PC/SC readers are connected")]
    NoReaders,
    /// The reader holds no card.
    #[error("no card in reader {0:?}")]
    NoCard(String),
    /// Another application holds the card exclusively, or we asked for
    /// exclusive access while another application uses it.
    #[error("the card in reader {0:?} is in use by another application")]
    ReaderBusy(String),
    /// The card in the reader does not answer to reset.
    #[error("the card in reader {0:?} does not answer (mute card)")]
    CardMute(String),
    /// The card left the reader (or was reset by another application) during a step.
    #[error("card removed during {step}")]
    CardRemoved {
        /// The command the card was removed during.
        step: &'static str,
    },
    /// The card does not hold the Imprint applet.
    #[error("not an Imprint module (SELECT: {sw:04X})")]
    NotImprintModule {
        /// The card's status word to SELECT of our AID.
        sw: u16,
    },
    /// The module's answer to SELECT does not decode.
    #[error("the module's answer to SELECT does not decode")]
    MalformedSelect,
    /// The reader's PC/SC feature list ends inside an entry.
    #[error("the reader's PC/SC feature list is truncated in the entry at byte {offset}")]
    FeatureListTruncated {
        /// Where the incomplete entry starts.
        offset: usize,
    },
    /// An entry of the reader's PC/SC feature list has another length than 4.
    #[error("the reader's PC/SC feature {tag:02X} has a value of {length} bytes, not 4")]
    FeatureListLength {
        /// The feature tag.
        tag: u8,
        /// The length byte found.
        length: u8,
    },
    /// The reader's PC/SC feature list names a feature twice.
    #[error("the reader's PC/SC feature list names feature {tag:02X} twice")]
    FeatureListDuplicate {
        /// The feature tag.
        tag: u8,
    },
}

fn reader_prefix(reader: Option<&str>) -> String {
    reader.map_or_else(|| "PC/SC: ".to_owned(), |name| format!("reader {name:?}: "))
}

fn reader_list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names
        .iter()
        .map(|name| format!("{name:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
