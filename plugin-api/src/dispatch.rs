//! From ABI calls to trait methods: decode the request of either protocol, run the agent,
//! encode the answer in the caller's protocol.
//!
//! Job failures ([`AgentError::is_job_failure`]) become answers here: a `Resource` in phase
//! `FAILED` or `RETRYABLE_FAILED` from `get` and `execute`, and a stored result (see
//! [`crate::meta`]) from `create`, which the first GetTask reports.

use std::{future::Future, pin::Pin, sync::Arc};

use agent_plugin_abi::method;
use bytes::Bytes;
use prost::Message;

use crate::{
    context::Shared,
    encode::Answer,
    flyte::{admin, core},
    json,
    meta::{self, STORED_RESULT},
    wire, AgentError, AsyncAgent, Context, ErrorKind, Literals, LogStream, LogsQuery, MetricsQuery, Phase, Protocol, Resource, SyncAgent,
    TaskRequest,
};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One agent, its types erased, as the plugin's runtime drives it.
pub(crate) trait Dispatch: Send + Sync {
    fn call(self: Arc<Self>, shared: Arc<Shared>, method: u32, request: Bytes) -> BoxFuture<Result<Answer, AgentError>>;
    fn logs(self: Arc<Self>, shared: Arc<Shared>, method: u32, request: Bytes) -> BoxFuture<Result<LogStream, AgentError>>;
}

fn protocol_of(method: u32) -> Protocol {
    if method >= method::V2_CREATE {
        Protocol::V2
    } else {
        Protocol::V1
    }
}

fn read<T>(read: Result<T, String>, what: &str) -> Result<T, AgentError> {
    read.map_err(|e| AgentError::invalid(format!("{what} does not decode: {e}")))
}

fn decode<M: Message + Default>(bytes: Bytes, what: &str) -> Result<M, AgentError> {
    M::decode(bytes).map_err(|e| AgentError::invalid(format!("{what} does not decode: {e}")))
}

/// Reads a CreateTask (either protocol) or ExecuteTaskSync request: only its framing; each
/// part stays encoded until the agent reads it (see [`TaskRequest`]).
fn task_request(shared: &Arc<Shared>, method: u32, request: Bytes) -> Result<(Context, TaskRequest), AgentError> {
    use crate::task::InputsWire;
    match method {
        method::V1_CREATE | method::V2_CREATE => {
            let r = read(wire::CreateParts::read(&request), "CreateTaskRequest")?;
            let (protocol, inputs_wire) = match method {
                method::V1_CREATE => (Protocol::V1, InputsWire::Map),
                _ => (Protocol::V2, InputsWire::List),
            };
            let task = TaskRequest::received(r.template, r.inputs, inputs_wire, r.output_prefix, r.task_execution_metadata);
            let ctx = Context::new(shared.clone(), protocol);
            // Flyte 1 has no field 5; a v1 request that carries one anyway is not read for it.
            let ctx = if protocol == Protocol::V2 { with_connection(ctx, r.connection) } else { ctx };
            Ok((ctx, task))
        }
        method::V1_EXECUTE => {
            let r = read(wire::ExecuteParts::read(&request), "ExecuteTaskSync request")?;
            let header = read(wire::HeaderParts::read(&r.header), "ExecuteTaskSync header")?;
            let task =
                TaskRequest::received(header.template, r.inputs, InputsWire::Map, header.output_prefix, header.task_execution_metadata);
            Ok((Context::new(shared.clone(), Protocol::V1), task))
        }
        other => Err(AgentError::invalid(format!("method {other} is not a task creation"))),
    }
}

fn with_connection(mut ctx: Context, connection: Option<wire::Connection>) -> Context {
    if let Some(c) = connection {
        ctx.secrets = c.secrets;
        ctx.configs = c.configs;
    }
    ctx
}

/// Reads the resource meta (and v2 connection) of a Get or Delete request.
fn meta_request(shared: &Arc<Shared>, method: u32, request: Bytes) -> Result<(Context, Bytes), AgentError> {
    let (resource_meta, connection) = read(wire::MetaRequest::read(&request), "request")?;
    Ok((with_connection(Context::new(shared.clone(), protocol_of(method)), connection), resource_meta))
}

/// The answer for a job failure, or the error back for a call failure.
fn job_failure(e: AgentError) -> Result<Resource, AgentError> {
    match e.kind() {
        ErrorKind::Permanent => Ok(Resource::failed(e.message().to_owned())),
        ErrorKind::Retryable => Ok(Resource::retryable_failure(e.message().to_owned())),
        _ => Err(e),
    }
}

/// The stored resource in `meta`, if it is one.
fn stored(meta: &[u8]) -> Option<Result<Resource, AgentError>> {
    let bytes = meta.strip_prefix(STORED_RESULT)?;
    Some(
        wire::ResourceV2::decode(bytes)
            .map(from_v2)
            .map_err(|e| AgentError::precondition(format!("the stored result in the resource meta does not decode: {e}"))),
    )
}

pub(crate) fn state_of(phase: Phase) -> admin::State {
    match phase {
        Phase::Queued | Phase::Initializing | Phase::WaitingForResources => admin::State::Pending,
        Phase::Running => admin::State::Running,
        Phase::Succeeded => admin::State::Succeeded,
        Phase::Failed | Phase::Aborted => admin::State::PermanentFailure,
        Phase::RetryableFailed | Phase::Undefined => admin::State::RetryableFailure,
    }
}

/// A resource as Flyte 1's `Resource` (the reference for [`crate::encode`], which writes the
/// answers).
#[cfg(test)]
pub(crate) fn resource_v1(r: Resource) -> admin::Resource {
    admin::Resource {
        // Mirrored for clients older than `phase` (propeller reads it when phase is UNDEFINED).
        #[allow(deprecated)]
        state: state_of(r.phase) as i32,
        outputs: r.outputs.map(Literals::into_literal_map),
        message: r.message.into_owned(),
        log_links: r.log_links,
        phase: r.phase as i32,
        custom_info: custom_info(r.custom_info),
        agent_error: None,
    }
}

/// A resource as Flyte 2's `Resource`; outputs keep their order (the reference for
/// [`crate::encode`], which writes the answers and the stored form of a sync agent's result).
#[cfg(test)]
pub(crate) fn resource_v2(r: Resource) -> wire::ResourceV2 {
    wire::ResourceV2 {
        outputs: r.outputs.map(|o| wire::NamedLiterals {
            literals: o.into_vec().into_iter().map(|(name, value)| wire::NamedLiteral { name, value: Some(value) }).collect(),
        }),
        message: r.message.into_owned(),
        log_links: r.log_links,
        phase: r.phase as i32,
        custom_info: custom_info(r.custom_info),
    }
}

/// A `Resource` from the fields both protocols' answers share.
fn resource_from(
    phase: i32,
    message: String,
    outputs: Option<Literals>,
    log_links: Vec<core::TaskLog>,
    info: Option<prost_types::Struct>,
) -> Resource {
    let custom_info = match info.as_ref().map(json::struct_to_json) {
        Some(serde_json::Value::Object(m)) => m.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        _ => Default::default(),
    };
    Resource { phase: Phase::try_from(phase).unwrap_or(Phase::Undefined), message: message.into(), outputs, log_links, custom_info }
}

/// Back from the stored form (and from a Flyte 2 answer).
pub(crate) fn from_v2(r: wire::ResourceV2) -> Resource {
    let outputs = r.outputs.map(|o| o.literals.into_iter().map(|l| (l.name, l.value.unwrap_or_default())).collect());
    resource_from(r.phase, r.message, outputs, r.log_links, r.custom_info)
}

/// Back from a Flyte 1 answer.
pub(crate) fn from_v1(r: admin::Resource) -> Resource {
    resource_from(r.phase, r.message, r.outputs.map(Literals::from), r.log_links, r.custom_info)
}

#[cfg(test)]
fn custom_info(info: std::collections::BTreeMap<std::borrow::Cow<'static, str>, serde_json::Value>) -> Option<prost_types::Struct> {
    // The same Struct as `json::json_to_struct` of the object.
    (!info.is_empty())
        .then(|| prost_types::Struct { fields: info.into_iter().map(|(k, v)| (k.into_owned(), json::json_to_value(&v))).collect() })
}

fn encode_get(protocol: Protocol, r: Resource) -> Vec<u8> {
    crate::encode::get_response(&r, protocol)
}

/// The CreateTask answer holding a finished resource in the resource meta (a sync agent's
/// result, or a failure found by an async agent's `create`), which the first GetTask reports.
fn encode_stored(resource: Resource) -> Vec<u8> {
    crate::encode::create_response_stored(STORED_RESULT, &resource)
}

fn encode_metrics(results: Vec<core::ExecutionMetricResult>) -> Vec<u8> {
    admin::GetTaskMetricsResponse { results }.encode_to_vec()
}

fn metrics_query(request: Bytes) -> Result<(Bytes, MetricsQuery), AgentError> {
    let r: wire::MetricsRequest = decode(request, "GetTaskMetricsRequest")?;
    Ok((r.resource_meta, MetricsQuery { queries: r.queries, start_time: r.start_time, end_time: r.end_time, step: r.step }))
}

fn logs_query(request: Bytes) -> Result<(Bytes, LogsQuery), AgentError> {
    let r: wire::LogsRequest = decode(request, "GetTaskLogsRequest")?;
    Ok((r.resource_meta, LogsQuery { lines: r.lines, token: r.token }))
}

/// An [`AsyncAgent`] behind [`Dispatch`].
pub(crate) struct AsyncAdapter<A>(pub A);

impl<A: AsyncAgent> Dispatch for AsyncAdapter<A> {
    fn call(self: Arc<Self>, shared: Arc<Shared>, method: u32, request: Bytes) -> BoxFuture<Result<Answer, AgentError>> {
        Box::pin(async move {
            let agent = &self.0;
            match method {
                method::V1_CREATE | method::V2_CREATE => {
                    let (ctx, task) = task_request(&shared, method, request)?;
                    match agent.create(&ctx, task).await {
                        Ok(m) => crate::encode::create_response(|out| meta::encode_into::<A>(&m, out)),
                        Err(e) => Ok(encode_stored(job_failure(e)?).into()),
                    }
                }
                method::V1_GET | method::V2_GET => {
                    let (ctx, m) = meta_request(&shared, method, request)?;
                    let resource = match stored(&m) {
                        Some(resource) => resource?,
                        None => agent.get(&ctx, meta::decode::<A>(&m)?).await.or_else(job_failure)?,
                    };
                    Ok(encode_get(ctx.protocol(), resource).into())
                }
                method::V1_DELETE | method::V2_DELETE => {
                    let (ctx, m) = meta_request(&shared, method, request)?;
                    if stored(&m).is_none() {
                        agent.delete(&ctx, meta::decode::<A>(&m)?).await?;
                    }
                    Ok(Answer::default())
                }
                method::V1_METRICS | method::V2_METRICS => {
                    let ctx = Context::new(shared.clone(), protocol_of(method));
                    let (m, query) = metrics_query(request)?;
                    Ok(encode_metrics(agent.metrics(&ctx, decode_started::<A>(&m)?, query).await?).into())
                }
                method::V1_EXECUTE => {
                    Err(AgentError::invalid(format!("{} is an asynchronous agent: call CreateTask, not ExecuteTaskSync", A::NAME)))
                }
                other => Err(AgentError::unimplemented(format!("method {other} is not served by {}", A::NAME))),
            }
        })
    }

    fn logs(self: Arc<Self>, shared: Arc<Shared>, method: u32, request: Bytes) -> BoxFuture<Result<LogStream, AgentError>> {
        Box::pin(async move {
            let ctx = Context::new(shared, protocol_of(method));
            let (m, query) = logs_query(request)?;
            self.0.logs(&ctx, decode_started::<A>(&m)?, query).await
        })
    }
}

/// The meta of a job that started (metrics and logs have nothing to say about a stored result).
fn decode_started<A: AsyncAgent>(m: &[u8]) -> Result<A::Meta, AgentError> {
    if stored(m).is_some() {
        return Err(AgentError::precondition(format!("{}: the task failed when it was created; there is no job to ask about", A::NAME)));
    }
    meta::decode::<A>(m)
}

/// A [`SyncAgent`] behind [`Dispatch`].
pub(crate) struct SyncAdapter<S>(pub S);

impl<S: SyncAgent> SyncAdapter<S> {
    /// Runs `execute`; job failures become answers, and a non-terminal answer is refused.
    async fn execute(&self, ctx: &Context, task: TaskRequest) -> Result<Resource, AgentError> {
        let resource = self.0.execute(ctx, task).await.or_else(job_failure)?;
        if !resource.is_terminal() {
            return Err(AgentError::new(format!(
                "{} is a sync agent and answered phase {}: a sync agent must answer with a terminal phase \
                 (SUCCEEDED, FAILED or RETRYABLE_FAILED); propeller does not poll it",
                S::NAME,
                resource.phase.as_str_name()
            )));
        }
        Ok(resource)
    }
}

impl<S: SyncAgent> Dispatch for SyncAdapter<S> {
    fn call(self: Arc<Self>, shared: Arc<Shared>, method: u32, request: Bytes) -> BoxFuture<Result<Answer, AgentError>> {
        Box::pin(async move {
            match method {
                method::V1_EXECUTE => {
                    let (ctx, task) = task_request(&shared, method, request)?;
                    Ok(crate::encode::execute_response(&self.execute(&ctx, task).await?).into())
                }
                method::V1_CREATE | method::V2_CREATE => {
                    let (ctx, task) = task_request(&shared, method, request)?;
                    Ok(encode_stored(self.execute(&ctx, task).await?).into())
                }
                method::V1_GET | method::V2_GET => {
                    let (ctx, m) = meta_request(&shared, method, request)?;
                    match stored(&m) {
                        Some(resource) => Ok(encode_get(ctx.protocol(), resource?).into()),
                        None => Err(AgentError::precondition(format!("resource meta was not written by {}", S::NAME))),
                    }
                }
                // Nothing runs after `execute` returned: deleting is always done.
                method::V1_DELETE | method::V2_DELETE => Ok(Answer::default()),
                method::V1_METRICS | method::V2_METRICS => Err(AgentError::unimplemented(format!("{} does not report metrics", S::NAME))),
                other => Err(AgentError::unimplemented(format!("method {other} is not served by {}", S::NAME))),
            }
        })
    }

    fn logs(self: Arc<Self>, _shared: Arc<Shared>, _method: u32, _request: Bytes) -> BoxFuture<Result<LogStream, AgentError>> {
        Box::pin(async { Err(AgentError::unimplemented(format!("{} does not serve logs", S::NAME))) })
    }
}

/// Encodes one item of a log stream: the header first, then one body per batch. Flyte 1 and
/// Flyte 2 number these fields alike, so one encoding serves both.
pub(crate) fn encode_log_header(token: &str) -> Vec<u8> {
    use admin::get_task_logs_response::Part;
    admin::GetTaskLogsResponse { part: Some(Part::Header(admin::GetTaskLogsResponseHeader { token: token.to_string() })) }.encode_to_vec()
}

#[allow(deprecated)] // `results` (plain strings) is deprecated; only `structured_lines` is filled.
pub(crate) fn encode_log_body(lines: Vec<admin::LogLine>) -> Vec<u8> {
    use admin::get_task_logs_response::Part;
    admin::GetTaskLogsResponse { part: Some(Part::Body(admin::GetTaskLogsResponseBody { results: Vec::new(), structured_lines: lines })) }
        .encode_to_vec()
}
