//! Snapshots, log compaction and snapshot install, in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::time::Duration;

use bytes::Bytes;
use common::{wait_until, wait_until_async, Cluster, SnapshotFaults};
use raftkit_node::options::NodeOptions;

const T: Duration = Duration::from_secs(20);

fn payload(i: usize) -> Bytes {
    Bytes::from(format!("entry-{i:06}-{}", "p".repeat(180)))
}

/// Frequent snapshots, a short margin, small chunks.
fn snapshot_often(o: &mut NodeOptions) {
    o.snapshot_log_gap = 50;
    o.snapshot_margin = 10;
    o.snapshot_chunk_bytes = 2048;
}

async fn write(c: &Cluster, leader: usize, range: std::ops::Range<usize>) {
    for i in range {
        c.node(leader).propose(payload(i)).await.expect("write");
    }
}

/// Stops follower `f`, writes until the leader's log is compacted past the
/// follower's position, and restarts it.
async fn leave_follower_behind(c: &mut Cluster, l: usize, f: usize, from: usize, to: usize) {
    let f_last = c.node(f).status().await.unwrap().last_log_index;
    c.stop_node(f).await;
    write(c, l, from..to).await;
    let leader = c.node(l).clone();
    wait_until_async(T, "the leader compacts past the stopped follower", || {
        let leader = leader.clone();
        async move { leader.status().await.unwrap().first_log_index > f_last + 1 }
    })
    .await;
    c.start_node(f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_a_compacted_log_catches_up_by_snapshot() {
    let mut c = Cluster::with(3, snapshot_often);
    let l = c.wait_leader(T).await;
    let f = (l + 1) % 3;
    write(&c, l, 0..20).await;
    leave_follower_behind(&mut c, l, f, 20, 300).await;
    let expected: Vec<Bytes> = (0..300).map(payload).collect();
    wait_until(T, "follower has the leader's state", || {
        c.applied_data(f) == expected
    })
    .await;
    let view = c.node(f).snapshot_view();
    assert!(
        view.receive.installs >= 1,
        "the follower caught up without a snapshot: {view:?}"
    );
    // Same state at the same index on leader and follower.
    wait_until(T, "same applied index", || {
        c.node(f).applied_index() == c.node(l).applied_index()
    })
    .await;
    assert_eq!(
        c.records[f].lock().unwrap().applied,
        c.records[l].lock().unwrap().applied
    );
    // And it keeps replicating normally afterwards.
    write(&c, l, 300..310).await;
    let expected: Vec<Bytes> = (0..310).map(payload).collect();
    wait_until(T, "replication continues after the install", || {
        c.applied_data(f) == expected
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_transfer_resumes_and_a_damaged_chunk_is_sent_again() {
    let mut c = Cluster::with(3, snapshot_often);
    let l = c.wait_leader(T).await;
    let f = (l + 1) % 3;
    write(&c, l, 0..20).await;
    // The first transfer breaks after 10 chunks; chunk 15 arrives damaged.
    c.net.set_snapshot_faults(SnapshotFaults {
        cut_after_chunks: Some(10),
        corrupt_chunk: Some(15),
    });
    leave_follower_behind(&mut c, l, f, 20, 400).await;
    let expected: Vec<Bytes> = (0..400).map(payload).collect();
    wait_until(T, "follower has the leader's state", || {
        c.applied_data(f) == expected
    })
    .await;
    let v = c.node(f).snapshot_view();
    assert!(v.receive.installs >= 1, "{v:?}");
    assert!(
        v.receive.resumed >= 1,
        "the broken transfer did not resume: {v:?}"
    );
    assert!(
        v.receive.chunks_rejected >= 1,
        "the damaged chunk was not rejected: {v:?}"
    );
    assert_eq!(
        v.receive.files_rejected, 0,
        "a damaged chunk reached a published file: {v:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_on_demand_restart_and_status() {
    let mut c = Cluster::with_local(3, |o| {
        o.snapshot_log_gap = 0;
        o.snapshot_margin = 5;
    });
    let l = c.wait_leader(T).await;
    write(&c, l, 0..40).await;
    let meta = c.node(l).snapshot().await.expect("on-demand snapshot");
    assert!(meta.index >= 40);
    let st = c.node(l).status().await.unwrap();
    assert_eq!(st.snapshot.last_index, meta.index);
    assert_eq!(st.snapshot_index, meta.index);
    assert_eq!(
        st.first_log_index,
        meta.index - 5 + 1,
        "log compacted to the margin"
    );
    assert!(st.snapshot.last_unix_ms > 0);
    write(&c, l, 40..50).await;
    // Restart everything: snapshot + log rebuild the same state.
    c.shutdown().await;
    for i in 0..3 {
        c.start_node(i);
    }
    let expected: Vec<Bytes> = (0..50).map(payload).collect();
    for i in 0..3 {
        wait_until(T, "state rebuilt from snapshot and log", || {
            c.applied_data(i) == expected
        })
        .await;
    }
    c.shutdown().await;
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_removes_log_files_and_keeps_disk_bounded() {
    let mut c = Cluster::with_local(3, |o| {
        o.snapshot_log_gap = 100;
        o.snapshot_margin = 20;
        o.storage.max_segment_bytes = 4096;
    });
    let l = c.wait_leader(T).await;
    let n = 1500; // about 330 KB of log if nothing were removed
    let mut peak = 0;
    for chunk in 0..(n / 100) {
        write(&c, l, chunk * 100..chunk * 100 + 100).await;
        for i in 0..3 {
            peak = peak.max(dir_bytes(&c.data_dir(i).unwrap().join("log")));
        }
    }
    let written: u64 = (0..n).map(|i| payload(i).len() as u64 + 30).sum();
    assert!(
        peak * 4 < written,
        "log dir peaked at {peak} bytes for {written} bytes written"
    );
    let st = c.node(l).status().await.unwrap();
    assert!(
        st.first_log_index > (n as u64) / 2,
        "log was not compacted: {st:?}"
    );
    c.shutdown().await;
    for i in 0..3 {
        c.start_node(i);
    }
    let expected: Vec<Bytes> = (0..n).map(payload).collect();
    for i in 0..3 {
        wait_until(T, "state recovered after compaction", || {
            c.applied_data(i) == expected
        })
        .await;
    }
    c.shutdown().await;
}

/// A member added after the log was compacted gets the group by snapshot,
/// and with it the cluster's id (the log's first entry, which carries the
/// bootstrap configuration, is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_after_compaction_catches_up_by_snapshot_and_learns_the_cluster_id() {
    let mut c = Cluster::with(3, snapshot_often);
    let l = c.wait_leader(T).await;
    write(&c, l, 0..300).await;
    let leader = c.node(l).clone();
    wait_until_async(T, "the leader compacts its log", || {
        let leader = leader.clone();
        async move { leader.status().await.unwrap().first_log_index > 1 }
    })
    .await;
    let id = leader.cluster_id();
    assert_ne!(id, 0);
    let s = c.add_spares(1)[0];
    assert_eq!(c.node(s).cluster_id(), 0, "an empty replica has none");
    leader
        .add_peer(
            &c.addrs[s],
            raftkit_node::membership::ChangeOptions::default(),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + T;
    while c.node(s).cluster_id() != id {
        assert!(
            std::time::Instant::now() < deadline,
            "the new member reports cluster {:x} (want {id:x}); snapshots {:?}; status {:?}",
            c.node(s).cluster_id(),
            c.node(s).snapshot_view(),
            c.node(s).status().await.map(|s| (
                s.first_log_index,
                s.snapshot_index,
                s.applied_index
            ))
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(c.node(s).snapshot_view().receive.installs >= 1);
    c.shutdown().await;
}
