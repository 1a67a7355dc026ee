#!/usr/bin/env python3
"""Side-by-side benchmark: agent-host (echo plugin) vs flytekit's `pyflyte serve connector`
(tests/bench/flytekit_echo.py) vs a floor server that answers the same paths with no work
(tests/src/bin/bench_floor.rs). Run through tests/bench/compare.sh, which builds and sets up.
With --noop-dir, a second agent-host serves the same task types with the noop plugin
(tests/fixtures/noop: agents that answer without reading the request): the host and the SDK
without an agent's own work.

One run starts the three servers pinned to one core (taskset -c SERVER_CPU) and drives each in
turn with the same load generator, h2load over h2c on loopback, pinned to another core
(LOAD_CPU), posting gRPC-framed bodies built with flyteidl's Python stubs. Per request kind and
concurrency, every server is measured back to back, so the ratios come from the same minute.

grpc-status: before the load, every kind is called through grpcio on every server and must
answer OK (their answers become the floor's fixed answers). During the load, h2load does not read
trailers, so every response is checked by its size: an OK answer carries one message of the size
seen in the check, an error carries none (trailers only). `bad` counts responses whose data did
not add up; agent-host's and flytekit's failure counters (/metrics) are compared too.

Output: a JSON file of every measurement, and a Markdown table of the medians over the runs.
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from flyteidl.admin import agent_pb2
from flyteidl.core import identifier_pb2, interface_pb2, literals_pb2, security_pb2, tasks_pb2, types_pb2
from google.protobuf import duration_pb2, struct_pb2

HERE = Path(__file__).resolve().parent
V1_ASYNC = "/flyteidl.service.AsyncAgentService/"
PATHS = {
    "ListAgents": "/flyteidl.service.AgentMetadataService/ListAgents",
    "CreateTask": V1_ASYNC + "CreateTask",
    "GetTask": V1_ASYNC + "GetTask",
    "ExecuteTaskSync": "/flyteidl.service.SyncAgentService/ExecuteTaskSync",
    "CreateTask 1MiB": V1_ASYNC + "CreateTask",
}
KINDS = list(PATHS)
SERVERS = ["floor", "agent-host", "agent-host-noop", "flytekit"]
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 2),
    ("grpc.min_reconnect_backoff_ms", 2),
    ("grpc.max_reconnect_backoff_ms", 10),
]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- request bodies

def frame(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


def template(task_type: str) -> tasks_pb2.TaskTemplate:
    """A task template as flytekit registers one for an agent task."""
    t = tasks_pb2.TaskTemplate(
        id=identifier_pb2.Identifier(resource_type=identifier_pb2.TASK, project="flytesnacks", domain="development",
                                     name="workflows.example.echo_task", version="v0.3.41-a1b2c3d4e5"),
        type=task_type,
        metadata=tasks_pb2.TaskMetadata(
            discoverable=False, runtime=tasks_pb2.RuntimeMetadata(type=tasks_pb2.RuntimeMetadata.FLYTE_SDK,
                                                                  version="1.16.31", flavor="python"),
            timeout=duration_pb2.Duration(seconds=600), retries=literals_pb2.RetryStrategy(retries=3),
            interruptible=False, cache_serializable=False),
        interface=interface_pb2.TypedInterface(
            inputs=interface_pb2.VariableMap(variables={
                "a": interface_pb2.Variable(type=types_pb2.LiteralType(simple=types_pb2.INTEGER), description="a"),
                "b": interface_pb2.Variable(type=types_pb2.LiteralType(simple=types_pb2.STRING), description="b"),
                "c": interface_pb2.Variable(type=types_pb2.LiteralType(simple=types_pb2.FLOAT), description="c"),
            }),
            outputs=interface_pb2.VariableMap(variables={
                "o0": interface_pb2.Variable(type=types_pb2.LiteralType(simple=types_pb2.STRING), description="o0"),
            })),
        security_context=security_pb2.SecurityContext(
            run_as=security_pb2.Identity(k8s_service_account="default"),
            secrets=[security_pb2.Secret(group="echo", key="token")]),
        task_type_version=0,
        config={"echo.region": "us-east-1"},
    )
    t.custom.update({"query": "SELECT * FROM dataset.table WHERE ds = '{{ .inputs.ds }}'", "region": "us-east-1",
                     "warehouse": "analytics", "limits": {"rows": 100000, "timeout_s": 600}})
    return t


def execution_metadata() -> agent_pb2.TaskExecutionMetadata:
    exec_id = identifier_pb2.WorkflowExecutionIdentifier(project="flytesnacks", domain="development", name="f6a8c2e4b1d3e5f7a9c1")
    node = identifier_pb2.NodeExecutionIdentifier(node_id="n0", execution_id=exec_id)
    task = identifier_pb2.Identifier(resource_type=identifier_pb2.TASK, project="flytesnacks", domain="development",
                                     name="workflows.example.echo_task", version="v0.3.41-a1b2c3d4e5")
    return agent_pb2.TaskExecutionMetadata(
        task_execution_id=identifier_pb2.TaskExecutionIdentifier(task_id=task, node_execution_id=node, retry_attempt=0),
        namespace="flytesnacks-development",
        labels={"execution-id": "f6a8c2e4b1d3e5f7a9c1", "workflow-name": "workflows-example-wf", "domain": "development"},
        annotations={"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        k8s_service_account="default",
        environment_variables={"FLYTE_INTERNAL_EXECUTION_PROJECT": "flytesnacks"},
        max_attempts=4, interruptible=False, interruptible_failure_threshold=0,
    )


def small_inputs() -> literals_pb2.LiteralMap:
    def prim(**kw):
        return literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(**kw)))
    return literals_pb2.LiteralMap(literals={"a": prim(integer=42), "b": prim(string_value="hello"), "c": prim(float_value=3.14)})


def large_inputs() -> literals_pb2.LiteralMap:
    """1 MiB of literal inputs: a list of 1024 strings of 1 KiB, beside the small ones."""
    m = small_inputs()
    items = [literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(string_value=("%04d" % i) * 256)))
             for i in range(1024)]
    m.literals["rows"].CopyFrom(literals_pb2.Literal(collection=literals_pb2.LiteralCollection(literals=items)))
    return m


OUTPUT_PREFIX = "s3://my-s3-bucket/metadata/propeller/flytesnacks-development-f6a8c2e4b1d3e5f7a9c1/n0/data/0"


def create_request(inputs) -> bytes:
    return agent_pb2.CreateTaskRequest(inputs=inputs, template=template("echo_async"), output_prefix=OUTPUT_PREFIX,
                                       task_execution_metadata=execution_metadata()).SerializeToString()


def execute_parts():
    header = agent_pb2.CreateRequestHeader(template=template("echo_sync"), output_prefix=OUTPUT_PREFIX,
                                           task_execution_metadata=execution_metadata())
    return [agent_pb2.ExecuteTaskSyncRequest(header=header).SerializeToString(),
            agent_pb2.ExecuteTaskSyncRequest(inputs=small_inputs()).SerializeToString()]


def get_request(resource_meta: bytes) -> bytes:
    r = agent_pb2.GetTaskRequest(resource_meta=resource_meta, task_category=agent_pb2.TaskCategory(name="echo_async", version=0),
                                 output_prefix=OUTPUT_PREFIX)
    return r.SerializeToString()


# ---------------------------------------------------------------- processes

def tree(pid):
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir("/proc/%d/task" % p):
                todo.extend(int(c) for c in Path("/proc/%d/task/%s/children" % (p, t)).read_text().split())
        except OSError:
            pass
    return out


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            fields = Path("/proc/%d/stat" % p).read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def memory(pid):
    """(RSS, peak RSS) in bytes, summed over the process tree."""
    rss = hwm = 0
    for p in tree(pid):
        try:
            for line in Path("/proc/%d/status" % p).read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, hwm


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name, argv, workdir, env=None, addr=None, metrics=None):
        self.name, self.workdir = name, Path(workdir)
        self.out = open(self.workdir / ("%s.out" % name), "w+")
        self.err = open(self.workdir / ("%s.err" % name), "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.err, env=env, cwd=workdir, start_new_session=True)
        self.addr, self.metrics = addr, metrics

    def wait_listening(self, pattern=r"listening grpc=(\S+)(?: metrics=(\S+))?", timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, Path(self.out.name).read_text())
            if m:
                self.addr = m.group(1)
                if m.lastindex and m.lastindex >= 2 and m.group(2):
                    self.metrics = m.group(2)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.002)
        raise RuntimeError("%s did not start: %s" % (self.name, Path(self.err.name).read_text()[-3000:]))

    def channel(self):
        return grpc.insecure_channel(self.addr, options=CHANNEL_OPTIONS)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def call(channel, kind, body, parts=None, timeout=30):
    """One gRPC call through grpcio; returns the response bytes (raises on a non-OK status)."""
    if kind == "ExecuteTaskSync":
        responses = list(channel.stream_stream(PATHS[kind])(iter(parts), timeout=timeout))
        assert len(responses) == 1, responses
        return responses[0]
    return channel.unary_unary(PATHS[kind])(body, timeout=timeout)


POLL = 0.005


def first_answer(server, want_agents, timeout=60):
    """Seconds from the server's start to the first ListAgents answer listing `want_agents` agents."""
    deadline = time.monotonic() + timeout
    while server.addr is None:
        try:
            server.wait_listening(timeout=0.001)
        except RuntimeError:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise
    ch = server.channel()
    try:
        while time.monotonic() < deadline:
            try:
                raw = ch.unary_unary(PATHS["ListAgents"])(b"", timeout=1)
                agents = agent_pb2.ListAgentsResponse.FromString(raw).agents
                if len(agents) >= want_agents:
                    return time.monotonic() - server.started, [a.name for a in agents]
            except grpc.RpcError:
                pass
            time.sleep(POLL)  # a 1 ms loop takes a good part of a core from the host it measures
    finally:
        ch.close()
    raise RuntimeError("%s: no ListAgents answer with %d agents" % (server.name, want_agents))


def scrape_failures(server):
    """flytekit's `flyte_connector_requests_failure_total` summed (agent-host keeps the same family)."""
    if not server.metrics:
        return None
    try:
        text = urllib.request.urlopen("http://%s/metrics" % server.metrics, timeout=5).read().decode()
    except OSError:
        return None
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("flyte_connector_requests_failure_total") and not l.startswith("#"))


# ---------------------------------------------------------------- load

H2_TRAFFIC = re.compile(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers .*?, .*?\((\d+)\) data")
H2_REQS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
H2_FINISHED = re.compile(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s")


def h2load(args, url, body_file, streams, n=None, duration=None, log=None):
    argv = ["taskset", "-c", str(args.load_cpu), "h2load", "-c", "1", "-t", "1", "-m", str(streams), "--data", str(body_file),
            "-H", "content-type: application/grpc", "-H", "te: trailers"]
    argv += ["-n", str(n)] if n else ["-D", "%dms" % int(duration * 1000)]
    if log:
        argv += ["--log-file", str(log)]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=600).stdout
    reqs, fin, traffic = H2_REQS.search(out), H2_FINISHED.search(out), H2_TRAFFIC.search(out)
    if not (reqs and fin and traffic):
        raise RuntimeError("h2load output not understood:\n" + out)
    secs = float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)
    return {"done": int(reqs.group(3)), "succeeded": int(reqs.group(4)), "failed": int(reqs.group(5)) + int(reqs.group(6)),
            "seconds": secs, "rps": float(fin.group(3)), "data": int(traffic.group(3))}


def percentiles(log):
    lat = sorted(int(l.split("\t")[2]) for l in Path(log).read_text().splitlines() if l.strip())
    if not lat:
        return None, None
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0  # ms
    return pick(0.50), pick(0.99)


def measure(args, server, kind, streams, body_file, answer_len, workdir):
    url = "http://%s%s" % (server.addr, PATHS[kind])
    probe = h2load(args, url, body_file, streams, duration=args.probe)  # warm-up, and sizes the run
    n = max(streams * 4, int(probe["rps"] * args.seconds))
    failures_before = scrape_failures(server)
    cpu0 = cpu_seconds(server.proc.pid)
    log = Path(workdir) / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends
    r = h2load(args, url, body_file, streams, n=n, log=log)
    cpu = cpu_seconds(server.proc.pid) - cpu0
    failures_after = scrape_failures(server)
    p50, p99 = percentiles(log)
    per_response = len(frame(b"\0" * answer_len))
    with_message = r["data"] // per_response if per_response else r["done"]
    bad = r["done"] - with_message if r["data"] % per_response == 0 else r["done"]
    failed_metric = None if failures_before is None or failures_after is None else failures_after - failures_before
    return {"server": server.name, "kind": kind, "streams": streams, "requests": r["done"], "rps": r["rps"], "p50_ms": p50,
            "p99_ms": p99, "cpu_s_per_10k": cpu / max(1, r["done"]) * 10000, "bad": bad + r["failed"] + (r["done"] < n) * (n - r["done"]),
            "failed_metric": failed_metric, "rss_after": memory(server.proc.pid)[0]}


# ---------------------------------------------------------------- one run

def start_servers(args, workdir, bodies, servers):
    """Starts agent-host, records its answers for the floor, then the floor and flytekit (into
    `servers`, so the caller can stop them if this fails)."""
    cpu = ["taskset", "-c", str(args.server_cpu)]
    conf = Path(workdir) / "host.toml"
    conf.write_text('[server]\nhost = "127.0.0.1"\nport = 0\nmetrics_port = 0\n[loader]\nplugin_dir = "%s"\nwork_dir = "%s"\n'
                    '[log]\nlevel = "warn"\n' % (args.plugin_dir, Path(workdir) / "host-work"))
    host = Server("agent-host", cpu + [args.host_bin, "serve", "--config", str(conf)], workdir)
    servers["agent-host"] = host
    host.wait_listening()
    answers_dir = Path(workdir) / "floor-answers"
    answers_dir.mkdir(exist_ok=True)

    noop = bool(args.noop_dir) and "agent-host-noop" in args.servers
    py_servers = ["agent-host"] + (["agent-host-noop"] if noop else []) + (["flytekit"] if "flytekit" in args.servers else [])
    flytekit_port, prom_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    info = {}
    for name in py_servers:
        # Each server is started only when the one before is measured, so that no start-up is
        # measured while another server starts on the same core.
        if name == "flytekit":
            servers[name] = Server("flytekit", cpu + [args.pyflyte, "serve", "connector", "--port", str(flytekit_port), "--prometheus_port",
                                   str(prom_port), "--modules", "flytekit_echo"], workdir, env=env,
                                   addr="127.0.0.1:%d" % flytekit_port, metrics="127.0.0.1:%d" % prom_port)
        if name == "agent-host-noop":
            noop_conf = Path(workdir) / "noop.toml"
            noop_conf.write_text(conf.read_text().replace(args.plugin_dir, args.noop_dir).replace("host-work", "noop-work"))
            servers[name] = Server(name, cpu + [args.host_bin, "serve", "--config", str(noop_conf)], workdir)
        s = servers[name]
        info[name] = {"startup_s": first_answer(s, 2)[0]}
        time.sleep(1.0)
        info[name]["idle_rss"] = memory(s.proc.pid)[0]
    answers = {}
    for name in py_servers:
        ch = servers[name].channel()
        meta = agent_pb2.CreateTaskResponse.FromString(call(ch, "CreateTask", bodies["CreateTask"])).resource_meta
        bodies["GetTask@" + name] = get_request(meta)
        answers[name] = {k: call(ch, k, bodies["GetTask@" + name] if k == "GetTask" else bodies.get(k), bodies["execute_parts"])
                         for k in KINDS}
        for k, v in answers[name].items():
            print("  %-10s %-16s OK, %d-byte answer" % (name, k, len(v)), file=sys.stderr)
        ch.close()
    for k, v in answers["agent-host"].items():
        (answers_dir / ("%s%s.bin" % (PATHS[k].rsplit("/", 1)[1], ".large" if "1MiB" in k else ""))).write_bytes(v)

    floor = Server("floor", cpu + [args.floor_bin, str(answers_dir)], workdir)
    servers["floor"] = floor
    floor.wait_listening()
    info["floor"] = {"startup_s": first_answer(floor, 0)[0]}
    time.sleep(1.0)
    info["floor"]["idle_rss"] = memory(floor.proc.pid)[0]
    ch = floor.channel()
    answers["floor"] = {k: call(ch, k, bodies["GetTask@agent-host"] if k == "GetTask" else bodies.get(k), bodies["execute_parts"])
                        for k in KINDS}
    ch.close()
    bodies["GetTask@floor"] = bodies["GetTask@agent-host"]
    return servers, info, answers


def one_run(args, run, bodies):
    workdir = tempfile.mkdtemp(prefix="bench-compare-")
    started = {}
    try:
        servers, info, answers = start_servers(args, workdir, bodies, started)
    except BaseException:
        for s in started.values():
            s.stop()
        raise
    rows = []
    try:
        files = {}
        for kind in KINDS:
            for name in servers:
                key = "GetTask@" + name if kind == "GetTask" else kind
                if key not in files:
                    p = Path(workdir) / ("body-%d.bin" % len(files))
                    p.write_bytes(b"".join(frame(x) for x in bodies["execute_parts"]) if kind == "ExecuteTaskSync" else frame(bodies[key]))
                    files[key] = p
        if args.bodies_dir:
            Path(args.bodies_dir).mkdir(parents=True, exist_ok=True)
            for key, f in files.items():
                shutil.copy(f, Path(args.bodies_dir) / ("%s.bin" % key.replace(" ", "-").replace("@", "-")))
        for kind in args.kinds:
            for streams in args.streams:
                for name in SERVERS:
                    if name not in args.servers or name not in servers:
                        continue
                    if name == "agent-host-noop" and "1MiB" in kind:
                        continue  # its answer is tiny, the floor's is echo's 1.4 MB: no comparison
                    key = "GetTask@" + name if kind == "GetTask" else kind
                    r = measure(args, servers[name], kind, streams, files[key], len(answers[name][kind]), workdir)
                    r["run"] = run
                    rows.append(r)
                    print("run %d %-16s %2d streams %-10s %9.0f req/s p50 %7.2f ms p99 %7.2f ms cpu %6.2f s/10k bad %d" % (
                        run, kind, streams, name, r["rps"], r["p50_ms"], r["p99_ms"], r["cpu_s_per_10k"], r["bad"]), file=sys.stderr)
        for name, s in servers.items():
            info[name]["peak_rss"] = memory(s.proc.pid)[1]
            info[name]["rss_after_load"] = memory(s.proc.pid)[0]
        # agent-host gives its heaps' free pages back once calls stop (2 s without a call).
        time.sleep(5)
        for name, s in servers.items():
            info[name]["rss_5s_after"] = memory(s.proc.pid)[0]
    finally:
        for s in servers.values():
            s.stop()
        # Each run's work directory holds the hosts' private plugin copies and h2load logs.
        shutil.rmtree(workdir, ignore_errors=True)
    return rows, info


def startup_with_plugins(args, cpus):
    """agent-host start-up to the first ListAgents answer listing every agent of the 5-plugin
    directory, with the host on `cpus` (taskset's list)."""
    times, rss = [], []
    for _ in range(args.startup_runs):
        # The loads before wrote files (h2load's logs, the servers' plugin copies), and so does
        # each start (22 MB of private copies). Flushed first, so that a start does not write
        # its copies while the disk is busy writing back the benchmark's own files (with a
        # 1.5 GB write-back running beside it, start-up took 90-131 ms instead of 66-88 ms).
        os.sync()
        time.sleep(0.5)
        workdir = tempfile.mkdtemp(prefix="bench-startup-")
        conf = Path(workdir) / "host.toml"
        conf.write_text('[server]\nhost = "127.0.0.1"\nport = 0\nmetrics_port = 0\n[loader]\nplugin_dir = "%s"\nwork_dir = "%s"\n'
                        '[log]\nlevel = "warn"\n' % (args.startup_dir, Path(workdir) / "host-work"))
        s = Server("agent-host", ["taskset", "-c", cpus, args.host_bin, "serve", "--config", str(conf)], workdir)
        try:
            t, agents = first_answer(s, args.startup_agents)
            times.append(t)
            time.sleep(1.0)
            rss.append(memory(s.proc.pid)[0])
        finally:
            s.stop()
            # The host's private copies of the five plugins (22 MB a start).
            shutil.rmtree(workdir, ignore_errors=True)
    return times, agents, rss


# ---------------------------------------------------------------- report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def table(rows, infos, startup):
    out = []
    fmt = lambda v, f="%.0f": "–" if v is None else f % v
    out.append("| kind | streams | server | req/s | ×floor | ×flytekit | p50 ms | p99 ms | p99 ×floor | CPU s/10k | bad |")
    out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for kind in [k for k in KINDS if any(r["kind"] == k for r in rows)]:
        for streams in sorted({r["streams"] for r in rows}):
            cell = lambda name, f: [r[f] for r in rows if r["kind"] == kind and r["streams"] == streams and r["server"] == name]
            # Ratios per run (same minute), then the median of those.
            def ratio(a, b, f):
                runs = sorted({r["run"] for r in rows})
                xs = []
                for run in runs:
                    x = [r[f] for r in rows if r["run"] == run and r["kind"] == kind and r["streams"] == streams and r["server"] == a]
                    y = [r[f] for r in rows if r["run"] == run and r["kind"] == kind and r["streams"] == streams and r["server"] == b]
                    if x and y and y[0]:
                        xs.append(x[0] / y[0])
                return med(xs)
            for name in SERVERS:
                if not cell(name, "rps"):
                    continue
                rf, rk, pf = ratio(name, "floor", "rps"), ratio(name, "flytekit", "rps"), ratio(name, "floor", "p99_ms")
                ratios[(kind, streams, name)] = (rf, rk, pf)
                out.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %d |" % (
                    kind, streams, name, fmt(med(cell(name, "rps"))), fmt(rf, "%.2f"), fmt(rk, "%.1f"),
                    fmt(med(cell(name, "p50_ms")), "%.3f"), fmt(med(cell(name, "p99_ms")), "%.3f"), fmt(pf, "%.2f"),
                    fmt(med(cell(name, "cpu_s_per_10k")), "%.2f"), sum(cell(name, "bad"))))
    out.append("")
    out.append("| server | start-up to first ListAgents (ms) | idle RSS (MiB) | RSS after the load (MiB) | 5 s later (MiB) | peak RSS (MiB) |")
    out.append("|---|---:|---:|---:|---:|---:|")
    mib = lambda v: None if v is None else v / 1048576
    for name in SERVERS:
        if not any(name in i for i in infos):
            continue
        get = lambda f: med([i[name].get(f) for i in infos if name in i and i[name].get(f) is not None])
        out.append("| %s | %s | %s | %s | %s | %s |" % (name, fmt(None if get("startup_s") is None else get("startup_s") * 1000, "%.0f"),
                                                       fmt(mib(get("idle_rss")), "%.1f"), fmt(mib(get("rss_after_load")), "%.1f"),
                                                       fmt(mib(get("rss_5s_after")), "%.1f"), fmt(mib(get("peak_rss")), "%.1f")))
    for cpus, (times, agents, rss) in (startup or {}).items():
        out.append("")
        out.append("agent-host start-up with %d agents (%s), on CPU %s: median %.1f ms, runs %s; idle RSS then: median %.1f MiB" % (
            len(agents), ", ".join(agents), cpus, med(times) * 1000, ", ".join("%.1f" % (t * 1000) for t in times), med(rss) / 1048576))
    return "\n".join(out), ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host-bin", required=True)
    ap.add_argument("--floor-bin", required=True)
    ap.add_argument("--plugin-dir", required=True, help="directory with the echo plugin")
    ap.add_argument("--noop-dir", help="directory with the noop plugin (for the agent-host-noop server)")
    ap.add_argument("--pyflyte", required=True)
    ap.add_argument("--startup-dir", help="a directory of 5 plugins for the start-up measurement")
    ap.add_argument("--startup-agents", type=int, default=0, help="agents ListAgents must list at start-up")
    ap.add_argument("--startup-runs", type=int, default=7)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each measured load, roughly")
    ap.add_argument("--probe", type=float, default=1.0, help="warm-up before each measured load, seconds")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--servers", nargs="+", default=SERVERS, help="measure these (flytekit is not started without it)")
    ap.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS, help="request kinds to measure")
    ap.add_argument("--bodies-dir", help="also keep the gRPC-framed request bodies here (for profile.sh)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--out", default="bench-compare")
    args = ap.parse_args()
    for f in ("host_bin", "floor_bin", "plugin_dir", "noop_dir", "pyflyte", "startup_dir"):
        if getattr(args, f):
            setattr(args, f, str(Path(getattr(args, f)).absolute()))

    bodies = {"ListAgents": b"", "CreateTask": create_request(small_inputs()), "CreateTask 1MiB": create_request(large_inputs()),
              "execute_parts": execute_parts()}
    print("bodies: CreateTask %d B, CreateTask 1MiB %d B (inputs %d B), ExecuteTaskSync %s B" % (
        len(bodies["CreateTask"]), len(bodies["CreateTask 1MiB"]), large_inputs().ByteSize(),
        "+".join(str(len(p)) for p in bodies["execute_parts"])), file=sys.stderr)
    rows, infos = [], []
    for run in range(args.runs):
        load = os.getloadavg()[0]
        print("run %d: load average %.2f" % (run, load), file=sys.stderr)
        r, i = one_run(args, run, bodies)
        rows += r
        i["load_before"] = load
        infos.append(i)
    # Pinned to the server's core like the loads, and on both cores: start-up is not a load
    # measurement, and the host loads the files of its first scan in parallel, one per core.
    both = "%d,%d" % (args.server_cpu, args.load_cpu)
    startup = {c: startup_with_plugins(args, c) for c in (str(args.server_cpu), both)} if args.startup_dir else None
    text, _ = table(rows, infos, startup)
    Path(args.out + ".json").write_text(json.dumps({"rows": rows, "infos": infos, "startup": startup}, indent=1))
    Path(args.out + ".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
