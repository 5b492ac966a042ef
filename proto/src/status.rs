//! How a [`RaftError`] travels over gRPC and back: the status code says
//! what kind of failure it is to any gRPC client, and RaftKit's metadata
//! keys carry the error's kind and details, so [`from_status`] rebuilds the
//! same error. The mux stream carries the same status as a
//! [`crate::pb::MuxError`] ([`status_to_wire`], [`status_from_wire`]).

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::{PeerId, RaftError};

/// Metadata key carrying the [`RaftError::kind`] of a failed request.
pub const ERROR_KIND_KEY: &str = "raftkit-error";
/// Metadata key carrying the leader's address on a redirect.
pub const LEADER_KEY: &str = "raftkit-leader";
/// Metadata keys carrying the numbers of a term or configuration mismatch.
pub const EXPECTED_KEY: &str = "raftkit-expected";
pub const CURRENT_KEY: &str = "raftkit-current";

/// Converts an engine error to a gRPC status the client can turn back into
/// the same error (kind and leader travel in metadata).
pub fn to_status(err: RaftError) -> Status {
    let code = match &err {
        RaftError::NotLeader { .. } => Code::FailedPrecondition,
        RaftError::TermMismatch { .. } => Code::Aborted,
        RaftError::LeaderSteppedDown | RaftError::ShuttingDown | RaftError::Transferring => {
            Code::Unavailable
        }
        RaftError::Timeout(_) => Code::DeadlineExceeded,
        RaftError::Busy(_) => Code::ResourceExhausted,
        RaftError::InvalidArgument(_) => Code::InvalidArgument,
        RaftError::StateMachine(_) => Code::FailedPrecondition,
        RaftError::Storage(_) | RaftError::Stopped(_) => Code::Internal,
        RaftError::ConfigurationChanged { .. } => Code::Aborted,
        RaftError::PeerUnreachable(_) => Code::Unavailable,
        RaftError::SessionExpired(_) => Code::FailedPrecondition,
        RaftError::NotCaughtUp(_) | RaftError::AddressInUse(_) => Code::FailedPrecondition,
    };
    let mut status = Status::new(code, err.to_string());
    let md = status.metadata_mut();
    md.insert(ERROR_KIND_KEY, MetadataValue::from_static(err.kind()));
    let numbers = match &err {
        RaftError::TermMismatch { expected, current }
        | RaftError::ConfigurationChanged { expected, current } => Some((*expected, *current)),
        _ => None,
    };
    if let Some((e, c)) = numbers {
        if let (Ok(e), Ok(c)) = (
            MetadataValue::try_from(e.to_string()),
            MetadataValue::try_from(c.to_string()),
        ) {
            md.insert(EXPECTED_KEY, e);
            md.insert(CURRENT_KEY, c);
        }
    }
    if let RaftError::NotLeader { leader: Some(l) } = &err {
        if let Ok(v) = MetadataValue::try_from(l.addr.as_str()) {
            md.insert(LEADER_KEY, v);
        }
    }
    status
}

/// The engine error behind a status produced by [`to_status`], or `None`
/// for statuses that did not come from a RaftKit node (transport errors).
pub fn from_status(status: &Status) -> Option<RaftError> {
    let kind = status.metadata().get(ERROR_KIND_KEY)?.to_str().ok()?;
    let message = status.message();
    let num = |k: &str| {
        status
            .metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (expected, current) = (num(EXPECTED_KEY), num(CURRENT_KEY));
    // Rebuild the error's own text: the status message is its Display form.
    let inner = |make: fn(String) -> RaftError| {
        let prefix = make(String::new()).to_string();
        make(
            message
                .strip_prefix(prefix.as_str())
                .unwrap_or(message)
                .to_string(),
        )
    };
    Some(match kind {
        "not_leader" => RaftError::NotLeader {
            leader: status
                .metadata()
                .get(LEADER_KEY)
                .and_then(|v| v.to_str().ok())
                .map(|a| PeerId {
                    id: 0,
                    addr: a.to_string(),
                }),
        },
        "term_mismatch" => RaftError::TermMismatch { expected, current },
        "leader_stepped_down" => RaftError::LeaderSteppedDown,
        "shutting_down" => RaftError::ShuttingDown,
        "transferring" => RaftError::Transferring,
        "timeout" => inner(RaftError::Timeout),
        "busy" => inner(RaftError::Busy),
        "invalid_argument" => inner(RaftError::InvalidArgument),
        "storage" => inner(RaftError::Storage),
        "state_machine" => inner(RaftError::StateMachine),
        "peer_unreachable" => inner(RaftError::PeerUnreachable),
        "session_expired" => inner(RaftError::SessionExpired),
        "not_caught_up" => inner(RaftError::NotCaughtUp),
        "address_in_use" => inner(RaftError::AddressInUse),
        "configuration_changed" => RaftError::ConfigurationChanged { expected, current },
        _ => inner(RaftError::Stopped),
    })
}

/// A status as a [`crate::pb::MuxError`]: code, message and the RaftKit
/// metadata [`from_status`] reads.
pub fn status_to_wire(status: &Status) -> crate::pb::MuxError {
    let md = |k: &str| {
        status
            .metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    crate::pb::MuxError {
        code: status.code() as i32,
        message: status.message().to_string(),
        kind: md(ERROR_KIND_KEY),
        leader: md(LEADER_KEY),
        expected: md(EXPECTED_KEY),
        current: md(CURRENT_KEY),
    }
}

/// The status [`status_to_wire`] was made from.
pub fn status_from_wire(e: crate::pb::MuxError) -> Status {
    let mut status = Status::new(Code::from(e.code), e.message);
    let md = status.metadata_mut();
    for (k, v) in [
        (ERROR_KIND_KEY, e.kind),
        (LEADER_KEY, e.leader),
        (EXPECTED_KEY, e.expected),
        (CURRENT_KEY, e.current),
    ] {
        if let (false, Ok(v)) = (v.is_empty(), MetadataValue::try_from(v)) {
            md.insert(k, v);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_round_trip_through_a_status() {
        let errs = [
            RaftError::NotLeader {
                leader: Some(PeerId {
                    id: 0,
                    addr: "10.0.0.1:8100".into(),
                }),
            },
            RaftError::NotLeader { leader: None },
            RaftError::LeaderSteppedDown,
            RaftError::ShuttingDown,
            RaftError::Transferring,
            RaftError::Busy("x".into()),
            RaftError::InvalidArgument("key must not be empty".into()),
            RaftError::StateMachine("overflow".into()),
            RaftError::TermMismatch {
                expected: 3,
                current: 4,
            },
            RaftError::ConfigurationChanged {
                expected: 7,
                current: 9,
            },
            RaftError::PeerUnreachable("a:1: refused".into()),
            RaftError::NotCaughtUp("n4:1 at 10 of 5000".into()),
            RaftError::AddressInUse("n3:1 is the address of member 00000000000000ab".into()),
        ];
        for e in errs {
            let back = from_status(&to_status(e.clone())).expect("a node status");
            assert_eq!(back, e);
            let status = to_status(e.clone());
            let over_mux = status_from_wire(status_to_wire(&status));
            assert_eq!(over_mux.code(), status.code());
            assert_eq!(from_status(&over_mux), Some(e));
        }
        assert_eq!(
            from_status(&Status::unavailable("connection refused")),
            None
        );
        let plain = status_from_wire(status_to_wire(&Status::unavailable("reply lost")));
        assert_eq!(plain.code(), Code::Unavailable);
        assert_eq!(plain.message(), "reply lost");
        assert_eq!(from_status(&plain), None);
    }
}
