//! Property-style test: random and mutated APDUs fed to the applet in every
//! lifecycle state (and with a channel open) never panic, always get a status
//! word, and never change what is committed (with a user PIN set, only its
//! retry counter may move).

use imprint_apdu::applet::Applet;
use imprint_apdu::host::personalize::OpenChannel;
use imprint_apdu::host::{CardLink, InProcessTransport, Transport};
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_apdu::proto::AID;
use imprint_tests::*;

/// xorshift64*: reproducible, and good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn random_apdu(rng: &mut Rng, seen: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(4) {
        // Pure noise.
        0 => (0..rng.below(300)).map(|_| rng.byte()).collect(),
        // A recorded real APDU with a few bytes changed, truncated or extended.
        1 if !seen.is_empty() => {
            let mut apdu = seen[rng.below(seen.len())].clone();
            for _ in 0..=rng.below(3) {
                if apdu.is_empty() {
                    break;
                }
                let at = rng.below(apdu.len());
                apdu[at] ^= rng.byte() | 1;
            }
            match rng.below(3) {
                0 => apdu.truncate(rng.below(apdu.len() + 1)),
                1 => apdu.push(rng.byte()),
                _ => {}
            }
            apdu
        }
        // A structurally valid APDU with our instructions and random content.
        _ => {
            let cla = rng.pick(&[0x00, 0x0C, 0x10, 0x1C, 0x80, 0x01, 0xFF]);
            let ins = rng.pick(&[
                0xA4, 0xCA, 0xDB, 0x47, 0x82, 0xE6, 0xC0, 0x20, 0x2A, 0x84, 0x00,
            ]);
            let any = rng.byte();
            let p1 = rng.pick(&[0x00, 0x01, 0x04, 0x80, 0xDF, 0x3F, 0x9E, 0xFF, any]);
            let any = rng.byte();
            let p2 = rng.pick(&[0x00, 0x01, 0x02, 0x21, 0x23, 0xFF, 0x81, 0x9A, any]);
            let len = rng.below(260);
            let data: Vec<u8> = if rng.below(2) == 0 {
                // TLV-looking data.
                let tag = rng.pick(&[0x7C, 0x80, 0xDF, 0x85, 0xA0]);
                let mut d = vec![tag, (len.min(0x7F)) as u8];
                d.extend((0..len.min(0x7F)).map(|_| rng.byte()));
                d
            } else {
                (0..len).map(|_| rng.byte()).collect()
            };
            let mut apdu = vec![cla, ins, p1, p2];
            if data.len() > 255 || rng.below(3) == 0 {
                apdu.push(0);
                apdu.extend_from_slice(&(data.len() as u16).to_be_bytes());
                apdu.extend_from_slice(&data);
                apdu.extend_from_slice(&[0, 0]);
            } else if !data.is_empty() {
                apdu.push(data.len() as u8);
                apdu.extend_from_slice(&data);
                apdu.push(0);
            } else {
                apdu.push(0);
            }
            apdu
        }
    }
}

fn hammer(
    link: &mut CardLink<LoggingTransport<InProcessTransport<MemoryKeyMemory>>>,
    seed: u64,
    rounds: usize,
    frozen: bool,
) {
    let seen: Vec<Vec<u8>> = link
        .transport_mut()
        .log
        .iter()
        .map(|(command, _)| command.clone())
        .collect();
    let before = link.transport_mut().inner.applet().records().clone();
    let mut rng = Rng(seed);
    for round in 0..rounds {
        let apdu = random_apdu(&mut rng, &seen);
        let response = link.transport_mut().inner.transmit(&apdu).unwrap();
        assert!(response.len() >= 2, "round {round}: {apdu:02X?}");
        if rng.below(50) == 0 {
            // Re-select now and then so later commands reach the deeper handlers.
            link.transport_mut()
                .inner
                .transmit(&[
                    0, 0xA4, 4, 0, 9, AID[0], AID[1], AID[2], AID[3], AID[4], AID[5], AID[6],
                    AID[7], AID[8],
                ])
                .unwrap();
        }
    }
    let after = link.transport_mut().inner.applet().records().clone();
    if frozen {
        assert_eq!(after, before, "random input changed committed state");
    } else if before.pin.is_some() {
        // Wrong PINs may count down; everything else stays.
        let mut expected = before.clone();
        expected.pin.clone_from(&after.pin);
        assert_eq!(
            after, expected,
            "random input changed more than the PIN counter"
        );
        let (was, is) = (before.pin.unwrap(), after.pin.unwrap());
        assert!(is.tries_left <= was.tries_left);
        assert_eq!((is.salt, is.verifier), (was.salt, was.verifier));
    }
}

fn fresh() -> CardLink<LoggingTransport<InProcessTransport<MemoryKeyMemory>>> {
    let applet = Applet::new(MemoryKeyMemory::new(random_seed())).unwrap();
    CardLink::new(LoggingTransport::new(InProcessTransport::new(applet)))
}

#[test]
fn random_apdus_in_every_state_never_panic_or_change_committed_state() {
    let pki = Pki::new();
    const ROUNDS: usize = 4000;

    // Blank: random input may legitimately form the identity key, so only "no panic".
    let mut link = fresh();
    hammer(&mut link, 1, ROUNDS, false);

    // PERSONALIZATION, no channel.
    let mut link = fresh();
    manufacture_with(&mut link, &pki.manufacturer);
    hammer(&mut link, 2, ROUNDS, true);

    // PERSONALIZATION, channel open (random input cannot forge secure messaging).
    let mut link = fresh();
    manufacture_with(&mut link, &pki.manufacturer);
    let _channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    hammer(&mut link, 3, ROUNDS, true);

    // OPERATING, after a full personalization (recorded APDUs feed the mutations).
    let mut link = fresh();
    manufacture_with(&mut link, &pki.manufacturer);
    imprint_apdu::host::personalize(
        &mut link,
        &mut RecordingJournal::default(),
        &pki.unit,
        imprint_apdu::host::PersonalizationOptions::default(),
    )
    .unwrap();
    hammer(&mut link, 4, ROUNDS, true);

    // OPERATING with a channel open.
    let _channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    hammer(&mut link, 5, ROUNDS, true);

    // OPERATING with a user PIN: random VERIFYs may use up tries, nothing else.
    let mut link = fresh();
    manufacture_with(&mut link, &pki.manufacturer);
    personalized_with_pin(&mut link, &pki.unit, b"2468").unwrap();
    hammer(&mut link, 6, ROUNDS, false);
}
