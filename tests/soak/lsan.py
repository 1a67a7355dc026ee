"""Driver of the LeakSanitizer soak (RELIABILITY row 17). Run through tests/soak/lsan.sh, which
builds the host with the LeakSanitizer runtime linked in and the two echo builds.

    python lsan.py --host-exe H --v1 A.so --v2 B.so --reloads 50 --log-dir DIR [--expect-clean]

Starts `agent-host serve` (the environment, LSAN_OPTIONS included, is passed on), keeps a mixed
load on it from a few client threads (Flyte 1 and Flyte 2 task calls, the sync stream, logs and
metrics, agent listings, health, reflection, admin pages, and the error paths: agent errors,
agent panics, unknown task types, undecodable requests, calls cancelled by the client's
deadline, calls still in flight while their generation is retired), alternates echo between the
two builds RELOADS times (publish by rename, wait until /plugins shows the new generation and
the load has reached it), publishes a refused file twice (not an ELF; a truncated echo) on the
way, then sends SIGTERM and waits for the host to exit. LeakSanitizer checks at that exit.

Then it reads the LeakSanitizer log of the host process (DIR/lsan.<pid>): the leaks reported
(each with its stack), and the "Suppressions used" table; and the logs of any other process
(the check children also run under the runtime, but leave with _exit, before any leak check).
Prints one JSON object with the figures; exit status 0 only if the host exited 0, no leak was
reported, and (with --expect-clean) the suppressed allocations number exactly one per library
the host mapped in-process (/plugins mapped_libraries, here equal to agent_host_plugin_loads_total).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from flyteidl.admin import agent_pb2 as admin
from flyteidl.core import literals_pb2, tasks_pb2
from flyteidl.service import agent_pb2_grpc as v1_grpc
from flyteidl2.connector import connector_pb2 as connector
from flyteidl2.connector import service_pb2_grpc as v2_grpc
from flyteidl2.core import tasks_pb2 as tasks2_pb2
from flyteidl2.core import literals_pb2 as literals2_pb2
from flyteidl2.task import common_pb2 as task2

TIMEOUT = 30


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def metric(admin_addr, name):
    total = 0.0
    for line in get("http://%s/metrics" % admin_addr).splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.split()[-1])
    return total


def echo_generation(admin_addr):
    status = json.loads(get("http://%s/plugins" % admin_addr))
    for f in status["files"]:
        if f["path"].endswith("/echo.so"):
            return f.get("generation")
    return None


def publish(src, plugin_dir, name="echo.so", truncate=None):
    tmp = os.path.join(plugin_dir, "." + name + ".tmp")
    with open(src, "rb") as f:
        data = f.read()
    with open(tmp, "wb") as f:
        f.write(data if truncate is None else data[:truncate])
    os.rename(tmp, os.path.join(plugin_dir, name))


def struct(d):
    s = struct_pb2.Struct()
    s.update(d)
    return s


def v1_inputs():
    return literals_pb2.LiteralMap(literals={
        "x": literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(integer=7))),
        "s": literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(string_value="hello"))),
    })


def v1_create(task_type, custom=None):
    return admin.CreateTaskRequest(
        inputs=v1_inputs(),
        template=tasks_pb2.TaskTemplate(type=task_type, custom=struct(custom or {})),
        output_prefix="file:///tmp/agent-host-lsan/out")


class Load:
    """One client thread: runs the operations round robin until stopped, counting outcomes."""

    def __init__(self, grpc_addr, admin_addr, ops, stop, counts, lock):
        self.ch = grpc.insecure_channel(grpc_addr)
        self.admin = admin_addr
        self.v1 = v1_grpc.AsyncAgentServiceStub(self.ch)
        self.sync = v1_grpc.SyncAgentServiceStub(self.ch)
        self.meta1 = v1_grpc.AgentMetadataServiceStub(self.ch)
        self.v2 = v2_grpc.AsyncConnectorServiceStub(self.ch)
        self.meta2 = v2_grpc.ConnectorMetadataServiceStub(self.ch)
        self.health = health_pb2_grpc.HealthStub(self.ch)
        self.reflection = reflection_pb2_grpc.ServerReflectionStub(self.ch)
        self.raw_create = self.ch.unary_unary("/flyteidl.service.AsyncAgentService/CreateTask")
        self.ops, self.stop, self.counts, self.lock = ops, stop, counts, lock

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def expect(self, code, call, *args, **kwargs):
        """A call that must fail with `code` (an expected application error)."""
        try:
            call(*args, **kwargs)
        except grpc.RpcError as e:
            if e.code() in code:
                self.count("calls")
                self.count("expected_error_" + e.code().name)
                return
            raise
        raise AssertionError("expected %s, the call succeeded" % [c.name for c in code])

    # --- the operations ---------------------------------------------------------------------
    def v1_async(self):
        cat = admin.TaskCategory(name="echo_async", version=0)
        meta = self.v1.CreateTask(v1_create("echo_async"), timeout=TIMEOUT).resource_meta
        r = self.v1.GetTask(admin.GetTaskRequest(task_category=cat, resource_meta=meta), timeout=TIMEOUT).resource
        assert r.outputs.literals["s"].scalar.primitive.string_value == "hello", r
        self.v1.GetTaskMetrics(admin.GetTaskMetricsRequest(task_category=cat, resource_meta=meta,
                                                           queries=["echo.cancelled_calls"]), timeout=TIMEOUT)
        lines = list(self.v1.GetTaskLogs(admin.GetTaskLogsRequest(task_category=cat, resource_meta=meta, lines=10),
                                         timeout=TIMEOUT))
        assert lines, "no log messages"
        self.v1.DeleteTask(admin.DeleteTaskRequest(task_category=cat, resource_meta=meta), timeout=TIMEOUT)
        self.count("calls", 5)

    def v1_sync(self):
        header = admin.CreateRequestHeader(template=tasks_pb2.TaskTemplate(type="echo_sync"),
                                           output_prefix="file:///tmp/agent-host-lsan/out")
        reqs = [admin.ExecuteTaskSyncRequest(header=header), admin.ExecuteTaskSyncRequest(inputs=v1_inputs())]
        out = list(self.sync.ExecuteTaskSync(iter(reqs), timeout=TIMEOUT))
        assert out and out[0].header.resource.outputs.literals["x"].scalar.primitive.integer == 7, out
        self.count("calls")

    def v2_async(self):
        cat = connector.TaskCategory(name="echo_async", version=0)
        inputs = task2.Inputs(literals=[task2.NamedLiteral(name="x", value=literals2_pb2.Literal(
            scalar=literals2_pb2.Scalar(primitive=literals2_pb2.Primitive(integer=3))))])
        req = connector.CreateTaskRequest(inputs=inputs, template=tasks2_pb2.TaskTemplate(type="echo_async"),
                                          output_prefix="file:///tmp/agent-host-lsan/out")
        meta = self.v2.CreateTask(req, timeout=TIMEOUT).resource_meta
        self.v2.GetTask(connector.GetTaskRequest(task_category=cat, resource_meta=meta), timeout=TIMEOUT)
        list(self.v2.GetTaskLogs(connector.GetTaskLogsRequest(task_category=cat, resource_meta=meta, lines=10),
                                 timeout=TIMEOUT))
        self.v2.DeleteTask(connector.DeleteTaskRequest(task_category=cat, resource_meta=meta), timeout=TIMEOUT)
        self.count("calls", 4)

    def listings(self):
        agents = self.meta1.ListAgents(admin.ListAgentsRequest(), timeout=TIMEOUT).agents
        assert any(a.name == "Echo Async Agent" for a in agents), agents
        self.meta1.GetAgent(admin.GetAgentRequest(name="Echo Sync Agent"), timeout=TIMEOUT)
        self.meta2.ListConnectors(connector.ListConnectorsRequest(), timeout=TIMEOUT)
        self.meta2.GetConnector(connector.GetConnectorRequest(name="Echo Async Agent"), timeout=TIMEOUT)
        self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        list(self.reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=TIMEOUT))
        self.count("calls", 6)
        get("http://%s/plugins" % self.admin)
        get("http://%s/metrics" % self.admin)
        self.count("admin_requests", 2)

    def errors(self):
        c = grpc.StatusCode
        self.expect({c.INTERNAL}, self.v1.CreateTask, v1_create("echo_async", {"echo_error": "refused on purpose"}),
                    timeout=TIMEOUT)
        self.expect({c.INTERNAL}, self.v1.CreateTask, v1_create("echo_async", {"echo_panic": "panic on purpose"}),
                    timeout=TIMEOUT)
        self.expect({c.NOT_FOUND}, self.v1.CreateTask, v1_create("no_such_type"), timeout=TIMEOUT)
        self.expect({c.NOT_FOUND}, self.meta1.GetAgent, admin.GetAgentRequest(name="No Such Agent"), timeout=TIMEOUT)
        self.expect({c.INVALID_ARGUMENT}, self.raw_create, b"\xff\xff\xff\xff", timeout=TIMEOUT)

    def cancelled(self):
        """The client gives up while the agent still sleeps: the host drops the call's future
        and the task in the plugin is aborted."""
        c = grpc.StatusCode
        self.expect({c.DEADLINE_EXCEEDED, c.CANCELLED}, self.v1.CreateTask,
                    v1_create("echo_async", {"echo_sleep_ms": 2000}), timeout=0.15)

    def in_flight(self):
        """A call that spans reloads: it starts on one generation and finishes on it after the
        registry has moved on, so that generation is retired with a call in flight."""
        meta = self.v1.CreateTask(v1_create("echo_async", {"echo_sleep_ms": 400}), timeout=TIMEOUT).resource_meta
        assert meta
        self.count("calls")

    def run(self):
        i = 0
        while not self.stop.is_set():
            op = self.ops[i % len(self.ops)]
            i += 1
            try:
                getattr(self, op)()
            except grpc.RpcError as e:
                self.count("failed")
                self.count("failed_" + e.code().name)
                with self.lock:
                    self.counts.setdefault("failures", []).append("%s: %s %s" % (op, e.code().name, e.details()))
            except Exception as e:  # a wrong answer
                self.count("failed")
                with self.lock:
                    self.counts.setdefault("failures", []).append("%s: %r" % (op, e))
        self.ch.close()


SUMMARY = re.compile(r"SUMMARY: LeakSanitizer: (\d+) byte\(s\) leaked in (\d+) allocation\(s\)")
LEAK = re.compile(r"^(Direct|Indirect) leak of (\d+) byte\(s\) in (\d+) object\(s\) allocated from:")
SUPPRESSED = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\S.*)$")


def parse_lsan_log(path):
    """Leaks reported (kind, bytes, objects, frames) and the suppressions-used table."""
    leaks, suppressed, summary = [], [], None
    in_supp = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = LEAK.match(line)
            if m:
                leaks.append({"kind": m.group(1), "bytes": int(m.group(2)), "objects": int(m.group(3)), "frames": []})
                in_supp = False
                continue
            if leaks and line.startswith("    #") and not in_supp:
                leaks[-1]["frames"].append(line.strip())
                continue
            m = SUMMARY.search(line)
            if m:
                summary = {"bytes": int(m.group(1)), "allocations": int(m.group(2))}
                continue
            if line.startswith("Suppressions used:"):
                in_supp = True
                continue
            if in_supp:
                m = SUPPRESSED.match(line)
                if m:
                    suppressed.append({"count": int(m.group(1)), "bytes": int(m.group(2)), "template": m.group(3)})
                elif line.startswith("---"):
                    in_supp = False
    return leaks, suppressed, summary


UNSYMBOLISED = re.compile(r"^(#\d+ 0x[0-9a-f]+) +\((\S+/([0-9a-f]{64})(?:-\d+-\d+)?\.so)(?: \(deleted\))?\+(0x[0-9a-f]+)\)")


def symbolise_plugin_frames(leaks, builds):
    """Frames in a plugin generation mapped from a fresh private copy come out as module+offset:
    the host unlinks those copies once mapped, so the symbolizer cannot open them at exit. Their
    names carry the content's sha256: symbolise them offline against the build they copy."""
    by_digest = {}
    for path in builds:
        with open(path, "rb") as f:
            by_digest[hashlib.sha256(f.read()).hexdigest()] = path
    symbolizer = shutil.which("llvm-symbolizer")
    for leak in leaks:
        for i, frame in enumerate(leak["frames"]):
            m = UNSYMBOLISED.match(frame)
            if not (m and symbolizer and m.group(3) in by_digest):
                continue
            out = subprocess.run([symbolizer, "--obj=" + by_digest[m.group(3)], m.group(4)],
                                 capture_output=True, text=True).stdout.split("\n")
            if out and out[0] and out[0] != "??":
                leak["frames"][i] = "%s in %s %s [offline, %s]" % (
                    m.group(1), out[0], out[1] if len(out) > 1 else "", os.path.basename(by_digest[m.group(3)]))


def readable(name):
    """A symbol in the legacy Rust mangling's escapes, as written in Rust."""
    for k, v in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$u7b$", "{"), ("$u7d$", "}"), ("$C$", ","),
                 ("$RF$", "&"), ("$BP$", "*"), ("$LP$", "("), ("$RP$", ")"), ("..", "::")):
        name = name.replace(k, v)
    return re.sub(r"::h[0-9a-f]{16}$", "", name.lstrip("_"))


def owner(frames):
    """Where a leak comes from, for a readable summary (the whole stacks are in the log): the
    first frame outside the allocator and the standard library."""
    names = []
    for fr in frames:
        fr = re.sub(r" \[offline, [^]]*\]$", "", fr).rstrip()
        m = re.match(r"#\d+ 0x[0-9a-f]+ in (.+?)(?: /\S+:\d+(?::\d+)?| \(.*\))?$", fr)
        names.append(readable(m.group(1)) if m else fr)
    for name in names:
        if re.match(r"<*&?(malloc|calloc|realloc|posix_memalign|alloc::|core::|std::|\[|u8 )", name):
            continue
        return name[:160]
    return names[-1][:160] if names else "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host-exe", required=True)
    ap.add_argument("--v1", required=True)
    ap.add_argument("--v2", required=True)
    ap.add_argument("--reloads", type=int, default=50)
    ap.add_argument("--log-dir", required=True, help="where LSAN_OPTIONS log_path writes (lsan.<pid>)")
    ap.add_argument("--expect-clean", action="store_true",
                    help="the suppression file is in use: nothing may be reported, and exactly one "
                         "suppressed allocation per in-process library load")
    ap.add_argument("--exit-timeout", type=float, default=300.0)
    a = ap.parse_args()

    d = tempfile.mkdtemp(prefix="agent-host-lsan-")
    plugins = os.path.join(d, "plugins")
    os.makedirs(plugins)
    shutil.copyfile(a.v1, os.path.join(plugins, "echo.so"))
    cfg = os.path.join(d, "config.toml")
    with open(cfg, "w") as f:
        f.write('[server]\nhost = "127.0.0.1"\nport = 0\nmetrics_port = 0\nshutdown_grace_ms = 5000\n'
                '[loader]\nplugin_dir = "%s"\nwork_dir = "%s"\nstable_ms = 20\nmax_libraries = %d\n'
                'check_timeout_ms = 60000\n'
                '[log]\nlevel = "warn"\n' % (plugins, os.path.join(d, "work"), a.reloads + 20))
    stderr = open(os.path.join(a.log_dir, "host.stderr"), "w")
    p = subprocess.Popen([a.host_exe, "serve", "--config", cfg], stdout=subprocess.PIPE, stderr=stderr, text=True)
    result = {"host_pid": p.pid}
    ok = True
    try:
        words = dict(w.split("=", 1) for w in p.stdout.readline().split() if "=" in w)
        grpc_addr, admin_addr = words["grpc"], words["metrics"]
        deadline = time.time() + 120
        while echo_generation(admin_addr) is None:
            if time.time() > deadline:
                raise SystemExit("echo never loaded")
            time.sleep(0.05)
        stop, counts, lock = threading.Event(), {}, threading.Lock()
        mixes = [["v1_async", "listings", "v1_sync"], ["v2_async", "errors", "v1_async"],
                 ["cancelled", "v1_sync", "v2_async"], ["in_flight"]]
        workers = [threading.Thread(target=Load(grpc_addr, admin_addr, ops, stop, counts, lock).run) for ops in mixes]
        for w in workers:
            w.start()
        started = time.time()
        gen = echo_generation(admin_addr)
        waits = []
        for i in range(1, a.reloads + 1):
            if i == a.reloads // 3:
                with open(os.path.join(plugins, ".bad.so.tmp"), "w") as f:
                    f.write("not a library\n")
                os.rename(os.path.join(plugins, ".bad.so.tmp"), os.path.join(plugins, "bad.so"))
            if i == 2 * a.reloads // 3:
                publish(a.v2, plugins, name="bad.so", truncate=1 << 20)  # a truncated ELF
            with lock:
                calls_before = counts.get("calls", 0)
            publish(a.v2 if i % 2 else a.v1, plugins)
            t = time.time()
            while True:
                g = echo_generation(admin_addr)
                if g != gen:
                    gen = g
                    break
                if time.time() - t > 120:
                    raise SystemExit("reload %d not seen within 120 s" % i)
                time.sleep(0.01)
            waits.append(time.time() - t)
            # Let the load reach the new generation before the next swap.
            while True:
                with lock:
                    if counts.get("calls", 0) >= calls_before + 40:
                        break
                time.sleep(0.01)
        reload_seconds = time.time() - started
        stop.set()
        for w in workers:
            w.join()
        loads = metric(admin_addr, "agent_host_plugin_loads_total")
        failures_by_reason = {}
        for line in get("http://%s/metrics" % admin_addr).splitlines():
            m = re.match(r'agent_host_plugin_load_failures_total\{reason="([^"]+)"\} (\S+)', line)
            if m:
                failures_by_reason[m.group(1)] = float(m.group(2))
        mapped = json.loads(get("http://%s/plugins" % admin_addr))["mapped_libraries"]
        failures = counts.pop("failures", [])
        result.update({
            "reloads": a.reloads, "reload_seconds": round(reload_seconds, 1),
            "reload_wait_ms_median": round(1000 * sorted(waits)[len(waits) // 2], 1),
            "counts": counts, "failures_first": failures[:10],
            "plugin_loads_total": loads, "mapped_libraries": mapped,
            "load_failures_by_reason": failures_by_reason,
        })
        ok = ok and counts.get("failed", 0) == 0
        # The end: SIGTERM, then the leak check runs at exit.
        t = time.time()
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=a.exit_timeout)
        result["exit_code"] = code
        result["exit_seconds"] = round(time.time() - t, 1)
        ok = ok and code == 0
    except BaseException:
        p.kill()
        p.wait()
        raise
    finally:
        stderr.close()
        shutil.rmtree(d, ignore_errors=True)

    host_log = os.path.join(a.log_dir, "lsan.%d" % p.pid)
    others = sorted(f for f in os.listdir(a.log_dir) if f.startswith("lsan.") and f != "lsan.%d" % p.pid)
    result["other_process_reports"] = others
    if os.path.exists(host_log):
        leaks, suppressed, summary = parse_lsan_log(host_log)
    else:
        leaks, suppressed, summary = [], [], None
    result["lsan_log"] = host_log if os.path.exists(host_log) else None
    result["reported"] = {
        "leaks": len(leaks),
        "bytes": sum(x["bytes"] for x in leaks),
        "objects": sum(x["objects"] for x in leaks),
        "summary": summary,
    }
    result["suppressed"] = suppressed
    if leaks:
        symbolise_plugin_frames(leaks, [a.v1, a.v2])
        with open(host_log + ".leaks.txt", "w") as f:
            for x in leaks:
                f.write("%s leak of %d byte(s) in %d object(s) allocated from:\n" % (x["kind"], x["bytes"], x["objects"]))
                f.write("".join("    %s\n" % fr for fr in x["frames"]) + "\n")
        result["leaks_symbolised"] = host_log + ".leaks.txt"
    groups = {}
    for x in leaks:
        key = "%s leak from %s" % (x["kind"], owner(x["frames"]))
        g = groups.setdefault(key, {"leaks": 0, "objects": 0, "bytes": 0})
        g["leaks"] += 1
        g["objects"] += x["objects"]
        g["bytes"] += x["bytes"]
    result["reported_by_origin"] = groups
    ok = ok and not leaks and not others
    if a.expect_clean:
        n = sum(s["count"] for s in suppressed)
        # One forgotten RawLibrary per library mapped in-process (every successful load here).
        result["suppressed_allocations_per_mapped_library"] = n / mapped if mapped else None
        ok = ok and len(suppressed) == 1 and n == mapped == loads
    result["clean"] = ok
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
