//! The C ABI: `C_GetFunctionList`, `C_GetInterfaceList`, `C_GetInterface`
//! and the function lists behind them.
//!
//! ```text
//!  C caller ──▶ C_Xxx(raw pointers) ──▶ entry(): catch_unwind ──▶ pointer checks ──▶ Provider::xxx (safe)
//!                                          panic ─▶ CKR_GENERAL_ERROR              Result ─▶ CK_RV
//! ```
//!
//! This is the only module of the crate that may use `unsafe`. Every entry
//! point is an `unsafe extern "C" fn` whose body runs inside
//! [`std::panic::catch_unwind`], so a panic becomes `CKR_GENERAL_ERROR` and
//! never unwinds into (or aborts) the host. The bodies turn the caller's
//! pointers into references and slices (`CKR_ARGUMENTS_BAD` for a NULL or
//! misaligned one), call the safe [`Provider`] under the global lock, and
//! write results back. Every `unsafe` block carries a `SAFETY:` comment; they
//! all rest on the PKCS#11 contract that a non-NULL pointer the caller passes
//! points to valid memory of the stated type and length for the call's
//! duration.
//!
//! The global state is one `Mutex<Option<Provider>>` (`None` outside
//! `C_Initialize`…`C_Finalize`): with `CKF_OS_LOCKING_OK` every function may
//! be called from any thread. `C_WaitForSlotEvent` takes the lock only to
//! look, and sleeps between looks without it.

#![allow(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cryptoki_sys::*;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::token::Provider;

mod functions;
mod interface;

pub use functions::FUNCTION_LIST;

/// The provider's state while initialized.
static STATE: Mutex<Option<Provider>> = Mutex::new(None);

/// Bumped by every `C_Initialize` and `C_Finalize`, so that a thread blocked
/// in `C_WaitForSlotEvent` notices a `C_Finalize`.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// How often a blocking `C_WaitForSlotEvent` looks at the slots.
const EVENT_POLL: Duration = Duration::from_millis(200);

/// The library's version (`libraryVersion`).
const LIBRARY_VERSION: CK_VERSION = CK_VERSION { major: 0, minor: 1 };

/// Runs an entry point's body: catches panics, logs the call and its result.
fn entry(function: &'static str, body: impl FnOnce() -> Result<()>) -> CK_RV {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let rv = match body() {
            Ok(()) => CKR_OK,
            Err(err) => err.rv(),
        };
        tracing::debug!(function, rv = format_args!("{rv:#x}"), "called");
        rv
    }));
    outcome.unwrap_or(CKR_GENERAL_ERROR)
}

/// Runs `f` on the provider under the global lock. A lock poisoned by a
/// caught panic is taken over: the state it guards stays consistent between
/// calls, since every change is made by safe code that finishes or unwinds.
fn with_provider<R>(f: impl FnOnce(&mut Provider) -> Result<R>) -> Result<R> {
    let mut state = STATE.lock().unwrap_or_else(|poisoned| {
        STATE.clear_poison();
        poisoned.into_inner()
    });
    let provider = state.as_mut().ok_or(Error::NotInitialized)?;
    f(provider)
}

/// `C_Initialize`'s work once the arguments are checked.
fn initialize() -> Result<()> {
    let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    if state.is_some() {
        return Err(Error::AlreadyInitialized);
    }
    crate::log::init();
    let config = Config::from_environment().map_err(|err| {
        // The one message the provider prints without logging enabled: the
        // application would otherwise see only CKR_GENERAL_ERROR.
        eprintln!("imprint-pkcs11: {err}");
        tracing::error!(error = %err, "configuration");
        Error::GeneralError
    })?;
    tracing::debug!(?config, "initializing");
    *state = Some(Provider::from_config(&config));
    GENERATION.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// `C_Finalize`'s work.
fn finalize() -> Result<()> {
    let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    let provider = state.take().ok_or(Error::NotInitialized)?;
    GENERATION.fetch_add(1, Ordering::SeqCst);
    drop(state);
    // Closes every connection (logging out first where logged in).
    drop(provider);
    Ok(())
}

/// `C_WaitForSlotEvent`'s loop: looks under the lock, sleeps without it.
fn wait_for_slot_event(dont_block: bool) -> Result<CK_SLOT_ID> {
    let generation = GENERATION.load(Ordering::SeqCst);
    loop {
        let event = with_provider(|provider| Ok(provider.poll_slot_event()))?;
        if GENERATION.load(Ordering::SeqCst) != generation {
            return Err(Error::NotInitialized);
        }
        if let Some(slot) = event {
            return Ok(slot);
        }
        if dont_block {
            return Err(Error::NoEvent);
        }
        std::thread::sleep(EVENT_POLL);
        if GENERATION.load(Ordering::SeqCst) != generation {
            return Err(Error::NotInitialized);
        }
    }
}

// ------------------------------------------------------------------ pointers

/// A reference to the caller's output value.
///
/// # Safety
/// `ptr` is NULL or points to a valid, writable `T` not otherwise referenced
/// during the call.
unsafe fn out<'a, T>(ptr: *mut T) -> Result<&'a mut T> {
    if ptr.is_null() || !ptr.is_aligned() {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-NULL and aligned; validity is the caller's contract above.
    Ok(unsafe { &mut *ptr })
}

/// A reference to the caller's input value.
///
/// # Safety
/// `ptr` is NULL or points to a valid `T` for the call.
unsafe fn input<'a, T>(ptr: *const T) -> Result<&'a T> {
    if ptr.is_null() || !ptr.is_aligned() {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-NULL and aligned; validity is the caller's contract above.
    Ok(unsafe { &*ptr })
}

/// The caller's input array; NULL is allowed only with a length of 0.
///
/// # Safety
/// `ptr` is NULL or points to `len` valid `T`s for the call.
unsafe fn input_slice<'a, T>(ptr: *const T, len: CK_ULONG) -> Result<&'a [T]> {
    let len = usize::try_from(len).map_err(|_| Error::ArgumentsBad)?;
    if ptr.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Error::ArgumentsBad)
        };
    }
    if !ptr.is_aligned() {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-NULL and aligned; the caller guarantees `len` valid elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The caller's output array, or `None` for a NULL pointer (a length query).
///
/// # Safety
/// `ptr` is NULL or points to `len` writable `T`s not otherwise referenced
/// during the call.
unsafe fn output_slice<'a, T>(ptr: *mut T, len: CK_ULONG) -> Result<Option<&'a mut [T]>> {
    if ptr.is_null() {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| Error::ArgumentsBad)?;
    if !ptr.is_aligned() {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-NULL and aligned; the caller guarantees `len` writable elements.
    Ok(Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) }))
}

/// Writes a list with PKCS#11's length convention: `list` NULL → only the
/// count; too small → the count and `CKR_BUFFER_TOO_SMALL`.
///
/// # Safety
/// As [`output_slice`] for `list` with `*count` elements, and [`out`] for `count`.
unsafe fn write_list<T: Copy>(items: &[T], list: *mut T, count: *mut CK_ULONG) -> Result<()> {
    // SAFETY: the caller's contract for `count`.
    let count = unsafe { out(count) }?;
    // SAFETY: the caller's contract for `list` with `*count` elements.
    let buffer = unsafe { output_slice(list, *count) }?;
    let needed = items.len() as CK_ULONG;
    match buffer {
        None => {
            *count = needed;
            Ok(())
        }
        Some(buffer) if buffer.len() < items.len() => {
            *count = needed;
            Err(Error::BufferTooSmall)
        }
        Some(buffer) => {
            buffer[..items.len()].copy_from_slice(items);
            *count = needed;
            Ok(())
        }
    }
}

/// A blank-padded fixed-size text field, cut at a character boundary.
fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut field = [b' '; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].copy_from_slice(&text.as_bytes()[..end]);
    field
}

/// `C_GetFunctionList`: the PKCS#11 2.40 function list.
///
/// # Safety
/// `list` is NULL or points to a writable `CK_FUNCTION_LIST_PTR`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut CK_FUNCTION_LIST_PTR) -> CK_RV {
    entry("C_GetFunctionList", || {
        // SAFETY: the caller's contract for `list`.
        let list = unsafe { out(list) }?;
        *list = ptr::addr_of!(FUNCTION_LIST).cast_mut();
        Ok(())
    })
}

pub use interface::{C_GetInterface, C_GetInterfaceList};

#[cfg(test)]
mod tests;
