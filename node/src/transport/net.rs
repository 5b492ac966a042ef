//! The production transport between processes: [`NetTransport`].
//!
//! Raft messages travel on the framed TCP streams of [`super::stream`]
//! (one [`Link`] per destination address). Snapshots travel out of band on
//! gRPC (`SnapshotInstall`, one unary call per chunk), and a new member's
//! identity is asked for on gRPC (`Admin.Identity`). This file holds the
//! gRPC client and service for snapshot installs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use super::stream::{encode_frame, Hello, Link, PeerFormats};
use super::{SnapshotSent, Transport, Unreachable};
use crate::error::RaftError;
use crate::membership::PeerIdentity;
use crate::node::Node;
use crate::node_manager::NodeManager;
use crate::pb::admin_client::AdminClient;
use crate::pb::snapshot_install_client::SnapshotInstallClient;
use crate::pb::snapshot_install_server::SnapshotInstall;
use crate::pb::GroupRequest;
use crate::pb::{
    FileHeld, InstallBeginReply, InstallBeginRequest, InstallChunkReply, InstallChunkRequest,
    InstallCommitReply, InstallCommitRequest,
};
use crate::services::to_status;
use crate::snapshot_install::{send_snapshot, Chunk, InstallClient, SnapshotJob};
use crate::storage::SnapshotMeta;

/// Largest gRPC message either side accepts.
pub const MAX_GRPC_MESSAGE: usize = raftkit_proto::limits::MAX_MESSAGE_BYTES;

/// Sends raft messages and snapshots to other processes. See the module
/// documentation.
pub struct NetTransport {
    me: String,
    metrics: Arc<crate::metrics::TransportMetrics>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// What this process states to its peers (cluster ids per group).
    hello: Arc<Hello>,
    /// What peers stated on their streams to this process (shared with the
    /// stream server, which records it).
    formats: Arc<PeerFormats>,
    closed: AtomicBool,
    runtime: tokio::runtime::Handle,
    /// Mutual TLS to peers (raft streams, snapshot installs, identity).
    tls: Option<Arc<raftkit_tls::Tls>>,
}

impl NetTransport {
    /// [`NetTransport::new`] whose connections use mutual TLS with `tls`.
    pub fn with_tls(
        me: impl Into<String>,
        runtime: tokio::runtime::Handle,
        tls: Option<Arc<raftkit_tls::Tls>>,
    ) -> Arc<Self> {
        Arc::new(NetTransport {
            me: me.into(),
            metrics: Arc::default(),
            links: Mutex::default(),
            hello: Arc::default(),
            formats: Arc::default(),
            closed: AtomicBool::new(false),
            runtime,
            tls,
        })
    }

    /// `me` is this process's advertised address; snapshot transfers run on
    /// `runtime`.
    pub fn new(me: impl Into<String>, runtime: tokio::runtime::Handle) -> Arc<Self> {
        NetTransport::with_tls(me, runtime, None)
    }

    /// Bytes sent and received per peer.
    pub fn metrics(&self) -> Arc<crate::metrics::TransportMetrics> {
        self.metrics.clone()
    }

    /// What peers state on their raft streams (the stream server records it).
    pub fn peer_formats(&self) -> Arc<PeerFormats> {
        self.formats.clone()
    }

    /// Closes every link and refuses later sends (server shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let links: Vec<Arc<Link>> = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            links.drain().map(|(_, l)| l).collect()
        };
        for l in links {
            l.close();
        }
    }

    fn link(&self, addr: &str) -> Result<Arc<Link>, Unreachable> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return Err(Unreachable);
        }
        if let Some(l) = links.get(addr).filter(|l| !l.is_closed()) {
            return Ok(l.clone());
        }
        let l = Link::start_tls(
            &self.me,
            addr,
            self.metrics.clone(),
            self.hello.clone(),
            self.tls.clone(),
        );
        links.insert(addr.to_string(), l.clone());
        Ok(l)
    }
}

impl Drop for NetTransport {
    fn drop(&mut self) {
        self.close();
    }
}

impl Transport for NetTransport {
    fn send(&self, group: &str, to_addr: &str, msg: Message) -> Result<(), Unreachable> {
        if crate::failpoint::is_cut(to_addr, crate::failpoint::Direction::Out) {
            // An injected partition loses the message, as a network would,
            // without telling the sender.
            return Ok(());
        }
        crate::stage_trace::message("netsend", &msg);
        let mut frame = Vec::with_capacity(
            64 + group.len() + msg.entries.iter().map(|e| e.data.len() + 32).sum::<usize>(),
        );
        if let Err(e) = encode_frame(&mut frame, group, &msg) {
            tracing::warn!(group = %group, peer = %to_addr, error = %e, "raft message not sent");
            return Ok(());
        }
        self.link(to_addr)?.send(&frame)
    }

    fn install_snapshot(&self, job: SnapshotJob, done: SnapshotSent) {
        if crate::failpoint::is_cut(&job.to.addr, crate::failpoint::Direction::Out) {
            done(Err(format!(
                "{}: partitioned (fault injection)",
                job.to.addr
            )));
            return;
        }
        let mut client = GrpcInstallClient {
            addr: job.to.addr.clone(),
            group: job.group.clone(),
            to: job.to.id,
            from_addr: self.me.clone(),
            cluster_id: self.hello.cluster_id(&job.group),
            client: None,
            tls: self.tls.clone(),
        };
        self.runtime.spawn(async move {
            let result = send_snapshot(&mut client, &job).await;
            done(result);
        });
    }

    fn query_identity(
        &self,
        group: &str,
        addr: &str,
    ) -> futures::future::BoxFuture<'static, Result<PeerIdentity, String>> {
        let (group, addr, tls) = (group.to_string(), addr.to_string(), self.tls.clone());
        Box::pin(async move {
            let ch = channel(&addr, tls)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut admin = AdminClient::new(ch);
            let reply = tokio::time::timeout(
                Duration::from_secs(5),
                admin.identity(GroupRequest { group }),
            )
            .await
            .map_err(|_| "no answer within 5s".to_string())?
            .map_err(|s| s.message().to_string())?;
            serde_json::from_slice(&reply.into_inner().json)
                .map_err(|e| format!("undecodable identity: {e}"))
        })
    }

    fn spawn(&self, task: futures::future::BoxFuture<'static, ()>) {
        self.runtime.spawn(task);
    }

    fn set_cluster_id(&self, group: &str, cluster_id: u64) {
        self.hello.set_cluster_id(group, cluster_id);
    }

    fn set_max_cluster_format(&self, group: &str, format: u32) {
        self.hello.set_max_cluster_format(group, format);
    }

    fn peer_max_cluster_format(&self, group: &str, addr: &str) -> Option<u32> {
        self.formats.get(addr, group)
    }
}

/// Sends snapshot chunks to another process over gRPC (one unary call per
/// chunk; the connection is re-established after a failed attempt).
struct GrpcInstallClient {
    addr: String,
    group: String,
    to: u64,
    from_addr: String,
    /// The sender's cluster id, stated in every call.
    cluster_id: u64,
    client: Option<SnapshotInstallClient<tonic::transport::Channel>>,
    tls: Option<Arc<raftkit_tls::Tls>>,
}

/// How long one install call may take before the attempt counts as broken.
const INSTALL_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl GrpcInstallClient {
    async fn client(&mut self) -> Result<SnapshotInstallClient<tonic::transport::Channel>, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let ch = channel(&self.addr, self.tls.clone())
            .await
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        let c = SnapshotInstallClient::new(ch).max_encoding_message_size(MAX_GRPC_MESSAGE);
        self.client = Some(c.clone());
        Ok(c)
    }

    fn failed(&mut self, s: Status) -> String {
        self.client = None;
        format!("{}: {}", self.addr, s.message())
    }
}

async fn with_timeout<T>(
    f: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(INSTALL_CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("snapshot install call timed out")))
}

impl InstallClient for GrpcInstallClient {
    async fn begin(&mut self, meta: &SnapshotMeta) -> Result<Vec<(String, u64)>, String> {
        let mut c = self.client().await?;
        let req = InstallBeginRequest {
            group: self.group.clone(),
            to: self.to,
            meta: serde_json::to_vec(meta).map_err(|e| e.to_string())?.into(),
            cluster_id: self.cluster_id,
        };
        match with_timeout(c.begin(req)).await {
            Ok(r) => Ok(r
                .into_inner()
                .held
                .into_iter()
                .map(|h| (h.name, h.bytes))
                .collect()),
            Err(s) => Err(self.failed(s)),
        }
    }

    async fn chunk(&mut self, chunk: Chunk) -> Result<u64, String> {
        let mut c = self.client().await?;
        let req = InstallChunkRequest {
            group: self.group.clone(),
            to: self.to,
            index: chunk.index,
            term: chunk.term,
            file: chunk.file,
            offset: chunk.offset,
            data: chunk.data,
            crc32c: chunk.crc32c,
            cluster_id: self.cluster_id,
        };
        match with_timeout(c.chunk(req)).await {
            Ok(r) => Ok(r.into_inner().held),
            Err(s) => Err(self.failed(s)),
        }
    }

    async fn commit(&mut self, index: u64, term: u64, msg: &Message) -> Result<(), String> {
        let mut c = self.client().await?;
        let req = InstallCommitRequest {
            group: self.group.clone(),
            to: self.to,
            index,
            term,
            raft_message: msg.write_to_bytes().map_err(|e| e.to_string())?.into(),
            from_addr: self.from_addr.clone(),
            cluster_id: self.cluster_id,
        };
        match with_timeout(c.commit(req)).await {
            Ok(_) => Ok(()),
            Err(s) => Err(self.failed(s)),
        }
    }
}

/// A gRPC channel to a peer: plain, or mutual TLS (the peer's certificate
/// must name the address's host).
async fn channel(
    addr: &str,
    tls: Option<Arc<raftkit_tls::Tls>>,
) -> Result<tonic::transport::Channel, String> {
    let ep = endpoint(addr).map_err(|e| e.to_string())?;
    let Some(tls) = tls else {
        return ep.connect().await.map_err(|e| e.to_string());
    };
    let addr = addr.to_string();
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (addr, tls) = (addr.clone(), tls.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let s = raftkit_tls::connect(&tls, tcp, &addr).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    });
    ep.connect_with_connector(connector).await.map_err(|e| {
        format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        )
    })
}

fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true))
}

/// Receives snapshot transfers for local nodes.
pub struct SnapshotInstallService {
    manager: NodeManager,
}

impl SnapshotInstallService {
    pub fn new(manager: NodeManager) -> Self {
        SnapshotInstallService { manager }
    }

    /// The replica a call is for, if it takes snapshots from a sender of
    /// cluster `sender` (see `cluster_check`).
    fn node(
        &self,
        group: &str,
        to: u64,
        sender: u64,
        from: &str,
        tls: Option<&raftkit_tls::PeerIdentity>,
    ) -> Result<Node, Status> {
        let node = self
            .manager
            .get(group)
            .ok_or_else(|| Status::not_found(format!("no group named {group:?} is hosted here")))?;
        if node.peer_id().id != to {
            return Err(Status::failed_precondition(format!(
                "snapshot is for raft id {to:016x} but this replica is {:016x}",
                node.peer_id().id
            )));
        }
        if let Some(id) = tls {
            if !crate::port_tls::admits_install(&node, id) {
                crate::metrics::TLS_REFUSED.count(crate::metrics::TlsRefusal::NotMember);
                return Err(Status::permission_denied(format!(
                    "snapshot install refused: {} is not the certificate of a member of group {group}",
                    id.describe()
                )));
            }
        }
        if !super::cluster_check::admits(&node, sender, from, "a snapshot install") {
            return Err(Status::failed_precondition(format!(
                "snapshot from cluster {sender:016x} refused: this replica belongs to cluster {:016x}",
                node.cluster_id()
            )));
        }
        Ok(node)
    }
}

/// The certificate of a call that came over TLS.
fn tls_identity<T>(request: &Request<T>) -> Option<raftkit_tls::PeerIdentity> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::port_tls::Peer>>()
        .and_then(|c| c.0.identity.as_deref().cloned())
}

/// The remote address of a call, for logs.
fn remote<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RaftError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("install task failed: {e}")))?
        .map_err(to_status)
}

#[tonic::async_trait]
impl SnapshotInstall for SnapshotInstallService {
    async fn begin(
        &self,
        request: Request<InstallBeginRequest>,
    ) -> Result<Response<InstallBeginReply>, Status> {
        let from = remote(&request);
        let tls = tls_identity(&request);
        let r = request.into_inner();
        let node = self.node(&r.group, r.to, r.cluster_id, &from, tls.as_ref())?;
        let meta: SnapshotMeta = serde_json::from_slice(&r.meta)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot meta: {e}")))?;
        let held = blocking(move || node.install_begin(meta)).await?;
        Ok(Response::new(InstallBeginReply {
            held: held
                .into_iter()
                .map(|(name, bytes)| FileHeld { name, bytes })
                .collect(),
        }))
    }

    async fn chunk(
        &self,
        request: Request<InstallChunkRequest>,
    ) -> Result<Response<InstallChunkReply>, Status> {
        let from = remote(&request);
        let tls = tls_identity(&request);
        let r = request.into_inner();
        let node = self.node(&r.group, r.to, r.cluster_id, &from, tls.as_ref())?;
        let chunk = Chunk {
            index: r.index,
            term: r.term,
            file: r.file,
            offset: r.offset,
            data: r.data,
            crc32c: r.crc32c,
        };
        let held = blocking(move || node.install_chunk(&chunk)).await?;
        Ok(Response::new(InstallChunkReply { held }))
    }

    async fn commit(
        &self,
        request: Request<InstallCommitRequest>,
    ) -> Result<Response<InstallCommitReply>, Status> {
        let tls = tls_identity(&request);
        let r = request.into_inner();
        let node = self.node(&r.group, r.to, r.cluster_id, &r.from_addr, tls.as_ref())?;
        // The raft message it carries is the sender's: its certificate
        // must name the address it states.
        if let Some(id) = &tls {
            if !crate::port_tls::admits_raft(&node, id, &r.from_addr) {
                crate::metrics::TLS_REFUSED.count(crate::metrics::TlsRefusal::NotMember);
                return Err(Status::permission_denied(format!(
                    "snapshot commit refused: {} does not name member {}",
                    id.describe(),
                    r.from_addr
                )));
            }
        }
        let msg = Message::parse_from_bytes(&r.raft_message)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        if crate::failpoint::is_cut(&r.from_addr, crate::failpoint::Direction::In) {
            return Err(Status::unavailable("partitioned (fault injection)"));
        }
        let from = (!r.from_addr.is_empty()).then_some(r.from_addr);
        blocking(move || node.install_commit(r.index, r.term, msg, from)).await?;
        Ok(Response::new(InstallCommitReply {}))
    }
}
