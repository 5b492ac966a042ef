//! An in-process network for tests: delivers raft messages straight into the
//! destination node's queue, and can cut links (both ways or one way),
//! isolate nodes, drop a random share of messages, rewrite or hold messages
//! (an interceptor) and break or damage snapshot transfers.
//!
//! It stands on the engine's public seams only: it implements
//! `raftkit_node::transport::Transport`, hands messages to `Node::step`,
//! queries identities with `Node::identity`, and sends snapshots with
//! `raftkit_node::snapshot_install::send_snapshot` through an
//! `InstallClient` that calls the receiver's `Node::install_*` directly.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use raft::eraftpb::Message;

use raftkit_node::membership::PeerIdentity;
use raftkit_node::node::Node;
use raftkit_node::snapshot_install::{send_snapshot, Chunk, InstallClient, SnapshotJob};
use raftkit_node::storage::SnapshotMeta;
use raftkit_node::transport::{SnapshotSent, Transport, Unreachable};

/// Faults for snapshot transfers, each firing once.
#[derive(Clone, Debug, Default)]
pub struct SnapshotFaults {
    /// The transfer breaks (like a lost connection) when this many chunks
    /// have been delivered.
    pub cut_after_chunks: Option<u64>,
    /// This chunk (0-based, counted over all transfers) arrives damaged.
    pub corrupt_chunk: Option<u64>,
}

/// Sees every message that passes the link faults: `(from, to, message)`.
/// It may change the message; returning `false` drops it.
pub type Interceptor = Arc<dyn Fn(&str, &str, &mut Message) -> bool + Send + Sync>;

#[derive(Default)]
struct NetState {
    nodes: HashMap<(String, String), Node>,
    cut: HashSet<(String, String)>,
    isolated: HashSet<String>,
    drop_rate: f64,
    interceptor: Option<Interceptor>,
    snapshot_faults: SnapshotFaults,
    chunks_seen: u64,
}

/// A loopback network shared by the nodes of an in-process cluster.
#[derive(Clone)]
pub struct LocalNetwork {
    state: Arc<Mutex<NetState>>,
    /// Snapshot transfers run as tasks here.
    runtime: tokio::runtime::Handle,
}

impl Default for LocalNetwork {
    fn default() -> Self {
        LocalNetwork::new()
    }
}

impl LocalNetwork {
    /// Must be called inside a tokio runtime (snapshot transfers run on it).
    pub fn new() -> Self {
        LocalNetwork {
            state: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport a node at `me` sends through.
    pub fn transport(&self, me: &str) -> Arc<dyn Transport> {
        Arc::new(LocalTransport {
            net: self.clone(),
            me: me.to_string(),
        })
    }

    /// Makes `node` reachable at its address.
    pub fn register(&self, node: &Node) {
        let p = node.peer_id();
        self.lock()
            .nodes
            .insert((node.group().to_string(), p.addr), node.clone());
    }

    /// Removes the node of `group` at `addr` (it is down).
    pub fn unregister(&self, group: &str, addr: &str) {
        self.lock()
            .nodes
            .remove(&(group.to_string(), addr.to_string()));
    }

    /// Drops every message between `a` and `b`, both ways.
    pub fn cut(&self, a: &str, b: &str) {
        let mut s = self.lock();
        s.cut.insert((a.to_string(), b.to_string()));
        s.cut.insert((b.to_string(), a.to_string()));
    }

    /// Drops messages from `from` to `to` only.
    pub fn cut_one_way(&self, from: &str, to: &str) {
        self.lock().cut.insert((from.to_string(), to.to_string()));
    }

    /// Drops every message to or from `addr`.
    pub fn isolate(&self, addr: &str) {
        self.lock().isolated.insert(addr.to_string());
    }

    /// Restores every link.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.cut.clear();
        s.isolated.clear();
    }

    /// Installs (or with `None` removes) a function that sees, may rewrite
    /// and may drop every message.
    pub fn set_interceptor(&self, f: Option<Interceptor>) {
        self.lock().interceptor = f;
    }

    /// Arms faults for the next snapshot transfers.
    pub fn set_snapshot_faults(&self, faults: SnapshotFaults) {
        let mut s = self.lock();
        s.snapshot_faults = faults;
        s.chunks_seen = 0;
    }

    /// Drops each message with probability `p` (0 to 1).
    pub fn set_drop_rate(&self, p: f64) {
        self.lock().drop_rate = p.clamp(0.0, 1.0);
    }
}

struct LocalTransport {
    net: LocalNetwork,
    me: String,
}

impl Transport for LocalTransport {
    fn send(&self, group: &str, to_addr: &str, mut msg: Message) -> Result<(), Unreachable> {
        let node = {
            let s = self.net.lock();
            let blocked = s.isolated.contains(&self.me)
                || s.isolated.contains(to_addr)
                || s.cut.contains(&(self.me.clone(), to_addr.to_string()))
                || (s.drop_rate > 0.0 && rand::random::<f64>() < s.drop_rate);
            if blocked {
                // Lost in the network: the sender cannot tell.
                return Ok(());
            }
            let node = match s.nodes.get(&(group.to_string(), to_addr.to_string())) {
                Some(n) => n.clone(),
                None => return Err(Unreachable),
            };
            if let Some(f) = &s.interceptor {
                if !f(&self.me, to_addr, &mut msg) {
                    return Ok(());
                }
            }
            node
        };
        node.step(msg, Some(self.me.clone()));
        Ok(())
    }

    fn install_snapshot(&self, job: SnapshotJob, done: SnapshotSent) {
        let mut client = LocalInstallClient {
            net: self.net.clone(),
            me: self.me.clone(),
            group: job.group.clone(),
            to: job.to.addr.clone(),
        };
        self.net.runtime.spawn(async move {
            let result = send_snapshot(&mut client, &job).await;
            done(result);
        });
    }

    fn query_identity(
        &self,
        group: &str,
        addr: &str,
    ) -> futures::future::BoxFuture<'static, Result<PeerIdentity, String>> {
        let client = LocalInstallClient {
            net: self.net.clone(),
            me: self.me.clone(),
            group: group.to_string(),
            to: addr.to_string(),
        };
        Box::pin(async move {
            let node = client.node()?;
            node.identity().await.map_err(|e| e.to_string())
        })
    }

    fn spawn(&self, task: futures::future::BoxFuture<'static, ()>) {
        self.net.runtime.spawn(task);
    }
}

/// Delivers snapshot chunks by calling the receiving node directly, through
/// the same link faults as messages, plus [`SnapshotFaults`].
struct LocalInstallClient {
    net: LocalNetwork,
    me: String,
    group: String,
    to: String,
}

impl LocalInstallClient {
    fn node(&self) -> Result<Node, String> {
        let s = self.net.lock();
        let blocked = s.isolated.contains(&self.me)
            || s.isolated.contains(&self.to)
            || s.cut.contains(&(self.me.clone(), self.to.clone()));
        if blocked {
            return Err(format!("{} is unreachable", self.to));
        }
        s.nodes
            .get(&(self.group.clone(), self.to.clone()))
            .cloned()
            .ok_or_else(|| format!("{} is down", self.to))
    }
}

impl InstallClient for LocalInstallClient {
    async fn begin(&mut self, meta: &SnapshotMeta) -> Result<Vec<(String, u64)>, String> {
        self.node()?
            .install_begin(meta.clone())
            .map_err(|e| e.to_string())
    }

    async fn chunk(&mut self, mut chunk: Chunk) -> Result<u64, String> {
        let node = self.node()?;
        {
            let mut s = self.net.lock();
            let n = s.chunks_seen;
            s.chunks_seen += 1;
            if s.snapshot_faults.cut_after_chunks == Some(n) {
                s.snapshot_faults.cut_after_chunks = None;
                return Err("connection lost (injected)".into());
            }
            if s.snapshot_faults.corrupt_chunk == Some(n) {
                s.snapshot_faults.corrupt_chunk = None;
                let mut data = chunk.data.to_vec();
                if let Some(b) = data.first_mut() {
                    *b ^= 0xff;
                }
                chunk.data = data.into();
            }
        }
        node.install_chunk(&chunk).map_err(|e| e.to_string())
    }

    async fn commit(&mut self, index: u64, term: u64, msg: &Message) -> Result<(), String> {
        self.node()?
            .install_commit(index, term, msg.clone(), Some(self.me.clone()))
            .map_err(|e| e.to_string())
    }
}
