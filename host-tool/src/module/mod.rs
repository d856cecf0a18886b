//! A file-backed module reached in-process: the stand-in for a card in a
//! reader, used by the command line and the demo.
//!
//! ```text
//!  DIR ─▶ FileKeyMemory ─▶ Applet::new ─▶ InProcessTransport ─▶ CardLink ─▶ host flows
//! ```
//!
//! Each [`open`] is a fresh power-up: the applet reloads its committed state
//! from the directory. [`open_softhsm`] does the same with a SoftHSM token as
//! the key memory:
//!
//! ```text
//!  softhsm:LABEL ─▶ SoftHsmKeyMemory (library, token LABEL, SoftHSM user PIN) ─▶ Applet::new ─▶ …
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use imprint_apdu::Applet;
use imprint_apdu::host::status::{ModuleStatus, read_status};
use imprint_apdu::host::{CardLink, InProcessTransport};
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::pki::Certificate;
use imprint_apdu::proto::Lifecycle;
use imprint_pkcs11::softhsm::{SoftHsmKeyMemory, find_library, read_pin_file};

use crate::HostError;

#[cfg(test)]
mod tests;

/// A link to a file-backed module running in this process.
pub type ModuleLink = CardLink<InProcessTransport<FileKeyMemory>>;

/// Powers up the module in `dir`, creating the directory (0700) if `create`.
pub fn open(dir: &Path, create: bool) -> Result<ModuleLink, HostError> {
    if !create && !dir.is_dir() {
        return Err(HostError::NoModule(dir.to_path_buf()));
    }
    let memory = FileKeyMemory::open(dir).map_err(|source| HostError::Io {
        op: "open the module directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let applet = Applet::new(memory).map_err(|source| HostError::KeyMemory {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(CardLink::new(InProcessTransport::new(applet)))
}

/// A link to a module running in this process over a SoftHSM token.
pub type SoftHsmLink = CardLink<InProcessTransport<SoftHsmKeyMemory>>;

/// The prefix of `--module softhsm:LABEL`.
pub const SOFTHSM_PREFIX: &str = "softhsm:";

/// Powers up the module whose key memory is the SoftHSM token labelled
/// `label`, logging in to the token with the SoftHSM user PIN in `pin_file`.
/// The library is [`find_library`]'s (`IMPRINT_SOFTHSM_LIB` overrides);
/// SoftHSM finds the token through `SOFTHSM2_CONF`.
pub fn open_softhsm(label: &str, pin_file: &Path) -> Result<SoftHsmLink, HostError> {
    let library = find_library().ok_or(HostError::NoSoftHsmLibrary)?;
    let pin = read_pin_file(pin_file).map_err(|source| HostError::Io {
        op: "read the SoftHSM PIN file",
        path: pin_file.to_path_buf(),
        source,
    })?;
    let memory =
        SoftHsmKeyMemory::open(&library, label, &pin).map_err(|source| HostError::SoftHsm {
            label: label.to_owned(),
            source,
        })?;
    drop(pin);
    let applet = Applet::new(memory).map_err(|source| HostError::KeyMemory {
        path: PathBuf::from(format!("{SOFTHSM_PREFIX}{label}")),
        source,
    })?;
    Ok(CardLink::new(InProcessTransport::new(applet)))
}

/// Reads the module's public state.
pub fn status(dir: &Path) -> Result<ModuleStatus, HostError> {
    let mut link = open(dir, false)?;
    Ok(read_status(&mut link)?)
}

/// The module certificate followed by the unit's certificate issued by the
/// central system: the chain a relying party verifies up to the central root.
/// Fails unless the module is OPERATING.
pub fn operating_chain(status: &ModuleStatus) -> Result<[Certificate; 2], HostError> {
    let serial = status
        .serial
        .clone()
        .unwrap_or_else(|| "without serial".to_owned());
    if status.info.lifecycle != Lifecycle::Operating {
        return Err(HostError::Lifecycle {
            serial,
            expected: Lifecycle::Operating,
            found: status.info.lifecycle,
        });
    }
    let missing = |what| HostError::MissingCertificate {
        serial: serial.clone(),
        what,
    };
    let module = status
        .module_cert
        .clone()
        .ok_or_else(|| missing("module certificate"))?;
    let unit = status
        .unit_cert
        .clone()
        .ok_or_else(|| missing("unit certificate issued by the central system"))?;
    Ok([module, unit])
}

/// Files of the module's key memory whose mode is not 0600, with their modes.
pub fn loose_files(dir: &Path) -> Result<Vec<(PathBuf, u32)>, HostError> {
    let io = |op| {
        move |source| HostError::Io {
            op,
            path: dir.to_path_buf(),
            source,
        }
    };
    let mut loose = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("list"))? {
        let entry = entry.map_err(io("list"))?;
        let metadata = entry.metadata().map_err(io("inspect a file in"))?;
        let mode = metadata.permissions().mode() & 0o777;
        if metadata.is_file() && mode != 0o600 {
            loose.push((entry.path(), mode));
        }
    }
    Ok(loose)
}
