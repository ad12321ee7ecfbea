//! Retained commands: create, change, delete, and the per-region quota. A name is unique within
//! its region.

use super::Dispatcher;
use super::actor::Actor;
use super::check;
use super::error::{Conflict, Error, Field, Kind, QuotaKind, invalid, not_found};
use crate::protocol::api::{ContentEncoding, CreateCommandRequest, ModifyCommandRequest, Quota};
use crate::protocol::{CommandSpec, params};
use crate::store::{self, CommandRow, CommandUpdate, NewCommand, Role};
use std::collections::BTreeMap;

/// A retained command's quota use in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUse {
    pub used: u64,
    pub limit: u64,
}

impl Dispatcher {
    /// CreateCommand (operator): stores a retained command under a name free in its region,
    /// within the region's quota.
    pub async fn create_command(&self, actor: &Actor, req: CreateCommandRequest) -> Result<CommandRow, Error> {
        actor.require(Role::Operator)?;
        let region = check::RegionId::parse(&req.region_id)?.into_inner();
        let name = check::required_name(Field::Name, "name", &req.name, check::MAX_NAME, "command")?;
        let description = check::text(
            Field::Description,
            "description",
            req.description,
            check::MAX_DESCRIPTION,
        )?;
        let spec = self.check_spec(req.spec, req.content_encoding)?;
        let new = NewCommand {
            parameter_names: command_parameters(&spec)?,
            region_id: region,
            name,
            description: description.unwrap_or_default(),
            spec,
            creator: actor.username.clone(),
        };
        let row = self.store_command(&new).await?;
        self.audit(actor, "CreateCommand", &row.id, &row.name).await;
        Ok(row)
    }

    /// Stores a checked command, turning store refusals into the domain's.
    async fn store_command(&self, new: &NewCommand) -> Result<CommandRow, Error> {
        let quota = self.inner.settings.retained_command_quota;
        self.inner
            .store
            .create_command(new, quota)
            .await
            .map_err(|e| command_refusal(e, &new.region_id, &new.name))
    }

    /// ModifyCommand (operator): fields left out keep their value.
    pub async fn modify_command(
        &self,
        actor: &Actor,
        command_id: &str,
        req: ModifyCommandRequest,
    ) -> Result<CommandRow, Error> {
        actor.require(Role::Operator)?;
        let command = self.command(command_id).await?;
        let name = req
            .name
            .as_deref()
            .map(|n| check::required_name(Field::Name, "name", n, check::MAX_NAME, "command"))
            .transpose()?;
        let content = match req.command_content {
            Some(text) => {
                let spec = CommandSpec {
                    content: check::content(&text, req.content_encoding, self.inner.settings.max_content_bytes)?,
                    ..command.spec.clone()
                };
                Some((command_parameters(&spec)?, spec.content))
            }
            None => None,
        };
        let update = CommandUpdate {
            description: req
                .description
                .map(|d| check::text(Field::Description, "description", Some(d), check::MAX_DESCRIPTION))
                .transpose()?
                .map(Option::unwrap_or_default),
            content: content.map(|(names, content)| (content, names)),
            working_dir: req
                .working_dir
                .map(|d| check::WorkingDir::parse(Some(d)).map(|d| d.map(check::WorkingDir::into_inner)))
                .transpose()?,
            timeout_secs: req
                .timeout_secs
                .map(check::Timeout::parse)
                .transpose()?
                .map(check::Timeout::secs),
            username: req
                .username
                .map(|u| check::Username::parse(Some(u)).map(|u| u.map(check::Username::into_inner)))
                .transpose()?,
            name,
        };
        let row = self
            .inner
            .store
            .update_command(command_id, &update)
            .await
            .map_err(|e| match e {
                store::Error::NotFound => Error::NotFound {
                    kind: Kind::Command,
                    id: command_id.to_string(),
                },
                other => command_refusal(other, &command.region_id, update.name.as_deref().unwrap_or_default()),
            })?;
        self.audit(actor, "ModifyCommand", command_id, &row.name).await;
        Ok(row)
    }

    /// DeleteCommand (operator). Its past invocations keep their own copy of the content.
    pub async fn delete_command(&self, actor: &Actor, command_id: &str) -> Result<(), Error> {
        actor.require(Role::Operator)?;
        self.inner
            .store
            .delete_command(command_id)
            .await
            .map_err(not_found(Kind::Command, command_id))?;
        self.audit(actor, "DeleteCommand", command_id, "").await;
        Ok(())
    }

    /// One retained command.
    pub async fn command(&self, command_id: &str) -> Result<CommandRow, Error> {
        self.inner
            .store
            .command(command_id)
            .await
            .map_err(not_found(Kind::Command, command_id))
    }

    /// How much of the retained-command quota a region uses.
    pub async fn command_quota(&self, region_id: &str) -> Result<QuotaUse, Error> {
        Ok(QuotaUse {
            used: self.inner.store.command_count(region_id).await?,
            limit: self.inner.settings.retained_command_quota,
        })
    }

    /// Every quota with its use: retained commands per region (every region with instances
    /// listed), and the per-invocation limits.
    pub async fn quotas(&self) -> Result<Vec<Quota>, Error> {
        let settings = &self.inner.settings;
        let mut used: BTreeMap<String, u64> = self.inner.store.command_counts().await?.into_iter().collect();
        for (region, _) in self.inner.store.regions().await? {
            used.entry(region).or_insert(0);
        }
        let quota = |name: &str, region_id: Option<String>, used: u64, limit: u64| Quota {
            name: name.into(),
            region_id,
            used,
            limit,
        };
        let mut quotas: Vec<Quota> = used
            .into_iter()
            .map(|(region, used)| quota("retained_commands", Some(region), used, settings.retained_command_quota))
            .collect();
        quotas.push(quota(
            "instances_per_invocation",
            None,
            0,
            settings.max_instances as u64,
        ));
        quotas.push(quota(
            "command_content_bytes",
            None,
            0,
            settings.max_content_bytes as u64,
        ));
        Ok(quotas)
    }

    /// Checks the spec of a request: content decoded and within the limit, timeout, working
    /// directory and username. The type is checked against the instances when they are known.
    pub(super) fn check_spec(&self, spec: CommandSpec, encoding: ContentEncoding) -> Result<CommandSpec, Error> {
        Ok(CommandSpec {
            content: check::content(&spec.content, encoding, self.inner.settings.max_content_bytes)?,
            timeout_secs: check::Timeout::parse(spec.timeout_secs)?.secs(),
            working_dir: check::WorkingDir::parse(spec.working_dir)?.map(check::WorkingDir::into_inner),
            username: check::Username::parse(spec.username)?.map(check::Username::into_inner),
            ..spec
        })
    }
}

/// The custom parameter names a retained command declares (none when parameters are off).
pub(super) fn command_parameters(spec: &CommandSpec) -> Result<Vec<String>, Error> {
    if !spec.enable_parameter {
        return Ok(Vec::new());
    }
    let names = params::custom_names(&spec.content);
    if names.len() > params::MAX_PARAMETERS {
        return Err(invalid(
            Field::Parameters,
            format!(
                "the content declares {} parameters; at most {} are allowed",
                names.len(),
                params::MAX_PARAMETERS
            ),
        ));
    }
    Ok(names)
}

/// Turns the store's refusals of a retained command into the domain's.
pub(super) fn command_refusal(e: store::Error, region_id: &str, name: &str) -> Error {
    match e {
        store::Error::Quota { used, limit, .. } => Error::Quota {
            quota: QuotaKind::RetainedCommands {
                region_id: region_id.to_string(),
            },
            used,
            limit,
        },
        store::Error::NameTaken(id) => Error::Conflict {
            conflict: Conflict::CommandName,
            message: format!(
                "region {region_id} already has a retained command named {name:?} ({id}): choose another name, \
                 or change or run that command"
            ),
        },
        other => other.into(),
    }
}
