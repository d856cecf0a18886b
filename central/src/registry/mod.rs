//! The central system's registry: which personalization units and modules it
//! knows, which of them are revoked, the modules' symmetric key sets (sealed at
//! rest) and the journal of operating-channel transactions.
//!
//! ```text
//!  certify-personalizer ─▶ record_unit ─▶ units ◀──────────── revoke_unit (by fingerprint;
//!                                           ▲                  revokes the unit's key)
//!  TLS admission ─▶ check_module ───────────┤ (reads the DB on every call)
//!               └─▶ module_seen ─▶ modules ◀─────────────── revoke_module (by serial)
//!                                     ▲
//!  key agreement ─▶ store_key_set ─▶ key_sets  (key sealed: AES-256-GCM under
//!                                     │         DIR/registry.key, AAD = id ‖ serial)
//!  session ─▶ accept_session_counter ─┘ (atomic: last_counter < counter)
//!  transaction ─▶ record_transaction ─▶ transactions (journal, UNIQUE per
//!                                                     key set, session, sequence)
//!  revoke_* ─▶ revocations (log)
//! ```
//!
//! The database is `DIR/registry.sqlite` (SQLite in WAL mode, so the server and
//! `imprint-central revoke` can use it at the same time); its schema is
//! versioned and migrated on [`Registry::open`]. The 32-byte sealing key lives
//! in `DIR/registry.key` (mode 0600), never in the database: a copy of the
//! database alone does not reveal any key set.
//!
//! Nothing is cached: every check reads the database, so a revocation made by
//! another process takes effect at the next check.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use imprint_apdu::pki::{self, Certificate, Role};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use zeroize::Zeroizing;

use crate::display;
use crate::keyfile::{self, KeyFileError, Overwrite};

mod schema;

#[cfg(test)]
mod tests;

/// File name of the registry database inside the central directory.
pub const DB_FILE: &str = "registry.sqlite";

/// File name of the key-set sealing key inside the central directory.
pub const SEALING_KEY_FILE: &str = "registry.key";

/// How long a call waits for another connection's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Length of a key set's identifier.
pub const KEY_SET_ID_LEN: usize = 16;

/// Length of a key set's key and of the sealing key.
pub const KEY_LEN: usize = 32;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const SEALED_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
const FINGERPRINT_LEN: usize = 48;

/// Domain label at the start of a sealed key set's associated data.
const SEAL_LABEL: &[u8] = b"imprint registry key set v1\0";

/// A failure of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database failed.
    #[error("the registry database failed")]
    Sqlite(#[from] rusqlite::Error),
    /// The sealing key file is missing while the database holds key sets sealed with it.
    #[error(
        "{path} is missing but the registry holds key sets sealed with it; restore it from the backup",
        path = .0.display()
    )]
    SealingKeyMissing(PathBuf),
    /// The server's journal writer could not commit (the cause is in its text).
    #[error("the transaction journal is unavailable: {0}")]
    JournalUnavailable(String),
    /// Reading or writing a file (the sealing key, the database file) failed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The sealing key file does not hold a 32-byte key.
    #[error("{path} holds {len} bytes; a registry sealing key is {KEY_LEN} bytes", path = .path.display())]
    BadSealingKey {
        /// The sealing key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The database holds something this build cannot have written.
    #[error("the registry database is corrupt")]
    Corrupt(#[from] Corruption),
    /// The database was written by a newer build.
    #[error(
        "the registry database has schema version {found}, newer than this build knows ({known}); use a newer imprint-central"
    )]
    SchemaTooNew {
        /// The database's schema version.
        found: u32,
        /// The newest version this build knows.
        known: u32,
    },
    /// The registry refused the operation.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A module serial that is not 16 hex characters.
    #[error("{0:?} is not a module serial (16 hex characters)")]
    InvalidSerial(String),
    /// A fingerprint that is not 48 bytes of hex.
    #[error("{0:?} is not a SHA-384 fingerprint (96 hex characters, colons allowed)")]
    InvalidFingerprint(String),
    /// The certificate given as a unit's is not a personalization unit's.
    #[error("the certificate is a {0} certificate, not a personalization unit's")]
    NotAUnitCertificate(Role),
    /// The certificate given as a module's carries no module serial.
    #[error("the certificate is a {0} certificate, not a module's")]
    NotAModuleCertificate(Role),
    /// A time beyond what the database stores (after year 292277026596).
    #[error("time {0} is out of the registry's range")]
    TimeOutOfRange(u64),
    /// The transaction is already in the journal.
    #[error(
        "transaction {sequence} of session {session_counter} under key set {key_set} is already journaled"
    )]
    DuplicateTransaction {
        /// The key set's identifier, hex.
        key_set: String,
        /// The session counter.
        session_counter: u32,
        /// The sequence number within the session.
        sequence: u32,
    },
    /// A key set with this identifier is already stored.
    #[error("key set {0} is already stored")]
    DuplicateKeySet(String),
    /// The operating system's random generator failed.
    #[error("the operating system random generator failed")]
    Random,
    /// AES-256-GCM refused to seal a key set.
    #[error("sealing the key set failed")]
    Seal,
}

/// What is wrong in a corrupt database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// A sealed key set does not open under the sealing key with its row's
    /// identifier and serial: tampered with, moved to another row, or sealed
    /// under another `registry.key`.
    #[error("key set {key_set} of module {serial} does not open under the sealing key")]
    SealedKey {
        /// The key set's identifier, hex.
        key_set: String,
        /// The module serial of its row.
        serial: String,
    },
    /// A column holds a value out of its type's range.
    #[error("{table}.{column} holds an invalid value")]
    Column {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
    },
}

/// Why the registry refused a module, a key set or a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The unit's certificate by the central system was never recorded.
    #[error("the personalization unit is not registered")]
    UnknownUnit,
    /// The unit's key is revoked.
    #[error("the personalization unit is revoked")]
    UnitRevoked,
    /// The module is revoked.
    #[error("the module is revoked")]
    ModuleRevoked,
    /// No key set has this identifier.
    #[error("unknown key set")]
    UnknownKeySet,
    /// The key set has expired.
    #[error("the key set has expired")]
    KeySetExpired,
    /// The key set was replaced by a newer one.
    #[error("the key set was retired")]
    KeySetRetired,
    /// The key set belongs to another module.
    #[error("the key set belongs to another module")]
    KeySetOfOtherModule,
    /// The session counter does not exceed the last accepted one.
    #[error("session counter {got} replayed (last accepted: {last})")]
    CounterReplayed {
        /// The last accepted counter.
        last: u32,
        /// The counter presented.
        got: u32,
    },
}

/// A module's symmetric key set.
#[derive(Clone)]
pub struct KeySet {
    /// Its identifier.
    pub id: [u8; KEY_SET_ID_LEN],
    /// The key.
    pub key: Zeroizing<[u8; KEY_LEN]>,
    /// When it was created (seconds since the Unix epoch).
    pub created: u64,
    /// When it expires (seconds since the Unix epoch); unusable from then on.
    pub expires: u64,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("id", &display::hex(&self.id))
            .field("created", &self.created)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// A key set as stored, with its module and state.
#[derive(Debug, Clone)]
pub struct StoredKeySet {
    /// The module's serial.
    pub serial: String,
    /// The key set.
    pub key_set: KeySet,
    /// The last accepted session counter (0 before the first session).
    pub last_counter: u32,
    /// Whether a newer key set replaced it.
    pub retired: bool,
}

impl StoredKeySet {
    /// Refuses with [`Refusal::KeySetOfOtherModule`] unless the key set
    /// belongs to module `serial`.
    pub fn check_serial(&self, serial: &str) -> Result<(), Refusal> {
        if self.serial.eq_ignore_ascii_case(serial) {
            Ok(())
        } else {
            Err(Refusal::KeySetOfOtherModule)
        }
    }
}

/// A transaction on the operating channel, for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    /// The module's serial.
    pub serial: String,
    /// The key set of the session.
    pub key_set_id: [u8; KEY_SET_ID_LEN],
    /// The session's counter.
    pub session_counter: u32,
    /// The transaction's sequence number in the session.
    pub sequence: u32,
    /// SHA-384 of the payload.
    pub payload_digest: [u8; 48],
    /// When it happened (seconds since the Unix epoch).
    pub time: u64,
}

/// A transaction with its number in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledTransaction {
    /// Its number (increasing, never reused).
    pub number: u64,
    /// The transaction.
    pub record: TransactionRecord,
}

/// Whether a module may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    /// Not revoked.
    Active,
    /// Revoked.
    Revoked,
}

impl fmt::Display for ModuleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
        })
    }
}

/// One module as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSummary {
    /// The module's serial.
    pub serial: String,
    /// Whether the module itself is revoked.
    pub state: ModuleState,
    /// Whether the key of the unit it was last seen with is revoked.
    pub unit_revoked: bool,
    /// Fingerprint of the unit it was last seen with.
    pub unit_fingerprint: String,
    /// When it first connected.
    pub first_seen: u64,
    /// When it last connected.
    pub last_seen: u64,
    /// Creation of its current (newest, not retired) key set, if any.
    pub key_set_created: Option<u64>,
    /// Expiry of its current key set, if any.
    pub key_set_expires: Option<u64>,
    /// How many of its transactions are journaled.
    pub transactions: u64,
}

/// The registry: a connection to `DIR/registry.sqlite` and the sealing key.
pub struct Registry {
    conn: Connection,
    cipher: Aes256Gcm,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("db", &self.conn.path())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens the registry of the central directory `dir` (created with mode
    /// 0700 if missing): creates the database (mode 0600) and the sealing key
    /// (mode 0600) if missing, sets WAL mode, the busy timeout and foreign
    /// keys, and migrates the schema.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        keyfile::create_private_dir(dir)?;
        let key_path = dir.join(SEALING_KEY_FILE);
        let db = dir.join(DB_FILE);
        // A lost sealing key must not be replaced by a fresh one under a
        // database full of key sets sealed with the old: they would all read
        // as corrupt. Refuse, and let the operator restore the key.
        if !key_path.exists() && db.exists() {
            let sealed: i64 = Connection::open(&db)?
                .query_row("SELECT count(*) FROM key_sets", [], |row| row.get(0))
                .unwrap_or(0);
            if sealed > 0 {
                return Err(RegistryError::SealingKeyMissing(key_path));
            }
        }
        let sealing_key = sealing_key(&key_path)?;
        create_private_file(&db)?;
        let mut conn = Connection::open(&db)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        schema::migrate(&mut conn)?;
        let cipher = Aes256Gcm::new(&(*sealing_key).into());
        Ok(Self { conn, cipher })
    }

    /// A second, read-only connection to this registry's database for the
    /// per-message standing check ([`StandingReader::check`]), so that check
    /// never waits behind the journal writer's commits.
    pub fn standing_reader(&self) -> Result<StandingReader, RegistryError> {
        let path = self.conn.path().filter(|path| !path.is_empty()).ok_or(
            RegistryError::JournalUnavailable("the registry has no database file to read".into()),
        )?;
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(StandingReader { conn })
    }

    /// [`StandingReader::check`] on this connection.
    pub fn module_standing(&self, serial: &str) -> Result<(), RegistryError> {
        StandingReader::check_on(&self.conn, serial)
    }

    /// The schema version this build writes.
    pub fn schema_version() -> u32 {
        schema::known_version()
    }

    /// Records a unit's certificate issued by the central system and returns
    /// its fingerprint. Recording the same certificate again changes nothing.
    pub fn record_unit(
        &mut self,
        unit_by_central: &Certificate,
        now: u64,
    ) -> Result<String, RegistryError> {
        if unit_by_central.role() != Role::Personalizer {
            return Err(RegistryError::NotAUnitCertificate(unit_by_central.role()));
        }
        let fingerprint = display::fingerprint(unit_by_central);
        self.conn.execute(
            "INSERT INTO units (fingerprint, public_key, subject, not_after, certified_at, certificate)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (fingerprint) DO NOTHING",
            params![
                fingerprint,
                unit_by_central.public_key_sec1(),
                display::subject(unit_by_central),
                time_in(unit_by_central.not_after_unix())?,
                time_in(now)?,
                unit_by_central.der(),
            ],
        )?;
        Ok(fingerprint)
    }

    /// Whether module `module_serial`, admitted through the unit certificate
    /// `unit_by_central`, may connect: the certificate must have been
    /// recorded, the unit's key must not be revoked, nor the module. A module
    /// not seen before is not refused. Reads the database on every call.
    pub fn check_module(
        &self,
        unit_by_central: &Certificate,
        module_serial: &str,
    ) -> Result<(), RegistryError> {
        let tx = self.conn.unchecked_transaction()?;
        unit_state(&tx, &display::fingerprint(unit_by_central))?;
        let revoked: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked_at FROM modules WHERE serial = ?1",
                [module_serial.to_ascii_lowercase()],
                |row| row.get(0),
            )
            .optional()?;
        tx.finish()?;
        if matches!(revoked, Some(Some(_))) {
            return Err(Refusal::ModuleRevoked.into());
        }
        Ok(())
    }

    /// Records that a module connected with `module_cert`, admitted through
    /// `unit_by_central` (which must be recorded): creates its row or updates
    /// its certificate, unit and last-seen time. A revocation stays.
    pub fn module_seen(
        &mut self,
        module_cert: &Certificate,
        unit_by_central: &Certificate,
        now: u64,
    ) -> Result<(), RegistryError> {
        let serial = module_cert
            .module_serial()
            .ok_or(RegistryError::NotAModuleCertificate(module_cert.role()))?
            .to_ascii_lowercase();
        let fingerprint = display::fingerprint(unit_by_central);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM units WHERE fingerprint = ?1)",
            [&fingerprint],
            |row| row.get(0),
        )?;
        if !known {
            return Err(Refusal::UnknownUnit.into());
        }
        let now = time_in(now)?;
        tx.execute(
            "INSERT INTO modules (serial, unit_fingerprint, module_cert, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (serial) DO UPDATE SET
                 unit_fingerprint = excluded.unit_fingerprint,
                 module_cert = excluded.module_cert,
                 last_seen = max(last_seen, excluded.last_seen)",
            params![serial, fingerprint, module_cert.der(), now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Stores a new key set for module `serial`, its key sealed, and retires
    /// the module's earlier key sets. Refuses a revoked module.
    pub fn store_key_set(&mut self, serial: &str, key_set: &KeySet) -> Result<(), RegistryError> {
        let serial = normalize_serial(serial)?;
        let sealed = self.seal(&key_set.id, &serial, &key_set.key)?;
        let created = time_in(key_set.created)?;
        let expires = time_in(key_set.expires)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if module_revoked(&tx, &serial)? {
            return Err(Refusal::ModuleRevoked.into());
        }
        tx.execute(
            "UPDATE key_sets SET retired = 1 WHERE serial = ?1 AND retired = 0",
            [&serial],
        )?;
        let inserted = tx.execute(
            "INSERT INTO key_sets (id, serial, sealed_key, created, expires)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO NOTHING",
            params![&key_set.id[..], serial, &sealed[..], created, expires],
        )?;
        if inserted == 0 {
            return Err(RegistryError::DuplicateKeySet(display::hex(&key_set.id)));
        }
        tx.commit()?;
        Ok(())
    }

    /// The key set `id`, its key unsealed, or `None` if there is none.
    pub fn key_set(
        &self,
        id: &[u8; KEY_SET_ID_LEN],
    ) -> Result<Option<StoredKeySet>, RegistryError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {KEY_SET_COLUMNS} FROM key_sets WHERE id = ?1"),
                [&id[..]],
                KeySetRow::from_row,
            )
            .optional()?;
        row.map(|row| Self::open_row(&self.cipher, id, row))
            .transpose()
    }

    /// Accepts `counter` as the next session counter of key set `id`,
    /// atomically: under the database's write lock, it refuses an unknown,
    /// expired (`expires <= now`) or retired key set, a revoked module or
    /// unit, and a counter not greater than the last accepted one; otherwise
    /// it stores `counter` as the last accepted one. Returns the key set as it
    /// now stands.
    pub fn accept_session_counter(
        &mut self,
        id: &[u8; KEY_SET_ID_LEN],
        counter: u32,
        now: u64,
    ) -> Result<StoredKeySet, RegistryError> {
        let cipher = &self.cipher;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(row) = tx
            .query_row(
                &format!("SELECT {KEY_SET_COLUMNS} FROM key_sets WHERE id = ?1"),
                [&id[..]],
                KeySetRow::from_row,
            )
            .optional()?
        else {
            return Err(Refusal::UnknownKeySet.into());
        };
        let mut stored = Self::open_row(cipher, id, row)?;
        if stored.retired {
            return Err(Refusal::KeySetRetired.into());
        }
        if stored.key_set.expires <= now {
            return Err(Refusal::KeySetExpired.into());
        }
        if module_revoked(&tx, &stored.serial)? {
            return Err(Refusal::ModuleRevoked.into());
        }
        if module_unit_revoked(&tx, &stored.serial)? {
            return Err(Refusal::UnitRevoked.into());
        }
        let updated = tx.execute(
            "UPDATE key_sets SET last_counter = ?2 WHERE id = ?1 AND last_counter < ?2",
            params![&id[..], counter],
        )?;
        if updated != 1 {
            return Err(Refusal::CounterReplayed {
                last: stored.last_counter,
                got: counter,
            }
            .into());
        }
        tx.commit()?;
        stored.last_counter = counter;
        Ok(stored)
    }

    /// Appends a transaction to the journal and returns its number. The key
    /// set must exist and belong to the record's module; a transaction
    /// already journaled (same key set, session counter and sequence) is
    /// refused with [`RegistryError::DuplicateTransaction`].
    pub fn record_transaction(&mut self, record: &TransactionRecord) -> Result<u64, RegistryError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let number = insert_transaction(&tx, record)?;
        tx.commit()?;
        Ok(number)
    }

    /// Appends several transactions in one database transaction (one commit,
    /// one sync to disk: a group commit), each with the checks of
    /// [`Registry::record_transaction`]. A record that is refused does not
    /// affect the others; the outer error is for the commit itself, and then
    /// none of them is journaled.
    pub fn record_transactions(
        &mut self,
        records: &[TransactionRecord],
    ) -> Result<Vec<Result<u64, RegistryError>>, RegistryError> {
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut numbers = Vec::with_capacity(records.len());
        for record in records {
            // A savepoint per record: a refused one is rolled back alone.
            let savepoint = tx.savepoint()?;
            let number = insert_transaction(&savepoint, record);
            if number.is_ok() {
                savepoint.commit()?;
            }
            numbers.push(number);
        }
        tx.commit()?;
        Ok(numbers)
    }

    /// The whole journal, oldest first.
    pub fn transactions(&self) -> Result<Vec<JournaledTransaction>, RegistryError> {
        let mut statement = self.conn.prepare(
            "SELECT number, serial, key_set_id, session_counter, sequence, payload_digest, time
             FROM transactions ORDER BY number",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, u32>(3)?,
                row.get::<_, u32>(4)?,
                row.get::<_, Vec<u8>>(5)?,
                row.get::<_, i64>(6)?,
            ))
        })?;
        let mut journal = Vec::new();
        for row in rows {
            let (number, serial, key_set_id, session_counter, sequence, digest, time) = row?;
            journal.push(JournaledTransaction {
                number: time_out(number, "transactions", "number")?,
                record: TransactionRecord {
                    serial,
                    key_set_id: fixed(&key_set_id, "transactions", "key_set_id")?,
                    session_counter,
                    sequence,
                    payload_digest: fixed(&digest, "transactions", "payload_digest")?,
                    time: time_out(time, "transactions", "time")?,
                },
            });
        }
        Ok(journal)
    }

    /// Revokes module `serial` (hex, either case) from `now` on. `Ok(false)`
    /// if no such module was ever seen; revoking it again keeps the first
    /// revocation time.
    pub fn revoke_module(&mut self, serial: &str, now: u64) -> Result<bool, RegistryError> {
        let serial = normalize_serial(serial)?;
        let now = time_in(now)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM modules WHERE serial = ?1)",
            [&serial],
            |row| row.get(0),
        )?;
        if !known {
            return Ok(false);
        }
        tx.execute(
            "UPDATE modules SET revoked_at = ?2 WHERE serial = ?1 AND revoked_at IS NULL",
            params![serial, now],
        )?;
        tx.execute(
            "INSERT INTO revocations (what, id, time) VALUES ('module', ?1, ?2)",
            params![serial, now],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Revokes the key of the unit whose certificate by the central system
    /// has `fingerprint` (hex, either case, colons or spaces allowed): every
    /// recorded certificate with the same public key. `Ok(false)` if no such
    /// certificate was recorded.
    pub fn revoke_unit(&mut self, fingerprint: &str, now: u64) -> Result<bool, RegistryError> {
        let fingerprint = normalize_fingerprint(fingerprint)?;
        let now = time_in(now)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(public_key) = tx
            .query_row(
                "SELECT public_key FROM units WHERE fingerprint = ?1",
                [&fingerprint],
                |row| row.get::<_, Vec<u8>>(0),
            )
            .optional()?
        else {
            return Ok(false);
        };
        tx.execute(
            "UPDATE units SET revoked_at = ?2 WHERE public_key = ?1 AND revoked_at IS NULL",
            params![public_key, now],
        )?;
        tx.execute(
            "INSERT INTO revocations (what, id, time) VALUES ('unit', ?1, ?2)",
            params![fingerprint, now],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Every module seen, by serial.
    pub fn modules(&self) -> Result<Vec<ModuleSummary>, RegistryError> {
        let mut statement = self.conn.prepare(
            "SELECT m.serial, m.revoked_at IS NOT NULL, m.unit_fingerprint, m.first_seen, m.last_seen,
                 EXISTS (SELECT 1 FROM units u JOIN units f ON u.public_key = f.public_key
                         WHERE f.fingerprint = m.unit_fingerprint AND u.revoked_at IS NOT NULL),
                 k.created, k.expires,
                 (SELECT count(*) FROM transactions t WHERE t.serial = m.serial)
             FROM modules m
             LEFT JOIN key_sets k ON k.rowid =
                 (SELECT rowid FROM key_sets WHERE serial = m.serial AND retired = 0
                  ORDER BY created DESC, rowid DESC LIMIT 1)
             ORDER BY m.serial",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, bool>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, bool>(5)?,
                row.get::<_, Option<i64>>(6)?,
                row.get::<_, Option<i64>>(7)?,
                row.get::<_, i64>(8)?,
            ))
        })?;
        let mut modules = Vec::new();
        for row in rows {
            let (serial, revoked, unit, first, last, unit_revoked, created, expires, count) = row?;
            modules.push(ModuleSummary {
                serial,
                state: if revoked {
                    ModuleState::Revoked
                } else {
                    ModuleState::Active
                },
                unit_revoked,
                unit_fingerprint: unit,
                first_seen: time_out(first, "modules", "first_seen")?,
                last_seen: time_out(last, "modules", "last_seen")?,
                key_set_created: created
                    .map(|t| time_out(t, "key_sets", "created"))
                    .transpose()?,
                key_set_expires: expires
                    .map(|t| time_out(t, "key_sets", "expires"))
                    .transpose()?,
                transactions: time_out(count, "transactions", "count")?,
            });
        }
        Ok(modules)
    }

    fn aad(id: &[u8; KEY_SET_ID_LEN], serial: &str) -> Vec<u8> {
        [SEAL_LABEL, &id[..], serial.as_bytes()].concat()
    }

    fn seal(
        &self,
        id: &[u8; KEY_SET_ID_LEN],
        serial: &str,
        key: &[u8; KEY_LEN],
    ) -> Result<Vec<u8>, RegistryError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| RegistryError::Random)?;
        let aad = Self::aad(id, serial);
        let sealed = self
            .cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: key,
                    aad: &aad,
                },
            )
            .map_err(|_| RegistryError::Seal)?;
        Ok([&nonce[..], &sealed].concat())
    }

    fn open_row(
        cipher: &Aes256Gcm,
        id: &[u8; KEY_SET_ID_LEN],
        row: KeySetRow,
    ) -> Result<StoredKeySet, RegistryError> {
        let corrupt = || Corruption::SealedKey {
            key_set: display::hex(id),
            serial: row.serial.clone(),
        };
        if row.sealed.len() != SEALED_LEN {
            return Err(corrupt().into());
        }
        let (nonce, sealed) = row.sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| corrupt())?;
        let aad = Self::aad(id, &row.serial);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    &nonce.into(),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| corrupt())?,
        );
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if plain.len() != KEY_LEN {
            return Err(corrupt().into());
        }
        key.copy_from_slice(&plain);
        Ok(StoredKeySet {
            key_set: KeySet {
                id: *id,
                key,
                created: time_out(row.created, "key_sets", "created")?,
                expires: time_out(row.expires, "key_sets", "expires")?,
            },
            serial: row.serial,
            last_counter: row.last_counter,
            retired: row.retired,
        })
    }
}

const KEY_SET_COLUMNS: &str = "serial, sealed_key, created, expires, last_counter, retired";

struct KeySetRow {
    serial: String,
    sealed: Vec<u8>,
    created: i64,
    expires: i64,
    last_counter: u32,
    retired: bool,
}

impl KeySetRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            serial: row.get(0)?,
            sealed: row.get(1)?,
            created: row.get(2)?,
            expires: row.get(3)?,
            last_counter: row.get(4)?,
            retired: row.get(5)?,
        })
    }
}

/// Refuses an unknown unit certificate or a revoked unit key.
fn unit_state(conn: &Connection, fingerprint: &str) -> Result<(), RegistryError> {
    let revoked: Option<bool> = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM units u WHERE u.public_key = f.public_key
                                                   AND u.revoked_at IS NOT NULL)
             FROM units f WHERE f.fingerprint = ?1",
            [fingerprint],
            |row| row.get(0),
        )
        .optional()?;
    match revoked {
        None => Err(Refusal::UnknownUnit.into()),
        Some(true) => Err(Refusal::UnitRevoked.into()),
        Some(false) => Ok(()),
    }
}

fn module_revoked(conn: &Connection, serial: &str) -> Result<bool, RegistryError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM modules WHERE serial = ?1 AND revoked_at IS NOT NULL)",
        [serial],
        |row| row.get(0),
    )?)
}

/// A read-only view of the registry for the check the central system makes
/// before each transaction message reaches the application.
pub struct StandingReader {
    conn: Connection,
}

impl StandingReader {
    /// Refuses a module that is revoked, or whose unit's key is: the
    /// application must never see a message from either.
    pub fn check(&self, serial: &str) -> Result<(), RegistryError> {
        Self::check_on(&self.conn, serial)
    }

    fn check_on(conn: &Connection, serial: &str) -> Result<(), RegistryError> {
        let serial = serial.to_ascii_lowercase();
        if module_revoked(conn, &serial)? {
            return Err(Refusal::ModuleRevoked.into());
        }
        if module_unit_revoked(conn, &serial)? {
            return Err(Refusal::UnitRevoked.into());
        }
        Ok(())
    }
}

/// Whether the key of the unit module `serial` was last seen with is revoked.
fn module_unit_revoked(conn: &Connection, serial: &str) -> Result<bool, RegistryError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM modules m
                        JOIN units f ON f.fingerprint = m.unit_fingerprint
                        JOIN units u ON u.public_key = f.public_key
                        WHERE m.serial = ?1 AND u.revoked_at IS NOT NULL)",
        [serial],
        |row| row.get(0),
    )?)
}

/// A module serial in its stored form (lowercase), or an error if it is not
/// one.
fn normalize_serial(serial: &str) -> Result<String, RegistryError> {
    let lower = serial.trim().to_ascii_lowercase();
    if pki::is_serial_hex(&lower) {
        Ok(lower)
    } else {
        Err(RegistryError::InvalidSerial(serial.to_owned()))
    }
}

/// A fingerprint in its stored form (lowercase hex, no separators).
fn normalize_fingerprint(text: &str) -> Result<String, RegistryError> {
    match display::parse_hex(text.trim()) {
        Some(bytes) if bytes.len() == FINGERPRINT_LEN => Ok(display::hex(&bytes)),
        _ => Err(RegistryError::InvalidFingerprint(text.to_owned())),
    }
}

/// A time (or count) as the database stores it.
fn time_in(time: u64) -> Result<i64, RegistryError> {
    i64::try_from(time).map_err(|_| RegistryError::TimeOutOfRange(time))
}

/// A stored time (or count) back; negative values are corruption.
fn time_out(value: i64, table: &'static str, column: &'static str) -> Result<u64, RegistryError> {
    u64::try_from(value).map_err(|_| Corruption::Column { table, column }.into())
}

fn fixed<const N: usize>(
    bytes: &[u8],
    table: &'static str,
    column: &'static str,
) -> Result<[u8; N], RegistryError> {
    bytes
        .try_into()
        .map_err(|_| Corruption::Column { table, column }.into())
}

/// Creates `path` empty with mode 0600 if it does not exist, so that SQLite
/// (which gives its `-wal` and `-shm` files the database's mode) never makes
/// it readable by others.
fn create_private_file(path: &Path) -> Result<(), RegistryError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(keyfile::KEY_FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(KeyFileError::Io {
            op: "create",
            path: path.to_path_buf(),
            source,
        }
        .into()),
    }
}

/// Reads the sealing key at `path`, creating it (32 random bytes, mode 0600)
/// if it does not exist. Refuses a file that group or others may access.
fn sealing_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, RegistryError> {
    match File::open(path) {
        Ok(file) => read_sealing_key(path, file),
        Err(err) if err.kind() == ErrorKind::NotFound => {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            getrandom::fill(&mut key[..]).map_err(|_| RegistryError::Random)?;
            match keyfile::write_atomic(path, &key[..], keyfile::KEY_FILE_MODE, Overwrite::Refuse) {
                Ok(()) => Ok(key),
                // Another process created it first: use theirs.
                Err(KeyFileError::Exists(_)) => {
                    let file = File::open(path).map_err(|source| KeyFileError::Io {
                        op: "open",
                        path: path.to_path_buf(),
                        source,
                    })?;
                    read_sealing_key(path, file)
                }
                Err(err) => Err(err.into()),
            }
        }
        Err(source) => Err(KeyFileError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        }
        .into()),
    }
}

fn read_sealing_key(
    path: &Path,
    mut file: File,
) -> Result<Zeroizing<[u8; KEY_LEN]>, RegistryError> {
    let io = |op| {
        let path = path.to_path_buf();
        move |source| KeyFileError::Io { op, path, source }
    };
    let metadata = file.metadata().map_err(io("inspect"))?;
    if !metadata.is_file() {
        return Err(KeyFileError::NotAFile(path.to_path_buf()).into());
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        }
        .into());
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_LEN + 1));
    (&mut file)
        .take(KEY_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io("read"))?;
    if bytes.len() != KEY_LEN {
        return Err(RegistryError::BadSealingKey {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// Checks and inserts one journal record inside an open transaction.
fn insert_transaction(
    tx: &rusqlite::Connection,
    record: &TransactionRecord,
) -> Result<u64, RegistryError> {
    let time = time_in(record.time)?;
    let owner: Option<String> = tx
        .query_row(
            "SELECT serial FROM key_sets WHERE id = ?1",
            [&record.key_set_id[..]],
            |row| row.get(0),
        )
        .optional()?;
    match owner {
        None => return Err(Refusal::UnknownKeySet.into()),
        Some(owner) if !owner.eq_ignore_ascii_case(&record.serial) => {
            return Err(Refusal::KeySetOfOtherModule.into());
        }
        Some(_) => {}
    }
    // Checked per message, not only when the session opened: a revocation
    // stops an open session at its next message.
    let serial = record.serial.to_ascii_lowercase();
    if module_revoked(tx, &serial)? {
        return Err(Refusal::ModuleRevoked.into());
    }
    if module_unit_revoked(tx, &serial)? {
        return Err(Refusal::UnitRevoked.into());
    }
    let inserted = tx.execute(
        "INSERT INTO transactions
             (serial, key_set_id, session_counter, sequence, payload_digest, time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (key_set_id, session_counter, sequence) DO NOTHING",
        params![
            record.serial.to_ascii_lowercase(),
            &record.key_set_id[..],
            record.session_counter,
            record.sequence,
            &record.payload_digest[..],
            time,
        ],
    )?;
    if inserted == 0 {
        return Err(RegistryError::DuplicateTransaction {
            key_set: display::hex(&record.key_set_id),
            session_counter: record.session_counter,
            sequence: record.sequence,
        });
    }
    time_out(tx.last_insert_rowid(), "transactions", "number")
}
