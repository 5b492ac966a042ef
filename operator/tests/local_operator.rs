//! `raftkit-operator local` end to end: the real binary reconciles a
//! RaftCluster manifest with pods as real `raftkit-node` processes (or, in
//! the last test, containers of our image on a Docker network), while a
//! client writes all along and its history is checked (no acknowledged
//! increment lost or doubled, real-time order kept). The tests edit the
//! manifest, kill pods and the operator, and read `status.yaml` and
//! `events.log` as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use raftkit_client::ClusterClient;
use raftkit_operator::backend::docker::{DockerConfig, DockerResolver};
use raftkit_operator::crd::{RaftCluster, RaftClusterStatus};
use raftkit_testkit::docker;
use raftkit_testkit::load::CounterLoad;
use raftkit_testkit::procs::node_binary;
use raftkit_tls::{Tls, TlsFiles};

/// `n` consecutive free ports on 127.0.0.1, below the ephemeral range.
fn free_port_range(n: u16) -> u16 {
    loop {
        let base = rand::random_range(20_000..32_000u16);
        let held: Vec<_> = (base..base + n)
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
}

/// What the operator runs pods as.
enum Pods {
    /// Processes on 127.0.0.1:<base port + i>.
    Processes { base_port: u16 },
    /// Containers of `image` on the work directory's Docker network.
    Containers { image: String, docker: DockerConfig },
}

/// One operator process, its manifest and work directory, and the pods it
/// runs (all stopped on drop).
struct Operator {
    dir: tempfile::TempDir,
    pods: Pods,
    /// The manifest asks for mutual TLS (`tls: {enabled: true}`).
    tls: bool,
    /// ... with this `certificateLifetimeSecs`.
    cert_lifetime_secs: Option<u64>,
    child: Option<Child>,
    runs: u32,
}

impl Operator {
    fn start(replicas: u32) -> Operator {
        Operator::start_with(
            replicas,
            Pods::Processes {
                base_port: free_port_range(9),
            },
        )
    }

    /// With pods as containers of `image`; this test process resolves
    /// their names as the operator does. `tls`: the manifest asks for
    /// mutual TLS.
    fn start_in_containers(replicas: u32, image: String, tls: bool) -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let docker = DockerConfig::for_work_dir(&work.canonicalize().unwrap());
        DockerResolver::install(&docker.network);
        Operator::start_as(dir, replicas, Pods::Containers { image, docker }, tls)
    }

    fn start_with(replicas: u32, pods: Pods) -> Operator {
        Operator::start_as(tempfile::tempdir().unwrap(), replicas, pods, false)
    }

    /// Processes, the manifest asking for mutual TLS.
    fn start_with_tls(replicas: u32) -> Operator {
        let pods = Pods::Processes {
            base_port: free_port_range(9),
        };
        Operator::start_as(tempfile::tempdir().unwrap(), replicas, pods, true)
    }

    /// Processes over mutual TLS with certificates valid `secs` seconds.
    fn start_with_short_certificates(replicas: u32, secs: u64) -> Operator {
        let mut op = Operator {
            dir: tempfile::tempdir().unwrap(),
            pods: Pods::Processes {
                base_port: free_port_range(9),
            },
            tls: true,
            cert_lifetime_secs: Some(secs),
            child: None,
            runs: 0,
        };
        op.write_manifest(replicas, None, false);
        op.launch();
        op
    }

    fn start_as(dir: tempfile::TempDir, replicas: u32, pods: Pods, tls: bool) -> Operator {
        let mut op = Operator {
            dir,
            pods,
            tls,
            cert_lifetime_secs: None,
            child: None,
            runs: 0,
        };
        op.write_manifest(replicas, None, false);
        op.launch();
        op
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("rc.yaml")
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn write_manifest(&self, replicas: u32, restarted_at: Option<&str>, paused: bool) {
        let annotations: Vec<_> = restarted_at
            .map(|r| ("raftkit.io/restartedAt", r))
            .into_iter()
            .collect();
        self.write_manifest_with(replicas, &annotations, paused);
    }

    /// The manifest with these annotations on the RaftCluster.
    fn write_manifest_with(&self, replicas: u32, annotations: &[(&str, &str)], paused: bool) {
        let annotations = if annotations.is_empty() {
            String::new()
        } else {
            let lines: String = annotations
                .iter()
                .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
                .collect();
            format!("  annotations:\n{lines}")
        };
        let image = match &self.pods {
            Pods::Processes { .. } => String::new(),
            Pods::Containers { image, .. } => format!("  image: {image}\n"),
        };
        let tls = match (self.tls, self.cert_lifetime_secs) {
            (false, _) => String::new(),
            (true, None) => "  tls: {enabled: true}\n".into(),
            (true, Some(l)) => format!("  tls: {{enabled: true, certificateLifetimeSecs: {l}}}\n"),
        };
        let text = format!(
            "apiVersion: raftkit.io/v1alpha1\nkind: RaftCluster\nmetadata:\n  name: demo\n{annotations}spec:\n  replicas: {replicas}\n{image}  paused: {paused}\n  raft: {{electionTimeoutMs: 500}}\n{tls}"
        );
        let tmp = self.dir.path().join("rc.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.manifest()).unwrap();
    }

    fn launch(&mut self) {
        self.runs += 1;
        let out =
            std::fs::File::create(self.dir.path().join(format!("operator-{}.out", self.runs)))
                .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftkit-operator"));
        cmd.args(["local", "--manifest"])
            .arg(self.manifest())
            .arg("--work-dir")
            .arg(self.work());
        match &self.pods {
            Pods::Processes { base_port } => {
                cmd.args(["--base-port", &base_port.to_string()])
                    .arg("--node-binary")
                    .arg(node_binary());
            }
            Pods::Containers { .. } => {
                cmd.args(["--backend", "docker"]);
            }
        }
        let child = cmd
            .args(["--interval-ms", "200", "--grace-secs", "10"])
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill_operator(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn output(&self) -> String {
        (1..=self.runs)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("operator-{i}.out")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("--- restarted ---\n")
    }

    /// Pod `ordinal`'s address.
    fn addr(&self, ordinal: u16) -> String {
        match &self.pods {
            Pods::Processes { base_port } => format!("127.0.0.1:{}", base_port + ordinal),
            Pods::Containers { docker, .. } => format!(
                "demo-{ordinal}.demo-peers.{}:{}",
                docker.network,
                raftkit_operator::build::NODE_PORT
            ),
        }
    }

    fn addrs(&self, n: u16) -> Vec<String> {
        (0..n).map(|i| self.addr(i)).collect()
    }

    /// Kills pod `pod`'s node at once (SIGKILL; as a container, `docker
    /// kill`, which its supervising `docker run` reports as an exit).
    fn kill_pod(&self, pod: &str) {
        match &self.pods {
            Pods::Processes { .. } => {
                kill(Pid::from_raw(self.pid(pod).unwrap()), Signal::SIGKILL).unwrap();
            }
            Pods::Containers { docker, .. } => {
                let host = format!("{pod}.demo-peers.{}", docker.network);
                docker::docker(&["kill", &host]).unwrap();
            }
        }
    }

    /// Pod `pod`'s container's IP address now (containers only).
    fn container_ip(&self, pod: &str) -> Option<String> {
        let Pods::Containers { docker, .. } = &self.pods else {
            return None;
        };
        let host = format!("{pod}.demo-peers.{}", docker.network);
        docker::docker(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &host,
        ])
        .ok()
        .filter(|ip| !ip.is_empty())
    }

    fn client(&self) -> Arc<ClusterClient> {
        Arc::new(ClusterClient::new(self.addrs(9), "counter", Duration::from_secs(15)).unwrap())
    }

    /// A Secret's files, as the local backend keeps them.
    fn secret_dir(&self, secret: &str) -> PathBuf {
        self.work().join("tls").join(secret)
    }

    /// A client with the applications' certificate the operator issued
    /// (`<work-dir>/tls/demo-tls-client/`), as a user would load it.
    fn tls_client(&self) -> Arc<ClusterClient> {
        let dir = self.secret_dir("demo-tls-client");
        let tls = Tls::load(TlsFiles {
            cert: Some(dir.join("tls.crt")),
            key: Some(dir.join("tls.key")),
            ca: dir.join("ca.crt"),
        })
        .unwrap();
        Arc::new(
            ClusterClient::new(self.addrs(9), "counter", Duration::from_secs(15))
                .unwrap()
                .with_tls(tls),
        )
    }

    fn status(&self) -> Option<RaftClusterStatus> {
        let text = std::fs::read_to_string(self.work().join("status.yaml")).ok()?;
        let rc: RaftCluster = serde_yaml::from_str(&text).ok()?;
        rc.status
    }

    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.work().join("events.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn pid(&self, pod: &str) -> Option<i32> {
        let text =
            std::fs::read_to_string(self.work().join("pods").join(format!("{pod}.json"))).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["pid"].as_i64().and_then(|p| i32::try_from(p).ok())
    }

    /// The leader's pod, as the members say now (the status may lag).
    async fn leader_pod(&self, client: &ClusterClient) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = client.cluster_status().await;
            if let Some(l) = st.leader {
                let ordinal = (0..9).find(|&i| self.addr(i) == l.addr).unwrap();
                return format!("demo-{ordinal}");
            }
            assert!(Instant::now() < deadline, "no leader: {st:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the status satisfies `cond`; fails with the status, the
    /// operator's output and the events otherwise.
    async fn wait_status(
        &self,
        within: Duration,
        what: &str,
        cond: impl Fn(&RaftClusterStatus) -> bool,
    ) -> RaftClusterStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.status() {
                if cond(&s) {
                    return s;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not within {within:?}\nstatus: {:#?}\noperator output:\n{}\nevents:\n{}",
                    self.status(),
                    self.output(),
                    self.events().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_running(&self, members: usize, what: &str) -> RaftClusterStatus {
        self.wait_status(Duration::from_secs(60), what, |s| {
            s.phase == "Running"
                && s.members.len() == members
                && s.members.iter().all(|m| m.voter && m.healthy)
                && s.current_revision == s.update_revision
        })
        .await
    }

    /// A follower's node dies and its volume is lost while it is down: it
    /// comes back as another replica, and the operator replaces the member
    /// (removes the old raft id, adds the new one) within `within`.
    async fn lose_a_followers_disk(&self, client: &ClusterClient, within: Duration) {
        let leader = self.leader_pod(client).await;
        let s = self.status().unwrap();
        let victim = s.members.iter().find(|m| m.pod != leader).unwrap().clone();
        self.kill_pod(&victim.pod);
        std::fs::remove_dir_all(self.work().join(&victim.pod)).unwrap();
        let s = self
            .wait_status(within, "the member to be replaced", |s| {
                s.phase == "Running"
                    && s.members.len() == 3
                    && s.members.iter().all(|m| m.voter && m.healthy)
                    && s.members
                        .iter()
                        .any(|m| m.pod == victim.pod && m.raft_id != victim.raft_id)
            })
            .await;
        assert!(!s.members.iter().any(|m| m.raft_id == victim.raft_id));
        self.wait_event(Duration::from_secs(1), "the replacement's removal", |e| {
            e.contains(" RemoveMember ") && e.contains(&victim.raft_id)
        })
        .await;
    }

    async fn wait_event(&self, within: Duration, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + within;
        while !self.events().iter().any(|e| pred(e)) {
            assert!(
                Instant::now() < deadline,
                "{what}: no such event within {within:?}; events:\n{}\noutput:\n{}",
                self.events().join("\n"),
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill_operator();
        // The pods run in their own process groups and outlive a killed
        // operator (as pods outlive one on Kubernetes): stop them too.
        if let Ok(dir) = std::fs::read_dir(self.work().join("pods")) {
            for e in dir.flatten() {
                let pod = e.path().file_stem().unwrap().to_string_lossy().to_string();
                if let Some(pid) = self.pid(&pod) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        if let Pods::Containers { docker: d, .. } = &self.pods {
            // What a killed operator left: its containers and network.
            let label = format!(
                "label={}={}",
                raftkit_operator::backend::docker::WORK_DIR_LABEL,
                self.work().canonicalize().unwrap_or(self.work()).display()
            );
            if let Ok(ids) = docker::docker(&["ps", "-aq", "--filter", &label]) {
                for id in ids.split_whitespace() {
                    let _ = docker::docker(&["rm", "--force", id]);
                }
            }
            let _ = docker::docker(&["network", "rm", &d.network]);
        }
    }
}

fn available(s: &RaftClusterStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True")
}

/// The pods named by the events of `kind`, in order.
fn pods_of(events: &[String], kind: &str) -> Vec<String> {
    let tag = format!(" Normal {kind} ");
    events
        .iter()
        .filter(|e| e.contains(&tag))
        .filter_map(|e| {
            e.split_whitespace()
                .find(|w| w.starts_with("demo-"))
                .map(|w| w.trim_end_matches([',', ')', ':']).to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_scale_up_scale_down_and_roll_under_load() {
    let op = Operator::start(3);
    let s = op.wait_running(3, "three members after creation").await;
    assert!(available(&s), "Available after creation: {s:#?}");
    assert!(s.bootstrapped && s.cluster_id.is_some());
    assert_eq!(pods_of(&op.events(), "Bootstrap"), ["demo-0"]);

    let client = op.client();
    let load = CounterLoad::start(client.clone(), 4);
    load.wait_for_progress(50, Duration::from_secs(20), "after creation")
        .await;

    op.write_manifest(5, None, false);
    op.wait_running(5, "five members after scaling up").await;
    assert_eq!(
        pods_of(&op.events(), "AddLearner"),
        ["demo-1", "demo-2", "demo-3", "demo-4"]
    );
    assert_eq!(
        pods_of(&op.events(), "Promote"),
        ["demo-1", "demo-2", "demo-3", "demo-4"]
    );
    load.wait_for_progress(50, Duration::from_secs(20), "after scaling up")
        .await;

    op.write_manifest(3, None, false);
    op.wait_running(3, "three members after scaling down").await;
    let removed = pods_of(&op.events(), "RemoveMember");
    assert_eq!(removed, ["demo-4", "demo-3"], "highest ordinal first");
    load.wait_for_progress(50, Duration::from_secs(20), "after scaling down")
        .await;

    let leader_before = op.leader_pod(&client).await;
    let old_revision = op.status().unwrap().update_revision;
    op.write_manifest(3, Some("roll-1"), false);
    op.wait_status(Duration::from_secs(60), "the roll to finish", |s| {
        s.phase == "Running"
            && s.update_revision != old_revision
            && s.current_revision == s.update_revision
            && s.members.iter().all(|m| m.healthy)
            && s.members.len() == 3
    })
    .await;
    let events = op.events();
    let restarted = pods_of(&events, "RestartPod");
    let mut once = restarted.clone();
    once.sort();
    assert_eq!(
        once,
        ["demo-0", "demo-1", "demo-2"],
        "each pod restarted once: {restarted:?}"
    );
    assert_eq!(
        restarted.last(),
        Some(&leader_before),
        "the leader restarts last: {restarted:?}"
    );
    let transfer = events
        .iter()
        .position(|e| e.contains(" TransferLeader "))
        .expect("leadership moved before the leader's restart");
    let last_restart = events
        .iter()
        .rposition(|e| e.contains(" RestartPod "))
        .unwrap();
    assert!(
        transfer < last_restart,
        "transfer before the leader's restart:\n{}",
        events.join("\n")
    );
    load.wait_for_progress(50, Duration::from_secs(20), "after the roll")
        .await;

    // Scaling up again: demo-3 kept its volume (retainOnScaleDown) with the
    // data of a removed member; it starts over empty and joins anew.
    op.write_manifest(4, Some("roll-1"), false);
    op.wait_running(4, "four members after scaling up again")
        .await;
    assert_eq!(pods_of(&op.events(), "WipePod"), ["demo-3"]);
    load.wait_for_progress(50, Duration::from_secs(20), "after scaling up again")
        .await;

    let tally = load.stop().await;
    tally.check(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_roll_and_a_member_that_lost_its_disk_is_replaced() {
    let op = Operator::start(3);
    op.wait_running(3, "three members after creation").await;
    let client = op.client();
    let load = CounterLoad::start(client.clone(), 4);
    load.wait_for_progress(50, Duration::from_secs(20), "after creation")
        .await;

    // A roll starts; at its first restart, the leader's process is killed.
    let old_revision = op.status().unwrap().update_revision;
    op.write_manifest(3, Some("roll-1"), false);
    op.wait_event(Duration::from_secs(30), "the roll's first restart", |e| {
        e.contains(" RestartPod ")
    })
    .await;
    let leader = op.leader_pod(&client).await;
    op.kill_pod(&leader);
    op.wait_status(
        Duration::from_secs(60),
        "the roll to finish after the leader was killed",
        |s| {
            s.phase == "Running"
                && s.update_revision != old_revision
                && s.current_revision == s.update_revision
                && s.members.len() == 3
                && s.members.iter().all(|m| m.voter && m.healthy)
        },
    )
    .await;
    load.wait_for_progress(50, Duration::from_secs(20), "after the roll")
        .await;

    // A follower loses its disk while it is down: it comes back as another
    // replica, and the operator replaces the member.
    op.lose_a_followers_disk(&client, Duration::from_secs(60))
        .await;
    load.wait_for_progress(50, Duration::from_secs(20), "after the replacement")
        .await;
    let tally = load.stop().await;
    tally.check(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_during_scale_up_resumes_without_a_second_add() {
    let mut op = Operator::start(3);
    op.wait_running(3, "three members after creation").await;
    let pod0 = op.pid("demo-0").unwrap();
    let client = op.client();
    let load = CounterLoad::start(client.clone(), 2);

    op.write_manifest(5, None, false);
    op.wait_event(Duration::from_secs(30), "demo-3 added as a learner", |e| {
        e.contains(" AddLearner ") && e.contains("demo-3")
    })
    .await;
    op.kill_operator();
    op.launch();
    op.wait_running(5, "five members after the operator's restart")
        .await;
    let events = op.events();
    assert_eq!(
        pods_of(&events, "AddLearner"),
        ["demo-1", "demo-2", "demo-3", "demo-4"]
    );
    assert_eq!(
        pods_of(&events, "Bootstrap"),
        ["demo-0"],
        "never a second bootstrap"
    );
    assert_eq!(
        op.pid("demo-0"),
        Some(pod0),
        "the restarted operator adopted the running pods"
    );
    load.wait_for_progress(20, Duration::from_secs(20), "after the operator's restart")
        .await;
    let tally = load.stop().await;
    tally.check(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_cluster_takes_no_action_until_resumed() {
    let op = Operator::start(1);
    op.wait_running(1, "one member after creation").await;
    let before = op.events().len();
    op.write_manifest(3, None, true);
    op.wait_status(Duration::from_secs(10), "phase Paused", |s| {
        s.phase == "Paused"
    })
    .await;
    // For a few passes, nothing is done: no new pod, no event.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(
            !Path::new(&op.work().join("pods/demo-1.json")).exists(),
            "a pod started while paused"
        );
        assert_eq!(
            op.events().len(),
            before,
            "an action while paused: {:?}",
            op.events()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    op.write_manifest(3, None, false);
    op.wait_running(3, "three members after resuming").await;
}

/// The same reconciler with pods as containers of our image on a Docker
/// network (`--backend docker`): peers and clients reach each pod by its
/// DNS name while every restart gives it a new container, and with it
/// another IP address. Scale, a roll with its leader killed, and the
/// replacement of a member that lost its disk, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_containers_pods_move_address_while_the_cluster_scales_rolls_and_replaces() {
    let Some(image) = docker::image() else {
        return; // `docker::image` said why (no Docker engine answers).
    };
    let op = Operator::start_in_containers(3, image.clone(), false);
    // Dropped before `op`: its container leaves the network first.
    let scope = docker::DockerScope::new("op-containers");
    let s = op.wait_running(3, "three containers after creation").await;
    assert!(available(&s), "Available after creation: {s:#?}");
    let client = op.client();
    let load = CounterLoad::start(client.clone(), 4);
    load.wait_for_progress(50, Duration::from_secs(30), "after creation")
        .await;

    op.write_manifest(4, None, false);
    op.wait_running(4, "four members after scaling up").await;
    op.write_manifest(3, None, false);
    op.wait_running(3, "three members after scaling down").await;
    assert_eq!(pods_of(&op.events(), "RemoveMember"), ["demo-3"]);
    load.wait_for_progress(50, Duration::from_secs(30), "after scaling")
        .await;

    // A roll: every pod gets a new container. At its first restart the
    // leader's container is killed, and another container takes its IP
    // address at once (Docker hands out the lowest free one, so a pod made
    // again alone would get its old one back): the leader comes back at a
    // new address, known to its peers only by name.
    let ips_before: Vec<_> = (0..3)
        .map(|i| op.container_ip(&format!("demo-{i}")).unwrap())
        .collect();
    let old_revision = op.status().unwrap().update_revision;
    op.write_manifest(3, Some("roll-1"), false);
    op.wait_event(Duration::from_secs(30), "the roll's first restart", |e| {
        e.contains(" RestartPod ")
    })
    .await;
    let leader = op.leader_pod(&client).await;
    let leader_ip = op.container_ip(&leader).unwrap();
    op.kill_pod(&leader);
    let Pods::Containers { docker: d, .. } = &op.pods else {
        unreachable!()
    };
    // A node that joins nothing: it only holds the address.
    let squatter = scope.create(
        "squatter",
        &[
            "--network",
            &d.network,
            &image,
            "--advertise",
            "squatter:8080",
        ],
    );
    docker::docker(&["start", &squatter]).unwrap();
    op.wait_status(Duration::from_secs(90), "the roll to finish", |s| {
        s.phase == "Running"
            && s.update_revision != old_revision
            && s.current_revision == s.update_revision
            && s.members.len() == 3
            && s.members.iter().all(|m| m.voter && m.healthy)
    })
    .await;
    let ips_after: Vec<_> = (0..3)
        .map(|i| op.container_ip(&format!("demo-{i}")).unwrap())
        .collect();
    eprintln!("addresses before the roll {ips_before:?}, after {ips_after:?}");
    let leader_now = op.container_ip(&leader).unwrap();
    assert_ne!(
        leader_now, leader_ip,
        "the killed leader came back at its old address: the test did not exercise what it is for"
    );
    load.wait_for_progress(50, Duration::from_secs(30), "after the roll")
        .await;

    // A follower's container dies and its volume is lost: the operator
    // replaces the member.
    op.lose_a_followers_disk(&client, Duration::from_secs(90))
        .await;
    load.wait_for_progress(50, Duration::from_secs(30), "after the replacement")
        .await;
    let tally = load.stop().await;
    tally.check(&client).await;
}

/// `spec.tls: {enabled: true}` with nothing else: the operator makes a CA,
/// every pod's certificate (naming the address the pod advertises), its
/// own admin certificate and one for applications, each written before
/// the pods that need it start; the members talk mutual TLS, a client with
/// the applications' certificate writes while a plain one is refused, and
/// a pod added by a scale-up gets its certificate first and joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_enabled_the_operator_issues_every_certificate_and_a_new_pod_gets_its_own() {
    let op = Operator::start_with_tls(3);
    let s = op.wait_running(3, "three members over mutual TLS").await;
    assert!(available(&s), "Available: {s:#?}");
    assert_eq!(s.tls_enabled, Some(true));
    let events = op.events();
    let first = |tag: &str| {
        events
            .iter()
            .position(|e| e.contains(tag))
            .unwrap_or_else(|| panic!("no {tag} event:\n{}", events.join("\n")))
    };
    let tls_step = first(" Normal ApplyTls ");
    assert!(
        tls_step < first(" Normal ApplyWorkload "),
        "the Secrets before the pods:\n{}",
        events.join("\n")
    );
    assert!(
        events[tls_step].contains("a new CA")
            && events[tls_step]
                .contains("demo-0, demo-1, demo-2, raftkit-admin, raftkit-client: new"),
        "{}",
        events[tls_step]
    );
    // Each pod's node reads its own files of the members' Secret.
    let nodes = op.secret_dir("demo-tls-nodes");
    let pod: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(op.work().join("pods/demo-1.json")).unwrap())
            .unwrap();
    let env: Vec<(String, String)> = serde_json::from_value(pod["env"].clone()).unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| PathBuf::from(v))
    };
    assert_eq!(var("RAFTKIT_TLS_CERT"), Some(nodes.join("demo-1.crt")));
    assert_eq!(var("RAFTKIT_TLS_KEY"), Some(nodes.join("demo-1.key")));
    assert_eq!(var("RAFTKIT_TLS_CA"), Some(nodes.join("ca.crt")));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(nodes.join("demo-1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "a private key only its owner reads");
    }

    let client = op.tls_client();
    let load = CounterLoad::start(client.clone(), 4);
    load.wait_for_progress(50, Duration::from_secs(20), "over mutual TLS")
        .await;

    // Without a certificate nothing but the probes answers.
    let plain = ClusterClient::new(op.addrs(3), "counter", Duration::from_secs(2)).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), plain.fetch_add(1)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a client without a certificate wrote: {refused:?}"
    );
    assert_eq!(
        raftkit_client::probe::probe(&op.addr(0), "/readyz")
            .await
            .map(|(code, _)| code)
            .ok(),
        Some(200),
        "plain probes still answer"
    );

    // Scale-up: demo-3's certificate is written before its pod starts.
    op.write_manifest(4, None, false);
    op.wait_running(4, "four members after scaling up over TLS")
        .await;
    let events = op.events();
    let issued = events
        .iter()
        .position(|e| e.contains(" Normal ApplyTls ") && e.contains("demo-3: new"))
        .unwrap_or_else(|| panic!("demo-3's certificate:\n{}", events.join("\n")));
    let grown = events
        .iter()
        .position(|e| e.contains(" Normal ApplyWorkload ") && e.contains("4 pods"))
        .unwrap_or_else(|| panic!("the workload grew:\n{}", events.join("\n")));
    assert!(issued < grown, "certificate first:\n{}", events.join("\n"));
    assert_eq!(
        pods_of(&events, "AddLearner").last().map(String::as_str),
        Some("demo-3")
    );
    assert!(nodes.join("demo-3.crt").exists());
    load.wait_for_progress(50, Duration::from_secs(20), "after scaling up")
        .await;
    let tally = load.stop().await;
    tally.check(&client).await;
}

/// A learner added by hand on a node the operator does not run (an address
/// no pod holds): the operator removes it, saying why, and the cluster is
/// its three pods again; a client writes all along and no write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_by_hand_outside_the_pods_is_removed() {
    let op = Operator::start(3);
    op.wait_running(3, "three members").await;
    let client = op.client();
    let load = CounterLoad::start(client.clone(), 2);
    load.wait_for_progress(50, Duration::from_secs(20), "before")
        .await;

    let addr = format!("127.0.0.1:{}", raftkit_testkit::procs::free_ports(1)[0]);
    let dir = tempfile::tempdir().unwrap();
    let _stray = raftkit_testkit::procs::Proc::start(
        &addr,
        &dir.path().join("data"),
        dir.path(),
        &["--state-machine".into(), "counter".into()],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while raftkit_client::probe::probe(&addr, "/livez").await.is_err() {
        assert!(Instant::now() < deadline, "the stray node did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin =
        raftkit_client::AdminClient::new(op.addrs(3), "counter", Duration::from_secs(10)).unwrap();
    admin
        .add_learner(&addr, None)
        .await
        .expect("a learner added by hand");
    op.wait_event(Duration::from_secs(60), "the stray removed", |e| {
        e.contains(" Normal RemoveMember ") && e.contains("no pod of the cluster holds its address")
    })
    .await;
    op.wait_running(3, "the three pods' members again").await;
    let st = admin.cluster_status().await;
    assert!(
        st.voters.iter().chain(&st.learners).all(|m| m.addr != addr),
        "{st:?}"
    );
    load.wait_for_progress(50, Duration::from_secs(20), "after")
        .await;
    load.stop().await.check(&client).await;
}

/// The certificate a member presents to a new connection now (DER).
async fn served_certificate(addr: &str, tls: &Tls) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = raftkit_tls::connect(tls, tcp, addr).await.unwrap();
    let certs = stream.get_ref().1.peer_certificates().unwrap();
    certs[0].as_ref().to_vec()
}

/// A PEM file's first certificate (DER).
fn certificate_in(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .as_ref()
        .to_vec()
}

/// The UNIX time `pem`'s certificate expires.
fn not_after(path: &Path) -> std::time::SystemTime {
    let der = certificate_in(path);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap();
    std::time::UNIX_EPOCH + Duration::from_secs(secs)
}

/// `certificateLifetimeSecs: 60`: every certificate the operator issued
/// is renewed about 40 s after issue while a client with the
/// applications' certificate writes; each member presents its new one to
/// new connections without a restart; once the first certificates have
/// expired, a member killed then comes back and rejoins over new links,
/// and a new client is served. No write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_before_they_expire_and_reloaded_without_a_restart() {
    let op = Operator::start_with_short_certificates(3, 60);
    op.wait_running(3, "three members with one-minute certificates")
        .await;
    let nodes = op.secret_dir("demo-tls-nodes");
    let first: Vec<Vec<u8>> = (0..3)
        .map(|i| certificate_in(&nodes.join(format!("demo-{i}.crt"))))
        .collect();
    let first_expiry = not_after(&nodes.join("demo-0.crt"));
    let pids: Vec<Option<i32>> = (0..3).map(|i| op.pid(&format!("demo-{i}"))).collect();
    let client = op.tls_client();
    let load = CounterLoad::start(client.clone(), 4);
    load.wait_for_progress(50, Duration::from_secs(20), "over mutual TLS")
        .await;

    op.wait_event(Duration::from_secs(60), "the renewal", |e| {
        e.contains(" Normal ApplyTls ")
            && e.contains(
                "demo-0, demo-1, demo-2, raftkit-admin, raftkit-client: renewed (less than a third of its lifetime left)",
            )
    })
    .await;
    let client_dir = op.secret_dir("demo-tls-client");
    let checker = Tls::load(TlsFiles {
        cert: Some(client_dir.join("tls.crt")),
        key: Some(client_dir.join("tls.key")),
        ca: client_dir.join("ca.crt"),
    })
    .unwrap();
    for i in 0..3u16 {
        let file = nodes.join(format!("demo-{i}.crt"));
        let renewed = certificate_in(&file);
        assert_ne!(renewed, first[usize::from(i)], "demo-{i} renewed");
        // The node reloads its files within a second or two.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let served = served_certificate(&op.addr(i), &checker).await;
            if served == certificate_in(&file) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "demo-{i} still presents its first certificate"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let now_pids: Vec<Option<i32>> = (0..3).map(|i| op.pid(&format!("demo-{i}"))).collect();
    assert_eq!(pids, now_pids, "no member restarted for the renewal");
    load.wait_for_progress(50, Duration::from_secs(20), "after the renewal")
        .await;

    // Past the first certificates' expiry: new links and clients work.
    while std::time::SystemTime::now() < first_expiry + Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = op.leader_pod(&client).await;
    let follower = (0..3)
        .map(|i| format!("demo-{i}"))
        .find(|p| *p != leader)
        .unwrap();
    let killed = op.pid(&follower);
    op.kill_pod(&follower);
    op.wait_status(Duration::from_secs(60), "the killed member back", |s| {
        s.phase == "Running"
            && s.members.len() == 3
            && s.members.iter().all(|m| m.healthy)
            && op.pid(&follower).is_some_and(|p| Some(p) != killed)
    })
    .await;
    let fresh = op.tls_client();
    // A read (a write would not be in the load's tally).
    tokio::time::timeout(Duration::from_secs(20), fresh.counter_get())
        .await
        .expect("a new client is served in time")
        .expect("a new client is served");
    load.wait_for_progress(
        50,
        Duration::from_secs(20),
        "after the first certificates expired",
    )
    .await;
    let tally = load.stop().await;
    tally.check(&client).await;
}

/// A client identity from PEM files in `dir` (`tls.crt`, `tls.key`,
/// `ca.crt`), reloaded when they change.
fn identity_in(dir: &Path) -> Arc<Tls> {
    Tls::load(TlsFiles {
        cert: Some(dir.join("tls.crt")),
        key: Some(dir.join("tls.key")),
        ca: dir.join("ca.crt"),
    })
    .unwrap()
}

/// The PEM certificates in `path`, each as DER.
fn certificates_in(path: &Path) -> Vec<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap().as_ref().to_vec())
        .collect()
}

/// `raftkit.io/caRotatedAt` set on a TLS cluster under load: a new CA is
/// trusted beside the old, then signs every certificate anew, then the old
/// one is dropped, each step a few seconds after the last (the local
/// backend's Secret propagation). No member restarts, the client keeps
/// writing (reloading its files), every member presents a certificate of
/// the new CA, a client still holding the old CA's certificate is refused,
/// and no write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_is_rotated_on_request_under_load_without_a_restart() {
    let op = Operator::start_with_tls(3);
    op.wait_running(3, "three members over mutual TLS").await;
    let ca_file = op.secret_dir("demo-tls-nodes").join("ca.crt");
    let old_ca = certificates_in(&ca_file);
    assert_eq!(old_ca.len(), 1);
    // The applications' identity as it is now, kept aside.
    let old_client = op.dir.path().join("old-client");
    std::fs::create_dir_all(&old_client).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::copy(op.secret_dir("demo-tls-client").join(f), old_client.join(f)).unwrap();
    }
    let pids: Vec<Option<i32>> = (0..3).map(|i| op.pid(&format!("demo-{i}"))).collect();
    let client = op.tls_client();
    let load = CounterLoad::start(client.clone(), 4);
    load.wait_for_progress(50, Duration::from_secs(20), "over mutual TLS")
        .await;

    op.write_manifest_with(3, &[("raftkit.io/caRotatedAt", "rotation-1")], false);
    for step in [
        "a new CA trusted beside the old (raftkit.io/caRotatedAt rotation-1)",
        "the new CA signs (the old one still trusted); demo-0, demo-1, demo-2, raftkit-admin, raftkit-client: reissued (another CA signed it)",
        "the old CA is no longer trusted",
    ] {
        op.wait_event(Duration::from_secs(30), step, |e| {
            e.contains(" Normal ApplyTls ") && e.contains(step)
        })
        .await;
    }
    let new_ca = certificates_in(&ca_file);
    assert_eq!(new_ca.len(), 1, "one CA trusted at the end");
    assert_ne!(new_ca, old_ca);
    let checker = identity_in(&op.secret_dir("demo-tls-client"));
    for i in 0..3u16 {
        let file = op
            .secret_dir("demo-tls-nodes")
            .join(format!("demo-{i}.crt"));
        let deadline = Instant::now() + Duration::from_secs(10);
        // Handshaking with the checker, which trusts only the new CA, is
        // itself the proof the member's certificate chains to it.
        while served_certificate(&op.addr(i), &checker).await != certificate_in(&file) {
            assert!(
                Instant::now() < deadline,
                "demo-{i} does not present its new certificate"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let now_pids: Vec<Option<i32>> = (0..3).map(|i| op.pid(&format!("demo-{i}"))).collect();
    assert_eq!(pids, now_pids, "no member restarted for the rotation");
    load.wait_for_progress(50, Duration::from_secs(20), "after the rotation")
        .await;

    let stale = Arc::new(
        ClusterClient::new(op.addrs(3), "counter", Duration::from_secs(2))
            .unwrap()
            .with_tls(identity_in(&old_client)),
    );
    let refused = tokio::time::timeout(Duration::from_secs(10), stale.fetch_add(1)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a client of the old CA wrote: {refused:?}"
    );
    let tally = load.stop().await;
    tally.check(&client).await;
}

/// Mutual TLS with pods as containers: each container mounts the members'
/// Secret's directory read-only where a pod mounts its Secret, and its
/// certificate names its DNS name on the network, by which peers, the
/// operator and clients reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_containers_with_tls_each_pod_mounts_its_secret_and_is_reached_by_name() {
    let Some(image) = docker::image() else {
        return; // `docker::image` said why (no Docker engine answers).
    };
    let op = Operator::start_in_containers(3, image, true);
    let s = op.wait_running(3, "three containers over mutual TLS").await;
    assert!(available(&s), "Available: {s:#?}");
    let Pods::Containers { docker: d, .. } = &op.pods else {
        unreachable!()
    };
    let mounts = docker::docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Destination}} {{.RW}};{{end}}",
        &format!("demo-1.demo-peers.{}", d.network),
    ])
    .unwrap();
    assert!(
        mounts.contains("/etc/raftkit/tls false;"),
        "the Secret mounted read-only: {mounts}"
    );
    let client = op.tls_client();
    let load = CounterLoad::start(client.clone(), 2);
    load.wait_for_progress(30, Duration::from_secs(30), "over mutual TLS")
        .await;
    let plain = ClusterClient::new(op.addrs(3), "counter", Duration::from_secs(2)).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), plain.fetch_add(1)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a client without a certificate wrote: {refused:?}"
    );
    let tally = load.stop().await;
    tally.check(&client).await;
}
