//! The client library against real processes: exactly-once writes when
//! replies are lost (with many writes in flight per session), sessions
//! surviving snapshot install and restart and renewed after expiry,
//! follower reads, and finding a new leader after the old one dies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::procs::{
    first_group_leader, free_ports, raft_stat, start_cluster, wait_http_ok, Proc, ProcCluster,
};
use nix::sys::signal::Signal;
use raftkit_client::{ClusterClient, Session};
use raftkit_node::pb::ReadConsistency;

type Cluster = ProcCluster;

async fn start(extra: &[&str], env: &[(&str, &str)]) -> Cluster {
    start_cluster(3, extra, env).await
}

async fn leader(c: &Cluster) -> usize {
    first_group_leader(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_are_retried_and_every_increment_is_applied_once() {
    // A third of the writes are applied but their reply is lost.
    let mut c = start(
        &[],
        &[("RAFTKIT_FAILPOINTS", "reply_after_apply=error(0.33)")],
    )
    .await;
    // Half the workers use the multiplexed stream, half unary calls: both
    // paths must turn a lost reply into a retry. The workers of each half
    // share one session (the mux client's own, and one opened on the unary
    // client), so each session has several writes in flight, answered and
    // retried out of order.
    let mux = std::sync::Arc::new(
        ClusterClient::new(c.addrs.clone(), "counter", Duration::from_secs(20)).unwrap(),
    );
    let unary = std::sync::Arc::new(
        ClusterClient::new(c.addrs.clone(), "counter", Duration::from_secs(20))
            .unwrap()
            .with_unary_calls(true),
    );
    let unary_session = std::sync::Arc::new(unary.session());
    let (workers, per_worker) = (8, 30);
    let mut handles = Vec::new();
    for w in 0..workers {
        let (mux, unary, session) = (mux.clone(), unary.clone(), unary_session.clone());
        handles.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..per_worker {
                let invoked = Instant::now();
                let prev = if w % 2 == 0 {
                    mux.fetch_add(1).await
                } else {
                    unary.fetch_add_in(&session, 1).await
                }
                .expect("a retried write succeeds");
                answers.push((invoked, Instant::now(), prev));
            }
            answers
        }));
    }
    let mut timed = Vec::new();
    for h in handles {
        timed.extend(h.await.unwrap());
    }
    // A retried increment is answered with its first application's result,
    // which still falls between its invocation and its answer.
    if let Some(v) = common::counter_real_time_violation(&timed) {
        panic!("not linearizable: {v}");
    }
    let answers: Vec<i64> = timed.iter().map(|t| t.2).collect();
    let total = (workers * per_worker) as i64;
    // Each logical increment got one answer, and no two saw the same value.
    assert_eq!(answers.len() as i64, total);
    let distinct: HashSet<i64> = answers.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        answers.len(),
        "two increments got the same answer"
    );
    // The counter equals the number of logical increments: none applied twice.
    assert_eq!(mux.counter_get().await.unwrap(), total);
    assert_eq!(unary.counter_get().await.unwrap(), total);
    let mut seen: Vec<i64> = answers;
    seen.sort_unstable();
    assert_eq!(seen, (0..total).collect::<Vec<_>>());
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_snapshot_install_and_restart() {
    let mut c = start(
        &[
            "--snapshot-interval-s",
            "0",
            "--snapshot-log-gap",
            "0",
            "--snapshot-margin",
            "0",
        ],
        &[],
    )
    .await;
    let client = ClusterClient::new(c.addrs.clone(), "counter", Duration::from_secs(10)).unwrap();
    let l = leader(&c).await;
    let f = (l + 1) % 3;
    c.procs[f]
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(10))
        .expect("stop follower");
    let session = client.session();
    let mut last = 0;
    for _ in 0..20 {
        last = client.fetch_add_in(&session, 10).await.unwrap();
    }
    // Snapshot and compact everything on the live members: the stopped
    // follower can only catch up by snapshot install.
    for i in (0..3).filter(|i| *i != f) {
        let r = client.member_snapshot(&c.addrs[i]).await.unwrap();
        assert!(r.iter().all(|g| g.error.is_empty()), "{r:?}");
    }
    c.procs[f].restart();
    assert!(
        wait_http_ok(&c.addrs[f], "/readyz", Duration::from_secs(30)).await,
        "{}",
        c.procs[f].log_tail(20)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Some(v) = raft_stat(&c.addrs[f]).await else {
            panic!(
                "the restarted follower does not answer /raft_stat:\n{}",
                c.procs[f].log_tail(30)
            );
        };
        let installs = v[0]["snapshot"]["receive"]["installs"]
            .as_u64()
            .unwrap_or(0);
        let leader_applied = raft_stat(&c.addrs[l]).await.unwrap()[0]["applied_index"]
            .as_u64()
            .unwrap_or(0);
        if installs >= 1 && v[0]["applied_index"].as_u64().unwrap_or(0) >= leader_applied {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not catch up by snapshot: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The installed follower now leads; a retry of the last write must be
    // answered from the session table it got in the snapshot.
    let leader_client =
        ClusterClient::new(vec![c.addrs[l].clone()], "counter", Duration::from_secs(10)).unwrap();
    leader_client
        .transfer_leader(&c.addrs[f])
        .await
        .expect("transfer to the installed follower");
    let retry = Session::resume(session.id(), session.next_seq() - 1);
    assert_eq!(
        client.fetch_add_in(&retry, 10).await.unwrap(),
        last,
        "retry was applied again after install"
    );
    assert_eq!(client.counter_get().await.unwrap(), 200);
    // And after every member restarts.
    for p in c.procs.iter_mut() {
        p.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10))
            .expect("stop");
    }
    for p in c.procs.iter_mut() {
        p.restart();
    }
    for a in &c.addrs {
        assert!(wait_http_ok(a, "/readyz", Duration::from_secs(30)).await);
    }
    let retry = Session::resume(session.id(), session.next_seq() - 1);
    assert_eq!(
        client.fetch_add_in(&retry, 10).await.unwrap(),
        last,
        "retry was applied again after restart"
    );
    assert_eq!(client.counter_get().await.unwrap(), 200);
    c.stop_all();
}

/// Writes through one session do not wait for each other. With both
/// followers paused no write can commit, yet five writes from tasks sharing
/// one client all reach the leader's log; once the followers resume, each
/// is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_session_are_in_flight_together() {
    let mut c = start(&["--election-timeout-ms", "5000"], &[]).await;
    // A long attempt timeout: no write is re-proposed while we watch.
    let client = std::sync::Arc::new(
        ClusterClient::new(c.addrs.clone(), "counter", Duration::from_secs(40))
            .unwrap()
            .with_attempt_timeout(Duration::from_secs(20)),
    );
    client.fetch_add(1).await.unwrap();
    let l = leader(&c).await;
    let last_index = |v: serde_json::Value| v[0]["last_log_index"].as_u64().unwrap();
    let before = last_index(raft_stat(&c.addrs[l]).await.unwrap());
    let followers: Vec<_> = (0..3)
        .filter(|i| *i != l)
        .map(|i| c.procs[i].pid().unwrap())
        .collect();
    for pid in &followers {
        nix::sys::signal::kill(*pid, Signal::SIGSTOP).unwrap();
    }
    let writes: Vec<_> = (0..5)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.fetch_add(1).await })
        })
        .collect();
    // Well inside the election timeout, so the leader still leads.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut seen = before;
    while seen < before + 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = last_index(raft_stat(&c.addrs[l]).await.unwrap());
    }
    for pid in &followers {
        nix::sys::signal::kill(*pid, Signal::SIGCONT).unwrap();
    }
    assert!(
        seen >= before + 5,
        "only {} of 5 writes of one session reached the leader's log: they waited for each other",
        seen - before
    );
    let mut answers = Vec::new();
    for w in writes {
        answers.push(w.await.unwrap().expect("the write succeeds"));
    }
    answers.sort_unstable();
    assert_eq!(answers, vec![1, 2, 3, 4, 5], "each write applied once");
    assert_eq!(client.counter_get().await.unwrap(), 6);
    c.stop_all();
}

/// A client's own session that the cluster forgot (idle past
/// `--session-idle-ms`) is replaced by a new one: the write that was refused
/// as expired is sent again and applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_session_expired_starts_a_new_one() {
    let mut c = start(&["--session-idle-ms", "300"], &[]).await;
    let client = ClusterClient::new(c.addrs.clone(), "counter", Duration::from_secs(10)).unwrap();
    assert_eq!(client.fetch_add(1).await.unwrap(), 0);
    // A probe session used after the client's: once the cluster refuses the
    // probe as expired, it has forgotten the client's session too. Other
    // sessions' writes move the state machine's clock.
    let probe = client.session();
    client.fetch_add_in(&probe, 0).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.fetch_add_in(&client.session(), 0).await.unwrap();
        let again = Session::resume(probe.id(), probe.next_seq());
        match client.fetch_add_in(&again, 0).await {
            Err(e) if e.to_string().contains("expired") => break,
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the probe session was never forgotten"
        );
    }
    assert_eq!(
        client
            .fetch_add(1)
            .await
            .expect("the client renews its session"),
        1
    );
    assert_eq!(client.fetch_add(1).await.unwrap(), 2);
    assert_eq!(client.counter_get().await.unwrap(), 3);
    c.stop_all();
}

/// A retried write whose session expires between its sends may have been
/// applied by an earlier send: the client must say the outcome is unknown,
/// and must not send it again in a new session (that would apply it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_refused_as_expired_is_reported_unknown_not_resent() {
    let mut c = start(
        &["--session-idle-ms", "300"],
        &[("RAFTKIT_FAULT_INJECTION", "1")],
    )
    .await;
    let client = ClusterClient::new(c.addrs.clone(), "counter", Duration::from_secs(10)).unwrap();
    assert_eq!(client.fetch_add(1).await.unwrap(), 0);
    let set_everywhere = |action: &'static str| {
        let addrs = c.addrs.clone();
        async move {
            for a in &addrs {
                let path = format!("/debug/failpoint?name=reply_after_apply&action={action}");
                let (code, body) = raftkit_client::probe::request(a, "POST", &path)
                    .await
                    .unwrap();
                assert_eq!(code, 200, "{body}");
            }
        }
    };
    // Every reply is lost: the client resends, each resend is answered
    // from the session (and lost), until the session has been idle longer
    // than 300 ms of entry time and the resend is refused as expired.
    set_everywhere("error").await;
    let err = client
        .fetch_add(1)
        .await
        .expect_err("no reply ever arrives");
    set_everywhere("off").await;
    assert!(!err.is_definitely_not_applied(), "{err}");
    assert!(err.to_string().contains("may have been applied"), "{err}");
    assert_eq!(
        client.counter_get().await.unwrap(),
        2,
        "the write was applied once"
    );
    // The next write renews the expired session and is applied once.
    assert_eq!(client.fetch_add(1).await.unwrap(), 2);
    assert_eq!(client.counter_get().await.unwrap(), 3);
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reads_see_every_write_acknowledged_before_them() {
    let mut c = start(&[], &[]).await;
    let client = ClusterClient::new(c.addrs.clone(), "counter", Duration::from_secs(10)).unwrap();
    let l = leader(&c).await;
    let followers: Vec<ClusterClient> = (0..3)
        .filter(|i| *i != l)
        .map(|i| {
            ClusterClient::new(vec![c.addrs[i].clone()], "counter", Duration::from_secs(10))
                .unwrap()
        })
        .collect();
    for i in 1..=50 {
        client.fetch_add(1).await.unwrap();
        for f in &followers {
            let v = f
                .counter_get_with(ReadConsistency::Follower)
                .await
                .expect("follower read");
            assert!(
                v >= i,
                "a follower read returned {v} after write {i} was acknowledged"
            );
        }
    }
    // Stale reads are served locally, without the leader.
    let v = followers[0]
        .counter_get_with(ReadConsistency::Stale)
        .await
        .unwrap();
    assert!(v <= 50);
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_finds_a_new_leader_within_its_deadline_after_the_old_one_dies() {
    let mut c = start(&[], &[]).await;
    // The client starts knowing only two members; it learns the third.
    let client =
        ClusterClient::new(c.addrs[..2].to_vec(), "counter", Duration::from_secs(10)).unwrap();
    client.fetch_add(1).await.unwrap();
    let l = leader(&c).await;
    c.procs[l].kill9();
    let started = Instant::now();
    client
        .fetch_add(1)
        .await
        .expect("the write finds the new leader");
    assert!(started.elapsed() < Duration::from_secs(10));
    let new_leader = client.cached_leader().expect("a cached leader");
    assert_ne!(new_leader, c.addrs[l]);
    assert_eq!(client.counter_get().await.unwrap(), 2);
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_costs_a_call_one_attempt_not_its_deadline() {
    let mut c = start(&["--election-timeout-ms", "500"], &[]).await;
    let client = ClusterClient::new(c.addrs.clone(), "counter", Duration::from_secs(4))
        .unwrap()
        .with_attempt_timeout(Duration::from_millis(500));
    client.fetch_add(1).await.unwrap();
    let l = leader(&c).await;
    assert_eq!(client.cached_leader().as_deref(), Some(c.addrs[l].as_str()));
    // The process keeps its sockets open but answers nothing (as a leader
    // behind a one-way partition would): only a per-attempt timeout gets
    // the client off it.
    let pid = c.procs[l].pid().unwrap();
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    let write = client.fetch_add(1).await;
    let read = client.counter_get().await;
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap();
    write.expect("the write is retried on the new leader within its deadline");
    assert_eq!(read.expect("the read finds the new leader"), 2);
    assert_ne!(client.cached_leader().as_deref(), Some(c.addrs[l].as_str()));
    // The paused write may have reached the old leader's log too; the
    // session applied it once.
    assert_eq!(client.counter_get().await.unwrap(), 2);
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_the_group_sends_the_client_to_the_others() {
    let mut c = start(&["--groups", "kv:kv"], &[]).await;
    // A lone node that hosts only a counter group (as a member still
    // loading its groups, or one removed from this group, would answer),
    // listed first.
    let lone = format!("127.0.0.1:{}", free_ports(1)[0]);
    let _lone = Proc::start(
        &lone,
        &c.tmp.path().join("lone"),
        c.tmp.path(),
        &["--initial-conf".to_string(), lone.clone()],
    );
    assert!(wait_http_ok(&lone, "/readyz", Duration::from_secs(30)).await);
    let mut addrs = vec![lone.clone()];
    addrs.extend(c.addrs.iter().cloned());
    let client = ClusterClient::new(addrs.clone(), "kv", Duration::from_secs(10)).unwrap();
    let (k, v) = (bytes::Bytes::from("k"), bytes::Bytes::from("v"));
    client
        .put(k.clone(), v.clone())
        .await
        .expect("the put goes to a member hosting the group");
    assert_eq!(
        client
            .get_with(k.clone(), ReadConsistency::Follower)
            .await
            .unwrap(),
        Some(v)
    );
    // A group no member hosts: the error comes back once every member said
    // so, well before the deadline, and the write certainly did not happen.
    let nowhere = ClusterClient::new(addrs, "nope", Duration::from_secs(30)).unwrap();
    let started = Instant::now();
    let err = nowhere.put(k, bytes::Bytes::from("x")).await.unwrap_err();
    assert!(err.is_definitely_not_applied(), "{err}");
    assert!(err.to_string().contains("\"nope\" is hosted here"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_sharing_one_connection_each_get_their_own_reply() {
    let mut c = start(&["--groups", "kv:kv,counter:counter"], &[]).await;
    // One client, so every task's calls share one stream to the leader and
    // their replies come back interleaved.
    let client = std::sync::Arc::new(
        ClusterClient::new(c.addrs.clone(), "kv", Duration::from_secs(20)).unwrap(),
    );
    let tasks = 64;
    let key = |i: usize| bytes::Bytes::from(format!("key-{i}"));
    let val = |i: usize, round: usize| bytes::Bytes::from(format!("value-{i}-{round}"));
    let mut handles = Vec::new();
    for i in 0..tasks {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            let s = client.session();
            for round in 0..20 {
                let previous = client.put_in(&s, key(i), val(i, round)).await.unwrap();
                // A reply handed to the wrong caller would show another
                // task's key's value here.
                let expected = (round > 0).then(|| val(i, round - 1));
                assert_eq!(previous, expected, "task {i} round {round}");
                let now = client
                    .get_with(key(i), ReadConsistency::Linearizable)
                    .await
                    .unwrap();
                assert_eq!(now, Some(val(i, round)), "task {i} round {round}");
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    c.stop_all();
}
