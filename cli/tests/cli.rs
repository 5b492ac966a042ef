//! The `raftkit` command line as a user runs it: against real node
//! processes, and the playground.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkit_testkit as common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::procs::{free_ports, wait_http_ok, Proc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn raftkit(cluster: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raftkit"))
        .args(["--cluster", cluster, "--timeout-ms", "5000"])
        .args(args)
        .output()
        .expect("run raftkit")
}

/// Polls `raftkit digest` until all three members report one applied index
/// above `after` for `group`; returns it and the members' digests.
async fn agreed_digest(conf: &str, group: &str, after: u64) -> (u64, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = raftkit(conf, &["--output", "json", "digest"]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
            let mut rows = Vec::new();
            for member in v.as_array().unwrap() {
                for g in member["groups"].as_array().into_iter().flatten() {
                    if g["group"] == group {
                        rows.push((
                            g["applied_index"].as_u64().unwrap(),
                            g["digest"].as_str().unwrap_or_default().to_string(),
                        ));
                    }
                }
            }
            if rows.len() == 3 && rows.iter().all(|r| r.0 == rows[0].0) && rows[0].0 > after {
                return (rows[0].0, rows.into_iter().map(|r| r.1).collect());
            }
        }
        assert!(
            Instant::now() < deadline,
            "members did not reach one applied index: {} {}",
            stdout(&o),
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_kv_and_status_commands_against_a_real_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = free_ports(3)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let conf = addrs.join(",");
    let procs: Vec<Proc> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let extra = [
                "--groups",
                "counter:counter,kv:kv",
                "--initial-conf",
                &conf,
                "--election-timeout-ms",
                "500",
            ]
            .map(String::from);
            Proc::start(a, &tmp.path().join(format!("n{i}")), tmp.path(), &extra)
        })
        .collect();
    for p in &procs {
        assert!(
            wait_http_ok(&p.addr, "/readyz", Duration::from_secs(30)).await,
            "{}",
            p.log_tail(20)
        );
    }
    // Point the CLI at a single follower-or-leader: it finds the leader itself.
    let one = addrs[2].as_str();

    let o = raftkit(&conf, &["counter", "fetch-add", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0");
    let o = raftkit(one, &["counter", "fetch-add", "-2"]);
    assert_eq!(stdout(&o), "5", "{}", stderr(&o));
    assert_eq!(stdout(&raftkit(one, &["counter", "get"])), "3");
    let o = raftkit(one, &["--output", "json", "counter", "get"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["value"], 3);

    // --cluster-id: the right one works; another cluster's is refused
    // before anything is sent (not applied, exit 1).
    let id = raftkit_client::ClusterClient::new(addrs.clone(), "counter", Duration::from_secs(5))
        .unwrap()
        .cluster_status()
        .await
        .cluster_id
        .expect("the cluster's id");
    let o = raftkit(&conf, &["--cluster-id", &id, "counter", "fetch-add", "1"]);
    assert_eq!(stdout(&o), "3", "{}", stderr(&o));
    let other = if id == "1".repeat(16) { "2" } else { "1" }.repeat(16);
    let o = raftkit(
        &conf,
        &["--cluster-id", &other, "counter", "fetch-add", "1"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not applied"), "{}", stderr(&o));
    assert_eq!(
        stdout(&raftkit(one, &["counter", "get"])),
        "4",
        "the refused write was not applied"
    );
    let o = raftkit(&conf, &["--cluster-id", "xyz", "counter", "get"]);
    assert!(
        stderr(&o).contains("expected up to 16 hex digits"),
        "{}",
        stderr(&o)
    );

    assert!(raftkit(&conf, &["kv", "put", "user/1", "ada"])
        .status
        .success());
    assert!(raftkit(&conf, &["kv", "put", "user/2", "grace"])
        .status
        .success());
    assert_eq!(stdout(&raftkit(one, &["kv", "get", "user/1"])), "ada");
    let missing = raftkit(one, &["kv", "get", "user/9"]);
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing),
        "error: key \"user/9\" not found (not applied)"
    );
    assert_eq!(
        stdout(&raftkit(
            one,
            &["kv", "cas", "user/1", "lovelace", "--expected", "bob"]
        )),
        "not swapped; current value: ada"
    );
    assert_eq!(
        stdout(&raftkit(
            one,
            &["kv", "cas", "user/1", "lovelace", "--expected", "ada"]
        )),
        "swapped"
    );
    assert_eq!(
        stdout(&raftkit(one, &["kv", "scan", "user/"])),
        "user/1\tlovelace\nuser/2\tgrace"
    );
    assert_eq!(
        stdout(&raftkit(one, &["kv", "delete", "user/2"])),
        "deleted"
    );
    assert_eq!(
        stdout(&raftkit(one, &["kv", "scan", "user/", "--limit", "5"])),
        "user/1\tlovelace"
    );

    let o = raftkit(&conf, &["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(
        text.lines().count(),
        1 + 3 * 2,
        "header plus one line per member and group:\n{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.contains(" leader ")).count(),
        2,
        "one leader per group:\n{text}"
    );
    let o = raftkit(&conf, &["--output", "json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    // One address is enough: the members it names are asked too.
    let text = stdout(&raftkit(one, &["status"]));
    assert_eq!(
        text.lines().count(),
        1 + 3 * 2,
        "every member from one address:\n{text}"
    );
    for a in &addrs {
        assert!(text.contains(a.as_str()), "{a} missing:\n{text}");
    }

    // The group's cluster format per member, beside the build's limits:
    // every build here is uncapped, so the leaders raise it to 2.
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let o = raftkit(&conf, &["--output", "json", "status"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let groups: Vec<&serde_json::Value> = v
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["groups"].as_array().into_iter().flatten())
            .collect();
        if groups.len() == 6 && groups.iter().all(|g| g["cluster_format"] == 2) {
            break v;
        }
        assert!(Instant::now() < deadline, "cluster format not 2: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let g = &v[0]["groups"][0];
    assert_eq!(g["max_cluster_format"], 2, "{g}");
    assert!(g["max_log_format"].as_u64().unwrap() >= 1, "{g}");
    let text = stdout(&raftkit(&conf, &["status"]));
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} column: {text}"))
    };
    let (log_fmt, cluster_fmt, max_cluster_fmt) = (
        col("MAX-LOG-FMT"),
        col("CLUSTER-FMT"),
        col("MAX-CLUSTER-FMT"),
    );
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), header.len(), "{line}");
        assert_eq!(cells[cluster_fmt], "2", "{text}");
        assert_eq!(cells[max_cluster_fmt], "2", "{text}");
        assert_eq!(cells[log_fmt], g["max_log_format"].to_string(), "{text}");
    }

    let o = raftkit(&conf, &["snapshot", "--peer", one]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("counter: snapshot at index") && text.contains("kv: snapshot at index"),
        "{text}"
    );
    let o = raftkit(
        &conf,
        &[
            "--group", "kv", "--output", "json", "snapshot", "--peer", one,
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert!(v[0]["index"].as_u64().unwrap() > 0, "{v}");

    // The fault-injection endpoints are off unless the node was started for
    // them; a malformed request is refused with what was wrong either way.
    for path in [
        "/debug/partition?peers=127.0.0.1:1",
        "/debug/failpoint?name=log_sync&action=error",
    ] {
        let (code, body) = raftkit_client::probe::request(one, "POST", path)
            .await
            .unwrap();
        assert_eq!(code, 404, "{path}: {body}");
        assert!(body.contains("RAFTKIT_FAULT_INJECTION=1"), "{body}");
    }
    let (code, body) =
        raftkit_client::probe::request(one, "POST", "/debug/failpoint?name=log_sync&action=boom")
            .await
            .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown failpoint action \"boom\""), "{body}");

    // Observability: metrics and runtime flags over HTTP on the same port.
    let (code, body) = raftkit_client::probe::probe(one, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for m in [
        "raftkit_term{group=\"counter\"}",
        "raftkit_fsync_seconds_bucket",
        "raftkit_apply_seconds_count",
        "raftkit_role{group=\"kv\",role=\"leader\"}",
        "raftkit_transport_bytes_sent_total",
    ] {
        assert!(body.contains(m), "/metrics lacks {m}:\n{body}");
    }
    // The kv leader timed the commits of the writes above (two puts, two
    // cas, one delete); sum over members in case leadership moved.
    let mut timed = 0u64;
    for a in &addrs {
        let (_, body) = raftkit_client::probe::probe(a, "/metrics").await.unwrap();
        timed += body
            .lines()
            .find_map(|l| l.strip_prefix("raftkit_commit_seconds_count{group=\"kv\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert!(timed >= 5, "commits timed by kv leaders: {timed}");
    let (code, body) = raftkit_client::probe::probe(one, "/flags?format=json")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let flags: serde_json::Value = serde_json::from_str(&body).unwrap();
    let flag = |v: &serde_json::Value, n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(flag(&flags, "election_timeout_ms")["value"], "500");
    assert_eq!(flag(&flags, "listen")["mutable"], false);
    let (code, _) = post(one, "/flags?snapshot_log_gap=1234").await;
    assert_eq!(code, 200);
    let (_, body) = raftkit_client::probe::probe(one, "/flags?format=json")
        .await
        .unwrap();
    assert_eq!(
        flag(&serde_json::from_str(&body).unwrap(), "snapshot_log_gap")["value"],
        "1234"
    );
    let (code, body) = post(one, "/flags?election_timeout_ms=abc").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not a non-negative integer"), "{body}");
    // Bounds come from the settings table, and the error names them.
    let (code, body) = post(one, "/flags?election_timeout_ms=5").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("election_timeout_ms: 5 is out of range: at least 10 and at most 600000 (--election-timeout-ms, RAFTKIT_ELECTION_TIMEOUT_MS;"),
        "{body}"
    );
    let eto = flag(&flags, "election_timeout_ms");
    assert_eq!(eto["bounds"], "at least 10 and at most 600000", "{eto}");
    assert_eq!(eto["help"], "Election timeout in milliseconds.", "{eto}");
    let (code, body) = post(one, "/flags?no_such_flag=1").await;
    assert_eq!(code, 400);
    assert!(body.contains("unknown flag"), "{body}");
    let (code, body) = post(one, "/flags?listen=1.2.3.4:5").await;
    assert_eq!(code, 400);
    assert!(
        body.contains("cannot be changed while the node runs"),
        "{body}"
    );

    // Idle polling: `auto` by default, which polls unless this cgroup has
    // a CPU quota or one CPU (the nodes run in the test's cgroup); checked,
    // changeable at run time; once on, writes at light load keep the
    // pollers spinning on every member.
    assert_eq!(flag(&flags, "idle_poll_us")["value"], "auto");
    assert_eq!(flag(&flags, "idle_poll_us")["mutable"], true);
    let window = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("raftkit_idle_poll_window_us "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (auto_us, why) = raftkit_idle_poll::auto_window(raftkit_idle_poll::cpu_quota(), cpus);
    eprintln!("idle polling auto here: {auto_us} µs ({why})");
    for a in &addrs {
        let (_, body) = raftkit_client::probe::probe(a, "/metrics").await.unwrap();
        assert_eq!(window(&body), Some(auto_us), "{a}: {body}");
    }
    let (code, body) = post(one, "/flags?idle_poll_us=soon").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("neither `auto` nor a whole number"), "{body}");
    let (code, body) = post(one, "/flags?idle_poll_us=5000000").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("at most 1000000"), "{body}");
    for a in &addrs {
        let (code, body) = post(a, "/flags?idle_poll_us=100000").await;
        assert_eq!(code, 200, "{body}");
    }
    let spun = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("raftkit_idle_poll_spin_seconds_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Setting the flag starts a window by itself: wait until it has
    // passed, so that what counts below is spinning after writes.
    let mut idle = Vec::new();
    for a in &addrs {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = -1.0;
        loop {
            let (_, body) = raftkit_client::probe::probe(a, "/metrics").await.unwrap();
            let now = spun(&body);
            if now == last {
                idle.push(now);
                break;
            }
            assert!(Instant::now() < deadline, "pollers at {a} never went idle");
            last = now;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut spinning = std::collections::BTreeSet::new();
    while spinning.len() < addrs.len() {
        assert!(
            Instant::now() < deadline,
            "idle pollers never spun; spinning: {spinning:?}"
        );
        assert!(raftkit(&conf, &["kv", "put", "poll", "x"]).status.success());
        for (a, idle) in addrs.iter().zip(&idle) {
            let (_, body) = raftkit_client::probe::probe(a, "/metrics").await.unwrap();
            if spun(&body) > *idle {
                spinning.insert(a.clone());
            }
        }
    }
    for a in &addrs {
        let (code, body) = post(a, "/flags?idle_poll_us=0").await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("idle_poll_us = 0"), "{body}");
        let (_, body) = raftkit_client::probe::probe(a, "/metrics").await.unwrap();
        assert_eq!(window(&body), Some(0), "{a}");
    }
    let (code, body) = post(one, "/flags?idle_poll_us=auto").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("idle_poll_us = auto"), "{body}");
    let (_, body) = raftkit_client::probe::probe(one, "/metrics").await.unwrap();
    assert_eq!(window(&body), Some(auto_us));

    // The load generator against the cluster: every call path, JSON out.
    for extra in [
        &[][..],
        &["--conns", "2"],
        &["--unary", "--threads", "2"],
        &["--shared-session", "--rate", "400"],
    ] {
        let args: Vec<&str> = [
            "--output",
            "json",
            "bench",
            "--op",
            "put",
            "--clients",
            "4",
            "--duration-s",
            "1",
            "--warmup-s",
            "0",
        ]
        .iter()
        .chain(extra.iter())
        .copied()
        .collect();
        let o = raftkit(&conf, &args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert!(v["ops"].as_u64().unwrap() > 0, "{extra:?}: {v}");
        assert_eq!(v["errors"], 0, "{extra:?}: {v}");
        assert!(v["p50_ms"].as_f64().unwrap() > 0.0, "{v}");
    }
    for (args, wanted) in [
        (&["bench", "--threads", "0"][..], "1..=256"),
        (&["bench", "--system", "etcd", "--unary"], "--unary"),
        (
            &["bench", "--system", "etcd", "--shared-session"],
            "--shared-session",
        ),
    ] {
        let o = raftkit(&conf, args);
        assert!(!o.status.success(), "{args:?} must be refused");
        assert!(stderr(&o).contains(wanted), "{args:?}: {}", stderr(&o));
    }
    let o = raftkit(
        &conf,
        &["--output", "json", "bench-floor", "--samples", "50"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["floor_ms"].as_f64().unwrap() > 0.0, "{v}");

    // Replicas agree: one digest at one applied index, and it moves with the state.
    let (i1, d1) = agreed_digest(&conf, "kv", 0).await;
    assert!(d1.iter().all(|d| d == &d1[0] && d.len() == 16), "{d1:?}");
    assert!(raftkit(&conf, &["kv", "put", "user/3", "hopper"])
        .status
        .success());
    let (_, d2) = agreed_digest(&conf, "kv", i1).await;
    assert!(d2.iter().all(|d| d == &d2[0]), "{d2:?}");
    assert_ne!(d1[0], d2[0], "the digest did not change with the state");
    let o = raftkit(&conf, &["digest"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&d2[0]), "{}", stdout(&o));

    // Bad input: one clear line and a non-zero exit.
    let o = raftkit(one, &["kv", "put", "", "x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("key must not be empty"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).lines().count(), 1);
    let o = raftkit(one, &["--group", "nope", "counter", "get"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no counter group named \"nope\""),
        "{}",
        stderr(&o)
    );
    let o = raftkit("not-an-address", &["counter", "get"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not host:port"), "{}", stderr(&o));
    let dead = format!("127.0.0.1:{}", free_ports(1)[0]);
    let o = Command::new(env!("CARGO_BIN_EXE_raftkit"))
        .args(["--cluster", &dead, "--timeout-ms", "500", "counter", "get"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("error: every member refused the connection"),
        "{}",
        stderr(&o)
    );
}

async fn post(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        code,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn playground_starts_a_cluster_and_stops_it_on_ctrl_c() {
    let mut pg = Playground::start();
    pg.wait_line("\"ready:\"", |l| l.starts_with("ready:"));
    assert_eq!(
        pg.seen.iter().filter(|l| l.starts_with("node ")).count(),
        3,
        "{:?}",
        pg.seen
    );
    let cluster = pg.cluster();
    let o = raftkit(&cluster, &["counter", "fetch-add", "7"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&raftkit(&cluster, &["counter", "get"])), "7");
    assert!(raftkit(&cluster, &["kv", "put", "k", "v"]).status.success());
    let base = pg.base;
    pg.stop();
    // Every node is gone: nothing answers on the ports.
    for i in 0..3 {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", base + i)).is_err(),
            "node on port {} still answers",
            base + i
        );
    }
}

/// A playground started on free ports, its output read on a thread so a
/// test can wait for a line with a deadline.
struct Playground {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    base: u16,
}

impl Playground {
    fn start() -> Playground {
        let base = loop {
            let p = free_ports(1)[0];
            if p < 60000
                && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
            {
                break p;
            }
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_raftkit"))
            .args([
                "playground",
                "--base-port",
                &base.to_string(),
                "--election-timeout-ms",
                "500",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Playground {
            child,
            lines,
            seen: Vec::new(),
            base,
        }
    }

    /// Waits for a line `pred` accepts; returns it.
    fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no line {what} in the playground's output: {:?}", self.seen),
            }
        }
    }

    fn cluster(&self) -> String {
        (0..3)
            .map(|i| format!("127.0.0.1:{}", self.base + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Ctrl-C: everything stops.
    fn stop(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).unwrap();
        self.wait_line("\"stopped\"", |l| l == "stopped");
        assert!(self.child.wait().unwrap().success());
    }
}

/// README: stop one node of the playground and the others go on; the
/// playground says so and brings the node back, which catches up.
#[test]
fn the_playground_survives_a_members_death_and_brings_it_back() {
    let mut pg = Playground::start();
    let node0 = pg.wait_line("for node 0", |l| l.starts_with("node 0:"));
    pg.wait_line("\"ready:\"", |l| l.starts_with("ready:"));
    let pid: i32 = node0
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {node0:?}"));
    let cluster = pg.cluster();
    assert!(raftkit(&cluster, &["kv", "put", "before", "1"])
        .status
        .success());

    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let addr = format!("127.0.0.1:{}", pg.base);
    let (exited_line, restarted_line) = (
        format!("node {addr} exited"),
        format!("node {addr} restarted"),
    );
    let exited = pg.wait_line("saying node 0 exited", |l| l.starts_with(&exited_line));
    assert!(exited.contains("restarting it"), "{exited}");
    // The others serve meanwhile.
    let o = raftkit(&cluster, &["kv", "put", "during", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&raftkit(&cluster, &["kv", "get", "before"])), "1");

    pg.wait_line("saying node 0 restarted", |l| {
        l.starts_with(&restarted_line)
    });
    let ready = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(wait_http_ok(&addr, "/readyz", Duration::from_secs(30)));
    assert!(ready, "the restarted node did not become ready");
    // It caught up: a stale read from it sees the write made while it was down.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = raftkit(&addr, &["kv", "get", "during", "--read", "stale"]);
        if stdout(&o) == "2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 0 did not catch up: {}",
            stdout(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    pg.stop();
}

/// `raftkit --output json status | head -c 10`: a reader that goes away
/// ends the command quietly, not with a panic.
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let mut pg = Playground::start();
    pg.wait_line("\"ready:\"", |l| l.starts_with("ready:"));
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // the reader is gone before the first byte
    let o = Command::new(env!("CARGO_BIN_EXE_raftkit"))
        .args(["--cluster", &pg.cluster(), "--output", "json", "status"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "exit {:?}, stderr: {}",
        o.status,
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    pg.stop();
}

/// Nothing listens at any member: said at once (which members refused),
/// not after the whole deadline, and as certainly not applied.
#[test]
fn a_cluster_that_refuses_every_connection_is_reported_at_once() {
    let ports = free_ports(2);
    let cluster = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_raftkit"))
        .args([
            "--cluster",
            &cluster,
            "--timeout-ms",
            "10000",
            "kv",
            "get",
            "x",
        ])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("refused"), "{err}");
    assert!(
        err.contains(&ports[0].to_string()) && err.contains(&ports[1].to_string()),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} of its 10 s deadline to report refused connections"
    );
}

/// Every error says which of two classes it is in, in text and JSON, with
/// its own exit code: certainly not applied (1), or outcome unknown (3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_says_whether_the_write_may_have_been_applied() {
    let c = common::procs::start_cluster(
        3,
        &["--groups", "kv:kv", "--election-timeout-ms", "2000"],
        &[],
    )
    .await;
    let l = common::procs::first_group_leader(&c).await;
    let leader = c.addrs[l].clone();

    // Refused before it was proposed.
    let o = raftkit(&leader, &["--output", "json", "kv", "put", "", "x"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_str(&stderr(&o)).unwrap();
    assert_eq!(e["outcome"], "not_applied", "{e}");
    assert_eq!(e["exit_code"], 1);
    assert!(e["error"]
        .as_str()
        .unwrap()
        .contains("key must not be empty"));

    // The leader takes the write, but its followers are frozen: it cannot
    // commit it, and nobody can say whether it will be.
    let frozen: Vec<Pid> = (0..3)
        .filter(|i| *i != l)
        .map(|i| c.procs[i].pid().unwrap())
        .collect();
    for p in &frozen {
        kill(*p, Signal::SIGSTOP).unwrap();
    }
    let o = Command::new(env!("CARGO_BIN_EXE_raftkit"))
        .args([
            "--cluster",
            &leader,
            "--timeout-ms",
            "3000",
            "kv",
            "put",
            "k",
            "v",
        ])
        .output()
        .unwrap();
    for p in &frozen {
        kill(*p, Signal::SIGCONT).unwrap();
    }
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("(outcome unknown: it may have been applied)"),
        "{}",
        stderr(&o)
    );
}

/// `--tls-cert/--tls-key/--tls-ca` (or `RAFTKIT_TLS_*`) reach a cluster
/// with mutual TLS on; without them, or with an application's certificate
/// for an admin command, the CLI says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_flags_reach_a_tls_cluster_and_a_refusal_says_why() {
    use raftkit_tls::issue::{Ca, LeafSpec};
    let day = Duration::from_secs(86_400);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("cli test CA", day).unwrap();
    let ca_path = d.join("ca.crt");
    std::fs::write(&ca_path, &ca.issued.cert_pem).unwrap();
    let issue = |stem: &str, role: &str, names: &[&str]| {
        let (c, k) = ca
            .issue(&LeafSpec::new(stem, role, names, day))
            .unwrap()
            .write(d, stem)
            .unwrap();
        (c.display().to_string(), k.display().to_string())
    };
    let (node_cert, node_key) = issue("node", raftkit_tls::ROLE_NODE, &["127.0.0.1"]);
    let ca_arg = ca_path.display().to_string();
    let mut cluster = common::procs::start_cluster(
        3,
        &[
            "--tls-cert",
            &node_cert,
            "--tls-key",
            &node_key,
            "--tls-ca",
            &ca_arg,
        ],
        &[],
    )
    .await;
    let conf = cluster.addrs.join(",");
    let (app_cert, app_key) = issue("app", raftkit_tls::ROLE_CLIENT, &[]);
    let app = [
        "--tls-cert",
        &app_cert,
        "--tls-key",
        &app_key,
        "--tls-ca",
        &ca_arg,
    ];

    let with = |tls: &[&str], args: &[&str]| {
        let all: Vec<&str> = tls.iter().chain(args).copied().collect();
        raftkit(&conf, &all)
    };
    let o = with(&app, &["counter", "fetch-add", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0");

    let o = raftkit(&conf, &["counter", "fetch-add", "1"]);
    assert!(!o.status.success(), "a plain client was served");
    assert!(stderr(&o).contains("needs mutual TLS"), "{}", stderr(&o));

    let o = with(&app, &["transfer-leader", "any"]);
    assert!(!o.status.success(), "an application moved leadership");
    assert!(stderr(&o).contains("OU=raftkit-admin"), "{}", stderr(&o));

    // An admin certificate, from the environment as in a pod.
    let (admin_cert, admin_key) = issue("admin", raftkit_tls::ROLE_ADMIN, &[]);
    let o = Command::new(env!("CARGO_BIN_EXE_raftkit"))
        .args([
            "--cluster",
            &conf,
            "--timeout-ms",
            "10000",
            "transfer-leader",
            "any",
        ])
        .env("RAFTKIT_TLS_CERT", &admin_cert)
        .env("RAFTKIT_TLS_KEY", &admin_key)
        .env("RAFTKIT_TLS_CA", &ca_arg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = with(&app, &["counter", "get"]);
    assert_eq!(stdout(&o), "5", "{}", stderr(&o));
    cluster.stop_all();
}
