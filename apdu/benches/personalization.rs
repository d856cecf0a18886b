//! What a whole personalization costs, against its baselines measured in the
//! same run (DESIGN §7): one raw APDU round trip and the channel handshake
//! alone. Everything runs in process over a RAM key memory, so the numbers are
//! the cryptography and the protocol logic of both sides, without a reader.
//!
//! ```text
//!  in_process/apdu_round_trip_select   SELECT bytes ─▶ Applet::process ─▶ FCI
//!  in_process/channel_handshake        SELECT, MUTUAL AUTHENTICATE, EXTERNAL AUTHENTICATE
//!  in_process/personalization          the whole flow on a freshly manufactured module
//! ```

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use imprint_apdu::Applet;
use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::host::personalize::Action;
use imprint_apdu::host::{
    CardLink, InProcessTransport, IssuanceJournal, IssuedCertificate, JournalError,
    ManufacturerCredentials, Personalization, PersonalizationOptions, Transport, UnitCredentials,
    personalize,
};
use imprint_apdu::iso::Response;
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_apdu::pki::issue::{self, CertificateRequest, IssuerKey, Validity};
use imprint_apdu::pki::{Certificate, Role};
use imprint_apdu::proto::{self, Lifecycle, ins};
use p384::ecdsa::SigningKey;

type Link = CardLink<InProcessTransport<MemoryKeyMemory>>;

/// A manufacturer and one personalization unit, certified as in a deployment.
struct Deployment {
    manufacturer: ManufacturerCredentials,
    unit: UnitCredentials,
}

impl Deployment {
    fn new() -> Self {
        let manufacturer_key = random_key();
        let manufacturer_root = root(
            Role::Manufacturer,
            "Bench Manufacturer",
            &manufacturer_key,
            30,
        );
        let central_key = random_key();
        let central_root = root(Role::Central, "Bench Central", &central_key, 20);

        let unit_key = random_key();
        let request = CertificateRequest::new("Bench Unit", &unit_key).expect("request");
        let years = Validity::years_from_now(10).expect("validity");
        let by = |cert: &Certificate, key: &SigningKey| {
            issue::personalizer_cert(IssuerKey { cert, key }, &request, years)
                .expect("unit certificate")
        };
        let cert_by_manufacturer = by(&manufacturer_root, &manufacturer_key);
        let cert_by_central = by(&central_root, &central_key);
        let central_delivery = issue::central_delivery_cert(
            IssuerKey {
                cert: &cert_by_manufacturer,
                key: &unit_key,
            },
            &central_root,
            years,
        )
        .expect("central delivery certificate");
        Self {
            unit: UnitCredentials {
                key: unit_key,
                cert_by_manufacturer,
                cert_by_central,
                central_delivery,
                manufacturer_root: manufacturer_root.clone(),
            },
            manufacturer: ManufacturerCredentials {
                key: manufacturer_key,
                root: manufacturer_root,
            },
        }
    }

    /// A new module, manufactured (state PERSONALIZATION).
    fn manufactured_module(&self) -> Link {
        let mut seed = [0u8; 48];
        getrandom::fill(&mut seed).expect("OS random");
        let applet = Applet::new(MemoryKeyMemory::new(seed)).expect("applet");
        let mut link = CardLink::new(InProcessTransport::new(applet));
        manufacture(&mut link, &self.manufacturer, 25).expect("manufacture");
        link
    }
}

fn random_key() -> SigningKey {
    let mut bytes = [0u8; 48];
    loop {
        getrandom::fill(&mut bytes).expect("OS random");
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return key;
        }
    }
}

fn root(role: Role, name: &str, key: &SigningKey, years: u32) -> Certificate {
    issue::self_signed_root(
        role,
        name,
        key,
        Validity::years_from_now(years).expect("validity"),
    )
    .expect("root")
}

/// Journals nothing: the bench measures the protocol, not a database.
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

/// SELECT with Le = 00, as a reader sends it.
fn select_apdu() -> Vec<u8> {
    let mut apdu = vec![0x00, ins::SELECT, 0x04, 0x00, proto::AID.len() as u8];
    apdu.extend_from_slice(&proto::AID);
    apdu.push(0x00);
    apdu
}

/// The unit's flow up to an open channel: SELECT, MUTUAL AUTHENTICATE,
/// EXTERNAL AUTHENTICATE. Nothing is committed, so a module can repeat it.
fn handshake(link: &mut Link, unit: &UnitCredentials) {
    let mut flow = Personalization::new(unit, PersonalizationOptions::default()).expect("flow");
    for _ in 0..3 {
        let Action::Send { header, data } = flow.next_action().expect("next action") else {
            panic!("the handshake is three commands");
        };
        let response: Response = link.send(header, &data).expect("transport");
        flow.on_response(&response).expect("handshake step");
    }
}

fn in_process(c: &mut Criterion) {
    let deployment = Deployment::new();

    // Check the flows once, and say how many APDUs each costs.
    let mut link = deployment.manufactured_module();
    let before = link.apdu_count();
    handshake(&mut link, &deployment.unit);
    let handshake_apdus = link.apdu_count() - before;
    let report = personalize(
        &mut deployment.manufactured_module(),
        &mut NoJournal,
        &deployment.unit,
        PersonalizationOptions::default(),
    )
    .expect("personalization");
    eprintln!(
        "APDUs: round trip 1, handshake {handshake_apdus}, personalization {}",
        report.apdus
    );

    let mut group = c.benchmark_group("in_process");

    let select = select_apdu();
    let mut transport = link.into_transport();
    group.bench_function("apdu_round_trip_select", |b| {
        b.iter(|| {
            let response = transport.transmit(black_box(&select)).expect("transport");
            debug_assert!(response.ends_with(&[0x90, 0x00]));
            response
        })
    });

    let mut link = deployment.manufactured_module();
    group.bench_function("channel_handshake", |b| {
        b.iter(|| handshake(&mut link, &deployment.unit))
    });

    group.bench_function("personalization", |b| {
        b.iter_batched(
            || deployment.manufactured_module(),
            |mut link| {
                let report = personalize(
                    &mut link,
                    &mut NoJournal,
                    &deployment.unit,
                    PersonalizationOptions::default(),
                )
                .expect("personalization");
                debug_assert_eq!(
                    link.transport_mut().applet().lifecycle(),
                    Lifecycle::Operating
                );
                (link, report)
            },
            BatchSize::SmallInput,
        )
    });

    group.finish();
}

criterion_group!(benches, in_process);
criterion_main!(benches);
