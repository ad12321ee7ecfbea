//! The agent's identity: enrolment with an activation code on first start, and the stored
//! credential (`<state-dir>/identity.json`, mode 0600) on every start after.

use super::failover::Servers;
use super::host;
use crate::config::AgentArgs;
use crate::protocol::OsType;
use crate::protocol::api::{ErrorBody, RegisterRequest, RegisterResponse};
use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};

/// The instance credential. Its `Debug` hides the secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub instance_id: String,
    pub instance_secret: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

const FILE: &str = "identity.json";

/// Reads the stored identity, or enrols with the activation (at the first of `servers` that
/// answers) and stores the new one.
pub async fn load_or_enrol(args: &AgentArgs, servers: &Servers, http: &reqwest::Client) -> anyhow::Result<Identity> {
    crate::files::create_private_dir(&args.state_dir, &["identity.json", "spool"])?;
    let path = args.state_dir.join(FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let identity: Identity = serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged: remove it and enrol again", path.display()))?;
        tracing::info!(instance_id = %identity.instance_id, "using the stored instance credential");
        return Ok(identity);
    }
    let (Some(activation_id), Some(code)) = (&args.activation_id, activation_code(args).await?) else {
        bail!(
            "{} has no instance credential yet: give --activation-id and the activation code \
             (FLEETRUN_ACTIVATION_CODE or --activation-code-file) to enrol this machine",
            args.state_dir.display()
        );
    };
    let request = RegisterRequest {
        activation_id: activation_id.clone(),
        activation_code: code,
        hostname: host::hostname(),
        name: args.name.clone(),
        os_type: OsType::current(),
        os_name: host::os_name(),
        ip_addresses: host::ip_addresses(),
        agent_version: crate::VERSION.to_string(),
        tags: args.tags.iter().map(|t| crate::protocol::Tag::parse_pair(t)).collect(),
    };
    let (server, registered) = register(http, servers, &request).await?;
    let identity = Identity {
        instance_id: registered.instance_id,
        instance_secret: registered.instance_secret,
    };
    crate::files::write_private(&path, &serde_json::to_string_pretty(&identity)?)?;
    tracing::info!(instance_id = %identity.instance_id, "enrolled at {server}");
    Ok(identity)
}

/// Sends the enrolment to each server in turn until one answers. An answer is final, a refusal
/// (4xx) too: the replicas share one database, so the next would say the same. A server that
/// cannot be reached, or that answers 5xx (a replica going down, a proxy with no backend), is
/// skipped. Returns the server that enrolled this agent, with its answer.
async fn register<'s>(
    http: &reqwest::Client,
    servers: &'s Servers,
    request: &RegisterRequest,
) -> anyhow::Result<(&'s str, RegisterResponse)> {
    let mut unavailable = Vec::new();
    for server in servers.all() {
        let url = format!("{server}/agent/v1/register");
        let response = match http.post(&url).json(request).send().await {
            Ok(response) => response,
            Err(e) => {
                let e = crate::tls::explain(e.into()).context(format!("cannot reach {url}"));
                if servers.has_others() {
                    tracing::warn!("enrolment: {e:#}; trying the next server");
                }
                unavailable.push(e);
                continue;
            }
        };
        let status = response.status();
        if status.is_success() {
            let registered = response
                .json()
                .await
                .with_context(|| format!("the enrolment answer of {server} is malformed"))?;
            return Ok((server, registered));
        }
        let message = match response.json::<ErrorBody>().await {
            Ok(body) => body.message,
            Err(_) => "no details".into(),
        };
        let e = anyhow!("enrolment refused ({status}): {message}");
        if !status.is_server_error() || !servers.has_others() {
            return Err(e);
        }
        tracing::warn!("enrolment at {server}: {e}; trying the next server");
        unavailable.push(e.context(format!("at {server}")));
    }
    match unavailable.len() {
        // One URL: its error as it was.
        1 => Err(unavailable.remove(0)),
        _ => bail!(
            "no server could take the enrolment: {}",
            unavailable
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// The activation code from `--activation-code-file` (`-` is standard input), or else from
/// `--activation-code` / `FLEETRUN_ACTIVATION_CODE`.
async fn activation_code(args: &AgentArgs) -> anyhow::Result<Option<String>> {
    let Some(path) = &args.activation_code_file else {
        return Ok(args.activation_code.as_ref().map(|code| code.0.clone()));
    };
    if args.activation_code.is_some() {
        bail!(
            "give the activation code once: FLEETRUN_ACTIVATION_CODE (or --activation-code) or \
             --activation-code-file, not both"
        );
    }
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::stdin(), &mut text)
            .await
            .context("cannot read the activation code from standard input")?;
        text
    } else {
        tokio::fs::read_to_string(path)
            .await
            .with_context(|| format!("cannot read --activation-code-file {}", path.display()))?
    };
    // A file written with `echo` ends with a newline that is not part of the code.
    let code = text.trim_end();
    if code.is_empty() {
        bail!("--activation-code-file {} holds no activation code", path.display());
    }
    Ok(Some(code.to_string()))
}
