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

/// The plugin files of `dir`: `*.so` entries not starting with a dot that exist (following
/// symlinks; a dangling one is skipped), sorted by name. Entries that are not regular files (a
/// FIFO, a directory named `x.so`) are listed too: the loader refuses them with a reason
/// rather than leaving them unexplained.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_so = path.extension().is_some_and(|e| e == "so");
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if is_so && !hidden && std::fs::metadata(&path).is_ok() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The `[plugins.<name>]` table a file gets. It is named after the file, since the plugin's own
/// name is known only once the library is loaded (and its `init` needs the table): the file
/// name without `.so`, a `lib` prefix and a `_plugin` suffix, so that cargo's
/// `librest_job_plugin.so` and an operator's `rest-job.so` both read `[plugins.rest-job]`
/// (dashes and underscores are alike in table names, see `Config::plugin_config_json`).
pub fn config_name(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let stem = stem.strip_prefix("lib").unwrap_or(stem);
    let stem = stem.strip_suffix("_plugin").or_else(|| stem.strip_suffix("-plugin")).unwrap_or(stem);
    stem.to_string()
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
    /// `sha256` is `None` for a file refused before it was read (permissions).
    pub fn refused(&mut self, sha256: Option<&str>, e: &LoadError) {
        if self.state != "serving" {
            self.sha256 = sha256.map(str::to_string);
        }
        self.updated_at = now();
        self.error_reason = Some(e.reason());
        self.error = Some(e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_follow_the_file_name() {
        for (file, name) in
            [("echo.so", "echo"), ("libecho_plugin.so", "echo"), ("librest_job_plugin.so", "rest_job"), ("rest-job.so", "rest-job")]
        {
            assert_eq!(config_name(Path::new(file)), name, "{file}");
        }
    }
}
