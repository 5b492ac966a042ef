//! Three real `raftkit-node` processes on 127.0.0.1: concurrent fetch_adds,
//! SIGKILL the leader mid-load, restart it, it catches up, and the final
//! counter equals the acknowledged increments plus at most the ones whose
//! outcome is unknown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::procs::{start_cluster, wait_http_ok, Proc, ProcCluster};
use nix::sys::signal::Signal;
use raftkit_client::ClusterClient;

#[derive(Default)]
struct History {
    /// Previous values returned by acknowledged fetch_add(1)s.
    acked: Vec<i64>,
    /// (invoked, completed, previous value) of each acknowledged increment.
    timed: Vec<(Instant, Instant, i64)>,
    /// Calls whose outcome is unknown (may or may not have been applied).
    unknown: u64,
    /// Calls certainly not applied.
    rejected: u64,
}

#[test]
fn counter_real_time_check_catches_a_stale_answer() {
    let t = Instant::now();
    let at = |ms| t + Duration::from_millis(ms);
    let good = [(at(0), at(10), 0), (at(20), at(30), 1), (at(25), at(40), 2)];
    assert_eq!(common::counter_real_time_violation(&good), None);
    // Overlapping increments may be ordered either way.
    let overlapping = [(at(0), at(30), 1), (at(10), at(20), 0)];
    assert_eq!(common::counter_real_time_violation(&overlapping), None);
    // The second began after the first was acknowledged but was ordered before it.
    let stale = [(at(0), at(10), 5), (at(20), at(30), 4)];
    assert!(common::counter_real_time_violation(&stale).is_some());
}

async fn leader_of(client: &ClusterClient) -> Option<String> {
    for addr in client.addrs() {
        if let Ok(gs) = client.member_status(&addr).await {
            if let Some(g) = gs.first() {
                if g.role == "leader" {
                    return Some(addr.clone());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_leader_under_load_loses_no_acknowledged_increment() {
    let mut cluster = start_cluster(3, &["--election-timeout-ms", "500"], &[]).await;
    let addrs = cluster.addrs.clone();
    let procs = &mut cluster.procs;
    let client =
        Arc::new(ClusterClient::new(addrs.clone(), "counter", Duration::from_secs(5)).unwrap());
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = start_increments(&client, 8, &history, &stop);

    wait_for_acks(&history, 200, "before the kill").await;
    let leader = leader_of(&client).await.expect("a leader");
    let victim = procs.iter().position(|p| p.addr == leader).unwrap();
    procs[victim].kill9();
    // Load continues on the survivors once they elect a new leader.
    wait_for_acks(&history, 200, "after killing the leader").await;
    procs[victim].restart();
    assert!(
        wait_http_ok(&procs[victim].addr, "/readyz", Duration::from_secs(30)).await,
        "restarted node not ready:\n{}",
        procs[victim].log_tail(20)
    );
    wait_for_acks(&history, 100, "after the restart").await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    check_increments(&client, &history).await;

    // The restarted node caught up: every member applies the same index,
    // with the same state there.
    common::assert_replicas_agree(&client, &addrs, Duration::from_secs(20)).await;

    // SIGTERM stops a node cleanly.
    for p in procs.iter_mut() {
        let status = p.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not exit cleanly on SIGTERM: {status:?}\n{}",
            p.addr,
            p.log_tail(20)
        );
    }
}

/// Starts `n` workers doing fetch_add(1) until `stop`, recording `history`.
fn start_increments(
    client: &Arc<ClusterClient>,
    n: usize,
    history: &Arc<Mutex<History>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (client, history, stop) = (client.clone(), history.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let invoked = Instant::now();
                    match client.fetch_add(1).await {
                        Ok(prev) => {
                            let mut h = history.lock().unwrap();
                            h.acked.push(prev);
                            h.timed.push((invoked, Instant::now(), prev));
                        }
                        Err(e) if e.is_definitely_not_applied() => {
                            history.lock().unwrap().rejected += 1
                        }
                        Err(_) => history.lock().unwrap().unknown += 1,
                    }
                }
            })
        })
        .collect()
}

async fn wait_for_acks(history: &Arc<Mutex<History>>, more: usize, what: &str) {
    let target = history.lock().unwrap().acked.len() + more;
    let deadline = Instant::now() + Duration::from_secs(30);
    while history.lock().unwrap().acked.len() < target {
        assert!(Instant::now() < deadline, "no progress {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The counter checks (testing.md) on the increments recorded in
/// `history`, against a final linearizable read: every acknowledged
/// fetch_add(1) saw a distinct previous value below the final one, in
/// real-time order, and the final value lies between the acknowledged and
/// the attempted totals.
async fn check_increments(client: &ClusterClient, history: &Arc<Mutex<History>>) {
    let final_value = client.counter_get().await.expect("final read");
    let h = std::mem::take(&mut *history.lock().unwrap());
    let acked = h.acked.len() as i64;
    let distinct: HashSet<i64> = h.acked.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        h.acked.len(),
        "two increments returned the same previous value"
    );
    assert!(
        h.acked.iter().all(|p| *p < final_value),
        "an acknowledged increment is missing from the final value"
    );
    if let Some(v) = common::counter_real_time_violation(&h.timed) {
        panic!("not linearizable: {v}");
    }
    assert!(
        final_value >= acked && final_value <= acked + h.unknown as i64,
        "final counter {final_value} outside [{acked}, {}] (unknown outcomes: {})",
        acked + h.unknown as i64,
        h.unknown
    );
    eprintln!(
        "acked {acked}, unknown {}, rejected {}, final {final_value}",
        h.unknown, h.rejected
    );
}

/// testing.md: fsync EIO. A member whose log fsync fails must stop (never
/// acknowledge what it could not make durable, never carry on as if the
/// write were there: after a failed fsync the kernel may already have
/// dropped the dirty pages), report it on /healthz, and leave the others
/// serving. Restarted with a working disk, it catches up; no acknowledged
/// increment is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_member_and_loses_no_acknowledged_increment() {
    let mut cluster = start_cluster(3, &["--election-timeout-ms", "500"], &[]).await;
    let addrs = cluster.addrs.clone();
    let client =
        Arc::new(ClusterClient::new(addrs.clone(), "counter", Duration::from_secs(5)).unwrap());
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = start_increments(&client, 6, &history, &stop);
    wait_for_acks(&history, 200, "before the fault").await;

    // The leader's disk starts failing fsyncs: restart it with the failpoint.
    let leader = leader_of(&client).await.expect("a leader");
    let victim = cluster.procs.iter().position(|p| p.addr == leader).unwrap();
    let p = &mut cluster.procs[victim];
    p.kill9();
    p.env = vec![("RAFTKIT_FAILPOINTS".into(), "log_sync=error(0.02)".into())];
    p.restart();
    // Its group stops on the first failed fsync, and says so.
    wait_until_stopped_by_its_disk(p).await;
    // The others go on without it.
    wait_for_acks(&history, 200, "with one member stopped by its disk").await;

    // A working disk again: it recovers from what its log holds and catches up.
    cluster.procs[victim].env.clear();
    restart_and_check(&mut cluster, victim, &client, &history, &stop, workers).await;
}

/// Waits until `p` reports on /healthz that its disk stopped a group.
async fn wait_until_stopped_by_its_disk(p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = raftkit_client::probe::probe(&p.addr, "/healthz")
            .await
            .unwrap_or((0, String::new()));
        if code == 500 {
            assert!(body.contains("fsync"), "{body}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the member with a failing disk still reports healthy:\n{}",
            p.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Restarts member `victim` (SIGKILL first), waits until it is ready and
/// more increments are acknowledged, stops the workers, and runs the
/// counter checks and the replica comparison.
async fn restart_and_check(
    cluster: &mut ProcCluster,
    victim: usize,
    client: &ClusterClient,
    history: &Arc<Mutex<History>>,
    stop: &AtomicBool,
    workers: Vec<tokio::task::JoinHandle<()>>,
) {
    let p = &mut cluster.procs[victim];
    p.kill9();
    p.restart();
    assert!(
        wait_http_ok(&p.addr, "/readyz", Duration::from_secs(30)).await,
        "{}",
        p.log_tail(20)
    );
    wait_for_acks(history, 100, "after the restart").await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    check_increments(client, history).await;
    let addrs = cluster.addrs.clone();
    common::assert_replicas_agree(client, &addrs, Duration::from_secs(20)).await;
    cluster.stop_all();
}

/// The same fault on the leader, set while it serves: with one writer the
/// leader takes each write on the thread that received it and fsyncs its
/// own entries there (after the appends have left for the followers). Its
/// first failed fsync must stop its group without answering the write; the
/// followers, which may already hold the entry, elect a new leader, and the
/// client's retry is answered once from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_fsync_fails_stops_and_loses_no_acknowledged_increment() {
    let mut cluster = start_cluster(
        3,
        &["--election-timeout-ms", "500"],
        &[("RAFTKIT_FAULT_INJECTION", "1")],
    )
    .await;
    let addrs = cluster.addrs.clone();
    let client =
        Arc::new(ClusterClient::new(addrs.clone(), "counter", Duration::from_secs(10)).unwrap());
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = start_increments(&client, 1, &history, &stop);
    wait_for_acks(&history, 100, "before the fault").await;

    let leader = leader_of(&client).await.expect("a leader");
    let victim = cluster.procs.iter().position(|p| p.addr == leader).unwrap();
    let (code, body) = raftkit_client::probe::request(
        &leader,
        "POST",
        "/debug/failpoint?name=log_sync&action=error_once",
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_until_stopped_by_its_disk(&cluster.procs[victim]).await;
    wait_for_acks(&history, 100, "after the leader's disk failed").await;
    assert_ne!(
        leader_of(&client).await.as_deref(),
        Some(leader.as_str()),
        "the stopped member still leads"
    );

    // Restarted (the failpoint was set at run time, so it is gone), it
    // recovers from its log and catches up.
    restart_and_check(&mut cluster, victim, &client, &history, &stop, workers).await;
}
