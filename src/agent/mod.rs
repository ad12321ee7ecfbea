//! The agent (our Cloud Assistant client): enrols once, holds one outbound WebSocket to the
//! server, runs the tasks it is sent and streams their output back.
//!
//! It uses `config` (its options), `protocol`, `files` and `tls`, and nothing of the server.
//! Output and ends are spooled on disk until the server acknowledges them (see `spool`), so a
//! dropped connection or an agent restart loses nothing.

#[cfg(unix)]
mod account;
pub mod backoff;
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
    check_server_url(&args.server, args.insecure_plaintext)?;
    let tls = crate::tls::client_config(args.ca_file.as_deref())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls((*tls).clone())
        .build()?;
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
    session::Agent::new(args, identity, spool, exec, tls)
        .run(shutdown)
        .await
}

/// Refuses URLs the agent cannot use, and plain HTTP to another machine unless allowed: the
/// instance credential and every command would cross the network unencrypted.
fn check_server_url(url: &str, insecure_plaintext: bool) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("--server {url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if insecure_plaintext || is_loopback(&parsed) => Ok(()),
        "http" => anyhow::bail!(
            "refusing plain http:// to {}: the instance credential and every command would cross the network \
             unencrypted. Serve with --tls-cert/--tls-key and use https://, or pass --insecure-plaintext if \
             this network is trusted",
            parsed.host_str().unwrap_or_default()
        ),
        other => anyhow::bail!("--server must use https:// or http://, not {other}://"),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_to_other_machines_unless_allowed() {
        assert!(check_server_url("http://127.0.0.1:8080", false).is_ok());
        assert!(check_server_url("http://localhost:8080", false).is_ok());
        assert!(check_server_url("http://[::1]:8080", false).is_ok());
        assert!(check_server_url("https://fleet.example", false).is_ok());
        let refused = check_server_url("http://fleet.example:8080", false)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("--insecure-plaintext"), "{refused}");
        assert!(check_server_url("http://fleet.example:8080", true).is_ok());
        assert!(check_server_url("ftp://fleet.example", true).is_err());
    }
}
