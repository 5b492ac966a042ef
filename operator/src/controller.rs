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
    /// The operation recorded before this pass ended with it: its kind and
    /// how long it took.
    pub finished: Option<(String, std::time::Duration)>,
    /// The step failed with this error (it is retried on a later pass).
    pub failed: Option<String>,
    pub status: RaftClusterStatus,
    /// When the first of the operator's certificates is due for renewal,
    /// or the next step of a CA rotation: look again by then.
    pub renew_at: Option<std::time::SystemTime>,
}

/// Runs one pass for `rc` (whose `status` is the stored status).
#[tracing::instrument(skip_all, fields(cluster = %crate::build::cluster_name(rc)))]
pub async fn reconcile<W: Workload>(rc: &RaftCluster, workload: &W) -> Result<Pass, Error> {
    let observed = observe::observe(rc, workload, std::time::SystemTime::now()).await?;
    let (o, group) = (&observed.observation, observed.group.as_ref());
    let action = plan::plan(
        o,
        Options {
            retain_on_scale_down: rc.spec.storage.retain_on_scale_down,
        },
    );
    let now = now();
    let mut st = status::compute(rc, o, group, &action, &now);
    if matches!(action, Action::Bootstrap { .. }) {
        // The intent is stored before the node is told: an operator that
        // stops in between resumes this very bootstrap, never another.
        workload.write_status(rc, &st).await?;
    }
    let failed = match act::act(rc, workload, &observed, &action).await {
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
    let prev = rc.status.as_ref().and_then(|s| s.operation.as_ref());
    let finished = prev
        .filter(|p| {
            st.operation
                .as_ref()
                .is_none_or(|n| n.kind != p.kind || n.pod != p.pod)
        })
        .and_then(|p| {
            let started = chrono::DateTime::parse_from_rfc3339(&p.started_at).ok()?;
            let took = (chrono::Utc::now() - started.with_timezone(&chrono::Utc))
                .to_std()
                .ok()?;
            Some((p.kind.clone(), took))
        });
    Ok(Pass {
        action,
        finished,
        failed,
        status: st,
        renew_at: observed.tls.renew_at,
    })
}

/// The time as Kubernetes writes it (RFC 3339, seconds, UTC).
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// What the in-cluster controller shares across passes.
pub struct Context {
    pub backend: crate::backend::kube::KubeBackend,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// How soon to look again after a pass: soon while acting or waiting on a
/// step, rarely once done (changes of the resource or its StatefulSet
/// trigger a pass anyway), and never after a certificate falls due.
pub fn requeue_after(pass: &Pass, now: std::time::SystemTime) -> std::time::Duration {
    use std::time::Duration;
    let by_step = match &pass.action {
        Action::Done => Duration::from_secs(30),
        Action::Wait(w) if w.is_degraded() => Duration::from_secs(10),
        Action::Wait(_) => Duration::from_secs(2),
        _ => Duration::from_millis(500),
    };
    match pass.renew_at {
        // A second past it: due means strictly less than a third left.
        Some(at) => by_step.min(
            at.duration_since(now)
                .unwrap_or_default()
                .saturating_add(Duration::from_secs(1)),
        ),
        None => by_step,
    }
}

/// One pass for the kube-runtime controller.
pub async fn reconcile_in_cluster(
    rc: std::sync::Arc<RaftCluster>,
    ctx: std::sync::Arc<Context>,
) -> Result<kube::runtime::controller::Action, Error> {
    ctx.metrics.reconciled();
    let pass = reconcile(&rc, &ctx.backend).await?;
    if !matches!(pass.action, Action::Wait(_) | Action::Done) {
        ctx.metrics.acted(pass.action.kind());
    }
    if let Some((kind, took)) = &pass.finished {
        ctx.metrics.operation_done(kind, *took);
    }
    Ok(kube::runtime::controller::Action::requeue(requeue_after(
        &pass,
        std::time::SystemTime::now(),
    )))
}

/// A failed pass is retried after a pause.
pub fn error_policy(
    _rc: std::sync::Arc<RaftCluster>,
    error: &Error,
    ctx: std::sync::Arc<Context>,
) -> kube::runtime::controller::Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    ctx.metrics.failed();
    kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn pass(action: Action, renew_at: Option<SystemTime>) -> Pass {
        Pass {
            action,
            finished: None,
            failed: None,
            status: RaftClusterStatus::default(),
            renew_at,
        }
    }

    /// A quiet cluster is looked at every 30 s, but a certificate due
    /// sooner brings the next pass forward to a second after it falls due;
    /// one already due means a pass at once (a second).
    #[test]
    fn the_next_pass_comes_no_later_than_the_first_renewal() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let secs = Duration::from_secs;
        assert_eq!(requeue_after(&pass(Action::Done, None), now), secs(30));
        assert_eq!(
            requeue_after(&pass(Action::Done, Some(now + secs(3600))), now),
            secs(30)
        );
        assert_eq!(
            requeue_after(&pass(Action::Done, Some(now + secs(12))), now),
            secs(13)
        );
        assert_eq!(
            requeue_after(&pass(Action::Done, Some(now - secs(5))), now),
            secs(1)
        );
        assert_eq!(
            requeue_after(
                &pass(Action::Wait(plan::Wait::NoLeader), Some(now + secs(3))),
                now
            ),
            secs(4)
        );
        assert_eq!(
            requeue_after(&pass(Action::Wait(plan::Wait::Paused), None), now),
            secs(2)
        );
    }
}
