//! Mutual TLS on RaftKit's one port, shared by the node, its clients, the
//! CLI and the operator: what a certificate file set is ([`TlsFiles`]), the
//! rustls configurations made from it that follow the files when they
//! change ([`Tls`]), who a peer's certificate says it is ([`PeerIdentity`],
//! with the roles below), and connecting and accepting over tokio or
//! blocking sockets.
//!
//! ```text
//!  TlsFiles (cert, key, CA; PEM) ──load──▶ Tls ──server_config()──▶ accept ──▶ (stream, PeerIdentity)
//!        ▲ files replaced in place            └─client_config()──▶ connect / connect_blocking
//!        └──── checked at most once a second; a bad new file keeps the old configuration
//! ```
//!
//! Roles come from the certificate subject's Organizational Unit (OU):
//! [`ROLE_NODE`] for members (their DNS or IP SANs name the host of their
//! advertised address), [`ROLE_ADMIN`] for whoever changes the cluster
//! (membership, leadership, snapshots, flags), and any other certificate
//! the CA signed (by convention [`ROLE_CLIENT`]) for applications.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The rustls this crate is built on (for callers driving a connection
/// themselves, as raft links do).
pub use rustls;

/// OU of a member's certificate.
pub const ROLE_NODE: &str = "raftkit-node";
/// OU of a certificate that may change the cluster.
pub const ROLE_ADMIN: &str = "raftkit-admin";
/// OU of an application's certificate (any OU other than the two above
/// has the same rights).
pub const ROLE_CLIENT: &str = "raftkit-client";

/// How often the files are looked at for a change, at most.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The files of one TLS identity: PEM certificate chain and private key
/// (optional for a client, which then presents no certificate), and the CA
/// certificates peers must chain to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: PathBuf,
}

/// Why TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    #[error("a certificate and its key go together: {0}")]
    Pair(String),
    #[error("{what}: {source}")]
    Rustls { what: String, source: rustls::Error },
    #[error("the certificate cannot be read: {0}")]
    Certificate(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(&read(path)?, &path.display().to_string())
}

/// PEM certificates from `bytes`; `p` names where they came from.
fn parse_certs(bytes: &[u8], p: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let p = p.to_string();
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: p.clone(),
            what: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: p,
            what: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(&read(path)?, &path.display().to_string())
}

fn parse_key(bytes: &[u8], p: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| TlsError::Pem {
        path: p.to_string(),
        what: format!("holds no PEM private key: {e}"),
    })
}

/// rustls on *ring*: it builds with the C compiler every machine here has
/// (aws-lc-rs, which adds post-quantum key exchange, wants cmake). rustls
/// 0.23.48 marks this deprecated for that reason; the key exchange is
/// X25519/ECDHE, as etcd's Go TLS uses by default.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// (modified, length) of cert, key and CA: what "the files changed" means.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// One loaded generation of the files.
struct Loaded {
    /// The files' stamp when loaded.
    stamp: Stamp,
    server: Option<Arc<ServerConfig>>,
    client: Arc<ClientConfig>,
    own: Option<PeerIdentity>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<Option<&Path>> {
        vec![
            self.cert.as_deref(),
            self.key.as_deref(),
            Some(self.ca.as_path()),
        ]
    }

    fn stamp(&self) -> Stamp {
        self.paths()
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(p?).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }

    fn load(&self) -> Result<Loaded, TlsError> {
        let stamp = self.stamp();
        let ca = read_certs(&self.ca)?;
        let pair = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read_certs(c)?, read_key(k)?)),
            (None, None) => None,
            (Some(c), None) => {
                return Err(TlsError::Pair(format!(
                    "{} is given without a key",
                    c.display()
                )))
            }
            (None, Some(k)) => {
                return Err(TlsError::Pair(format!(
                    "{} is given without a certificate",
                    k.display()
                )))
            }
        };
        build(ca, &self.ca.display().to_string(), pair, stamp)
    }
}

/// The configurations for a CA, and our certificate and key if any.
fn build(
    ca: Vec<CertificateDer<'static>>,
    ca_from: &str,
    pair: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    stamp: Stamp,
) -> Result<Loaded, TlsError> {
    {
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|source| TlsError::Rustls {
                what: format!("{ca_from}: not a usable CA certificate"),
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let rustls_err = |what: &str| {
            let what = what.to_string();
            move |source| TlsError::Rustls { what, source }
        };
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Certificate(format!("the CA: {e}")))?;
        let client_builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err("protocol versions"))?
            .with_webpki_verifier(server_verifier);
        let (client, server, own) = match pair {
            Some((certs, key)) => {
                let own = PeerIdentity::from_der(&certs[0])?;
                let client = client_builder
                    .with_client_auth_cert(certs.clone(), key.clone_key())
                    .map_err(rustls_err("the certificate and key do not match"))?;
                let client_verifier =
                    WebPkiClientVerifier::builder_with_provider(roots, provider())
                        .build()
                        .map_err(|e| TlsError::Certificate(format!("the CA: {e}")))?;
                let server = ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(rustls_err("protocol versions"))?
                    .with_client_cert_verifier(client_verifier)
                    .with_single_cert(certs, key)
                    .map_err(rustls_err("the certificate and key do not match"))?;
                (client, Some(Arc::new(server)), Some(own))
            }
            None => (client_builder.with_no_client_auth(), None, None),
        };
        Ok(Loaded {
            stamp,
            server,
            client: Arc::new(client),
            own,
        })
    }
}

/// A TLS identity loaded from [`TlsFiles`], following them: each use
/// looks at the files at most once a second, and a changed set that loads
/// replaces the configuration for new connections (connections already
/// open keep theirs). A changed set that does not load is reported once
/// and the last good one stays.
pub struct Tls {
    /// `None`: made from PEM in memory, never reloaded.
    files: Option<TlsFiles>,
    current: RwLock<Arc<Loaded>>,
    /// When the files were last looked at, and the stamp that last failed.
    checked: Mutex<(Instant, Option<Stamp>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Loads the files; any problem is an error naming the file and what
    /// is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let loaded = files.load()?;
        Ok(Arc::new(Tls {
            files: Some(files),
            current: RwLock::new(Arc::new(loaded)),
            checked: Mutex::new((Instant::now(), None)),
        }))
    }

    /// A TLS identity from PEM text (the operator's, read from Secrets):
    /// `cert_and_key` (none: present no certificate) and the CA
    /// certificates. It is not reloaded; make a new one for new PEM.
    pub fn from_pem(cert_and_key: Option<(&str, &str)>, ca: &str) -> Result<Arc<Tls>, TlsError> {
        let pair = match cert_and_key {
            Some((c, k)) => Some((
                parse_certs(c.as_bytes(), "the certificate")?,
                parse_key(k.as_bytes(), "the key")?,
            )),
            None => None,
        };
        let loaded = build(
            parse_certs(ca.as_bytes(), "the CA certificate")?,
            "the CA certificate",
            pair,
            Vec::new(),
        )?;
        Ok(Arc::new(Tls {
            files: None,
            current: RwLock::new(Arc::new(loaded)),
            checked: Mutex::new((Instant::now(), None)),
        }))
    }

    /// The files it follows (`None` when made from PEM).
    pub fn files(&self) -> Option<&TlsFiles> {
        self.files.as_ref()
    }

    fn fresh(&self) -> Arc<Loaded> {
        if let Some(files) = &self.files {
            self.follow(files);
        }
        self.current.read().clone()
    }

    /// Loads `files` again if they changed (at most once a second).
    fn follow(&self, files: &TlsFiles) {
        {
            let mut checked = self.checked.lock();
            if checked.0.elapsed() >= RELOAD_CHECK {
                checked.0 = Instant::now();
                let stamp = files.stamp();
                let current = self.current.read().clone();
                if stamp != current.stamp && checked.1.as_ref() != Some(&stamp) {
                    match files.load() {
                        Ok(l) => {
                            tracing::info!(cert = ?files.cert, "TLS files changed; new connections use them");
                            *self.current.write() = Arc::new(l);
                            checked.1 = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the last good ones");
                            checked.1 = Some(stamp);
                        }
                    }
                }
            }
        }
    }

    /// Loads the files now if they changed (tests; serving does this by
    /// itself). `Ok(true)` when a new set was loaded.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let current = self.current.read().clone();
        if files.stamp() == current.stamp {
            return Ok(false);
        }
        let l = files.load()?;
        *self.current.write() = Arc::new(l);
        Ok(true)
    }

    /// The server side (requires a client certificate signed by the CA);
    /// `None` without a certificate of our own.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.fresh().server.clone()
    }

    /// The client side (verifies the server's certificate names the host
    /// dialled; presents ours when there is one).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.fresh().client.clone()
    }

    /// Who our own certificate says we are.
    pub fn own_identity(&self) -> Option<PeerIdentity> {
        self.fresh().own.clone()
    }
}

/// What a peer's (verified) certificate says: its names and its roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub common_name: Option<String>,
    /// Organizational Units of the subject: the roles.
    pub units: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl PeerIdentity {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, TlsError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let subject = cert.subject();
        let text =
            |a: &x509_parser::x509::AttributeTypeAndValue| a.as_str().ok().map(str::to_string);
        let common_name = subject.iter_common_name().next().and_then(text);
        let units = subject
            .iter_organizational_unit()
            .filter_map(text)
            .collect();
        let mut dns_names = Vec::new();
        let mut ips = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                        16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Ok(PeerIdentity {
            common_name,
            units,
            dns_names,
            ips,
        })
    }

    /// The subject has `role` among its OUs.
    pub fn has_role(&self, role: &str) -> bool {
        self.units.iter().any(|u| u == role)
    }

    pub fn is_admin(&self) -> bool {
        self.has_role(ROLE_ADMIN)
    }

    pub fn is_node(&self) -> bool {
        self.has_role(ROLE_NODE)
    }

    /// Whether the certificate names `host` (a DNS name, any case, or an
    /// IP address) among its SANs.
    pub fn names(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => self.ips.contains(&ip),
            Err(_) => self.dns_names.iter().any(|d| d.eq_ignore_ascii_case(host)),
        }
    }

    /// `CN=..., OU=...`, for errors and logs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(cn) = &self.common_name {
            parts.push(format!("CN={cn}"));
        }
        parts.extend(self.units.iter().map(|u| format!("OU={u}")));
        if parts.is_empty() {
            "a certificate with no subject name".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host_of(addr).to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr}: not a name a certificate can carry: {e}"),
        )
    })
}

/// The identity of the certificate a connection's peer presented.
fn identity_of(certs: Option<&[CertificateDer<'_>]>) -> io::Result<PeerIdentity> {
    let der = certs.and_then(|c| c.first()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the peer presented no certificate",
        )
    })?;
    PeerIdentity::from_der(der).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A TLS stream a client opened over tokio.
pub type ClientStream<S> = tokio_rustls::client::TlsStream<S>;
/// A TLS stream a server accepted over tokio.
pub type ServerStream<S> = tokio_rustls::server::TlsStream<S>;

/// Opens TLS over `tcp` to the member at `addr` (`host:port`): the
/// server's certificate must name `host` and chain to the CA. Errors say
/// which address and why (an alert the server sent, an unknown CA, ...).
pub async fn connect<S>(tls: &Tls, tcp: S, addr: &str) -> io::Result<ClientStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = server_name(addr)?;
    tokio_rustls::TlsConnector::from(tls.client_config())
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_error(addr, e))
}

fn handshake_error(addr: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("TLS handshake with {addr} failed: {e}"))
}

/// Accepts TLS over `tcp` (the caller has seen a TLS record start): the
/// client must present a certificate that chains to the CA. Returns the
/// stream and who the client is.
pub async fn accept<S>(tls: &Tls, tcp: S) -> io::Result<(ServerStream<S>, PeerIdentity)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let config = tls.server_config().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "no certificate of our own to serve TLS with",
        )
    })?;
    let stream = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
    let id = identity_of(stream.get_ref().1.peer_certificates())?;
    Ok((stream, id))
}

/// A blocking TLS client stream (raft links).
pub type BlockingClient = StreamOwned<ClientConnection, std::net::TcpStream>;
/// A blocking TLS server stream (raft stream readers).
pub type BlockingServer = StreamOwned<rustls::ServerConnection, std::net::TcpStream>;

/// Opens TLS over a blocking `tcp` to `addr`, completing the handshake
/// before it returns (within the socket's timeouts).
pub fn connect_blocking(
    tls: &Tls,
    mut tcp: std::net::TcpStream,
    addr: &str,
) -> io::Result<BlockingClient> {
    let name = server_name(addr)?;
    let mut conn = ClientConnection::new(tls.client_config(), name)
        .map_err(|e| io::Error::other(format!("TLS to {addr}: {e}")))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| handshake_error(addr, e))?;
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// Turns a stream accepted over tokio into a blocking one (a raft stream
/// is read by a thread of its own). Bytes already decrypted stay in it.
pub fn into_blocking(stream: ServerStream<tokio::net::TcpStream>) -> io::Result<BlockingServer> {
    let (tcp, conn) = stream.into_inner();
    let std = tcp.into_std()?;
    std.set_nonblocking(false)?;
    Ok(StreamOwned::new(conn, std))
}

/// The first byte of every TLS connection (a handshake record).
pub const HANDSHAKE_RECORD: u8 = 0x16;

#[cfg(feature = "issue")]
pub mod issue;

// The tests issue their certificates: `cargo test -p raftkit-tls --features issue`
// (the workspace's test run has the feature on through testkit).
#[cfg(all(test, feature = "issue"))]
mod tests;
