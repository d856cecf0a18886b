//! `keymem::Records::decode`: what a key memory reads back at power-up.
//!
//! Anything accepted must survive an encode/decode round trip unchanged.

#![no_main]

use imprint_apdu::keymem::Records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = Records::decode(data) {
        let encoded = records.encode();
        assert_eq!(
            Records::decode(&encoded).as_ref(),
            Ok(&records),
            "records do not round-trip"
        );
        // Fields may come in any order, but never with extra or missing bytes.
        assert_eq!(encoded.len(), data.len());
    }
});
