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

const UNIT_EPHEMERAL: &str = "TODO";
const MODULE_EPHEMERAL: &str = "TODO";
const TRANSCRIPT_HASH: &str = "TODO";
const COMMAND_KEY: &str = "TODO";
const RESPONSE_KEY: &str = "TODO";
const UNIT_CONFIRMATION_KEY: &str = "TODO";
const MODULE_CONFIRMATION_KEY: &str = "TODO";
const UNIT_CONFIRMATION: &str = "TODO";
const MODULE_CONFIRMATION: &str = "TODO";
const UNIT_SIGNED_DIGEST: &str = "TODO";
const MODULE_SIGNED_DIGEST: &str = "TODO";
const POSSESSION_DIGEST: &str = "TODO";
const FIRST_SEALED_COMMAND: &str = "TODO";
const FIRST_SEALED_RESPONSE: &str = "TODO";

#[test]
fn print_vector() {
    let v = Vector::new();
    let th = v.th();
    let (unit, module) = v.keys();
    std::println!("UNIT_EPHEMERAL {}", hex(&v.unit_point));
    std::println!("MODULE_EPHEMERAL {}", hex(&v.module_point));
    std::println!("UNIT_CERT_HASH {}", hex(&v.unit_cert_hash));
    std::println!("MODULE_CERT_HASH {}", hex(&v.module_cert_hash));
    std::println!("TRANSCRIPT_HASH {}", hex(&th));
    std::println!("COMMAND_KEY {}", hex(&unit.command_key));
    std::println!("RESPONSE_KEY {}", hex(&unit.response_key));
    std::println!("UNIT_CONFIRMATION_KEY {}", hex(&unit.unit_confirmation_key));
    std::println!("MODULE_CONFIRMATION_KEY {}", hex(&unit.module_confirmation_key));
    std::println!("UNIT_CONFIRMATION {}", hex(&unit.confirmation(Role::Unit, &th).unwrap()));
    std::println!("MODULE_CONFIRMATION {}", hex(&module.confirmation(Role::Module, &th).unwrap()));
    std::println!("UNIT_SIGNED_DIGEST {}", hex(&signed_digest(Role::Unit, &th)));
    std::println!("MODULE_SIGNED_DIGEST {}", hex(&signed_digest(Role::Module, &th)));
    std::println!("POSSESSION_DIGEST {}", hex(&possession_digest(&th, &v.module_point, b"imprint")));
    let mut u = unit.into_secure_messaging();
    let mut m = module.into_secure_messaging();
    let sealed = u.seal_command(HEADER, &first_command()).unwrap();
    std::println!("FIRST_SEALED_COMMAND {}", hex(&sealed));
    m.open_command(HEADER, &sealed).unwrap();
    let resp = m.seal_response(HEADER, RESPONSE_DATA, 0x9000).unwrap();
    std::println!("FIRST_SEALED_RESPONSE {}", hex(&resp));
    let shared = diffie_hellman(&v.unit_secret, parse_point(&v.module_point).unwrap().as_affine());
    std::println!("SHARED_X {}", hex(shared.raw_secret_bytes()));
    std::println!("UNIT_SCALAR {}", hex(&v.unit_secret.to_bytes()));
    std::println!("MODULE_SCALAR {}", hex(&v.module_secret.to_bytes()));
    std::println!("PLAIN {}", hex(&first_command()));
}
