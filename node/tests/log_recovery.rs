//! Crash recovery of the `local://` log: a torn tail is cut, damage inside
//! acknowledged data is reported and never skipped. (Every crash state of a
//! few write sequences is enumerated in `log_crash_states.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use raft::eraftpb::Entry;
use raftkit_node::error::StorageError;
use raftkit_node::storage::local_log::LocalLog;
use raftkit_node::storage::{LogStorage, StorageOptions};

/// Entry `index` of term 1 with a 200-byte payload.
fn ent(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        data: vec![index as u8; 200].into(),
        ..Default::default()
    }
}

/// Synced options with `segment`-byte segments.
fn opts(segment: u64) -> StorageOptions {
    StorageOptions {
        sync: true,
        max_segment_bytes: segment,
    }
}

/// Writes entries 1..=n, syncs them and closes the log cleanly (which
/// records the synced frontier), and returns the directory.
fn write_log(n: u64, segment: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LocalLog::open(dir.path(), opts(segment)).unwrap();
    log.append(&(1..=n).map(ent).collect::<Vec<_>>()).unwrap();
    log.sync().unwrap();
    drop(log);
    dir
}

/// Writes entries 1..=n as one batch, and the process dies before syncing
/// it: the files hold the batch (the page cache survives the process), but it
/// was never durable, so a power loss may have torn any part of it.
fn write_log_then_crash(n: u64, segment: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LocalLog::open(dir.path(), opts(segment)).unwrap();
    log.append(&(1..=n).map(ent).collect::<Vec<_>>()).unwrap();
    std::mem::forget(log); // no sync, no clean close
    dir
}

/// The closed segment files of the log in `dir` (in order) and its in-progress one.
fn segment_files(dir: &Path) -> (Vec<PathBuf>, PathBuf) {
    let mut closed = Vec::new();
    let mut open = None;
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("log_inprogress_") {
            open = Some(p);
        } else if name.starts_with("log_") {
            closed.push(p);
        }
    }
    closed.sort();
    (closed, open.expect("an in-progress segment"))
}

/// Byte offset of each entry record in a segment file (records are 28-byte
/// header + payload; sync markers, type 3, are skipped), and where the
/// records (markers included) end: the in-progress segment is preallocated,
/// so zeros follow its last record.
fn records(path: &Path) -> (Vec<usize>, usize) {
    let data = fs::read(path).unwrap();
    let mut offs = Vec::new();
    let mut p = 0;
    while p + 28 <= data.len() && data[p..p + 28].iter().any(|&b| b != 0) {
        if data[p + 4] != 3 {
            offs.push(p);
        }
        let len = u32::from_le_bytes(data[p..p + 4].try_into().unwrap()) as usize;
        p += 28 + len;
    }
    (offs, p)
}

/// Byte offset of each entry record in a segment file.
fn record_offsets(path: &Path) -> Vec<usize> {
    records(path).0
}

/// Damages the byte at `at` of the file at `path`.
fn flip_byte(path: &Path, at: usize) {
    let mut data = fs::read(path).unwrap();
    data[at] ^= 0x5a;
    fs::write(path, data).unwrap();
}

/// Opens the log in `dir` again, as a restarted node does.
fn reopen(dir: &Path, segment: u64) -> Result<LocalLog, StorageError> {
    LocalLog::open(dir, opts(segment))
}

#[test]
fn truncated_last_record_is_cut_and_the_log_keeps_working() {
    let dir = write_log_then_crash(10, 1 << 20);
    let (_, open) = segment_files(dir.path());
    let end = records(&open).1 as u64;
    let f = fs::OpenOptions::new().write(true).open(&open).unwrap();
    f.set_len(end - 17).unwrap(); // a torn write of the last record
    drop(f);
    let mut log = reopen(dir.path(), 1 << 20).unwrap();
    assert_eq!(log.last_index(), 9);
    log.append(&[ent(10), ent(11)]).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = reopen(dir.path(), 1 << 20).unwrap();
    assert_eq!(log.last_index(), 11);
    assert_eq!(log.entries(10, 12, None).unwrap(), vec![ent(10), ent(11)]);
}

#[test]
fn truncated_header_is_cut() {
    let dir = write_log_then_crash(5, 1 << 20);
    let (_, open) = segment_files(dir.path());
    let last = *record_offsets(&open).last().unwrap();
    let f = fs::OpenOptions::new().write(true).open(&open).unwrap();
    f.set_len(last as u64 + 10).unwrap();
    drop(f);
    assert_eq!(reopen(dir.path(), 1 << 20).unwrap().last_index(), 4);
}

#[test]
fn bad_checksum_in_the_last_record_is_cut() {
    let dir = write_log_then_crash(10, 1 << 20);
    let (_, open) = segment_files(dir.path());
    let last = *record_offsets(&open).last().unwrap();
    flip_byte(&open, last + 60); // inside the last record's payload
    let log = reopen(dir.path(), 1 << 20).unwrap();
    assert_eq!(log.last_index(), 9);
    assert_eq!(
        log.entries(1, 10, None).unwrap(),
        (1..=9).map(ent).collect::<Vec<_>>()
    );
}

#[test]
fn zero_filled_tail_is_cut() {
    let dir = write_log_then_crash(6, 1 << 20);
    let (_, open) = segment_files(dir.path());
    let mut data = fs::read(&open).unwrap();
    data.extend(std::iter::repeat_n(0u8, 4096));
    fs::write(&open, data).unwrap();
    assert_eq!(reopen(dir.path(), 1 << 20).unwrap().last_index(), 6);
}

#[test]
fn in_progress_segment_is_preallocated_and_closed_segments_hold_only_records() {
    // 200-byte entries (228 bytes framed), 4 KiB segments: a segment closes
    // once it has reached 4 KiB, at 18 records (after its 44-byte leading
    // sync marker).
    let dir = write_log(40, 4096);
    let (closed, open) = segment_files(dir.path());
    assert_eq!(closed.len(), 2, "two closed segments: {closed:?}");
    for c in &closed {
        let (offs, end) = records(c);
        assert_eq!(offs.len(), 18);
        assert_eq!(
            fs::metadata(c).unwrap().len(),
            end as u64,
            "{c:?} is trimmed"
        );
    }
    let (offs, end) = records(&open);
    assert_eq!(offs.len(), 4);
    assert_eq!(
        fs::metadata(&open).unwrap().len(),
        4096,
        "the in-progress segment is preallocated to the segment size"
    );
    assert!(end < 4096);

    // Reopening after a crash reads the zeros as free space: nothing is cut,
    // and new entries go right after the last record.
    let mut log = reopen(dir.path(), 4096).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, 40));
    log.append(&[ent(41)]).unwrap();
    log.sync().unwrap();
    drop(log);
    let (offs, _) = records(&open);
    assert_eq!(offs.len(), 5);
    assert_eq!(
        fs::metadata(&open).unwrap().len(),
        4096,
        "recovery keeps the preallocated space"
    );
    let log = reopen(dir.path(), 4096).unwrap();
    assert_eq!(
        log.entries(1, 42, None).unwrap(),
        (1..=41).map(ent).collect::<Vec<_>>()
    );
}

#[test]
fn torn_record_in_preallocated_space_is_cut() {
    let dir = write_log_then_crash(10, 1 << 20);
    let (_, open) = segment_files(dir.path());
    let (offs, end) = records(&open);
    let last = *offs.last().unwrap();
    // Only the first part of the last record reached the disk; the rest of it
    // reads as the preallocated zeros.
    let mut data = fs::read(&open).unwrap();
    data[last + 40..end].fill(0);
    fs::write(&open, data).unwrap();
    let mut log = reopen(dir.path(), 1 << 20).unwrap();
    assert_eq!(log.last_index(), 9);
    assert_eq!(
        fs::metadata(&open).unwrap().len(),
        1 << 20,
        "the space after the cut is preallocated again"
    );
    log.append(&[ent(10), ent(11)]).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = reopen(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        log.entries(1, 12, None).unwrap(),
        (1..=11).map(ent).collect::<Vec<_>>()
    );
}

#[test]
fn damaged_record_in_the_middle_of_the_open_segment_is_reported() {
    let dir = write_log(10, 1 << 20);
    let (_, open) = segment_files(dir.path());
    let offs = record_offsets(&open);
    flip_byte(&open, offs[4] + 50); // record for index 5; 6..=10 are intact
    match reopen(dir.path(), 1 << 20) {
        Err(StorageError::Corruption { offset, reason, .. }) => {
            assert_eq!(offset, offs[4] as u64);
            assert!(
                reason.contains("records as fsynced; refusing to drop acknowledged entries"),
                "{reason}"
            );
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Nothing was cut: the file still holds every record.
    assert_eq!(record_offsets(&open).len(), 10);
}

#[test]
fn damaged_header_in_the_middle_is_reported() {
    let dir = write_log(10, 1 << 20);
    let (_, open) = segment_files(dir.path());
    let offs = record_offsets(&open);
    flip_byte(&open, offs[2] + 9); // the term field of record 3
    assert!(matches!(
        reopen(dir.path(), 1 << 20),
        Err(StorageError::Corruption { .. })
    ));
}

#[test]
fn damage_in_a_closed_segment_is_reported_even_at_its_end() {
    let dir = write_log(100, 4096);
    let (closed, _) = segment_files(dir.path());
    assert!(closed.len() >= 3, "small segments should have rolled");
    let seg = &closed[1];
    let last = *record_offsets(seg).last().unwrap();
    flip_byte(seg, last + 40);
    match reopen(dir.path(), 4096) {
        Err(StorageError::Corruption { path, .. }) => assert_eq!(&path, seg),
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[test]
fn missing_closed_segment_is_reported() {
    let dir = write_log(100, 4096);
    let (closed, _) = segment_files(dir.path());
    fs::remove_file(&closed[1]).unwrap();
    assert!(matches!(
        reopen(dir.path(), 4096),
        Err(StorageError::Corruption { .. })
    ));
}

#[test]
fn truncated_closed_segment_is_reported() {
    let dir = write_log(100, 4096);
    let (closed, _) = segment_files(dir.path());
    let len = fs::metadata(&closed[0]).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&closed[0])
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    assert!(matches!(
        reopen(dir.path(), 4096),
        Err(StorageError::Corruption { .. })
    ));
}

#[test]
fn compaction_removes_segment_files_and_survives_restart() {
    let dir = write_log(300, 4096);
    let before: u64 = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let mut log = reopen(dir.path(), 4096).unwrap();
    log.truncate_prefix(281).unwrap();
    drop(log);
    let after: u64 = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        after * 5 < before,
        "compaction should free most of the disk ({before} -> {after} bytes)"
    );
    let log = reopen(dir.path(), 4096).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (281, 300));
    assert_eq!(log.term(280), Some(1));
}
