use super::*;
use crate::channel::{tan_proof, tan_verifier};

const SALT: [u8; 32] = [7; 32];
const TH: [u8; 48] = [3; 48];

fn row(id: i64, tan: &[u8], serial: Option<&str>) -> TanRow {
    TanRow {
        id,
        verifier: *tan_verifier(&SALT, tan),
        serial: serial.map(str::to_string),
        expires: 2_000,
        used: false,
        failures: 0,
    }
}

fn proof(tan: &[u8], th: &[u8; 48]) -> [u8; 48] {
    tan_proof(&tan_verifier(&SALT, tan), th).unwrap()
}

#[test]
fn the_right_tan_is_accepted() {
    let rows = [
        row(1, b"1111111111", None),
        row(2, b"2222222222", Some("aa")),
    ];
    let got = judge(&rows, 0, "aa", &TH, &proof(b"2222222222", &TH), 1_000);
    assert_eq!(got, Judgement::Accepted(2));
}

#[test]
fn a_wrong_tan_counts_on_the_serial_and_its_bound_tans() {
    let rows = [
        row(1, b"1111111111", None),
        row(2, b"2222222222", Some("aa")),
        row(3, b"3333333333", Some("bb")),
    ];
    let got = judge(&rows, 0, "aa", &TH, &proof(b"9999999999", &TH), 1_000);
    assert_eq!(
        got,
        Judgement::Refused {
            refusal: TanRefusal::Wrong,
            count_on: vec![2],
            count_serial: true
        }
    );
}

#[test]
fn used_expired_foreign_locked_and_replayed_are_refused() {
    let mut used = row(1, b"1111111111", None);
    used.used = true;
    let mut expired = row(2, b"2222222222", None);
    expired.expires = 500;
    let foreign = row(3, b"3333333333", Some("bb"));
    let mut locked = row(4, b"4444444444", Some("aa"));
    locked.failures = TAN_FAILURE_LIMIT;
    let open = row(5, b"5555555555", None);
    let rows = [used, expired, foreign, locked, open];
    let refusal =
        |tan: &[u8], th: &[u8; 48]| match judge(&rows, 0, "aa", &TH, &proof(tan, th), 1_000) {
            Judgement::Refused { refusal, .. } => refusal,
            other => panic!("accepted: {other:?}"),
        };
    assert_eq!(refusal(b"1111111111", &TH), TanRefusal::Used(1));
    assert_eq!(refusal(b"2222222222", &TH), TanRefusal::Expired(2));
    assert!(matches!(
        refusal(b"3333333333", &TH),
        TanRefusal::OtherModule { id: 3, .. }
    ));
    assert_eq!(refusal(b"4444444444", &TH), TanRefusal::Locked(4));
    // A proof made for another transcript is no proof here.
    assert_eq!(refusal(b"5555555555", &[4; 48]), TanRefusal::Wrong);
}

#[test]
fn a_locked_serial_is_refused_even_with_the_right_tan() {
    let rows = [row(1, b"1111111111", None)];
    let got = judge(
        &rows,
        SERIAL_FAILURE_LIMIT,
        "aa",
        &TH,
        &proof(b"1111111111", &TH),
        1_000,
    );
    assert!(matches!(
        got,
        Judgement::Refused {
            refusal: TanRefusal::SerialLocked(_),
            count_serial: false,
            ..
        }
    ));
}

#[test]
fn pin_pad_statuses_name_the_reader_s_outcome_and_fall_back_to_the_card_s() {
    assert!(pin_pad_status_meaning(0x6400).contains("timed out"));
    assert!(pin_pad_status_meaning(0x6401).contains("cancelled"));
    assert!(pin_pad_status_meaning(0x6403).contains("wrong number of digits"));
    assert!(pin_pad_status_meaning(0x6B80).contains("parameters"));
    // Anything else is the card's answer to the VERIFY.
    assert_eq!(
        pin_pad_status_meaning(0x6985),
        crate::host::status_meaning(0x6985)
    );
}

#[test]
fn a_tan_of_the_pad_s_length_is_one_the_module_accepts() {
    assert!(tan_length_ok(&[b'0'; TAN_DIGITS as usize]));
}
