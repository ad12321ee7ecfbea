//! `ApiError`, the one error answer of the JSON API and the agent routes, and the request-id
//! middleware that ties each answer to its log lines.

use crate::dispatch;
use crate::protocol::api::ErrorBody;
use crate::store::{self, RegisterRefusal};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;

tokio::task_local! {
    /// The id of the request being handled, for error bodies.
    static REQUEST_ID: String;
    /// Whether the request came from htmx (`HX-Request`), for console error answers.
    static IS_HTMX: bool;
}

/// Gives every request an id (`x-request-id` on the answer, `request_id` in error bodies).
pub async fn request_id(req: Request, next: Next) -> Response {
    let id = crate::store::ids::new_id("req");
    let htmx = req.headers().contains_key("hx-request");
    let mut response = REQUEST_ID.scope(id.clone(), IS_HTMX.scope(htmx, next.run(req))).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Whether the request being handled came from htmx.
pub fn is_htmx() -> bool {
    IS_HTMX.try_with(|h| *h).unwrap_or(false)
}

/// The id of the request being handled.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// An error answer: status, code and a sentence that says how to fix it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// The cause of a 5xx, logged once at the boundary and never shown to the client.
    source: Option<anyhow::Error>,
    /// Seconds to wait before retrying, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            source: None,
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "InternalError".into(),
            message: "The server hit an internal error; it has been logged with this request id.".into(),
            source: Some(source.into()),
            retry_after: None,
        }
    }
}

/// A wait as `Retry-After` gives it: whole seconds, rounded up, never zero (as the refusals'
/// messages say it).
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        if let Some(source) = &self.source {
            tracing::error!(request_id, error = ?source, "request failed");
        }
        let body = ErrorBody {
            code: self.code.into_owned(),
            message: self.message,
            request_id,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self
            .retry_after
            .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
        {
            response.headers_mut().insert(header::RETRY_AFTER, secs);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fleetrun\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NotFound => ApiError::new(StatusCode::NOT_FOUND, "NotFound", "the resource does not exist"),
            store::Error::Conflict => {
                ApiError::new(StatusCode::CONFLICT, "Conflict", "a resource with that name exists")
            }
            store::Error::DiskFull => {
                tracing::error!("a write failed: the disk holding the database is full");
                ApiError {
                    retry_after: Some(30),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable.DiskFull",
                        "The server's disk is full, so nothing can be saved right now. Free space on the disk \
                         that holds the data directory; the server recovers by itself, and agents keep their \
                         output until it does.",
                    )
                }
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<dispatch::Error> for ApiError {
    fn from(e: dispatch::Error) -> Self {
        use dispatch::{Conflict, Error, Kind, LoginRefusal, QuotaKind};
        match e {
            Error::Invalid { field, message } => ApiError::bad_request(field.api_code(), message),
            Error::NotFound { kind, id } => {
                let code = match kind {
                    Kind::Instance => "InvalidInstance.NotFound",
                    Kind::Invocation => "InvalidInvocation.NotFound",
                    Kind::Command => "InvalidCommand.NotFound",
                    Kind::Token => "InvalidToken.NotFound",
                    Kind::Result => "InvalidResult.NotFound",
                    Kind::Activation => "InvalidActivation.NotFound",
                    Kind::User => "NotFound",
                    Kind::AccessKey => "InvalidAccessKeyId.NotFound",
                };
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    code,
                    format!("{} {id:?} does not exist", kind.as_str()),
                )
            }
            Error::UnknownInstances(ids) => {
                let shown: Vec<&str> = ids.iter().take(10).map(String::as_str).collect();
                let more = if ids.len() > shown.len() {
                    format!(" and {} more", ids.len() - shown.len())
                } else {
                    String::new()
                };
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "InvalidInstance.NotFound",
                    format!(
                        "these instances are not registered: {}{more}. List registered ones with GET /api/v1/instances",
                        shown.join(", ")
                    ),
                )
            }
            Error::Quota { quota, used, limit } => {
                let (code, advice) = match quota {
                    QuotaKind::RetainedCommands { .. } => (
                        "QuotaExceeded.RetainedCommand",
                        "delete retained commands you no longer need, run without keep_command, or raise the \
                         limit with `fleetrun serve --retained-command-quota N` (FLEETRUN_RETAINED_COMMAND_QUOTA)",
                    ),
                    QuotaKind::AccessKeys => (
                        "QuotaExceeded.AccessKey",
                        "an account holds at most this many AccessKey pairs (a fixed limit, as on Alibaba Cloud): \
                         delete one you no longer use (DELETE /api/v1/access-keys/{access_key_id}, or the \
                         console's Account page), then create the new one",
                    ),
                };
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    code,
                    format!("{quota} is used up ({used} of {limit}): {advice}"),
                )
            }
            Error::Conflict { conflict, message } => {
                let code = match conflict {
                    Conflict::UserExists => "UserExists",
                    Conflict::LastAdmin => "LastAdmin",
                    Conflict::DeleteSelf => "DeleteSelf",
                    Conflict::CommandName => "InvalidCommandName.Duplicate",
                    Conflict::Superseded => "ConnectionSuperseded",
                    Conflict::ClientTokenReused => "IdempotentParameterMismatch",
                };
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            e @ Error::Forbidden { .. } => ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("{e}: ask an admin to change it"),
            ),
            Error::Login(refusal) => {
                let (status, code) = match refusal {
                    LoginRefusal::WrongCredentials { .. } => (StatusCode::UNAUTHORIZED, "InvalidCredentials"),
                    LoginRefusal::AddressThrottled(_) | LoginRefusal::UserBusy(_) => {
                        (StatusCode::TOO_MANY_REQUESTS, "Throttling.Login")
                    }
                    LoginRefusal::WrongCurrentPassword => (StatusCode::FORBIDDEN, "InvalidCredentials"),
                    LoginRefusal::BasicDisabled => (StatusCode::UNAUTHORIZED, "BasicAuthDisabled"),
                    LoginRefusal::BadToken => (StatusCode::UNAUTHORIZED, "InvalidToken"),
                };
                let mut error = ApiError::new(status, code, refusal.message());
                error.retry_after = refusal.retry_after().map(retry_after_secs);
                error
            }
            Error::Enrolment { activation_id, refusal } => {
                let (status, code, advice) = match refusal {
                    RegisterRefusal::BadCode => (
                        StatusCode::UNAUTHORIZED,
                        "InvalidActivation.Code",
                        "copy both from the activation you created",
                    ),
                    RegisterRefusal::Expired => (
                        StatusCode::FORBIDDEN,
                        "InvalidActivation.Expired",
                        "create a new activation",
                    ),
                    RegisterRefusal::Disabled => (
                        StatusCode::FORBIDDEN,
                        "InvalidActivation.Disabled",
                        "create a new activation",
                    ),
                    RegisterRefusal::UsedUp => (
                        StatusCode::FORBIDDEN,
                        "InvalidActivation.LimitExceeded",
                        "create a new activation for more instances",
                    ),
                };
                ApiError::new(
                    status,
                    code,
                    format!("enrolment refused by activation {activation_id:?}: {refusal}; {advice}"),
                )
            }
            Error::Store(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // A body that is not valid for the type is a bad request like any other (axum says 422).
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLarge",
                format!(
                    "the request body is larger than the {} MiB limit",
                    super::MAX_BODY_BYTES / (1024 * 1024)
                ),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            _ => ApiError::new(StatusCode::BAD_REQUEST, "InvalidParameter.Body", rejection.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("InvalidParameter.Query", rejection.body_text())
    }
}

impl From<axum_extra::extract::QueryRejection> for ApiError {
    fn from(rejection: axum_extra::extract::QueryRejection) -> Self {
        ApiError::bad_request("InvalidParameter.Query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("InvalidParameter.Path", rejection.body_text())
    }
}

/// `axum::extract::Path` whose rejections are `ApiError`s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::Json` whose rejections are `ApiError`s.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` whose rejections are `ApiError`s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum_extra::extract::Query` (a repeated key fills a `Vec`, as `?tag=a&tag=b`) whose
/// rejections are `ApiError`s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum_extra::extract::Query), rejection(ApiError))]
pub struct ApiMultiQuery<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
