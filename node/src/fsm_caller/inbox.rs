//! How inputs reach a group's [`FsmCaller`] (the apply stage).
//!
//! Normally the raft loop queues each input and the apply thread handles
//! it. For a small input while the apply stage is idle, though, the queue
//! costs a thread wake-up on the write path (~40 µs on VMs whose idle CPUs
//! halt; docs/benchmarks.md): so the raft loop's thread runs it itself,
//! as `raft_loop::inbox` does for raft inputs. Small means a proposal's
//! registration or a commit of at most [`MAX_INLINE_ENTRIES`] entries: a
//! lone write. Under load commits come in larger batches and queue, so the
//! raft loop never waits for a long `on_apply`.
//!
//! Order: the queue is only drained under the lock, and an input runs
//! inline only when nothing is queued, so the state machine sees inputs in
//! the order sent, one at a time, whichever thread runs them.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel as chan;
use parking_lot::Mutex;

use super::{ApplyMsg, FsmCaller};
use crate::error::RaftError;
use crate::metrics::NodeMetrics;
use crate::raft_loop::RaftMsg;

/// Most entries a commit may carry to be applied on the raft loop's thread.
pub const MAX_INLINE_ENTRIES: usize = 2;

/// The apply stage and its queue, shared by the sender and the apply thread.
pub(crate) struct ApplyInbox {
    rx: chan::Receiver<ApplyMsg>,
    core: Mutex<Option<FsmCaller>>,
    /// The apply stage stopped (shutdown or a panic).
    closed: AtomicBool,
    /// Reaches the raft loop with a fatal error from an inline panic.
    fatal: chan::Sender<RaftMsg>,
    metrics: Arc<NodeMetrics>,
    /// Whether small inputs may run on the sender's thread
    /// (`RAFTKIT_INLINE_APPLY=0` turns it off, for comparisons).
    inline: bool,
}

/// The raft loop's end: sends inputs to the apply stage. Dropping it tells
/// the apply thread that the raft loop is gone.
pub(crate) struct ApplySender {
    tx: chan::Sender<ApplyMsg>,
    inbox: Arc<ApplyInbox>,
}

/// Creates the inbox around `caller`. `fatal` is the raft loop's queue.
pub(crate) fn apply_inbox(
    caller: FsmCaller,
    fatal: chan::Sender<RaftMsg>,
    metrics: Arc<NodeMetrics>,
) -> (ApplySender, Arc<ApplyInbox>) {
    let (tx, rx) = chan::unbounded();
    let inline = raftkit_proto::settings::from_env("inline_apply").is_none_or(|v| v != "0");
    let inbox = Arc::new(ApplyInbox {
        rx,
        core: Mutex::new(Some(caller)),
        closed: AtomicBool::new(false),
        fatal,
        metrics,
        inline,
    });
    (
        ApplySender {
            tx,
            inbox: inbox.clone(),
        },
        inbox,
    )
}

fn small(msg: &ApplyMsg) -> bool {
    match msg {
        ApplyMsg::Pending(_) => true,
        ApplyMsg::Committed(batch) => batch.len() <= MAX_INLINE_ENTRIES,
        _ => false,
    }
}

impl ApplySender {
    /// Hands `msg` to the apply stage: runs it on this thread when it is
    /// small and the stage idle, queues it otherwise. Returns the applied
    /// index when running it advanced it: the caller (the raft loop) takes
    /// it as it would the apply thread's `RaftMsg::Applied`.
    pub fn send(&self, msg: ApplyMsg) -> Option<u64> {
        let inbox = &*self.inbox;
        if inbox.inline && small(&msg) {
            if let Some(mut core) = inbox.core.try_lock() {
                if inbox.rx.is_empty() && !inbox.closed.load(Ordering::Acquire) {
                    if let Some(caller) = core.as_mut() {
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            caller.handle(msg);
                            caller.publish()
                        }));
                        inbox
                            .metrics
                            .apply_inputs_inline
                            .fetch_add(1, Ordering::Relaxed);
                        match r {
                            Ok(applied) => return applied,
                            Err(p) => {
                                // The state machine's state is unknown: stop
                                // applying, as a panic on the apply thread does.
                                inbox.stop_after_panic(core, &*p);
                                return None;
                            }
                        }
                    }
                }
            }
        }
        if inbox.closed.load(Ordering::Acquire) {
            // The apply stage stopped: the input is dropped, so its dones
            // report shutdown and its read replies close.
            return None;
        }
        inbox
            .metrics
            .apply_inputs_queued
            .fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(msg);
        None
    }
}

impl ApplyInbox {
    /// Stops the apply stage after the state machine panicked: inputs are
    /// refused from now on, the caller is dropped (its dones report
    /// shutdown) and the raft loop learns the node must stop.
    fn stop_after_panic(
        &self,
        mut core: parking_lot::MutexGuard<'_, Option<FsmCaller>>,
        p: &(dyn std::any::Any + Send),
    ) {
        self.closed.store(true, Ordering::Release);
        let caller = core.take();
        drop(core);
        let msg = format!("the state machine panicked: {}", crate::node::panic_text(p));
        tracing::error!("{msg}");
        let _ = self.fatal.send(RaftMsg::Fatal(RaftError::Stopped(msg)));
        drop(caller);
    }

    /// The apply thread: waits for inputs, handles what is queued in one
    /// batch and publishes progress, until shutdown, a panic, or the raft
    /// loop is gone.
    pub fn run(&self) {
        loop {
            // Wait without taking the input: an input taken but not yet
            // handled would let a sender run a later one inline first.
            let mut ready = chan::Select::new();
            ready.recv(&self.rx);
            ready.ready();
            let mut core = self.core.lock();
            let Some(caller) = core.as_mut() else {
                return; // stopped by an inline panic
            };
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| loop {
                match self.rx.try_recv() {
                    Ok(msg) => {
                        if !caller.handle(msg) {
                            return false;
                        }
                    }
                    Err(chan::TryRecvError::Empty) => {
                        caller.publish_applied();
                        return true;
                    }
                    Err(chan::TryRecvError::Disconnected) => {
                        // The raft loop is gone without a shutdown message.
                        caller.shutdown();
                        return false;
                    }
                }
            }));
            match r {
                Ok(true) => {}
                Ok(false) => {
                    self.closed.store(true, Ordering::Release);
                    core.take();
                    return;
                }
                Err(p) => {
                    self.stop_after_panic(core, &*p);
                    return;
                }
            }
        }
    }
}
