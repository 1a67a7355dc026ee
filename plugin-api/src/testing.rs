//! Run an agent in-process the way Flyte does, without Flyte: for the agent's own tests.
//!
//! A [`Harness`] builds the agent from a [`Context`] (its configuration and secrets) and drives
//! it like FlytePropeller (Flyte 1) or the Flyte 2 executor: `create`, then `get` until a
//! terminal phase (or `ExecuteTaskSync` for a sync agent on Flyte 1), `delete` on abort. Every
//! request is encoded and every answer decoded in the chosen protocol, through the same code
//! that serves the host's calls, so a test covers the wire path and the SDK's rules too (job
//! failures become phases, resource metadata round-trips through its versioned envelope, a sync
//! agent must answer with a terminal phase, an answer must fit propeller's 4 MiB limit).
//!
//! Like a loaded plugin, the harness runs the agent on its own tokio runtime: call it from a
//! plain `#[test]`, not from inside an async runtime.
//!
//! ```
//! use agent_plugin_api::{testing::Harness, AgentError, Context, Phase, Resource, SyncAgent, TaskRequest};
//!
//! struct Double;
//!
//! impl SyncAgent for Double {
//!     const NAME: &'static str = "Double";
//!     const TASK_TYPE: &'static str = "double";
//!
//!     fn new(_ctx: &Context) -> Result<Self, AgentError> {
//!         Ok(Double)
//!     }
//!
//!     async fn execute(&self, _ctx: &Context, task: TaskRequest) -> Result<Resource, AgentError> {
//!         let x: i64 = task.input("x")?;
//!         Ok(Resource::succeeded(Default::default()).with_output("y", 2 * x))
//!     }
//! }
//!
//! let harness = Harness::for_sync::<Double>(Context::for_tests(serde_json::json!({}))).unwrap();
//! let done = harness.run(TaskRequest::new("double").with_input("x", 21)).unwrap();
//! assert_eq!(done.phase, Phase::Succeeded);
//! assert_eq!(done.outputs.unwrap().read::<i64>("y").unwrap(), 42);
//!
//! // A wrong input fails the task for good, with a message naming the input.
//! let failed = harness.run(TaskRequest::new("double").with_input("x", "one")).unwrap();
//! assert_eq!((failed.phase, &*failed.message), (Phase::Failed, "input `x`: expected integer, found string"));
//! ```

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use agent_plugin_abi::method;
use agent_proto::{agenthost::plugin::v1 as pb, flyteidl2};
use bytes::Bytes;
use prost::Message;

use crate::{
    context::Shared,
    dispatch::{from_v1, from_v2, AsyncAdapter, Dispatch, SyncAdapter},
    flyte::{
        admin,
        core::{self, Identifier, NodeExecutionIdentifier, TaskExecutionIdentifier, WorkflowExecutionIdentifier},
    },
    wire, AgentError, AsyncAgent, Context, Protocol, Resource, SyncAgent, TaskRequest,
};

/// The largest response propeller's gRPC client accepts (grpc-go's default).
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Drives one agent in-process, as Flyte would. See the [module docs](self).
pub struct Harness {
    agent: Arc<dyn Dispatch>,
    shared: Arc<Shared>,
    secrets: BTreeMap<String, String>,
    configs: BTreeMap<String, String>,
    name: &'static str,
    task_type: &'static str,
    task_type_version: i32,
    is_sync: bool,
    protocol: Protocol,
    poll_interval: Duration,
    max_polls: u32,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("agent", &self.name).field("protocol", &self.protocol).finish_non_exhaustive()
    }
}

/// A job started by [`Harness::create`]: the resource meta Flyte would keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The bytes `create` answered (what Flyte stores and sends back with each GetTask).
    pub resource_meta: Vec<u8>,
    /// The output prefix of the attempt (sent again with each GetTask).
    pub output_prefix: String,
}

impl Job {
    /// A job from stored metadata, e.g. bytes written by an older version of the agent, to
    /// test that this version still reads them.
    pub fn from_meta(resource_meta: impl Into<Vec<u8>>) -> Self {
        Self { resource_meta: resource_meta.into(), output_prefix: String::new() }
    }
}

/// Runs `future` to completion on `runtime`, turning a panic into an error as the plugin's
/// panic guard does.
fn block_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = Result<T, AgentError>> + Send + 'static,
) -> Result<T, AgentError> {
    runtime.block_on(async move {
        match tokio::spawn(future).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let text = payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned());
                Err(AgentError::new(format!("the agent panicked: {}", text.unwrap_or_else(|| "a panic with a non-text payload".into()))))
            }
            Err(_) => Err(AgentError::new("the call was cancelled")),
        }
    })
}

/// One protobuf message re-read as another with the same wire shape (Flyte 1 core types as
/// Flyte 2's).
fn convert<A: Message, B: Message + Default>(a: &A) -> B {
    B::decode(a.encode_to_vec().as_slice()).expect("Flyte 1 and Flyte 2 core messages share their wire shape")
}

impl Harness {
    fn build(
        ctx: Context,
        spec: (&'static str, &'static str, i32, bool),
        make: impl FnOnce(&Context) -> Result<Arc<dyn Dispatch>, AgentError>,
    ) -> Result<Self, AgentError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("harness-{}", spec.1))
            .enable_all()
            .build()
            .map_err(|e| AgentError::new(format!("cannot start the harness runtime: {e}")))?;
        let agent = {
            let _entered = runtime.enter();
            make(&Context::new(ctx.shared.clone(), Protocol::V1))?
        };
        Ok(Self {
            agent,
            shared: ctx.shared,
            secrets: ctx.secrets,
            configs: ctx.configs,
            name: spec.0,
            task_type: spec.1,
            task_type_version: spec.2,
            is_sync: spec.3,
            protocol: Protocol::V1,
            poll_interval: Duration::from_millis(10),
            max_polls: 1000,
            runtime,
        })
    }

    /// A harness for an async agent, built with `A::new(&ctx)`. `ctx` carries the plugin's
    /// configuration ([`Context::for_tests`]), the secrets directory, and the connection
    /// secrets that Flyte 2 would send ([`Context::with_secret`]; Flyte 1 sends none).
    pub fn for_async<A: AsyncAgent>(ctx: Context) -> Result<Self, AgentError> {
        Self::build(ctx, (A::NAME, A::TASK_TYPE, A::TASK_TYPE_VERSION, false), |c| Ok(Arc::new(AsyncAdapter(A::new(c)?))))
    }

    /// A harness for a sync agent, built with `S::new(&ctx)` (see [`Harness::for_async`]).
    pub fn for_sync<S: SyncAgent>(ctx: Context) -> Result<Self, AgentError> {
        Self::build(ctx, (S::NAME, S::TASK_TYPE, S::TASK_TYPE_VERSION, true), |c| Ok(Arc::new(SyncAdapter(S::new(c)?))))
    }

    /// Speaks this protocol (default: Flyte 1). On Flyte 2 a sync agent is driven through
    /// CreateTask and GetTask, as the Flyte 2 executor does.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Time between two GetTask calls (default 10 ms; propeller waits 30 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Most GetTask calls [`Harness::run`] makes before giving up (default 1000).
    pub fn max_polls(mut self, polls: u32) -> Self {
        self.max_polls = polls.max(1);
        self
    }

    /// Runs a task to the end: `execute` for a sync agent on Flyte 1, else `create` and then
    /// `get` until a terminal phase. Returns the final resource; an `Err` is what Flyte would
    /// see as a failed call (an error status), or the agent still not done after
    /// [`Harness::max_polls`].
    pub fn run(&self, task: TaskRequest) -> Result<Resource, AgentError> {
        if self.is_sync && self.protocol == Protocol::V1 {
            return self.execute(task);
        }
        let job = self.create(task)?;
        let mut last = None;
        for poll in 0..self.max_polls {
            if poll > 0 {
                std::thread::sleep(self.poll_interval);
            }
            let resource = self.get(&job)?;
            if resource.is_terminal() {
                return Ok(resource);
            }
            last = Some(resource.phase);
        }
        Err(AgentError::new(format!(
            "{} still in phase {} after {} GetTask calls",
            self.name,
            last.map(|p| p.as_str_name()).unwrap_or("?"),
            self.max_polls
        )))
    }

    /// Fills in what Flyte always sends: the task type and version, a task execution id.
    fn complete(&self, mut task: TaskRequest) -> TaskRequest {
        if task.task_type().is_empty() {
            let template = task.template_mut();
            template.r#type = self.task_type.into();
            template.task_type_version = self.task_type_version;
        }
        let task_type = task.task_type().to_string();
        let metadata = task.metadata_mut();
        if metadata.task_execution_id.is_none() {
            let execution = WorkflowExecutionIdentifier {
                project: "test-project".into(),
                domain: "development".into(),
                name: "test-execution".into(),
                ..Default::default()
            };
            metadata.task_execution_id = Some(TaskExecutionIdentifier {
                task_id: Some(Identifier {
                    name: task_type,
                    project: execution.project.clone(),
                    domain: execution.domain.clone(),
                    ..Default::default()
                }),
                node_execution_id: Some(NodeExecutionIdentifier { node_id: "n0".into(), execution_id: Some(execution) }),
                retry_attempt: 0,
            });
            metadata.namespace = "test-project-development".into();
        }
        task
    }

    fn call(&self, method: u32, request: Vec<u8>) -> Result<Vec<u8>, AgentError> {
        let (agent, shared) = (self.agent.clone(), self.shared.clone());
        block_on(&self.runtime, agent.call(shared, method, Bytes::from(request))).map(crate::encode::Answer::into_vec)
    }

    fn connection(&self) -> Option<flyteidl2::core::Connection> {
        Some(flyteidl2::core::Connection { task_type: self.task_type.into(), secrets: self.secrets.clone(), configs: self.configs.clone() })
    }

    fn check_size(&self, rpc: &str, response: &[u8]) -> Result<(), AgentError> {
        if response.len() > MAX_RESPONSE_BYTES {
            return Err(AgentError::new(format!(
                "{}: the {rpc} response is {} bytes; propeller's client refuses more than {MAX_RESPONSE_BYTES}: \
                 write large outputs to <output_prefix>/outputs.pb instead of answering them inline",
                self.name,
                response.len()
            )));
        }
        Ok(())
    }

    /// Flyte 1 `ExecuteTaskSync` (a sync agent).
    pub fn execute(&self, task: TaskRequest) -> Result<Resource, AgentError> {
        let mut task = self.complete(task);
        let request = pb::ExecuteRequest {
            header: Some(admin::CreateRequestHeader {
                template: Some(std::mem::take(task.template_mut())),
                output_prefix: task.output_prefix().to_string(),
                task_execution_metadata: Some(std::mem::take(task.metadata_mut())),
                max_dataset_size_bytes: 0,
            }),
            inputs: Some(task.inputs_mut().to_literal_map()),
        };
        let response = self.call(method::V1_EXECUTE, request.encode_to_vec())?;
        self.check_size("ExecuteTaskSync", &response)?;
        let decoded = admin::ExecuteTaskSyncResponse::decode(response.as_slice())
            .map_err(|e| AgentError::new(format!("the ExecuteTaskSync response does not decode: {e}")))?;
        match decoded.res {
            Some(admin::execute_task_sync_response::Res::Header(h)) => Ok(from_v1(h.resource.unwrap_or_default())),
            _ => Err(AgentError::new("the ExecuteTaskSync response has no header (propeller: \"expected header\")")),
        }
    }

    /// `CreateTask`: starts the task and returns the job Flyte would keep.
    pub fn create(&self, task: TaskRequest) -> Result<Job, AgentError> {
        let mut task = self.complete(task);
        let output_prefix = task.output_prefix().to_string();
        let (method, request) = match self.protocol {
            Protocol::V1 => {
                let r = admin::CreateTaskRequest {
                    inputs: Some(task.inputs_mut().to_literal_map()),
                    template: Some(std::mem::take(task.template_mut())),
                    output_prefix: output_prefix.clone(),
                    task_execution_metadata: Some(std::mem::take(task.metadata_mut())),
                };
                (method::V1_CREATE, r.encode_to_vec())
            }
            Protocol::V2 => {
                let literals = task
                    .inputs_mut()
                    .iter()
                    .map(|(name, l)| flyteidl2::task::NamedLiteral { name: name.into(), value: Some(convert::<core::Literal, _>(l)) })
                    .collect();
                let r = flyteidl2::connector::CreateTaskRequest {
                    inputs: Some(flyteidl2::task::Inputs { literals, context: Vec::new() }),
                    template: Some(convert(task.template_mut())),
                    output_prefix: output_prefix.clone(),
                    task_execution_metadata: Some(convert(task.metadata_mut())),
                    connection: self.connection(),
                };
                (method::V2_CREATE, r.encode_to_vec())
            }
        };
        let response = self.call(method, request)?;
        let created = admin::CreateTaskResponse::decode(response.as_slice())
            .map_err(|e| AgentError::new(format!("the CreateTask response does not decode: {e}")))?;
        Ok(Job { resource_meta: created.resource_meta.to_vec(), output_prefix })
    }

    /// One `GetTask`.
    pub fn get(&self, job: &Job) -> Result<Resource, AgentError> {
        let response = match self.protocol {
            Protocol::V1 => {
                #[allow(deprecated)] // propeller still fills the deprecated `task_type`.
                let r = admin::GetTaskRequest {
                    task_type: self.task_type.into(),
                    resource_meta: job.resource_meta.clone().into(),
                    task_category: Some(admin::TaskCategory { name: self.task_type.into(), version: self.task_type_version }),
                    output_prefix: job.output_prefix.clone(),
                };
                self.call(method::V1_GET, r.encode_to_vec())?
            }
            Protocol::V2 => {
                let r = flyteidl2::connector::GetTaskRequest {
                    resource_meta: job.resource_meta.clone().into(),
                    task_category: Some(flyteidl2::connector::TaskCategory {
                        name: self.task_type.into(),
                        version: self.task_type_version,
                    }),
                    output_prefix: job.output_prefix.clone(),
                    connection: self.connection(),
                };
                self.call(method::V2_GET, r.encode_to_vec())?
            }
        };
        self.check_size("GetTask", &response)?;
        let decode_error = |e: prost::DecodeError| AgentError::new(format!("the GetTask response does not decode: {e}"));
        Ok(match self.protocol {
            Protocol::V1 => {
                from_v1(admin::GetTaskResponse::decode(response.as_slice()).map_err(decode_error)?.resource.unwrap_or_default())
            }
            Protocol::V2 => from_v2(wire::GetResponseV2::decode(response.as_slice()).map_err(decode_error)?.resource.unwrap_or_default()),
        })
    }

    /// One `DeleteTask`.
    pub fn delete(&self, job: &Job) -> Result<(), AgentError> {
        let (method, request) = match self.protocol {
            Protocol::V1 => {
                #[allow(deprecated)]
                let r = admin::DeleteTaskRequest {
                    task_type: self.task_type.into(),
                    resource_meta: job.resource_meta.clone().into(),
                    task_category: Some(admin::TaskCategory { name: self.task_type.into(), version: self.task_type_version }),
                };
                (method::V1_DELETE, r.encode_to_vec())
            }
            Protocol::V2 => {
                let r = flyteidl2::connector::DeleteTaskRequest {
                    resource_meta: job.resource_meta.clone().into(),
                    task_category: Some(flyteidl2::connector::TaskCategory {
                        name: self.task_type.into(),
                        version: self.task_type_version,
                    }),
                    connection: self.connection(),
                };
                (method::V2_DELETE, r.encode_to_vec())
            }
        };
        self.call(method, request).map(drop)
    }

    /// Aborts a job as propeller does: `DeleteTask`, then `DeleteTask` again (propeller repeats
    /// an abort until it succeeds, and a delete must succeed when the job is already gone).
    pub fn abort(&self, job: &Job) -> Result<(), AgentError> {
        self.delete(job)?;
        self.delete(job).map_err(|e| e.context("a second DeleteTask (the job already deleted) must succeed too"))
    }
}
