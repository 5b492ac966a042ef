//! `raftkit`: the command-line tool. See [`raftkit_node::cli`].

use clap::Parser;
use raftkit_node::cli::{run_client_command, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let runtime = match &cli.command {
        Command::Node(args) => args.runtime(),
        Command::Bench(b) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(b.threads as usize)
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let code = match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> i32 {
    match &cli.command {
        Command::Node(args) => {
            raftkit_node::logging::init_tracing("info");
            let result = match (**args).clone().into_config() {
                Ok(config) => {
                    raftkit_node::server::run(config, raftkit_node::shutdown_signal()).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        Command::Playground(args) => {
            raftkit_node::logging::init_tracing("warn");
            match raftkit_node::cli::playground::run(args.clone()).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
        _ => match run_client_command(&cli).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {}", e.message);
                e.code
            }
        },
    }
}
