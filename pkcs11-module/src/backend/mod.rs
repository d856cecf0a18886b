//! Where modules live: each [`Device`] is one PKCS#11 slot, and a
//! [`Connection`] to it moves APDUs to the applet.
//!
//! ```text
//!  token layer ──▶ Device::presence / Device::connect ──▶ Connection::exchange(|transport| …)
//!                    │                                       │
//!                    ├─ card::PcscDevice (a PC/SC reader) ───┴─▶ PC/SC transaction ─▶ pcscd ─▶ card
//!                    └─ inproc::InProcessDevice<S> ──────────────▶ Applet<S::Memory> in this process
//!                          S: KeyMemorySource (file directory; SoftHSM token)
//! ```
//!
//! The token layer holds a connection while sessions are open on the slot,
//! so nobody else can change the module under them (a PC/SC station connects
//! exclusively; a file module is locked), and drops it when the last session
//! closes.

use imprint_apdu::host::{Transport, TransportError};

use crate::error::Error;

pub mod card;
pub mod inproc;

/// A failure reaching a device.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No card in the reader, or the module's storage is missing.
    #[error("no module present")]
    NotPresent,
    /// Another application holds the module exclusively.
    #[error("the module is in use by another application")]
    Busy,
    /// The card is there but has no Imprint applet.
    #[error("the card has no Imprint applet")]
    NoApplet,
    /// The PC/SC service failed.
    #[error("PC/SC: {0}")]
    Pcsc(#[from] pcsc::Error),
    /// The key memory failed to open.
    #[error("key memory: {0}")]
    Io(#[from] std::io::Error),
    /// The applet could not load its key memory.
    #[error("key memory: {0}")]
    KeyMemory(#[from] imprint_apdu::keymem::KeyMemoryError),
    /// The SoftHSM token could not be opened (wrong SoftHSM PIN, session).
    #[error("SoftHSM: {0}")]
    SoftHsm(#[from] crate::softhsm::SoftHsmError),
}

impl From<BackendError> for Error {
    fn from(err: BackendError) -> Self {
        match err {
            BackendError::NotPresent | BackendError::NoApplet | BackendError::Busy => {
                Error::TokenNotPresent
            }
            BackendError::Pcsc(_) | BackendError::Io(_) | BackendError::SoftHsm(_) => {
                Error::DeviceError
            }
            BackendError::KeyMemory(_) => Error::DeviceMemory,
        }
    }
}

/// What a slot says about itself (`CK_SLOT_INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDescription {
    /// `slotDescription`: the reader's name, or the module's.
    pub description: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `CKF_REMOVABLE_DEVICE`.
    pub removable: bool,
    /// `CKF_HW_SLOT`.
    pub hardware: bool,
}

/// Whether a module is there, and pcscd's insertion/removal count, so that a
/// card pulled and another pushed in between two looks is still an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    /// Something is in the slot (a card, a module directory).
    pub present: bool,
    /// Insertions and removals so far, as far as the backend counts them.
    pub events: u32,
}

/// One slot's device: a reader, or a module in this process.
pub trait Device: Send {
    /// The slot's description.
    fn describe(&self) -> SlotDescription;

    /// A cheap look at whether something is in the slot (no APDU).
    fn presence(&mut self) -> Presence;

    /// Connects to the module. The connection is dropped to disconnect.
    fn connect(&mut self) -> Result<Box<dyn Connection>, BackendError>;
}

/// A connection to one module.
pub trait Connection: Send {
    /// Runs `exchange` with exclusive use of the module for its duration
    /// (a PC/SC transaction on cards), giving it the transport to the applet.
    fn exchange(
        &mut self,
        exchange: &mut dyn FnMut(&mut dyn Transport) -> Result<(), Error>,
    ) -> Result<(), Error>;
}

/// Maps a transport failure to the PKCS#11 error the caller sees.
pub fn transport_error(err: TransportError) -> Error {
    match err {
        TransportError::Disconnected => Error::DeviceRemoved,
        TransportError::ShortResponse
        | TransportError::TooLarge(_)
        | TransportError::Io(_)
        | TransportError::DirectUnsupported
        | TransportError::DirectNotOpened(_) => Error::DeviceError,
    }
}
