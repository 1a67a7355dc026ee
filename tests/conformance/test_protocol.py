"""Drive a running agent-host, serving the echo plugin, with Flyte's own client stubs.

Flyte 1 clients use flyteidl==1.16.8 (`flyteidl.service.*Agent*`), Flyte 2 clients
flyteidl2==2.0.53 (`flyteidl2.connector.*`); both protocols are served on one port.

The echo plugin (version 0.1.0) has two agents:
  "Echo Sync Agent"  - task type echo_sync  v0, sync, no metrics/logs
  "Echo Async Agent" - task type echo_async v0, async, metrics and logs
Both answer SUCCEEDED with the inputs as outputs. A template.custom of {"echo_error": msg}
makes the agent fail with msg, {"echo_panic": msg} makes it panic.
"""

import grpc
import pytest
from google.protobuf import descriptor_pb2, struct_pb2, text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flyteidl.admin import agent_pb2 as admin
from flyteidl.core import execution_pb2 as core_execution
from flyteidl.core import identifier_pb2 as core_identifier
from flyteidl.core import literals_pb2 as core_literals
from flyteidl.core import tasks_pb2 as core_tasks
from flyteidl.service import agent_pb2_grpc as v1_grpc
from flyteidl2.connector import connector_pb2 as connector
from flyteidl2.connector import service_pb2_grpc as v2_grpc
from flyteidl2.core import execution_pb2 as core2_execution
from flyteidl2.core import identifier_pb2 as core2_identifier
from flyteidl2.core import literals_pb2 as core2_literals
from flyteidl2.core import security_pb2 as core2_security
from flyteidl2.core import tasks_pb2 as core2_tasks
from flyteidl2.task import common_pb2 as task2

ECHO_SYNC = "echo_sync"
ECHO_ASYNC = "echo_async"
SYNC_AGENT = "Echo Sync Agent"
ASYNC_AGENT = "Echo Async Agent"
PLUGIN_NAME = "echo"
PLUGIN_VERSION = "0.1.0"

OUTPUT_PREFIX = "s3://conformance-bucket/metadata/run-1/n0/0"
TIMEOUT_S = 10
BIG_TIMEOUT_S = 60
MiB = 1024 * 1024

V1_SERVICES = ("flyteidl.service.AsyncAgentService",
               "flyteidl.service.SyncAgentService",
               "flyteidl.service.AgentMetadataService")
V2_SERVICES = ("flyteidl2.connector.AsyncConnectorService",
               "flyteidl2.connector.ConnectorMetadataService")


def not_found_text(task_type):
    """flytekit's wording for an unknown task type, which the host keeps."""
    return "Cannot find connector for task type: %s." % task_type


# --------------------------------------------------------------------------------------------
# Request builders shared by both protocols (v1 and v2 core messages have the same shapes)
# --------------------------------------------------------------------------------------------

def primitive(lit, **value):
    return lit.Literal(scalar=lit.Scalar(primitive=lit.Primitive(**value)))


def sample_literals(lit, text="hello, flyte"):
    """Named input literals in a deliberately non-alphabetical order."""
    return [
        ("count", primitive(lit, integer=42)),
        ("greeting", primitive(lit, string_value=text)),
        ("ratio", primitive(lit, float_value=2.5)),
        ("items", lit.Literal(collection=lit.LiteralCollection(
            literals=[primitive(lit, integer=i) for i in (1, 2, 3)]))),
    ]


def struct(values):
    s = struct_pb2.Struct()
    s.update(values)
    return s


def task_template(tasks, identifier, task_type, custom=None):
    return tasks.TaskTemplate(
        id=identifier.Identifier(resource_type=identifier.TASK, project="flytesnacks",
                                 domain="development", name="conformance.%s" % task_type,
                                 version="v1"),
        type=task_type,
        task_type_version=0,
        custom=struct(custom or {}),
    )


def execution_metadata(metadata_cls, identifier):
    workflow_run = identifier.WorkflowExecutionIdentifier(
        project="flytesnacks", domain="development", name="run-1")
    return metadata_cls(
        task_execution_id=identifier.TaskExecutionIdentifier(
            task_id=identifier.Identifier(resource_type=identifier.TASK, project="flytesnacks",
                                          domain="development", name="conformance.task",
                                          version="v1"),
            node_execution_id=identifier.NodeExecutionIdentifier(node_id="n0",
                                                                 execution_id=workflow_run),
            retry_attempt=0),
        namespace="flytesnacks-development",
        labels={"team": "conformance"},
        annotations={"note": "from the conformance suite"},
        k8s_service_account="default",
        environment_variables={"FOO": "bar"},
    )


# --------------------------------------------------------------------------------------------
# One small client per protocol with the same methods, so behaviour tests run on both
# --------------------------------------------------------------------------------------------

class V1Client:
    name = "v1"
    lit = core_literals

    def __init__(self, channel):
        self.tasks = v1_grpc.AsyncAgentServiceStub(channel)
        self.sync = v1_grpc.SyncAgentServiceStub(channel)
        self.metadata = v1_grpc.AgentMetadataServiceStub(channel)

    @staticmethod
    def category(task_type):
        return admin.TaskCategory(name=task_type, version=0)

    @staticmethod
    def inputs(named):
        return core_literals.LiteralMap(literals=dict(named))

    def create_request(self, task_type, named, custom=None):
        return admin.CreateTaskRequest(
            inputs=self.inputs(named),
            template=task_template(core_tasks, core_identifier, task_type, custom),
            output_prefix=OUTPUT_PREFIX,
            task_execution_metadata=execution_metadata(admin.TaskExecutionMetadata,
                                                       core_identifier))

    def create(self, task_type, named=None, custom=None, timeout=TIMEOUT_S):
        named = sample_literals(self.lit) if named is None else named
        request = self.create_request(task_type, named, custom)
        return self.tasks.CreateTask(request, timeout=timeout).resource_meta

    def get(self, task_type, meta):
        request = admin.GetTaskRequest(task_category=self.category(task_type),
                                       resource_meta=meta, output_prefix=OUTPUT_PREFIX)
        return self.tasks.GetTask(request, timeout=TIMEOUT_S).resource

    def delete(self, task_type, meta):
        request = admin.DeleteTaskRequest(task_category=self.category(task_type),
                                          resource_meta=meta)
        return self.tasks.DeleteTask(request, timeout=TIMEOUT_S)

    def metrics(self, task_type, meta, queries):
        request = admin.GetTaskMetricsRequest(task_category=self.category(task_type),
                                              resource_meta=meta, queries=queries)
        return self.tasks.GetTaskMetrics(request, timeout=TIMEOUT_S).results

    def logs(self, task_type, meta):
        request = admin.GetTaskLogsRequest(task_category=self.category(task_type),
                                           resource_meta=meta, lines=100)
        return list(self.tasks.GetTaskLogs(request, timeout=TIMEOUT_S))

    @staticmethod
    def log_lines(body):
        return body.structured_lines

    @staticmethod
    def outputs(resource):
        """Comparable outputs: a LiteralMap (map order carries no meaning)."""
        return resource.outputs

    def expected_outputs(self, named):
        return self.inputs(named)

    def agents(self):
        reply = self.metadata.ListAgents(admin.ListAgentsRequest(), timeout=TIMEOUT_S)
        return list(reply.agents)

    def agent(self, name):
        return self.metadata.GetAgent(admin.GetAgentRequest(name=name), timeout=TIMEOUT_S).agent


class V2Client:
    name = "v2"
    lit = core2_literals

    def __init__(self, channel):
        self.tasks = v2_grpc.AsyncConnectorServiceStub(channel)
        self.metadata = v2_grpc.ConnectorMetadataServiceStub(channel)

    @staticmethod
    def category(task_type):
        return connector.TaskCategory(name=task_type, version=0)

    @staticmethod
    def inputs(named):
        return task2.Inputs(literals=[task2.NamedLiteral(name=n, value=v) for n, v in named])

    @staticmethod
    def connection(task_type):
        return core2_security.Connection(task_type=task_type,
                                         secrets={"api_key": "not-a-real-key"},
                                         configs={"region": "moon-1"})

    def create_request(self, task_type, named, custom=None):
        return connector.CreateTaskRequest(
            inputs=self.inputs(named),
            template=task_template(core2_tasks, core2_identifier, task_type, custom),
            output_prefix=OUTPUT_PREFIX,
            task_execution_metadata=execution_metadata(connector.TaskExecutionMetadata,
                                                       core2_identifier),
            connection=self.connection(task_type))

    def create(self, task_type, named=None, custom=None, timeout=TIMEOUT_S):
        named = sample_literals(self.lit) if named is None else named
        request = self.create_request(task_type, named, custom)
        return self.tasks.CreateTask(request, timeout=timeout).resource_meta

    def get(self, task_type, meta):
        request = connector.GetTaskRequest(task_category=self.category(task_type),
                                           resource_meta=meta, output_prefix=OUTPUT_PREFIX,
                                           connection=self.connection(task_type))
        return self.tasks.GetTask(request, timeout=TIMEOUT_S).resource

    def delete(self, task_type, meta):
        request = connector.DeleteTaskRequest(task_category=self.category(task_type),
                                              resource_meta=meta,
                                              connection=self.connection(task_type))
        return self.tasks.DeleteTask(request, timeout=TIMEOUT_S)

    def metrics(self, task_type, meta, queries):
        request = connector.GetTaskMetricsRequest(task_category=self.category(task_type),
                                                  resource_meta=meta, queries=queries)
        return self.tasks.GetTaskMetrics(request, timeout=TIMEOUT_S).results

    def logs(self, task_type, meta):
        request = connector.GetTaskLogsRequest(task_category=self.category(task_type),
                                               resource_meta=meta, lines=100)
        return list(self.tasks.GetTaskLogs(request, timeout=TIMEOUT_S))

    @staticmethod
    def log_lines(body):
        return body.lines

    @staticmethod
    def outputs(resource):
        """Comparable outputs: (name, literal) pairs in the order the host sent them."""
        return [(nl.name, nl.value) for nl in resource.outputs.literals]

    @staticmethod
    def expected_outputs(named):
        return list(named)

    def agents(self):
        reply = self.metadata.ListConnectors(connector.ListConnectorsRequest(),
                                             timeout=TIMEOUT_S)
        return list(reply.connectors)

    def agent(self, name):
        reply = self.metadata.GetConnector(connector.GetConnectorRequest(name=name),
                                           timeout=TIMEOUT_S)
        return reply.connector


PHASE_SUCCEEDED = {"v1": core_execution.TaskExecution.SUCCEEDED,
                   "v2": core2_execution.TaskExecution.SUCCEEDED}


@pytest.fixture(params=["v1", "v2"])
def client(request, channel):
    return {"v1": V1Client, "v2": V2Client}[request.param](channel)


@pytest.fixture
def v1(channel):
    return V1Client(channel)


@pytest.fixture
def v2(channel):
    return V2Client(channel)


# --------------------------------------------------------------------------------------------
# Assertion helpers
# --------------------------------------------------------------------------------------------

def expect_error(code, call, *args, **kwargs):
    """Run call(*args, **kwargs); it must fail with grpc status `code`. Returns the error."""
    try:
        result = call(*args, **kwargs)
    except grpc.RpcError as err:
        assert err.code() == code, ("expected %s, got %s: %r"
                                    % (code.name, err.code().name, err.details()))
        return err
    pytest.fail("expected %s, but the call succeeded with %r" % (code.name, result))


def categories(agent):
    return [(c.name, c.version) for c in agent.supported_task_categories]


def phase_name(client, phase):
    module = core_execution if client.name == "v1" else core2_execution
    return module.TaskExecution.Phase.Name(phase)


def assert_succeeded_with_inputs(client, resource, named):
    assert resource.phase == PHASE_SUCCEEDED[client.name], (
        "phase %s (message %r)" % (phase_name(client, resource.phase), resource.message))
    assert resource.HasField("outputs"), "SUCCEEDED resource carries no inline outputs"
    got, want = client.outputs(resource), client.expected_outputs(named)
    assert got == want, "outputs differ from the inputs:\n  got:  %s\n  want: %s" % (
        one_line(got), one_line(want))


def one_line(value):
    """A compact text form of a message or of a list of (name, message) pairs."""
    if isinstance(value, list):
        return "[%s]" % ", ".join("%s: {%s}" % (n, one_line(v)) for n, v in value)
    return text_format.MessageToString(value, as_one_line=True)


# --------------------------------------------------------------------------------------------
# Discovery: ListAgents / GetAgent (v1), ListConnectors / GetConnector (v2)
# --------------------------------------------------------------------------------------------

def test_list_advertises_exactly_the_echo_agents(client):
    agents = {a.name: a for a in client.agents()}
    assert sorted(agents) == [ASYNC_AGENT, SYNC_AGENT]
    assert categories(agents[SYNC_AGENT]) == [(ECHO_SYNC, 0)]
    assert categories(agents[ASYNC_AGENT]) == [(ECHO_ASYNC, 0)]


def test_v1_list_agents_sets_is_sync_and_deprecated_task_types(v1):
    agents = {a.name: a for a in v1.agents()}
    assert agents[SYNC_AGENT].is_sync is True
    assert agents[ASYNC_AGENT].is_sync is False
    assert list(agents[SYNC_AGENT].supported_task_types) == [ECHO_SYNC]
    assert list(agents[ASYNC_AGENT].supported_task_types) == [ECHO_ASYNC]


def test_get_returns_the_named_agent(client):
    agent = client.agent(ASYNC_AGENT)
    assert agent.name == ASYNC_AGENT
    assert categories(agent) == [(ECHO_ASYNC, 0)]


def test_v1_get_agent_returns_is_sync_and_task_types(v1):
    agent = v1.agent(SYNC_AGENT)
    assert agent.name == SYNC_AGENT
    assert agent.is_sync is True
    assert list(agent.supported_task_types) == [ECHO_SYNC]


def test_v1_get_agent_unknown_name_is_not_found(v1):
    err = expect_error(grpc.StatusCode.NOT_FOUND, v1.agent, "nope")
    assert err.details() == "Cannot find connector for name: nope."


def test_v2_get_connector_unknown_name_is_not_found(v2):
    expect_error(grpc.StatusCode.NOT_FOUND, v2.agent, "nope")


# --------------------------------------------------------------------------------------------
# Async task lifecycle: CreateTask -> GetTask -> DeleteTask
# --------------------------------------------------------------------------------------------

def test_create_returns_resource_meta(client):
    assert client.create(ECHO_ASYNC) != b""


def test_get_after_create_succeeds_with_the_inputs_as_outputs(client):
    named = sample_literals(client.lit)
    meta = client.create(ECHO_ASYNC, named)
    assert_succeeded_with_inputs(client, client.get(ECHO_ASYNC, meta), named)


def test_get_reports_the_plugin_in_custom_info(client):
    resource = client.get(ECHO_ASYNC, client.create(ECHO_ASYNC))
    fields = resource.custom_info.fields
    assert fields["plugin"].string_value == PLUGIN_NAME, resource.custom_info
    assert fields["plugin_version"].string_value == PLUGIN_VERSION, resource.custom_info


def test_v1_get_mirrors_the_deprecated_state(v1):
    resource = v1.get(ECHO_ASYNC, v1.create(ECHO_ASYNC))
    assert resource.state == admin.SUCCEEDED, admin.State.Name(resource.state)


def test_v1_get_routes_on_deprecated_task_type_alone(v1):
    named = sample_literals(core_literals)
    meta = v1.create(ECHO_ASYNC, named)
    request = admin.GetTaskRequest(task_type=ECHO_ASYNC, resource_meta=meta,
                                   output_prefix=OUTPUT_PREFIX)
    assert not request.HasField("task_category")
    resource = v1.tasks.GetTask(request, timeout=TIMEOUT_S).resource
    assert_succeeded_with_inputs(v1, resource, named)


def test_delete_is_ok_and_ok_again_when_repeated(client):
    meta = client.create(ECHO_ASYNC)
    client.delete(ECHO_ASYNC, meta)
    client.delete(ECHO_ASYNC, meta)


def test_create_on_a_sync_agent_runs_it_at_create(client):
    named = sample_literals(client.lit, text="sync at create")
    meta = client.create(ECHO_SYNC, named)
    assert meta != b""
    assert_succeeded_with_inputs(client, client.get(ECHO_SYNC, meta), named)


# --------------------------------------------------------------------------------------------
# GetTaskMetrics / GetTaskLogs
# --------------------------------------------------------------------------------------------

def test_metrics_answer_each_query_in_order(client):
    meta = client.create(ECHO_ASYNC)
    results = client.metrics(ECHO_ASYNC, meta, ["a", "b"])
    assert [r.metric for r in results] == ["a", "b"]


def test_logs_stream_a_header_then_bodies_with_lines(client):
    meta = client.create(ECHO_ASYNC)
    messages = client.logs(ECHO_ASYNC, meta)
    kinds = [m.WhichOneof("part") for m in messages]
    assert kinds[:1] == ["header"], kinds
    assert len(kinds) >= 2 and set(kinds[1:]) == {"body"}, kinds
    assert any(len(client.log_lines(m.body)) > 0 for m in messages[1:]), messages


def test_metrics_on_an_agent_without_them_is_unimplemented(client):
    meta = client.create(ECHO_SYNC)
    expect_error(grpc.StatusCode.UNIMPLEMENTED, client.metrics, ECHO_SYNC, meta, ["a"])


def test_logs_on_an_agent_without_them_is_unimplemented(client):
    meta = client.create(ECHO_SYNC)
    expect_error(grpc.StatusCode.UNIMPLEMENTED, client.logs, ECHO_SYNC, meta)


# --------------------------------------------------------------------------------------------
# ExecuteTaskSync (v1 only: Flyte 2 has no sync service)
# --------------------------------------------------------------------------------------------

def execute_task_sync(v1, task_type, named):
    """Send header, then inputs, then half-close; return every response message."""
    header = admin.CreateRequestHeader(
        template=task_template(core_tasks, core_identifier, task_type),
        output_prefix=OUTPUT_PREFIX,
        task_execution_metadata=execution_metadata(admin.TaskExecutionMetadata,
                                                   core_identifier))
    requests = [admin.ExecuteTaskSyncRequest(header=header),
                admin.ExecuteTaskSyncRequest(inputs=V1Client.inputs(named))]
    return list(v1.sync.ExecuteTaskSync(iter(requests), timeout=TIMEOUT_S))


def test_execute_task_sync_answers_one_header_with_the_inputs_as_outputs(v1):
    named = sample_literals(core_literals)
    responses = execute_task_sync(v1, ECHO_SYNC, named)
    assert [r.WhichOneof("res") for r in responses] == ["header"], responses
    assert_succeeded_with_inputs(v1, responses[0].header.resource, named)


def test_execute_task_sync_for_an_async_type_is_invalid_argument(v1):
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, execute_task_sync, v1, ECHO_ASYNC,
                 sample_literals(core_literals))


def test_execute_task_sync_for_an_unknown_type_is_not_found(v1):
    err = expect_error(grpc.StatusCode.NOT_FOUND, execute_task_sync, v1, "nope",
                       sample_literals(core_literals))
    assert err.details() == not_found_text("nope")


# --------------------------------------------------------------------------------------------
# Unknown task types
# --------------------------------------------------------------------------------------------

UNKNOWN_TYPE_CALLS = {
    "CreateTask": lambda c: c.create("nope"),
    "GetTask": lambda c: c.get("nope", b"meta"),
    "DeleteTask": lambda c: c.delete("nope", b"meta"),
    "GetTaskMetrics": lambda c: c.metrics("nope", b"meta", ["a"]),
    "GetTaskLogs": lambda c: c.logs("nope", b"meta"),
}


@pytest.mark.parametrize("rpc", sorted(UNKNOWN_TYPE_CALLS))
def test_unknown_task_type_is_not_found_with_flytekit_text(client, rpc):
    err = expect_error(grpc.StatusCode.NOT_FOUND, UNKNOWN_TYPE_CALLS[rpc], client)
    assert err.details() == not_found_text("nope")


# --------------------------------------------------------------------------------------------
# Agent failures
# --------------------------------------------------------------------------------------------

def test_agent_error_is_internal_naming_plugin_version_and_message(client):
    err = expect_error(grpc.StatusCode.INTERNAL, client.create, ECHO_ASYNC,
                       custom={"echo_error": "boom"})
    for part in (PLUGIN_NAME, PLUGIN_VERSION, "boom"):
        assert part in err.details(), "%r not in %r" % (part, err.details())


def test_agent_panic_is_internal_and_the_host_keeps_serving(client):
    err = expect_error(grpc.StatusCode.INTERNAL, client.create, ECHO_ASYNC,
                       custom={"echo_panic": "boom"})
    for part in (PLUGIN_NAME, "panic"):
        assert part in err.details(), "%r not in %r" % (part, err.details())
    # The same agent and the rest of the host still work.
    named = sample_literals(client.lit)
    assert_succeeded_with_inputs(client, client.get(ECHO_ASYNC, client.create(ECHO_ASYNC, named)),
                                 named)
    assert len(client.agents()) == 2


# --------------------------------------------------------------------------------------------
# Transport edges: undecodable bytes, sizes, unknown methods
# --------------------------------------------------------------------------------------------

def raw_unary(channel, path):
    """A unary call that sends and returns raw bytes (no protobuf serialization)."""
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


@pytest.mark.parametrize("path", ["/flyteidl.service.AsyncAgentService/CreateTask",
                                  "/flyteidl2.connector.AsyncConnectorService/CreateTask"])
def test_undecodable_request_is_invalid_argument(channel, path):
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, raw_unary(channel, path), b"\xff\xff\xff",
                 timeout=TIMEOUT_S)


@pytest.mark.parametrize("path", ["/flyteidl.service.AsyncAgentService/Nope",
                                  "/no.such.Service/CreateTask"])
def test_unknown_method_is_unimplemented(channel, path):
    expect_error(grpc.StatusCode.UNIMPLEMENTED, raw_unary(channel, path), b"",
                 timeout=TIMEOUT_S)


def big_inputs(client, size):
    return [("blob", primitive(client.lit, string_value="x" * size))]


def test_request_over_flytekits_4_mib_limit_is_accepted(client):
    named = big_inputs(client, 5 * MiB)
    assert client.create(ECHO_ASYNC, named, timeout=BIG_TIMEOUT_S) != b""


def test_request_over_the_host_limit_is_resource_exhausted_and_channel_survives(client):
    expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, client.create, ECHO_ASYNC,
                 big_inputs(client, 40 * MiB), timeout=BIG_TIMEOUT_S)
    named = sample_literals(client.lit)
    assert_succeeded_with_inputs(client, client.get(ECHO_ASYNC, client.create(ECHO_ASYNC, named)),
                                 named)


def test_a_compressed_request_is_unimplemented_and_the_channel_survives(channel):
    # Flyte's clients send no compression, and the host accepts none (grpc-core would accept
    # gzip): it says so with UNIMPLEMENTED, as gRPC's compression spec asks, and serves on.
    path = "/flyteidl.service.AgentMetadataService/ListAgents"
    err = expect_error(grpc.StatusCode.UNIMPLEMENTED, raw_unary(channel, path), b"",
                       timeout=TIMEOUT_S, compression=grpc.Compression.Gzip)
    assert "compress" in err.details(), err.details()
    assert raw_unary(channel, path)(b"", timeout=TIMEOUT_S) != b""


# --------------------------------------------------------------------------------------------
# gRPC health and reflection
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("service", ("",) + V1_SERVICES + V2_SERVICES)
def test_health_is_serving(channel, service):
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING, \
        health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_health_of_an_unknown_service_is_not_found(channel):
    expect_error(grpc.StatusCode.NOT_FOUND, health_pb2_grpc.HealthStub(channel).Check,
                 health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT_S)


def reflect(channel, **request):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=TIMEOUT_S))
    assert len(replies) == 1, replies
    assert not replies[0].HasField("error_response"), replies[0].error_response
    return replies[0]


def test_reflection_lists_the_served_services(channel):
    reply = reflect(channel, list_services="")
    names = {s.name for s in reply.list_services_response.service}
    expected = set(V1_SERVICES) | set(V2_SERVICES) | {"grpc.health.v1.Health"}
    assert expected <= names, "missing: %s" % sorted(expected - names)


def test_reflection_returns_the_file_declaring_a_service(channel):
    reply = reflect(channel, file_containing_symbol="flyteidl.service.AsyncAgentService")
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in reply.file_descriptor_response.file_descriptor_proto]
    assert files, "no descriptors returned"
    declaring = [f for f in files if f.package == "flyteidl.service"
                 and any(s.name == "AsyncAgentService" for s in f.service)]
    assert declaring, "no returned file declares AsyncAgentService: %s" % [f.name for f in files]
    service = next(s for s in declaring[0].service if s.name == "AsyncAgentService")
    methods = {m.name for m in service.method}
    assert {"CreateTask", "GetTask", "DeleteTask", "GetTaskMetrics", "GetTaskLogs"} <= methods


# --------------------------------------------------------------------------------------------
# A second host with its own plugin directory
# --------------------------------------------------------------------------------------------

def test_host_with_an_empty_plugin_dir_serves_no_agents(start_other_host):
    host = start_other_host(wait_serving=False)
    with host.channel() as chan:
        assert V1Client(chan).agents() == []
        assert V2Client(chan).agents() == []
        err = expect_error(grpc.StatusCode.NOT_FOUND, V1Client(chan).create, ECHO_ASYNC)
        assert err.details() == not_found_text(ECHO_ASYNC)
