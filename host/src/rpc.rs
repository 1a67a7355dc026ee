//! The RPCs the host serves, by gRPC path.

use agent_plugin_abi::method;

/// One RPC of the Flyte 1 or Flyte 2 agent protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Rpc {
    V1Create,
    V1Get,
    V1Delete,
    V1Metrics,
    V1Logs,
    V1Execute,
    V1GetAgent,
    V1ListAgents,
    V2Create,
    V2Get,
    V2Delete,
    V2Metrics,
    V2Logs,
    V2GetConnector,
    V2ListConnectors,
}

/// How an RPC streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses (GetTaskLogs).
    ServerStream,
    /// Streams both ways (ExecuteTaskSync).
    Bidi,
}

/// gRPC service names served by the host.
pub mod service {
    /// Flyte 1 async agents.
    pub const V1_ASYNC: &str = "flyteidl.service.AsyncAgentService";
    /// Flyte 1 sync agents.
    pub const V1_SYNC: &str = "flyteidl.service.SyncAgentService";
    /// Flyte 1 discovery.
    pub const V1_METADATA: &str = "flyteidl.service.AgentMetadataService";
    /// Flyte 2 connectors.
    pub const V2_ASYNC: &str = "flyteidl2.connector.AsyncConnectorService";
    /// Flyte 2 discovery.
    pub const V2_METADATA: &str = "flyteidl2.connector.ConnectorMetadataService";
    /// Every service above.
    pub const ALL: [&str; 5] = [V1_ASYNC, V1_SYNC, V1_METADATA, V2_ASYNC, V2_METADATA];
}

impl Rpc {
    /// The RPC at a gRPC path (`/package.Service/Method`).
    pub fn from_path(path: &str) -> Option<Rpc> {
        let (svc, m) = path.strip_prefix('/')?.split_once('/')?;
        Rpc::of(svc, m)
    }

    /// The method `method` of the service named `service`. Inlined where the service is a
    /// constant (each served service knows its name), the match is on the method alone.
    #[inline(always)]
    pub fn of(service: &str, method: &str) -> Option<Rpc> {
        use Rpc::*;
        Some(match (service, method) {
            (service::V1_ASYNC, "CreateTask") => V1Create,
            (service::V1_ASYNC, "GetTask") => V1Get,
            (service::V1_ASYNC, "DeleteTask") => V1Delete,
            (service::V1_ASYNC, "GetTaskMetrics") => V1Metrics,
            (service::V1_ASYNC, "GetTaskLogs") => V1Logs,
            (service::V1_SYNC, "ExecuteTaskSync") => V1Execute,
            (service::V1_METADATA, "GetAgent") => V1GetAgent,
            (service::V1_METADATA, "ListAgents") => V1ListAgents,
            (service::V2_ASYNC, "CreateTask") => V2Create,
            (service::V2_ASYNC, "GetTask") => V2Get,
            (service::V2_ASYNC, "DeleteTask") => V2Delete,
            (service::V2_ASYNC, "GetTaskMetrics") => V2Metrics,
            (service::V2_ASYNC, "GetTaskLogs") => V2Logs,
            (service::V2_METADATA, "GetConnector") => V2GetConnector,
            (service::V2_METADATA, "ListConnectors") => V2ListConnectors,
            _ => return None,
        })
    }

    /// Its streaming kind.
    pub fn kind(self) -> Kind {
        match self {
            Rpc::V1Logs | Rpc::V2Logs => Kind::ServerStream,
            Rpc::V1Execute => Kind::Bidi,
            _ => Kind::Unary,
        }
    }

    /// Whether it belongs to Flyte 1.
    pub fn is_v1(self) -> bool {
        matches!(
            self,
            Rpc::V1Create
                | Rpc::V1Get
                | Rpc::V1Delete
                | Rpc::V1Metrics
                | Rpc::V1Logs
                | Rpc::V1Execute
                | Rpc::V1GetAgent
                | Rpc::V1ListAgents
        )
    }

    /// The method number passed to the plugin, for RPCs answered by an agent.
    pub fn abi_method(self) -> Option<u32> {
        use Rpc::*;
        Some(match self {
            V1Create => method::V1_CREATE,
            V1Get => method::V1_GET,
            V1Delete => method::V1_DELETE,
            V1Metrics => method::V1_METRICS,
            V1Logs => method::V1_LOGS,
            V1Execute => method::V1_EXECUTE,
            V2Create => method::V2_CREATE,
            V2Get => method::V2_GET,
            V2Delete => method::V2_DELETE,
            V2Metrics => method::V2_METRICS,
            V2Logs => method::V2_LOGS,
            V1GetAgent | V1ListAgents | V2GetConnector | V2ListConnectors => return None,
        })
    }

    /// The operation name in logs, errors and flytekit's metric labels.
    pub fn operation(self) -> &'static str {
        use Rpc::*;
        match self {
            V1Create | V2Create => "create",
            V1Get | V2Get => "get",
            V1Delete | V2Delete => "delete",
            V1Execute => "do",
            V1Metrics | V2Metrics => "metrics",
            V1Logs | V2Logs => "logs",
            V1GetAgent | V2GetConnector => "get_agent",
            V1ListAgents | V2ListConnectors => "list_agents",
        }
    }

    /// The operation label of flytekit's request metrics, for the RPCs it counts.
    pub fn flytekit_operation(self) -> Option<&'static str> {
        use Rpc::*;
        match self {
            V1Create | V2Create => Some("create"),
            V1Get | V2Get => Some("get"),
            V1Delete | V2Delete => Some("delete"),
            V1Execute => Some("do"),
            _ => None,
        }
    }

    /// The method name, for messages.
    pub fn name(self) -> &'static str {
        use Rpc::*;
        match self {
            V1Create | V2Create => "CreateTask",
            V1Get | V2Get => "GetTask",
            V1Delete | V2Delete => "DeleteTask",
            V1Metrics | V2Metrics => "GetTaskMetrics",
            V1Logs | V2Logs => "GetTaskLogs",
            V1Execute => "ExecuteTaskSync",
            V1GetAgent => "GetAgent",
            V1ListAgents => "ListAgents",
            V2GetConnector => "GetConnector",
            V2ListConnectors => "ListConnectors",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        assert_eq!(Rpc::from_path("/flyteidl.service.AsyncAgentService/CreateTask"), Some(Rpc::V1Create));
        assert_eq!(Rpc::from_path("/flyteidl2.connector.ConnectorMetadataService/ListConnectors"), Some(Rpc::V2ListConnectors));
        assert_eq!(Rpc::from_path("/flyteidl.service.AsyncAgentService/Nope"), None);
        assert_eq!(Rpc::from_path("nonsense"), None);
    }
}
