//! The resource meta of an async agent: its own `serde` type, versioned.
//!
//! Flyte stores the bytes `create` returned and sends them back with every GetTask and
//! DeleteTask, possibly to a newer (after an upgrade) or older (after a rollback) version of the
//! plugin. So the SDK writes an envelope with the format version the agent declares:
//!
//! ```json
//! {"meta_version": 2, "meta": { … the agent's Meta as JSON … }}
//! ```
//!
//! Reading: the current version deserializes straight into `Meta`; an older one goes through
//! [`crate::AsyncAgent::upgrade_meta`]; a newer one is refused with `FAILED_PRECONDITION`
//! (this version cannot know what it means). Bytes without the envelope (written before the SDK
//! versioned metadata) read as version 0.
//!
//! A sync agent's result, and an async agent's job failure found in `create`, are stored
//! instead as [`STORED_RESULT`] followed by an encoded Flyte 2 `Resource`; JSON never starts with
//! that prefix, so the two never mix.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{AgentError, AsyncAgent};

/// The prefix of a stored result (a finished resource kept in the resource meta).
pub(crate) const STORED_RESULT: &[u8] = b"\0agent-host/sync-result\0";

/// The envelope as serde would write it ([`encode_into`] writes the same bytes itself).
#[cfg(test)]
#[derive(Serialize)]
struct EnvelopeOut<'a, M> {
    meta_version: u32,
    meta: &'a M,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn {
    meta_version: u32,
    meta: serde_json::Value,
}

/// The envelope read straight into `M`: the common case (the current version), without
/// building a `serde_json::Value` first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeTyped<M> {
    meta_version: u32,
    meta: M,
}

/// Bytes in an agent's `Meta` (or any serde type), written as one base64 string: about a third
/// larger than the bytes, where serde's default for a `Vec<u8>` (a JSON array of numbers) is up
/// to four times larger and slower to read.
///
/// It holds [`Bytes`], so that bytes the agent already has as `Bytes` (an input literal from
/// [`crate::TaskRequest::encoded_inputs`]) go into its meta without a copy, and bytes read back
/// go on as they are ([`crate::Literals::insert_encoded`]). A `Vec<u8>` converts with `into()`.
///
/// ```
/// use agent_plugin_api::Base64Bytes;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Job {
///     token: Base64Bytes,
/// }
/// let json = serde_json::to_string(&Job { token: Base64Bytes(vec![0, 1, 2, 255].into()) }).unwrap();
/// assert_eq!(json, r#"{"token":"AAEC/w=="}"#);
/// assert_eq!(serde_json::from_str::<Job>(&json).unwrap().token.0, [0, 1, 2, 255][..]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base64Bytes(pub Bytes);

impl From<Vec<u8>> for Base64Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes.into())
    }
}

impl From<Bytes> for Base64Bytes {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        // Written into a meta by the SDK (`encode_into`): its formatter writes the base64
        // straight from these bytes into the meta's buffer.
        if writes_meta::<S>() {
            BASE64_NEXT.set(true);
            let written = s.serialize_bytes(&self.0);
            BASE64_NEXT.set(false);
            return written;
        }
        // Up to 768 bytes (most metas): encoded on the stack, then handed over as one string
        // (`collect_str` takes a string piece by piece through `fmt`, several times slower for
        // short ones).
        let mut text = [0u8; 1024];
        match base64::engine::general_purpose::STANDARD.encode_slice(&self.0, &mut text) {
            Ok(n) => s.serialize_str(std::str::from_utf8(&text[..n]).map_err(serde::ser::Error::custom)?),
            // Longer, to serde_json (an agent writing JSON itself; the SDK's metas took the
            // formatter's path above): as a raw value, which serde_json copies as it is. A
            // string would be scanned a byte at a time for characters to escape, which base64
            // never has: on a 1 MiB input that scan was 40 % of the call.
            Err(_) if writes_json::<S>() => {
                // Long base64 is written by `base64-simd` (SSSE3/AVX2 or NEON, as the CPU has
                // them), straight into the string: the `base64` crate took 7.7M instructions for
                // the megabyte of echo's 1 MiB CreateTask, and its `encode_string` went through
                // a stack buffer, checked it for UTF-8 and copied it again (BENCHMARKS.md,
                // twelfth round). A test holds the two crates to the same text.
                let mut json = String::with_capacity(base64_simd::STANDARD.encoded_length(self.0.len()) + 2);
                json.push('"');
                base64_simd::STANDARD.encode_append(&self.0, &mut json);
                json.push('"');
                // SAFETY: `json` is one JSON string and nothing else: a quote, characters of
                // the standard base64 alphabet (letters, digits, `+`, `/`, `=`), none of which
                // JSON escapes, and a closing quote. (serde_json checks this in debug builds,
                // so the tests check it; checking it here would scan the text again, a third
                // of the time saved.)
                unsafe { serde_json::value::RawValue::from_string_unchecked(json) }.serialize(s)
            }
            // Longer, to any other serializer: a string, written in pieces of 4 KiB of text
            // (rather than into a zeroed `String` as long as the whole, checked for UTF-8).
            Err(_) => s.collect_str(&InPieces(&self.0)),
        }
    }
}

/// Whether `S` is serde_json's serializer (`&mut serde_json::Serializer<W, F>`, whatever the
/// writer and formatter), which writes a `RawValue` as it is. Any other serializer would write
/// serde_json's private representation of one, so it gets a string. The name is the only way
/// to tell: if a compiler ever spelled it differently, base64 would be written as a string
/// again, the same bytes more slowly (a test says so if that happens).
fn writes_json<S>() -> bool {
    std::any::type_name::<S>().starts_with("&mut serde_json::ser::Serializer<")
}

/// Base64 of bytes written in pieces: 3 KiB of bytes (a multiple of 3, so only the last piece
/// is padded, and the pieces join into the base64 of the whole) to 4 KiB of text at a time.
struct InPieces<'a>(&'a [u8]);

impl std::fmt::Display for InPieces<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = [0u8; 4096];
        for piece in self.0.chunks(3072) {
            f.write_str(base64_simd::STANDARD.encode_as_str(piece, base64_simd::Out::from_slice(&mut text)))?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Decoded from the text where the deserializer has it (borrowed from the input when it
        // has no escapes), not from an owned copy: serde's `Cow<str>` always copies. Asked for
        // as bytes: serde_json then hands over a string's bytes (escapes resolved) without
        // checking that they are UTF-8, a scan of the whole text that base64 makes useless (the
        // decoder refuses any byte outside its alphabet). Other deserializers hand a string to
        // `visit_str` as before.
        d.deserialize_bytes(Base64Visitor)
    }
}

struct Base64Visitor;

impl serde::de::Visitor<'_> for Base64Visitor {
    type Value = Base64Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a base64 string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Base64Bytes, E> {
        self.visit_bytes(text.as_bytes())
    }

    /// The text of a string, as serde_json's `deserialize_bytes` gives it (or a format's own
    /// bytes, which `serialize` never writes: they are read as base64 text too).
    fn visit_bytes<E: serde::de::Error>(self, text: &[u8]) -> Result<Base64Bytes, E> {
        decode_base64(text).map(|bytes| Base64Bytes(bytes.into())).map_err(E::custom)
    }
}

/// Standard padded base64 into a vector of exactly the decoded length, so that a `Bytes` made
/// from it (`Literals::insert_encoded`) keeps the vector's buffer instead of allocating a
/// header for a buffer longer than its contents, as base64's `decode` would leave it.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>, base64::DecodeSliceError> {
    use base64::Engine;
    let padding = text.iter().rev().take(2).take_while(|&&b| b == b'=').count();
    let len = (text.len() / 4 * 3).saturating_sub(padding);
    if text.len() <= SHORT_BASE64 {
        if let Some(bytes) = decode_short(text, len) {
            return Ok(bytes);
        }
    }
    // Longer: `base64-simd`, which writes into a vector of exactly the decoded length without
    // zeroing it first, and refuses what `base64` refuses (a test holds them to the same
    // verdicts). The 1.4 MiB meta of a GetTask after echo's 1 MiB CreateTask took the `base64`
    // crate 9.7M instructions, and zeroing its buffer 1.1M (BENCHMARKS.md, twelfth round).
    match base64_simd::STANDARD.decode_to_vec(text) {
        Ok(bytes) => Ok(bytes),
        // The `base64` crate's verdict says what is wrong, and where.
        Err(_) => {
            let mut out = vec![0; len];
            let n = base64::engine::general_purpose::STANDARD.decode_slice(text, &mut out)?;
            out.truncate(n);
            Ok(out)
        }
    }
}

/// Up to this many characters, [`decode_short`] is tried first.
const SHORT_BASE64: usize = 128;

/// The value of each base64 character (standard alphabet), 64 for any other byte.
static BASE64_VALUES: [u8; 256] = {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut values = [64u8; 256];
    let mut i = 0;
    while i < 64 {
        values[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    values
};

/// Canonical standard base64 (what `base64`'s `STANDARD` engine writes) decoded a group of
/// four characters at a time into a vector of `len` bytes; `None` for anything else, which
/// the caller hands to the `base64` crate for its verdict and error. The metas' literals are
/// a few dozen characters, where the crate's decoder (built for long input) spends most of its
/// time getting ready: with this, a literal of echo's meta takes 0.37k instructions to decode,
/// its vector included, instead of 0.6k (BENCHMARKS.md, eleventh round). A test holds the two
/// to the same answer on every input it tries.
fn decode_short(text: &[u8], len: usize) -> Option<Vec<u8>> {
    let (groups, []) = text.as_chunks::<4>() else { return None };
    let mut out = Vec::with_capacity(len);
    let mut groups = groups.iter().peekable();
    while let Some(group) = groups.next() {
        let v = group.map(|c| BASE64_VALUES[c as usize]);
        let last = groups.peek().is_none();
        if v.iter().all(|&x| x < 64) {
            let n = u32::from(v[0]) << 18 | u32::from(v[1]) << 12 | u32::from(v[2]) << 6 | u32::from(v[3]);
            out.extend_from_slice(&n.to_be_bytes()[1..]);
        } else if last && v[0] < 64 && v[1] < 64 && group[3] == b'=' {
            // Padding, only at the end: "xy==" is one byte, "xyz=" two; the bits past them
            // must be zero (the canonical form).
            let n = u32::from(v[0]) << 18 | u32::from(v[1]) << 12;
            if group[2] == b'=' {
                (n & 0xffff == 0).then_some(())?;
                out.push((n >> 16) as u8);
            } else {
                (v[2] < 64).then_some(())?;
                let n = n | u32::from(v[2]) << 6;
                (n & 0xff == 0).then_some(())?;
                out.extend_from_slice(&n.to_be_bytes()[1..3]);
            }
        } else {
            return None;
        }
    }
    (out.len() == len).then_some(out)
}

/// Appends `meta` in the envelope to `out`: the bytes `serde_json` writes for [`EnvelopeOut`]
/// (a test checks), its fixed parts written as they are.
pub(crate) fn encode_into<A: AsyncAgent>(meta: &A::Meta, out: &mut Vec<u8>) -> Result<(), AgentError> {
    write_envelope(A::META_VERSION, meta, out)
        .map_err(|e| AgentError::new(format!("{}: the resource meta does not serialize: {e}", A::NAME)))
}

fn write_envelope<M: Serialize>(version: u32, meta: &M, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"meta_version\":");
    serde_json::to_writer(&mut *out, &version)?;
    out.extend_from_slice(b",\"meta\":");
    meta.serialize(&mut serde_json::Serializer::with_formatter(NoWriter, MetaFormatter { out: &mut *out }))?;
    out.push(b'}');
    Ok(())
}

/// The serializer's writer while it writes a meta: nothing, since [`MetaFormatter`] writes
/// every token into the meta's buffer itself. A write here would be a token lost, so it fails
/// the serialization (and the tests) instead.
struct NoWriter;

impl std::io::Write for NoWriter {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("agent-plugin-api: serde_json wrote past MetaFormatter (a Formatter method it does not forward)"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// serde_json's compact formatter, writing into the meta's buffer (with room to spare, see
/// [`WithRoom`]) rather than into the serializer's writer, and writing bytes
/// ([`Base64Bytes`], through `serialize_bytes`) as a base64 string. The formatter is the one
/// place serde_json lets bytes be written some other way than as an array of numbers; holding
/// the buffer lets it encode them straight from the agent's bytes into the meta, without the
/// string of base64 that went between: 1.4M instructions of echo's 1 MiB CreateTask's 6.0M
/// (BENCHMARKS.md, twelfth round). Every other token is the compact formatter's (a test holds
/// a meta of every kind of value to serde_json's own bytes).
struct MetaFormatter<'a> {
    out: &'a mut Vec<u8>,
}

/// [`serde_json::ser::Formatter`] methods of `MetaFormatter`, forwarded to serde_json's compact
/// formatter writing into the meta's buffer. The writer they are given (the serializer's
/// [`NoWriter`]) is ignored.
macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $name<W: ?Sized + std::io::Write>(&mut self, _: &mut W $(, $arg: $ty)*) -> std::io::Result<()> {
            serde_json::ser::CompactFormatter.$name(&mut WithRoom(self.out) $(, $arg)*)
        }
    )*};
}

impl serde_json::ser::Formatter for MetaFormatter<'_> {
    forward! {
        write_null();
        write_bool(value: bool);
        write_i8(value: i8);
        write_i16(value: i16);
        write_i32(value: i32);
        write_i64(value: i64);
        write_i128(value: i128);
        write_u8(value: u8);
        write_u16(value: u16);
        write_u32(value: u32);
        write_u64(value: u64);
        write_u128(value: u128);
        write_f32(value: f32);
        write_f64(value: f64);
        write_number_str(value: &str);
        begin_string();
        end_string();
        write_string_fragment(fragment: &str);
        write_char_escape(char_escape: serde_json::ser::CharEscape);
        begin_array();
        end_array();
        begin_array_value(first: bool);
        end_array_value();
        begin_object();
        end_object();
        begin_object_key(first: bool);
        end_object_key();
        begin_object_value();
        end_object_value();
        write_raw_fragment(fragment: &str);
    }

    fn write_byte_array<W: ?Sized + std::io::Write>(&mut self, _: &mut W, bytes: &[u8]) -> std::io::Result<()> {
        if !BASE64_NEXT.replace(false) {
            // Bytes of another type (`serde_bytes`, say): serde_json's array of numbers, as
            // the agent's type has always been written.
            return serde_json::ser::CompactFormatter.write_byte_array(&mut WithRoom(self.out), bytes);
        }
        let text = base64_simd::STANDARD.encoded_length(bytes.len());
        if self.out.capacity() - self.out.len() < text + 2 {
            grow_with_room(self.out, text + 2);
        }
        self.out.push(b'"');
        base64_simd::STANDARD.encode_append(bytes, self.out);
        self.out.push(b'"');
        Ok(())
    }
}

thread_local! {
    /// Set by [`Base64Bytes`] around its `serialize_bytes`: the bytes [`MetaFormatter`] is about
    /// to write are base64 ones. Any other bytes keep serde_json's form.
    static BASE64_NEXT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether `S` is the serializer [`write_envelope`] writes a meta with, whose formatter
/// writes [`Base64Bytes`] as base64.
fn writes_meta<S>() -> bool {
    std::any::type_name::<S>() == std::any::type_name::<&mut serde_json::Serializer<NoWriter, MetaFormatter<'static>>>()
}

/// A vector that, when a write does not fit, grows with room for a little more: a `Vec`
/// grown by one long write (a long base64 string in the meta) is exactly full, and the
/// envelope's closing brace then moved the whole meta into a buffer twice as large (1.4 MiB
/// copied on echo's 1 MiB CreateTask).
struct WithRoom<'a>(&'a mut Vec<u8>);

impl std::io::Write for WithRoom<'_> {
    // Inlined into serde_json's writes, which are mostly a byte or a few of a known length
    // (as `Vec`'s own `Write` is): called, this cost a small CreateTask 1.2k instructions.
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.0.capacity() - self.0.len() < bytes.len() {
            grow_with_room(self.0, bytes.len());
        }
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    #[inline]
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cold]
#[inline(never)]
fn grow_with_room(out: &mut Vec<u8>, needed: usize) {
    /// Enough for what follows a meta's last value: closing brackets and braces.
    const ROOM: usize = 64;
    out.reserve(needed + ROOM);
}

/// The meta's JSON in `bytes`, if they are an envelope of format `version` exactly as
/// [`encode_into`] writes it (`{"meta_version":<version>,"meta":<meta>}`, no spaces around the
/// fixed parts). Anything else is left to serde: this only skips reading the envelope's two
/// field names, which a GetTask otherwise pays for on every poll. The meta found here is the
/// one serde would find: the version is the same number in JSON's one spelling (no sign, no
/// leading zero, no exponent), and the meta must be all that is left (serde fails otherwise,
/// and the caller reads the whole envelope instead).
fn current_meta(bytes: &[u8], version: u32) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(b"{\"meta_version\":")?.strip_suffix(b"}")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (number, rest) = rest.split_at(digits);
    let spelled = std::str::from_utf8(number).ok()?;
    if (spelled.len() > 1 && spelled.starts_with('0')) || spelled.parse::<u32>().ok()? != version {
        return None;
    }
    rest.strip_prefix(b",\"meta\":")
}

/// Decodes the envelope (or unversioned JSON as version 0) into the current `Meta`.
pub(crate) fn decode<A: AsyncAgent>(bytes: &[u8]) -> Result<A::Meta, AgentError> {
    let unreadable =
        |e: &dyn std::fmt::Display| AgentError::precondition(format!("{}: the resource meta is not one this agent wrote ({e})", A::NAME));
    // The envelope as `encode_into` writes it, in the current version: only the meta to read.
    if let Some(meta) = current_meta(bytes, A::META_VERSION) {
        if let Ok(meta) = serde_json::from_slice::<A::Meta>(meta) {
            return Ok(meta);
        }
    }
    if let Ok(EnvelopeTyped { meta_version, meta }) = serde_json::from_slice::<EnvelopeTyped<A::Meta>>(bytes) {
        if meta_version == A::META_VERSION {
            return Ok(meta);
        }
    }
    // Another version, or not an envelope: through `serde_json::Value`.
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| unreadable(&e))?;
    let (version, meta) = match serde_json::from_value::<EnvelopeIn>(value.clone()) {
        Ok(envelope) => (envelope.meta_version, envelope.meta),
        Err(_) => (0, value),
    };
    if version > A::META_VERSION {
        return Err(AgentError::precondition(format!(
            "{}: the resource meta has format version {version}, written by a newer version of the plugin; \
             this version reads up to {} (roll the newer plugin forward again, or let the task fail)",
            A::NAME,
            A::META_VERSION
        )));
    }
    if version == A::META_VERSION {
        return serde_json::from_value(meta).map_err(|e| unreadable(&e));
    }
    A::upgrade_meta(version, meta).map_err(|e| {
        if e.kind() == crate::ErrorKind::Precondition {
            e
        } else {
            AgentError::precondition(format!("{}: the resource meta of format version {version} does not upgrade: {e}", A::NAME))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_written_whole_at_every_size() {
        use base64::Engine;
        // Both sides of the stack buffer's limit (768 bytes encode to exactly 1024), and of the
        // pieces' (3 KiB each) beyond it.
        for len in [0, 1, 2, 3, 767, 768, 769, 3071, 3072, 3073, 3074, 6144, 6145, 10_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let json = serde_json::to_string(&Base64Bytes::from(bytes.clone())).unwrap();
            let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
            assert_eq!(json, format!("\"{text}\""), "{len} bytes");
            // Through another serializer (in pieces beyond the stack buffer).
            assert_eq!(serde_json::to_value(Base64Bytes::from(bytes.clone())).unwrap(), serde_json::Value::String(text), "{len} bytes");
            assert_eq!(serde_json::from_str::<Base64Bytes>(&json).unwrap().0, bytes);
        }
    }

    #[test]
    fn long_base64_is_the_same_string_whoever_writes_it() {
        use base64::Engine;
        // serde_json's serializer takes the raw path ...
        assert!(writes_json::<&mut serde_json::Serializer<Vec<u8>>>());
        assert!(writes_json::<&mut serde_json::Serializer<&mut Vec<u8>, serde_json::ser::PrettyFormatter<'static>>>());
        // ... no other does.
        assert!(!writes_json::<serde_json::value::Serializer>());
        assert!(!writes_json::<&mut Vec<u8>>());
        #[derive(Serialize)]
        struct Meta<B> {
            name: &'static str,
            inputs: Vec<(String, B)>,
        }
        for len in [769, 3072, 3073, 100_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
            let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let meta =
                Meta { name: "n", inputs: vec![("a".into(), Base64Bytes::from(bytes.clone())), ("b".into(), Base64Bytes::default())] };
            assert_eq!(serde_json::to_string(&meta).unwrap(), format!(r#"{{"name":"n","inputs":[["a","{text}"],["b",""]]}}"#));
            let as_text = Meta { name: "n", inputs: vec![("a".to_string(), text.clone()), ("b".into(), String::new())] };
            assert_eq!(serde_json::to_string_pretty(&meta).unwrap(), serde_json::to_string_pretty(&as_text).unwrap());
            assert_eq!(serde_json::to_value(&meta.inputs[0].1).unwrap(), serde_json::Value::String(text.clone()));
            let mut envelope = Vec::new();
            write_envelope(3, &meta, &mut envelope).unwrap();
            let back: EnvelopeTyped<serde_json::Value> = serde_json::from_slice(&envelope).unwrap();
            assert_eq!(back.meta["inputs"][0][1], text);
        }
    }

    #[test]
    fn a_long_meta_leaves_room_for_the_envelopes_closing_brace() {
        // One long base64 string fills the buffer to the byte unless the writer leaves room;
        // the closing brace would then double the buffer, moving the whole meta.
        for len in [10_000, 1 << 20] {
            let meta = vec![("x".to_string(), Base64Bytes::from(vec![7u8; len]))];
            let mut out = Vec::with_capacity(256);
            write_envelope(2, &meta, &mut out).unwrap();
            assert!(out.ends_with(b"\"]]}"), "{len}");
            assert!(out.capacity() < out.len() + 4096, "{len} bytes: {} bytes of room", out.capacity() - out.len());
        }
    }

    #[test]
    fn base64_reads_as_base64_decodes_it_into_a_vector_of_its_length() {
        use base64::Engine;
        let standard = base64::engine::general_purpose::STANDARD;
        let mut texts: Vec<String> =
            (0..200usize).map(|len| standard.encode((0..len).map(|i| (i * 31 % 256) as u8).collect::<Vec<_>>())).collect();
        // And what base64 refuses: bad lengths, padding missing, misplaced or extra, stray bits
        // in the last symbol, characters outside the alphabet.
        let refused = ["A", "AB", "ABC", "AB=", "A===", "AB==C", "QQ==QQ==", "QR==", "QUI=QQ", "QUJD=", "Q?==", "QUJD\n", "====", "Q==="];
        texts.extend(refused.map(String::from));
        // The same beyond `SHORT_BASE64` characters (`base64-simd`'s side): after and before a
        // long valid text, and a long text damaged at each place of a SIMD block and beyond.
        let long = standard.encode((0..300usize).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>());
        for bad in refused.iter().chain(&["QQ", "QUI", "=", " ", "-_", "é"]) {
            texts.push(format!("{long}{bad}"));
            texts.push(format!("{bad}{long}"));
        }
        for at in (0..70).chain([199, 200, 398, 399]) {
            for stranger in ["-", "=", "\n", "?"] {
                let mut damaged = long.clone();
                damaged.replace_range(at..at + 1, stranger);
                texts.push(damaged);
            }
        }
        texts.extend([1000usize, 4099, 100_000].map(|len| standard.encode((0..len).map(|i| (i * 131 % 256) as u8).collect::<Vec<_>>())));
        for text in texts {
            let expected = standard.decode(&text).ok();
            // Borrowed from the input, copied out of an escaped string, and from a `Value`.
            let escaped = text.replace('Q', "\\u0051");
            let read = [
                serde_json::from_str::<Base64Bytes>(&format!("\"{text}\"")),
                serde_json::from_str::<Base64Bytes>(&format!("\"{escaped}\"")),
                serde_json::from_value::<Base64Bytes>(serde_json::Value::String(text.clone())),
            ];
            for got in read {
                assert_eq!(got.ok().map(|b| b.0.to_vec()), expected, "{text:?}");
            }
            if let Ok(bytes) = decode_base64(text.as_bytes()) {
                assert_eq!(bytes.capacity(), bytes.len(), "{text:?}");
            }
        }
        assert!(serde_json::from_str::<Base64Bytes>("17").is_err(), "a number is not base64");
        // Read as bytes, a string is still only base64 text: not an array of numbers (serde's
        // form of bytes), and not an escape that is no character (which serde_json's bytes
        // pass on as they are).
        assert!(serde_json::from_str::<Base64Bytes>("[81,81,61,61]").is_err(), "an array is not base64");
        assert!(serde_json::from_str::<Base64Bytes>(r#""QUJD\ud800""#).is_err(), "a lone surrogate is not base64");
        assert!(serde_json::from_str::<Base64Bytes>(r#""QUJD\u00e9""#).is_err(), "a non-ASCII character is not base64");
        assert!(serde_json::from_str::<Base64Bytes>("\"QUJDé\"").is_err(), "a non-ASCII character is not base64");
    }

    #[test]
    fn short_base64_decodes_as_the_base64_crate_decodes_it() {
        use base64::Engine;
        let standard = base64::engine::general_purpose::STANDARD;
        let agree = |text: &[u8]| {
            let padding = text.iter().rev().take(2).take_while(|&&b| b == b'=').count();
            let len = (text.len() / 4 * 3).saturating_sub(padding);
            let ours = decode_short(text, len);
            let theirs = standard.decode(text).ok();
            // Whatever the quick decoder answers is the crate's answer; what it declines the
            // crate decides (`decode_base64` asks it then).
            if ours.is_some() {
                assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(text));
            }
            assert_eq!(decode_base64(text).ok(), theirs, "{:?}", String::from_utf8_lossy(text));
        };
        // Every text of up to six characters, and one in 41 of eight, over symbols with and
        // without low bits set (A 0, Q 16, g 32, 9 61, / 63), padding and a stranger: padding
        // in every place, trailing bits set and clear.
        let chars = b"AQg9/=?";
        let mut declined = 0;
        for len in [0, 1, 2, 3, 4, 5, 6, 8usize] {
            let total = chars.len().pow(len as u32);
            let step = if len == 8 { 41 } else { 1 };
            for mut i in (0..total).step_by(step) {
                let text: Vec<u8> = (0..len)
                    .map(|_| {
                        let c = chars[i % chars.len()];
                        i /= chars.len();
                        c
                    })
                    .collect();
                agree(&text);
                if let Ok(bytes) = standard.decode(&text) {
                    // What the crate accepts, the quick decoder does too.
                    declined += usize::from(decode_short(&text, bytes.len()).is_none());
                }
            }
        }
        assert_eq!(declined, 0, "the quick decoder declines nothing the crate accepts");
        // Longer ones, around the quick decoder's limit: valid, then damaged.
        let mut next = crate::mutate::generator(0x5eed_ba5e);
        for _ in 0..20_000 {
            let len = next(SHORT_BASE64 / 4 * 3 + 8);
            let bytes: Vec<u8> = (0..len).map(|_| next(256) as u8).collect();
            let text = standard.encode(&bytes);
            agree(text.as_bytes());
            agree(&crate::mutate::mutated(text.as_bytes(), &mut next));
        }
    }

    #[test]
    fn the_quick_read_of_the_envelope_finds_the_meta_serde_finds() {
        let metas = ["{}", r#"{"a":[1,"x"],"b":null}"#, "null", r#""s""#, r#"{"meta":{"meta_version":3}}"#, r#"{"a":"}"}"#];
        for version in [0, 2, 10, u32::MAX] {
            for meta in metas {
                let mut bytes = Vec::new();
                write_envelope(version, &serde_json::from_str::<serde_json::Value>(meta).unwrap(), &mut bytes).unwrap();
                let found = current_meta(&bytes, version).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&bytes)));
                let by_serde: EnvelopeTyped<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(serde_json::from_slice::<serde_json::Value>(found).unwrap(), by_serde.meta);
                assert_eq!(by_serde.meta_version, version);
                // Another version is left to serde (and to `upgrade_meta`).
                assert_eq!(current_meta(&bytes, version.wrapping_add(1)), None);
            }
        }
        // Written otherwise (by hand, by another tool, or not JSON): left to serde, which reads
        // the envelope whole, refuses it, or reads it as unversioned.
        for other in [
            r#"{"meta_version":02,"meta":{}}"#,
            r#"{"meta_version":2.0,"meta":{}}"#,
            r#"{"meta_version":2e0,"meta":{}}"#,
            r#"{"meta_version":-2,"meta":{}}"#,
            r#"{"meta_version":4294967298,"meta":{}}"#,
            r#"{ "meta_version":2,"meta":{}}"#,
            r#"{"meta_version": 2,"meta":{}}"#,
            r#"{"meta_version":2 ,"meta":{}}"#,
            r#"{"meta_version":2,"meta":{}} "#,
            r#"{"meta":{},"meta_version":2}"#,
            r#"{"meta_version":2}"#,
            r#"{"meta_version":2,"meta""#,
            "",
        ] {
            assert_eq!(current_meta(other.as_bytes(), 2), None, "{other}");
        }
        // What is left after the meta makes serde fail, so the whole envelope is read instead.
        let trailing = br#"{"meta_version":2,"meta":{},"extra":1}"#;
        assert_eq!(current_meta(trailing, 2), Some(&br#"{},"extra":1"#[..]));
        assert!(serde_json::from_slice::<serde_json::Value>(current_meta(trailing, 2).unwrap()).is_err());
    }

    #[test]
    fn the_envelope_is_what_serde_json_writes_for_every_kind_of_value() {
        // Every token serde_json's formatter writes, through `MetaFormatter`'s forwards.
        struct OtherBytes(&'static [u8]);
        impl Serialize for OtherBytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        #[derive(Serialize)]
        struct Every {
            unit: (),
            none: Option<u8>,
            yes: bool,
            no: bool,
            ints: (i8, i16, i32, i64, i128),
            uints: (u8, u16, u32, u64, u128),
            floats: (f32, f64, f64, f64),
            text: &'static str,
            chars: char,
            map: std::collections::BTreeMap<u32, Vec<Option<&'static str>>>,
            empty: (Vec<u8>, std::collections::BTreeMap<String, ()>),
            raw: Box<serde_json::value::RawValue>,
            value: serde_json::Value,
            other_bytes: OtherBytes,
            base64: Vec<Base64Bytes>,
        }
        let every = Every {
            unit: (),
            none: None,
            yes: true,
            no: false,
            ints: (i8::MIN, -300, i32::MIN, i64::MIN, i128::MIN),
            uints: (u8::MAX, 65_535, u32::MAX, u64::MAX, u128::MAX),
            floats: (1.5, -0.0, f64::NAN, 1e300),
            text: "\u{0}\u{1f}\"\\/\u{7f}\u{e9}\u{1f600}\n\r\t\u{8}\u{c}",
            chars: '\u{2028}',
            map: [(3, vec![Some("a"), None]), (10, vec![])].into(),
            empty: (vec![], Default::default()),
            raw: serde_json::value::RawValue::from_string(r#"{"k": [1, 2]}"#.into()).unwrap(),
            value: serde_json::json!({"a": [1.25, "b", null, {"c": false}]}),
            other_bytes: OtherBytes(&[0, 1, 255]),
            base64: vec![Base64Bytes::default(), vec![1, 2, 3].into(), vec![9; 2000].into()],
        };
        assert!(writes_meta::<&mut serde_json::Serializer<NoWriter, MetaFormatter<'_>>>());
        assert!(!writes_meta::<&mut serde_json::Serializer<Vec<u8>>>());
        let mut ours = Vec::new();
        write_envelope(4, &every, &mut ours).unwrap();
        let theirs = serde_json::to_vec(&EnvelopeOut { meta_version: 4, meta: &every }).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
    }

    #[test]
    fn the_envelope_is_what_serde_json_writes() {
        #[derive(Serialize)]
        struct Meta {
            job: String,
            n: Vec<u64>,
            note: Option<String>,
        }
        for (version, meta) in [
            (0, Meta { job: String::new(), n: vec![], note: None }),
            (2, Meta { job: "a \"quoted\" \u{1f600} job\n".into(), n: vec![1, u64::MAX], note: Some("x".into()) }),
            (u32::MAX, Meta { job: "j".into(), n: vec![7], note: None }),
        ] {
            let mut ours = Vec::new();
            write_envelope(version, &meta, &mut ours).unwrap();
            let theirs = serde_json::to_vec(&EnvelopeOut { meta_version: version, meta: &meta }).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
        }
    }
}
