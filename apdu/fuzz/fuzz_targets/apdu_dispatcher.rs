//! The applet's whole command path (parse, chaining, GET RESPONSE, secure
//! messaging, dispatch, lifecycle gate) on arbitrary APDU sequences.
//!
//! Input layout:
//!
//! ```text
//!  byte 0      bits 0-6 mod 3: start state (0 blank, 1 manufactured, 2 personalized)
//!              bit 7: SELECT the applet before the first fuzzed APDU
//!  then        repeated [len: u16 big-endian][len bytes of APDU]
//!              (len is cut to what is left; len = FFFF is a card reset instead)
//! ```
//!
//! The manufactured and personalized states come from the real host flows
//! (`host::manufacture`, `host::personalize`) run once at start-up against a
//! RAM key memory with a fixed seed. Each input then gets a fresh key memory
//! with the same seed: regenerating the identity key (the first thing the seed
//! is used for) gives the same identity key as in the flows, and the committed
//! records of the flows are loaded as they were. The module-key slot stays
//! empty in the personalized state, so COMPUTE DIGITAL SIGNATURE gets past
//! its lifecycle and PIN gates and then answers `6581` (no key); every other
//! command in OPERATING only erases or replaces that key.
//!
//! Every command must get a response of at least a status word.

#![no_main]

use std::sync::OnceLock;

use imprint_apdu::Applet;
use imprint_apdu::channel::encode_point;
use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::host::{
    CardLink, InProcessTransport, IssuanceJournal, IssuedCertificate, JournalError,
    ManufacturerCredentials, PersonalizationOptions, UnitCredentials, personalize,
};
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_apdu::keymem::{KeyMemory, KeySlot, Records};
use imprint_apdu::pki::Role;
use imprint_apdu::pki::issue::{self, CertificateRequest, IssuerKey, Validity};
use imprint_apdu::proto::{self, Lifecycle};
use libfuzzer_sys::fuzz_target;
use p384::ecdsa::SigningKey;

/// The seed of every module's key memory.
const SEED: [u8; 48] = [0x5E; 48];

/// 2025-01-01 and 2060-01-01 (UTC): roots span this; everything below nests inside.
const NOT_BEFORE: u64 = 1_735_689_600;
const NOT_AFTER: u64 = 2_840_140_800;

/// A length prefix with this value resets the card instead of sending an APDU.
const RESET: usize = 0xFFFF;

/// The committed records of each reachable start state.
struct Snapshots {
    manufactured: Records,
    personalized: Records,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut applet = fresh_applet(mode & 0x7F);
    if mode & 0x80 != 0 {
        let mut select = vec![0x00, proto::ins::SELECT, 0x04, 0x00, proto::AID.len() as u8];
        select.extend_from_slice(&proto::AID);
        select.push(0x00);
        let response = applet.process(&select);
        assert!(
            response.ends_with(&[0x90, 0x00]),
            "SELECT of a fresh applet fails: {response:02X?}"
        );
    }
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if len == RESET {
            applet.reset();
            rest = tail;
            continue;
        }
        let (apdu, next) = tail.split_at(len.min(tail.len()));
        rest = next;
        let response = applet.process(apdu);
        assert!(
            response.len() >= 2,
            "response without a status word to {apdu:02X?}"
        );
    }
});

fn fresh_applet(mode: u8) -> Applet<MemoryKeyMemory> {
    let mut memory = MemoryKeyMemory::new(SEED);
    let records = match mode % 3 {
        0 => None,
        1 => Some(&snapshots().manufactured),
        _ => Some(&snapshots().personalized),
    };
    if let Some(records) = records {
        memory
            .generate(KeySlot::Identity, &[])
            .expect("identity key");
        memory.commit(records).expect("commit records");
    }
    Applet::new(memory).expect("applet")
}

fn snapshots() -> &'static Snapshots {
    static SNAPSHOTS: OnceLock<Snapshots> = OnceLock::new();
    SNAPSHOTS.get_or_init(run_host_flows)
}

/// Manufactures and personalizes one module with the real host flows and keeps
/// the records committed after each.
fn run_host_flows() -> Snapshots {
    let (manufacturer, unit) = deployment();
    let applet = Applet::new(MemoryKeyMemory::new(SEED)).expect("applet");
    let mut link = CardLink::new(InProcessTransport::new(applet));

    manufacture(&mut link, &manufacturer, 20).expect("manufacture");
    let manufactured = link.transport_mut().applet().records().clone();
    assert_eq!(manufactured.lifecycle, Lifecycle::Personalization);

    personalize(
        &mut link,
        &mut NoJournal,
        &unit,
        PersonalizationOptions::default(),
    )
    .expect("personalize");
    let personalized = link.transport_mut().applet().records().clone();
    assert_eq!(personalized.lifecycle, Lifecycle::Operating);

    let identity = link
        .transport_mut()
        .applet_mut()
        .memory_mut()
        .public_key(KeySlot::Identity)
        .expect("identity key")
        .expect("identity key present");
    let identity_point = encode_point(&identity);

    // The reconstruction in `fresh_applet` must give the same identity key,
    // or the records would certify a key the module does not hold.
    let regenerated = MemoryKeyMemory::new(SEED)
        .generate(KeySlot::Identity, &[])
        .expect("identity key");
    assert_eq!(
        encode_point(&regenerated),
        identity_point,
        "identity key not reproducible from the seed"
    );

    Snapshots {
        manufactured,
        personalized,
    }
}

/// A manufacturer and a personalization unit certified by it and by a central
/// system, from fixed keys and validity periods.
fn deployment() -> (ManufacturerCredentials, UnitCredentials) {
    let roots = Validity::new(NOT_BEFORE, NOT_AFTER).expect("validity");
    let inner = Validity::new(NOT_BEFORE + 1, NOT_AFTER - 1).expect("validity");

    let manufacturer_key = fixed_key(0x11);
    let manufacturer_root = issue::self_signed_root(
        Role::Manufacturer,
        "Fuzz Manufacturer",
        &manufacturer_key,
        roots,
    )
    .expect("manufacturer root");
    let central_key = fixed_key(0x22);
    let central_root = issue::self_signed_root(Role::Central, "Fuzz Central", &central_key, roots)
        .expect("central root");

    let unit_key = fixed_key(0x33);
    let request = CertificateRequest::new("Fuzz Unit", &unit_key).expect("request");
    let cert_by_manufacturer = issue::personalizer_cert(
        IssuerKey {
            cert: &manufacturer_root,
            key: &manufacturer_key,
        },
        &request,
        inner,
    )
    .expect("unit certificate by manufacturer");
    let cert_by_central = issue::personalizer_cert(
        IssuerKey {
            cert: &central_root,
            key: &central_key,
        },
        &request,
        inner,
    )
    .expect("unit certificate by central");
    let central_delivery = issue::central_delivery_cert(
        IssuerKey {
            cert: &cert_by_manufacturer,
            key: &unit_key,
        },
        &central_root,
        inner,
    )
    .expect("central delivery certificate");

    let unit = UnitCredentials {
        key: unit_key,
        cert_by_manufacturer,
        cert_by_central,
        central_delivery,
        manufacturer_root: manufacturer_root.clone(),
    };
    let manufacturer = ManufacturerCredentials {
        key: manufacturer_key,
        root: manufacturer_root,
    };
    (manufacturer, unit)
}

fn fixed_key(byte: u8) -> SigningKey {
    SigningKey::from_slice(&[byte; 48]).expect("fixed key is a valid scalar")
}

/// The flows need a journal; nothing here has to be kept.
struct NoJournal;

impl IssuanceJournal for NoJournal {
    fn record_issued(&mut self, _: &IssuedCertificate) -> Result<i64, JournalError> {
        Ok(1)
    }
    fn mark_installed(&mut self, _: i64) -> Result<(), JournalError> {
        Ok(())
    }
    fn mark_failed(&mut self, _: i64, _: &str) -> Result<(), JournalError> {
        Ok(())
    }
}
