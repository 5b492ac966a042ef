//! The cluster format: the group-wide version of what is written to the log
//! and how entries are applied, kept in the log itself so every member
//! switches at the same index. Owns the numbers, the entry encoding and
//! what each format enables; the leader's raise is in
//! `raft_loop/cluster_format.rs`, applying it in `fsm_caller`.
//!
//! A format entry is a normal entry with empty data whose context is
//! [`ENTRY_MAGIC`] followed by the format (u32 big-endian). Builds from
//! before cluster formats skip it (empty data is a new leader's no-op to
//! them), so it is never misapplied as a command. A member that reads a
//! format newer than it supports stops applying and reports why.
//!
//! A group with no format entry runs [`BASE`]. The leader raises the
//! format one step at a time, only when every member of the configuration
//! (voters, learners, outgoing voters) states on its raft streams that it
//! supports the next one; a member joining later is refused by
//! `add_learner`/`add_peer` if its highest format is below the group's.

/// What a group runs before any format entry: what builds without
/// cluster formats write and apply.
pub const BASE: u32 = 1;
/// Format 2: the counter state machine counts the increments it applied
/// (`CounterGetReply.ops`, kept in its snapshots and its digest).
pub const COUNTER_OPS: u32 = 2;
/// The newest format this build supports.
pub const NEWEST: u32 = COUNTER_OPS;

/// Opens the context of a format entry.
pub const ENTRY_MAGIC: &[u8] = b"raftkit:cluster_format:";

/// The context of an entry that sets the cluster format to `format`.
pub fn entry_context(format: u32) -> Vec<u8> {
    let mut c = ENTRY_MAGIC.to_vec();
    c.extend_from_slice(&format.to_be_bytes());
    c
}

/// The format a normal entry sets, if it is a format entry.
pub fn from_entry(context: &[u8], data: &[u8]) -> Option<u32> {
    if !data.is_empty() {
        return None;
    }
    let rest = context.strip_prefix(ENTRY_MAGIC)?;
    Some(u32::from_be_bytes(rest.try_into().ok()?))
}

/// What a stated (or unstated: 0) highest format means: a member that
/// states none runs a build from before cluster formats, which supports
/// only [`BASE`].
pub fn supported(stated: u32) -> u32 {
    stated.max(BASE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_entries_round_trip_and_nothing_else_is_one() {
        assert_eq!(from_entry(&entry_context(2), b""), Some(2));
        assert_eq!(from_entry(&entry_context(2), b"x"), None);
        assert_eq!(from_entry(b"", b""), None);
        assert_eq!(from_entry(ENTRY_MAGIC, b""), None);
        assert_eq!(supported(0), BASE);
    }
}
