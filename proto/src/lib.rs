//! RaftKit's wire protocol: what every caller of a node shares with the
//! node, without the engine.
//!
//! ```text
//!  proto/peer.proto   ─┐
//!  proto/admin.proto  ─┼─▶ pb (generated: messages, gRPC clients and servers)
//!  proto/app.proto    ─┘
//!  error   RaftError, PeerId: what a request fails with
//!  status  RaftError <-> gRPC status (kind and details in metadata), and the
//!          mux stream's MuxError form of a status
//!  mux     the mux stream's framing: preface, length-prefixed frames,
//!          a writer that never blocks the thread that answers
//!  addr    host:port validation
//!  limits  sizes both ends agree on
//!  settings every node setting: flag, environment variable, default, live
//! ```
//!
//! The node (`raftkit-node`) serves these; the client (`raftkit-client`), the
//! CLI and the operator call them.

pub mod addr;
pub mod error;
pub mod limits;
pub mod mux;
pub mod settings;
pub mod status;

pub use addr::validate_addr;
pub use error::{PeerId, RaftError};

/// Generated gRPC types and services (`proto/*.proto`, package `raftkit.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("raftkit.v1");
}
