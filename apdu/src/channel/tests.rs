//! Unit tests of the channel core, with a fixed-randomness test vector that
//! `docs/protocol.md` reproduces byte for byte.

use super::*;
use crate::channel::transaction::{TransactionKeys, TransactionValues};
use alloc::string::String;
use alloc::vec;
use p384::ecdsa::SigningKey;
use p384::ecdsa::signature::hazmat::PrehashSigner;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| alloc::format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    let text: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    text.chunks(2)
        .map(|pair| u8::from_str_radix(core::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// The header of the first secured command of the vector: GENERATE ASYMMETRIC
/// KEY PAIR of the module key under secure messaging.
const HEADER: [u8; 4] = [0x0C, 0x47, 0x80, 0x02];

/// Every input of the test vector, fixed.
struct Vector {
    unit_secret: NonZeroScalar,
    module_secret: NonZeroScalar,
    unit_point: Vec<u8>,
    module_point: Vec<u8>,
    unit_cert_hash: Digest48,
    module_cert_hash: Digest48,
    unit_challenge: [u8; 32],
    module_challenge: [u8; 32],
    nonce: [u8; 16],
}

impl Vector {
    fn new() -> Self {
        let unit_secret = derive_scalar(&[0x11; 48], &[], b"ephemeral").unwrap();
        let module_secret = derive_scalar(&[0x22; 48], &[], b"ephemeral").unwrap();
        Self {
            unit_point: encode_point(&PublicKey::from_secret_scalar(&unit_secret)),
            module_point: encode_point(&PublicKey::from_secret_scalar(&module_secret)),
            unit_secret,
            module_secret,
            unit_cert_hash: sha384(b"unit certificate"),
            module_cert_hash: sha384(b"identity certificate"),
            unit_challenge: [0x33; 32],
            module_challenge: [0x44; 32],
            nonce: [0x55; 16],
        }
    }

    fn th(&self) -> Digest48 {
        HandshakeValues {
            unit_cert_hash: &self.unit_cert_hash,
            unit_ephemeral: &self.unit_point,
            unit_challenge: &self.unit_challenge,
            module_cert_hash: &self.module_cert_hash,
            module_ephemeral: &self.module_point,
            module_challenge: &self.module_challenge,
            module_nonce: &self.nonce,
        }
        .transcript_hash(ChannelKind::Personalization)
    }

    /// (unit's keys, module's keys).
    fn keys(&self) -> (SessionKeys, SessionKeys) {
        let th = self.th();
        let unit_peer = parse_point(&self.module_point).unwrap();
        let module_peer = parse_point(&self.unit_point).unwrap();
        (
            SessionKeys::derive(&self.unit_secret, &unit_peer, &th),
            SessionKeys::derive(&self.module_secret, &module_peer, &th),
        )
    }

    /// (unit's secure messaging, module's secure messaging).
    fn secure_messaging(&self) -> (SecureMessaging, SecureMessaging) {
        let (unit, module) = self.keys();
        (unit.into_secure_messaging(), module.into_secure_messaging())
    }
}

/// The plaintext of the vector's first secured command.
fn first_command() -> Vec<u8> {
    tlv::encode(tag::VARIATION, b"imprint")
}

/// The plaintext data of the vector's first secured response.
const RESPONSE_DATA: &[u8] = b"imprint response";

// ---------------------------------------------------------------------------------------------
// The test vector (docs/protocol.md, "Test vector"). Computed once from the code; any change to
// a label, a field order, a length prefix, the KDF or the SM layout makes these fail.

const UNIT_EPHEMERAL: &str = "04\
    0c4631bf84e71aba8c2a1d179dea24d078e0e4801c866f3722ab81979df249d41827eaa98243860d5d149e0430577da4\
    cf8cb9439b0dbcfbf4e245ea14cffe9f5c943c9a8dc0eb874874e562e1491e7f3fbea328e5a40a4ab60b18b4749f5406";
const MODULE_EPHEMERAL: &str = "04\
    f326c40696c4820f5a6c5dac76ae61cb035308ae15f140e9cb6a4cba6d9edeed089351c77f79a89aab33b12534f27524\
    c5ca9aeb0dc4234c7c40827702b581da936080e8f370dc1774a4d6db40e906dbdd800d687402b7932c9678567ad0d34d";
const SHARED_X: &str = "e842ae615c55e9feade4fe0d216ea97285d4827e90625f104836d71e2a69bb19c196f49de5d6bd68aedc0286cde2b9c8";
const TRANSCRIPT_HASH: &str = "d2f544f26ec69177e2fd41f7e19d022ad8c6ecc8c228b6f8fe612c6483dd1cb6701a24762d4573f2e228e3941f64d4b6";
const COMMAND_KEY: &str = "5776abd04a29004e4d86dff5e10e71568b6c1e411dce6f99c6cfc66a63a740d6";
const RESPONSE_KEY: &str = "54690153c4673c07ef23ea5c21fa6ef211537deaa6cf0ef94be7e7cb03b78ba3";
const UNIT_CONFIRMATION_KEY: &str = "75938df7663009bcfb9dad38e43fa108ec0abf74639911009f5d41729f0aab635b0ca8aeff77b53890fee1adea283802";
const MODULE_CONFIRMATION_KEY: &str = "753615d85f060ca52fee5eb3a58e30fc118a1035e09d6eb9a99e607bfa224da2b18a08c79bbdd5cf832221939a5069c7";
const UNIT_CONFIRMATION: &str = "b02dd3c97de21b3f575fe69a4e1b77817d8e6e854f41ed1ba1b1197e2714bf8de5f67afd8d4865f43212be6769f2585a";
const MODULE_CONFIRMATION: &str = "7fab582e4baff0b3b11924374b99373f68fd3d888d7f419ca55c12c7957af5782349f3abc17ed5dc71382d1a81e6dcd8";
const UNIT_SIGNED_DIGEST: &str = "06bdc2a735deb3cc19b515440c1dd0e8340bf4604c41617836a9219ab1e240c33481bf06a32019717e6a5dea3d84f2e4";
const MODULE_SIGNED_DIGEST: &str = "226a0fe9b46f096f48bf25be2466b4c4fd3c76f805bed958ecc21494645c4e957213c75d106741202e14196b609fb8a4";
/// `possession_digest(TH, module ephemeral point, b"imprint")`: the layout, with a known point.
const POSSESSION_DIGEST: &str = "644e878fb1a5d7430ea04ead6c01005ed5268fb659df24eaf8b2cd0516a5a1e9774e96b30e9fc6d776b1b3417b95b08f";
/// `85 09 <ciphertext of 80 07 "imprint"> 8E 10 <GCM tag>`, counter 1.
const FIRST_SEALED_COMMAND: &str = "8509 6d04e421ea8fbc874e 8e10 b43b9f52c7ecd6fd18dad7ccc7bd08ed";
/// `85 12 <ciphertext of "imprint response" 90 00> 8E 10 <GCM tag>`, counter 1.
const FIRST_SEALED_RESPONSE: &str =
    "8512 4b7c609a9e5e47ee11856fde73fc1fdfe1d6 8e10 3a7d9c8992f568af88733a7f375cdd99";

#[test]
fn vector_inputs() {
    let v = Vector::new();
    assert_eq!(hex(&v.unit_point), hex(&unhex(UNIT_EPHEMERAL)));
    assert_eq!(hex(&v.module_point), hex(&unhex(MODULE_EPHEMERAL)));
    assert_eq!(
        hex(&v.unit_cert_hash),
        "f911c0651adc05bc1d7ec123fc96132da572175e52756462905c2787d0cf734ae58266c4f9a63c61bb0eb3a2cb502a28"
    );
    assert_eq!(
        hex(&v.module_cert_hash),
        "7d54262629a5bbae9b4d1ad613c75cd10cd6a680c231aa8e6e32d5d764a8e9c9b0d74bcce4b699a80399a1eb3ac9369b"
    );
    assert_eq!(
        hex(&v.unit_secret.to_bytes()),
        "a553f8c32b0276f771f89af2e0fea9ee06556a18bdc63d0123bcdea7802a72788862b0f16853c242472a036bcec37206"
    );
    assert_eq!(
        hex(&v.module_secret.to_bytes()),
        "98a3eec62791ac1627b9c65217a9605675fc503249a5e5d73758ba72226882f8619b2e953d201f6c9d6182362a90aeb6"
    );
    let shared = diffie_hellman(
        &v.unit_secret,
        parse_point(&v.module_point).unwrap().as_affine(),
    );
    assert_eq!(hex(shared.raw_secret_bytes()), SHARED_X);
}

#[test]
fn vector_transcript_hash() {
    assert_eq!(hex(&Vector::new().th()), TRANSCRIPT_HASH);
}

#[test]
fn vector_transcript_hash_layout() {
    // TH spelled out without the Transcript type: SHA-384 over (len16 ‖ field)*.
    let v = Vector::new();
    let mut manual = Sha384::new();
    for field in [
        &b"imprint v1 personalization channel"[..],
        &[0x01],
        &v.unit_cert_hash,
        &v.unit_point,
        &v.unit_challenge,
        &v.module_cert_hash,
        &v.module_point,
        &v.module_challenge,
        &v.nonce,
    ] {
        manual.update((field.len() as u16).to_be_bytes());
        manual.update(field);
    }
    let manual: Digest48 = manual.finalize().into();
    assert_eq!(hex(&manual), TRANSCRIPT_HASH);
}

#[test]
fn vector_key_schedule() {
    let (unit, module) = Vector::new().keys();
    for keys in [&unit, &module] {
        assert_eq!(hex(&keys.command_key), COMMAND_KEY);
        assert_eq!(hex(&keys.response_key), RESPONSE_KEY);
        assert_eq!(hex(&keys.unit_confirmation_key), UNIT_CONFIRMATION_KEY);
        assert_eq!(hex(&keys.module_confirmation_key), MODULE_CONFIRMATION_KEY);
    }
}

#[test]
fn vector_key_schedule_layout() {
    // HKDF-SHA384(salt = TH, IKM = x-coordinate of the shared point, info = label).
    let kdf = hkdf::Hkdf::<Sha384>::new(Some(&unhex(TRANSCRIPT_HASH)), &unhex(SHARED_X));
    let mut command = [0u8; 32];
    kdf.expand(b"imprint v1 sm command key", &mut command)
        .unwrap();
    assert_eq!(hex(&command), COMMAND_KEY);
    let mut module = [0u8; 48];
    kdf.expand(b"imprint v1 confirmation key module", &mut module)
        .unwrap();
    assert_eq!(hex(&module), MODULE_CONFIRMATION_KEY);
}

#[test]
fn vector_confirmations() {
    let v = Vector::new();
    let th = v.th();
    let (unit, module) = v.keys();
    assert_eq!(
        hex(&unit.confirmation(Role::Unit, &th).unwrap()),
        UNIT_CONFIRMATION
    );
    assert_eq!(
        hex(&module.confirmation(Role::Module, &th).unwrap()),
        MODULE_CONFIRMATION
    );
    // Each side verifies the other's code.
    module
        .verify_confirmation(Role::Unit, &th, &unhex(UNIT_CONFIRMATION))
        .unwrap();
    unit.verify_confirmation(Role::Module, &th, &unhex(MODULE_CONFIRMATION))
        .unwrap();
    // Layout: HMAC-SHA384(k_role, label ‖ TH).
    let mut mac =
        <Hmac<Sha384> as hmac::KeyInit>::new_from_slice(&unhex(UNIT_CONFIRMATION_KEY)).unwrap();
    mac.update(b"imprint v1 key confirmation unit");
    mac.update(&th);
    assert_eq!(hex(&mac.finalize().into_bytes()), UNIT_CONFIRMATION);
}

#[test]
fn vector_signed_digests() {
    let th = Vector::new().th();
    assert_eq!(hex(&signed_digest(Role::Unit, &th)), UNIT_SIGNED_DIGEST);
    assert_eq!(hex(&signed_digest(Role::Module, &th)), MODULE_SIGNED_DIGEST);
    let mut concatenated = b"imprint v1 signature by module".to_vec();
    concatenated.extend_from_slice(&th);
    assert_eq!(hex(&sha384(&concatenated)), MODULE_SIGNED_DIGEST);
    let v = Vector::new();
    assert_eq!(
        hex(&possession_digest(&th, &v.module_point, b"imprint")),
        POSSESSION_DIGEST
    );
}

#[test]
fn vector_first_secured_command_and_response() {
    let (mut unit, mut module) = Vector::new().secure_messaging();
    assert_eq!(unit.next_counter(), 1);
    let sealed = unit.seal_command(HEADER, &first_command()).unwrap();
    assert_eq!(hex(&sealed), hex(&unhex(FIRST_SEALED_COMMAND)));
    assert_eq!(
        module.open_command(HEADER, &sealed).unwrap(),
        first_command()
    );

    let response = module.seal_response(HEADER, RESPONSE_DATA, 0x9000).unwrap();
    assert_eq!(hex(&response), hex(&unhex(FIRST_SEALED_RESPONSE)));
    let (data, status) = unit.open_response(HEADER, &response).unwrap();
    assert_eq!((data.as_slice(), status), (RESPONSE_DATA, 0x9000));
    assert_eq!(unit.next_counter(), 2);
    assert_eq!(module.next_counter(), 2);
}

#[test]
fn vector_sealing_is_aes_256_gcm_with_the_documented_nonce_and_aad() {
    // The first command spelled out with the AEAD directly.
    let cipher = Aes256Gcm::new_from_slice(&unhex(COMMAND_KEY)).unwrap();
    let nonce = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let aad = [b'C', 0, 0, 0, 0, 0, 0, 0, 1, 0x0C, 0x47, 0x80, 0x02];
    let sealed = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &first_command(),
                aad: &aad,
            },
        )
        .unwrap();
    let expected = unhex(FIRST_SEALED_COMMAND);
    assert_eq!(&sealed[..9], &expected[2..11]);
    assert_eq!(&sealed[9..], &expected[13..]);

    let cipher = Aes256Gcm::new_from_slice(&unhex(RESPONSE_KEY)).unwrap();
    let aad = [b'R', 0, 0, 0, 0, 0, 0, 0, 1, 0x0C, 0x47, 0x80, 0x02];
    let mut plain = RESPONSE_DATA.to_vec();
    plain.extend_from_slice(&[0x90, 0x00]);
    let sealed = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &plain,
                aad: &aad,
            },
        )
        .unwrap();
    let expected = unhex(FIRST_SEALED_RESPONSE);
    assert_eq!(&sealed[..18], &expected[2..20]);
    assert_eq!(&sealed[18..], &expected[22..]);
}

// ---------------------------------------------------------------------------------------------
// Key agreement and authentication.

#[test]
fn both_sides_derive_equal_keys() {
    // Random ephemerals, not the vector's: the agreement holds for any pair.
    for seed in 1u8..4 {
        let a = derive_scalar(&[seed; 48], b"", b"ephemeral").unwrap();
        let b = derive_scalar(&[seed ^ 0xFF; 48], b"", b"ephemeral").unwrap();
        let a_pub = PublicKey::from_secret_scalar(&a);
        let b_pub = PublicKey::from_secret_scalar(&b);
        let th = sha384(&[seed]);
        let unit = SessionKeys::derive(&a, &b_pub, &th);
        let module = SessionKeys::derive(&b, &a_pub, &th);
        assert_eq!(unit.command_key, module.command_key);
        assert_eq!(unit.response_key, module.response_key);
        assert_eq!(unit.unit_confirmation_key, module.unit_confirmation_key);
        assert_eq!(unit.module_confirmation_key, module.module_confirmation_key);
        // Separate keys per direction and purpose.
        assert_ne!(unit.command_key, unit.response_key);
        assert_ne!(unit.unit_confirmation_key, unit.module_confirmation_key);
    }
}

#[test]
fn keys_depend_on_the_transcript_and_the_peer() {
    let v = Vector::new();
    let th = v.th();
    let peer = parse_point(&v.module_point).unwrap();
    let base = SessionKeys::derive(&v.unit_secret, &peer, &th);
    let mut other_th = th;
    other_th[0] ^= 1;
    let other = SessionKeys::derive(&v.unit_secret, &peer, &other_th);
    assert_ne!(base.command_key, other.command_key);
    let stranger =
        PublicKey::from_secret_scalar(&derive_scalar(&[0x99; 48], &[], b"ephemeral").unwrap());
    let other = SessionKeys::derive(&v.unit_secret, &stranger, &th);
    assert_ne!(base.command_key, other.command_key);
}

#[test]
fn transcript_fields_are_length_prefixed() {
    let mut a = Transcript::new(ChannelKind::Personalization);
    a.append(b"ab");
    a.append(b"c");
    let mut b = Transcript::new(ChannelKind::Personalization);
    b.append(b"a");
    b.append(b"bc");
    assert_ne!(a.finish(), b.finish());
}

#[test]
fn transcript_hash_covers_every_field() {
    let v = Vector::new();
    let base = v.th();
    let flipped = |mut bytes: Vec<u8>| {
        bytes[1] ^= 1;
        bytes
    };
    let unit_cert = sha384(b"another unit certificate");
    let module_cert = sha384(b"another identity certificate");
    let unit_point = flipped(v.unit_point.clone());
    let module_point = flipped(v.module_point.clone());
    let unit_challenge = flipped(v.unit_challenge.to_vec());
    let module_challenge = flipped(v.module_challenge.to_vec());
    let nonce = flipped(v.nonce.to_vec());
    let variants = [
        (
            &unit_cert,
            &v.unit_point[..],
            &v.unit_challenge[..],
            &v.module_cert_hash,
            &v.module_point[..],
            &v.module_challenge[..],
            &v.nonce[..],
        ),
        (
            &v.unit_cert_hash,
            &unit_point[..],
            &v.unit_challenge[..],
            &v.module_cert_hash,
            &v.module_point[..],
            &v.module_challenge[..],
            &v.nonce[..],
        ),
        (
            &v.unit_cert_hash,
            &v.unit_point[..],
            &unit_challenge[..],
            &v.module_cert_hash,
            &v.module_point[..],
            &v.module_challenge[..],
            &v.nonce[..],
        ),
        (
            &v.unit_cert_hash,
            &v.unit_point[..],
            &v.unit_challenge[..],
            &module_cert,
            &v.module_point[..],
            &v.module_challenge[..],
            &v.nonce[..],
        ),
        (
            &v.unit_cert_hash,
            &v.unit_point[..],
            &v.unit_challenge[..],
            &v.module_cert_hash,
            &module_point[..],
            &v.module_challenge[..],
            &v.nonce[..],
        ),
        (
            &v.unit_cert_hash,
            &v.unit_point[..],
            &v.unit_challenge[..],
            &v.module_cert_hash,
            &v.module_point[..],
            &module_challenge[..],
            &v.nonce[..],
        ),
        (
            &v.unit_cert_hash,
            &v.unit_point[..],
            &v.unit_challenge[..],
            &v.module_cert_hash,
            &v.module_point[..],
            &v.module_challenge[..],
            &nonce[..],
        ),
    ];
    for (uc, up, uch, mc, mp, mch, n) in variants {
        let th = HandshakeValues {
            unit_cert_hash: uc,
            unit_ephemeral: up,
            unit_challenge: uch,
            module_cert_hash: mc,
            module_ephemeral: mp,
            module_challenge: mch,
            module_nonce: n,
        }
        .transcript_hash(ChannelKind::Personalization);
        assert_ne!(th, base);
    }
}

#[test]
fn confirmation_of_the_wrong_role_is_rejected() {
    let v = Vector::new();
    let th = v.th();
    let (unit, module) = v.keys();
    let unit_code = unit.confirmation(Role::Unit, &th).unwrap();
    let module_code = module.confirmation(Role::Module, &th).unwrap();
    assert_ne!(unit_code, module_code);
    // A reflected code (the module's own, sent back as the unit's) fails, and vice versa.
    assert_eq!(
        module.verify_confirmation(Role::Unit, &th, &module_code),
        Err(ChannelError::BadConfirmation)
    );
    assert_eq!(
        unit.verify_confirmation(Role::Module, &th, &unit_code),
        Err(ChannelError::BadConfirmation)
    );
    // Another transcript, a truncated code, an empty code.
    let mut other_th = th;
    other_th[47] ^= 0x80;
    assert_eq!(
        module.verify_confirmation(Role::Unit, &other_th, &unit_code),
        Err(ChannelError::BadConfirmation)
    );
    assert_eq!(
        module.verify_confirmation(Role::Unit, &th, &unit_code[..47]),
        Err(ChannelError::BadConfirmation)
    );
    assert_eq!(
        module.verify_confirmation(Role::Unit, &th, &[]),
        Err(ChannelError::BadConfirmation)
    );
    module
        .verify_confirmation(Role::Unit, &th, &unit_code)
        .unwrap();
}

#[test]
fn transcript_signatures_are_bound_to_the_role() {
    let th = Vector::new().th();
    let key = SigningKey::from(derive_scalar(&[0x77; 48], &[], b"key memory").unwrap());
    let verifying = VerifyingKey::from(&key);
    let signature: Signature = key.sign_prehash(&signed_digest(Role::Module, &th)).unwrap();
    let raw = signature.to_bytes();
    assert_eq!(raw.len(), len::SIGNATURE);
    verify_raw_signature(&verifying, &signed_digest(Role::Module, &th), &raw).unwrap();
    // Reflected as the other role's signature: rejected.
    assert_eq!(
        verify_raw_signature(&verifying, &signed_digest(Role::Unit, &th), &raw),
        Err(ChannelError::BadSignature)
    );
    // Wrong length, DER instead of raw, all zero: rejected without panicking.
    assert_eq!(
        verify_raw_signature(&verifying, &signed_digest(Role::Module, &th), &raw[..95]),
        Err(ChannelError::BadSignature)
    );
    let der = signature.to_der();
    assert_eq!(
        verify_raw_signature(
            &verifying,
            &signed_digest(Role::Module, &th),
            der.as_bytes()
        ),
        Err(ChannelError::BadSignature)
    );
    assert_eq!(
        verify_raw_signature(&verifying, &signed_digest(Role::Module, &th), &[0u8; 96]),
        Err(ChannelError::BadSignature)
    );
}

#[test]
fn derive_scalar_mixes_randomness_and_variation() {
    let base = derive_scalar(&[0x11; 48], b"variation A", b"key memory").unwrap();
    let again = derive_scalar(&[0x11; 48], b"variation A", b"key memory").unwrap();
    assert_eq!(base.to_bytes(), again.to_bytes());
    // Same randomness, other variation: other key (claim 10).
    let other_variation = derive_scalar(&[0x11; 48], b"variation B", b"key memory").unwrap();
    assert_ne!(base.to_bytes(), other_variation.to_bytes());
    // Same variation, other randomness: other key (the host cannot choose the key).
    let other_randomness = derive_scalar(&[0x12; 48], b"variation A", b"key memory").unwrap();
    assert_ne!(base.to_bytes(), other_randomness.to_bytes());
    // The label separates uses.
    let other_label = derive_scalar(&[0x11; 48], b"variation A", b"ephemeral").unwrap();
    assert_ne!(base.to_bytes(), other_label.to_bytes());
}

#[test]
fn derive_scalar_layout() {
    // HKDF-SHA384(salt "imprint v1 key generation", IKM randomness),
    // info = label ‖ variation ‖ counter byte, 48 bytes, first counter that gives a valid scalar.
    let kdf = hkdf::Hkdf::<Sha384>::new(Some(b"imprint v1 key generation"), &[0x11; 48]);
    let mut okm = [0u8; 48];
    kdf.expand_multi_info(&[b"ephemeral", b"", &[0]], &mut okm)
        .unwrap();
    let scalar = derive_scalar(&[0x11; 48], &[], b"ephemeral").unwrap();
    assert_eq!(hex(&okm), hex(&scalar.to_bytes()));
}

// ---------------------------------------------------------------------------------------------
// Point validation.

#[test]
fn parse_point_accepts_only_uncompressed_valid_points() {
    let v = Vector::new();
    let good = v.unit_point.clone();
    assert!(parse_point(&good).is_ok());

    // Compressed (02/03 ‖ x), both the real parity and the other.
    let key = parse_point(&good).unwrap();
    let compressed = {
        use p384::elliptic_curve::sec1::ToSec1Point;
        key.to_sec1_point(true).as_bytes().to_vec()
    };
    assert_eq!(compressed.len(), 49);
    assert_eq!(parse_point(&compressed), Err(ChannelError::InvalidPoint));
    let mut other_parity = compressed.clone();
    other_parity[0] ^= 1;
    assert_eq!(parse_point(&other_parity), Err(ChannelError::InvalidPoint));
    // The same bytes padded to 97 with a compressed prefix.
    let mut padded = good.clone();
    padded[0] = 0x02;
    assert_eq!(parse_point(&padded), Err(ChannelError::InvalidPoint));
    // Hybrid encoding (06/07).
    let mut hybrid = good.clone();
    hybrid[0] = 0x06 | (good[96] & 1);
    assert_eq!(parse_point(&hybrid), Err(ChannelError::InvalidPoint));

    // Identity: SEC1 `00`, and all-zero coordinates.
    assert_eq!(parse_point(&[0x00]), Err(ChannelError::InvalidPoint));
    let mut zero = vec![0u8; 97];
    zero[0] = 0x04;
    assert_eq!(parse_point(&zero), Err(ChannelError::InvalidPoint));

    // Off the curve: y changed.
    let mut off_curve = good.clone();
    off_curve[96] ^= 0x01;
    assert_eq!(parse_point(&off_curve), Err(ChannelError::InvalidPoint));
    // Coordinates not reduced: x = p.
    let mut unreduced = good.clone();
    unreduced[1..49].copy_from_slice(&unhex(
        "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
    ));
    assert_eq!(parse_point(&unreduced), Err(ChannelError::InvalidPoint));

    // Short, long, empty.
    assert_eq!(parse_point(&good[..96]), Err(ChannelError::InvalidPoint));
    let mut long = good.clone();
    long.push(0);
    assert_eq!(parse_point(&long), Err(ChannelError::InvalidPoint));
    assert_eq!(parse_point(&[]), Err(ChannelError::InvalidPoint));

    // encode_point round-trips.
    assert_eq!(encode_point(&key), good);
}

// ---------------------------------------------------------------------------------------------
// Secure messaging.

#[test]
fn secure_messaging_round_trips_a_session() {
    let (mut unit, mut module) = Vector::new().secure_messaging();
    for n in 0..5u8 {
        let header = [0x0C, 0xDB, 0x3F, 0xFF];
        let data = vec![n; usize::from(n) * 100];
        let sealed = unit.seal_command(header, &data).unwrap();
        assert_eq!(module.open_command(header, &sealed).unwrap(), data);
        let response = module.seal_response(header, &[n], 0x6982).unwrap();
        assert_eq!(
            unit.open_response(header, &response).unwrap(),
            (vec![n], 0x6982)
        );
    }
    assert_eq!(unit.next_counter(), 6);
    // An empty command (TERMINATE) is `85 00 8E 10 tag`.
    let sealed = unit.seal_command([0x0C, 0xE6, 0, 0], &[]).unwrap();
    assert_eq!(&sealed[..4], &[0x85, 0x00, 0x8E, 0x10]);
    assert_eq!(sealed.len(), 20);
    assert_eq!(
        module.open_command([0x0C, 0xE6, 0, 0], &sealed).unwrap(),
        Vec::<u8>::new()
    );
}

#[test]
fn secure_messaging_rejects_a_flipped_byte() {
    let (mut unit, _) = Vector::new().secure_messaging();
    let sealed = unit.seal_command(HEADER, &first_command()).unwrap();
    // Every byte of the field, including TLV framing, ciphertext and tag.
    for index in 0..sealed.len() {
        for bit in [0x01u8, 0x80] {
            let (_, mut module) = Vector::new().secure_messaging();
            let mut tampered = sealed.clone();
            tampered[index] ^= bit;
            assert_eq!(
                module.open_command(HEADER, &tampered),
                Err(ChannelError::SecureMessaging),
                "byte {index} bit {bit:#x}"
            );
        }
    }
}

#[test]
fn secure_messaging_rejects_a_flipped_response_byte() {
    let (mut unit, mut module) = Vector::new().secure_messaging();
    let sealed = unit.seal_command(HEADER, &first_command()).unwrap();
    module.open_command(HEADER, &sealed).unwrap();
    let response = module.seal_response(HEADER, RESPONSE_DATA, 0x9000).unwrap();
    let mut tampered = response.clone();
    tampered[5] ^= 0x01;
    assert_eq!(
        unit.open_response(HEADER, &tampered),
        Err(ChannelError::SecureMessaging)
    );
    assert!(unit.open_response(HEADER, &response).is_ok());
}

#[test]
fn secure_messaging_rejects_a_replay() {
    let (mut unit, mut module) = Vector::new().secure_messaging();
    let sealed = unit.seal_command(HEADER, &first_command()).unwrap();
    module.open_command(HEADER, &sealed).unwrap();
    assert_eq!(
        module.open_command(HEADER, &sealed),
        Err(ChannelError::SecureMessaging)
    );
}

#[test]
fn secure_messaging_rejects_a_replayed_response() {
    let (mut unit, mut module) = Vector::new().secure_messaging();
    let first = unit.seal_command(HEADER, &first_command()).unwrap();
    module.open_command(HEADER, &first).unwrap();
    let response = module.seal_response(HEADER, RESPONSE_DATA, 0x9000).unwrap();
    unit.open_response(HEADER, &response).unwrap();
    let second = unit.seal_command(HEADER, &first_command()).unwrap();
    module.open_command(HEADER, &second).unwrap();
    // The old response to the new command.
    assert_eq!(
        unit.open_response(HEADER, &response),
        Err(ChannelError::SecureMessaging)
    );
}

#[test]
fn secure_messaging_rejects_a_reordered_command() {
    let (mut unit, mut module) = Vector::new().secure_messaging();
    let first = unit.seal_command(HEADER, b"first").unwrap();
    let second = unit.seal_command(HEADER, b"second").unwrap();
    assert_eq!(
        module.open_command(HEADER, &second),
        Err(ChannelError::SecureMessaging)
    );
    // The module's counter moved on: the first one no longer opens either.
    assert_eq!(
        module.open_command(HEADER, &first),
        Err(ChannelError::SecureMessaging)
    );
}

#[test]
fn secure_messaging_rejects_truncated_fields() {
    let (mut unit, _) = Vector::new().secure_messaging();
    let sealed = unit.seal_command(HEADER, &first_command()).unwrap();
    let fresh = || Vector::new().secure_messaging().1;
    // Cut anywhere, TLV framing kept inconsistent.
    for cut in 0..sealed.len() {
        assert_eq!(
            fresh().open_command(HEADER, &sealed[..cut]),
            Err(ChannelError::SecureMessaging),
            "cut at {cut}"
        );
    }
    // Ciphertext one byte shorter, with a consistent length.
    let mut short_ciphertext = vec![0x85, 0x08];
    short_ciphertext.extend_from_slice(&sealed[2..10]);
    short_ciphertext.extend_from_slice(&sealed[11..]);
    assert_eq!(
        fresh().open_command(HEADER, &short_ciphertext),
        Err(ChannelError::SecureMessaging)
    );
    // Tag of 15 bytes with a consistent length.
    let mut short_tag = sealed[..11].to_vec();
    short_tag.extend_from_slice(&[0x8E, 0x0F]);
    short_tag.extend_from_slice(&sealed[13..28]);
    assert_eq!(
        fresh().open_command(HEADER, &short_tag),
        Err(ChannelError::SecureMessaging)
    );
    // Missing tag object, missing cryptogram object.
    assert_eq!(
        fresh().open_command(HEADER, &sealed[..11]),
        Err(ChannelError::SecureMessaging)
    );
    assert_eq!(
        fresh().open_command(HEADER, &sealed[11..]),
        Err(ChannelError::SecureMessaging)
    );
}

#[test]
fn secure_messaging_rejects_extra_or_repeated_objects() {
    let (mut unit, _) = Vector::new().secure_messaging();
    let sealed = unit.seal_command(HEADER, &first_command()).unwrap();
    let fresh = || Vector::new().secure_messaging().1;
    let mut extra = sealed.clone();
    extra.extend_from_slice(&[0x97, 0x01, 0x00]);
    assert_eq!(
        fresh().open_command(HEADER, &extra),
        Err(ChannelError::SecureMessaging)
    );
    let mut repeated = sealed.clone();
    repeated.extend_from_slice(&sealed[11..]);
    assert_eq!(
        fresh().open_command(HEADER, &repeated),
        Err(ChannelError::SecureMessaging)
    );
    // The order of 85 and 8E does not matter to the decoder (any order, each once).
    let mut swapped = sealed[11..].to_vec();
    swapped.extend_from_slice(&sealed[..11]);
    assert_eq!(
        fresh().open_command(HEADER, &swapped).unwrap(),
        first_command()
    );
}

#[test]
fn secure_messaging_rejects_a_wrong_header() {
    let (mut unit, _) = Vector::new().secure_messaging();
    let sealed = unit.seal_command(HEADER, &first_command()).unwrap();
    for (index, bit) in [(0usize, 0x04u8), (1, 0x01), (2, 0x01), (3, 0x01)] {
        let mut header = HEADER;
        header[index] ^= bit;
        let (_, mut module) = Vector::new().secure_messaging();
        assert_eq!(
            module.open_command(header, &sealed),
            Err(ChannelError::SecureMessaging),
            "header byte {index}"
        );
    }
    // The chaining bit is framing, not meaning: it is masked out of the AAD.
    let (_, mut module) = Vector::new().secure_messaging();
    let chained = [
        HEADER[0] | crate::iso::CLA_CHAIN,
        HEADER[1],
        HEADER[2],
        HEADER[3],
    ];
    assert_eq!(
        module.open_command(chained, &sealed).unwrap(),
        first_command()
    );
}

#[test]
fn secure_messaging_separates_directions() {
    let (mut unit, mut module) = Vector::new().secure_messaging();
    let sealed = unit.seal_command(HEADER, &first_command()).unwrap();
    module.open_command(HEADER, &sealed).unwrap();
    // A command cannot be passed off as its response.
    assert_eq!(
        unit.open_response(HEADER, &sealed),
        Err(ChannelError::SecureMessaging)
    );
    // A response sealed for another header does not open.
    let response = module
        .seal_response([0x0C, 0xCA, 0xDF, 0x21], &[], 0x9000)
        .unwrap();
    assert_eq!(
        unit.open_response(HEADER, &response),
        Err(ChannelError::SecureMessaging)
    );
}

#[test]
fn secure_messaging_rejects_another_sessions_keys() {
    let (mut unit, _) = Vector::new().secure_messaging();
    let sealed = unit.seal_command(HEADER, &first_command()).unwrap();
    let v = Vector::new();
    let mut other_th = v.th();
    other_th[0] ^= 1;
    let mut other = SessionKeys::derive(
        &v.module_secret,
        &parse_point(&v.unit_point).unwrap(),
        &other_th,
    )
    .into_secure_messaging();
    assert_eq!(
        other.open_command(HEADER, &sealed),
        Err(ChannelError::SecureMessaging)
    );
}

#[test]
fn secure_messaging_counter_never_wraps() {
    let (mut unit, mut module) = Vector::new().secure_messaging();
    unit.counter = u64::MAX - 1;
    module.counter = u64::MAX - 1;
    let sealed = unit.seal_command(HEADER, b"last").unwrap();
    assert_eq!(
        module.open_command(HEADER, &sealed).unwrap(),
        b"last".to_vec()
    );
    assert_eq!(unit.next_counter(), u64::MAX);
    assert_eq!(
        unit.seal_command(HEADER, b"one more"),
        Err(ChannelError::CounterExhausted)
    );
    assert_eq!(
        module.open_command(HEADER, &sealed),
        Err(ChannelError::CounterExhausted)
    );
}

#[test]
fn secure_messaging_response_too_short_for_a_status_word() {
    // A response whose plaintext has fewer than two bytes is refused, even with a valid tag.
    let (mut unit, mut module) = Vector::new().secure_messaging();
    let sealed = unit.seal_command(HEADER, &first_command()).unwrap();
    module.open_command(HEADER, &sealed).unwrap();
    let cipher = Aes256Gcm::new_from_slice(&unhex(RESPONSE_KEY)).unwrap();
    let nonce = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let aad = [b'R', 0, 0, 0, 0, 0, 0, 0, 1, 0x0C, 0x47, 0x80, 0x02];
    let sealed = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &[0x90],
                aad: &aad,
            },
        )
        .unwrap();
    assert_eq!(
        unit.open_response(HEADER, &frame(&sealed)),
        Err(ChannelError::SecureMessaging)
    );
}

#[test]
fn secure_messaging_decoders_never_panic() {
    let (_, mut module) = Vector::new().secure_messaging();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..5_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 40) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|i| (state >> ((i * 7) % 57)) as u8).collect();
        if let Some(first) = bytes.first_mut() {
            *first = [0x85, 0x8E, 0x00, 0xFF][(state >> 60) as usize % 4];
        }
        let _ = module.open_command(HEADER, &bytes);
        let _ = module.open_response(HEADER, &bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// The operating channel's test vector (docs/protocol.md, "Operating channel test vector"):
// central system ↔ OPERATING module, with the module key proven by static-ephemeral ECDH.
// Computed once from the code and pinned; the layout tests recompute every value from the
// primitives (SHA-384, HKDF-SHA384, HMAC-SHA384, AES-256-GCM, P-384 ECDH) without this
// module's types.

/// Every input of the operating vector, fixed.
struct OperatingVector {
    central_secret: NonZeroScalar,
    module_ephemeral_secret: NonZeroScalar,
    module_key_secret: NonZeroScalar,
    central_point: Vec<u8>,
    module_point: Vec<u8>,
    module_key_point: Vec<u8>,
    central_cert_hash: Digest48,
    module_cert_hash: Digest48,
    unit_cert_hash: Digest48,
    central_challenge: [u8; 32],
    module_challenge: [u8; 32],
}

impl OperatingVector {
    fn new() -> Self {
        let central_secret = derive_scalar(&[0x66; 48], &[], b"ephemeral").unwrap();
        let module_ephemeral_secret = derive_scalar(&[0x77; 48], &[], b"ephemeral").unwrap();
        let module_key_secret = derive_scalar(&[0x88; 48], &[], b"module key").unwrap();
        let point = |secret: &NonZeroScalar| encode_point(&PublicKey::from_secret_scalar(secret));
        Self {
            central_point: point(&central_secret),
            module_point: point(&module_ephemeral_secret),
            module_key_point: point(&module_key_secret),
            central_secret,
            module_ephemeral_secret,
            module_key_secret,
            central_cert_hash: sha384(b"central certificate"),
            module_cert_hash: sha384(b"module certificate"),
            unit_cert_hash: sha384(b"unit certificate by central"),
            central_challenge: [0x99; 32],
            module_challenge: [0xAA; 32],
        }
    }

    fn th(&self) -> Digest48 {
        OperatingValues {
            central_cert_hash: &self.central_cert_hash,
            central_ephemeral: &self.central_point,
            central_challenge: &self.central_challenge,
            module_cert_hash: &self.module_cert_hash,
            unit_cert_hash: &self.unit_cert_hash,
            module_ephemeral: &self.module_point,
            module_challenge: &self.module_challenge,
        }
        .transcript_hash()
    }

    /// (central's keys, module's keys), each computed from its own secrets.
    fn keys(&self) -> (SessionKeys, SessionKeys) {
        let th = self.th();
        let central_ee = ecdh(
            &self.central_secret,
            &parse_point(&self.module_point).unwrap(),
        );
        let central_se = ecdh(
            &self.central_secret,
            &parse_point(&self.module_key_point).unwrap(),
        );
        let peer = parse_point(&self.central_point).unwrap();
        let module_ee = ecdh(&self.module_ephemeral_secret, &peer);
        let module_se = ecdh(&self.module_key_secret, &peer);
        (
            SessionKeys::derive_operating(&central_ee, &central_se, &th),
            SessionKeys::derive_operating(&module_ee, &module_se, &th),
        )
    }
}

/// The header of the operating channel's secured PUT DATA of the key set.
const KEY_SET_HEADER: [u8; 4] = [0x0C, 0xDB, 0x3F, 0xFF];

/// The key set of both vectors: the operating vector installs it, the transaction vector uses it.
const TX_KEY_SET_ID: [u8; 16] = [0x5A; 16];
const TX_KEY_SET_KEY: [u8; 32] = [0xC3; 32];
/// 2030-01-01T00:00:00Z.
const TX_KEY_SET_EXPIRES: u64 = 1_893_456_000;

/// `DF28 { C0 id, C1 key, C2 expiry }`, the plaintext of the secured PUT DATA.
fn key_set_plain() -> Vec<u8> {
    let mut inner = Vec::new();
    tlv::write(&mut inner, tag::KEY_SET_ID, &TX_KEY_SET_ID);
    tlv::write(&mut inner, tag::KEY_SET_KEY, &TX_KEY_SET_KEY);
    tlv::write(
        &mut inner,
        tag::KEY_SET_EXPIRES,
        &TX_KEY_SET_EXPIRES.to_be_bytes(),
    );
    tlv::encode(tag::KEY_SET, &inner)
}

// The operating vector's pinned values.
const OP_CENTRAL_EPHEMERAL_SECRET: &str = "e090db24a73f5feafa3fcb5be539b1e24170e2de309b63aa1d0e9877e5f00c24ff105c42056bf2976100563eba597e03";
const OP_MODULE_EPHEMERAL_SECRET: &str = "54c39b4ff24a22a8d8adca1de6e209c77f5cd052acda706d7bd4f31e51900e215337835ec2e6f29cfc93cafa21eda01f";
const OP_MODULE_KEY_SECRET: &str = "36d6a36d01518a1d19751d82c70cea6db58f1589a4f74614ca6b6f775afc827bd079c95ba682a2560a7d5d877464f9e5";
const OP_CENTRAL_EPHEMERAL: &str = "04\
    d0b8a74cc86b1a031a0419ef57493930a7f91db5ddf34da63524a5c6a7ae64e61ee88697d167534990e1390e7a320b54\
    d2db221303b6be9834838e9b92d207087233f23eb419a7446967b4f67bf2fdeb5c9fff08cb4bff4b30ac0280cac01b7f";
const OP_MODULE_EPHEMERAL: &str = "04\
    06b5bf62c0d196d05b3991c92f5ab94b1e0be5ecd786b7e1d22003cf5df749079ea5fce2926053c4d7f58b381db795dd\
    7e99ed2cbf883e3a07277983be3f6b6857d9f168262a56af0c445af41895287b1db0281b3a99a0404ef241f4e9d8eb32";
const OP_MODULE_KEY: &str = "04\
    a83eb2b5a591ba37385b645e7a53208678ebabddbd90968c1a4f266313259c78beb9cb758772380840540418f4a92a89\
    6d5148a91ee4a58c3931488118b6b5d305e9e097155690afc626413f632982a41328b4a488dd776ecc8207041b6d9064";
const OP_CENTRAL_CERT_HASH: &str = "e234a33fe365162e29cbc4c5c6cfc62a96fe0c8585c1616281b23dfd923bc3b5b966f6a579226a4cd89d786e32f450e6";
const OP_MODULE_CERT_HASH: &str = "be02b3e2b015f3a35dd2723c0eca0a6b280c41d737ffa6c629decf91376b86494b004237f40960e5d7208d03e210e199";
const OP_UNIT_CERT_HASH: &str = "de171725162c9b69a2743f5df0fde6a75a4e2d61161a970e4820555728869d5ed9e22287941feeb1100c2b6c27d9cfb3";
const OP_TRANSCRIPT_HASH: &str = "c61f133a33541c1dcd29674ea98d8dddcb1a6fbb6fdd133d9e311f8574c49d3a652bd23f4aeacb5956da350e8b205619";
/// Z_ee: x-coordinate of the central ephemeral key times the module's ephemeral point.
const OP_Z_EE: &str = "51220e2d7edb007bcd92886e4227ce229a0ee81e631e7193893e1d6cd486b04c8a6c462559bbe901a1a2f365ffb7e270";
/// Z_se: x-coordinate of the central ephemeral key times the module key's point.
const OP_Z_SE: &str = "bfa4b4b21218b3c08f94aab831a9ac49e1440d0f56bff37cf0dac8147ae0f9fc9f9ada7f2acb779eee235d09128b3c04";
const OP_COMMAND_KEY: &str = "3bbbae77f8a67b5a576f483c01916d88a55ec1665f3e40e2a0a9168e420e3beb";
const OP_RESPONSE_KEY: &str = "bc4ca5472261e014e8a09b613211cc76130e8b04d982deb7d4e25e9ad9e880f8";
/// Label "imprint v1 confirmation key unit": the central system's confirmation key.
const OP_CENTRAL_CONFIRMATION_KEY: &str = "e9782314b7d04e4e3bee0e25eda208be5c17f68e1216e9e0dcb9b94245ee2fdb73c0c3ccfbeb8d299ce419411a607e52";
const OP_MODULE_CONFIRMATION_KEY: &str = "2958eb5a1c964a094c976acfe3949d1c3bc723def947ce160ef061503b70ed03c8b659827d7e16b72711a87331ee9d93";
const OP_CENTRAL_CONFIRMATION: &str = "387a1adcf7191f5394253d64be4264b0859ecb3761551f3963580ac29bcf239ea62bdec01f350da245a10b9b50662b91";
const OP_MODULE_CONFIRMATION: &str = "0976d8876a99723657c8778d16274da5a3d5276941a327b363be8657818a8b532c1e00c99f288d0bd14c8239a9906808";
const OP_CENTRAL_SIGNED_DIGEST: &str = "439c067d03efedb0e71688619af2ad000aff5c8b34da64ee66ae6aeb47a65d5456a6dc3f07c05aed55b0cd8250e94b66";
/// `DF28 3E { C0 10 id, C1 20 key, C2 08 expiry }`.
const OP_KEY_SET_PLAIN: &str = "df283e c010 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a \
    c120 c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3 c208 0000000070dbd880";
/// `85 41 <ciphertext of the key set> 8E 10 <GCM tag>`, header `0C DB 3F FF`, counter 1.
const OP_SEALED_KEY_SET: &str = "8541 \
    3032d17c3a69e8faeeff3a22371a1d665a2ac45acc8854039d707425a036c40cf2afc16bc8ca79100bf967dec34f73fe\
    32f52c333b516cebf0c9a65f76fae15076 8e10 f790ae4a9d95aa37ff88c846eb598ff3";
/// `85 02 <ciphertext of 90 00> 8E 10 <GCM tag>`: the module's answer, counter 1.
const OP_SEALED_KEY_SET_RESPONSE: &str = "8502 8a0d 8e10 b286dc7c499bc718d6a3b4beafd5f5e7";

#[test]
fn operating_vector_inputs() {
    let v = OperatingVector::new();
    assert_eq!(
        hex(&v.central_secret.to_bytes()),
        OP_CENTRAL_EPHEMERAL_SECRET
    );
    assert_eq!(
        hex(&v.module_ephemeral_secret.to_bytes()),
        OP_MODULE_EPHEMERAL_SECRET
    );
    assert_eq!(hex(&v.module_key_secret.to_bytes()), OP_MODULE_KEY_SECRET);
    assert_eq!(hex(&v.central_point), hex(&unhex(OP_CENTRAL_EPHEMERAL)));
    assert_eq!(hex(&v.module_point), hex(&unhex(OP_MODULE_EPHEMERAL)));
    assert_eq!(hex(&v.module_key_point), hex(&unhex(OP_MODULE_KEY)));
    assert_eq!(hex(&v.central_cert_hash), OP_CENTRAL_CERT_HASH);
    assert_eq!(hex(&v.module_cert_hash), OP_MODULE_CERT_HASH);
    assert_eq!(hex(&v.unit_cert_hash), OP_UNIT_CERT_HASH);
    // The pinned scalars reproduce the pinned points.
    for (secret, point) in [
        (OP_CENTRAL_EPHEMERAL_SECRET, OP_CENTRAL_EPHEMERAL),
        (OP_MODULE_EPHEMERAL_SECRET, OP_MODULE_EPHEMERAL),
        (OP_MODULE_KEY_SECRET, OP_MODULE_KEY),
    ] {
        let key = p384::SecretKey::from_slice(&unhex(secret)).unwrap();
        assert_eq!(hex(&encode_point(&key.public_key())), hex(&unhex(point)));
    }
}

#[test]
fn operating_vector_transcript_hash() {
    assert_eq!(hex(&OperatingVector::new().th()), OP_TRANSCRIPT_HASH);
}

#[test]
fn operating_vector_transcript_hash_layout() {
    // SHA-384 over (len16 ‖ field)*: label, suite, H(C root), eC, cC, H(module cert),
    // H(unit cert by C), eM, cM.
    let mut manual = Sha384::new();
    for field in [
        &b"imprint v1 operating channel"[..],
        &[0x01],
        &unhex(OP_CENTRAL_CERT_HASH),
        &unhex(OP_CENTRAL_EPHEMERAL),
        &[0x99; 32],
        &unhex(OP_MODULE_CERT_HASH),
        &unhex(OP_UNIT_CERT_HASH),
        &unhex(OP_MODULE_EPHEMERAL),
        &[0xAA; 32],
    ] {
        manual.update((field.len() as u16).to_be_bytes());
        manual.update(field);
    }
    let manual: Digest48 = manual.finalize().into();
    assert_eq!(hex(&manual), OP_TRANSCRIPT_HASH);
}

#[test]
fn operating_vector_shared_secrets() {
    // Each secret from both of its ends: the central system knows only its ephemeral
    // scalar and the two public points; the module its two scalars and eC.
    let v = OperatingVector::new();
    let module_point = parse_point(&v.module_point).unwrap();
    let module_key = parse_point(&v.module_key_point).unwrap();
    let central_point = parse_point(&v.central_point).unwrap();
    assert_eq!(hex(&ecdh(&v.central_secret, &module_point)[..]), OP_Z_EE);
    assert_eq!(
        hex(&ecdh(&v.module_ephemeral_secret, &central_point)[..]),
        OP_Z_EE
    );
    assert_eq!(hex(&ecdh(&v.central_secret, &module_key)[..]), OP_Z_SE);
    assert_eq!(
        hex(&ecdh(&v.module_key_secret, &central_point)[..]),
        OP_Z_SE
    );
    // With p384's ECDH directly.
    let shared = diffie_hellman(&v.module_key_secret, central_point.as_affine());
    assert_eq!(hex(shared.raw_secret_bytes()), OP_Z_SE);
}

#[test]
fn operating_vector_key_schedule() {
    let (central, module) = OperatingVector::new().keys();
    for keys in [&central, &module] {
        assert_eq!(hex(&keys.command_key), OP_COMMAND_KEY);
        assert_eq!(hex(&keys.response_key), OP_RESPONSE_KEY);
        assert_eq!(
            hex(&keys.unit_confirmation_key),
            OP_CENTRAL_CONFIRMATION_KEY
        );
        assert_eq!(
            hex(&keys.module_confirmation_key),
            OP_MODULE_CONFIRMATION_KEY
        );
    }
}

#[test]
fn operating_vector_key_schedule_layout() {
    // HKDF-SHA384(salt = TH, IKM = Z_ee ‖ Z_se, info = label), the personalization labels.
    let mut ikm = unhex(OP_Z_EE);
    ikm.extend_from_slice(&unhex(OP_Z_SE));
    assert_eq!(ikm.len(), 96);
    let kdf = hkdf::Hkdf::<Sha384>::new(Some(&unhex(OP_TRANSCRIPT_HASH)), &ikm);
    for (label, expected) in [
        (&b"imprint v1 sm command key"[..], OP_COMMAND_KEY),
        (b"imprint v1 sm response key", OP_RESPONSE_KEY),
        (
            b"imprint v1 confirmation key unit",
            OP_CENTRAL_CONFIRMATION_KEY,
        ),
        (
            b"imprint v1 confirmation key module",
            OP_MODULE_CONFIRMATION_KEY,
        ),
    ] {
        let mut okm = vec![0u8; expected.len() / 2];
        kdf.expand(label, &mut okm).unwrap();
        assert_eq!(hex(&okm), expected);
    }
    // Without Z_se (a host that only relays, or a signing oracle) the keys differ.
    let ee_only = hkdf::Hkdf::<Sha384>::new(Some(&unhex(OP_TRANSCRIPT_HASH)), &unhex(OP_Z_EE));
    let mut okm = [0u8; 48];
    ee_only
        .expand(b"imprint v1 confirmation key module", &mut okm)
        .unwrap();
    assert_ne!(hex(&okm), OP_MODULE_CONFIRMATION_KEY);
}

#[test]
fn operating_vector_confirmations_and_signature() {
    let v = OperatingVector::new();
    let th = v.th();
    let (central, module) = v.keys();
    assert_eq!(
        hex(&central.confirmation(Role::Central, &th).unwrap()),
        OP_CENTRAL_CONFIRMATION
    );
    assert_eq!(
        hex(&module.confirmation(Role::Module, &th).unwrap()),
        OP_MODULE_CONFIRMATION
    );
    module
        .verify_confirmation(Role::Central, &th, &unhex(OP_CENTRAL_CONFIRMATION))
        .unwrap();
    central
        .verify_confirmation(Role::Module, &th, &unhex(OP_MODULE_CONFIRMATION))
        .unwrap();
    // Layout: HMAC-SHA384(k, role label ‖ TH); the central system uses the "unit" key with
    // the label "central".
    for (key, label, expected) in [
        (
            OP_CENTRAL_CONFIRMATION_KEY,
            &b"imprint v1 key confirmation central"[..],
            OP_CENTRAL_CONFIRMATION,
        ),
        (
            OP_MODULE_CONFIRMATION_KEY,
            b"imprint v1 key confirmation module",
            OP_MODULE_CONFIRMATION,
        ),
    ] {
        let mut mac = <Hmac<Sha384> as hmac::KeyInit>::new_from_slice(&unhex(key)).unwrap();
        mac.update(label);
        mac.update(&unhex(OP_TRANSCRIPT_HASH));
        assert_eq!(hex(&mac.finalize().into_bytes()), expected);
    }
    // The central system signs SHA-384("imprint v1 signature by central" ‖ TH) with C.
    assert_eq!(
        hex(&signed_digest(Role::Central, &th)),
        OP_CENTRAL_SIGNED_DIGEST
    );
    let mut concatenated = b"imprint v1 signature by central".to_vec();
    concatenated.extend_from_slice(&unhex(OP_TRANSCRIPT_HASH));
    assert_eq!(hex(&sha384(&concatenated)), OP_CENTRAL_SIGNED_DIGEST);
    // A personalization unit's confirmation over the same keys is not the central system's.
    assert_eq!(
        module.verify_confirmation(
            Role::Central,
            &th,
            &central.confirmation(Role::Unit, &th).unwrap()
        ),
        Err(ChannelError::BadConfirmation)
    );
}

#[test]
fn operating_vector_key_set_installation() {
    assert_eq!(hex(&key_set_plain()), hex(&unhex(OP_KEY_SET_PLAIN)));
    let (central, module) = OperatingVector::new().keys();
    let (mut central, mut module) = (
        central.into_secure_messaging(),
        module.into_secure_messaging(),
    );
    let sealed = central
        .seal_command(KEY_SET_HEADER, &key_set_plain())
        .unwrap();
    assert_eq!(hex(&sealed), hex(&unhex(OP_SEALED_KEY_SET)));
    assert_eq!(
        module.open_command(KEY_SET_HEADER, &sealed).unwrap(),
        key_set_plain()
    );
    let response = module.seal_response(KEY_SET_HEADER, &[], 0x9000).unwrap();
    assert_eq!(hex(&response), hex(&unhex(OP_SEALED_KEY_SET_RESPONSE)));
    assert_eq!(
        central.open_response(KEY_SET_HEADER, &response).unwrap(),
        (Vec::new(), 0x9000)
    );

    // Layout: AES-256-GCM, nonce 00000000 ‖ counter, AAD 'C'/'R' ‖ counter ‖ header.
    let nonce = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let cipher = Aes256Gcm::new_from_slice(&unhex(OP_COMMAND_KEY)).unwrap();
    let aad = [b'C', 0, 0, 0, 0, 0, 0, 0, 1, 0x0C, 0xDB, 0x3F, 0xFF];
    let direct = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &key_set_plain(),
                aad: &aad,
            },
        )
        .unwrap();
    let expected = unhex(OP_SEALED_KEY_SET);
    assert_eq!(&direct[..0x41], &expected[2..0x43]);
    assert_eq!(&direct[0x41..], &expected[0x45..]);
    let cipher = Aes256Gcm::new_from_slice(&unhex(OP_RESPONSE_KEY)).unwrap();
    let aad = [b'R', 0, 0, 0, 0, 0, 0, 0, 1, 0x0C, 0xDB, 0x3F, 0xFF];
    let direct = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &[0x90, 0x00],
                aad: &aad,
            },
        )
        .unwrap();
    let expected = unhex(OP_SEALED_KEY_SET_RESPONSE);
    assert_eq!(&direct[..2], &expected[2..4]);
    assert_eq!(&direct[2..], &expected[6..]);
}

#[test]
fn operating_keys_need_the_module_key() {
    // A module (or a relay) that has the ephemeral secret but answers with another static
    // key gets other keys: its confirmation fails at the central system.
    let v = OperatingVector::new();
    let th = v.th();
    let peer = parse_point(&v.central_point).unwrap();
    let impostor = derive_scalar(&[0x89; 48], &[], b"module key").unwrap();
    let forged = SessionKeys::derive_operating(
        &ecdh(&v.module_ephemeral_secret, &peer),
        &ecdh(&impostor, &peer),
        &th,
    );
    let (central, _) = v.keys();
    assert_eq!(
        central.verify_confirmation(
            Role::Module,
            &th,
            &forged.confirmation(Role::Module, &th).unwrap()
        ),
        Err(ChannelError::BadConfirmation)
    );
    // The order of the secrets matters: Z_se ‖ Z_ee is not Z_ee ‖ Z_se.
    let z_ee: [u8; 48] = unhex(OP_Z_EE).try_into().unwrap();
    let z_se: [u8; 48] = unhex(OP_Z_SE).try_into().unwrap();
    let swapped = SessionKeys::derive_operating(&z_se, &z_ee, &th);
    assert_ne!(hex(&swapped.command_key), OP_COMMAND_KEY);
}

#[test]
fn operating_transcript_hash_covers_every_field() {
    let v = OperatingVector::new();
    let base = v.th();
    let other_hash = sha384(b"other");
    let mut other_point = v.central_point.clone();
    other_point[5] ^= 1;
    let other_challenge = [0xBB; 32];
    for index in 0..7 {
        let th = OperatingValues {
            central_cert_hash: if index == 0 {
                &other_hash
            } else {
                &v.central_cert_hash
            },
            central_ephemeral: if index == 1 {
                &other_point
            } else {
                &v.central_point
            },
            central_challenge: if index == 2 {
                &other_challenge
            } else {
                &v.central_challenge
            },
            module_cert_hash: if index == 3 {
                &other_hash
            } else {
                &v.module_cert_hash
            },
            unit_cert_hash: if index == 4 {
                &other_hash
            } else {
                &v.unit_cert_hash
            },
            module_ephemeral: if index == 5 {
                &other_point
            } else {
                &v.module_point
            },
            module_challenge: if index == 6 {
                &other_challenge
            } else {
                &v.module_challenge
            },
        }
        .transcript_hash();
        assert_ne!(th, base, "field {index}");
    }
    // The same values under the personalization label hash differently (channel separation).
    let mut transcript = Transcript::new(ChannelKind::Personalization);
    for field in [
        &v.central_cert_hash[..],
        &v.central_point,
        &v.central_challenge,
        &v.module_cert_hash,
        &v.unit_cert_hash,
        &v.module_point,
        &v.module_challenge,
    ] {
        transcript.append(field);
    }
    assert_ne!(transcript.finish(), base);
}

// ---------------------------------------------------------------------------------------------
// The transaction session's test vector (docs/protocol.md, "Transaction session test vector"),
// on the key set the operating vector installs. The four keys are private to
// `transaction`; they are pinned here from HKDF directly, and the code's confirmations and
// sealed fields are checked against them.

const TX_SERIAL: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF];
const TX_CENTRAL_CHALLENGE: [u8; 32] = [0x31; 32];
const TX_MODULE_CHALLENGE: [u8; 32] = [0x32; 32];
const TX_COUNTER: u32 = 1;
const TX_PAYLOAD: &[u8] = b"pay 10.00 EUR to account 42";
const TX_REPLY: &[u8] = b"accepted";
const TX_RECEIPT_NUMBER: u64 = 1;

const TX_TRANSCRIPT_HASH: &str = "3af060cf8e196d090be7e732b4c8018f6f678720b9d8ddeb7586d5f2d7eb239e82e6faacfcfe2c7d6ccff335e1d4cc1c";
const TX_MODULE_KEY: &str = "59019cd08b8b4f109fbf529ba203e7c5b86ce93ec3545e0be5bced2bc7851db7";
const TX_CENTRAL_KEY: &str = "c79e9d3fe264ae1976d934b1e19681fb27807966e8cf57a279b0f1c231f024ab";
const TX_MODULE_CONFIRMATION_KEY: &str = "bb847d93d2c7ba6d1443d80668c7508a11aa031d63e2fdaf404ce967cbab3ea3d3376e69d52cef78f87212330dc41aa0";
const TX_CENTRAL_CONFIRMATION_KEY: &str = "b6ecd6a7648b7dc1df3cda5d0ff955e9619a486319c8a2b083434cf745a364b612ed0357c1ee5e1efcf8b591ff2e16bb";
const TX_MODULE_CONFIRMATION: &str = "da8ff990ee47bad7cf94302d3286c7dbe88bc86735c27566be8c89498d822e94f52c9cf3267293357ac64a7532110c5a";
const TX_CENTRAL_CONFIRMATION: &str = "9f122dd6625c78a211a2d0ea03dbddbe0eef7f40d3b4457477ff3f141df6de0760b1676aedd94b4eb2f51ce9b87b61f1";
/// `85 1B <ciphertext of the payload> 8E 10 <GCM tag>`: message 1.
const TX_SEALED_MESSAGE_1: &str = "851b 0c6c0c185b328a25fca479ec050e3461532ba9179b56bcf14225a3 \
    8e10 9bf843856fde58cc7fa1ca77f66cf27d";
/// `C0 08 number ‖ C1 30 SHA-384(payload) ‖ C2 08 "accepted"`.
const TX_RECEIPT_1: &str = "c008 0000000000000001 \
    c130 74d0479815f511077587d01b571f01810cb446ec9f25ea51916abf37cee19374910ecf84922ed607dc9b983923ecb84d \
    c208 6163636570746564";
/// `85 46 <ciphertext of the receipt> 8E 10 <GCM tag>`: receipt 1.
const TX_SEALED_RECEIPT_1: &str = "8546 \
    a2189141ae1ccbbe7177500be5552632759a227257437ac9a1428b779c367d4ec49c6d88c8fee86fdb80faeafcc6\
    06724d1535b7f3ba3c2ac182c229a3f207aa8f0080688109 8e10 1f72ff6ef733ca560bf2f95e16c9e844";

fn tx_values() -> TransactionValues<'static> {
    TransactionValues {
        key_set_id: &TX_KEY_SET_ID,
        serial: &TX_SERIAL,
        central_challenge: &TX_CENTRAL_CHALLENGE,
        module_challenge: &TX_MODULE_CHALLENGE,
        session_counter: TX_COUNTER,
    }
}

fn tx_receipt() -> Vec<u8> {
    let mut receipt = Vec::new();
    tlv::write(
        &mut receipt,
        tag::RECEIPT_NUMBER,
        &TX_RECEIPT_NUMBER.to_be_bytes(),
    );
    tlv::write(&mut receipt, tag::RECEIPT_DIGEST, &sha384(TX_PAYLOAD));
    tlv::write(&mut receipt, tag::RECEIPT_REPLY, TX_REPLY);
    receipt
}

#[test]
fn transaction_vector_transcript_hash() {
    assert_eq!(hex(&tx_values().transcript_hash()), TX_TRANSCRIPT_HASH);
    // Layout: SHA-384 over (len16 ‖ field)*: label, suite, key set id, serial, cC, cM,
    // counter (4 bytes big-endian).
    let mut manual = Sha384::new();
    for field in [
        &b"imprint v1 transaction session"[..],
        &[0x01],
        &TX_KEY_SET_ID,
        &TX_SERIAL,
        &TX_CENTRAL_CHALLENGE,
        &TX_MODULE_CHALLENGE,
        &[0, 0, 0, 1],
    ] {
        manual.update((field.len() as u16).to_be_bytes());
        manual.update(field);
    }
    let manual: Digest48 = manual.finalize().into();
    assert_eq!(hex(&manual), TX_TRANSCRIPT_HASH);
    // Every field counts, the counter above all.
    let mut next = tx_values();
    next.session_counter = 2;
    assert_ne!(hex(&next.transcript_hash()), TX_TRANSCRIPT_HASH);
    let other_id = [0x5B; 16];
    let mut other = tx_values();
    other.key_set_id = &other_id;
    assert_ne!(hex(&other.transcript_hash()), TX_TRANSCRIPT_HASH);
    let mut other = tx_values();
    other.serial = &TX_SERIAL[..7];
    assert_ne!(hex(&other.transcript_hash()), TX_TRANSCRIPT_HASH);
    let mut other = tx_values();
    other.central_challenge = &TX_MODULE_CHALLENGE;
    assert_ne!(hex(&other.transcript_hash()), TX_TRANSCRIPT_HASH);
    let mut other = tx_values();
    other.module_challenge = &TX_CENTRAL_CHALLENGE;
    assert_ne!(hex(&other.transcript_hash()), TX_TRANSCRIPT_HASH);
}

#[test]
fn transaction_vector_key_schedule_layout() {
    // HKDF-SHA384(salt = TH, IKM = the key set's 32-byte key, info = label).
    let kdf = hkdf::Hkdf::<Sha384>::new(Some(&unhex(TX_TRANSCRIPT_HASH)), &TX_KEY_SET_KEY);
    for (label, expected) in [
        (&b"imprint v1 tx module key"[..], TX_MODULE_KEY),
        (b"imprint v1 tx central key", TX_CENTRAL_KEY),
        (
            b"imprint v1 tx confirmation module",
            TX_MODULE_CONFIRMATION_KEY,
        ),
        (
            b"imprint v1 tx confirmation central",
            TX_CENTRAL_CONFIRMATION_KEY,
        ),
    ] {
        let mut okm = vec![0u8; expected.len() / 2];
        kdf.expand(label, &mut okm).unwrap();
        assert_eq!(hex(&okm), expected);
    }
}

#[test]
fn transaction_vector_confirmations() {
    let th = tx_values().transcript_hash();
    let keys = TransactionKeys::derive(&TX_KEY_SET_KEY, &th);
    assert_eq!(
        hex(&keys.confirmation(Role::Module, &th).unwrap()),
        TX_MODULE_CONFIRMATION
    );
    assert_eq!(
        hex(&keys.confirmation(Role::Central, &th).unwrap()),
        TX_CENTRAL_CONFIRMATION
    );
    keys.verify_confirmation(Role::Module, &th, &unhex(TX_MODULE_CONFIRMATION))
        .unwrap();
    keys.verify_confirmation(Role::Central, &th, &unhex(TX_CENTRAL_CONFIRMATION))
        .unwrap();
    // Reflection fails; the unit role has no transaction key.
    assert_eq!(
        keys.verify_confirmation(Role::Central, &th, &unhex(TX_MODULE_CONFIRMATION)),
        Err(ChannelError::BadConfirmation)
    );
    assert_eq!(
        keys.confirmation(Role::Unit, &th),
        Err(ChannelError::BadConfirmation)
    );
    // Layout: HMAC-SHA384(k, label ‖ TH), the same role labels as the channels.
    for (key, label, expected) in [
        (
            TX_MODULE_CONFIRMATION_KEY,
            &b"imprint v1 key confirmation module"[..],
            TX_MODULE_CONFIRMATION,
        ),
        (
            TX_CENTRAL_CONFIRMATION_KEY,
            b"imprint v1 key confirmation central",
            TX_CENTRAL_CONFIRMATION,
        ),
    ] {
        let mut mac = <Hmac<Sha384> as hmac::KeyInit>::new_from_slice(&unhex(key)).unwrap();
        mac.update(label);
        mac.update(&unhex(TX_TRANSCRIPT_HASH));
        assert_eq!(hex(&mac.finalize().into_bytes()), expected);
    }
}

#[test]
fn transaction_vector_message_and_receipt() {
    assert_eq!(hex(&tx_receipt()), hex(&unhex(TX_RECEIPT_1)));
    let th = tx_values().transcript_hash();
    let mut module = TransactionKeys::derive(&TX_KEY_SET_KEY, &th).into_session(&th);
    let mut central = TransactionKeys::derive(&TX_KEY_SET_KEY, &th).into_session(&th);
    let (sequence, sealed) = module.seal_message(TX_PAYLOAD).unwrap();
    assert_eq!(sequence, 1);
    assert_eq!(hex(&sealed), hex(&unhex(TX_SEALED_MESSAGE_1)));
    assert_eq!(
        central.open_message(&sealed).unwrap(),
        (1, TX_PAYLOAD.to_vec())
    );
    let receipt = central.seal_receipt(&tx_receipt()).unwrap();
    assert_eq!(hex(&receipt), hex(&unhex(TX_SEALED_RECEIPT_1)));
    assert_eq!(module.open_receipt(&receipt).unwrap(), tx_receipt());

    // Layout: AES-256-GCM; nonce direction ‖ 00 00 00 ‖ s (8 bytes), direction 'M' (4D) for
    // messages under the module key, 'C' (43) for receipts under the central key;
    // AAD direction ‖ s (8 bytes) ‖ TH.
    let th = unhex(TX_TRANSCRIPT_HASH);
    for (key, direction, plain, expected) in [
        (
            TX_MODULE_KEY,
            b'M',
            TX_PAYLOAD.to_vec(),
            TX_SEALED_MESSAGE_1,
        ),
        (TX_CENTRAL_KEY, b'C', tx_receipt(), TX_SEALED_RECEIPT_1),
    ] {
        let cipher = Aes256Gcm::new_from_slice(&unhex(key)).unwrap();
        let nonce = [direction, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut aad = vec![direction, 0, 0, 0, 0, 0, 0, 0, 1];
        aad.extend_from_slice(&th);
        assert_eq!(aad.len(), 57);
        let direct = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(hex(&frame(&direct)), hex(&unhex(expected)));
    }
}

#[test]
fn transaction_session_rejects_replay_reorder_and_reflection() {
    let th = tx_values().transcript_hash();
    let session = || TransactionKeys::derive(&TX_KEY_SET_KEY, &th).into_session(&th);
    let (mut module, mut central) = (session(), session());
    let (_, first) = module.seal_message(b"first").unwrap();
    let (_, second) = module.seal_message(b"second").unwrap();
    // Out of order: the second message does not open as the first.
    assert_eq!(
        session().open_message(&second),
        Err(ChannelError::SecureMessaging)
    );
    central.open_message(&first).unwrap();
    // Replayed: the first does not open as the second.
    assert_eq!(
        central.open_message(&first),
        Err(ChannelError::SecureMessaging)
    );
    // A message reflected as a receipt, and a receipt for another message, fail.
    let (mut module, mut central) = (session(), session());
    let (_, message) = module.seal_message(TX_PAYLOAD).unwrap();
    central.open_message(&message).unwrap();
    assert_eq!(
        module.open_receipt(&message),
        Err(ChannelError::SecureMessaging)
    );
    let receipt = central.seal_receipt(&tx_receipt()).unwrap();
    module.seal_message(b"next").unwrap();
    assert_eq!(
        module.open_receipt(&receipt),
        Err(ChannelError::SecureMessaging)
    );
    // Another session (next counter) cannot open this one's messages.
    let mut next_values = tx_values();
    next_values.session_counter = 2;
    let next_th = next_values.transcript_hash();
    let mut other = TransactionKeys::derive(&TX_KEY_SET_KEY, &next_th).into_session(&next_th);
    assert_eq!(
        other.open_message(&unhex(TX_SEALED_MESSAGE_1)),
        Err(ChannelError::SecureMessaging)
    );
}

/// The TAN test vector of docs/protocol.md, section 18 (computed independently
/// with Python's hmac/hashlib: HKDF by hand).
#[test]
fn tan_verifier_and_proof_match_the_documented_vector() {
    let verifier = tan_verifier(&[7u8; 32], b"4711081512");
    assert_eq!(
        hex(&verifier[..]),
        "6a7cbd3661d598712a649ee9746f078b20b0dc058f1803915d91a40d91f3678ab8729c9661260d32e1f0504f99825af6"
    );
    let th = [3u8; 48];
    let proof = tan_proof(&verifier, &th).unwrap();
    assert_eq!(
        hex(&proof),
        "d4cb89b3970d9d868389494548e9ce020311a5a15bf4e4d8a8658688b0d1a3c6dbae62575d8ccde88cb3cf1dd6d9e9d3"
    );
    assert!(tan_proof_matches(&verifier, &th, &proof));
    assert!(!tan_proof_matches(&verifier, &[4u8; 48], &proof));
    assert!(!tan_proof_matches(&verifier, &th, &proof[..47]));
}
