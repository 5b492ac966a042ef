//! Command-line flags of the node server, shared by `raftkit-node` and the
//! `raftkit-node` server. Every flag can also come from an environment
//! variable (`RAFTKIT_…`), for Kubernetes.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args};

use crate::options::ReadMode;
use crate::server::{ServerConfig, ServerError, StateMachineKind};

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Address to listen on for gRPC and HTTP.
    #[arg(long, env = "RAFTKIT_LISTEN", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node [default: --listen].
    #[arg(long, env = "RAFTKIT_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Directory for this node's log, meta and snapshots.
    #[arg(long, env = "RAFTKIT_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Raft group name [default: the state machine's name].
    #[arg(long, env = "RAFTKIT_GROUP", value_name = "NAME")]
    pub group: Option<String>,
    /// Application the group runs.
    #[arg(
        long,
        env = "RAFTKIT_STATE_MACHINE",
        value_enum,
        default_value = "counter"
    )]
    pub state_machine: StateMachineKind,
    /// Host several groups: NAME:STATE_MACHINE,... (instead of --group/--state-machine).
    #[arg(
        long,
        env = "RAFTKIT_GROUPS",
        value_name = "NAME:SM,...",
        conflicts_with = "group"
    )]
    pub groups: Option<String>,
    /// Addresses of the first members; used only when the node has no data.
    #[arg(
        long,
        env = "RAFTKIT_INITIAL_CONF",
        value_name = "ADDR,ADDR,...",
        value_delimiter = ','
    )]
    pub initial_conf: Vec<String>,
    /// Election timeout in milliseconds.
    #[arg(long, env = "RAFTKIT_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,
    /// Seconds between snapshots (0: never).
    #[arg(long, env = "RAFTKIT_SNAPSHOT_INTERVAL_S", default_value_t = 3600)]
    pub snapshot_interval_s: u64,
    /// Also snapshot once this many entries were applied since the last
    /// snapshot (0: never).
    #[arg(long, env = "RAFTKIT_SNAPSHOT_LOG_GAP", default_value_t = 100_000)]
    pub snapshot_log_gap: u64,
    /// Entries kept before the snapshot when the log is compacted.
    #[arg(long, env = "RAFTKIT_SNAPSHOT_MARGIN", default_value_t = 1000)]
    pub snapshot_margin: u64,
    /// Entries a member may lag the leader's last index and count as
    /// caught up (promotion, leader transfer, readiness).
    #[arg(long, env = "RAFTKIT_CATCHUP_MARGIN", default_value_t = 1000)]
    pub catchup_margin: u64,
    /// Chunk size for sending snapshots to followers (bytes).
    #[arg(long, env = "RAFTKIT_SNAPSHOT_CHUNK_BYTES", default_value_t = 1 << 20)]
    pub snapshot_chunk_bytes: usize,
    /// Bandwidth a leader spends on snapshot transfers, bytes per second (0: unlimited).
    #[arg(
        long,
        env = "RAFTKIT_SNAPSHOT_THROTTLE_BYTES_PER_SEC",
        default_value_t = 0
    )]
    pub snapshot_throttle_bytes_per_sec: u64,
    /// Snapshot transfers a leader runs at once.
    #[arg(long, env = "RAFTKIT_MAX_SNAPSHOT_INSTALLS", default_value_t = 2)]
    pub max_snapshot_installs: usize,
    /// The highest cluster format this node claims and applies (1 to the
    /// newest this build supports, 2); lower makes it behave as an older
    /// build during a rolling upgrade.
    #[arg(long, env = "RAFTKIT_MAX_CLUSTER_FORMAT", default_value_t = crate::cluster_format::NEWEST)]
    pub max_cluster_format: u32,
    /// Log storage URI; {group} and {data_dir} are substituted
    /// [default: local://{data_dir}/{group}/log].
    #[arg(long, env = "RAFTKIT_LOG_URI", value_name = "URI")]
    pub log_uri: Option<String>,
    /// Raft meta storage URI [default: local://{data_dir}/{group}/meta].
    #[arg(long, env = "RAFTKIT_RAFT_META_URI", value_name = "URI")]
    pub raft_meta_uri: Option<String>,
    /// Snapshot storage URI [default: local://{data_dir}/{group}/snapshot].
    #[arg(long, env = "RAFTKIT_SNAPSHOT_URI", value_name = "URI")]
    pub snapshot_uri: Option<String>,
    /// fsync the log and meta before acknowledging (turning it off risks
    /// losing acknowledged writes on power loss).
    #[arg(long, env = "RAFTKIT_SYNC", default_value_t = true, action = ArgAction::Set, value_name = "true|false")]
    pub sync: bool,
    /// How long an idle client session is remembered (ms, at most 100
    /// years); a client must not retry one write for longer than this.
    #[arg(long, env = "RAFTKIT_SESSION_IDLE_MS", default_value_t = crate::services::sessions::DEFAULT_IDLE_MS)]
    pub session_idle_ms: u64,
    /// How linearizable reads are confirmed: read-index or lease.
    #[arg(long, env = "RAFTKIT_READ_MODE", default_value = "read-index", value_parser = parse_read_mode)]
    pub read_mode: ReadMode,
    /// Keep idle CPUs awake (spinning at the lowest priority) for this
    /// many µs after each raft input at light load, so the next wake-up
    /// does not pay for a halted CPU (0: off). `auto`: 1000 µs unless the
    /// cgroup has a CPU quota or only one CPU is usable, then off. Trades
    /// idle CPU time for latency; see docs/architecture.md, "Idle
    /// polling". Changeable at run time: POST /flags?idle_poll_us=N|auto.
    #[arg(long, env = "RAFTKIT_IDLE_POLL_US", default_value = "auto", value_parser = parse_idle_poll)]
    pub idle_poll_us: crate::idle_poll::IdlePoll,
    /// Threads serving the network (gRPC and HTTP); 0: one per four CPUs,
    /// at least one. Each group also runs its own raft, I/O and apply
    /// threads, so networking needs fewer than the CPU count.
    #[arg(long, env = "RAFTKIT_WORKER_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub worker_threads: u16,
}

impl NodeArgs {
    /// The tokio runtime the node runs on, sized by `--worker-threads`.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let threads = match self.worker_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get() / 4)
                .unwrap_or(1)
                .max(1),
            n => n as usize,
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .on_thread_start(crate::raft_loop::mark_server_runtime_thread)
            .build()
    }
}

fn parse_read_mode(s: &str) -> Result<ReadMode, String> {
    s.parse()
}

fn parse_idle_poll(s: &str) -> Result<crate::idle_poll::IdlePoll, String> {
    s.parse()
}

/// Parses `NAME:SM,NAME:SM`.
pub fn parse_groups(spec: &str) -> Result<Vec<(String, StateMachineKind)>, String> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let (name, sm) = item.trim().split_once(':').ok_or_else(|| {
                format!(
                    "group spec {item:?} is not NAME:STATE_MACHINE (for example counter:counter)"
                )
            })?;
            Ok((name.to_string(), sm.parse::<StateMachineKind>()?))
        })
        .collect()
}

impl NodeArgs {
    pub fn into_config(self) -> Result<ServerConfig, ServerError> {
        let groups = match &self.groups {
            Some(spec) => {
                parse_groups(spec).map_err(|e| ServerError::Config(format!("--groups: {e}")))?
            }
            None => vec![(
                self.group
                    .clone()
                    .unwrap_or_else(|| self.state_machine.as_str().to_string()),
                self.state_machine,
            )],
        };
        let initial_conf = self
            .initial_conf
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let config = ServerConfig {
            listen: self.listen,
            advertise: self.advertise,
            data_dir: self.data_dir,
            groups,
            initial_conf,
            election_timeout_ms: self.election_timeout_ms,
            snapshot_interval_s: self.snapshot_interval_s,
            snapshot_log_gap: self.snapshot_log_gap,
            snapshot_margin: self.snapshot_margin,
            catchup_margin: self.catchup_margin,
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
            snapshot_throttle_bytes_per_sec: self.snapshot_throttle_bytes_per_sec,
            max_snapshot_installs: self.max_snapshot_installs,
            max_cluster_format: self.max_cluster_format,
            log_uri: self.log_uri,
            raft_meta_uri: self.raft_meta_uri,
            snapshot_uri: self.snapshot_uri,
            sync: self.sync,
            read_mode: self.read_mode,
            session_idle_ms: self.session_idle_ms,
            idle_poll_us: self.idle_poll_us,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServerConfig, String> {
        let t = T::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        t.node.into_config().map_err(|e| e.to_string())
    }

    /// The flags, environment variables and defaults of `raftkit-node`,
    /// and what `/flags` lists, agree with the one settings table
    /// (`raftkit_proto::settings`) the operator builds pods from.
    #[test]
    fn flags_env_defaults_and_the_flags_page_agree_with_the_settings_table() {
        use clap::CommandFactory;
        use raftkit_proto::settings::NODE_SETTINGS;
        let cmd = T::command();
        let mut seen = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            let s = NODE_SETTINGS
                .iter()
                .find(|s| s.flag == Some(long))
                .unwrap_or_else(|| panic!("--{long} is missing from the settings table"));
            let env = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(env, Some(s.env), "environment variable of --{long}");
            let default: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().to_string())
                .collect();
            let default = (!default.is_empty()).then(|| default.join(","));
            assert_eq!(default.as_deref(), s.default, "default of --{long}");
            seen.push(s.name);
        }
        for s in NODE_SETTINGS.iter().filter(|s| s.flag.is_some()) {
            assert!(seen.contains(&s.name), "--{:?} is not a flag", s.flag);
        }
        // /flags: the fixed settings, the live ones, idle polling and the log filter.
        let c = parse(&["--listen", "127.0.0.1:8100", "--data-dir", "/tmp/x"]).unwrap();
        let mut shown: Vec<String> = c.fixed_flags().into_iter().map(|(n, _)| n).collect();
        let live: Vec<&str> = crate::options::LiveOptions::NAMES
            .iter()
            .copied()
            .chain(["idle_poll_us", "log_level"])
            .collect();
        shown.extend(live.iter().map(|n| n.to_string()));
        shown.sort();
        let mut expected: Vec<String> = NODE_SETTINGS
            .iter()
            .filter(|s| s.in_flags)
            .map(|s| s.name.to_string())
            .collect();
        expected.sort();
        assert_eq!(shown, expected, "/flags and the settings table differ");
        let mut table_live: Vec<&str> = NODE_SETTINGS
            .iter()
            .filter(|s| s.live)
            .map(|s| s.name)
            .collect();
        table_live.sort();
        let mut live = live;
        live.sort();
        assert_eq!(table_live, live, "changeable settings");
    }

    /// The table's bounds are the limits the engine's own code lives by.
    #[test]
    fn the_settings_tables_bounds_match_the_engines_limits() {
        use raftkit_proto::settings::{setting, Bounds};
        let bounds = |name: &str| setting(name).map(|s| s.bounds);
        assert_eq!(
            bounds("max_cluster_format"),
            Some(Bounds::Number {
                min: u64::from(crate::cluster_format::BASE),
                max: u64::from(crate::cluster_format::NEWEST),
            })
        );
        assert_eq!(
            bounds("session_idle_ms"),
            Some(Bounds::Number {
                min: 1,
                max: crate::services::sessions::MAX_IDLE_MS,
            })
        );
        assert_eq!(
            bounds("idle_poll_us"),
            Some(Bounds::NumberOr {
                word: "auto",
                min: 0,
                max: crate::idle_poll::MAX_WINDOW_US,
            })
        );
        // Every value a parsed configuration holds passes the table, and
        // /flags shows the read mode as the flag takes it.
        let c = parse(&["--listen", "127.0.0.1:8100", "--data-dir", "/tmp/x"]).unwrap();
        for (name, value) in c.setting_values() {
            assert_eq!(
                raftkit_proto::settings::validate(name, &value),
                Ok(()),
                "{name}"
            );
        }
        let c = parse(&[
            "--listen",
            "127.0.0.1:8100",
            "--data-dir",
            "/tmp/x",
            "--read-mode",
            "lease",
        ])
        .unwrap();
        assert!(c
            .fixed_flags()
            .contains(&("read_mode".to_string(), "lease".to_string())));
    }

    #[test]
    fn defaults_and_group_naming() {
        let c = parse(&["--listen", "127.0.0.1:8100", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(
            c.groups,
            vec![("counter".to_string(), StateMachineKind::Counter)]
        );
        let o = c.node_options("counter").unwrap();
        assert_eq!(o.log_uri, "local:///tmp/x/counter/log");
        assert_eq!(o.addr, "127.0.0.1:8100");
        let c = parse(&[
            "--listen",
            "127.0.0.1:8100",
            "--data-dir",
            "/d",
            "--groups",
            "a:counter,b:kv",
            "--initial-conf",
            "127.0.0.1:8100,127.0.0.1:8101",
        ])
        .unwrap();
        assert_eq!(c.groups.len(), 2);
        assert_eq!(c.initial_conf.len(), 2);
    }

    #[test]
    fn bad_flags_get_clear_errors() {
        let e = parse(&["--listen", "0.0.0.0:8100", "--data-dir", "/d"]).unwrap_err();
        assert!(e.contains("--advertise"), "{e}");
        let base = ["--listen", "127.0.0.1:8100", "--data-dir", "/d"];
        let cases: &[(&[&str], &str)] = &[
            (&["--groups", "a:redis"], "unknown state machine"),
            (
                &["--groups", "a:kv,b:kv", "--log-uri", "local:///x"],
                "{group}",
            ),
            (
                &["--initial-conf", "127.0.0.1:9,127.0.0.1:10"],
                "not in the initial conf",
            ),
            (&["--log-uri", "nfs://x"], "log uri"),
            (&["--sync", "maybe"], "maybe"),
            (&["--worker-threads", "1000"], "0..=256"),
            (
                &["--session-idle-ms", "0"],
                "session_idle_ms: 0 is out of range: at least 1 and at most 3153600000000 (--session-idle-ms, RAFTKIT_SESSION_IDLE_MS;",
            ),
            (
                &["--session-idle-ms", "18446744073709551615"],
                "at most 100 years",
            ),
            // Bounds from the settings table, named with the setting.
            (
                &["--election-timeout-ms", "5"],
                "election_timeout_ms: 5 is out of range: at least 10 and at most 600000 (--election-timeout-ms, RAFTKIT_ELECTION_TIMEOUT_MS;",
            ),
            (
                &["--snapshot-chunk-bytes", "0"],
                "snapshot_chunk_bytes: 0 is out of range: at least 1 and at most 16777216",
            ),
            (
                &["--max-snapshot-installs", "0"],
                "max_snapshot_installs: 0 is out of range: at least 1",
            ),
            (
                &["--max-cluster-format", "3"],
                "max_cluster_format: 3 is out of range: at least 1 and at most 2",
            ),
            (
                &["--idle-poll-us", "2000000"],
                "at most 1000000",
            ),
        ];
        for (extra, wanted) in cases {
            let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
            let e = parse(&args).expect_err(&format!("{extra:?} must be refused"));
            assert!(e.contains(wanted), "{extra:?}: {e}");
        }
    }
}
