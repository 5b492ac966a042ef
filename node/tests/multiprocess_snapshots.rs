//! Snapshots across real processes: a follower SIGKILLed under load falls
//! behind a compacted log and catches up by snapshot install; a node killed
//! while publishing a snapshot restarts from its previous snapshot plus the
//! log and loses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::procs::{raft_stat, start_cluster, wait_http_ok, ProcCluster};
use nix::sys::signal::Signal;
use raftkit_client::ClusterClient;

struct Cluster {
    c: ProcCluster,
    client: Arc<ClusterClient>,
}

impl std::ops::Deref for Cluster {
    type Target = ProcCluster;
    fn deref(&self) -> &ProcCluster {
        &self.c
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut ProcCluster {
        &mut self.c
    }
}

async fn start(extra: &[&str]) -> Cluster {
    let c = start_cluster(3, extra, &[]).await;
    let client =
        Arc::new(ClusterClient::new(c.addrs.clone(), "counter", Duration::from_secs(5)).unwrap());
    Cluster { c, client }
}

/// (role, first_log_index, last_log_index, applied_index, snapshot json) of the counter group.
async fn group_stat(addr: &str) -> Option<(String, u64, u64, u64, serde_json::Value)> {
    let v = raft_stat(addr).await?;
    let g = v
        .as_array()?
        .iter()
        .find(|g| g["group"] == "counter")?
        .clone();
    Some((
        g["role"].as_str()?.to_string(),
        g["first_log_index"].as_u64()?,
        g["last_log_index"].as_u64()?,
        g["applied_index"].as_u64()?,
        g["snapshot"].clone(),
    ))
}

async fn leader(c: &Cluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, a) in c.addrs.iter().enumerate() {
            if let Some((role, ..)) = group_stat(a).await {
                if role == "leader" {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Default)]
struct Tally {
    acked: u64,
    unknown: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_under_load_catches_up_by_snapshot_and_the_total_is_exact() {
    let mut c = start(&[
        "--snapshot-interval-s",
        "1",
        "--snapshot-log-gap",
        "200",
        "--snapshot-margin",
        "50",
        "--snapshot-chunk-bytes",
        "4096",
    ])
    .await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, tally, stop) = (c.client.clone(), tally.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.fetch_add(1).await {
                    Ok(_) => tally.lock().unwrap().acked += 1,
                    Err(e) if e.is_definitely_not_applied() => {}
                    Err(e) => {
                        eprintln!("fetch_add with unknown outcome: {e}");
                        tally.lock().unwrap().unknown += 1
                    }
                }
            }
        }));
    }
    let acked = |t: &Arc<Mutex<Tally>>| t.lock().unwrap().acked;
    let wait_acked = |n: u64, what: &'static str| {
        let tally = tally.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while tally.lock().unwrap().acked < n {
                assert!(Instant::now() < deadline, "no progress: {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_acked(300, "before the kill").await;
    let l = leader(&c).await;
    let f = (l + 1) % 3;
    let (_, _, f_last, _, _) = group_stat(&c.addrs[f]).await.unwrap();
    c.procs[f].kill9();

    // Write well past the compaction margin until the leader's log no longer
    // holds what the follower needs.
    let target = acked(&tally) + 1500;
    wait_acked(target, "while the follower is down").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, first, ..) = group_stat(&c.addrs[l]).await.unwrap();
        if first > f_last + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leader never compacted past {f_last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    c.procs[f].restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, _, _, applied, snap)) = group_stat(&c.addrs[f]).await {
            let installs = snap["receive"]["installs"].as_u64().unwrap_or(0);
            let leader_applied = group_stat(&c.addrs[l]).await.map_or(0, |s| s.3);
            if installs >= 1 && applied + 200 >= leader_applied {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "restarted follower did not catch up by snapshot:\n{}",
            c.procs[f].log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let final_value = c.client.counter_get().await.unwrap();
    let t = std::mem::take(&mut *tally.lock().unwrap());
    assert_eq!(
        t.unknown, 0,
        "writes with unknown outcome although only a follower was killed"
    );
    assert_eq!(
        final_value as u64, t.acked,
        "counter differs from the acknowledged increments"
    );

    // Every member converges on the same applied index with the same state
    // (the caught-up follower's came from the snapshot, sessions included).
    common::assert_replicas_agree(&c.client, &c.addrs, Duration::from_secs(30)).await;
    for p in c.procs.iter_mut() {
        p.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_while_publishing_a_snapshot_restarts_from_the_previous_one() {
    let mut c = start(&[
        "--snapshot-interval-s",
        "0",
        "--snapshot-log-gap",
        "0",
        "--snapshot-margin",
        "10",
    ])
    .await;
    let mut total = 0i64;
    for _ in 0..100 {
        c.client.fetch_add(1).await.unwrap();
        total += 1;
    }
    let x = 0;
    let addr = c.addrs[x].clone();
    let first = c.client.member_snapshot(&addr).await.unwrap();
    let prev_index = first[0].index;
    assert!(first[0].error.is_empty() && prev_index > 0, "{first:?}");

    // Restart the node armed to die between writing a snapshot and publishing it.
    c.procs[x]
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(10))
        .expect("clean stop");
    c.procs[x].env = vec![(
        "RAFTKIT_FAILPOINTS".into(),
        "snapshot_before_publish=abort".into(),
    )];
    c.procs[x].restart();
    assert!(wait_http_ok(&addr, "/readyz", Duration::from_secs(30)).await);
    for _ in 0..50 {
        c.client.fetch_add(1).await.unwrap();
        total += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while group_stat(&addr).await.map(|s| s.3).unwrap_or(0) < prev_index + 50 {
        assert!(
            Instant::now() < deadline,
            "node did not apply the new writes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = c.client.member_snapshot(&addr).await; // the node dies answering this
    let status = c.procs[x]
        .wait_exit(Duration::from_secs(20))
        .expect("the failpoint killed the node");
    assert!(!status.success());
    let snap_dir = c.procs[x].data_dir.join("counter").join("snapshot");
    let names: Vec<String> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("temp_")),
        "the snapshot being saved should be left unpublished: {names:?}"
    );

    // Restart without the failpoint: the previous snapshot plus the log.
    c.procs[x].env.clear();
    c.procs[x].restart();
    assert!(
        wait_http_ok(&addr, "/readyz", Duration::from_secs(30)).await,
        "{}",
        c.procs[x].log_tail(30)
    );
    let (_, _, _, _, snap) = group_stat(&addr).await.unwrap();
    assert_eq!(
        snap["last_index"].as_u64(),
        Some(prev_index),
        "restarted from a snapshot other than the previous one"
    );
    let names: Vec<String> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("temp_")),
        "leftover temp dir not cleaned: {names:?}"
    );
    assert_eq!(c.client.counter_get().await.unwrap(), total);
    // Its own state is complete too: it can take a snapshot of it.
    let again = c.client.member_snapshot(&addr).await.unwrap();
    assert!(
        again[0].error.is_empty() && again[0].index > prev_index,
        "{again:?}"
    );
    // The value inside the node's own new snapshot is the full total.
    let file = snap_dir
        .join(format!("snapshot_{:020}", again[0].index))
        .join("counter");
    // The value is the first 8 bytes (cluster format 2 appends the count
    // of increments applied).
    let bytes = std::fs::read(&file).unwrap();
    let bytes: [u8; 8] = bytes[..8].try_into().unwrap();
    assert_eq!(
        i64::from_le_bytes(bytes),
        total,
        "the restarted node's own state lost increments"
    );
    for p in c.procs.iter_mut() {
        p.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10));
    }
}
