use super::*;
use alloc::vec;

#[test]
fn round_trips_every_length_form() {
    for len in [0usize, 1, 0x7F, 0x80, 0xFF, 0x100, 0x1234] {
        for tag in [0x80u32, 0x7F49, 0xDF21, 0x5F_8101] {
            let value = vec![0xA5; len];
            let encoded = encode(tag, &value);
            let (tlv, rest) = read_one(&encoded).unwrap();
            assert_eq!(tlv.tag, tag);
            assert_eq!(tlv.value, &value[..]);
            assert!(rest.is_empty());
        }
    }
}

#[test]
fn rejects_non_canonical_encodings() {
    assert_eq!(read_one(&[0x80, 0x80]), Err(TlvError::IndefiniteLength));
    assert_eq!(
        read_one(&[0x80, 0x81, 0x05]),
        Err(TlvError::NonMinimalLength)
    );
    assert_eq!(
        read_one(&[0x80, 0x82, 0x00, 0x10]),
        Err(TlvError::NonMinimalLength)
    );
    assert_eq!(
        read_one(&[0x80, 0x83, 0, 0, 1]),
        Err(TlvError::LengthTooLarge)
    );
    assert_eq!(read_one(&[0x1F, 0x05, 0x00]), Err(TlvError::InvalidTag));
    assert_eq!(
        read_one(&[0x1F, 0x80, 0x21, 0x00]),
        Err(TlvError::InvalidTag)
    );
    assert_eq!(
        read_one(&[0x5F, 0x81, 0x81, 0x01, 0x00]),
        Err(TlvError::InvalidTag)
    );
    assert_eq!(read_one(&[0x00, 0x00]), Err(TlvError::InvalidTag));
    assert_eq!(read_one(&[0x80, 0x03, 0x01]), Err(TlvError::Truncated));
    assert_eq!(read_one(&[0x7F]), Err(TlvError::Truncated));
    assert_eq!(read_one(&[]), Err(TlvError::Truncated));
}

#[test]
fn decode_fields_rejects_unknown_and_repeated_tags() {
    let mut data = encode(0x80, &[1]);
    data.extend(encode(0x81, &[2, 3]));
    let [a, b, c] = decode_fields(&data, [0x80, 0x81, 0x82]).unwrap();
    assert_eq!((a, b, c), (Some(&[1u8][..]), Some(&[2u8, 3][..]), None));
    assert_eq!(required(c, 0x82), Err(TlvError::MissingTag(0x82)));
    assert_eq!(
        required_array::<3>(b, 0x81),
        Err(TlvError::WrongLength(0x81))
    );

    data.extend(encode(0x80, &[4]));
    assert_eq!(
        decode_fields(&data, [0x80, 0x81]),
        Err(TlvError::DuplicateTag(0x80))
    );
    assert_eq!(
        decode_fields(&data, [0x81]),
        Err(TlvError::UnexpectedTag(0x80))
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 12) as usize;
        let bytes: Vec<u8> = (0..len).map(|i| (state >> (i * 5)) as u8).collect();
        let _ = decode_fields(&bytes, [0x80, 0x7F49, 0xDF21]);
        let _ = decode_single(&bytes, 0x7C);
    }
}
