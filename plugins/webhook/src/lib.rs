//! The webhook agent: flytekit's `WebhookTask` (task type `webhook`), served natively.
//!
//! It reads the `TaskTemplate.custom` that flytekit's `WebhookTask.get_custom` writes (`url`,
//! `method`, `headers`, `data`, `show_data`, `show_url`, `timeout_sec`), fills in the
//! `{inputs.<name>}` placeholders as flytekit's `format_dict` does, sends the request, and answers
//! what flytekit's `WebhookConnector` answers: `SUCCEEDED` with the output `info` (a msgpack
//! dict: `status_code`, `response_data`, and `input_data` / `url` when asked) on a 200, else
//! `FAILED` with flytekit's message. See the crate's README for the fields and the deliberate
//! differences.

use std::time::Duration;

use agent_plugin_api::{tracing, value::Msgpack, AgentError, Context, Literals, Resource, SyncAgent, TaskRequest};
use serde::Serialize;
use serde_json::Value;

pub mod template;

use template::{py_str, py_truthy, Scope};

/// flytekit's default `timeout_sec`.
const DEFAULT_TIMEOUT_SEC: f64 = 10.0;

/// The output `info`, in flytekit's key order.
#[derive(Debug, Serialize)]
struct Info {
    status_code: u16,
    response_data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

/// Calls an HTTP endpoint described by the task template (flytekit's `WebhookTask`).
#[derive(Debug)]
pub struct Webhook {
    client: reqwest::Client,
}

impl SyncAgent for Webhook {
    // flytekit's name, so that ListAgents reads the same.
    const NAME: &'static str = "Webhook Connector";
    const TASK_TYPE: &'static str = "webhook";

    fn new(_ctx: &Context) -> Result<Self, AgentError> {
        Ok(Self { client: client()? })
    }

    async fn execute(&self, ctx: &Context, task: TaskRequest) -> Result<Resource, AgentError> {
        // A request that does not decode is the caller's error (INVALID_ARGUMENT), not the job's.
        let (custom, inputs) = (task.template()?.custom.as_ref(), task.inputs()?);
        let custom = custom.map(template::struct_value).unwrap_or(Value::Object(Default::default()));
        // flytekit answers FAILED with the exception's text for anything that goes wrong.
        Ok(match self.call(ctx, custom, inputs).await {
            Ok(resource) => resource,
            Err(message) => Resource::failed(message),
        })
    }
}

/// The HTTP client every call shares: no redirects followed (httpx's default, which flytekit
/// uses), trusting what flytekit trusts (Mozilla's roots, or `SSL_CERT_FILE` / `SSL_CERT_DIR`:
/// see `agent_plugin_http`).
pub fn client() -> Result<reqwest::Client, AgentError> {
    agent_plugin_http::builder()
        .map_err(|e| AgentError::invalid(format!("cannot build the HTTP client: {e}")))?
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("agent-host-webhook/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AgentError::invalid(format!("cannot build the HTTP client: {e}")))
}

/// Resolves `{secrets.<group>.<key>}` placeholders through the host's secrets.
fn secret_lookup(ctx: &Context) -> impl Fn(&str, &str) -> Result<String, String> + Sync + '_ {
    move |group, key| ctx.secret(group, key).map_err(|e| e.message().to_string())
}

impl Webhook {
    async fn call(&self, ctx: &Context, custom: Value, inputs: &Literals) -> Result<Resource, String> {
        let lookup = secret_lookup(ctx);
        let scope = Scope { secret: Some(&lookup), ..Scope::with_inputs(inputs) };
        let custom = template::format(custom, &scope)?;
        let field = |key: &str| custom.get(key).cloned().unwrap_or(Value::Null);

        let url = match field("url") {
            Value::String(url) => url,
            other => return Err(format!("the webhook's `url` must be text, found {}", py_str(&other))),
        };
        check_scheme(&url)?;
        // flytekit: `str(method).upper()`, GET sends `data` as query parameters, anything else
        // POSTs it as JSON. PUT, PATCH and DELETE are served as themselves (WebhookTask itself
        // only allows GET and POST).
        let method = py_str(&field("method")).to_uppercase();
        let data = field("data");
        let timeout = match field("timeout_sec") {
            Value::Number(n) => n.as_f64().unwrap_or(DEFAULT_TIMEOUT_SEC),
            _ => DEFAULT_TIMEOUT_SEC,
        };
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);

        let mut request = match method.as_str() {
            "GET" => self.client.get(&url).query(&query_pairs(&data)),
            other => {
                let method = match other {
                    "PUT" => reqwest::Method::PUT,
                    "PATCH" => reqwest::Method::PATCH,
                    "DELETE" => reqwest::Method::DELETE,
                    _ => reqwest::Method::POST,
                };
                let request = self.client.request(method, &url);
                match &data {
                    // httpx's `json=None` sends no body.
                    Value::Null => request,
                    data => request.header("content-type", "application/json").body(serde_json::to_vec(data).unwrap_or_default()),
                }
            }
        };
        if let Value::Object(headers) = field("headers") {
            for (name, value) in headers {
                request = request.header(name, py_str(&value));
            }
        }
        let response = request.timeout(timeout).send().await.map_err(|e| error_text(&e, timeout))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| error_text(&e, timeout))?;
        tracing::info!(%method, status, "webhook called");
        if status != 200 {
            return Err(format!("Webhook failed with status code {status}, response: {text}"));
        }
        let info = Info {
            status_code: status,
            response_data: text,
            input_data: py_truthy(&field("show_data")).then_some(data),
            url: py_truthy(&field("show_url")).then_some(url),
        };
        Ok(Resource::succeeded(Default::default()).with_output("info", Msgpack(info)).with_message("Webhook was successfully invoked!"))
    }
}

/// httpx's checks on the URL, with its messages.
fn check_scheme(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(());
    }
    match url.split_once("://") {
        Some((scheme, _)) if !scheme.is_empty() => Err(format!("Request URL has an unsupported protocol '{scheme}://'.")),
        _ => Err("Request URL is missing an 'http://' or 'https://' protocol.".into()),
    }
}

/// httpx's query parameters from a dict: `str()` of each value, except booleans (`true`,
/// `false`) and `None` (empty); a list gives the key once per item.
fn query_pairs(data: &Value) -> Vec<(String, String)> {
    fn text(v: &Value) -> String {
        match v {
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            other => py_str(other),
        }
    }
    let Value::Object(m) = data else { return Vec::new() };
    let mut pairs = Vec::new();
    for (k, v) in m {
        match v {
            Value::Array(items) => pairs.extend(items.iter().map(|item| (k.clone(), text(item)))),
            v => pairs.push((k.clone(), text(v))),
        }
    }
    pairs
}

/// The text of a failed request: flytekit's (httpx's) message for a refused connection, a
/// readable one otherwise.
fn error_text(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        // httpx's timeout exceptions usually carry no text at all; say what happened.
        return format!("the webhook did not answer within {} s (timed out)", timeout.as_secs_f64());
    }
    if e.is_connect() {
        return "All connection attempts failed".into();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

agent_plugin_api::export_plugin!(name: "webhook", agents: [sync Webhook]);
