//! The applet as a virtual smartcard behind vsmartcard's `vpcd` reader driver.
//!
//! ```text
//!  PC/SC client        pcscd + vpcd driver             this module
//!  (opensc-tool,      ┌──────────────────────┐        ┌────────────────────────────────────┐
//!   imprint, NSS) ───▶│ "Virtual PCD 00 0n"  │◀──TCP──┤ serve: connect, NODELAY,           │
//!                     │ listens on 35963 + n │  len16 │   reconnect with backoff           │
//!                     └──────────────────────┘ +body  │  └▶ run_connection: frames,        │
//!                                                     │     QUICKACK before each read      │
//!                                                     │     └▶ VirtualCard::handle_message │
//!                                                     │         ├ 1 byte: power/reset/ATR  │
//!                                                     │         └ APDU: Applet::process    │
//!                                                     └────────────────────────────────────┘
//! ```
//!
//! The card is the TCP *client*: the reader driver inside `pcscd` listens, and
//! a card appears inserted while it is connected. Every message in either
//! direction is a 2-byte big-endian length followed by that many bytes. A
//! 1-byte message from the reader is a control code ([`Control`]): power off,
//! power on, reset, or "send your ATR" (answered as an ordinary message). Any
//! longer message is a command APDU, answered with the response APDU.
//!
//! [`VirtualCard`] is the sans-IO part: it maps one message to an optional
//! answer, with a card's semantics: power off, power on and reset drop the
//! applet's volatile state ([`Applet::reset`]: the secure channel, the
//! selection, pending chains and responses) and keep what the key memory has
//! committed. [`run_connection`] and [`serve`] move the frames over TCP.
//!
//! # Latency
//!
//! Older `vpcd` builds write the length and the body of a frame with two
//! `send` calls. Against a card that reads with the default socket options,
//! Nagle's algorithm and delayed acknowledgements turn that into tens of
//! milliseconds per APDU. Both ends of our socket are tuned: `TCP_NODELAY` is
//! set once, and on Linux `TCP_QUICKACK` is re-armed before every read (the
//! kernel clears it on its own), which keeps a round trip through `pcscd` well
//! under a millisecond. Each frame we send is written with a single call.
//! With Debian's `vpcd` 3.3, a SELECT through `pcscd` takes a median of about
//! 44 ms without `TCP_QUICKACK` (with or without `TCP_NODELAY`) and well under
//! 0.2 ms with it.
//!
//! # `pcscd` quirks worth knowing
//!
//! - `pcscd` asks for the ATR about every 400 ms to see whether the card is
//!   still there, so a card that vanished is noticed only then.
//! - When a card vanishes in the middle of a command, the client gets an
//!   *empty* response rather than an error.
//! - If a client then resets the vanished card, `pcscd` already shows the
//!   reader empty; a new card that connects before the next presence poll is
//!   then never noticed (the poll still finds "a card"). Restart a card
//!   process only after the reader has looked empty for a second or so.
//! - `vpcd` keeps an accept backlog: a second card connecting to a busy
//!   reader's port succeeds at TCP level and waits, unserved, for the first
//!   to leave.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::applet::Applet;
use crate::keymem::KeyMemory;
use crate::proto;

#[cfg(test)]
mod tests;

/// Where Debian's `vpcd` configuration puts its first reader ("Virtual PCD 00 00").
/// The second reader ("Virtual PCD 00 01") listens on the next port, 35964.
pub const DEFAULT_ADDR: &str = "127.0.0.1:35963";

/// The largest message body a 2-byte length can announce.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// The historical bytes of our ATR: "IMPRINT" and the command-set version.
pub const HISTORICAL_BYTES: [u8; 8] = [
    b'I',
    b'M',
    b'P',
    b'R',
    b'I',
    b'N',
    b'T',
    proto::COMMAND_SET_VERSION,
];

/// The card's answer to reset: `3B 88 80 01` + [`HISTORICAL_BYTES`] + TCK.
///
/// - `3B`: TS, direct convention.
/// - `88`: T0, TD1 follows, 8 historical bytes.
/// - `80`: TD1, TD2 follows, protocol T=0 field (no interface bytes).
/// - `01`: TD2, protocol T=1, nothing follows.
/// - TCK: the XOR of T0 through the last historical byte ([`check_character`]),
///   mandatory because T=1 is offered.
///
/// This is the shape PC/SC uses for contactless cards, and `pcscd` reports
/// the card as T=1.
pub const ATR: [u8; 13] = build_atr();

const fn build_atr() -> [u8; 13] {
    let mut atr = [0u8; 13];
    atr[0] = 0x3B;
    atr[1] = 0x80 | HISTORICAL_BYTES.len() as u8;
    atr[2] = 0x80;
    atr[3] = 0x01;
    let mut i = 0;
    while i < HISTORICAL_BYTES.len() {
        atr[4 + i] = HISTORICAL_BYTES[i];
        i += 1;
    }
    let mut tck = 0u8;
    let mut i = 1;
    while i < 12 {
        tck ^= atr[i];
        i += 1;
    }
    atr[12] = tck;
    atr
}

/// The ATR check character TCK for `t0_to_last`: the bytes from T0 through
/// the last historical byte (TS excluded). With TCK appended, the XOR of T0
/// through TCK is zero.
pub fn check_character(t0_to_last: &[u8]) -> u8 {
    t0_to_last.iter().fold(0, |acc, byte| acc ^ byte)
}

/// A control code: the body of a 1-byte message from the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `00`: the reader removes power. Volatile state is lost.
    PowerOff,
    /// `01`: the reader applies power (a cold reset).
    PowerOn,
    /// `02`: a warm reset. Volatile state is lost.
    Reset,
    /// `04`: the reader asks for the ATR, answered as an ordinary message.
    /// `pcscd` polls it (about every 400 ms) to see whether the card is present.
    GetAtr,
}

impl Control {
    /// The control code for `byte`, if it is one `vpcd` sends.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::PowerOff),
            1 => Some(Self::PowerOn),
            2 => Some(Self::Reset),
            4 => Some(Self::GetAtr),
            _ => None,
        }
    }

    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Self::PowerOff => 0,
            Self::PowerOn => 1,
            Self::Reset => 2,
            Self::GetAtr => 4,
        }
    }
}

/// One message from the reader, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// An empty body. `vpcd` never sends one; it is ignored.
    Empty,
    /// A control code.
    Control(Control),
    /// A 1-byte body that is no control code we know; it is ignored.
    UnknownControl(u8),
    /// A command APDU (two bytes or more; the applet judges its shape).
    Apdu(&'a [u8]),
}

impl<'a> Message<'a> {
    /// Classifies a message body.
    pub fn parse(payload: &'a [u8]) -> Self {
        match payload {
            [] => Self::Empty,
            [byte] => Control::from_byte(*byte).map_or(Self::UnknownControl(*byte), Self::Control),
            apdu => Self::Apdu(apdu),
        }
    }
}

/// What a virtual card runs: an APDU processor with volatile state that a
/// power cycle drops. The applet is one; a runtime that shares the applet
/// with a network interface of its own (claim 15) is another.
pub trait CardApplet {
    /// Processes one command APDU and returns the response APDU.
    fn process(&mut self, apdu: &[u8]) -> Vec<u8>;
    /// Power off, power on or reset: the volatile state is gone.
    fn reset(&mut self);
}

impl<K: KeyMemory> CardApplet for Applet<K> {
    fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        Applet::process(self, apdu)
    }

    fn reset(&mut self) {
        Applet::reset(self);
    }
}

/// The identification unit (claims 16–18) as a card of its own, for a
/// second reader.
impl<S: crate::idunit::IdUnitStore> CardApplet for crate::idunit::IdUnit<S> {
    fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        crate::idunit::IdUnit::process(self, apdu)
    }

    fn reset(&mut self) {
        crate::idunit::IdUnit::reset(self);
    }
}

/// The applet dressed as a card: it answers `vpcd`'s messages.
pub struct VirtualCard<A: CardApplet> {
    applet: A,
    atr: Vec<u8>,
    powered: bool,
    apdus: u64,
}

impl<A: CardApplet> VirtualCard<A> {
    /// A card running `applet` with our [`ATR`]. It starts unpowered.
    pub fn new(applet: A) -> Self {
        Self::with_atr(applet, ATR.to_vec())
    }

    /// A card running `applet` that answers with another ATR (tests, or a
    /// deployment that must look like a particular product).
    pub fn with_atr(applet: A, atr: Vec<u8>) -> Self {
        Self {
            applet,
            atr,
            powered: false,
            apdus: 0,
        }
    }

    /// The answer to reset this card sends.
    pub fn atr(&self) -> &[u8] {
        &self.atr
    }

    /// The applet.
    pub fn applet(&self) -> &A {
        &self.applet
    }

    /// The applet, mutably.
    pub fn applet_mut(&mut self) -> &mut A {
        &mut self.applet
    }

    /// Takes the applet back.
    pub fn into_applet(self) -> A {
        self.applet
    }

    /// Whether the reader has powered the card (power on, reset or an APDU
    /// since the last power off or removal).
    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// How many command APDUs this card has processed since it was made.
    pub fn apdus_processed(&self) -> u64 {
        self.apdus
    }

    /// The card leaves the reader (the connection ended): power is lost, and
    /// with it the volatile state.
    pub fn remove(&mut self) {
        self.powered = false;
        self.applet.reset();
    }

    /// Handles one message body from the reader and returns the body to send
    /// back, if the message expects one (an ATR request or an APDU).
    ///
    /// Power off, power on and reset drop the applet's volatile state and
    /// answer nothing. Empty bodies and unknown control codes are ignored.
    /// `vpcd` sequences power before APDUs; an APDU that arrives while the
    /// card is unpowered is still answered, as if power had been applied.
    pub fn handle_message(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        match Message::parse(payload) {
            Message::Empty | Message::UnknownControl(_) => None,
            Message::Control(Control::GetAtr) => Some(self.atr.clone()),
            Message::Control(Control::PowerOff) => {
                self.remove();
                None
            }
            Message::Control(Control::PowerOn | Control::Reset) => {
                self.applet.reset();
                self.powered = true;
                None
            }
            Message::Apdu(apdu) => {
                self.powered = true;
                self.apdus += 1;
                Some(self.applet.process(apdu))
            }
        }
    }
}

/// Why a `vpcd` connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VpcdError {
    /// The socket failed.
    #[error("vpcd connection i/o error: {0}")]
    Io(#[from] io::Error),
    /// The reader closed the connection in the middle of a frame.
    #[error("vpcd closed the connection in the middle of a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes of the frame part received.
        got: usize,
        /// Bytes it should have had.
        expected: usize,
    },
    /// A body too large for the 2-byte length (at most [`MAX_PAYLOAD`] bytes).
    #[error("a {len}-byte message does not fit a vpcd frame (at most {MAX_PAYLOAD} bytes)")]
    FrameTooLarge {
        /// The body's length.
        len: usize,
    },
}

/// Frames `payload`: its 2-byte big-endian length, then the bytes.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, VpcdError> {
    let len = u16::try_from(payload.len())
        .map_err(|_| VpcdError::FrameTooLarge { len: payload.len() })?;
    let mut frame = Vec::with_capacity(2 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// How a connection that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The reader closed the connection between frames (`pcscd` stopped, or
    /// [`StopHandle::stop`] shut the socket down).
    Closed,
    /// The fault-injection limit was reached: the last APDU was processed (and
    /// committed whatever it commits) but its response was not sent.
    FailInjected,
}

/// Something that happened on the way; [`serve`] reports these so the caller
/// can log them.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Connected to the reader's port (the card is inserted).
    Connected {
        /// The reader's address.
        addr: SocketAddr,
    },
    /// A connection attempt failed (`pcscd` not running, or restarting).
    ConnectFailed {
        /// The reader's address.
        addr: SocketAddr,
        /// Consecutive failed attempts, from 1.
        attempt: u32,
        /// Why.
        error: &'a io::Error,
    },
    /// The connection ended (the card is removed); `error` says why if it failed.
    Disconnected {
        /// The failure, or `None` for a close between frames.
        error: Option<&'a VpcdError>,
    },
    /// Waiting before the next connection attempt.
    Reconnecting {
        /// How long.
        delay: Duration,
        /// Consecutive failed attempts so far (0 right after a disconnect).
        attempt: u32,
    },
    /// A power or reset control code was handled (ATR requests are not reported).
    Control(Control),
    /// A message was ignored: an empty body or an unknown control code.
    Ignored {
        /// The message body.
        payload: &'a [u8],
    },
}

/// Where [`serve`] and [`run_connection`] report [`Event`]s.
pub type Events<'e> = dyn FnMut(&Event<'_>) + 'e;

/// Serves `card` on one accepted connection until the reader closes it.
///
/// Sets `TCP_NODELAY`, re-arms `TCP_QUICKACK` before each read, and answers
/// every message that expects an answer. When `fail_after_apdus` is
/// `Some(n)` and the card has processed `n` APDUs in all, the connection ends
/// with [`ConnectionEnd::FailInjected`] without sending that APDU's response
/// (with `n = 0`, at the first APDU, unprocessed). However the connection
/// ends, the card is then [removed](VirtualCard::remove): its volatile state
/// is gone.
pub fn run_connection<A: CardApplet>(
    mut stream: TcpStream,
    card: &mut VirtualCard<A>,
    fail_after_apdus: Option<u64>,
    events: &mut Events<'_>,
) -> Result<ConnectionEnd, VpcdError> {
    let result = exchange(&mut stream, card, fail_after_apdus, events);
    card.remove();
    result
}

fn exchange<A: CardApplet>(
    stream: &mut TcpStream,
    card: &mut VirtualCard<A>,
    fail_after_apdus: Option<u64>,
    events: &mut Events<'_>,
) -> Result<ConnectionEnd, VpcdError> {
    stream.set_nodelay(true)?;
    let limit_reached = |card: &VirtualCard<A>| {
        fail_after_apdus.is_some_and(|limit| card.apdus_processed() >= limit)
    };
    let mut header = [0u8; 2];
    let mut payload = Vec::new();
    loop {
        match read_full(stream, &mut header)? {
            0 => return Ok(ConnectionEnd::Closed),
            2 => {}
            got => return Err(VpcdError::Truncated { got, expected: 2 }),
        }
        let len = usize::from(u16::from_be_bytes(header));
        payload.resize(len, 0);
        let got = read_full(stream, &mut payload)?;
        if got < len {
            return Err(VpcdError::Truncated { got, expected: len });
        }
        let message = Message::parse(&payload);
        let is_apdu = matches!(message, Message::Apdu(_));
        match message {
            Message::Control(Control::GetAtr) | Message::Apdu(_) => {}
            Message::Control(control) => events(&Event::Control(control)),
            Message::Empty | Message::UnknownControl(_) => {
                events(&Event::Ignored { payload: &payload });
            }
        }
        if is_apdu && limit_reached(card) {
            return Ok(ConnectionEnd::FailInjected);
        }
        let answer = card.handle_message(&payload);
        if is_apdu && limit_reached(card) {
            return Ok(ConnectionEnd::FailInjected);
        }
        if let Some(answer) = answer {
            stream.write_all(&encode_frame(&answer)?)?;
        }
    }
}

/// Fills `buf` from `stream`, re-arming `TCP_QUICKACK` before every read.
/// Returns how many bytes arrived before end of stream (`buf.len()` if all).
fn read_full(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        rearm_quickack(stream)?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Linux leaves quick-ack mode on its own after a while, so the flag is set
/// again before each read: the reader's next segment is acknowledged at once
/// instead of after the delayed-ACK timer, which would stall its second send.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn rearm_quickack(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).set_tcp_quickack(true)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn rearm_quickack(_stream: &TcpStream) -> io::Result<()> {
    Ok(())
}

/// Asks a running [`serve`] to return: wakes it from a backoff sleep or shuts
/// its connection down. Clones share one flag; a stopped handle stays stopped.
#[derive(Clone, Default)]
pub struct StopHandle {
    inner: Arc<StopInner>,
}

#[derive(Default)]
struct StopInner {
    state: Mutex<StopState>,
    wake: Condvar,
}

#[derive(Default)]
struct StopState {
    stopped: bool,
    connection: Option<TcpStream>,
}

impl core::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StopHandle")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl StopHandle {
    /// A handle that has not been stopped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the server: no new connection is made, and the current one is
    /// shut down (an APDU being processed still finishes; its response may be
    /// lost). Safe to call from any thread, any number of times.
    pub fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        if let Some(connection) = state.connection.take() {
            // The server notices at its next read; the socket may be gone already.
            let _ = connection.shutdown(Shutdown::Both);
        }
        drop(state);
        self.inner.wake.notify_all();
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    fn lock(&self) -> MutexGuard<'_, StopState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers a handle on the connection so `stop` can shut it down.
    /// Returns false (and shuts it down) if already stopped.
    fn attach(&self, stream: &TcpStream) -> io::Result<bool> {
        let clone = stream.try_clone()?;
        let mut state = self.lock();
        if state.stopped {
            let _ = clone.shutdown(Shutdown::Both);
            return Ok(false);
        }
        state.connection = Some(clone);
        Ok(true)
    }

    fn detach(&self) {
        self.lock().connection = None;
    }

    /// Sleeps for `delay` unless stopped first. Returns whether stopped.
    fn sleep(&self, delay: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .inner
            .wake
            .wait_timeout_while(state, delay, |state| !state.stopped)
            .unwrap_or_else(PoisonError::into_inner);
        state.stopped
    }
}

/// How [`serve`] connects and reconnects.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Wait before the first reconnection attempt; doubled after each failure.
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Fault injection for power-loss tests: see [`run_connection`].
    pub fail_after_apdus: Option<u64>,
    /// Stops the server from another thread (a signal handler, a test).
    pub stop: StopHandle,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            fail_after_apdus: None,
            stop: StopHandle::new(),
        }
    }
}

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeOutcome {
    /// [`StopHandle::stop`] was called.
    Stopped,
    /// The fault-injection limit was reached: the last APDU was processed but
    /// its response was withheld. A card process should now exit at once,
    /// as if its power had been cut.
    FailInjected {
        /// APDUs processed in all.
        apdus: u64,
    },
}

/// Runs `card` as the card in the `vpcd` reader at `addr` until stopped.
///
/// Connects (the card is inserted), serves the connection with
/// [`run_connection`], and when the connection drops (the card is removed,
/// for instance because `pcscd` restarted) reconnects with exponential
/// backoff from [`ServeOptions::initial_backoff`] up to
/// [`ServeOptions::max_backoff`]. Connection failures are not errors: they
/// are reported through `events` and retried.
///
/// `vpcd` listens with an accept backlog, so while another card holds the
/// reader a connection attempt still succeeds; `vpcd` then talks to this card
/// only when the other leaves.
pub fn serve<A: CardApplet>(
    addr: SocketAddr,
    card: &mut VirtualCard<A>,
    options: &ServeOptions,
    events: &mut Events<'_>,
) -> ServeOutcome {
    let stop = &options.stop;
    let mut attempt = 0u32;
    let mut delay = options.initial_backoff;
    loop {
        if stop.is_stopped() {
            return ServeOutcome::Stopped;
        }
        match TcpStream::connect_timeout(&addr, options.connect_timeout) {
            Ok(stream) => {
                attempt = 0;
                delay = options.initial_backoff;
                let result = match stop.attach(&stream) {
                    Ok(true) => {
                        events(&Event::Connected { addr });
                        let result = run_connection(stream, card, options.fail_after_apdus, events);
                        stop.detach();
                        result
                    }
                    Ok(false) => return ServeOutcome::Stopped,
                    Err(err) => Err(VpcdError::Io(err)),
                };
                match result {
                    Ok(ConnectionEnd::FailInjected) => {
                        return ServeOutcome::FailInjected {
                            apdus: card.apdus_processed(),
                        };
                    }
                    Ok(ConnectionEnd::Closed) => events(&Event::Disconnected { error: None }),
                    Err(error) => events(&Event::Disconnected {
                        error: Some(&error),
                    }),
                }
            }
            Err(error) => {
                attempt = attempt.saturating_add(1);
                events(&Event::ConnectFailed {
                    addr,
                    attempt,
                    error: &error,
                });
            }
        }
        if stop.is_stopped() {
            return ServeOutcome::Stopped;
        }
        events(&Event::Reconnecting { delay, attempt });
        if stop.sleep(delay) {
            return ServeOutcome::Stopped;
        }
        if attempt > 0 {
            delay = delay.saturating_mul(2).min(options.max_backoff);
        }
    }
}
