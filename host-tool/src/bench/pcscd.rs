//! Through `pcscd`, on the card in one reader: the raw APDU round trip, and
//! whole personalizations against their floor (DESIGN §7: "raw APDU round
//! trip through pcscd, against a whole personalization").
//!
//! ```text
//!  select_round_trips: connect (exclusive, no probe) ─▶ SELECT × (warm-up + rounds) ─▶ Timings
//!  personalizations:   one PC/SC context; per card (one warm-up first, not measured):
//!                      connect (+ probe) ─▶ personalize (journal timed apart) ─▶ disconnect (reset)
//! ```
//!
//! The card is re-personalized each time; every certificate is journaled as
//! in any personalization.

use std::time::{Duration, Instant};

use imprint_apdu::Lifecycle;
use imprint_apdu::host::transport::encode_short;
use imprint_apdu::host::{
    CardLink, IssuanceJournal, IssuedCertificate, JournalError, PersonalizationOptions, Transport,
    UnitCredentials, personalize,
};
use imprint_apdu::iso::sw;
use imprint_apdu::proto::{self, ins};

use super::Timings;
use crate::HostError;
use crate::pcsc::{self, Access, ConnectOptions, LengthMode, OnClose, PcscTransport};

/// SELECTs before the timed ones (connection and caches warm up).
const WARM_UP: usize = 20;

/// Bytes of fresh randomness sent as each card's variation value.
const VARIATION_LEN: usize = 32;

/// Times `rounds` SELECTs of our applet (short APDU, answered with the FCI)
/// on the card in `reader`, after a warm-up. The card is held exclusively
/// and left as it is.
pub fn select_round_trips(reader: &str, rounds: usize) -> Result<Timings, HostError> {
    let options = ConnectOptions {
        access: Access::Exclusive,
        // No probe: nothing but the SELECTs reaches the card.
        short_apdus: true,
        on_close: OnClose::Leave,
    };
    let mut transport = PcscTransport::open(reader, options)?;
    let select = encode_short([0x00, ins::SELECT, 0x04, 0x00], &proto::AID, true);
    let mut times = Vec::with_capacity(rounds);
    for round in 0..WARM_UP + rounds.max(1) {
        let started = Instant::now();
        let answer = transport.transmit(&select)?;
        let elapsed = started.elapsed();
        let status = match answer.as_slice() {
            [.., sw1, sw2] => u16::from_be_bytes([*sw1, *sw2]),
            _ => 0,
        };
        if status != sw::OK {
            return Err(HostError::NotImprintModule { sw: status });
        }
        if round >= WARM_UP {
            times.push(elapsed);
        }
    }
    transport.close()?;
    Ok(Timings::of(&times).unwrap_or_default())
}

/// Whole personalizations of the card in one reader.
#[derive(Debug, Clone)]
pub struct PersonalizationBench {
    /// APDUs on the wire per card (the transport's probe included).
    pub apdus: u32,
    /// Whether the measured runs were re-personalizations (the card was OPERATING).
    pub repersonalization: bool,
    /// How the transport talked to the card.
    pub length: LengthMode,
    /// Per card: connect, personalize and disconnect.
    pub total: Timings,
    /// Connecting (SCardConnect and the probe SELECT).
    pub connect: Timings,
    /// The personalization itself, the journal included.
    pub personalize: Timings,
    /// Of it, the issuance journal (record, then mark installed).
    pub journal: Timings,
    /// Disconnecting with a card reset.
    pub disconnect: Timings,
}

/// Personalizes the card in `reader` `cards` times (after one warm-up run
/// that is not measured), connecting with `options` through one PC/SC
/// context, as a station worker does. Every certificate goes to `journal`.
pub fn personalizations(
    reader: &str,
    options: ConnectOptions,
    unit: &UnitCredentials,
    journal: &mut dyn IssuanceJournal,
    cards: usize,
    validity_years: u32,
) -> Result<PersonalizationBench, HostError> {
    let context = pcsc::establish()?;
    let names = pcsc::reader_names_in(&context)?;
    if !names.iter().any(|name| name == reader) {
        return Err(HostError::UnknownReader {
            name: reader.to_owned(),
            available: names,
        });
    }
    let mut samples: [Vec<Duration>; 5] = Default::default();
    let mut last = None;
    for run in 0..=cards.max(1) {
        let started = Instant::now();
        let transport = PcscTransport::connect(&context, reader, options)?;
        let connected = Instant::now();
        let length = transport.length_mode();
        let mut link = CardLink::new(transport);
        let mut timed = TimedJournal {
            inner: &mut *journal,
            spent: Duration::ZERO,
        };
        let mut variation = vec![0u8; VARIATION_LEN];
        getrandom::fill(&mut variation).map_err(|_| HostError::Random)?;
        let options = PersonalizationOptions {
            variation,
            validity_years,
            ..PersonalizationOptions::default()
        };
        let report = personalize(&mut link, &mut timed, unit, options)?;
        let personalized = Instant::now();
        let transport = link.into_transport();
        let apdus = transport.exchanged();
        transport.close()?;
        let closed = Instant::now();
        last = Some((apdus, report.lifecycle_before, length));
        if run == 0 {
            continue;
        }
        for (sample, value) in samples.iter_mut().zip([
            closed - started,
            connected - started,
            personalized - connected,
            timed.spent,
            closed - personalized,
        ]) {
            sample.push(value);
        }
    }
    let (apdus, before, length) = last.unwrap_or((0, Lifecycle::default(), LengthMode::Extended));
    let [total, connect, personalize, journal, disconnect] =
        samples.map(|sample| Timings::of(&sample).unwrap_or_default());
    Ok(PersonalizationBench {
        apdus,
        repersonalization: before == Lifecycle::Operating,
        length,
        total,
        connect,
        personalize,
        journal,
        disconnect,
    })
}

/// A journal that adds up the time spent in it.
struct TimedJournal<'j> {
    inner: &'j mut dyn IssuanceJournal,
    spent: Duration,
}

impl TimedJournal<'_> {
    fn timed<T>(&mut self, op: impl FnOnce(&mut dyn IssuanceJournal) -> T) -> T {
        let started = Instant::now();
        let result = op(&mut *self.inner);
        self.spent += started.elapsed();
        result
    }
}

impl IssuanceJournal for TimedJournal<'_> {
    fn record_issued(&mut self, issued: &IssuedCertificate) -> Result<i64, JournalError> {
        self.timed(|journal| journal.record_issued(issued))
    }

    fn mark_installed(&mut self, id: i64) -> Result<(), JournalError> {
        self.timed(|journal| journal.mark_installed(id))
    }

    fn mark_failed(&mut self, id: i64, reason: &str) -> Result<(), JournalError> {
        self.timed(|journal| journal.mark_failed(id, reason))
    }
    fn tan_salt(&mut self) -> Result<Option<[u8; 32]>, JournalError> {
        self.timed(|journal| journal.tan_salt())
    }

    fn check_tan(
        &mut self,
        serial: &str,
        th: &imprint_apdu::channel::Digest48,
        proof: &[u8],
    ) -> Result<imprint_apdu::host::tan::TanCheck, JournalError> {
        self.timed(|journal| journal.check_tan(serial, th, proof))
    }
}
