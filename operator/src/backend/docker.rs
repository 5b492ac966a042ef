//! Pods as containers for the local backend (`raftkit-operator local
//! --backend docker`): each pod runs the resource's image on a Docker
//! network of its own, under its stable DNS name, as pods under a headless
//! Service do. A container made again for the same pod gets another IP
//! address; peers find it by name. The operator on the host reaches the
//! pods through [`DockerResolver`], which asks Docker for a name's current
//! address on each new connection.
//!
//! A pod's container is started attached (`docker run`, not `-d`) by a
//! child process of the backend: the `docker` command lives exactly as
//! long as the container, passes SIGTERM on to it (the node then hands its
//! leadership over), and is what the backend supervises, so containers and
//! processes are run the same way (`local.rs`).

use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use raftkit_client::dial::{Resolved, Resolver};

use crate::crd::RaftCluster;
use crate::Error;
use crate::{build, tls};

/// Where pods run as containers.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// The user-defined bridge network of the pods (created when missing);
    /// also the last label of every pod's DNS name, so names from two work
    /// directories never meet.
    pub network: String,
}

impl DockerConfig {
    /// The network name for a work directory: `raftkit-` and a short hash
    /// of its path, so each work directory has its own.
    pub fn for_work_dir(work_dir: &Path) -> DockerConfig {
        // FNV-1a: stable across builds and platforms (unlike std's hasher).
        let mut h: u32 = 0x811c_9dc5;
        for b in work_dir.as_os_str().as_encoded_bytes() {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
        DockerConfig {
            network: format!("raftkit-{h:08x}"),
        }
    }

    /// Pod `ordinal`'s DNS name, which is also its container's name:
    /// `<pod>.<headless service>.<network>`.
    pub fn pod_host(&self, rc: &RaftCluster, ordinal: u32) -> String {
        format!(
            "{}.{}.{}",
            build::pod_name(rc, ordinal),
            build::peers_service_name(rc),
            self.network
        )
    }

    /// Pod `ordinal`'s address (`host:port`).
    pub fn pod_addr(&self, rc: &RaftCluster, ordinal: u32) -> String {
        format!("{}:{}", self.pod_host(rc, ordinal), build::NODE_PORT)
    }

    /// Creates the network unless it exists.
    pub async fn ensure_network(&self, work_dir: &Path) -> Result<(), Error> {
        if docker(&["network", "inspect", &self.network]).await.is_ok() {
            return Ok(());
        }
        let label = format!("{WORK_DIR_LABEL}={}", work_dir.display());
        docker(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--label",
            &label,
            &self.network,
        ])
        .await
        .map(drop)
    }

    /// Removes the network (once no container is left on it).
    pub async fn remove_network(&self) {
        if let Err(e) = docker(&["network", "rm", &self.network]).await {
            tracing::warn!(network = %self.network, error = %e, "could not remove the network");
        }
    }

    /// The `docker run` that runs one pod: attached, removed when it
    /// exits, with the node's settings from the command's own environment
    /// (`-e NAME`), the pod's volume at [`build::DATA_DIR`], its TLS
    /// Secret's directory (if any) read-only at [`tls::TLS_DIR`] (the whole
    /// directory, so files replaced in it reach the node, as a Secret
    /// volume does) and a read-only root, as the pod template has it.
    #[allow(clippy::too_many_arguments)] // one per part of a pod
    pub fn run_command(
        &self,
        image: &str,
        host: &str,
        pod: &str,
        env: &[(String, String)],
        volume: &Path,
        tls_secret: Option<&Path>,
        work_dir: &Path,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("docker");
        cmd.args(["run", "--rm", "--name", host, "--hostname", pod])
            .args(["--network", &self.network, "--network-alias", host])
            .args(["--read-only", "--stop-timeout", "1"])
            .arg("--label")
            .arg(format!("{WORK_DIR_LABEL}={}", work_dir.display()))
            .arg("-v")
            .arg(format!("{}:{}", volume.display(), build::DATA_DIR));
        if let Some(dir) = tls_secret {
            cmd.arg("-v")
                .arg(format!("{}:{}:ro", dir.display(), tls::TLS_DIR));
        }
        // As the image's user, which owns the volume (`own_for_pods`);
        // an operator that is not root runs the node as itself instead.
        if !nix::unistd::geteuid().is_root() {
            cmd.arg("--user").arg(format!(
                "{}:{}",
                nix::unistd::geteuid(),
                nix::unistd::getegid()
            ));
        }
        for (k, v) in env {
            cmd.arg("-e").arg(k);
            cmd.env(k, v);
        }
        cmd.arg(image);
        cmd
    }

    /// Gives what a pod mounts (its volume, its TLS Secret's directory
    /// and files) to the image's user (when the operator is root;
    /// otherwise the node runs as the operator's user).
    pub fn own_for_pods(&self, path: &Path) -> Result<(), Error> {
        if nix::unistd::geteuid().is_root() {
            let id = u32::try_from(build::NODE_UID).unwrap_or(65532);
            std::os::unix::fs::chown(path, Some(id), Some(id))
                .map_err(Error::io(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    /// Removes a pod's container at once (SIGKILL), if it is there: the
    /// pod's old container is gone before a new one starts.
    pub async fn remove_container(&self, host: &str) {
        let _ = docker(&["rm", "--force", host]).await;
    }
}

/// Label on the network and every container: the work directory they
/// belong to.
pub const WORK_DIR_LABEL: &str = "raftkit.io/local-work-dir";

/// Whether the image is there: no image is pulled here, so a missing one
/// gets an error that says how to build it.
pub async fn check_image(image: &str) -> Result<(), Error> {
    match docker(&["image", "inspect", "--format", "{{.Id}}", image]).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "docker image inspect");
            Err(Error::Workload(format!(
                "image {image} is not here, and none is pulled: build it with \
                 e2e/build-image.sh (RAFTKIT_PROFILE=dev for the debug binaries, \
                 tagged -dev), or set spec.image to an image you have"
            )))
        }
    }
}

/// Runs `docker args...` (at most 30 s); its stdout, or an error naming
/// the command and what it printed.
async fn docker(args: &[&str]) -> Result<String, Error> {
    let run = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| Error::Workload(format!("docker {}: no answer in 30 s", args.join(" "))))?
        .map_err(Error::io(format!("running docker {}", args.join(" "))))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(Error::Workload(format!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Resolves the pods' DNS names on the host: a name ending in the
/// network's is its container's name, and its address is the container's
/// on that network now.
pub struct DockerResolver {
    network: String,
}

impl DockerResolver {
    /// Adds a resolver for `network`'s pods to this process (see
    /// `raftkit_client::dial`).
    pub fn install(network: &str) {
        raftkit_client::dial::add_resolver(Arc::new(DockerResolver {
            network: network.to_string(),
        }));
    }

    async fn address(&self, host: &str) -> std::io::Result<IpAddr> {
        let format = format!(
            "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
            self.network
        );
        let refused = |why: String| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("no running container {host}: {why}"),
            )
        };
        let out = docker(&["inspect", "--format", &format, host])
            .await
            .map_err(|e| refused(e.to_string()))?;
        out.parse()
            .map_err(|_| refused(format!("no address on network {}", self.network)))
    }
}

impl Resolver for DockerResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> Resolved<'a> {
        Box::pin(async move {
            let ours = host
                .strip_suffix(self.network.as_str())
                .is_some_and(|h| h.ends_with('.'));
            if !ours {
                return Ok(None);
            }
            self.address(host).await.map(Some)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_work_directory_has_its_own_network_and_names_under_it() {
        let a = DockerConfig::for_work_dir(Path::new("/tmp/a/raftkit-local"));
        let b = DockerConfig::for_work_dir(Path::new("/tmp/b/raftkit-local"));
        assert_ne!(a.network, b.network);
        assert_eq!(
            a.network,
            DockerConfig::for_work_dir(Path::new("/tmp/a/raftkit-local")).network,
            "stable, so a restarted operator finds its network"
        );
        let rc: RaftCluster = serde_yaml::from_str(
            "apiVersion: raftkit.io/v1alpha1\nkind: RaftCluster\nmetadata: {name: demo}\nspec: {replicas: 3}\n",
        )
        .expect("manifest");
        let addr = a.pod_addr(&rc, 2);
        assert_eq!(addr, format!("demo-2.demo-peers.{}:8080", a.network));
        raftkit_proto::addr::validate_addr(&addr).expect("a valid member address");
    }

    #[tokio::test]
    async fn the_resolver_answers_only_for_its_network() {
        let r = DockerResolver {
            network: "raftkit-0000test".into(),
        };
        assert!(r
            .resolve("demo-0.demo-peers.other")
            .await
            .unwrap()
            .is_none());
        assert!(r
            .resolve("demo-0.demo-peersraftkit-0000test")
            .await
            .unwrap()
            .is_none());
    }
}
