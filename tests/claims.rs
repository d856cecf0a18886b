//! One end-to-end test per patent claim (`cargo test claim`): the
//! personalization unit's flow against the applet in-process, on file key
//! memories. The same bodies (`support/claims.rs`) run through pcscd in
//! `host-tool/tests/pcsc_claims.rs`. Claim 12 (the field station and its
//! journal transfer) needs the host tool's journal and runs in
//! `host-tool/tests/field_station.rs`, in-process and through pcscd.

use imprint_apdu::applet::Applet;
use imprint_apdu::host::{CardLink, InProcessTransport, PersonalizationOptions, personalize};
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_tests::claims::*;
use imprint_tests::*;

#[test]
fn claim01_module_key_generated_certified_and_module_operating() {
    claim01(&mut InProcessHarness::default());
}

#[test]
fn claim02_reentering_personalization_erases_the_module_key() {
    claim02(&mut InProcessHarness::default());
}

#[test]
fn claim03_channel_is_authenticated_and_protected_against_corruption() {
    claim03(&mut InProcessHarness::default());
}

#[test]
fn claim04_central_key_is_delivered_with_the_module_certificate() {
    claim04(&mut InProcessHarness::default());
}

#[test]
fn claim05_central_key_certificate_must_be_signed_by_the_unit() {
    claim05(&mut InProcessHarness::default());
}

#[test]
fn claim06_unit_certificate_must_be_signed_by_the_central_system() {
    claim06(&mut InProcessHarness::default());
}

#[test]
fn claim07_unit_is_checked_with_the_manufacturer_checking_key_first() {
    claim07(&mut InProcessHarness::default());
}

#[test]
fn claim08_identity_key_is_formed_once_certified_and_authenticates_the_module() {
    claim08(&mut InProcessHarness::default());
}

#[test]
fn claim09_module_nonce_is_signed_into_the_module_certificate() {
    claim09(&mut InProcessHarness::default());
}

#[test]
fn claim10_variation_value_enters_module_key_generation() {
    claim10(&mut InProcessHarness::default());
}

/// Claim 10, the part only a seeded key memory can show: with the module's
/// randomness held fixed, the variation value alone changes the key.
#[test]
fn claim10_same_module_randomness_different_variation_gives_different_keys() {
    let pki = Pki::new();
    let seed = random_seed();
    let mut keys = Vec::new();
    for variation in [b"variation A".to_vec(), b"variation B".to_vec()] {
        let applet = Applet::new(MemoryKeyMemory::new(seed)).unwrap();
        let mut link = CardLink::new(InProcessTransport::new(applet));
        manufacture_with(&mut link, &pki.manufacturer);
        let options = PersonalizationOptions {
            variation,
            ..PersonalizationOptions::default()
        };
        let report = personalize(
            &mut link,
            &mut RecordingJournal::default(),
            &pki.unit,
            options,
        )
        .unwrap();
        keys.push(report.certificate.public_key_sec1());
    }
    assert_ne!(keys[0], keys[1]);
}

#[test]
fn claim13_tan_entered_at_the_module_protects_the_personalization() {
    claim13(&mut InProcessHarness::default());
}

#[test]
fn claim16_identification_unit_vouches_for_the_personalization() {
    claim16(&mut InProcessHarness::default());
}

#[test]
fn claim17_identification_value_is_a_one_off_number_produced_beforehand() {
    claim17(&mut InProcessHarness::default());
}

#[test]
fn claim18_identification_value_travels_over_an_authenticated_connection() {
    claim18(&mut InProcessHarness::default());
}

#[test]
fn claim19_security_module_keeps_private_keys_in_its_key_memory() {
    claim19(&mut InProcessHarness::default());
}

#[test]
fn claim20_personalization_unit_journals_before_sending() {
    claim20(&mut InProcessHarness::default());
}
