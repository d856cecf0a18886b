use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn a_relay_key_is_created_private_and_read_back_from_its_directory_or_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("relay");
    let public = init_relay(&dir).expect("init");
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(RELAY_KEY), 0o600);
    assert_eq!(mode(RELAY_PUBLIC_KEY), 0o644);
    let from_dir = load_relay_key(&dir).expect("from the directory");
    let from_file = load_relay_key(&dir.join(RELAY_KEY)).expect("from the file");
    assert_eq!(from_dir.verifying_key(), &public);
    assert_eq!(from_file.verifying_key(), &public);
    let read = read_relay_public_key(&dir.join(RELAY_PUBLIC_KEY)).expect("public key");
    assert_eq!(VerifyingKey::from(read), public);
    assert_eq!(
        key_fingerprint(&public),
        relay_fingerprint(public.to_sec1_point(false).as_bytes())
    );
    // A second init keeps the first key.
    assert!(matches!(
        init_relay(&dir),
        Err(RemoteError::KeyFile(KeyFileError::Exists(_)))
    ));
    assert_eq!(load_relay_key(&dir).expect("kept").verifying_key(), &public);
}

#[test]
fn a_file_that_is_not_a_public_key_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("relay.pub.pem");
    std::fs::write(
        &path,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .expect("write");
    assert!(matches!(
        read_relay_public_key(&path),
        Err(RemoteError::BadPublicKey(_))
    ));
}

#[test]
fn refusals_of_the_relay_are_sent_as_refused_and_bad_frames_as_malformed() {
    assert_eq!(
        RemoteError::UnregisteredRelay("ab".into()).code(),
        ErrorCode::Refused
    );
    assert_eq!(RemoteError::RelaySignature.code(), ErrorCode::Refused);
    assert_eq!(RemoteError::InvalidRelayKey.code(), ErrorCode::Refused);
    assert_eq!(RemoteError::SerialMismatch.code(), ErrorCode::Refused);
    assert_eq!(RemoteError::WrongPurpose.code(), ErrorCode::Malformed);
    assert_eq!(
        RemoteError::Wire(WireError::Io(io::ErrorKind::TimedOut.into())).code(),
        ErrorCode::Timeout
    );
    assert_eq!(
        RemoteError::Personalize(PersonalizeError::ChannelClosed("PUT DATA")).code(),
        ErrorCode::ModuleError
    );
}
