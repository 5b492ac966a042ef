//! Raft thread: the leader raises the group's cluster format (see
//! `crate::cluster_format`) once every member states that it supports the
//! next one, and every member records the newest format its log committed.

use std::time::{Duration, Instant};

use raft::StateRole;

use super::RaftLoop;
use crate::cluster_format::{entry_context, supported};

/// How often a leader below its highest format checks the members.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl RaftLoop {
    /// A format entry was committed: record it (in the meta too, so a
    /// build that cannot apply it refuses to start on this data).
    pub(super) fn format_committed(&mut self, format: u32) {
        if format > self.committed_format {
            self.committed_format = format;
        }
        if format > self.meta.cluster_format {
            self.meta.cluster_format = format;
            self.mark_meta_dirty();
        }
    }

    /// On a leader below the highest format it supports: proposes the next
    /// format when every member of the configuration (voters, learners,
    /// outgoing voters, learners to be) stated on its raft stream to this
    /// process that it supports it. A member that states nothing (an older
    /// build) or has no stream open (down) holds the format where it is.
    pub(super) fn maybe_raise_cluster_format(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader
            || self.committed_format >= self.opts.max_cluster_format
            || now < self.next_format_check
            || self.in_ready
        {
            return;
        }
        self.next_format_check = now + CHECK_INTERVAL;
        let target = self.committed_format + 1;
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let members = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next);
        for &id in members {
            if id == self.shared.id {
                continue;
            }
            let stated = self.peers.get(&id).and_then(|addr| {
                self.transport
                    .peer_max_cluster_format(&self.opts.group, addr)
            });
            match stated {
                Some(f) if supported(f) >= target => {}
                _ => return,
            }
        }
        // Proposed again a second later if it did not commit meanwhile;
        // applying a format twice changes nothing (formats only rise).
        match self.raw.propose(entry_context(target), Vec::new()) {
            Ok(()) => tracing::info!(
                group = %self.opts.group,
                from = self.committed_format,
                to = target,
                index = self.raw.raft.raft_log.last_index(),
                "raising the cluster format: every member supports it"
            ),
            Err(e) => {
                tracing::debug!(group = %self.opts.group, error = %e, "cluster format not proposed")
            }
        }
    }
}
