//! A node that finds its data written in a log format newer than it reads
//! refuses to start and says why (a rollback past a format change); one
//! that finds an older format records the one it writes from now on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_node::node::Node;
use raftkit_node::options::NodeOptions;
use raftkit_node::storage::{self, RaftMeta, StorageOptions, LOG_FORMAT};
use raftkit_testkit::{LocalNetwork, RecordingFsm};

fn options(dir: &std::path::Path) -> NodeOptions {
    let mut o = NodeOptions::new("g".to_string(), "solo.format:7000".to_string());
    o.log_uri = format!("local://{}/log", dir.display());
    o.raft_meta_uri = format!("local://{}/meta", dir.display());
    o.snapshot_uri = format!("local://{}/snapshot", dir.display());
    o
}

fn save_meta(dir: &std::path::Path, meta: &RaftMeta) {
    let mut store = storage::local_meta::open(
        &format!("{}/meta", dir.display()),
        &StorageOptions::default(),
    )
    .unwrap();
    store.save(meta).unwrap();
}

fn load_meta(dir: &std::path::Path) -> RaftMeta {
    storage::local_meta::open(
        &format!("{}/meta", dir.display()),
        &StorageOptions::default(),
    )
    .unwrap()
    .load()
    .unwrap()
    .unwrap()
}

fn fsm() -> Box<RecordingFsm> {
    Box::new(RecordingFsm {
        record: Default::default(),
        apply_delay_ms: Default::default(),
    })
}

#[tokio::test]
async fn a_node_refuses_data_in_a_newer_log_format_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    save_meta(
        dir.path(),
        &RaftMeta {
            peer_id: 0x77,
            term: 3,
            log_format: LOG_FORMAT + 1,
            ..Default::default()
        },
    );
    let net = LocalNetwork::new();
    let e = Node::start(
        options(dir.path()),
        fsm(),
        net.transport("solo.format:7000"),
    )
    .map(|_| ())
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!("log format {}", LOG_FORMAT + 1))
            && text.contains(&format!("up to {LOG_FORMAT}")),
        "{text}"
    );
    assert_eq!(
        load_meta(dir.path()).log_format,
        LOG_FORMAT + 1,
        "left as it was"
    );
}

#[tokio::test]
async fn a_node_on_older_data_records_the_format_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    save_meta(
        dir.path(),
        &RaftMeta {
            peer_id: 0x78,
            log_format: 0,
            ..Default::default()
        },
    );
    let net = LocalNetwork::new();
    let node = Node::start(
        options(dir.path()),
        fsm(),
        net.transport("solo.format:7000"),
    )
    .unwrap();
    assert_eq!(load_meta(dir.path()).log_format, LOG_FORMAT);
    node.shutdown().await;
}
