//! Membership changes, leadership transfer and forced reset, in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{wait_until, wait_until_async, Cluster, ELECTION_MS};
use raft::eraftpb::{EntryType, MessageType};
use raftkit_node::error::RaftError;
use raftkit_node::membership::{ChangeOptions, PeerRef};
use raftkit_node::node::{Node, Role};

const T: Duration = Duration::from_secs(20);

fn payload(i: usize) -> Bytes {
    Bytes::from(format!("entry-{i}"))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn voters(n: &Node) -> Vec<String> {
    sorted(
        n.membership()
            .await
            .unwrap()
            .conf
            .voters
            .iter()
            .map(|p| p.addr.clone())
            .collect(),
    )
}

fn addrs(c: &Cluster, idx: &[usize]) -> Vec<String> {
    sorted(idx.iter().map(|i| c.addrs[*i].clone()).collect())
}

/// Writes in the background until stopped; returns the acknowledged payloads.
/// A writer proposing through whichever node it believes leads; it counts
/// its acknowledged writes in `progress` and returns them when stopped.
fn background_writer(
    c: &Cluster,
    leader_hint: Arc<Mutex<Node>>,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<Bytes>> {
    let nodes: Vec<Node> = c.running().map(|(_, n)| n.clone()).collect();
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut i = 10_000;
        while !stop.load(Ordering::Relaxed) {
            let n = leader_hint.lock().unwrap().clone();
            match n.propose(payload(i)).await {
                Ok(_) => {
                    acked.push(payload(i));
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                Err(RaftError::NotLeader { leader: Some(l) }) => {
                    if let Some(m) = nodes.iter().find(|m| m.peer_id().addr == l.addr) {
                        *leader_hint.lock().unwrap() = m.clone();
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
            i += 1;
        }
        acked
    })
}

/// Waits until the background writer has `more` further writes acknowledged.
async fn wait_for_writes(progress: &AtomicUsize, more: usize, what: &str) {
    let target = progress.load(Ordering::Relaxed) + more;
    wait_until(T, what, || progress.load(Ordering::Relaxed) >= target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_to_three_with_every_configuration_as_asked() {
    let mut c = Cluster::new(3);
    let l = c.wait_leader(T).await;
    let spares = c.add_spares(2);
    for s in &spares {
        assert_eq!(
            c.node(*s).view().role,
            Role::Uninitialized,
            "a spare without data waits to be added"
        );
    }
    for i in 0..20 {
        c.node(l).propose(payload(i)).await.unwrap();
    }
    let leader = c.node(l).clone();
    let m = leader
        .add_peer(&c.addrs[3], ChangeOptions::default())
        .await
        .expect("add 4th");
    assert_eq!(
        sorted(m.conf.voters.iter().map(|p| p.addr.clone()).collect()),
        addrs(&c, &[0, 1, 2, 3])
    );
    assert!(m.conf.learners.is_empty());
    let m = leader
        .add_peer(&c.addrs[4], ChangeOptions::default())
        .await
        .expect("add 5th");
    assert_eq!(
        sorted(m.conf.voters.iter().map(|p| p.addr.clone()).collect()),
        addrs(&c, &[0, 1, 2, 3, 4])
    );
    for i in 20..30 {
        c.node(l).propose(payload(i)).await.unwrap();
    }
    let expected: Vec<Bytes> = (0..30).map(payload).collect();
    for i in 0..5 {
        wait_until(T, "every member has the whole log", || {
            c.applied_data(i) == expected
        })
        .await;
    }
    // The new members saw each configuration commit, in order.
    wait_until(T, "conf callbacks", || {
        c.records[4].lock().unwrap().confs.len() >= 3
    })
    .await;
    let last_conf = c.records[4].lock().unwrap().confs.last().unwrap().1.clone();
    assert_eq!(last_conf, addrs(&c, &[0, 1, 2, 3, 4]));

    // Shrink back, removing two of the original members.
    let gone = [(l + 1) % 3, (l + 2) % 3];
    for g in gone {
        let m = leader
            .remove_peer(&PeerRef::Addr(c.addrs[g].clone()), None)
            .await
            .expect("remove");
        assert!(!m.conf.voters.iter().any(|p| p.addr == c.addrs[g]));
    }
    let want = addrs(&c, &[l, 3, 4]);
    assert_eq!(voters(&leader).await, want);
    c.node(l)
        .propose(payload(30))
        .await
        .expect("writes work in the new configuration");
    for i in [l, 3, 4] {
        wait_until(T, "remaining members apply", || {
            c.applied_data(i).len() == 31
        })
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_peer_of_a_voter_is_done_already_and_strangers_and_unreachable_addresses_are_refused() {
    let mut c = Cluster::new(3);
    let l = c.wait_leader(T).await;
    let leader = c.node(l).clone();
    let f = (l + 1) % 3;
    // A retry after the step took effect: succeeds, changes nothing.
    let before = leader.membership().await.unwrap();
    let m = leader
        .add_peer(&c.addrs[f], ChangeOptions::default())
        .await
        .unwrap();
    assert_eq!(m.conf_index, before.conf_index);
    assert!(m.conf.voters.iter().any(|p| p.addr == c.addrs[f]));
    let e = leader
        .add_peer("nowhere.invalid:1", ChangeOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RaftError::PeerUnreachable(_)), "{e}");
    // A follower cannot change the configuration: it redirects.
    c.add_spares(1);
    let e = c
        .node(f)
        .add_peer(&c.addrs[3], ChangeOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RaftError::NotLeader { .. }), "{e}");
    assert_eq!(
        voters(&leader).await,
        addrs(&c, &[0, 1, 2]),
        "failed attempts left the configuration alone"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_conditional_changes_exactly_one_succeeds() {
    let mut c = Cluster::new(3);
    let l = c.wait_leader(T).await;
    c.add_spares(2);
    let leader = c.node(l).clone();
    let index = leader.membership().await.unwrap().conf_index;
    let opts = ChangeOptions {
        expected_conf_index: Some(index),
        ..Default::default()
    };
    let (a, b) = (c.addrs[3].clone(), c.addrs[4].clone());
    let (l1, l2) = (leader.clone(), leader.clone());
    let (o1, o2) = (opts.clone(), opts.clone());
    let r1 = tokio::spawn(async move { l1.add_peer(&a, o1).await });
    let r2 = tokio::spawn(async move { l2.add_peer(&b, o2).await });
    let (r1, r2) = (r1.await.unwrap(), r2.await.unwrap());
    assert_eq!(
        r1.is_ok() as u8 + r2.is_ok() as u8,
        1,
        "exactly one should succeed: {r1:?} / {r2:?}"
    );
    // Sequentially, a stale expected index is refused.
    let stale = leader
        .add_peer(&c.addrs[if r1.is_ok() { 4 } else { 3 }], opts)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, RaftError::ConfigurationChanged { .. }),
        "{stale}"
    );
    assert_eq!(leader.membership().await.unwrap().conf.voters.len(), 4);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_moves_leadership_to_a_remaining_voter() {
    let mut c = Cluster::new(3);
    let l = c.wait_leader(T).await;
    c.node(l).propose(payload(0)).await.unwrap();
    // Writes keep arriving while the leader removes itself: acknowledgements
    // and persisted entries reach it after the removal is applied.
    let hint = Arc::new(Mutex::new(c.node(l).clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = background_writer(&c, hint, stop.clone(), progress.clone());
    wait_for_writes(&progress, 20, "writes before the removal").await;
    let old = c.node(l).clone();
    old.remove_peer(&PeerRef::Addr(c.addrs[l].clone()), None)
        .await
        .expect("remove the leader");
    let rest: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let l2 = c
        .wait_leader_among(&rest, Duration::from_millis(ELECTION_MS * 10))
        .await;
    assert_ne!(l2, l);
    // The removed leader steps down once a remaining voter answers it with
    // the new term.
    wait_until(T, "the removed leader steps down", || {
        old.view().role != Role::Leader
    })
    .await;
    assert_eq!(voters(c.node(l2)).await, addrs(&c, &rest));
    c.node(l2)
        .propose(payload(1))
        .await
        .expect("the remaining pair serves writes");
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    for i in 0..3 {
        assert!(
            c.node(i).error().is_none(),
            "node {i} failed: {:?}",
            c.node(i).error()
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_under_load_keeps_every_acknowledged_write() {
    let mut c = Cluster::new(3);
    let l = c.wait_leader(T).await;
    let hint = Arc::new(Mutex::new(c.node(l).clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = background_writer(&c, hint.clone(), stop.clone(), progress.clone());
    wait_for_writes(&progress, 20, "writes before the transfer").await;
    let target = (l + 1) % 3;
    let new = c
        .node(l)
        .transfer_leadership(Some(&PeerRef::Addr(c.addrs[target].clone())))
        .await
        .expect("transfer");
    assert_eq!(new.addr, c.addrs[target]);
    assert_eq!(c.wait_leader(T).await, target);
    wait_for_writes(&progress, 20, "writes through the new leader").await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    for i in 0..3 {
        wait_until(T, "every acknowledged write is applied everywhere", || {
            let have: std::collections::HashSet<Bytes> = c.applied_data(i).into_iter().collect();
            acked.iter().all(|a| have.contains(a))
        })
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_to_a_learner_lagging_or_dead_node_is_refused_or_abandoned() {
    let mut c = Cluster::with(3, |o| o.catchup_margin = 5);
    let l = c.wait_leader(T).await;
    let leader = c.node(l).clone();
    let (a, b) = ((l + 1) % 3, (l + 2) % 3);
    // A lagging voter: the leader's appends to it are lost.
    c.net.cut_one_way(&c.addrs[l], &c.addrs[a]);
    for i in 0..20 {
        leader.propose(payload(i)).await.unwrap();
    }
    let e = leader
        .transfer_leadership(Some(&PeerRef::Addr(c.addrs[a].clone())))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("lagging") || e.to_string().contains("heard from"),
        "{e}"
    );
    c.net.heal();
    // A dead voter: refused, or attempted and abandoned; either way a leader is back.
    c.stop_node(b).await;
    let r = leader
        .transfer_leadership(Some(&PeerRef::Addr(c.addrs[b].clone())))
        .await;
    assert!(
        r.is_err(),
        "transfer to a dead node reported success: {r:?}"
    );
    let back = c
        .wait_leader_among(&[l, a], Duration::from_millis(ELECTION_MS * 10))
        .await;
    c.node(back)
        .propose(payload(99))
        .await
        .expect("writes work after the failed transfer");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_in_the_middle_of_a_joint_change_leaves_the_cluster_usable() {
    let mut c = Cluster::new(3);
    let l = c.wait_leader(T).await;
    let spare = c.add_spares(1)[0];
    let leader = c.node(l).clone();
    let keep = (l + 1) % 3;
    let drop_member = (l + 2) % 3;
    // Hold back the entry that leaves the joint configuration: the leader
    // enters joint consensus and dies there.
    let leader_addr = c.addrs[l].clone();
    c.net.set_interceptor(Some(Arc::new(move |from, _to, m| {
        let leave = m.get_msg_type() == MessageType::MsgAppend
            && m.entries
                .iter()
                .any(|e| e.get_entry_type() == EntryType::EntryConfChangeV2 && e.data.len() <= 4);
        !(from == leader_addr && leave)
    })));
    let target = vec![
        c.addrs[l].clone(),
        c.addrs[keep].clone(),
        c.addrs[spare].clone(),
    ];
    let change = {
        let leader = leader.clone();
        let target = target.clone();
        tokio::spawn(async move { leader.change_peers(&target, ChangeOptions::default()).await })
    };
    let k = c.node(keep).clone();
    wait_until_async(T, "a follower applies the joint configuration", || {
        let k = k.clone();
        async move {
            k.membership()
                .await
                .map(|m| m.conf.is_joint())
                .unwrap_or(false)
        }
    })
    .await;
    c.stop_node(l).await;
    c.net.set_interceptor(None);
    let _ = change.await;
    let survivors = [keep, drop_member, spare];
    // A leader is elected and the joint configuration is left: old or new, never stuck.
    wait_until_async(T, "a leader out of the joint configuration", || {
        let nodes: Vec<Node> = survivors.iter().map(|i| c.node(*i).clone()).collect();
        async move {
            for n in nodes {
                if n.is_leader() {
                    return n
                        .membership()
                        .await
                        .map(|m| !m.conf.is_joint())
                        .unwrap_or(false);
                }
            }
            false
        }
    })
    .await;
    // Members the change removed no longer hear from the leader; agreement
    // is among the members of the final configuration.
    let leader_now = survivors
        .iter()
        .copied()
        .find(|i| c.node(*i).is_leader())
        .expect("a leader");
    let final_voters = voters(c.node(leader_now)).await;
    let members: Vec<usize> = survivors
        .iter()
        .copied()
        .filter(|i| final_voters.contains(&c.addrs[*i]))
        .collect();
    let l2 = c.wait_leader_among(&members, T).await;
    let v = voters(c.node(l2)).await;
    let old = addrs(&c, &[0, 1, 2]);
    assert!(
        v == sorted(target.clone()) || v == old,
        "ended in neither the old nor the new configuration: {v:?}"
    );
    // The leader may be the member the change removed, handing off: retry
    // retryable errors against whoever leads, as a client would.
    let deadline = std::time::Instant::now() + T;
    loop {
        let l = c.wait_leader_among(&members, T).await;
        match c.node(l).propose(payload(1)).await {
            Ok(_) => break,
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the cluster does not serve writes: {e}"),
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_member_returns_with_a_new_id_and_is_replaced() {
    let mut c = Cluster::new(3);
    let l = c.wait_leader(T).await;
    for i in 0..10 {
        c.node(l).propose(payload(i)).await.unwrap();
    }
    let w = (l + 1) % 3;
    let old_id = c.node(w).peer_id().id;
    c.stop_node(w).await;
    c.wipe(w);
    c.start_node(w);
    let new_id = c.node(w).peer_id().id;
    assert_ne!(new_id, old_id, "a wiped replica must not reuse its id");
    tokio::time::sleep(Duration::from_millis(ELECTION_MS * 2)).await;
    assert_eq!(
        c.node(w).view().role,
        Role::Uninitialized,
        "a wiped replica must not rejoin on its own"
    );
    let leader = c.node(l).clone();
    leader
        .remove_peer(&PeerRef::Id(old_id), None)
        .await
        .expect("remove the old id");
    leader
        .add_peer(&c.addrs[w], ChangeOptions::default())
        .await
        .expect("add the new id");
    let m = leader.membership().await.unwrap();
    assert!(
        m.conf.voters.iter().any(|p| p.id == new_id)
            && !m.conf.voters.iter().any(|p| p.id == old_id)
    );
    let expected: Vec<Bytes> = (0..10).map(payload).collect();
    wait_until(T, "the replaced member catches up", || {
        c.applied_data(w) == expected
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_reset_brings_a_member_that_lost_its_peers_back_to_service() {
    let mut c = Cluster::with_local(3, |_| {});
    let l = c.wait_leader(T).await;
    for i in 0..10 {
        c.node(l).propose(payload(i)).await.unwrap();
    }
    let s = l;
    let lost: Vec<usize> = (0..3).filter(|i| *i != s).collect();
    for i in &lost {
        c.stop_node(*i).await;
    }
    wait_until(T, "the survivor loses leadership", || {
        c.node(s).view().role != Role::Leader
    })
    .await;
    let r = tokio::time::timeout(
        Duration::from_millis(ELECTION_MS * 3),
        c.node(s).propose(payload(10)),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(_))), "a minority accepted a write");
    let m = c
        .node(s)
        .reset_peers(&[PeerRef::Addr(c.addrs[s].clone())])
        .await
        .expect("reset");
    assert_eq!(
        sorted(m.conf.voters.iter().map(|p| p.addr.clone()).collect()),
        addrs(&c, &[s])
    );
    assert!(c.node(s).is_leader());
    c.node(s)
        .propose(payload(11))
        .await
        .expect("writes work again");
    // The reset is in the log: it survives a restart.
    c.stop_node(s).await;
    c.start_node(s);
    wait_until(T, "restarted survivor leads alone", || {
        c.node(s).is_leader()
    })
    .await;
    c.node(s)
        .propose(payload(12))
        .await
        .expect("still writable after restart");
    let data = c.applied_data(s);
    assert!(
        data.contains(&payload(11))
            && data.contains(&payload(12))
            && data.starts_with(&(0..10).map(payload).collect::<Vec<_>>())
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_node_bootstraps_a_one_member_group_once() {
    let mut c = Cluster::new(3);
    let l = c.wait_leader(T).await;
    let s = c.add_spares(1)[0];
    let spare = c.node(s).clone();
    assert_eq!(spare.view().role, Role::Uninitialized);
    assert_eq!(spare.status().await.unwrap().role, Role::Uninitialized);
    spare
        .bootstrap(vec![spare.peer_id()])
        .await
        .expect("bootstrap an empty node");
    wait_until(T, "the one-member group elects its node", || {
        spare.is_leader()
    })
    .await;
    spare
        .propose(payload(1))
        .await
        .expect("a one-member group serves writes");
    let e = spare.bootstrap(vec![spare.peer_id()]).await.unwrap_err();
    assert!(e.to_string().contains("already has data"), "{e}");
    let e = c
        .node(l)
        .bootstrap(vec![c.node(l).peer_id()])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("already has data"),
        "a member bootstrapped again: {e}"
    );
    c.shutdown().await;
}
