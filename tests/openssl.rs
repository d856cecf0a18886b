//! Interoperability with OpenSSL: the certificates a personalized module holds
//! are ordinary X.509 to the `openssl` command-line tool, which must verify
//! the module chain to the central root (as a TLS endpoint of the central
//! system would), the identity certificate to the manufacturer root, and show
//! the nonce extension (claim 9). It must also refuse the chain under the
//! wrong roots, and accept the module key's signatures over host digests.
//!
//! Without an `openssl` binary these tests print `SKIPPED` and pass, except in
//! CI (`CI=true`), where they fail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imprint_apdu::host::status::read_status;
use imprint_apdu::pki::issue;
use imprint_apdu::pki::{Certificate, oid};
use imprint_tests::*;
use tempfile::TempDir;

/// Whether the tests can run; panics in CI when they cannot.
fn openssl_available() -> bool {
    match Command::new("openssl").arg("version").output() {
        Ok(output) if output.status.success() => true,
        result => {
            let reason = match result {
                Ok(output) => format!("`openssl version` exited with {}", output.status),
                Err(err) => err.to_string(),
            };
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("openssl binary not found ({reason}); CI must have it");
            }
            // Straight to the stderr handle: the test harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: openssl binary not found ({reason})"
            );
            false
        }
    }
}

/// A personalized module's certificates, as PEM files in a temporary directory.
struct Chain {
    dir: TempDir,
    pki: Pki,
    module: Certificate,
}

impl Chain {
    /// central.pem, unit.pem, module.pem, manufacturer.pem, identity.pem.
    fn new() -> Self {
        let pki = Pki::new();
        let mut link = ram_module();
        manufactured(&mut link, &pki);
        let mut journal = RecordingJournal::default();
        personalized(&mut link, &pki.unit, &mut journal).expect("personalization");
        let status = read_status(&mut link).expect("status");
        let module = status.module_cert.expect("module certificate");

        let dir = tempfile::tempdir().expect("temporary directory");
        let chain = Self { dir, pki, module };
        chain.write("central.pem", &chain.pki.central_root);
        chain.write(
            "unit.pem",
            &status
                .unit_cert
                .expect("unit certificate by the central system"),
        );
        chain.write("module.pem", &chain.module);
        chain.write("manufacturer.pem", &chain.pki.manufacturer.root);
        chain.write(
            "identity.pem",
            &status.identity_cert.expect("identity certificate"),
        );
        chain
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, cert: &Certificate) {
        let pem = issue::to_pem(cert).expect("PEM");
        std::fs::write(self.path(name), pem).expect("write PEM");
    }

    /// Runs `openssl` in the directory, so file names stay relative.
    fn openssl(&self, args: &[&str]) -> Output {
        run_openssl(self.dir.path(), args)
    }
}

fn run_openssl(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    eprintln!(
        "openssl {}\n  exit: {}\n  stdout: {}\n  stderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim(),
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn openssl_verifies_module_chain_to_central_root() {
    if !openssl_available() {
        return;
    }
    let chain = Chain::new();
    // `-purpose sslclient` is what a TLS server checks on a client's chain: every certificate
    // with an extendedKeyUsage must include clientAuth.
    let output = chain.openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        "central.pem",
        "-untrusted",
        "unit.pem",
        "module.pem",
    ]);
    assert!(output.status.success(), "openssl rejected the module chain");
    assert!(stdout(&output).contains("module.pem: OK"), "no OK line");
}

#[test]
fn openssl_verifies_identity_certificate_to_manufacturer_root() {
    if !openssl_available() {
        return;
    }
    let chain = Chain::new();
    let output = chain.openssl(&["verify", "-CAfile", "manufacturer.pem", "identity.pem"]);
    assert!(
        output.status.success(),
        "openssl rejected the identity certificate"
    );
    assert!(stdout(&output).contains("identity.pem: OK"), "no OK line");
}

#[test]
fn openssl_shows_the_nonce_extension() {
    if !openssl_available() {
        return;
    }
    let chain = Chain::new();
    let nonce = chain
        .module
        .nonce()
        .expect("module certificate carries a nonce");
    // `ext_parse` makes OpenSSL print an extension it does not know as parsed
    // ASN.1: the OCTET STRING, then its value as a hex dump.
    let output = chain.openssl(&[
        "x509",
        "-text",
        "-noout",
        "-certopt",
        "ext_parse",
        "-in",
        "module.pem",
    ]);
    assert!(
        output.status.success(),
        "openssl cannot print the module certificate"
    );
    let text = stdout(&output);
    let oid = oid::NONCE_EXTENSION.to_string();
    let at = text
        .find(&format!("{oid}:"))
        .unwrap_or_else(|| panic!("no extension {oid} in:\n{text}"));
    // The value follows the OID, up to the blank line that ends the extensions.
    let block = text[at..].split("\n\n").next().unwrap_or_default();
    assert!(
        block.contains("OCTET STRING"),
        "nonce is not shown as an OCTET STRING:\n{block}"
    );
    assert_eq!(
        dumped_bytes(block),
        nonce,
        "the nonce OpenSSL shows is not the certificate's:\n{block}"
    );
}

/// The bytes of OpenSSL's hex dump lines (`0000 - 2e a1 .. 3f-55 ..   ascii`)
/// or of a `[HEX DUMP]:2EA1..` field (older versions) in `block`.
fn dumped_bytes(block: &str) -> Vec<u8> {
    let parse = |pair: &str| u8::from_str_radix(pair, 16).expect("hex byte");
    if let Some((_, hex)) = block.split_once("[HEX DUMP]:") {
        let hex: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
        return (0..hex.len() / 2)
            .map(|i| parse(&hex[2 * i..2 * i + 2]))
            .collect();
    }
    let mut bytes = Vec::new();
    for line in block.lines() {
        let Some((offset, rest)) = line.trim_start().split_once(" - ") else {
            continue;
        };
        if offset.is_empty() || !offset.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        // Sixteen bytes a line: "hh hh hh hh hh hh hh hh-hh hh hh hh hh hh hh hh", then the text.
        let hex_area: String = rest.chars().take(16 * 3 - 1).collect();
        bytes.extend(hex_area.replace('-', " ").split_whitespace().map(parse));
    }
    bytes
}

#[test]
fn openssl_rejects_module_chain_under_manufacturer_root() {
    if !openssl_available() {
        return;
    }
    let chain = Chain::new();
    let output = chain.openssl(&[
        "verify",
        "-CAfile",
        "manufacturer.pem",
        "-untrusted",
        "unit.pem",
        "module.pem",
    ]);
    assert!(
        !output.status.success(),
        "the module chain must not verify to the manufacturer root"
    );
    assert!(!stdout(&output).contains("module.pem: OK"));
}

#[test]
fn openssl_rejects_module_chain_under_foreign_central_root() {
    if !openssl_available() {
        return;
    }
    let chain = Chain::new();
    // Same name as the real central root, another key: OpenSSL must not take
    // it for the issuer of the unit certificate.
    let subject = chain
        .pki
        .central_root
        .x509()
        .tbs_certificate()
        .subject()
        .to_string();
    let common_name = subject.strip_prefix("CN=").unwrap_or(&subject);
    let (_, foreign) = new_central(common_name);
    assert_eq!(foreign.subject_der(), chain.pki.central_root.subject_der());
    chain.write("foreign.pem", &foreign);
    let output = chain.openssl(&[
        "verify",
        "-CAfile",
        "foreign.pem",
        "-untrusted",
        "unit.pem",
        "module.pem",
    ]);
    assert!(
        !output.status.success(),
        "the module chain must not verify to a foreign central root"
    );
    assert!(!stdout(&output).contains("module.pem: OK"));

    // A foreign central root under its own name is refused as well.
    let (_, other) = new_central("Foreign Central");
    chain.write("other.pem", &other);
    let output = chain.openssl(&[
        "verify",
        "-CAfile",
        "other.pem",
        "-untrusted",
        "unit.pem",
        "module.pem",
    ]);
    assert!(
        !output.status.success(),
        "the module chain must not verify to a foreign central root"
    );
    assert!(!stdout(&output).contains("module.pem: OK"));
}

/// COMPUTE DIGITAL SIGNATURE over SHA-256, SHA-384 and SHA-512 digests the
/// host computed (CKM_ECDSA_SHA256/384 and a longer-than-the-curve digest):
/// `openssl dgst -<hash> -verify` with the module certificate's key must
/// accept each signature over the message, so the module's conversion of a
/// digest to the P-384 hash value is the standard one.
#[test]
fn openssl_verifies_module_signatures_over_host_digests() {
    use sha2::Digest;
    if !openssl_available() {
        return;
    }
    let pki = Pki::new();
    let mut link = ram_module();
    manufactured(&mut link, &pki);
    personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).expect("personalize");
    let module = read_status(&mut link)
        .expect("status")
        .module_cert
        .expect("module certificate");
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(
        dir.path().join("module.pem"),
        issue::to_pem(&module).expect("PEM"),
    )
    .expect("write PEM");
    let output = run_openssl(
        dir.path(),
        &[
            "x509",
            "-pubkey",
            "-noout",
            "-in",
            "module.pem",
            "-out",
            "module.pub",
        ],
    );
    assert!(output.status.success(), "cannot extract the module key");

    let message = b"signed by the module key through the PKCS#11 provider";
    std::fs::write(dir.path().join("message.bin"), message).expect("write message");
    let digests: [(&str, Vec<u8>); 3] = [
        ("-sha256", sha2::Sha256::digest(message).to_vec()),
        ("-sha384", sha2::Sha384::digest(message).to_vec()),
        ("-sha512", sha2::Sha512::digest(message).to_vec()),
    ];
    for (hash, digest) in digests {
        let response = compute_signature(&mut link, &digest);
        assert_eq!(response.sw, 0x9000, "{hash}");
        let signature =
            p384::ecdsa::Signature::from_slice(&response.data).expect("raw r ‖ s signature");
        std::fs::write(
            dir.path().join("signature.der"),
            signature.to_der().as_bytes(),
        )
        .expect("write signature");
        let output = run_openssl(
            dir.path(),
            &[
                "dgst",
                hash,
                "-verify",
                "module.pub",
                "-signature",
                "signature.der",
                "message.bin",
            ],
        );
        assert!(
            output.status.success(),
            "openssl refused the {hash} signature"
        );
        assert!(stdout(&output).contains("Verified OK"), "{hash}");

        // And a signature over another message is refused.
        std::fs::write(dir.path().join("other.bin"), b"another message").expect("write");
        let output = run_openssl(
            dir.path(),
            &[
                "dgst",
                hash,
                "-verify",
                "module.pub",
                "-signature",
                "signature.der",
                "other.bin",
            ],
        );
        assert!(!output.status.success(), "{hash}: wrong message accepted");
    }
}
