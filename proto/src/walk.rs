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
/// instructions of set-up whatever the length. From [`LONG_TEXT`] bytes on, `simdutf8` checks
/// 64 bytes a step with AVX2, SSE4.2 or NEON (chosen at run time): the 1,024 strings of 1 KiB in
/// the benchmark's 1 MiB CreateTask took `std` 0.60M instructions to check (BENCHMARKS.md,
/// thirteenth round). A test holds both to `std`'s verdicts.
#[inline(always)]
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.len() <= 32 && bytes.iter().all(u8::is_ascii) {
        // SAFETY: every byte is ASCII, and ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    if bytes.len() >= LONG_TEXT {
        return simdutf8::basic::from_utf8(bytes).ok();
    }
    std::str::from_utf8(bytes).ok()
}

/// From this length on, [`utf8`] checks with `simdutf8` (one SIMD step is 64 bytes; shorter
/// texts it pads into a buffer first).
pub const LONG_TEXT: usize = 64;

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

    /// Long texts go through `simdutf8`: every way a sequence can be wrong (a stray
    /// continuation byte, a lead byte cut short, overlong forms, surrogates, past U+10FFFF,
    /// bytes that never appear), at every position across two SIMD steps and their tails, in
    /// ASCII and in multi-byte text, against `std`'s verdict.
    #[test]
    fn long_text_is_what_from_utf8_says_wherever_it_breaks() {
        let bad: &[&[u8]] = &[
            b"\x80",
            b"\xbf",
            b"\xc2",
            b"\xe2\x82",
            b"\xf0\x9f\x98",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xed\xa0\x80",
            b"\xed\xbf\xbf",
            b"\xf4\x90\x80\x80",
            b"\xf5\x80\x80\x80",
            b"\xff",
            b"\xfe",
        ];
        let good: &[&[u8]] = &[b"\xc2\xa9", "\u{20ac}".as_bytes(), "\u{1f600}".as_bytes(), "\u{10ffff}".as_bytes(), b"\x7f"];
        for base in ["a".repeat(150), "\u{e9}t\u{e9} ".repeat(25), "\u{1f600}x".repeat(30)] {
            let base = base.as_bytes();
            for len in [LONG_TEXT - 1, LONG_TEXT, LONG_TEXT + 1, 127, 128, 129, base.len()] {
                let text = &base[..len.min(base.len())];
                assert_eq!(utf8(text), std::str::from_utf8(text).ok(), "{text:02x?}");
                for at in 0..=text.len() {
                    for insert in bad.iter().chain(good) {
                        let case = [&text[..at], insert, &text[at..]].concat();
                        assert_eq!(utf8(&case).is_some(), std::str::from_utf8(&case).is_ok(), "{case:02x?}");
                    }
                }
            }
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
