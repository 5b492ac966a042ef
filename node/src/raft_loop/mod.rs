//! The raft loop of one group: the only owner of the `RawNode`, behind a
//! lock in its [`RaftInbox`].
//!
//! The raft thread drains the input queue in batches (proposals, peer
//! messages, reads, ticks); with at most one write in flight the thread
//! that delivers an input runs it instead (see `inbox`). Either way one
//! `Ready` is then handled in raft-rs's documented order: send
//! messages, hand committed entries to the apply thread, append entries and
//! persist the hard state, fsync once for the whole batch (group commit),
//! release read states, send the messages that needed persistence, advance.
//! The leader's appends go out before its own fsync, so it writes to disk
//! while followers do.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel as chan;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

mod cluster_format;
mod inbox;
mod membership;
#[cfg(test)]
mod removal_tests;

pub(crate) use inbox::RaftInbox;

use crate::closure::{Done, Task};
use crate::error::{PeerId, RaftError};
use crate::fsm_caller::{ApplyMsg, ApplySender, Committed, ReadWaiter};
use crate::io_worker::{IoNow, IoTask, IoWorker};
use crate::membership::{ConfChangeRequest, PeerIdentity};
use crate::node::{NodeShared, NodeStatus, PeerProgress, Role, RoleView};
use crate::options::NodeOptions;
use crate::raft_store::RaftStore;
use crate::snapshot_install::{InstallProgress, SnapshotJob, Throttle};
use crate::state_machine::{Configuration, LeaderChangeContext};
use crate::storage::{RaftMeta, RaftMetaStorage, SnapshotMeta, SnapshotStorage};
use crate::transport::Transport;
use membership::PendingTransfer;

/// Inputs of the raft thread.
pub(crate) enum RaftMsg {
    Propose(Task),
    Step(Box<Message>, Option<String>),
    /// A leader's snapshot message, whose files were received and verified:
    /// stepped, and the snapshot published only if raft takes it.
    InstallSnapshot {
        msg: Box<Message>,
        snapshot: crate::storage::snapshot::VerifiedSnapshot,
        from_addr: Option<String>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, RaftError>>,
        deadline: Instant,
        /// See [`ReadWaiter::wait_apply`].
        wait_apply: bool,
    },
    /// The apply thread applied up to this index.
    Applied(u64),
    Status(oneshot::Sender<NodeStatus>),
    /// Forwarded to the apply thread.
    Digest(oneshot::Sender<crate::state_machine::StateDigest>),
    Campaign,
    SnapshotNow(Option<oneshot::Sender<Result<SnapshotMeta, RaftError>>>),
    /// The apply thread published (or failed to publish) a snapshot.
    SnapshotDone(Result<SnapshotMeta, RaftError>),
    /// A snapshot transfer to follower `to` ended.
    SnapshotSent {
        to: u64,
        result: Result<(), String>,
    },
    /// The apply or I/O thread hit an unrecoverable error.
    Fatal(RaftError),
    /// The I/O thread made Readys up to `number` durable; `messages` may go out.
    Persisted {
        number: u64,
        messages: Vec<Message>,
    },
    Identity(oneshot::Sender<PeerIdentity>),
    Bootstrap {
        peers: Vec<PeerId>,
        reply: oneshot::Sender<Result<(), RaftError>>,
    },
    ConfChange {
        req: ConfChangeRequest,
        done: Done,
    },
    TransferLeader {
        target: Option<u64>,
        reply: oneshot::Sender<Result<PeerId, RaftError>>,
    },
    SetLive {
        live: crate::options::LiveOptions,
        reply: oneshot::Sender<()>,
    },
    ForceConf {
        keep: Vec<u64>,
        reply: oneshot::Sender<Result<Vec<(raft::eraftpb::ConfChangeType, PeerId)>, RaftError>>,
    },
    Shutdown,
}

impl RaftMsg {
    /// A write on its way through the group: a proposal, an append or its
    /// answer, a finished write (not heartbeats, status queries or ticks).
    pub(crate) fn is_write_path(&self) -> bool {
        match self {
            RaftMsg::Propose(_) | RaftMsg::Persisted { .. } => true,
            RaftMsg::Step(m, _) => matches!(
                m.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgAppendResponse
            ),
            _ => false,
        }
    }
}

/// Proposals timed for `raftkit_commit_seconds` at once (the rest are not
/// timed; bounds the queue if commits stall).
const MAX_TIMED_PROPOSALS: usize = 65_536;
/// Readys handled in a row after inline writes (see `end_batch`); the
/// bound only keeps a sender's thread from being held indefinitely.
const MAX_READY_ROUNDS: usize = 4;
/// How often lazily persisted fields (commit, applied) are written.
const META_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// After a member last had more than one write in flight (its log more
/// than one entry past its commit), its inputs queue (and batch) for this
/// long before a sender may run one itself again. A sender that runs the
/// loop also writes and fsyncs the new entry on its own thread; under
/// concurrent writes the first proposal after each commit did so on the
/// leader, alone, and the network thread reading the next proposals
/// waited for that fsync; a follower did the same with a lone append while
/// the next append waited unread. With 2 to 64 closed-loop clients,
/// queuing everything was 10-28% faster than that (docs/benchmarks.md);
/// a lone client keeps the inline path.
const INLINE_QUIET: Duration = Duration::from_millis(10);

struct PendingRead {
    waiters: Vec<ReadWaiter>,
    /// When the request was last (re)issued, for retries.
    issued_at: Instant,
    /// When it was first issued, in which term: every heartbeat that can
    /// confirm it left after this, which is what a lease may count from.
    first_issued: Instant,
    term: u64,
}

/// The context of a ReadIndex request: unique across members and
/// incarnations. raft-rs silently drops a request whose context is already
/// pending at the leader and later answers the pending one; a context that
/// repeated (every member and every restart counting from 1) could then be
/// answered with an older request's index, which may miss writes
/// acknowledged in between. So a context is this replica's raft id, a random
/// epoch drawn at start, and a counter: 24 bytes.
struct ReadCtx {
    id: u64,
    epoch: u64,
    next: u64,
}

impl ReadCtx {
    const LEN: usize = 24;

    fn new(id: u64) -> Self {
        ReadCtx {
            id,
            epoch: rand::random(),
            next: 1,
        }
    }

    /// A counter value not used before in this incarnation.
    fn next(&mut self) -> u64 {
        let c = self.next;
        self.next += 1;
        c
    }

    fn encode(&self, counter: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(&self.id.to_be_bytes());
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.extend_from_slice(&counter.to_be_bytes());
        v
    }

    /// The counter of a context this incarnation issued.
    fn decode(&self, ctx: &[u8]) -> Option<u64> {
        let b: &[u8; Self::LEN] = ctx.try_into().ok()?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_be_bytes(w)
        };
        (word(0) == self.id && word(1) == self.epoch).then(|| word(2))
    }
}

/// A leader's read lease (`ReadMode::Lease`): until `until`, no other
/// member can have become leader, so reads are answered from the committed
/// index without a round of heartbeats.
///
/// It is our own, not raft-rs's `LeaseBased` mode, which answers whenever
/// the node believes it leads: with check-quorum a cut-off leader keeps
/// believing so for up to two election timeouts, while the others can elect
/// a new leader after one (the KV linearizability test caught stale reads).
/// Here a lease starts when a ReadIndex round is issued and lasts less than
/// the time a member that acknowledged that round refuses to vote for anyone
/// else (check-quorum: one election timeout after it last heard from us; a
/// member that restarted in between keeps refusing for one election timeout
/// after its start, see `refuses_vote_after_start`).
#[derive(Clone, Copy, Debug)]
struct Lease {
    term: u64,
    until: Instant,
}

pub(crate) struct RaftLoop {
    raw: RawNode<RaftStore>,
    opts: NodeOptions,
    rx: chan::Receiver<RaftMsg>,
    self_tx: chan::Sender<RaftMsg>,
    apply_tx: ApplySender,
    transport: Arc<dyn Transport>,
    shared: Arc<NodeShared>,
    meta_store: Box<dyn RaftMetaStorage>,
    meta: RaftMeta,
    meta_dirty_since: Option<Instant>,
    snapshots: Arc<dyn SnapshotStorage>,
    throttle: Arc<Throttle>,
    /// The thread that writes the log.
    io: IoWorker,
    /// Dones of proposals made in this input batch, registered with the apply
    /// thread in one message (they commit in a later Ready at the earliest).
    new_pending: Vec<(u64, u64, Done)>,
    /// When each proposal made here reached this thread, by index, until it
    /// commits (for `raftkit_commit_seconds`).
    proposed_at: VecDeque<(u64, Instant)>,
    /// A received snapshot waiting to be durable before the state machine loads it.
    pending_install: Option<(u64, SnapshotMeta)>,
    /// Snapshot transfers in progress, by follower id.
    installs: HashMap<u64, Arc<InstallProgress>>,
    last_snapshot_index: u64,
    /// How the RawNode was created (a bootstrap re-creates it).
    raft_config: raft::Config,
    logger: slog::Logger,
    /// Index of the entry that set the current configuration.
    conf_index: u64,
    pending_transfer: Option<PendingTransfer>,
    peers: HashMap<u64, String>,
    tick: Duration,
    next_tick: Instant,
    last_view: (StateRole, u64, u64),
    new_reads: Vec<ReadWaiter>,
    pending_reads: BTreeMap<u64, PendingRead>,
    /// When this replica started (see `refuses_vote_after_start`).
    started: Instant,
    lease: Option<Lease>,
    /// No lease may start from a round issued before this (after a
    /// leadership transfer, which lets the target campaign without waiting,
    /// or a change of the election timeout).
    no_lease_before: Instant,
    /// A ReadIndex round that only renews the lease is in flight.
    renewing: bool,
    /// Read contexts this replica issues (see [`ReadCtx`]).
    read_ctx: ReadCtx,
    applied: u64,
    /// Applied index reported by an input the apply stage ran on this
    /// thread; taken in at the end of the batch, as `RaftMsg::Applied`.
    applied_inline: Option<u64>,
    snapshot_waiters: Vec<oneshot::Sender<Result<SnapshotMeta, RaftError>>>,
    snapshot_in_progress: bool,
    next_snapshot_at: Option<Instant>,
    failed: Option<RaftError>,
    shutting_down: bool,
    /// Set while a sender's thread runs the loop (`takes_inline`): a
    /// follower may then write its Ready there (see `handle_ready`).
    write_inline: bool,
    /// A leader running an input inline also writes its new entries there,
    /// after sending them (`RAFTKIT_INLINE_LEADER_WRITE=0` turns it off,
    /// for comparisons).
    leader_write_inline: bool,
    /// Highest Ready number handed to the I/O thread (or written inline).
    io_sent: u64,
    /// Highest Ready number the I/O thread reported durable.
    io_done: u64,
    /// Highest Ready number with nothing to write that waits for `io_sent`.
    unrecorded: u64,
    /// Ready numbers (`io_sent`, `io_done`, `unrecorded`, the numbers the
    /// I/O thread reports) are raft-rs's plus this base. A bootstrap
    /// re-creates the `RawNode`, whose numbering starts over: the base then
    /// becomes the highest number used so far, so the counters stay
    /// monotonic and a report about a Ready of the old `RawNode` (at or
    /// below the base) can never mark one of the new one durable.
    ready_base: u64,
    /// Between `ready()` and the Ready's advance: nothing may propose
    /// (raft-rs forbids it; `propose_checked` refuses).
    in_ready: bool,
    /// The newest cluster format committed in the log, and when the leader
    /// may next consider raising it (`cluster_format.rs`).
    committed_format: u32,
    next_format_check: Instant,
    /// Configuration entries were applied in the Ready being handled.
    conf_applied: bool,
    /// Shared with the inbox: whether `takes_inline` can be true for any
    /// input (updated after each batch).
    inline_hint: Arc<std::sync::atomic::AtomicBool>,
    /// Senders run no input themselves before this ([`INLINE_QUIET`] after
    /// this member last had more than one write in flight).
    inline_quiet_until: Instant,
}

impl RaftLoop {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raw: RawNode<RaftStore>,
        opts: NodeOptions,
        rx: chan::Receiver<RaftMsg>,
        self_tx: chan::Sender<RaftMsg>,
        apply_tx: ApplySender,
        transport: Arc<dyn Transport>,
        shared: Arc<NodeShared>,
        meta_store: Box<dyn RaftMetaStorage>,
        meta: RaftMeta,
        peers: HashMap<u64, String>,
        snapshots: Arc<dyn SnapshotStorage>,
        throttle: Arc<Throttle>,
        raft_config: raft::Config,
        logger: slog::Logger,
        conf_index: u64,
        io: IoWorker,
    ) -> Self {
        let tick = Duration::from_millis(opts.tick_ms());
        let next_snapshot_at = (opts.snapshot_interval_s > 0)
            .then(|| Instant::now() + Duration::from_secs(opts.snapshot_interval_s));
        let applied = raw.raft.raft_log.applied;
        let last_snapshot_index = raw.store().snapshot_index;
        let read_ctx = ReadCtx::new(shared.id);
        // The snapshot's format; the entries after it are committed again.
        let meta_cluster_format = shared
            .cluster_format
            .load(std::sync::atomic::Ordering::Acquire);
        RaftLoop {
            raw,
            opts,
            rx,
            self_tx,
            snapshots,
            throttle,
            installs: HashMap::new(),
            new_pending: Vec::new(),
            proposed_at: VecDeque::new(),
            io,
            pending_install: None,
            last_snapshot_index,
            raft_config,
            logger,
            conf_index,
            pending_transfer: None,
            apply_tx,
            transport,
            shared,
            meta_store,
            meta,
            meta_dirty_since: None,
            peers,
            tick,
            next_tick: Instant::now() + tick,
            last_view: (StateRole::Follower, 0, 0),
            new_reads: Vec::new(),
            pending_reads: BTreeMap::new(),
            started: Instant::now(),
            lease: None,
            no_lease_before: Instant::now(),
            renewing: false,
            read_ctx,
            applied,
            applied_inline: None,
            snapshot_waiters: Vec::new(),
            snapshot_in_progress: false,
            next_snapshot_at,
            failed: None,
            shutting_down: false,
            write_inline: false,
            leader_write_inline: raftkit_proto::settings::from_env("inline_leader_write")
                .is_none_or(|v| v != "0"),
            io_sent: 0,
            io_done: 0,
            unrecorded: 0,
            ready_base: 0,
            in_ready: false,
            committed_format: meta_cluster_format,
            next_format_check: Instant::now(),
            conf_applied: false,
            inline_hint: Arc::default(),
            inline_quiet_until: Instant::now(),
        }
    }

    /// Whether the sender of `msg` may run it itself (see `inbox`): only
    /// with at most one write in flight, so that inputs under load still
    /// queue and batch. A leader runs proposals, answers and its own
    /// write's completion; a follower runs an append of at most one entry
    /// (and writes it there, see `handle_ready`); neither within
    /// [`INLINE_QUIET`] of having had more in flight.
    fn takes_inline(&self, msg: &RaftMsg) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let log = &self.raw.raft.raft_log;
        match msg {
            RaftMsg::Propose(_) | RaftMsg::Step(..) | RaftMsg::Persisted { .. }
                if self.raw.raft.state == StateRole::Leader =>
            {
                log.last_index() <= log.committed + 1 && Instant::now() >= self.inline_quiet_until
            }
            // The leader had nothing but this entry in flight: everything
            // before it was committed when it sent it.
            RaftMsg::Step(m, _) => {
                m.get_msg_type() == MessageType::MsgAppend
                    && m.entries.len() <= 1
                    && m.commit >= m.index
                    && Instant::now() >= self.inline_quiet_until
            }
            _ => false,
        }
    }

    /// Ticks raft if a tick is due (the raft thread calls this).
    fn tick_if_due(&mut self, now: Instant) {
        if now >= self.next_tick {
            self.next_tick += self.tick;
            if self.next_tick < now {
                self.next_tick = now + self.tick;
            }
            // A group stopped on an error no longer runs raft: ticking
            // would only pile up elections it never sends.
            if self.failed.is_none() {
                self.on_tick(now);
            }
        }
    }

    /// After a batch of inputs: registers new proposals with the apply
    /// thread and handles the `Ready`.
    fn end_batch(&mut self, now: Instant) {
        if !self.new_pending.is_empty() {
            let batch = std::mem::take(&mut self.new_pending);
            self.send_to_apply(ApplyMsg::Pending(batch));
        }
        if self.failed.is_none() {
            self.watch_transfer(now);
            self.issue_new_reads();
            // A write made durable on this thread (`write_now`) can commit
            // (a lone voter) or make committed entries applicable (a
            // follower): nothing else would run the loop again before the
            // next input or tick, so handle the Ready it produced now.
            for _ in 0..MAX_READY_ROUNDS {
                match self.handle_ready() {
                    Ok(true) if self.raw.has_ready() => {}
                    Ok(_) => break,
                    Err(e) => {
                        self.fail(e);
                        break;
                    }
                }
            }
        }
        if let Some(index) = self.applied_inline.take() {
            self.on_applied(index);
        }
        let log = &self.raw.raft.raft_log;
        if log.last_index() > log.committed + 1 {
            self.inline_quiet_until = now + INLINE_QUIET;
        }
        let could = self.failed.is_none() && now >= self.inline_quiet_until;
        self.inline_hint
            .store(could, std::sync::atomic::Ordering::Relaxed);
    }

    // ------------------------------------------------------------ inputs

    /// The apply stage reached `index`.
    fn on_applied(&mut self, index: u64) {
        // Never past what is committed and durable here (raft-rs would
        // panic); the apply stage only reports such indexes.
        let log = &self.raw.raft.raft_log;
        let index = index.min(log.committed).min(log.persisted);
        if index > self.applied {
            self.applied = index;
            self.raw.advance_apply_to(index);
            self.mark_meta_dirty();
            let gap = self.opts.snapshot_log_gap;
            if gap > 0 && index >= self.last_snapshot_index + gap {
                self.start_snapshot();
            }
        }
    }

    /// Sends `msg` to the apply stage; if it ran on this thread and moved
    /// the applied index, the index is taken in at the end of the batch.
    fn send_to_apply(&mut self, msg: ApplyMsg) {
        if let Some(index) = self.apply_tx.send(msg) {
            self.applied_inline = Some(self.applied_inline.map_or(index, |i| i.max(index)));
        }
    }

    fn handle(&mut self, msg: RaftMsg) {
        if let Some(err) = self.failed.clone() {
            return self.handle_failed(msg, err);
        }
        match msg {
            RaftMsg::Propose(task) => self.propose(task),
            RaftMsg::Step(m, from_addr) => self.step(*m, from_addr),
            RaftMsg::InstallSnapshot {
                msg,
                snapshot,
                from_addr,
            } => self.install_snapshot(*msg, snapshot, from_addr),
            RaftMsg::ReadIndex {
                reply,
                deadline,
                wait_apply,
            } => self.new_reads.push(ReadWaiter {
                reply,
                deadline,
                wait_apply,
            }),
            RaftMsg::Applied(index) => self.on_applied(index),
            RaftMsg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            RaftMsg::Digest(reply) => {
                let _ = self.apply_tx.send(ApplyMsg::Digest(reply));
            }
            RaftMsg::Campaign => {
                if let Err(e) = self.raw.campaign() {
                    tracing::warn!(group = %self.opts.group, error = %e, "campaign failed");
                }
                self.observe_role();
            }
            RaftMsg::SnapshotNow(reply) => {
                if let Some(r) = reply {
                    self.snapshot_waiters.push(r);
                }
                self.start_snapshot();
            }
            RaftMsg::SnapshotDone(result) => self.on_snapshot_done(result),
            RaftMsg::SnapshotSent { to, result } => self.on_snapshot_sent(to, result),
            RaftMsg::Fatal(e) => self.fail(e),
            RaftMsg::Persisted { number, messages } => self.on_persisted(number, messages),
            RaftMsg::SetLive { live, reply } => {
                self.set_live(live);
                let _ = reply.send(());
            }
            RaftMsg::Shutdown => self.shutting_down = true,
            m @ (RaftMsg::Identity(_)
            | RaftMsg::Bootstrap { .. }
            | RaftMsg::ConfChange { .. }
            | RaftMsg::TransferLeader { .. }
            | RaftMsg::ForceConf { .. }) => self.handle_membership(m),
        }
    }

    fn handle_failed(&mut self, msg: RaftMsg, err: RaftError) {
        let stopped = RaftError::Stopped(err.to_string());
        match msg {
            RaftMsg::Propose(task) => task.done.run(Err(stopped)),
            RaftMsg::InstallSnapshot { snapshot, .. } => snapshot.discard(),
            RaftMsg::ReadIndex { reply, .. } => {
                let _ = reply.send(Err(stopped));
            }
            RaftMsg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            RaftMsg::SnapshotNow(Some(reply)) => {
                let _ = reply.send(Err(stopped));
            }
            RaftMsg::Shutdown => self.shutting_down = true,
            RaftMsg::Identity(reply) => {
                let _ = reply.send(self.identity());
            }
            RaftMsg::Bootstrap { reply, .. } => {
                let _ = reply.send(Err(stopped));
            }
            RaftMsg::ConfChange { done, .. } => done.run(Err(stopped)),
            RaftMsg::TransferLeader { reply, .. } => {
                let _ = reply.send(Err(stopped));
            }
            RaftMsg::ForceConf { reply, .. } => {
                let _ = reply.send(Err(stopped));
            }
            RaftMsg::SetLive { live, reply } => {
                live.apply_to(&mut self.opts);
                *self.shared.live.write() = live;
                let _ = reply.send(());
            }
            _ => {}
        }
    }

    /// Refuses a proposal made between `ready()` and the Ready's advance,
    /// which raft-rs forbids (it would corrupt the Ready's bookkeeping).
    /// No code path does that; this keeps a future one from doing it quietly.
    fn check_not_in_ready(&self) -> Result<(), RaftError> {
        debug_assert!(!self.in_ready, "proposal while handling a Ready");
        if self.in_ready {
            return Err(RaftError::Busy(
                "internal error: proposal while handling a Ready; retry".into(),
            ));
        }
        Ok(())
    }

    fn propose(&mut self, task: Task) {
        if let Err(e) = self.check_not_in_ready() {
            return task.done.run(Err(e));
        }
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            let leader = self.leader_peer();
            task.done.run(Err(RaftError::NotLeader { leader }));
            return;
        }
        let term = raft.term;
        if let Some(expected) = task.expected_term {
            if expected != term {
                task.done.run(Err(RaftError::TermMismatch {
                    expected,
                    current: term,
                }));
                return;
            }
        }
        if raft.lead_transferee.is_some() {
            task.done.run(Err(RaftError::Transferring));
            return;
        }
        let before = raft.raft_log.last_index();
        match self.raw.propose(Vec::new(), task.data.to_vec()) {
            Ok(()) => {
                // raft-rs does not return the index: the entry is the last
                // one in the log right after a successful propose.
                let index = self.raw.raft.raft_log.last_index();
                debug_assert_eq!(index, before + 1);
                crate::stage_trace::mark("propose", index);
                self.new_pending.push((index, term, task.done));
                if self.proposed_at.len() < MAX_TIMED_PROPOSALS {
                    self.proposed_at.push_back((index, Instant::now()));
                }
            }
            Err(raft::Error::ProposalDropped) => {
                let err = if self.raw.raft.state != StateRole::Leader {
                    RaftError::NotLeader {
                        leader: self.leader_peer(),
                    }
                } else if self.raw.raft.lead_transferee.is_some() {
                    RaftError::Transferring
                } else {
                    RaftError::Busy("too many uncommitted bytes; retry later".into())
                };
                task.done.run(Err(err));
            }
            Err(e) => task
                .done
                .run(Err(RaftError::Busy(format!("proposal rejected: {e}")))),
        }
    }

    fn step(&mut self, m: Message, from_addr: Option<String>) {
        if m.to != self.shared.id {
            tracing::debug!(group = %self.opts.group, to = m.to, me = self.shared.id, "dropping a message for another raft id");
            return;
        }
        if let Some(addr) = from_addr {
            if !addr.is_empty() {
                self.peers.entry(m.from).or_insert(addr);
            }
        }
        crate::stage_trace::message("step", &m);
        if self.refuses_vote_after_start(&m) {
            tracing::debug!(group = %self.opts.group, from = %format!("{:016x}", m.from), "ignoring a vote request within an election timeout of starting");
            return;
        }
        match self.raw.step(m) {
            Ok(()) | Err(raft::Error::StepPeerNotFound) => {}
            Err(e) => tracing::debug!(group = %self.opts.group, error = %e, "step failed"),
        }
        self.observe_role();
    }

    /// Steps a leader's snapshot message whose files are verified, and
    /// publishes the snapshot only if raft took it: raft-rs ignores a
    /// snapshot its log already covers (or an outdated one), and a snapshot
    /// published without raft would be offered to followers and loaded on
    /// restart though raft's log is not based on it. (The state machine
    /// loads it once the Ready that installs it is durable.)
    fn install_snapshot(
        &mut self,
        msg: Message,
        snapshot: crate::storage::snapshot::VerifiedSnapshot,
        from_addr: Option<String>,
    ) {
        let (index, term) = (snapshot.meta().index, snapshot.meta().term);
        let pending = |raw: &RawNode<RaftStore>| {
            raw.raft
                .raft_log
                .unstable
                .snapshot
                .as_ref()
                .is_some_and(|s| {
                    let md = s.get_metadata();
                    (md.index, md.term) == (index, term)
                })
        };
        let before = pending(&self.raw);
        self.step(msg, from_addr);
        if before || !pending(&self.raw) {
            tracing::info!(group = %self.opts.group, index, term, "raft did not take the received snapshot (its log already covers it, or it is outdated); not publishing it");
            snapshot.discard();
            return;
        }
        if let Err(e) = snapshot.publish() {
            // Raft holds the snapshot now; without its files it cannot go on.
            self.fail(RaftError::Storage(format!(
                "publishing received snapshot {index}: {e}"
            )));
        }
    }

    /// Check-quorum keeps a member that heard from the leader within an
    /// election timeout from voting for anyone else, which is what a leader's
    /// read lease counts on; a restarted member has forgotten it heard. So
    /// for one election timeout after starting, a member ignores vote and
    /// pre-vote requests for a newer term, as if it had just heard from a
    /// leader (a leadership transfer's forced campaign is exempt, as in
    /// raft-rs). Costs at most one election timeout of delay for an election
    /// right after a restart.
    fn refuses_vote_after_start(&self, m: &Message) -> bool {
        matches!(
            m.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && m.term > self.raw.raft.term
            && m.context.as_ref() != raft::CAMPAIGN_TRANSFER
            && self.started.elapsed() < Duration::from_millis(self.opts.election_timeout_ms)
    }

    fn on_tick(&mut self, now: Instant) {
        self.raw.tick();
        self.watch_transfer(now);
        self.observe_role();
        self.check_transfer(now);
        self.step_down_if_removed();
        self.after_conf_applied(now);
        self.maybe_raise_cluster_format(now);
        self.retry_reads(now);
        if let Some(since) = self.meta_dirty_since {
            if now.duration_since(since) >= META_FLUSH_INTERVAL {
                if let Err(e) = self.save_meta() {
                    self.fail(e);
                }
            }
        }
        if let Some(at) = self.next_snapshot_at {
            if now >= at {
                self.next_snapshot_at =
                    Some(now + Duration::from_secs(self.opts.snapshot_interval_s));
                self.start_snapshot();
            }
        }
    }

    // ------------------------------------------------------------ reads

    /// Applies options changed at run time.
    fn set_live(&mut self, live: crate::options::LiveOptions) {
        let now = Instant::now();
        if live.election_timeout_ms != self.opts.election_timeout_ms {
            // Members switch at different moments: no lease until both the
            // old and the new timeout have passed twice.
            let longest = live.election_timeout_ms.max(self.opts.election_timeout_ms);
            self.revoke_lease(now + Duration::from_millis(2 * longest));
            // The raft clock is a tenth of the election timeout: changing the
            // tick changes the election timeout and the heartbeat interval.
            self.tick = Duration::from_millis(
                (live.election_timeout_ms / crate::options::ELECTION_TICKS as u64).max(1),
            );
            self.next_tick = now + self.tick;
        }
        if live.snapshot_interval_s != self.opts.snapshot_interval_s {
            self.next_snapshot_at = (live.snapshot_interval_s > 0)
                .then(|| now + Duration::from_secs(live.snapshot_interval_s));
        }
        self.throttle.set_rate(live.snapshot_throttle_bytes_per_sec);
        live.apply_to(&mut self.opts);
        tracing::info!(group = %self.opts.group, options = ?live, "live options changed");
        *self.shared.live.write() = live;
    }

    /// One ReadIndex request serves every read that arrived in this batch;
    /// under a valid lease they are answered from the committed index, and
    /// the lease is renewed in the background once half of it is used.
    fn issue_new_reads(&mut self) {
        if self.new_reads.is_empty() {
            return;
        }
        let now = Instant::now();
        if let Some(until) = self.valid_lease(now) {
            let index = self.raw.raft.raft_log.committed;
            let waiters = std::mem::take(&mut self.new_reads);
            self.shared
                .metrics
                .lease_reads
                .fetch_add(waiters.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.answer_reads(index, waiters);
            if !self.renewing && until.saturating_duration_since(now) < self.lease_len() / 2 {
                self.renewing = true;
                self.issue_read(Vec::new(), now);
            }
            return;
        }
        let waiters = std::mem::take(&mut self.new_reads);
        self.issue_read(waiters, now);
    }

    fn issue_read(&mut self, waiters: Vec<ReadWaiter>, now: Instant) {
        let ctx = self.read_ctx.next();
        self.shared
            .metrics
            .read_index_rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.raw.read_index(self.read_ctx.encode(ctx));
        self.pending_reads.insert(
            ctx,
            PendingRead {
                waiters,
                issued_at: now,
                first_issued: now,
                term: self.raw.raft.term,
            },
        );
    }

    /// How long a lease lasts: two ticks less than the election timeout
    /// (a member's check-quorum window, counted in its own ticks, can close
    /// up to a tick early), and 10% less again for clock-rate differences.
    fn lease_len(&self) -> Duration {
        self.tick
            .mul_f64((crate::options::ELECTION_TICKS as f64 - 2.0) * 0.9)
    }

    /// The end of the lease if reads may be answered under it now.
    fn valid_lease(&mut self, now: Instant) -> Option<Instant> {
        if self.opts.read_mode != crate::options::ReadMode::Lease {
            return None;
        }
        self.watch_transfer(now);
        let raft = &self.raw.raft;
        match self.lease {
            Some(l)
                if now < l.until
                    && l.term == raft.term
                    && raft.state == StateRole::Leader
                    && raft.lead_transferee.is_none() =>
            {
                Some(l.until)
            }
            _ => None,
        }
    }

    /// A leadership transfer lets its target campaign at once, ignoring the
    /// other members' check-quorum: drop the lease, and start none from a
    /// round issued before the transfer is well over.
    fn watch_transfer(&mut self, now: Instant) {
        if self.raw.raft.lead_transferee.is_some() {
            self.revoke_lease(now + self.tick * (2 * crate::options::ELECTION_TICKS as u32));
        }
    }

    fn revoke_lease(&mut self, no_new_before: Instant) {
        self.lease = None;
        self.no_lease_before = self.no_lease_before.max(no_new_before);
    }

    /// raft-rs drops read requests silently when there is no leader or the
    /// leader has not committed in its term yet: ask again until the deadline.
    fn retry_reads(&mut self, now: Instant) {
        let retry_after = self.tick * 3;
        let mut expired = Vec::new();
        for (ctx, p) in self.pending_reads.iter_mut() {
            let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut p.waiters)
                .into_iter()
                .partition(|w| now < w.deadline);
            p.waiters = keep;
            expired.extend(gone);
            if !p.waiters.is_empty() && now.duration_since(p.issued_at) >= retry_after {
                // (A retry reuses the request: its lease still counts from
                // `first_issued`, since an answer may confirm the first round.)
                p.issued_at = now;
                self.raw.read_index(self.read_ctx.encode(*ctx));
            }
        }
        // A lease renewal (no waiters) is given up after one retry period.
        self.pending_reads
            .retain(|_, p| !p.waiters.is_empty() || now.duration_since(p.issued_at) < retry_after);
        self.renewing = self.pending_reads.values().any(|p| p.waiters.is_empty());
        for w in expired {
            let _ = w.reply.send(Err(RaftError::Timeout(
                "a quorum did not confirm the read in time".into(),
            )));
        }
    }

    /// Reads confirmed at `index`: barriers wait in the apply stage until
    /// it is applied; the others learn the index at once.
    fn answer_reads(&mut self, index: u64, waiters: Vec<ReadWaiter>) {
        let (barriers, peeks): (Vec<_>, Vec<_>) = waiters.into_iter().partition(|w| w.wait_apply);
        for w in peeks {
            let _ = w.reply.send(Ok(index));
        }
        if !barriers.is_empty() {
            let _ = self.apply_tx.send(ApplyMsg::Read {
                index,
                waiters: barriers,
            });
        }
    }

    fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        // An answer to another incarnation's request (or another member's:
        // raft-rs only returns our own) matches nothing pending here.
        let Some(counter) = self.read_ctx.decode(ctx) else {
            return;
        };
        if let Some(p) = self.pending_reads.remove(&counter) {
            if p.waiters.is_empty() {
                self.renewing = false;
            }
            let raft = &self.raw.raft;
            if self.opts.read_mode == crate::options::ReadMode::Lease
                && raft.state == StateRole::Leader
                && raft.term == p.term
                && raft.lead_transferee.is_none()
                && p.first_issued >= self.no_lease_before
            {
                let until = p.first_issued + self.lease_len();
                if self
                    .lease
                    .is_none_or(|l| l.term != p.term || l.until < until)
                {
                    self.lease = Some(Lease {
                        term: p.term,
                        until,
                    });
                }
            }
            if p.waiters.is_empty() {
                return;
            }
            self.answer_reads(index, p.waiters);
        }
    }

    // ------------------------------------------------------------ ready

    /// One Ready, in raft-rs's order, with persistence handed to the I/O
    /// thread (async Ready): messages that need no persistence go out now,
    /// committed entries go to the apply thread, new entries enter the
    /// in-memory log (so raft-rs reads them), and the durable part is queued;
    /// messages that must wait for it go out when the I/O thread reports it
    /// (`RaftMsg::Persisted`). Returns whether this thread wrote the Ready
    /// itself and made it durable (then raft may have more to do at once).
    fn handle_ready(&mut self) -> Result<bool, RaftError> {
        if !self.raw.has_ready() {
            return Ok(false);
        }
        let mut rd = self.raw.ready();
        self.in_ready = true;
        self.observe_role();
        self.send_messages(rd.take_messages());
        let mut reset = None;
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let (next, term, meta) = self.apply_snapshot(&snap)?;
            reset = Some((next, term));
            // The state machine loads it only once it is durable here.
            self.pending_install = Some((self.ready_base + rd.number(), meta));
        }
        self.forward_committed(rd.take_committed_entries());
        let entries = rd.take_entries();
        if !entries.is_empty() {
            let cache = &mut self.raw.mut_store().log;
            if let Some(last_kept) = cache.check_append(&entries)? {
                cache.truncate_suffix(last_kept)?;
            }
            cache.push(&entries);
        }
        if let Some(hs) = rd.hs() {
            // Term and vote are written (and fsynced) here, before any
            // message that depends on them can leave.
            self.on_hard_state(hs.clone())?;
        }
        for rs in rd.take_read_states() {
            self.on_read_state(rs.index, &rs.request_ctx);
        }
        let number = self.ready_base + rd.number();
        let messages = rd.take_persisted_messages();
        let mut persisted_here = false;
        if reset.is_none() && entries.is_empty() && self.io_done >= self.io_sent {
            // Nothing to write, and every earlier Ready is durable: no
            // reason to wake the I/O thread (a leader's commit advancing,
            // a follower's heartbeat answer).
            self.raw.advance_append_async(rd);
            self.send_messages(messages);
            self.persist_ready(number);
            self.io_done = number;
            self.io_sent = number;
        } else if reset.is_none() && entries.is_empty() && messages.is_empty() {
            // Nothing to write or send; its record is released with the
            // writes queued before it (`on_persisted`).
            self.raw.advance_append_async(rd);
            self.unrecorded = number;
        } else {
            let task = IoTask::Persist {
                number,
                reset,
                entries,
                sync: rd.must_sync(),
                messages,
            };
            self.io_sent = number;
            // A follower's answer waits for this write. When the loop runs on
            // the thread that received the message and nothing else is queued,
            // writing here lets that thread send the answer too (no hand-off
            // to the I/O thread and back). A leader's appends already left
            // (top of this function): writing its own copy here spares the
            // wake-up of the I/O thread, whose write raced the followers'.
            let waited_for =
                matches!(&task, IoTask::Persist { messages, .. } if !messages.is_empty());
            let leader_write = self.leader_write_inline
                && self.raw.raft.state == StateRole::Leader
                && matches!(&task, IoTask::Persist { entries, .. } if !entries.is_empty());
            let how = if self.write_inline && (waited_for || leader_write) {
                may_block()
            } else {
                MayBlock::No
            };
            let written = if how != MayBlock::No {
                let r = if how == MayBlock::InPlace {
                    // A runtime worker: let the runtime hand its other
                    // tasks to another thread while this one waits for
                    // the disk.
                    tokio::task::block_in_place(|| self.io.write_now(task))
                } else {
                    self.io.write_now(task)
                };
                match r {
                    Ok(done) => done,
                    Err(IoNow::Busy(task)) => {
                        self.io.send(task);
                        None
                    }
                    Err(IoNow::Failed(e)) => return Err(e.into()),
                }
            } else {
                self.io.send(task);
                None
            };
            self.raw.advance_append_async(rd);
            if let Some((number, messages)) = written {
                self.on_persisted(number, messages);
                persisted_here = true;
            }
        }
        self.in_ready = false;
        self.step_down_if_removed();
        if std::mem::take(&mut self.conf_applied) {
            self.after_conf_applied(Instant::now());
        }
        if self.raw.store().wanted.replace(false) {
            // raft-rs needs a snapshot for a follower and ours is missing or too old.
            self.start_snapshot();
        }
        Ok(persisted_here)
    }

    /// Tells raft-rs that Readys up to `number` (counted with
    /// `ready_base`) are durable; numbers of a `RawNode` replaced by a
    /// bootstrap are ignored.
    fn persist_ready(&mut self, number: u64) {
        if number > self.ready_base {
            self.raw.on_persist_ready(number - self.ready_base);
        }
    }

    /// The I/O thread made Readys up to `number` durable.
    fn on_persisted(&mut self, number: u64, messages: Vec<Message>) {
        if number <= self.ready_base {
            // Written for the `RawNode` a bootstrap replaced: its messages
            // speak for a raft state that no longer exists.
            self.io_done = self.io_done.max(number);
            return;
        }
        crate::stage_trace::mark("persisted", self.raw.raft.raft_log.last_index());
        if self
            .pending_install
            .as_ref()
            .is_some_and(|(n, _)| *n <= number)
        {
            if let Some((_, meta)) = self.pending_install.take() {
                let _ = self.apply_tx.send(ApplyMsg::InstallSnapshot { meta });
            }
        }
        self.send_messages(messages);
        // raft-rs 0.7 unwraps a leader's own progress when its entries turn
        // durable: a leader whose removal was applied (in the committed
        // entries of the Ready just handled, which may also have carried a
        // proposal written on this thread) steps down first. This runs after
        // the Ready was advanced, outside Ready handling.
        self.step_down_if_removed();
        self.persist_ready(number);
        self.io_done = self.io_done.max(number);
        if self.io_done >= self.io_sent && self.unrecorded > number {
            self.persist_ready(self.unrecorded);
            self.io_done = self.unrecorded;
            self.io_sent = self.unrecorded;
        }
        self.observe_role();
    }

    /// A follower installs a snapshot raft-rs accepted: its files were
    /// received, verified and published before the message was stepped.
    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(u64, u64, SnapshotMeta), RaftError> {
        let md = snap.get_metadata();
        let meta: SnapshotMeta = serde_json::from_slice(&snap.data).map_err(|e| {
            RaftError::Storage(format!("undecodable snapshot meta in raft message: {e}"))
        })?;
        if (meta.index, meta.term) != (md.index, md.term) {
            return Err(RaftError::Storage(format!(
                "snapshot message for {}/{} carries meta for {}/{}",
                md.index, md.term, meta.index, meta.term
            )));
        }
        tracing::info!(group = %self.opts.group, index = md.index, term = md.term, "installing snapshot");
        let store = self.raw.mut_store();
        store.log.reset(md.index + 1, md.term);
        store.set_snapshot(meta.clone());
        for p in &meta.peers {
            self.peers.insert(p.id, p.addr.clone());
        }
        self.last_snapshot_index = md.index;
        // The log now starts after the snapshot: the recorded commit must cover it.
        self.meta.commit = self.meta.commit.max(md.index);
        if self.meta.cluster_id == 0 && meta.cluster_id != 0 {
            self.set_cluster_id(meta.cluster_id);
        }
        self.format_committed(meta.cluster_format);
        self.meta_store.save(&self.meta)?;
        Ok((md.index + 1, md.term, meta))
    }

    fn on_hard_state(&mut self, hs: HardState) -> Result<(), RaftError> {
        if hs.term != self.meta.term || hs.vote != self.meta.vote {
            // Term and vote must be durable before any vote or append
            // response leaves this node.
            // The commit recorded is never past what this log holds
            // durably: the Ready's entries (which may replace uncommitted
            // ones still on disk) are not written yet, and a crash now must
            // not leave a commit that covers those old entries.
            self.meta.term = hs.term;
            self.meta.vote = hs.vote;
            self.meta.commit = self.durable_commit(hs.commit);
            self.meta.applied = self.applied;
            self.meta_store.save(&self.meta)?;
            self.meta_dirty_since = None;
        } else if hs.commit != self.meta.commit {
            self.mark_meta_dirty();
        }
        Ok(())
    }

    /// Records the cluster this replica belongs to (saved with the meta).
    fn set_cluster_id(&mut self, id: u64) {
        self.meta.cluster_id = id;
        self.shared
            .cluster_id
            .store(id, std::sync::atomic::Ordering::Release);
        self.transport.set_cluster_id(&self.opts.group, id);
        tracing::info!(group = %self.opts.group, cluster = %format!("{id:016x}"), "cluster id");
    }

    /// The commit index that may be written to the meta: only one the
    /// local log holds durably (raft-rs lowers `persisted` when a conflicting
    /// append replaces entries, before the replacements are written). Every
    /// write of `meta.commit` goes through here, or (snapshot install,
    /// bootstrap) records an index whose data is already durable.
    fn durable_commit(&self, commit: u64) -> u64 {
        commit.min(self.raw.raft.raft_log.persisted)
    }

    fn mark_meta_dirty(&mut self) {
        if self.meta_dirty_since.is_none() {
            self.meta_dirty_since = Some(Instant::now());
        }
    }

    fn save_meta(&mut self) -> Result<(), RaftError> {
        let hs = self.raw.raft.hard_state();
        self.meta.term = hs.term;
        self.meta.vote = hs.vote;
        self.meta.commit = self.durable_commit(hs.commit);
        self.meta.applied = self.applied;
        self.meta_store.save(&self.meta)?;
        self.meta_dirty_since = None;
        Ok(())
    }

    fn send_messages(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.start_install(m);
                continue;
            }
            let to = m.to;
            crate::stage_trace::message("send", &m);
            let sent = match self.peers.get(&to) {
                Some(addr) => self.transport.send(&self.opts.group, addr, m).is_ok(),
                None => {
                    tracing::warn!(group = %self.opts.group, to = %format!("{to:016x}"), "no address for raft peer; message dropped");
                    false
                }
            };
            if !sent {
                self.raw.report_unreachable(to);
            }
        }
    }

    /// Applies configuration entries to raft here (they are committed), then
    /// hands the whole batch, in order, to the apply thread.
    fn forward_committed(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let now = Instant::now();
        while let Some(&(index, at)) = self.proposed_at.front() {
            if index > last {
                break;
            }
            self.proposed_at.pop_front();
            // An index proposed in an older term may have been replaced by
            // another leader's entry; its time is still how long the index
            // took to commit.
            self.shared
                .metrics
                .commit_seconds
                .observe(now.saturating_duration_since(at));
        }
        let mut batch = Vec::with_capacity(entries.len());
        for e in entries {
            crate::stage_trace::mark("commit", e.index);
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    match crate::cluster_format::from_entry(&e.context, &e.data) {
                        Some(format) => {
                            self.format_committed(format);
                            batch.push(Committed::ClusterFormat {
                                index: e.index,
                                term: e.term,
                                format,
                            });
                        }
                        None => batch.push(Committed::Normal {
                            index: e.index,
                            term: e.term,
                            data: e.data,
                        }),
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let conf = self.apply_conf_entry(&e);
                    batch.push(Committed::Conf {
                        index: e.index,
                        term: e.term,
                        conf,
                    });
                }
            }
        }
        // What follows a configuration change (leaving a joint
        // configuration proposes) runs once the Ready is advanced: raft-rs
        // forbids proposing between `ready()` and `advance`.
        self.conf_applied |= batch.iter().any(|c| matches!(c, Committed::Conf { .. }));
        self.send_to_apply(ApplyMsg::Committed(batch));
    }

    fn apply_conf_entry(&mut self, e: &Entry) -> Option<(Configuration, ConfState)> {
        // The quorum that granted the lease may no longer be one.
        self.revoke_lease(Instant::now());
        if !e.context.is_empty() {
            match serde_json::from_slice::<Vec<PeerId>>(&e.context) {
                Ok(ps) => {
                    if e.index == 1 && self.meta.cluster_id == 0 {
                        // The log's first entry carries the bootstrap
                        // configuration: the cluster's id follows from it.
                        let ids: Vec<u64> = ps.iter().map(|p| p.id).collect();
                        self.set_cluster_id(crate::membership::cluster_id_of(&ids));
                        self.mark_meta_dirty();
                    }
                    for p in ps {
                        self.peers.insert(p.id, p.addr);
                    }
                }
                Err(err) => {
                    tracing::warn!(group = %self.opts.group, index = e.index, error = %err, "undecodable conf change context")
                }
            }
        }
        let result = match e.get_entry_type() {
            EntryType::EntryConfChange => ConfChange::parse_from_bytes(&e.data)
                .map_err(|err| err.to_string())
                .and_then(|cc| {
                    self.raw
                        .apply_conf_change(&cc)
                        .map_err(|err| err.to_string())
                }),
            _ => ConfChangeV2::parse_from_bytes(&e.data)
                .map_err(|err| err.to_string())
                .and_then(|cc| {
                    self.raw
                        .apply_conf_change(&cc)
                        .map_err(|err| err.to_string())
                }),
        };
        match result {
            Ok(cs) => {
                tracing::info!(group = %self.opts.group, index = e.index, voters = ?cs.voters, learners = ?cs.learners, outgoing = ?cs.voters_outgoing, "configuration applied");
                self.conf_index = e.index;
                self.observe_role();
                self.publish_view();
                Some((self.configuration(&cs), cs))
            }
            Err(err) => {
                tracing::warn!(group = %self.opts.group, index = e.index, error = %err, "configuration change rejected");
                None
            }
        }
    }

    fn peer(&self, id: u64) -> PeerId {
        PeerId {
            id,
            addr: self.peers.get(&id).cloned().unwrap_or_default(),
        }
    }

    fn configuration(&self, cs: &ConfState) -> Configuration {
        let map = |ids: &[u64]| ids.iter().map(|i| self.peer(*i)).collect();
        Configuration {
            voters: map(&cs.voters),
            learners: map(&cs.learners),
            voters_outgoing: map(&cs.voters_outgoing),
        }
    }

    fn leader_peer(&self) -> Option<PeerId> {
        let l = self.raw.raft.leader_id;
        (l != 0).then(|| self.peer(l))
    }

    // ------------------------------------------------------------ roles

    /// Turns role changes into state machine events (in log order, through
    /// the apply thread) and publishes the view for other threads.
    fn observe_role(&mut self) {
        let raft = &self.raw.raft;
        let now = (raft.state, raft.term, raft.leader_id);
        if now == self.last_view {
            return;
        }
        let (old_role, old_term, old_leader) = self.last_view;
        let (role, term, leader) = now;
        if leader != old_leader && leader != 0 {
            self.shared
                .metrics
                .leader_changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if old_role == StateRole::Leader && (role != StateRole::Leader || term != old_term) {
            let _ = self.apply_tx.send(ApplyMsg::LeaderStop { term: old_term });
            // Reads waiting on this leader's confirmation will be answered by
            // retrying them against the next leader.
        }
        if old_role == StateRole::Follower
            && old_leader != 0
            && (role != StateRole::Follower || leader != old_leader || term != old_term)
        {
            let ctx = LeaderChangeContext {
                leader: self.peer(old_leader),
                term: old_term,
            };
            let _ = self.apply_tx.send(ApplyMsg::StopFollowing(ctx));
        }
        if role == StateRole::Leader && (old_role != StateRole::Leader || term != old_term) {
            // become_leader appended an empty entry; it is the last one now.
            let index = raft.raft_log.last_index();
            tracing::info!(group = %self.opts.group, term, index, "became leader");
            let _ = self.apply_tx.send(ApplyMsg::LeaderStart { term, index });
        }
        if role == StateRole::Follower
            && leader != 0
            && (old_role != StateRole::Follower || leader != old_leader || term != old_term)
        {
            let ctx = LeaderChangeContext {
                leader: self.peer(leader),
                term,
            };
            let _ = self.apply_tx.send(ApplyMsg::StartFollowing(ctx));
        }
        self.last_view = now;
        self.publish_view();
        self.check_transfer(Instant::now());
    }

    fn publish_view(&self) {
        let raft = &self.raw.raft;
        let cs = raft.prs().conf().to_conf_state();
        let role = if self.failed.is_some() {
            Role::Error
        } else if cs.voters.is_empty() && cs.learners.is_empty() {
            Role::Uninitialized
        } else {
            match raft.state {
                StateRole::Follower => Role::Follower,
                StateRole::PreCandidate => Role::PreCandidate,
                StateRole::Candidate => Role::Candidate,
                StateRole::Leader => Role::Leader,
            }
        };
        let me = self.shared.id;
        let member = cs.voters.contains(&me)
            || cs.learners.contains(&me)
            || cs.voters_outgoing.contains(&me);
        let members: Vec<String> = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .map(|id| self.peer(*id).addr)
            .filter(|a| !a.is_empty())
            .collect();
        let members = (!members.is_empty()).then(|| Arc::from(members));
        *self.shared.view.write() = RoleView {
            role,
            term: raft.term,
            leader: self.leader_peer(),
            member,
            members,
        };
    }

    // ------------------------------------------------------------ snapshots

    fn start_snapshot(&mut self) {
        if self.snapshot_in_progress {
            return;
        }
        self.snapshot_in_progress = true;
        let _ = self.apply_tx.send(ApplyMsg::Snapshot);
    }

    /// A snapshot was published: offer it to followers and compact the log,
    /// keeping `snapshot_margin` entries before it.
    fn on_snapshot_done(&mut self, result: Result<SnapshotMeta, RaftError>) {
        self.snapshot_in_progress = false;
        if let Ok(meta) = &result {
            self.last_snapshot_index = self.last_snapshot_index.max(meta.index);
            let store = self.raw.mut_store();
            store.set_snapshot(meta.clone());
            let first_kept = meta.index.saturating_sub(self.opts.snapshot_margin) + 1;
            if first_kept > store.log.first_index() {
                if let Err(e) = store.log.truncate_prefix(first_kept) {
                    self.fail(e.into());
                } else {
                    self.io.send(IoTask::TruncatePrefix(first_kept));
                    tracing::info!(group = %self.opts.group, snapshot = meta.index, first_index = first_kept, "log compacted");
                }
            }
        }
        for w in self.snapshot_waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }

    /// raft-rs wants follower `m.to` to get a snapshot: stream it out of
    /// band; the follower steps `m` once the files are verified.
    fn start_install(&mut self, m: Message) {
        let to = m.to;
        if self.installs.contains_key(&to) {
            return; // one transfer per follower; raft-rs waits for its outcome
        }
        let index = m.get_snapshot().get_metadata().index;
        let refuse = |this: &mut Self, why: String| {
            tracing::info!(group = %this.opts.group, to = %format!("{to:016x}"), index, "not sending snapshot: {why}");
            this.raw.report_snapshot(to, SnapshotStatus::Failure);
        };
        if self.installs.len() >= self.opts.max_snapshot_installs {
            return refuse(
                self,
                format!("{} transfers already running", self.installs.len()),
            );
        }
        let Some(addr) = self.peers.get(&to).cloned() else {
            return refuse(self, "no address for the follower".into());
        };
        let source = match self.snapshots.latest() {
            Ok(Some(r)) if r.meta().index == index => r.open_source(),
            Ok(_) => return refuse(self, "that snapshot is no longer the newest".into()),
            Err(e) => Err(e),
        };
        let source = match source {
            Ok(s) => Arc::new(s),
            Err(e) => return refuse(self, e.to_string()),
        };
        let peer = PeerId { id: to, addr };
        let progress = Arc::new(InstallProgress {
            peer: peer.clone(),
            index,
            bytes_total: source.meta().files.iter().map(|f| f.size).sum(),
            bytes_sent: Default::default(),
            attempts: Default::default(),
            started_unix_ms: crate::storage::snapshot::now_unix_ms(),
        });
        tracing::info!(group = %self.opts.group, to = %peer, index, bytes = progress.bytes_total, "sending snapshot");
        self.installs.insert(to, progress.clone());
        let job = SnapshotJob {
            group: self.opts.group.clone(),
            to: peer,
            msg: m,
            source,
            chunk_bytes: self.opts.snapshot_chunk_bytes,
            throttle: self.throttle.clone(),
            progress,
        };
        let tx = self.self_tx.clone();
        self.transport.install_snapshot(
            job,
            Box::new(move |result| {
                let _ = tx.send(RaftMsg::SnapshotSent { to, result });
            }),
        );
    }

    fn on_snapshot_sent(&mut self, to: u64, result: Result<(), String>) {
        self.installs.remove(&to);
        match result {
            Ok(()) => {
                self.shared
                    .metrics
                    .snapshots_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(group = %self.opts.group, to = %format!("{to:016x}"), "snapshot delivered");
                self.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
            Err(e) => {
                self.shared
                    .metrics
                    .snapshot_send_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(group = %self.opts.group, to = %format!("{to:016x}"), error = %e, "snapshot transfer failed");
                self.raw.report_snapshot(to, SnapshotStatus::Failure);
            }
        }
    }

    // ------------------------------------------------------------ status

    fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let cs = raft.prs().conf().to_conf_state();
        let view = self.shared.view.read().clone();
        let mut peers = Vec::new();
        if raft.state == StateRole::Leader {
            let last = raft.raft_log.last_index();
            for (id, pr) in raft.prs().iter() {
                let me = *id == self.shared.id;
                peers.push(PeerProgress {
                    peer: self.peer(*id),
                    voter: !cs.learners.contains(id),
                    match_index: pr.matched,
                    next_index: pr.next_idx,
                    state: format!("{:?}", pr.state).to_lowercase(),
                    recent_active: pr.recent_active,
                    inflight: pr.ins.count(),
                    caught_up: me
                        || (pr.recent_active && pr.matched + self.opts.catchup_margin >= last),
                });
            }
            peers.sort_by(|a, b| a.peer.addr.cmp(&b.peer.addr));
        }
        NodeStatus {
            group: self.opts.group.clone(),
            peer: self.shared.peer(),
            role: view.role,
            term: raft.term,
            vote: raft.vote,
            leader: self.leader_peer(),
            commit_index: raft.raft_log.committed,
            applied_index: self
                .shared
                .applied
                .load(std::sync::atomic::Ordering::Acquire),
            first_log_index: store.log.first_index(),
            last_log_index: raft.raft_log.last_index(),
            disk_index: raft.raft_log.persisted,
            snapshot_index: store.snapshot_index,
            snapshot_term: store.snapshot_term,
            snapshot: self.shared.snapshot.read().clone(),
            installs: self.installs.values().map(|p| p.view()).collect(),
            conf: self.configuration(&cs),
            peers,
            pending_reads: self.pending_reads.values().map(|p| p.waiters.len()).sum(),
            pending_proposals: self
                .shared
                .pending_proposals
                .load(std::sync::atomic::Ordering::Relaxed),
            conf_index: self.conf_index,
            catchup_margin: self.opts.catchup_margin,
            cluster_id: self.meta.cluster_id,
            cluster_format: self
                .shared
                .cluster_format
                .load(std::sync::atomic::Ordering::Acquire),
            max_cluster_format: self.opts.max_cluster_format,
            log_disk_bytes: self
                .io
                .disk_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            error: self.failed.as_ref().map(|e| e.to_string()),
        }
    }

    // ------------------------------------------------------------ stop

    fn fail(&mut self, err: RaftError) {
        tracing::error!(group = %self.opts.group, error = %err, "raft node stopped after an unrecoverable error");
        *self.shared.error.write() = Some(err.clone());
        self.failed = Some(err.clone());
        self.publish_view();
        let stopped = RaftError::Stopped(err.to_string());
        for (_, p) in std::mem::take(&mut self.pending_reads) {
            for w in p.waiters {
                let _ = w.reply.send(Err(stopped.clone()));
            }
        }
        for w in self.new_reads.drain(..) {
            let _ = w.reply.send(Err(stopped.clone()));
        }
        let _ = self.apply_tx.send(ApplyMsg::Error(err));
    }

    fn stop(&mut self) {
        if self.failed.is_none() {
            if let Err(e) = self.io.flush().and_then(|_| self.save_meta()) {
                tracing::warn!(group = %self.opts.group, error = %e, "could not persist state at shutdown");
            }
        }
        for (_, p) in std::mem::take(&mut self.pending_reads) {
            for w in p.waiters {
                let _ = w.reply.send(Err(RaftError::ShuttingDown));
            }
        }
        for w in self.new_reads.drain(..) {
            let _ = w.reply.send(Err(RaftError::ShuttingDown));
        }
        for w in self.snapshot_waiters.drain(..) {
            let _ = w.send(Err(RaftError::ShuttingDown));
        }
        if let Some(p) = self.pending_transfer.take() {
            let _ = p.reply.send(Err(RaftError::ShuttingDown));
        }
        // Proposals still queued fail from their Done's drop.
        while let Ok(m) = self.rx.try_recv() {
            if let RaftMsg::ReadIndex { reply, .. } = m {
                let _ = reply.send(Err(RaftError::ShuttingDown));
            }
        }
        if self.last_view.0 == StateRole::Leader {
            let _ = self.apply_tx.send(ApplyMsg::LeaderStop {
                term: self.last_view.1,
            });
        }
        *self.shared.view.write() = RoleView {
            role: Role::Shutdown,
            term: self.raw.raft.term,
            leader: None,
            member: false,
            members: None,
        };
        let _ = self.apply_tx.send(ApplyMsg::Shutdown);
        tracing::info!(group = %self.opts.group, "raft node stopped");
    }
}

/// Whether the calling thread may wait for a disk write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MayBlock {
    /// A plain thread (a stream reader, the raft thread).
    Yes,
    /// A worker of the node server's own multi-thread runtime: through
    /// `block_in_place`.
    InPlace,
    /// Some other runtime's thread (a single-thread runtime, an embedding
    /// application's): blocking could stall everything on it, and
    /// `block_in_place` panics in some of them.
    No,
}

thread_local! {
    static SERVER_RUNTIME_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one of the node server's runtime threads
/// (`NodeArgs::runtime`'s `on_thread_start`), where `block_in_place` is safe.
pub(crate) fn mark_server_runtime_thread() {
    SERVER_RUNTIME_THREAD.with(|c| c.set(true));
}

fn may_block() -> MayBlock {
    if tokio::runtime::Handle::try_current().is_err() {
        MayBlock::Yes
    } else if SERVER_RUNTIME_THREAD.with(|c| c.get()) {
        MayBlock::InPlace
    } else {
        MayBlock::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_threads_and_the_servers_workers_wait_for_the_disk() {
        assert_eq!(may_block(), MayBlock::Yes, "a plain thread");
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { may_block() }), MayBlock::No);
        // Another multi-thread runtime (an application embedding the
        // engine): neither its workers nor its block_on thread block.
        let other = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert_eq!(other.block_on(async { may_block() }), MayBlock::No);
        let on_worker = other.block_on(async { tokio::spawn(async { may_block() }).await });
        assert_eq!(on_worker.unwrap(), MayBlock::No);
        // The server's runtime: its workers hand their tasks over first.
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            node: crate::config::NodeArgs,
        }
        let args = <Args as clap::Parser>::try_parse_from([
            "x",
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            "/nonexistent",
        ]);
        let server = args.unwrap().node.runtime().unwrap();
        let on_worker = server.block_on(async { tokio::spawn(async { may_block() }).await });
        assert_eq!(on_worker.unwrap(), MayBlock::InPlace);
        let done = server
            .block_on(async { tokio::spawn(async { tokio::task::block_in_place(|| 7) }).await });
        assert_eq!(done.unwrap(), 7);
    }
}
