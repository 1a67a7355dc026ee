"""RELIABILITY row 14 (soak tier): a Flyte-configured grpcio client across two agent-host instances.

    python interop.py --host-exe target/debug/agent-host --v1 echo-v1.so --v2 echo-v2.so

Two hosts (A and B) serve echo on two fixed loopback ports with a short
`server.max_connection_age_ms`. One client process talks to both through one channel set up as
FlytePropeller sets up its connector client: target `ipv4:127.0.0.1:PA,127.0.0.1:PB`, round_robin
(`grpc.lb_policy_name`), keepalive 30 s / 10 s (the Flyte 2 executor's values; propeller's v1
client sets none), a 10 s deadline on every call, plaintext. It runs tasks the way propeller does:

* CreateTask once per attempt; any error fails the attempt and burns one of the task's retries
  (`--task-retries`, then the task fails: a task-level failure);
* GetTask right after a successful create (sync-on-create), then again until a terminal phase;
  each error counts against the task, more than 5 (propeller's maxSystemFailures) fail it;
* DeleteTask only on abort (every 4th task here is aborted right after its create); an error
  fails the abort and it is retried (5 attempts);
* ListAgents every 10 s (propeller's discovery; paused with the tasks during `--quiet`);
* `--log-streams` GetTaskLogs streams on jobs whose logs add a line every 40 s, reopened when
  they end (a stream on B ends with UNAVAILABLE at B's drain deadline).

Meanwhile, on a common clock: A's echo is replaced every `--reload-every` seconds (alternating
two builds); B gets SIGTERM at each of `--b-stops` and is restarted on the same port once it has
exited (after `--b-down` seconds); and during `--quiet` the task load stops while the log streams
stay open, so the client's keepalive pings are the only traffic on those connections.

The client runs in a child process with `GRPC_TRACE=subchannel,http_keepalive`; its log gives
connections made, GOAWAYs received (by HTTP/2 error code), other disconnects and keepalive pings
answered, per port. Each host's `/metrics` is sampled every 0.5 s for the calls it served.
Prints one JSON report; exits 1 if a task failed, a host got no traffic after B's restart, a
connection was closed over keepalive, or GOAWAYs came in a storm.
"""
import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

MAX_SYNC_FAILURES = 5  # propeller's webApi.caching.maxSystemFailures
DELETE_ATTEMPTS = 5


# ---------------------------------------------------------------------------------------------
# The client (child process)
# ---------------------------------------------------------------------------------------------


def client(a):
    import grpc
    from flyteidl.admin import agent_pb2
    from flyteidl.core import tasks_pb2
    from flyteidl.service import agent_pb2_grpc
    from google.protobuf import struct_pb2

    options = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", 30000),
        ("grpc.keepalive_timeout_ms", 10000),
        # The authority propeller's `k8s://agent-host.flyte:8000` target sends. Left to grpc-core,
        # a multi-address `ipv4:` target sends its address list ("127.0.0.1:P1,127.0.0.1:P2") as
        # :authority, which is not a valid authority: hyper's HTTP/2 server (under tonic) resets
        # every such stream with PROTOCOL_ERROR, which the client reports as INTERNAL.
        ("grpc.default_authority", "agent-host.flyte:8000"),
    ]
    channel = grpc.insecure_channel(a.target, options=options)
    tasks = agent_pb2_grpc.AsyncAgentServiceStub(channel)
    meta_stub = agent_pb2_grpc.AgentMetadataServiceStub(channel)
    category = agent_pb2.TaskCategory(name="echo_async", version=0)
    timeout = 10.0
    lock = threading.Lock()
    out = {
        "tasks": 0, "tasks_succeeded": 0, "tasks_aborted": 0, "task_failures": [],
        "attempts_failed": 0, "get_errors": 0, "delete_errors": 0, "list_calls": 0, "list_errors": 0,
        "rpc_errors": {}, "rpc_error_times": [], "log_streams_opened": 0, "log_stream_ends": {},
        "log_lines": 0, "channel_states": [],
    }

    def now():
        return time.time() - a.start_at

    def rpc_error(op, e):
        with lock:
            key = "%s %s" % (op, e.code().name)
            out["rpc_errors"][key] = out["rpc_errors"].get(key, 0) + 1
            if len(out["rpc_error_times"]) < 200:
                out["rpc_error_times"].append([round(now(), 2), op, e.code().name, (e.details() or "")[:120]])

    def quiet():
        t = now()
        return a.quiet_from <= t < a.quiet_from + a.quiet_seconds

    def run_task(n, rng):
        custom = struct_pb2.Struct()
        custom.update({"echo_sleep_ms": rng.randint(0, 400)})
        create = agent_pb2.CreateTaskRequest(template=tasks_pb2.TaskTemplate(type="echo_async", custom=custom))
        meta = None
        for attempt in range(a.task_retries + 1):
            try:
                meta = tasks.CreateTask(create, timeout=timeout).resource_meta
                break
            except grpc.RpcError as e:
                rpc_error("CreateTask", e)
                with lock:
                    out["attempts_failed"] += 1
                time.sleep(0.5)  # the next attempt starts on a later propeller round
        if meta is None:
            return "CreateTask failed on all %d attempts" % (a.task_retries + 1)
        if n % 4 == 3:
            # Aborted: DeleteTask, retried while it fails.
            for _ in range(DELETE_ATTEMPTS):
                try:
                    tasks.DeleteTask(agent_pb2.DeleteTaskRequest(task_category=category, resource_meta=meta), timeout=timeout)
                    with lock:
                        out["tasks_aborted"] += 1
                    return None
                except grpc.RpcError as e:
                    rpc_error("DeleteTask", e)
                    with lock:
                        out["delete_errors"] += 1
                    time.sleep(0.5)
            return "DeleteTask failed %d times" % DELETE_ATTEMPTS
        failures = 0
        while True:
            try:
                r = tasks.GetTask(agent_pb2.GetTaskRequest(task_category=category, resource_meta=meta), timeout=timeout)
            except grpc.RpcError as e:
                rpc_error("GetTask", e)
                with lock:
                    out["get_errors"] += 1
                failures += 1
                if failures > MAX_SYNC_FAILURES:
                    return "GetTask failed %d times" % failures
                time.sleep(0.5)
                continue
            phase = r.resource.phase
            if phase == 3:  # SUCCEEDED
                with lock:
                    out["tasks_succeeded"] += 1
                return None
            if phase in (4, 5, 8):  # ABORTED, FAILED, RETRYABLE_FAILED
                return "the task ended in phase %d: %s" % (phase, r.resource.message)
            time.sleep(0.2)

    def worker(w):
        rng = random.Random(w)
        n = w
        while now() < a.duration:
            if quiet():
                time.sleep(0.2)
                continue
            failure = run_task(n, rng)
            with lock:
                out["tasks"] += 1
                if failure:
                    out["task_failures"].append([round(now(), 2), failure])
            n += a.workers
            time.sleep(a.think_ms / 1000.0)

    def lister():
        while now() < a.duration:
            if quiet():
                time.sleep(0.2)
                continue
            try:
                meta_stub.ListAgents(agent_pb2.ListAgentsRequest(), timeout=timeout)
                with lock:
                    out["list_calls"] += 1
            except grpc.RpcError as e:
                rpc_error("ListAgents", e)
                with lock:
                    out["list_errors"] += 1
            time.sleep(10)

    def log_tail():
        custom = struct_pb2.Struct()
        custom.update({"echo_log_every_ms": 40000})
        create = agent_pb2.CreateTaskRequest(template=tasks_pb2.TaskTemplate(type="echo_async", custom=custom))
        while now() < a.duration - 1:
            try:
                meta = tasks.CreateTask(create, timeout=timeout).resource_meta
            except grpc.RpcError as e:
                rpc_error("CreateTask (logs)", e)
                time.sleep(0.5)
                continue
            # A stream has no deadline past the run's end (a tail stays open as long as it likes).
            left = max(1.0, a.duration - now())
            stream = tasks.GetTaskLogs(agent_pb2.GetTaskLogsRequest(task_category=category, resource_meta=meta), timeout=left)
            with lock:
                out["log_streams_opened"] += 1
            end = "ended"
            try:
                for m in stream:
                    with lock:
                        out["log_lines"] += len(m.body.structured_lines)
            except grpc.RpcError as e:
                end = e.code().name
            with lock:
                out["log_stream_ends"][end] = out["log_stream_ends"].get(end, 0) + 1

    def watch_state(state):
        with lock:
            out["channel_states"].append([round(now(), 2), state.name])

    channel.subscribe(watch_state, try_to_connect=True)
    while time.time() < a.start_at:
        time.sleep(0.01)
    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(a.workers)]
    threads.append(threading.Thread(target=lister, daemon=True))
    threads += [threading.Thread(target=log_tail, daemon=True) for _ in range(a.log_streams)]
    for t in threads:
        t.start()
    for t in threads[: a.workers + 1]:
        t.join()
    time.sleep(1.5)  # the log tails end with their deadline
    with lock:
        print(json.dumps(out), flush=True)
    os._exit(0)  # the log streams' threads may still be inside grpc


# ---------------------------------------------------------------------------------------------
# The orchestrator
# ---------------------------------------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Host:
    """One `agent-host serve` on a fixed gRPC port, its own plugin directory and log file."""

    def __init__(self, name, exe, port, v1, root, age_ms, grace_ms):
        self.name, self.exe, self.port = name, exe, port
        self.dir = os.path.join(root, name)
        self.plugins = os.path.join(self.dir, "plugins")
        os.makedirs(self.plugins)
        shutil.copyfile(v1, os.path.join(self.plugins, "echo.so"))
        self.config = os.path.join(self.dir, "config.toml")
        with open(self.config, "w") as f:
            f.write('[server]\nhost = "127.0.0.1"\nport = %d\nmetrics_port = 0\nmax_connection_age_ms = %d\n'
                    'shutdown_grace_ms = %d\n[loader]\nplugin_dir = "%s"\nwork_dir = "%s"\nstable_ms = 50\n'
                    'max_libraries = 2000\n[log]\nlevel = "info"\n'
                    % (port, age_ms, grace_ms, self.plugins, os.path.join(self.dir, "work")))
        self.proc, self.admin, self.starts = None, None, 0

    def start(self):
        for _ in range(20):
            log = open(os.path.join(self.dir, "host-%d.log" % self.starts), "w")
            self.proc = subprocess.Popen([self.exe, "serve", "--config", self.config], stdout=subprocess.PIPE, stderr=log, text=True)
            line = self.proc.stdout.readline()
            words = dict(w.split("=", 1) for w in line.split() if "=" in w)
            if "metrics" in words:
                self.admin = words["metrics"]
                self.starts += 1
                break
            self.proc.wait()
            time.sleep(0.5)  # the port is not free yet
        else:
            raise SystemExit("%s: cannot start on port %d" % (self.name, self.port))
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen("http://%s/readyz" % self.admin, timeout=1) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.05)
        raise SystemExit("%s did not become ready" % self.name)

    def served(self):
        """Calls this process answered (every Flyte RPC, success or not), or None when down."""
        try:
            text = get("http://%s/metrics" % self.admin, timeout=1)
        except Exception:
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith("flyte_connector_requests_success_total{") or line.startswith("flyte_connector_requests_failure_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def generation(self):
        for f in json.loads(get("http://%s/plugins" % self.admin))["files"]:
            if f["path"].endswith("/echo.so"):
                return f.get("generation")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def parse_trace(stream, ports, events, lock, t0):
    """Reads the client's grpc trace: per port, connections, GOAWAYs and other disconnects."""
    addr = re.compile(r"address=ipv4:127\.0\.0\.1:(\d+)")
    keepalive = re.compile(r"ipv4:127\.0\.0\.1:(\d+): Finish keepalive ping")
    for raw in stream:
        line = raw.decode(errors="replace")
        t = round(time.time() - t0, 2)
        kind, port, detail = None, None, ""
        if "Finish keepalive ping" in line:
            m = keepalive.search(line)
            kind, port = "keepalive_ping_answered", m and int(m.group(1))
        elif "watchdog" in line.lower() or "too_many_pings" in line or "ENHANCE_YOUR_CALM" in line:
            m = addr.search(line)
            kind, port, detail = "keepalive_problem", m and int(m.group(1)), line.strip()[-200:]
        elif "subchannel" in line:
            m = addr.search(line)
            port = m and int(m.group(1))
            if "new connected subchannel" in line:
                kind = "connected"
            elif "reports disconnection" in line:
                text = line.split("reports disconnection:", 1)[1].strip()
                if "GOAWAY received" in text:
                    code = re.search(r"Error code: (\d+)", text)
                    kind, detail = "goaway", code.group(1) if code else "?"
                else:
                    kind, detail = "disconnected", text[:160]
            elif "reporting connectivity state TRANSIENT_FAILURE" in line:
                kind, detail = "connect_failed", line.split("status:", 1)[-1].strip()[:160]
        if kind and port in ports:
            with lock:
                events.append((t, ports[port], kind, detail))


def windows_max(times, width):
    """Most events in any window of `width` seconds."""
    times, best, j = sorted(times), 0, 0
    for i, t in enumerate(times):
        while times[j] < t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


def orchestrate(a):
    root = tempfile.mkdtemp(prefix="agent-host-interop-")
    pa, pb = free_port(), free_port()
    hosts = {"A": Host("A", a.host_exe, pa, a.v1, root, a.age_ms, a.grace_ms), "B": Host("B", a.host_exe, pb, a.v1, root, a.age_ms, a.grace_ms)}
    timeline, tl_lock = [], threading.Lock()

    def note(what):
        with tl_lock:
            timeline.append([round(time.time() - t0, 2), what])

    client_proc = None
    try:
        for h in hosts.values():
            h.start()
        t0 = time.time() + 2.0
        env = dict(os.environ, GRPC_VERBOSITY="debug", GRPC_TRACE="subchannel,http_keepalive")
        client_proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "client", "--target", "ipv4:127.0.0.1:%d,127.0.0.1:%d" % (pa, pb),
             "--start-at", repr(t0), "--duration", str(a.duration), "--workers", str(a.workers), "--log-streams", str(a.log_streams),
             "--think-ms", str(a.think_ms), "--task-retries", str(a.task_retries),
             "--quiet-from", str(a.quiet_from), "--quiet-seconds", str(a.quiet_seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        events, ev_lock = [], threading.Lock()
        tracer = threading.Thread(target=parse_trace, args=(client_proc.stderr, {pa: "A", pb: "B"}, events, ev_lock, t0), daemon=True)
        tracer.start()
        client_out = []
        reader = threading.Thread(target=lambda: client_out.append(client_proc.stdout.read()), daemon=True)
        reader.start()

        # Calls served per host, sampled; B's count restarts at 0 with each new process.
        samples, stop = [], threading.Event()

        def sampler():
            while not stop.is_set():
                t = round(time.time() - t0, 2)
                samples.append((t, hosts["A"].served(), hosts["B"].served(), hosts["B"].starts))
                time.sleep(0.5)

        # A's plugin replaced every reload_every seconds for the whole run.
        reloads = {"done": 0, "slowest": 0.0}

        def reloader():
            i = 0
            while time.time() - t0 < 5:
                time.sleep(0.1)
            while time.time() - t0 < a.duration - 2:
                i += 1
                src = a.v2 if i % 2 else a.v1
                gen = hosts["A"].generation()
                tmp = os.path.join(hosts["A"].plugins, ".echo.so.tmp")
                shutil.copyfile(src, tmp)
                os.rename(tmp, os.path.join(hosts["A"].plugins, "echo.so"))
                published = time.time()
                while hosts["A"].generation() == gen:
                    if time.time() - published > 10:
                        raise SystemExit("A: reload %d not served within 10 s" % i)
                    time.sleep(0.01)
                reloads["done"] += 1
                reloads["slowest"] = max(reloads["slowest"], time.time() - published)
                time.sleep(max(0.0, a.reload_every - (time.time() - published)))

        threads = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=reloader, daemon=True)]
        for t in threads:
            t.start()
        note("start: A on %d, B on %d, max_connection_age %d ms" % (pa, pb, a.age_ms))
        if a.quiet_seconds:
            note("quiet phase planned: %s..%s s" % (a.quiet_from, a.quiet_from + a.quiet_seconds))
        b_cycles = []
        for at in a.b_stops:
            while time.time() - t0 < at:
                time.sleep(0.05)
            b = hosts["B"]
            signalled = time.time()
            b.proc.send_signal(15)
            note("B: SIGTERM")
            code = b.proc.wait(timeout=a.grace_ms / 1000 + 5)
            exited = time.time()
            note("B: exited %d after %.2f s" % (code, exited - signalled))
            time.sleep(a.b_down)
            b.start()
            restarted = time.time()
            note("B: restarted (process %d)" % b.starts)
            b_cycles.append({"sigterm_at": round(signalled - t0, 2), "exit_code": code, "exit_after_s": round(exited - signalled, 2),
                             "restarted_at": round(restarted - t0, 2)})
        client_proc.wait(timeout=a.duration + 60)
        reader.join(timeout=10)
        tracer.join(timeout=10)
        stop.set()
        note("end")
        result = json.loads(client_out[0]) if client_out and client_out[0].strip() else {"error": "no client output"}

        # Traffic per host around each restart of B.
        def served_between(col, start, end, process=None):
            pts = [s for s in samples if start <= s[0] <= end and s[col] is not None and (process is None or s[3] == process)]
            if len(pts) < 2:
                return 0.0
            return pts[-1][col] - pts[0][col]

        for n, c in enumerate(b_cycles):
            process = n + 2  # B's process number after this restart
            end = b_cycles[n + 1]["sigterm_at"] if n + 1 < len(b_cycles) else a.duration
            b_pts = [s for s in samples if s[3] == process and s[2]]
            c["b_first_traffic_after_restart_s"] = round(b_pts[0][0] - c["restarted_at"], 2) if b_pts else None
            c["calls_after_restart"] = {"A": served_between(1, c["restarted_at"], end),
                                        "B": (b_pts[-1][2] if b_pts else 0.0)}
            settled = c["restarted_at"] + 10
            a_late, b_late = served_between(1, settled, end), served_between(2, settled, end, process)
            c["share_of_B_from_10s_after_restart"] = round(b_late / (a_late + b_late), 3) if a_late + b_late else None
            c["b_down_calls_on_A"] = served_between(1, c["sigterm_at"], c["restarted_at"])

        with ev_lock:
            evs = list(events)
        summary = {}
        for h in ("A", "B"):
            mine = [e for e in evs if e[1] == h]
            goaways = [e for e in mine if e[2] == "goaway"]
            summary[h] = {
                "connections": sum(1 for e in mine if e[2] == "connected"),
                "goaways": len(goaways),
                "goaway_codes": sorted({e[3] for e in goaways}),
                "goaways_max_in_10s": windows_max([e[0] for e in goaways], 10.0),
                "other_disconnects": [e for e in mine if e[2] == "disconnected"][:10],
                "connect_failures": sum(1 for e in mine if e[2] == "connect_failed"),
                "keepalive_pings_answered": sum(1 for e in mine if e[2] == "keepalive_ping_answered"),
                "keepalive_problems": [e for e in mine if e[2] == "keepalive_problem"][:10],
            }
        quiet_end = a.quiet_from + a.quiet_seconds
        quiet_disconnects = [e for e in evs if a.quiet_from <= e[0] < quiet_end and e[2] in ("disconnected", "goaway", "keepalive_problem")]
        report = {
            "duration_s": a.duration, "workers": a.workers, "max_connection_age_ms": a.age_ms, "shutdown_grace_ms": a.grace_ms,
            "task_retries": a.task_retries,
            "client": {k: v for k, v in result.items() if k != "channel_states"},
            "channel_state_changes": len(result.get("channel_states", [])),
            "channel_states_not_ready": [s for s in result.get("channel_states", []) if s[1] not in ("READY",)][:20],
            "reloads_on_A": reloads["done"], "slowest_reload_on_A_s": round(reloads["slowest"], 2),
            "b_cycles": b_cycles,
            "per_host": summary,
            "quiet_phase": {"from_s": a.quiet_from, "seconds": a.quiet_seconds, "disconnects_during": quiet_disconnects},
            "timeline": timeline,
        }
        problems = []
        if result.get("task_failures"):
            problems.append("task-level failures: %d" % len(result["task_failures"]))
        if "error" in result:
            problems.append(result["error"])
        for c in b_cycles:
            if not c["calls_after_restart"]["B"] or not c["calls_after_restart"]["A"]:
                problems.append("no traffic on one host after B's restart at %s s" % c["restarted_at"])
            if c["exit_code"] != 0:
                problems.append("B exited %s" % c["exit_code"])
        for h, s in summary.items():
            if s["keepalive_problems"]:
                problems.append("%s: a connection closed over keepalive" % h)
            if s["goaways_max_in_10s"] > a.goaway_storm:
                problems.append("%s: %d GOAWAYs within 10 s" % (h, s["goaways_max_in_10s"]))
        report["problems"] = problems
        print(json.dumps(report, indent=1))
        return 1 if problems else 0
    finally:
        if client_proc and client_proc.poll() is None:
            client_proc.kill()
        for h in hosts.values():
            h.stop()
        if a.keep:
            print("kept %s" % root, file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("run")
    o.add_argument("--host-exe", required=True)
    o.add_argument("--v1", required=True)
    o.add_argument("--v2", required=True)
    o.add_argument("--duration", type=float, default=300)
    o.add_argument("--workers", type=int, default=12)
    o.add_argument("--log-streams", type=int, default=4)
    o.add_argument("--think-ms", type=int, default=20)
    o.add_argument("--task-retries", type=int, default=3)
    o.add_argument("--age-ms", type=int, default=20000, help="server.max_connection_age_ms on both hosts")
    o.add_argument("--grace-ms", type=int, default=10000, help="server.shutdown_grace_ms on both hosts")
    o.add_argument("--reload-every", type=float, default=2.0)
    o.add_argument("--b-stops", type=lambda s: [float(x) for x in s.split(",") if x], default=None,
                   help="seconds into the run at which B gets SIGTERM (default: at 13%%, 40%% and 80%% of it)")
    o.add_argument("--b-down", type=float, default=3.0, help="seconds B stays down after it exits")
    o.add_argument("--quiet-from", type=float, default=None, help="default: at 60%% of the run")
    o.add_argument("--quiet-seconds", type=float, default=None, help="default: 45 (0 for runs under 150 s)")
    o.add_argument("--goaway-storm", type=int, default=6, help="most GOAWAYs per host within 10 s before it counts as a storm")
    o.add_argument("--keep", action="store_true", help="keep the hosts' directories and logs")
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--start-at", type=float, required=True)
    c.add_argument("--duration", type=float, required=True)
    c.add_argument("--workers", type=int, required=True)
    c.add_argument("--log-streams", type=int, required=True)
    c.add_argument("--think-ms", type=int, required=True)
    c.add_argument("--task-retries", type=int, required=True)
    c.add_argument("--quiet-from", type=float, required=True)
    c.add_argument("--quiet-seconds", type=float, required=True)
    a = ap.parse_args()
    if a.cmd == "client":
        client(a)
        return 0
    if a.b_stops is None:
        a.b_stops = [round(a.duration * f) for f in (0.13, 0.4, 0.8)]
    if a.quiet_from is None:
        a.quiet_from = round(a.duration * 0.6)
    if a.quiet_seconds is None:
        a.quiet_seconds = 45.0 if a.duration >= 150 else 0.0
    return orchestrate(a)


if __name__ == "__main__":
    sys.exit(main())
