//! `raftkit playground`: a local cluster of real node processes on
//! 127.0.0.1, each hosting the `counter` and `kv` groups. Prints the members
//! and a ready line, and stops every node on Ctrl-C (SIGTERM, then SIGKILL
//! after a grace period). A member that dies (`kill <pid>`) is reported and
//! started again on its data after a few seconds, as a supervisor would, so
//! the others' failover and its catch-up can be watched; one that keeps
//! dying is left down, with the reason.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Args, Debug, Clone)]
pub struct PlaygroundArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Port of the first node; the others follow.
    #[arg(long, default_value_t = 8100)]
    pub base_port: u16,
    /// Keep data here (reused on the next run); default: a temporary
    /// directory removed on exit.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Election timeout of the nodes (ms).
    #[arg(long, default_value_t = 1000)]
    pub election_timeout_ms: u64,
    /// The raftkit-node binary to run (default: the one beside `raftkit`,
    /// built first under `cargo run`, else one on PATH).
    #[arg(long, value_name = "PATH")]
    pub node_binary: Option<PathBuf>,
}

struct Member {
    addr: String,
    child: Child,
    log: PathBuf,
    /// How to start it again.
    command: NodeCommand,
    /// When it is to be started again after it died (None: running, or
    /// left down).
    restart_at: Option<Instant>,
    /// When it was restarted lately (crash-loop guard).
    restarts: Vec<Instant>,
    /// It kept dying: left down for good.
    given_up: bool,
}

/// The node binary and the arguments of one member.
#[derive(Clone)]
struct NodeCommand {
    exe: PathBuf,
    args: Vec<String>,
}

impl NodeCommand {
    /// Starts the node with its output appended to `log`.
    fn spawn(&self, log: &std::path::Path) -> std::io::Result<Child> {
        let out = File::options().create(true).append(true).open(log)?;
        Command::new(&self.exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
    }
}

/// How long a member that died stays down before it is started again.
const RESTART_AFTER: Duration = Duration::from_secs(3);
/// A member restarted this many times within [`CRASH_LOOP_WINDOW`] is left down.
const MAX_RESTARTS: usize = 5;
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);

/// Runs the playground until Ctrl-C or SIGTERM.
pub async fn run(args: PlaygroundArgs) -> anyhow::Result<()> {
    if !(1..=9).contains(&args.nodes) {
        anyhow::bail!("--nodes {} is out of range 1..=9", args.nodes);
    }
    if u32::from(args.base_port) + u32::from(args.nodes) > 65_535 {
        anyhow::bail!(
            "--base-port {} leaves no room for {} nodes",
            args.base_port,
            args.nodes
        );
    }
    let addrs: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", args.base_port + i))
        .collect();
    for a in &addrs {
        if std::net::TcpListener::bind(a).is_err() {
            anyhow::bail!("port {a} is in use; stop what holds it or pick another --base-port");
        }
    }
    let (data_dir, temporary) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("raftkit-playground-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&data_dir)?;
    let exe = crate::node_binary::find_node_binary(args.node_binary.as_deref())?;

    let mut members = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let dir = data_dir.join(format!("node{i}"));
        std::fs::create_dir_all(&dir)?;
        let log = data_dir.join(format!("node{i}.log"));
        File::create(&log)?;
        let command = NodeCommand {
            exe: exe.clone(),
            args: vec![
                "--listen".into(),
                addr.clone(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--groups".into(),
                "counter:counter,kv:kv".into(),
                "--initial-conf".into(),
                addrs.join(","),
                "--election-timeout-ms".into(),
                args.election_timeout_ms.to_string(),
            ],
        };
        let child = command.spawn(&log)?;
        crate::outln!(
            "node {i}: {addr}  (pid {}, log {})",
            child.id(),
            log.display()
        );
        members.push(Member {
            addr: addr.clone(),
            child,
            log,
            command,
            restart_at: None,
            restarts: Vec::new(),
            given_up: false,
        });
    }

    let result = wait_ready(&mut members, Duration::from_secs(60)).await;
    match result {
        Ok(()) => {
            crate::outln!(
                "ready: {} nodes serving groups counter and kv at {} (data in {})",
                members.len(),
                addrs.join(","),
                data_dir.display()
            );
            crate::outln!("try: raftkit counter fetch-add 1   |   raftkit kv put hello world   |   raftkit status");
            crate::outln!("press Ctrl-C to stop");
            wait_for_stop(&mut members).await;
        }
        Err(e) => eprintln!("error: {e}"),
    }
    stop_all(&mut members).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    crate::outln!("stopped");
    Ok(())
}

async fn wait_ready(members: &mut [Member], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut ready = 0;
        for m in members.iter_mut() {
            if let Some(status) = m.child.try_wait()? {
                let tail = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                anyhow::bail!(
                    "node {} exited with {status} before it was ready; last log lines:\n{}",
                    m.addr,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if let Ok((200, _)) = raftkit_client::probe::probe(&m.addr, "/readyz").await {
                ready += 1;
            }
        }
        if ready == members.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("the cluster was not ready within {timeout:?}; see the node logs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_stop(members: &mut [Member]) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = tick.tick() => supervise(members, Instant::now()),
        }
    }
}

/// Notices members that died and starts them again after
/// [`RESTART_AFTER`], unless one keeps dying.
fn supervise(members: &mut [Member], now: Instant) {
    for m in members.iter_mut().filter(|m| !m.given_up) {
        match m.restart_at {
            Some(at) if now >= at => {
                m.restart_at = None;
                match m.command.spawn(&m.log) {
                    Ok(child) => {
                        m.child = child;
                        m.restarts.push(now);
                        crate::outln!(
                            "node {} restarted (pid {}); it catches up from the others",
                            m.addr,
                            m.child.id()
                        );
                    }
                    Err(e) => {
                        m.given_up = true;
                        eprintln!("node {}: could not restart it: {e}", m.addr);
                    }
                }
            }
            Some(_) => {}
            None => {
                let Ok(Some(status)) = m.child.try_wait() else {
                    continue;
                };
                m.restarts
                    .retain(|t| now.duration_since(*t) < CRASH_LOOP_WINDOW);
                if m.restarts.len() >= MAX_RESTARTS {
                    m.given_up = true;
                    eprintln!(
                        "node {} exited ({status}) again after {MAX_RESTARTS} restarts within {} s; leaving it down; see {}",
                        m.addr,
                        CRASH_LOOP_WINDOW.as_secs(),
                        m.log.display()
                    );
                    continue;
                }
                crate::outln!(
                    "node {} exited ({status}); the others go on without it; restarting it in {} s (log {})",
                    m.addr,
                    RESTART_AFTER.as_secs(),
                    m.log.display()
                );
                m.restart_at = Some(now + RESTART_AFTER);
            }
        }
    }
}

async fn stop_all(members: &mut [Member]) {
    for m in members.iter_mut() {
        if let Ok(None) = m.child.try_wait() {
            if let Ok(pid) = i32::try_from(m.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for m in members.iter_mut() {
        loop {
            match m.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = m.child.kill();
                    let _ = m.child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}
