pub mod closure;
pub mod error;
pub(crate) mod fsm_caller;
pub mod logging;
pub mod node;
pub mod node_manager;
pub mod options;
pub(crate) mod raft_loop;
pub(crate) mod raft_store;
pub mod state_machine;
pub mod storage;
pub mod transport;

/// Generated gRPC types and services (`proto/raftkit.proto`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("raftkit.v1");
}
