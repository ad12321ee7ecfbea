//! RunCommand, InvokeCommand and retained commands (research §8.1–8.3).

use super::{Call, Page, content_encoding, ecs_time, encode, wildcard};
use crate::dispatch::{Kind, Submitted, error::not_found};
use crate::protocol::api::{
    ContentEncoding, CreateCommandRequest, InvocationCreated, InvokeCommandRequest, ModifyCommandRequest,
    RunCommandRequest,
};
use crate::protocol::ecs::{
    Command, Commands, CreateCommandResponse, DescribeCommandsResponse, Empty, InvokeCommandResponse, ParameterNames,
    RunCommandResponse, Tags,
};
use crate::protocol::{CommandSpec, CommandType, DEFAULT_TIMEOUT_SECS, NoUnknownFields, RepeatMode};
use crate::server::ecs::error::EcsError;
use crate::server::ecs::params::Params;
use crate::store::CommandRow;

/// `Type`: RunShellScript, RunBatScript or RunPowerShellScript.
fn command_type(params: &mut Params) -> Result<CommandType, EcsError> {
    let text = params.required("Type")?;
    text.parse().map_err(|_| {
        EcsError::bad_request(
            "InvalidCmdType.NotFound",
            format!("Type {text:?} is not a command type: use RunShellScript, RunBatScript or RunPowerShellScript"),
        )
    })
}

/// `RepeatMode` and `Frequency` (checked by the domain: the mode defaults to Once, or Period
/// when a frequency is given, as Alibaba's do); `Timed`, deprecated, only as false.
fn plan(params: &mut Params) -> Result<(Option<RepeatMode>, Option<String>), EcsError> {
    let mode = params
        .text("RepeatMode")
        .map(|text| {
            text.parse::<RepeatMode>().map_err(|_| {
                EcsError::invalid(
                    "RepeatMode",
                    format!("{text:?} is not one of Once, Period, NextRebootOnly, EveryReboot, DryRun"),
                )
            })
        })
        .transpose()?;
    let frequency = params.text("Frequency");
    params.only("Timed", "false")?;
    Ok((mode, frequency))
}

/// What RunCommand and InvokeCommand answer: the invocation's ids, or for `RepeatMode=DryRun`
/// Alibaba's dry-run error: `DryRunOperation` when everything checked would run,
/// `IncorrectInstanceStatus` naming the instances whose agent is not connected.
fn created(submitted: Submitted) -> Result<InvocationCreated, EcsError> {
    let answer = match submitted {
        Submitted::Created(created) => return Ok(created),
        Submitted::DryRun(answer) => answer,
    };
    let waiting: Vec<&str> = answer
        .instances
        .iter()
        .filter(|i| !i.would_run)
        .map(|i| i.instance_id.as_str())
        .collect();
    if waiting.is_empty() {
        return Err(EcsError::bad_request(
            "DryRunOperation",
            format!(
                "Request validation has been passed with DryRun flag set: the command would run on {} instances.",
                answer.would_run
            ),
        ));
    }
    Err(EcsError::bad_request(
        "IncorrectInstanceStatus",
        format!(
            "Request validation has been passed with DryRun flag set, but the Cloud Assistant agent of {} of {} \
             instances is not connected, so the command would not run there now: {}",
            waiting.len(),
            answer.instances.len(),
            waiting.iter().take(10).copied().collect::<Vec<_>>().join(", ")
        ),
    ))
}

pub async fn run_command(call: Call<'_>, mut p: Params) -> Result<RunCommandResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let command_type = command_type(&mut p)?;
    let req = RunCommandRequest {
        instance_ids: p.list("InstanceId")?,
        region_id: Some(region_id),
        tags: p.tags("ResourceTag")?,
        client_token: p.text("ClientToken"),
        invocation_tags: p.tags("Tag")?,
        spec: CommandSpec {
            command_type,
            content: p.required("CommandContent")?,
            timeout_secs: p.number("Timeout")?.unwrap_or(DEFAULT_TIMEOUT_SECS),
            working_dir: p.text("WorkingDir"),
            username: p.text("Username"),
            enable_parameter: p.bool("EnableParameter")?.unwrap_or(false),
        },
        // RunCommand's content is plain text unless told otherwise.
        content_encoding: content_encoding(&mut p, ContentEncoding::PlainText),
        keep_command: p.bool("KeepCommand")?.unwrap_or(false),
        name: p.text("Name"),
        description: p.text("Description"),
        parameters: p.json_values("Parameters")?,
        // Alibaba's RunCommand has no rate control (AWS's idea): all instances at once.
        max_concurrency: None,
        max_errors: None,
        repeat_mode: None,
        frequency: None,
        no_unknown_fields: NoUnknownFields,
    };
    let (repeat_mode, frequency) = plan(&mut p)?;
    let req = RunCommandRequest {
        repeat_mode,
        frequency,
        ..req
    };
    p.finish()?;
    let created = created(call.state.dispatcher.run_command(&call.actor, req).await?)?;
    Ok(RunCommandResponse {
        command_id: created.command_id,
        invoke_id: created.invoke_id,
    })
}

/// The command, if it is in the region the call names (elsewhere it does not exist here).
async fn command_in(call: &Call<'_>, region_id: &str, command_id: &str) -> Result<CommandRow, EcsError> {
    let command = call.state.dispatcher.command(command_id).await?;
    if command.region_id != region_id {
        return Err(crate::dispatch::Error::NotFound {
            kind: Kind::Command,
            id: command_id.to_string(),
        }
        .into());
    }
    Ok(command)
}

pub async fn invoke_command(call: Call<'_>, mut p: Params) -> Result<InvokeCommandResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let command_id = p.required("CommandId")?;
    let req = InvokeCommandRequest {
        instance_ids: p.list("InstanceId")?,
        parameters: p.json_values("Parameters")?,
        timeout_secs: p.number("Timeout")?,
        working_dir: p.text("WorkingDir"),
        username: p.text("Username"),
        // Alibaba's InvokeCommand has no rate control either.
        max_concurrency: None,
        max_errors: None,
        tags: p.tags("ResourceTag")?,
        client_token: p.text("ClientToken"),
        invocation_tags: p.tags("Tag")?,
        region_id: Some(region_id.clone()),
        repeat_mode: None,
        frequency: None,
    };
    let (repeat_mode, frequency) = plan(&mut p)?;
    let req = InvokeCommandRequest {
        repeat_mode,
        frequency,
        ..req
    };
    p.finish()?;
    command_in(&call, &region_id, &command_id).await?;
    let submitted = call
        .state
        .dispatcher
        .invoke_command(&call.actor, &command_id, req)
        .await?;
    let created = created(submitted)?;
    Ok(InvokeCommandResponse {
        invoke_id: created.invoke_id,
    })
}

pub async fn create_command(call: Call<'_>, mut p: Params) -> Result<CreateCommandResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let name = p.required("Name")?;
    let command_type = command_type(&mut p)?;
    let req = CreateCommandRequest {
        region_id,
        name,
        description: p.text("Description"),
        spec: CommandSpec {
            command_type,
            content: p.required("CommandContent")?,
            timeout_secs: p.number("Timeout")?.unwrap_or(DEFAULT_TIMEOUT_SECS),
            working_dir: p.text("WorkingDir"),
            username: None,
            enable_parameter: p.bool("EnableParameter")?.unwrap_or(false),
        },
        // CreateCommand's content is Base64 unless told otherwise (unlike RunCommand's).
        content_encoding: content_encoding(&mut p, ContentEncoding::Base64),
        no_unknown_fields: NoUnknownFields,
    };
    p.finish()?;
    let row = call.state.dispatcher.create_command(&call.actor, req).await?;
    Ok(CreateCommandResponse { command_id: row.id })
}

pub async fn modify_command(call: Call<'_>, mut p: Params) -> Result<Empty, EcsError> {
    let region_id = p.required("RegionId")?;
    let command_id = p.required("CommandId")?;
    let req = ModifyCommandRequest {
        name: p.text("Name"),
        description: p.text("Description"),
        // ModifyCommand's content, when given, is Base64 (Alibaba documents it as such).
        command_content: p.text("CommandContent"),
        content_encoding: ContentEncoding::Base64,
        working_dir: p.text("WorkingDir"),
        timeout_secs: p.number("Timeout")?,
        username: None,
    };
    p.finish()?;
    command_in(&call, &region_id, &command_id).await?;
    call.state
        .dispatcher
        .modify_command(&call.actor, &command_id, req)
        .await?;
    Ok(Empty {})
}

pub async fn delete_command(call: Call<'_>, mut p: Params) -> Result<Empty, EcsError> {
    let region_id = p.required("RegionId")?;
    let command_id = p.required("CommandId")?;
    p.finish()?;
    command_in(&call, &region_id, &command_id).await?;
    call.state.dispatcher.delete_command(&call.actor, &command_id).await?;
    Ok(Empty {})
}

pub async fn describe_commands(call: Call<'_>, mut p: Params) -> Result<DescribeCommandsResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let command_id = p.text("CommandId");
    let name = p.text("Name");
    let description = p.text("Description");
    let command_type = p.text("Type");
    // Alibaba's public commands: fleetrun has none, so asking for them finds none.
    let provider = p.text("Provider");
    let latest = p.bool("Latest")?;
    let encoding = content_encoding(&mut p, ContentEncoding::Base64);
    let page = Page::read(&mut p, 10, 50)?;
    p.finish()?;

    // A region holds at most its retained-command quota, so its commands are filtered here.
    let store = &call.state.store;
    let quota = call.state.dispatcher.settings().retained_command_quota;
    let rows = match &command_id {
        Some(id) => match store.command(id).await {
            Ok(row) => vec![row],
            Err(crate::store::Error::NotFound) => Vec::new(),
            Err(e) => return Err(not_found(Kind::Command, id)(e).into()),
        },
        None => store.list_commands(Some(&region_id), None, 0, quota.max(1)).await?.0,
    };
    let matching: Vec<CommandRow> = rows
        .into_iter()
        .filter(|c| c.region_id == region_id)
        .filter(|c| name.as_deref().is_none_or(|n| wildcard(n, &c.name)))
        .filter(|c| description.as_deref().is_none_or(|d| wildcard(d, &c.description)))
        .filter(|c| {
            command_type
                .as_deref()
                .is_none_or(|t| t == c.spec.command_type.as_str())
        })
        .filter(|_| provider.is_none() && latest != Some(false))
        .collect();
    let total = matching.len() as u64;
    let shown: Vec<Command> = page
        .of(matching)
        .into_iter()
        .map(|c| Command {
            command_id: c.id,
            name: c.name,
            description: c.description,
            command_type: c.spec.command_type.as_str().into(),
            command_content: encode(c.spec.content.as_bytes(), encoding),
            working_dir: c.spec.working_dir,
            timeout: c.spec.timeout_secs,
            enable_parameter: c.spec.enable_parameter,
            parameter_names: ParameterNames {
                parameter_name: c.parameter_names,
            },
            invoke_times: c.invoke_times,
            creation_time: ecs_time(c.created_at),
            version: 1,
            latest: true,
            tags: Tags::default(),
        })
        .collect();
    Ok(DescribeCommandsResponse {
        paging: page.paging(total, shown.len()),
        commands: Commands { command: shown },
    })
}
