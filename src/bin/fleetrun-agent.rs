//! The `fleetrun-agent` binary: the agent alone, the file deployed to every instance.
//!
//! It calls only `fleetrun::agent` (and the option parsing and signal handling it needs), so the
//! linker leaves out the server, the console, SQLite and the templates: the file is a few
//! megabytes and an idle agent maps little of it. `fleetrun agent` runs the same code. Without a
//! subcommand it runs the agent in the foreground; `install`, `start`, `stop`, `restart`,
//! `status` and `uninstall` manage it as a systemd service (`agent::service`).

use clap::{CommandFactory as _, FromArgMatches as _};
use fleetrun::agent::service;
use fleetrun::config::{AgentCli, AgentCommand};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let command = AgentCli::command();
    let matches = command.clone().get_matches();
    let cli = AgentCli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
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
