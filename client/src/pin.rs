//! Pinning a client to one cluster: the cluster id it expects of every
//! member it sends a request to, and the one-connection channel that makes
//! "checked once per connection" mean exactly that.
//!
//! A member's address can come to belong to another cluster (a pod
//! rescheduled, a port reused). A client that followed such a member's
//! redirect would send its writes to the other cluster's leader, where a
//! write without a session, or a session's first write, is applied (etcd's
//! clients check the cluster id for the same reason). So each connection a
//! client makes states, before it carries a request, which cluster the
//! member's replica belongs to: the admin `Identity` call on a new gRPC
//! channel, the `MuxHello` call on a new mux stream. The client learns the
//! id from the first member that states one (or is given it by its caller)
//! and refuses a connection to a member that states another. A member that
//! states none (a replica not yet in a cluster, a node from before cluster
//! ids) is accepted, as the server side accepts a zero id.
//!
//! The check costs one round trip per new connection and nothing per
//! request. It relies on every request of a connection going to the member
//! that answered the check: a mux stream is one TCP connection, and a gRPC
//! channel is made by [`OneConnection`], which connects once and refuses to
//! reconnect (tonic's channels reconnect on their own, and a reconnection
//! after the address changed hands would skip the check), so the client
//! makes a new, checked connection instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tonic::transport::Uri;

/// The cluster a client's requests may go to, shared by its connections.
pub(crate) struct ClusterPin {
    /// The group whose cluster id members are asked.
    pub(crate) group: String,
    /// 16 hex digits once known (given, or stated by the first member).
    id: Mutex<Option<String>>,
}

/// A member that stated another cluster than the client's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Foreign {
    pub(crate) addr: String,
    /// The cluster the member stated.
    pub(crate) theirs: String,
    /// The client's.
    pub(crate) ours: String,
}

impl std::fmt::Display for Foreign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} belongs to cluster {}, not to this client's cluster {} (its address changed hands?); nothing was sent to it",
            self.addr, self.theirs, self.ours
        )
    }
}

impl ClusterPin {
    pub(crate) fn new(group: String) -> ClusterPin {
        ClusterPin {
            group,
            id: Mutex::new(None),
        }
    }

    /// Expects `id` (compared as lower-case text; empty: learn it).
    pub(crate) fn expect(&self, id: &str) {
        let id = id.trim().to_ascii_lowercase();
        *self.id.lock() = (!id.is_empty()).then_some(id);
    }

    pub(crate) fn id(&self) -> Option<String> {
        self.id.lock().clone()
    }

    /// Whether the member at `addr`, stating `stated`, may get requests;
    /// the first stated id is learned.
    pub(crate) fn admit(&self, addr: &str, stated: &str) -> Result<(), Foreign> {
        let stated = stated.trim().to_ascii_lowercase();
        if stated.is_empty() {
            return Ok(());
        }
        let mut id = self.id.lock();
        match &*id {
            None => {
                tracing::debug!(addr, cluster = %stated, "client pinned to the cluster of its first member");
                *id = Some(stated);
                Ok(())
            }
            Some(ours) if *ours == stated => Ok(()),
            Some(ours) => Err(Foreign {
                addr: addr.to_string(),
                theirs: stated,
                ours: ours.clone(),
            }),
        }
    }
}

/// A tonic connector that makes one TCP connection to `addr` and refuses
/// any later one with [`ConnectionEnded`], so that a channel never carries
/// a request over a connection its client has not checked.
#[derive(Clone)]
pub(crate) struct OneConnection {
    addr: String,
    dialer: crate::dial::Dialer,
    used: Arc<AtomicBool>,
    /// Why the connection failed, once it did (a TLS alert the member
    /// sent, say): a later call is told.
    why: Arc<parking_lot::Mutex<Option<String>>>,
}

impl OneConnection {
    pub(crate) fn new(dialer: &crate::dial::Dialer, addr: &str) -> OneConnection {
        OneConnection {
            addr: addr.to_string(),
            dialer: dialer.clone(),
            used: Arc::default(),
            why: Arc::default(),
        }
    }
}

/// The member's first connection ended (and why, when known); the channel
/// does not reconnect.
#[derive(Debug)]
pub(crate) struct ConnectionEnded(String, Option<String>);

impl std::fmt::Display for ConnectionEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.1 {
            Some(why) => write!(
                f,
                "the connection to {} ended: {why} (a new one is made and checked)",
                self.0
            ),
            None => write!(
                f,
                "the connection to {} ended (a new one is made and checked)",
                self.0
            ),
        }
    }
}

/// A connection that remembers its first I/O error.
pub(crate) struct Watched {
    inner: crate::dial::Stream,
    why: Arc<parking_lot::Mutex<Option<String>>>,
}

impl Watched {
    fn note<T>(&self, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            self.why.lock().get_or_insert_with(|| e.to_string());
        }
        r
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.note(r)
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note(r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.note(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.note(r)
    }
}

impl std::error::Error for ConnectionEnded {}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<hyper_util::rt::TokioIo<Watched>>> + Send>>;

impl tonic::codegen::Service<Uri> for OneConnection {
    type Response = hyper_util::rt::TokioIo<Watched>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, dialer, why) = (self.addr.clone(), self.dialer.clone(), self.why.clone());
        if self.used.swap(true, Ordering::AcqRel) {
            let why = why.lock().clone();
            return Box::pin(async move {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    ConnectionEnded(addr, why),
                ))
            });
        }
        Box::pin(async move {
            let inner = dialer.connect(&addr).await?;
            Ok(hyper_util::rt::TokioIo::new(Watched { inner, why }))
        })
    }
}

/// Whether a call failed because its channel's connection had ended and
/// [`OneConnection`] refused to make another: the request was not sent.
pub(crate) fn never_sent(status: &tonic::Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(c) = cause {
        if c.is::<ConnectionEnded>() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|e| e.is::<ConnectionEnded>()) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stated_id_is_learned_and_others_refused() {
        let pin = ClusterPin::new("kv".into());
        assert_eq!(pin.admit("a:1", ""), Ok(()), "none stated: accepted");
        assert_eq!(pin.id(), None);
        assert_eq!(pin.admit("a:1", "00000000000000AB"), Ok(()));
        assert_eq!(pin.id().as_deref(), Some("00000000000000ab"));
        assert_eq!(pin.admit("b:1", "00000000000000ab"), Ok(()));
        assert_eq!(pin.admit("c:1", ""), Ok(()));
        let e = pin.admit("d:1", "00000000000000cd").unwrap_err();
        assert_eq!(
            (e.theirs.as_str(), e.ours.as_str()),
            ("00000000000000cd", "00000000000000ab")
        );
        // An expected id is not replaced by what members state.
        let given = ClusterPin::new("kv".into());
        given.expect("00000000000000cd");
        assert!(given.admit("a:1", "00000000000000ab").is_err());
        assert_eq!(given.id().as_deref(), Some("00000000000000cd"));
    }
}
