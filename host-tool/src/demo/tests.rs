use super::*;
use crate::roles::Personalizer;

#[test]
fn demo_with_two_modules_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let report = run_demo(tmp.path(), 2).expect("demo");
    for row in &report.rows {
        assert!(
            row.failures.is_empty(),
            "module {}: {:?}",
            row.index,
            row.failures
        );
    }
    assert!(report.all_verified);
    assert_eq!(report.rows.len(), 2);
    assert_eq!(report.first_personalization_apdus, 5);
    assert_eq!(report.repersonalization_apdus, 6);
    assert!(report.rows[0].repersonalized());
    assert!(!report.rows[1].repersonalized());
    assert_ne!(report.rows[0].serial, report.rows[1].serial);
    assert!(report.rows.iter().all(|row| row.manufacture_apdus == 3));
    assert!(report.rows.iter().all(|row| row.connect_commands == 4));
    let journaled = imprint_central::registry::Registry::open(&tmp.path().join("central"))
        .expect("registry")
        .transactions()
        .expect("journal");
    assert_eq!(journaled.len(), 2, "one transaction per module");

    let journal =
        SqliteJournal::open_existing(&roles::journal_path(&tmp.path().join("personalizer")))
            .expect("journal");
    let first = journal
        .entries_for(&report.rows[0].serial)
        .expect("entries");
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|e| e.status == IssuanceStatus::Installed));
    assert_ne!(first[0].certificate, first[1].certificate);
}

#[test]
fn demo_refuses_zero_modules() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(matches!(run_demo(tmp.path(), 0), Err(HostError::NoModules)));
}

#[test]
fn demo_refuses_a_used_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    run_demo(tmp.path(), 1).expect("first run");
    assert!(matches!(
        run_demo(tmp.path(), 1),
        Err(HostError::AlreadyInitialized(_))
    ));
}

#[test]
fn verification_catches_a_loose_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    run_demo(tmp.path(), 1).expect("demo");
    let record = tmp.path().join("modules").join("1").join("records.tlv");
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let unit = Personalizer::open(&tmp.path().join("personalizer")).expect("unit");
    let central = CentralAuthority::open(&tmp.path().join("central")).expect("central");
    let journal = SqliteJournal::open(&roles::journal_path(&tmp.path().join("personalizer")))
        .expect("journal");
    let status = module::status(&module_dir(tmp.path(), 1)).expect("status");
    let serial = status.serial.expect("serial");
    let failures = verify_module(
        &module_dir(tmp.path(), 1),
        &serial,
        &unit,
        &central.cert,
        &journal,
        2,
    )
    .expect("verify");
    assert_eq!(
        failures,
        vec![CheckFailure::LooseFile {
            path: record,
            mode: 0o644
        }]
    );
}
