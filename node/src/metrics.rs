//! Metrics in Prometheus text format (`/metrics`): counters and latency
//! histograms recorded by the engine, plus gauges read from each node's
//! status at scrape time. Small on purpose: atomics and a few maps.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::node::{NodeStatus, Role};

/// Latency buckets in seconds: 50 µs to 10 s.
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A cumulative histogram with fixed buckets.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Default::default(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
}

/// What one replica records.
#[derive(Default)]
pub struct NodeMetrics {
    pub proposals: AtomicU64,
    /// Failed proposals by error kind.
    pub proposal_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Time the state machine took per applied batch.
    pub apply_seconds: Histogram,
    /// Time per log fsync.
    pub fsync_seconds: Histogram,
    /// Leader: time from a proposal reaching the raft thread until it is
    /// committed (replicated to a majority, durable) and handed to apply.
    pub commit_seconds: Histogram,
    pub leader_changes: AtomicU64,
    /// Read requests answered under the leader's lease, and by a ReadIndex
    /// round (each round serves every read of its batch).
    pub lease_reads: AtomicU64,
    pub read_index_rounds: AtomicU64,
    /// Raft inputs run by the thread that delivered them (the loop was
    /// idle), and inputs queued for the raft thread.
    pub raft_inputs_inline: AtomicU64,
    pub raft_inputs_queued: AtomicU64,
    /// Apply inputs (a lone write's registration and commit) run on the
    /// raft loop's thread, and inputs queued for the apply thread.
    pub apply_inputs_inline: AtomicU64,
    pub apply_inputs_queued: AtomicU64,
    pub snapshots_saved: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshot_send_failures: AtomicU64,
    /// Raft messages and snapshot installs refused because the sender
    /// belongs to another cluster (`transport::cluster_check`).
    pub foreign_cluster_dropped: AtomicU64,
}

impl NodeMetrics {
    pub fn proposal_failed(&self, kind: &'static str) {
        *self.proposal_failures.lock().entry(kind).or_default() += 1;
    }
}

/// Bytes moved by the gRPC transport, per peer address.
#[derive(Default)]
pub struct TransportMetrics {
    pub sent: Mutex<BTreeMap<String, u64>>,
    pub received: Mutex<BTreeMap<String, u64>>,
}

impl TransportMetrics {
    pub fn add_sent(&self, peer: &str, n: usize) {
        add(&mut self.sent.lock(), peer, n);
    }

    pub fn add_received(&self, peer: &str, n: usize) {
        add(&mut self.received.lock(), peer, n);
    }
}

/// Adds `n` to `peer`'s count; allocates only for a new peer.
fn add(counts: &mut BTreeMap<String, u64>, peer: &str, n: usize) {
    match counts.get_mut(peer) {
        Some(c) => *c += n as u64,
        None => {
            counts.insert(peer.to_string(), n as u64);
        }
    }
}

/// A metric read from `T`: name, help text, getter.
type Metric<T> = (&'static str, &'static str, fn(&T) -> u64);

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every node's metrics and status gauges, and the transport's.
pub fn render(
    nodes: &[(NodeStatus, std::sync::Arc<NodeMetrics>)],
    transport: Option<&TransportMetrics>,
) -> String {
    let mut o = String::new();
    let gauges: [Metric<NodeStatus>; 8] = [
        ("raftkit_term", "Current raft term.", |s| s.term),
        (
            "raftkit_commit_index",
            "Highest committed log index.",
            |s| s.commit_index,
        ),
        (
            "raftkit_applied_index",
            "Highest log index applied to the state machine.",
            |s| s.applied_index,
        ),
        (
            "raftkit_last_log_index",
            "Last index in the local log.",
            |s| s.last_log_index,
        ),
        (
            "raftkit_first_log_index",
            "First index still in the local log.",
            |s| s.first_log_index,
        ),
        (
            "raftkit_snapshot_index",
            "Index of the newest snapshot.",
            |s| s.snapshot_index,
        ),
        (
            "raftkit_pending_proposals",
            "Proposals of this node waiting to be applied.",
            |s| s.pending_proposals as u64,
        ),
        (
            "raftkit_log_disk_bytes",
            "Bytes the local log occupies.",
            |s| s.log_disk_bytes,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (s, _) in nodes {
            let _ = writeln!(o, "{name}{{group=\"{}\"}} {}", escape(&s.group), get(s));
        }
    }
    let _ = writeln!(
        o,
        "# HELP raftkit_role 1 for the role this replica has.\n# TYPE raftkit_role gauge"
    );
    for (s, _) in nodes {
        for r in [
            Role::Follower,
            Role::PreCandidate,
            Role::Candidate,
            Role::Leader,
            Role::Uninitialized,
            Role::Error,
        ] {
            let _ = writeln!(
                o,
                "raftkit_role{{group=\"{}\",role=\"{}\"}} {}",
                escape(&s.group),
                r.as_str(),
                (s.role == r) as u8
            );
        }
    }
    let counters: [Metric<NodeMetrics>; 12] = [
        (
            "raftkit_proposals_total",
            "Tasks submitted to this node.",
            |m| m.proposals.load(Ordering::Relaxed),
        ),
        (
            "raftkit_leader_changes_total",
            "Times this replica saw the leader change.",
            |m| m.leader_changes.load(Ordering::Relaxed),
        ),
        (
            "raftkit_lease_reads_total",
            "Reads this leader answered under its lease (read mode lease).",
            |m| m.lease_reads.load(Ordering::Relaxed),
        ),
        (
            "raftkit_read_index_rounds_total",
            "ReadIndex rounds this replica issued (a heartbeat round on the leader).",
            |m| m.read_index_rounds.load(Ordering::Relaxed),
        ),
        (
            "raftkit_raft_inputs_inline_total",
            "Raft inputs (proposals, messages, completions) run by the thread that delivered them because the raft loop was idle.",
            |m| m.raft_inputs_inline.load(Ordering::Relaxed),
        ),
        (
            "raftkit_raft_inputs_queued_total",
            "Raft inputs queued for the raft thread (it was busy, or the input is not run inline).",
            |m| m.raft_inputs_queued.load(Ordering::Relaxed),
        ),
        (
            "raftkit_apply_inputs_inline_total",
            "Apply inputs (a lone write's registration and commit) run on the raft loop's thread because the apply stage was idle.",
            |m| m.apply_inputs_inline.load(Ordering::Relaxed),
        ),
        (
            "raftkit_apply_inputs_queued_total",
            "Apply inputs queued for the apply thread.",
            |m| m.apply_inputs_queued.load(Ordering::Relaxed),
        ),
        (
            "raftkit_snapshots_saved_total",
            "Snapshots this replica took.",
            |m| m.snapshots_saved.load(Ordering::Relaxed),
        ),
        (
            "raftkit_snapshots_sent_total",
            "Snapshots this leader delivered to followers.",
            |m| m.snapshots_sent.load(Ordering::Relaxed),
        ),
        (
            "raftkit_snapshot_send_failures_total",
            "Snapshot transfers that failed.",
            |m| m.snapshot_send_failures.load(Ordering::Relaxed),
        ),
        (
            "raftkit_foreign_cluster_dropped_total",
            "Raft messages and snapshot installs dropped because their sender belongs to another cluster.",
            |m| m.foreign_cluster_dropped.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (s, m) in nodes {
            let _ = writeln!(o, "{name}{{group=\"{}\"}} {}", escape(&s.group), get(m));
        }
    }
    let _ = writeln!(o, "# HELP raftkit_snapshots_received_total Snapshots received, verified and installed.\n# TYPE raftkit_snapshots_received_total counter");
    for (s, _) in nodes {
        let _ = writeln!(
            o,
            "raftkit_snapshots_received_total{{group=\"{}\"}} {}",
            escape(&s.group),
            s.snapshot.receive.installs
        );
    }
    let _ = writeln!(o, "# HELP raftkit_proposal_failures_total Failed tasks by reason.\n# TYPE raftkit_proposal_failures_total counter");
    for (s, m) in nodes {
        for (kind, n) in m.proposal_failures.lock().iter() {
            let _ = writeln!(
                o,
                "raftkit_proposal_failures_total{{group=\"{}\",reason=\"{kind}\"}} {n}",
                escape(&s.group)
            );
        }
    }
    let _ = writeln!(o, "# HELP raftkit_apply_seconds State machine time per applied batch.\n# TYPE raftkit_apply_seconds histogram");
    for (s, m) in nodes {
        m.apply_seconds.render(
            &mut o,
            "raftkit_apply_seconds",
            &format!("group=\"{}\"", escape(&s.group)),
        );
    }
    let _ = writeln!(o, "# HELP raftkit_fsync_seconds Time per raft log fsync.\n# TYPE raftkit_fsync_seconds histogram");
    for (s, m) in nodes {
        m.fsync_seconds.render(
            &mut o,
            "raftkit_fsync_seconds",
            &format!("group=\"{}\"", escape(&s.group)),
        );
    }
    let _ = writeln!(o, "# HELP raftkit_commit_seconds Leader: time from a proposal reaching the raft thread until it commits.\n# TYPE raftkit_commit_seconds histogram");
    for (s, m) in nodes {
        m.commit_seconds.render(
            &mut o,
            "raftkit_commit_seconds",
            &format!("group=\"{}\"", escape(&s.group)),
        );
    }
    let _ = writeln!(o, "# HELP raftkit_peer_match_index Replication progress of each member, as the leader sees it.\n# TYPE raftkit_peer_match_index gauge");
    for (s, _) in nodes {
        for p in &s.peers {
            let _ = writeln!(
                o,
                "raftkit_peer_match_index{{group=\"{}\",peer=\"{}\"}} {}",
                escape(&s.group),
                escape(&p.peer.addr),
                p.match_index
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP raftkit_idle_poll_spin_seconds_total CPU time the idle pollers spent spinning (--idle-poll-us).\n# TYPE raftkit_idle_poll_spin_seconds_total counter\nraftkit_idle_poll_spin_seconds_total {}",
        crate::idle_poll::spun_seconds()
    );
    let _ = writeln!(
        o,
        "# HELP raftkit_idle_poll_window_us The idle polling window in force (µs; 0: off), after `auto` was resolved.\n# TYPE raftkit_idle_poll_window_us gauge\nraftkit_idle_poll_window_us {}",
        crate::idle_poll::window_us()
    );
    let _ = writeln!(
        o,
        "# HELP raftkit_idle_poll_throttled Whether the idle pollers are over their CPU budget now (1) and do not spin.\n# TYPE raftkit_idle_poll_throttled gauge\nraftkit_idle_poll_throttled {}",
        u8::from(crate::idle_poll::throttled())
    );
    if let Some(t) = transport {
        let _ = writeln!(o, "# HELP raftkit_transport_bytes_sent_total Raft message bytes sent, per peer.\n# TYPE raftkit_transport_bytes_sent_total counter");
        for (peer, n) in t.sent.lock().iter() {
            let _ = writeln!(
                o,
                "raftkit_transport_bytes_sent_total{{peer=\"{}\"}} {n}",
                escape(peer)
            );
        }
        let _ = writeln!(o, "# HELP raftkit_transport_bytes_received_total Raft message bytes received, per peer.\n# TYPE raftkit_transport_bytes_received_total counter");
        for (peer, n) in t.received.lock().iter() {
            let _ = writeln!(
                o,
                "raftkit_transport_bytes_received_total{{peer=\"{}\"}} {n}",
                escape(peer)
            );
        }
    }
    let _ = writeln!(o, "# HELP raftkit_tls_refused_total Connections and calls refused by TLS, by reason.\n# TYPE raftkit_tls_refused_total counter");
    for (reason, n) in TLS_REFUSED.counts() {
        let _ = writeln!(o, "raftkit_tls_refused_total{{reason=\"{reason}\"}} {n}");
    }
    o
}

/// Why TLS refused a connection or a call (see `port_tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRefusal {
    /// The handshake failed: no certificate, another CA, expired, ...
    Handshake,
    /// A plain connection to a TLS port (other than an allowed probe).
    Plain,
    /// The certificate lacks the role the call needs.
    Role,
    /// Raft traffic from a certificate that does not name its sender.
    NotMember,
}

impl TlsRefusal {
    const ALL: [TlsRefusal; 4] = [
        TlsRefusal::Handshake,
        TlsRefusal::Plain,
        TlsRefusal::Role,
        TlsRefusal::NotMember,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsRefusal::Handshake => "handshake",
            TlsRefusal::Plain => "plain",
            TlsRefusal::Role => "role",
            TlsRefusal::NotMember => "not_member",
        }
    }
}

/// Refusals of this process, by reason.
#[derive(Default)]
pub struct TlsRefusals([AtomicU64; 4]);

impl TlsRefusals {
    pub fn count(&self, why: TlsRefusal) {
        self.0[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        TlsRefusal::ALL
            .iter()
            .map(|r| (r.as_str(), self.0[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// One per process: there is one port.
pub static TLS_REFUSED: TlsRefusals = TlsRefusals([
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(80));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        h.render(&mut out, "x", "g=\"a\"");
        assert!(out.contains("x_bucket{g=\"a\",le=\"0.0001\"} 1"), "{out}");
        assert!(out.contains("x_bucket{g=\"a\",le=\"0.005\"} 2"), "{out}");
        assert!(out.contains("x_bucket{g=\"a\",le=\"10\"} 2"), "{out}");
        assert!(out.contains("x_bucket{g=\"a\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count{g=\"a\"} 3"), "{out}");
    }
}
