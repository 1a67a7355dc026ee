//! The protobuf wire format's primitives, read as prost reads them, without allocating.
//!
//! Each returns `None` where prost's decode would refuse the bytes, and leaves `buf` past what
//! it read otherwise. [`crate::check`] walks literals with them, and the SDK reads a template's
//! `custom` and a request's inputs with them; [`crate::walk`] is for callers that need prost's
//! error messages. The tests in `check` compare them with prost's `decode_varint` and
//! `decode_key`.

#![warn(clippy::all, rust_2018_idioms)]

/// Wire type of `int32`, `int64`, `uint32`, `uint64`, `sint32`, `sint64`, `bool` and enums.
pub const VARINT: u8 = 0;
/// Wire type of `fixed64`, `sfixed64` and `double`.
pub const FIXED64: u8 = 1;
/// Wire type of strings, bytes, messages and packed runs.
pub const LEN: u8 = 2;
/// Wire type that opens a group.
pub const START_GROUP: u8 = 3;
/// Wire type that closes a group.
pub const END_GROUP: u8 = 4;
/// Wire type of `fixed32`, `sfixed32` and `float`.
pub const FIXED32: u8 = 5;

/// A varint as prost reads it: at most ten bytes, the last one without the continuation
/// bit; a tenth byte above 1 would overflow 64 bits and is refused.
#[inline(always)]
pub fn varint(buf: &mut &[u8]) -> Option<u64> {
    let &first = buf.first()?;
    if first < 0x80 {
        *buf = &buf[1..];
        return Some(u64::from(first));
    }
    long_varint(buf)
}

/// A varint of two bytes or more.
#[inline]
fn long_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0;
    for (i, &byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return None;
            }
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

/// A field's key as prost reads it: a varint no larger than `u32::MAX`, field number at least
/// 1, wire type 0 to 5.
#[inline(always)]
pub fn key(buf: &mut &[u8]) -> Option<(u32, u8)> {
    let key = varint(buf)?;
    let wire_type = (key & 7) as u8;
    if key > u64::from(u32::MAX) || key < 8 || wire_type > 5 {
        return None;
    }
    Some(((key >> 3) as u32, wire_type))
}

/// Steps over `n` bytes, if there are that many.
#[inline(always)]
pub fn advance(buf: &mut &[u8], n: usize) -> Option<()> {
    *buf = buf.get(n..)?;
    Some(())
}

/// A length-delimited payload: its length, then that many bytes, which must be there.
#[inline(always)]
pub fn payload<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = varint(buf)?;
    if len > buf.len() as u64 {
        return None;
    }
    let (payload, rest) = buf.split_at(len as usize);
    *buf = rest;
    Some(payload)
}
