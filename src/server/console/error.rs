//! Console errors: a toast for htmx requests, a small page otherwise. A 5xx never shows its
//! cause: it is logged once with the request id, which the page shows.

use crate::server::error::{ApiError, current_request_id, is_htmx};
use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum_htmx::{HxReswap, HxRetarget, SwapOption};

/// A console error.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PageError {
            status,
            message: message.into(),
        }
    }

    /// The sentence shown to the user.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PageError {}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        let status = e.status;
        // A 500's cause is never shown; a 503 says what is unavailable and what to do.
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // Rendering the API error logs its cause once, with the request id.
            drop(e.into_response());
            format!(
                "The server hit an internal error; it has been logged with request id {}.",
                current_request_id()
            )
        } else {
            e.message
        };
        PageError { status, message }
    }
}

impl From<crate::store::Error> for PageError {
    fn from(e: crate::store::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl From<crate::dispatch::Error> for PageError {
    fn from(e: crate::dispatch::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl From<askama::Error> for PageError {
    fn from(e: askama::Error) -> Self {
        ApiError::internal(e).into()
    }
}

#[derive(Template)]
#[template(path = "partials/toast.html")]
struct ToastFragment<'a> {
    message: &'a str,
}

/// A short confirmation shown as a toast.
#[derive(Template)]
#[template(path = "partials/note.html")]
pub struct ToastNote<'a> {
    pub message: &'a str,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let html = if is_htmx() {
            ToastFragment { message: &self.message }.render()
        } else {
            ErrorPage {
                status: self.status.as_u16(),
                message: &self.message,
            }
            .render()
        };
        let body = Html(html.unwrap_or_else(|_| "error".into()));
        if is_htmx() {
            // Show the toast whatever the request targeted, even on an error status.
            let place = (HxRetarget("#toasts".into()), HxReswap(SwapOption::BeforeEnd));
            return (self.status, place, body).into_response();
        }
        (self.status, body).into_response()
    }
}

impl From<axum::extract::rejection::FormRejection> for PageError {
    fn from(rejection: axum::extract::rejection::FormRejection) -> Self {
        // axum reports a form over the body limit as a buffering failure; it is a 413.
        let too_large = rejection.body_text().contains("length limit exceeded");
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE || too_large {
            let limit = crate::server::MAX_BODY_BYTES / (1024 * 1024);
            return PageError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The form is larger than the {limit} MiB limit."),
            );
        }
        PageError::new(
            StatusCode::BAD_REQUEST,
            format!("The form was incomplete or malformed: {}", rejection.body_text()),
        )
    }
}

/// `axum::Form` whose rejections are `PageError`s (400 with a sentence, not axum's 422 text).
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Form), rejection(PageError))]
pub struct ConsoleForm<T>(pub T);
