//! The plan's rules, one table test each, and properties over random
//! observed states (members down, stale status, a step half done, the spec
//! changed mid-operation).

use proptest::prelude::*;

use super::*;

const REV: &str = "r1";

fn pod(i: u32, id: u64, state: ReplicaState) -> PodView {
    PodView {
        ordinal: i,
        name: format!("demo-{i}"),
        addr: format!("10.0.0.{i}:8080"),
        phase: PodPhase::Running,
        revision: Some(REV.into()),
        identity: Some(IdentityView {
            id,
            state,
            cluster_id: Some("c1".into()),
        }),
        ready: state == ReplicaState::Member,
    }
}

fn id(i: u32) -> u64 {
    100 + u64::from(i)
}

fn member(i: u32) -> RaftMember {
    RaftMember {
        id: id(i),
        addr: format!("10.0.0.{i}:8080"),
        voter: true,
        learner: false,
        outgoing: false,
        caught_up: true,
        reachable: true,
    }
}

/// `n` healthy voters on pods 0..n, demo-0 leading, all of revision r1.
fn healthy(n: u32) -> Observation {
    Observation {
        desired: Desired {
            replicas: n,
            paused: false,
            refused: None,
            revision: REV.into(),
        },
        recorded: Recorded {
            bootstrapped: true,
            bootstrap: None,
            cluster_id: Some("c1".into()),
        },
        workload: Some(WorkloadView {
            replicas: n,
            revision: REV.into(),
            pods: (0..n)
                .map(|i| pod(i, id(i), ReplicaState::Member))
                .collect(),
            drifted: None,
        }),
        raft: Some(RaftView {
            leader: Some(id(0)),
            conf_index: 7,
            cluster_id: Some("c1".into()),
            members: (0..n).map(member).collect(),
        }),
        tls: TlsView::Ready,
    }
}

fn w(o: &mut Observation) -> &mut WorkloadView {
    o.workload.as_mut().expect("workload")
}

fn r(o: &mut Observation) -> &mut RaftView {
    o.raft.as_mut().expect("raft")
}

const OPTS: Options = Options {
    retain_on_scale_down: true,
};

fn p(o: &Observation) -> Action {
    plan(o, OPTS)
}

#[test]
fn a_healthy_cluster_of_the_desired_size_needs_nothing() {
    assert_eq!(p(&healthy(3)), Action::Done);
}

#[test]
fn a_missing_or_stale_network_policy_is_applied_again_without_a_new_revision() {
    let mut o = healthy(3);
    w(&mut o).drifted = Some("the NetworkPolicy is out of date".into());
    assert_eq!(
        p(&o),
        Action::ApplyWorkload {
            replicas: 3,
            revision: REV.into()
        },
        "the same replicas and revision: no pod restarts"
    );
    // Mid scale-up too: the workload keeps its size.
    let mut o = healthy(3);
    o.desired.replicas = 5;
    w(&mut o).drifted = Some("the NetworkPolicy is missing".into());
    assert_eq!(
        p(&o),
        Action::ApplyWorkload {
            replicas: 3,
            revision: REV.into()
        }
    );
    w(&mut o).drifted = None;
    assert_eq!(
        p(&o),
        Action::ApplyWorkload {
            replicas: 5,
            revision: REV.into()
        },
        "then the scale-up goes on"
    );
}

#[test]
fn paused_and_refused_specs_stop_every_action() {
    let mut o = healthy(3);
    o.desired.replicas = 5;
    o.desired.paused = true;
    assert_eq!(p(&o), Action::Wait(Wait::Paused));
    o.desired.paused = false;
    o.desired.refused = Some("stateMachine".into());
    assert_eq!(
        p(&o),
        Action::Wait(Wait::SpecRefused("stateMachine".into()))
    );
}

#[test]
fn the_workload_is_created_with_every_pod_and_updated_without_restarts() {
    let mut o = healthy(3);
    o.workload = None;
    o.raft = None;
    o.recorded = Recorded::default();
    assert_eq!(
        p(&o),
        Action::ApplyWorkload {
            replicas: 3,
            revision: REV.into()
        }
    );
    let mut o = healthy(3);
    o.desired.revision = "r2".into();
    assert_eq!(
        p(&o),
        Action::ApplyWorkload {
            replicas: 3,
            revision: "r2".into()
        }
    );
}

#[test]
fn bootstrap_happens_once_on_the_first_pod_after_its_server_answers() {
    let mut o = healthy(3);
    o.recorded = Recorded::default();
    o.raft = None;
    for (i, pd) in w(&mut o).pods.iter_mut().enumerate() {
        *pd = pod(i as u32, id(i as u32), ReplicaState::Empty);
    }
    assert_eq!(
        p(&o),
        Action::Bootstrap {
            pod: "demo-0".into(),
            id: id(0)
        }
    );
    w(&mut o).pods[0].identity = None;
    assert_eq!(p(&o), Action::Wait(Wait::PodNotServing("demo-0".into())));

    // Bootstrapped before, every pod empty now: never a second cluster.
    w(&mut o).pods[0] = pod(0, 999, ReplicaState::Empty);
    o.recorded.bootstrapped = true;
    assert_eq!(p(&o), Action::Wait(Wait::DataLost));
    // ... unless the recorded bootstrap never reached that very replica.
    o.recorded.bootstrap = Some(("demo-0".into(), 999));
    assert_eq!(
        p(&o),
        Action::Bootstrap {
            pod: "demo-0".into(),
            id: 999
        }
    );
    o.recorded.bootstrap = Some(("demo-0".into(), 5));
    assert_eq!(p(&o), Action::Wait(Wait::DataLost), "another replica now");
}

#[test]
fn scale_up_grows_the_workload_then_adds_one_learner_then_promotes_it() {
    let mut o = healthy(3);
    o.desired.replicas = 5;
    assert_eq!(
        p(&o),
        Action::ApplyWorkload {
            replicas: 5,
            revision: REV.into()
        }
    );
    w(&mut o).replicas = 5;
    w(&mut o).pods.push(pod(3, id(3), ReplicaState::Empty));
    w(&mut o).pods.push(pod(4, id(4), ReplicaState::Empty));
    w(&mut o).pods[3].identity = None;
    assert_eq!(p(&o), Action::Wait(Wait::PodNotServing("demo-3".into())));
    w(&mut o).pods[3] = pod(3, id(3), ReplicaState::Empty);
    assert_eq!(
        p(&o),
        Action::AddLearner {
            pod: "demo-3".into(),
            addr: "10.0.0.3:8080".into(),
            id: id(3),
            expected_conf_index: 7
        }
    );
    let mut learner = member(3);
    learner.voter = false;
    learner.learner = true;
    learner.caught_up = false;
    r(&mut o).members.push(learner);
    r(&mut o).conf_index = 8;
    assert_eq!(
        p(&o),
        Action::Wait(Wait::LearnerCatchingUp("demo-3".into()))
    );
    r(&mut o).members[3].caught_up = true;
    assert_eq!(
        p(&o),
        Action::Promote {
            pod: "demo-3".into(),
            id: id(3),
            expected_conf_index: 8
        }
    );
}

#[test]
fn scale_down_removes_the_highest_ordinal_first_moving_leadership_away() {
    let mut o = healthy(5);
    o.desired.replicas = 3;
    assert_eq!(
        p(&o),
        Action::RemoveMember {
            pod: Some("demo-4".into()),
            id: id(4),
            expected_conf_index: 7,
            why: RemoveReason::ScaleDown
        }
    );
    r(&mut o).leader = Some(id(4));
    match p(&o) {
        Action::TransferLeader { from, to, .. } => {
            assert_eq!(from, id(4));
            assert!(
                [id(0), id(1), id(2)].contains(&to),
                "to a member that stays"
            );
        }
        a => panic!("expected a transfer, got {a:?}"),
    }
    // Both gone from the configuration: the workload shrinks.
    let mut o = healthy(5);
    o.desired.replicas = 3;
    r(&mut o).members.truncate(3);
    assert_eq!(
        p(&o),
        Action::ShrinkWorkload {
            replicas: 3,
            delete_volumes: false
        }
    );
    assert_eq!(
        plan(
            &o,
            Options {
                retain_on_scale_down: false
            }
        ),
        Action::ShrinkWorkload {
            replicas: 3,
            delete_volumes: true
        }
    );
}

#[test]
fn a_removal_that_would_leave_no_healthy_quorum_waits() {
    let mut o = healthy(3);
    o.desired.replicas = 2;
    w(&mut o).pods[1].ready = false; // one voter down
    assert!(matches!(p(&o), Action::Wait(Wait::WouldLoseQuorum(_))));
}

#[test]
fn a_member_whose_pod_lost_its_disk_is_removed_then_added_again() {
    let mut o = healthy(3);
    w(&mut o).pods[2] = pod(2, 555, ReplicaState::Empty);
    r(&mut o).members[2].reachable = false;
    r(&mut o).members[2].caught_up = false;
    assert_eq!(
        p(&o),
        Action::RemoveMember {
            pod: Some("demo-2".into()),
            id: id(2),
            expected_conf_index: 7,
            why: RemoveReason::Replaced
        }
    );
    r(&mut o).members.truncate(2);
    assert!(matches!(p(&o), Action::AddLearner { id: 555, .. }));
}

/// A member no pod holds (added by hand at another address): removed once
/// that keeps a healthy quorum, after leadership moved away from it; the
/// cluster is then Done.
#[test]
fn a_member_at_an_address_no_pod_holds_is_removed() {
    let mut o = healthy(3);
    let stray = RaftMember {
        id: 900,
        addr: "10.9.9.9:8080".into(),
        ..member(0)
    };
    r(&mut o).members.push(RaftMember {
        reachable: false,
        caught_up: false,
        ..stray.clone()
    });
    let removal = Action::RemoveMember {
        pod: None,
        id: 900,
        expected_conf_index: 7,
        why: RemoveReason::NoPod,
    };
    assert_eq!(p(&o), removal);
    assert_eq!(
        removal.to_string(),
        "remove member 0000000000000384 (no pod of the cluster holds its address; configuration index 7)"
    );
    // As a learner too (never promoted).
    r(&mut o).members[3].voter = false;
    r(&mut o).members[3].learner = true;
    assert_eq!(p(&o), removal);
    r(&mut o).members.pop();
    assert_eq!(p(&o), Action::Done);

    // The stray leads: leadership moves to a pod's voter first.
    let mut o = healthy(3);
    r(&mut o).members.push(stray);
    r(&mut o).leader = Some(900);
    assert_eq!(
        p(&o),
        Action::TransferLeader {
            from: 900,
            to: id(0),
            to_pod: "demo-0".into()
        }
    );

    // Removing a voter that leaves too few healthy ones waits: two pods,
    // one of them down, and a stray voter (3 voters, 1 healthy).
    let mut o = healthy(2);
    w(&mut o).pods[1].ready = false;
    r(&mut o).members.push(RaftMember {
        id: 900,
        addr: "10.9.9.9:8080".into(),
        ..member(0)
    });
    assert!(
        matches!(p(&o), Action::Wait(Wait::WouldLoseQuorum(_))),
        "{:?}",
        p(&o)
    );
}

#[test]
fn a_removed_replica_starts_over_and_foreign_data_is_left_alone() {
    let mut o = healthy(3);
    r(&mut o).members.truncate(2);
    w(&mut o).pods[2] = pod(2, id(2), ReplicaState::Removed);
    assert_eq!(
        p(&o),
        Action::WipePod {
            pod: "demo-2".into()
        }
    );
    w(&mut o).pods[2] = pod(2, 9, ReplicaState::Empty);
    w(&mut o).pods[2]
        .identity
        .as_mut()
        .expect("identity")
        .cluster_id = Some("other".into());
    assert!(matches!(p(&o), Action::Wait(Wait::ForeignData { .. })));
}

#[test]
fn a_rolling_restart_goes_followers_first_then_moves_leadership_then_the_old_leader() {
    let mut o = healthy(3);
    o.desired.revision = "r2".into();
    w(&mut o).revision = "r2".into();
    assert_eq!(
        p(&o),
        Action::RestartPod {
            pod: "demo-2".into(),
            leader: false
        }
    );
    // demo-2 is back on r2 but not ready yet: wait.
    w(&mut o).pods[2].revision = Some("r2".into());
    w(&mut o).pods[2].ready = false;
    assert_eq!(p(&o), Action::Wait(Wait::MemberUnhealthy("demo-2".into())));
    w(&mut o).pods[2].ready = true;
    assert_eq!(
        p(&o),
        Action::RestartPod {
            pod: "demo-1".into(),
            leader: false
        }
    );
    w(&mut o).pods[1].revision = Some("r2".into());
    assert!(matches!(
        p(&o),
        Action::TransferLeader { from, .. } if from == id(0)
    ));
    r(&mut o).leader = Some(id(1));
    assert_eq!(
        p(&o),
        Action::RestartPod {
            pod: "demo-0".into(),
            leader: false
        }
    );
}

#[test]
fn no_leader_and_joint_configurations_wait() {
    let mut o = healthy(3);
    r(&mut o).leader = None;
    assert_eq!(p(&o), Action::Wait(Wait::NoLeader));
    let mut o = healthy(3);
    r(&mut o).members[2].outgoing = true;
    assert_eq!(p(&o), Action::Wait(Wait::JointConfiguration));
}

#[test]
fn certificates_come_before_every_other_step_and_unusable_tls_waits() {
    // A new cluster: its Secrets, then its pods.
    let mut o = healthy(3);
    o.workload = None;
    o.raft = None;
    o.recorded = Recorded::default();
    o.tls = TlsView::Due("a new CA".into());
    assert_eq!(
        p(&o),
        Action::ApplyTls {
            reason: "a new CA".into()
        }
    );
    o.tls = TlsView::Ready;
    assert!(matches!(p(&o), Action::ApplyWorkload { replicas: 3, .. }));

    // Scale-up: demo-3's certificate before the workload grows.
    let mut o = healthy(3);
    o.desired.replicas = 4;
    o.tls = TlsView::Due("demo-3: new".into());
    assert_eq!(
        p(&o),
        Action::ApplyTls {
            reason: "demo-3: new".into()
        }
    );
    o.tls = TlsView::Ready;
    assert_eq!(
        p(&o),
        Action::ApplyWorkload {
            replicas: 4,
            revision: REV.into()
        }
    );

    // A renewal in the middle of a roll goes first (nothing restarts for
    // it); a paused cluster renews nothing.
    let mut o = healthy(3);
    o.desired.revision = "r2".into();
    w(&mut o).revision = "r2".into();
    o.tls = TlsView::Due("demo-1: renewed".into());
    assert!(matches!(p(&o), Action::ApplyTls { .. }));
    o.tls = TlsView::Ready;
    assert!(matches!(p(&o), Action::RestartPod { .. }));
    o.tls = TlsView::Due("demo-1: renewed".into());
    o.desired.paused = true;
    assert_eq!(p(&o), Action::Wait(Wait::Paused));

    // Certificates that cannot be used stop everything, and say so.
    let mut o = healthy(3);
    o.desired.replicas = 5;
    o.tls = TlsView::Unusable("Secret mine does not exist".into());
    let a = p(&o);
    assert_eq!(
        a,
        Action::Wait(Wait::TlsUnusable("Secret mine does not exist".into()))
    );
    assert!(matches!(&a, Action::Wait(w) if w.is_degraded()));
}

// ------------------------------------------------------------ properties

fn arb_tls() -> impl Strategy<Value = TlsView> {
    prop_oneof![
        8 => Just(TlsView::Ready),
        1 => Just(TlsView::Due("demo-1: renewed".into())),
        1 => Just(TlsView::Unusable("no Secret".into())),
    ]
}

fn arb_state() -> impl Strategy<Value = ReplicaState> {
    // Mostly members, so that healthy clusters (where restarts and
    // removals happen) are common.
    prop_oneof![
        1 => Just(ReplicaState::Empty),
        1 => Just(ReplicaState::Uninitialized),
        8 => Just(ReplicaState::Member),
        1 => Just(ReplicaState::Removed),
    ]
}

prop_compose! {
    fn arb_pod(i: u32)(
        state in arb_state(),
        new_id in prop::bool::weighted(0.1),
        running in prop::bool::weighted(0.9),
        answers in prop::bool::weighted(0.9),
        ready in prop::bool::weighted(0.85),
        updated in any::<bool>(),
    ) -> PodView {
        let mut p = pod(i, if new_id { 900 + u64::from(i) } else { id(i) }, state);
        p.phase = if running { PodPhase::Running } else { PodPhase::Pending };
        if !answers || !running {
            p.identity = None;
        }
        p.ready = ready && running;
        p.revision = Some(if updated { "r2" } else { "r1" }.into());
        p
    }
}

prop_compose! {
    fn arb_member(i: u32)(
        learner in prop::bool::weighted(0.2),
        caught_up in prop::bool::weighted(0.9),
        reachable in prop::bool::weighted(0.9),
    ) -> RaftMember {
        let mut m = member(i);
        m.learner = learner;
        m.voter = !learner;
        m.caught_up = caught_up;
        m.reachable = reachable;
        m
    }
}

prop_compose! {
    fn arb_observation()(
        pods in 1u32..7,
        desired in 1u32..7,
        workload_replicas in 1u32..7,
        in_conf in prop::collection::vec(any::<bool>(), 7),
        leader_pick in any::<prop::sample::Index>(),
        has_leader in prop::bool::weighted(0.85),
        bootstrapped in any::<bool>(),
        roll in any::<bool>(),
        settled in any::<bool>(),
        tls in arb_tls(),
    )(
        pod_views in (0..pods).map(arb_pod).collect::<Vec<_>>(),
        members in (0..pods).map(arb_member).collect::<Vec<_>>(),
        pods in Just(pods),
        desired in Just(desired),
        workload_replicas in Just(workload_replicas),
        in_conf in Just(in_conf),
        leader_pick in Just(leader_pick),
        has_leader in Just(has_leader),
        bootstrapped in Just(bootstrapped),
        roll in Just(roll),
        settled in Just(settled),
        tls in Just(tls),
    ) -> Observation {
        // Half the states are settled in shape (every pod a member, the
        // desired size): there restarts and transfers are planned.
        let (desired, workload_replicas) = if settled { (pods, pods) } else { (desired, workload_replicas) };
        let in_conf = if settled { vec![true; 7] } else { in_conf };
        let members: Vec<RaftMember> = members
            .into_iter()
            .enumerate()
            .filter(|(i, _)| in_conf[*i])
            .map(|(_, m)| m)
            .collect();
        let voters: Vec<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        let leader = (has_leader && !voters.is_empty()).then(|| voters[leader_pick.index(voters.len())]);
        let revision = if roll { "r2" } else { "r1" }.to_string();
        Observation {
            desired: Desired { replicas: desired, paused: false, refused: None, revision: revision.clone() },
            recorded: Recorded { bootstrapped, bootstrap: None, cluster_id: Some("c1".into()) },
            workload: Some(WorkloadView {
                replicas: workload_replicas.max(pods.min(workload_replicas)),
                revision,
                pods: pod_views,
                drifted: None,
            }),
            raft: (!voters.is_empty()).then(|| RaftView {
                leader,
                conf_index: 42,
                cluster_id: Some("c1".into()),
                members,
            }),
            tls,
        }
    }
}

/// Healthy voters of `members` as the plan judges them.
fn healthy_voters(o: &Observation, members: &[RaftMember]) -> usize {
    let pods = &o.workload.as_ref().expect("workload").pods;
    members
        .iter()
        .filter(|m| {
            m.voter
                && m.reachable
                && m.caught_up
                && pods.iter().any(|p| {
                    p.addr == m.addr
                        && p.phase == PodPhase::Running
                        && p.ready
                        && p.identity.as_ref().is_some_and(|i| i.id == m.id)
                })
        })
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn never_a_second_bootstrap(o in arb_observation()) {
        let a = p(&o);
        let pods = &o.workload.as_ref().expect("workload").pods;
        let someone_has_data = pods.iter().any(|p| {
            p.identity.as_ref().is_some_and(|i| matches!(i.state, ReplicaState::Member | ReplicaState::Removed))
        });
        if o.recorded.bootstrapped || someone_has_data {
            prop_assert!(!matches!(a, Action::Bootstrap { .. }), "{a:?}");
        }
    }

    #[test]
    fn one_membership_change_at_a_time_each_from_the_observed_configuration(o in arb_observation()) {
        let a = p(&o);
        if let Some(raft) = &o.raft {
            let learner_pending = raft.members.iter().any(|m| m.learner);
            match &a {
                Action::AddLearner { expected_conf_index, .. } => {
                    prop_assert!(!learner_pending, "a learner is still pending: {a:?}");
                    prop_assert_eq!(*expected_conf_index, raft.conf_index);
                }
                Action::Promote { expected_conf_index, .. }
                | Action::RemoveMember { expected_conf_index, .. } => {
                    prop_assert_eq!(*expected_conf_index, raft.conf_index);
                }
                _ => {}
            }
            if a.is_membership_change() {
                prop_assert!(raft.leader.is_some(), "a change without a leader: {a:?}");
            }
        } else {
            prop_assert!(!a.is_membership_change(), "a change without a configuration: {a:?}");
        }
    }

    #[test]
    fn never_a_step_that_leaves_fewer_than_a_quorum_of_healthy_voters(o in arb_observation()) {
        let a = p(&o);
        let Some(raft) = &o.raft else { return Ok(()) };
        let voters = raft.members.iter().filter(|m| m.voter).count();
        match &a {
            Action::RemoveMember { id, .. } => {
                let rest: Vec<RaftMember> = raft.members.iter().filter(|m| m.id != *id).cloned().collect();
                let after = rest.iter().filter(|m| m.voter).count();
                let was_voter = raft.members.iter().any(|m| m.id == *id && m.voter);
                if was_voter {
                    prop_assert!(after > 0 && healthy_voters(&o, &rest) >= quorum(after), "{a:?}");
                }
            }
            Action::Promote { id, .. } => {
                let mut after: Vec<RaftMember> = raft.members.clone();
                for m in after.iter_mut().filter(|m| m.id == *id) {
                    m.voter = true;
                    m.learner = false;
                }
                // The promoted learner counts when its pod is healthy.
                let n = after.iter().filter(|m| m.voter).count();
                prop_assert!(healthy_voters(&o, &raft.members) + 1 >= quorum(n), "{a:?}");
            }
            Action::RestartPod { pod, .. } => {
                let pods = &o.workload.as_ref().expect("workload").pods;
                let addr = &pods.iter().find(|p| &p.name == pod).expect("pod").addr;
                let is_voter = raft.members.iter().any(|m| &m.addr == addr && m.voter);
                if is_voter && voters >= 3 {
                    prop_assert!(healthy_voters(&o, &raft.members) > quorum(voters), "{a:?}");
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_leader_restarts_only_after_every_follower_is_updated(o in arb_observation()) {
        let a = p(&o);
        let (Some(raft), Action::RestartPod { pod, .. }) = (&o.raft, &a) else { return Ok(()) };
        let pods = &o.workload.as_ref().expect("workload").pods;
        let addr = &pods.iter().find(|p| &p.name == pod).expect("pod").addr;
        let leader = raft.leader.expect("a restart needs a leader");
        if raft.members.iter().any(|m| m.id == leader && &m.addr == addr) {
            for m in &raft.members {
                let pd = pods.iter().find(|p| p.addr == m.addr);
                if m.id != leader {
                    prop_assert_eq!(pd.and_then(|p| p.revision.as_deref()), Some(o.desired.revision.as_str()), "{:?}", a);
                }
            }
        }
    }

    #[test]
    fn due_certificates_are_written_before_any_other_step(o in arb_observation()) {
        let a = p(&o);
        match &o.tls {
            TlsView::Due(reason) => {
                prop_assert_eq!(&a, &Action::ApplyTls { reason: reason.clone() });
            }
            TlsView::Unusable(_) => {
                prop_assert!(matches!(a, Action::Wait(Wait::TlsUnusable(_))), "{a:?}");
            }
            TlsView::Ready => {
                prop_assert!(!matches!(a, Action::ApplyTls { .. }), "{a:?}");
            }
        }
        // So no pod is created, restarted or added while a certificate is
        // missing or due.
        if o.tls != TlsView::Ready {
            prop_assert!(
                !matches!(a, Action::ApplyWorkload { .. } | Action::RestartPod { .. } | Action::WipePod { .. })
                    && !a.is_membership_change(),
                "{a:?}"
            );
        }
    }

    #[test]
    fn a_healthy_cluster_always_makes_progress(n in 1u32..6, desired in 1u32..6, roll in any::<bool>()) {
        let mut o = healthy(n);
        o.desired.replicas = desired;
        if roll {
            o.desired.revision = "r2".into();
            w(&mut o).revision = "r2".into();
        }
        let a = p(&o);
        if desired == n && !roll {
            prop_assert_eq!(a, Action::Done);
        } else {
            prop_assert!(!matches!(a, Action::Wait(_) | Action::Done), "stuck: {a:?}");
        }
    }
}
