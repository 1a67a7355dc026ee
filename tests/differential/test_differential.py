"""Differential tests: agent-host's webhook and sensor plugins against flytekit's own server.

Both servers get the same requests, built with flytekit's own task classes (`WebhookTask`,
`FileSensor`) through flytekit's serialization, sent with the flyteidl stubs; the tests assert
equal phases, messages and outputs (the webhook's msgpack `info` decoded). Every deliberate
difference is asserted as such, with its reason in a comment.

Run from the flytekit virtualenv (tests/setup-flytekit.sh makes it):

    .venv-flytekit/bin/python -m pytest tests/differential

Needs the built host and plugins (`cargo build -p agent-host -p webhook-plugin -p sensor-plugin`):
  AGENT_HOST_BIN   (default <repo>/target/debug/agent-host)
  PLUGIN_BUILD_DIR (default <repo>/target/debug: libwebhook_plugin.so, libsensor_plugin.so)
"""

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import grpc
import msgpack
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.core import execution_pb2
from flyteidl.service import agent_pb2_grpc

from flytekit import FlyteContextManager
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.core.type_engine import TypeEngine
from flytekit.extras.webhook import WebhookTask
from flytekit.sensor.file_sensor import FileSensor
from flytekit.tools.translator import get_serializable

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60
RPC_TIMEOUT_S = 30
PHASE = execution_pb2.TaskExecution.Phase


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the HTTP endpoint both webhook agents call ----------------------------------------------


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """`/echo`: 200 with what arrived as canonical JSON (sorted keys and query), so that the
    answer text is the same for any client that sent the same request; `/status/<code>`: that
    status. Client-specific headers (User-Agent, Accept-Encoding) are left out on purpose."""

    def _answer(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        match = re.fullmatch(r"/status/(\d+)", url.path)
        if url.path == "/slow":
            time.sleep(3)
            status, text = 200, "late"
        elif match:
            status, text = int(match.group(1)), "answered %s" % match.group(1)
        else:
            body = json.loads(raw) if raw else None
            status = 200
            text = json.dumps({
                "method": self.command,
                "path": url.path,
                "query": sorted(parse_qsl(url.query, keep_blank_values=True)),
                "body": body,
                "content_type": self.headers.get("Content-Type"),
                "x_token": self.headers.get("X-Token"),
            }, sort_keys=True)
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def endpoint():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()


# --- the two servers ----------------------------------------------------------------------------


class Server:
    def __init__(self, name, proc, address, log):
        self.name, self.proc, self.address, self.log = name, proc, address, log
        self.channel = grpc.insecure_channel(address)
        self.sync = agent_pb2_grpc.SyncAgentServiceStub(self.channel)
        self.tasks = agent_pb2_grpc.AsyncAgentServiceStub(self.channel)
        self.meta = agent_pb2_grpc.AgentMetadataServiceStub(self.channel)

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail("%s exited with %s:\n%s" % (self.name, self.proc.returncode, self.log_tail()))
            try:
                agents = self.meta.ListAgents(agent_pb2.ListAgentsRequest(), timeout=2)
                names = {t.name for a in agents.agents for t in a.supported_task_categories}
                if {"webhook", "sensor"} <= names:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("%s not ready within %d s:\n%s" % (self.name, START_TIMEOUT_S, self.log_tail()))
            time.sleep(0.2)

    def log_tail(self):
        return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-40:])

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_flytekit(tmp):
    port = free_port()
    log = tmp / "flytekit.log"
    pyflyte = Path(sys.executable).with_name("pyflyte")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(pyflyte), "serve", "connector", "--port", str(port), "--prometheus_port", str(free_port())],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    return Server("pyflyte serve connector", proc, "127.0.0.1:%d" % port, log)


def start_agent_host(tmp):
    binary = Path(os.environ.get("AGENT_HOST_BIN") or REPO / "target/debug/agent-host")
    build = Path(os.environ.get("PLUGIN_BUILD_DIR") or REPO / "target/debug")
    plugins = tmp / "plugins"
    plugins.mkdir()
    for lib in ("libwebhook_plugin.so", "libsensor_plugin.so"):
        if not (build / lib).is_file():
            pytest.fail("%s not found in %s: cargo build -p webhook-plugin -p sensor-plugin" % (lib, build))
        shutil.copy2(build / lib, plugins / lib)
    if not binary.is_file():
        pytest.fail("agent-host not found at %s: cargo build -p agent-host" % binary)
    log = tmp / "agent-host.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--plugin-dir", str(plugins)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        match = re.search(r"agent-host listening grpc=(\S+)", log.read_text(errors="replace"))
        if match:
            return Server("agent-host", proc, match.group(1), log)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("agent-host did not start:\n%s" % log.read_text(errors="replace"))
        time.sleep(0.05)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("differential")
    started = []
    try:
        for start in (start_flytekit, start_agent_host):
            started.append(start(tmp))
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


# --- requests built with flytekit's own classes ---------------------------------------------

SETTINGS = SerializationSettings(image_config=ImageConfig.auto_default_image(), project="p", domain="d", version="v1")


def template_of(task):
    return get_serializable(OrderedDict(), SETTINGS, task).template.to_flyte_idl()


def literal_map(values, types):
    ctx = FlyteContextManager.current_context()
    return TypeEngine.dict_to_literal_map(ctx, values, types).to_flyte_idl()


def execute_sync(server, template, inputs):
    header = agent_pb2.ExecuteTaskSyncRequest(
        header=agent_pb2.CreateRequestHeader(template=template, output_prefix="/tmp/differential"))
    requests = iter([header, agent_pb2.ExecuteTaskSyncRequest(inputs=inputs)])
    responses = list(server.sync.ExecuteTaskSync(requests, timeout=RPC_TIMEOUT_S))
    return responses[0].header.resource


def summary(resource):
    """Phase, message and outputs (msgpack binaries decoded) of a resource."""
    outputs = {}
    for name, lit in resource.outputs.literals.items():
        if lit.scalar.HasField("binary") and lit.scalar.binary.tag == "msgpack":
            outputs[name] = msgpack.unpackb(lit.scalar.binary.value)
        else:
            outputs[name] = lit
    return {"phase": PHASE.Name(resource.phase), "message": resource.message, "outputs": outputs}


def both(servers, call):
    flytekit, host = servers
    return call(flytekit), call(host)


# --- webhook -----------------------------------------------------------------------------------


def webhook(endpoint, **kwargs):
    kwargs.setdefault("dynamic_inputs", {"n": int, "name": str})
    return WebhookTask(name="differential.webhook", **kwargs)


INPUTS = ({"n": 3, "name": "ada"}, {"n": int, "name": str})


def run_webhook(servers, task, inputs=INPUTS):
    template, literals = template_of(task), literal_map(*inputs)
    return both(servers, lambda s: summary(execute_sync(s, template, literals)))


def without_url_query(result, dropped):
    """`result` with the query pairs in `dropped` taken out of the echoed request."""
    info = dict(result["outputs"]["info"])
    answer = json.loads(info["response_data"])
    answer["query"] = [pair for pair in answer["query"] if pair not in dropped]
    info["response_data"] = json.dumps(answer, sort_keys=True)
    return dict(result, outputs={"info": info})


# Deliberate difference: for GET, flytekit passes `data` as httpx `params`, and httpx 0.28 then
# *replaces* the URL's own query string (even when `data` is empty, WebhookTask's default), so a
# query written in the `url` is silently dropped. agent-host keeps the URL's query and appends
# `data`, which is what the task says. The tests below check that this is the only difference.


def test_webhook_get_with_placeholders(servers, endpoint):
    task = webhook(endpoint, url=endpoint + "/echo?who={inputs.name}", method="GET",
                   data={"n": "{inputs.n}", "text": "n={inputs.n}", "static": 1, "ratio": 0.5, "flag": True},
                   headers={"X-Token": "t-{inputs.name}"})
    flytekit, host = run_webhook(servers, task)
    assert flytekit["phase"] == "SUCCEEDED", flytekit
    assert json.loads(host["outputs"]["info"]["response_data"])["query"] == [
        ["flag", "true"], ["n", "3"], ["ratio", "0.5"], ["static", "1.0"], ["text", "n=3"], ["who", "ada"]]
    assert without_url_query(host, [["who", "ada"]]) == flytekit


def test_webhook_get_without_url_query(servers, endpoint):
    task = webhook(endpoint, url=endpoint + "/echo", method="GET", data={"n": "{inputs.n}", "who": "{inputs.name}"})
    flytekit, host = run_webhook(servers, task)
    assert flytekit["phase"] == "SUCCEEDED", flytekit
    assert host == flytekit


def test_webhook_post_with_placeholders_show_data_and_show_url(servers, endpoint):
    task = webhook(endpoint, url=endpoint + "/echo", method="POST",
                   data={"n": "{inputs.n}", "who": "{inputs.name}", "nested": {"list": ["{inputs.n}", 2]}, "static": 1},
                   show_data=True, show_url=True)
    flytekit, host = run_webhook(servers, task)
    assert flytekit["phase"] == "SUCCEEDED", flytekit
    assert host == flytekit
    info = host["outputs"]["info"]
    assert info["url"] == endpoint + "/echo"
    # A lone placeholder keeps the input's type; a Struct number is a float in flytekit.
    assert info["input_data"] == {"n": 3, "who": "ada", "nested": {"list": [3, 2.0]}, "static": 1.0}
    assert isinstance(info["input_data"]["static"], float) and isinstance(info["input_data"]["n"], int)


def test_webhook_show_url_only(servers, endpoint):
    task = webhook(endpoint, url=endpoint + "/echo?n={inputs.n}", method="GET", show_url=True)
    flytekit, host = run_webhook(servers, task)
    assert flytekit["phase"] == "SUCCEEDED", flytekit
    assert without_url_query(host, [["n", "3"]]) == flytekit  # the URL's query: see above
    assert host["outputs"]["info"]["url"] == endpoint + "/echo?n=3"
    assert "input_data" not in host["outputs"]["info"]


@pytest.mark.parametrize("code", [201, 404, 500])
def test_webhook_status_other_than_200_fails(servers, endpoint, code):
    task = webhook(endpoint, url="%s/status/%d" % (endpoint, code), method="POST", data={"n": "{inputs.n}"})
    flytekit, host = run_webhook(servers, task)
    assert flytekit == {"phase": "FAILED", "message": "Webhook failed with status code %d, response: answered %d" % (code, code), "outputs": {}}
    assert host == flytekit


def test_webhook_connection_refused(servers):
    task = webhook(None, url="http://127.0.0.1:%d/nothing" % free_port(), method="GET")
    flytekit, host = run_webhook(servers, task)
    assert flytekit == {"phase": "FAILED", "message": "All connection attempts failed", "outputs": {}}
    assert host == flytekit


def test_webhook_timeout(servers, endpoint):
    task = webhook(endpoint, url=endpoint + "/slow", method="GET", timeout=1)
    flytekit, host = run_webhook(servers, task)
    assert flytekit["phase"] == host["phase"] == "FAILED", (flytekit, host)
    assert flytekit["outputs"] == host["outputs"] == {}
    # Deliberate difference: httpx's ReadTimeout carries no text, so flytekit fails the task with
    # an empty message; agent-host says what happened.
    assert flytekit["message"] == ""
    assert host["message"] == "the webhook did not answer within 1 s (timed out)"


def test_webhook_missing_input(servers, endpoint):
    task = webhook(endpoint, url=endpoint + "/echo?x={inputs.missing}", method="GET", dynamic_inputs={"n": int})
    flytekit, host = run_webhook(servers, task, inputs=({"n": 3}, {"n": int}))
    assert flytekit == {"phase": "FAILED", "message": "Could not find the key missing in {'n': 3}.", "outputs": {}}
    # Deliberate difference (not exercised here: one input): the message prints the inputs
    # dict; flytekit in the order the LiteralMap came off the wire (protobuf map order, which
    # nobody controls), agent-host in name order.
    assert host == flytekit


# --- sensor ------------------------------------------------------------------------------------


def sensor_calls(server, template, inputs):
    created = server.tasks.CreateTask(agent_pb2.CreateTaskRequest(
        template=template, inputs=inputs, output_prefix="/tmp/differential"), timeout=RPC_TIMEOUT_S)
    category = agent_pb2.TaskCategory(name="sensor", version=0)
    got = server.tasks.GetTask(agent_pb2.GetTaskRequest(
        task_category=category, resource_meta=created.resource_meta), timeout=RPC_TIMEOUT_S)
    server.tasks.DeleteTask(agent_pb2.DeleteTaskRequest(
        task_category=category, resource_meta=created.resource_meta), timeout=RPC_TIMEOUT_S)
    return summary(got.resource)


def run_file_sensor(servers, path):
    template = template_of(FileSensor(name="differential.file_sensor"))
    inputs = literal_map({"path": path}, {"path": str})
    return both(servers, lambda s: sensor_calls(s, template, inputs))


def test_file_sensor_existing_path(servers, tmp_path):
    path = tmp_path / "ready.txt"
    path.write_text("here")
    flytekit, host = run_file_sensor(servers, str(path))
    assert flytekit == {"phase": "SUCCEEDED", "message": "", "outputs": {}}
    assert host == flytekit


def test_file_sensor_existing_directory(servers, tmp_path):
    flytekit, host = run_file_sensor(servers, str(tmp_path))
    assert flytekit["phase"] == "SUCCEEDED"
    assert host == flytekit


def test_file_sensor_missing_path(servers, tmp_path):
    flytekit, host = run_file_sensor(servers, str(tmp_path / "not-yet.txt"))
    assert flytekit == {"phase": "RUNNING", "message": "", "outputs": {}}
    assert host == flytekit


def test_unknown_sensor(servers, tmp_path):
    template = template_of(FileSensor(name="differential.unknown_sensor"))
    template.custom["sensor_name"] = "NoSuchSensor"
    inputs = literal_map({"path": str(tmp_path)}, {"path": str})
    flytekit, host = servers
    # Deliberate difference: flytekit creates the task, then fails every GetTask with INTERNAL
    # (an AttributeError from importing the sensor), which propeller retries until its error
    # budget is spent. agent-host cannot run Python sensors, so it fails the task at once:
    # GetTask answers FAILED, naming the unknown sensor and the sensors it serves.
    with pytest.raises(grpc.RpcError) as err:
        sensor_calls(flytekit, template, inputs)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "NoSuchSensor" in err.value.details()
    got = sensor_calls(host, template, inputs)
    assert got["phase"] == "FAILED"
    assert "flytekit.sensor.file_sensor.NoSuchSensor" in got["message"]
    assert "flytekit.sensor.file_sensor.FileSensor" in got["message"]
