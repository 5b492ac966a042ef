//! `local://<dir>`: the durable raft log.
//!
//! The log is a directory of segment files. Closed segments are named by the
//! index range they hold (`log_<first>_<last>`), the one being written is
//! `log_inprogress_<first>`. Each record is framed by [`super::codec`] with a
//! crc32c over header and data. `log_meta` holds the logical first index and
//! the term before it (written on reset, and after a compaction by a
//! background thread before it removes the compacted segments).
//!
//! Appends are written with one `write` per batch and made durable by
//! [`LogStorage::sync`] (one `fdatasync` for the whole batch: group commit).
//! Several batches may be written between two syncs, and a batch may be
//! written while the previous one is still unsynced.
//! The in-progress segment is preallocated to the segment size when created
//! (`fallocate`), so an append overwrites allocated space instead of growing
//! the file, and its `fdatasync` has no inode (size) update to write:
//! 0.13-0.19 ms instead of 0.20-0.28 ms on ext4 (docs/benchmarks.md). Its tail is therefore
//! zeros, which recovery reads as free space; a segment is trimmed to its
//! records when it is closed.
//! The entries are mirrored in memory ([`LogCache`]) so reads never touch the disk.
//!
//! # Sync markers
//!
//! A crash loses any subset of the pages written since the last completed
//! sync (a lost page of the preallocated segment reads as zeros), so a torn
//! record may be followed by valid later ones that were never acknowledged
//! either. To tell such a tail from damage inside synced data, the
//! in-progress segment carries *sync markers* (record type 3, see
//! [`super::codec`]): "the bytes of this segment before S were fsynced".
//! - Every new in-progress segment starts with a marker (S = 0), written and
//!   fsynced when the segment is created. It carries the segment's random
//!   nonce, which every later marker repeats.
//! - The first batch written after a sync that covered new entries starts
//!   with a marker recording the new frontier, in the same `write` as the
//!   batch (44 bytes, no extra system call, none while the frontier stands).
//! - Closing the log cleanly (drop) with nothing unsynced writes and fsyncs a
//!   last marker when the frontier moved since the previous one.
//!
//! Markers are not entries: segment offsets, the cache and `truncate_suffix`
//! deal in entries only, and scanning skips markers.
//!
//! # Recovery
//!
//! Recovery reads every segment. A closed segment must be perfect (it was
//! fsynced before it was closed): any damage there is acknowledged data and
//! stops the node with [`StorageError::Corruption`].
//!
//! In the in-progress segment scanning stops at the first damaged or short
//! record; zeros from there to the end are unwritten preallocated space, not
//! damage. Otherwise:
//! - if a valid marker of this segment (same nonce) anywhere after the damage
//!   records a synced frontier beyond it, the damage is inside synced data:
//!   it is reported, never skipped;
//! - if none does, the damage is at or after the synced frontier: a torn
//!   write of batches that were never synced, hence never acknowledged. The
//!   segment is cut there, even when valid records follow (zeros, garbage
//!   and stray valid records alike);
//! - a segment without a leading marker was written by an older version and
//!   keeps the old rule: the damage is cut unless a valid later record
//!   follows, which is reported. Recovery closes such a segment, so new
//!   appends go to one with markers (only a `truncate_suffix` reaching back
//!   into an old closed segment writes to an old-format segment again).
//!
//! A valid record with an unexpected index is always reported. After
//! recovery the in-progress segment is fsynced, so what the previous process
//! wrote but never synced is durable before anything (an acknowledgement, a
//! marker) builds on it.
//!
//! A `truncate_suffix` that cuts into synced data fsyncs the cut at once, so
//! markers of the removed data cannot resurface after a crash next to the
//! newer, unsynced records written in its place.
//!
//! Residual risk: a sync is recorded only by a marker written after it (with
//! the next batch, or on a clean close), and that marker is durable only
//! after the next sync. Damage inside the data synced since the last durable
//! marker (normally the last sync group, when the process crashed before
//! recording it, or when nothing was written after it) cannot be told from a
//! torn unsynced tail: it is cut, and bit rot there loses acknowledged
//! entries silently. Damage before that frontier is always reported.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raft::eraftpb::Entry;
use serde::{Deserialize, Serialize};

use super::codec::{self, Decoded};
use super::fsutil;
use super::log_cache::LogCache;
use super::{LogStorage, StorageOptions};
use crate::error::{IoContext, StorageError};

const LOG_META: &str = "log_meta";
const LOG_META_MAGIC: &[u8; 4] = b"RKLM";

/// Opens (creating if needed) the log in directory `path`.
pub fn open(path: &str, opts: &StorageOptions) -> Result<Box<dyn LogStorage>, StorageError> {
    if path.is_empty() {
        return Err(StorageError::InvalidUri {
            uri: "local://".to_string(),
            reason: "a directory is required, as in local:///var/lib/raftkit/log".to_string(),
        });
    }
    Ok(Box::new(LocalLog::open(Path::new(path), opts.clone())?))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LogMetaFile {
    first_index: u64,
    prev_term: u64,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    /// Byte offset of each entry record; entry k holds index `first + k`.
    offsets: Vec<u64>,
    /// Bytes of records (entries and markers) in the file.
    bytes: u64,
    /// Nonce of the segment's sync markers; `None` for a segment written
    /// before markers existed (see the module docs).
    nonce: Option<u64>,
}

impl Segment {
    fn last(&self) -> u64 {
        self.first + self.offsets.len() as u64 - 1
    }
}

/// The `local://` log. See the module documentation.
#[derive(Debug)]
pub struct LocalLog {
    dir: PathBuf,
    opts: StorageOptions,
    cache: LogCache,
    closed: Vec<Segment>,
    open: Segment,
    open_file: File,
    /// Appends or truncations since the last sync.
    unsynced: bool,
    /// Bytes of the in-progress segment known to be on disk: advanced only by
    /// a completed fsync, lowered by `truncate_suffix`.
    synced_bytes: u64,
    /// The largest synced offset a marker in the in-progress segment claims
    /// (0 when not known, which at worst costs a redundant marker).
    recorded: u64,
    /// Removes the segments a prefix truncation dropped (see
    /// [`remove_gradually`]).
    remover: Option<std::thread::JoinHandle<()>>,
}

fn closed_name(first: u64, last: u64) -> String {
    format!("log_{first:020}_{last:020}")
}

fn open_name(first: u64) -> String {
    format!("log_inprogress_{first:020}")
}

enum SegmentName {
    Closed(u64, u64),
    Open(u64),
}

fn parse_name(name: &str) -> Option<SegmentName> {
    if let Some(rest) = name.strip_prefix("log_inprogress_") {
        return rest.parse().ok().map(SegmentName::Open);
    }
    let rest = name.strip_prefix("log_")?;
    let (a, b) = rest.split_once('_')?;
    Some(SegmentName::Closed(a.parse().ok()?, b.parse().ok()?))
}

impl LocalLog {
    /// Opens the log in `dir`, recovering it after a crash. See the module docs.
    pub fn open(dir: &Path, opts: StorageOptions) -> Result<Self, StorageError> {
        fsutil::create_dir_all(dir)?;
        let meta = read_log_meta(dir)?;

        let mut closed_names = Vec::new();
        let mut open_names = Vec::new();
        for ent in fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
            let ent = ent.ctx(|| format!("list {}", dir.display()))?;
            let name = ent.file_name().to_string_lossy().to_string();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(ent.path());
                continue;
            }
            match parse_name(&name) {
                Some(SegmentName::Closed(a, b)) => closed_names.push((a, b)),
                Some(SegmentName::Open(a)) => open_names.push(a),
                None => {}
            }
        }
        closed_names.sort_unstable();
        if open_names.len() > 1 {
            return Err(StorageError::Corruption {
                path: dir.to_path_buf(),
                offset: 0,
                reason: format!(
                    "{} in-progress segments; expected at most one",
                    open_names.len()
                ),
            });
        }

        // Read closed segments: every byte must be a valid record.
        let mut all_entries: Vec<Entry> = Vec::new();
        let mut closed = Vec::new();
        let mut expect: Option<u64> = None;
        for (first, last) in closed_names {
            let path = dir.join(closed_name(first, last));
            if let Some(e) = expect {
                if first != e {
                    return Err(StorageError::Corruption {
                        path,
                        offset: 0,
                        reason: format!(
                            "segment starts at {first} but the previous one ends at {}",
                            e - 1
                        ),
                    });
                }
            }
            let buf = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
            let scan = scan_records(&buf, first, &mut all_entries);
            let (offsets, pos, index) = (scan.offsets, scan.end, scan.next_index);
            match scan.stop {
                None => {}
                Some(Stop::WrongIndex(found)) => {
                    return Err(corruption(
                        &path,
                        pos,
                        format!("record holds index {found} where {index} was expected"),
                    ))
                }
                Some(Stop::Truncated) => {
                    return Err(corruption(
                        &path,
                        pos,
                        "closed segment ends inside a record".to_string(),
                    ))
                }
                Some(Stop::Bad(reason)) => return Err(corruption(&path, pos, reason)),
            }
            if index != last + 1 {
                return Err(corruption(
                    &path,
                    pos,
                    format!(
                        "closed segment named up to {last} holds entries up to {}",
                        index - 1
                    ),
                ));
            }
            expect = Some(last + 1);
            closed.push(Segment {
                first,
                path,
                offsets,
                bytes: buf.len() as u64,
                nonce: scan.nonce,
            });
        }

        // Read the in-progress segment: a torn unsynced tail is cut, damage
        // inside synced data is not (see the module docs).
        let mut open_seg = None;
        if let Some(&first) = open_names.first() {
            let path = dir.join(open_name(first));
            if let Some(e) = expect {
                if first != e {
                    return Err(corruption(
                        &path,
                        0,
                        format!(
                            "in-progress segment starts at {first} but the closed ones end at {}",
                            e - 1
                        ),
                    ));
                }
            }
            let buf = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
            let scan = scan_records(&buf, first, &mut all_entries);
            let (pos, index) = (scan.end, scan.next_index);
            let damage = match &scan.stop {
                None => None,
                Some(Stop::WrongIndex(found)) => {
                    return Err(corruption(
                        &path,
                        pos,
                        format!("record holds index {found} where {index} was expected"),
                    ))
                }
                // The preallocated tail: nothing was written there.
                Some(Stop::Truncated | Stop::Bad(_)) if is_free_space(&buf[pos..]) => None,
                Some(Stop::Truncated) => Some("the segment ends inside a record".to_string()),
                Some(Stop::Bad(reason)) => Some(reason.clone()),
            };
            if let Some(reason) = &damage {
                check_torn_tail(&path, &buf, &scan, reason)?;
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .ctx(|| format!("open {}", path.display()))?;
            if let Some(reason) = damage {
                tracing::warn!(path = %path.display(), offset = pos, index, dropped_bytes = buf.len() - pos, %reason, "cutting torn unsynced tail of the raft log");
                f.set_len(pos as u64)
                    .ctx(|| format!("truncate {}", path.display()))?;
                preallocate(&f, opts.max_segment_bytes);
            }
            let mut synced_bytes = 0;
            if opts.sync {
                // What the previous process wrote but never synced becomes
                // durable before anything builds on it (see the module docs).
                f.sync_all().ctx(|| format!("fsync {}", path.display()))?;
                synced_bytes = pos as u64;
            }
            let seg = Segment {
                first,
                path,
                offsets: scan.offsets,
                bytes: pos as u64,
                nonce: scan.nonce,
            };
            open_seg = Some((seg, f, synced_bytes, scan.claimed));
        }

        // Build the logical view: entries from the logical first index on.
        let physical_first = closed
            .first()
            .map(|s| s.first)
            .or(open_seg.as_ref().map(|o| o.0.first));
        let physical_last = physical_first.map(|f| f + all_entries.len() as u64 - 1);
        let (logical_first, prev_term) = match meta {
            Some(m) => (m.first_index, m.prev_term),
            None => (physical_first.unwrap_or(1), 0),
        };
        let mut cache;
        match (physical_first, physical_last) {
            (Some(pf), Some(pl)) if !all_entries.is_empty() && pl + 1 >= logical_first => {
                if pf > logical_first {
                    return Err(corruption(
                        dir,
                        0,
                        format!("log files start at {pf} but the log begins at {logical_first}"),
                    ));
                }
                let skip = (logical_first - pf) as usize;
                let prev = if skip > 0 {
                    all_entries[skip - 1].term
                } else {
                    prev_term
                };
                cache = LogCache::new(logical_first, prev);
                cache.push(&all_entries[skip..]);
            }
            _ => {
                // Nothing physical at or after the logical first index: any
                // files left are below it (a crash during reset or compaction).
                cache = LogCache::new(logical_first, prev_term);
                for seg in closed.drain(..).chain(open_seg.take().map(|o| o.0)) {
                    fs::remove_file(&seg.path).ctx(|| format!("remove {}", seg.path.display()))?;
                }
            }
        }

        let (open, open_file, synced_bytes, recorded) = match open_seg {
            Some(o) => o,
            None => {
                let (seg, f) = create_open_segment(dir, cache.last_index() + 1, &opts)?;
                let synced = if opts.sync { seg.bytes } else { 0 };
                (seg, f, synced, 0)
            }
        };
        let mut log = LocalLog {
            dir: dir.to_path_buf(),
            opts,
            cache,
            closed,
            open,
            open_file,
            unsynced: false,
            synced_bytes,
            recorded,
            remover: None,
        };
        if log.open.nonce.is_none() {
            // Written before sync markers existed: close it (or replace it
            // when it holds no entry) so new appends go to a segment with
            // markers.
            if log.open.offsets.is_empty() {
                log.start_open_segment(log.open.first)?;
            } else {
                log.roll()?;
            }
        }
        Ok(log)
    }

    /// Closes the in-progress segment and starts a new one at the next index.
    fn roll(&mut self) -> Result<(), StorageError> {
        if self.open.offsets.is_empty() {
            return Ok(());
        }
        // A closed segment holds exactly its records: drop the preallocated tail.
        self.open_file
            .set_len(self.open.bytes)
            .ctx(|| format!("trim {}", self.open.path.display()))?;
        if self.opts.sync {
            self.open_file
                .sync_data()
                .ctx(|| format!("fsync {}", self.open.path.display()))?;
        }
        let last = self.open.last();
        let new_path = self.dir.join(closed_name(self.open.first, last));
        fs::rename(&self.open.path, &new_path).ctx(|| {
            format!(
                "rename {} to {}",
                self.open.path.display(),
                new_path.display()
            )
        })?;
        let mut old = self.start_open_segment(last + 1)?;
        old.path = new_path;
        self.closed.push(old);
        Ok(())
    }

    /// Replaces the in-progress segment by a new, empty one starting at
    /// `first` and returns the old one (whose file the caller has closed,
    /// removed or renamed already).
    fn start_open_segment(&mut self, first: u64) -> Result<Segment, StorageError> {
        let (seg, file) = create_open_segment(&self.dir, first, &self.opts)?;
        self.synced_bytes = if self.opts.sync { seg.bytes } else { 0 };
        self.recorded = 0;
        self.open_file = file;
        Ok(std::mem::replace(&mut self.open, seg))
    }

    /// True when synced entries of the in-progress segment lie after the
    /// frontier its markers record, so the next write should carry a marker.
    fn marker_due(&self) -> bool {
        let below = self
            .open
            .offsets
            .partition_point(|&o| o < self.synced_bytes);
        self.open.nonce.is_some() && below > 0 && self.open.offsets[below - 1] >= self.recorded
    }

    /// Appends a marker recording the synced frontier to `buf` when one is due.
    fn push_marker_if_due(&mut self, buf: &mut Vec<u8>) {
        if let (true, Some(nonce)) = (self.marker_due(), self.open.nonce) {
            codec::encode_marker(nonce, self.synced_bytes, buf);
            self.recorded = self.synced_bytes;
        }
    }

    /// On a clean close: records the synced frontier in a last, fsynced
    /// marker, so damage anywhere in the synced data is reported on the next
    /// open (see the module docs). Does nothing while appends are unsynced.
    fn record_frontier(&mut self) -> Result<(), StorageError> {
        if !self.opts.sync || self.unsynced {
            return Ok(());
        }
        let mut buf = Vec::new();
        self.push_marker_if_due(&mut buf);
        if buf.is_empty() {
            return Ok(());
        }
        self.open_file
            .write_all_at(&buf, self.open.bytes)
            .ctx(|| format!("write {}", self.open.path.display()))?;
        self.open.bytes += buf.len() as u64;
        self.open_file
            .sync_data()
            .ctx(|| format!("fsync {}", self.open.path.display()))?;
        self.synced_bytes = self.open.bytes;
        Ok(())
    }

    /// The meta file's bytes for the current first index.
    fn encode_meta(&self) -> Result<Vec<u8>, StorageError> {
        let body = serde_json::to_vec(&LogMetaFile {
            first_index: self.cache.first_index(),
            prev_term: self.cache.prev_term(),
        })
        .map_err(|e| StorageError::Invalid(format!("encode log meta: {e}")))?;
        Ok(fsutil::frame_checked(LOG_META_MAGIC, &body))
    }

    fn write_meta(&self) -> Result<(), StorageError> {
        fsutil::write_atomic(
            &self.dir.join(LOG_META),
            &self.encode_meta()?,
            self.opts.sync,
        )
    }

    /// Waits until the segments of the last prefix truncation are removed.
    fn wait_for_remover(&mut self) {
        if let Some(h) = self.remover.take() {
            let _ = h.join();
        }
    }

    fn remove_segment_file(&self, path: &Path) -> Result<(), StorageError> {
        fs::remove_file(path).ctx(|| format!("remove {}", path.display()))
    }
}

/// Why [`scan_records`] stopped before the end of a segment.
enum Stop {
    /// The buffer ends inside a record.
    Truncated,
    /// The bytes at the stop position are not a valid record.
    Bad(String),
    /// A valid record with an unexpected index.
    WrongIndex(u64),
}

/// What [`scan_records`] found in a segment.
struct Scan {
    /// Offset of each valid entry record.
    offsets: Vec<u64>,
    /// Where scanning stopped (the end of the buffer when `stop` is `None`).
    end: usize,
    /// Index the next record should have had.
    next_index: u64,
    /// Why scanning stopped before the end of the buffer, if it did.
    stop: Option<Stop>,
    /// Nonce of the marker at offset 0, if the segment starts with one.
    nonce: Option<u64>,
    /// The largest synced offset claimed by a marker before `end`.
    claimed: u64,
}

/// Reads contiguous records starting at index `first`, pushing each entry
/// and checking (and skipping) sync markers.
fn scan_records(buf: &[u8], first: u64, entries: &mut Vec<Entry>) -> Scan {
    let mut scan = Scan {
        offsets: Vec::new(),
        end: 0,
        next_index: first,
        stop: None,
        nonce: None,
        claimed: 0,
    };
    while scan.end < buf.len() {
        match codec::decode_record(&buf[scan.end..]) {
            Decoded::Marker { nonce, synced } => {
                if scan.end == 0 {
                    scan.nonce = Some(nonce);
                }
                if scan.nonce != Some(nonce) {
                    scan.stop = Some(Stop::Bad(
                        "sync marker of another segment (or of none)".to_string(),
                    ));
                    break;
                }
                if synced > scan.end as u64 {
                    scan.stop = Some(Stop::Bad(format!(
                        "sync marker claims {synced} bytes synced, more than precede it"
                    )));
                    break;
                }
                scan.claimed = scan.claimed.max(synced);
                scan.end += codec::MARKER_LEN;
            }
            Decoded::Record(entry, n) if entry.index == scan.next_index => {
                scan.offsets.push(scan.end as u64);
                entries.push(entry);
                scan.end += n;
                scan.next_index += 1;
            }
            Decoded::Record(entry, _) => {
                scan.stop = Some(Stop::WrongIndex(entry.index));
                break;
            }
            Decoded::Truncated => {
                scan.stop = Some(Stop::Truncated);
                break;
            }
            Decoded::Bad(reason) => {
                scan.stop = Some(Stop::Bad(reason));
                break;
            }
        }
    }
    scan
}

/// Decides what the damage where `scan` stopped in the in-progress segment
/// `buf` is (see the module docs): `Ok` for a torn unsynced tail to cut, a
/// corruption error for damage inside synced (acknowledged) data.
fn check_torn_tail(path: &Path, buf: &[u8], scan: &Scan, reason: &str) -> Result<(), StorageError> {
    let (pos, index) = (scan.end, scan.next_index);
    match scan.nonce {
        Some(nonce) => match synced_claim_beyond(buf, pos, nonce) {
            Some((at, synced)) => Err(corruption(
                path,
                pos,
                format!("damaged record for index {index} ({reason}) lies before byte {synced}, which the sync marker at byte {at} records as fsynced; refusing to drop acknowledged entries"),
            )),
            None => Ok(()),
        },
        // A segment from before sync markers: the old rule.
        None => match valid_record_after(buf, pos, index) {
            Some(at) => Err(corruption(
                path,
                pos,
                format!("damaged record for index {index} ({reason}) is followed by a valid record at byte {at}; refusing to drop acknowledged entries"),
            )),
            None => Ok(()),
        },
    }
}

/// Looks after byte `from` for a valid sync marker of the segment with
/// `nonce` that records a synced frontier beyond `from` (and no further than
/// itself): proof that the data at `from` was fsynced. Returns the marker's
/// offset and its frontier.
fn synced_claim_beyond(buf: &[u8], from: usize, nonce: u64) -> Option<(usize, u64)> {
    let mut pos = from + 1;
    while pos + codec::MARKER_LEN <= buf.len() {
        if buf[pos] == codec::MARKER_PREFIX[0] && buf[pos..pos + 8] == codec::MARKER_PREFIX {
            if let Decoded::Marker { nonce: n, synced } = codec::decode_record(&buf[pos..]) {
                if n == nonce && synced > from as u64 && synced <= pos as u64 {
                    return Some((pos, synced));
                }
            }
        }
        pos += 1;
    }
    None
}

/// A [`StorageError::Corruption`] at `offset` of `path`.
fn corruption(path: &Path, offset: usize, reason: String) -> StorageError {
    StorageError::Corruption {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    }
}

fn read_log_meta(dir: &Path) -> Result<Option<LogMetaFile>, StorageError> {
    let path = dir.join(LOG_META);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(format!("read {}", path.display()), e)),
    };
    let body = fsutil::unframe_checked(LOG_META_MAGIC, &data, &path)?;
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| corruption(&path, 0, format!("undecodable log meta: {e}")))
}

/// Creates the in-progress segment for entries from `first` on: preallocated
/// and starting with its leading sync marker.
fn create_open_segment(
    dir: &Path,
    first: u64,
    opts: &StorageOptions,
) -> Result<(Segment, File), StorageError> {
    let path = dir.join(open_name(first));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .ctx(|| format!("create {}", path.display()))?;
    preallocate(&file, opts.max_segment_bytes);
    // The leading marker: durable before any entry is written after it, so
    // recovery always finds it (see the module docs).
    let nonce: u64 = rand::random();
    let mut lead = Vec::with_capacity(codec::MARKER_LEN);
    codec::encode_marker(nonce, 0, &mut lead);
    file.write_all_at(&lead, 0)
        .ctx(|| format!("write {}", path.display()))?;
    if opts.sync {
        file.sync_data()
            .ctx(|| format!("fsync {}", path.display()))?;
        fsutil::sync_dir(dir)?;
    }
    Ok((
        Segment {
            first,
            path,
            offsets: Vec::new(),
            bytes: lead.len() as u64,
            nonce: Some(nonce),
        },
        file,
    ))
}

/// Reserves `len` bytes of disk for a new in-progress segment (see the module
/// docs). Only an optimisation: a file system without `fallocate` gets a
/// segment that grows as it is written.
fn preallocate(file: &File, len: u64) {
    use nix::fcntl::{fallocate, FallocateFlags};
    let Ok(len) = i64::try_from(len) else { return };
    if let Err(e) = fallocate(file, FallocateFlags::empty(), 0, len) {
        tracing::debug!(error = %e, "log segment preallocation unavailable");
    }
}

/// True when `tail` is all zeros: space preallocated and never written.
/// (Zeros never decode as a record: a zero header's checksum is not zero.)
fn is_free_space(tail: &[u8]) -> bool {
    tail.iter().all(|&b| b == 0)
}

/// Looks for a valid entry record for an index at or after `index` anywhere
/// after byte `from`. The old rule, for segments without sync markers: a
/// torn tail has nothing valid after it, damage inside acknowledged data has.
fn valid_record_after(buf: &[u8], from: usize, index: u64) -> Option<usize> {
    let mut pos = from + 1;
    while pos + codec::HEADER_LEN <= buf.len() {
        if let Some(h) = codec::read_header(&buf[pos..]) {
            let plausible = h.index >= index
                && h.index < index.saturating_add(1 << 32)
                && h.typ <= 2
                && h.len <= codec::MAX_PAYLOAD;
            if plausible {
                if let Decoded::Record(..) = codec::decode_record(&buf[pos..]) {
                    return Some(pos);
                }
            }
        }
        pos += 1;
    }
    None
}

impl Drop for LocalLog {
    /// Waits for the remover and records the synced frontier (a clean close).
    fn drop(&mut self) {
        self.wait_for_remover();
        if let Err(e) = self.record_frontier() {
            tracing::warn!(path = %self.open.path.display(), error = %e, "recording the synced frontier on close failed; the last synced batch is not protected against damage");
        }
    }
}

/// Slice a compacted segment is shrunk by before it is unlinked.
const REMOVE_SLICE_BYTES: u64 = 1 << 20;

/// Removes compacted segments off the I/O thread, shrinking each in 1 MiB
/// steps first. Unlinking 32 MiB of segments at once took 40-100 ms on the
/// I/O thread (freeing a large file's extents is a burst of metadata
/// writes, and the log's fsync waits behind them); in slices, each log
/// fsync waits for at most a slice's worth. The meta already records the new first index, so the
/// files are garbage: after a crash they are dropped on open.
fn remove_gradually(paths: &[PathBuf], dir: &Path, sync: bool) {
    for path in paths {
        if let Ok(f) = fs::OpenOptions::new().write(true).open(path) {
            let mut len = f.metadata().map(|m| m.len()).unwrap_or(0);
            while len > REMOVE_SLICE_BYTES {
                len -= REMOVE_SLICE_BYTES;
                if f.set_len(len).is_err() {
                    break;
                }
                std::thread::yield_now();
            }
        }
        if let Err(e) = fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "removing a compacted log segment failed; it is dropped on the next open");
            }
        }
    }
    if sync {
        if let Err(e) = fsutil::sync_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "fsync of the log directory after compaction failed");
        }
    }
}

impl LogStorage for LocalLog {
    fn first_index(&self) -> u64 {
        self.cache.first_index()
    }

    fn last_index(&self) -> u64 {
        self.cache.last_index()
    }

    fn term(&self, index: u64) -> Option<u64> {
        self.cache.term(index)
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        self.cache.entries(low, high, max_size)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        if let Some(last_kept) = self.cache.check_append(entries)? {
            self.truncate_suffix(last_kept)?;
        }
        let mut buf = Vec::new();
        for e in entries {
            if self.open.bytes + buf.len() as u64 >= self.opts.max_segment_bytes
                && (!self.open.offsets.is_empty())
            {
                self.flush_buf(&mut buf)?;
                self.roll()?;
            }
            self.push_marker_if_due(&mut buf);
            self.open.offsets.push(self.open.bytes + buf.len() as u64);
            codec::encode_record(e, &mut buf);
        }
        self.flush_buf(&mut buf)?;
        self.cache.push(entries);
        Ok(())
    }

    fn truncate_suffix(&mut self, last_kept: u64) -> Result<(), StorageError> {
        if last_kept >= self.cache.last_index() {
            return Ok(());
        }
        self.cache.truncate_suffix(last_kept)?;
        let target = last_kept + 1;
        if target < self.open.first {
            // The cut is inside a closed segment: drop everything after it
            // and reopen that segment as the in-progress one.
            self.remove_segment_file(&self.open.path.clone())?;
            let mut reopened = false;
            while let Some(seg) = self.closed.pop() {
                if seg.first >= target {
                    self.remove_segment_file(&seg.path)?;
                    if seg.first == target {
                        break;
                    }
                    continue;
                }
                let new_path = self.dir.join(open_name(seg.first));
                fs::rename(&seg.path, &new_path)
                    .ctx(|| format!("rename {} to {}", seg.path.display(), new_path.display()))?;
                self.open_file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&new_path)
                    .ctx(|| format!("open {}", new_path.display()))?;
                // A closed segment was fsynced before it was closed.
                self.synced_bytes = if self.opts.sync { seg.bytes } else { 0 };
                self.recorded = 0;
                self.open = Segment {
                    first: seg.first,
                    path: new_path,
                    offsets: seg.offsets,
                    bytes: seg.bytes,
                    nonce: seg.nonce,
                };
                reopened = true;
                break;
            }
            if !reopened {
                self.start_open_segment(target)?;
            }
            if self.opts.sync {
                fsutil::sync_dir(&self.dir)?;
            }
        }
        if target >= self.open.first {
            let k = (target - self.open.first) as usize;
            if k < self.open.offsets.len() {
                let off = self.open.offsets[k];
                self.open_file
                    .set_len(off)
                    .ctx(|| format!("truncate {}", self.open.path.display()))?;
                preallocate(&self.open_file, self.opts.max_segment_bytes);
                self.open.offsets.truncate(k);
                self.open.bytes = off;
                // Markers after the cut are gone; the next batch records the
                // frontier again.
                self.recorded = 0;
                if off < self.synced_bytes {
                    // The cut reaches into synced data: make it durable now,
                    // so the removed records (and their markers) cannot
                    // resurface after a crash beside newer unsynced ones.
                    if self.opts.sync {
                        self.open_file
                            .sync_data()
                            .ctx(|| format!("fsync {}", self.open.path.display()))?;
                    }
                    self.synced_bytes = off;
                }
            }
        }
        self.unsynced = true;
        Ok(())
    }

    fn truncate_prefix(&mut self, first_kept: u64) -> Result<(), StorageError> {
        if first_kept <= self.cache.first_index() {
            return Ok(());
        }
        self.cache.truncate_prefix(first_kept)?;
        let mut garbage = Vec::new();
        while self.closed.first().is_some_and(|s| s.last() < first_kept) {
            garbage.push(self.closed.remove(0).path);
        }
        // The meta must record the new start before files are removed (a
        // crash in between then leaves only extra files below the first
        // index, dropped on open). Both happen on the remover thread: the
        // meta write (temp file, fsync, rename, directory fsync) took 12-17
        // ms, during which no append could be made durable. Until it is
        // written, a restart finds the old start and all its files: the log
        // as it was before this compaction, whose extra entries are valid
        // (the node accepts a log that starts before its snapshot's end).
        self.wait_for_remover(); // meta writes stay in order
        let meta = self.encode_meta()?;
        let (dir, sync) = (self.dir.clone(), self.opts.sync);
        self.remover = Some(std::thread::spawn(move || {
            crate::state_machine::lower_thread_priority();
            if let Err(e) = fsutil::write_atomic(&dir.join(LOG_META), &meta, sync) {
                tracing::warn!(dir = %dir.display(), error = %e, "writing the log meta after compaction failed; the compacted segments stay on disk until the next compaction");
                return;
            }
            if !garbage.is_empty() {
                remove_gradually(&garbage, &dir, sync)
            }
        }));
        Ok(())
    }

    fn reset(&mut self, next_index: u64, prev_term: u64) -> Result<(), StorageError> {
        self.wait_for_remover();
        // Remove the files first: a crash before the meta is written leaves an
        // empty log, which the node reconciles with its snapshot on restart.
        for seg in std::mem::take(&mut self.closed) {
            self.remove_segment_file(&seg.path)?;
        }
        self.remove_segment_file(&self.open.path.clone())?;
        if self.opts.sync {
            fsutil::sync_dir(&self.dir)?;
        }
        self.cache.reset(next_index, prev_term);
        self.write_meta()?;
        self.start_open_segment(self.cache.last_index() + 1)?;
        self.unsynced = false;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if self.unsynced {
            if self.opts.sync {
                crate::failpoint::hit("log_sync").map_err(|e| StorageError::Io {
                    context: format!("fsync {}", self.open.path.display()),
                    source: std::io::Error::other(e),
                })?;
                self.open_file
                    .sync_data()
                    .ctx(|| format!("fsync {}", self.open.path.display()))?;
                self.synced_bytes = self.open.bytes;
            }
            self.unsynced = false;
        }
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        self.closed.iter().map(|s| s.bytes).sum::<u64>() + self.open.bytes
    }
}

impl LocalLog {
    fn flush_buf(&mut self, buf: &mut Vec<u8>) -> Result<(), StorageError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.open_file
            .write_all_at(buf, self.open.bytes)
            .ctx(|| format!("write {}", self.open.path.display()))?;
        self.open.bytes += buf.len() as u64;
        buf.clear();
        self.unsynced = true;
        Ok(())
    }

    /// Number of segment files (closed plus in-progress), for tests and status.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }
}
