//! Admin calls: membership, leadership, bootstrap, and per-member
//! snapshot, status and digest.

use std::future::Future;

use tonic::transport::Channel;
use tonic::Status;

use raftkit_proto::pb::admin_client::AdminClient;
use raftkit_proto::pb::{
    ChangePeersRequest, ConfigurationReply, GroupDigest, GroupRequest, MembershipRequest,
    NodeStatusReply, ReplicaState, TransferRequest,
};
use raftkit_proto::status::from_status;

use crate::pin::never_sent;

use crate::*;

impl ClusterClient {
    /// Adds the replica at `addr` (learner, catch up, promote) through the leader.
    pub async fn add_peer(
        &self,
        addr: &str,
        expected_conf_index: Option<u64>,
        catch_up_timeout_ms: u64,
    ) -> Result<ConfigurationReply, ClientError> {
        self.call(Retry::NotIdempotent, |conn, group| {
            let req = MembershipRequest {
                group,
                peer: addr.to_string(),
                expected_conf_index,
                catch_up_timeout_ms,
            };
            async move {
                AdminClient::new(conn.channel())
                    .add_peer(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Adds the empty replica at `addr` as a learner, through the leader.
    /// Succeeds with the current configuration when it already is a member
    /// (a retry after the step took effect); refused with the kind
    /// `configuration_changed` when `expected_conf_index` no longer holds.
    pub async fn add_learner(
        &self,
        addr: &str,
        expected_conf_index: Option<u64>,
    ) -> Result<ConfigurationReply, ClientError> {
        self.membership_step(addr, expected_conf_index, Step::AddLearner)
            .await
    }

    /// Makes the learner `peer` (host:port or 16-hex-digit id) a voter once
    /// it has caught up (else the kind `not_caught_up`). Succeeds with the
    /// current configuration when it already is a voter.
    pub async fn promote(
        &self,
        peer: &str,
        expected_conf_index: Option<u64>,
    ) -> Result<ConfigurationReply, ClientError> {
        self.membership_step(peer, expected_conf_index, Step::Promote)
            .await
    }

    async fn membership_step(
        &self,
        peer: &str,
        expected_conf_index: Option<u64>,
        step: Step,
    ) -> Result<ConfigurationReply, ClientError> {
        self.call(Retry::NotIdempotent, |conn, group| {
            let req = MembershipRequest {
                group,
                peer: peer.to_string(),
                expected_conf_index,
                catch_up_timeout_ms: 0,
            };
            async move {
                let mut admin = AdminClient::new(conn.channel());
                match step {
                    Step::AddLearner => admin.add_learner(req).await,
                    Step::Promote => admin.promote(req).await,
                    Step::Remove => admin.remove_peer(req).await,
                }
                .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Removes a member (address or 16-hex-digit id) through the leader.
    pub async fn remove_peer(
        &self,
        peer: &str,
        expected_conf_index: Option<u64>,
    ) -> Result<ConfigurationReply, ClientError> {
        self.membership_step(peer, expected_conf_index, Step::Remove)
            .await
    }

    /// Makes the voters exactly `peers` (joint consensus) through the leader.
    pub async fn change_peers(
        &self,
        peers: &[String],
        expected_conf_index: Option<u64>,
        catch_up_timeout_ms: u64,
    ) -> Result<ConfigurationReply, ClientError> {
        self.call(Retry::NotIdempotent, |conn, group| {
            let req = ChangePeersRequest {
                group,
                peers: peers.to_vec(),
                expected_conf_index,
                catch_up_timeout_ms,
            };
            async move {
                AdminClient::new(conn.channel())
                    .change_peers(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Moves leadership to `target` (address or id), or the most caught-up
    /// voter with `"any"`; returns the new leader.
    pub async fn transfer_leader(
        &self,
        target: &str,
    ) -> Result<raftkit_proto::pb::Member, ClientError> {
        self.call(Retry::NotIdempotent, |conn, group| {
            let req = TransferRequest {
                group,
                target: target.to_string(),
            };
            async move {
                AdminClient::new(conn.channel())
                    .transfer_leader(req)
                    .await
                    .map(|r| r.into_inner().leader.unwrap_or_default())
            }
        })
        .await
    }

    /// Forced local reconfiguration of member `addr` (quorum loss only).
    pub async fn reset_peers(
        &self,
        addr: &str,
        peers: &[String],
    ) -> Result<ConfigurationReply, ClientError> {
        let req = ChangePeersRequest {
            group: self.group.clone(),
            peers: peers.to_vec(),
            expected_conf_index: None,
            catch_up_timeout_ms: 0,
        };
        self.single(addr, Check::Cluster, |mut admin| {
            let req = req.clone();
            async move { admin.reset_peers(req).await }
        })
        .await
    }

    /// Makes the empty member `addr` a one-member group.
    pub async fn bootstrap(&self, addr: &str) -> Result<(), ClientError> {
        let req = GroupRequest {
            group: self.group.clone(),
        };
        self.single(addr, Check::Cluster, |mut admin| {
            let req = req.clone();
            async move { admin.bootstrap(req).await }
        })
        .await
        .map(|_| ())
    }

    /// One admin call to the member at `addr` (no other member is asked).
    /// A cached connection found ended is replaced once (the call was not
    /// sent on it); with [`Check::Cluster`] the member must belong to this
    /// client's cluster.
    pub(crate) async fn single<T, F, Fut>(
        &self,
        addr: &str,
        check: Check,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut replaced = false;
        loop {
            let admin = match check {
                Check::Cluster => self.admin(addr).await?,
                Check::None => self.admin_unchecked(addr).await?,
            };
            match tokio::time::timeout_at(deadline, call(admin)).await {
                Ok(Err(s)) if !replaced && never_sent(&s) => {
                    self.forget(addr);
                    replaced = true;
                }
                answer => return self.single_answer(addr, answer),
            }
        }
    }

    fn single_answer<T>(
        &self,
        addr: &str,
        answer: Result<Result<tonic::Response<T>, Status>, tokio::time::error::Elapsed>,
    ) -> Result<T, ClientError> {
        match answer {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => {
                self.forget(addr);
                Err(match from_status(&s) {
                    Some(e) => ClientError::Raft(e),
                    None => ClientError::Rpc {
                        addr: addr.to_string(),
                        code: s.code(),
                        message: s.message().to_string(),
                    },
                })
            }
            Err(_) => {
                self.forget(addr);
                Err(ClientError::Unavailable(format!(
                    "{addr}: no answer within {:?}",
                    self.timeout
                )))
            }
        }
    }

    /// Takes a snapshot now on member `addr` (this client's group, or every
    /// group when the client's group is empty).
    pub async fn member_snapshot(
        &self,
        addr: &str,
    ) -> Result<Vec<raftkit_proto::pb::SnapshotResult>, ClientError> {
        let req = GroupRequest {
            group: self.group.clone(),
        };
        self.single(addr, Check::None, |mut admin| {
            let req = req.clone();
            async move { admin.snapshot(req).await }
        })
        .await
        .map(|r| r.groups)
    }

    /// The status of this client's group (every group when the client's
    /// group is empty) on one member.
    pub async fn member_status(&self, addr: &str) -> Result<Vec<NodeStatusReply>, ClientError> {
        let req = GroupRequest {
            group: self.group.clone(),
        };
        self.single(addr, Check::None, |mut admin| {
            let req = req.clone();
            async move { admin.status(req).await }
        })
        .await
        .map(|r| r.groups)
    }

    /// The state-machine digest of this client's group on one member, with
    /// the applied index it was taken at (compare members at equal indexes).
    pub async fn member_digest(&self, addr: &str) -> Result<Vec<GroupDigest>, ClientError> {
        let req = GroupRequest {
            group: self.group.clone(),
        };
        self.single(addr, Check::None, |mut admin| {
            let req = req.clone();
            async move { admin.digest(req).await }
        })
        .await
        .map(|r| r.groups)
    }

    /// Who the replica at `addr` is, for this client's group: its raft id,
    /// whether it is empty, waiting to be added, a member or removed, its
    /// configuration and its version. Asked before adding a replica.
    pub async fn identity(&self, addr: &str) -> Result<Identity, ClientError> {
        let req = GroupRequest {
            group: self.group().to_string(),
        };
        let r = self
            .single(addr, Check::None, |mut admin| {
                let req = req.clone();
                async move { admin.identity(req).await }
            })
            .await?;
        Ok(Identity {
            group: r.group.clone(),
            id: r.id,
            addr: r.addr.clone(),
            state: match r.state() {
                ReplicaState::Empty => IdentityState::Empty,
                ReplicaState::Uninitialized => IdentityState::Uninitialized,
                ReplicaState::Member => IdentityState::Member,
                ReplicaState::Removed => IdentityState::Removed,
                ReplicaState::Unspecified => IdentityState::Unknown,
            },
            conf_index: r.conf_index,
            voters: r.voters.iter().map(|m| m.addr.clone()).collect(),
            learners: r.learners.iter().map(|m| m.addr.clone()).collect(),
            version: (!r.version.is_empty()).then(|| r.version.clone()),
            cluster_id: (!r.cluster_id.is_empty()).then(|| r.cluster_id.clone()),
        })
    }

    /// Admin calls to the member at `addr`, once it stated this client's
    /// cluster (or none): for calls that change something.
    pub(crate) async fn admin(&self, addr: &str) -> Result<AdminClient<Channel>, ClientError> {
        let conn = self.conn(addr).await.map_err(|e| match e.foreign {
            Some(f) => ClientError::WrongCluster(f.to_string()),
            None => ClientError::Unavailable(format!("{addr}: {e}")),
        })?;
        Ok(AdminClient::new(conn.channel()))
    }

    /// Admin calls to the member at `addr`, whatever cluster it belongs
    /// to: for the calls that ask it who it is and how it is.
    pub(crate) async fn admin_unchecked(
        &self,
        addr: &str,
    ) -> Result<AdminClient<Channel>, ClientError> {
        let conn = self
            .conn_unchecked(addr)
            .await
            .map_err(|e| ClientError::Unavailable(format!("{addr}: {e}")))?;
        Ok(AdminClient::new(conn.channel()))
    }
}

/// Whether an addressed call first checks the member's cluster.
#[derive(Clone, Copy)]
pub(crate) enum Check {
    /// It changes something: the member must be of this client's cluster.
    Cluster,
    /// It asks the member who it is or how it is: any member.
    None,
}

/// The single-step membership changes.
#[derive(Clone, Copy)]
enum Step {
    AddLearner,
    Promote,
    Remove,
}

/// A replica's answer to [`ClusterClient::identity`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub group: String,
    pub id: u64,
    pub addr: String,
    pub state: IdentityState,
    pub conf_index: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub version: Option<String>,
    /// The cluster it belongs to, 16 hex digits (none: an empty replica).
    pub cluster_id: Option<String>,
}

/// Where a replica stands with respect to its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityState {
    /// A fresh data directory: no raft state at all.
    Empty,
    /// Some raft state but no configuration: waiting to be added.
    Uninitialized,
    /// A voter or learner of its configuration.
    Member,
    /// Its configuration no longer includes it.
    Removed,
    /// A node too old to say.
    Unknown,
}
