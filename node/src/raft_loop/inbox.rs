//! How inputs reach a group's raft loop.
//!
//! Normally an input is queued and the raft thread handles it with whatever
//! else is queued (one `Ready` per batch). With one write in flight, though,
//! queuing costs thread wake-ups on the write path: the sender wakes the
//! raft thread, and the raft thread wakes the I/O thread and back (sending
//! then costs no wake-up: see `transport::stream`). Each is ~40 µs on a
//! VM whose idle CPUs halt (docs/benchmarks.md, "Where the time goes"). So
//! when the loop is free and has at most one write in flight
//! (`RaftLoop::takes_inline`), the sender runs the input and the `Ready`
//! after it itself, on its own thread; a follower then also writes and
//! fsyncs there, and its answer leaves from the thread that received the
//! append. Under load the loop has many writes in flight, and inputs queue
//! and batch as before; a member keeps queuing for a short quiet time
//! (`INLINE_QUIET`) after it last had more than one write in flight, so that
//! concurrent writes are not held behind one sender's inline fsync.
//!
//! Order: the queue is only drained under the lock, and a sender that runs
//! its input first runs whatever was queued before it, so inputs from one
//! sender are always handled in the order sent.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel as chan;
use parking_lot::Mutex;

use super::{RaftLoop, RaftMsg};
use crate::error::RaftError;
use crate::metrics::NodeMetrics;
use crate::node::{NodeShared, Role};

/// A sender runs its input itself only if at most this many are queued
/// (they go first); more means the raft thread is behind and will batch.
const MAX_INLINE_BACKLOG: usize = 4;

/// Most inputs the raft thread handles before looking at `Ready` again.
const MAX_BATCH: usize = 4096;

/// The inputs of one raft loop, and the loop itself (see the module docs).
pub(crate) struct RaftInbox {
    tx: chan::Sender<RaftMsg>,
    rx: chan::Receiver<RaftMsg>,
    core: Mutex<Option<RaftLoop>>,
    /// The loop stopped (shut down, or a panic): inputs only queue.
    closed: AtomicBool,
    metrics: std::sync::OnceLock<Arc<NodeMetrics>>,
    /// Set by the loop after each batch: whether it could take an input
    /// inline at all (saves senders under load from trying the lock).
    hint: Arc<AtomicBool>,
    /// Whether senders may run inputs themselves (`RAFTKIT_INLINE_RAFT=0`
    /// turns it off, for comparisons).
    inline: bool,
}

impl RaftInbox {
    pub fn new() -> Arc<RaftInbox> {
        let (tx, rx) = chan::unbounded();
        let inline = raftkit_proto::settings::from_env("inline_raft").is_none_or(|v| v != "0");
        Arc::new(RaftInbox {
            tx,
            rx,
            core: Mutex::new(None),
            closed: AtomicBool::new(false),
            metrics: std::sync::OnceLock::new(),
            hint: Arc::new(AtomicBool::new(false)),
            inline,
        })
    }

    /// The receiving end, for the loop's own use (draining at shutdown).
    pub fn receiver(&self) -> chan::Receiver<RaftMsg> {
        self.rx.clone()
    }

    /// A plain sender: its inputs always queue.
    pub fn queue(&self) -> chan::Sender<RaftMsg> {
        self.tx.clone()
    }

    /// Hands `msg` to the loop: runs it on this thread when the loop is idle
    /// (see the module docs), queues it otherwise. Fails only when the loop
    /// is gone, returning the input.
    // The same shape as a channel's send: a refused input comes back whole
    // (a proposal's Done must still run).
    #[allow(clippy::result_large_err)]
    pub fn send(&self, msg: RaftMsg) -> Result<(), chan::SendError<RaftMsg>> {
        if self.inline && self.hint.load(Ordering::Relaxed) {
            if let Some(mut core) = self.core.try_lock() {
                // The I/O thread (Persisted) never runs queued inputs: one of
                // them could wait for the I/O thread itself (a flush).
                let backlog = match msg {
                    RaftMsg::Persisted { .. } => 0,
                    _ => MAX_INLINE_BACKLOG,
                };
                if !self.closed.load(Ordering::Acquire) && self.rx.len() <= backlog {
                    let lp = core.as_mut().filter(|lp| {
                        let takes = lp.takes_inline(&msg);
                        if !takes
                            && msg.is_write_path()
                            && !matches!(msg, RaftMsg::Persisted { .. })
                        {
                            // More than one write in flight. (Not a
                            // completed write: a follower's is never taken
                            // inline, whatever the load.)
                            crate::idle_poll::busy();
                        }
                        takes
                    });
                    if let Some(lp) = lp {
                        if msg.is_write_path() {
                            // Light load: worth keeping CPUs awake for what follows.
                            crate::idle_poll::touch();
                        }
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            // What was queued before this input goes first.
                            while let Ok(m) = self.rx.try_recv() {
                                lp.handle(m);
                            }
                            lp.handle(msg);
                            if lp.shutting_down {
                                // Stopping is the raft thread's job: wake it.
                                let _ = self.tx.send(RaftMsg::Shutdown);
                                return;
                            }
                            lp.write_inline = true;
                            lp.end_batch(Instant::now());
                            // What arrived while this thread wrote to disk
                            // (a leader: the answers to the appends it sent)
                            // is handled here too; the raft thread, woken
                            // for it, then finds nothing to do.
                            for _ in 0..MAX_INLINE_BACKLOG {
                                if self.rx.is_empty() {
                                    break;
                                }
                                for _ in 0..MAX_BATCH {
                                    match self.rx.try_recv() {
                                        Ok(m) => lp.handle(m),
                                        Err(_) => break,
                                    }
                                }
                                if lp.shutting_down {
                                    let _ = self.tx.send(RaftMsg::Shutdown);
                                    break;
                                }
                                lp.end_batch(Instant::now());
                            }
                            lp.write_inline = false;
                        }));
                        if let Some(m) = self.metrics.get() {
                            m.raft_inputs_inline.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Err(p) = r {
                            let shared = lp.shared.clone();
                            self.close_after_panic(&shared, &p);
                        }
                        return Ok(());
                    }
                }
            }
        } else if self.inline && msg.is_write_path() && !matches!(msg, RaftMsg::Persisted { .. }) {
            // The loop said it has more than one write in flight.
            crate::idle_poll::busy();
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(chan::SendError(msg));
        }
        if let Some(m) = self.metrics.get() {
            m.raft_inputs_queued.fetch_add(1, Ordering::Relaxed);
        }
        self.tx.send(msg)?;
        if self.closed.load(Ordering::Acquire) {
            // The loop stopped while this was queued: nobody will take it.
            self.discard_queued();
        }
        Ok(())
    }

    /// Drops whatever is queued (a proposal's Done then reports shutdown,
    /// a read's reply channel closes).
    fn discard_queued(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    fn close_after_panic(&self, shared: &NodeShared, p: &(dyn std::any::Any + Send)) {
        self.closed.store(true, Ordering::Release);
        let msg = format!("the raft loop panicked: {}", crate::node::panic_text(p));
        tracing::error!("{msg}");
        *shared.error.write() = Some(RaftError::Stopped(msg));
        shared.view.write().role = Role::Error;
    }

    /// Runs `msgs` exactly as a sender's thread runs its input when it takes
    /// the loop (what was queued before it first, then its own input, then
    /// the Ready, writing inline): tests build exact interleavings with it.
    #[cfg(test)]
    pub(crate) fn run_as_sender(&self, msgs: Vec<RaftMsg>) {
        let mut core = self.core.lock();
        let Some(lp) = core.as_mut() else {
            return;
        };
        for m in msgs {
            lp.handle(m);
        }
        lp.write_inline = true;
        lp.end_batch(Instant::now());
        lp.write_inline = false;
    }

    /// Installs the loop; `run` then drives it.
    pub fn install(&self, mut lp: RaftLoop) {
        lp.inline_hint = self.hint.clone();
        let _ = self.metrics.set(lp.shared.metrics.clone());
        *self.core.lock() = Some(lp);
    }

    /// The raft thread: waits for inputs or the next tick, handles what is
    /// queued in one batch, ticks, and handles the `Ready`. Returns once the
    /// loop stopped, after dropping it (which stops its I/O thread).
    pub fn run(self: Arc<Self>) {
        self.drive();
        self.closed.store(true, Ordering::Release);
        let lp = self.core.lock().take();
        drop(lp);
        self.discard_queued();
    }

    fn drive(&self) {
        let shared = match self.core.lock().as_mut() {
            Some(lp) => {
                lp.publish_view();
                lp.shared.clone()
            }
            None => return,
        };
        loop {
            let Some(deadline) = self.core.lock().as_ref().map(|lp| lp.next_tick) else {
                return;
            };
            // Wait without taking the input: it is taken under the lock.
            let mut sel = chan::Select::new();
            sel.recv(&self.rx);
            let _ = sel.ready_deadline(deadline);
            let mut guard = self.core.lock();
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            let Some(lp) = guard.as_mut() else {
                return;
            };
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                for _ in 0..MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(m) => lp.handle(m),
                        Err(_) => break,
                    }
                }
                if lp.shutting_down {
                    lp.stop();
                    return;
                }
                let now = Instant::now();
                lp.tick_if_due(now);
                lp.end_batch(now);
            }));
            if let Err(p) = r {
                self.close_after_panic(&shared, &p);
                return;
            }
            if lp.shutting_down {
                self.closed.store(true, Ordering::Release);
                return;
            }
        }
    }
}
