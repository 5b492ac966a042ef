//! The operator's metrics, in Prometheus' text format on `/metrics`:
//! reconcile passes, failed passes, actions by kind, and how long
//! operations took from their start to their end.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Counters shared by the reconciler and the metrics endpoint.
#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    errors: AtomicU64,
    actions: Mutex<BTreeMap<&'static str, u64>>,
    /// Per operation kind: (count, total seconds).
    durations: Mutex<BTreeMap<String, (u64, f64)>>,
}

impl Metrics {
    pub fn reconciled(&self) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn acted(&self, kind: &'static str) {
        let mut a = self.actions.lock().unwrap_or_else(|e| e.into_inner());
        *a.entry(kind).or_default() += 1;
    }

    /// An operation of `kind` finished after `took`.
    pub fn operation_done(&self, kind: &str, took: Duration) {
        let mut d = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        let e = d.entry(kind.to_string()).or_default();
        e.0 += 1;
        e.1 += took.as_secs_f64();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP raftkit_operator_reconciles_total Reconcile passes."
        );
        let _ = writeln!(out, "# TYPE raftkit_operator_reconciles_total counter");
        let _ = writeln!(
            out,
            "raftkit_operator_reconciles_total {}",
            self.reconciles.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP raftkit_operator_reconcile_errors_total Passes that failed."
        );
        let _ = writeln!(
            out,
            "# TYPE raftkit_operator_reconcile_errors_total counter"
        );
        let _ = writeln!(
            out,
            "raftkit_operator_reconcile_errors_total {}",
            self.errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP raftkit_operator_actions_total Actions taken, by kind."
        );
        let _ = writeln!(out, "# TYPE raftkit_operator_actions_total counter");
        for (kind, n) in self
            .actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "raftkit_operator_actions_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP raftkit_operator_operation_duration_seconds Time from an operation's start to its end, by kind."
        );
        let _ = writeln!(
            out,
            "# TYPE raftkit_operator_operation_duration_seconds summary"
        );
        for (kind, (n, sum)) in self
            .durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "raftkit_operator_operation_duration_seconds_sum{{kind=\"{kind}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "raftkit_operator_operation_duration_seconds_count{{kind=\"{kind}\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_text_exposition() {
        let m = Metrics::default();
        m.reconciled();
        m.reconciled();
        m.failed();
        m.acted("AddLearner");
        m.operation_done("AddLearner", Duration::from_millis(1500));
        let text = m.render();
        assert!(text.contains("raftkit_operator_reconciles_total 2\n"));
        assert!(text.contains("raftkit_operator_reconcile_errors_total 1\n"));
        assert!(text.contains("raftkit_operator_actions_total{kind=\"AddLearner\"} 1\n"));
        assert!(text.contains(
            "raftkit_operator_operation_duration_seconds_sum{kind=\"AddLearner\"} 1.5\n"
        ));
    }
}
