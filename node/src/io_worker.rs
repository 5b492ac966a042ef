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
use raft::eraftpb::{Entry, Message};

use crate::error::{RaftError, StorageError};
use crate::metrics::NodeMetrics;
use crate::raft_loop::RaftMsg;
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
    thread: Option<JoinHandle<()>>,
    /// Bytes the log occupies, updated after each batch.
    pub disk_bytes: Arc<AtomicU64>,
}

impl IoWorker {
    /// Starts the thread; completions go to the raft thread through `raft_tx`.
    pub fn start(
        group: &str,
        mut log: Box<dyn LogStorage>,
        raft_tx: chan::Sender<RaftMsg>,
        metrics: Arc<NodeMetrics>,
    ) -> Result<IoWorker, RaftError> {
        let (tx, rx) = chan::unbounded::<IoTask>();
        let disk_bytes = Arc::new(AtomicU64::new(log.disk_bytes()));
        let bytes = disk_bytes.clone();
        let thread = std::thread::Builder::new()
            .name(format!("io-{group}"))
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while let Ok(t) = rx.try_recv() {
                        batch.push(t);
                    }
                    if let Err(e) = run_batch(log.as_mut(), batch, &raft_tx, &metrics) {
                        let _ = raft_tx.send(RaftMsg::Fatal(e.into()));
                        return;
                    }
                    bytes.store(log.disk_bytes(), Ordering::Relaxed);
                }
                // The raft thread is gone: make what was written durable.
                let _ = log.sync();
            })
            .map_err(|e| RaftError::Storage(format!("spawning the I/O thread: {e}")))?;
        Ok(IoWorker {
            tx: Some(tx),
            thread: Some(thread),
            disk_bytes,
        })
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

fn run_batch(
    log: &mut dyn LogStorage,
    batch: Vec<IoTask>,
    raft_tx: &chan::Sender<RaftMsg>,
    metrics: &NodeMetrics,
) -> Result<(), StorageError> {
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
    if let Some(number) = done_number {
        let _ = raft_tx.send(RaftMsg::Persisted { number, messages });
    }
    for f in flushes {
        let _ = f.send(Ok(()));
    }
    Ok(())
}
