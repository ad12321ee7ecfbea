//! The OpenAPI document of `/api/v1`, served at `GET /api/v1/openapi.json`, and the page that
//! shows it, `GET /api/docs` (Swagger UI, vendored from npm's `swagger-ui-dist` in `static/vendor/`).
//!
//! The paths come from each handler's `#[utoipa::path]` through the same `routes!` registration
//! that puts the handler in the router (`api::routes`), so no route is served undocumented and no
//! documented route is missing. What holds for every operation is said here once: how to
//! authenticate, and the error answer.
//!
//! Both are public: the document describes this version's code, the same for every server, and
//! holds no data or secret (as the README's API table does); API clients and code generators
//! read it before they have credentials.

use crate::protocol::api::{ErrorBody, StreamEvent};
use crate::server::error::ApiError;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder};

/// What the derived part of the document holds: its description, tags, the security every
/// operation needs unless it says otherwise, and the schemas no handler signature names.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fleetrun API",
        description = "The JSON API of a fleetrun server. Authenticate with `Authorization: Bearer <API token>` \
(`POST /api/v1/tokens`) or HTTP Basic (`username:password`, unless switched off in `/api/v1/settings`). \
Errors answer `{\"code\", \"message\", \"request_id\"}` with a 4xx or 5xx status; times are RFC 3339 UTC; \
lists take `page` and `page_size` (at most 1000) and return `total`. Request bodies refuse unknown fields. \
AccessKey pairs (`/api/v1/access-keys`) sign the Alibaba ECS RPC API served at `/`, which this document does \
not describe (docs/ECS-API.md does).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "instances", description = "Regions and the instances registered in them"),
        (name = "activations", description = "Activation codes that let agents enrol"),
        (name = "invocations", description = "RunCommand, execution records, output, stop and the live stream"),
        (name = "commands", description = "Retained commands, InvokeCommand and quotas"),
        (name = "files", description = "Send File"),
        (name = "tokens", description = "API tokens of the caller"),
        (name = "access-keys", description = "AccessKey pairs of the caller, for the ECS API"),
        (name = "users", description = "Accounts and server settings"),
        (name = "audit", description = "The audit log"),
        (name = "meta", description = "This document"),
    ),
    components(schemas(ErrorBody, StreamEvent)),
    security(("bearer" = []), ("basic" = [])),
)]
struct ApiDoc;

/// The whole document: `paths` (relative to `/api/v1`, as `api::routes` registered them) under
/// `/api/v1`, with the security schemes and, on every operation that needs credentials, the error
/// answers.
pub fn document(paths: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi().nest("/api/v1", paths);
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    let unauthorized = ResponseBuilder::from(error(
        "No credentials, or credentials that are wrong, expired or throttled (see `code`).",
    ))
    .header(
        "WWW-Authenticate",
        HeaderBuilder::new()
            .description(Some("`Basic realm=\"fleetrun\"`"))
            .build(),
    )
    .build();
    let components = doc.components.take().unwrap_or_default();
    doc.components = Some(
        ComponentsBuilder::from(components)
            .security_scheme(
                "bearer",
                SecurityScheme::Http(
                    Http::builder()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("An API token from `POST /api/v1/tokens` (shown once)."))
                        .build(),
                ),
            )
            .security_scheme(
                "basic",
                SecurityScheme::Http(
                    Http::builder()
                        .scheme(HttpAuthScheme::Basic)
                        .description(Some(
                            "`username:password` of a fleetrun account; an admin can switch it off \
                             (`PATCH /api/v1/settings`).",
                        ))
                        .build(),
                ),
            )
            .response("Unauthorized", unauthorized)
            .response(
                "ClientError",
                error("The request was refused: `code` names the reason, `message` says how to fix it."),
            )
            .response(
                "ServerError",
                error("The server could not answer (`request_id` finds the cause in its log); retry later."),
            )
            .build(),
    );
    for item in doc.paths.paths.values_mut() {
        for operation in operations(item) {
            // An operation with its own `security` is public (`[{}]`); the rest inherit the
            // document's and may be refused before their handler runs.
            if operation.security.is_some() {
                continue;
            }
            let responses = &mut operation.responses.responses;
            for (status, name) in [("401", "Unauthorized"), ("4XX", "ClientError"), ("5XX", "ServerError")] {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
            }
        }
    }
    doc
}

/// Every operation of a path item.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The document as served, made once: it depends on nothing but the code.
static DOCUMENT: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    serde_json::to_vec(&super::document())
        .map(Bytes::from)
        .map_err(|e| e.to_string())
});

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "GetOpenApiDocument",
    summary = "This OpenAPI document",
    security(()),
    responses(
        (status = 200, description = "This document (OpenAPI 3.1).", body = serde_json::Value),
    ),
)]
pub async fn json() -> Result<Response, ApiError> {
    let body = DOCUMENT
        .as_ref()
        .map_err(|e| ApiError::internal(anyhow::anyhow!("the OpenAPI document did not serialise: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            // It changes with the server's version: ask again each time.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body.clone(),
    )
        .into_response())
}

/// The page rendering the document (its script is a file: the Content-Security-Policy allows no
/// inline script).
pub async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../../../static/api-docs.html"),
    )
        .into_response()
}
