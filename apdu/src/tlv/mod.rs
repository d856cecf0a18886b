//! Strict BER-TLV, as ISO/IEC 7816-4 uses it for data objects.
//!
//! Tags are one to three bytes, lengths are definite and minimally encoded
//! (short form, `81 xx` or `82 xx xx`). Anything else is rejected, so every
//! data object has exactly one encoding and a parser never guesses.

use alloc::vec::Vec;

/// Why a byte string is not acceptable BER-TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    /// The input ended inside a tag, a length or a value.
    #[error("data object truncated")]
    Truncated,
    /// A tag that is longer than three bytes, or not minimally encoded.
    #[error("invalid tag encoding")]
    InvalidTag,
    /// The indefinite length form `80`, which DER and this card never use.
    #[error("indefinite length")]
    IndefiniteLength,
    /// A length written with more bytes than it needs.
    #[error("length not minimally encoded")]
    NonMinimalLength,
    /// A length above 65535 bytes.
    #[error("length too large")]
    LengthTooLarge,
    /// A tag the receiver does not know in this position.
    #[error("unexpected tag {0:#x}")]
    UnexpectedTag(u32),
    /// A tag that may appear once appeared again.
    #[error("duplicate tag {0:#x}")]
    DuplicateTag(u32),
    /// A mandatory tag is absent.
    #[error("missing tag {0:#x}")]
    MissingTag(u32),
    /// A value has the wrong size for its tag.
    #[error("wrong length for tag {0:#x}")]
    WrongLength(u32),
}

/// One data object: its tag and the bytes of its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag, its bytes read big-endian (`0x7F49` for tag `7F 49`).
    pub tag: u32,
    /// The value field.
    pub value: &'a [u8],
}

/// Reads one data object from the front of `input`, returning it and the rest.
pub fn read_one(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), TlvError> {
    let (tag, rest) = read_tag(input)?;
    let (len, rest) = read_length(rest)?;
    if rest.len() < len {
        return Err(TlvError::Truncated);
    }
    let (value, rest) = rest.split_at(len);
    Ok((Tlv { tag, value }, rest))
}

fn read_tag(input: &[u8]) -> Result<(u32, &[u8]), TlvError> {
    let (&first, mut rest) = input.split_first().ok_or(TlvError::Truncated)?;
    // 00 and FF are padding/invalid first bytes in ISO 7816-4 BER-TLV.
    if first == 0x00 || first == 0xFF {
        return Err(TlvError::InvalidTag);
    }
    let mut tag = u32::from(first);
    if first & 0x1F != 0x1F {
        return Ok((tag, rest));
    }
    for index in 0..2 {
        let (&byte, tail) = rest.split_first().ok_or(TlvError::Truncated)?;
        rest = tail;
        tag = (tag << 8) | u32::from(byte);
        if index == 0 && (byte == 0x80 || byte < 0x1F) {
            // 0x80 would be a leading zero group; values below 31 fit in one byte.
            return Err(TlvError::InvalidTag);
        }
        if byte & 0x80 == 0 {
            return Ok((tag, rest));
        }
    }
    Err(TlvError::InvalidTag)
}

fn read_length(input: &[u8]) -> Result<(usize, &[u8]), TlvError> {
    let (&first, rest) = input.split_first().ok_or(TlvError::Truncated)?;
    match first {
        0x00..=0x7F => Ok((usize::from(first), rest)),
        0x80 => Err(TlvError::IndefiniteLength),
        0x81 => {
            let (&len, rest) = rest.split_first().ok_or(TlvError::Truncated)?;
            if len < 0x80 {
                return Err(TlvError::NonMinimalLength);
            }
            Ok((usize::from(len), rest))
        }
        0x82 => {
            let bytes = rest.get(..2).ok_or(TlvError::Truncated)?;
            let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
            if len < 0x100 {
                return Err(TlvError::NonMinimalLength);
            }
            Ok((len, &rest[2..]))
        }
        _ => Err(TlvError::LengthTooLarge),
    }
}

/// Appends one data object to `out`.
///
/// Values longer than 65535 bytes cannot be expressed in the encodings this
/// card accepts; callers keep values within that (certificates are ~600 bytes).
pub fn write(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    let tag_bytes = tag.to_be_bytes();
    let skip = tag_bytes.iter().take_while(|&&b| b == 0).count().min(3);
    out.extend_from_slice(&tag_bytes[skip..]);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xFF {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        out.push(0x82);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(value);
}

/// Builds one data object as a fresh vector.
pub fn encode(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    write(&mut out, tag, value);
    out
}

/// Decodes a sequence of data objects whose tags must all be in `tags`, each at
/// most once, in any order. Returns the value of each tag, in the order of `tags`.
///
/// Unknown and repeated tags are errors: a card that skipped them would accept
/// two different encodings of the same request.
pub fn decode_fields<'a, const N: usize>(
    mut input: &'a [u8],
    tags: [u32; N],
) -> Result<[Option<&'a [u8]>; N], TlvError> {
    let mut found: [Option<&'a [u8]>; N] = [None; N];
    while !input.is_empty() {
        let (tlv, rest) = read_one(input)?;
        input = rest;
        let index = tags
            .iter()
            .position(|&t| t == tlv.tag)
            .ok_or(TlvError::UnexpectedTag(tlv.tag))?;
        if found[index].is_some() {
            return Err(TlvError::DuplicateTag(tlv.tag));
        }
        found[index] = Some(tlv.value);
    }
    Ok(found)
}

/// Returns the value of a mandatory field decoded by [`decode_fields`].
pub fn required(field: Option<&[u8]>, tag: u32) -> Result<&[u8], TlvError> {
    field.ok_or(TlvError::MissingTag(tag))
}

/// Returns a mandatory field that must be exactly `N` bytes long.
pub fn required_array<const N: usize>(field: Option<&[u8]>, tag: u32) -> Result<[u8; N], TlvError> {
    required(field, tag)?
        .try_into()
        .map_err(|_| TlvError::WrongLength(tag))
}

/// Decodes `input` as exactly one data object with tag `tag` and returns its value.
pub fn decode_single(input: &[u8], tag: u32) -> Result<&[u8], TlvError> {
    let (tlv, rest) = read_one(input)?;
    if tlv.tag != tag {
        return Err(TlvError::UnexpectedTag(tlv.tag));
    }
    if !rest.is_empty() {
        return Err(TlvError::Truncated);
    }
    Ok(tlv.value)
}

#[cfg(test)]
mod tests;
