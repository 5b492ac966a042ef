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

/// Handle to the I/O thread.
pub(crate) struct IoWorker {
    tx: Option<chan::Sender<IoTask>>,
    /// Tasks are only taken from the queue under the log's lock, so a write
    /// made directly (`write_now`) never overtakes a queued one.
    rx: chan::Receiver<IoTask>,
    log: Arc<Mutex<Box<dyn LogStorage>>>,
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
        let log = Arc::new(Mutex::new(log));
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
                                let _ = log.sync();
                                return;
                            }
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    match run_batch(log.as_mut(), batch, &metrics) {
                        Ok(Some((number, messages))) => {
                            let _ = raft_tx.send(RaftMsg::Persisted { number, messages });
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = raft_tx.send(RaftMsg::Fatal(e.into()));
                            return;
                        }
                    }
                    bytes.store(log.disk_bytes(), Ordering::Relaxed);
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
        let r = run_batch(log.as_mut(), vec![task], &self.metrics).map_err(IoNow::Failed)?;
        self.disk_bytes.store(log.disk_bytes(), Ordering::Relaxed);
        Ok(r)
    }

    pub fn send(&self, task: IoTask) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(task);
        }
    }

    /// Waits until everything sent so far is durable.
    pub fn flush(&self) -> Result<(), RaftError> {
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
