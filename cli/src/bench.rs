//! `raftkit bench`: a load generator for RaftKit and etcd.
//!
//! N clients run either closed loop (each sends its next operation when the
//! previous one answered) or open loop at a target rate. Open loop measures
//! each latency from the moment the operation was *due* when the client was
//! still waiting for its previous answer then, not from when it was sent, so
//! a stall shows up as the latency clients would really see
//! (coordinated-omission correction). A client that was free when its
//! operation fell due is charged from the send, up to 2 ms after the due
//! time: that gap is the load generator's own timer (tokio's wakes up to
//! 1 ms late), not the system's. Latencies go into an HDR histogram
//! (µs resolution); the summary gives ops/s and p50/p90/p99/p99.9/max.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

// tokio's clock (the std one outside tests) so tests can run on paused time.
use tokio::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use raftkit_client::ClusterClient;
use raftkit_proto::pb::ReadConsistency;

/// What each operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchOp {
    /// KV put (etcd Put).
    Put,
    /// Linearizable get (etcd linearizable Range).
    Get,
    /// Get answered by the member asked (RaftKit follower read; etcd serializable Range).
    GetFollower,
    /// Counter fetch-add (RaftKit only).
    FetchAdd,
}

/// The system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchSystem {
    Raftkit,
    Etcd,
}

/// What one run is asked to do.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    pub system: BenchSystem,
    pub op: BenchOp,
    pub clients: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Total operations per second across clients; 0 for closed loop.
    pub rate: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub key_space: u64,
    /// Connections the clients share: client i uses connection i mod `conns`.
    pub conns: usize,
    /// RaftKit: one unary call per operation instead of the mux stream.
    pub unary: bool,
    /// RaftKit: every client writes through one session.
    pub shared_session: bool,
    /// RaftKit: mutual TLS with this certificate.
    #[serde(skip)]
    pub tls: Option<std::sync::Arc<raftkit_tls::Tls>>,
}

/// The result of a run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BenchSummary {
    pub system: BenchSystem,
    pub op: BenchOp,
    pub clients: usize,
    /// Target rate (0: closed loop).
    pub rate: u64,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Latency recording shared by the clients of a run.
pub struct Recorder {
    hist: Mutex<Histogram<u64>>,
    errors: std::sync::atomic::AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        // 1 µs to 10 min at 3 significant digits: creation cannot fail for
        // these fixed, valid bounds.
        let hist = Histogram::new_with_bounds(1, 600_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
        Recorder {
            hist: Mutex::new(hist),
            errors: Default::default(),
            first_error: Mutex::new(None),
        }
    }

    /// Records one successful operation's latency.
    pub fn record(&self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
        let _ = self.hist.lock().record(us);
    }

    pub fn error(&self, e: String) {
        self.errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.first_error.lock().get_or_insert(e);
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().clone()
    }

    /// Summarizes what was recorded over `elapsed`.
    pub fn summary(&self, cfg: &BenchConfig, elapsed: Duration) -> BenchSummary {
        let h = self.hist.lock();
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let ops = h.len();
        let seconds = elapsed.as_secs_f64();
        BenchSummary {
            system: cfg.system,
            op: cfg.op,
            clients: cfg.clients,
            rate: cfg.rate,
            ops,
            errors: self.errors.load(std::sync::atomic::Ordering::Relaxed),
            seconds,
            ops_per_sec: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// One client's operation: client index and operation number in, outcome out.
pub trait Op: Send + Sync + 'static {
    fn call(&self, client: usize, n: u64) -> impl Future<Output = Result<(), String>> + Send;
}

/// Runs `clients` clients against `op` for `warmup + duration`; only the
/// measured window is recorded.
pub async fn run<O: Op>(cfg: &BenchConfig, op: Arc<O>) -> (BenchSummary, Option<String>) {
    let rec = Arc::new(Recorder::new());
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    // Open loop: each client's operations are due at fixed intervals.
    let interval =
        (cfg.rate > 0).then(|| Duration::from_secs_f64(cfg.clients as f64 / cfg.rate as f64));
    let mut handles = Vec::with_capacity(cfg.clients);
    for c in 0..cfg.clients {
        let (op, rec) = (op.clone(), rec.clone());
        // Spread open-loop clients over one interval.
        let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / cfg.clients as f64));
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut due = start + offset;
            let mut prev_done = None;
            loop {
                if interval.is_some() {
                    tokio::time::sleep_until(due).await;
                }
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let from = if interval.is_some() {
                    latency_start(due, prev_done, sent)
                } else {
                    sent
                };
                let result = op.call(c, n).await;
                let done = Instant::now();
                prev_done = Some(done);
                if from >= measure_from {
                    match result {
                        Ok(()) => rec.record(done - from),
                        Err(e) => rec.error(e),
                    }
                }
                n += 1;
                if let Some(i) = interval {
                    due += i;
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let elapsed = end
        .saturating_duration_since(measure_from)
        .min(Instant::now().saturating_duration_since(measure_from));
    let first_error = rec.first_error();
    (rec.summary(cfg, elapsed), first_error)
}

/// How late tokio's timer may wake a client that was free at its due time
/// (its wheel has 1 ms slots), with room for a wake-up.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Where an open-loop operation's latency starts: at its due time if the
/// client was still waiting for its previous answer then (the system kept
/// it waiting: coordinated-omission correction); else at the send, up to
/// [`TIMER_SLACK`] after the due time (that much is the generator's own
/// timer; a send later than that, say on a machine the system under test
/// keeps busy, is charged).
fn latency_start(due: Instant, prev_done: Option<Instant>, sent: Instant) -> Instant {
    match prev_done {
        Some(done) if done > due => due,
        _ => sent.clamp(due, due + TIMER_SLACK),
    }
}

/// A fixed-size key in the key space, derived from the operation number.
pub fn key(cfg: &BenchConfig, client: usize, n: u64) -> Bytes {
    let k = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ client as u64) % cfg.key_space.max(1);
    let mut s = format!("k{k:0width$}", width = cfg.key_size.saturating_sub(1));
    s.truncate(cfg.key_size.max(1));
    Bytes::from(s)
}

/// The RaftKit side: one client (route table) and one session per bench client.
pub struct RaftKitOp {
    cfg: BenchConfig,
    conns: Vec<ClusterClient>,
    /// One session per client (in the open loop a client can have several
    /// writes in flight, as a shared session allows).
    sessions: Vec<raftkit_client::Session>,
    value: Bytes,
}

impl RaftKitOp {
    pub fn new(cfg: &BenchConfig, endpoints: &[String], group: &str) -> Result<Self, String> {
        let mut conns = Vec::with_capacity(cfg.conns);
        for i in 0..cfg.conns.max(1) {
            // Rotate the member list so follower reads spread over members.
            let mut eps = endpoints.to_vec();
            eps.rotate_left(i % endpoints.len().max(1));
            let mut c = ClusterClient::new(eps, group, Duration::from_secs(10))
                .map_err(|e| e.to_string())?
                .with_unary_calls(cfg.unary);
            if let Some(tls) = &cfg.tls {
                c = c.with_tls(tls.clone());
            }
            conns.push(c);
        }
        let sessions = (0..if cfg.shared_session { 1 } else { cfg.clients })
            .map(|i| conns[i % conns.len()].session())
            .collect();
        Ok(RaftKitOp {
            cfg: cfg.clone(),
            conns,
            sessions,
            value: Bytes::from(vec![b'v'; cfg.value_size]),
        })
    }
}

impl Op for RaftKitOp {
    async fn call(&self, client: usize, n: u64) -> Result<(), String> {
        let (c, session) = (
            &self.conns[client % self.conns.len()],
            &self.sessions[client % self.sessions.len()],
        );
        let k = key(&self.cfg, client, n);
        let r = match self.cfg.op {
            BenchOp::Put => c.put_in(session, k, self.value.clone()).await.map(|_| ()),
            BenchOp::FetchAdd => c.fetch_add_in(session, 1).await.map(|_| ()),
            BenchOp::Get => c
                .get_with(k, ReadConsistency::Linearizable)
                .await
                .map(|_| ()),
            BenchOp::GetFollower => c.get_with(k, ReadConsistency::Follower).await.map(|_| ()),
        };
        r.map_err(|e| e.to_string())
    }
}

/// The etcd side: etcd's v3 KV API over gRPC, one connection per client
/// spread over the endpoints (etcd forwards writes to its leader itself).
pub struct EtcdOp {
    cfg: BenchConfig,
    clients: Vec<crate::etcdpb::kv_client::KvClient<Channel>>,
    value: Bytes,
}

impl EtcdOp {
    pub async fn new(cfg: &BenchConfig, endpoints: &[String]) -> Result<Self, String> {
        if cfg.op == BenchOp::FetchAdd {
            return Err("etcd has no fetch-add; use put, get or get-follower".into());
        }
        let mut clients = Vec::with_capacity(cfg.conns);
        for i in 0..cfg.conns.max(1) {
            let ep = &endpoints[i % endpoints.len()];
            let ch = Endpoint::from_shared(format!("http://{ep}"))
                .map_err(|e| e.to_string())?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| format!("connect to etcd at {ep}: {e}"))?;
            clients.push(crate::etcdpb::kv_client::KvClient::new(ch));
        }
        Ok(EtcdOp {
            cfg: cfg.clone(),
            clients,
            value: Bytes::from(vec![b'v'; cfg.value_size]),
        })
    }
}

impl Op for EtcdOp {
    async fn call(&self, client: usize, n: u64) -> Result<(), String> {
        let mut c = self.clients[client % self.clients.len()].clone();
        let k = key(&self.cfg, client, n);
        let r = match self.cfg.op {
            BenchOp::Put => c
                .put(crate::etcdpb::PutRequest {
                    key: k,
                    value: self.value.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            BenchOp::Get | BenchOp::GetFollower => c
                .range(crate::etcdpb::RangeRequest {
                    key: k,
                    serializable: self.cfg.op == BenchOp::GetFollower,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            BenchOp::FetchAdd => return Err("etcd has no fetch-add".into()),
        };
        r.map_err(|s| format!("etcd: {}", s.message()))
    }
}

/// Human-readable one-line summary.
pub fn render_text(s: &BenchSummary) -> String {
    format!(
        "{:?} {:?} clients={} {}ops={} errors={} ops/s={:.0} p50={:.3}ms p90={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms",
        s.system,
        s.op,
        s.clients,
        if s.rate > 0 { format!("rate={} ", s.rate) } else { String::new() },
        s.ops,
        s.errors,
        s.ops_per_sec,
        s.p50_ms,
        s.p90_ms,
        s.p99_ms,
        s.p999_ms,
        s.max_ms
    )
}

/// One replicated write's latency floor on this machine (see
/// `raftkit bench-floor`).
#[derive(Clone, Debug, Serialize)]
pub struct Floor {
    pub fsync_p50_ms: f64,
    /// Round trip between two threads placed by the scheduler (on this
    /// development VM: on different CPUs, where each wake-up is costly).
    pub rtt_p50_ms: f64,
    /// `fsync_p50_ms + 2 * rtt_p50_ms`.
    pub floor_ms: f64,
    /// The same round trip with both threads pinned to one CPU (`None` where
    /// pinning is refused), and the floor computed with it.
    pub rtt_same_cpu_p50_ms: Option<f64>,
    pub floor_same_cpu_ms: Option<f64>,
    /// Median latency of the same write done the simplest way possible
    /// (see [`minimal_replication`]): what any engine can reach here at best.
    pub minimal_replicated_p50_ms: f64,
}

/// Size of each record [`minimal_replication`] replicates.
const MINIMAL_RECORD: usize = 300;

/// One replicated write with nothing but the unavoidable work, `samples`
/// times: three "nodes" (one thread each, like three single-threaded
/// processes) on loopback TCP. A client sends a 300-byte record to the
/// leader, which forwards it to both followers, appends and fdatasyncs it
/// itself, and answers once it and one follower have it on disk; each
/// follower appends, fdatasyncs and acknowledges. No consensus logic, no
/// encoding, no hand-offs between threads. Returns the client's latencies
/// and the bytes each node's file held at the end (leader, followers).
pub fn minimal_replication(
    dir: &std::path::Path,
    samples: usize,
) -> std::io::Result<(Vec<Duration>, [u64; 3])> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let paths: Vec<_> = (0..3)
        .map(|i| dir.join(format!(".raftkit-floor-{}-node{i}", std::process::id())))
        .collect();
    let open = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(p)
    };
    let result = (|| {
        let mut followers = Vec::new();
        let mut follower_addrs = Vec::new();
        for path in &paths[1..] {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            follower_addrs.push(listener.local_addr()?);
            let mut file = open(path)?;
            followers.push(std::thread::spawn(move || -> std::io::Result<()> {
                let (mut s, _) = listener.accept()?;
                s.set_nodelay(true)?;
                let mut rec = [0u8; MINIMAL_RECORD];
                while s.read_exact(&mut rec).is_ok() {
                    file.write_all(&rec)?;
                    file.sync_data()?;
                    s.write_all(&rec[..8])?;
                }
                Ok(())
            }));
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let leader_addr = listener.local_addr()?;
        let mut file = open(&paths[0])?;
        let leader = std::thread::spawn(move || -> std::io::Result<()> {
            let mut peers = Vec::new();
            for a in follower_addrs {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                peers.push(s);
            }
            let (mut client, _) = listener.accept()?;
            client.set_nodelay(true)?;
            // Records each follower has not acknowledged yet.
            let mut unacked = [0usize; 2];
            let mut rec = [0u8; MINIMAL_RECORD];
            while client.read_exact(&mut rec).is_ok() {
                for (p, n) in peers.iter_mut().zip(unacked.iter_mut()) {
                    p.write_all(&rec)?;
                    *n += 1;
                }
                file.write_all(&rec)?;
                file.sync_data()?;
                // A majority (this node and one follower) has it.
                while unacked.iter().all(|n| *n > 0) {
                    let mut fds = [
                        rustix::event::PollFd::new(&peers[0], rustix::event::PollFlags::IN),
                        rustix::event::PollFd::new(&peers[1], rustix::event::PollFlags::IN),
                    ];
                    rustix::event::poll(&mut fds, None)?;
                    let ready = [!fds[0].revents().is_empty(), !fds[1].revents().is_empty()];
                    for i in 0..2 {
                        if ready[i] {
                            let mut ack = [0u8; 8];
                            peers[i].read_exact(&mut ack)?;
                            unacked[i] -= 1;
                        }
                    }
                }
                client.write_all(&rec[..8])?;
            }
            // Collect the slower follower's last acknowledgements before
            // hanging up, so that no follower writes to a closed socket.
            for (p, n) in peers.iter_mut().zip(unacked) {
                for _ in 0..n {
                    let mut ack = [0u8; 8];
                    p.read_exact(&mut ack)?;
                }
            }
            Ok(())
        });
        let mut c = TcpStream::connect(leader_addr)?;
        c.set_nodelay(true)?;
        let mut rec = [b'm'; MINIMAL_RECORD];
        let mut out = Vec::with_capacity(samples);
        for _ in 0..samples {
            raftkit_idle_poll::touch();
            let t = std::time::Instant::now();
            c.write_all(&rec)?;
            c.read_exact(&mut rec[..8])?;
            out.push(t.elapsed());
        }
        drop(c);
        let joined = |h: std::thread::JoinHandle<std::io::Result<()>>| {
            h.join()
                .map_err(|_| std::io::Error::other("a node thread panicked"))?
        };
        // The leader closes its follower connections when it returns.
        joined(leader)?;
        for f in followers {
            joined(f)?;
        }
        let mut sizes = [0u64; 3];
        for (s, p) in sizes.iter_mut().zip(&paths) {
            *s = std::fs::metadata(p)?.len();
        }
        Ok((out, sizes))
    })();
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// Median round trip of 32 bytes over loopback TCP (TCP_NODELAY) between
/// two threads, `samples` times; with `pin`, both threads run on that CPU.
fn loopback_rtts(samples: usize, pin: Option<usize>) -> std::io::Result<Vec<Duration>> {
    use std::io::{Read, Write};
    let pin_here = move || -> std::io::Result<()> {
        if let Some(cpu) = pin {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            rustix::thread::sched_setaffinity(None, &set)?;
        }
        Ok(())
    };
    // A thread of its own, so pinning never leaks into a runtime's threads.
    std::thread::spawn(move || -> std::io::Result<Vec<Duration>> {
        pin_here()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            pin_here()?;
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; 32];
            while s.read_exact(&mut buf).is_ok() {
                s.write_all(&buf)?;
            }
            Ok(())
        });
        let mut c = std::net::TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        let mut buf = [b'p'; 32];
        let mut out = Vec::with_capacity(samples);
        for _ in 0..samples {
            raftkit_idle_poll::touch();
            let t = std::time::Instant::now();
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            out.push(t.elapsed());
        }
        drop(c);
        echo.join()
            .map_err(|_| std::io::Error::other("echo thread panicked"))??;
        Ok(out)
    })
    .join()
    .map_err(|_| std::io::Error::other("round-trip thread panicked"))?
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Measures the median `fdatasync` of a 300-byte append in `dir` and the
/// median round trip of 32 bytes over a loopback TCP connection
/// (TCP_NODELAY), `samples` times each. Blocking.
pub fn measure_floor(dir: &std::path::Path, samples: usize) -> Result<Floor, String> {
    use std::io::Write;
    let path = dir.join(format!(".raftkit-floor-{}", std::process::id()));
    let fsyncs = (|| -> std::io::Result<Vec<Duration>> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let record = [b'r'; 300];
        let mut out = Vec::with_capacity(samples);
        for _ in 0..samples {
            raftkit_idle_poll::touch();
            f.write_all(&record)?;
            let t = std::time::Instant::now();
            f.sync_data()?;
            out.push(t.elapsed());
        }
        Ok(out)
    })();
    let _ = std::fs::remove_file(&path);
    let fsyncs = fsyncs.map_err(|e| format!("fsync in {}: {e}", dir.display()))?;
    let rtts = loopback_rtts(samples, None).map_err(|e| format!("loopback round trip: {e}"))?;
    let (fsync_p50_ms, rtt_p50_ms) = (median_ms(fsyncs), median_ms(rtts));
    let rtt_same_cpu_p50_ms = loopback_rtts(samples, Some(rustix::thread::sched_getcpu()))
        .ok()
        .map(median_ms);
    let (minimal, _) = minimal_replication(dir, samples)
        .map_err(|e| format!("minimal replicated write in {}: {e}", dir.display()))?;
    Ok(Floor {
        fsync_p50_ms,
        rtt_p50_ms,
        floor_ms: fsync_p50_ms + 2.0 * rtt_p50_ms,
        rtt_same_cpu_p50_ms,
        floor_same_cpu_ms: rtt_same_cpu_p50_ms.map(|r| fsync_p50_ms + 2.0 * r),
        minimal_replicated_p50_ms: median_ms(minimal),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(clients: usize, rate: u64, secs: f64) -> BenchConfig {
        BenchConfig {
            system: BenchSystem::Raftkit,
            op: BenchOp::Put,
            clients,
            duration: Duration::from_secs_f64(secs),
            warmup: Duration::ZERO,
            rate,
            key_size: 16,
            value_size: 256,
            key_space: 1000,
            conns: clients,
            unary: false,
            shared_session: false,
            tls: None,
        }
    }

    #[test]
    fn summary_arithmetic_on_known_latencies() {
        let rec = Recorder::new();
        // 1000 operations: 1..=1000 ms, each once.
        for ms in 1..=1000u64 {
            rec.record(Duration::from_millis(ms));
        }
        rec.error("boom".into());
        let s = rec.summary(&cfg(4, 0, 2.0), Duration::from_secs(2));
        assert_eq!(s.ops, 1000);
        assert_eq!(s.errors, 1);
        assert!((s.ops_per_sec - 500.0).abs() < 1e-9, "{}", s.ops_per_sec);
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.002 + 0.001;
        assert!(near(s.p50_ms, 500.0), "p50 {}", s.p50_ms);
        assert!(near(s.p90_ms, 900.0), "p90 {}", s.p90_ms);
        assert!(near(s.p99_ms, 990.0), "p99 {}", s.p99_ms);
        assert!(near(s.p999_ms, 999.0), "p99.9 {}", s.p999_ms);
        assert!(near(s.max_ms, 1000.0), "max {}", s.max_ms);
        assert_eq!(rec.first_error().as_deref(), Some("boom"));
    }

    struct Sleepy(Duration);
    impl Op for Sleepy {
        async fn call(&self, _c: usize, _n: u64) -> Result<(), String> {
            tokio::time::sleep(self.0).await;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_counts_and_latency_on_a_synthetic_server() {
        // 4 clients, each operation takes 10 ms, for 1 s: 400 operations.
        let (s, err) = run(&cfg(4, 0, 1.0), Arc::new(Sleepy(Duration::from_millis(10)))).await;
        assert!(err.is_none());
        assert!((396..=404).contains(&s.ops), "ops {}", s.ops);
        assert!(
            (s.ops_per_sec - 400.0).abs() < 8.0,
            "ops/s {}",
            s.ops_per_sec
        );
        assert!((s.p50_ms - 10.0).abs() < 0.1, "p50 {}", s.p50_ms);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_charges_queueing_to_latency() {
        // One client asked for 200 ops/s (one every 5 ms) against a server
        // that takes 10 ms: it falls behind, and the latency measured from
        // each operation's due time grows, instead of staying at 10 ms as a
        // closed-loop measurement would report.
        let (s, _) = run(
            &cfg(1, 200, 1.0),
            Arc::new(Sleepy(Duration::from_millis(10))),
        )
        .await;
        assert!((95..=105).contains(&s.ops), "ops {}", s.ops);
        assert!(
            s.p50_ms > 100.0,
            "p50 {} ms does not include the queueing delay",
            s.p50_ms
        );
        assert!(s.max_ms > 400.0, "max {} ms", s.max_ms);
        // Below capacity the same server shows its service time.
        let (s, _) = run(
            &cfg(1, 50, 1.0),
            Arc::new(Sleepy(Duration::from_millis(10))),
        )
        .await;
        assert!((s.p99_ms - 10.0).abs() < 0.2, "p99 {}", s.p99_ms);
    }

    #[test]
    fn open_loop_charges_the_system_not_the_generators_timer() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Free at the due time, sent 1 ms late by the timer: from the send.
        assert_eq!(latency_start(t0, Some(t0 - ms(3)), t0 + ms(1)), t0 + ms(1));
        assert_eq!(latency_start(t0, None, t0 + ms(1)), t0 + ms(1));
        // Sent far later than a timer would: charged from due + slack.
        assert_eq!(latency_start(t0, None, t0 + ms(50)), t0 + TIMER_SLACK);
        // Still waiting for the previous answer at the due time: from the
        // due time, however late it was sent.
        assert_eq!(latency_start(t0, Some(t0 + ms(4)), t0 + ms(4)), t0);
    }

    #[test]
    fn keys_have_the_requested_size_and_stay_in_the_key_space() {
        let c = cfg(2, 0, 1.0);
        for n in 0..1000 {
            let k = key(&c, 1, n);
            assert_eq!(k.len(), 16);
            let v: u64 = std::str::from_utf8(&k[1..]).unwrap().parse().unwrap();
            assert!(v < 1000);
        }
    }

    #[test]
    fn the_minimal_replicated_write_reaches_every_nodes_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (lat, sizes) = minimal_replication(dir.path(), 50).unwrap();
        assert_eq!(lat.len(), 50);
        assert!(lat.iter().all(|d| *d > Duration::ZERO));
        // The leader and both followers each appended all 50 records (a
        // follower reads what was sent before the leader hung up).
        assert_eq!(sizes, [50 * MINIMAL_RECORD as u64; 3]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_floor_is_one_fsync_plus_two_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let f = measure_floor(dir.path(), 20).unwrap();
        assert!(f.fsync_p50_ms > 0.0 && f.rtt_p50_ms > 0.0, "{f:?}");
        assert!((f.floor_ms - (f.fsync_p50_ms + 2.0 * f.rtt_p50_ms)).abs() < 1e-9);
        let same = f.rtt_same_cpu_p50_ms.expect("pinning works here");
        assert!(same > 0.0, "{f:?}");
        let floor_same = f.floor_same_cpu_ms.unwrap();
        assert!((floor_same - (f.fsync_p50_ms + 2.0 * same)).abs() < 1e-9);
        assert!(f.minimal_replicated_p50_ms > 0.0, "{f:?}");
        // Its scratch files are gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let e = measure_floor(&dir.path().join("missing"), 5).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        assert_eq!(
            median_ms(vec![
                Duration::from_millis(3),
                Duration::from_millis(1),
                Duration::from_millis(2)
            ]),
            2.0
        );
    }
}
