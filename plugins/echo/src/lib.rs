//! Echo: two example agents that answer with their inputs.
//!
//! * `Echo Sync Agent` (task type `echo_sync`): outputs = inputs, at once.
//! * `Echo Async Agent` (task type `echo_async`): `create` keeps the inputs in the resource
//!   meta, `get` answers SUCCEEDED with them as outputs, `delete` always succeeds; it also
//!   serves metrics (one result per query) and logs.
//!
//! Every answer names the plugin version in `custom_info.plugin_version`, which is how the
//! reload tests tell generations apart (they build a second echo with `AGENT_ECHO_VERSION`).
//! `custom` may also carry `echo_sleep_ms: <n>`: `create`/`execute` then take that long, to hold
//! a call in flight; the metrics query `echo.cancelled_calls` counts such sleeps the host cut
//! short. For tests of the host's error paths, `custom` may carry
//! `echo_error: "<message>"` (the agent fails) or `echo_panic: "<message>"` (the agent panics).

use agent_plugin_api::{
    flyte::core::{ExecutionMetricResult, Literal},
    log_line, AgentError, AsyncAgent, Context, Literals, LogStream, LogsQuery, MetricsQuery, Resource, SyncAgent, TaskRequest,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// The crate version, unless the build sets `AGENT_ECHO_VERSION` (the reload tests build a
/// second, different echo that way).
const VERSION: &str = match option_env!("AGENT_ECHO_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Sleeps cut short by a cancelled call (the host dropped it: client deadline, server cap,
/// shutdown). Reported by the metrics query `echo.cancelled_calls`, for the host's tests.
static CANCELLED: AtomicU64 = AtomicU64::new(0);

struct CountIfCancelled(bool);

impl Drop for CountIfCancelled {
    fn drop(&mut self) {
        if self.0 {
            CANCELLED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Test switches read from `TaskTemplate.custom`.
#[derive(Debug, Default, Deserialize)]
struct Switches {
    echo_error: Option<String>,
    echo_panic: Option<String>,
    echo_sleep_ms: Option<u64>,
}

async fn check_switches(task: &TaskRequest) -> Result<(), AgentError> {
    let s: Switches = task.custom()?;
    if let Some(ms) = s.echo_sleep_ms {
        let mut unfinished = CountIfCancelled(true);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        unfinished.0 = false;
    }
    if let Some(message) = s.echo_panic {
        panic!("{message}");
    }
    match s.echo_error {
        Some(message) => Err(AgentError::new(message)),
        None => Ok(()),
    }
}

fn echoed(outputs: Literals) -> Resource {
    Resource::succeeded(outputs).with_message(format!("echo {VERSION}")).with_info("plugin", "echo").with_info("plugin_version", VERSION)
}

/// Answers with its inputs, synchronously.
#[derive(Debug)]
pub struct EchoSync;

impl SyncAgent for EchoSync {
    const NAME: &'static str = "Echo Sync Agent";
    const TASK_TYPE: &'static str = "echo_sync";

    fn new(_ctx: &Context) -> Result<Self, AgentError> {
        Ok(Self)
    }

    async fn execute(&self, _ctx: &Context, task: TaskRequest) -> Result<Resource, AgentError> {
        check_switches(&task).await?;
        Ok(echoed(task.inputs))
    }
}

/// What `create` hands Flyte to keep: the inputs, as encoded literals by name.
#[derive(Debug, Serialize, Deserialize)]
pub struct EchoMeta {
    /// The plugin version that created the job.
    pub created_by: String,
    /// Inputs, each literal protobuf-encoded.
    pub inputs: Vec<(String, Vec<u8>)>,
}

/// Answers with its inputs, through create/get.
#[derive(Debug)]
pub struct EchoAsync;

impl AsyncAgent for EchoAsync {
    const NAME: &'static str = "Echo Async Agent";
    const TASK_TYPE: &'static str = "echo_async";
    type Meta = EchoMeta;

    fn new(_ctx: &Context) -> Result<Self, AgentError> {
        Ok(Self)
    }

    async fn create(&self, _ctx: &Context, task: TaskRequest) -> Result<EchoMeta, AgentError> {
        check_switches(&task).await?;
        let inputs = task.inputs.iter().map(|(n, l)| (n.to_string(), agent_plugin_api::encode_message(l))).collect();
        Ok(EchoMeta { created_by: VERSION.into(), inputs })
    }

    async fn get(&self, _ctx: &Context, meta: EchoMeta) -> Result<Resource, AgentError> {
        let mut outputs = Literals::new();
        for (name, bytes) in meta.inputs {
            outputs.insert(name, agent_plugin_api::decode_message::<Literal>(&bytes)?);
        }
        Ok(echoed(outputs).with_info("created_by", meta.created_by))
    }

    async fn delete(&self, _ctx: &Context, _meta: EchoMeta) -> Result<(), AgentError> {
        Ok(())
    }

    async fn metrics(&self, _ctx: &Context, _meta: EchoMeta, query: MetricsQuery) -> Result<Vec<ExecutionMetricResult>, AgentError> {
        let data = |metric: &str| {
            (metric == "echo.cancelled_calls").then(|| {
                let n = CANCELLED.load(Ordering::Relaxed) as f64;
                agent_plugin_api::json::json_to_struct(&serde_json::json!({ "value": n }))
            })
        };
        Ok(query.queries.into_iter().map(|metric| ExecutionMetricResult { data: data(&metric), metric }).collect())
    }

    async fn logs(&self, _ctx: &Context, meta: EchoMeta, _query: LogsQuery) -> Result<LogStream, AgentError> {
        let mut lines = vec![log_line(format!("echo {VERSION}: {} inputs", meta.inputs.len()))];
        lines.extend(meta.inputs.iter().map(|(name, _)| log_line(format!("echo {VERSION}: input {name}"))));
        Ok(LogStream::from_lines(lines))
    }
}

agent_plugin_api::export_plugin!(name: "echo", version: VERSION, agents: [sync EchoSync, async EchoAsync]);
