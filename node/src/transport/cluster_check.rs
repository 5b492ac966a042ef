//! Refusing raft traffic from another cluster (etcd's cluster-id mismatch).
//! Owns the rule and its warning's rate limit; touches a node only to read
//! its cluster id and count what it dropped.
//!
//! The rule: traffic is dropped when both the sender's and this replica's
//! cluster ids are known (non-zero) and differ. A zero sender id is
//! accepted: a replica that has not learned its cluster yet, or a sender
//! running a build that does not state it (a rolling upgrade). A zero id
//! here is accepted too: a new replica learns its cluster from the first
//! entries or the snapshot the leader sends it. Traffic is never filtered on
//! "sender not in my configuration": a lagging member must take a new
//! leader's appends before it has the entry that added that leader.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::node::Node;

/// At most one warning per this many milliseconds per process; the drop
/// counter counts every refused message.
const WARN_EVERY_MS: u64 = 10_000;

/// When the last warning was logged (ms since the epoch).
static LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);

/// Whether `node` takes traffic from a sender of cluster `sender` (0: not
/// stated). Counts and (rate-limited) logs what it refuses; `what` names
/// the traffic and `from` the sender, for the log.
pub fn admits(node: &Node, sender: u64, from: &str, what: &str) -> bool {
    let mine = node.cluster_id();
    if sender == 0 || mine == 0 || sender == mine {
        return true;
    }
    node.metrics()
        .foreign_cluster_dropped
        .fetch_add(1, Ordering::Relaxed);
    if should_warn() {
        tracing::warn!(
            group = %node.group(),
            from = %from,
            sender_cluster = %format!("{sender:016x}"),
            cluster = %format!("{mine:016x}"),
            "dropping {what} from another cluster (further drops are counted in raftkit_foreign_cluster_dropped_total, warned about at most every {}s)",
            WARN_EVERY_MS / 1000
        );
    }
    false
}

fn should_warn() -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = LAST_WARN_MS.load(Ordering::Relaxed);
    now.saturating_sub(last) >= WARN_EVERY_MS
        && LAST_WARN_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}
