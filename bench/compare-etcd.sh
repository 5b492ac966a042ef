#!/usr/bin/env bash
# Side-by-side benchmark of RaftKit and etcd on this machine.
#
# Starts a three-member etcd (from Debian's etcd-server package, installed if
# missing) and a three-node RaftKit on 127.0.0.1, both fsyncing every write,
# runs the same load against each at 1, 16, 64 and 256 clients (16-byte keys,
# 256-byte values, BENCH_SECS seconds each, default 20), stops everything it
# started, prints a table with the RaftKit/etcd ratios and writes the rows to
# target/bench/compare-etcd.json. First it measures the machine's latency
# floor for one replicated write (target/bench/floor.json).
#
#   bench/compare-etcd.sh                 # full run
#   BENCH_SECS=5 CLIENTS="1 64" bench/compare-etcd.sh
#   BENCH_CONNS=1 bench/compare-etcd.sh   # all clients share one connection (both systems)
#   RAFTKIT_IDLE_POLL_US=0 bench/compare-etcd.sh
#       # RaftKit's nodes run with --idle-poll-us 0 instead of the default
#       # `auto` (which keeps idle CPUs awake after each write at light load,
#       # unless the cgroup has a CPU quota). Whenever the nodes poll, the
#       # minimal replicated write is also measured with the same setting
#       # (target/bench/floor-idle-poll.json), for comparison only: its light
#       # process earns little CPU budget, so its pollers are held back more
#       # than the nodes'. The target's floor is always the plain one
#       # (target/bench/floor.json).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs="${BENCH_SECS:-20}"
clients="${CLIENTS:-1 16 64 256}"
# Connections the clients share, for both systems (0: one per client).
conns="${BENCH_CONNS:-0}"
out_dir="$root/target/bench"
mkdir -p "$out_dir"

if ! command -v etcd >/dev/null 2>&1; then
  echo "== installing etcd-server from Debian"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server >/dev/null
fi
echo "== $(etcd --version | head -1)"

echo "== building raftkit (release)"
cargo build --release -q --bin raftkit --bin raftkit-node
raftkit="$root/target/release/raftkit"
raftkit_node="$root/target/release/raftkit-node"

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== latency floor (fsync of a 300-byte append + 2 loopback round trips)"
"$raftkit" --output json bench-floor --dir "$work" >"$out_dir/floor.json"
cat "$out_dir/floor.json"
idle_poll="${RAFTKIT_IDLE_POLL_US:-auto}"
rm -f "$out_dir/floor-idle-poll.json"
if [ "$idle_poll" != 0 ]; then
  echo "== RaftKit nodes run with --idle-poll-us $idle_poll; the minimal replicated write again with idle polling"
  "$raftkit" --output json bench-floor --dir "$work" --idle-poll-us "$idle_poll" >"$out_dir/floor-idle-poll.json"
  cat "$out_dir/floor-idle-poll.json"
fi

etcd_cluster="e0=http://127.0.0.1:23800,e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802"
for i in 0 1 2; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$etcd_cluster" --initial-cluster-state new --initial-cluster-token bench \
    --log-level error >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
rk_cluster="127.0.0.1:24610,127.0.0.1:24611,127.0.0.1:24612"
for i in 0 1 2; do
  "$raftkit_node" --listen "127.0.0.1:2461$i" --data-dir "$work/rk$i" --groups kv:kv,counter:counter \
    --initial-conf "$rk_cluster" --sync true --idle-poll-us "$idle_poll" >"$work/rk$i.log" 2>&1 &
  pids+=($!)
done

wait_ready() { # url
  for _ in $(seq 1 300); do
    if curl -fs "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "not ready: $1" >&2
  exit 1
}
for i in 0 1 2; do wait_ready "http://127.0.0.1:2379$i/health"; wait_ready "http://127.0.0.1:2461$i/readyz"; done
window="$(curl -fs http://127.0.0.1:24610/metrics | awk '/^raftkit_idle_poll_window_us /{print $2}')"
echo "== RaftKit idle polling: --idle-poll-us $idle_poll, window in force ${window:-?} µs"
if [ "${window:-0}" = 0 ]; then rm -f "$out_dir/floor-idle-poll.json"; fi

etcd_eps="127.0.0.1:23790,127.0.0.1:23791,127.0.0.1:23792"
rows="$out_dir/compare-etcd.jsonl"
: >"$rows"
run() { # system cluster op clients
  # Start each point on a quiet disk: flush what the previous point left
  # dirty (etcd's backend writes in particular) and let writeback settle.
  sync
  sleep 2
  echo "-- $1 $3 clients=$4" >&2
  "$raftkit" --cluster "$2" --output json bench --system "$1" --op "$3" --clients "$4" \
    --duration-s "$secs" --warmup-s 2 --key-size 16 --value-size 256 --key-space 100000 \
    --conns "$conns" >>"$rows"
}
for c in $clients; do
  run etcd "$etcd_eps" put "$c"
  run raftkit "$rk_cluster" put "$c"
  run raftkit "$rk_cluster" fetch-add "$c"
done

python3 - "$rows" "$out_dir/compare-etcd.json" "$out_dir/floor.json" "$out_dir/floor-idle-poll.json" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
json.dump(rows, open(sys.argv[2], "w"), indent=2)
def find(system, op, c):
    return next((r for r in rows if r["system"] == system and r["op"] == op and r["clients"] == c), None)
print()
print(f"{'clients':>7} | {'etcd put/s':>10} {'p50 ms':>7} {'p99 ms':>7} | {'raftkit put/s':>13} {'p50 ms':>7} {'p99 ms':>7} | {'ratio ops':>9} {'ratio p99':>9} | {'fetch-add/s':>11} {'p99 ms':>7}")
for c in sorted({r["clients"] for r in rows}):
    e, k, f = find("etcd", "put", c), find("raftkit", "put", c), find("raftkit", "fetch-add", c)
    if not (e and k):
        continue
    ratio = k["ops_per_sec"] / e["ops_per_sec"] if e["ops_per_sec"] else float("nan")
    rp99 = k["p99_ms"] / e["p99_ms"] if e["p99_ms"] else float("nan")
    fa = f"{f['ops_per_sec']:>11.0f} {f['p99_ms']:>7.2f}" if f else ""
    print(f"{c:>7} | {e['ops_per_sec']:>10.0f} {e['p50_ms']:>7.2f} {e['p99_ms']:>7.2f} | {k['ops_per_sec']:>13.0f} {k['p50_ms']:>7.2f} {k['p99_ms']:>7.2f} | {ratio:>9.2f} {rp99:>9.2f} | {fa}")
print()
for c, name in ((64, "64 clients"),):
    e, k = find("etcd", "put", c), find("raftkit", "put", c)
    if e and k and e["ops_per_sec"] and e["p99_ms"]:
        print(f"{name}: put/s ratio {k['ops_per_sec'] / e['ops_per_sec']:.2f} (target >= 3), "
              f"p99 ratio {k['p99_ms'] / e['p99_ms']:.2f} (target <= 0.33)")
floor = json.load(open(sys.argv[3]))
k = find("raftkit", "put", 1)
if k:
    print(f"1 client: put p50 {k['p50_ms']:.3f} ms; floor {floor['floor_ms']:.3f} ms "
          f"(fsync {floor['fsync_p50_ms']:.3f} + 2 x rtt {floor['rtt_p50_ms']:.3f}); "
          f"target p50 <= {2 * floor['floor_ms']:.3f} ms")
    if floor.get("floor_same_cpu_ms"):
        print(f"   with the round trips measured on one CPU ({floor['rtt_same_cpu_p50_ms']:.3f} ms each): "
              f"floor {floor['floor_same_cpu_ms']:.3f} ms, target p50 <= {2 * floor['floor_same_cpu_ms']:.3f} ms")
    if floor.get("minimal_replicated_p50_ms"):
        m = floor["minimal_replicated_p50_ms"]
        print(f"   minimal replicated write (3 single-thread nodes, fsync inline): p50 {m:.3f} ms; "
              f"RaftKit's p50 is {k['p50_ms'] / m:.2f}x that")
    if os.path.exists(sys.argv[4]):
        m = json.load(open(sys.argv[4]))["minimal_replicated_p50_ms"]
        print(f"   minimal replicated write with idle polling (the nodes' setting; budget-limited): p50 {m:.3f} ms; "
              f"RaftKit's p50 is {k['p50_ms'] / m:.2f}x that")
print(f"\nrows written to {sys.argv[2]}; floor in {sys.argv[3]}")
PY
