//! `imprint-card` as a card in a vpcd reader of the machine's `pcscd`, reached
//! over the real PC/SC stack (`opensc-tool`, and the `pcsc` crate).
//!
//! ```text
//!  test ──opensc-tool / pcsc──▶ pcscd ──vpcd reader "Virtual PCD 00 0n"──TCP──▶ imprint-card ──▶ module dir
//! ```
//!
//! The tests use the second reader ("Virtual PCD 00 01", TCP 35964) unless
//! `IMPRINT_TEST_VPCD_READER` names another index. Tests (of any binary) that
//! use a reader serialize on `imprint-vpcd-<port>.lock` in the temp directory.
//!
//! Without a running `pcscd`, root starts one (`pcscd -f`); anyone else
//! skips with `SKIPPED: …` on standard error, except under `CI=true`, where
//! that is a failure. The test that restarts `pcscd` disturbs every other user
//! of it, so outside CI it runs only with `IMPRINT_TEST_PCSCD_RESTART=1`.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use imprint_apdu::keymem::file::FileKeyMemory;

mod common;
use common::*;

const SELECT: [u8; 15] = [
    0x00, 0xA4, 0x04, 0x00, 0x09, 0xF0, 0x49, 0x4D, 0x50, 0x52, 0x49, 0x4E, 0x54, 0x01, 0x00,
];
const GET_IDENTITY_CERT: [u8; 5] = [0x00, 0xCA, 0xDF, 0x21, 0x00];
const GENERATE_IDENTITY: [u8; 5] = [0x00, 0x47, 0x80, 0x01, 0x00];
/// The first part of a chained PUT DATA (CLA b5 set).
const CHAIN_PART: [u8; 6] = [0x10, 0xDB, 0x3F, 0xFF, 0x01, 0x00];

// ---------------------------------------------------------------- PC/SC helpers

fn connect(reader: &Reader) -> (pcsc::Context, pcsc::Card) {
    let context = pcsc::Context::establish(pcsc::Scope::User).expect("SCardEstablishContext");
    let name = CString::new(reader.name.clone()).expect("reader name");
    let card = context
        .connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        .expect("SCardConnect");
    (context, card)
}

fn transmit(card: &pcsc::Card, apdu: &[u8]) -> Vec<u8> {
    let mut buffer = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    card.transmit(apdu, &mut buffer)
        .unwrap_or_else(|err| panic!("SCardTransmit {apdu:02X?}: {err}"))
        .to_vec()
}

fn sw(response: &[u8]) -> u16 {
    assert!(response.len() >= 2, "{response:02X?}");
    u16::from_be_bytes([response[response.len() - 2], response[response.len() - 1]])
}

fn has_serial(select_response: &[u8]) -> bool {
    select_response.windows(2).any(|w| w == [0xC1, 0x08])
}

fn hex_colon(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn imprint(dir: &Path, args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("imprint");
    assert!(
        output.status.success(),
        "imprint {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------- tests over pcscd

#[test]
fn select_through_pcscd_with_opensc_tool() {
    if pcsc_stack().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    imprint(
        tmp.path(),
        &["manufacturer", "init", "--dir", "M", "--name", "Test maker"],
    );
    imprint(
        tmp.path(),
        &[
            "manufacturer",
            "manufacture",
            "--dir",
            "M",
            "--module",
            "MOD",
        ],
    );
    let reader = Reader::for_tests();
    let _lock = reader.lock();
    let card = insert_card(&reader, &tmp.path().join("MOD"), &[]);

    let atr = Command::new("opensc-tool")
        .args(["-r", &reader.name, "-a"])
        .output()
        .expect("opensc-tool -a");
    assert_eq!(
        String::from_utf8_lossy(&atr.stdout).trim(),
        "3b:88:80:01:49:4d:50:52:49:4e:54:01:5d"
    );

    let output = Command::new("opensc-tool")
        .args(["-r", &reader.name, "-s", &hex_colon(&SELECT)])
        .output()
        .expect("opensc-tool -s");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("Received (SW1=0x90, SW2=0x00)"),
        "opensc-tool: {stdout}\n{}\nimprint-card said:\n{}",
        String::from_utf8_lossy(&output.stderr),
        card.log()
    );
    // The FCI names our AID and, the module being manufactured, its serial (C1 08).
    assert!(
        stdout.contains("84 09 F0 49 4D 50 52 49 4E 54 01"),
        "{stdout}"
    );
    assert!(stdout.contains("C1 08"), "{stdout}");
    assert!(card.log().contains("connected to vpcd"), "{}", card.log());
}

#[test]
fn reset_and_power_off_drop_volatile_state_and_keep_the_module() {
    if pcsc_stack().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let reader = Reader::for_tests();
    let _lock = reader.lock();
    let _card = insert_card(&reader, &tmp.path().join("MOD"), &["--quiet"]);

    let (context, mut pcsc_card) = connect(&reader);
    assert_eq!(sw(&transmit(&pcsc_card, &SELECT)), 0x9000);
    assert_eq!(sw(&transmit(&pcsc_card, &GET_IDENTITY_CERT)), 0x6A88);
    // Persistent: the identity key. Volatile: the selection and a pending chain.
    assert_eq!(sw(&transmit(&pcsc_card, &GENERATE_IDENTITY)), 0x9000);
    assert_eq!(sw(&transmit(&pcsc_card, &CHAIN_PART)), 0x9000);

    pcsc_card
        .reconnect(
            pcsc::ShareMode::Shared,
            pcsc::Protocols::ANY,
            pcsc::Disposition::ResetCard,
        )
        .expect("SCardReconnect (reset)");
    // Without the reset this would be 6883 (the chain's last command expected).
    assert_eq!(sw(&transmit(&pcsc_card, &GET_IDENTITY_CERT)), 0x6985);
    let select = transmit(&pcsc_card, &SELECT);
    assert_eq!(sw(&select), 0x9000);
    assert!(has_serial(&select), "the identity key survives a reset");
    assert_eq!(sw(&transmit(&pcsc_card, &CHAIN_PART)), 0x9000);

    pcsc_card
        .disconnect(pcsc::Disposition::UnpowerCard)
        .map_err(|(_, err)| err)
        .expect("SCardDisconnect (unpower)");
    let name = CString::new(reader.name.clone()).expect("reader name");
    let pcsc_card = context
        .connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        .expect("SCardConnect after power off");
    assert_eq!(sw(&transmit(&pcsc_card, &GET_IDENTITY_CERT)), 0x6985);
    let select = transmit(&pcsc_card, &SELECT);
    assert!(
        has_serial(&select),
        "the identity key survives a power cycle"
    );
    // Unknown instructions (OpenSC probes with them) get a clean status word.
    assert_eq!(sw(&transmit(&pcsc_card, &[0x00, 0x12, 0x00, 0x00])), 0x6D00);
}

#[test]
fn fail_after_apdus_exits_86_without_answering_and_keeps_the_commit() {
    if pcsc_stack().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let module = tmp.path().join("MOD");
    let reader = Reader::for_tests();
    let _lock = reader.lock();
    let mut card = insert_card(&reader, &module, &["--fail-after-apdus", "2"]);
    {
        let (_context, pcsc_card) = connect(&reader);
        assert_eq!(sw(&transmit(&pcsc_card, &SELECT)), 0x9000);
        let mut buffer = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        // vpcd turns the vanished card into an empty answer rather than an error.
        let cut = pcsc_card.transmit(&GENERATE_IDENTITY, &mut buffer);
        assert!(
            cut.is_err() || cut.is_ok_and(<[u8]>::is_empty),
            "no response after the cut"
        );
    }
    let status = card.wait_exit(WAIT);
    assert_eq!(status.code(), Some(86), "{}", card.log());
    assert!(card.log().contains("fault injection"), "{}", card.log());

    // Power comes back: the key generated by the unanswered APDU is there.
    let _card = insert_card(&reader, &module, &[]);
    let (_context, pcsc_card) = connect(&reader);
    let select = transmit(&pcsc_card, &SELECT);
    assert_eq!(sw(&select), 0x9000);
    assert!(has_serial(&select), "the commit before the cut survives");
}

/// Restarts the machine's pcscd; every PC/SC user sees its readers vanish.
#[test]
fn the_card_survives_a_pcscd_restart() {
    if pcsc_stack().is_none() {
        return;
    }
    let in_ci = std::env::var("CI").is_ok_and(|ci| ci == "true");
    let asked = std::env::var("IMPRINT_TEST_PCSCD_RESTART").is_ok_and(|v| v == "1");
    if !in_ci && !asked {
        eprintln!(
            "SKIPPED: restarting pcscd disturbs other PC/SC users; set IMPRINT_TEST_PCSCD_RESTART=1"
        );
        return;
    }
    if !is_root() {
        skip("only root may restart pcscd");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // Both readers go away: hold both locks.
    let _locks = [Reader::index(0).lock(), Reader::index(1).lock()];
    let reader = Reader::for_tests();
    let card = insert_card(&reader, &tmp.path().join("MOD"), &[]);
    {
        let (_context, pcsc_card) = connect(&reader);
        assert_eq!(sw(&transmit(&pcsc_card, &SELECT)), 0x9000);
    }

    // pcscd pads its pid file with NUL bytes.
    let pid = std::fs::read_to_string(PCSCD_PID_FILE).expect("pcscd pid file");
    let pid = pid.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    let status = Command::new("kill").arg(pid).status().expect("kill pcscd");
    assert!(status.success());
    wait_until(WAIT, "pcscd to stop", || !pcscd_alive());
    wait_until(WAIT, "the card to notice", || {
        card.log().contains("disconnected")
    });
    start_pcscd();

    wait_for_card(&reader, &card);
    let (_context, pcsc_card) = connect(&reader);
    assert_eq!(sw(&transmit(&pcsc_card, &SELECT)), 0x9000);
    let log = card.log();
    assert_eq!(log.matches("connected to vpcd").count(), 2, "{log}");
}

/// Times SELECT round trips through pcscd and prints the median. A
/// measurement, not an assertion (`cargo test --test vpcd_card latency -- --nocapture`).
#[test]
fn select_latency_through_pcscd() {
    if pcsc_stack().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let reader = Reader::for_tests();
    let _lock = reader.lock();
    let _card = insert_card(&reader, &tmp.path().join("MOD"), &["--quiet"]);
    let (_context, pcsc_card) = connect(&reader);
    let mut buffer = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    for _ in 0..50 {
        pcsc_card.transmit(&SELECT, &mut buffer).expect("warm-up");
    }
    const ROUNDS: usize = 1000;
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let response = pcsc_card.transmit(&SELECT, &mut buffer).expect("SELECT");
        times.push(start.elapsed());
        assert_eq!(sw(response), 0x9000);
    }
    times.sort();
    let at = |q: f64| times[((ROUNDS as f64 - 1.0) * q) as usize];
    eprintln!(
        "SELECT through pcscd ({ROUNDS} rounds): median {:?}, p90 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.9),
        at(0.99),
        times[ROUNDS - 1]
    );
}

// ---------------------------------------------------------------- tests without pcscd

/// A vpcd stand-in on a loopback port: SIGTERM while connected, and while
/// waiting to reconnect, ends the card with status 0.
#[test]
fn sigterm_stops_the_card_with_status_0() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut card = CardProcess::start(&tmp.path().join("MOD"), &addr, &[]);
    let (mut stream, _) = listener.accept().expect("the card connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(&[0, 1, 4]).expect("get ATR");
    let mut atr = [0u8; 15];
    stream.read_exact(&mut atr).expect("ATR");
    assert_eq!(&atr[..2], [0, 13]);
    assert_eq!(&atr[2..6], [0x3B, 0x88, 0x80, 0x01]);

    // The reader goes away; the card keeps trying.
    drop(stream);
    drop(listener);
    wait_until(WAIT, "the card to retry", || {
        card.log().contains("cannot reach")
    });
    card.signal("-TERM");
    let status = card.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{}", card.log());
    let log = card.log();
    for line in [
        "connected to vpcd",
        "disconnected",
        "reconnecting",
        "stopped",
    ] {
        assert!(log.contains(line), "{line:?} missing from:\n{log}");
    }

    // And while connected, blocked in a read.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut card = CardProcess::start(&tmp.path().join("MOD"), &addr, &["--quiet"]);
    let (mut stream, _) = listener.accept().expect("the card connects");
    stream.write_all(&[0, 1, 4]).expect("get ATR");
    stream.read_exact(&mut atr).expect("ATR");
    card.signal("-INT");
    assert_eq!(card.wait_exit(WAIT).code(), Some(0), "{}", card.log());
    assert_eq!(card.log(), "", "--quiet");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF");
    assert!(rest.is_empty());
}

#[test]
fn a_module_in_use_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let module = tmp.path().join("MOD");
    let _held = FileKeyMemory::open(&module).expect("lock the module");
    let output = Command::new(env!("CARGO_BIN_EXE_imprint-card"))
        .arg("--module")
        .arg(&module)
        .args(["--vpcd", "127.0.0.1:9"])
        .output()
        .expect("imprint-card");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
}
