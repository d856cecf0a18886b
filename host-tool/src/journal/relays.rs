//! The relays registered with a unit and the modules each presented (claim 14).
//!
//! ```text
//!  imprint personalizer relay register ─▶ relays (name, fingerprint, public key)
//!  imprint personalizer serve: a relay authenticates ─▶ relay_presentations
//!      (serial, relay fingerprint, relay id or NULL, journal id, outcome)
//! ```
//!
//! A relay is known by the SHA-384 fingerprint of its public key
//! (uncompressed SEC1). The presentation row is written as soon as the relay
//! has authenticated, before any APDU, so even a run cut short leaves a trace
//! of which relay presented which module.

use p384::elliptic_curve::sec1::ToSec1Point;
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha384};

use super::{SqliteJournal, now_i64, sqlite};
use crate::HostError;

/// A relay registered with this unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredRelay {
    /// Row id.
    pub id: i64,
    /// The operator's name for it.
    pub name: String,
    /// SHA-384 of its public key (uncompressed SEC1), lowercase hex.
    pub fingerprint: String,
    /// Its public key, uncompressed SEC1.
    pub public_key: Vec<u8>,
    /// When it was registered (seconds since the Unix epoch).
    pub registered_at: i64,
}

/// Which relay presented which module, and how the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPresentation {
    /// Row id.
    pub id: i64,
    /// The module serial (16 lowercase hex characters).
    pub serial: String,
    /// The relay's key fingerprint.
    pub relay_fingerprint: String,
    /// The relay's registered name; `None` for an unregistered relay.
    pub relay_name: Option<String>,
    /// The issuance journal entry of this run, once a certificate was issued.
    pub journal_id: Option<i64>,
    /// `presented` while running, then `installed` or `failed: <reason>`.
    pub outcome: String,
    /// When the relay authenticated (seconds since the Unix epoch).
    pub presented_at: i64,
    /// The peer address of the module's direct connection, when the run
    /// moved onto one after the handshake (claim 15).
    pub direct_peer: Option<String>,
}

/// The fingerprint of a relay key: SHA-384 of its uncompressed SEC1 encoding, hex.
pub fn relay_fingerprint(public_key_sec1: &[u8]) -> String {
    imprint_central::display::hex(&Sha384::digest(public_key_sec1))
}

impl SqliteJournal {
    /// Registers a relay under `name`. Refuses a name or a key already registered.
    pub fn register_relay(
        &mut self,
        name: &str,
        public_key: &p384::PublicKey,
    ) -> Result<RegisteredRelay, HostError> {
        let sec1 = public_key.to_sec1_point(false).as_bytes().to_vec();
        let fingerprint = relay_fingerprint(&sec1);
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite(&path, "cannot begin a relay registration"))?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT name FROM relays WHERE name = ?1 OR fingerprint = ?2",
                params![name, fingerprint],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite(&path, "cannot look up relays"))?;
        if let Some(existing) = existing {
            return Err(HostError::RelayAlreadyRegistered(existing));
        }
        let now = now_i64();
        tx.execute(
            "INSERT INTO relays (name, fingerprint, public_key, registered_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, fingerprint, sec1, now],
        )
        .map_err(sqlite(&path, "cannot register a relay"))?;
        let id = tx.last_insert_rowid();
        tx.commit()
            .map_err(sqlite(&path, "cannot commit a relay registration"))?;
        Ok(RegisteredRelay {
            id,
            name: name.to_owned(),
            fingerprint,
            public_key: sec1,
            registered_at: now,
        })
    }

    /// Every registered relay, oldest first.
    pub fn relays(&self) -> Result<Vec<RegisteredRelay>, HostError> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT id, name, fingerprint, public_key, registered_at FROM relays ORDER BY id",
            )
            .map_err(sqlite(&self.path, "cannot query relays"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(RegisteredRelay {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    fingerprint: row.get(2)?,
                    public_key: row.get(3)?,
                    registered_at: row.get(4)?,
                })
            })
            .map_err(sqlite(&self.path, "cannot query relays"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "cannot read a relay"))
    }

    /// The registered relay with this key fingerprint, if any.
    pub fn relay_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<RegisteredRelay>, HostError> {
        Ok(self
            .relays()?
            .into_iter()
            .find(|relay| relay.fingerprint == fingerprint))
    }

    /// Records that the relay with `fingerprint` (registered as `relay_id`,
    /// or not) presents module `serial`; returns the row id.
    pub fn record_presentation(
        &mut self,
        serial: &str,
        fingerprint: &str,
        relay_id: Option<i64>,
    ) -> Result<i64, HostError> {
        let now = now_i64();
        self.conn
            .execute(
                "INSERT INTO relay_presentations
                    (serial, relay_fingerprint, relay_id, journal_id, outcome, presented_at, updated_at)
                 VALUES (?1, ?2, ?3, NULL, 'presented', ?4, ?4)",
                params![serial, fingerprint, relay_id, now],
            )
            .map_err(sqlite(&self.path, "cannot record a relay presentation"))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Links presentation `id` to the journal entry its run issued.
    pub fn set_presentation_journal_id(
        &mut self,
        id: i64,
        journal_id: i64,
    ) -> Result<(), HostError> {
        self.conn
            .execute(
                "UPDATE relay_presentations SET journal_id = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, journal_id, now_i64()],
            )
            .map_err(sqlite(&self.path, "cannot update a relay presentation"))?;
        Ok(())
    }

    /// Notes that the run of presentation `id` moved onto the module's direct
    /// connection from `peer` (claim 15).
    pub fn set_presentation_direct_peer(&mut self, id: i64, peer: &str) -> Result<(), HostError> {
        self.conn
            .execute(
                "UPDATE relay_presentations SET direct_peer = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, peer, now_i64()],
            )
            .map_err(sqlite(&self.path, "cannot update a relay presentation"))?;
        Ok(())
    }

    /// Records how the run of presentation `id` ended.
    pub fn finish_presentation(&mut self, id: i64, outcome: &str) -> Result<(), HostError> {
        self.conn
            .execute(
                "UPDATE relay_presentations SET outcome = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, outcome, now_i64()],
            )
            .map_err(sqlite(&self.path, "cannot update a relay presentation"))?;
        Ok(())
    }

    /// Every relay presentation, oldest first.
    pub fn presentations(&self) -> Result<Vec<RelayPresentation>, HostError> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT p.id, p.serial, p.relay_fingerprint, r.name, p.journal_id, p.outcome, p.presented_at,
                        p.direct_peer
                 FROM relay_presentations p LEFT JOIN relays r ON r.id = p.relay_id
                 ORDER BY p.id",
            )
            .map_err(sqlite(&self.path, "cannot query relay presentations"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(RelayPresentation {
                    id: row.get(0)?,
                    serial: row.get(1)?,
                    relay_fingerprint: row.get(2)?,
                    relay_name: row.get(3)?,
                    journal_id: row.get(4)?,
                    outcome: row.get(5)?,
                    presented_at: row.get(6)?,
                    direct_peer: row.get(7)?,
                })
            })
            .map_err(sqlite(&self.path, "cannot query relay presentations"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(&self.path, "cannot read a relay presentation"))
    }
}

#[cfg(test)]
mod tests;
