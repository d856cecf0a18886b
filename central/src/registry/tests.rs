use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};

use imprint_apdu::pki::issue::{self, CertificateRequest, IssuerKey, Validity};
use p384::ecdsa::SigningKey;

use super::*;
use crate::CentralAuthority;

const NOW: u64 = 1_800_000_000;
const HOUR: u64 = 3600;

/// A central system, one unit certified by it and a module personalized by
/// the unit.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    central: CentralAuthority,
    unit_key: SigningKey,
    unit: Certificate,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("central");
        let central = CentralAuthority::init(&dir, "Test central", 10).expect("init");
        let unit_key = keyfile::generate_signing_key().expect("key");
        let unit = certify(&central, &unit_key, "Unit 1");
        Self {
            _tmp: tmp,
            dir,
            central,
            unit_key,
            unit,
        }
    }

    fn registry(&self) -> Registry {
        Registry::open(&self.dir).expect("open registry")
    }

    /// A module certificate issued by the unit for a fresh module key.
    fn module(&self, serial: &str) -> Certificate {
        let module_key = keyfile::generate_signing_key().expect("module key");
        let point =
            imprint_apdu::channel::encode_point(&p384::PublicKey::from(module_key.verifying_key()));
        let validity =
            Validity::new(self.unit.not_before_unix(), self.unit.not_after_unix()).expect("valid");
        issue::module_cert(
            IssuerKey {
                cert: &self.unit,
                key: &self.unit_key,
            },
            serial,
            &point,
            &[7; pki::NONCE_LEN],
            validity,
        )
        .expect("module cert")
    }
}

fn certify(central: &CentralAuthority, key: &SigningKey, name: &str) -> Certificate {
    let csr = CertificateRequest::new(name, key).expect("csr");
    central.certify_personalizer(&csr, 2).expect("certify")
}

fn key_set(id: u8, created: u64, expires: u64) -> KeySet {
    KeySet {
        id: [id; KEY_SET_ID_LEN],
        key: Zeroizing::new([id ^ 0x5a; KEY_LEN]),
        created,
        expires,
    }
}

fn raw(dir: &Path) -> Connection {
    Connection::open(dir.join(DB_FILE)).expect("raw connection")
}

fn refusal(result: Result<impl fmt::Debug, RegistryError>) -> Refusal {
    match result {
        Err(RegistryError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// A registered unit with a seen module and its key set.
fn with_module(fixture: &Fixture, serial: &str) -> Registry {
    let mut registry = fixture.registry();
    registry.record_unit(&fixture.unit, NOW).expect("record");
    registry
        .module_seen(&fixture.module(serial), &fixture.unit, NOW)
        .expect("seen");
    registry
}

const SERIAL: &str = "0123456789abcdef";
const OTHER_SERIAL: &str = "fedcba9876543210";

#[test]
fn the_registry_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<Registry>();
    send::<RegistryError>();
}

#[test]
fn open_creates_private_files_in_wal_mode() {
    let fixture = Fixture::new();
    drop(fixture.registry());
    let key = fixture.dir.join(SEALING_KEY_FILE);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::read(&key).expect("key").len(), KEY_LEN);
    assert_eq!(mode(&fixture.dir.join(DB_FILE)), 0o600);
    let mode: String = raw(&fixture.dir)
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

#[test]
fn migrations_are_idempotent_on_reopen() {
    let fixture = Fixture::new();
    let mut registry = fixture.registry();
    let fingerprint = registry.record_unit(&fixture.unit, NOW).expect("record");
    let key_before = std::fs::read(fixture.dir.join(SEALING_KEY_FILE)).expect("key");
    drop(registry);
    let registry = fixture.registry();
    drop(fixture.registry());
    let version: u32 = raw(&fixture.dir)
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .expect("version");
    assert_eq!(version, Registry::schema_version());
    assert_eq!(
        std::fs::read(fixture.dir.join(SEALING_KEY_FILE)).expect("key"),
        key_before
    );
    registry
        .check_module(&fixture.unit, SERIAL)
        .expect("unit still known");
    assert_eq!(fingerprint, display::fingerprint(&fixture.unit));
}

#[test]
fn a_newer_schema_is_refused() {
    let fixture = Fixture::new();
    drop(fixture.registry());
    let newer = Registry::schema_version() + 1;
    raw(&fixture.dir)
        .pragma_update(None, "user_version", newer)
        .expect("bump");
    match Registry::open(&fixture.dir) {
        Err(RegistryError::SchemaTooNew { found, known }) => {
            assert_eq!(found, newer);
            assert_eq!(known, Registry::schema_version());
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn the_sealing_key_file_is_checked() {
    let fixture = Fixture::new();
    drop(fixture.registry());
    let key = fixture.dir.join(SEALING_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let err = Registry::open(&fixture.dir).expect_err("insecure");
    assert!(
        matches!(
            err,
            RegistryError::KeyFile(KeyFileError::InsecurePermissions { .. })
        ),
        "{err:?}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(&key, [0u8; 31]).expect("truncate");
    let err = Registry::open(&fixture.dir).expect_err("short");
    assert!(
        matches!(err, RegistryError::BadSealingKey { len: 31, .. }),
        "{err:?}"
    );
}

#[test]
fn record_unit_is_idempotent_and_takes_only_unit_certificates() {
    let fixture = Fixture::new();
    let mut registry = fixture.registry();
    let first = registry.record_unit(&fixture.unit, NOW).expect("record");
    let again = registry.record_unit(&fixture.unit, NOW + 5).expect("again");
    assert_eq!(first, again);
    let (count, certified): (i64, i64) = raw(&fixture.dir)
        .query_row("SELECT count(*), max(certified_at) FROM units", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .expect("count");
    assert_eq!((count, certified), (1, NOW as i64));
    let err = registry
        .record_unit(&fixture.central.cert, NOW)
        .expect_err("root");
    assert!(
        matches!(err, RegistryError::NotAUnitCertificate(Role::Central)),
        "{err:?}"
    );
}

#[test]
fn check_module_requires_a_recorded_unit() {
    let fixture = Fixture::new();
    let mut registry = fixture.registry();
    assert_eq!(
        refusal(registry.check_module(&fixture.unit, SERIAL)),
        Refusal::UnknownUnit
    );
    assert_eq!(
        refusal(registry.module_seen(&fixture.module(SERIAL), &fixture.unit, NOW)),
        Refusal::UnknownUnit
    );
    registry.record_unit(&fixture.unit, NOW).expect("record");
    registry
        .check_module(&fixture.unit, SERIAL)
        .expect("new module admitted");
    let err = registry
        .module_seen(&fixture.unit, &fixture.unit, NOW)
        .expect_err("not a module certificate");
    assert!(
        matches!(err, RegistryError::NotAModuleCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn module_revocation_by_another_instance_is_seen_at_once() {
    let fixture = Fixture::new();
    let server = with_module(&fixture, SERIAL);
    server.check_module(&fixture.unit, SERIAL).expect("active");

    let mut operator = fixture.registry();
    assert!(
        operator
            .revoke_module(&SERIAL.to_ascii_uppercase(), NOW + 1)
            .expect("revoke")
    );
    assert_eq!(
        refusal(server.check_module(&fixture.unit, SERIAL)),
        Refusal::ModuleRevoked
    );
    // Other modules of the unit are unaffected; revoking again is fine.
    server
        .check_module(&fixture.unit, OTHER_SERIAL)
        .expect("other module");
    assert!(operator.revoke_module(SERIAL, NOW + 2).expect("again"));
    let revoked_at: i64 = raw(&fixture.dir)
        .query_row("SELECT revoked_at FROM modules", [], |row| row.get(0))
        .expect("revoked_at");
    assert_eq!(revoked_at, (NOW + 1) as i64);

    assert!(!operator.revoke_module(OTHER_SERIAL, NOW).expect("unknown"));
    let err = operator.revoke_module("xyz", NOW).expect_err("invalid");
    assert!(matches!(err, RegistryError::InvalidSerial(_)), "{err:?}");

    let log: i64 = raw(&fixture.dir)
        .query_row(
            "SELECT count(*) FROM revocations WHERE what = 'module'",
            [],
            |row| row.get(0),
        )
        .expect("log");
    assert_eq!(log, 2);
}

#[test]
fn unit_revocation_revokes_the_units_key() {
    let fixture = Fixture::new();
    let server = with_module(&fixture, SERIAL);
    let mut operator = fixture.registry();
    // A second certificate for the same unit key, and another unit.
    let renewed = certify(&fixture.central, &fixture.unit_key, "Unit 1");
    assert_ne!(
        display::fingerprint(&renewed),
        display::fingerprint(&fixture.unit)
    );
    operator.record_unit(&renewed, NOW).expect("record renewed");
    let other_key = keyfile::generate_signing_key().expect("key");
    let other = certify(&fixture.central, &other_key, "Unit 2");
    operator.record_unit(&other, NOW).expect("record other");

    // Uppercase with colons, as an operator may paste it.
    let fingerprint = fixture
        .unit
        .fingerprint()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(operator.revoke_unit(&fingerprint, NOW).expect("revoke"));
    assert_eq!(
        refusal(server.check_module(&fixture.unit, SERIAL)),
        Refusal::UnitRevoked
    );
    assert_eq!(
        refusal(server.check_module(&renewed, OTHER_SERIAL)),
        Refusal::UnitRevoked
    );
    server
        .check_module(&other, OTHER_SERIAL)
        .expect("other unit");

    let modules = server.modules().expect("modules");
    assert_eq!(modules.len(), 1);
    assert!(modules[0].unit_revoked);
    assert_eq!(modules[0].state, ModuleState::Active);

    assert!(
        !operator
            .revoke_unit(&"ab".repeat(FINGERPRINT_LEN), NOW)
            .expect("unknown")
    );
    let err = operator.revoke_unit("abcd", NOW).expect_err("short");
    assert!(
        matches!(err, RegistryError::InvalidFingerprint(_)),
        "{err:?}"
    );
}

#[test]
fn key_sets_are_sealed_at_rest() {
    let fixture = Fixture::new();
    let mut registry = with_module(&fixture, SERIAL);
    let set = key_set(1, NOW, NOW + HOUR);
    registry.store_key_set(SERIAL, &set).expect("store");

    let blob: Vec<u8> = raw(&fixture.dir)
        .query_row("SELECT sealed_key FROM key_sets", [], |row| row.get(0))
        .expect("blob");
    assert_eq!(blob.len(), SEALED_LEN);
    assert!(
        !blob.windows(KEY_LEN).any(|window| window == &set.key[..]),
        "the key must not be stored in clear"
    );

    let stored = registry.key_set(&set.id).expect("read").expect("present");
    assert_eq!(*stored.key_set.key, *set.key);
    assert_eq!(stored.serial, SERIAL);
    assert_eq!((stored.last_counter, stored.retired), (0, false));
    assert_eq!(
        (stored.key_set.created, stored.key_set.expires),
        (NOW, NOW + HOUR)
    );
    assert!(registry.key_set(&[9; 16]).expect("read").is_none());
    assert_eq!(
        stored.check_serial(OTHER_SERIAL),
        Err(Refusal::KeySetOfOtherModule)
    );
    stored.check_serial(SERIAL).expect("own module");

    // Sealing uses a fresh nonce: the same key sealed twice differs.
    registry
        .store_key_set(OTHER_SERIAL, &key_set(1 ^ 0x10, NOW, NOW + HOUR))
        .expect("store other");
    let other = registry.seal(&set.id, SERIAL, &set.key).expect("seal");
    assert_ne!(other, blob);
}

#[test]
fn a_tampered_or_moved_key_set_is_refused() {
    let fixture = Fixture::new();
    let mut registry = with_module(&fixture, SERIAL);
    let a = key_set(1, NOW, NOW + HOUR);
    let b = key_set(2, NOW, NOW + HOUR);
    registry.store_key_set(SERIAL, &a).expect("store a");
    registry.store_key_set(OTHER_SERIAL, &b).expect("store b");
    let db = raw(&fixture.dir);

    // Moved: a's blob in b's row.
    db.execute(
        "UPDATE key_sets SET sealed_key = (SELECT sealed_key FROM key_sets WHERE id = ?1)
         WHERE id = ?2",
        params![&a.id[..], &b.id[..]],
    )
    .expect("move");
    let err = registry.key_set(&b.id).expect_err("moved");
    assert!(
        matches!(err, RegistryError::Corrupt(Corruption::SealedKey { .. })),
        "{err:?}"
    );
    // Moved to another module: a's row claims the other serial.
    db.execute(
        "UPDATE key_sets SET serial = ?1 WHERE id = ?2",
        params![OTHER_SERIAL, &a.id[..]],
    )
    .expect("reassign");
    let err = registry.key_set(&a.id).expect_err("reassigned");
    assert!(matches!(err, RegistryError::Corrupt(_)), "{err:?}");
    db.execute(
        "UPDATE key_sets SET serial = ?1 WHERE id = ?2",
        params![SERIAL, &a.id[..]],
    )
    .expect("restore");
    registry.key_set(&a.id).expect("restored").expect("present");

    // Tampered: one bit flipped.
    let mut blob: Vec<u8> = db
        .query_row(
            "SELECT sealed_key FROM key_sets WHERE id = ?1",
            [&a.id[..]],
            |row| row.get(0),
        )
        .expect("blob");
    blob[NONCE_LEN + 3] ^= 1;
    db.execute(
        "UPDATE key_sets SET sealed_key = ?1 WHERE id = ?2",
        params![blob, &a.id[..]],
    )
    .expect("tamper");
    let err = registry
        .accept_session_counter(&a.id, 1, NOW)
        .expect_err("tampered");
    assert!(matches!(err, RegistryError::Corrupt(_)), "{err:?}");
}

#[test]
fn another_sealing_key_opens_nothing() {
    let fixture = Fixture::new();
    let mut registry = with_module(&fixture, SERIAL);
    let set = key_set(1, NOW, NOW + HOUR);
    registry.store_key_set(SERIAL, &set).expect("store");
    drop(registry);
    // Another key in the file (a wrong backup restored, say).
    crate::keyfile::write_atomic(
        &fixture.dir.join(SEALING_KEY_FILE),
        &[0x5C; 32],
        crate::keyfile::KEY_FILE_MODE,
        crate::keyfile::Overwrite::Replace,
    )
    .expect("replace key");
    let registry = fixture.registry();
    let err = registry.key_set(&set.id).expect_err("other key");
    assert!(matches!(err, RegistryError::Corrupt(_)), "{err:?}");
}

#[test]
fn debug_never_shows_the_key() {
    let set = key_set(0x42, NOW, NOW + HOUR);
    let key_hex = display::hex(&set.key[..]);
    let stored = StoredKeySet {
        serial: SERIAL.into(),
        key_set: set.clone(),
        last_counter: 3,
        retired: false,
    };
    for text in [
        format!("{set:?}"),
        format!("{stored:?}"),
        format!("{stored:#?}"),
    ] {
        assert!(!text.contains(&key_hex), "{text}");
        assert!(
            !text.contains(&format!("{:?}", &set.key[..2])[1..]),
            "{text}"
        );
        assert!(!text.contains("key:"), "{text}");
        assert!(text.contains(&display::hex(&set.id)), "{text}");
    }
}

#[test]
fn session_counters_only_increase() {
    let fixture = Fixture::new();
    let mut registry = with_module(&fixture, SERIAL);
    let set = key_set(1, NOW, NOW + HOUR);
    registry.store_key_set(SERIAL, &set).expect("store");

    assert_eq!(
        refusal(registry.accept_session_counter(&set.id, 0, NOW)),
        Refusal::CounterReplayed { last: 0, got: 0 }
    );
    let accepted = registry
        .accept_session_counter(&set.id, 1, NOW)
        .expect("first");
    assert_eq!(accepted.last_counter, 1);
    assert_eq!(*accepted.key_set.key, *set.key);
    assert_eq!(
        refusal(registry.accept_session_counter(&set.id, 1, NOW)),
        Refusal::CounterReplayed { last: 1, got: 1 }
    );
    registry
        .accept_session_counter(&set.id, 5, NOW)
        .expect("skip ahead");
    assert_eq!(
        refusal(registry.accept_session_counter(&set.id, 3, NOW)),
        Refusal::CounterReplayed { last: 5, got: 3 }
    );
    drop(registry);
    let mut registry = fixture.registry();
    assert_eq!(
        refusal(registry.accept_session_counter(&set.id, 5, NOW)),
        Refusal::CounterReplayed { last: 5, got: 5 }
    );
    registry
        .accept_session_counter(&set.id, u32::MAX, NOW)
        .expect("max");
    assert_eq!(
        registry
            .key_set(&set.id)
            .expect("read")
            .expect("present")
            .last_counter,
        u32::MAX
    );
}

#[test]
fn session_counters_are_atomic_across_instances() {
    const COUNTERS: u32 = 150;
    let fixture = Fixture::new();
    let mut registry = with_module(&fixture, SERIAL);
    let set = key_set(1, NOW, NOW + HOUR);
    registry.store_key_set(SERIAL, &set).expect("store");
    drop(registry);

    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let mut registry = fixture.registry();
            let barrier = Arc::clone(&barrier);
            let id = set.id;
            std::thread::spawn(move || {
                barrier.wait();
                let mut accepted = Vec::new();
                for counter in 1..=COUNTERS {
                    match registry.accept_session_counter(&id, counter, NOW) {
                        Ok(stored) => {
                            assert_eq!(stored.last_counter, counter);
                            accepted.push(counter);
                        }
                        Err(RegistryError::Refused(Refusal::CounterReplayed { last, got })) => {
                            assert!(last >= got, "{last} < {got}");
                        }
                        Err(err) => panic!("unexpected: {err:?}"),
                    }
                }
                accepted
            })
        })
        .collect();
    let mut all: Vec<u32> = threads
        .into_iter()
        .flat_map(|thread| thread.join().expect("thread"))
        .collect();
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(all.len(), before, "a counter was accepted twice");
    assert!(all.contains(&COUNTERS));
    let last = fixture
        .registry()
        .key_set(&set.id)
        .expect("read")
        .expect("present")
        .last_counter;
    assert_eq!(last, COUNTERS);
}

#[test]
fn expired_retired_and_revoked_key_sets_are_refused() {
    let fixture = Fixture::new();
    let mut registry = with_module(&fixture, SERIAL);
    assert_eq!(
        refusal(registry.accept_session_counter(&[3; 16], 1, NOW)),
        Refusal::UnknownKeySet
    );

    let old = key_set(1, NOW, NOW + HOUR);
    registry.store_key_set(SERIAL, &old).expect("store");
    assert_eq!(
        refusal(registry.accept_session_counter(&old.id, 1, NOW + HOUR)),
        Refusal::KeySetExpired
    );
    registry
        .accept_session_counter(&old.id, 1, NOW + HOUR - 1)
        .expect("just before expiry");

    let new = key_set(2, NOW + 10, NOW + 2 * HOUR);
    registry.store_key_set(SERIAL, &new).expect("store new");
    assert!(
        registry
            .key_set(&old.id)
            .expect("read")
            .expect("old")
            .retired
    );
    assert_eq!(
        refusal(registry.accept_session_counter(&old.id, 2, NOW)),
        Refusal::KeySetRetired
    );
    registry
        .accept_session_counter(&new.id, 1, NOW)
        .expect("new set");
    let err = registry.store_key_set(SERIAL, &new).expect_err("duplicate");
    assert!(matches!(err, RegistryError::DuplicateKeySet(_)), "{err:?}");

    let mut operator = fixture.registry();
    assert!(operator.revoke_module(SERIAL, NOW).expect("revoke"));
    assert_eq!(
        refusal(registry.accept_session_counter(&new.id, 2, NOW)),
        Refusal::ModuleRevoked
    );
    assert_eq!(
        refusal(registry.store_key_set(SERIAL, &key_set(3, NOW, NOW + HOUR))),
        Refusal::ModuleRevoked
    );
}

#[test]
fn a_revoked_unit_stops_its_modules_sessions() {
    let fixture = Fixture::new();
    let mut registry = with_module(&fixture, SERIAL);
    let set = key_set(1, NOW, NOW + HOUR);
    registry.store_key_set(SERIAL, &set).expect("store");
    let fingerprint = display::fingerprint(&fixture.unit);
    assert!(
        fixture
            .registry()
            .revoke_unit(&fingerprint, NOW)
            .expect("revoke")
    );
    assert_eq!(
        refusal(registry.accept_session_counter(&set.id, 1, NOW)),
        Refusal::UnitRevoked
    );
}

#[test]
fn the_journal_round_trips() {
    let fixture = Fixture::new();
    let mut registry = with_module(&fixture, SERIAL);
    assert!(registry.transactions().expect("empty").is_empty());
    let set = key_set(1, NOW, NOW + HOUR);
    registry.store_key_set(SERIAL, &set).expect("store");
    let other = key_set(2, NOW, NOW + HOUR);
    registry.store_key_set(OTHER_SERIAL, &other).expect("store");

    let first = TransactionRecord {
        serial: SERIAL.into(),
        key_set_id: set.id,
        session_counter: 1,
        sequence: 0,
        payload_digest: [0xaa; 48],
        time: NOW,
    };
    let second = TransactionRecord {
        sequence: 1,
        payload_digest: [0xbb; 48],
        time: NOW + 1,
        ..first.clone()
    };
    let n1 = registry.record_transaction(&first).expect("first");
    let n2 = registry.record_transaction(&second).expect("second");
    assert!(n2 > n1);

    let err = registry.record_transaction(&first).expect_err("duplicate");
    assert!(
        matches!(
            err,
            RegistryError::DuplicateTransaction {
                session_counter: 1,
                sequence: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        refusal(registry.record_transaction(&TransactionRecord {
            key_set_id: [9; 16],
            ..first.clone()
        })),
        Refusal::UnknownKeySet
    );
    assert_eq!(
        refusal(registry.record_transaction(&TransactionRecord {
            key_set_id: other.id,
            ..first.clone()
        })),
        Refusal::KeySetOfOtherModule
    );

    let journal = fixture.registry().transactions().expect("journal");
    assert_eq!(
        journal,
        vec![
            JournaledTransaction {
                number: n1,
                record: first,
            },
            JournaledTransaction {
                number: n2,
                record: second,
            },
        ]
    );
}

#[test]
fn modules_summarizes_each_module() {
    let fixture = Fixture::new();
    let mut registry = fixture.registry();
    assert!(registry.modules().expect("empty").is_empty());
    registry.record_unit(&fixture.unit, NOW).expect("record");
    registry
        .module_seen(&fixture.module(SERIAL), &fixture.unit, NOW)
        .expect("seen");
    registry
        .module_seen(&fixture.module(SERIAL), &fixture.unit, NOW + 50)
        .expect("seen again");
    registry
        .module_seen(&fixture.module(OTHER_SERIAL), &fixture.unit, NOW + 7)
        .expect("seen");
    registry
        .store_key_set(SERIAL, &key_set(1, NOW, NOW + HOUR))
        .expect("store");
    registry
        .store_key_set(SERIAL, &key_set(2, NOW + 20, NOW + HOUR))
        .expect("store");
    registry
        .record_transaction(&TransactionRecord {
            serial: SERIAL.into(),
            key_set_id: [2; 16],
            session_counter: 1,
            sequence: 0,
            payload_digest: [0; 48],
            time: NOW + 30,
        })
        .expect("journal");
    registry
        .revoke_module(OTHER_SERIAL, NOW + 60)
        .expect("revoke");

    let modules = registry.modules().expect("modules");
    let fingerprint = display::fingerprint(&fixture.unit);
    assert_eq!(
        modules,
        vec![
            ModuleSummary {
                serial: SERIAL.into(),
                state: ModuleState::Active,
                unit_revoked: false,
                unit_fingerprint: fingerprint.clone(),
                first_seen: NOW,
                last_seen: NOW + 50,
                key_set_created: Some(NOW + 20),
                key_set_expires: Some(NOW + HOUR),
                transactions: 1,
            },
            ModuleSummary {
                serial: OTHER_SERIAL.into(),
                state: ModuleState::Revoked,
                unit_revoked: false,
                unit_fingerprint: fingerprint,
                first_seen: NOW + 7,
                last_seen: NOW + 7,
                key_set_created: None,
                key_set_expires: None,
                transactions: 0,
            },
        ]
    );
    assert_eq!(ModuleState::Revoked.to_string(), "revoked");
}

#[test]
fn a_group_commit_keeps_the_good_records_and_refuses_the_bad_alone() {
    let fixture = Fixture::new();
    let mut registry = with_module(&fixture, SERIAL);
    let set = key_set(1, NOW, NOW + HOUR);
    registry.store_key_set(SERIAL, &set).expect("store");
    let record = |sequence: u32| TransactionRecord {
        serial: SERIAL.into(),
        key_set_id: set.id,
        session_counter: 1,
        sequence,
        payload_digest: [sequence as u8; 48],
        time: NOW,
    };
    let unknown = TransactionRecord {
        key_set_id: [9; 16],
        ..record(3)
    };
    let outcome = registry
        .record_transactions(&[record(1), unknown, record(2), record(1)])
        .expect("group commit");
    assert_eq!(outcome.len(), 4);
    let first = *outcome[0].as_ref().expect("first");
    assert!(matches!(
        outcome[1],
        Err(RegistryError::Refused(Refusal::UnknownKeySet))
    ));
    let second = *outcome[2].as_ref().expect("second");
    assert!(second > first);
    assert!(matches!(
        outcome[3],
        Err(RegistryError::DuplicateTransaction { sequence: 1, .. })
    ));
    let journal = fixture.registry().transactions().expect("journal");
    assert_eq!(
        journal.iter().map(|entry| entry.number).collect::<Vec<_>>(),
        vec![first, second]
    );
}

#[test]
fn a_lost_sealing_key_is_not_replaced_under_sealed_key_sets() {
    let fixture = Fixture::new();
    let mut registry = with_module(&fixture, SERIAL);
    registry
        .store_key_set(SERIAL, &key_set(1, NOW, NOW + HOUR))
        .expect("store");
    drop(registry);
    let key_path = fixture.dir.join(SEALING_KEY_FILE);
    std::fs::remove_file(&key_path).expect("lose the key");
    match Registry::open(&fixture.dir) {
        Err(RegistryError::SealingKeyMissing(path)) => assert_eq!(path, key_path),
        other => panic!("expected SealingKeyMissing, got {other:?}"),
    }
    assert!(!key_path.exists(), "no fresh key was written");
}
