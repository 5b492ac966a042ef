//! [`RaftStore`]: raft-rs's `Storage` over the in-memory view of the log
//! plus the snapshot position. Owned by the group's raft thread (inside the
//! `RawNode`); only that thread touches it. The durable log belongs to the
//! I/O thread (`io_worker.rs`).

use std::cell::Cell;

use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

use crate::error::StorageError;
use crate::storage::log_cache::LogCache;
use crate::storage::SnapshotMeta;

pub(crate) struct RaftStore {
    /// The log as raft-rs sees it: every entry handed to the I/O thread,
    /// in memory (the I/O thread owns the durable copy).
    pub log: LogCache,
    /// Index and term of the newest snapshot (0, 0 when there is none).
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    /// The newest published snapshot, offered to followers that need it.
    pub latest: Option<SnapshotMeta>,
    /// Set when raft-rs asked for a snapshot we do not have yet.
    pub wanted: Cell<bool>,
    /// What `initial_state` reports (raft-rs asks once, at creation).
    pub initial: RaftState,
}

impl RaftStore {
    /// Records a newly published (or installed) snapshot.
    pub fn set_snapshot(&mut self, meta: SnapshotMeta) {
        if meta.index >= self.snapshot_index {
            self.snapshot_index = meta.index;
            self.snapshot_term = meta.term;
            self.latest = Some(meta);
        }
    }
}

fn to_raft(e: StorageError) -> raft::Error {
    match e {
        StorageError::Compacted(_) => raft::Error::Store(raft::StorageError::Compacted),
        StorageError::Unavailable { .. } => raft::Error::Store(raft::StorageError::Unavailable),
        other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
    }
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(self.initial.clone())
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log
            .entries(low, high, max_size.into())
            .map_err(to_raft)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        match self.log.term(idx) {
            Some(t) => Ok(t),
            None if idx < self.log.first_index() => {
                Err(raft::Error::Store(raft::StorageError::Compacted))
            }
            None => Err(raft::Error::Store(raft::StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log.last_index())
    }

    /// The newest snapshot as raft-rs sees it: index, term and configuration
    /// in the metadata, and our [`SnapshotMeta`] (file list, checksums, member
    /// addresses) as the data. The files themselves travel out of band.
    ///
    /// Only a snapshot whose configuration includes the receiver `to` is
    /// offered: raft-rs on the receiver refuses any other (a member added
    /// after the newest snapshot was taken would be sent that snapshot
    /// forever). Otherwise a new snapshot is asked for, as when none is
    /// recent enough.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let includes = |meta: &SnapshotMeta| {
            let cs = meta.conf.to_conf_state();
            to == 0
                || cs
                    .voters
                    .iter()
                    .chain(&cs.learners)
                    .chain(&cs.voters_outgoing)
                    .any(|id| *id == to)
        };
        match &self.latest {
            Some(meta) if meta.index >= request_index && meta.index > 0 && includes(meta) => {
                let mut s = Snapshot {
                    data: serde_json::to_vec(meta).unwrap_or_default().into(),
                    ..Default::default()
                };
                let md = s.mut_metadata();
                md.index = meta.index;
                md.term = meta.term;
                md.set_conf_state(meta.conf.to_conf_state());
                Ok(s)
            }
            _ => {
                self.wanted.set(true);
                Err(raft::Error::Store(
                    raft::StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}
