"""Soak driver for agent-host (RELIABILITY rows 2 and 1 at soak sizes). Not part of CI.

    python soak.py memory --host-exe target/debug/agent-host --v1 A.so --v2 B.so \
        --reloads 1000 --load-seconds 600

Row 2, memory across generations: starts `agent-host serve` on loopback, alternates the echo
plugin between two builds RELOADS times (publish by rename, wait for /plugins to show the new
generation), sampling the host's RssAnon and Rss (/proc/PID/status) every 50 reloads; then runs
a constant CreateTask/GetTask load with no reloads for LOAD_SECONDS, sampling every 10 s; then
checks that at loader.max_libraries further reloads are refused with the metric
agent_host_plugin_load_failures_total{reason="max_libraries"} (and the host is still up).
Prints one JSON object with the figures.

    python soak.py threads --host-exe ... --fixtures target/debug/fixtures --reloads 100 \
        --drain-deadline-ms 1000

Row 15, plugin-owned threads, for three plugins in turn, each reloaded RELOADS times in its own
host (alternating its two builds): `echo` (its only threads are the plugin runtime the SDK
starts in init and stops in shutdown), `threads` (also a thread of its own that uses the SDK
runtime's handle and one running a tokio runtime of its own; they stop at shutdown) and
`leaky` (the same threads, ignoring shutdown). For echo and threads the host's thread count
must come back to its baseline after each retire, within the drain deadline, with no version
reported as leaked; for leaky every retired version must be reported
(agent_host_generations_leaked_total) and leave exactly its two threads behind.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
from flyteidl.admin import agent_pb2
from flyteidl.core import literals_pb2, tasks_pb2
from flyteidl.service import agent_pb2_grpc


def rss(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "VmRSS"):
                out[k] = int(v.split()[0])  # KiB
    return out


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def generation(admin, name="echo.so"):
    for f in json.loads(get("http://%s/plugins" % admin))["files"]:
        if f["path"].endswith("/" + name):
            return f.get("generation"), f.get("error_reason")
    return None, None


def publish(src, plugin_dir, name="echo.so"):
    tmp = os.path.join(plugin_dir, "." + name + ".tmp")
    shutil.copyfile(src, tmp)
    os.rename(tmp, os.path.join(plugin_dir, name))


def start(exe, v1, max_libraries, name="echo.so", loader_extra=""):
    d = tempfile.mkdtemp(prefix="agent-host-soak-")
    plugins = os.path.join(d, "plugins")
    os.makedirs(plugins)
    shutil.copyfile(v1, os.path.join(plugins, name))
    cfg = os.path.join(d, "config.toml")
    with open(cfg, "w") as f:
        f.write('[server]\nhost = "127.0.0.1"\nport = 0\nmetrics_port = 0\n'
                '[loader]\nplugin_dir = "%s"\nwork_dir = "%s"\nstable_ms = 20\nmax_libraries = %d\n%s'
                '[log]\nlevel = "warn"\n' % (plugins, os.path.join(d, "work"), max_libraries, loader_extra))
    p = subprocess.Popen([exe, "serve", "--config", cfg], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    words = dict(w.split("=", 1) for w in line.split() if "=" in w)
    return p, d, plugins, words["grpc"], words["metrics"]


def load(grpc_addr, stop, counts):
    ch = grpc.insecure_channel(grpc_addr)
    stub = agent_pb2_grpc.AsyncAgentServiceStub(ch)
    req = agent_pb2.CreateTaskRequest(template=tasks_pb2.TaskTemplate(type="echo_async"), inputs=literals_pb2.LiteralMap())
    cat = agent_pb2.TaskCategory(name="echo_async", version=0)
    while not stop.is_set():
        try:
            meta = stub.CreateTask(req, timeout=10).resource_meta
            stub.GetTask(agent_pb2.GetTaskRequest(task_category=cat, resource_meta=meta), timeout=10)
            counts["ok"] += 2
        except grpc.RpcError as e:
            counts["failed"] += 1
            counts.setdefault("codes", {}).setdefault(str(e.code()), 0)
            counts["codes"][str(e.code())] += 1


def memory(a):
    p, d, plugins, grpc_addr, admin = start(a.host_exe, a.v1, a.reloads + 3)
    try:
        time.sleep(1)
        samples = [(0, rss(p.pid))]
        started = time.time()
        gen, _ = generation(admin)
        for i in range(1, a.reloads + 1):
            publish(a.v2 if i % 2 else a.v1, plugins)
            deadline = time.time() + 20
            while True:
                g, err = generation(admin)
                if g != gen:
                    gen = g
                    break
                if time.time() > deadline:
                    raise SystemExit("reload %d not seen within 20 s (error: %s)" % (i, err))
                time.sleep(0.005)
            if i % 50 == 0:
                samples.append((i, rss(p.pid)))
        reload_seconds = time.time() - started
        first, last = samples[0][1], samples[-1][1]
        per_gen = {k: (last[k] - first[k]) / a.reloads for k in first}
        # Constant load, no reloads.
        stop, counts = threading.Event(), {"ok": 0, "failed": 0}
        workers = [threading.Thread(target=load, args=(grpc_addr, stop, counts)) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(min(10, a.load_seconds))  # warm-up
        load_samples = []
        t0 = time.time()
        while time.time() - t0 < a.load_seconds:
            load_samples.append(rss(p.pid)["VmRSS"])
            time.sleep(10)
        load_samples.append(rss(p.pid)["VmRSS"])
        stop.set()
        for w in workers:
            w.join()
        lo, hi = min(load_samples), max(load_samples)
        # The cap: a few more reloads until refused.
        refused_metric = 0.0
        for i in range(6):
            publish(a.v1 if (a.reloads + i) % 2 else a.v2, plugins)
            time.sleep(0.5)
            for line in get("http://%s/metrics" % admin).splitlines():
                if line.startswith('agent_host_plugin_load_failures_total{reason="max_libraries"}'):
                    refused_metric = float(line.split()[-1])
        alive = p.poll() is None
        print(json.dumps({
            "reloads": a.reloads,
            "reload_seconds": round(reload_seconds, 1),
            "rss_kib_start": first, "rss_kib_after_reloads": last,
            "per_generation_kib": {k: round(v, 1) for k, v in per_gen.items()},
            "load_seconds": a.load_seconds, "load_calls_ok": counts["ok"], "load_calls_failed": counts["failed"],
            "load_codes": counts.get("codes", {}),
            "vmrss_kib_under_load_min_max": [lo, hi], "vmrss_spread_pct": round(100.0 * (hi - lo) / lo, 2),
            "max_libraries_refusals": refused_metric, "host_alive_after_cap": alive,
            "samples": samples,
        }, indent=1))
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def threads(pid):
    """The host's threads, leaving out its short-lived thread census (run at drain deadlines)."""
    n = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, t)) as f:
                if f.read().strip() != "thread-census":
                    n += 1
        except OSError:
            pass
    return n


def metric(admin, name):
    for line in get("http://%s/metrics" % admin).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def thread_count_one(a, plugin):
    """RELOADS reloads of one plugin in its own host: thread counts and leak reports."""
    name = plugin + ".so"
    v1, v2 = (os.path.join(a.fixtures, "%s-%s.so" % (plugin, v)) for v in ("v1", "v2"))
    deadline_s = a.drain_deadline_ms / 1000.0
    p, d, plugins, grpc_addr, admin = start(a.host_exe, v1, a.reloads + 3, name,
                                            "drain_deadline_ms = %d\n" % a.drain_deadline_ms)
    try:
        time.sleep(1)
        baseline = threads(p.pid)
        gen, _ = generation(admin, name)
        peak, after_each, back_s = baseline, [], []
        started = time.time()
        for i in range(1, a.reloads + 1):
            publish(v2 if i % 2 else v1, plugins, name)
            seen_deadline = time.time() + 20
            while True:
                g, err = generation(admin, name)
                if g != gen:
                    gen = g
                    break
                if time.time() > seen_deadline:
                    raise SystemExit("%s reload %d not seen within 20 s (error: %s)" % (plugin, i, err))
                time.sleep(0.005)
            seen = time.time()
            peak = max(peak, threads(p.pid))
            # Back to the baseline within the drain deadline (a leaky plugin never is).
            while threads(p.pid) > baseline and time.time() - seen < deadline_s:
                time.sleep(0.005)
            after_each.append(threads(p.pid))
            if after_each[-1] <= baseline:
                back_s.append(time.time() - seen)
        reload_seconds = time.time() - started
        # Past the last drain deadline, every retired version has been examined.
        time.sleep(deadline_s + 1.0)
        status = json.loads(get("http://%s/plugins" % admin))
        leaked = status.get("leaked", [])
        return {
            "plugin": plugin, "reloads": a.reloads, "reload_seconds": round(reload_seconds, 1),
            "drain_deadline_ms": a.drain_deadline_ms,
            "threads_baseline": baseline, "threads_peak": peak,
            "threads_after_reload_max": max(after_each), "threads_final": threads(p.pid),
            "reloads_back_to_baseline_within_deadline": len(back_s),
            "back_to_baseline_s_max": round(max(back_s), 3) if back_s else None,
            "generations_leaked_total": metric(admin, 'agent_host_generations_leaked_total{plugin="%s"}' % plugin),
            "generations_leaked_now": metric(admin, "agent_host_generations_leaked"),
            "leaked_thread_names": sorted({t for l in leaked for t in (l.get("threads") or [])}),
            "host_alive": p.poll() is None,
        }
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def thread_count(a):
    """Row 15 for echo, threads and leaky (see the module doc)."""
    print(json.dumps([thread_count_one(a, plugin) for plugin in ("echo", "threads", "leaky")], indent=1))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--host-exe", required=True)
    m.add_argument("--v1", required=True)
    m.add_argument("--v2", required=True)
    m.add_argument("--reloads", type=int, default=1000)
    m.add_argument("--load-seconds", type=int, default=600)
    t = sub.add_parser("threads")
    t.add_argument("--host-exe", required=True)
    t.add_argument("--fixtures", required=True, help="directory with echo-, threads- and leaky-v1.so / -v2.so")
    t.add_argument("--reloads", type=int, default=100)
    t.add_argument("--drain-deadline-ms", type=int, default=1000)
    a = ap.parse_args()
    {"memory": memory, "threads": thread_count}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
