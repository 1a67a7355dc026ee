//! The one error type agents return, and what Flyte makes of each kind.

use std::fmt;

/// Why an agent call failed.
///
/// Two families, told apart by [`ErrorKind`]:
///
/// * **The job failed** ([`AgentError::permanent`], [`AgentError::retryable`]): the agent did
///   its work and the answer is "this task failed". From `create`, `get` or `execute`, the SDK
///   turns it into a *successful* answer with a [`crate::Resource`] in phase `FAILED`
///   (permanent: Flyte does not retry the attempt) or `RETRYABLE_FAILED` (Flyte retries while
///   the task has retries left). A failure in `create` is kept in the resource meta and
///   reported by the first `get`, so Flyte sees it exactly like a failure found later.
/// * **The call failed** (every other kind): the RPC ends with a gRPC error status. Flyte 1
///   counts a failed CreateTask as a failed attempt (it burns a retry) and fails the task after
///   more than 5 failed GetTasks; a failed DeleteTask fails the abort, which propeller repeats.
///
/// Which to use:
///
/// | situation | error |
/// |---|---|
/// | the external job reports failure; bad inputs or `custom` (see [`crate::TaskRequest::input`]) | [`AgentError::permanent`] |
/// | the external system refused for now (quota, 429, 503), worth a new attempt | [`AgentError::retryable`] |
/// | a glitch while asking about the job (timeout, connection reset): propeller asks again | [`AgentError::new`] (or `?` on any error) |
/// | the request cannot be read | [`AgentError::invalid`] |
/// | a missing secret, a resource meta this version cannot read | [`AgentError::precondition`] |
///
/// ```
/// use agent_plugin_api::{AgentError, ErrorKind};
///
/// let e = AgentError::retryable("the warehouse is busy");
/// assert_eq!(e.kind(), ErrorKind::Retryable);
/// assert!(e.is_job_failure());
/// assert!(!AgentError::new("connection reset").is_job_failure());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentError {
    kind: ErrorKind,
    message: String,
}

/// The kinds of [`AgentError`]: two job failures, each reported as a phase, and the call
/// failures, each with its gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The job failed for good: phase `FAILED`.
    Permanent,
    /// The job failed and another attempt may succeed: phase `RETRYABLE_FAILED`.
    Retryable,
    /// The call failed: `INTERNAL`.
    Internal,
    /// The request does not make sense for this agent: `INVALID_ARGUMENT`.
    InvalidInput,
    /// A precondition does not hold, e.g. a resource meta this version cannot read:
    /// `FAILED_PRECONDITION`.
    Precondition,
    /// The agent does not implement the method: `UNIMPLEMENTED`.
    Unimplemented,
}

impl AgentError {
    /// The call failed (`INTERNAL`); Flyte calls again (GetTask) or makes a new attempt
    /// (CreateTask).
    pub fn new(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Internal, message: message.into() }
    }

    /// The job failed for good: reported as phase `FAILED`, no retry.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Permanent, message: message.into() }
    }

    /// The job failed and is worth another attempt: reported as phase `RETRYABLE_FAILED`.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Retryable, message: message.into() }
    }

    /// Invalid request (`INVALID_ARGUMENT`).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::InvalidInput, message: message.into() }
    }

    /// A failed precondition (`FAILED_PRECONDITION`).
    pub fn precondition(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Precondition, message: message.into() }
    }

    /// Not implemented (`UNIMPLEMENTED`).
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Unimplemented, message: message.into() }
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the job failed ([`ErrorKind::Permanent`] or [`ErrorKind::Retryable`]) rather
    /// than the call.
    pub fn is_job_failure(&self) -> bool {
        matches!(self.kind, ErrorKind::Permanent | ErrorKind::Retryable)
    }

    /// The same error with `context: ` before its message.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self { kind: self.kind, message: format!("{context}: {}", self.message) }
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AgentError {}

impl From<String> for AgentError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for AgentError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<std::io::Error> for AgentError {
    fn from(e: std::io::Error) -> Self {
        Self::new(e.to_string())
    }
}

impl From<serde_json::Error> for AgentError {
    fn from(e: serde_json::Error) -> Self {
        Self::new(e.to_string())
    }
}
