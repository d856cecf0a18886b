//! The configuration file: which backends give which slots.
//!
//! The file is TOML, named by the environment variable [`CONF_ENV`]; without
//! it, [`DEFAULT_PATH`] is read if it exists, and otherwise the built-in
//! default applies: the card backend on every PC/SC reader.
//!
//! ```toml
//! # One slot per PC/SC reader (all readers when `readers` is absent).
//! [card]
//! readers = ["Virtual PCD 00 00"]
//! short_apdus = false
//!
//! # One slot per in-process module, in this order after the readers.
//! [[module]]
//! kind = "file"
//! path = "/var/lib/imprint/module1"
//!
//! # A SoftHSM token as the key memory (SOFTHSM2_CONF must be set).
//! [[module]]
//! kind = "softhsm"
//! token_label = "imprint module"
//! pin_file = "/etc/imprint/softhsm-pin"
//! library = "/usr/lib/softhsm/libsofthsm2.so"   # absent: the usual places
//! ```
//!
//! A file without a `[card]` table has no card slots. Unknown keys are errors.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The environment variable that names the configuration file.
pub const CONF_ENV: &str = "IMPRINT_PKCS11_CONF";

/// The file read when [`CONF_ENV`] is not set, if it exists.
pub const DEFAULT_PATH: &str = "/etc/imprint/pkcs11.toml";

/// A configuration error: the file cannot be read or does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by the environment or the default path cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or wrong keys.
    #[error("invalid configuration file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
}

/// The provider's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cards in PC/SC readers, if present.
    pub card: Option<CardConfig>,
    /// Modules run in-process, one slot each.
    #[serde(default)]
    pub module: Vec<ModuleConfig>,
}

/// The card backend: one slot per PC/SC reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardConfig {
    /// Only these readers (exact names); every reader when absent.
    pub readers: Option<Vec<String>>,
    /// Short APDUs only (command chaining and GET RESPONSE), for readers
    /// that mishandle extended length without refusing it.
    #[serde(default)]
    pub short_apdus: bool,
}

/// An in-process module: the applet runs inside the provider with a key
/// memory of the given kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModuleConfig {
    /// A module directory (`imprint_apdu::keymem::file::FileKeyMemory`), as
    /// the host tool's `--module DIR` uses: for development and tests.
    File {
        /// The module directory.
        path: PathBuf,
    },
    /// A SoftHSM token (`crate::softhsm::SoftHsmKeyMemory`). SoftHSM finds
    /// its tokens through the `SOFTHSM2_CONF` environment variable of the
    /// application's process, read once when the library is initialized.
    Softhsm {
        /// The PKCS#11 library; absent: [`crate::softhsm::find_library`].
        library: Option<PathBuf>,
        /// The token's label.
        token_label: String,
        /// A file holding the token's SoftHSM user PIN (one trailing newline
        /// is ignored). Never inline: this configuration is read by every
        /// application that loads the provider and is usually world-readable,
        /// while the PIN file can be readable by the service's user only.
        pin_file: PathBuf,
    },
}

impl Default for Config {
    /// The built-in default: the card backend on every reader.
    fn default() -> Self {
        Self {
            card: Some(CardConfig::default()),
            module: Vec::new(),
        }
    }
}

impl Config {
    /// Parses a configuration from TOML text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Reads the configuration file at `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The configuration in force: the file named by [`CONF_ENV`], else
    /// [`DEFAULT_PATH`] if it exists, else [`Config::default`].
    pub fn from_environment() -> Result<Self, ConfigError> {
        match std::env::var_os(CONF_ENV) {
            Some(path) if !path.is_empty() => Self::read(Path::new(&path)),
            _ if Path::new(DEFAULT_PATH).exists() => Self::read(Path::new(DEFAULT_PATH)),
            _ => Ok(Self::default()),
        }
    }
}

#[cfg(test)]
mod tests;
