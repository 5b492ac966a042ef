//! `local://<dir>`: the durable raft log.
//!
//! The log is a directory of segment files. Closed segments are named by the
//! index range they hold (`log_<first>_<last>`), the one being written is
//! `log_inprogress_<first>`. Each record is framed by [`super::codec`] with a
//! crc32c over header and data. `log_meta` holds the logical first index and
//! the term before it (written on reset, and after a compaction by a
//! background thread before it removes the compacted segments).
//!
//! Recovery reads every segment. A closed segment must be perfect: any damage
//! there is acknowledged data and stops the node with
//! [`StorageError::Corruption`]. In the in-progress segment the first
//! damaged or short record is a torn write from a crash and is cut, unless a
//! valid later record follows it, which means damage in the middle of
//! acknowledged data, again reported, never skipped.
//!
//! Appends are written with one `write` per batch and made durable by
//! [`LogStorage::sync`] (one `fdatasync` for the whole batch: group commit).
//! The in-progress segment is preallocated to the segment size when created
//! (`fallocate`), so an append overwrites allocated space instead of growing
//! the file, and its `fdatasync` has no inode (size) update to write:
//! 0.13-0.19 ms instead of 0.20-0.28 ms on ext4 (docs/benchmarks.md). Its tail is therefore
//! zeros, which recovery reads as free space; a segment is trimmed to its
//! records when it is closed.
//! The entries are mirrored in memory ([`LogCache`]) so reads never touch the disk.

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
    /// Byte offset of each record; record k holds index `first + k`.
    offsets: Vec<u64>,
    bytes: u64,
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
    unsynced: bool,
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
            });
        }

        // Read the in-progress segment: a torn tail is cut, damage before valid data is not.
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
                Some(Stop::Truncated | Stop::Bad(_)) if is_free_space(&buf[pos..]) => {
                    // The preallocated tail: nothing was written there.
                }
                Some(Stop::Truncated | Stop::Bad(_)) => {
                    if let Some(at) = valid_record_after(&buf, pos, index) {
                        return Err(corruption(
                        &path,
                        pos,
                        format!("damaged record for index {index} is followed by a valid record at byte {at}; refusing to drop acknowledged entries"),
                    ));
                    }
                    tracing::warn!(path = %path.display(), offset = pos, index, dropped_bytes = buf.len() - pos, "cutting torn tail of the raft log");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .ctx(|| format!("open {}", path.display()))?;
                    f.set_len(pos as u64)
                        .ctx(|| format!("truncate {}", path.display()))?;
                    preallocate(&f, opts.max_segment_bytes);
                    if opts.sync {
                        f.sync_all().ctx(|| format!("fsync {}", path.display()))?;
                    }
                }
            }
            open_seg = Some(Segment {
                first,
                path,
                offsets,
                bytes: pos as u64,
            });
        }

        // Build the logical view: entries from the logical first index on.
        let physical_first = closed
            .first()
            .map(|s| s.first)
            .or(open_seg.as_ref().map(|s| s.first));
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
                for seg in closed.drain(..).chain(open_seg.take()) {
                    fs::remove_file(&seg.path).ctx(|| format!("remove {}", seg.path.display()))?;
                }
            }
        }

        let (open, open_file) = match open_seg {
            Some(seg) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&seg.path)
                    .ctx(|| format!("open {}", seg.path.display()))?;
                (seg, f)
            }
            None => create_open_segment(dir, cache.last_index() + 1, &opts)?,
        };
        Ok(LocalLog {
            dir: dir.to_path_buf(),
            opts,
            cache,
            closed,
            open,
            open_file,
            unsynced: false,
            remover: None,
        })
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
        let (seg, file) = create_open_segment(&self.dir, last + 1, &self.opts)?;
        let mut old = std::mem::replace(&mut self.open, seg);
        old.path = new_path;
        self.closed.push(old);
        self.open_file = file;
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

struct Scan {
    /// Offset of each valid record.
    offsets: Vec<u64>,
    /// Where scanning stopped (the end of the buffer when `stop` is `None`).
    end: usize,
    /// Index the next record should have had.
    next_index: u64,
    stop: Option<Stop>,
}

/// Reads contiguous records starting at index `first`, pushing each entry.
fn scan_records(buf: &[u8], first: u64, entries: &mut Vec<Entry>) -> Scan {
    let mut scan = Scan {
        offsets: Vec::new(),
        end: 0,
        next_index: first,
        stop: None,
    };
    while scan.end < buf.len() {
        match codec::decode_record(&buf[scan.end..]) {
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
    if opts.sync {
        fsutil::sync_dir(dir)?;
    }
    Ok((
        Segment {
            first,
            path,
            offsets: Vec::new(),
            bytes: 0,
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

/// Looks for a valid record for an index at or after `index` anywhere after
/// byte `from`. Used to tell a torn tail (nothing valid follows) from damage
/// inside acknowledged data (valid records follow).
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
    fn drop(&mut self) {
        self.wait_for_remover();
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
                self.open = Segment {
                    first: seg.first,
                    path: new_path,
                    offsets: seg.offsets,
                    bytes: seg.bytes,
                };
                reopened = true;
                break;
            }
            if !reopened {
                let (s, f) = create_open_segment(&self.dir, target, &self.opts)?;
                self.open = s;
                self.open_file = f;
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
        let (s, f) = create_open_segment(&self.dir, self.cache.last_index() + 1, &self.opts)?;
        self.open = s;
        self.open_file = f;
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
