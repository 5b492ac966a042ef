//! The raft thread's side of membership and leadership: identity, the
//! bootstrap of an empty replica, checked (optionally conditional)
//! configuration changes, leadership transfer with a completion signal, the
//! forced local reset, leaving a joint configuration a previous leader left
//! behind, and a removed leader handing off.

use std::time::Instant;

use raft::eraftpb::{ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use super::{RaftLoop, RaftMsg};
use crate::closure::Done;
use crate::error::{PeerId, RaftError};
use crate::fsm_caller::ApplyMsg;
use crate::membership::{check_address_free, ConfChangeRequest, PeerIdentity};
use crate::raft_store::RaftStore;

/// A leadership transfer waiting for its outcome.
pub(crate) struct PendingTransfer {
    pub target: u64,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<PeerId, RaftError>>,
}

fn single(id: u64, t: ConfChangeType) -> raft::eraftpb::ConfChangeSingle {
    raft::eraftpb::ConfChangeSingle {
        node_id: id,
        change_type: t,
        ..Default::default()
    }
}

impl RaftLoop {
    pub(super) fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    pub(super) fn identity(&self) -> PeerIdentity {
        let cs = self.conf_state();
        let store = self.raw.store();
        PeerIdentity {
            group: self.opts.group.clone(),
            id: self.shared.id,
            addr: self.shared.addr.clone(),
            initialized: !(cs.voters.is_empty() && cs.learners.is_empty()),
            has_data: self.raw.raft.term > 0
                || store.log.last_index() > 0
                || store.snapshot_index > 0,
            initial_conf: self.meta.initial_conf.clone(),
            conf: self.configuration(&cs),
            conf_index: self.conf_index,
            cluster_id: self.meta.cluster_id,
            max_cluster_format: self.opts.max_cluster_format,
        }
    }

    /// Makes an empty replica a member of a new group with `peers` as voters.
    pub(super) fn bootstrap(&mut self, mut peers: Vec<PeerId>) -> Result<(), RaftError> {
        let ident = self.identity();
        if ident.initialized || ident.has_data {
            return Err(RaftError::InvalidArgument(
                "refusing to bootstrap: this replica already has data or a configuration".into(),
            ));
        }
        if !peers.iter().any(|p| p.id == self.shared.id) {
            return Err(RaftError::InvalidArgument(
                "the bootstrap configuration must include this replica".into(),
            ));
        }
        peers.sort_by(|a, b| a.addr.cmp(&b.addr));
        peers.dedup_by_key(|p| p.id);
        for p in &peers {
            self.peers.insert(p.id, p.addr.clone());
        }
        // The configuration goes into the log as its first entries (one
        // voter each, term 1, committed), identical on every initial member,
        // so a member added later rebuilds it by replaying the log.
        let n = peers.len() as u64;
        let context = serde_json::to_vec(&peers).unwrap_or_default();
        let entries: Vec<raft::eraftpb::Entry> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut cc = ConfChangeV2::default();
                cc.set_changes(vec![single(p.id, ConfChangeType::AddNode)].into());
                let mut e = raft::eraftpb::Entry {
                    term: 1,
                    index: i as u64 + 1,
                    data: protobuf::Message::write_to_bytes(&cc)
                        .unwrap_or_default()
                        .into(),
                    context: context.clone().into(),
                    ..Default::default()
                };
                e.set_entry_type(raft::eraftpb::EntryType::EntryConfChangeV2);
                e
            })
            .collect();
        let mut log = crate::storage::log_cache::LogCache::new(1, 0);
        log.push(&entries);
        // The new RawNode numbers its Readys from 1 again: count them from
        // past every number used so far (see `ready_base`). This write
        // belongs to neither.
        self.ready_base = self.io_sent.max(self.io_done).max(self.unrecorded);
        self.io_sent = self.ready_base;
        self.io.send(crate::io_worker::IoTask::Persist {
            number: self.ready_base,
            reset: Some((1, 0)),
            entries: entries.clone(),
            sync: true,
            messages: Vec::new(),
        });
        self.io.flush()?;
        self.meta.initial_conf = peers.clone();
        let ids: Vec<u64> = peers.iter().map(|p| p.id).collect();
        self.set_cluster_id(crate::membership::cluster_id_of(&ids));
        self.meta.term = 1;
        self.meta.vote = 0;
        self.meta.commit = n;
        self.meta.applied = n;
        self.meta_store.save(&self.meta)?;
        let cs = ConfState {
            voters: peers.iter().map(|p| p.id).collect(),
            ..Default::default()
        };
        let hs = raft::eraftpb::HardState {
            term: 1,
            vote: 0,
            commit: n,
            ..Default::default()
        };
        let store = RaftStore {
            log,
            snapshot_index: 0,
            snapshot_term: 0,
            latest: None,
            wanted: std::cell::Cell::new(false),
            initial: raft::RaftState::new(hs, cs.clone()),
        };
        let mut cfg = self.raft_config.clone();
        cfg.applied = n;
        self.raw = RawNode::new(&cfg, store, &self.logger)
            .map_err(|e| RaftError::Storage(format!("re-creating the raft node: {e}")))?;
        self.applied = n;
        self.conf_index = n;
        let conf = self.configuration(&cs);
        let _ = self.apply_tx.send(ApplyMsg::ConfReset {
            conf,
            conf_state: cs,
            index: n,
            applied: Some((n, 1)),
        });
        tracing::info!(group = %self.opts.group, members = peers.len(), "bootstrapped");
        if peers.len() == 1 {
            let _ = self.raw.campaign();
        }
        self.observe_role();
        self.publish_view();
        Ok(())
    }

    /// Checks and proposes one configuration step; `done` runs when it is
    /// applied (with the entry index) or with the reason it was not.
    pub(super) fn conf_change(&mut self, req: ConfChangeRequest, done: Done) {
        if let Err(e) = self.check_conf_change(&req) {
            return done.run(Err(e));
        }
        let cs = self.conf_state();
        // Every member's address travels with the change, so whoever applies
        // it can reach everyone.
        let mut ids: Vec<u64> = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .copied()
            .collect();
        for (_, p) in &req.changes {
            self.peers.insert(p.id, p.addr.clone());
            ids.push(p.id);
        }
        ids.sort_unstable();
        ids.dedup();
        let context: Vec<PeerId> = ids.iter().map(|i| self.peer(*i)).collect();
        let mut cc = ConfChangeV2::default();
        cc.set_changes(
            req.changes
                .iter()
                .map(|(t, p)| single(p.id, *t))
                .collect::<Vec<_>>()
                .into(),
        );
        cc.set_transition(ConfChangeTransition::Auto);
        let term = self.raw.raft.term;
        let ctx = serde_json::to_vec(&context).unwrap_or_default();
        match self.raw.propose_conf_change(ctx, cc) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                tracing::info!(group = %self.opts.group, index, changes = ?req.changes.iter().map(|(t, p)| format!("{t:?} {p}")).collect::<Vec<_>>(), "proposed configuration change");
                self.new_pending.push((index, term, done));
            }
            Err(e) => done.run(Err(RaftError::Busy(format!(
                "configuration change not accepted: {e}"
            )))),
        }
    }

    fn check_conf_change(&self, req: &ConfChangeRequest) -> Result<(), RaftError> {
        self.check_not_in_ready()?;
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader_peer(),
            });
        }
        if raft.lead_transferee.is_some() {
            return Err(RaftError::Transferring);
        }
        if let Some(e) = req.expected_conf_index {
            if e != self.conf_index {
                return Err(RaftError::ConfigurationChanged {
                    expected: e,
                    current: self.conf_index,
                });
            }
        }
        if raft.has_pending_conf() {
            return Err(RaftError::Busy(
                "still applying an earlier configuration change; retry shortly".into(),
            ));
        }
        let cs = self.conf_state();
        let joint = !cs.voters_outgoing.is_empty();
        if req.changes.is_empty() {
            return if joint {
                Ok(())
            } else {
                Err(RaftError::InvalidArgument(
                    "not in a joint configuration".into(),
                ))
            };
        }
        if joint {
            return Err(RaftError::Busy(
                "still applying an earlier configuration change (joint); retry shortly".into(),
            ));
        }
        if req.unchecked {
            return Ok(());
        }
        let mut voters: Vec<u64> = cs.voters.clone();
        let mut learners: Vec<u64> = cs.learners.clone();
        for (t, p) in &req.changes {
            let (is_voter, is_learner) = (voters.contains(&p.id), learners.contains(&p.id));
            match t {
                ConfChangeType::AddNode if is_voter => {
                    return Err(RaftError::InvalidArgument(format!(
                        "{} is already a voter",
                        p.addr
                    )))
                }
                ConfChangeType::AddNode => {
                    learners.retain(|l| *l != p.id);
                    voters.push(p.id);
                }
                ConfChangeType::AddLearnerNode if is_voter || is_learner => {
                    return Err(RaftError::InvalidArgument(format!(
                        "{} is already a member",
                        p.addr
                    )))
                }
                ConfChangeType::AddLearnerNode => learners.push(p.id),
                ConfChangeType::RemoveNode if !is_voter && !is_learner => {
                    return Err(RaftError::InvalidArgument(format!(
                        "{} is not a member",
                        p.addr
                    )))
                }
                ConfChangeType::RemoveNode => {
                    voters.retain(|v| *v != p.id);
                    learners.retain(|l| *l != p.id);
                }
            }
        }
        if voters.is_empty() {
            return Err(RaftError::InvalidArgument(
                "a configuration needs at least one voter".into(),
            ));
        }
        let conf = self.configuration(&cs);
        let leaving: Vec<u64> = req
            .changes
            .iter()
            .filter(|(t, _)| *t == ConfChangeType::RemoveNode)
            .map(|(_, p)| p.id)
            .collect();
        for (t, p) in &req.changes {
            if *t != ConfChangeType::RemoveNode {
                check_address_free(&conf, &leaving, p)?;
            }
        }
        Ok(())
    }

    /// The voter (other than this node) with the most of the log, among
    /// those heard from recently.
    fn best_voter(&self) -> Option<(u64, u64)> {
        let cs = self.conf_state();
        self.raw
            .raft
            .prs()
            .iter()
            .filter(|(id, pr)| **id != self.shared.id && cs.voters.contains(id) && pr.recent_active)
            .map(|(id, pr)| (*id, pr.matched))
            .max_by_key(|(_, m)| *m)
    }

    pub(super) fn transfer(
        &mut self,
        target: Option<u64>,
        reply: oneshot::Sender<Result<PeerId, RaftError>>,
    ) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            let _ = reply.send(Err(RaftError::NotLeader {
                leader: self.leader_peer(),
            }));
            return;
        }
        if self.pending_transfer.is_some() {
            let _ = reply.send(Err(RaftError::Busy(
                "a leadership transfer is already in progress".into(),
            )));
            return;
        }
        let last = raft.raft_log.last_index();
        let cs = self.conf_state();
        let id = match target {
            Some(id) if id == self.shared.id => {
                let _ = reply.send(Ok(self.shared.peer()));
                return;
            }
            Some(id) => {
                let Some(pr) = raft.prs().get(id) else {
                    let _ = reply.send(Err(RaftError::InvalidArgument(format!(
                        "{} is not a member",
                        self.peer(id).addr
                    ))));
                    return;
                };
                let problem = if !cs.voters.contains(&id) {
                    Some("is not a voter")
                } else if !pr.recent_active {
                    Some("has not been heard from recently")
                } else if pr.matched + self.opts.catchup_margin < last {
                    Some("is lagging behind the log")
                } else {
                    None
                };
                if let Some(p) = problem {
                    let _ = reply.send(Err(RaftError::InvalidArgument(format!(
                        "cannot transfer leadership to {}: it {p} (match {} of {last})",
                        self.peer(id).addr,
                        pr.matched
                    ))));
                    return;
                }
                id
            }
            None => match self.best_voter() {
                Some((id, _)) => id,
                None => {
                    let _ = reply.send(Err(RaftError::InvalidArgument(
                        "no other voter is reachable to take over".into(),
                    )));
                    return;
                }
            },
        };
        tracing::info!(group = %self.opts.group, to = %self.peer(id), "transferring leadership");
        self.raw.transfer_leader(id);
        let deadline = Instant::now() + self.tick * (2 * crate::options::ELECTION_TICKS as u32);
        self.pending_transfer = Some(PendingTransfer {
            target: id,
            deadline,
            reply,
        });
        self.observe_role();
    }

    /// Resolves a pending transfer once its outcome is known.
    pub(super) fn check_transfer(&mut self, now: Instant) {
        let Some(p) = self.pending_transfer.as_ref() else {
            return;
        };
        let raft = &self.raw.raft;
        let outcome = if raft.state == StateRole::Leader {
            if raft.lead_transferee.is_none() {
                Some(Err(RaftError::Timeout(format!(
                    "leadership transfer to {} was abandoned; this node still leads",
                    self.peer(p.target).addr
                ))))
            } else if now >= p.deadline {
                self.raw.raft.abort_leader_transfer();
                Some(Err(RaftError::Timeout(
                    "leadership transfer did not complete in time; this node still leads".into(),
                )))
            } else {
                None
            }
        } else if raft.leader_id != 0 {
            Some(Ok(self.peer(raft.leader_id)))
        } else if now >= p.deadline {
            Some(Err(RaftError::Timeout(
                "leadership moved away but no new leader is known yet".into(),
            )))
        } else {
            None
        };
        if let Some(r) = outcome {
            if let Some(p) = self.pending_transfer.take() {
                let _ = p.reply.send(r);
            }
        }
    }

    /// Forced local reconfiguration (reset_peers): applies the changes to
    /// this node only, one voter at a time, and campaigns. Returns the steps,
    /// to be recorded in the log once this node leads.
    pub(super) fn force_conf(
        &mut self,
        keep: Vec<u64>,
    ) -> Result<Vec<(ConfChangeType, PeerId)>, RaftError> {
        let cs = self.conf_state();
        if !keep.contains(&self.shared.id) {
            return Err(RaftError::InvalidArgument(
                "the reset configuration must include the node it runs on".into(),
            ));
        }
        let members: Vec<u64> = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .copied()
            .collect();
        if let Some(x) = keep.iter().find(|k| !members.contains(k)) {
            return Err(RaftError::InvalidArgument(format!(
                "{} is not a member; reset can only keep current members",
                self.peer(*x).addr
            )));
        }
        let mut steps = Vec::new();
        if !cs.voters_outgoing.is_empty() {
            self.raw
                .apply_conf_change(&ConfChangeV2::default())
                .map_err(|e| RaftError::InvalidArgument(e.to_string()))?;
        }
        let cs = self.conf_state();
        for id in keep.iter().filter(|k| !cs.voters.contains(k)) {
            steps.push((ConfChangeType::AddNode, self.peer(*id)));
        }
        for id in cs.voters.iter().filter(|v| !keep.contains(v)) {
            steps.push((ConfChangeType::RemoveNode, self.peer(*id)));
        }
        for (t, p) in &steps {
            let mut cc = ConfChangeV2::default();
            cc.set_changes(vec![single(p.id, *t)].into());
            self.raw.apply_conf_change(&cc).map_err(|e| {
                RaftError::InvalidArgument(format!("forcing {t:?} {}: {e}", p.addr))
            })?;
        }
        let cs = self.conf_state();
        tracing::warn!(group = %self.opts.group, voters = ?cs.voters, "configuration forced locally (reset-peers)");
        let conf = self.configuration(&cs);
        let _ = self.apply_tx.send(ApplyMsg::ConfReset {
            conf,
            conf_state: cs,
            index: self.conf_index,
            applied: None,
        });
        let _ = self.raw.campaign();
        self.observe_role();
        self.publish_view();
        Ok(steps)
    }

    /// After configuration entries were applied: a leader left in a joint
    /// configuration by its predecessor leaves it. (A leader that removed
    /// itself is handled by [`RaftLoop::step_down_if_removed`].)
    pub(super) fn after_conf_applied(&mut self, _now: Instant) {
        if self.raw.raft.state != StateRole::Leader || self.is_removed() {
            return;
        }
        let cs = self.conf_state();
        if !cs.voters_outgoing.is_empty()
            && !self.raw.raft.has_pending_conf()
            && self.raw.raft.lead_transferee.is_none()
        {
            tracing::info!(group = %self.opts.group, "leaving the joint configuration a previous leader left behind");
            self.conf_change(
                ConfChangeRequest {
                    changes: Vec::new(),
                    expected_conf_index: None,
                    unchecked: true,
                },
                Done::noop(),
            );
        }
    }

    /// Whether this replica is no voter (incoming or outgoing) of the
    /// configuration. Cheap: it runs on every durable write.
    fn is_removed(&self) -> bool {
        !self.raw.raft.prs().conf().voters().contains(self.shared.id)
    }

    /// A leader whose removal was applied steps down at once: raft-rs 0.7
    /// cannot run a leader without its own progress entry (the next
    /// acknowledgement or persisted entry would panic). It first asks the
    /// most caught-up voter to campaign (TimeoutNow when it is caught up),
    /// so the hand-off is usually immediate. Call outside Ready handling.
    pub(super) fn step_down_if_removed(&mut self) {
        if self.raw.raft.state != StateRole::Leader || !self.is_removed() {
            return;
        }
        if let Some((id, _)) = self.best_voter() {
            tracing::info!(group = %self.opts.group, to = %self.peer(id), "removed from the configuration; handing leadership over");
            self.raw.transfer_leader(id);
        }
        tracing::info!(group = %self.opts.group, "removed from the configuration; stepping down");
        let term = self.raw.raft.term;
        self.raw.raft.become_follower(term, 0);
        self.observe_role();
    }

    pub(super) fn handle_membership(&mut self, msg: RaftMsg) {
        match msg {
            RaftMsg::Identity(reply) => {
                let _ = reply.send(self.identity());
            }
            RaftMsg::Bootstrap { peers, reply } => {
                let _ = reply.send(self.bootstrap(peers));
            }
            RaftMsg::ConfChange { req, done } => self.conf_change(req, done),
            RaftMsg::TransferLeader { target, reply } => self.transfer(target, reply),
            RaftMsg::ForceConf { keep, reply } => {
                let _ = reply.send(self.force_conf(keep));
            }
            _ => {}
        }
    }
}
