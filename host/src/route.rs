//! The few request fields the host reads to route a call, and nothing else.
//!
//! The host hands the plugin the request bytes it received. Decoding the whole request (a
//! 1 MiB CreateTask is mostly inputs) would cost time and, worse, re-encoding it would drop
//! fields newer than our `.proto` files (prost keeps no unknown fields). These views declare
//! only the routing fields; prost skips everything else without allocating it.

use bytes::{Buf, Bytes};
use prost::Message;

use crate::{error::RpcError, rpc::Rpc};

#[derive(Clone, PartialEq, Message)]
struct TemplateView {
    #[prost(string, tag = "2")]
    r#type: String,
    #[prost(int32, tag = "7")]
    task_type_version: i32,
}

/// CreateTask (v1 and v2) and `CreateRequestHeader`'s template field numbers differ: 2 and 1.
/// The inputs (field 1) are only measured: decoding into `Bytes` from `Bytes` is a slice.
#[derive(Clone, PartialEq, Message)]
struct CreateView {
    #[prost(bytes = "bytes", tag = "1")]
    inputs: Bytes,
    #[prost(message, optional, tag = "2")]
    template: Option<TemplateView>,
}

#[derive(Clone, PartialEq, Message)]
struct HeaderView {
    #[prost(message, optional, tag = "1")]
    template: Option<TemplateView>,
}

#[derive(Clone, PartialEq, Message)]
struct CategoryView {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "2")]
    version: i32,
}

/// Get / Delete: deprecated `task_type` = 1 (Flyte 1 only), `task_category` = 3.
#[derive(Clone, PartialEq, Message)]
struct ByCategory3 {
    #[prost(string, tag = "1")]
    task_type: String,
    #[prost(message, optional, tag = "3")]
    task_category: Option<CategoryView>,
}

/// GetTaskLogs: `task_category` = 5.
#[derive(Clone, PartialEq, Message)]
struct ByCategory5 {
    #[prost(string, tag = "1")]
    task_type: String,
    #[prost(message, optional, tag = "5")]
    task_category: Option<CategoryView>,
}

/// GetTaskMetrics: `task_category` = 7.
#[derive(Clone, PartialEq, Message)]
struct ByCategory7 {
    #[prost(string, tag = "1")]
    task_type: String,
    #[prost(message, optional, tag = "7")]
    task_category: Option<CategoryView>,
}

/// Which agent a call is for: a task type name and version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskKey {
    /// Task type (`TaskTemplate.type` or `TaskCategory.name`).
    pub name: String,
    /// Task type version.
    pub version: i32,
}

fn invalid(rpc: Rpc, e: prost::DecodeError) -> RpcError {
    RpcError::InvalidRequest(format!("{} request does not decode: {e}", rpc.name()))
}

/// Routes a category-addressed request: `task_category` when its name is set, else (Flyte 1)
/// the deprecated `task_type` with version 0, as flytekit does.
fn by_category(category: Option<CategoryView>, task_type: String, v1: bool) -> TaskKey {
    match category {
        Some(c) if !c.name.is_empty() => TaskKey { name: c.name, version: c.version },
        _ if v1 => TaskKey { name: task_type, version: 0 },
        _ => TaskKey { name: String::new(), version: 0 },
    }
}

/// What routing read from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The agent's task type and version.
    pub key: TaskKey,
    /// CreateTask: the encoded size of the inputs (for flytekit's input-size metric).
    pub inputs_len: Option<usize>,
}

/// The routing key of a unary or streaming request.
pub fn task_key(rpc: Rpc, body: &Bytes) -> Result<Routed, RpcError> {
    use Rpc::*;
    let v1 = rpc.is_v1();
    let key = |key: TaskKey| Ok(Routed { key, inputs_len: None });
    match rpc {
        V1Create | V2Create => {
            let view = CreateView::decode(body.clone()).map_err(|e| invalid(rpc, e))?;
            let t = view.template.unwrap_or_default();
            Ok(Routed { key: TaskKey { name: t.r#type, version: t.task_type_version }, inputs_len: Some(view.inputs.len()) })
        }
        V1Get | V2Get | V1Delete | V2Delete => {
            let v = ByCategory3::decode(body.as_ref()).map_err(|e| invalid(rpc, e))?;
            key(by_category(v.task_category, v.task_type, v1))
        }
        V1Logs | V2Logs => {
            let v = ByCategory5::decode(body.as_ref()).map_err(|e| invalid(rpc, e))?;
            key(by_category(v.task_category, v.task_type, v1))
        }
        V1Metrics | V2Metrics => {
            let v = ByCategory7::decode(body.as_ref()).map_err(|e| invalid(rpc, e))?;
            key(by_category(v.task_category, v.task_type, v1))
        }
        V1Execute => {
            let t = HeaderView::decode(body.as_ref()).map_err(|e| invalid(rpc, e))?.template.unwrap_or_default();
            key(TaskKey { name: t.r#type, version: t.task_type_version })
        }
        _ => Err(RpcError::InvalidRequest(format!("{} is not routed to an agent", rpc.name()))),
    }
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

    #[test]
    fn create_routes_on_template_type_and_version() {
        let req = admin::CreateTaskRequest {
            template: Some(core::TaskTemplate { r#type: "bq".into(), task_type_version: 2, ..Default::default() }),
            inputs: Some(core::LiteralMap::default()),
            ..Default::default()
        };
        let routed = task_key(Rpc::V1Create, &req.encode_to_vec().into()).unwrap();
        assert_eq!(routed.key, TaskKey { name: "bq".into(), version: 2 });
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
        assert_eq!(task_key(Rpc::V1Get, &req.encode_to_vec().into()).unwrap().key, TaskKey { name: "new".into(), version: 1 });
        let req = admin::GetTaskRequest { task_type: "old".into(), ..Default::default() };
        assert_eq!(task_key(Rpc::V1Get, &req.encode_to_vec().into()).unwrap().key, TaskKey { name: "old".into(), version: 0 });
    }

    #[test]
    #[allow(deprecated)]
    fn metrics_and_logs_read_their_own_category_field() {
        let m = admin::GetTaskMetricsRequest {
            task_category: Some(admin::TaskCategory { name: "m".into(), version: 3 }),
            ..Default::default()
        };
        assert_eq!(task_key(Rpc::V1Metrics, &m.encode_to_vec().into()).unwrap().key, TaskKey { name: "m".into(), version: 3 });
        let l =
            admin::GetTaskLogsRequest { task_category: Some(admin::TaskCategory { name: "l".into(), version: 4 }), ..Default::default() };
        assert_eq!(task_key(Rpc::V2Logs, &l.encode_to_vec().into()).unwrap().key, TaskKey { name: "l".into(), version: 4 });
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
}
