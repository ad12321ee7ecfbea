//! Logging in and out, and the region picked in the top bar.

use super::session::session_cookie;
use super::{ConsoleForm, PageError, Session, Url, render};
use crate::dispatch::Error;
use crate::server::AppState;
use crate::server::auth::PeerIp;
use crate::server::error::retry_after_secs;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use axum_htmx::{HxRedirect, HxRefresh};
use serde::Deserialize;

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
    jar: CookieJar,
    ConsoleForm(form): ConsoleForm<LoginForm>,
) -> Result<Response, PageError> {
    let next = safe_next(form.next.as_deref());
    match state.dispatcher.login(&form.username, &form.password, &ip).await {
        Ok(session) => {
            let jar = jar.add(session_cookie(session.secret, state.tls));
            Ok((jar, Redirect::to(&next)).into_response())
        }
        Err(Error::Login(refusal)) => {
            let page = LoginPage {
                error: sentence(&refusal.message()),
                username: form.username,
                next,
            };
            let mut response = render(&page);
            match refusal.retry_after() {
                Some(wait) => {
                    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, retry_after_secs(wait).into());
                }
                None => *response.status_mut() = StatusCode::UNAUTHORIZED,
            }
            Ok(response)
        }
        Err(other) => Err(other.into()),
    }
}

/// A message as a sentence on a page: capitalised, with a full stop.
fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    let first = chars.next().map(|c| c.to_uppercase().to_string()).unwrap_or_default();
    format!("{first}{}.", chars.as_str())
}

pub async fn logout(State(state): State<AppState>, session: Session, jar: CookieJar) -> Result<Response, PageError> {
    state.dispatcher.logout(&session.actor(), &session.cookie).await?;
    // The removal keeps the cookie's attributes (Secure under TLS), as browsers require.
    let jar = jar.remove(session_cookie(String::new(), state.tls));
    Ok((jar, HxRedirect(Url::LOGIN.to_string()), StatusCode::OK).into_response())
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
    state.dispatcher.pick_region(&session.cookie, &form.region_id).await?;
    Ok((HxRefresh(true), StatusCode::OK).into_response())
}
