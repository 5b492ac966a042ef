//! Command-line flags of the node server, shared by `raftkit-node` and the
//! `raftkit-node` server. Every flag can also come from an environment
//! variable (`RAFTKIT_…`), for Kubernetes.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::{Resettable, StyledStr};
use clap::{ArgAction, Args};

use crate::options::ReadMode;
use crate::server::{ServerConfig, ServerError, StateMachineKind};

/// The flags of `raftkit-node`. Each flag's help is the one line of its
/// entry in the settings table (`raftkit_proto::settings::NODE_SETTINGS`,
/// named like the field); a few add a longer explanation that `--help`
/// shows after that line. The test below checks both ways.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    #[arg(
        long,
        env = "RAFTKIT_LISTEN",
        value_name = "IP:PORT",
        help = help("listen"),
        long_help = long_help("listen"),
    )]
    pub listen: SocketAddr,
    #[arg(
        long,
        env = "RAFTKIT_ADVERTISE",
        value_name = "HOST:PORT",
        help = help("advertise"),
        long_help = long_help("advertise"),
    )]
    pub advertise: Option<String>,
    #[arg(
        long,
        env = "RAFTKIT_DATA_DIR",
        value_name = "DIR",
        help = help("data_dir"),
        long_help = long_help("data_dir"),
    )]
    pub data_dir: PathBuf,
    #[arg(
        long,
        env = "RAFTKIT_GROUP",
        value_name = "NAME",
        help = help("group"),
        long_help = long_help("group"),
    )]
    pub group: Option<String>,
    #[arg(
        long,
        env = "RAFTKIT_STATE_MACHINE",
        value_enum,
        default_value = "counter",
        help = help("state_machine"),
        long_help = long_help("state_machine"),
    )]
    pub state_machine: StateMachineKind,
    #[arg(
        long,
        env = "RAFTKIT_GROUPS",
        value_name = "NAME:SM,...",
        conflicts_with = "group",
        help = help("groups"),
        long_help = long_help("groups"),
    )]
    pub groups: Option<String>,
    #[arg(
        long,
        env = "RAFTKIT_INITIAL_CONF",
        value_name = "ADDR,ADDR,...",
        value_delimiter = ',',
        help = help("initial_conf"),
        long_help = long_help("initial_conf"),
    )]
    pub initial_conf: Vec<String>,
    #[arg(
        long,
        env = "RAFTKIT_ELECTION_TIMEOUT_MS",
        default_value_t = 1000,
        help = help("election_timeout_ms"),
        long_help = long_help("election_timeout_ms"),
    )]
    pub election_timeout_ms: u64,
    #[arg(
        long,
        env = "RAFTKIT_SNAPSHOT_INTERVAL_S",
        default_value_t = 3600,
        help = help("snapshot_interval_s"),
        long_help = long_help("snapshot_interval_s"),
    )]
    pub snapshot_interval_s: u64,
    #[arg(
        long,
        env = "RAFTKIT_SNAPSHOT_LOG_GAP",
        default_value_t = 100_000,
        help = help("snapshot_log_gap"),
        long_help = long_help("snapshot_log_gap"),
    )]
    pub snapshot_log_gap: u64,
    #[arg(
        long,
        env = "RAFTKIT_SNAPSHOT_MARGIN",
        default_value_t = 1000,
        help = help("snapshot_margin"),
        long_help = long_help("snapshot_margin"),
    )]
    pub snapshot_margin: u64,
    #[arg(
        long,
        env = "RAFTKIT_CATCHUP_MARGIN",
        default_value_t = 1000,
        help = help("catchup_margin"),
        long_help = long_help("catchup_margin"),
    )]
    pub catchup_margin: u64,
    #[arg(
        long,
        env = "RAFTKIT_SNAPSHOT_CHUNK_BYTES",
        default_value_t = 1 << 20,
        help = help("snapshot_chunk_bytes"),
        long_help = long_help("snapshot_chunk_bytes"),
    )]
    pub snapshot_chunk_bytes: usize,
    #[arg(
        long,
        env = "RAFTKIT_SNAPSHOT_THROTTLE_BYTES_PER_SEC",
        default_value_t = 0,
        help = help("snapshot_throttle_bytes_per_sec"),
        long_help = long_help("snapshot_throttle_bytes_per_sec"),
    )]
    pub snapshot_throttle_bytes_per_sec: u64,
    #[arg(
        long,
        env = "RAFTKIT_MAX_SNAPSHOT_INSTALLS",
        default_value_t = 2,
        help = help("max_snapshot_installs"),
        long_help = long_help("max_snapshot_installs"),
    )]
    pub max_snapshot_installs: usize,
    #[arg(
        long,
        env = "RAFTKIT_MAX_CLUSTER_FORMAT",
        default_value_t = crate::cluster_format::NEWEST,
        help = help("max_cluster_format"),
        long_help = long_help("max_cluster_format"),
    )]
    pub max_cluster_format: u32,
    #[arg(
        long,
        env = "RAFTKIT_LOG_URI",
        value_name = "URI",
        help = help("log_uri"),
        long_help = long_help("log_uri"),
    )]
    pub log_uri: Option<String>,
    #[arg(
        long,
        env = "RAFTKIT_RAFT_META_URI",
        value_name = "URI",
        help = help("raft_meta_uri"),
        long_help = long_help("raft_meta_uri"),
    )]
    pub raft_meta_uri: Option<String>,
    #[arg(
        long,
        env = "RAFTKIT_SNAPSHOT_URI",
        value_name = "URI",
        help = help("snapshot_uri"),
        long_help = long_help("snapshot_uri"),
    )]
    pub snapshot_uri: Option<String>,
    #[arg(
        long,
        env = "RAFTKIT_SYNC",
        default_value_t = true,
        action = ArgAction::Set,
        value_name = "true|false",
        help = help("sync"),
        long_help = long_help("sync"),
    )]
    pub sync: bool,
    #[arg(
        long,
        env = "RAFTKIT_SESSION_IDLE_MS",
        default_value_t = crate::services::sessions::DEFAULT_IDLE_MS,
        help = help("session_idle_ms"),
        long_help = long_help("session_idle_ms"),
    )]
    pub session_idle_ms: u64,
    #[arg(
        long,
        env = "RAFTKIT_READ_MODE",
        default_value = "read-index",
        value_parser = parse_read_mode,
        help = help("read_mode"),
        long_help = long_help("read_mode"),
    )]
    pub read_mode: ReadMode,
    #[arg(
        long,
        env = "RAFTKIT_IDLE_POLL_US",
        default_value = "auto",
        value_parser = parse_idle_poll,
        help = help("idle_poll_us"),
        long_help = long_help("idle_poll_us"),
    )]
    pub idle_poll_us: crate::idle_poll::IdlePoll,
    #[arg(
        long,
        env = "RAFTKIT_WORKER_THREADS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u16).range(0..=256),
        help = help("worker_threads"),
        long_help = long_help("worker_threads"),
    )]
    pub worker_threads: u16,
    #[arg(
        long,
        env = "RAFTKIT_TLS_CERT",
        value_name = "FILE",
        help = help("tls_cert"),
        long_help = long_help("tls_cert"),
    )]
    pub tls_cert: Option<PathBuf>,
    #[arg(
        long,
        env = "RAFTKIT_TLS_KEY",
        value_name = "FILE",
        help = help("tls_key"),
        long_help = long_help("tls_key"),
    )]
    pub tls_key: Option<PathBuf>,
    #[arg(
        long,
        env = "RAFTKIT_TLS_CA",
        value_name = "FILE",
        help = help("tls_ca"),
        long_help = long_help("tls_ca"),
    )]
    pub tls_ca: Option<PathBuf>,
    #[arg(
        long,
        env = "RAFTKIT_TLS_PLAIN_PROBES",
        default_value_t = true,
        action = ArgAction::Set,
        value_name = "true|false",
        help = help("tls_plain_probes"),
        long_help = long_help("tls_plain_probes"),
    )]
    pub tls_plain_probes: bool,
}

/// The settings table's one line of help for `name` (`-h`).
fn help(name: &str) -> &'static str {
    raftkit_proto::settings::setting(name).map_or("", |s| s.help)
}

/// What `--help` shows for `name`: the table's line, then its `more` when
/// it has one (otherwise the line alone).
fn long_help(name: &str) -> Resettable<StyledStr> {
    match raftkit_proto::settings::setting(name) {
        Some(s) if !s.more.is_empty() => Resettable::Value(format!("{} {}", s.help, s.more).into()),
        _ => Resettable::Reset,
    }
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

/// The TLS files, all three or none.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<raftkit_tls::TlsFiles>, ServerError> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(raftkit_tls::TlsFiles {
            cert: Some(cert),
            key: Some(key),
            ca,
        })),
        (c, k, a) => {
            let missing: Vec<&str> = [
                (c.is_none(), "--tls-cert"),
                (k.is_none(), "--tls-key"),
                (a.is_none(), "--tls-ca"),
            ]
            .into_iter()
            .filter_map(|(m, f)| m.then_some(f))
            .collect();
            Err(ServerError::Config(format!(
                "TLS needs --tls-cert, --tls-key and --tls-ca together; missing {}",
                missing.join(", ")
            )))
        }
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
            tls: tls_files(self.tls_cert, self.tls_key, self.tls_ca)?,
            tls_plain_probes: self.tls_plain_probes,
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

    /// The flags, environment variables, defaults and help texts of
    /// `raftkit-node`, and what `/flags` lists, agree with the one settings table
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
            // Help is written once, in the table: `-h` shows its line,
            // `--help` that line and its `more`.
            let help = arg.get_help().map(|h| h.to_string());
            assert_eq!(help.as_deref(), Some(s.help), "help of --{long}");
            let long_help = arg.get_long_help().map(|h| h.to_string());
            let expected = (!s.more.is_empty()).then(|| format!("{} {}", s.help, s.more));
            assert_eq!(long_help, expected, "long help of --{long}");
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
