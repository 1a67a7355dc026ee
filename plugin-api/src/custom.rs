//! Reading an encoded protobuf `Struct` (a task template's `custom`) straight into an agent's
//! serde type, without building a `prost_types::Struct` and a `serde_json::Value` first.
//!
//! It reads the wire format as [`crate::json::struct_to_json`] would convert it: a `Value`
//! without a kind, or a `null_value`, is null; whole numbers below 9e15 are integers, other
//! finite numbers floats, and non-finite ones null (JSON has no NaN). What this reader does
//! not take (an enum, a repeated key, a value with more than one kind, a map entry with two
//! values, a group) is an error, and the caller then reads the slow way (`Struct::decode`,
//! then JSON), which is the reference: its answers and its error messages are the ones agents
//! see. So that it never reads what the slow way refuses, it follows prost's rules on the
//! wire as it reads: wire types, UTF-8, and prost's recursion counter, entries and unknown
//! fields included; a value the agent's type does not read is checked by
//! [`agent_proto::check::protobuf_value`] instead of being read. A mutation test holds it to
//! the slow way.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why the fast reader gave up (never shown: the slow path answers instead).
#[derive(Debug)]
pub(crate) struct GiveUp(String);

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        GiveUp(msg.to_string())
    }
}

fn give_up<T>(why: &str) -> Result<T, GiveUp> {
    Err(GiveUp(why.to_string()))
}

/// `T` from the bytes of an encoded `google.protobuf.Struct`, decoded on its own (as the
/// slow path's `Struct::decode`).
pub(crate) fn from_struct_bytes<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<T, GiveUp> {
    T::deserialize(StructDe { buf: bytes, budget: agent_proto::check::RECURSION_LIMIT })
}

/// prost's recursion counter, as [`agent_proto::check`] describes it: each reader below holds
/// the value its message's fields are decoded with. Entering a message (a map entry, a message
/// field, an item of a repeated message) needs it above zero and goes one down, and so does
/// skipping an unknown field; prost refuses at zero.
#[inline]
fn enter(budget: u32) -> Result<u32, GiveUp> {
    budget.checked_sub(1).ok_or_else(|| GiveUp("prost's recursion limit".into()))
}

/// A field of an encoded message: number and payload.
pub(crate) enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
}

/// Reads one field from the front of `buf`, with prost's rules ([`agent_proto::wire`]); a
/// group is left to the slow path.
#[inline(always)]
pub(crate) fn next_field<'a>(buf: &mut &'a [u8]) -> Result<(u32, Field<'a>), GiveUp> {
    use agent_proto::wire;
    fn bad<T>() -> Result<T, GiveUp> {
        give_up("not what prost reads")
    }
    let Some((number, wire_type)) = wire::key(buf) else { return bad() };
    let field = match wire_type {
        wire::VARINT => match wire::varint(buf) {
            Some(value) => Field::Varint(value),
            None => return bad(),
        },
        wire::FIXED64 => match buf.split_first_chunk::<8>() {
            Some((head, rest)) => {
                *buf = rest;
                Field::Fixed64(u64::from_le_bytes(*head))
            }
            None => return bad(),
        },
        wire::LEN => match wire::payload(buf) {
            Some(payload) => Field::Len(payload),
            None => return bad(),
        },
        wire::FIXED32 => match wire::advance(buf, 4) {
            Some(()) => Field::Fixed64(0),
            None => return bad(),
        },
        _ => return give_up("a group"),
    };
    Ok((number, field))
}

#[inline]
fn text(bytes: &[u8]) -> Result<&str, GiveUp> {
    agent_proto::walk::utf8(bytes).ok_or_else(|| GiveUp("invalid UTF-8".into()))
}

/// An encoded `Struct` (`map<string, Value> fields = 1`).
struct StructDe<'a> {
    buf: &'a [u8],
    budget: u32,
}

impl<'de> Deserializer<'de> for StructDe<'de> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        visitor.visit_map(Entries { buf: self.buf, budget: self.budget, value: None, seen: Seen::default() })
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _: &'static str, _: &'static [&'static str], _: V) -> Result<V::Value, GiveUp> {
        give_up("enums are read the slow way")
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit unit_struct
        newtype_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// The entries of a `Struct`, as a serde map.
struct Entries<'a> {
    buf: &'a [u8],
    budget: u32,
    /// The value of the entry whose key was just read, with its budget.
    value: Option<ValueDe<'a>>,
    /// Keys so far: a repeated key is left to the slow path (a protobuf map keeps the last).
    seen: Seen<'a>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = GiveUp;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, GiveUp> {
        while !self.buf.is_empty() {
            let entry = match next_field(&mut self.buf)? {
                (1, Field::Len(entry)) => entry,
                (1, _) => return give_up("a Struct entry of the wrong wire type"),
                _ => {
                    enter(self.budget)?;
                    continue;
                }
            };
            let inner = enter(self.budget)?;
            let (mut key, mut value, mut rest) = ("", None, entry);
            while !rest.is_empty() {
                match next_field(&mut rest)? {
                    // A key sent twice: the last, as prost.
                    (1, Field::Len(k)) => key = text(k)?,
                    // A value sent twice would be merged by prost.
                    (2, Field::Len(v)) if value.is_none() => value = Some(ValueDe { buf: v, budget: enter(inner)? }),
                    (1 | 2, _) => return give_up("an entry's field of the wrong wire type, or a value twice"),
                    _ => {
                        enter(inner)?;
                    }
                }
            }
            if !self.seen.insert(key) {
                return give_up("a repeated key");
            }
            // No value: prost's default `Value`, which is null.
            self.value = Some(value.unwrap_or(ValueDe { buf: &[], budget: 0 }));
            return seed.deserialize(de::value::BorrowedStrDeserializer::new(key)).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, GiveUp> {
        let value = self.value.take().ok_or_else(|| GiveUp("a value without its key".into()))?;
        seed.deserialize(value)
    }
}

/// The keys of one `Struct` read so far: the first few without an allocation.
#[derive(Default)]
struct Seen<'a> {
    few: [&'a str; 8],
    len: usize,
    more: Vec<&'a str>,
}

impl<'a> Seen<'a> {
    /// Adds `key`; false if it was there.
    fn insert(&mut self, key: &'a str) -> bool {
        if self.few[..self.len].contains(&key) || self.more.contains(&key) {
            return false;
        }
        match self.few.get_mut(self.len) {
            Some(slot) => {
                *slot = key;
                self.len += 1;
            }
            None => self.more.push(key),
        }
        true
    }
}

/// The kind of an encoded `Value` (its oneof: the last member on the wire wins).
enum Kind<'a> {
    Null,
    Number(f64),
    Text(&'a str),
    Bool(bool),
    Struct(&'a [u8]),
    List(&'a [u8]),
}

/// An encoded `google.protobuf.Value`, and the budget its fields are decoded with.
struct ValueDe<'a> {
    buf: &'a [u8],
    budget: u32,
}

impl<'a> ValueDe<'a> {
    fn kind(&self) -> Result<Kind<'a>, GiveUp> {
        let (mut buf, mut kind, mut kinds) = (self.buf, Kind::Null, 0);
        while !buf.is_empty() {
            kind = match next_field(&mut buf)? {
                (1, Field::Varint(_)) => Kind::Null,
                (2, Field::Fixed64(bits)) => Kind::Number(f64::from_bits(bits)),
                (3, Field::Len(s)) => Kind::Text(text(s)?),
                (4, Field::Varint(b)) => Kind::Bool(b != 0),
                (5, Field::Len(s)) => Kind::Struct(s),
                (6, Field::Len(l)) => Kind::List(l),
                (1..=6, _) => return give_up("a Value field of the wrong wire type"),
                _ => {
                    enter(self.budget)?;
                    continue;
                }
            };
            kinds += 1;
        }
        // prost keeps the last of several, but decodes (and may refuse) each, and merges two
        // structs or two lists: left to it.
        if kinds > 1 {
            return give_up("a Value with more than one kind");
        }
        Ok(kind)
    }
}

impl<'de> Deserializer<'de> for ValueDe<'de> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.kind()? {
            Kind::Null => visitor.visit_unit(),
            // As `json::value_to_json`: whole numbers are integers, NaN and infinities null.
            Kind::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => visitor.visit_i64(n as i64),
            Kind::Number(n) if n.is_finite() => visitor.visit_f64(n),
            Kind::Number(_) => visitor.visit_unit(),
            Kind::Text(s) => visitor.visit_borrowed_str(s),
            Kind::Bool(b) => visitor.visit_bool(b),
            Kind::Struct(s) => StructDe { buf: s, budget: enter(self.budget)? }.deserialize_any(visitor),
            Kind::List(l) => visitor.visit_seq(Items { buf: l, budget: enter(self.budget)? }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.kind()? {
            Kind::Null => visitor.visit_none(),
            Kind::Number(n) if !n.is_finite() => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _: &'static str, _: &'static [&'static str], _: V) -> Result<V::Value, GiveUp> {
        give_up("enums are read the slow way")
    }

    /// A value `T` does not read: checked as prost would decode it, without reading it.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match agent_proto::check::protobuf_value(self.buf, self.budget) {
            true => visitor.visit_unit(),
            false => give_up("not what prost decodes"),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        newtype_struct seq tuple tuple_struct map struct identifier
    }
}

/// The values of an encoded `ListValue` (`repeated Value values = 1`).
struct Items<'a> {
    buf: &'a [u8],
    budget: u32,
}

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = GiveUp;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, GiveUp> {
        while !self.buf.is_empty() {
            match next_field(&mut self.buf)? {
                (1, Field::Len(v)) => return seed.deserialize(ValueDe { buf: v, budget: enter(self.budget)? }).map(Some),
                (1, _) => return give_up("a list item of the wrong wire type"),
                _ => {
                    enter(self.budget)?;
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{json_to_struct, struct_to_json};
    use prost::Message;
    use serde_json::json;

    fn slow<T: de::DeserializeOwned>(s: &prost_types::Struct) -> Result<T, serde_json::Error> {
        serde_json::from_value(struct_to_json(s))
    }

    #[test]
    fn reads_what_the_json_path_reads() {
        let v = json!({"url": "http://x", "timeout_sec": 10, "ratio": 0.5, "neg": -3, "big": 1.0e16, "flag": true, "none": null,
                       "h": {"a": [1, "b", null, true, {"deep": [[]]}], "e": {}}, "list": [], "text": "ünïcode"});
        let s = json_to_struct(&v);
        let fast: serde_json::Value = from_struct_bytes(&s.encode_to_vec()).unwrap();
        assert_eq!(fast, slow::<serde_json::Value>(&s).unwrap());
        assert_eq!(fast, v);
    }

    #[test]
    fn typed_fields_and_options() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Custom {
            url: String,
            timeout_sec: u64,
            ratio: f64,
            missing: Option<String>,
            none: Option<u32>,
            #[serde(default)]
            tags: Vec<String>,
        }
        let s = json_to_struct(&json!({"url": "u", "timeout_sec": 30, "ratio": 2, "none": null, "tags": ["a"], "extra": {"x": 1}}));
        let fast: Custom = from_struct_bytes(&s.encode_to_vec()).unwrap();
        assert_eq!(fast, slow::<Custom>(&s).unwrap());
        assert_eq!(fast.tags, ["a"]);
    }

    #[test]
    fn non_finite_numbers_are_null() {
        let nan = prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)) };
        let s = prost_types::Struct { fields: [("x".to_string(), nan)].into() };
        let fast: serde_json::Value = from_struct_bytes(&s.encode_to_vec()).unwrap();
        assert_eq!(fast, json!({"x": null}));
        assert_eq!(fast, slow::<serde_json::Value>(&s).unwrap());
    }

    #[test]
    fn gives_up_where_the_slow_path_decides() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        enum Mode {
            Fast,
            Slow,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct WithEnum {
            mode: Mode,
        }
        let s = json_to_struct(&json!({"mode": "Fast"}));
        assert!(from_struct_bytes::<WithEnum>(&s.encode_to_vec()).is_err(), "enums go the slow way");
        assert!(slow::<WithEnum>(&s).is_ok());
        // A key sent twice: a protobuf map keeps the last, which only the slow path does.
        let entry = |k: &str, n: f64| prost_types::Struct { fields: [(k.to_string(), json_to_value(n))].into() }.encode_to_vec();
        let twice = [entry("a", 1.0), entry("a", 2.0)].concat();
        assert!(from_struct_bytes::<serde_json::Value>(&twice).is_err());
        assert_eq!(slow::<serde_json::Value>(&prost_types::Struct::decode(twice.as_slice()).unwrap()).unwrap(), json!({"a": 2}));
        assert!(from_struct_bytes::<serde_json::Value>(b"\x0a\x05ab").is_err(), "truncated");
        // A varint of ten bytes whose last would overflow 64 bits, as a `bool_value` and as
        // the key of an unknown field: prost refuses both, so the fast path must give up.
        let overlong = [[0xff; 9].as_slice(), &[0x02]].concat();
        for value in [[&[0x20][..], &overlong].concat(), [&[0x38][..], &overlong].concat(), [&overlong[..], &[0x00]].concat()] {
            let mut entry = vec![0x0a, 0x01, b'a', 0x12, value.len() as u8];
            entry.extend(&value);
            let bytes = [vec![0x0a, entry.len() as u8], entry].concat();
            assert!(prost_types::Struct::decode(bytes.as_slice()).is_err(), "{bytes:02x?}");
            assert!(from_struct_bytes::<serde_json::Value>(&bytes).is_err(), "{bytes:02x?}");
        }
    }

    #[test]
    fn nesting_is_read_as_deep_as_prost_decodes_it() {
        #[derive(serde::Deserialize)]
        struct OnlyName {
            #[allow(dead_code)]
            name: String,
        }
        let mut nested = json!(1);
        for depth in 0..40 {
            let s = json_to_struct(&json!({"name": "n", "deep": nested}));
            let bytes = s.encode_to_vec();
            let prost_reads = prost_types::Struct::decode(bytes.as_slice()).is_ok();
            // Read whole, and with the nested value skipped unread.
            assert_eq!(from_struct_bytes::<serde_json::Value>(&bytes).is_ok(), prost_reads, "depth {depth}");
            assert_eq!(from_struct_bytes::<OnlyName>(&bytes).is_ok(), prost_reads, "depth {depth}");
            if prost_reads {
                assert_eq!(from_struct_bytes::<serde_json::Value>(&bytes).unwrap(), slow::<serde_json::Value>(&s).unwrap());
            }
            nested = json!({"k": [nested]});
        }
        assert!(from_struct_bytes::<serde_json::Value>(&json_to_struct(&json!({"deep": nested})).encode_to_vec()).is_err());
    }

    #[test]
    fn what_the_fast_path_reads_is_what_the_slow_path_reads() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Some2 {
            region: Option<String>,
            limits: Option<serde_json::Value>,
        }
        let samples: Vec<Vec<u8>> = [
            json!({"warehouse": "analytics", "region": "us-east-1", "query": "SELECT 1", "limits": {"timeout_s": 600, "rows": 1e5}}),
            json!({"a": [1, "b", null, true, {"deep": [[]]}], "e": {}, "region": "ü", "t": false, "n": -0.5}),
        ]
        .iter()
        .map(|v| json_to_struct(v).encode_to_vec())
        .collect();
        let mut next = crate::mutate::generator(0xfeed);
        let (mut both, mut slow_only) = (0, 0);
        for i in 0..30_000 {
            let mut bytes = samples[i % samples.len()].clone();
            for _ in 0..=next(3) {
                bytes = crate::mutate::mutated(&bytes, &mut next);
            }
            let slow_struct = prost_types::Struct::decode(bytes.as_slice());
            let fast_value = from_struct_bytes::<serde_json::Value>(&bytes);
            let fast_typed = from_struct_bytes::<Some2>(&bytes);
            match &slow_struct {
                Ok(s) => {
                    if let Ok(v) = &fast_value {
                        assert_eq!(*v, slow::<serde_json::Value>(s).unwrap(), "{bytes:02x?}");
                        both += 1;
                    } else {
                        slow_only += 1;
                    }
                    if let Ok(t) = &fast_typed {
                        assert_eq!(Some(t), slow::<Some2>(s).ok().as_ref(), "{bytes:02x?}");
                    }
                }
                Err(_) => {
                    assert!(fast_value.is_err() && fast_typed.is_err(), "prost refuses {bytes:02x?}, the fast path read it");
                }
            }
        }
        // Mostly read on the fast path; what it leaves (repeated keys, several kinds in one
        // value, groups) is rare.
        assert!(both > 2_000 && slow_only < both / 10, "fast and slow {both}, slow only {slow_only}");
    }

    fn json_to_value(n: f64) -> prost_types::Value {
        prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(n)) }
    }
}
