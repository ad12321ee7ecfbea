//! `fleetrun-bench`: the load tools and benchmark scenarios of issue 5 (docs/PERFORMANCE.md).
//!
//! - `swarm`: N virtual agents in this process, each a real WebSocket speaking the real agent
//!   protocol to a running `fleetrun serve`, enrolled through a real activation code.
//! - `run`: every scenario against a server started by `bench/run.sh`, a table on stdout and
//!   `target/bench/results.json`.
//!
//! It talks to the server only through its public surfaces (HTTP API, agent and stream
//! WebSockets, the console) and reads memory and CPU from `/proc`. It depends on the `fleetrun`
//! library for wire types and the API client, never on server internals.

mod api;
mod browser;
mod procfs;
mod real;
mod records;
mod report;
mod scenario;
mod swarm;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fleetrun::protocol::api::RunCommandRequest;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "fleetrun-bench", about = "Load tools and benchmarks for fleetrun")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Enrol and connect N virtual agents, optionally run a command on all of them, then hold.
    Swarm(SwarmArgs),
    /// Run every benchmark scenario (normally through bench/run.sh).
    Run(scenario::RunArgs),
}

#[derive(Debug, clap::Args)]
struct SwarmArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "FLEETRUN_SERVER")]
    server: String,
    /// Password of the server's `admin` account (creates the activation, runs commands).
    #[arg(long, env = "FLEETRUN_PASSWORD", hide_env_values = true)]
    password: String,
    /// Number of virtual agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Region of the activation they enrol with.
    #[arg(long, default_value = "bench-swarm")]
    region: String,
    /// Enrolments and handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Output bytes each agent answers a task with (unless the content has a `#bench` line).
    #[arg(long, default_value_t = 3)]
    output_bytes: usize,
    /// Largest output chunk, at most 65536.
    #[arg(long, default_value_t = 65536)]
    chunk_bytes: usize,
    /// Run this command on every agent of the swarm, `rounds` times, and print the timings.
    #[arg(long)]
    command: Option<String>,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Keep the agents connected this long before closing (0: close at once).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.mode {
        Mode::Swarm(args) => swarm_mode(args).await,
        Mode::Run(args) => scenario::run(args).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetrun-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn swarm_mode(args: SwarmArgs) -> anyhow::Result<()> {
    let fds = swarm::raise_fd_limit();
    if (fds as usize) < args.agents + 64 {
        eprintln!(
            "fleetrun-bench: warning: the open-file limit is {fds}, too low for {} agents",
            args.agents
        );
    }
    let api = api::Api::new(&args.server, &args.password);
    api.wait_healthy(Duration::from_secs(10)).await?;
    let mut config = swarm::SwarmConfig::new(&args.server);
    config.concurrency = args.concurrency;
    config.default_output = args.output_bytes;
    config.chunk_bytes = args.chunk_bytes;

    let started = Instant::now();
    let identities = swarm::enrol(&api.client, &config, &args.region, args.agents, "vagent").await?;
    println!("enrolled {} agents in {:?}", identities.len(), started.elapsed());
    let started = Instant::now();
    let swarm = swarm::Swarm::connect(config, identities).await?;
    println!(
        "connected {} agents in {:?}",
        swarm.instance_ids().len(),
        started.elapsed()
    );

    if let Some(command) = &args.command {
        let req = RunCommandRequest::shell(swarm.instance_ids().to_vec(), command.clone());
        let mut times = Vec::new();
        for round in 0..args.rounds {
            let timed = api
                .run_until_done(&req, Some(&swarm.instance_ids()[0]), |_| {})
                .await
                .with_context(|| format!("round {round}"))?;
            println!("{}: {} in {:?}", timed.invoke_id, timed.status, timed.elapsed);
            times.push(report::ms(timed.elapsed));
        }
        println!("median {:.1} ms over {} rounds", report::median(&times), times.len());
    }
    if args.hold_secs > 0 {
        println!("holding the connections for {} s (Ctrl-C to stop)", args.hold_secs);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.hold_secs)) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    swarm.close(Duration::from_secs(10)).await;
    Ok(())
}
