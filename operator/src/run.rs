//! `raftkit-operator run`: the controller in a Kubernetes cluster. Waits to
//! hold the leader Lease, then watches RaftClusters (and the StatefulSets
//! they own) and reconciles each, while renewing the lease; serves
//! `/metrics` and `/healthz`. Stops acting when the lease is lost.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

use crate::backend::kube::KubeBackend;
use crate::build::OperatorPods;
use crate::controller::{error_policy, reconcile_in_cluster, Context};
use crate::crd::RaftCluster;
use crate::leader::{LeaseLock, Outcome};
use crate::metrics::Metrics;
use crate::Error;

/// How the in-cluster operator runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `/metrics` and `/healthz`.
    pub metrics_addr: SocketAddr,
    /// The Lease (in `lease_namespace`) replicas of the operator elect on.
    pub lease_name: String,
    pub lease_namespace: String,
    /// This replica's name (its pod's).
    pub instance: String,
    pub lease_duration: Duration,
    /// Watch RaftClusters in this namespace only; `None`: every namespace.
    pub watch_namespace: Option<String>,
    /// The labels of this operator's pods (in `lease_namespace`, its own),
    /// admitted to every cluster's node port by its NetworkPolicy.
    pub operator_pod_labels: BTreeMap<String, String>,
}

/// Serves `/metrics` and `/healthz` until the process ends.
async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), Error> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("binding {addr}")))?;
    axum::serve(listener, app)
        .await
        .map_err(Error::io("serving metrics"))
}

/// Runs until `shutdown` completes or the lease is lost.
pub async fn run(
    client: Client,
    opts: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(serve_metrics(opts.metrics_addr, metrics.clone()));
    let lock = LeaseLock::new(
        client.clone(),
        &opts.lease_namespace,
        &opts.lease_name,
        &opts.instance,
        opts.lease_duration,
    );
    let renew = opts.lease_duration / 3;
    // One stop signal: shutdown, or the lease lost.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop_tx.send_replace(true);
        });
    }
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    // Wait to lead.
    loop {
        match lock.try_acquire_or_renew().await {
            Ok(Outcome::Held) => break,
            Ok(Outcome::HeldBy(h)) => tracing::info!(holder = %h, "another replica leads; waiting"),
            Err(e) => tracing::warn!(error = %e, "lease"),
        }
        tokio::select! {
            _ = stopped() => return Ok(()),
            _ = tokio::time::sleep(renew) => {}
        }
    }
    tracing::info!(instance = %opts.instance, "leading: reconciling RaftClusters");
    let ctx = Arc::new(Context {
        backend: KubeBackend::new(
            client.clone(),
            Some(opts.instance.clone()),
            OperatorPods {
                namespace: opts.lease_namespace.clone(),
                labels: opts.operator_pod_labels.clone(),
            },
        ),
        metrics,
    });
    let renewer = tokio::spawn(async move {
        let mut last_held = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(renew).await;
            match lock.try_acquire_or_renew().await {
                Ok(Outcome::Held) => last_held = tokio::time::Instant::now(),
                Ok(Outcome::HeldBy(h)) => {
                    tracing::error!(holder = %h, "lost the lease; stopping");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the lease failed");
                    if last_held.elapsed() >= lock.duration {
                        tracing::error!("could not renew the lease in time; stopping");
                        break;
                    }
                }
            }
        }
        stop_tx.send_replace(true);
    });
    Controller::new(
        Api::<RaftCluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client), watcher::Config::default())
    .graceful_shutdown_on(stopped())
    .run(reconcile_in_cluster, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "controller");
        }
    })
    .await;
    renewer.abort();
    Ok(())
}
