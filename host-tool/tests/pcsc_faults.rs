//! Torn connections through the real PC/SC stack: the card (`imprint-card
//! --fail-after-apdus N`) processes its Nth APDU, commits whatever that APDU
//! commits, and vanishes without answering, as a card pulled from the reader
//! or a power cut would. For every N of a first personalization and of a
//! re-personalization, the unit must see the card as gone, the module
//! directory must be in a defined state, and a normal card on the same
//! directory must personalize.
//!
//! ```text
//!  template (manufactured [+ personalized], in-process) ──copy──▶ module dir per N
//!  unit ─ PcscTransport ─▶ pcscd ─▶ vpcd ─▶ imprint-card --fail-after-apdus N ─╳ exit 86
//!  module dir ─▶ FileKeyMemory: PERSONALIZATION (nothing operational) | OPERATING (verified)
//!  module dir ─▶ imprint-card ─▶ personalize again ─▶ OPERATING
//! ```
//!
//! The first personalization runs on "Virtual PCD 00 00", the
//! re-personalization on "Virtual PCD 00 01", so the two tests run side by
//! side; each holds its reader's lock for the whole test.

use std::path::Path;

use imprint_apdu::Lifecycle;
use imprint_apdu::host::{
    CardLink, PersonalizationOptions, PersonalizeError, TransportError, personalize,
};
use imprint_apdu::proto::ins;
use imprint_host::HostError;
use imprint_host::pcsc::{ConnectOptions, PcscTransport};
use imprint_tests::{
    EntryState, LoggingTransport, Pki, RecordingJournal, file_module, manufactured, personalized,
};

mod common;
use common::*;

/// What a clean run of the flow sends to the card.
struct Flow {
    /// APDUs the card receives (the transport's probe SELECT included).
    apdus: usize,
    /// The 1-based position of TERMINATE among them, for a re-personalization.
    terminate: Option<usize>,
}

/// A prepared module: manufactured and, for a re-personalization, personalized
/// once, in-process on a file key memory.
fn prepare(pki: &Pki, dir: &Path, repersonalize: bool) {
    let mut link = file_module(dir);
    manufactured(&mut link, pki);
    if repersonalize {
        personalized(&mut link, &pki.unit, &mut RecordingJournal::default())
            .expect("first personalization in-process");
    }
}

fn connect(reader: &Reader, card: &CardProcess) -> PcscTransport {
    PcscTransport::open(&reader.name, ConnectOptions::exclusive()).unwrap_or_else(|err| {
        panic!(
            "connecting to {:?}: {err}\nimprint-card said:\n{}",
            reader.name,
            card.log()
        )
    })
}

/// Personalizes a copy of `template` with a normal card and counts what the
/// card receives.
fn clean_run(pki: &Pki, reader: &Reader, template: &Path, work: &Path) -> Flow {
    let dir = work.join("clean");
    copy_module_dir(template, &dir);
    let mut card = insert_card(reader, &dir, &[]);
    let mut link = CardLink::new(LoggingTransport::new(connect(reader, &card)));
    personalized(&mut link, &pki.unit, &mut RecordingJournal::default())
        .unwrap_or_else(|err| panic!("clean run: {err}\nimprint-card said:\n{}", card.log()));
    let transport = link.into_transport();
    let commands: Vec<u8> = transport
        .log
        .iter()
        .map(|(command, _)| command[1])
        .collect();
    let apdus = transport.inner.exchanged() as usize;
    // The probe is a SELECT of our applet, and the flow's own SELECT is
    // answered from it: the flow's commands are what the card received.
    assert_eq!(commands.first(), Some(&ins::SELECT));
    assert_eq!(apdus, commands.len(), "commands {commands:02X?}");
    drop(transport);
    card.signal("-TERM");
    assert_eq!(card.wait_exit(WAIT).code(), Some(0), "{}", card.log());
    let terminate = commands
        .iter()
        .position(|&instruction| instruction == ins::TERMINATE)
        .map(|index| index + 1);
    Flow { apdus, terminate }
}

fn torn_connections(reader: Reader, repersonalize: bool) {
    if pcsc_stack().is_none() {
        return;
    }
    let _lock = reader.lock();
    let pki = Pki::new();
    let work = tempfile::tempdir().expect("tempdir");
    let template = work.path().join("template");
    prepare(&pki, &template, repersonalize);
    let before = assert_consistent(&template, &pki.central_root);
    let flow = clean_run(&pki, &reader, &template, work.path());
    assert_eq!(flow.terminate.is_some(), repersonalize);
    eprintln!(
        "{} through pcscd: {} APDUs on the wire",
        if repersonalize {
            "re-personalization"
        } else {
            "first personalization"
        },
        flow.apdus
    );

    for n in 1..=flow.apdus {
        let what = format!("repersonalize={repersonalize}, card gone after APDU {n}");
        let dir = work.path().join(format!("n{n}"));
        copy_module_dir(&template, &dir);
        let mut card = insert_card(&reader, &dir, &["--fail-after-apdus", &n.to_string()]);
        let mut journal = RecordingJournal::default();
        match PcscTransport::open(&reader.name, ConnectOptions::exclusive()) {
            // The probe SELECT is the first APDU: the card vanishes while
            // the transport connects (not taken for a reader that refuses
            // extended length).
            Err(HostError::NoCard(_)) if n == 1 => {}
            Ok(transport) if n > 1 => {
                let mut link = CardLink::new(transport);
                let err = personalize(
                    &mut link,
                    &mut journal,
                    &pki.unit,
                    PersonalizationOptions::default(),
                )
                .expect_err("the card vanished: personalization must fail");
                assert!(
                    matches!(
                        err,
                        PersonalizeError::Transport(TransportError::Disconnected)
                    ),
                    "{what}: {err}"
                );
            }
            Ok(transport) => panic!("{what}: connected ({})", transport.length_mode()),
            Err(err) => panic!(
                "{what}: connecting: {err}\nimprint-card said:\n{}",
                card.log()
            ),
        }
        let status = card.wait_exit(WAIT);
        assert_eq!(status.code(), Some(86), "{what}: {}", card.log());
        drop(card);

        // The module: only the last APDU (PUT DATA of the certificates) makes
        // it OPERATING with a new certificate; a re-personalized module stays
        // OPERATING with its old one until TERMINATE commits.
        let records = assert_consistent(&dir, &pki.central_root);
        let (expected, old) = match flow.terminate {
            Some(terminate) if n < terminate => (Lifecycle::Operating, true),
            _ if n == flow.apdus => (Lifecycle::Operating, false),
            _ => (Lifecycle::Personalization, false),
        };
        assert_eq!(records.lifecycle, expected, "{what}");
        if expected == Lifecycle::Operating {
            assert_eq!(
                records.module_cert == before.module_cert,
                old,
                "{what}: {} module certificate expected",
                if old { "the old" } else { "a new" }
            );
        }
        // The certificate was journaled only if the run got to PUT DATA,
        // and its entry was marked failed: the response never came.
        assert_eq!(
            journal.entries.len(),
            usize::from(n == flow.apdus),
            "{what}"
        );
        for (_, state) in &journal.entries {
            assert!(matches!(state, EntryState::Failed(_)), "{what}: {state:?}");
        }

        // Power comes back: the module personalizes.
        let card = insert_card(&reader, &dir, &["--quiet"]);
        let mut link = CardLink::new(connect(&reader, &card));
        let mut journal = RecordingJournal::default();
        let report = personalized(&mut link, &pki.unit, &mut journal)
            .unwrap_or_else(|err| panic!("{what}: personalizing again: {err}\n{}", card.log()));
        assert_eq!(journal.entries.len(), 1);
        assert_eq!(journal.entries[0].1, EntryState::Installed);
        drop(link);
        drop(card);
        let records = assert_consistent(&dir, &pki.central_root);
        assert_eq!(records.lifecycle, Lifecycle::Operating, "{what}");
        assert_eq!(
            records.module_cert.as_deref(),
            Some(report.certificate.der()),
            "{what}: the new certificate is installed"
        );
    }
}

#[test]
fn torn_connection_after_each_apdu_of_a_first_personalization_through_pcscd() {
    torn_connections(Reader::index(0), false);
}

#[test]
fn torn_connection_after_each_apdu_of_a_repersonalization_through_pcscd() {
    torn_connections(Reader::index(1), true);
}
