use imprint_apdu::Applet;
use imprint_apdu::Lifecycle;
use imprint_apdu::host::manufacture::manufacture;
use imprint_apdu::host::personalize::{SelectInfo, unix_now};
use imprint_apdu::host::tan::TanRefusal;
use imprint_apdu::host::{
    CardLink, InProcessTransport, PersonalizationOptions, PersonalizeError, Transport,
    TransportError, UnitCredentials, personalize,
};
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use zeroize::Zeroizing;

use super::*;
use crate::journal::{IssuanceStatus, SqliteJournal};
use crate::roles::Manufacturer;
use crate::tan_prompt::{TanEntry, choose_tan_entry};

/// A feature list as a CCID PIN-pad reader answers it with pcsc-lite:
/// VERIFY_PIN_DIRECT, MODIFY_PIN_DIRECT, IFD_PIN_PROPERTIES and
/// GET_TLV_PROPERTIES, each with control code `SCARD_CTL_CODE(3500 + tag)`.
const PINPAD_READER: [u8; 24] = [
    0x06, 0x04, 0x42, 0x00, 0x0D, 0xB2, //
    0x07, 0x04, 0x42, 0x00, 0x0D, 0xB3, //
    0x0A, 0x04, 0x42, 0x00, 0x0D, 0xB6, //
    0x12, 0x04, 0x42, 0x00, 0x0D, 0xBE,
];

#[test]
fn a_good_feature_list_gives_each_control_code() {
    let features = Features::parse(&PINPAD_READER).expect("well formed");
    assert_eq!(features.verify_pin_direct(), Some(0x4200_0DB2));
    assert_eq!(features.control_code(0x07), Some(0x4200_0DB3));
    assert_eq!(features.control_code(0x0A), Some(0x4200_0DB6));
    assert_eq!(features.control_code(0x12), Some(0x4200_0DBE));
    assert_eq!(features.control_code(0x01), None);
}

#[test]
fn an_empty_feature_list_lists_no_pin_pad() {
    let features = Features::parse(&[]).expect("empty is well formed");
    assert_eq!(features, Features::default());
    assert_eq!(features.verify_pin_direct(), None);
}

#[test]
fn a_truncated_feature_list_is_refused_where_it_breaks() {
    // A tag without its length byte, after one good entry.
    let err = Features::parse(&PINPAD_READER[..7]).unwrap_err();
    assert!(
        matches!(err, HostError::FeatureListTruncated { offset: 6 }),
        "{err}"
    );
    // A value cut short.
    let err = Features::parse(&PINPAD_READER[..5]).unwrap_err();
    assert!(
        matches!(err, HostError::FeatureListTruncated { offset: 0 }),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    // Every cut that is not on an entry boundary fails, and none panics.
    for cut in 0..=PINPAD_READER.len() {
        let result = Features::parse(&PINPAD_READER[..cut]);
        assert_eq!(result.is_ok(), cut % 6 == 0, "cut at {cut}");
    }
}

#[test]
fn a_length_byte_other_than_four_is_refused() {
    let answer = [0x06, 0x02, 0x0D, 0xB2, 0x07, 0x04];
    let err = Features::parse(&answer).unwrap_err();
    assert!(
        matches!(
            err,
            HostError::FeatureListLength {
                tag: 0x06,
                length: 2
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("2 bytes, not 4"), "{err}");
    // Even when the bytes after it would make up four.
    let answer = [0x06, 0x05, 0x42, 0x00, 0x0D, 0xB2, 0x00];
    assert!(matches!(
        Features::parse(&answer),
        Err(HostError::FeatureListLength { length: 5, .. })
    ));
}

#[test]
fn unknown_tags_are_ignored() {
    let mut answer = vec![0xE0, 0x04, 0x00, 0x00, 0x00, 0x01];
    answer.extend_from_slice(&PINPAD_READER[..6]);
    answer.extend_from_slice(&[0x7F, 0x04, 0xFF, 0xFF, 0xFF, 0xFF]);
    let features = Features::parse(&answer).expect("well formed");
    assert_eq!(features.verify_pin_direct(), Some(0x4200_0DB2));
    // A reader with other features only offers no pad.
    let other = Features::parse(&[0x0A, 0x04, 0x42, 0x00, 0x0D, 0xB6]).expect("well formed");
    assert_eq!(other.verify_pin_direct(), None);
}

#[test]
fn a_feature_listed_twice_is_refused() {
    let mut answer = PINPAD_READER.to_vec();
    answer.extend_from_slice(&[0x06, 0x04, 0x42, 0x00, 0x0F, 0x00]);
    let err = Features::parse(&answer).unwrap_err();
    assert!(
        matches!(err, HostError::FeatureListDuplicate { tag: 0x06 }),
        "{err}"
    );
}

const VERIFY_TAN: [u8; 4] = [0x00, 0x20, 0x00, 0x82];

#[test]
fn the_pin_verify_structure_for_a_tan_is_byte_exact() {
    // Derived field by field from pcsc-lite reader.h PIN_VERIFY_STRUCTURE
    // (packed, multi-byte fields little-endian) and the CCID PIN
    // verification data structure:
    let expected: [u8; 34] = [
        0x3C, // bTimerOut: 60 s for the first key
        0x1E, // bTimerOut2: 30 s after each key
        0x82, // bmFormatString: units bytes (b7), PIN at byte 0 (b6-3), left (b2), ASCII (b1-0 = 10)
        0x0A, // bmPINBlockString: no length field (b7-4), block of 10 bytes (b3-0)
        0x00, // bmPINLengthFormat: no length written into the APDU
        0x0A, 0x0A, // wPINMaxExtraDigit 0x0A0A: min 10 (high byte), max 10 (low byte)
        0x02, // bEntryValidationCondition: the OK key
        0x01, // bNumberMessage: one message
        0x09, 0x04, // wLangId 0x0409, English (US)
        0x00, // bMsgIndex: the "enter PIN" message
        0x00, 0x00, 0x00, // bTeoPrologue: filled in by the driver for T=1
        0x0F, 0x00, 0x00, 0x00, // ulDataLength: 15 bytes of abData
        0x00, 0x20, 0x00, 0x82, // abData: VERIFY (TAN) header
        0x0A, // Lc: the 10-byte block
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFF, // block the reader overwrites
    ];
    assert_eq!(
        verify_pin_structure(VERIFY_TAN, 10, 10).expect("in range"),
        expected
    );
    assert_eq!(expected.len(), PIN_VERIFY_HEADER_LEN + 15);
}

#[test]
fn the_pin_verify_structure_orders_min_and_max_little_endian() {
    let structure = verify_pin_structure([0x00, 0x20, 0x00, 0x81], 4, 8).expect("in range");
    // wPINMaxExtraDigit 0x0408 is stored 08 04; the block is the maximum.
    assert_eq!(structure[3], 0x08);
    assert_eq!(&structure[5..7], &[0x08, 0x04]);
    assert_eq!(&structure[15..19], &[13, 0, 0, 0]);
    assert_eq!(&structure[19..24], &[0x00, 0x20, 0x00, 0x81, 0x08]);
    assert_eq!(structure.len(), PIN_VERIFY_HEADER_LEN + 13);
}

#[test]
fn digits_outside_a_pin_block_are_refused() {
    assert_eq!(verify_pin_structure(VERIFY_TAN, 0, 10), None);
    assert_eq!(verify_pin_structure(VERIFY_TAN, 11, 10), None);
    assert_eq!(verify_pin_structure(VERIFY_TAN, 16, 16), None);
    assert!(verify_pin_structure(VERIFY_TAN, 15, 15).is_some());
}

/// What a CCID PIN-pad reader does with a `PIN_VERIFY_STRUCTURE`, read as
/// the specification says (not from our builder's constants): checks the
/// entry against the limits and writes the digits, ASCII, into the block
/// at the position given. `Err` carries the status the reader answers.
fn reader_builds_the_verify(structure: &[u8], typed: &[u8]) -> Result<Vec<u8>, u16> {
    const INVALID_PARAMETER: u16 = 0x6B80;
    const WRONG_LENGTH: u16 = 0x6403;
    let (fields, data) = structure
        .split_at_checked(PIN_VERIFY_HEADER_LEN)
        .ok_or(INVALID_PARAMETER)?;
    let format = fields[2];
    let block = usize::from(fields[3] & 0x0F);
    let [max, min] = [fields[5], fields[6]];
    let length = u32::from_le_bytes([fields[15], fields[16], fields[17], fields[18]]);
    if format & 0x80 == 0 || format & 0x03 != 0x02 || format & 0x04 != 0 {
        return Err(INVALID_PARAMETER); // this simulation speaks left-justified ASCII in bytes
    }
    if usize::try_from(length).ok() != Some(data.len()) || data.len() < 5 {
        return Err(INVALID_PARAMETER);
    }
    if typed.len() < usize::from(min) || typed.len() > usize::from(max) {
        return Err(WRONG_LENGTH);
    }
    let start = 5 + usize::from((format >> 3) & 0x0F);
    if typed.len() > block || start + block > data.len() {
        return Err(INVALID_PARAMETER);
    }
    let mut apdu = data.to_vec();
    apdu[start..start + typed.len()].copy_from_slice(typed);
    Ok(apdu)
}

/// What the user does at the simulated pad.
enum AtThePad {
    /// Types these digits and presses OK.
    Types(Zeroizing<Vec<u8>>),
    /// Presses Cancel.
    Cancels,
}

/// A PIN-pad reader around the real applet: the host's commands go through
/// unchanged; a secure PIN entry builds the structure as the PC/SC
/// transport does and has [`reader_builds_the_verify`] fill in what the
/// user typed. Every byte the host hands over is kept, to show the TAN is
/// never among them.
struct SimulatedPinPad<T> {
    card: T,
    user: AtThePad,
    from_host: Vec<Vec<u8>>,
    pad_entries: u32,
}

impl<T: Transport> SimulatedPinPad<T> {
    fn new(card: T, user: AtThePad) -> Self {
        Self {
            card,
            user,
            from_host: Vec::new(),
            pad_entries: 0,
        }
    }

    fn host_sent(&self, needle: &[u8]) -> bool {
        self.from_host
            .iter()
            .any(|bytes| bytes.windows(needle.len()).any(|window| window == needle))
    }
}

impl<T: Transport> Transport for SimulatedPinPad<T> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.from_host.push(command.to_vec());
        self.card.transmit(command)
    }

    fn supports_extended_length(&self) -> bool {
        self.card.supports_extended_length()
    }

    fn has_pin_pad(&mut self) -> Result<bool, TransportError> {
        Ok(true)
    }

    fn verify_at_pin_pad(
        &mut self,
        header: [u8; 4],
        digits: u8,
    ) -> Result<Vec<u8>, TransportError> {
        let structure = verify_pin_structure(header, digits, digits)
            .ok_or(TransportError::TooLarge(usize::from(digits)))?;
        self.from_host.push(structure.clone());
        self.pad_entries += 1;
        match &self.user {
            AtThePad::Types(typed) => match reader_builds_the_verify(&structure, typed) {
                Ok(apdu) => self.card.transmit(&Zeroizing::new(apdu)),
                Err(sw) => Ok(sw.to_be_bytes().to_vec()),
            },
            AtThePad::Cancels => Ok(vec![0x64, 0x01]),
        }
    }
}

/// The roles of a test unit, in a temporary directory, with its real
/// SQLite journal (and TAN store).
struct Fixture {
    _dir: tempfile::TempDir,
    manufacturer: Manufacturer,
    unit: UnitCredentials,
    journal: SqliteJournal,
}

fn fixture() -> Fixture {
    let crate::testutil::UnitFixture {
        dir,
        manufacturer,
        unit,
        journal,
    } = crate::testutil::unit_fixture();
    Fixture {
        _dir: dir,
        manufacturer,
        unit,
        journal,
    }
}

fn manufactured_module(fixture: &Fixture) -> InProcessTransport<MemoryKeyMemory> {
    let applet = Applet::new(MemoryKeyMemory::new([0x5A; 48])).expect("applet");
    let mut transport = InProcessTransport::new(applet);
    manufacture(
        &mut CardLink::new(&mut transport),
        fixture.manufacturer.credentials(),
        20,
    )
    .expect("manufacture");
    transport
}

fn one_tan(fixture: &mut Fixture) -> (i64, Zeroizing<Vec<u8>>) {
    let mut tans = fixture
        .journal
        .issue_tans(1, None, unix_now() + 3600)
        .expect("issue a TAN");
    let (id, tan) = tans.pop().expect("one TAN");
    (id, Zeroizing::new(tan.as_bytes().to_vec()))
}

fn at_the_pad() -> PersonalizationOptions {
    PersonalizationOptions {
        tan_at_pin_pad: true,
        require_tan: true,
        ..PersonalizationOptions::default()
    }
}

#[test]
fn a_tan_typed_at_the_pad_personalizes_and_never_passes_the_host() {
    let mut fixture = fixture();
    let (tan_id, tan) = one_tan(&mut fixture);
    let module = manufactured_module(&fixture);
    let mut pad = SimulatedPinPad::new(module, AtThePad::Types(tan.clone()));
    assert_eq!(choose_tan_entry(&mut pad, false).unwrap(), TanEntry::PinPad);

    let mut link = CardLink::new(&mut pad);
    let report = personalize(&mut link, &mut fixture.journal, &fixture.unit, at_the_pad())
        .expect("personalized with the TAN from the pad");

    assert_eq!(pad.pad_entries, 1);
    assert!(!pad.host_sent(&tan), "the TAN passed through the host");
    assert!(
        !pad.from_host
            .iter()
            .any(|command| command.get(1) == Some(&0x20)),
        "the host sent a VERIFY itself"
    );
    assert_eq!(pad.card.applet().lifecycle(), Lifecycle::Operating);
    let tans = fixture.journal.tans().expect("TANs");
    assert_eq!(tans[0].id, tan_id);
    assert_eq!(tans[0].issuance_id, Some(report.journal_id), "TAN consumed");
    let entries = fixture.journal.entries().expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].status, IssuanceStatus::Installed);
}

#[test]
fn a_wrong_tan_typed_at_the_pad_is_refused_and_counted() {
    let mut fixture = fixture();
    let (_, tan) = one_tan(&mut fixture);
    let wrong = if tan[0] == b'9' { b"0" } else { b"9" };
    let mut typed = Zeroizing::new(tan.to_vec());
    typed[0] = wrong[0];
    let mut pad = SimulatedPinPad::new(manufactured_module(&fixture), AtThePad::Types(typed));
    let err = personalize(
        &mut CardLink::new(&mut pad),
        &mut fixture.journal,
        &fixture.unit,
        at_the_pad(),
    )
    .unwrap_err();
    assert!(
        matches!(err, PersonalizeError::TanRefused(TanRefusal::Wrong)),
        "{err}"
    );
    assert_eq!(pad.card.applet().lifecycle(), Lifecycle::Personalization);
    assert!(fixture.journal.entries().expect("entries").is_empty());
    assert_eq!(
        pad.card.applet().records().tan_proofs,
        1,
        "the module counted"
    );
    let select = CardLink::new(&mut pad.card)
        .send([0x00, 0xA4, 0x04, 0x00], &imprint_apdu::proto::AID)
        .expect("SELECT");
    let info = SelectInfo::parse(&select.data).expect("FCI");
    let serial = imprint_apdu::pki::serial_hex(&info.serial.expect("serial"));
    assert_eq!(fixture.journal.serial_tan_failures(&serial).unwrap(), 1);
}

#[test]
fn a_cancelled_or_short_entry_at_the_pad_fails_clearly_before_the_channel() {
    let mut fixture = fixture();
    let mut pad = SimulatedPinPad::new(manufactured_module(&fixture), AtThePad::Cancels);
    let mut link = CardLink::new(&mut pad);
    let err =
        personalize(&mut link, &mut fixture.journal, &fixture.unit, at_the_pad()).unwrap_err();
    assert!(
        matches!(err, PersonalizeError::TanAtPinPad { sw: 0x6401 }),
        "{err}"
    );
    assert!(err.to_string().contains("cancelled"), "{err}");
    // SELECT and the pad's VERIFY only: no handshake was started.
    assert_eq!(link.apdu_count(), 2);

    let short = Zeroizing::new(b"12345".to_vec());
    let mut pad = SimulatedPinPad::new(manufactured_module(&fixture), AtThePad::Types(short));
    let err = personalize(
        &mut CardLink::new(&mut pad),
        &mut fixture.journal,
        &fixture.unit,
        at_the_pad(),
    )
    .unwrap_err();
    assert!(
        matches!(err, PersonalizeError::TanAtPinPad { sw: 0x6403 }),
        "{err}"
    );
    assert!(err.to_string().contains("wrong number of digits"), "{err}");
    assert!(fixture.journal.entries().expect("entries").is_empty());
}

#[test]
fn without_a_pad_the_tan_is_typed_at_the_host_as_before() {
    let mut fixture = fixture();
    let (_, tan) = one_tan(&mut fixture);
    let mut module = manufactured_module(&fixture);
    assert_eq!(
        choose_tan_entry(&mut module, false).unwrap(),
        TanEntry::Host
    );
    // Asking the flow for the pad on such a transport fails before any APDU:
    // a flow that holds no TAN has nothing to fall back to.
    let mut link = CardLink::new(&mut module);
    let err =
        personalize(&mut link, &mut fixture.journal, &fixture.unit, at_the_pad()).unwrap_err();
    assert!(matches!(err, PersonalizeError::NoPinPad), "{err}");
    assert_eq!(link.apdu_count(), 0);

    // The host path: the TAN rides in the VERIFY the host sends.
    let options = PersonalizationOptions {
        tan: Some(tan),
        require_tan: true,
        ..PersonalizationOptions::default()
    };
    personalize(&mut link, &mut fixture.journal, &fixture.unit, options)
        .expect("personalized with the TAN from the host");
    assert_eq!(module.applet().lifecycle(), Lifecycle::Operating);
}

#[test]
fn at_host_wins_over_a_pad() {
    let mut fixture = fixture();
    let (_, tan) = one_tan(&mut fixture);
    let mut pad = SimulatedPinPad::new(
        manufactured_module(&fixture),
        AtThePad::Types(Zeroizing::new(b"0000000000".to_vec())),
    );
    assert_eq!(choose_tan_entry(&mut pad, true).unwrap(), TanEntry::Host);
    let options = PersonalizationOptions {
        tan: Some(tan.clone()),
        require_tan: true,
        ..PersonalizationOptions::default()
    };
    personalize(
        &mut CardLink::new(&mut pad),
        &mut fixture.journal,
        &fixture.unit,
        options,
    )
    .expect("personalized with the TAN from the host");
    assert_eq!(pad.pad_entries, 0);
    // The check the pad test relies on does see a TAN the host sent.
    assert!(pad.host_sent(&tan));
}

#[test]
fn a_tan_and_the_pad_together_are_refused() {
    let fixture = fixture();
    let options = PersonalizationOptions {
        tan: Some(Zeroizing::new(b"0123456789".to_vec())),
        ..at_the_pad()
    };
    assert!(matches!(
        imprint_apdu::host::Personalization::new(&fixture.unit, options),
        Err(PersonalizeError::TanTwice)
    ));
}
