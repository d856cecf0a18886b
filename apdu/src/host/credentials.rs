//! Key material of the host-side roles.

use p384::ecdsa::SigningKey;

use crate::pki::{Certificate, Role};

/// A personalization unit's signing key and certificates (claims 5–7).
#[derive(Clone)]
pub struct UnitCredentials {
    /// The signing key P. Held in the unit's key memory; never sent.
    pub key: SigningKey,
    /// P's certificate issued by the manufacturer (presented to modules, claim 7).
    pub cert_by_manufacturer: Certificate,
    /// P's certificate issued by the central system (installed in modules, claim 6).
    pub cert_by_central: Certificate,
    /// P's certificate over the central system's key (installed in modules, claims 4–5).
    pub central_delivery: Certificate,
    /// The manufacturer's root, to authenticate modules' identity certificates (claim 8).
    pub manufacturer_root: Certificate,
}

/// Why a set of unit credentials is inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// A certificate has the wrong role.
    #[error("the {0} certificate has the wrong role")]
    WrongRole(&'static str),
    /// A certificate is not for the unit's key.
    #[error("the {0} certificate is not for this unit's signing key")]
    KeyMismatch(&'static str),
}

impl UnitCredentials {
    /// Checks roles and keys, so a misconfigured station fails before touching a card.
    pub fn check(&self) -> Result<(), CredentialsError> {
        let own_point =
            crate::channel::encode_point(&p384::PublicKey::from(self.key.verifying_key()));
        for (name, cert) in [
            ("unit-by-manufacturer", &self.cert_by_manufacturer),
            ("unit-by-central", &self.cert_by_central),
        ] {
            if cert.role() != Role::Personalizer {
                return Err(CredentialsError::WrongRole(name));
            }
            if cert.public_key_sec1() != own_point {
                return Err(CredentialsError::KeyMismatch(name));
            }
        }
        if self.central_delivery.role() != Role::CentralDelivery {
            return Err(CredentialsError::WrongRole("central delivery"));
        }
        if self.manufacturer_root.role() != Role::Manufacturer {
            return Err(CredentialsError::WrongRole("manufacturer root"));
        }
        Ok(())
    }
}

/// The manufacturer's checking key and root certificate (claims 7, 8).
pub struct ManufacturerCredentials {
    /// The checking key M.
    pub key: SigningKey,
    /// M's self-signed root certificate.
    pub root: Certificate,
}
