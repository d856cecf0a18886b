//! Benchmarks (DESIGN §7): ratios against baselines measured in the same run.
//!
//! ```text
//!  crypto_rates(d) ─▶ p384 sign_prehash_with_rng (hedged) for ~d ─▶ signatures/s
//!                  ─▶ p384 verify_prehash for ~d ───────────────▶ verifications/s
//!  openssl_speed() ─▶ `openssl speed -seconds 3 ecdsap384` ─▶ parse "384 bits ecdsa (nistp384)"
//!  p384_rates(d)   ─▶ crypto_rates + ECDH (SessionKeys::derive) + key generation ─▶ P384Rates
//!
//!  pcscd::select_round_trips ─▶ SELECT loop through pcscd ─▶ Timings (median, p90)
//!  pcscd::personalizations ──▶ connect + personalize + disconnect, N times ─▶ per card
//!      floor = APDUs × median round trip + PERSONALIZATION_OPS at P384Rates
//!  station::throughput ──────▶ run_station rounds on all readers, then on the first ─▶ cards/min
//!  relay::compare ───────────▶ personalize() direct, and through the relay on loopback
//!                              (claim 14), alternating on fresh modules ─▶ Timings, APDUs, ratio
//! ```
//!
//! The PC/SC benchmarks need a card (an Imprint module) in each reader; they
//! start none themselves (`scripts/bench-pcsc` starts `imprint-card`s). The
//! relay benchmark needs nothing: its modules, unit and relay run in-process.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use imprint_apdu::channel::{self, SessionKeys, derive_scalar, sha384};
use p384::PublicKey;
use p384::ecdsa::Signature;
use p384::ecdsa::signature::hazmat::{PrehashVerifier, RandomizedPrehashSigner};

use crate::HostError;

pub mod pcscd;
pub mod relay;
pub mod station;

#[cfg(test)]
mod tests;

/// Signatures and verifications per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// ECDSA P-384 signatures per second.
    pub sign_per_s: f64,
    /// ECDSA P-384 verifications per second.
    pub verify_per_s: f64,
}

/// Measures our P-384 stack (RustCrypto `p384`): hedged signing
/// (`sign_prehash_with_rng` with the OS generator, as the applet and the unit
/// sign) and verification of SHA-384 digests, each for about `duration`.
/// Returns `(sign_per_s, verify_per_s)`.
pub fn crypto_rates(duration: Duration) -> Result<(f64, f64), HostError> {
    let key = imprint_central::keyfile::generate_signing_key()?;
    let verifying = *key.verifying_key();
    let digests: Vec<[u8; 48]> = (0u32..64).map(|i| sha384(&i.to_be_bytes())).collect();
    let sign = |digest: &[u8; 48]| -> Result<Signature, HostError> {
        key.sign_prehash_with_rng(&mut getrandom::SysRng, digest)
            .map_err(|_| HostError::Random)
    };

    let started = Instant::now();
    let mut signed = 0u64;
    while signed == 0 || started.elapsed() < duration {
        let digest = &digests[signed as usize % digests.len()];
        black_box(sign(black_box(digest))?);
        signed += 1;
    }
    let sign_per_s = signed as f64 / started.elapsed().as_secs_f64();

    let signatures = digests
        .iter()
        .map(|digest| sign(digest).map(|signature| (*digest, signature)))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let mut verified = 0u64;
    while verified == 0 || started.elapsed() < duration {
        let (digest, signature) = &signatures[verified as usize % signatures.len()];
        if verifying
            .verify_prehash(black_box(digest), black_box(signature))
            .is_err()
        {
            return Err(HostError::BenchSelfCheck);
        }
        verified += 1;
    }
    let verify_per_s = verified as f64 / started.elapsed().as_secs_f64();
    Ok((sign_per_s, verify_per_s))
}

/// Runs `openssl speed -seconds 3 ecdsap384` (about 6 s) and returns its
/// signatures and verifications per second.
pub fn openssl_speed() -> Result<Rates, HostError> {
    let output = Command::new("openssl")
        .args(["speed", "-seconds", "3", "ecdsap384"])
        .output()
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => HostError::OpensslMissing,
            _ => HostError::OpensslSpawn(err),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(HostError::OpensslFailed {
            status: output.status.to_string(),
            stderr: stderr.lines().last().unwrap_or_default().trim().to_owned(),
        });
    }
    parse_openssl_speed(&String::from_utf8_lossy(&output.stdout))
}

/// Finds the nistp384 result line of `openssl speed` output, e.g.
///
/// ```text
///                               sign    verify    sign/s verify/s
///  384 bits ecdsa (nistp384)   0.0009s   0.0007s   1099.9   1466.7
/// ```
///
/// and returns its last two numbers (sign/s, verify/s).
pub fn parse_openssl_speed(output: &str) -> Result<Rates, HostError> {
    output
        .lines()
        .filter(|line| {
            let line = line.to_ascii_lowercase();
            line.contains("nistp384")
                && line.contains("ecdsa")
                && !line.trim_start().starts_with("doing")
        })
        .find_map(|line| {
            let numbers: Vec<f64> = line
                .split_whitespace()
                .filter_map(|token| token.parse::<f64>().ok())
                .filter(|value| value.is_finite() && *value > 0.0)
                .collect();
            match numbers.as_slice() {
                [.., sign, verify] if numbers.len() >= 3 => Some(Rates {
                    sign_per_s: *sign,
                    verify_per_s: *verify,
                }),
                _ => None,
            }
        })
        .ok_or_else(|| HostError::OpensslUnparsable {
            excerpt: output.chars().take(200).collect(),
        })
}

/// Runs `op` repeatedly for about `duration` (at least once) and returns how
/// many times per second it ran.
fn per_second(
    duration: Duration,
    mut op: impl FnMut(u64) -> Result<(), HostError>,
) -> Result<f64, HostError> {
    let started = Instant::now();
    let mut done = 0u64;
    while done == 0 || started.elapsed() < duration {
        op(done)?;
        done += 1;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// A fresh ephemeral scalar, derived as the protocol derives them.
fn ephemeral_scalar() -> Result<p384::NonZeroScalar, HostError> {
    let mut randomness = [0u8; 48];
    getrandom::fill(&mut randomness).map_err(|_| HostError::Random)?;
    derive_scalar(&randomness, &[], b"ephemeral").ok_or(HostError::Random)
}

/// Key agreements per second, as each side of the channel does one: ECDH
/// P-384 with a validated peer point and the HKDF-SHA384 key schedule
/// ([`SessionKeys::derive`]), for about `duration`.
pub fn ecdh_rate(duration: Duration) -> Result<f64, HostError> {
    let secret = ephemeral_scalar()?;
    let peers = (0..8)
        .map(|_| ephemeral_scalar().map(|scalar| PublicKey::from_secret_scalar(&scalar)))
        .collect::<Result<Vec<_>, _>>()?;
    let th = sha384(b"bench transcript");
    per_second(duration, |i| {
        let peer = &peers[i as usize % peers.len()];
        black_box(SessionKeys::derive(
            black_box(&secret),
            black_box(peer),
            &th,
        ));
        Ok(())
    })
}

/// Key generations per second, as the protocol forms keys: 48 bytes from
/// the OS generator, the HKDF scalar derivation and the public point, for
/// about `duration`.
pub fn keygen_rate(duration: Duration) -> Result<f64, HostError> {
    per_second(duration, |_| {
        let scalar = ephemeral_scalar()?;
        black_box(channel::encode_point(&PublicKey::from_secret_scalar(
            black_box(&scalar),
        )));
        Ok(())
    })
}

/// Our P-384 operations per second, one core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct P384Rates {
    /// ECDSA signatures (hedged) per second.
    pub sign_per_s: f64,
    /// ECDSA verifications per second.
    pub verify_per_s: f64,
    /// Key agreements (ECDH and key schedule) per second.
    pub ecdh_per_s: f64,
    /// Key generations per second.
    pub keygen_per_s: f64,
}

/// Measures every rate of [`P384Rates`], each for about `duration`.
pub fn p384_rates(duration: Duration) -> Result<P384Rates, HostError> {
    let (sign_per_s, verify_per_s) = crypto_rates(duration)?;
    Ok(P384Rates {
        sign_per_s,
        verify_per_s,
        ecdh_per_s: ecdh_rate(duration)?,
        keygen_per_s: keygen_rate(duration)?,
    })
}

/// Counts of P-384 operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct P384Ops {
    /// ECDSA signatures.
    pub sign: u32,
    /// ECDSA verifications.
    pub verify: u32,
    /// Key agreements.
    pub ecdh: u32,
    /// Key generations.
    pub keygen: u32,
}

/// The P-384 operations of one personalization, both sides (a
/// re-personalization adds none: TERMINATE is symmetric cryptography only).
///
/// | Side | Sign | Verify | ECDH | Key generation |
/// |---|---|---|---|---|
/// | unit | σU, the module certificate | identity certificate, σM, π, the issued certificate (self-check) | 1 | eU |
/// | module | σM, π | unit certificate (by M), σU, the three certificates of PUT DATA | 1 | eM, the module key |
/// | total | 4 | 9 | 2 | 3 |
pub const PERSONALIZATION_OPS: P384Ops = P384Ops {
    sign: 4,
    verify: 9,
    ecdh: 2,
    keygen: 3,
};

impl P384Ops {
    /// How long these operations take at `rates`, one after the other.
    pub fn time_at(&self, rates: &P384Rates) -> Duration {
        let seconds = f64::from(self.sign) / rates.sign_per_s
            + f64::from(self.verify) / rates.verify_per_s
            + f64::from(self.ecdh) / rates.ecdh_per_s
            + f64::from(self.keygen) / rates.keygen_per_s;
        if seconds.is_finite() && seconds >= 0.0 {
            Duration::from_secs_f64(seconds)
        } else {
            Duration::MAX
        }
    }
}

/// The least a personalization can take on this machine: its APDUs at the
/// median raw round trip, plus its P-384 operations at our measured rates.
/// Everything else (AES-GCM, certificate building and parsing, the key
/// memory's files, the journal, connecting) is what a run spends above it.
pub fn floor(apdus: u32, round_trip: Duration, crypto: Duration) -> Duration {
    round_trip.saturating_mul(apdus).saturating_add(crypto)
}

/// Summary statistics of a sample of durations (all zero for no samples).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Samples.
    pub count: usize,
    /// The median (the mean of the two middle values for an even count).
    pub median: Duration,
    /// The 90th percentile (nearest rank).
    pub p90: Duration,
    /// The fastest.
    pub min: Duration,
    /// The slowest.
    pub max: Duration,
}

impl Timings {
    /// The statistics of `samples`; `None` when empty.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let median = crate::station::median(&sorted)?;
        // Nearest rank: the smallest value with at least 90 % of the sample at or below it.
        let rank = (sorted.len() * 9).div_ceil(10).max(1);
        Some(Self {
            count: sorted.len(),
            median,
            p90: sorted[rank - 1],
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// A duration in milliseconds, for tables.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A duration in microseconds, for tables.
pub fn us(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000_000.0
}
