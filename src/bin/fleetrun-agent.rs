//! The `fleetrun-agent` binary: the agent alone, the file deployed to every instance.
//!
//! It calls only `fleetrun::agent` (and the option parsing and signal handling it needs), so the
//! linker leaves out the server, the console, SQLite and the templates: the file is a few
//! megabytes and an idle agent maps little of it. `fleetrun agent` runs the same code. Without a
//! subcommand it runs the agent in the foreground; `install`, `start`, `stop`, `restart`,
//! `status` and `uninstall` manage it as a systemd service (`agent::service`).

use fleetrun::agent::service;
use fleetrun::config::{AgentCli, AgentCommand};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    // Flags, FLEETRUN_* variables and the --config file (agent.toml), in that order.
    let loaded = fleetrun::config::load::<AgentCli>();
    let (command, matches) = (loaded.command().clone(), loaded.matches().clone());
    let cli = loaded.cli;
    fleetrun::logging::init(&cli.log, cli.log_format);
    let ended = match cli.command {
        None => {
            let shutdown = CancellationToken::new();
            tokio::spawn(fleetrun::signal::cancel_on_signal(shutdown.clone()));
            fleetrun::agent::run(cli.agent, shutdown)
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        Some(AgentCommand::Install(args)) => {
            // The service runs with the options given to `install`, which only the matches tell.
            match (
                command.find_subcommand("install"),
                matches.subcommand_matches("install"),
            ) {
                (Some(install), Some(given)) => {
                    let options = service::service_options(install, given);
                    service::install(args, options).await.map(|()| ExitCode::SUCCESS)
                }
                _ => Err(anyhow::anyhow!("the install options cannot be read back")),
            }
        }
        Some(AgentCommand::Start(unit)) => service::lifecycle("start", &unit),
        Some(AgentCommand::Stop(unit)) => service::lifecycle("stop", &unit),
        Some(AgentCommand::Restart(unit)) => service::lifecycle("restart", &unit),
        Some(AgentCommand::Status(unit)) => service::lifecycle("status", &unit),
        Some(AgentCommand::Uninstall(args)) => service::uninstall(&args).map(|()| ExitCode::SUCCESS),
    };
    ended.unwrap_or_else(|e| {
        eprintln!("fleetrun-agent: {e:#}");
        ExitCode::FAILURE
    })
}
