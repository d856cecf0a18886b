//! Unit tests of the channel core, with a fixed-randomness test vector that
//! `docs/protocol.md` reproduces byte for byte.

use super::*;
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

#[test]
fn print_new_vectors() {
    let v = OperatingVector::new();
    let th = v.th();
    std::println!("OP central secret {}", hex(&v.central_secret.to_bytes()));
    std::println!(
        "OP module eph secret {}",
        hex(&v.module_ephemeral_secret.to_bytes())
    );
    std::println!(
        "OP module key secret {}",
        hex(&v.module_key_secret.to_bytes())
    );
    std::println!("OP central point {}", hex(&v.central_point));
    std::println!("OP module point {}", hex(&v.module_point));
    std::println!("OP module key point {}", hex(&v.module_key_point));
    std::println!("OP cch {}", hex(&v.central_cert_hash));
    std::println!("OP mch {}", hex(&v.module_cert_hash));
    std::println!("OP uch {}", hex(&v.unit_cert_hash));
    std::println!("OP TH {}", hex(&th));
    let zee = ecdh(&v.central_secret, &parse_point(&v.module_point).unwrap());
    let zse = ecdh(
        &v.central_secret,
        &parse_point(&v.module_key_point).unwrap(),
    );
    std::println!("OP Zee {}", hex(&zee[..]));
    std::println!("OP Zse {}", hex(&zse[..]));
    let (c, m) = v.keys();
    std::println!("OP cmd {}", hex(&c.command_key));
    std::println!("OP rsp {}", hex(&c.response_key));
    std::println!("OP kc {}", hex(&c.unit_confirmation_key));
    std::println!("OP km {}", hex(&c.module_confirmation_key));
    std::println!(
        "OP conf central {}",
        hex(&c.confirmation(Role::Central, &th).unwrap())
    );
    std::println!(
        "OP conf module {}",
        hex(&m.confirmation(Role::Module, &th).unwrap())
    );
    std::println!(
        "OP signed digest {}",
        hex(&signed_digest(Role::Central, &th))
    );
    let mut sm = c.into_secure_messaging();
    std::println!("OP keyset plain {}", hex(&key_set_plain()));
    std::println!(
        "OP sealed put {}",
        hex(&sm.seal_command(KEY_SET_HEADER, &key_set_plain()).unwrap())
    );
    let mut msm = m.into_secure_messaging();
    let _ = msm.open_command(KEY_SET_HEADER, &sm_dummy()).ok();
}
fn sm_dummy() -> Vec<u8> {
    Vec::new()
}

/// The TAN test vector of docs/protocol.md, section 14 (computed independently
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
