use imprint_apdu::host::IssuanceJournal;

use super::*;
use crate::testutil::issued;

const SERIAL: &str = "0123456789abcdef";

#[test]
fn records_then_marks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut journal = SqliteJournal::open(&tmp.path().join("journal.sqlite")).expect("open");
    assert_eq!(journal.schema_version().expect("version"), SCHEMA_VERSION);
    let first = issued(SERIAL, 1);
    let second = issued(SERIAL, 2);
    let other = issued("fedcba9876543210", 3);
    let a = journal.record_issued(&first).expect("record");
    let b = journal.record_issued(&second).expect("record");
    let c = journal.record_issued(&other).expect("record");
    assert!(a < b && b < c);

    let entries = journal.entries().expect("entries");
    assert_eq!(entries.len(), 3);
    assert!(
        entries
            .iter()
            .all(|e| e.status == IssuanceStatus::Issued && e.reason.is_none())
    );
    assert_eq!(entries[0].certificate, first.certificate.der());
    assert_eq!(entries[0].nonce, vec![1; 16]);
    assert_eq!(
        entries[0].fingerprint,
        display::fingerprint(&first.certificate)
    );
    assert_eq!(
        entries[0].parse_certificate().expect("parse").der(),
        first.certificate.der()
    );

    journal.mark_installed(a).expect("installed");
    journal
        .mark_failed(b, "module answered 6982")
        .expect("failed");
    let mine = journal.entries_for(SERIAL).expect("entries");
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0].status, IssuanceStatus::Installed);
    assert_eq!(mine[1].status, IssuanceStatus::Failed);
    assert_eq!(mine[1].reason.as_deref(), Some("module answered 6982"));
    assert_eq!(
        journal.entries_for("fedcba9876543210").expect("entries")[0].id,
        c
    );
    assert!(
        journal
            .entries_for("0000000000000000")
            .expect("entries")
            .is_empty()
    );
}

#[test]
fn refuses_double_marks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut journal = SqliteJournal::open(&tmp.path().join("journal.sqlite")).expect("open");
    let id = journal.record(&issued(SERIAL, 1)).expect("record");
    journal.set_installed(id).expect("installed");
    for result in [journal.set_installed(id), journal.set_failed(id, "late")] {
        match result {
            Err(HostError::JournalEntryNotPending { id: got, status }) => {
                assert_eq!(got, id);
                assert_eq!(status, "installed");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let failed = journal.record(&issued(SERIAL, 2)).expect("record");
    journal.set_failed(failed, "torn").expect("failed");
    assert!(matches!(
        journal.set_installed(failed),
        Err(HostError::JournalEntryNotPending { .. })
    ));
    assert!(matches!(
        journal.set_installed(9999),
        Err(HostError::JournalEntryNotFound(9999))
    ));
    // Through the trait the error is boxed but keeps its message.
    let err = IssuanceJournal::mark_installed(&mut journal, id).expect_err("refused");
    assert!(err.to_string().contains("issuance journal"), "{err}");
    let entries = journal.entries().expect("entries");
    assert_eq!(entries[0].status, IssuanceStatus::Installed);
    assert_eq!(entries[1].reason.as_deref(), Some("torn"));
}

#[test]
fn survives_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("journal.sqlite");
    let record = issued(SERIAL, 7);
    let id = {
        let mut journal = SqliteJournal::open(&path).expect("open");
        journal.record_issued(&record).expect("record")
    };
    let mut journal = SqliteJournal::open_existing(&path).expect("reopen");
    assert_eq!(journal.schema_version().expect("version"), SCHEMA_VERSION);
    let entries = journal.entries().expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, id);
    assert_eq!(entries[0].status, IssuanceStatus::Issued);
    journal.mark_installed(id).expect("installed after reopen");
    drop(journal);
    let journal = SqliteJournal::open(&path).expect("reopen");
    assert_eq!(
        journal.entries().expect("entries")[0].status,
        IssuanceStatus::Installed
    );
}

#[test]
fn uses_wal_and_full_sync() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let journal = SqliteJournal::open(&tmp.path().join("journal.sqlite")).expect("open");
    let mode: String = journal
        .conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    let sync: i64 = journal
        .conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .expect("sync");
    assert_eq!(sync, 2, "synchronous=FULL");
}

#[test]
fn refuses_a_newer_schema() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("journal.sqlite");
    {
        let journal = SqliteJournal::open(&path).expect("open");
        journal
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
    }
    match SqliteJournal::open(&path) {
        Err(HostError::JournalTooNew {
            found, supported, ..
        }) => {
            assert_eq!(found, SCHEMA_VERSION + 1);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        other => panic!("expected JournalTooNew, got {other:?}"),
    }
}

#[test]
fn open_existing_requires_a_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("missing.sqlite");
    assert!(matches!(
        SqliteJournal::open_existing(&path),
        Err(HostError::Io { .. })
    ));
    assert!(!path.exists());
}

#[test]
fn the_check_constraint_guards_status() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut journal = SqliteJournal::open(&tmp.path().join("journal.sqlite")).expect("open");
    let id = journal.record(&issued(SERIAL, 1)).expect("record");
    let result = journal
        .conn
        .execute("UPDATE issuance SET status = 'lost' WHERE id = ?1", [id]);
    assert!(result.is_err());
}

#[test]
fn a_version_1_journal_migrates_and_keeps_its_rows_as_local() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("journal.sqlite");
    {
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("version 1 schema");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.execute(
            "INSERT INTO issuance (serial, fingerprint, certificate, nonce, status, reason, issued_at, updated_at)
             VALUES ('0123456789abcdef', 'ff', x'30', x'01', 'installed', NULL, 1, 2)",
            [],
        )
        .expect("a version 1 row");
    }
    let journal = SqliteJournal::open(&path).expect("migrates");
    assert_eq!(journal.schema_version().expect("version"), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 7);
    let entries = journal.entries().expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].origin, None);
    assert_eq!(journal.local_entries().expect("local").len(), 1);
}

/// The TAN proof module `serial` would send over `th` for `tan`.
fn proof_for(journal: &mut SqliteJournal, tan: &str, th: &[u8; 48]) -> [u8; 48] {
    let salt = journal.tan_salt().expect("salt");
    imprint_apdu::channel::tan_proof(&tan_verifier(&salt, tan.as_bytes()), th).expect("proof")
}

#[test]
fn tans_are_stored_as_verifiers_checked_counted_and_consumed_with_the_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("journal.sqlite");
    let mut journal = SqliteJournal::open(&path).expect("open");
    let salt = journal.tan_salt().expect("salt");
    assert_eq!(
        journal.tan_salt().expect("salt again"),
        salt,
        "created once"
    );
    let expires = unix_now() + 3600;
    let tans = journal.issue_tans(2, Some(SERIAL), expires).expect("issue");
    assert_eq!(tans.len(), 2);
    let th = [9u8; 48];

    // Wrong: both bound TANs and the serial pay one failure.
    let wrong = proof_for(&mut journal, "0000000000", &th);
    assert_eq!(
        journal.check_tan_proof(SERIAL, &th, &wrong).expect("check"),
        TanCheck::Refused(imprint_apdu::host::tan::TanRefusal::Wrong)
    );
    assert!(
        journal
            .tans()
            .expect("tans")
            .iter()
            .all(|t| t.failures == 1)
    );
    assert_eq!(journal.serial_tan_failures(SERIAL).expect("serial"), 1);

    // Right: accepted, consumed only with the record, which clears the serial.
    let (id, tan) = &tans[0];
    let right = proof_for(&mut journal, tan, &th);
    assert_eq!(
        journal.check_tan_proof(SERIAL, &th, &right).expect("check"),
        TanCheck::Accepted(*id)
    );
    assert!(journal.tans().expect("tans")[0].used_at.is_none());
    let mut certificate = issued(SERIAL, 1);
    certificate.tan = Some(*id);
    let entry = journal.record(&certificate).expect("record");
    let info = &journal.tans().expect("tans")[0];
    assert_eq!(info.issuance_id, Some(entry));
    assert_eq!(info.state(i64::MAX / 2), "used");
    assert_eq!(journal.serial_tan_failures(SERIAL).expect("serial"), 0);

    // Recording with the consumed TAN again rolls the whole record back.
    let mut again = issued(SERIAL, 2);
    again.tan = Some(*id);
    let err = journal.record(&again).unwrap_err();
    assert!(
        matches!(err, HostError::TanNoLongerOpen(tan) if tan == *id),
        "{err}"
    );
    assert_eq!(journal.entries().expect("entries").len(), 1);

    // The database holds no TAN, and reopening keeps everything.
    drop(journal);
    let bytes = std::fs::read(&path).expect("db");
    for (_, tan) in &tans {
        assert!(!bytes.windows(10).any(|w| w == tan.as_bytes()));
    }
    let reopened = SqliteJournal::open(&path).expect("reopen");
    assert_eq!(reopened.tans().expect("tans").len(), 2);
    assert_eq!(reopened.schema_version().expect("version"), SCHEMA_VERSION);
}

#[test]
fn a_version_1_journal_migrates_and_keeps_its_entries() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("journal.sqlite");
    {
        let conn = Connection::open(&path).expect("sqlite");
        conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.execute(
            "INSERT INTO issuance (serial, fingerprint, certificate, nonce, status, issued_at, updated_at)
             VALUES ('0123456789abcdef', 'f', x'30', x'00', 'installed', 1, 1)",
            [],
        )
        .expect("row");
    }
    let mut journal = SqliteJournal::open(&path).expect("migrate");
    assert_eq!(journal.schema_version().expect("version"), SCHEMA_VERSION);
    assert_eq!(journal.entries().expect("entries").len(), 1);
    assert_eq!(
        journal
            .issue_tans(1, None, unix_now() + 60)
            .expect("issue")
            .len(),
        1
    );
}

/// Claims 16–18 in the SQLite store: an id unit's answer is accepted once,
/// consumed with the issuance record, refused as used afterwards; a foreign
/// id unit and a MAC over another challenge are refused and change nothing.
#[test]
fn identification_values_are_checked_and_consumed_with_the_record() {
    use imprint_apdu::host::identification::{
        IdUnitLink, IdentificationRefusal, IdentificationSource, InProcessIdUnit,
    };
    use imprint_apdu::idunit::IdUnit;
    use imprint_apdu::idunit::memory::MemoryIdStore;

    let tmp = tempfile::tempdir().expect("tempdir");
    let mut journal = SqliteJournal::open(&tmp.path().join("journal.sqlite")).expect("open");
    let record = journal.register_idunit(2, None).expect("register");
    let answer_to = |record: &IdUnitRecord, challenge: &[u8; 32]| {
        let mut link = IdUnitLink::new(InProcessIdUnit::new(
            IdUnit::new(MemoryIdStore::new(record.clone())).expect("id unit"),
        ));
        let bytes = link.authenticate(challenge).expect("answer");
        IdentificationAnswer::parse(&bytes).expect("parse")
    };
    let challenge = [0x42; 32];
    let answer = answer_to(&record, &challenge);

    // Bound to the challenge.
    assert!(matches!(
        journal
            .check_identification_answer(SERIAL, &[0x43; 32], &answer)
            .expect("check"),
        IdentificationCheck::Refused(IdentificationRefusal::NotAuthentic(_))
    ));
    let IdentificationCheck::Accepted(value) = journal
        .check_identification_answer(SERIAL, &challenge, &answer)
        .expect("check")
    else {
        panic!("a fresh value is accepted");
    };
    let mut entry = issued(SERIAL, 1);
    entry.identification = Some(value);
    journal.record(&entry).expect("record consumes the value");
    assert!(matches!(
        journal
            .check_identification_answer(SERIAL, &challenge, &answer)
            .expect("check"),
        IdentificationCheck::Refused(IdentificationRefusal::Used(id)) if id == value
    ));
    // Consumed: a second record with the same value is refused and rolled back.
    let mut again = issued(SERIAL, 2);
    again.identification = Some(value);
    assert!(matches!(
        journal.record(&again),
        Err(HostError::IdentificationNoLongerOpen(id)) if id == value
    ));
    assert_eq!(journal.entries().expect("entries").len(), 1);

    // A foreign id unit.
    let mut foreign = record.clone();
    foreign.id = [0xAB; 16];
    assert!(matches!(
        journal
            .check_identification_answer(SERIAL, &challenge, &answer_to(&foreign, &challenge))
            .expect("check"),
        IdentificationCheck::Refused(IdentificationRefusal::UnknownUnit(_))
    ));
    assert_eq!(
        journal.idunits().expect("list"),
        vec![IdUnitInfo {
            id: id_hex(&record.id),
            serial: None,
            open: 1,
            used: 1,
        }]
    );

    // An id unit issued for one module vouches for that module only.
    let bound = journal
        .register_idunit(1, Some(SERIAL))
        .expect("register bound");
    let answer = answer_to(&bound, &challenge);
    assert!(matches!(
        journal
            .check_identification_answer("0000000000000000", &challenge, &answer)
            .expect("check"),
        IdentificationCheck::Refused(IdentificationRefusal::OtherModule { bound, .. })
            if bound == SERIAL
    ));
    assert!(matches!(
        journal
            .check_identification_answer(SERIAL, &challenge, &answer)
            .expect("check"),
        IdentificationCheck::Accepted(_)
    ));
    // Both registered in the same second: find it by its id, not its place.
    let listed = journal.idunits().expect("list");
    let listed = listed
        .iter()
        .find(|unit| unit.id == id_hex(&bound.id))
        .expect("listed");
    assert_eq!(listed.serial.as_deref(), Some(SERIAL));
}
