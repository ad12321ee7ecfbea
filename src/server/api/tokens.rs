//! API tokens of the calling user.

use super::rfc3339;
use crate::protocol::api::{CreateTokenRequest, Token, TokenCreated, TokensResponse};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiJson, ApiPath};
use crate::store::{self, ids, now_ms};
use axum::extract::State;
use axum::http::StatusCode;

pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, ApiJson<TokenCreated>), ApiError> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "InvalidParameter.Name",
            "a token needs a name of 1 to 64 characters",
        ));
    }
    let expires_at = match req.expires_in_days {
        Some(days @ 1..=3650) => Some(now_ms() + i64::from(days) * 86_400_000),
        Some(_) => {
            return Err(ApiError::bad_request(
                "InvalidParameter.ExpiresInDays",
                "`expires_in_days` must be between 1 and 3650",
            ));
        }
        None => None,
    };
    let secret = format!("frt_{}", ids::new_secret());
    let row = state
        .store
        .create_token(caller.user_id, name, &ids::hash_secret(&secret), expires_at)
        .await?;
    state.audit(&caller, "CreateToken", &row.id, name).await;
    let created = TokenCreated {
        token_id: row.id,
        name: row.name,
        token: secret,
        expires_time: expires_at.map(rfc3339),
    };
    Ok((StatusCode::CREATED, ApiJson(created)))
}

pub async fn list(caller: Caller, State(state): State<AppState>) -> Result<ApiJson<TokensResponse>, ApiError> {
    let rows = state.store.list_tokens(caller.user_id).await?;
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

pub async fn revoke(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(token_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .revoke_token(caller.user_id, &token_id)
        .await
        .map_err(|e| match e {
            store::Error::NotFound => ApiError::not_found("token", &token_id),
            other => other.into(),
        })?;
    state.audit(&caller, "RevokeToken", &token_id, "").await;
    Ok(StatusCode::NO_CONTENT)
}
