//! Membership and leadership operations on a [`Node`] (braft's
//! `add_peer`, `remove_peer`, `change_peers`, `reset_peers`,
//! `transfer_leadership_to`), the bootstrap of a new group, and the
//! formation of a group from `--initial-conf`.
//!
//! The raft thread checks and proposes single steps (see
//! `raft_loop/membership.rs`); this module sequences them: a new member is
//! added as a learner, waits until it has caught up (snapshot install
//! included), then is promoted; several changes at once go through joint
//! consensus. One operation runs at a time per node, and every change can be
//! made conditional on the configuration index, so racing callers cannot
//! both succeed.

use std::time::{Duration, Instant};

use raft::eraftpb::ConfChangeType;
use serde::{Deserialize, Serialize};

use crate::error::{PeerId, RaftError};
use crate::node::Node;
use crate::options::validate_addr;
use crate::state_machine::Configuration;

/// Who a replica is, as another replica asks before adding it or forming a group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerIdentity {
    pub group: String,
    pub id: u64,
    pub addr: String,
    /// It has a configuration (it is, or was, a member of a group).
    pub initialized: bool,
    /// It has any raft state (term, log or snapshot).
    pub has_data: bool,
    /// The configuration it was bootstrapped with (empty if it joined later).
    pub initial_conf: Vec<PeerId>,
    /// Its current configuration.
    pub conf: Configuration,
    /// Index of the entry that set `conf` (0 for the bootstrap configuration).
    pub conf_index: u64,
    /// The cluster it belongs to (0: none yet).
    #[serde(default)]
    pub cluster_id: u64,
    /// The highest cluster format it supports (0: not stated, an older
    /// build: the base format).
    #[serde(default)]
    pub max_cluster_format: u32,
}

/// A configuration with the index of the entry that made it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Membership {
    pub conf: Configuration,
    pub conf_index: u64,
}

/// One step the raft thread proposes.
#[derive(Clone, Debug)]
pub(crate) struct ConfChangeRequest {
    /// Empty: leave a joint configuration.
    pub changes: Vec<(ConfChangeType, PeerId)>,
    /// Refuse unless the configuration index is still this.
    pub expected_conf_index: Option<u64>,
    /// Skip the membership checks (logging a forced reset).
    pub unchecked: bool,
}

/// Options of [`Node::add_peer`] and [`Node::change_peers`].
#[derive(Clone, Debug)]
pub struct ChangeOptions {
    /// Refuse unless the configuration index is still this.
    pub expected_conf_index: Option<u64>,
    /// How long a new member may take to catch up before the change is
    /// abandoned (and the learner removed again). Default 60 s.
    pub catch_up_timeout: Duration,
}

impl Default for ChangeOptions {
    fn default() -> Self {
        ChangeOptions {
            expected_conf_index: None,
            catch_up_timeout: Duration::from_secs(60),
        }
    }
}

/// A member named by address or raft id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRef {
    Addr(String),
    Id(u64),
}

impl std::str::FromStr for PeerRef {
    type Err = String;
    /// `host:port`, or a raft id as 16 hex digits (as status prints it).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() == 16 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            return u64::from_str_radix(s, 16)
                .map(PeerRef::Id)
                .map_err(|e| e.to_string());
        }
        validate_addr(s).map(|_| PeerRef::Addr(s.to_string()))
    }
}

const POLL: Duration = Duration::from_millis(20);

/// The id of the cluster a bootstrap configuration creates: FNV-1a over
/// the sorted raft ids of its members. Every initial member computes the
/// same id from the same configuration, and any member added later
/// computes it again from the log's first entry, which carries that
/// configuration; raft ids are random, so two clusters differ. Never 0.
pub fn cluster_id_of(ids: &[u64]) -> u64 {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in sorted {
        for b in id.to_be_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h.max(1)
}

/// Refuses to add a replica that holds data of another cluster.
fn check_same_cluster(addr: &str, theirs: u64, ours: u64) -> Result<(), RaftError> {
    if theirs != 0 && ours != 0 && theirs != ours {
        return Err(RaftError::InvalidArgument(format!(
            "{addr} holds data of cluster {theirs:016x}, not of this cluster {ours:016x}; refusing to add it (wipe its data directory to reuse the machine)"
        )));
    }
    Ok(())
}

/// Refuses a replica whose build cannot apply the group's cluster format:
/// it would stop at the first entry written in it.
fn check_format(addr: &str, theirs: u32, ours: u32) -> Result<(), RaftError> {
    let theirs = crate::cluster_format::supported(theirs);
    if theirs < ours {
        return Err(RaftError::InvalidArgument(format!(
            "{addr} supports cluster formats up to {theirs}, but this group runs format {ours}; refusing to add it (upgrade it first)"
        )));
    }
    Ok(())
}

/// Refuses to add `new` while another member (not among `leaving`) has its
/// address under another raft id, as etcd refuses a duplicate peer URL. A
/// replica that lost its data comes back at its old address with a new id;
/// added beside its old self, the configuration would count a member that
/// is gone for good (the old id) and route both ids to one process. The old
/// member must be removed first. The raft thread checks every step with it,
/// so every path that adds a member (add_learner, add_peer, promote,
/// change_peers) is covered.
pub(crate) fn check_address_free(
    conf: &Configuration,
    leaving: &[u64],
    new: &PeerId,
) -> Result<(), RaftError> {
    let sets = [
        ("voter", &conf.voters),
        ("learner", &conf.learners),
        ("outgoing voter", &conf.voters_outgoing),
    ];
    for (role, members) in sets {
        let holder = members
            .iter()
            .find(|p| p.addr == new.addr && p.id != new.id && !leaving.contains(&p.id));
        if let Some(holder) = holder {
            return Err(RaftError::AddressInUse(format!(
                "{addr} is the address of member {old:016x} ({role}); refusing to add the replica {id:016x} at the same address: remove member {old:016x} first (remove_peer {old:016x}), then add the replica",
                addr = new.addr,
                old = holder.id,
                id = new.id,
            )));
        }
    }
    Ok(())
}

/// Refuses a step planned from another configuration than the current one.
fn check_expected(expected: Option<u64>, current: u64) -> Result<(), RaftError> {
    match expected {
        Some(e) if e != current => Err(RaftError::ConfigurationChanged {
            expected: e,
            current,
        }),
        _ => Ok(()),
    }
}

impl Node {
    fn membership_guard(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, RaftError> {
        self.membership_lock().try_lock().map_err(|_| {
            RaftError::Busy("another membership change is in progress on this node".into())
        })
    }

    /// Resolves a member reference against the current configuration.
    fn resolve(&self, m: &Membership, who: &PeerRef) -> Option<PeerId> {
        let mut all = m
            .conf
            .voters
            .iter()
            .chain(&m.conf.learners)
            .chain(&m.conf.voters_outgoing);
        all.find(|p| match who {
            PeerRef::Addr(a) => p.addr == *a,
            PeerRef::Id(i) => p.id == *i,
        })
        .cloned()
    }

    /// Proposes one step and waits until it is applied; retries while raft
    /// still applies an earlier change, until `deadline`.
    async fn step_conf(&self, req: ConfChangeRequest, deadline: Instant) -> Result<u64, RaftError> {
        loop {
            match self.propose_conf_change(req.clone()).await {
                Err(RaftError::Busy(m))
                    if Instant::now() < deadline && m.contains("still applying") =>
                {
                    tokio::time::sleep(POLL).await;
                }
                other => return other,
            }
        }
    }

    /// Waits until the configuration is not joint (the leader leaves it
    /// automatically) and returns it.
    async fn settled(&self, deadline: Instant) -> Result<Membership, RaftError> {
        loop {
            let m = self.membership().await?;
            if !m.conf.is_joint() {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                return Err(RaftError::Timeout(
                    "the configuration is still joint".into(),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Takes learners that did not catch up out again, so a failed change
    /// leaves the configuration as it was (best effort).
    async fn remove_learners(&self, learners: &[PeerId]) {
        let undo = ConfChangeRequest {
            changes: learners
                .iter()
                .map(|p| (ConfChangeType::RemoveNode, p.clone()))
                .collect(),
            expected_conf_index: None,
            unchecked: false,
        };
        let _ = self
            .step_conf(undo, Instant::now() + Duration::from_secs(10))
            .await;
    }

    /// Waits until every id in `ids` has replicated to within the catch-up
    /// margin of the leader's log.
    async fn wait_caught_up(&self, ids: &[u64], deadline: Instant) -> Result<(), RaftError> {
        let margin = self.catchup_margin();
        loop {
            let st = self.status().await?;
            if st.role != crate::node::Role::Leader {
                return Err(RaftError::NotLeader { leader: st.leader });
            }
            let lagging: Vec<String> = ids
                .iter()
                .filter_map(|id| {
                    let p = st.peers.iter().find(|p| p.peer.id == *id);
                    match p {
                        Some(p) if p.match_index + margin >= st.last_log_index => None,
                        Some(p) => Some(format!(
                            "{} at {} of {}",
                            p.peer.addr, p.match_index, st.last_log_index
                        )),
                        None => Some(format!("{id:016x} (no progress)")),
                    }
                })
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RaftError::Timeout(format!(
                    "new members did not catch up in time: {}",
                    lagging.join(", ")
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Adds the replica at `addr`: asks it for its id, adds it as a learner,
    /// waits until it caught up, promotes it to voter. Returns the new
    /// configuration once the promotion is committed.
    pub async fn add_peer(&self, addr: &str, opts: ChangeOptions) -> Result<Membership, RaftError> {
        validate_addr(addr).map_err(RaftError::InvalidArgument)?;
        let _guard = self.membership_guard()?;
        let deadline = Instant::now() + opts.catch_up_timeout;
        let before = self.membership().await?;
        let ident = self.query_identity(addr).await?;
        check_same_cluster(addr, ident.cluster_id, self.cluster_id())?;
        check_format(addr, ident.max_cluster_format, self.cluster_format())?;
        let peer = PeerId {
            id: ident.id,
            addr: addr.to_string(),
        };
        if before.conf.voters.iter().any(|p| p.id == ident.id) {
            // Done already (a retry after the step took effect).
            return Ok(before);
        }
        check_expected(opts.expected_conf_index, before.conf_index)?;
        let is_learner = before.conf.learners.iter().any(|p| p.id == ident.id);
        if !is_learner && ident.initialized {
            return Err(RaftError::InvalidArgument(format!(
                "{addr} (id {:016x}) already belongs to a configuration; only an empty replica can be added",
                ident.id
            )));
        }
        if !is_learner {
            let req = ConfChangeRequest {
                changes: vec![(ConfChangeType::AddLearnerNode, peer.clone())],
                expected_conf_index: Some(before.conf_index),
                unchecked: false,
            };
            self.step_conf(req, deadline).await?;
        }
        if let Err(e) = self.wait_caught_up(&[ident.id], deadline).await {
            self.remove_learners(std::slice::from_ref(&peer)).await;
            return Err(e);
        }
        let req = ConfChangeRequest {
            changes: vec![(ConfChangeType::AddNode, peer)],
            expected_conf_index: None,
            unchecked: false,
        };
        self.step_conf(req, deadline).await?;
        self.membership().await
    }

    /// Adds the empty replica at `addr` as a learner. Succeeds with the
    /// current configuration when it already is a learner or a voter (the
    /// step took effect before), whatever `expected_conf_index` says;
    /// otherwise refuses on a configuration index mismatch.
    pub async fn add_learner(
        &self,
        addr: &str,
        expected_conf_index: Option<u64>,
    ) -> Result<Membership, RaftError> {
        validate_addr(addr).map_err(RaftError::InvalidArgument)?;
        let _guard = self.membership_guard()?;
        let before = self.membership().await?;
        let ident = self.query_identity(addr).await?;
        check_same_cluster(addr, ident.cluster_id, self.cluster_id())?;
        check_format(addr, ident.max_cluster_format, self.cluster_format())?;
        let conf = &before.conf;
        if conf
            .voters
            .iter()
            .chain(&conf.learners)
            .chain(&conf.voters_outgoing)
            .any(|p| p.id == ident.id)
        {
            return Ok(before);
        }
        check_expected(expected_conf_index, before.conf_index)?;
        if ident.initialized {
            return Err(RaftError::InvalidArgument(format!(
                "{addr} (id {:016x}) already belongs to a configuration; only an empty replica can be added",
                ident.id
            )));
        }
        let req = ConfChangeRequest {
            changes: vec![(
                ConfChangeType::AddLearnerNode,
                PeerId {
                    id: ident.id,
                    addr: addr.to_string(),
                },
            )],
            expected_conf_index: Some(before.conf_index),
            unchecked: false,
        };
        self.step_conf(req, Instant::now() + Duration::from_secs(30))
            .await?;
        self.membership().await
    }

    /// Makes the learner `who` a voter, once it has caught up (else
    /// [`RaftError::NotCaughtUp`]). Succeeds with the current configuration
    /// when it already is a voter.
    pub async fn promote(
        &self,
        who: &PeerRef,
        expected_conf_index: Option<u64>,
    ) -> Result<Membership, RaftError> {
        let _guard = self.membership_guard()?;
        let before = self.membership().await?;
        let is = |ps: &[PeerId], p: &PeerId| ps.iter().any(|q| q.id == p.id);
        let Some(peer) = self.resolve(&before, who) else {
            return Err(RaftError::InvalidArgument(format!(
                "{who:?} is not a member; add it as a learner first"
            )));
        };
        if is(&before.conf.voters, &peer) {
            return Ok(before);
        }
        check_expected(expected_conf_index, before.conf_index)?;
        if !is(&before.conf.learners, &peer) {
            return Err(RaftError::InvalidArgument(format!(
                "{} is leaving the configuration; it cannot be promoted",
                peer.addr
            )));
        }
        // Refuse at once, rather than wait, when it lags.
        if let Err(e) = self
            .wait_caught_up(std::slice::from_ref(&peer.id), Instant::now())
            .await
        {
            return Err(match e {
                RaftError::Timeout(m) => RaftError::NotCaughtUp(m),
                other => other,
            });
        }
        let req = ConfChangeRequest {
            changes: vec![(ConfChangeType::AddNode, peer)],
            expected_conf_index: Some(before.conf_index),
            unchecked: false,
        };
        self.step_conf(req, Instant::now() + Duration::from_secs(30))
            .await?;
        self.membership().await
    }

    /// Removes a member. A leader that removes itself hands leadership to
    /// the most caught-up voter once the change commits.
    pub async fn remove_peer(
        &self,
        who: &PeerRef,
        expected_conf_index: Option<u64>,
    ) -> Result<Membership, RaftError> {
        let _guard = self.membership_guard()?;
        let m = self.membership().await?;
        let Some(peer) = self.resolve(&m, who) else {
            // Gone already (a retry after the step took effect).
            return Ok(m);
        };
        check_expected(expected_conf_index, m.conf_index)?;
        let req = ConfChangeRequest {
            changes: vec![(ConfChangeType::RemoveNode, peer)],
            expected_conf_index: Some(expected_conf_index.unwrap_or(m.conf_index)),
            unchecked: false,
        };
        self.step_conf(req, Instant::now() + Duration::from_secs(30))
            .await?;
        self.settled(Instant::now() + Duration::from_secs(30)).await
    }

    /// Makes the voters exactly `addrs`: new members join as learners and
    /// catch up, then one joint-consensus change swaps the voter sets.
    pub async fn change_peers(
        &self,
        addrs: &[String],
        opts: ChangeOptions,
    ) -> Result<Membership, RaftError> {
        if addrs.is_empty() {
            return Err(RaftError::InvalidArgument(
                "the new configuration is empty".into(),
            ));
        }
        for a in addrs {
            validate_addr(a).map_err(RaftError::InvalidArgument)?;
        }
        let _guard = self.membership_guard()?;
        let deadline = Instant::now() + opts.catch_up_timeout;
        let m = self.membership().await?;
        if let Some(e) = opts.expected_conf_index {
            if e != m.conf_index {
                return Err(RaftError::ConfigurationChanged {
                    expected: e,
                    current: m.conf_index,
                });
            }
        }
        let mut target = Vec::new();
        for a in addrs {
            match self.resolve(&m, &PeerRef::Addr(a.clone())) {
                Some(p) => target.push(p),
                None => {
                    let ident = self.query_identity(a).await?;
                    if ident.initialized {
                        return Err(RaftError::InvalidArgument(format!("{a} already belongs to a configuration; only an empty replica can be added")));
                    }
                    target.push(PeerId {
                        id: ident.id,
                        addr: a.clone(),
                    });
                }
            }
        }
        let voter = |id: u64| m.conf.voters.iter().any(|p| p.id == id);
        let learner = |id: u64| m.conf.learners.iter().any(|p| p.id == id);
        let new: Vec<PeerId> = target.iter().filter(|p| !voter(p.id)).cloned().collect();
        let removed: Vec<PeerId> = m
            .conf
            .voters
            .iter()
            .filter(|p| !target.iter().any(|t| t.id == p.id))
            .cloned()
            .collect();
        if new.is_empty() && removed.is_empty() {
            return Ok(m);
        }
        let mut expected = Some(m.conf_index);
        let to_learn: Vec<PeerId> = new.iter().filter(|p| !learner(p.id)).cloned().collect();
        if !to_learn.is_empty() {
            let req = ConfChangeRequest {
                changes: to_learn
                    .iter()
                    .map(|p| (ConfChangeType::AddLearnerNode, p.clone()))
                    .collect(),
                expected_conf_index: expected,
                unchecked: false,
            };
            self.step_conf(req, deadline).await?;
            expected = None;
            // A multi-member learner change is itself joint: let it settle.
            self.settled(deadline).await?;
        }
        let ids: Vec<u64> = new.iter().map(|p| p.id).collect();
        if let Err(e) = self.wait_caught_up(&ids, deadline).await {
            if !to_learn.is_empty() {
                self.remove_learners(&to_learn).await;
            }
            return Err(e);
        }
        let mut changes: Vec<(ConfChangeType, PeerId)> = new
            .iter()
            .map(|p| (ConfChangeType::AddNode, p.clone()))
            .collect();
        changes.extend(
            removed
                .iter()
                .map(|p| (ConfChangeType::RemoveNode, p.clone())),
        );
        self.step_conf(
            ConfChangeRequest {
                changes,
                expected_conf_index: expected,
                unchecked: false,
            },
            deadline,
        )
        .await?;
        self.settled(deadline.max(Instant::now() + Duration::from_secs(10)))
            .await
    }

    /// Moves leadership to `target` (a caught-up voter), or to the most
    /// caught-up voter when `None`. New writes are refused with a retryable
    /// "transferring" error meanwhile. Returns the new leader, or an error
    /// when the attempt was abandoned (this node then leads again).
    pub async fn transfer_leadership(&self, target: Option<&PeerRef>) -> Result<PeerId, RaftError> {
        let id = match target {
            None => None,
            Some(PeerRef::Id(i)) => Some(*i),
            Some(who) => {
                let m = self.membership().await?;
                Some(
                    self.resolve(&m, who)
                        .ok_or_else(|| {
                            RaftError::InvalidArgument(format!("{who:?} is not a member"))
                        })?
                        .id,
                )
            }
        };
        self.transfer_to(id).await
    }

    /// Forced, unsafe reconfiguration for quorum loss: this node alone
    /// switches to a configuration of `keep` (members it knows, itself
    /// included), campaigns, and once it leads records the change in the log
    /// so other members and restarts learn it. Acknowledged writes the lost
    /// members held but this node did not are lost.
    pub async fn reset_peers(&self, keep: &[PeerRef]) -> Result<Membership, RaftError> {
        let _guard = self.membership_guard()?;
        let m = self.membership().await?;
        let mut ids = Vec::new();
        for k in keep {
            let p = self.resolve(&m, k).ok_or_else(|| {
                RaftError::InvalidArgument(format!("{k:?} is not a member this node knows"))
            })?;
            ids.push(p.id);
        }
        let logged = self.force_configuration(ids).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.is_leader() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(RaftError::Timeout(
                    "the reset configuration did not elect this node".into(),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        for step in logged {
            let req = ConfChangeRequest {
                changes: vec![step],
                expected_conf_index: None,
                unchecked: true,
            };
            self.step_conf(req, deadline).await?;
        }
        self.membership().await
    }
}

/// What a fresh replica with an initial configuration should do, given what
/// the other initial members said (`None`: no answer yet).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Formation {
    /// Bootstrap with this configuration.
    Bootstrap(Vec<PeerId>),
    /// The group exists without this replica: wait to be added.
    Join,
    /// Not everyone answered yet.
    Wait(Vec<String>),
}

/// The formation rule. Ids are random, so a wiped replica comes back with a
/// new id and never re-enters a configuration under an id that forgot its vote.
pub(crate) fn decide_formation(
    me: &PeerIdentity,
    others: &[(String, Option<PeerIdentity>)],
) -> Formation {
    // Someone bootstrapped a configuration that includes us: the same one.
    for (_, ident) in others {
        if let Some(i) = ident {
            if i.initial_conf.iter().any(|p| p.id == me.id) {
                return Formation::Bootstrap(i.initial_conf.clone());
            }
        }
    }
    // Someone is part of a group that does not include us: we are a replacement.
    if others
        .iter()
        .any(|(_, i)| i.as_ref().is_some_and(|i| i.initialized || i.has_data))
    {
        return Formation::Join;
    }
    let missing: Vec<String> = others
        .iter()
        .filter(|(_, i)| i.is_none())
        .map(|(a, _)| a.clone())
        .collect();
    if !missing.is_empty() {
        return Formation::Wait(missing);
    }
    let mut conf: Vec<PeerId> = others
        .iter()
        .filter_map(|(a, i)| {
            i.as_ref().map(|i| PeerId {
                id: i.id,
                addr: a.clone(),
            })
        })
        .collect();
    conf.push(PeerId {
        id: me.id,
        addr: me.addr.clone(),
    });
    conf.sort_by(|a, b| a.addr.cmp(&b.addr));
    Formation::Bootstrap(conf)
}

/// Forms the group from `initial_conf` (run by `Node::start` in the
/// background for a replica with no data): waits for every initial member to
/// answer, then bootstraps, or concludes this replica must be added.
pub(crate) async fn form_group(node: Node, initial_conf: Vec<String>) {
    let mut logged_wait = Instant::now();
    loop {
        if node.is_stopped() {
            return;
        }
        let me = match node.identity().await {
            Ok(i) => i,
            Err(_) => return,
        };
        if me.initialized || me.has_data {
            return;
        }
        let mut others = Vec::new();
        for a in initial_conf.iter().filter(|a| **a != me.addr) {
            others.push((
                a.clone(),
                node.query_identity(a)
                    .await
                    .ok()
                    .filter(|i| i.group == me.group),
            ));
        }
        match decide_formation(&me, &others) {
            Formation::Bootstrap(conf) => {
                match node.bootstrap(conf.clone()).await {
                    Ok(()) => {
                        tracing::info!(group = %me.group, members = conf.len(), "group formed from the initial configuration")
                    }
                    Err(e) => {
                        tracing::warn!(group = %me.group, error = %e, "bootstrap from the initial configuration failed")
                    }
                }
                return;
            }
            Formation::Join => {
                tracing::warn!(
                    group = %me.group,
                    id = %format!("{:016x}", me.id),
                    "the group already exists without this replica (new or wiped data); waiting to be added with add-peer"
                );
                return;
            }
            Formation::Wait(missing) => {
                if logged_wait.elapsed() > Duration::from_secs(5) {
                    tracing::info!(group = %me.group, waiting_for = ?missing, "waiting for the initial members to answer");
                    logged_wait = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(id: u64, addr: &str) -> PeerIdentity {
        PeerIdentity {
            group: "g".into(),
            id,
            addr: addr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn fresh_members_form_the_same_configuration() {
        let a = ident(1, "a:1");
        let b = ident(2, "b:1");
        let c = ident(3, "c:1");
        let from_a = decide_formation(
            &a,
            &[
                ("b:1".into(), Some(b.clone())),
                ("c:1".into(), Some(c.clone())),
            ],
        );
        let from_c = decide_formation(
            &c,
            &[
                ("a:1".into(), Some(a.clone())),
                ("b:1".into(), Some(b.clone())),
            ],
        );
        assert_eq!(from_a, from_c);
        assert!(matches!(from_a, Formation::Bootstrap(ref v) if v.len() == 3));
    }

    #[test]
    fn waits_for_silent_members_and_joins_existing_groups() {
        let a = ident(1, "a:1");
        assert_eq!(
            decide_formation(&a, &[("b:1".into(), None)]),
            Formation::Wait(vec!["b:1".into()])
        );
        // b already bootstrapped a configuration with a: a follows it.
        let mut b = ident(2, "b:1");
        b.initialized = true;
        b.initial_conf = vec![
            PeerId {
                id: 1,
                addr: "a:1".into(),
            },
            PeerId {
                id: 2,
                addr: "b:1".into(),
            },
        ];
        assert_eq!(
            decide_formation(&a, &[("b:1".into(), Some(b.clone()))]),
            Formation::Bootstrap(b.initial_conf.clone())
        );
        // A wiped a (new id 9) must not bootstrap: it waits to be added.
        let wiped = ident(9, "a:1");
        assert_eq!(
            decide_formation(&wiped, &[("b:1".into(), Some(b)), ("c:1".into(), None)]),
            Formation::Join
        );
    }

    #[test]
    fn a_replica_is_not_added_at_another_members_address() {
        let p = |id, addr: &str| PeerId {
            id,
            addr: addr.into(),
        };
        let conf = Configuration {
            voters: vec![p(1, "a:1"), p(2, "b:1")],
            learners: vec![p(3, "c:1")],
            voters_outgoing: vec![],
        };
        // b:1 came back empty under id 9: refused while 2 is a member.
        let e = check_address_free(&conf, &[], &p(9, "b:1")).unwrap_err();
        assert_eq!(e.kind(), "address_in_use");
        let text = e.to_string();
        assert!(text.contains("member 0000000000000002 (voter)"), "{text}");
        assert!(
            text.contains("remove member 0000000000000002 first"),
            "{text}"
        );
        let e = check_address_free(&conf, &[], &p(9, "c:1")).unwrap_err();
        assert!(e.to_string().contains("(learner)"), "{e}");
        // The same replica again, a new address, or the holder leaving in
        // the same step: allowed.
        assert_eq!(check_address_free(&conf, &[], &p(2, "b:1")), Ok(()));
        assert_eq!(check_address_free(&conf, &[], &p(9, "d:1")), Ok(()));
        assert_eq!(check_address_free(&conf, &[2], &p(9, "b:1")), Ok(()));
    }

    #[test]
    fn peer_refs_parse() {
        assert_eq!(
            "10.0.0.1:80".parse::<PeerRef>(),
            Ok(PeerRef::Addr("10.0.0.1:80".into()))
        );
        assert_eq!("00000000000000ff".parse::<PeerRef>(), Ok(PeerRef::Id(255)));
        assert!("nonsense".parse::<PeerRef>().is_err());
    }
}
