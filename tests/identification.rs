//! The identification unit (claims 16–18) refused: a forged answer, an
//! answer replayed to a new challenge, a foreign id unit, a reused value, an
//! exhausted id unit, and a module handed nothing. Each is refused with a
//! clear message; nothing is issued; the module is unchanged (no module
//! key, still PERSONALIZATION, no answer left in its volatile memory).

use imprint_apdu::host::identification::{
    IdUnitError, IdentificationRefusal, IdentificationSource,
};
use imprint_apdu::host::personalize::{Action, Personalization};
use imprint_apdu::host::{
    CardLink, InProcessTransport, PersonalizationOptions, PersonalizeError,
    personalize_with_identification,
};
use imprint_apdu::idunit::{CHALLENGE_LEN, IdentificationAnswer};
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_tests::*;
use zeroize::Zeroizing;

type Module = CardLink<InProcessTransport<MemoryKeyMemory>>;

fn options() -> PersonalizationOptions {
    PersonalizationOptions {
        require_identification: true,
        ..PersonalizationOptions::default()
    }
}

fn manufactured_module(pki: &Pki) -> Module {
    let mut link = ram_module();
    manufactured(&mut link, pki);
    link
}

/// Nothing issued, the module unchanged, no answer left behind.
fn assert_refused_cleanly(module: &mut Module, journal: &RecordingJournal) {
    let applet = module.transport_mut().applet_mut();
    assert_untouched(applet, journal);
    assert!(!applet.holds_identification(), "no answer left behind");
}

/// Personalizes `module` at `pki`'s unit, requiring an identification,
/// with `idunit` as the id unit the user connected.
fn identify(
    module: &mut Module,
    journal: &mut RecordingJournal,
    pki: &Pki,
    idunit: &mut dyn IdentificationSource,
) -> Result<imprint_apdu::host::PersonalizationReport, PersonalizeError> {
    personalize_with_identification(module, journal, &pki.unit, options(), Some(idunit))
}

/// An id unit that answers with a fixed answer, whatever the challenge.
struct Fixed(Vec<u8>);

impl IdentificationSource for Fixed {
    fn authenticate(
        &mut self,
        _challenge: &[u8; CHALLENGE_LEN],
    ) -> Result<Zeroizing<Vec<u8>>, IdUnitError> {
        Ok(Zeroizing::new(self.0.clone()))
    }
}

fn refused(err: &PersonalizeError) -> &IdentificationRefusal {
    match err {
        PersonalizeError::IdentificationRefused(refusal) => refusal,
        other => panic!("expected an identification refusal, got {other}"),
    }
}

#[test]
fn a_forged_mac_is_refused() {
    let pki = Pki::new();
    let mut module = manufactured_module(&pki);
    let mut journal = RecordingJournal::default();
    let record = journal.issue_idunit(1);
    // A registered id and a registered, open value, with a MAC not made
    // with K_id: someone who knows a value but not the key.
    let forged = IdentificationAnswer {
        id: record.id,
        value: Zeroizing::new(record.values[0]),
        mac: [0x5A; 48],
    };
    let err = identify(&mut module, &mut journal, &pki, &mut Fixed(forged.encode())).unwrap_err();
    assert!(
        matches!(refused(&err), IdentificationRefusal::NotAuthentic(_)),
        "{err}"
    );
    assert!(err.to_string().contains("does not verify"), "{err}");
    assert!(!journal.idvalue(1).used, "the value stays open");
    assert_refused_cleanly(&mut module, &journal);
}

#[test]
fn an_answer_replayed_to_a_new_challenge_is_refused() {
    let pki = Pki::new();
    let mut module = manufactured_module(&pki);
    let mut journal = RecordingJournal::default();
    let record = journal.issue_idunit(2);
    // An answer captured earlier (to another challenge): authentic, value
    // open, but not bound to this personalization's challenge.
    let mut idunit = ram_idunit(&record);
    let captured = idunit.authenticate(&[0x11; CHALLENGE_LEN]).expect("answer");
    let err = identify(
        &mut module,
        &mut journal,
        &pki,
        &mut Fixed(captured.to_vec()),
    )
    .unwrap_err();
    assert!(
        matches!(refused(&err), IdentificationRefusal::NotAuthentic(_)),
        "{err}"
    );
    assert!(err.to_string().contains("replayed"), "{err}");
    assert_refused_cleanly(&mut module, &journal);
}

#[test]
fn a_foreign_identification_unit_is_refused() {
    let pki = Pki::new();
    let mut module = manufactured_module(&pki);
    let mut journal = RecordingJournal::default();
    journal.issue_idunit(1);
    // Registered with another unit's journal, not with this one.
    let mut other = RecordingJournal::default();
    let foreign = other.issue_idunit(1);
    let err = identify(&mut module, &mut journal, &pki, &mut ram_idunit(&foreign)).unwrap_err();
    assert!(
        matches!(refused(&err), IdentificationRefusal::UnknownUnit(_)),
        "{err}"
    );
    assert!(err.to_string().contains("not registered"), "{err}");
    assert_refused_cleanly(&mut module, &journal);
}

#[test]
fn a_value_not_issued_to_the_identification_unit_is_refused() {
    let pki = Pki::new();
    let mut module = manufactured_module(&pki);
    let mut journal = RecordingJournal::default();
    let mut record = journal.issue_idunit(1);
    // The id unit holds (and MACs correctly) a value the unit never registered.
    record.values[0] = [0xEE; 16];
    let err = identify(&mut module, &mut journal, &pki, &mut ram_idunit(&record)).unwrap_err();
    assert!(
        matches!(refused(&err), IdentificationRefusal::UnknownValue(_)),
        "{err}"
    );
    assert_refused_cleanly(&mut module, &journal);
}

#[test]
fn a_reused_value_is_refused() {
    let pki = Pki::new();
    let mut module = manufactured_module(&pki);
    let mut journal = RecordingJournal::default();
    let record = journal.issue_idunit(1);
    // Used by another module's personalization already.
    let mut other = manufactured_module(&pki);
    identify(&mut other, &mut journal, &pki, &mut ram_idunit(&record)).expect("first use");
    journal.entries.clear();
    // A copy of the id unit as issued offers the same value again.
    let err = identify(&mut module, &mut journal, &pki, &mut ram_idunit(&record)).unwrap_err();
    assert!(
        matches!(refused(&err), IdentificationRefusal::Used(1)),
        "{err}"
    );
    assert!(err.to_string().contains("already used"), "{err}");
    assert_refused_cleanly(&mut module, &journal);
}

#[test]
fn an_identification_unit_with_no_values_left_is_refused() {
    let pki = Pki::new();
    let mut module = manufactured_module(&pki);
    let mut journal = RecordingJournal::default();
    let record = journal.issue_idunit(0);
    let err = identify(&mut module, &mut journal, &pki, &mut ram_idunit(&record)).unwrap_err();
    assert!(
        matches!(err, PersonalizeError::IdUnit(IdUnitError::Exhausted)),
        "{err}"
    );
    assert!(
        err.to_string().contains("no identification values left"),
        "{err}"
    );
    assert_refused_cleanly(&mut module, &journal);
}

#[test]
fn a_module_handed_nothing_is_refused() {
    let pki = Pki::new();
    let mut module = manufactured_module(&pki);
    let mut journal = RecordingJournal::default();
    journal.issue_idunit(1);
    // A driver that obtains nothing and hands nothing over, yet says it did.
    let mut flow = Personalization::new(&pki.unit, options()).expect("flow");
    let err = loop {
        match flow.next_action() {
            Ok(Action::Send { header, data }) => {
                let response = module.send(header, &data).expect("transport");
                if let Err(err) = flow.on_response(&response) {
                    break err;
                }
            }
            Ok(Action::Identify { .. }) => flow.identification_handed().expect("in order"),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(err) => break err,
        }
    };
    assert!(
        matches!(err, PersonalizeError::IdentificationNotHanded),
        "{err}"
    );
    assert!(err.to_string().contains("holds no identification"), "{err}");
    assert_refused_cleanly(&mut module, &journal);
}

#[test]
fn the_module_keeps_the_answer_only_in_volatile_memory_and_gives_it_only_inside_the_channel() {
    let pki = Pki::new();
    let mut module = manufactured_module(&pki);
    let answer = IdentificationAnswer {
        id: [1; 16],
        value: Zeroizing::new([2; 16]),
        mac: [3; 48],
    }
    .encode();
    let hand_over = |module: &mut Module, data: &[u8]| {
        module
            .send([0x00, 0xDA, 0xDF, 0x2A], data)
            .expect("transport")
            .sw
    };
    assert_eq!(hand_over(&mut module, &answer), 0x9000);
    assert!(module.transport_mut().applet().holds_identification());
    // Plain GET DATA: refused, the answer leaves only inside the channel.
    let plain = module
        .send([0x00, 0xCA, 0xDF, 0x2A], &[])
        .expect("transport");
    assert_eq!(plain.sw, 0x6982);
    // A reset forgets it, as a power loss would.
    module.transport_mut().applet_mut().reset();
    assert!(!module.transport_mut().applet().holds_identification());
    // Malformed: not one 7C template, or too long.
    let select = module
        .send([0x00, 0xA4, 0x04, 0x00], &imprint_apdu::proto::AID)
        .expect("transport");
    assert_eq!(select.sw, 0x9000);
    assert_eq!(hand_over(&mut module, &[0x7D, 0x00]), 0x6A80);
    assert_eq!(hand_over(&mut module, &[0x7C; 300]), 0x6700);
    assert!(!module.transport_mut().applet().holds_identification());
    // Empty data forgets a held answer.
    assert_eq!(hand_over(&mut module, &answer), 0x9000);
    assert_eq!(hand_over(&mut module, &[]), 0x9000);
    assert!(!module.transport_mut().applet().holds_identification());
}

#[test]
fn an_identification_unit_issued_for_another_module_is_refused() {
    let pki = Pki::new();
    let mut module = manufactured_module(&pki);
    let serial = module_serial(&mut module);
    let mut journal = RecordingJournal::default();
    let for_another = journal.issue_idunit_for(1, "00000000000000ff");
    let err = identify(
        &mut module,
        &mut journal,
        &pki,
        &mut ram_idunit(&for_another),
    )
    .unwrap_err();
    assert!(
        matches!(refused(&err), IdentificationRefusal::OtherModule { bound, serial: s, .. }
            if bound == "00000000000000ff" && *s == serial),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("vouches for module 00000000000000ff only"),
        "{err}"
    );
    assert_refused_cleanly(&mut module, &journal);
    assert!(!journal.idvalue(1).used, "the value stays open at the unit");

    // One issued for this module vouches for it.
    let for_this = journal.issue_idunit_for(1, &serial);
    identify(&mut module, &mut journal, &pki, &mut ram_idunit(&for_this))
        .expect("the id unit issued for this module");
    assert_eq!(journal.entries.len(), 1);
}

/// The module's serial, as SELECT reports it.
fn module_serial(module: &mut Module) -> String {
    let status = imprint_apdu::host::status::read_status(module).expect("status");
    imprint_apdu::pki::serial_hex(&status.info.serial.expect("a manufactured module"))
}
