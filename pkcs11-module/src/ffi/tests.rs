use std::ptr;

use cryptoki_sys::*;

use super::functions::FUNCTION_LIST_3_0;
use super::*;

#[test]
fn padded_fields_are_blank_filled_and_cut_at_characters() {
    assert_eq!(&padded::<8>("ab"), b"ab      ");
    assert_eq!(&padded::<4>("abcdef"), b"abcd");
    // "é" is two bytes: it is not cut in half.
    assert_eq!(&padded::<3>("aé"), "aé".as_bytes());
    assert_eq!(&padded::<2>("aé"), b"a ");
}

#[test]
fn every_entry_of_both_lists_is_a_function() {
    // The lists are plain arrays of Option<fn>: look at them as such.
    fn all_some<T>(list: &T, functions: usize) -> bool {
        let size = std::mem::size_of::<T>();
        let fields = (size - 8) / 8;
        assert_eq!(fields, functions);
        // SAFETY: the lists are repr(C) structs of a CK_VERSION (padded to 8
        // bytes) followed by pointer-sized Option<fn> fields; reading them as
        // usize words is reading initialized memory.
        let words =
            unsafe { std::slice::from_raw_parts((list as *const T).cast::<usize>(), size / 8) };
        words[1..].iter().all(|word| *word != 0)
    }
    assert!(all_some(&FUNCTION_LIST, 68));
    assert!(all_some(&FUNCTION_LIST_3_0, 92));
}

#[test]
fn function_list_and_interfaces_are_returned() {
    let mut list: CK_FUNCTION_LIST_PTR = ptr::null_mut();
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { C_GetFunctionList(&mut list) }, CKR_OK);
    assert_eq!(list.cast_const(), ptr::addr_of!(FUNCTION_LIST));
    // SAFETY: NULL is refused, not written.
    assert_eq!(
        unsafe { C_GetFunctionList(ptr::null_mut()) },
        CKR_ARGUMENTS_BAD
    );

    let mut count: CK_ULONG = 0;
    // SAFETY: a length query with a valid count pointer.
    assert_eq!(
        unsafe { C_GetInterfaceList(ptr::null_mut(), &mut count) },
        CKR_OK
    );
    assert_eq!(count, 2);
    let mut one = [CK_INTERFACE::default(); 1];
    let mut small: CK_ULONG = 1;
    // SAFETY: `one` holds `small` interfaces.
    assert_eq!(
        unsafe { C_GetInterfaceList(one.as_mut_ptr(), &mut small) },
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(small, 2);

    let mut interface: CK_INTERFACE_PTR = ptr::null_mut();
    let mut v240 = CK_VERSION {
        major: 2,
        minor: 40,
    };
    // SAFETY: valid pointers; the name is NUL-terminated.
    let rv = unsafe {
        C_GetInterface(
            c"PKCS 11".as_ptr().cast_mut().cast(),
            &mut v240,
            &mut interface,
            0,
        )
    };
    assert_eq!(rv, CKR_OK);
    // SAFETY: the call returned a pointer to a static interface.
    let found = unsafe { *interface };
    assert_eq!(
        found.pFunctionList.cast_const(),
        ptr::addr_of!(FUNCTION_LIST).cast()
    );
    // SAFETY: as above, default name and version.
    assert_eq!(
        unsafe { C_GetInterface(ptr::null_mut(), ptr::null_mut(), &mut interface, 0) },
        CKR_OK
    );
    // SAFETY: as above.
    let default = unsafe { *interface };
    assert_eq!(
        default.pFunctionList.cast_const(),
        ptr::addr_of!(FUNCTION_LIST_3_0).cast()
    );
    let mut v9 = CK_VERSION { major: 9, minor: 0 };
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { C_GetInterface(ptr::null_mut(), &mut v9, &mut interface, 0) },
        CKR_ARGUMENTS_BAD
    );
    // SAFETY: valid pointers; a flag the interface lacks.
    assert_eq!(
        unsafe {
            C_GetInterface(
                ptr::null_mut(),
                ptr::null_mut(),
                &mut interface,
                CKF_INTERFACE_FORK_SAFE,
            )
        },
        CKR_ARGUMENTS_BAD
    );
}

/// Every entry point, called as a careless or hostile application would:
/// before `C_Initialize`, with NULL pointers, unknown handles and in the
/// wrong state. Each answers with the right `CKR_…` and nothing crashes.
/// (The one test that touches the global state.)
#[test]
fn every_function_refuses_bad_calls_without_crashing() {
    use std::ffi::c_void;

    use imprint_tests::{Pki, RecordingJournal, file_module, manufacture_with, personalized};

    use crate::backend::Device;
    use crate::backend::inproc::{FileSource, InProcessDevice};

    let f = &FUNCTION_LIST_3_0;
    let null = ptr::null_mut::<c_void>();
    let nb = ptr::null_mut::<CK_BYTE>();
    let nu = ptr::null_mut::<CK_ULONG>();
    let nm = ptr::null_mut::<CK_MECHANISM>();
    let na = ptr::null_mut::<CK_ATTRIBUTE>();
    let nh = ptr::null_mut::<CK_OBJECT_HANDLE>();

    // SAFETY (for every call below): the pointers passed are NULL or point
    // to live locals of the right type and length; the functions come from
    // our own list.
    macro_rules! call {
        ($name:ident($($arg:expr),*)) => {
            unsafe { (f.$name.expect(stringify!($name)))($($arg),*) }
        };
    }
    macro_rules! check {
        ($name:ident($($arg:expr),*), $expected:expr) => {
            assert_eq!(
                call!($name($($arg),*)),
                $expected,
                "{}: got {:#x}",
                stringify!($name),
                call!($name($($arg),*))
            );
        };
    }

    // Everything before C_Initialize (only this test touches the state).
    *STATE.lock().unwrap_or_else(PoisonError::into_inner) = None;
    let ni = CKR_CRYPTOKI_NOT_INITIALIZED;
    let mut info = CK_INFO::default();
    check!(C_GetInfo(&mut info), ni);
    check!(C_Finalize(null), ni);
    let mut count: CK_ULONG = 0;
    check!(C_GetSlotList(CK_FALSE, ptr::null_mut(), &mut count), ni);
    check!(
        C_OpenSession(0, CKF_SERIAL_SESSION, null, None, ptr::null_mut()),
        ni
    );
    check!(C_CloseSession(1), ni);
    check!(C_SignInit(1, nm, 1), ni);
    check!(C_EncryptInit(1, nm, 1), ni);
    check!(C_GetFunctionStatus(1), ni);
    check!(
        C_WaitForSlotEvent(CKF_DONT_BLOCK, ptr::null_mut(), null),
        ni
    );
    check!(C_MessageSignFinal(1), ni);

    // C_Initialize's arguments.
    let mut args = CK_C_INITIALIZE_ARGS {
        pReserved: ptr::NonNull::<u8>::dangling().as_ptr().cast(),
        ..CK_C_INITIALIZE_ARGS::default()
    };
    check!(C_Initialize((&raw mut args).cast()), CKR_ARGUMENTS_BAD);
    unsafe extern "C" fn create(_: *mut *mut c_void) -> CK_RV {
        CKR_OK
    }
    unsafe extern "C" fn other(_: *mut c_void) -> CK_RV {
        CKR_OK
    }
    let mut partial = CK_C_INITIALIZE_ARGS {
        CreateMutex: Some(create),
        ..CK_C_INITIALIZE_ARGS::default()
    };
    check!(C_Initialize((&raw mut partial).cast()), CKR_ARGUMENTS_BAD);
    let mut app_locks = CK_C_INITIALIZE_ARGS {
        CreateMutex: Some(create),
        DestroyMutex: Some(other),
        LockMutex: Some(other),
        UnlockMutex: Some(other),
        flags: 0,
        pReserved: null,
    };
    check!(C_Initialize((&raw mut app_locks).cast()), CKR_CANT_LOCK);
    app_locks.flags = CKF_OS_LOCKING_OK;
    check!(C_Initialize((&raw mut app_locks).cast()), CKR_OK);
    check!(C_Initialize(null), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    check!(C_Finalize((&raw mut args).cast()), CKR_ARGUMENTS_BAD);
    check!(C_Finalize(null), CKR_OK);
    check!(C_Initialize(null), CKR_OK);
    check!(C_GetInfo(ptr::null_mut()), CKR_ARGUMENTS_BAD);
    check!(C_GetInfo(&mut info), CKR_OK);
    assert_eq!(info.cryptokiVersion.major, 3);

    // Now one personalized in-process module in slot 0.
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new();
    {
        let mut link = file_module(dir.path());
        manufacture_with(&mut link, &pki.manufacturer);
        personalized(&mut link, &pki.unit, &mut RecordingJournal::default()).expect("personalize");
    }
    let device: Box<dyn Device> = Box::new(InProcessDevice::new(FileSource::new(dir.path())));
    *STATE.lock().unwrap_or_else(PoisonError::into_inner) =
        Some(Provider::with_devices(vec![device]));

    // Slots and tokens: NULL pointers, unknown slots, length conventions.
    check!(
        C_GetSlotList(CK_TRUE, ptr::null_mut(), ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );
    check!(C_GetSlotList(CK_TRUE, ptr::null_mut(), &mut count), CKR_OK);
    assert_eq!(count, 1);
    let mut none: [CK_SLOT_ID; 0] = [];
    count = 0;
    check!(
        C_GetSlotList(CK_TRUE, none.as_mut_ptr(), &mut count),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(count, 1);
    let mut slot_info = CK_SLOT_INFO::default();
    check!(C_GetSlotInfo(0, ptr::null_mut()), CKR_ARGUMENTS_BAD);
    check!(C_GetSlotInfo(99, &mut slot_info), CKR_SLOT_ID_INVALID);
    check!(C_GetSlotInfo(0, &mut slot_info), CKR_OK);
    let mut token = CK_TOKEN_INFO::default();
    check!(C_GetTokenInfo(0, ptr::null_mut()), CKR_ARGUMENTS_BAD);
    check!(C_GetTokenInfo(99, &mut token), CKR_SLOT_ID_INVALID);
    check!(C_GetTokenInfo(0, &mut token), CKR_OK);
    check!(
        C_GetMechanismList(0, ptr::null_mut(), ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );
    check!(
        C_GetMechanismList(99, ptr::null_mut(), &mut count),
        CKR_SLOT_ID_INVALID
    );
    check!(C_GetMechanismList(0, ptr::null_mut(), &mut count), CKR_OK);
    assert_eq!(count, 3);
    let mut mechanism_info = CK_MECHANISM_INFO::default();
    check!(
        C_GetMechanismInfo(0, CKM_ECDSA, ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );
    check!(
        C_GetMechanismInfo(0, CKM_AES_CBC, &mut mechanism_info),
        CKR_MECHANISM_INVALID
    );
    check!(
        C_GetMechanismInfo(99, CKM_ECDSA, &mut mechanism_info),
        CKR_SLOT_ID_INVALID
    );
    check!(C_InitToken(0, nb, 0, nb), CKR_FUNCTION_NOT_SUPPORTED);
    check!(
        C_WaitForSlotEvent(CKF_DONT_BLOCK, ptr::null_mut(), null),
        CKR_ARGUMENTS_BAD
    );
    let mut event_slot: CK_SLOT_ID = 0;
    check!(
        C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut event_slot, (&raw mut args).cast()),
        CKR_ARGUMENTS_BAD
    );
    check!(
        C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut event_slot, null),
        CKR_NO_EVENT
    );

    // Sessions.
    let mut session: CK_SESSION_HANDLE = 0;
    check!(
        C_OpenSession(0, CKF_SERIAL_SESSION, null, None, ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );
    check!(
        C_OpenSession(0, 0, null, None, &mut session),
        CKR_SESSION_PARALLEL_NOT_SUPPORTED
    );
    check!(
        C_OpenSession(99, CKF_SERIAL_SESSION, null, None, &mut session),
        CKR_SLOT_ID_INVALID
    );
    check!(
        C_OpenSession(0, CKF_SERIAL_SESSION, null, None, &mut session),
        CKR_OK
    );
    let bad: CK_SESSION_HANDLE = session + 1000;
    let mut session_info = CK_SESSION_INFO::default();
    check!(
        C_GetSessionInfo(session, ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );
    check!(
        C_GetSessionInfo(bad, &mut session_info),
        CKR_SESSION_HANDLE_INVALID
    );
    check!(C_GetSessionInfo(session, &mut session_info), CKR_OK);
    check!(C_CloseSession(bad), CKR_SESSION_HANDLE_INVALID);
    check!(C_CloseAllSessions(99), CKR_SLOT_ID_INVALID);
    check!(C_GetFunctionStatus(session), CKR_FUNCTION_NOT_PARALLEL);
    check!(C_CancelFunction(session), CKR_FUNCTION_NOT_PARALLEL);
    check!(
        C_GetOperationState(session, nb, nu),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    check!(
        C_SetOperationState(session, nb, 0, 0, 0),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    check!(C_InitPIN(session, nb, 0), CKR_FUNCTION_NOT_SUPPORTED);
    check!(C_SetPIN(session, nb, 0, nb, 0), CKR_FUNCTION_NOT_SUPPORTED);
    check!(C_SessionCancel(bad, CKF_SIGN), CKR_SESSION_HANDLE_INVALID);
    check!(
        C_SessionCancel(session, CKF_SIGN | CKF_FIND_OBJECTS),
        CKR_OK
    );

    // Login without a PIN on the module, and in the wrong state.
    let mut pin = *b"1234";
    check!(C_Login(session, CKU_USER, nb, 4), CKR_ARGUMENTS_BAD);
    check!(
        C_Login(bad, CKU_USER, pin.as_mut_ptr(), 4),
        CKR_SESSION_HANDLE_INVALID
    );
    check!(
        C_Login(session, CKU_USER, pin.as_mut_ptr(), 4),
        CKR_USER_PIN_NOT_INITIALIZED
    );
    check!(
        C_LoginUser(session, CKU_USER, pin.as_mut_ptr(), 4, nb, 3),
        CKR_ARGUMENTS_BAD
    );
    check!(C_Logout(session), CKR_USER_NOT_LOGGED_IN);
    check!(C_Logout(bad), CKR_SESSION_HANDLE_INVALID);

    // Objects.
    let mut key: CK_OBJECT_HANDLE = 0;
    check!(
        C_FindObjects(session, &mut key, 1, &mut count),
        CKR_OPERATION_NOT_INITIALIZED
    );
    check!(C_FindObjectsFinal(session), CKR_OPERATION_NOT_INITIALIZED);
    check!(C_FindObjectsInit(session, na, 1), CKR_ARGUMENTS_BAD);
    check!(C_FindObjectsInit(bad, na, 0), CKR_SESSION_HANDLE_INVALID);
    let mut class = CKO_PRIVATE_KEY;
    let mut template = [CK_ATTRIBUTE {
        type_: CKA_CLASS,
        pValue: (&raw mut class).cast(),
        ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
    }];
    let mut broken = [CK_ATTRIBUTE {
        type_: CKA_CLASS,
        pValue: null,
        ulValueLen: 8,
    }];
    check!(
        C_FindObjectsInit(session, broken.as_mut_ptr(), 1),
        CKR_ARGUMENTS_BAD
    );
    check!(C_FindObjectsInit(session, template.as_mut_ptr(), 1), CKR_OK);
    check!(
        C_FindObjectsInit(session, template.as_mut_ptr(), 1),
        CKR_OPERATION_ACTIVE
    );
    check!(C_FindObjects(session, nh, 1, &mut count), CKR_ARGUMENTS_BAD);
    check!(
        C_FindObjects(session, &mut key, 1, ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );
    check!(C_FindObjects(session, &mut key, 1, &mut count), CKR_OK);
    assert_eq!(count, 1);
    check!(C_FindObjects(session, nh, 0, &mut count), CKR_OK);
    assert_eq!(count, 0);
    check!(C_FindObjectsFinal(session), CKR_OK);
    let bad_object = key + 1000;

    check!(C_GetAttributeValue(session, key, na, 1), CKR_ARGUMENTS_BAD);
    check!(C_GetAttributeValue(session, key, na, 0), CKR_OK);
    check!(
        C_GetAttributeValue(session, bad_object, na, 0),
        CKR_OBJECT_HANDLE_INVALID
    );
    check!(
        C_GetAttributeValue(bad, key, template.as_mut_ptr(), 1),
        CKR_SESSION_HANDLE_INVALID
    );
    check!(
        C_GetAttributeValue(session, bad_object, template.as_mut_ptr(), 1),
        CKR_OBJECT_HANDLE_INVALID
    );
    let mut value = [CK_ATTRIBUTE {
        type_: CKA_VALUE,
        pValue: null,
        ulValueLen: 0,
    }];
    check!(
        C_GetAttributeValue(session, key, value.as_mut_ptr(), 1),
        CKR_ATTRIBUTE_SENSITIVE
    );
    assert_eq!(value[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    let mut tiny = [0u8; 1];
    let mut label = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: tiny.as_mut_ptr().cast(),
        ulValueLen: 1,
    }];
    check!(
        C_GetAttributeValue(session, key, label.as_mut_ptr(), 1),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(label[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    label[0].pValue = null;
    check!(
        C_GetAttributeValue(session, key, label.as_mut_ptr(), 1),
        CKR_OK
    );
    assert_eq!(label[0].ulValueLen, 6, "\"module\"");
    let mut size: CK_ULONG = 0;
    check!(C_GetObjectSize(session, key, nu), CKR_ARGUMENTS_BAD);
    check!(
        C_GetObjectSize(session, bad_object, &mut size),
        CKR_OBJECT_HANDLE_INVALID
    );
    check!(C_GetObjectSize(session, key, &mut size), CKR_OK);
    check!(
        C_SetAttributeValue(session, key, template.as_mut_ptr(), 1),
        CKR_ACTION_PROHIBITED
    );
    check!(
        C_SetAttributeValue(session, bad_object, na, 0),
        CKR_OBJECT_HANDLE_INVALID
    );
    check!(C_CopyObject(session, key, na, 0, nh), CKR_ACTION_PROHIBITED);
    check!(C_DestroyObject(session, key), CKR_ACTION_PROHIBITED);
    check!(C_DestroyObject(bad, key), CKR_SESSION_HANDLE_INVALID);
    check!(
        C_CreateObject(session, na, 0, nh),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    check!(C_CreateObject(bad, na, 0, nh), CKR_SESSION_HANDLE_INVALID);
    check!(
        C_WrapKey(session, nm, 0, key, nb, nu),
        CKR_KEY_UNEXTRACTABLE
    );
    check!(
        C_WrapKey(session, nm, 0, bad_object, nb, nu),
        CKR_KEY_HANDLE_INVALID
    );
    check!(
        C_DeriveKey(session, nm, key, na, 0, nh),
        CKR_KEY_FUNCTION_NOT_PERMITTED
    );
    check!(
        C_UnwrapKey(session, nm, key, nb, 0, na, 0, nh),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    check!(
        C_GenerateKeyPair(session, nm, na, 0, na, 0, nh, nh),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    check!(
        C_GenerateKey(session, nm, na, 0, nh),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    check!(C_GenerateRandom(session, nb, 0), CKR_RANDOM_NO_RNG);
    check!(C_GenerateRandom(bad, nb, 0), CKR_SESSION_HANDLE_INVALID);
    check!(C_SeedRandom(session, nb, 0), CKR_RANDOM_NO_RNG);

    // Signing: NULL pointers, bad mechanisms and keys, the state machine.
    let mut signature = [0u8; 96];
    let mut signature_len: CK_ULONG = 96;
    let mut data = [0x5Au8; 48];
    check!(
        C_Sign(
            session,
            data.as_mut_ptr(),
            48,
            signature.as_mut_ptr(),
            &mut signature_len
        ),
        CKR_OPERATION_NOT_INITIALIZED
    );
    check!(
        C_SignUpdate(session, data.as_mut_ptr(), 48),
        CKR_OPERATION_NOT_INITIALIZED
    );
    check!(
        C_SignFinal(session, signature.as_mut_ptr(), &mut signature_len),
        CKR_OPERATION_NOT_INITIALIZED
    );
    check!(C_SignInit(session, nm, key), CKR_ARGUMENTS_BAD);
    let mut aes = CK_MECHANISM {
        mechanism: CKM_AES_CBC,
        pParameter: null,
        ulParameterLen: 0,
    };
    check!(C_SignInit(session, &mut aes, key), CKR_MECHANISM_INVALID);
    let mut with_bad_parameter = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: null,
        ulParameterLen: 4,
    };
    check!(
        C_SignInit(session, &mut with_bad_parameter, key),
        CKR_ARGUMENTS_BAD
    );
    let mut ecdsa = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: null,
        ulParameterLen: 0,
    };
    check!(C_SignInit(bad, &mut ecdsa, key), CKR_SESSION_HANDLE_INVALID);
    check!(
        C_SignInit(session, &mut ecdsa, bad_object),
        CKR_KEY_HANDLE_INVALID
    );
    check!(C_SignInit(session, &mut ecdsa, key), CKR_OK);
    check!(C_SignInit(session, &mut ecdsa, key), CKR_OPERATION_ACTIVE);
    check!(
        C_Sign(session, nb, 48, signature.as_mut_ptr(), &mut signature_len),
        CKR_ARGUMENTS_BAD
    );
    check!(
        C_Sign(session, data.as_mut_ptr(), 48, signature.as_mut_ptr(), nu),
        CKR_ARGUMENTS_BAD
    );
    signature_len = 0;
    check!(
        C_Sign(session, data.as_mut_ptr(), 48, nb, &mut signature_len),
        CKR_OK
    );
    assert_eq!(signature_len, 96, "a length query");
    signature_len = 95;
    check!(
        C_Sign(
            session,
            data.as_mut_ptr(),
            48,
            signature.as_mut_ptr(),
            &mut signature_len
        ),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(signature_len, 96);
    check!(
        C_Sign(
            session,
            data.as_mut_ptr(),
            48,
            signature.as_mut_ptr(),
            &mut signature_len
        ),
        CKR_OK
    );
    assert_eq!(signature_len, 96);
    check!(C_SignInit(session, &mut ecdsa, key), CKR_OK);
    check!(C_SignUpdate(session, nb, 4), CKR_ARGUMENTS_BAD);
    check!(
        C_SignUpdate(session, data.as_mut_ptr(), 4),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    check!(
        C_SignFinal(session, signature.as_mut_ptr(), &mut signature_len),
        CKR_OPERATION_NOT_INITIALIZED
    );
    let mut sha384 = CK_MECHANISM {
        mechanism: CKM_ECDSA_SHA384,
        pParameter: null,
        ulParameterLen: 0,
    };
    check!(C_SignInit(session, &mut sha384, key), CKR_OK);
    check!(C_SignUpdate(session, data.as_mut_ptr(), 48), CKR_OK);
    check!(
        C_SignFinal(session, signature.as_mut_ptr(), nu),
        CKR_ARGUMENTS_BAD
    );
    signature_len = 96;
    check!(
        C_SignFinal(session, signature.as_mut_ptr(), &mut signature_len),
        CKR_OK
    );
    check!(C_SignInit(session, &mut sha384, key), CKR_OK);
    check!(C_SessionCancel(session, CKF_SIGN), CKR_OK);
    check!(
        C_SignFinal(session, signature.as_mut_ptr(), &mut signature_len),
        CKR_OPERATION_NOT_INITIALIZED
    );

    // Everything the module does not offer.
    let s = session;
    let nv = null;
    let ns = FUNCTION_NOT_SUPPORTED;
    check!(C_EncryptInit(s, nm, key), ns);
    check!(C_Encrypt(s, nb, 0, nb, nu), ns);
    check!(C_EncryptUpdate(s, nb, 0, nb, nu), ns);
    check!(C_EncryptFinal(s, nb, nu), ns);
    check!(C_DecryptInit(s, nm, key), ns);
    check!(C_Decrypt(s, nb, 0, nb, nu), ns);
    check!(C_DecryptUpdate(s, nb, 0, nb, nu), ns);
    check!(C_DecryptFinal(s, nb, nu), ns);
    check!(C_DigestInit(s, nm), ns);
    check!(C_Digest(s, nb, 0, nb, nu), ns);
    check!(C_DigestUpdate(s, nb, 0), ns);
    check!(C_DigestKey(s, key), ns);
    check!(C_DigestFinal(s, nb, nu), ns);
    check!(C_SignRecoverInit(s, nm, key), ns);
    check!(C_SignRecover(s, nb, 0, nb, nu), ns);
    check!(C_VerifyInit(s, nm, key), ns);
    check!(C_Verify(s, nb, 0, nb, 0), ns);
    check!(C_VerifyUpdate(s, nb, 0), ns);
    check!(C_VerifyFinal(s, nb, 0), ns);
    check!(C_VerifyRecoverInit(s, nm, key), ns);
    check!(C_VerifyRecover(s, nb, 0, nb, nu), ns);
    check!(C_DigestEncryptUpdate(s, nb, 0, nb, nu), ns);
    check!(C_DecryptDigestUpdate(s, nb, 0, nb, nu), ns);
    check!(C_SignEncryptUpdate(s, nb, 0, nb, nu), ns);
    check!(C_DecryptVerifyUpdate(s, nb, 0, nb, nu), ns);
    check!(C_MessageEncryptInit(s, nm, key), ns);
    check!(C_EncryptMessage(s, nv, 0, nb, 0, nb, 0, nb, nu), ns);
    check!(C_EncryptMessageBegin(s, nv, 0, nb, 0), ns);
    check!(C_EncryptMessageNext(s, nv, 0, nb, 0, nb, nu, 0), ns);
    check!(C_MessageEncryptFinal(s), ns);
    check!(C_MessageDecryptInit(s, nm, key), ns);
    check!(C_DecryptMessage(s, nv, 0, nb, 0, nb, 0, nb, nu), ns);
    check!(C_DecryptMessageBegin(s, nv, 0, nb, 0), ns);
    check!(C_DecryptMessageNext(s, nv, 0, nb, 0, nb, nu, 0), ns);
    check!(C_MessageDecryptFinal(s), ns);
    check!(C_MessageSignInit(s, nm, key), ns);
    check!(C_SignMessage(s, nv, 0, nb, 0, nb, nu), ns);
    check!(C_SignMessageBegin(s, nv, 0), ns);
    check!(C_SignMessageNext(s, nv, 0, nb, 0, nb, nu), ns);
    check!(C_MessageSignFinal(s), ns);
    check!(C_MessageVerifyInit(s, nm, key), ns);
    check!(C_VerifyMessage(s, nv, 0, nb, 0, nb, 0), ns);
    check!(C_VerifyMessageBegin(s, nv, 0), ns);
    check!(C_VerifyMessageNext(s, nv, 0, nb, 0, nb, 0), ns);
    check!(C_MessageVerifyFinal(s), ns);

    // A panic inside becomes CKR_GENERAL_ERROR and leaves the state usable.
    let rv = entry("test", || {
        with_provider(|_| -> Result<()> { panic!("a bug") })
    });
    assert_eq!(rv, CKR_GENERAL_ERROR);
    check!(C_GetSessionInfo(session, &mut session_info), CKR_OK);

    check!(C_CloseSession(session), CKR_OK);
    check!(C_CloseSession(session), CKR_SESSION_HANDLE_INVALID);
    check!(C_Finalize(null), CKR_OK);
    check!(C_Finalize(null), CKR_CRYPTOKI_NOT_INITIALIZED);
}

/// `CKR_FUNCTION_NOT_SUPPORTED`, short.
const FUNCTION_NOT_SUPPORTED: CK_RV = CKR_FUNCTION_NOT_SUPPORTED;
