//! Where every connection this crate makes to a node starts (gRPC
//! channels, mux streams, HTTP probes): [`Dialer`], plain or mutual TLS
//! (`raftkit-tls`), and the one hook a process has over how member names
//! turn into addresses.
//!
//! Members are named as their peers name them: a Kubernetes pod by its DNS
//! name under the headless Service, a container by its alias on a Docker
//! network. A program outside that network (`raftkit-operator local
//! --backend docker` on the host, or a test driving such a cluster) cannot
//! resolve those names through the system's resolver, so it adds a
//! [`Resolver`] that knows them ([`add_resolver`]); every other name
//! resolves as usual. Resolvers are asked on each new connection, never
//! cached here: a container that restarts comes back at another address.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::RwLock;
use raftkit_tls::Tls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a [`Resolver`] answers: the address, or `None` for a name it does
/// not know (the next resolver, then the system's, is asked).
pub type Resolved<'a> = Pin<Box<dyn Future<Output = io::Result<Option<IpAddr>>> + Send + 'a>>;

/// Turns some member host names into addresses (see the module docs).
pub trait Resolver: Send + Sync {
    /// The address of `host` (a name without the port), `None` when this
    /// resolver does not know the name, or an error when it should know it
    /// but cannot say (the connection then fails with that error).
    fn resolve<'a>(&'a self, host: &'a str) -> Resolved<'a>;
}

static RESOLVERS: RwLock<Vec<Arc<dyn Resolver>>> = RwLock::new(Vec::new());

/// Adds a resolver for this process, asked after those added before it.
pub fn add_resolver(resolver: Arc<dyn Resolver>) {
    RESOLVERS.write().push(resolver);
}

/// The address `addr` (`host:port`) stands for when a resolver knows its
/// host; `None` when the system's resolver is to be used.
pub async fn resolve(addr: &str) -> io::Result<Option<SocketAddr>> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Ok(None);
    };
    let resolvers: Vec<Arc<dyn Resolver>> = RESOLVERS.read().clone();
    if resolvers.is_empty() || host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return Ok(None);
    }
    let port: u16 = port.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr}: the port is not a number"),
        )
    })?;
    for r in resolvers {
        if let Some(ip) = r.resolve(host).await? {
            return Ok(Some(SocketAddr::new(ip, port)));
        }
    }
    Ok(None)
}

/// A TCP connection to `addr` (`host:port`), with Nagle off: through a
/// [`Resolver`] that knows the host, else the system's resolver.
pub async fn tcp(addr: &str) -> io::Result<TcpStream> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{addr}: {e}"));
    let stream = match resolve(addr).await.map_err(named)? {
        Some(sa) => TcpStream::connect(sa).await,
        None => TcpStream::connect(addr).await,
    }
    .map_err(named)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a client's connections are made: plain TCP, or mutual TLS with the
/// client's certificate (the member's certificate must name the host it
/// was dialled by and chain to the CA).
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    tls: Option<Arc<Tls>>,
}

impl Dialer {
    pub fn plain() -> Dialer {
        Dialer::default()
    }

    pub fn tls(tls: Arc<Tls>) -> Dialer {
        Dialer { tls: Some(tls) }
    }

    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Why a TLS member refuses this client, found by a connection of its
    /// own (on a failure path only): after the handshake, a member that
    /// does not accept our certificate sends an alert (in TLS 1.3 a
    /// client learns it only on its first read, which an HTTP/2 channel
    /// reports as "connection closed"). `None` without TLS, or when the
    /// member says nothing within a second.
    pub async fn diagnose(&self, addr: &str) -> Option<String> {
        use tokio::io::AsyncReadExt;
        self.tls.as_ref()?;
        let mut s = match self.connect(addr).await {
            Ok(s) => s,
            Err(e) => return Some(e.to_string()),
        };
        let mut b = [0u8; 1];
        match tokio::time::timeout(std::time::Duration::from_secs(1), s.read(&mut b)).await {
            Ok(Err(e)) => Some(format!("TLS with {addr}: {e}")),
            _ => None,
        }
    }

    /// A connection to `addr` (`host:port`), TLS set up when configured.
    pub async fn connect(&self, addr: &str) -> io::Result<Stream> {
        let tcp = tcp(addr).await?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => Ok(Stream::Tls(Box::new(
                raftkit_tls::connect(tls, tcp, addr).await?,
            ))),
        }
    }
}

/// A connection a [`Dialer`] made.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<raftkit_tls::ClientStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Knows one name, and fails for another it should know.
    struct Fixed(IpAddr);

    impl Resolver for Fixed {
        fn resolve<'a>(&'a self, host: &'a str) -> Resolved<'a> {
            Box::pin(async move {
                match host {
                    "member-0.test-dial.invalid" => Ok(Some(self.0)),
                    "gone.test-dial.invalid" => {
                        Err(io::Error::new(io::ErrorKind::NotFound, "no such container"))
                    }
                    _ => Ok(None),
                }
            })
        }
    }

    #[tokio::test]
    async fn a_resolver_turns_a_member_name_into_its_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        add_resolver(Arc::new(Fixed("127.0.0.1".parse().unwrap())));

        let _conn = tcp(&format!("member-0.test-dial.invalid:{port}"))
            .await
            .expect("connected through the resolver");
        let (_, from) = listener.accept().await.unwrap();
        assert!(from.ip().is_loopback());

        // Names it does not know go to the system's resolver (.invalid
        // never resolves there), and its errors name the address.
        let err = tcp(&format!("other.test-dial.invalid:{port}"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("other.test-dial.invalid"), "{err}");
        let err = tcp(&format!("gone.test-dial.invalid:{port}"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no such container"), "{err}");
        // Addresses are never handed to a resolver.
        let _direct = tcp(&format!("127.0.0.1:{port}")).await.unwrap();
    }
}
