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
    /// The only members left belong to another cluster than the client's
    /// (an address that changed hands): nothing was sent to them, so the
    /// call was certainly not applied.
    #[error("{0}")]
    WrongCluster(String),
}

impl ClientError {
    /// Whether a write that failed this way was certainly not applied.
    pub fn is_definitely_not_applied(&self) -> bool {
        match self {
            ClientError::Raft(e) => e.is_definitely_not_applied(),
            ClientError::InvalidArgument(_)
            | ClientError::Refused(_)
            | ClientError::WrongCluster(_) => true,
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
    /// What went wrong, decoded from the status the server sent (its
    /// RaftKit metadata) or from what the client saw.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Raft(e) => match e {
                RaftError::NotLeader { .. } => ErrorKind::NotLeader,
                RaftError::TermMismatch { .. } => ErrorKind::TermMismatch,
                RaftError::LeaderSteppedDown => ErrorKind::LeaderSteppedDown,
                RaftError::ShuttingDown => ErrorKind::ShuttingDown,
                RaftError::Transferring => ErrorKind::Transferring,
                RaftError::Timeout(_) => ErrorKind::Timeout,
                RaftError::Busy(_) => ErrorKind::Busy,
                RaftError::InvalidArgument(_) => ErrorKind::InvalidArgument,
                RaftError::Storage(_) | RaftError::Stopped(_) => ErrorKind::Stopped,
                RaftError::StateMachine(_) => ErrorKind::StateMachine,
                RaftError::ConfigurationChanged { .. } => ErrorKind::ConfigurationChanged,
                RaftError::PeerUnreachable(_) => ErrorKind::PeerUnreachable,
                RaftError::SessionExpired(_) => ErrorKind::SessionExpired,
                RaftError::NotCaughtUp(_) => ErrorKind::NotCaughtUp,
                RaftError::AddressInUse(_) => ErrorKind::AddressInUse,
            },
            ClientError::Rpc {
                code: tonic::Code::NotFound,
                ..
            } => ErrorKind::GroupNotHosted,
            ClientError::Rpc { .. } => ErrorKind::Transport,
            ClientError::Unavailable(_) => ErrorKind::Unavailable,
            ClientError::Refused(_) => ErrorKind::Refused,
            ClientError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ClientError::WrongCluster(_) => ErrorKind::WrongCluster,
        }
    }

    /// Which of the two classes every error falls in.
    pub fn outcome(&self) -> Outcome {
        if self.is_definitely_not_applied() {
            Outcome::NotApplied
        } else {
            Outcome::Unknown
        }
    }
}

/// What went wrong with a call ([`ClientError::kind`]), for callers that
/// decide by it (an operator retries `Unavailable`, re-plans on
/// `ConfigurationChanged`, waits on `NotCaughtUp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The member asked is not the leader (the client follows redirects;
    /// this is what is left when it could not).
    NotLeader,
    /// A leadership transfer is in progress.
    Transferring,
    /// No member answered in time, or none accepted the request.
    Unavailable,
    /// Every attempt was turned away before the request was proposed.
    Refused,
    /// A conditional step found another configuration than planned.
    ConfigurationChanged,
    /// A learner is not caught up enough to be promoted.
    NotCaughtUp,
    /// Another member (another raft id) has the address of the replica being
    /// added: remove that member first (a replica that lost its data and came
    /// back at the same address).
    AddressInUse,
    InvalidArgument,
    Busy,
    Timeout,
    TermMismatch,
    LeaderSteppedDown,
    ShuttingDown,
    /// The node stopped on an error (storage, or earlier).
    Stopped,
    StateMachine,
    PeerUnreachable,
    SessionExpired,
    /// The member does not host the group.
    GroupNotHosted,
    /// The members left belong to another cluster than the client's.
    WrongCluster,
    /// A transport failure or a status from something else than a node.
    Transport,
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

#[cfg(test)]
mod tests {
    use super::*;
    use raftkit_proto::status::to_status;

    /// The kind is decoded from the status the server sent.
    #[test]
    fn kinds_come_from_the_servers_status() {
        let decode = |e: RaftError| {
            ClientError::Raft(
                raftkit_proto::status::from_status(&to_status(e)).expect("a node's status"),
            )
        };
        let cases = [
            (RaftError::NotLeader { leader: None }, ErrorKind::NotLeader),
            (RaftError::Transferring, ErrorKind::Transferring),
            (
                RaftError::ConfigurationChanged {
                    expected: 3,
                    current: 5,
                },
                ErrorKind::ConfigurationChanged,
            ),
            (
                RaftError::NotCaughtUp("n4 at 10 of 5000".into()),
                ErrorKind::NotCaughtUp,
            ),
            (
                RaftError::AddressInUse("n3:1 is the address of member 00000000000000ab".into()),
                ErrorKind::AddressInUse,
            ),
            (
                RaftError::InvalidArgument("bad".into()),
                ErrorKind::InvalidArgument,
            ),
            (RaftError::Busy("later".into()), ErrorKind::Busy),
            (RaftError::Stopped("disk".into()), ErrorKind::Stopped),
        ];
        for (e, kind) in cases {
            let c = decode(e.clone());
            assert_eq!(c.kind(), kind, "{e}");
            assert_eq!(
                c.outcome() == Outcome::NotApplied,
                e.is_definitely_not_applied()
            );
        }
        let gone = ClientError::Rpc {
            addr: "a:1".into(),
            code: tonic::Code::NotFound,
            message: "no kv group named \"x\"".into(),
        };
        assert_eq!(gone.kind(), ErrorKind::GroupNotHosted);
        assert_eq!(gone.outcome(), Outcome::NotApplied);
        assert_eq!(
            ClientError::Unavailable("gave up".into()).outcome(),
            Outcome::Unknown
        );
        assert_eq!(
            ClientError::Refused("every member refused".into()).kind(),
            ErrorKind::Refused
        );
        let foreign = ClientError::WrongCluster("a:1 belongs to cluster 1".into());
        assert_eq!(foreign.kind(), ErrorKind::WrongCluster);
        assert_eq!(foreign.outcome(), Outcome::NotApplied);
    }
}
