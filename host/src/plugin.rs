//! One loaded version of a plugin library, and calls into it.
//!
//! A `PluginVersion` is shared by `Arc`: the registry holds one while the version serves, and
//! every call in flight holds another. An upgrade swaps the registry's entry; calls already
//! running finish on the version they started on, and when the last `Arc` drops, the plugin's
//! `shutdown()` runs on a plain thread (it may block while the plugin's runtime winds down).
//!
//! So `shutdown()` never runs while a call of the host's is inside the version: a version whose
//! calls do not end is never shut down under them. The reloader reports such a version as
//! leaked once `loader.drain_deadline_ms` has passed since it was retired (see
//! [`crate::reload`]); its shutdown then runs when its last call ends (the server cap ends them,
//! unless `server.call_timeout_ms` is 0), or never. A call the host has given up on (client
//! deadline, server cap) no longer holds the version, even if the plugin's thread is still
//! stuck in it (blocking code cannot be cancelled): the plugin's shutdown is written for that
//! (it stops its runtime and leaves such a thread behind after a few seconds), and the
//! reloader reports the thread.

use std::{
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
    pin::Pin,
    sync::atomic::{AtomicI64, Ordering},
    task::{Context, Poll},
    time::SystemTime,
};

use abi_stable::std_types::{ROption, RResult};
use agent_plugin_abi::{FfiBytes, FfiStream, PluginError, PluginModRef, ERR_PANIC};
use agent_proto::agenthost::plugin::v1::{AgentDescriptor, PluginDescriptor};
use bytes::Bytes;

/// A loaded, initialised plugin library.
pub struct PluginVersion {
    module: PluginModRef,
    /// What the plugin said about itself.
    pub descriptor: PluginDescriptor,
    /// The operator's file it was loaded from.
    pub source: PathBuf,
    /// sha256 of the file content.
    pub sha256: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Load counter of this process: tells versions of the same file apart.
    pub generation: u64,
    /// Calls running in this version right now, per agent.
    in_flight: Box<[AtomicI64]>,
    /// Set once the plugin's `shutdown()` has returned (after the last `Arc` dropped).
    shutdown_returned: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginVersion")
            .field("name", &self.descriptor.name)
            .field("version", &self.descriptor.version)
            .field("generation", &self.generation)
            .finish()
    }
}

impl PluginVersion {
    pub(crate) fn new(
        module: PluginModRef,
        descriptor: PluginDescriptor,
        source: PathBuf,
        sha256: String,
        loaded_at: SystemTime,
        generation: u64,
    ) -> Self {
        let in_flight = descriptor.agents.iter().map(|_| AtomicI64::new(0)).collect();
        let shutdown_returned = Default::default();
        Self { module, descriptor, source, sha256, loaded_at, generation, in_flight, shutdown_returned }
    }

    /// An address in the library's code (for finding its mappings after it is retired).
    pub(crate) fn code_address(&self) -> usize {
        self.module.shutdown() as usize
    }

    /// Becomes true when the plugin's `shutdown()` has returned; outlives the version.
    pub(crate) fn shutdown_returned(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.shutdown_returned.clone()
    }

    /// Plugin name.
    pub fn name(&self) -> &str {
        &self.descriptor.name
    }

    /// Plugin version.
    pub fn version(&self) -> &str {
        &self.descriptor.version
    }

    /// Its agents.
    pub fn agents(&self) -> &[AgentDescriptor] {
        &self.descriptor.agents
    }

    /// Calls running in this version.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Calls running in agent number `agent`.
    pub fn agent_in_flight(&self, agent: usize) -> i64 {
        self.in_flight.get(agent).map(|c| c.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Counts a call into agent `agent` for as long as the returned slot lives; `None` when
    /// the agent already runs `limit` calls (0: no limit).
    pub fn enter(&self, agent: u32, limit: usize) -> Option<InFlight<'_>> {
        let counter = self.in_flight.get(agent as usize)?;
        let before = counter.fetch_add(1, Ordering::AcqRel);
        let slot = InFlight(counter);
        (limit == 0 || before < limit as i64).then_some(slot)
    }

    /// One unary call. The request bytes are lent to the plugin without a copy.
    pub async fn call(&self, agent: u32, method: u32, request: Bytes) -> Result<Bytes, PluginError> {
        let fut = (self.module.call())(agent, method, FfiBytes::new(request));
        match CatchUnwind(fut).await {
            Ok(RResult::ROk(bytes)) => Ok(Bytes::from_owner(bytes)),
            Ok(RResult::RErr(e)) => Err(e),
            Err(()) => Err(panicked()),
        }
    }

    /// The plugin runtime's statistics; `None` for plugins built for ABI 1.0 (no such export).
    pub fn runtime_stats(&self) -> Option<agent_proto::agenthost::plugin::v1::RuntimeStats> {
        let f = self.module.runtime_stats()?;
        let bytes = catch_unwind(|| f()).ok()?;
        prost::Message::decode(bytes.as_slice()).ok()
    }

    /// The ABI version the plugin was built for.
    pub fn abi(&self) -> String {
        format!("{}.{}", self.descriptor.abi_major, self.descriptor.abi_minor)
    }

    /// Opens a server stream.
    pub async fn open_stream(&self, agent: u32, method: u32, request: Bytes) -> Result<PluginStream, PluginError> {
        let fut = (self.module.open_stream())(agent, method, FfiBytes::new(request));
        match CatchUnwind(fut).await {
            Ok(RResult::ROk(stream)) => Ok(PluginStream(stream)),
            Ok(RResult::RErr(e)) => Err(e),
            Err(()) => Err(panicked()),
        }
    }
}

impl Drop for PluginVersion {
    fn drop(&mut self) {
        let shutdown = self.module.shutdown();
        let name = format!("{}@{}#{}", self.descriptor.name, self.descriptor.version, self.generation);
        let returned = self.shutdown_returned.clone();
        let spawned = std::thread::Builder::new().name("plugin-shutdown".into()).spawn(move || {
            if catch_unwind(|| shutdown()).is_err() {
                tracing::error!(plugin = %name, "plugin shutdown panicked");
            } else {
                tracing::debug!(plugin = %name, "plugin version retired");
            }
            returned.store(true, Ordering::Release);
        });
        match spawned {
            Ok(handle) => SHUTDOWNS.lock().unwrap_or_else(|p| p.into_inner()).push(handle),
            Err(e) => tracing::error!(error = %e, "cannot start a thread for a plugin's shutdown"),
        }
    }
}

/// Plugin shutdowns started and not yet joined.
static SHUTDOWNS: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> = std::sync::Mutex::new(Vec::new());

/// Waits (at most `timeout`) for the plugin shutdowns started so far; returns how many did not
/// finish in time.
pub fn join_shutdowns(timeout: std::time::Duration) -> usize {
    let deadline = std::time::Instant::now() + timeout;
    let handles = std::mem::take(&mut *SHUTDOWNS.lock().unwrap_or_else(|p| p.into_inner()));
    let mut late = 0;
    for h in handles {
        while !h.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if h.is_finished() {
            let _ = h.join();
        } else {
            late += 1;
        }
    }
    late
}

fn panicked() -> PluginError {
    PluginError { code: ERR_PANIC, message: "the plugin's future panicked while being polled".into() }
}

/// A call counted in flight while alive.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Polls a plugin future, turning a panic reported across the boundary into an error.
/// (The SDK catches panics itself; this guards plugins built some other way.)
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut self.0).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// A plugin's response stream; closed exactly once when dropped.
pub struct PluginStream(FfiStream);

impl std::fmt::Debug for PluginStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginStream")
    }
}

impl PluginStream {
    /// The next message, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, PluginError>> {
        // SAFETY: `state` is live until `close` (in Drop), and `&mut self` rules out
        // concurrent `next` calls.
        let fut = unsafe { (self.0.next)(self.0.state) };
        match CatchUnwind(fut).await {
            Ok(ROption::RSome(RResult::ROk(b))) => Some(Ok(Bytes::from_owner(b))),
            Ok(ROption::RSome(RResult::RErr(e))) => Some(Err(e)),
            Ok(ROption::RNone) => None,
            Err(()) => Some(Err(panicked())),
        }
    }
}

impl Drop for PluginStream {
    fn drop(&mut self) {
        // SAFETY: called once, after which the state is never used again.
        unsafe { (self.0.close)(self.0.state) }
    }
}
