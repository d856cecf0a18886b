//! The command set's numbers: AID, instructions, parameters, data-object tags
//! and lifecycle codes. `docs/apdu.md` is the prose version of this file.

/// The applet's AID: `F0` (ISO 7816-5 category F, unregistered proprietary)
/// followed by ASCII "IMPRINT" and the command-set version 1.
pub const AID: [u8; 9] = [0xF0, 0x49, 0x4D, 0x50, 0x52, 0x49, 0x4E, 0x54, 0x01];

/// Version of the command set, reported in the FCI.
pub const COMMAND_SET_VERSION: u8 = 1;

/// Instruction bytes.
pub mod ins {
    /// SELECT (by DF name).
    pub const SELECT: u8 = 0xA4;
    /// GET DATA, objects named by P1-P2.
    pub const GET_DATA: u8 = 0xCA;
    /// PUT DATA, BER-TLV objects in the data field (P1-P2 = `3FFF`).
    pub const PUT_DATA: u8 = 0xDB;
    /// PUT DATA, P1-P2 the tag of the one object in the data field (here
    /// only `DF2A`, the identification unit's answer, claims 16–18).
    pub const PUT_DATA_OBJECT: u8 = 0xDA;
    /// GENERATE ASYMMETRIC KEY PAIR.
    pub const GENERATE_KEY: u8 = 0x47;
    /// MUTUAL AUTHENTICATE / EXTERNAL AUTHENTICATE: the channel handshake.
    pub const AUTHENTICATE: u8 = 0x82;
    /// TERMINATE DF: leave OPERATING for PERSONALIZATION, erasing operational keys.
    pub const TERMINATE: u8 = 0xE6;
    /// VERIFY: present the user PIN (or ask for its status).
    pub const VERIFY: u8 = 0x20;
    /// PERFORM SECURITY OPERATION (here only COMPUTE DIGITAL SIGNATURE).
    pub const PSO: u8 = 0x2A;
    /// GET RESPONSE.
    pub const GET_RESPONSE: u8 = 0xC0;
    /// INTERNAL AUTHENTICATE: open a transaction session with the key set.
    pub const INTERNAL_AUTHENTICATE: u8 = 0x88;
}

/// P1 of GENERATE ASYMMETRIC KEY PAIR: generate a new pair.
pub const P1_GENERATE: u8 = 0x80;
/// P2 of GENERATE ASYMMETRIC KEY PAIR: the permanent identity key (claim 8).
pub const KEY_REF_IDENTITY: u8 = 0x01;
/// P2 of GENERATE ASYMMETRIC KEY PAIR: the module key (claims 1, 10).
pub const KEY_REF_MODULE: u8 = 0x02;

/// P1 of AUTHENTICATE: the cipher suite. Only one exists.
///
/// Suite 1: ECDH P-384 ephemeral, ECDSA P-384 with SHA-384, HKDF-SHA384,
/// AES-256-GCM secure messaging, HMAC-SHA384 key confirmation.
pub const SUITE_P384_AES256GCM: u8 = 0x01;
/// P2 of AUTHENTICATE: first step (MUTUAL AUTHENTICATE, unit to module).
pub const AUTH_STEP_OPEN: u8 = 0x00;
/// P2 of AUTHENTICATE: second step (EXTERNAL AUTHENTICATE of the unit, or of
/// the central system on the operating channel).
pub const AUTH_STEP_CONFIRM: u8 = 0x01;
/// P2 of AUTHENTICATE: first step of the operating channel (MUTUAL
/// AUTHENTICATE, central system to module; claims 1, 4).
pub const AUTH_STEP_OPERATING_OPEN: u8 = 0x02;
/// P2 of AUTHENTICATE: the central system's confirmation of a transaction
/// session (EXTERNAL AUTHENTICATE with the key set, claim 11).
pub const AUTH_STEP_TRANSACTION_CONFIRM: u8 = 0x03;
/// P2 of INTERNAL AUTHENTICATE: open a transaction session.
pub const TRANSACTION_OPEN: u8 = 0x00;

/// P1-P2 of PUT DATA: the data field is a list of BER-TLV data objects.
pub const PUT_DATA_TLV: u16 = 0x3FFF;

/// P1 of VERIFY: verify the reference data in the data field (or, with no
/// data, report the verification status).
pub const P1_VERIFY: u8 = 0x00;
/// P1 of VERIFY: reset the verification status (ISO/IEC 7816-4, "log out").
pub const P1_VERIFY_RESET: u8 = 0xFF;
/// P2 of VERIFY: specific reference data number 1, the user PIN.
pub const PIN_REF_USER: u8 = 0x81;
/// P2 of VERIFY and of INTERNAL AUTHENTICATE: specific reference data number
/// 2, the one-off transaction number (TAN) of claim 13. VERIFY hands the TAN
/// to the module over the local interface; INTERNAL AUTHENTICATE, inside the
/// personalization channel, asks for the module's proof of it.
pub const TAN_REF: u8 = 0x82;
/// P1-P2 of PERFORM SECURITY OPERATION: COMPUTE DIGITAL SIGNATURE, the
/// response is the signature (`9E`) and the data field the input to sign (`9A`).
pub const PSO_CDS: u16 = 0x9E9A;
/// P1-P2 of PERFORM SECURITY OPERATION: ENCIPHER, a transaction message to the
/// central system: the data field is the payload, the response its cryptogram.
pub const PSO_ENCIPHER: u16 = 0x8680;
/// P1-P2 of PERFORM SECURITY OPERATION: DECIPHER, the central system's receipt:
/// the data field is the cryptogram, the response the receipt.
pub const PSO_DECIPHER: u16 = 0x8086;

/// Largest transaction payload the module seals (bytes).
pub const TRANSACTION_PAYLOAD_MAX: usize = 4096;
/// Largest receipt the module opens (bytes of plaintext).
pub const RECEIPT_MAX: usize = 4096;

/// How many wrong PIN presentations in a row block the PIN. A successful
/// VERIFY resets the counter to this value; nothing else raises it.
pub const PIN_TRY_LIMIT: u8 = 3;

/// How many TAN proofs the module gives between two completed
/// personalizations. The counter is persistent and committed before each
/// proof is computed; at the limit INTERNAL AUTHENTICATE for the TAN answers
/// `6983` until a personalization completes (PUT DATA of the bundle).
pub const TAN_PROOF_LIMIT: u8 = 5;

/// Data-object tags.
pub mod tag {
    /// Dynamic authentication template (ISO 7816-4).
    pub const DYN_AUTH: u32 = 0x7C;
    /// Inside `7C`: a certificate (the unit's, or the module's identity certificate).
    pub const AUTH_CERTIFICATE: u32 = 0xA0;
    /// Inside `7C`: challenge, 32 bytes.
    pub const AUTH_CHALLENGE: u32 = 0x81;
    /// Inside `7C`: response, an ECDSA P-384 signature `r || s` (96 bytes).
    pub const AUTH_SIGNATURE: u32 = 0x82;
    /// Inside `7C`: authentication code, HMAC-SHA384 key confirmation (48 bytes).
    pub const AUTH_CONFIRMATION: u32 = 0x84;
    /// Inside `7C`: ephemeral public key, uncompressed SEC1 point (97 bytes).
    pub const AUTH_EPHEMERAL: u32 = 0x85;
    /// Inside `7C`: the module's nonce for this personalization (16 bytes, claim 9).
    pub const AUTH_NONCE: u32 = 0x8A;
    /// Inside `7C`: the module's chain certificate on the operating channel
    /// (the unit's certificate issued by the central system).
    pub const AUTH_CHAIN_CERTIFICATE: u32 = 0xA1;
    /// Inside `7C`: a transaction key set identifier (16 bytes).
    pub const AUTH_KEY_SET_ID: u32 = 0x86;
    /// Inside `7C`: the transaction session counter (4 bytes, big-endian).
    pub const AUTH_SESSION_COUNTER: u32 = 0x87;
    /// Inside `7C` of the TAN proof command: the unit's TAN salt (32 bytes),
    /// in the ISO 7816-4 "challenge" position.
    pub const TAN_SALT: u32 = 0x81;
    /// Inside `7C` of the TAN proof response: the proof (48 bytes), in the
    /// ISO 7816-4 "response" position.
    pub const TAN_PROOF: u32 = 0x82;

    /// The identification unit's answer (claims 16–18): handed to the module
    /// by plain PUT DATA `00 DA DF 2A` over the local interface, held in
    /// volatile memory only, and forwarded to the unit by secured GET DATA
    /// `0C CA DF 2A` in the personalization channel.
    pub const IDENTIFICATION: u32 = 0xDF2A;

    /// The unit's offer of a direct network connection (claim 15): secured
    /// PUT DATA `0C DA DF 2B` in the personalization channel, value
    /// `80 address ‖ 81 ticket`, for the module's own network interface.
    pub const DIRECT_CONNECTION: u32 = 0xDF2B;
    /// Inside `DF2B`: the unit's address, UTF-8 `host:port`, 1 to 255 bytes.
    pub const DIRECT_ADDRESS: u32 = 0x80;
    /// Inside `DF2B`: the one-time ticket, 48 bytes (16-byte id ‖ 32-byte secret).
    pub const DIRECT_TICKET: u32 = 0x81;

    /// The transaction key set (claim 11), in PUT DATA on the operating channel.
    pub const KEY_SET: u32 = 0xDF28;
    /// Inside `DF28`: identifier, 16 bytes.
    pub const KEY_SET_ID: u32 = 0xC0;
    /// Inside `DF28`: the key, 32 bytes.
    pub const KEY_SET_KEY: u32 = 0xC1;
    /// Inside `DF28`: end of the key set's lifetime, Unix seconds, 8 bytes big-endian.
    pub const KEY_SET_EXPIRES: u32 = 0xC2;
    /// Key set status (GET DATA): `C0` identifier, `C2` expiry, `C3` session counter.
    pub const KEY_SET_STATUS: u32 = 0xDF29;
    /// Inside `DF29`: the session counter of the last transaction session, 4 bytes.
    pub const KEY_SET_COUNTER: u32 = 0xC3;

    /// Inside a receipt: the central system's journal number, 8 bytes.
    pub const RECEIPT_NUMBER: u32 = 0xC0;
    /// Inside a receipt: SHA-384 of the payload it acknowledges.
    pub const RECEIPT_DIGEST: u32 = 0xC1;
    /// Inside a receipt: the application's reply, opaque.
    pub const RECEIPT_REPLY: u32 = 0xC2;

    /// Secure messaging: cryptogram, data not encoded in BER-TLV (ISO 7816-4).
    pub const SM_CRYPTOGRAM: u32 = 0x85;
    /// Secure messaging: cryptographic checksum (here the AES-GCM tag).
    pub const SM_MAC: u32 = 0x8E;

    /// Public key template.
    pub const PUBLIC_KEY: u32 = 0x7F49;
    /// Inside `7F49`: EC point, uncompressed SEC1 (97 bytes).
    pub const EC_POINT: u32 = 0x86;
    /// Variation value for key generation (claim 10), 1 to 64 bytes.
    pub const VARIATION: u32 = 0x80;
    /// A digital signature `r || s` (proof of possession of a new key).
    pub const SIGNATURE: u32 = 0x9E;

    /// Identity certificate, issued by the manufacturer (claim 8).
    pub const IDENTITY_CERT: u32 = 0xDF21;
    /// The manufacturer's checking certificate (self-signed root, claim 7).
    pub const CHECKING_CERT: u32 = 0xDF22;
    /// The module certificate, issued by the personalization unit (claim 1).
    pub const MODULE_CERT: u32 = 0xDF23;
    /// The unit's certificate issued by the central system (claim 6).
    pub const UNIT_CERT: u32 = 0xDF24;
    /// The unit's certificate over the central system's key (claims 4, 5).
    pub const CENTRAL_CERT: u32 = 0xDF25;
    /// The identity public key, as a `7F49` template (GET DATA only).
    pub const IDENTITY_PUBLIC_KEY: u32 = 0xDF26;
    /// The user PIN, optional in the certificate bundle (secured PUT DATA only;
    /// never readable).
    pub const USER_PIN: u32 = 0xDF27;

    /// FCI template (SELECT response).
    pub const FCI: u32 = 0x6F;
    /// Inside the FCI: the DF name (our AID).
    pub const FCI_AID: u32 = 0x84;
    /// Inside the FCI: proprietary information template.
    pub const FCI_PROPRIETARY: u32 = 0xA5;
    /// Inside `A5`: command-set version.
    pub const FCI_VERSION: u32 = 0xC0;
    /// Inside `A5`: module serial, 8 bytes (absent before the identity key exists).
    pub const FCI_SERIAL: u32 = 0xC1;
    /// Inside `A5`: lifecycle state (see [`super::Lifecycle`]).
    pub const FCI_LIFECYCLE: u32 = 0xC2;
}

/// Lengths of the fixed-size fields.
pub mod len {
    /// A challenge.
    pub const CHALLENGE: usize = 32;
    /// An uncompressed P-384 point.
    pub const POINT: usize = 97;
    /// A raw P-384 signature `r || s`.
    pub const SIGNATURE: usize = 96;
    /// An HMAC-SHA384 tag.
    pub const CONFIRMATION: usize = 48;
    /// Largest variation value accepted.
    pub const VARIATION_MAX: usize = 64;
    /// Shortest user PIN.
    pub const PIN_MIN: usize = 4;
    /// Longest user PIN.
    pub const PIN_MAX: usize = 16;
    /// Shortest TAN the module accepts (bytes).
    pub const TAN_MIN: usize = 4;
    /// Longest TAN the module accepts (bytes).
    pub const TAN_MAX: usize = 16;
    /// The unit's TAN salt.
    pub const TAN_SALT: usize = 32;
    /// A TAN proof (HMAC-SHA384).
    pub const TAN_PROOF: usize = 48;
    /// Longest digest COMPUTE DIGITAL SIGNATURE accepts (SHA-512).
    pub const DIGEST_MAX: usize = 64;
    /// The length of the digest value the module key signs: the byte length of
    /// the P-384 group order (384 bits).
    pub const FIELD_DIGEST: usize = 48;
    /// Largest identification unit answer the module holds (bytes).
    pub const IDENTIFICATION_MAX: usize = 255;
    /// The longest address in a direct-connection offer (claim 15).
    pub const DIRECT_ADDRESS_MAX: usize = 255;
    /// A direct-connection ticket: its id, then its secret.
    pub const DIRECT_TICKET: usize = DIRECT_TICKET_ID + DIRECT_TICKET_SECRET;
    /// The public part of a ticket, by which the unit finds the waiting run.
    pub const DIRECT_TICKET_ID: usize = 16;
    /// The secret part of a ticket, compared in constant time.
    pub const DIRECT_TICKET_SECRET: usize = 32;
    /// A transaction key set identifier.
    pub const KEY_SET_ID: usize = 16;
    /// A transaction key set's key (AES-256 / HMAC-SHA384 input keying material).
    pub const KEY_SET_KEY: usize = 32;
}

/// The module's lifecycle (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lifecycle {
    /// Blank or being manufactured: no identity certificate yet.
    #[default]
    Manufactured,
    /// Manufactured; waiting for (re-)personalization. No operational key material.
    Personalization,
    /// Personalized: module key, module certificate and central anchor verified and committed.
    Operating,
}

impl Lifecycle {
    /// The code on the wire and in the key memory.
    pub fn code(self) -> u8 {
        match self {
            Self::Manufactured => 0x01,
            Self::Personalization => 0x07,
            Self::Operating => 0x0F,
        }
    }

    /// Decodes [`Lifecycle::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Self::Manufactured),
            0x07 => Some(Self::Personalization),
            0x0F => Some(Self::Operating),
            _ => None,
        }
    }

    /// Upper-case name as the docs and the CLI print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Manufactured => "MANUFACTURED",
            Self::Personalization => "PERSONALIZATION",
            Self::Operating => "OPERATING",
        }
    }
}

impl core::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}
