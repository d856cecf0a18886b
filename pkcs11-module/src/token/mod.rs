//! The token model in safe Rust: slots, tokens, sessions, login, objects,
//! find, attributes and sign operations. The FFI layer only converts
//! pointers to and from these calls.
//!
//! ```text
//!  Provider
//!   ├─ slots[id]: Device ─ Connection (held while sessions are open)
//!   │              └─ TokenView: serial, lifecycle, PIN state, objects (handles)
//!   │                 read with SELECT + GET DATA DF21/DF23/DF24/DF25 + VERIFY (status)
//!   └─ sessions[handle]: slot, read-write?, find results, sign operation
//!
//!  C_Login ─▶ VERIFY 00 20 00 81        C_Logout ─▶ VERIFY 00 20 FF 81
//!  C_Sign  ─▶ SELECT, PSO 00 2A 9E 9A (hash value) ─▶ r ‖ s
//! ```
//!
//! Login state is per token, as PKCS#11 has it: every session of the
//! application on the token shares it, and closing the last session logs out.
//! Object handles are unique for the life of the provider. When the module's
//! state changes (lifecycle, certificates, PIN set or not) the objects get
//! new handles, so a handle from before a re-personalization is invalid.

use std::collections::BTreeMap;

use cryptoki_sys::*;
use imprint_apdu::Lifecycle;
use imprint_apdu::host::status::{StatusError, read_status};
use imprint_apdu::host::{CardLink, Transport};
use imprint_apdu::iso::sw;
use imprint_apdu::proto::{self, ins};
use sha2::{Digest, Sha384};
use zeroize::Zeroizing;

use crate::backend::card::ReaderScan;
use crate::backend::inproc::{FileSource, InProcessDevice, SoftHsmSource};
use crate::backend::{Connection, Device, Presence, SlotDescription, transport_error};
use crate::config::{Config, ModuleConfig};
use crate::error::{Error, Result};

pub mod objects;
pub mod sign;

#[cfg(test)]
mod tests;

use objects::{MECHANISMS, Object, ObjectKind, Value};
use sign::{Mechanism, SIGNATURE_LEN, SignOperation};

/// The shortest and longest user PIN the module takes (bytes).
pub const PIN_LEN: std::ops::RangeInclusive<usize> = 4..=16;

/// The module's user PIN, as VERIFY's status query reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinState {
    /// No PIN was set at personalization (or the module is not OPERATING).
    NotSet,
    /// Verified in this connection.
    Verified,
    /// Not verified; this many tries left.
    TriesLeft(u8),
    /// The retry counter is exhausted.
    Blocked,
}

/// What `C_GetTokenInfo` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// `label`: the module serial.
    pub label: String,
    /// `serialNumber`: the module serial.
    pub serial: String,
    /// `model`.
    pub model: String,
    /// The module's lifecycle state.
    pub lifecycle: Lifecycle,
    /// The `CKF_…` flags.
    pub flags: CK_FLAGS,
    /// Open sessions on the token.
    pub sessions: usize,
    /// Open read-write sessions on the token.
    pub rw_sessions: usize,
    /// The user PIN's state.
    pub pin: PinState,
}

/// What `C_GetSlotInfo` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// The device's description.
    pub description: SlotDescription,
    /// `CKF_TOKEN_PRESENT`.
    pub token_present: bool,
}

/// What `C_GetSessionInfo` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// The slot.
    pub slot: CK_SLOT_ID,
    /// `CKS_…`.
    pub state: CK_STATE,
    /// `CKF_SERIAL_SESSION`, and `CKF_RW_SESSION` when read-write.
    pub flags: CK_FLAGS,
}

/// What `C_GetMechanismInfo` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MechanismInfo {
    /// Smallest key size in bits.
    pub min_key_bits: CK_ULONG,
    /// Largest key size in bits.
    pub max_key_bits: CK_ULONG,
    /// `CKF_…`.
    pub flags: CK_FLAGS,
}

/// One attribute asked for by `C_GetAttributeValue`: the caller's buffer
/// (`None`: only the length is asked for) and, afterwards, the length
/// written or required, or `CK_UNAVAILABLE_INFORMATION`.
#[derive(Debug)]
pub struct AttributeRequest<'a> {
    /// The attribute type.
    pub kind: CK_ATTRIBUTE_TYPE,
    /// Where the value goes.
    pub buffer: Option<&'a mut [u8]>,
    /// The length, set by the call.
    pub len: CK_ULONG,
}

/// An output buffer with PKCS#11's length convention: with no buffer the
/// call only reports the length; with one that is too small it reports the
/// length and fails with `CKR_BUFFER_TOO_SMALL`.
#[derive(Debug)]
pub struct Output<'a> {
    /// The caller's buffer, if any.
    pub buffer: Option<&'a mut [u8]>,
    /// The length written or required, set by the call.
    pub len: usize,
}

impl<'a> Output<'a> {
    /// An output into `buffer` (`None`: a length query).
    pub fn new(buffer: Option<&'a mut [u8]>) -> Self {
        Self { buffer, len: 0 }
    }
}

/// The objects and state of the module in a slot, as last read.
#[derive(Debug, Clone)]
struct TokenView {
    serial: Option<String>,
    lifecycle: Lifecycle,
    pin: PinState,
    objects: Vec<Object>,
    fingerprint: [u8; 48],
}

struct Slot {
    device: Box<dyn Device>,
    description: SlotDescription,
    reader: Option<String>,
    connection: Option<Box<dyn Connection>>,
    connected_presence: Presence,
    view: Option<TokenView>,
    logged_in: bool,
}

struct Session {
    slot: usize,
    rw: bool,
    find: Option<Vec<CK_OBJECT_HANDLE>>,
    sign: Option<SignOperation>,
}

/// The provider's whole state between `C_Initialize` and `C_Finalize`.
pub struct Provider {
    slots: Vec<Slot>,
    sessions: BTreeMap<CK_SESSION_HANDLE, Session>,
    next_session: CK_SESSION_HANDLE,
    next_object: CK_OBJECT_HANDLE,
    scan: Option<ReaderScan>,
    reported: Vec<Presence>,
}

impl Provider {
    /// The slots `config` asks for: PC/SC readers first (if the card backend
    /// is on and pcscd answers), then the in-process modules in order.
    pub fn from_config(config: &Config) -> Self {
        let mut provider = Self::with_devices(Vec::new());
        if let Some(card) = &config.card {
            match ReaderScan::new(card.clone()) {
                Ok(scan) => {
                    provider.scan = Some(scan);
                    provider.rescan();
                }
                Err(err) => tracing::warn!(error = %err, "card backend unavailable: no PC/SC"),
            }
        }
        for module in &config.module {
            match module {
                ModuleConfig::File { path } => {
                    provider.add_device(Box::new(InProcessDevice::new(FileSource::new(path))), None)
                }
                ModuleConfig::Softhsm {
                    library,
                    token_label,
                    pin_file,
                } => {
                    let library = library.clone().or_else(crate::softhsm::find_library);
                    if library.is_none() {
                        tracing::warn!(token = %token_label, "no SoftHSM library found: the slot stays empty");
                    }
                    let source = SoftHsmSource::new(library, token_label, pin_file);
                    provider.add_device(Box::new(InProcessDevice::new(source)), None)
                }
            }
        }
        provider
    }

    /// A provider over the given slot devices (tests, other backends).
    pub fn with_devices(devices: Vec<Box<dyn Device>>) -> Self {
        let mut provider = Self {
            slots: Vec::new(),
            sessions: BTreeMap::new(),
            next_session: 1,
            next_object: 1,
            scan: None,
            reported: Vec::new(),
        };
        for device in devices {
            provider.add_device(device, None);
        }
        provider
    }

    fn add_device(&mut self, mut device: Box<dyn Device>, reader: Option<String>) {
        let presence = device.presence();
        self.slots.push(Slot {
            description: device.describe(),
            device,
            reader,
            connection: None,
            connected_presence: Presence::default(),
            view: None,
            logged_in: false,
        });
        self.reported.push(presence);
    }

    /// Adds slots for readers that appeared since the last scan. Slot IDs
    /// never change; a reader that went away keeps its slot, empty.
    pub fn rescan(&mut self) {
        let Some(scan) = &self.scan else {
            return;
        };
        let new: Vec<_> = scan
            .readers()
            .into_iter()
            .filter(|name| {
                !self
                    .slots
                    .iter()
                    .any(|slot| slot.reader.as_deref() == Some(name.as_str()))
            })
            .filter_map(|name| scan.device(&name).map(|device| (name, device)))
            .collect();
        for (name, device) in new {
            tracing::debug!(reader = %name, slot = self.slots.len(), "new reader");
            self.add_device(Box::new(device), Some(name));
        }
    }

    // ------------------------------------------------------------ slots and tokens

    fn slot_index(&self, slot: CK_SLOT_ID) -> Result<usize> {
        let index = usize::try_from(slot).map_err(|_| Error::SlotIdInvalid)?;
        if index < self.slots.len() {
            Ok(index)
        } else {
            Err(Error::SlotIdInvalid)
        }
    }

    /// The slot IDs; with `token_present`, only those with a module in them.
    pub fn slot_list(&mut self, token_present: bool) -> Vec<CK_SLOT_ID> {
        (0..self.slots.len())
            .filter(|&index| !token_present || self.token_present(index))
            .map(|index| index as CK_SLOT_ID)
            .collect()
    }

    /// Whether a module with our applet is in the slot. A held connection
    /// whose card left is dropped (its sessions with it).
    fn token_present(&mut self, index: usize) -> bool {
        let presence = self.slots[index].device.presence();
        if self.slots[index].connection.is_some() {
            if presence.present && presence.events == self.slots[index].connected_presence.events {
                return true;
            }
            self.device_gone(index);
            return false;
        }
        presence.present && self.slots[index].device.connect().is_ok()
    }

    /// `C_GetSlotInfo`.
    pub fn slot_info(&mut self, slot: CK_SLOT_ID) -> Result<SlotInfo> {
        let index = self.slot_index(slot)?;
        Ok(SlotInfo {
            description: self.slots[index].description.clone(),
            token_present: self.token_present(index),
        })
    }

    /// `C_GetTokenInfo`: reads the module (or, while sessions are open, its
    /// PIN state only).
    pub fn token_info(&mut self, slot: CK_SLOT_ID) -> Result<TokenInfo> {
        let index = self.slot_index(slot)?;
        if !self.token_present(index) {
            return Err(Error::TokenNotPresent);
        }
        if self.slots[index].connection.is_some() {
            let lifecycle = self.view(index)?.lifecycle;
            if lifecycle == Lifecycle::Operating {
                let pin = self.exchange(index, |link| {
                    select(link)?;
                    pin_state(link)
                })?;
                if let Some(view) = self.slots[index].view.as_mut() {
                    view.pin = pin;
                }
            }
        } else {
            self.read_token(index, false)?;
        }
        let view = self.view(index)?;
        let serial = view.serial.clone();
        let (lifecycle, pin) = (view.lifecycle, view.pin);
        let sessions = self.sessions.values().filter(|s| s.slot == index);
        let (count, rw) = sessions.fold((0, 0), |(n, rw), s| (n + 1, rw + usize::from(s.rw)));
        let mut flags = 0;
        if lifecycle == Lifecycle::Operating {
            flags |= CKF_TOKEN_INITIALIZED;
        }
        if pin != PinState::NotSet {
            flags |= CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED;
        }
        match pin {
            PinState::TriesLeft(n) if n < proto::PIN_TRY_LIMIT => {
                flags |= CKF_USER_PIN_COUNT_LOW;
                if n == 1 {
                    flags |= CKF_USER_PIN_FINAL_TRY;
                }
            }
            PinState::Blocked => flags |= CKF_USER_PIN_LOCKED,
            _ => {}
        }
        Ok(TokenInfo {
            label: serial
                .clone()
                .unwrap_or_else(|| "Imprint blank module".into()),
            serial: serial.unwrap_or_default(),
            model: "Imprint module".into(),
            lifecycle,
            flags,
            sessions: count,
            rw_sessions: rw,
            pin,
        })
    }

    /// `C_GetMechanismList`.
    pub fn mechanism_list(&mut self, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>> {
        let index = self.slot_index(slot)?;
        if !self.slots[index].device.presence().present {
            return Err(Error::TokenNotPresent);
        }
        Ok(MECHANISMS.to_vec())
    }

    /// `C_GetMechanismInfo`.
    pub fn mechanism_info(
        &mut self,
        slot: CK_SLOT_ID,
        mechanism: CK_MECHANISM_TYPE,
    ) -> Result<MechanismInfo> {
        let index = self.slot_index(slot)?;
        if !self.slots[index].device.presence().present {
            return Err(Error::TokenNotPresent);
        }
        if !MECHANISMS.contains(&mechanism) {
            return Err(Error::MechanismInvalid);
        }
        let mut flags = CKF_SIGN | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
        if self.slots[index].description.hardware {
            flags |= CKF_HW;
        }
        Ok(MechanismInfo {
            min_key_bits: 384,
            max_key_bits: 384,
            flags,
        })
    }

    /// `C_WaitForSlotEvent` without blocking: the first slot whose module
    /// came or went since the last report.
    pub fn poll_slot_event(&mut self) -> Option<CK_SLOT_ID> {
        for index in 0..self.slots.len() {
            let presence = self.slots[index].device.presence();
            if presence != self.reported[index] {
                self.reported[index] = presence;
                if self.slots[index].connection.is_some()
                    && (!presence.present
                        || presence.events != self.slots[index].connected_presence.events)
                {
                    self.device_gone(index);
                }
                return Some(index as CK_SLOT_ID);
            }
        }
        None
    }

    // ------------------------------------------------------------ reading the module

    fn view(&self, index: usize) -> Result<&TokenView> {
        self.slots[index]
            .view
            .as_ref()
            .ok_or(Error::TokenNotPresent)
    }

    /// Reads the module in slot `index` into its view, connecting for the
    /// read (and staying connected when `keep`).
    fn read_token(&mut self, index: usize, keep: bool) -> Result<()> {
        if self.slots[index].connection.is_none() {
            let presence = self.slots[index].device.presence();
            let connection = self.slots[index].device.connect().map_err(|err| {
                tracing::debug!(slot = index, error = %err, "cannot connect");
                Error::from(err)
            })?;
            self.slots[index].connection = Some(connection);
            self.slots[index].connected_presence = presence;
        }
        let result = self.exchange(index, read_view);
        if !keep && !self.sessions.values().any(|s| s.slot == index) {
            self.slots[index].connection = None;
        }
        let mut view = result?;
        let previous = self.slots[index].view.take();
        match previous {
            Some(previous) if previous.fingerprint == view.fingerprint => {
                for (object, old) in view.objects.iter_mut().zip(&previous.objects) {
                    object.handle = old.handle;
                }
            }
            _ => {
                for object in &mut view.objects {
                    object.handle = self.next_object;
                    self.next_object += 1;
                }
                tracing::debug!(
                    slot = index,
                    lifecycle = %view.lifecycle,
                    objects = view.objects.len(),
                    "module read; new object handles"
                );
            }
        }
        self.slots[index].view = Some(view);
        Ok(())
    }

    /// Runs `f` over the slot's connection in one transaction. A removed
    /// card closes the slot's sessions.
    fn exchange<R>(
        &mut self,
        index: usize,
        mut f: impl FnMut(&mut CardLink<&mut dyn Transport>) -> Result<R>,
    ) -> Result<R> {
        let connection = self.slots[index]
            .connection
            .as_mut()
            .ok_or(Error::TokenNotPresent)?;
        let mut output = None;
        let result = connection.exchange(&mut |transport| {
            let mut link = CardLink::new(transport);
            output = Some(f(&mut link)?);
            Ok(())
        });
        match result {
            Ok(()) => output.ok_or(Error::GeneralError),
            Err(Error::DeviceRemoved) => {
                tracing::debug!(slot = index, "module removed");
                self.device_gone(index);
                Err(Error::DeviceRemoved)
            }
            Err(err) => Err(err),
        }
    }

    /// The module left: its sessions are closed and its objects forgotten.
    fn device_gone(&mut self, index: usize) {
        self.sessions.retain(|_, session| session.slot != index);
        let slot = &mut self.slots[index];
        slot.connection = None;
        slot.view = None;
        slot.logged_in = false;
    }

    // ------------------------------------------------------------ sessions

    fn session(&self, handle: CK_SESSION_HANDLE) -> Result<&Session> {
        self.sessions
            .get(&handle)
            .ok_or(Error::SessionHandleInvalid)
    }

    fn session_mut(&mut self, handle: CK_SESSION_HANDLE) -> Result<&mut Session> {
        self.sessions
            .get_mut(&handle)
            .ok_or(Error::SessionHandleInvalid)
    }

    /// `C_OpenSession`. The first session on a token connects to the module
    /// and keeps the connection until the last one closes.
    pub fn open_session(&mut self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        let index = self.slot_index(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Error::SessionParallelNotSupported);
        }
        if !self.token_present(index) {
            return Err(Error::TokenNotPresent);
        }
        if self.slots[index].connection.is_none() {
            self.read_token(index, true)?;
        }
        let handle = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            handle,
            Session {
                slot: index,
                rw: flags & CKF_RW_SESSION != 0,
                find: None,
                sign: None,
            },
        );
        tracing::debug!(slot, session = handle, "session opened");
        Ok(handle)
    }

    /// `C_CloseSession`.
    pub fn close_session(&mut self, handle: CK_SESSION_HANDLE) -> Result<()> {
        let session = self
            .sessions
            .remove(&handle)
            .ok_or(Error::SessionHandleInvalid)?;
        self.after_close(session.slot);
        Ok(())
    }

    /// `C_CloseAllSessions`.
    pub fn close_all_sessions(&mut self, slot: CK_SLOT_ID) -> Result<()> {
        let index = self.slot_index(slot)?;
        self.sessions.retain(|_, session| session.slot != index);
        self.after_close(index);
        Ok(())
    }

    /// After the last session on a token closes: log out (on the module too)
    /// and disconnect.
    fn after_close(&mut self, index: usize) {
        if self.sessions.values().any(|s| s.slot == index) {
            return;
        }
        if self.slots[index].logged_in && self.slots[index].connection.is_some() {
            // Best effort: the connection closes next anyway.
            let _ = self.exchange(index, |link| {
                select(link)?;
                link.send(
                    [
                        0x00,
                        ins::VERIFY,
                        proto::P1_VERIFY_RESET,
                        proto::PIN_REF_USER,
                    ],
                    &[],
                )
                .map_err(transport_error)?;
                Ok(())
            });
        }
        self.logged_out(index);
        self.slots[index].connection = None;
    }

    /// `C_GetSessionInfo`.
    pub fn session_info(&self, handle: CK_SESSION_HANDLE) -> Result<SessionInfo> {
        let session = self.session(handle)?;
        let logged_in = self.slots[session.slot].logged_in;
        let state = match (session.rw, logged_in) {
            (false, false) => CKS_RO_PUBLIC_SESSION,
            (false, true) => CKS_RO_USER_FUNCTIONS,
            (true, false) => CKS_RW_PUBLIC_SESSION,
            (true, true) => CKS_RW_USER_FUNCTIONS,
        };
        let mut flags = CKF_SERIAL_SESSION;
        if session.rw {
            flags |= CKF_RW_SESSION;
        }
        Ok(SessionInfo {
            slot: session.slot as CK_SLOT_ID,
            state,
            flags,
        })
    }

    /// Checks that `handle` is an open session (for functions that refuse
    /// everything but must first say whether the session exists).
    pub fn check_session(&self, handle: CK_SESSION_HANDLE) -> Result<()> {
        self.session(handle).map(|_| ())
    }

    /// `C_SessionCancel`: ends the session's sign and find operations as
    /// `flags` ask (no other operation ever runs).
    pub fn cancel(&mut self, handle: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Result<()> {
        let session = self.session_mut(handle)?;
        if flags & CKF_SIGN != 0 {
            session.sign = None;
        }
        if flags & CKF_FIND_OBJECTS != 0 {
            session.find = None;
        }
        Ok(())
    }

    // ------------------------------------------------------------ login

    /// `C_Login` as the user: VERIFY with the PIN.
    pub fn login(
        &mut self,
        handle: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: &[u8],
    ) -> Result<()> {
        let index = self.session(handle)?.slot;
        match user {
            CKU_USER => {}
            // No key needs re-authentication for each use.
            CKU_CONTEXT_SPECIFIC => return Err(Error::OperationNotInitialized),
            // The module has no security officer.
            _ => return Err(Error::UserTypeInvalid),
        }
        if self.slots[index].logged_in {
            return Err(Error::UserAlreadyLoggedIn);
        }
        if self.view(index)?.pin == PinState::NotSet {
            return Err(Error::UserPinNotInitialized);
        }
        if !PIN_LEN.contains(&pin.len()) {
            return Err(Error::PinLenRange);
        }
        let pin = Zeroizing::new(pin.to_vec());
        let status = self.exchange(index, |link| {
            select(link)?;
            let response = link
                .send(
                    [0x00, ins::VERIFY, proto::P1_VERIFY, proto::PIN_REF_USER],
                    &pin,
                )
                .map_err(transport_error)?;
            Ok(response.sw)
        })?;
        tracing::debug!(slot = index, sw = format_args!("{status:04X}"), "VERIFY");
        let pin_state = match status {
            sw::OK => PinState::Verified,
            0x63C1..=0x63CF => PinState::TriesLeft((status & 0x0F) as u8),
            0x63C0 | sw::PIN_BLOCKED => PinState::Blocked,
            _ => self.view(index)?.pin,
        };
        if let Some(view) = self.slots[index].view.as_mut() {
            view.pin = pin_state;
        }
        match status {
            sw::OK => {
                self.slots[index].logged_in = true;
                Ok(())
            }
            0x63C0..=0x63CF => Err(Error::PinIncorrect),
            sw::PIN_BLOCKED => Err(Error::PinLocked),
            sw::WRONG_LENGTH => Err(Error::PinLenRange),
            sw::DATA_NOT_FOUND | sw::CONDITIONS => Err(Error::UserPinNotInitialized),
            sw::MEMORY_FAILURE => Err(Error::DeviceMemory),
            _ => Err(Error::DeviceError),
        }
    }

    /// `C_Logout`: resets the module's verification status.
    pub fn logout(&mut self, handle: CK_SESSION_HANDLE) -> Result<()> {
        let index = self.session(handle)?.slot;
        if !self.slots[index].logged_in {
            return Err(Error::UserNotLoggedIn);
        }
        let result = self.exchange(index, |link| {
            select(link)?;
            link.send(
                [
                    0x00,
                    ins::VERIFY,
                    proto::P1_VERIFY_RESET,
                    proto::PIN_REF_USER,
                ],
                &[],
            )
            .map_err(transport_error)?;
            Ok(())
        });
        self.logged_out(index);
        result
    }

    /// The token is logged out: handles to private objects become invalid
    /// (PKCS#11: even after a later login) and operations on them end.
    fn logged_out(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if !slot.logged_in {
            return;
        }
        slot.logged_in = false;
        if let Some(view) = slot.view.as_mut() {
            if view.pin == PinState::Verified {
                view.pin = PinState::TriesLeft(proto::PIN_TRY_LIMIT);
            }
            let mut stale = Vec::new();
            for object in view.objects.iter_mut().filter(|o| o.private) {
                stale.push(object.handle);
                object.handle = self.next_object;
                self.next_object += 1;
            }
            for session in self.sessions.values_mut().filter(|s| s.slot == index) {
                if session
                    .sign
                    .as_ref()
                    .is_some_and(|op| stale.contains(&op.key))
                {
                    session.sign = None;
                }
            }
        }
    }

    // ------------------------------------------------------------ objects

    /// The object `object` as seen from session `handle`.
    fn object(&self, handle: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> Result<&Object> {
        let index = self.session(handle)?.slot;
        let found = self
            .view(index)?
            .objects
            .iter()
            .find(|o| o.handle == object)
            .ok_or(Error::ObjectHandleInvalid)?;
        if found.private && !self.slots[index].logged_in {
            return Err(Error::UserNotLoggedIn);
        }
        Ok(found)
    }

    /// `C_FindObjectsInit`: `template` is (type, value) pairs.
    pub fn find_init(
        &mut self,
        handle: CK_SESSION_HANDLE,
        template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
    ) -> Result<()> {
        let index = self.session(handle)?.slot;
        if self.session(handle)?.find.is_some() {
            return Err(Error::OperationActive);
        }
        let logged_in = self.slots[index].logged_in;
        let found: Vec<_> = self
            .view(index)?
            .objects
            .iter()
            .filter(|o| (!o.private || logged_in) && o.matches(template))
            .map(|o| o.handle)
            .collect();
        tracing::debug!(session = handle, found = found.len(), "find");
        self.session_mut(handle)?.find = Some(found);
        Ok(())
    }

    /// `C_FindObjects`: up to `max` more handles.
    pub fn find(&mut self, handle: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let found = self
            .session_mut(handle)?
            .find
            .as_mut()
            .ok_or(Error::OperationNotInitialized)?;
        let take = max.min(found.len());
        Ok(found.drain(..take).collect())
    }

    /// `C_FindObjectsFinal`.
    pub fn find_final(&mut self, handle: CK_SESSION_HANDLE) -> Result<()> {
        self.session_mut(handle)?
            .find
            .take()
            .map(|_| ())
            .ok_or(Error::OperationNotInitialized)
    }

    /// `C_GetAttributeValue`. Every request is answered; the error returned is
    /// that of the first request that failed (sensitive, unknown type, or
    /// buffer too small), whose `len` is `CK_UNAVAILABLE_INFORMATION`.
    pub fn get_attributes(
        &self,
        handle: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        requests: &mut [AttributeRequest<'_>],
    ) -> Result<()> {
        let object = self.object(handle, object)?;
        let mut result = Ok(());
        for request in requests.iter_mut() {
            let outcome = match object.attribute(request.kind) {
                None => Err(Error::AttributeTypeInvalid),
                Some(Value::Sensitive) => Err(Error::AttributeSensitive),
                Some(Value::Bytes(value)) => match request.buffer.as_deref_mut() {
                    None => {
                        request.len = value.len() as CK_ULONG;
                        Ok(())
                    }
                    Some(buffer) if buffer.len() >= value.len() => {
                        buffer[..value.len()].copy_from_slice(value);
                        request.len = value.len() as CK_ULONG;
                        Ok(())
                    }
                    Some(_) => Err(Error::BufferTooSmall),
                },
            };
            if let Err(err) = outcome {
                request.len = CK_UNAVAILABLE_INFORMATION;
                if result.is_ok() {
                    result = Err(err);
                }
            }
        }
        result
    }

    /// `C_GetObjectSize`: the handle is checked; the size is not disclosed
    /// (`CK_UNAVAILABLE_INFORMATION`).
    pub fn object_size(
        &self,
        handle: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
    ) -> Result<CK_ULONG> {
        self.object(handle, object)?;
        Ok(CK_UNAVAILABLE_INFORMATION)
    }

    /// `C_SetAttributeValue`, `C_CopyObject`, `C_DestroyObject`: the objects
    /// cannot be modified, copied or destroyed.
    pub fn refuse_object_change(
        &self,
        handle: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.object(handle, object)?;
        Err(Error::ActionProhibited)
    }

    /// `C_WrapKey`, `C_DeriveKey` on an object: the module key never leaves
    /// the module and derives nothing.
    pub fn refuse_key_use(
        &self,
        handle: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        wrap: bool,
    ) -> Result<()> {
        let object = self.object(handle, key).map_err(key_handle)?;
        match (object.kind, wrap) {
            (ObjectKind::PrivateKey, true) => Err(Error::KeyUnextractable),
            (ObjectKind::Certificate, _) => Err(Error::KeyHandleInvalid),
            _ => Err(Error::KeyFunctionNotPermitted),
        }
    }

    // ------------------------------------------------------------ signing

    /// `C_SignInit`.
    pub fn sign_init(
        &mut self,
        handle: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        parameter: &[u8],
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        if self.session(handle)?.sign.is_some() {
            return Err(Error::OperationActive);
        }
        let mechanism = Mechanism::from_ck(mechanism, parameter)?;
        let object = self.object(handle, key).map_err(key_handle)?;
        match object.kind {
            ObjectKind::PrivateKey if object.flag(CKA_SIGN) => {}
            ObjectKind::Certificate => return Err(Error::KeyHandleInvalid),
            _ => return Err(Error::KeyFunctionNotPermitted),
        }
        tracing::debug!(session = handle, key, ?mechanism, "sign init");
        self.session_mut(handle)?.sign = Some(SignOperation::new(mechanism, key));
        Ok(())
    }

    /// `C_Sign`.
    pub fn sign(
        &mut self,
        handle: CK_SESSION_HANDLE,
        data: &[u8],
        output: &mut Output<'_>,
    ) -> Result<()> {
        let session = self.session(handle)?;
        let operation = session
            .sign
            .as_ref()
            .ok_or(Error::OperationNotInitialized)?;
        if operation.is_multipart() {
            self.session_mut(handle)?.sign = None;
            return Err(Error::OperationActive);
        }
        if !room_for_signature(output)? {
            return Ok(());
        }
        let value = operation.single_part_value(data);
        self.finish_sign(handle, value, output)
    }

    /// `C_SignUpdate`.
    pub fn sign_update(&mut self, handle: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        let session = self.session_mut(handle)?;
        let operation = session
            .sign
            .as_mut()
            .ok_or(Error::OperationNotInitialized)?;
        let result = operation.update(data);
        if result.is_err() {
            session.sign = None;
        }
        result
    }

    /// `C_SignFinal`.
    pub fn sign_final(&mut self, handle: CK_SESSION_HANDLE, output: &mut Output<'_>) -> Result<()> {
        let session = self.session(handle)?;
        let operation = session
            .sign
            .as_ref()
            .ok_or(Error::OperationNotInitialized)?;
        if operation.mechanism == Mechanism::Ecdsa {
            self.session_mut(handle)?.sign = None;
            return Err(Error::FunctionNotSupported);
        }
        if !room_for_signature(output)? {
            return Ok(());
        }
        let value = operation.final_value();
        self.finish_sign(handle, value, output)
    }

    /// Ends the operation and has the module sign `value`.
    fn finish_sign(
        &mut self,
        handle: CK_SESSION_HANDLE,
        value: Result<Vec<u8>>,
        output: &mut Output<'_>,
    ) -> Result<()> {
        let operation = self
            .session_mut(handle)?
            .sign
            .take()
            .ok_or(Error::OperationNotInitialized)?;
        let value = value?;
        // The key may have gone since C_SignInit (logout).
        self.object(handle, operation.key).map_err(key_handle)?;
        let index = self.session(handle)?.slot;
        let response = self.exchange(index, |link| {
            select(link)?;
            link.send([0x00, ins::PSO, 0x9E, 0x9A], &value)
                .map_err(transport_error)
        })?;
        tracing::debug!(
            session = handle,
            sw = format_args!("{:04X}", response.sw),
            "COMPUTE DIGITAL SIGNATURE"
        );
        match response.sw {
            sw::OK if response.data.len() == SIGNATURE_LEN => {
                if let Some(buffer) = output.buffer.as_deref_mut() {
                    buffer[..SIGNATURE_LEN].copy_from_slice(&response.data);
                }
                output.len = SIGNATURE_LEN;
                Ok(())
            }
            sw::SECURITY_STATUS => {
                // The module forgot the verification (a reset, another
                // application): the token is logged out.
                self.logged_out(index);
                Err(Error::UserNotLoggedIn)
            }
            // No longer OPERATING: the key is gone. What is cached of the
            // module is stale: read it again (new handles if it changed).
            sw::CONDITIONS => {
                if let Err(err) = self.read_token(index, true) {
                    tracing::debug!(slot = index, error = %err, "re-reading the module");
                }
                Err(Error::KeyHandleInvalid)
            }
            sw::WRONG_LENGTH => Err(Error::DataLenRange),
            sw::MEMORY_FAILURE => Err(Error::DeviceMemory),
            _ => Err(Error::DeviceError),
        }
    }
}

impl Drop for Provider {
    /// `C_Finalize`: a token still logged in is logged out on the module
    /// before its connection closes, so the verification does not outlive
    /// the application on a shared card.
    fn drop(&mut self) {
        for index in 0..self.slots.len() {
            if self.slots[index].logged_in {
                self.sessions.retain(|_, session| session.slot != index);
                self.after_close(index);
            }
        }
    }
}

/// Handles the length query and a short buffer: `Ok(true)` when the
/// signature should be computed.
fn room_for_signature(output: &mut Output<'_>) -> Result<bool> {
    output.len = SIGNATURE_LEN;
    match &output.buffer {
        None => Ok(false),
        Some(buffer) if buffer.len() < SIGNATURE_LEN => Err(Error::BufferTooSmall),
        Some(_) => Ok(true),
    }
}

/// An object lookup failure, as a key lookup failure.
fn key_handle(err: Error) -> Error {
    match err {
        Error::ObjectHandleInvalid => Error::KeyHandleInvalid,
        other => other,
    }
}

/// SELECT of our applet; anything but `9000` means it is gone.
fn select(link: &mut CardLink<&mut dyn Transport>) -> Result<()> {
    let response = link
        .send([0x00, ins::SELECT, 0x04, 0x00], &proto::AID)
        .map_err(transport_error)?;
    if response.sw == sw::OK {
        Ok(())
    } else {
        Err(Error::TokenNotPresent)
    }
}

/// VERIFY without data: the PIN's state.
fn pin_state(link: &mut CardLink<&mut dyn Transport>) -> Result<PinState> {
    let response = link
        .send(
            [0x00, ins::VERIFY, proto::P1_VERIFY, proto::PIN_REF_USER],
            &[],
        )
        .map_err(transport_error)?;
    Ok(match response.sw {
        sw::OK => PinState::Verified,
        sw::PIN_BLOCKED | 0x63C0 => PinState::Blocked,
        0x63C1..=0x63CF => PinState::TriesLeft((response.sw & 0x0F) as u8),
        _ => PinState::NotSet,
    })
}

/// Reads serial, lifecycle, certificates and PIN state, and builds the
/// objects (without handles).
fn read_view(link: &mut CardLink<&mut dyn Transport>) -> Result<TokenView> {
    let status = read_status(link).map_err(|err| match err {
        StatusError::Transport(err) => transport_error(err),
        StatusError::Status(_) => Error::TokenNotPresent,
        StatusError::Malformed(what) => {
            tracing::warn!(what, "malformed answer from the module");
            Error::DeviceError
        }
    })?;
    let lifecycle = status.info.lifecycle;
    let pin = if lifecycle == Lifecycle::Operating {
        pin_state(link)?
    } else {
        PinState::NotSet
    };
    let pin_set = pin != PinState::NotSet;
    let mut objects = Vec::new();
    let mut fingerprint = Sha384::new();
    fingerprint.update(status.serial.as_deref().unwrap_or("").as_bytes());
    fingerprint.update([lifecycle.code(), u8::from(pin_set)]);
    if let Some(cert) = &status.identity_cert {
        objects.push(objects::certificate(objects::LABEL_IDENTITY, cert, 1));
    }
    if lifecycle == Lifecycle::Operating {
        if let Some(cert) = &status.module_cert {
            objects.extend(objects::module_key_pair(cert, pin_set));
            objects.push(objects::certificate(objects::LABEL_MODULE, cert, 1));
        }
        if let Some(cert) = &status.unit_cert {
            objects.push(objects::certificate(objects::LABEL_UNIT, cert, 2));
        }
        if let Some(cert) = &status.central_cert {
            objects.push(objects::certificate(objects::LABEL_CENTRAL, cert, 2));
        }
    }
    for cert in [
        &status.identity_cert,
        &status.module_cert,
        &status.unit_cert,
        &status.central_cert,
    ] {
        let der = cert.as_ref().map(|c| c.der()).unwrap_or(&[]);
        fingerprint.update((der.len() as u64).to_be_bytes());
        fingerprint.update(der);
    }
    Ok(TokenView {
        serial: status.serial,
        lifecycle,
        pin,
        objects,
        fingerprint: fingerprint.finalize().into(),
    })
}
