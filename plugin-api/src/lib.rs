//! Write Flyte agents ("connectors") as native plugins for agent-host.
//!
//! An agent is one trait implementation; a plugin is a `cdylib` crate that exports one or more
//! agents with one macro:
//!
//! * [`AsyncAgent`]: `create` a job on an external system, `get` its state, `delete` it
//!   (optionally `metrics` and `logs`), keyed by your own serializable resource metadata;
//! * [`SyncAgent`]: `execute` a call and answer at once;
//! * [`export_plugin!`]: the library's entry point.
//!
//! The same agent serves Flyte 1 (FlytePropeller's `AsyncAgentService`, `SyncAgentService`) and
//! Flyte 2 (`AsyncConnectorService`) requests: the SDK reads both into a [`TaskRequest`] and
//! writes a [`Resource`] back in the caller's protocol. The [`Context`] carries the plugin's
//! configuration and secrets; `tracing` events land in the host's log with the plugin's name.
//!
//! ```
//! use agent_plugin_api::{AgentError, Context, Resource, SyncAgent, TaskRequest};
//!
//! struct Hello;
//!
//! impl SyncAgent for Hello {
//!     const NAME: &'static str = "Hello Agent";
//!     const TASK_TYPE: &'static str = "hello";
//!
//!     fn new(_ctx: &Context) -> Result<Self, AgentError> {
//!         Ok(Hello)
//!     }
//!
//!     async fn execute(&self, _ctx: &Context, task: TaskRequest) -> Result<Resource, AgentError> {
//!         Ok(Resource::succeeded(task.inputs).with_message("hello"))
//!     }
//! }
//!
//! agent_plugin_api::export_plugin!(name: "hello", agents: [sync Hello]);
//! # fn main() {}
//! ```

#![deny(missing_docs)]

mod agent;
mod context;
mod dispatch;
mod error;
mod export;
mod ffi;
pub mod json;
mod log;
mod task;
mod wire;

pub use agent::{AsyncAgent, SyncAgent};
pub use context::Context;
pub use error::{AgentError, ErrorKind};
pub use task::{log_line, Literals, LogStream, LogsQuery, MetricsQuery, Protocol, Resource, TaskRequest};

/// The typed Flyte messages (Flyte 1 shapes, which also read Flyte 2 requests).
pub mod flyte {
    pub use agent_proto::flyteidl::{admin, core};
}

/// The execution phase of a task: `Running`, `Succeeded`, `Failed`, …
pub use agent_proto::flyteidl::core::task_execution::Phase;

/// Encodes a Flyte message (or any protobuf message of [`flyte`]) to bytes.
pub fn encode_message<M: prost::Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// Decodes a Flyte message from bytes.
pub fn decode_message<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, AgentError> {
    M::decode(bytes).map_err(|e| AgentError::invalid(format!("message does not decode: {e}")))
}

/// `tracing`, re-exported so that plugins log without naming another dependency.
pub use tracing;

/// What `export_plugin!` expands to. Not an API: may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::ffi::{async_agent, call, describe, init, open_stream, shutdown, sync_agent, AgentSpec, PluginSpec};
    pub use agent_plugin_abi as abi;

    /// Leaks the root module into the prefix form the host reads.
    pub fn root_module(module: abi::PluginMod) -> abi::PluginModRef {
        use abi::__export::PrefixTypeTrait;
        module.leak_into_prefix()
    }
}
