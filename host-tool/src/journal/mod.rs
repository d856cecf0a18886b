//! The issuance journal: every module certificate the unit issues, recorded
//! durably before it leaves the unit (DESIGN §8), then marked installed or
//! failed.
//!
//! ```text
//!  personalize ─ Action::Record ─▶ record_issued ─▶ INSERT … 'issued' (committed, fsynced)
//!              ─ PUT DATA ok ────▶ mark_installed ─▶ 'issued' → 'installed'
//!              ─ any failure ────▶ mark_failed ────▶ 'issued' → 'failed' + reason
//! ```
//!
//! The same database is the unit's TAN store (claim 13, schema version 3):
//! a unit-wide salt, and per TAN its verifier, binding, expiry, use and
//! failures; never the TAN. A TAN is consumed in the transaction that
//! records the certificate it authorized.
//!
//! ```text
//!  imprint tan issue ─▶ INSERT tan (verifier, serial?, expires)           prints the TANs once
//!  check_tan ─▶ BEGIN IMMEDIATE; judge(rows); failures += 1 | accept; COMMIT
//!  record_issued(tan = id) ─▶ BEGIN IMMEDIATE; INSERT issuance; UPDATE tan SET used_at; COMMIT
//! ```
//!
//! Schema version 5 makes it the registry of identification units (claims
//! 16–18): per id unit its identifier and `K_id`, per identification value
//! its verifier and use; never a value. A value is consumed in the
//! transaction that records the certificate it vouched for.
//!
//! ```text
//!  imprint idunit issue ─▶ INSERT idunit (id, key); INSERT idvalue (verifier) × N
//!  check_identification ─▶ judge(key, rows)        (read only: a refusal changes nothing)
//!  record_issued(identification = v) ─▶ … UPDATE idvalue SET used_at WHERE used_at IS NULL
//! ```
//!
//! SQLite in WAL mode with `synchronous=FULL`, so a committed row survives a
//! power loss. The schema is versioned with `PRAGMA user_version`; each
//! migration runs in one transaction.

use std::path::{Path, PathBuf};

use imprint_apdu::channel::{Digest48, tan_verifier};
use imprint_apdu::host::identification::{
    IdUnitRegistration, IdValueRow, IdentificationCheck, IdentificationRefusal, id_hex,
    judge as judge_identification, value_verifier,
};
use imprint_apdu::host::personalize::unix_now;
use imprint_apdu::host::tan::{
    Judgement, SERIAL_FAILURE_LIMIT, TAN_FAILURE_LIMIT, TAN_SALT_LEN, TanCheck, TanRow, judge,
};
use imprint_apdu::host::{IssuanceJournal, IssuedCertificate, JournalError};
use imprint_apdu::idunit::{self, IdUnitRecord, IdentificationAnswer};
use imprint_apdu::pki::Certificate;
use imprint_central::display;
use rusqlite::TransactionBehavior;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use zeroize::Zeroizing;

use crate::HostError;

pub mod relays;
#[cfg(test)]
mod tests;
pub mod transfer;

/// Schema migrations; after applying `MIGRATIONS[i]` the schema version is `i + 1`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE issuance (
        id          INTEGER PRIMARY KEY,
        serial      TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        certificate BLOB NOT NULL,
        nonce       BLOB NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('issued', 'installed', 'failed')),
        reason      TEXT,
        issued_at   INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE INDEX issuance_serial ON issuance (serial);",
    // Version 2, the field station (claim 12): entries imported from another
    // unit's signed export keep their origin (that unit's certificate
    // fingerprint and its journal id) and the import that brought them; each
    // export is recorded once by its final chain hash, so a second import of
    // the same export is refused.
    "CREATE TABLE import (
        id             INTEGER PRIMARY KEY,
        export_hash    TEXT NOT NULL UNIQUE,
        origin_unit    TEXT NOT NULL,
        origin_subject TEXT NOT NULL,
        entries        INTEGER NOT NULL,
        imported_at    INTEGER NOT NULL
    );
    ALTER TABLE issuance ADD COLUMN origin_unit TEXT;
    ALTER TABLE issuance ADD COLUMN origin_id INTEGER;
    ALTER TABLE issuance ADD COLUMN import_id INTEGER REFERENCES import (id);
    CREATE UNIQUE INDEX issuance_origin ON issuance (origin_unit, origin_id)
        WHERE origin_unit IS NOT NULL;",
    // Version 3, claim 13: the TAN store. The salt is created once (single row); a TAN
    // is kept as its verifier only.
    "CREATE TABLE tan_salt (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        salt BLOB NOT NULL CHECK (length(salt) = 32)
    );
    CREATE TABLE tan (
        id          INTEGER PRIMARY KEY,
        verifier    BLOB NOT NULL CHECK (length(verifier) = 48),
        serial      TEXT,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        used_at     INTEGER,
        issuance_id INTEGER REFERENCES issuance (id),
        failures    INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE tan_serial (
        serial   TEXT PRIMARY KEY,
        failures INTEGER NOT NULL DEFAULT 0
    );",
    // Version 4, remote personalization through a relay (claim 14): the
    // relays registered with this unit (their public keys), and which relay
    // presented which module, so the module is identified indirectly through
    // the relay. A presentation by an unregistered relay keeps its key's
    // fingerprint with no name.
    "CREATE TABLE relays (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        fingerprint   TEXT NOT NULL UNIQUE,
        public_key    BLOB NOT NULL,
        registered_at INTEGER NOT NULL
    );
    CREATE TABLE relay_presentations (
        id                INTEGER PRIMARY KEY,
        serial            TEXT NOT NULL,
        relay_fingerprint TEXT NOT NULL,
        relay_id          INTEGER REFERENCES relays (id),
        journal_id        INTEGER REFERENCES issuance (id),
        outcome           TEXT NOT NULL,
        presented_at      INTEGER NOT NULL,
        updated_at        INTEGER NOT NULL
    );
    CREATE INDEX relay_presentations_serial ON relay_presentations (serial);",
    // Version 5, claims 16-18: identification units registered with this unit.
    // The unit must hold K_id itself to verify the id unit's HMAC, so the key
    // is stored as is, like the TAN salt, in this database inside the unit's
    // 0700 directory next to its 0600 private key (docs/protocol.md section 19
    // says what a reader of it gains); each value only
    // as its salted SHA-384 verifier (the TAN salt is the unit's salt).
    "CREATE TABLE idunit (
        id            BLOB PRIMARY KEY CHECK (length(id) = 16),
        key           BLOB NOT NULL CHECK (length(key) = 32),
        registered_at INTEGER NOT NULL
    );
    CREATE TABLE idvalue (
        id          INTEGER PRIMARY KEY,
        idunit      BLOB NOT NULL REFERENCES idunit (id),
        verifier    BLOB NOT NULL UNIQUE CHECK (length(verifier) = 48),
        created_at  INTEGER NOT NULL,
        used_at     INTEGER,
        issuance_id INTEGER REFERENCES issuance (id)
    );
    CREATE INDEX idvalue_idunit ON idvalue (idunit);",
    // Version 6, claim 15: the peer address of the module's direct connection
    // when a relayed run moved onto one after the handshake (NULL: the run
    // stayed on the relay).
    "ALTER TABLE relay_presentations ADD COLUMN direct_peer TEXT;",
    // Version 7, claims 16-18: an identification unit may be issued for one
    // module serial (NULL: it vouches for any module of this unit).
    "ALTER TABLE idunit ADD COLUMN serial TEXT;",
];

/// The schema version this tool writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Where an issued certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuanceStatus {
    /// Recorded; not yet known to be installed.
    Issued,
    /// The module committed it.
    Installed,
    /// The personalization failed after it was issued.
    Failed,
}

impl IssuanceStatus {
    /// The text stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Installed => "installed",
            Self::Failed => "failed",
        }
    }

    /// Parses the `status` column.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "issued" => Some(Self::Issued),
            "installed" => Some(Self::Installed),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

impl std::fmt::Display for IssuanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The journal id.
    pub id: i64,
    /// The module serial (16 lowercase hex characters).
    pub serial: String,
    /// SHA-384 of the certificate DER, lowercase hex.
    pub fingerprint: String,
    /// The certificate, DER.
    pub certificate: Vec<u8>,
    /// The module's nonce the certificate carries (claim 9).
    pub nonce: Vec<u8>,
    /// Where it stands.
    pub status: IssuanceStatus,
    /// Why it failed, for failed entries.
    pub reason: Option<String>,
    /// When it was recorded (seconds since the Unix epoch).
    pub issued_at: i64,
    /// When its status last changed (seconds since the Unix epoch).
    pub updated_at: i64,
    /// Where the entry came from: `None` for a certificate this unit issued,
    /// the issuing unit for an entry imported from a field unit's export.
    pub origin: Option<EntryOrigin>,
}

/// The unit that issued an imported entry (claim 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOrigin {
    /// SHA-384 fingerprint (lowercase hex) of the issuing unit's certificate
    /// from the central system.
    pub unit: String,
    /// The entry's id in the issuing unit's own journal.
    pub id: i64,
}

impl JournalEntry {
    /// Parses the stored certificate.
    pub fn parse_certificate(&self) -> Result<Certificate, HostError> {
        Certificate::from_der(&self.certificate).map_err(|_| HostError::JournalCorrupt {
            id: self.id,
            what: "the stored certificate does not parse",
        })
    }
}

/// The issuance journal in one SQLite file.
#[derive(Debug)]
pub struct SqliteJournal {
    conn: Connection,
    path: PathBuf,
}

impl SqliteJournal {
    /// Opens the journal at `path`, creating it if needed, and migrates it to
    /// the current schema.
    pub fn open(path: &Path) -> Result<Self, HostError> {
        Self::open_with(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
    }

    /// Opens an existing journal; fails if there is none at `path`.
    pub fn open_existing(path: &Path) -> Result<Self, HostError> {
        if !path.is_file() {
            return Err(HostError::Io {
                op: "open the issuance journal",
                path: path.to_path_buf(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        Self::open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<Self, HostError> {
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(sqlite(path, "cannot open"))?;
        let mut journal = Self {
            conn,
            path: path.to_path_buf(),
        };
        journal.configure()?;
        journal.migrate()?;
        Ok(journal)
    }

    fn configure(&self) -> Result<(), HostError> {
        let path = &self.path;
        self.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sqlite(path, "cannot set the busy timeout"))?;
        let mode: String = self
            .conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sqlite(path, "cannot switch to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(HostError::JournalNotWal {
                path: path.clone(),
                mode,
            });
        }
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite(path, "cannot set synchronous=FULL"))?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), HostError> {
        let path = self.path.clone();
        let version = self.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(HostError::JournalTooNew {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let start = usize::try_from(version).unwrap_or(0);
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(start) {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
                .map_err(sqlite(&path, "cannot begin a migration"))?;
            // Another process may have migrated while we waited for the lock.
            let current: i64 = tx
                .pragma_query_value(None, "user_version", |row| row.get(0))
                .map_err(sqlite(&path, "cannot read the schema version"))?;
            if current > index as i64 {
                continue;
            }
            tx.execute_batch(migration)
                .map_err(sqlite(&path, "cannot migrate the schema"))?;
            tx.pragma_update(None, "user_version", index as i64 + 1)
                .map_err(sqlite(&path, "cannot record the schema version"))?;
            tx.commit()
                .map_err(sqlite(&path, "cannot commit a migration"))?;
        }
        Ok(())
    }

    /// The schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64, HostError> {
        self.conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sqlite(&self.path, "cannot read the schema version"))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records an issued certificate with status 'issued'; the row is
    /// committed (and, with `synchronous=FULL`, durable) when this returns.
    /// The TAN it names, if any, is consumed in the same transaction; if that
    /// TAN is no longer open nothing is recorded.
    pub fn record(&mut self, issued: &IssuedCertificate) -> Result<i64, HostError> {
        let now = now_i64();
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(&path, "cannot begin recording"))?;
        tx.execute(
                "INSERT INTO issuance (serial, fingerprint, certificate, nonce, status, reason, issued_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'issued', NULL, ?5, ?5)",
                params![
                    issued.serial,
                    display::fingerprint(&issued.certificate),
                    issued.certificate.der(),
                    &issued.nonce[..],
                    now,
                ],
            )
            .map_err(sqlite(&path, "cannot record an issued certificate"))?;
        let id = tx.last_insert_rowid();
        if let Some(tan) = issued.tan {
            let consumed = tx
                .execute(
                    "UPDATE tan SET used_at = ?2, issuance_id = ?3
                     WHERE id = ?1 AND used_at IS NULL AND expires_at > ?2 AND failures < ?4
                       AND (serial IS NULL OR serial = ?5)",
                    params![tan, now, id, TAN_FAILURE_LIMIT, issued.serial],
                )
                .map_err(sqlite(&path, "cannot consume the TAN"))?;
            if consumed != 1 {
                // Dropping the transaction rolls the issuance row back.
                return Err(HostError::TanNoLongerOpen(tan));
            }
            // A personalization the user authorized ends this serial's run of failures.
            tx.execute("DELETE FROM tan_serial WHERE serial = ?1", [&issued.serial])
                .map_err(sqlite(&path, "cannot reset the serial's TAN failures"))?;
        }
        if let Some(value) = issued.identification {
            let consumed = tx
                .execute(
                    "UPDATE idvalue SET used_at = ?2, issuance_id = ?3
                     WHERE id = ?1 AND used_at IS NULL",
                    params![value, now, id],
                )
                .map_err(sqlite(&path, "cannot consume the identification value"))?;
            if consumed != 1 {
                // Dropping the transaction rolls the issuance row (and a TAN) back.
                return Err(HostError::IdentificationNoLongerOpen(value));
            }
        }
        tx.commit()
            .map_err(sqlite(&path, "cannot commit an issued certificate"))?;
        Ok(id)
    }

    /// Creates an identification unit record (claims 16–18): a random
    /// identifier, a random `K_id` and `values` random one-off values from
    /// the OS random generator, and registers it in one transaction (the key
    /// and each value's verifier). Returns the record for the id unit's store:
    /// the only place the values exist afterwards.
    pub fn register_idunit(
        &mut self,
        values: u32,
        serial: Option<&str>,
    ) -> Result<IdUnitRecord, HostError> {
        let count = usize::try_from(values).unwrap_or(usize::MAX);
        if count == 0 || count > idunit::MAX_VALUES {
            return Err(HostError::IdUnitValueCount {
                max: idunit::MAX_VALUES,
            });
        }
        let salt = self.tan_salt()?;
        let mut record = IdUnitRecord {
            id: [0; idunit::ID_LEN],
            key: Zeroizing::new([0; idunit::KEY_LEN]),
            values: vec![[0; idunit::VALUE_LEN]; count],
        };
        getrandom::fill(&mut record.id).map_err(|_| HostError::Random)?;
        getrandom::fill(&mut record.key[..]).map_err(|_| HostError::Random)?;
        for value in &mut record.values {
            getrandom::fill(value).map_err(|_| HostError::Random)?;
        }
        let path = self.path.clone();
        let now = now_i64();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(
                &path,
                "cannot begin registering an identification unit",
            ))?;
        tx.execute(
            "INSERT INTO idunit (id, key, registered_at, serial) VALUES (?1, ?2, ?3, ?4)",
            params![&record.id[..], &record.key[..], now, serial],
        )
        .map_err(sqlite(&path, "cannot register the identification unit"))?;
        for value in &record.values {
            tx.execute(
                "INSERT INTO idvalue (idunit, verifier, created_at) VALUES (?1, ?2, ?3)",
                params![&record.id[..], &value_verifier(&salt, value)[..], now],
            )
            .map_err(sqlite(
                &path,
                "cannot store an identification value verifier",
            ))?;
        }
        tx.commit()
            .map_err(sqlite(&path, "cannot commit the identification unit"))?;
        Ok(record)
    }

    /// Judges an id unit's answer to `challenge` (read only: a refusal
    /// changes nothing; values are 128-bit random and the MAC key 256-bit,
    /// so there is nothing to guess that a failure counter would protect).
    pub fn check_identification_answer(
        &mut self,
        serial: &str,
        challenge: &[u8; idunit::CHALLENGE_LEN],
        answer: &IdentificationAnswer,
    ) -> Result<IdentificationCheck, HostError> {
        let salt = self.tan_salt()?;
        let path = &self.path;
        let registered: Option<(Zeroizing<Vec<u8>>, Option<String>)> = self
            .conn
            .query_row(
                "SELECT key, serial FROM idunit WHERE id = ?1",
                [&answer.id[..]],
                |row| Ok((Zeroizing::new(row.get(0)?), row.get(1)?)),
            )
            .optional()
            .map_err(sqlite(path, "cannot read the identification unit"))?;
        let Some((key, bound)) = registered else {
            return Ok(IdentificationCheck::Refused(
                IdentificationRefusal::UnknownUnit(id_hex(&answer.id)),
            ));
        };
        let key = Zeroizing::new(<[u8; idunit::KEY_LEN]>::try_from(key.as_slice()).map_err(
            |_| HostError::JournalCorrupt {
                id: 0,
                what: "an identification unit key is not 32 bytes",
            },
        )?);
        let mut statement = self
            .conn
            .prepare("SELECT id, verifier, used_at FROM idvalue WHERE idunit = ?1")
            .map_err(sqlite(path, "cannot read identification values"))?;
        let rows = statement
            .query_map([&answer.id[..]], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                ))
            })
            .map_err(sqlite(path, "cannot read identification values"))?;
        let mut values = Vec::new();
        for row in rows {
            let (id, verifier, used_at) =
                row.map_err(sqlite(path, "cannot read identification values"))?;
            let verifier = <[u8; 48]>::try_from(verifier.as_slice()).map_err(|_| {
                HostError::JournalCorrupt {
                    id,
                    what: "an identification value verifier is not 48 bytes",
                }
            })?;
            values.push(IdValueRow {
                id,
                verifier,
                used: used_at.is_some(),
            });
        }
        Ok(judge_identification(
            challenge,
            serial,
            answer,
            Some(IdUnitRegistration {
                key: &key,
                serial: bound.as_deref(),
            }),
            &salt,
            &values,
        ))
    }

    /// Registered id units: identifier (hex), the module serial it is bound
    /// to, values left, values used.
    pub fn idunits(&self) -> Result<Vec<IdUnitInfo>, HostError> {
        let path = &self.path;
        let mut statement = self
            .conn
            .prepare(
                "SELECT u.id, u.serial,
                        (SELECT count(*) FROM idvalue v WHERE v.idunit = u.id AND v.used_at IS NULL),
                        (SELECT count(*) FROM idvalue v WHERE v.idunit = u.id AND v.used_at IS NOT NULL)
                 FROM idunit u ORDER BY u.registered_at, u.id",
            )
            .map_err(sqlite(path, "cannot list identification units"))?;
        let rows = statement
            .query_map([], |row| {
                let id: Vec<u8> = row.get(0)?;
                Ok(IdUnitInfo {
                    id: id.iter().map(|byte| format!("{byte:02x}")).collect(),
                    serial: row.get(1)?,
                    open: row.get(2)?,
                    used: row.get(3)?,
                })
            })
            .map_err(sqlite(path, "cannot list identification units"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(path, "cannot list identification units"))
    }

    /// The unit-wide TAN salt, created from the OS random generator the first
    /// time it is asked for.
    pub fn tan_salt(&mut self) -> Result<[u8; TAN_SALT_LEN], HostError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(&path, "cannot begin reading the TAN salt"))?;
        let stored: Option<Vec<u8>> = tx
            .query_row("SELECT salt FROM tan_salt WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()
            .map_err(sqlite(&path, "cannot read the TAN salt"))?;
        let salt = match stored {
            Some(bytes) => <[u8; TAN_SALT_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
                HostError::JournalCorrupt {
                    id: 1,
                    what: "the TAN salt is not 32 bytes",
                }
            })?,
            None => {
                let mut salt = [0u8; TAN_SALT_LEN];
                getrandom::fill(&mut salt).map_err(|_| HostError::Random)?;
                tx.execute(
                    "INSERT INTO tan_salt (id, salt) VALUES (1, ?1)",
                    [&salt[..]],
                )
                .map_err(sqlite(&path, "cannot store the TAN salt"))?;
                salt
            }
        };
        tx.commit()
            .map_err(sqlite(&path, "cannot commit the TAN salt"))?;
        Ok(salt)
    }

    /// Issues `count` TANs of 10 decimal digits from the OS random generator,
    /// optionally bound to module `serial`, valid until `expires_at` (Unix
    /// seconds). Returns each id with its TAN: the only time a TAN exists
    /// outside the user's hands. Only the verifiers are stored.
    pub fn issue_tans(
        &mut self,
        count: u32,
        serial: Option<&str>,
        expires_at: u64,
    ) -> Result<Vec<(i64, Zeroizing<String>)>, HostError> {
        let salt = self.tan_salt()?;
        let path = self.path.clone();
        let now = now_i64();
        let expires_at = i64::try_from(expires_at).unwrap_or(i64::MAX);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(&path, "cannot begin issuing TANs"))?;
        let mut issued = Vec::new();
        for _ in 0..count {
            let tan = random_tan()?;
            let verifier = tan_verifier(&salt, tan.as_bytes());
            tx.execute(
                "INSERT INTO tan (verifier, serial, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![&verifier[..], serial, now, expires_at],
            )
            .map_err(sqlite(&path, "cannot store a TAN"))?;
            issued.push((tx.last_insert_rowid(), tan));
        }
        tx.commit()
            .map_err(sqlite(&path, "cannot commit the TANs"))?;
        Ok(issued)
    }

    /// Every TAN's public facts (never the TAN), oldest first.
    pub fn tans(&self) -> Result<Vec<TanInfo>, HostError> {
        let path = &self.path;
        let mut statement = self
            .conn
            .prepare(
                "SELECT id, serial, created_at, expires_at, used_at, issuance_id, failures
                 FROM tan ORDER BY id",
            )
            .map_err(sqlite(path, "cannot query TANs"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(TanInfo {
                    id: row.get(0)?,
                    serial: row.get(1)?,
                    created_at: row.get(2)?,
                    expires_at: row.get(3)?,
                    used_at: row.get(4)?,
                    issuance_id: row.get(5)?,
                    failures: row.get(6)?,
                })
            })
            .map_err(sqlite(path, "cannot query TANs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(path, "cannot read a TAN"))
    }

    /// The failure counter of module `serial` (0 when it never failed).
    pub fn serial_tan_failures(&self, serial: &str) -> Result<u32, HostError> {
        self.conn
            .query_row(
                "SELECT failures FROM tan_serial WHERE serial = ?1",
                [serial],
                |row| row.get(0),
            )
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(sqlite(&self.path, "cannot read a serial's TAN failures"))
    }

    /// Clears module `serial`'s TAN failure counter (an operator's decision
    /// after checking why it failed). Returns the counter it had.
    pub fn unlock_serial(&mut self, serial: &str) -> Result<u32, HostError> {
        let before = self.serial_tan_failures(serial)?;
        self.conn
            .execute("DELETE FROM tan_serial WHERE serial = ?1", [serial])
            .map_err(sqlite(&self.path, "cannot unlock a serial"))?;
        Ok(before)
    }

    /// Judges a module's TAN proof and commits the counters, in one
    /// IMMEDIATE transaction so concurrent units cannot both pass a counter.
    pub fn check_tan_proof(
        &mut self,
        serial: &str,
        th: &Digest48,
        proof: &[u8],
    ) -> Result<TanCheck, HostError> {
        let path = self.path.clone();
        let now = unix_now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(&path, "cannot begin a TAN check"))?;
        let mut rows = Vec::new();
        {
            let mut statement = tx
                .prepare("SELECT id, verifier, serial, expires_at, used_at, failures FROM tan")
                .map_err(sqlite(&path, "cannot query TANs"))?;
            let found = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                        row.get::<_, u32>(5)?,
                    ))
                })
                .map_err(sqlite(&path, "cannot query TANs"))?;
            for row in found {
                let (id, verifier, bound, expires, used, failures) =
                    row.map_err(sqlite(&path, "cannot read a TAN"))?;
                let verifier = <[u8; 48]>::try_from(verifier.as_slice()).map_err(|_| {
                    HostError::JournalCorrupt {
                        id,
                        what: "a TAN verifier is not 48 bytes",
                    }
                })?;
                rows.push(TanRow {
                    id,
                    verifier,
                    serial: bound,
                    expires: u64::try_from(expires).unwrap_or(0),
                    used: used.is_some(),
                    failures,
                });
            }
        }
        let serial_failures: u32 = tx
            .query_row(
                "SELECT failures FROM tan_serial WHERE serial = ?1",
                [serial],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite(&path, "cannot read a serial's TAN failures"))?
            .unwrap_or(0);
        let check = match judge(&rows, serial_failures, serial, th, proof, now) {
            Judgement::Accepted(id) => TanCheck::Accepted(id),
            Judgement::Refused {
                refusal,
                count_on,
                count_serial,
            } => {
                for id in count_on {
                    tx.execute("UPDATE tan SET failures = failures + 1 WHERE id = ?1", [id])
                        .map_err(sqlite(&path, "cannot count a TAN failure"))?;
                }
                if count_serial {
                    tx.execute(
                        "INSERT INTO tan_serial (serial, failures) VALUES (?1, 1)
                         ON CONFLICT (serial) DO UPDATE SET failures = failures + 1",
                        [serial],
                    )
                    .map_err(sqlite(&path, "cannot count a serial's TAN failure"))?;
                }
                TanCheck::Refused(refusal)
            }
        };
        tx.commit()
            .map_err(sqlite(&path, "cannot commit a TAN check"))?;
        Ok(check)
    }

    /// Marks entry `id` installed: the module committed its certificate.
    /// Fails unless the entry is in status 'issued'.
    pub fn set_installed(&mut self, id: i64) -> Result<(), HostError> {
        self.mark(id, IssuanceStatus::Installed, None)
    }

    /// Marks entry `id` failed with `reason`. Fails unless the entry is in
    /// status 'issued'.
    pub fn set_failed(&mut self, id: i64, reason: &str) -> Result<(), HostError> {
        self.mark(id, IssuanceStatus::Failed, Some(reason))
    }

    fn mark(
        &mut self,
        id: i64,
        status: IssuanceStatus,
        reason: Option<&str>,
    ) -> Result<(), HostError> {
        let changed = self
            .conn
            .execute(
                "UPDATE issuance SET status = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1 AND status = 'issued'",
                params![id, status.as_str(), reason, now_i64()],
            )
            .map_err(sqlite(&self.path, "cannot update an entry"))?;
        if changed == 1 {
            return Ok(());
        }
        let current: Option<String> = self
            .conn
            .query_row("SELECT status FROM issuance WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
            .map_err(sqlite(&self.path, "cannot read an entry"))?;
        Err(match current {
            None => HostError::JournalEntryNotFound(id),
            Some(status) => HostError::JournalEntryNotPending { id, status },
        })
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Result<Vec<JournalEntry>, HostError> {
        self.query(None)
    }

    /// The entries this unit issued itself (not imported), oldest first:
    /// what a journal export carries.
    pub fn local_entries(&self) -> Result<Vec<JournalEntry>, HostError> {
        Ok(self
            .query(None)?
            .into_iter()
            .filter(|entry| entry.origin.is_none())
            .collect())
    }

    /// The entries of one module serial, oldest first.
    pub fn entries_for(&self, serial: &str) -> Result<Vec<JournalEntry>, HostError> {
        self.query(Some(serial))
    }

    fn query(&self, serial: Option<&str>) -> Result<Vec<JournalEntry>, HostError> {
        let path = &self.path;
        let mut statement = self
            .conn
            .prepare(
                "SELECT id, serial, fingerprint, certificate, nonce, status, reason, issued_at, updated_at,
                        origin_unit, origin_id
                 FROM issuance WHERE ?1 IS NULL OR serial = ?1 ORDER BY id",
            )
            .map_err(sqlite(path, "cannot query entries"))?;
        let rows = statement
            .query_map([serial], |row| {
                Ok((
                    JournalEntry {
                        id: row.get(0)?,
                        serial: row.get(1)?,
                        fingerprint: row.get(2)?,
                        certificate: row.get(3)?,
                        nonce: row.get(4)?,
                        status: IssuanceStatus::Issued,
                        reason: row.get(6)?,
                        issued_at: row.get(7)?,
                        updated_at: row.get(8)?,
                        origin: None,
                    },
                    row.get::<_, String>(5)?,
                    row.get::<_, Option<String>>(9)?,
                    row.get::<_, Option<i64>>(10)?,
                ))
            })
            .map_err(sqlite(path, "cannot query entries"))?;
        let mut entries = Vec::new();
        for row in rows {
            let (mut entry, status, origin_unit, origin_id) =
                row.map_err(sqlite(path, "cannot read an entry"))?;
            entry.origin = match (origin_unit, origin_id) {
                (None, None) => None,
                (Some(unit), Some(id)) => Some(EntryOrigin { unit, id }),
                _ => {
                    return Err(HostError::JournalCorrupt {
                        id: entry.id,
                        what: "origin unit without origin id, or the reverse",
                    });
                }
            };
            entry.status = IssuanceStatus::parse(&status).ok_or(HostError::JournalCorrupt {
                id: entry.id,
                what: "unknown status",
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl IssuanceJournal for SqliteJournal {
    fn record_issued(&mut self, issued: &IssuedCertificate) -> Result<i64, JournalError> {
        self.record(issued).map_err(boxed)
    }

    fn mark_installed(&mut self, id: i64) -> Result<(), JournalError> {
        self.set_installed(id).map_err(boxed)
    }

    fn mark_failed(&mut self, id: i64, reason: &str) -> Result<(), JournalError> {
        self.set_failed(id, reason).map_err(boxed)
    }

    fn tan_salt(&mut self) -> Result<Option<[u8; TAN_SALT_LEN]>, JournalError> {
        SqliteJournal::tan_salt(self).map(Some).map_err(boxed)
    }

    fn check_tan(
        &mut self,
        serial: &str,
        th: &Digest48,
        proof: &[u8],
    ) -> Result<TanCheck, JournalError> {
        self.check_tan_proof(serial, th, proof).map_err(boxed)
    }

    fn check_identification(
        &mut self,
        serial: &str,
        challenge: &[u8; idunit::CHALLENGE_LEN],
        answer: &IdentificationAnswer,
    ) -> Result<IdentificationCheck, JournalError> {
        self.check_identification_answer(serial, challenge, answer)
            .map_err(boxed)
    }
}

/// A registered identification unit, as `imprint idunit list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdUnitInfo {
    /// Its identifier, hex.
    pub id: String,
    /// The module serial it vouches for; `None`: any module of this unit.
    pub serial: Option<String>,
    /// Values not used yet.
    pub open: u32,
    /// Values used.
    pub used: u32,
}

/// A TAN's public facts, as `imprint tan list` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TanInfo {
    /// The store's id.
    pub id: i64,
    /// The module serial it is bound to, if any.
    pub serial: Option<String>,
    /// When it was issued (Unix seconds).
    pub created_at: i64,
    /// End of validity (Unix seconds, exclusive).
    pub expires_at: i64,
    /// When a personalization consumed it.
    pub used_at: Option<i64>,
    /// The issuance it authorized.
    pub issuance_id: Option<i64>,
    /// Failed proofs counted on it.
    pub failures: u32,
}

impl TanInfo {
    /// `open`, `used`, `expired` or `locked`, as of `now`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.used_at.is_some() {
            "used"
        } else if self.failures >= TAN_FAILURE_LIMIT {
            "locked"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "open"
        }
    }
}

/// Whether a serial with `failures` failed TAN proofs is locked for TANs.
pub fn serial_locked(failures: u32) -> bool {
    failures >= SERIAL_FAILURE_LIMIT
}

/// Ten decimal digits, uniform: a u64 from the OS generator, rejected at or
/// above the largest multiple of 10^10 so no digit string is likelier.
fn random_tan() -> Result<Zeroizing<String>, HostError> {
    const SPACE: u64 = 10_000_000_000;
    const LIMIT: u64 = u64::MAX - (u64::MAX % SPACE);
    loop {
        let mut bytes = Zeroizing::new([0u8; 8]);
        getrandom::fill(&mut bytes[..]).map_err(|_| HostError::Random)?;
        let value = u64::from_be_bytes(*bytes);
        if value < LIMIT {
            return Ok(Zeroizing::new(format!("{:010}", value % SPACE)));
        }
    }
}

fn boxed(err: HostError) -> JournalError {
    JournalError(Box::new(err))
}

pub(crate) fn sqlite(
    path: &Path,
    op: &'static str,
) -> impl FnOnce(rusqlite::Error) -> HostError + use<> {
    let path = path.to_path_buf();
    move |source| HostError::Sqlite { path, op, source }
}

pub(crate) fn now_i64() -> i64 {
    i64::try_from(unix_now()).unwrap_or(i64::MAX)
}
