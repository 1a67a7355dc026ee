//! Following the plugin directory: new, upgraded and removed plugins, while serving.
//!
//! Every trigger means the same thing, "rescan": a `notify` event on the directory (events are
//! not trusted for detail: Kubernetes volume updates swap a `..data` symlink and raise events for
//! it, never for the plugin file), the periodic rescan, `SIGHUP`, or, in poll mode (network
//! volumes where inotify sees nothing), the poll interval. A rescan compares each `*.so` file's
//! fingerprint (device, inode, size, mtime, following symlinks) with the last one processed.
//!
//! A changed file is taken only when stable: unmodified for `stable_ms` (by its mtime, or by
//! having kept the same fingerprint that long), and unchanged across the read. Then:
//! same content as serving → nothing; content refused before → nothing; otherwise load beside
//! the serving version and swap the registry in one step. A failure at any step leaves the
//! serving version untouched and is reported (log, `/plugins`). A removed file's agents stop
//! being offered; calls in flight finish on the version they hold.
//!
//! A replaced or removed version is *retired*: it finishes its calls, then its `shutdown()`
//! runs (see [`crate::plugin`]). `loader.drain_deadline_ms` after it was retired it is
//! examined once: if it still holds calls (or is otherwise still referenced, e.g. by an open
//! log stream), its shutdown has not returned, or threads it started are still running, it is
//! logged as "retired with a leak", counted in `agent_host_generations_leaked_total`, and listed
//! under `leaked` in `/plugins` (examined again every drain deadline; logged once more when it
//! lets go). Its library stays mapped either way (libraries are never unmapped). Which threads
//! a version started is read from `/proc` (module `threads`, with its limits).
//!
//! If the inotify watch cannot be set up (the watch or instance limit is exhausted, or the
//! file system does not support it), the directory is polled every `loader.poll_interval_ms`
//! instead, with a warning; `/plugins` (`watch`) and `agent_host_watch_mode` say so, and the
//! watch is tried again at every periodic rescan.

mod threads;

use std::{
    any::Any,
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Weak,
    },
    time::{Duration, Instant, SystemTime},
};

use futures_util::StreamExt;
use sha2::Digest;
use tokio::sync::mpsc;

use crate::{
    config::WatchMode,
    loader::{LoadError, PluginFile, Prepared},
    plugin::PluginVersion,
    scan::{self, FileStatus},
    Host,
};

/// What identifies a file's content without reading it: also its owner and mode (a `chmod`
/// that fixes a refused file's permissions is a change), and its signature file's identity (a
/// signature added next to a refused unsigned file is a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    mode: u32,
    uid: u32,
    gid: u32,
    signature: Option<(u64, u64, i128)>,
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

impl Fingerprint {
    fn of(path: &Path) -> std::io::Result<Fingerprint> {
        let m = std::fs::metadata(path)?;
        let signature = std::fs::metadata(crate::verify::signature_path(path)).ok().map(|s| (s.ino(), s.size(), mtime_ns(&s)));
        Ok(Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: mtime_ns(&m),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            signature,
        })
    }

    fn age(&self) -> Option<Duration> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok()?.as_nanos() as i128;
        let age = now - self.mtime_ns;
        (age >= 0).then(|| Duration::from_nanos(age.min(u64::MAX as i128) as u64))
    }
}

/// What the reloader remembers of one file.
#[derive(Debug, Default)]
struct Tracked {
    /// The fingerprint last taken (loaded, refused or found identical).
    processed: Option<Fingerprint>,
    /// A changed fingerprint waiting to be stable, and since when it has been seen.
    pending: Option<(Fingerprint, Instant)>,
    /// Content hashes refused for this path (not retried until the content changes).
    refused: Option<String>,
}

/// Where the running thread census sends its answer.
type CensusAnswer = tokio::sync::oneshot::Receiver<Result<threads::Census, String>>;

/// A replaced or removed version, followed until it has let go of everything (or forever,
/// when it never does).
#[derive(Debug)]
struct Retired {
    version: Weak<PluginVersion>,
    plugin: String,
    version_name: String,
    generation: u64,
    retired_at: SystemTime,
    /// When to examine it next: the drain deadline, then every drain deadline while leaked.
    next_check: Instant,
    shutdown_returned: Arc<AtomicBool>,
    /// An address in its library's code, to tell the threads it started. The census resolves
    /// it to the library's mappings when it runs, on its own thread: reading the process's
    /// mappings costs time in proportion to the libraries mapped, which must not be spent on
    /// the runtime thread that retires the version.
    code_address: usize,
    /// Set once it has been reported as leaked.
    leak: Option<Leak>,
}

/// A retired version that still held on to something at its drain deadline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Leak {
    /// Plugin name.
    pub plugin: String,
    /// Plugin version.
    pub version: String,
    /// Load counter of the version.
    pub generation: u64,
    /// When it was retired (Unix seconds).
    pub retired_at: Option<u64>,
    /// Calls of the host's still running in it.
    pub calls_in_flight: i64,
    /// Still referenced by the host (calls, open log streams): its shutdown has not started.
    pub referenced: bool,
    /// Its `shutdown()` has returned.
    pub shutdown_returned: bool,
    /// Names of the threads it started that are still running (looked at only once it is no
    /// longer referenced; `None` when threads cannot be inspected here).
    pub threads: Option<Vec<String>>,
}

/// How the plugin directory is followed, as `/plugins` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WatchStatus {
    /// `loader.watch`: "notify" or "poll".
    pub configured: &'static str,
    /// What is in use now: "notify", or "poll" (configured, or the fallback).
    pub mode: &'static str,
    /// Why the configured inotify watch is not in use.
    pub error: Option<String>,
}

/// The reloader's state; one per host, driven by [`watch`].
#[derive(Debug, Default)]
pub struct Reloader {
    files: BTreeMap<PathBuf, Tracked>,
    /// Versions replaced or removed, kept weakly, until they have let go (see the module doc).
    retired: Vec<Retired>,
    /// Why threads cannot be inspected here (reported once).
    census_error: Option<String>,
    /// The thread census running now: the versions it looks at, and where its answer comes.
    census: Option<(Vec<u64>, CensusAnswer)>,
    /// Whether a rescan found files not yet stable (so another rescan is due soon).
    pending: bool,
    /// The plugin directory's (mode, uid, gid) at the last rescan: a change re-examines every
    /// file (the directory checks of `[permissions]` depend on it).
    dir_meta: Option<(u32, u32, u32)>,
    /// Why the plugin directory could not be read at the last rescan (reported once).
    dir_error: Option<String>,
}

/// The outcome of one rescan, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Files loaded (new or upgraded).
    pub loaded: Vec<PathBuf>,
    /// Files refused.
    pub refused: Vec<PathBuf>,
    /// Files removed from serving.
    pub removed: Vec<PathBuf>,
    /// Files seen changing, not yet stable.
    pub pending: Vec<PathBuf>,
}

impl Reloader {
    /// Versions retired but still alive (calls in flight): (plugin, version, generation, calls).
    pub fn draining(&mut self) -> Vec<(String, String, u64, i64)> {
        self.retired
            .iter()
            .filter_map(|r| r.version.upgrade())
            .map(|p| (p.name().to_string(), p.version().to_string(), p.generation, p.in_flight()))
            .collect()
    }

    /// Retired versions reported as leaked and still holding on.
    pub fn leaked(&self) -> Vec<Leak> {
        self.retired.iter().filter_map(|r| r.leak.clone()).collect()
    }

    /// Follows `old`, just replaced or removed, until it lets go.
    fn retire(&mut self, old: &Arc<PluginVersion>, drain_deadline: Duration) {
        self.retired.push(Retired {
            version: Arc::downgrade(old),
            plugin: old.name().to_string(),
            version_name: old.version().to_string(),
            generation: old.generation,
            retired_at: SystemTime::now(),
            next_check: Instant::now() + drain_deadline,
            shutdown_returned: old.shutdown_returned(),
            code_address: old.code_address(),
            leak: None,
        });
    }

    /// When a retired version is next due to be examined (those already due wait for the
    /// running census, if any: the loop examines them once it has answered).
    fn next_retired_check(&self) -> Option<Instant> {
        let now = Instant::now();
        self.retired.iter().map(|r| r.next_check).filter(|t| self.census.is_none() || *t > now).min()
    }

    /// Examines the retired versions whose time has come (see the module doc): forgets those
    /// that let go of everything, reports the others as leaked (once; and once more when they
    /// let go). Threads are looked at only for versions no longer referenced (a referenced one
    /// still has its runtime, legitimately), by one census over the process's threads on a
    /// thread of its own; its answer comes back through [`Reloader::census_result`], so the
    /// reloader never waits for it.
    pub fn check_retired(&mut self, host: &Host) {
        let now = Instant::now();
        let every = Duration::from_millis(host.config.loader.drain_deadline_ms);
        let due: Vec<u64> = self.retired.iter().filter(|r| r.next_check <= now).map(|r| r.generation).collect();
        let mut census: Vec<(u64, usize)> = Vec::new();
        for generation in due {
            let Some(r) = self.retired.iter_mut().find(|r| r.generation == generation) else { continue };
            let released = r.version.strong_count() == 0;
            if released && self.census.is_none() {
                census.push((generation, r.code_address));
                // Not due again while the census runs.
                r.next_check = now + every;
            } else if !released {
                self.examine(host, generation, None);
            }
            // Otherwise a census is running: looked at once it is back.
        }
        if census.is_empty() {
            return;
        }
        let (generations, codes): (Vec<u64>, Vec<usize>) = census.into_iter().unzip();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Its own thread, which ends with it (a pooled thread would linger, and be counted by
        // anyone watching the process's threads).
        let started = std::thread::Builder::new().name("thread-census".into()).spawn(move || {
            let _ = tx.send(threads::settled_census(&codes));
        });
        match started {
            Ok(_) => self.census = Some((generations, rx)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the thread census");
                for generation in generations {
                    self.examine(host, generation, None);
                }
            }
        }
    }

    /// Waits for the running thread census, if any (never completes otherwise).
    async fn census_done(&mut self) -> Result<threads::Census, String> {
        match self.census.as_mut() {
            Some((_, rx)) => rx.await.unwrap_or_else(|e| Err(e.to_string())),
            None => std::future::pending().await,
        }
    }

    /// Takes the census's answer for the versions it was started for.
    fn census_result(&mut self, host: &Host, result: Result<threads::Census, String>) {
        let Some((generations, _)) = self.census.take() else { return };
        let census = match result {
            Ok(c) => {
                if c.uninspected > 0 {
                    tracing::debug!(threads = c.uninspected, "threads left uninspected by the census");
                }
                Some(c)
            }
            Err(e) => {
                if self.census_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(error = %e, "cannot inspect the process's threads: threads left running by retired plugin versions are not detected");
                    self.census_error = Some(e);
                }
                None
            }
        };
        for (k, generation) in generations.into_iter().enumerate() {
            let threads = census.as_ref().map(|c| c.started[k].clone());
            self.examine(host, generation, threads);
        }
    }

    /// One examination of retired version `generation` (`threads`: the live threads it
    /// started, when they were looked at).
    fn examine(&mut self, host: &Host, generation: u64, threads: Option<Vec<String>>) {
        let every = Duration::from_millis(host.config.loader.drain_deadline_ms);
        let Some(i) = self.retired.iter().position(|r| r.generation == generation) else { return };
        let r = &mut self.retired[i];
        let alive = r.version.upgrade();
        let state = Leak {
            plugin: r.plugin.clone(),
            version: r.version_name.clone(),
            generation: r.generation,
            retired_at: r.retired_at.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs()),
            calls_in_flight: alive.as_ref().map(|p| p.in_flight()).unwrap_or(0),
            referenced: alive.is_some(),
            shutdown_returned: r.shutdown_returned.load(Ordering::Acquire),
            threads: if alive.is_some() { None } else { threads },
        };
        drop(alive);
        let let_go = !state.referenced && state.shutdown_returned && state.threads.as_ref().is_none_or(Vec::is_empty);
        if let_go {
            if r.leak.is_some() {
                tracing::info!(plugin = %r.plugin, version = %r.version_name, generation = r.generation, "a leaked plugin version has let go of its calls and threads");
            }
            self.retired.remove(i);
            return;
        }
        if r.leak.is_none() {
            let threads = match (&state.threads, state.referenced) {
                (Some(t), _) => t.join(", "),
                (None, true) => "not inspected (still referenced)".to_string(),
                (None, false) => "not inspected (unavailable here)".to_string(),
            };
            tracing::warn!(
                plugin = %state.plugin,
                version = %state.version,
                generation = state.generation,
                calls_in_flight = state.calls_in_flight,
                referenced = state.referenced,
                shutdown_returned = state.shutdown_returned,
                threads = %threads,
                deadline_ms = every.as_millis() as u64,
                "plugin version retired with a leak: {} at the drain deadline; its library stays mapped",
                leak_summary(&state)
            );
            host.service.metrics.generation_leaked(&state.plugin);
        }
        r.leak = Some(state);
        r.next_check = Instant::now() + every;
    }

    /// One rescan of the plugin directory.
    pub async fn rescan(&mut self, host: &Host) -> ScanReport {
        let stable = Duration::from_millis(host.config.loader.stable_ms);
        let dir = &host.config.loader.plugin_dir;
        let mut report = ScanReport::default();
        let files = match scan::plugin_files(dir) {
            Ok(f) => f,
            Err(e) => {
                // Keep serving what is loaded: a vanished directory (being replaced, or a
                // volume remount) must not unload every plugin. Reported once per outage.
                let error = e.to_string();
                if self.dir_error.as_deref() != Some(error.as_str()) {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot read the plugin directory; keeping the plugins already loaded");
                    host.service.metrics.load_failed("plugin_dir_unreadable");
                    self.dir_error = Some(error);
                }
                return report;
            }
        };
        if self.dir_error.take().is_some() {
            tracing::info!(dir = %dir.display(), "the plugin directory is readable again");
        }
        let dir_meta = std::fs::metadata(dir).ok().map(|m| (m.mode(), m.uid(), m.gid()));
        if dir_meta != self.dir_meta {
            for t in self.files.values_mut() {
                t.processed = None;
            }
            self.dir_meta = dir_meta;
        }
        self.pending = false;

        // Removed files.
        let present: std::collections::HashSet<&PathBuf> = files.iter().collect();
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(p)).cloned().collect();
        for path in gone {
            self.files.remove(&path);
            host.statuses.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
            let registry = &host.service.registry;
            let snapshot = registry.snapshot();
            if let Some(old) = snapshot.plugins.iter().find(|p| p.source == path) {
                self.retire(old, Duration::from_millis(host.config.loader.drain_deadline_ms));
                registry.store(snapshot.without_source(&path));
                tracing::info!(file = %path.display(), plugin = old.name(), version = old.version(), "plugin file removed; its agents are no longer offered");
                report.removed.push(path);
            }
        }

        // The files to take now, in file order.
        let mut to_take = Vec::new();
        for path in files {
            let Ok(fp) = Fingerprint::of(&path) else { continue };
            let tracked = self.files.entry(path.clone()).or_default();
            if tracked.processed == Some(fp) {
                tracked.pending = None;
                continue;
            }
            // Changed since last processed: wait until it is stable.
            let since = match tracked.pending {
                Some((p, since)) if p == fp => since,
                _ => {
                    let now = Instant::now();
                    tracked.pending = Some((fp, now));
                    now
                }
            };
            let quiet = fp.age().is_some_and(|age| age >= stable) || since.elapsed() >= stable;
            if !quiet {
                self.pending = true;
                report.pending.push(path);
                continue;
            }
            to_take.push((path, fp));
        }

        // Reading, hashing, copying and checking take tens of milliseconds per file, most of it
        // on other threads and in a child process: up to one file per core goes through them
        // at once (what matters at start-up, with a directory full of plugins). The results
        // are taken in file order, one at a time, and only this part maps anything.
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
        let plans: Vec<Plan> = to_take
            .into_iter()
            .map(|(path, fp)| {
                let serving_sha = host.service.registry.snapshot().plugins.iter().find(|p| p.source == path).map(|p| p.sha256.clone());
                let refused = self.files.get(&path).and_then(|t| t.refused.clone());
                Plan { path, fp, serving_sha, refused }
            })
            .collect();
        let mut fetched = futures_util::stream::iter(plans.into_iter().map(|plan| fetch(host, plan))).buffered(parallel);
        // The next file's outcome, fetched while the one before it was being taken.
        let (mut next, mut exhausted) = (None, false);
        loop {
            let f = match next.take() {
                Some(f) => f,
                None if exhausted => break,
                None => match fetched.next().await {
                    Some(f) => f,
                    None => break,
                },
            };
            let path = f.path.clone();
            // Taking a file maps it and runs its init: meanwhile the next files keep going.
            let taken = {
                let take = self.take(host, f);
                tokio::pin!(take);
                loop {
                    tokio::select! {
                        biased;
                        taken = &mut take => break taken,
                        n = fetched.next(), if next.is_none() && !exhausted => match n {
                            Some(n) => next = Some(n),
                            None => exhausted = true,
                        },
                    }
                }
            };
            match taken {
                Taken::Loaded => report.loaded.push(path),
                Taken::Refused => report.refused.push(path),
                Taken::Unchanged => {}
                Taken::Moving => {
                    self.pending = true;
                    report.pending.push(path);
                }
            }
        }
        report
    }

    /// Takes the outcome of [`fetch`] for one file: records it, and maps the file if it was
    /// prepared.
    async fn take(&mut self, host: &Host, fetched: Fetched) -> Taken {
        let Fetched { path, fp, read, moved, prepared } = fetched;
        let path = path.as_path();
        let file: PluginFile = match read {
            Ok(f) => f,
            Err(LoadError::Read(e)) => {
                tracing::warn!(file = %path.display(), "cannot read a plugin file: {e}");
                return Taken::Moving;
            }
            Err(e) => {
                // Refused before reading (permissions, not a regular file): nothing to hash.
                // Not retried until the file (its owner or mode included) changes.
                let tracked = self.files.entry(path.to_path_buf()).or_default();
                tracked.processed = Some(fp);
                tracked.pending = None;
                let serving = host.service.registry.snapshot().plugins.iter().find(|p| p.source == path).map(|p| p.version().to_string());
                tracing::error!(file = %path.display(), reason = e.reason(), keeps_serving = ?serving, "plugin refused: {e}");
                let mut statuses = host.statuses.lock().unwrap_or_else(|p| p.into_inner());
                statuses.entry(path.to_path_buf()).or_insert_with(|| FileStatus::new(path)).refused(None, &e);
                host.service.metrics.load_failed(e.reason());
                return Taken::Refused;
            }
        };
        // The content read must be the content fingerprinted: a file still being written is
        // left for a later pass.
        if moved {
            if let Some(t) = self.files.get_mut(path) {
                t.pending = None;
            }
            return Taken::Moving;
        }
        let tracked = self.files.entry(path.to_path_buf()).or_default();
        tracked.processed = Some(fp);
        tracked.pending = None;
        let snapshot = host.service.registry.snapshot();
        let serving = snapshot.plugins.iter().find(|p| p.source == path).cloned();
        if serving.as_ref().is_some_and(|p| p.sha256 == file.sha256) {
            return Taken::Unchanged;
        }
        let key = refusal_key(&file);
        if tracked.refused.as_deref() == Some(key.as_str()) {
            return Taken::Unchanged;
        }
        let Some(prepared) = prepared else {
            // fetch decides the same way; not reached.
            return Taken::Unchanged;
        };
        match self.load(host, &file, serving.as_ref(), prepared).await {
            Ok(()) => {
                if let Some(old) = serving {
                    self.retire(&old, Duration::from_millis(host.config.loader.drain_deadline_ms));
                }
                self.files.entry(path.to_path_buf()).or_default().refused = None;
                Taken::Loaded
            }
            Err(transient) => {
                let tracked = self.files.entry(path.to_path_buf()).or_default();
                if transient {
                    // The host's environment failed (work directory, check process): the same
                    // content is tried again at the next rescan.
                    tracked.processed = None;
                } else {
                    tracked.refused = Some(key);
                }
                Taken::Refused
            }
        }
    }

    /// Loads `file`, `prepared` by [`fetch`], beside `serving`; `Err(transient)` on a refusal.
    async fn load(
        &mut self,
        host: &Host,
        file: &PluginFile,
        serving: Option<&Arc<PluginVersion>>,
        prepared: Result<Prepared, LoadError>,
    ) -> Result<(), bool> {
        let path = &file.source;
        let result = match prepared.and_then(|p| within_limit(host).map(|()| p)) {
            Err(e) => Err(e),
            Ok(prepared) => {
                async {
                    let plugin = host.loader.finish(prepared).await?;
                    let snapshot = host.service.registry.snapshot().with_plugin(plugin.clone()).map_err(LoadError::Conflict)?;
                    host.service.registry.store(snapshot);
                    Ok::<_, LoadError>(plugin)
                }
                .await
            }
        };
        let mut statuses = host.statuses.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(plugin) => {
                match serving {
                    Some(old) => tracing::info!(
                        file = %path.display(), plugin = plugin.name(), from = old.version(), to = plugin.version(), generation = plugin.generation,
                        "plugin upgraded"
                    ),
                    None => tracing::info!(file = %path.display(), plugin = plugin.name(), version = plugin.version(), "plugin loaded"),
                }
                statuses.insert(path.clone(), FileStatus::serving(&plugin));
                host.service.metrics.loaded(plugin.name());
                Ok(())
            }
            Err(e) => {
                tracing::error!(file = %path.display(), reason = e.reason(), keeps_serving = ?serving.map(|p| p.version()), "plugin refused: {e}");
                let entry = statuses.entry(path.clone()).or_insert_with(|| FileStatus::new(path));
                entry.refused(Some(&file.sha256), &e);
                host.service.metrics.load_failed(e.reason());
                Err(e.is_transient())
            }
        }
    }
}

/// What [`Reloader::rescan`] knows of a file before taking it.
struct Plan {
    path: PathBuf,
    fp: Fingerprint,
    /// sha256 of the version serving from this path.
    serving_sha: Option<String>,
    /// The refusal key of the content last refused at this path.
    refused: Option<String>,
}

/// The part of taking a file that can run for several files at once.
struct Fetched {
    path: PathBuf,
    fp: Fingerprint,
    read: Result<PluginFile, LoadError>,
    /// The file changed while it was read.
    moved: bool,
    /// The file verified, copied and checked, when it is new content to load.
    prepared: Option<Result<Prepared, LoadError>>,
}

/// Reads `plan`'s file and, if it is content to load (not the serving one, not refused
/// before), prepares it ([`crate::loader::Loader::prepare`]).
async fn fetch(host: &Host, plan: Plan) -> Fetched {
    let Plan { path, fp, serving_sha, refused } = plan;
    let read = host.loader.read_off_thread(&path).await;
    let mut fetched = Fetched { path, fp, read, moved: false, prepared: None };
    let Ok(file) = &fetched.read else { return fetched };
    fetched.moved = Fingerprint::of(&fetched.path).ok() != Some(fp) || file.bytes.len() as u64 != fp.size;
    if fetched.moved || serving_sha.as_deref() == Some(file.sha256.as_str()) || refused.as_deref() == Some(refusal_key(file).as_str()) {
        return fetched;
    }
    let prepared = match within_limit(host) {
        Err(e) => Err(e),
        Ok(()) => {
            let versions: Vec<(String, String)> =
                host.service.registry.snapshot().plugins.iter().map(|p| (p.name().to_string(), p.version().to_string())).collect();
            let config = host.config.plugin_config_json(&scan::config_name(&fetched.path));
            host.loader.prepare(file, config, &versions).await
        }
    };
    fetched.prepared = Some(prepared);
    fetched
}

/// Refuses a load at `loader.max_libraries`.
fn within_limit(host: &Host) -> Result<(), LoadError> {
    let max = host.config.loader.max_libraries;
    if host.loader.mapped_libraries() >= max {
        return Err(LoadError::Limit(format!(
            "{max} plugin libraries are mapped already (loader.max_libraries); a rolling restart releases them"
        )));
    }
    Ok(())
}

/// What a leaked version still holds, in words.
fn leak_summary(l: &Leak) -> String {
    let mut parts = Vec::new();
    if l.calls_in_flight > 0 {
        parts.push(format!("calls in flight: {}", l.calls_in_flight));
    } else if l.referenced {
        parts.push("still referenced (open log streams)".to_string());
    }
    if !l.referenced && !l.shutdown_returned {
        parts.push("shutdown() not returned".to_string());
    }
    if let Some(t) = l.threads.as_ref().filter(|t| !t.is_empty()) {
        parts.push(format!("threads it started still running: {} ({})", t.len(), t.join(", ")));
    }
    parts.join(", ")
}

/// What a refusal is remembered by: the content and its signature.
fn refusal_key(file: &PluginFile) -> String {
    match &file.signature {
        Some(sig) => format!("{}+{}", file.sha256, crate::verify::hex(&sha2::Sha256::digest(sig.as_bytes()))),
        None => file.sha256.clone(),
    }
}

enum Taken {
    Loaded,
    Refused,
    Unchanged,
    /// Still being written (or unreadable): try again later.
    Moving,
}

/// Makes the directory watcher: a handle that keeps it alive, or why it could not be set up.
type WatcherFactory = dyn Fn(&Path, mpsc::Sender<()>) -> Result<Box<dyn Any + Send>, String> + Send + Sync;

/// The inotify watch on the plugin directory, and what happens when there is none.
struct DirWatch {
    factory: Box<WatcherFactory>,
    watcher: Option<Box<dyn Any + Send>>,
    /// The directory (device, inode) the watch was set up for, or last failed on.
    watched: Option<(u64, u64)>,
    /// Why the last attempt failed, and when to try again.
    failure: Option<(String, Instant)>,
    /// The directory is missing (deleted, being replaced, not mounted yet).
    missing: bool,
}

impl DirWatch {
    fn new(factory: Box<WatcherFactory>) -> DirWatch {
        DirWatch { factory, watcher: None, watched: None, failure: None, missing: false }
    }

    /// (Re-)establishes the watch when the directory appeared or was replaced, or when a
    /// failed attempt is due again (every `retry`). A failure is logged once per cause.
    fn ensure(&mut self, dir: &Path, tx: &mpsc::Sender<()>, retry: Duration, poll_interval_ms: u64) {
        let identity = std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()));
        self.missing = identity.is_none();
        if identity.is_none() {
            self.watcher = None;
            self.watched = None;
            return;
        }
        if identity == self.watched {
            match &self.failure {
                None => return,
                Some((_, again)) if Instant::now() < *again => return,
                Some(_) => {}
            }
        }
        match (self.factory)(dir, tx.clone()) {
            Ok(w) => {
                if self.failure.take().is_some() {
                    tracing::info!(dir = %dir.display(), "watching the plugin directory with inotify again");
                }
                self.watcher = Some(w);
            }
            Err(e) => {
                if self.failure.as_ref().map(|(f, _)| f.as_str()) != Some(e.as_str()) {
                    tracing::warn!(
                        dir = %dir.display(), error = %e, poll_interval_ms,
                        "cannot watch the plugin directory with inotify; polling it every loader.poll_interval_ms instead"
                    );
                }
                self.watcher = None;
                self.failure = Some((e, Instant::now() + retry));
            }
        }
        self.watched = identity;
    }

    fn watching(&self) -> bool {
        self.watcher.is_some()
    }

    fn status(&self, configured: WatchMode) -> WatchStatus {
        match configured {
            WatchMode::Poll => WatchStatus { configured: "poll", mode: "poll", error: None },
            WatchMode::Notify if self.watching() => WatchStatus { configured: "notify", mode: "notify", error: None },
            WatchMode::Notify => WatchStatus {
                configured: "notify",
                mode: "poll",
                error: Some(match (&self.failure, self.missing) {
                    (_, true) => "the plugin directory is missing".to_string(),
                    (Some((e, _)), false) => e.clone(),
                    (None, false) => "not watching yet".to_string(),
                }),
            },
        }
    }
}

/// Why the watch loop woke up.
enum Wake {
    Rescan,
    /// Only a retired version's drain deadline: no rescan needed.
    Retired,
    /// The thread census answered.
    Census(Result<threads::Census, String>),
    Stop,
}

/// Runs the reloader until `stop` fires: rescans on directory events, on SIGHUP, periodically,
/// and soon again while files are settling; examines retired versions at their drain deadline.
pub async fn watch(host: Arc<Host>, mut reloader: Reloader, mut stop: tokio::sync::watch::Receiver<bool>) {
    let loader = &host.config.loader;
    let (tx, mut events) = mpsc::channel::<()>(1);
    let mut dir_watch = DirWatch::new(Box::new(start_watcher));
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    let rescan_every = Duration::from_millis(loader.rescan_interval_ms);
    let poll_every = Duration::from_millis(loader.poll_interval_ms);
    let settle = Duration::from_millis(loader.stable_ms.clamp(10, 1000) / 2 + 10);
    loop {
        if loader.watch == WatchMode::Notify {
            dir_watch.ensure(&loader.plugin_dir, &tx, rescan_every, loader.poll_interval_ms);
        }
        *host.watch.lock().unwrap_or_else(|p| p.into_inner()) = dir_watch.status(loader.watch);
        // Without a watch (poll mode, the fallback, or a missing directory) nothing wakes us
        // but the poll interval.
        let wait = if reloader.pending {
            settle
        } else if loader.watch == WatchMode::Poll {
            poll_every
        } else if !dir_watch.watching() {
            rescan_every.min(poll_every)
        } else {
            rescan_every
        };
        let retired_in = reloader.next_retired_check().map(|t| t.saturating_duration_since(Instant::now()));
        let wake = tokio::select! {
            _ = events.recv() => {
                // Coalesce a burst of events into one rescan.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while events.try_recv().is_ok() {}
                Wake::Rescan
            }
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: rescanning the plugin directory");
                Wake::Rescan
            }
            () = tokio::time::sleep(wait) => Wake::Rescan,
            () = async { match retired_in { Some(d) if d < wait => tokio::time::sleep(d).await, _ => std::future::pending().await } } => Wake::Retired,
            result = reloader.census_done() => Wake::Census(result),
            _ = stop.changed() => Wake::Stop,
        };
        match wake {
            Wake::Stop => break,
            Wake::Retired => {}
            Wake::Census(result) => reloader.census_result(&host, result),
            Wake::Rescan => {
                let report = reloader.rescan(&host).await;
                if !report.loaded.is_empty() {
                    host.settle_memory(false);
                }
                if !report.loaded.is_empty() || !report.removed.is_empty() || !report.refused.is_empty() {
                    tracing::debug!(?report, "rescan");
                }
            }
        }
        reloader.check_retired(&host);
        host.set_draining(reloader.draining());
        *host.leaked.lock().unwrap_or_else(|p| p.into_inner()) = reloader.leaked();
    }
}

fn start_watcher(dir: &Path, tx: mpsc::Sender<()>) -> Result<Box<dyn Any + Send>, String> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let handler = move |event: notify::Result<notify::Event>| {
        // The host's own reads of plugin files raise access events: not changes.
        if let Ok(e) = &event {
            if matches!(e.kind, EventKind::Access(_)) {
                return;
            }
        }
        let _ = tx.try_send(());
    };
    let mut watcher = notify::recommended_watcher(handler).map_err(|e| format!("cannot start an inotify watcher: {e}"))?;
    watcher.watch(dir, RecursiveMode::NonRecursive).map_err(|e| format!("cannot add an inotify watch: {e}"))?;
    Ok(Box::new(watcher))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("agent-host-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_watcher_that_cannot_be_set_up_falls_back_to_polling_and_is_retried() {
        let dir = temp_dir("fallback");
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let works = Arc::new(AtomicBool::new(false));
        let (a, w) = (attempts.clone(), works.clone());
        let factory: Box<WatcherFactory> = Box::new(move |_: &Path, _| {
            a.fetch_add(1, Ordering::SeqCst);
            if w.load(Ordering::SeqCst) {
                Ok(Box::new(()) as Box<dyn Any + Send>)
            } else {
                Err("inotify_add_watch: No space left on device (os error 28)".to_string())
            }
        });
        let (tx, _rx) = mpsc::channel(1);
        let mut watch = DirWatch::new(factory);
        watch.ensure(&dir, &tx, Duration::from_millis(50), 1000);
        let status = watch.status(WatchMode::Notify);
        assert_eq!((status.configured, status.mode), ("notify", "poll"));
        assert!(status.error.unwrap().contains("No space left"));
        // Not retried before its time (the loop runs every poll interval meanwhile).
        watch.ensure(&dir, &tx, Duration::from_millis(50), 1000);
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        // Retried once due; back to notify when it works.
        works.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(60));
        watch.ensure(&dir, &tx, Duration::from_millis(50), 1000);
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert_eq!(watch.status(WatchMode::Notify), WatchStatus { configured: "notify", mode: "notify", error: None });
        // A replaced directory gets a new watch at once.
        std::fs::remove_dir(&dir).unwrap();
        watch.ensure(&dir, &tx, Duration::from_secs(60), 1000);
        assert_eq!(watch.status(WatchMode::Notify).error.as_deref(), Some("the plugin directory is missing"));
        std::fs::create_dir(&dir).unwrap();
        watch.ensure(&dir, &tx, Duration::from_secs(60), 1000);
        assert_eq!((attempts.load(Ordering::SeqCst), watch.status(WatchMode::Notify).mode), (3, "notify"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_real_watcher_reports_events() {
        let dir = temp_dir("events");
        let (tx, mut rx) = mpsc::channel(1);
        let _w = start_watcher(&dir, tx).expect("inotify works here");
        std::fs::write(dir.join("x.so"), b"x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while rx.try_recv().is_err() {
            assert!(Instant::now() < deadline, "no event");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
