//! Failpoints for crash tests: named places in the engine where a test can
//! make the process abort, return an injected error, or pause.
//!
//! Configured once from the environment variable `RAFTKIT_FAILPOINTS`, as
//! `name=action;name=action`, where an action is `abort`, `error`,
//! `error(P)` (with probability P), `error_once` or `sleep(MS)`. Unset (the normal case),
//! a failpoint costs one atomic load.
//!
//! Failpoints: `snapshot_before_publish` (snapshot files and meta written,
//! directory not yet renamed into place), `snapshot_after_publish`,
//! `reply_after_apply` (a write was applied but its reply is lost, as if the
//! connection broke), `log_sync` (the `local://` log's fsync fails, as with
//! EIO: the group stops on the error, see `multiprocess_counter`).
//!
//! Failpoints can also be set while the node runs, when it was started with
//! `RAFTKIT_FAULT_INJECTION=1`: `POST /debug/failpoint?name=N&action=A` on its
//! HTTP port (`action=off` clears it; `GET /debug/failpoint` lists them).
//!
//! A network partition can also be set while the node runs, when it was
//! started with `RAFTKIT_FAULT_INJECTION=1`: `POST /debug/partition?peers=A,B`
//! on its HTTP port drops every raft message and snapshot this node sends to
//! or receives from those peer addresses (clients can still reach it, as in
//! Jepsen's "isolated leader"); `&direction=out` or `in` drops only what it
//! sends or only what it receives (a one-way partition); `peers=` heals. Without the variable the
//! endpoint answers 404 and nothing is ever dropped.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

/// What a failpoint does when reached.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Kill the process on the spot (like a power cut for the data).
    Abort,
    /// Make the operation fail with an injected error, every time or with
    /// the given probability.
    Error(f64),
    /// Fail once, then clear the failpoint (as a disk whose error the
    /// kernel reports to one fsync only, after which fsync succeeds though
    /// the data may be gone).
    ErrorOnce,
    /// Pause for this long, then continue.
    Sleep(Duration),
}

/// Reads one action: `abort`, `error`, `error(P)` with 0 <= P <= 1,
/// `error_once` or `sleep(MS)`.
pub fn parse_action(action: &str) -> Result<Action, String> {
    let a = action.trim();
    if a == "abort" {
        return Ok(Action::Abort);
    }
    if a == "error" {
        return Ok(Action::Error(1.0));
    }
    if a == "error_once" {
        return Ok(Action::ErrorOnce);
    }
    let arg = |prefix: &str| a.strip_prefix(prefix).and_then(|r| r.strip_suffix(')'));
    if let Some(ms) = arg("sleep(").and_then(|ms| ms.parse().ok()) {
        return Ok(Action::Sleep(Duration::from_millis(ms)));
    }
    if let Some(p) = arg("error(")
        .and_then(|p| p.parse::<f64>().ok())
        .filter(|p| (0.0..=1.0).contains(p))
    {
        return Ok(Action::Error(p));
    }
    Err(format!(
        "unknown failpoint action {a:?}; expected abort, error, error(P) with 0 <= P <= 1, error_once, or sleep(MS)"
    ))
}

fn parse(spec: &str) -> HashMap<String, Action> {
    let mut out = HashMap::new();
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, action)) = item.split_once('=') else {
            eprintln!("RAFTKIT_FAILPOINTS: ignoring {item:?} (expected name=action)");
            continue;
        };
        match parse_action(action) {
            Ok(a) => {
                out.insert(name.trim().to_string(), a);
            }
            Err(e) => eprintln!("RAFTKIT_FAILPOINTS: {name}: {e}"),
        }
    }
    out
}

/// Whether any failpoint is set: `hit` costs one atomic load when not.
static ANY_SET: AtomicBool = AtomicBool::new(false);

fn table() -> &'static RwLock<HashMap<String, Action>> {
    static T: OnceLock<RwLock<HashMap<String, Action>>> = OnceLock::new();
    T.get_or_init(|| {
        let t = raftkit_proto::settings::from_env("failpoints")
            .map(|s| parse(&s))
            .unwrap_or_default();
        ANY_SET.store(!t.is_empty(), Ordering::Release);
        RwLock::new(t)
    })
}

/// Sets failpoint `name` to `action` (`None` clears it) while the node
/// runs. Refused unless [`injection_enabled`].
pub fn set(name: &str, action: Option<Action>) -> Result<(), String> {
    if !injection_enabled() {
        return Err("fault injection is off; start the node with RAFTKIT_FAULT_INJECTION=1".into());
    }
    if name.is_empty() {
        return Err("missing failpoint name".into());
    }
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    match action {
        Some(a) => {
            t.insert(name.to_string(), a);
        }
        None => {
            t.remove(name);
        }
    }
    ANY_SET.store(!t.is_empty(), Ordering::Release);
    Ok(())
}

/// The failpoints set now, by name.
pub fn list() -> Vec<(String, Action)> {
    let t = table().read().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = t.iter().map(|(k, a)| (k.clone(), a.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Runs failpoint `name`. Returns `Err` when it is set to `error`; aborts
/// the process when set to `abort`.
pub fn hit(name: &str) -> Result<(), String> {
    let t = table();
    if !ANY_SET.load(Ordering::Acquire) {
        return Ok(());
    }
    let action = t
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned();
    match &action {
        None => Ok(()),
        Some(Action::Abort) => {
            eprintln!("failpoint {name}: aborting the process");
            std::process::abort();
        }
        Some(Action::Error(p)) if *p >= 1.0 || rand::random::<f64>() < *p => {
            Err(format!("failpoint {name}: injected error"))
        }
        Some(Action::Error(_)) => Ok(()),
        Some(Action::ErrorOnce) => {
            let mut t = t.write().unwrap_or_else(|e| e.into_inner());
            if t.remove(name).is_none() {
                return Ok(()); // another thread took it
            }
            ANY_SET.store(!t.is_empty(), Ordering::Release);
            Err(format!("failpoint {name}: injected error (once)"))
        }
        Some(Action::Sleep(d)) => {
            std::thread::sleep(*d);
            Ok(())
        }
    }
}

/// Whether run-time fault injection (the partition endpoint) is enabled.
pub fn injection_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        raftkit_proto::settings::from_env("fault_injection").is_some_and(|v| v == "1")
    })
}

/// Which way an injected partition drops traffic, seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// What this node sends to the peer.
    Out,
    /// What this node receives from the peer.
    In,
}

/// The peers this node drops traffic to (`out`) and from (`in`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Partition {
    pub out: BTreeSet<String>,
    pub r#in: BTreeSet<String>,
}

static ANY_CUT: AtomicBool = AtomicBool::new(false);

fn cut() -> &'static RwLock<Partition> {
    static CUT: OnceLock<RwLock<Partition>> = OnceLock::new();
    CUT.get_or_init(Default::default)
}

/// Sets the injected partition (both sets empty: healed). Refused unless
/// [`injection_enabled`].
pub fn set_partition(p: Partition) -> Result<(), String> {
    if !injection_enabled() {
        return Err("fault injection is off; start the node with RAFTKIT_FAULT_INJECTION=1".into());
    }
    let mut cur = cut().write().unwrap_or_else(|e| e.into_inner());
    ANY_CUT.store(!p.out.is_empty() || !p.r#in.is_empty(), Ordering::Release);
    *cur = p;
    Ok(())
}

/// The injected partition now.
pub fn partition() -> Partition {
    cut().read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Whether traffic with the peer at `addr` in direction `dir` is being
/// dropped. One atomic load when no partition is set.
pub fn is_cut(addr: &str, dir: Direction) -> bool {
    if !ANY_CUT.load(Ordering::Acquire) {
        return false;
    }
    let p = cut().read().unwrap_or_else(|e| e.into_inner());
    match dir {
        Direction::Out => p.out.contains(addr),
        Direction::In => p.r#in.contains(addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions() {
        let t = parse("a=abort; b=error;c=sleep(25);bad;d=explode;e=error(0.25);f=error(7)");
        assert_eq!(t.get("a"), Some(&Action::Abort));
        assert_eq!(t.get("b"), Some(&Action::Error(1.0)));
        assert_eq!(t.get("c"), Some(&Action::Sleep(Duration::from_millis(25))));
        assert_eq!(t.get("e"), Some(&Action::Error(0.25)));
        assert_eq!(t.len(), 4);
        let e = parse_action("error(2)").unwrap_err();
        assert!(e.contains("0 <= P <= 1"), "{e}");
    }
}
