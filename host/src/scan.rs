//! The plugin directory's files, and what the host reports about each (`/plugins`).

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Serialize;

use crate::{loader::LoadError, plugin::PluginVersion};

/// What the host knows about one file of the plugin directory (the `/plugins` status view).
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    /// The file.
    pub path: PathBuf,
    /// "serving" (possibly with a refused newer content as `error`) or "refused".
    pub state: &'static str,
    /// Plugin name and version, when the file got that far.
    pub plugin: Option<String>,
    /// Plugin version.
    pub version: Option<String>,
    /// sha256 of the content.
    pub sha256: Option<String>,
    /// Agents with their task types.
    pub agents: Vec<String>,
    /// Load counter of the serving version.
    pub generation: Option<u64>,
    /// Seconds since the epoch when the serving version was loaded.
    pub loaded_at: Option<u64>,
    /// Seconds since the epoch of the last change of this status.
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

/// The `[plugins.<name>]` table a file gets: named after the file (`echo.so`, `libecho.so` →
/// `echo`), since the plugin's own name is known only once it is loaded.
pub fn config_name(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    stem.strip_prefix("lib").unwrap_or(stem).to_string()
}

impl FileStatus {
    /// A file not loaded (yet).
    pub fn new(path: &Path) -> FileStatus {
        FileStatus {
            path: path.to_path_buf(),
            state: "refused",
            plugin: None,
            version: None,
            sha256: None,
            agents: Vec::new(),
            generation: None,
            loaded_at: None,
            updated_at: now(),
            error_reason: None,
            error: None,
        }
    }

    /// A file serving `plugin`.
    pub fn serving(plugin: &PluginVersion) -> FileStatus {
        let loaded_at = plugin.loaded_at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).ok();
        FileStatus {
            state: "serving",
            plugin: Some(plugin.name().to_string()),
            version: Some(plugin.version().to_string()),
            sha256: Some(plugin.sha256.clone()),
            agents: plugin
                .agents()
                .iter()
                .map(|a| {
                    let cats: Vec<_> = a.categories.iter().map(|c| format!("{} v{}", c.name, c.version)).collect();
                    format!("{} ({})", a.name, cats.join(", "))
                })
                .collect(),
            generation: Some(plugin.generation),
            loaded_at,
            ..FileStatus::new(&plugin.source)
        }
    }

    /// Records a refusal of content `sha256`. A file that serves keeps `state = "serving"` (the
    /// serving version is untouched) and shows the refusal as its last error.
    pub fn refused(&mut self, sha256: &str, e: &LoadError) {
        if self.state != "serving" {
            self.sha256 = Some(sha256.to_string());
        }
        self.updated_at = now();
        self.error_reason = Some(e.reason());
        self.error = Some(e.to_string());
    }
}
