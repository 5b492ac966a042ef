//! `raftkit playground`: a local cluster of real node processes on
//! 127.0.0.1, each hosting the `counter` and `kv` groups. Prints the members
//! and a ready line, and stops every node on Ctrl-C (SIGTERM, then SIGKILL
//! after a grace period).

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
}

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
        let out = File::create(&log)?;
        let child = Command::new(&exe)
            .args(["--listen", addr, "--data-dir"])
            .arg(&dir)
            .args([
                "--groups",
                "counter:counter,kv:kv",
                "--initial-conf",
                &addrs.join(","),
            ])
            .args([
                "--election-timeout-ms",
                &args.election_timeout_ms.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        println!(
            "node {i}: {addr}  (pid {}, log {})",
            child.id(),
            log.display()
        );
        members.push(Member {
            addr: addr.clone(),
            child,
            log,
        });
    }

    let result = wait_ready(&mut members, Duration::from_secs(60)).await;
    match result {
        Ok(()) => {
            println!(
                "ready: {} nodes serving groups counter and kv at {} (data in {})",
                members.len(),
                addrs.join(","),
                data_dir.display()
            );
            println!("try: raftkit counter fetch-add 1   |   raftkit kv put hello world   |   raftkit status");
            println!("press Ctrl-C to stop");
            wait_for_stop(&mut members).await;
        }
        Err(e) => eprintln!("error: {e}"),
    }
    stop_all(&mut members).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    println!("stopped");
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
            _ = tick.tick() => {
                for m in members.iter_mut() {
                    if let Ok(Some(status)) = m.child.try_wait() {
                        eprintln!("node {} exited unexpectedly ({status}); stopping the playground; see {}", m.addr, m.log.display());
                        return;
                    }
                }
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
