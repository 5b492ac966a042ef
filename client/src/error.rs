//! What a client call fails with, and whether it may be sent again.

use raftkit_proto::RaftError;

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A node answered with an engine error.
    #[error("{0}")]
    Raft(RaftError),
    /// The call failed in transport or with a non-RaftKit status; for a
    /// write the outcome is unknown.
    #[error("{addr}: {message}")]
    Rpc {
        addr: String,
        code: tonic::Code,
        message: String,
    },
    /// No member could be reached or none would take the request in time.
    #[error("{0}")]
    Unavailable(String),
    /// Every attempt was turned away before the request could be proposed
    /// (no connection, not the leader, a transfer, overload): certainly not
    /// applied.
    #[error("{0}")]
    Refused(String),
    /// The caller's input is wrong.
    #[error("{0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// Whether a write that failed this way was certainly not applied.
    pub fn is_definitely_not_applied(&self) -> bool {
        match self {
            ClientError::Raft(e) => e.is_definitely_not_applied(),
            ClientError::InvalidArgument(_) | ClientError::Refused(_) => true,
            // Only "no such group here" uses this code: it reached no group.
            ClientError::Rpc {
                code: tonic::Code::NotFound,
                ..
            } => true,
            ClientError::Unavailable(_) | ClientError::Rpc { .. } => false,
        }
    }
}

impl ClientError {
    /// Which of the two classes every error falls in.
    pub fn outcome(&self) -> Outcome {
        if self.is_definitely_not_applied() {
            Outcome::NotApplied
        } else {
            Outcome::Unknown
        }
    }
}

/// What the caller may conclude from a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Refused before it was proposed: certainly not applied.
    NotApplied,
    /// It may have been applied (a write through the same session may be
    /// retried safely: it is applied at most once).
    Unknown,
}

impl Outcome {
    /// The name in machine-readable output: `not_applied` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::NotApplied => "not_applied",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Whether a call may be sent again after an error of unknown outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Reads and other idempotent calls.
    Idempotent,
    /// Writes: resent only when the error proves they were not applied.
    NotIdempotent,
}
