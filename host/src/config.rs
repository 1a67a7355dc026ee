//! The host configuration: one TOML document, layered.
//!
//! Layers, later wins: the embedded `config/default.toml`, the file given with `--config`,
//! environment variables `AGENT_HOST__<TABLE>__<KEY>`, then command-line flags (applied by
//! `main`). Unknown keys are errors, so a typo never silently falls back to a default.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

/// The embedded default configuration (every key, documented).
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Ports and limits.
    pub server: ServerConfig,
    /// Where plugins come from and how they are loaded.
    pub loader: LoaderConfig,
    /// Where plugins' secrets are looked up.
    pub secrets: SecretsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Plugin authenticity (sha256 allowlist or minisign signatures).
    pub verify: VerifyConfig,
    /// Ownership and mode checks on plugin files and their directory.
    pub permissions: PermissionsConfig,
    /// Per-plugin configuration tables, by plugin name.
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Value>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Bind address.
    pub host: String,
    /// gRPC port.
    pub port: u16,
    /// Metrics port.
    pub metrics_port: u16,
    /// Largest message, in bytes.
    pub max_message_bytes: usize,
    /// Server cap on a call's duration, in ms (0: none).
    pub call_timeout_ms: u64,
    /// Concurrent calls per agent (0: no limit).
    pub max_calls_per_agent: usize,
    /// Grace period for calls in flight at SIGTERM, in ms.
    pub shutdown_grace_ms: u64,
    /// HTTP/2 keepalive ping interval, in ms (0: off).
    pub keepalive_interval_ms: u64,
    /// HTTP/2 keepalive ping timeout, in ms.
    pub keepalive_timeout_ms: u64,
    /// Maximum connection age, in ms (0: unlimited).
    pub max_connection_age_ms: u64,
    /// Answers ready together on one connection go out in one write ([`crate::batching`]).
    pub batch_writes: bool,
    /// TLS on the gRPC port (absent: plaintext h2c).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
}

/// `[loader]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Plugin directory.
    pub plugin_dir: PathBuf,
    /// Private copies; empty means `<temp>/agent-host`.
    pub work_dir: PathBuf,
    /// Worker threads per plugin runtime.
    pub worker_threads: u32,
    /// Let agents that declare themselves nonblocking start their calls on the host's threads.
    pub inline_calls: bool,
    /// Time limit of the child-process check, in ms.
    pub check_timeout_ms: u64,
    /// How changes are noticed.
    pub watch: WatchMode,
    /// Poll mode rescan interval, in ms.
    pub poll_interval_ms: u64,
    /// Notify mode periodic rescan interval, in ms.
    pub rescan_interval_ms: u64,
    /// Quiet period before a changed file is taken, in ms.
    pub stable_ms: u64,
    /// Cap on mapped plugin libraries.
    pub max_libraries: usize,
    /// How long a replaced or removed version may take to release its calls and threads
    /// before it is reported as leaked, in ms.
    pub drain_deadline_ms: u64,
    /// Nice value of the loader's background work (reading, hashing, copying, the check
    /// process); 0 runs it at the host's own priority.
    pub background_nice: i32,
}

/// `[verify]`: what a plugin file must prove before any byte of it is copied, checked or mapped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// "off", "allowlist" or "signature".
    pub mode: VerifyMode,
    /// Hex sha256 digests accepted in "allowlist" mode.
    pub sha256_allowlist: Vec<String>,
    /// minisign public keys (base64, the second line of a `.pub` file) trusted in "signature" mode.
    pub trusted_keys: Vec<String>,
    /// Accept a signed build whose version is older than the version serving under the same name.
    pub allow_downgrade: bool,
}

/// How plugin files are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// No authenticity check.
    Off,
    /// The file's sha256 must be in `sha256_allowlist`.
    Allowlist,
    /// `<file>.minisig` must be a valid minisign signature by a trusted key.
    Signature,
}

/// `[permissions]`: who may have written a plugin file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionsConfig {
    /// Refuse files (and directories) others could have written; see config/default.toml.
    pub check: bool,
    /// Owners accepted besides root and the host's own user.
    pub trusted_uids: Vec<u32>,
    /// Accept files and directories writable by their group.
    pub allow_group_writable: bool,
    /// Directories outside `loader.plugin_dir` that a plugin symlink may lead into.
    pub symlink_roots: Vec<PathBuf>,
}

/// How the plugin directory is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// inotify events plus a periodic rescan.
    Notify,
    /// Rescans at an interval only.
    Poll,
}

/// `[secrets]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// File secrets root.
    pub dir: PathBuf,
    /// Environment secrets prefix.
    pub env_prefix: String,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: LogFormat,
    /// A tracing filter.
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration error, naming the key or file at fault.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Deep-merges `over` into `base` (tables merge, anything else replaces).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn parse(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError(format!("{origin}: {e}")))
}

/// Reads an environment value as TOML (numbers, booleans, arrays) or else as a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

impl Config {
    /// The embedded defaults, then `file`, then `AGENT_HOST__*` variables from `env`.
    pub fn load(file: Option<&std::path::Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut table = parse(DEFAULT_TOML, "embedded default config")?;
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
            merge(&mut table, parse(&text, &path.display().to_string())?);
        }
        for (key, raw) in env {
            let Some(rest) = key.strip_prefix("AGENT_HOST__") else { continue };
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            let (last, tables) = path.split_last().expect("split yields at least one part");
            let mut over = toml::Table::new();
            over.insert(last.clone(), env_value(&raw));
            for t in tables.iter().rev() {
                let mut outer = toml::Table::new();
                outer.insert(t.clone(), toml::Value::Table(over));
                over = outer;
            }
            merge(&mut table, over);
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            ConfigError(format!("invalid configuration key `{path}`: {}", e.into_inner().message()))
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.max_message_bytes < 1024 {
            return Err(ConfigError("server.max_message_bytes must be at least 1024".into()));
        }
        if self.loader.poll_interval_ms == 0 || self.loader.rescan_interval_ms == 0 {
            return Err(ConfigError("loader.poll_interval_ms and loader.rescan_interval_ms must be positive".into()));
        }
        if self.loader.drain_deadline_ms == 0 {
            return Err(ConfigError("loader.drain_deadline_ms must be positive".into()));
        }
        if !(0..=19).contains(&self.loader.background_nice) {
            return Err(ConfigError("loader.background_nice must be between 0 and 19".into()));
        }
        if !(1..=64).contains(&self.loader.worker_threads) {
            return Err(ConfigError("loader.worker_threads must be between 1 and 64".into()));
        }
        crate::verify::Verifier::new(&self.verify).map_err(ConfigError)?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError(format!("log.level {:?} is not a valid filter: {e}", self.log.level)))?;
        Ok(())
    }

    /// The private copy directory.
    pub fn work_dir(&self) -> PathBuf {
        if self.loader.work_dir.as_os_str().is_empty() {
            std::env::temp_dir().join("agent-host")
        } else {
            self.loader.work_dir.clone()
        }
    }

    /// The `[plugins.<name>]` table as JSON ("{}" when absent). Dashes and underscores in the
    /// name are alike (`rest-job` and `rest_job` name one table).
    pub fn plugin_config_json(&self, name: &str) -> String {
        let norm = |n: &str| n.replace('-', "_");
        match self.plugins.iter().find(|(k, _)| norm(k) == norm(name)).map(|(_, v)| v) {
            Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "{}".into()),
            None => "{}".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_flytekits_ports() {
        let c = Config::load(None, []).unwrap();
        assert_eq!((c.server.port, c.server.metrics_port), (8000, 9090));
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn file_then_env_override() {
        let dir = std::env::temp_dir().join(format!("agent-host-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[server]\nport = 1234\n[plugins.echo]\ngreeting = \"hi\"\n").unwrap();
        let c = Config::load(Some(&file), [("AGENT_HOST__SERVER__METRICS_PORT".to_string(), "4321".to_string())]).unwrap();
        assert_eq!((c.server.port, c.server.metrics_port), (1234, 4321));
        assert_eq!(c.plugin_config_json("echo"), r#"{"greeting":"hi"}"#);
        assert_eq!(c.plugin_config_json("other"), "{}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn verification_is_off_and_permissions_checked_by_default() {
        let c = Config::load(None, []).unwrap();
        assert_eq!(c.verify.mode, VerifyMode::Off);
        assert!(c.permissions.check && !c.permissions.allow_group_writable);
    }

    #[test]
    fn verification_modes_need_their_lists() {
        let err = Config::load(None, [("AGENT_HOST__VERIFY__MODE".to_string(), "signature".to_string())]).unwrap_err();
        assert!(err.0.contains("verify.trusted_keys"), "{err}");
        let err = Config::load(None, [("AGENT_HOST__VERIFY__MODE".to_string(), "allowlist".to_string())]).unwrap_err();
        assert!(err.0.contains("verify.sha256_allowlist"), "{err}");
        let env = [
            ("AGENT_HOST__VERIFY__MODE".to_string(), "signature".to_string()),
            ("AGENT_HOST__VERIFY__TRUSTED_KEYS".to_string(), "[\"not a key\"]".to_string()),
        ];
        let err = Config::load(None, env).unwrap_err();
        assert!(err.0.contains("verify.trusted_keys[0]"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::load(None, [("AGENT_HOST__SERVER__PROT".to_string(), "1".to_string())]).unwrap_err();
        assert!(err.0.contains("prot") && err.0.contains("server"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::load(None, [("AGENT_HOST__SERVER__PORT".to_string(), "eighty".to_string())]).unwrap_err();
        assert!(err.0.contains("`server.port`"), "{err}");
    }
}
