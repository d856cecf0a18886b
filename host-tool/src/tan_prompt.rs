//! Where the TAN is typed (claim 13): on the reader's PIN pad when it
//! offers secure PIN entry ([`choose_tan_entry`]), so the host never holds
//! the TAN; otherwise at the host, where on a terminal the echo is switched
//! off while it is typed, so the TAN never shows on the screen, and from a
//! pipe one line is read.
//!
//! ```text
//!  reader with FEATURE_VERIFY_PIN_DIRECT ─▶ TanEntry::PinPad (the reader builds the VERIFY)
//!  otherwise, or --tan-at-host           ─▶ TanEntry::Host:
//!    terminal ─▶ echo off ─▶ read line ─▶ echo restored ─▶ Zeroizing<Vec<u8>>
//!    pipe     ─────────────▶ read line ───────────────────▶ Zeroizing<Vec<u8>>
//! ```

use std::io::{BufRead, IsTerminal, Write};

use imprint_apdu::host::{Transport, TransportError};
use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
use zeroize::Zeroizing;

/// Where the user types the TAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TanEntry {
    /// On the reader's PIN pad (PC/SC secure PIN entry).
    PinPad,
    /// At the host ([`read_secret_line`]).
    Host,
}

/// The reader's PIN pad when `transport` offers secure PIN entry and the
/// operator did not ask for the host (`at_host`, `--tan-at-host`); the
/// host otherwise. The transport is asked only when the answer matters.
pub fn choose_tan_entry<T: Transport + ?Sized>(
    transport: &mut T,
    at_host: bool,
) -> Result<TanEntry, TransportError> {
    if !at_host && transport.has_pin_pad()? {
        Ok(TanEntry::PinPad)
    } else {
        Ok(TanEntry::Host)
    }
}

/// Prints `prompt` on stderr (terminal only) and reads one line from stdin
/// without echo; the line ending is removed and the buffer is wiped on drop.
pub fn read_secret_line(prompt: &str) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let stdin = std::io::stdin();
    let mut line = Zeroizing::new(Vec::with_capacity(32));
    if stdin.is_terminal() {
        let saved = tcgetattr(&stdin)?;
        let mut silent = saved.clone();
        silent.local_modes -= LocalModes::ECHO;
        let mut stderr = std::io::stderr();
        // The prompt is best-effort: a closed stderr must not stop the entry.
        let _ = write!(stderr, "{prompt}");
        let _ = stderr.flush();
        tcsetattr(&stdin, OptionalActions::Now, &silent)?;
        let read = stdin.lock().read_until(b'\n', &mut line);
        // Restore the echo whatever the read did.
        let restored = tcsetattr(&stdin, OptionalActions::Now, &saved);
        let _ = writeln!(stderr);
        read?;
        restored?;
    } else {
        stdin.lock().read_until(b'\n', &mut line)?;
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(line)
}
