//! API tokens of the calling user.

use super::rfc3339;
use crate::dispatch::Actor;
use crate::protocol::api::{CreateTokenRequest, Token, TokenCreated, TokensResponse};
use crate::server::AppState;
use crate::server::error::{ApiError, ApiJson, ApiPath};
use axum::extract::State;
use axum::http::StatusCode;

#[utoipa::path(
    post,
    path = "/tokens",
    tag = "tokens",
    operation_id = "CreateToken",
    summary = "Create an API token",
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Created; the only answer holding the token.", body = TokenCreated),
    ),
)]
pub async fn create(
    actor: Actor,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, ApiJson<TokenCreated>), ApiError> {
    let days = req.expires_in_days.map(u64::from);
    let (row, secret) = state.dispatcher.create_token(&actor, &req.name, days).await?;
    let created = TokenCreated {
        token_id: row.id,
        name: row.name,
        token: secret,
        expires_time: row.expires_at.map(rfc3339),
    };
    Ok((StatusCode::CREATED, ApiJson(created)))
}

#[utoipa::path(
    get,
    path = "/tokens",
    tag = "tokens",
    operation_id = "ListTokens",
    summary = "List the caller's API tokens",
    responses(
        (status = 200, description = "The caller's tokens, never their secrets.", body = TokensResponse),
    ),
)]
pub async fn list(actor: Actor, State(state): State<AppState>) -> Result<ApiJson<TokensResponse>, ApiError> {
    let rows = state.store.list_tokens(actor.user_id).await?;
    let tokens = rows
        .into_iter()
        .map(|t| Token {
            token_id: t.id,
            name: t.name,
            created_time: rfc3339(t.created_at),
            last_used_time: t.last_used_at.map(rfc3339),
            expires_time: t.expires_at.map(rfc3339),
        })
        .collect();
    Ok(ApiJson(TokensResponse { tokens }))
}

#[utoipa::path(
    delete,
    path = "/tokens/{token_id}",
    tag = "tokens",
    operation_id = "RevokeToken",
    summary = "Revoke an API token",
    params(("token_id" = String, Path, description = "The token's id.")),
    responses(
        (status = 204, description = "Revoked."),
    ),
)]
pub async fn revoke(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(token_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.dispatcher.revoke_token(&actor, &token_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
