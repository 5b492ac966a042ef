//! Membership and shutdown across real processes, driven through the
//! `raftkit` CLI as an operator would: scale 3 -> 5 -> 3 while clients
//! write, and SIGTERM the leader under load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::load::CounterLoad;
use common::procs::{free_ports, raft_stat, start_cluster, wait_http_ok, Proc};
use nix::sys::signal::Signal;
use raftkit_client::ClusterClient;

/// How long writers may go without progress at a checkpoint.
const PROGRESS: Duration = Duration::from_secs(10);

fn raftkit(cluster: &[String], args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_raftkit"))
        .args([
            "--cluster",
            &cluster.join(","),
            "--group",
            "counter",
            "--timeout-ms",
            "20000",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).trim().to_string(),
    )
}

/// Waits until `addr` reports `expected` as the voters.
async fn wait_for_voters(addr: &str, expected: &[String], after: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = voters(addr).await;
        if now == sorted(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "configuration at {addr} after {after}: {now:?}, expected {:?}",
            sorted(expected)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn voters(addr: &str) -> Vec<String> {
    let v = raft_stat(addr).await.unwrap();
    let g = v
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "counter")
        .unwrap()
        .clone();
    let mut out: Vec<String> = g["conf"]["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["addr"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_three_to_five_and_back_through_the_cli_while_clients_write() {
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = free_ports(5)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let initial = addrs[..3].to_vec();
    let mut procs = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let mut args = vec!["--election-timeout-ms".to_string(), "1000".into()];
        if i < 3 {
            args.extend(["--initial-conf".to_string(), initial.join(",")]);
        }
        procs.push(Proc::start(
            a,
            &tmp.path().join(format!("n{i}")),
            tmp.path(),
            &args,
        ));
    }
    for p in &procs[..3] {
        assert!(
            wait_http_ok(&p.addr, "/readyz", Duration::from_secs(30)).await,
            "{}",
            p.log_tail(20)
        );
    }
    for p in &procs[3..] {
        assert!(
            wait_http_ok(&p.addr, "/healthz", Duration::from_secs(30)).await,
            "{}",
            p.log_tail(20)
        );
    }
    let client =
        Arc::new(ClusterClient::new(addrs.clone(), "counter", Duration::from_secs(10)).unwrap());
    let load = CounterLoad::start(client.clone(), 4);
    load.wait_for_progress(100, PROGRESS, "before scaling out")
        .await;

    let mut expected = initial.clone();
    for new in &addrs[3..] {
        let (ok, out, err) = raftkit(&initial, &["add-peer", new]);
        assert!(ok, "add-peer {new}: {err}");
        assert!(out.starts_with(&format!("added {new}")), "{out}");
        expected.push(new.clone());
        // The leader applied it; addrs[0] may be a follower a heartbeat behind.
        wait_for_voters(&addrs[0], &expected, &format!("adding {new}")).await;
    }
    load.wait_for_progress(100, PROGRESS, "after scaling out to five")
        .await;
    for gone in [&addrs[1], &addrs[2]] {
        let (ok, out, err) = raftkit(&addrs, &["remove-peer", gone]);
        if !ok {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| {
                    format!(
                        "== {}\n{}",
                        p.addr,
                        p.log_tail(400)
                            .lines()
                            .filter(|l| l.contains("panicked") || l.contains(".rs:"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })
                .collect();
            panic!("remove-peer {gone}: {err}\n{}", logs.join("\n"));
        }
        assert!(out.starts_with(&format!("removed {gone}")), "{out}");
        expected.retain(|a| a != gone);
        wait_for_voters(&addrs[0], &expected, &format!("removing {gone}")).await;
    }
    // The CLI status table shows the final members.
    let (ok, out, _) = raftkit(&expected, &["status"]);
    assert!(ok);
    assert_eq!(
        out.lines().filter(|l| l.contains(" voter ")).count(),
        3,
        "{out}"
    );
    load.wait_for_progress(100, PROGRESS, "after scaling back to three")
        .await;
    load.stop().await.check(&client).await;
    // The three remaining members (two of them added during the run) hold
    // the same state.
    common::assert_replicas_agree(&client, &expected, Duration::from_secs(30)).await;
    for p in procs.iter_mut() {
        p.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_leadership_over_and_clients_see_only_retryable_errors() {
    let mut cluster = start_cluster(3, &[], &[]).await;
    let addrs = cluster.addrs.clone();
    let procs = &mut cluster.procs;
    let client =
        Arc::new(ClusterClient::new(addrs.clone(), "counter", Duration::from_secs(10)).unwrap());
    let load = CounterLoad::start(client.clone(), 4);
    load.wait_for_progress(100, PROGRESS, "before the leader's SIGTERM")
        .await;
    let mut leader = None;
    for (i, a) in addrs.iter().enumerate() {
        let v = raft_stat(a).await.unwrap();
        if v[0]["role"] == "leader" {
            leader = Some(i);
        }
    }
    let l = leader.expect("a leader");
    let status = procs[l]
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
        .expect("the leader exits");
    assert!(
        status.success(),
        "unclean exit: {status:?}\n{}",
        procs[l].log_tail(20)
    );
    assert!(
        procs[l]
            .log_tail(200)
            .contains("leadership handed over before shutdown"),
        "{}",
        procs[l].log_tail(40)
    );
    // The survivors keep serving under the leader the old one chose.
    load.wait_for_progress(200, PROGRESS, "after the leader's SIGTERM")
        .await;
    // The check fails on any error no retry could fix.
    load.stop().await.check(&client).await;
    for p in procs.iter_mut() {
        p.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10));
    }
}
