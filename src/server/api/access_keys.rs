//! AccessKey pairs of the calling user, for the ECS API. The secret is answered once, by
//! `create`; nothing else here returns it.

use super::rfc3339;
use crate::dispatch::Actor;
use crate::protocol::api::{
    AccessKey, AccessKeyCreated, AccessKeysResponse, CreateAccessKeyRequest, ModifyAccessKeyRequest,
};
use crate::server::AppState;
use crate::server::error::{ApiError, ApiJson, ApiPath};
use crate::store::AccessKeyRow;
use axum::extract::State;
use axum::http::{StatusCode, header};

fn access_key(row: AccessKeyRow) -> AccessKey {
    AccessKey {
        access_key_id: row.id,
        description: row.description,
        enabled: row.enabled,
        created_time: rfc3339(row.created_at),
        last_used_time: row.last_used_at.map(rfc3339),
    }
}

#[utoipa::path(
    post,
    path = "/access-keys",
    tag = "access-keys",
    operation_id = "CreateAccessKey",
    summary = "Create an AccessKey pair for the ECS API",
    request_body = CreateAccessKeyRequest,
    responses(
        (
            status = 201,
            description = "Created; the only answer holding the secret (at most two per account).",
            body = AccessKeyCreated,
            headers(("cache-control" = String, description = "`no-store`: keep no copy of the secret.")),
        ),
    ),
)]
pub async fn create(
    actor: Actor,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateAccessKeyRequest>,
) -> Result<
    (
        StatusCode,
        [(header::HeaderName, &'static str); 1],
        ApiJson<AccessKeyCreated>,
    ),
    ApiError,
> {
    let (row, secret) = state.dispatcher.create_access_key(&actor, req.description).await?;
    let created = AccessKeyCreated {
        access_key_id: row.id,
        access_key_secret: secret,
        description: row.description,
        enabled: row.enabled,
        created_time: rfc3339(row.created_at),
    };
    // The one answer holding the secret: no cache along the way may keep a copy.
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        ApiJson(created),
    ))
}

#[utoipa::path(
    get,
    path = "/access-keys",
    tag = "access-keys",
    operation_id = "ListAccessKeys",
    summary = "List the caller's AccessKey pairs",
    responses(
        (status = 200, description = "The caller's AccessKey pairs, never their secrets.", body = AccessKeysResponse),
    ),
)]
pub async fn list(actor: Actor, State(state): State<AppState>) -> Result<ApiJson<AccessKeysResponse>, ApiError> {
    let rows = state.dispatcher.list_access_keys(&actor).await?;
    let access_keys = rows.into_iter().map(access_key).collect();
    Ok(ApiJson(AccessKeysResponse { access_keys }))
}

#[utoipa::path(
    patch,
    path = "/access-keys/{access_key_id}",
    tag = "access-keys",
    operation_id = "ModifyAccessKey",
    summary = "Enable or disable an AccessKey pair",
    params(("access_key_id" = String, Path, description = "The AccessKey id.")),
    request_body = ModifyAccessKeyRequest,
    responses(
        (status = 200, description = "The key, enabled or disabled.", body = AccessKey),
    ),
)]
pub async fn modify(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(access_key_id): ApiPath<String>,
    ApiJson(req): ApiJson<ModifyAccessKeyRequest>,
) -> Result<ApiJson<AccessKey>, ApiError> {
    let row = state
        .dispatcher
        .set_access_key_enabled(&actor, &access_key_id, req.enabled)
        .await?;
    Ok(ApiJson(access_key(row)))
}

#[utoipa::path(
    delete,
    path = "/access-keys/{access_key_id}",
    tag = "access-keys",
    operation_id = "DeleteAccessKey",
    summary = "Delete an AccessKey pair",
    params(("access_key_id" = String, Path, description = "The AccessKey id.")),
    responses(
        (status = 204, description = "Deleted."),
    ),
)]
pub async fn delete(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(access_key_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.dispatcher.delete_access_key(&actor, &access_key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
