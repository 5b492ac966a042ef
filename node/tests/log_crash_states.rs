//! Crash states of the `local://` log (issue 17, item 8).
//!
//! Appends are written without an fsync between batches, so after a power
//! loss any subset of the pages written since the last completed sync may be
//! lost. The in-progress segment is preallocated, so a lost page reads back
//! as zeros. These tests replay small write sequences, build every such crash
//! image of the in-progress segment and check that each one opens with all
//! synced entries, while damage inside synced data is still refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use raft::eraftpb::Entry;
use raftkit_node::error::StorageError;
use raftkit_node::storage::local_log::LocalLog;
use raftkit_node::storage::{LogStorage, StorageOptions};

/// Page size of the crash model: a page is written back whole or not at all.
const PAGE: usize = 4096;
/// Segment size: large enough that no sequence here rolls a segment.
const SEGMENT: u64 = 64 << 10;
/// Most pages after the synced frontier a sequence may leave (2^7 states).
const MAX_PAGES: usize = 7;

/// Options of every log in these tests.
fn opts() -> StorageOptions {
    StorageOptions {
        sync: true,
        max_segment_bytes: SEGMENT,
    }
}

/// Entry `index` of `term` with a ~3000-byte payload derived from both, so a
/// batch of two or three spans several pages.
fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: (0..3000u64)
            .map(|i| (index * 31 + term * 7 + i) as u8)
            .collect::<Vec<_>>()
            .into(),
        ..Default::default()
    }
}

/// Entries `range` of `term`.
fn ents(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| ent(i, term)).collect()
}

/// One step of a write sequence.
enum Step {
    /// `LogStorage::append` of one batch.
    Append(Vec<Entry>),
    /// `LogStorage::sync`.
    Sync,
    /// `LogStorage::truncate_suffix` (a conflict reaching into synced data).
    TruncateSuffix(u64),
}

/// The state a write sequence left when the process "lost power".
struct Crash {
    /// Every file of the log directory as the page cache held it.
    files: Vec<(String, Vec<u8>)>,
    /// Name of the in-progress segment among `files`.
    segment: String,
    /// Bytes of the in-progress segment that a completed sync made durable.
    synced: usize,
    /// Where the written records end in the in-progress segment.
    written: usize,
    /// The last entry a completed sync made durable.
    durable_last: u64,
    /// The log's entries (from index 1) when the power went.
    expected: Vec<Entry>,
}

/// Runs `steps` on a new log and captures the crash state before the log is
/// dropped (nothing the process did after the last step reaches the disk).
fn run(steps: &[Step]) -> Crash {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LocalLog::open(dir.path(), opts()).unwrap();
    let mut expected: Vec<Entry> = Vec::new();
    let (mut synced, mut durable_last) = (0usize, 0u64);
    for step in steps {
        match step {
            Step::Append(batch) => {
                let first = batch[0].index;
                assert!(
                    first > durable_last,
                    "a conflict into synced data goes through TruncateSuffix"
                );
                expected.truncate((first - 1) as usize);
                expected.extend(batch.iter().cloned());
                log.append(batch).unwrap();
            }
            Step::Sync => {
                log.sync().unwrap();
                synced = log.disk_bytes() as usize;
                durable_last = log.last_index();
            }
            Step::TruncateSuffix(last_kept) => {
                log.truncate_suffix(*last_kept).unwrap();
                expected.truncate(*last_kept as usize);
                synced = synced.min(log.disk_bytes() as usize);
                durable_last = durable_last.min(*last_kept);
            }
        }
    }
    assert_eq!(
        log.segment_count(),
        1,
        "the sequence must not roll a segment"
    );
    let written = log.disk_bytes() as usize;
    let mut files = Vec::new();
    let mut segment = None;
    for e in fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("log_inprogress_") {
            segment = Some(name.clone());
        }
        files.push((name, fs::read(&p).unwrap()));
    }
    drop(log);
    Crash {
        files,
        segment: segment.expect("an in-progress segment"),
        synced,
        written,
        durable_last,
        expected,
    }
}

/// What a lost page reads back as.
#[derive(Clone, Copy, Debug)]
enum Lost {
    /// The preallocated zeros (a write that never reached the disk).
    Zeros,
    /// Garbage (a write the device tore).
    Garbage,
}

/// The in-progress segment's image when the pages in `mask` (numbered from
/// the page holding the synced frontier) were lost: their unsynced part
/// reads as `lost`.
fn crash_image(c: &Crash, mask: u32, lost: Lost) -> Vec<u8> {
    let mut image = segment_bytes(c).to_vec();
    let first_page = c.synced / PAGE;
    for bit in 0..page_count(c) {
        if mask & (1 << bit) == 0 {
            continue;
        }
        let page = first_page + bit;
        let lo = (page * PAGE).max(c.synced);
        let hi = ((page + 1) * PAGE).min(image.len());
        for (i, b) in image[lo..hi].iter_mut().enumerate() {
            *b = match lost {
                Lost::Zeros => 0,
                Lost::Garbage => (lo + i).wrapping_mul(2_654_435_761) as u8 | 1,
            };
        }
    }
    image
}

/// The in-progress segment as the process left it.
fn segment_bytes(c: &Crash) -> &[u8] {
    &c.files.iter().find(|(n, _)| *n == c.segment).unwrap().1
}

/// Pages wholly or partly after the synced frontier that hold written data.
fn page_count(c: &Crash) -> usize {
    let n = c.written.div_ceil(PAGE) - c.synced / PAGE;
    assert!(
        (1..=MAX_PAGES).contains(&n),
        "{n} unsynced pages; keep the sequence small"
    );
    n
}

/// Writes the crash state with `image` as the in-progress segment into a
/// fresh directory.
fn materialize(c: &Crash, image: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in &c.files {
        let data = if *name == c.segment { image } else { data };
        fs::write(dir.path().join(name), data).unwrap();
    }
    dir
}

/// Opens the crash state `image` and checks what the log recovered: every
/// durable entry, then a contiguous prefix of the rest, all intact, and a log
/// that keeps working. Returns why not.
fn check_recovery(c: &Crash, image: &[u8]) -> Result<(), String> {
    let dir = materialize(c, image);
    let mut log = LocalLog::open(dir.path(), opts()).map_err(|e| format!("open failed: {e}"))?;
    let last = log.last_index();
    if log.first_index() != 1 {
        return Err(format!("first index {}", log.first_index()));
    }
    if last < c.durable_last {
        return Err(format!(
            "recovered up to {last}, but {} was synced",
            c.durable_last
        ));
    }
    if last > c.expected.len() as u64 {
        return Err(format!(
            "recovered entries up to {last} that were never written"
        ));
    }
    let got = log.entries(1, last + 1, None).map_err(|e| e.to_string())?;
    if got != c.expected[..last as usize] {
        return Err("recovered entries differ from the written ones".to_string());
    }
    // The log keeps working from the cut, across another restart.
    let next = ent(last + 1, 9);
    log.append(std::slice::from_ref(&next))
        .map_err(|e| e.to_string())?;
    log.sync().map_err(|e| e.to_string())?;
    drop(log);
    let log = LocalLog::open(dir.path(), opts()).map_err(|e| format!("reopen failed: {e}"))?;
    let mut want = c.expected[..last as usize].to_vec();
    want.push(next);
    if log.entries(1, last + 2, None).map_err(|e| e.to_string())? != want {
        return Err("entries after the cut and a new append differ".to_string());
    }
    Ok(())
}

/// The write sequences whose crash states are enumerated.
fn sequences() -> Vec<(&'static str, Vec<Step>)> {
    use Step::*;
    vec![
        (
            "A synced; B, C unsynced",
            vec![
                Append(ents(1..=2, 1)),
                Sync,
                Append(ents(3..=4, 1)),
                Append(ents(5..=6, 1)),
            ],
        ),
        (
            "A synced; B, C, D unsynced",
            vec![
                Append(ents(1..=2, 1)),
                Sync,
                Append(ents(3..=4, 1)),
                Append(ents(5..=6, 1)),
                Append(ents(7..=8, 1)),
            ],
        ),
        (
            "A, B synced; C, D unsynced",
            vec![
                Append(ents(1..=2, 1)),
                Sync,
                Append(ents(3..=4, 1)),
                Sync,
                Append(ents(5..=6, 1)),
                Append(ents(7..=8, 1)),
            ],
        ),
        (
            "A synced; single-entry batches B, C, D, E unsynced",
            vec![
                Append(ents(1..=3, 1)),
                Sync,
                Append(ents(4..=4, 1)),
                Append(ents(5..=5, 1)),
                Append(ents(6..=6, 1)),
                Append(ents(7..=7, 1)),
            ],
        ),
        (
            "A synced; B unsynced, then a conflict replaces part of B",
            vec![
                Append(ents(1..=2, 1)),
                Sync,
                Append(ents(3..=5, 1)),
                Append(ents(4..=6, 2)),
            ],
        ),
        (
            "A, B synced; a conflict cuts into B and C replaces it",
            vec![
                Append(ents(1..=3, 1)),
                Sync,
                Append(ents(4..=5, 1)),
                Sync,
                TruncateSuffix(2),
                Append(ents(3..=5, 2)),
            ],
        ),
    ]
}

/// Checks every crash state of every sequence, losing pages as `lost`, and
/// fails with all the states that did not recover.
fn every_crash_state_recovers(lost: Lost) {
    let mut failures = Vec::new();
    let mut states = 0;
    for (name, steps) in sequences() {
        let c = run(&steps);
        for mask in 0..1u32 << page_count(&c) {
            states += 1;
            if let Err(e) = check_recovery(&c, &crash_image(&c, mask, lost)) {
                failures.push(format!("{name}, lost pages {mask:#b} ({lost:?}): {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {states} crash states did not recover:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_crash_state_of_unsynced_pages_recovers_the_synced_entries() {
    every_crash_state_recovers(Lost::Zeros);
}

#[test]
fn torn_pages_full_of_garbage_are_cut_like_lost_ones() {
    every_crash_state_recovers(Lost::Garbage);
}

/// Offset, length and type byte of each record in a segment image (markers
/// included), up to the zeros after the last one.
fn records(image: &[u8]) -> Vec<(usize, usize, u8)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p + 28 <= image.len() && image[p..p + 28].iter().any(|&b| b != 0) {
        let len = 28 + u32::from_le_bytes(image[p..p + 4].try_into().unwrap()) as usize;
        if p + len > image.len() {
            break;
        }
        out.push((p, len, image[p + 4]));
        p += len;
    }
    out
}

/// Opens `image` and expects it refused as corruption at byte `at`.
fn expect_refused(c: &Crash, image: &[u8], at: usize, what: &str) {
    let dir = materialize(c, image);
    match LocalLog::open(dir.path(), opts()) {
        Err(StorageError::Corruption { offset, .. }) => {
            assert_eq!(offset, at as u64, "{what}: reported at the damaged record")
        }
        Err(e) => panic!("{what}: expected a corruption error, got {e}"),
        Ok(log) => panic!(
            "{what}: damage in synced data was accepted; the log opened up to {}",
            log.last_index()
        ),
    }
}

#[test]
fn damage_inside_synced_data_is_still_refused() {
    // A and B are synced one after the other, so the write of B recorded A
    // as durable; C and D are unsynced and lose any subset of their pages.
    use Step::*;
    let c = run(&[
        Append(ents(1..=2, 1)),
        Sync,
        Append(ents(3..=4, 1)),
        Sync,
        Append(ents(5..=6, 1)),
        Append(ents(7..=8, 1)),
    ]);
    // Records wholly inside A (entries 1 and 2 and anything framed before them).
    let image = segment_bytes(&c).to_vec();
    let in_a: Vec<(usize, usize)> = records(&image)
        .into_iter()
        .filter(|&(off, len, _)| off + len <= entry_end(&image, 2))
        .map(|(off, len, _)| (off, len))
        .collect();
    assert!(in_a.len() >= 2);
    for mask in 0..1u32 << page_count(&c) {
        for &(off, len) in &in_a {
            let mut damaged = crash_image(&c, mask, Lost::Zeros);
            damaged[off + len / 2] ^= 0x5a;
            expect_refused(
                &c,
                &damaged,
                off,
                &format!("flip in the record at {off}, lost pages {mask:#b}"),
            );
        }
    }
}

/// Where the record of entry `index` ends in a segment image.
fn entry_end(image: &[u8], index: u64) -> usize {
    records(image)
        .into_iter()
        .find(|&(off, _, typ)| {
            typ != 3 && u64::from_le_bytes(image[off + 16..off + 24].try_into().unwrap()) == index
        })
        .map(|(off, len, _)| off + len)
        .expect("the entry's record")
}

#[test]
fn damage_in_synced_batches_followed_by_a_later_write_is_refused() {
    // Every batch but the last was synced and then followed by another write.
    use Step::*;
    let c = run(&[
        Append(ents(1..=2, 1)),
        Sync,
        Append(ents(3..=4, 1)),
        Sync,
        Append(ents(5..=6, 1)),
        Sync,
        Append(ents(7..=7, 1)),
    ]);
    let image = segment_bytes(&c).to_vec();
    let end = entry_end(&image, 6);
    for (off, len, _) in records(&image) {
        if off + len > end {
            continue;
        }
        let mut damaged = image.clone();
        damaged[off + len / 2] ^= 0x5a;
        expect_refused(&c, &damaged, off, &format!("flip in the record at {off}"));
    }
}

/// Index of the entry record at `off` of a segment image.
fn index_at(image: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(image[off + 16..off + 24].try_into().unwrap())
}

#[test]
fn damage_in_the_last_synced_batch_reads_as_a_torn_tail_after_a_crash() {
    // The documented residual risk: B was synced, but the process died before
    // anything recorded that, so damage in B cannot be told from a torn
    // unsynced B. It is cut (B's entries were acknowledged and are lost).
    use Step::*;
    let c = run(&[Append(ents(1..=2, 1)), Sync, Append(ents(3..=4, 1)), Sync]);
    let mut image = segment_bytes(&c).to_vec();
    let (off, len, _) = records(&image)
        .into_iter()
        .find(|&(off, _, typ)| typ != 3 && index_at(&image, off) == 3)
        .unwrap();
    image[off + len / 2] ^= 0x5a;
    let dir = materialize(&c, &image);
    let log = LocalLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.last_index(), 2);
}

#[test]
fn a_clean_close_records_the_frontier_so_damage_in_the_last_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LocalLog::open(dir.path(), opts()).unwrap();
    log.append(&ents(1..=2, 1)).unwrap();
    log.sync().unwrap();
    log.append(&ents(3..=4, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let path = in_progress(dir.path());
    let mut image = fs::read(&path).unwrap();
    let (off, len, _) = records(&image)
        .into_iter()
        .find(|&(off, _, typ)| typ != 3 && index_at(&image, off) == 4)
        .unwrap();
    image[off + len / 2] ^= 0x5a;
    fs::write(&path, &image).unwrap();
    match LocalLog::open(dir.path(), opts()) {
        Err(StorageError::Corruption { offset, reason, .. }) => {
            assert_eq!(offset, off as u64);
            assert!(reason.contains("records as fsynced"), "{reason}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

/// The in-progress segment file of the log in `dir`.
fn in_progress(dir: &std::path::Path) -> std::path::PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("log_inprogress_")
        })
        .expect("an in-progress segment")
}

/// Number of sync markers in a segment image.
fn marker_count(image: &[u8]) -> usize {
    records(image).iter().filter(|r| r.2 == 3).count()
}

#[test]
fn a_marker_is_written_only_when_a_sync_moved_the_frontier() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LocalLog::open(dir.path(), opts()).unwrap();
    let path = in_progress(dir.path());
    assert_eq!(
        marker_count(&fs::read(&path).unwrap()),
        1,
        "the leading marker"
    );
    // Group commit: three batches, one sync; nothing synced before them.
    log.append(&ents(1..=1, 1)).unwrap();
    log.append(&ents(2..=2, 1)).unwrap();
    log.append(&ents(3..=3, 1)).unwrap();
    log.sync().unwrap();
    assert_eq!(marker_count(&fs::read(&path).unwrap()), 1);
    // The first batch after that sync records it; the next ones do not.
    log.append(&ents(4..=4, 1)).unwrap();
    log.append(&ents(5..=5, 1)).unwrap();
    assert_eq!(marker_count(&fs::read(&path).unwrap()), 2);
    // A sync with nothing new to cover moves nothing.
    log.sync().unwrap();
    log.sync().unwrap();
    log.append(&ents(6..=6, 1)).unwrap();
    assert_eq!(marker_count(&fs::read(&path).unwrap()), 3);
    log.sync().unwrap();
    // A clean close records the last sync once; reopening and closing again
    // with nothing new adds nothing.
    drop(log);
    assert_eq!(marker_count(&fs::read(&path).unwrap()), 4);
    drop(LocalLog::open(dir.path(), opts()).unwrap());
    assert_eq!(marker_count(&fs::read(&path).unwrap()), 4);
    let log = LocalLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.entries(1, 7, None).unwrap(), ents(1..=6, 1));
}

/// A sync marker as the codec frames it, for forging one.
fn forged_marker(nonce: u64, synced: u64) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&16u32.to_le_bytes());
    m.push(3);
    m.extend_from_slice(&[0; 3 + 8 + 8]);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&m),
        &[nonce.to_le_bytes(), synced.to_le_bytes()].concat(),
    );
    m.extend_from_slice(&crc.to_le_bytes());
    m.extend_from_slice(&nonce.to_le_bytes());
    m.extend_from_slice(&synced.to_le_bytes());
    m
}

#[test]
fn marker_shaped_bytes_in_an_entry_payload_do_not_count() {
    // A client's entry carries a well-formed marker claiming that the start
    // of its own (unsynced) batch was synced. Its nonce is not the segment's,
    // so a torn start of that batch is still cut, not refused.
    let dir = tempfile::tempdir().unwrap();
    let mut log = LocalLog::open(dir.path(), opts()).unwrap();
    log.append(&ents(1..=2, 1)).unwrap();
    log.sync().unwrap();
    let batch_start = log.disk_bytes();
    let mut data = vec![7u8; 500];
    data.extend(forged_marker(0x0123_4567_89ab_cdef, batch_start + 1));
    data.extend(vec![7u8; 500]);
    let evil = Entry {
        index: 3,
        term: 1,
        data: data.into(),
        ..Default::default()
    };
    log.append(&[evil, ent(4, 1)]).unwrap();
    let path = in_progress(dir.path());
    let mut image = fs::read(&path).unwrap();
    std::mem::forget(log); // the power goes
                           // The batch's first bytes never reached the disk.
    image[batch_start as usize..batch_start as usize + 10].fill(0);
    fs::write(&path, &image).unwrap();
    let log = LocalLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.last_index(), 2);
}

/// A log holding entries 1..=6 in an in-progress segment as the code before
/// sync markers wrote it (entries only, preallocated), after `damage` got the
/// image and the offset and length of each record.
fn write_old_format<F: Fn(&mut Vec<u8>, &[(usize, usize)])>(damage: F) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LocalLog::open(dir.path(), opts()).unwrap();
    log.append(&ents(1..=6, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let path = in_progress(dir.path());
    let image = fs::read(&path).unwrap();
    let mut old = Vec::new();
    let mut entries = Vec::new();
    for (off, len, typ) in records(&image) {
        if typ != 3 {
            entries.push((old.len(), len));
            old.extend_from_slice(&image[off..off + len]);
        }
    }
    old.resize(image.len(), 0);
    damage(&mut old, &entries);
    fs::write(&path, &old).unwrap();
    dir
}

#[test]
fn segments_without_markers_keep_the_old_rule_and_are_closed_on_open() {
    // Damage followed by a valid record: refused, as before.
    let dir = write_old_format(|img, recs| img[recs[2].0 + 100] ^= 0x5a);
    match LocalLog::open(dir.path(), opts()) {
        Err(StorageError::Corruption { reason, .. }) => {
            assert!(reason.contains("followed by a valid record"), "{reason}")
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }

    // A torn last record: cut, and the old segment is closed so that new
    // appends go to a segment with markers.
    let dir = write_old_format(|img, recs| {
        let (off, len) = recs[5];
        img[off + 40..off + len].fill(0);
    });
    let mut log = LocalLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.last_index(), 5);
    assert_eq!(log.segment_count(), 2);
    let image = fs::read(in_progress(dir.path())).unwrap();
    assert_eq!(
        image[4], 3,
        "the new in-progress segment starts with a marker"
    );
    log.append(&ents(6..=7, 2)).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = LocalLog::open(dir.path(), opts()).unwrap();
    let mut want = ents(1..=5, 1);
    want.extend(ents(6..=7, 2));
    assert_eq!(log.entries(1, 8, None).unwrap(), want);
}
