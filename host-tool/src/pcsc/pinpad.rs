//! Secure PIN entry on PIN-pad readers (PC/SC part 10): the reader's feature
//! list, and the `PIN_VERIFY_STRUCTURE` that has the reader build a VERIFY
//! from the digits typed on its own pad.
//!
//! ```text
//!  host ─ SCardControl(CM_IOCTL_GET_FEATURE_REQUEST) ─▶ reader: { tag, 04, control code (BE) }*
//!  host ─ SCardControl(FEATURE_VERIFY_PIN_DIRECT, PIN_VERIFY_STRUCTURE) ─▶ reader
//!         reader: user types the digits ─▶ VERIFY 00 20 00 82 0A <digits> ─▶ card
//!  host ◀─ SW1 SW2 (the card's, or the reader's 64xx when the entry did not complete)
//! ```
//!
//! The host sends the APDU with a placeholder block where the digits go; the
//! digits themselves stay between the pad and the card.

use std::collections::BTreeMap;

use crate::HostError;

/// Function number of `CM_IOCTL_GET_FEATURE_REQUEST`; the control code is
/// `SCARD_CTL_CODE(3400)` (`pcsc::ctl_code`: `0x42000000 + 3400` with
/// pcsc-lite, `0x00310000 | 3400 << 2` on Windows).
pub const GET_FEATURE_REQUEST: u32 = 3400;

/// The feature tag of verification with a PIN entered at the reader
/// (CCID `PC_to_RDR_Secure`, PIN verification).
pub const FEATURE_VERIFY_PIN_DIRECT: u8 = 0x06;

/// Length of every value in the feature list: a 32-bit control code.
const CONTROL_CODE_LEN: u8 = 4;

/// Bytes of `PIN_VERIFY_STRUCTURE` before `abData`.
pub const PIN_VERIFY_HEADER_LEN: usize = 19;

/// Seconds the reader waits for the first key (`bTimerOut`): long enough
/// to read a 10-digit TAN off its letter.
const FIRST_KEY_TIMEOUT: u8 = 60;
/// Seconds the reader waits after each key (`bTimerOut2`).
const NEXT_KEY_TIMEOUT: u8 = 30;
/// `bmFormatString`: bit 7 set, system units are bytes; bits 6-3, the PIN
/// starts at byte 0 of the data field; bit 2 clear, left justified; bits
/// 1-0 = 10, ASCII digits (`'0'` = 0x30).
const FORMAT_ASCII_BYTES_AT_0: u8 = 0x82;
/// `bmPINLengthFormat`: the PIN length is not written into the APDU.
const NO_LENGTH_FIELD: u8 = 0x00;
/// `bEntryValidationCondition`: entry ends when the user presses OK.
const VALIDATE_ON_OK_KEY: u8 = 0x02;
/// `bNumberMessage`: one message, the reader's "enter PIN" (`bMsgIndex` 0).
const ONE_MESSAGE: u8 = 0x01;
/// `wLangId`: English (United States), for the reader's message.
const LANG_EN_US: u16 = 0x0409;
/// What the placeholder block holds before the reader overwrites it: no
/// digit, so an entry the reader failed to insert cannot pass for a TAN.
const PLACEHOLDER: u8 = 0xFF;

/// The features a reader lists in its answer to
/// `CM_IOCTL_GET_FEATURE_REQUEST`: feature tag to control code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    codes: BTreeMap<u8, u32>,
}

impl Features {
    /// Parses the answer: a sequence of `tag (1 byte) ‖ length (1 byte, 4)
    /// ‖ control code (4 bytes, big-endian)` (PC/SC part 10, 2.2). An empty
    /// answer lists no features. Tags this tool does not use are kept and
    /// ignored, but must be well formed; a tag listed twice is refused, since
    /// which of its codes the reader means is unknown.
    pub fn parse(answer: &[u8]) -> Result<Self, HostError> {
        let mut codes = BTreeMap::new();
        let mut offset = 0;
        while offset < answer.len() {
            let tag = answer[offset];
            let Some(&length) = answer.get(offset + 1) else {
                return Err(HostError::FeatureListTruncated { offset });
            };
            if length != CONTROL_CODE_LEN {
                return Err(HostError::FeatureListLength { tag, length });
            }
            let value = answer
                .get(offset + 2..offset + 6)
                .ok_or(HostError::FeatureListTruncated { offset })?;
            let code = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
            if codes.insert(tag, code).is_some() {
                return Err(HostError::FeatureListDuplicate { tag });
            }
            offset += 6;
        }
        Ok(Self { codes })
    }

    /// The control code of `feature`, if the reader lists it.
    pub fn control_code(&self, feature: u8) -> Option<u32> {
        self.codes.get(&feature).copied()
    }

    /// The control code of [`FEATURE_VERIFY_PIN_DIRECT`], if listed.
    pub fn verify_pin_direct(&self) -> Option<u32> {
        self.control_code(FEATURE_VERIFY_PIN_DIRECT)
    }
}

/// The `PIN_VERIFY_STRUCTURE` (pcsc-lite `reader.h`, packed, little-endian;
/// the CCID PIN verification data structure) for a VERIFY `header` whose data
/// field is the PIN block the reader fills: `min_digits` to `max_digits`
/// ASCII digits, left justified in a block of `max_digits` bytes. `None`
/// when the digits are not `1 <= min <= max <= 15` (the block size is a
/// 4-bit field).
///
/// `abData` is the whole short APDU the reader sends: `header ‖ Lc ‖ block`,
/// the block a placeholder the reader overwrites with the digits. An entry
/// shorter than the block (only when `min_digits < max_digits`) leaves
/// placeholder bytes after the digits.
pub fn verify_pin_structure(header: [u8; 4], min_digits: u8, max_digits: u8) -> Option<Vec<u8>> {
    if min_digits == 0 || min_digits > max_digits || max_digits > 0x0F {
        return None;
    }
    let block = usize::from(max_digits);
    let data_length = 4 + 1 + block;
    let mut structure = Vec::with_capacity(PIN_VERIFY_HEADER_LEN + data_length);
    structure.push(FIRST_KEY_TIMEOUT);
    structure.push(NEXT_KEY_TIMEOUT);
    structure.push(FORMAT_ASCII_BYTES_AT_0);
    // bmPINBlockString: bits 7-4, no length field (0); bits 3-0, block bytes.
    structure.push(max_digits);
    structure.push(NO_LENGTH_FIELD);
    // wPINMaxExtraDigit: minimum in the high byte, maximum in the low byte.
    structure
        .extend_from_slice(&((u16::from(min_digits) << 8) | u16::from(max_digits)).to_le_bytes());
    structure.push(VALIDATE_ON_OK_KEY);
    structure.push(ONE_MESSAGE);
    structure.extend_from_slice(&LANG_EN_US.to_le_bytes());
    // bMsgIndex, then bTeoPrologue (T=1 prologue, filled in by the driver).
    structure.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]);
    let length = u32::try_from(data_length).ok()?;
    structure.extend_from_slice(&length.to_le_bytes());
    structure.extend_from_slice(&header);
    structure.push(max_digits);
    structure.resize(structure.len() + block, PLACEHOLDER);
    Some(structure)
}

#[cfg(test)]
mod tests;
