//! Imprint's host tool: the manufacturer's and the personalization unit's
//! stations, the issuance journal, the end-to-end demo and the crypto bench.
//! The binary `imprint` is a thin command line over this library.
//!
//! ```text
//!  manufacturer/ (M key, M root) ──certify──▶ by-manufacturer.pem ─┐
//!  central/ (imprint-central)    ──certify──▶ by-central.pem ──────┤
//!                                                                   ▼
//!  personalizer/ (P key, CSR) ── install ──▶ central-delivery.pem ─▶ UnitCredentials
//!                                                                   │
//!  module dir ─▶ FileKeyMemory ─▶ Applet ─▶ InProcessTransport ─▶ CardLink
//!        ▲             manufacture (M) / personalize (P) / reset    │
//!        └──────────────────────────── APDUs ◀──────────────────────┤
//!  card in a reader ◀─ pcscd ◀─ pcsc::PcscTransport ◀───────────────┘
//!                                  personalize ──▶ journal::SqliteJournal
//!                                  (every certificate recorded before it is sent)
//!  station: one worker per reader ─▶ pcsc::ReaderWatch ─▶ personalize each new card once
//! ```
//!
//! - [`roles`]: the on-disk layout of the manufacturer and of the unit.
//! - [`journal`]: the SQLite issuance journal behind
//!   [`imprint_apdu::host::IssuanceJournal`], and its signed export and
//!   verified import for field units ([`journal::transfer`], claim 12).
//! - [`module`]: opening a file-backed module in-process.
//! - [`demo`]: the whole flow on N modules, verified afterwards.
//! - [`bench`](mod@bench): P-384 signature rates against `openssl speed`,
//!   PC/SC round trips and station throughput, and personalization through
//!   a relay against a direct one ([`bench::relay`]).
//! - [`roles::create_all`]: the three roles in one directory (demo, bench).
//! - [`pcsc`]: cards in PC/SC readers (the transport, reader listing and
//!   watching, and secure PIN entry on PIN-pad readers, [`pcsc::pinpad`]).
//! - [`station`]: station mode, personalizing cards on several readers at once.
//! - [`tan_prompt`]: where the TAN is typed (claim 13): the reader's PIN
//!   pad, or the terminal without echo.
//! - [`remote`]: the unit as a network service and the relay that presents
//!   modules to it (claim 14), with the relays' registry in [`journal::relays`];
//!   the TAN typed at the relay (claim 13); the direct connection a relay only
//!   sets up, and the module runtime that dials it ([`remote::direct`], claim 15).

#![forbid(unsafe_code)]

pub mod bench;
pub mod demo;
mod error;
pub mod journal;
pub mod module;
pub mod pcsc;
pub mod remote;
pub mod roles;
pub mod station;
pub mod tan_prompt;

pub use error::HostError;

#[cfg(test)]
mod testutil;
