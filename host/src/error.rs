//! The RPC error type and its one mapping to gRPC statuses.

use agent_plugin_abi as abi;
use tonic::{Code, Status};

/// A plugin's error, with what it was doing.
#[derive(Debug)]
pub struct PluginFailure {
    /// Plugin name.
    pub plugin: String,
    /// Plugin version.
    pub version: String,
    /// The operation, as flytekit names it in its messages (create, get, delete, do…).
    pub operation: &'static str,
    /// The task type of the call.
    pub task_type: String,
    /// The plugin's error.
    pub error: abi::PluginError,
}

/// Why an RPC failed. Every failure the host returns goes through [`RpcError::into_status`].
#[derive(Debug)]
pub enum RpcError {
    /// No agent serves this task type (flytekit's exact wording, which users grep for).
    UnknownTaskType(String),
    /// No agent has this name (GetAgent / GetConnector).
    UnknownAgent(String),
    /// The request does not decode, or does not fit the RPC.
    InvalidRequest(String),
    /// The plugin answered with an error.
    Plugin(Box<PluginFailure>),
    /// The host is shutting down.
    Draining,
    /// The agent is at its concurrency limit.
    Overloaded(String),
}

impl RpcError {
    /// The gRPC status of this error.
    pub fn into_status(self) -> Status {
        match self {
            RpcError::UnknownTaskType(t) => Status::not_found(format!("Cannot find connector for task type: {t}.")),
            RpcError::UnknownAgent(n) => Status::not_found(format!("Cannot find connector for name: {n}.")),
            RpcError::InvalidRequest(m) => Status::invalid_argument(m),
            RpcError::Draining => Status::unavailable("agent-host is shutting down"),
            RpcError::Overloaded(m) => Status::resource_exhausted(m),
            RpcError::Plugin(f) => {
                let PluginFailure { plugin, version, operation, task_type, error } = *f;
                let code = match error.code {
                    abi::ERR_INVALID => Code::InvalidArgument,
                    abi::ERR_UNIMPLEMENTED => Code::Unimplemented,
                    abi::ERR_NOT_FOUND => Code::NotFound,
                    abi::ERR_PRECONDITION => Code::FailedPrecondition,
                    _ => Code::Internal,
                };
                Status::new(code, format!("plugin {plugin} {version}: failed to {operation} {task_type} task: {}", error.message))
            }
        }
    }

    /// The `error_code` label of flytekit's failure counter ("404" for unknown types, else
    /// "500"), kept for dashboards.
    pub fn metric_code(&self) -> &'static str {
        match self {
            RpcError::UnknownTaskType(_) | RpcError::UnknownAgent(_) => "404",
            RpcError::InvalidRequest(_) => "400",
            RpcError::Overloaded(_) => "429",
            _ => "500",
        }
    }
}

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Self {
        e.into_status()
    }
}
