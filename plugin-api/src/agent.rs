//! The two traits an agent implements.

use std::future::Future;

use serde::{de::DeserializeOwned, Serialize};

use crate::{flyte::core::ExecutionMetricResult, AgentError, Context, LogStream, LogsQuery, MetricsQuery, Resource, TaskRequest};

/// An asynchronous agent: starts a job on an external system, then reports on it.
///
/// FlytePropeller calls `create` once per attempt (maybe more than once for the same
/// `task_execution_id`: make it idempotent), then `get` until a terminal phase, and `delete`
/// only when the execution is aborted (it must succeed when the job is already gone). Between
/// calls the host keeps nothing: everything `get` needs goes into [`AsyncAgent::Meta`], which
/// Flyte stores and hands back. A newer plugin version must read what an older one wrote.
pub trait AsyncAgent: Sized + Send + Sync + 'static {
    /// Agent name shown by ListAgents (e.g. `"BigQuery Agent"`).
    const NAME: &'static str;
    /// The task type it serves (`TaskTemplate.type`, e.g. `"bigquery_query_job_task"`).
    const TASK_TYPE: &'static str;
    /// The task type version (`TaskTemplate.task_type_version`).
    const TASK_TYPE_VERSION: i32 = 0;

    /// What identifies a started job (serialized as JSON into Flyte's `resource_meta`).
    type Meta: Serialize + DeserializeOwned + Send + 'static;

    /// Builds the agent once when the plugin is loaded, from its configuration.
    fn new(ctx: &Context) -> Result<Self, AgentError>;

    /// Starts the job.
    fn create(&self, ctx: &Context, task: TaskRequest) -> impl Future<Output = Result<Self::Meta, AgentError>> + Send;

    /// Reports the job's state.
    fn get(&self, ctx: &Context, meta: Self::Meta) -> impl Future<Output = Result<Resource, AgentError>> + Send;

    /// Cancels the job; succeeds when it is already gone.
    fn delete(&self, ctx: &Context, meta: Self::Meta) -> impl Future<Output = Result<(), AgentError>> + Send;

    /// The job's metrics (`GetTaskMetrics`). Not implemented by default.
    fn metrics(
        &self,
        ctx: &Context,
        meta: Self::Meta,
        query: MetricsQuery,
    ) -> impl Future<Output = Result<Vec<ExecutionMetricResult>, AgentError>> + Send {
        let _ = (ctx, meta, query);
        async { Err(AgentError::unimplemented(format!("{} does not report metrics", Self::NAME))) }
    }

    /// The job's logs (`GetTaskLogs`). Not implemented by default.
    fn logs(&self, ctx: &Context, meta: Self::Meta, query: LogsQuery) -> impl Future<Output = Result<LogStream, AgentError>> + Send {
        let _ = (ctx, meta, query);
        async { Err(AgentError::unimplemented(format!("{} does not serve logs", Self::NAME))) }
    }
}

/// A synchronous agent: does its work within the call (an API call, an inference, a webhook)
/// and answers with a terminal phase and inline outputs.
///
/// Flyte 1 calls it through `ExecuteTaskSync`. CreateTask (Flyte 2, which has no sync service,
/// or a Flyte 1 client that treats the type as async) runs it too, and the result rides in the
/// resource meta for the following GetTask.
pub trait SyncAgent: Sized + Send + Sync + 'static {
    /// Agent name shown by ListAgents.
    const NAME: &'static str;
    /// The task type it serves.
    const TASK_TYPE: &'static str;
    /// The task type version.
    const TASK_TYPE_VERSION: i32 = 0;

    /// Builds the agent once when the plugin is loaded, from its configuration.
    fn new(ctx: &Context) -> Result<Self, AgentError>;

    /// Runs the task. Answer with a terminal phase: propeller does not poll a sync task.
    fn execute(&self, ctx: &Context, task: TaskRequest) -> impl Future<Output = Result<Resource, AgentError>> + Send;
}
