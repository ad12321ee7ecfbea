//! Logging in and out, and the region picked in the top bar.

use super::{COOKIE, ConsoleForm, PageError, Session, Url, render};
use crate::server::AppState;
use crate::server::auth::{PeerIp, verify_password};
use crate::store::{NewAudit, ids, now_ms};
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

/// How long a console session lasts.
const SESSION_HOURS: i64 = 12;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: String,
    username: String,
    next: String,
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn form(Query(query): Query<NextQuery>) -> Response {
    render(&LoginPage {
        error: String::new(),
        username: String::new(),
        next: safe_next(query.next.as_deref()),
    })
}

/// Only local paths, so a crafted link cannot send people elsewhere after logging in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path.to_string(),
        _ => Url::INSTANCES.to_string(),
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

pub async fn submit(
    State(state): State<AppState>,
    PeerIp(ip): PeerIp,
    ConsoleForm(form): ConsoleForm<LoginForm>,
) -> Result<Response, PageError> {
    let keys = crate::server::throttle::keys(&ip, &form.username);
    if let Err(wait) = state.throttle.check(&keys) {
        let page = LoginPage {
            error: crate::server::throttle::refusal(wait),
            username: form.username.clone(),
            next: safe_next(form.next.as_deref()),
        };
        return Ok((StatusCode::TOO_MANY_REQUESTS, render(&page)).into_response());
    }
    let user = state.store.user_by_name(&form.username).await?;
    let verified = match &user {
        Some(user) if !user.disabled => {
            let (password, hash) = (form.password.clone(), user.password_hash.clone());
            tokio::task::spawn_blocking(move || verify_password(&password, &hash))
                .await
                .unwrap_or(false)
        }
        _ => false,
    };
    let audit = |action: &'static str| NewAudit {
        username: &form.username,
        source_ip: &ip,
        action,
        target: "console",
        detail: "",
    };
    let Some(user) = user.filter(|_| verified) else {
        state.throttle.failed(&keys);
        let _ = state.store.audit(audit("LoginFailed")).await;
        let page = LoginPage {
            error: "Wrong username or password.".into(),
            username: form.username.clone(),
            next: safe_next(form.next.as_deref()),
        };
        return Ok((StatusCode::UNAUTHORIZED, render(&page)).into_response());
    };
    let secret = ids::new_secret();
    let expires_at = now_ms() + SESSION_HOURS * 3_600_000;
    state
        .store
        .create_session(&ids::hash_secret(&secret), user.id, &ids::new_secret(), expires_at)
        .await?;
    state.throttle.succeeded(&keys);
    let _ = state.store.audit(audit("Login")).await;
    let secure = if state.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_HOURS * 3600
    );
    let mut response = Redirect::to(&safe_next(form.next.as_deref())).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    );
    Ok(response)
}

pub async fn logout(State(state): State<AppState>, session: Session) -> Result<Response, PageError> {
    state.store.delete_session(&session.id_hash).await?;
    state.audit(&session.caller(), "Logout", "console", "").await;
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("fleetrun_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    headers.insert("hx-redirect", HeaderValue::from_static(Url::LOGIN));
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct RegionForm {
    region_id: String,
}

pub async fn pick_region(
    State(state): State<AppState>,
    session: Session,
    ConsoleForm(form): ConsoleForm<RegionForm>,
) -> Result<Response, PageError> {
    if !form.region_id.is_empty() {
        crate::dispatch::check_region(&form.region_id)?;
    }
    state
        .store
        .set_session_region(&session.id_hash, &form.region_id)
        .await?;
    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert("hx-refresh", HeaderValue::from_static("true"));
    Ok(response)
}
