//! The `raftkit` command-line tool (in the spirit of braft_cli): cluster
//! status, the Counter and KV commands, membership, the benchmark and the
//! local playground (which starts `raftkit-node` processes). Built on
//! `raftkit-client`: the CLI does not link the engine.
//!
//! ```text
//!  lib.rs         flags, commands, text and JSON output
//!  playground.rs  a local three-node cluster of raftkit-node processes
//!  node_binary.rs finding (or building) raftkit-node
//!  bench.rs       the load generator (RaftKit and etcd) and the latency floor
//!  etcdpb         etcd's KV API, as much as the benchmark uses
//! ```
//!
//! Output is text by default or JSON with `--output json`; errors are one
//! line on stderr and a non-zero exit.

/// Prints a line to stdout like `println!`, but a reader that went away
/// (`raftkit status | head -c 600`) ends the program quietly instead of
/// with a panic (see [`write_stdout`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))
    };
}

pub mod bench;
pub mod node_binary;
pub mod playground;

/// etcd's v3 KV API, as much as the benchmark uses (`proto/etcd_kv.proto`).
#[allow(clippy::all, missing_docs)]
pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use raftkit_client::{ClientError, ClusterClient, Outcome};
use raftkit_proto::pb::NodeStatusReply;

/// Writes one line to stdout. When the reader has gone away (a closed
/// pipe), exits at once with status 0, as Unix filters do; any other write
/// error exits with 1 and says so.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Logs to stderr, `RUST_LOG` if set and valid, else `default_filter`.
pub fn init_tracing(default_filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The playground's members, the default target of every command.
pub const DEFAULT_CLUSTER: &str = "127.0.0.1:8100,127.0.0.1:8101,127.0.0.1:8102";

#[derive(Parser, Debug)]
#[command(
    name = "raftkit",
    version,
    about = "Operate a RaftKit cluster: status, counter, kv, and a local playground"
)]
pub struct Cli {
    /// Member addresses (the client finds the leader itself).
    #[arg(long, global = true, env = "RAFTKIT_CLUSTER", value_delimiter = ',', default_value = DEFAULT_CLUSTER, value_name = "ADDR,ADDR,...", action = clap::ArgAction::Set)]
    pub cluster: Vec<String>,
    /// Raft group [default: counter for counter commands, kv for kv commands, all for status].
    #[arg(long, global = true, env = "RAFTKIT_CLI_GROUP", value_name = "NAME")]
    pub group: Option<String>,
    /// The cluster the members must belong to (16 hex digits, as `raftkit
    /// status --output json` shows it): a member of another cluster gets no
    /// request [default: the first cluster a member names].
    #[arg(long, global = true, env = "RAFTKIT_CLUSTER_ID", value_name = "HEX")]
    pub cluster_id: Option<String>,
    /// PEM certificate to present to TLS members (with --tls-key and
    /// --tls-ca). Its OU is its role: raftkit-admin for membership,
    /// leadership, snapshots; any other for counter, kv and status.
    #[arg(long, global = true, env = "RAFTKIT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "RAFTKIT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificates the members' certificates must chain to; turns
    /// TLS on (alone: no certificate is presented).
    #[arg(long, global = true, env = "RAFTKIT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub output: Output,
    /// Deadline for each command, retries included (ms).
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    #[command(subcommand)]
    pub command: Command,
}

/// How a read is answered.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadArg {
    Linearizable,
    Follower,
    Stale,
}

impl From<ReadArg> for raftkit_proto::pb::ReadConsistency {
    fn from(r: ReadArg) -> Self {
        match r {
            ReadArg::Linearizable => raftkit_proto::pb::ReadConsistency::Linearizable,
            ReadArg::Follower => raftkit_proto::pb::ReadConsistency::Follower,
            ReadArg::Stale => raftkit_proto::pb::ReadConsistency::Stale,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One line per member and group: role, term, leader, indexes (every
    /// member the asked ones name is asked too).
    Status,
    /// Each member's state-machine digest per group and the applied index it
    /// was taken at; members at the same index must agree (like etcd's
    /// `endpoint hashkv`). Exits 1 if two members at one index differ.
    Digest,
    /// Add an empty replica: learner, catch up, promote to voter.
    AddPeer {
        addr: String,
        /// Only if the configuration index is still this (see status --output json).
        #[arg(long)]
        expected_conf_index: Option<u64>,
        /// How long the new member may take to catch up (ms).
        #[arg(long, default_value_t = 60_000)]
        catch_up_timeout_ms: u64,
    },
    /// Add an empty replica as a learner (one step; done already if it is a member).
    AddLearner {
        addr: String,
        #[arg(long)]
        expected_conf_index: Option<u64>,
    },
    /// Make a caught-up learner a voter, by address or 16-hex-digit id (one
    /// step; done already if it is a voter).
    Promote {
        peer: String,
        #[arg(long)]
        expected_conf_index: Option<u64>,
    },
    /// Remove a member, by address or by 16-hex-digit id.
    RemovePeer {
        peer: String,
        #[arg(long)]
        expected_conf_index: Option<u64>,
    },
    /// Make the voters exactly ADDR,... (joint consensus; new members catch up first).
    ChangePeers {
        #[arg(value_delimiter = ',', required = true)]
        peers: Vec<String>,
        #[arg(long)]
        expected_conf_index: Option<u64>,
        #[arg(long, default_value_t = 60_000)]
        catch_up_timeout_ms: u64,
    },
    /// Move leadership to a caught-up voter (ADDR, id, or "any").
    TransferLeader { target: String },
    /// Forced, unsafe reconfiguration of one member after quorum loss.
    ResetPeers {
        /// The member to reset.
        #[arg(long, value_name = "ADDR")]
        peer: String,
        /// The members to keep (the reset member included).
        #[arg(value_delimiter = ',', required = true)]
        peers: Vec<String>,
        /// Confirm: writes that only the lost members held are lost.
        #[arg(long)]
        force: bool,
    },
    /// Make an empty replica a one-member group.
    Bootstrap {
        #[arg(long, value_name = "ADDR")]
        peer: String,
    },
    /// Take a snapshot now on one member (every group, or --group).
    Snapshot {
        /// The member to snapshot.
        #[arg(long, value_name = "ADDR")]
        peer: String,
    },
    /// braft's Counter example.
    Counter {
        #[command(subcommand)]
        cmd: CounterCmd,
    },
    /// The replicated key-value store.
    Kv {
        #[command(subcommand)]
        cmd: KvCmd,
    },
    /// Start a local cluster of real node processes; Ctrl-C stops it.
    Playground(playground::PlaygroundArgs),
    /// Load generator for RaftKit (or etcd, with --system etcd): ops/s and
    /// latency percentiles. Targets --cluster.
    Bench(BenchArgs),
    /// Measure this machine's latency floor for one replicated write: the
    /// median fsync of an appended 300-byte record plus two loopback TCP
    /// round trips (the one-client target in docs/benchmarks.md), and the
    /// median of a minimal replicated write (three single-thread nodes on
    /// loopback, each fsyncing inline, no consensus logic).
    BenchFloor {
        /// Directory to fsync in (the disk the nodes write to).
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        /// Samples of each measurement.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Measure with idle polling on, as a node with this
        /// `--idle-poll-us` would run (0: off, the machine's own floor;
        /// `auto`: as a node with the default would).
        #[arg(long, default_value = "0", value_parser = |s: &str| s.parse::<raftkit_idle_poll::IdlePoll>())]
        idle_poll_us: raftkit_idle_poll::IdlePoll,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "raftkit")]
    pub system: crate::bench::BenchSystem,
    #[arg(long, value_enum, default_value = "put")]
    pub op: crate::bench::BenchOp,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 20.0)]
    pub duration_s: f64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,
    /// Target operations per second over all clients (open loop: latency
    /// counted from each operation's due time when the client was still
    /// busy then, coordinated-omission correction); 0: closed loop.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// Connections the clients share (client i uses connection i mod N);
    /// 0: one connection per client.
    #[arg(long, default_value_t = 0)]
    pub conns: usize,
    /// RaftKit only: one unary gRPC call per operation instead of the
    /// client library's multiplexed stream.
    #[arg(long)]
    pub unary: bool,
    /// RaftKit only: every client writes through one client session (as
    /// tasks sharing one `ClusterClient` do) instead of one each.
    #[arg(long)]
    pub shared_session: bool,
    /// Threads of the load generator. It usually shares the machine with
    /// the system under test; one thread takes the least from it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
}

#[derive(Subcommand, Debug)]
pub enum CounterCmd {
    /// Add DELTA; prints the value before the addition.
    FetchAdd {
        #[arg(allow_negative_numbers = true)]
        delta: i64,
    },
    /// Print the value (a linearizable read unless --read says otherwise).
    Get {
        #[arg(long, value_enum, default_value = "linearizable")]
        read: ReadArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum KvCmd {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY; exits 1 if it is absent.
    Get {
        key: String,
        /// linearizable (through the leader), follower (ReadIndex, answered
        /// by the member asked) or stale (local state, may be old).
        #[arg(long, value_enum, default_value = "linearizable")]
        read: ReadArg,
    },
    /// Remove KEY.
    Delete { key: String },
    /// Set KEY to NEW only if its value is OLD (--expected) or it is absent (--absent).
    Cas {
        key: String,
        new: String,
        #[arg(long, conflicts_with = "absent", required_unless_present = "absent")]
        expected: Option<String>,
        #[arg(long)]
        absent: bool,
    },
    /// List keys starting with PREFIX.
    Scan {
        #[arg(default_value = "")]
        prefix: String,
        /// Most keys to list (server default 1000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
}

/// Exit code of a command that failed and certainly changed nothing.
pub const EXIT_NOT_APPLIED: i32 = 1;
/// Exit code of a command whose write may have been applied.
pub const EXIT_OUTCOME_UNKNOWN: i32 = 3;

/// A command's failure: one line for stderr, the exit code, and what the
/// user may conclude ([`Outcome`]).
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: i32,
    pub outcome: Outcome,
}

impl CliError {
    /// A failure before anything was sent (bad input, a usage error).
    fn refused(message: impl Into<String>, code: i32) -> Self {
        CliError {
            message: message.into(),
            code,
            outcome: Outcome::NotApplied,
        }
    }

    /// The line printed on stderr, naming the class.
    pub fn text(&self) -> String {
        match self.outcome {
            Outcome::NotApplied => format!("error: {} (not applied)", self.message),
            Outcome::Unknown => format!(
                "error: {} (outcome unknown: it may have been applied)",
                self.message
            ),
        }
    }

    /// The same as JSON: `{"error", "outcome", "exit_code"}`.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "error": self.message,
            "outcome": self.outcome.as_str(),
            "exit_code": self.code,
        })
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let outcome = e.outcome();
        CliError {
            message: e.to_string(),
            code: match outcome {
                Outcome::NotApplied => EXIT_NOT_APPLIED,
                Outcome::Unknown => EXIT_OUTCOME_UNKNOWN,
            },
            outcome,
        }
    }
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The TLS files of `--tls-cert/--tls-key/--tls-ca`, loaded; `None` without
/// `--tls-ca`.
fn tls(cli: &Cli) -> Result<Option<std::sync::Arc<raftkit_tls::Tls>>, CliError> {
    let Some(ca) = &cli.tls_ca else {
        if cli.tls_cert.is_some() || cli.tls_key.is_some() {
            return Err(CliError::refused(
                "--tls-cert and --tls-key need --tls-ca (the CA the members' certificates chain to)",
                2,
            ));
        }
        return Ok(None);
    };
    let files = raftkit_tls::TlsFiles {
        cert: cli.tls_cert.clone(),
        key: cli.tls_key.clone(),
        ca: ca.clone(),
    };
    raftkit_tls::Tls::load(files)
        .map(Some)
        .map_err(|e| CliError::refused(format!("TLS: {e}"), 2))
}

/// `c` over TLS when the flags ask for it.
fn secured(cli: &Cli, c: ClusterClient) -> Result<ClusterClient, CliError> {
    Ok(match tls(cli)? {
        Some(t) => c.with_tls(t),
        None => c,
    })
}

/// A client for admin commands; an empty group lets a single-group node choose.
fn admin_client(cli: &Cli, catch_up_ms: Option<u64>) -> Result<ClusterClient, CliError> {
    let group = cli.group.clone().unwrap_or_default();
    let timeout = cli.timeout_ms.max(catch_up_ms.map_or(0, |c| c + 10_000));
    secured(
        cli,
        ClusterClient::new(cli.cluster.clone(), group, Duration::from_millis(timeout))?,
    )
}

fn member_list(ms: &[raftkit_proto::pb::Member]) -> Vec<String> {
    ms.iter().map(|m| m.addr.clone()).collect()
}

fn print_configuration(cli: &Cli, what: &str, r: &raftkit_proto::pb::ConfigurationReply) {
    let text = format!(
        "{what}; voters: {}; learners: {}{}; configuration index {}",
        member_list(&r.voters).join(","),
        member_list(&r.learners).join(","),
        if r.voters_outgoing.is_empty() {
            String::new()
        } else {
            format!(
                "; outgoing (joint): {}",
                member_list(&r.voters_outgoing).join(",")
            )
        },
        r.conf_index
    );
    emit(
        cli,
        text,
        json!({
            "voters": member_list(&r.voters),
            "learners": member_list(&r.learners),
            "voters_outgoing": member_list(&r.voters_outgoing),
            "conf_index": r.conf_index,
        }),
    );
}

fn client(cli: &Cli, default_group: &str) -> Result<ClusterClient, CliError> {
    let group = cli
        .group
        .clone()
        .unwrap_or_else(|| default_group.to_string());
    let c = secured(
        cli,
        ClusterClient::new(
            cli.cluster.clone(),
            group,
            Duration::from_millis(cli.timeout_ms),
        )?,
    )?;
    Ok(match &cli.cluster_id {
        Some(id) => c.with_cluster_id(id)?,
        None => c,
    })
}

fn emit(cli: &Cli, text_out: String, json_out: serde_json::Value) {
    match cli.output {
        Output::Text => outln!("{text_out}"),
        Output::Json => outln!("{json_out}"),
    }
}

/// Runs one client command (not `playground` or `node`).
pub async fn run_client_command(cli: &Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Status => status(cli).await,
        Command::Digest => digest(cli).await,
        Command::Snapshot { peer } => snapshot(cli, peer).await,
        Command::AddPeer {
            addr,
            expected_conf_index,
            catch_up_timeout_ms,
        } => {
            let c = admin_client(cli, Some(*catch_up_timeout_ms))?;
            let r = c
                .add_peer(addr, *expected_conf_index, *catch_up_timeout_ms)
                .await?;
            print_configuration(cli, &format!("added {addr}"), &r);
            Ok(())
        }
        Command::AddLearner {
            addr,
            expected_conf_index,
        } => {
            let c = admin_client(cli, None)?;
            let r = c.add_learner(addr, *expected_conf_index).await?;
            print_configuration(cli, &format!("{addr} is a learner"), &r);
            Ok(())
        }
        Command::Promote {
            peer,
            expected_conf_index,
        } => {
            let c = admin_client(cli, None)?;
            let r = c.promote(peer, *expected_conf_index).await?;
            print_configuration(cli, &format!("{peer} is a voter"), &r);
            Ok(())
        }
        Command::RemovePeer {
            peer,
            expected_conf_index,
        } => {
            let c = admin_client(cli, None)?;
            let r = c.remove_peer(peer, *expected_conf_index).await?;
            print_configuration(cli, &format!("removed {peer}"), &r);
            Ok(())
        }
        Command::ChangePeers {
            peers,
            expected_conf_index,
            catch_up_timeout_ms,
        } => {
            let c = admin_client(cli, Some(*catch_up_timeout_ms))?;
            let r = c
                .change_peers(peers, *expected_conf_index, *catch_up_timeout_ms)
                .await?;
            print_configuration(cli, "changed peers", &r);
            Ok(())
        }
        Command::TransferLeader { target } => {
            let c = admin_client(cli, None)?;
            let l = c.transfer_leader(target).await?;
            emit(
                cli,
                format!("leader is now {}", l.addr),
                json!({ "leader": l.addr, "id": format!("{:016x}", l.id) }),
            );
            Ok(())
        }
        Command::ResetPeers { peer, peers, force } => {
            if !*force {
                return Err(CliError::refused(
                    format!(
                        "reset-peers rewrites the configuration of {peer} alone, without the other members' agreement; \
                         use it only when a quorum is lost for good. Writes that only the lost members held are lost, and \
                         a lost member that comes back must be wiped and added again. Re-run with --force to proceed."
                    ),
                    2,
                ));
            }
            eprintln!(
                "warning: forcing the configuration of {peer} to {}",
                peers.join(",")
            );
            let c = admin_client(cli, None)?;
            let r = c.reset_peers(peer, peers).await?;
            print_configuration(cli, &format!("reset {peer}"), &r);
            Ok(())
        }
        Command::Bootstrap { peer } => {
            let c = admin_client(cli, None)?;
            c.bootstrap(peer).await?;
            emit(
                cli,
                format!("{peer} bootstrapped a one-member group"),
                json!({ "bootstrapped": peer }),
            );
            Ok(())
        }
        Command::Counter { cmd } => {
            let c = client(cli, "counter")?;
            match cmd {
                CounterCmd::FetchAdd { delta } => {
                    let prev = c.fetch_add(*delta).await?;
                    emit(cli, prev.to_string(), json!({ "previous": prev }));
                }
                CounterCmd::Get { read } => {
                    let v = c.counter_get_with((*read).into()).await?;
                    emit(cli, v.to_string(), json!({ "value": v }));
                }
            }
            Ok(())
        }
        Command::Kv { cmd } => {
            let c = client(cli, "kv")?;
            match cmd {
                KvCmd::Put { key, value } => {
                    let prev = c
                        .put(Bytes::from(key.clone()), Bytes::from(value.clone()))
                        .await?;
                    emit(
                        cli,
                        "OK".into(),
                        json!({ "key": key, "previous": prev.as_ref().map(text) }),
                    );
                }
                KvCmd::Get { key, read } => {
                    match c.get_with(Bytes::from(key.clone()), (*read).into()).await? {
                        Some(v) => emit(cli, text(&v), json!({ "key": key, "value": text(&v) })),
                        None if cli.output == Output::Json => {
                            emit(cli, String::new(), json!({ "key": key, "value": null }))
                        }
                        None => return Err(CliError::refused(format!("key {key:?} not found"), 1)),
                    }
                }
                KvCmd::Delete { key } => {
                    let deleted = c.delete(Bytes::from(key.clone())).await?;
                    emit(
                        cli,
                        if deleted {
                            "deleted".into()
                        } else {
                            "not found".into()
                        },
                        json!({ "key": key, "deleted": deleted }),
                    );
                }
                KvCmd::Cas {
                    key,
                    new,
                    expected,
                    absent: _,
                } => {
                    let (swapped, current) = c
                        .cas(
                            Bytes::from(key.clone()),
                            expected.clone().map(Bytes::from),
                            Bytes::from(new.clone()),
                        )
                        .await?;
                    let t = if swapped {
                        "swapped".to_string()
                    } else {
                        format!(
                            "not swapped; current value: {}",
                            current.as_ref().map_or("(absent)".to_string(), text)
                        )
                    };
                    emit(
                        cli,
                        t,
                        json!({ "key": key, "swapped": swapped, "current": current.as_ref().map(text) }),
                    );
                }
                KvCmd::Scan { prefix, limit } => {
                    let (items, more) = c.scan(Bytes::from(prefix.clone()), *limit).await?;
                    let mut lines: Vec<String> = items
                        .iter()
                        .map(|(k, v)| format!("{}\t{}", text(k), text(v)))
                        .collect();
                    if more {
                        lines.push(format!(
                            "(more keys match; raise --limit above {})",
                            items.len()
                        ));
                    }
                    let arr: Vec<_> = items
                        .iter()
                        .map(|(k, v)| json!({ "key": text(k), "value": text(v) }))
                        .collect();
                    emit(cli, lines.join("\n"), json!({ "items": arr, "more": more }));
                }
            }
            Ok(())
        }
        Command::Bench(b) => bench(cli, b).await,
        Command::BenchFloor {
            dir,
            samples,
            idle_poll_us,
        } => {
            if *samples == 0 || *samples > 1_000_000 {
                return Err(CliError::refused(
                    format!("--samples {samples} is outside 1..=1000000"),
                    2,
                ));
            }
            raftkit_idle_poll::apply(*idle_poll_us)
                .map_err(|message| CliError::refused(message, 1))?;
            let (dir, samples) = (dir.clone(), *samples);
            let f = tokio::task::spawn_blocking(move || crate::bench::measure_floor(&dir, samples))
                .await
                .map_err(|e| CliError::refused(e.to_string(), 1))?
                .map_err(|e| CliError::refused(e, 1))?;
            emit(
                cli,
                {
                    let mut line = format!(
                        "fsync p50 {:.3} ms + 2 x loopback rtt p50 {:.3} ms = floor {:.3} ms (twice: {:.3} ms)",
                        f.fsync_p50_ms,
                        f.rtt_p50_ms,
                        f.floor_ms,
                        2.0 * f.floor_ms
                    );
                    if let (Some(r), Some(fl)) = (f.rtt_same_cpu_p50_ms, f.floor_same_cpu_ms) {
                        line += &format!(
                            "\nwith both ends of the round trip on one CPU: rtt p50 {r:.3} ms, floor {fl:.3} ms (twice: {:.3} ms)",
                            2.0 * fl
                        );
                    }
                    line += &format!(
                        "\nminimal replicated write (3 single-thread nodes, fsync inline, no consensus logic): p50 {:.3} ms",
                        f.minimal_replicated_p50_ms
                    );
                    line
                },
                serde_json::to_value(&f).unwrap_or_default(),
            );
            Ok(())
        }
        Command::Playground(_) => Err(CliError::refused("not a client command", 2)),
    }
}

async fn bench(cli: &Cli, b: &BenchArgs) -> Result<(), CliError> {
    use crate::bench::{self, BenchConfig, BenchOp, BenchSystem};
    let bad = |m: String| CliError::refused(m, 2);
    if b.clients == 0 || b.clients > 10_000 {
        return Err(bad(format!("--clients {} is outside 1..=10000", b.clients)));
    }
    if b.duration_s.is_nan() || b.duration_s <= 0.0 || b.warmup_s.is_nan() || b.warmup_s < 0.0 {
        return Err(bad(
            "--duration-s must be positive and --warmup-s not negative".into(),
        ));
    }
    if b.key_size == 0
        || b.key_size > raftkit_proto::limits::MAX_KEY_BYTES
        || b.value_size > raftkit_proto::limits::MAX_VALUE_BYTES
    {
        return Err(bad(
            "key size must be 1..=4096 and value size at most 1 MiB".into(),
        ));
    }
    let cfg = BenchConfig {
        system: b.system,
        op: b.op,
        clients: b.clients,
        duration: Duration::from_secs_f64(b.duration_s),
        warmup: Duration::from_secs_f64(b.warmup_s),
        rate: b.rate,
        key_size: b.key_size,
        value_size: b.value_size,
        key_space: b.key_space.max(1),
        conns: if b.conns == 0 {
            b.clients
        } else {
            b.conns.min(b.clients)
        },
        unary: b.unary,
        shared_session: b.shared_session,
        tls: tls(cli)?,
    };
    if b.unary && b.system == BenchSystem::Etcd {
        return Err(bad(
            "--unary applies to RaftKit only (etcd calls are always unary)".into(),
        ));
    }
    if b.shared_session && b.system == BenchSystem::Etcd {
        return Err(bad(
            "--shared-session applies to RaftKit only (etcd has no client sessions)".into(),
        ));
    }
    let (summary, first_error) = match b.system {
        BenchSystem::Raftkit => {
            let group = cli.group.clone().unwrap_or_else(|| {
                if b.op == BenchOp::FetchAdd {
                    "counter".into()
                } else {
                    "kv".into()
                }
            });
            let op = bench::RaftKitOp::new(&cfg, &cli.cluster, &group).map_err(bad)?;
            bench::run(&cfg, std::sync::Arc::new(op)).await
        }
        BenchSystem::Etcd => {
            let op = bench::EtcdOp::new(&cfg, &cli.cluster)
                .await
                .map_err(|m| CliError::refused(m, 1))?;
            bench::run(&cfg, std::sync::Arc::new(op)).await
        }
    };
    emit(
        cli,
        bench::render_text(&summary),
        serde_json::to_value(&summary).unwrap_or_default(),
    );
    if summary.ops == 0 {
        return Err(CliError::refused(
            format!(
                "no operation succeeded; first error: {}",
                first_error.unwrap_or_else(|| "none".into())
            ),
            1,
        ));
    }
    if let Some(e) = first_error {
        eprintln!(
            "warning: {} operations failed; first error: {e}",
            summary.errors
        );
    }
    Ok(())
}

async fn snapshot(cli: &Cli, peer: &str) -> Result<(), CliError> {
    let c = secured(
        cli,
        ClusterClient::new(
            vec![peer.to_string()],
            cli.group.clone().unwrap_or_default(),
            Duration::from_millis(cli.timeout_ms),
        )?,
    )?;
    let results = c.member_snapshot(peer).await?;
    let failed = results.iter().filter(|r| !r.error.is_empty()).count();
    match cli.output {
        Output::Json => {
            let v: Vec<_> = results
                .iter()
                .map(|r| json!({ "group": r.group, "index": r.index, "term": r.term, "error": (!r.error.is_empty()).then_some(&r.error) }))
                .collect();
            outln!("{}", serde_json::Value::Array(v));
        }
        Output::Text => {
            for r in &results {
                if r.error.is_empty() {
                    outln!(
                        "{peer} {}: snapshot at index {} term {}",
                        r.group,
                        r.index,
                        r.term
                    );
                } else {
                    outln!("{peer} {}: snapshot failed: {}", r.group, r.error);
                }
            }
        }
    }
    if failed > 0 {
        return Err(CliError::refused(
            format!("{failed} of {} snapshots failed", results.len()),
            1,
        ));
    }
    Ok(())
}

async fn status(cli: &Cli) -> Result<(), CliError> {
    let c = client(cli, "")?;
    let mut rows: Vec<(String, Result<Vec<NodeStatusReply>, ClientError>)> = Vec::new();
    // The members --cluster names, then every member, learner or leaving
    // voter their answers name that was not asked yet: one address shows
    // the whole cluster (an unreachable member gets its row too).
    let mut ask = c.addrs();
    while !ask.is_empty() {
        for addr in std::mem::take(&mut ask) {
            let r = c.member_status(&addr).await;
            rows.push((addr, r));
        }
        let mut named: Vec<String> = rows
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flatten()
            .flat_map(|g| g.voters.iter().chain(&g.learners).chain(&g.voters_outgoing))
            .map(|m| m.addr.clone())
            .filter(|a| !a.is_empty() && !rows.iter().any(|(asked, _)| asked == a))
            .collect();
        named.sort();
        named.dedup();
        ask = named;
    }
    let reachable = rows.iter().filter(|(_, r)| r.is_ok()).count();
    match cli.output {
        Output::Json => {
            let leaders = leaders(&rows);
            let with_caught_up = |g: &NodeStatusReply| {
                let mut v = status_json(g);
                let leader = leaders
                    .iter()
                    .find(|l| l.group == g.group && l.term >= g.term)
                    .copied();
                v["caught_up"] = caught_up(leader, g.id).into();
                v
            };
            let v: Vec<_> = rows
                .iter()
                .map(|(addr, r)| match r {
                    Ok(groups) => json!({ "addr": addr, "groups": groups.iter().map(with_caught_up).collect::<Vec<_>>() }),
                    Err(e) => json!({ "addr": addr, "error": e.to_string() }),
                })
                .collect();
            outln!("{}", serde_json::Value::Array(v));
        }
        Output::Text => print_status_table(&rows),
    }
    if reachable == 0 {
        return Err(CliError::refused(
            format!("no member of {} answered", cli.cluster.join(",")),
            1,
        ));
    }
    Ok(())
}

/// Groups and applied indexes at which members reported different digests.
fn digest_disagreements<'a>(
    digests: impl Iterator<Item = &'a raftkit_proto::pb::GroupDigest>,
) -> Vec<String> {
    // (group, applied index) -> digests seen there.
    let mut seen: std::collections::BTreeMap<(&str, u64), std::collections::BTreeSet<u64>> =
        Default::default();
    for g in digests.filter(|g| g.has_digest) {
        seen.entry((&g.group, g.applied_index))
            .or_default()
            .insert(g.digest);
    }
    seen.iter()
        .filter(|(_, d)| d.len() > 1)
        .map(|((group, index), _)| format!("{group} at index {index}"))
        .collect()
}

async fn digest(cli: &Cli) -> Result<(), CliError> {
    let c = client(cli, "")?;
    let mut rows = Vec::new();
    for addr in c.addrs() {
        rows.push((addr.clone(), c.member_digest(&addr).await));
    }
    let disagree = digest_disagreements(rows.iter().filter_map(|(_, r)| r.as_ref().ok()).flatten());
    match cli.output {
        Output::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|(addr, r)| match r {
                    Ok(groups) => json!({ "addr": addr, "groups": groups.iter().map(|g| json!({
                        "group": g.group,
                        "applied_index": g.applied_index,
                        "digest": g.has_digest.then(|| format!("{:016x}", g.digest)),
                    })).collect::<Vec<_>>() }),
                    Err(e) => json!({ "addr": addr, "error": e.to_string() }),
                })
                .collect();
            outln!("{}", serde_json::Value::Array(v));
        }
        Output::Text => {
            outln!("{:<22} {:<8} {:>10} DIGEST", "ADDRESS", "GROUP", "APPLIED");
            for (addr, r) in &rows {
                match r {
                    Ok(groups) => {
                        for g in groups {
                            let d = if g.has_digest {
                                format!("{:016x}", g.digest)
                            } else {
                                "-".to_string()
                            };
                            outln!("{addr:<22} {:<8} {:>10} {d}", g.group, g.applied_index);
                        }
                    }
                    Err(e) => outln!("{addr:<22} error: {e}"),
                }
            }
        }
    }
    if rows.iter().all(|(_, r)| r.is_err()) {
        return Err(CliError::refused(
            format!("no member of {} answered", cli.cluster.join(",")),
            1,
        ));
    }
    if !disagree.is_empty() {
        return Err(CliError::refused(
            format!(
                "replicas disagree: {} (members at the same applied index have different digests)",
                disagree.join(", ")
            ),
            1,
        ));
    }
    Ok(())
}

/// Every group's answer from a member that leads it.
fn leaders(rows: &[(String, Result<Vec<NodeStatusReply>, ClientError>)]) -> Vec<&NodeStatusReply> {
    rows.iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flatten()
        .filter(|g| g.role == "leader")
        .collect()
}

/// One line per member and group; match index, lag and caught-up come
/// from the group's leader's view of each member. MAX-LOG-FMT is the
/// newest log format the node's build reads and writes; CLUSTER-FMT the
/// group's cluster format as this member applied it, MAX-CLUSTER-FMT the
/// newest its build supports (a member below the others holds the group
/// back during a rolling upgrade).
fn print_status_table(rows: &[(String, Result<Vec<NodeStatusReply>, ClientError>)]) {
    let leaders = leaders(rows);
    outln!(
        "{:<22} {:<8} {:<16} {:<13} {:<7} {:>5} {:<22} {:>8} {:>8} {:>8} {:>6} {:<9} {:<8} {:>11} {:>11} {:>15}",
        "ADDRESS",
        "GROUP",
        "ID",
        "ROLE",
        "MEMBER",
        "TERM",
        "LEADER",
        "COMMIT",
        "APPLIED",
        "MATCH",
        "LAG",
        "CAUGHT-UP",
        "VERSION",
        "MAX-LOG-FMT",
        "CLUSTER-FMT",
        "MAX-CLUSTER-FMT"
    );
    for (addr, r) in rows {
        let groups = match r {
            Ok(g) => g,
            Err(e) => {
                outln!("{addr:<22} unreachable: {e}");
                continue;
            }
        };
        for g in groups {
            let leader = leaders
                .iter()
                .find(|l| l.group == g.group && l.term >= g.term);
            let member = if g.voters.iter().any(|m| m.id == g.id)
                || g.voters_outgoing.iter().any(|m| m.id == g.id)
            {
                "voter"
            } else if g.learners.iter().any(|m| m.id == g.id) {
                "learner"
            } else {
                "-"
            };
            let (matched, lag) = match leader {
                Some(l) if l.id == g.id => (l.last_log_index.to_string(), "0".to_string()),
                Some(l) => match l.peers.iter().find(|p| p.id == g.id) {
                    Some(p) => (
                        p.match_index.to_string(),
                        l.last_log_index.saturating_sub(p.match_index).to_string(),
                    ),
                    None => ("-".into(), "-".into()),
                },
                None => ("-".into(), "-".into()),
            };
            let caught_up = match caught_up(leader.copied(), g.id) {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            outln!(
                "{:<22} {:<8} {:<16} {:<13} {:<7} {:>5} {:<22} {:>8} {:>8} {:>8} {:>6} {:<9} {:<8} {:>11} {:>11} {:>15}",
                addr,
                g.group,
                format!("{:016x}", g.id),
                g.role,
                member,
                g.term,
                if g.leader_addr.is_empty() {
                    "-"
                } else {
                    g.leader_addr.as_str()
                },
                g.commit_index,
                g.applied_index,
                matched,
                lag,
                caught_up,
                if g.version.is_empty() { "-" } else { g.version.as_str() },
                g.max_log_format,
                stated(g.cluster_format),
                stated(g.max_cluster_format)
            );
        }
    }
}

/// A format number a node states, or `-` for 0: a node from before
/// cluster formats states none.
fn stated(format: u32) -> String {
    if format == 0 {
        "-".into()
    } else {
        format.to_string()
    }
}

/// Whether the leader counts member `id` as caught up (the leader itself
/// is); `None` without a leader's view.
fn caught_up(leader: Option<&NodeStatusReply>, id: u64) -> Option<bool> {
    let l = leader?;
    if l.id == id {
        return Some(true);
    }
    l.peers.iter().find(|p| p.id == id).map(|p| p.caught_up)
}

fn status_json(g: &NodeStatusReply) -> serde_json::Value {
    json!({
        "group": g.group,
        "id": format!("{:016x}", g.id),
        "role": g.role,
        "term": g.term,
        "leader": g.leader_addr,
        "commit_index": g.commit_index,
        "applied_index": g.applied_index,
        "first_log_index": g.first_log_index,
        "last_log_index": g.last_log_index,
        "voters": g.voters.iter().map(|m| m.addr.clone()).collect::<Vec<_>>(),
        "voters_outgoing": g.voters_outgoing.iter().map(|m| m.addr.clone()).collect::<Vec<_>>(),
        "conf_index": g.conf_index,
        "peers": g.peers.iter().map(|p| json!({
            "addr": p.addr, "id": format!("{:016x}", p.id), "voter": p.voter,
            "match_index": p.match_index, "next_index": p.next_index, "state": p.state, "inflight": p.inflight,
            "caught_up": p.caught_up,
        })).collect::<Vec<_>>(),
        "version": g.version,
        "max_log_format": g.max_log_format,
        "cluster_format": g.cluster_format,
        "max_cluster_format": g.max_cluster_format,
        "learners": g.learners.iter().map(|m| m.addr.clone()).collect::<Vec<_>>(),
        "error": g.error,
    })
}

#[cfg(test)]
mod tests {
    use super::digest_disagreements;
    use raftkit_proto::pb::GroupDigest;

    fn d(group: &str, applied_index: u64, digest: u64) -> GroupDigest {
        GroupDigest {
            group: group.into(),
            applied_index,
            digest,
            has_digest: true,
        }
    }

    #[test]
    fn digests_are_compared_only_at_equal_indexes_of_one_group() {
        let agree = [
            d("kv", 7, 1),
            d("kv", 7, 1),
            d("kv", 8, 2),
            d("counter", 7, 3),
        ];
        assert!(digest_disagreements(agree.iter()).is_empty());
        let differ = [d("kv", 7, 1), d("kv", 7, 2), d("counter", 7, 3)];
        assert_eq!(digest_disagreements(differ.iter()), vec!["kv at index 7"]);
        // Members without a digest are not compared.
        let mut none = d("kv", 7, 9);
        none.has_digest = false;
        assert!(digest_disagreements([d("kv", 7, 1), none].iter()).is_empty());
    }
}
