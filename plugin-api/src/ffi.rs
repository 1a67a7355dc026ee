//! The plugin side of the ABI: what `export_plugin!` wires into the root module.
//!
//! A plugin library has its own copy of tokio (its own statics), so it cannot run on the host's
//! runtime: `init` starts a small runtime owned by this library, and calls run there. The host
//! gets an `FfiFuture` for each call; dropping it (client deadline, cancellation) aborts the
//! call. Panics never cross the boundary: every export runs under `catch_unwind`, and a
//! panicking call becomes an error naming the panic.
//!
//! Where a call runs: an agent that declares itself `NONBLOCKING` has the first step of each
//! call polled on the host's thread, inside this library's runtime context (so its timers, I/O
//! and spawns belong to the plugin runtime); only a call that has to wait is moved, as it is,
//! to the plugin runtime. Other agents' calls are spawned there at once. See [`Call`].

use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use abi_stable_types::{RErr, RNone, ROk, ROption, RResult, RSome, RString};
use agent_plugin_abi::{
    method, CallResult, FfiBytes, FfiFuture, FfiStream, FutureExt, HostServices, PluginError, ERR_AGENT, ERR_INVALID, ERR_NOT_FOUND,
    ERR_PANIC, ERR_PRECONDITION, ERR_UNIMPLEMENTED,
};
use bytes::Bytes;
use prost::Message;

use crate::{
    context::Shared,
    dispatch::{encode_log_body, encode_log_header, AsyncAdapter, BoxFuture, Dispatch, SyncAdapter},
    encode::Answer,
    flyte::admin::TaskCategory,
    AgentError, AsyncAgent, Context, ErrorKind, LogStream, Protocol, SyncAgent,
};
use agent_proto::agenthost::plugin::v1 as pb;

mod abi_stable_types {
    pub use agent_plugin_abi::__export::ROption::{RNone, RSome};
    pub use agent_plugin_abi::__export::{RErr, ROk, ROption, RResult, RString};
}

/// What `export_plugin!` declares about a plugin.
#[derive(Debug)]
pub struct PluginSpec {
    /// Plugin name.
    pub name: &'static str,
    /// Plugin version (the plugin crate's version).
    pub version: &'static str,
    /// Whether the plugin crate was compiled with `panic = "unwind"`.
    pub panic_unwind: bool,
    /// Its agents, in `call` index order.
    pub agents: &'static [AgentSpec],
}

/// One agent of a plugin.
#[derive(Debug)]
pub struct AgentSpec {
    name: &'static str,
    task_type: &'static str,
    task_type_version: i32,
    is_sync: bool,
    nonblocking: bool,
    build: fn(&Context) -> Result<Arc<dyn Dispatch>, AgentError>,
}

impl std::fmt::Debug for dyn Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dispatch")
    }
}

/// The spec of an asynchronous agent.
pub const fn async_agent<A: AsyncAgent>() -> AgentSpec {
    AgentSpec {
        name: A::NAME,
        task_type: A::TASK_TYPE,
        task_type_version: A::TASK_TYPE_VERSION,
        is_sync: false,
        nonblocking: A::NONBLOCKING,
        build: build_async::<A>,
    }
}

/// The spec of a synchronous agent.
pub const fn sync_agent<S: SyncAgent>() -> AgentSpec {
    AgentSpec {
        name: S::NAME,
        task_type: S::TASK_TYPE,
        task_type_version: S::TASK_TYPE_VERSION,
        is_sync: true,
        nonblocking: S::NONBLOCKING,
        build: build_sync::<S>,
    }
}

fn build_async<A: AsyncAgent>(ctx: &Context) -> Result<Arc<dyn Dispatch>, AgentError> {
    Ok(Arc::new(AsyncAdapter(A::new(ctx)?)))
}

fn build_sync<S: SyncAgent>(ctx: &Context) -> Result<Arc<dyn Dispatch>, AgentError> {
    Ok(Arc::new(SyncAdapter(S::new(ctx)?)))
}

/// The running plugin: set once by `init`.
struct Running {
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
    agents: Vec<Arc<dyn Dispatch>>,
    /// Per agent: whether its calls start on the caller's thread (see [`Call`]).
    inline: Vec<bool>,
}

static RUNNING: OnceLock<Running> = OnceLock::new();
/// The runtime itself, taken by `shutdown`.
static RUNTIME: Mutex<Option<tokio::runtime::Runtime>> = Mutex::new(None);

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

fn plugin_error(e: AgentError) -> PluginError {
    let code = match e.kind() {
        ErrorKind::InvalidInput => ERR_INVALID,
        ErrorKind::Precondition => ERR_PRECONDITION,
        ErrorKind::Unimplemented => ERR_UNIMPLEMENTED,
        _ => ERR_AGENT,
    };
    PluginError { code, message: RString::from(e.message()) }
}

fn err(code: u32, message: impl Into<String>) -> PluginError {
    PluginError { code, message: RString::from(message.into()) }
}

/// `describe`: the plugin descriptor.
pub fn describe(spec: &PluginSpec) -> FfiBytes {
    let d = pb::PluginDescriptor {
        name: spec.name.into(),
        version: spec.version.into(),
        abi_major: agent_plugin_abi::ABI_MAJOR,
        abi_minor: agent_plugin_abi::ABI_MINOR,
        panic_strategy: if spec.panic_unwind { "unwind" } else { "abort" }.into(),
        sdk_version: env!("CARGO_PKG_VERSION").into(),
        agents: spec
            .agents
            .iter()
            .map(|a| pb::AgentDescriptor {
                name: a.name.into(),
                categories: vec![TaskCategory { name: a.task_type.into(), version: a.task_type_version }],
                is_sync: a.is_sync,
                nonblocking: a.nonblocking,
            })
            .collect(),
    };
    FfiBytes::new(d.encode_to_vec())
}

/// `init`: starts the runtime, the log bridge and the agents.
pub fn init(spec: &'static PluginSpec, request: FfiBytes, host: HostServices) -> RResult<(), RString> {
    let result = catch_unwind(AssertUnwindSafe(|| init_inner(spec, request.as_slice(), host)));
    match result {
        Ok(Ok(())) => ROk(()),
        Ok(Err(e)) => RErr(RString::from(e)),
        Err(p) => RErr(RString::from(format!("init panicked: {}", panic_message(&*p)))),
    }
}

fn init_inner(spec: &'static PluginSpec, request: &[u8], host: HostServices) -> Result<(), String> {
    if RUNNING.get().is_some() {
        return Err("init was called twice on one library".into());
    }
    let req = pb::InitRequest::decode(request).map_err(|e| format!("init request does not decode: {e}"))?;
    crate::log::install(host, req.max_log_level);
    let config: serde_json::Value = if req.config_json.is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_str(&req.config_json).map_err(|e| format!("plugin config is not JSON: {e}"))?
    };
    let mut shared = Shared { config, ..Shared::default() };
    if !req.secrets_dir.is_empty() {
        shared.secrets_dir = req.secrets_dir.into();
    }
    if !req.secrets_env_prefix.is_empty() {
        shared.secrets_env_prefix = req.secrets_env_prefix;
    }
    let shared = Arc::new(shared);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(req.worker_threads.clamp(1, 64) as usize)
        .thread_name(format!("plugin-{}", spec.name))
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the plugin runtime: {e}"))?;
    let ctx = Context::new(shared.clone(), Protocol::V1);
    let agents = {
        let _entered = runtime.enter();
        spec.agents
            .iter()
            .map(|a| (a.build)(&ctx).map_err(|e| format!("agent {:?} failed to start: {e}", a.name)))
            .collect::<Result<Vec<_>, _>>()?
    };
    let handle = runtime.handle().clone();
    let inline = spec.agents.iter().map(|a| a.nonblocking && !req.no_inline_calls).collect();
    *RUNTIME.lock().unwrap_or_else(|p| p.into_inner()) = Some(runtime);
    RUNNING.set(Running { handle, shared, agents, inline }).map_err(|_| "init raced with itself".to_string())
}

/// Aborts the spawned task when the host drops the call's future.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn ready<T: Send + 'static>(value: T) -> FfiFuture<T> {
    async move { value }.into_ffi()
}

fn running_agent(agent: u32) -> Result<(&'static Running, Arc<dyn Dispatch>, bool), PluginError> {
    let running = RUNNING.get().ok_or_else(|| err(ERR_AGENT, "the plugin was not initialised"))?;
    let a = running.agents.get(agent as usize).ok_or_else(|| err(ERR_NOT_FOUND, format!("no agent number {agent}")))?;
    Ok((running, a.clone(), running.inline.get(agent as usize).copied().unwrap_or(false)))
}

/// One call of an agent, as the host awaits it.
///
/// It starts either `Inline` (a nonblocking agent): the host's first poll polls the agent's
/// future right there, inside the plugin runtime's context, and if that already finishes the
/// call, no other thread is involved. If it has to wait, the future (boxed, so it moves without
/// moving its pinned state) is spawned on the plugin runtime, which polls it again at once and
/// from then on; a wake-up the first poll registered with the host's waker is at worst one
/// spurious poll of this future. Or it starts `Spawned` (every other agent). Dropping a `Call`
/// drops the inline future or aborts the spawned task.
enum Call<T> {
    Inline(BoxFuture<Result<T, AgentError>>, tokio::runtime::Handle),
    Spawned { task: tokio::task::JoinHandle<Result<T, AgentError>>, _abort: AbortOnDrop },
    Finished,
}

impl<T: Send + 'static> Call<T> {
    fn new(running: &Running, fut: BoxFuture<Result<T, AgentError>>, inline: bool) -> Self {
        if inline {
            Call::Inline(fut, running.handle.clone())
        } else {
            Call::spawn(&running.handle, fut)
        }
    }

    fn spawn(handle: &tokio::runtime::Handle, fut: BoxFuture<Result<T, AgentError>>) -> Self {
        let task = handle.spawn(fut);
        let guard = AbortOnDrop(task.abort_handle());
        Call::Spawned { task, _abort: guard }
    }
}

impl<T: Send + 'static> std::future::Future for Call<T> {
    type Output = Result<T, PluginError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        // Every variant is `Unpin` (a box, a join handle), so the call can be moved out of.
        let this = self.get_mut();
        if let Call::Inline(fut, handle) = this {
            let polled = {
                let _entered = handle.enter();
                catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)))
            };
            match polled {
                Ok(Poll::Pending) => {
                    let Call::Inline(fut, handle) = std::mem::replace(this, Call::Finished) else { unreachable!() };
                    *this = Call::spawn(&handle, fut);
                }
                Ok(Poll::Ready(result)) => {
                    *this = Call::Finished;
                    return Poll::Ready(result.map_err(plugin_error));
                }
                Err(p) => {
                    *this = Call::Finished;
                    return Poll::Ready(Err(err(ERR_PANIC, format!("the agent panicked: {}", panic_message(&*p)))));
                }
            }
        }
        let Call::Spawned { task, .. } = this else {
            return Poll::Ready(Err(err(ERR_AGENT, "the call was polled after it finished")));
        };
        let result = match std::pin::Pin::new(task).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Ok(v))) => Ok(v),
            Poll::Ready(Ok(Err(e))) => Err(plugin_error(e)),
            Poll::Ready(Err(j)) if j.is_panic() => Err(err(ERR_PANIC, format!("the agent panicked: {}", panic_message(&*j.into_panic())))),
            Poll::Ready(Err(_)) => Err(err(ERR_AGENT, "the call was cancelled")),
        };
        *this = Call::Finished;
        Poll::Ready(result)
    }
}

/// An answer as the host will hold it: the host keeps it until HTTP/2 has sent the last byte,
/// and a buffer grown by doubling (a large meta written as it goes) can hold up to twice its
/// contents. Large answers with much room to spare are cut to size first: a shrinking
/// `realloc` keeps the block where it is (or remaps its pages), so nothing is copied. Measured
/// on echo's 1 MiB CreateTask at 64 streams (its 1.4 MiB answers had 2 MiB buffers): the host's
/// peak RSS went from 138–143 to 120–133 MiB (BENCHMARKS.md, ninth round).
fn without_slack(mut answer: Answer) -> Answer {
    const LARGE: usize = 64 * 1024;
    let buf = answer.buffer_mut();
    if buf.capacity() > LARGE && buf.capacity() - buf.len() > buf.len() / 8 {
        buf.shrink_to_fit();
    }
    answer
}

/// `call`: one unary RPC.
pub fn call(agent: u32, method: u32, request: FfiBytes) -> FfiFuture<CallResult> {
    let started = catch_unwind(AssertUnwindSafe(|| -> Result<_, PluginError> {
        let (running, dispatch, inline) = running_agent(agent)?;
        let fut = dispatch.call(running.shared.clone(), method, Bytes::from_owner(request));
        Ok(Call::new(running, fut, inline))
    }));
    match started {
        Ok(Ok(fut)) => async move {
            match fut.await {
                Ok(v) => ROk(FfiBytes::new(without_slack(v))),
                Err(e) => RErr(e),
            }
        }
        .into_ffi(),
        Ok(Err(e)) => ready(RErr(e)),
        Err(p) => ready(RErr(err(ERR_PANIC, format!("the plugin panicked: {}", panic_message(&*p))))),
    }
}

/// The state behind an [`FfiStream`]: the agent's log stream and where we are in it.
struct StreamState {
    handle: tokio::runtime::Handle,
    stream: Option<LogStream>,
    header_sent: bool,
}

unsafe extern "C" fn stream_next(state: *mut std::ffi::c_void) -> FfiFuture<ROption<CallResult>> {
    // SAFETY: `state` is the `Box<StreamState>` made by `open_stream`; the host calls `next`
    // only from one place at a time and never after `close`.
    let state = unsafe { &mut *state.cast::<StreamState>() };
    if !state.header_sent {
        state.header_sent = true;
        let token = state.stream.as_ref().map(|s| s.token.clone()).unwrap_or_default();
        return ready(RSome(ROk(FfiBytes::new(encode_log_header(&token)))));
    }
    let Some(mut stream) = state.stream.take() else { return ready(RNone) };
    // The receiver is moved into a task on the plugin runtime and comes back with the batch, so
    // the host's future owns nothing that borrows the state.
    let task = state.handle.spawn(async move {
        let item = stream.rx.recv().await;
        (stream, item)
    });
    let guard = AbortOnDrop(task.abort_handle());
    let state_ptr = state as *mut StreamState as usize;
    async move {
        let _guard = guard;
        match task.await {
            Ok((stream, item)) => {
                // SAFETY: the host awaits this future to completion before calling `next` or
                // `close` again, so the state is alive and not aliased.
                let state = unsafe { &mut *(state_ptr as *mut StreamState) };
                match item {
                    None => RNone,
                    Some(Ok(lines)) => {
                        state.stream = Some(stream);
                        RSome(ROk(FfiBytes::new(encode_log_body(lines))))
                    }
                    Some(Err(e)) => RSome(RErr(plugin_error(e))),
                }
            }
            Err(j) if j.is_panic() => RSome(RErr(err(ERR_PANIC, format!("the log stream panicked: {}", panic_message(&*j.into_panic()))))),
            Err(_) => RNone,
        }
    }
    .into_ffi()
}

unsafe extern "C" fn stream_close(state: *mut std::ffi::c_void) {
    // SAFETY: `state` is the `Box<StreamState>` made by `open_stream`, closed exactly once.
    let state = unsafe { Box::from_raw(state.cast::<StreamState>()) };
    // Dropping a receiver may touch the runtime's internals: do it inside it.
    let handle = state.handle.clone();
    let _entered = handle.enter();
    drop(state);
}

/// `open_stream`: a server-streaming RPC (GetTaskLogs).
pub fn open_stream(agent: u32, method: u32, request: FfiBytes) -> FfiFuture<RResult<FfiStream, PluginError>> {
    if method != method::V1_LOGS && method != method::V2_LOGS {
        return ready(RErr(err(ERR_UNIMPLEMENTED, format!("method {method} is not a stream"))));
    }
    let started = catch_unwind(AssertUnwindSafe(|| -> Result<_, PluginError> {
        let (running, dispatch, inline) = running_agent(agent)?;
        let fut = dispatch.logs(running.shared.clone(), method, Bytes::from_owner(request));
        Ok((running.handle.clone(), Call::new(running, fut, inline)))
    }));
    match started {
        Ok(Ok((handle, fut))) => async move {
            match fut.await {
                Ok(stream) => {
                    let state = Box::new(StreamState { handle, stream: Some(stream), header_sent: false });
                    ROk(FfiStream { state: Box::into_raw(state).cast(), next: stream_next, close: stream_close })
                }
                Err(e) => RErr(e),
            }
        }
        .into_ffi(),
        Ok(Err(e)) => ready(RErr(e)),
        Err(p) => ready(RErr(err(ERR_PANIC, format!("the plugin panicked: {}", panic_message(&*p))))),
    }
}

/// `runtime_stats` (ABI 1.1): the plugin runtime's alive tasks and workers.
pub fn runtime_stats() -> FfiBytes {
    let stats = catch_unwind(|| match RUNNING.get() {
        Some(r) => {
            let m = r.handle.metrics();
            pb::RuntimeStats { alive_tasks: m.num_alive_tasks() as u64, workers: m.num_workers() as u32 }
        }
        None => pb::RuntimeStats::default(),
    })
    .unwrap_or_default();
    FfiBytes::new(stats.encode_to_vec())
}

/// `shutdown`: stops the runtime, giving running tasks a moment to finish.
pub fn shutdown() {
    let _ = catch_unwind(|| {
        let runtime = RUNTIME.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rt) = runtime {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::without_slack;

    #[test]
    fn large_answers_lose_their_slack_and_others_are_left_alone() {
        let mut grown = Vec::with_capacity(2 << 20);
        grown.resize((1 << 20) + 300_000, 7u8);
        let len = grown.len();
        let mut cut = without_slack(grown.into());
        assert_eq!(cut.as_ref().len(), len);
        assert!(cut.as_ref().iter().all(|&b| b == 7), "the contents are kept");
        let cut = cut.buffer_mut();
        assert!(cut.capacity() - len <= len / 8, "capacity {} for {len} bytes", cut.capacity());
        let mut small = Vec::with_capacity(4096);
        small.push(1u8);
        assert_eq!(without_slack(small.into()).buffer_mut().capacity(), 4096, "small answers are not worth a realloc");
        let mut snug = Vec::with_capacity(200_000);
        snug.resize(190_000, 0u8);
        assert_eq!(without_slack(snug.into()).buffer_mut().capacity(), 200_000, "little room to spare is left as it is");
    }
}
