//! The RaftCluster operator.
//!
//! ```text
//!            RaftCluster (spec, status)
//!                     │
//!   observe ──► plan (pure) ──► act ──► status + Event
//!      │                          │
//!      ├── backend::Workload ◄────┤   pods: StatefulSet (kube) or
//!      │                          │         local processes (local)
//!      └── raftkit-client ◄───────┘   nodes' admin API: identity,
//!                                     cluster_status, membership steps
//! ```
//!
//! - [`crd`]: the resource's types and spec checks.
//! - [`observe`], [`plan`], [`act`], [`status`]: one reconcile pass,
//!   composed by [`controller::reconcile`].
//! - [`build`]: pure builders (pod revision, names, the node's environment
//!   from the node's settings table).
//! - [`backend`]: where pods run; [`backend::local`] runs them as processes.
//! - [`local`]: `raftkit-operator local`, the loop around the local backend.
//! - [`tls`]: the certificates the operator issues for a cluster's mutual
//!   TLS (CA, members, admin, client), their renewal and Secrets (pure);
//!   `observe` judges them, the plan's `ApplyTls` writes them.

pub mod act;
pub mod backend;
pub mod build;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod run;
pub mod status;
pub mod tls;

/// What can go wrong in a pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node's admin API refused or did not answer.
    #[error("{0}")]
    Client(#[from] raftkit_client::ClientError),
    /// The workload backend failed.
    #[error("workload: {0}")]
    Workload(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] crd::SpecError),
    /// The Kubernetes API refused or did not answer.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    pub fn client(e: raftkit_client::ClientError) -> Self {
        Error::Client(e)
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
