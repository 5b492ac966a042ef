//! The admin service: status of the groups hosted by this process (the
//! gRPC twin of `/raft_stat`, used by `raftkit status`).

use tonic::{Request, Response, Status};

use super::to_status;
use crate::node::NodeStatus;
use crate::node_manager::NodeManager;
use crate::pb::admin_server::Admin;
use crate::pb::{
    GroupRequest, Member, NodeStatusReply, PeerStatus, SnapshotReply, SnapshotResult, StatusReply,
};
use crate::state_machine::Configuration;

pub struct AdminService {
    manager: NodeManager,
}

impl AdminService {
    pub fn new(manager: NodeManager) -> Self {
        AdminService { manager }
    }
}

fn members(c: &[crate::error::PeerId]) -> Vec<Member> {
    c.iter()
        .map(|p| Member {
            id: p.id,
            addr: p.addr.clone(),
        })
        .collect()
}

impl From<NodeStatus> for NodeStatusReply {
    fn from(s: NodeStatus) -> Self {
        let Configuration {
            voters,
            learners,
            voters_outgoing,
        } = &s.conf;
        NodeStatusReply {
            group: s.group.clone(),
            id: s.peer.id,
            addr: s.peer.addr.clone(),
            role: s.role.as_str().to_string(),
            term: s.term,
            leader_id: s.leader.as_ref().map_or(0, |l| l.id),
            leader_addr: s
                .leader
                .as_ref()
                .map(|l| l.addr.clone())
                .unwrap_or_default(),
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            first_log_index: s.first_log_index,
            last_log_index: s.last_log_index,
            peers: s
                .peers
                .iter()
                .map(|p| PeerStatus {
                    id: p.peer.id,
                    addr: p.peer.addr.clone(),
                    voter: p.voter,
                    match_index: p.match_index,
                    next_index: p.next_index,
                    state: p.state.clone(),
                    recent_active: p.recent_active,
                })
                .collect(),
            snapshot_index: s.snapshot_index,
            snapshot_term: s.snapshot_term,
            error: s.error.clone().unwrap_or_default(),
            disk_index: s.disk_index,
            voters: members(voters),
            learners: members(learners),
            voters_outgoing: members(voters_outgoing),
            vote: s.vote,
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<GroupRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let group = request.into_inner().group;
        let nodes = if group.is_empty() {
            self.manager.all()
        } else {
            vec![self.manager.get(&group).ok_or_else(|| {
                Status::not_found(format!("no group named {group:?} is hosted here"))
            })?]
        };
        let mut groups = Vec::with_capacity(nodes.len());
        for n in nodes {
            groups.push(n.status().await.map_err(to_status)?.into());
        }
        Ok(Response::new(StatusReply { groups }))
    }

    async fn snapshot(
        &self,
        request: Request<GroupRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        let group = request.into_inner().group;
        let nodes = if group.is_empty() {
            self.manager.all()
        } else {
            vec![self.manager.get(&group).ok_or_else(|| {
                Status::not_found(format!("no group named {group:?} is hosted here"))
            })?]
        };
        let mut groups = Vec::with_capacity(nodes.len());
        for n in nodes {
            groups.push(match n.snapshot().await {
                Ok(m) => SnapshotResult {
                    group: n.group().to_string(),
                    index: m.index,
                    term: m.term,
                    error: String::new(),
                },
                Err(e) => SnapshotResult {
                    group: n.group().to_string(),
                    index: 0,
                    term: 0,
                    error: e.to_string(),
                },
            });
        }
        Ok(Response::new(SnapshotReply { groups }))
    }
}
