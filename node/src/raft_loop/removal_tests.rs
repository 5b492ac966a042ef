//! A leader that removes itself while a proposal is written inline (issue
//! 17, item 4): built step by step through the inbox, since the
//! interleaving (the removal's commit and a new proposal in one Ready run by
//! a sender's thread) is too narrow to hit by load alone. It drives the raft
//! loop through crate-private hooks (`Node::inbox`, `RaftInbox::run_as_sender`),
//! so it stays a unit test, over a minimal in-process network of its own
//! (testkit's `LocalNetwork` is outside this crate).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use raft::eraftpb::{Message, MessageType};

use super::RaftMsg;
use crate::closure::{Done, Task};
use crate::membership::{PeerIdentity, PeerRef};
use crate::node::Node;
use crate::options::NodeOptions;
use crate::snapshot_install::SnapshotJob;
use crate::state_machine::{ApplyIter, StateMachine};
use crate::transport::{SnapshotSent, Transport, Unreachable};

/// Sees every message `(from, to, message)`; `false` drops it.
type Interceptor = Box<dyn Fn(&str, &str, &Message) -> bool + Send + Sync>;

/// The nodes by address, and what may hold their messages back.
#[derive(Clone, Default)]
struct Net {
    nodes: Arc<Mutex<HashMap<String, Node>>>,
    interceptor: Arc<Mutex<Option<Interceptor>>>,
}

/// What a node at `me` sends through: straight into the destination's
/// queue; no snapshots (this test never needs one).
struct NetTransport {
    net: Net,
    me: String,
    runtime: tokio::runtime::Handle,
}

impl Net {
    fn transport(&self, me: &str) -> Arc<dyn Transport> {
        Arc::new(NetTransport {
            net: self.clone(),
            me: me.to_string(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn node(&self, addr: &str) -> Option<Node> {
        self.nodes.lock().unwrap().get(addr).cloned()
    }

    fn set_interceptor(&self, f: Option<Interceptor>) {
        *self.interceptor.lock().unwrap() = f;
    }
}

impl Transport for NetTransport {
    fn send(&self, _group: &str, to_addr: &str, msg: Message) -> Result<(), Unreachable> {
        if let Some(f) = &*self.net.interceptor.lock().unwrap() {
            if !f(&self.me, to_addr, &msg) {
                return Ok(());
            }
        }
        let node = self.net.node(to_addr).ok_or(Unreachable)?;
        node.step(msg, Some(self.me.clone()));
        Ok(())
    }

    fn install_snapshot(&self, _job: SnapshotJob, done: SnapshotSent) {
        done(Err("this test network carries no snapshots".into()));
    }

    fn query_identity(
        &self,
        _group: &str,
        addr: &str,
    ) -> BoxFuture<'static, Result<PeerIdentity, String>> {
        let (net, addr) = (self.net.clone(), addr.to_string());
        Box::pin(async move {
            let node = net.node(&addr).ok_or("not started yet")?;
            node.identity().await.map_err(|e| e.to_string())
        })
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.runtime.spawn(task);
    }
}

/// Answers every write with its own data.
struct Echo;

impl StateMachine for Echo {
    fn on_apply(&mut self, entries: ApplyIter<'_>) {
        for e in entries {
            let data = e.data.clone();
            e.respond(Ok(data));
        }
    }
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn a_leader_removed_while_it_writes_inline_hands_over_instead_of_panicking() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let net = Net::default();
        let tag = format!("{:016x}", rand::random::<u64>());
        let addrs: Vec<String> = (0..3).map(|i| format!("n{i}.{tag}:7000")).collect();
        let nodes: Vec<Node> = addrs
            .iter()
            .map(|a| {
                let mut o = NodeOptions::new("g".to_string(), a.clone());
                o.initial_conf = addrs.clone();
                o.election_timeout_ms = 300;
                o.snapshot_interval_s = 0;
                let uri = format!("memory://{a}");
                o.log_uri = uri.clone();
                o.raft_meta_uri = uri.clone();
                o.snapshot_uri = uri;
                let n = Node::start(o, Box::new(Echo), net.transport(a)).unwrap();
                net.nodes.lock().unwrap().insert(a.clone(), n.clone());
                n
            })
            .collect();
        let l = wait_for("a leader is elected", || {
            nodes.iter().position(|n| {
                n.is_leader()
                    && nodes
                        .iter()
                        .all(|m| m.leader().is_some_and(|p| p.id == n.peer_id().id))
            })
        })
        .await;
        let leader = nodes[l].clone();
        leader.propose("w0").await.unwrap();
        let before = leader.status().await.unwrap().last_log_index;

        // Every acknowledgement the leader would get is held back.
        let capture = Arc::new(AtomicBool::new(true));
        let held: Arc<Mutex<Vec<(String, Message)>>> = Arc::default();
        {
            let (capture, held, to_leader) = (capture.clone(), held.clone(), addrs[l].clone());
            net.set_interceptor(Some(Box::new(move |from, to, m| {
                if to == to_leader
                    && m.get_msg_type() == MessageType::MsgAppendResponse
                    && capture.load(Ordering::SeqCst)
                {
                    held.lock().unwrap().push((from.to_string(), m.clone()));
                    return false;
                }
                true
            })));
        }
        let removal = {
            let leader = leader.clone();
            tokio::spawn(async move {
                leader
                    .remove_peer(&PeerRef::Id(leader.peer_id().id), None)
                    .await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let c = loop {
            let last = leader.status().await.unwrap().last_log_index;
            if last > before {
                break last;
            }
            assert!(Instant::now() < deadline, "the removal was not proposed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let acks: Vec<(String, Message)> =
            wait_for("both followers acknowledge the removal", || {
                let h = held.lock().unwrap();
                let mut acks: Vec<(String, Message)> = Vec::new();
                for (from, m) in h.iter().rev() {
                    if !m.reject && m.index >= c && !acks.iter().any(|(f, _)| f == from) {
                        acks.push((from.clone(), m.clone()));
                    }
                }
                (acks.len() == 2).then_some(acks)
            })
            .await;

        // A proposal queued before the acknowledgements, all run by one
        // sender's thread: the Ready commits the removal and writes the
        // proposal inline.
        let (done, _answer) = Done::channel();
        let mut msgs = vec![RaftMsg::Propose(Task::new("p", done))];
        for (from, m) in acks {
            msgs.push(RaftMsg::Step(Box::new(m), Some(from)));
        }
        let inbox = leader.inbox().clone();
        let ran = std::thread::spawn(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inbox.run_as_sender(msgs)))
        })
        .join()
        .unwrap();
        capture.store(false, Ordering::SeqCst);
        net.set_interceptor(None);
        assert!(
            ran.is_ok(),
            "the raft loop panicked when the removed leader's inline write became durable"
        );
        assert!(leader.error().is_none(), "{:?}", leader.error());
        removal.await.unwrap().unwrap();
        let others: Vec<Node> = (0..3)
            .filter(|i| *i != l)
            .map(|i| nodes[i].clone())
            .collect();
        let new_leader = wait_for("one of the others leads", || {
            others.iter().find(|n| n.is_leader()).cloned()
        })
        .await;
        new_leader.propose("after").await.unwrap();
        for n in nodes {
            n.shutdown().await;
        }
    });
}
