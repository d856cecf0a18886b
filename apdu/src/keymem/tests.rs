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
        pin: Some(PinRecord::new([9; PIN_SALT_LEN], b"1234")),
        key_set: Some(KeySetRecord {
            id: [7; 16],
            key: [8; 32],
            expires: 1_900_000_000,
            counter: 41,
        }),
        tan_proofs: 2,
    }
}

#[test]
fn tan_proof_counter_round_trips_and_old_records_decode() {
    let records = sample();
    assert_eq!(Records::decode(&records.encode()).unwrap(), records);
    // A record written before the TAN counter existed has no CD object.
    let old = Records {
        tan_proofs: 0,
        ..sample()
    };
    let bytes = old.encode();
    assert!(!bytes.windows(2).any(|w| w == [0xCD, 0x01]));
    assert_eq!(Records::decode(&bytes).unwrap().tan_proofs, 0);
    // Out-of-range counters are corruption, not a fresh start.
    let mut bad = old.encode();
    bad.extend_from_slice(&[0xCD, 0x01, crate::proto::TAN_PROOF_LIMIT + 1]);
    assert_eq!(Records::decode(&bad), Err(KeyMemoryError::Corrupt));
}

#[test]
fn key_set_debug_never_shows_the_key() {
    let text = alloc::format!("{:?}", sample());
    assert!(text.contains("counter: 41"), "{text}");
    assert!(!text.contains("8, 8, 8"), "{text}");
}

#[test]
fn a_half_stored_key_set_is_corrupt() {
    let mut bytes = Vec::new();
    tlv::write(&mut bytes, record_tag::VERSION, &[RECORDS_VERSION]);
    tlv::write(
        &mut bytes,
        record_tag::LIFECYCLE,
        &[Lifecycle::Operating.code()],
    );
    tlv::write(&mut bytes, record_tag::WATERMARK, &0u64.to_be_bytes());
    tlv::write(&mut bytes, record_tag::COUNT, &0u32.to_be_bytes());
    let mut without_counter = bytes.clone();
    tlv::write(
        &mut without_counter,
        record_tag::KEY_SET,
        &[0; KEY_SET_VALUE_LEN],
    );
    assert_eq!(
        Records::decode(&without_counter),
        Err(KeyMemoryError::Corrupt)
    );
    let mut short = bytes.clone();
    tlv::write(&mut short, record_tag::KEY_SET, &[0; KEY_SET_VALUE_LEN - 1]);
    tlv::write(&mut short, record_tag::KEY_SET_COUNTER, &[0; 4]);
    assert_eq!(Records::decode(&short), Err(KeyMemoryError::Corrupt));
    tlv::write(&mut bytes, record_tag::KEY_SET, &[0; KEY_SET_VALUE_LEN]);
    tlv::write(&mut bytes, record_tag::KEY_SET_COUNTER, &[0; 4]);
    assert!(Records::decode(&bytes).is_ok_and(|records| records.key_set.is_some()));
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
fn records_without_a_pin_encode_as_before() {
    let mut records = sample();
    records.pin = None;
    let encoded = records.encode();
    assert!(!encoded.windows(2).any(|w| w == [0xC9, 0x40]));
    assert_eq!(Records::decode(&encoded), Ok(records));
}

#[test]
fn pin_objects_decode_strictly() {
    let mut records = sample();
    records.pin = None;
    let base = records.encode();
    let verifier = tlv::encode(0xC9, &[7; 64]);
    let tries = |n: u8| tlv::encode(0xCA, &[n]);
    let with = |parts: &[&[u8]]| {
        let mut bytes = base.clone();
        for part in parts {
            bytes.extend_from_slice(part);
        }
        bytes
    };
    let good = Records::decode(&with(&[&verifier, &tries(2)])).unwrap();
    assert_eq!(good.pin.as_ref().map(|pin| pin.tries_left), Some(2));
    assert_eq!(good.pin.as_ref().map(|pin| pin.salt), Some([7; 16]));
    // Either order, but never one without the other, a wrong length, or more
    // tries than the limit.
    assert!(Records::decode(&with(&[&tries(0), &verifier])).is_ok());
    for bad in [
        with(&[&verifier]),
        with(&[&tries(1)]),
        with(&[&tlv::encode(0xC9, &[7; 63]), &tries(1)]),
        with(&[&tlv::encode(0xC9, &[7; 65]), &tries(1)]),
        with(&[&verifier, &tlv::encode(0xCA, &[1, 1])]),
        with(&[&verifier, &tlv::encode(0xCA, &[])]),
        with(&[&verifier, &tries(crate::proto::PIN_TRY_LIMIT + 1)]),
        with(&[&verifier, &tries(1), &tries(1)]),
    ] {
        assert_eq!(Records::decode(&bad), Err(KeyMemoryError::Corrupt));
    }
}

#[test]
fn pin_verifier_is_salted_and_compares_whole_pins() {
    let record = PinRecord::new([1; PIN_SALT_LEN], b"123456");
    assert_eq!(record.tries_left, crate::proto::PIN_TRY_LIMIT);
    assert!(record.matches(b"123456"));
    for wrong in [&b"12345"[..], b"1234567", b"123457", b"", b"123456\0"] {
        assert!(!record.matches(wrong), "{wrong:?}");
    }
    let other_salt = PinRecord::new([2; PIN_SALT_LEN], b"123456");
    assert_ne!(record.verifier, other_salt.verifier);
    // The documented construction.
    let mut hash = Sha384::new();
    hash.update(b"imprint v1 user pin");
    hash.update([1; PIN_SALT_LEN]);
    hash.update(b"123456");
    assert_eq!(record.verifier, <[u8; 48]>::from(hash.finalize()));
    // The test vector of docs/protocol.md, section 13.
    assert_eq!(
        PinRecord::new([6; PIN_SALT_LEN], b"1234").verifier[..],
        [
            0x85, 0x8c, 0x6c, 0x65, 0x34, 0xcc, 0xd1, 0xf4, 0xc1, 0x4a, 0x92, 0xa2, 0x31, 0x9a,
            0x3f, 0x21, 0x3d, 0xaa, 0xdb, 0x73, 0x58, 0x22, 0x1e, 0x73, 0x2d, 0x24, 0x10, 0x54,
            0x46, 0xb8, 0xad, 0xde, 0xe3, 0xcb, 0x25, 0x81, 0x00, 0xa8, 0xda, 0x85, 0x23, 0x66,
            0xdb, 0x93, 0x1b, 0x37, 0x6d, 0x26,
        ]
    );
    // Debug output does not show the verifier.
    assert!(!alloc::format!("{record:?}").contains("verifier"));
}

#[test]
fn digests_are_brought_to_the_p384_hash_value_as_ecdsa_defines() {
    assert_eq!(ecdsa_hash_value(&[]), None);
    assert_eq!(ecdsa_hash_value(&[0; 65]), None);
    let short = ecdsa_hash_value(&[0xAB; 20]).unwrap();
    assert_eq!(short[..28], [0; 28]);
    assert_eq!(short[28..], [0xAB; 20]);
    let one = ecdsa_hash_value(&[5]).unwrap();
    assert_eq!(one[47], 5);
    assert_eq!(one[..47], [0; 47]);
    let exact: [u8; 48] = core::array::from_fn(|i| i as u8);
    assert_eq!(ecdsa_hash_value(&exact), Some(exact));
    let long: [u8; 64] = core::array::from_fn(|i| i as u8);
    assert_eq!(ecdsa_hash_value(&long).unwrap()[..], long[..48]);
}

#[test]
fn signatures_over_hash_values_verify_against_the_original_digests() {
    use p384::ecdsa::VerifyingKey;
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    let mut memory = MemoryKeyMemory::new([8; 48]);
    let public = VerifyingKey::from(&memory.generate(KeySlot::Module, b"v").unwrap());
    for len in [1usize, 20, 32, 47, 48, 49, 64] {
        let digest: alloc::vec::Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
        let value = ecdsa_hash_value(&digest).unwrap();
        let signature = memory.sign_digest(KeySlot::Module, &value).unwrap();
        // The ECDSA library applies the standard's conversion itself.
        public
            .verify_prehash(&digest, &signature)
            .unwrap_or_else(|_| panic!("digest of {len} bytes"));
    }
}

#[test]
fn erase_operational_keeps_identity_and_checking_certificates() {
    let mut records = sample();
    records.erase_operational();
    assert_eq!(records.module_cert, None);
    assert_eq!(records.unit_cert, None);
    assert_eq!(records.central_cert, None);
    assert_eq!(records.pin, None);
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
