//! Claims 14 and 15 through the real PC/SC stack: the module is
//! `imprint-card` in a vpcd reader of the machine's `pcscd`, the unit a real
//! `imprint personalizer serve` on loopback, and the relay `imprint relay
//! --reader`. For claim 15 the card runs with `--direct`: a module with a
//! network of its own, which finishes over its own connection to the unit.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use imprint_apdu::Lifecycle;
use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::host::status::read_status;
use imprint_apdu::pki::verify_issued_by;
use imprint_host::roles::{Manufacturer, Personalizer};
use imprint_host::{demo, pcsc::PcscTransport};
use imprint_tests::claims::Harness;

mod common;
use common::*;

/// `imprint relay --reader READER` to `service` under the key in `relay_dir`.
fn relay(reader: &str, service: &Service, relay_dir: &Path) -> Output {
    imprint(&[
        "relay",
        "--reader",
        reader,
        "--personalizer",
        &service.address,
        "--relay-key",
        &relay_dir.display().to_string(),
    ])
}

/// The three roles (the demo's), and a card manufactured in the harness's
/// reader, released for the relay to open. Returns the unit's directory,
/// the card's serial and the reader.
fn world_and_card(harness: &mut PcscHarness, tmp: &Path) -> (std::path::PathBuf, String, String) {
    let world = tmp.join("world");
    demo::run_demo(&world, 1).expect("the three roles");
    let manufacturer = Manufacturer::open(&world.join("manufacturer")).expect("manufacturer");
    let (mut link, _) = harness.blank_module();
    let made = manufacture(&mut link, manufacturer.credentials(), 20).expect("manufacture");
    drop(link);
    (
        world.join("personalizer"),
        made.serial,
        harness.reader_name().to_owned(),
    )
}

/// `imprint relay init --dir DIR`.
fn init_relay(dir: &Path) {
    let output = imprint(&["relay", "init", "--dir", &dir.display().to_string()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

/// `imprint personalizer relay register` of the relay key in `relay_dir`.
fn register_relay(unit: &str, name: &str, relay_dir: &Path) {
    let output = imprint(&[
        "personalizer",
        "relay",
        "register",
        "--personalizer",
        unit,
        "--name",
        name,
        "--public-key",
        &relay_dir.join("relay.pub.pem").display().to_string(),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

/// The card in `reader` is OPERATING with a module certificate from the unit in `unit_dir`.
fn assert_operating_with_a_certificate_from(reader: &str, unit_dir: &Path) {
    let transport = PcscTransport::open(reader, imprint_host::pcsc::ConnectOptions::exclusive())
        .expect("reader");
    let mut link = imprint_apdu::host::CardLink::new(transport);
    let status = read_status(&mut link).expect("status");
    drop(link);
    assert_eq!(status.info.lifecycle, Lifecycle::Operating);
    let unit = Personalizer::open(unit_dir).expect("unit");
    verify_issued_by(
        &status.module_cert.expect("module certificate"),
        &unit.cert_by_central,
        0,
    )
    .expect("issued by the unit");
}

/// `imprint personalizer serve`, stopped when dropped.
struct Service {
    child: Child,
    address: String,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Service {
    fn start(unit: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imprint"))
            .args(["personalizer", "serve", "--personalizer"])
            .arg(unit)
            .args(["--listen", "127.0.0.1:0", "--registered-relays-only"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("imprint personalizer serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("first line");
        // Keep reading: the service logs one line per connection, and a
        // closed standard output would end it.
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let address = line
            .trim()
            .strip_prefix("personalizer listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            child,
            address,
            lines,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn claim14_mobile_appliance_relays_and_identifies_the_module_indirectly_over_pcscd() {
    let Some(mut harness) = PcscHarness::new(false) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (unit_dir, serial, reader) = world_and_card(&mut harness, tmp.path());

    // The relay's credential, registered with the unit.
    let relay_dir = tmp.path().join("phone");
    let stranger_dir = tmp.path().join("stranger");
    init_relay(&relay_dir);
    init_relay(&stranger_dir);
    let unit_arg = unit_dir.display().to_string();
    register_relay(&unit_arg, "phone", &relay_dir);

    let service = Service::start(&unit_dir, &[]);

    // An unregistered relay is refused; the card is untouched.
    let refused = relay(&reader, &service, &stranger_dir);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("not registered"),
        "{}",
        text(&refused.stderr)
    );

    // The registered relay: the card ends OPERATING with the unit's certificate.
    let relayed = relay(&reader, &service, &relay_dir);
    let stdout = text(&relayed.stdout);
    assert!(
        relayed.status.success(),
        "{stdout}{}",
        text(&relayed.stderr)
    );
    assert!(
        stdout.contains(&format!("serial:     {}", serial)),
        "{stdout}"
    );

    assert_operating_with_a_certificate_from(&reader, &unit_dir);

    // The unit recorded which relay presented which module.
    let list = imprint(&["personalizer", "relay", "list", "--personalizer", &unit_arg]);
    let listing = text(&list.stdout);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(listing.contains("relay phone key="), "{listing}");
    let row = listing
        .lines()
        .find(|line| line.starts_with(&format!("serial={} relay=phone ", serial)))
        .unwrap_or_else(|| panic!("no presentation by phone: {listing}"));
    assert!(row.ends_with("outcome=installed"), "{row}");
    assert!(!row.contains("journal=-"), "{row}");

    // The service logged both connections.
    let logged: Vec<String> = (0..2)
        .map(|_| {
            service
                .lines
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("a log line")
        })
        .collect();
    assert!(
        logged[0].contains("result=failed") && logged[0].contains("relay=unregistered:"),
        "{logged:?}"
    );
    assert!(
        logged[1].contains("relay=phone")
            && logged[1].contains(&format!("serial={}", serial))
            && logged[1].contains("result=installed"),
        "{logged:?}"
    );
}

#[test]
fn claim15_relay_over_pcscd_only_sets_up_the_modules_direct_connection_to_the_unit() {
    let Some(harness) = PcscHarness::new(false) else {
        return;
    };
    let mut harness = harness.with_card_args(&["--direct"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (unit_dir, serial, reader) = world_and_card(&mut harness, tmp.path());

    let relay_dir = tmp.path().join("phone");
    init_relay(&relay_dir);
    let unit_arg = unit_dir.display().to_string();
    register_relay(&unit_arg, "phone", &relay_dir);
    let service = Service::start(&unit_dir, &["--direct"]);

    let relayed = relay(&reader, &service, &relay_dir);
    let stdout = text(&relayed.stdout);
    assert!(
        relayed.status.success(),
        "{stdout}{}",
        text(&relayed.stderr)
    );
    // Through pcscd the relay carried SELECT twice, the handshake and the
    // sealed offer; the card's own process did the rest over the network.
    assert!(stdout.contains("relayed:    5 commands"), "{stdout}");
    assert!(
        stdout.contains("direct:     the module finished over its own connection"),
        "{stdout}"
    );

    assert_operating_with_a_certificate_from(&reader, &unit_dir);

    let logged = service
        .lines
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a log line");
    assert!(
        logged.contains(&format!("serial={}", serial))
            && logged.contains("relay=phone")
            && logged.contains("direct=127.0.0.1:")
            && logged.contains("result=installed"),
        "{logged}"
    );
    let list = imprint(&["personalizer", "relay", "list", "--personalizer", &unit_arg]);
    let listing = text(&list.stdout);
    let row = listing
        .lines()
        .find(|line| line.starts_with(&format!("serial={} relay=phone ", serial)))
        .unwrap_or_else(|| panic!("no presentation: {listing}"));
    assert!(row.contains(" direct=127.0.0.1:"), "{row}");
    assert!(row.ends_with("outcome=installed"), "{row}");
}
