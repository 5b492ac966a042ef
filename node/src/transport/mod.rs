//! Transport: how raft messages reach other replicas.
//!
//! The raft thread hands each outgoing message to a [`Transport`] with the
//! destination's address; the call never blocks. Implementations:
//! [`net::NetTransport`] (between processes: raft messages on framed TCP
//! streams, [`stream`]; snapshots on gRPC). Tests run in-process clusters
//! over `LocalNetwork` (crate `raftkit-testkit`), which implements this
//! trait on the public API: [`crate::node::Node::step`], the
//! `Node::install_*` calls and [`crate::snapshot_install::send_snapshot`].

pub mod cluster_check;
pub mod net;
pub mod stream;

use raft::eraftpb::Message;

use futures::future::BoxFuture;

use crate::membership::PeerIdentity;
use crate::snapshot_install::SnapshotJob;

/// Called once with the outcome of a snapshot transfer.
pub type SnapshotSent = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The destination is known to be unreachable right now; raft-rs is told
/// (`report_unreachable`) and probes again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

/// Carries raft messages to other replicas.
pub trait Transport: Send + Sync + 'static {
    /// Queues `msg` for the replica of `group` at `to_addr`. Never blocks.
    /// Messages may be lost (raft retransmits); an error means the peer is
    /// known to be down.
    fn send(&self, group: &str, to_addr: &str, msg: Message) -> Result<(), Unreachable>;

    /// Streams a snapshot to `job.to` (see [`crate::snapshot_install`]) and
    /// calls `done` with the outcome. Never blocks.
    fn install_snapshot(&self, job: SnapshotJob, done: SnapshotSent);

    /// Asks the replica of `group` at `addr` who it is.
    fn query_identity(
        &self,
        group: &str,
        addr: &str,
    ) -> BoxFuture<'static, Result<PeerIdentity, String>>;

    /// Runs a background task (group formation) where this transport runs its own.
    fn spawn(&self, task: BoxFuture<'static, ()>);

    /// Records the cluster id of this process's replica of `group` (0: not
    /// known yet), which the transport states to the peers it sends to so
    /// that members of another cluster drop the traffic
    /// ([`cluster_check`]). The in-process network does not state it.
    fn set_cluster_id(&self, _group: &str, _cluster_id: u64) {}

    /// Records the highest cluster format this process's replica of `group`
    /// supports, stated to peers like the cluster id.
    fn set_max_cluster_format(&self, _group: &str, _format: u32) {}

    /// The highest cluster format the replica of `group` at `addr` stated
    /// (`Some(0)`: connected without stating one, an older build; `None`:
    /// not known, it has no stream open to this process). The in-process
    /// network knows none, so its groups stay at the base format.
    fn peer_max_cluster_format(&self, _group: &str, _addr: &str) -> Option<u32> {
        None
    }
}
