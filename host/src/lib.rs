//! agent-host: a Flyte agent (connector) server whose agents are native plugins.
//!
//! The process serves Flyte 1's `flyteidl.service.*AgentService` and Flyte 2's
//! `flyteidl2.connector.*` services on one port, and runs the agents from `.so` plugin
//! libraries built against `agent-plugin-api`. How the parts fit:
//!
//! * [`config`]: the layered TOML configuration;
//! * [`loader`]: private copy → child-process check → in-process load of one library;
//! * [`verify`]: permission checks and authenticity (allowlist, minisign) of plugin files;
//! * [`plugin`]: a loaded version, and calls into it across the ABI;
//! * [`registry`]: which version serves which task type, swapped atomically;
//! * [`reload`]: following the plugin directory (load, upgrade, remove while serving);
//! * [`scan`]: the plugin directory's files, and the per-file status;
//! * [`route`] and [`rpc`]: the routing fields of each request, and the RPCs by path;
//! * [`service`] and [`grpc`]: what each RPC does, and tonic's plumbing around it;
//! * [`framing`]: gRPC messages in and out of calls answered with one message, framed by the
//!   host (the log stream goes through tonic);
//! * [`admin`] and [`status`]: the metrics port (`/plugins`, `/healthz`), and the CLI view of it;
//! * [`metrics`]: Prometheus metrics (flytekit's families and the host's own);
//! * [`shutdown`]: draining at SIGTERM, bounded by the grace period;
//! * [`tls`]: TLS and mutual TLS on the gRPC port, certificates reloaded on change;
//! * [`error`]: the one mapping from failures to gRPC statuses.
//!
//! [`run`] is the testable entry point: it serves on listeners the caller bound, until the
//! `shutdown` future completes.

pub mod admin;
pub mod background;
pub mod batching;
pub mod check;
pub mod config;
pub mod error;
pub mod exec;
pub mod framing;
pub mod grpc;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod plugin;
pub mod registry;
pub mod reload;
pub mod route;
pub mod rpc;
pub mod scan;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod tls;
pub mod verify;

use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::{
    config::Config,
    grpc::{Limits, Router},
    loader::{Loader, LoaderSettings},
    reload::Reloader,
    scan::FileStatus,
    service::Service,
    shutdown::Shutdown,
};

/// Everything the running host shares between its tasks.
#[derive(Debug)]
pub struct Host {
    /// The configuration it runs with.
    pub config: Config,
    /// Request serving.
    pub service: Arc<Service>,
    /// The plugin loader.
    pub loader: Loader,
    /// The status of each plugin file.
    pub statuses: Mutex<BTreeMap<PathBuf, FileStatus>>,
    /// Versions replaced or removed whose calls are still running (plugin, version,
    /// generation, calls in flight), as of the last rescan.
    pub draining: Mutex<Vec<(String, String, u64, i64)>>,
    /// Retired versions that still held calls, threads or their shutdown at the drain
    /// deadline, as of the last check (see [`reload`]).
    pub leaked: Mutex<Vec<reload::Leak>>,
    /// How the plugin directory is followed now (inotify, or polling).
    pub watch: Mutex<reload::WatchStatus>,
    /// Starts the drain at shutdown (the service holds the receiving side).
    pub shutdown: Shutdown,
    /// Readiness, as the gRPC health status "" says it (for `/readyz`, which a plain HTTP
    /// probe can read also when the gRPC port speaks TLS).
    pub ready: std::sync::atomic::AtomicBool,
    /// A [`Host::settle_memory`] is scheduled and has not run yet.
    settle_pending: Arc<std::sync::atomic::AtomicBool>,
}

/// Why the host could not run.
#[derive(Debug)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

fn max_log_level(filter: &str) -> u32 {
    let f = filter.to_ascii_lowercase();
    if f.contains("trace") {
        5
    } else if f.contains("debug") {
        4
    } else if f.contains("info") {
        3
    } else if f.contains("warn") {
        2
    } else if f.contains("error") {
        1
    } else {
        3
    }
}

impl Host {
    /// A host for `config`; `check_exe` is the `agent-host` binary that runs plugin checks.
    pub fn new(config: Config, check_exe: PathBuf) -> Arc<Host> {
        let settings = LoaderSettings {
            work_dir: config.work_dir(),
            check_exe,
            check_timeout: Duration::from_millis(config.loader.check_timeout_ms),
            worker_threads: config.loader.worker_threads,
            no_inline_calls: !config.loader.inline_calls,
            background_nice: config.loader.background_nice,
            secrets_dir: config.secrets.dir.display().to_string(),
            secrets_env_prefix: config.secrets.env_prefix.clone(),
            max_log_level: max_log_level(&config.log.level),
            files: verify::FilePolicy::new(&config.permissions, &config.loader.plugin_dir, &config.verify),
            // Config::load validated it; a configuration built by hand must be valid too.
            verifier: Arc::new(verify::Verifier::new(&config.verify).unwrap_or_else(|e| panic!("invalid [verify] configuration: {e}"))),
        };
        let (shutdown, drain) = Shutdown::new();
        let service = Service::new(config.server.max_calls_per_agent, drain);
        Arc::new(Host {
            loader: Loader::new(settings),
            service: Arc::new(service),
            statuses: Mutex::new(BTreeMap::new()),
            draining: Mutex::new(Vec::new()),
            leaked: Mutex::new(Vec::new()),
            watch: Mutex::new(reload::WatchStatus::default()),
            shutdown,
            ready: std::sync::atomic::AtomicBool::new(false),
            settle_pending: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            config,
        })
    }

    /// The gauges of `/metrics`, read from the current state.
    pub fn gauges(&self) -> metrics::Gauges {
        let snapshot = self.service.registry.snapshot();
        let in_flight = snapshot
            .plugins
            .iter()
            .flat_map(|p| p.agents().iter().enumerate().map(move |(i, a)| (p.name().to_string(), a.name.clone(), p.agent_in_flight(i))))
            .collect();
        metrics::Gauges {
            plugins_serving: snapshot.plugins.len(),
            mapped_libraries: self.loader.mapped_libraries(),
            draining_versions: self.draining.lock().unwrap_or_else(|p| p.into_inner()).len(),
            in_flight,
            leaked_generations: self.leaked.lock().unwrap_or_else(|p| p.into_inner()).len(),
            watch_mode: self.watch.lock().unwrap_or_else(|p| p.into_inner()).mode,
        }
    }

    /// Records the draining versions (see [`Host::draining`]).
    pub fn set_draining(&self, draining: Vec<(String, String, u64, i64)>) {
        *self.draining.lock().unwrap_or_else(|p| p.into_inner()) = draining;
    }

    /// The first scan: loads every plugin of the directory, waiting (a bounded time) for files
    /// still being written to settle.
    pub async fn first_scan(&self, reloader: &mut Reloader) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let report = reloader.rescan(self).await;
            if report.pending.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(self.config.loader.stable_ms.clamp(10, 1000) / 2 + 10)).await;
        }
        self.loader.serving();
        self.settle_memory(true);
    }

    /// After loads: once the new plugins' threads have started, unmap the code pages that loading
    /// touched and serving does not use (see [`memory::drop_clean_library_pages`]). After the
    /// first scan this includes the host's own code (start-up touched much of it once); after a
    /// reload only the plugin copies, at most once per 5 s, because dropping the serving path's
    /// own pages would make the calls right after every reload fault them back in.
    pub fn settle_memory(&self, first_scan: bool) {
        use std::sync::atomic::Ordering;
        if self.settle_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let (dir, pending) = (self.config.work_dir(), self.settle_pending.clone());
        let delay = Duration::from_millis(if first_scan { 200 } else { 5000 });
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            pending.store(false, Ordering::Release);
            // At full priority, not in the background: the trim holds allocator arena locks,
            // and reading smaps the address space's lock, that serving threads also take.
            let _ = tokio::task::spawn_blocking(move || {
                memory::release_free_memory();
                let dropped = memory::drop_clean_library_pages(&dir, first_scan);
                tracing::debug!(dropped_kib = dropped / 1024, "unmapped the code pages that loading touched");
            })
            .await;
        });
    }
}

/// Serves until `shutdown` completes: gRPC on `grpc`, the admin endpoints on `admin`.
///
/// Health is NOT_SERVING until the first scan of the plugin directory has finished, then
/// SERVING for `""` and every served service, whatever the scan found (a bad plugin is reported,
/// not fatal; an empty directory serves no agents).
pub async fn run(
    host: Arc<Host>,
    grpc: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in std::iter::once("").chain(rpc::service::ALL) {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(agent_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RunError(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(agent_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| RunError(format!("reflection: {e}")))?;

    let server_cfg = &host.config.server;
    let tls = match server_cfg.tls.clone() {
        Some(files) => Some(tls::Tls::new(files).map_err(|e| RunError(format!("TLS: {e}")))?),
        None => None,
    };
    let limits = Limits {
        max_message_bytes: server_cfg.max_message_bytes,
        call_timeout: (server_cfg.call_timeout_ms > 0).then(|| Duration::from_millis(server_cfg.call_timeout_ms)),
    };
    let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(millis(server_cfg.keepalive_interval_ms))
        .http2_keepalive_timeout(millis(server_cfg.keepalive_timeout_ms));
    if let Some(age) = millis(server_cfg.max_connection_age_ms) {
        builder = builder.max_connection_age(age);
    }

    // Shutdown: NOT_SERVING at once, stop accepting (tonic drops the listener), let calls in
    // flight finish, and end what still runs when the grace period is over.
    let grace = Duration::from_millis(server_cfg.shutdown_grace_ms);
    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let (host, reporter) = (host.clone(), reporter.clone());
        tokio::spawn(async move {
            shutdown.await;
            host.shutdown.start_draining();
            host.ready.store(false, std::sync::atomic::Ordering::SeqCst);
            for name in std::iter::once("").chain(rpc::service::ALL) {
                reporter.set_service_status(name, ServingStatus::NotServing).await;
            }
            tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: NOT_SERVING, no new connections, draining calls in flight");
            let _ = stop_accepting.send(());
            tokio::time::sleep(grace).await;
            tracing::warn!("shutdown grace period over: ending the calls still in flight with UNAVAILABLE");
            host.shutdown.stop_now();
        })
    };

    let router = Router::new(host.service.clone(), limits).with(health).with(reflection_v1).with(reflection_v1alpha);
    let stop_accepting = async move {
        let _ = accepting_stopped.await;
    };
    let batch_writes = server_cfg.batch_writes;
    let server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        // TCP_NODELAY, as `Server::serve` would set: tonic ignores its `tcp_nodelay` with a
        // caller's listener, and with Nagle on, small answers wait for the peer's delayed ACK
        // (a p99 of ~40 ms on loopback; measured in BENCHMARKS.md).
        None => Box::pin(builder.serve_with_incoming_shutdown(
            router,
            tokio_stream::StreamExt::map(tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)), move |io| {
                io.map(|io| batching::Batched::new(io, batch_writes))
            }),
            stop_accepting,
        )),
        Some(tls) => Box::pin(builder.serve_with_incoming_shutdown(
            router,
            tokio_stream::StreamExt::map(tls::incoming(grpc, tls), move |io| io.map(|io| batching::Batched::new(io, batch_writes))),
            stop_accepting,
        )),
    };

    if let Some(listener) = admin {
        let host = host.clone();
        tokio::spawn(async move {
            if let Err(e) = admin::serve(host, listener).await {
                tracing::error!(error = %e, "the admin endpoint stopped");
            }
        });
    }

    let idle_trim = tokio::spawn(memory::trim_when_idle(host.service.clone(), Duration::from_secs(2)));

    let (stop_watch, watch_stopped) = tokio::sync::watch::channel(false);
    let loading = {
        let host = host.clone();
        async move {
            let mut reloader = Reloader::default();
            host.first_scan(&mut reloader).await;
            // A shutdown that came during the first scan wins: never flip back to SERVING.
            if !host.service.drain.is_draining() {
                for name in std::iter::once("").chain(rpc::service::ALL) {
                    reporter.set_service_status(name, ServingStatus::Serving).await;
                }
                host.ready.store(!host.service.drain.is_draining(), std::sync::atomic::Ordering::SeqCst);
            }
            let serving = host.service.registry.snapshot().plugins.len();
            tracing::info!(plugins = serving, "first plugin scan done; serving");
            tokio::spawn(reload::watch(host, reloader, watch_stopped));
            reporter
        }
    };
    let loading = tokio::spawn(loading);
    // The server ends when its connections are done; but a client may hold a connection open
    // with a stream that never ends (a health Watch). So once draining has started and no Flyte
    // call is left (or the grace period is over), give the last answers a moment and stop.
    let drained = {
        let service = host.service.clone();
        async move {
            service.drain.draining().await;
            let deadline = async { service.drain.stopped().await };
            tokio::pin!(deadline);
            loop {
                if service.active_calls() == 0 {
                    break;
                }
                tokio::select! {
                    () = &mut deadline => break,
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let served = tokio::select! {
        r = server => r,
        () = drained => Ok(()),
    };
    loading.abort();
    signal.abort();
    idle_trim.abort();
    let _ = stop_watch.send(true);
    // Retire every plugin version and give their shutdown hooks a moment.
    host.service.registry.store(registry::Snapshot::default());
    let late = tokio::task::spawn_blocking(|| plugin::join_shutdowns(Duration::from_secs(5))).await.unwrap_or(0);
    if late > 0 {
        tracing::warn!(plugins = late, "plugin shutdown hooks still running at exit");
    }
    tracing::info!("agent-host stopped");
    served.map_err(|e| RunError(format!("gRPC server: {e}")))
}
