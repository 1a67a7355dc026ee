//! Scanning the plugin directory and loading what is there.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use serde::Serialize;

use crate::{
    loader::{LoadError, Loader, PluginFile},
    registry::Registry,
};

/// What the host knows about one file of the plugin directory (the `/plugins` status view).
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    /// The file.
    pub path: PathBuf,
    /// "serving" or "refused".
    pub state: &'static str,
    /// Plugin name and version, when the file got that far.
    pub plugin: Option<String>,
    /// Plugin version.
    pub version: Option<String>,
    /// sha256 of the content.
    pub sha256: Option<String>,
    /// Agents with their task types.
    pub agents: Vec<String>,
    /// Seconds since the epoch of the last load attempt.
    pub updated_at: u64,
    /// The reason code of the last refusal.
    pub error_reason: Option<&'static str>,
    /// The last refusal, in one sentence.
    pub error: Option<String>,
}

/// The plugin files of `dir`: `*.so` entries (files, or symlinks to files), sorted by name.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_so = path.extension().is_some_and(|e| e == "so");
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if is_so && !hidden && std::fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Loads every plugin of `dir` into the registry. Files that fail are reported (log and status)
/// and skipped; they never stop the others.
pub async fn load_dir(
    dir: &Path,
    loader: &Loader,
    registry: &Registry,
    config_for: impl Fn(&str) -> String,
    statuses: &Mutex<BTreeMap<PathBuf, FileStatus>>,
) {
    let files = match plugin_files(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot read the plugin directory; serving no plugins");
            return;
        }
    };
    for path in files {
        let status = load_one(&path, loader, registry, &config_for).await;
        statuses.lock().unwrap_or_else(|p| p.into_inner()).insert(path, status);
    }
}

async fn load_one(path: &Path, loader: &Loader, registry: &Registry, config_for: &impl Fn(&str) -> String) -> FileStatus {
    let mut status = FileStatus {
        path: path.to_path_buf(),
        state: "refused",
        plugin: None,
        version: None,
        sha256: None,
        agents: Vec::new(),
        updated_at: now(),
        error_reason: None,
        error: None,
    };
    let result = async {
        let file = PluginFile::read(path)?;
        status.sha256 = Some(file.sha256.clone());
        // The plugin's name is only known after the check; its config is looked up by the
        // file stem first (`echo.so` → [plugins.echo]), which is how operators name files.
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().trim_start_matches("lib").to_string();
        let plugin = loader.load(&file, config_for(&stem)).await?;
        status.plugin = Some(plugin.name().to_string());
        status.version = Some(plugin.version().to_string());
        status.agents = plugin
            .agents()
            .iter()
            .map(|a| {
                format!("{} ({})", a.name, a.categories.iter().map(|c| format!("{} v{}", c.name, c.version)).collect::<Vec<_>>().join(", "))
            })
            .collect();
        let snapshot = registry.snapshot().with_plugin(plugin.clone()).map_err(LoadError::Conflict)?;
        registry.store(snapshot);
        Ok::<_, LoadError>(plugin)
    }
    .await;
    match result {
        Ok(plugin) => {
            status.state = "serving";
            tracing::info!(file = %path.display(), plugin = plugin.name(), version = plugin.version(), agents = ?status.agents, "plugin loaded");
        }
        Err(e) => {
            status.error_reason = Some(e.reason());
            status.error = Some(e.to_string());
            tracing::error!(file = %path.display(), reason = e.reason(), "plugin refused: {e}");
        }
    }
    status
}
