//! `/livez` and `/readyz` in the terms an operator decides on, across real
//! processes: a restarted follower is alive but not ready until it has
//! caught up; an empty replica is alive and not a member until it is added.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::procs::{
    first_group_leader, free_ports, raft_stat, start_cluster, wait_hosting, wait_http_ok, Proc,
};
use raftkit_client::ClusterClient;

/// `GET /readyz`: the status code and the JSON body.
async fn readyz(addr: &str) -> Option<(u16, serde_json::Value)> {
    let (code, body) = raftkit_client::probe::probe(addr, "/readyz").await.ok()?;
    Some((code, serde_json::from_str(&body).ok()?))
}

async fn applied(addr: &str) -> u64 {
    raft_stat(addr)
        .await
        .map_or(0, |v| v[0]["applied_index"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_is_alive_but_not_ready_until_it_has_caught_up() {
    let mut c = start_cluster(3, &["--groups", "kv:kv"], &[]).await;
    let l = first_group_leader(&c).await;
    let f = (l + 1) % 3;
    c.procs[f].kill9();

    // 20,000 writes land while it is down.
    let client =
        Arc::new(ClusterClient::new(c.addrs.clone(), "kv", Duration::from_secs(20)).unwrap());
    let mut tasks = Vec::new();
    for t in 0..32u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..625u32 {
                client
                    .put(
                        Bytes::from(format!("k{t}-{i}")),
                        Bytes::from_static(b"0123456789abcdef"),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let leader_stat = raft_stat(&c.addrs[l]).await.unwrap();
    let target = leader_stat[0]["commit_index"].as_u64().unwrap();
    assert!(target >= 20_000, "commit index {target}");
    let margin = 1000; // the default catch-up margin
                       // The typed view lists the stopped member, unreachable, not caught up.
    let status = client.cluster_status().await;
    let down = status
        .members
        .iter()
        .find(|m| m.addr == c.addrs[f])
        .expect("the stopped member is listed");
    assert!(!down.reachable && !down.caught_up, "{down:?}");
    assert!(down.voter);
    assert_eq!(status.members.len(), 3);

    c.procs[f].restart();
    let addr = c.addrs[f].clone();
    assert!(
        wait_http_ok(&addr, "/livez", Duration::from_secs(30)).await,
        "the restarted node does not serve"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reasons = Vec::new();
    loop {
        // Alive all along.
        let (live, _) = raftkit_client::probe::probe(&addr, "/livez").await.unwrap();
        assert_eq!(live, 200);
        if let Some((code, body)) = readyz(&addr).await {
            if code == 200 {
                let applied = applied(&addr).await;
                assert!(
                    applied + margin >= target,
                    "ready at applied {applied}, more than {margin} behind the leader's commit {target} when it restarted (seen before: {reasons:?})"
                );
                assert_eq!(body["groups"][0]["reason"], "ready", "{body}");
                break;
            }
            assert_eq!(code, 503);
            // ("starting": the server answers before its groups start.)
            let reason = body["groups"][0]["reason"]
                .as_str()
                .or(body["reason"].as_str())
                .unwrap_or("")
                .to_string();
            assert!(
                ["starting", "catching_up", "no_leader"].contains(&reason.as_str()),
                "unexpected reason: {body}"
            );
            if reasons.last() != Some(&reason) {
                reasons.push(reason);
            }
        }
        assert!(
            Instant::now() < deadline,
            "never ready; reasons seen: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And the leader counts it caught up again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.cluster_status().await;
        let m = status.members.iter().find(|m| m.addr == addr).unwrap();
        if m.reachable && m.caught_up {
            assert!(m.version.is_some() && m.max_log_format.is_some(), "{m:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not caught up in cluster_status: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_replica_is_alive_and_not_a_member_until_it_is_added() {
    let c = start_cluster(3, &["--groups", "kv:kv"], &[]).await;
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut spare = Proc::start(
        &addr,
        &c.tmp.path().join("spare"),
        c.tmp.path(),
        &["--groups".to_string(), "kv:kv".to_string()],
    );
    assert!(wait_hosting(&addr, "kv", Duration::from_secs(30)).await);
    let (code, body) = readyz(&addr).await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["groups"][0]["group"], "kv");
    assert_eq!(body["groups"][0]["reason"], "not_a_member", "{body}");

    let client = ClusterClient::new(c.addrs.clone(), "kv", Duration::from_secs(30)).unwrap();
    let ident = client.identity(&addr).await.unwrap();
    assert_eq!(
        ident.state,
        raftkit_client::IdentityState::Empty,
        "{ident:?}"
    );
    assert_eq!(ident.group, "kv");
    assert!(ident.id != 0 && ident.version.is_some());
    let member = client.identity(&c.addrs[0]).await.unwrap();
    assert_eq!(member.state, raftkit_client::IdentityState::Member);
    assert_eq!(member.voters.len(), 3);
    client.add_peer(&addr, None, 0).await.unwrap();
    assert!(
        wait_http_ok(&addr, "/readyz", Duration::from_secs(30)).await,
        "the added replica did not become ready: {:?}",
        readyz(&addr).await
    );
    let ident = client.identity(&addr).await.unwrap();
    assert_eq!(ident.state, raftkit_client::IdentityState::Member);
    spare.kill9();
}
