//! The token's objects and their attributes, built from what the module
//! shows through SELECT and GET DATA.
//!
//! ```text
//!  module state            objects (CKA_LABEL, CKA_ID = subject key identifier)
//!  ─────────────────────   ────────────────────────────────────────────────────────────
//!  every state with DF21   "identity"  certificate (token user)
//!  OPERATING, DF23         "module"    private key (CKA_SIGN, sensitive, never extractable)
//!                          "module"    public key
//!                          "module"    certificate (token user)     ─┐ same CKA_ID
//!  OPERATING, DF24         "unit"      certificate (authority)
//!  OPERATING, DF25         "central"   certificate (authority)
//! ```
//!
//! Every object is a token object that cannot be modified, copied or
//! destroyed. The private key is `CKA_PRIVATE` when the module has a user
//! PIN, so it is found only after `C_Login`.

use cryptoki_sys::*;
use der::Encode;
use imprint_apdu::pki::Certificate;

/// The mechanisms the module key signs with, in `C_GetMechanismList` order.
pub const MECHANISMS: [CK_MECHANISM_TYPE; 3] = [CKM_ECDSA, CKM_ECDSA_SHA256, CKM_ECDSA_SHA384];

/// DER of the named curve secp384r1 (`CKA_EC_PARAMS`).
pub const EC_PARAMS_P384: [u8; 7] = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

/// Label of the module key, its public key and its certificate.
pub const LABEL_MODULE: &str = "module";
/// Label of the identity certificate.
pub const LABEL_IDENTITY: &str = "identity";
/// Label of the personalization unit's certificate (issued by the central system).
pub const LABEL_UNIT: &str = "unit";
/// Label of the central system's certificate (issued by the unit, the module's anchor).
pub const LABEL_CENTRAL: &str = "central";

/// An attribute's value as the object holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Readable bytes (booleans one byte, `CK_ULONG`s in native order).
    Bytes(Vec<u8>),
    /// The attribute exists but its value never leaves the module
    /// (`CKA_VALUE` of the private key): `CKR_ATTRIBUTE_SENSITIVE`.
    Sensitive,
}

/// What an object is, for the sign operation and `C_WrapKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// The module private key.
    PrivateKey,
    /// The module public key.
    PublicKey,
    /// A certificate.
    Certificate,
}

/// One object of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The handle, unique for the life of the loaded provider.
    pub handle: CK_OBJECT_HANDLE,
    /// What it is.
    pub kind: ObjectKind,
    /// `CKA_PRIVATE`: visible only after login.
    pub private: bool,
    attributes: Vec<(CK_ATTRIBUTE_TYPE, Value)>,
}

impl Object {
    /// The attribute of type `kind`, if the object has it.
    pub fn attribute(&self, kind: CK_ATTRIBUTE_TYPE) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(t, _)| *t == kind)
            .map(|(_, value)| value)
    }

    /// Whether every attribute of `template` is present with exactly this
    /// value (a sensitive attribute never matches).
    pub fn matches(&self, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> bool {
        template.iter().all(|(kind, wanted)| {
            matches!(self.attribute(*kind), Some(Value::Bytes(value)) if value == wanted)
        })
    }

    /// Whether a boolean attribute is true.
    pub fn flag(&self, kind: CK_ATTRIBUTE_TYPE) -> bool {
        matches!(self.attribute(kind), Some(Value::Bytes(value)) if value.as_slice() == [CK_TRUE])
    }
}

/// A `CK_ULONG` attribute value.
pub fn ulong(value: CK_ULONG) -> Vec<u8> {
    value.to_ne_bytes().to_vec()
}

/// A `CK_BBOOL` attribute value.
pub fn bool_value(value: bool) -> Vec<u8> {
    vec![if value { CK_TRUE } else { CK_FALSE }]
}

struct Builder {
    kind: ObjectKind,
    private: bool,
    attributes: Vec<(CK_ATTRIBUTE_TYPE, Value)>,
}

impl Builder {
    fn new(kind: ObjectKind, class: CK_OBJECT_CLASS, label: &str, private: bool) -> Self {
        let mut builder = Self {
            kind,
            private,
            attributes: Vec::new(),
        };
        builder
            .ulong(CKA_CLASS, class)
            .flag(CKA_TOKEN, true)
            .flag(CKA_PRIVATE, private)
            .flag(CKA_MODIFIABLE, false)
            .flag(CKA_COPYABLE, false)
            .flag(CKA_DESTROYABLE, false)
            .bytes(CKA_LABEL, label.as_bytes());
        builder
    }

    fn bytes(&mut self, kind: CK_ATTRIBUTE_TYPE, value: &[u8]) -> &mut Self {
        self.attributes.push((kind, Value::Bytes(value.to_vec())));
        self
    }

    fn flag(&mut self, kind: CK_ATTRIBUTE_TYPE, value: bool) -> &mut Self {
        self.attributes
            .push((kind, Value::Bytes(bool_value(value))));
        self
    }

    fn ulong(&mut self, kind: CK_ATTRIBUTE_TYPE, value: CK_ULONG) -> &mut Self {
        self.attributes.push((kind, Value::Bytes(ulong(value))));
        self
    }

    fn sensitive(&mut self, kind: CK_ATTRIBUTE_TYPE) -> &mut Self {
        self.attributes.push((kind, Value::Sensitive));
        self
    }

    fn build(&mut self) -> Object {
        Object {
            handle: 0,
            kind: self.kind,
            private: self.private,
            attributes: std::mem::take(&mut self.attributes),
        }
    }
}

/// A certificate object. `category`: `1` token user, `2` authority.
pub fn certificate(label: &str, cert: &Certificate, category: CK_ULONG) -> Object {
    let tbs = cert.x509().tbs_certificate();
    let serial = tbs.serial_number().to_der().unwrap_or_default();
    let spki = tbs.subject_public_key_info().to_der().unwrap_or_default();
    Builder::new(ObjectKind::Certificate, CKO_CERTIFICATE, label, false)
        .ulong(CKA_CERTIFICATE_TYPE, CKC_X_509)
        .flag(CKA_TRUSTED, false)
        .ulong(CKA_CERTIFICATE_CATEGORY, category)
        .bytes(CKA_START_DATE, &ck_date(cert.not_before_unix()))
        .bytes(CKA_END_DATE, &ck_date(cert.not_after_unix()))
        .bytes(CKA_PUBLIC_KEY_INFO, &spki)
        .bytes(CKA_SUBJECT, cert.subject_der())
        .bytes(CKA_ID, cert.key_identifier())
        .bytes(CKA_ISSUER, cert.issuer_der())
        .bytes(CKA_SERIAL_NUMBER, &serial)
        .bytes(CKA_VALUE, cert.der())
        .bytes(CKA_URL, &[])
        .bytes(CKA_HASH_OF_SUBJECT_PUBLIC_KEY, &[])
        .bytes(CKA_HASH_OF_ISSUER_PUBLIC_KEY, &[])
        .ulong(CKA_JAVA_MIDP_SECURITY_DOMAIN, 0)
        .build()
}

/// The module key pair's objects, from its certificate: the private key
/// (private when the module has a user PIN) and the public key.
pub fn module_key_pair(cert: &Certificate, pin_set: bool) -> [Object; 2] {
    let spki = cert
        .x509()
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .unwrap_or_default();
    let point = cert.public_key_sec1();
    let mut ec_point = Vec::with_capacity(point.len() + 2);
    ec_point.push(0x04);
    ec_point.push(point.len() as u8);
    ec_point.extend_from_slice(&point);
    let mechanisms: Vec<u8> = MECHANISMS.iter().flat_map(|m| ulong(*m)).collect();
    let key_common = |builder: &mut Builder| {
        builder
            .ulong(CKA_KEY_TYPE, CKK_EC)
            .bytes(CKA_ID, cert.key_identifier())
            .bytes(CKA_START_DATE, &[])
            .bytes(CKA_END_DATE, &[])
            .flag(CKA_DERIVE, false)
            .flag(CKA_LOCAL, true)
            .ulong(CKA_KEY_GEN_MECHANISM, CKM_EC_KEY_PAIR_GEN)
            .bytes(CKA_ALLOWED_MECHANISMS, &mechanisms)
            .bytes(CKA_SUBJECT, cert.subject_der())
            .bytes(CKA_PUBLIC_KEY_INFO, &spki)
            .bytes(CKA_EC_PARAMS, &EC_PARAMS_P384);
    };
    let mut private = Builder::new(
        ObjectKind::PrivateKey,
        CKO_PRIVATE_KEY,
        LABEL_MODULE,
        pin_set,
    );
    key_common(&mut private);
    private
        .flag(CKA_SENSITIVE, true)
        .flag(CKA_DECRYPT, false)
        .flag(CKA_SIGN, true)
        .flag(CKA_SIGN_RECOVER, false)
        .flag(CKA_UNWRAP, false)
        .flag(CKA_EXTRACTABLE, false)
        .flag(CKA_ALWAYS_SENSITIVE, true)
        .flag(CKA_NEVER_EXTRACTABLE, true)
        .flag(CKA_WRAP_WITH_TRUSTED, false)
        .flag(CKA_ALWAYS_AUTHENTICATE, false)
        .sensitive(CKA_VALUE);
    let mut public = Builder::new(ObjectKind::PublicKey, CKO_PUBLIC_KEY, LABEL_MODULE, false);
    key_common(&mut public);
    public
        .flag(CKA_ENCRYPT, false)
        .flag(CKA_VERIFY, true)
        .flag(CKA_VERIFY_RECOVER, false)
        .flag(CKA_WRAP, false)
        .flag(CKA_TRUSTED, false)
        .bytes(CKA_EC_POINT, &ec_point);
    [private.build(), public.build()]
}

/// A `CK_DATE` (`YYYYMMDD` in ASCII) for Unix seconds, in UTC.
pub fn ck_date(unix: u64) -> [u8; 8] {
    // Howard Hinnant's civil-from-days algorithm.
    let days = (unix / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let text = format!("{:04}{:02}{:02}", year.clamp(0, 9999), month, day);
    let mut out = [b'0'; 8];
    out.copy_from_slice(&text.as_bytes()[..8]);
    out
}
