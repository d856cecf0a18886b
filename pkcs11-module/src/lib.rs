//! `libimprint_pkcs11.so`: a PKCS#11 provider for personalized Imprint
//! modules. Applications (OpenSC's `pkcs11-tool`, Firefox/NSS, GnuTLS,
//! OpenSSL's pkcs11 engine, the `cryptoki` crate) load it and use the module
//! key to sign, with its certificate chain beside it.
//!
//! ```text
//!  application
//!      │ C_GetFunctionList / C_GetInterface
//!      ▼
//!  ffi/      C ABI: pointer checks, catch_unwind, CK_RV          (the only unsafe code)
//!      │
//!  token/    Provider: slots, sessions, login, objects, find, attributes, sign
//!      │        SELECT · GET DATA DF21/DF23/DF24/DF25 · VERIFY · PSO: COMPUTE DIGITAL SIGNATURE
//!      ▼
//!  backend/  Device + Connection
//!      ├─ card:   one slot per PC/SC reader ─▶ pcscd ─▶ card with the Imprint applet
//!      └─ inproc: the applet in this process ─▶ KeyMemory (module directory; SoftHSM)
//!
//!  config.rs  which slots (TOML named by IMPRINT_PKCS11_CONF; default: every reader)
//!  log.rs     tracing, off unless IMPRINT_PKCS11_LOG is set; never PINs or key material
//! ```
//!
//! The token of a slot is the module: its label is the module serial, its
//! flags follow the lifecycle (`CKF_TOKEN_INITIALIZED` in OPERATING), and its
//! objects are the identity certificate in every state and, in OPERATING,
//! the module's private key (sensitive, never extractable, `CKA_SIGN`), its
//! public key and certificate (same `CKA_ID`), the personalization unit's
//! certificate and the central system's certificate. Signing is
//! `CKM_ECDSA`, `CKM_ECDSA_SHA256` and `CKM_ECDSA_SHA384`, hashed on the host;
//! the signature is `r ‖ s`. A user PIN set at personalization is `C_Login`.
//!
//! The user guide is `docs/pkcs11.md`.

pub mod backend;
pub mod config;
pub mod error;
pub mod ffi;
pub mod log;
pub mod softhsm;
pub mod token;

pub use config::Config;
pub use error::Error;
pub use token::Provider;
