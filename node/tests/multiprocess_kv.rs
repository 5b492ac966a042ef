//! KV under faults, checked for linearizability (testing.md): clients put,
//! get (linearizable and follower reads), compare-and-swap and delete on a
//! few keys of three real `raftkit-node` processes while the leader is
//! SIGKILLed and restarted, then SIGSTOPped past the election timeout and
//! resumed, then cut off from the other members (clients can still reach it)
//! and reconnected (both ways, then one way), leadership is transferred
//! four times, and finally all members are killed at once and restarted. Every operation is recorded with its invocation and completion
//! time (unknown outcomes complete at +infinity), and each key's history
//! must be linearizable. Afterwards the replicas must hold equal state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::linearizability::{check_register, CasOutcome, Event, RegOp, Val};
use common::procs::{raft_stat, start_cluster, wait_http_ok, ProcCluster};
use nix::sys::signal::{kill, Signal};
use raftkit_client::ClusterClient;
use raftkit_node::pb::ReadConsistency;

// ------------------------------------------------------------ the checker

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn ev(t0: Instant, from: u64, to: Option<u64>, op: RegOp) -> Event {
    Event {
        invoked: at(t0, from),
        completed: to.map(|t| at(t0, t)),
        op,
    }
}

fn put(value: u64, prev: Val) -> RegOp {
    RegOp::Put {
        value,
        prev: Some(prev),
    }
}

fn get(value: Val) -> RegOp {
    RegOp::Get { value }
}

#[test]
fn checker_accepts_sequential_and_concurrent_histories() {
    let t = Instant::now();
    let sequential = [
        ev(t, 0, Some(1), get(None)),
        ev(t, 2, Some(3), put(1, None)),
        ev(t, 4, Some(5), get(Some(1))),
        ev(
            t,
            6,
            Some(7),
            RegOp::Delete {
                existed: Some(true),
            },
        ),
        ev(t, 8, Some(9), get(None)),
        ev(
            t,
            10,
            Some(11),
            RegOp::Cas {
                expected: None,
                value: 2,
                outcome: Some(CasOutcome::Swapped),
            },
        ),
        ev(
            t,
            12,
            Some(13),
            RegOp::Cas {
                expected: None,
                value: 3,
                outcome: Some(CasOutcome::Failed(Some(2))),
            },
        ),
    ];
    assert_eq!(check_register(&sequential), Ok(()));
    // A read overlapping a put may see the value before or after it.
    for seen in [None, Some(1)] {
        let h = [
            ev(t, 0, Some(10), put(1, None)),
            ev(t, 2, Some(5), get(seen)),
        ];
        assert_eq!(check_register(&h), Ok(()), "read saw {seen:?}");
    }
    // Two overlapping puts, each answered with the other's value or nothing:
    // the answers fix the order (2 then 1).
    let h = [
        ev(t, 0, Some(10), put(1, Some(2))),
        ev(t, 1, Some(9), put(2, None)),
        ev(t, 11, Some(12), get(Some(1))),
    ];
    assert_eq!(check_register(&h), Ok(()));
    // A put whose outcome is unknown may take effect late, or never, even
    // within a bound.
    for seen in [None, Some(7)] {
        for bound in [None, Some(100)] {
            let h = [
                ev(
                    t,
                    0,
                    bound,
                    RegOp::Put {
                        value: 7,
                        prev: None,
                    },
                ),
                ev(t, 50, Some(60), get(seen)),
                ev(t, 150, Some(160), get(seen)),
            ];
            assert_eq!(check_register(&h), Ok(()), "read saw {seen:?}");
        }
    }
    // The session bound: an unknown write ends at the worker's next
    // acknowledged write; reads in between do not bound it.
    let mut ops = vec![
        (
            0,
            ev(
                t,
                0,
                None,
                RegOp::Put {
                    value: 1,
                    prev: None,
                },
            ),
        ),
        (1, ev(t, 5, Some(6), get(None))),
        (2, ev(t, 7, None, RegOp::Delete { existed: None })),
        (0, ev(t, 8, Some(9), put(2, None))),
        (
            3,
            ev(
                t,
                10,
                None,
                RegOp::Put {
                    value: 3,
                    prev: None,
                },
            ),
        ),
    ];
    bound_unknown_writes(&mut ops);
    let ends: Vec<Option<Instant>> = ops.iter().map(|(_, e)| e.completed).collect();
    assert_eq!(
        ends,
        vec![
            Some(at(t, 9)),
            Some(at(t, 6)),
            Some(at(t, 9)),
            Some(at(t, 9)),
            None
        ]
    );
}

#[test]
fn checker_rejects_stale_reads_lost_writes_and_impossible_answers() {
    let t = Instant::now();
    // A read that began after a put was acknowledged misses it.
    let stale = [
        ev(t, 0, Some(1), put(1, None)),
        ev(t, 2, Some(3), get(None)),
    ];
    assert!(check_register(&stale).is_err());
    // A value that comes back after being overwritten.
    let flicker = [
        ev(t, 0, Some(1), put(1, None)),
        ev(t, 2, Some(3), put(2, Some(1))),
        ev(t, 4, Some(5), get(Some(2))),
        ev(t, 6, Some(7), get(Some(1))),
    ];
    assert!(check_register(&flicker).is_err());
    // Both puts claim to have found the key absent, one after the other.
    let lost = [
        ev(t, 0, Some(1), put(1, None)),
        ev(t, 2, Some(3), put(2, None)),
    ];
    assert!(check_register(&lost).is_err());
    // An unknown put seen, then unseen without any other write.
    let unknown = [
        ev(
            t,
            0,
            None,
            RegOp::Put {
                value: 7,
                prev: None,
            },
        ),
        ev(t, 10, Some(11), get(Some(7))),
        ev(t, 12, Some(13), get(None)),
    ];
    assert!(check_register(&unknown).is_err());
    // An unknown put bounded at 10 ms (its session moved on) cannot appear
    // after a read at 20 ms missed it; unbounded it could.
    let late = |bound: Option<u64>| {
        [
            ev(
                t,
                0,
                bound,
                RegOp::Put {
                    value: 7,
                    prev: None,
                },
            ),
            ev(t, 20, Some(21), get(None)),
            ev(t, 30, Some(31), get(Some(7))),
        ]
    };
    assert!(check_register(&late(Some(10))).is_err());
    assert_eq!(check_register(&late(None)), Ok(()));
    // A compare-and-swap that claims success against another value.
    let cas = [
        ev(t, 0, Some(1), put(1, None)),
        ev(
            t,
            2,
            Some(3),
            RegOp::Cas {
                expected: None,
                value: 2,
                outcome: Some(CasOutcome::Swapped),
            },
        ),
    ];
    assert!(check_register(&cas).is_err());
    // A delete that found nothing where a value was.
    let delete = [
        ev(t, 0, Some(1), put(1, None)),
        ev(
            t,
            2,
            Some(3),
            RegOp::Delete {
                existed: Some(false),
            },
        ),
    ];
    assert!(check_register(&delete).is_err());
}

/// A history produced by a real register with random overlaps is accepted,
/// and the same history with one read's answer changed is not.
#[test]
fn checker_on_a_generated_history() {
    let t = Instant::now();
    let mut rng = Rng(42);
    // Each op takes effect at a point strictly inside its interval.
    let mut state: Val = None;
    let mut history = Vec::new();
    let mut clock = 10u64;
    for id in 1..=400u64 {
        clock += rng.below(3);
        let point = clock * 10 + 5;
        let op = match rng.below(3) {
            0 => {
                let prev = state;
                state = Some(id);
                put(id, prev)
            }
            1 => get(state),
            _ => {
                let existed = state.is_some();
                state = None;
                RegOp::Delete {
                    existed: Some(existed),
                }
            }
        };
        let (before, after) = (1 + rng.below(40), 1 + rng.below(40));
        history.push(ev(t, point - before, Some(point + after), op));
    }
    assert_eq!(check_register(&history), Ok(()));
    let read = history
        .iter()
        .rposition(|e| matches!(e.op, RegOp::Get { .. }))
        .unwrap();
    history[read].op = get(Some(1_000_000));
    assert!(check_register(&history).is_err());
}

/// splitmix64: a small, seedable generator (the seed is printed, so a run
/// can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ------------------------------------------------------------ the cluster

const KEYS: usize = 4;
const WORKERS: u64 = 6;

fn value_bytes(id: u64) -> Bytes {
    Bytes::from(id.to_string())
}

fn parse(v: Option<Bytes>) -> Val {
    v.map(|b| {
        std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a value this test never wrote: {b:?}"))
    })
}

/// Runs operations on random keys until `stop`; returns them in order, each
/// with its key.
async fn worker(
    w: u64,
    seed: u64,
    client: Arc<ClusterClient>,
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> (Vec<(usize, Event)>, Vec<String>) {
    let mut history = Vec::new();
    let mut unknown_errors = Vec::new();
    let mut rng = Rng(seed ^ (w << 48));
    let mut seq = 0u64;
    let mut last_seen: Vec<Val> = vec![None; KEYS];
    while !stop.load(Ordering::Relaxed) {
        let k = rng.below(KEYS as u64) as usize;
        let key = Bytes::from(format!("key-{k}"));
        seq += 1;
        let id = (w << 32) | seq;
        let invoked = Instant::now();
        // Reads that fail are left out (they change nothing); writes that
        // fail in a way that proves they were not applied too; other failed
        // writes stay in with an unknown outcome.
        let recorded: Option<(Option<Instant>, RegOp)> = match rng.below(20) {
            0..=6 => match client.put(key, value_bytes(id)).await {
                Ok(prev) => {
                    last_seen[k] = Some(id);
                    Some((
                        Some(Instant::now()),
                        RegOp::Put {
                            value: id,
                            prev: Some(parse(prev)),
                        },
                    ))
                }
                Err(e) if e.is_definitely_not_applied() => None,
                Err(e) => Some((
                    note(&mut unknown_errors, e),
                    RegOp::Put {
                        value: id,
                        prev: None,
                    },
                )),
            },
            7..=13 => {
                let mode = if rng.below(2) == 0 {
                    ReadConsistency::Linearizable
                } else {
                    ReadConsistency::Follower
                };
                match client.get_with(key, mode).await {
                    Ok(v) => {
                        let value = parse(v);
                        last_seen[k] = value;
                        Some((Some(Instant::now()), RegOp::Get { value }))
                    }
                    Err(_) => None,
                }
            }
            14..=17 => {
                let expected = last_seen[k];
                match client
                    .cas(key, expected.map(value_bytes), value_bytes(id))
                    .await
                {
                    Ok((swapped, current)) => {
                        let outcome = if swapped {
                            last_seen[k] = Some(id);
                            CasOutcome::Swapped
                        } else {
                            let found = parse(current);
                            last_seen[k] = found;
                            CasOutcome::Failed(found)
                        };
                        Some((
                            Some(Instant::now()),
                            RegOp::Cas {
                                expected,
                                value: id,
                                outcome: Some(outcome),
                            },
                        ))
                    }
                    Err(e) if e.is_definitely_not_applied() => None,
                    Err(e) => Some((
                        note(&mut unknown_errors, e),
                        RegOp::Cas {
                            expected,
                            value: id,
                            outcome: None,
                        },
                    )),
                }
            }
            _ => match client.delete(key).await {
                Ok(existed) => {
                    last_seen[k] = None;
                    Some((
                        Some(Instant::now()),
                        RegOp::Delete {
                            existed: Some(existed),
                        },
                    ))
                }
                Err(e) if e.is_definitely_not_applied() => None,
                Err(e) => Some((
                    note(&mut unknown_errors, e),
                    RegOp::Delete { existed: None },
                )),
            },
        };
        if let Some((completed, op)) = recorded {
            history.push((
                k,
                Event {
                    invoked,
                    completed,
                    op,
                },
            ));
            if completed.is_some() {
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    (history, unknown_errors)
}

/// Keeps the error of a write with unknown outcome (digits dropped, so equal
/// causes count together) and returns its time: none.
fn note(errors: &mut Vec<String>, e: raftkit_client::ClientError) -> Option<Instant> {
    errors.push(e.to_string().replace(|c: char| c.is_ascii_digit(), ""));
    None
}

fn is_write(op: &RegOp) -> bool {
    !matches!(op, RegOp::Get { .. })
}

/// Bounds each write of unknown outcome by the session that sent it: all of
/// one worker's writes go through one client session, and once a later
/// write of the session was applied the state machine refuses an older one
/// as stale. So an unknown write took effect before the completion of the
/// worker's next acknowledged write, or never. (Without this bound every
/// unknown write overlaps everything after it and the search explodes.)
fn bound_unknown_writes(ops: &mut [(usize, Event)]) {
    let mut next_ack: Option<Instant> = None;
    for (_, e) in ops.iter_mut().rev() {
        if !is_write(&e.op) {
            continue;
        }
        match e.completed {
            Some(t) => next_ack = Some(t),
            None => e.completed = next_ack,
        }
    }
}

async fn leader(c: &ProcCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, a) in c.addrs.iter().enumerate() {
            if !c.procs[i].is_running() {
                continue;
            }
            if let Some(v) = raft_stat(a).await {
                if v.as_array()
                    .into_iter()
                    .flatten()
                    .any(|g| g["group"] == "kv" && g["role"] == "leader")
                {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no kv leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cuts `node` off from `peers` in `direction` (both, out, in; no peers:
/// heals), through the fault-injection endpoint.
async fn partition(node: &str, peers: &[String], direction: &str) {
    let path = format!(
        "/debug/partition?peers={}&direction={direction}",
        peers.join(",")
    );
    let (code, body) = raftkit_client::probe::request(node, "POST", &path)
        .await
        .unwrap();
    assert_eq!(code, 200, "{path} on {node}: {body}");
    let (_, now) = raftkit_client::probe::probe(node, "/debug/partition")
        .await
        .unwrap();
    let mut sorted = peers.to_vec();
    sorted.sort();
    let sorted = sorted.join(",");
    let (out, into) = match direction {
        "out" => (sorted.as_str(), ""),
        "in" => ("", sorted.as_str()),
        _ => (sorted.as_str(), sorted.as_str()),
    };
    assert_eq!(now, format!("out={out}\nin={into}\n"));
}

async fn wait_for_ops(done: &AtomicUsize, more: usize, what: &str) {
    let target = done.load(Ordering::Relaxed) + more;
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "no progress {what}: {} of {target} operations completed",
            done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_stays_linearizable_when_the_leader_is_killed_paused_and_cut_off() {
    kv_under_faults("read-index").await;
}

/// The same with lease reads, which answer from the leader without a round
/// of heartbeats: the lease must end before another member can lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_stay_linearizable_when_the_leader_is_killed_paused_and_cut_off() {
    kv_under_faults("lease").await;
}

async fn kv_under_faults(read_mode: &str) {
    let seed = std::env::var("RAFTKIT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("read mode {read_mode}, seed {seed} (replay with RAFTKIT_TEST_SEED={seed})");
    let election_ms = 500u64;
    // Frequent snapshots, so the killed node may catch up from one and
    // compaction runs under the load.
    let mut c = start_cluster(
        3,
        &[
            "--groups",
            "kv:kv",
            "--election-timeout-ms",
            &election_ms.to_string(),
            "--snapshot-log-gap",
            "300",
            "--read-mode",
            read_mode,
        ],
        &[("RAFTKIT_FAULT_INJECTION", "1")],
    )
    .await;
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    // Workers 0 and 1 share a client that gives up quickly, so their
    // session has two writes in flight at once, and some of its writes end
    // with an unknown outcome when a fault hits them (a later write then
    // tells the cluster it may forget them). The others have a client, a
    // session and a route table each.
    let quick = Arc::new(
        ClusterClient::new(c.addrs.clone(), "kv", Duration::from_millis(400))
            .unwrap()
            .with_attempt_timeout(Duration::from_millis(200)),
    );
    for w in 0..WORKERS {
        let client = if w < 2 {
            quick.clone()
        } else {
            Arc::new(ClusterClient::new(c.addrs.clone(), "kv", Duration::from_secs(5)).unwrap())
        };
        workers.push(tokio::spawn(worker(
            w + 1,
            seed,
            client,
            done.clone(),
            stop.clone(),
        )));
    }

    wait_for_ops(&done, 150, "before any fault").await;
    let l = leader(&c).await;
    c.procs[l].kill9();
    wait_for_ops(&done, 150, "after killing the leader").await;
    c.procs[l].restart();
    assert!(
        wait_http_ok(&c.procs[l].addr, "/readyz", Duration::from_secs(30)).await,
        "restarted node not ready:\n{}",
        c.procs[l].log_tail(20)
    );
    wait_for_ops(&done, 150, "after the restart").await;

    // A leader paused past the election timeout wakes up believing it still
    // leads: it must not answer a read or a write from its old view.
    let l = leader(&c).await;
    let pid = c.procs[l].pid().unwrap();
    kill(pid, Signal::SIGSTOP).unwrap();
    let paused = Instant::now();
    let progress = wait_for_ops(&done, 100, "while the old leader is paused");
    let progressed = tokio::time::timeout(Duration::from_secs(30), progress).await;
    eprintln!(
        "100 operations completed {:?} after the leader was paused",
        paused.elapsed()
    );
    // Keep it stopped at least three election timeouts, so a new leader
    // was elected and wrote before the old one resumes.
    let min_pause = Duration::from_millis(3 * election_ms);
    tokio::time::sleep(min_pause.saturating_sub(paused.elapsed())).await;
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(
        progressed.is_ok(),
        "no progress while the old leader was paused"
    );
    wait_for_ops(&done, 150, "after the old leader resumed").await;

    let l = leader(&c).await;
    let (code, body) =
        raftkit_client::probe::request(&c.addrs[l], "POST", "/debug/partition?peers=nonsense")
            .await
            .unwrap();
    assert_eq!(code, 400, "a bad peer address is refused: {body}");
    let bad_direction = format!("/debug/partition?peers={}&direction=sideways", c.addrs[0]);
    let (code, body) = raftkit_client::probe::request(&c.addrs[l], "POST", &bad_direction)
        .await
        .unwrap();
    assert_eq!(code, 400, "an unknown direction is refused: {body}");
    assert!(body.contains("sideways"), "{body}");
    // The leader loses the other members but not its clients: it must not
    // answer from its old view while the others elect a new leader. Then
    // one way only: the leader still sends (its heartbeats keep the others
    // from electing anyone) but hears nothing back, so it must notice and
    // step down (check-quorum) for the cluster to go on.
    for direction in ["both", "in"] {
        let l = leader(&c).await;
        let others: Vec<String> = (0..c.addrs.len())
            .filter(|i| *i != l)
            .map(|i| c.addrs[i].clone())
            .collect();
        partition(&c.addrs[l], &others, direction).await;
        let isolated = Instant::now();
        let what = format!("while the leader is cut off ({direction})");
        let progressed =
            tokio::time::timeout(Duration::from_secs(30), wait_for_ops(&done, 100, &what)).await;
        eprintln!(
            "100 operations completed {:?} after the leader was cut off ({direction})",
            isolated.elapsed()
        );
        tokio::time::sleep(min_pause.saturating_sub(isolated.elapsed())).await;
        // The cut is real: the others elected a leader among themselves.
        let mut new_leader = None;
        for a in &others {
            if let Some(v) = raft_stat(a).await {
                if v[0]["role"] == "leader" {
                    new_leader = Some(a.clone());
                }
            }
        }
        partition(&c.addrs[l], &[], "both").await;
        assert!(
            new_leader.is_some(),
            "no new leader among {others:?} while {} was cut off ({direction})",
            c.addrs[l]
        );
        assert!(progressed.is_ok(), "no progress {what}");
        wait_for_ops(&done, 150, "after the partition healed").await;
    }

    // Leadership handed around under load, several times in a row: a
    // transfer lets its target campaign at once, so the old leader's lease
    // must already be gone.
    let admin = ClusterClient::new(c.addrs.clone(), "kv", Duration::from_secs(10)).unwrap();
    for round in 0..4 {
        let before = leader(&c).await;
        match admin.transfer_leader("any").await {
            Ok(m) => assert_ne!(m.addr, c.addrs[before], "transfer round {round}"),
            Err(e) => panic!("transfer round {round} failed: {e}"),
        }
        wait_for_ops(&done, 50, "after a leadership transfer").await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut histories: Vec<Vec<Event>> = vec![Vec::new(); KEYS];
    let mut unknown = 0;
    let mut causes = std::collections::BTreeMap::new();
    for w in workers {
        let (mut ops, errors) = w.await.unwrap();
        for e in errors {
            *causes.entry(e).or_insert(0usize) += 1;
        }
        unknown += ops.iter().filter(|(_, e)| e.completed.is_none()).count();
        bound_unknown_writes(&mut ops);
        for (k, e) in ops {
            histories[k].push(e);
        }
    }

    // Lease reads happened in lease mode (so the check below covers them),
    // and only there. Counters restart with a process: the killed node's
    // early ones are lost, which only lowers the sum.
    let mut lease_reads = 0;
    for a in &c.addrs {
        let (_, body) = raftkit_client::probe::probe(a, "/metrics").await.unwrap();
        lease_reads += body
            .lines()
            .find_map(|l| l.strip_prefix("raftkit_lease_reads_total{group=\"kv\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("raftkit_lease_reads_total in /metrics");
    }
    assert_eq!(
        lease_reads > 0,
        read_mode == "lease",
        "{lease_reads} lease reads"
    );

    // Power loss: every member killed at once, then restarted. Each key is
    // read afterwards; those reads join the histories, so a write that was
    // acknowledged (fsynced on a majority) and then lost fails the check.
    for p in c.procs.iter_mut() {
        p.kill9();
    }
    for p in c.procs.iter_mut() {
        p.restart();
    }
    for p in &c.procs {
        assert!(
            wait_http_ok(&p.addr, "/readyz", Duration::from_secs(30)).await,
            "{} not ready after the restart:\n{}",
            p.addr,
            p.log_tail(20)
        );
    }
    let reader = ClusterClient::new(c.addrs.clone(), "kv", Duration::from_secs(10)).unwrap();
    for (k, h) in histories.iter_mut().enumerate() {
        let invoked = Instant::now();
        let value = reader
            .get(Bytes::from(format!("key-{k}")))
            .await
            .expect("a read after the whole cluster restarted");
        h.push(Event {
            invoked,
            completed: Some(Instant::now()),
            op: RegOp::Get {
                value: parse(value),
            },
        });
    }
    let mut total = 0;
    for (k, h) in histories.iter().enumerate() {
        total += h.len();
        if let Err(e) = check_register(h) {
            panic!("key-{k} ({read_mode}, seed {seed}): {e}");
        }
    }
    eprintln!(
        "{total} operations on {KEYS} keys ({lease_reads} reads under a lease), {unknown} with unknown outcome ({causes:?}): linearizable"
    );
    let client = ClusterClient::new(c.addrs.clone(), "kv", Duration::from_secs(5)).unwrap();
    common::assert_replicas_agree(&client, &c.addrs, Duration::from_secs(20)).await;
    c.stop_all();
}
