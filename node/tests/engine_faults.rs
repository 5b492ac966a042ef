//! Engine faults found by reviewing the Ready loop, the I/O thread and
//! recovery against raft-rs 0.7's contract (issue 17). Each test builds the
//! exact interleaving deterministically: a log backend whose appends can be
//! held on their way to disk (`gated://`), the in-process network's
//! interceptor, and crafted on-disk state. (Items 2 and 4 need the engine's
//! internals and are unit tests: `io_worker::tests`, `raft_loop::tests`; item
//! 8 is in `log_recovery.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{wait_until, wait_until_async, Cluster, LocalNetwork, RecordingFsm};
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::eraftpb::{Message, MessageType};
use raftkit_node::error::{PeerId, StorageError};
use raftkit_node::node::Node;
use raftkit_node::options::NodeOptions;
use raftkit_node::storage::{self, LogStorage, RaftMeta, StorageOptions};

// ------------------------------------------------------------ gated://

/// Which `gated://` logs hold their appends, and how many are held now.
#[derive(Default)]
struct Gates {
    closed: HashSet<String>,
    held: HashMap<String, usize>,
    /// Appends still let through before a closed gate holds them.
    passes: HashMap<String, usize>,
}

fn gates() -> &'static (Mutex<Gates>, Condvar) {
    static G: OnceLock<(Mutex<Gates>, Condvar)> = OnceLock::new();
    G.get_or_init(Default::default)
}

/// A `local://` log whose appends wait while its gate is closed: the state
/// on disk is then exactly what a crash at that moment would leave.
struct GatedLog {
    dir: String,
    inner: Box<dyn LogStorage>,
}

fn open_gated(path: &str, opts: &StorageOptions) -> Result<Box<dyn LogStorage>, StorageError> {
    Ok(Box::new(GatedLog {
        dir: path.to_string(),
        inner: storage::local_log::open(path, opts)?,
    }))
}

fn register_gated() {
    storage::register_log_storage("gated", open_gated);
}

fn close_gate(dir: &str) {
    close_gate_after(dir, 0);
}

/// Lets `n` more appends through, then holds the rest.
fn close_gate_after(dir: &str, n: usize) {
    let mut g = gates().0.lock().unwrap();
    g.closed.insert(dir.to_string());
    g.passes.insert(dir.to_string(), n);
}

fn open_gate(dir: &str) {
    let (m, cv) = gates();
    m.lock().unwrap().closed.remove(dir);
    cv.notify_all();
}

fn held(dir: &str) -> usize {
    gates()
        .0
        .lock()
        .unwrap()
        .held
        .get(dir)
        .copied()
        .unwrap_or(0)
}

impl LogStorage for GatedLog {
    fn first_index(&self) -> u64 {
        self.inner.first_index()
    }
    fn last_index(&self) -> u64 {
        self.inner.last_index()
    }
    fn term(&self, index: u64) -> Option<u64> {
        self.inner.term(index)
    }
    fn entries(&self, low: u64, high: u64, max: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(low, high, max)
    }
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let (m, cv) = gates();
        let mut g = m.lock().unwrap();
        let passes = g.passes.get(&self.dir).copied().unwrap_or(0);
        if g.closed.contains(&self.dir) && passes > 0 {
            g.passes.insert(self.dir.clone(), passes - 1);
        } else if g.closed.contains(&self.dir) {
            *g.held.entry(self.dir.clone()).or_default() += 1;
            while g.closed.contains(&self.dir) {
                g = cv.wait(g).unwrap();
            }
            *g.held.entry(self.dir.clone()).or_default() -= 1;
        }
        drop(g);
        self.inner.append(entries)
    }
    fn truncate_suffix(&mut self, last_kept: u64) -> Result<(), StorageError> {
        self.inner.truncate_suffix(last_kept)
    }
    fn truncate_prefix(&mut self, first_kept: u64) -> Result<(), StorageError> {
        self.inner.truncate_prefix(first_kept)
    }
    fn reset(&mut self, next_index: u64, prev_term: u64) -> Result<(), StorageError> {
        self.inner.reset(next_index, prev_term)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        self.inner.sync()
    }
}

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        index,
        term,
        data: data.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn options(group: &str, addr: &str, dir: &std::path::Path, log_scheme: &str) -> NodeOptions {
    let mut o = NodeOptions::new(group.to_string(), addr.to_string());
    o.election_timeout_ms = 1000;
    o.snapshot_interval_s = 0;
    o.log_uri = format!("{log_scheme}://{}/log", dir.display());
    o.raft_meta_uri = format!("local://{}/meta", dir.display());
    o.snapshot_uri = format!("local://{}/snapshot", dir.display());
    o
}

fn start(opts: NodeOptions, net: &LocalNetwork) -> (Node, Arc<Mutex<common::Record>>) {
    let record = Arc::new(Mutex::new(common::Record::default()));
    let fsm = RecordingFsm {
        record: record.clone(),
        apply_delay_ms: Arc::default(),
    };
    let node = Node::start(opts.clone(), Box::new(fsm), net.transport(&opts.addr)).unwrap();
    net.register(&node);
    (node, record)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

// ------------------------------------------------------------ item 1

/// Follower F holds uncommitted term-1 entries 5-6; the first message of a
/// term-2 leader replaces them and says commit 10. Term and vote must be
/// durable before F answers, so the meta is saved at once, while the new
/// entries are still on their way to disk. A crash right then must not leave
/// a meta whose commit covers the old entries 5-6: on restart F would apply
/// entries that were never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_state_saved_before_its_entries_never_records_a_commit_the_log_does_not_hold() {
    raftkit_node::logging::init_test_tracing();
    register_gated();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("f");
    let (f, l, x) = (0xF1u64, 0xA1u64, 0xB1u64);
    let peers: Vec<PeerId> = [
        (f, "f.crafted:7000"),
        (l, "l.crafted:7000"),
        (x, "x.crafted:7000"),
    ]
    .iter()
    .map(|(id, addr)| PeerId {
        id: *id,
        addr: addr.to_string(),
    })
    .collect();

    // F's disk: the bootstrap configuration (1-3) and entry 4, committed,
    // then 5-6 from the term-1 leader that never committed.
    {
        let sopts = StorageOptions::default();
        let mut log = storage::local_log::open(&format!("{}/log", dir.display()), &sopts).unwrap();
        let context = serde_json::to_vec(&peers).unwrap();
        let mut entries: Vec<Entry> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut cc = ConfChangeV2::default();
                cc.set_changes(
                    vec![ConfChangeSingle {
                        node_id: p.id,
                        change_type: ConfChangeType::AddNode,
                        ..Default::default()
                    }]
                    .into(),
                );
                let mut e = Entry {
                    index: i as u64 + 1,
                    term: 1,
                    data: protobuf::Message::write_to_bytes(&cc).unwrap().into(),
                    context: context.clone().into(),
                    ..Default::default()
                };
                e.set_entry_type(EntryType::EntryConfChangeV2);
                e
            })
            .collect();
        entries.push(entry(4, 1, "committed-4"));
        entries.push(entry(5, 1, "old-5"));
        entries.push(entry(6, 1, "old-6"));
        log.append(&entries).unwrap();
        log.sync().unwrap();
        let mut meta_store =
            storage::local_meta::open(&format!("{}/meta", dir.display()), &sopts).unwrap();
        meta_store
            .save(&RaftMeta {
                peer_id: f,
                term: 1,
                vote: 0,
                commit: 4,
                applied: 0,
                initial_conf: peers.clone(),
                cluster_id: 0,
                log_format: 0,
                cluster_format: 0,
            })
            .unwrap();
    }

    let net = LocalNetwork::new();
    let (node, _) = start(options("g", &peers[0].addr, &dir, "gated"), &net);
    wait_until(
        Duration::from_secs(10),
        "F applies the committed entries",
        || node.applied_index() >= 4,
    )
    .await;

    // The term-2 leader's append: replaces 5-6, commit 10. Its write is held.
    let log_dir = format!("{}/log", dir.display());
    close_gate(&log_dir);
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = l;
    m.to = f;
    m.term = 2;
    m.log_term = 1;
    m.index = 4;
    m.commit = 10;
    m.set_entries(
        (5..=10)
            .map(|i| entry(i, 2, &format!("new-{i}")))
            .collect::<Vec<_>>()
            .into(),
    );
    node.step(m, Some(peers[1].addr.clone()));
    wait_until(
        Duration::from_secs(10),
        "the new entries' write is held",
        || held(&log_dir) >= 1,
    )
    .await;

    // The crash: what is on disk now.
    let crashed = root.path().join("crashed");
    copy_dir(&dir, &crashed);
    open_gate(&log_dir);
    node.shutdown().await;

    let meta = storage::local_meta::open(
        &format!("{}/meta", crashed.display()),
        &StorageOptions::default(),
    )
    .unwrap()
    .load()
    .unwrap()
    .unwrap();
    assert_eq!(meta.term, 2, "term 2 was saved before the answer");
    assert!(
        meta.commit <= 4,
        "the saved commit {} covers entries 5-6 of term 1, which the log still holds and which were never committed",
        meta.commit
    );

    // Restarted on the crashed state, F applies only what was committed.
    let net = LocalNetwork::new();
    let (node, record) = start(options("g", &peers[0].addr, &crashed, "local"), &net);
    let status = node.status().await.unwrap();
    assert!(
        status.commit_index <= 4,
        "restarted with commit {}, past the last committed entry 4",
        status.commit_index
    );
    wait_until(Duration::from_secs(10), "F re-applies what it had", || {
        node.applied_index() >= 4
    })
    .await;
    let applied: Vec<String> = record
        .lock()
        .unwrap()
        .applied
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).to_string())
        .collect();
    assert!(
        !applied.iter().any(|d| d.starts_with("old-")),
        "uncommitted term-1 entries were applied: {applied:?}"
    );
    node.shutdown().await;
}

// ------------------------------------------------------------ item 3

/// A follower's read is forwarded to the leader and stays pending there; the
/// follower restarts, a write is acknowledged, and the restarted follower
/// reads. raft-rs drops a read whose context is already pending and later
/// answers the old one: with contexts that start over on every restart, the
/// old request's index (before the write) would answer the new read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_followers_read_is_never_answered_with_its_previous_incarnations_index() {
    let mut c = Cluster::new(3);
    let l = c.wait_leader(Duration::from_secs(10)).await;
    let f = (l + 1) % 3;
    c.node(l).propose("w0").await.unwrap();
    let w0 = c.node(l).applied_index();
    wait_until(Duration::from_secs(10), "F applies w0", || {
        c.node(f).applied_index() >= w0
    })
    .await;

    // Heartbeat answers lose their read context until `confirm`: they still
    // count as contact, but confirm no read.
    let confirm = Arc::new(AtomicBool::new(false));
    let block_appends = Arc::new(AtomicBool::new(false));
    let forwarded = Arc::new(AtomicUsize::new(0));
    {
        let (confirm, block_appends, forwarded) =
            (confirm.clone(), block_appends.clone(), forwarded.clone());
        let f_addr = c.addrs[f].clone();
        c.net
            .set_interceptor(Some(Arc::new(move |from, to, m| match m.get_msg_type() {
                MessageType::MsgHeartbeatResponse if !confirm.load(Ordering::SeqCst) => {
                    m.context = Default::default();
                    true
                }
                MessageType::MsgReadIndex if from == f_addr => {
                    forwarded.fetch_add(1, Ordering::SeqCst);
                    true
                }
                MessageType::MsgAppend | MessageType::MsgSnapshot
                    if to == f_addr && block_appends.load(Ordering::SeqCst) =>
                {
                    false
                }
                _ => true,
            })));
    }

    // F's first read reaches the leader and stays pending; F stops.
    let node_f = c.node(f).clone();
    let first = tokio::spawn(async move { node_f.read_index().await });
    wait_until(
        Duration::from_secs(10),
        "F's read reaches the leader",
        || forwarded.load(Ordering::SeqCst) >= 1,
    )
    .await;
    c.stop_node(f).await;
    let _ = first.await;

    // A write acknowledged after that read began.
    c.node(l).propose("w1").await.unwrap();
    let w1 = c.node(l).applied_index();

    // F comes back (and gets no appends: it cannot apply w1 yet) and reads.
    block_appends.store(true, Ordering::SeqCst);
    c.start_node(f);
    let before = forwarded.load(Ordering::SeqCst);
    let node_f = c.node(f).clone();
    let second = tokio::spawn(async move { node_f.read_index().await });
    wait_until(
        Duration::from_secs(10),
        "the restarted F's read reaches the leader",
        || forwarded.load(Ordering::SeqCst) > before,
    )
    .await;
    confirm.store(true, Ordering::SeqCst);
    match second.await.unwrap() {
        Ok(index) => assert!(
            index >= w1,
            "the read was answered at index {index}, before the write acknowledged at {w1} (applied here: {})",
            c.node(f).applied_index()
        ),
        // It cannot apply w1 without appends: a correct read waits.
        Err(e) => assert_eq!(e.kind(), "timeout", "unexpected error: {e}"),
    }

    // With appends back, F reads at or after w1.
    block_appends.store(false, Ordering::SeqCst);
    let index = c.node(f).read_index().await.unwrap();
    assert!(index >= w1, "read index {index} < {w1}");
    assert!(c.node(f).applied_index() >= w1);
    c.net.set_interceptor(None);
    c.shutdown().await;
}

// ------------------------------------------------------------ item 5

fn pre_vote(from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestPreVote);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// An empty replica answers a few pre-votes (its Ready numbers advance),
/// then bootstraps, which re-creates raft and restarts the numbering. A
/// write held on its way to disk must then stay uncommitted, however the
/// counters of the old numbering compare with the new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrapped_replica_never_counts_a_write_in_flight_as_durable() {
    raftkit_node::logging::init_test_tracing();
    register_gated();
    let root = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new();
    let (node, _) = start(options("g", "solo.gated:7000", root.path(), "gated"), &net);
    // Answers to the pre-votes go to another empty replica, which ignores
    // them; counting them shows the Readys that carried them.
    let (other, _) = start(
        options("g", "other.gated:7000", &root.path().join("other"), "local"),
        &net,
    );
    let answers = Arc::new(AtomicUsize::new(0));
    {
        let answers = answers.clone();
        net.set_interceptor(Some(Arc::new(move |_, _, m| {
            if m.get_msg_type() == MessageType::MsgRequestPreVoteResponse {
                answers.fetch_add(1, Ordering::SeqCst);
            }
            true
        })));
    }
    let me = node.peer_id();
    // (A replica ignores vote requests for an election timeout after it
    // starts; the first answers come after that.)
    wait_until_async(
        Duration::from_secs(10),
        "the empty replica answered 20 pre-votes",
        || {
            let node = node.clone();
            let answers = answers.clone();
            async move {
                node.step(pre_vote(77, me.id, 5), Some("other.gated:7000".into()));
                node.status().await.unwrap();
                answers.load(Ordering::SeqCst) >= 20
            }
        },
    )
    .await;
    net.set_interceptor(None);
    other.shutdown().await;
    // The bootstrap's own write (the configuration) goes through; the
    // next one, the new leader's first entry, is held.
    let log_dir = format!("{}/log", root.path().display());
    close_gate_after(&log_dir, 1);
    node.bootstrap(vec![me.clone()]).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the leader's first entry is held",
        || held(&log_dir) >= 1,
    )
    .await;
    let status = node.status().await.unwrap();
    assert!(node.is_leader());
    let index = status.last_log_index;
    // A Ready with nothing to write while that write is in flight (the
    // answer to a stale pre-vote).
    node.step(pre_vote(77, me.id, status.term - 1), None);
    let status = node.status().await.unwrap();
    assert!(
        status.commit_index < index,
        "entry {index} committed (commit {}) while its write is still held",
        status.commit_index
    );
    open_gate(&log_dir);
    wait_until(
        Duration::from_secs(10),
        "the entry commits once written",
        || node.applied_index() >= index,
    )
    .await;
    node.propose("after").await.unwrap();
    node.shutdown().await;
}

// ------------------------------------------------------------ item 6

fn slow_ticks(o: &mut NodeOptions) {
    // One tick is a tenth of this: 6 s.
    o.election_timeout_ms = 60_000;
}

/// A one-member group commits and applies each write as soon as it is
/// durable, not at the next tick (the operator bootstraps every cluster as
/// one member). With 6 s ticks, five writes that each waited for a tick
/// would take at least 24 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_member_group_applies_each_write_without_waiting_for_a_tick() {
    let mut c = Cluster::with(1, slow_ticks);
    c.wait_leader(Duration::from_secs(10)).await;
    let started = Instant::now();
    for i in 0..5 {
        // Proposed from a plain thread, as the node server's network threads
        // do: the leader then writes its entry there (the inline path).
        let (done, rx) = raftkit_node::closure::Done::channel();
        let node = c.node(0).clone();
        std::thread::spawn(move || {
            node.apply(raftkit_node::closure::Task::new(format!("w{i}"), done))
        })
        .join()
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap_or_else(|_| panic!("write {i} waited more than 5 s"))
            .unwrap()
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "five writes took {:?}",
        started.elapsed()
    );
    c.shutdown().await;
}

// ------------------------------------------------------------ item 7

fn lagging_apply(o: &mut NodeOptions) {
    o.snapshot_margin = 0;
}

/// A follower is sent a snapshot whose last entry its log already holds
/// (it caught up by appends while the transfer ran, but has not applied
/// that far). raft-rs ignores such a snapshot. It must not be published
/// either: a published snapshot raft never took is one the node would
/// offer, load on restart and compare against, though raft's log is not
/// based on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_raft_ignores_is_never_published() {
    use raftkit_node::snapshot_install::{InstallProgress, SnapshotJob, Throttle};

    let mut c = Cluster::with(3, lagging_apply);
    let l = c.wait_leader(Duration::from_secs(10)).await;
    let f = (l + 1) % 3;
    // 1 s per entry: F must still be applying when the snapshot arrives,
    // even on a loaded machine (at 100 ms it once caught up first).
    c.set_apply_delay(f, 1000);
    for i in 0..10 {
        c.node(l).propose(format!("w{i}")).await.unwrap();
    }
    let snap = c.node(l).snapshot().await.unwrap();
    // F holds every entry but has applied less than the snapshot.
    wait_until_async(
        Duration::from_secs(10),
        "F's log holds the snapshot's entry",
        || {
            let n = c.node(f).clone();
            async move {
                n.status()
                    .await
                    .is_ok_and(|s| s.disk_index >= snap.index && s.commit_index >= snap.index)
            }
        },
    )
    .await;
    assert!(c.node(f).applied_index() < snap.index, "F applied too fast");

    // Send F the leader's snapshot as raft-rs would.
    let leader_snaps =
        storage::open_snapshot_storage(&c.options(l).snapshot_uri, &StorageOptions::default())
            .unwrap();
    let source = Arc::new(
        leader_snaps
            .latest()
            .unwrap()
            .unwrap()
            .open_source()
            .unwrap(),
    );
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgSnapshot);
    msg.from = c.node(l).peer_id().id;
    msg.to = c.node(f).peer_id().id;
    msg.term = c.node(l).view().term;
    let md = msg.mut_snapshot().mut_metadata();
    md.index = snap.index;
    md.term = snap.term;
    md.set_conf_state(snap.conf.to_conf_state());
    msg.mut_snapshot().data = serde_json::to_vec(&snap).unwrap().into();
    let job = SnapshotJob {
        group: c.group.clone(),
        to: c.node(f).peer_id(),
        msg,
        source: source.clone(),
        chunk_bytes: 1 << 20,
        throttle: Arc::new(Throttle::new(0)),
        progress: Arc::new(InstallProgress {
            peer: c.node(f).peer_id(),
            index: snap.index,
            bytes_total: 0,
            bytes_sent: Default::default(),
            attempts: Default::default(),
            started_unix_ms: 0,
        }),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    c.net.transport(&c.addrs[l]).install_snapshot(
        job,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    let sent = rx.await.unwrap();
    assert!(sent.is_ok(), "transfer failed: {sent:?}");
    // Ordered after the snapshot message on F's raft thread.
    let status = c.node(f).status().await.unwrap();
    let f_snaps =
        storage::open_snapshot_storage(&c.options(f).snapshot_uri, &StorageOptions::default())
            .unwrap();
    let published = f_snaps.latest().unwrap().map(|r| r.meta().index);
    assert!(
        published.is_none() || published == Some(status.snapshot_index),
        "F published snapshot {published:?} but raft's snapshot is at {}",
        status.snapshot_index
    );
    c.set_apply_delay(f, 0);
    c.shutdown().await;
}
