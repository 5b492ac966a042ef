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
# Each system is driven in three layouts (LAYOUTS), the same for both:
#   leader-shared      every client on one connection to the leader (how
#                      etcd's own benchmark tool drives etcd: its best);
#   leader-per-client  a connection per client, all to the leader;
#   all-members        a connection per client, spread over the three
#                      members (etcd's followers forward writes to the
#                      leader; RaftKit's client finds the leader and sends
#                      there itself, so it differs from leader-per-client
#                      only in where it starts).
# Every RaftKit row is compared with the BEST etcd row at that client count
# (most puts/s): the headline ratio is RaftKit's best against etcd's best.
#
#   bench/compare-etcd.sh                 # full run
#   BENCH_SECS=5 CLIENTS="1 64" bench/compare-etcd.sh
#   LAYOUTS=leader-shared bench/compare-etcd.sh   # one layout only
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
layouts="${LAYOUTS:-leader-shared leader-per-client all-members}"
for l in $layouts; do
  case $l in
    leader-shared | leader-per-client | all-members) ;;
    *) echo "unknown layout '$l' (LAYOUTS: leader-shared, leader-per-client, all-members)" >&2; exit 2 ;;
  esac
done
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
# The leaders, asked again before every point (an election may move one).
etcd_leader() {
  for ep in ${etcd_eps//,/ }; do
    # The gRPC gateway's Status: this member's id and the leader's.
    if curl -fs -X POST "http://$ep/v3/maintenance/status" -d '{}' |
      python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s.get("leader") and s["leader"] == s["header"]["member_id"] else 1)'; then
      echo "$ep"
      return
    fi
  done
  echo "no etcd leader" >&2
  exit 1
}
raftkit_leader() {
  "$raftkit" --cluster "$rk_cluster" --output json status |
    python3 -c 'import json,sys
for m in json.load(sys.stdin):
    for g in m.get("groups", []):
        if g["group"] == "kv" and g["role"] == "leader":
            print(m["addr"]); sys.exit(0)
sys.exit("no RaftKit leader of kv")'
}
rows="$out_dir/compare-etcd.jsonl"
: >"$rows"
run() { # system layout op clients
  local all endpoints conns
  if [ "$1" = etcd ]; then all=$etcd_eps; else all=$rk_cluster; fi
  case $2 in
    leader-shared) conns=1 ;;
    leader-per-client | all-members) conns=0 ;;
  esac
  if [ "$2" = all-members ]; then endpoints=$all
  elif [ "$1" = etcd ]; then endpoints=$(etcd_leader)
  else endpoints=$(raftkit_leader); fi
  # Start each point on a quiet disk: flush what the previous point left
  # dirty (etcd's backend writes in particular) and let writeback settle.
  sync
  sleep 2
  echo "-- $1 $2 $3 clients=$4 (endpoints $endpoints)" >&2
  "$raftkit" --cluster "$endpoints" --output json bench --system "$1" --op "$3" --clients "$4" \
    --duration-s "$secs" --warmup-s 2 --key-size 16 --value-size 256 --key-space 100000 \
    --conns "$conns" | python3 -c 'import json,sys; r=json.load(sys.stdin); r["layout"]=sys.argv[1]; print(json.dumps(r))' "$2" >>"$rows"
}
for c in $clients; do
  for l in $layouts; do
    run etcd "$l" put "$c"
    run raftkit "$l" put "$c"
  done
  run raftkit all-members fetch-add "$c"
done

python3 - "$rows" "$out_dir/compare-etcd.json" "$out_dir/floor.json" "$out_dir/floor-idle-poll.json" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
json.dump(rows, open(sys.argv[2], "w"), indent=2)
def of(system, op, c):
    return [r for r in rows if r["system"] == system and r["op"] == op and r["clients"] == c]
def best(rs):
    return max(rs, key=lambda r: r["ops_per_sec"]) if rs else None
print()
print(f"{'clients':>7} {'system':>8} {'layout':>18} | {'put/s':>8} {'p50 ms':>7} {'p99 ms':>7} | {'vs etcd best: put/s':>19} {'p99':>6}")
headline = {}
for c in sorted({r["clients"] for r in rows}):
    e = best(of("etcd", "put", c))
    for system in ("etcd", "raftkit"):
        for r in sorted(of(system, "put", c), key=lambda r: r.get("layout", "")):
            vs = ""
            if e and system == "raftkit" and e["ops_per_sec"] and e["p99_ms"]:
                vs = f"{r['ops_per_sec'] / e['ops_per_sec']:>18.2f}x {r['p99_ms'] / e['p99_ms']:>5.2f}x"
            mark = " (etcd best)" if r is e else ""
            print(f"{c:>7} {system:>8} {r.get('layout', '?'):>18} | {r['ops_per_sec']:>8.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} | {vs}{mark}")
    f = of("raftkit", "fetch-add", c)
    if f:
        print(f"{c:>7} {'raftkit':>8} {'fetch-add':>18} | {f[0]['ops_per_sec']:>8.0f} {f[0]['p50_ms']:>7.2f} {f[0]['p99_ms']:>7.2f} |")
    k = best(of("raftkit", "put", c))
    if e and k:
        headline[c] = (k, e)
print()
for c, (k, e) in sorted(headline.items()):
    line = (f"{c} clients: RaftKit best ({k.get('layout')}) {k['ops_per_sec']:.0f} put/s, p99 {k['p99_ms']:.2f} ms; "
            f"etcd best ({e.get('layout')}) {e['ops_per_sec']:.0f} put/s, p99 {e['p99_ms']:.2f} ms: "
            f"put/s ratio {k['ops_per_sec'] / e['ops_per_sec']:.2f}, p99 ratio {k['p99_ms'] / e['p99_ms']:.2f}")
    if c == 64:
        line += " (targets: >= 3, <= 0.33)"
    print(line)
floor = json.load(open(sys.argv[3]))
k = best(of("raftkit", "put", 1))
if k:
    print(f"1 client: put p50 {k['p50_ms']:.3f} ms ({k.get('layout')}); floor {floor['floor_ms']:.3f} ms "
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
