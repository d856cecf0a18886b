use imprint_apdu::host::{IssuedCertificate, UnitCredentials};
use imprint_apdu::pki::NONCE_LEN;
use imprint_apdu::pki::issue::{self, IssuerKey, Validity};
use imprint_tests::{new_central, new_manufacturer, new_unit, random_key};

use super::*;

/// A module certificate issued by `unit`, as `personalize` journals it.
fn issued_by(unit: &UnitCredentials, serial: &str, nonce: u8) -> IssuedCertificate {
    let module_key = random_key();
    let point =
        imprint_apdu::channel::encode_point(&p384::PublicKey::from(module_key.verifying_key()));
    let nonce = [nonce; NONCE_LEN];
    let certificate = issue::module_cert(
        IssuerKey {
            cert: &unit.cert_by_central,
            key: &unit.key,
        },
        serial,
        &point,
        &nonce,
        Validity::years_from_now(2).expect("validity"),
    )
    .expect("module certificate");
    IssuedCertificate {
        serial: serial.to_owned(),
        certificate,
        nonce,
        tan: None,
        identification: None,
    }
}

struct Deployment {
    field: UnitCredentials,
    main: UnitCredentials,
    _dir: tempfile::TempDir,
    field_journal: SqliteJournal,
    main_journal: SqliteJournal,
}

fn deployment() -> Deployment {
    let manufacturer = new_manufacturer("M");
    let (central_key, central_root) = new_central("C");
    let field = new_unit(&manufacturer, &central_key, &central_root, "Field unit");
    let main = new_unit(&manufacturer, &central_key, &central_root, "Main unit");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut field_journal = SqliteJournal::open(&dir.path().join("field.sqlite")).expect("open");
    let main_journal = SqliteJournal::open(&dir.path().join("main.sqlite")).expect("open");
    let a = field_journal
        .record(&issued_by(&field, "0123456789abcdef", 1))
        .expect("record");
    let b = field_journal
        .record(&issued_by(&field, "1123456789abcdef", 2))
        .expect("record");
    field_journal
        .record(&issued_by(&field, "2123456789abcdef", 3))
        .expect("record");
    field_journal.set_installed(a).expect("installed");
    field_journal.set_failed(b, "card removed").expect("failed");
    Deployment {
        field,
        main,
        _dir: dir,
        field_journal,
        main_journal,
    }
}

#[test]
fn export_round_trips_and_imports_once() {
    let mut d = deployment();
    let bytes = export_journal(&d.field_journal, &d.field).expect("export");
    let parsed = parse_export(&bytes).expect("parse");
    assert_eq!(parsed.count, 3);
    assert_eq!(parsed.computed_hash, parsed.final_hash);
    let local = d.field_journal.entries().expect("entries");
    assert_eq!(parsed.entries, local);

    let report = import_export(&mut d.main_journal, &bytes, &d.main).expect("import");
    assert_eq!(
        (report.inserted, report.updated, report.unchanged),
        (3, 0, 0)
    );
    let imported = d.main_journal.entries().expect("entries");
    assert_eq!(imported.len(), 3);
    for (theirs, ours) in local.iter().zip(&imported) {
        assert_eq!(theirs.certificate, ours.certificate);
        assert_eq!(theirs.status, ours.status);
        assert_eq!(theirs.reason, ours.reason);
        assert_eq!(theirs.fingerprint, ours.fingerprint);
        let origin = ours.origin.as_ref().expect("origin");
        assert_eq!(origin.id, theirs.id);
        assert_eq!(origin.unit, display::fingerprint(&d.field.cert_by_central));
    }
    // Imported entries are not the main unit's own: its exports leave them out.
    assert!(d.main_journal.local_entries().expect("local").is_empty());

    let err = import_export(&mut d.main_journal, &bytes, &d.main).unwrap_err();
    assert!(matches!(err, HostError::AlreadyImported { .. }), "{err}");
    assert_eq!(d.main_journal.entries().expect("entries").len(), 3);
}

#[test]
fn a_later_export_adds_new_entries_and_final_statuses() {
    let mut d = deployment();
    let first = export_journal(&d.field_journal, &d.field).expect("export");
    import_export(&mut d.main_journal, &first, &d.main).expect("import");
    let pending = d.field_journal.entries().expect("entries")[2].id;
    d.field_journal.set_installed(pending).expect("installed");
    d.field_journal
        .record(&issued_by(&d.field, "3123456789abcdef", 4))
        .expect("record");
    let second = export_journal(&d.field_journal, &d.field).expect("export");
    let report = import_export(&mut d.main_journal, &second, &d.main).expect("import");
    assert_eq!(
        (report.inserted, report.updated, report.unchanged),
        (1, 1, 2)
    );
    let entries = d.main_journal.entries().expect("entries");
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[2].status, IssuanceStatus::Installed);
}

#[test]
fn every_truncation_and_every_flipped_byte_is_refused() {
    let mut d = deployment();
    let bytes = export_journal(&d.field_journal, &d.field).expect("export");
    for len in 0..bytes.len() {
        let err = verify_export(&bytes[..len], &d.main).unwrap_err();
        assert!(matches!(err, HostError::ExportRefused(_)), "{len}: {err}");
    }
    for at in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x01;
        assert!(
            verify_export(&flipped, &d.main).is_err(),
            "a flip at byte {at} was accepted"
        );
    }
    let mut extended = bytes.clone();
    extended.push(0);
    let err = verify_export(&extended, &d.main).unwrap_err();
    assert!(
        matches!(
            err,
            HostError::ExportRefused(ExportRejection::TrailingBytes(1))
        ),
        "{err}"
    );
    assert!(d.main_journal.entries().expect("entries").is_empty());
    import_export(&mut d.main_journal, &bytes, &d.main).expect("the original still imports");
}

#[test]
fn reordered_or_removed_entries_are_refused() {
    let d = deployment();
    let entries = d.field_journal.entries().expect("entries");
    let sign = |entries: &[JournalEntry], key: &SigningKey| {
        encode_export(
            &d.field.cert_by_manufacturer,
            &d.field.cert_by_central,
            entries,
            key,
        )
        .expect("encode")
    };
    let reordered = [entries[1].clone(), entries[0].clone(), entries[2].clone()];
    let err = verify(&sign(&reordered, &d.field.key), &d.main).unwrap_err();
    assert!(matches!(err, ExportRejection::OutOfOrder { .. }), "{err}");

    // One entry removed and the trailer re-signed by someone without P.
    let removed = [entries[0].clone(), entries[2].clone()];
    let err = verify(&sign(&removed, &random_key()), &d.main).unwrap_err();
    assert!(matches!(err, ExportRejection::BadSignature { .. }), "{err}");

    // One entry removed, the rest of the file as signed: the chain breaks.
    let full = sign(&entries, &d.field.key);
    let parsed = parse_export(&full).expect("parse");
    let short = sign(&removed, &random_key());
    let short_parsed = parse_export(&short).expect("parse");
    let mut spliced = short[..short.len() - TRAILER_LEN].to_vec();
    spliced.extend_from_slice(&full[full.len() - TRAILER_LEN..]);
    assert_eq!(short_parsed.entries.len(), 2);
    let err = verify(&spliced, &d.main).unwrap_err();
    assert!(
        matches!(
            err,
            ExportRejection::CountMismatch {
                trailer: 3,
                found: 2
            }
        ),
        "{err} (full chain hash {:?})",
        parsed.final_hash
    );
}

#[test]
fn an_export_from_the_importing_unit_itself_is_refused() {
    let d = deployment();
    let bytes = export_journal(&d.field_journal, &d.field).expect("export");
    let err = verify(&bytes, &d.field).unwrap_err();
    assert!(matches!(err, ExportRejection::FromThisUnit), "{err}");
}

#[test]
fn random_damage_never_panics_the_parser() {
    let d = deployment();
    let bytes = export_journal(&d.field_journal, &d.field).expect("export");
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        // xorshift64*: reproducible damage without a dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for _ in 0..2000 {
        let mut damaged = bytes.clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() % damaged.len() as u64) as usize;
            match next() % 3 {
                0 => damaged[at] = next() as u8,
                1 => damaged.insert(at, next() as u8),
                _ => {
                    damaged.remove(at);
                }
            }
        }
        if damaged != bytes {
            assert!(parse_export(&damaged).is_err() || verify(&damaged, &d.main).is_err());
        }
    }
}

#[test]
fn a_certificate_already_journaled_under_another_origin_is_refused() {
    let mut d = deployment();
    let bytes = export_journal(&d.field_journal, &d.field).expect("export");
    import_export(&mut d.main_journal, &bytes, &d.main).expect("import");
    // The same entries under other ids: a rebuilt field journal.
    let mut entries = d.field_journal.entries().expect("entries");
    for entry in &mut entries {
        entry.id += 100;
    }
    let again = encode_export(
        &d.field.cert_by_manufacturer,
        &d.field.cert_by_central,
        &entries,
        &d.field.key,
    )
    .expect("encode");
    let err = import_export(&mut d.main_journal, &again, &d.main).unwrap_err();
    assert!(matches!(err, HostError::ImportConflict { .. }), "{err}");
    assert_eq!(d.main_journal.entries().expect("entries").len(), 3);
}
