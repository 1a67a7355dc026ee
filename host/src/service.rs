//! What each RPC does: route to an agent, or answer discovery from the registry.

use std::{sync::Arc, time::Instant};

use agent_plugin_abi::PluginError;
use agent_proto::{flyteidl::admin, flyteidl2::connector};
use bytes::Bytes;
use prost::Message;
use tonic::Status;

use crate::{
    error::{PluginFailure, RpcError},
    metrics::Metrics,
    plugin::{PluginStream, PluginVersion},
    registry::{Registry, Snapshot},
    route::{self, Routed},
    rpc::Rpc,
    shutdown::Drain,
};

/// The request-serving half of the host: the registry and what answers from it.
#[derive(Debug, Default)]
pub struct Service {
    /// Which plugin version serves which task type.
    pub registry: Registry,
    /// Request and plugin metrics.
    pub metrics: Metrics,
    /// Most calls one agent may run at once (0: no limit).
    pub max_calls_per_agent: usize,
    /// Fires at shutdown; calls still running when the grace period ends are cut short.
    pub drain: Drain,
    /// Calls (and log streams) running in the Flyte services, so a shutdown knows when its
    /// work is done without waiting for long-lived streams of other services (health Watch).
    active: std::sync::atomic::AtomicUsize,
    /// Calls started since the host started (for [`crate::memory::trim_when_idle`]).
    started: std::sync::atomic::AtomicU64,
}

/// Counts a call as active while alive.
#[derive(Debug)]
pub struct ActiveCall(Arc<Service>);

impl ActiveCall {
    /// The service the call runs in.
    pub fn service(&self) -> &Arc<Service> {
        &self.0
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn plugin_error(plugin: &PluginVersion, rpc: Rpc, task_type: &str, error: PluginError) -> RpcError {
    RpcError::Plugin(Box::new(PluginFailure {
        plugin: plugin.name().to_string(),
        version: plugin.version().to_string(),
        operation: rpc.operation(),
        task_type: task_type.to_string(),
        error,
    }))
}

fn agents_v1(snapshot: &Snapshot) -> impl Iterator<Item = admin::Agent> + '_ {
    snapshot.plugins.iter().flat_map(|p| p.agents().iter()).map(|a| admin::Agent {
        name: a.name.clone(),
        // Deprecated, but propeller still reads it (each name registered at version 0).
        #[allow(deprecated)]
        supported_task_types: a.categories.iter().map(|c| c.name.clone()).collect(),
        is_sync: a.is_sync,
        supported_task_categories: a.categories.clone(),
    })
}

fn agents_v2(snapshot: &Snapshot) -> impl Iterator<Item = connector::Connector> + '_ {
    agents_v1(snapshot).map(|a| connector::Connector {
        name: a.name,
        supported_task_categories: a
            .supported_task_categories
            .into_iter()
            .map(|c| connector::TaskCategory { name: c.name, version: c.version })
            .collect(),
    })
}

fn decode_name(rpc: Rpc, body: &[u8]) -> Result<String, RpcError> {
    // GetAgentRequest and GetConnectorRequest are both `{ string name = 1; }`.
    admin::GetAgentRequest::decode(body)
        .map(|r| r.name)
        .map_err(|e| RpcError::InvalidRequest(format!("{} request does not decode: {e}", rpc.name())))
}

impl Service {
    /// A service with these limits and this drain signal.
    pub fn new(max_calls_per_agent: usize, drain: Drain) -> Service {
        Service { max_calls_per_agent, drain, ..Service::default() }
    }

    /// Marks a call active until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveCall {
        self.active.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ActiveCall(self.clone())
    }

    /// Calls and log streams started so far.
    pub fn calls_started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls and log streams running now.
    pub fn active_calls(&self) -> usize {
        self.active.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Finds the agent for a routed request.
    fn route(&self, rpc: Rpc, body: &Bytes) -> Result<(Routed, Arc<PluginVersion>, u32), RpcError> {
        let routed = route::task_key(rpc, body)?;
        match self.registry.snapshot().route(routed.name(), routed.version) {
            Some((plugin, agent)) => Ok((routed, plugin, agent)),
            None => Err(RpcError::UnknownTaskType(routed.name().to_string())),
        }
    }

    /// Calls the agent within its concurrency limit, counting panics.
    async fn invoke(&self, plugin: &Arc<PluginVersion>, agent: u32, rpc: Rpc, task_type: &str, body: Bytes) -> Result<Bytes, RpcError> {
        let Some(_slot) = plugin.enter(agent, self.max_calls_per_agent) else {
            self.metrics.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(RpcError::Overloaded(format!(
                "agent {} of plugin {} {} is running {} calls (server.max_calls_per_agent)",
                plugin.agents().get(agent as usize).map(|a| a.name.as_str()).unwrap_or("?"),
                plugin.name(),
                plugin.version(),
                self.max_calls_per_agent
            )));
        };
        let method = rpc.abi_method().expect("routed RPCs have an ABI method");
        plugin.call(agent, method, body).await.map_err(|e| {
            if e.code == agent_plugin_abi::ERR_PANIC {
                self.metrics.panicked(plugin.name());
            }
            plugin_error(plugin, rpc, task_type, e)
        })
    }

    /// A routed unary RPC, with flytekit's request metrics.
    async fn routed(&self, rpc: Rpc, body: Bytes) -> Result<Bytes, RpcError> {
        let started = Instant::now();
        let (routed, result) = match route::task_key(rpc, &body) {
            Err(e) => (None, Err(e)),
            Ok(routed) => {
                let name = routed.name();
                let result = match self.registry.snapshot().route(name, routed.version) {
                    None => Err(RpcError::UnknownTaskType(name.to_string())),
                    Some((plugin, agent)) => {
                        if let Some(n) = routed.inputs_len {
                            self.metrics.input_bytes(name, n);
                        }
                        self.invoke(&plugin, agent, rpc, name, body).await
                    }
                };
                (Some(routed), result)
            }
        };
        let task_type = routed.as_ref().map_or("", Routed::name);
        if let Some(op) = rpc.flytekit_operation() {
            self.metrics.request(task_type, op, started.elapsed(), result.as_ref().err().map(RpcError::metric_code));
        }
        result
    }

    /// A unary RPC.
    pub async fn unary(&self, rpc: Rpc, body: Bytes) -> Result<Bytes, RpcError> {
        let encoded = match rpc {
            Rpc::V1ListAgents => {
                let snapshot = self.registry.snapshot();
                return Ok(snapshot
                    .list_v1
                    .get_or_init(|| admin::ListAgentsResponse { agents: agents_v1(&snapshot).collect() }.encode_to_vec().into())
                    .clone());
            }
            Rpc::V2ListConnectors => {
                let snapshot = self.registry.snapshot();
                return Ok(snapshot
                    .list_v2
                    .get_or_init(|| connector::ListConnectorsResponse { connectors: agents_v2(&snapshot).collect() }.encode_to_vec().into())
                    .clone());
            }
            Rpc::V1GetAgent => {
                let name = decode_name(rpc, &body)?;
                let agent = agents_v1(&self.registry.snapshot()).find(|a| a.name == name).ok_or(RpcError::UnknownAgent(name))?;
                admin::GetAgentResponse { agent: Some(agent) }.encode_to_vec()
            }
            Rpc::V2GetConnector => {
                let name = decode_name(rpc, &body)?;
                let c = agents_v2(&self.registry.snapshot()).find(|a| a.name == name).ok_or(RpcError::UnknownAgent(name))?;
                connector::GetConnectorResponse { connector: Some(c) }.encode_to_vec()
            }
            _ => return self.routed(rpc, body).await,
        };
        Ok(Bytes::from(encoded))
    }

    /// A server-streaming RPC (GetTaskLogs): the plugin's stream, with the version it runs on.
    pub async fn open_stream(&self, rpc: Rpc, body: Bytes) -> Result<(Arc<PluginVersion>, PluginStream), RpcError> {
        let (routed, plugin, agent) = self.route(rpc, &body)?;
        let method = rpc.abi_method().expect("routed RPCs have an ABI method");
        let stream = plugin.open_stream(agent, method, body).await.map_err(|e| plugin_error(&plugin, rpc, routed.name(), e))?;
        Ok((plugin, stream))
    }

    /// Flyte 1's ExecuteTaskSync: reads the header and the inputs from the client stream (in
    /// that order, as propeller sends them) and answers with the agent's one response.
    pub async fn execute(&self, mut incoming: crate::framing::Incoming) -> Result<Bytes, Status> {
        let rpc = Rpc::V1Execute;
        let started = Instant::now();
        let invalid = |m: &str| RpcError::InvalidRequest(m.to_string());
        let undecodable = |e: String| invalid(&format!("ExecuteTaskSync request does not decode: {e}"));
        let mut routed_as: Option<Routed> = None;
        let result: Result<Bytes, Status> = async {
            let first = incoming.message().await?.ok_or_else(|| invalid("ExecuteTaskSync: the stream ended before its header"))?;
            let header = route::field_bytes(&first, 1)
                .map_err(undecodable)?
                .ok_or_else(|| invalid("ExecuteTaskSync: the first message must be the header"))?;
            let routed = routed_as.insert(route::task_key(rpc, &header)?);
            let name = routed.name();
            let (plugin, agent) =
                self.registry.snapshot().route(name, routed.version).ok_or_else(|| RpcError::UnknownTaskType(name.to_string()))?;
            let second = incoming.message().await?.ok_or_else(|| invalid("ExecuteTaskSync: the stream ended before its inputs"))?;
            let inputs = route::field_bytes(&second, 2)
                .map_err(undecodable)?
                .ok_or_else(|| invalid("ExecuteTaskSync: the second message must be the inputs"))?;
            self.metrics.input_bytes(name, inputs.len());
            let request = Bytes::from(route::execute_request(&header, &inputs));
            Ok(self.invoke(&plugin, agent, rpc, name, request).await?)
        }
        .await;
        let code = result.as_ref().err().map(|s| if s.code() == tonic::Code::NotFound { "404" } else { "500" });
        self.metrics.request(routed_as.as_ref().map_or("", Routed::name), "do", started.elapsed(), code);
        result
    }
}
