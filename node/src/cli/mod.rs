//! The `raftkit` command-line tool (in the spirit of braft_cli): cluster
//! status, the Counter and KV commands, the local playground, and a hidden
//! `node` subcommand that runs a node server (the playground starts its
//! nodes through it, so `cargo run --bin raftkit` needs no other binary).
//!
//! Output is text by default or JSON with `--output json`; errors are one
//! line on stderr and a non-zero exit.

pub mod playground;

use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::client::{ClientError, ClusterClient};
use crate::config::NodeArgs;
use crate::pb::NodeStatusReply;

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
    #[arg(long, global = true, env = "RAFTKIT_CLUSTER", value_delimiter = ',', default_value = DEFAULT_CLUSTER, value_name = "ADDR,ADDR,...")]
    pub cluster: Vec<String>,
    /// Raft group [default: counter for counter commands, kv for kv commands, all for status].
    #[arg(long, global = true, env = "RAFTKIT_CLI_GROUP", value_name = "NAME")]
    pub group: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub output: Output,
    /// Deadline for each command, retries included (ms).
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One line per member and group: role, term, leader, indexes.
    Status,
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
    /// Run a node server (same flags as raftkit-node).
    #[command(hide = true)]
    Node(Box<NodeArgs>),
}

#[derive(Subcommand, Debug)]
pub enum CounterCmd {
    /// Add DELTA; prints the value before the addition.
    FetchAdd {
        #[arg(allow_negative_numbers = true)]
        delta: i64,
    },
    /// Print the value (linearizable read).
    Get,
}

#[derive(Subcommand, Debug)]
pub enum KvCmd {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY (linearizable read); exits 1 if it is absent.
    Get { key: String },
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

/// A command's failure: one line for stderr, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError {
            message: e.to_string(),
            code: 1,
        }
    }
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn client(cli: &Cli, default_group: &str) -> Result<ClusterClient, CliError> {
    let group = cli
        .group
        .clone()
        .unwrap_or_else(|| default_group.to_string());
    Ok(ClusterClient::new(
        cli.cluster.clone(),
        group,
        Duration::from_millis(cli.timeout_ms),
    )?)
}

fn emit(cli: &Cli, text_out: String, json_out: serde_json::Value) {
    match cli.output {
        Output::Text => println!("{text_out}"),
        Output::Json => println!("{json_out}"),
    }
}

/// Runs one client command (not `playground` or `node`).
pub async fn run_client_command(cli: &Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Status => status(cli).await,
        Command::Snapshot { peer } => snapshot(cli, peer).await,
        Command::Counter { cmd } => {
            let c = client(cli, "counter")?;
            match cmd {
                CounterCmd::FetchAdd { delta } => {
                    let prev = c.fetch_add(*delta).await?;
                    emit(cli, prev.to_string(), json!({ "previous": prev }));
                }
                CounterCmd::Get => {
                    let v = c.counter_get().await?;
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
                KvCmd::Get { key } => match c.get(Bytes::from(key.clone())).await? {
                    Some(v) => emit(cli, text(&v), json!({ "key": key, "value": text(&v) })),
                    None if cli.output == Output::Json => {
                        emit(cli, String::new(), json!({ "key": key, "value": null }))
                    }
                    None => {
                        return Err(CliError {
                            message: format!("key {key:?} not found"),
                            code: 1,
                        })
                    }
                },
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
        Command::Playground(_) | Command::Node(_) => Err(CliError {
            message: "not a client command".into(),
            code: 2,
        }),
    }
}

async fn snapshot(cli: &Cli, peer: &str) -> Result<(), CliError> {
    let c = ClusterClient::new(
        vec![peer.to_string()],
        cli.group.clone().unwrap_or_default(),
        Duration::from_millis(cli.timeout_ms),
    )?;
    let results = c.member_snapshot(peer).await?;
    let failed = results.iter().filter(|r| !r.error.is_empty()).count();
    match cli.output {
        Output::Json => {
            let v: Vec<_> = results
                .iter()
                .map(|r| json!({ "group": r.group, "index": r.index, "term": r.term, "error": (!r.error.is_empty()).then_some(&r.error) }))
                .collect();
            println!("{}", serde_json::Value::Array(v));
        }
        Output::Text => {
            for r in &results {
                if r.error.is_empty() {
                    println!(
                        "{peer} {}: snapshot at index {} term {}",
                        r.group, r.index, r.term
                    );
                } else {
                    println!("{peer} {}: snapshot failed: {}", r.group, r.error);
                }
            }
        }
    }
    if failed > 0 {
        return Err(CliError {
            message: format!("{failed} of {} snapshots failed", results.len()),
            code: 1,
        });
    }
    Ok(())
}

async fn status(cli: &Cli) -> Result<(), CliError> {
    let c = client(cli, "")?;
    let mut rows: Vec<(String, Result<Vec<NodeStatusReply>, ClientError>)> = Vec::new();
    for addr in c.addrs() {
        rows.push((addr.clone(), c.member_status(addr).await));
    }
    let reachable = rows.iter().filter(|(_, r)| r.is_ok()).count();
    match cli.output {
        Output::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|(addr, r)| match r {
                    Ok(groups) => json!({ "addr": addr, "groups": groups.iter().map(status_json).collect::<Vec<_>>() }),
                    Err(e) => json!({ "addr": addr, "error": e.to_string() }),
                })
                .collect();
            println!("{}", serde_json::Value::Array(v));
        }
        Output::Text => {
            println!(
                "{:<22} {:<8} {:<16} {:<13} {:>5} {:<22} {:>8} {:>8} {:>8}",
                "ADDRESS", "GROUP", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST"
            );
            for (addr, r) in &rows {
                match r {
                    Ok(groups) => {
                        for g in groups {
                            println!(
                                "{:<22} {:<8} {:<16} {:<13} {:>5} {:<22} {:>8} {:>8} {:>8}",
                                addr,
                                g.group,
                                format!("{:016x}", g.id),
                                g.role,
                                g.term,
                                if g.leader_addr.is_empty() {
                                    "-"
                                } else {
                                    g.leader_addr.as_str()
                                },
                                g.commit_index,
                                g.applied_index,
                                g.last_log_index
                            );
                        }
                    }
                    Err(e) => println!("{addr:<22} unreachable: {e}"),
                }
            }
        }
    }
    if reachable == 0 {
        return Err(CliError {
            message: format!("no member of {} answered", cli.cluster.join(",")),
            code: 1,
        });
    }
    Ok(())
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
        "learners": g.learners.iter().map(|m| m.addr.clone()).collect::<Vec<_>>(),
        "error": g.error,
    })
}
