//! Unit tests of the Imprint PKI profile (parser, verifier and issuance).

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use der::{
    Tag,
    asn1::{Any, BitString, ObjectIdentifier, OctetString},
};
use p384::ecdsa::{DerSignature, SigningKey, signature::Signer};
use p384::elliptic_curve::Generate;
use x509_cert::{
    ext::Extension,
    name::Name,
    spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned},
};

use super::issue::{
    self, CertificateRequest, IssueError, IssuerKey, Validity, central_delivery_cert,
    certificates_from_pem_bundle, from_pem, identity_cert, module_cert, personalizer_cert,
    self_signed_root, to_pem, to_pem_bundle,
};
use super::*;

const YEAR: u64 = 365 * 24 * 3600;
/// 2023-11-14T22:13:20Z
const T0: u64 = 1_700_000_000;
const NONCE: [u8; NONCE_LEN] = *b"0123456789abcdef";
const ECDSA_SHA384_ALG_DER: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];

fn key() -> SigningKey {
    SigningKey::generate()
}

fn v(from: u64, to: u64) -> Validity {
    Validity::new(from, to).expect("validity")
}

fn point(key: &SigningKey) -> Vec<u8> {
    issue::sec1_uncompressed(key.verifying_key())
}

struct Pki {
    m_key: SigningKey,
    c_key: SigningKey,
    p_key: SigningKey,
    id_key: SigningKey,
    mod_key: SigningKey,
    manufacturer: Certificate,
    central: Certificate,
    pers_m: Certificate,
    pers_c: Certificate,
    delivery: Certificate,
    identity: Certificate,
    module: Certificate,
    serial: String,
    t0: u64,
}

/// A complete PKI; every notBefore lies in `[t0, t0 + 300]`.
fn build_pki(t0: u64) -> Pki {
    let m_key = key();
    let c_key = key();
    let p_key = key();
    let id_key = key();
    let mod_key = key();

    let manufacturer = self_signed_root(
        Role::Manufacturer,
        "Imprint Manufacturer Root",
        &m_key,
        v(t0, t0 + 30 * YEAR),
    )
    .expect("manufacturer root");
    let central = self_signed_root(
        Role::Central,
        "Imprint Central Root",
        &c_key,
        v(t0, t0 + 30 * YEAR),
    )
    .expect("central root");

    let csr = CertificateRequest::new("Imprint Personalization Unit 7", &p_key).expect("csr");
    let csr = CertificateRequest::from_pem(&csr.to_pem().expect("csr pem")).expect("csr parse");
    let pers_m = personalizer_cert(
        IssuerKey {
            cert: &manufacturer,
            key: &m_key,
        },
        &csr,
        v(t0 + 100, t0 + 20 * YEAR),
    )
    .expect("personalizer by manufacturer");
    let pers_c = personalizer_cert(
        IssuerKey {
            cert: &central,
            key: &c_key,
        },
        &csr,
        v(t0 + 100, t0 + 20 * YEAR),
    )
    .expect("personalizer by central");
    let delivery = central_delivery_cert(
        IssuerKey {
            cert: &pers_m,
            key: &p_key,
        },
        &central,
        v(t0 + 200, t0 + 10 * YEAR),
    )
    .expect("central delivery");
    let identity = identity_cert(
        IssuerKey {
            cert: &manufacturer,
            key: &m_key,
        },
        &point(&id_key),
        v(t0 + 100, t0 + 25 * YEAR),
    )
    .expect("identity");
    let serial = identity.module_serial().expect("serial").to_owned();
    let module = module_cert(
        IssuerKey {
            cert: &pers_m,
            key: &p_key,
        },
        &serial,
        &point(&mod_key),
        &NONCE,
        v(t0 + 300, t0 + 5 * YEAR),
    )
    .expect("module");

    Pki {
        m_key,
        c_key,
        p_key,
        id_key,
        mod_key,
        manufacturer,
        central,
        pers_m,
        pers_c,
        delivery,
        identity,
        module,
        serial,
        t0,
    }
}

// --- DER helpers for hand-made fixtures -----------------------------------------------------

fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=0x7f => vec![n as u8],
        0x80..=0xff => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

/// Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signature } with `alg_der` as the
/// outer algorithm and a fresh ECDSA P-384/SHA-384 signature over `tbs`.
fn assemble(tbs: &[u8], alg_der: &[u8], key: &SigningKey) -> Vec<u8> {
    let sig: DerSignature = key.sign(tbs);
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig.as_bytes());
    let mut content = tbs.to_vec();
    content.extend_from_slice(alg_der);
    content.extend(tlv(0x03, &bits));
    tlv(0x30, &content)
}

fn replace_once(haystack: &[u8], needle: &[u8], replacement: &[u8]) -> Vec<u8> {
    assert_eq!(needle.len(), replacement.len());
    let pos = haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present");
    let mut out = haystack.to_vec();
    out[pos..pos + needle.len()].copy_from_slice(replacement);
    out
}

/// Edits the TBS of `cert` (same-length replacement) and re-signs it with `key`.
fn edit_tbs_and_resign(
    cert: &Certificate,
    needle: &[u8],
    repl: &[u8],
    key: &SigningKey,
) -> Vec<u8> {
    let tbs = replace_once(cert.tbs_der(), needle, repl);
    assemble(&tbs, &ECDSA_SHA384_ALG_DER, key)
}

fn subject_of(cert: &Certificate) -> Name {
    cert.x509().tbs_certificate().subject().clone()
}

fn cn(name: &str) -> Name {
    issue::name_from_attributes(&[(
        oid::COMMON_NAME,
        Any::new(Tag::Utf8String, name.as_bytes()).expect("cn"),
    )])
    .expect("name")
}

/// A module key certificate built like `module_cert`, with the extension list edited.
fn craft_module_key(pki: &Pki, edit: impl FnOnce(&mut Vec<Extension>)) -> Vec<u8> {
    let mod_point = point(&pki.mod_key);
    let mut exts = issue::role_extensions(
        Role::ModuleKey,
        &mod_point,
        Some(&point(&pki.p_key)),
        Some(&NONCE),
    )
    .expect("exts");
    edit(&mut exts);
    issue::build_der(
        issue::module_name(&pki.serial).expect("name"),
        subject_of(&pki.pers_m),
        issue::spki_from_point(&mod_point).expect("spki"),
        v(pki.t0 + 300, pki.t0 + 5 * YEAR),
        exts,
        &pki.p_key,
    )
    .expect("build")
}

/// A certificate of `role` built like the issuing functions (CA roles under the central root,
/// a delivery certificate by the manufacturer's personalizer), with `purposes` as its
/// extKeyUsage.
fn craft_with_purposes(pki: &Pki, role: Role, purposes: Vec<ObjectIdentifier>) -> Vec<u8> {
    let eku = issue::extension(
        oid::EXT_KEY_USAGE,
        false,
        &x509_cert::ext::pkix::ExtendedKeyUsage(purposes),
    )
    .expect("ext");
    let (subject, issuer, subject_key, issuer_key, validity) = match role {
        Role::Central => (
            subject_of(&pki.central),
            subject_of(&pki.central),
            &pki.c_key,
            None,
            v(pki.t0, pki.t0 + 30 * YEAR),
        ),
        Role::Personalizer => (
            cn("Imprint Personalization Unit 7"),
            subject_of(&pki.central),
            &pki.p_key,
            Some(&pki.c_key),
            v(pki.t0 + 100, pki.t0 + 20 * YEAR),
        ),
        Role::CentralDelivery => (
            subject_of(&pki.central),
            subject_of(&pki.pers_m),
            &pki.c_key,
            Some(&pki.p_key),
            v(pki.t0 + 200, pki.t0 + 10 * YEAR),
        ),
        Role::ModuleKey => {
            return craft_module_key(pki, |exts| {
                let i = ext_index(exts, oid::EXT_KEY_USAGE);
                exts[i] = eku;
            });
        }
        other => panic!("no fixture for {other}"),
    };
    let subject_point = point(subject_key);
    let issuer_point = issuer_key.map(point);
    let mut exts =
        issue::role_extensions(role, &subject_point, issuer_point.as_deref(), None).expect("exts");
    let i = ext_index(&exts, oid::EXT_KEY_USAGE);
    exts[i] = eku;
    issue::build_der(
        subject,
        issuer,
        issue::spki_from_point(&subject_point).expect("spki"),
        validity,
        exts,
        issuer_key.unwrap_or(subject_key),
    )
    .expect("build")
}

fn ext_index(exts: &[Extension], id: ObjectIdentifier) -> usize {
    exts.iter()
        .position(|e| e.extn_id == id)
        .expect("extension present")
}

// --- positive -------------------------------------------------------------------------------

#[test]
fn full_pki_chain_verifies() {
    let pki = build_pki(T0);

    assert_eq!(pki.manufacturer.role(), Role::Manufacturer);
    assert_eq!(pki.central.role(), Role::Central);
    assert_eq!(pki.pers_m.role(), Role::Personalizer);
    assert_eq!(pki.pers_c.role(), Role::Personalizer);
    assert_eq!(pki.delivery.role(), Role::CentralDelivery);
    assert_eq!(pki.identity.role(), Role::ModuleIdentity);
    assert_eq!(pki.module.role(), Role::ModuleKey);

    verify_self_signed_root(&pki.manufacturer, Role::Manufacturer).expect("m root");
    verify_self_signed_root(&pki.central, Role::Central).expect("c root");
    assert!(pki.manufacturer.is_self_signed());
    assert!(pki.central.is_self_signed());
    assert!(!pki.pers_m.is_self_signed());
    assert!(!pki.delivery.is_self_signed());

    verify_issued_by(&pki.pers_m, &pki.manufacturer, 0).expect("P by M");
    verify_issued_by(&pki.pers_c, &pki.central, 0).expect("P by C");
    verify_issued_by(&pki.delivery, &pki.pers_m, 0).expect("CD by P");
    verify_issued_by(&pki.delivery, &pki.pers_c, 0).expect("CD by P (central-issued cert)");
    verify_issued_by(&pki.identity, &pki.manufacturer, 0).expect("identity by M");
    verify_issued_by(&pki.module, &pki.pers_m, 0).expect("module by P");
    verify_issued_by(&pki.module, &pki.pers_c, 0).expect("module by P (central-issued cert)");
    // Full path root -> personalizer -> module: one CA below the root.
    verify_issued_by(&pki.pers_m, &pki.manufacturer, 1).expect("P by M, 1 below");

    // Same subject and key in both personalizer certificates.
    assert_eq!(pki.pers_m.subject_der(), pki.pers_c.subject_der());
    assert_eq!(pki.pers_m.public_key_sec1(), pki.pers_c.public_key_sec1());
    assert_eq!(pki.pers_m.public_key_sec1(), point(&pki.p_key));
    assert_ne!(pki.pers_m.issuer_der(), pki.pers_c.issuer_der());

    // Central delivery carries the central root's name and key.
    assert_eq!(pki.delivery.subject_der(), pki.central.subject_der());
    assert_eq!(
        pki.delivery.public_key_sec1(),
        pki.central.public_key_sec1()
    );
    assert_eq!(pki.delivery.issuer_der(), pki.pers_m.subject_der());
    assert_eq!(pki.delivery.path_len_constraint(), Some(1));
    assert_eq!(pki.pers_m.path_len_constraint(), Some(0));
    assert_eq!(pki.manufacturer.path_len_constraint(), None);

    // Module serial, nonce and keys.
    let serial = serial_from_public_key(&point(&pki.id_key));
    assert_eq!(pki.serial, serial_hex(&serial));
    assert_eq!(pki.serial.len(), 16);
    assert!(is_serial_hex(&pki.serial));
    assert_eq!(pki.module.module_serial(), Some(pki.serial.as_str()));
    assert_eq!(pki.module.nonce(), Some(NONCE));
    assert_eq!(pki.identity.nonce(), None);
    assert_eq!(pki.pers_m.module_serial(), None);
    check_nonce(&pki.module, &NONCE).expect("nonce");
    check_module_serial(&pki.module, &serial).expect("serial");
    check_module_serial(&pki.identity, &serial).expect("serial");
    check_public_key(&pki.module, &point(&pki.mod_key)).expect("module key");
    check_public_key(&pki.identity, &point(&pki.id_key)).expect("identity key");
    assert_eq!(pki.module.public_key_sec1().len(), P384_POINT_LEN);
    assert_eq!(pki.module.public_key(), pki.mod_key.verifying_key());
    assert_eq!(
        pki.module.key_identifier(),
        &key_identifier(&point(&pki.mod_key))
    );
    assert_eq!(
        pki.module.authority_key_identifier(),
        Some(pki.pers_m.key_identifier().as_slice())
    );
    assert_eq!(pki.manufacturer.authority_key_identifier(), None);

    // Validity and fingerprints.
    assert_eq!(pki.module.not_before_unix(), T0 + 300);
    assert_eq!(pki.module.not_after_unix(), T0 + 5 * YEAR);
    assert_eq!(pki.module.fingerprint(), super::sha384(pki.module.der()));
    check_not_expired(&pki.module, T0 + 300).expect("not expired");

    // Serial numbers: positive, 16 bytes.
    for cert in [&pki.manufacturer, &pki.pers_m, &pki.module] {
        let serial = cert.x509().tbs_certificate().serial_number().as_bytes();
        assert_eq!(serial.len(), 16);
        assert_eq!(serial[0] & 0x80, 0);
    }

    // Everything re-parses from its own DER and PEM.
    for cert in [
        &pki.manufacturer,
        &pki.central,
        &pki.pers_m,
        &pki.pers_c,
        &pki.delivery,
        &pki.identity,
        &pki.module,
    ] {
        assert_eq!(&Certificate::from_der(cert.der()).expect("reparse"), cert);
        let pem = to_pem(cert).expect("pem");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(&from_pem(&pem).expect("pem parse"), cert);
    }
}

#[test]
fn tls_purposes_ride_along_on_the_client_chain() {
    use x509_cert::ext::pkix::ExtendedKeyUsage;

    let pki = build_pki(T0);
    let eku = |cert: &Certificate| -> Vec<ObjectIdentifier> {
        cert.x509()
            .tbs_certificate()
            .get_extension::<ExtendedKeyUsage>()
            .expect("decode")
            .expect("extKeyUsage present")
            .1
            .0
    };
    // Issued as the profile says, in `Role::purposes` order.
    let client = oid::KP_CLIENT_AUTH;
    let server = oid::KP_SERVER_AUTH;
    assert_eq!(eku(&pki.manufacturer), [oid::KP_MANUFACTURER]);
    assert_eq!(eku(&pki.central), [server, client, oid::KP_CENTRAL]);
    assert_eq!(eku(&pki.pers_m), [client, oid::KP_PERSONALIZER]);
    assert_eq!(eku(&pki.pers_c), [client, oid::KP_PERSONALIZER]);
    assert_eq!(eku(&pki.delivery), [server, client, oid::KP_CENTRAL]);
    assert_eq!(eku(&pki.identity), [oid::KP_MODULE_IDENTITY]);
    assert_eq!(eku(&pki.module), [client, oid::KP_MODULE]);

    // The parser accepts exactly those sets, in any order; the Imprint purpose decides the role.
    let accepted = [
        (Role::Central, vec![oid::KP_CENTRAL, client, server]),
        (Role::Personalizer, vec![oid::KP_PERSONALIZER, client]),
        (Role::CentralDelivery, vec![client, oid::KP_CENTRAL, server]),
        (Role::ModuleKey, vec![oid::KP_MODULE, client]),
    ];
    for (role, purposes) in accepted {
        let der = craft_with_purposes(&pki, role, purposes.clone());
        let cert = Certificate::from_der(&der)
            .unwrap_or_else(|err| panic!("{role} with {purposes:?}: {err}"));
        assert_eq!(cert.role(), role, "{purposes:?}");
    }

    // Anything else is refused: a missing or extra TLS purpose, a duplicate, a foreign purpose.
    let foreign = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4");
    let refused = [
        (Role::Central, vec![oid::KP_CENTRAL]),
        (Role::Central, vec![client, oid::KP_CENTRAL]),
        (Role::Central, vec![server, oid::KP_CENTRAL]),
        (Role::Central, vec![server, client, client, oid::KP_CENTRAL]),
        (Role::Central, vec![server, server, client, oid::KP_CENTRAL]),
        (
            Role::Central,
            vec![server, client, oid::KP_CENTRAL, foreign],
        ),
        (Role::Central, vec![server, client]),
        (Role::Personalizer, vec![oid::KP_PERSONALIZER]),
        (
            Role::Personalizer,
            vec![server, client, oid::KP_PERSONALIZER],
        ),
        (
            Role::Personalizer,
            vec![client, oid::KP_PERSONALIZER, foreign],
        ),
        (Role::Personalizer, vec![client]),
        (Role::CentralDelivery, vec![oid::KP_CENTRAL]),
        (Role::CentralDelivery, vec![client, oid::KP_CENTRAL]),
        (Role::CentralDelivery, vec![server, oid::KP_CENTRAL]),
        (Role::ModuleKey, vec![server, client, oid::KP_MODULE]),
    ];
    for (role, purposes) in refused {
        let der = craft_with_purposes(&pki, role, purposes.clone());
        assert!(
            matches!(
                Certificate::from_der(&der),
                Err(PkiError::MalformedExtension(_))
            ),
            "{role} with {purposes:?}: {:?}",
            Certificate::from_der(&der)
        );
    }

    // The manufacturer root and identity certificates stay off the TLS chain: no TLS purpose.
    for purposes in [
        vec![client, oid::KP_MANUFACTURER],
        vec![server, client, oid::KP_MANUFACTURER],
    ] {
        let mut exts = issue::role_extensions(Role::Manufacturer, &point(&pki.m_key), None, None)
            .expect("exts");
        let i = ext_index(&exts, oid::EXT_KEY_USAGE);
        exts[i] = issue::extension(
            oid::EXT_KEY_USAGE,
            false,
            &x509_cert::ext::pkix::ExtendedKeyUsage(purposes.clone()),
        )
        .expect("ext");
        let name = subject_of(&pki.manufacturer);
        let der = issue::build_der(
            name.clone(),
            name,
            issue::spki_from_point(&point(&pki.m_key)).expect("spki"),
            v(pki.t0, pki.t0 + 30 * YEAR),
            exts,
            &pki.m_key,
        )
        .expect("build");
        assert!(
            matches!(
                Certificate::from_der(&der),
                Err(PkiError::MalformedExtension(_))
            ),
            "manufacturer with {purposes:?}"
        );
    }
}

#[test]
fn central_delivery_can_stand_in_for_central_root() {
    let pki = build_pki(T0);
    // A personalizer certificate issued by the central root, nested within the delivery cert.
    let other_unit = key();
    let csr = CertificateRequest::new("Imprint Personalization Unit 8", &other_unit).expect("csr");
    let pers2 = personalizer_cert(
        IssuerKey {
            cert: &pki.central,
            key: &pki.c_key,
        },
        &csr,
        v(T0 + 300, T0 + 5 * YEAR),
    )
    .expect("pers2");
    // Path: [P (trusted)] -> CD -> P2 -> module key: CD has one CA (P2) below it.
    verify_issued_by(&pers2, &pki.delivery, 1).expect("P2 by CD");
    assert_eq!(
        verify_issued_by(&pers2, &pki.delivery, 2),
        Err(PkiError::PathLengthExceeded)
    );
    // The central system certified the unit before the unit issued the delivery
    // certificate: no nesting is required below a delivery certificate.
    verify_issued_by(&pki.pers_c, &pki.delivery, 1).expect("P by C under CD");
}

#[test]
fn certificate_request_roundtrip_and_tamper() {
    let k = key();
    let csr = CertificateRequest::new("Unit, with \"quotes\" + comma", &k).expect("csr");
    assert_eq!(csr.common_name(), "Unit, with \"quotes\" + comma");
    assert_eq!(csr.public_key(), k.verifying_key());
    let again = CertificateRequest::from_der(&csr.to_der()).expect("reparse");
    assert_eq!(again.common_name(), csr.common_name());

    // Flip the last byte of the signature (s value).
    let mut der = csr.to_der();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert!(matches!(
        CertificateRequest::from_der(&der),
        Err(IssueError::Pki(PkiError::BadSignature))
    ));
    // Flip a byte of the subject CN.
    let tampered = replace_once(&csr.to_der(), b"Unit", b"Unix");
    assert!(matches!(
        CertificateRequest::from_der(&tampered),
        Err(IssueError::Pki(PkiError::BadSignature))
    ));
    // Trailing data.
    let mut der = csr.to_der();
    der.push(0);
    assert!(matches!(
        CertificateRequest::from_der(&der),
        Err(IssueError::Pki(PkiError::TrailingData))
    ));
    // Wrong PEM label.
    let pki = build_pki(T0);
    assert!(matches!(
        CertificateRequest::from_pem(&to_pem(&pki.module).expect("pem")),
        Err(IssueError::PemLabel { .. })
    ));
    // Invalid common names.
    assert!(matches!(
        CertificateRequest::new("", &k),
        Err(IssueError::InvalidCommonName(_))
    ));
    assert!(matches!(
        CertificateRequest::new(&"x".repeat(65), &k),
        Err(IssueError::InvalidCommonName(_))
    ));
    assert!(matches!(
        CertificateRequest::new("a\nb", &k),
        Err(IssueError::InvalidCommonName(_))
    ));
}

#[test]
fn pem_bundle() {
    let pki = build_pki(T0);
    let bundle = to_pem_bundle(&[
        pki.module.clone(),
        pki.pers_m.clone(),
        pki.manufacturer.clone(),
    ])
    .expect("bundle");
    let with_text = format!("leading text\n{bundle}\ntrailing text\n");
    let certs = certificates_from_pem_bundle(&with_text).expect("parse bundle");
    assert_eq!(certs, vec![pki.module, pki.pers_m, pki.manufacturer]);

    assert!(matches!(
        certificates_from_pem_bundle("nothing here"),
        Err(IssueError::NoCertificate)
    ));
    let csr = CertificateRequest::new("unit", &key()).expect("csr");
    let mixed = format!("{bundle}{}", csr.to_pem().expect("pem"));
    assert!(matches!(
        certificates_from_pem_bundle(&mixed),
        Err(IssueError::PemLabel { .. })
    ));
    let truncated = bundle.get(..bundle.len() - 10).expect("slice");
    assert!(certificates_from_pem_bundle(truncated).is_err());
}

// --- negative: signatures and encoding ------------------------------------------------------

#[test]
fn wrong_issuer_key() {
    let pki = build_pki(T0);
    // Signed by another key while claiming the personalizer as issuer (name and AKI).
    let rogue = key();
    let mod_point = point(&pki.mod_key);
    let exts = issue::role_extensions(
        Role::ModuleKey,
        &mod_point,
        Some(&point(&pki.p_key)),
        Some(&NONCE),
    )
    .expect("exts");
    let der = issue::build_der(
        issue::module_name(&pki.serial).expect("name"),
        subject_of(&pki.pers_m),
        issue::spki_from_point(&mod_point).expect("spki"),
        v(T0 + 300, T0 + YEAR),
        exts,
        &rogue,
    )
    .expect("build");
    let forged = Certificate::from_der(&der).expect("structurally fine");
    assert_eq!(
        verify_issued_by(&forged, &pki.pers_m, 0),
        Err(PkiError::BadSignature)
    );

    // A different personalizer with the same name: key identifier mismatch.
    let other = key();
    let csr = CertificateRequest::new("Imprint Personalization Unit 7", &other).expect("csr");
    let other_pers = personalizer_cert(
        IssuerKey {
            cert: &pki.manufacturer,
            key: &pki.m_key,
        },
        &csr,
        v(T0 + 100, T0 + 20 * YEAR),
    )
    .expect("other personalizer");
    assert_eq!(
        verify_issued_by(&pki.module, &other_pers, 0),
        Err(PkiError::IssuerMismatch)
    );
    // Issuer name mismatch.
    assert_eq!(
        verify_issued_by(&pki.pers_m, &pki.central, 0),
        Err(PkiError::IssuerMismatch)
    );

    // Issuing with a key that does not belong to the issuer certificate.
    let err = module_cert(
        IssuerKey {
            cert: &pki.pers_m,
            key: &pki.m_key,
        },
        &pki.serial,
        &point(&pki.mod_key),
        &NONCE,
        v(T0 + 300, T0 + YEAR),
    )
    .expect_err("key mismatch");
    assert!(matches!(err, IssueError::IssuerKeyMismatch));
}

#[test]
fn tampered_signature_byte() {
    let pki = build_pki(T0);
    let mut der = pki.module.der().to_vec();
    let last = der.len() - 1; // last byte of s
    der[last] ^= 0x01;
    let cert = Certificate::from_der(&der).expect("still well-formed");
    assert_eq!(
        verify_issued_by(&cert, &pki.pers_m, 0),
        Err(PkiError::BadSignature)
    );

    let mut der = pki.manufacturer.der().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x80;
    let cert = Certificate::from_der(&der).expect("still well-formed");
    assert!(!cert.is_self_signed());
    assert_eq!(
        verify_self_signed_root(&cert, Role::Manufacturer),
        Err(PkiError::BadSignature)
    );
}

#[test]
fn tampered_tbs_byte() {
    let pki = build_pki(T0);
    let serial = pki
        .module
        .x509()
        .tbs_certificate()
        .serial_number()
        .as_bytes()
        .to_vec();
    let mut changed = serial.clone();
    *changed.last_mut().expect("non-empty") ^= 0x01;
    let der = replace_once(pki.module.der(), &serial, &changed);
    let cert = Certificate::from_der(&der).expect("still well-formed");
    assert_eq!(
        verify_issued_by(&cert, &pki.pers_m, 0),
        Err(PkiError::BadSignature)
    );
}

#[test]
fn trailing_byte_and_truncation() {
    let pki = build_pki(T0);
    let mut der = pki.module.der().to_vec();
    der.push(0x00);
    assert_eq!(Certificate::from_der(&der), Err(PkiError::TrailingData));
    let der = pki.module.der();
    assert!(matches!(
        Certificate::from_der(&der[..der.len() - 1]),
        Err(PkiError::Der(_))
    ));
    assert!(matches!(Certificate::from_der(&[]), Err(PkiError::Der(_))));
}

#[test]
fn non_minimal_length_rejected() {
    let pki = build_pki(T0);
    // signatureAlgorithm with a long-form length (30 81 0a ...), re-signed.
    let mut alg = vec![0x30, 0x81, 0x0a];
    alg.extend_from_slice(&ECDSA_SHA384_ALG_DER[2..]);
    let der = assemble(pki.module.tbs_der(), &alg, &pki.p_key);
    assert!(matches!(Certificate::from_der(&der), Err(PkiError::Der(_))));
    // Control: the same assembly with the canonical algorithm parses and verifies.
    let der = assemble(pki.module.tbs_der(), &ECDSA_SHA384_ALG_DER, &pki.p_key);
    let cert = Certificate::from_der(&der).expect("canonical");
    verify_issued_by(&cert, &pki.pers_m, 0).expect("verifies");
}

#[test]
fn non_strict_signature_encoding_rejected() {
    let pki = build_pki(T0);
    let sig: p384::ecdsa::Signature = pki.p_key.sign(pki.module.tbs_der());
    let (r, s) = sig.split_bytes();
    let minimal = |x: &[u8]| {
        let mut v: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        v
    };
    // Control: the minimal encoding is accepted.
    let mut seq = tlv(0x02, &minimal(&r));
    seq.extend(tlv(0x02, &minimal(&s)));
    let mut bits = vec![0u8];
    bits.extend(tlv(0x30, &seq));
    let mut content = pki.module.tbs_der().to_vec();
    content.extend_from_slice(&ECDSA_SHA384_ALG_DER);
    content.extend(tlv(0x03, &bits));
    let cert = Certificate::from_der(&tlv(0x30, &content)).expect("minimal encoding");
    verify_issued_by(&cert, &pki.pers_m, 0).expect("verifies");
    // Re-encode r with a superfluous leading zero byte.
    let mut r_padded = vec![0u8];
    r_padded.extend(minimal(&r));
    let mut seq = tlv(0x02, &r_padded);
    seq.extend(tlv(0x02, &minimal(&s)));
    let mut bits = vec![0u8];
    bits.extend(tlv(0x30, &seq));
    let mut content = pki.module.tbs_der().to_vec();
    content.extend_from_slice(&ECDSA_SHA384_ALG_DER);
    content.extend(tlv(0x03, &bits));
    let der = tlv(0x30, &content);
    assert_eq!(
        Certificate::from_der(&der),
        Err(PkiError::InvalidSignatureEncoding)
    );
}

/// Re-assembles the TBS of `cert` from its parts, optionally with a hand-encoded validity or
/// extension list, and re-signs it.
fn rebuild_tbs(
    cert: &Certificate,
    validity_der: Option<Vec<u8>>,
    extensions_der: Option<Vec<u8>>,
    key: &SigningKey,
) -> Vec<u8> {
    use der::Encode;
    let tbs = cert.x509().tbs_certificate();
    let mut content = vec![0xa0, 0x03, 0x02, 0x01, 0x02];
    content.extend(tbs.serial_number().to_der().expect("serial"));
    content.extend_from_slice(&ECDSA_SHA384_ALG_DER);
    content.extend(tbs.issuer().to_der().expect("issuer"));
    content.extend(validity_der.unwrap_or_else(|| tbs.validity().to_der().expect("validity")));
    content.extend(tbs.subject().to_der().expect("subject"));
    content.extend(tbs.subject_public_key_info().to_der().expect("spki"));
    let exts = extensions_der.unwrap_or_else(|| {
        tbs.extensions()
            .expect("extensions")
            .to_der()
            .expect("exts")
    });
    content.extend(tlv(0xa3, &exts));
    assemble(&tlv(0x30, &content), &ECDSA_SHA384_ALG_DER, key)
}

#[test]
fn non_canonical_encodings_rejected() {
    use der::Encode;
    let pki = build_pki(T0);
    // Control: rebuilding from unmodified parts reproduces a valid certificate.
    let der = rebuild_tbs(&pki.module, None, None, &pki.p_key);
    let cert = Certificate::from_der(&der).expect("rebuilt");
    verify_issued_by(&cert, &pki.pers_m, 0).expect("verifies");

    // GeneralizedTime for dates before 2050 (RFC 5280 requires UTCTime): the der crate decodes
    // it, our canonical re-encoding check rejects it.
    let mut validity = tlv(0x18, b"20231114221820Z"); // T0 + 300
    validity.extend(tlv(0x18, b"20241113221320Z"));
    let der = rebuild_tbs(&pki.module, Some(tlv(0x30, &validity)), None, &pki.p_key);
    assert_eq!(
        Certificate::from_der(&der),
        Err(PkiError::Malformed("non-canonical DER encoding"))
    );

    // An extension with `critical BOOLEAN FALSE` encoded explicitly (DER omits DEFAULT values).
    let exts = pki
        .module
        .x509()
        .tbs_certificate()
        .extensions()
        .expect("exts");
    let mut list = Vec::new();
    for ext in exts {
        if ext.extn_id == oid::NONCE_EXTENSION {
            let mut inner = ext.extn_id.to_der().expect("oid");
            inner.extend_from_slice(&[0x01, 0x01, 0x00]);
            inner.extend(ext.extn_value.to_der().expect("value"));
            list.extend(tlv(0x30, &inner));
        } else {
            list.extend(ext.to_der().expect("ext"));
        }
    }
    let der = rebuild_tbs(&pki.module, None, Some(tlv(0x30, &list)), &pki.p_key);
    assert_eq!(
        Certificate::from_der(&der),
        Err(PkiError::Malformed("non-canonical DER encoding"))
    );

    // keyUsage BIT STRING with a superfluous trailing zero byte inside an extension value.
    let mut list = Vec::new();
    for ext in exts {
        if ext.extn_id == oid::KEY_USAGE {
            let mut inner = ext.extn_id.to_der().expect("oid");
            inner.extend_from_slice(&[0x01, 0x01, 0xff]);
            inner.extend(tlv(0x04, &[0x03, 0x03, 0x00, 0x80, 0x00]));
            list.extend(tlv(0x30, &inner));
        } else {
            list.extend(ext.to_der().expect("ext"));
        }
    }
    let der = rebuild_tbs(&pki.module, None, Some(tlv(0x30, &list)), &pki.p_key);
    assert!(matches!(
        Certificate::from_der(&der),
        Err(PkiError::MalformedExtension(_))
    ));
}

#[test]
fn signature_algorithm_checks() {
    let pki = build_pki(T0);
    let sha256_alg: [u8; 12] = [
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    // Outer algorithm differs from the TBS algorithm.
    let der = assemble(pki.module.tbs_der(), &sha256_alg, &pki.p_key);
    assert_eq!(
        Certificate::from_der(&der),
        Err(PkiError::UnsupportedSignatureAlgorithm)
    );
    // Both say ecdsa-with-SHA256.
    let tbs = replace_once(pki.module.tbs_der(), &ECDSA_SHA384_ALG_DER, &sha256_alg);
    let der = assemble(&tbs, &sha256_alg, &pki.p_key);
    assert_eq!(
        Certificate::from_der(&der),
        Err(PkiError::UnsupportedSignatureAlgorithm)
    );
}

#[test]
fn version_must_be_v3() {
    let pki = build_pki(T0);
    let der = edit_tbs_and_resign(
        &pki.module,
        &[0xa0, 0x03, 0x02, 0x01, 0x02],
        &[0xa0, 0x03, 0x02, 0x01, 0x01],
        &pki.p_key,
    );
    assert_eq!(
        Certificate::from_der(&der),
        Err(PkiError::UnsupportedVersion)
    );
}

// --- negative: extensions -------------------------------------------------------------------

#[test]
fn duplicate_extension() {
    let pki = build_pki(T0);
    let der = craft_module_key(&pki, |exts| {
        let ski = exts[ext_index(exts, oid::SUBJECT_KEY_IDENTIFIER)].clone();
        exts.push(ski);
    });
    assert_eq!(
        Certificate::from_der(&der),
        Err(PkiError::DuplicateExtension)
    );
}

#[test]
fn unknown_extensions() {
    let pki = build_pki(T0);
    let unknown = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.99.1");
    let value = OctetString::new(vec![0x05, 0x00]).expect("value");
    let der = craft_module_key(&pki, |exts| {
        exts.push(Extension {
            extn_id: unknown,
            critical: true,
            extn_value: value.clone(),
        })
    });
    assert_eq!(
        Certificate::from_der(&der),
        Err(PkiError::UnknownCriticalExtension)
    );
    // The same extension, non-critical, is ignored.
    let der = craft_module_key(&pki, |exts| {
        exts.push(Extension {
            extn_id: unknown,
            critical: false,
            extn_value: value.clone(),
        })
    });
    let cert = Certificate::from_der(&der).expect("non-critical unknown is fine");
    verify_issued_by(&cert, &pki.pers_m, 0).expect("verifies");
}

#[test]
fn nonce_checks() {
    let pki = build_pki(T0);
    let der = craft_module_key(&pki, |exts| {
        exts.remove(ext_index(exts, oid::NONCE_EXTENSION));
    });
    assert_eq!(Certificate::from_der(&der), Err(PkiError::NonceMissing));

    let der = craft_module_key(&pki, |exts| {
        let i = ext_index(exts, oid::NONCE_EXTENSION);
        exts[i] = issue::extension(
            oid::NONCE_EXTENSION,
            false,
            &OctetString::new(vec![7u8; 15]).expect("os"),
        )
        .expect("ext");
    });
    assert!(matches!(
        Certificate::from_der(&der),
        Err(PkiError::MalformedExtension(_))
    ));

    let der = craft_module_key(&pki, |exts| {
        let i = ext_index(exts, oid::NONCE_EXTENSION);
        exts[i].critical = true;
    });
    assert!(matches!(
        Certificate::from_der(&der),
        Err(PkiError::MalformedExtension(_))
    ));

    let mut other = NONCE;
    other[0] ^= 1;
    assert_eq!(
        check_nonce(&pki.module, &other),
        Err(PkiError::NonceMismatch)
    );
    assert_eq!(
        check_nonce(&pki.identity, &NONCE),
        Err(PkiError::NonceMissing)
    );
}

#[test]
fn role_profile_violations() {
    let pki = build_pki(T0);

    // keyUsage with an extra bit.
    let der = craft_module_key(&pki, |exts| {
        let i = ext_index(exts, oid::KEY_USAGE);
        exts[i] = issue::extension(
            oid::KEY_USAGE,
            true,
            &x509_cert::ext::pkix::KeyUsage(
                x509_cert::ext::pkix::KeyUsages::DigitalSignature
                    | x509_cert::ext::pkix::KeyUsages::KeyCertSign,
            ),
        )
        .expect("ext");
    });
    assert!(matches!(
        Certificate::from_der(&der),
        Err(PkiError::ProfileViolation(_))
    ));

    // A module key claiming to be a CA.
    let der = craft_module_key(&pki, |exts| {
        let i = ext_index(exts, oid::BASIC_CONSTRAINTS);
        exts[i] = issue::extension(
            oid::BASIC_CONSTRAINTS,
            true,
            &x509_cert::ext::pkix::BasicConstraints {
                ca: true,
                path_len_constraint: None,
            },
        )
        .expect("ext");
    });
    assert!(matches!(
        Certificate::from_der(&der),
        Err(PkiError::ProfileViolation(_))
    ));

    // basicConstraints not critical.
    let der = craft_module_key(&pki, |exts| {
        let i = ext_index(exts, oid::BASIC_CONSTRAINTS);
        exts[i].critical = false;
    });
    assert!(matches!(
        Certificate::from_der(&der),
        Err(PkiError::MalformedExtension(_))
    ));

    // No extKeyUsage / two roles / missing clientAuth / foreign purpose.
    let der = craft_module_key(&pki, |exts| {
        exts.remove(ext_index(exts, oid::EXT_KEY_USAGE));
    });
    assert!(matches!(
        Certificate::from_der(&der),
        Err(PkiError::MissingExtension(_))
    ));
    for purposes in [
        vec![oid::KP_CLIENT_AUTH, oid::KP_MODULE, oid::KP_PERSONALIZER],
        vec![oid::KP_MODULE],
        vec![oid::KP_CLIENT_AUTH, oid::KP_MODULE, oid::KP_CLIENT_AUTH],
        vec![oid::KP_CLIENT_AUTH, oid::KP_MODULE, oid::KP_SERVER_AUTH],
        vec![
            oid::KP_CLIENT_AUTH,
            oid::KP_MODULE,
            ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4"),
        ],
    ] {
        let der = craft_module_key(&pki, |exts| {
            let i = ext_index(exts, oid::EXT_KEY_USAGE);
            exts[i] = issue::extension(
                oid::EXT_KEY_USAGE,
                false,
                &x509_cert::ext::pkix::ExtendedKeyUsage(purposes),
            )
            .expect("ext");
        });
        assert!(
            matches!(
                Certificate::from_der(&der),
                Err(PkiError::MalformedExtension(_))
            ),
            "{:?}",
            Certificate::from_der(&der)
        );
    }

    // Missing authorityKeyIdentifier; wrong subjectKeyIdentifier.
    let der = craft_module_key(&pki, |exts| {
        exts.remove(ext_index(exts, oid::AUTHORITY_KEY_IDENTIFIER));
    });
    assert_eq!(
        Certificate::from_der(&der),
        Err(PkiError::MissingExtension("authorityKeyIdentifier"))
    );
    let der = craft_module_key(&pki, |exts| {
        let i = ext_index(exts, oid::SUBJECT_KEY_IDENTIFIER);
        exts[i] = issue::extension(
            oid::SUBJECT_KEY_IDENTIFIER,
            false,
            &x509_cert::ext::pkix::SubjectKeyIdentifier(
                OctetString::new(vec![1u8; 20]).expect("os"),
            ),
        )
        .expect("ext");
    });
    assert!(matches!(
        Certificate::from_der(&der),
        Err(PkiError::MalformedExtension(_))
    ));

    // Identity certificate whose serial does not derive from its key: edit one serial hex
    // character in both CN and serialNumber and re-sign.
    let serial = pki.serial.as_bytes();
    let mut changed = serial.to_vec();
    changed[0] = if changed[0] == b'0' { b'1' } else { b'0' };
    let tbs = replace_once(pki.identity.tbs_der(), serial, &changed);
    let tbs = replace_once(&tbs, serial, &changed);
    let der = assemble(&tbs, &ECDSA_SHA384_ALG_DER, &pki.m_key);
    assert_eq!(Certificate::from_der(&der), Err(PkiError::SerialMismatch));

    // Module subject with an uppercase serial.
    let upper = pki.serial.to_uppercase();
    if upper != pki.serial {
        let tbs = replace_once(pki.module.tbs_der(), serial, upper.as_bytes());
        let tbs = replace_once(&tbs, serial, upper.as_bytes());
        let der = assemble(&tbs, &ECDSA_SHA384_ALG_DER, &pki.p_key);
        assert!(matches!(
            Certificate::from_der(&der),
            Err(PkiError::ProfileViolation(_))
        ));
    }

    // Personalizer-profile certificate that is self-issued.
    let p_point = point(&pki.p_key);
    let exts =
        issue::role_extensions(Role::Personalizer, &p_point, Some(&p_point), None).expect("exts");
    let der = issue::build_der(
        cn("self"),
        cn("self"),
        issue::spki_from_point(&p_point).expect("spki"),
        v(T0, T0 + YEAR),
        exts,
        &pki.p_key,
    )
    .expect("build");
    assert!(matches!(
        Certificate::from_der(&der),
        Err(PkiError::ProfileViolation(_))
    ));
}

// --- negative: keys -------------------------------------------------------------------------

fn craft_with_spki(pki: &Pki, spki: SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let mod_point = point(&pki.mod_key);
    let exts = issue::role_extensions(
        Role::ModuleKey,
        &mod_point,
        Some(&point(&pki.p_key)),
        Some(&NONCE),
    )
    .expect("exts");
    issue::build_der(
        issue::module_name(&pki.serial).expect("name"),
        subject_of(&pki.pers_m),
        spki,
        v(T0 + 300, T0 + YEAR),
        exts,
        &pki.p_key,
    )
    .expect("build")
}

#[test]
fn key_algorithm_checks() {
    let pki = build_pki(T0);
    let good = point(&pki.mod_key);

    // P-256 (prime256v1) named curve.
    let mut p256_point = vec![0x04];
    p256_point.extend_from_slice(&good[1..65]);
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: oid::EC_PUBLIC_KEY,
            parameters: Some(
                Any::encode_from(&ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7"))
                    .expect("any"),
            ),
        },
        subject_public_key: BitString::from_bytes(&p256_point).expect("bits"),
    };
    assert_eq!(
        Certificate::from_der(&craft_with_spki(&pki, spki)),
        Err(PkiError::UnsupportedKeyAlgorithm)
    );

    // Explicit curve parameters (an ECParameters SEQUENCE instead of a named curve).
    let explicit_params = tlv(0x30, &[0x02, 0x01, 0x01]);
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: oid::EC_PUBLIC_KEY,
            parameters: Some(Any::new(Tag::Sequence, &explicit_params[2..]).expect("any")),
        },
        subject_public_key: BitString::from_bytes(&good).expect("bits"),
    };
    assert_eq!(
        Certificate::from_der(&craft_with_spki(&pki, spki)),
        Err(PkiError::UnsupportedKeyAlgorithm)
    );

    // Parameters absent, or not EC at all.
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: oid::EC_PUBLIC_KEY,
            parameters: None,
        },
        subject_public_key: BitString::from_bytes(&good).expect("bits"),
    };
    assert_eq!(
        Certificate::from_der(&craft_with_spki(&pki, spki)),
        Err(PkiError::UnsupportedKeyAlgorithm)
    );
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.3.101.112"),
            parameters: None,
        },
        subject_public_key: BitString::from_bytes(&good[1..33]).expect("bits"),
    };
    assert_eq!(
        Certificate::from_der(&craft_with_spki(&pki, spki)),
        Err(PkiError::UnsupportedKeyAlgorithm)
    );

    // Compressed point, off-curve point.
    let compressed = pki.mod_key.verifying_key().to_sec1_point(true);
    let named = |bytes: &[u8]| SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: oid::EC_PUBLIC_KEY,
            parameters: Some(Any::encode_from(&oid::SECP384R1).expect("any")),
        },
        subject_public_key: BitString::from_bytes(bytes).expect("bits"),
    };
    assert_eq!(
        Certificate::from_der(&craft_with_spki(&pki, named(compressed.as_bytes()))),
        Err(PkiError::InvalidPublicKey)
    );
    let mut off_curve = good.clone();
    off_curve[96] ^= 0x01;
    assert_eq!(
        Certificate::from_der(&craft_with_spki(&pki, named(&off_curve))),
        Err(PkiError::InvalidPublicKey)
    );

    // The issuing side refuses such points too.
    let err = identity_cert(
        IssuerKey {
            cert: &pki.manufacturer,
            key: &pki.m_key,
        },
        compressed.as_bytes(),
        v(T0 + 300, T0 + YEAR),
    )
    .expect_err("compressed");
    assert!(matches!(err, IssueError::Pki(PkiError::InvalidPublicKey)));
}

// --- negative: roles, path length, time -----------------------------------------------------

#[test]
fn role_mismatch() {
    let pki = build_pki(T0);
    // The identity certificate used where the personalizer is required.
    assert_eq!(
        verify_issued_by(&pki.module, &pki.identity, 0),
        Err(PkiError::IssuerRoleNotAllowed {
            child: Role::ModuleKey,
            issuer: Role::ModuleIdentity,
        })
    );
    assert_eq!(
        require_role(&pki.identity, Role::Personalizer),
        Err(PkiError::WrongRole {
            expected: Role::Personalizer
        })
    );
    require_role(&pki.pers_m, Role::Personalizer).expect("personalizer");
    // The central root may not issue module identities (even though it is a CA).
    assert!(matches!(
        verify_issued_by(&pki.identity, &pki.central, 0),
        Err(PkiError::IssuerRoleNotAllowed { .. })
    ));
    assert_eq!(
        verify_self_signed_root(&pki.identity, Role::Manufacturer),
        Err(PkiError::WrongRole {
            expected: Role::Manufacturer
        })
    );
    assert_eq!(
        verify_self_signed_root(&pki.central, Role::Manufacturer),
        Err(PkiError::WrongRole {
            expected: Role::Manufacturer
        })
    );

    // Issue side: the identity key cannot issue module keys, a personalizer cannot issue
    // identities, personalizer certificates only come from roots.
    let err = module_cert(
        IssuerKey {
            cert: &pki.identity,
            key: &pki.id_key,
        },
        &pki.serial,
        &point(&pki.mod_key),
        &NONCE,
        v(T0 + 300, T0 + YEAR),
    )
    .expect_err("identity as issuer");
    assert!(matches!(
        err,
        IssueError::WrongIssuerRole {
            found: Role::ModuleIdentity,
            ..
        }
    ));
    let err = identity_cert(
        IssuerKey {
            cert: &pki.pers_m,
            key: &pki.p_key,
        },
        &point(&pki.id_key),
        v(T0 + 300, T0 + YEAR),
    )
    .expect_err("personalizer as identity issuer");
    assert!(matches!(err, IssueError::WrongIssuerRole { .. }));
    let csr = CertificateRequest::new("unit", &key()).expect("csr");
    let err = personalizer_cert(
        IssuerKey {
            cert: &pki.pers_m,
            key: &pki.p_key,
        },
        &csr,
        v(T0 + 300, T0 + YEAR),
    )
    .expect_err("personalizer as personalizer issuer");
    assert!(matches!(err, IssueError::WrongIssuerRole { .. }));
    let err = self_signed_root(Role::Personalizer, "x", &key(), v(T0, T0 + YEAR))
        .expect_err("not a root role");
    assert!(matches!(err, IssueError::NotARootRole(Role::Personalizer)));
    let err = module_cert(
        IssuerKey {
            cert: &pki.pers_m,
            key: &pki.p_key,
        },
        "ABCDEF0123456789",
        &point(&pki.mod_key),
        &NONCE,
        v(T0 + 300, T0 + YEAR),
    )
    .expect_err("uppercase serial");
    assert!(matches!(err, IssueError::InvalidModuleSerial));
    let err = central_delivery_cert(
        IssuerKey {
            cert: &pki.pers_m,
            key: &pki.p_key,
        },
        &pki.manufacturer,
        v(T0 + 300, T0 + YEAR),
    )
    .expect_err("manufacturer is not the central root");
    assert!(matches!(
        err,
        IssueError::Pki(PkiError::WrongRole {
            expected: Role::Central
        })
    ));
}

#[test]
fn path_length_violation() {
    let pki = build_pki(T0);
    // The personalizer (pathLen 0) cannot have a CA below it.
    assert_eq!(
        verify_issued_by(&pki.module, &pki.pers_m, 1),
        Err(PkiError::PathLengthExceeded)
    );
    assert_eq!(
        verify_issued_by(&pki.delivery, &pki.pers_m, 1),
        Err(PkiError::PathLengthExceeded)
    );
    // Roots have no path length constraint.
    verify_issued_by(&pki.pers_m, &pki.manufacturer, u8::MAX).expect("no constraint");
}

#[test]
fn child_validity_outside_issuer() {
    let pki = build_pki(T0);
    // Hand-made: module key valid past the personalizer's notAfter.
    let mod_point = point(&pki.mod_key);
    let exts = issue::role_extensions(
        Role::ModuleKey,
        &mod_point,
        Some(&point(&pki.p_key)),
        Some(&NONCE),
    )
    .expect("exts");
    for validity in [
        v(T0 + 300, T0 + 21 * YEAR),
        v(T0 + 50, T0 + YEAR), // starts before the personalizer
    ] {
        let der = issue::build_der(
            issue::module_name(&pki.serial).expect("name"),
            subject_of(&pki.pers_m),
            issue::spki_from_point(&mod_point).expect("spki"),
            validity,
            exts.clone(),
            &pki.p_key,
        )
        .expect("build");
        let cert = Certificate::from_der(&der).expect("parses");
        assert_eq!(
            verify_issued_by(&cert, &pki.pers_m, 0),
            Err(PkiError::NotYetValidForIssuer)
        );
    }
    // The issuing side refuses, and clamping fixes it.
    let too_long = v(T0 + 300, T0 + 21 * YEAR);
    let issuer = IssuerKey {
        cert: &pki.pers_m,
        key: &pki.p_key,
    };
    let err = module_cert(issuer, &pki.serial, &mod_point, &NONCE, too_long)
        .expect_err("outside issuer validity");
    assert!(matches!(
        err,
        IssueError::Pki(PkiError::NotYetValidForIssuer)
    ));
    let clamped = too_long.clamped_to(&pki.pers_m).expect("clamp");
    let cert = module_cert(issuer, &pki.serial, &mod_point, &NONCE, clamped).expect("clamped");
    assert_eq!(cert.not_after_unix(), pki.pers_m.not_after_unix());

    // Invalid validity periods.
    assert!(matches!(
        Validity::new(T0, T0),
        Err(IssueError::Pki(PkiError::InvalidValidity))
    ));
    // notBefore == notAfter by hand.
    let der = issue::build_der(
        issue::module_name(&pki.serial).expect("name"),
        subject_of(&pki.pers_m),
        issue::spki_from_point(&mod_point).expect("spki"),
        Validity {
            not_before_unix: T0 + YEAR,
            not_after_unix: T0 + 300,
        },
        exts,
        &pki.p_key,
    )
    .expect("build");
    assert_eq!(Certificate::from_der(&der), Err(PkiError::InvalidValidity));
}

#[test]
fn expired_against_watermark() {
    let pki = build_pki(T0);
    let not_after = pki.module.not_after_unix();
    check_not_expired(&pki.module, not_after).expect("boundary is fine");
    check_not_expired(&pki.module, 0).expect("zero watermark");
    assert_eq!(
        check_not_expired(&pki.module, not_after + 1),
        Err(PkiError::Expired)
    );
    assert_eq!(
        check_not_expired(&pki.pers_m, u64::MAX),
        Err(PkiError::Expired)
    );
}

#[test]
fn times_after_2049_use_generalized_time() {
    let m_key = key();
    let root = self_signed_root(
        Role::Manufacturer,
        "long-lived",
        &m_key,
        v(T0, 4_102_444_800 + YEAR), // 2131
    )
    .expect("root");
    assert_eq!(root.not_after_unix(), 4_102_444_800 + YEAR);
    assert!(root.der().windows(2).any(|w| w == [0x18, 0x0f])); // GeneralizedTime
}

// --- fuzz-style -----------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_der_never_panics() {
    let pki = build_pki(T0);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut parsed = 0usize;
    for (original, issuer) in [
        (&pki.module, &pki.pers_m),
        (&pki.identity, &pki.manufacturer),
        (&pki.delivery, &pki.pers_m),
    ] {
        let original_der = original.der();
        for _ in 0..2000 {
            let mut der = original_der.to_vec();
            for _ in 0..1 + rng.below(4) {
                match rng.below(6) {
                    0 => {
                        let i = rng.below(der.len());
                        der[i] ^= 1 << rng.below(8);
                    }
                    1 => {
                        let i = rng.below(der.len());
                        der[i] = rng.next() as u8;
                    }
                    2 if der.len() > 1 => {
                        let i = rng.below(der.len());
                        der.remove(i);
                    }
                    3 => {
                        let i = rng.below(der.len() + 1);
                        der.insert(i, rng.next() as u8);
                    }
                    4 => {
                        let len = rng.below(der.len() + 1);
                        der.truncate(len);
                    }
                    _ => {
                        // Mutate a length-ish byte: small values near the start of a TLV.
                        let i = rng.below(der.len());
                        der[i] = der[i].wrapping_add(1);
                    }
                }
                if der.is_empty() {
                    der.push(0x30);
                }
            }
            if let Ok(cert) = Certificate::from_der(&der) {
                parsed += 1;
                // Whatever still parses must not verify unless it is the original.
                if verify_issued_by(&cert, issuer, 0).is_ok() {
                    assert_eq!(cert.der(), original_der);
                }
                let _ = cert.is_self_signed();
            }
        }
    }
    eprintln!("mutated certificates that still parsed: {parsed}");
}

// --- interoperability -----------------------------------------------------------------------

#[test]
fn openssl_verifies_chain() {
    let openssl_present = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !openssl_present {
        eprintln!("openssl binary not found; skipping openssl_verifies_chain");
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let pki = build_pki(now - 3600);
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, cert: &Certificate| {
        std::fs::write(dir.path().join(name), to_pem(cert).expect("pem")).expect("write");
    };
    write("manufacturer.pem", &pki.manufacturer);
    write("central.pem", &pki.central);
    write("personalizer_by_central.pem", &pki.pers_c);
    write("personalizer_by_manufacturer.pem", &pki.pers_m);
    write("delivery.pem", &pki.delivery);
    write("identity.pem", &pki.identity);
    write("module.pem", &pki.module);

    let verify = |args: &[&str]| {
        let out = Command::new("openssl")
            .arg("verify")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("run openssl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success() && stdout.trim_end().ends_with(": OK"),
            "openssl verify {args:?} failed:\nstdout: {stdout}\nstderr: {stderr}"
        );
    };
    verify(&[
        "-CAfile",
        "central.pem",
        "-untrusted",
        "personalizer_by_central.pem",
        "module.pem",
    ]);
    // OpenSSL's TLS client purpose check holds on the whole central chain.
    verify(&[
        "-purpose",
        "sslclient",
        "-CAfile",
        "central.pem",
        "-untrusted",
        "personalizer_by_central.pem",
        "module.pem",
    ]);
    verify(&["-CAfile", "manufacturer.pem", "identity.pem"]);
    verify(&[
        "-CAfile",
        "manufacturer.pem",
        "-untrusted",
        "personalizer_by_manufacturer.pem",
        "module.pem",
    ]);
    verify(&[
        "-CAfile",
        "manufacturer.pem",
        "-untrusted",
        "personalizer_by_manufacturer.pem",
        "delivery.pem",
    ]);
    // OpenSSL also accepts our CSR.
    let csr = CertificateRequest::new("Imprint Personalization Unit 9", &key()).expect("csr");
    std::fs::write(dir.path().join("unit.csr"), csr.to_pem().expect("pem")).expect("write");
    let out = Command::new("openssl")
        .args(["req", "-verify", "-noout", "-in", "unit.csr"])
        .current_dir(dir.path())
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl req -verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And we accept a P-384 / SHA-384 request made by OpenSSL.
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-sha384",
            "-nodes",
            "-subj",
            "/CN=OpenSSL Unit",
            "-keyout",
            "openssl_unit.key",
            "-out",
            "openssl_unit.csr",
        ])
        .current_dir(dir.path())
        .output()
        .expect("run openssl req -new");
    assert!(
        out.status.success(),
        "openssl req -new failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read_to_string(dir.path().join("openssl_unit.csr")).expect("read csr");
    let csr = CertificateRequest::from_pem(&pem).expect("openssl CSR accepted");
    assert_eq!(csr.common_name(), "OpenSSL Unit");
}
