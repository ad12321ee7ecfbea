//! The JSON API, `/api/v1` (DESIGN.md §4). One file per resource; `routes()` lists them all.

mod access_keys;
mod activations;
mod audit;
mod commands;
mod instances;
mod invocations;
mod tokens;
mod users;

use super::AppState;
use super::error::ApiError;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use chrono::{DateTime, SecondsFormat};

/// The routes under `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/regions", get(instances::regions))
        .route("/instances", get(instances::list))
        .route(
            "/instances/{instance_id}",
            get(instances::show)
                .patch(instances::modify)
                .delete(instances::deregister),
        )
        .route("/instances/{instance_id}/tags", put(instances::set_tags))
        .route("/activations", post(activations::create).get(activations::list))
        .route("/invocations", post(invocations::create).get(invocations::list))
        .route("/invocations/{invoke_id}", get(invocations::show))
        .route(
            "/invocations/{invoke_id}/results/{instance_id}/output",
            get(invocations::output),
        )
        .route("/invocations/{invoke_id}/executions", get(invocations::executions))
        .route("/invocations/{invoke_id}/stop", post(invocations::stop))
        .route("/invocations/{invoke_id}/stream", get(super::live::stream))
        .route("/commands", post(commands::create).get(commands::list))
        .route(
            "/commands/{command_id}",
            get(commands::show).patch(commands::modify).delete(commands::delete),
        )
        .route("/commands/{command_id}/invoke", post(commands::invoke))
        .route("/quotas", get(commands::quotas))
        .route("/tokens", post(tokens::create).get(tokens::list))
        .route("/tokens/{token_id}", delete(tokens::revoke))
        .route("/access-keys", post(access_keys::create).get(access_keys::list))
        .route(
            "/access-keys/{access_key_id}",
            axum::routing::patch(access_keys::modify).delete(access_keys::delete),
        )
        .route("/audit", get(audit::list))
        .route("/users", post(users::create).get(users::list))
        .route(
            "/users/{username}",
            axum::routing::patch(users::modify).delete(users::delete),
        )
        .route("/settings", get(users::settings).patch(users::modify_settings))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "this route does not take that method: see the API table in README.md",
            )
        })
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such API route: see the API table in README.md",
            )
        })
}

/// Offset and limit of a listing from its `page` and `page_size` (the domain's rule).
pub fn window(page: Option<u64>, page_size: Option<u64>) -> Result<(u64, u64), ApiError> {
    Ok(crate::dispatch::check::page_window(page, page_size)?)
}

/// RFC 3339 UTC text of a stored millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time from a query into stored milliseconds.
pub fn parse_time(field: &'static str, text: &str) -> Result<i64, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::bad_request(
                "InvalidParameter.Time",
                format!("`{field}` must be an RFC 3339 time like 2026-01-31T12:00:00Z"),
            )
        })
}
