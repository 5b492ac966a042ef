//! Every setting of a `raftkit-node`, declared once: its name (as `/flags`
//! shows it), its command-line flag, its environment variable, its
//! default, and whether it can change while the node runs. Callers build a
//! node's configuration from this table (the operator sets a pod's
//! environment from it), and a test of the node checks that its flags,
//! environment variables, defaults and `/flags` agree with it.

/// One setting of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Its name in `/flags` (snake case).
    pub name: &'static str,
    /// The command-line flag, without `--`; `None` for settings read from
    /// the environment only.
    pub flag: Option<&'static str>,
    /// The environment variable.
    pub env: &'static str,
    /// The default as the flag would take it; `None` when it has none (it
    /// is required, or derived from other settings).
    pub default: Option<&'static str>,
    /// Changeable at run time with `POST /flags?name=value`.
    pub live: bool,
    /// Shown in `/flags` (the engine-tuning environment knobs are not).
    pub in_flags: bool,
}

const fn flag(
    name: &'static str,
    flag: &'static str,
    env: &'static str,
    default: Option<&'static str>,
    live: bool,
) -> Setting {
    Setting {
        name,
        flag: Some(flag),
        env,
        default,
        live,
        in_flags: true,
    }
}

const fn env_only(name: &'static str, env: &'static str) -> Setting {
    Setting {
        name,
        flag: None,
        env,
        default: None,
        live: false,
        in_flags: false,
    }
}

/// The settings of `raftkit-node`, in `--help` order.
pub const NODE_SETTINGS: &[Setting] = &[
    flag("listen", "listen", "RAFTKIT_LISTEN", None, false),
    flag("advertise", "advertise", "RAFTKIT_ADVERTISE", None, false),
    flag("data_dir", "data-dir", "RAFTKIT_DATA_DIR", None, false),
    // --group and --state-machine are shown in /flags as `groups`.
    Setting {
        in_flags: false,
        ..flag("group", "group", "RAFTKIT_GROUP", None, false)
    },
    Setting {
        in_flags: false,
        ..flag(
            "state_machine",
            "state-machine",
            "RAFTKIT_STATE_MACHINE",
            Some("counter"),
            false,
        )
    },
    flag("groups", "groups", "RAFTKIT_GROUPS", None, false),
    flag(
        "initial_conf",
        "initial-conf",
        "RAFTKIT_INITIAL_CONF",
        None,
        false,
    ),
    flag(
        "election_timeout_ms",
        "election-timeout-ms",
        "RAFTKIT_ELECTION_TIMEOUT_MS",
        Some("1000"),
        true,
    ),
    flag(
        "snapshot_interval_s",
        "snapshot-interval-s",
        "RAFTKIT_SNAPSHOT_INTERVAL_S",
        Some("3600"),
        true,
    ),
    flag(
        "snapshot_log_gap",
        "snapshot-log-gap",
        "RAFTKIT_SNAPSHOT_LOG_GAP",
        Some("100000"),
        true,
    ),
    flag(
        "snapshot_margin",
        "snapshot-margin",
        "RAFTKIT_SNAPSHOT_MARGIN",
        Some("1000"),
        true,
    ),
    flag(
        "catchup_margin",
        "catchup-margin",
        "RAFTKIT_CATCHUP_MARGIN",
        Some("1000"),
        true,
    ),
    flag(
        "snapshot_chunk_bytes",
        "snapshot-chunk-bytes",
        "RAFTKIT_SNAPSHOT_CHUNK_BYTES",
        Some("1048576"),
        false,
    ),
    flag(
        "snapshot_throttle_bytes_per_sec",
        "snapshot-throttle-bytes-per-sec",
        "RAFTKIT_SNAPSHOT_THROTTLE_BYTES_PER_SEC",
        Some("0"),
        true,
    ),
    flag(
        "max_snapshot_installs",
        "max-snapshot-installs",
        "RAFTKIT_MAX_SNAPSHOT_INSTALLS",
        Some("2"),
        false,
    ),
    flag(
        "max_cluster_format",
        "max-cluster-format",
        "RAFTKIT_MAX_CLUSTER_FORMAT",
        Some("2"),
        false,
    ),
    flag("log_uri", "log-uri", "RAFTKIT_LOG_URI", None, false),
    flag(
        "raft_meta_uri",
        "raft-meta-uri",
        "RAFTKIT_RAFT_META_URI",
        None,
        false,
    ),
    flag(
        "snapshot_uri",
        "snapshot-uri",
        "RAFTKIT_SNAPSHOT_URI",
        None,
        false,
    ),
    flag("sync", "sync", "RAFTKIT_SYNC", Some("true"), false),
    flag(
        "session_idle_ms",
        "session-idle-ms",
        "RAFTKIT_SESSION_IDLE_MS",
        Some("600000"),
        false,
    ),
    flag(
        "read_mode",
        "read-mode",
        "RAFTKIT_READ_MODE",
        Some("read-index"),
        false,
    ),
    flag(
        "idle_poll_us",
        "idle-poll-us",
        "RAFTKIT_IDLE_POLL_US",
        Some("auto"),
        true,
    ),
    Setting {
        in_flags: false,
        ..flag(
            "worker_threads",
            "worker-threads",
            "RAFTKIT_WORKER_THREADS",
            Some("0"),
            false,
        )
    },
    // Not a flag: the log filter, from RUST_LOG; changeable in /flags.
    Setting {
        name: "log_level",
        flag: None,
        env: "RUST_LOG",
        default: Some("info"),
        live: true,
        in_flags: true,
    },
    // Engine knobs for comparisons and fault tests, environment only.
    env_only("inline_raft", "RAFTKIT_INLINE_RAFT"),
    env_only("inline_apply", "RAFTKIT_INLINE_APPLY"),
    env_only("inline_leader_write", "RAFTKIT_INLINE_LEADER_WRITE"),
    env_only("failpoints", "RAFTKIT_FAILPOINTS"),
    env_only("fault_injection", "RAFTKIT_FAULT_INJECTION"),
    env_only("stage_trace", "RAFTKIT_STAGE_TRACE"),
];

/// The setting named `name` (as in `/flags`).
pub fn setting(name: &str) -> Option<&'static Setting> {
    NODE_SETTINGS.iter().find(|s| s.name == name)
}

/// The value of setting `name` from the environment, for the settings read
/// where they are used (the engine's environment-only knobs).
pub fn from_env(name: &str) -> Option<String> {
    std::env::var(setting(name)?.env).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_flags_and_environment_variables_follow_one_scheme() {
        let mut names = std::collections::BTreeSet::new();
        for s in NODE_SETTINGS {
            assert!(names.insert(s.name), "{} declared twice", s.name);
            if let Some(f) = s.flag {
                assert_eq!(f.replace('-', "_"), s.name, "flag of {}", s.name);
                assert_eq!(
                    s.env,
                    format!("RAFTKIT_{}", s.name.to_uppercase()),
                    "env of {}",
                    s.name
                );
            }
        }
        assert_eq!(setting("sync").and_then(|s| s.default), Some("true"));
        for knob in [
            "inline_raft",
            "inline_apply",
            "inline_leader_write",
            "failpoints",
            "fault_injection",
            "stage_trace",
        ] {
            assert!(
                setting(knob).is_some(),
                "{knob} (read by the engine) is declared"
            );
        }
    }
}
