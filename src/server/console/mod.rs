//! The web console: server-rendered pages (askama) made interactive with htmx, in the style of
//! the ECS console's Send Command flow (DESIGN.md §10 lists the words on screen).
//!
//! One file per area. Handlers check the session, make one call into `dispatch` or `store`,
//! and render a `*Page` (full page) or `*Fragment` (an htmx swap). Command output is
//! untrusted text: templates escape it, and `fragment` escapes what is built in Rust.

mod activations;
mod audit;
mod commands;
mod fragment;
mod instances;
mod login;
pub(super) mod records;
mod send;
mod static_files;
mod users;

use super::AppState;
use super::auth::{Caller, source_ip};
use super::error::{ApiError, is_htmx};
use crate::store::{Role, UserRow, ids};
use askama::Template;
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

/// Name of the session cookie.
pub const COOKIE: &str = "fleetrun_session";

/// Every console route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to(Url::INSTANCES) }))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/console/region", post(login::pick_region))
        .route("/console/instances", get(instances::index))
        .route("/console/instances/{instance_id}", get(instances::show))
        .route("/console/send", get(send::dialog).post(send::run))
        .route("/console/send/parameters", post(send::parameters))
        .route("/console/invocations", get(records::index))
        .route("/console/invocations/{invoke_id}", get(records::show))
        .route("/console/invocations/{invoke_id}/panel", get(records::panel))
        .route("/console/invocations/{invoke_id}/live", get(records::live))
        .route("/console/invocations/{invoke_id}/stop", post(records::stop))
        .route(
            "/console/invocations/{invoke_id}/results/{instance_id}/output",
            get(records::download),
        )
        .route("/console/commands", get(commands::index))
        .route(
            "/console/commands/{command_id}",
            get(commands::show).post(commands::update),
        )
        .route("/console/commands/{command_id}/delete", post(commands::delete))
        .route(
            "/console/activations",
            get(activations::index).post(activations::create),
        )
        .route(
            "/console/activations/{activation_id}/disable",
            post(activations::disable),
        )
        .route("/console/audit", get(audit::index))
        .route("/console/users", get(users::index).post(users::create))
        .route("/console/users/{username}", post(users::change))
        .route("/console/settings", post(users::settings))
        .route("/console/account", get(users::account))
        .route("/console/account/password", post(users::password))
        .route("/console/account/tokens", post(users::create_token))
        .route("/console/account/tokens/{token_id}/revoke", post(users::revoke_token))
        .route("/static/{*path}", get(static_files::serve))
}

/// Console URLs used in more than one place.
pub struct Url;

impl Url {
    pub const INSTANCES: &'static str = "/console/instances";
    pub const LOGIN: &'static str = "/login";
}

/// The signed-in user of a console request. State-changing requests must carry the
/// session's CSRF token in the `X-CSRF-Token` header (htmx adds it from `<body hx-headers>`).
#[derive(Debug, Clone)]
pub struct Session {
    pub user: UserRow,
    pub csrf: String,
    /// The region picked in the top bar, if any.
    pub region: Option<String>,
    /// SHA-256 of the cookie value.
    pub id_hash: String,
    pub source_ip: String,
}

impl Session {
    /// The session as an API caller, for role checks and the audit log.
    pub fn caller(&self) -> Caller {
        Caller {
            user_id: self.user.id,
            username: self.user.username.clone(),
            role: self.user.role,
            source_ip: self.source_ip.clone(),
        }
    }

    /// Refuses unless the user has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), PageError> {
        self.caller().require(role).map_err(PageError::from)
    }

    /// What templates need to draw the layout.
    pub fn layout(&self, regions: Vec<(String, u64)>, active: &'static str) -> Layout {
        Layout {
            username: self.user.username.clone(),
            role: self.user.role.as_str(),
            csrf: self.csrf.clone(),
            region: self.region.clone().unwrap_or_default(),
            regions,
            active,
        }
    }
}

/// The parts of `base.html` that every page fills in.
#[derive(Debug, Clone)]
pub struct Layout {
    pub username: String,
    pub role: &'static str,
    pub csrf: String,
    /// The selected region ("" for all).
    pub region: String,
    pub regions: Vec<(String, u64)>,
    /// Which navigation entry is current.
    pub active: &'static str,
}

impl Layout {
    /// The header value htmx sends with every request: `{"X-CSRF-Token": "…"}`.
    pub fn hx_headers(&self) -> String {
        serde_json::json!({ "X-CSRF-Token": self.csrf }).to_string()
    }
}

fn cookie_value(parts: &Parts) -> Option<String> {
    let cookies = parts.headers.get_all(header::COOKIE);
    cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let id_hash = cookie_value(parts).map(|v| ids::hash_secret(&v));
        let session = match &id_hash {
            Some(hash) => state
                .store
                .session(hash)
                .await
                .map_err(|e| PageError::from(ApiError::from(e)).into_response())?,
            None => None,
        };
        let (Some(session), Some(id_hash)) = (session, id_hash) else {
            return Err(to_login(parts));
        };
        let safe = matches!(parts.method, Method::GET | Method::HEAD);
        let token = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !safe && !constant_time_eq(token.as_bytes(), session.csrf.as_bytes()) {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                "The form was stale or not sent by this console (CSRF check failed). Reload the page and try again.",
            )
            .into_response());
        }
        Ok(Session {
            user: session.user,
            csrf: session.csrf,
            region: session.region_id,
            id_hash,
            source_ip: source_ip(parts),
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sends a visitor without a session to the login page (htmx follows `HX-Redirect`).
fn to_login(parts: &Parts) -> Response {
    if parts.headers.contains_key("hx-request") {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        response
            .headers_mut()
            .insert("hx-redirect", HeaderValue::from_static(Url::LOGIN));
        return response;
    }
    let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let target = format!("{}?next={}", Url::LOGIN, urlencode(next));
    Redirect::to(&target).into_response()
}

/// Percent-encodes everything but unreserved characters.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Renders a template into an HTML answer.
pub fn render<T: Template>(template: &T) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => PageError::from(ApiError::internal(e)).into_response(),
    }
}

/// A console error: a toast for htmx requests, a small page otherwise.
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

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        let status = e.status;
        // Render the API error once so 5xx causes are logged with the request id.
        let message = if status.is_server_error() {
            drop(e.into_response());
            format!(
                "The server hit an internal error (request {}).",
                super::error::current_request_id()
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
        let mut response = (self.status, Html(html.unwrap_or_else(|_| "error".into()))).into_response();
        if is_htmx() {
            // Show the toast whatever the request targeted, even on an error status.
            let headers = response.headers_mut();
            headers.insert("hx-retarget", HeaderValue::from_static("#toasts"));
            headers.insert("hx-reswap", HeaderValue::from_static("beforeend"));
        }
        response
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

/// Pagination state for a listing page.
#[derive(Debug, Clone)]
pub struct Pager {
    pub page: u64,
    pub page_size: u64,
    pub total: u64,
}

impl Pager {
    pub fn new(page: Option<u64>, page_size: u64, total: u64) -> Pager {
        // Clamped, so that an absurd page number is just an empty page.
        Pager {
            page: page.unwrap_or(1).clamp(1, 1_000_000_000),
            page_size,
            total,
        }
    }

    pub fn offset(&self) -> u64 {
        (self.page - 1) * self.page_size
    }

    pub fn pages(&self) -> u64 {
        self.total.div_ceil(self.page_size).max(1)
    }

    pub fn has_prev(&self) -> bool {
        self.page > 1
    }

    pub fn has_next(&self) -> bool {
        self.page < self.pages()
    }

    pub fn prev(&self) -> u64 {
        self.page.saturating_sub(1).max(1)
    }

    pub fn next(&self) -> u64 {
        self.page + 1
    }
}

/// Formats a stored millisecond time for people: `2026-11-27 21:05:03`.
pub fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Formats a duration in milliseconds for people: `850 ms`, `3.2 s`, `4 min 05 s`.
pub fn duration(ms: i64) -> String {
    match ms {
        ..=0 => "0 ms".into(),
        1..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// Sets security headers on every answer: a Content-Security-Policy without inline scripts,
/// no framing, no MIME sniffing, no referrer leaks.
pub async fn security_headers(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    if state.tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(3_200), "3.2 s");
        assert_eq!(duration(245_000), "4 min 05 s");
    }

    #[test]
    fn pager_counts_pages() {
        let pager = Pager::new(Some(2), 50, 120);
        assert_eq!((pager.offset(), pager.pages(), pager.has_next()), (50, 3, true));
    }
}
