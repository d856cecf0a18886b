//! Signatures per second through `libimprint_pkcs11.so`, against baselines
//! measured in the same run (`scripts/bench-pkcs11` sets everything up and
//! runs this; `cargo bench` alone, without that environment, skips).
//!
//! ```text
//!  SoftHSM:  cryptoki ─▶ libsofthsm2.so, CKM_ECDSA on a P-384 key of a second token    (direct)
//!            cryptoki ─▶ libimprint_pkcs11.so ─▶ applet in-process ─▶ the same SoftHSM  (ours)
//!            batches of the two alternate; ratio = ours / direct
//!  card:     pcsc ─▶ pcscd ─▶ vpcd reader: raw SELECT round trips                       (round trip)
//!            RustCrypto p384 hedged signing in this process                             (our P-384 rate)
//!            cryptoki ─▶ libimprint_pkcs11.so ─▶ pcscd ─▶ the card: CKM_ECDSA           (ours)
//!            floor = 1 / (median round trip + one signature at our P-384 rate); ratio = ours / floor
//! ```
//!
//! Every rate is 1 / the median time of one operation. Both SoftHSM paths sign
//! 48-byte SHA-384 digests with `CKM_ECDSA` (the provider's `CKM_ECDSA_SHA384`
//! only adds hashing the message on the host).
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, and the provider loads the
//! same `libsofthsm2.so` into this process: both tokens live under the one
//! configuration. The provider accepts a library that is already initialized
//! and never finalizes it.
//!
//! Environment (all set by the script):
//!
//! | Variable | Meaning |
//! |---|---|
//! | `IMPRINT_PKCS11_CONF` | the provider's configuration: the SoftHSM module, and `[card]` with the reader |
//! | `SOFTHSM2_CONF` | SoftHSM's configuration holding both tokens |
//! | `IMPRINT_BENCH_DIRECT_TOKEN` | the label of the token signed on directly (required, or the bench skips) |
//! | `IMPRINT_BENCH_DIRECT_PIN_FILE` | that token's SoftHSM user PIN |
//! | `IMPRINT_BENCH_MODULE_PIN_FILE` | the modules' user PIN (optional: modules without a PIN) |
//! | `IMPRINT_BENCH_READER` | the reader with the Imprint card (optional: no card part) |
//! | `IMPRINT_BENCH_SIGNATURES` | timed signatures per measurement (default 2000) |
//! | `IMPRINT_BENCH_PROVIDER` | the provider (default: the one built with this bench) |

use std::ffi::CString;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, RawAuthPin};
use imprint_apdu::host::transport::encode_short;
use imprint_apdu::proto::{self, ins};
use imprint_pkcs11::softhsm::{find_library, read_pin_file};
use p384::ecdsa::signature::hazmat::RandomizedPrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha384};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The DER of the secp384r1 OID, as `CKA_EC_PARAMS`.
const SECP384R1_PARAMS: [u8; 7] = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

/// Untimed signatures before each measurement.
const WARM_UP: usize = 50;

/// The SoftHSM measurements alternate in this many batches each.
const BATCHES: usize = 10;

/// Raw SELECT round trips timed.
const ROUND_TRIPS: usize = 1000;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` nothing useful.
    if let Err(err) = run() {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn run() -> BenchResult<()> {
    let Some(direct_label) = env("IMPRINT_BENCH_DIRECT_TOKEN") else {
        println!("skipped: run scripts/bench-pkcs11, which sets up the tokens and the card");
        return Ok(());
    };
    if cfg!(debug_assertions) {
        println!("note: debug build; the reference figures come from `cargo bench` (release)");
    }
    let signatures = match env("IMPRINT_BENCH_SIGNATURES") {
        Some(count) => count.parse::<usize>()?.max(BATCHES),
        None => 2000,
    };
    let module_pin = env("IMPRINT_BENCH_MODULE_PIN_FILE")
        .map(|path| read_pin_file(path.as_ref()))
        .transpose()?;
    let digests: Vec<[u8; 48]> = (0u32..64)
        .map(|i| Sha384::digest(i.to_be_bytes()).into())
        .collect();

    // SoftHSM itself, first: the provider then finds it initialized.
    let softhsm_path = find_library().ok_or("no SoftHSM library (IMPRINT_SOFTHSM_LIB)")?;
    let softhsm = load(softhsm_path)?;
    let direct_slot = slot_of_token(&softhsm, &direct_label)?;
    let direct = softhsm.open_rw_session(direct_slot)?;
    let pin_file = env("IMPRINT_BENCH_DIRECT_PIN_FILE").ok_or("IMPRINT_BENCH_DIRECT_PIN_FILE")?;
    let pin = read_pin_file(pin_file.as_ref())?;
    direct.login_with_raw(UserType::User, &RawAuthPin::new(Box::new(pin.to_vec())))?;
    let direct_key = p384_session_key(&direct)?;

    let provider_path = match env("IMPRINT_BENCH_PROVIDER") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?.with_file_name("libimprint_pkcs11.so"),
    };
    let provider = load(provider_path)?;
    let ours = module_session(
        &provider,
        "Imprint SoftHSM module",
        module_pin.as_ref().map(|pin| pin.as_slice()),
    )?;
    let ours_key = module_key(&ours)?;

    println!(
        "SoftHSM: CKM_ECDSA, P-384, {signatures} signatures each in {BATCHES} alternating batches ..."
    );
    let per_batch = signatures.div_ceil(BATCHES);
    let (mut direct_times, mut ours_times) = (Vec::new(), Vec::new());
    sign_times(&direct, direct_key, &digests, WARM_UP)?;
    sign_times(&ours, ours_key, &digests, WARM_UP)?;
    for _ in 0..BATCHES {
        direct_times.extend(sign_times(&direct, direct_key, &digests, per_batch)?);
        ours_times.extend(sign_times(&ours, ours_key, &digests, per_batch)?);
    }
    let direct_stats = Stats::of(&direct_times);
    let ours_stats = Stats::of(&ours_times);
    println!();
    println!(
        "{:<44} {:>10} {:>12} {:>12}",
        "SoftHSM backend", "sign/s", "median µs", "p90 µs"
    );
    direct_stats.row("SoftHSM direct (cryptoki, libsofthsm2.so)");
    ours_stats.row("through our module (libimprint_pkcs11.so)");
    println!(
        "{:<44} {:>9.2}x",
        "ratio ours/direct",
        ours_stats.rate() / direct_stats.rate()
    );
    drop(ours);

    match env("IMPRINT_BENCH_READER") {
        Some(reader) => card(
            &provider,
            &reader,
            &digests,
            signatures,
            module_pin.as_ref().map(|pin| pin.as_slice()),
        )?,
        None => println!("\ncard: skipped (no IMPRINT_BENCH_READER)"),
    }
    drop(direct);
    Ok(())
}

/// The card part: the module's signatures through pcscd against the floor.
fn card(
    provider: &Pkcs11,
    reader: &str,
    digests: &[[u8; 48]],
    signatures: usize,
    module_pin: Option<&[u8]>,
) -> BenchResult<()> {
    println!();
    println!("card in {reader:?}: raw SELECT round trips through pcscd, {ROUND_TRIPS} rounds ...");
    // Before the provider connects: a SELECT between its commands would
    // reset the module's PIN verification.
    let trips = Stats::of(&select_round_trips(reader, ROUND_TRIPS)?);
    println!("our P-384 signing (RustCrypto p384, hedged), {signatures} signatures ...");
    let p384 = Stats::of(&p384_sign_times(digests, signatures)?);
    println!("through our module: CKM_ECDSA, {signatures} signatures ...");
    let session = module_session(provider, reader, module_pin)?;
    let key = module_key(&session)?;
    sign_times(&session, key, digests, WARM_UP)?;
    let ours = Stats::of(&sign_times(&session, key, digests, signatures)?);
    drop(session);
    let floor = trips.median + p384.median;

    println!();
    println!(
        "{:<44} {:>10} {:>12} {:>12}",
        "card (vpcd)", "per s", "median µs", "p90 µs"
    );
    trips.row("raw SELECT round trip through pcscd");
    p384.row("one P-384 signature, our rate");
    println!(
        "{:<44} {:>10.1} {:>12.1}",
        "floor = 1/(round trip + one signature)",
        1.0 / floor.as_secs_f64(),
        us(floor)
    );
    ours.row("through our module (libimprint_pkcs11.so)");
    println!(
        "{:<44} {:>9.2}x",
        "ratio ours/floor",
        ours.rate() * floor.as_secs_f64()
    );
    Ok(())
}

fn load(path: PathBuf) -> BenchResult<Pkcs11> {
    let pkcs11 = Pkcs11::new(&path).map_err(|err| format!("loading {}: {err}", path.display()))?;
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    Ok(pkcs11)
}

fn slot_of_token(pkcs11: &Pkcs11, label: &str) -> BenchResult<Slot> {
    for slot in pkcs11.get_slots_with_initialized_token()? {
        if pkcs11.get_token_info(slot)?.label() == label {
            return Ok(slot);
        }
    }
    Err(format!("no token labelled {label:?}").into())
}

/// A session on the provider's slot whose description starts with
/// `description`, logged in with `pin` if the token asks for one.
fn module_session(pkcs11: &Pkcs11, description: &str, pin: Option<&[u8]>) -> BenchResult<Session> {
    let mut found = None;
    for slot in pkcs11.get_slots_with_token()? {
        if pkcs11
            .get_slot_info(slot)?
            .slot_description()
            .starts_with(description)
        {
            found = Some(slot);
        }
    }
    let slot = found.ok_or_else(|| format!("the provider has no token in {description:?}"))?;
    let session = pkcs11.open_ro_session(slot)?;
    if pkcs11.get_token_info(slot)?.login_required() {
        let pin = pin.ok_or("the module has a PIN: set IMPRINT_BENCH_MODULE_PIN_FILE")?;
        let pin = std::str::from_utf8(pin)?;
        session.login(UserType::User, Some(&AuthPin::from(pin)))?;
    }
    Ok(session)
}

fn module_key(session: &Session) -> BenchResult<ObjectHandle> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"module".to_vec()),
        ])?
        .first()
        .copied()
        .ok_or_else(|| "no module key: is the module personalized?".into())
}

/// A P-384 key pair generated in the session (not a token object).
fn p384_session_key(session: &Session) -> BenchResult<ObjectHandle> {
    let (_, private) = session.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::Verify(true),
            Attribute::EcParams(SECP384R1_PARAMS.to_vec()),
        ],
        &[
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
        ],
    )?;
    Ok(private)
}

/// Times `count` `CKM_ECDSA` signatures of SHA-384 digests.
fn sign_times(
    session: &Session,
    key: ObjectHandle,
    digests: &[[u8; 48]],
    count: usize,
) -> BenchResult<Vec<Duration>> {
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let digest = &digests[i % digests.len()];
        let started = Instant::now();
        let signature = session.sign(&Mechanism::Ecdsa, key, black_box(digest))?;
        times.push(started.elapsed());
        if signature.len() != 96 {
            return Err(format!("a {}-byte signature", signature.len()).into());
        }
    }
    Ok(times)
}

/// Times `rounds` SELECTs of our applet (short APDU, answered with the FCI)
/// on the card in `reader`, after a warm-up, connected shared as the
/// provider connects.
fn select_round_trips(reader: &str, rounds: usize) -> BenchResult<Vec<Duration>> {
    let context = pcsc::Context::establish(pcsc::Scope::User)?;
    let name = CString::new(reader)?;
    let card = context.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)?;
    let select = encode_short([0x00, ins::SELECT, 0x04, 0x00], &proto::AID, true);
    let mut buffer = [0u8; pcsc::MAX_BUFFER_SIZE];
    let mut times = Vec::with_capacity(rounds);
    for round in 0..WARM_UP + rounds {
        let started = Instant::now();
        let answer = card.transmit(&select, &mut buffer)?;
        let elapsed = started.elapsed();
        if !answer.ends_with(&[0x90, 0x00]) {
            return Err(format!("SELECT answered {answer:02X?}").into());
        }
        if round >= WARM_UP {
            times.push(elapsed);
        }
    }
    card.disconnect(pcsc::Disposition::LeaveCard)
        .map_err(|(_, err)| err)?;
    Ok(times)
}

/// Times `count` hedged P-384 signatures with RustCrypto `p384`, as the
/// applet signs (`sign_prehash_with_rng` with the OS generator).
fn p384_sign_times(digests: &[[u8; 48]], count: usize) -> BenchResult<Vec<Duration>> {
    let key = loop {
        let mut bytes = [0u8; 48];
        getrandom::fill(&mut bytes).map_err(|err| format!("getrandom: {err}"))?;
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            break key;
        }
    };
    let mut times = Vec::with_capacity(count);
    for i in 0..WARM_UP + count {
        let digest = &digests[i % digests.len()];
        let started = Instant::now();
        let signature: Signature = key
            .sign_prehash_with_rng(&mut getrandom::SysRng, black_box(digest))
            .map_err(|err| format!("p384: {err}"))?;
        let elapsed = started.elapsed();
        black_box(signature);
        if i >= WARM_UP {
            times.push(elapsed);
        }
    }
    Ok(times)
}

/// Median and 90th percentile of a sample.
#[derive(Clone, Copy)]
struct Stats {
    median: Duration,
    p90: Duration,
}

impl Stats {
    fn of(samples: &[Duration]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        if n == 0 {
            return Self {
                median: Duration::ZERO,
                p90: Duration::ZERO,
            };
        }
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2
        };
        Self {
            median,
            p90: sorted[(n * 9).div_ceil(10).max(1) - 1],
        }
    }

    fn rate(&self) -> f64 {
        1.0 / self.median.as_secs_f64()
    }

    fn row(&self, name: &str) {
        println!(
            "{name:<44} {:>10.1} {:>12.1} {:>12.1}",
            self.rate(),
            us(self.median),
            us(self.p90)
        );
    }
}

fn us(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000_000.0
}
