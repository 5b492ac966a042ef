//! The production transport: tonic gRPC between processes.
//!
//! Sending: one [`Link`] per destination address, a tokio task holding one
//! long-lived client stream (`RaftTransport.Stream`). It drains its queue
//! into batches (per group) and writes them to the stream; on failure it
//! marks the peer down (sends then fail fast and raft-rs is told the peer is
//! unreachable), drops what was queued (raft retransmits), and reconnects
//! with exponential backoff and jitter. HTTP/2 keepalive detects dead peers.
//!
//! Receiving: [`RaftTransportService`] decodes each batch and steps the
//! messages into the group's node found in the [`NodeManager`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status, Streaming};

use super::{SnapshotSent, Transport, Unreachable};
use crate::error::RaftError;
use crate::membership::PeerIdentity;
use crate::node::Node;
use crate::node_manager::NodeManager;
use crate::pb::admin_client::AdminClient;
use crate::pb::raft_transport_client::RaftTransportClient;
use crate::pb::raft_transport_server::RaftTransport;
use crate::pb::snapshot_install_client::SnapshotInstallClient;
use crate::pb::snapshot_install_server::SnapshotInstall;
use crate::pb::GroupRequest;
use crate::pb::{
    FileHeld, InstallBeginReply, InstallBeginRequest, InstallChunkReply, InstallChunkRequest,
    InstallCommitReply, InstallCommitRequest, RaftBatch, RaftStreamAck,
};
use crate::services::to_status;
use crate::snapshot_install::{send_snapshot, Chunk, InstallClient, SnapshotJob};
use crate::storage::SnapshotMeta;

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Most messages per write to a stream.
const MAX_BATCH_MSGS: usize = 512;
/// Most bytes per write to a stream (beyond one message).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Largest gRPC message either side accepts.
pub const MAX_GRPC_MESSAGE: usize = 64 << 20;

struct Link {
    tx: mpsc::UnboundedSender<(Arc<str>, Message)>,
    state: Arc<AtomicU8>,
}

/// Sends raft messages over gRPC. See the module documentation.
pub struct GrpcTransport {
    me: String,
    metrics: Arc<crate::metrics::TransportMetrics>,
    links: Mutex<HashMap<String, Link>>,
    runtime: tokio::runtime::Handle,
}

impl GrpcTransport {
    /// `me` is this process's advertised address; link tasks run on `runtime`.
    pub fn new(me: impl Into<String>, runtime: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(GrpcTransport {
            me: me.into(),
            metrics: Arc::default(),
            links: Mutex::default(),
            runtime,
        })
    }

    /// Bytes sent and received per peer.
    pub fn metrics(&self) -> Arc<crate::metrics::TransportMetrics> {
        self.metrics.clone()
    }

    fn spawn_link(&self, addr: &str) -> Link {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(AtomicU8::new(CONNECTING));
        self.runtime.spawn(run_link(
            self.me.clone(),
            addr.to_string(),
            rx,
            state.clone(),
            self.metrics.clone(),
        ));
        Link { tx, state }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, group: &str, to_addr: &str, msg: Message) -> Result<(), Unreachable> {
        if crate::failpoint::is_cut(to_addr, crate::failpoint::Direction::Out) {
            // An injected partition loses the message, as a network would,
            // without telling the sender.
            return Ok(());
        }
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.get(to_addr).is_none_or(|l| l.tx.is_closed()) {
            let link = self.spawn_link(to_addr);
            links.insert(to_addr.to_string(), link);
        }
        let Some(link) = links.get(to_addr) else {
            return Err(Unreachable);
        };
        if link.state.load(Ordering::Acquire) == DOWN {
            return Err(Unreachable);
        }
        link.tx
            .send((Arc::from(group), msg))
            .map_err(|_| Unreachable)
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
            client: None,
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
        let (group, addr) = (group.to_string(), addr.to_string());
        Box::pin(async move {
            let ch = endpoint(&addr)
                .map_err(|e| e.to_string())?
                .connect()
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
}

/// Sends snapshot chunks to another process over gRPC (one unary call per
/// chunk; the connection is re-established after a failed attempt).
struct GrpcInstallClient {
    addr: String,
    group: String,
    to: u64,
    from_addr: String,
    client: Option<SnapshotInstallClient<tonic::transport::Channel>>,
}

/// How long one install call may take before the attempt counts as broken.
const INSTALL_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl GrpcInstallClient {
    async fn client(&mut self) -> Result<SnapshotInstallClient<tonic::transport::Channel>, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let ch = endpoint(&self.addr)
            .map_err(|e| e.to_string())?
            .connect()
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
        };
        match with_timeout(c.commit(req)).await {
            Ok(_) => Ok(()),
            Err(s) => Err(self.failed(s)),
        }
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true))
}

async fn run_link(
    me: String,
    addr: String,
    mut rx: mpsc::UnboundedReceiver<(Arc<str>, Message)>,
    state: Arc<AtomicU8>,
    metrics: Arc<crate::metrics::TransportMetrics>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match endpoint(&addr) {
            Err(e) => tracing::warn!(peer = %addr, error = %e, "invalid peer address"),
            Ok(ep) => match ep.connect().await {
                Err(e) => tracing::debug!(peer = %addr, error = %e, "connect failed"),
                Ok(channel) => {
                    let mut client = RaftTransportClient::new(channel)
                        .max_encoding_message_size(MAX_GRPC_MESSAGE);
                    let (btx, brx) = mpsc::channel::<RaftBatch>(16);
                    let call =
                        tokio::spawn(async move { client.stream(ReceiverStream::new(brx)).await });
                    state.store(UP, Ordering::Release);
                    backoff = MIN_BACKOFF;
                    tracing::debug!(peer = %addr, "raft stream connected");
                    'stream: loop {
                        let Some(first) = rx.recv().await else {
                            call.abort();
                            return; // the transport was dropped
                        };
                        if call.is_finished() {
                            break 'stream;
                        }
                        for batch in collect_batches(first, &mut rx, &me) {
                            metrics.add_sent(&addr, batch.messages.iter().map(|m| m.len()).sum());
                            if btx.send(batch).await.is_err() {
                                break 'stream;
                            }
                        }
                    }
                    call.abort();
                    tracing::debug!(peer = %addr, "raft stream lost");
                }
            },
        }
        state.store(DOWN, Ordering::Release);
        while rx.try_recv().is_ok() {}
        let jitter = rand::random::<f64>() * 0.4 + 0.8;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if rx.is_closed() {
            return;
        }
    }
}

/// Groups `first` and whatever else is queued into per-group batches,
/// keeping each group's order.
fn collect_batches(
    first: (Arc<str>, Message),
    rx: &mut mpsc::UnboundedReceiver<(Arc<str>, Message)>,
    me: &str,
) -> Vec<RaftBatch> {
    let mut batches: Vec<RaftBatch> = Vec::new();
    let mut bytes = 0usize;
    let mut count = 0usize;
    let mut next = Some(first);
    while let Some((group, msg)) = next.take() {
        crate::stage_trace::message("netsend", &msg);
        let data = msg.write_to_bytes().unwrap_or_default();
        bytes += data.len();
        count += 1;
        match batches.iter_mut().find(|b| *b.group == *group) {
            Some(b) => b.messages.push(data.into()),
            None => batches.push(RaftBatch {
                group: group.to_string(),
                messages: vec![data.into()],
                from_addr: me.to_string(),
            }),
        }
        if count >= MAX_BATCH_MSGS || bytes >= MAX_BATCH_BYTES {
            break;
        }
        next = rx.try_recv().ok();
    }
    batches
}

/// Receives snapshot transfers for local nodes.
pub struct SnapshotInstallService {
    manager: NodeManager,
}

impl SnapshotInstallService {
    pub fn new(manager: NodeManager) -> Self {
        SnapshotInstallService { manager }
    }

    fn node(&self, group: &str, to: u64) -> Result<Node, Status> {
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
        Ok(node)
    }
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
        let r = request.into_inner();
        let node = self.node(&r.group, r.to)?;
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
        let r = request.into_inner();
        let node = self.node(&r.group, r.to)?;
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
        let r = request.into_inner();
        let node = self.node(&r.group, r.to)?;
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

/// Receives raft message streams and hands the messages to local nodes.
pub struct RaftTransportService {
    manager: NodeManager,
    metrics: Arc<crate::metrics::TransportMetrics>,
}

impl RaftTransportService {
    pub fn new(manager: NodeManager, metrics: Arc<crate::metrics::TransportMetrics>) -> Self {
        RaftTransportService { manager, metrics }
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    async fn stream(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftStreamAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            self.metrics.add_received(
                &batch.from_addr,
                batch.messages.iter().map(|m| m.len()).sum(),
            );
            if crate::failpoint::is_cut(&batch.from_addr, crate::failpoint::Direction::In) {
                continue;
            }
            let Some(node) = self.manager.get(&batch.group) else {
                tracing::debug!(group = %batch.group, from = %batch.from_addr, "raft messages for a group not hosted here");
                continue;
            };
            let from = (!batch.from_addr.is_empty()).then_some(batch.from_addr);
            for data in batch.messages {
                match Message::parse_from_bytes(&data) {
                    Ok(m) => {
                        crate::stage_trace::message("netrecv", &m);
                        node.step(m, from.clone())
                    }
                    Err(e) => {
                        tracing::warn!(group = %node.group(), error = %e, "undecodable raft message")
                    }
                }
            }
        }
        Ok(Response::new(RaftStreamAck {}))
    }
}
