//! `raftkit-operator`: parses the command line and hands over to the
//! library (`local::run`, `crd`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

use raftkit_operator::backend::docker::DockerConfig;
use raftkit_operator::backend::local::{LocalConfig, PodRuntime};
use raftkit_operator::build;
use raftkit_operator::crd::RaftCluster;
use raftkit_operator::local::{self, LocalOptions};

#[derive(Parser)]
#[command(name = "raftkit-operator", version, about = "The RaftCluster operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reconciler on this machine, pods as raftkit-node processes
    /// (or containers), for one RaftCluster manifest (edits of the file are
    /// picked up).
    Local {
        /// The RaftCluster YAML (the file you would `kubectl apply`).
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// Pods' data, logs, status.yaml and events.log.
        #[arg(long, value_name = "DIR", default_value = "raftkit-local")]
        work_dir: PathBuf,
        /// What a pod is: a raftkit-node process, or a container of
        /// spec.image on a Docker network of its own (its DNS name stable,
        /// its IP address new on each restart).
        #[arg(long, value_enum, default_value_t = LocalBackendKind::Process)]
        backend: LocalBackendKind,
        /// Process pods: pod i listens on 127.0.0.1:<base-port + i>.
        #[arg(long, default_value_t = 8200)]
        base_port: u16,
        /// Process pods: the raftkit-node binary [default: beside this
        /// program, else on PATH].
        #[arg(long, value_name = "PATH")]
        node_binary: Option<PathBuf>,
        /// Container pods: the Docker network [default: raftkit-<hash of
        /// the work directory>].
        #[arg(long, value_name = "NAME")]
        network: Option<String>,
        /// Milliseconds between reconcile passes.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
        interval_ms: u64,
        /// Seconds a stopping pod may take before it is killed.
        #[arg(long, default_value_t = 30)]
        grace_secs: u64,
    },
    /// Run in a Kubernetes cluster (kubeconfig, or the in-cluster config):
    /// reconcile every RaftCluster while holding the leader Lease.
    Run {
        /// Address of /metrics and /healthz.
        #[arg(
            long,
            env = "RAFTKIT_OPERATOR_METRICS_ADDR",
            default_value = "0.0.0.0:8080"
        )]
        metrics_addr: std::net::SocketAddr,
        /// The Lease replicas of the operator elect a leader on.
        #[arg(
            long,
            env = "RAFTKIT_OPERATOR_LEASE_NAME",
            default_value = "raftkit-operator"
        )]
        lease_name: String,
        /// The Lease's namespace: the operator's own, whose pods every
        /// cluster's NetworkPolicy admits to the node port.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// The labels of the operator's own pods (key=value,...), admitted
        /// to every cluster's node port; the chart and deploy/ set them to
        /// the operator Deployment's selector labels.
        #[arg(
            long,
            env = "RAFTKIT_OPERATOR_POD_LABELS",
            default_value = build::DEFAULT_OPERATOR_POD_LABELS,
            value_parser = build::parse_labels,
        )]
        operator_pod_labels: BTreeMap<String, String>,
        /// This replica's name in the Lease and in Events [default: the host name].
        #[arg(long, env = "POD_NAME")]
        instance: Option<String>,
        /// Seconds a leader may go without renewing before another takes over.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
        lease_duration_secs: u64,
        /// Watch RaftClusters in this namespace only [default: every namespace].
        #[arg(long, env = "RAFTKIT_OPERATOR_WATCH_NAMESPACE")]
        watch_namespace: Option<String>,
    },
    /// Print the RaftCluster CustomResourceDefinition as YAML.
    Crdgen,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run {
            metrics_addr,
            lease_name,
            lease_namespace,
            instance,
            lease_duration_secs,
            watch_namespace,
            operator_pod_labels,
        } => {
            let client = kube::Client::try_default().await?;
            let instance = instance.unwrap_or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| format!("raftkit-operator-{}", std::process::id()))
            });
            let opts = raftkit_operator::run::RunOptions {
                metrics_addr,
                lease_name,
                lease_namespace,
                instance,
                lease_duration: Duration::from_secs(lease_duration_secs),
                watch_namespace: watch_namespace.filter(|n| !n.is_empty()),
                operator_pod_labels,
            };
            raftkit_operator::run::run(client, opts, shutdown_signal()).await?;
        }
        Command::Crdgen => {
            print!("{}", serde_yaml::to_string(&RaftCluster::crd())?);
        }
        Command::Local {
            manifest,
            work_dir,
            backend,
            base_port,
            node_binary,
            network,
            interval_ms,
            grace_secs,
        } => {
            std::fs::create_dir_all(&work_dir)?;
            let work_dir = work_dir.canonicalize()?;
            let runtime = match backend {
                LocalBackendKind::Process => PodRuntime::Processes {
                    node_binary: raftkit_cli::node_binary::find_node_binary(
                        node_binary.as_deref(),
                    )?,
                    base_port,
                },
                LocalBackendKind::Docker => {
                    let mut d = DockerConfig::for_work_dir(&work_dir);
                    if let Some(n) = network {
                        d.network = n;
                    }
                    PodRuntime::Containers(d)
                }
            };
            let opts = LocalOptions {
                manifest,
                backend: LocalConfig {
                    work_dir,
                    runtime,
                    grace: Duration::from_secs(grace_secs),
                },
                interval: Duration::from_millis(interval_ms),
            };
            local::run(opts, shutdown_signal()).await?;
        }
    }
    Ok(())
}

/// What `raftkit-operator local` runs a pod as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LocalBackendKind {
    Process,
    Docker,
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
