//! `raftkit-operator local`: the real reconciler against the local
//! backend. Reads one RaftCluster manifest (the file a user would `kubectl
//! apply`), re-reads it when it changes, runs a pass every `interval`,
//! prints one line per action, and keeps the resource's status in
//! `<work-dir>/status.yaml` (where a restarted operator finds it again, as
//! it would in the API server). Stops every pod it runs on shutdown.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::docker::DockerResolver;
use crate::backend::local::{LocalBackend, LocalConfig, PodRuntime};
use crate::backend::{EventType, Workload};
use crate::crd::RaftCluster;
use crate::plan::Action;
use crate::{controller, Error};

/// How the local operator runs.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub manifest: PathBuf,
    pub backend: LocalConfig,
    /// Time between passes.
    pub interval: Duration,
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Reads and checks a RaftCluster manifest.
pub fn read_manifest(path: &Path) -> Result<RaftCluster, ManifestError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: p.clone(),
        source,
    })?;
    let invalid = |message: String| ManifestError::Invalid {
        path: p.clone(),
        message,
    };
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind != "RaftCluster" {
        return Err(invalid(format!("kind is {kind:?}; expected RaftCluster")));
    }
    let api = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("");
    if api != "raftkit.io/v1alpha1" {
        return Err(invalid(format!(
            "apiVersion is {api:?}; expected raftkit.io/v1alpha1"
        )));
    }
    // From the text, not the value: the error then names the field's path.
    let mut rc: RaftCluster = serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if rc.metadata.name.as_deref().unwrap_or("").is_empty() {
        return Err(invalid("metadata.name is missing".into()));
    }
    rc.spec.validate().map_err(|e| invalid(e.to_string()))?;
    rc.status = None;
    Ok(rc)
}

/// The stored resource (`status.yaml`) if any: generation, creation time
/// and status carry over from it.
fn stored(dir: &Path) -> Option<RaftCluster> {
    let text = std::fs::read_to_string(dir.join("status.yaml")).ok()?;
    serde_yaml::from_str(&text).ok()
}

/// Merges a freshly read manifest with the stored resource, as the API
/// server does: the generation rises when the spec changes.
fn admit(mut rc: RaftCluster, stored: Option<&RaftCluster>) -> RaftCluster {
    let m = &mut rc.metadata;
    m.namespace.get_or_insert_with(|| "default".into());
    match stored {
        Some(s) if s.metadata.name == m.name => {
            let g = s.metadata.generation.unwrap_or(1);
            m.generation = Some(if s.spec == rc.spec { g } else { g + 1 });
            m.creation_timestamp = s.metadata.creation_timestamp.clone();
            m.uid = s.metadata.uid.clone();
            rc.status = s.status.clone();
        }
        _ => {
            m.generation = Some(1);
            m.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff_now(),
            ));
            m.uid = Some(format!("local-{}", std::process::id()));
        }
    }
    rc
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// Runs until `shutdown` completes, then stops every pod.
pub async fn run(opts: LocalOptions, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let mut rc = read_manifest(&opts.manifest).map_err(|e| Error::Workload(e.to_string()))?;
    let backend = LocalBackend::open(opts.backend.clone())?;
    let dir = opts.backend.work_dir.clone();
    rc = admit(rc, stored(&dir).as_ref());
    let pods = match &opts.backend.runtime {
        PodRuntime::Processes { base_port, .. } => format!("processes on 127.0.0.1:{base_port}.."),
        PodRuntime::Containers(d) => {
            // A missing image stops the start; a spec edited later to name
            // one is retried, as a kubelet retries a pull.
            crate::backend::docker::check_image(&rc.spec.image).await?;
            // The pods' names resolve on Docker's network, not here.
            DockerResolver::install(&d.network);
            format!(
                "containers of {} on Docker network {} (first pod {})",
                rc.spec.image,
                d.network,
                d.pod_addr(&rc, 0)
            )
        }
    };
    println!(
        "raftkit-operator local: RaftCluster {} from {} ({} replicas), pods as {pods}, state in {}",
        crate::build::cluster_name(&rc),
        opts.manifest.display(),
        rc.spec.replicas,
        dir.display()
    );
    tokio::pin!(shutdown);
    let mut last_line = String::new();
    let mut last_manifest_error = String::new();
    loop {
        // Edits of the manifest are picked up on every pass.
        match read_manifest(&opts.manifest) {
            Ok(fresh) => {
                last_manifest_error.clear();
                let mut next = admit(fresh, Some(&rc));
                if next.metadata.generation != rc.metadata.generation {
                    println!(
                        "manifest changed (generation {})",
                        next.metadata.generation.unwrap_or(0)
                    );
                }
                next.status = rc.status.take();
                rc = next;
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_manifest_error {
                    eprintln!("error: {msg}; keeping the last valid spec");
                    backend
                        .event(&rc, EventType::Warning, "InvalidSpec", &msg)
                        .await?;
                    last_manifest_error = msg;
                }
            }
        }
        match controller::reconcile(&rc, &backend).await {
            Ok(pass) => {
                let line = match (&pass.action, &pass.failed) {
                    (a, Some(e)) => format!("{} failed (retrying): {e}", a),
                    (Action::Done, None) => format!(
                        "{}: {} of {} members ready, leader {}",
                        pass.status.phase,
                        pass.status.ready_replicas,
                        pass.status.replicas,
                        pass.status.leader.as_deref().unwrap_or("none")
                    ),
                    (a, None) => a.to_string(),
                };
                if line != last_line {
                    println!("{} {line}", controller::now());
                    last_line = line;
                }
                rc.status = Some(pass.status);
            }
            Err(e) => {
                let line = format!("pass failed: {e}");
                if line != last_line {
                    eprintln!("{} {line}", controller::now());
                    last_line = line;
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(opts.interval) => {}
        }
    }
    println!("stopping every pod ...");
    backend.stop_all().await;
    println!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("rc.yaml");
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn manifests_are_checked_with_errors_that_name_the_problem() {
        let d = tempfile::tempdir().expect("tempdir");
        let ok = "apiVersion: raftkit.io/v1alpha1\nkind: RaftCluster\nmetadata: {name: demo}\nspec: {replicas: 3}\n";
        assert!(read_manifest(&write(d.path(), ok)).is_ok());
        let cases = [
            (
                ok.replace("RaftCluster", "Deployment"),
                "expected RaftCluster",
            ),
            (ok.replace("v1alpha1", "v9"), "expected raftkit.io/v1alpha1"),
            (
                ok.replace("replicas: 3", "replicas: 12"),
                "spec.replicas: 12 is out of range",
            ),
            (ok.replace("{name: demo}", "{}"), "metadata.name is missing"),
            (ok.replace("replicas: 3", "replicas: three"), "replicas"),
        ];
        for (text, want) in cases {
            let e = read_manifest(&write(d.path(), &text))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
        let e = read_manifest(&d.path().join("missing.yaml")).unwrap_err();
        assert!(e.to_string().contains("missing.yaml"));
    }

    #[test]
    fn the_generation_rises_only_when_the_spec_changes() {
        let d = tempfile::tempdir().expect("tempdir");
        let text = "apiVersion: raftkit.io/v1alpha1\nkind: RaftCluster\nmetadata: {name: demo}\nspec: {replicas: 3}\n";
        let first = admit(read_manifest(&write(d.path(), text)).expect("ok"), None);
        assert_eq!(first.metadata.generation, Some(1));
        let same = admit(
            read_manifest(&write(d.path(), text)).expect("ok"),
            Some(&first),
        );
        assert_eq!(same.metadata.generation, Some(1));
        let edited = admit(
            read_manifest(&write(d.path(), &text.replace('3', "5"))).expect("ok"),
            Some(&same),
        );
        assert_eq!(edited.metadata.generation, Some(2));
        assert_eq!(
            edited.metadata.creation_timestamp,
            first.metadata.creation_timestamp
        );
    }
}
