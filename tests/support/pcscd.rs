//! The PC/SC test bench shared by every suite that runs through the machine's
//! `pcscd` (the host tool's and the PKCS#11 provider's): vpcd readers, the
//! lock file that gives a test exclusive use of a reader across processes,
//! starting `pcscd` when root may, the skip rule (skip loudly outside CI,
//! fail under `CI=true`), and the applet served as a card from a thread.
//!
//! ```text
//!  test ──PC/SC──▶ pcscd ──vpcd reader "Virtual PCD 00 0n"──TCP :35963+n──▶ card (thread or process) ──▶ module dir
//! ```

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use imprint_apdu::Applet;
use imprint_apdu::keymem::file::FileKeyMemory;
use imprint_apdu::vpcd::{self, ServeOptions, StopHandle, VirtualCard};

/// pcscd's client socket.
pub const PCSCD_SOCKET: &str = "/run/pcscd/pcscd.comm";
/// The vpcd reader driver (Debian: vsmartcard-vpcd).
pub const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
/// The first vpcd reader's port; reader `n` listens on `BASE_PORT + n`.
pub const BASE_PORT: u16 = 35963;
/// How long the bench waits for pcscd or a card.
pub const WAIT: Duration = Duration::from_secs(15);

/// A vpcd reader: its PC/SC name and the TCP port the card connects to.
#[derive(Clone, Debug)]
pub struct Reader {
    /// PC/SC reader name.
    pub name: String,
    /// The port a card connects to.
    pub port: u16,
}

impl Reader {
    /// Reader `n` of the vpcd driver.
    pub fn index(n: u16) -> Self {
        Self {
            name: format!("Virtual PCD 00 {n:02}"),
            port: BASE_PORT + n,
        }
    }

    /// The reader the tests use: `IMPRINT_TEST_VPCD_READER` (default 1).
    pub fn for_tests() -> Self {
        let n = std::env::var("IMPRINT_TEST_VPCD_READER")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        Self::index(n)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Exclusive use of this reader among cooperating test processes (and
    /// threads: each call opens the file anew). Released when dropped.
    pub fn lock(&self) -> File {
        let path = std::env::temp_dir().join(format!("imprint-vpcd-{}.lock", self.port));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("opening {}: {err}", path.display()));
        file.lock()
            .unwrap_or_else(|err| panic!("locking {}: {err}", path.display()));
        file
    }
}

/// Whether `CI=true`.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// Skips the test (returns `None`) with a reason on standard error, or fails
/// it under `CI=true`, where every test must run.
pub fn skip(reason: &str) -> Option<()> {
    assert!(!ci(), "{reason} (CI=true: the PC/SC tests must run)");
    eprintln!("SKIPPED: {reason}");
    None
}

/// Whether this process runs as root (effective UID 0).
pub fn is_root() -> bool {
    // The effective UID is the second field of "Uid:" (no libc call needed).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// `program` on `PATH`, or in `/usr/sbin` (where Debian puts `pcscd`).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Makes sure `pcscd` runs with the vpcd driver, starting it if we may.
/// `None`: skip the test (a failure under `CI=true`).
pub fn pcsc_stack() -> Option<()> {
    static START: Mutex<()> = Mutex::new(());
    let _guard = START
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if find_program("pcscd").is_none() {
        return skip("`pcscd` is not installed (Debian: pcscd)");
    }
    if !Path::new(VPCD_DRIVER).exists() {
        return skip("the vpcd reader driver is not installed (Debian: vsmartcard-vpcd)");
    }
    if !pcscd_alive() {
        if !is_root() {
            return skip("pcscd is not running, and only root may start it");
        }
        start_pcscd();
    }
    Some(())
}

/// Whether a pcscd answers on its socket (a socket file left by a pcscd that
/// died does not count).
pub fn pcscd_alive() -> bool {
    std::os::unix::net::UnixStream::connect(PCSCD_SOCKET).is_ok()
}

/// Starts `pcscd -f` and waits until it answers. In a session of its own
/// (setsid): one pcscd serves the machine and must outlive this test process.
/// A thread reaps it should it exit while the tests run.
pub fn start_pcscd() {
    // A socket left by a pcscd that died would make the new one's clients wait.
    if !pcscd_alive() {
        let _ = std::fs::remove_file(PCSCD_SOCKET);
    }
    let mut pcscd = Command::new("setsid")
        .arg(find_program("pcscd").expect("pcscd is installed"))
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("starting pcscd -f");
    thread::spawn(move || pcscd.wait());
    wait_until(WAIT, "pcscd's socket", pcscd_alive);
}

/// Polls `done` every 50 ms; fails the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The applet over a module directory, served as a card in a vpcd reader
/// from a thread of this process.
pub struct ThreadCard {
    stop: StopHandle,
    thread: JoinHandle<()>,
}

impl ThreadCard {
    /// Opens the module in `dir` and connects it to `reader`'s port.
    pub fn insert(reader: &Reader, dir: &Path) -> Self {
        let memory = FileKeyMemory::open(dir).expect("module");
        let mut card = VirtualCard::new(Applet::new(memory).expect("applet"));
        let options = ServeOptions::default();
        let stop = options.stop.clone();
        let addr = SocketAddr::from(([127, 0, 0, 1], reader.port));
        let thread = thread::spawn(move || {
            vpcd::serve(addr, &mut card, &options, &mut |_| {});
        });
        Self { stop, thread }
    }

    /// Disconnects the card (as pulling it out) and waits for its thread.
    pub fn remove(self) {
        self.stop.stop();
        self.thread.join().expect("card thread");
    }
}
