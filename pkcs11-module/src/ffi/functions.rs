//! Every function of the PKCS#11 2.40 and 3.0 function lists.
//!
//! Functions the module does not offer (encryption, digests, verification,
//! key generation, message-based functions, …) return
//! `CKR_FUNCTION_NOT_SUPPORTED` once the library is initialized; the few
//! whose refusal has a more precise code (copying or destroying objects,
//! wrapping or deriving from the module key, random numbers, the legacy
//! parallel functions) return that.

#![allow(non_snake_case)]

use std::ffi::c_void;

use cryptoki_sys::*;

use super::{
    LIBRARY_VERSION, entry, finalize, initialize, input, input_slice, out, output_slice, padded,
    wait_for_slot_event, with_provider, write_list,
};
use crate::error::{Error, Result};
use crate::token::{AttributeRequest, Output};

/// Declares functions that only check initialization and return
/// `CKR_FUNCTION_NOT_SUPPORTED`.
macro_rules! unsupported {
    ($($name:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {$(
        unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            $(let _ = $arg;)*
            entry(stringify!($name), || with_provider(|_| Err(Error::FunctionNotSupported)))
        }
    )*};
}

// ------------------------------------------------------------------ general

unsafe extern "C" fn C_Initialize(init_args: *mut c_void) -> CK_RV {
    entry("C_Initialize", || {
        if !init_args.is_null() {
            // SAFETY: PKCS#11: a non-NULL argument points to a CK_C_INITIALIZE_ARGS.
            let args = unsafe { input(init_args.cast_const().cast::<CK_C_INITIALIZE_ARGS>()) }?;
            check_init_args(args)?;
        }
        initialize()
    })
}

/// `pReserved` must be NULL; the mutex functions all or none; and with
/// them, the provider must be allowed to use the OS's locking (it has no
/// other).
fn check_init_args(args: &CK_C_INITIALIZE_ARGS) -> Result<()> {
    if !args.pReserved.is_null() {
        return Err(Error::ArgumentsBad);
    }
    let given = [
        args.CreateMutex.is_some(),
        args.DestroyMutex.is_some(),
        args.LockMutex.is_some(),
        args.UnlockMutex.is_some(),
    ]
    .iter()
    .filter(|given| **given)
    .count();
    match given {
        0 => Ok(()),
        4 if args.flags & CKF_OS_LOCKING_OK != 0 => Ok(()),
        4 => Err(Error::CantLock),
        _ => Err(Error::ArgumentsBad),
    }
}

unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    entry("C_Finalize", || {
        if !reserved.is_null() {
            return Err(Error::ArgumentsBad);
        }
        finalize()
    })
}

unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    entry("C_GetInfo", || {
        with_provider(|_| {
            // SAFETY: PKCS#11: `info` points to a writable CK_INFO.
            let info = unsafe { out(info) }?;
            *info = CK_INFO {
                cryptokiVersion: CK_VERSION { major: 3, minor: 0 },
                manufacturerID: padded("Imprint"),
                flags: 0,
                libraryDescription: padded("Imprint PKCS#11 provider"),
                libraryVersion: LIBRARY_VERSION,
            };
            Ok(())
        })
    })
}

// ------------------------------------------------------------------ slots and tokens

unsafe extern "C" fn C_GetSlotList(
    token_present: CK_BBOOL,
    list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    entry("C_GetSlotList", || {
        with_provider(|provider| {
            if list.is_null() {
                // PKCS#11 lets the slot list change on a length query.
                provider.rescan();
            }
            let slots = provider.slot_list(token_present != CK_FALSE);
            // SAFETY: PKCS#11: `count` is writable and `list` NULL or `*count` slots long.
            unsafe { write_list(&slots, list, count) }
        })
    })
}

unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    entry("C_GetSlotInfo", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `info` points to a writable CK_SLOT_INFO.
            let info = unsafe { out(info) }?;
            let slot = provider.slot_info(slot)?;
            let mut flags = 0;
            if slot.token_present {
                flags |= CKF_TOKEN_PRESENT;
            }
            if slot.description.removable {
                flags |= CKF_REMOVABLE_DEVICE;
            }
            if slot.description.hardware {
                flags |= CKF_HW_SLOT;
            }
            *info = CK_SLOT_INFO {
                slotDescription: padded(&slot.description.description),
                manufacturerID: padded(&slot.description.manufacturer),
                flags,
                hardwareVersion: CK_VERSION { major: 0, minor: 0 },
                firmwareVersion: CK_VERSION { major: 0, minor: 0 },
            };
            Ok(())
        })
    })
}

unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    entry("C_GetTokenInfo", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `info` points to a writable CK_TOKEN_INFO.
            let info = unsafe { out(info) }?;
            let token = provider.token_info(slot)?;
            *info = CK_TOKEN_INFO {
                label: padded(&token.label),
                manufacturerID: padded("Imprint"),
                model: padded(&token.model),
                serialNumber: padded(&token.serial),
                flags: token.flags,
                ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
                ulSessionCount: token.sessions as CK_ULONG,
                ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
                ulRwSessionCount: token.rw_sessions as CK_ULONG,
                ulMaxPinLen: *crate::token::PIN_LEN.end() as CK_ULONG,
                ulMinPinLen: *crate::token::PIN_LEN.start() as CK_ULONG,
                ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
                ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
                ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
                ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
                hardwareVersion: CK_VERSION { major: 0, minor: 0 },
                // The applet's command-set version.
                firmwareVersion: CK_VERSION {
                    major: imprint_apdu::proto::COMMAND_SET_VERSION,
                    minor: 0,
                },
                utcTime: [b' '; 16],
            };
            Ok(())
        })
    })
}

unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    entry("C_GetMechanismList", || {
        with_provider(|provider| {
            let mechanisms = provider.mechanism_list(slot)?;
            // SAFETY: PKCS#11: `count` is writable and `list` NULL or `*count` entries long.
            unsafe { write_list(&mechanisms, list, count) }
        })
    })
}

unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    mechanism: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    entry("C_GetMechanismInfo", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `info` points to a writable CK_MECHANISM_INFO.
            let info = unsafe { out(info) }?;
            let mechanism = provider.mechanism_info(slot, mechanism)?;
            *info = CK_MECHANISM_INFO {
                ulMinKeySize: mechanism.min_key_bits,
                ulMaxKeySize: mechanism.max_key_bits,
                flags: mechanism.flags,
            };
            Ok(())
        })
    })
}

// Tokens are initialized and PINs set by personalization, not through PKCS#11.
unsupported! {
    C_InitToken(slot: CK_SLOT_ID, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG, label: *mut CK_UTF8CHAR);
    C_InitPIN(session: CK_SESSION_HANDLE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG);
    C_SetPIN(
        session: CK_SESSION_HANDLE,
        old: *mut CK_UTF8CHAR,
        old_len: CK_ULONG,
        new: *mut CK_UTF8CHAR,
        new_len: CK_ULONG,
    );
}

// ------------------------------------------------------------------ sessions

unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    application: *mut c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    // Notification callbacks are optional for providers; none are made.
    let _ = (application, notify);
    entry("C_OpenSession", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `session` points to a writable handle.
            let session = unsafe { out(session) }?;
            *session = provider.open_session(slot, flags)?;
            Ok(())
        })
    })
}

unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    entry("C_CloseSession", || {
        with_provider(|provider| provider.close_session(session))
    })
}

unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    entry("C_CloseAllSessions", || {
        with_provider(|provider| provider.close_all_sessions(slot))
    })
}

unsafe extern "C" fn C_GetSessionInfo(
    session: CK_SESSION_HANDLE,
    info: *mut CK_SESSION_INFO,
) -> CK_RV {
    entry("C_GetSessionInfo", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `info` points to a writable CK_SESSION_INFO.
            let info = unsafe { out(info) }?;
            let session = provider.session_info(session)?;
            *info = CK_SESSION_INFO {
                slotID: session.slot,
                state: session.state,
                flags: session.flags,
                ulDeviceError: 0,
            };
            Ok(())
        })
    })
}

unsupported! {
    C_GetOperationState(session: CK_SESSION_HANDLE, state: *mut CK_BYTE, state_len: *mut CK_ULONG);
    C_SetOperationState(
        session: CK_SESSION_HANDLE,
        state: *mut CK_BYTE,
        state_len: CK_ULONG,
        encryption_key: CK_OBJECT_HANDLE,
        authentication_key: CK_OBJECT_HANDLE,
    );
}

unsafe extern "C" fn C_Login(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
) -> CK_RV {
    entry("C_Login", || {
        with_provider(|provider| {
            // A NULL PIN asks for a protected authentication path: there is none.
            if pin.is_null() {
                return Err(Error::ArgumentsBad);
            }
            // SAFETY: PKCS#11: `pin` points to `pin_len` bytes.
            let pin = unsafe { input_slice(pin.cast_const(), pin_len) }?;
            provider.login(session, user, pin)
        })
    })
}

unsafe extern "C" fn C_Logout(session: CK_SESSION_HANDLE) -> CK_RV {
    entry("C_Logout", || {
        with_provider(|provider| provider.logout(session))
    })
}

// ------------------------------------------------------------------ objects

unsafe extern "C" fn C_CreateObject(
    session: CK_SESSION_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    let _ = (template, count, object);
    entry("C_CreateObject", || {
        with_provider(|provider| {
            provider.check_session(session)?;
            // The token's objects come from the module; none can be added.
            Err(Error::FunctionNotSupported)
        })
    })
}

unsafe extern "C" fn C_CopyObject(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    new_object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    let _ = (template, count, new_object);
    entry("C_CopyObject", || {
        with_provider(|provider| provider.refuse_object_change(session, object))
    })
}

unsafe extern "C" fn C_DestroyObject(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> CK_RV {
    entry("C_DestroyObject", || {
        with_provider(|provider| provider.refuse_object_change(session, object))
    })
}

unsafe extern "C" fn C_GetObjectSize(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    size: *mut CK_ULONG,
) -> CK_RV {
    entry("C_GetObjectSize", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `size` points to a writable CK_ULONG.
            let size = unsafe { out(size) }?;
            *size = provider.object_size(session, object)?;
            Ok(())
        })
    })
}

unsafe extern "C" fn C_GetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    entry("C_GetAttributeValue", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `template` points to `count` writable CK_ATTRIBUTEs.
            let template = match unsafe { output_slice(template, count) }? {
                Some(template) => template,
                None if count == 0 => &mut [],
                None => return Err(Error::ArgumentsBad),
            };
            let mut requests = Vec::with_capacity(template.len());
            for attribute in template.iter() {
                // SAFETY: PKCS#11: each non-NULL `pValue` points to
                // `ulValueLen` writable bytes, apart from the template array.
                let buffer =
                    unsafe { output_slice(attribute.pValue.cast::<u8>(), attribute.ulValueLen) }?;
                requests.push(AttributeRequest {
                    kind: attribute.type_,
                    buffer,
                    len: 0,
                });
            }
            let result = provider.get_attributes(session, object, &mut requests);
            match result {
                Ok(())
                | Err(
                    Error::AttributeSensitive | Error::AttributeTypeInvalid | Error::BufferTooSmall,
                ) => {
                    for (attribute, request) in template.iter_mut().zip(&requests) {
                        attribute.ulValueLen = request.len;
                    }
                }
                Err(_) => {}
            }
            result
        })
    })
}

unsafe extern "C" fn C_SetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    let _ = (template, count);
    entry("C_SetAttributeValue", || {
        with_provider(|provider| provider.refuse_object_change(session, object))
    })
}

unsafe extern "C" fn C_FindObjectsInit(
    session: CK_SESSION_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    entry("C_FindObjectsInit", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `template` is NULL (with 0) or `count` CK_ATTRIBUTEs.
            let template = unsafe { input_slice(template.cast_const(), count) }?;
            let mut wanted = Vec::with_capacity(template.len());
            for attribute in template {
                // SAFETY: PKCS#11: each `pValue` points to `ulValueLen` bytes.
                let value = unsafe {
                    input_slice(
                        attribute.pValue.cast_const().cast::<u8>(),
                        attribute.ulValueLen,
                    )
                }?;
                wanted.push((attribute.type_, value.to_vec()));
            }
            provider.find_init(session, &wanted)
        })
    })
}

unsafe extern "C" fn C_FindObjects(
    session: CK_SESSION_HANDLE,
    objects: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    entry("C_FindObjects", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `count` points to a writable CK_ULONG.
            let count = unsafe { out(count) }?;
            // SAFETY: PKCS#11: `objects` points to `max` writable handles.
            let objects = match unsafe { output_slice(objects, max) }? {
                Some(objects) => objects,
                None if max == 0 => &mut [],
                None => return Err(Error::ArgumentsBad),
            };
            let found = provider.find(session, objects.len())?;
            objects[..found.len()].copy_from_slice(&found);
            *count = found.len() as CK_ULONG;
            Ok(())
        })
    })
}

unsafe extern "C" fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    entry("C_FindObjectsFinal", || {
        with_provider(|provider| provider.find_final(session))
    })
}

// ------------------------------------------------------------------ operations not offered

unsupported! {
    C_EncryptInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_Encrypt(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        encrypted: *mut CK_BYTE,
        encrypted_len: *mut CK_ULONG,
    );
    C_EncryptUpdate(
        session: CK_SESSION_HANDLE,
        part: *mut CK_BYTE,
        part_len: CK_ULONG,
        encrypted: *mut CK_BYTE,
        encrypted_len: *mut CK_ULONG,
    );
    C_EncryptFinal(session: CK_SESSION_HANDLE, last: *mut CK_BYTE, last_len: *mut CK_ULONG);
    C_DecryptInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_Decrypt(
        session: CK_SESSION_HANDLE,
        encrypted: *mut CK_BYTE,
        encrypted_len: CK_ULONG,
        data: *mut CK_BYTE,
        data_len: *mut CK_ULONG,
    );
    C_DecryptUpdate(
        session: CK_SESSION_HANDLE,
        encrypted: *mut CK_BYTE,
        encrypted_len: CK_ULONG,
        part: *mut CK_BYTE,
        part_len: *mut CK_ULONG,
    );
    C_DecryptFinal(session: CK_SESSION_HANDLE, last: *mut CK_BYTE, last_len: *mut CK_ULONG);
    C_DigestInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM);
    C_Digest(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        digest: *mut CK_BYTE,
        digest_len: *mut CK_ULONG,
    );
    C_DigestUpdate(session: CK_SESSION_HANDLE, part: *mut CK_BYTE, part_len: CK_ULONG);
    C_DigestKey(session: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE);
    C_DigestFinal(session: CK_SESSION_HANDLE, digest: *mut CK_BYTE, digest_len: *mut CK_ULONG);
    C_SignRecoverInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_SignRecover(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: *mut CK_ULONG,
    );
    C_VerifyInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_Verify(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: CK_ULONG,
    );
    C_VerifyUpdate(session: CK_SESSION_HANDLE, part: *mut CK_BYTE, part_len: CK_ULONG);
    C_VerifyFinal(session: CK_SESSION_HANDLE, signature: *mut CK_BYTE, signature_len: CK_ULONG);
    C_VerifyRecoverInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_VerifyRecover(
        session: CK_SESSION_HANDLE,
        signature: *mut CK_BYTE,
        signature_len: CK_ULONG,
        data: *mut CK_BYTE,
        data_len: *mut CK_ULONG,
    );
    C_DigestEncryptUpdate(
        session: CK_SESSION_HANDLE,
        part: *mut CK_BYTE,
        part_len: CK_ULONG,
        encrypted: *mut CK_BYTE,
        encrypted_len: *mut CK_ULONG,
    );
    C_DecryptDigestUpdate(
        session: CK_SESSION_HANDLE,
        encrypted: *mut CK_BYTE,
        encrypted_len: CK_ULONG,
        part: *mut CK_BYTE,
        part_len: *mut CK_ULONG,
    );
    C_SignEncryptUpdate(
        session: CK_SESSION_HANDLE,
        part: *mut CK_BYTE,
        part_len: CK_ULONG,
        encrypted: *mut CK_BYTE,
        encrypted_len: *mut CK_ULONG,
    );
    C_DecryptVerifyUpdate(
        session: CK_SESSION_HANDLE,
        encrypted: *mut CK_BYTE,
        encrypted_len: CK_ULONG,
        part: *mut CK_BYTE,
        part_len: *mut CK_ULONG,
    );
    C_GenerateKey(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        template: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE,
    );
    C_GenerateKeyPair(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        public_template: *mut CK_ATTRIBUTE,
        public_count: CK_ULONG,
        private_template: *mut CK_ATTRIBUTE,
        private_count: CK_ULONG,
        public_key: *mut CK_OBJECT_HANDLE,
        private_key: *mut CK_OBJECT_HANDLE,
    );
    C_UnwrapKey(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        unwrapping_key: CK_OBJECT_HANDLE,
        wrapped: *mut CK_BYTE,
        wrapped_len: CK_ULONG,
        template: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE,
    );
}

// ------------------------------------------------------------------ signing

unsafe extern "C" fn C_SignInit(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    entry("C_SignInit", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `mechanism` points to a CK_MECHANISM.
            let mechanism = unsafe { input(mechanism.cast_const()) }?;
            // SAFETY: PKCS#11: `pParameter` points to `ulParameterLen` bytes.
            let parameter = unsafe {
                input_slice(
                    mechanism.pParameter.cast_const().cast::<u8>(),
                    mechanism.ulParameterLen,
                )
            }?;
            provider.sign_init(session, mechanism.mechanism, parameter, key)
        })
    })
}

unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    entry("C_Sign", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `data` points to `data_len` bytes.
            let data = unsafe { input_slice(data.cast_const(), data_len) }?;
            // SAFETY: PKCS#11: `signature_len` points to a writable CK_ULONG.
            let signature_len = unsafe { out(signature_len) }?;
            // SAFETY: PKCS#11: `signature` is NULL or `*signature_len` writable bytes.
            let buffer = unsafe { output_slice(signature, *signature_len) }?;
            let mut output = Output::new(buffer);
            let result = provider.sign(session, data, &mut output);
            if matches!(result, Ok(()) | Err(Error::BufferTooSmall)) {
                *signature_len = output.len as CK_ULONG;
            }
            result
        })
    })
}

unsafe extern "C" fn C_SignUpdate(
    session: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    part_len: CK_ULONG,
) -> CK_RV {
    entry("C_SignUpdate", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `part` points to `part_len` bytes.
            let part = unsafe { input_slice(part.cast_const(), part_len) }?;
            provider.sign_update(session, part)
        })
    })
}

unsafe extern "C" fn C_SignFinal(
    session: CK_SESSION_HANDLE,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    entry("C_SignFinal", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `signature_len` points to a writable CK_ULONG.
            let signature_len = unsafe { out(signature_len) }?;
            // SAFETY: PKCS#11: `signature` is NULL or `*signature_len` writable bytes.
            let buffer = unsafe { output_slice(signature, *signature_len) }?;
            let mut output = Output::new(buffer);
            let result = provider.sign_final(session, &mut output);
            if matches!(result, Ok(()) | Err(Error::BufferTooSmall)) {
                *signature_len = output.len as CK_ULONG;
            }
            result
        })
    })
}

// ------------------------------------------------------------------ keys, random, legacy

unsafe extern "C" fn C_WrapKey(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    wrapping_key: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    wrapped: *mut CK_BYTE,
    wrapped_len: *mut CK_ULONG,
) -> CK_RV {
    let _ = (mechanism, wrapping_key, wrapped, wrapped_len);
    entry("C_WrapKey", || {
        with_provider(|provider| provider.refuse_key_use(session, key, true))
    })
}

unsafe extern "C" fn C_DeriveKey(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    base_key: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    let _ = (mechanism, template, count, key);
    entry("C_DeriveKey", || {
        with_provider(|provider| provider.refuse_key_use(session, base_key, false))
    })
}

unsafe extern "C" fn C_SeedRandom(
    session: CK_SESSION_HANDLE,
    seed: *mut CK_BYTE,
    seed_len: CK_ULONG,
) -> CK_RV {
    let _ = (seed, seed_len);
    entry("C_SeedRandom", || {
        with_provider(|provider| {
            provider.check_session(session)?;
            // No generator to seed (pkcs11-tool --test reads this as "not implemented").
            Err(Error::RandomNoRng)
        })
    })
}

unsafe extern "C" fn C_GenerateRandom(
    session: CK_SESSION_HANDLE,
    random: *mut CK_BYTE,
    random_len: CK_ULONG,
) -> CK_RV {
    let _ = (random, random_len);
    entry("C_GenerateRandom", || {
        with_provider(|provider| {
            provider.check_session(session)?;
            // The applet draws randomness only for its own use.
            Err(Error::RandomNoRng)
        })
    })
}

unsafe extern "C" fn C_GetFunctionStatus(session: CK_SESSION_HANDLE) -> CK_RV {
    let _ = session;
    entry("C_GetFunctionStatus", || {
        with_provider(|_| Err(Error::FunctionNotParallel))
    })
}

unsafe extern "C" fn C_CancelFunction(session: CK_SESSION_HANDLE) -> CK_RV {
    let _ = session;
    entry("C_CancelFunction", || {
        with_provider(|_| Err(Error::FunctionNotParallel))
    })
}

unsafe extern "C" fn C_WaitForSlotEvent(
    flags: CK_FLAGS,
    slot: *mut CK_SLOT_ID,
    reserved: *mut c_void,
) -> CK_RV {
    entry("C_WaitForSlotEvent", || {
        with_provider(|_| Ok(()))?;
        if !reserved.is_null() {
            return Err(Error::ArgumentsBad);
        }
        // SAFETY: PKCS#11: `slot` points to a writable CK_SLOT_ID.
        let slot = unsafe { out(slot) }?;
        *slot = wait_for_slot_event(flags & CKF_DONT_BLOCK != 0)?;
        Ok(())
    })
}

// ------------------------------------------------------------------ PKCS#11 3.0

unsafe extern "C" fn C_LoginUser(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
    username: *mut CK_UTF8CHAR,
    username_len: CK_ULONG,
) -> CK_RV {
    entry("C_LoginUser", || {
        with_provider(|provider| {
            // SAFETY: PKCS#11: `username` points to `username_len` bytes.
            let username = unsafe { input_slice(username.cast_const(), username_len) }?;
            // The module has one user, without a name.
            if !username.is_empty() || pin.is_null() {
                return Err(Error::ArgumentsBad);
            }
            // SAFETY: PKCS#11: `pin` points to `pin_len` bytes.
            let pin = unsafe { input_slice(pin.cast_const(), pin_len) }?;
            provider.login(session, user, pin)
        })
    })
}

unsafe extern "C" fn C_SessionCancel(session: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    entry("C_SessionCancel", || {
        with_provider(|provider| provider.cancel(session, flags))
    })
}

unsupported! {
    C_MessageEncryptInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_EncryptMessage(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        associated: *mut CK_BYTE,
        associated_len: CK_ULONG,
        plaintext: *mut CK_BYTE,
        plaintext_len: CK_ULONG,
        ciphertext: *mut CK_BYTE,
        ciphertext_len: *mut CK_ULONG,
    );
    C_EncryptMessageBegin(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        associated: *mut CK_BYTE,
        associated_len: CK_ULONG,
    );
    C_EncryptMessageNext(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        part: *mut CK_BYTE,
        part_len: CK_ULONG,
        ciphertext: *mut CK_BYTE,
        ciphertext_len: *mut CK_ULONG,
        flags: CK_FLAGS,
    );
    C_MessageEncryptFinal(session: CK_SESSION_HANDLE);
    C_MessageDecryptInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_DecryptMessage(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        associated: *mut CK_BYTE,
        associated_len: CK_ULONG,
        ciphertext: *mut CK_BYTE,
        ciphertext_len: CK_ULONG,
        plaintext: *mut CK_BYTE,
        plaintext_len: *mut CK_ULONG,
    );
    C_DecryptMessageBegin(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        associated: *mut CK_BYTE,
        associated_len: CK_ULONG,
    );
    C_DecryptMessageNext(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        ciphertext: *mut CK_BYTE,
        ciphertext_len: CK_ULONG,
        plaintext: *mut CK_BYTE,
        plaintext_len: *mut CK_ULONG,
        flags: CK_FLAGS,
    );
    C_MessageDecryptFinal(session: CK_SESSION_HANDLE);
    C_MessageSignInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_SignMessage(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: *mut CK_ULONG,
    );
    C_SignMessageBegin(session: CK_SESSION_HANDLE, parameter: *mut c_void, parameter_len: CK_ULONG);
    C_SignMessageNext(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: *mut CK_ULONG,
    );
    C_MessageSignFinal(session: CK_SESSION_HANDLE);
    C_MessageVerifyInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_VerifyMessage(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: CK_ULONG,
    );
    C_VerifyMessageBegin(session: CK_SESSION_HANDLE, parameter: *mut c_void, parameter_len: CK_ULONG);
    C_VerifyMessageNext(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: CK_ULONG,
    );
    C_MessageVerifyFinal(session: CK_SESSION_HANDLE);
}

// ------------------------------------------------------------------ the lists

/// The PKCS#11 2.40 function list (`C_GetFunctionList`). Every entry is a
/// function of this module.
pub static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(super::C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};

/// The PKCS#11 3.0 function list (interface "PKCS 11", version 3.0).
pub static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
    version: CK_VERSION { major: 3, minor: 0 },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(super::C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
    C_GetInterfaceList: Some(super::C_GetInterfaceList),
    C_GetInterface: Some(super::C_GetInterface),
    C_LoginUser: Some(C_LoginUser),
    C_SessionCancel: Some(C_SessionCancel),
    C_MessageEncryptInit: Some(C_MessageEncryptInit),
    C_EncryptMessage: Some(C_EncryptMessage),
    C_EncryptMessageBegin: Some(C_EncryptMessageBegin),
    C_EncryptMessageNext: Some(C_EncryptMessageNext),
    C_MessageEncryptFinal: Some(C_MessageEncryptFinal),
    C_MessageDecryptInit: Some(C_MessageDecryptInit),
    C_DecryptMessage: Some(C_DecryptMessage),
    C_DecryptMessageBegin: Some(C_DecryptMessageBegin),
    C_DecryptMessageNext: Some(C_DecryptMessageNext),
    C_MessageDecryptFinal: Some(C_MessageDecryptFinal),
    C_MessageSignInit: Some(C_MessageSignInit),
    C_SignMessage: Some(C_SignMessage),
    C_SignMessageBegin: Some(C_SignMessageBegin),
    C_SignMessageNext: Some(C_SignMessageNext),
    C_MessageSignFinal: Some(C_MessageSignFinal),
    C_MessageVerifyInit: Some(C_MessageVerifyInit),
    C_VerifyMessage: Some(C_VerifyMessage),
    C_VerifyMessageBegin: Some(C_VerifyMessageBegin),
    C_VerifyMessageNext: Some(C_VerifyMessageNext),
    C_MessageVerifyFinal: Some(C_MessageVerifyFinal),
};
