//! Mutual TLS on the node's one port (`--tls-cert`, `--tls-key`,
//! `--tls-ca`): the connections `server::accept` hands to HTTP and gRPC
//! ([`ServerIo`], with who the peer is: [`Peer`]), and who may call what
//! ([`authorize`], a layer in front of every route). Raft streams check
//! their sender in `transport::stream`; mux streams carry Counter and KV
//! calls, which any certificate of the CA may make.
//!
//! Roles (the certificate subject's OU, see `raftkit_tls`):
//! - any certificate of the CA: Counter, KV, admin reads (status,
//!   identity, digest), `GET` of `/raft_stat`, `/flags`, `/metrics`, probes;
//! - `raftkit-admin`: everything else on the Admin service (membership,
//!   leadership, snapshots, bootstrap, reset) and `POST /flags`, `/debug/*`;
//! - `raftkit-node`: snapshot installs (a leader sending to a follower).
//!
//! With `--tls-plain-probes` (the default), a plain HTTP connection may
//! `GET /livez`, `/healthz`, `/readyz` and `/metrics` only: kubelet probes
//! and Prometheus scrapers need no certificate.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use raftkit_tls::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::{TlsRefusal, TLS_REFUSED};

/// Who is at the other end of an HTTP or gRPC connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The verified certificate's identity; `None` on a plain connection.
    pub identity: Option<Arc<PeerIdentity>>,
    /// The port serves TLS (a plain connection is then a probe's).
    pub tls_port: bool,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, crate::server::HttpConnections>,
    > for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, crate::server::HttpConnections>) -> Self {
        s.remote_addr().clone()
    }
}

/// An HTTP or gRPC connection: plain, or TLS whose first bytes were read
/// to sort it (they are read again from `prefix`).
pub enum ServerIo {
    Plain(TcpStream),
    Tls(Box<Prefixed<raftkit_tls::ServerStream<TcpStream>>>),
}

/// A stream whose first bytes were already read.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Whether raft messages of `node`'s group may come over TLS from the
/// member at `from` (the address its stream's preface states) with
/// certificate `id`: a member's certificate naming `from`'s host, and
/// `from` a member of the configuration this replica knows (any member's
/// certificate while it knows none: it waits to be added).
pub fn admits_raft(node: &crate::node::Node, id: &PeerIdentity, from: &str) -> bool {
    id.is_node()
        && id.names(raftkit_tls::host_of(from))
        && node
            .member_addrs()
            .is_none_or(|m| m.iter().any(|a| a == from))
}

/// Whether a snapshot install for `node`'s group may come from certificate
/// `id`: a member's certificate naming the host of one of the members this
/// replica knows (any member's while it knows none).
pub fn admits_install(node: &crate::node::Node, id: &PeerIdentity) -> bool {
    id.is_node()
        && node
            .member_addrs()
            .is_none_or(|m| m.iter().any(|a| id.names(raftkit_tls::host_of(a))))
}

/// Paths a plain connection may `GET` on a TLS port.
const PLAIN_PROBES: [&str; 4] = ["/livez", "/healthz", "/readyz", "/metrics"];

/// Admin methods any certificate of the CA may call (they change nothing).
const ADMIN_READS: [&str; 3] = ["Status", "Identity", "Digest"];

/// What a request needs, by method and path.
#[derive(Debug, PartialEq, Eq)]
enum Needs {
    /// Nothing (a plain probe may ask).
    Probe,
    /// Any certificate of the CA.
    Certificate,
    Admin,
    Node,
}

fn needs(method: &axum::http::Method, path: &str) -> Needs {
    if method == axum::http::Method::GET && PLAIN_PROBES.contains(&path) {
        return Needs::Probe;
    }
    if let Some(m) = path.strip_prefix("/raftkit.v1.Admin/") {
        return if ADMIN_READS.contains(&m) {
            Needs::Certificate
        } else {
            Needs::Admin
        };
    }
    if path.starts_with("/raftkit.v1.SnapshotInstall/") {
        return Needs::Node;
    }
    if method != axum::http::Method::GET || path.starts_with("/debug/") {
        // POST /flags, /debug/*: they change how the node runs. (gRPC calls
        // are POSTs too, but Counter and KV are not matched here.)
        if !path.starts_with("/raftkit.v1.Counter/") && !path.starts_with("/raftkit.v1.Kv/") {
            return Needs::Admin;
        }
    }
    Needs::Certificate
}

/// The layer in front of every route: refuses a request the peer's
/// certificate (or its lack) does not allow, counted in
/// `raftkit_tls_refused_total`. Without TLS on the port, lets all through.
pub async fn authorize(req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.clone());
    let Some(peer) = peer.filter(|p| p.tls_port) else {
        return next.run(req).await;
    };
    let need = needs(req.method(), req.uri().path());
    let refusal = match (&peer.identity, &need) {
        (_, Needs::Probe) => None,
        (None, _) => Some((
            TlsRefusal::Plain,
            format!(
                "{} {} needs mutual TLS on this port (a certificate of its CA)",
                req.method(),
                req.uri().path()
            ),
        )),
        (Some(_), Needs::Certificate) => None,
        (Some(id), Needs::Admin) if id.is_admin() => None,
        (Some(id), Needs::Node) if id.is_node() => None,
        (Some(id), need) => Some((
            TlsRefusal::Role,
            format!(
                "{} needs a certificate with OU={} ({} has not)",
                req.uri().path(),
                if *need == Needs::Node {
                    raftkit_tls::ROLE_NODE
                } else {
                    raftkit_tls::ROLE_ADMIN
                },
                id.describe()
            ),
        )),
    };
    let Some((why, message)) = refusal else {
        return next.run(req).await;
    };
    TLS_REFUSED.count(why);
    tracing::warn!(remote = %peer.addr, reason = why.as_str(), "{message}");
    let grpc = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        tonic::Status::permission_denied(message)
            .into_http::<axum::body::Body>()
            .into_response()
    } else {
        (axum::http::StatusCode::FORBIDDEN, format!("{message}\n")).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn what_each_call_needs() {
        let cases = [
            (Method::GET, "/readyz", Needs::Probe),
            (Method::GET, "/metrics", Needs::Probe),
            (Method::GET, "/raft_stat", Needs::Certificate),
            (Method::GET, "/flags", Needs::Certificate),
            (Method::POST, "/flags", Needs::Admin),
            (Method::POST, "/debug/partition", Needs::Admin),
            (Method::GET, "/debug/failpoint", Needs::Admin),
            (
                Method::POST,
                "/raftkit.v1.Counter/FetchAdd",
                Needs::Certificate,
            ),
            (Method::POST, "/raftkit.v1.Kv/Put", Needs::Certificate),
            (Method::POST, "/raftkit.v1.Admin/Status", Needs::Certificate),
            (
                Method::POST,
                "/raftkit.v1.Admin/Identity",
                Needs::Certificate,
            ),
            (Method::POST, "/raftkit.v1.Admin/AddPeer", Needs::Admin),
            (
                Method::POST,
                "/raftkit.v1.Admin/TransferLeader",
                Needs::Admin,
            ),
            (Method::POST, "/raftkit.v1.Admin/Snapshot", Needs::Admin),
            (
                Method::POST,
                "/raftkit.v1.SnapshotInstall/Chunk",
                Needs::Node,
            ),
        ];
        for (m, path, want) in cases {
            assert_eq!(needs(&m, path), want, "{m} {path}");
        }
    }
}
