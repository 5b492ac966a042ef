//! Docker for container tests (testing.md, layer 7): whether an engine
//! answers, the image `e2e/build-image.sh` builds, and [`DockerScope`],
//! which names every container, network and volume a test makes and
//! removes them all when dropped, pass or fail.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The repository root (testkit's parent directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives inside the workspace")
        .to_path_buf()
}

/// Runs `docker args...`; its stdout (trimmed) or an error naming the
/// command and what docker printed.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether a Docker engine answers here (`docker info`).
pub fn engine_answers() -> bool {
    docker(&["info", "--format", "{{.ServerVersion}}"]).is_ok()
}

/// The image tag `e2e/build-image.sh` built, building it once per test
/// process; `None`, with the reason printed, where no Docker engine answers
/// (the test then skips). A failing build panics: that is a real error.
///
/// By default the image packs the debug binaries `cargo test` has built
/// (`raftkit:<version>-dev`): a release build takes longer than CI can
/// spare. `RAFTKIT_E2E_PROFILE=release` builds and tests `raftkit:<version>`
/// as users get it; `RAFTKIT_E2E_IMAGE` names an image already built and
/// skips the build.
pub fn image() -> Option<String> {
    static IMAGE: OnceLock<Option<String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if !engine_answers() {
                eprintln!("skipped: no Docker engine answers (docker info failed)");
                return None;
            }
            if let Ok(tag) = std::env::var("RAFTKIT_E2E_IMAGE") {
                docker(&["image", "inspect", &tag]).expect("RAFTKIT_E2E_IMAGE names no image");
                return Some(tag);
            }
            let script = repo_root().join("e2e/build-image.sh");
            let started = std::time::Instant::now();
            let profile = std::env::var("RAFTKIT_E2E_PROFILE").unwrap_or_else(|_| "dev".into());
            let out = Command::new(&script)
                .env("RAFTKIT_PROFILE", profile)
                .current_dir(repo_root())
                .output()
                .expect("e2e/build-image.sh runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "e2e/build-image.sh failed ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let last = stdout.lines().last().unwrap_or_default().trim().to_string();
            if last.starts_with("skipped:") {
                eprintln!("{last}");
                return None;
            }
            eprintln!("image {last} built in {:?}", started.elapsed());
            Some(last)
        })
        .clone()
}

/// The containers, networks and volumes of one test, named
/// `rk<pid>-<test>-<name>` so that tests running at once never share one.
/// Dropping it removes them all (containers first), pass or fail; on a
/// failure it prints the tail of each container's log first.
pub struct DockerScope {
    prefix: String,
    containers: Mutex<Vec<String>>,
    networks: Mutex<Vec<String>>,
    volumes: Mutex<Vec<String>>,
}

fn remember(list: &Mutex<Vec<String>>, name: &str) {
    let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
    if !l.iter().any(|n| n == name) {
        l.push(name.to_string());
    }
}

impl DockerScope {
    pub fn new(test: &str) -> Self {
        DockerScope {
            prefix: format!("rk{}-{test}", std::process::id()),
            containers: Mutex::default(),
            networks: Mutex::default(),
            volumes: Mutex::default(),
        }
    }

    /// The full name of this test's object `name`.
    pub fn name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Creates a bridge network (`internal`: no route out of it, and no
    /// published ports through it); returns its full name.
    pub fn network(&self, name: &str, internal: bool) -> String {
        let full = self.name(name);
        remember(&self.networks, &full);
        let mut args = vec!["network", "create", "--driver", "bridge"];
        if internal {
            args.push("--internal");
        }
        args.push(&full);
        docker(&args).unwrap();
        full
    }

    /// Creates a volume; returns its full name.
    pub fn volume(&self, name: &str) -> String {
        let full = self.name(name);
        remember(&self.volumes, &full);
        docker(&["volume", "create", &full]).unwrap();
        full
    }

    /// `docker create --name <full name> args...` (the image and its
    /// arguments last in `args`); returns the full name. Removed with the
    /// scope.
    pub fn create(&self, name: &str, args: &[&str]) -> String {
        let full = self.name(name);
        remember(&self.containers, &full);
        let mut all = vec!["create", "--name", &full];
        all.extend_from_slice(args);
        docker(&all).unwrap();
        full
    }

    /// Removes a container of this scope now (`docker rm -f`).
    pub fn remove(&self, full: &str) {
        docker(&["rm", "-f", "-v", full]).unwrap();
    }

    fn each(list: &Mutex<Vec<String>>) -> Vec<String> {
        list.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for DockerScope {
    fn drop(&mut self) {
        let containers = Self::each(&self.containers);
        if std::thread::panicking() {
            for c in &containers {
                eprintln!("--- last log lines of {c}:");
                // Straight to this process's stdout and stderr.
                let _ = Command::new("docker")
                    .args(["logs", "--tail", "25", c])
                    .status();
            }
        }
        for c in &containers {
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        for n in Self::each(&self.networks) {
            if let Err(e) = docker(&["network", "rm", &n]) {
                eprintln!("cleanup: {e}");
            }
        }
        for v in Self::each(&self.volumes) {
            if let Err(e) = docker(&["volume", "rm", "-f", &v]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}
