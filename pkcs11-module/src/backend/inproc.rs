//! The applet in this process, over a key memory: the module is the
//! provider's own code, and the key memory its secure storage.
//!
//! ```text
//!  InProcessDevice<S> ──connect──▶ S::open() ─▶ Applet<S::Memory> ─▶ InProcessTransport
//!   (S: KeyMemorySource)            e.g. FileKeyMemory::open(dir): locked while connected
//! ```
//!
//! Connecting is powering the module on: the applet starts with nothing
//! selected and the PIN not verified. Dropping the connection powers it off
//! and releases the key memory (a file module's directory lock), so the host
//! tool can re-personalize the module between two uses.
//!
//! Another key memory plugs in by implementing [`KeyMemorySource`];
//! `InProcessDevice::new(source)` is then its slot. [`SoftHsmSource`] is the
//! SoftHSM one: a token of a PKCS#11 library, opened with the provider's own
//! SoftHSM user PIN (read from a file at every connection).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use imprint_apdu::Applet;
use imprint_apdu::host::{InProcessTransport, Transport};
use imprint_apdu::keymem::KeyMemory;
use imprint_apdu::keymem::file::FileKeyMemory;

use crate::softhsm::{SoftHsmError, SoftHsmKeyMemory, read_pin_file, token_present};

use super::{BackendError, Connection, Device, Presence, SlotDescription};
use crate::error::Error;

/// Opens the key memory of an in-process module.
pub trait KeyMemorySource: Send {
    /// The key memory.
    type Memory: KeyMemory + Send + 'static;

    /// The slot's description (`slotDescription`).
    fn description(&self) -> String;

    /// Whether the module's storage exists (no side effects).
    fn present(&self) -> bool;

    /// Opens the key memory for one connection. [`BackendError::Busy`] while
    /// another process uses it.
    fn open(&self) -> Result<Self::Memory, BackendError>;
}

/// A module directory ([`FileKeyMemory`]), as the host tool's `--module DIR`.
#[derive(Debug, Clone)]
pub struct FileSource {
    dir: PathBuf,
}

impl FileSource {
    /// The module in `dir`.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
        }
    }
}

impl KeyMemorySource for FileSource {
    type Memory = FileKeyMemory;

    fn description(&self) -> String {
        let name = self
            .dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("Imprint file module {name}")
    }

    fn present(&self) -> bool {
        self.dir.is_dir()
    }

    fn open(&self) -> Result<FileKeyMemory, BackendError> {
        // `FileKeyMemory::open` would create a missing directory: a slot
        // whose directory is gone is empty instead.
        if !self.present() {
            return Err(BackendError::NotPresent);
        }
        FileKeyMemory::open(&self.dir).map_err(|err| match err.kind() {
            ErrorKind::WouldBlock => BackendError::Busy,
            _ => BackendError::Io(err),
        })
    }
}

/// A SoftHSM token ([`SoftHsmKeyMemory`]) as the module's key memory.
///
/// The token is found by its label in `library`; the SoftHSM user PIN, the
/// provider's credential for the token (not the module's user PIN, which
/// `C_Login` checks), is read from `pin_file` at every connection and
/// dropped (zeroized) with the key memory. SoftHSM finds its token
/// directory through `SOFTHSM2_CONF`, read once per process.
#[derive(Debug, Clone)]
pub struct SoftHsmSource {
    library: Option<PathBuf>,
    token_label: String,
    pin_file: PathBuf,
}

impl SoftHsmSource {
    /// The token labelled `token_label` of `library` (`None`: no library was
    /// found, and the slot stays empty), unlocked with the PIN in `pin_file`.
    pub fn new(library: Option<PathBuf>, token_label: &str, pin_file: impl AsRef<Path>) -> Self {
        Self {
            library,
            token_label: token_label.to_owned(),
            pin_file: pin_file.as_ref().to_path_buf(),
        }
    }
}

impl KeyMemorySource for SoftHsmSource {
    type Memory = SoftHsmKeyMemory;

    fn description(&self) -> String {
        format!("Imprint SoftHSM module {}", self.token_label)
    }

    fn present(&self) -> bool {
        self.library
            .as_deref()
            .is_some_and(|library| token_present(library, &self.token_label))
    }

    fn open(&self) -> Result<SoftHsmKeyMemory, BackendError> {
        let library = self.library.as_deref().ok_or(BackendError::NotPresent)?;
        let pin = read_pin_file(&self.pin_file)?;
        SoftHsmKeyMemory::open(library, &self.token_label, &pin).map_err(|err| match err {
            SoftHsmError::TokenNotFound(_) | SoftHsmError::Load { .. } => BackendError::NotPresent,
            SoftHsmError::InUse(_) => BackendError::Busy,
            other => BackendError::SoftHsm(other),
        })
    }
}

/// A slot whose module is the applet in this process.
pub struct InProcessDevice<S: KeyMemorySource> {
    source: S,
    last_present: bool,
    events: u32,
}

impl<S: KeyMemorySource> InProcessDevice<S> {
    /// The slot of the module whose key memory `source` opens.
    pub fn new(source: S) -> Self {
        let last_present = source.present();
        Self {
            source,
            last_present,
            events: 0,
        }
    }
}

impl<S: KeyMemorySource> Device for InProcessDevice<S> {
    fn describe(&self) -> SlotDescription {
        SlotDescription {
            description: self.source.description(),
            manufacturer: "Imprint".into(),
            removable: true,
            hardware: false,
        }
    }

    fn presence(&mut self) -> Presence {
        let present = self.source.present();
        if present != self.last_present {
            self.last_present = present;
            self.events = self.events.wrapping_add(1);
        }
        Presence {
            present,
            events: self.events,
        }
    }

    fn connect(&mut self) -> Result<Box<dyn Connection>, BackendError> {
        let memory = self.source.open()?;
        let applet = Applet::new(memory)?;
        Ok(Box::new(InProcessConnection {
            transport: InProcessTransport::new(applet),
        }))
    }
}

/// A powered in-process module.
struct InProcessConnection<K: KeyMemory> {
    transport: InProcessTransport<K>,
}

impl<K: KeyMemory + Send> Connection for InProcessConnection<K> {
    fn exchange(
        &mut self,
        exchange: &mut dyn FnMut(&mut dyn Transport) -> Result<(), Error>,
    ) -> Result<(), Error> {
        exchange(&mut self.transport)
    }
}
