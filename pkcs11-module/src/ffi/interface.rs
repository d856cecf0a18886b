//! PKCS#11 3.0 interface discovery: `C_GetInterfaceList` and
//! `C_GetInterface`. Two interfaces, both named "PKCS 11": version 3.0 (the
//! default) and version 2.40.

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;

use super::functions::{FUNCTION_LIST, FUNCTION_LIST_3_0};
use super::{entry, input, out, write_list};
use crate::error::Error;

/// The interface name, NUL-terminated.
const NAME: &std::ffi::CStr = c"PKCS 11";

/// A `CK_INTERFACE` in a static.
#[repr(transparent)]
struct Interface(CK_INTERFACE);

// SAFETY: the pointers inside point to immutable statics (the name and the
// function lists), which every thread may read.
unsafe impl Sync for Interface {}

static INTERFACES: [Interface; 2] = [
    Interface(CK_INTERFACE {
        pInterfaceName: NAME.as_ptr().cast::<CK_UTF8CHAR>().cast_mut(),
        pFunctionList: ptr::addr_of!(FUNCTION_LIST_3_0).cast::<c_void>().cast_mut(),
        flags: 0,
    }),
    Interface(CK_INTERFACE {
        pInterfaceName: NAME.as_ptr().cast::<CK_UTF8CHAR>().cast_mut(),
        pFunctionList: ptr::addr_of!(FUNCTION_LIST).cast::<c_void>().cast_mut(),
        flags: 0,
    }),
];

/// `C_GetInterfaceList`: both interfaces, with PKCS#11's length convention.
///
/// # Safety
/// `list` is NULL or points to `*count` writable `CK_INTERFACE`s; `count`
/// points to a writable `CK_ULONG`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterfaceList(
    list: *mut CK_INTERFACE,
    count: *mut CK_ULONG,
) -> CK_RV {
    entry("C_GetInterfaceList", || {
        let interfaces: Vec<CK_INTERFACE> = INTERFACES.iter().map(|i| i.0).collect();
        // SAFETY: the caller's contract above.
        unsafe { write_list(&interfaces, list, count) }
    })
}

/// `C_GetInterface`: "PKCS 11" (or NULL) in version 3.0 (or NULL) or 2.40.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `version` NULL or a
/// `CK_VERSION`; `interface` points to a writable `CK_INTERFACE_PTR`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterface(
    name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    interface: *mut CK_INTERFACE_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    entry("C_GetInterface", || {
        // SAFETY: the caller's contract for `interface`.
        let interface = unsafe { out(interface) }?;
        if !name.is_null() {
            // SAFETY: the caller's contract: a NUL-terminated string.
            let name = unsafe { std::ffi::CStr::from_ptr(name.cast_const().cast()) };
            if name != NAME {
                return Err(Error::ArgumentsBad);
            }
        }
        let index = if version.is_null() {
            0
        } else {
            // SAFETY: the caller's contract for `version`.
            match unsafe { input(version.cast_const()) }? {
                CK_VERSION { major: 3, minor: 0 } => 0,
                CK_VERSION {
                    major: 2,
                    minor: 40,
                } => 1,
                _ => return Err(Error::ArgumentsBad),
            }
        };
        let found = &INTERFACES[index];
        // Flags the caller requires that the interface does not have.
        if flags & !found.0.flags != 0 {
            return Err(Error::ArgumentsBad);
        }
        *interface = ptr::addr_of!(found.0).cast_mut();
        Ok(())
    })
}
