//! The storage conformance suite: one set of behaviours every log, meta and
//! snapshot backend must have. Public, so a backend registered outside the
//! engine (`raftkit_node::storage::register_*`) can run it too:
//!
//! ```text
//! struct Mine(tempfile::TempDir);
//! impl raftkit_testkit::conformance::Backend for Mine {
//!     fn uri(&self) -> String { format!("mine://{}", self.0.path().display()) }
//! }
//! raftkit_testkit::storage_conformance_suite!(mine, Mine(tempfile::tempdir().unwrap()));
//! ```
//!
//! Each check takes a [`Backend`] that names a fresh storage URI (reopened
//! by URI, to check what survives).

use raft::eraftpb::Entry;
use raftkit_node::error::{PeerId, StorageError};
use raftkit_node::storage::{self, LogStorage, RaftMeta, SnapshotMeta, StorageOptions};

/// Creates a fresh storage URI for one test and reopens the same one.
pub trait Backend {
    fn uri(&self) -> String;
}

/// The engine's `memory://` backend.
pub struct Memory(String);
/// The engine's `local://` backend, in a temporary directory.
pub struct Local(tempfile::TempDir);

impl Backend for Memory {
    fn uri(&self) -> String {
        format!("memory://{}", self.0)
    }
}

impl Backend for Local {
    fn uri(&self) -> String {
        format!("local://{}", self.0.path().display())
    }
}

/// A fresh `memory://` instance.
pub fn memory() -> Memory {
    Memory(format!("conformance-{:016x}", rand::random::<u64>()))
}

/// A fresh `local://` directory.
pub fn local() -> Local {
    Local(tempfile::tempdir().unwrap())
}

fn opts() -> StorageOptions {
    // Small segments so the local backend rolls files during the tests.
    StorageOptions {
        sync: true,
        max_segment_bytes: 4096,
    }
}

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("data-{index}-{term}-{}", "x".repeat(100))
            .into_bytes()
            .into(),
        ..Default::default()
    }
}

fn ents(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| ent(i, term)).collect()
}

fn open_log(b: &dyn Backend) -> Box<dyn LogStorage> {
    storage::open_log_storage(&b.uri(), &opts()).unwrap()
}

fn indexes_terms(log: &dyn LogStorage) -> Vec<(u64, u64)> {
    if log.last_index() < log.first_index() {
        return vec![];
    }
    log.entries(log.first_index(), log.last_index() + 1, None)
        .unwrap()
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
}

pub fn empty_log_starts_at_one(b: &dyn Backend) {
    let log = open_log(b);
    assert_eq!(log.first_index(), 1);
    assert_eq!(log.last_index(), 0);
    assert_eq!(log.term(0), Some(0));
    assert_eq!(log.term(1), None);
}

pub fn append_and_read(b: &dyn Backend) {
    let mut log = open_log(b);
    log.append(&ents(1..=100, 1)).unwrap();
    log.sync().unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, 100));
    assert_eq!(log.term(57), Some(1));
    let got = log.entries(10, 20, None).unwrap();
    assert_eq!(got.len(), 10);
    assert_eq!(got[0], ent(10, 1));
    assert_eq!(got[9], ent(19, 1));
    // max_size limits the batch but always returns at least one entry.
    assert_eq!(log.entries(10, 20, Some(1)).unwrap().len(), 1);
    let one = protobuf::Message::compute_size(&ent(10, 1)) as u64;
    assert_eq!(log.entries(10, 20, Some(one * 3)).unwrap().len(), 3);
    assert!(matches!(
        log.entries(100, 102, None),
        Err(StorageError::Unavailable { .. })
    ));
}

pub fn conflicting_append_replaces_the_suffix(b: &dyn Backend) {
    let mut log = open_log(b);
    log.append(&ents(1..=50, 1)).unwrap();
    log.append(&ents(30..=35, 2)).unwrap();
    log.sync().unwrap();
    assert_eq!(log.last_index(), 35);
    assert_eq!(log.term(29), Some(1));
    assert_eq!(log.term(30), Some(2));
    assert_eq!(log.term(36), None);
    drop(log);
    let log = open_log(b);
    let it = indexes_terms(log.as_ref());
    assert_eq!(it.len(), 35);
    assert!(it[..29].iter().all(|(_, t)| *t == 1) && it[29..].iter().all(|(_, t)| *t == 2));
}

pub fn gaps_and_overwriting_compacted_entries_are_refused(b: &dyn Backend) {
    let mut log = open_log(b);
    log.append(&ents(1..=10, 1)).unwrap();
    assert!(
        log.append(&ents(12..=13, 1)).is_err(),
        "a gap must be refused"
    );
    let mut bad = ents(11..=12, 1);
    bad[1].index = 14;
    assert!(
        log.append(&bad).is_err(),
        "non-contiguous entries must be refused"
    );
    log.truncate_prefix(6).unwrap();
    assert!(
        log.append(&ents(3..=4, 2)).is_err(),
        "overwriting compacted entries must be refused"
    );
    assert_eq!(log.last_index(), 10);
}

pub fn truncate_suffix_and_prefix(b: &dyn Backend) {
    let mut log = open_log(b);
    log.append(&ents(1..=80, 1)).unwrap();
    log.append(&ents(81..=100, 2)).unwrap();
    log.truncate_suffix(90).unwrap();
    log.truncate_prefix(41).unwrap();
    log.sync().unwrap();
    assert_eq!((log.first_index(), log.last_index()), (41, 90));
    assert_eq!(
        log.term(40),
        Some(1),
        "the term before the first index stays known"
    );
    assert_eq!(log.term(39), None);
    assert!(matches!(
        log.entries(30, 50, None),
        Err(StorageError::Compacted(30))
    ));
    log.append(&ents(91..=95, 3)).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open_log(b);
    assert_eq!((log.first_index(), log.last_index()), (41, 95));
    assert_eq!(log.term(40), Some(1));
    assert_eq!(log.term(85), Some(2));
    assert_eq!(log.term(95), Some(3));
    assert_eq!(indexes_terms(log.as_ref()).len(), 55);
}

pub fn compact_everything_then_continue(b: &dyn Backend) {
    let mut log = open_log(b);
    log.append(&ents(1..=20, 4)).unwrap();
    log.truncate_prefix(21).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (21, 20));
    assert_eq!(log.term(20), Some(4));
    log.append(&ents(21..=22, 5)).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open_log(b);
    assert_eq!((log.first_index(), log.last_index()), (21, 22));
    assert_eq!(log.term(20), Some(4));
}

pub fn reset_starts_over_after_a_snapshot(b: &dyn Backend) {
    let mut log = open_log(b);
    log.append(&ents(1..=30, 1)).unwrap();
    log.reset(501, 7).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (501, 500));
    assert_eq!(log.term(500), Some(7));
    log.append(&ents(501..=505, 8)).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open_log(b);
    assert_eq!((log.first_index(), log.last_index()), (501, 505));
    assert_eq!(log.term(500), Some(7));
    assert_eq!(log.entries(501, 506, None).unwrap()[4], ent(505, 8));
}

pub fn synced_entries_survive_reopen(b: &dyn Backend) {
    let mut log = open_log(b);
    for batch in 0..10u64 {
        log.append(&ents(batch * 30 + 1..=batch * 30 + 30, 1 + batch / 3))
            .unwrap();
        log.sync().unwrap();
    }
    let before = log.entries(1, 301, None).unwrap();
    drop(log);
    let log = open_log(b);
    assert_eq!(log.entries(1, 301, None).unwrap(), before);
}

pub fn meta_round_trips(b: &dyn Backend) {
    let mut m = storage::open_meta_storage(&b.uri(), &opts()).unwrap();
    assert_eq!(m.load().unwrap(), None);
    let meta = RaftMeta {
        peer_id: 42,
        term: 7,
        vote: 3,
        commit: 100,
        applied: 99,
        initial_conf: vec![PeerId {
            id: 42,
            addr: "a:1".into(),
        }],
        cluster_id: 0x5eed,
        log_format: 2,
        cluster_format: 2,
    };
    m.save(&meta).unwrap();
    m.save(&RaftMeta {
        term: 8,
        ..meta.clone()
    })
    .unwrap();
    drop(m);
    let m = storage::open_meta_storage(&b.uri(), &opts()).unwrap();
    assert_eq!(m.load().unwrap(), Some(RaftMeta { term: 8, ..meta }));
}

pub fn snapshots_publish_and_replace(b: &dyn Backend) {
    let s = storage::open_snapshot_storage(&b.uri(), &opts()).unwrap();
    assert!(s.latest().unwrap().is_none());
    for (index, body) in [(10u64, b"ten".as_slice()), (20, b"twenty")] {
        let mut w = s
            .begin(SnapshotMeta {
                index,
                term: 2,
                ..Default::default()
            })
            .unwrap();
        w.write_file("state", body).unwrap();
        let mut f = w.create_file("extra").unwrap();
        std::io::Write::write_all(&mut f, b"more").unwrap();
        f.finish().unwrap();
        publish(w).unwrap();
    }
    let r = s.latest().unwrap().unwrap();
    assert_eq!((r.meta().index, r.meta().term), (20, 2));
    assert_eq!(r.read_file("state").unwrap(), b"twenty");
    assert_eq!(r.read_file("extra").unwrap(), b"more");
    assert_eq!(r.meta().files.len(), 2);
    assert!(r.read_file("missing").is_err());
}

pub fn large_snapshot_files_read_back_whole(b: &dyn Backend) {
    // Bigger than the slice the local backend fsyncs at, written in odd-sized pieces.
    let s = storage::open_snapshot_storage(&b.uri(), &opts()).unwrap();
    let body = big((7 << 19) + 123, 5);
    let mut w = s
        .begin(SnapshotMeta {
            index: 7,
            term: 1,
            ..Default::default()
        })
        .unwrap();
    let mut f = w.create_file("state").unwrap();
    for piece in body.chunks(7001) {
        std::io::Write::write_all(&mut f, piece).unwrap();
    }
    f.finish().unwrap();
    publish(w).unwrap();
    let r = s.latest().unwrap().unwrap();
    assert_eq!(r.read_file("state").unwrap(), body);
}

pub fn unfinished_or_abandoned_snapshots_are_never_published(b: &dyn Backend) {
    let s = storage::open_snapshot_storage(&b.uri(), &opts()).unwrap();
    let mut w = s
        .begin(SnapshotMeta {
            index: 5,
            term: 1,
            ..Default::default()
        })
        .unwrap();
    w.write_file("state", b"five").unwrap();
    publish(w).unwrap();
    // A file created but never finished fails the snapshot.
    let mut w = s
        .begin(SnapshotMeta {
            index: 9,
            term: 1,
            ..Default::default()
        })
        .unwrap();
    let _f = w.create_file("state").unwrap();
    assert!(publish(w).is_err());
    // A writer dropped without publishing leaves nothing.
    let mut w = s
        .begin(SnapshotMeta {
            index: 11,
            term: 1,
            ..Default::default()
        })
        .unwrap();
    w.write_file("state", b"eleven").unwrap();
    drop(w);
    assert_eq!(s.latest().unwrap().unwrap().meta().index, 5);
    // Bad names are refused.
    let mut w = s
        .begin(SnapshotMeta {
            index: 12,
            term: 1,
            ..Default::default()
        })
        .unwrap();
    assert!(w.create_file("../escape").is_err());
    assert!(w.create_file("__raftkit_snapshot_meta").is_err());
}

/// A published snapshot on one backend, to be received by another.
fn source_snapshot(index: u64, files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, SnapshotMeta) {
    let dir = tempfile::tempdir().unwrap();
    let s = storage::open_snapshot_storage(&format!("local://{}", dir.path().display()), &opts())
        .unwrap();
    let mut w = s
        .begin(SnapshotMeta {
            index,
            term: 3,
            ..Default::default()
        })
        .unwrap();
    for (name, data) in files {
        w.write_file(name, data).unwrap();
    }
    let meta = publish(w).unwrap();
    (dir, meta)
}

fn big(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn incoming_snapshots_resume_and_publish(b: &dyn Backend) {
    let files = [("a", big(10_000, 1)), ("b", big(2_500, 2))];
    let (_src, meta) = source_snapshot(40, &files);
    let s = storage::open_snapshot_storage(&b.uri(), &opts()).unwrap();
    let mut inc = s.open_incoming(&meta).unwrap();
    assert_eq!(
        inc.held_all(),
        vec![("a".to_string(), 0), ("b".to_string(), 0)]
    );
    inc.append("a", 0, &files[0].1[..4000]).unwrap();
    drop(inc);
    // An interrupted transfer of the same snapshot resumes where it stopped.
    let mut inc = s.open_incoming(&meta).unwrap();
    assert_eq!(inc.held("a"), 4000);
    assert!(
        inc.append("a", 3000, &files[0].1[3000..5000]).is_err(),
        "overlapping chunk accepted"
    );
    assert!(
        inc.append("a", 4000, &big(7000, 9)).is_err(),
        "chunk past the end accepted"
    );
    assert!(
        inc.append("zzz", 0, b"x").is_err(),
        "chunk of an unknown file accepted"
    );
    inc.append("a", 4000, &files[0].1[4000..]).unwrap();
    inc.append("b", 0, &files[1].1).unwrap();
    assert!(inc.is_complete());
    assert_eq!(inc.progress(), (12_500, 12_500));
    let r = inc.publish().unwrap();
    assert_eq!(r.meta().index, 40);
    let latest = s.latest().unwrap().unwrap();
    assert_eq!(latest.meta().index, 40);
    assert_eq!(latest.read_file("a").unwrap(), files[0].1);
    assert_eq!(latest.read_file("b").unwrap(), files[1].1);
}

pub fn damaged_incoming_files_are_rejected_and_fetched_again(b: &dyn Backend) {
    let files = [("state", big(5_000, 7))];
    let (_src, meta) = source_snapshot(12, &files);
    let s = storage::open_snapshot_storage(&b.uri(), &opts()).unwrap();
    let mut inc = s.open_incoming(&meta).unwrap();
    let mut bad = files[0].1.clone();
    bad[1234] ^= 1;
    inc.append("state", 0, &bad).unwrap();
    assert!(matches!(
        inc.publish(),
        Err(StorageError::Corruption { .. })
    ));
    assert!(
        s.latest().unwrap().is_none(),
        "a damaged snapshot became visible"
    );
    let mut inc = s.open_incoming(&meta).unwrap();
    assert_eq!(
        inc.held("state"),
        0,
        "the damaged file must be fetched again"
    );
    inc.append("state", 0, &files[0].1).unwrap();
    inc.publish().unwrap();
    assert_eq!(
        s.latest().unwrap().unwrap().read_file("state").unwrap(),
        files[0].1
    );
}

pub fn a_different_incoming_snapshot_replaces_the_partial_one(b: &dyn Backend) {
    let (_s1, m1) = source_snapshot(10, &[("f", big(1000, 1))]);
    let (_s2, m2) = source_snapshot(20, &[("f", big(1000, 2))]);
    let s = storage::open_snapshot_storage(&b.uri(), &opts()).unwrap();
    let mut inc = s.open_incoming(&m1).unwrap();
    inc.append("f", 0, &big(1000, 1)[..500]).unwrap();
    let inc2 = s.open_incoming(&m2).unwrap();
    assert_eq!(inc2.held("f"), 0);
    let inc1 = s.open_incoming(&m1).unwrap();
    assert_eq!(inc1.held("f"), 0, "the older partial snapshot was dropped");
}

pub fn incoming_meta_with_hostile_file_names_is_refused(b: &dyn Backend) {
    let s = storage::open_snapshot_storage(&b.uri(), &opts()).unwrap();
    for name in ["../../etc/passwd", "/abs", "__raftkit_snapshot_meta", ""] {
        let meta = SnapshotMeta {
            index: 5,
            term: 1,
            files: vec![storage::snapshot::SnapshotFileMeta {
                name: name.into(),
                size: 1,
                crc32c: 0,
            }],
            ..Default::default()
        };
        assert!(
            s.open_incoming(&meta).is_err(),
            "file name {name:?} accepted"
        );
    }
}

/// Publishes through the engine's path (the writer's commit is crate-private;
/// the public way is `SnapshotDone`, exercised in cluster tests).
fn publish(w: storage::SnapshotWriter) -> Result<SnapshotMeta, StorageError> {
    storage::snapshot::publish_for_tests(w)
}

/// Instantiates every check of the suite as a `#[test]` in a module named
/// `$module`, each on a fresh backend made by `$make`.
#[macro_export]
macro_rules! storage_conformance_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            #[test]
            fn empty_log_starts_at_one() {
                $crate::conformance::empty_log_starts_at_one(&$make);
            }
            #[test]
            fn append_and_read() {
                $crate::conformance::append_and_read(&$make);
            }
            #[test]
            fn conflicting_append_replaces_the_suffix() {
                $crate::conformance::conflicting_append_replaces_the_suffix(&$make);
            }
            #[test]
            fn gaps_and_overwriting_compacted_entries_are_refused() {
                $crate::conformance::gaps_and_overwriting_compacted_entries_are_refused(&$make);
            }
            #[test]
            fn truncate_suffix_and_prefix() {
                $crate::conformance::truncate_suffix_and_prefix(&$make);
            }
            #[test]
            fn compact_everything_then_continue() {
                $crate::conformance::compact_everything_then_continue(&$make);
            }
            #[test]
            fn reset_starts_over_after_a_snapshot() {
                $crate::conformance::reset_starts_over_after_a_snapshot(&$make);
            }
            #[test]
            fn synced_entries_survive_reopen() {
                $crate::conformance::synced_entries_survive_reopen(&$make);
            }
            #[test]
            fn meta_round_trips() {
                $crate::conformance::meta_round_trips(&$make);
            }
            #[test]
            fn snapshots_publish_and_replace() {
                $crate::conformance::snapshots_publish_and_replace(&$make);
            }
            #[test]
            fn large_snapshot_files_read_back_whole() {
                $crate::conformance::large_snapshot_files_read_back_whole(&$make);
            }
            #[test]
            fn unfinished_or_abandoned_snapshots_are_never_published() {
                $crate::conformance::unfinished_or_abandoned_snapshots_are_never_published(&$make);
            }
            #[test]
            fn incoming_snapshots_resume_and_publish() {
                $crate::conformance::incoming_snapshots_resume_and_publish(&$make);
            }
            #[test]
            fn damaged_incoming_files_are_rejected_and_fetched_again() {
                $crate::conformance::damaged_incoming_files_are_rejected_and_fetched_again(&$make);
            }
            #[test]
            fn a_different_incoming_snapshot_replaces_the_partial_one() {
                $crate::conformance::a_different_incoming_snapshot_replaces_the_partial_one(&$make);
            }
            #[test]
            fn incoming_meta_with_hostile_file_names_is_refused() {
                $crate::conformance::incoming_meta_with_hostile_file_names_is_refused(&$make);
            }
        }
    };
}
