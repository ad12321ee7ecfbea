//! `fleetrun demo`: the newcomer's main job. Starts the server on the embedded SQLite file and
//! four real agent processes (own state directories) enrolled in two regions, prints the
//! console address and the admin credentials, and stops everything on Ctrl-C.

use crate::config::{Cli, DemoArgs, Mode};
use crate::dispatch::{ActivationRequest, Actor, Dispatcher};
use anyhow::Context as _;
use clap::Parser as _;
use std::path::Path;
use std::process::Stdio;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The demo agents: name and region.
const AGENTS: [(&str, &str); 4] = [
    ("web-1", "cn-hangzhou"),
    ("web-2", "cn-hangzhou"),
    ("db-1", "eu-central-1"),
    ("db-2", "eu-central-1"),
];

pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let mut serve = vec![
        "fleetrun".to_string(),
        "serve".into(),
        "--listen".into(),
        address.to_string(),
    ];
    serve.extend(["--data-dir".into(), args.data_dir.display().to_string()]);
    if let Some(password) = &args.admin_password {
        serve.extend(["--admin-password".into(), password.0.clone()]);
    }
    let Mode::Serve(serve_args) = Cli::parse_from(serve).mode else {
        unreachable!("parsed a serve command")
    };

    // Enrolment needs activations; create them before the server starts, for agents that
    // have no credential yet.
    let store = crate::server::open_store(&serve_args).await?;
    let domain = Dispatcher::offline(store.clone(), crate::server::settings(&serve_args));
    let agents_dir = args.data_dir.join("agents");
    let mut codes = Vec::new();
    for region in ["cn-hangzhou", "eu-central-1"] {
        let needed = AGENTS
            .iter()
            .any(|(name, r)| *r == region && !agents_dir.join(name).join("identity.json").exists());
        if needed {
            let req = ActivationRequest {
                region_id: region.into(),
                instance_count_limit: 2,
                ttl_hours: Some(1),
                description: Some("fleetrun demo".into()),
            };
            let (activation, code) = domain
                .create_activation(&Actor::server("demo"), req)
                .await
                .context("cannot create the demo's activations")?;
            codes.push((region, activation.id, code));
        }
    }
    store.close().await;

    let server = tokio::spawn(crate::server::run(serve_args, listener, shutdown.clone()));
    let exe = std::env::current_exe().context("cannot find the fleetrun executable")?;
    let mut children = Vec::new();
    for (name, region) in AGENTS {
        let activation = codes.iter().find(|(r, _, _)| *r == region);
        children.push(spawn_agent(
            &exe,
            &address.to_string(),
            &agents_dir.join(name),
            name,
            activation,
        )?);
    }

    let url = format!("http://{address}");
    println!();
    println!("fleetrun demo is running: 4 agents in regions cn-hangzhou and eu-central-1.");
    println!("  console and API: {url}");
    match (
        &args.admin_password,
        std::fs::read_to_string(args.data_dir.join("initial-admin-password")),
    ) {
        (Some(_), _) => {
            println!("  log in as admin with the password from FLEETRUN_ADMIN_PASSWORD")
        }
        (None, Ok(password)) => println!("  log in as admin, password {}", password.trim()),
        (None, Err(_)) => println!("  log in as admin with the password you set"),
    }
    println!("  try: fleetrun instances --server {url} --password <password>");
    println!("Press Ctrl-C to stop.");

    shutdown.cancelled().await;
    for child in &mut children {
        stop_child(child).await;
    }
    server.await.context("server task failed")??;
    Ok(())
}

fn spawn_agent(
    exe: &Path,
    address: &str,
    state_dir: &Path,
    name: &str,
    activation: Option<&(&str, String, String)>,
) -> anyhow::Result<Child> {
    std::fs::create_dir_all(state_dir)?;
    let log = std::fs::File::create(state_dir.join("agent.log"))?;
    let mut command = Command::new(exe);
    command
        .arg("agent")
        .args(["--server", &format!("http://{address}")])
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--name", name, "--reconnect-max-secs", "5"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some((_, id, code)) = activation {
        command
            .args(["--activation-id", id])
            .env("FLEETRUN_ACTIVATION_CODE", code);
    }
    command.spawn().with_context(|| format!("cannot start agent {name}"))
}

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
