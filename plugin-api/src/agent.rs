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
/// Flyte stores and hands back. A newer plugin version must read what an older one wrote: see
/// [`AsyncAgent::META_VERSION`].
///
/// Return [`AgentError::permanent`] or [`AgentError::retryable`] when the *job* failed (from
/// `create` too): Flyte sees a `FAILED` or `RETRYABLE_FAILED` phase. Any other error fails the
/// call itself (see [`AgentError`]).
///
/// ```
/// use agent_plugin_api::{AgentError, AsyncAgent, Context, Literals, Resource, TaskRequest};
/// use serde::{Deserialize, Serialize};
///
/// struct Sleeper;
///
/// #[derive(Serialize, Deserialize)]
/// struct Job {
///     until_unix_s: u64,
/// }
///
/// fn now() -> u64 {
///     std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
/// }
///
/// impl AsyncAgent for Sleeper {
///     const NAME: &'static str = "Sleeper";
///     const TASK_TYPE: &'static str = "sleeper";
///     type Meta = Job;
///
///     fn new(_ctx: &Context) -> Result<Self, AgentError> {
///         Ok(Sleeper)
///     }
///
///     async fn create(&self, _ctx: &Context, task: TaskRequest) -> Result<Job, AgentError> {
///         let seconds: u64 = task.input("seconds")?;
///         Ok(Job { until_unix_s: now() + seconds })
///     }
///
///     async fn get(&self, _ctx: &Context, job: Job) -> Result<Resource, AgentError> {
///         Ok(if now() >= job.until_unix_s { Resource::succeeded(Literals::new()) } else { Resource::running() })
///     }
///
///     async fn delete(&self, _ctx: &Context, _job: Job) -> Result<(), AgentError> {
///         Ok(())
///     }
/// }
/// ```
pub trait AsyncAgent: Sized + Send + Sync + 'static {
    /// Agent name shown by ListAgents (e.g. `"BigQuery Agent"`).
    const NAME: &'static str;
    /// The task type it serves (`TaskTemplate.type`, e.g. `"bigquery_query_job_task"`).
    const TASK_TYPE: &'static str;
    /// The task type version (`TaskTemplate.task_type_version`).
    const TASK_TYPE_VERSION: i32 = 0;

    /// Whether every call of this agent awaits rather than blocks its thread: no blocking I/O,
    /// no `std::thread::sleep`, no long computation between two `.await`s.
    ///
    /// When `true`, the host runs the first step of each call on its own request thread, up to
    /// the call's first `.await` that has to wait, and only then moves the call to the plugin's
    /// runtime. A call that finishes in that first step (a quick answer, a cached status) costs
    /// no thread switch at all, which roughly doubles what one core serves for such calls. A
    /// call that blocks would hold a host request thread, so leave it `false` when in doubt.
    /// Operators can turn it off for every plugin with `loader.inline_calls = false`.
    const NONBLOCKING: bool = false;

    /// What identifies a started job (serialized as JSON into Flyte's `resource_meta`).
    type Meta: Serialize + DeserializeOwned + Send + 'static;

    /// The format version of [`AsyncAgent::Meta`], stored with it.
    ///
    /// Adding a field with `#[serde(default)]` needs no new version: older metadata still
    /// reads. Bump it when older metadata no longer deserializes as `Meta` (a renamed or
    /// retyped field), and read the older formats in [`AsyncAgent::upgrade_meta`]. Metadata
    /// of a *newer* version (a rollback) is refused with `FAILED_PRECONDITION`.
    const META_VERSION: u32 = 1;

    /// Reads metadata written with an older [`AsyncAgent::META_VERSION`] (`version` 0: written
    /// before the SDK versioned metadata). By default, reads it as the current `Meta`.
    ///
    /// ```
    /// # use agent_plugin_api::{AgentError, AsyncAgent, Context, Resource, TaskRequest};
    /// # use serde::{Deserialize, Serialize};
    /// # struct Query;
    /// /// Version 1 stored `{"id": "…"}`; version 2 keeps the region too.
    /// #[derive(Serialize, Deserialize)]
    /// struct Job {
    ///     job_id: String,
    ///     region: String,
    /// }
    ///
    /// impl AsyncAgent for Query {
    ///     # const NAME: &'static str = "Query";
    ///     # const TASK_TYPE: &'static str = "query";
    ///     type Meta = Job;
    ///     const META_VERSION: u32 = 2;
    ///
    ///     fn upgrade_meta(version: u32, meta: serde_json::Value) -> Result<Job, AgentError> {
    ///         match version {
    ///             1 => Ok(Job { job_id: meta["id"].as_str().unwrap_or_default().into(), region: "us-east-1".into() }),
    ///             _ => Err(AgentError::precondition(format!("no upgrade from metadata version {version}"))),
    ///         }
    ///     }
    ///     # fn new(_: &Context) -> Result<Self, AgentError> { Ok(Query) }
    ///     # async fn create(&self, _: &Context, _: TaskRequest) -> Result<Job, AgentError> { unimplemented!() }
    ///     # async fn get(&self, _: &Context, _: Job) -> Result<Resource, AgentError> { unimplemented!() }
    ///     # async fn delete(&self, _: &Context, _: Job) -> Result<(), AgentError> { Ok(()) }
    /// }
    /// ```
    fn upgrade_meta(version: u32, meta: serde_json::Value) -> Result<Self::Meta, AgentError> {
        serde_json::from_value(meta).map_err(|e| {
            AgentError::precondition(format!("{}: metadata version {version} does not read as the current one: {e}", Self::NAME))
        })
    }

    /// Builds the agent once when the plugin is loaded, from its configuration.
    fn new(ctx: &Context) -> Result<Self, AgentError>;

    /// Starts the job. Make it idempotent: Flyte may repeat it for the same
    /// [`TaskRequest::idempotency_key`] (a new attempt has a new key).
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
///
/// Answer with a terminal phase (`SUCCEEDED`, `FAILED`, `RETRYABLE_FAILED`): propeller does not
/// poll a sync task, and the SDK refuses any other phase with an `INTERNAL` error.
/// [`AgentError::permanent`] and [`AgentError::retryable`] become the `FAILED` and
/// `RETRYABLE_FAILED` answers.
pub trait SyncAgent: Sized + Send + Sync + 'static {
    /// Agent name shown by ListAgents.
    const NAME: &'static str;
    /// The task type it serves.
    const TASK_TYPE: &'static str;
    /// The task type version.
    const TASK_TYPE_VERSION: i32 = 0;

    /// Whether every call of this agent awaits rather than blocks its thread: no blocking I/O,
    /// no `std::thread::sleep`, no long computation between two `.await`s.
    ///
    /// When `true`, the host runs the first step of each call on its own request thread, up to
    /// the call's first `.await` that has to wait, and only then moves the call to the plugin's
    /// runtime. A call that finishes in that first step (a quick answer, a computed answer) costs
    /// no thread switch at all, which roughly doubles what one core serves for such calls. A
    /// call that blocks would hold a host request thread, so leave it `false` when in doubt.
    /// Operators can turn it off for every plugin with `loader.inline_calls = false`.
    const NONBLOCKING: bool = false;

    /// Builds the agent once when the plugin is loaded, from its configuration.
    fn new(ctx: &Context) -> Result<Self, AgentError>;

    /// Runs the task and answers with a terminal phase.
    fn execute(&self, ctx: &Context, task: TaskRequest) -> impl Future<Output = Result<Resource, AgentError>> + Send;
}
