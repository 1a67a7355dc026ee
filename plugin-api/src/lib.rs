//! Write Flyte agents ("connectors") as native plugins for agent-host.
//!
//! The whole API on one page:
//!
//! | item | what it is |
//! |---|---|
//! | [`AsyncAgent`] | starts a job elsewhere (`create`), reports on it (`get`), cancels it (`delete`); optionally `metrics`, `logs` |
//! | [`SyncAgent`] | does the work within the call (`execute`) and answers at once |
//! | [`export_plugin!`] | the library's entry point: `export_plugin!(name: "my-plugin", agents: [async A, sync B])` |
//! | [`Context`] | the plugin's configuration ([`Context::config`]), secrets ([`Context::secret`]), the caller's protocol |
//! | [`TaskRequest`] | what to run: `custom` ([`TaskRequest::custom`]), inputs ([`TaskRequest::input`]), output prefix, execution metadata |
//! | [`Resource`], [`Phase`] | the answer: phase, message, log links, custom info, outputs ([`Resource::with_output`]) |
//! | [`Literals`], [`value`] | named Flyte values, read into and built from Rust values (numbers, text, times, lists, maps, files, datasets, msgpack, structs) |
//! | [`AgentError`] | a failed job (`permanent`, `retryable`: a `FAILED` / `RETRYABLE_FAILED` phase) or a failed call (an error status) |
//! | [`testing`] | runs an agent in-process the way Flyte does, for the agent's own tests |
//! | [`flyte`] | the typed Flyte messages underneath, for anything the helpers do not cover |
//!
//! One agent serves Flyte 1 (FlytePropeller's `AsyncAgentService`, `SyncAgentService`) and
//! Flyte 2 (`AsyncConnectorService`) with no code for either: the SDK reads both protocols into a
//! [`TaskRequest`] and writes the [`Resource`] back in the caller's. `tracing` events (re-exported
//! as [`tracing`]) land in the host's log with the plugin's name and version. The guide,
//! `plugin-api/GUIDE.md`, goes from an empty folder to a plugin served by a running host.
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
//!         let name: String = task.input("name")?;
//!         Ok(Resource::succeeded(Default::default()).with_output("greeting", format!("hello, {name}")))
//!     }
//! }
//!
//! agent_plugin_api::export_plugin!(name: "hello", agents: [sync Hello]);
//! # fn main() {
//! #     use agent_plugin_api::testing::Harness;
//! #     let done = Harness::for_sync::<Hello>(Context::for_tests(serde_json::json!({}))).unwrap()
//! #         .run(TaskRequest::new("hello").with_input("name", "Flyte")).unwrap();
//! #     assert_eq!(done.outputs.unwrap().read::<String>("greeting").unwrap(), "hello, Flyte");
//! # }
//! ```

#![deny(missing_docs)]

mod agent;
mod context;
mod custom;
mod dispatch;
mod encode;
mod error;
mod export;
mod ffi;
pub mod json;
mod log;
mod meta;
#[cfg(test)]
mod mutate;
mod task;
pub mod testing;
pub mod value;
mod wire;

pub use agent::{AsyncAgent, SyncAgent};
pub use context::Context;
pub use error::{AgentError, ErrorKind};
pub use meta::Base64Bytes;

/// The shared byte buffer of encoded literals ([`TaskRequest::encoded_inputs`],
/// [`Literals::insert_encoded`]) and of [`Base64Bytes`], re-exported so that plugins can name it
/// without another dependency.
pub use bytes::Bytes;
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

/// `serde_json`, re-exported: configuration, `custom`, `custom_info` and generic structs are
/// JSON values.
pub use serde_json;

/// What `export_plugin!` expands to. Not an API: may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::ffi::{async_agent, call, describe, init, open_stream, runtime_stats, shutdown, sync_agent, AgentSpec, PluginSpec};
    pub use agent_plugin_abi as abi;

    /// Leaks the root module into the prefix form the host reads.
    pub fn root_module(module: abi::PluginMod) -> abi::PluginModRef {
        use abi::__export::PrefixTypeTrait;
        module.leak_into_prefix()
    }
}
