//! Logging with `tracing`: off unless [`LOG_ENV`] is set.
//!
//! `IMPRINT_PKCS11_LOG` takes a `tracing_subscriber` filter (`debug`,
//! `imprint_pkcs11=trace`, …). Lines go to standard error, or appended to the
//! file named by [`LOG_FILE_ENV`]. The provider logs function names, handles,
//! mechanisms, return values and status words; never a PIN, a digest or data to
//! sign, a signature, or key material.

use std::fs::OpenOptions;
use std::sync::{Mutex, Once};

use tracing_subscriber::EnvFilter;

/// The environment variable that enables logging and sets its filter.
pub const LOG_ENV: &str = "IMPRINT_PKCS11_LOG";

/// The environment variable naming a file to append log lines to (instead
/// of standard error).
pub const LOG_FILE_ENV: &str = "IMPRINT_PKCS11_LOG_FILE";

/// Installs the subscriber once per process, if [`LOG_ENV`] is set. Later
/// calls do nothing. A host that already installed a global subscriber for
/// this library's copy of `tracing` keeps it.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Some(filter) = std::env::var_os(LOG_ENV) else {
            return;
        };
        let filter = EnvFilter::new(filter.to_string_lossy());
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_thread_ids(true)
            .with_ansi(false);
        let file = std::env::var_os(LOG_FILE_ENV)
            .and_then(|path| OpenOptions::new().create(true).append(true).open(path).ok());
        // Errors are ignored: another subscriber is already installed.
        let _ = match file {
            Some(file) => builder.with_writer(Mutex::new(file)).try_init(),
            None => builder.with_writer(std::io::stderr).try_init(),
        };
    });
}
