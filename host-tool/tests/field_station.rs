//! The field station (claim 12): a mobile personalization unit — its own key
//! and certificates in its own directory, its own journal — personalizes a
//! module connected directly to it, offline; its journal then moves to the
//! main unit's issuance database by `imprint journal export` / `import`.
//!
//! The claim body is generic over how the module is reached, like the other
//! claim tests (`imprint_tests::claims`), and runs in-process and through
//! pcscd. It lives here rather than in `imprint_tests::claims` because the
//! journal and its export are the host tool's (`imprint_host`), which the
//! shared test crate does not depend on.
//!
//! The negative tests drive the real `imprint` binary and check that the main
//! journal is unchanged after every refusal.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imprint_apdu::Lifecycle;
use imprint_apdu::host::status::read_status;
use imprint_apdu::host::{PersonalizationOptions, UnitCredentials, personalize};
use imprint_apdu::pki;
use imprint_central::display;
use imprint_central::keyfile;
use imprint_host::journal::SqliteJournal;
use imprint_host::journal::transfer::{self, encode_export, export_journal, parse_export};
use imprint_host::roles::{self, Personalizer};
use imprint_tests::claims::Harness;
use imprint_tests::{
    InProcessHarness, Pki, file_module, manufacture_with, new_central, new_unit, random_key,
};

mod common;
use common::*;

/// Writes `unit` as a personalization unit directory (what `imprint
/// personalizer init` + `install` leave), so the CLI and `Personalizer::open`
/// load it from disk.
fn write_unit_dir(dir: &Path, unit: &UnitCredentials) {
    keyfile::create_private_dir(dir).expect("unit dir");
    keyfile::write_signing_key(&dir.join(roles::PERSONALIZER_KEY), &unit.key).expect("key");
    for (name, cert) in [
        (roles::MANUFACTURER_CERT, &unit.manufacturer_root),
        (roles::BY_MANUFACTURER, &unit.cert_by_manufacturer),
        (roles::BY_CENTRAL, &unit.cert_by_central),
        (roles::CENTRAL_DELIVERY, &unit.central_delivery),
    ] {
        roles::write_certificate(&dir.join(name), cert).expect("certificate");
    }
}

/// Claim 12: a field unit, certified by the same manufacturer and central
/// system as the main unit, personalizes a module directly with its own key
/// and local journal; its export is imported into the main unit's journal,
/// where the entry carries its origin.
fn claim12<H: Harness>(harness: &mut H) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let field_dir = tmp.path().join("field");
    let main_dir = tmp.path().join("main");
    write_unit_dir(
        &field_dir,
        &new_unit(
            &pki.manufacturer,
            &pki.central_key,
            &pki.central_root,
            "Field unit",
        ),
    );
    write_unit_dir(&main_dir, &pki.unit);

    // On the laptop: the unit's key and certificates from its directory, the
    // module in a reader connected to it; no central system is reachable.
    let field = Personalizer::open(&field_dir).expect("field unit");
    let (mut link, _module) = harness.blank_module();
    manufacture_with(&mut link, &pki.manufacturer);
    let mut field_journal =
        SqliteJournal::open(&roles::journal_path(&field_dir)).expect("field journal");
    let report = personalize(
        &mut link,
        &mut field_journal,
        &field,
        PersonalizationOptions::default(),
    )
    .expect("offline personalization by the field unit");
    let status = read_status(&mut link).expect("status");
    assert_eq!(status.info.lifecycle, Lifecycle::Operating);
    let unit_cert = status.unit_cert.expect("unit certificate in the module");
    assert_eq!(unit_cert.der(), field.cert_by_central.der());
    pki::verify_issued_by(&report.certificate, &unit_cert, 0).expect("module cert by field unit");
    pki::verify_issued_by(&unit_cert, &pki.central_root, 1).expect("field unit by the central");

    // Back at the office: export, import into the main journal.
    let export = export_journal(&field_journal, &field).expect("export");
    let main = Personalizer::open(&main_dir).expect("main unit");
    let mut main_journal =
        SqliteJournal::open(&roles::journal_path(&main_dir)).expect("main journal");
    let imported = transfer::import_export(&mut main_journal, &export, &main).expect("import");
    assert_eq!(imported.inserted, 1);

    let entries = main_journal.entries().expect("entries");
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.certificate, report.certificate.der());
    assert_eq!(entry.serial, report.serial);
    assert_eq!(entry.status.as_str(), "installed");
    let origin = entry
        .origin
        .as_ref()
        .expect("imported entries carry their origin");
    assert_eq!(origin.unit, display::fingerprint(&field.cert_by_central));
    assert_eq!(origin.id, report.journal_id);
}

#[test]
fn claim12_mobile_personalization_unit_works_offline_and_its_journal_is_imported() {
    claim12(&mut InProcessHarness::default());
}

#[test]
fn claim12_mobile_personalization_unit_works_offline_and_its_journal_is_imported_over_pcscd() {
    let Some(mut harness) = PcscHarness::new(false) else {
        return;
    };
    claim12(&mut harness);
}

// ------------------------------------------------------------- the CLI, refusals

fn imprint() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imprint"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> Output {
    command.output().expect("spawn imprint")
}

fn ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Requires exit status 1 and returns the `error:` line.
fn refused(command: &mut Command) -> String {
    let output = run(command);
    let stderr = text(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{command:?} should fail:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// A main unit and a field unit of one deployment, the field unit's journal
/// holding two personalizations (one module personalized twice) and its
/// export written by `imprint journal export`.
struct Station {
    tmp: tempfile::TempDir,
    pki: Pki,
    field: UnitCredentials,
    export: Vec<u8>,
}

impl Station {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new();
        let field = new_unit(
            &pki.manufacturer,
            &pki.central_key,
            &pki.central_root,
            "Field unit",
        );
        write_unit_dir(&tmp.path().join("field"), &field);
        write_unit_dir(&tmp.path().join("main"), &pki.unit);
        let station = Self {
            tmp,
            pki,
            field,
            export: Vec::new(),
        };
        station.personalize_into(&station.field_dir(), &station.field, 2);
        let out = station.path("export.bin");
        let said = ok(imprint()
            .args(["journal", "export", "--personalizer"])
            .arg(station.field_dir())
            .arg("--out")
            .arg(&out));
        assert!(said.contains("exported 2 entries"), "{said}");
        let export = std::fs::read(&out).expect("export file");
        Self { export, ..station }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn field_dir(&self) -> PathBuf {
        self.path("field")
    }

    fn main_dir(&self) -> PathBuf {
        self.path("main")
    }

    /// Personalizes one fresh module `times` times with `unit`, journaled in
    /// the journal of the unit directory `dir`.
    fn personalize_into(&self, dir: &Path, unit: &UnitCredentials, times: usize) {
        let module = tempfile::tempdir().expect("module dir");
        let mut link = file_module(module.path());
        manufacture_with(&mut link, &self.pki.manufacturer);
        let mut journal = SqliteJournal::open(&roles::journal_path(dir)).expect("journal");
        for _ in 0..times {
            personalize(
                &mut link,
                &mut journal,
                unit,
                PersonalizationOptions::default(),
            )
            .expect("personalize");
        }
    }

    /// Rows in the main journal (0 while it does not exist).
    fn main_rows(&self) -> usize {
        let path = roles::journal_path(&self.main_dir());
        if !path.exists() {
            return 0;
        }
        SqliteJournal::open_existing(&path)
            .expect("main journal")
            .entries()
            .expect("entries")
            .len()
    }

    /// Runs `imprint journal import` of `bytes` into the main unit.
    fn import(&self, bytes: &[u8]) -> Output {
        let file = self.path(&format!("in-{}.bin", unique()));
        std::fs::write(&file, bytes).expect("write");
        run(imprint()
            .args(["journal", "import", "--personalizer"])
            .arg(self.main_dir())
            .arg("--in")
            .arg(&file))
    }

    /// Requires the import of `bytes` to be refused with a message containing
    /// `expected`, and the main journal unchanged.
    fn refuses(&self, bytes: &[u8], expected: &str) -> String {
        let before = self.main_rows();
        let output = self.import(bytes);
        let stderr = text(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "should be refused:\n{stderr}"
        );
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert_eq!(self.main_rows(), before, "the main journal changed");
        stderr
    }
}

#[test]
fn export_import_and_list_through_the_cli() {
    let station = Station::new();
    let output = station.import(&station.export);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let said = text(&output.stdout);
    assert!(
        said.contains("2 new, 0 updated, 0 already present"),
        "{said}"
    );
    assert_eq!(station.main_rows(), 2);

    let listing = ok(imprint()
        .args(["journal", "list", "--personalizer"])
        .arg(station.main_dir()));
    let origin = display::fingerprint(&station.field.cert_by_central);
    assert!(listing.contains("origin (unit#id)"), "{listing}");
    assert!(
        listing.contains(&format!("{}#1", &origin[..16])),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("{}#2", &origin[..16])),
        "{listing}"
    );
    let field_listing = ok(imprint()
        .args(["journal", "list", "--personalizer"])
        .arg(station.field_dir()));
    assert!(field_listing.contains("local"), "{field_listing}");

    // An export is never overwritten.
    let stderr = refused(
        imprint()
            .args(["journal", "export", "--personalizer"])
            .arg(station.field_dir())
            .arg("--out")
            .arg(station.path("export.bin")),
    );
    assert!(stderr.contains("exists"), "{stderr}");
}

#[test]
fn a_flipped_byte_anywhere_is_refused() {
    let station = Station::new();
    let len = station.export.len();
    // The magic, the version, inside each certificate, inside the entries,
    // the trailer's count, hash and signature, the last byte.
    for at in [
        0,
        8,
        20,
        700,
        1500,
        len / 2,
        len - 150,
        len - 100,
        len - 30,
        len - 1,
    ] {
        let mut flipped = station.export.clone();
        flipped[at] ^= 0x20;
        station.refuses(&flipped, "journal export refused: ");
    }
    station.refuses(
        &{
            let mut bad = station.export.clone();
            bad[8] = 2;
            bad
        },
        "version 2 is not supported",
    );
    station.refuses(
        &{
            let mut bad = station.export.clone();
            bad[0] ^= 1;
            bad
        },
        "bad magic",
    );
}

#[test]
fn a_truncated_or_extended_export_is_refused() {
    let station = Station::new();
    let parsed = parse_export(&station.export).expect("parse");
    let trailer_at = station.export.len() - transfer::TRAILER_LEN - 5;
    station.refuses(&station.export[..trailer_at], "no trailer after 2 entries");
    station.refuses(&station.export[..station.export.len() - 1], "truncated");
    station.refuses(&station.export[..100], "truncated");
    station.refuses(&[], "truncated");
    let mut extended = station.export.clone();
    extended.extend_from_slice(b"more");
    station.refuses(&extended, "4 bytes after its trailer");
    assert_eq!(parsed.entries.len(), 2);
}

#[test]
fn an_entry_removed_and_re_signed_by_an_attacker_is_refused() {
    let station = Station::new();
    let parsed = parse_export(&station.export).expect("parse");
    let forged = encode_export(
        &station.field.cert_by_manufacturer,
        &station.field.cert_by_central,
        &parsed.entries[1..],
        &random_key(),
    )
    .expect("encode");
    station.refuses(
        &forged,
        "signature does not verify with the field unit's key",
    );

    // Without re-signing: the original trailer no longer matches.
    let mut spliced = forged[..forged.len() - transfer::TRAILER_LEN].to_vec();
    spliced.extend_from_slice(&station.export[station.export.len() - transfer::TRAILER_LEN..]);
    station.refuses(
        &spliced,
        "the trailer counts 2 entries but the export holds 1",
    );
}

#[test]
fn an_export_of_a_unit_of_another_central_system_is_refused() {
    let station = Station::new();
    let (other_key, other_root) = new_central("Other central");
    let stranger = new_unit(
        &station.pki.manufacturer,
        &other_key,
        &other_root,
        "Stranger unit",
    );
    let dir = station.path("stranger");
    write_unit_dir(&dir, &stranger);
    station.personalize_into(&dir, &stranger, 1);
    let journal = SqliteJournal::open_existing(&roles::journal_path(&dir)).expect("journal");
    let export = export_journal(&journal, &stranger).expect("export");
    station.refuses(
        &export,
        "certificate from the central system does not chain to this unit's central system",
    );
}

#[test]
fn an_entry_not_issued_by_the_field_unit_is_refused() {
    let station = Station::new();
    // The field unit's journal gains a certificate issued by another unit of
    // the same deployment (here the main unit), then exports, signed by the
    // field unit: the signature is good, the entry is not the field unit's.
    station.personalize_into(&station.field_dir(), &station.pki.unit, 1);
    let field = Personalizer::open(&station.field_dir()).expect("field");
    let journal =
        SqliteJournal::open_existing(&roles::journal_path(&station.field_dir())).expect("journal");
    let export = export_journal(&journal, &field).expect("export");
    station.refuses(
        &export,
        "entry 3 (id 3): the module certificate was not issued by the field unit",
    );
}

#[test]
fn a_second_import_of_the_same_export_is_refused() {
    let station = Station::new();
    let output = station.import(&station.export);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(station.main_rows(), 2);
    station.refuses(&station.export, "was already imported at");
}

#[test]
fn the_main_unit_refuses_its_own_export() {
    let station = Station::new();
    station.personalize_into(&station.main_dir(), &station.pki.unit, 1);
    let main = Personalizer::open(&station.main_dir()).expect("main");
    let journal =
        SqliteJournal::open_existing(&roles::journal_path(&station.main_dir())).expect("journal");
    let export = export_journal(&journal, &main).expect("export");
    station.refuses(&export, "made by this unit itself");
}
