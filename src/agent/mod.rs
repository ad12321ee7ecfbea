//! The agent (our Cloud Assistant client): enrols once, holds one outbound WebSocket to the
//! server, runs the tasks it is sent and streams their output back.
//!
//! It depends only on `protocol` (and its own files): nothing of the server runs here.
//! Output and ends are spooled on disk until the server acknowledges them (see `spool`), so a
//! dropped connection or an agent restart loses nothing.

mod exec;
mod host;
mod identity;
mod session;
mod spool;

use crate::config::AgentArgs;
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the agent until `shutdown` is cancelled or the server refuses it for good.
pub async fn run(args: AgentArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    check_server_url(&args.server)?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let identity = tokio::select! {
        identity = identity::load_or_enrol(&args, &http) => identity?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let spool = spool::Spool::open(&args.state_dir.join("spool")).context("cannot open the output spool")?;
    let exec = Arc::new(exec::ExecConfig {
        kill_grace: Duration::from_secs(args.kill_grace_secs),
        pwsh: host::which("pwsh"),
        shutting_down: Default::default(),
    });
    session::Agent::new(args, identity, spool, exec).run(shutdown).await
}

/// Refuses URLs the agent cannot use, with the reason.
fn check_server_url(url: &str) -> anyhow::Result<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        anyhow::bail!("--server {url:?} must start with http:// or https://");
    }
    if url.starts_with("https://") {
        anyhow::bail!("this agent build has no TLS support yet; use http:// on a trusted network or loopback");
    }
    Ok(())
}
