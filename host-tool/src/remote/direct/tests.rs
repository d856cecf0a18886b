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
    let issued = tickets
        .issue("127.0.0.1:1", Duration::from_secs(30))
        .expect("issue");
    assert_eq!(issued.offer.address, "127.0.0.1:1");
    assert_eq!(tickets.waiting(), 1);
    let (_module, unit_end) = pair();
    let peer = unit_end.peer_addr().expect("peer");
    tickets
        .redeem(&wire(&issued.offer), unit_end)
        .expect("redeem");
    let delivered = issued.arrival.try_recv().expect("delivered");
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
    let issued = tickets
        .issue("127.0.0.1:1", Duration::from_secs(30))
        .expect("issue");
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
fn expired_unknown_and_withdrawn_tickets_are_refused() {
    let tickets = DirectTickets::default();
    let expired = tickets.issue("h:1", Duration::ZERO).expect("issue");
    std::thread::sleep(Duration::from_millis(5));
    let (_module, unit_end) = pair();
    assert_eq!(
        tickets.redeem(&wire(&expired.offer), unit_end),
        Err(TicketRefusal::Unknown)
    );
    assert_eq!(tickets.waiting(), 0, "an expired ticket is gone once tried");

    let (_module, unit_end) = pair();
    assert_eq!(
        tickets.redeem(&DirectTicket([7; len::DIRECT_TICKET]), unit_end),
        Err(TicketRefusal::Unknown)
    );

    let withdrawn = tickets
        .issue("h:1", Duration::from_secs(30))
        .expect("issue");
    let offer = withdrawn.offer.clone();
    drop(withdrawn);
    assert_eq!(
        tickets.waiting(),
        0,
        "dropping the run's ticket withdraws it"
    );
    let (_module, unit_end) = pair();
    assert_eq!(
        tickets.redeem(&wire(&offer), unit_end),
        Err(TicketRefusal::Unknown)
    );
}

#[test]
fn tickets_are_fresh() {
    let tickets = DirectTickets::default();
    let first = tickets
        .issue("h:1", Duration::from_secs(30))
        .expect("issue");
    let second = tickets
        .issue("h:1", Duration::from_secs(30))
        .expect("issue");
    assert_ne!(*first.offer.ticket, *second.offer.ticket);
    assert_eq!(tickets.waiting(), 2);
}
