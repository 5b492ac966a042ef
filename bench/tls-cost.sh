#!/usr/bin/env bash
# What mutual TLS costs (issue 21): KV put on a three-node group, plain and
# with --tls-cert/--tls-key/--tls-ca, at 1 and 64 clients, in alternating
# rounds (plain, TLS, plain, TLS, ...) so that drift on this machine hits
# both alike. Certificates are made with openssl (a CA, one per node with
# OU=raftkit-node and its address as SAN, a client one with
# OU=raftkit-client). Prints one JSON row per point and writes them to
# target/bench/tls-cost.json; then the median of each (mode, clients).
#
#   bench/tls-cost.sh
#   ROUNDS=3 BENCH_SECS=10 CLIENTS="1 64" bench/tls-cost.sh
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs="${BENCH_SECS:-10}"
rounds="${ROUNDS:-2}"
clients_list="${CLIENTS:-1 64}"
out_dir="$root/target/bench"
mkdir -p "$out_dir"
if [ -z "${RAFTKIT_BIN:-}" ]; then
  cargo build --release -q --bin raftkit --bin raftkit-node
  bin="$root/target/release"
else
  bin="$RAFTKIT_BIN"
fi
raftkit="$bin/raftkit"
node="$bin/raftkit-node"
command -v openssl >/dev/null || { echo "openssl is needed to make the certificates" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
stop_nodes() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() { stop_nodes; rm -rf "$work"; }
trap cleanup EXIT

# Certificates: EC P-256, as the operator issues them.
certs="$work/certs"
mkdir -p "$certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=raftkit bench CA" -keyout "$certs/ca.key" -out "$certs/ca.crt" 2>/dev/null
leaf() { # name ou san
  local ext="$certs/$1.ext"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' >"$ext"
  if [ -n "$3" ]; then echo "subjectAltName=$3" >>"$ext"; fi
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$1/OU=$2" -keyout "$certs/$1.key" -out "$certs/$1.csr" 2>/dev/null
  openssl x509 -req -in "$certs/$1.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" \
    -CAcreateserial -days 2 -extfile "$ext" -out "$certs/$1.crt" 2>/dev/null
}
leaf node raftkit-node "IP:127.0.0.1"
leaf app raftkit-client ""

wait_ready() { # addr
  for _ in $(seq 1 200); do
    if curl -sf "http://$1/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "node $1 did not become ready" >&2
  return 1
}

cluster="127.0.0.1:24810,127.0.0.1:24811,127.0.0.1:24812"
start_nodes() { # mode
  local tls=()
  if [ "$1" = tls ]; then
    tls=(--tls-cert "$certs/node.crt" --tls-key "$certs/node.key" --tls-ca "$certs/ca.crt")
  fi
  rm -rf "$work/data"
  for i in 0 1 2; do
    "$node" --listen "127.0.0.1:2481$i" --data-dir "$work/data/rk$i" --groups kv:kv \
      --initial-conf "$cluster" --sync true "${tls[@]}" >"$work/rk$i-$1.log" 2>&1 &
    pids+=($!)
  done
  # /readyz stays plain with TLS on (--tls-plain-probes).
  for i in 0 1 2; do wait_ready "127.0.0.1:2481$i"; done
}

rows="$out_dir/tls-cost.json"
: >"$rows"
for round in $(seq 1 "$rounds"); do
  for mode in plain tls; do
    start_nodes "$mode"
    client_tls=()
    if [ "$mode" = tls ]; then
      client_tls=(--tls-cert "$certs/app.crt" --tls-key "$certs/app.key" --tls-ca "$certs/ca.crt")
    fi
    for c in $clients_list; do
      echo "-- round $round $mode clients=$c" >&2
      "$raftkit" --cluster "$cluster" "${client_tls[@]}" --output json bench --op put \
        --clients "$c" --duration-s "$secs" --warmup-s 2 | python3 -c '
import json, sys
r = json.load(sys.stdin)
r["mode"], r["round"] = sys.argv[1], int(sys.argv[2])
print(json.dumps(r))' "$mode" "$round" | tee -a "$rows"
    done
    stop_nodes
  done
done

python3 - "$rows" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def pick(r, *names):
    for n in names:
        if n in r:
            return r[n]
    return float("nan")
print(f"{'mode':6} {'clients':>7} {'put/s':>9} {'p50 ms':>7} {'p99 ms':>7}  (medians of {len({r['round'] for r in rows})} rounds)")
for c in sorted({r["clients"] for r in rows}):
    base = None
    for mode in ("plain", "tls"):
        rs = [r for r in rows if r["mode"] == mode and r["clients"] == c]
        if not rs:
            continue
        ops = statistics.median(r["ops_per_sec"] for r in rs)
        p50 = statistics.median(pick(r, "p50_ms") for r in rs)
        p99 = statistics.median(pick(r, "p99_ms") for r in rs)
        ratio = "" if base is None else f"  {ops / base[0]:.2f}x put/s, {p50 / base[1]:.2f}x p50, {p99 / base[2]:.2f}x p99 of plain"
        if base is None:
            base = (ops, p50, p99)
        print(f"{mode:6} {c:>7} {ops:>9.0f} {p50:>7.2f} {p99:>7.2f}{ratio}")
EOF
