//! The `fleetrun` binary: parse the command line, set up logging, run one mode.

use clap::Parser as _;
use fleetrun::config::{Cli, Mode};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    // Long-running modes stop gracefully on Ctrl-C or SIGTERM; client commands keep the
    // default handling (Ctrl-C ends them; `run` handles it itself to say how to stop).
    let shutdown = CancellationToken::new();
    if matches!(cli.mode, Mode::Serve(_) | Mode::Agent(_) | Mode::Demo(_)) {
        tokio::spawn(fleetrun::signal::cancel_on_signal(shutdown.clone()));
    }

    let outcome = match cli.mode {
        Mode::Serve(args) => serve(args, shutdown).await.map(|_| 0),
        Mode::Agent(args) => fleetrun::agent::run(args, shutdown).await.map(|_| 0),
        Mode::Demo(args) => fleetrun::demo::run(args, shutdown).await.map(|_| 0),
        client => fleetrun::client::run_cli(client).await,
    };
    match outcome {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("fleetrun: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: fleetrun::config::ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    fleetrun::server::run(args, listener, shutdown).await
}
