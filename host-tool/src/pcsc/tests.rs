use super::*;

#[test]
fn the_probe_is_an_extended_select_of_our_aid_with_le_0000() {
    let mut expected = vec![0x00, 0xA4, 0x04, 0x00, 0x00, 0x00, 0x09];
    expected.extend_from_slice(&proto::AID);
    expected.extend_from_slice(&[0x00, 0x00]);
    assert_eq!(select_extended(), expected);
}

#[test]
fn status_word_is_the_last_two_bytes() {
    assert_eq!(status_word(&[0x90, 0x00]), 0x9000);
    assert_eq!(status_word(&[0x01, 0x02, 0x6A, 0x82]), 0x6A82);
    assert_eq!(status_word(&[0x90]), 0);
    assert_eq!(status_word(&[]), 0);
}

#[test]
fn removal_reset_no_card_and_unavailable_reader_mean_disconnected() {
    for err in [
        pcsc::Error::RemovedCard,
        pcsc::Error::ResetCard,
        pcsc::Error::NoSmartcard,
        pcsc::Error::ReaderUnavailable,
        pcsc::Error::UnpoweredCard,
        pcsc::Error::UnknownReader,
    ] {
        assert!(card_gone(err), "{err:?}");
    }
    for err in [
        pcsc::Error::InvalidParameter,
        pcsc::Error::InsufficientBuffer,
        pcsc::Error::SharingViolation,
        pcsc::Error::NoService,
        pcsc::Error::Timeout,
        pcsc::Error::NotTransacted,
    ] {
        assert!(!card_gone(err), "{err:?}");
    }
}

#[test]
fn communication_errors_are_checked_against_the_card_state() {
    for err in [
        pcsc::Error::NotTransacted,
        pcsc::Error::CommError,
        pcsc::Error::CommDataLost,
        pcsc::Error::UnresponsiveCard,
    ] {
        assert!(maybe_gone(err), "{err:?}");
    }
    // A parameter the reader refuses is no sign of a removal.
    assert!(!maybe_gone(pcsc::Error::InvalidParameter));
    assert!(!maybe_gone(pcsc::Error::InsufficientBuffer));
}

#[test]
fn connect_errors_are_typed() {
    assert!(matches!(
        connect_error("R", pcsc::Error::NoSmartcard),
        HostError::NoCard(name) if name == "R"
    ));
    assert!(matches!(
        connect_error("R", pcsc::Error::SharingViolation),
        HostError::ReaderBusy(name) if name == "R"
    ));
    assert!(matches!(
        connect_error("R", pcsc::Error::UnresponsiveCard),
        HostError::CardMute(name) if name == "R"
    ));
    assert!(matches!(
        connect_error("R", pcsc::Error::NoService),
        HostError::PcscService(pcsc::Error::NoService)
    ));
    let err = connect_error("R", pcsc::Error::InvalidValue);
    assert!(matches!(
        &err,
        HostError::Pcsc { reader: Some(name), op: "connect to the card", source: pcsc::Error::InvalidValue }
            if name == "R"
    ));
    assert_eq!(
        chain(&err),
        format!(
            "reader \"R\": cannot connect to the card: {}",
            pcsc::Error::InvalidValue
        )
    );
}

#[test]
fn messages_name_the_reader_and_the_alternatives() {
    let err = HostError::UnknownReader {
        name: "Nope".to_owned(),
        available: vec![
            "Virtual PCD 00 00".to_owned(),
            "Virtual PCD 00 01".to_owned(),
        ],
    };
    assert_eq!(
        err.to_string(),
        "no PC/SC reader named \"Nope\" (readers: \"Virtual PCD 00 00\", \"Virtual PCD 00 01\")"
    );
    let none = HostError::UnknownReader {
        name: "Nope".to_owned(),
        available: Vec::new(),
    };
    assert_eq!(
        none.to_string(),
        "no PC/SC reader named \"Nope\" (readers: none)"
    );
    let context = HostError::Pcsc {
        reader: None,
        op: "list the readers",
        source: pcsc::Error::InternalError,
    };
    assert_eq!(context.to_string(), "PC/SC: cannot list the readers");
}

#[test]
fn a_reader_name_with_a_nul_byte_is_an_unknown_reader() {
    assert!(matches!(
        reader_cstring("bad\0name"),
        Err(HostError::UnknownReader { .. })
    ));
    assert!(reader_cstring("Virtual PCD 00 00").is_ok());
}

#[test]
fn length_modes_explain_themselves() {
    assert_eq!(LengthMode::Extended.to_string(), "extended length");
    assert_eq!(
        LengthMode::Short(ShortReason::Forced).to_string(),
        "short APDUs (forced)"
    );
    assert_eq!(
        LengthMode::Short(ShortReason::ProtocolT0).to_string(),
        "short APDUs (T=0)"
    );
    assert_eq!(
        LengthMode::Short(ShortReason::CardRefused).to_string(),
        "short APDUs (card refused extended length)"
    );
    assert!(
        LengthMode::Short(ShortReason::ReaderRefused(pcsc::Error::InvalidParameter))
            .to_string()
            .starts_with("short APDUs (reader refused extended length: ")
    );
}

#[test]
fn card_reports_read_as_one_line() {
    assert_eq!(CardReport::Absent.to_string(), "no card");
    assert_eq!(
        CardReport::Other { sw: 0x6A82 }.to_string(),
        "card present: other card (SELECT: 6A82)"
    );
    assert_eq!(
        CardReport::Module {
            serial: Some("0123456789abcdef".to_owned()),
            lifecycle: Lifecycle::Operating,
            version: 1,
            length: LengthMode::Extended,
        }
        .to_string(),
        "card present: Imprint module 0123456789abcdef, OPERATING (command set 1, extended length)"
    );
    assert_eq!(
        CardReport::Module {
            serial: None,
            lifecycle: Lifecycle::Manufactured,
            version: 1,
            length: LengthMode::Short(ShortReason::CardRefused),
        }
        .to_string(),
        "card present: Imprint module without serial, MANUFACTURED (command set 1, short APDUs (card refused extended length))"
    );
    assert_eq!(
        CardReport::InUse.to_string(),
        "card present: in use by another application"
    );
}

#[test]
fn connect_options_for_changing_and_reading() {
    let exclusive = ConnectOptions::exclusive();
    assert_eq!(exclusive.access, Access::Exclusive);
    assert_eq!(exclusive.on_close, OnClose::Reset);
    assert!(!exclusive.short_apdus);
    let shared = ConnectOptions::shared().short_apdus(true);
    assert_eq!(shared.access, Access::Shared);
    assert_eq!(shared.on_close, OnClose::Leave);
    assert!(shared.short_apdus);
}

#[test]
fn any_transport_passes_commands_and_length_support_through() {
    use imprint_apdu::Applet;
    use imprint_apdu::keymem::file::FileKeyMemory;

    let tmp = tempfile::tempdir().expect("tempdir");
    let memory = FileKeyMemory::open(tmp.path()).expect("key memory");
    let applet = Applet::new(memory).expect("applet");
    let mut transport = AnyTransport::File(InProcessTransport::new(applet).short_apdus_only());
    assert!(!transport.supports_extended_length());
    let mut link = CardLink::new(&mut transport);
    let response = link.send(SELECT_HEADER, &proto::AID).expect("select");
    assert_eq!(response.sw, sw::OK);
    let info = SelectInfo::parse(&response.data).expect("fci");
    assert_eq!(info.lifecycle, Lifecycle::Manufactured);
}

#[test]
fn reader_states_are_classified_by_presence_and_event_counter() {
    use crate::station::ReaderChange::{Inserted, Removed, Unavailable, Unchanged};
    let present = State::CHANGED | State::PRESENT;
    // A card at the first look, or after an empty reader: inserted.
    assert_eq!(classify(false, 0, present, 3), (Inserted, true));
    // Our own exclusive connection only changes flags: nothing happened.
    assert_eq!(
        classify(true, 3, present | State::EXCLUSIVE | State::INUSE, 3),
        (Unchanged, true)
    );
    // Removed and another inserted between two looks: the counter moved.
    assert_eq!(classify(true, 3, present, 5), (Inserted, true));
    assert_eq!(
        classify(true, 5, State::CHANGED | State::EMPTY, 6),
        (Removed, false)
    );
    assert_eq!(classify(false, 6, State::EMPTY, 6), (Unchanged, false));
    // A mute card is still a card: the station reports it.
    assert_eq!(
        classify(false, 6, present | State::MUTE, 7),
        (Inserted, true)
    );
    assert_eq!(
        classify(true, 7, State::CHANGED | State::UNAVAILABLE, 7),
        (Unavailable, false)
    );
    assert_eq!(classify(true, 7, State::UNKNOWN, 7), (Unavailable, false));
}
