//! `pki::Certificate::from_der` under the strict profile, and when a
//! certificate parses, `verify_issued_by` against a fixed manufacturer root
//! (and the root checks that apply to a self-issued certificate).

#![no_main]

use std::sync::OnceLock;

use imprint_apdu::pki::issue::{self, Validity};
use imprint_apdu::pki::{self, Certificate, Role};
use libfuzzer_sys::fuzz_target;
use p384::ecdsa::SigningKey;

fuzz_target!(|data: &[u8]| {
    let Ok(cert) = Certificate::from_der(data) else {
        return;
    };
    // Strict DER: what parsed is exactly the input, and parses again the same.
    assert_eq!(cert.der(), data);
    assert_eq!(Certificate::from_der(cert.der()).as_ref(), Ok(&cert));

    let root = root();
    let _ = pki::verify_issued_by(&cert, root, 0);
    if cert.role().is_root() {
        let _ = pki::verify_self_signed_root(&cert, cert.role());
        let _ = cert.is_self_signed();
    }
    let _ = pki::check_not_expired(&cert, root.not_before_unix());
    if let Some(nonce) = cert.nonce() {
        assert_eq!(cert.role(), Role::ModuleKey);
        assert!(pki::check_nonce(&cert, &nonce).is_ok());
    }
    if cert.role().is_module() {
        assert!(cert.module_serial().is_some_and(pki::is_serial_hex));
    }
});

/// A manufacturer root from a fixed key and validity, built once.
fn root() -> &'static Certificate {
    static ROOT: OnceLock<Certificate> = OnceLock::new();
    ROOT.get_or_init(|| {
        let key = SigningKey::from_slice(&[0x11; 48]).expect("fixed key is a valid scalar");
        // 2025-01-01 to 2060-01-01 (UTC).
        let validity = Validity::new(1_735_689_600, 2_840_140_800).expect("validity");
        issue::self_signed_root(Role::Manufacturer, "Fuzz Manufacturer", &key, validity)
            .expect("root")
    })
}
