#!/usr/bin/env bash
# CPU per request by thread (user and system time apart) and syscalls per request, for
# agent-host (echo plugin) or the floor, while h2load drives one request kind at 64 streams
# (STREAMS=1 for one; no profiler attached); the same pinning as compare.sh. BENCHMARKS.md's
# per-thread tables come from this.
#
#   bash tests/bench/threads.sh host|floor BODY_FILE GRPC_PATH [SECONDS] [FLOOR_ANSWERS_DIR]
#
# BODY_FILE and FLOOR_ANSWERS_DIR: compare.py's body-*.bin and floor-answers/ in its work directory.
# The host reads its environment as usual, e.g. AGENT_HOST__SERVER__BATCH_WRITES=false.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
server="$1"; body="$2"; path="$3"; secs="${4:-5}"; answers="${5:-}"
target="$PWD/${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d)"
if [[ $server == host ]]; then
    printf '[server]\nhost = "127.0.0.1"\nport = 0\nmetrics_port = 0\n[loader]\nplugin_dir = "%s"\nwork_dir = "%s/w"\n[log]\nlevel = "warn"\n' \
        "$target/bench/echo-dir" "$work" > "$work/host.toml"
    taskset -c 0 "$target/agent-host" serve --config "$work/host.toml" > "$work/out" 2> "$work/err" &
else
    taskset -c 0 "$target/bench-floor" "$answers" > "$work/out" 2> "$work/err" &
fi
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
until grep -q "listening grpc=" "$work/out" 2>/dev/null; do sleep 0.05; done
addr="$(grep -o 'grpc=[^ ]*' "$work/out" | head -1 | cut -d= -f2)"
h2() { taskset -c 1 h2load -c 1 -t 1 -m "${STREAMS:-64}" --data "$body" -H 'content-type: application/grpc' -H 'te: trailers' "$@" "http://$addr$path"; }
h2 -D 1 > /dev/null
# Per thread (id/name, so that same-named workers stay apart): user and system clock ticks.
snap() { for t in /proc/$pid/task/*; do echo "${t##*/}/$(tr ' ' _ < "$t/comm") $(awk '{print $14, $15}' "$t/stat")"; done | sort; }
snap > "$work/a"
perf stat -e 'syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,context-switches' \
    -p "$pid" -o "$work/stat" -- sleep "$secs" &
stat_pid=$!
out="$(h2 -D "$secs")"
wait $stat_pid
snap > "$work/b"
n="$(echo "$out" | grep -o '[0-9]* succeeded' | cut -d' ' -f1)"
echo "$server: $(echo "$out" | grep -o '[0-9.]* req/s'), $n requests"
join "$work/a" "$work/b" | awk -v n="$n" -v hz="$(getconf CLK_TCK)" \
    '{u=$4-$2; s=$5-$3; if (u+s>0) printf "  CPU  %-24s user %6.2f  system %6.2f µs/request\n", $1, u/hz*1e6/n, s/hz*1e6/n}'
grep -E "syscalls|context" "$work/stat" | awk -v n="$n" '{gsub(",","",$1); printf "  %-40s %.3f/request\n", $2, $1/n}'
