//! The one error type agents return.

use std::fmt;

/// Why an agent call failed.
///
/// An error is a failed RPC: Flyte treats a failed CreateTask as a failed attempt (it burns a
/// retry) and counts failed GetTasks (more than 5 fail the task). When the *job* failed but the
/// agent did its work, answer with a [`crate::Resource`] in a failed phase instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentError {
    kind: ErrorKind,
    message: String,
}

/// The kinds of [`AgentError`], each with its gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The agent failed: `INTERNAL`.
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
    /// An internal error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Internal, message: message.into() }
    }

    /// Invalid input (`INVALID_ARGUMENT`).
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
