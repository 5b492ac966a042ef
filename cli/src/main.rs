//! `raftkit`: the command-line tool. See the library (`raftkit_cli`).

use clap::Parser;
use raftkit_cli::{run_client_command, Cli, Command, Output};

fn main() {
    let cli = Cli::parse();
    let runtime = match &cli.command {
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
        Command::Playground(args) => {
            raftkit_cli::init_tracing("warn");
            match raftkit_cli::playground::run(args.clone()).await {
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
                match cli.output {
                    Output::Text => eprintln!("{}", e.text()),
                    Output::Json => eprintln!("{}", e.json()),
                }
                e.code
            }
        },
    }
}
