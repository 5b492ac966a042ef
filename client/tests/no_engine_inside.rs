//! The client is what applications, the CLI and the operator link: it must
//! not drag in the engine (raft-rs), the server's HTTP stack (axum) or the
//! node crate itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_client_depends_on_neither_the_engine_nor_the_server() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--manifest-path",
            manifest,
            "-p",
            "raftkit-client",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.contains(&"raftkit-proto"), "{tree}");
    for banned in ["raft", "raft-proto", "axum", "raftkit-node"] {
        assert!(
            !names.contains(&banned),
            "raftkit-client depends on {banned}:\n{tree}"
        );
    }
}
