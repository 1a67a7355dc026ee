//! `agent-host exec FILE --task-type T`: run one task through a plugin file, the way Flyte
//! would, from the shell.
//!
//! The file goes through the real [`Loader`] (private copy, check in a child process, load and
//! init with its `[plugins.<name>]` table), then the agent serving the task type is driven with
//! Flyte 1 requests like FlytePropeller's: `ExecuteTaskSync` for a sync agent; otherwise
//! `CreateTask`, then `GetTask` until a terminal phase, and `DeleteTask` on abort (Ctrl-C, or
//! `--abort-after N` polls, or when `--max-polls` run out). Each phase is printed as it comes, then the outputs as JSON
//! (see [`literal_json`] for the format of `--inputs` and of the outputs).
//!
//! Exit status: 0 when the task succeeded, 1 when it failed, was aborted or a call failed,
//! 2 when it could not run (unreadable files, plugin refused, no agent for the task type).

pub mod literal_json;
pub mod msgpack;

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use agent_plugin_abi::method;
use agent_proto::{
    agenthost::plugin::v1::ExecuteRequest,
    flyteidl::{admin, core},
    prost_types,
};
use bytes::Bytes;
use prost::Message;
use serde_json::{json, Value};

use crate::{
    config::Config,
    error::{PluginFailure, RpcError},
    loader::PluginFile,
    plugin::PluginVersion,
    scan, Host,
};

/// What to run, from the command line.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The plugin library.
    pub file: PathBuf,
    /// `TaskTemplate.type`.
    pub task_type: String,
    /// `TaskTemplate.task_type_version`.
    pub task_type_version: i32,
    /// A JSON file with template fields (`custom`, `config`, …).
    pub template: Option<PathBuf>,
    /// A JSON file of inputs by name.
    pub inputs: Option<PathBuf>,
    /// The attempt's output prefix.
    pub output_prefix: String,
    /// Time between GetTask calls.
    pub poll_interval: Duration,
    /// Most GetTask calls before giving up.
    pub max_polls: u32,
    /// Send DeleteTask after this many GetTask calls (test the abort path).
    pub abort_after: Option<u32>,
    /// Print one JSON document at the end instead of text as it goes.
    pub json: bool,
}

/// How the run ended, and the exit status it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The task succeeded.
    Succeeded,
    /// The task failed, was aborted, or a call failed.
    Failed,
    /// The task could not be run.
    NotRun,
}

impl Outcome {
    /// The process exit status.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Succeeded => 0,
            Outcome::Failed => 1,
            Outcome::NotRun => 2,
        }
    }
}

/// Reads the template file: a JSON object with any of `custom` (object), `config` (object of
/// strings), `type`, `task_type_version`; the command line's task type wins.
fn template(options: &ExecOptions) -> Result<core::TaskTemplate, String> {
    let mut t =
        core::TaskTemplate { r#type: options.task_type.clone(), task_type_version: options.task_type_version, ..Default::default() };
    let Some(path) = &options.template else { return Ok(t) };
    let value = read_json(path)?;
    let Value::Object(fields) = value else { return Err(format!("{}: the template must be a JSON object", path.display())) };
    for (key, v) in fields {
        match (key.as_str(), v) {
            ("custom", Value::Object(custom)) => {
                let literal = literal_json::from_json(&json!({ "$struct": custom })).map_err(|e| format!("custom: {e}"))?;
                if let Some(core::literal::Value::Scalar(s)) = literal.value {
                    if let Some(core::scalar::Value::Generic(st)) = s.value {
                        t.custom = Some(st);
                    }
                }
            }
            ("config", Value::Object(config)) => {
                for (k, v) in config {
                    let text = v.as_str().ok_or_else(|| format!("{}: config.{k} must be a string", path.display()))?;
                    t.config.insert(k, text.to_string());
                }
            }
            ("type" | "task_type_version", _) => {}
            (other, _) => {
                return Err(format!(
                    "{}: template key `{other}` is not one exec reads (custom: object, config: object of strings)",
                    path.display()
                ))
            }
        }
    }
    Ok(t)
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// A task execution id like propeller's, for a local run.
fn metadata(task_type: &str) -> admin::TaskExecutionMetadata {
    let execution = core::WorkflowExecutionIdentifier {
        project: "local".into(),
        domain: "development".into(),
        name: format!("exec-{}", std::process::id()),
        ..Default::default()
    };
    admin::TaskExecutionMetadata {
        task_execution_id: Some(core::TaskExecutionIdentifier {
            task_id: Some(core::Identifier {
                name: task_type.into(),
                project: "local".into(),
                domain: "development".into(),
                ..Default::default()
            }),
            node_execution_id: Some(core::NodeExecutionIdentifier { node_id: "n0".into(), execution_id: Some(execution) }),
            retry_attempt: 0,
        }),
        namespace: "local-development".into(),
        ..Default::default()
    }
}

/// Prints as the run goes (text mode) and collects the final report (JSON mode).
struct Report<'a> {
    out: &'a mut dyn Write,
    json: bool,
    phases: Vec<Value>,
}

impl Report<'_> {
    fn line(&mut self, text: impl std::fmt::Display) {
        if !self.json {
            let _ = writeln!(self.out, "{text}");
        }
    }

    fn resource(&mut self, step: &str, r: &admin::Resource) -> Value {
        let phase = core::task_execution::Phase::try_from(r.phase).map(|p| p.as_str_name()).unwrap_or("UNKNOWN");
        let message = if r.message.is_empty() { String::new() } else { format!(": {}", r.message) };
        self.line(format_args!("{step}: {phase}{message}"));
        for link in &r.log_links {
            self.line(format_args!("  log {}: {}", link.name, link.uri));
        }
        let info = r.custom_info.as_ref().map(|s| literal_json::to_json(&struct_literal(s))["$struct"].clone()).unwrap_or(Value::Null);
        if !info.is_null() {
            self.line(format_args!("  info {info}"));
        }
        let entry = json!({"step": step, "phase": phase, "message": r.message, "log_links": r.log_links.iter().map(|l| json!({"name": l.name, "uri": l.uri})).collect::<Vec<_>>(), "custom_info": info});
        self.phases.push(entry.clone());
        entry
    }
}

fn struct_literal(s: &prost_types::Struct) -> core::Literal {
    core::Literal {
        value: Some(core::literal::Value::Scalar(Box::new(core::Scalar { value: Some(core::scalar::Value::Generic(s.clone())) }))),
        ..Default::default()
    }
}

/// One call into the plugin; an error comes back as the gRPC status a client would see.
async fn call(
    plugin: &PluginVersion,
    agent: u32,
    method: u32,
    operation: &'static str,
    task_type: &str,
    request: Vec<u8>,
) -> Result<Bytes, String> {
    plugin.call(agent, method, Bytes::from(request)).await.map_err(|error| {
        let failure =
            PluginFailure { plugin: plugin.name().into(), version: plugin.version().into(), operation, task_type: task_type.into(), error };
        let status = RpcError::Plugin(Box::new(failure)).into_status();
        format!("{:?}: {}", status.code(), status.message())
    })
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, String> {
    M::decode(bytes).map_err(|e| format!("the {what} response does not decode: {e}"))
}

/// Loads the plugin, runs the task, prints what happens; returns how it ended.
pub async fn run(config: Config, check_exe: PathBuf, options: ExecOptions, out: &mut dyn Write) -> Outcome {
    let mut report = Report { out, json: options.json, phases: Vec::new() };
    let result = drive(config, check_exe, &options, &mut report).await;
    let (outcome, error, outputs) = match result {
        Ok((outcome, outputs)) => (outcome, None, outputs),
        Err((outcome, e)) => (outcome, Some(e), None),
    };
    if let Some(e) = &error {
        if !options.json {
            let _ = writeln!(report.out, "error: {e}");
        }
    }
    if let Some(outputs) = &outputs {
        report.line("outputs:");
        report.line(serde_json::to_string_pretty(outputs).unwrap_or_default());
    }
    if options.json {
        let outcome_name = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::NotRun => "not_run",
        };
        let doc = json!({"outcome": outcome_name, "error": error, "phases": report.phases, "outputs": outputs});
        let _ = writeln!(report.out, "{doc}");
    }
    outcome
}

type Driven = Result<(Outcome, Option<Value>), (Outcome, String)>;

async fn drive(config: Config, check_exe: PathBuf, options: &ExecOptions, report: &mut Report<'_>) -> Driven {
    let not_run = |e: String| (Outcome::NotRun, e);
    let template = template(options).map_err(not_run)?;
    let inputs = match &options.inputs {
        Some(path) => {
            literal_json::inputs_from_json(&read_json(path).map_err(not_run)?).map_err(|e| not_run(format!("{}: {e}", path.display())))?
        }
        None => Vec::new(),
    };
    let config_json = config.plugin_config_json(&scan::config_name(&options.file));
    let host = Host::new(config, check_exe);
    let file = PluginFile::read(&options.file).map_err(|e| not_run(format!("{}: {e}", options.file.display())))?;
    let plugin: Arc<PluginVersion> =
        host.loader.load(&file, config_json).await.map_err(|e| not_run(format!("{}: refused: {e}", options.file.display())))?;
    report.line(format_args!("loaded plugin {} {} from {}", plugin.name(), plugin.version(), options.file.display()));
    let found = plugin
        .agents()
        .iter()
        .enumerate()
        .find(|(_, a)| a.categories.iter().any(|c| c.name == options.task_type && c.version == options.task_type_version));
    let Some((index, agent)) = found else {
        let served: Vec<String> =
            plugin.agents().iter().flat_map(|a| a.categories.iter().map(|c| format!("{} v{}", c.name, c.version))).collect();
        return Err(not_run(format!(
            "no agent of {} serves task type {} v{} (it serves: {})",
            plugin.name(),
            options.task_type,
            options.task_type_version,
            served.join(", ")
        )));
    };
    let index = index as u32;
    report.line(format_args!(
        "agent {:?} ({}) serves {} v{}",
        agent.name,
        if agent.is_sync { "sync" } else { "async" },
        options.task_type,
        options.task_type_version
    ));
    let inputs = core::LiteralMap { literals: inputs.into_iter().collect() };
    let metadata = metadata(&options.task_type);
    let failed = |e: String| (Outcome::Failed, e);
    let tt = options.task_type.as_str();

    let finished = if agent.is_sync {
        let request = ExecuteRequest {
            header: Some(admin::CreateRequestHeader {
                template: Some(template),
                output_prefix: options.output_prefix.clone(),
                task_execution_metadata: Some(metadata),
                max_dataset_size_bytes: 0,
            }),
            inputs: Some(inputs),
        };
        let bytes = call(&plugin, index, method::V1_EXECUTE, "do", tt, request.encode_to_vec()).await.map_err(failed)?;
        let response: admin::ExecuteTaskSyncResponse = decode(&bytes, "ExecuteTaskSync").map_err(failed)?;
        match response.res {
            Some(admin::execute_task_sync_response::Res::Header(h)) => h.resource.unwrap_or_default(),
            _ => return Err(failed("the ExecuteTaskSync response has no header".into())),
        }
    } else {
        let request = admin::CreateTaskRequest {
            inputs: Some(inputs),
            template: Some(template),
            output_prefix: options.output_prefix.clone(),
            task_execution_metadata: Some(metadata),
        };
        let bytes = call(&plugin, index, method::V1_CREATE, "create", tt, request.encode_to_vec()).await.map_err(failed)?;
        let created: admin::CreateTaskResponse = decode(&bytes, "CreateTask").map_err(failed)?;
        let meta = created.resource_meta;
        let shown = match std::str::from_utf8(&meta) {
            Ok(text) if text.len() <= 300 => text.to_string(),
            _ => format!("{} bytes", meta.len()),
        };
        report.line(format_args!("CreateTask: resource meta {shown}"));
        poll(&plugin, index, options, meta, report).await?
    };
    if agent.is_sync {
        report.resource("ExecuteTaskSync", &finished);
    }
    let outputs = finished.outputs.as_ref().map(|m| literal_json::outputs_to_json(&m.literals));
    let outcome = if finished.phase == core::task_execution::Phase::Succeeded as i32 { Outcome::Succeeded } else { Outcome::Failed };
    Ok((outcome, outputs))
}

/// GetTask until a terminal phase; DeleteTask on Ctrl-C or after `--abort-after` polls.
async fn poll(
    plugin: &PluginVersion,
    index: u32,
    options: &ExecOptions,
    meta: Bytes,
    report: &mut Report<'_>,
) -> Result<admin::Resource, (Outcome, String)> {
    use core::task_execution::Phase;
    let failed = |e: String| (Outcome::Failed, e);
    let tt = options.task_type.as_str();
    let category = Some(admin::TaskCategory { name: options.task_type.clone(), version: options.task_type_version });
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    for n in 1..=options.max_polls {
        let abort = options.abort_after.is_some_and(|a| n > a);
        if n > 1 && !abort {
            tokio::select! {
                _ = tokio::time::sleep(options.poll_interval) => {}
                _ = &mut interrupt => {
                    report.line("interrupted");
                    return Err(abort_task(plugin, index, options, meta, category, report).await);
                }
            }
        }
        if abort {
            return Err(abort_task(plugin, index, options, meta, category, report).await);
        }
        #[allow(deprecated)] // propeller still fills the deprecated `task_type`.
        let request = admin::GetTaskRequest {
            task_type: options.task_type.clone(),
            resource_meta: meta.clone(),
            task_category: category.clone(),
            output_prefix: options.output_prefix.clone(),
        };
        let bytes = call(plugin, index, method::V1_GET, "get", tt, request.encode_to_vec()).await.map_err(failed)?;
        let resource = decode::<admin::GetTaskResponse>(&bytes, "GetTask").map_err(failed)?.resource.unwrap_or_default();
        report.resource(&format!("GetTask #{n}"), &resource);
        if [Phase::Succeeded, Phase::Failed, Phase::RetryableFailed, Phase::Aborted].map(|p| p as i32).contains(&resource.phase) {
            return Ok(resource);
        }
    }
    // Giving up: cancel the job rather than leave it running unwatched.
    let (outcome, deleted) = abort_task(plugin, index, options, meta, category, report).await;
    Err((outcome, format!("still not done after {} GetTask calls (--max-polls); {deleted}", options.max_polls)))
}

async fn abort_task(
    plugin: &PluginVersion,
    index: u32,
    options: &ExecOptions,
    meta: Bytes,
    category: Option<admin::TaskCategory>,
    report: &mut Report<'_>,
) -> (Outcome, String) {
    #[allow(deprecated)]
    let request = admin::DeleteTaskRequest { task_type: options.task_type.clone(), resource_meta: meta, task_category: category };
    match call(plugin, index, method::V1_DELETE, "delete", &options.task_type, request.encode_to_vec()).await {
        Ok(_) => {
            report.line("DeleteTask: done (aborted)");
            report.phases.push(json!({"step": "DeleteTask", "phase": "ABORTED"}));
            (Outcome::Failed, "aborted".into())
        }
        Err(e) => (Outcome::Failed, format!("DeleteTask failed: {e}")),
    }
}
