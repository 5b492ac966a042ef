//! The node server: one port serving raft streams between nodes
//! ([`crate::transport::stream`]), clients' mux streams
//! ([`crate::services::mux`]), gRPC (snapshot install, admin, Counter, KV)
//! and HTTP (`/raft_stat`, `/healthz`, `/readyz`, `/metrics`),
//! hosting any number of groups. [`accept`] tells a raft stream from HTTP by
//! the connection's first byte. As braft requires, the port is bound and served before any raft
//! node starts, so peers' first messages and replies always have somewhere
//! to go.
//!
//! [`run`] is what the binaries call: bind, serve, start the groups, wait for
//! the shutdown signal, stop the groups, stop serving.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::RaftError;
use crate::node::Node;
use crate::node_manager::NodeManager;
use crate::options::{validate_addr, validate_group_name, NodeOptions, ReadMode};
use crate::pb::admin_server::AdminServer;
use crate::pb::counter_server::CounterServer;
use crate::pb::kv_server::KvServer;
use crate::pb::snapshot_install_server::SnapshotInstallServer;
use crate::port_tls::{Peer, ServerIo};
use crate::services::admin::AdminService;
use crate::services::counter::{CounterFsm, CounterService, CounterState};
use crate::services::kv::{KvFsm, KvService, KvState};
use crate::services::mux::MUX_PREFACE;
use crate::services::GroupTable;
use crate::storage::StorageOptions;
use crate::transport::net::{NetTransport, SnapshotInstallService, MAX_GRPC_MESSAGE};
use crate::transport::stream::{RaftStreamServer, PREFACE};

/// How long in-flight connections get to finish after shutdown is asked.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a new connection may stay silent before it is dropped (its
/// first byte says which protocol it speaks).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which application a group runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StateMachineKind {
    Counter,
    Kv,
}

impl StateMachineKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            StateMachineKind::Counter => "counter",
            StateMachineKind::Kv => "kv",
        }
    }
}

impl std::str::FromStr for StateMachineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "counter" => Ok(StateMachineKind::Counter),
            "kv" => Ok(StateMachineKind::Kv),
            other => Err(format!(
                "unknown state machine {other:?}; expected counter or kv"
            )),
        }
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("group {group}: {source}")]
    Group { group: String, source: RaftError },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// Everything the node binary is configured with. See `raftkit-node --help`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Address peers dial; defaults to `listen`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// (group name, state machine) pairs.
    pub groups: Vec<(String, StateMachineKind)>,
    pub initial_conf: Vec<String>,
    pub election_timeout_ms: u64,
    pub snapshot_interval_s: u64,
    pub snapshot_log_gap: u64,
    pub snapshot_margin: u64,
    /// See `NodeOptions::catchup_margin`.
    pub catchup_margin: u64,
    pub snapshot_chunk_bytes: usize,
    pub snapshot_throttle_bytes_per_sec: u64,
    pub max_snapshot_installs: usize,
    /// See `NodeOptions::max_cluster_format`.
    pub max_cluster_format: u32,
    /// URI templates; `{group}` and `{data_dir}` are substituted.
    pub log_uri: Option<String>,
    pub raft_meta_uri: Option<String>,
    pub snapshot_uri: Option<String>,
    pub sync: bool,
    pub read_mode: ReadMode,
    /// How long the state machines remember an idle client session (ms).
    pub session_idle_ms: u64,
    /// Idle polling window after each light-load raft input (µs; 0: off),
    /// or `auto` (see `idle_poll`).
    pub idle_poll_us: crate::idle_poll::IdlePoll,
    /// Mutual TLS on the port (`--tls-cert`, `--tls-key`, `--tls-ca`).
    pub tls: Option<raftkit_tls::TlsFiles>,
    /// With TLS, plain HTTP probes of /livez, /healthz, /readyz, /metrics.
    pub tls_plain_probes: bool,
}

impl ServerConfig {
    /// The address peers use for this node.
    pub fn advertised(&self) -> Result<String, ServerError> {
        match &self.advertise {
            Some(a) => {
                validate_addr(a).map_err(|e| ServerError::Config(format!("--advertise: {e}")))?;
                Ok(a.clone())
            }
            None if self.listen.ip().is_unspecified() => Err(ServerError::Config(format!(
                "listening on {} (all interfaces) needs --advertise HOST:PORT so peers know where to dial",
                self.listen
            ))),
            None => Ok(self.listen.to_string()),
        }
    }

    /// The value of every setting of the table (`raftkit_proto::settings`)
    /// this configuration holds, by name, as the flag takes it: what
    /// [`ServerConfig::validate`] checks against the table's bounds and
    /// what `/flags` shows (live ones as they were at start).
    pub fn setting_values(&self) -> Vec<(&'static str, String)> {
        let tls_path = |pick: fn(&raftkit_tls::TlsFiles) -> Option<&std::path::Path>| {
            self.tls
                .as_ref()
                .and_then(pick)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|(g, k)| format!("{g}:{}", k.as_str()))
            .collect();
        let uri = |u: &Option<String>, kind: &str| {
            u.clone()
                .unwrap_or_else(|| format!("local://{{data_dir}}/{{group}}/{kind}"))
        };
        vec![
            ("listen", self.listen.to_string()),
            (
                "advertise",
                self.advertise
                    .clone()
                    .unwrap_or_else(|| self.listen.to_string()),
            ),
            ("data_dir", self.data_dir.display().to_string()),
            ("groups", groups.join(",")),
            ("initial_conf", self.initial_conf.join(",")),
            ("election_timeout_ms", self.election_timeout_ms.to_string()),
            ("snapshot_interval_s", self.snapshot_interval_s.to_string()),
            ("snapshot_log_gap", self.snapshot_log_gap.to_string()),
            ("snapshot_margin", self.snapshot_margin.to_string()),
            ("catchup_margin", self.catchup_margin.to_string()),
            (
                "snapshot_chunk_bytes",
                self.snapshot_chunk_bytes.to_string(),
            ),
            (
                "snapshot_throttle_bytes_per_sec",
                self.snapshot_throttle_bytes_per_sec.to_string(),
            ),
            (
                "max_snapshot_installs",
                self.max_snapshot_installs.to_string(),
            ),
            ("max_cluster_format", self.max_cluster_format.to_string()),
            ("log_uri", uri(&self.log_uri, "log")),
            ("raft_meta_uri", uri(&self.raft_meta_uri, "meta")),
            ("snapshot_uri", uri(&self.snapshot_uri, "snapshot")),
            ("sync", self.sync.to_string()),
            ("session_idle_ms", self.session_idle_ms.to_string()),
            ("read_mode", self.read_mode.as_str().to_string()),
            ("idle_poll_us", self.idle_poll_us.to_string()),
            ("tls_cert", tls_path(|f| f.cert.as_deref())),
            ("tls_key", tls_path(|f| f.key.as_deref())),
            ("tls_ca", tls_path(|f| Some(f.ca.as_path()))),
            ("tls_plain_probes", self.tls_plain_probes.to_string()),
        ]
    }

    /// The settings that cannot change while the node runs, for `/flags`.
    pub fn fixed_flags(&self) -> Vec<(String, String)> {
        self.setting_values()
            .into_iter()
            .filter(|(name, _)| {
                raftkit_proto::settings::setting(name).is_some_and(|s| s.in_flags && !s.live)
            })
            .map(|(name, value)| (name.to_string(), value))
            .collect()
    }

    /// Checks the parts that do not depend on a group.
    pub fn validate(&self) -> Result<(), ServerError> {
        self.advertised()?;
        for (name, value) in self.setting_values() {
            raftkit_proto::settings::validate(name, &value).map_err(ServerError::Config)?;
        }
        if self.groups.is_empty() {
            return Err(ServerError::Config("no group to host".into()));
        }
        let mut names = std::collections::HashSet::new();
        for (g, _) in &self.groups {
            validate_group_name(g).map_err(|e| ServerError::Config(e.to_string()))?;
            if !names.insert(g) {
                return Err(ServerError::Config(format!("group {g:?} is listed twice")));
            }
        }
        if self.groups.len() > 1 {
            for (flag, uri) in [
                ("--log-uri", &self.log_uri),
                ("--raft-meta-uri", &self.raft_meta_uri),
                ("--snapshot-uri", &self.snapshot_uri),
            ] {
                if let Some(u) = uri {
                    if !u.contains("{group}") {
                        return Err(ServerError::Config(format!("{flag} {u:?} must contain {{group}} when the node hosts several groups")));
                    }
                }
            }
        }
        for (g, _) in &self.groups {
            self.node_options(g)?
                .validate()
                .map_err(|e| ServerError::Config(format!("group {g}: {e}")))?;
        }
        Ok(())
    }

    fn uri(&self, template: &Option<String>, group: &str, kind: &str) -> String {
        let t = template
            .clone()
            .unwrap_or_else(|| format!("local://{{data_dir}}/{{group}}/{kind}"));
        t.replace("{data_dir}", &self.data_dir.display().to_string())
            .replace("{group}", group)
    }

    /// The options of one hosted group.
    pub fn node_options(&self, group: &str) -> Result<NodeOptions, ServerError> {
        let mut o = NodeOptions::new(group, self.advertised()?);
        o.initial_conf = self.initial_conf.clone();
        o.election_timeout_ms = self.election_timeout_ms;
        o.snapshot_interval_s = self.snapshot_interval_s;
        o.snapshot_log_gap = self.snapshot_log_gap;
        o.snapshot_margin = self.snapshot_margin;
        o.catchup_margin = self.catchup_margin;
        o.snapshot_chunk_bytes = self.snapshot_chunk_bytes;
        o.snapshot_throttle_bytes_per_sec = self.snapshot_throttle_bytes_per_sec;
        o.max_snapshot_installs = self.max_snapshot_installs;
        o.max_cluster_format = self.max_cluster_format;
        o.log_uri = self.uri(&self.log_uri, group, "log");
        o.raft_meta_uri = self.uri(&self.raft_meta_uri, group, "meta");
        o.snapshot_uri = self.uri(&self.snapshot_uri, group, "snapshot");
        o.storage = StorageOptions {
            sync: self.sync,
            ..StorageOptions::default()
        };
        o.read_mode = self.read_mode;
        Ok(o)
    }
}

/// A bound, serving port and the groups it hosts.
pub struct Server {
    manager: NodeManager,
    counters: GroupTable<CounterState>,
    kvs: GroupTable<KvState>,
    transport: Arc<NetTransport>,
    raft_streams: RaftStreamServer,
    local_addr: SocketAddr,
    stop_serving: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<Result<(), std::io::Error>>>,
    accepting: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `listen` and starts serving gRPC and HTTP (with no groups yet).
    /// `advertise` is the address peers know this process by.
    pub async fn bind(
        listen: SocketAddr,
        advertise: &str,
        fixed_flags: Vec<(String, String)>,
        session_idle_ms: u64,
    ) -> Result<Server, ServerError> {
        Server::bind_tls(listen, advertise, fixed_flags, session_idle_ms, None).await
    }

    /// [`Server::bind`] with mutual TLS on the port when `tls` is given
    /// (see `port_tls`).
    pub async fn bind_tls(
        listen: SocketAddr,
        advertise: &str,
        fixed_flags: Vec<(String, String)>,
        session_idle_ms: u64,
        tls: Option<PortTls>,
    ) -> Result<Server, ServerError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(ServerError::Serve)?;
        let manager = NodeManager::new();
        let counters = GroupTable::new("counter");
        let kvs = GroupTable::new("kv");
        let transport = NetTransport::with_tls(
            advertise,
            tokio::runtime::Handle::current(),
            tls.as_ref().map(|t| t.tls.clone()),
        );
        let raft_streams = RaftStreamServer::new(
            manager.clone(),
            transport.metrics(),
            transport.peer_formats(),
        );
        let counter_service = Arc::new(CounterService::new(counters.clone(), session_idle_ms));
        let kv_service = Arc::new(KvService::new(kvs.clone(), session_idle_ms));
        let (kv_mux, counter_mux) = (kv_service.clone(), counter_service.clone());
        let grpc =
            tonic::service::Routes::new(AdminServer::new(AdminService::new(manager.clone())))
                .add_service(
                    SnapshotInstallServer::new(SnapshotInstallService::new(manager.clone()))
                        .max_decoding_message_size(MAX_GRPC_MESSAGE),
                )
                .add_service(CounterServer::from_arc(counter_service.clone()))
                .add_service(KvServer::from_arc(kv_service.clone()))
                .into_axum_router();
        let app = grpc
            .merge(crate::http::router(crate::http::HttpState {
                manager: manager.clone(),
                transport: Some(transport.metrics()),
                fixed_flags: Arc::new(fixed_flags),
            }))
            .layer(axum::middleware::from_fn(crate::port_tls::authorize));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (http_tx, http_rx) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(accept(
            listener,
            http_tx,
            raft_streams.clone(),
            (kv_mux.clone(), counter_mux.clone()),
            tls.map(Arc::new),
        ));
        let http = HttpConnections {
            rx: http_rx,
            local_addr,
        };
        let serving = tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
            };
            // Streaming calls (the client mux) need not end on their own:
            // give connections a grace period, then stop regardless.
            let (grace_tx, grace_rx) = oneshot::channel::<()>();
            let graceful = axum::serve(
                http,
                app.into_make_service_with_connect_info::<crate::port_tls::Peer>(),
            )
            .with_graceful_shutdown(async move {
                stop.await;
                let _ = grace_tx.send(());
            });
            tokio::select! {
                r = graceful => r,
                _ = async move { let _ = grace_rx.await; tokio::time::sleep(SHUTDOWN_GRACE).await; } => Ok(()),
            }
        });
        Ok(Server {
            manager,
            counters,
            kvs,
            transport,
            raft_streams,
            local_addr,
            stop_serving: Some(stop_tx),
            serving: Some(serving),
            accepting: Some(accepting),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn manager(&self) -> &NodeManager {
        &self.manager
    }

    /// Starts a group on this server.
    pub async fn start_group(
        &self,
        opts: NodeOptions,
        kind: StateMachineKind,
    ) -> Result<Node, ServerError> {
        let group = opts.group.clone();
        let transport = self.transport.clone();
        let (node, app) = tokio::task::spawn_blocking(move || match kind {
            StateMachineKind::Counter => {
                let state = CounterState::default();
                Node::start(opts, Box::new(CounterFsm::new(state.clone())), transport)
                    .map(|n| (n, App::Counter(state)))
            }
            StateMachineKind::Kv => {
                let state = KvState::default();
                Node::start(opts, Box::new(KvFsm::new(state.clone())), transport)
                    .map(|n| (n, App::Kv(state)))
            }
        })
        .await
        .map_err(|e| ServerError::Config(format!("starting group {group}: {e}")))?
        .map_err(|source| ServerError::Group {
            group: group.clone(),
            source,
        })?;
        self.manager
            .add(node.clone())
            .map_err(|source| ServerError::Group {
                group: group.clone(),
                source,
            })?;
        match app {
            App::Counter(s) => self.counters.insert(node.clone(), s),
            App::Kv(s) => self.kvs.insert(node.clone(), s),
        }
        tracing::info!(group = %group, peer = %node.peer_id(), "group started");
        Ok(node)
    }

    /// Stops every group (leaders hand leadership over first), then stops serving.
    pub async fn shutdown(mut self) {
        let nodes = self.manager.all();
        // Groups stay registered until serving stops: late requests get a
        // retryable "shutting down" from the stopped node, not "no such group".
        futures::future::join_all(nodes.iter().map(|n| n.shutdown_gracefully())).await;
        if let Some(tx) = self.stop_serving.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.accepting.take() {
            h.abort();
            let _ = h.await;
        }
        if let Some(h) = self.serving.take() {
            let _ = h.await;
        }
        let streams = self.raft_streams.clone();
        let _ = tokio::task::spawn_blocking(move || streams.shutdown()).await;
        self.transport.close();
        for node in nodes {
            self.manager.remove(node.group());
            self.counters.remove(node.group());
            self.kvs.remove(node.group());
        }
    }
}

enum App {
    Counter(CounterState),
    Kv(KvState),
}

/// Accepts connections on the server's port and sorts them by their first
/// bytes: raft streams go to `raft`, mux streams to `mux`, everything else
/// (HTTP/1, HTTP/2) to `http`. No HTTP request starts with `R`, the first
/// byte of both prefaces.
async fn accept(
    listener: TcpListener,
    http: tokio::sync::mpsc::Sender<(ServerIo, Peer)>,
    raft: RaftStreamServer,
    mux: (Arc<KvService>, Arc<CounterService>),
    tls: Option<Arc<PortTls>>,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small replies must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let (http, raft, tls) = (http.clone(), raft.clone(), tls.clone());
        let (kv, counter) = mux.clone();
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await;
            if let Some(tls) = tls {
                // Closed, failed or silent: dropped.
                if let Ok(Ok(1)) = peeked {
                    tls.serve(tcp, addr, first[0], http, raft, (kv, counter))
                        .await;
                }
                return;
            }
            let plain = Peer {
                addr,
                identity: None,
                tls_port: false,
            };
            match peeked {
                Ok(Ok(1)) if first[0] == PREFACE[0] && opens_mux_stream(&tcp).await => {
                    let mut tcp = tcp;
                    let mut preface = [0u8; 8];
                    if tcp.read_exact(&mut preface).await.is_ok() {
                        crate::services::mux::serve(tcp, kv, counter).await;
                    }
                }
                Ok(Ok(1)) if first[0] == PREFACE[0] => match tcp.into_std() {
                    Ok(std) if std.set_nonblocking(false).is_ok() => raft.serve(std),
                    _ => tracing::warn!(remote = %addr, "cannot take over a raft stream"),
                },
                Ok(Ok(n)) if n > 0 => {
                    let _ = http.send((ServerIo::Plain(tcp), plain)).await;
                }
                _ => {} // closed, failed or silent: drop it
            }
        });
    }
}

/// Whether a connection whose first byte is `R` opens a mux stream (the
/// rest open raft streams). Waits for 8 bytes; a client sends its preface
/// in one write, so they come together.
async fn opens_mux_stream(tcp: &tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 8];
    for _ in 0..1000 {
        match tcp.peek(&mut b).await {
            Ok(n) if n >= 8 => return &b == MUX_PREFACE,
            Ok(n) if n > 0 && b[..n] != MUX_PREFACE[..n] => return false,
            Ok(0) | Err(_) => return false,
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    false
}

/// The port's TLS: the files, and whether plain probes are answered.
pub struct PortTls {
    pub tls: Arc<raftkit_tls::Tls>,
    pub plain_probes: bool,
}

/// How long a TLS handshake (and the first bytes after it) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

impl PortTls {
    /// Serves a connection on a TLS port whose first byte is `first`: a
    /// TLS handshake, then sorted as a plain connection is; or a plain
    /// probe when allowed; anything else is dropped and counted.
    async fn serve(
        &self,
        tcp: tokio::net::TcpStream,
        addr: SocketAddr,
        first: u8,
        http: tokio::sync::mpsc::Sender<(ServerIo, Peer)>,
        raft: RaftStreamServer,
        (kv, counter): (Arc<KvService>, Arc<CounterService>),
    ) {
        use crate::metrics::{TlsRefusal, TLS_REFUSED};
        if first != raftkit_tls::HANDSHAKE_RECORD {
            // An HTTP request starts with its method's capital letters.
            if self.plain_probes && first.is_ascii_uppercase() {
                let peer = Peer {
                    addr,
                    identity: None,
                    tls_port: true,
                };
                let _ = http.send((ServerIo::Plain(tcp), peer)).await;
            } else {
                TLS_REFUSED.count(TlsRefusal::Plain);
                tracing::debug!(remote = %addr, "dropped a plain connection to the TLS port");
            }
            return;
        }
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let (mut s, id) = raftkit_tls::accept(&self.tls, tcp).await?;
            let mut head = vec![0u8; 1];
            s.read_exact(&mut head).await?;
            if head[0] == PREFACE[0] {
                head.resize(8, 0);
                s.read_exact(&mut head[1..]).await?;
            }
            Ok::<_, std::io::Error>((s, id, head))
        })
        .await;
        let (mut s, id, head) = match accepted {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                TLS_REFUSED.count(TlsRefusal::Handshake);
                tracing::info!(remote = %addr, error = %e, "refused a TLS connection");
                return;
            }
            Err(_) => {
                TLS_REFUSED.count(TlsRefusal::Handshake);
                tracing::info!(remote = %addr, "refused a TLS connection: no handshake within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        if head.as_slice() == MUX_PREFACE {
            if s.write_all(MUX_PREFACE).await.is_ok() && s.flush().await.is_ok() {
                crate::services::mux::serve_stream(s, kv, counter).await;
            }
        } else if head[0] == PREFACE[0] {
            match raftkit_tls::into_blocking(s) {
                Ok(blocking) => raft.serve_tls(blocking, head, id),
                Err(e) => {
                    tracing::warn!(remote = %addr, error = %e, "cannot take over a raft stream")
                }
            }
        } else {
            let peer = Peer {
                addr,
                identity: Some(Arc::new(id)),
                tls_port: true,
            };
            let io = ServerIo::Tls(Box::new(crate::port_tls::Prefixed::new(head, s)));
            let _ = http.send((io, peer)).await;
        }
    }
}

/// The HTTP and gRPC connections [`accept`] sorted out, as axum's listener.
pub struct HttpConnections {
    rx: tokio::sync::mpsc::Receiver<(ServerIo, Peer)>,
    local_addr: SocketAddr,
}

impl axum::serve::Listener for HttpConnections {
    type Io = ServerIo;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accepting task stopped (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.local_addr,
            identity: None,
            tls_port: false,
        })
    }
}

/// Runs a node server until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    config.validate()?;
    crate::idle_poll::apply(config.idle_poll_us).map_err(ServerError::Config)?;
    let advertise = config.advertised()?;
    let tls = match &config.tls {
        None => {
            tracing::warn!(
                listen = %config.listen,
                "running without TLS: anyone who reaches this port can send raft messages, change membership and set flags (see --tls-cert)"
            );
            None
        }
        Some(files) => {
            let fault_injection =
                raftkit_proto::settings::from_env("fault_injection").is_some_and(|v| v == "1");
            let allowed = raftkit_proto::settings::from_env("fault_injection_with_tls")
                .is_some_and(|v| v == "1");
            if fault_injection && !allowed {
                return Err(ServerError::Config(
                    "RAFTKIT_FAULT_INJECTION=1 with TLS on: its /debug endpoints cut links and fail writes; set RAFTKIT_FAULT_INJECTION_WITH_TLS=1 to allow them (admin certificates only)".into(),
                ));
            }
            let tls = raftkit_tls::Tls::load(files.clone())
                .map_err(|e| ServerError::Config(format!("TLS: {e}")))?;
            tracing::info!(cert = ?files.cert, ca = %files.ca.display(), plain_probes = config.tls_plain_probes, "mutual TLS on the port");
            Some(PortTls {
                tls,
                plain_probes: config.tls_plain_probes,
            })
        }
    };
    let server = Server::bind_tls(
        config.listen,
        &advertise,
        config.fixed_flags(),
        config.session_idle_ms,
        tls,
    )
    .await?;
    tracing::info!(listen = %server.local_addr(), advertise = %advertise, "serving gRPC and HTTP");
    server
        .manager()
        .expect(config.groups.iter().map(|(g, _)| g.clone()));
    for (group, kind) in &config.groups {
        if let Err(e) = server.start_group(config.node_options(group)?, *kind).await {
            server.shutdown().await;
            return Err(e);
        }
    }
    shutdown.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
