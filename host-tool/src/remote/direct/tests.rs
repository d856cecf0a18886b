use std::net::{TcpListener, TcpStream};

use super::*;

/// A connected pair of loopback sockets (the module's end, the unit's end).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

fn wire(offer: &DirectConnection) -> DirectTicket {
    DirectTicket(*offer.ticket)
}

#[test]
fn a_ticket_is_redeemed_once_and_delivers_the_connection() {
    let tickets = DirectTickets::default();
    let issued = tickets.issue("127.0.0.1:1").expect("issue");
    assert_eq!(issued.offer.address, "127.0.0.1:1");
    assert_eq!(tickets.waiting(), 1);
    let (_module, unit_end) = pair();
    let peer = unit_end.peer_addr().expect("peer");
    tickets
        .redeem(&wire(&issued.offer), unit_end)
        .expect("redeem");
    let delivered = issued.wait(Duration::from_secs(1)).expect("delivered");
    assert_eq!(delivered.peer_addr().expect("peer"), peer);
    assert_eq!(tickets.waiting(), 0, "used up");
    let (_again, unit_end) = pair();
    assert_eq!(
        tickets.redeem(&wire(&issued.offer), unit_end),
        Err(TicketRefusal::Unknown),
        "a replayed ticket"
    );
}

#[test]
fn a_wrong_secret_is_refused_without_cancelling_the_run() {
    let tickets = DirectTickets::default();
    let issued = tickets.issue("127.0.0.1:1").expect("issue");
    let mut forged = *issued.offer.ticket;
    forged[len::DIRECT_TICKET - 1] ^= 1;
    let (_module, unit_end) = pair();
    assert_eq!(
        tickets.redeem(&DirectTicket(forged), unit_end),
        Err(TicketRefusal::Unknown)
    );
    assert_eq!(tickets.waiting(), 1, "the right module can still connect");
    let (_module, unit_end) = pair();
    tickets
        .redeem(&wire(&issued.offer), unit_end)
        .expect("the real ticket");
}

#[test]
fn a_run_that_stops_waiting_withdraws_its_ticket_and_keeps_a_late_arrival() {
    let tickets = DirectTickets::default();
    // Nothing arrives: the wait ends, and the ticket with it.
    let issued = tickets.issue("h:1").expect("issue");
    let offer = issued.offer.clone();
    assert!(issued.wait(Duration::from_millis(10)).is_none());
    assert_eq!(tickets.waiting(), 0, "withdrawn when the run stops waiting");
    let (_module, unit_end) = pair();
    assert_eq!(
        tickets.redeem(&wire(&offer), unit_end),
        Err(TicketRefusal::Unknown)
    );

    // Dropped without waiting: withdrawn too.
    let dropped = tickets.issue("h:1").expect("issue");
    let offer = dropped.offer.clone();
    drop(dropped);
    assert_eq!(tickets.waiting(), 0);
    let (_module, unit_end) = pair();
    assert_eq!(
        tickets.redeem(&wire(&offer), unit_end),
        Err(TicketRefusal::Unknown)
    );

    // Unknown altogether.
    let (_module, unit_end) = pair();
    assert_eq!(
        tickets.redeem(&DirectTicket([7; len::DIRECT_TICKET]), unit_end),
        Err(TicketRefusal::Unknown)
    );
}

#[test]
fn tickets_are_fresh() {
    let tickets = DirectTickets::default();
    let first = tickets.issue("h:1").expect("issue");
    let second = tickets.issue("h:1").expect("issue");
    assert_ne!(*first.offer.ticket, *second.offer.ticket);
    assert_eq!(tickets.waiting(), 2);
}

#[test]
fn direct_addresses_are_checked_before_any_run() {
    for good in ["127.0.0.1:7444", "unit.example:1", "[::1]:65535"] {
        assert!(check_direct_address(good).is_ok(), "{good}");
    }
    let long = format!("{}:1", "a".repeat(254));
    for bad in [
        "",
        "host",
        "host:",
        ":7444",
        "host:0",
        "host:65536",
        "host:x",
        &long,
    ] {
        assert!(
            matches!(
                check_direct_address(bad),
                Err(RemoteError::BadDirectAddress(_))
            ),
            "{bad}"
        );
    }
}
