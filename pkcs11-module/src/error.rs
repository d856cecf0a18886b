//! The provider's error type: one variant per PKCS#11 return value it uses.

use cryptoki_sys::*;

/// A PKCS#11 failure. [`Error::rv`] gives the `CKR_…` value the C ABI returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `CKR_ARGUMENTS_BAD`: a NULL pointer or an inconsistent argument.
    #[error("bad arguments")]
    ArgumentsBad,
    /// `CKR_ATTRIBUTE_SENSITIVE`: the attribute's value may not be revealed.
    #[error("attribute is sensitive")]
    AttributeSensitive,
    /// `CKR_ATTRIBUTE_TYPE_INVALID`: the object has no such attribute.
    #[error("attribute type invalid")]
    AttributeTypeInvalid,
    /// `CKR_ACTION_PROHIBITED`: the objects cannot be modified, copied or destroyed.
    #[error("action prohibited")]
    ActionProhibited,
    /// `CKR_BUFFER_TOO_SMALL`: the output buffer is too small (the length was returned).
    #[error("buffer too small")]
    BufferTooSmall,
    /// `CKR_CANT_LOCK`: the application asked for its own mutexes only.
    #[error("cannot use the application's locking")]
    CantLock,
    /// `CKR_CRYPTOKI_ALREADY_INITIALIZED`.
    #[error("already initialized")]
    AlreadyInitialized,
    /// `CKR_CRYPTOKI_NOT_INITIALIZED`.
    #[error("not initialized")]
    NotInitialized,
    /// `CKR_DATA_LEN_RANGE`: the data to sign has the wrong length.
    #[error("data length out of range")]
    DataLenRange,
    /// `CKR_DEVICE_ERROR`: the module answered something unexpected.
    #[error("device error")]
    DeviceError,
    /// `CKR_DEVICE_MEMORY`: the module's key memory failed (`6581`).
    #[error("device memory failure")]
    DeviceMemory,
    /// `CKR_DEVICE_REMOVED`: the card left the reader during the call.
    #[error("device removed")]
    DeviceRemoved,
    /// `CKR_FUNCTION_NOT_PARALLEL`.
    #[error("function not parallel")]
    FunctionNotParallel,
    /// `CKR_FUNCTION_NOT_SUPPORTED`.
    #[error("function not supported")]
    FunctionNotSupported,
    /// `CKR_GENERAL_ERROR`: configuration errors, internal failures, caught panics.
    #[error("general error")]
    GeneralError,
    /// `CKR_KEY_FUNCTION_NOT_PERMITTED`: the key may not be used for this.
    #[error("key function not permitted")]
    KeyFunctionNotPermitted,
    /// `CKR_KEY_HANDLE_INVALID`.
    #[error("key handle invalid")]
    KeyHandleInvalid,
    /// `CKR_KEY_UNEXTRACTABLE`: the module key never leaves the module.
    #[error("key unextractable")]
    KeyUnextractable,
    /// `CKR_MECHANISM_INVALID`.
    #[error("mechanism invalid")]
    MechanismInvalid,
    /// `CKR_MECHANISM_PARAM_INVALID`.
    #[error("mechanism parameter invalid")]
    MechanismParamInvalid,
    /// `CKR_NO_EVENT`: no slot event is pending.
    #[error("no event")]
    NoEvent,
    /// `CKR_OBJECT_HANDLE_INVALID`.
    #[error("object handle invalid")]
    ObjectHandleInvalid,
    /// `CKR_OPERATION_ACTIVE`.
    #[error("operation active")]
    OperationActive,
    /// `CKR_OPERATION_NOT_INITIALIZED`.
    #[error("operation not initialized")]
    OperationNotInitialized,
    /// `CKR_PIN_INCORRECT`: a wrong PIN (the module's retry counter went down).
    #[error("PIN incorrect")]
    PinIncorrect,
    /// `CKR_PIN_LEN_RANGE`: a PIN shorter than 4 or longer than 16 bytes.
    #[error("PIN length out of range")]
    PinLenRange,
    /// `CKR_PIN_LOCKED`: the retry counter is exhausted.
    #[error("PIN locked")]
    PinLocked,
    /// `CKR_RANDOM_NO_RNG`: the module offers no random numbers to hosts.
    #[error("no random number generator")]
    RandomNoRng,
    /// `CKR_SESSION_COUNT`: too many sessions.
    #[error("too many sessions")]
    SessionCount,
    /// `CKR_SESSION_HANDLE_INVALID`.
    #[error("session handle invalid")]
    SessionHandleInvalid,
    /// `CKR_SESSION_PARALLEL_NOT_SUPPORTED`: `CKF_SERIAL_SESSION` missing.
    #[error("parallel sessions not supported")]
    SessionParallelNotSupported,
    /// `CKR_SLOT_ID_INVALID`.
    #[error("slot ID invalid")]
    SlotIdInvalid,
    /// `CKR_TEMPLATE_INCONSISTENT`.
    #[error("template inconsistent")]
    TemplateInconsistent,
    /// `CKR_TOKEN_NOT_PRESENT`: no card with the applet in the reader.
    #[error("token not present")]
    TokenNotPresent,
    /// `CKR_USER_ALREADY_LOGGED_IN`.
    #[error("user already logged in")]
    UserAlreadyLoggedIn,
    /// `CKR_USER_NOT_LOGGED_IN`.
    #[error("user not logged in")]
    UserNotLoggedIn,
    /// `CKR_USER_PIN_NOT_INITIALIZED`: the module has no user PIN.
    #[error("no user PIN is set")]
    UserPinNotInitialized,
    /// `CKR_USER_TYPE_INVALID`: the token has no security officer.
    #[error("user type invalid")]
    UserTypeInvalid,
}

impl Error {
    /// The PKCS#11 return value.
    pub fn rv(self) -> CK_RV {
        match self {
            Self::ArgumentsBad => CKR_ARGUMENTS_BAD,
            Self::AttributeSensitive => CKR_ATTRIBUTE_SENSITIVE,
            Self::AttributeTypeInvalid => CKR_ATTRIBUTE_TYPE_INVALID,
            Self::ActionProhibited => CKR_ACTION_PROHIBITED,
            Self::BufferTooSmall => CKR_BUFFER_TOO_SMALL,
            Self::CantLock => CKR_CANT_LOCK,
            Self::AlreadyInitialized => CKR_CRYPTOKI_ALREADY_INITIALIZED,
            Self::NotInitialized => CKR_CRYPTOKI_NOT_INITIALIZED,
            Self::DataLenRange => CKR_DATA_LEN_RANGE,
            Self::DeviceError => CKR_DEVICE_ERROR,
            Self::DeviceMemory => CKR_DEVICE_MEMORY,
            Self::DeviceRemoved => CKR_DEVICE_REMOVED,
            Self::FunctionNotParallel => CKR_FUNCTION_NOT_PARALLEL,
            Self::FunctionNotSupported => CKR_FUNCTION_NOT_SUPPORTED,
            Self::GeneralError => CKR_GENERAL_ERROR,
            Self::KeyFunctionNotPermitted => CKR_KEY_FUNCTION_NOT_PERMITTED,
            Self::KeyHandleInvalid => CKR_KEY_HANDLE_INVALID,
            Self::KeyUnextractable => CKR_KEY_UNEXTRACTABLE,
            Self::MechanismInvalid => CKR_MECHANISM_INVALID,
            Self::MechanismParamInvalid => CKR_MECHANISM_PARAM_INVALID,
            Self::NoEvent => CKR_NO_EVENT,
            Self::ObjectHandleInvalid => CKR_OBJECT_HANDLE_INVALID,
            Self::OperationActive => CKR_OPERATION_ACTIVE,
            Self::OperationNotInitialized => CKR_OPERATION_NOT_INITIALIZED,
            Self::PinIncorrect => CKR_PIN_INCORRECT,
            Self::PinLenRange => CKR_PIN_LEN_RANGE,
            Self::PinLocked => CKR_PIN_LOCKED,
            Self::RandomNoRng => CKR_RANDOM_NO_RNG,
            Self::SessionCount => CKR_SESSION_COUNT,
            Self::SessionHandleInvalid => CKR_SESSION_HANDLE_INVALID,
            Self::SessionParallelNotSupported => CKR_SESSION_PARALLEL_NOT_SUPPORTED,
            Self::SlotIdInvalid => CKR_SLOT_ID_INVALID,
            Self::TemplateInconsistent => CKR_TEMPLATE_INCONSISTENT,
            Self::TokenNotPresent => CKR_TOKEN_NOT_PRESENT,
            Self::UserAlreadyLoggedIn => CKR_USER_ALREADY_LOGGED_IN,
            Self::UserNotLoggedIn => CKR_USER_NOT_LOGGED_IN,
            Self::UserPinNotInitialized => CKR_USER_PIN_NOT_INITIALIZED,
            Self::UserTypeInvalid => CKR_USER_TYPE_INVALID,
        }
    }
}

/// Results of the provider's safe functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;
