//! The host side: the personalization unit's flow as a sans-IO state machine,
//! its blocking driver, the manufacturer's flow, transports and the issuance
//! journal interface.
//!
//! ```text
//!  Personalization::next() ─▶ Action::Send(cmd) ─▶ CardLink ─▶ Transport ─▶ module
//!        ▲                  ─▶ Action::Record(cert) ─▶ IssuanceJournal (before the card sees it)
//!        └── on_response(resp) / recorded() ◀────────────────────────────────┘
//! ```

pub mod credentials;
pub mod identification;
pub mod manufacture;
pub mod personalize;
pub mod status;
pub mod tan;
pub mod transport;

pub use credentials::{ManufacturerCredentials, UnitCredentials};
pub use personalize::{
    Action, DirectOutcome, IssuanceJournal, IssuedCertificate, JournalError, Personalization,
    PersonalizationOptions, PersonalizationReport, PersonalizeError, personalize,
    personalize_with_identification, reset_module,
};
pub use transport::{CardLink, InProcessTransport, Transport, TransportError};

/// A module refused a command: which command, and the status word it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("module answered {sw:04X} ({meaning}) to {step}", meaning = status_meaning(*sw))]
pub struct Refused {
    /// The command, as the docs name it.
    pub step: &'static str,
    /// SW1-SW2.
    pub sw: u16,
}

/// What a status word means, for messages.
pub fn status_meaning(sw: u16) -> &'static str {
    use crate::iso::sw::*;
    match sw {
        OK => "success",
        AUTHENTICATION_FAILED => "authentication failed",
        MEMORY_FAILURE => "key memory failure",
        WRONG_LENGTH => "wrong length",
        CHANNEL_NOT_SUPPORTED => "logical channel not supported",
        SM_NOT_SUPPORTED => "secure messaging not supported here",
        LAST_COMMAND_EXPECTED => "last command of chain expected",
        SECURITY_STATUS => "security status not satisfied",
        CONDITIONS => "conditions of use not satisfied",
        SM_INCORRECT => "secure messaging data objects incorrect",
        WRONG_DATA => "incorrect data field",
        FUNC_NOT_SUPPORTED => "function not supported",
        NOT_FOUND => "applet not found",
        NOT_ENOUGH_MEMORY => "not enough memory",
        WRONG_P1P2 => "incorrect P1-P2",
        DATA_NOT_FOUND => "referenced data not found",
        INS_NOT_SUPPORTED => "instruction not supported",
        CLA_NOT_SUPPORTED => "class not supported",
        PIN_BLOCKED => "authentication method blocked (PIN blocked, or TAN proofs exhausted)",
        0x63C0..=0x63CF => "PIN not verified (tries left in the last digit)",
        _ => "unexpected status",
    }
}
