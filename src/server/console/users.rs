//! Users (admin: create, change role, disable, reset password, switch Basic auth) and Account
//! (anyone: change one's own password, API tokens).

use super::{ConsoleForm, Layout, PageError, Session, render, when};
use crate::server::AppState;
use crate::server::api::users::{check_password, check_username, hash, parse_role};
use crate::server::auth::verify_password;
use crate::store::{self, AccountRow, Role, UserUpdate, ids, now_ms};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;

#[derive(Template)]
#[template(path = "users/index.html")]
struct UsersPage {
    layout: Layout,
    users: Vec<(String, AccountRow)>,
    basic_auth: bool,
    notice: String,
    error: String,
}

async fn users_page(state: &AppState, session: &Session, notice: String, error: String) -> Result<Response, PageError> {
    let users = state
        .store
        .list_users()
        .await?
        .into_iter()
        .map(|u| (when(u.created_at), u))
        .collect();
    let layout = session.layout(state.store.regions().await?, "users");
    let page = UsersPage {
        layout,
        users,
        basic_auth: state.basic_auth_enabled(),
        notice,
        error,
    };
    Ok(render(&page))
}

pub async fn index(State(state): State<AppState>, session: Session) -> Result<Response, PageError> {
    session.require(Role::Admin)?;
    users_page(&state, &session, String::new(), String::new()).await
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
    session.require(Role::Admin)?;
    let checked = check_username(&form.username)
        .and_then(|_| check_password(&form.username, &form.password))
        .and_then(|_| parse_role(&form.role));
    let role = match checked {
        Ok(role) => role,
        Err(e) => return users_page(&state, &session, String::new(), e.message).await,
    };
    let hashed = hash(form.password).await?;
    match state.store.create_user(&form.username, &hashed, role).await {
        Ok(_) => {
            state
                .audit(&session.caller(), "CreateUser", &form.username, role.as_str())
                .await;
            users_page(
                &state,
                &session,
                format!("User {} created.", form.username),
                String::new(),
            )
            .await
        }
        Err(store::Error::Conflict) => {
            users_page(
                &state,
                &session,
                String::new(),
                format!("User {} exists already.", form.username),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
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
    session.require(Role::Admin)?;
    let role = match form.role.as_deref().map(parse_role).transpose() {
        Ok(role) => role,
        Err(e) => return users_page(&state, &session, String::new(), e.message).await,
    };
    let password_hash = match form.password.filter(|p| !p.is_empty()) {
        Some(password) => match check_password(&username, &password) {
            Ok(()) => Some(hash(password).await?),
            Err(e) => return users_page(&state, &session, String::new(), e.message).await,
        },
        None => None,
    };
    let update = UserUpdate {
        role,
        disabled: form.disabled.map(|d| d == "true"),
        password_hash,
    };
    match state.store.update_user(&username, &update).await {
        Ok(_) => {
            state.forget_logins();
            state.audit(&session.caller(), "ModifyUser", &username, "").await;
            users_page(&state, &session, format!("User {username} changed."), String::new()).await
        }
        Err(store::Error::Conflict) => {
            let error = "That would leave no enabled admin: make another user admin first.".to_string();
            users_page(&state, &session, String::new(), error).await
        }
        Err(e) => Err(e.into()),
    }
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
    session.require(Role::Admin)?;
    let enabled = form.basic_auth == "on";
    state.set_basic_auth(enabled).await?;
    state
        .audit(
            &session.caller(),
            "ModifySettings",
            "server",
            if enabled { "basic auth on" } else { "basic auth off" },
        )
        .await;
    let notice = if enabled {
        "HTTP Basic is accepted on the API."
    } else {
        "HTTP Basic is switched off: the API takes tokens only."
    };
    users_page(&state, &session, notice.into(), String::new()).await
}

/// A token as the Account page lists it.
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub created: String,
    pub last_used: String,
    pub expires: String,
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
    notice: String,
    error: String,
) -> Result<Response, PageError> {
    let tokens = state
        .store
        .list_tokens(session.user.id)
        .await?
        .into_iter()
        .map(|t| TokenView {
            id: t.id,
            name: t.name,
            created: when(t.created_at),
            last_used: t.last_used_at.map(when).unwrap_or_else(|| "never".into()),
            expires: t.expires_at.map(when).unwrap_or_else(|| "never".into()),
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
    account_page(&state, &session, String::new(), String::new(), String::new()).await
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
    let hash_now = session.user.password_hash.clone();
    let current = form.current_password.clone();
    if !tokio::task::spawn_blocking(move || verify_password(&current, &hash_now))
        .await
        .unwrap_or(false)
    {
        return account_page(
            &state,
            &session,
            String::new(),
            String::new(),
            "The current password is wrong.".into(),
        )
        .await;
    }
    if let Err(e) = check_password(&session.user.username, &form.new_password) {
        return account_page(&state, &session, String::new(), String::new(), e.message).await;
    }
    let update = UserUpdate {
        password_hash: Some(hash(form.new_password).await?),
        ..Default::default()
    };
    state.store.update_user(&session.user.username, &update).await?;
    state.forget_logins();
    state
        .audit(&session.caller(), "ChangePassword", &session.user.username, "")
        .await;
    // Every session ended with the change, this one too: log in again.
    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert("hx-redirect", axum::http::HeaderValue::from_static("/login"));
    Ok(response)
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
    let name = form.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return account_page(
            &state,
            &session,
            String::new(),
            String::new(),
            "A token needs a name of 1 to 64 characters.".into(),
        )
        .await;
    }
    let expires_at = match form.expires_in_days.trim() {
        "" => None,
        days => match days.parse::<i64>() {
            Ok(d @ 1..=3650) => Some(now_ms() + d * 86_400_000),
            _ => {
                let error = "Expiry must be a number of days from 1 to 3650, or empty for none.".to_string();
                return account_page(&state, &session, String::new(), String::new(), error).await;
            }
        },
    };
    let secret = format!("frt_{}", ids::new_secret());
    let row = state
        .store
        .create_token(session.user.id, name, &ids::hash_secret(&secret), expires_at)
        .await?;
    state.audit(&session.caller(), "CreateToken", &row.id, name).await;
    account_page(&state, &session, secret, String::new(), String::new()).await
}

pub async fn revoke_token(
    State(state): State<AppState>,
    session: Session,
    Path(token_id): Path<String>,
) -> Result<Response, PageError> {
    state.store.revoke_token(session.user.id, &token_id).await?;
    state.audit(&session.caller(), "RevokeToken", &token_id, "").await;
    account_page(&state, &session, String::new(), "Token revoked.".into(), String::new()).await
}
