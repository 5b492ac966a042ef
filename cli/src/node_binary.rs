//! Finding the `raftkit-node` binary a local cluster runs (the playground;
//! later the operator's local mode): the path given, else the one beside
//! this program (cargo puts every workspace binary in the same directory),
//! else one on `PATH`. Run through `cargo run`, a missing binary is built
//! first, so `cargo run --bin raftkit -- playground` works on a fresh clone.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary's file name.
pub const NODE_BINARY: &str = "raftkit-node";

/// Finds (or, under `cargo run`, builds) `raftkit-node`; the error says
/// where it looked and how to provide it.
pub fn find_node_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        anyhow::ensure!(p.is_file(), "--node-binary {} is not a file", p.display());
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name(NODE_BINARY);
    if beside.is_file() {
        return Ok(beside);
    }
    if let (Some(cargo), Some(manifest)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) {
        // Under `cargo run` (which has released its locks by now): build the
        // node into the same target directory, with the same profile.
        let release = exe
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|d| d == "release");
        eprintln!("building {NODE_BINARY} (the playground's nodes) first ...");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "raftkit-node", "--bin", NODE_BINARY])
            .current_dir(manifest);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status()?;
        anyhow::ensure!(status.success(), "building {NODE_BINARY} failed");
        if beside.is_file() {
            return Ok(beside);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(NODE_BINARY);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    anyhow::bail!(
        "{NODE_BINARY} not found beside {} nor on PATH; build it with `cargo build --bin {NODE_BINARY}` or pass --node-binary",
        exe.display()
    )
}
