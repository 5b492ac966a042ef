//! The in-memory view of a log that both backends share: contiguous entries
//! from `first_index`, plus the term of the entry just before them.
//!
//! `memory://` is this cache alone; `local://` keeps it as a mirror of its
//! segment files, so reads never touch the disk (memory is bounded by log
//! compaction after snapshots).

use std::collections::VecDeque;

use raft::eraftpb::Entry;

use crate::error::StorageError;

/// Compactions dropping at least this many entries free them on a
/// short-lived thread.
const DROP_IN_BACKGROUND_MIN: usize = 4096;

#[derive(Debug, Clone)]
pub(crate) struct LogCache {
    first_index: u64,
    prev_term: u64,
    entries: VecDeque<Entry>,
}

impl Default for LogCache {
    fn default() -> Self {
        LogCache::new(1, 0)
    }
}

impl LogCache {
    pub fn new(first_index: u64, prev_term: u64) -> Self {
        LogCache {
            first_index: first_index.max(1),
            prev_term,
            entries: VecDeque::new(),
        }
    }

    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    pub fn last_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64 - 1
    }

    pub fn prev_term(&self) -> u64 {
        self.prev_term
    }

    pub fn term(&self, index: u64) -> Option<u64> {
        if index + 1 == self.first_index {
            return Some(self.prev_term);
        }
        self.get(index).map(|e| e.term)
    }

    pub fn get(&self, index: u64) -> Option<&Entry> {
        if index < self.first_index {
            return None;
        }
        self.entries.get((index - self.first_index) as usize)
    }

    pub fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        if low < self.first_index {
            return Err(StorageError::Compacted(low));
        }
        if high > self.last_index() + 1 {
            return Err(StorageError::Unavailable {
                index: high - 1,
                last: self.last_index(),
            });
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let from = (low - self.first_index) as usize;
        let to = (high - self.first_index) as usize;
        let mut out: Vec<Entry> = self.entries.range(from..to).cloned().collect();
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    /// Checks that `entries` can be appended and returns the index after
    /// which the existing log must be cut first (a conflict), if any.
    pub fn check_append(&self, entries: &[Entry]) -> Result<Option<u64>, StorageError> {
        let Some(first) = entries.first() else {
            return Ok(None);
        };
        for w in entries.windows(2) {
            if w[1].index != w[0].index + 1 {
                return Err(StorageError::Invalid(format!(
                    "append of non-contiguous entries {} then {}",
                    w[0].index, w[1].index
                )));
            }
        }
        if first.index < self.first_index {
            return Err(StorageError::Invalid(format!(
                "append at {} overwrites compacted entries (first index is {})",
                first.index, self.first_index
            )));
        }
        if first.index > self.last_index() + 1 {
            return Err(StorageError::Invalid(format!(
                "append at {} would leave a gap after the last index {}",
                first.index,
                self.last_index()
            )));
        }
        if first.index <= self.last_index() {
            Ok(Some(first.index - 1))
        } else {
            Ok(None)
        }
    }

    /// Appends entries already checked by [`LogCache::check_append`] (after
    /// any conflicting suffix was cut).
    pub fn push(&mut self, entries: &[Entry]) {
        self.entries.extend(entries.iter().cloned());
    }

    pub fn truncate_suffix(&mut self, last_kept: u64) -> Result<(), StorageError> {
        if last_kept + 1 < self.first_index {
            return Err(StorageError::Invalid(format!(
                "truncate after {last_kept} would remove compacted entries (first index is {})",
                self.first_index
            )));
        }
        let keep = (last_kept + 1 - self.first_index) as usize;
        self.entries.truncate(keep);
        Ok(())
    }

    pub fn truncate_prefix(&mut self, first_kept: u64) -> Result<(), StorageError> {
        if first_kept <= self.first_index {
            return Ok(());
        }
        if first_kept > self.last_index() + 1 {
            return Err(StorageError::Invalid(format!(
                "compaction to {first_kept} is beyond the last index {}",
                self.last_index()
            )));
        }
        // In range by the checks above: first_kept - 1 is in [first_index, last_index].
        self.prev_term = self.term(first_kept - 1).unwrap_or(self.prev_term);
        let n = (first_kept - self.first_index) as usize;
        if n >= DROP_IN_BACKGROUND_MIN {
            // Freeing a compaction's worth of entries took 10-14 ms (100k
            // entries); on the raft or I/O thread that stalls every write.
            let kept = self.entries.split_off(n);
            let removed = std::mem::replace(&mut self.entries, kept);
            let spawned = std::thread::Builder::new()
                .name("log-free".into())
                .spawn(move || {
                    crate::state_machine::lower_thread_priority();
                    drop(removed)
                });
            // No thread to be had: free them here.
            drop(spawned);
        } else {
            self.entries.drain(..n);
        }
        self.first_index = first_kept;
        Ok(())
    }

    pub fn reset(&mut self, next_index: u64, prev_term: u64) {
        self.entries.clear();
        self.first_index = next_index.max(1);
        self.prev_term = prev_term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(first: u64, n: u64, term: u64) -> Vec<Entry> {
        (first..first + n)
            .map(|index| Entry {
                index,
                term,
                data: vec![index as u8; 8].into(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn small_and_large_prefix_truncations_keep_the_same_suffix() {
        // Below and above the size at which removed entries are freed on
        // another thread: both must leave exactly the kept suffix.
        for n in [100u64, 3 * DROP_IN_BACKGROUND_MIN as u64] {
            let mut c = LogCache::new(1, 0);
            c.push(&entries(1, n / 2, 1));
            c.push(&entries(n / 2 + 1, n - n / 2, 2));
            let first_kept = n - 10;
            c.truncate_prefix(first_kept).unwrap();
            assert_eq!((c.first_index(), c.last_index()), (first_kept, n));
            assert_eq!(c.prev_term(), 2);
            assert_eq!(c.term(first_kept - 1), Some(2));
            assert!(c.get(first_kept - 1).is_none());
            let e = c.get(first_kept).unwrap();
            assert_eq!(
                (e.index, e.data.as_ref()),
                (first_kept, &[first_kept as u8; 8][..])
            );
            c.push(&entries(n + 1, 1, 3));
            assert_eq!(c.last_index(), n + 1);
        }
    }
}
