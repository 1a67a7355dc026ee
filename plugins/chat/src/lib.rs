//! The chat agent: flytekit's ChatGPT task (`flytekitplugins-openai`, task type `chatgpt`) on
//! any OpenAI-compatible chat completions API.
//!
//! It reads the `custom` that `ChatGPTTask.get_custom` writes (`chatgpt_config`: `model` and any
//! other request parameters; `openai_organization`), sends the input `message` as the one user
//! message to `<base_url>/chat/completions` with the API key from the secrets, and answers
//! `SUCCEEDED` with the first choice's text as the output `o0`, as flytekit's `ChatGPTConnector`
//! does. The base URL is configurable, so a local server (vLLM, llama.cpp, Ollama…) works.

use std::time::Duration;

use agent_plugin_api::{serde_json::Value, tracing, AgentError, Context, Literals, Resource, SyncAgent, TaskRequest};
use serde::Deserialize;

/// The plugin's configuration: the `[plugins.chat_plugin]` table (named after the library file).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The API's base URL; requests go to `<base_url>/chat/completions`.
    pub base_url: String,
    /// How long one completion may take, in seconds (flytekit: 10).
    pub timeout_sec: f64,
    /// Where the API key is: `ctx.secret(secret_group, secret_key)`. flytekit's
    /// `get_connector_secret("FLYTE_OPENAI_API_KEY")`: env `_FSEC_FLYTE_OPENAI_API_KEY`, file
    /// `<secrets dir>/flyte_openai_api_key`, or a Flyte 2 connection secret of that name.
    pub secret_group: String,
    /// See `secret_group`.
    pub secret_key: String,
    /// Whether a missing API key fails the task (set false for local servers that need none).
    pub require_api_key: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            timeout_sec: 10.0,
            secret_group: String::new(),
            secret_key: "FLYTE_OPENAI_API_KEY".into(),
            require_api_key: true,
        }
    }
}

/// `TaskTemplate.custom` of a `chatgpt` task.
#[derive(Debug, Deserialize)]
struct ChatCustom {
    chatgpt_config: serde_json::Map<String, Value>,
    #[serde(default)]
    openai_organization: Option<String>,
}

/// Asks an OpenAI-compatible chat API (flytekit's `ChatGPTTask`).
#[derive(Debug)]
pub struct Chat {
    config: Config,
    client: reqwest::Client,
}

impl SyncAgent for Chat {
    // flytekit's name, so that ListAgents reads the same.
    const NAME: &'static str = "ChatGPT Connector";
    const TASK_TYPE: &'static str = "chatgpt";

    fn new(ctx: &Context) -> Result<Self, AgentError> {
        let config: Config = ctx.config()?;
        let client = agent_plugin_http::builder()
            .map_err(|e| AgentError::invalid(format!("cannot build the HTTP client: {e}")))?
            .user_agent(concat!("agent-host-chat/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::try_from_secs_f64(config.timeout_sec.max(0.0)).unwrap_or(Duration::MAX))
            .build()
            .map_err(|e| AgentError::invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { config, client })
    }

    async fn execute(&self, ctx: &Context, task: TaskRequest) -> Result<Resource, AgentError> {
        let custom: ChatCustom = task.custom()?;
        let message: String = task.input("message")?;
        if !custom.chatgpt_config.contains_key("model") {
            return Err(AgentError::permanent("chatgpt_config has no `model`"));
        }
        let mut body = custom.chatgpt_config;
        body.insert("messages".into(), serde_json::json!([{"role": "user", "content": message}]));

        let url = format!("{}/chat/completions", self.config.base_url.trim_end_matches('/'));
        let mut request = self.client.post(&url).json(&body);
        match ctx.secret(&self.config.secret_group, &self.config.secret_key) {
            Ok(key) => request = request.bearer_auth(key),
            Err(e) if self.config.require_api_key => return Err(AgentError::permanent(format!("no API key: {}", e.message()))),
            Err(_) => {}
        }
        if let Some(org) = custom.openai_organization.filter(|o| !o.is_empty()) {
            request = request.header("OpenAI-Organization", org);
        }

        let response = request.send().await.map_err(|e| {
            let what = if e.is_timeout() { format!("no answer within {} s", self.config.timeout_sec) } else { e.to_string() };
            AgentError::retryable(format!("the chat API at {url} failed: {what}"))
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| AgentError::retryable(format!("reading the chat API's answer: {e}")))?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = answer.pointer("/error/message").and_then(Value::as_str).map(str::to_string).unwrap_or(text);
            let message = format!("the chat API answered {}: {detail}", status.as_u16());
            // Rate limits, timeouts and server errors may pass; anything else will not.
            return Err(if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
                AgentError::retryable(message)
            } else {
                AgentError::permanent(message)
            });
        }
        let content = answer
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| AgentError::permanent(format!("the chat API's answer has no choices[0].message.content: {text}")))?;
        tracing::info!(model = %body["model"], chars = content.len(), "chat completion");
        Ok(Resource::succeeded(Literals::new().with("o0", content)))
    }
}

agent_plugin_api::export_plugin!(name: "chat", agents: [sync Chat]);
