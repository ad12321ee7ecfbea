//! Retained commands, InvokeCommand and quotas.

use super::{rfc3339, window};
use crate::dispatch::{Actor, Kind, error::not_found};
use crate::protocol::api::{
    Command, CommandsResponse, CreateCommandRequest, InvocationCreated, InvokeCommandRequest, ModifyCommandRequest,
    QuotasResponse,
};
use crate::server::AppState;
use crate::server::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::store::CommandRow;
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
        spec: row.spec,
        parameter_names: row.parameter_names,
        invoke_times: row.invoke_times,
        creator: row.creator,
        created_time: rfc3339(row.created_at),
    }
}

#[utoipa::path(
    post,
    path = "/commands",
    tag = "commands",
    operation_id = "CreateCommand",
    summary = "Create a retained command (CreateCommand)",
    request_body = CreateCommandRequest,
    responses(
        (status = 201, description = "Retained (operator).", body = Command),
    ),
)]
pub async fn create(
    actor: Actor,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateCommandRequest>,
) -> Result<(StatusCode, ApiJson<Command>), ApiError> {
    let row = state.dispatcher.create_command(&actor, req).await?;
    Ok((StatusCode::CREATED, ApiJson(command_dto(row))))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    region_id: Option<String>,
    q: Option<String>,
    page: Option<u64>,
    page_size: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/commands",
    tag = "commands",
    operation_id = "ListCommands",
    summary = "List retained commands",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of retained commands.", body = CommandsResponse),
    ),
)]
pub async fn list(
    _: Actor,
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

#[utoipa::path(
    get,
    path = "/commands/{command_id}",
    tag = "commands",
    operation_id = "DescribeCommand",
    summary = "Get a retained command",
    params(("command_id" = String, Path, description = "The retained command's id (`c-…`).")),
    responses(
        (status = 200, description = "The retained command.", body = Command),
    ),
)]
pub async fn show(
    _: Actor,
    State(state): State<AppState>,
    ApiPath(command_id): ApiPath<String>,
) -> Result<ApiJson<Command>, ApiError> {
    let row = state
        .store
        .command(&command_id)
        .await
        .map_err(not_found(Kind::Command, &command_id))?;
    Ok(ApiJson(command_dto(row)))
}

#[utoipa::path(
    patch,
    path = "/commands/{command_id}",
    tag = "commands",
    operation_id = "ModifyCommand",
    summary = "Change a retained command",
    params(("command_id" = String, Path, description = "The retained command's id (`c-…`).")),
    request_body = ModifyCommandRequest,
    responses(
        (status = 200, description = "The command, changed (operator).", body = Command),
    ),
)]
pub async fn modify(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(command_id): ApiPath<String>,
    ApiJson(req): ApiJson<ModifyCommandRequest>,
) -> Result<ApiJson<Command>, ApiError> {
    let row = state.dispatcher.modify_command(&actor, &command_id, req).await?;
    Ok(ApiJson(command_dto(row)))
}

#[utoipa::path(
    delete,
    path = "/commands/{command_id}",
    tag = "commands",
    operation_id = "DeleteCommand",
    summary = "Delete a retained command",
    params(("command_id" = String, Path, description = "The retained command's id (`c-…`).")),
    responses(
        (status = 204, description = "Deleted (operator)."),
    ),
)]
pub async fn delete(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(command_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.dispatcher.delete_command(&actor, &command_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/commands/{command_id}/invoke",
    tag = "commands",
    operation_id = "InvokeCommand",
    summary = "Run a retained command (InvokeCommand)",
    params(("command_id" = String, Path, description = "The retained command's id (`c-…`).")),
    request_body = InvokeCommandRequest,
    responses(
        (status = 201, description = "Started (operator).", body = InvocationCreated),
        (
            status = 200,
            description = "A `client_token` seen before (the first invocation, `replayed`), or a dry run \
                           (what would run).",
            body = super::invocations::Resubmitted,
        ),
    ),
)]
pub async fn invoke(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(command_id): ApiPath<String>,
    ApiJson(req): ApiJson<InvokeCommandRequest>,
) -> Result<axum::response::Response, ApiError> {
    let answer = state.dispatcher.invoke_command(&actor, &command_id, req).await?;
    Ok(super::invocations::submitted(answer))
}

#[utoipa::path(
    get,
    path = "/quotas",
    tag = "commands",
    operation_id = "ListQuotas",
    summary = "List quotas with their use",
    responses(
        (status = 200, description = "Used and limit of each quota.", body = QuotasResponse),
    ),
)]
pub async fn quotas(_: Actor, State(state): State<AppState>) -> Result<ApiJson<QuotasResponse>, ApiError> {
    let quotas = state.dispatcher.quotas().await?;
    Ok(ApiJson(QuotasResponse { quotas }))
}
