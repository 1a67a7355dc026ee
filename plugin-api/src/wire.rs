//! Protocol-neutral views of Flyte 1 and Flyte 2 request and response messages.
//!
//! Flyte 2's `flyteidl2.core` types are a wire-compatible superset of Flyte 1's `flyteidl.core`
//! (same field numbers and types; `VariableMap`'s map is encoded exactly like v2's repeated
//! key/value entries). So one set of Rust types, Flyte 1's, reads both protocols: these structs
//! declare the fields where the two request messages differ (v2 `Inputs` is an ordered list of
//! named literals, v2 adds `connection`) and decode straight from the received bytes, without a
//! second parse. Unknown fields (newer than our `.proto` files) are skipped.

use std::collections::BTreeMap;

use agent_proto::flyteidl::core;
use bytes::Bytes;
use prost::Message;

/// `flyteidl2.task.NamedLiteral` with a Flyte 1 literal inside (wire-compatible).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct NamedLiteral {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<core::Literal>,
}

/// `flyteidl2.task.Inputs` / `Outputs`: literals in order.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct NamedLiterals {
    #[prost(message, repeated, tag = "1")]
    pub literals: Vec<NamedLiteral>,
}

/// `flyteidl2.core.Connection`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Connection {
    #[prost(string, tag = "1")]
    pub task_type: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub secrets: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "3")]
    pub configs: BTreeMap<String, String>,
}

/// Get and Delete in both protocols: field 2 `resource_meta`, 4 `output_prefix` (Get), 5
/// `connection` (v2).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct MetaRequest {
    #[prost(bytes = "bytes", tag = "2")]
    pub resource_meta: Bytes,
    #[prost(string, tag = "4")]
    pub output_prefix: String,
    #[prost(message, optional, tag = "5")]
    pub connection: Option<Connection>,
}

/// `GetTaskMetricsRequest` (both protocols number these fields alike).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct MetricsRequest {
    #[prost(bytes = "bytes", tag = "2")]
    pub resource_meta: Bytes,
    #[prost(string, repeated, tag = "3")]
    pub queries: Vec<String>,
    #[prost(message, optional, tag = "4")]
    pub start_time: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "5")]
    pub end_time: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "6")]
    pub step: Option<prost_types::Duration>,
}

/// `GetTaskLogsRequest` (both protocols).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct LogsRequest {
    #[prost(bytes = "bytes", tag = "2")]
    pub resource_meta: Bytes,
    #[prost(uint64, tag = "3")]
    pub lines: u64,
    #[prost(string, tag = "4")]
    pub token: String,
}

/// Flyte 2 `Resource`: outputs as an ordered list, no `state`, no `agent_error`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ResourceV2 {
    #[prost(message, optional, tag = "2")]
    pub outputs: Option<NamedLiterals>,
    #[prost(string, tag = "3")]
    pub message: String,
    #[prost(message, repeated, tag = "4")]
    pub log_links: Vec<core::TaskLog>,
    #[prost(enumeration = "core::task_execution::Phase", tag = "5")]
    pub phase: i32,
    #[prost(message, optional, tag = "6")]
    pub custom_info: Option<prost_types::Struct>,
}

/// Flyte 2 `GetTaskResponse`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct GetResponseV2 {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<ResourceV2>,
}

/// A request's parts, each kept encoded: Flyte 1 and Flyte 2 `CreateTaskRequest` (field 5,
/// `connection`, exists only in Flyte 2). Decoding into `Bytes` from `Bytes` slices, no copy.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct CreateParts {
    #[prost(bytes = "bytes", tag = "1")]
    pub inputs: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub template: Bytes,
    #[prost(string, tag = "3")]
    pub output_prefix: String,
    #[prost(bytes = "bytes", tag = "4")]
    pub task_execution_metadata: Bytes,
    #[prost(message, optional, tag = "5")]
    pub connection: Option<Connection>,
}

/// agent-host's `ExecuteRequest`, its parts kept encoded.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ExecuteParts {
    #[prost(bytes = "bytes", tag = "1")]
    pub header: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub inputs: Bytes,
}

/// Flyte 1 `CreateRequestHeader`, its parts kept encoded.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct HeaderParts {
    #[prost(bytes = "bytes", tag = "1")]
    pub template: Bytes,
    #[prost(string, tag = "2")]
    pub output_prefix: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub task_execution_metadata: Bytes,
}

/// The literals of an encoded `LiteralMap` (`list: false`; sorted by name, the last of a
/// repeated name kept, as a decoded map is) or Flyte 2 `Inputs` (`list: true`; in order), each
/// literal still encoded. Both keep their entries in field 1 as `{ string name = 1; Literal
/// value = 2; }` (a map entry and a `NamedLiteral` alike). Names and literals borrow `raw`.
pub(crate) fn encoded_literals(raw: &Bytes, list: bool) -> Result<Vec<(&str, Bytes)>, String> {
    use crate::custom::{next_field, Field};
    let mut out: Vec<(&str, Bytes)> = Vec::new();
    let mut buf = &raw[..];
    while !buf.is_empty() {
        let (1, Field::Len(mut entry)) = next_field(&mut buf).map_err(|e| e.to_string())? else { continue };
        let (mut name, mut value) = ("", &[][..]);
        while !entry.is_empty() {
            match next_field(&mut entry).map_err(|e| e.to_string())? {
                (1, Field::Len(n)) => name = std::str::from_utf8(n).map_err(|_| "a name is not UTF-8".to_string())?,
                (2, Field::Len(v)) => value = v,
                (1 | 2, _) => return Err("an entry field of the wrong wire type".into()),
                _ => {}
            }
        }
        out.push((name, raw.slice_ref(value)));
    }
    if !list {
        // Stable: among equal names the last received stays last, and is the one kept.
        out.sort_by(|a, b| a.0.cmp(b.0));
        out.reverse();
        out.dedup_by(|later, earlier| later.0 == earlier.0);
        out.reverse();
    }
    Ok(out)
}
