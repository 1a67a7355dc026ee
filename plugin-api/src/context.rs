//! What the host gives an agent: its configuration, secrets, and the caller's connection.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use serde::de::DeserializeOwned;

use crate::{AgentError, Protocol};

/// Plugin-wide settings from the host, shared by every call.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: serde_json::Value,
    pub secrets_dir: PathBuf,
    pub secrets_env_prefix: String,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            config: serde_json::Value::Object(Default::default()),
            secrets_dir: PathBuf::from("/etc/secrets"),
            secrets_env_prefix: "_FSEC_".into(),
        }
    }
}

/// The per-call context of an agent: its plugin's configuration, secrets, and (Flyte 2) the
/// connection the executor resolved for this task. (The task's execution metadata comes with
/// the task: [`crate::TaskRequest::metadata`].)
///
/// ```
/// use agent_plugin_api::{serde_json::json, Context};
///
/// #[derive(serde::Deserialize)]
/// struct Config {
///     base_url: String,
/// }
///
/// // In the host: the `[plugins.<name>]` table of its config file; here, built for a test.
/// let ctx = Context::for_tests(json!({"base_url": "https://jobs.example.com"})).with_secret("api_key", "k-123");
/// let config: Config = ctx.config().unwrap();
/// assert_eq!(config.base_url, "https://jobs.example.com");
/// assert_eq!(ctx.secret("jobs", "api_key").unwrap(), "k-123");
/// assert!(ctx.secret("jobs", "missing").unwrap_err().message().contains("_FSEC_JOBS_MISSING"));
/// ```
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) shared: Arc<Shared>,
    pub(crate) secrets: BTreeMap<String, String>,
    pub(crate) configs: BTreeMap<String, String>,
    pub(crate) protocol: Protocol,
}

impl Context {
    pub(crate) fn new(shared: Arc<Shared>, protocol: Protocol) -> Self {
        Self { shared, secrets: BTreeMap::new(), configs: BTreeMap::new(), protocol }
    }

    /// A context for tests: `config` as the plugin's `[plugins.<name>]` table, secrets only
    /// from [`Context::with_secret`], the environment and `secrets_dir`.
    pub fn for_tests(config: serde_json::Value) -> Self {
        Self::new(Arc::new(Shared { config, ..Shared::default() }), Protocol::V1)
    }

    /// Builder for tests: a connection secret, as Flyte 2 would send it.
    pub fn with_secret(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.secrets.insert(key.into(), value.into());
        self
    }

    /// Builder for tests: where file secrets live (default `/etc/secrets`).
    pub fn with_secrets_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.shared = Arc::new(Shared {
            config: self.shared.config.clone(),
            secrets_dir: dir.into(),
            secrets_env_prefix: self.shared.secrets_env_prefix.clone(),
        });
        self
    }

    /// The plugin's configuration (its `[plugins.<name>]` table in the host config) read into
    /// the agent's own type. A missing table reads as `{}`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, AgentError> {
        serde_json::from_value(self.shared.config.clone())
            .map_err(|e| AgentError::invalid(format!("plugin configuration does not fit: {e}")))
    }

    /// A secret, looked up as flytekit does and then some:
    ///
    /// 1. Flyte 2: the connection's `secrets[key]` (already resolved by the executor);
    /// 2. the environment variable `<prefix><GROUP>_<KEY>` (upper-case; prefix `_FSEC_`);
    /// 3. the file `<secrets_dir>/<group>/<key>` (default `/etc/secrets`), trailing newline
    ///    removed.
    pub fn secret(&self, group: &str, key: &str) -> Result<String, AgentError> {
        if let Some(v) = self.secrets.get(key) {
            return Ok(v.clone());
        }
        // Without a group, flytekit reads `<prefix><KEY>` and `<dir>/<key>`.
        let env = match group {
            "" => format!("{}{}", self.shared.secrets_env_prefix, key.to_uppercase()),
            g => format!("{}{}_{}", self.shared.secrets_env_prefix, g.to_uppercase(), key.to_uppercase()),
        };
        if let Ok(v) = std::env::var(&env) {
            return Ok(v);
        }
        let path = self.shared.secrets_dir.join(group.to_lowercase()).join(key.to_lowercase());
        match std::fs::read_to_string(&path) {
            Ok(v) => Ok(v.trim_end_matches(['\n', '\r']).to_string()),
            Err(_) => Err(AgentError::precondition(format!(
                "secret {group}/{key} not found: not in the connection, no ${env}, no file {}",
                path.display()
            ))),
        }
    }

    /// Flyte 2: a value of the connection's `configs`.
    pub fn connection_config(&self, key: &str) -> Option<&str> {
        self.configs.get(key).map(String::as_str)
    }

    /// The protocol of the current call.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_resolve_connection_then_env_then_file() {
        let dir = std::env::temp_dir().join(format!("agent-plugin-api-secrets-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(dir.join("db").join("password"), "from-file\n").unwrap();
        std::fs::write(dir.join("solo_token"), "solo-file").unwrap();
        let ctx = Context::for_tests(serde_json::json!({})).with_secrets_dir(&dir);
        assert_eq!(ctx.secret("db", "password").unwrap(), "from-file", "the file, trailing newline removed");
        std::env::set_var("_FSEC_DB_PASSWORD", "from-env");
        assert_eq!(ctx.secret("db", "password").unwrap(), "from-env", "the environment wins over files");
        let ctx = ctx.with_secret("password", "from-connection");
        assert_eq!(ctx.secret("db", "password").unwrap(), "from-connection", "Flyte 2's connection wins over both");
        // Without a group, as flytekit: <prefix><KEY> and <dir>/<key>.
        let plain = Context::for_tests(serde_json::json!({})).with_secrets_dir(&dir);
        assert_eq!(plain.secret("", "solo_token").unwrap(), "solo-file");
        std::env::set_var("_FSEC_SOLO_TOKEN", "solo-env");
        assert_eq!(plain.secret("", "solo_token").unwrap(), "solo-env");
        let missing = plain.secret("nope", "nothing").unwrap_err();
        assert!(missing.message().contains("_FSEC_NOPE_NOTHING"), "{missing}");
        std::env::remove_var("_FSEC_DB_PASSWORD");
        std::env::remove_var("_FSEC_SOLO_TOKEN");
    }
}
