//! The plan: a pure function from what the operator observed to the one
//! next action (or a reason to wait, or nothing to do). Every ordering rule
//! of the operator lives here, so it is tested without a cluster:
//!
//! - server before Raft: a pod joins only once its admin API answers;
//! - bootstrap once: the first pod of a never-bootstrapped cluster, after
//!   the intent is recorded in status; never a second cluster;
//! - at most one membership change at a time, each conditional on the
//!   configuration index it was planned from, and never one that leaves
//!   fewer than a quorum of healthy voters;
//! - scale up one pod at a time (learner, caught up, voter); scale down
//!   highest ordinal first (leadership moved away, removed, then the pod);
//! - rolling restart: followers first, one at a time, each back and caught
//!   up before the next; then leadership moves to an updated follower;
//!   then the old leader;
//! - a member whose pod came back with an empty disk is replaced;
//! - certificates first: with mutual TLS, the operator's Secrets are
//!   written (a new pod's certificate, a renewal) before any other step, so
//!   a pod never starts without its certificate.

use std::collections::BTreeMap;
use std::fmt;

/// Everything the plan decides on.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub desired: Desired,
    /// From the resource's status.
    pub recorded: Recorded,
    /// The pods' controller (a StatefulSet); `None` when it does not exist.
    pub workload: Option<WorkloadView>,
    /// The group as its members describe it; `None` when no member answered.
    pub raft: Option<RaftView>,
    /// The cluster's mutual TLS material.
    pub tls: TlsView,
}

/// The cluster's mutual TLS, as observe found it (with the time it was
/// observed, so whether a certificate is due is decided there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TlsView {
    /// TLS is off, or every certificate is in place: the operator's for
    /// every pod that runs or is about to (the desired replicas included),
    /// none due for renewal; or the user's Secrets.
    #[default]
    Ready,
    /// The operator's Secrets must be written (why: a new CA, a pod's
    /// certificate missing, one due for renewal, a removed pod's dropped).
    Due(String),
    /// TLS is on but cannot be used (why: a user's Secret is missing, the
    /// CA's Secret cannot be read).
    Unusable(String),
}

/// What the spec asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub replicas: u32,
    pub paused: bool,
    /// A spec change that cannot be honoured (say why); nothing is done
    /// until it is undone.
    pub refused: Option<String>,
    /// Hash of everything a pod is started from (image, flags, template,
    /// the restart annotation).
    pub revision: String,
}

/// What the status remembers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub bootstrapped: bool,
    /// The pod and raft id a bootstrap was started on.
    pub bootstrap: Option<(String, u64)>,
    pub cluster_id: Option<String>,
}

/// The pods' controller and its pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadView {
    pub replicas: u32,
    /// The revision new pods are created from.
    pub revision: String,
    /// One entry per ordinal below `max(replicas, highest pod + 1)`.
    pub pods: Vec<PodView>,
    /// Why owned objects outside the pods' revision must be applied
    /// again (see `WorkloadState::drifted`).
    pub drifted: Option<String>,
}

/// One pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub ordinal: u32,
    pub name: String,
    /// The address its node advertises (`host:port`).
    pub addr: String,
    pub phase: PodPhase,
    /// The revision it was created from.
    pub revision: Option<String>,
    /// Its node's answer to `identity`; `None` when the admin API did not
    /// answer.
    pub identity: Option<IdentityView>,
    /// `/readyz` answered 200.
    pub ready: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    /// No pod (not created yet, or deleted and not yet recreated).
    Missing,
    /// Created, its process or containers not running yet.
    Pending,
    Running,
    /// Being stopped.
    Terminating,
}

/// A node's answer to `identity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityView {
    pub id: u64,
    pub state: ReplicaState,
    pub cluster_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    /// No raft state: can bootstrap or be added.
    Empty,
    /// Waiting to be added.
    Uninitialized,
    Member,
    /// Was a member, since removed.
    Removed,
    Unknown,
}

/// The Raft group: configuration, leader, and each member's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftView {
    pub leader: Option<u64>,
    pub conf_index: u64,
    pub cluster_id: Option<String>,
    pub members: Vec<RaftMember>,
}

/// One member of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftMember {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    pub learner: bool,
    /// A voter of the outgoing half of a joint configuration.
    pub outgoing: bool,
    pub caught_up: bool,
    pub reachable: bool,
}

/// The next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the operator's TLS Secrets (CA, members', admin, client);
    /// running members reload theirs, nothing restarts.
    ApplyTls {
        reason: String,
    },
    /// Create or update the pods' controller: `replicas` pods from
    /// `revision` (existing pods are not restarted by this).
    ApplyWorkload {
        replicas: u32,
        revision: String,
    },
    /// Make the empty replica of `pod` a one-member group; the intent is
    /// recorded in status first.
    Bootstrap {
        pod: String,
        id: u64,
    },
    AddLearner {
        pod: String,
        addr: String,
        id: u64,
        expected_conf_index: u64,
    },
    Promote {
        pod: String,
        id: u64,
        expected_conf_index: u64,
    },
    RemoveMember {
        pod: Option<String>,
        id: u64,
        expected_conf_index: u64,
        why: RemoveReason,
    },
    TransferLeader {
        from: u64,
        to: u64,
        to_pod: String,
    },
    /// Delete the pod; it comes back from the workload's revision.
    RestartPod {
        pod: String,
        leader: bool,
    },
    /// Delete the pod and its volume: it holds a removed member's data.
    WipePod {
        pod: String,
    },
    /// Scale the workload down to `replicas` after the members above it were
    /// removed; with `delete_volumes` their volumes go too.
    ShrinkWorkload {
        replicas: u32,
        delete_volumes: bool,
    },
    Wait(Wait),
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    ScaleDown,
    /// Its pod came back with another replica (its disk was lost).
    Replaced,
    /// No pod of the cluster holds its address (added by hand, or left by
    /// a pod that is gone): it only weakens the quorum.
    NoPod,
}

/// Why nothing can be done now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    Paused,
    /// The spec asks for something that cannot be honoured.
    SpecRefused(String),
    PodNotServing(String),
    NoMemberAnswers,
    NoLeader,
    JointConfiguration,
    LearnerCatchingUp(String),
    MemberUnhealthy(String),
    /// The step would leave fewer than a quorum of healthy voters.
    WouldLoseQuorum(String),
    NoTransferTarget,
    /// Every pod is empty but the cluster was bootstrapped: its data is
    /// gone, and starting a second cluster would pretend otherwise.
    DataLost,
    /// A pod holds data of another cluster.
    ForeignData {
        pod: String,
        cluster_id: String,
    },
    /// The replica's state is one the plan does not act on.
    UnexpectedReplica(String),
    /// Mutual TLS is on but its certificates cannot be used (why).
    TlsUnusable(String),
}

impl Wait {
    /// A short CamelCase name, for condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Wait::Paused => "Paused",
            Wait::SpecRefused(_) => "SpecRefused",
            Wait::PodNotServing(_) => "PodNotServing",
            Wait::NoMemberAnswers => "NoMemberAnswers",
            Wait::NoLeader => "NoLeader",
            Wait::JointConfiguration => "JointConfiguration",
            Wait::LearnerCatchingUp(_) => "LearnerCatchingUp",
            Wait::MemberUnhealthy(_) => "MemberUnhealthy",
            Wait::WouldLoseQuorum(_) => "WouldLoseQuorum",
            Wait::NoTransferTarget => "NoTransferTarget",
            Wait::DataLost => "DataLost",
            Wait::ForeignData { .. } => "ForeignData",
            Wait::UnexpectedReplica(_) => "UnexpectedReplica",
            Wait::TlsUnusable(_) => "TlsUnusable",
        }
    }

    /// Waits that need a human (reported as `Degraded`), rather than time.
    pub fn is_degraded(&self) -> bool {
        matches!(
            self,
            Wait::NoMemberAnswers
                | Wait::SpecRefused(_)
                | Wait::NoLeader
                | Wait::DataLost
                | Wait::ForeignData { .. }
                | Wait::WouldLoseQuorum(_)
                | Wait::TlsUnusable(_)
        )
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::Paused => write!(f, "paused: no actions until spec.paused is false"),
            Wait::SpecRefused(why) => write!(f, "spec refused: {why}"),
            Wait::PodNotServing(p) => write!(f, "waiting for pod {p} to serve its admin API"),
            Wait::NoMemberAnswers => write!(f, "no member answers on its admin API"),
            Wait::NoLeader => write!(
                f,
                "the group has no leader (a quorum of voters may be down); no automatic reset_peers"
            ),
            Wait::JointConfiguration => {
                write!(f, "waiting for the group to leave a joint configuration")
            }
            Wait::LearnerCatchingUp(p) => write!(f, "waiting for learner {p} to catch up"),
            Wait::MemberUnhealthy(p) => {
                write!(f, "waiting for member {p} to be ready and caught up")
            }
            Wait::WouldLoseQuorum(what) => {
                write!(f, "{what} would leave fewer than a quorum of healthy voters")
            }
            Wait::NoTransferTarget => write!(
                f,
                "waiting for a caught-up, updated follower to move leadership to"
            ),
            Wait::DataLost => write!(
                f,
                "the cluster was bootstrapped but no pod holds its data; refusing to bootstrap a second cluster (restore the volumes, or delete and recreate the RaftCluster)"
            ),
            Wait::ForeignData { pod, cluster_id } => write!(
                f,
                "pod {pod} holds data of another cluster ({cluster_id}); delete its volume to let it join"
            ),
            Wait::UnexpectedReplica(p) => write!(f, "pod {p}'s replica is in an unexpected state"),
            Wait::TlsUnusable(why) => write!(f, "mutual TLS cannot be used: {why}"),
        }
    }
}

impl Action {
    /// The kind's name, for events, metrics and `status.operation`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::ApplyTls { .. } => "ApplyTls",
            Action::ApplyWorkload { .. } => "ApplyWorkload",
            Action::Bootstrap { .. } => "Bootstrap",
            Action::AddLearner { .. } => "AddLearner",
            Action::Promote { .. } => "Promote",
            Action::RemoveMember { .. } => "RemoveMember",
            Action::TransferLeader { .. } => "TransferLeader",
            Action::RestartPod { .. } => "RestartPod",
            Action::WipePod { .. } => "WipePod",
            Action::ShrinkWorkload { .. } => "ShrinkWorkload",
            Action::Wait(_) => "Wait",
            Action::Done => "Done",
        }
    }

    /// Changes the Raft configuration.
    pub fn is_membership_change(&self) -> bool {
        matches!(
            self,
            Action::AddLearner { .. } | Action::Promote { .. } | Action::RemoveMember { .. }
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::ApplyTls { reason } => write!(f, "write the TLS Secrets: {reason}"),
            Action::ApplyWorkload { replicas, revision } => {
                write!(
                    f,
                    "apply the workload: {replicas} pods of revision {revision}"
                )
            }
            Action::Bootstrap { pod, id } => {
                write!(f, "bootstrap the group on {pod} (raft id {id:016x})")
            }
            Action::AddLearner {
                pod,
                addr,
                expected_conf_index,
                ..
            } => write!(
                f,
                "add {pod} ({addr}) as a learner (configuration index {expected_conf_index})"
            ),
            Action::Promote {
                pod,
                id,
                expected_conf_index,
            } => write!(
                f,
                "promote {pod} ({id:016x}) to voter (configuration index {expected_conf_index})"
            ),
            Action::RemoveMember {
                pod,
                id,
                expected_conf_index,
                why,
            } => write!(
                f,
                "remove member {id:016x}{} ({}; configuration index {expected_conf_index})",
                pod.as_deref()
                    .map(|p| format!(" of {p}"))
                    .unwrap_or_default(),
                match why {
                    RemoveReason::ScaleDown => "scale down",
                    RemoveReason::Replaced => "its pod lost its data and is replaced",
                    RemoveReason::NoPod => "no pod of the cluster holds its address",
                }
            ),
            Action::TransferLeader { from, to, to_pod } => {
                write!(
                    f,
                    "move leadership from {from:016x} to {to_pod} ({to:016x})"
                )
            }
            Action::RestartPod { pod, leader } => write!(
                f,
                "restart {pod}{}",
                if *leader { " (the former leader)" } else { "" }
            ),
            Action::WipePod { pod } => {
                write!(
                    f,
                    "recreate {pod} with an empty volume (it holds a removed member's data)"
                )
            }
            Action::ShrinkWorkload {
                replicas,
                delete_volumes,
            } => write!(
                f,
                "scale the workload down to {replicas} pods{}",
                if *delete_volumes {
                    " and delete the removed pods' volumes"
                } else {
                    ""
                }
            ),
            Action::Wait(w) => write!(f, "wait: {w}"),
            Action::Done => write!(f, "nothing to do"),
        }
    }
}

/// Whether the spec asks to delete volumes on scale-down travels with the
/// observation's caller; the plan only needs it for `ShrinkWorkload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub retain_on_scale_down: bool,
}

/// Votes needed in a configuration of `voters` voters.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The whole plan.
pub fn plan(o: &Observation, opts: Options) -> Action {
    if o.desired.paused {
        return Action::Wait(Wait::Paused);
    }
    if let Some(why) = &o.desired.refused {
        return Action::Wait(Wait::SpecRefused(why.clone()));
    }
    // Certificates before any other step: the pods of a scale-up (the
    // desired replicas are among those observe certifies) get theirs
    // before the workload grows, and renewals reach the running members,
    // which reload them.
    match &o.tls {
        TlsView::Ready => {}
        TlsView::Due(reason) => {
            return Action::ApplyTls {
                reason: reason.clone(),
            }
        }
        TlsView::Unusable(why) => return Action::Wait(Wait::TlsUnusable(why.clone())),
    }
    let Some(w) = &o.workload else {
        // First pass: every pod starts at once (their servers come up in
        // parallel); they join Raft one at a time below.
        return Action::ApplyWorkload {
            replicas: o.desired.replicas,
            revision: o.desired.revision.clone(),
        };
    };
    if w.revision != o.desired.revision || w.drifted.is_some() {
        // New pods (and pods restarted below) get the new revision; this
        // alone restarts nothing. The same apply brings a missing or stale
        // NetworkPolicy in step (an edit of spec.networkPolicy, an upgraded
        // operator), again restarting nothing.
        return Action::ApplyWorkload {
            replicas: w.replicas,
            revision: o.desired.revision.clone(),
        };
    }
    let bootstrapped = o.recorded.bootstrapped
        || w.pods.iter().any(|p| {
            p.identity
                .as_ref()
                .is_some_and(|i| matches!(i.state, ReplicaState::Member | ReplicaState::Removed))
        });
    if !bootstrapped {
        return plan_bootstrap(o, w);
    }
    if let Some(a) = resume_bootstrap(o, w) {
        return a;
    }
    let Some(raft) = &o.raft else {
        if w.pods.iter().all(|p| {
            p.identity
                .as_ref()
                .is_some_and(|i| i.state == ReplicaState::Empty)
        }) && !w.pods.is_empty()
        {
            return Action::Wait(Wait::DataLost);
        }
        // Pods still starting (after a restart of everything) are not yet
        // a reason for alarm.
        if let Some(p) = w.pods.iter().find(|p| p.identity.is_none()) {
            return Action::Wait(Wait::PodNotServing(p.name.clone()));
        }
        return Action::Wait(Wait::NoMemberAnswers);
    };
    let Some(leader) = raft.leader else {
        return Action::Wait(Wait::NoLeader);
    };
    if raft.members.iter().any(|m| m.outgoing) {
        return Action::Wait(Wait::JointConfiguration);
    }
    let view = View::new(o, w, raft);
    let target = o.desired.replicas;

    // 1. Members beyond the desired size go first, highest ordinal first.
    if let Some(a) = plan_scale_down(&view, raft, leader, target) {
        return a;
    }
    // 2. Members whose pod came back as another replica (disk lost).
    if let Some(a) = plan_replacements(&view, raft) {
        return a;
    }
    // 2b. Members at an address no pod holds (added by hand, say): the
    // operator keeps the membership to its pods, and such a member is never
    // healthy in its eyes, so it only weakens the quorum.
    if let Some(a) = plan_strays(&view, raft, leader) {
        return a;
    }
    // 3. A learner becomes a voter once caught up.
    if let Some(a) = plan_promotion(&view, raft) {
        return a;
    }
    // 4. The workload grows to the desired size (pods start in parallel).
    if w.replicas < target {
        return Action::ApplyWorkload {
            replicas: target,
            revision: o.desired.revision.clone(),
        };
    }
    // 5. Pods that are not members join, lowest ordinal first.
    if let Some(a) = plan_joins(&view, raft, target) {
        return a;
    }
    // 6. The workload shrinks once nothing above the desired size is a member.
    if w.replicas > target {
        return Action::ShrinkWorkload {
            replicas: target,
            delete_volumes: !opts.retain_on_scale_down,
        };
    }
    // 7. Pods of an older revision restart, followers first.
    if let Some(a) = plan_rolling_restart(&view, raft, leader, &o.desired.revision) {
        return a;
    }
    Action::Done
}

fn plan_bootstrap(o: &Observation, w: &WorkloadView) -> Action {
    if w.replicas == 0 {
        return Action::ApplyWorkload {
            replicas: o.desired.replicas.max(1),
            revision: o.desired.revision.clone(),
        };
    }
    let Some(first) = w.pods.first() else {
        return Action::Wait(Wait::PodNotServing(String::new()));
    };
    match &first.identity {
        None => Action::Wait(Wait::PodNotServing(first.name.clone())),
        Some(i) if i.state == ReplicaState::Empty || i.state == ReplicaState::Uninitialized => {
            Action::Bootstrap {
                pod: first.name.clone(),
                id: i.id,
            }
        }
        Some(_) => Action::Wait(Wait::UnexpectedReplica(first.name.clone())),
    }
}

/// A bootstrap recorded in status but not yet seen done (the operator
/// stopped between recording it and the call, or the call failed): repeat
/// it, but only on the very replica it was recorded for.
fn resume_bootstrap(o: &Observation, w: &WorkloadView) -> Option<Action> {
    let (pod, id) = o.recorded.bootstrap.as_ref()?;
    let p = w.pods.iter().find(|p| &p.name == pod)?;
    let i = p.identity.as_ref()?;
    let anyone_member = w.pods.iter().any(|p| {
        p.identity
            .as_ref()
            .is_some_and(|i| i.state == ReplicaState::Member)
    });
    (i.id == *id && i.state == ReplicaState::Empty && !anyone_member).then(|| Action::Bootstrap {
        pod: pod.clone(),
        id: *id,
    })
}

/// Pods and members side by side.
struct View<'a> {
    pods: &'a [PodView],
    /// Member id → the pod holding its address.
    pod_of: BTreeMap<u64, &'a PodView>,
}

impl<'a> View<'a> {
    fn new(_o: &'a Observation, w: &'a WorkloadView, raft: &'a RaftView) -> Self {
        let pod_of = raft
            .members
            .iter()
            .filter_map(|m| w.pods.iter().find(|p| p.addr == m.addr).map(|p| (m.id, p)))
            .collect();
        View {
            pods: &w.pods,
            pod_of,
        }
    }

    fn pod_name(&self, id: u64) -> Option<String> {
        self.pod_of.get(&id).map(|p| p.name.clone())
    }

    /// A member serving as expected: its pod runs the very replica, ready
    /// and caught up.
    fn healthy(&self, m: &RaftMember) -> bool {
        m.reachable
            && m.caught_up
            && self.pod_of.get(&m.id).is_some_and(|p| {
                p.phase == PodPhase::Running
                    && p.ready
                    && p.identity.as_ref().is_some_and(|i| i.id == m.id)
            })
    }

    fn healthy_voters(&self, raft: &RaftView) -> usize {
        raft.members
            .iter()
            .filter(|m| m.voter && self.healthy(m))
            .count()
    }
}

fn voters(raft: &RaftView) -> usize {
    raft.members.iter().filter(|m| m.voter).count()
}

fn plan_scale_down(view: &View, raft: &RaftView, leader: u64, target: u32) -> Option<Action> {
    let mut beyond: Vec<(&RaftMember, u32)> = raft
        .members
        .iter()
        .filter_map(|m| {
            let p = view.pod_of.get(&m.id)?;
            (p.ordinal >= target).then_some((m, p.ordinal))
        })
        .collect();
    beyond.sort_by_key(|(_, ord)| std::cmp::Reverse(*ord));
    let (m, _) = *beyond.first()?;
    if m.id == leader {
        // Leadership goes to a healthy voter that stays.
        return Some(move_leadership(view, raft, leader, |p| p.ordinal < target));
    }
    Some(remove_if_safe(view, raft, m, RemoveReason::ScaleDown))
}

/// Leadership moved from `leader` to a healthy voter whose pod `stays`,
/// or a wait when there is none.
fn move_leadership(
    view: &View,
    raft: &RaftView,
    leader: u64,
    stays: impl Fn(&PodView) -> bool,
) -> Action {
    let to = raft.members.iter().find(|c| {
        c.voter
            && c.id != leader
            && view.healthy(c)
            && view.pod_of.get(&c.id).is_some_and(|p| stays(p))
    });
    match to {
        Some(c) => Action::TransferLeader {
            from: leader,
            to: c.id,
            to_pod: view.pod_name(c.id).unwrap_or_default(),
        },
        None => Action::Wait(Wait::NoTransferTarget),
    }
}

/// Removing `m` keeps a quorum of healthy voters in the new configuration.
fn remove_if_safe(view: &View, raft: &RaftView, m: &RaftMember, why: RemoveReason) -> Action {
    let pod = view.pod_name(m.id);
    if m.voter {
        let after = voters(raft) - 1;
        let healthy_after = view.healthy_voters(raft) - usize::from(view.healthy(m));
        if after == 0 || healthy_after < quorum(after) {
            return Action::Wait(Wait::WouldLoseQuorum(format!(
                "removing {}",
                pod.unwrap_or_else(|| format!("{:016x}", m.id))
            )));
        }
    }
    Action::RemoveMember {
        pod,
        id: m.id,
        expected_conf_index: raft.conf_index,
        why,
    }
}

fn plan_replacements(view: &View, raft: &RaftView) -> Option<Action> {
    raft.members.iter().find_map(|m| {
        let p = view.pod_of.get(&m.id)?;
        let i = p.identity.as_ref()?;
        let replaced =
            i.id != m.id && matches!(i.state, ReplicaState::Empty | ReplicaState::Uninitialized);
        replaced.then(|| remove_if_safe(view, raft, m, RemoveReason::Replaced))
    })
}

fn plan_strays(view: &View, raft: &RaftView, leader: u64) -> Option<Action> {
    let m = raft
        .members
        .iter()
        .find(|m| !view.pod_of.contains_key(&m.id))?;
    if m.id == leader {
        // Leadership goes to a healthy voter of a pod first.
        return Some(move_leadership(view, raft, leader, |_| true));
    }
    Some(remove_if_safe(view, raft, m, RemoveReason::NoPod))
}

fn plan_promotion(view: &View, raft: &RaftView) -> Option<Action> {
    let m = raft.members.iter().find(|m| m.learner)?;
    let pod = view
        .pod_name(m.id)
        .unwrap_or_else(|| format!("{:016x}", m.id));
    if !(m.caught_up && m.reachable) {
        return Some(Action::Wait(Wait::LearnerCatchingUp(pod)));
    }
    // The new voter is caught up, so the healthy count grows with the
    // configuration; still, never promote into a configuration without a
    // healthy quorum.
    let after = voters(raft) + 1;
    let healthy_after = view.healthy_voters(raft) + 1;
    if healthy_after < quorum(after) {
        return Some(Action::Wait(Wait::WouldLoseQuorum(format!(
            "promoting {pod}"
        ))));
    }
    Some(Action::Promote {
        pod,
        id: m.id,
        expected_conf_index: raft.conf_index,
    })
}

fn plan_joins(view: &View, raft: &RaftView, target: u32) -> Option<Action> {
    let member_addrs: Vec<&str> = raft.members.iter().map(|m| m.addr.as_str()).collect();
    for p in view.pods.iter().filter(|p| p.ordinal < target) {
        if member_addrs.contains(&p.addr.as_str()) {
            continue;
        }
        let Some(i) = &p.identity else {
            return Some(Action::Wait(Wait::PodNotServing(p.name.clone())));
        };
        if let (Some(theirs), Some(ours)) = (&i.cluster_id, &raft.cluster_id) {
            if theirs != ours {
                return Some(Action::Wait(Wait::ForeignData {
                    pod: p.name.clone(),
                    cluster_id: theirs.clone(),
                }));
            }
        }
        return Some(match i.state {
            ReplicaState::Empty | ReplicaState::Uninitialized => Action::AddLearner {
                pod: p.name.clone(),
                addr: p.addr.clone(),
                id: i.id,
                expected_conf_index: raft.conf_index,
            },
            // Kept from an earlier scale-down: it cannot rejoin with its old
            // log, so it starts over empty.
            ReplicaState::Removed => Action::WipePod {
                pod: p.name.clone(),
            },
            ReplicaState::Member | ReplicaState::Unknown => {
                Action::Wait(Wait::UnexpectedReplica(p.name.clone()))
            }
        });
    }
    None
}

fn plan_rolling_restart(
    view: &View,
    raft: &RaftView,
    leader: u64,
    revision: &str,
) -> Option<Action> {
    let outdated = |p: &PodView| p.revision.as_deref() != Some(revision);
    let members: Vec<(&RaftMember, &PodView)> = raft
        .members
        .iter()
        .filter_map(|m| Some((m, *view.pod_of.get(&m.id)?)))
        .collect();
    if !members.iter().any(|(_, p)| outdated(p)) {
        return None;
    }
    // One at a time: every member back and caught up before the next.
    if let Some((_, p)) = members.iter().find(|(m, _)| !view.healthy(m)) {
        return Some(Action::Wait(Wait::MemberUnhealthy(p.name.clone())));
    }
    let n = voters(raft);
    let restart_keeps_quorum = |m: &RaftMember| {
        // With one or two voters any restart interrupts service; there is
        // no safer order, so it goes ahead.
        !m.voter || n < 3 || view.healthy_voters(raft) > quorum(n)
    };
    let follower = members
        .iter()
        .filter(|(m, p)| m.id != leader && outdated(p))
        .max_by_key(|(_, p)| p.ordinal);
    if let Some((m, p)) = follower {
        if !restart_keeps_quorum(m) {
            return Some(Action::Wait(Wait::WouldLoseQuorum(format!(
                "restarting {}",
                p.name
            ))));
        }
        return Some(Action::RestartPod {
            pod: p.name.clone(),
            leader: false,
        });
    }
    // Only the leader is outdated: hand leadership to an updated follower.
    let (_, leader_pod) = members.iter().find(|(m, _)| m.id == leader)?;
    if n == 1 {
        return Some(Action::RestartPod {
            pod: leader_pod.name.clone(),
            leader: true,
        });
    }
    let to = members
        .iter()
        .find(|(m, p)| m.voter && m.id != leader && !outdated(p) && view.healthy(m));
    Some(match to {
        Some((m, p)) => Action::TransferLeader {
            from: leader,
            to: m.id,
            to_pod: p.name.clone(),
        },
        None => Action::Wait(Wait::NoTransferTarget),
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
