//! The personalization unit's side of the TAN (claim 13): what a TAN store
//! keeps, and the one policy every store applies when a module's proof
//! arrives.
//!
//! ```text
//!  imprint tan issue ─▶ store: id, V = HKDF(unit salt, TAN), serial?, expiry   (never the TAN)
//!  module: VERIFY TAN (local) ─▶ INTERNAL AUTHENTICATE ─▶ proof = HMAC(V, label ‖ TH)
//!  unit:   judge(rows, proof, TH) ─▶ Accepted(id) ─▶ consumed with the issuance record
//!                                 └▶ Refused ─▶ failures counted (TAN and serial), committed
//! ```
//!
//! A store runs [`judge`] and applies its [`Judgement`] in one transaction,
//! so two units sharing a store cannot both pass the same counter.

use crate::channel::{Digest48, tan_proof_matches};

/// Failed proofs that lock a TAN bound to the module that failed.
pub const TAN_FAILURE_LIMIT: u32 = 3;
/// Failed proofs that lock a module serial for every TAN, until an operator
/// unlocks it (`imprint tan unlock`) or a TAN personalization of that serial
/// succeeds.
pub const SERIAL_FAILURE_LIMIT: u32 = 10;
/// Length of the unit-wide TAN salt.
pub const TAN_SALT_LEN: usize = crate::proto::len::TAN_SALT;

/// Why the unit refused a module's TAN proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TanRefusal {
    /// No TAN of this unit gives the proof.
    #[error("the TAN is wrong: no TAN issued by this unit matches")]
    Wrong,
    /// The proof is for a TAN already consumed by a personalization.
    #[error("the TAN was already used (TAN {0}); issue a new one")]
    Used(i64),
    /// The proof is for an expired TAN.
    #[error("the TAN has expired (TAN {0}); issue a new one")]
    Expired(i64),
    /// The proof is for a TAN bound to another module serial.
    #[error("the TAN (TAN {id}) is bound to module {bound}, not to this module")]
    OtherModule {
        /// The TAN's id.
        id: i64,
        /// The serial it is bound to.
        bound: String,
    },
    /// The TAN is locked after too many failed proofs.
    #[error("the TAN (TAN {0}) is locked after {TAN_FAILURE_LIMIT} failed tries; issue a new one")]
    Locked(i64),
    /// This module serial is locked for every TAN.
    #[error(
        "module {0} is locked for TANs after {SERIAL_FAILURE_LIMIT} failed tries; \
         an operator must unlock it (imprint tan unlock)"
    )]
    SerialLocked(String),
}

/// One TAN as a store keeps it (never the TAN itself).
#[derive(Debug, Clone)]
pub struct TanRow {
    /// The store's id.
    pub id: i64,
    /// `V = HKDF-SHA384(unit salt, TAN, "imprint v1 tan verifier")`.
    pub verifier: [u8; 48],
    /// The module serial it is bound to, if any.
    pub serial: Option<String>,
    /// End of validity, Unix seconds (exclusive).
    pub expires: u64,
    /// Consumed by a personalization.
    pub used: bool,
    /// Failed proofs counted on it.
    pub failures: u32,
}

/// What the store must do after [`judge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The proof is for this open TAN; the store consumes it together with
    /// the issuance record ([`crate::host::IssuedCertificate::tan`]).
    Accepted(i64),
    /// Refused. The store adds one failure to each TAN in `count_on` and to
    /// the serial's counter when `count_serial`, in the same transaction.
    Refused {
        /// Why.
        refusal: TanRefusal,
        /// TANs whose failure counter goes up by one.
        count_on: Vec<i64>,
        /// Whether the serial's failure counter goes up by one.
        count_serial: bool,
    },
}

/// What a unit's TAN store answers to a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TanCheck {
    /// The TAN with this id is open and matches; it is consumed with the
    /// issuance record.
    Accepted(i64),
    /// Refused; failures were counted and committed.
    Refused(TanRefusal),
}

/// The policy: is `proof` (over `th`, from module `serial`) the proof of an
/// open TAN in `rows`? Every row's proof is computed and compared in
/// constant time, whatever matched before, so timing does not tell which
/// row matched. `serial_failures` is the serial's counter now.
pub fn judge(
    rows: &[TanRow],
    serial_failures: u32,
    serial: &str,
    th: &Digest48,
    proof: &[u8],
    now: u64,
) -> Judgement {
    if serial_failures >= SERIAL_FAILURE_LIMIT {
        return Judgement::Refused {
            refusal: TanRefusal::SerialLocked(serial.to_string()),
            count_on: Vec::new(),
            count_serial: false,
        };
    }
    let mut matched = None;
    for row in rows {
        if tan_proof_matches(&row.verifier, th, proof) {
            matched = Some(row);
        }
    }
    let refusal = match matched {
        None => TanRefusal::Wrong,
        Some(row) if row.used => TanRefusal::Used(row.id),
        Some(row) if row.expires <= now => TanRefusal::Expired(row.id),
        Some(row) if row.serial.as_deref().is_some_and(|bound| bound != serial) => {
            TanRefusal::OtherModule {
                id: row.id,
                bound: row.serial.clone().unwrap_or_default(),
            }
        }
        Some(row) if row.failures >= TAN_FAILURE_LIMIT => TanRefusal::Locked(row.id),
        Some(row) => return Judgement::Accepted(row.id),
    };
    // Every open TAN bound to this module pays for the failed try, so guessing
    // one module's TANs ends after TAN_FAILURE_LIMIT tries per TAN, and the
    // serial's counter bounds guessing unbound TANs through it.
    let count_on = rows
        .iter()
        .filter(|row| {
            !row.used
                && row.expires > now
                && row.failures < TAN_FAILURE_LIMIT
                && row.serial.as_deref() == Some(serial)
        })
        .map(|row| row.id)
        .collect();
    Judgement::Refused {
        refusal,
        count_on,
        count_serial: true,
    }
}

/// Decimal digits in a TAN as `imprint tan issue` makes them: what a PIN-pad
/// reader asks the user for (minimum and maximum both), so the pad's OK key
/// is refused until the whole TAN is typed.
pub const TAN_DIGITS: u8 = 10;

/// What a status word means in answer to a VERIFY sent through a PIN pad
/// (PC/SC secure PIN entry): the reader itself answers `64xx` and `6B80`
/// (PC/SC part 10 and the CCID specification) when the entry did not
/// complete, so the card never saw a VERIFY; anything else is the card's.
pub fn pin_pad_status_meaning(sw: u16) -> &'static str {
    match sw {
        0x6400 => "the entry timed out before the TAN was entered",
        0x6401 => "the user cancelled the entry",
        0x6402 => "the two entries at the PIN pad differ",
        0x6403 => "the TAN entered has the wrong number of digits",
        0x6B80 => "the reader refused the PIN entry parameters",
        other => super::status_meaning(other),
    }
}

/// Whether `tan` is a TAN as `imprint tan issue` prints them and the module
/// accepts: 4 to 16 bytes.
pub fn tan_length_ok(tan: &[u8]) -> bool {
    (crate::proto::len::TAN_MIN..=crate::proto::len::TAN_MAX).contains(&tan.len())
}

#[cfg(test)]
mod tests;
