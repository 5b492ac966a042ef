//! [`RaftError`]: the status every request to a node (and every `done` in
//! the engine) gets, and [`PeerId`], a replica's id and address.
//!
//! `RaftError` is `Clone` because one failure (a step-down, a shutdown) is
//! handed to many waiting closures.

use std::fmt;

/// A replica address: the raft id plus the `host:port` other members dial.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PeerId {
    pub id: u64,
    pub addr: String,
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (id {:016x})", self.addr, self.id)
    }
}

/// Why a task, read or admin call did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// This node is not the leader. `leader` is the current leader when known.
    #[error("not leader{}", match .leader { Some(l) => format!("; leader is {}", l.addr), None => "; leader unknown".to_string() })]
    NotLeader { leader: Option<PeerId> },
    /// The task's `expected_term` is not the leader's current term.
    #[error("term mismatch: the task expected term {expected}, the leader is at term {current}")]
    TermMismatch { expected: u64, current: u64 },
    /// The leader lost leadership before the entry was applied. The entry may
    /// still be committed by the next leader: the outcome is unknown.
    #[error("leader stepped down before the entry was applied; it may or may not be committed")]
    LeaderSteppedDown,
    /// The node is stopping; nothing more will be applied here.
    #[error("node is shutting down")]
    ShuttingDown,
    /// A leadership transfer is in progress; retry shortly.
    #[error("leadership transfer in progress; retry shortly")]
    Transferring,
    /// A deadline passed before the operation completed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Too much work is queued; retry later.
    #[error("node is overloaded: {0}")]
    Busy(String),
    /// The request itself is wrong; retrying will not help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The storage failed; the node stops serving this group.
    #[error("storage error: {0}")]
    Storage(String),
    /// The state machine rejected or failed the operation.
    #[error("state machine error: {0}")]
    StateMachine(String),
    /// The node hit an unrecoverable error earlier and stopped.
    #[error("node is stopped after an error: {0}")]
    Stopped(String),
    /// A conditional membership change found a different configuration.
    #[error(
        "the configuration changed: expected configuration index {expected}, it is now {current}"
    )]
    ConfigurationChanged { expected: u64, current: u64 },
    /// Another replica could not be reached.
    #[error("peer unreachable: {0}")]
    PeerUnreachable(String),
    /// A learner asked to become a voter has not caught up with the leader.
    #[error("not caught up: {0}")]
    NotCaughtUp(String),
    /// Another member of the configuration, under another raft id, has the
    /// address of the replica being added (etcd's duplicate peer URL): it
    /// must be removed first.
    #[error("address in use: {0}")]
    AddressInUse(String),
    /// The client session of a write is no longer known, so whether an
    /// earlier attempt of this write was applied cannot be told.
    #[error("client session expired: {0}")]
    SessionExpired(String),
}

impl RaftError {
    /// Whether the same request may succeed when sent again (possibly to
    /// another member). Retrying a write after an error whose outcome is
    /// unknown (`LeaderSteppedDown`, `Timeout`) can apply it twice unless the
    /// write is idempotent.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RaftError::NotLeader { .. }
                | RaftError::LeaderSteppedDown
                | RaftError::ShuttingDown
                | RaftError::Transferring
                | RaftError::Timeout(_)
                | RaftError::Busy(_)
        )
    }

    /// Whether a write that failed with this error was certainly not applied.
    pub fn is_definitely_not_applied(&self) -> bool {
        matches!(
            self,
            RaftError::NotLeader { .. }
                | RaftError::TermMismatch { .. }
                | RaftError::Transferring
                | RaftError::Busy(_)
                | RaftError::InvalidArgument(_)
                | RaftError::ConfigurationChanged { .. }
                | RaftError::PeerUnreachable(_)
                | RaftError::NotCaughtUp(_)
                | RaftError::AddressInUse(_)
        )
    }

    /// A short stable name for metrics and machine-readable output.
    pub fn kind(&self) -> &'static str {
        match self {
            RaftError::NotLeader { .. } => "not_leader",
            RaftError::TermMismatch { .. } => "term_mismatch",
            RaftError::LeaderSteppedDown => "leader_stepped_down",
            RaftError::ShuttingDown => "shutting_down",
            RaftError::Transferring => "transferring",
            RaftError::Timeout(_) => "timeout",
            RaftError::Busy(_) => "busy",
            RaftError::InvalidArgument(_) => "invalid_argument",
            RaftError::Storage(_) => "storage",
            RaftError::StateMachine(_) => "state_machine",
            RaftError::Stopped(_) => "stopped",
            RaftError::ConfigurationChanged { .. } => "configuration_changed",
            RaftError::PeerUnreachable(_) => "peer_unreachable",
            RaftError::SessionExpired(_) => "session_expired",
            RaftError::NotCaughtUp(_) => "not_caught_up",
            RaftError::AddressInUse(_) => "address_in_use",
        }
    }
}
