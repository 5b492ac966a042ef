#!/usr/bin/env python3
"""Median time of each step of a replicated write, from a stage trace.

Build and run a cluster with the trace on, drive it, then point this at the
nodes' stderr logs:

    cargo build --release --features stage-trace --bin raftkit-node
    RAFTKIT_STAGE_TRACE=1 target/release/raftkit-node ... 2>n0.log   # each node
    target/release/raftkit --cluster ... bench --op put --clients 1
    bench/stage-trace.py n0.log n1.log n2.log

The leader is the node that logged proposals. For each traced index the
follower whose answer left first is followed. See node/src/stage_trace.rs.
"""
import collections
import statistics
import sys

STEPS = [  # (node, stage) in the order a write passes them
    ("leader", "propose"),
    ("leader", "send.app"),
    ("leader", "netsend.app"),
    ("follower", "netrecv.app"),
    ("follower", "step.app"),
    ("follower", "persisted"),
    ("follower", "send.resp"),
    ("follower", "netsend.resp"),
    ("leader", "netrecv.resp"),
    ("leader", "step.resp"),
    ("leader", "commit"),
    ("leader", "apply.got"),
    ("leader", "apply.done"),
]


def read(path):
    """index -> stage -> earliest nanoseconds."""
    by_index = collections.defaultdict(dict)
    with open(path, errors="replace") as f:
        for line in f:
            if not line.startswith("STAGE "):
                continue
            parts = line.split()
            if len(parts) != 4:
                continue
            _, stage, index, ns = parts
            index, ns = int(index), int(ns)
            seen = by_index[index].get(stage)
            if seen is None or ns < seen:
                by_index[index][stage] = ns
    return by_index


def main(paths):
    if len(paths) < 2:
        sys.exit("usage: stage-trace.py LEADER_OR_ANY.log OTHER.log [...]")
    logs = {p: read(p) for p in paths}
    leader = max(logs, key=lambda p: sum("propose" in s for s in logs[p].values()))
    followers = [p for p in logs if p != leader]
    gaps = collections.defaultdict(list)
    totals = []
    own = []  # leader: proposal -> its own log write durable
    own_last = 0  # writes whose leader write finished after the first answer arrived
    for index, stages in logs[leader].items():
        if "propose" not in stages:
            continue
        answered = [logs[f][index] for f in followers if "netsend.resp" in logs[f].get(index, {})]
        if not answered:
            continue
        follower = min(answered, key=lambda s: s["netsend.resp"])
        times = [(stages if who == "leader" else follower).get(stage) for who, stage in STEPS]
        if None in times:
            continue
        for (_, stage), before, after in zip(STEPS[1:], times, times[1:]):
            gaps[stage].append((after - before) / 1e3)
        totals.append((times[-1] - times[0]) / 1e3)
        if "persisted" in stages:
            own.append((stages["persisted"] - stages["propose"]) / 1e3)
            own_last += stages["persisted"] > stages["netrecv.resp"]
    if not totals:
        sys.exit("no write passed every stage: was the trace on (RAFTKIT_STAGE_TRACE=1, --features stage-trace)?")
    print(f"{len(totals)} traced writes; leader {leader}")
    for who, stage in STEPS[1:]:
        v = sorted(gaps[stage])
        print(f"  -> {stage:<13} {who:<8} p50 {statistics.median(v):8.1f} us   p90 {v[int(len(v) * 0.9)]:8.1f} us")
    totals.sort()
    print(f"  proposal -> applied       p50 {statistics.median(totals):8.1f} us   p90 {totals[int(len(totals) * 0.9)]:8.1f} us")
    if own:
        print(f"  leader's own write durable p50 {statistics.median(own):7.1f} us after the proposal; "
              f"later than the first answer for {100 * own_last / len(own):.0f}% of writes")


if __name__ == "__main__":
    main(sys.argv[1:])
