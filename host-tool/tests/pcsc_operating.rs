//! The operating part of the claims (1, 4, 11, 21) through the real PC/SC
//! stack: the module is `imprint-card` in a vpcd reader of the machine's
//! `pcscd`, the central system a real `imprint-central serve` on loopback,
//! and this process the relaying host. Same bodies as the in-process suite
//! (`tests/operating.rs`). The `imprint connect` and `imprint transact`
//! commands are exercised on a card the same way.

use std::process::Command;

use imprint_tests::Pki;
use imprint_tests::central::CentralServer;
use imprint_tests::operating::{self, operating_module};

mod common;
use common::*;

over_pcscd! {
    claim01_operating_channel_uses_the_module_key_and_its_certificate_over_pcscd => operating::claim01_operating,
    claim04_module_checks_the_central_system_with_the_delivered_key_over_pcscd => operating::claim04_central_authenticated,
    claim11_symmetric_key_set_is_exchanged_and_kept_in_the_key_memory_over_pcscd => operating::claim11_key_set_for_transactions,
    claim21_central_system_serves_checks_and_revokes_over_pcscd => operating::claim21_central_system,
}

#[test]
fn imprint_connect_and_transact_relay_a_card_to_the_central_system() {
    let Some(mut harness) = PcscHarness::new(false) else {
        return;
    };
    let pki = Pki::new();
    let server = CentralServer::start(&pki, &[]);
    let (link, _, serial) = operating_module(&mut harness, &pki);
    // The command-line tool opens the reader itself.
    drop(link);
    let reader = harness.reader_name().to_owned();

    let connect = Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(["connect", "--reader", &reader, "--central", &server.address])
        .output()
        .expect("imprint connect");
    let stdout = String::from_utf8_lossy(&connect.stdout);
    assert!(
        connect.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&connect.stderr)
    );
    assert!(
        stdout.contains(&format!("serial:     {serial}")),
        "{stdout}"
    );
    assert!(stdout.contains("commands:   4"), "{stdout}");

    let transact = Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args([
            "transact",
            "--reader",
            &reader,
            "--central",
            &server.address,
        ])
        .args(["--data", "coffee 2.40", "--data", "tea 1.90"])
        .output()
        .expect("imprint transact");
    let stdout = String::from_utf8_lossy(&transact.stdout);
    assert!(
        transact.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&transact.stderr)
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.starts_with("receipt "))
            .count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("reply \"accepted\""), "{stdout}");
    assert_eq!(server.journal().len(), 2);

    // Revoked: the tool says why and exits 1.
    assert!(
        server
            .cli(&["revoke", "--module", &serial])
            .status
            .success()
    );
    let refused = Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args([
            "transact",
            "--reader",
            &reader,
            "--central",
            &server.address,
        ])
        .args(["--data", "after"])
        .output()
        .expect("imprint transact");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the module is revoked"), "{stderr}");
    assert_eq!(server.journal().len(), 2);
}
