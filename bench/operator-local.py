#!/usr/bin/env python3
"""The operator's figures, measured with `raftkit-operator local` (pods as
real raftkit-node processes on this machine) and a client writing all along
(`raftkit bench --op fetch-add`):

  1. time from `replicas: N` applied to Available (N = 3 and 5);
  2. a rolling restart of N pods (restartedAt annotation): its duration, the
     client's failed requests, and its longest write stall (the client's
     max latency), next to a quiet window of the same length just before
     (the baseline, same run);
  3. a scale-up step (pod serving -> voter caught up: from the AddLearner
     event to the Promote event) on a KV cluster after ~0 and after STATE_MB
     of 64 KiB puts (the new member receives that much log or snapshot).

Usage (release binaries are built first unless RAFTKIT_BIN is set):

  python3 bench/operator-local.py            # ROUNDS=3 STATE_MB=1024
  ROUNDS=1 STATE_MB=64 python3 bench/operator-local.py

Prints one JSON row per measurement and writes them to
target/bench/operator-local.json; the summary (medians over the rounds)
goes to stderr.
"""

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
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
STATE_MB = int(os.environ.get("STATE_MB", "1024"))
CLIENTS = int(os.environ.get("CLIENTS", "4"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def binaries():
    b = os.environ.get("RAFTKIT_BIN")
    if b:
        return b
    subprocess.run(
        ["cargo", "build", "--release", "-q", "--bin", "raftkit", "--bin",
         "raftkit-node", "--bin", "raftkit-operator"],
        cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release")


BIN = binaries()


def free_base(n):
    """A base port with n consecutive free ports below the ephemeral range."""
    import random
    while True:
        base = random.randrange(20000, 32000)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()


class Operator:
    def __init__(self, replicas, state_machine="counter"):
        self.dir = tempfile.mkdtemp(prefix="raftkit-opbench-")
        self.base = free_base(9)
        self.sm = state_machine
        self.write(replicas, None)
        self.out = open(os.path.join(self.dir, "operator.out"), "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "raftkit-operator"), "local", "--manifest",
             self.manifest(), "--work-dir", os.path.join(self.dir, "work"),
             "--base-port", str(self.base), "--node-binary",
             os.path.join(BIN, "raftkit-node"), "--interval-ms", "200"],
            stdout=self.out, stderr=subprocess.STDOUT)

    def manifest(self):
        return os.path.join(self.dir, "rc.yaml")

    def write(self, replicas, restarted_at):
        ann = ("  annotations:\n    raftkit.io/restartedAt: \"%s\"\n" % restarted_at
               if restarted_at else "")
        text = ("apiVersion: raftkit.io/v1alpha1\nkind: RaftCluster\nmetadata:\n"
                "  name: demo\n%sspec:\n  replicas: %d\n  stateMachine: %s\n"
                % (ann, replicas, self.sm))
        tmp = self.manifest() + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.manifest())

    def cluster(self, n):
        return ",".join("127.0.0.1:%d" % (self.base + i) for i in range(n))

    def status(self):
        try:
            with open(os.path.join(self.dir, "work", "status.yaml")) as f:
                text = f.read()
        except OSError:
            return {}
        s = {}
        for key in ("phase", "currentRevision", "updateRevision", "replicas",
                    "readyReplicas"):
            m = re.search(r"^  %s: '?([^'\n]*)'?$" % key, text, re.M)
            if m:
                s[key] = m.group(1)
        m = re.search(r"- type: Available\n    status: '?(\w+)'?", text)
        s["available"] = bool(m and m.group(1) == "True")
        return s

    def wait(self, what, cond, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if cond(s):
                return s
            time.sleep(0.05)
        raise SystemExit("%s: not within %ds; status %s; see %s" % (
            what, timeout, self.status(), self.dir))

    def running(self, n):
        return lambda s: (s.get("phase") == "Running" and s.get("replicas") == str(n)
                          and s.get("readyReplicas") == str(n)
                          and s.get("currentRevision") == s.get("updateRevision"))

    def events(self):
        try:
            with open(os.path.join(self.dir, "work", "events.log")) as f:
                return f.read().splitlines()
        except OSError:
            return []

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench(cluster, group, op, secs, extra=()):
    """Starts `raftkit bench`; returns the process (JSON on its stdout)."""
    return subprocess.Popen(
        [os.path.join(BIN, "raftkit"), "--cluster", cluster, "--group", group,
         "--output", "json", "bench", "--op", op, "--clients", str(CLIENTS),
         "--duration-s", str(secs), "--warmup-s", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def result(p):
    out, _ = p.communicate()
    return json.loads(out)


ROWS = []


def row(**r):
    ROWS.append(r)
    print(json.dumps(r), flush=True)


def event_time(line):
    return datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def roll_round(n, rnd):
    op = Operator(n)
    try:
        s = op.wait("Available", lambda s: op.running(n)(s) and s["available"])
        created = time.monotonic() - op.started
        row(measure="create_to_available_s", replicas=n, round=rnd,
            value=round(created, 2))
        cluster = op.cluster(n)
        # Baseline: a quiet window as long as a roll (measured below; 20 s
        # covers a roll of 5 here).
        window = 10 + 3 * n
        base = result(bench(cluster, "counter", "fetch-add", window))
        # The roll, with the client writing through it.
        old = s.get("updateRevision")
        load = bench(cluster, "counter", "fetch-add", window + 20)
        time.sleep(2)
        t0 = time.monotonic()
        op.write(n, "roll-%d" % rnd)
        op.wait("the roll", lambda s: op.running(n)(s) and s.get("updateRevision") != old)
        took = time.monotonic() - t0
        during = result(load)
        row(measure="rolling_restart", replicas=n, round=rnd, duration_s=round(took, 2),
            failed_requests=during["errors"], max_latency_ms=round(during["max_ms"], 1),
            p99_ms=round(during["p99_ms"], 2), baseline_max_latency_ms=round(base["max_ms"], 1),
            baseline_p99_ms=round(base["p99_ms"], 2), baseline_errors=base["errors"])
    finally:
        op.stop()


def scale_step(op, n):
    """Raises replicas to n; returns seconds from AddLearner to Promote of the new pod."""
    pod = "demo-%d" % (n - 1)
    op.write(n, None)
    op.wait("scale to %d" % n, op.running(n), timeout=1800)
    ev = op.events()
    add = [event_time(e) for e in ev if " AddLearner " in e and pod in e]
    prom = [event_time(e) for e in ev if " Promote " in e and pod in e]
    return prom[-1] - add[-1]


def scale_round(rnd):
    op = Operator(3, "kv")
    try:
        op.wait("Available", lambda s: op.running(3)(s) and s["available"])
        empty = scale_step(op, 4)
        row(measure="scale_up_step_s", state_mb=0, round=rnd, value=round(empty, 2))
        # Fill: STATE_MB of 64 KiB puts (random keys over as many keys as
        # puts, so about 63% of them distinct), at 400 puts/s (25 MB/s).
        puts = max(1, STATE_MB * 16)
        secs = max(1, -(-puts // 400))
        r = result(bench(op.cluster(4), "kv", "put", secs,
                         ("--value-size", "65536", "--key-space", str(puts),
                          "--rate", "400")))
        log("  wrote %d puts of 64 KiB (%d MB) in %d s, %d errors" % (
            r["ops"], r["ops"] // 16, secs, r["errors"]))
        full = scale_step(op, 5)
        row(measure="scale_up_step_s", state_mb=STATE_MB, round=rnd, value=round(full, 2))
    finally:
        op.stop()


def main():
    out_dir = os.path.join(ROOT, "target", "bench")
    os.makedirs(out_dir, exist_ok=True)
    for rnd in range(1, ROUNDS + 1):
        for n in (3, 5):
            log("-- round %d: create and roll %d" % (rnd, n))
            roll_round(n, rnd)
    for rnd in range(1, max(1, ROUNDS // 3) + 1):
        log("-- round %d: scale-up steps (0 and %d MB)" % (rnd, STATE_MB))
        scale_round(rnd)
    with open(os.path.join(out_dir, "operator-local.json"), "w") as f:
        for r in ROWS:
            f.write(json.dumps(r) + "\n")
    log("== medians over %d rounds" % ROUNDS)
    for n in (3, 5):
        c = [r["value"] for r in ROWS if r["measure"] == "create_to_available_s" and r["replicas"] == n]
        rr = [r for r in ROWS if r["measure"] == "rolling_restart" and r["replicas"] == n]
        log("replicas %d: create -> Available %.2f s" % (n, statistics.median(c)))
        log("  rolling restart %.2f s, failed requests %s, max latency %.0f ms (baseline %.0f ms), p99 %.1f ms (baseline %.1f ms)" % (
            statistics.median(r["duration_s"] for r in rr),
            [r["failed_requests"] for r in rr],
            statistics.median(r["max_latency_ms"] for r in rr),
            statistics.median(r["baseline_max_latency_ms"] for r in rr),
            statistics.median(r["p99_ms"] for r in rr),
            statistics.median(r["baseline_p99_ms"] for r in rr)))
    for mb in (0, STATE_MB):
        v = [r["value"] for r in ROWS if r["measure"] == "scale_up_step_s" and r["state_mb"] == mb]
        log("scale-up step at %d MB: %s s" % (mb, v))


if __name__ == "__main__":
    main()
