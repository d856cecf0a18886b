use super::*;

fn offer() -> DirectConnection {
    let mut ticket = [0u8; len::DIRECT_TICKET];
    for (i, byte) in ticket.iter_mut().enumerate() {
        *byte = i as u8;
    }
    DirectConnection {
        address: String::from("unit.example:7444"),
        ticket: Zeroizing::new(ticket),
    }
}

#[test]
fn an_offer_round_trips_byte_exact() {
    let offer = offer();
    let data = offer.encode();
    assert_eq!(&data[..2], &[0x80, 17]);
    assert_eq!(&data[2..19], b"unit.example:7444");
    assert_eq!(&data[19..21], &[0x81, 48]);
    assert_eq!(data.len(), 21 + 48);
    assert_eq!(DirectConnection::parse(&data).unwrap(), offer);
    assert_eq!(offer.ticket_id(), core::array::from_fn(|i| i as u8));
}

#[test]
fn malformed_offers_are_refused_precisely() {
    let good = offer().encode();
    let ticket_only = tlv::encode(tag::DIRECT_TICKET, &[0; 48]);
    assert_eq!(
        DirectConnection::parse(&ticket_only),
        Err(DirectOfferError::Tlv(TlvError::MissingTag(
            tag::DIRECT_ADDRESS
        )))
    );
    let mut short_ticket = tlv::encode(tag::DIRECT_ADDRESS, b"h:1");
    tlv::write(&mut short_ticket, tag::DIRECT_TICKET, &[0; 47]);
    assert_eq!(
        DirectConnection::parse(&short_ticket),
        Err(DirectOfferError::Tlv(TlvError::WrongLength(
            tag::DIRECT_TICKET
        )))
    );
    let mut empty_address = tlv::encode(tag::DIRECT_ADDRESS, b"");
    tlv::write(&mut empty_address, tag::DIRECT_TICKET, &[0; 48]);
    assert_eq!(
        DirectConnection::parse(&empty_address),
        Err(DirectOfferError::Address)
    );
    let mut not_utf8 = tlv::encode(tag::DIRECT_ADDRESS, &[0xFF, 0x3A, 0x31]);
    tlv::write(&mut not_utf8, tag::DIRECT_TICKET, &[0; 48]);
    assert_eq!(
        DirectConnection::parse(&not_utf8),
        Err(DirectOfferError::Address)
    );
    let mut long_address = tlv::encode(tag::DIRECT_ADDRESS, &[b'a'; 256]);
    tlv::write(&mut long_address, tag::DIRECT_TICKET, &[0; 48]);
    assert_eq!(
        DirectConnection::parse(&long_address),
        Err(DirectOfferError::Address)
    );
    let mut doubled = good.to_vec();
    doubled.extend_from_slice(&tlv::encode(tag::DIRECT_TICKET, &[0; 48]));
    assert_eq!(
        DirectConnection::parse(&doubled),
        Err(DirectOfferError::Tlv(TlvError::DuplicateTag(
            tag::DIRECT_TICKET
        )))
    );
    let mut extra = good.to_vec();
    extra.extend_from_slice(&[0x82, 0x00]);
    assert!(DirectConnection::parse(&extra).is_err());
    assert!(DirectConnection::parse(&good[..good.len() - 1]).is_err());
    assert!(DirectConnection::parse(&[]).is_err());
}

#[test]
fn the_ticket_is_not_printed() {
    let printed = alloc::format!("{:?}", offer());
    assert!(printed.contains("unit.example:7444"));
    assert!(!printed.contains("0, 1, 2"));
}
