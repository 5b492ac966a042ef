//! The resource's status after a pass, computed from the observation, the
//! group's status and the planned action (pure): phase, conditions,
//! members, the step in progress. What is remembered across passes
//! (bootstrapped, cluster id, state machine, transition times) carries over
//! from the previous status.

use raftkit_client::ClusterStatus;

use crate::crd::{Condition, MemberStatus, Operation, RaftCluster, RaftClusterStatus};
use crate::plan::{Action, Observation, Wait};

/// The status to store after planning `action` (before acting on it).
pub fn compute(
    rc: &RaftCluster,
    o: &Observation,
    group: Option<&ClusterStatus>,
    action: &Action,
    now: &str,
) -> RaftClusterStatus {
    let prev = rc.status.clone().unwrap_or_default();
    let pods = o
        .workload
        .as_ref()
        .map(|w| w.pods.as_slice())
        .unwrap_or(&[]);
    let pod_at = |addr: &str| {
        pods.iter()
            .find(|p| p.addr == addr)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    };
    let pod_ready = |addr: &str| pods.iter().any(|p| p.addr == addr && p.ready);

    let in_conf = |id: u64| {
        group.is_some_and(|g| {
            g.voters
                .iter()
                .chain(&g.learners)
                .chain(&g.voters_outgoing)
                .any(|m| m.id == id)
        })
    };
    let members: Vec<MemberStatus> = group
        .map(|g| {
            g.members
                .iter()
                .filter(|m| in_conf(m.id))
                .map(|m| MemberStatus {
                    pod: pod_at(&m.addr),
                    raft_id: format!("{:016x}", m.id),
                    role: m
                        .role
                        .map(|r| format!("{r:?}").to_lowercase())
                        .unwrap_or_else(|| "unknown".into()),
                    voter: m.voter,
                    match_index: m.match_index,
                    caught_up: m.caught_up,
                    version: m.version.clone(),
                    healthy: m.reachable && m.caught_up && pod_ready(&m.addr),
                })
                .collect()
        })
        .unwrap_or_default();
    let ready = members.iter().filter(|m| m.healthy).count();
    let voters = members.iter().filter(|m| m.voter).count();
    let healthy_voters = members.iter().filter(|m| m.voter && m.healthy).count();
    let leader = group
        .and_then(|g| g.leader.as_ref())
        .map(|l| pod_at(&l.addr))
        .filter(|p| !p.is_empty());

    let bootstrapped = prev.bootstrapped
        || o.recorded.bootstrapped
        || matches!(action, Action::Bootstrap { .. })
        || o.raft.is_some();
    let outdated = pods
        .iter()
        .any(|p| p.revision.as_deref() != Some(o.desired.revision.as_str()));
    let current_revision = if !pods.is_empty() && !outdated {
        Some(o.desired.revision.clone())
    } else {
        prev.current_revision.clone()
    };

    let wait = match action {
        Action::Wait(w) => Some(w),
        _ => None,
    };
    let phase = match action {
        Action::Wait(Wait::Paused) => "Paused",
        Action::Wait(w) if w.is_degraded() => "Degraded",
        _ if !bootstrapped => "Pending",
        Action::Bootstrap { .. } => "Bootstrapping",
        // Certificates written for members that all run: still running.
        Action::ApplyTls { .. } if !outdated && members.len() == o.desired.replicas as usize => {
            "Running"
        }
        Action::RestartPod { .. } | Action::TransferLeader { .. } if outdated => "Updating",
        Action::Done => "Running",
        _ if outdated && members.len() == o.desired.replicas as usize => "Updating",
        _ => "Scaling",
    };

    let available = leader.is_some() && voters > 0 && healthy_voters >= crate::plan::quorum(voters);
    let generation = rc.metadata.generation;
    let mut conditions = Vec::new();
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" }.to_string();
        let last = prev
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string());
        conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: last,
            observed_generation: generation,
        });
    };
    set(
        "Available",
        available,
        if available {
            "QuorumReady"
        } else {
            "QuorumNotReady"
        },
        format!(
            "{healthy_voters} of {voters} voters ready and caught up{}",
            leader
                .as_deref()
                .map(|l| format!("; leader {l}"))
                .unwrap_or_else(|| "; no leader".into())
        ),
    );
    let progressing = !matches!(action, Action::Done | Action::Wait(Wait::Paused));
    set(
        "Progressing",
        progressing,
        match action {
            Action::Wait(w) => w.reason(),
            Action::Done => "Reconciled",
            a => a.kind(),
        },
        action.to_string(),
    );
    let degraded = wait.is_some_and(Wait::is_degraded);
    set(
        "Degraded",
        degraded,
        wait.filter(|w| w.is_degraded())
            .map_or("AsExpected", Wait::reason),
        wait.filter(|w| w.is_degraded())
            .map_or_else(String::new, ToString::to_string),
    );

    RaftClusterStatus {
        phase: phase.to_string(),
        conditions,
        observed_generation: generation,
        replicas: i32::try_from(members.len()).unwrap_or(i32::MAX),
        ready_replicas: i32::try_from(ready).unwrap_or(i32::MAX),
        leader,
        members,
        bootstrapped,
        cluster_id: group
            .and_then(|g| g.cluster_id.clone())
            .or(prev.cluster_id.clone()),
        state_machine: if bootstrapped {
            prev.state_machine.or(Some(rc.spec.state_machine))
        } else {
            None
        },
        storage_class_name: if bootstrapped {
            if prev.bootstrapped {
                prev.storage_class_name.clone()
            } else {
                rc.spec.storage.storage_class_name.clone()
            }
        } else {
            None
        },
        tls_enabled: if bootstrapped {
            prev.tls_enabled.or(Some(rc.tls_enabled()))
        } else {
            None
        },
        current_revision,
        update_revision: Some(o.desired.revision.clone()),
        operation: operation(prev.operation.as_ref(), action, now),
    }
}

/// The step in progress after planning `action`: a new step replaces the
/// old one, a wait keeps it (saying what it waits for), done clears it.
fn operation(prev: Option<&Operation>, action: &Action, now: &str) -> Option<Operation> {
    let step = |kind: &str, pod: Option<&str>, id: Option<u64>, conf: Option<u64>| {
        let same = prev.filter(|p| p.kind == kind && p.pod.as_deref() == pod);
        Some(Operation {
            kind: kind.to_string(),
            pod: pod.map(str::to_string),
            raft_id: id.map(|i| format!("{i:016x}")),
            phase: "started".into(),
            expected_conf_index: conf,
            started_at: same.map_or_else(|| now.to_string(), |p| p.started_at.clone()),
        })
    };
    match action {
        Action::Bootstrap { pod, id } => step("Bootstrap", Some(pod), Some(*id), None),
        Action::AddLearner {
            pod,
            id,
            expected_conf_index,
            ..
        } => step(
            "AddLearner",
            Some(pod),
            Some(*id),
            Some(*expected_conf_index),
        ),
        Action::Promote {
            pod,
            id,
            expected_conf_index,
        } => step("Promote", Some(pod), Some(*id), Some(*expected_conf_index)),
        Action::RemoveMember {
            pod,
            id,
            expected_conf_index,
            ..
        } => step(
            "RemoveMember",
            pod.as_deref(),
            Some(*id),
            Some(*expected_conf_index),
        ),
        Action::TransferLeader { to, to_pod, .. } => {
            step("TransferLeader", Some(to_pod), Some(*to), None)
        }
        Action::RestartPod { pod, .. } => step("RestartPod", Some(pod), None, None),
        Action::WipePod { pod } => step("WipePod", Some(pod), None, None),
        Action::Wait(w) => prev.map(|p| Operation {
            phase: format!("waiting: {w}"),
            ..p.clone()
        }),
        // Not steps of their own: a step in progress (a bootstrap not yet
        // seen done) stays recorded across them.
        Action::ApplyTls { .. } | Action::ApplyWorkload { .. } | Action::ShrinkWorkload { .. } => {
            prev.cloned()
        }
        Action::Done => None,
    }
}
