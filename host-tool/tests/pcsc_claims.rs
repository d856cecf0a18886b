//! The claim tests (`imprint_tests::claims`) through the real PC/SC stack:
//! the personalization unit in this process, `imprint-card` as the card in a
//! vpcd reader of the machine's `pcscd`. Same bodies as the in-process suite
//! (`tests/claims.rs`), so the applet and the protocol cannot fork.
//!
//! A `_short_apdus` variant forces short APDUs, so certificate chains cross
//! pcscd by command chaining and GET RESPONSE instead of extended length.

use imprint_tests::claims;

mod common;
use common::*;

over_pcscd! {
    claim01_module_key_generated_certified_and_module_operating_over_pcscd => claims::claim01,
    claim02_reentering_personalization_erases_the_module_key_over_pcscd => claims::claim02,
    claim03_channel_is_authenticated_and_protected_against_corruption_over_pcscd => claims::claim03,
    claim04_central_key_is_delivered_with_the_module_certificate_over_pcscd => claims::claim04,
    claim05_central_key_certificate_must_be_signed_by_the_unit_over_pcscd => claims::claim05,
    claim06_unit_certificate_must_be_signed_by_the_central_system_over_pcscd => claims::claim06,
    claim07_unit_is_checked_with_the_manufacturer_checking_key_first_over_pcscd => claims::claim07,
    claim08_identity_key_is_formed_once_certified_and_authenticates_the_module_over_pcscd => claims::claim08,
    claim09_module_nonce_is_signed_into_the_module_certificate_over_pcscd => claims::claim09,
    claim10_variation_value_enters_module_key_generation_over_pcscd => claims::claim10,
    claim13_tan_entered_at_the_module_protects_the_personalization_over_pcscd => claims::claim13,
    claim16_identification_unit_vouches_for_the_personalization_over_pcscd => claims::claim16,
    claim17_identification_value_is_a_one_off_number_produced_beforehand_over_pcscd => claims::claim17,
    claim18_identification_value_travels_over_an_authenticated_connection_over_pcscd => claims::claim18,
    claim19_security_module_keeps_private_keys_in_its_key_memory_over_pcscd => claims::claim19,
    claim20_personalization_unit_journals_before_sending_over_pcscd => claims::claim20,
}

#[test]
fn claim01_certificate_chains_cross_pcscd_in_short_apdus() {
    let Some(mut harness) = PcscHarness::new(true) else {
        return;
    };
    claims::claim01(&mut harness);
}

#[test]
fn claim02_repersonalization_in_short_apdus() {
    let Some(mut harness) = PcscHarness::new(true) else {
        return;
    };
    claims::claim02(&mut harness);
}
