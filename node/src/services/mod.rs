//! The services the node binary hosts: braft's Counter example and a KV
//! store, each a [`crate::state_machine::StateMachine`] plus a gRPC service,
//! and the admin service. This module also owns how engine errors travel
//! over gRPC ([`to_status`]) and back ([`from_status`]).

pub mod admin;
pub mod counter;
pub mod kv;
pub mod mux;
pub mod sessions;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::{PeerId, RaftError};
use crate::node::Node;

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
        "configuration_changed" => RaftError::ConfigurationChanged { expected, current },
        _ => inner(RaftError::Stopped),
    })
}

/// The groups of one kind hosted here, by name, with their application state.
pub struct GroupTable<S> {
    groups: Arc<RwLock<HashMap<String, (Node, S)>>>,
    kind: &'static str,
}

impl<S> Clone for GroupTable<S> {
    fn clone(&self) -> Self {
        GroupTable {
            groups: self.groups.clone(),
            kind: self.kind,
        }
    }
}

impl<S: Clone> GroupTable<S> {
    pub fn new(kind: &'static str) -> Self {
        GroupTable {
            groups: Arc::default(),
            kind,
        }
    }

    pub fn insert(&self, node: Node, state: S) {
        self.groups
            .write()
            .insert(node.group().to_string(), (node, state));
    }

    pub fn remove(&self, group: &str) {
        self.groups.write().remove(group);
    }

    /// The node and state of `group`; an empty name picks the only group of
    /// this kind when there is exactly one.
    pub fn get(&self, group: &str) -> Result<(Node, S), Status> {
        let groups = self.groups.read();
        if group.is_empty() {
            return match groups.len() {
                1 => Ok(groups
                    .values()
                    .next()
                    .cloned()
                    .ok_or_else(|| Status::internal("group table changed"))?),
                0 => Err(Status::not_found(format!(
                    "no {} group is hosted here",
                    self.kind
                ))),
                _ => {
                    let mut names: Vec<&String> = groups.keys().collect();
                    names.sort();
                    Err(Status::invalid_argument(format!(
                        "several {} groups are hosted here ({}); name one",
                        self.kind,
                        names
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            };
        }
        groups.get(group).cloned().ok_or_else(|| {
            Status::not_found(format!(
                "no {} group named {group:?} is hosted here",
                self.kind
            ))
        })
    }
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

/// Waits as `consistency` requires before a read answers from local state;
/// returns the read index (0 for stale reads).
pub async fn read_barrier(
    node: &Node,
    consistency: crate::pb::ReadConsistency,
) -> Result<u64, Status> {
    use crate::pb::ReadConsistency;
    match consistency {
        ReadConsistency::Linearizable => {
            require_leader(node)?;
            node.read_index().await.map_err(to_status)
        }
        ReadConsistency::Follower => node.read_index().await.map_err(to_status),
        ReadConsistency::Stale => Ok(0),
    }
}

/// A state machine's answer to a write: decodes from the done's bytes and
/// may carry a rejection (a session that expired, a bad sequence number).
pub trait WriteResult: prost::Message + Default + 'static {
    /// (kind, message) when the state machine refused the write.
    fn rejected(&mut self) -> Option<(String, String)>;
}

impl WriteResult for crate::pb::KvResult {
    fn rejected(&mut self) -> Option<(String, String)> {
        (!self.error.is_empty()).then(|| {
            (
                std::mem::take(&mut self.error_kind),
                std::mem::take(&mut self.error),
            )
        })
    }
}

impl WriteResult for crate::pb::CounterResult {
    fn rejected(&mut self) -> Option<(String, String)> {
        (!self.error.is_empty()).then(|| {
            (
                std::mem::take(&mut self.error_kind),
                std::mem::take(&mut self.error),
            )
        })
    }
}

/// Proposes `cmd` on `node` and calls `reply` with the decoded result from
/// the write's done: on the thread that applied the entry, with no task to
/// wake in between (the framed mux stream answers from there, see
/// [`mux`]). The async handlers wait for the same call through a oneshot.
pub fn propose_then<R: WriteResult>(
    node: &Node,
    cmd: Vec<u8>,
    reply: impl FnOnce(Result<R, Status>) + Send + 'static,
) {
    let done = crate::closure::Done::new(move |out| {
        reply((|| {
            let out = out.map_err(to_status)?;
            let mut result = R::decode(out.as_ref())
                .map_err(|e| Status::internal(format!("undecodable write result: {e}")))?;
            if let Some((kind, message)) = result.rejected() {
                return Err(to_status(sessions::rejection(&kind, message)));
            }
            lose_reply()?;
            Ok(result)
        })())
    });
    node.apply(crate::closure::Task::new(cmd, done));
}

/// Runs a `*_then` call and waits for its reply.
pub async fn wait_for<T: Send + 'static>(
    call: impl FnOnce(Box<dyn FnOnce(Result<T, Status>) + Send>),
) -> Result<T, Status> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    call(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.await
        .unwrap_or_else(|_| Err(to_status(RaftError::ShuttingDown)))
}

/// The `reply_after_apply` failpoint: the write was applied, but the reply
/// is lost the way a broken connection loses it (no RaftKit error metadata).
pub fn lose_reply() -> Result<(), Status> {
    crate::failpoint::hit("reply_after_apply").map_err(Status::unavailable)
}

/// Fails with a redirect unless `node` leads (the services' reads and
/// writes go to the leader, as in braft's Counter).
pub fn require_leader(node: &Node) -> Result<(), Status> {
    if node.is_leader() {
        Ok(())
    } else {
        Err(to_status(RaftError::NotLeader {
            leader: node.leader(),
        }))
    }
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
