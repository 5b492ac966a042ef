//! The I/O thread of one group: the only writer of the [`LogStorage`].
//!
//! The raft thread keeps an in-memory view of the log (what raft-rs reads)
//! and hands every change to this thread in order. Each `Ready` becomes one
//! [`IoTask::Persist`]; the worker drains every queued task, writes them all
//! and fsyncs once (group commit across Readys), then reports the highest
//! Ready number it made durable together with the messages that had to wait
//! for it (raft-rs's async Ready: `advance_append_async` /
//! `on_persist_ready`). Meanwhile the raft thread keeps replicating and
//! counting acknowledgements: a leader writes to disk while it replicates.
//!
//! An I/O error is permanent ([`FailedLog`]): after a failed write or fsync
//! the log refuses every later write and sync, from this thread and from
//! [`IoWorker::write_now`] alike, and [`IoWorker::flush`] answers with the
//! error. Linux reports a writeback error to one fsync only: a later fsync
//! that succeeds says nothing about the data the failed one covered, so
//! nothing written after a failure may ever be reported durable (the
//! "fsyncgate" lesson of PostgreSQL). The raft loop stops the group on the
//! `Fatal` it is sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel as chan;
use parking_lot::Mutex;
use raft::eraftpb::{Entry, Message};

use crate::error::{RaftError, StorageError};
use crate::metrics::NodeMetrics;
use crate::raft_loop::{RaftInbox, RaftMsg};
use crate::storage::LogStorage;

/// Work for the I/O thread, applied in the order sent.
pub(crate) enum IoTask {
    /// The durable part of one Ready.
    Persist {
        number: u64,
        /// Drop every entry first; the next one is at `.0`, after term `.1`
        /// (a snapshot was installed).
        reset: Option<(u64, u64)>,
        entries: Vec<Entry>,
        /// Whether this Ready needs an fsync before its messages go out.
        sync: bool,
        /// Messages to send once this Ready is durable.
        messages: Vec<Message>,
    },
    /// Log compaction after a snapshot.
    TruncatePrefix(u64),
    /// Make everything so far durable and answer (bootstrap, shutdown).
    Flush(chan::Sender<Result<(), StorageError>>),
}

/// The log, and the first error it returned: once set, nothing more is
/// written or synced (see the module docs).
struct FailedLog {
    log: Box<dyn LogStorage>,
    failed: Option<String>,
}

impl FailedLog {
    /// Runs a batch unless the log has failed before; a failure now is
    /// remembered for good.
    fn run(
        &mut self,
        batch: Vec<IoTask>,
        metrics: &NodeMetrics,
    ) -> Result<Option<(u64, Vec<Message>)>, StorageError> {
        if let Some(e) = &self.failed {
            let err = refused(e);
            for task in batch {
                if let IoTask::Flush(reply) = task {
                    let _ = reply.send(Err(refused(e)));
                }
            }
            return Err(err);
        }
        run_batch(self.log.as_mut(), batch, metrics).inspect_err(|e| {
            self.failed = Some(e.to_string());
        })
    }
}

fn refused(first: &str) -> StorageError {
    StorageError::Invalid(format!(
        "the log failed earlier and refuses further writes: {first}"
    ))
}

/// Handle to the I/O thread.
pub(crate) struct IoWorker {
    tx: Option<chan::Sender<IoTask>>,
    /// Tasks are only taken from the queue under the log's lock, so a write
    /// made directly (`write_now`) never overtakes a queued one.
    rx: chan::Receiver<IoTask>,
    log: Arc<Mutex<FailedLog>>,
    metrics: Arc<NodeMetrics>,
    thread: Option<JoinHandle<()>>,
    /// Bytes the log occupies, updated after each batch.
    pub disk_bytes: Arc<AtomicU64>,
}

impl IoWorker {
    /// Starts the thread; completions go to the raft thread through `raft_tx`.
    pub fn start(
        group: &str,
        log: Box<dyn LogStorage>,
        raft_tx: Arc<RaftInbox>,
        metrics: Arc<NodeMetrics>,
    ) -> Result<IoWorker, RaftError> {
        let (tx, rx) = chan::unbounded::<IoTask>();
        let disk_bytes = Arc::new(AtomicU64::new(log.disk_bytes()));
        let log = Arc::new(Mutex::new(FailedLog { log, failed: None }));
        let bytes = disk_bytes.clone();
        let (thread_rx, thread_log, thread_metrics) = (rx.clone(), log.clone(), metrics.clone());
        let thread = std::thread::Builder::new()
            .name(format!("io-{group}"))
            .spawn(move || {
                let (rx, log, metrics) = (thread_rx, thread_log, thread_metrics);
                loop {
                    // Wait without taking: tasks are taken under the lock.
                    let mut sel = chan::Select::new();
                    sel.recv(&rx);
                    sel.ready();
                    let mut log = log.lock();
                    let mut batch = Vec::new();
                    loop {
                        match rx.try_recv() {
                            Ok(t) => batch.push(t),
                            Err(chan::TryRecvError::Empty) => break,
                            Err(chan::TryRecvError::Disconnected) => {
                                // The raft loop is gone: make what was written durable.
                                if log.failed.is_none() {
                                    let _ = log.log.sync();
                                }
                                return;
                            }
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let failed_before = log.failed.is_some();
                    match log.run(batch, &metrics) {
                        Ok(Some((number, messages))) => {
                            let _ = raft_tx.send(RaftMsg::Persisted { number, messages });
                        }
                        Ok(None) => {}
                        // Reported once; later tasks are refused (flushes
                        // answered with the error) until the loop goes away.
                        Err(e) if !failed_before => {
                            let _ = raft_tx.send(RaftMsg::Fatal(e.into()));
                        }
                        Err(_) => {}
                    }
                    bytes.store(log.log.disk_bytes(), Ordering::Relaxed);
                }
            })
            .map_err(|e| RaftError::Storage(format!("spawning the I/O thread: {e}")))?;
        Ok(IoWorker {
            tx: Some(tx),
            rx,
            log,
            metrics,
            thread: Some(thread),
            disk_bytes,
        })
    }

    /// Writes (and fsyncs) `task` on the calling thread if the I/O thread
    /// is idle and nothing is queued, returning the Ready number and the
    /// messages that waited for it; otherwise hands the task back.
    pub fn write_now(&self, task: IoTask) -> Result<Option<(u64, Vec<Message>)>, IoNow> {
        if !self.rx.is_empty() {
            return Err(IoNow::Busy(task));
        }
        let Some(mut log) = self.log.try_lock() else {
            return Err(IoNow::Busy(task));
        };
        if !self.rx.is_empty() {
            return Err(IoNow::Busy(task));
        }
        let r = log.run(vec![task], &self.metrics).map_err(IoNow::Failed)?;
        self.disk_bytes
            .store(log.log.disk_bytes(), Ordering::Relaxed);
        Ok(r)
    }

    pub fn send(&self, task: IoTask) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(task);
        }
    }

    /// Waits until everything sent so far is durable. Answers at once with
    /// the error once the log has failed (the worker answers flushes it
    /// cannot honour, so this never waits on a dead log).
    pub fn flush(&self) -> Result<(), RaftError> {
        if let Some(e) = &self.log.lock().failed {
            return Err(refused(e).into());
        }
        let (tx, rx) = chan::bounded(1);
        self.send(IoTask::Flush(tx));
        rx.recv()
            .map_err(|_| RaftError::Storage("the I/O thread stopped".into()))?
            .map_err(RaftError::from)
    }

    /// Stops the thread after it has made everything durable.
    pub fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for IoWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why [`IoWorker::write_now`] did not write.
pub(crate) enum IoNow {
    /// The I/O thread is working or has work queued: queue the task.
    Busy(IoTask),
    Failed(StorageError),
}

/// Writes a batch of tasks and fsyncs once; returns the highest Ready
/// number made durable and the messages that waited for it.
fn run_batch(
    log: &mut dyn LogStorage,
    batch: Vec<IoTask>,
    metrics: &NodeMetrics,
) -> Result<Option<(u64, Vec<Message>)>, StorageError> {
    let mut need_sync = false;
    let mut done_number = None;
    let mut messages = Vec::new();
    let mut flushes = Vec::new();
    for task in batch {
        match task {
            IoTask::Persist {
                number,
                reset,
                entries,
                sync,
                messages: m,
            } => {
                if let Some((next, term)) = reset {
                    log.reset(next, term)?;
                    need_sync = true;
                }
                if !entries.is_empty() {
                    log.append(&entries)?;
                }
                need_sync |= sync;
                done_number = Some(number);
                messages.extend(m);
            }
            IoTask::TruncatePrefix(first) => log.truncate_prefix(first)?,
            IoTask::Flush(reply) => {
                need_sync = true;
                flushes.push(reply);
            }
        }
    }
    if need_sync {
        let started = Instant::now();
        log.sync()?;
        metrics.fsync_seconds.observe(started.elapsed());
    }
    for f in flushes {
        let _ = f.send(Ok(()));
    }
    Ok(done_number.map(|n| (n, messages)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A log whose first fsync fails, as a disk's writeback error does:
    /// Linux reports it to one fsync, and the next one succeeds although
    /// the data the failed one covered may be gone.
    #[derive(Default)]
    struct FsyncFailsOnce {
        entries: Vec<Entry>,
        syncs: usize,
    }

    impl LogStorage for FsyncFailsOnce {
        fn first_index(&self) -> u64 {
            1
        }
        fn last_index(&self) -> u64 {
            self.entries.len() as u64
        }
        fn term(&self, index: u64) -> Option<u64> {
            let i = usize::try_from(index.checked_sub(1)?).ok()?;
            self.entries.get(i).map(|e| e.term)
        }
        fn entries(&self, _: u64, _: u64, _: Option<u64>) -> Result<Vec<Entry>, StorageError> {
            Ok(Vec::new())
        }
        fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
            self.entries.extend_from_slice(entries);
            Ok(())
        }
        fn truncate_suffix(&mut self, _: u64) -> Result<(), StorageError> {
            Ok(())
        }
        fn truncate_prefix(&mut self, _: u64) -> Result<(), StorageError> {
            Ok(())
        }
        fn reset(&mut self, _: u64, _: u64) -> Result<(), StorageError> {
            Ok(())
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            self.syncs += 1;
            if self.syncs == 1 {
                return Err(StorageError::Io {
                    context: "fsync".into(),
                    source: std::io::Error::other("EIO (injected)"),
                });
            }
            Ok(())
        }
    }

    fn persist(number: u64) -> IoTask {
        IoTask::Persist {
            number,
            reset: None,
            entries: vec![Entry {
                index: number,
                term: 1,
                ..Default::default()
            }],
            sync: true,
            messages: Vec::new(),
        }
    }

    /// Ready 1's fsync fails on the I/O thread. Ready 2, written on the
    /// inline path, must not be made durable by a later fsync that happens
    /// to succeed (its success would mark Ready 1 durable too), and a flush
    /// (shutdown) must answer instead of waiting for a thread that is gone.
    #[test]
    fn after_a_failed_fsync_nothing_more_is_written_or_reported_durable() {
        let inbox = RaftInbox::new();
        let rx = inbox.receiver();
        let mut io = IoWorker::start(
            "t",
            Box::<FsyncFailsOnce>::default(),
            inbox.clone(),
            Arc::default(),
        )
        .unwrap();
        io.send(persist(1));
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(RaftMsg::Fatal(_)) => {}
            Ok(_) => panic!("expected the fsync failure to be reported"),
            Err(e) => panic!("no report from the I/O thread: {e}"),
        }
        match io.write_now(persist(2)) {
            Err(IoNow::Failed(_)) => {}
            Err(IoNow::Busy(_)) => panic!("the inline write was queued instead of refused"),
            Ok(done) => panic!(
                "Ready 2 was written and reported durable ({:?}) after Ready 1's fsync failed",
                done.map(|d| d.0)
            ),
        }
        // A queued task after the failure is refused too, and flush answers.
        io.send(persist(3));
        let (tx, answered) = chan::bounded(1);
        let io = std::thread::spawn(move || {
            let r = io.flush();
            let _ = tx.send(r.is_err());
            io.stop();
        });
        assert_eq!(
            answered.recv_timeout(Duration::from_secs(10)),
            Ok(true),
            "flush must fail at once on a failed log"
        );
        io.join().unwrap();
        assert!(
            rx.try_iter()
                .all(|m| !matches!(m, RaftMsg::Persisted { .. })),
            "nothing may be reported durable after the failure"
        );
    }
}
