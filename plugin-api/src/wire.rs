//! Protocol-neutral views of Flyte 1 and Flyte 2 request and response messages.
//!
//! Flyte 2's `flyteidl2.core` types are a wire-compatible superset of Flyte 1's `flyteidl.core`
//! (same field numbers and types; `VariableMap`'s map is encoded exactly like v2's repeated
//! key/value entries). So one set of Rust types, Flyte 1's, reads both protocols: these structs
//! declare the fields where the two request messages differ (v2 `Inputs` is an ordered list of
//! named literals, v2 adds `connection`) and decode straight from the received bytes, without a
//! second parse. Unknown fields (newer than our `.proto` files) are skipped.

use std::collections::BTreeMap;

use agent_proto::flyteidl::{admin, core};
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

/// Flyte 1 `CreateTaskRequest` and Flyte 2 `CreateTaskRequest` share fields 2–4; field 1 is a
/// map in v1 and a list in v2 (decoded by the two `inputs` views below); 5 exists only in v2.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct CreateV1 {
    #[prost(message, optional, tag = "1")]
    pub inputs: Option<core::LiteralMap>,
    #[prost(message, optional, tag = "2")]
    pub template: Option<core::TaskTemplate>,
    #[prost(string, tag = "3")]
    pub output_prefix: String,
    #[prost(message, optional, tag = "4")]
    pub task_execution_metadata: Option<admin::TaskExecutionMetadata>,
}

/// Flyte 2 `CreateTaskRequest`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct CreateV2 {
    #[prost(message, optional, tag = "1")]
    pub inputs: Option<NamedLiterals>,
    #[prost(message, optional, tag = "2")]
    pub template: Option<core::TaskTemplate>,
    #[prost(string, tag = "3")]
    pub output_prefix: String,
    #[prost(message, optional, tag = "4")]
    pub task_execution_metadata: Option<admin::TaskExecutionMetadata>,
    #[prost(message, optional, tag = "5")]
    pub connection: Option<Connection>,
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

/// agent-host's `ExecuteRequest`: the header and inputs of Flyte 1's ExecuteTaskSync stream.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Execute {
    #[prost(message, optional, tag = "1")]
    pub header: Option<admin::CreateRequestHeader>,
    #[prost(message, optional, tag = "2")]
    pub inputs: Option<core::LiteralMap>,
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
