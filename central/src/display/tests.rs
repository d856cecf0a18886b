use super::*;

#[test]
fn hex_round_trips() {
    let bytes = [0x00, 0x01, 0xab, 0xff];
    assert_eq!(hex(&bytes), "0001abff");
    assert_eq!(parse_hex("0001ABff").as_deref(), Some(&bytes[..]));
    assert_eq!(parse_hex("00:01:ab:ff").as_deref(), Some(&bytes[..]));
}

#[test]
fn parse_hex_rejects_bad_input() {
    assert_eq!(parse_hex("abc"), None);
    assert_eq!(parse_hex("zz"), None);
    assert_eq!(parse_hex("0x12"), None);
    assert_eq!(parse_hex("").as_deref(), Some(&[][..]));
}

#[test]
fn utc_formats_known_instants() {
    assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
}
