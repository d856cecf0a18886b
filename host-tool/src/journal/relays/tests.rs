use super::*;

fn key() -> p384::PublicKey {
    let key = imprint_central::keyfile::generate_signing_key().expect("key");
    p384::PublicKey::from(key.verifying_key())
}

fn journal() -> (tempfile::TempDir, SqliteJournal) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let journal = SqliteJournal::open(&tmp.path().join("journal.sqlite")).expect("journal");
    (tmp, journal)
}

#[test]
fn a_relay_name_or_key_is_registered_once() {
    let (_tmp, mut journal) = journal();
    let first = key();
    let relay = journal.register_relay("phone-1", &first).expect("register");
    assert_eq!(
        relay.fingerprint,
        relay_fingerprint(first.to_sec1_point(false).as_bytes())
    );
    assert!(matches!(
        journal.register_relay("phone-1", &key()),
        Err(HostError::RelayAlreadyRegistered(name)) if name == "phone-1"
    ));
    assert!(matches!(
        journal.register_relay("phone-2", &first),
        Err(HostError::RelayAlreadyRegistered(name)) if name == "phone-1"
    ));
    assert_eq!(journal.relays().expect("relays"), vec![relay.clone()]);
    assert_eq!(
        journal
            .relay_by_fingerprint(&relay.fingerprint)
            .expect("lookup"),
        Some(relay)
    );
    assert_eq!(journal.relay_by_fingerprint("00").expect("lookup"), None);
}

#[test]
fn presentations_name_the_relay_and_follow_the_run() {
    let (_tmp, mut journal) = journal();
    let relay = journal.register_relay("phone-1", &key()).expect("register");
    let named = journal
        .record_presentation("0011223344556677", &relay.fingerprint, Some(relay.id))
        .expect("presentation");
    let anonymous = journal
        .record_presentation("8899aabbccddeeff", "ab12", None)
        .expect("presentation");
    let id = journal
        .record(&crate::testutil::issued("0011223344556677", 1))
        .expect("issued");
    journal
        .set_presentation_journal_id(named, id)
        .expect("linked");
    journal
        .finish_presentation(named, "installed")
        .expect("done");
    journal
        .finish_presentation(anonymous, "failed: the module disconnected")
        .expect("done");
    let rows = journal.presentations().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].relay_name.as_deref(), Some("phone-1"));
    assert_eq!(rows[0].journal_id, Some(id));
    assert_eq!(rows[0].outcome, "installed");
    assert_eq!(rows[1].relay_name, None);
    assert_eq!(rows[1].relay_fingerprint, "ab12");
    assert_eq!(rows[1].journal_id, None);
    assert!(rows[1].outcome.starts_with("failed"));
}
