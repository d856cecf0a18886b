//! TAN-protected personalization (claim 13), the refusals: wrong, reused,
//! expired, bound to another module, brute force against the unit's and the
//! module's counters (with restarts, to show they persist), a proof replayed
//! from an earlier channel, and the module's handling of the TAN itself. In
//! every case nothing is issued.

use std::path::Path;

use imprint_apdu::channel::tan_proof_matches;
use imprint_apdu::host::personalize::OpenChannel;
use imprint_apdu::host::tan::{SERIAL_FAILURE_LIMIT, TAN_FAILURE_LIMIT, TanCheck, TanRefusal};
use imprint_apdu::host::{
    CardLink, InProcessTransport, IssuanceJournal, PersonalizationOptions, PersonalizeError,
    personalize,
};
use imprint_apdu::iso::sw;
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::proto::{TAN_PROOF_LIMIT, tag};
use imprint_apdu::{Lifecycle, tlv};
use imprint_tests::claims::module_key_in;
use imprint_tests::*;
use zeroize::Zeroizing;

fn with_tan(tan: &str) -> PersonalizationOptions {
    PersonalizationOptions {
        tan: Some(Zeroizing::new(tan.as_bytes().to_vec())),
        require_tan: true,
        ..PersonalizationOptions::default()
    }
}

/// A manufactured module in `dir` (PERSONALIZATION), and its serial.
fn manufactured_in(dir: &Path, pki: &Pki) -> String {
    let mut link = file_module(dir);
    manufacture_with(&mut link, &pki.manufacturer).serial
}

/// A power cycle: the module process starts again from its directory.
fn restarted(dir: &Path) -> CardLink<InProcessTransport<FileKeyMemory>> {
    file_module(dir)
}

fn refusal(err: PersonalizeError) -> TanRefusal {
    match err {
        PersonalizeError::TanRefused(refusal) => refusal,
        other => panic!("expected a TAN refusal, got: {other}"),
    }
}

#[test]
fn wrong_tan_is_refused_counted_and_nothing_issued() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let serial = manufactured_in(dir.path(), &pki);
    let mut journal = RecordingJournal::default();
    let id = journal.issue_tan("1111111111", Some(&serial), 3600);
    let err = personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        with_tan("2222222222"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("the TAN is wrong"), "{err}");
    assert_eq!(refusal(err), TanRefusal::Wrong);
    assert_eq!(journal.tan(id).failures, 1);
    assert_eq!(journal.serial_failures[&serial], 1);
    assert!(journal.entries.is_empty());
    let mut link = restarted(dir.path());
    let applet = link.transport_mut().applet();
    assert_eq!(applet.lifecycle(), Lifecycle::Personalization);
    assert_eq!(applet.records().tan_proofs, 1, "the module counted too");
    assert_eq!(module_key_in(dir.path()), None, "no key generated");
}

#[test]
fn reused_expired_and_foreign_tans_are_refused() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let serial = manufactured_in(dir.path(), &pki);
    let mut journal = RecordingJournal::default();
    let used = journal.issue_tan("1111111111", None, 3600);
    personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        with_tan("1111111111"),
    )
    .expect("first use");
    let entries = journal.entries.len();

    let err = personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        with_tan("1111111111"),
    )
    .unwrap_err();
    assert_eq!(refusal(err), TanRefusal::Used(used));

    let expired = journal.issue_tan("3333333333", Some(&serial), 0);
    let err = personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        with_tan("3333333333"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(refusal(err), TanRefusal::Expired(expired));

    let foreign = journal.issue_tan("4444444444", Some("00112233445566ff"), 3600);
    let err = personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        with_tan("4444444444"),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("bound to module 00112233445566ff"),
        "{err}"
    );
    assert_eq!(
        refusal(err),
        TanRefusal::OtherModule {
            id: foreign,
            bound: "00112233445566ff".into()
        }
    );
    assert_eq!(journal.entries.len(), entries, "nothing issued");
    assert!(!journal.tan(foreign).used);
}

#[test]
fn brute_force_locks_the_tan_on_the_unit_and_the_module_across_restarts() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let serial = manufactured_in(dir.path(), &pki);
    let mut journal = RecordingJournal::default();
    let id = journal.issue_tan("5555555555", Some(&serial), 3600);

    // Each try on a freshly started module: the counters are persistent.
    for attempt in 0..TAN_FAILURE_LIMIT {
        let err = personalize(
            &mut restarted(dir.path()),
            &mut journal,
            &pki.unit,
            with_tan(&format!("00000000{attempt:02}")),
        )
        .unwrap_err();
        assert_eq!(refusal(err), TanRefusal::Wrong);
    }
    assert_eq!(journal.tan(id).failures, TAN_FAILURE_LIMIT);
    // The unit's lock: even the right TAN is refused now.
    let err = personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        with_tan("5555555555"),
    )
    .unwrap_err();
    assert_eq!(refusal(err), TanRefusal::Locked(id));

    // The module's lock: it has given TAN_FAILURE_LIMIT + 1 proofs so far.
    let spent = u32::from(TAN_PROOF_LIMIT) - TAN_FAILURE_LIMIT - 1;
    for _ in 0..spent {
        personalize(
            &mut restarted(dir.path()),
            &mut journal,
            &pki.unit,
            with_tan("9999999999"),
        )
        .unwrap_err();
    }
    assert_eq!(
        restarted(dir.path())
            .transport_mut()
            .applet()
            .records()
            .tan_proofs,
        TAN_PROOF_LIMIT
    );
    let fresh = journal.issue_tan("6666666666", Some(&serial), 3600);
    let err = personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        with_tan("6666666666"),
    )
    .unwrap_err();
    assert!(matches!(err, PersonalizeError::ModuleTanBlocked), "{err}");
    assert!(err.to_string().contains("6983"), "{err}");
    assert!(!journal.tan(fresh).used, "the fresh TAN is untouched");
    assert!(journal.entries.is_empty(), "nothing issued");

    // Recovery (docs/protocol.md): a completed personalization at a unit
    // that does not require a TAN re-opens the module's TAN proofs.
    personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .expect("personalization without TAN");
    assert_eq!(
        restarted(dir.path())
            .transport_mut()
            .applet()
            .records()
            .tan_proofs,
        0
    );
    personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        with_tan("6666666666"),
    )
    .expect("the fresh TAN works again");
    assert!(journal.tan(fresh).used);
}

#[test]
fn brute_force_locks_the_serial_for_every_tan() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let serial = manufactured_in(dir.path(), &pki);
    let mut journal = RecordingJournal::default();
    // Unbound: its own counter never moves, only the serial's does.
    let unbound = journal.issue_tan("7777777777", None, 3600);
    let mut failures = 0;
    while failures < SERIAL_FAILURE_LIMIT {
        let err = personalize(
            &mut restarted(dir.path()),
            &mut journal,
            &pki.unit,
            with_tan("0000000000"),
        )
        .unwrap_err();
        match err {
            PersonalizeError::TanRefused(TanRefusal::Wrong) => failures += 1,
            // The module's own limit comes first: re-open it the documented way.
            PersonalizeError::ModuleTanBlocked => {
                personalize(
                    &mut restarted(dir.path()),
                    &mut journal,
                    &pki.unit,
                    PersonalizationOptions::default(),
                )
                .expect("recovery personalization");
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(journal.serial_failures[&serial], SERIAL_FAILURE_LIMIT);
    assert_eq!(journal.tan(unbound).failures, 0);
    let entries = journal.entries.len();
    // Re-open the module's proofs so the unit's lock is what refuses.
    personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        PersonalizationOptions::default(),
    )
    .expect("recovery personalization");
    let err = personalize(
        &mut restarted(dir.path()),
        &mut journal,
        &pki.unit,
        with_tan("7777777777"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("imprint tan unlock"), "{err}");
    assert_eq!(refusal(err), TanRefusal::SerialLocked(serial));
    assert!(!journal.tan(unbound).used);
    assert_eq!(
        journal.entries.len(),
        entries + 1,
        "only the recovery run issued"
    );
}

/// Sends VERIFY (TAN) and the TAN proof command in one channel; returns the
/// channel's transcript hash and the proof.
fn proof_in_new_channel(
    link: &mut CardLink<InProcessTransport<FileKeyMemory>>,
    pki: &Pki,
    salt: &[u8; 32],
    tan: &str,
) -> ([u8; 48], Vec<u8>) {
    let mut channel = OpenChannel::open(link, &pki.unit).expect("channel");
    // OpenChannel SELECTs first, which forgets a TAN: enter it now.
    let response = link.send([0x00, 0x20, 0x00, 0x82], tan.as_bytes()).unwrap();
    assert_eq!(response.sw, sw::OK);
    let data = tlv::encode(tag::DYN_AUTH, &tlv::encode(tag::TAN_SALT, salt));
    let (out, inner) = channel
        .send(link, [0x0C, 0x88, 0x00, 0x82], &data)
        .expect("TAN proof");
    assert_eq!(inner, sw::OK);
    let template = tlv::decode_single(&out, tag::DYN_AUTH).unwrap().to_vec();
    let proof = tlv::decode_single(&template, tag::TAN_PROOF)
        .unwrap()
        .to_vec();
    (channel.transcript_hash(), proof)
}

#[test]
fn a_tan_proof_replayed_from_an_earlier_channel_is_refused() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let serial = manufactured_in(dir.path(), &pki);
    let mut journal = RecordingJournal::default();
    let id = journal.issue_tan("8888888888", Some(&serial), 3600);
    let salt = journal.salt();

    // An eavesdropper on the module side records a genuine proof...
    let mut link = restarted(dir.path());
    let (th1, proof1) = proof_in_new_channel(&mut link, &pki, &salt, "8888888888");
    assert!(tan_proof_matches(&journal.tan(id).verifier, &th1, &proof1));
    // ...and offers it in the next channel: a different transcript.
    let channel = OpenChannel::open(&mut link, &pki.unit).expect("channel");
    let th2 = channel.transcript_hash();
    assert_ne!(th1, th2);
    let check = journal.check_tan(&serial, &th2, &proof1).unwrap();
    assert_eq!(check, TanCheck::Refused(TanRefusal::Wrong));
    assert_eq!(journal.tan(id).failures, 1, "the replay counted");
    assert!(!journal.tan(id).used);
    assert!(journal.entries.is_empty(), "nothing issued");
}

#[test]
fn the_module_keeps_the_tan_only_until_reset_or_its_one_proof() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    manufactured_in(dir.path(), &pki);
    let salt = [5u8; 32];
    let mut link = restarted(dir.path());

    // Too short, too long: refused, nothing held, nothing counted.
    link.send([0x00, 0xA4, 0x04, 0x00], &imprint_apdu::proto::AID)
        .unwrap();
    for bad in [&b"123"[..], &[b'1'; 17][..]] {
        let response = link.send([0x00, 0x20, 0x00, 0x82], bad).unwrap();
        assert_eq!(response.sw, sw::WRONG_LENGTH);
    }
    let response = link.send([0x00, 0x20, 0x00, 0x82], &[]).unwrap();
    assert_eq!(response.sw, sw::DATA_NOT_FOUND, "no TAN held");
    assert_eq!(link.transport_mut().applet().records().tan_proofs, 0);

    // Entered, then the card is reset: gone; the proof command finds none
    // and counts nothing.
    link.send([0x00, 0x20, 0x00, 0x82], b"1234567890").unwrap();
    assert!(link.transport_mut().applet().holds_tan());
    link.transport_mut().applet_mut().reset();
    assert!(!link.transport_mut().applet().holds_tan());
    let mut channel = OpenChannel::open(&mut link, &pki.unit).expect("channel");
    let data = tlv::encode(tag::DYN_AUTH, &tlv::encode(tag::TAN_SALT, &salt));
    let (_, inner) = channel
        .send(&mut link, [0x0C, 0x88, 0x00, 0x82], &data)
        .unwrap();
    assert_eq!(inner, sw::DATA_NOT_FOUND);
    assert_eq!(link.transport_mut().applet().records().tan_proofs, 0);

    // One proof per entry: the TAN is wiped when used.
    let (_, _) = proof_in_new_channel(&mut link, &pki, &salt, "1234567890");
    assert!(!link.transport_mut().applet().holds_tan());
    assert_eq!(link.transport_mut().applet().records().tan_proofs, 1);

    // The proof command exists only inside the channel.
    let response = link.send([0x00, 0x88, 0x00, 0x82], &data).unwrap();
    assert_ne!(response.sw, sw::OK);
}

/// A key memory whose commits fail while `failing` is set.
struct FailingCommits {
    inner: imprint_apdu::keymem::memory::MemoryKeyMemory,
    failing: std::rc::Rc<std::cell::Cell<bool>>,
}

impl imprint_apdu::keymem::KeyMemory for FailingCommits {
    fn load(
        &mut self,
    ) -> Result<imprint_apdu::keymem::Records, imprint_apdu::keymem::KeyMemoryError> {
        self.inner.load()
    }
    fn commit(
        &mut self,
        records: &imprint_apdu::keymem::Records,
    ) -> Result<(), imprint_apdu::keymem::KeyMemoryError> {
        if self.failing.get() {
            return Err(imprint_apdu::keymem::KeyMemoryError::Io);
        }
        self.inner.commit(records)
    }
    fn generate(
        &mut self,
        slot: imprint_apdu::keymem::KeySlot,
        variation: &[u8],
    ) -> Result<p384::PublicKey, imprint_apdu::keymem::KeyMemoryError> {
        self.inner.generate(slot, variation)
    }
    fn erase(
        &mut self,
        slot: imprint_apdu::keymem::KeySlot,
    ) -> Result<(), imprint_apdu::keymem::KeyMemoryError> {
        self.inner.erase(slot)
    }
    fn public_key(
        &mut self,
        slot: imprint_apdu::keymem::KeySlot,
    ) -> Result<Option<p384::PublicKey>, imprint_apdu::keymem::KeyMemoryError> {
        self.inner.public_key(slot)
    }
    fn sign_digest(
        &mut self,
        slot: imprint_apdu::keymem::KeySlot,
        digest: &[u8; 48],
    ) -> Result<p384::ecdsa::Signature, imprint_apdu::keymem::KeyMemoryError> {
        self.inner.sign_digest(slot, digest)
    }
    fn agree(
        &mut self,
        slot: imprint_apdu::keymem::KeySlot,
        peer: &p384::PublicKey,
    ) -> Result<Zeroizing<[u8; 48]>, imprint_apdu::keymem::KeyMemoryError> {
        self.inner.agree(slot, peer)
    }
    fn random(&mut self, out: &mut [u8]) -> Result<(), imprint_apdu::keymem::KeyMemoryError> {
        self.inner.random(out)
    }
}

#[test]
fn no_tan_proof_without_the_counter_committed_first() {
    let pki = Pki::new();
    let failing = std::rc::Rc::new(std::cell::Cell::new(false));
    let memory = FailingCommits {
        inner: imprint_apdu::keymem::memory::MemoryKeyMemory::new(random_seed()),
        failing: failing.clone(),
    };
    let mut link = CardLink::new(InProcessTransport::new(
        imprint_apdu::applet::Applet::new(memory).unwrap(),
    ));
    manufactured(&mut link, &pki);
    let mut channel = OpenChannel::open(&mut link, &pki.unit).expect("channel");
    assert_eq!(
        link.send([0x00, 0x20, 0x00, 0x82], b"1234567890")
            .unwrap()
            .sw,
        sw::OK
    );
    failing.set(true);
    let data = tlv::encode(tag::DYN_AUTH, &tlv::encode(tag::TAN_SALT, &[1u8; 32]));
    let (out, inner) = channel
        .send(&mut link, [0x0C, 0x88, 0x00, 0x82], &data)
        .unwrap();
    assert_eq!(inner, sw::MEMORY_FAILURE);
    assert!(out.is_empty(), "no proof without a committed counter");
    let applet = link.transport_mut().applet();
    assert_eq!(applet.records().tan_proofs, 0);
    assert!(!applet.holds_tan(), "the TAN is gone all the same");
}
