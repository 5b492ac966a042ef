//! The services the node binary hosts: braft's Counter example and a KV
//! store, each a [`crate::state_machine::StateMachine`] plus a gRPC service,
//! and the admin service. This module also owns how engine errors travel
//! over gRPC ([`to_status`]) and back ([`from_status`]).

pub mod admin;
pub mod counter;
pub mod kv;
pub mod kv_key;
pub mod mux;
pub mod sessions;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tonic::Status;

use crate::error::RaftError;
use crate::node::Node;

pub use raftkit_proto::status::{
    from_status, status_from_wire, status_to_wire, to_status, CURRENT_KEY, ERROR_KIND_KEY,
    EXPECTED_KEY, LEADER_KEY,
};

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

/// A cluster id as 16 hex digits; empty for none.
pub(crate) fn cluster_hex(id: u64) -> String {
    if id == 0 {
        String::new()
    } else {
        format!("{id:016x}")
    }
}
