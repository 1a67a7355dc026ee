//! The sensor agent: flytekit's sensor engine (task type `sensor`) for the sensors agent-host
//! can run without Python: `flytekit.sensor.file_sensor.FileSensor`.
//!
//! `create` reads `custom` (`sensor_module`, `sensor_name`, `sensor_config`, as flytekit's
//! `BaseSensor.get_custom` writes it) and the input `path`, and keeps them in the resource meta;
//! each `get` checks whether the path exists now (`SUCCEEDED`) or not yet (`RUNNING`), like
//! flytekit's `FileSensor.poke`. A sensor this agent does not know fails the task at once with
//! the list of those it does. Paths are local, `file://`, or object-store URIs (`s3://`,
//! `gs://`, `abfs://`), checked through the `object_store` crate.

use agent_plugin_api::{tracing, AgentError, AsyncAgent, Context, Literals, Resource, TaskRequest};
use serde::{Deserialize, Serialize};

/// The sensors served, as `(sensor_module, sensor_name)`.
pub const SENSORS: &[(&str, &str)] = &[("flytekit.sensor.file_sensor", "FileSensor")];

/// `TaskTemplate.custom` of a sensor task (flytekit's `SensorMetadata` without `inputs`).
#[derive(Debug, Deserialize)]
struct SensorCustom {
    sensor_module: String,
    sensor_name: String,
    #[serde(default)]
    sensor_config: Option<serde_json::Value>,
}

/// What Flyte keeps between calls: flytekit's `SensorMetadata` fields, plus `unknown` when the
/// sensor is not served (reported by the first `get`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SensorMeta {
    /// The sensor's Python module.
    pub sensor_module: String,
    /// The sensor's class name.
    pub sensor_name: String,
    /// The sensor's configuration (`sensor_config.to_dict()`), kept as flytekit keeps it.
    #[serde(default)]
    pub sensor_config: Option<serde_json::Value>,
    /// The inputs (FileSensor: `path`).
    #[serde(default)]
    pub inputs: serde_json::Map<String, serde_json::Value>,
}

/// Runs flytekit's sensors natively.
#[derive(Debug, Default)]
pub struct Sensor {
    stores: Stores,
}

fn served() -> String {
    SENSORS.iter().map(|(module, name)| format!("{module}.{name}")).collect::<Vec<_>>().join(", ")
}

impl AsyncAgent for Sensor {
    // flytekit's name for its sensor engine, so that ListAgents reads the same.
    const NAME: &'static str = "Sensor";
    const TASK_TYPE: &'static str = "sensor";
    type Meta = SensorMeta;

    fn new(_ctx: &Context) -> Result<Self, AgentError> {
        Ok(Self::default())
    }

    async fn create(&self, _ctx: &Context, task: TaskRequest) -> Result<SensorMeta, AgentError> {
        let custom: SensorCustom = task.custom()?;
        if !SENSORS.contains(&(custom.sensor_module.as_str(), custom.sensor_name.as_str())) {
            // flytekit would import the module and fail every GetTask with an INTERNAL error;
            // a sensor that cannot run here fails the task at once, saying what can.
            return Err(AgentError::permanent(format!(
                "sensor {}.{} is not served by agent-host's sensor agent (it runs no Python); the sensors it serves: {}",
                custom.sensor_module,
                custom.sensor_name,
                served()
            )));
        }
        let path: String = task.input("path")?;
        let mut inputs = serde_json::Map::new();
        inputs.insert("path".into(), path.into());
        Ok(SensorMeta { sensor_module: custom.sensor_module, sensor_name: custom.sensor_name, sensor_config: custom.sensor_config, inputs })
    }

    async fn get(&self, _ctx: &Context, meta: SensorMeta) -> Result<Resource, AgentError> {
        let path = meta.inputs.get("path").and_then(|p| p.as_str()).unwrap_or_default();
        Ok(if self.stores.file_exists(path).await? { Resource::succeeded(Literals::new()) } else { Resource::running() })
    }

    async fn delete(&self, _ctx: &Context, _meta: SensorMeta) -> Result<(), AgentError> {
        // Nothing runs between polls: nothing to cancel (flytekit's delete is a no-op too).
        Ok(())
    }
}

/// The object stores the polls have used, one per bucket (scheme and authority of the URI), so
/// that each poll reuses the store's client and its open connections, as fsspec reuses its
/// filesystems for flytekit. A fresh store per poll cost a new connection and TLS handshake
/// each time, and reading the system's root certificates (about 300 file operations, 3-5 ms).
#[derive(Debug, Default)]
pub struct Stores(std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<dyn object_store::ObjectStore>>>);

/// At most this many buckets' stores are kept; past it, all are dropped and built again as the
/// polls need them.
const MAX_STORES: usize = 64;

impl Stores {
    /// FileSensor's `poke`: whether `path` exists (a file or a directory). Local paths and
    /// `file://` URIs are checked on this machine; object-store URIs through `object_store`
    /// (see [`Stores::remote_exists`]).
    pub async fn file_exists(&self, path: &str) -> Result<bool, AgentError> {
        let local = match path.split_once("://") {
            None => path,
            Some(("file", rest)) => rest,
            Some(_) => return self.remote_exists(path).await,
        };
        match tokio::fs::try_exists(local).await {
            Ok(exists) => Ok(exists),
            Err(e) => {
                // fsspec's exists() answers False when the path cannot be looked at.
                tracing::warn!(path = local, error = %e, "FileSensor: cannot check the path; reporting it absent");
                Ok(false)
            }
        }
    }

    /// Whether an object-store path exists: an object, or a "directory" (a prefix with objects
    /// under it), as fsspec's `exists` answers for s3fs, gcsfs and adlfs.
    ///
    /// * `s3://bucket/key` (also `s3a://`): credentials and settings from the environment, as the
    ///   AWS SDKs read them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    ///   `AWS_ENDPOINT` for S3-compatible stores such as MinIO, `AWS_ALLOW_HTTP`; web identity and
    ///   instance metadata when no keys are set).
    /// * `gs://bucket/key` (also `gcs://`): `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS`
    ///   or the instance's service account.
    /// * `abfs://container@account.dfs.core.windows.net/key` (also `abfss://`, `az://`, `adl://`,
    ///   `azure://`): `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, workload identity…
    ///
    /// A store that cannot be reached or refuses the credentials fails the call (Flyte asks again,
    /// and fails the task after repeated errors); a path that is not a valid URI fails the task.
    pub async fn remote_exists(&self, uri: &str) -> Result<bool, AgentError> {
        use object_store::{aws::AmazonS3Builder, azure::MicrosoftAzureBuilder, gcp::GoogleCloudStorageBuilder, path::Path, ObjectStore};
        use std::sync::Arc;

        let (scheme, rest) = uri.split_once("://").unwrap_or_default();
        let invalid = |e: &dyn std::fmt::Display| AgentError::permanent(format!("FileSensor: cannot use {uri}: {e}"));
        let (bucket, key) = rest.split_once('/').map_or((rest, ""), |(bucket, key)| (bucket, key.trim_end_matches('/')));
        let cached = format!("{scheme}://{bucket}");
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&cached).cloned();
        let store = match kept {
            Some(store) => store,
            None => {
                let store: Arc<dyn ObjectStore> = match scheme {
                    "s3" | "s3a" => Arc::new(AmazonS3Builder::from_env().with_url(uri).build().map_err(|e| invalid(&e))?),
                    "gs" | "gcs" => Arc::new(GoogleCloudStorageBuilder::from_env().with_url(uri).build().map_err(|e| invalid(&e))?),
                    "abfs" | "abfss" | "az" | "adl" | "azure" => {
                        Arc::new(MicrosoftAzureBuilder::from_env().with_url(uri).build().map_err(|e| invalid(&e))?)
                    }
                    other => {
                        return Err(AgentError::permanent(format!(
                            "FileSensor: {other}:// paths are not supported (local paths, file://, s3://, gs://, abfs:// are): {uri}"
                        )))
                    }
                };
                let mut stores = self.0.lock().unwrap_or_else(|p| p.into_inner());
                if stores.len() >= MAX_STORES {
                    stores.clear();
                }
                stores.entry(cached).or_insert(store).clone()
            }
        };
        let path = Path::parse(key).map_err(|e| invalid(&e))?;
        let unreachable = |e: object_store::Error| AgentError::new(format!("FileSensor: cannot check {uri}: {e}"));
        match store.head(&path).await {
            Ok(_) => return Ok(true),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(unreachable(e)),
        }
        // Not an object: a "directory" exists when something is under it.
        let listing = store.list_with_delimiter(Some(&path)).await.map_err(unreachable)?;
        Ok(!listing.objects.is_empty() || !listing.common_prefixes.is_empty())
    }
}

agent_plugin_api::export_plugin!(name: "sensor", agents: [async Sensor]);
