use super::memory::MemoryKeyMemory;
use super::*;
use alloc::vec;

fn sample() -> Records {
    Records {
        lifecycle: Lifecycle::Operating,
        checking_cert: Some(vec![1, 2, 3]),
        identity_cert: Some(vec![4; 300]),
        module_cert: Some(vec![5; 200]),
        unit_cert: None,
        central_cert: Some(vec![6]),
        time_watermark: 1_800_000_000,
        personalizations: 3,
    }
}

#[test]
fn records_round_trip() {
    let records = sample();
    assert_eq!(Records::decode(&records.encode()), Ok(records));
    assert_eq!(
        Records::decode(&Records::default().encode()),
        Ok(Records::default())
    );
}

#[test]
fn corrupt_records_are_refused() {
    let encoded = sample().encode();
    assert_eq!(
        Records::decode(&encoded[..encoded.len() - 1]),
        Err(KeyMemoryError::Corrupt)
    );
    assert_eq!(Records::decode(&[]), Err(KeyMemoryError::Corrupt));
    let mut wrong_version = encoded.clone();
    wrong_version[2] = 9;
    assert_eq!(
        Records::decode(&wrong_version),
        Err(KeyMemoryError::Corrupt)
    );
    let mut wrong_lifecycle = encoded.clone();
    wrong_lifecycle[5] = 0x42;
    assert_eq!(
        Records::decode(&wrong_lifecycle),
        Err(KeyMemoryError::Corrupt)
    );
    let mut doubled = encoded.clone();
    doubled.extend_from_slice(&encoded);
    assert_eq!(Records::decode(&doubled), Err(KeyMemoryError::Corrupt));
}

#[test]
fn erase_operational_keeps_identity_and_checking_certificates() {
    let mut records = sample();
    records.erase_operational();
    assert_eq!(records.module_cert, None);
    assert_eq!(records.unit_cert, None);
    assert_eq!(records.central_cert, None);
    assert!(records.identity_cert.is_some() && records.checking_cert.is_some());
}

#[test]
fn generation_replaces_the_key_and_erase_removes_it() {
    let mut memory = MemoryKeyMemory::new([7; 48]);
    assert_eq!(memory.public_key(KeySlot::Module), Ok(None));
    let first = memory.generate(KeySlot::Module, b"v").unwrap();
    let second = memory.generate(KeySlot::Module, b"v").unwrap();
    assert_ne!(first, second, "fresh randomness each time");
    assert_eq!(memory.public_key(KeySlot::Module), Ok(Some(second)));
    memory.erase(KeySlot::Module).unwrap();
    assert_eq!(memory.public_key(KeySlot::Module), Ok(None));
    assert_eq!(
        memory.sign_digest(KeySlot::Module, &[0; 48]).err(),
        Some(KeyMemoryError::NoKey)
    );
}

#[cfg(feature = "std")]
#[test]
fn file_memory_commits_atomically_locks_and_wipes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut memory = file::FileKeyMemory::open(dir.path()).unwrap();
    assert_eq!(memory.load(), Ok(Records::default()));
    memory.commit(&sample()).unwrap();
    let key = memory.generate(KeySlot::Identity, &[]).unwrap();
    for name in ["records.tlv", "identity.key"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    // A second opener is refused while the first holds the module.
    let err = file::FileKeyMemory::open(dir.path()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    drop(memory);

    // A temporary file left by a crash is wiped and removed at the next open.
    std::fs::write(dir.path().join("module.tmp"), [0xAB; 48]).unwrap();
    let mut memory = file::FileKeyMemory::open(dir.path()).unwrap();
    assert!(!dir.path().join("module.tmp").exists());
    assert_eq!(memory.load(), Ok(sample()));
    assert_eq!(memory.public_key(KeySlot::Identity), Ok(Some(key)));
    memory.erase(KeySlot::Identity).unwrap();
    assert!(!dir.path().join("identity.key").exists());

    // A corrupt records file is reported, not guessed at.
    std::fs::write(dir.path().join("records.tlv"), b"garbage").unwrap();
    assert_eq!(memory.load(), Err(KeyMemoryError::Corrupt));
}
