//! Unit tests of the TLS endpoint: its certificate, the client-chain
//! verifier, and whole handshakes between rustls peers in memory.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use imprint_apdu::pki::issue::{self, IssuerKey, Validity};
use imprint_apdu::pki::{self, Certificate, Role};
use imprint_tests::{Pki, random_key};
use p384::ecdsa::SigningKey;
use p384::ecdsa::signature::Verifier;
use p384::pkcs8::EncodePrivateKey;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};

use super::*;
use crate::CentralAuthority;

/// `pki`'s central system, opened from a directory the way the server does.
fn central_of(pki: &Pki, dir: &Path) -> CentralAuthority {
    keyfile::create_private_dir(dir).expect("dir");
    keyfile::write_signing_key(&dir.join(crate::KEY_FILE), &pki.central_key).expect("key");
    std::fs::write(
        dir.join(crate::CERT_FILE),
        issue::to_pem(&pki.central_root).expect("pem"),
    )
    .expect("cert");
    CentralAuthority::open(dir).expect("open central")
}

/// A module key certificate issued by `unit_cert` (with `unit_key`).
fn module_cert(unit_cert: &Certificate, unit_key: &SigningKey) -> (SigningKey, Certificate) {
    let key = random_key();
    let point = key.verifying_key().to_sec1_point(false);
    let serial = pki::serial_hex(&pki::serial_from_public_key(point.as_bytes()));
    let validity = Validity::years_from_now(2)
        .expect("validity")
        .clamped_to(unit_cert)
        .expect("nested");
    let cert = issue::module_cert(
        IssuerKey {
            cert: unit_cert,
            key: unit_key,
        },
        &serial,
        point.as_bytes(),
        &[7; pki::NONCE_LEN],
        validity,
    )
    .expect("module cert");
    (key, cert)
}

fn verifier(pki: &Pki, admission: Admission) -> ModuleClientVerifier {
    ModuleClientVerifier::new(pki.central_root.clone(), admission)
}

#[test]
fn a_module_chain_to_this_central_is_admitted() {
    let pki = Pki::new();
    let (_, module) = module_cert(&pki.unit.cert_by_central, &pki.unit.key);
    let seen = Arc::new(Mutex::new(None));
    let record = Arc::clone(&seen);
    let admission: Admission = Arc::new(move |unit: &Certificate, module: &Certificate| {
        *record.lock().expect("lock") = Some((unit.clone(), module.clone()));
        Ok(())
    });
    let verified = verifier(&pki, admission)
        .verify_chain(module.der(), &[pki.unit.cert_by_central.der()], unix_now())
        .expect("admitted");
    assert_eq!(Some(verified.serial()), module.module_serial());
    assert_eq!(verified.unit, pki.unit.cert_by_central);
    let (unit, seen_module) = seen.lock().expect("lock").clone().expect("admission asked");
    assert_eq!(unit, pki.unit.cert_by_central);
    assert_eq!(seen_module, module);
}

#[test]
fn extra_intermediates_are_tolerated_and_the_central_unit_is_found() {
    let pki = Pki::new();
    let (_, module) = module_cert(&pki.unit.cert_by_central, &pki.unit.key);
    let verified = verifier(&pki, admit_all())
        .verify_chain(
            module.der(),
            &[
                b"not a certificate".as_slice(),
                pki.unit.cert_by_manufacturer.der(),
                pki.unit.cert_by_central.der(),
            ],
            unix_now(),
        )
        .expect("admitted");
    assert_eq!(verified.unit, pki.unit.cert_by_central);
}

#[test]
fn a_remembered_unit_still_needs_the_module_signature() {
    let pki = Pki::new();
    let v = verifier(&pki, admit_all());
    let unit = pki.unit.cert_by_central.der();
    let (_, module) = module_cert(&pki.unit.cert_by_central, &pki.unit.key);
    v.verify_chain(module.der(), &[unit], unix_now())
        .expect("admitted");
    assert_eq!(v.verified_units.lock().expect("lock").len(), 1);
    // Another unit key with the same name: the module's signature does not
    // verify with it, so the remembered unit is not reached.
    let other = Pki::new();
    let (_, foreign) = module_cert(&other.unit.cert_by_central, &other.unit.key);
    let err = v
        .verify_chain(foreign.der(), &[unit], unix_now())
        .expect_err("refused");
    assert!(matches!(err, TlsError::NoIssuingUnit), "{err:?}");
    v.verify_chain(module.der(), &[unit], unix_now())
        .expect("admitted again");
}

#[test]
fn a_module_of_another_central_system_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let (_, module) = module_cert(&other.unit.cert_by_central, &other.unit.key);
    let err = verifier(&pki, admit_all())
        .verify_chain(
            module.der(),
            &[other.unit.cert_by_central.der()],
            unix_now(),
        )
        .expect_err("refused");
    assert!(matches!(err, TlsError::UnitNotCertified(_)), "{err:?}");
    assert!(matches!(
        to_rustls_error(err),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    ));
}

#[test]
fn a_unit_not_certified_by_this_central_is_refused() {
    let pki = Pki::new();
    // The unit's certificate by the manufacturer only.
    let (_, module) = module_cert(&pki.unit.cert_by_manufacturer, &pki.unit.key);
    let err = verifier(&pki, admit_all())
        .verify_chain(
            module.der(),
            &[pki.unit.cert_by_manufacturer.der()],
            unix_now(),
        )
        .expect_err("refused");
    assert!(matches!(err, TlsError::UnitNotCertified(_)), "{err:?}");

    // A unit with a certificate from another central system, same name.
    let other = Pki::new();
    let (_, module) = module_cert(&other.unit.cert_by_central, &other.unit.key);
    let err = verifier(&pki, admit_all())
        .verify_chain(
            module.der(),
            &[
                other.unit.cert_by_central.der(),
                pki.unit.cert_by_central.der(),
            ],
            unix_now(),
        )
        .expect_err("refused");
    assert!(matches!(err, TlsError::UnitNotCertified(_)), "{err:?}");

    // No intermediate at all, or only unrelated ones.
    let (_, module) = module_cert(&pki.unit.cert_by_central, &pki.unit.key);
    let err = verifier(&pki, admit_all())
        .verify_chain(module.der(), &[], unix_now())
        .expect_err("refused");
    assert!(matches!(err, TlsError::NoIssuingUnit), "{err:?}");
    let err = verifier(&pki, admit_all())
        .verify_chain(
            module.der(),
            &[other.unit.cert_by_central.der()],
            unix_now(),
        )
        .expect_err("refused");
    assert!(matches!(err, TlsError::NoIssuingUnit), "{err:?}");
}

#[test]
fn a_refused_admission_refuses_the_chain() {
    let pki = Pki::new();
    let (_, module) = module_cert(&pki.unit.cert_by_central, &pki.unit.key);
    let admission: Admission =
        Arc::new(|_: &Certificate, _: &Certificate| Err("module revoked".to_owned()));
    let err = verifier(&pki, admission)
        .verify_chain(module.der(), &[pki.unit.cert_by_central.der()], unix_now())
        .expect_err("refused");
    assert!(
        matches!(&err, TlsError::AdmissionRefused(reason) if reason == "module revoked"),
        "{err:?}"
    );
    assert!(matches!(
        to_rustls_error(err),
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    ));
}

#[test]
fn a_leaf_of_another_role_is_refused() {
    let pki = Pki::new();
    let v = verifier(&pki, admit_all());
    let now = unix_now();
    // The unit's own certificate as the client certificate.
    let err = v
        .verify_chain(
            pki.unit.cert_by_central.der(),
            &[pki.central_root.der()],
            now,
        )
        .expect_err("refused");
    assert!(
        matches!(
            err,
            TlsError::NotAModule {
                found: Role::Personalizer
            }
        ),
        "{err:?}"
    );
    // The central root itself.
    let err = v
        .verify_chain(pki.central_root.der(), &[], now)
        .expect_err("refused");
    assert!(
        matches!(
            err,
            TlsError::NotAModule {
                found: Role::Central
            }
        ),
        "{err:?}"
    );
    // A module identity certificate (issued by the manufacturer).
    let identity_key = random_key();
    let identity = issue::identity_cert(
        IssuerKey {
            cert: &pki.manufacturer.root,
            key: &pki.manufacturer.key,
        },
        identity_key.verifying_key().to_sec1_point(false).as_bytes(),
        Validity::years_from_now(1).expect("validity"),
    )
    .expect("identity cert");
    let err = v
        .verify_chain(identity.der(), &[pki.unit.cert_by_central.der()], now)
        .expect_err("refused");
    assert!(
        matches!(
            err,
            TlsError::NotAModule {
                found: Role::ModuleIdentity
            }
        ),
        "{err:?}"
    );
    // Not an Imprint certificate at all.
    let err = v
        .verify_chain(b"\x30\x03\x02\x01\x01", &[], now)
        .expect_err("refused");
    assert!(matches!(err, TlsError::BadCertificate(_)), "{err:?}");
}

#[test]
fn validity_is_checked_against_the_current_time() {
    let pki = Pki::new();
    let (_, module) = module_cert(&pki.unit.cert_by_central, &pki.unit.key);
    let v = verifier(&pki, admit_all());
    let unit = pki.unit.cert_by_central.der();
    let err = v
        .verify_chain(module.der(), &[unit], module.not_after_unix() + 1)
        .expect_err("expired");
    assert!(
        matches!(
            err,
            TlsError::Expired {
                which: "module",
                ..
            }
        ),
        "{err:?}"
    );
    let err = v
        .verify_chain(module.der(), &[unit], module.not_before_unix() - 1)
        .expect_err("not yet valid");
    assert!(
        matches!(
            err,
            TlsError::NotYetValid {
                which: "module",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn too_many_intermediates_are_refused_before_parsing() {
    let pki = Pki::new();
    let (_, module) = module_cert(&pki.unit.cert_by_central, &pki.unit.key);
    let unit = pki.unit.cert_by_central.der();
    let many = vec![unit; MAX_INTERMEDIATES + 1];
    let err = verifier(&pki, admit_all())
        .verify_chain(module.der(), &many, unix_now())
        .expect_err("refused");
    assert!(matches!(err, TlsError::TooManyIntermediates(5)), "{err:?}");
}

#[test]
fn the_verifier_offers_only_p384_and_hints_the_central_root() {
    let pki = Pki::new();
    let v = verifier(&pki, admit_all());
    assert!(v.client_auth_mandatory());
    assert_eq!(v.supported_verify_schemes(), vec![SIGNATURE_SCHEME]);
    let hints: Vec<&[u8]> = v
        .root_hint_subjects()
        .iter()
        .map(|dn| dn.as_ref())
        .collect();
    assert_eq!(hints, vec![pki.central_root.subject_der()]);
}

#[test]
fn the_endpoint_certificate_is_issued_by_the_central_key_and_kept() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("dir");
    let central = central_of(&pki, dir.path());
    let names = EndpointNames::default();
    let endpoint =
        EndpointCertificate::load_or_create(&central, dir.path(), &names).expect("create");

    let (key_path, cert_path) = EndpointCertificate::paths(dir.path());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path)
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let pem = std::fs::read_to_string(&cert_path).expect("pem");
    assert_eq!(pem, endpoint.certificate_pem().expect("pem"));

    let cert = x509_cert::Certificate::from_der(endpoint.certificate_der().as_ref()).expect("x509");
    let tbs = cert.tbs_certificate();
    assert_eq!(
        tbs.issuer().to_der().expect("der"),
        pki.central_root.subject_der()
    );
    let signature =
        p384::ecdsa::DerSignature::from_bytes(cert.signature().as_bytes().expect("bits"))
            .expect("signature");
    pki.central_key
        .verifying_key()
        .verify(&tbs.to_der().expect("tbs"), &signature)
        .expect("signed by C");
    let (_, eku) = tbs
        .get_extension::<ExtendedKeyUsage>()
        .expect("eku")
        .expect("eku present");
    assert_eq!(eku.0, vec![KP_SERVER_AUTH]);
    let (_, san) = tbs
        .get_extension::<SubjectAltName>()
        .expect("san")
        .expect("san present");
    assert_eq!(san.0.len(), 3);
    let (critical, bc) = tbs
        .get_extension::<BasicConstraints>()
        .expect("bc")
        .expect("bc present");
    assert!(critical && !bc.ca);
    assert!(endpoint.not_after_unix() <= pki.central_root.not_after_unix());
    // The endpoint certificate is not an Imprint role certificate.
    assert!(Certificate::from_der(endpoint.certificate_der().as_ref()).is_err());

    // Loaded again as it is.
    let again = EndpointCertificate::load_or_create(&central, dir.path(), &names).expect("load");
    assert_eq!(again.certificate_der(), endpoint.certificate_der());

    // Other names: re-issued for the same key.
    let other_names = EndpointNames {
        dns: vec!["central.example".to_owned()],
        ips: vec![],
    };
    let renamed =
        EndpointCertificate::load_or_create(&central, dir.path(), &other_names).expect("rename");
    assert_ne!(renamed.certificate_der(), endpoint.certificate_der());
    assert_eq!(renamed.public_key(), endpoint.public_key());

    // Another central system: re-issued under it.
    let other = Pki::new();
    let other_dir = tempfile::tempdir().expect("dir");
    let other_central = central_of(&other, other_dir.path());
    let moved =
        EndpointCertificate::load_or_create(&other_central, dir.path(), &other_names).expect("re");
    assert_ne!(moved.certificate_der(), renamed.certificate_der());

    // No names at all is refused.
    let none = EndpointNames {
        dns: vec![],
        ips: vec![],
    };
    assert!(matches!(
        EndpointCertificate::issue(&central, random_key(), &none, unix_now()),
        Err(TlsError::NoNames)
    ));
}

// --- whole handshakes in memory -----------------------------------------------------------------

fn client_config(
    pki: &Pki,
    key: &SigningKey,
    chain: Vec<&Certificate>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(pki.central_root.der().to_vec()))
        .expect("root");
    let chain = chain
        .into_iter()
        .map(|cert| CertificateDer::from(cert.der().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        key.to_pkcs8_der().expect("pkcs8").as_bytes().to_vec(),
    ));
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    Arc::new(config)
}

/// Runs a handshake in memory; the server's error if it fails.
fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<(), rustls::Error> {
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = rustls::ClientConnection::new(client, name).expect("client");
    let mut server = rustls::ServerConnection::new(server).expect("server");
    for _ in 0..10 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).expect("client write");
        }
        let mut slice = buf.as_slice();
        while !slice.is_empty() {
            server.read_tls(&mut slice).expect("server read");
        }
        server.process_new_packets()?;
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).expect("server write");
        }
        let mut slice = buf.as_slice();
        while !slice.is_empty() {
            client.read_tls(&mut slice).expect("client read");
        }
        client.process_new_packets().expect("client");
        if !client.is_handshaking() && !server.is_handshaking() {
            server.writer().write_all(b"hi").expect("write");
            let mut buf = Vec::new();
            server.write_tls(&mut buf).expect("server write");
            client.read_tls(&mut buf.as_slice()).expect("client read");
            client.process_new_packets().expect("client");
            let mut got = [0u8; 2];
            client.reader().read_exact(&mut got).expect("read");
            assert_eq!(&got, b"hi");
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn rustls_handshakes_with_a_module_chain() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("dir");
    let central = central_of(&pki, dir.path());
    let endpoint =
        EndpointCertificate::load_or_create(&central, dir.path(), &EndpointNames::default())
            .expect("endpoint");
    let refuse = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&refuse);
    let admission: Admission = Arc::new(move |_: &Certificate, _: &Certificate| {
        if flag.load(Ordering::SeqCst) {
            Err("revoked".to_owned())
        } else {
            Ok(())
        }
    });
    let server = server_config(&endpoint, &pki.central_root, admission).expect("server config");
    let (module_key, module) = module_cert(&pki.unit.cert_by_central, &pki.unit.key);
    let client = client_config(&pki, &module_key, vec![&module, &pki.unit.cert_by_central]);

    handshake(Arc::clone(&server), Arc::clone(&client)).expect("handshake");
    // Again with the same client configuration (and its session cache):
    // still a full handshake, checked again.
    handshake(Arc::clone(&server), Arc::clone(&client)).expect("second handshake");
    assert_eq!(server.send_tls13_tickets, 0);

    refuse.store(true, Ordering::SeqCst);
    let err = handshake(Arc::clone(&server), client).expect_err("refused");
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        ),
        "{err:?}"
    );

    // A module of another deployment.
    let other = Pki::new();
    let (other_key, other_module) = module_cert(&other.unit.cert_by_central, &other.unit.key);
    let client = client_config(
        &pki,
        &other_key,
        vec![&other_module, &other.unit.cert_by_central],
    );
    let err = handshake(server, client).expect_err("refused");
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_accept_loop_greets_and_answers_one_line() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("dir");
    let central = central_of(&pki, dir.path());
    let endpoint =
        EndpointCertificate::load_or_create(&central, dir.path(), &EndpointNames::default())
            .expect("endpoint");
    let server = server_config(&endpoint, &pki.central_root, admit_all()).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_tls_endpoint(
        listener,
        server,
        EndpointConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let (module_key, module) = module_cert(&pki.unit.cert_by_central, &pki.unit.key);
    let connector = tokio_rustls::TlsConnector::from(client_config(
        &pki,
        &module_key,
        vec![&module, &pki.unit.cert_by_central],
    ));
    let tcp = TcpStream::connect(address).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1").expect("ip"), tcp)
        .await
        .expect("handshake");
    let mut tls = tokio::io::BufReader::new(tls);
    let mut greeting = String::new();
    tls.read_line(&mut greeting).await.expect("greeting");
    assert_eq!(
        greeting,
        format!(
            "{GREETING_PREFIX}{}\n",
            module.module_serial().expect("serial")
        )
    );
    tls.get_mut().write_all(b"hello\n").await.expect("line");
    let mut answer = String::new();
    tls.read_line(&mut answer).await.expect("answer");
    assert_eq!(
        answer,
        format!("ok {}\n", display::hex(&Sha384::digest(b"hello")))
    );

    // A line longer than the limit is refused.
    let tcp = TcpStream::connect(address).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    let mut tls = tokio::io::BufReader::new(tls);
    let mut greeting = String::new();
    tls.read_line(&mut greeting).await.expect("greeting");
    tls.get_mut()
        .write_all(&[b'x'; 5000])
        .await
        .expect("long line");
    let mut answer = String::new();
    tls.read_line(&mut answer).await.expect("answer");
    assert_eq!(answer, "error line too long\n");

    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops")
        .expect("task");
}
