use super::*;

#[test]
fn status_of_a_missing_module_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nothing");
    assert!(matches!(status(&dir), Err(HostError::NoModule(_))));
    assert!(!dir.exists());
}

#[test]
fn a_blank_module_is_manufactured_state_without_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("blank");
    open(&dir, true).expect("create");
    let status = status(&dir).expect("status");
    assert_eq!(status.info.lifecycle, Lifecycle::Manufactured);
    assert!(status.serial.is_none());
    assert!(matches!(
        operating_chain(&status),
        Err(HostError::Lifecycle {
            expected: Lifecycle::Operating,
            found: Lifecycle::Manufactured,
            ..
        })
    ));
    assert!(loose_files(&dir).expect("list").is_empty());
}
