//! The central system's steps against the applet in-process, without a
//! network: every step, and what the module does with a wrong one.

use imprint_apdu::Response;
use imprint_apdu::host::{CardLink, InProcessTransport, Transport};
use imprint_apdu::iso::sw;
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_apdu::pki::Certificate;
use imprint_apdu::proto::{self, ins};
use imprint_tests::Pki;
use p384::ecdsa::SigningKey;

use super::*;
use crate::{CentralAuthority, CentralKey};

type Link = CardLink<InProcessTransport<MemoryKeyMemory>>;

fn authority(key: &SigningKey, cert: &Certificate) -> CentralAuthority {
    CentralAuthority {
        key: CentralKey::File(key.clone()),
        cert: cert.clone(),
    }
}

fn operating_module(pki: &Pki) -> Link {
    let mut link = imprint_tests::operating_ram_module(pki);
    let select = link
        .send([0x00, ins::SELECT, 0x04, 0x00], &proto::AID)
        .expect("select");
    assert_eq!(select.sw, sw::OK);
    link
}

fn send<T: Transport>(link: &mut CardLink<T>, command: &ModuleCommand) -> Response {
    link.send(command.header, &command.data).expect("module")
}

fn serial_of(link: &mut Link) -> [u8; pki::SERIAL_LEN] {
    let select = link
        .send([0x00, ins::SELECT, 0x04, 0x00], &proto::AID)
        .expect("select");
    imprint_apdu::host::personalize::SelectInfo::parse(&select.data)
        .and_then(|info| info.serial)
        .expect("serial")
}

/// Runs the operating channel and returns the installed key set's key.
fn install_key_set(link: &mut Link, central: &CentralAuthority, id: [u8; 16]) -> [u8; 32] {
    let (handshake, command) = OperatingHandshake::start(central).expect("start");
    let module = handshake
        .on_open(
            &send(link, &command),
            &central.cert,
            imprint_apdu::host::personalize::unix_now(),
        )
        .expect("module authenticated");
    let (confirmation, command) = module.confirm(central).expect("confirm");
    let mut channel = confirmation
        .on_confirm(&send(link, &command))
        .expect("channel open");
    let key = [0x5A; 32];
    let command = channel
        .install_key_set(&id, &key, u64::MAX)
        .expect("key set command");
    channel
        .on_install(&send(link, &command))
        .expect("installed");
    key
}

fn open_transactions(link: &mut Link, key: &[u8; 32]) -> (CentralTransactions, u32) {
    let serial = serial_of(link);
    let (challenge, command) = TransactionChallenge::start(serial).expect("start");
    let claim = challenge.on_open(&send(link, &command)).expect("claim");
    let (session, command) = claim.verify(key).expect("module confirmation");
    on_transaction_confirm(&send(link, &command)).expect("module accepts");
    (session, claim.session_counter)
}

fn pso(link: &mut Link, p1p2: u16, data: &[u8]) -> Response {
    let [p1, p2] = p1p2.to_be_bytes();
    link.send([0x00, ins::PSO, p1, p2], data).expect("pso")
}

#[test]
fn channel_key_set_and_transactions_in_process() {
    let pki = Pki::new();
    let central = authority(&pki.central_key, &pki.central_root);
    let mut link = operating_module(&pki);
    let key = install_key_set(&mut link, &central, [1; 16]);
    let (mut session, counter) = open_transactions(&mut link, &key);
    assert_eq!(counter, 1);

    for (number, payload) in [(10u64, &b"first"[..]), (11, b"second")] {
        let sealed = pso(&mut link, proto::PSO_ENCIPHER, payload);
        assert_eq!(sealed.sw, sw::OK);
        let (sequence, opened) = session.open_message(&sealed.data).expect("message");
        assert_eq!(opened, payload);
        assert_eq!(sequence, number - 9);
        let receipt = Receipt {
            number,
            payload_digest: sha384(payload),
            reply: b"ok".to_vec(),
        };
        let sealed = session.seal_receipt(&receipt).expect("receipt");
        let checked = pso(&mut link, proto::PSO_DECIPHER, &sealed);
        assert_eq!(checked.sw, sw::OK);
        assert_eq!(Receipt::decode(&checked.data), Some(receipt));
    }
    // The next session has the next counter.
    assert_eq!(open_transactions(&mut link, &key).1, 2);
}

#[test]
fn the_module_refuses_a_central_system_that_cannot_sign_with_its_anchor_key() {
    let pki = Pki::new();
    let mut link = operating_module(&pki);
    // The right certificate, a wrong key: the module checks σ_C with its anchor.
    let impostor = authority(
        &SigningKey::from_slice(&[9; 48]).expect("key"),
        &pki.central_root,
    );
    let (handshake, command) = OperatingHandshake::start(&impostor).expect("start");
    let module = handshake
        .on_open(
            &send(&mut link, &command),
            &impostor.cert,
            imprint_apdu::host::personalize::unix_now(),
        )
        .expect("the module's side still verifies");
    let (confirmation, command) = module.confirm(&impostor).expect("confirm");
    let response = send(&mut link, &command);
    assert_eq!(response.sw, sw::AUTHENTICATION_FAILED);
    assert!(matches!(
        confirmation.on_confirm(&response),
        Err(OperatingError::ModuleStatus {
            sw: sw::AUTHENTICATION_FAILED,
            ..
        })
    ));
    // Nothing was installed.
    let [p1, p2] = (proto::tag::KEY_SET_STATUS as u16).to_be_bytes();
    let status = link
        .send([0x00, ins::GET_DATA, p1, p2], &[])
        .expect("get data");
    assert_eq!(status.sw, sw::DATA_NOT_FOUND);
}

#[test]
fn a_chain_of_another_central_system_is_refused_by_the_central_system() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let mut link = operating_module(&pki);
    let central = authority(&pki.central_key, &pki.central_root);
    let (handshake, command) = OperatingHandshake::start(&central).expect("start");
    let response = send(&mut link, &command);
    assert!(matches!(
        handshake.on_open(
            &response,
            &stranger.central_root,
            imprint_apdu::host::personalize::unix_now()
        ),
        Err(OperatingError::Chain {
            what: "unit certificate",
            ..
        })
    ));
}

#[test]
fn expired_chains_and_malformed_answers_are_refused() {
    let pki = Pki::new();
    let central = authority(&pki.central_key, &pki.central_root);
    let mut link = operating_module(&pki);
    let (handshake, command) = OperatingHandshake::start(&central).expect("start");
    let response = send(&mut link, &command);
    assert!(matches!(
        handshake.on_open(&response, &central.cert, u64::MAX / 2),
        Err(OperatingError::NotValidNow(_))
    ));

    let (handshake, _) = OperatingHandshake::start(&central).expect("start");
    let garbage = Response {
        data: vec![0x7C, 0x03, 0x01, 0x02, 0x03],
        sw: sw::OK,
    };
    assert!(matches!(
        handshake.on_open(
            &garbage,
            &central.cert,
            imprint_apdu::host::personalize::unix_now()
        ),
        Err(OperatingError::Malformed(_))
    ));
    let (challenge, _) = TransactionChallenge::start([0; 8]).expect("start");
    assert!(matches!(
        challenge.on_open(&Response {
            data: Vec::new(),
            sw: sw::DATA_NOT_FOUND
        }),
        Err(OperatingError::ModuleStatus {
            sw: sw::DATA_NOT_FOUND,
            ..
        })
    ));
}

#[test]
fn a_wrong_key_set_key_fails_the_module_confirmation() {
    let pki = Pki::new();
    let central = authority(&pki.central_key, &pki.central_root);
    let mut link = operating_module(&pki);
    install_key_set(&mut link, &central, [2; 16]);
    let serial = serial_of(&mut link);
    let (challenge, command) = TransactionChallenge::start(serial).expect("start");
    let claim = challenge
        .on_open(&send(&mut link, &command))
        .expect("claim");
    assert!(matches!(
        claim.verify(&[0; 32]),
        Err(OperatingError::BadConfirmation)
    ));
}

#[test]
fn messages_out_of_order_and_oversized_replies_are_refused() {
    let pki = Pki::new();
    let central = authority(&pki.central_key, &pki.central_root);
    let mut link = operating_module(&pki);
    let key = install_key_set(&mut link, &central, [3; 16]);
    let (mut session, _) = open_transactions(&mut link, &key);
    let first = pso(&mut link, proto::PSO_ENCIPHER, b"one");
    // One message at a time: the module waits for the receipt.
    assert_eq!(
        pso(&mut link, proto::PSO_ENCIPHER, b"two").sw,
        sw::CONDITIONS
    );
    session.open_message(&first.data).expect("first");
    assert!(matches!(
        session.open_message(&first.data),
        Err(OperatingError::BadMessage)
    ));
    let oversized = Receipt {
        number: 1,
        payload_digest: sha384(b"one"),
        reply: vec![0; REPLY_MAX + 1],
    };
    assert!(matches!(
        session.seal_receipt(&oversized),
        Err(OperatingError::BadMessage)
    ));
    // A receipt for another payload is refused by the module.
    let wrong = session
        .seal_receipt(&Receipt {
            number: 1,
            payload_digest: sha384(b"not one"),
            reply: Vec::new(),
        })
        .expect("sealed");
    assert_eq!(
        pso(&mut link, proto::PSO_DECIPHER, &wrong).sw,
        sw::SECURITY_STATUS
    );
    // A payload over the limit is refused before anything is sealed.
    let (_, _) = open_transactions(&mut link, &key);
    let too_long = vec![0u8; proto::TRANSACTION_PAYLOAD_MAX + 1];
    assert_eq!(
        pso(&mut link, proto::PSO_ENCIPHER, &too_long).sw,
        sw::WRONG_LENGTH
    );
}
