//! The admin steps an operator drives, across real processes: each is
//! conditional on the configuration index it was planned from, and a step
//! repeated after it took effect succeeds with the current configuration,
//! so an operator that crashed mid-step simply retries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::procs::{free_ports, start_cluster, wait_http_ok, Proc};
use nix::sys::signal::{kill, Signal};
use raftkit_client::{AdminClient, ClientError, ClusterClient, ErrorKind};

fn kind(e: &ClientError) -> &'static str {
    match e.kind() {
        ErrorKind::ConfigurationChanged => "configuration_changed",
        ErrorKind::NotCaughtUp => "not_caught_up",
        _ => "other",
    }
}

fn spare(c: &common::procs::ProcCluster, name: &str) -> Proc {
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    Proc::start(
        &addr,
        &c.tmp.path().join(name),
        c.tmp.path(),
        &["--groups".to_string(), "kv:kv".to_string()],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_repeated_after_they_took_effect_succeed_and_stale_plans_are_refused() {
    let c = start_cluster(3, &["--groups", "kv:kv"], &[]).await;
    let client = AdminClient::new(c.addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    let mut s = spare(&c, "spare");
    assert!(wait_http_ok(&s.addr, "/livez", Duration::from_secs(30)).await);
    let planned = client.cluster_status().await.conf_index;

    // add_learner, then the same call again (same, now stale, plan).
    let first = client.add_learner(&s.addr, Some(planned)).await.unwrap();
    assert!(first.learners.iter().any(|m| m.addr == s.addr));
    assert!(first.conf_index > planned);
    let again = client.add_learner(&s.addr, Some(planned)).await.unwrap();
    assert_eq!(again.conf_index, first.conf_index, "nothing changed");

    // A step planned from an older configuration is refused, distinctly.
    let e = client.promote(&s.addr, Some(planned)).await.unwrap_err();
    assert_eq!(kind(&e), "configuration_changed", "{e}");
    assert!(e.is_definitely_not_applied());

    // promote (once caught up), then again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let promoted = loop {
        match client.promote(&s.addr, Some(first.conf_index)).await {
            Ok(m) => break m,
            Err(e) if kind(&e) == "not_caught_up" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("promote: {e}"),
        }
    };
    assert!(promoted.voters.iter().any(|m| m.addr == s.addr));
    let again = client
        .promote(&s.addr, Some(first.conf_index))
        .await
        .unwrap();
    assert_eq!(again.conf_index, promoted.conf_index);

    // remove_peer, then again.
    let removed = client
        .remove_peer(&s.addr, Some(promoted.conf_index))
        .await
        .unwrap();
    assert!(!removed
        .voters
        .iter()
        .chain(&removed.learners)
        .any(|m| m.addr == s.addr));
    let again = client
        .remove_peer(&s.addr, Some(promoted.conf_index))
        .await
        .unwrap();
    assert_eq!(again.conf_index, removed.conf_index);

    // Leadership moves to the most caught-up voter, which then leads.
    let before = client.cluster_status().await.leader.unwrap();
    let now = client.transfer_leader(None).await.unwrap();
    assert_ne!(now.addr, before.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.cluster_status().await.leader.map(|l| l.addr) != Some(now.addr.clone()) {
        assert!(Instant::now() < deadline, "{} does not lead", now.addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_lags_is_not_promoted() {
    let c = start_cluster(3, &["--groups", "kv:kv"], &[]).await;
    let client = ClusterClient::new(c.addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    let mut s = spare(&c, "slow");
    assert!(wait_http_ok(&s.addr, "/livez", Duration::from_secs(30)).await);
    let m = client.add_learner(&s.addr, None).await.unwrap();
    // Frozen while 1,500 writes land: more than the catch-up margin (1,000).
    let pid = s.pid().unwrap();
    kill(pid, Signal::SIGSTOP).unwrap();
    for i in 0..1500u32 {
        client
            .put(Bytes::from(format!("k{i}")), Bytes::from_static(b"v"))
            .await
            .unwrap();
    }
    let e = client
        .promote(&s.addr, Some(m.conf_index))
        .await
        .unwrap_err();
    kill(pid, Signal::SIGCONT).unwrap();
    assert_eq!(kind(&e), "not_caught_up", "{e}");
    assert!(e.is_definitely_not_applied());
    let status = client.cluster_status().await;
    let learner = status.members.iter().find(|x| x.addr == s.addr).unwrap();
    assert!(learner.learner && !learner.voter, "{learner:?}");
    s.kill9();
}

/// Every member of a cluster reports one cluster id (derived from its
/// bootstrap configuration; a member added later learns it by replaying the
/// log), and a replica holding another cluster's data is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_cluster_is_refused_and_members_share_one_cluster_id() {
    let a = start_cluster(3, &["--groups", "kv:kv"], &[]).await;
    let b = start_cluster(1, &["--groups", "kv:kv"], &[]).await;
    let client_a = ClusterClient::new(a.addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    let client_b = ClusterClient::new(b.addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    let mut ids = Vec::new();
    for addr in &a.addrs {
        ids.push(client_a.identity(addr).await.unwrap().cluster_id);
    }
    let a_id = ids[0].clone().expect("a cluster id");
    assert!(
        ids.iter().all(|i| i.as_deref() == Some(a_id.as_str())),
        "{ids:?}"
    );
    assert_eq!(
        client_a.cluster_status().await.cluster_id.as_deref(),
        Some(a_id.as_str())
    );
    let b_id = client_b
        .identity(&b.addrs[0])
        .await
        .unwrap()
        .cluster_id
        .unwrap();
    assert_ne!(a_id, b_id);

    for e in [
        client_a.add_learner(&b.addrs[0], None).await.unwrap_err(),
        client_a.add_peer(&b.addrs[0], None, 0).await.unwrap_err(),
    ] {
        assert!(
            e.to_string()
                .contains(&format!("holds data of cluster {b_id}")),
            "{e}"
        );
        assert!(e.is_definitely_not_applied());
    }

    // A fresh replica learns the cluster it joins.
    let mut s = spare(&a, "joiner");
    assert!(wait_http_ok(&s.addr, "/livez", Duration::from_secs(30)).await);
    assert_eq!(client_a.identity(&s.addr).await.unwrap().cluster_id, None);
    client_a.add_peer(&s.addr, None, 0).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = client_a.identity(&s.addr).await.unwrap().cluster_id;
        if got.as_deref() == Some(a_id.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the joiner reports {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.kill9();
}

/// A member whose disk was wiped comes back with its old `--initial-conf`:
/// it must not bootstrap a second cluster. It waits, empty and not ready,
/// to be added again (the operator's member replacement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_restarted_with_its_initial_conf_never_starts_a_second_cluster() {
    let mut c = start_cluster(3, &["--groups", "kv:kv"], &[]).await;
    let admin = AdminClient::new(c.addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    let cluster = admin.cluster_status().await.cluster_id.unwrap();
    let w = 2;
    c.procs[w].kill9();
    std::fs::remove_dir_all(&c.procs[w].data_dir).unwrap();
    c.procs[w].restart();
    let addr = c.addrs[w].clone();
    assert!(wait_http_ok(&addr, "/livez", Duration::from_secs(30)).await);
    // Give it every chance to form a group: well past an election timeout
    // and its formation attempts, it is still nobody's member.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let ident = admin.identity(&addr).await.unwrap();
        assert!(
            matches!(
                ident.state,
                raftkit_client::IdentityState::Empty | raftkit_client::IdentityState::Uninitialized
            ),
            "{ident:?}"
        );
        assert_eq!(ident.cluster_id, None, "it started a cluster of its own");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, body) = raftkit_client::probe::probe(&addr, "/readyz")
        .await
        .unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not_a_member"), "{body}");
    // The others keep their cluster, with the wiped member's old id still
    // listed (replacing it is the operator's job).
    let status = admin.cluster_status().await;
    assert_eq!(status.cluster_id.as_deref(), Some(cluster.as_str()));
    assert!(status.leader.is_some());
}
