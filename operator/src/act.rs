//! Act: carry out the one action the plan chose, through the workload
//! backend (pods, TLS Secrets) or the nodes' admin API (membership,
//! leadership, bootstrap). Every step is idempotent or conditional on the
//! configuration index it was planned from, so repeating one after a crash
//! is safe.

use std::time::Duration;

use crate::backend::Workload;
use crate::crd::RaftCluster;
use crate::observe::{admin_client, Observed};
use crate::plan::Action;
use crate::Error;

/// How long a membership or leadership call may take, retries included.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Carries out `action`, planned from `observed`.
pub async fn act<W: Workload>(
    rc: &RaftCluster,
    workload: &W,
    observed: &Observed,
    action: &Action,
) -> Result<(), Error> {
    let o = &observed.observation;
    let admin = || {
        let addrs: Vec<String> = o
            .workload
            .iter()
            .flat_map(|w| w.pods.iter().map(|p| p.addr.clone()))
            .collect();
        admin_client(rc, addrs, &observed.tls, STEP_TIMEOUT)
    };
    let addr_of = |pod: &str| {
        o.workload
            .iter()
            .flat_map(|w| w.pods.iter())
            .find(|p| p.name == pod)
            .map(|p| p.addr.clone())
            .ok_or_else(|| Error::Workload(format!("pod {pod} is not observed")))
    };
    match action {
        // The CA's Secret first (`tls::owned_secrets` orders them).
        Action::ApplyTls { .. } => {
            for secret in &observed.tls.to_write {
                workload.apply_secret(rc, secret).await?;
            }
            Ok(())
        }
        Action::ApplyWorkload { replicas, revision } => {
            workload.apply(rc, *replicas, revision).await
        }
        Action::Bootstrap { pod, .. } => {
            let addr = addr_of(pod)?;
            admin()?
                .cluster()
                .bootstrap(&addr)
                .await
                .map_err(Error::client)
        }
        Action::AddLearner {
            addr,
            expected_conf_index,
            ..
        } => admin()?
            .add_learner(addr, Some(*expected_conf_index))
            .await
            .map(drop)
            .map_err(Error::client),
        Action::Promote {
            id,
            expected_conf_index,
            ..
        } => admin()?
            .promote(&format!("{id:016x}"), Some(*expected_conf_index))
            .await
            .map(drop)
            .map_err(Error::client),
        Action::RemoveMember {
            id,
            expected_conf_index,
            ..
        } => admin()?
            .remove_peer(&format!("{id:016x}"), Some(*expected_conf_index))
            .await
            .map(drop)
            .map_err(Error::client),
        Action::TransferLeader { to, .. } => admin()?
            .transfer_leader(Some(&format!("{to:016x}")))
            .await
            .map(drop)
            .map_err(Error::client),
        Action::RestartPod { pod, .. } => workload.restart_pod(rc, pod).await,
        Action::WipePod { pod } => workload.wipe_pod(rc, pod).await,
        Action::ShrinkWorkload {
            replicas,
            delete_volumes,
        } => workload.shrink(rc, *replicas, *delete_volumes).await,
        Action::Wait(_) | Action::Done => Ok(()),
    }
}
