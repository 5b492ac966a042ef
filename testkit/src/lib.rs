//! Shared test support for RaftKit, used as a dev-dependency by every crate
//! whose tests run clusters:
//!
//! ```text
//!  lib.rs             in-process clusters: nodes over a LocalNetwork with
//!                     named memory:// (or local://) storages, so a node can be
//!                     stopped and started on the same "disk"; a recording
//!                     state machine; wait loops; the counter checker; replica
//!                     digests
//!  procs.rs           raftkit-node processes on 127.0.0.1: start, kill,
//!                     signal, restart, clusters, HTTP probes
//!  linearizability.rs a Wing-Gong-Lowe checker for register histories
//!  conformance.rs     the storage conformance suite every backend must pass
//!                     (public: backends outside the engine run it too)
//!  local_network.rs   the in-process network (LocalNetwork): link cuts,
//!                     isolation, drop rate, an interceptor, snapshot
//!                     transfer faults; on the engine's Transport trait
//!  load.rs            a counter workload and the checks of its history
//!  docker.rs          container tests: the engine check, the image built by
//!                     e2e/build-image.sh, a scope that removes what a test made
//! ```
//!
//! Test support panics on what it cannot set up (that fails the test with
//! the reason), hence `unwrap` and `expect` here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod conformance;
pub mod docker;
pub mod linearizability;
pub mod load;
pub mod local_network;
pub mod procs;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkit_node::error::RaftError;
use raftkit_node::node::Node;
use raftkit_node::options::NodeOptions;
use raftkit_node::state_machine::{ApplyIter, StateMachine};
use raftkit_node::storage::{SnapshotReader, SnapshotWriter};

pub use local_network::{Interceptor, LocalNetwork, SnapshotFaults};

/// What the recording state machine saw.
#[derive(Default, Debug, Clone)]
pub struct Record {
    /// (index, data) of every applied entry, in order.
    pub applied: Vec<(u64, Bytes)>,
    /// (term, number of entries applied when on_leader_start ran).
    pub leader_starts: Vec<(u64, usize)>,
    pub leader_stops: usize,
    pub start_following: usize,
    pub stop_following: usize,
    /// (leader address, term) of every on_start_following.
    pub following: Vec<(String, u64)>,
    pub shutdowns: usize,
    pub errors: Vec<String>,
    /// (index, voter addresses) of every on_configuration_committed.
    pub confs: Vec<(u64, Vec<String>)>,
}

/// Applies every entry by recording it; answers with the entry's own data.
pub struct RecordingFsm {
    pub record: Arc<Mutex<Record>>,
    /// Delay per applied entry in ms, to make the apply thread lag.
    pub apply_delay_ms: Arc<AtomicU64>,
}

impl StateMachine for RecordingFsm {
    fn on_apply(&mut self, entries: ApplyIter<'_>) {
        for e in entries {
            assert!(
                e.data.as_ref() != b"panic!",
                "state machine bug triggered on purpose"
            );
            let delay = self.apply_delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            self.record
                .lock()
                .unwrap()
                .applied
                .push((e.index, e.data.clone()));
            let data = e.data.clone();
            e.respond(Ok(data));
        }
    }

    fn on_snapshot_save(
        &mut self,
        mut writer: SnapshotWriter,
        done: raftkit_node::state_machine::SnapshotDone,
    ) {
        let rec = self.record.lock().unwrap();
        let mut out = Vec::new();
        for (i, d) in &rec.applied {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&(d.len() as u32).to_le_bytes());
            out.extend_from_slice(d);
        }
        drop(rec);
        match writer.write_file("entries", &out) {
            Ok(()) => done.run(Ok(writer)),
            Err(e) => done.run(Err(e.to_string())),
        }
    }

    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        let data = reader.read_file("entries").map_err(|e| e.to_string())?;
        let mut applied = Vec::new();
        let mut p = 0;
        while p < data.len() {
            let i = u64::from_le_bytes(data[p..p + 8].try_into().unwrap());
            let n = u32::from_le_bytes(data[p + 8..p + 12].try_into().unwrap()) as usize;
            applied.push((i, Bytes::copy_from_slice(&data[p + 12..p + 12 + n])));
            p += 12 + n;
        }
        self.record.lock().unwrap().applied = applied;
        Ok(())
    }

    fn on_leader_start(&mut self, term: u64) {
        let mut r = self.record.lock().unwrap();
        let n = r.applied.len();
        r.leader_starts.push((term, n));
    }

    fn on_leader_stop(&mut self, _reason: &RaftError) {
        self.record.lock().unwrap().leader_stops += 1;
    }

    fn on_start_following(&mut self, ctx: &raftkit_node::state_machine::LeaderChangeContext) {
        let mut r = self.record.lock().unwrap();
        r.start_following += 1;
        r.following.push((ctx.leader.addr.clone(), ctx.term));
    }

    fn on_stop_following(&mut self, _ctx: &raftkit_node::state_machine::LeaderChangeContext) {
        self.record.lock().unwrap().stop_following += 1;
    }

    fn on_error(&mut self, error: &RaftError) {
        self.record.lock().unwrap().errors.push(error.to_string());
    }

    fn on_configuration_committed(
        &mut self,
        conf: &raftkit_node::state_machine::Configuration,
        index: u64,
    ) {
        let mut v: Vec<String> = conf.voters.iter().map(|p| p.addr.clone()).collect();
        v.sort();
        self.record.lock().unwrap().confs.push((index, v));
    }

    fn on_shutdown(&mut self) {
        self.record.lock().unwrap().shutdowns += 1;
    }
}

/// Polls `cond` until it holds or `timeout` passes; panics with `what`.
pub async fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`wait_until`] with an async condition.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub const ELECTION_MS: u64 = 300;

/// An in-process cluster of recording state machines.
pub struct Cluster {
    pub net: LocalNetwork,
    pub group: String,
    pub addrs: Vec<String>,
    pub nodes: Vec<Option<Node>>,
    pub records: Vec<Arc<Mutex<Record>>>,
    /// Per-node apply delay (ms per entry); kept across restarts.
    pub apply_delays: Vec<Arc<AtomicU64>>,
    tag: String,
    pub tweak: fn(&mut NodeOptions),
    /// With local storage: the directory holding every node's data.
    pub root: Option<tempfile::TempDir>,
    /// Nodes `0..initial` form the group; the others start empty and wait to be added.
    pub initial: usize,
}

fn no_tweak(_: &mut NodeOptions) {}

impl Cluster {
    pub fn new(n: usize) -> Self {
        Self::with(n, no_tweak)
    }

    pub fn with(n: usize, tweak: fn(&mut NodeOptions)) -> Self {
        Self::build(n, tweak, false)
    }

    /// Like [`Cluster::with`] but on `local://` storage in a temporary directory.
    pub fn with_local(n: usize, tweak: fn(&mut NodeOptions)) -> Self {
        Self::build(n, tweak, true)
    }

    fn build(n: usize, tweak: fn(&mut NodeOptions), local: bool) -> Self {
        raftkit_node::logging::init_test_tracing();
        let tag = format!("{:016x}", rand::random::<u64>());
        let addrs: Vec<String> = (0..n).map(|i| format!("node{i}.{tag}:7000")).collect();
        let mut c = Cluster {
            net: LocalNetwork::new(),
            group: "test".into(),
            addrs,
            nodes: (0..n).map(|_| None).collect(),
            records: (0..n).map(|_| Arc::default()).collect(),
            apply_delays: (0..n).map(|_| Arc::default()).collect(),
            tag,
            tweak,
            root: local.then(|| tempfile::tempdir().unwrap()),
            initial: n,
        };
        for i in 0..n {
            c.start_node(i);
        }
        c
    }

    pub fn options(&self, i: usize) -> NodeOptions {
        let mut o = NodeOptions::new(self.group.clone(), self.addrs[i].clone());
        if i < self.initial {
            o.initial_conf = self.addrs[..self.initial].to_vec();
        }
        o.election_timeout_ms = ELECTION_MS;
        o.read_timeout_ms = 2000;
        o.snapshot_interval_s = 0;
        match &self.root {
            Some(root) => {
                let dir = self.data_dir(i).unwrap();
                let _ = root;
                o.log_uri = format!("local://{}/log", dir.display());
                o.raft_meta_uri = format!("local://{}/meta", dir.display());
                o.snapshot_uri = format!("local://{}/snapshot", dir.display());
            }
            None => {
                let name = format!("{}-{i}", self.tag);
                o.log_uri = format!("memory://{name}");
                o.raft_meta_uri = format!("memory://{name}");
                o.snapshot_uri = format!("memory://{name}");
            }
        }
        (self.tweak)(&mut o);
        o
    }

    /// Adds `n` empty nodes (not members) to the network; returns their positions.
    pub fn add_spares(&mut self, n: usize) -> Vec<usize> {
        let first = self.addrs.len();
        for i in first..first + n {
            self.addrs.push(format!("node{i}.{}:7000", self.tag));
            self.nodes.push(None);
            self.records.push(Arc::default());
            self.apply_delays.push(Arc::default());
            self.start_node(i);
        }
        (first..first + n).collect()
    }

    /// Loses node `i`'s data (it must be stopped).
    pub fn wipe(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "stop node {i} before wiping it");
        match self.data_dir(i) {
            Some(d) => {
                let _ = std::fs::remove_dir_all(d);
            }
            None => raftkit_node::storage::memory::forget(&format!("{}-{i}", self.tag)),
        }
    }

    /// Node `i`'s data directory, with local storage.
    pub fn data_dir(&self, i: usize) -> Option<std::path::PathBuf> {
        self.root
            .as_ref()
            .map(|r| r.path().join(format!("node{i}")))
    }

    /// Starts node `i` (again) on its existing storage; its state machine
    /// starts empty and is rebuilt from snapshot and log.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let record = Arc::new(Mutex::new(Record::default()));
        self.records[i] = record.clone();
        let fsm = RecordingFsm {
            record,
            apply_delay_ms: self.apply_delays[i].clone(),
        };
        let node = Node::start(
            self.options(i),
            Box::new(fsm),
            self.net.transport(&self.addrs[i]),
        )
        .expect("node starts");
        self.net.register(&node);
        self.nodes[i] = Some(node);
    }

    /// Stops node `i` (it can be started again with [`Cluster::start_node`]).
    pub async fn stop_node(&mut self, i: usize) {
        self.net.unregister(&self.group, &self.addrs[i]);
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await;
        }
    }

    /// Makes node `i`'s state machine take `ms` per applied entry.
    pub fn set_apply_delay(&self, i: usize, ms: u64) {
        self.apply_delays[i].store(ms, Ordering::Relaxed);
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    /// The one leader all of `among` agree on, if there is one.
    fn agreed_leader(&self, among: &[usize]) -> Option<usize> {
        let views: Vec<(usize, raftkit_node::node::RoleView)> = among
            .iter()
            .filter_map(|&i| self.nodes[i].as_ref().map(|n| (i, n.view())))
            .collect();
        let leaders: Vec<usize> = views
            .iter()
            .filter(|(_, v)| v.role == raftkit_node::node::Role::Leader)
            .map(|(i, _)| *i)
            .collect();
        let [l] = leaders[..] else {
            return None;
        };
        let term = views.iter().find(|(i, _)| *i == l).map(|(_, v)| v.term)?;
        views
            .iter()
            .all(|(_, v)| {
                v.term == term
                    && v.leader.as_ref().map(|p| p.addr.as_str()) == Some(self.addrs[l].as_str())
            })
            .then_some(l)
    }

    /// Waits until exactly one of `among` leads and all of them agree on it.
    pub async fn wait_leader_among(&self, among: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.agreed_leader(among) {
                return l;
            }
            if Instant::now() >= deadline {
                let views: Vec<_> = among
                    .iter()
                    .filter_map(|&i| self.nodes[i].as_ref().map(|n| (i, n.view())))
                    .collect();
                panic!("no agreed leader among {among:?} after {timeout:?}: {views:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for an agreed leader among the running members (nodes that
    /// are not uninitialized spares).
    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let members: Vec<usize> = self
                .running()
                .filter(|(_, n)| n.view().role != raftkit_node::node::Role::Uninitialized)
                .map(|(i, _)| i)
                .collect();
            if let Some(l) = self.agreed_leader(&members) {
                return l;
            }
            if Instant::now() >= deadline {
                let views: Vec<_> = self.running().map(|(i, n)| (i, n.view())).collect();
                panic!("no agreed leader among the running members after {timeout:?}: {views:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn applied_data(&self, i: usize) -> Vec<Bytes> {
        self.records[i]
            .lock()
            .unwrap()
            .applied
            .iter()
            .map(|(_, d)| d.clone())
            .collect()
    }

    pub async fn shutdown(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.addrs.len() {
            raftkit_node::storage::memory::forget(&format!("{}-{i}", self.tag));
        }
    }
}

/// Counter check (testing.md), real-time order: an increment that began after another one was
/// acknowledged must see a larger previous value (it is ordered after it).
/// Sorting by completion and by invocation makes this O(n log n). Returns
/// the first violation found.
pub fn counter_real_time_violation(timed: &[(Instant, Instant, i64)]) -> Option<String> {
    let mut by_completion = timed.to_vec();
    by_completion.sort_by_key(|t| t.1);
    let mut by_invocation = timed.to_vec();
    by_invocation.sort_by_key(|t| t.0);
    // Walk invocations in order, keeping the largest previous value among the
    // increments completed before the current one was invoked.
    let (mut done, mut max_before) = (0usize, None::<i64>);
    for &(invoked, _, prev) in &by_invocation {
        while done < by_completion.len() && by_completion[done].1 < invoked {
            let p = by_completion[done].2;
            max_before = Some(max_before.map_or(p, |m| m.max(p)));
            done += 1;
        }
        if let Some(m) = max_before {
            if prev <= m {
                return Some(format!(
                    "an increment saw previous value {prev} although one that saw {m} had completed before it began"
                ));
            }
        }
    }
    None
}

/// Waits until every member in `addrs` reports one applied index for the
/// client's group, then asserts they report one state digest there
/// (testing.md: replicas hold equal state at equal applied indexes).
/// Returns that index.
pub async fn assert_replicas_agree(
    client: &raftkit_client::ClusterClient,
    addrs: &[String],
    timeout: Duration,
) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut seen = Vec::new();
        for a in addrs {
            seen.push(
                client
                    .member_digest(a)
                    .await
                    .ok()
                    .and_then(|g| g.first().map(|g| (g.applied_index, g.has_digest, g.digest))),
            );
        }
        if let Some(Some(first)) = seen.first().copied() {
            if seen.iter().all(|s| s.is_some_and(|s| s.0 == first.0)) {
                assert!(
                    seen.iter().all(|s| *s == Some(first)) && first.1,
                    "replicas at applied index {} disagree: {seen:?}",
                    first.0
                );
                return first.0;
            }
        }
        assert!(
            Instant::now() < deadline,
            "members did not reach one applied index: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
