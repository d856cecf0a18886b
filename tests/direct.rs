//! Claim 15 at the flow level: the unit offers a direct connection inside
//! the channel, the module holds it for its runtime, and the run moves onto
//! the direct path after the handshake. The network side (the unit's
//! service, the relay, the module runtime dialing out) is tested in
//! `host-tool/tests/relay.rs`; here the two paths are two ends of one
//! in-process transport, so every byte on each is visible.

use imprint_apdu::Lifecycle;
use imprint_apdu::direct::DirectConnection;
use imprint_apdu::host::personalize::{DirectOutcome, OpenChannel};
use imprint_apdu::host::{
    CardLink, InProcessTransport, PersonalizationOptions, PersonalizeError, Transport,
    TransportError, personalize,
};
use imprint_apdu::iso::sw;
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_apdu::proto::{ins, len, tag};
use imprint_apdu::tlv;
use imprint_tests::*;
use zeroize::Zeroizing;

fn offer() -> DirectConnection {
    let mut ticket = [0u8; len::DIRECT_TICKET];
    getrandom::fill(&mut ticket).expect("random ticket");
    DirectConnection {
        address: "127.0.0.1:7444".into(),
        ticket: Zeroizing::new(ticket),
    }
}

fn options(direct: DirectConnection) -> PersonalizationOptions {
    PersonalizationOptions {
        direct: Some(direct),
        ..PersonalizationOptions::default()
    }
}

/// The relay path until the switch, the module's direct path after it:
/// one applet, two logs. The switch takes the offer out of the applet, as
/// the module's runtime does before it dials.
struct TwoPaths {
    module: InProcessTransport<MemoryKeyMemory>,
    relayed: Vec<Vec<u8>>,
    direct: Vec<Vec<u8>>,
    taken: Option<DirectConnection>,
}

impl TwoPaths {
    fn new(module: InProcessTransport<MemoryKeyMemory>) -> Self {
        Self {
            module,
            relayed: Vec::new(),
            direct: Vec::new(),
            taken: None,
        }
    }
}

impl Transport for TwoPaths {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let path = if self.taken.is_some() {
            &mut self.direct
        } else {
            &mut self.relayed
        };
        path.push(command.to_vec());
        self.module.transmit(command)
    }

    fn switch_to_direct(&mut self) -> Result<(), TransportError> {
        let offer = self
            .module
            .applet_mut()
            .take_direct_connection()
            .ok_or(TransportError::Disconnected)?;
        self.taken = Some(offer);
        Ok(())
    }
}

fn manufactured_module(pki: &Pki, capable: bool) -> InProcessTransport<MemoryKeyMemory> {
    let mut link = ram_module();
    manufactured(&mut link, pki);
    let mut module = link.into_transport();
    module.applet_mut().set_direct_capable(capable);
    module
}

fn instructions(path: &[Vec<u8>]) -> Vec<(u8, u8, u8)> {
    path.iter()
        .map(|apdu| (apdu[1], apdu[2], apdu[3]))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn the_offer_travels_sealed_and_the_run_finishes_on_the_direct_path() {
    let pki = Pki::new();
    let offer = offer();
    let mut link = CardLink::new(TwoPaths::new(manufactured_module(&pki, true)));
    let mut journal = RecordingJournal::default();
    let report = personalize(&mut link, &mut journal, &pki.unit, options(offer.clone()))
        .expect("personalization");
    assert_eq!(report.direct, DirectOutcome::Switched);
    assert_eq!(report.commands, 6, "the offer adds one command");

    let paths = link.into_transport();
    assert_eq!(
        paths.taken.as_ref(),
        Some(&offer),
        "the module got the offer"
    );
    // The relay carried the handshake and the sealed offer, nothing more.
    assert_eq!(
        instructions(&paths.relayed),
        vec![
            (ins::SELECT, 0x04, 0x00),
            (ins::AUTHENTICATE, 0x01, 0x00),
            (ins::AUTHENTICATE, 0x01, 0x01),
            (ins::PUT_DATA_OBJECT, 0xDF, 0x2B),
        ]
    );
    assert_eq!(
        paths.relayed[3][0], 0x0C,
        "the offer is under secure messaging"
    );
    for apdu in &paths.relayed {
        assert!(
            !contains(apdu, &offer.ticket[len::DIRECT_TICKET_ID..]),
            "the ticket's secret never crosses the relay in clear"
        );
        assert!(!contains(apdu, offer.address.as_bytes()));
    }
    // What changes the module went over the direct path.
    assert_eq!(
        instructions(&paths.direct),
        vec![(ins::GENERATE_KEY, 0x80, 0x02), (ins::PUT_DATA, 0x3F, 0xFF)]
    );
    assert_eq!(paths.module.applet().lifecycle(), Lifecycle::Operating);
    assert_eq!(journal.entries.len(), 1);
}

#[test]
fn a_module_without_a_network_declines_and_the_run_stays_where_it_started() {
    let pki = Pki::new();
    let mut link = CardLink::new(TwoPaths::new(manufactured_module(&pki, false)));
    let mut journal = RecordingJournal::default();
    let report =
        personalize(&mut link, &mut journal, &pki.unit, options(offer())).expect("personalization");
    assert_eq!(report.direct, DirectOutcome::Declined);
    let paths = link.into_transport();
    assert!(paths.direct.is_empty());
    assert_eq!(paths.relayed.len(), 6, "5 commands and the declined offer");
    assert_eq!(paths.module.applet().lifecycle(), Lifecycle::Operating);
}

#[test]
fn a_unit_path_that_cannot_switch_fails_before_anything_changes() {
    let pki = Pki::new();
    let mut link = CardLink::new(manufactured_module(&pki, true));
    let mut journal = RecordingJournal::default();
    let err = personalize(&mut link, &mut journal, &pki.unit, options(offer()))
        .expect_err("a transport without a direct path");
    assert!(
        matches!(
            err,
            PersonalizeError::Transport(TransportError::DirectUnsupported)
        ),
        "{err}"
    );
    assert_untouched(link.transport_mut().applet_mut(), &journal);
}

#[test]
fn the_applet_takes_an_offer_only_sealed_well_formed_and_once_per_channel() {
    let pki = Pki::new();
    let mut link = CardLink::new(manufactured_module(&pki, true));
    let header = [0x0C, ins::PUT_DATA_OBJECT, 0xDF, 0x2B];
    let offer = offer();

    // In clear, over the local interface: not an offer at all.
    let plain = link
        .send([0x00, ins::PUT_DATA_OBJECT, 0xDF, 0x2B], &offer.encode())
        .unwrap();
    assert_eq!(plain.sw, sw::WRONG_P1P2);
    assert!(
        link.transport_mut()
            .applet_mut()
            .take_direct_connection()
            .is_none()
    );

    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    let malformed = tlv::encode(tag::DIRECT_TICKET, &[0; 48]);
    assert_eq!(
        channel.send(&mut link, header, &malformed).unwrap().1,
        sw::WRONG_DATA
    );
    assert_eq!(
        channel.send(&mut link, header, &offer.encode()).unwrap().1,
        sw::OK
    );
    assert_eq!(
        channel.send(&mut link, header, &offer.encode()).unwrap().1,
        sw::CONDITIONS,
        "a second offer in the same channel"
    );
    assert_eq!(
        link.transport_mut().applet_mut().take_direct_connection(),
        Some(offer.clone())
    );
    assert!(
        link.transport_mut()
            .applet_mut()
            .take_direct_connection()
            .is_none(),
        "taken once"
    );

    // A new channel may carry a new offer; a reset forgets one not yet taken.
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    assert_eq!(
        channel.send(&mut link, header, &offer.encode()).unwrap().1,
        sw::OK
    );
    link.transport_mut().applet_mut().reset();
    assert!(
        link.transport_mut()
            .applet_mut()
            .take_direct_connection()
            .is_none()
    );
}

#[test]
fn an_operating_module_is_re_personalized_over_the_direct_path() {
    let pki = Pki::new();
    let mut module = operating_ram_module(&pki).into_transport();
    module.applet_mut().set_direct_capable(true);
    let mut link = CardLink::new(TwoPaths::new(module));
    let report = personalize(
        &mut link,
        &mut RecordingJournal::default(),
        &pki.unit,
        options(offer()),
    )
    .expect("re-personalization");
    assert_eq!(report.direct, DirectOutcome::Switched);
    let paths = link.into_transport();
    assert_eq!(
        instructions(&paths.direct),
        vec![
            (ins::TERMINATE, 0x00, 0x00),
            (ins::GENERATE_KEY, 0x80, 0x02),
            (ins::PUT_DATA, 0x3F, 0xFF)
        ],
        "TERMINATE, too, waits for the direct path"
    );
}
