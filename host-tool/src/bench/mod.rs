//! P-384 signature rates of our stack, and the baseline from `openssl speed`
//! measured in the same run (DESIGN §7).
//!
//! ```text
//!  crypto_rates(d) ─▶ p384 sign_prehash_with_rng (hedged) for ~d ─▶ signatures/s
//!                  ─▶ p384 verify_prehash for ~d ───────────────▶ verifications/s
//!  openssl_speed() ─▶ `openssl speed -seconds 3 ecdsap384` ─▶ parse "384 bits ecdsa (nistp384)"
//! ```

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use imprint_apdu::channel::sha384;
use p384::ecdsa::Signature;
use p384::ecdsa::signature::hazmat::{PrehashVerifier, RandomizedPrehashSigner};

use crate::HostError;

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
