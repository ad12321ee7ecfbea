//! The `fleetrun-agent` binary: the agent alone, the file deployed to every instance.
//!
//! It calls only `fleetrun::agent` (and the option parsing and signal handling it needs), so the
//! linker leaves out the server, the console, SQLite and the templates: the file is a few
//! megabytes and an idle agent maps little of it. `fleetrun agent` runs the same code.

use fleetrun::config::AgentCli;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Flags, FLEETRUN_* variables and the --config file (agent.toml), in that order.
    let cli = fleetrun::config::load::<AgentCli>().cli;
    fleetrun::logging::init(&cli.log, cli.log_format);
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
