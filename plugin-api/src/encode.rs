//! Answers encoded straight from a [`Resource`], without building the protobuf messages first.
//!
//! The generated types cost more than the bytes they produce: a Flyte 1 `Resource` wants its
//! outputs in a `BTreeMap` and its `custom_info` as a `Struct` of `BTreeMap`s, each built,
//! measured once per level of nesting, written and dropped. Here the sizes are measured once
//! and the fields written in place: the literals with prost (each measured once), or as they
//! came for literals kept encoded (see [`crate::Literals`]), the rest by hand. The bytes are the
//! ones prost writes for the same message (fields in number order, the same fields left out),
//! which the tests check against the generated types; a literal kept encoded is written as it
//! was received, which decodes to the same literal.
//!
//! Field numbers (`flyteidl.admin.Resource` and `flyteidl2.connector.Resource` alike, apart
//! from the first): 1 `state` (Flyte 1 only), 2 `outputs`, 3 `message`, 4 `log_links`,
//! 5 `phase`, 6 `custom_info`. Flyte 1's outputs are a `LiteralMap` (map entries in field 1,
//! sorted by name), Flyte 2's an `Outputs` list (`NamedLiteral`s in field 1, in order); both
//! entries are `{ string name = 1; Literal value = 2; }`.

use prost::{
    encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType},
    Message,
};

use smallvec::SmallVec;

use crate::{task::Slot, Protocol, Resource};

/// Bytes of a length-delimited field `tag` holding `len` bytes.
fn len_field(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A varint: one byte below 128 (every key here, and the lengths of most fields) without
/// prost's loop, which writes a byte at a time through `BufMut`.
#[inline]
fn put_u64(value: u64, buf: &mut Vec<u8>) {
    if value < 0x80 {
        buf.push(value as u8);
    } else {
        encode_varint(value, buf);
    }
}

#[inline]
fn put_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    if tag < 16 {
        buf.push((tag << 3) as u8 | wire_type as u8);
    } else {
        encode_key(tag, wire_type, buf);
    }
}

fn put_len(tag: u32, len: usize, buf: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_u64(len as u64, buf);
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    put_len(tag, bytes.len(), buf);
    buf.extend_from_slice(bytes);
}

fn put_varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
    put_key(tag, WireType::Varint, buf);
    put_u64(value, buf);
}

/// A resource measured for one protocol, ready to be written.
pub(crate) struct Encoder<'a> {
    r: &'a Resource,
    v1: bool,
    /// Outputs in the order they are written: name, literal, the literal's length. On the stack
    /// for up to eight (most answers): a vector here was one allocation per answer.
    outputs: SmallVec<[(&'a str, &'a Slot, usize); 8]>,
    /// Length of the outputs message (`LiteralMap` / `Outputs`).
    outputs_len: usize,
    /// Length of the `custom_info` Struct.
    info_len: usize,
    /// Length of the whole `Resource`.
    len: usize,
}

impl<'a> Encoder<'a> {
    pub(crate) fn new(r: &'a Resource, protocol: Protocol) -> Self {
        let v1 = protocol == Protocol::V1;
        let mut outputs: SmallVec<[(&str, &Slot, usize); 8]> = SmallVec::new();
        let mut outputs_len = 0;
        if let Some(o) = &r.outputs {
            outputs = o.slots().map(|(n, l)| (n, l, l.encoded_len())).collect();
            if v1 {
                // A map (inputs passed on as outputs are in its order already).
                let kept = crate::wire::map_order(&mut outputs, |o| o.0);
                outputs.truncate(kept);
            }
            outputs_len = outputs.iter().map(|&(n, _, l)| len_field(1, entry_len(v1, n, l))).sum();
        }
        let info_len = struct_len(&r.custom_info);
        let mut len = 0;
        if v1 {
            let state = state_of(r.phase);
            len += if state != 0 { key_len(1) + encoded_len_varint(state as u64) } else { 0 };
        }
        if r.outputs.is_some() {
            len += len_field(2, outputs_len);
        }
        if !r.message.is_empty() {
            len += len_field(3, r.message.len());
        }
        len += r.log_links.iter().map(|l| len_field(4, l.encoded_len())).sum::<usize>();
        let phase = r.phase as i32;
        if phase != 0 {
            len += key_len(5) + encoded_len_varint(phase as i64 as u64);
        }
        if !r.custom_info.is_empty() {
            len += len_field(6, info_len);
        }
        Self { r, v1, outputs, outputs_len, info_len, len }
    }

    /// Length of the `Resource` message.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Writes the `Resource` message (without a tag or length of its own).
    pub(crate) fn write(&self, buf: &mut Vec<u8>) {
        let r = self.r;
        if self.v1 {
            let state = state_of(r.phase);
            if state != 0 {
                put_varint(1, state as u64, buf);
            }
        }
        if r.outputs.is_some() {
            put_len(2, self.outputs_len, buf);
            for &(name, literal, len) in &self.outputs {
                put_len(1, entry_len(self.v1, name, len), buf);
                if !name.is_empty() {
                    put_bytes(1, name.as_bytes(), buf);
                }
                if len > 0 || !self.v1 {
                    put_len(2, len, buf);
                    literal.encode_raw(buf);
                }
            }
        }
        if !r.message.is_empty() {
            put_bytes(3, r.message.as_bytes(), buf);
        }
        for link in &r.log_links {
            put_len(4, link.encoded_len(), buf);
            link.encode_raw(buf);
        }
        let phase = r.phase as i32;
        if phase != 0 {
            put_varint(5, phase as i64 as u64, buf);
        }
        if !r.custom_info.is_empty() {
            put_len(6, self.info_len, buf);
            write_struct(&r.custom_info, buf);
        }
    }
}

/// An output entry: a map entry leaves out an empty name and an empty literal (prost's map
/// encoding); a `NamedLiteral` leaves out an empty name and always carries its value.
fn entry_len(v1: bool, name: &str, literal_len: usize) -> usize {
    let name_len = if name.is_empty() { 0 } else { len_field(1, name.len()) };
    name_len + if v1 && literal_len == 0 { 0 } else { len_field(2, literal_len) }
}

/// The deprecated Flyte 1 `state`, mirrored from the phase for clients older than `phase`.
fn state_of(phase: crate::Phase) -> i32 {
    crate::dispatch::state_of(phase) as i32
}

// ---------------------------------------------------------------- custom_info

type Info = std::collections::BTreeMap<std::borrow::Cow<'static, str>, serde_json::Value>;

/// The entries of a `Struct`: `custom_info` (keys `Cow<str>`) or a JSON object within it (keys
/// `String`).
fn entries<'m, K: AsRef<str> + 'm>(map: impl IntoIterator<Item = (&'m K, &'m serde_json::Value)>) -> usize {
    map.into_iter().map(|(k, v)| len_field(1, map_entry_len(k.as_ref(), v))).sum()
}

/// A `Struct.fields` entry: key (left out when empty) and `Value` (never empty: it always has
/// a kind).
fn map_entry_len(key: &str, value: &serde_json::Value) -> usize {
    (if key.is_empty() { 0 } else { len_field(1, key.len()) }) + len_field(2, value_len(value))
}

fn struct_len(map: &Info) -> usize {
    entries(map)
}

/// A `google.protobuf.Value`: 1 null, 2 number (a double), 3 string, 4 bool, 5 struct, 6 list.
fn value_len(v: &serde_json::Value) -> usize {
    use serde_json::Value as J;
    match v {
        J::Null | J::Bool(_) => 2,
        J::Number(_) => 1 + 8,
        J::String(s) => len_field(3, s.len()),
        J::Array(a) => len_field(6, a.iter().map(|x| len_field(1, value_len(x))).sum()),
        J::Object(m) => len_field(5, entries(m)),
    }
}

fn write_struct(map: &Info, buf: &mut Vec<u8>) {
    write_entries(map, buf);
}

fn write_entries<'m, K: AsRef<str> + 'm>(map: impl IntoIterator<Item = (&'m K, &'m serde_json::Value)>, buf: &mut Vec<u8>) {
    for (k, v) in map {
        let k = k.as_ref();
        put_len(1, map_entry_len(k, v), buf);
        if !k.is_empty() {
            put_bytes(1, k.as_bytes(), buf);
        }
        put_len(2, value_len(v), buf);
        write_value(v, buf);
    }
}

fn write_value(v: &serde_json::Value, buf: &mut Vec<u8>) {
    use serde_json::Value as J;
    match v {
        J::Null => put_varint(1, 0, buf),
        J::Bool(b) => put_varint(4, *b as u64, buf),
        J::Number(n) => {
            put_key(2, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
        }
        J::String(s) => put_bytes(3, s.as_bytes(), buf),
        J::Array(a) => {
            put_len(6, a.iter().map(|x| len_field(1, value_len(x))).sum(), buf);
            for x in a {
                put_len(1, value_len(x), buf);
                write_value(x, buf);
            }
        }
        J::Object(m) => {
            put_len(5, entries(m), buf);
            write_entries(m, buf);
        }
    }
}

// ---------------------------------------------------------------- answers

/// `GetTaskResponse { Resource resource = 1; }` (both protocols).
pub(crate) fn get_response(r: &Resource, protocol: Protocol) -> Vec<u8> {
    let e = Encoder::new(r, protocol);
    let mut buf = Vec::with_capacity(len_field(1, e.len()));
    put_len(1, e.len(), &mut buf);
    e.write(&mut buf);
    buf
}

/// Flyte 1 `ExecuteTaskSyncResponse { oneof res { ExecuteTaskSyncResponseHeader header = 1; } }`
/// with `ExecuteTaskSyncResponseHeader { Resource resource = 1; }`.
pub(crate) fn execute_response(r: &Resource) -> Vec<u8> {
    let e = Encoder::new(r, Protocol::V1);
    let header = len_field(1, e.len());
    let mut buf = Vec::with_capacity(len_field(1, header));
    put_len(1, header, &mut buf);
    put_len(1, e.len(), &mut buf);
    e.write(&mut buf);
    buf
}

/// `prefix` followed by the Flyte 2 `Resource` (the stored form of a finished resource).
#[cfg(test)]
pub(crate) fn resource_v2_after(prefix: &[u8], r: &Resource) -> Vec<u8> {
    let e = Encoder::new(r, Protocol::V2);
    let mut buf = Vec::with_capacity(prefix.len() + e.len());
    buf.extend_from_slice(prefix);
    e.write(&mut buf);
    buf
}

/// `CreateTaskResponse { bytes resource_meta = 1; }` (both protocols) holding `prefix` and the
/// Flyte 2 `Resource`: a finished resource kept in the resource meta.
pub(crate) fn create_response_stored(prefix: &[u8], r: &Resource) -> Vec<u8> {
    let e = Encoder::new(r, Protocol::V2);
    let meta = prefix.len() + e.len();
    let mut buf = Vec::with_capacity(len_field(1, meta));
    put_len(1, meta, &mut buf);
    buf.extend_from_slice(prefix);
    e.write(&mut buf);
    buf
}

/// An encoded answer, as the plugin hands it to the host: the bytes of `buf` from `start` on.
/// Bytes before `start` are room that an answer written before its length was known
/// ([`create_response`]) did not need.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Answer {
    buf: Vec<u8>,
    start: usize,
}

impl Answer {
    /// The buffer, to trim before the host takes it (see `ffi::without_slack`).
    pub(crate) fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The answer's bytes in a vector of their own (tests and the local harness).
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

impl From<Vec<u8>> for Answer {
    fn from(buf: Vec<u8>) -> Self {
        Self { buf, start: 0 }
    }
}

impl AsRef<[u8]> for Answer {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// `CreateTaskResponse { bytes resource_meta = 1; }` around the bytes `write` appends, in one
/// buffer: room for the field's key and length is kept in front, and what the length did not
/// need is left unused in front of the answer. (Moving the answer to the front instead moved
/// the whole 1.4 MiB meta of echo's 1 MiB CreateTask: 1.4M instructions of its 7.3M.)
pub(crate) fn create_response<E>(write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<Answer, E> {
    // A key of field 1 and the longest varint.
    const ROOM: usize = 1 + 10;
    let mut buf = Vec::with_capacity(256);
    buf.resize(ROOM, 0);
    write(&mut buf)?;
    let meta = buf.len() - ROOM;
    if meta == 0 {
        // Proto3 leaves an empty field out.
        buf.clear();
        return Ok(buf.into());
    }
    let start = ROOM - (len_field(1, meta) - meta);
    let mut head = &mut buf[start..ROOM];
    put_len_into(1, meta, &mut head);
    debug_assert!(head.is_empty(), "the key and length fill the room kept for them");
    Ok(Answer { buf, start })
}

fn put_len_into(tag: u32, len: usize, buf: &mut &mut [u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dispatch::{resource_v1, resource_v2},
        flyte::{admin, core::Literal},
        meta::STORED_RESULT,
        wire, Literals, Phase,
    };

    fn literal_of(v: impl crate::value::IntoLiteral) -> Literal {
        v.into_literal()
    }

    /// Resources that between them set and leave out every field, in both protocols' edge cases.
    fn resources() -> Vec<Resource> {
        let info = serde_json::json!({
            "plugin": "echo", "n": 3, "ratio": 0.25, "big": u64::MAX, "neg": -7, "flag": true, "off": false, "nothing": null,
            "": "empty key", "empty": "", "list": [1, "two", null, [], {}, [false]], "nested": {"a": {"b": [1.5, {"c": "d"}]}, "e": {}},
        });
        let info: Info = info.as_object().unwrap().clone().into_iter().map(|(k, v)| (k.into(), v)).collect();
        let outputs = Literals::new()
            .with("zeta", 1)
            .with("alpha", "text")
            .with("", 2.5)
            .with("empty", Literal::default())
            .with("list", vec![1i64, 2, 3])
            .with("mid", literal_of(true));
        let mut all = Vec::new();
        for phase in
            [Phase::Undefined, Phase::Queued, Phase::Running, Phase::Succeeded, Phase::Failed, Phase::RetryableFailed, Phase::Aborted]
        {
            all.push(Resource::new(phase));
            all.push(Resource::new(phase).with_message("a message: ünïcödé"));
        }
        all.push(Resource::succeeded(Literals::new()));
        all.push(Resource::succeeded(outputs.clone()).with_message("done"));
        all.push(Resource::succeeded(Literals::new().with("only", Literal::default())));
        all.push(Resource::running().with_log_link("console", "https://x/1").with_log_link("", "").with_info("job", "42"));
        let mut full = Resource::succeeded(outputs).with_message("m").with_log_link("logs", "https://x/2");
        full.custom_info = info;
        all.push(full.clone());
        full.phase = Phase::RetryableFailed;
        all.push(full);
        all.push(Resource::failed("").with_info("k", serde_json::json!({})));
        // Outputs already in a map's order (written as they are), and more than the eight the
        // encoder keeps on the stack, in either order.
        all.push(Resource::succeeded(Literals::new().with("a", 1).with("b", 2).with("c", 3)));
        let many = |names: Vec<String>| Resource::succeeded(names.into_iter().fold(Literals::new(), |l, n| l.with(n, 7)));
        all.push(many((0..12).map(|i| format!("o{i:02}")).collect()));
        all.push(many((0..12).rev().map(|i| format!("o{i:02}")).collect()));
        // A message and keys borrowed, as a fixed one is kept.
        all.push(Resource::running().with_message("fixed").with_info(String::from("owned"), 1).with_info("borrowed", 2));
        // Lengths of one, two and three varint bytes at every level.
        all.push(
            Resource::succeeded(Literals::new().with("long", "x".repeat(20_000)).with(&*"n".repeat(130), 1))
                .with_message("m".repeat(300))
                .with_info("v".repeat(128), "w".repeat(16_400))
                .with_info("list", vec!["y".repeat(127); 3]),
        );
        all
    }

    #[test]
    fn answers_are_the_bytes_prost_writes_for_the_generated_types() {
        for r in resources() {
            let get_v1 = admin::GetTaskResponse { resource: Some(resource_v1(r.clone())) }.encode_to_vec();
            assert_eq!(get_response(&r, Protocol::V1), get_v1, "v1 GetTask of {r:?}");
            let get_v2 = wire::GetResponseV2 { resource: Some(resource_v2(r.clone())) }.encode_to_vec();
            assert_eq!(get_response(&r, Protocol::V2), get_v2, "v2 GetTask of {r:?}");
            let header = admin::ExecuteTaskSyncResponseHeader { resource: Some(resource_v1(r.clone())) };
            let execute =
                admin::ExecuteTaskSyncResponse { res: Some(admin::execute_task_sync_response::Res::Header(header)) }.encode_to_vec();
            assert_eq!(execute_response(&r), execute, "ExecuteTaskSync of {r:?}");
            let mut stored = STORED_RESULT.to_vec();
            resource_v2(r.clone()).encode(&mut stored).unwrap();
            assert_eq!(resource_v2_after(STORED_RESULT, &r), stored, "stored {r:?}");
        }
    }

    #[test]
    fn literals_kept_encoded_are_written_as_prost_writes_them() {
        let mut checked = 0;
        for r in resources() {
            let Some(outputs) = &r.outputs else { continue };
            let mut encoded = Literals::new();
            for (name, literal) in outputs.iter() {
                encoded.insert_encoded(name, literal.encode_to_vec()).unwrap();
            }
            assert!(encoded.slots().all(|(_, s)| matches!(s, crate::task::Slot::Encoded { .. })), "kept encoded");
            let kept = Resource { outputs: Some(encoded), ..r.clone() };
            for protocol in [Protocol::V1, Protocol::V2] {
                assert_eq!(get_response(&kept, protocol), get_response(&r, protocol), "{protocol:?} GetTask of {r:?}");
            }
            assert_eq!(execute_response(&kept), execute_response(&r));
            assert_eq!(resource_v2_after(STORED_RESULT, &kept), resource_v2_after(STORED_RESULT, &r));
            checked += 1;
        }
        assert!(checked >= 4);
    }

    #[test]
    fn flyte1_outputs_are_sorted_by_name_and_flyte2_outputs_keep_their_order() {
        let r = Resource::succeeded(Literals::new().with("b", 1).with("a", 2).with("c", 3));
        let v1 = admin::GetTaskResponse::decode(&get_response(&r, Protocol::V1)[..]).unwrap();
        let names: Vec<_> = v1.resource.unwrap().outputs.unwrap().literals.into_keys().collect();
        assert_eq!(names, ["a", "b", "c"]);
        let v2 = wire::GetResponseV2::decode(&get_response(&r, Protocol::V2)[..]).unwrap();
        let names: Vec<_> = v2.resource.unwrap().outputs.unwrap().literals.into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["b", "a", "c"]);
        // And the map's bytes are in that order too, as a decoder that keeps the first of
        // a repeated key (or streams the entries) would see them.
        let bytes = get_response(&r, Protocol::V1);
        let at = |name: &[u8]| bytes.windows(3).position(|w| w == [0x0a, 0x01, name[0]]).unwrap();
        assert!(at(b"a") < at(b"b") && at(b"b") < at(b"c"));
    }

    #[test]
    fn custom_info_reads_back_as_the_json_it_came_from() {
        let json = serde_json::json!({"a": [1, 2.5, "x", null, true, {"b": []}], "c": {"d": {"e": "f"}}});
        let r = Resource::running().with_info("a", json["a"].clone()).with_info("c", json["c"].clone());
        let back = admin::GetTaskResponse::decode(&get_response(&r, Protocol::V1)[..]).unwrap();
        assert_eq!(crate::json::struct_to_json(&back.resource.unwrap().custom_info.unwrap()), json);
    }

    #[test]
    fn create_responses_are_the_bytes_prost_writes() {
        for len in [0usize, 1, 2, 127, 128, 300, 16_383, 16_384, 2_097_152] {
            let meta: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let ours = create_response(|buf| {
                buf.extend_from_slice(&meta);
                Ok::<(), ()>(())
            })
            .unwrap();
            let prost = admin::CreateTaskResponse { resource_meta: meta.into() }.encode_to_vec();
            assert_eq!(ours.as_ref(), prost, "a resource meta of {len} bytes");
            assert_eq!(ours.into_vec(), prost, "a resource meta of {len} bytes, in a vector of its own");
        }
        let refused = create_response(|buf| {
            buf.push(1);
            Err("no")
        });
        assert_eq!(refused, Err("no"), "the writer's error comes back");
        let r = Resource::succeeded(Literals::new().with("x", 1)).with_message("done");
        let stored = create_response_stored(STORED_RESULT, &r);
        let prost = admin::CreateTaskResponse { resource_meta: resource_v2_after(STORED_RESULT, &r).into() }.encode_to_vec();
        assert_eq!(stored, prost);
    }
}
