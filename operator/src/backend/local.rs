//! The local workload: pods as `raftkit-node` processes on this machine,
//! with what a StatefulSet and a kubelet give a pod on Kubernetes.
//!
//! - Pod `<name>-<i>` listens on `127.0.0.1:<base-port + i>` (its stable
//!   address) with its data in `<work-dir>/<name>-<i>` (its volume) and its
//!   output in `<work-dir>/<name>-<i>.log`; its settings come as environment
//!   variables from the node's settings table, as in a pod.
//! - A pod whose process exits is started again after a back-off, like a
//!   kubelet restarts a container. Deleting a pod (a restart) stops it with
//!   SIGTERM, which makes the node hand its leadership over, then SIGKILL
//!   after the grace period; it comes back from the current revision.
//! - The "StatefulSet" (replicas, revision, the spec pods start from) and
//!   each pod's pid are kept in `<work-dir>/workload.json` and
//!   `<work-dir>/pods/`, so an operator that was stopped or killed finds its
//!   pods still running and adopts them, as one restarted on Kubernetes does.
//! - Status goes to `<work-dir>/status.yaml` (the whole resource, as
//!   `kubectl get -o yaml` shows it), Events to `<work-dir>/events.log`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{EventType, PodState, Workload, WorkloadState};
use crate::build;
use crate::crd::{RaftCluster, RaftClusterStatus};
use crate::plan::PodPhase;
use crate::Error;

/// Where and how local pods run.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Data, logs, status and events.
    pub work_dir: PathBuf,
    /// Pod `i` listens on `base_port + i`.
    pub base_port: u16,
    /// The `raftkit-node` binary pods run.
    pub node_binary: PathBuf,
    /// How long a stopping node may take before SIGKILL (Kubernetes'
    /// `terminationGracePeriodSeconds`).
    pub grace: Duration,
}

/// The local backend (see the module docs).
pub struct LocalBackend {
    cfg: LocalConfig,
    state: Mutex<State>,
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
    /// The node's environment: a process that exits is started again with
    /// it (a kubelet restarts a container of the same pod; only a deleted
    /// pod comes back from the controller's newer revision).
    env: Vec<(String, String)>,
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
    env: Vec<(String, String)>,
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

/// `pid` is a node of ours: its environment names `data_dir`.
fn is_our_node(pid: i32, data_dir: &Path) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!(
        "{}={}",
        raftkit_proto::settings::setting("data_dir").map_or("RAFTKIT_DATA_DIR", |s| s.env),
        data_dir.display()
    );
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
                            env: pf.env,
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
            _lock: lock,
        })
    }

    fn addr(&self, ordinal: u32) -> String {
        format!("127.0.0.1:{}", u32::from(self.cfg.base_port) + ordinal)
    }

    fn data_dir(&self, pod: &str) -> PathBuf {
        self.cfg.work_dir.join(pod)
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
    fn create(&self, c: &Controller, ordinal: u32) -> Result<Pod, Error> {
        let name = build::pod_name(&c.template, ordinal);
        let addr = self.addr(ordinal);
        let data_dir = self.data_dir(&name);
        let env = build::node_env(&c.template, &addr, &addr, &data_dir.display().to_string())
            .map_err(|e| Error::Workload(e.to_string()))?;
        self.run(name, c.revision.clone(), env, 0)
    }

    /// Starts a pod's node process.
    fn run(
        &self,
        name: String,
        revision: String,
        env: Vec<(String, String)>,
        exits: u32,
    ) -> Result<Pod, Error> {
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
        let mut cmd = tokio::process::Command::new(&self.cfg.node_binary);
        // Only the pod's own settings: none leak in from the operator's
        // environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RAFTKIT_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Its own process group: a Ctrl-C in the operator's terminal
            // reaches the operator, which stops the pods in order.
            .process_group(0);
        let child = cmd.spawn().map_err(Error::io(format!(
            "starting {} for pod {name}",
            self.cfg.node_binary.display()
        )))?;
        let proc = Proc::Child(child);
        if let Some(pid) = proc.pid() {
            let pf = serde_json::to_string(&PidFile {
                pid,
                revision: revision.clone(),
                env: env.clone(),
            })
            .map_err(|e| Error::Workload(e.to_string()))?;
            write_atomic(&self.pid_file(&name), pf.as_bytes())?;
        }
        tracing::info!(pod = %name, revision = %revision, "pod started");
        Ok(Pod {
            name,
            revision,
            env,
            proc: Some(proc),
            restart_at: None,
            exits,
        })
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
    fn supervise(&self, state: &mut State) -> Result<(), Error> {
        let Some(c) = state.controller.clone() else {
            return Ok(());
        };
        for ordinal in 0..c.replicas {
            let Some(pod) = state.pods.get_mut(&ordinal) else {
                let pod = self.create(&c, ordinal)?;
                state.pods.insert(ordinal, pod);
                continue;
            };
            let due = {
                {
                    if let Some(proc) = pod.proc.as_mut() {
                        if let Some(why) = proc.exited() {
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
                    }
                    pod.proc.is_none() && pod.restart_at.is_none_or(|t| Instant::now() >= t)
                }
            };
            if due {
                let (name, revision, env, exits) = (
                    pod.name.clone(),
                    pod.revision.clone(),
                    pod.env.clone(),
                    pod.exits,
                );
                let pod = self.run(name, revision, env, exits)?;
                state.pods.insert(ordinal, pod);
            }
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

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(Error::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("renaming to {}", path.display())))
}

impl Workload for LocalBackend {
    async fn observe(&self, _rc: &RaftCluster) -> Result<Option<WorkloadState>, Error> {
        let mut state = self.state.lock().await;
        self.supervise(&mut state)?;
        let Some(c) = state.controller.clone() else {
            return Ok(None);
        };
        let highest = state.pods.keys().next_back().map_or(0, |o| o + 1);
        let mut pods = Vec::new();
        for ordinal in 0..c.replicas.max(highest) {
            let addr = self.addr(ordinal);
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
        }))
    }

    async fn apply(&self, rc: &RaftCluster, replicas: u32, revision: &str) -> Result<(), Error> {
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
        self.supervise(&mut state)
    }

    async fn restart_pod(&self, _rc: &RaftCluster, pod: &str) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        let Some((&ordinal, _)) = state.pods.iter().find(|(_, p)| p.name == pod) else {
            return Ok(()); // already gone: the controller recreates it
        };
        if let Some(mut p) = state.pods.remove(&ordinal) {
            self.stop(&mut p).await;
        }
        self.supervise(&mut state)
    }

    async fn wipe_pod(&self, _rc: &RaftCluster, pod: &str) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        if let Some((&ordinal, _)) = state.pods.iter().find(|(_, p)| p.name == pod) {
            if let Some(mut p) = state.pods.remove(&ordinal) {
                self.stop(&mut p).await;
            }
        }
        self.delete_volume(pod)?;
        self.supervise(&mut state)
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
            base_port: 20000,
            node_binary: PathBuf::from("/nonexistent"),
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
