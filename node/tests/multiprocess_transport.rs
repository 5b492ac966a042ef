//! The raft and mux streams between real processes: the port they share
//! with gRPC and HTTP turns away junk without harm, and a follower that stops reading
//! (SIGSTOP, its sockets left open) catches up once it resumes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;

use common::procs::{first_group_leader, raft_stat, start_cluster, wait_http_ok, ProcCluster};
use nix::sys::signal::Signal;
use raftkit_client::ClusterClient;
use raftkit_node::services::mux::MUX_PREFACE;
use raftkit_node::transport::stream::{encode_preface, PREFACE};

async fn leader(c: &ProcCluster) -> usize {
    first_group_leader(c).await
}

async fn applied(addr: &str) -> Option<u64> {
    raft_stat(addr).await?[0]["applied_index"].as_u64()
}

/// Writes `bytes` on a new connection to `addr` and waits until the server
/// closes it.
fn closed_by_server(addr: &str, bytes: &[u8]) -> bool {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    conn.write_all(bytes).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            // A reset is a close too; a timeout is not.
            Err(e) => {
                return e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_port_turns_away_junk_and_keeps_serving() {
    let mut c = start_cluster(3, &[], &[]).await;
    let client = ClusterClient::new(c.addrs.clone(), "counter", Duration::from_secs(10)).unwrap();
    client.fetch_add(1).await.unwrap();
    let target = c.addrs[leader(&c).await].clone();

    let t = target.clone();
    let junk = tokio::task::spawn_blocking(move || {
        // Starts like a raft stream, is not one.
        let wrong_preface = closed_by_server(&t, b"RUBBISH, not a raft stream\r\n");
        // A valid preface, then a frame claiming 1 GiB.
        let mut huge = encode_preface("127.0.0.1:1").unwrap();
        huge.extend_from_slice(&(1u32 << 30).to_be_bytes());
        let oversized = closed_by_server(&t, &huge);
        // A valid preface, then a frame whose message does not decode.
        let mut garbage = encode_preface("127.0.0.1:1").unwrap();
        garbage.extend_from_slice(&[0, 0, 0, 11, 0, 7, b'c', b'o', b'u', b'n', b't', b'e', b'r']);
        garbage.extend_from_slice(&[0xff, 0xff]);
        let undecodable = closed_by_server(&t, &garbage);
        // A client mux stream, then a request frame claiming 1 GiB.
        let mut mux = MUX_PREFACE.to_vec();
        mux.extend_from_slice(&(1u32 << 30).to_be_bytes());
        let oversized_call = closed_by_server(&t, &mux);
        (wrong_preface, oversized, undecodable, oversized_call)
    })
    .await
    .unwrap();
    assert_eq!(
        junk,
        (true, true, true, true),
        "the server closes (wrong preface, oversized frame, undecodable message, \
         oversized mux request)"
    );
    assert_eq!(PREFACE[0], b'R');

    // HTTP, gRPC and raft traffic on the same port still work.
    assert!(wait_http_ok(&target, "/healthz", Duration::from_secs(5)).await);
    for _ in 0..20 {
        client.fetch_add(1).await.expect("writes still commit");
    }
    assert_eq!(client.counter_get().await.unwrap(), 21);
    c.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_stops_reading_catches_up_after_it_resumes() {
    let mut c = start_cluster(3, &["--groups", "kv:kv"], &[]).await;
    let kv = ClusterClient::new(c.addrs.clone(), "kv", Duration::from_secs(10)).unwrap();
    kv.put(Bytes::from("k0"), Bytes::from("v")).await.unwrap();
    let l = leader(&c).await;
    let f = (l + 1) % 3;
    let pid = c.procs[f].pid().unwrap();
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    // Writes go on with two members for longer than the leader's link
    // waits on a peer that does not read (3 s), with values large enough
    // to fill the stopped follower's socket buffers.
    let value = Bytes::from(vec![7u8; 64 << 10]);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(5) {
        kv.put(Bytes::from(format!("k{n}")), value.clone())
            .await
            .expect("two members still commit");
        n += 1;
    }
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap();
    assert!(n > 20, "only {n} writes in 5 s");
    let target = applied(&c.addrs[l]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if applied(&c.addrs[f]).await.is_some_and(|a| a >= target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed follower did not catch up to index {target}:\n{}",
            c.procs[f].log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.stop_all();
}
