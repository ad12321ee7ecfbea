//! The agent (our Cloud Assistant client): enrols once, holds one outbound WebSocket to a
//! server, runs the tasks it is sent and streams their output back.
//!
//! It uses `config` (its options), `protocol`, `files` and `tls`, and nothing of the server. With
//! several server URLs it holds one connection at a time and fails over (`failover`).
//! Output and ends are spooled on disk until the server acknowledges them (see `spool`), so a
//! dropped connection or an agent restart loses nothing.

#[cfg(unix)]
mod account;
pub mod backoff;
#[cfg(unix)]
mod cgroup;
mod exec;
pub mod failover;
mod host;
mod identity;
#[cfg(unix)]
mod script;
pub mod service;
mod session;
#[cfg(target_os = "linux")]
mod spawn;
mod spool;
mod transfer;

use crate::config::AgentArgs;
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the agent until `shutdown` is cancelled or the server refuses it for good.
pub async fn run(args: AgentArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (mut servers, tls, http) = connector(&args)?;
    let identity = tokio::select! {
        identity = identity::load_or_enrol(&args, &servers, &http) => identity?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    // The id names the agent's cgroups and script directory, so it must be a plain name.
    anyhow::ensure!(
        spool::is_task_id(&identity.instance_id),
        "the stored instance id {:?} is malformed: remove {} and enrol again",
        identity.instance_id,
        args.state_dir.join("identity.json").display()
    );
    servers.start_for(&identity.instance_id);
    // Opening the spool kills what tasks of a crashed run left, before the sweeps below.
    let spool = spool::Spool::open(&args.state_dir.join("spool")).context("cannot open the output spool")?;
    let exec = Arc::new(exec::ExecConfig {
        kill_grace: Duration::from_secs(args.kill_grace_secs),
        output_grace: Duration::from_millis(args.output_grace_ms),
        pwsh: host::which("pwsh"),
        #[cfg(unix)]
        cgroups: containment(&identity.instance_id),
        #[cfg(unix)]
        scripts: scripts(&identity.instance_id),
        shutting_down: Default::default(),
    });
    let ended = session::Agent::new(args, servers, identity, spool, exec.clone(), tls)
        .run(shutdown)
        .await;
    // A stopped agent leaves no empty directory in the temp dir; one still holding scripts stays
    // for the next start's sweep.
    #[cfg(unix)]
    let _ = std::fs::remove_dir(exec.scripts.path());
    ended
}

/// Enrols this machine with the activation in `args` (or reads the credential it already has)
/// without connecting: what `fleetrun-agent install` does before it sets up the service.
/// Returns the instance id.
pub async fn enrol(args: &AgentArgs) -> anyhow::Result<String> {
    let (servers, _, http) = connector(args)?;
    Ok(identity::load_or_enrol(args, &servers, &http).await?.instance_id)
}

/// The server list, the TLS configuration and the HTTP client for enrolment, from the options.
fn connector(args: &AgentArgs) -> anyhow::Result<(failover::Servers, Arc<rustls::ClientConfig>, reqwest::Client)> {
    let servers = failover::Servers::parse(&args.server, args.insecure_plaintext)?;
    let tls = crate::tls::client_config(args.ca_file.as_deref())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls((*tls).clone())
        .build()?;
    Ok((servers, tls, http))
}

/// Task cgroups where cgroup v2 is available to the agent, saying in one line which containment
/// is in use (and what the fallback cannot do).
#[cfg(unix)]
fn containment(instance_id: &str) -> Option<cgroup::Cgroups> {
    match cgroup::Cgroups::setup(instance_id) {
        Ok(cgroups) => {
            tracing::info!(
                cgroups = %cgroups.parent().display(),
                kill = if cgroups.has_kill() { "cgroup.kill" } else { "each process" },
                "each command runs in a cgroup v2 of its own: Stop and Timeout kill every process it started"
            );
            Some(cgroups)
        }
        Err(reason) => {
            tracing::warn!(
                "cgroup v2 is not available to the agent ({reason}): each command runs in a process group of \
                 its own, and a process that leaves it (setsid) escapes Stop and Timeout"
            );
            None
        }
    }
}

/// The agent's script directory, swept of what a killed run of it left.
#[cfg(unix)]
fn scripts(instance_id: &str) -> script::ScriptDir {
    let scripts = script::ScriptDir::new(instance_id);
    match scripts.sweep() {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, dir = %scripts.path().display(), "removed scripts a previous run left"),
        Err(e) => tracing::warn!(dir = %scripts.path().display(), "cannot use the script directory: {e}"),
    }
    scripts
}
