use super::*;
use crate::keymem::memory::MemoryKeyMemory;
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
