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
use imprint_apdu::host::transport::{CardLink, Transport, TransportError};
use imprint_apdu::keymem::KeyMemory;
use imprint_apdu::pki::Certificate;
use imprint_apdu::proto::len;
use imprint_apdu::vpcd::CardApplet;
use imprint_central::client::{self, ClientError};
use imprint_central::wire::{DirectTicket, Frame, write_frame};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::RemoteError;

// ---------------------------------------------------------------------------
// The module's side.

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

/// A module whose runtime has a network interface of its own (claim 15):
/// the applet, shared between its local interface and the direct
/// connections it opens. Clones share the module.
pub struct NetworkedModule<K: KeyMemory + Send + 'static> {
    applet: Arc<Mutex<Applet<K>>>,
    runs: Arc<Mutex<Vec<DirectRunThread>>>,
    timeout: Duration,
}

/// The thread of one direct connection, until it is joined.
type DirectRunThread = JoinHandle<Result<DirectRun, RemoteError>>;

impl<K: KeyMemory + Send + 'static> Clone for NetworkedModule<K> {
    fn clone(&self) -> Self {
        Self {
            applet: Arc::clone(&self.applet),
            runs: Arc::clone(&self.runs),
            timeout: self.timeout,
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
        }
    }

    /// Processes one APDU from the local interface; if it carried the unit's
    /// offer, opens the direct connection (in a thread of its own).
    pub fn process(&self, apdu: &[u8]) -> Vec<u8> {
        let (response, offer) = {
            let mut applet = lock(&self.applet);
            let response = applet.process(apdu);
            (response, applet.take_direct_connection())
        };
        if let Some(offer) = offer {
            let applet = Arc::clone(&self.applet);
            let timeout = self.timeout;
            let run = std::thread::spawn(move || run_direct(&applet, &offer, timeout));
            lock(&self.runs).push(run);
        }
        response
    }

    /// Waits for every direct connection opened so far to end, and says how
    /// each did.
    pub fn finish_direct_runs(&self) -> Vec<Result<DirectRun, RemoteError>> {
        let runs: Vec<_> = lock(&self.runs).drain(..).collect();
        runs.into_iter()
            .map(|run| run.join().unwrap_or(Err(RemoteError::DirectRunLost)))
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

/// The direct path to the shared applet: the unit's commands, nothing else.
struct DirectPath<'a, K: KeyMemory>(&'a Mutex<Applet<K>>);

impl<K: KeyMemory> Transport for DirectPath<'_, K> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(lock(self.0).process(command))
    }
}

/// Dials the unit at the offered address, presents the ticket, and answers
/// the unit's commands until it reports the result.
fn run_direct<K: KeyMemory>(
    applet: &Mutex<Applet<K>>,
    offer: &DirectConnection,
    timeout: Duration,
) -> Result<DirectRun, RemoteError> {
    let mut stream = client::connect(&offer.address, timeout)?;
    write_frame(&mut stream, &Frame::Direct(DirectTicket(*offer.ticket)))?;
    let mut link = CardLink::new(DirectPath(applet));
    match client::relay(&mut link, &mut stream) {
        Ok(Frame::Personalized {
            journal_id,
            certificate,
        }) => Ok(DirectRun {
            address: offer.address.clone(),
            commands: link.command_count(),
            journal_id,
            certificate: Certificate::from_der(&certificate)
                .map_err(|_| RemoteError::Unexpected("PERSONALIZED (certificate)"))?,
        }),
        Ok(other) => Err(RemoteError::Unexpected(other.name())),
        Err(ClientError::Central { code, reason }) => Err(RemoteError::Refused { code, reason }),
        Err(err) => Err(err.into()),
    }
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
    expires: Instant,
}

/// A ticket issued to one run: its offer for the module, and where its
/// module's connection arrives. Dropping it withdraws the ticket.
pub struct IssuedTicket<'a> {
    tickets: &'a DirectTickets,
    id: [u8; len::DIRECT_TICKET_ID],
    /// The offer to put in the channel.
    pub offer: DirectConnection,
    /// The module's connection, once it presented the ticket.
    pub arrival: Receiver<TcpStream>,
}

impl Drop for IssuedTicket<'_> {
    fn drop(&mut self) {
        lock(&self.tickets.waiting).remove(&self.id);
    }
}

/// Why a DIRECT frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefusal {
    /// No run waits for this ticket: unknown, used, withdrawn or forged.
    #[error(
        "no personalization waits for this direct-connection ticket (unknown, used or expired)"
    )]
    Unknown,
}

impl DirectTickets {
    /// Issues a fresh ticket for a run whose module should dial `address`;
    /// it stays valid for `lifetime` or until used or dropped.
    pub fn issue(
        &self,
        address: &str,
        lifetime: Duration,
    ) -> Result<IssuedTicket<'_>, RemoteError> {
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
        lock(&self.waiting).insert(
            id,
            Waiting {
                secret,
                deliver,
                expires: Instant::now() + lifetime,
            },
        );
        Ok(IssuedTicket {
            tickets: self,
            id,
            offer,
            arrival,
        })
    }

    /// Hands `stream` to the run waiting for `ticket`, once: the secret is
    /// compared in constant time, and a used or expired ticket is gone.
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
        if entry.expires < Instant::now() {
            return Err(TicketRefusal::Unknown);
        }
        // The run may have given up meanwhile; then the module finds the
        // connection closed.
        entry
            .deliver
            .try_send(stream)
            .map_err(|_| TicketRefusal::Unknown)
    }

    /// How many runs wait now (tests check that tickets do not linger).
    pub fn waiting(&self) -> usize {
        lock(&self.waiting).len()
    }
}

#[cfg(test)]
mod tests;
