//! The apply stage of one group (braft's `FSMCaller`): the only caller of
//! the [`StateMachine`], one input at a time.
//!
//! It receives, in log order, the `done`s of entries this node proposed,
//! committed entries, role changes, read barriers and snapshot requests. It
//! matches entries to `done`s by (index, term), fails the stale ones, calls
//! `on_apply` in batches, publishes the applied index, answers reads whose
//! index is applied, and fires `on_leader_start` only once the leader's first
//! entry of its term is applied. Its inputs arrive through [`inbox`]: the
//! apply thread runs them, or, for a lone write, the raft loop's thread.

mod inbox;
pub(crate) use inbox::{apply_inbox, ApplySender};

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use raft::eraftpb::ConfState;
use tokio::sync::oneshot;

use crate::state_machine::StateDigest;

use crate::closure::Done;
use crate::error::{PeerId, RaftError};
use crate::node::NodeShared;
use crate::raft_loop::{RaftInbox, RaftMsg};
use crate::state_machine::{
    ApplyIter, CommittedEntry, Configuration, LeaderChangeContext, SnapshotDone, StateMachine,
};
use crate::storage::snapshot::ConfRecord;
use crate::storage::{SnapshotMeta, SnapshotStorage};

/// A read waiting for its read index to be applied.
pub(crate) struct ReadWaiter {
    pub reply: oneshot::Sender<Result<u64, RaftError>>,
    pub deadline: Instant,
    /// Answer once the read index is applied here (a read barrier), or as
    /// soon as the leader confirmed it (how far this replica has to go).
    pub wait_apply: bool,
}

/// One committed entry as the raft thread forwards it.
pub(crate) enum Committed {
    Normal {
        index: u64,
        term: u64,
        data: Bytes,
    },
    /// An entry that sets the cluster format (`crate::cluster_format`).
    ClusterFormat {
        index: u64,
        term: u64,
        format: u32,
    },
    /// A configuration entry, already applied to raft (`None` if raft rejected it).
    Conf {
        index: u64,
        term: u64,
        conf: Option<(Configuration, ConfState)>,
    },
}

/// Inputs of the apply thread.
pub(crate) enum ApplyMsg {
    /// This node proposed the entries at (index, term); their callers wait on the dones.
    Pending(Vec<(u64, u64, Done)>),
    Committed(Vec<Committed>),
    LeaderStart {
        term: u64,
        index: u64,
    },
    LeaderStop {
        term: u64,
    },
    StartFollowing(LeaderChangeContext),
    StopFollowing(LeaderChangeContext),
    Read {
        index: u64,
        waiters: Vec<ReadWaiter>,
    },
    Snapshot,
    /// Load the snapshot raft-rs accepted (already published in storage).
    InstallSnapshot {
        meta: SnapshotMeta,
    },
    /// The configuration was set outside the log (bootstrap, forced reset).
    /// `applied`: entries (index, term) that count as applied (bootstrap entries).
    ConfReset {
        conf: Configuration,
        conf_state: ConfState,
        index: u64,
        applied: Option<(u64, u64)>,
    },
    Error(RaftError),
    /// Report the applied index and the state machine's digest there.
    Digest(oneshot::Sender<StateDigest>),
    Shutdown,
}

pub(crate) struct FsmCaller {
    fsm: Box<dyn StateMachine>,
    raft_tx: Arc<RaftInbox>,
    shared: Arc<NodeShared>,
    snapshots: Arc<dyn SnapshotStorage>,
    pending: VecDeque<(u64, u64, Done)>,
    applied_index: u64,
    applied_term: u64,
    reported_applied: u64,
    last_snapshot_index: u64,
    conf: Configuration,
    conf_state: ConfState,
    conf_index: u64,
    leader_start: Option<(u64, u64)>,
    leader_term: Option<u64>,
    reads: BTreeMap<u64, Vec<ReadWaiter>>,
    failed: Option<RaftError>,
}

impl FsmCaller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fsm: Box<dyn StateMachine>,
        raft_tx: Arc<RaftInbox>,
        shared: Arc<NodeShared>,
        snapshots: Arc<dyn SnapshotStorage>,
        applied_index: u64,
        applied_term: u64,
        conf: Configuration,
        conf_state: ConfState,
    ) -> Self {
        FsmCaller {
            fsm,
            raft_tx,
            shared,
            snapshots,
            pending: VecDeque::new(),
            applied_index,
            applied_term,
            reported_applied: applied_index,
            last_snapshot_index: applied_index,
            conf,
            conf_state,
            conf_index: 0,
            leader_start: None,
            leader_term: None,
            reads: BTreeMap::new(),
            failed: None,
        }
    }

    /// Returns false when the thread must exit.
    fn handle(&mut self, msg: ApplyMsg) -> bool {
        match msg {
            ApplyMsg::Pending(batch) => {
                for (index, term, done) in batch {
                    if let Some(e) = &self.failed {
                        done.run(Err(RaftError::Stopped(e.to_string())));
                    } else {
                        self.pending.push_back((index, term, done));
                    }
                }
            }
            ApplyMsg::Committed(batch) => {
                if self.failed.is_none() {
                    self.apply(batch);
                }
            }
            ApplyMsg::LeaderStart { term, index } => {
                self.leader_start = Some((term, index));
                self.check_leader_start();
            }
            ApplyMsg::LeaderStop { term } => {
                if self.leader_start.is_some_and(|(t, _)| t == term) {
                    self.leader_start = None;
                }
                if self.leader_term == Some(term) {
                    self.leader_term = None;
                    self.fsm.on_leader_stop(&RaftError::LeaderSteppedDown);
                }
                self.fail_pending(RaftError::LeaderSteppedDown);
            }
            ApplyMsg::StartFollowing(ctx) => self.fsm.on_start_following(&ctx),
            ApplyMsg::StopFollowing(ctx) => self.fsm.on_stop_following(&ctx),
            ApplyMsg::Read { index, waiters } => {
                if index <= self.applied_index {
                    for w in waiters {
                        let _ = w.reply.send(Ok(index));
                    }
                } else {
                    self.reads.entry(index).or_default().extend(waiters);
                }
            }
            ApplyMsg::Snapshot => self.save_snapshot(),
            ApplyMsg::Digest(reply) => {
                let _ = reply.send(StateDigest {
                    applied_index: self.applied_index,
                    digest: self.fsm.state_digest(),
                });
            }
            ApplyMsg::InstallSnapshot { meta } => self.load_snapshot(meta),
            ApplyMsg::ConfReset {
                conf,
                conf_state,
                index,
                applied,
            } => {
                self.conf = conf;
                self.conf_state = conf_state;
                self.conf_index = index;
                if let Some((i, t)) = applied {
                    self.applied_index = self.applied_index.max(i);
                    self.applied_term = t;
                }
                self.fsm.on_configuration_committed(&self.conf, index);
            }
            ApplyMsg::Error(e) => {
                self.fsm.on_error(&e);
                let stopped = RaftError::Stopped(e.to_string());
                self.fail_pending(stopped.clone());
                for (_, ws) in std::mem::take(&mut self.reads) {
                    for w in ws {
                        let _ = w.reply.send(Err(stopped.clone()));
                    }
                }
                self.failed = Some(e);
            }
            ApplyMsg::Shutdown => {
                self.publish_applied();
                self.shutdown();
                return false;
            }
        }
        true
    }

    fn shutdown(&mut self) {
        self.fail_pending(RaftError::ShuttingDown);
        for (_, ws) in std::mem::take(&mut self.reads) {
            for w in ws {
                let _ = w.reply.send(Err(RaftError::ShuttingDown));
            }
        }
        if self.leader_term.take().is_some() {
            self.fsm.on_leader_stop(&RaftError::ShuttingDown);
        }
        self.fsm.on_shutdown();
    }

    fn fail_pending(&mut self, err: RaftError) {
        for (_, _, done) in self.pending.drain(..) {
            done.run(Err(err.clone()));
        }
    }

    /// The waiting `done` for the entry at (index, term), if this node
    /// proposed it. Dones for indexes the log has passed, or whose entry
    /// was replaced by another term's, fail: their entries were not committed.
    fn take_done(&mut self, index: u64, term: u64) -> Option<Done> {
        while let Some(&(i, t, _)) = self.pending.front() {
            if i > index {
                return None;
            }
            let (_, _, done) = self.pending.pop_front()?;
            if i == index && t == term {
                return Some(done);
            }
            done.run(Err(RaftError::LeaderSteppedDown));
        }
        None
    }

    fn apply(&mut self, batch: Vec<Committed>) {
        let mut run: Vec<CommittedEntry> = Vec::with_capacity(batch.len());
        for c in batch {
            match c {
                Committed::Normal { index, term, data } => {
                    crate::stage_trace::mark("apply.got", index);
                    let done = self.take_done(index, term);
                    if data.is_empty() {
                        // A new leader's empty entry: nothing to apply.
                        self.flush(&mut run);
                        if let Some(d) = done {
                            d.run(Ok(Bytes::new()));
                        }
                        self.applied_index = index;
                        self.applied_term = term;
                        continue;
                    }
                    let format = self.cluster_format();
                    run.push(CommittedEntry::new(index, term, data, done, format));
                }
                Committed::ClusterFormat {
                    index,
                    term,
                    format,
                } => {
                    self.flush(&mut run);
                    let done = self.take_done(index, term);
                    if format > self.shared.max_cluster_format {
                        // Refuse, never misapply: entries after this one may
                        // be written in a way this node does not know.
                        let e = RaftError::StateMachine(format!(
                            "the log at index {index} sets cluster format {format}, newer than this node applies (up to {}); stopped applying: run a build that supports it",
                            self.shared.max_cluster_format
                        ));
                        tracing::error!(group = %self.shared.group, index, format, "{e}");
                        if let Some(d) = done {
                            d.run(Err(e.clone()));
                        }
                        let _ = self.raft_tx.send(RaftMsg::Fatal(e.clone()));
                        self.failed = Some(e);
                        return;
                    }
                    if format > self.cluster_format() {
                        tracing::info!(group = %self.shared.group, index, format, "cluster format applied");
                        self.shared
                            .cluster_format
                            .store(format, std::sync::atomic::Ordering::Release);
                    }
                    if let Some(d) = done {
                        d.run(Ok(Bytes::new()));
                    }
                    self.applied_index = index;
                    self.applied_term = term;
                }
                Committed::Conf { index, term, conf } => {
                    self.flush(&mut run);
                    let done = self.take_done(index, term);
                    match conf {
                        Some((c, cs)) => {
                            self.conf = c;
                            self.conf_state = cs;
                            self.conf_index = index;
                            self.fsm.on_configuration_committed(&self.conf, index);
                            if let Some(d) = done {
                                d.run(Ok(Bytes::copy_from_slice(&index.to_be_bytes())));
                            }
                        }
                        None => {
                            if let Some(d) = done {
                                d.run(Err(RaftError::InvalidArgument(format!(
                                    "raft rejected the configuration change at index {index}"
                                ))));
                            }
                        }
                    }
                    self.applied_index = index;
                    self.applied_term = term;
                }
            }
        }
        self.flush(&mut run);
    }

    /// The cluster format applied so far.
    fn cluster_format(&self) -> u32 {
        self.shared
            .cluster_format
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn flush(&mut self, run: &mut Vec<CommittedEntry>) {
        let Some(last) = run.last() else {
            return;
        };
        let (index, term) = (last.index, last.term);
        let started = Instant::now();
        self.fsm.on_apply(ApplyIter::new(run));
        crate::stage_trace::mark("apply.done", index);
        self.shared.metrics.apply_seconds.observe(started.elapsed());
        for e in run.iter_mut() {
            if let Some(d) = e.take_done() {
                d.run(Ok(Bytes::new()));
            }
        }
        run.clear();
        self.applied_index = index;
        self.applied_term = term;
    }

    /// Publishes progress and tells the raft loop the applied index.
    fn publish_applied(&mut self) {
        if let Some(index) = self.publish() {
            let _ = self.raft_tx.send(RaftMsg::Applied(index));
        }
    }

    /// Publishes progress: the applied index, reads it unblocks, a leader
    /// start it completes. Returns the applied index if it advanced (the
    /// raft loop must learn it).
    fn publish(&mut self) -> Option<u64> {
        self.shared
            .pending_proposals
            .store(self.pending.len(), Ordering::Relaxed);
        if self.applied_index == self.reported_applied {
            return None;
        }
        self.reported_applied = self.applied_index;
        self.shared
            .applied
            .store(self.applied_index, Ordering::Release);
        let later = self.reads.split_off(&(self.applied_index + 1));
        for (index, ws) in std::mem::replace(&mut self.reads, later) {
            for w in ws {
                let _ = w.reply.send(Ok(index));
            }
        }
        self.check_leader_start();
        Some(self.applied_index)
    }

    fn check_leader_start(&mut self) {
        if let Some((term, index)) = self.leader_start {
            if self.applied_index >= index {
                self.leader_start = None;
                self.leader_term = Some(term);
                self.fsm.on_leader_start(term);
            }
        }
    }

    /// Replaces the state machine's state with an installed snapshot.
    fn load_snapshot(&mut self, meta: SnapshotMeta) {
        if self.failed.is_some() {
            return;
        }
        self.shared.snapshot.write().loading = Some(meta.index);
        let loaded = match self.snapshots.latest() {
            Ok(Some(r)) if r.meta().index == meta.index => self
                .fsm
                .on_snapshot_load(&r)
                .map_err(RaftError::StateMachine),
            Ok(other) => Err(RaftError::Storage(format!(
                "installed snapshot {} is not the newest in storage ({:?})",
                meta.index,
                other.map(|r| r.meta().index)
            ))),
            Err(e) => Err(e.into()),
        };
        {
            let mut v = self.shared.snapshot.write();
            v.loading = None;
            if loaded.is_ok() {
                v.last_index = meta.index;
                v.last_term = meta.term;
                v.last_unix_ms = meta.created_unix_ms;
            }
        }
        if let Err(e) = loaded {
            let _ = self
                .raft_tx
                .send(RaftMsg::Fatal(RaftError::StateMachine(format!(
                    "loading snapshot {}: {e}",
                    meta.index
                ))));
            return;
        }
        self.shared.cluster_format.store(
            meta.cluster_format.max(crate::cluster_format::BASE),
            std::sync::atomic::Ordering::Release,
        );
        // Everything up to the snapshot is now applied; nothing proposed here
        // can still be pending (a follower proposes nothing).
        self.fail_pending(RaftError::LeaderSteppedDown);
        self.applied_index = meta.index;
        self.applied_term = meta.term;
        self.last_snapshot_index = meta.index;
        let addr = |id: &u64| PeerId {
            id: *id,
            addr: meta
                .peers
                .iter()
                .find(|p| p.id == *id)
                .map(|p| p.addr.clone())
                .unwrap_or_default(),
        };
        self.conf = Configuration {
            voters: meta.conf.voters.iter().map(addr).collect(),
            learners: meta.conf.learners.iter().map(addr).collect(),
            voters_outgoing: meta.conf.voters_outgoing.iter().map(addr).collect(),
        };
        self.conf_state = meta.conf.to_conf_state();
        self.conf_index = meta.conf_index;
        self.fsm.on_configuration_committed(&self.conf, meta.index);
        tracing::info!(group = %self.shared.group, index = meta.index, "snapshot loaded into the state machine");
    }

    fn save_snapshot(&mut self) {
        let index = self.applied_index;
        if index == 0 || index == self.last_snapshot_index {
            let result = match self.snapshots.latest() {
                Ok(Some(r)) if r.meta().index == index => Ok(r.meta().clone()),
                Ok(_) => Err(RaftError::InvalidArgument(
                    "nothing has been applied since the last snapshot".into(),
                )),
                Err(e) => Err(e.into()),
            };
            let _ = self.raft_tx.send(RaftMsg::SnapshotDone(result));
            return;
        }
        let mut peers: Vec<PeerId> = Vec::new();
        for p in self
            .conf
            .voters
            .iter()
            .chain(&self.conf.learners)
            .chain(&self.conf.voters_outgoing)
        {
            if !peers.iter().any(|q| q.id == p.id) {
                peers.push(p.clone());
            }
        }
        let meta = SnapshotMeta {
            index,
            term: self.applied_term,
            conf: ConfRecord::from_conf_state(&self.conf_state),
            peers,
            conf_index: self.conf_index,
            cluster_id: self
                .shared
                .cluster_id
                .load(std::sync::atomic::Ordering::Acquire),
            cluster_format: self.cluster_format(),
            ..Default::default()
        };
        let writer = match self.snapshots.begin(meta) {
            Ok(w) => w,
            Err(e) => {
                let _ = self.raft_tx.send(RaftMsg::SnapshotDone(Err(e.into())));
                return;
            }
        };
        self.last_snapshot_index = index;
        self.shared.snapshot.write().saving = Some(index);
        let raft_tx = self.raft_tx.clone();
        let group = self.shared.group.clone();
        let shared = self.shared.clone();
        let done = SnapshotDone::new(move |result| {
            let outcome = match result {
                Ok(w) => w.commit().map_err(RaftError::from),
                Err(e) => Err(RaftError::StateMachine(e)),
            };
            {
                let mut v = shared.snapshot.write();
                v.saving = None;
                if let Ok(m) = &outcome {
                    shared
                        .metrics
                        .snapshots_saved
                        .fetch_add(1, Ordering::Relaxed);
                    if m.index >= v.last_index {
                        v.last_index = m.index;
                        v.last_term = m.term;
                        v.last_unix_ms = m.created_unix_ms;
                    }
                }
            }
            match &outcome {
                Ok(m) => {
                    tracing::info!(group = %group, index = m.index, term = m.term, files = m.files.len(), "snapshot published")
                }
                Err(e) => tracing::warn!(group = %group, error = %e, "snapshot failed"),
            }
            let _ = raft_tx.send(RaftMsg::SnapshotDone(outcome));
        });
        self.fsm.on_snapshot_save(writer, done);
    }
}
