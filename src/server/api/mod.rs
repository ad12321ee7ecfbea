//! The JSON API, `/api/v1` (DESIGN.md §4). One file per resource; `routes()` lists them all.

mod access_keys;
mod activations;
mod audit;
mod commands;
pub mod files;
mod instances;
mod invocations;
pub mod openapi;
mod tokens;
mod users;

use super::AppState;
use super::error::ApiError;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// The routes under `/api/v1`.
pub fn routes() -> Router<AppState> {
    registered().0
}

/// The OpenAPI document of `/api/v1` (its paths with the prefix), as `GET /api/v1/openapi.json`
/// serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    openapi::document(registered().1)
}

/// The router and the paths of its document, from one registration: `routes!` takes each
/// handler's methods and path from its `#[utoipa::path]`, so what is served and what is documented
/// cannot differ. Register routes only through `routes!` (tests/it/openapi.rs checks).
fn registered() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, paths) = OpenApiRouter::new()
        .routes(routes!(instances::regions))
        .routes(routes!(instances::list))
        .routes(routes!(instances::show, instances::modify, instances::deregister))
        .routes(routes!(instances::set_tags))
        .routes(routes!(activations::create, activations::list))
        .routes(routes!(invocations::create, invocations::list))
        .routes(routes!(invocations::show))
        .routes(routes!(invocations::output))
        .routes(routes!(invocations::executions))
        .routes(routes!(invocations::stop))
        .routes(routes!(super::live::stream))
        // The upload streams to disk under --max-file-bytes, not the 1 MiB body limit.
        .routes(routes!(files::create).layer(DefaultBodyLimit::disable()))
        .routes(routes!(files::list))
        .routes(routes!(files::show))
        .routes(routes!(commands::create, commands::list))
        .routes(routes!(commands::show, commands::modify, commands::delete))
        .routes(routes!(commands::invoke))
        .routes(routes!(commands::quotas))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(access_keys::create, access_keys::list))
        .routes(routes!(access_keys::modify, access_keys::delete))
        .routes(routes!(audit::list))
        .routes(routes!(users::create, users::list))
        .routes(routes!(users::modify, users::delete))
        .routes(routes!(users::settings, users::modify_settings))
        .routes(routes!(openapi::json))
        .split_for_parts();
    let router = router
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "this route does not take that method: see GET /api/v1/openapi.json or /api/docs",
            )
        })
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such API route: see GET /api/v1/openapi.json or /api/docs",
            )
        });
    (router, paths)
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
