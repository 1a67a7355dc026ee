//! The few request fields the host reads to route a call, and nothing else.
//!
//! The host hands the plugin the request bytes it received. Decoding the whole request (a
//! 1 MiB CreateTask is mostly inputs) would cost time and, worse, re-encoding it would drop
//! fields newer than our `.proto` files (prost keeps no unknown fields). So routing walks the
//! encoded fields and reads only the task type, its version and (CreateTask) the length of the
//! inputs; every other field is skipped with prost's own `skip_field`, and nothing is copied or
//! allocated: the task type is a slice of the request's buffer ([`agent_proto::walk`]). What it
//! accepts and refuses is what prost's decode of the same fields would (a test compares the two
//! on generated and mangled requests).

use agent_proto::walk::{each_field, int32_field, len_field, string_field, Read};
use bytes::{Buf, Bytes};

use crate::{error::RpcError, rpc::Rpc};

/// What routing read from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The task type: a slice of the request's buffer, checked to be UTF-8.
    name: Bytes,
    /// The task type version.
    pub version: i32,
    /// CreateTask: the encoded size of the inputs (for flytekit's input-size metric).
    pub inputs_len: Option<usize>,
}

impl Routed {
    /// The task type.
    pub fn name(&self) -> &str {
        // Checked when read from the request; an empty name cannot be told apart from a bad one.
        agent_proto::walk::utf8(&self.name).unwrap_or_default()
    }
}

/// A task type and version as read so far: later fields win, and a message field seen twice
/// merges (protobuf's rules).
#[derive(Default)]
struct Key<'a> {
    name: &'a str,
    version: i32,
}

/// `TaskTemplate`: `type` = 2, `task_type_version` = 7.
const TEMPLATE: (u32, u32) = (2, 7);
/// `TaskCategory`: `name` = 1, `version` = 2.
const CATEGORY: (u32, u32) = (1, 2);

/// Reads a message holding a task type and version at the field numbers `(name, version)`
/// ([`TEMPLATE`] or [`CATEGORY`]) into `key`.
fn read_key<'a>(payload: &'a [u8], (name, version): (u32, u32), key: &mut Key<'a>) -> Read<()> {
    each_field(payload, |tag, wire_type, buf| {
        match tag {
            t if t == name => key.name = string_field(wire_type, buf)?,
            t if t == version => key.version = int32_field(wire_type, buf)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// Get, Delete, GetTaskLogs, GetTaskMetrics: the deprecated `task_type` = 1 (Flyte 1 only) and
/// a `task_category` at `category_field`. The category wins when its name is set; else, in
/// Flyte 1, the deprecated task type with version 0, as flytekit does.
fn by_category(body: &[u8], category_field: u32, v1: bool) -> Read<Key<'_>> {
    let (mut task_type, mut cat) = ("", Key::default());
    each_field(body, |tag, wire_type, buf| {
        match tag {
            1 => task_type = string_field(wire_type, buf)?,
            t if t == category_field => read_key(len_field(wire_type, buf)?, CATEGORY, &mut cat)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(match () {
        () if !cat.name.is_empty() => cat,
        () if v1 => Key { name: task_type, version: 0 },
        () => Key::default(),
    })
}

/// The routing key of a unary or streaming request.
pub fn task_key(rpc: Rpc, body: &Bytes) -> Result<Routed, RpcError> {
    use Rpc::*;
    let v1 = rpc.is_v1();
    let mut inputs_len = None;
    let read = match rpc {
        // CreateTask, v1 and v2: `inputs` = 1 (only measured), `template` = 2.
        V1Create | V2Create => {
            let (mut key, mut inputs) = (Key::default(), 0);
            each_field(body, |tag, wire_type, buf| {
                match tag {
                    1 => inputs = len_field(wire_type, buf)?.len(),
                    2 => read_key(len_field(wire_type, buf)?, TEMPLATE, &mut key)?,
                    _ => return Ok(false),
                }
                Ok(true)
            })
            .map(|()| {
                inputs_len = Some(inputs);
                key
            })
        }
        V1Get | V2Get | V1Delete | V2Delete => by_category(body, 3, v1),
        V1Logs | V2Logs => by_category(body, 5, v1),
        V1Metrics | V2Metrics => by_category(body, 7, v1),
        // ExecuteTaskSync's `CreateRequestHeader`: `template` = 1.
        V1Execute => {
            let mut key = Key::default();
            each_field(body, |tag, wire_type, buf| {
                match tag {
                    1 => read_key(len_field(wire_type, buf)?, TEMPLATE, &mut key)?,
                    _ => return Ok(false),
                }
                Ok(true)
            })
            .map(|()| key)
        }
        _ => return Err(RpcError::InvalidRequest(format!("{} is not routed to an agent", rpc.name()))),
    };
    let key = read.map_err(|e| RpcError::InvalidRequest(format!("{} request does not decode: {e}", rpc.name())))?;
    Ok(Routed { name: body.slice_ref(key.name.as_bytes()), version: key.version, inputs_len })
}

/// The payload of field `number` (length-delimited) of an encoded message, without copying.
///
/// Used for ExecuteTaskSync, whose stream messages are a oneof of `header` (1) and `inputs` (2):
/// the host forwards each part's bytes as they came.
pub fn field_bytes(message: &Bytes, number: u32) -> Result<Option<Bytes>, String> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let mut buf = message.clone();
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        match wire_type {
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|e| e.to_string())? as usize;
                if len > buf.remaining() {
                    return Err("a field runs past the end of the message".into());
                }
                let payload = buf.split_to(len);
                if tag == number {
                    return Ok(Some(payload));
                }
            }
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|e| e.to_string())?;
            }
            WireType::SixtyFourBit if buf.remaining() >= 8 => buf.advance(8),
            WireType::ThirtyTwoBit if buf.remaining() >= 4 => buf.advance(4),
            _ => return Err("unsupported or truncated field".into()),
        }
    }
    Ok(None)
}

/// Encodes `ExecuteRequest { header = 1, inputs = 2 }` from the two parts' bytes.
pub fn execute_request(header: &[u8], inputs: &[u8]) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let mut out = Vec::with_capacity(header.len() + inputs.len() + 12);
    for (number, part) in [(1, header), (2, inputs)] {
        encode_key(number, WireType::LengthDelimited, &mut out);
        encode_varint(part.len() as u64, &mut out);
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::flyteidl::{admin, core};
    use prost::Message;

    impl Routed {
        fn key(&self) -> (&str, i32) {
            (self.name(), self.version)
        }
    }

    #[test]
    fn create_routes_on_template_type_and_version() {
        let req = admin::CreateTaskRequest {
            template: Some(core::TaskTemplate { r#type: "bq".into(), task_type_version: 2, ..Default::default() }),
            inputs: Some(core::LiteralMap::default()),
            ..Default::default()
        };
        let routed = task_key(Rpc::V1Create, &req.encode_to_vec().into()).unwrap();
        assert_eq!(routed.key(), ("bq", 2));
        assert_eq!(routed.inputs_len, Some(0), "an empty LiteralMap is present with length 0");
    }

    #[test]
    #[allow(deprecated)]
    fn category_wins_over_deprecated_task_type() {
        let req = admin::GetTaskRequest {
            task_type: "old".into(),
            task_category: Some(admin::TaskCategory { name: "new".into(), version: 1 }),
            ..Default::default()
        };
        assert_eq!(task_key(Rpc::V1Get, &req.encode_to_vec().into()).unwrap().key(), ("new", 1));
        let req = admin::GetTaskRequest { task_type: "old".into(), ..Default::default() };
        assert_eq!(task_key(Rpc::V1Get, &req.encode_to_vec().into()).unwrap().key(), ("old", 0));
    }

    #[test]
    #[allow(deprecated)]
    fn metrics_and_logs_read_their_own_category_field() {
        let m = admin::GetTaskMetricsRequest {
            task_category: Some(admin::TaskCategory { name: "m".into(), version: 3 }),
            ..Default::default()
        };
        assert_eq!(task_key(Rpc::V1Metrics, &m.encode_to_vec().into()).unwrap().key(), ("m", 3));
        let l =
            admin::GetTaskLogsRequest { task_category: Some(admin::TaskCategory { name: "l".into(), version: 4 }), ..Default::default() };
        assert_eq!(task_key(Rpc::V2Logs, &l.encode_to_vec().into()).unwrap().key(), ("l", 4));
    }

    #[test]
    fn garbage_is_invalid_argument() {
        let err = task_key(Rpc::V1Create, &Bytes::from_static(b"\xff\xff\xff")).unwrap_err();
        assert!(matches!(err, RpcError::InvalidRequest(_)), "{err:?}");
    }

    #[test]
    fn execute_parts_are_forwarded_unchanged() {
        let header = admin::CreateRequestHeader { output_prefix: "s3://x".into(), ..Default::default() };
        let first = admin::ExecuteTaskSyncRequest { part: Some(admin::execute_task_sync_request::Part::Header(header.clone())) };
        let raw = field_bytes(&Bytes::from(first.encode_to_vec()), 1).unwrap().unwrap();
        assert_eq!(raw, header.encode_to_vec());
        let joined = execute_request(&raw, b"");
        let back = agent_proto::agenthost::plugin::v1::ExecuteRequest::decode(joined.as_slice()).unwrap();
        assert_eq!(back.header.unwrap(), header);
    }

    /// prost's decode of views that declare only the routing fields: what routing did before
    /// it walked the fields itself, kept as the reference it must agree with.
    mod reference {
        use super::*;

        #[derive(Clone, PartialEq, Message)]
        pub struct Template {
            #[prost(string, tag = "2")]
            pub r#type: String,
            #[prost(int32, tag = "7")]
            pub task_type_version: i32,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct Create {
            #[prost(bytes = "bytes", tag = "1")]
            pub inputs: Bytes,
            #[prost(message, optional, tag = "2")]
            pub template: Option<Template>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct Header {
            #[prost(message, optional, tag = "1")]
            pub template: Option<Template>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct Category {
            #[prost(string, tag = "1")]
            pub name: String,
            #[prost(int32, tag = "2")]
            pub version: i32,
        }

        macro_rules! by_category {
            ($name:ident, $tag:literal) => {
                #[derive(Clone, PartialEq, Message)]
                pub struct $name {
                    #[prost(string, tag = "1")]
                    pub task_type: String,
                    #[prost(message, optional, tag = $tag)]
                    pub task_category: Option<Category>,
                }
            };
        }
        by_category!(By3, "3");
        by_category!(By5, "5");
        by_category!(By7, "7");

        fn category(c: Option<Category>, task_type: String, v1: bool) -> (String, i32) {
            match c {
                Some(c) if !c.name.is_empty() => (c.name, c.version),
                _ if v1 => (task_type, 0),
                _ => (String::new(), 0),
            }
        }

        /// (task type, version, inputs length), or None when the request does not decode.
        pub fn route(rpc: Rpc, body: &[u8]) -> Option<(String, i32, Option<usize>)> {
            use Rpc::*;
            let v1 = rpc.is_v1();
            let (name, version, inputs) = match rpc {
                V1Create | V2Create => {
                    let v = Create::decode(body).ok()?;
                    let t = v.template.unwrap_or_default();
                    (t.r#type, t.task_type_version, Some(v.inputs.len()))
                }
                V1Get | V2Get | V1Delete | V2Delete => {
                    let v = By3::decode(body).ok()?;
                    let (n, ver) = category(v.task_category, v.task_type, v1);
                    (n, ver, None)
                }
                V1Logs | V2Logs => {
                    let v = By5::decode(body).ok()?;
                    let (n, ver) = category(v.task_category, v.task_type, v1);
                    (n, ver, None)
                }
                V1Metrics | V2Metrics => {
                    let v = By7::decode(body).ok()?;
                    let (n, ver) = category(v.task_category, v.task_type, v1);
                    (n, ver, None)
                }
                V1Execute => {
                    let t = Header::decode(body).ok()?.template.unwrap_or_default();
                    (t.r#type, t.task_type_version, None)
                }
                _ => return None,
            };
            Some((name, version, inputs))
        }
    }

    /// A small deterministic generator (xorshift), so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Well-formed requests of every routed kind, with routing fields set, left out, repeated
    /// (protobuf merges a message field seen twice; the later scalar wins) and among unknown
    /// fields of every wire type, groups included.
    #[allow(deprecated)]
    fn requests() -> Vec<Vec<u8>> {
        let template = |t: &str, v: i32| core::TaskTemplate {
            r#type: t.into(),
            task_type_version: v,
            custom: Some(prost_types::Struct {
                fields: [("k".to_string(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(1.5)) })].into(),
            }),
            id: Some(core::Identifier {
                project: "p".into(),
                domain: "d".into(),
                name: "n".into(),
                version: "v".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let literal = core::Literal {
            value: Some(core::literal::Value::Scalar(Box::new(core::Scalar {
                value: Some(core::scalar::Value::Primitive(core::Primitive {
                    value: Some(core::primitive::Value::StringValue("x".repeat(40))),
                })),
            }))),
            ..Default::default()
        };
        let inputs = core::LiteralMap { literals: [("a".to_string(), literal)].into() };
        let create = |t: &str, v: i32| {
            admin::CreateTaskRequest {
                template: Some(template(t, v)),
                inputs: Some(inputs.clone()),
                output_prefix: "s3://bucket/out".into(),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let category = |n: &str, v: i32| Some(admin::TaskCategory { name: n.into(), version: v });
        let get = |t: &str, c| {
            admin::GetTaskRequest { task_type: t.into(), resource_meta: Bytes::from_static(b"{}"), task_category: c, ..Default::default() }
                .encode_to_vec()
        };
        let logs =
            admin::GetTaskLogsRequest { task_type: "old".into(), task_category: category("logs", 2), lines: 7, ..Default::default() }
                .encode_to_vec();
        let metrics = admin::GetTaskMetricsRequest {
            task_type: "old".into(),
            task_category: category("m", 3),
            queries: vec!["q".into()],
            ..Default::default()
        }
        .encode_to_vec();
        let header =
            admin::CreateRequestHeader { template: Some(template("sync", 4)), output_prefix: "s3://o".into(), ..Default::default() }
                .encode_to_vec();
        // Unknown fields: varint 40, fixed64 41, a group 42 holding a string, fixed32 43.
        let unknown: Vec<u8> = [
            &[0xc0, 0x02, 0x96, 0x01][..],
            &[0xc9, 0x02, 1, 2, 3, 4, 5, 6, 7, 8],
            &[0xd3, 0x02, 0x0a, 0x01, b'z', 0xd4, 0x02],
            &[0xdd, 0x02, 9, 9, 9, 9],
        ]
        .concat();
        let mut all = vec![
            create("echo_async", 0),
            create("bq", 2),
            create("negative", -3),
            create("large", 70_000),
            create("", 5),
            [create("first", 1), create("second", 0)].concat(),
            [
                create("only", 3),
                admin::CreateTaskRequest {
                    template: Some(core::TaskTemplate { task_type_version: 9, ..Default::default() }),
                    ..Default::default()
                }
                .encode_to_vec(),
            ]
            .concat(),
            get("old", category("new", 1)),
            get("old", category("wide", i32::MAX)),
            get("old", None),
            get("old", category("", 4)),
            [get("a", category("c1", 1)), get("", category("", 6))].concat(),
            logs,
            metrics,
            header.clone(),
            [header.clone(), header].concat(),
            Vec::new(),
        ];
        let with_unknown: Vec<Vec<u8>> = all.iter().map(|m| [&unknown[..], m, &unknown[..]].concat()).collect();
        all.extend(with_unknown);
        all
    }

    const ROUTED: [Rpc; 12] = [
        Rpc::V1Create,
        Rpc::V2Create,
        Rpc::V1Get,
        Rpc::V2Get,
        Rpc::V1Delete,
        Rpc::V2Delete,
        Rpc::V1Logs,
        Rpc::V2Logs,
        Rpc::V1Metrics,
        Rpc::V2Metrics,
        Rpc::V1Execute,
        Rpc::V1Create,
    ];

    fn agrees(rpc: Rpc, body: &[u8]) -> bool {
        let ours = task_key(rpc, &Bytes::copy_from_slice(body)).ok().map(|r| (r.name().to_string(), r.version, r.inputs_len));
        ours == reference::route(rpc, body)
    }

    #[test]
    fn routing_reads_what_prost_decodes_from_well_formed_requests() {
        let mut routed = 0;
        for body in requests() {
            for rpc in ROUTED {
                assert!(agrees(rpc, &body), "{} disagrees with prost on {body:02x?}", rpc.name());
                routed += usize::from(reference::route(rpc, &body).is_some_and(|(name, ..)| !name.is_empty()));
            }
        }
        assert!(routed > 50, "the requests route somewhere ({routed})");
    }

    #[test]
    fn routing_accepts_and_refuses_mangled_requests_as_prost_does() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut refused, mut accepted) = (0, 0);
        for body in requests().into_iter().filter(|b| !b.is_empty()) {
            for _ in 0..400 {
                let mut m = body.clone();
                match rng.below(4) {
                    0 => {
                        let i = rng.below(m.len());
                        m[i] ^= 1 << rng.below(8);
                    }
                    1 => m.truncate(rng.below(m.len())),
                    2 => {
                        let i = rng.below(m.len());
                        m[i] = rng.next() as u8;
                    }
                    _ => {
                        let i = rng.below(m.len() + 1);
                        m.insert(i, rng.next() as u8);
                    }
                }
                let rpc = ROUTED[rng.below(ROUTED.len())];
                assert!(agrees(rpc, &m), "{} disagrees with prost on {m:02x?}", rpc.name());
                match reference::route(rpc, &m) {
                    Some(_) => accepted += 1,
                    None => refused += 1,
                }
            }
        }
        assert!(refused > 1000 && accepted > 1000, "both outcomes are exercised: {refused} refused, {accepted} accepted");
    }

    #[test]
    fn the_task_type_is_a_slice_of_the_request() {
        let body = Bytes::from(
            admin::GetTaskRequest { task_category: Some(admin::TaskCategory { name: "bq".into(), version: 1 }), ..Default::default() }
                .encode_to_vec(),
        );
        let routed = task_key(Rpc::V1Get, &body).unwrap();
        let range = body.as_ptr_range();
        assert!(range.contains(&routed.name().as_ptr()), "no copy of the name");
    }
}
