//! Every setting of a `raftkit-node`, declared once: its name (as `/flags`
//! shows it), its command-line flag, its environment variable, its
//! default, its bounds, a one-line help, and whether it can change while
//! the node runs. The node checks every value against it ([`validate`]:
//! on start for the numbers it was given, and on `POST /flags`) and lists
//! `/flags` from it; the operator sets a pod's environment from it. The
//! flags themselves are a clap derive in `node/src/config.rs` that takes
//! each flag's help from here (adding, for a few, a longer explanation
//! `--help` shows after it), and whose test fails when a flag, environment
//! variable, default or help disagrees with this table.

/// What values a setting takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bounds {
    /// Text checked where it is used (addresses, URIs, log filters).
    Text,
    /// `true` or `false`.
    Bool,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A whole number in `min..=max`.
    Number { min: u64, max: u64 },
    /// `word`, or a whole number in `min..=max`.
    NumberOr {
        word: &'static str,
        min: u64,
        max: u64,
    },
}

impl Bounds {
    /// The range of a number, as an error message states it.
    fn range(min: u64, max: u64) -> String {
        match (min, max) {
            (0, u64::MAX) => "any whole number".to_string(),
            (min, u64::MAX) => format!("at least {min}"),
            (0, max) => format!("at most {max}"),
            (min, max) => format!("at least {min} and at most {max}"),
        }
    }
}

impl std::fmt::Display for Bounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bounds::Text => f.write_str("text"),
            Bounds::Bool => f.write_str("true or false"),
            Bounds::OneOf(words) => f.write_str(&words.join(" or ")),
            Bounds::Number { min, max } => f.write_str(&Bounds::range(*min, *max)),
            Bounds::NumberOr { word, min, max } => {
                write!(f, "{word}, or {}", Bounds::range(*min, *max))
            }
        }
    }
}

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
    /// What values it takes.
    pub bounds: Bounds,
    /// What it does, in one line.
    pub help: &'static str,
    /// What `raftkit-node --help` adds after that line (empty: nothing).
    pub more: &'static str,
}

impl Setting {
    /// Checks `value` against the bounds; the error names the setting,
    /// where it comes from (flag, environment variable) and what it takes.
    pub fn check(&self, value: &str) -> Result<(), String> {
        let value = value.trim();
        let bad = |what: String| {
            Err(format!(
                "{}: {what} ({}; {})",
                self.name,
                self.sources(),
                self.help
            ))
        };
        let number = |min: u64, max: u64| match value.parse::<u64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(()),
            Ok(v) => bad(format!("{v} is out of range: {}", Bounds::range(min, max))),
            Err(_) => bad(format!("{value:?} is not a non-negative integer")),
        };
        match self.bounds {
            Bounds::Text => Ok(()),
            Bounds::Bool if value == "true" || value == "false" => Ok(()),
            Bounds::Bool => bad(format!("{value:?} is neither true nor false")),
            Bounds::OneOf(words) if words.contains(&value) => Ok(()),
            Bounds::OneOf(words) => bad(format!("{value:?} is not {}", words.join(" or "))),
            Bounds::Number { min, max } => number(min, max),
            Bounds::NumberOr { word, .. } if value == word => Ok(()),
            Bounds::NumberOr { word, min, max } => match value.parse::<u64>() {
                Ok(_) => number(min, max),
                Err(_) => bad(format!("{value:?} is neither `{word}` nor a whole number")),
            },
        }
    }

    /// Where a value comes from: `--flag, RAFTKIT_…`.
    pub fn sources(&self) -> String {
        match self.flag {
            Some(f) => format!("--{f}, {}", self.env),
            None => self.env.to_string(),
        }
    }
}

/// Checks `value` for the setting `name` (see [`Setting::check`]).
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    setting(name)
        .ok_or_else(|| format!("unknown setting {name:?}"))?
        .check(value)
}

const fn flag(
    name: &'static str,
    flag: &'static str,
    env: &'static str,
    default: Option<&'static str>,
    live: bool,
    bounds: Bounds,
    help: &'static str,
) -> Setting {
    Setting {
        name,
        flag: Some(flag),
        env,
        default,
        live,
        in_flags: true,
        bounds,
        help,
        more: "",
    }
}

const fn env_only(name: &'static str, env: &'static str, help: &'static str) -> Setting {
    Setting {
        name,
        flag: None,
        env,
        default: None,
        live: false,
        in_flags: false,
        bounds: Bounds::Text,
        help,
        more: "",
    }
}

const fn number(min: u64, max: u64) -> Bounds {
    Bounds::Number { min, max }
}

const ANY: u64 = u64::MAX;

/// The settings of `raftkit-node`, in `--help` order.
pub const NODE_SETTINGS: &[Setting] = &[
    flag(
        "listen",
        "listen",
        "RAFTKIT_LISTEN",
        None,
        false,
        Bounds::Text,
        "Address to listen on for gRPC and HTTP (IP:PORT).",
    ),
    flag(
        "advertise",
        "advertise",
        "RAFTKIT_ADVERTISE",
        None,
        false,
        Bounds::Text,
        "Address peers and clients use to reach this node (HOST:PORT; default: --listen).",
    ),
    flag(
        "data_dir",
        "data-dir",
        "RAFTKIT_DATA_DIR",
        None,
        false,
        Bounds::Text,
        "Directory for this node's log, meta and snapshots.",
    ),
    // --group and --state-machine are shown in /flags as `groups`.
    Setting {
        in_flags: false,
        ..flag(
            "group",
            "group",
            "RAFTKIT_GROUP",
            None,
            false,
            Bounds::Text,
            "Raft group name (default: the state machine's name).",
        )
    },
    Setting {
        in_flags: false,
        ..flag(
            "state_machine",
            "state-machine",
            "RAFTKIT_STATE_MACHINE",
            Some("counter"),
            false,
            Bounds::OneOf(&["counter", "kv"]),
            "Application the group runs.",
        )
    },
    flag(
        "groups",
        "groups",
        "RAFTKIT_GROUPS",
        None,
        false,
        Bounds::Text,
        "Host several groups: NAME:STATE_MACHINE,... (instead of --group/--state-machine).",
    ),
    flag(
        "initial_conf",
        "initial-conf",
        "RAFTKIT_INITIAL_CONF",
        None,
        false,
        Bounds::Text,
        "Addresses of the first members; used only when the node has no data.",
    ),
    flag(
        "election_timeout_ms",
        "election-timeout-ms",
        "RAFTKIT_ELECTION_TIMEOUT_MS",
        Some("1000"),
        true,
        number(10, 600_000),
        "Election timeout in milliseconds.",
    ),
    flag(
        "snapshot_interval_s",
        "snapshot-interval-s",
        "RAFTKIT_SNAPSHOT_INTERVAL_S",
        Some("3600"),
        true,
        number(0, ANY),
        "Seconds between snapshots (0: never).",
    ),
    flag(
        "snapshot_log_gap",
        "snapshot-log-gap",
        "RAFTKIT_SNAPSHOT_LOG_GAP",
        Some("100000"),
        true,
        number(0, ANY),
        "Also snapshot once this many entries were applied since the last snapshot (0: never).",
    ),
    flag(
        "snapshot_margin",
        "snapshot-margin",
        "RAFTKIT_SNAPSHOT_MARGIN",
        Some("1000"),
        true,
        number(0, ANY),
        "Entries kept before the snapshot when the log is compacted.",
    ),
    flag(
        "catchup_margin",
        "catchup-margin",
        "RAFTKIT_CATCHUP_MARGIN",
        Some("1000"),
        true,
        number(0, ANY),
        "Entries a member may lag the leader's last index and count as caught up (promotion, leader transfer, readiness).",
    ),
    flag(
        "snapshot_chunk_bytes",
        "snapshot-chunk-bytes",
        "RAFTKIT_SNAPSHOT_CHUNK_BYTES",
        Some("1048576"),
        false,
        number(1, 16 << 20),
        "Chunk size for sending snapshots to followers (bytes).",
    ),
    flag(
        "snapshot_throttle_bytes_per_sec",
        "snapshot-throttle-bytes-per-sec",
        "RAFTKIT_SNAPSHOT_THROTTLE_BYTES_PER_SEC",
        Some("0"),
        true,
        number(0, ANY),
        "Bandwidth a leader spends on snapshot transfers, bytes per second (0: unlimited).",
    ),
    flag(
        "max_snapshot_installs",
        "max-snapshot-installs",
        "RAFTKIT_MAX_SNAPSHOT_INSTALLS",
        Some("2"),
        false,
        number(1, 1024),
        "Snapshot transfers a leader runs at once.",
    ),
    Setting {
        more: "It runs from 1 to the newest this build supports; lower makes the node behave as an older build during a rolling upgrade.",
        ..flag(
            "max_cluster_format",
            "max-cluster-format",
            "RAFTKIT_MAX_CLUSTER_FORMAT",
            Some("2"),
            false,
            number(1, 2),
            "The highest cluster format this node claims and applies.",
        )
    },
    flag(
        "log_uri",
        "log-uri",
        "RAFTKIT_LOG_URI",
        None,
        false,
        Bounds::Text,
        "Log storage URI; {group} and {data_dir} are substituted (default: local://{data_dir}/{group}/log).",
    ),
    flag(
        "raft_meta_uri",
        "raft-meta-uri",
        "RAFTKIT_RAFT_META_URI",
        None,
        false,
        Bounds::Text,
        "Raft meta storage URI (default: local://{data_dir}/{group}/meta).",
    ),
    flag(
        "snapshot_uri",
        "snapshot-uri",
        "RAFTKIT_SNAPSHOT_URI",
        None,
        false,
        Bounds::Text,
        "Snapshot storage URI (default: local://{data_dir}/{group}/snapshot).",
    ),
    Setting {
        more: "Turning it off risks losing acknowledged writes on power loss.",
        ..flag(
            "sync",
            "sync",
            "RAFTKIT_SYNC",
            Some("true"),
            false,
            Bounds::Bool,
            "fsync the log and meta before acknowledging.",
        )
    },
    Setting {
        more: "A client must not retry one write for longer than this.",
        ..flag(
            "session_idle_ms",
            "session-idle-ms",
            "RAFTKIT_SESSION_IDLE_MS",
            Some("600000"),
            false,
            // At most 100 years.
            number(1, 100 * 365 * 24 * 3600 * 1000),
            "How long an idle client session is remembered (ms, at most 100 years).",
        )
    },
    flag(
        "read_mode",
        "read-mode",
        "RAFTKIT_READ_MODE",
        Some("read-index"),
        false,
        Bounds::OneOf(&["read-index", "lease"]),
        "How linearizable reads are confirmed: read-index or lease.",
    ),
    Setting {
        more: "`auto`: 1000 µs unless the cgroup has a CPU quota or only one CPU is usable, then off. The spinning runs at the lowest priority, so that the next wake-up does not pay for a halted CPU: it trades idle CPU time for latency (see docs/architecture.md, \"Idle polling\"). Changeable at run time: POST /flags?idle_poll_us=N|auto.",
        ..flag(
            "idle_poll_us",
            "idle-poll-us",
            "RAFTKIT_IDLE_POLL_US",
            Some("auto"),
            true,
            Bounds::NumberOr {
                word: "auto",
                min: 0,
                max: 1_000_000,
            },
            "Keep idle CPUs awake this many µs after each raft input at light load (0: off).",
        )
    },
    Setting {
        in_flags: false,
        more: "Each group also runs its own raft, I/O and apply threads, so networking needs fewer than the CPU count.",
        ..flag(
            "worker_threads",
            "worker-threads",
            "RAFTKIT_WORKER_THREADS",
            Some("0"),
            false,
            number(0, 256),
            "Threads serving the network (0: one per four CPUs, at least one).",
        )
    },
    Setting {
        more: "With --tls-key and --tls-ca, every connection to the port is mutual TLS: raft and mux streams, gRPC and HTTP. Roles come from the certificate's OU: raftkit-node (a member; its SANs name its advertised host), raftkit-admin (membership, leadership, snapshots, flags), anything else the CA signed (Counter, KV, status). Files are reloaded when they change.",
        ..flag(
            "tls_cert",
            "tls-cert",
            "RAFTKIT_TLS_CERT",
            None,
            false,
            Bounds::Text,
            "PEM certificate of this node (turns TLS on, with --tls-key and --tls-ca).",
        )
    },
    flag(
        "tls_key",
        "tls-key",
        "RAFTKIT_TLS_KEY",
        None,
        false,
        Bounds::Text,
        "PEM private key of --tls-cert.",
    ),
    flag(
        "tls_ca",
        "tls-ca",
        "RAFTKIT_TLS_CA",
        None,
        false,
        Bounds::Text,
        "PEM CA certificates peers' and clients' certificates must chain to.",
    ),
    flag(
        "tls_plain_probes",
        "tls-plain-probes",
        "RAFTKIT_TLS_PLAIN_PROBES",
        Some("true"),
        false,
        Bounds::Bool,
        "With TLS on, also answer plain HTTP GET /livez, /healthz, /readyz and /metrics (probes, scrapers).",
    ),
    // Not a flag: the log filter, from RUST_LOG; changeable in /flags.
    Setting {
        name: "log_level",
        flag: None,
        env: "RUST_LOG",
        default: Some("info"),
        live: true,
        in_flags: true,
        bounds: Bounds::Text,
        help: "The log filter (tracing's EnvFilter syntax).",
        more: "",
    },
    // Engine knobs for comparisons and fault tests, environment only.
    env_only(
        "inline_raft",
        "RAFTKIT_INLINE_RAFT",
        "0: always queue raft inputs to the raft thread.",
    ),
    env_only(
        "inline_apply",
        "RAFTKIT_INLINE_APPLY",
        "0: always queue commits to the apply thread.",
    ),
    env_only(
        "inline_leader_write",
        "RAFTKIT_INLINE_LEADER_WRITE",
        "0: a leader never writes its entries on the delivering thread.",
    ),
    env_only(
        "failpoints",
        "RAFTKIT_FAILPOINTS",
        "Failpoints to set at start: name=action;...",
    ),
    env_only(
        "fault_injection",
        "RAFTKIT_FAULT_INJECTION",
        "1: serve the /debug fault-injection endpoints.",
    ),
    env_only(
        "fault_injection_with_tls",
        "RAFTKIT_FAULT_INJECTION_WITH_TLS",
        "1: allow RAFTKIT_FAULT_INJECTION=1 with TLS on (its endpoints let an admin cut links).",
    ),
    env_only(
        "stage_trace",
        "RAFTKIT_STAGE_TRACE",
        "Set: record per-stage timestamps of replicated writes.",
    ),
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
        for s in NODE_SETTINGS {
            assert!(!s.help.is_empty(), "{} has no help", s.name);
            if let Some(d) = s.default {
                assert_eq!(s.check(d), Ok(()), "the default of {}", s.name);
            }
        }
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

    #[test]
    fn values_are_checked_against_the_bounds_and_errors_say_them() {
        assert_eq!(validate("election_timeout_ms", "500"), Ok(()));
        let e = validate("election_timeout_ms", "5").unwrap_err();
        assert!(
            e.starts_with("election_timeout_ms: 5 is out of range: at least 10 and at most 600000")
                && e.contains("--election-timeout-ms, RAFTKIT_ELECTION_TIMEOUT_MS"),
            "{e}"
        );
        let e = validate("snapshot_log_gap", "-1").unwrap_err();
        assert!(e.contains("\"-1\" is not a non-negative integer"), "{e}");
        assert!(validate("snapshot_log_gap", "18446744073709551615").is_ok());
        assert_eq!(validate("idle_poll_us", "auto"), Ok(()));
        let e = validate("idle_poll_us", "soon").unwrap_err();
        assert!(e.contains("neither `auto` nor a whole number"), "{e}");
        let e = validate("idle_poll_us", "5000000").unwrap_err();
        assert!(e.contains("out of range: at most 1000000"), "{e}");
        let e = validate("max_snapshot_installs", "0").unwrap_err();
        assert!(e.contains("out of range: at least 1 and"), "{e}");
        assert!(validate("sync", "maybe")
            .unwrap_err()
            .contains("neither true nor false"));
        assert!(validate("read_mode", "fast")
            .unwrap_err()
            .contains("is not read-index or lease"));
        assert_eq!(validate("log_uri", "anything"), Ok(()));
        assert!(validate("no_such", "1")
            .unwrap_err()
            .contains("unknown setting"));
    }
}
