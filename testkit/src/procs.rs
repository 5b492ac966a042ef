//! Real `raftkit-node` processes on 127.0.0.1 for multi-process tests. Every
//! process a test starts is killed when its [`Proc`] is dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The `raftkit-node` binary tests start: `RAFTKIT_NODE_BIN` if set, else
/// the one cargo built beside the running test (`target/<profile>/`; cargo
/// builds it for raftkit-node's own tests and for `cargo test --workspace`).
pub fn node_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RAFTKIT_NODE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> -> target/<profile>/raftkit-node
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("the test binary's directory");
    let bin = dir.join("raftkit-node");
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build -p raftkit-node` (or `cargo test --workspace`), or set RAFTKIT_NODE_BIN",
        bin.display()
    );
    bin
}

/// Ports free right now on 127.0.0.1, below the kernel's ephemeral range
/// (32768 and up here): a port taken from that range and released until
/// the node binds it could meanwhile become the local port of any outgoing
/// connection, and the node would fail to start.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    while held.len() < n {
        let port = rand::random_range(20_000..32_700u16);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// One node process.
pub struct Proc {
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    /// Extra environment for the next start (failpoints).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Proc {
    /// Starts `raftkit-node` at `addr` with `extra` flags and environment.
    pub fn start_with_env(
        addr: &str,
        data_dir: &Path,
        log_dir: &Path,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut p = Proc {
            addr: addr.to_string(),
            data_dir: data_dir.to_path_buf(),
            log: log_dir.join(format!("{}.log", addr.replace(':', "_"))),
            args: extra.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        p.restart();
        p
    }

    /// Starts `raftkit-node` at `addr` with `extra` flags.
    pub fn start(addr: &str, data_dir: &Path, log_dir: &Path, extra: &[String]) -> Proc {
        let mut p = Proc {
            addr: addr.to_string(),
            data_dir: data_dir.to_path_buf(),
            log: log_dir.join(format!("{}.log", addr.replace(':', "_"))),
            args: extra.to_vec(),
            env: Vec::new(),
            child: None,
        };
        p.restart();
        p
    }

    /// Starts the process again with the same flags and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.addr);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(node_binary())
            .args(["--listen", &self.addr, "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn raftkit-node");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    self.child = None;
                    return Some(s);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` and waits up to `timeout` for exit; returns the exit status.
    pub fn signal_and_wait(
        &mut self,
        sig: Signal,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = kill(Pid::from_raw(c.id() as i32), sig);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The JSON status of every group on `addr` (`/raft_stat?format=json`).
pub async fn raft_stat(addr: &str) -> Option<serde_json::Value> {
    let (code, body) = raftkit_client::probe::probe(addr, "/raft_stat?format=json")
        .await
        .ok()?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// Waits until `GET path` on `addr` answers 200.
pub async fn wait_http_ok(addr: &str, path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok((200, _)) = raftkit_client::probe::probe(addr, path).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits until the process at `addr` hosts `group`. A process serves (its
/// `/livez` answers) before it has started its groups, and until then every
/// call naming the group, `add_learner` of that replica included, is
/// refused as "no group named ... is hosted here".
pub async fn wait_hosting(addr: &str, group: &str, timeout: Duration) -> bool {
    wait_http_ok(addr, &format!("/raft_stat?group={group}"), timeout).await
}

/// A running cluster of node processes that formed one group from their
/// initial configuration, all ready.
pub struct ProcCluster {
    pub tmp: tempfile::TempDir,
    pub addrs: Vec<String>,
    pub procs: Vec<Proc>,
}

/// Starts `n` nodes with `--initial-conf` naming all of them, a 1 s
/// election timeout unless `extra` sets one, `extra` flags and `env`, and
/// waits until every node is ready.
pub async fn start_cluster(n: usize, extra: &[&str], env: &[(&str, &str)]) -> ProcCluster {
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = free_ports(n)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut args = vec!["--initial-conf".to_string(), addrs.join(",")];
    if !extra.contains(&"--election-timeout-ms") {
        args.extend(["--election-timeout-ms".to_string(), "1000".to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let procs: Vec<Proc> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Proc::start_with_env(a, &tmp.path().join(format!("n{i}")), tmp.path(), &args, env)
        })
        .collect();
    for p in &procs {
        assert!(
            wait_http_ok(&p.addr, "/readyz", Duration::from_secs(30)).await,
            "{} not ready:\n{}",
            p.addr,
            p.log_tail(20)
        );
    }
    ProcCluster { tmp, addrs, procs }
}

impl ProcCluster {
    /// SIGTERM every running node and wait for it.
    pub fn stop_all(&mut self) {
        for p in self.procs.iter_mut() {
            p.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10));
        }
    }
}

/// The index of the member whose first group (by name) has a leader role,
/// waiting up to 20 s for one.
pub async fn first_group_leader(c: &ProcCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, a) in c.addrs.iter().enumerate() {
            if let Some(v) = raft_stat(a).await {
                if v[0]["role"] == "leader" {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
