//! My agent: a starting point for an agent-host plugin.
//!
//! Task type `my_job`: "submits" a job that greets `name` after `custom.seconds` seconds, then
//! reports it until it is done. Replace the marked parts with calls to your system; keep the
//! shape: `create` starts the job and returns what `get` needs to find it again, `get` reports,
//! `delete` cancels.
//!
//! Flyte side (flytekit): a task whose `task_type` is `my_job`, with `custom` =
//! `{"seconds": 2}` and one input `name: str`; it returns `greeting: str`.

use std::time::{SystemTime, UNIX_EPOCH};

use agent_plugin_api::{tracing, AgentError, AsyncAgent, Context, Resource, TaskRequest};
use serde::{Deserialize, Serialize};

/// The plugin's configuration: the `[plugins.my_agent]` table of the host's config file.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How to greet.
    pub greeting: String,
    /// Where the job console lives (for the log link).
    pub console_url: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { greeting: "Hello".into(), console_url: "https://jobs.example.com".into() }
    }
}

/// What a task asks for, from `TaskTemplate.custom` (the flytekit task's `get_custom`).
#[derive(Debug, Deserialize)]
struct Custom {
    /// How long the job runs.
    #[serde(default)]
    seconds: u64,
}

/// What `create` hands Flyte to keep and `get`/`delete` receive back. Add fields with
/// `#[serde(default)]`; for any other change, bump `META_VERSION` and read the old format in
/// `upgrade_meta` (see the guide).
#[derive(Debug, Serialize, Deserialize)]
pub struct Job {
    /// The job's id in the external system. Here: the task attempt's idempotency key, so a
    /// repeated CreateTask finds the same job.
    pub id: String,
    /// Whom to greet.
    pub name: String,
    /// When the job is done (Unix seconds).
    pub done_at: u64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The agent: built once when the host loads the plugin.
#[derive(Debug)]
pub struct MyJobAgent {
    config: Config,
}

impl AsyncAgent for MyJobAgent {
    const NAME: &'static str = "My Job Agent";
    const TASK_TYPE: &'static str = "my_job";
    type Meta = Job;

    fn new(ctx: &Context) -> Result<Self, AgentError> {
        let config: Config = ctx.config()?;
        tracing::info!(greeting = %config.greeting, "my agent ready");
        Ok(Self { config })
    }

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<Job, AgentError> {
        let custom: Custom = task.custom()?;
        let name: String = task.input("name")?;
        // A credential for your system: Flyte 2 connection secrets, then $_FSEC_MY_AGENT_API_TOKEN,
        // then /etc/secrets/my_agent/api_token. Use `?` instead of `.ok()` when it is required.
        let token = ctx.secret("my_agent", "api_token").ok();
        let id = task.idempotency_key()?.unwrap_or_else(|| format!("local-{}", now()));
        // >>> Submit the job to your system here, passing `id` so that a repeated CreateTask
        // >>> for the same attempt finds the job it already started instead of a second one.
        tracing::info!(job = %id, authenticated = token.is_some(), "job submitted");
        Ok(Job { id, name, done_at: now() + custom.seconds })
    }

    async fn get(&self, _ctx: &Context, job: Job) -> Result<Resource, AgentError> {
        // >>> Ask your system about the job here. A job that failed: `AgentError::permanent`
        // >>> (or `retryable`); a failure to ask: any other error, and Flyte asks again.
        let link = format!("{}/jobs/{}", self.config.console_url, job.id);
        if now() < job.done_at {
            return Ok(Resource::running().with_message(format!("job {} running", job.id)).with_log_link("Job console", link));
        }
        let greeting = format!("{}, {}!", self.config.greeting, job.name);
        Ok(Resource::succeeded(Default::default())
            .with_output("greeting", greeting)
            .with_message(format!("job {} done", job.id))
            .with_log_link("Job console", link)
            .with_info("job_id", job.id))
    }

    async fn delete(&self, _ctx: &Context, job: Job) -> Result<(), AgentError> {
        // >>> Cancel the job here; succeed when it is already gone.
        tracing::info!(job = %job.id, "job cancelled");
        Ok(())
    }
}

agent_plugin_api::export_plugin!(name: "my_agent", agents: [async MyJobAgent]);
