//! Client sessions: exactly-once writes. A write carries (client id,
//! sequence number, lowest unanswered sequence number), so the state machine
//! applies a retried write once and answers it with its first result; many
//! writes of one session may be in flight at once.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tonic::Status;

use raftkit_proto::limits::MAX_IN_FLIGHT;
use raftkit_proto::pb::ClientSession;
use raftkit_proto::RaftError;

use crate::*;

/// A client session (see [`ClusterClient::session`]): writes through it
/// carry (client id, sequence number, lowest unanswered sequence number), so
/// the state machine applies a retried write once and answers it with its
/// first result. Shared by reference: many writes may be in flight at once
/// (see the module documentation).
#[derive(Debug)]
pub struct Session {
    id: u64,
    state: Mutex<SessionState>,
    /// Woken when a write finishes, for writes waiting for room.
    room: tokio::sync::Notify,
}

#[derive(Debug)]
pub(crate) struct SessionState {
    next_seq: u64,
    /// Writes sent and not yet finished (answered, failed or given up on).
    unanswered: BTreeSet<u64>,
}

impl Session {
    pub(crate) fn fresh() -> Session {
        Session::resume(rand::random::<u64>() | 1, 1)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The sequence number the next write will carry.
    pub fn next_seq(&self) -> u64 {
        self.state.lock().next_seq
    }

    /// Continues a session saved elsewhere (for example by a client that
    /// restarted): the next write carries `next_seq`, and the writes before
    /// it count as answered.
    pub fn resume(id: u64, next_seq: u64) -> Session {
        Session {
            id,
            state: Mutex::new(SessionState {
                next_seq: next_seq.max(1),
                unanswered: BTreeSet::new(),
            }),
            room: tokio::sync::Notify::new(),
        }
    }

    /// Takes the next sequence number, waiting (until `deadline`) while the
    /// oldest unanswered write is [`MAX_IN_FLIGHT`] behind it, or while the
    /// session's first write is out (the cluster starts a session only from
    /// its write 1, so the others follow it).
    pub(crate) async fn begin(&self, deadline: Instant) -> Result<SessionWrite<'_>, ClientError> {
        loop {
            let room = self.room.notified();
            {
                let mut st = self.state.lock();
                let seq = st.next_seq;
                let Some(next) = seq.checked_add(1) else {
                    return Err(ClientError::InvalidArgument(format!(
                        "session {:016x} has used every sequence number; open a new session",
                        self.id
                    )));
                };
                let lowest = st.unanswered.first().copied().unwrap_or(seq);
                if seq - lowest < MAX_IN_FLIGHT && (seq == 1 || lowest != 1) {
                    st.next_seq = next;
                    st.unanswered.insert(seq);
                    return Ok(SessionWrite {
                        session: self,
                        wire: ClientSession {
                            client_id: self.id,
                            seq,
                            lowest_unanswered: lowest,
                        },
                    });
                }
            }
            if tokio::time::timeout_at(deadline.into(), room)
                .await
                .is_err()
            {
                // Never sent: certainly not applied.
                let why = if self.state.lock().unanswered.contains(&1) {
                    "its first write, which starts it, did not finish".to_string()
                } else {
                    format!("it has {MAX_IN_FLIGHT} writes in flight and none finished")
                };
                return Err(ClientError::Raft(RaftError::Busy(format!(
                    "session {:016x}: not sent, because {why} within the deadline",
                    self.id
                ))));
            }
        }
    }
}

/// One write of a session, from its sequence number until it finishes
/// (dropped): then the client will not send it again, and later writes
/// tell the state machine it may forget the answer.
pub(crate) struct SessionWrite<'a> {
    session: &'a Session,
    pub(crate) wire: ClientSession,
}

impl Drop for SessionWrite<'_> {
    fn drop(&mut self) {
        self.session.state.lock().unanswered.remove(&self.wire.seq);
        self.session.room.notify_waiters();
    }
}

impl ClusterClient {
    /// Opens a client session: writes through it are applied at most once
    /// even when retried, and are retried on any retryable error. Share it
    /// by reference to have several writes in flight.
    pub fn session(&self) -> Session {
        Session::fresh()
    }

    /// A write through `session`: `call` gets the session's fields for this
    /// write; retried on any retryable error until `deadline`.
    ///
    /// "Session expired" on the first send means the write was refused, not
    /// applied. On a later send an earlier one may have been applied before
    /// the session expired, so the outcome is unknown and the error says so.
    pub(crate) async fn write_in<T, F, Fut>(
        &self,
        session: &Session,
        deadline: Instant,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Conn, String, ClientSession) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let write = session.begin(deadline).await?;
        let wire = write.wire;
        let sends = AtomicUsize::new(0);
        let r = self
            .call_until(deadline, Retry::Idempotent, |conn, group| {
                sends.fetch_add(1, Ordering::Relaxed);
                call(conn, group, wire)
            })
            .await;
        drop(write);
        match r {
            Err(ClientError::Raft(RaftError::SessionExpired(e)))
                if sends.load(Ordering::Relaxed) > 1 =>
            {
                Err(ClientError::Unavailable(format!(
                    "write {} was sent again after no answer, and then its session had expired: it may have been applied ({e})",
                    wire.seq
                )))
            }
            r => r,
        }
    }

    /// A write through this client's own session. If the cluster refused
    /// the write's first send because it has forgotten that session (idle
    /// past the members' `--session-idle-ms`, or its first write never
    /// arrived), the write was not applied: it is sent again once in a new
    /// session.
    pub(crate) async fn write_own<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Conn, String, ClientSession) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut renewed = false;
        loop {
            let session = self.session.lock().clone();
            match self.write_in(&session, deadline, &mut call).await {
                Err(ClientError::Raft(RaftError::SessionExpired(_))) if !renewed => {
                    renewed = true;
                    let mut current = self.session.lock();
                    if current.id == session.id {
                        *current = Arc::new(Session::fresh());
                    }
                }
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_starts_with_one_write_and_keeps_its_window() {
        let soon = || Instant::now() + Duration::from_millis(50);
        let s = Arc::new(Session::resume(5, 1));
        let first = s.begin(soon()).await.unwrap();
        assert_eq!((first.wire.seq, first.wire.lowest_unanswered), (1, 1));
        // Write 1 starts the session in the cluster: the next waits for it.
        let e = s.begin(soon()).await.err().expect("waits for write 1");
        assert!(e.is_definitely_not_applied(), "{e}");
        assert!(e.to_string().contains("first write"), "{e}");
        drop(first);
        // Then up to MAX_IN_FLIGHT numbers past the oldest unanswered write.
        let mut open = Vec::new();
        for seq in 2..2 + MAX_IN_FLIGHT {
            let w = s.begin(soon()).await.unwrap();
            assert_eq!((w.wire.seq, w.wire.lowest_unanswered), (seq, 2));
            open.push(w);
        }
        let e = s.begin(soon()).await.err().expect("the window is full");
        assert!(e.to_string().contains("writes in flight"), "{e}");
        // A write finishing (here the oldest) wakes one that waits for room.
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                let w = s.begin(Instant::now() + Duration::from_secs(10)).await?;
                Ok::<_, ClientError>((w.wire.seq, w.wire.lowest_unanswered))
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no room yet");
        open.remove(0);
        assert_eq!(waiter.await.unwrap().unwrap(), (2 + MAX_IN_FLIGHT, 3));
    }
}
