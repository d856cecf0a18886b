//! The strict BER-TLV decoder: `read_one`, `decode_single`, `decode_fields`,
//! and the direct-connection offer built on it (claim 15).
//!
//! Besides "never panics", checks the property that makes the decoder strict:
//! every accepted data object re-encodes to exactly the bytes it was read from.

#![no_main]

use imprint_apdu::direct::DirectConnection;
use imprint_apdu::proto::tag;
use imprint_apdu::tlv;
use libfuzzer_sys::fuzz_target;

/// The field sets the applet and the host decode, as `decode_fields` sees them.
const HANDSHAKE: [u32; 6] = [
    tag::AUTH_CERTIFICATE,
    tag::AUTH_EPHEMERAL,
    tag::AUTH_CHALLENGE,
    tag::AUTH_NONCE,
    tag::AUTH_SIGNATURE,
    tag::AUTH_CONFIRMATION,
];
const BUNDLE: [u32; 3] = [tag::MODULE_CERT, tag::UNIT_CERT, tag::CENTRAL_CERT];
const GENERATED: [u32; 2] = [tag::PUBLIC_KEY, tag::SIGNATURE];

fuzz_target!(|data: &[u8]| {
    // read_one: a canonical object, so re-encoding gives back the consumed prefix.
    if let Ok((object, rest)) = tlv::read_one(data) {
        let encoded = tlv::encode(object.tag, object.value);
        let consumed = data.len() - rest.len();
        assert_eq!(
            encoded,
            data[..consumed],
            "accepted a non-canonical encoding"
        );
    }

    // decode_single agrees with read_one and insists on one object.
    if let Ok(value) = tlv::decode_single(data, tag::DYN_AUTH) {
        let (object, rest) =
            tlv::read_one(data).expect("decode_single accepted what read_one rejects");
        assert_eq!(object.tag, tag::DYN_AUTH);
        assert_eq!(object.value, value);
        assert!(rest.is_empty());
    }

    check_fields(data, HANDSHAKE);
    check_fields(data, BUNDLE);
    check_fields(data, GENERATED);

    // An accepted offer re-encodes to an offer that parses to the same thing.
    if let Ok(offer) = DirectConnection::parse(data) {
        let again = DirectConnection::parse(&offer.encode()).expect("re-encoded offer");
        assert_eq!(again, offer);
    }
});

/// Whatever `decode_fields` accepts is a set of distinct, known tags that
/// decodes to the same fields when written back in `tags` order.
fn check_fields<const N: usize>(data: &[u8], tags: [u32; N]) {
    let Ok(fields) = tlv::decode_fields(data, tags) else {
        return;
    };
    let mut rewritten = Vec::with_capacity(data.len());
    for (tag, value) in tags.iter().zip(fields) {
        if let Some(value) = value {
            tlv::write(&mut rewritten, *tag, value);
        }
    }
    assert_eq!(
        rewritten.len(),
        data.len(),
        "fields do not account for every input byte"
    );
    let again = tlv::decode_fields(&rewritten, tags).expect("re-encoded fields do not decode");
    assert_eq!(again, fields);
}
