//! The central system's operating server (tokio): the operating channel and
//! transaction sessions with modules, relayed by untrusted hosts.
//!
//! ```text
//!  TcpListener ──accept──▶ Semaphore (max connections; over it: ERROR busy)
//!        └──▶ one task per connection
//!               HELLO ──▶ operate: OperatingHandshake ─▶ registry.check_module ─▶ confirm ─▶ key set
//!                    └──▶ transact: TransactionChallenge ─▶ registry (key set, counter) ─▶ READY
//!                                   MESSAGE ─▶ handler ─▶ journal ─▶ RECEIPT   (until CLOSE or idle)
//! ```
//!
//! Every read has a deadline (slow peers), every frame a size limit, and any
//! failure ends only its own connection with an ERROR frame and a log line.
//! The registry is the only shared state; the journal records a transaction
//! only after its message authenticated and the handler accepted it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imprint_apdu::Response;
use imprint_apdu::channel::sha384;
use imprint_apdu::pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::CentralAuthority;
use crate::operating::{
    ModuleCommand, OperatingError, OperatingHandshake, Receipt, TransactionChallenge,
    on_transaction_confirm,
};
use crate::registry::{
    KeySet, Refusal, Registry, RegistryError, StandingReader, TransactionRecord,
};
use crate::wire::{ErrorCode, Frame, FrameError, Purpose};

mod run;
pub use run::{ServeError, ServeOptions, run};

/// Limits and lifetimes of the server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections served at once; more are answered ERROR busy.
    pub max_connections: usize,
    /// Deadline for each frame the server waits for inside a conversation.
    pub frame_timeout: Duration,
    /// Deadline for the next message of an open transaction session.
    pub idle_timeout: Duration,
    /// Lifetime of a key set from its installation.
    pub key_set_lifetime: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            key_set_lifetime: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The context of one transaction, for the application's handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionContext {
    /// The module serial.
    pub serial: String,
    /// The key set the session runs on.
    pub key_set_id: [u8; 16],
    /// The module's session counter.
    pub session_counter: u32,
    /// The message's sequence number in the session (from 1).
    pub sequence: u32,
}

/// A handler refused a transaction; the reason goes to the host in clear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerRefusal(pub String);

/// The application's part: what a transaction means. Imprint authenticates,
/// orders, journals and acknowledges the payload; the handler decides what to
/// do with it and what to reply (at most [`crate::operating::REPLY_MAX`] bytes).
///
/// It runs before the journal entry is written: a refused transaction is not
/// journaled and the module gets no receipt.
pub trait TransactionHandler: Send + Sync {
    /// Handles one authenticated payload.
    fn handle(
        &self,
        context: &TransactionContext,
        payload: &[u8],
    ) -> Result<Vec<u8>, HandlerRefusal>;
}

/// The default handler: accepts every payload and replies `accepted`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl TransactionHandler for AcceptAll {
    fn handle(&self, _: &TransactionContext, _: &[u8]) -> Result<Vec<u8>, HandlerRefusal> {
        Ok(b"accepted".to_vec())
    }
}

/// Everything a connection needs.
pub struct CentralService {
    central: CentralAuthority,
    registry: Arc<Mutex<Registry>>,
    /// The standing check's own connection: `None` when it could not be
    /// opened, and the check then goes through `registry`.
    standing: Option<Mutex<StandingReader>>,
    handler: Arc<dyn TransactionHandler>,
    limits: ServerLimits,
    journal: std::sync::mpsc::Sender<JournalRequest>,
}

/// A transaction waiting for the journal writer.
struct JournalRequest {
    record: TransactionRecord,
    reply: tokio::sync::oneshot::Sender<Result<u64, RegistryError>>,
}

/// Largest group the journal writer commits at once.
const JOURNAL_GROUP: usize = 256;

/// The journal writer: takes whatever transactions are waiting and commits
/// them together, so concurrent sessions share one sync to disk instead of
/// queueing for one each. A receipt leaves only after its group committed.
fn journal_writer(
    registry: Arc<Mutex<Registry>>,
    requests: std::sync::mpsc::Receiver<JournalRequest>,
) {
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < JOURNAL_GROUP {
            match requests.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let records: Vec<TransactionRecord> =
            group.iter().map(|request| request.record.clone()).collect();
        let outcome = registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record_transactions(&records);
        match outcome {
            Ok(numbers) => {
                for (request, number) in group.into_iter().zip(numbers) {
                    let _ = request.reply.send(number);
                }
            }
            Err(err) => {
                let reason = err.to_string();
                for request in group {
                    let _ = request
                        .reply
                        .send(Err(RegistryError::JournalUnavailable(reason.clone())));
                }
            }
        }
    }
}

impl CentralService {
    /// A service over the central key, its registry and a handler.
    pub fn new(
        central: CentralAuthority,
        registry: Registry,
        handler: Arc<dyn TransactionHandler>,
        limits: ServerLimits,
    ) -> Self {
        let standing = match registry.standing_reader() {
            Ok(reader) => Some(Mutex::new(reader)),
            Err(err) => {
                tracing::warn!(%err, "the standing check shares the registry's connection");
                None
            }
        };
        let registry = Arc::new(Mutex::new(registry));
        let (journal, requests) = std::sync::mpsc::channel();
        let writer_registry = Arc::clone(&registry);
        // Ends when the service, the only sender, is dropped.
        std::thread::Builder::new()
            .name("imprint-journal".into())
            .spawn(move || journal_writer(writer_registry, requests))
            .map(drop)
            .unwrap_or_else(|err| tracing::error!(%err, "cannot start the journal writer"));
        Self {
            central,
            registry,
            standing,
            handler,
            limits,
            journal,
        }
    }

    /// Whether module `serial` (and its unit) is still in good standing,
    /// read afresh: checked before every message reaches the application.
    fn check_standing(&self, serial: &str) -> Result<(), RegistryError> {
        tokio::task::block_in_place(|| match &self.standing {
            Some(reader) => reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .check(serial),
            None => self.with_registry(|registry| registry.module_standing(serial)),
        })
    }

    /// Journals one transaction through the group-commit writer.
    async fn journal(&self, record: TransactionRecord) -> Result<u64, RegistryError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.journal
            .send(JournalRequest { record, reply })
            .map_err(|_| RegistryError::JournalUnavailable("the journal writer stopped".into()))?;
        answer
            .await
            .map_err(|_| RegistryError::JournalUnavailable("the journal writer stopped".into()))?
    }

    /// The central authority.
    pub fn central(&self) -> &CentralAuthority {
        &self.central
    }

    /// Runs `f` on the registry. A poisoned lock only means another
    /// connection panicked between statements; SQLite keeps the data consistent.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut registry)
    }

    /// [`Self::with_registry`] from a connection task: the registry waits on
    /// the disk (a commit is an fsync), so the runtime moves its other tasks
    /// off this worker thread meanwhile.
    fn registry_blocking<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        tokio::task::block_in_place(|| self.with_registry(f))
    }
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Why a conversation ended early; becomes an ERROR frame and a log line.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("connection closed")]
    Closed(#[source] std::io::Error),
    #[error(transparent)]
    Operating(#[from] OperatingError),
    #[error("{0}")]
    Refused(String),
    #[error("registry failure: {0}")]
    Registry(String),
}

impl From<RegistryError> for Failure {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::Refused(refusal) => Failure::Refused(refusal.to_string()),
            other => Failure::Registry(other.to_string()),
        }
    }
}

impl Failure {
    fn code(&self) -> ErrorCode {
        match self {
            Failure::Frame(_) | Failure::Unexpected(_) => ErrorCode::Malformed,
            Failure::Timeout => ErrorCode::Timeout,
            Failure::Closed(_) => ErrorCode::Malformed,
            Failure::Operating(OperatingError::ModuleStatus { .. }) => ErrorCode::ModuleError,
            Failure::Operating(OperatingError::Signing | OperatingError::Random) => {
                ErrorCode::Internal
            }
            Failure::Operating(_) | Failure::Refused(_) => ErrorCode::Refused,
            Failure::Registry(_) => ErrorCode::Internal,
        }
    }
}

/// One connection's framed stream with deadlines.
struct Connection {
    stream: TcpStream,
    frame_timeout: Duration,
}

impl Connection {
    async fn read(&mut self, deadline: Duration) -> Result<Frame, Failure> {
        let read = async {
            let mut prefix = [0u8; 4];
            self.stream
                .read_exact(&mut prefix)
                .await
                .map_err(Failure::Closed)?;
            let length = Frame::check_length(prefix)?;
            let mut payload = vec![0u8; length];
            self.stream
                .read_exact(&mut payload)
                .await
                .map_err(Failure::Closed)?;
            Ok(Frame::decode_payload(&payload)?)
        };
        tokio::time::timeout(deadline, read)
            .await
            .map_err(|_| Failure::Timeout)?
    }

    async fn write(&mut self, frame: &Frame) -> Result<(), Failure> {
        let bytes = frame.encode();
        tokio::time::timeout(self.frame_timeout, self.stream.write_all(&bytes))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(Failure::Closed)
    }

    /// Sends a command for the module and waits for its response.
    async fn exchange(&mut self, command: ModuleCommand) -> Result<Response, Failure> {
        self.write(&Frame::Command {
            header: command.header,
            data: command.data,
        })
        .await?;
        match self.read(self.frame_timeout).await? {
            Frame::Response { data, sw } => Ok(Response { data, sw }),
            other => Err(Failure::Unexpected(other.name())),
        }
    }
}

/// Accepts connections on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: Arc<CentralService>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(service.limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = Arc::clone(&service);
        let permit = Arc::clone(&permits).try_acquire_owned();
        tokio::spawn(async move {
            let mut connection = Connection {
                stream,
                frame_timeout: service.limits.frame_timeout,
            };
            let Ok(_permit) = permit else {
                tracing::warn!(%peer, "refused: connection limit reached");
                let _ = connection
                    .write(&Frame::Error {
                        code: ErrorCode::Busy,
                        reason: "the central system is at its connection limit".into(),
                    })
                    .await;
                return;
            };
            handle(&service, &mut connection, peer).await;
        });
    }
}

async fn handle(service: &CentralService, connection: &mut Connection, peer: SocketAddr) {
    let hello = connection.read(service.limits.frame_timeout).await;
    let mut serial_text = None;
    let result = match hello {
        Ok(Frame::Hello { purpose, serial }) => {
            serial_text = Some(pki::serial_hex(&serial));
            match purpose {
                Purpose::Operate => operate(service, connection, serial).await,
                Purpose::Transact => transact(service, connection, serial).await,
                // A personalization unit's business, not the central system's.
                Purpose::Personalize => Err(Failure::Unexpected("HELLO (personalize)")),
            }
        }
        Ok(other) => Err(Failure::Unexpected(other.name())),
        Err(failure) => Err(failure),
    };
    if let Err(failure) = result {
        let serial = serial_text.as_deref().unwrap_or("-");
        tracing::warn!(%peer, serial, reason = %failure, "rejected");
        if !matches!(failure, Failure::Closed(_)) {
            let _ = connection
                .write(&Frame::Error {
                    code: failure.code(),
                    reason: failure.to_string(),
                })
                .await;
        }
    }
    let _ = connection.stream.shutdown().await;
}

/// The operating channel: mutual authentication, registry, key set (claims 1, 4, 6, 11).
async fn operate(
    service: &CentralService,
    connection: &mut Connection,
    hello_serial: [u8; pki::SERIAL_LEN],
) -> Result<(), Failure> {
    let central = &service.central;
    let (handshake, command) = OperatingHandshake::start(central)?;
    let response = connection.exchange(command).await?;
    let module = handshake.on_open(&response, &central.cert, now())?;
    if module.serial != pki::serial_hex(&hello_serial) {
        return Err(Failure::Refused(format!(
            "the module certificate is for {}, the host announced {}",
            module.serial,
            pki::serial_hex(&hello_serial)
        )));
    }
    service
        .registry_blocking(|registry| registry.check_module(&module.unit_cert, &module.serial))?;
    let serial = module.serial.clone();
    let (module_cert, unit_cert) = (module.module_cert.clone(), module.unit_cert.clone());
    let (confirmation, command) = module.confirm(central)?;
    let response = connection.exchange(command).await?;
    let mut channel = confirmation.on_confirm(&response)?;

    let created = now();
    let key_set = KeySet {
        id: random_bytes()?,
        key: Zeroizing::new(random_bytes()?),
        created,
        expires: created.saturating_add(service.limits.key_set_lifetime.as_secs()),
    };
    // Recorded before it leaves, as every issued secret is.
    service.registry_blocking(|registry| {
        registry.module_seen(&module_cert, &unit_cert, created)?;
        registry.store_key_set(&serial, &key_set)
    })?;
    let command = channel.install_key_set(&key_set.id, &key_set.key, key_set.expires)?;
    let response = connection.exchange(command).await?;
    channel.on_install(&response)?;
    tracing::info!(serial, key_set = %hex(&key_set.id), "operating channel: key set installed");
    connection
        .write(&Frame::Done {
            key_set_id: key_set.id,
            expires: key_set.expires,
        })
        .await
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Failure> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| Failure::Operating(OperatingError::Random))?;
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A transaction session: symmetric only (claim 11).
async fn transact(
    service: &CentralService,
    connection: &mut Connection,
    serial: [u8; pki::SERIAL_LEN],
) -> Result<(), Failure> {
    let serial_text = pki::serial_hex(&serial);
    let (challenge, command) = TransactionChallenge::start(serial)?;
    let response = connection.exchange(command).await?;
    let claim = challenge.on_open(&response)?;
    let stored = service
        .registry_blocking(|registry| registry.key_set(&claim.key_set_id))?
        .ok_or_else(|| Failure::Refused(Refusal::UnknownKeySet.to_string()))?;
    stored
        .check_serial(&serial_text)
        .map_err(|refusal| Failure::Refused(refusal.to_string()))?;
    // The MAC first: only a module holding the key may move the counter.
    let (mut session, command) = claim.verify(&stored.key_set.key)?;
    service.registry_blocking(|registry| {
        registry.accept_session_counter(&claim.key_set_id, claim.session_counter, now())
    })?;
    let response = connection.exchange(command).await?;
    on_transaction_confirm(&response)?;
    connection.write(&Frame::Ready).await?;

    loop {
        let sealed = match connection.read(service.limits.idle_timeout).await? {
            Frame::Message(sealed) => sealed,
            Frame::Close => return Ok(()),
            other => return Err(Failure::Unexpected(other.name())),
        };
        let (sequence, payload) = session.open_message(&sealed)?;
        let context = TransactionContext {
            serial: serial_text.clone(),
            key_set_id: claim.key_set_id,
            session_counter: claim.session_counter,
            sequence: u32::try_from(sequence).map_err(|_| OperatingError::BadMessage)?,
        };
        // A revocation since the last message stops the session here, before
        // the application sees the message (the journal checks again).
        service.check_standing(&serial_text)?;
        // The handler is application code of unknown speed: keep it off the
        // runtime's worker threads.
        let reply = tokio::task::block_in_place(|| service.handler.handle(&context, &payload))
            .map_err(|refusal| Failure::Refused(format!("the application refused: {refusal}")))?;
        // Checked before the journal: a transaction without a receipt must not be journaled.
        if reply.len() > crate::operating::REPLY_MAX {
            return Err(Failure::Refused(format!(
                "the application's reply of {} bytes exceeds the receipt's {} bytes",
                reply.len(),
                crate::operating::REPLY_MAX
            )));
        }
        let payload_digest = sha384(&payload);
        let number = service
            .journal(TransactionRecord {
                serial: context.serial.clone(),
                key_set_id: context.key_set_id,
                session_counter: context.session_counter,
                sequence: context.sequence,
                payload_digest,
                time: now(),
            })
            .await?;
        let receipt = session.seal_receipt(&Receipt {
            number,
            payload_digest,
            reply,
        })?;
        connection.write(&Frame::Receipt(receipt)).await?;
    }
}
