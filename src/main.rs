//! The `fleetrun` binary: parse the command line, set up logging, run one mode.

use clap::Parser as _;
use fleetrun::config::{Cli, Mode};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    return_freed_memory();
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

/// glibc keeps the memory a busy moment freed (a fan-out to 10,000 agents) mapped, because its
/// trim threshold grows with the largest block ever freed. A fixed threshold hands it back to
/// the system: the server with 10,000 agents stays under 300 MB (docs/PERFORMANCE.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // One call setting a malloc tunable.
fn return_freed_memory() {
    // SAFETY: mallopt only changes a tunable of the allocator; it has no preconditions, and an
    // unknown or refused setting is reported by its return value, which may be ignored.
    unsafe {
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}
