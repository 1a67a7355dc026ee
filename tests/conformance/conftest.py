"""Fixtures that run a real agent-host binary for the protocol tests.

The binary and the echo plugin come from the Cargo build; their paths can be overridden:
  AGENT_HOST_BIN  (default <repo>/target/debug/agent-host)
  ECHO_PLUGIN     (default <repo>/target/debug/libecho_plugin.so)

A missing binary or plugin is a test failure, never a skip: the protocol suite is only
meaningful against a built host.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

STARTUP_TIMEOUT_S = 30.0
SERVING_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 60

# Clients must be able to send the oversized requests the tests need and read big responses.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

LISTENING_RE = re.compile(r"agent-host listening grpc=(\S+) metrics=(\S+)")

# Hosts started by this session that are still running; their logs go into failure reports.
_running_hosts = []


def _path_from_env(var, default):
    return Path(os.environ.get(var) or default).resolve()


def host_binary():
    return _path_from_env("AGENT_HOST_BIN", REPO_ROOT / "target/debug/agent-host")


def echo_plugin():
    return _path_from_env("ECHO_PLUGIN", REPO_ROOT / "target/debug/libecho_plugin.so")


def require_file(path, what, env_var):
    if not path.is_file():
        pytest.fail("%s not found at %s: build it first (`cargo build --workspace` in %s) "
                    "or point %s at it" % (what, path, REPO_ROOT, env_var), pytrace=False)


def _tail(path, lines=LOG_TAIL_LINES):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log at %s)" % path
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


class Host:
    """One running agent-host process and where it listens."""

    def __init__(self, proc, workdir, plugin_dir, grpc_addr, metrics_addr):
        self.proc = proc
        self.workdir = Path(workdir)
        self.plugin_dir = Path(plugin_dir)
        self.grpc_addr = grpc_addr
        self.metrics_addr = metrics_addr

    @property
    def stdout_log(self):
        return self.workdir / "stdout.log"

    @property
    def stderr_log(self):
        return self.workdir / "stderr.log"

    def channel(self):
        return grpc.insecure_channel(self.grpc_addr, options=CHANNEL_OPTIONS)

    def logs(self):
        return ("agent-host pid %d (%s)\n--- stdout (tail) ---\n%s\n--- stderr (tail) ---\n%s"
                % (self.proc.pid, self.grpc_addr, _tail(self.stdout_log), _tail(self.stderr_log)))

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S. Returns the exit code."""
        if self in _running_hosts:
            _running_hosts.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                warnings.warn("agent-host pid %d ignored SIGTERM for %.0f s; killed it"
                              % (self.proc.pid, STOP_TIMEOUT_S))
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        return self.proc.returncode


def _wait_for_listening_line(proc, stdout_log, stderr_log):
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        match = LISTENING_RE.search(stdout_log.read_text(errors="replace"))
        if match:
            return match.group(1), match.group(2)
        if proc.poll() is not None:
            pytest.fail("agent-host exited with code %s before listening\n--- stdout ---\n%s\n"
                        "--- stderr ---\n%s" % (proc.returncode, _tail(stdout_log),
                                                _tail(stderr_log)), pytrace=False)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    pytest.fail("agent-host printed no 'agent-host listening grpc=... metrics=...' line within "
                "%.0f s\n--- stdout ---\n%s\n--- stderr ---\n%s"
                % (STARTUP_TIMEOUT_S, _tail(stdout_log), _tail(stderr_log)), pytrace=False)


def wait_until_serving(host, timeout_s=SERVING_TIMEOUT_S):
    """Poll grpc health Check(service="") until SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    with host.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if host.proc.poll() is not None:
                pytest.fail("agent-host exited with code %s while waiting for SERVING\n%s"
                            % (host.proc.returncode, host.logs()), pytrace=False)
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as err:
                last = "%s: %s" % (err.code(), err.details())
            time.sleep(0.1)
    pytest.fail("agent-host not SERVING within %.0f s (last health answer: %s)\n%s"
                % (timeout_s, last, host.logs()), pytrace=False)


def start_host(plugin_dir, workdir, wait_serving=True, extra_args=()):
    """Start `agent-host serve` on free loopback ports with the given plugin directory."""
    binary = host_binary()
    require_file(binary, "agent-host binary", "AGENT_HOST_BIN")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stdout_log, stderr_log = workdir / "stdout.log", workdir / "stderr.log"
    args = [str(binary), "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
            "--plugin-dir", str(plugin_dir), *extra_args]
    with open(stdout_log, "wb") as out, open(stderr_log, "wb") as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                cwd=workdir)
    grpc_addr, metrics_addr = _wait_for_listening_line(proc, stdout_log, stderr_log)
    host = Host(proc, workdir, plugin_dir, grpc_addr, metrics_addr)
    _running_hosts.append(host)
    if wait_serving:
        try:
            wait_until_serving(host)
        except BaseException:
            host.stop()
            raise
    return host


def plugin_dir_with_echo(parent):
    """A fresh plugin directory holding a copy of the echo plugin as echo.so."""
    plugin = echo_plugin()
    require_file(plugin, "echo plugin", "ECHO_PLUGIN")
    plugin_dir = Path(parent) / "plugins"
    plugin_dir.mkdir(parents=True)
    shutil.copy2(plugin, plugin_dir / "echo.so")
    return plugin_dir


@pytest.fixture(scope="session")
def agent_host():
    """The session's agent-host, serving the echo plugin; stopped with SIGTERM at the end."""
    with tempfile.TemporaryDirectory(prefix="agent-host-conformance-") as tmp:
        host = start_host(plugin_dir_with_echo(tmp), Path(tmp) / "host")
        try:
            yield host
        finally:
            host.stop()


@pytest.fixture(scope="session")
def channel(agent_host):
    with agent_host.channel() as chan:
        yield chan


@pytest.fixture
def start_other_host(tmp_path):
    """Factory: start_other_host(plugin_dir=None, wait_serving=True) -> Host.

    Starts another agent-host with its own plugin directory (an empty one when None);
    every host started this way is stopped when the test ends.
    """
    started = []

    def start(plugin_dir=None, wait_serving=True, extra_args=()):
        if plugin_dir is None:
            plugin_dir = tmp_path / ("plugins-%d" % len(started))
            plugin_dir.mkdir()
        host = start_host(plugin_dir, tmp_path / ("host-%d" % len(started)),
                          wait_serving=wait_serving, extra_args=extra_args)
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the running hosts' log tails to every failed test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for host in list(_running_hosts):
            report.sections.append(("agent-host %s logs" % host.grpc_addr, host.logs()))
