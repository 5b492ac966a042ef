//! `raftkit-node`: the RaftKit server. Parses flags and runs
//! [`raftkit_node::server::run`] until SIGTERM or SIGINT.

use clap::Parser;
use raftkit_node::config::NodeArgs;

#[derive(Parser)]
#[command(
    name = "raftkit-node",
    version,
    about = "RaftKit node: serves raft groups (counter, kv) over gRPC and HTTP on one port"
)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
}

fn main() {
    raftkit_node::logging::init_tracing("info");
    let cli = Cli::parse();
    let result = match cli.node.runtime() {
        Ok(rt) => rt.block_on(async move {
            let config = cli.node.into_config()?;
            raftkit_node::server::run(config, raftkit_node::shutdown_signal()).await
        }),
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
