use super::*;
use crate::keymem::memory::MemoryKeyMemory;
use crate::keymem::{self, PinRecord};
use alloc::vec;

fn applet() -> Applet<MemoryKeyMemory> {
    Applet::new(MemoryKeyMemory::new([3; 48])).unwrap()
}

fn select_apdu() -> Vec<u8> {
    let mut apdu = vec![0x00, ins::SELECT, 0x04, 0x00, proto::AID.len() as u8];
    apdu.extend_from_slice(&proto::AID);
    apdu.push(0x00);
    apdu
}

fn sw_of(response: &[u8]) -> u16 {
    u16::from_be_bytes([response[response.len() - 2], response[response.len() - 1]])
}

#[test]
fn select_reports_version_lifecycle_and_serial_once_known() {
    let mut applet = applet();
    let response = applet.process(&select_apdu());
    assert_eq!(sw_of(&response), sw::OK);
    let fci = tlv::decode_single(&response[..response.len() - 2], tag::FCI).unwrap();
    let [aid, proprietary] = tlv::decode_fields(fci, [tag::FCI_AID, tag::FCI_PROPRIETARY]).unwrap();
    assert_eq!(aid, Some(&proto::AID[..]));
    let [version, serial, lifecycle] = tlv::decode_fields(
        proprietary.unwrap(),
        [tag::FCI_VERSION, tag::FCI_SERIAL, tag::FCI_LIFECYCLE],
    )
    .unwrap();
    assert_eq!(version, Some(&[proto::COMMAND_SET_VERSION][..]));
    assert_eq!(serial, None, "no identity key yet");
    assert_eq!(lifecycle, Some(&[Lifecycle::Manufactured.code()][..]));

    let generated = applet.process(&[0x00, ins::GENERATE_KEY, 0x80, 0x01, 0x00]);
    assert_eq!(sw_of(&generated), sw::OK);
    let response = applet.process(&select_apdu());
    assert!(
        response.windows(2).any(|w| w == [0xC1, 0x08]),
        "serial present after the identity key exists"
    );
}

#[test]
fn short_le_splits_the_response_and_get_response_delivers_the_rest() {
    let mut applet = applet();
    applet.process(&select_apdu());
    let whole = applet.process(&[0x00, ins::GENERATE_KEY, 0x80, 0x01, 0x00]);
    assert_eq!(sw_of(&whole), sw::OK);
    let key = &whole[..whole.len() - 2];

    // Ask for the identity key template (102 bytes) 40 bytes at a time.
    let mut got = Vec::new();
    let mut response = applet.process(&[0x00, ins::GET_DATA, 0xDF, 0x26, 40]);
    loop {
        got.extend_from_slice(&response[..response.len() - 2]);
        let status = sw_of(&response);
        if status == sw::OK {
            break;
        }
        assert_eq!(status & 0xFF00, sw::MORE_DATA);
        response = applet.process(&[0x00, ins::GET_RESPONSE, 0x00, 0x00, 40]);
    }
    assert_eq!(got, key);
    // Nothing more is pending.
    assert_eq!(
        sw_of(&applet.process(&[0x00, ins::GET_RESPONSE, 0, 0, 0])),
        sw::CONDITIONS
    );
}

#[test]
fn any_other_command_discards_a_pending_response() {
    let mut applet = applet();
    applet.process(&select_apdu());
    applet.process(&[0x00, ins::GENERATE_KEY, 0x80, 0x01, 0x00]);
    let partial = applet.process(&[0x00, ins::GET_DATA, 0xDF, 0x26, 10]);
    assert_eq!(sw_of(&partial) & 0xFF00, sw::MORE_DATA);
    applet.process(&select_apdu());
    assert_eq!(
        sw_of(&applet.process(&[0x00, ins::GET_RESPONSE, 0, 0, 0])),
        sw::CONDITIONS
    );
}

#[test]
fn chained_commands_are_reassembled() {
    let mut applet = applet();
    applet.process(&select_apdu());
    // SELECT is not special for chaining: split the AID over two chained APDUs.
    let first = [0x10, ins::SELECT, 0x04, 0x00, 4, 0xF0, 0x49, 0x4D, 0x50];
    assert_eq!(applet.process(&first), [0x90, 0x00]);
    let mut last = vec![0x00, ins::SELECT, 0x04, 0x00, 5];
    last.extend_from_slice(&proto::AID[4..]);
    last.push(0);
    assert_eq!(sw_of(&applet.process(&last)), sw::OK);
}

#[test]
fn reset_drops_selection_and_volatile_state() {
    let mut applet = applet();
    applet.process(&select_apdu());
    assert_eq!(
        applet.process(&[0x10, ins::PUT_DATA, 0x3F, 0xFF, 1, 0]),
        [0x90, 0x00]
    );
    applet.reset();
    // Not selected any more; the half chain is gone too.
    assert_eq!(
        sw_of(&applet.process(&[0x00, ins::GET_DATA, 0xDF, 0x21, 0])),
        sw::CONDITIONS
    );
    applet.process(&select_apdu());
    assert_eq!(
        sw_of(&applet.process(&[0x00, ins::GET_DATA, 0xDF, 0x21, 0])),
        sw::DATA_NOT_FOUND
    );
}

#[test]
fn identity_key_is_formed_once() {
    let mut applet = applet();
    applet.process(&select_apdu());
    assert_eq!(
        sw_of(&applet.process(&[0x00, ins::GENERATE_KEY, 0x80, 0x01, 0x00])),
        sw::OK
    );
    assert_eq!(
        sw_of(&applet.process(&[0x00, ins::GENERATE_KEY, 0x80, 0x01, 0x00])),
        sw::CONDITIONS
    );
    // A power cycle does not change that.
    applet.reset();
    applet.process(&select_apdu());
    assert_eq!(
        sw_of(&applet.process(&[0x00, ins::GENERATE_KEY, 0x80, 0x01, 0x00])),
        sw::CONDITIONS
    );
}

/// An OPERATING applet built directly on its key memory (no certificates are
/// needed for VERIFY and COMPUTE DIGITAL SIGNATURE), optionally with `pin`.
fn operating(pin: Option<&[u8]>) -> (Applet<MemoryKeyMemory>, p384::ecdsa::VerifyingKey) {
    let mut memory = MemoryKeyMemory::new([4; 48]);
    let key = memory.generate(KeySlot::Module, b"v").unwrap();
    let records = Records {
        lifecycle: Lifecycle::Operating,
        pin: pin.map(|pin| PinRecord::new([6; keymem::PIN_SALT_LEN], pin)),
        ..Records::default()
    };
    memory.commit(&records).unwrap();
    let mut applet = Applet::new(memory).unwrap();
    assert_eq!(sw_of(&applet.process(&select_apdu())), sw::OK);
    (applet, p384::ecdsa::VerifyingKey::from(&key))
}

fn verify_apdu(pin: &[u8]) -> Vec<u8> {
    let mut apdu = vec![0x00, ins::VERIFY, 0x00, proto::PIN_REF_USER];
    if !pin.is_empty() {
        apdu.push(pin.len() as u8);
        apdu.extend_from_slice(pin);
    }
    apdu
}

fn sign_apdu(digest: &[u8]) -> Vec<u8> {
    let mut apdu = vec![0x00, ins::PSO, 0x9E, 0x9A, digest.len() as u8];
    apdu.extend_from_slice(digest);
    apdu.push(0x00);
    apdu
}

fn tries_left(applet: &Applet<MemoryKeyMemory>) -> u8 {
    applet.records().pin.as_ref().unwrap().tries_left
}

#[test]
fn verify_and_signing_need_the_operating_state() {
    let mut applet = applet();
    applet.process(&select_apdu());
    assert_eq!(
        sw_of(&applet.process(&verify_apdu(b"1234"))),
        sw::CONDITIONS
    );
    assert_eq!(sw_of(&applet.process(&sign_apdu(&[1; 48]))), sw::CONDITIONS);
    // Parameters are checked first.
    assert_eq!(
        sw_of(&applet.process(&[0x00, ins::VERIFY, 0x00, 0x80])),
        sw::WRONG_P1P2
    );
    assert_eq!(
        sw_of(&applet.process(&[0x00, ins::PSO, 0x9E, 0x9B, 1, 0])),
        sw::WRONG_P1P2
    );
}

#[test]
fn without_a_pin_verify_finds_nothing_and_signing_is_open() {
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    let (mut applet, public) = operating(None);
    assert_eq!(
        sw_of(&applet.process(&verify_apdu(b"1234"))),
        sw::DATA_NOT_FOUND
    );
    assert_eq!(
        sw_of(&applet.process(&verify_apdu(b""))),
        sw::DATA_NOT_FOUND
    );
    for len in [1usize, 20, 32, 48, 64] {
        let digest: Vec<u8> = (0..len).map(|i| (3 * i + 11) as u8).collect();
        let response = applet.process(&sign_apdu(&digest));
        assert_eq!(sw_of(&response), sw::OK, "{len}");
        assert_eq!(response.len(), 96 + 2);
        let signature = p384::ecdsa::Signature::from_slice(&response[..96]).unwrap();
        public.verify_prehash(&digest, &signature).unwrap();
    }
    for bad in [&[][..], &[0u8; 65][..]] {
        assert_eq!(
            sw_of(&applet.process(&sign_apdu(bad))),
            sw::WRONG_LENGTH,
            "{}",
            bad.len()
        );
    }
}

#[test]
fn verify_counts_down_resets_on_success_and_gates_signing() {
    let (mut applet, _) = operating(Some(b"2468"));
    assert_eq!(
        sw_of(&applet.process(&sign_apdu(&[1; 48]))),
        sw::SECURITY_STATUS
    );
    // Status query: not verified, 3 tries.
    assert_eq!(sw_of(&applet.process(&verify_apdu(b""))), 0x63C3);
    assert_eq!(sw_of(&applet.process(&verify_apdu(b"1357"))), 0x63C2);
    assert_eq!(tries_left(&applet), 2, "committed");
    assert_eq!(sw_of(&applet.process(&verify_apdu(b"24680"))), 0x63C1);
    assert_eq!(sw_of(&applet.process(&verify_apdu(b"2468"))), sw::OK);
    assert_eq!(tries_left(&applet), proto::PIN_TRY_LIMIT);
    assert!(applet.pin_verified());
    assert_eq!(sw_of(&applet.process(&verify_apdu(b""))), sw::OK);
    assert_eq!(sw_of(&applet.process(&sign_apdu(&[1; 48]))), sw::OK);
    // A failed VERIFY drops the verification.
    assert_eq!(sw_of(&applet.process(&verify_apdu(b"0000"))), 0x63C2);
    assert_eq!(
        sw_of(&applet.process(&sign_apdu(&[1; 48]))),
        sw::SECURITY_STATUS
    );
    assert_eq!(sw_of(&applet.process(&verify_apdu(b"2468"))), sw::OK);

    // Re-selecting the applet keeps it; reset, another AID or logout drop it.
    applet.process(&select_apdu());
    assert!(applet.pin_verified());
    applet.reset();
    applet.process(&select_apdu());
    assert_eq!(sw_of(&applet.process(&verify_apdu(b""))), 0x63C3);
    assert_eq!(sw_of(&applet.process(&verify_apdu(b"2468"))), sw::OK);
    let other_aid = [0x00, ins::SELECT, 0x04, 0x00, 5, 0xA0, 0, 0, 0, 1];
    assert_eq!(sw_of(&applet.process(&other_aid)), sw::NOT_FOUND);
    applet.process(&select_apdu());
    assert!(!applet.pin_verified());
    assert_eq!(sw_of(&applet.process(&verify_apdu(b"2468"))), sw::OK);
    let logout = [0x00, ins::VERIFY, 0xFF, proto::PIN_REF_USER];
    assert_eq!(sw_of(&applet.process(&logout)), sw::OK);
    assert!(!applet.pin_verified());
    assert_eq!(
        sw_of(&applet.process(&[0x00, ins::VERIFY, 0xFF, 0x81, 1, 0x31])),
        sw::WRONG_LENGTH
    );
}

#[test]
fn malformed_pin_lengths_are_refused_without_counting() {
    let (mut applet, _) = operating(Some(b"2468"));
    assert_eq!(sw_of(&applet.process(&verify_apdu(b"2468"))), sw::OK);
    for bad in [&b"246"[..], &[0x32; 17][..], &[0x32; 200][..]] {
        assert_eq!(
            sw_of(&applet.process(&verify_apdu(bad))),
            sw::WRONG_LENGTH,
            "{}",
            bad.len()
        );
        assert_eq!(tries_left(&applet), proto::PIN_TRY_LIMIT);
        assert!(applet.pin_verified(), "a refused length changes nothing");
    }
    // The longest PIN works; a PIN that equals a prefix does not.
    let (mut applet, _) = operating(Some(&[0x39; 16]));
    assert_eq!(sw_of(&applet.process(&verify_apdu(&[0x39; 15]))), 0x63C2);
    assert_eq!(sw_of(&applet.process(&verify_apdu(&[0x39; 16]))), sw::OK);
}

#[test]
fn three_wrong_pins_block_for_good() {
    let (mut applet, _) = operating(Some(b"2468"));
    for expected in [0x63C2, 0x63C1, 0x63C0] {
        assert_eq!(sw_of(&applet.process(&verify_apdu(b"9999"))), expected);
    }
    assert_eq!(tries_left(&applet), 0);
    assert_eq!(
        sw_of(&applet.process(&verify_apdu(b"2468"))),
        sw::PIN_BLOCKED
    );
    assert_eq!(sw_of(&applet.process(&verify_apdu(b""))), sw::PIN_BLOCKED);
    assert_eq!(
        sw_of(&applet.process(&sign_apdu(&[1; 48]))),
        sw::SECURITY_STATUS
    );
    applet.reset();
    applet.process(&select_apdu());
    assert_eq!(
        sw_of(&applet.process(&verify_apdu(b"2468"))),
        sw::PIN_BLOCKED
    );
    assert_eq!(tries_left(&applet), 0);
}

#[test]
fn signing_is_refused_inside_no_channel_and_verify_does_not_exist_secured() {
    let (mut applet, _) = operating(None);
    // Secured forms without a channel: 6982, like every secured command.
    assert_eq!(
        sw_of(&applet.process(&[0x0C, ins::PSO, 0x9E, 0x9A, 2, 0x85, 0x00, 0x00])),
        sw::SECURITY_STATUS
    );
    assert_eq!(
        sw_of(&applet.process(&[0x0C, ins::VERIFY, 0x00, 0x81, 2, 0x85, 0x00])),
        sw::SECURITY_STATUS
    );
}
