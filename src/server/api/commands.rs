//! Retained commands, InvokeCommand and quotas.

use super::{rfc3339, window};
use crate::protocol::api::{
    Command, CommandsResponse, CreateCommandRequest, InvocationCreated, InvokeCommandRequest, ModifyCommandRequest,
    Quota, QuotasResponse,
};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::store::{self, CommandRow, Role};
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

/// A retained command as the API shows it.
pub fn command_dto(row: CommandRow) -> Command {
    Command {
        command_id: row.id,
        region_id: row.region_id,
        name: row.name,
        description: row.description,
        command_type: row.command_type,
        command_content: row.content,
        working_dir: row.working_dir,
        timeout_secs: row.timeout_secs,
        username: row.username,
        enable_parameter: row.enable_parameter,
        parameter_names: row.parameter_names,
        invoke_times: row.invoke_times,
        creator: row.creator,
        created_time: rfc3339(row.created_at),
    }
}

fn not_found(command_id: &str) -> impl Fn(store::Error) -> ApiError + '_ {
    move |e| match e {
        store::Error::NotFound => ApiError::not_found("command", command_id),
        other => other.into(),
    }
}

pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateCommandRequest>,
) -> Result<(StatusCode, ApiJson<Command>), ApiError> {
    caller.require(Role::Operator)?;
    let row = state.dispatcher.create_command(&caller.username, req).await?;
    state.audit(&caller, "CreateCommand", &row.id, &row.name).await;
    Ok((StatusCode::CREATED, ApiJson(command_dto(row))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    region_id: Option<String>,
    q: Option<String>,
    page: Option<u64>,
    page_size: Option<u64>,
}

pub async fn list(
    _: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<CommandsResponse>, ApiError> {
    let (offset, limit) = window(query.page, query.page_size)?;
    let region = query.region_id.as_deref().filter(|r| !r.is_empty());
    let q = query.q.as_deref().filter(|q| !q.trim().is_empty());
    let (rows, total) = state.store.list_commands(region, q, offset, limit).await?;
    Ok(ApiJson(CommandsResponse {
        commands: rows.into_iter().map(command_dto).collect(),
        total,
    }))
}

pub async fn show(
    _: Caller,
    State(state): State<AppState>,
    ApiPath(command_id): ApiPath<String>,
) -> Result<ApiJson<Command>, ApiError> {
    let row = state.store.command(&command_id).await.map_err(not_found(&command_id))?;
    Ok(ApiJson(command_dto(row)))
}

pub async fn modify(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(command_id): ApiPath<String>,
    ApiJson(req): ApiJson<ModifyCommandRequest>,
) -> Result<ApiJson<Command>, ApiError> {
    caller.require(Role::Operator)?;
    let change = state.dispatcher.check_command_change(&command_id, req).await?;
    let row = state.dispatcher.modify_command(&command_id, change).await?;
    state.audit(&caller, "ModifyCommand", &command_id, &row.name).await;
    Ok(ApiJson(command_dto(row)))
}

pub async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(command_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    state
        .store
        .delete_command(&command_id)
        .await
        .map_err(not_found(&command_id))?;
    state.audit(&caller, "DeleteCommand", &command_id, "").await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn invoke(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(command_id): ApiPath<String>,
    ApiJson(req): ApiJson<InvokeCommandRequest>,
) -> Result<(StatusCode, ApiJson<InvocationCreated>), ApiError> {
    caller.require(Role::Operator)?;
    let count = req.instance_ids.len();
    let created = state
        .dispatcher
        .invoke_command(&caller.username, &command_id, req)
        .await?;
    state
        .audit(
            &caller,
            "InvokeCommand",
            &created.invoke_id,
            &format!("command {command_id} on {count} instances"),
        )
        .await;
    Ok((StatusCode::CREATED, ApiJson(created)))
}

pub async fn quotas(_: Caller, State(state): State<AppState>) -> Result<ApiJson<QuotasResponse>, ApiError> {
    let limit = state.dispatcher.settings().retained_command_quota;
    let mut used: std::collections::BTreeMap<String, u64> = state.store.command_counts().await?.into_iter().collect();
    for (region, _) in state.store.regions().await? {
        used.entry(region).or_insert(0);
    }
    let mut quotas: Vec<Quota> = used
        .into_iter()
        .map(|(region, used)| Quota {
            name: "retained_commands".into(),
            region_id: Some(region),
            used,
            limit,
        })
        .collect();
    let settings = state.dispatcher.settings();
    quotas.push(Quota {
        name: "instances_per_invocation".into(),
        region_id: None,
        used: 0,
        limit: settings.max_instances as u64,
    });
    quotas.push(Quota {
        name: "command_content_bytes".into(),
        region_id: None,
        used: 0,
        limit: settings.max_content_bytes as u64,
    });
    Ok(ApiJson(QuotasResponse { quotas }))
}
