use super::memory::MemoryIdStore;
use super::*;
use crate::iso::Response;

fn unit(values: usize) -> IdUnit<MemoryIdStore> {
    let record = IdUnitRecord {
        id: [7; ID_LEN],
        key: Zeroizing::new([9; KEY_LEN]),
        values: (0..values).map(|i| [i as u8 + 1; VALUE_LEN]).collect(),
    };
    IdUnit::new(MemoryIdStore::new(record)).unwrap()
}

fn send(unit: &mut IdUnit<MemoryIdStore>, apdu: &[u8]) -> Response {
    Response::from_bytes(&unit.process(apdu)).unwrap()
}

fn select(unit: &mut IdUnit<MemoryIdStore>) {
    let mut apdu = vec![0x00, 0xA4, 0x04, 0x00, AID.len() as u8];
    apdu.extend_from_slice(&AID);
    assert_eq!(send(unit, &apdu).sw, sw::OK);
}

fn authenticate(challenge: [u8; CHALLENGE_LEN]) -> Vec<u8> {
    let data = tlv::encode(tag::DYN_AUTH, &tlv::encode(tag::AUTH_CHALLENGE, &challenge));
    let mut apdu = vec![0x00, 0x88, 0x00, 0x00, data.len() as u8];
    apdu.extend_from_slice(&data);
    apdu.push(0x00);
    apdu
}

#[test]
fn answers_a_challenge_with_a_one_off_value_and_its_mac() {
    let mut unit = unit(2);
    select(&mut unit);
    let first = send(&mut unit, &authenticate([1; 32]));
    assert_eq!(first.sw, sw::OK);
    let answer = IdentificationAnswer::parse(&first.data).unwrap();
    assert_eq!(answer.id, [7; ID_LEN]);
    assert!(identification_mac_matches(
        &[9; KEY_LEN],
        &[1; 32],
        &answer.id,
        &answer.value,
        &answer.mac
    ));
    assert!(!identification_mac_matches(
        &[9; KEY_LEN],
        &[2; 32],
        &answer.id,
        &answer.value,
        &answer.mac
    ));
    // Committed before answering: the store no longer holds it.
    assert_eq!(unit.store().record().values.len(), 1);
    let second =
        IdentificationAnswer::parse(&send(&mut unit, &authenticate([1; 32])).data).unwrap();
    assert_ne!(second.value, answer.value);
    assert_eq!(
        send(&mut unit, &authenticate([1; 32])).sw,
        sw::AUTH_METHOD_BLOCKED
    );
}

#[test]
fn refuses_before_select_bad_data_and_a_failing_store() {
    let mut unit = unit(1);
    assert_eq!(send(&mut unit, &authenticate([1; 32])).sw, sw::CONDITIONS);
    select(&mut unit);
    assert_eq!(
        send(&mut unit, &[0x00, 0x88, 0x00, 0x00, 0x02, 0x7C, 0x00]).sw,
        sw::WRONG_DATA
    );
    assert_eq!(
        send(&mut unit, &[0x00, 0xCA, 0xDF, 0x31, 0x00]).data,
        vec![0, 1]
    );
    assert_eq!(
        send(&mut unit, &[0x00, 0xCA, 0xDF, 0x30, 0x00]).data,
        vec![7; ID_LEN]
    );
    let mut failing = IdUnit::new({
        let mut store = MemoryIdStore::new(unit.record.clone());
        store.fail_commits = true;
        store
    })
    .unwrap();
    select(&mut failing);
    assert_eq!(
        send(&mut failing, &authenticate([1; 32])).sw,
        sw::MEMORY_FAILURE
    );
    assert_eq!(failing.values_left(), 1);
}

#[test]
fn record_round_trips_and_rejects_corruption() {
    let unit = unit(3);
    let bytes = unit.record.encode();
    assert_eq!(IdUnitRecord::decode(&bytes).unwrap(), unit.record);
    assert_eq!(
        IdUnitRecord::decode(&bytes[..bytes.len() - 1]),
        Err(IdStoreError::Corrupt)
    );
}

#[cfg(feature = "std")]
#[test]
fn file_store_replaces_atomically_keeps_0600_and_refuses_a_second_unit() {
    use std::os::unix::fs::PermissionsExt;

    use super::file::FileIdStore;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idunit");
    let record = unit(2).record.clone();
    let store = FileIdStore::create(&dir, &record).unwrap();
    let mode = std::fs::metadata(dir.join("idunit.tlv"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // One process at a time.
    assert_eq!(
        FileIdStore::open(&dir).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    let mut applet = IdUnit::new(store).unwrap();
    let mut apdu = vec![0x00, 0xA4, 0x04, 0x00, AID.len() as u8];
    apdu.extend_from_slice(&AID);
    assert_eq!(
        Response::from_bytes(&applet.process(&apdu)).unwrap().sw,
        sw::OK
    );
    assert_eq!(
        Response::from_bytes(&applet.process(&authenticate([5; 32])))
            .unwrap()
            .sw,
        sw::OK
    );
    drop(applet);
    // Reopened from disk: the value given out is gone, no temporary file left.
    let mut reopened = FileIdStore::open(&dir).unwrap();
    assert_eq!(reopened.load().unwrap().values, record.values[1..].to_vec());
    assert!(!dir.join("idunit.tmp").exists());
    drop(reopened);
    assert_eq!(
        FileIdStore::create(&dir, &record).unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
}
