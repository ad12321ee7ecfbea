//! Real `fleetrun agent` processes on this machine, each with its own state directory, enrolled
//! through a real activation. They die with the bench: SIGTERM on `stop`, SIGKILL when dropped,
//! and the kernel's parent-death signal if the bench itself is killed.

use crate::api::Api;
use anyhow::{Context as _, bail};
use fleetrun::protocol::api::CreateActivationRequest;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// One running agent process.
pub struct RealAgent {
    pub instance_id: String,
    pub pid: u32,
    child: Child,
}

/// A group of agents started together.
pub struct RealFleet {
    pub agents: Vec<RealAgent>,
}

impl RealFleet {
    /// Enrols and starts `count` agents in `region` (state and logs under `dir`), `parallel`
    /// starting at once, and returns when the API shows every one of them online.
    pub async fn start(
        api: &Api,
        bin: &Path,
        dir: &Path,
        region: &str,
        count: usize,
        parallel: usize,
    ) -> anyhow::Result<RealFleet> {
        let activation = api
            .client
            .create_activation(&CreateActivationRequest {
                region_id: region.to_string(),
                instance_count_limit: count as u32,
                ttl_hours: Some(24),
                description: Some(format!("fleetrun-bench: {count} real agents")),
            })
            .await?;
        let mut fleet = RealFleet { agents: Vec::new() };
        for batch in (0..count).collect::<Vec<_>>().chunks(parallel.max(1)) {
            let mut starting = Vec::new();
            for &n in batch {
                let state = dir.join(format!("{region}-{n:03}"));
                std::fs::create_dir_all(&state)?;
                let log = std::fs::File::create(dir.join(format!("{region}-{n:03}.log")))?;
                let mut command = Command::new(bin);
                command.args(["--log", "warn"]);
                if bin.file_name().is_some_and(|name| name == "fleetrun") {
                    command.arg("agent");
                }
                command
                    .args(["--server", &api.base, "--state-dir"])
                    .arg(&state)
                    .args(["--name", &format!("{region}-{n:03}")])
                    .args(["--activation-id", &activation.activation_id])
                    .args(["--activation-code", &activation.activation_code])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .kill_on_drop(true);
                die_with_parent(&mut command);
                let child = command
                    .spawn()
                    .with_context(|| format!("cannot start {}", bin.display()))?;
                starting.push((child, state));
            }
            for (child, state) in starting {
                let instance_id = wait_identity(&state).await?;
                let pid = child.id().context("agent exited at once")?;
                fleet.agents.push(RealAgent {
                    instance_id,
                    pid,
                    child,
                });
            }
        }
        fleet.wait_online(api, Duration::from_secs(60)).await?;
        Ok(fleet)
    }

    /// Instance ids of the fleet, in start order.
    pub fn instance_ids(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.instance_id.clone()).collect()
    }

    /// Waits until the API lists every agent of the fleet as online and Running.
    async fn wait_online(&self, api: &Api, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let wanted: HashSet<&str> = self.agents.iter().map(|a| a.instance_id.as_str()).collect();
        loop {
            let mut online = 0;
            let mut page = 1;
            loop {
                let listed = api
                    .client
                    .instances(&format!("status=Running&page_size=1000&page={page}"))
                    .await?;
                online += listed
                    .instances
                    .iter()
                    .filter(|i| i.agent.online && wanted.contains(i.instance_id.as_str()))
                    .count();
                if (page * 1000) as u64 >= listed.total {
                    break;
                }
                page += 1;
            }
            if online == wanted.len() {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!(
                    "only {online} of {} real agents came online within {limit:?}",
                    wanted.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every agent: SIGTERM, then SIGKILL for any still running after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        for agent in &self.agents {
            let pid = nix::unistd::Pid::from_raw(agent.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        for agent in &mut self.agents {
            if tokio::time::timeout_at(deadline, agent.child.wait()).await.is_err() {
                let _ = agent.child.kill().await;
            }
        }
    }
}

/// Asks the kernel to SIGKILL the child when the bench dies, so no agent outlives a crash.
fn die_with_parent(command: &mut Command) {
    // `pre_exec` is unsafe by contract: the closure runs in the forked child.
    #[allow(unsafe_code)]
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            Ok(())
        });
    }
}

/// The instance id an agent writes to `<state>/identity.json` once enrolled.
async fn wait_identity(state: &Path) -> anyhow::Result<String> {
    let path: PathBuf = state.join("identity.json");
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(id) = value["instance_id"].as_str() {
                    return Ok(id.to_string());
                }
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("no agent identity in {} after 60 s", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
