//! [`AdminClient`]: the calls an operator drives a group with, and nothing
//! else: the typed cluster status, a replica's identity, and the
//! membership and leadership steps (each conditional on the configuration
//! index it was planned from, and done already when repeated after it took
//! effect). It routes through a [`ClusterClient`] (leader discovery,
//! redirects, retries within the deadline).

use std::time::Duration;

use raftkit_proto::pb::{ConfigurationReply, Member, SnapshotResult};

use crate::*;

/// Admin access to one group of a cluster.
pub struct AdminClient {
    cluster: ClusterClient,
}

impl AdminClient {
    /// `addrs` are members' `host:port`; `timeout` bounds each call with
    /// its retries.
    pub fn new(
        addrs: Vec<String>,
        group: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(AdminClient {
            cluster: ClusterClient::new(addrs, group, timeout)?,
        })
    }

    /// Connects over mutual TLS with `tls`'s certificate (an admin
    /// certificate, `raftkit_tls::ROLE_ADMIN`, for the membership steps).
    pub fn with_tls(self, tls: Arc<raftkit_tls::Tls>) -> Self {
        AdminClient {
            cluster: self.cluster.with_tls(tls),
        }
    }

    /// The group as its members describe it (see [`ClusterStatus`]).
    pub async fn cluster_status(&self) -> ClusterStatus {
        self.cluster.cluster_status().await
    }

    /// Who the replica at `addr` is (see [`Identity`]).
    pub async fn identity(&self, addr: &str) -> Result<Identity, ClientError> {
        self.cluster.identity(addr).await
    }

    /// The empty replica at `addr` joins as a learner.
    pub async fn add_learner(
        &self,
        addr: &str,
        expected_conf_index: Option<u64>,
    ) -> Result<ConfigurationReply, ClientError> {
        self.cluster.add_learner(addr, expected_conf_index).await
    }

    /// The learner `peer` (address or 16-hex-digit id) becomes a voter once
    /// caught up ([`ErrorKind::NotCaughtUp`] before).
    pub async fn promote(
        &self,
        peer: &str,
        expected_conf_index: Option<u64>,
    ) -> Result<ConfigurationReply, ClientError> {
        self.cluster.promote(peer, expected_conf_index).await
    }

    /// Learner, wait until caught up (within `catch_up_timeout`), promote.
    pub async fn add_peer(
        &self,
        addr: &str,
        expected_conf_index: Option<u64>,
        catch_up_timeout: Duration,
    ) -> Result<ConfigurationReply, ClientError> {
        let ms = u64::try_from(catch_up_timeout.as_millis()).unwrap_or(u64::MAX);
        self.cluster.add_peer(addr, expected_conf_index, ms).await
    }

    /// Removes the member `peer` (address or 16-hex-digit id).
    pub async fn remove_peer(
        &self,
        peer: &str,
        expected_conf_index: Option<u64>,
    ) -> Result<ConfigurationReply, ClientError> {
        self.cluster.remove_peer(peer, expected_conf_index).await
    }

    /// Moves leadership to `target` (address or id), or with `None` to the
    /// most caught-up voter; returns the new leader.
    pub async fn transfer_leader(&self, target: Option<&str>) -> Result<Member, ClientError> {
        self.cluster.transfer_leader(target.unwrap_or("any")).await
    }

    /// Takes a snapshot on the member at `addr` now.
    pub async fn snapshot(&self, addr: &str) -> Result<Vec<SnapshotResult>, ClientError> {
        self.cluster.member_snapshot(addr).await
    }

    /// The client underneath, for the calls not wrapped here.
    pub fn cluster(&self) -> &ClusterClient {
        &self.cluster
    }
}
