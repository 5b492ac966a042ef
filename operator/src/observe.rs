//! Observe: what the workload backend says about the pods, and what the
//! nodes say about themselves (`identity`) and the group (`cluster_status`),
//! turned into the plan's [`Observation`]. The only module that talks to
//! nodes to look; acting is `act`'s.

use std::time::Duration;

use raftkit_client::{AdminClient, ClusterStatus, IdentityState};

use crate::backend::{PodState, Workload, WorkloadState};
use crate::crd::RaftCluster;
use crate::plan::{
    Desired, IdentityView, Observation, PodView, RaftMember, RaftView, Recorded, ReplicaState,
    WorkloadView,
};
use crate::Error;

/// How long one node may take to answer the operator's questions.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Observes the cluster `rc` through `workload` and the nodes' admin API.
pub async fn observe<W: Workload>(
    rc: &RaftCluster,
    workload: &W,
) -> Result<(Observation, Option<ClusterStatus>), Error> {
    let state = workload.observe(rc).await?;
    let desired = Desired {
        replicas: u32::try_from(rc.spec.replicas).unwrap_or(0),
        paused: rc.spec.paused,
        refused: refused_change(rc),
        revision: crate::build::revision(rc),
    };
    let recorded = recorded(rc);
    let Some(state) = state else {
        return Ok((
            Observation {
                desired,
                recorded,
                workload: None,
                raft: None,
            },
            None,
        ));
    };
    let group = rc.spec.state_machine.as_str();
    let addrs: Vec<String> = state.pods.iter().map(|p| p.addr.clone()).collect();
    let (pods, status) = if addrs.is_empty() {
        (Vec::new(), None)
    } else {
        let admin = AdminClient::new(addrs, group, ADMIN_TIMEOUT).map_err(Error::client)?;
        let identities = futures_identities(&admin, &state).await;
        let pods = state
            .pods
            .iter()
            .zip(identities)
            .map(|(p, identity)| pod_view(p, identity))
            .collect();
        (pods, Some(admin.cluster_status().await))
    };
    let raft = status.as_ref().and_then(raft_view);
    Ok((
        Observation {
            desired,
            recorded,
            workload: Some(WorkloadView {
                replicas: state.replicas,
                revision: state.revision.clone(),
                pods,
            }),
            raft,
        },
        status,
    ))
}

async fn futures_identities(
    admin: &AdminClient,
    state: &WorkloadState,
) -> Vec<Option<IdentityView>> {
    let asks = state.pods.iter().map(|p| async move {
        if !p.running {
            return None;
        }
        admin.identity(&p.addr).await.ok().map(|i| IdentityView {
            id: i.id,
            state: match i.state {
                IdentityState::Empty => ReplicaState::Empty,
                IdentityState::Uninitialized => ReplicaState::Uninitialized,
                IdentityState::Member => ReplicaState::Member,
                IdentityState::Removed => ReplicaState::Removed,
                IdentityState::Unknown => ReplicaState::Unknown,
            },
            cluster_id: i.cluster_id,
        })
    });
    futures::future::join_all(asks).await
}

fn pod_view(p: &PodState, identity: Option<IdentityView>) -> PodView {
    PodView {
        ordinal: p.ordinal,
        name: p.name.clone(),
        addr: p.addr.clone(),
        phase: p.phase,
        revision: p.revision.clone(),
        identity,
        ready: p.ready,
    }
}

/// What the status remembers, as the plan needs it.
pub fn recorded(rc: &RaftCluster) -> Recorded {
    let Some(s) = &rc.status else {
        return Recorded::default();
    };
    let bootstrap = s
        .operation
        .as_ref()
        .filter(|op| op.kind == "Bootstrap")
        .and_then(|op| {
            let id = u64::from_str_radix(op.raft_id.as_deref()?, 16).ok()?;
            Some((op.pod.clone()?, id))
        });
    Recorded {
        bootstrapped: s.bootstrapped,
        bootstrap,
        cluster_id: s.cluster_id.clone(),
    }
}

/// The group as the plan sees it; `None` when no member knows a
/// configuration (nothing answered, or only empty replicas did).
pub fn raft_view(s: &ClusterStatus) -> Option<RaftView> {
    if s.voters.is_empty() && s.voters_outgoing.is_empty() {
        return None;
    }
    let in_list = |list: &[raftkit_client::MemberId], id: u64| list.iter().any(|m| m.id == id);
    let members = s
        .members
        .iter()
        .filter(|m| {
            in_list(&s.voters, m.id)
                || in_list(&s.learners, m.id)
                || in_list(&s.voters_outgoing, m.id)
        })
        .map(|m| RaftMember {
            id: m.id,
            addr: m.addr.clone(),
            voter: in_list(&s.voters, m.id),
            learner: in_list(&s.learners, m.id),
            outgoing: in_list(&s.voters_outgoing, m.id),
            caught_up: m.caught_up,
            reachable: m.reachable,
        })
        .collect();
    Some(RaftView {
        leader: s.leader.as_ref().map(|l| l.id),
        conf_index: s.conf_index,
        cluster_id: s.cluster_id.clone(),
        members,
    })
}

/// A spec change the cluster cannot honour: the state machine or the
/// storage class of a bootstrapped cluster.
pub fn refused_change(rc: &RaftCluster) -> Option<String> {
    let s = rc.status.as_ref().filter(|s| s.bootstrapped)?;
    if let Some(sm) = s.state_machine {
        if sm != rc.spec.state_machine {
            return Some(format!(
                "spec.stateMachine cannot change once the cluster is bootstrapped (it runs {}; asked for {})",
                sm.as_str(),
                rc.spec.state_machine.as_str()
            ));
        }
    }
    if s.storage_class_name != rc.spec.storage.storage_class_name {
        return Some(format!(
            "spec.storage.storageClassName cannot change after creation (it is {}; asked for {})",
            s.storage_class_name
                .as_deref()
                .unwrap_or("the default class"),
            rc.spec
                .storage
                .storage_class_name
                .as_deref()
                .unwrap_or("the default class")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RaftClusterStatus, StateMachine};

    fn rc(yaml: &str, status: Option<RaftClusterStatus>) -> RaftCluster {
        let mut r: RaftCluster = serde_yaml::from_str(yaml).expect("parses");
        r.status = status;
        r
    }

    #[test]
    fn the_state_machine_and_storage_class_cannot_change_after_bootstrap() {
        let bootstrapped = RaftClusterStatus {
            bootstrapped: true,
            state_machine: Some(StateMachine::Counter),
            storage_class_name: Some("fast".into()),
            ..RaftClusterStatus::default()
        };
        let same = "metadata: {name: d}\nspec: {replicas: 3, storage: {storageClassName: fast}}\n";
        assert_eq!(refused_change(&rc(same, Some(bootstrapped.clone()))), None);
        let kv = "metadata: {name: d}\nspec: {replicas: 3, stateMachine: kv, storage: {storageClassName: fast}}\n";
        let why = refused_change(&rc(kv, Some(bootstrapped.clone()))).expect("refused");
        assert!(
            why.contains("spec.stateMachine") && why.contains("runs counter"),
            "{why}"
        );
        let slow = "metadata: {name: d}\nspec: {replicas: 3, storage: {storageClassName: slow}}\n";
        let why = refused_change(&rc(slow, Some(bootstrapped))).expect("refused");
        assert!(
            why.contains("storageClassName") && why.contains("fast"),
            "{why}"
        );
        // Before bootstrap anything goes.
        assert_eq!(refused_change(&rc(kv, None)), None);
    }
}
