//! The admin service: status of the groups hosted by this process (the
//! gRPC twin of `/raft_stat`, used by `raftkit status`).

use tonic::{Request, Response, Status};

use std::time::Duration;

use super::{require_leader, to_status};
use crate::error::RaftError;
use crate::membership::{ChangeOptions, Membership, PeerRef};
use crate::node::Node;
use crate::node::NodeStatus;
use crate::node_manager::NodeManager;
use crate::pb::admin_server::Admin;
use crate::pb::{
    BootstrapReply, ChangePeersRequest, ConfigurationReply, DigestReply, GroupDigest, GroupRequest,
    IdentityReply, Member, MembershipRequest, NodeStatusReply, PeerStatus, SnapshotReply,
    SnapshotResult, StatusReply, TransferReply, TransferRequest,
};
use crate::state_machine::Configuration;

pub struct AdminService {
    manager: NodeManager,
}

impl AdminService {
    /// The named group's replica, or every hosted one when `group` is empty.
    fn nodes(&self, group: &str) -> Result<Vec<crate::node::Node>, Status> {
        if group.is_empty() {
            return Ok(self.manager.all());
        }
        let node = self
            .manager
            .get(group)
            .ok_or_else(|| Status::not_found(format!("no group named {group:?} is hosted here")))?;
        Ok(vec![node])
    }

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
                    inflight: p.inflight as u64,
                    replication: replication_state(&p.state) as i32,
                    caught_up: p.caught_up,
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
            conf_index: s.conf_index,
            pending_proposals: s.pending_proposals as u64,
            role_kind: role_kind(s.role) as i32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            max_log_format: crate::storage::LOG_FORMAT,
            catchup_margin: s.catchup_margin,
            cluster_id: super::cluster_hex(s.cluster_id),
            cluster_format: s.cluster_format,
            max_cluster_format: s.max_cluster_format,
        }
    }
}

fn role_kind(r: crate::node::Role) -> crate::pb::Role {
    use crate::node::Role as R;
    use crate::pb::Role as P;
    match r {
        R::Follower => P::Follower,
        R::PreCandidate => P::PreCandidate,
        R::Candidate => P::Candidate,
        R::Leader => P::Leader,
        R::Uninitialized => P::Uninitialized,
        R::Error => P::Error,
        R::Shutdown => P::Shutdown,
    }
}

fn replication_state(s: &str) -> crate::pb::ReplicationState {
    use crate::pb::ReplicationState as P;
    match s {
        "probe" => P::Probe,
        "replicate" => P::Replicate,
        "snapshot" => P::Snapshot,
        _ => P::Unspecified,
    }
}

/// A peer named by address or 16-hex-digit id; a bad one is an invalid
/// argument.
fn parse_peer(peer: &str) -> Result<PeerRef, Status> {
    peer.parse()
        .map_err(|e: String| to_status(RaftError::InvalidArgument(e)))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<GroupRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let group = request.into_inner().group;
        let nodes = self.nodes(&group)?;
        let mut groups = Vec::with_capacity(nodes.len());
        for n in nodes {
            groups.push(n.status().await.map_err(to_status)?.into());
        }
        Ok(Response::new(StatusReply { groups }))
    }

    async fn digest(
        &self,
        request: Request<GroupRequest>,
    ) -> Result<Response<DigestReply>, Status> {
        let group = request.into_inner().group;
        let nodes = self.nodes(&group)?;
        let mut groups = Vec::with_capacity(nodes.len());
        for n in nodes {
            let d = n.state_digest().await.map_err(to_status)?;
            groups.push(GroupDigest {
                group: n.group().to_string(),
                applied_index: d.applied_index,
                digest: d.digest.unwrap_or(0),
                has_digest: d.digest.is_some(),
            });
        }
        Ok(Response::new(DigestReply { groups }))
    }

    async fn snapshot(
        &self,
        request: Request<GroupRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        let group = request.into_inner().group;
        let nodes = self.nodes(&group)?;
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

    async fn identity(
        &self,
        request: Request<GroupRequest>,
    ) -> Result<Response<IdentityReply>, Status> {
        let node = self.node(&request.into_inner().group)?;
        let ident = node.identity().await.map_err(to_status)?;
        let json = serde_json::to_vec(&ident).map_err(|e| Status::internal(e.to_string()))?;
        let conf = &ident.conf;
        let me = ident.id;
        let listed = conf
            .voters
            .iter()
            .chain(&conf.learners)
            .chain(&conf.voters_outgoing)
            .any(|p| p.id == me);
        let state = if listed {
            crate::pb::ReplicaState::Member
        } else if ident.initialized {
            crate::pb::ReplicaState::Removed
        } else if ident.has_data {
            crate::pb::ReplicaState::Uninitialized
        } else {
            crate::pb::ReplicaState::Empty
        };
        Ok(Response::new(IdentityReply {
            json: json.into(),
            group: ident.group.clone(),
            id: ident.id,
            addr: ident.addr.clone(),
            state: state as i32,
            conf_index: ident.conf_index,
            voters: members(&conf.voters),
            learners: members(&conf.learners),
            voters_outgoing: members(&conf.voters_outgoing),
            version: env!("CARGO_PKG_VERSION").to_string(),
            max_log_format: crate::storage::LOG_FORMAT,
            cluster_id: super::cluster_hex(ident.cluster_id),
            max_cluster_format: ident.max_cluster_format,
        }))
    }

    async fn bootstrap(
        &self,
        request: Request<GroupRequest>,
    ) -> Result<Response<BootstrapReply>, Status> {
        let node = self.node(&request.into_inner().group)?;
        node.bootstrap(vec![node.peer_id()])
            .await
            .map_err(to_status)?;
        Ok(Response::new(BootstrapReply {}))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group, peer = %request.get_ref().peer))]
    async fn add_learner(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<ConfigurationReply>, Status> {
        let r = request.into_inner();
        let node = self.node(&r.group)?;
        require_leader(&node)?;
        let m = node
            .add_learner(&r.peer, r.expected_conf_index)
            .await
            .map_err(to_status)?;
        Ok(Response::new(configuration_reply(&m)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group, peer = %request.get_ref().peer))]
    async fn promote(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<ConfigurationReply>, Status> {
        let r = request.into_inner();
        let node = self.node(&r.group)?;
        require_leader(&node)?;
        let who = parse_peer(&r.peer)?;
        let m = node
            .promote(&who, r.expected_conf_index)
            .await
            .map_err(to_status)?;
        Ok(Response::new(configuration_reply(&m)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group, peer = %request.get_ref().peer))]
    async fn add_peer(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<ConfigurationReply>, Status> {
        let r = request.into_inner();
        let node = self.node(&r.group)?;
        require_leader(&node)?;
        let opts = change_options(r.expected_conf_index, r.catch_up_timeout_ms);
        let m = node.add_peer(&r.peer, opts).await.map_err(to_status)?;
        Ok(Response::new(configuration_reply(&m)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group, peer = %request.get_ref().peer))]
    async fn remove_peer(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<ConfigurationReply>, Status> {
        let r = request.into_inner();
        let node = self.node(&r.group)?;
        require_leader(&node)?;
        let who = parse_peer(&r.peer)?;
        let m = node
            .remove_peer(&who, r.expected_conf_index)
            .await
            .map_err(to_status)?;
        Ok(Response::new(configuration_reply(&m)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group))]
    async fn change_peers(
        &self,
        request: Request<ChangePeersRequest>,
    ) -> Result<Response<ConfigurationReply>, Status> {
        let r = request.into_inner();
        let node = self.node(&r.group)?;
        require_leader(&node)?;
        let opts = change_options(r.expected_conf_index, r.catch_up_timeout_ms);
        let m = node.change_peers(&r.peers, opts).await.map_err(to_status)?;
        Ok(Response::new(configuration_reply(&m)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group, target = %request.get_ref().target))]
    async fn transfer_leader(
        &self,
        request: Request<TransferRequest>,
    ) -> Result<Response<TransferReply>, Status> {
        let r = request.into_inner();
        let node = self.node(&r.group)?;
        require_leader(&node)?;
        let target = match r.target.as_str() {
            "" | "any" => None,
            t => Some(
                t.parse::<PeerRef>()
                    .map_err(|e| to_status(RaftError::InvalidArgument(e)))?,
            ),
        };
        let leader = node
            .transfer_leadership(target.as_ref())
            .await
            .map_err(to_status)?;
        Ok(Response::new(TransferReply {
            leader: Some(Member {
                id: leader.id,
                addr: leader.addr,
            }),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.get_ref().group))]
    async fn reset_peers(
        &self,
        request: Request<ChangePeersRequest>,
    ) -> Result<Response<ConfigurationReply>, Status> {
        let r = request.into_inner();
        let node = self.node(&r.group)?;
        let keep = r
            .peers
            .iter()
            .map(|p| p.parse::<PeerRef>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| to_status(RaftError::InvalidArgument(e)))?;
        tracing::warn!(peers = ?r.peers, "forced reset of the configuration requested");
        let m = node.reset_peers(&keep).await.map_err(to_status)?;
        Ok(Response::new(configuration_reply(&m)))
    }
}

impl AdminService {
    /// The node of `group`; an empty name picks the only group hosted here.
    fn node(&self, group: &str) -> Result<Node, Status> {
        if group.is_empty() {
            let all = self.manager.all();
            return match all.len() {
                1 => Ok(all
                    .into_iter()
                    .next()
                    .ok_or_else(|| Status::internal("group list changed"))?),
                0 => Err(Status::not_found("no group is hosted here")),
                _ => Err(Status::invalid_argument(format!(
                    "several groups are hosted here ({}); name one with --group",
                    all.iter()
                        .map(|n| n.group().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            };
        }
        self.manager
            .get(group)
            .ok_or_else(|| Status::not_found(format!("no group named {group:?} is hosted here")))
    }
}

fn change_options(expected_conf_index: Option<u64>, catch_up_timeout_ms: u64) -> ChangeOptions {
    let mut o = ChangeOptions {
        expected_conf_index,
        ..Default::default()
    };
    if catch_up_timeout_ms > 0 {
        o.catch_up_timeout = Duration::from_millis(catch_up_timeout_ms);
    }
    o
}

fn configuration_reply(m: &Membership) -> ConfigurationReply {
    ConfigurationReply {
        voters: members(&m.conf.voters),
        learners: members(&m.conf.learners),
        voters_outgoing: members(&m.conf.voters_outgoing),
        conf_index: m.conf_index,
    }
}
