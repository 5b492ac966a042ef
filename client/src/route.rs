//! Finding the member to ask: the member list, the cached leader,
//! redirects, suspects (members that let an attempt time out), members of
//! another cluster (dropped), and the retry loop within a call's deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic::transport::Endpoint;
use tonic::Status;

use raftkit_proto::pb::admin_client::AdminClient;
use raftkit_proto::pb::GroupRequest;
use raftkit_proto::status::from_status;
use raftkit_proto::validate_addr;
use raftkit_proto::RaftError;

use crate::conn::CheckError;
use crate::pin::{never_sent, ClusterPin, Foreign, OneConnection};
use crate::*;

/// How long the cluster check of a new connection may take at most.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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
        let group = group.into();
        Ok(ClusterClient {
            addrs: Mutex::new(addrs),
            pin: Arc::new(ClusterPin::new(group.clone())),
            dialer: crate::dial::Dialer::plain(),
            foreign: Mutex::new(HashMap::new()),
            group,
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

    /// Connects to members over mutual TLS with `tls`'s certificate (each
    /// member's certificate must name the host it is dialled by).
    pub fn with_tls(mut self, tls: Arc<raftkit_tls::Tls>) -> Self {
        self.dialer = crate::dial::Dialer::tls(tls);
        self.conns.lock().clear();
        self
    }

    /// How this client connects (plain or TLS).
    pub fn dialer(&self) -> &crate::dial::Dialer {
        &self.dialer
    }

    /// How long a retryable call (a read, a session write) waits for one
    /// member before it gives up on that member and tries the next, within
    /// the call's deadline. Calls that cannot be retried (writes outside a
    /// session, membership changes) always wait for the whole deadline.
    pub fn with_attempt_timeout(mut self, attempt: Duration) -> Self {
        self.attempt_timeout = attempt.max(Duration::from_millis(1));
        self
    }

    /// Sends requests only to members of cluster `id` (16 hex digits, as
    /// `ClusterStatus::cluster_id` and `Identity::cluster_id` give it), instead
    /// of the cluster of the first member that states one. Empty: learn it.
    pub fn with_cluster_id(self, id: &str) -> Result<Self, ClientError> {
        let id = id.trim();
        if id.len() > 16 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ClientError::InvalidArgument(format!(
                "cluster id {id:?}: expected up to 16 hex digits"
            )));
        }
        let id = if id.is_empty() {
            String::new()
        } else {
            format!("{:0>16}", id.to_ascii_lowercase())
        };
        self.pin.expect(&id);
        Ok(self)
    }

    /// The cluster this client sends requests to: given, or learned from
    /// the first member that stated one (none yet: not known).
    pub fn cluster_id(&self) -> Option<String> {
        self.pin.id()
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
    pub(crate) async fn refresh_members(&self) {
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
            let foreign = self.foreign_members();
            let mut known = self.addrs.lock();
            for g in r.into_inner().groups {
                for m in g.voters.iter().chain(&g.learners).chain(&g.voters_outgoing) {
                    if !m.addr.is_empty()
                        && !known.contains(&m.addr)
                        && !foreign.contains(&m.addr)
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

    /// The connection to `addr` for a request: checked to belong to this
    /// client's cluster (once per connection, see `pin`).
    pub(crate) async fn conn(&self, addr: &str) -> Result<Conn, ConnectError> {
        let mut conn = self.conn_unchecked(addr).await?;
        let mut checked = conn
            .check_channel(self.attempt_timeout.min(CHECK_TIMEOUT))
            .await;
        if matches!(&checked, Err(CheckError::Failed(s)) if never_sent(s)) {
            // A cached, unchecked connection had ended: make a new one.
            self.forget(addr);
            conn = self.conn_unchecked(addr).await?;
            checked = conn
                .check_channel(self.attempt_timeout.min(CHECK_TIMEOUT))
                .await;
        }
        match checked {
            Ok(()) => Ok(conn),
            Err(e) => {
                self.forget(addr);
                let diagnosis = match &e {
                    CheckError::Failed(_) => self.dialer.diagnose(addr).await,
                    CheckError::Foreign(_) => None,
                };
                Err(match e {
                    CheckError::Foreign(f) => ConnectError {
                        message: f.to_string(),
                        refused: false,
                        foreign: Some(f),
                    },
                    CheckError::Failed(s) => ConnectError {
                        message: match diagnosis {
                            Some(d) => format!("cluster check: {}: {d}", with_causes(&s)),
                            None => format!("cluster check: {}", with_causes(&s)),
                        },
                        refused: false,
                        foreign: None,
                    },
                })
            }
        }
    }

    /// The connection to `addr` without the cluster check, for calls that
    /// ask one chosen member who it is (identity, status, digest).
    pub(crate) async fn conn_unchecked(&self, addr: &str) -> Result<Conn, ConnectError> {
        if let Some(c) = self.conns.lock().get(addr) {
            return Ok(c.clone());
        }
        let ch = connect(&self.dialer, addr).await?;
        let conn = Conn::new(ch, addr, !self.unary, self.pin.clone(), self.dialer.clone());
        self.conns.lock().insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    /// The members found in another cluster lately.
    fn foreign_members(&self) -> Vec<String> {
        let now = Instant::now();
        let mut f = self.foreign.lock();
        f.retain(|_, until| *until > now);
        f.keys().cloned().collect()
    }

    /// The member `f.addr` belongs to another cluster: it leaves the route
    /// table (and is not learned again for a while). An error when it was
    /// the last member the client knew.
    pub(crate) fn drop_foreign(&self, f: &Foreign) -> Result<(), ClientError> {
        self.forget(&f.addr);
        self.foreign
            .lock()
            .insert(f.addr.clone(), Instant::now() + FOREIGN_FOR);
        let mut addrs = self.addrs.lock();
        if addrs.iter().any(|a| *a != f.addr) {
            addrs.retain(|a| *a != f.addr);
            return Ok(());
        }
        Err(ClientError::WrongCluster(format!(
            "{f}; no other member is known"
        )))
    }

    pub(crate) fn forget(&self, addr: &str) {
        self.conns.lock().remove(addr);
        let mut l = self.leader.lock();
        if l.as_deref() == Some(addr) {
            *l = None;
        }
    }

    pub(crate) fn pick(&self) -> String {
        if let Some(l) = self.leader.lock().clone() {
            return l;
        }
        self.next_member()
    }

    /// The next member in turn, passing over suspects while any other
    /// member is left.
    pub(crate) fn next_member(&self) -> String {
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

    pub(crate) fn is_suspect(&self, addr: &str) -> bool {
        self.suspects
            .lock()
            .get(addr)
            .is_some_and(|until| *until > Instant::now())
    }

    /// `addr` let an attempt time out: drop its connection and cached
    /// leadership, and ask it last for a while.
    pub(crate) fn suspect(&self, addr: &str) {
        self.forget(addr);
        self.suspects
            .lock()
            .insert(addr.to_string(), Instant::now() + SUSPECT_FOR);
    }

    /// `addr` said it does not host the group: records it in `absent` (the
    /// members that said so during this call), stops treating it as the
    /// leader, and tells whether every known member has now said so.
    pub(crate) fn not_hosted_everywhere(&self, absent: &mut Vec<String>, addr: &str) -> bool {
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

    pub(crate) fn answered(&self, addr: &str) {
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
    pub(crate) async fn call_until<T, F, Fut>(
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
        let mut refused = Refusals::default();
        // Whether any attempt may have reached a leader that proposed it.
        let mut maybe_applied = false;
        loop {
            if Instant::now() >= deadline {
                return Err(gave_up(self.timeout, &last, maybe_applied));
            }
            let addr = self.pick();
            let ch = match self.conn(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    // Not connected: the request was certainly not sent.
                    last = format!("{addr}: {e}");
                    self.forget(&addr);
                    refused.note(&addr, &e, &self.addrs(), self)?;
                    if e.foreign.is_none() {
                        sleep_until_or(deadline, backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                    continue;
                }
            };
            let foreign = ch.foreign_slot();
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
                    maybe_applied = true;
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
            let stated_other = foreign.lock().clone();
            if let Some(f) = stated_other {
                // Its mux stream stated another cluster before any call.
                last = f.to_string();
                refused.foreign = Some(f.clone());
                self.drop_foreign(&f)?;
                continue;
            }
            if never_sent(&status) {
                // The member's connection had ended; the next one is checked.
                last = format!("{addr}: {}", status.message());
                self.forget(&addr);
                continue;
            }
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
                    maybe_applied |= !e.is_definitely_not_applied();
                    self.forget(&addr);
                }
                Some(e) => return Err(ClientError::Raft(e)),
                None if is_transport_failure(&status) && retry == Retry::Idempotent => {
                    last = format!("{addr}: {}", status.message());
                    maybe_applied = true;
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
        let mut maybe_applied = false;
        let mut refused = Refusals::default();
        loop {
            if Instant::now() >= deadline {
                return Err(gave_up(self.timeout, &last, maybe_applied));
            }
            let addr = self.next_member();
            let ch = match self.conn(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{addr}: {e}");
                    self.forget(&addr);
                    refused.note(&addr, &e, &self.addrs(), self)?;
                    if e.foreign.is_none() {
                        sleep_until_or(deadline, Duration::from_millis(20)).await;
                    }
                    continue;
                }
            };
            let foreign = ch.foreign_slot();
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = remaining.min(self.attempt_timeout);
            match tokio::time::timeout(attempt, call(ch, self.group.clone())).await {
                Ok(Ok(v)) => {
                    self.answered(&addr);
                    return Ok(v);
                }
                Ok(Err(_)) if foreign.lock().is_some() => {
                    let stated_other = foreign.lock().clone();
                    if let Some(f) = stated_other {
                        last = f.to_string();
                        refused.foreign = Some(f.clone());
                        self.drop_foreign(&f)?;
                    }
                    continue;
                }
                Ok(Err(status)) if never_sent(&status) => {
                    last = format!("{addr}: {}", status.message());
                    self.forget(&addr);
                    continue;
                }
                Ok(Err(status)) => match from_status(&status) {
                    Some(e) if !e.is_retryable() => return Err(ClientError::Raft(e)),
                    Some(e) => {
                        last = format!("{addr}: {e}");
                        maybe_applied |= !e.is_definitely_not_applied();
                    }
                    None if is_transport_failure(&status) => {
                        last = format!("{addr}: {}", status.message());
                        maybe_applied = true;
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
                    maybe_applied = true;
                    continue;
                }
            }
            sleep_until_or(deadline, Duration::from_millis(20)).await;
        }
    }
}

/// The error of a call that ran out of time: of unknown outcome if any
/// attempt may have been proposed, else certainly not applied.
fn gave_up(timeout: Duration, last: &str, maybe_applied: bool) -> ClientError {
    let message = format!("gave up after {timeout:?}: {last}");
    if maybe_applied {
        ClientError::Unavailable(message)
    } else {
        ClientError::Refused(message)
    }
}

/// A gRPC channel to the member at `addr` (500 ms to connect, keepalive).
pub(crate) async fn connect(
    dialer: &crate::dial::Dialer,
    addr: &str,
) -> Result<tonic::transport::Channel, ConnectError> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ConnectError {
            message: e.to_string(),
            refused: false,
            foreign: None,
        })?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    // One TCP connection per channel, never re-made behind the client's
    // back: a new connection is a new `Conn`, checked again (see `pin`).
    ep.connect_with_connector(OneConnection::new(dialer, addr))
        .await
        .map_err(|e| ConnectError {
            message: format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ),
            refused: is_refused(&e),
            foreign: None,
        })
}

/// A status's message and what caused it (a TLS alert under "transport
/// error", say), for errors a person reads.
fn with_causes(s: &tonic::Status) -> String {
    let mut text = s.message().to_string();
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

/// Why a connection to a member could not be made.
#[derive(Debug)]
pub(crate) struct ConnectError {
    pub(crate) message: String,
    /// Nothing listens there: the connection was refused at once.
    pub(crate) refused: bool,
    /// The member belongs to another cluster (nothing was sent to it).
    pub(crate) foreign: Option<Foreign>,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Whether a connect error (or what caused it) is a refused connection.
fn is_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// Members that refused a connection during one call. When every member
/// has, nothing listens at any of the addresses: that is known at once, so
/// the call fails then (like etcdctl's dial timeout) instead of waiting out
/// its deadline, which is kept for members that answer slowly or not at all.
/// A member of another cluster met during the call is dropped from the
/// route table (an error when it was the last); when the rest refuse, the
/// error says the member left belongs to another cluster.
#[derive(Default)]
pub(crate) struct Refusals {
    refused: std::collections::BTreeSet<String>,
    /// A member of another cluster met during this call.
    foreign: Option<Foreign>,
}

impl Refusals {
    pub(crate) fn note(
        &mut self,
        addr: &str,
        e: &ConnectError,
        members: &[String],
        client: &ClusterClient,
    ) -> Result<(), ClientError> {
        if let Some(f) = &e.foreign {
            self.foreign = Some(f.clone());
            client.drop_foreign(f)?;
            return self.all_refused(&client.addrs());
        }
        if !e.refused {
            return Ok(());
        }
        self.refused.insert(addr.to_string());
        self.all_refused(members)
    }

    fn all_refused(&self, members: &[String]) -> Result<(), ClientError> {
        if self.refused.is_empty() || !members.iter().all(|m| self.refused.contains(m)) {
            return Ok(());
        }
        let refused = format!(
            "every member refused the connection ({})",
            members.join(", ")
        );
        Err(match &self.foreign {
            Some(f) => ClientError::WrongCluster(format!("{refused}, and {f}")),
            None => ClientError::Refused(format!(
                "{refused}: is the cluster running at these addresses?"
            )),
        })
    }
}

/// A status that came from the connection, not from a RaftKit node: the
/// member may be down, and for a write the outcome is unknown.
pub(crate) fn is_transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) && from_status(status).is_none()
}

pub(crate) async fn sleep_until_or(deadline: Instant, d: Duration) {
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
