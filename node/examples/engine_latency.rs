//! Engine-only latency: one replica in this process (no gRPC, no client),
//! proposing sequentially and waiting for each apply.
//!
//!     cargo run --release --example engine_latency -- [local|memory] [sync true|false] [n]
//!
//! Prints p50/p99 of propose-to-applied. Used to split engine cost from RPC
//! cost in docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkit_node::node::Node;
use raftkit_node::options::NodeOptions;
use raftkit_node::state_machine::{ApplyIter, StateMachine};
use raftkit_testkit::LocalNetwork;

struct Echo;

impl StateMachine for Echo {
    fn on_apply(&mut self, entries: ApplyIter<'_>) {
        for e in entries {
            let d = e.data.clone();
            e.respond(Ok(d));
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let storage = args.get(1).map(String::as_str).unwrap_or("local");
    let sync = args.get(2).map(String::as_str) != Some("false");
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let dir = tempfile::tempdir()?;
    let mut o = NodeOptions::new("bench", "engine:1");
    o.initial_conf = vec!["engine:1".into()];
    o.storage.sync = sync;
    if storage == "local" {
        o.log_uri = format!("local://{}/log", dir.path().display());
        o.raft_meta_uri = format!("local://{}/meta", dir.path().display());
        o.snapshot_uri = format!("local://{}/snap", dir.path().display());
    }
    let net = LocalNetwork::new();
    let node = Node::start(o, Box::new(Echo), net.transport("engine:1"))?;
    net.register(&node);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.is_leader() {
        anyhow::ensure!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let data = bytes::Bytes::from(vec![b'v'; 280]);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        node.propose(data.clone()).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let q =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "engine {storage} sync={sync} n={n}: p50={:.3}ms p90={:.3}ms p99={:.3}ms",
        q(0.5),
        q(0.9),
        q(0.99)
    );
    let _ = Arc::new(());
    node.shutdown().await;
    Ok(())
}
