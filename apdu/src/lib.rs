//! Imprint's security module: the applet, its APDU command set, the channel
//! cryptography, the PKI of the roles, and the personalization unit's side.
//!
//! ```text
//!   host (std)                                  module (no_std + alloc)
//!  ┌───────────────────────────────┐          ┌──────────────────────────────┐
//!  │ host::personalize (state      │  APDUs   │ applet::Applet::process      │
//!  │  machine) ─▶ host::Transport ─┼─────────▶│  ├─ channel (ECDH, HKDF, SM) │
//!  │ pki::issue (x509 builder)     │◀─────────┼  ├─ pki (strict X.509 verify)│
//!  │ IssuanceJournal (before send) │          │  └─ keymem::KeyMemory        │
//!  └───────────────────────────────┘          └──────────────────────────────┘
//! ```
//!
//! Inside a personalization channel the unit may hand the module a direct
//! connection offer ([`direct`], claim 15): an address and a one-time ticket
//! the module's runtime uses to reach the unit without the relay.
//!
//! A second, small applet, the identification unit ([`idunit`], claims
//! 16–18), answers the unit's challenge with a one-off value under its own
//! MAC; the module forwards that answer inside the personalization channel.
//!
//! The module side compiles without `std`, so the same applet can run on a
//! secure element; the `std` feature adds the file-backed key memory, the
//! certificate issuance and the host-side flows.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod applet;
pub mod channel;
pub mod direct;
#[cfg(feature = "std")]
pub mod host;
pub mod idunit;
pub mod iso;
pub mod keymem;
pub mod pki;
pub mod proto;
pub mod tlv;
#[cfg(feature = "std")]
pub mod vpcd;

pub use applet::Applet;
pub use iso::{Command, Response};
pub use proto::Lifecycle;
