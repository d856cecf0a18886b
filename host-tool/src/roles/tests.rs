use std::os::unix::fs::PermissionsExt;

use imprint_central::CentralAuthority;

use super::*;

struct Setup {
    _tmp: tempfile::TempDir,
    unit_dir: PathBuf,
    manufacturer: Manufacturer,
    central: CentralAuthority,
    csr: CertificateRequest,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manufacturer =
        Manufacturer::init(&tmp.path().join("m"), "Test manufacturer", 20).expect("manufacturer");
    let central =
        CentralAuthority::init(&tmp.path().join("c"), "Test central", 20).expect("central");
    let unit_dir = tmp.path().join("p");
    let csr = Personalizer::init(&unit_dir, "Test unit").expect("unit");
    Setup {
        _tmp: tmp,
        unit_dir,
        manufacturer,
        central,
        csr,
    }
}

fn refused<T>(result: Result<T, HostError>) -> HostError {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(err) => err,
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn install_then_open() {
    let s = setup();
    assert_eq!(mode(&s.unit_dir), 0o700);
    assert_eq!(mode(&s.unit_dir.join(PERSONALIZER_KEY)), 0o600);
    assert_eq!(
        Personalizer::csr(&s.unit_dir).expect("csr").to_der(),
        s.csr.to_der()
    );
    let by_m = s
        .manufacturer
        .certify_personalizer(&s.csr, 10)
        .expect("by m");
    let by_c = s.central.certify_personalizer(&s.csr, 5).expect("by c");
    let installed = Personalizer::install(
        &s.unit_dir,
        s.manufacturer.root(),
        &by_m,
        &s.central.cert,
        &by_c,
        10,
    )
    .expect("install");
    assert_eq!(installed.central_delivery.role(), Role::CentralDelivery);
    assert_eq!(
        installed.central_delivery.public_key_sec1(),
        s.central.cert.public_key_sec1()
    );
    for name in [
        MANUFACTURER_CERT,
        BY_MANUFACTURER,
        BY_CENTRAL,
        CENTRAL_DELIVERY,
    ] {
        assert!(s.unit_dir.join(name).is_file(), "{name}");
    }
    let unit = Personalizer::open(&s.unit_dir).expect("open");
    assert_eq!(unit.cert_by_central.der(), by_c.der());
    assert_eq!(
        unit.central_delivery.der(),
        installed.central_delivery.der()
    );
    assert_eq!(unit.manufacturer_root.der(), s.manufacturer.root().der());
}

#[test]
fn install_refuses_a_by_central_cert_from_another_central_root() {
    let s = setup();
    let other_dir = s.unit_dir.with_file_name("other-central");
    let other = CentralAuthority::init(&other_dir, "Test central", 20).expect("other central");
    let by_m = s
        .manufacturer
        .certify_personalizer(&s.csr, 10)
        .expect("by m");
    let by_other = other.certify_personalizer(&s.csr, 5).expect("by other");
    let err = refused(Personalizer::install(
        &s.unit_dir,
        s.manufacturer.root(),
        &by_m,
        &s.central.cert,
        &by_other,
        10,
    ));
    match &err {
        HostError::Chain { what, .. } => assert!(what.contains("central system"), "{err}"),
        other => panic!("expected a chain error, got {other:?}"),
    }
    assert!(!s.unit_dir.join(CENTRAL_DELIVERY).exists());
    assert!(Personalizer::open(&s.unit_dir).is_err());
}

#[test]
fn install_refuses_a_by_manufacturer_cert_from_another_manufacturer() {
    let s = setup();
    let other =
        Manufacturer::init(&s.unit_dir.with_file_name("m2"), "Test manufacturer", 20).expect("m2");
    let by_other = other.certify_personalizer(&s.csr, 10).expect("by other");
    let by_c = s.central.certify_personalizer(&s.csr, 5).expect("by c");
    let err = refused(Personalizer::install(
        &s.unit_dir,
        s.manufacturer.root(),
        &by_other,
        &s.central.cert,
        &by_c,
        10,
    ));
    assert!(matches!(err, HostError::Chain { .. }), "{err:?}");
}

#[test]
fn install_refuses_certificates_for_another_unit() {
    let s = setup();
    let stranger_dir = s.unit_dir.with_file_name("stranger");
    let stranger = Personalizer::init(&stranger_dir, "Test unit").expect("stranger");
    let by_m = s
        .manufacturer
        .certify_personalizer(&s.csr, 10)
        .expect("by m");
    let by_c = s.central.certify_personalizer(&stranger, 5).expect("by c");
    let err = refused(Personalizer::install(
        &s.unit_dir,
        s.manufacturer.root(),
        &by_m,
        &s.central.cert,
        &by_c,
        10,
    ));
    assert!(matches!(err, HostError::NotForThisUnit(_)), "{err:?}");
}

#[test]
fn install_refuses_different_subjects() {
    let s = setup();
    let key = keyfile::read_signing_key(&s.unit_dir.join(PERSONALIZER_KEY)).expect("key");
    let renamed = CertificateRequest::new("Another name", &key).expect("csr");
    let by_m = s
        .manufacturer
        .certify_personalizer(&s.csr, 10)
        .expect("by m");
    let by_c = s.central.certify_personalizer(&renamed, 5).expect("by c");
    let err = refused(Personalizer::install(
        &s.unit_dir,
        s.manufacturer.root(),
        &by_m,
        &s.central.cert,
        &by_c,
        10,
    ));
    assert!(matches!(err, HostError::SubjectMismatch { .. }), "{err:?}");
}

#[test]
fn install_accepts_central_and_manufacturer_certificates_in_any_order() {
    // The central system may certify the unit first and for longer than the
    // manufacturer did: modules require no nesting below the delivery certificate.
    let s = setup();
    let by_c = s.central.certify_personalizer(&s.csr, 15).expect("by c");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let by_m = s
        .manufacturer
        .certify_personalizer(&s.csr, 2)
        .expect("by m");
    Personalizer::install(
        &s.unit_dir,
        s.manufacturer.root(),
        &by_m,
        &s.central.cert,
        &by_c,
        10,
    )
    .expect("install");
    Personalizer::open(&s.unit_dir).expect("open");
}

#[test]
fn init_refuses_to_overwrite_keys() {
    let s = setup();
    assert!(matches!(
        Personalizer::init(&s.unit_dir, "Again"),
        Err(HostError::AlreadyInitialized(_))
    ));
    let m_dir = s.unit_dir.with_file_name("m");
    assert!(matches!(
        Manufacturer::init(&m_dir, "Again", 20),
        Err(HostError::AlreadyInitialized(_))
    ));
    let reopened = Manufacturer::open(&m_dir).expect("open");
    assert_eq!(reopened.root().der(), s.manufacturer.root().der());
}

#[test]
fn open_before_install_names_the_missing_file() {
    let s = setup();
    let err = refused(Personalizer::open(&s.unit_dir));
    let text = err.to_string();
    assert!(text.contains(BY_MANUFACTURER), "{text}");
}
