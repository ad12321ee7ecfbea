//! Accounts (admin), one's own password, and server settings (admin).

use super::rfc3339;
use crate::dispatch::{Actor, UserChange};
use crate::protocol::api::{CreateUserRequest, ModifyUserRequest, ServerSettings, User, UsersResponse};
use crate::server::AppState;
use crate::server::error::{ApiError, ApiJson, ApiPath};
use crate::store::UserRow;
use axum::extract::State;
use axum::http::StatusCode;

fn user_dto(row: UserRow) -> User {
    User {
        username: row.username,
        role: row.role.as_str().into(),
        disabled: row.disabled,
        created_time: rfc3339(row.created_at),
    }
}

#[utoipa::path(
    post,
    path = "/users",
    tag = "users",
    operation_id = "CreateUser",
    summary = "Create an account (admin)",
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created (admin).", body = User),
    ),
)]
pub async fn create(
    actor: Actor,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, ApiJson<User>), ApiError> {
    let user = state
        .dispatcher
        .create_user(&actor, &req.username, &req.password, &req.role)
        .await?;
    Ok((StatusCode::CREATED, ApiJson(user_dto(user))))
}

#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    operation_id = "ListUsers",
    summary = "List accounts (admin)",
    responses(
        (status = 200, description = "Every account (admin).", body = UsersResponse),
    ),
)]
pub async fn list(actor: Actor, State(state): State<AppState>) -> Result<ApiJson<UsersResponse>, ApiError> {
    let users = state.dispatcher.list_users(&actor).await?;
    Ok(ApiJson(UsersResponse {
        users: users.into_iter().map(user_dto).collect(),
    }))
}

#[utoipa::path(
    patch,
    path = "/users/{username}",
    tag = "users",
    operation_id = "ModifyUser",
    summary = "Change an account, or your own password",
    params(("username" = String, Path, description = "The account's name.")),
    request_body = ModifyUserRequest,
    responses(
        (
            status = 200,
            description = "The account, changed (an admin, or the account itself for its password).",
            body = User,
        ),
    ),
)]
pub async fn modify(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(username): ApiPath<String>,
    ApiJson(req): ApiJson<ModifyUserRequest>,
) -> Result<ApiJson<User>, ApiError> {
    let change = UserChange {
        role: req.role,
        disabled: req.disabled,
        password: req.password,
        current_password: req.current_password,
    };
    let user = state.dispatcher.modify_user(&actor, &username, change).await?;
    Ok(ApiJson(user_dto(user)))
}

#[utoipa::path(
    delete,
    path = "/users/{username}",
    tag = "users",
    operation_id = "DeleteUser",
    summary = "Delete an account (admin)",
    params(("username" = String, Path, description = "The account's name.")),
    responses(
        (status = 204, description = "Deleted (admin)."),
    ),
)]
pub async fn delete(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.dispatcher.delete_user(&actor, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/settings",
    tag = "users",
    operation_id = "GetSettings",
    summary = "Get server settings (admin)",
    responses(
        (status = 200, description = "The settings (admin).", body = ServerSettings),
    ),
)]
pub async fn settings(actor: Actor, State(state): State<AppState>) -> Result<ApiJson<ServerSettings>, ApiError> {
    Ok(ApiJson(ServerSettings {
        basic_auth_enabled: state.dispatcher.basic_auth_setting(&actor)?,
    }))
}

#[utoipa::path(
    patch,
    path = "/settings",
    tag = "users",
    operation_id = "ModifySettings",
    summary = "Change server settings (admin)",
    request_body = ServerSettings,
    responses(
        (status = 200, description = "The settings now (admin).", body = ServerSettings),
    ),
)]
pub async fn modify_settings(
    actor: Actor,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ServerSettings>,
) -> Result<ApiJson<ServerSettings>, ApiError> {
    state.dispatcher.set_basic_auth(&actor, req.basic_auth_enabled).await?;
    Ok(ApiJson(ServerSettings {
        basic_auth_enabled: state.dispatcher.basic_auth_enabled(),
    }))
}
