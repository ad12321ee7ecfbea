//! The `fleetrun` binary: parse the command line, set up logging, run one mode.

use fleetrun::config::{Cli, Mode};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    return_freed_memory();
    // Flags, FLEETRUN_* variables and the --config file, in that order.
    let loaded = fleetrun::config::load::<Cli>();
    if let Mode::Serve(args) = &loaded.cli.mode {
        if args.print_config {
            print!("{}", loaded.print_config("serve"));
            return std::process::ExitCode::SUCCESS;
        }
    }
    let cli = loaded.cli;
    fleetrun::logging::init(&cli.log, cli.log_format);
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
        Mode::Backup(args) => fleetrun::backup::backup(args).await,
        Mode::Restore(args) => fleetrun::backup::restore(args).await,
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
