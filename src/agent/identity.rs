//! The agent's identity: enrolment with an activation code on first start, and the stored
//! credential (`<state-dir>/identity.json`, mode 0600) on every start after.

use super::host;
use crate::config::AgentArgs;
use crate::protocol::OsType;
use crate::protocol::api::{ErrorBody, RegisterRequest, RegisterResponse};
use anyhow::{Context as _, bail};
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

/// Reads the stored identity, or enrols with the activation and stores the new one.
pub async fn load_or_enrol(args: &AgentArgs, http: &reqwest::Client) -> anyhow::Result<Identity> {
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
    };
    let url = format!("{}/agent/v1/register", args.server.trim_end_matches('/'));
    let response = http
        .post(&url)
        .json(&request)
        .send()
        .await
        .map_err(|e| crate::tls::explain(e.into()).context(format!("cannot reach {url}")))?;
    if !response.status().is_success() {
        let status = response.status();
        let message = match response.json::<ErrorBody>().await {
            Ok(body) => body.message,
            Err(_) => "no details".into(),
        };
        bail!("enrolment refused ({status}): {message}");
    }
    let registered: RegisterResponse = response
        .json()
        .await
        .context("the server's enrolment answer is malformed")?;
    let identity = Identity {
        instance_id: registered.instance_id,
        instance_secret: registered.instance_secret,
    };
    crate::files::write_private(&path, &serde_json::to_string_pretty(&identity)?)?;
    tracing::info!(instance_id = %identity.instance_id, "enrolled");
    Ok(identity)
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
