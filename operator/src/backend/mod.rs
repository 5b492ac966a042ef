//! The workload seam: what the reconciler needs from wherever pods run.
//! `local` runs pods as `raftkit-node` processes on this machine, or as
//! containers on a Docker network (`docker`), with StatefulSet-like names,
//! addresses and persistent data directories.
//! The Kubernetes backend (StatefulSet, Services, PDB, ConfigMap,
//! NetworkPolicy, Secrets through kube-rs) implements the same trait. The
//! local backends have no network to guard and make no NetworkPolicy
//! (`spec.networkPolicy` is ignored there).

pub mod docker;
pub mod kube;
pub mod local;

use std::future::Future;

use k8s_openapi::api::core::v1::Secret;

use crate::crd::{RaftCluster, RaftClusterStatus};
use crate::plan::PodPhase;
use crate::Error;

/// The pods' controller and its pods, as the backend sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadState {
    /// Pods the controller keeps.
    pub replicas: u32,
    /// The revision new pods start from.
    pub revision: String,
    /// One per ordinal below `max(replicas, highest existing pod + 1)`.
    pub pods: Vec<PodState>,
    /// Why objects the controller's apply keeps (the NetworkPolicy) must
    /// be applied again, if they must: missing, or from another spec.
    pub drifted: Option<String>,
}

/// One pod, as the backend sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    pub ordinal: u32,
    pub name: String,
    /// Where its node is reached (`host:port`), stable across restarts.
    pub addr: String,
    pub phase: PodPhase,
    /// Its node process or container runs (its admin API may answer).
    pub running: bool,
    pub revision: Option<String>,
    /// Its readiness probe (`/readyz`) passes.
    pub ready: bool,
}

/// Normal or Warning, as Kubernetes Events have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Where pods run. Every call is idempotent: repeating it after it took
/// effect changes nothing.
pub trait Workload: Send + Sync {
    /// The controller and pods of `rc`; `None` when there is no controller.
    fn observe(
        &self,
        rc: &RaftCluster,
    ) -> impl Future<Output = Result<Option<WorkloadState>, Error>> + Send;

    /// Creates or updates the controller: `replicas` pods, new pods from
    /// `revision`. Pods that exist are not restarted.
    fn apply(
        &self,
        rc: &RaftCluster,
        replicas: u32,
        revision: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Deletes the pod; the controller recreates it from its revision.
    fn restart_pod(
        &self,
        rc: &RaftCluster,
        pod: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Deletes the pod and its volume; it comes back empty.
    fn wipe_pod(
        &self,
        rc: &RaftCluster,
        pod: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Lowers the controller's replicas (after the members above were
    /// removed), deleting their volumes when asked.
    fn shrink(
        &self,
        rc: &RaftCluster,
        replicas: u32,
        delete_volumes: bool,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Pod `ordinal`'s address (`host:port`), stable across its restarts,
    /// whether or not the pod exists yet: what its node advertises, so
    /// what its certificate must name.
    fn pod_addr(&self, rc: &RaftCluster, ordinal: u32) -> String;

    /// How long a changed Secret may take to reach every pod that mounts
    /// it, and its node to reload the files: the wait between the steps of
    /// a CA rotation (`tls::CaSet::advance`).
    fn secret_propagation(&self) -> std::time::Duration;

    /// The Secret `name` of `rc`'s namespace; `None` when there is none.
    /// Only `metadata.name` and `data` are needed.
    fn read_secret(
        &self,
        rc: &RaftCluster,
        name: &str,
    ) -> impl Future<Output = Result<Option<Secret>, Error>> + Send;

    /// Creates or replaces a Secret of `rc` (keys it no longer has are
    /// removed). A pod that mounts it sees each file change at once, whole
    /// (never half written).
    fn apply_secret(
        &self,
        rc: &RaftCluster,
        secret: &Secret,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stores the resource's status.
    fn write_status(
        &self,
        rc: &RaftCluster,
        status: &RaftClusterStatus,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Records an Event on the resource.
    fn event(
        &self,
        rc: &RaftCluster,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}
