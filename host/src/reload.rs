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

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Weak},
    time::{Duration, Instant, SystemTime},
};

use sha2::Digest;
use tokio::sync::mpsc;

use crate::{
    config::WatchMode,
    loader::{LoadError, PluginFile},
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

/// The reloader's state; one per host, driven by [`watch`].
#[derive(Debug, Default)]
pub struct Reloader {
    files: BTreeMap<PathBuf, Tracked>,
    /// Versions replaced or removed, kept weakly to report those still draining.
    retired: Vec<Weak<PluginVersion>>,
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
        self.retired.retain(|w| w.strong_count() > 0);
        self.retired
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| (p.name().to_string(), p.version().to_string(), p.generation, p.in_flight()))
            .collect()
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
                self.retired.push(Arc::downgrade(old));
                registry.store(snapshot.without_source(&path));
                tracing::info!(file = %path.display(), plugin = old.name(), version = old.version(), "plugin file removed; its agents are no longer offered");
                report.removed.push(path);
            }
        }

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
            match self.take(host, &path, fp).await {
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

    async fn take(&mut self, host: &Host, path: &Path, fp: Fingerprint) -> Taken {
        let file: PluginFile = match host.loader.read(path) {
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
        if Fingerprint::of(path).ok() != Some(fp) || file.bytes.len() as u64 != fp.size {
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
        match self.load(host, &file, serving.as_ref()).await {
            Ok(()) => {
                if let Some(old) = serving {
                    self.retired.push(Arc::downgrade(&old));
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

    /// Loads `file` beside `serving`; `Err(transient)` on a refusal.
    async fn load(&mut self, host: &Host, file: &PluginFile, serving: Option<&Arc<PluginVersion>>) -> Result<(), bool> {
        let path = &file.source;
        let max = host.config.loader.max_libraries;
        let result = if host.loader.mapped_libraries() >= max {
            Err(LoadError::Limit(format!(
                "{max} plugin libraries are mapped already (loader.max_libraries); a rolling restart releases them"
            )))
        } else {
            async {
                let versions: Vec<(String, String)> =
                    host.service.registry.snapshot().plugins.iter().map(|p| (p.name().to_string(), p.version().to_string())).collect();
                let plugin = host.loader.load_checked(file, host.config.plugin_config_json(&scan::config_name(path)), &versions).await?;
                let snapshot = host.service.registry.snapshot().with_plugin(plugin.clone()).map_err(LoadError::Conflict)?;
                host.service.registry.store(snapshot);
                Ok::<_, LoadError>(plugin)
            }
            .await
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

/// Runs the reloader until `stop` fires: rescans on directory events, on SIGHUP, periodically,
/// and soon again while files are settling.
pub async fn watch(host: Arc<Host>, mut reloader: Reloader, mut stop: tokio::sync::watch::Receiver<bool>) {
    let loader = &host.config.loader;
    let (tx, mut events) = mpsc::channel::<()>(1);
    let mut watcher = None;
    let mut watched_dir: Option<(u64, u64)> = None;
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    let interval = match loader.watch {
        WatchMode::Notify => Duration::from_millis(loader.rescan_interval_ms),
        WatchMode::Poll => Duration::from_millis(loader.poll_interval_ms),
    };
    let settle = Duration::from_millis(loader.stable_ms.clamp(10, 1000) / 2 + 10);
    loop {
        if loader.watch == WatchMode::Notify {
            // (Re-)establish the watch when the directory appeared or was replaced.
            let identity = std::fs::metadata(&loader.plugin_dir).ok().map(|m| (m.dev(), m.ino()));
            if identity != watched_dir {
                watcher = identity.and_then(|_| start_watcher(&loader.plugin_dir, tx.clone()));
                watched_dir = if watcher.is_some() { identity } else { None };
            }
        }
        // While the directory is missing (deleted, being replaced, not yet mounted) there is no
        // watch to wake us: look for it again at the poll interval.
        let unwatched = loader.watch == WatchMode::Notify && watched_dir.is_none();
        let wait = if reloader.pending {
            settle
        } else if unwatched {
            interval.min(Duration::from_millis(loader.poll_interval_ms))
        } else {
            interval
        };
        tokio::select! {
            _ = events.recv() => {
                // Coalesce a burst of events into one rescan.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while events.try_recv().is_ok() {}
            }
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: rescanning the plugin directory");
            }
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
        let report = reloader.rescan(&host).await;
        host.set_draining(reloader.draining());
        if !report.loaded.is_empty() || !report.removed.is_empty() || !report.refused.is_empty() {
            tracing::debug!(?report, "rescan");
        }
    }
    drop(watcher);
}

fn start_watcher(dir: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
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
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a file watcher; relying on the periodic rescan");
            return None;
        }
    };
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the plugin directory; relying on the periodic rescan");
            None
        }
    }
}
