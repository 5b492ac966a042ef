//! [`Node`]: one replica of one raft group, braft's `Node`. This module owns
//! start-up (identity, recovery from storage, spawning the raft and apply
//! threads) and the thread-safe handle the rest of the program holds.
//!
//! ```text
//!  callers ──apply/read/step──▶ raft thread (RawNode, storage, transport)
//!                                   │ committed entries, dones, reads
//!                                   ▼
//!                               apply thread (StateMachine callbacks)
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel as chan;
use parking_lot::RwLock;
use raft::eraftpb::{ConfState, HardState, Message};
use raft::{RaftState, RawNode};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::closure::{ApplyResult, Done, Task};
use crate::error::{PeerId, RaftError};
use crate::fsm_caller::{apply_inbox, FsmCaller};
use crate::io_worker::IoWorker;
use crate::membership::{ConfChangeRequest, Membership, PeerIdentity};
use crate::options::{NodeOptions, ELECTION_TICKS};
use crate::raft_loop::{RaftInbox, RaftLoop, RaftMsg};
use crate::raft_store::RaftStore;
use crate::snapshot_install::{Chunk, PeerInstall, ReceiveStats, Throttle};
use crate::state_machine::{Configuration, StateMachine};
use crate::storage::log_cache::LogCache;
use crate::storage::snapshot::IncomingSnapshot;
use crate::storage::{self, SnapshotMeta, SnapshotStorage};
use crate::transport::Transport;

pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Largest task accepted by `apply`, in bytes.
pub const MAX_TASK_BYTES: usize = 16 << 20;

/// The role of a replica as shown in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
    /// No configuration yet: waiting to be added to a group.
    Uninitialized,
    /// Stopped after an unrecoverable error.
    Error,
    /// Shut down.
    Shutdown,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre_candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Uninitialized => "uninitialized",
            Role::Error => "error",
            Role::Shutdown => "shutdown",
        }
    }
}

/// Who this replica is and whom it follows, updated by the raft thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleView {
    pub role: Role,
    pub term: u64,
    pub leader: Option<PeerId>,
    /// This replica is a voter or learner of the configuration it knows.
    pub member: bool,
    /// The addresses of the configuration's voters, learners and outgoing
    /// voters; `None` while this replica knows no configuration (it waits
    /// to be added). Who may send it raft traffic over TLS (`port_tls`).
    pub members: Option<Arc<[String]>>,
}

/// Whether a replica caught up with its group since it started: it has
/// applied, within the catch-up margin, the leader's commit index as of a
/// ReadIndex round confirmed after it started ([`Node::readiness`]).
#[derive(Debug, Default)]
pub struct CatchUp {
    /// Latched once reached (until the process restarts).
    pub caught_up: std::sync::atomic::AtomicBool,
    /// Entries still to apply, as last measured (0 before a measurement).
    pub behind: AtomicU64,
}

/// Why a replica is not ready to serve, or that it is ([`Node::readiness`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Readiness {
    Ready,
    /// Stopped on an error, or shut down.
    Stopped {
        error: String,
    },
    /// Not a voter or learner of its group: an empty replica waiting to be
    /// added, or one that was removed.
    NotAMember,
    /// No leader is known.
    NoLeader,
    /// It has entries to apply before it serves current data.
    CatchingUp {
        behind: u64,
    },
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        *self == Readiness::Ready
    }
}

/// Replication progress of one member, as the leader sees it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PeerProgress {
    pub peer: PeerId,
    pub voter: bool,
    pub match_index: u64,
    pub next_index: u64,
    /// probe, replicate or snapshot.
    pub state: String,
    pub recent_active: bool,
    /// Append messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Its log matches within the catch-up margin of the leader's last
    /// index, and the leader heard from it recently.
    pub caught_up: bool,
}

/// Snapshot activity of one replica.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SnapshotView {
    /// The newest snapshot this replica has (taken or installed).
    pub last_index: u64,
    pub last_term: u64,
    /// When it was published, ms since the Unix epoch.
    pub last_unix_ms: u64,
    /// Index of a snapshot being saved now.
    pub saving: Option<u64>,
    /// Index of a snapshot being loaded into the state machine now.
    pub loading: Option<u64>,
    /// Snapshots received from leaders.
    pub receive: ReceiveStats,
}

impl SnapshotView {
    /// idle, saving, loading or installing (with progress).
    pub fn state(&self) -> String {
        if let Some(i) = self.loading {
            format!("loading index {i}")
        } else if let Some((i, held, total)) = self.receive.receiving {
            format!("installing index {i}: {held}/{total} bytes")
        } else if let Some(i) = self.saving {
            format!("saving index {i}")
        } else {
            "idle".to_string()
        }
    }
}

/// A full status report of one replica (`/raft_stat`, `raftkit status`).
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub group: String,
    pub peer: PeerId,
    pub role: Role,
    pub term: u64,
    pub vote: u64,
    pub leader: Option<PeerId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_log_index: u64,
    pub last_log_index: u64,
    /// Last index durable in the local log.
    pub disk_index: u64,
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    pub snapshot: SnapshotView,
    /// Snapshot transfers this leader is sending.
    pub installs: Vec<PeerInstall>,
    pub conf: Configuration,
    /// Replication progress of every member (filled on the leader only).
    pub peers: Vec<PeerProgress>,
    pub pending_reads: usize,
    /// Proposals of this node waiting to be applied.
    pub pending_proposals: usize,
    /// Index of the entry that set the current configuration.
    /// The cluster it belongs to (0: none yet).
    pub cluster_id: u64,
    /// The cluster format it has applied, and the highest it supports.
    pub cluster_format: u32,
    pub max_cluster_format: u32,
    /// Entries a member may lag the leader's last index and count as caught up.
    pub catchup_margin: u64,
    pub conf_index: u64,
    pub log_disk_bytes: u64,
    pub error: Option<String>,
}

/// State the raft and apply threads publish for cheap reads from any thread.
pub(crate) struct NodeShared {
    pub group: String,
    pub id: u64,
    pub addr: String,
    /// The cluster format applied so far (`cluster_format`).
    pub cluster_format: std::sync::atomic::AtomicU32,
    /// The highest cluster format this replica claims and applies.
    pub max_cluster_format: u32,
    pub applied: AtomicU64,
    pub view: RwLock<RoleView>,
    pub error: RwLock<Option<RaftError>>,
    /// The node is ready once it has applied at least this far (the commit
    /// and applied indexes it knew when it started).
    pub ready_floor: u64,
    /// Whether it has caught up with the leader since it started.
    pub catch_up: CatchUp,
    /// The cluster this replica belongs to (0: not known yet); see
    /// `RaftMeta::cluster_id`.
    pub cluster_id: AtomicU64,
    pub snapshot: RwLock<SnapshotView>,
    /// Proposals waiting in the apply thread (for status).
    pub pending_proposals: std::sync::atomic::AtomicUsize,
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    /// Options that can change at run time (`/flags`).
    pub live: RwLock<crate::options::LiveOptions>,
}

impl NodeShared {
    pub fn peer(&self) -> PeerId {
        PeerId {
            id: self.id,
            addr: self.addr.clone(),
        }
    }
}

struct NodeInner {
    shared: Arc<NodeShared>,
    tx: Arc<RaftInbox>,
    read_timeout: Duration,
    /// Flips to `true` (or is dropped) when both threads have exited.
    stopped: watch::Receiver<bool>,
    snapshots: Arc<dyn SnapshotStorage>,
    /// A snapshot being received from a leader.
    incoming: parking_lot::Mutex<Option<IncomingSnapshot>>,
    transport: Arc<dyn Transport>,
    /// One membership operation at a time.
    membership_lock: tokio::sync::Mutex<()>,
}

/// A handle to one running replica. Cheap to clone; every method is
/// thread-safe and never blocks the caller.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Node({} {})",
            self.inner.shared.group,
            self.inner.shared.peer()
        )
    }
}

impl Node {
    /// Starts a replica: opens its storage, recovers (newest snapshot, then
    /// the log after it), and starts the raft and apply threads. The
    /// transport must already be able to deliver replies to this node (serve
    /// first, then start nodes).
    pub fn start(
        opts: NodeOptions,
        mut fsm: Box<dyn StateMachine>,
        transport: Arc<dyn Transport>,
    ) -> Result<Node, RaftError> {
        opts.validate()?;
        let mut meta_store = storage::open_meta_storage(&opts.raft_meta_uri, &opts.storage)?;
        // The format check comes first: a newer log must not be opened (its
        // recovery could take new records for damage).
        let mut meta = meta_store.load()?.unwrap_or_default();
        if meta.log_format > storage::LOG_FORMAT {
            return Err(RaftError::Storage(format!(
                "the data at {} was written in log format {}, newer than this build reads (up to {}); run the newer raftkit-node, or restore this replica from a copy written by this version",
                opts.raft_meta_uri,
                meta.log_format,
                storage::LOG_FORMAT
            )));
        }
        let log = storage::open_log_storage(&opts.log_uri, &opts.storage)?;
        let snapshots: Arc<dyn storage::SnapshotStorage> = Arc::from(
            storage::open_snapshot_storage(&opts.snapshot_uri, &opts.storage)?,
        );

        if meta.cluster_format > opts.max_cluster_format {
            return Err(RaftError::Storage(format!(
                "the log at {} committed cluster format {}, newer than this node applies (up to {}{}); run a build that supports it",
                opts.log_uri,
                meta.cluster_format,
                opts.max_cluster_format,
                if opts.max_cluster_format < crate::cluster_format::NEWEST {
                    ", capped by --max-cluster-format"
                } else {
                    ""
                }
            )));
        }
        if meta.log_format < storage::LOG_FORMAT {
            // From now on the log holds this format's records (sync markers).
            meta.log_format = storage::LOG_FORMAT;
            if meta.peer_id != 0 {
                meta_store.save(&meta)?;
            }
        }
        // Identity: persisted id, else derived from the initial conf, else random.
        if meta.peer_id == 0 {
            if log.last_index() > 0 {
                return Err(RaftError::Storage(format!(
                    "the log at {} has entries but the raft meta at {} has no identity; refusing to start with a mismatched data directory",
                    opts.log_uri, opts.raft_meta_uri
                )));
            }
            // Every replica gets a fresh random id, so a replica that lost
            // its data can never come back under an id that forgot its vote.
            meta.peer_id = loop {
                let id = rand::random::<u64>();
                if id != 0 {
                    break id;
                }
            };
            meta_store.save(&meta)?;
            tracing::info!(group = %opts.group, peer = %format!("{:016x}", meta.peer_id), initial = meta.initial_conf.len(), "new replica identity");
        } else if !opts.initial_conf.is_empty() && !meta.initial_conf.is_empty() {
            tracing::info!(group = %opts.group, "existing data found; ignoring the initial conf");
        }
        let id = meta.peer_id;

        // Recover: newest snapshot into the state machine, then reconcile the log with it.
        let mut log = log;
        let mut peers: HashMap<u64, String> = meta
            .initial_conf
            .iter()
            .map(|p| (p.id, p.addr.clone()))
            .collect();
        peers.insert(id, opts.addr.clone());
        // Without a snapshot the configuration is rebuilt by replaying the log,
        // which starts with the bootstrap configuration entries.
        let mut conf_state = ConfState::default();
        let mut snap_meta = SnapshotMeta::default();
        if let Some(reader) = snapshots.latest()? {
            snap_meta = reader.meta().clone();
            fsm.on_snapshot_load(&reader).map_err(|e| {
                RaftError::StateMachine(format!("loading snapshot {}: {e}", snap_meta.index))
            })?;
            conf_state = snap_meta.conf.to_conf_state();
            for p in &snap_meta.peers {
                peers.insert(p.id, p.addr.clone());
            }
            tracing::info!(group = %opts.group, index = snap_meta.index, term = snap_meta.term, "loaded snapshot");
        }
        if log.first_index() > snap_meta.index + 1 {
            return Err(RaftError::Storage(format!(
                "the log starts at {} but the newest snapshot ends at {}: entries in between are missing",
                log.first_index(),
                snap_meta.index
            )));
        }
        // Entries that do not extend the snapshot (a shorter log, or a stale
        // entry at its index) are dropped: the snapshot is committed state.
        if snap_meta.index > 0 && log.term(snap_meta.index) != Some(snap_meta.term) {
            log.reset(snap_meta.index + 1, snap_meta.term)?;
        }
        let last_index = log.last_index();
        // The persisted commit is written lazily: it may lag, so it is at
        // least what the snapshot proves committed (raft-rs pull 593).
        let hs = HardState {
            term: meta.term.max(snap_meta.term),
            vote: if meta.term >= snap_meta.term {
                meta.vote
            } else {
                0
            },
            commit: meta.commit.max(snap_meta.index).min(last_index),
            ..Default::default()
        };
        let ready_floor = hs.commit.max(meta.applied.min(last_index));

        // raft-rs reads an in-memory view; the I/O thread owns the log itself.
        let mut cache = LogCache::new(
            log.first_index(),
            log.term(log.first_index() - 1).unwrap_or(snap_meta.term),
        );
        if last_index >= log.first_index() {
            cache.push(&log.entries(log.first_index(), last_index + 1, None)?);
        }
        let metrics = Arc::new(crate::metrics::NodeMetrics::default());
        let raft_tx = RaftInbox::new();
        let io = IoWorker::start(&opts.group, log, raft_tx.clone(), metrics.clone())?;
        let store = RaftStore {
            log: cache,
            snapshot_index: snap_meta.index,
            snapshot_term: snap_meta.term,
            latest: (snap_meta.index > 0).then(|| snap_meta.clone()),
            wanted: std::cell::Cell::new(false),
            initial: RaftState::new(hs.clone(), conf_state.clone()),
        };
        let cfg = raft::Config {
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: (ELECTION_TICKS as u64 / opts.heartbeat_factor).max(1) as usize,
            applied: snap_meta.index,
            max_size_per_msg: opts.max_size_per_msg,
            max_inflight_msgs: opts.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            // Lease reads are the engine's own (raft_loop::Lease), on top of
            // raft-rs's safe ReadIndex; its LeaseBased mode is not safe.
            read_only_option: raft::ReadOnlyOption::Safe,
            max_uncommitted_size: opts.max_uncommitted_bytes,
            max_committed_size_per_ready: opts.max_apply_batch_bytes,
            batch_append: true,
            // A commit advance rides on the next append or heartbeat instead
            // of costing a message per follower (raft-rs still broadcasts
            // while a configuration change is pending).
            skip_bcast_commit: true,
            ..Default::default()
        };
        cfg.validate()
            .map_err(|e| RaftError::InvalidArgument(format!("raft config: {e}")))?;
        let logger = crate::logging::raft_logger(&opts.group, id);
        let raw = RawNode::new(&cfg, store, &logger)
            .map_err(|e| RaftError::Storage(format!("creating raft node: {e}")))?;

        let shared = Arc::new(NodeShared {
            group: opts.group.clone(),
            id,
            addr: opts.addr.clone(),
            applied: AtomicU64::new(snap_meta.index),
            view: RwLock::new(RoleView {
                role: if conf_state.voters.is_empty() && conf_state.learners.is_empty() {
                    Role::Uninitialized
                } else {
                    Role::Follower
                },
                term: hs.term,
                leader: None,
                member: conf_state
                    .voters
                    .iter()
                    .chain(&conf_state.learners)
                    .chain(&conf_state.voters_outgoing)
                    .any(|v| *v == id),
                members: None,
            }),
            error: RwLock::new(None),
            cluster_format: std::sync::atomic::AtomicU32::new(
                snap_meta.cluster_format.max(crate::cluster_format::BASE),
            ),
            max_cluster_format: opts.max_cluster_format,
            ready_floor,
            catch_up: CatchUp::default(),
            cluster_id: AtomicU64::new(if meta.cluster_id != 0 {
                meta.cluster_id
            } else {
                snap_meta.cluster_id
            }),
            pending_proposals: std::sync::atomic::AtomicUsize::new(0),
            metrics,
            live: RwLock::new(crate::options::LiveOptions::from_options(&opts)),
            snapshot: RwLock::new(SnapshotView {
                last_index: snap_meta.index,
                last_term: snap_meta.term,
                last_unix_ms: snap_meta.created_unix_ms,
                ..Default::default()
            }),
        });

        let (stopped_tx, stopped_rx) = watch::channel(false);
        let stopped_tx = Arc::new(stopped_tx);

        let initial_conf = Configuration {
            voters: conf_state
                .voters
                .iter()
                .map(|i| PeerId {
                    id: *i,
                    addr: peers.get(i).cloned().unwrap_or_default(),
                })
                .collect(),
            learners: conf_state
                .learners
                .iter()
                .map(|i| PeerId {
                    id: *i,
                    addr: peers.get(i).cloned().unwrap_or_default(),
                })
                .collect(),
            voters_outgoing: conf_state
                .voters_outgoing
                .iter()
                .map(|i| PeerId {
                    id: *i,
                    addr: peers.get(i).cloned().unwrap_or_default(),
                })
                .collect(),
        };
        let caller = FsmCaller::new(
            fsm,
            raft_tx.clone(),
            shared.clone(),
            snapshots.clone(),
            snap_meta.index,
            snap_meta.term,
            initial_conf,
            conf_state.clone(),
        );
        let apply_guard = stopped_tx.clone();
        let (apply_tx, apply_inbox) = apply_inbox(caller, raft_tx.queue(), shared.metrics.clone());
        std::thread::Builder::new()
            .name(format!("apply-{}", opts.group))
            .spawn(move || {
                // A panicking state machine stops the node (the inbox
                // reports it) instead of leaving it replicating with
                // nothing applying.
                apply_inbox.run();
                drop(apply_guard);
            })
            .map_err(|e| RaftError::Storage(format!("spawning the apply thread: {e}")))?;

        // Peers learn this replica's cluster from the transport (0 until
        // it is known; a group hosted again here may belong to another).
        transport.set_max_cluster_format(&opts.group, opts.max_cluster_format);
        transport.set_cluster_id(&opts.group, shared.cluster_id.load(Ordering::Acquire));
        let fresh =
            meta.initial_conf.is_empty() && hs.term == 0 && snap_meta.index == 0 && last_index == 0;
        let raft_loop = RaftLoop::new(
            raw,
            opts.clone(),
            raft_tx.receiver(),
            raft_tx.queue(),
            apply_tx,
            transport.clone(),
            shared.clone(),
            meta_store,
            meta,
            peers,
            snapshots.clone(),
            Arc::new(Throttle::new(opts.snapshot_throttle_bytes_per_sec)),
            cfg.clone(),
            logger.clone(),
            snap_meta.conf_index,
            io,
        );
        let raft_guard = stopped_tx;
        raft_tx.install(raft_loop);
        let inbox = raft_tx.clone();
        std::thread::Builder::new()
            .name(format!("raft-{}", opts.group))
            .spawn(move || {
                // Panics in the loop are caught inside (the loop may also
                // run on a sender's thread).
                inbox.run();
                drop(raft_guard);
            })
            .map_err(|e| RaftError::Storage(format!("spawning the raft thread: {e}")))?;

        let node = Node {
            inner: Arc::new(NodeInner {
                shared,
                tx: raft_tx,
                read_timeout: Duration::from_millis(opts.read_timeout_ms),
                stopped: stopped_rx,
                snapshots,
                incoming: parking_lot::Mutex::new(None),
                transport: transport.clone(),
                membership_lock: tokio::sync::Mutex::new(()),
            }),
        };
        if fresh && !opts.initial_conf.is_empty() {
            // Form the group with the other initial members in the background.
            transport.spawn(Box::pin(crate::membership::form_group(
                node.clone(),
                opts.initial_conf.clone(),
            )));
        }
        Ok(node)
    }

    /// The raft loop's inbox (tests drive exact interleavings through it).
    #[cfg(test)]
    pub(crate) fn inbox(&self) -> &Arc<RaftInbox> {
        &self.inner.tx
    }

    /// The group this replica belongs to.
    pub fn group(&self) -> &str {
        &self.inner.shared.group
    }

    /// This replica's id and address.
    pub fn peer_id(&self) -> PeerId {
        self.inner.shared.peer()
    }

    /// Submits a task (braft's `apply`). Never blocks (on an idle leader it
    /// may run the raft step itself, which takes microseconds and never
    /// waits for the disk); `task.done` runs exactly once. See [`Task`].
    pub fn apply(&self, mut task: Task) {
        let metrics = self.inner.shared.metrics.clone();
        metrics.proposals.fetch_add(1, Ordering::Relaxed);
        let inner_done = std::mem::replace(&mut task.done, Done::noop());
        task.done = Done::new(move |r| {
            if let Err(e) = &r {
                metrics.proposal_failed(e.kind());
            }
            inner_done.run(r);
        });
        if task.data.is_empty() {
            task.done.run(Err(RaftError::InvalidArgument(
                "task data must not be empty".into(),
            )));
            return;
        }
        if task.data.len() > MAX_TASK_BYTES {
            let n = task.data.len();
            task.done.run(Err(RaftError::InvalidArgument(format!(
                "task of {n} bytes exceeds the limit of {MAX_TASK_BYTES}"
            ))));
            return;
        }
        if let Err(chan::SendError(msg)) = self.inner.tx.send(RaftMsg::Propose(task)) {
            drop(msg); // the task's done runs with ShuttingDown from its Drop
        }
    }

    /// Proposes `data` and waits until it is applied; returns the state
    /// machine's response.
    pub async fn propose(&self, data: impl Into<Bytes>) -> ApplyResult {
        let (done, rx) = Done::channel();
        self.apply(Task::new(data, done));
        rx.await.unwrap_or(Err(RaftError::ShuttingDown))
    }

    /// Like [`Node::propose`] but only in `term` (see `Task::expected_term`).
    pub async fn propose_in_term(&self, data: impl Into<Bytes>, term: u64) -> ApplyResult {
        let (done, rx) = Done::channel();
        self.apply(Task::new(data, done).with_expected_term(term));
        rx.await.unwrap_or(Err(RaftError::ShuttingDown))
    }

    /// Linearizable read barrier: resolves once this replica has applied
    /// everything committed before the call (confirmed by a quorum through
    /// ReadIndex, or by the lease in lease mode). Returns the read index.
    /// Works on followers too (the leader confirms the index).
    pub async fn read_index(&self) -> Result<u64, RaftError> {
        self.ask_read_index(true).await
    }

    /// The leader's commit index, confirmed by a quorum (a ReadIndex round),
    /// without waiting for this replica to apply it: how far this replica
    /// has to go to be caught up.
    pub async fn confirmed_commit_index(&self) -> Result<u64, RaftError> {
        self.ask_read_index(false).await
    }

    async fn ask_read_index(&self, wait_apply: bool) -> Result<u64, RaftError> {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + self.inner.read_timeout;
        if self
            .inner
            .tx
            .send(RaftMsg::ReadIndex {
                reply: tx,
                deadline,
                wait_apply,
            })
            .is_err()
        {
            return Err(RaftError::ShuttingDown);
        }
        // The raft thread answers by the deadline; the margin only guards
        // against a thread that died.
        match tokio::time::timeout(self.inner.read_timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RaftError::ShuttingDown),
            Err(_) => Err(RaftError::Timeout("read index was not answered".into())),
        }
    }

    /// Hands a message from another replica to raft. `from_addr` is the
    /// sender's advertised address when the transport knows it.
    pub fn step(&self, msg: Message, from_addr: Option<String>) {
        let _ = self.inner.tx.send(RaftMsg::Step(Box::new(msg), from_addr));
    }

    /// Starts an election now (tests and tools; normally elections are automatic).
    pub fn campaign(&self) {
        let _ = self.inner.tx.send(RaftMsg::Campaign);
    }

    /// Asks for a snapshot now; resolves when it is published.
    pub async fn snapshot(&self) -> Result<SnapshotMeta, RaftError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(RaftMsg::SnapshotNow(Some(tx))).is_err() {
            return Err(RaftError::ShuttingDown);
        }
        rx.await.unwrap_or(Err(RaftError::ShuttingDown))
    }

    /// The counters and histograms this replica records.
    pub fn metrics(&self) -> Arc<crate::metrics::NodeMetrics> {
        self.inner.shared.metrics.clone()
    }

    /// Snapshot activity of this replica.
    pub fn snapshot_view(&self) -> SnapshotView {
        self.inner.shared.snapshot.read().clone()
    }

    /// Receiving a snapshot, step 1: a leader announces `meta`. Returns the
    /// bytes already held per file (non-zero when an interrupted transfer of
    /// the same snapshot resumes). Blocking file work: call off async threads.
    pub fn install_begin(&self, meta: SnapshotMeta) -> Result<Vec<(String, u64)>, RaftError> {
        let applied = self.applied_index();
        if meta.index <= applied {
            return Err(RaftError::InvalidArgument(format!(
                "this replica has applied up to {applied}, past snapshot {}",
                meta.index
            )));
        }
        let inc = self.inner.snapshots.open_incoming(&meta)?;
        let held = inc.held_all();
        let (got, total) = inc.progress();
        {
            let mut v = self.inner.shared.snapshot.write();
            if got > 0 {
                v.receive.resumed += 1;
            }
            v.receive.receiving = Some((meta.index, got, total));
        }
        tracing::info!(group = %self.group(), index = meta.index, held = got, total, "receiving snapshot");
        *self.inner.incoming.lock() = Some(inc);
        Ok(held)
    }

    /// Receiving a snapshot, step 2: one chunk, checked against its crc32c
    /// and appended where the held bytes end. Returns the bytes now held.
    pub fn install_chunk(&self, chunk: &Chunk) -> Result<u64, RaftError> {
        let mut guard = self.inner.incoming.lock();
        let inc = guard
            .as_mut()
            .filter(|i| i.meta().index == chunk.index && i.meta().term == chunk.term)
            .ok_or_else(|| {
                RaftError::InvalidArgument(format!(
                    "no transfer of snapshot {} is in progress; begin again",
                    chunk.index
                ))
            })?;
        if crc32c::crc32c(&chunk.data) != chunk.crc32c {
            self.inner.shared.snapshot.write().receive.chunks_rejected += 1;
            return Err(RaftError::InvalidArgument(format!(
                "chunk of {:?} at offset {} failed its checksum",
                chunk.file, chunk.offset
            )));
        }
        let held = inc.append(&chunk.file, chunk.offset, &chunk.data)?;
        let (got, total) = inc.progress();
        let mut v = self.inner.shared.snapshot.write();
        v.receive.bytes_received += chunk.data.len() as u64;
        v.receive.receiving = Some((chunk.index, got, total));
        Ok(held)
    }

    /// Receiving a snapshot, step 3: verify every file, publish the snapshot
    /// and hand raft the leader's snapshot message. Nothing unverified is
    /// ever loaded.
    pub fn install_commit(
        &self,
        index: u64,
        term: u64,
        msg: Message,
        from_addr: Option<String>,
    ) -> Result<(), RaftError> {
        let md = msg.get_snapshot().get_metadata();
        if msg.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot
            || md.index != index
            || md.term != term
        {
            return Err(RaftError::InvalidArgument(format!(
                "commit of snapshot {index} carries a different raft message"
            )));
        }
        let inc = {
            let mut guard = self.inner.incoming.lock();
            match guard.take() {
                Some(i) if i.meta().index == index && i.meta().term == term && i.is_complete() => i,
                Some(i) => {
                    *guard = Some(i);
                    return Err(RaftError::InvalidArgument(format!(
                        "snapshot {index} is not fully received"
                    )));
                }
                None => {
                    return Err(RaftError::InvalidArgument(format!(
                        "no transfer of snapshot {index} is in progress"
                    )))
                }
            }
        };
        let verified = inc.verify();
        let mut v = self.inner.shared.snapshot.write();
        v.receive.receiving = None;
        let snapshot = match verified {
            Ok(s) => s,
            Err(e) => {
                v.receive.files_rejected += 1;
                return Err(e.into());
            }
        };
        v.receive.installs += 1;
        drop(v);
        tracing::info!(group = %self.group(), index, term, "snapshot received and verified");
        // Published by the raft loop only if raft takes it (it ignores a
        // snapshot its log already covers, or an outdated one).
        if let Err(chan::SendError(RaftMsg::InstallSnapshot { snapshot, .. })) =
            self.inner.tx.send(RaftMsg::InstallSnapshot {
                msg: Box::new(msg),
                snapshot,
                from_addr,
            })
        {
            snapshot.discard();
            return Err(RaftError::ShuttingDown);
        }
        Ok(())
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> RaftMsg,
    ) -> Result<T, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(make(tx))
            .map_err(|_| RaftError::ShuttingDown)?;
        rx.await.map_err(|_| RaftError::ShuttingDown)
    }

    pub(crate) fn membership_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.membership_lock
    }

    pub(crate) fn catchup_margin(&self) -> u64 {
        self.inner.shared.live.read().catchup_margin
    }

    /// The options that can change at run time.
    pub fn live_options(&self) -> crate::options::LiveOptions {
        self.inner.shared.live.read().clone()
    }

    /// Changes one live option (see [`crate::options::LiveOptions`]); the
    /// raft thread picks it up at once.
    pub async fn set_live_option(&self, name: &str, value: &str) -> Result<(), RaftError> {
        let mut live = self.live_options();
        live.set(name, value).map_err(RaftError::InvalidArgument)?;
        self.ask(|reply| RaftMsg::SetLive { live, reply }).await
    }

    /// Whether both threads have exited.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.has_changed().is_err()
    }

    /// Who this replica is (what another replica asks before adding it).
    pub async fn identity(&self) -> Result<PeerIdentity, RaftError> {
        self.ask(RaftMsg::Identity).await
    }

    /// The replica at `addr` in this node's group, asked over the transport.
    pub async fn query_identity(&self, addr: &str) -> Result<PeerIdentity, RaftError> {
        let ident = self
            .inner
            .transport
            .query_identity(self.group(), addr)
            .await
            .map_err(|e| RaftError::PeerUnreachable(format!("{addr}: {e}")))?;
        if ident.group != self.group() {
            return Err(RaftError::PeerUnreachable(format!(
                "{addr} does not host group {}",
                self.group()
            )));
        }
        Ok(ident)
    }

    /// The current configuration and the index of the entry that set it.
    pub async fn membership(&self) -> Result<Membership, RaftError> {
        let st = self.status().await?;
        Ok(Membership {
            conf: st.conf,
            conf_index: st.conf_index,
        })
    }

    /// Makes this empty replica a member of a new group whose voters are
    /// `peers` (itself included). Refused if it has any data or configuration.
    pub async fn bootstrap(&self, peers: Vec<PeerId>) -> Result<(), RaftError> {
        self.ask(|reply| RaftMsg::Bootstrap { peers, reply })
            .await?
    }

    pub(crate) async fn propose_conf_change(
        &self,
        req: ConfChangeRequest,
    ) -> Result<u64, RaftError> {
        let (tx, rx) = oneshot::channel();
        let done = Done::new(move |r| {
            let _ = tx.send(match r {
                Ok(b) if b.len() == 8 => Ok(u64::from_be_bytes(
                    b.as_ref().try_into().unwrap_or_default(),
                )),
                Ok(_) => Err(RaftError::Busy(
                    "raft dropped the configuration change; retry".into(),
                )),
                Err(e) => Err(e),
            });
        });
        self.inner
            .tx
            .send(RaftMsg::ConfChange { req, done })
            .map_err(|_| RaftError::ShuttingDown)?;
        rx.await.map_err(|_| RaftError::ShuttingDown)?
    }

    pub(crate) async fn transfer_to(&self, target: Option<u64>) -> Result<PeerId, RaftError> {
        self.ask(|reply| RaftMsg::TransferLeader { target, reply })
            .await?
    }

    pub(crate) async fn force_configuration(
        &self,
        keep: Vec<u64>,
    ) -> Result<Vec<(raft::eraftpb::ConfChangeType, PeerId)>, RaftError> {
        self.ask(|reply| RaftMsg::ForceConf { keep, reply }).await?
    }

    /// The full status, from the raft thread.
    pub async fn status(&self) -> Result<NodeStatus, RaftError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(RaftMsg::Status(tx)).is_err() {
            return Err(RaftError::ShuttingDown);
        }
        rx.await.map_err(|_| RaftError::ShuttingDown)
    }

    /// The state machine's digest and the applied index it was taken at
    /// (see [`crate::state_machine::StateMachine::state_digest`]).
    pub async fn state_digest(&self) -> Result<crate::state_machine::StateDigest, RaftError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(RaftMsg::Digest(tx)).is_err() {
            return Err(RaftError::ShuttingDown);
        }
        rx.await.map_err(|_| RaftError::ShuttingDown)
    }

    /// Role, term and leader as last published by the raft thread.
    pub fn view(&self) -> RoleView {
        self.inner.shared.view.read().clone()
    }

    /// The addresses of the members of the configuration this replica
    /// knows (voters, learners, outgoing voters); `None` before it knows one.
    pub fn member_addrs(&self) -> Option<Arc<[String]>> {
        self.inner.shared.view.read().members.clone()
    }

    /// Whether this replica currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.inner.shared.view.read().role == Role::Leader
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<PeerId> {
        self.inner.shared.view.read().leader.clone()
    }

    /// Index of the last entry applied to the state machine.
    pub fn applied_index(&self) -> u64 {
        self.inner.shared.applied.load(Ordering::Acquire)
    }

    /// The unrecoverable error this replica stopped on, if any.
    pub fn error(&self) -> Option<RaftError> {
        self.inner.shared.error.read().clone()
    }

    /// The cluster this replica belongs to (0: not known yet, an empty
    /// replica waiting to be added).
    pub fn cluster_id(&self) -> u64 {
        self.inner.shared.cluster_id.load(Ordering::Acquire)
    }

    /// The cluster format this replica has applied (`cluster_format`).
    pub fn cluster_format(&self) -> u32 {
        self.inner.shared.cluster_format.load(Ordering::Acquire)
    }

    /// Whether this replica may serve (a Kubernetes readiness probe):
    /// it has not stopped, it is a voter or learner of its group, it knows
    /// a leader, it has re-applied what it had applied before it stopped,
    /// and it has caught up: applied, within the catch-up margin, the
    /// leader's commit index as of a ReadIndex round confirmed after it
    /// started. The round is taken when asked, until caught up once; then
    /// the other conditions are checked live. A fresh replica waiting to be
    /// added is alive and [`Readiness::NotAMember`].
    pub async fn readiness(&self) -> Readiness {
        if let Some(e) = self.error() {
            return Readiness::Stopped {
                error: e.to_string(),
            };
        }
        let v = self.view();
        if v.role == Role::Shutdown {
            return Readiness::Stopped {
                error: "shut down".into(),
            };
        }
        // First what it had before it stopped: until that is applied again
        // (the configuration entries with it), it cannot tell whether it is
        // a member.
        let shared = &self.inner.shared;
        let applied = self.applied_index();
        if applied < shared.ready_floor {
            return Readiness::CatchingUp {
                behind: shared.ready_floor - applied,
            };
        }
        if !v.member {
            return Readiness::NotAMember;
        }
        if v.leader.is_none() {
            return Readiness::NoLeader;
        }
        if shared.catch_up.caught_up.load(Ordering::Acquire) {
            return Readiness::Ready;
        }
        let target =
            tokio::time::timeout(self.inner.read_timeout, self.confirmed_commit_index()).await;
        let behind = match target {
            Ok(Ok(target)) => target.saturating_sub(self.applied_index()),
            // No round confirmed: as far behind as last measured.
            _ => {
                return Readiness::CatchingUp {
                    behind: shared.catch_up.behind.load(Ordering::Relaxed),
                }
            }
        };
        shared.catch_up.behind.store(behind, Ordering::Relaxed);
        if behind <= self.catchup_margin() {
            shared.catch_up.caught_up.store(true, Ordering::Release);
            Readiness::Ready
        } else {
            Readiness::CatchingUp { behind }
        }
    }

    /// Stops the replica the way SIGTERM does: a leader first hands leadership
    /// to the most caught-up voter (waiting at most two election timeouts),
    /// so clients see a short "transferring" pause instead of an election;
    /// a follower stops at once.
    pub async fn shutdown_gracefully(&self) {
        if self.is_leader() {
            let wait = Duration::from_millis(self.inner.shared.live.read().election_timeout_ms) * 2;
            match tokio::time::timeout(wait, self.transfer_leadership(None)).await {
                Ok(Ok(l)) => {
                    tracing::info!(group = %self.group(), to = %l, "leadership handed over before shutdown")
                }
                Ok(Err(e)) => {
                    tracing::warn!(group = %self.group(), error = %e, "could not hand leadership over before shutdown")
                }
                Err(_) => {
                    tracing::warn!(group = %self.group(), "leadership hand-over timed out before shutdown")
                }
            }
        }
        self.shutdown().await;
    }

    /// Stops the replica: pending tasks and reads fail with
    /// `ShuttingDown`, the state machine gets `on_shutdown`, and this
    /// returns when both threads have exited.
    pub async fn shutdown(&self) {
        let _ = self.inner.tx.send(RaftMsg::Shutdown);
        let mut rx = self.inner.stopped.clone();
        // The sender side is dropped when both threads have exited.
        while rx.changed().await.is_ok() {}
    }
}
