//! Reading a TAN typed at the host (claim 13, when the reader has no PIN
//! pad): on a terminal the echo is switched off while it is typed, so the
//! TAN never shows on the screen; from a pipe one line is read.
//!
//! ```text
//!  terminal ─▶ echo off ─▶ read line ─▶ echo restored ─▶ Zeroizing<Vec<u8>>
//!  pipe     ─────────────▶ read line ───────────────────▶ Zeroizing<Vec<u8>>
//! ```

use std::io::{BufRead, IsTerminal, Write};

use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
use zeroize::Zeroizing;

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
