//! What an agent receives (a task to run) and what it answers (a resource).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::flyte::{
    admin::{LogLine, TaskExecutionMetadata},
    core::{Literal, LiteralMap, TaskExecutionIdentifier, TaskLog, TaskTemplate},
};
use crate::value::{FromLiteral, IntoLiteral};
use crate::{json, AgentError, Phase};

/// Which Flyte protocol a request came in on. Agents rarely need to know: the SDK reads and
/// answers both the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Flyte 1 (`flyteidl.service.*AgentService`), as FlytePropeller calls it.
    V1,
    /// Flyte 2 (`flyteidl2.connector.*ConnectorService`).
    V2,
}

/// Named literals in order: a task's inputs or outputs.
///
/// Flyte 1 sends a map (delivered here sorted by name), Flyte 2 an ordered list (kept in order).
/// Build them from Rust values with [`Literals::with`], read them with [`Literals::read`] (see
/// [`crate::value`] for the types).
///
/// ```
/// use agent_plugin_api::Literals;
///
/// let outputs = Literals::new().with("rows", 42).with("table", "sales");
/// assert_eq!(outputs.read::<i64>("rows").unwrap(), 42);
/// assert_eq!(outputs.read::<Option<String>>("missing").unwrap(), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Literals(Vec<(String, Literal)>);

impl Literals {
    /// No literals.
    pub fn new() -> Self {
        Self::default()
    }

    /// The literal called `name`, as it came.
    pub fn get(&self, name: &str) -> Option<&Literal> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, l)| l)
    }

    /// The value called `name` as a `T`. A missing name is an error unless `T` is an `Option`;
    /// errors are permanent (see [`AgentError`]) and name the value and the expected type.
    pub fn read<T: FromLiteral>(&self, name: &str) -> Result<T, AgentError> {
        self.read_named("value", name)
    }

    pub(crate) fn read_named<T: FromLiteral>(&self, what: &str, name: &str) -> Result<T, AgentError> {
        match self.get(name) {
            Some(literal) => T::from_literal(literal).map_err(|e| e.context(format_args!("{what} `{name}`"))),
            None => T::if_absent().ok_or_else(|| {
                let known: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
                AgentError::permanent(format!("{what} `{name}` is missing (expected {}; there are: {})", T::flyte_type(), known.join(", ")))
            }),
        }
    }

    /// Adds (or replaces) the value called `name`: a [`Literal`] or any Rust value of
    /// [`crate::value`].
    pub fn insert(&mut self, name: impl Into<String>, value: impl IntoLiteral) {
        let (name, literal) = (name.into(), value.into_literal());
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = literal,
            None => self.0.push((name, literal)),
        }
    }

    /// Builder form of [`Literals::insert`].
    pub fn with(mut self, name: impl Into<String>, value: impl IntoLiteral) -> Self {
        self.insert(name, value);
        self
    }

    /// Names and literals, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Literal)> {
        self.0.iter().map(|(n, l)| (n.as_str(), l))
    }

    /// Number of literals.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As Flyte 1's `LiteralMap`.
    pub fn to_literal_map(&self) -> LiteralMap {
        LiteralMap { literals: self.0.iter().cloned().collect() }
    }

    /// [`Literals::to_literal_map`] without the copy.
    pub(crate) fn into_literal_map(self) -> LiteralMap {
        LiteralMap { literals: self.0.into_iter().collect() }
    }

    pub(crate) fn into_vec(self) -> Vec<(String, Literal)> {
        self.0
    }
}

impl From<LiteralMap> for Literals {
    fn from(map: LiteralMap) -> Self {
        Self(map.literals.into_iter().collect())
    }
}

impl FromIterator<(String, Literal)> for Literals {
    fn from_iter<I: IntoIterator<Item = (String, Literal)>>(iter: I) -> Self {
        let mut out = Self::new();
        for (n, l) in iter {
            out.insert(n, l);
        }
        out
    }
}

/// A task to run: what FlytePropeller (CreateTask, ExecuteTaskSync) or the Flyte 2 executor
/// (CreateTask) sends, the same for both protocols.
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
    /// The task template: `task_type()`, `custom` (the agent's configuration), the interface.
    pub template: TaskTemplate,
    /// Input values by name.
    pub inputs: Literals,
    /// Where this attempt's outputs belong (`<output_prefix>/outputs.pb` when not inline).
    pub output_prefix: String,
    /// Execution metadata: the task execution id, namespace, labels, service account…
    pub metadata: TaskExecutionMetadata,
}

impl TaskRequest {
    /// A request for `task_type`, with empty template otherwise (handy in tests).
    pub fn new(task_type: impl Into<String>) -> Self {
        Self { template: TaskTemplate { r#type: task_type.into(), ..Default::default() }, ..Default::default() }
    }

    /// The template's task type.
    pub fn task_type(&self) -> &str {
        &self.template.r#type
    }

    /// Reads `template.custom` (a protobuf `Struct`, as flytekit task classes fill it) into the
    /// agent's own type; an absent `custom` reads as `{}`. Whole numbers read into integer
    /// fields (a `Struct` keeps every number as a double). A `custom` that does not fit is a
    /// permanent error: the task is wrong, no retry will fix it.
    ///
    /// ```
    /// # use agent_plugin_api::TaskRequest;
    /// #[derive(serde::Deserialize)]
    /// struct Custom {
    ///     url: String,
    ///     #[serde(default)]
    ///     timeout_sec: u64,
    /// }
    ///
    /// let task = TaskRequest::new("webhook").with_custom(serde_json::json!({"url": "http://x", "timeout_sec": 10}));
    /// let custom: Custom = task.custom().unwrap();
    /// assert_eq!((custom.url.as_str(), custom.timeout_sec), ("http://x", 10));
    /// ```
    pub fn custom<T: DeserializeOwned>(&self) -> Result<T, AgentError> {
        let value = self.template.custom.as_ref().map(json::struct_to_json).unwrap_or(serde_json::Value::Object(Default::default()));
        serde_json::from_value(value).map_err(|e| AgentError::permanent(format!("task template `custom` does not fit: {e}")))
    }

    /// The input called `name` as a `T` (see [`crate::value`] for the types). A missing input
    /// is an error unless `T` is an `Option`; a missing or mistyped input is a permanent error
    /// naming the input, the expected type and what was found.
    ///
    /// ```
    /// # use agent_plugin_api::TaskRequest;
    /// let task = TaskRequest::new("t").with_input("n", 3).with_input("tags", vec!["a", "b"]);
    /// assert_eq!(task.input::<i64>("n").unwrap(), 3);
    /// assert_eq!(task.input::<Vec<String>>("tags").unwrap(), ["a", "b"]);
    /// assert_eq!(task.input::<Option<f64>>("ratio").unwrap(), None);
    /// assert_eq!(task.input::<String>("n").unwrap_err().message(), "input `n`: expected string, found integer");
    /// ```
    pub fn input<T: FromLiteral>(&self, name: &str) -> Result<T, AgentError> {
        self.inputs.read_named("input", name)
    }

    /// The task execution id (see [`TaskRequest::idempotency_key`]).
    pub fn task_execution_id(&self) -> Option<&TaskExecutionIdentifier> {
        self.metadata.task_execution_id.as_ref()
    }

    /// A text key naming this attempt of this task in this execution:
    /// `project/domain/execution/node/task/attempt`. Propeller may send CreateTask more than once
    /// for one attempt (same key): make `create` idempotent on it, e.g. by passing it to the
    /// external system as a request or job id. A retry is a new attempt with a new key. `None`
    /// when the caller sent no task execution id.
    pub fn idempotency_key(&self) -> Option<String> {
        let id = self.task_execution_id()?;
        let node = id.node_execution_id.as_ref();
        let execution = node.and_then(|n| n.execution_id.as_ref());
        let task = id.task_id.as_ref();
        Some(format!(
            "{}/{}/{}/{}/{}/{}",
            execution.map(|e| e.project.as_str()).unwrap_or_default(),
            execution.map(|e| e.domain.as_str()).unwrap_or_default(),
            execution.map(|e| e.name.as_str()).unwrap_or_default(),
            node.map(|n| n.node_id.as_str()).unwrap_or_default(),
            task.map(|t| t.name.as_str()).unwrap_or_default(),
            id.retry_attempt
        ))
    }

    /// Builder: sets `template.custom` from JSON.
    pub fn with_custom(mut self, custom: serde_json::Value) -> Self {
        self.template.custom = Some(json::json_to_struct(&custom));
        self
    }

    /// Builder: adds an input (a [`Literal`] or any Rust value of [`crate::value`]).
    pub fn with_input(mut self, name: impl Into<String>, value: impl IntoLiteral) -> Self {
        self.inputs.insert(name, value);
        self
    }
}

/// The state of a task as an agent reports it (`GetTask`, and the answer of a sync agent).
///
/// ```
/// use agent_plugin_api::{Phase, Resource};
///
/// let running = Resource::running().with_log_link("console", "https://jobs.example.com/42").with_info("job_id", "42");
/// assert!(!running.is_terminal());
/// let done = Resource::succeeded(Default::default()).with_output("rows", 1200).with_message("query done");
/// assert_eq!(done.phase, Phase::Succeeded);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Where the task is. Terminal: `Succeeded`, `Failed`, `RetryableFailed`, `Aborted`.
    pub phase: Phase,
    /// A human-readable message (shown as the reason in Flyte's UI).
    pub message: String,
    /// Inline outputs. Without them propeller reads `<output_prefix>/outputs.pb`, which the
    /// agent must then have written. Keep a response under 4 MiB: propeller's client refuses more.
    pub outputs: Option<Literals>,
    /// Links to the job's logs or console; return them with the first `Running` report.
    pub log_links: Vec<TaskLog>,
    /// Free-form information shown with the task.
    pub custom_info: BTreeMap<String, serde_json::Value>,
}

impl Resource {
    /// A resource in `phase` with nothing else set.
    pub fn new(phase: Phase) -> Self {
        Self { phase, message: String::new(), outputs: None, log_links: Vec::new(), custom_info: BTreeMap::new() }
    }

    /// Still running.
    pub fn running() -> Self {
        Self::new(Phase::Running)
    }

    /// Done, with these outputs inline. For outputs too large to answer inline (a response
    /// must stay under 4 MiB), write them as a `LiteralMap` to `<output_prefix>/outputs.pb` and
    /// answer `Resource::new(Phase::Succeeded)`: without inline outputs propeller reads that file.
    pub fn succeeded(outputs: Literals) -> Self {
        Self { outputs: Some(outputs), ..Self::new(Phase::Succeeded) }
    }

    /// Failed for good: Flyte does not retry the attempt.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Phase::Failed).with_message(message)
    }

    /// Failed, and worth another attempt (counts against the task's retries).
    pub fn retryable_failure(message: impl Into<String>) -> Self {
        Self::new(Phase::RetryableFailed).with_message(message)
    }

    /// Sets the message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Adds an inline output (a [`Literal`] or any Rust value of [`crate::value`]).
    pub fn with_output(mut self, name: impl Into<String>, value: impl IntoLiteral) -> Self {
        self.outputs.get_or_insert_with(Literals::new).insert(name, value);
        self
    }

    /// Adds a log link.
    pub fn with_log_link(mut self, name: impl Into<String>, uri: impl Into<String>) -> Self {
        self.log_links.push(TaskLog { name: name.into(), uri: uri.into(), ..Default::default() });
        self
    }

    /// Adds an entry to `custom_info`.
    pub fn with_info(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.custom_info.insert(key.into(), value.into());
        self
    }

    /// Whether the phase ends the task.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase, Phase::Succeeded | Phase::Failed | Phase::RetryableFailed | Phase::Aborted)
    }
}

/// What `GetTaskMetrics` asks for.
#[derive(Debug, Clone, Default)]
pub struct MetricsQuery {
    /// The metric queries, as the caller wrote them.
    pub queries: Vec<String>,
    /// Start of the window.
    pub start_time: Option<prost_types::Timestamp>,
    /// End of the window.
    pub end_time: Option<prost_types::Timestamp>,
    /// Resolution.
    pub step: Option<prost_types::Duration>,
}

/// What `GetTaskLogs` asks for.
#[derive(Debug, Clone, Default)]
pub struct LogsQuery {
    /// How many lines the caller wants (0: the agent's choice).
    pub lines: u64,
    /// Where to continue from, as returned earlier.
    pub token: String,
}

/// A stream of log lines answering `GetTaskLogs`.
///
/// Build it from lines at hand ([`LogStream::from_lines`]) or feed it from a task
/// ([`LogStream::channel`]); each batch becomes one response message after a header carrying
/// the continuation token.
#[derive(Debug)]
pub struct LogStream {
    pub(crate) token: String,
    pub(crate) rx: tokio::sync::mpsc::Receiver<Result<Vec<LogLine>, AgentError>>,
}

impl LogStream {
    /// A stream of one batch.
    pub fn from_lines(lines: Vec<LogLine>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(Ok(lines)).expect("a new channel has room for one batch");
        Self { token: String::new(), rx }
    }

    /// A stream fed through the returned sender; it ends when the sender is dropped.
    pub fn channel(buffer: usize) -> (tokio::sync::mpsc::Sender<Result<Vec<LogLine>, AgentError>>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
        (tx, Self { token: String::new(), rx })
    }

    /// Sets the continuation token sent in the header.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }
}

/// A log line, from text.
pub fn log_line(message: impl Into<String>) -> LogLine {
    LogLine { message: message.into(), ..Default::default() }
}
