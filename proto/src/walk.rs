//! Reading a few fields of an encoded message without decoding it.
//!
//! The host routes a call on two fields of a request it otherwise passes on untouched, and the
//! SDK splits a request into parts that stay encoded until an agent reads them. Both walk the
//! encoded fields with these helpers: the fields they ask for are read in place (payloads are
//! slices of the input), every other field is skipped. What they accept and refuse is what
//! prost's decode of a message declaring the same fields would: the same wire-type checks, the
//! same UTF-8 check of strings, the later of a repeated scalar wins, unknown fields (groups
//! included) are skipped with prost's own `skip_field`. The callers test that against prost.

use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};

/// Why a message does not read: prost's words where prost would have refused it.
pub type Read<T> = Result<T, String>;

/// A varint: one byte inline (most keys and lengths), longer ones through prost.
#[inline(always)]
pub fn varint(buf: &mut &[u8]) -> Read<u64> {
    match buf.first() {
        Some(&b) if b < 0x80 => {
            *buf = &buf[1..];
            Ok(u64::from(b))
        }
        _ => decode_varint(buf).map_err(|e| e.to_string()),
    }
}

/// A field's key: a valid one-byte key (field numbers 1 to 15) inline, anything else through
/// prost, which also says what is wrong with it.
#[inline(always)]
pub fn key(buf: &mut &[u8]) -> Read<(u32, WireType)> {
    if let Some(&b) = buf.first() {
        if b < 0x80 && b >> 3 != 0 {
            if let Ok(wire_type) = WireType::try_from(u64::from(b & 7)) {
                *buf = &buf[1..];
                return Ok((u32::from(b >> 3), wire_type));
            }
        }
    }
    decode_key(buf).map_err(|e| e.to_string())
}

/// Skips a field as prost's `skip_field` does, the common wire types inline.
#[inline(always)]
pub fn skip(tag: u32, wire_type: WireType, buf: &mut &[u8]) -> Read<()> {
    let n = match wire_type {
        WireType::Varint => return varint(buf).map(drop),
        WireType::LengthDelimited => varint(buf)?,
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::StartGroup | WireType::EndGroup => {
            return skip_field(wire_type, tag, buf, DecodeContext::default()).map_err(|e| e.to_string())
        }
    };
    if n > buf.len() as u64 {
        return Err("buffer underflow".into());
    }
    *buf = &buf[n as usize..];
    Ok(())
}

fn wire_type_is(wire_type: WireType, expected: WireType) -> Read<()> {
    if wire_type == expected {
        Ok(())
    } else {
        Err(format!("invalid wire type: {wire_type:?} (expected {expected:?})"))
    }
}

/// A length-delimited field (`bytes`, or a message): its payload.
pub fn len_field<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Read<&'a [u8]> {
    wire_type_is(wire_type, WireType::LengthDelimited)?;
    let len = varint(buf)?;
    if len > buf.len() as u64 {
        return Err("buffer underflow".into());
    }
    let (payload, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(payload)
}

/// `bytes` as text, if they are UTF-8. Names and short values are mostly ASCII: checked a
/// byte at a time inline, where `std::str::from_utf8` costs a call and some hundred
/// instructions of set-up whatever the length.
#[inline(always)]
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.len() <= 32 && bytes.iter().all(u8::is_ascii) {
        // SAFETY: every byte is ASCII, and ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

/// A `string` field: its payload, checked to be UTF-8.
pub fn string_field<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Read<&'a str> {
    let payload = len_field(wire_type, buf)?;
    utf8(payload).ok_or_else(|| "invalid string value: data is not UTF-8 encoded".to_string())
}

/// An `int32` field (a varint, truncated as protobuf does).
pub fn int32_field(wire_type: WireType, buf: &mut &[u8]) -> Read<i32> {
    wire_type_is(wire_type, WireType::Varint)?;
    varint(buf).map(|v| v as i32)
}

/// Walks the fields of an encoded message. `take` reads a field it wants from the front of
/// the buffer it is given and returns true; a field it leaves (false) is skipped.
pub fn each_field<'a>(mut buf: &'a [u8], mut take: impl FnMut(u32, WireType, &mut &'a [u8]) -> Read<bool>) -> Read<()> {
    while !buf.is_empty() {
        let (tag, wire_type) = key(&mut buf)?;
        if !take(tag, wire_type, &mut buf)? {
            skip(tag, wire_type, &mut buf)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_what_from_utf8_says() {
        let long_ascii = "a".repeat(40);
        let long_bad = [&b"a".repeat(40)[..], &[0xff]].concat();
        let cases: &[&[u8]] =
            &[b"", b"echo_async", "ünïcode".as_bytes(), b"\xff", b"ab\xc3", long_ascii.as_bytes(), &long_bad, b"\x7f\x00"];
        for &case in cases {
            assert_eq!(utf8(case), std::str::from_utf8(case).ok(), "{case:02x?}");
        }
    }

    #[test]
    fn keys_and_varints_read_as_prost_reads_them() {
        // One-byte and longer keys, valid and not: field 0, wire types 6 and 7, field 2^29.
        let cases: &[&[u8]] = &[&[0x08], &[0x0a], &[0x00], &[0x0e], &[0x0f], &[0xc0, 0x02], &[0xf8, 0xff, 0xff, 0xff, 0x0f], &[0x80], &[]];
        for &case in cases {
            let (mut ours, mut theirs) = (case, case);
            let a = key(&mut ours);
            let b = decode_key(&mut theirs).map_err(|e| e.to_string());
            assert_eq!(a, b, "key {case:02x?}");
            assert_eq!(ours, theirs, "key {case:02x?} leaves the same rest");
            let (mut ours, mut theirs) = (case, case);
            assert_eq!(varint(&mut ours), decode_varint(&mut theirs).map_err(|e| e.to_string()), "varint {case:02x?}");
        }
    }

    #[test]
    fn skipping_matches_prost_for_every_wire_type() {
        // (key byte, rest): varint, fixed64, length-delimited, a group with a field inside,
        // fixed32, each whole and cut short.
        let fields: &[&[u8]] = &[
            &[0x08, 0x96, 0x01, 0xff],
            &[0x09, 1, 2, 3, 4, 5, 6, 7, 8, 0xff],
            &[0x0a, 0x02, b'h', b'i', 0xff],
            &[0x0b, 0x10, 0x01, 0x0c, 0xff],
            &[0x0d, 1, 2, 3, 4, 0xff],
        ];
        for &field in fields {
            for cut in 1..=field.len() {
                let whole = &field[..cut];
                let (mut ours, mut theirs) = (whole, whole);
                let (tag, wire_type) = key(&mut ours).unwrap();
                decode_key(&mut theirs).unwrap();
                let a = skip(tag, wire_type, &mut ours).is_ok();
                let b = skip_field(wire_type, tag, &mut theirs, DecodeContext::default()).is_ok();
                assert_eq!(a, b, "skip {whole:02x?}");
                if a {
                    assert_eq!(ours, theirs, "skip {whole:02x?} leaves the same rest");
                }
            }
        }
    }
}
