//! [`NodeManager`]: the groups hosted by this process, by name (braft's
//! `NodeManager`). Incoming raft messages and service requests find their
//! node here.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::RaftError;
use crate::node::Node;

#[derive(Clone, Default)]
pub struct NodeManager {
    nodes: Arc<RwLock<HashMap<String, Node>>>,
}

impl NodeManager {
    pub fn new() -> Self {
        NodeManager::default()
    }

    /// Registers a node; a second node for the same group is refused.
    pub fn add(&self, node: Node) -> Result<(), RaftError> {
        let mut nodes = self.nodes.write();
        if nodes.contains_key(node.group()) {
            return Err(RaftError::InvalidArgument(format!(
                "group {:?} is already hosted here",
                node.group()
            )));
        }
        nodes.insert(node.group().to_string(), node);
        Ok(())
    }

    pub fn remove(&self, group: &str) -> Option<Node> {
        self.nodes.write().remove(group)
    }

    pub fn get(&self, group: &str) -> Option<Node> {
        self.nodes.read().get(group).cloned()
    }

    /// Every hosted node, sorted by group name.
    pub fn all(&self) -> Vec<Node> {
        let mut v: Vec<Node> = self.nodes.read().values().cloned().collect();
        v.sort_by(|a, b| a.group().cmp(b.group()));
        v
    }
}
