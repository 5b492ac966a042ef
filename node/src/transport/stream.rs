//! Raft messages between processes on a plain framed TCP stream that shares
//! the server's port with gRPC and HTTP. Owns the wire format, the sending
//! [`Link`]s (one per destination address) and the receiving threads
//! ([`RaftStreamServer`]); touches nodes only through the [`NodeManager`].
//!
//! Why not a gRPC stream: on the replication path a message passed through
//! the raft thread → the link's task → tonic's stream task → the HTTP/2
//! connection task before reaching the socket, and through the connection
//! task and the service's task on the other side. Each hop is a thread
//! wake-up that costs ~45 µs on these VMs (docs/benchmarks.md, "Where the
//! time goes"). Here the thread that produced a message writes it to the
//! socket itself when nothing is queued ahead of it, and the thread that
//! reads the socket steps the message.
//!
//! Wire format. A connection opens with [`PREFACE`] (8 bytes; it starts with
//! `R`, which no HTTP request does, so the server tells the protocols apart
//! from the first byte), then the sender's advertised address (u16
//! big-endian length, UTF-8). Then frames, each: u32 big-endian length of
//! the rest, u16 big-endian group length, the group, and one raft-rs
//! `eraftpb.Message` in its protobuf encoding. Traffic is one-way: each
//! process answers on its own connection.
//!
//! Hello. The first frame of a connection, and again whenever it changes,
//! is the sender's [`Hello`]: the cluster id of every group it hosts
//! (`pb::StreamHello` in the `context` of a message framed for the reserved
//! group [`HELLO_GROUP`]). The receiver drops a group's frames whose sender
//! is of another cluster (`cluster_check`). Stating it per connection, not
//! per frame, costs the sending path one atomic load per frame. A node that
//! does not know hellos (an older build) drops the frame as one for a group
//! it does not host; a sender that sends none is taken as not stating its
//! cluster, which is accepted.
//!
//! Sending. [`Link::send`] runs on the caller's thread (the raft loop): with
//! the connection up and nothing queued, it writes the frame with a
//! non-blocking `send`; what does not fit is queued, and the link's writer
//! thread writes the queue. The writer thread also connects, and reconnects
//! with backoff and jitter after a failure. While a link is down, sends fail
//! fast (raft-rs is told the peer is unreachable) and queued bytes are
//! dropped; raft retransmits. Dead peers: TCP keepalive and
//! `TCP_USER_TIMEOUT` break a connection whose peer stopped acknowledging
//! within [`DEAD_PEER_TIMEOUT`], and a write that makes no progress for as
//! long counts as failed. A link with nothing to send for 30 s (its peer
//! left the group) closes and stops; the next send starts a new one.
//!
//! Receiving. One thread per incoming connection reads frames and steps them
//! into the group's node. A follower's inline write (see
//! `raft_loop::inbox`) runs on that thread, so its fsync delays only that
//! peer's stream, not other connections.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::Message;

use super::Unreachable;
use crate::metrics::TransportMetrics;
use crate::node_manager::NodeManager;

/// Opens every raft stream. The first byte, `R`, starts no HTTP request.
pub const PREFACE: &[u8; 8] = b"RKRAFT\x00\x01";
/// Largest frame either side accepts (the rest after the length field).
pub const MAX_FRAME: usize = 64 << 20;
/// Longest advertised address a preface may carry.
const MAX_ADDR: usize = 1024;
/// Bytes queued for one destination beyond which new messages are dropped
/// (the peer is not reading; raft retransmits once it does).
const MAX_QUEUED: usize = 32 << 20;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A peer that acknowledges nothing for this long is taken for dead.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// A link that has not been asked to send for this long stops and closes
/// its connection (its peer was most likely removed: raft heartbeats keep
/// every live link busy); a later send starts a new one.
const IDLE_LINK: Duration = Duration::from_secs(30);
/// Most incoming raft streams served at once (each has a thread); more are
/// refused. Peers open one each, so this only stops a flood.
const MAX_INCOMING_STREAMS: usize = 512;
/// How long a new connection may take to send its preface.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// The group a hello frame is addressed to. Group names may not start with
/// '.' (`options::validate_group_name`), so no real group has this name.
pub const HELLO_GROUP: &str = ".hello";

// ------------------------------------------------------------- wire format

/// Appends one frame carrying `msg` for `group` to `buf`.
pub fn encode_frame(buf: &mut Vec<u8>, group: &str, msg: &Message) -> Result<(), String> {
    let group_len = u16::try_from(group.len())
        .map_err(|_| format!("group name of {} bytes is too long", group.len()))?;
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&group_len.to_be_bytes());
    buf.extend_from_slice(group.as_bytes());
    msg.write_to_vec(buf)
        .map_err(|e| format!("encoding a raft message: {e}"))?;
    let len = buf.len() - start - 4;
    if len > MAX_FRAME {
        buf.truncate(start);
        return Err(format!(
            "a raft message of {len} bytes exceeds the {MAX_FRAME}-byte frame limit"
        ));
    }
    buf[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// The bytes that open a stream from the process advertised as `from`.
pub fn encode_preface(from: &str) -> Result<Vec<u8>, String> {
    if from.len() > MAX_ADDR {
        return Err(format!(
            "advertised address of {} bytes is too long",
            from.len()
        ));
    }
    let mut b = PREFACE.to_vec();
    b.extend_from_slice(&(from.len() as u16).to_be_bytes());
    b.extend_from_slice(from.as_bytes());
    Ok(b)
}

/// Reads a preface; returns the sender's advertised address.
pub fn read_preface(r: &mut impl Read) -> Result<String, String> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|e| format!("reading the preface: {e}"))?;
    if &magic != PREFACE {
        return Err(format!("not a raft stream (preface {magic:?})"));
    }
    let mut len = [0u8; 2];
    r.read_exact(&mut len)
        .map_err(|e| format!("reading the preface: {e}"))?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_ADDR {
        return Err(format!("advertised address of {len} bytes is too long"));
    }
    let mut addr = vec![0u8; len];
    r.read_exact(&mut addr)
        .map_err(|e| format!("reading the preface: {e}"))?;
    String::from_utf8(addr).map_err(|_| "advertised address is not UTF-8".to_string())
}

/// One decoded frame.
#[derive(Debug)]
pub struct Frame {
    pub group: String,
    pub msg: Message,
    /// Frame size on the wire, for metrics.
    pub wire_bytes: usize,
}

/// Reads the next frame into `buf` (reused between calls). `Ok(None)` is a
/// clean end of stream between frames; anything malformed is an error that
/// names what was wrong (the connection is then closed).
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<Frame>, String> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(format!("reading a frame: {e}")),
    }
    r.read_exact(&mut len[1..])
        .map_err(|e| format!("reading a frame: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        ));
    }
    if len < 2 {
        return Err(format!("frame of {len} bytes is too short for its header"));
    }
    // Grown as the bytes arrive, never to the length a header claims: a
    // sender that states 64 MiB and sends nothing costs next to nothing.
    buf.clear();
    let got = r
        .by_ref()
        .take(len as u64)
        .read_to_end(buf)
        .map_err(|e| format!("reading a frame of {len} bytes: {e}"))?;
    if got < len {
        return Err(format!(
            "reading a frame of {len} bytes: the stream ended after {got}"
        ));
    }
    let group_len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
    let Some(group) = buf.get(2..2 + group_len) else {
        return Err(format!(
            "group name of {group_len} bytes does not fit a {len}-byte frame"
        ));
    };
    let group = std::str::from_utf8(group)
        .map_err(|_| "group name is not UTF-8".to_string())?
        .to_string();
    let msg = Message::parse_from_bytes(&buf[2 + group_len..])
        .map_err(|e| format!("undecodable raft message for group {group:?}: {e}"))?;
    Ok(Some(Frame {
        group,
        msg,
        wire_bytes: len + 4,
    }))
}

// ------------------------------------------------------------------- hello

/// What this process states on every raft stream it opens: the cluster id
/// of each group it hosts. Shared by the process's links; a change bumps
/// the generation, and each link sends the new hello before its next frame.
#[derive(Default)]
pub struct Hello {
    state: Mutex<HelloState>,
    /// Bumped (under the lock) on every change; links compare it with the
    /// generation they last sent.
    generation: AtomicU64,
}

#[derive(Default)]
struct HelloState {
    /// Per group: cluster id, highest cluster format.
    clusters: BTreeMap<String, (u64, u32)>,
    /// The hello frame for `clusters`, encoded once per change.
    frame: Vec<u8>,
}

impl Hello {
    fn lock(&self) -> MutexGuard<'_, HelloState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the cluster id of this process's replica of `group`.
    pub fn set_cluster_id(&self, group: &str, cluster_id: u64) {
        self.update(group, |g| g.0 = cluster_id);
    }

    /// Records the highest cluster format this process's replica of
    /// `group` supports.
    pub fn set_max_cluster_format(&self, group: &str, format: u32) {
        self.update(group, |g| g.1 = format);
    }

    fn update(&self, group: &str, f: impl FnOnce(&mut (u64, u32))) {
        let mut s = self.lock();
        let mut g = s.clusters.get(group).copied().unwrap_or_default();
        f(&mut g);
        if s.clusters.get(group) == Some(&g) {
            return;
        }
        s.clusters.insert(group.to_string(), g);
        s.frame = encode_hello(&s.clusters);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The cluster id recorded for `group` (0: none).
    pub fn cluster_id(&self, group: &str) -> u64 {
        self.lock().clusters.get(group).map_or(0, |g| g.0)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current hello frame and its generation (empty before anything
    /// was recorded: then there is nothing to state).
    fn frame(&self) -> (u64, Vec<u8>) {
        let s = self.lock();
        (self.generation(), s.frame.clone())
    }
}

/// The frame carrying a hello that states `clusters`.
fn encode_hello(clusters: &BTreeMap<String, (u64, u32)>) -> Vec<u8> {
    let hello = crate::pb::StreamHello {
        groups: clusters
            .iter()
            .map(
                |(group, &(cluster_id, max_cluster_format))| crate::pb::GroupCluster {
                    group: group.clone(),
                    cluster_id,
                    max_cluster_format,
                },
            )
            .collect(),
    };
    let msg = Message {
        context: hello.encode_to_vec().into(),
        ..Default::default()
    };
    let mut frame = Vec::new();
    // Invariant: the group name is short and a hello is far below the
    // frame limit (group names are at most 64 bytes), so this cannot fail;
    // if it did, the empty frame would state nothing, which is accepted.
    if encode_frame(&mut frame, HELLO_GROUP, &msg).is_err() {
        frame.clear();
    }
    frame
}

/// What a hello frame's message states, by group: cluster id and highest
/// cluster format.
pub fn decode_hello(msg: &Message) -> Result<HashMap<String, (u64, u32)>, String> {
    let hello = crate::pb::StreamHello::decode(&msg.context[..])
        .map_err(|e| format!("undecodable stream hello: {e}"))?;
    Ok(hello
        .groups
        .into_iter()
        .map(|g| (g.group, (g.cluster_id, g.max_cluster_format)))
        .collect())
}

/// The highest cluster format each peer process stated for each group, on
/// the raft stream it has open to this process (by advertised address). A
/// peer's entry goes when its stream ends, so a member restarted with
/// another build states it anew. Read by a leader deciding whether to raise
/// its group's format.
#[derive(Default)]
pub struct PeerFormats {
    /// (address, group) -> (the stream that stated it, format).
    stated: Mutex<HashMap<(String, String), (u64, u32)>>,
}

impl PeerFormats {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), (u64, u32)>> {
        self.stated.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the process at `addr` stated for `group` on its open stream
    /// (`Some(0)`: a stream without a hello, an older build; `None`: no
    /// stream open).
    pub fn get(&self, addr: &str, group: &str) -> Option<u32> {
        self.lock()
            .get(&(addr.to_string(), group.to_string()))
            .map(|s| s.1)
    }

    fn opened(&self, stream: u64, addr: &str, groups: &[String]) {
        let mut s = self.lock();
        s.retain(|k, _| k.0 != addr);
        for g in groups {
            s.insert((addr.to_string(), g.clone()), (stream, 0));
        }
    }

    fn stated(&self, stream: u64, addr: &str, hello: &HashMap<String, (u64, u32)>) {
        let mut s = self.lock();
        s.retain(|k, v| k.0 != addr || v.0 != stream);
        for (g, &(_, format)) in hello {
            s.insert((addr.to_string(), g.clone()), (stream, format));
        }
    }

    fn closed(&self, stream: u64, addr: &str) {
        self.lock().retain(|k, v| k.0 != addr || v.0 != stream);
    }
}

// ----------------------------------------------------------------- sending

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkStatus {
    /// First connection attempt: messages queue.
    Connecting,
    Up,
    /// Lost or refused; sends fail until a reconnect succeeds.
    Down,
}

/// A link's connection: plain, or TLS (written only by one thread at a
/// time, as the link's `writing` flag already guarantees).
enum Wire {
    Plain(TcpStream),
    Tls {
        sock: TcpStream,
        stream: Box<Mutex<raftkit_tls::BlockingClient>>,
    },
}

impl Wire {
    fn socket(&self) -> &TcpStream {
        match self {
            Wire::Plain(s) => s,
            Wire::Tls { sock, .. } => sock,
        }
    }

    fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Wire::Plain(s) => (&*s).write_all(bytes),
            Wire::Tls { stream, .. } => {
                let mut s = stream.lock().unwrap_or_else(|p| p.into_inner());
                s.write_all(bytes)?;
                s.flush()
            }
        }
    }

    fn shutdown(&self) {
        let _ = self.socket().shutdown(Shutdown::Both);
    }
}

struct LinkState {
    status: LinkStatus,
    /// The connection, while it is usable.
    conn: Option<Arc<Wire>>,
    /// Bytes waiting for the writer thread, in order.
    queued: Vec<u8>,
    /// The writer thread is writing bytes taken from `queued`.
    writing: bool,
    closed: bool,
    /// When a send was last asked for.
    last_send: std::time::Instant,
    /// The hello generation last sent on this connection.
    hello_sent: u64,
    /// A direct send left TLS records the socket did not take; the writer
    /// thread flushes them.
    tls_pending: bool,
}

/// The sending side of the stream to one destination address.
pub struct Link {
    addr: String,
    state: Mutex<LinkState>,
    wake: Condvar,
    metrics: Arc<TransportMetrics>,
    /// What this process states on the stream.
    hello: Arc<Hello>,
    /// How long the link may go without a send before it stops.
    idle: Duration,
    /// Mutual TLS to the peer (its certificate must name the address's host).
    tls: Option<Arc<raftkit_tls::Tls>>,
}

impl Link {
    /// Starts a link to `addr` (connecting in the background) on behalf of
    /// the process advertised as `me`, which states `hello`.
    pub fn start(
        me: &str,
        addr: &str,
        metrics: Arc<TransportMetrics>,
        hello: Arc<Hello>,
    ) -> Arc<Link> {
        Link::start_with_idle(me, addr, metrics, hello, IDLE_LINK, None)
    }

    /// [`Link::start`] over mutual TLS when `tls` is given.
    pub fn start_tls(
        me: &str,
        addr: &str,
        metrics: Arc<TransportMetrics>,
        hello: Arc<Hello>,
        tls: Option<Arc<raftkit_tls::Tls>>,
    ) -> Arc<Link> {
        Link::start_with_idle(me, addr, metrics, hello, IDLE_LINK, tls)
    }

    fn start_with_idle(
        me: &str,
        addr: &str,
        metrics: Arc<TransportMetrics>,
        hello: Arc<Hello>,
        idle: Duration,
        tls: Option<Arc<raftkit_tls::Tls>>,
    ) -> Arc<Link> {
        let link = Arc::new(Link {
            addr: addr.to_string(),
            state: Mutex::new(LinkState {
                status: LinkStatus::Connecting,
                conn: None,
                queued: Vec::new(),
                writing: false,
                closed: false,
                last_send: std::time::Instant::now(),
                hello_sent: 0,
                tls_pending: false,
            }),
            wake: Condvar::new(),
            metrics,
            hello,
            idle,
            tls,
        });
        let (writer, me) = (link.clone(), me.to_string());
        let spawned = std::thread::Builder::new()
            .name(format!("raftkit-link-{addr}"))
            .spawn(move || writer.run_writer(&me));
        if let Err(e) = spawned {
            tracing::error!(peer = %addr, error = %e, "cannot start a link thread");
            link.lock().status = LinkStatus::Down;
        }
        link
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the link was closed (it then refuses every message).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Sends one frame (see [`encode_frame`]). Never blocks on the network.
    pub fn send(&self, frame: &[u8]) -> Result<(), Unreachable> {
        let mut s = self.lock();
        s.last_send = std::time::Instant::now();
        if s.closed || s.status == LinkStatus::Down {
            return Err(Unreachable);
        }
        if self.hello.generation() != s.hello_sent {
            // What this process states changed since the connection's
            // hello (a replica learned its cluster): say it again first.
            let (generation, hello) = self.hello.frame();
            if !hello.is_empty() {
                self.push(&mut s, &hello)?;
            }
            s.hello_sent = generation;
        }
        self.push(&mut s, frame)
    }

    /// Writes `frame` directly when nothing is queued, else queues it.
    fn push(&self, s: &mut MutexGuard<'_, LinkState>, frame: &[u8]) -> Result<(), Unreachable> {
        if s.queued.len() + frame.len() > MAX_QUEUED {
            // The peer reads slower than raft sends (catching up after a
            // pause, or stopped). The frame is dropped, and raft must know:
            // as Unreachable, a replicating follower goes back to probing
            // from its last acknowledged index. Dropped silently, the frame
            // would stay counted in flight; with the window full of lost
            // messages the leader then sends one append per heartbeat, and
            // a follower behind by 200 MB took ~20 s to catch up.
            return Err(Unreachable);
        }
        self.metrics.add_sent(&self.addr, frame.len());
        let direct = match &s.conn {
            Some(conn) if s.queued.is_empty() && !s.writing && !s.tls_pending => Some(conn.clone()),
            _ => None,
        };
        let Some(conn) = direct else {
            s.queued.extend_from_slice(frame);
            self.wake.notify_all();
            return Ok(());
        };
        let sent = match &*conn {
            Wire::Plain(sock) => send_now(sock, frame),
            Wire::Tls { sock, stream } => match stream.try_lock() {
                // Encrypted here; records the socket does not take now
                // are left to the writer thread.
                Ok(mut st) => tls_send_now(&mut st.conn, sock, frame).map(|flushed| {
                    if !flushed {
                        s.tls_pending = true;
                        self.wake.notify_all();
                    }
                    frame.len()
                }),
                Err(_) => Ok(0),
            },
        };
        match sent {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => {
                s.queued.extend_from_slice(&frame[n..]);
                self.wake.notify_all();
                Ok(())
            }
            Err(e) => {
                tracing::debug!(peer = %self.addr, error = %e, "raft stream write failed");
                s.conn = None;
                s.status = LinkStatus::Down;
                s.queued.clear();
                self.wake.notify_all();
                Err(Unreachable)
            }
        }
    }

    /// Closes the link: its thread stops, a blocked write is interrupted.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        if let Some(c) = s.conn.take() {
            c.shutdown();
        }
        self.wake.notify_all();
    }

    /// The writer thread: connect, write what is queued, reconnect after a
    /// failure, until closed.
    fn run_writer(&self, me: &str) {
        let preface = match encode_preface(me) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(peer = %self.addr, error = %e, "cannot open raft streams");
                self.lock().status = LinkStatus::Down;
                return;
            }
        };
        let mut backoff = MIN_BACKOFF;
        loop {
            let (hello_generation, hello) = self.hello.frame();
            let mut opening = preface.clone();
            opening.extend_from_slice(&hello);
            match connect(&self.addr, &opening, self.tls.as_deref()) {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    {
                        let mut s = self.lock();
                        if s.closed {
                            conn.shutdown();
                            return;
                        }
                        s.conn = Some(conn.clone());
                        s.status = LinkStatus::Up;
                        s.hello_sent = hello_generation;
                    }
                    backoff = MIN_BACKOFF;
                    tracing::debug!(peer = %self.addr, "raft stream connected");
                    if self.write_queued(&conn) {
                        return;
                    }
                    conn.shutdown();
                    tracing::debug!(peer = %self.addr, "raft stream lost");
                }
                Err(e) => {
                    tracing::debug!(peer = %self.addr, error = %e, "raft stream connect failed")
                }
            }
            let mut s = self.lock();
            s.conn = None;
            s.status = LinkStatus::Down;
            s.queued = Vec::new();
            let pause = backoff.mul_f64(rand::random::<f64>() * 0.4 + 0.8);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let deadline = std::time::Instant::now() + pause;
            while !s.closed {
                let now = std::time::Instant::now();
                if now >= deadline {
                    break;
                }
                s = self
                    .wake
                    .wait_timeout(s, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if s.closed {
                return;
            }
            if self.stop_if_idle(&mut s) {
                return;
            }
        }
    }

    /// Closes the link if nothing was sent on it for `idle`.
    fn stop_if_idle(&self, s: &mut LinkState) -> bool {
        if s.last_send.elapsed() < self.idle {
            return false;
        }
        tracing::debug!(peer = %self.addr, "idle link stopped");
        s.closed = true;
        if let Some(c) = s.conn.take() {
            c.shutdown();
        }
        true
    }

    /// Writes queued bytes to `conn` until the link is closed (returns
    /// true) or the connection fails (returns false).
    fn write_queued(&self, conn: &Wire) -> bool {
        let mut spare = Vec::new();
        loop {
            let mut batch = {
                let mut s = self.lock();
                loop {
                    if s.closed {
                        return true;
                    }
                    if s.conn.is_none() {
                        return false; // a direct send failed
                    }
                    if !s.queued.is_empty() || s.tls_pending {
                        break;
                    }
                    if self.stop_if_idle(&mut s) {
                        return true;
                    }
                    s = self
                        .wake
                        .wait_timeout(s, self.idle)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                s.writing = true;
                // Writing the batch flushes what a direct send left too.
                s.tls_pending = false;
                std::mem::replace(&mut s.queued, std::mem::take(&mut spare))
            };
            let written = conn.write_all(&batch);
            let mut s = self.lock();
            s.writing = false;
            if let Err(e) = written {
                tracing::debug!(peer = %self.addr, error = %e, "raft stream write failed");
                return s.closed;
            }
            batch.clear();
            spare = batch;
        }
    }
}

pub use raftkit_proto::mux::send_now;

/// Puts `frame` into the TLS connection (encrypting it) and writes what
/// the socket takes without blocking; `Ok(true)` when nothing is left for
/// the writer thread.
fn tls_send_now(
    conn: &mut raftkit_tls::rustls::ClientConnection,
    sock: &TcpStream,
    frame: &[u8],
) -> std::io::Result<bool> {
    /// `send_now` as a `Write` that says "would block" when full.
    struct DontWait<'a>(&'a TcpStream);
    impl Write for DontWait<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            match send_now(self.0, b)? {
                0 if !b.is_empty() => Err(std::io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    conn.writer().write_all(frame)?;
    while conn.wants_write() {
        match conn.write_tls(&mut DontWait(sock)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Connects to `addr` (over TLS with `tls`) and sends the preface (and
/// the hello).
fn connect(addr: &str, preface: &[u8], tls: Option<&raftkit_tls::Tls>) -> std::io::Result<Wire> {
    let mut last = None;
    for sa in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(mut conn) => {
                tune(&conn)?;
                conn.set_write_timeout(Some(DEAD_PEER_TIMEOUT))?;
                let Some(tls) = tls else {
                    conn.write_all(preface)?;
                    return Ok(Wire::Plain(conn));
                };
                // The handshake must not wait on a peer that does not answer.
                conn.set_read_timeout(Some(DEAD_PEER_TIMEOUT))?;
                let sock = conn.try_clone()?;
                let mut stream = raftkit_tls::connect_blocking(tls, conn, addr)?;
                // At most one frame waits in it (a direct send the socket
                // did not take; later frames queue in the link), whatever
                // its size.
                stream.conn.set_buffer_limit(None);
                stream.write_all(preface)?;
                stream.flush()?;
                return Ok(Wire::Tls {
                    sock,
                    stream: Box::new(Mutex::new(stream)),
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// No Nagle delay; keepalive and a user timeout so a dead peer breaks the
/// connection within about [`DEAD_PEER_TIMEOUT`].
fn tune(conn: &TcpStream) -> std::io::Result<()> {
    use rustix::net::sockopt;
    conn.set_nodelay(true)?;
    sockopt::set_socket_keepalive(conn, true)?;
    sockopt::set_tcp_keepidle(conn, Duration::from_secs(1))?;
    sockopt::set_tcp_keepintvl(conn, Duration::from_secs(1))?;
    sockopt::set_tcp_keepcnt(conn, 3)?;
    sockopt::set_tcp_user_timeout(conn, DEAD_PEER_TIMEOUT.as_millis() as u32)?;
    Ok(())
}

// --------------------------------------------------------------- receiving

/// An accepted raft stream: plain, or TLS with its first bytes read.
enum Incoming {
    Plain(TcpStream),
    Tls {
        stream: Box<raftkit_tls::BlockingServer>,
        prefix: Vec<u8>,
        identity: raftkit_tls::PeerIdentity,
    },
}

impl Incoming {
    fn socket(&self) -> &TcpStream {
        match self {
            Incoming::Plain(c) => c,
            Incoming::Tls { stream, .. } => stream.get_ref(),
        }
    }
}

struct Reader {
    conn: TcpStream,
    thread: Option<JoinHandle<()>>,
}

/// The receiving side: one thread per incoming raft stream.
#[derive(Clone)]
pub struct RaftStreamServer {
    manager: NodeManager,
    metrics: Arc<TransportMetrics>,
    formats: Arc<PeerFormats>,
    readers: Arc<Mutex<HashMap<u64, Reader>>>,
    next_id: Arc<AtomicU64>,
}

impl RaftStreamServer {
    pub fn new(
        manager: NodeManager,
        metrics: Arc<TransportMetrics>,
        formats: Arc<PeerFormats>,
    ) -> Self {
        RaftStreamServer {
            manager,
            metrics,
            formats,
            readers: Arc::default(),
            next_id: Arc::default(),
        }
    }

    fn readers(&self) -> MutexGuard<'_, HashMap<u64, Reader>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves an accepted connection whose first byte is a raft preface's.
    pub fn serve(&self, conn: TcpStream) {
        self.serve_incoming(Incoming::Plain(conn));
    }

    /// Serves a TLS connection that opened with `prefix` (the preface's
    /// first bytes, read to tell it from a mux stream) from `identity`.
    pub fn serve_tls(
        &self,
        stream: raftkit_tls::BlockingServer,
        prefix: Vec<u8>,
        identity: raftkit_tls::PeerIdentity,
    ) {
        self.serve_incoming(Incoming::Tls {
            stream: Box::new(stream),
            prefix,
            identity,
        });
    }

    fn serve_incoming(&self, incoming: Incoming) {
        let conn = incoming.socket();
        let Ok(handle) = conn.try_clone() else {
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut readers = self.readers();
        if readers.len() >= MAX_INCOMING_STREAMS {
            tracing::warn!(
                remote = ?conn.peer_addr().ok(),
                "refused a raft stream: {MAX_INCOMING_STREAMS} are open already"
            );
            return;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("raftkit-stream-in".into())
            .spawn(move || {
                this.read_stream(id, incoming);
                this.readers().remove(&id);
            });
        match spawned {
            Ok(thread) => {
                readers.insert(
                    id,
                    Reader {
                        conn: handle,
                        thread: Some(thread),
                    },
                );
            }
            Err(e) => tracing::error!(error = %e, "cannot start a raft stream thread"),
        }
    }

    fn read_stream(&self, stream: u64, incoming: Incoming) {
        let Ok(conn) = incoming.socket().try_clone() else {
            return;
        };
        let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let _ = tune(&conn);
        let _ = conn.set_read_timeout(Some(PREFACE_TIMEOUT));
        let (reader, identity): (Box<dyn Read + Send>, _) = match incoming {
            Incoming::Plain(c) => (Box::new(c), None),
            Incoming::Tls {
                stream,
                prefix,
                identity,
            } => (
                Box::new(std::io::Cursor::new(prefix).chain(stream)),
                Some(identity),
            ),
        };
        let mut r = BufReader::with_capacity(256 << 10, reader);
        let from = match read_preface(&mut r) {
            Ok(from) => from,
            Err(e) => {
                tracing::warn!(remote = %peer, error = %e, "refused a connection");
                return;
            }
        };
        // Over TLS, the sender's certificate must be a member's that names
        // the address it states (so no member speaks for another).
        if let Some(id) = &identity {
            if !(id.is_node() && id.names(raftkit_tls::host_of(&from))) {
                crate::metrics::TLS_REFUSED.count(crate::metrics::TlsRefusal::NotMember);
                tracing::warn!(
                    remote = %peer,
                    from = %from,
                    certificate = %id.describe(),
                    "refused a raft stream: the certificate is not a member's certificate naming {}",
                    raftkit_tls::host_of(&from)
                );
                return;
            }
        }
        let _ = conn.set_read_timeout(None);
        tracing::debug!(from = %from, "raft stream accepted");
        let from_addr = (!from.is_empty()).then(|| from.clone());
        let mut buf = Vec::new();
        // The sender's cluster per group, from its latest hello (empty: it
        // stated none).
        let mut clusters: HashMap<String, (u64, u32)> = HashMap::new();
        // Until a hello says otherwise, the sender states no format (an
        // older build) for the groups hosted here.
        let hosted: Vec<String> = self
            .manager
            .all()
            .iter()
            .map(|n| n.group().to_string())
            .collect();
        self.formats.opened(stream, &from, &hosted);
        loop {
            let frame = match read_frame(&mut r, &mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(from = %from, error = %e, "closing a raft stream");
                    break;
                }
            };
            self.metrics.add_received(&from, frame.wire_bytes);
            if frame.group == HELLO_GROUP {
                match decode_hello(&frame.msg) {
                    Ok(c) => {
                        self.formats.stated(stream, &from, &c);
                        clusters = c;
                    }
                    Err(e) => {
                        tracing::warn!(from = %from, error = %e, "closing a raft stream");
                        break;
                    }
                }
                continue;
            }
            if crate::failpoint::is_cut(&from, crate::failpoint::Direction::In) {
                continue;
            }
            crate::stage_trace::message("netrecv", &frame.msg);
            match self.manager.get(&frame.group) {
                Some(node) => {
                    if let Some(id) = &identity {
                        if !crate::port_tls::admits_raft(&node, id, &from) {
                            crate::metrics::TLS_REFUSED
                                .count(crate::metrics::TlsRefusal::NotMember);
                            tracing::debug!(group = %frame.group, from = %from, "dropped raft messages: the sender is not a member of the group");
                            continue;
                        }
                    }
                    let sender = clusters.get(&frame.group).map_or(0, |c| c.0);
                    if super::cluster_check::admits(&node, sender, &from, "raft messages") {
                        node.step(frame.msg, from_addr.clone())
                    }
                }
                None => {
                    tracing::debug!(group = %frame.group, from = %from, "raft messages for a group not hosted here")
                }
            }
        }
        self.formats.closed(stream, &from);
        let _ = conn.shutdown(Shutdown::Both);
    }

    /// Closes every incoming stream and waits for the reading threads.
    pub fn shutdown(&self) {
        let readers: Vec<Reader> = self.readers().drain().map(|(_, r)| r).collect();
        for r in &readers {
            let _ = r.conn.shutdown(Shutdown::Both);
        }
        for mut r in readers {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(index: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
        m.index = index;
        m.to = 2;
        m.from = 1;
        m
    }

    #[test]
    fn frames_round_trip_and_a_clean_end_is_none() {
        let mut wire = encode_preface("10.0.0.1:7000").unwrap();
        encode_frame(&mut wire, "g1", &msg(5)).unwrap();
        encode_frame(&mut wire, "", &msg(6)).unwrap();
        let mut r = &wire[..];
        assert_eq!(read_preface(&mut r).unwrap(), "10.0.0.1:7000");
        let mut buf = Vec::new();
        let f = read_frame(&mut r, &mut buf).unwrap().unwrap();
        assert_eq!((f.group.as_str(), f.msg.index), ("g1", 5));
        let f = read_frame(&mut r, &mut buf).unwrap().unwrap();
        assert_eq!((f.group.as_str(), f.msg.index), ("", 6));
        assert!(read_frame(&mut r, &mut buf).unwrap().is_none());
    }

    #[test]
    fn malformed_input_is_an_error_that_says_what_was_wrong() {
        let mut buf = Vec::new();
        let e = read_preface(&mut &b"GET / HTTP/1.1\r\n"[..]).unwrap_err();
        assert!(e.contains("not a raft stream"), "{e}");

        let mut wire = Vec::new();
        encode_frame(&mut wire, "g", &msg(1)).unwrap();
        let e = read_frame(&mut &wire[..wire.len() - 1], &mut buf).unwrap_err();
        assert!(e.contains("reading a frame"), "{e}");

        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let e = read_frame(&mut &huge[..], &mut buf).unwrap_err();
        assert!(e.contains("exceeds"), "{e}");

        // The largest length a header may claim, then a few bytes: what is
        // allocated follows what arrived, not the claim.
        let mut claim = (MAX_FRAME as u32).to_be_bytes().to_vec();
        claim.extend_from_slice(&[7; 100]);
        let mut fresh = Vec::new();
        let e = read_frame(&mut &claim[..], &mut fresh).unwrap_err();
        assert!(e.contains("ended after 100"), "{e}");
        assert!(
            fresh.capacity() < 64 << 10,
            "{} bytes allocated",
            fresh.capacity()
        );

        // A group length that runs past the frame.
        let bad = [0, 0, 0, 3, 0, 9, b'g'];
        let e = read_frame(&mut &bad[..], &mut buf).unwrap_err();
        assert!(e.contains("does not fit"), "{e}");

        // Garbage where the raft message should be.
        let bad = [0, 0, 0, 5, 0, 1, b'g', 0xff, 0xff];
        let e = read_frame(&mut &bad[..], &mut buf).unwrap_err();
        assert!(e.contains("undecodable raft message"), "{e}");

        let e = encode_frame(&mut wire, &"x".repeat(70_000), &msg(1)).unwrap_err();
        assert!(e.contains("too long"), "{e}");
    }

    fn frame(index: u64, payload: usize) -> Vec<u8> {
        let mut m = msg(index);
        m.entries.push(raft::eraftpb::Entry {
            index,
            data: vec![index as u8; payload].into(),
            ..Default::default()
        });
        let mut b = Vec::new();
        encode_frame(&mut b, "g", &m).unwrap();
        b
    }

    fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_burst_larger_than_the_socket_buffer_arrives_whole_and_in_order() {
        burst_arrives_whole_and_in_order(None);
    }

    /// The same over mutual TLS: frames are encrypted by the sending thread
    /// when nothing waits, and the records the socket does not take are
    /// flushed by the writer thread before anything queued after them.
    #[test]
    fn a_burst_over_tls_arrives_whole_and_in_order() {
        use raftkit_tls::issue::{Ca, LeafSpec};
        let day = Duration::from_secs(86_400);
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("link test CA", day).unwrap();
        let tls = |stem: &str| {
            let spec = LeafSpec::new(stem, raftkit_tls::ROLE_NODE, &["127.0.0.1"], day);
            let leaf = ca.issue(&spec).unwrap();
            raftkit_tls::Tls::load(ca.files(dir.path(), stem, Some(&leaf)).unwrap()).unwrap()
        };
        burst_arrives_whole_and_in_order(Some((tls("client"), tls("server"))));
    }

    fn burst_arrives_whole_and_in_order(
        tls: Option<(Arc<raftkit_tls::Tls>, Arc<raftkit_tls::Tls>)>,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (client, server) = match tls {
            Some((c, s)) => (Some(c), Some(s)),
            None => (None, None),
        };
        let link = Link::start_with_idle(
            "me:1",
            &addr,
            Arc::default(),
            Arc::default(),
            IDLE_LINK,
            client,
        );
        let (tcp, _) = listener.accept().unwrap();
        let mut conn: Box<dyn Read + Send> = match server {
            None => Box::new(tcp),
            Some(s) => {
                let sc =
                    raftkit_tls::rustls::ServerConnection::new(s.server_config().unwrap()).unwrap();
                Box::new(raftkit_tls::rustls::StreamOwned::new(sc, tcp))
            }
        };
        // The reader drains while the sender fills: frames go directly,
        // through the queue and the writer thread, and directly again. It
        // starts late, so the socket fills whatever either side costs.
        let n = 1000u64;
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            assert_eq!(read_preface(&mut conn).unwrap(), "me:1");
            let _ = wait.recv();
            let mut r = BufReader::new(conn);
            let mut buf = Vec::new();
            for i in 0..n {
                let f = read_frame(&mut r, &mut buf).unwrap().unwrap();
                assert_eq!(f.msg.index, i, "frames out of order");
                assert_eq!(f.msg.entries[0].data.len(), (i as usize % 7 + 1) << 12);
            }
        });
        wait_until("the link is up", || link.lock().status == LinkStatus::Up);
        let mut queued_at_some_point = false;
        for i in 0..n {
            if i == 300 {
                let _ = go.send(());
            }
            link.send(&frame(i, (i as usize % 7 + 1) << 12)).unwrap();
            let s = link.lock();
            queued_at_some_point |= !s.queued.is_empty() || s.tls_pending;
        }
        reader.join().unwrap();
        assert!(queued_at_some_point, "the burst never filled the socket");
        link.close();
        assert_eq!(link.send(&frame(0, 1)), Err(Unreachable));
    }

    #[test]
    fn a_stream_opens_with_the_hello_and_states_a_change_before_the_next_frame() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hello = Arc::new(Hello::default());
        hello.set_cluster_id("g", 0);
        hello.set_cluster_id("h", 7);
        let link = Link::start("me:1", &addr, Arc::default(), hello.clone());
        let (conn, _) = listener.accept().unwrap();
        wait_until("the link is up", || link.lock().status == LinkStatus::Up);
        link.send(&frame(1, 10)).unwrap();
        hello.set_cluster_id("g", 9);
        link.send(&frame(2, 10)).unwrap();
        link.send(&frame(3, 10)).unwrap();
        let mut r = BufReader::new(conn);
        assert_eq!(read_preface(&mut r).unwrap(), "me:1");
        let mut buf = Vec::new();
        let mut next = || read_frame(&mut r, &mut buf).unwrap().unwrap();
        let f = next();
        assert_eq!(f.group, HELLO_GROUP);
        let stated = decode_hello(&f.msg).unwrap();
        assert_eq!((stated["g"].0, stated["h"].0), (0, 7));
        assert_eq!(next().msg.index, 1);
        let f = next();
        assert_eq!(f.group, HELLO_GROUP, "the change is stated before frame 2");
        let stated = decode_hello(&f.msg).unwrap();
        assert_eq!((stated["g"].0, stated["h"].0), (9, 7));
        assert_eq!(next().msg.index, 2);
        assert_eq!(next().msg.index, 3, "stated once, not before every frame");
        link.close();
    }

    #[test]
    fn a_frame_that_does_not_fit_the_queue_is_reported_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let link = Link::start("me:1", &addr, Arc::default(), Arc::default());
        // Accepted and never read: the socket buffers fill, then the queue.
        let (conn, _) = listener.accept().unwrap();
        wait_until("the link is up", || link.lock().status == LinkStatus::Up);
        let big = frame(0, 1 << 20);
        let mut accepted = 0usize;
        let refused = loop {
            match link.send(&big) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 1000, "1 GB accepted by a peer that never reads");
        };
        assert_eq!(refused, Unreachable);
        assert!(
            accepted * big.len() >= MAX_QUEUED,
            "refused after only {accepted} frames"
        );
        assert!(link.lock().queued.len() <= MAX_QUEUED);
        // Once the peer reads, the link takes frames again.
        // Every accepted frame arrives, and one sent after the queue drained.
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(conn);
            assert_eq!(read_preface(&mut r).unwrap(), "me:1");
            let mut buf = Vec::new();
            for _ in 0..=accepted {
                read_frame(&mut r, &mut buf).unwrap().unwrap();
            }
        });
        wait_until("the queue drains", || link.lock().queued.is_empty());
        link.send(&big).unwrap();
        reader.join().unwrap();
        link.close();
    }

    #[test]
    fn a_flood_of_incoming_streams_is_refused_past_the_limit_and_shutdown_ends_them() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = RaftStreamServer::new(NodeManager::new(), Arc::default(), Arc::default());
        let mut clients = Vec::new();
        for _ in 0..=MAX_INCOMING_STREAMS {
            clients.push(TcpStream::connect(addr).unwrap());
            let (conn, _) = listener.accept().unwrap();
            server.serve(conn);
        }
        let closed = |c: &mut TcpStream| {
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            matches!(c.read(&mut [0u8; 1]), Ok(0))
        };
        assert!(
            closed(clients.last_mut().unwrap()),
            "the stream past the limit is refused"
        );
        assert!(
            !closed(&mut clients[0]),
            "streams within the limit stay open"
        );
        server.shutdown();
        assert!(server.readers().is_empty());
        assert!(closed(&mut clients[0]), "shutdown closes every stream");
    }

    #[test]
    fn an_unused_link_closes_its_connection_and_stops() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let idle = Duration::from_millis(300);
        let link = Link::start_with_idle("me:1", &addr, Arc::default(), Arc::default(), idle, None);
        let (mut conn, _) = listener.accept().unwrap();
        assert_eq!(read_preface(&mut conn).unwrap(), "me:1");
        // Kept open while used.
        let used_until = std::time::Instant::now() + idle * 2;
        while std::time::Instant::now() < used_until {
            link.send(&frame(1, 10)).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!link.is_closed(), "a link in use stays open");
        wait_until("the unused link stops", || link.is_closed());
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(conn);
        let mut buf = Vec::new();
        while let Some(f) = read_frame(&mut r, &mut buf).unwrap() {
            assert_eq!(f.msg.index, 1);
        }
        assert_eq!(link.send(&frame(2, 10)), Err(Unreachable));
    }

    #[test]
    fn a_peer_that_is_down_is_unreachable_until_it_listens_again() {
        // Reserve a port, then free it so that connecting is refused.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let link = Link::start("me:1", &addr.to_string(), Arc::default(), Arc::default());
        wait_until("sends fail fast", || link.send(&frame(1, 10)).is_err());
        let listener = std::net::TcpListener::bind(addr).unwrap();
        wait_until("sends succeed after a reconnect", || {
            link.send(&frame(2, 10)).is_ok()
        });
        let (mut conn, _) = listener.accept().unwrap();
        assert_eq!(read_preface(&mut conn).unwrap(), "me:1");
        // The peer restarts: the old connection breaks, a new one is made.
        drop(conn);
        wait_until("a new connection after the peer closed the old one", || {
            let _ = link.send(&frame(3, 10));
            listener.set_nonblocking(true).unwrap();
            listener.accept().is_ok()
        });
        link.close();
    }
}
