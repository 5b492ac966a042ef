//! The admin steps an operator drives, across real processes: each is
//! conditional on the configuration index it was planned from, and a step
//! repeated after it took effect succeeds with the current configuration,
//! so an operator that crashed mid-step simply retries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::procs::{free_ports, start_cluster, wait_hosting, wait_http_ok, Proc};
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
    assert!(wait_hosting(&s.addr, "kv", Duration::from_secs(30)).await);
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
    assert!(wait_hosting(&s.addr, "kv", Duration::from_secs(30)).await);
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
    assert!(wait_hosting(&s.addr, "kv", Duration::from_secs(30)).await);
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
    assert!(wait_hosting(&addr, "kv", Duration::from_secs(30)).await);
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

/// A member lost its disk and came back empty at its address under a new
/// raft id. Adding it beside its old self would leave two members at one
/// address, one of them gone for good: the add is refused, naming the
/// member that holds the address, until that member is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_at_a_members_address_is_refused_until_that_member_is_removed() {
    let mut c = start_cluster(3, &["--groups", "kv:kv"], &[]).await;
    let admin = AdminClient::new(c.addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    let w = 2;
    let addr = c.addrs[w].clone();
    let old = admin.identity(&addr).await.unwrap().id;
    c.procs[w].kill9();
    std::fs::remove_dir_all(&c.procs[w].data_dir).unwrap();
    c.procs[w].restart();
    assert!(wait_hosting(&addr, "kv", Duration::from_secs(30)).await);
    let new = admin.identity(&addr).await.unwrap().id;
    assert_ne!(new, old, "a wiped replica gets a new raft id");

    let old_hex = format!("{old:016x}");
    for e in [
        admin.add_learner(&addr, None).await.unwrap_err(),
        admin
            .add_peer(&addr, None, Duration::from_secs(5))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::AddressInUse, "{e}");
        assert!(e.is_definitely_not_applied(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("address of member {old_hex} (voter)"))
                && text.contains(&format!("remove member {old_hex} first")),
            "{text}"
        );
    }
    let status = admin.cluster_status().await;
    assert!(
        !status
            .voters
            .iter()
            .chain(&status.learners)
            .any(|m| m.id == new),
        "the replacement got in: {status:?}"
    );

    // Once the old member is gone, the same call succeeds, and again.
    let removed = admin.remove_peer(&old_hex, None).await.unwrap();
    assert!(!removed
        .voters
        .iter()
        .chain(&removed.learners)
        .any(|m| m.id == old));
    let added = admin.add_learner(&addr, None).await.unwrap();
    assert!(
        added.learners.iter().any(|m| m.id == new && m.addr == addr),
        "{added:?}"
    );
    let again = admin
        .add_learner(&addr, Some(removed.conf_index))
        .await
        .unwrap();
    assert_eq!(again.conf_index, added.conf_index, "nothing changed");
}

/// Makes `node` drop its raft traffic to `peers` (none: heals), through the
/// fault-injection endpoint.
async fn cut_off(node: &str, peers: &[String]) {
    let path = format!("/debug/partition?peers={}&direction=out", peers.join(","));
    let (code, body) = raftkit_client::probe::request(node, "POST", &path)
        .await
        .unwrap();
    assert_eq!(code, 200, "{path} on {node}: {body}");
}

/// The status once a member other than the one at `gone` leads.
async fn leader_other_than(admin: &AdminClient, gone: &str) -> raftkit_client::ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = admin.cluster_status().await;
        match &s.leader {
            Some(l) if l.addr != gone => return s,
            _ => {
                assert!(Instant::now() < deadline, "no leader but {gone}: {s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// This replica's counter of raft traffic dropped as another cluster's.
async fn foreign_dropped(addr: &str) -> u64 {
    let (_, body) = raftkit_client::probe::probe(addr, "/metrics")
        .await
        .unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix("raftkit_foreign_cluster_dropped_total{group=\"kv\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A member refuses raft traffic from another cluster (etcd's cluster-id
/// mismatch). Cluster B is formed with its first member on the address of
/// A's first member (A0, stopped meanwhile) and, as if its disk had been
/// cloned from A0's, with A0's raft id: so B's messages are addressed to
/// A0's id and only the cluster id tells them apart. B's first member then
/// stops and A0 returns to its address, where B's leader keeps sending
/// (address reuse after a restart). A0 must drop all of it, count it, and
/// keep A's term, leader and log; and A refuses to add B's members.
///
/// Clients of B that knew b0's address never write into A (task of
/// issue 18's cluster identity, on the client side): once B is gone and A0,
/// now A's leader, is the only member they can reach, their writes fail as
/// `WrongCluster`, certainly not applied, and A holds none of them. One
/// client pinned itself by talking to b0 (unary calls: its channel to b0
/// must not silently reconnect to A0), one by its mux stream to b0, one was
/// given B's id and knows only the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_traffic_from_another_cluster_is_dropped() {
    let fault_injection = [("RAFTKIT_FAULT_INJECTION", "1")];
    let mut a = start_cluster(3, &["--groups", "kv:kv"], &fault_injection).await;
    let admin_a = AdminClient::new(a.addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    let client_a = ClusterClient::new(a.addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    for i in 0..20u32 {
        client_a
            .put(Bytes::from(format!("a{i}")), Bytes::from_static(b"A"))
            .await
            .unwrap();
    }
    let a0_id = admin_a.cluster().identity(&a.addrs[0]).await.unwrap().id;
    let a_cluster = admin_a.cluster_status().await.cluster_id.unwrap();
    a.procs[0].kill9();
    let before = leader_other_than(&admin_a, &a.addrs[0]).await;
    let a_leader = before.leader.clone().unwrap();
    // While B forms, A's leader must not reach b0: a replica that does not
    // know its cluster yet takes any cluster's traffic (a joining replica
    // learns its cluster so), and b0 would join A as A0.
    for addr in &a.addrs[1..] {
        cut_off(addr, &a.addrs[..1]).await;
    }

    // Cluster B: b0 on A0's address with A0's raft id, b1 and b2.
    let b_addrs: Vec<String> = std::iter::once(a.addrs[0].clone())
        .chain(free_ports(2).iter().map(|p| format!("127.0.0.1:{p}")))
        .collect();
    let b_dir = a.tmp.path().join("b");
    let meta_uri = format!(
        "local://{}",
        b_dir.join("b0").join("kv").join("meta").display()
    );
    raftkit_node::storage::open_meta_storage(&meta_uri, &Default::default())
        .unwrap()
        .save(&raftkit_node::storage::RaftMeta {
            peer_id: a0_id,
            ..Default::default()
        })
        .unwrap();
    let args: Vec<String> = [
        "--groups",
        "kv:kv",
        "--initial-conf",
        &b_addrs.join(","),
        "--election-timeout-ms",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut b: Vec<Proc> = b_addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| Proc::start(addr, &b_dir.join(format!("b{i}")), &b_dir, &args))
        .collect();
    for p in &b {
        assert!(
            wait_http_ok(&p.addr, "/readyz", Duration::from_secs(30)).await,
            "{} not ready:\n{}",
            p.addr,
            p.log_tail(20)
        );
    }
    for addr in &a.addrs[1..] {
        cut_off(addr, &[]).await;
    }
    let admin_b = AdminClient::new(b_addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    let client_b = ClusterClient::new(b_addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    let b_status = admin_b.cluster_status().await;
    let b_cluster = b_status.cluster_id.clone().unwrap();
    assert_ne!(a_cluster, b_cluster);
    assert!(
        b_status.voters.iter().any(|m| m.id == a0_id),
        "{b_status:?}"
    );
    // B's term runs ahead of A's, so that a replica of A that took B's
    // messages would follow B's leader.
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin_b.cluster_status().await.term <= before.term + 1 {
        assert!(Instant::now() < deadline, "B's term does not rise");
        let _ = admin_b.transfer_leader(None).await;
    }
    for i in 0..20u32 {
        client_b
            .put(Bytes::from(format!("b{i}")), Bytes::from_static(b"B"))
            .await
            .unwrap();
    }
    // Clients of B that talked to b0 (checked connections to b0 cached).
    let b_only_b0 = |unary: bool| {
        ClusterClient::new(vec![b_addrs[0].clone()], "kv", Duration::from_secs(10))
            .unwrap()
            .with_unary_calls(unary)
    };
    let (b_unary, b_mux) = (b_only_b0(true), b_only_b0(false));
    for c in [&b_unary, &b_mux] {
        assert_eq!(
            c.get(Bytes::from_static(b"b0")).await.unwrap().as_deref(),
            Some(&b"B"[..])
        );
        assert_eq!(c.cluster_id().as_deref(), Some(b_cluster.as_str()));
    }
    // b0 leaves the address; B's leader keeps sending to it.
    let b0 = b_addrs[0].clone();
    b[0].kill9();
    let b_leader = leader_other_than(&admin_b, &b0).await.leader.unwrap();

    // A0 comes back where B's leader reaches it.
    assert_eq!(admin_a.cluster_status().await.term, before.term);
    a.procs[0].restart();
    assert!(
        wait_http_ok(&a.addrs[0], "/readyz", Duration::from_secs(30)).await,
        "{}",
        a.procs[0].log_tail(20)
    );
    common::wait_until_async(Duration::from_secs(20), "A0 drops B's traffic", || async {
        foreign_dropped(&a.addrs[0]).await > 0
    })
    .await;
    // While B's leader keeps at it (several heartbeat rounds), A keeps its
    // term, leader and log, and A0 stays with A. (No client of B writes
    // now: B's configuration names A0's address, and a client following it
    // would be redirected into A, which is the client's concern, not this
    // test's.)
    let dropped = foreign_dropped(&a.addrs[0]).await;
    for i in 0..20u32 {
        client_a
            .put(Bytes::from(format!("a2-{i}")), Bytes::from_static(b"A"))
            .await
            .unwrap();
    }
    common::wait_until_async(
        Duration::from_secs(20),
        "A0 drops more of B's traffic",
        || async { foreign_dropped(&a.addrs[0]).await > dropped + 5 },
    )
    .await;
    let after = admin_a.cluster_status().await;
    assert_eq!(
        after.term,
        before.term,
        "A's term moved: {after:?}\nA0:\n{}\nA1:\n{}\nA2:\n{}",
        a.procs[0].log_tail(40),
        a.procs[1].log_tail(40),
        a.procs[2].log_tail(40)
    );
    assert_eq!(after.leader.map(|l| l.id), Some(a_leader.id));
    assert_eq!(after.cluster_id.as_deref(), Some(a_cluster.as_str()));
    let a0 = common::procs::raft_stat(&a.addrs[0]).await.unwrap();
    assert_eq!(a0[0]["term"], before.term, "A0's term moved: {a0}");
    assert_eq!(
        a0[0]["leader"]["id"], a_leader.id,
        "A0 follows another leader: {a0}"
    );
    common::assert_replicas_agree(&client_a, &a.addrs, Duration::from_secs(30)).await;
    for i in [0u32, 19] {
        let got = client_a.get(Bytes::from(format!("b{i}"))).await.unwrap();
        assert!(got.is_none(), "B's write b{i} reached A");
    }
    // B is unharmed too (it lost a member, not its data or leader).
    assert_eq!(
        admin_b.cluster_status().await.leader.map(|l| l.id),
        Some(b_leader.id)
    );
    assert!(a.procs[0]
        .log_tail(2000)
        .contains("dropping raft messages from another cluster"));

    // And A refuses to add a replica of B.
    let e = admin_a.add_learner(&b_addrs[1], None).await.unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("holds data of cluster {b_cluster}")),
        "{e}"
    );

    // B goes away, and A0 (at b0's old address) leads A: a write of B's
    // clients that reached A0 would be applied in A.
    b[1].kill9();
    b[2].kill9();
    admin_a.transfer_leader(Some(&a.addrs[0])).await.unwrap();
    let b_given = ClusterClient::new(vec![a.addrs[0].clone()], "kv", Duration::from_secs(10))
        .unwrap()
        .with_cluster_id(&b_cluster)
        .unwrap();
    for (name, c) in [("unary", &b_unary), ("mux", &b_mux), ("given", &b_given)] {
        let key = Bytes::from(format!("from-b-{name}"));
        let e = c
            .put(key.clone(), Bytes::from_static(b"B"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongCluster, "{name}: {e}");
        assert!(e.is_definitely_not_applied(), "{name}: {e}");
        assert!(e.to_string().contains(&a_cluster), "{name}: {e}");
        assert_eq!(
            client_a.get(key).await.unwrap(),
            None,
            "{name}: B's write reached A"
        );
    }
    // A client of A at the same address is served as before.
    let a_given = ClusterClient::new(vec![a.addrs[0].clone()], "kv", Duration::from_secs(10))
        .unwrap()
        .with_cluster_id(&a_cluster)
        .unwrap();
    a_given
        .put(Bytes::from_static(b"a-given"), Bytes::from_static(b"A"))
        .await
        .unwrap();
}
