//! The fleet: activations that let agents enrol, enrolment itself, an instance's name,
//! deregistration, agent credentials, and the liveness rule (when an instance counts as
//! running and when its agent as lost).

use super::Dispatcher;
use super::actor::Actor;
use super::check;
use super::error::{Error, Field, Kind, not_found};
use crate::protocol::api::RegisterRequest;
use crate::protocol::{CommandType, OsType};
use crate::store::{self, ActivationRow, InstanceFilter, InstanceRow, NewActivation, NewInstance, Role, ids};
use subtle::ConstantTimeEq as _;

/// An activation's life when none is asked for, and the instance limit forms suggest
/// (Alibaba's defaults).
pub const DEFAULT_TTL_HOURS: u64 = 4;
pub const DEFAULT_ACTIVATION_INSTANCES: u64 = 10;

/// What CreateActivation takes, from any surface.
#[derive(Debug, Clone)]
pub struct ActivationRequest {
    pub region_id: String,
    pub instance_count_limit: u64,
    pub ttl_hours: Option<u64>,
    pub description: Option<String>,
}

/// How an instance is doing, as far as the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// The agent's heartbeat is fresh: the machine was up moments ago.
    pub running: bool,
    /// The agent holds a connection now (Cloud Assistant online).
    pub online: bool,
}

impl Liveness {
    /// Whether the instance can take a command now.
    pub fn can_run(self) -> bool {
        self.running && self.online
    }
}

impl Dispatcher {
    /// Heartbeats older than this are stale: their agent counts as lost.
    pub fn lost_before(&self) -> i64 {
        self.now() - self.inner.settings.heartbeat_loss().as_millis() as i64
    }

    /// The liveness of an instance as stored.
    pub fn liveness(&self, instance: &InstanceRow) -> Liveness {
        let lost_before = self.lost_before();
        Liveness {
            running: instance.last_heartbeat_at.is_some_and(|t| t > lost_before),
            online: instance.online,
        }
    }

    /// The ids of the instances matching `filter` that can take a command now (running, agent
    /// online), up to the most one invocation may target: "select all matching".
    pub async fn runnable_instance_ids(&self, filter: InstanceFilter) -> Result<Vec<String>, Error> {
        let runnable = InstanceFilter {
            running: Some(true),
            online: Some(true),
            fresh_after: self.lost_before(),
            ..filter
        };
        let max = self.inner.settings.max_instances as u64;
        Ok(self.inner.store.matching_instance_ids(&runnable, max).await?)
    }

    /// CreateActivation (admin): returns the activation and its code, which is shown this once.
    pub async fn create_activation(
        &self,
        actor: &Actor,
        req: ActivationRequest,
    ) -> Result<(ActivationRow, String), Error> {
        actor.require(Role::Admin)?;
        let region = check::RegionId::parse(req.region_id.trim())?;
        let limit = check::activation_instances(req.instance_count_limit)?;
        let ttl = check::activation_ttl_hours(req.ttl_hours.unwrap_or(DEFAULT_TTL_HOURS))?;
        let description = check::activation_description(req.description)?;
        let code = ids::new_secret();
        let new = NewActivation {
            region_id: region.into_inner(),
            description,
            instance_count_limit: limit as u32,
            expires_at: self.now() + ttl as i64 * 3_600_000,
            code_hash: ids::hash_secret(&code),
        };
        let row = self.inner.store.create_activation(&new).await?;
        let detail = format!("region {} limit {}", row.region_id, row.instance_count_limit);
        self.audit(actor, "CreateActivation", &row.id, &detail).await;
        Ok((row, code))
    }

    /// Every activation (admin), newest first.
    pub async fn list_activations(&self, actor: &Actor) -> Result<Vec<ActivationRow>, Error> {
        actor.require(Role::Admin)?;
        Ok(self.inner.store.list_activations().await?)
    }

    /// Disables an activation (admin): it enrols no more instances.
    pub async fn disable_activation(&self, actor: &Actor, activation_id: &str) -> Result<(), Error> {
        actor.require(Role::Admin)?;
        self.inner
            .store
            .disable_activation(activation_id)
            .await
            .map_err(not_found(Kind::Activation, activation_id))?;
        self.audit(actor, "DisableActivation", activation_id, "").await;
        Ok(())
    }

    /// Deletes an activation (admin): its code enrols no one again. Instances it enrolled stay.
    pub async fn delete_activation(&self, actor: &Actor, activation_id: &str) -> Result<(), Error> {
        actor.require(Role::Admin)?;
        self.inner
            .store
            .delete_activation(activation_id)
            .await
            .map_err(not_found(Kind::Activation, activation_id))?;
        self.audit(actor, "DeleteActivation", activation_id, "").await;
        Ok(())
    }

    /// Enrols an agent with an activation code: checks what it says about its host, counts it
    /// against the activation and returns the new instance with its secret (shown this once).
    /// A refusal is logged without the code.
    pub async fn register(&self, actor: &Actor, req: RegisterRequest) -> Result<(InstanceRow, String), Error> {
        check::host_field("hostname", &req.hostname, 255)?;
        check::host_field("os_name", &req.os_name, 255)?;
        check::host_field("agent_version", &req.agent_version, 64)?;
        let name = req.name.clone().unwrap_or_default();
        check::host_field("name", &name, check::MAX_INSTANCE_NAME)?;
        check::ip_addresses(&req.ip_addresses)?;
        let tags = super::tags::checked_tags(&req.tags, "the agent's --tag")?;
        let secret = ids::new_secret();
        // Until its first Hello says otherwise: what an agent of that OS runs out of the box.
        let supported = match req.os_type {
            OsType::Linux => vec![CommandType::RunShellScript],
            OsType::Windows => vec![CommandType::RunBatScript, CommandType::RunPowerShellScript],
        };
        let new = NewInstance {
            name: name.trim().to_string(),
            hostname: req.hostname,
            os_type: req.os_type,
            os_name: req.os_name,
            ip_addresses: req.ip_addresses,
            agent_version: req.agent_version,
            supported_command_types: supported,
            secret_hash: ids::hash_secret(&secret),
            tags,
        };
        let code_hash = ids::hash_secret(&req.activation_code);
        let instance = match self
            .inner
            .store
            .register_instance(&req.activation_id, &code_hash, &new)
            .await
        {
            Ok(instance) => instance,
            Err(store::Error::Register(refusal)) => {
                tracing::warn!(activation_id = %req.activation_id, source_ip = %actor.source_ip, %refusal, "refused an enrolment");
                return Err(Error::Enrolment {
                    activation_id: req.activation_id,
                    refusal,
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.fleet_changed(true);
        let mut detail = format!("activation {} region {}", req.activation_id, instance.region_id);
        if !instance.tags.is_empty() {
            let tags: Vec<String> = instance.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            detail.push_str(&format!(" tags {}", tags.join(", ")));
        }
        self.audit(actor, "RegisterInstance", &instance.id, &detail).await;
        Ok((instance, secret))
    }

    /// The instance an agent's credential (`<instance id>:<secret>`) belongs to, if it is valid.
    pub async fn authenticate_agent(&self, credential: &str) -> Result<Option<String>, Error> {
        let Some((instance_id, secret)) = credential.split_once(':') else {
            return Ok(None);
        };
        let Some(stored) = self.inner.store.instance_secret_hash(instance_id).await? else {
            return Ok(None);
        };
        let matches: bool = stored.as_bytes().ct_eq(ids::hash_secret(secret).as_bytes()).into();
        Ok(matches.then(|| instance_id.to_string()))
    }

    /// Renames an instance (operator).
    pub async fn rename_instance(&self, actor: &Actor, instance_id: &str, name: &str) -> Result<InstanceRow, Error> {
        actor.require(Role::Operator)?;
        let name = check::required_name(Field::InstanceName, "name", name, check::MAX_INSTANCE_NAME, "instance")?;
        let row = self
            .inner
            .store
            .rename_instance(instance_id, &name)
            .await
            .map_err(not_found(Kind::Instance, instance_id))?;
        self.audit(actor, "RenameInstance", instance_id, &name).await;
        Ok(row)
    }

    /// Deregisters an instance (admin): its credential stops working and its connection closes
    /// at once. Its results are kept.
    pub async fn deregister(&self, actor: &Actor, instance_id: &str) -> Result<(), Error> {
        actor.require(Role::Admin)?;
        self.inner
            .store
            .delete_instance(instance_id)
            .await
            .map_err(not_found(Kind::Instance, instance_id))?;
        self.fleet_changed(false);
        self.disconnect(instance_id);
        self.audit(actor, "DeregisterInstance", instance_id, "").await;
        Ok(())
    }
}
