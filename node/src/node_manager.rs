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
    /// Groups this process was configured to host, started or not yet.
    expected: Arc<RwLock<Vec<String>>>,
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

    /// Declares the groups this process will host (before starting them),
    /// so readiness can tell a group not yet started from one not hosted.
    pub fn expect(&self, groups: impl IntoIterator<Item = String>) {
        let mut e = self.expected.write();
        e.extend(groups);
        e.sort();
        e.dedup();
    }

    /// Groups declared with [`expect`](Self::expect) and not started yet.
    pub fn pending(&self) -> Vec<String> {
        let nodes = self.nodes.read();
        self.expected
            .read()
            .iter()
            .filter(|g| !nodes.contains_key(g.as_str()))
            .cloned()
            .collect()
    }

    /// Every hosted node, sorted by group name.
    pub fn all(&self) -> Vec<Node> {
        let mut v: Vec<Node> = self.nodes.read().values().cloned().collect();
        v.sort_by(|a, b| a.group().cmp(b.group()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_declared_but_not_started_are_pending() {
        let m = NodeManager::new();
        assert!(m.pending().is_empty());
        m.expect(["kv".to_string(), "counter".to_string(), "kv".to_string()]);
        assert_eq!(m.pending(), ["counter", "kv"]);
    }
}
