//! One reconcile pass: observe → plan → act, then the status and an Event.
//! A pass does at most one step; the caller requeues (the local runner
//! loops; the Kubernetes controller requeues after each pass).

use crate::backend::{EventType, Workload};
use crate::crd::{RaftCluster, RaftClusterStatus};
use crate::plan::{self, Action, Options};
use crate::{act, observe, status, Error};

/// What one pass did.
#[derive(Clone, Debug)]
pub struct Pass {
    pub action: Action,
    /// The step failed with this error (it is retried on a later pass).
    pub failed: Option<String>,
    pub status: RaftClusterStatus,
}

/// Runs one pass for `rc` (whose `status` is the stored status).
#[tracing::instrument(skip_all, fields(cluster = %crate::build::cluster_name(rc)))]
pub async fn reconcile<W: Workload>(rc: &RaftCluster, workload: &W) -> Result<Pass, Error> {
    let (o, group) = observe::observe(rc, workload).await?;
    let action = plan::plan(
        &o,
        Options {
            retain_on_scale_down: rc.spec.storage.retain_on_scale_down,
        },
    );
    let now = now();
    let mut st = status::compute(rc, &o, group.as_ref(), &action, &now);
    if matches!(action, Action::Bootstrap { .. }) {
        // The intent is stored before the node is told: an operator that
        // stops in between resumes this very bootstrap, never another.
        workload.write_status(rc, &st).await?;
    }
    let failed = match act::act(rc, workload, &o, &action).await {
        Ok(()) => {
            if !matches!(action, Action::Wait(_) | Action::Done) {
                workload
                    .event(rc, EventType::Normal, action.kind(), &action.to_string())
                    .await?;
            }
            None
        }
        Err(e) => {
            let msg = format!("{action}: {e}");
            tracing::warn!(action = action.kind(), error = %e, "step failed; it is retried");
            workload
                .event(rc, EventType::Warning, action.kind(), &msg)
                .await?;
            if let Some(op) = st.operation.as_mut() {
                op.phase = format!("failed (retrying): {e}");
            }
            Some(e.to_string())
        }
    };
    workload.write_status(rc, &st).await?;
    Ok(Pass {
        action,
        failed,
        status: st,
    })
}

/// The time as Kubernetes writes it (RFC 3339, seconds, UTC).
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
