//! Claims 16–18 with the identification unit as the user's own card in a
//! second reader: `imprint-card --idunit` in one vpcd reader, the module
//! (`imprint-card --module`) in the other, and `imprint personalize
//! --require-identification --idunit-reader` through the machine's pcscd.

use std::path::Path;

use imprint_apdu::host::manufacture::manufacture;
use imprint_host::roles::Manufacturer;
use imprint_host::{demo, module};

mod common;
use common::*;

fn path(dir: &Path) -> String {
    dir.display().to_string()
}

#[test]
fn claim16_the_identification_unit_is_a_card_the_user_puts_in_a_second_reader() {
    if pcsc_stack().is_none() {
        return;
    }
    // Both readers: the lock order of every suite that takes both.
    let _locks = [Reader::index(0).lock(), Reader::index(1).lock()];
    let (idunit_reader, module_reader) = (Reader::index(0), Reader::index(1));
    let tmp = tempfile::tempdir().expect("tempdir");
    let world = tmp.path().join("world");
    demo::run_demo(&world, 1).expect("the three roles");
    let unit = path(&world.join("personalizer"));
    let manufacturer = Manufacturer::open(&world.join("manufacturer")).expect("manufacturer");

    // The module: manufactured, then a card in the module reader.
    let module_dir = tmp.path().join("module");
    let mut link = module::open(&module_dir, true).expect("module");
    let made = manufacture(&mut link, manufacturer.credentials(), 20).expect("manufacture");
    drop(link);
    // The id unit, issued by this unit with one value, then the user's card.
    let idunit_dir = tmp.path().join("idunit");
    let issued = imprint(&[
        "idunit",
        "issue",
        "--personalizer",
        &unit,
        "--dir",
        &path(&idunit_dir),
        "--values",
        "1",
    ]);
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let _module_card = insert_card(&module_reader, &module_dir, &["--quiet"]);
    let _idunit_card = insert_idunit(&idunit_reader, &idunit_dir);

    let personalize = |with_idunit: bool| {
        let mut args = vec![
            "personalize",
            "--personalizer",
            &unit,
            "--reader",
            &module_reader.name,
            "--require-identification",
        ];
        if with_idunit {
            args.extend(["--idunit-reader", &idunit_reader.name]);
        }
        imprint(&args)
    };

    // The unit's policy: no id unit, no personalization, no APDU to the module.
    let refused = personalize(false);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("requires an identification unit"),
        "{}",
        text(&refused.stderr)
    );

    // With the card in the second reader: 7 APDUs to the module, OPERATING.
    let done = personalize(true);
    let stdout = text(&done.stdout);
    assert!(done.status.success(), "{stdout}{}", text(&done.stderr));
    assert!(
        stdout.contains(&format!("serial:     {}", made.serial)),
        "{stdout}"
    );
    assert!(stdout.contains("APDUs:      7"), "{stdout}");
    let status = imprint(&["module", "status", "--reader", &module_reader.name]);
    assert!(
        text(&status.stdout).contains("lifecycle:   OPERATING"),
        "{}",
        text(&status.stdout)
    );
    let listed = imprint(&["idunit", "list", "--personalizer", &unit]);
    assert!(
        text(&listed.stdout).contains("open 0  used 1"),
        "{}",
        text(&listed.stdout)
    );

    // The value was one-off: the card has none left, and the unit issues nothing.
    let exhausted = personalize(true);
    assert!(!exhausted.status.success());
    assert!(
        text(&exhausted.stderr).contains("no identification values left"),
        "{}",
        text(&exhausted.stderr)
    );
    let journal = imprint(&["journal", "list", "--personalizer", &unit]);
    let journal = text(&journal.stdout);
    assert_eq!(
        journal
            .lines()
            .filter(|line| line.contains(&made.serial))
            .count(),
        1,
        "one certificate for this module: {journal}"
    );
}
