//! Flyte's agent/connector wire types and agent-host's plugin messages.
//!
//! Generated at build time from the project's own `.proto` files in this directory
//! (`flyteidl/` for Flyte 1, `flyteidl2/` for Flyte 2, `agenthost/` for the plugin ABI payloads)
//! with protox and prost. Only messages are generated: the host serves the gRPC services
//! with its own framing (it hands plugins the request bytes it received), so no service stubs
//! are needed here.
//!
//! Module paths follow the protobuf packages: `flyteidl::admin::CreateTaskRequest`,
//! `flyteidl2::connector::GetTaskRequest`, `agenthost::plugin::v1::PluginDescriptor`.

#![allow(missing_docs, clippy::all, rust_2018_idioms)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

/// The encoded `FileDescriptorSet` of every file compiled here, for server reflection and
/// for tests that compare our declarations with upstream's.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

/// The protobuf well-known types the generated messages use (`Struct`, `Timestamp`,
/// `Duration`…), re-exported so that users of these messages can name them.
pub use prost_types;

pub mod check;
pub mod walk;
pub mod wire;
