//! The cluster format across a rolling upgrade, with real processes: a
//! member capped at the old format (`--max-cluster-format 1`, standing for
//! an older build) holds the group at it, every member applies alike, and
//! once it is restarted uncapped the leader raises the format and the
//! behaviour it gates (the counter counts its increments) begins, on every
//! member at the same entry. A replica that cannot apply the group's format
//! is refused by `add_learner`, and one that meets a newer format entry in
//! its log stops applying and says why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::time::{Duration, Instant};

use common::procs::{free_ports, wait_hosting, wait_http_ok, Proc};
use raftkit_client::{AdminClient, ClusterClient, ErrorKind};
use raftkit_node::pb::counter_client::CounterClient;
use raftkit_node::pb::CounterGetRequest;

fn args(conf: &[String], capped: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "--groups",
        "counter:counter",
        "--initial-conf",
        &conf.join(","),
        "--election-timeout-ms",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if capped {
        a.extend(["--max-cluster-format".to_string(), "1".to_string()]);
    }
    a
}

/// The counter's increment count, read from the leader.
async fn ops(client: &ClusterClient, addrs: &[String]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Any member answers after a read barrier; a follower redirects.
        for a in addrs {
            let Ok(mut c) = CounterClient::connect(format!("http://{a}")).await else {
                continue;
            };
            if let Ok(r) = c
                .get(CounterGetRequest {
                    group: "counter".into(),
                    ..Default::default()
                })
                .await
            {
                return r.into_inner().ops;
            }
        }
        assert!(Instant::now() < deadline, "no member answers get");
        let _ = client.counter_get().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_ready(p: &Proc) {
    assert!(
        wait_http_ok(&p.addr, "/readyz", Duration::from_secs(30)).await,
        "{} not ready:\n{}",
        p.addr,
        p.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_cluster_keeps_the_old_format_until_the_last_member_is_upgraded() {
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = free_ports(3)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut procs: Vec<Proc> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Proc::start(
                a,
                &tmp.path().join(format!("n{i}")),
                tmp.path(),
                &args(&addrs, i == 2),
            )
        })
        .collect();
    for p in &procs {
        wait_ready(p).await;
    }
    let admin = AdminClient::new(addrs.clone(), "counter", Duration::from_secs(30)).unwrap();
    let client = ClusterClient::new(addrs.clone(), "counter", Duration::from_secs(30)).unwrap();

    // Mixed: writes land for several of the leader's format checks (1 s
    // apart), and the format stays where the capped member is.
    let until = Instant::now() + Duration::from_secs(4);
    let mut total = 0;
    while Instant::now() < until {
        client.fetch_add(1).await.unwrap();
        total += 1;
        let s = admin.cluster_status().await;
        assert_eq!(s.cluster_format, Some(1), "raised past a capped member");
    }
    assert_eq!(ops(&client, &addrs).await, 0, "counted before format 2");
    common::assert_replicas_agree(&client, &addrs, Duration::from_secs(30)).await;

    // A replica that supports only format 1 may still join a format-1 group.
    // The upgrade: the capped member restarts without the cap.
    procs[2].kill9();
    procs[2].args = args(&addrs, false);
    procs[2].restart();
    wait_ready(&procs[2]).await;
    common::wait_until_async(Duration::from_secs(30), "the format rises to 2", || async {
        let s = admin.cluster_status().await;
        s.cluster_format == Some(2) && s.members.iter().all(|m| m.reachable)
    })
    .await;
    for _ in 0..20 {
        client.fetch_add(1).await.unwrap();
        total += 1;
    }
    assert_eq!(client.counter_get().await.unwrap(), total);
    assert_eq!(ops(&client, &addrs).await, 20, "counted from format 2 on");
    common::assert_replicas_agree(&client, &addrs, Duration::from_secs(30)).await;
    for a in &addrs {
        let s = common::procs::raft_stat(a).await.unwrap();
        assert_eq!(s[0]["cluster_format"], 2, "{a}: {s}");
    }

    // A replica capped at format 1 can no longer join.
    let spare_addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let spare = Proc::start(
        &spare_addr,
        &tmp.path().join("spare"),
        tmp.path(),
        &[
            "--groups".to_string(),
            "counter:counter".to_string(),
            "--max-cluster-format".to_string(),
            "1".to_string(),
        ],
    );
    // Not /livez: the process serves before its group starts, and an
    // add_learner then is refused for that reason instead.
    assert!(wait_hosting(&spare.addr, "counter", Duration::from_secs(30)).await);
    let e = admin.add_learner(&spare.addr, None).await.unwrap_err();
    assert!(
        e.kind() == ErrorKind::InvalidArgument
            && e.to_string()
                .contains("supports cluster formats up to 1, but this group runs format 2"),
        "{e} (kind {:?})",
        e.kind()
    );
    assert!(e.is_definitely_not_applied());
}

/// A member that meets a format entry newer than it applies stops applying
/// (before that entry) and says why; told on start by its meta, it refuses
/// to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_meets_a_newer_format_stops_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let conf = [addr.clone()];
    let mut p = Proc::start(
        &addr,
        &tmp.path().join("n0"),
        tmp.path(),
        &args(&conf, false),
    );
    wait_ready(&p).await;
    let admin = AdminClient::new(conf.to_vec(), "counter", Duration::from_secs(30)).unwrap();
    let client = ClusterClient::new(conf.to_vec(), "counter", Duration::from_secs(30)).unwrap();
    // Alone, the leader raises the format at once.
    common::wait_until_async(Duration::from_secs(20), "format 2", || async {
        admin.cluster_status().await.cluster_format == Some(2)
    })
    .await;
    client.fetch_add(5).await.unwrap();
    let meta_uri = format!(
        "local://{}",
        tmp.path().join("n0").join("counter").join("meta").display()
    );
    let mut store =
        raftkit_node::storage::open_meta_storage(&meta_uri, &Default::default()).unwrap();
    common::wait_until_async(Duration::from_secs(10), "the meta records format 2", || {
        let m = store.load().unwrap().unwrap();
        async move { m.cluster_format == 2 }
    })
    .await;

    // Rolled back to a build capped at format 1: the meta says the log
    // holds format 2, so it refuses to start.
    p.kill9();
    p.args = args(&conf, true);
    p.restart();
    let status = p.wait_exit(Duration::from_secs(20)).expect("it exits");
    assert!(!status.success());
    assert!(
        p.log_tail(5).contains("committed cluster format 2, newer than this node applies (up to 1, capped by --max-cluster-format)"),
        "{}",
        p.log_tail(5)
    );

    // Had the meta not recorded it yet (it is written lazily), the node
    // starts, replays its log and stops applying at the format entry.
    let mut meta = store.load().unwrap().unwrap();
    meta.cluster_format = 0;
    store.save(&meta).unwrap();
    p.restart();
    common::wait_until_async(Duration::from_secs(20), "it stops applying", || async {
        matches!(
            raftkit_client::probe::probe(&addr, "/livez").await,
            Ok((code, _)) if code != 200
        )
    })
    .await;
    let (_, body) = raftkit_client::probe::probe(&addr, "/readyz")
        .await
        .unwrap();
    assert!(
        body.contains("sets cluster format 2, newer than this node applies (up to 1)"),
        "{body}"
    );
    // The counter's write (after the format entry) was never applied.
    let stat = common::procs::raft_stat(&addr).await.unwrap();
    assert_eq!(stat[0]["cluster_format"], 1, "{stat}");
    p.kill9();
}
