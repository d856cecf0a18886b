//! The module key in operation, as a PKCS#11 provider uses it: the optional
//! user PIN set at personalization (VERIFY with a retry counter committed
//! before the comparison) and COMPUTE DIGITAL SIGNATURE over a digest the host
//! computed, checked against the module certificate's key.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use imprint_apdu::applet::Applet;
use imprint_apdu::host::personalize::OpenChannel;
use imprint_apdu::host::status::read_status;
use imprint_apdu::host::{
    CardLink, InProcessTransport, PersonalizationOptions, PersonalizeError, Transport, personalize,
    reset_module,
};
use imprint_apdu::iso::sw;
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_apdu::keymem::{KeyMemory, KeyMemoryError, KeySlot, Records};
use imprint_apdu::proto::{AID, PIN_TRY_LIMIT};
use imprint_apdu::{Lifecycle, Response};
use imprint_tests::*;
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use sha2::Digest;

const PIN: &[u8] = b"pin-7F3A91c2";
const SIGN_SECURED: [u8; 4] = [0x0C, 0x2A, 0x9E, 0x9A];

fn select<T: Transport>(link: &mut CardLink<T>) {
    assert_eq!(link.send([0, 0xA4, 0x04, 0x00], &AID).unwrap().sw, sw::OK);
}

/// The public key of the module certificate the module reports.
fn module_certificate_key<T: Transport>(link: &mut CardLink<T>) -> VerifyingKey {
    *read_status(link)
        .expect("status")
        .module_cert
        .expect("module certificate")
        .public_key()
}

/// Checks a `r ‖ s` response against `key` and the digest as the host computed it.
fn assert_signs(key: &VerifyingKey, digest: &[u8], response: &Response) {
    assert_eq!(response.sw, sw::OK);
    assert_eq!(response.data.len(), 96, "raw r ‖ s");
    let signature = Signature::from_slice(&response.data).expect("r and s in range");
    key.verify_prehash(digest, &signature)
        .unwrap_or_else(|_| panic!("signature over a {}-byte digest", digest.len()));
}

fn pin_tries<T: KeyMemory>(link: &mut CardLink<InProcessTransport<T>>) -> Option<u8> {
    let applet = link.transport_mut().applet();
    applet.records().pin.as_ref().map(|pin| pin.tries_left)
}

#[test]
fn personalization_with_or_without_a_pin_takes_five_apdus_and_the_pin_never_crosses_in_clear() {
    let pki = Pki::new();
    for pin in [None, Some(PIN)] {
        let applet = Applet::new(MemoryKeyMemory::new(random_seed())).unwrap();
        let mut link = CardLink::new(LoggingTransport::new(InProcessTransport::new(applet)));
        manufactured(&mut link, &pki);
        let options = PersonalizationOptions {
            pin: pin.map(|pin| zeroize::Zeroizing::new(pin.to_vec())),
            ..PersonalizationOptions::default()
        };
        let report = personalize(
            &mut link,
            &mut RecordingJournal::default(),
            &pki.unit,
            options,
        )
        .unwrap();
        assert_eq!(report.apdus, 5, "pin {pin:?}");
        let applet = link.transport_mut().inner.applet();
        assert_eq!(applet.lifecycle(), Lifecycle::Operating);
        let stored = applet.records().pin.clone();
        assert_eq!(stored.is_some(), pin.is_some());
        if let Some(stored) = stored {
            assert_eq!(stored.tries_left, PIN_TRY_LIMIT);
            assert!(stored.matches(PIN));
            // Salted hash only: the PIN is nowhere in the stored records.
            let encoded = applet.records().encode();
            assert!(!encoded.windows(PIN.len()).any(|w| w == PIN));
        }
        let log = &link.transport_mut().log;
        assert!(
            !log.iter()
                .any(|(command, _)| command.windows(PIN.len()).any(|w| w == PIN)),
            "the PIN crossed the wire in clear"
        );
    }
}

#[test]
fn a_pin_of_the_wrong_length_is_refused_before_anything_is_sent() {
    let pki = Pki::new();
    for pin in [&b"123"[..], &[b'1'; 17][..]] {
        let mut link = ram_module();
        manufactured(&mut link, &pki);
        let before = link.apdu_count();
        let err = personalized_with_pin(&mut link, &pki.unit, pin).unwrap_err();
        assert!(matches!(err, PersonalizeError::InvalidPin), "{err}");
        assert_eq!(link.apdu_count(), before);
    }
}

#[test]
fn signing_before_operating_is_refused() {
    let pki = Pki::new();
    let digest = imprint_apdu::channel::sha384(b"message");
    let mut link = ram_module();
    select(&mut link);
    assert_eq!(compute_signature(&mut link, &digest).sw, sw::CONDITIONS);
    assert_eq!(verify_pin(&mut link, PIN), sw::CONDITIONS);
    manufactured(&mut link, &pki);
    select(&mut link);
    assert_eq!(compute_signature(&mut link, &digest).sw, sw::CONDITIONS);
    assert_eq!(verify_pin(&mut link, b""), sw::CONDITIONS);
    // Inside a channel too, and with a key generated but not yet certified.
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    assert_eq!(
        channel.send(&mut link, SIGN_SECURED, &digest).unwrap().1,
        sw::CONDITIONS
    );
    let generated = channel
        .send(
            &mut link,
            [0x0C, 0x47, 0x80, 0x02],
            &imprint_apdu::tlv::encode(0x80, b"v"),
        )
        .unwrap();
    assert_eq!(generated.1, sw::OK);
    assert_eq!(
        channel.send(&mut link, SIGN_SECURED, &digest).unwrap().1,
        sw::CONDITIONS
    );
    assert_eq!(compute_signature(&mut link, &digest).sw, sw::CONDITIONS);
}

#[test]
fn signatures_in_operating_verify_against_the_module_certificate() {
    let pki = Pki::new();
    let mut link = ram_module();
    manufactured(&mut link, &pki);
    personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).unwrap();
    let key = module_certificate_key(&mut link);
    select(&mut link);
    let message = b"a TLS handshake transcript, say";
    // CKM_ECDSA_SHA384, _SHA256, with SHA-512 and SHA-1 digests, and short raw values.
    let digests: Vec<Vec<u8>> = vec![
        sha2::Sha384::digest(message).to_vec(),
        sha2::Sha256::digest(message).to_vec(),
        sha2::Sha512::digest(message).to_vec(),
        sha2::Sha256::digest(message)[..20].to_vec(),
        vec![0x42],
    ];
    for digest in &digests {
        assert_signs(&key, digest, &compute_signature(&mut link, digest));
    }
    // Two signatures over the same digest differ (hedged nonces), both verify.
    let one = compute_signature(&mut link, &digests[0]);
    let two = compute_signature(&mut link, &digests[0]);
    assert_ne!(one.data, two.data);
    assert_signs(&key, &digests[0], &two);
    // Lengths outside 1..=64 are refused.
    assert_eq!(compute_signature(&mut link, &[]).sw, sw::WRONG_LENGTH);
    assert_eq!(compute_signature(&mut link, &[0; 65]).sw, sw::WRONG_LENGTH);
    // A short APDU: the 96-byte signature fits one response.
    let mut short = vec![0x00, 0x2A, 0x9E, 0x9A, 48];
    short.extend_from_slice(&digests[0]);
    short.push(0x00);
    let raw = link.transport_mut().transmit(&short).unwrap();
    assert_signs(
        &key,
        &digests[0],
        &Response::from_bytes(&raw).expect("response"),
    );

    // The same inside the secure channel.
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    let (data, status) = channel.send(&mut link, SIGN_SECURED, &digests[1]).unwrap();
    assert_signs(&key, &digests[1], &Response { data, sw: status });
    assert_eq!(
        link.transport_mut().applet().lifecycle(),
        Lifecycle::Operating
    );
}

#[test]
fn with_a_pin_signing_waits_for_verify_and_wrong_pins_count_down() {
    let pki = Pki::new();
    let mut link = ram_module();
    manufactured(&mut link, &pki);
    personalized_with_pin(&mut link, &pki.unit, PIN).unwrap();
    let key = module_certificate_key(&mut link);
    select(&mut link);
    let digest = imprint_apdu::channel::sha384(b"message");

    assert_eq!(
        compute_signature(&mut link, &digest).sw,
        sw::SECURITY_STATUS
    );
    assert_eq!(verify_pin(&mut link, b""), 0x63C3);
    assert_eq!(verify_pin(&mut link, b"wrong-pin"), 0x63C2);
    assert_eq!(pin_tries(&mut link), Some(2));
    assert_eq!(verify_pin(&mut link, b"pin-7F3A91c"), 0x63C1);
    assert_eq!(pin_tries(&mut link), Some(1));
    assert_eq!(
        compute_signature(&mut link, &digest).sw,
        sw::SECURITY_STATUS
    );
    assert_eq!(verify_pin(&mut link, PIN), sw::OK);
    assert_eq!(pin_tries(&mut link), Some(PIN_TRY_LIMIT), "counter reset");
    assert_eq!(verify_pin(&mut link, b""), sw::OK);
    assert_signs(&key, &digest, &compute_signature(&mut link, &digest));

    // A power cycle drops the verification, not the counter.
    link.transport_mut().applet_mut().reset();
    select(&mut link);
    assert_eq!(
        compute_signature(&mut link, &digest).sw,
        sw::SECURITY_STATUS
    );

    // Inside a channel the PIN is needed as well; a plain VERIFY does not close it.
    let mut channel = OpenChannel::open(&mut link, &pki.unit).unwrap();
    assert_eq!(
        channel.send(&mut link, SIGN_SECURED, &digest).unwrap().1,
        sw::SECURITY_STATUS
    );
    assert_eq!(verify_pin(&mut link, PIN), sw::OK);
    let (data, status) = channel.send(&mut link, SIGN_SECURED, &digest).unwrap();
    assert_signs(&key, &digest, &Response { data, sw: status });

    // Logout (VERIFY with P1 FF) drops the verification.
    assert_eq!(link.send([0x00, 0x20, 0xFF, 0x81], &[]).unwrap().sw, sw::OK);
    assert_eq!(
        compute_signature(&mut link, &digest).sw,
        sw::SECURITY_STATUS
    );
}

#[test]
fn three_wrong_pins_block_across_power_cycles_and_reopened_file_memories() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut link = file_module(dir.path());
    manufactured(&mut link, &pki);
    personalized_with_pin(&mut link, &pki.unit, PIN).unwrap();
    select(&mut link);
    assert_eq!(verify_pin(&mut link, b"0000"), 0x63C2);
    drop(link);

    // The counter survives a reopening of the key memory.
    let mut link = file_module(dir.path());
    select(&mut link);
    assert_eq!(verify_pin(&mut link, b""), 0x63C2);
    assert_eq!(verify_pin(&mut link, b"1111"), 0x63C1);
    assert_eq!(verify_pin(&mut link, b"2222"), 0x63C0);
    assert_eq!(verify_pin(&mut link, PIN), sw::PIN_BLOCKED);
    assert_eq!(verify_pin(&mut link, b""), sw::PIN_BLOCKED);
    link.transport_mut().applet_mut().reset();
    select(&mut link);
    assert_eq!(verify_pin(&mut link, PIN), sw::PIN_BLOCKED);
    drop(link);

    let mut link = file_module(dir.path());
    assert_eq!(pin_tries(&mut link), Some(0));
    select(&mut link);
    assert_eq!(verify_pin(&mut link, PIN), sw::PIN_BLOCKED);
    assert_eq!(
        compute_signature(&mut link, &[7; 48]).sw,
        sw::SECURITY_STATUS
    );
    assert_eq!(
        link.transport_mut().applet().lifecycle(),
        Lifecycle::Operating
    );
}

/// A key memory whose commits start failing after a number of successes, and
/// which logs the PIN counter of every commit that succeeded.
struct FlakyCommits<K> {
    inner: K,
    /// `Some(n)`: the next `n` commits succeed, every later one fails.
    successes_left: Rc<Cell<Option<usize>>>,
    /// The PIN retry counter in each successful commit, in order.
    committed_tries: Rc<RefCell<Vec<Option<u8>>>>,
}

impl<K: KeyMemory> KeyMemory for FlakyCommits<K> {
    fn load(&mut self) -> Result<Records, KeyMemoryError> {
        self.inner.load()
    }
    fn commit(&mut self, records: &Records) -> Result<(), KeyMemoryError> {
        match self.successes_left.get() {
            Some(0) => return Err(KeyMemoryError::Io),
            Some(n) => self.successes_left.set(Some(n - 1)),
            None => {}
        }
        self.inner.commit(records)?;
        self.committed_tries
            .borrow_mut()
            .push(records.pin.as_ref().map(|pin| pin.tries_left));
        Ok(())
    }
    fn generate(
        &mut self,
        slot: KeySlot,
        variation: &[u8],
    ) -> Result<p384::PublicKey, KeyMemoryError> {
        self.inner.generate(slot, variation)
    }
    fn erase(&mut self, slot: KeySlot) -> Result<(), KeyMemoryError> {
        self.inner.erase(slot)
    }
    fn public_key(&mut self, slot: KeySlot) -> Result<Option<p384::PublicKey>, KeyMemoryError> {
        self.inner.public_key(slot)
    }
    fn sign_digest(
        &mut self,
        slot: KeySlot,
        digest: &[u8; 48],
    ) -> Result<Signature, KeyMemoryError> {
        self.inner.sign_digest(slot, digest)
    }
    fn agree(
        &mut self,
        slot: KeySlot,
        peer: &p384::PublicKey,
    ) -> Result<zeroize::Zeroizing<[u8; 48]>, KeyMemoryError> {
        self.inner.agree(slot, peer)
    }
    fn random(&mut self, out: &mut [u8]) -> Result<(), KeyMemoryError> {
        self.inner.random(out)
    }
}

#[test]
fn the_counter_is_committed_before_the_comparison() {
    let pki = Pki::new();
    let successes_left = Rc::new(Cell::new(None));
    let committed_tries = Rc::new(RefCell::new(Vec::new()));
    let memory = FlakyCommits {
        inner: MemoryKeyMemory::new(random_seed()),
        successes_left: successes_left.clone(),
        committed_tries: committed_tries.clone(),
    };
    let mut link = CardLink::new(InProcessTransport::new(Applet::new(memory).unwrap()));
    manufactured(&mut link, &pki);
    personalized_with_pin(&mut link, &pki.unit, PIN).unwrap();
    select(&mut link);
    let digest = [9u8; 48];
    committed_tries.borrow_mut().clear();

    // The counter cannot be committed: no comparison happens. Even the right
    // PIN gets 6581 and is not verified; a wrong one gets 6581, not 63Cx.
    successes_left.set(Some(0));
    assert_eq!(verify_pin(&mut link, PIN), sw::MEMORY_FAILURE);
    assert!(!link.transport_mut().applet().pin_verified());
    assert_eq!(
        compute_signature(&mut link, &digest).sw,
        sw::SECURITY_STATUS
    );
    assert_eq!(verify_pin(&mut link, b"wrong-pin"), sw::MEMORY_FAILURE);
    assert_eq!(pin_tries(&mut link), Some(PIN_TRY_LIMIT), "nothing counted");
    assert!(committed_tries.borrow().is_empty());
    // The status query commits nothing, so it still works.
    assert_eq!(verify_pin(&mut link, b""), 0x63C3);

    // The decrement commits, then the comparison succeeds, then resetting the
    // counter fails: 6581, not verified, and the decrement stays committed.
    successes_left.set(Some(1));
    assert_eq!(verify_pin(&mut link, PIN), sw::MEMORY_FAILURE);
    assert!(!link.transport_mut().applet().pin_verified());
    assert_eq!(*committed_tries.borrow(), [Some(2)]);
    assert_eq!(pin_tries(&mut link), Some(2));

    // Working storage: a wrong PIN commits the decrement only; the right PIN
    // commits the decrement first and the reset after the comparison.
    successes_left.set(None);
    committed_tries.borrow_mut().clear();
    assert_eq!(verify_pin(&mut link, b"wrong-pin"), 0x63C1);
    assert_eq!(*committed_tries.borrow(), [Some(1)]);
    assert_eq!(verify_pin(&mut link, PIN), sw::OK);
    assert_eq!(*committed_tries.borrow(), [Some(1), Some(0), Some(3)]);
    assert_eq!(compute_signature(&mut link, &digest).sw, sw::OK);
}

#[test]
fn re_personalization_erases_the_pin() {
    let pki = Pki::new();
    let mut link = ram_module();
    manufactured(&mut link, &pki);
    personalized_with_pin(&mut link, &pki.unit, PIN).unwrap();
    select(&mut link);
    assert_eq!(verify_pin(&mut link, PIN), sw::OK);

    // TERMINATE alone: the PIN and its counter are gone with the module key.
    reset_module(&mut link, &pki.unit).unwrap();
    let applet = link.transport_mut().applet();
    assert_eq!(applet.lifecycle(), Lifecycle::Personalization);
    assert_eq!(applet.records().pin, None);
    assert!(!applet.pin_verified());
    select(&mut link);
    assert_eq!(verify_pin(&mut link, PIN), sw::CONDITIONS);

    // Personalized again without a PIN: nothing to verify, signing is open.
    personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).unwrap();
    let key = module_certificate_key(&mut link);
    select(&mut link);
    assert_eq!(verify_pin(&mut link, PIN), sw::DATA_NOT_FOUND);
    let digest = imprint_apdu::channel::sha384(b"m");
    assert_signs(&key, &digest, &compute_signature(&mut link, &digest));

    // A blocked PIN is replaced by re-personalizing with a new one; the old
    // verification does not carry over.
    personalized_with_pin(&mut link, &pki.unit, b"first-pin").unwrap();
    select(&mut link);
    for _ in 0..PIN_TRY_LIMIT {
        verify_pin(&mut link, b"nope");
    }
    assert_eq!(verify_pin(&mut link, b"first-pin"), sw::PIN_BLOCKED);
    personalized_with_pin(&mut link, &pki.unit, b"second-pin").unwrap();
    let key = module_certificate_key(&mut link);
    select(&mut link);
    assert_eq!(pin_tries(&mut link), Some(PIN_TRY_LIMIT));
    assert_eq!(
        compute_signature(&mut link, &digest).sw,
        sw::SECURITY_STATUS
    );
    assert_eq!(verify_pin(&mut link, b"first-pin"), 0x63C2);
    assert_eq!(verify_pin(&mut link, b"second-pin"), sw::OK);
    assert_signs(&key, &digest, &compute_signature(&mut link, &digest));
}
