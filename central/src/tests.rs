use std::os::unix::fs::PermissionsExt;

use imprint_apdu::pki::issue::CertificateRequest;

use super::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_then_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("central");
    let created = CentralAuthority::init(&dir, "Test central", 10).expect("init");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    assert_eq!(created.cert.role(), Role::Central);
    assert_eq!(display::subject(&created.cert), "CN=Test central");
    let opened = CentralAuthority::open(&dir).expect("open");
    assert_eq!(opened.cert.der(), created.cert.der());
    assert_eq!(opened.public_key(), created.public_key());
    assert!(matches!(opened.key, CentralKey::File(_)));
}

#[test]
fn init_refuses_an_existing_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = CentralAuthority::init(tmp.path(), "Test central", 10).expect("init");
    let err = CentralAuthority::init(tmp.path(), "Other", 10).expect_err("must refuse");
    assert!(
        matches!(err, CentralError::AlreadyInitialized(_)),
        "{err:?}"
    );
    let opened = CentralAuthority::open(tmp.path()).expect("open");
    assert_eq!(opened.cert.der(), first.cert.der());
}

#[test]
fn open_detects_a_foreign_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    CentralAuthority::init(&a, "A", 10).expect("init a");
    CentralAuthority::init(&b, "B", 10).expect("init b");
    std::fs::copy(b.join(CERT_FILE), a.join(CERT_FILE)).expect("copy");
    let err = CentralAuthority::open(&a).expect_err("mismatch");
    assert!(matches!(err, CentralError::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn open_rejects_a_non_root_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let central = CentralAuthority::init(tmp.path(), "C", 10).expect("init");
    let unit_key = keyfile::generate_signing_key().expect("key");
    let csr = CertificateRequest::new("Unit", &unit_key).expect("csr");
    let unit_cert = central.certify_personalizer(&csr, 2).expect("certify");
    std::fs::write(
        tmp.path().join(CERT_FILE),
        issue::to_pem(&unit_cert).expect("pem"),
    )
    .expect("write");
    let err = CentralAuthority::open(tmp.path()).expect_err("not a root");
    assert!(
        matches!(err, CentralError::NotCentralRoot { .. }),
        "{err:?}"
    );
}

#[test]
fn certifies_a_personalizer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let central = CentralAuthority::init(tmp.path(), "C", 10).expect("init");
    let unit_key = keyfile::generate_signing_key().expect("key");
    let csr = CertificateRequest::new("Station 7", &unit_key).expect("csr");
    let cert = central.certify_personalizer(&csr, 3).expect("certify");
    assert_eq!(cert.role(), Role::Personalizer);
    assert_eq!(display::subject(&cert), "CN=Station 7");
    pki::verify_issued_by(&cert, &central.cert, 0).expect("chains to the root");
    assert!(cert.not_after_unix() <= central.cert.not_after_unix());
    // Longer than the root: clamped to it.
    let long = central.certify_personalizer(&csr, 50).expect("certify");
    assert_eq!(long.not_after_unix(), central.cert.not_after_unix());
}
