//! [`Done`], braft's closure: the callback a task's submitter gets back
//! exactly once, and [`Task`], what `Node::apply` takes.
//!
//! "Exactly once" is structural: `Done::run` consumes the closure, and a
//! `Done` dropped without being run (a queue torn down at shutdown, a
//! state machine that forgot it) runs with [`RaftError::ShuttingDown`] from
//! its `Drop`. Dones run on engine threads, so they must be quick and must
//! not block (send on a channel, wake a task).

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::RaftError;

/// What a task's `done` receives: the state machine's response bytes, or why
/// the task failed.
pub type ApplyResult = Result<Bytes, RaftError>;

type Callback = Box<dyn FnOnce(ApplyResult) + Send + 'static>;

/// A callback that runs exactly once. See the module documentation.
pub struct Done(Option<Callback>);

impl Done {
    /// Wraps a callback.
    pub fn new(f: impl FnOnce(ApplyResult) + Send + 'static) -> Self {
        Done(Some(Box::new(f)))
    }

    /// A `Done` that ignores its result.
    pub fn noop() -> Self {
        Done::new(|_| {})
    }

    /// A `Done` whose result arrives on the returned receiver.
    pub fn channel() -> (Self, oneshot::Receiver<ApplyResult>) {
        let (tx, rx) = oneshot::channel();
        (
            Done::new(move |r| {
                let _ = tx.send(r);
            }),
            rx,
        )
    }

    /// Runs the callback with `result`.
    pub fn run(mut self, result: ApplyResult) {
        if let Some(f) = self.0.take() {
            f(result);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(RaftError::ShuttingDown));
        }
    }
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Done(pending)"
        } else {
            "Done(run)"
        })
    }
}

/// A command for the replicated log: braft's `Task`.
#[derive(Debug)]
pub struct Task {
    /// The command; the state machine decodes it in `on_apply`. Must not be empty.
    pub data: Bytes,
    /// Runs once: after the entry is applied (with the state machine's
    /// response) or with the reason it was not.
    pub done: Done,
    /// When set, the task is rejected with [`RaftError::TermMismatch`] unless
    /// the leader is still in this term (braft's `expected_term`).
    pub expected_term: Option<u64>,
}

impl Task {
    pub fn new(data: impl Into<Bytes>, done: Done) -> Self {
        Task {
            data: data.into(),
            done,
            expected_term: None,
        }
    }

    pub fn with_expected_term(mut self, term: u64) -> Self {
        self.expected_term = Some(term);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn dropped_done_runs_once_with_shutting_down() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(None));
        {
            let (c, s) = (calls.clone(), seen.clone());
            let _d = Done::new(move |r| {
                c.fetch_add(1, Ordering::SeqCst);
                *s.lock().unwrap() = Some(r);
            });
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(*seen.lock().unwrap(), Some(Err(RaftError::ShuttingDown)));
    }

    #[test]
    fn run_done_does_not_run_again_on_drop() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let d = Done::new(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        });
        d.run(Ok(Bytes::new()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
