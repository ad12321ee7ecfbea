//! Users (admin: create, change role, disable, reset password, switch Basic auth) and Account
//! (anyone: change one's own password, API tokens).

use super::{ConsoleForm, Layout, PageError, Session, Url, When, render};
use crate::dispatch::{Error, Field, UserChange, check};
use crate::server::AppState;
use crate::store::UserRow;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum_htmx::HxRedirect;
use serde::Deserialize;

#[derive(Template)]
#[template(path = "users/index.html")]
struct UsersPage {
    layout: Layout,
    users: Vec<(When, UserRow)>,
    basic_auth: bool,
    notice: String,
    error: String,
}

/// The page again, with a notice or the refusal of what was asked.
async fn users_page(
    state: &AppState,
    session: &Session,
    outcome: Result<String, Error>,
) -> Result<Response, PageError> {
    let (notice, error) = match outcome {
        Ok(notice) => (notice, String::new()),
        Err(e @ (Error::Invalid { .. } | Error::Conflict { .. })) => (String::new(), e.to_string()),
        Err(e) => return Err(e.into()),
    };
    let users = state
        .dispatcher
        .list_users(&session.actor())
        .await?
        .into_iter()
        .map(|u| (When::new(u.created_at), u))
        .collect();
    let layout = session.layout(state.store.regions().await?, "users");
    Ok(render(&UsersPage {
        layout,
        users,
        basic_auth: state.dispatcher.basic_auth_setting(&session.actor())?,
        notice,
        error,
    }))
}

pub async fn index(State(state): State<AppState>, session: Session) -> Result<Response, PageError> {
    users_page(&state, &session, Ok(String::new())).await
}

#[derive(Debug, Deserialize)]
pub struct CreateForm {
    username: String,
    password: String,
    role: String,
}

pub async fn create(
    State(state): State<AppState>,
    session: Session,
    ConsoleForm(form): ConsoleForm<CreateForm>,
) -> Result<Response, PageError> {
    let outcome = state
        .dispatcher
        .create_user(&session.actor(), &form.username, &form.password, &form.role)
        .await
        .map(|user| format!("User {} created.", user.username));
    users_page(&state, &session, outcome).await
}

#[derive(Debug, Deserialize)]
pub struct ChangeForm {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    disabled: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

pub async fn change(
    State(state): State<AppState>,
    session: Session,
    Path(username): Path<String>,
    ConsoleForm(form): ConsoleForm<ChangeForm>,
) -> Result<Response, PageError> {
    let change = UserChange {
        role: form.role,
        disabled: form.disabled.map(|d| d == "true"),
        password: form.password.filter(|p| !p.is_empty()),
        current_password: None,
    };
    let outcome = state
        .dispatcher
        .modify_user(&session.actor(), &username, change)
        .await
        .map(|_| format!("User {username} changed."));
    users_page(&state, &session, outcome).await
}

#[derive(Debug, Deserialize)]
pub struct SettingsForm {
    basic_auth: String,
}

pub async fn settings(
    State(state): State<AppState>,
    session: Session,
    ConsoleForm(form): ConsoleForm<SettingsForm>,
) -> Result<Response, PageError> {
    let enabled = form.basic_auth == "on";
    let outcome = state
        .dispatcher
        .set_basic_auth(&session.actor(), enabled)
        .await
        .map(|()| {
            if enabled {
                "HTTP Basic is accepted on the API.".to_string()
            } else {
                "HTTP Basic is switched off: the API takes tokens only.".to_string()
            }
        });
    users_page(&state, &session, outcome).await
}

/// A token as the Account page lists it.
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub created: When,
    pub last_used: Option<When>,
    pub expires: Option<When>,
}

#[derive(Template)]
#[template(path = "users/account.html")]
struct AccountPage {
    layout: Layout,
    tokens: Vec<TokenView>,
    /// The secret of a token just created: shown once.
    new_token: String,
    notice: String,
    error: String,
}

async fn account_page(
    state: &AppState,
    session: &Session,
    new_token: String,
    outcome: Result<String, Error>,
) -> Result<Response, PageError> {
    let (notice, error) = match outcome {
        Ok(notice) => (notice, String::new()),
        Err(e @ (Error::Invalid { .. } | Error::Login(_))) => (String::new(), PageError::from(e).message().to_string()),
        Err(e) => return Err(e.into()),
    };
    let tokens = state
        .store
        .list_tokens(session.user.id)
        .await?
        .into_iter()
        .map(|t| TokenView {
            id: t.id,
            name: t.name,
            created: When::new(t.created_at),
            last_used: t.last_used_at.map(When::new),
            expires: t.expires_at.map(When::new),
        })
        .collect();
    let layout = session.layout(state.store.regions().await?, "account");
    Ok(render(&AccountPage {
        layout,
        tokens,
        new_token,
        notice,
        error,
    }))
}

pub async fn account(State(state): State<AppState>, session: Session) -> Result<Response, PageError> {
    account_page(&state, &session, String::new(), Ok(String::new())).await
}

#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    current_password: String,
    new_password: String,
}

pub async fn password(
    State(state): State<AppState>,
    session: Session,
    ConsoleForm(form): ConsoleForm<PasswordForm>,
) -> Result<Response, PageError> {
    let changed = state
        .dispatcher
        .change_password(&session.actor(), &form.current_password, &form.new_password)
        .await;
    match changed {
        // Every session ended with the change, this one too: log in again.
        Ok(_) => Ok((HxRedirect(Url::LOGIN.to_string()), StatusCode::OK).into_response()),
        Err(e) => account_page(&state, &session, String::new(), Err(e)).await,
    }
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    name: String,
    #[serde(default)]
    expires_in_days: String,
}

pub async fn create_token(
    State(state): State<AppState>,
    session: Session,
    ConsoleForm(form): ConsoleForm<TokenForm>,
) -> Result<Response, PageError> {
    let days = match form.expires_in_days.trim() {
        "" => Ok(None),
        days => check::whole_number(Field::ExpiresInDays, days).map(Some),
    };
    let created = match days {
        Ok(days) => state.dispatcher.create_token(&session.actor(), &form.name, days).await,
        Err(e) => Err(e),
    };
    match created {
        Ok((_, secret)) => account_page(&state, &session, secret, Ok(String::new())).await,
        Err(e) => account_page(&state, &session, String::new(), Err(e)).await,
    }
}

pub async fn revoke_token(
    State(state): State<AppState>,
    session: Session,
    Path(token_id): Path<String>,
) -> Result<Response, PageError> {
    state.dispatcher.revoke_token(&session.actor(), &token_id).await?;
    account_page(&state, &session, String::new(), Ok("Token revoked.".into())).await
}
