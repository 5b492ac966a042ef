//! Streaming a snapshot to a follower that needs entries the leader has
//! compacted away (the leader side), and the bookkeeping both sides show in
//! status.
//!
//! raft-rs decides *when* a follower needs a snapshot and emits a small
//! `MsgSnapshot` (its data is our [`SnapshotMeta`]: file list and checksums).
//! The raft thread does not send that message; it starts a transfer:
//!
//! ```text
//!  leader                                   follower
//!  begin(meta)  ───────────────────────────▶ open staging area, reply bytes held per file
//!  chunk(file, offset, data, crc32c) ──────▶ check crc, append at offset (resume point)
//!  ...                                       (bounded memory: one chunk at a time)
//!  commit(MsgSnapshot) ────────────────────▶ verify every file, publish, step MsgSnapshot
//!  report_snapshot(Finish | Failure)
//! ```
//!
//! A broken attempt (connection lost, chunk rejected) is retried from what
//! the follower holds; after [`MAX_ATTEMPTS`] the leader reports failure and
//! raft-rs asks again later. Only a fully verified snapshot is ever handed to
//! raft-rs and the state machine.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use raft::eraftpb::Message;
use serde::Serialize;

use crate::error::PeerId;
use crate::storage::snapshot::SnapshotSource;
use crate::storage::SnapshotMeta;

/// Attempts per transfer before the leader reports failure to raft-rs.
pub const MAX_ATTEMPTS: u32 = 5;

/// A token bucket limiting snapshot bytes per second, shared by every
/// transfer a leader runs. A rate of 0 means unlimited.
pub struct Throttle {
    rate: AtomicU64,
    state: Mutex<(Instant, f64)>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Self {
        Throttle {
            rate: AtomicU64::new(bytes_per_sec),
            state: Mutex::new((Instant::now(), bytes_per_sec as f64)),
        }
    }

    /// Changes the rate (0: unlimited) for transfers already running too.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Waits until `n` more bytes may be sent.
    pub async fn acquire(&self, n: usize) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock();
            let now = Instant::now();
            let refill = now.duration_since(s.0).as_secs_f64() * rate as f64;
            s.1 = (s.1 + refill).min(rate as f64);
            s.0 = now;
            s.1 -= n as f64;
            if s.1 < 0.0 {
                Duration::from_secs_f64(-s.1 / rate as f64)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// One chunk of one snapshot file.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub index: u64,
    pub term: u64,
    pub file: String,
    pub offset: u64,
    pub data: Bytes,
    pub crc32c: u32,
}

/// The receiving side of a transfer, as the sender sees it: gRPC to another
/// process (`transport::net`), or direct calls of the receiving
/// `Node::install_begin` / `install_chunk` / `install_commit` (the test
/// network in `raftkit-testkit`, which injects its transfer faults here).
/// A [`crate::transport::Transport`] implements `install_snapshot` by
/// running [`send_snapshot`] over one.
pub trait InstallClient: Send {
    /// Announces the snapshot; returns the bytes already held per file.
    fn begin(
        &mut self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<Vec<(String, u64)>, String>> + Send;
    /// Sends one chunk; returns the bytes now held of that file.
    fn chunk(&mut self, chunk: Chunk) -> impl Future<Output = Result<u64, String>> + Send;
    /// Asks the receiver to verify, publish and step the snapshot message.
    fn commit(
        &mut self,
        index: u64,
        term: u64,
        msg: &Message,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Progress of one transfer from this leader, shown in status.
pub struct InstallProgress {
    pub peer: PeerId,
    pub index: u64,
    pub bytes_total: u64,
    pub bytes_sent: AtomicU64,
    pub attempts: AtomicU32,
    pub started_unix_ms: u64,
}

/// A serializable view of [`InstallProgress`].
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PeerInstall {
    pub peer: PeerId,
    pub index: u64,
    pub bytes_sent: u64,
    pub bytes_total: u64,
    pub attempts: u32,
    pub started_unix_ms: u64,
}

impl InstallProgress {
    pub fn view(&self) -> PeerInstall {
        PeerInstall {
            peer: self.peer.clone(),
            index: self.index,
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_total: self.bytes_total,
            attempts: self.attempts.load(Ordering::Relaxed),
            started_unix_ms: self.started_unix_ms,
        }
    }
}

/// Everything a transport needs to run one transfer.
pub struct SnapshotJob {
    pub group: String,
    pub to: PeerId,
    /// The `MsgSnapshot` raft-rs produced; stepped on the receiver at commit.
    pub msg: Message,
    pub source: Arc<SnapshotSource>,
    pub chunk_bytes: usize,
    pub throttle: Arc<Throttle>,
    pub progress: Arc<InstallProgress>,
}

/// Runs a transfer to completion or failure, resuming after broken attempts.
pub async fn send_snapshot<C: InstallClient>(
    client: &mut C,
    job: &SnapshotJob,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        job.progress.attempts.store(attempt, Ordering::Relaxed);
        match send_once(client, job).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::info!(group = %job.group, peer = %job.to, attempt, error = %e, "snapshot transfer attempt failed");
                last = e;
            }
        }
        tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(5))).await;
    }
    Err(format!(
        "snapshot transfer to {} failed after {MAX_ATTEMPTS} attempts: {last}",
        job.to
    ))
}

async fn send_once<C: InstallClient>(client: &mut C, job: &SnapshotJob) -> Result<(), String> {
    let meta = job.source.meta();
    let held = client.begin(meta).await?;
    for (i, f) in meta.files.iter().enumerate() {
        let mut offset = held
            .iter()
            .find(|(n, _)| *n == f.name)
            .map_or(0, |(_, h)| *h)
            .min(f.size);
        while offset < f.size {
            let data = job
                .source
                .read_chunk(i, offset, job.chunk_bytes.max(1))
                .map_err(|e| e.to_string())?;
            if data.is_empty() {
                return Err(format!(
                    "snapshot file {:?} is shorter than its recorded size",
                    f.name
                ));
            }
            job.throttle.acquire(data.len()).await;
            let len = data.len() as u64;
            let crc32c = crc32c::crc32c(&data);
            let chunk = Chunk {
                index: meta.index,
                term: meta.term,
                file: f.name.clone(),
                offset,
                data,
                crc32c,
            };
            let now_held = client.chunk(chunk).await?;
            if now_held != offset + len {
                return Err(format!(
                    "receiver holds {now_held} bytes of {:?}, expected {}",
                    f.name,
                    offset + len
                ));
            }
            job.progress.bytes_sent.fetch_add(len, Ordering::Relaxed);
            offset = now_held;
        }
    }
    client.commit(meta.index, meta.term, &job.msg).await
}

/// Follower-side counters and the transfer in progress, shown in status.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReceiveStats {
    /// Snapshots received, verified and handed to raft.
    pub installs: u64,
    /// Transfers that found bytes held from an earlier attempt.
    pub resumed: u64,
    /// Chunks refused because their checksum did not match.
    pub chunks_rejected: u64,
    /// Received files that failed whole-file verification.
    pub files_rejected: u64,
    pub bytes_received: u64,
    /// The transfer in progress: (index, bytes held, bytes expected).
    pub receiving: Option<(u64, u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throttle_limits_the_rate() {
        let t = Throttle::new(100_000);
        let start = Instant::now();
        // 1 s of burst, then 50 KB more at 100 KB/s: about 0.5 s.
        t.acquire(100_000).await;
        t.acquire(50_000).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(400),
            "throttle let 150 KB through in {took:?}"
        );
        let t = Throttle::new(0);
        let start = Instant::now();
        t.acquire(1 << 30).await;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "an unlimited throttle waited"
        );
    }
}
