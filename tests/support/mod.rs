//! Shared fixtures for the end-to-end suites: the three roles' PKI built in
//! memory, modules on RAM or file key memories, journals and transports that
//! record, tear or tamper with traffic.

use std::path::{Path, PathBuf};

pub mod central;
pub mod claims;
pub mod operating;
pub mod pcscd;

use imprint_apdu::applet::Applet;
use imprint_apdu::channel::{Digest48, tan_verifier};
use imprint_apdu::host::identification::{
    IdUnitLink, IdUnitRegistration, IdValueRow, IdentificationCheck, InProcessIdUnit,
    judge as judge_identification, value_verifier,
};
use imprint_apdu::host::manufacture::{ManufactureReport, manufacture};
use imprint_apdu::host::personalize::unix_now;
use imprint_apdu::host::personalize::{
    IssuanceJournal, IssuedCertificate, JournalError, ModuleCertificateIssuer,
};
use imprint_apdu::host::tan::{
    Judgement, TAN_FAILURE_LIMIT, TAN_SALT_LEN, TanCheck, TanRow, judge,
};
use imprint_apdu::host::{
    CardLink, InProcessTransport, ManufacturerCredentials, PersonalizationOptions,
    PersonalizationReport, PersonalizeError, Transport, TransportError, UnitCredentials,
    personalize,
};
use imprint_apdu::idunit::memory::MemoryIdStore;
use imprint_apdu::idunit::{self, IdUnit, IdUnitRecord, IdentificationAnswer};
use imprint_apdu::keymem::KeyMemory;
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_apdu::pki::issue::{self, CertificateRequest, IssuerKey, Validity};
use imprint_apdu::pki::{Certificate, Role};
use p384::ecdsa::SigningKey;

/// A fresh random P-384 signing key.
pub fn random_key() -> SigningKey {
    let mut bytes = [0u8; 48];
    loop {
        getrandom::fill(&mut bytes).expect("OS random");
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return key;
        }
    }
}

/// A random 48-byte seed for RAM key memories.
pub fn random_seed() -> [u8; 48] {
    let mut seed = [0u8; 48];
    getrandom::fill(&mut seed).expect("OS random");
    seed
}

/// The whole PKI of one deployment: manufacturer, central system, one unit.
pub struct Pki {
    /// The manufacturer's key and root.
    pub manufacturer: ManufacturerCredentials,
    /// The central system's key.
    pub central_key: SigningKey,
    /// The central system's self-signed root.
    pub central_root: Certificate,
    /// The personalization unit.
    pub unit: UnitCredentials,
}

impl Pki {
    /// A consistent deployment.
    pub fn new() -> Self {
        let manufacturer = new_manufacturer("Test Manufacturer");
        let (central_key, central_root) = new_central("Test Central");
        let unit = new_unit(&manufacturer, &central_key, &central_root, "Test Unit");
        Self {
            manufacturer,
            central_key,
            central_root,
            unit,
        }
    }
}

impl Pki {
    /// Manufactures a RAM module with this deployment's manufacturer, then runs
    /// a personalization with `unit` that must fail. Checks that nothing
    /// operational was committed and that the journal marked the failure.
    pub fn run_failing(
        &self,
        unit: &UnitCredentials,
        issuer: Option<Box<dyn ModuleCertificateIssuer>>,
    ) -> (PersonalizeError, imprint_apdu::Lifecycle) {
        let mut link = ram_module();
        manufacture_with(&mut link, &self.manufacturer);
        let options = PersonalizationOptions {
            issuer,
            ..PersonalizationOptions::default()
        };
        let mut journal = RecordingJournal::default();
        let err = personalize(&mut link, &mut journal, unit, options)
            .expect_err("personalization must fail");
        let applet = link.transport_mut().applet();
        assert_eq!(
            applet.records().module_cert,
            None,
            "nothing operational committed"
        );
        if let Some((_, state)) = journal.entries.last() {
            assert!(
                matches!(state, EntryState::Failed(_)),
                "journal marks the failure: {state:?}"
            );
        }
        (err, applet.lifecycle())
    }
}

/// Manufactures the module on `link` with `manufacturer`.
pub fn manufacture_with<T: Transport>(
    link: &mut CardLink<T>,
    manufacturer: &ManufacturerCredentials,
) -> ManufactureReport {
    manufacture(link, manufacturer, 25).expect("manufacture")
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A manufacturer root.
pub fn new_manufacturer(name: &str) -> ManufacturerCredentials {
    let key = random_key();
    let root = issue::self_signed_root(
        Role::Manufacturer,
        name,
        &key,
        Validity::years_from_now(30).unwrap(),
    )
    .expect("manufacturer root");
    ManufacturerCredentials { key, root }
}

/// A central root.
pub fn new_central(name: &str) -> (SigningKey, Certificate) {
    let key = random_key();
    let root = issue::self_signed_root(
        Role::Central,
        name,
        &key,
        Validity::years_from_now(20).unwrap(),
    )
    .expect("central root");
    (key, root)
}

/// A unit certified by `manufacturer` and by the central system, with its
/// certificate over the central key.
pub fn new_unit(
    manufacturer: &ManufacturerCredentials,
    central_key: &SigningKey,
    central_root: &Certificate,
    name: &str,
) -> UnitCredentials {
    let key = random_key();
    let csr = CertificateRequest::new(name, &key).expect("csr");
    let years = Validity::years_from_now(10).unwrap();
    let cert_by_manufacturer = issue::personalizer_cert(
        IssuerKey {
            cert: &manufacturer.root,
            key: &manufacturer.key,
        },
        &csr,
        years,
    )
    .expect("unit cert by manufacturer");
    let cert_by_central = issue::personalizer_cert(
        IssuerKey {
            cert: central_root,
            key: central_key,
        },
        &csr,
        years,
    )
    .expect("unit cert by central");
    let central_delivery = issue::central_delivery_cert(
        IssuerKey {
            cert: &cert_by_manufacturer,
            key: &key,
        },
        central_root,
        years,
    )
    .expect("central delivery cert");
    UnitCredentials {
        key,
        cert_by_manufacturer,
        cert_by_central,
        central_delivery,
        manufacturer_root: manufacturer.root.clone(),
    }
}

/// A module on a RAM key memory, as an in-process card.
pub fn ram_module() -> CardLink<InProcessTransport<MemoryKeyMemory>> {
    let applet = Applet::new(MemoryKeyMemory::new(random_seed())).expect("applet");
    CardLink::new(InProcessTransport::new(applet))
}

/// A module on a file key memory in `dir`, as an in-process card.
pub fn file_module(dir: &Path) -> CardLink<InProcessTransport<FileKeyMemory>> {
    let memory = FileKeyMemory::open(dir).expect("module dir");
    CardLink::new(InProcessTransport::new(
        Applet::new(memory).expect("applet"),
    ))
}

/// A RAM module manufactured and personalized by `pki`: OPERATING, trusting
/// `pki`'s central system.
pub fn operating_ram_module(pki: &Pki) -> CardLink<InProcessTransport<MemoryKeyMemory>> {
    let mut link = ram_module();
    manufactured(&mut link, pki);
    personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).expect("personalization");
    link
}

/// Manufactures the module on `link`.
pub fn manufactured<T: Transport>(link: &mut CardLink<T>, pki: &Pki) -> ManufactureReport {
    manufacture(link, &pki.manufacturer, 25).expect("manufacture")
}

/// Personalizes with default options and a recording journal.
pub fn personalized<T: Transport>(
    link: &mut CardLink<T>,
    unit: &UnitCredentials,
    journal: &mut RecordingJournal,
) -> Result<PersonalizationReport, PersonalizeError> {
    personalize(link, journal, unit, PersonalizationOptions::default())
}

/// Nothing issued, and the module is where a refused first personalization
/// leaves it: PERSONALIZATION, no module key, no module certificate.
pub fn assert_untouched<K: KeyMemory>(applet: &mut Applet<K>, journal: &RecordingJournal) {
    assert!(journal.entries.is_empty(), "nothing issued");
    assert_eq!(applet.lifecycle(), imprint_apdu::Lifecycle::Personalization);
    assert!(
        applet
            .memory_mut()
            .public_key(imprint_apdu::keymem::KeySlot::Module)
            .expect("key memory")
            .is_none(),
        "no module key"
    );
    assert!(
        applet.records().module_cert.is_none(),
        "no module certificate"
    );
}

/// The state of one journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// Recorded, not yet confirmed.
    Issued,
    /// The module committed it.
    Installed,
    /// The run failed after issuing.
    Failed(String),
}

/// A journal in memory that also notes how many APDUs had crossed when each
/// certificate was recorded, so tests can prove "recorded before sent".
///
/// It is also a TAN store in memory (claim 13) applying the same policy as
/// the unit's SQLite journal ([`imprint_apdu::host::tan::judge`]).
#[derive(Default)]
pub struct RecordingJournal {
    /// Entries in order.
    pub entries: Vec<(IssuedCertificate, EntryState)>,
    /// The TANs issued into this journal (verifiers only).
    pub tans: Vec<TanRow>,
    /// Failed TAN proofs per module serial.
    pub serial_failures: std::collections::HashMap<String, u32>,
    /// The unit salt, once created.
    pub tan_salt: Option<[u8; TAN_SALT_LEN]>,
    /// Registered identification units: id → `K_id` and the module serial
    /// it was issued for, if any (claims 16–18).
    pub idunits:
        std::collections::HashMap<[u8; idunit::ID_LEN], ([u8; idunit::KEY_LEN], Option<String>)>,
    /// Identification value verifiers, with the id unit each was issued to.
    pub idvalues: Vec<([u8; idunit::ID_LEN], IdValueRow)>,
}

/// The in-memory journal refused to record: the identification value is no
/// longer open.
#[derive(Debug, thiserror::Error)]
#[error("identification value {0} is no longer open; nothing recorded")]
pub struct IdentificationNoLongerOpen(pub i64);

/// Why the in-memory journal refused to record.
#[derive(Debug, thiserror::Error)]
#[error("TAN {0} is no longer open; nothing recorded")]
pub struct TanNoLongerOpen(pub i64);

impl RecordingJournal {
    /// The unit salt, created on first use.
    pub fn salt(&mut self) -> [u8; TAN_SALT_LEN] {
        *self.tan_salt.get_or_insert_with(|| {
            let mut salt = [0u8; TAN_SALT_LEN];
            getrandom::fill(&mut salt).expect("OS random");
            salt
        })
    }

    /// Issues `tan` (the test chooses it), bound to `serial` if given,
    /// valid for `lifetime` seconds from now. Returns its id.
    pub fn issue_tan(&mut self, tan: &str, serial: Option<&str>, lifetime: u64) -> i64 {
        let salt = self.salt();
        let id = self.tans.len() as i64 + 1;
        self.tans.push(TanRow {
            id,
            verifier: *tan_verifier(&salt, tan.as_bytes()),
            serial: serial.map(str::to_string),
            expires: unix_now() + lifetime,
            used: false,
            failures: 0,
        });
        id
    }

    /// The TAN with `id`.
    pub fn tan(&self, id: i64) -> &TanRow {
        &self.tans[id as usize - 1]
    }

    /// Creates an identification unit with `values` random one-off values
    /// and registers it (key, value verifiers), as `imprint idunit issue` does.
    pub fn issue_idunit(&mut self, values: usize) -> IdUnitRecord {
        let record = random_idunit(values);
        self.register_idunit(&record, None);
        record
    }

    /// [`Self::issue_idunit`] for the module `serial` only.
    pub fn issue_idunit_for(&mut self, values: usize, serial: &str) -> IdUnitRecord {
        let record = random_idunit(values);
        self.register_idunit(&record, Some(serial));
        record
    }

    /// Registers `record`'s key (bound to `serial`, if given) and value verifiers.
    pub fn register_idunit(&mut self, record: &IdUnitRecord, serial: Option<&str>) {
        let salt = self.salt();
        self.idunits
            .insert(record.id, (*record.key, serial.map(str::to_owned)));
        for value in &record.values {
            let id = self.idvalues.len() as i64 + 1;
            self.idvalues.push((
                record.id,
                IdValueRow {
                    id,
                    verifier: value_verifier(&salt, value),
                    used: false,
                },
            ));
        }
    }

    /// The identification value row with `id`.
    pub fn idvalue(&self, id: i64) -> &IdValueRow {
        &self.idvalues[id as usize - 1].1
    }
}

/// A fresh identification unit record (not registered anywhere).
pub fn random_idunit(values: usize) -> IdUnitRecord {
    let mut record = IdUnitRecord {
        id: [0; idunit::ID_LEN],
        key: zeroize::Zeroizing::new([0; idunit::KEY_LEN]),
        values: vec![[0; idunit::VALUE_LEN]; values],
    };
    getrandom::fill(&mut record.id).expect("OS random");
    getrandom::fill(&mut record.key[..]).expect("OS random");
    for value in &mut record.values {
        getrandom::fill(value).expect("OS random");
    }
    record
}

/// An in-process identification unit on a RAM store holding `record`.
pub fn ram_idunit(record: &IdUnitRecord) -> IdUnitLink<InProcessIdUnit<MemoryIdStore>> {
    IdUnitLink::new(InProcessIdUnit::new(
        IdUnit::new(MemoryIdStore::new(record.clone())).expect("RAM id unit"),
    ))
}

impl IssuanceJournal for RecordingJournal {
    fn record_issued(&mut self, issued: &IssuedCertificate) -> Result<i64, JournalError> {
        // The TAN is consumed with the record, or nothing happens.
        if let Some(id) = issued.tan {
            let now = unix_now();
            let row = self
                .tans
                .iter_mut()
                .find(|row| row.id == id)
                .ok_or(JournalError(Box::new(TanNoLongerOpen(id))))?;
            let open = !row.used
                && row.expires > now
                && row.failures < TAN_FAILURE_LIMIT
                && row
                    .serial
                    .as_deref()
                    .is_none_or(|bound| bound == issued.serial);
            if !open {
                return Err(JournalError(Box::new(TanNoLongerOpen(id))));
            }
            row.used = true;
            self.serial_failures.remove(&issued.serial);
        }
        if let Some(id) = issued.identification {
            let row = self
                .idvalues
                .iter_mut()
                .map(|(_, row)| row)
                .find(|row| row.id == id && !row.used)
                .ok_or(JournalError(Box::new(IdentificationNoLongerOpen(id))))?;
            row.used = true;
        }
        self.entries.push((issued.clone(), EntryState::Issued));
        Ok(self.entries.len() as i64)
    }

    fn tan_salt(&mut self) -> Result<Option<[u8; TAN_SALT_LEN]>, JournalError> {
        Ok(Some(self.salt()))
    }

    fn check_tan(
        &mut self,
        serial: &str,
        th: &Digest48,
        proof: &[u8],
    ) -> Result<TanCheck, JournalError> {
        let failures = self.serial_failures.get(serial).copied().unwrap_or(0);
        Ok(
            match judge(&self.tans, failures, serial, th, proof, unix_now()) {
                Judgement::Accepted(id) => TanCheck::Accepted(id),
                Judgement::Refused {
                    refusal,
                    count_on,
                    count_serial,
                } => {
                    for row in self
                        .tans
                        .iter_mut()
                        .filter(|row| count_on.contains(&row.id))
                    {
                        row.failures += 1;
                    }
                    if count_serial {
                        *self.serial_failures.entry(serial.to_string()).or_default() += 1;
                    }
                    TanCheck::Refused(refusal)
                }
            },
        )
    }

    fn check_identification(
        &mut self,
        serial: &str,
        challenge: &[u8; idunit::CHALLENGE_LEN],
        answer: &IdentificationAnswer,
    ) -> Result<IdentificationCheck, JournalError> {
        let salt = self.salt();
        let rows: Vec<IdValueRow> = self
            .idvalues
            .iter()
            .filter(|(unit, _)| *unit == answer.id)
            .map(|(_, row)| row.clone())
            .collect();
        let registration = self
            .idunits
            .get(&answer.id)
            .map(|(key, bound)| IdUnitRegistration {
                key,
                serial: bound.as_deref(),
            });
        Ok(judge_identification(
            challenge,
            serial,
            answer,
            registration,
            &salt,
            &rows,
        ))
    }

    fn mark_installed(&mut self, id: i64) -> Result<(), JournalError> {
        self.entries[id as usize - 1].1 = EntryState::Installed;
        Ok(())
    }

    fn mark_failed(&mut self, id: i64, reason: &str) -> Result<(), JournalError> {
        self.entries[id as usize - 1].1 = EntryState::Failed(reason.to_string());
        Ok(())
    }
}

/// A transport that logs every command and response.
pub struct LoggingTransport<T> {
    /// The wrapped transport.
    pub inner: T,
    /// (command, response) pairs.
    pub log: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<T: Transport> LoggingTransport<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            log: Vec::new(),
        }
    }
}

impl<T: Transport> Transport for LoggingTransport<T> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let response = self.inner.transmit(command)?;
        self.log.push((command.to_vec(), response.clone()));
        Ok(response)
    }
    fn supports_extended_length(&self) -> bool {
        self.inner.supports_extended_length()
    }
}

/// A transport that lets a closure rewrite the n-th command (1-based) and
/// counts what passed.
pub struct TamperingTransport<T, F> {
    /// The wrapped transport.
    pub inner: T,
    /// Commands seen.
    pub count: usize,
    /// Rewrites (count, command) → command to send.
    pub tamper: F,
}

impl<T: Transport, F: FnMut(usize, Vec<u8>) -> Vec<u8>> Transport for TamperingTransport<T, F> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.count += 1;
        let command = (self.tamper)(self.count, command.to_vec());
        self.inner.transmit(&command)
    }
}

/// A transport that breaks after `limit` APDUs: the command numbered `limit`
/// reaches the card but its response is lost, and nothing more is delivered.
pub struct TearingTransport<T> {
    /// The wrapped transport.
    pub inner: T,
    /// APDUs delivered so far.
    pub delivered: usize,
    /// After this many, the connection is gone.
    pub limit: usize,
}

impl<T: Transport> Transport for TearingTransport<T> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        if self.delivered >= self.limit {
            return Err(TransportError::Disconnected);
        }
        self.delivered += 1;
        let response = self.inner.transmit(command)?;
        if self.delivered == self.limit {
            return Err(TransportError::Disconnected);
        }
        Ok(response)
    }
}

/// VERIFY of the user PIN (`00 20 00 81`); an empty `pin` asks for the status.
/// Returns the status word.
pub fn verify_pin<T: Transport>(link: &mut CardLink<T>, pin: &[u8]) -> u16 {
    link.send([0x00, 0x20, 0x00, 0x81], pin).expect("VERIFY").sw
}

/// PERFORM SECURITY OPERATION: COMPUTE DIGITAL SIGNATURE (`00 2A 9E 9A`) over
/// `digest`, in plain.
pub fn compute_signature<T: Transport>(
    link: &mut CardLink<T>,
    digest: &[u8],
) -> imprint_apdu::Response {
    link.send([0x00, 0x2A, 0x9E, 0x9A], digest)
        .expect("PERFORM SECURITY OPERATION")
}

/// Personalizes with a user PIN and a recording journal.
pub fn personalized_with_pin<T: Transport>(
    link: &mut CardLink<T>,
    unit: &UnitCredentials,
    pin: &[u8],
) -> Result<PersonalizationReport, PersonalizeError> {
    let options = PersonalizationOptions {
        pin: Some(zeroize::Zeroizing::new(pin.to_vec())),
        ..PersonalizationOptions::default()
    };
    personalize(link, &mut RecordingJournal::default(), unit, options)
}

/// Reads the committed records of a key memory.
pub fn records_of<K: KeyMemory>(memory: &mut K) -> imprint_apdu::keymem::Records {
    memory.load().expect("records")
}

/// Modules as in-process applets over file key memories in temporary directories.
#[derive(Default)]
pub struct InProcessHarness {
    dirs: Vec<tempfile::TempDir>,
}

impl claims::Harness for InProcessHarness {
    type T = InProcessTransport<FileKeyMemory>;

    fn blank_module(&mut self) -> (CardLink<Self::T>, PathBuf) {
        let dir = tempfile::tempdir().expect("module dir");
        let path = dir.path().to_path_buf();
        self.dirs.push(dir);
        (file_module(&path), path)
    }
}

/// Issues module certificates for a request altered by a closure first: a
/// certificate for another key, nonce or serial, signed by the real unit key.
pub struct AlteredIssuer<F>(pub F);

impl<F: Fn(&mut imprint_apdu::host::personalize::ModuleCertificateRequest)> ModuleCertificateIssuer
    for AlteredIssuer<F>
{
    fn issue(
        &self,
        unit: &UnitCredentials,
        request: &imprint_apdu::host::personalize::ModuleCertificateRequest,
    ) -> Result<Certificate, issue::IssueError> {
        let mut altered = request.clone();
        (self.0)(&mut altered);
        altered.issue_with_unit_key(unit)
    }
}
