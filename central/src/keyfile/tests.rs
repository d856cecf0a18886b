use std::os::unix::fs::PermissionsExt;

use super::*;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn key_round_trips_with_mode_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("unit.key");
    let key = generate_signing_key().expect("key");
    write_signing_key(&path, &key).expect("write");
    assert_eq!(mode(&path), 0o600);
    let text = fs::read_to_string(&path).expect("read");
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
    let back = read_signing_key(&path).expect("read key");
    assert_eq!(back.to_bytes(), key.to_bytes());
    // No temporary file is left behind.
    let names: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("unit.key")]);
}

#[test]
fn refuses_to_overwrite_a_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("unit.key");
    let first = generate_signing_key().expect("key");
    write_signing_key(&path, &first).expect("write");
    let second = generate_signing_key().expect("key");
    let err = write_signing_key(&path, &second).expect_err("must refuse");
    assert!(matches!(err, KeyFileError::Exists(_)), "{err:?}");
    assert_eq!(
        read_signing_key(&path).expect("read").to_bytes(),
        first.to_bytes()
    );
}

#[test]
fn refuses_a_key_readable_by_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("unit.key");
    write_signing_key(&path, &generate_signing_key().expect("key")).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = read_signing_key(&path).expect_err("must refuse");
    assert!(
        matches!(err, KeyFileError::InsecurePermissions { mode: 0o644, .. }),
        "{err:?}"
    );
}

#[test]
fn rejects_garbage_key_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("unit.key");
    write_atomic(&path, b"not a key", KEY_FILE_MODE, Overwrite::Refuse).expect("write");
    assert!(matches!(
        read_signing_key(&path),
        Err(KeyFileError::Decode { .. })
    ));
    let missing = dir.path().join("missing.key");
    assert!(matches!(
        read_signing_key(&missing),
        Err(KeyFileError::Io { .. })
    ));
}

#[test]
fn replace_swaps_content_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cert.pem");
    write_atomic(&path, b"one", PUBLIC_FILE_MODE, Overwrite::Replace).expect("write");
    write_atomic(&path, b"two", PUBLIC_FILE_MODE, Overwrite::Replace).expect("write");
    assert_eq!(fs::read(&path).expect("read"), b"two");
    assert!(matches!(
        write_atomic(&path, b"three", PUBLIC_FILE_MODE, Overwrite::Refuse),
        Err(KeyFileError::Exists(_))
    ));
}

#[test]
fn private_dirs_are_0700() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("a").join("b");
    create_private_dir(&nested).expect("create");
    assert_eq!(mode(&nested), 0o700);
    create_private_dir(&nested).expect("existing directory is fine");
}
