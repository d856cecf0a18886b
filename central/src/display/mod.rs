//! Formatting certificates and bytes for operators.
//!
//! ```text
//!  Certificate ─▶ subject() / fingerprint() / utc(notBefore..notAfter) ─▶ terminal
//! ```

use imprint_apdu::pki::Certificate;

#[cfg(test)]
mod tests;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Parses hex (either case, an even number of digits, optional `:` or space
/// separators between bytes). `None` if anything else is found.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b':' | b' '))
        .map(|b| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok()))
        .collect::<Option<_>>()?;
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    Some(
        digits
            .chunks_exact(2)
            .map(|pair| pair[0] << 4 | pair[1])
            .collect(),
    )
}

/// The subject name in RFC 4514 form, e.g. `CN=Imprint central system`.
pub fn subject(cert: &Certificate) -> String {
    cert.x509().tbs_certificate().subject().to_string()
}

/// The issuer name in RFC 4514 form.
pub fn issuer(cert: &Certificate) -> String {
    cert.x509().tbs_certificate().issuer().to_string()
}

/// SHA-384 of the certificate's DER, as lowercase hex.
pub fn fingerprint(cert: &Certificate) -> String {
    hex(&cert.fingerprint())
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(unix: u64) -> String {
    match der::DateTime::from_unix_duration(std::time::Duration::from_secs(unix)) {
        Ok(time) => time.to_string(),
        Err(_) => format!("{unix} s after the epoch"),
    }
}

/// `notBefore .. notAfter` of a certificate in UTC.
pub fn validity(cert: &Certificate) -> String {
    format!(
        "{} .. {}",
        utc(cert.not_before_unix()),
        utc(cert.not_after_unix())
    )
}
