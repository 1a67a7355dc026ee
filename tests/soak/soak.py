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

    python soak.py threads --host-exe ... --v1 A.so --v2 B.so --reloads 100

Row 15, with the plugin's own tokio runtime (the SDK starts one per plugin in init and stops it
in shutdown) as the plugin-owned threads: the host's thread count must come back to its
baseline after each retire.
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


def generation(admin):
    for f in json.loads(get("http://%s/plugins" % admin))["files"]:
        if f["path"].endswith("/echo.so"):
            return f.get("generation"), f.get("error_reason")
    return None, None


def publish(src, plugin_dir):
    tmp = os.path.join(plugin_dir, ".echo.so.tmp")
    shutil.copyfile(src, tmp)
    os.rename(tmp, os.path.join(plugin_dir, "echo.so"))


def start(exe, v1, max_libraries):
    d = tempfile.mkdtemp(prefix="agent-host-soak-")
    plugins = os.path.join(d, "plugins")
    os.makedirs(plugins)
    shutil.copyfile(v1, os.path.join(plugins, "echo.so"))
    cfg = os.path.join(d, "config.toml")
    with open(cfg, "w") as f:
        f.write('[server]\nhost = "127.0.0.1"\nport = 0\nmetrics_port = 0\n'
                '[loader]\nplugin_dir = "%s"\nwork_dir = "%s"\nstable_ms = 20\nmax_libraries = %d\n'
                '[log]\nlevel = "warn"\n' % (plugins, os.path.join(d, "work"), max_libraries))
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
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])


def thread_count(a):
    """Row 15 (with the SDK's own per-plugin runtime as the plugin-owned threads): the host's
    thread count after RELOADS reloads, each retiring a version whose runtime must stop."""
    p, d, plugins, grpc_addr, admin = start(a.host_exe, a.v1, a.reloads + 3)
    try:
        time.sleep(1)
        baseline = threads(p.pid)
        gen, _ = generation(admin)
        peak, after_each = baseline, []
        for i in range(1, a.reloads + 1):
            publish(a.v2 if i % 2 else a.v1, plugins)
            while True:
                g, _ = generation(admin)
                if g != gen:
                    gen = g
                    break
                time.sleep(0.005)
            peak = max(peak, threads(p.pid))
            # Within the drain deadline (nothing is in flight here: at once, give it 1 s).
            deadline = time.time() + 1.0
            while threads(p.pid) > baseline and time.time() < deadline:
                time.sleep(0.01)
            after_each.append(threads(p.pid))
        print(json.dumps({
            "reloads": a.reloads, "threads_baseline": baseline, "threads_peak": peak,
            "threads_after_reload_max": max(after_each), "threads_final": threads(p.pid),
            "reloads_back_to_baseline_within_1s": sum(1 for t in after_each if t <= baseline),
        }))
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


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
    t.add_argument("--v1", required=True)
    t.add_argument("--v2", required=True)
    t.add_argument("--reloads", type=int, default=100)
    a = ap.parse_args()
    {"memory": memory, "threads": thread_count}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
