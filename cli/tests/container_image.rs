//! The container image as a user meets it (issue 20): built by
//! `e2e/build-image.sh` (debootstrap base, binaries built on the host), it
//! runs `raftkit-node --version` as uid 65532, and a one-node cluster in a
//! container answers `raftkit status` and counter commands from the host
//! and keeps its data in a volume across a container restart. Skips with a
//! message where no Docker engine answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use raftkit_testkit::docker::{self, docker, DockerScope};
use raftkit_testkit::procs::free_ports;

/// `raftkit` (the CLI built beside this test) against `addr`.
fn raftkit(addr: &str, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_raftkit"))
        .args(["--cluster", addr, "--timeout-ms", "5000"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Retries `raftkit args` until it succeeds, within `within`; its stdout.
fn raftkit_until_ok(addr: &str, args: &[&str], within: Duration) -> String {
    raftkit_until(addr, args, within, |_| true)
}

/// Runs `raftkit ARGS` until it succeeds with an output `done` accepts
/// (a node answers before its groups have started: `status` then lists
/// nothing yet).
fn raftkit_until(
    addr: &str,
    args: &[&str],
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (ok, out, err) = raftkit(addr, args);
        if ok && done(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "`raftkit {}` against {addr} kept failing or answering too early: {err}\n{out}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_image_runs_raftkit_node_as_non_root() {
    let Some(image) = docker::image() else { return };
    let version = docker(&["run", "--rm", &image, "--version"]).unwrap();
    assert_eq!(
        version,
        format!("raftkit-node {}", env!("CARGO_PKG_VERSION")),
        "raftkit-node --version in the container"
    );
    // The CLI and the operator are in the image too.
    for bin in ["raftkit", "raftkit-operator"] {
        let entry = format!("/usr/local/bin/{bin}");
        let v = docker(&["run", "--rm", "--entrypoint", &entry, &image, "--version"]).unwrap();
        assert!(
            v.contains(env!("CARGO_PKG_VERSION")),
            "{bin} --version: {v}"
        );
    }
    let inspect = |fmt: &str| docker(&["image", "inspect", "--format", fmt, &image]).unwrap();
    assert_eq!(inspect("{{.Config.User}}"), "65532:65532");
    assert!(inspect("{{json .Config.ExposedPorts}}").contains("8080/tcp"));
    assert!(inspect("{{json .Config.Entrypoint}}").contains("raftkit-node"));
    assert_eq!(
        inspect("{{index .Config.Labels \"org.opencontainers.image.version\"}}"),
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn a_one_node_cluster_in_a_container_answers_the_host() {
    let Some(image) = docker::image() else { return };
    let scope = DockerScope::new("one-node");
    let data = scope.volume("data");
    // The node listens, advertises and is published on one port, so the
    // address it reports is the one the host reaches it at.
    let port = free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let publish = format!("127.0.0.1:{port}:{port}");
    let listen = format!("0.0.0.0:{port}");
    let volume = format!("{data}:/var/lib/raftkit");
    let node = scope.create(
        "node",
        &[
            "-p",
            &publish,
            "-v",
            &volume,
            &image,
            "--listen",
            &listen,
            "--advertise",
            &addr,
            "--initial-conf",
            &addr,
        ],
    );
    docker(&["start", &node]).unwrap();

    let status = raftkit_until(&addr, &["status"], Duration::from_secs(30), |out| {
        out.contains("leader")
    });
    assert!(
        status.contains(&addr) && status.contains("leader"),
        "raftkit status from the host:\n{status}"
    );
    assert_eq!(
        raftkit_until_ok(
            &addr,
            &["counter", "fetch-add", "5"],
            Duration::from_secs(10)
        )
        .trim(),
        "0"
    );
    // The CLI inside the image reaches the node too.
    let inside = docker(&[
        "exec",
        &node,
        "/usr/local/bin/raftkit",
        "--cluster",
        &addr,
        "counter",
        "get",
    ])
    .unwrap();
    assert_eq!(inside, "5", "raftkit counter get inside the container");

    // The data lives in the volume, written by the non-root user: after a
    // restart the node comes back with it.
    docker(&["restart", "--time", "10", &node]).unwrap();
    assert_eq!(
        raftkit_until_ok(&addr, &["counter", "get"], Duration::from_secs(30)).trim(),
        "5",
        "the counter after a container restart"
    );
}
