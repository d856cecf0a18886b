//! The registry's schema and its versioned migrations.
//!
//! The database's `PRAGMA user_version` is the number of migration steps
//! applied. [`MIGRATIONS`] is append-only: a released step is never edited,
//! a change of schema is a new step at the end.

use rusqlite::{Connection, TransactionBehavior};

use super::RegistryError;

/// The migration steps, in order; step `n` (0-based) takes the schema from
/// version `n` to version `n + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // Version 1: the initial schema.
    "
    CREATE TABLE units (
        fingerprint   TEXT PRIMARY KEY NOT NULL,   -- SHA-384 hex of the certificate by C
        public_key    BLOB NOT NULL,               -- SEC1 uncompressed point
        subject       TEXT NOT NULL,
        not_after     INTEGER NOT NULL,
        certified_at  INTEGER NOT NULL,
        revoked_at    INTEGER,
        certificate   BLOB NOT NULL                -- DER
    ) STRICT;
    CREATE INDEX units_public_key ON units(public_key);

    CREATE TABLE modules (
        serial            TEXT PRIMARY KEY NOT NULL,  -- 16 lowercase hex characters
        unit_fingerprint  TEXT NOT NULL REFERENCES units(fingerprint),
        module_cert       BLOB NOT NULL,              -- DER
        first_seen        INTEGER NOT NULL,
        last_seen         INTEGER NOT NULL,
        revoked_at        INTEGER
    ) STRICT;

    CREATE TABLE key_sets (
        id            BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
        serial        TEXT NOT NULL,
        sealed_key    BLOB NOT NULL,                  -- nonce (12) || AES-256-GCM(key) || tag (16)
        created       INTEGER NOT NULL,
        expires       INTEGER NOT NULL,
        last_counter  INTEGER NOT NULL DEFAULT 0 CHECK (last_counter BETWEEN 0 AND 4294967295),
        retired       INTEGER NOT NULL DEFAULT 0 CHECK (retired IN (0, 1))
    ) STRICT;
    CREATE INDEX key_sets_serial ON key_sets(serial);

    CREATE TABLE transactions (
        number           INTEGER PRIMARY KEY AUTOINCREMENT,
        serial           TEXT NOT NULL,
        key_set_id       BLOB NOT NULL REFERENCES key_sets(id),
        session_counter  INTEGER NOT NULL,
        sequence         INTEGER NOT NULL,
        payload_digest   BLOB NOT NULL CHECK (length(payload_digest) = 48),
        time             INTEGER NOT NULL,
        UNIQUE (key_set_id, session_counter, sequence)
    ) STRICT;
    CREATE INDEX transactions_serial ON transactions(serial);

    CREATE TABLE revocations (
        what  TEXT NOT NULL CHECK (what IN ('module', 'unit')),
        id    TEXT NOT NULL,
        time  INTEGER NOT NULL
    ) STRICT;
    ",
];

/// The schema version this build knows: the number of migration steps.
pub(super) fn known_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

fn user_version(conn: &Connection) -> Result<u32, RegistryError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    // SQLite stores user_version as a signed 32-bit value.
    Ok(u32::try_from(version).unwrap_or(u32::MAX))
}

/// Brings the schema up to [`known_version`], one step per transaction
/// (taken with `BEGIN IMMEDIATE`, so two processes opening a fresh database
/// at once do not both migrate it). Refuses a database written by a newer
/// build with [`RegistryError::SchemaTooNew`].
pub(super) fn migrate(conn: &mut Connection) -> Result<(), RegistryError> {
    let known = known_version();
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = user_version(&tx)?;
        if found > known {
            return Err(RegistryError::SchemaTooNew { found, known });
        }
        let Some(step) = MIGRATIONS.get(found as usize) else {
            return Ok(());
        };
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
    }
}
