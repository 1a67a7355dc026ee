//! The REST job agent (task type `rest_job`): the BigQuery / Databricks pattern for any job
//! service with an HTTP API.
//!
//! * `create` sends the `submit` request (templated from the task's inputs), reads the job id from
//!   the answer and keeps it, with the resolved `status` and `cancel` requests, in the resource
//!   meta. It is idempotent per attempt: a repeated CreateTask for the same `task_execution_id`
//!   finds the job again (an in-process record, then the optional `lookup` request) instead of
//!   submitting a second one, and the submit request carries the attempt's key in an
//!   `Idempotency-Key` header for services that deduplicate themselves.
//! * `get` sends the `status` request and maps the remote state to a phase (configurable lists,
//!   case-insensitive; anything unlisted is `RUNNING`), with the job's message, log links from
//!   templates and, on success, outputs from the answer.
//! * `delete` sends the `cancel` request; it succeeds when the job is already gone (404, 409,
//!   410 by default).
//!
//! Every request key may come from the plugin configuration (defaults for all tasks) or from
//! the task's `custom` (wins); the API token (from the secrets) and the base URL it is sent to
//! come from the configuration only. See the crate's README.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use agent_plugin_api::{tracing, AgentError, AsyncAgent, Context, Literals, Resource, TaskRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[path = "../../webhook/src/template.rs"]
#[allow(dead_code)] // The webhook uses parts this agent does not.
mod template;

use template::{py_str, Scope};

/// One HTTP request, as written in the configuration or `custom` (templated) and as kept in the
/// resource meta (resolved).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Call {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE` (default: `POST` for submit, `GET` for status
    /// and lookup, `DELETE` for cancel).
    pub method: Option<String>,
    /// Absolute, or relative to the configured `base_url`.
    pub url: String,
    /// Extra headers.
    pub headers: Map<String, Value>,
    /// A JSON body.
    pub body: Option<Value>,
}

/// Remote states by phase, compared case-insensitively; a state in no list is `RUNNING`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct States {
    /// States meaning the job succeeded.
    pub succeeded: Vec<String>,
    /// States meaning the job failed for good.
    pub failed: Vec<String>,
    /// States meaning the job failed and another attempt may succeed.
    pub retryable: Vec<String>,
}

impl Default for States {
    fn default() -> Self {
        let list = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
        Self {
            succeeded: list(&["SUCCEEDED", "SUCCESS", "SUCCESSFUL", "DONE", "COMPLETED", "COMPLETE", "FINISHED"]),
            failed: list(&["FAILED", "FAILURE", "ERROR", "ERRORED", "CANCELLED", "CANCELED", "ABORTED", "TERMINATED", "INTERNAL_ERROR"]),
            retryable: Vec::new(),
        }
    }
}

/// A log link: its name and a URI template (`{job_id}`, `{idempotency_key}`, `{inputs.x}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLink {
    /// Shown in Flyte's UI.
    pub name: String,
    /// The link.
    pub uri: String,
}

/// The job settings: every key of the plugin configuration that a task's `custom` may set too.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSpec {
    /// Finds an already submitted job by `{idempotency_key}` (200 with the job id, 404: none).
    pub lookup: Option<Call>,
    /// Starts the job.
    pub submit: Option<Call>,
    /// Reports on the job (`{job_id}`).
    pub status: Option<Call>,
    /// Cancels the job (`{job_id}`); without it, delete does nothing.
    pub cancel: Option<Call>,
    /// Where the job id is in the submit (and lookup) answer: a dotted path (default `id`).
    pub job_id_path: Option<String>,
    /// Where the state is in the status answer (default `state`).
    pub state_path: Option<String>,
    /// Where a message is in the status answer (default `message`).
    pub message_path: Option<String>,
    /// Where the outputs are in the final status answer: an object by output name (default:
    /// none, no outputs).
    pub outputs_path: Option<String>,
    /// The state mapping (default: see [`States`]).
    pub states: Option<States>,
    /// Log links (templates).
    pub log_links: Option<Vec<LogLink>>,
    /// Statuses of the cancel answer that mean the job is gone (default 404, 409, 410).
    pub gone_statuses: Option<Vec<u16>>,
    /// The header carrying the attempt's key on submit (default `Idempotency-Key`; empty: none).
    pub idempotency_header: Option<String>,
    /// Timeout of one request in seconds (default 30).
    pub timeout_sec: Option<f64>,
}

/// The plugin configuration: the `[plugins.rest_job_plugin]` table (named after the library
/// file). Everything has a default, so the plugin loads with no table at all; tasks then carry
/// their requests in `custom`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Relative URLs are joined to it; the API token is sent only to URLs under it.
    pub base_url: String,
    /// The header carrying the token (default `Authorization`).
    pub auth_header: String,
    /// Put before the token in that header, with a space (default `Bearer`; empty: the token alone).
    pub auth_scheme: String,
    /// The token's secret: `ctx.secret(secret_group, secret_key)` (default `rest_job` /
    /// `api_token`: env `_FSEC_REST_JOB_API_TOKEN`, file `/etc/secrets/rest_job/api_token`, or
    /// the Flyte 2 connection secret `api_token`).
    pub secret_group: String,
    /// See `secret_group`.
    pub secret_key: String,
    /// Whether a missing token fails the task (default false: requests go without one).
    pub require_token: bool,
    /// Defaults for every task.
    pub defaults: JobSpec,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            auth_header: "Authorization".into(),
            auth_scheme: "Bearer".into(),
            secret_group: "rest_job".into(),
            secret_key: "api_token".into(),
            require_token: false,
            defaults: JobSpec::default(),
        }
    }
}

/// What Flyte keeps for a submitted job: everything `get` and `delete` need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMeta {
    /// The remote job id.
    pub job_id: String,
    /// The attempt's key.
    pub idempotency_key: String,
    /// The status request, resolved.
    pub status: Call,
    /// The cancel request, resolved.
    #[serde(default)]
    pub cancel: Option<Call>,
    /// Where the state, message and outputs are in the status answer.
    pub state_path: String,
    /// See `state_path`.
    #[serde(default)]
    pub message_path: String,
    /// See `state_path`.
    #[serde(default)]
    pub outputs_path: Option<String>,
    /// The state mapping.
    pub states: States,
    /// Log links, resolved.
    #[serde(default)]
    pub log_links: Vec<LogLink>,
    /// Statuses of the cancel answer that mean the job is gone.
    pub gone_statuses: Vec<u16>,
    /// Timeout of one request, in seconds.
    pub timeout_sec: f64,
}

/// Jobs this process submitted, by idempotency key, for repeated CreateTask calls.
const REMEMBERED: usize = 10_000;

/// Submits, polls and cancels jobs of an HTTP job service.
#[derive(Debug)]
pub struct RestJob {
    config: Config,
    client: reqwest::Client,
    submitted: Mutex<HashMap<String, (Instant, JobMeta)>>,
}

/// An HTTP answer: status and text.
struct Answer {
    status: u16,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// A value at a dotted path (`a.b.0.c`) of a JSON answer.
pub fn at_path<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').filter(|k| !k.is_empty()).try_fold(value, |v, key| match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// A job id or state as text (numbers too).
fn text_at(value: &Value, path: &str) -> Option<String> {
    match at_path(value, path)? {
        Value::Null => None,
        v => Some(py_str(v)),
    }
}

impl AsyncAgent for RestJob {
    const NAME: &'static str = "REST Job Agent";
    const TASK_TYPE: &'static str = "rest_job";
    type Meta = JobMeta;

    fn new(ctx: &Context) -> Result<Self, AgentError> {
        let config: Config = ctx.config()?;
        let client = agent_plugin_http::builder()
            .map_err(|e| AgentError::invalid(format!("cannot build the HTTP client: {e}")))?
            .user_agent(concat!("agent-host-rest-job/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AgentError::invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { config, client, submitted: Mutex::new(HashMap::new()) })
    }

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<JobMeta, AgentError> {
        let custom: JobSpec = task.custom()?;
        let key = task.idempotency_key()?.unwrap_or_default();
        if let Some(meta) = self.remembered(&key) {
            tracing::info!(job_id = %meta.job_id, %key, "CreateTask repeated: the job is already submitted");
            return Ok(meta);
        }
        let d = &self.config.defaults;
        let pick = |c: &Option<Call>, d: &Option<Call>| c.clone().or_else(|| d.clone());
        let missing = |what: &str| {
            AgentError::permanent(format!(
                "rest_job: no `{what}` request: set it in the task's custom or in the plugin configuration [plugins.rest_job_plugin.defaults]"
            ))
        };
        let submit = pick(&custom.submit, &d.submit).ok_or_else(|| missing("submit"))?;
        let status = pick(&custom.status, &d.status).ok_or_else(|| missing("status"))?;
        let timeout_sec = custom.timeout_sec.or(d.timeout_sec).unwrap_or(30.0);
        let job_id_path = custom.job_id_path.clone().or_else(|| d.job_id_path.clone()).unwrap_or_else(|| "id".into());

        // First pass: inputs, the attempt's key and the output prefix; `{job_id}` stays for later.
        let mut scope = Scope::with_inputs(task.inputs()?);
        scope.names.insert("idempotency_key".into(), key.clone());
        scope.names.insert("output_prefix".into(), task.output_prefix().to_string());
        let resolve = |call: Call, scope: &Scope<'_>| -> Result<Call, AgentError> {
            let value = serde_json::to_value(&call).map_err(|e| AgentError::new(e.to_string()))?;
            let value = template::format(value, scope).map_err(AgentError::permanent)?;
            serde_json::from_value(value).map_err(|e| AgentError::permanent(format!("a request does not fit after templating: {e}")))
        };

        let mut job_id = None;
        if let Some(lookup) = pick(&custom.lookup, &d.lookup) {
            let answer = self.send(ctx, &resolve(lookup, &scope)?, "GET", timeout_sec, None).await?;
            match answer.status {
                200..=299 => job_id = text_at(&answer.json(), &job_id_path),
                404 => {}
                s => return Err(AgentError::new(format!("the lookup request answered {s}: {}", answer.text))),
            }
            if let Some(id) = &job_id {
                tracing::info!(job_id = %id, %key, "found the attempt's job by lookup: not submitting again");
            }
        }
        let job_id = match job_id {
            Some(id) => id,
            None => {
                let header =
                    custom.idempotency_header.clone().or_else(|| d.idempotency_header.clone()).unwrap_or_else(|| "Idempotency-Key".into());
                let idempotency = (!header.is_empty() && !key.is_empty()).then(|| (header, key.clone()));
                let answer = self.send(ctx, &resolve(submit, &scope)?, "POST", timeout_sec, idempotency).await?;
                if !(200..300).contains(&answer.status) {
                    let message = format!("the submit request answered {}: {}", answer.status, answer.text);
                    return Err(if answer.status == 429 || answer.status >= 500 {
                        AgentError::retryable(message)
                    } else {
                        AgentError::permanent(message)
                    });
                }
                text_at(&answer.json(), &job_id_path)
                    .ok_or_else(|| AgentError::permanent(format!("the submit answer has no job id at `{job_id_path}`: {}", answer.text)))?
            }
        };

        // Second pass: the job id.
        scope.names.insert("job_id".into(), job_id.clone());
        let log_links = custom.log_links.clone().or_else(|| d.log_links.clone()).unwrap_or_default();
        let log_links = log_links
            .into_iter()
            .map(|l| match template::format(Value::String(l.uri), &scope) {
                Ok(uri) => Ok(LogLink { name: l.name, uri: py_str(&uri) }),
                Err(e) => Err(AgentError::permanent(e)),
            })
            .collect::<Result<_, _>>()?;
        let cancel = match pick(&custom.cancel, &d.cancel) {
            Some(c) => Some(resolve(c, &scope)?),
            None => None,
        };
        let meta = JobMeta {
            job_id,
            idempotency_key: key.clone(),
            status: resolve(status, &scope)?,
            cancel,
            state_path: custom.state_path.clone().or_else(|| d.state_path.clone()).unwrap_or_else(|| "state".into()),
            message_path: custom.message_path.clone().or_else(|| d.message_path.clone()).unwrap_or_else(|| "message".into()),
            outputs_path: custom.outputs_path.clone().or_else(|| d.outputs_path.clone()),
            states: custom.states.clone().or_else(|| d.states.clone()).unwrap_or_default(),
            log_links,
            gone_statuses: custom.gone_statuses.clone().or_else(|| d.gone_statuses.clone()).unwrap_or_else(|| vec![404, 409, 410]),
            timeout_sec,
        };
        tracing::info!(job_id = %meta.job_id, %key, "job submitted");
        self.remember(&key, &meta);
        Ok(meta)
    }

    async fn get(&self, ctx: &Context, meta: JobMeta) -> Result<Resource, AgentError> {
        let answer = self.send(ctx, &meta.status, "GET", meta.timeout_sec, None).await?;
        let mut resource = match answer.status {
            200..=299 => {
                let body = answer.json();
                let state = text_at(&body, &meta.state_path).unwrap_or_default();
                let is = |list: &[String]| list.iter().any(|s| s.eq_ignore_ascii_case(&state));
                let message = text_at(&body, &meta.message_path).unwrap_or_default();
                let described = if message.is_empty() {
                    format!("job {}: {state}", meta.job_id)
                } else {
                    format!("job {}: {state}: {message}", meta.job_id)
                };
                if is(&meta.states.succeeded) {
                    let mut outputs = Literals::new();
                    if let Some(Value::Object(values)) = meta.outputs_path.as_deref().and_then(|p| at_path(&body, p)) {
                        for (name, value) in values {
                            outputs.insert(name.clone(), value.clone());
                        }
                    }
                    Resource::succeeded(outputs).with_message(described)
                } else if is(&meta.states.failed) {
                    Resource::failed(described)
                } else if is(&meta.states.retryable) {
                    Resource::retryable_failure(described)
                } else {
                    Resource::running().with_message(described)
                }
            }
            404 | 410 => {
                Resource::failed(format!("job {} is gone: the status request answered {}: {}", meta.job_id, answer.status, answer.text))
            }
            s => return Err(AgentError::new(format!("the status request for job {} answered {s}: {}", meta.job_id, answer.text))),
        };
        for link in &meta.log_links {
            resource = resource.with_log_link(link.name.clone(), link.uri.clone());
        }
        Ok(resource.with_info("job_id", meta.job_id))
    }

    async fn delete(&self, ctx: &Context, meta: JobMeta) -> Result<(), AgentError> {
        self.forget(&meta.idempotency_key);
        let Some(cancel) = &meta.cancel else {
            tracing::info!(job_id = %meta.job_id, "no cancel request configured: nothing to cancel");
            return Ok(());
        };
        let answer = self.send(ctx, cancel, "DELETE", meta.timeout_sec, None).await?;
        if (200..300).contains(&answer.status) || meta.gone_statuses.contains(&answer.status) {
            tracing::info!(job_id = %meta.job_id, status = answer.status, "job cancelled (or already gone)");
            return Ok(());
        }
        Err(AgentError::new(format!("the cancel request for job {} answered {}: {}", meta.job_id, answer.status, answer.text)))
    }
}

impl RestJob {
    fn remembered(&self, key: &str) -> Option<JobMeta> {
        if key.is_empty() {
            return None;
        }
        self.submitted.lock().ok()?.get(key).map(|(_, meta)| meta.clone())
    }

    fn remember(&self, key: &str, meta: &JobMeta) {
        if key.is_empty() {
            return;
        }
        if let Ok(mut jobs) = self.submitted.lock() {
            if jobs.len() >= REMEMBERED {
                // Forget the older half; the lookup request and the idempotency header still
                // cover a repeat for those.
                let mut ages: Vec<Instant> = jobs.values().map(|(t, _)| *t).collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                jobs.retain(|_, (t, _)| *t > cut);
            }
            jobs.insert(key.to_string(), (Instant::now(), meta.clone()));
        }
    }

    fn forget(&self, key: &str) {
        if let Ok(mut jobs) = self.submitted.lock() {
            jobs.remove(key);
        }
    }

    /// Sends one request: relative URLs joined to `base_url`, the token added for URLs under it.
    async fn send(
        &self,
        ctx: &Context,
        call: &Call,
        default_method: &str,
        timeout_sec: f64,
        idempotency: Option<(String, String)>,
    ) -> Result<Answer, AgentError> {
        let base = self.config.base_url.trim_end_matches('/');
        let url = if call.url.contains("://") { call.url.clone() } else { format!("{base}/{}", call.url.trim_start_matches('/')) };
        let method_name = call.method.clone().unwrap_or_else(|| default_method.into()).to_uppercase();
        let method = reqwest::Method::from_bytes(method_name.as_bytes())
            .map_err(|_| AgentError::permanent(format!("`{method_name}` is not an HTTP method")))?;
        let timeout = Duration::try_from_secs_f64(timeout_sec.max(0.0)).unwrap_or(Duration::MAX);
        let mut request = self.client.request(method, &url).timeout(timeout);
        for (name, value) in &call.headers {
            request = request.header(name.as_str(), py_str(value));
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        if let Some((header, key)) = idempotency {
            request = request.header(header, key);
        }
        // The token goes only to the configured service: a task cannot send it elsewhere.
        if !base.is_empty() && (url == base || url.starts_with(&format!("{base}/"))) {
            match ctx.secret(&self.config.secret_group, &self.config.secret_key) {
                Ok(token) => {
                    let value = if self.config.auth_scheme.is_empty() { token } else { format!("{} {token}", self.config.auth_scheme) };
                    request = request.header(self.config.auth_header.as_str(), value);
                }
                Err(e) if self.config.require_token => return Err(AgentError::permanent(format!("no API token: {}", e.message()))),
                Err(_) => {}
            }
        }
        let response = request.send().await.map_err(|e| AgentError::new(format!("{method_name} {url} failed: {e}")))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| AgentError::new(format!("reading the answer of {method_name} {url}: {e}")))?;
        Ok(Answer { status, text })
    }
}

agent_plugin_api::export_plugin!(name: "rest-job", agents: [async RestJob]);
