//! RaftKit's engine: a braft-style Raft runtime on raft-rs.
//!
//! ```text
//!            raftkit (CLI) ── client ──┐            raftkit-node (server)
//!                                      ▼                    │
//!   ┌──────── server: one port, raft streams + gRPC + HTTP ──┘
//!   │  services (counter, kv, admin)   http (/raft_stat, /healthz, /readyz)
//!   │        │ propose / read_index           │ status
//!   │        ▼                                ▼
//!   │  node_manager ── Node (one per group) ──────────────────────┐
//!   │                   │ raft_loop: RawNode, Ready handling       │
//!   │                   │   ├── raft_store → storage (log, meta)   │
//!   │                   │   └── transport (net: stream+grpc / local)│
//!   │                   └ fsm_caller: StateMachine callbacks ──────┘
//!   │                                  └── storage::snapshot
//! ```
//!
//! Start with [`node::Node`], [`state_machine::StateMachine`] and
//! [`options::NodeOptions`]; `docs/architecture.md` maps every file.

pub mod closure;
pub mod cluster_format;
pub mod config;
pub mod error;
pub mod failpoint;
pub(crate) mod fsm_caller;
pub mod http;
/// Idle polling (crate `raftkit-idle-poll`).
pub use raftkit_idle_poll as idle_poll;
pub(crate) mod io_worker;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod node_manager;
pub mod options;
pub mod port_tls;
pub(crate) mod raft_loop;
pub(crate) mod raft_store;
pub mod server;
pub mod services;
pub mod snapshot_install;
pub mod stage_trace;
pub mod state_machine;
pub mod storage;
pub mod transport;

/// Generated gRPC types and services (`raftkit-proto`).
pub use raftkit_proto::pb;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
