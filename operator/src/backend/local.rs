//! The local workload: pods as `raftkit-node` processes on this machine, or
//! as containers of the resource's image on a Docker network (`docker`),
//! with what a StatefulSet and a kubelet give a pod on Kubernetes.
//!
//! - Pod `<name>-<i>` has a stable address: `127.0.0.1:<base-port + i>` as
//!   a process, its DNS name on the network as a container (whose IP
//!   address changes each time it is made again). Its data is in
//!   `<work-dir>/<name>-<i>` (its volume, mounted into a container) and its
//!   output in `<work-dir>/<name>-<i>.log`; its settings come as environment
//!   variables from the node's settings table, as in a pod.
//! - A pod whose process (or container) exits is started again after a
//!   back-off, like a kubelet restarts a container. Deleting a pod (a
//!   restart) stops it with SIGTERM, which makes the node hand its
//!   leadership over, then SIGKILL after the grace period; it comes back
//!   from the current revision.
//! - The "StatefulSet" (replicas, revision, the spec pods start from) and
//!   each pod's pid are kept in `<work-dir>/workload.json` and
//!   `<work-dir>/pods/`, so an operator that was stopped or killed finds its
//!   pods still running and adopts them, as one restarted on Kubernetes does.
//! - A Secret is a directory, `<work-dir>/tls/<secret>/`, one file per key
//!   (mode 0600), each replaced whole (written aside, then renamed), so a
//!   node that reloads its certificate never reads half a file. A process
//!   pod's node is pointed at its own files there; a container gets the
//!   directory mounted read-only where a pod mounts its Secret.
//! - Status goes to `<work-dir>/status.yaml` (the whole resource, as
//!   `kubectl get -o yaml` shows it), Events to `<work-dir>/events.log`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::docker::{self, DockerConfig};
use super::{EventType, PodState, Workload, WorkloadState};
use crate::crd::{RaftCluster, RaftClusterStatus};
use crate::plan::PodPhase;
use crate::Error;
use crate::{build, tls};

/// Where and how local pods run.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Data, logs, status and events.
    pub work_dir: PathBuf,
    pub runtime: PodRuntime,
    /// How long a stopping node may take before SIGKILL (Kubernetes'
    /// `terminationGracePeriodSeconds`).
    pub grace: Duration,
}

/// What a local pod is.
#[derive(Clone, Debug)]
pub enum PodRuntime {
    /// A `raftkit-node` process; pod `i` listens on `127.0.0.1:<base_port + i>`.
    Processes {
        node_binary: PathBuf,
        base_port: u16,
    },
    /// A container of the resource's image (`spec.image`) on a Docker
    /// network, reached by its DNS name (see `docker`).
    Containers(DockerConfig),
}

/// The local backend (see the module docs).
pub struct LocalBackend {
    cfg: LocalConfig,
    state: Mutex<State>,
    /// The containers' network exists (checked once per run).
    network_ready: std::sync::atomic::AtomicBool,
    /// Held while this backend runs: one operator per work directory.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// The persisted "StatefulSet".
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Controller {
    replicas: u32,
    revision: String,
    /// The resource as it was when last applied: new pods start from it.
    template: RaftCluster,
}

#[derive(Default)]
struct State {
    controller: Option<Controller>,
    pods: BTreeMap<u32, Pod>,
}

struct Pod {
    name: String,
    revision: String,
    /// The image its container runs (containers only).
    image: String,
    /// Its container's name, which is also its DNS name (containers only).
    container: Option<String>,
    /// The node's environment: a process that exits is started again with
    /// it (a kubelet restarts a container of the same pod; only a deleted
    /// pod comes back from the controller's newer revision).
    env: Vec<(String, String)>,
    /// The Secret of its TLS files (a container mounts its directory).
    tls_secret: Option<String>,
    proc: Option<Proc>,
    /// When an exited process is started again.
    restart_at: Option<Instant>,
    exits: u32,
}

enum Proc {
    Child(tokio::process::Child),
    /// Started by an earlier run of the operator.
    Adopted(i32),
}

/// A pod's persisted pid and what it was started with.
#[derive(Serialize, Deserialize)]
struct PidFile {
    pid: i32,
    revision: String,
    #[serde(default)]
    image: String,
    env: Vec<(String, String)>,
    #[serde(default)]
    tls_secret: Option<String>,
}

impl Proc {
    fn pid(&self) -> Option<i32> {
        match self {
            Proc::Child(c) => c.id().and_then(|p| i32::try_from(p).ok()),
            Proc::Adopted(p) => Some(*p),
        }
    }

    /// `Some(reason)` once the process has exited.
    fn exited(&mut self) -> Option<String> {
        match self {
            Proc::Child(c) => match c.try_wait() {
                Ok(Some(st)) => Some(st.to_string()),
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            },
            Proc::Adopted(pid) => (!alive(*pid)).then(|| "exited".to_string()),
        }
    }
}

/// A process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Set on every pod's process (the node, or the `docker run` of its
/// container) to its volume's path: how a restarted operator knows a pid
/// is still its pod (pids are reused).
const POD_MARKER: &str = "RAFTKIT_LOCAL_POD_VOLUME";

/// `pid` is the process of the pod whose volume is `data_dir`.
fn is_our_node(pid: i32, data_dir: &Path) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{POD_MARKER}={}", data_dir.display());
    env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

impl LocalBackend {
    /// Opens the work directory, adopting pods an earlier run left running.
    pub fn open(cfg: LocalConfig) -> Result<Self, Error> {
        std::fs::create_dir_all(cfg.work_dir.join("pods"))
            .map_err(Error::io(format!("creating {}", cfg.work_dir.display())))?;
        let lock = lock_work_dir(&cfg.work_dir)?;
        let mut state = State::default();
        if let Ok(text) = std::fs::read_to_string(cfg.work_dir.join("workload.json")) {
            let c: Controller = serde_json::from_str(&text).map_err(|e| {
                Error::Workload(format!("{}/workload.json: {e}", cfg.work_dir.display()))
            })?;
            for entry in std::fs::read_dir(cfg.work_dir.join("pods"))
                .map_err(Error::io("reading the pods directory"))?
                .flatten()
            {
                let path = entry.path();
                let Some(name) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(str::to_string)
                else {
                    continue;
                };
                let Some(ordinal) = build::ordinal_of(&c.template, &name) else {
                    continue;
                };
                let Ok(pf) = std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::from_str::<PidFile>(&t).map_err(|e| e.to_string()))
                else {
                    continue;
                };
                if alive(pf.pid) && is_our_node(pf.pid, &cfg.work_dir.join(&name)) {
                    tracing::info!(pod = %name, pid = pf.pid, "adopting a running pod");
                    state.pods.insert(
                        ordinal,
                        Pod {
                            name,
                            revision: pf.revision,
                            image: pf.image,
                            container: None,
                            env: pf.env,
                            tls_secret: pf.tls_secret,
                            proc: Some(Proc::Adopted(pf.pid)),
                            restart_at: None,
                            exits: 0,
                        },
                    );
                }
            }
            state.controller = Some(c);
        }
        Ok(LocalBackend {
            cfg,
            state: Mutex::new(state),
            network_ready: Default::default(),
            _lock: lock,
        })
    }

    /// Pod `ordinal`'s stable address.
    fn addr(&self, rc: &RaftCluster, ordinal: u32) -> String {
        match &self.cfg.runtime {
            PodRuntime::Processes { base_port, .. } => {
                format!("127.0.0.1:{}", u32::from(*base_port) + ordinal)
            }
            PodRuntime::Containers(d) => d.pod_addr(rc, ordinal),
        }
    }

    /// Before the first container starts: the network exists (once per
    /// run; processes need nothing).
    async fn prepare(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        if let PodRuntime::Containers(d) = &self.cfg.runtime {
            if !self.network_ready.load(Ordering::Acquire) {
                d.ensure_network(&self.cfg.work_dir).await?;
                self.network_ready.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    fn data_dir(&self, pod: &str) -> PathBuf {
        self.cfg.work_dir.join(pod)
    }

    /// Where Secret `name`'s files are: `<work-dir>/tls/<name>`.
    fn secret_dir(&self, name: &str) -> Result<PathBuf, Error> {
        check_file_name(name, "Secret name")?;
        Ok(self.cfg.work_dir.join("tls").join(name))
    }

    /// Deletes a pod's volume (its data directory).
    fn delete_volume(&self, pod: &str) -> Result<(), Error> {
        let dir = self.data_dir(pod);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(Error::io(format!("deleting {}", dir.display())))?;
        }
        Ok(())
    }

    fn pid_file(&self, pod: &str) -> PathBuf {
        self.cfg.work_dir.join("pods").join(format!("{pod}.json"))
    }

    fn save_controller(&self, c: &Controller) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(c)
            .map_err(|e| Error::Workload(format!("encoding workload.json: {e}")))?;
        write_atomic(&self.cfg.work_dir.join("workload.json"), text.as_bytes())
    }

    /// Creates pod `ordinal` from the controller's template and revision.
    async fn create(&self, c: &Controller, ordinal: u32) -> Result<Pod, Error> {
        let name = build::pod_name(&c.template, ordinal);
        let addr = self.addr(&c.template, ordinal);
        let data_dir = self.data_dir(&name);
        let mut env = match &self.cfg.runtime {
            PodRuntime::Processes { .. } => {
                build::node_env(&c.template, &addr, &addr, &data_dir.display().to_string())
            }
            PodRuntime::Containers(_) => build::node_env(
                &c.template,
                &format!("0.0.0.0:{}", build::NODE_PORT),
                &addr,
                build::DATA_DIR,
            ),
        }
        .map_err(|e| Error::Workload(e.to_string()))?;
        // Its own files of the members' Secret, by its name (nothing
        // expands `$(POD_NAME)` here).
        let tls_secret = tls::pods_secret_name(&c.template);
        if let Some(secret) = &tls_secret {
            let dir = match &self.cfg.runtime {
                PodRuntime::Processes { .. } => self.secret_dir(secret)?.display().to_string(),
                PodRuntime::Containers(_) => tls::TLS_DIR.to_string(),
            };
            env.extend(tls::pod_tls_env(&dir, &name).map_err(|e| Error::Workload(e.to_string()))?);
        }
        let pod = Pod {
            name,
            revision: c.revision.clone(),
            image: c.template.spec.image.clone(),
            container: self.container(&c.template, ordinal),
            env,
            tls_secret,
            proc: None,
            restart_at: None,
            exits: 0,
        };
        self.run(pod).await
    }

    /// The name of pod `ordinal`'s container (containers only).
    fn container(&self, rc: &RaftCluster, ordinal: u32) -> Option<String> {
        match &self.cfg.runtime {
            PodRuntime::Processes { .. } => None,
            PodRuntime::Containers(d) => Some(d.pod_host(rc, ordinal)),
        }
    }

    /// Starts a pod's node: its process, or the `docker run` of its
    /// container (after removing a container left from before).
    async fn run(&self, mut pod: Pod) -> Result<Pod, Error> {
        let name = pod.name.clone();
        let data_dir = self.data_dir(&name);
        std::fs::create_dir_all(&data_dir)
            .map_err(Error::io(format!("creating {}", data_dir.display())))?;
        let log_path = self.cfg.work_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Error::io(format!("opening {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(Error::io(format!("opening {}", log_path.display())))?;
        let (mut cmd, what) = match (&self.cfg.runtime, &pod.container) {
            (PodRuntime::Containers(d), Some(host)) => {
                d.own_for_pods(&data_dir)?;
                d.remove_container(host).await;
                let tls_dir = pod
                    .tls_secret
                    .as_deref()
                    .map(|s| self.secret_dir(s))
                    .transpose()?;
                let cmd = d.run_command(
                    &pod.image,
                    host,
                    &name,
                    &pod.env,
                    &data_dir,
                    tls_dir.as_deref(),
                    &self.cfg.work_dir,
                );
                (cmd, format!("docker run {}", pod.image))
            }
            (PodRuntime::Processes { node_binary, .. }, _) => {
                let mut cmd = tokio::process::Command::new(node_binary);
                cmd.envs(pod.env.iter().map(|(k, v)| (k, v)));
                (cmd, node_binary.display().to_string())
            }
            (PodRuntime::Containers(_), None) => {
                return Err(Error::Workload(format!("pod {name} has no container name")))
            }
        };
        // Only the pod's own settings: none leak in from the operator's
        // environment (set ones win over these removals).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RAFTKIT_")
                && !pod.env.iter().any(|(e, _)| k.to_str() == Some(e.as_str()))
            {
                cmd.env_remove(k);
            }
        }
        cmd.env(POD_MARKER, &data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Its own process group: a Ctrl-C in the operator's terminal
            // reaches the operator, which stops the pods in order.
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(Error::io(format!("starting {what} for pod {name}")))?;
        let proc = Proc::Child(child);
        if let Some(pid) = proc.pid() {
            let pf = serde_json::to_string(&PidFile {
                pid,
                revision: pod.revision.clone(),
                image: pod.image.clone(),
                env: pod.env.clone(),
                tls_secret: pod.tls_secret.clone(),
            })
            .map_err(|e| Error::Workload(e.to_string()))?;
            write_atomic(&self.pid_file(&name), pf.as_bytes())?;
        }
        tracing::info!(pod = %name, revision = %pod.revision, "pod started");
        pod.proc = Some(proc);
        pod.restart_at = None;
        Ok(pod)
    }

    /// Stops a pod's process: SIGTERM, then SIGKILL after the grace period.
    async fn stop(&self, pod: &mut Pod) {
        let Some(mut proc) = pod.proc.take() else {
            return;
        };
        if let Some(pid) = proc.pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + self.cfg.grace;
            while proc.exited().is_none() {
                if Instant::now() >= deadline {
                    tracing::warn!(pod = %pod.name, "did not stop within the grace period; killing it");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    if let (PodRuntime::Containers(d), Some(host)) =
                        (&self.cfg.runtime, &pod.container)
                    {
                        // SIGKILL is not passed on to the container.
                        d.remove_container(host).await;
                    }
                    let hard = Instant::now() + Duration::from_secs(5);
                    while proc.exited().is_none() && Instant::now() < hard {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = std::fs::remove_file(self.pid_file(&pod.name));
    }

    /// What a kubelet does between passes: start missing pods, start again
    /// those whose process exited (after a back-off).
    async fn supervise(&self, state: &mut State) -> Result<(), Error> {
        let Some(c) = state.controller.clone() else {
            return Ok(());
        };
        self.prepare().await?;
        for ordinal in 0..c.replicas {
            let Some(mut pod) = state.pods.remove(&ordinal) else {
                let pod = self.create(&c, ordinal).await?;
                state.pods.insert(ordinal, pod);
                continue;
            };
            if let Some(why) = pod.proc.as_mut().and_then(Proc::exited) {
                pod.proc = None;
                pod.exits += 1;
                let backoff = Duration::from_secs(u64::from(pod.exits.min(5)));
                pod.restart_at = Some(Instant::now() + backoff);
                tracing::warn!(pod = %pod.name, status = %why, ?backoff, "pod's node exited; starting it again");
                eprintln!(
                    "pod {} exited ({why}); starting it again in {}s (log: {})",
                    pod.name,
                    backoff.as_secs(),
                    self.cfg
                        .work_dir
                        .join(format!("{}.log", pod.name))
                        .display()
                );
            }
            let due = pod.proc.is_none() && pod.restart_at.is_none_or(|t| Instant::now() >= t);
            if pod.container.is_none() {
                pod.container = self.container(&c.template, ordinal);
            }
            let pod = if due { self.run(pod).await? } else { pod };
            state.pods.insert(ordinal, pod);
        }
        Ok(())
    }

    /// Stops every pod this backend runs (Ctrl-C).
    pub async fn stop_all(&self) {
        let mut state = self.state.lock().await;
        let mut pods: Vec<Pod> = std::mem::take(&mut state.pods).into_values().collect();
        // SIGTERM to all at once, then wait for each.
        for p in &pods {
            if let Some(pid) = p.proc.as_ref().and_then(Proc::pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for p in &mut pods {
            self.stop(p).await;
        }
        if let PodRuntime::Containers(d) = &self.cfg.runtime {
            d.remove_network().await;
        }
    }

    /// The pids of running pods, by name (tests stop and kill pods with them).
    pub async fn pids(&self) -> BTreeMap<String, i32> {
        let state = self.state.lock().await;
        state
            .pods
            .values()
            .filter_map(|p| Some((p.name.clone(), p.proc.as_ref()?.pid()?)))
            .collect()
    }
}

/// Takes the work directory's lock: two operators acting on the same pods
/// would fight over them (each restarting what the other stops).
fn lock_work_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, Error> {
    use std::io::{Read, Seek};
    let path = dir.join("operator.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(Error::io(format!("opening {}", path.display())))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut held) => {
            // Who holds it, for the next one's error message.
            let _ = held.set_len(0);
            let _ = held.seek(std::io::SeekFrom::Start(0));
            let _ = writeln!(held, "{}", std::process::id());
            Ok(held)
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(Error::Workload(format!(
                "another raftkit-operator (pid {}) runs on {}; stop it first, or pick another --work-dir",
                pid.trim(),
                dir.display()
            )))
        }
    }
}

/// `name` can be one file name (a Secret's, or one of its keys): no path
/// separator, not `.` or `..`, no leading dot (files being written are
/// hidden that way).
fn check_file_name(name: &str, what: &str) -> Result<(), Error> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        return Err(Error::Workload(format!(
            "{what} {name:?} cannot be a local file name"
        )));
    }
    Ok(())
}

/// Writes `bytes` to `dir/key` whole: to a hidden file beside it (mode
/// 0600), then renamed over it, so a reader sees the old file or the new
/// one, never a part.
fn write_secret_file(dir: &Path, key: &str, bytes: &[u8]) -> Result<PathBuf, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(key);
    let tmp = dir.join(format!(".{key}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(format!("writing {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(Error::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(format!("renaming to {}", path.display())))?;
    Ok(path)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(Error::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("renaming to {}", path.display())))
}

impl Workload for LocalBackend {
    async fn observe(&self, _rc: &RaftCluster) -> Result<Option<WorkloadState>, Error> {
        let mut state = self.state.lock().await;
        self.supervise(&mut state).await?;
        let Some(c) = state.controller.clone() else {
            return Ok(None);
        };
        let highest = state.pods.keys().next_back().map_or(0, |o| o + 1);
        let mut pods = Vec::new();
        for ordinal in 0..c.replicas.max(highest) {
            let addr = self.addr(&c.template, ordinal);
            let (phase, running, revision) = match state.pods.get_mut(&ordinal) {
                Some(p) if p.proc.is_some() => (PodPhase::Running, true, Some(p.revision.clone())),
                Some(p) => (PodPhase::Pending, false, Some(p.revision.clone())),
                None => (PodPhase::Missing, false, None),
            };
            pods.push(PodState {
                ordinal,
                name: build::pod_name(&c.template, ordinal),
                addr,
                phase,
                running,
                revision,
                ready: false,
            });
        }
        drop(state);
        // Readiness probes, all at once.
        let probes = pods.iter().map(|p| async move {
            if !p.running {
                return false;
            }
            matches!(
                tokio::time::timeout(
                    Duration::from_secs(1),
                    raftkit_client::probe::probe(&p.addr, "/readyz")
                )
                .await,
                Ok(Ok((200, _)))
            )
        });
        let ready = futures::future::join_all(probes).await;
        for (p, r) in pods.iter_mut().zip(ready) {
            p.ready = r;
        }
        Ok(Some(WorkloadState {
            replicas: c.replicas,
            revision: c.revision,
            pods,
            // Nothing is kept outside the pods here (no NetworkPolicy).
            drifted: None,
        }))
    }

    async fn apply(&self, rc: &RaftCluster, replicas: u32, revision: &str) -> Result<(), Error> {
        // No NetworkPolicy here: processes on loopback and containers on a
        // network of their own have nothing that would enforce one, so
        // `spec.networkPolicy` is ignored.
        if let PodRuntime::Containers(_) = &self.cfg.runtime {
            docker::check_image(&rc.spec.image).await?;
        }
        let mut state = self.state.lock().await;
        let mut template = rc.clone();
        template.status = None;
        let c = Controller {
            replicas,
            revision: revision.to_string(),
            template,
        };
        self.save_controller(&c)?;
        state.controller = Some(c);
        self.supervise(&mut state).await
    }

    async fn restart_pod(&self, _rc: &RaftCluster, pod: &str) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        let Some((&ordinal, _)) = state.pods.iter().find(|(_, p)| p.name == pod) else {
            return Ok(()); // already gone: the controller recreates it
        };
        if let Some(mut p) = state.pods.remove(&ordinal) {
            self.stop(&mut p).await;
        }
        self.supervise(&mut state).await
    }

    async fn wipe_pod(&self, _rc: &RaftCluster, pod: &str) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        if let Some((&ordinal, _)) = state.pods.iter().find(|(_, p)| p.name == pod) {
            if let Some(mut p) = state.pods.remove(&ordinal) {
                self.stop(&mut p).await;
            }
        }
        self.delete_volume(pod)?;
        self.supervise(&mut state).await
    }

    async fn shrink(
        &self,
        _rc: &RaftCluster,
        replicas: u32,
        delete_volumes: bool,
    ) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        let Some(mut c) = state.controller.clone() else {
            return Ok(());
        };
        c.replicas = replicas;
        self.save_controller(&c)?;
        state.controller = Some(c);
        let gone: Vec<u32> = state.pods.range(replicas..).map(|(o, _)| *o).collect();
        for ordinal in gone {
            if let Some(mut p) = state.pods.remove(&ordinal) {
                self.stop(&mut p).await;
                if delete_volumes {
                    self.delete_volume(&p.name)?;
                }
            }
        }
        Ok(())
    }

    fn pod_addr(&self, rc: &RaftCluster, ordinal: u32) -> String {
        self.addr(rc, ordinal)
    }

    /// Secrets are files the pods read in place (bind-mounted into
    /// containers); a node looks at its files once a second.
    fn secret_propagation(&self) -> Duration {
        Duration::from_secs(3)
    }

    async fn read_secret(&self, rc: &RaftCluster, name: &str) -> Result<Option<Secret>, Error> {
        let dir = self.secret_dir(name)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()))(e)),
        };
        let mut data = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("reading {}", dir.display())))?;
            let key = entry.file_name().to_string_lossy().to_string();
            if key.starts_with('.') || !entry.path().is_file() {
                continue; // a file being written
            }
            let bytes = std::fs::read(entry.path())
                .map_err(Error::io(format!("reading {}", entry.path().display())))?;
            data.insert(key, ByteString(bytes));
        }
        Ok(Some(Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: rc.metadata.namespace.clone(),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..Secret::default()
        }))
    }

    async fn apply_secret(&self, rc: &RaftCluster, secret: &Secret) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        let name = secret
            .metadata
            .name
            .as_deref()
            .ok_or_else(|| Error::Workload("a Secret without a name".into()))?;
        let dir = self.secret_dir(name)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io(format!("creating {}", dir.display())))?;
        let containers = match &self.cfg.runtime {
            PodRuntime::Containers(d) => Some(d),
            PodRuntime::Processes { .. } => None,
        };
        if let Some(d) = containers {
            d.own_for_pods(&dir)?;
        }
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let current = self.read_secret(rc, name).await?.and_then(|s| s.data);
        for (key, value) in data {
            check_file_name(key, &format!("Secret {name}: key"))?;
            // Unchanged files stay as they are: a node reloads only what
            // changed.
            if current.as_ref().and_then(|c| c.get(key)) == Some(value) {
                continue;
            }
            let path = write_secret_file(&dir, key, &value.0)?;
            if let Some(d) = containers {
                d.own_for_pods(&path)?;
            }
        }
        for key in current.iter().flat_map(|c| c.keys()) {
            if !data.contains_key(key) {
                let path = dir.join(key);
                std::fs::remove_file(&path)
                    .map_err(Error::io(format!("removing {}", path.display())))?;
            }
        }
        Ok(())
    }

    async fn write_status(
        &self,
        rc: &RaftCluster,
        status: &RaftClusterStatus,
    ) -> Result<(), Error> {
        let mut obj = rc.clone();
        obj.status = Some(status.clone());
        let text = serde_yaml::to_string(&obj)
            .map_err(|e| Error::Workload(format!("encoding status.yaml: {e}")))?;
        write_atomic(&self.cfg.work_dir.join("status.yaml"), text.as_bytes())
    }

    async fn event(
        &self,
        rc: &RaftCluster,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), Error> {
        let path = self.cfg.work_dir.join("events.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(format!("opening {}", path.display())))?;
        writeln!(
            f,
            "{} {} {} raftcluster/{}: {}",
            // Milliseconds: the benchmark times steps from these lines.
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            kind.as_str(),
            reason,
            build::cluster_name(rc),
            message
        )
        .map_err(Error::io(format!("writing {}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operator_per_work_directory() {
        let d = tempfile::tempdir().expect("tempdir");
        let cfg = LocalConfig {
            work_dir: d.path().to_path_buf(),
            runtime: PodRuntime::Processes {
                base_port: 20000,
                node_binary: PathBuf::from("/nonexistent"),
            },
            grace: Duration::from_secs(1),
        };
        let first = LocalBackend::open(cfg.clone()).expect("the first opens");
        let Err(e) = LocalBackend::open(cfg.clone()) else {
            panic!("a second operator on the same work directory was let in");
        };
        let msg = e.to_string();
        assert!(
            msg.contains("another raftkit-operator")
                && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(first);
        LocalBackend::open(cfg).expect("free again once the first stopped");
    }
}
