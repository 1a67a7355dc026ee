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
//! With `echo_report_thread` (any value), `execute` names the thread its last step ran on in
//! `custom_info.thread` (for the host's tests of where calls run).
//! `custom` may also carry `echo_log_every_ms: <n>`: the job's GetTaskLogs stream then stays
//! open like a running task's log tail, adding one line every n ms until the caller goes away
//! (for tests of streams held open across reloads and shutdown).

use agent_plugin_api::{
    flyte::core::ExecutionMetricResult, log_line, AgentError, AsyncAgent, Base64Bytes, Context, Literals, LogStream, LogsQuery,
    MetricsQuery, Resource, SyncAgent, TaskRequest,
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
    echo_log_every_ms: Option<u64>,
    echo_report_thread: Option<serde_json::Value>,
}

async fn check_switches(task: &TaskRequest) -> Result<Switches, AgentError> {
    let s: Switches = task.custom()?;
    if let Some(ms) = s.echo_sleep_ms {
        let mut unfinished = CountIfCancelled(true);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        unfinished.0 = false;
    }
    if let Some(message) = &s.echo_panic {
        panic!("{message}");
    }
    match &s.echo_error {
        Some(message) => Err(AgentError::new(message.clone())),
        None => Ok(s),
    }
}

/// Every answer's message, made once: a fixed message costs a call nothing.
static MESSAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("echo {VERSION}"));

fn echoed(outputs: Literals) -> Resource {
    Resource::succeeded(outputs).with_message(MESSAGE.as_str()).with_info("plugin", "echo").with_info("plugin_version", VERSION)
}

/// Answers with its inputs, synchronously.
#[derive(Debug)]
pub struct EchoSync;

impl SyncAgent for EchoSync {
    const NAME: &'static str = "Echo Sync Agent";
    const TASK_TYPE: &'static str = "echo_sync";
    // It only awaits (its test sleep is tokio's).
    const NONBLOCKING: bool = true;

    fn new(_ctx: &Context) -> Result<Self, AgentError> {
        Ok(Self)
    }

    async fn execute(&self, _ctx: &Context, task: TaskRequest) -> Result<Resource, AgentError> {
        let switches = check_switches(&task).await?;
        let resource = echoed(task.into_inputs()?);
        Ok(match switches.echo_report_thread {
            // Where this step of the call ran: a host thread when the host polls it inline.
            Some(_) => resource.with_info("thread", std::thread::current().name().unwrap_or("unnamed")),
            None => resource,
        })
    }
}

/// What `create` hands Flyte to keep: the inputs, as encoded literals by name.
#[derive(Debug, Serialize, Deserialize)]
pub struct EchoMeta {
    /// The plugin version that created the job.
    pub created_by: String,
    /// Inputs, each literal protobuf-encoded (base64 in the JSON).
    pub inputs: Vec<(String, Base64Bytes)>,
    /// From the `echo_log_every_ms` switch: the log stream stays open, one line this often.
    /// Absent from the stored metadata unless set, so older metadata reads the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_every_ms: Option<u64>,
}

/// Format version 1 of [`EchoMeta`] (before the base64 change): the same, with each literal's
/// bytes as a JSON array of numbers. Still read, so jobs created before an upgrade finish after
/// it.
#[derive(Debug, Deserialize)]
struct EchoMetaV1 {
    created_by: String,
    inputs: Vec<(String, Vec<u8>)>,
    #[serde(default)]
    log_every_ms: Option<u64>,
}

/// Answers with its inputs, through create/get.
#[derive(Debug)]
pub struct EchoAsync;

impl AsyncAgent for EchoAsync {
    const NAME: &'static str = "Echo Async Agent";
    const TASK_TYPE: &'static str = "echo_async";
    const NONBLOCKING: bool = true;
    type Meta = EchoMeta;
    const META_VERSION: u32 = 2;

    fn upgrade_meta(version: u32, meta: serde_json::Value) -> Result<EchoMeta, AgentError> {
        let old: EchoMetaV1 = serde_json::from_value(meta)
            .map_err(|e| AgentError::precondition(format!("echo meta of format version {version} does not read: {e}")))?;
        let inputs = old.inputs.into_iter().map(|(n, b)| (n, Base64Bytes::from(b))).collect();
        Ok(EchoMeta { created_by: old.created_by, inputs, log_every_ms: old.log_every_ms })
    }

    fn new(_ctx: &Context) -> Result<Self, AgentError> {
        Ok(Self)
    }

    async fn create(&self, _ctx: &Context, task: TaskRequest) -> Result<EchoMeta, AgentError> {
        let switches = check_switches(&task).await?;
        // Kept as they came (slices of the request), without decoding or copying them; `get`
        // answers them as they are.
        let inputs = task.encoded_inputs()?.into_iter().map(|(n, l)| (n.to_string(), Base64Bytes(l))).collect();
        Ok(EchoMeta { created_by: VERSION.into(), inputs, log_every_ms: switches.echo_log_every_ms })
    }

    async fn get(&self, _ctx: &Context, meta: EchoMeta) -> Result<Resource, AgentError> {
        let mut outputs = Literals::new();
        for (name, bytes) in meta.inputs {
            outputs.insert_encoded(name, bytes.0)?;
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
        let Some(every) = meta.log_every_ms else { return Ok(LogStream::from_lines(lines)) };
        // A running task's tail: the lines so far, then one more every `every` ms, until the
        // host drops the stream (the caller went away, a deadline, shutdown) and a send fails.
        let (tx, stream) = LogStream::channel(4);
        tokio::spawn(async move {
            let mut batch = lines;
            for n in 1u64.. {
                if tx.send(Ok(batch)).await.is_err() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(every.max(1))).await;
                batch = vec![log_line(format!("echo {VERSION}: tick {n}"))];
            }
        });
        Ok(stream)
    }
}

agent_plugin_api::export_plugin!(name: "echo", version: VERSION, agents: [sync EchoSync, async EchoAsync]);
