//! Claim 15: the direct connection between module and unit that a relay only
//! sets up. Two halves live here:
//!
//! - [`NetworkedModule`], the runtime of a module with a network interface
//!   of its own (an HSM-backed software module, or `imprint-card --direct`).
//!   It answers APDUs from its local interface, and when the unit's offer
//!   arrives inside the channel it dials the unit and serves the rest of the
//!   personalization from that connection.
//! - [`DirectTickets`], the unit's table of runs waiting for their module's
//!   connection, by one-time ticket.
//!
//! ```text
//!  relay ──local APDUs──▶ NetworkedModule::process ─▶ Applet (shared)
//!                              │ offer taken after the APDU
//!                              └─▶ thread: TCP to address, DIRECT(ticket),
//!                                   COMMAND/RESPONSE ─▶ Applet (same channel)
//!  unit: DirectTickets::issue ─▶ offer in the channel ─▶ redeem(DIRECT) ─▶ run continues
//! ```

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imprint_apdu::Applet;
use imprint_apdu::direct::DirectConnection;
use imprint_apdu::host::transport::{Transport, TransportError, encode_extended};
use imprint_apdu::iso::{CLA_SM, Response};
use imprint_apdu::keymem::KeyMemory;
use imprint_apdu::pki::Certificate;
use imprint_apdu::proto::len;
use imprint_apdu::vpcd::CardApplet;
use imprint_central::client;
use imprint_central::wire::{DirectTicket, Frame, read_frame, write_frame};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::RemoteError;
#[cfg(test)]
use super::check_direct_address;

// ---------------------------------------------------------------------------
// The module's side.

/// How long a direct connection may last in all, in multiples of the
/// per-frame timeout: the unit's part after the hand-over is two or three
/// commands, so a peer still talking after this is not the unit.
const DIRECT_RUN_TIMEOUTS: u32 = 3;

/// How one direct connection of a module ended, as its runtime saw it.
#[derive(Debug, Clone)]
pub struct DirectRun {
    /// The unit's address the module dialed.
    pub address: String,
    /// Logical commands the unit sent over the direct connection.
    pub commands: u32,
    /// The unit's journal id of the installed certificate.
    pub journal_id: u64,
    /// The module certificate the unit reports.
    pub certificate: Certificate,
}

/// Reports a finished direct connection (the module's runtime logs it).
pub type DirectRunReporter = Arc<dyn Fn(&Result<DirectRun, RemoteError>) + Send + Sync>;

/// A module whose runtime has a network interface of its own (claim 15):
/// the applet, shared between its local interface and the direct
/// connections it opens. Clones share the module.
pub struct NetworkedModule<K: KeyMemory + Send + 'static> {
    applet: Arc<Mutex<Applet<K>>>,
    runs: Arc<Mutex<Vec<DirectRunThread>>>,
    timeout: Duration,
    reporter: Option<DirectRunReporter>,
}

/// The thread of one direct connection, until it is joined.
type DirectRunThread = JoinHandle<Option<Result<DirectRun, RemoteError>>>;

impl<K: KeyMemory + Send + 'static> Clone for NetworkedModule<K> {
    fn clone(&self) -> Self {
        Self {
            applet: Arc::clone(&self.applet),
            runs: Arc::clone(&self.runs),
            timeout: self.timeout,
            reporter: self.reporter.clone(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The applet never panics on input; a poisoned lock means a bug in a
    // caller, and the applet's committed state is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: KeyMemory + Send + 'static> NetworkedModule<K> {
    /// Runs `applet` with a network interface: it will accept the unit's
    /// direct-connection offer, and dial with `timeout` for every step.
    pub fn new(mut applet: Applet<K>, timeout: Duration) -> Self {
        applet.set_direct_capable(true);
        Self {
            applet: Arc::new(Mutex::new(applet)),
            runs: Arc::new(Mutex::new(Vec::new())),
            timeout,
            reporter: None,
        }
    }

    /// Hands every finished direct connection's outcome to `reporter` as it
    /// ends, instead of keeping it for [`Self::finish_direct_runs`]: for a
    /// runtime that runs for a long time (`imprint-card --direct`).
    pub fn with_reporter(mut self, reporter: DirectRunReporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Processes one APDU from the local interface; if it carried the unit's
    /// offer, opens the direct connection (in a thread of its own), bound
    /// to the channel that offered it.
    pub fn process(&self, apdu: &[u8]) -> Vec<u8> {
        let (response, offer) = {
            let mut applet = lock(&self.applet);
            let response = applet.process(apdu);
            let offer = applet.take_direct_connection();
            (response, offer.zip(applet.personalization_channel()))
        };
        if let Some((offer, channel)) = offer {
            let applet = Arc::clone(&self.applet);
            let timeout = self.timeout;
            let reporter = self.reporter.clone();
            let run = std::thread::spawn(move || {
                let outcome = run_direct(&applet, &offer, channel, timeout);
                match reporter {
                    Some(report) => {
                        report(&outcome);
                        None
                    }
                    None => Some(outcome),
                }
            });
            let mut runs = lock(&self.runs);
            // Finished threads of earlier channels need no keeping.
            runs.retain(|run| !run.is_finished() || self.reporter.is_none());
            runs.push(run);
        }
        response
    }

    /// Waits for every direct connection opened so far to end, and says how
    /// each did (those already handed to a reporter are not repeated).
    pub fn finish_direct_runs(&self) -> Vec<Result<DirectRun, RemoteError>> {
        let runs: Vec<_> = lock(&self.runs).drain(..).collect();
        runs.into_iter()
            .filter_map(|run| run.join().unwrap_or(Some(Err(RemoteError::DirectRunLost))))
            .collect()
    }

    /// Runs `inspect` on the applet (tools and tests read its state).
    pub fn with_applet<R>(&self, inspect: impl FnOnce(&mut Applet<K>) -> R) -> R {
        inspect(&mut lock(&self.applet))
    }
}

/// The module in a vpcd reader: the card's local interface.
impl<K: KeyMemory + Send + 'static> CardApplet for NetworkedModule<K> {
    fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        NetworkedModule::process(self, apdu)
    }

    fn reset(&mut self) {
        lock(&self.applet).reset();
    }
}

/// The module in this process: its local interface as a transport.
impl<K: KeyMemory + Send + 'static> Transport for NetworkedModule<K> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(NetworkedModule::process(self, command))
    }
}

/// Why the module's runtime ended a direct connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirectPathRefusal {
    /// A command not sealed under secure messaging: the direct connection
    /// carries the offering channel's commands, nothing else.
    #[error("a direct connection carries only the offering channel's sealed commands")]
    NotSealed,
    /// The channel that offered the connection is closed (reset, SELECT, a
    /// secure-messaging failure, or another channel opened).
    #[error("the channel that offered this direct connection is closed")]
    ChannelClosed,
    /// The peer kept the connection beyond its time.
    #[error("the direct connection lasted beyond its time")]
    TooLong,
}

/// Dials the unit at the offered address, presents the ticket, and answers
/// the unit's sealed commands in the offering channel `channel` until the
/// unit reports the result. Anything else ends the connection: whoever holds
/// it can deliver or withhold the unit's commands, never its own.
fn run_direct<K: KeyMemory>(
    applet: &Mutex<Applet<K>>,
    offer: &DirectConnection,
    channel: u64,
    timeout: Duration,
) -> Result<DirectRun, RemoteError> {
    let deadline = Instant::now() + timeout.saturating_mul(DIRECT_RUN_TIMEOUTS);
    let mut stream = client::connect(&offer.address, timeout)?;
    write_frame(&mut stream, &Frame::Direct(DirectTicket(*offer.ticket)))?;
    let mut commands = 0u32;
    loop {
        if Instant::now() > deadline {
            return Err(refuse(&mut stream, DirectPathRefusal::TooLong));
        }
        match read_frame(&mut stream)? {
            Frame::Command { header, data } => {
                if header[0] != CLA_SM {
                    return Err(refuse(&mut stream, DirectPathRefusal::NotSealed));
                }
                let response = {
                    let mut applet = lock(applet);
                    if applet.personalization_channel() != Some(channel) {
                        drop(applet);
                        return Err(refuse(&mut stream, DirectPathRefusal::ChannelClosed));
                    }
                    applet.process(&encode_extended(header, &data))
                };
                commands = commands.saturating_add(1);
                let response = Response::from_bytes(&response).ok_or(RemoteError::Unexpected(
                    "a response shorter than a status word from the applet",
                ))?;
                write_frame(
                    &mut stream,
                    &Frame::Response {
                        data: response.data,
                        sw: response.sw,
                    },
                )?;
            }
            Frame::Personalized {
                journal_id,
                certificate,
            } => {
                return Ok(DirectRun {
                    address: offer.address.clone(),
                    commands,
                    journal_id,
                    certificate: Certificate::from_der(&certificate)
                        .map_err(|_| RemoteError::Unexpected("PERSONALIZED (certificate)"))?,
                });
            }
            Frame::Error { code, reason } => return Err(RemoteError::Refused { code, reason }),
            other => return Err(RemoteError::Unexpected(other.name())),
        }
    }
}

/// Tells the unit why the module ends the direct connection.
fn refuse(stream: &mut TcpStream, refusal: DirectPathRefusal) -> RemoteError {
    super::refuse(stream, RemoteError::DirectPath(refusal))
}

// ---------------------------------------------------------------------------
// The unit's side.

/// The unit's runs waiting for their module's direct connection, by the id
/// part of their one-time ticket. Shared by all connections of a server.
#[derive(Default)]
pub struct DirectTickets {
    waiting: Mutex<HashMap<[u8; len::DIRECT_TICKET_ID], Waiting>>,
}

struct Waiting {
    secret: Zeroizing<[u8; len::DIRECT_TICKET_SECRET]>,
    deliver: SyncSender<TcpStream>,
}

/// A ticket issued to one run: its offer for the module, and where its
/// module's connection arrives. Valid until used or withdrawn; dropping it
/// withdraws it.
pub struct IssuedTicket<'a> {
    tickets: &'a DirectTickets,
    id: [u8; len::DIRECT_TICKET_ID],
    /// The offer to put in the channel.
    pub offer: DirectConnection,
    arrival: Receiver<TcpStream>,
}

impl IssuedTicket<'_> {
    /// Waits at most `timeout` for the module's connection. On time-out the
    /// ticket is withdrawn first, then a connection that came in meanwhile
    /// is still taken, so none is dropped unanswered.
    pub fn wait(&self, timeout: Duration) -> Option<TcpStream> {
        self.arrival.recv_timeout(timeout).ok().or_else(|| {
            self.withdraw();
            self.arrival.try_recv().ok()
        })
    }

    fn withdraw(&self) {
        lock(&self.tickets.waiting).remove(&self.id);
    }
}

impl Drop for IssuedTicket<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// Why a DIRECT frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefusal {
    /// No run waits for this ticket: unknown, used, withdrawn or forged.
    #[error(
        "no personalization waits for this direct-connection ticket (unknown, used or withdrawn)"
    )]
    Unknown,
}

impl DirectTickets {
    /// Issues a fresh ticket for a run whose module should dial `address`.
    pub fn issue(&self, address: &str) -> Result<IssuedTicket<'_>, RemoteError> {
        let mut ticket = Zeroizing::new([0u8; len::DIRECT_TICKET]);
        getrandom::fill(&mut ticket[..]).map_err(|_| RemoteError::Random)?;
        let offer = DirectConnection {
            address: address.to_owned(),
            ticket,
        };
        let id = offer.ticket_id();
        let mut secret = Zeroizing::new([0u8; len::DIRECT_TICKET_SECRET]);
        secret.copy_from_slice(&offer.ticket[len::DIRECT_TICKET_ID..]);
        let (deliver, arrival) = sync_channel(1);
        lock(&self.waiting).insert(id, Waiting { secret, deliver });
        Ok(IssuedTicket {
            tickets: self,
            id,
            offer,
            arrival,
        })
    }

    /// Hands `stream` to the run waiting for `ticket`, once: the secret is
    /// compared in constant time, and a used or withdrawn ticket is gone.
    pub fn redeem(&self, ticket: &DirectTicket, stream: TcpStream) -> Result<(), TicketRefusal> {
        let (id, secret) = ticket.0.split_at(len::DIRECT_TICKET_ID);
        let id: [u8; len::DIRECT_TICKET_ID] = id.try_into().map_err(|_| TicketRefusal::Unknown)?;
        let mut waiting = lock(&self.waiting);
        let entry = waiting.get(&id).ok_or(TicketRefusal::Unknown)?;
        if !bool::from(entry.secret.ct_eq(secret)) {
            // Whoever knows the id but not the secret does not cancel the run.
            return Err(TicketRefusal::Unknown);
        }
        let entry = waiting.remove(&id).ok_or(TicketRefusal::Unknown)?;
        // Under the lock: the run takes what was delivered before it withdraws.
        entry
            .deliver
            .try_send(stream)
            .map_err(|_| TicketRefusal::Unknown)
    }

    /// How many runs wait now: each may need a connection of its own beyond
    /// the service's limit, and tests check that none lingers.
    pub fn waiting(&self) -> usize {
        lock(&self.waiting).len()
    }
}

#[cfg(test)]
mod tests;
