//! The signed-in user of a console request: the session cookie, the CSRF check on every
//! state-changing request, and what the layout needs to draw the top bar.

use super::error::PageError;
use super::view::Url;
use crate::dispatch::{Actor, Via};
use crate::server::AppState;
use crate::server::auth::PeerIp;
use crate::server::error::ApiError;
use crate::store::UserRow;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use axum_htmx::HxRedirect;
use subtle::ConstantTimeEq as _;

/// Name of the session cookie.
pub const COOKIE: &str = "fleetrun_session";

/// The session cookie: `HttpOnly`, `SameSite=Strict`, `Secure` under TLS. With an empty value
/// and `remove`, the same attributes end it.
pub fn session_cookie(secret: String, tls: bool) -> Cookie<'static> {
    Cookie::build((COOKIE, secret))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(tls)
        .max_age(cookie::time::Duration::hours(crate::dispatch::SESSION_HOURS))
        .build()
}

/// The signed-in user of a console request. State-changing requests must carry the
/// session's CSRF token in the `X-CSRF-Token` header (htmx adds it from `<body hx-headers>`).
#[derive(Debug, Clone)]
pub struct Session {
    pub user: UserRow,
    pub csrf: String,
    /// The region picked in the top bar, if any.
    pub region: Option<String>,
    /// The session cookie's value, to end the session or remember the region.
    pub cookie: String,
    pub source_ip: String,
}

impl Session {
    /// The session's user as the domain's actor.
    pub fn actor(&self) -> Actor {
        Actor {
            user_id: self.user.id,
            username: self.user.username.clone(),
            role: self.user.role,
            source_ip: self.source_ip.clone(),
            via: Via::Console,
        }
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

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let jar = CookieJar::from_headers(&parts.headers);
        let cookie = jar.get(COOKIE).map(|c| c.value().to_string());
        let session = match &cookie {
            Some(value) => state
                .dispatcher
                .session(value)
                .await
                .map_err(|e| PageError::from(ApiError::from(e)).into_response())?,
            None => None,
        };
        let (Some(session), Some(cookie)) = (session, cookie) else {
            return Err(to_login(parts));
        };
        let safe = matches!(parts.method, Method::GET | Method::HEAD);
        let token = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !safe && !bool::from(token.as_bytes().ct_eq(session.csrf.as_bytes())) {
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
            cookie,
            source_ip: PeerIp::of(parts, state).0,
        })
    }
}

/// Sends a visitor without a session to the login page (htmx follows `HX-Redirect`).
fn to_login(parts: &Parts) -> Response {
    if parts.headers.contains_key("hx-request") {
        return (StatusCode::UNAUTHORIZED, HxRedirect(Url::LOGIN.to_string()), ()).into_response();
    }
    let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let next: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
    Redirect::to(&format!("{}?next={next}", Url::LOGIN)).into_response()
}
