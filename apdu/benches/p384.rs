//! The P-384 operations of our crypto stack (RustCrypto `p384`), one at a time:
//! what every personalization and channel is made of.
//!
//! ```text
//!  p384/ecdsa_sign_prehash_hedged   SigningKey::sign_prehash_with_rng(OS RNG)   (the unit's signatures)
//!  p384/keymem_sign_digest          KeyMemory::sign_digest on a RAM key memory  (the module's signatures)
//!  p384/ecdsa_verify_prehash        channel::verify_raw_signature               (transcript signatures)
//!  p384/certificate_verify          pki::verify_issued_by                       (every certificate link)
//!  p384/ecdh                        ECDH shared secret
//!  p384/session_keys                ECDH + HKDF-SHA384 key schedule             (both channel ends)
//! ```
//!
//! The per-core reference for these numbers is `openssl speed ecdsap384` on
//! the same machine (DESIGN §7, §10).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use imprint_apdu::channel::{self, SessionKeys, derive_scalar};
use imprint_apdu::keymem::memory::MemoryKeyMemory;
use imprint_apdu::keymem::{KeyMemory, KeySlot};
use imprint_apdu::pki::issue::{self, CertificateRequest, IssuerKey, Validity};
use imprint_apdu::pki::{self, Role};
use p384::ecdsa::signature::hazmat::RandomizedPrehashSigner;
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use p384::elliptic_curve::ecdh::diffie_hellman;
use p384::{NonZeroScalar, PublicKey};

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("OS random");
    bytes
}

fn random_scalar() -> NonZeroScalar {
    derive_scalar(&random_bytes(), &[], b"bench").expect("scalar")
}

fn ecdsa(c: &mut Criterion) {
    let key = SigningKey::from(random_scalar());
    let verifying_key = VerifyingKey::from(&key);
    let digest = channel::sha384(b"a transcript hash stands in here");
    let mut group = c.benchmark_group("p384");

    group.bench_function("ecdsa_sign_prehash_hedged", |b| {
        b.iter(|| -> Signature {
            key.sign_prehash_with_rng(&mut getrandom::SysRng, black_box(&digest))
                .expect("sign")
        })
    });

    let mut memory = MemoryKeyMemory::new(random_bytes());
    memory
        .generate(KeySlot::Identity, &[])
        .expect("identity key");
    group.bench_function("keymem_sign_digest", |b| {
        b.iter(|| {
            memory
                .sign_digest(KeySlot::Identity, black_box(&digest))
                .expect("sign")
        })
    });

    let signature: Signature = key
        .sign_prehash_with_rng(&mut getrandom::SysRng, &digest)
        .expect("sign");
    let raw = signature.to_bytes();
    group.bench_function("ecdsa_verify_prehash", |b| {
        b.iter(|| {
            channel::verify_raw_signature(&verifying_key, black_box(&digest), black_box(&raw))
                .expect("verify")
        })
    });

    // One link of a chain: a personalizer certificate under a manufacturer root.
    let root_key = SigningKey::from(random_scalar());
    let root = issue::self_signed_root(
        Role::Manufacturer,
        "Bench Root",
        &root_key,
        Validity::years_from_now(30).expect("validity"),
    )
    .expect("root");
    let request = CertificateRequest::new("Bench Unit", &key).expect("request");
    let child = issue::personalizer_cert(
        IssuerKey {
            cert: &root,
            key: &root_key,
        },
        &request,
        Validity::years_from_now(10).expect("validity"),
    )
    .expect("certificate");
    group.bench_function("certificate_verify", |b| {
        b.iter(|| pki::verify_issued_by(black_box(&child), black_box(&root), 0).expect("verify"))
    });

    let secret = random_scalar();
    let peer = PublicKey::from_secret_scalar(&random_scalar());
    group.bench_function("ecdh", |b| {
        b.iter(|| diffie_hellman(black_box(&secret), peer.as_affine()))
    });

    let th = channel::sha384(b"transcript");
    group.bench_function("session_keys", |b| {
        b.iter(|| SessionKeys::derive(black_box(&secret), &peer, &th))
    });

    group.finish();
}

criterion_group!(benches, ecdsa);
criterion_main!(benches);
