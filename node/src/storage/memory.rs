//! `memory://[name]`: storages that live in process memory, for tests and
//! for state that may be lost. An unnamed URI gives a fresh instance; a named
//! one (`memory://n1-log`) returns the same data every time it is opened in
//! this process, so a test can stop a node and start it again on the same
//! "disk". [`forget`] wipes a named instance (a lost disk).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use raft::eraftpb::Entry;

use super::log_cache::LogCache;
use super::snapshot::{MemIncoming, MemSnapshot, MemSnapshots};
use super::{LogStorage, RaftMeta, RaftMetaStorage, SnapshotStorage, StorageOptions};
use crate::error::StorageError;

#[derive(Default)]
struct Instances {
    logs: HashMap<String, Arc<Mutex<LogCache>>>,
    metas: HashMap<String, Arc<Mutex<Option<RaftMeta>>>>,
    snapshots: HashMap<String, Arc<Mutex<Option<MemSnapshot>>>>,
    incoming: HashMap<String, Arc<Mutex<Option<MemIncoming>>>>,
}

fn instances() -> std::sync::MutexGuard<'static, Instances> {
    static I: OnceLock<Mutex<Instances>> = OnceLock::new();
    I.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Wipes every named memory instance whose name is `name` (log, meta and
/// snapshot), as if that disk were lost.
pub fn forget(name: &str) {
    let mut i = instances();
    i.logs.remove(name);
    i.metas.remove(name);
    i.snapshots.remove(name);
    i.incoming.remove(name);
}

fn shared<T: Default>(table: &mut HashMap<String, Arc<Mutex<T>>>, name: &str) -> Arc<Mutex<T>> {
    if name.is_empty() {
        return Arc::default();
    }
    table.entry(name.to_string()).or_default().clone()
}

/// Opens a `memory://` log.
pub fn open_log(name: &str, _opts: &StorageOptions) -> Result<Box<dyn LogStorage>, StorageError> {
    Ok(Box::new(MemLog {
        inner: shared(&mut instances().logs, name),
    }))
}

/// Opens a `memory://` meta storage.
pub fn open_meta(
    name: &str,
    _opts: &StorageOptions,
) -> Result<Box<dyn RaftMetaStorage>, StorageError> {
    Ok(Box::new(MemMeta {
        inner: shared(&mut instances().metas, name),
    }))
}

/// Opens a `memory://` snapshot storage.
pub fn open_snapshot(
    name: &str,
    _opts: &StorageOptions,
) -> Result<Box<dyn SnapshotStorage>, StorageError> {
    let mut i = instances();
    let slot = shared(&mut i.snapshots, name);
    let incoming = shared(&mut i.incoming, name);
    Ok(Box::new(MemSnapshots { slot, incoming }))
}

/// The `memory://` log.
pub struct MemLog {
    inner: Arc<Mutex<LogCache>>,
}

impl MemLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogCache> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogStorage for MemLog {
    fn first_index(&self) -> u64 {
        self.lock().first_index()
    }

    fn last_index(&self) -> u64 {
        self.lock().last_index()
    }

    fn term(&self, index: u64) -> Option<u64> {
        self.lock().term(index)
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        self.lock().entries(low, high, max_size)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let mut c = self.lock();
        if let Some(last_kept) = c.check_append(entries)? {
            c.truncate_suffix(last_kept)?;
        }
        c.push(entries);
        Ok(())
    }

    fn truncate_suffix(&mut self, last_kept: u64) -> Result<(), StorageError> {
        let mut c = self.lock();
        if last_kept >= c.last_index() {
            return Ok(());
        }
        c.truncate_suffix(last_kept)
    }

    fn truncate_prefix(&mut self, first_kept: u64) -> Result<(), StorageError> {
        self.lock().truncate_prefix(first_kept)
    }

    fn reset(&mut self, next_index: u64, prev_term: u64) -> Result<(), StorageError> {
        self.lock().reset(next_index, prev_term);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

struct MemMeta {
    inner: Arc<Mutex<Option<RaftMeta>>>,
}

impl RaftMetaStorage for MemMeta {
    fn load(&self) -> Result<Option<RaftMeta>, StorageError> {
        Ok(self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn save(&mut self, meta: &RaftMeta) -> Result<(), StorageError> {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = Some(meta.clone());
        Ok(())
    }
}
