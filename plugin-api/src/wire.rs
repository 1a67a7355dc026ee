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

/// A map entry of a `LiteralMap` or a Flyte 2 `NamedLiteral`: both are `{ string = 1;
/// Literal = 2; }`, here with the literal kept encoded.
#[derive(Clone, PartialEq, Message)]
struct EncodedLiteral {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// A `LiteralMap` or Flyte 2 `Inputs`: both keep their entries in field 1.
#[derive(Clone, PartialEq, Message)]
struct EncodedLiterals {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<EncodedLiteral>,
}

/// The literals of an encoded `LiteralMap` (`list: false`; sorted by name, the last of a
/// repeated name kept, as a decoded map is) or Flyte 2 `Inputs` (`list: true`; in order), each
/// literal still encoded.
pub(crate) fn encoded_literals(raw: &Bytes, list: bool) -> Result<Vec<(String, Bytes)>, String> {
    let entries = EncodedLiterals::decode(raw.clone()).map_err(|e| e.to_string())?.entries;
    let mut out: Vec<(String, Bytes)> = entries.into_iter().map(|e| (e.name, e.value)).collect();
    if !list {
        // Stable: among equal names the last received stays last, and is the one kept.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.reverse();
        out.dedup_by(|later, earlier| later.0 == earlier.0);
        out.reverse();
    }
    Ok(out)
}
