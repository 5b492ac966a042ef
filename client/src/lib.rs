//! [`ClusterClient`]: talks to a RaftKit cluster given its members'
//! addresses. It finds the leader itself (cached), follows redirects, and
//! retries what is safe to retry within a deadline:
//! - any request whose error proves it was not applied (a redirect, a
//!   refused connection, "transferring", "busy");
//! - reads, and writes through a [`Session`] (the state machine applies a
//!   retried session write once), after any retryable error.
//!
//! A member that does not answer one of those within the attempt timeout
//! ([`DEFAULT_ATTEMPT_TIMEOUT`], see [`ClusterClient::with_attempt_timeout`])
//! is given up on for that attempt and the other members are asked; if
//! they still name it as the leader, it is asked again after a pause. So a
//! leader that hangs (a paused process, a one-way partition) costs a call
//! about one attempt per election it takes the others to replace it, not
//! the whole deadline, and a leader that is only slow is not abandoned.
//!
//! A session may have many writes in flight: tasks sharing one client (or
//! one [`Session`]) write concurrently, up to
//! [`MAX_IN_FLIGHT`] sequence
//! numbers past the oldest unanswered one, then wait for room.
//!
//! Any other write whose outcome is unknown (the leader stepped down, a
//! timeout, a connection lost mid-call) is not retried: the error goes back
//! to the caller, who must treat the write as possibly applied.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use raftkit_proto::limits::MAX_IN_FLIGHT;
use raftkit_proto::pb::admin_client::AdminClient;
use raftkit_proto::pb::kv_client::KvClient;
use raftkit_proto::pb::{
    CasRequest, ChangePeersRequest, ConfigurationReply, CounterGetRequest, DeleteRequest,
    FetchAddRequest, GetRequest, GroupDigest, GroupRequest, MembershipRequest, NodeStatusReply,
    PutRequest, ScanRequest, TransferRequest,
};
use raftkit_proto::pb::{ClientSession, ReadConsistency};
use raftkit_proto::status::from_status;
use raftkit_proto::validate_addr;
use raftkit_proto::RaftError;

mod mux;

/// How long a retryable call waits for one member before trying the next
/// (bounded by the call's own deadline). Longer than a write or read takes
/// under heavy load here (p99 well under 100 ms at 256 clients), shorter
/// than a caller's usual deadline.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a member that let an attempt time out is asked last (after
/// every other member), unless it answers in the meantime.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

pub use conn::Conn;
mod conn;

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
struct SessionState {
    next_seq: u64,
    /// Writes sent and not yet finished (answered, failed or given up on).
    unanswered: BTreeSet<u64>,
}

impl Session {
    fn fresh() -> Session {
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
    async fn begin(&self, deadline: Instant) -> Result<SessionWrite<'_>, ClientError> {
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
struct SessionWrite<'a> {
    session: &'a Session,
    wire: ClientSession,
}

impl Drop for SessionWrite<'_> {
    fn drop(&mut self) {
        self.session.state.lock().unanswered.remove(&self.wire.seq);
        self.session.room.notify_waiters();
    }
}

async fn fetch_add_call(
    conn: Conn,
    group: String,
    s: ClientSession,
    delta: i64,
) -> Result<i64, Status> {
    conn.fetch_add(FetchAddRequest {
        group,
        delta,
        session: Some(s),
    })
    .await
    .map(|r| r.previous)
}

async fn put_call(
    conn: Conn,
    group: String,
    s: ClientSession,
    key: Bytes,
    value: Bytes,
) -> Result<Option<Bytes>, Status> {
    conn.put(PutRequest {
        group,
        key,
        value,
        session: Some(s),
    })
    .await
    .map(|r| r.previous)
}

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A node answered with an engine error.
    #[error("{0}")]
    Raft(RaftError),
    /// The call failed in transport or with a non-RaftKit status; for a
    /// write the outcome is unknown.
    #[error("{addr}: {message}")]
    Rpc {
        addr: String,
        code: tonic::Code,
        message: String,
    },
    /// No member could be reached or none would take the request in time.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's input is wrong.
    #[error("{0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// Whether a write that failed this way was certainly not applied.
    pub fn is_definitely_not_applied(&self) -> bool {
        match self {
            ClientError::Raft(e) => e.is_definitely_not_applied(),
            ClientError::InvalidArgument(_) => true,
            // Only "no such group here" uses this code: it reached no group.
            ClientError::Rpc {
                code: tonic::Code::NotFound,
                ..
            } => true,
            ClientError::Unavailable(_) | ClientError::Rpc { .. } => false,
        }
    }
}

/// Whether a call may be sent again after an error of unknown outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Reads and other idempotent calls.
    Idempotent,
    /// Writes: resent only when the error proves they were not applied.
    NotIdempotent,
}

/// A client for one group of a cluster. See the module documentation.
pub struct ClusterClient {
    /// Known members; grows when a member reports others (route table).
    addrs: Mutex<Vec<String>>,
    group: String,
    timeout: Duration,
    /// Per-member wait of a retryable call (see [`DEFAULT_ATTEMPT_TIMEOUT`]).
    attempt_timeout: Duration,
    leader: Mutex<Option<String>>,
    /// Members that let an attempt time out, until when they are avoided.
    suspects: Mutex<HashMap<String, Instant>>,
    conns: Mutex<HashMap<String, Conn>>,
    /// One unary gRPC call per request instead of the member's mux stream.
    unary: bool,
    next: AtomicUsize,
    /// The session of the convenience write methods; replaced by a new one
    /// when the cluster has forgotten it (idle past its expiry).
    session: Mutex<Arc<Session>>,
    last_refresh: Mutex<Option<Instant>>,
}

impl ClusterClient {
    /// `addrs` are members' `host:port`; `timeout` bounds each call with retries.
    pub fn new(
        addrs: Vec<String>,
        group: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the cluster address list is empty".into(),
            ));
        }
        for a in &addrs {
            validate_addr(a)
                .map_err(|e| ClientError::InvalidArgument(format!("cluster address {e}")))?;
        }
        Ok(ClusterClient {
            addrs: Mutex::new(addrs),
            group: group.into(),
            timeout,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            leader: Mutex::new(None),
            suspects: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            unary: false,
            next: AtomicUsize::new(0),
            session: Mutex::new(Arc::new(Session::fresh())),
            last_refresh: Mutex::new(None),
        })
    }

    /// Makes every call a unary gRPC call (one HTTP/2 stream each) instead
    /// of a message on the member's multiplexed stream. Slower; kept for
    /// comparison and for servers that predate the mux service.
    pub fn with_unary_calls(mut self, unary: bool) -> Self {
        self.unary = unary;
        self
    }

    /// How long a retryable call (a read, a session write) waits for one
    /// member before it gives up on that member and tries the next, within
    /// the call's deadline. Calls that cannot be retried (writes outside a
    /// session, membership changes) always wait for the whole deadline.
    pub fn with_attempt_timeout(mut self, attempt: Duration) -> Self {
        self.attempt_timeout = attempt.max(Duration::from_millis(1));
        self
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The members this client knows.
    pub fn addrs(&self) -> Vec<String> {
        self.addrs.lock().clone()
    }

    /// Learns members from the configuration a reachable member reports (at
    /// most once a second), so a client started with a partial or outdated
    /// list still finds every member.
    async fn refresh_members(&self) {
        {
            let mut last = self.last_refresh.lock();
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
        }
        for addr in self.addrs() {
            let Ok(conn) = self.conn(&addr).await else {
                continue;
            };
            let mut admin = AdminClient::new(conn.channel());
            let req = GroupRequest {
                group: self.group.clone(),
            };
            let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_millis(500), admin.status(req)).await
            else {
                continue;
            };
            let mut known = self.addrs.lock();
            for g in r.into_inner().groups {
                for m in g.voters.iter().chain(&g.learners).chain(&g.voters_outgoing) {
                    if !m.addr.is_empty()
                        && !known.contains(&m.addr)
                        && validate_addr(&m.addr).is_ok()
                    {
                        known.push(m.addr.clone());
                    }
                }
            }
            return;
        }
    }

    /// The member currently believed to lead.
    pub fn cached_leader(&self) -> Option<String> {
        self.leader.lock().clone()
    }

    async fn conn(&self, addr: &str) -> Result<Conn, String> {
        if let Some(c) = self.conns.lock().get(addr) {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let ch = ep.connect().await.map_err(|e| {
            format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            )
        })?;
        let conn = Conn::new(ch, addr, !self.unary);
        self.conns.lock().insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    fn forget(&self, addr: &str) {
        self.conns.lock().remove(addr);
        let mut l = self.leader.lock();
        if l.as_deref() == Some(addr) {
            *l = None;
        }
    }

    fn pick(&self) -> String {
        if let Some(l) = self.leader.lock().clone() {
            return l;
        }
        self.next_member()
    }

    /// The next member in turn, passing over suspects while any other
    /// member is left.
    fn next_member(&self) -> String {
        let addrs = self.addrs();
        let now = Instant::now();
        let suspects = {
            let mut s = self.suspects.lock();
            s.retain(|_, until| *until > now);
            s.clone()
        };
        for _ in 0..addrs.len() {
            let a = &addrs[self.next.fetch_add(1, Ordering::Relaxed) % addrs.len()];
            if !suspects.contains_key(a) {
                return a.clone();
            }
        }
        addrs[self.next.fetch_add(1, Ordering::Relaxed) % addrs.len()].clone()
    }

    fn is_suspect(&self, addr: &str) -> bool {
        self.suspects
            .lock()
            .get(addr)
            .is_some_and(|until| *until > Instant::now())
    }

    /// `addr` let an attempt time out: drop its connection and cached
    /// leadership, and ask it last for a while.
    fn suspect(&self, addr: &str) {
        self.forget(addr);
        self.suspects
            .lock()
            .insert(addr.to_string(), Instant::now() + SUSPECT_FOR);
    }

    /// `addr` said it does not host the group: records it in `absent` (the
    /// members that said so during this call), stops treating it as the
    /// leader, and tells whether every known member has now said so.
    fn not_hosted_everywhere(&self, absent: &mut Vec<String>, addr: &str) -> bool {
        if !absent.iter().any(|a| a == addr) {
            absent.push(addr.to_string());
        }
        {
            let mut l = self.leader.lock();
            if l.as_deref() == Some(addr) {
                *l = None;
            }
        }
        let known = self.addrs();
        known.iter().all(|a| absent.contains(a))
    }

    fn answered(&self, addr: &str) {
        let mut s = self.suspects.lock();
        if !s.is_empty() {
            s.remove(addr);
        }
    }

    /// Sends `call` to the leader, following redirects and retrying per `retry`.
    pub async fn call<T, F, Fut>(&self, retry: Retry, call: F) -> Result<T, ClientError>
    where
        F: FnMut(Conn, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_until(Instant::now() + self.timeout, retry, call)
            .await
    }

    /// [`ClusterClient::call`] with its own deadline.
    async fn call_until<T, F, Fut>(
        &self,
        deadline: Instant,
        retry: Retry,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Conn, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = Duration::from_millis(20);
        let mut last = String::from("no member answered");
        let mut absent = Vec::new();
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::Unavailable(format!(
                    "gave up after {:?}: {last}",
                    self.timeout
                )));
            }
            let addr = self.pick();
            let ch = match self.conn(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    // Not connected: the request was certainly not sent.
                    last = format!("{addr}: {e}");
                    self.forget(&addr);
                    sleep_until_or(deadline, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = match retry {
                Retry::Idempotent => remaining.min(self.attempt_timeout),
                Retry::NotIdempotent => remaining,
            };
            let outcome = match tokio::time::timeout(attempt, call(ch, self.group.clone())).await {
                Ok(r) => r,
                Err(_) => {
                    // A member that hangs is asked last for a while: the next
                    // attempt, and the next calls, try the others first.
                    self.suspect(&addr);
                    if retry == Retry::NotIdempotent || attempt >= remaining {
                        return Err(ClientError::Unavailable(format!(
                            "{addr}: no answer within {attempt:?}"
                        )));
                    }
                    last = format!("{addr}: no answer within {attempt:?}");
                    continue;
                }
            };
            let status = match outcome {
                Ok(v) => {
                    self.answered(&addr);
                    *self.leader.lock() = Some(addr);
                    return Ok(v);
                }
                Err(s) => s,
            };
            match from_status(&status) {
                Some(RaftError::NotLeader { leader: Some(l) })
                    if l.addr != addr && self.is_suspect(&l.addr) =>
                {
                    // The leader that let an attempt time out is still the
                    // one the members name: it hangs (they will elect
                    // another soon) or it is only slow (a write that took
                    // longer than the attempt timeout). Ask it again after
                    // a pause rather than give up on the cluster: a session
                    // write sent twice is applied once.
                    self.answered(&l.addr);
                    *self.leader.lock() = Some(l.addr.clone());
                    last = format!(
                        "{addr}: not leader; redirected to {}, which did not answer in time",
                        l.addr
                    );
                }
                Some(RaftError::NotLeader { leader: Some(l) }) if l.addr != addr => {
                    last = format!("{addr}: not leader; redirected to {}", l.addr);
                    *self.leader.lock() = Some(l.addr);
                    continue;
                }
                Some(
                    e
                    @ (RaftError::NotLeader { .. } | RaftError::Transferring | RaftError::Busy(_)),
                ) => {
                    last = format!("{addr}: {e}");
                    *self.leader.lock() = None;
                    if matches!(e, RaftError::NotLeader { leader: None }) {
                        self.refresh_members().await;
                    }
                }
                Some(e) if e.is_retryable() && retry == Retry::Idempotent => {
                    last = format!("{addr}: {e}");
                    self.forget(&addr);
                }
                Some(e) => return Err(ClientError::Raft(e)),
                None if is_transport_failure(&status) && retry == Retry::Idempotent => {
                    last = format!("{addr}: {}", status.message());
                    self.forget(&addr);
                    self.refresh_members().await;
                }
                None if status.code() == tonic::Code::NotFound => {
                    // This member does not host the group (still starting,
                    // or removed): the request went nowhere; ask the others.
                    if self.not_hosted_everywhere(&mut absent, &addr) {
                        return Err(ClientError::Rpc {
                            addr,
                            code: status.code(),
                            message: status.message().to_string(),
                        });
                    }
                    last = format!("{addr}: {}", status.message());
                }
                None => {
                    self.forget(&addr);
                    return Err(ClientError::Rpc {
                        addr,
                        code: status.code(),
                        message: status.message().to_string(),
                    });
                }
            }
            sleep_until_or(deadline, backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

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
    async fn write_in<T, F, Fut>(
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
    async fn write_own<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
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

    /// Adds `delta` to the counter through `session`; returns the value before.
    pub async fn fetch_add_in(&self, session: &Session, delta: i64) -> Result<i64, ClientError> {
        let deadline = Instant::now() + self.timeout;
        self.write_in(session, deadline, |conn, group, s| {
            fetch_add_call(conn, group, s, delta)
        })
        .await
    }

    /// Adds `delta` to the counter (through this client's own session);
    /// returns the value before.
    pub async fn fetch_add(&self, delta: i64) -> Result<i64, ClientError> {
        self.write_own(|conn, group, s| fetch_add_call(conn, group, s, delta))
            .await
    }

    /// The counter's value (linearizable).
    pub async fn counter_get(&self) -> Result<i64, ClientError> {
        self.counter_get_with(ReadConsistency::Linearizable).await
    }

    /// The counter's value with the given consistency (follower and stale
    /// reads are answered by whichever member is asked).
    pub async fn counter_get_with(&self, consistency: ReadConsistency) -> Result<i64, ClientError> {
        self.read(consistency, |conn, group| async move {
            conn.counter_get(CounterGetRequest {
                group,
                consistency: consistency as i32,
            })
            .await
            .map(|r| r.value)
        })
        .await
    }

    /// Sets `key` through `session`; returns the previous value.
    pub async fn put_in(
        &self,
        session: &Session,
        key: Bytes,
        value: Bytes,
    ) -> Result<Option<Bytes>, ClientError> {
        let deadline = Instant::now() + self.timeout;
        self.write_in(session, deadline, |conn, group, s| {
            put_call(conn, group, s, key.clone(), value.clone())
        })
        .await
    }

    /// Sets `key`; returns the previous value.
    pub async fn put(&self, key: Bytes, value: Bytes) -> Result<Option<Bytes>, ClientError> {
        self.write_own(|conn, group, s| put_call(conn, group, s, key.clone(), value.clone()))
            .await
    }

    /// The value of `key` (linearizable).
    pub async fn get(&self, key: Bytes) -> Result<Option<Bytes>, ClientError> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    /// The value of `key` with the given consistency.
    pub async fn get_with(
        &self,
        key: Bytes,
        consistency: ReadConsistency,
    ) -> Result<Option<Bytes>, ClientError> {
        self.read(consistency, |conn, group| {
            let key = key.clone();
            async move {
                conn.get(GetRequest {
                    group,
                    key,
                    consistency: consistency as i32,
                })
                .await
                .map(|r| r.value)
            }
        })
        .await
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: Bytes) -> Result<bool, ClientError> {
        self.write_own(|conn, group, s| {
            let key = key.clone();
            async move {
                conn.delete(DeleteRequest {
                    group,
                    key,
                    session: Some(s),
                })
                .await
                .map(|r| r.deleted)
            }
        })
        .await
    }

    /// Sets `key` to `value` if its current value is `expected` (`None`:
    /// absent). Returns whether it swapped, and the current value if not.
    pub async fn cas(
        &self,
        key: Bytes,
        expected: Option<Bytes>,
        value: Bytes,
    ) -> Result<(bool, Option<Bytes>), ClientError> {
        self.write_own(|conn, group, s| {
            let (key, expected, value) = (key.clone(), expected.clone(), value.clone());
            async move {
                conn.cas(CasRequest {
                    group,
                    key,
                    expected,
                    value,
                    session: Some(s),
                })
                .await
                .map(|r| (r.swapped, r.current))
            }
        })
        .await
    }

    /// Keys starting with `prefix` (at most `limit`, 0 for the server's
    /// default), and whether more matched.
    pub async fn scan(
        &self,
        prefix: Bytes,
        limit: u32,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), ClientError> {
        self.read(ReadConsistency::Linearizable, |conn, group| {
            let prefix = prefix.clone();
            async move {
                KvClient::new(conn.channel())
                    .scan(ScanRequest {
                        group,
                        prefix,
                        limit,
                        consistency: ReadConsistency::Linearizable as i32,
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        (
                            r.items.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                            r.more,
                        )
                    })
            }
        })
        .await
    }

    /// A read: linearizable ones go to the leader; follower and stale ones
    /// to the members in turn.
    async fn read<T, F, Fut>(&self, consistency: ReadConsistency, call: F) -> Result<T, ClientError>
    where
        F: FnMut(Conn, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        match consistency {
            ReadConsistency::Linearizable => self.call(Retry::Idempotent, call).await,
            _ => self.call_any(call).await,
        }
    }

    /// Sends `call` to members in turn (not only the leader) until one
    /// answers, within the deadline.
    pub async fn call_any<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Conn, String) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut last = String::from("no member answered");
        let mut absent = Vec::new();
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::Unavailable(format!(
                    "gave up after {:?}: {last}",
                    self.timeout
                )));
            }
            let addr = self.next_member();
            let ch = match self.conn(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{addr}: {e}");
                    self.forget(&addr);
                    sleep_until_or(deadline, Duration::from_millis(20)).await;
                    continue;
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = remaining.min(self.attempt_timeout);
            match tokio::time::timeout(attempt, call(ch, self.group.clone())).await {
                Ok(Ok(v)) => {
                    self.answered(&addr);
                    return Ok(v);
                }
                Ok(Err(status)) => match from_status(&status) {
                    Some(e) if !e.is_retryable() => return Err(ClientError::Raft(e)),
                    Some(e) => last = format!("{addr}: {e}"),
                    None if is_transport_failure(&status) => {
                        last = format!("{addr}: {}", status.message());
                        self.forget(&addr);
                    }
                    None if status.code() == tonic::Code::NotFound
                        && !self.not_hosted_everywhere(&mut absent, &addr) =>
                    {
                        last = format!("{addr}: {}", status.message());
                    }
                    None => {
                        return Err(ClientError::Rpc {
                            addr,
                            code: status.code(),
                            message: status.message().to_string(),
                        })
                    }
                },
                Err(_) => {
                    self.suspect(&addr);
                    if attempt >= remaining {
                        return Err(ClientError::Unavailable(format!(
                            "{addr}: no answer within {attempt:?}"
                        )));
                    }
                    last = format!("{addr}: no answer within {attempt:?}");
                    continue;
                }
            }
            sleep_until_or(deadline, Duration::from_millis(20)).await;
        }
    }

    /// Adds the replica at `addr` (learner, catch up, promote) through the leader.
    pub async fn add_peer(
        &self,
        addr: &str,
        expected_conf_index: Option<u64>,
        catch_up_timeout_ms: u64,
    ) -> Result<ConfigurationReply, ClientError> {
        self.call(Retry::NotIdempotent, |conn, group| {
            let req = MembershipRequest {
                group,
                peer: addr.to_string(),
                expected_conf_index,
                catch_up_timeout_ms,
            };
            async move {
                AdminClient::new(conn.channel())
                    .add_peer(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Removes a member (address or 16-hex-digit id) through the leader.
    pub async fn remove_peer(
        &self,
        peer: &str,
        expected_conf_index: Option<u64>,
    ) -> Result<ConfigurationReply, ClientError> {
        self.call(Retry::NotIdempotent, |conn, group| {
            let req = MembershipRequest {
                group,
                peer: peer.to_string(),
                expected_conf_index,
                catch_up_timeout_ms: 0,
            };
            async move {
                AdminClient::new(conn.channel())
                    .remove_peer(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Makes the voters exactly `peers` (joint consensus) through the leader.
    pub async fn change_peers(
        &self,
        peers: &[String],
        expected_conf_index: Option<u64>,
        catch_up_timeout_ms: u64,
    ) -> Result<ConfigurationReply, ClientError> {
        self.call(Retry::NotIdempotent, |conn, group| {
            let req = ChangePeersRequest {
                group,
                peers: peers.to_vec(),
                expected_conf_index,
                catch_up_timeout_ms,
            };
            async move {
                AdminClient::new(conn.channel())
                    .change_peers(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Moves leadership to `target` (address or id), or the most caught-up
    /// voter with `"any"`; returns the new leader.
    pub async fn transfer_leader(
        &self,
        target: &str,
    ) -> Result<raftkit_proto::pb::Member, ClientError> {
        self.call(Retry::NotIdempotent, |conn, group| {
            let req = TransferRequest {
                group,
                target: target.to_string(),
            };
            async move {
                AdminClient::new(conn.channel())
                    .transfer_leader(req)
                    .await
                    .map(|r| r.into_inner().leader.unwrap_or_default())
            }
        })
        .await
    }

    /// Forced local reconfiguration of member `addr` (quorum loss only).
    pub async fn reset_peers(
        &self,
        addr: &str,
        peers: &[String],
    ) -> Result<ConfigurationReply, ClientError> {
        let req = ChangePeersRequest {
            group: self.group.clone(),
            peers: peers.to_vec(),
            expected_conf_index: None,
            catch_up_timeout_ms: 0,
        };
        let mut admin = self.admin(addr).await?;
        self.single(addr, admin.reset_peers(req)).await
    }

    /// Makes the empty member `addr` a one-member group.
    pub async fn bootstrap(&self, addr: &str) -> Result<(), ClientError> {
        let mut admin = self.admin(addr).await?;
        self.single(
            addr,
            admin.bootstrap(GroupRequest {
                group: self.group.clone(),
            }),
        )
        .await
        .map(|_| ())
    }

    async fn single<T>(
        &self,
        addr: &str,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => {
                self.forget(addr);
                Err(match from_status(&s) {
                    Some(e) => ClientError::Raft(e),
                    None => ClientError::Rpc {
                        addr: addr.to_string(),
                        code: s.code(),
                        message: s.message().to_string(),
                    },
                })
            }
            Err(_) => {
                self.forget(addr);
                Err(ClientError::Unavailable(format!(
                    "{addr}: no answer within {:?}",
                    self.timeout
                )))
            }
        }
    }

    /// Takes a snapshot now on member `addr` (this client's group, or every
    /// group when the client's group is empty).
    pub async fn member_snapshot(
        &self,
        addr: &str,
    ) -> Result<Vec<raftkit_proto::pb::SnapshotResult>, ClientError> {
        let mut admin = self.admin(addr).await?;
        let req = GroupRequest {
            group: self.group.clone(),
        };
        self.single(addr, admin.snapshot(req))
            .await
            .map(|r| r.groups)
    }

    /// The status of this client's group (every group when the client's
    /// group is empty) on one member.
    pub async fn member_status(&self, addr: &str) -> Result<Vec<NodeStatusReply>, ClientError> {
        let mut admin = self.admin(addr).await?;
        let req = GroupRequest {
            group: self.group.clone(),
        };
        self.single(addr, admin.status(req)).await.map(|r| r.groups)
    }

    /// The state-machine digest of this client's group on one member, with
    /// the applied index it was taken at (compare members at equal indexes).
    pub async fn member_digest(&self, addr: &str) -> Result<Vec<GroupDigest>, ClientError> {
        let mut admin = self.admin(addr).await?;
        let req = GroupRequest {
            group: self.group.clone(),
        };
        self.single(addr, admin.digest(req)).await.map(|r| r.groups)
    }

    async fn admin(&self, addr: &str) -> Result<AdminClient<Channel>, ClientError> {
        let conn = self
            .conn(addr)
            .await
            .map_err(|e| ClientError::Unavailable(format!("{addr}: {e}")))?;
        Ok(AdminClient::new(conn.channel()))
    }
}

/// A status that came from the connection, not from a RaftKit node: the
/// member may be down, and for a write the outcome is unknown.
fn is_transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) && from_status(status).is_none()
}

async fn sleep_until_or(deadline: Instant, d: Duration) {
    let now = Instant::now();
    if now < deadline {
        let jitter = 0.5 + rand::random::<f64>();
        tokio::time::sleep(d.mul_f64(jitter).min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;

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

    fn client() -> ClusterClient {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        ClusterClient::new(
            addrs.iter().map(|a| a.to_string()).collect(),
            "g",
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn a_suspect_member_is_passed_over_until_it_answers() {
        let c = client();
        *c.leader.lock() = Some("127.0.0.1:2".into());
        c.suspect("127.0.0.1:2");
        // Suspecting the cached leader drops it, and turns skip it.
        assert_eq!(c.cached_leader(), None);
        assert!(c.is_suspect("127.0.0.1:2"));
        for _ in 0..6 {
            assert_ne!(c.pick(), "127.0.0.1:2");
        }
        // When every member is suspect, turns go on anyway.
        c.suspect("127.0.0.1:1");
        c.suspect("127.0.0.1:3");
        let picked: HashSet<String> = (0..3).map(|_| c.next_member()).collect();
        assert_eq!(picked.len(), 3);
        // An answer clears it.
        c.answered("127.0.0.1:2");
        assert!(!c.is_suspect("127.0.0.1:2"));
    }

    #[test]
    fn turns_visit_every_member_of_an_even_sized_list() {
        let addrs: Vec<String> = (1..=4).map(|p| format!("127.0.0.1:{p}")).collect();
        let c = ClusterClient::new(addrs.clone(), "g", Duration::from_secs(1)).unwrap();
        let picked: HashSet<String> = (0..4).map(|_| c.pick()).collect();
        assert_eq!(picked.len(), 4, "{picked:?}");
    }

    #[test]
    fn the_attempt_timeout_has_a_floor() {
        let c = client().with_attempt_timeout(Duration::ZERO);
        assert_eq!(c.attempt_timeout, Duration::from_millis(1));
        assert_eq!(client().attempt_timeout, DEFAULT_ATTEMPT_TIMEOUT);
    }
}
