//! Storage: the raft log, the raft meta (term, vote, identity) and snapshots,
//! each chosen by a URI through a registry, as braft does.
//!
//! ```text
//!   local://<path>   durable files (segmented log, atomic meta, snapshot dirs)
//!   memory://[name]  in-process; a named instance survives a node restart
//!                    inside the same process (tests), an unnamed one does not
//! ```
//!
//! Other backends register a new scheme with [`register_log_storage`],
//! [`register_meta_storage`] or [`register_snapshot_storage`].
//!
//! This module owns the storage traits and the registry; it touches no raft
//! state. [`crate::raft_store`] adapts these traits to raft-rs.

pub(crate) mod codec;
pub(crate) mod fsutil;
pub mod local_log;
pub mod local_meta;
pub(crate) mod log_cache;
pub mod memory;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use raft::eraftpb::Entry;
use serde::{Deserialize, Serialize};

use crate::error::PeerId;
pub use crate::error::StorageError;
pub use snapshot::{SnapshotMeta, SnapshotReader, SnapshotStorage, SnapshotWriter};

/// The highest `local://` log format this build reads and writes: 1, records
/// only; 2, with sync markers (record type 3, see `local_log`). Reported in
/// the admin status so an operator can tell what a mixed cluster can read.
pub const LOG_FORMAT: u32 = 2;

/// The replicated log of one group on one replica.
///
/// Indexes are contiguous. An empty log has `last_index() == first_index() - 1`.
/// The term of `first_index() - 1` stays known after compaction (it is needed
/// to match the next append), so `term` answers for `first_index() - 1 ..= last_index()`.
pub trait LogStorage: Send {
    /// Index of the first entry still stored (1 for a new log).
    fn first_index(&self) -> u64;
    /// Index of the last entry; `first_index() - 1` when the log is empty.
    fn last_index(&self) -> u64;
    /// Term of entry `index`; `None` outside `first_index()-1 ..= last_index()`.
    fn term(&self, index: u64) -> Option<u64>;
    /// Entries in `[low, high)`, at least one (when the range is not empty)
    /// and otherwise at most `max_size` bytes in total.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError>;
    /// Appends contiguous entries. The first one may overwrite an existing
    /// index (a conflict): everything from there on is replaced. Not durable
    /// until [`LogStorage::sync`] returns.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;
    /// Removes entries after `last_kept` (conflict resolution).
    fn truncate_suffix(&mut self, last_kept: u64) -> Result<(), StorageError>;
    /// Removes entries before `first_kept` (compaction after a snapshot).
    fn truncate_prefix(&mut self, first_kept: u64) -> Result<(), StorageError>;
    /// Drops every entry; the next append starts at `next_index`, and
    /// `term(next_index - 1)` answers `prev_term` (after a snapshot install).
    fn reset(&mut self, next_index: u64, prev_term: u64) -> Result<(), StorageError>;
    /// Makes every append and truncation so far durable (per the sync policy).
    fn sync(&mut self) -> Result<(), StorageError>;
    /// Bytes this log occupies on its medium (for status and tests).
    fn disk_bytes(&self) -> u64 {
        0
    }
}

/// What must survive a restart besides the log: who we are and whom we voted for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMeta {
    /// This replica's raft id; 0 until one is assigned.
    pub peer_id: u64,
    /// Current term.
    pub term: u64,
    /// Vote in `term` (0 = none).
    pub vote: u64,
    /// Commit index last written (written lazily: it may lag the real one).
    pub commit: u64,
    /// Applied index last written (written lazily, like `commit`).
    pub applied: u64,
    /// The configuration the group was created with (the "index 0" snapshot);
    /// empty for a replica that joined an existing group.
    pub initial_conf: Vec<PeerId>,
    /// The cluster this replica belongs to (0: not known yet): derived from
    /// the bootstrap configuration (`membership::cluster_id_of`), learned
    /// by replaying the log's first entry or from a snapshot.
    #[serde(default)]
    pub cluster_id: u64,
    /// The `local://` log format this replica's data was last written in
    /// (0: before formats were recorded). A build that reads only older
    /// formats refuses to start on it ([`LOG_FORMAT`]).
    #[serde(default)]
    pub log_format: u32,
    /// The newest cluster format this replica's log committed
    /// (`cluster_format`; 0: none, the base format). A build whose highest
    /// format is below it refuses to start.
    #[serde(default)]
    pub cluster_format: u32,
}

/// Term, vote and identity of one replica, written atomically.
pub trait RaftMetaStorage: Send {
    /// The last saved meta, or `None` for a new replica.
    fn load(&self) -> Result<Option<RaftMeta>, StorageError>;
    /// Replaces the meta; durable when it returns (per the sync policy).
    fn save(&mut self, meta: &RaftMeta) -> Result<(), StorageError>;
}

/// Options every backend receives.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// fsync on [`LogStorage::sync`] and on meta/snapshot writes. Default true.
    pub sync: bool,
    /// Size at which the local log closes a segment and opens the next.
    /// Default 8 MiB.
    pub max_segment_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            sync: true,
            max_segment_bytes: 8 << 20,
        }
    }
}

/// Opens a log storage at the part of the URI after `scheme://`.
pub type LogFactory = fn(&str, &StorageOptions) -> Result<Box<dyn LogStorage>, StorageError>;
/// Opens a meta storage at the part of the URI after `scheme://`.
pub type MetaFactory = fn(&str, &StorageOptions) -> Result<Box<dyn RaftMetaStorage>, StorageError>;
/// Opens a snapshot storage at the part of the URI after `scheme://`.
pub type SnapshotFactory =
    fn(&str, &StorageOptions) -> Result<Box<dyn SnapshotStorage>, StorageError>;

#[derive(Default)]
struct Registry {
    log: HashMap<String, LogFactory>,
    meta: HashMap<String, MetaFactory>,
    snapshot: HashMap<String, SnapshotFactory>,
}

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: OnceLock<RwLock<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r = Registry::default();
        r.log.insert("local".into(), local_log::open as LogFactory);
        r.log
            .insert("memory".into(), memory::open_log as LogFactory);
        r.meta
            .insert("local".into(), local_meta::open as MetaFactory);
        r.meta
            .insert("memory".into(), memory::open_meta as MetaFactory);
        r.snapshot
            .insert("local".into(), snapshot::open_local as SnapshotFactory);
        r.snapshot
            .insert("memory".into(), memory::open_snapshot as SnapshotFactory);
        RwLock::new(r)
    })
}

/// Registers (or replaces) the log backend for `scheme`.
pub fn register_log_storage(scheme: &str, factory: LogFactory) {
    write_registry().log.insert(scheme.to_string(), factory);
}

/// Registers (or replaces) the meta backend for `scheme`.
pub fn register_meta_storage(scheme: &str, factory: MetaFactory) {
    write_registry().meta.insert(scheme.to_string(), factory);
}

/// Registers (or replaces) the snapshot backend for `scheme`.
pub fn register_snapshot_storage(scheme: &str, factory: SnapshotFactory) {
    write_registry()
        .snapshot
        .insert(scheme.to_string(), factory);
}

fn write_registry() -> std::sync::RwLockWriteGuard<'static, Registry> {
    // A panic while holding the lock cannot leave the maps half-written
    // (each operation is one insert), so a poisoned lock is still usable.
    registry().write().unwrap_or_else(|p| p.into_inner())
}

fn read_registry() -> std::sync::RwLockReadGuard<'static, Registry> {
    registry().read().unwrap_or_else(|p| p.into_inner())
}

/// Splits `scheme://rest` and finds the factory for the scheme.
fn resolve<'a, F: Copy>(
    uri: &'a str,
    kind: &str,
    table: &HashMap<String, F>,
) -> Result<(F, &'a str), StorageError> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(StorageError::InvalidUri {
            uri: uri.to_string(),
            reason: format!("missing scheme; expected one of {}", known_schemes(table)),
        });
    };
    match table.get(scheme) {
        Some(f) => Ok((*f, rest)),
        None => Err(StorageError::InvalidUri {
            uri: uri.to_string(),
            reason: format!(
                "no {kind} storage is registered for scheme {scheme:?}; expected one of {}",
                known_schemes(table)
            ),
        }),
    }
}

fn known_schemes<F>(table: &HashMap<String, F>) -> String {
    let mut v: Vec<String> = table.keys().map(|s| format!("{s}://")).collect();
    v.sort();
    v.join(", ")
}

/// Opens the log storage named by `uri`.
pub fn open_log_storage(
    uri: &str,
    opts: &StorageOptions,
) -> Result<Box<dyn LogStorage>, StorageError> {
    let (f, rest) = resolve(uri, "log", &read_registry().log)?;
    f(rest, opts)
}

/// Opens the raft meta storage named by `uri`.
pub fn open_meta_storage(
    uri: &str,
    opts: &StorageOptions,
) -> Result<Box<dyn RaftMetaStorage>, StorageError> {
    let (f, rest) = resolve(uri, "meta", &read_registry().meta)?;
    f(rest, opts)
}

/// Opens the snapshot storage named by `uri`.
pub fn open_snapshot_storage(
    uri: &str,
    opts: &StorageOptions,
) -> Result<Box<dyn SnapshotStorage>, StorageError> {
    let (f, rest) = resolve(uri, "snapshot", &read_registry().snapshot)?;
    f(rest, opts)
}

/// Checks that `uri` names a registered scheme, without opening it.
pub fn validate_uri(uri: &str) -> Result<(), StorageError> {
    let r = read_registry();
    resolve(uri, "log", &r.log).map(|_| ())
}
