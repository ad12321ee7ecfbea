//! The `fleetrun-agent` binary: the agent alone, the file deployed to every instance.
//!
//! It calls only `fleetrun::agent` (and the option parsing and signal handling it needs), so the
//! linker leaves out the server, the console, SQLite and the templates: the file is a few
//! megabytes and an idle agent maps little of it. `fleetrun agent` runs the same code.

use clap::Parser as _;
use fleetrun::config::AgentCli;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = AgentCli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let shutdown = CancellationToken::new();
    tokio::spawn(fleetrun::signal::cancel_on_signal(shutdown.clone()));
    match fleetrun::agent::run(cli.agent, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetrun-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
