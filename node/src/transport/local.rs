//! An in-process network for tests: delivers raft messages straight into the
//! destination node's queue, and can cut links (both ways or one way),
//! isolate nodes and drop a random share of messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use raft::eraftpb::Message;

use super::{Transport, Unreachable};
use crate::node::Node;

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
}

/// A loopback network shared by the nodes of an in-process cluster.
#[derive(Clone, Default)]
pub struct LocalNetwork {
    state: Arc<Mutex<NetState>>,
}

impl LocalNetwork {
    pub fn new() -> Self {
        LocalNetwork::default()
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
}
