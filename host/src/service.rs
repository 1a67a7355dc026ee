//! What each RPC does: route to an agent, or answer discovery from the registry.

use std::sync::Arc;

use agent_plugin_abi::PluginError;
use agent_proto::{flyteidl::admin, flyteidl2::connector};
use bytes::Bytes;
use prost::Message;
use tonic::{Status, Streaming};

use crate::{
    error::{PluginFailure, RpcError},
    plugin::{PluginStream, PluginVersion},
    registry::{Registry, Snapshot},
    route::{self, TaskKey},
    rpc::Rpc,
};

/// The request-serving half of the host: the registry and what answers from it.
#[derive(Debug, Default)]
pub struct Service {
    /// Which plugin version serves which task type.
    pub registry: Registry,
}

fn plugin_error(plugin: &PluginVersion, rpc: Rpc, key: &TaskKey, error: PluginError) -> RpcError {
    RpcError::Plugin(Box::new(PluginFailure {
        plugin: plugin.name().to_string(),
        version: plugin.version().to_string(),
        operation: rpc.operation(),
        task_type: key.name.clone(),
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
    /// Finds the agent for a routed request.
    fn route(&self, rpc: Rpc, body: &[u8]) -> Result<(TaskKey, Arc<PluginVersion>, u32), RpcError> {
        let key = route::task_key(rpc, body)?;
        match self.registry.snapshot().route(&key) {
            Some((plugin, agent)) => Ok((key, plugin, agent)),
            None => Err(RpcError::UnknownTaskType(key.name)),
        }
    }

    /// A unary RPC.
    pub async fn unary(&self, rpc: Rpc, body: Bytes) -> Result<Bytes, RpcError> {
        let encoded = match rpc {
            Rpc::V1ListAgents => admin::ListAgentsResponse { agents: agents_v1(&self.registry.snapshot()).collect() }.encode_to_vec(),
            Rpc::V2ListConnectors => {
                connector::ListConnectorsResponse { connectors: agents_v2(&self.registry.snapshot()).collect() }.encode_to_vec()
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
            _ => {
                let (key, plugin, agent) = self.route(rpc, &body)?;
                let method = rpc.abi_method().expect("routed RPCs have an ABI method");
                return plugin.call(agent, method, body).await.map_err(|e| plugin_error(&plugin, rpc, &key, e));
            }
        };
        Ok(Bytes::from(encoded))
    }

    /// A server-streaming RPC (GetTaskLogs): the plugin's stream, with the version it runs on.
    pub async fn open_stream(&self, rpc: Rpc, body: Bytes) -> Result<(Arc<PluginVersion>, PluginStream), RpcError> {
        let (key, plugin, agent) = self.route(rpc, &body)?;
        let method = rpc.abi_method().expect("routed RPCs have an ABI method");
        let stream = plugin.open_stream(agent, method, body).await.map_err(|e| plugin_error(&plugin, rpc, &key, e))?;
        Ok((plugin, stream))
    }

    /// Flyte 1's ExecuteTaskSync: reads the header and the inputs from the client stream (in
    /// that order, as propeller sends them) and answers with the agent's one response.
    pub async fn execute(&self, mut incoming: Streaming<Bytes>) -> Result<Bytes, Status> {
        let rpc = Rpc::V1Execute;
        let invalid = |m: &str| Status::from(RpcError::InvalidRequest(m.to_string()));
        let undecodable = |e: String| invalid(&format!("ExecuteTaskSync request does not decode: {e}"));
        let first = incoming
            .message()
            .await
            .map_err(crate::grpc::fix_size_status)?
            .ok_or_else(|| invalid("ExecuteTaskSync: the stream ended before its header"))?;
        let header = route::field_bytes(&first, 1)
            .map_err(undecodable)?
            .ok_or_else(|| invalid("ExecuteTaskSync: the first message must be the header"))?;
        let (key, plugin, agent) = self.route(rpc, &header)?;
        let second = incoming
            .message()
            .await
            .map_err(crate::grpc::fix_size_status)?
            .ok_or_else(|| invalid("ExecuteTaskSync: the stream ended before its inputs"))?;
        let inputs = route::field_bytes(&second, 2)
            .map_err(undecodable)?
            .ok_or_else(|| invalid("ExecuteTaskSync: the second message must be the inputs"))?;
        let request = Bytes::from(route::execute_request(&header, &inputs));
        let method = rpc.abi_method().expect("routed RPCs have an ABI method");
        plugin.call(agent, method, request).await.map_err(|e| plugin_error(&plugin, rpc, &key, e).into_status())
    }
}
