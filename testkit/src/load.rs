//! A counter workload that runs while a test changes the cluster under it
//! (membership, restarts, kills), and the checks of its history
//! (testing.md, "Counter"): every acknowledged increment saw a distinct
//! previous value, real-time order holds, and the final value lies between
//! the acknowledged and the attempted totals — no acknowledged write lost
//! or doubled.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkit_client::{ClientError, ClusterClient, ErrorKind};

/// What the writers saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Acknowledged increments: invoked, answered, previous value.
    pub acked: Vec<(Instant, Instant, i64)>,
    /// Failures whose outcome is unknown (they may have been applied).
    pub unknown: u64,
    /// Failures of any kind.
    pub failed: u64,
    /// Errors no retry could fix (a bug, not a fault).
    pub non_retryable: Vec<String>,
}

/// Writers doing `fetch_add(1)` in a loop.
pub struct CounterLoad {
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

impl CounterLoad {
    /// Starts `writers` writers on `client`.
    pub fn start(client: Arc<ClusterClient>, writers: usize) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..writers)
            .map(|_| {
                let (client, tally, stop) = (client.clone(), tally.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let invoked = Instant::now();
                        match client.fetch_add(1).await {
                            Ok(prev) => lock(&tally).acked.push((invoked, Instant::now(), prev)),
                            Err(e) => record_failure(&tally, &e),
                        }
                    }
                })
            })
            .collect();
        CounterLoad {
            tally,
            stop,
            handles,
        }
    }

    /// Increments acknowledged so far.
    pub fn acked(&self) -> usize {
        lock(&self.tally).acked.len()
    }

    /// Failed requests so far.
    pub fn failed(&self) -> u64 {
        lock(&self.tally).failed
    }

    /// Waits until `more` further increments are acknowledged: proof the
    /// cluster serves at this point of the test.
    pub async fn wait_for_progress(&self, more: usize, within: Duration, what: &str) {
        let target = self.acked() + more;
        let deadline = Instant::now() + within;
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "writes stalled {what}: {} acknowledged, waiting for {target}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the writers and returns what they saw.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.await;
        }
        std::mem::take(&mut *lock(&self.tally))
    }
}

fn record_failure(tally: &Mutex<Tally>, e: &ClientError) {
    let mut t = lock(tally);
    t.failed += 1;
    let transport_retryable = match e {
        ClientError::Rpc { code, .. } => {
            matches!(code, tonic::Code::Unavailable | tonic::Code::Cancelled)
        }
        _ => true,
    };
    if !transport_retryable
        || matches!(
            e.kind(),
            ErrorKind::InvalidArgument
                | ErrorKind::StateMachine
                | ErrorKind::GroupNotHosted
                | ErrorKind::SessionExpired
        )
    {
        t.non_retryable.push(e.to_string());
    }
    if !e.is_definitely_not_applied() {
        t.unknown += 1;
    }
}

impl Tally {
    /// Checks the history against the counter's final value (read through
    /// `client`) and returns that value.
    pub async fn check(&self, client: &ClusterClient) -> i64 {
        assert!(
            self.non_retryable.is_empty(),
            "errors no retry could fix: {:?}",
            &self.non_retryable[..self.non_retryable.len().min(5)]
        );
        let final_value = client.counter_get().await.expect("the final read");
        let prevs: Vec<i64> = self.acked.iter().map(|a| a.2).collect();
        let distinct: HashSet<i64> = prevs.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            prevs.len(),
            "two increments saw the same previous value"
        );
        assert!(
            prevs.iter().all(|p| *p < final_value),
            "an acknowledged increment is missing from the final value {final_value}"
        );
        let acked = i64::try_from(prevs.len()).unwrap_or(i64::MAX);
        let unknown = i64::try_from(self.unknown).unwrap_or(i64::MAX);
        assert!(
            final_value >= acked && final_value <= acked + unknown,
            "final value {final_value} outside [{acked}, {}]",
            acked + unknown
        );
        if let Some(v) = crate::counter_real_time_violation(&self.acked) {
            panic!("real-time order violated: {v}");
        }
        final_value
    }
}
