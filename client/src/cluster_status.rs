//! One typed view of a group, assembled from what each member says about
//! itself ([`ClusterStatus`], [`assemble`]): the configuration and the
//! leader's view of every member's progress, and each member's own role,
//! applied index and version. Members that do not answer are listed as
//! unreachable, not dropped. This is what an operator decides on.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkit_proto::pb::admin_client::AdminClient as AdminRpc;
use raftkit_proto::pb::{GroupRequest, Member, NodeStatusReply, Role};
use serde::Serialize;

use crate::*;

/// A group as its members describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub group: String,
    /// The cluster's id, 16 hex digits, as the authoritative member reports
    /// it (none before any member knows one).
    pub cluster_id: Option<String>,
    /// The group's cluster format as the authoritative member applied it
    /// (none from a node that predates cluster formats).
    pub cluster_format: Option<u32>,
    /// The highest term any member reported.
    pub term: u64,
    /// The leader, when one is known (by its own answer, or named by the
    /// most recent answers).
    pub leader: Option<MemberId>,
    /// The configuration, as the leader (or, without one, the member with
    /// the newest configuration) knows it.
    pub conf_index: u64,
    pub commit_index: u64,
    pub voters: Vec<MemberId>,
    pub learners: Vec<MemberId>,
    /// Voters of the outgoing half of a joint configuration.
    pub voters_outgoing: Vec<MemberId>,
    /// Every member of the configuration, then every other replica that
    /// answered (not a member: waiting to be added, or removed).
    pub members: Vec<MemberStatus>,
}

/// A replica's raft id and address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberId {
    pub id: u64,
    pub addr: String,
}

/// One replica, as it and the leader see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    /// Its own answer's role; `None` when it did not answer.
    pub role: Option<RoleName>,
    pub voter: bool,
    pub learner: bool,
    pub reachable: bool,
    pub applied_index: Option<u64>,
    /// The leader's view of how much of its log matches.
    pub match_index: Option<u64>,
    /// Its log is within the leader's catch-up margin and the leader heard
    /// from it recently (the leader itself always is).
    pub caught_up: bool,
    pub version: Option<String>,
    pub max_log_format: Option<u32>,
    /// Why it did not answer, or the error it stopped on.
    pub error: Option<String>,
}

/// A role, by name (`follower`, `leader`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
    Uninitialized,
    Error,
    Shutdown,
    /// A node too old to report its role as an enum.
    Unknown,
}

impl From<Role> for RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Follower => RoleName::Follower,
            Role::PreCandidate => RoleName::PreCandidate,
            Role::Candidate => RoleName::Candidate,
            Role::Leader => RoleName::Leader,
            Role::Uninitialized => RoleName::Uninitialized,
            Role::Error => RoleName::Error,
            Role::Shutdown => RoleName::Shutdown,
            Role::Unspecified => RoleName::Unknown,
        }
    }
}

fn ids(ms: &[Member]) -> Vec<MemberId> {
    ms.iter()
        .map(|m| MemberId {
            id: m.id,
            addr: m.addr.clone(),
        })
        .collect()
}

/// Builds the group's view from each address's answer (its status of the
/// group, or why there is none). Pure: the rules are unit-tested.
pub fn assemble(
    group: &str,
    answers: Vec<(String, Result<NodeStatusReply, String>)>,
) -> ClusterStatus {
    let replies: Vec<&NodeStatusReply> = answers
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let term = replies.iter().map(|r| r.term).max().unwrap_or(0);
    // The leader of the highest term that claims to lead.
    let leader_reply = replies
        .iter()
        .filter(|r| r.role_kind() == Role::Leader || r.role == "leader")
        .max_by_key(|r| r.term)
        .copied();
    // Whose configuration counts: the leader's, else the newest one.
    let authority = leader_reply.or_else(|| {
        replies
            .iter()
            .max_by_key(|r| (r.conf_index, r.term))
            .copied()
    });
    let leader = match leader_reply {
        Some(l) => Some(MemberId {
            id: l.id,
            addr: l.addr.clone(),
        }),
        None => replies
            .iter()
            .filter(|r| r.term == term && r.leader_id != 0)
            .map(|r| MemberId {
                id: r.leader_id,
                addr: r.leader_addr.clone(),
            })
            .next(),
    };
    let (voters, learners, voters_outgoing) = authority.map_or_else(Default::default, |a| {
        (ids(&a.voters), ids(&a.learners), ids(&a.voters_outgoing))
    });
    // One row per replica: configuration members first, by address.
    let mut rows: BTreeMap<(bool, String), MemberStatus> = BTreeMap::new();
    let in_conf = |id: u64| {
        voters
            .iter()
            .chain(&learners)
            .chain(&voters_outgoing)
            .any(|m| m.id == id)
    };
    for m in voters.iter().chain(&learners).chain(&voters_outgoing) {
        rows.entry((false, m.addr.clone()))
            .or_insert_with(|| MemberStatus {
                id: m.id,
                addr: m.addr.clone(),
                role: None,
                voter: voters.iter().chain(&voters_outgoing).any(|v| v.id == m.id),
                learner: learners.iter().any(|l| l.id == m.id),
                reachable: false,
                applied_index: None,
                match_index: None,
                caught_up: false,
                version: None,
                max_log_format: None,
                error: Some("did not answer".into()),
            });
    }
    for (addr, answer) in &answers {
        let key_member = rows.keys().find(|(_, a)| a == addr).cloned();
        match answer {
            Ok(r) => {
                // Another replica at a member's address (the member lost its
                // disk and came back empty, as a new id): the member stays
                // listed as not answering, the replica gets a row of its own.
                let (key_member, displaced) = match key_member {
                    Some(k) if rows.get(&k).is_some_and(|row| row.id != r.id) => (None, Some(k)),
                    k => (k, None),
                };
                if let Some(row) = displaced.and_then(|k| rows.get_mut(&k)) {
                    row.error = Some(format!(
                        "another replica ({:016x}) answers at its address",
                        r.id
                    ));
                }
                let key = key_member.unwrap_or_else(|| (!in_conf(r.id), addr.clone()));
                let row = rows.entry(key).or_insert_with(|| MemberStatus {
                    id: r.id,
                    addr: addr.clone(),
                    role: None,
                    voter: false,
                    learner: false,
                    reachable: true,
                    applied_index: None,
                    match_index: None,
                    caught_up: false,
                    version: None,
                    max_log_format: None,
                    error: None,
                });
                row.id = r.id;
                row.reachable = true;
                row.role = Some(RoleName::from(r.role_kind()));
                row.applied_index = Some(r.applied_index);
                row.version = (!r.version.is_empty()).then(|| r.version.clone());
                row.max_log_format = (r.max_log_format > 0).then_some(r.max_log_format);
                row.error = (!r.error.is_empty()).then(|| r.error.clone());
            }
            Err(e) => {
                if let Some(key) = key_member {
                    if let Some(row) = rows.get_mut(&key) {
                        row.error = Some(e.clone());
                    }
                }
            }
        }
    }
    if let Some(l) = leader_reply {
        for p in &l.peers {
            if let Some(row) = rows.values_mut().find(|m| m.id == p.id) {
                row.match_index = Some(p.match_index);
                row.caught_up = p.caught_up;
            }
        }
        if let Some(row) = rows.values_mut().find(|m| m.id == l.id) {
            row.caught_up = true;
        }
    }
    ClusterStatus {
        group: group.to_string(),
        cluster_id: authority
            .filter(|a| !a.cluster_id.is_empty())
            .map(|a| a.cluster_id.clone()),
        cluster_format: authority.map(|a| a.cluster_format).filter(|f| *f != 0),
        term,
        leader,
        conf_index: authority.map_or(0, |a| a.conf_index),
        commit_index: authority.map_or(0, |a| a.commit_index),
        voters,
        learners,
        voters_outgoing,
        members: rows.into_values().collect(),
    }
}

impl ClusterClient {
    /// The group's status from every member (those this client knows and
    /// those any member's configuration names), asked concurrently; a
    /// member that does not answer within the attempt timeout is listed as
    /// unreachable.
    pub async fn cluster_status(&self) -> ClusterStatus {
        let mut addrs = self.addrs();
        let mut answers: Vec<(String, Result<NodeStatusReply, String>)> = Vec::new();
        let mut asked = std::collections::BTreeSet::new();
        // Two rounds: the known addresses, then members they name.
        for _ in 0..2 {
            let mut tasks = tokio::task::JoinSet::new();
            for addr in addrs.drain(..).filter(|a| asked.insert(a.clone())) {
                let group = self.group().to_string();
                let attempt = self.attempt_timeout;
                let dialer = self.dialer().clone();
                // Connected in the task: members that are down cost one
                // connect timeout in all, not one each.
                tasks.spawn(async move {
                    let answer = match crate::route::connect(&dialer, &addr).await {
                        Err(e) => Err(e.to_string()),
                        Ok(ch) => ask_status(&mut AdminRpc::new(ch), group, attempt).await,
                    };
                    (addr, answer)
                });
            }
            while let Some(done) = tasks.join_next().await {
                if let Ok(a) = done {
                    answers.push(a);
                }
            }
            for (_, r) in &answers {
                if let Ok(r) = r {
                    for m in r.voters.iter().chain(&r.learners).chain(&r.voters_outgoing) {
                        if !asked.contains(&m.addr) && !m.addr.is_empty() {
                            addrs.push(m.addr.clone());
                        }
                    }
                }
            }
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                break;
            }
        }
        assemble(self.group(), answers)
    }
}

async fn ask_status(
    admin: &mut AdminRpc<tonic::transport::Channel>,
    group: String,
    attempt: Duration,
) -> Result<NodeStatusReply, String> {
    let req = GroupRequest {
        group: group.clone(),
    };
    match tokio::time::timeout(attempt, admin.status(req)).await {
        Err(_) => Err(format!("no answer within {attempt:?}")),
        Ok(Err(s)) => Err(s.message().to_string()),
        Ok(Ok(r)) => r
            .into_inner()
            .groups
            .into_iter()
            .find(|g| g.group == group || group.is_empty())
            .ok_or_else(|| format!("does not host group {group:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkit_proto::pb::PeerStatus;

    fn member(id: u64) -> Member {
        Member {
            id,
            addr: format!("n{id}:1"),
        }
    }

    fn reply(id: u64, role: Role, term: u64, leader: u64) -> NodeStatusReply {
        NodeStatusReply {
            group: "kv".into(),
            id,
            addr: format!("n{id}:1"),
            role_kind: role as i32,
            term,
            leader_id: leader,
            leader_addr: if leader == 0 {
                String::new()
            } else {
                format!("n{leader}:1")
            },
            applied_index: 10 * id,
            commit_index: 50,
            conf_index: 3,
            voters: vec![member(1), member(2), member(3)],
            version: "0.1.0".into(),
            max_log_format: 2,
            ..Default::default()
        }
    }

    fn peer(id: u64, matched: u64, caught_up: bool) -> PeerStatus {
        PeerStatus {
            id,
            addr: format!("n{id}:1"),
            voter: true,
            match_index: matched,
            caught_up,
            ..Default::default()
        }
    }

    #[test]
    fn a_member_that_does_not_answer_is_listed_as_unreachable() {
        let mut leader = reply(1, Role::Leader, 4, 1);
        leader.peers = vec![peer(1, 50, true), peer(2, 50, true), peer(3, 12, false)];
        let s = assemble(
            "kv",
            vec![
                ("n1:1".into(), Ok(leader)),
                ("n2:1".into(), Ok(reply(2, Role::Follower, 4, 1))),
                ("n3:1".into(), Err("connection refused".into())),
            ],
        );
        assert_eq!(s.leader.as_ref().map(|l| l.id), Some(1));
        assert_eq!(s.members.len(), 3);
        let n3 = s.members.iter().find(|m| m.id == 3).unwrap();
        assert!(!n3.reachable);
        assert_eq!(n3.role, None);
        assert_eq!(n3.error.as_deref(), Some("connection refused"));
        assert_eq!(n3.match_index, Some(12), "the leader's view of it");
        assert!(!n3.caught_up);
        let n2 = s.members.iter().find(|m| m.id == 2).unwrap();
        assert!(n2.reachable && n2.caught_up && n2.voter);
        assert_eq!(n2.role, Some(RoleName::Follower));
        assert_eq!(n2.version.as_deref(), Some("0.1.0"));
        assert!(s.members.iter().find(|m| m.id == 1).unwrap().caught_up);
    }

    #[test]
    fn without_a_leader_nobody_is_caught_up_and_the_newest_configuration_counts() {
        let mut old = reply(2, Role::Candidate, 5, 0);
        old.conf_index = 2;
        old.voters = vec![member(1), member(2)];
        let newer = reply(3, Role::Follower, 5, 0);
        let s = assemble(
            "kv",
            vec![
                ("n1:1".into(), Err("no answer within 1s".into())),
                ("n2:1".into(), Ok(old)),
                ("n3:1".into(), Ok(newer)),
            ],
        );
        assert_eq!(s.leader, None);
        assert_eq!(s.term, 5);
        assert_eq!(s.conf_index, 3);
        assert_eq!(s.voters.len(), 3);
        assert!(s.members.iter().all(|m| !m.caught_up));
        assert!(s.members.iter().all(|m| m.match_index.is_none()));
    }

    #[test]
    fn a_joint_configuration_lists_incoming_and_outgoing_voters_and_others_last() {
        let mut leader = reply(1, Role::Leader, 7, 1);
        leader.voters = vec![member(1), member(4)];
        leader.voters_outgoing = vec![member(1), member(2), member(3)];
        leader.learners = vec![member(5)];
        let spare = reply(9, Role::Uninitialized, 0, 0);
        let s = assemble(
            "kv",
            vec![("n1:1".into(), Ok(leader)), ("n9:1".into(), Ok(spare))],
        );
        let ids: Vec<u64> = s.members.iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            vec![1, 2, 3, 4, 5, 9],
            "members by address, then others"
        );
        assert!(
            s.members.iter().find(|m| m.id == 2).unwrap().voter,
            "outgoing voters vote"
        );
        assert!(s.members.iter().find(|m| m.id == 5).unwrap().learner);
        let spare = s.members.iter().find(|m| m.id == 9).unwrap();
        assert!(!spare.voter && !spare.learner && spare.reachable);
        assert_eq!(spare.role, Some(RoleName::Uninitialized));
        assert_eq!(s.voters_outgoing.len(), 3);
    }

    #[test]
    fn a_new_replica_at_a_members_address_does_not_take_the_members_place() {
        let mut leader = reply(1, Role::Leader, 4, 1);
        leader.peers = vec![peer(1, 50, true), peer(2, 50, true), peer(3, 30, false)];
        // n3 lost its disk and came back empty, as raft id 7, at n3's address.
        let mut fresh = reply(7, Role::Uninitialized, 0, 0);
        fresh.voters.clear();
        let s = assemble(
            "kv",
            vec![
                ("n1:1".into(), Ok(leader)),
                ("n2:1".into(), Ok(reply(2, Role::Follower, 4, 1))),
                ("n3:1".into(), Ok(fresh)),
            ],
        );
        let ids: Vec<u64> = s.voters.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        let old = s
            .members
            .iter()
            .find(|m| m.id == 3)
            .expect("the member stays listed");
        assert!(old.voter && !old.reachable && !old.caught_up);
        assert_eq!(old.match_index, Some(30));
        assert!(old
            .error
            .as_deref()
            .unwrap_or("")
            .contains("0000000000000007"));
        let new = s
            .members
            .iter()
            .find(|m| m.id == 7)
            .expect("the new replica has its own row");
        assert!(!new.voter && !new.learner && new.reachable);
        assert_eq!(new.addr, "n3:1");
    }
}
