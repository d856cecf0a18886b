//! The field station (claim 12): a mobile unit personalizes modules offline,
//! with its own key `P` and its own journal; its journal then moves to the
//! main issuance database as a signed, hash-chained export.
//!
//! ```text
//!  field unit                                  main unit
//!  journal.sqlite ─ export_journal ─▶ FILE ─▶ verify_export ─▶ SqliteJournal::import
//!    (own entries,     header: magic, version,     format, version;          one transaction:
//!     oldest first)      unit certs (by M, by C)   unit certs chain to the   import row (final hash,
//!                      entries, hash-chained       main unit's M root and     origin) + entries with
//!                      trailer: count, final hash, central key; chain and    their origin
//!                        signature by P            count; signature; every
//!                                                  module cert issued by P
//! ```
//!
//! The byte layout is in `docs/station.md` ("Field station"). Verification
//! completes before the main journal is touched, so a refused export writes
//! nothing.

use imprint_apdu::host::UnitCredentials;
use imprint_apdu::pki::{self, Certificate, PkiError, Role};
use imprint_central::display;
use p384::ecdsa::signature::hazmat::{PrehashVerifier, RandomizedPrehashSigner};
use p384::ecdsa::{Signature, SigningKey};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha384};

use super::{EntryOrigin, IssuanceStatus, JournalEntry, SqliteJournal, now_i64, sqlite};
use crate::HostError;

#[cfg(test)]
mod tests;

/// The first eight bytes of every export.
pub const MAGIC: [u8; 8] = *b"IMPJRNL\0";
/// The format version this tool writes and reads.
pub const VERSION: u8 = 1;
/// Record type of an entry (`'E'`).
pub const RECORD_ENTRY: u8 = 0x45;
/// Record type of the trailer (`'T'`), the last record.
pub const RECORD_TRAILER: u8 = 0x54;
/// Length of the trailer's body: count (8), final chain hash (48), signature r‖s (96).
pub const TRAILER_LEN: usize = 8 + HASH_LEN + SIGNATURE_LEN;
/// Largest record or certificate this tool accepts, so a hostile length
/// cannot make it allocate much.
pub const MAX_FIELD_LEN: usize = 1 << 20;

const HASH_LEN: usize = 48;
const SIGNATURE_LEN: usize = 96;
/// Domain labels: a chain hash or signature of this format can never be
/// taken for one made for another purpose with the same key.
const CHAIN_LABEL: &[u8] = b"imprint journal export v1 chain\0";
const SIGNATURE_LABEL: &[u8] = b"imprint journal export v1 signature\0";

/// Why an export was refused. Every check names what failed, so an operator
/// can tell a damaged file from a forged one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportRejection {
    /// The file does not start with [`MAGIC`].
    #[error("not an Imprint journal export (bad magic)")]
    BadMagic,
    /// The version byte is not [`VERSION`].
    #[error("export format version {0} is not supported (this tool reads version {VERSION})")]
    UnsupportedVersion(u8),
    /// The file ends inside a field.
    #[error("the export is truncated: it ends inside {0}")]
    Truncated(String),
    /// The file ends after the entries, before the trailer.
    #[error("the export is truncated: no trailer after {entries} entries")]
    NoTrailer {
        /// Entries read before the end.
        entries: usize,
    },
    /// Bytes follow the trailer.
    #[error("the export has {0} bytes after its trailer")]
    TrailingBytes(usize),
    /// A record has a type this version does not define.
    #[error("record {index} has unknown type 0x{kind:02X}")]
    UnknownRecord {
        /// The record's position (1-based).
        index: usize,
        /// Its type byte.
        kind: u8,
    },
    /// A length field exceeds [`MAX_FIELD_LEN`].
    #[error("{0} is longer than the {MAX_FIELD_LEN} bytes allowed")]
    TooLong(String),
    /// A field of an entry or of the trailer is malformed.
    #[error("{place}: {what}")]
    BadField {
        /// Which record.
        place: String,
        /// What is wrong.
        what: &'static str,
    },
    /// One of the field unit's certificates does not parse under the strict profile.
    #[error("the field unit's {what} does not parse")]
    BadUnitCertificate {
        /// Which certificate.
        what: &'static str,
        /// Why.
        #[source]
        source: PkiError,
    },
    /// The field unit's certificates are not for one key and one name, or not
    /// personalization unit certificates.
    #[error("the field unit's certificates are inconsistent: {0}")]
    UnitInconsistent(&'static str),
    /// The field unit is not certified by the main unit's manufacturer or
    /// central system.
    #[error("the field unit's {what} does not chain to {anchor}")]
    UnitChain {
        /// Which certificate.
        what: &'static str,
        /// What it should chain to.
        anchor: &'static str,
        /// Why.
        #[source]
        source: PkiError,
    },
    /// The export was made by this very unit.
    #[error("the export was made by this unit itself; its entries are already in this journal")]
    FromThisUnit,
    /// Entry ids do not strictly increase.
    #[error("entry {index} (id {id}) does not follow id {previous}: entries were reordered")]
    OutOfOrder {
        /// Position (1-based).
        index: usize,
        /// Its id.
        id: i64,
        /// The id before it.
        previous: i64,
    },
    /// The trailer's count is not the number of entries.
    #[error("the trailer counts {trailer} entries but the export holds {found}")]
    CountMismatch {
        /// What the trailer says.
        trailer: u64,
        /// Entries present.
        found: usize,
    },
    /// The hash chain over the entries does not end in the trailer's hash.
    #[error(
        "the hash chain over the header and {entries} entries does not match the trailer: an entry was modified, removed, inserted or reordered"
    )]
    ChainMismatch {
        /// Entries present.
        entries: usize,
    },
    /// The trailer's signature does not verify with the field unit's key.
    #[error("the export's signature does not verify with the field unit's key ({subject})")]
    BadSignature {
        /// The field unit's subject.
        subject: String,
    },
    /// A journaled module certificate does not parse.
    #[error("entry {index} (id {id}): the module certificate does not parse")]
    EntryCertificate {
        /// Position (1-based).
        index: usize,
        /// Its id.
        id: i64,
        /// Why.
        #[source]
        source: PkiError,
    },
    /// A journaled module certificate was not issued by the field unit.
    #[error("entry {index} (id {id}): the module certificate was not issued by the field unit")]
    NotIssuedByUnit {
        /// Position (1-based).
        index: usize,
        /// Its id.
        id: i64,
        /// Why.
        #[source]
        source: PkiError,
    },
    /// An entry's serial or nonce is not the one its certificate carries.
    #[error("entry {index} (id {id}): the {what} is not the one the certificate carries")]
    EntryMismatch {
        /// Position (1-based).
        index: usize,
        /// Its id.
        id: i64,
        /// Which field.
        what: &'static str,
    },
}

/// An export parsed for structure only: nothing in it is trusted yet.
#[derive(Debug, Clone)]
pub struct ParsedExport {
    /// The field unit's certificate from the manufacturer, DER.
    pub unit_by_manufacturer: Vec<u8>,
    /// The field unit's certificate from the central system, DER.
    pub unit_by_central: Vec<u8>,
    /// The entries, in file order (their `fingerprint` is computed from the
    /// certificate bytes; `origin` is `None`).
    pub entries: Vec<JournalEntry>,
    /// The trailer's entry count.
    pub count: u64,
    /// The trailer's final chain hash.
    pub final_hash: [u8; HASH_LEN],
    /// The trailer's signature, r‖s.
    pub signature: [u8; SIGNATURE_LEN],
    /// The chain hash recomputed over the records as read.
    pub computed_hash: [u8; HASH_LEN],
}

/// An export that passed every check against the importing unit.
#[derive(Debug, Clone)]
pub struct VerifiedExport {
    /// SHA-384 fingerprint (hex) of the field unit's certificate from the central system.
    pub origin_unit: String,
    /// The field unit's subject (RFC 4514).
    pub origin_subject: String,
    /// The final chain hash (hex): identifies this export.
    pub export_hash: String,
    /// The entries, oldest first.
    pub entries: Vec<JournalEntry>,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// The field unit's fingerprint.
    pub origin_unit: String,
    /// The export's final chain hash (hex).
    pub export_hash: String,
    /// Entries new to this journal.
    pub inserted: usize,
    /// Entries imported before (from an earlier export of the same unit)
    /// whose status moved on from 'issued'.
    pub updated: usize,
    /// Entries imported before and unchanged.
    pub unchanged: usize,
}

/// Writes the unit's own journal entries as a signed export (format in
/// `docs/station.md`). `unit` must be the credentials of the unit that owns
/// `journal`: its key signs, its certificates travel with the export.
pub fn export_journal(
    journal: &SqliteJournal,
    unit: &UnitCredentials,
) -> Result<Vec<u8>, HostError> {
    let entries = journal.local_entries()?;
    encode_export(
        &unit.cert_by_manufacturer,
        &unit.cert_by_central,
        &entries,
        &unit.key,
    )
}

/// Encodes `entries` with the unit certificates and signs the trailer with
/// `key`. The core of [`export_journal`]; public so tests can build exports a
/// forger would (another key, entries removed).
pub fn encode_export(
    unit_by_manufacturer: &Certificate,
    unit_by_central: &Certificate,
    entries: &[JournalEntry],
    key: &SigningKey,
) -> Result<Vec<u8>, HostError> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    put_u32_field(&mut out, unit_by_manufacturer.der())?;
    put_u32_field(&mut out, unit_by_central.der())?;
    let mut chain = chain_start(&out);
    for entry in entries {
        let body = encode_entry(entry)?;
        let start = out.len();
        out.push(RECORD_ENTRY);
        put_u32_field(&mut out, &body)?;
        chain = chain_next(&chain, &out[start..]);
    }
    let count = u64::try_from(entries.len()).map_err(|_| HostError::ExportTooLarge)?;
    let digest = signed_digest(count, &chain);
    let signature: Signature = key
        .sign_prehash_with_rng(&mut getrandom::SysRng, &digest)
        .map_err(|_| HostError::Random)?;
    let mut trailer = Vec::with_capacity(TRAILER_LEN);
    trailer.extend_from_slice(&count.to_be_bytes());
    trailer.extend_from_slice(&chain);
    trailer.extend_from_slice(&signature.to_bytes());
    out.push(RECORD_TRAILER);
    put_u32_field(&mut out, &trailer)?;
    Ok(out)
}

/// Parses an export for structure only (magic, version, strict lengths,
/// record types, trailer last) and recomputes its chain hash. Trusts nothing;
/// [`verify_export`] does the checks.
pub fn parse_export(bytes: &[u8]) -> Result<ParsedExport, ExportRejection> {
    let mut reader = Reader { bytes, at: 0 };
    let magic = reader.take(MAGIC.len(), "the magic")?;
    if magic != MAGIC {
        return Err(ExportRejection::BadMagic);
    }
    let version = reader.take(1, "the version")?[0];
    if version != VERSION {
        return Err(ExportRejection::UnsupportedVersion(version));
    }
    let unit_by_manufacturer = reader
        .u32_field("the unit certificate from the manufacturer")?
        .to_vec();
    let unit_by_central = reader
        .u32_field("the unit certificate from the central system")?
        .to_vec();
    let mut chain = chain_start(&bytes[..reader.at]);
    let mut entries = Vec::new();
    loop {
        if reader.at == bytes.len() {
            return Err(ExportRejection::NoTrailer {
                entries: entries.len(),
            });
        }
        let index = entries.len() + 1;
        let start = reader.at;
        let kind = reader.take(1, "a record type")?[0];
        match kind {
            RECORD_ENTRY => {
                let place = format!("entry {index}");
                let body = reader.u32_field(&place)?;
                entries.push(decode_entry(body, &place)?);
                chain = chain_next(&chain, &bytes[start..reader.at]);
            }
            RECORD_TRAILER => {
                let body = reader.u32_field("the trailer")?;
                if body.len() != TRAILER_LEN {
                    return Err(ExportRejection::BadField {
                        place: "the trailer".to_owned(),
                        what: "its length is not 152 bytes",
                    });
                }
                let rest = bytes.len() - reader.at;
                if rest != 0 {
                    return Err(ExportRejection::TrailingBytes(rest));
                }
                let (count, rest) = body.split_at(8);
                let (final_hash, signature) = rest.split_at(HASH_LEN);
                return Ok(ParsedExport {
                    unit_by_manufacturer,
                    unit_by_central,
                    entries,
                    count: u64::from_be_bytes(array(count)?),
                    final_hash: array(final_hash)?,
                    signature: array(signature)?,
                    computed_hash: chain,
                });
            }
            other => return Err(ExportRejection::UnknownRecord { index, kind: other }),
        }
    }
}

/// Verifies an export against the importing unit `main`, in order: format;
/// the field unit's certificates (one key, one name, role personalizer; by
/// the manufacturer whose root `main` trusts; by the central system whose
/// key `main` delivers to modules); that it is not `main` itself; entry ids
/// increasing; count and hash chain; the signature with the field unit's
/// key; and each module certificate issued by the field unit, with the
/// serial and nonce it carries.
pub fn verify_export(bytes: &[u8], main: &UnitCredentials) -> Result<VerifiedExport, HostError> {
    Ok(verify(bytes, main)?)
}

fn verify(bytes: &[u8], main: &UnitCredentials) -> Result<VerifiedExport, ExportRejection> {
    let parsed = parse_export(bytes)?;
    let by_manufacturer =
        Certificate::from_der(&parsed.unit_by_manufacturer).map_err(|source| {
            ExportRejection::BadUnitCertificate {
                what: "certificate from the manufacturer",
                source,
            }
        })?;
    let by_central = Certificate::from_der(&parsed.unit_by_central).map_err(|source| {
        ExportRejection::BadUnitCertificate {
            what: "certificate from the central system",
            source,
        }
    })?;
    if by_manufacturer.role() != Role::Personalizer || by_central.role() != Role::Personalizer {
        return Err(ExportRejection::UnitInconsistent(
            "not personalization unit certificates",
        ));
    }
    if by_manufacturer.public_key_sec1() != by_central.public_key_sec1() {
        return Err(ExportRejection::UnitInconsistent(
            "they certify different keys",
        ));
    }
    if by_manufacturer.subject_der() != by_central.subject_der() {
        return Err(ExportRejection::UnitInconsistent(
            "they name different subjects",
        ));
    }
    pki::verify_issued_by(&by_manufacturer, &main.manufacturer_root, 0).map_err(|source| {
        ExportRejection::UnitChain {
            what: "certificate from the manufacturer",
            anchor: "this unit's manufacturer root",
            source,
        }
    })?;
    // The central-delivery certificate carries the central system's key and
    // name as this unit delivers them to modules; a module of the field unit
    // checks the unit's central certificate against exactly that key
    // (claim 6), so the same check here means "the same central system".
    pki::verify_issued_by(&by_central, &main.central_delivery, 1).map_err(|source| {
        ExportRejection::UnitChain {
            what: "certificate from the central system",
            anchor: "this unit's central system",
            source,
        }
    })?;
    if by_central.public_key_sec1() == main.cert_by_central.public_key_sec1() {
        return Err(ExportRejection::FromThisUnit);
    }

    for (index, pair) in parsed.entries.windows(2).enumerate() {
        if pair[1].id <= pair[0].id {
            return Err(ExportRejection::OutOfOrder {
                index: index + 2,
                id: pair[1].id,
                previous: pair[0].id,
            });
        }
    }
    if u64::try_from(parsed.entries.len()).ok() != Some(parsed.count) {
        return Err(ExportRejection::CountMismatch {
            trailer: parsed.count,
            found: parsed.entries.len(),
        });
    }
    if parsed.computed_hash != parsed.final_hash {
        return Err(ExportRejection::ChainMismatch {
            entries: parsed.entries.len(),
        });
    }
    let bad_signature = || ExportRejection::BadSignature {
        subject: display::subject(&by_central),
    };
    let signature = Signature::from_slice(&parsed.signature).map_err(|_| bad_signature())?;
    by_central
        .public_key()
        .verify_prehash(&signed_digest(parsed.count, &parsed.final_hash), &signature)
        .map_err(|_| bad_signature())?;

    for (position, entry) in parsed.entries.iter().enumerate() {
        let (index, id) = (position + 1, entry.id);
        let cert = Certificate::from_der(&entry.certificate)
            .map_err(|source| ExportRejection::EntryCertificate { index, id, source })?;
        pki::verify_issued_by(&cert, &by_central, 0)
            .map_err(|source| ExportRejection::NotIssuedByUnit { index, id, source })?;
        if cert.module_serial() != Some(entry.serial.as_str()) {
            return Err(ExportRejection::EntryMismatch {
                index,
                id,
                what: "serial",
            });
        }
        if cert.nonce().as_ref().map(|nonce| &nonce[..]) != Some(entry.nonce.as_slice()) {
            return Err(ExportRejection::EntryMismatch {
                index,
                id,
                what: "nonce",
            });
        }
    }
    Ok(VerifiedExport {
        origin_unit: display::fingerprint(&by_central),
        origin_subject: display::subject(&by_central),
        export_hash: display::hex(&parsed.final_hash),
        entries: parsed.entries,
    })
}

impl SqliteJournal {
    /// Writes a verified export into this journal in one transaction: an
    /// `import` row (the export's final hash and origin) and its entries with
    /// their origin. A second import of the same export is refused
    /// ([`HostError::AlreadyImported`]); a later export of the same unit adds
    /// its new entries and moves entries imported as 'issued' to their final
    /// status. An entry that contradicts one imported before is refused
    /// ([`HostError::ImportConflict`]); on any error nothing is written.
    pub fn import(&mut self, export: &VerifiedExport) -> Result<ImportReport, HostError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(&path, "cannot begin the import"))?;
        let earlier: Option<i64> = tx
            .query_row(
                "SELECT imported_at FROM import WHERE export_hash = ?1",
                [&export.export_hash],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite(&path, "cannot look up earlier imports"))?;
        if let Some(imported_at) = earlier {
            return Err(HostError::AlreadyImported {
                export_hash: export.export_hash.clone(),
                imported_at,
            });
        }
        let now = now_i64();
        tx.execute(
            "INSERT INTO import (export_hash, origin_unit, origin_subject, entries, imported_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                export.export_hash,
                export.origin_unit,
                export.origin_subject,
                i64::try_from(export.entries.len()).unwrap_or(i64::MAX),
                now,
            ],
        )
        .map_err(sqlite(&path, "cannot record the import"))?;
        let import_id = tx.last_insert_rowid();
        let mut report = ImportReport {
            origin_unit: export.origin_unit.clone(),
            export_hash: export.export_hash.clone(),
            inserted: 0,
            updated: 0,
            unchanged: 0,
        };
        for entry in &export.entries {
            let existing: Option<(String, String, Option<String>)> = tx
                .query_row(
                    "SELECT fingerprint, status, reason FROM issuance
                     WHERE origin_unit = ?1 AND origin_id = ?2",
                    params![export.origin_unit, entry.id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(sqlite(&path, "cannot look up an imported entry"))?;
            let Some((fingerprint, status, reason)) = existing else {
                // The same certificate under another origin (the field unit
                // re-certified since an earlier import, or a copy of another
                // unit's entry) would be journaled twice.
                let duplicate: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM issuance WHERE fingerprint = ?1",
                        [&entry.fingerprint],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(sqlite(&path, "cannot look up a certificate"))?;
                if duplicate.is_some() {
                    return Err(HostError::ImportConflict {
                        origin_id: entry.id,
                        what: "its certificate is already in this journal under another origin",
                    });
                }
                tx.execute(
                    "INSERT INTO issuance (serial, fingerprint, certificate, nonce, status, reason,
                                           issued_at, updated_at, origin_unit, origin_id, import_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        entry.serial,
                        entry.fingerprint,
                        entry.certificate,
                        entry.nonce,
                        entry.status.as_str(),
                        entry.reason,
                        entry.issued_at,
                        entry.updated_at,
                        export.origin_unit,
                        entry.id,
                        import_id,
                    ],
                )
                .map_err(sqlite(&path, "cannot write an imported entry"))?;
                report.inserted += 1;
                continue;
            };
            if fingerprint != entry.fingerprint {
                return Err(HostError::ImportConflict {
                    origin_id: entry.id,
                    what: "another certificate under the same id",
                });
            }
            if status == entry.status.as_str() && reason == entry.reason {
                report.unchanged += 1;
            } else if status == IssuanceStatus::Issued.as_str() {
                tx.execute(
                    "UPDATE issuance SET status = ?3, reason = ?4, updated_at = ?5, import_id = ?6
                     WHERE origin_unit = ?1 AND origin_id = ?2",
                    params![
                        export.origin_unit,
                        entry.id,
                        entry.status.as_str(),
                        entry.reason,
                        entry.updated_at,
                        import_id,
                    ],
                )
                .map_err(sqlite(&path, "cannot update an imported entry"))?;
                report.updated += 1;
            } else {
                return Err(HostError::ImportConflict {
                    origin_id: entry.id,
                    what: "a final status different from the one imported before",
                });
            }
        }
        tx.commit()
            .map_err(sqlite(&path, "cannot commit the import"))?;
        Ok(report)
    }
}

/// Verifies `bytes` against `main` and imports it into `journal`: the
/// library form of `imprint journal import`.
pub fn import_export(
    journal: &mut SqliteJournal,
    bytes: &[u8],
    main: &UnitCredentials,
) -> Result<ImportReport, HostError> {
    let export = verify_export(bytes, main)?;
    journal.import(&export)
}

impl EntryOrigin {
    /// A short form for listings: the first 16 hex digits of the unit's
    /// fingerprint and the entry's id there.
    pub fn short(&self) -> String {
        format!("{}#{}", self.unit.get(..16).unwrap_or(&self.unit), self.id)
    }
}

fn encode_entry(entry: &JournalEntry) -> Result<Vec<u8>, HostError> {
    let mut body = Vec::new();
    body.extend_from_slice(&entry.id.to_be_bytes());
    body.extend_from_slice(&entry.issued_at.to_be_bytes());
    body.extend_from_slice(&entry.updated_at.to_be_bytes());
    body.push(status_code(entry.status));
    put_u16_field(&mut body, entry.serial.as_bytes())?;
    put_u32_field(&mut body, &entry.certificate)?;
    put_u16_field(&mut body, &entry.nonce)?;
    match &entry.reason {
        None => body.push(0),
        Some(reason) => {
            body.push(1);
            put_u16_field(&mut body, reason.as_bytes())?;
        }
    }
    Ok(body)
}

fn decode_entry(body: &[u8], place: &str) -> Result<JournalEntry, ExportRejection> {
    let bad = |what| ExportRejection::BadField {
        place: place.to_owned(),
        what,
    };
    let mut reader = Reader { bytes: body, at: 0 };
    let i64_field = |reader: &mut Reader<'_>, what: &str| -> Result<i64, ExportRejection> {
        Ok(i64::from_be_bytes(array(
            reader.take(8, &format!("{what} of {place}"))?,
        )?))
    };
    let id = i64_field(&mut reader, "the id")?;
    let issued_at = i64_field(&mut reader, "the issue time")?;
    let updated_at = i64_field(&mut reader, "the update time")?;
    let status = match reader.take(1, &format!("the status of {place}"))?[0] {
        1 => IssuanceStatus::Issued,
        2 => IssuanceStatus::Installed,
        3 => IssuanceStatus::Failed,
        _ => return Err(bad("unknown status")),
    };
    let serial = reader.u16_field(&format!("the serial of {place}"))?;
    let serial = std::str::from_utf8(serial)
        .ok()
        .filter(|serial| pki::is_serial_hex(serial))
        .ok_or_else(|| bad("the serial is not 16 lowercase hex digits"))?
        .to_owned();
    let certificate = reader
        .u32_field(&format!("the certificate of {place}"))?
        .to_vec();
    let nonce = reader.u16_field(&format!("the nonce of {place}"))?.to_vec();
    let reason = match reader.take(1, &format!("the reason flag of {place}"))?[0] {
        0 => None,
        1 => {
            let text = reader.u16_field(&format!("the reason of {place}"))?;
            Some(
                std::str::from_utf8(text)
                    .map_err(|_| bad("the reason is not UTF-8"))?
                    .to_owned(),
            )
        }
        _ => return Err(bad("the reason flag is neither 0 nor 1")),
    };
    if reader.at != body.len() {
        return Err(bad("bytes follow the last field"));
    }
    // The journal's own invariant: only failed entries carry a reason.
    if reason.is_some() && status != IssuanceStatus::Failed {
        return Err(bad("a reason on an entry that did not fail"));
    }
    let fingerprint = display::hex(&Sha384::digest(&certificate));
    Ok(JournalEntry {
        id,
        serial,
        fingerprint,
        certificate,
        nonce,
        status,
        reason,
        issued_at,
        updated_at,
        origin: None,
    })
}

fn status_code(status: IssuanceStatus) -> u8 {
    match status {
        IssuanceStatus::Issued => 1,
        IssuanceStatus::Installed => 2,
        IssuanceStatus::Failed => 3,
    }
}

/// h0 = SHA-384(label ‖ header): the chain starts from the unit's
/// certificates, so they cannot be swapped under the same entries.
fn chain_start(header: &[u8]) -> [u8; HASH_LEN] {
    let mut hash = Sha384::new();
    hash.update(CHAIN_LABEL);
    hash.update(header);
    hash.finalize().into()
}

/// h_i = SHA-384(h_{i-1} ‖ record_i), the record with its type and length.
fn chain_next(previous: &[u8; HASH_LEN], record: &[u8]) -> [u8; HASH_LEN] {
    let mut hash = Sha384::new();
    hash.update(previous);
    hash.update(record);
    hash.finalize().into()
}

/// What P signs: SHA-384(label ‖ count ‖ final chain hash).
fn signed_digest(count: u64, final_hash: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    let mut hash = Sha384::new();
    hash.update(SIGNATURE_LABEL);
    hash.update(count.to_be_bytes());
    hash.update(final_hash);
    hash.finalize().into()
}

fn put_u32_field(out: &mut Vec<u8>, value: &[u8]) -> Result<(), HostError> {
    let len = u32::try_from(value.len())
        .ok()
        .filter(|len| (*len as usize) <= MAX_FIELD_LEN)
        .ok_or(HostError::ExportTooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

fn put_u16_field(out: &mut Vec<u8>, value: &[u8]) -> Result<(), HostError> {
    let len = u16::try_from(value.len()).map_err(|_| HostError::ExportTooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], ExportRejection> {
    bytes.try_into().map_err(|_| ExportRejection::BadField {
        place: "a fixed-length field".to_owned(),
        what: "wrong length",
    })
}

/// A cursor that never reads past the end: every shortfall is a
/// [`ExportRejection::Truncated`] naming the field.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], ExportRejection> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| ExportRejection::Truncated(what.to_owned()))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u32_field(&mut self, what: &str) -> Result<&'a [u8], ExportRejection> {
        let len = u32::from_be_bytes(array(self.take(4, what)?)?) as usize;
        if len > MAX_FIELD_LEN {
            return Err(ExportRejection::TooLong(what.to_owned()));
        }
        self.take(len, what)
    }

    fn u16_field(&mut self, what: &str) -> Result<&'a [u8], ExportRejection> {
        let len = u16::from_be_bytes(array(self.take(2, what)?)?) as usize;
        self.take(len, what)
    }
}
