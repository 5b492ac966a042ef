//! The [`StateMachine`] trait an application implements (braft's
//! `StateMachine`), and the types its callbacks receive.
//!
//! All callbacks run on the group's apply thread, one at a time, in log
//! order; a callback that blocks delays applying (but not replication).

use bytes::Bytes;

use crate::closure::{ApplyResult, Done};
use crate::error::{PeerId, RaftError};
use crate::storage::{SnapshotReader, SnapshotWriter};

/// One committed entry handed to [`StateMachine::on_apply`].
#[derive(Debug)]
pub struct CommittedEntry {
    /// Log index.
    pub index: u64,
    /// Term in which the entry was proposed.
    pub term: u64,
    /// The task's data.
    pub data: Bytes,
    /// The cluster format in force at this entry (`crate::cluster_format`):
    /// the same on every member, so a behaviour it enables is applied
    /// alike everywhere.
    pub cluster_format: u32,
    done: Option<Done>,
}

impl CommittedEntry {
    pub(crate) fn new(
        index: u64,
        term: u64,
        data: Bytes,
        done: Option<Done>,
        cluster_format: u32,
    ) -> Self {
        CommittedEntry {
            index,
            term,
            data,
            cluster_format,
            done,
        }
    }

    /// Whether this node proposed the entry and a caller waits for its result.
    pub fn has_done(&self) -> bool {
        self.done.is_some()
    }

    /// Takes the waiting caller's `done`, to run it later (for example after
    /// an asynchronous side effect). Dones left in place run with an empty
    /// success when `on_apply` returns.
    pub fn take_done(&mut self) -> Option<Done> {
        self.done.take()
    }

    /// Answers the waiting caller, if any, with `result`.
    pub fn respond(&mut self, result: ApplyResult) {
        if let Some(d) = self.done.take() {
            d.run(result);
        }
    }
}

/// A batch of committed entries, in log order (braft's `Iterator`).
pub struct ApplyIter<'a> {
    inner: std::slice::IterMut<'a, CommittedEntry>,
}

impl<'a> ApplyIter<'a> {
    pub(crate) fn new(entries: &'a mut [CommittedEntry]) -> Self {
        ApplyIter {
            inner: entries.iter_mut(),
        }
    }
}

impl<'a> Iterator for ApplyIter<'a> {
    type Item = &'a mut CommittedEntry;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

/// A raft configuration with member addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Configuration {
    /// Voters (the incoming set during a joint change).
    pub voters: Vec<PeerId>,
    /// Non-voting members catching up.
    pub learners: Vec<PeerId>,
    /// The outgoing voter set while a joint change is in progress, else empty.
    pub voters_outgoing: Vec<PeerId>,
}

impl Configuration {
    /// Whether a joint-consensus change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }
}

/// Who leads, as seen by a follower (`on_start_following` / `on_stop_following`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderChangeContext {
    /// The leader being followed (or no longer followed).
    pub leader: PeerId,
    /// Its term.
    pub term: u64,
}

/// Completes `on_snapshot_save`: hand back the writer once every file is
/// finished (the engine then publishes it), or an error. May run on any thread.
type SnapshotCallback = Box<dyn FnOnce(Result<SnapshotWriter, String>) + Send>;

pub struct SnapshotDone(Option<SnapshotCallback>);

impl SnapshotDone {
    pub(crate) fn new(f: impl FnOnce(Result<SnapshotWriter, String>) + Send + 'static) -> Self {
        SnapshotDone(Some(Box::new(f)))
    }

    /// Reports the outcome of saving.
    pub fn run(mut self, result: Result<SnapshotWriter, String>) {
        if let Some(f) = self.0.take() {
            f(result);
        }
    }
}

impl Drop for SnapshotDone {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(
                "the state machine dropped the snapshot without finishing it".to_string(),
            ));
        }
    }
}

/// What an application implements to be replicated. Only `on_apply` is required.
pub trait StateMachine: Send + 'static {
    /// Applies a batch of committed entries in order. For each entry this
    /// node proposed, answer the caller with [`CommittedEntry::respond`].
    /// Must be deterministic: every replica applies the same entries.
    fn on_apply(&mut self, entries: ApplyIter<'_>);

    /// Saves the state as of the last applied entry. Copy what is needed
    /// now; the files may be written on another thread, and applying
    /// continues meanwhile. Finish with `done.run(Ok(writer))`.
    fn on_snapshot_save(&mut self, writer: SnapshotWriter, done: SnapshotDone) {
        drop(writer);
        done.run(Err(
            "this state machine does not support snapshots".to_string()
        ));
    }

    /// Replaces the whole state with the snapshot's.
    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        Err(format!(
            "this state machine cannot load snapshot {}",
            reader.meta().index
        ))
    }

    /// This node became leader of `term` and has applied every entry before
    /// its first entry of the term, so its state is current.
    fn on_leader_start(&mut self, _term: u64) {}

    /// This node stopped being leader (step-down, transfer or shutdown).
    fn on_leader_stop(&mut self, _reason: &RaftError) {}

    /// This follower learned of a leader.
    fn on_start_following(&mut self, _ctx: &LeaderChangeContext) {}

    /// This follower stopped following `ctx.leader` (election, new leader).
    fn on_stop_following(&mut self, _ctx: &LeaderChangeContext) {}

    /// A configuration entry committed and applied at its place in the log.
    fn on_configuration_committed(&mut self, _conf: &Configuration, _index: u64) {}

    /// The node hit an unrecoverable error and stopped applying.
    fn on_error(&mut self, _error: &RaftError) {}

    /// The node is shutting down; the last callback.
    fn on_shutdown(&mut self) {}

    /// A digest of the replicated state, to check that replicas agree (as
    /// etcd's `HashKV`): members at the same applied index must report the
    /// same value. `None` (the default) when the state machine has none.
    fn state_digest(&self) -> Option<u64> {
        None
    }
}

/// [`crate::node::Node::state_digest`]: the state machine's digest and the
/// applied index it was taken at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StateDigest {
    pub applied_index: u64,
    pub digest: Option<u64>,
}

/// A 64-bit FNV-1a digest built from length-prefixed fields, so that
/// ("ab", "c") and ("a", "bc") differ. For [`StateMachine::state_digest`].
#[derive(Clone, Copy, Debug)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    /// Adds one field.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Lowers the calling thread's CPU priority for background work such as
/// writing a snapshot or freeing compacted log space: `SCHED_IDLE`, so that
/// the threads on the write path are always scheduled first and the
/// background work takes the CPU time they leave (it still progresses on a
/// saturated machine, at a small share). Nice 10 was not enough: at 64
/// clients the three nodes' KV snapshot writers took about 40% of both CPUs
/// for 0.3 s every 3 s, and `SCHED_IDLE` took the put p99 from 5.0-6.5 to
/// 4.1-4.3 ms (docs/benchmarks.md). Best effort: where the policy is
/// refused, the thread runs at nice 10.
pub fn lower_thread_priority() {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    // On Linux a thread id given as the process selects just that thread.
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
    let _ = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn digest_depends_on_field_boundaries_and_order() {
        use super::Digest;
        let d = |fields: &[&[u8]]| {
            let mut d = Digest::default();
            for f in fields {
                d.field(f);
            }
            d.value()
        };
        assert_eq!(d(&[b"ab", b"c"]), d(&[b"ab", b"c"]));
        assert_ne!(d(&[b"ab", b"c"]), d(&[b"a", b"bc"]));
        assert_ne!(d(&[b"ab", b"c"]), d(&[b"c", b"ab"]));
        assert_ne!(d(&[]), d(&[b""]));
    }

    #[test]
    fn background_threads_run_at_the_idle_policy() {
        // (nice, scheduling policy) of the calling thread.
        let sched_of_this_thread = || -> (i64, u32) {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            // Fields after the parenthesised command name, which is field 2:
            // nice is field 19, policy field 41.
            let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            (rest[19 - 3].parse().unwrap(), rest[41 - 3].parse().unwrap())
        };
        const SCHED_IDLE: u32 = 5;
        let before = sched_of_this_thread();
        let after = std::thread::spawn(move || {
            super::lower_thread_priority();
            sched_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!(after.1, SCHED_IDLE, "was {before:?}");
        // Only the calling thread changed.
        assert_eq!(sched_of_this_thread(), before);
    }
}
