//! Users (admin: create, change role, disable, reset password, switch Basic auth) and Account
//! (anyone: change one's own password, API tokens, AccessKey pairs for the ECS API).

use super::{ConsoleForm, Layout, PageError, Session, Url, When, render};
use crate::dispatch::{ACCESS_KEYS_PER_USER, Error, Field, UserChange, check};
use crate::server::AppState;
use crate::store::UserRow;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
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

/// An AccessKey as the Account page lists it.
pub struct AccessKeyView {
    pub id: String,
    pub description: String,
    pub enabled: bool,
    pub created: When,
    pub last_used: Option<When>,
}

/// An AccessKey pair just created: its secret is shown this once.
pub struct NewAccessKey {
    pub id: String,
    pub secret: String,
}

/// What the request just created that is shown only now.
#[derive(Default)]
struct Created {
    /// An API token's secret.
    token: String,
    access_key: Option<NewAccessKey>,
}

#[derive(Template)]
#[template(path = "users/account.html")]
struct AccountPage {
    layout: Layout,
    tokens: Vec<TokenView>,
    /// The secret of a token just created: shown once.
    new_token: String,
    access_keys: Vec<AccessKeyView>,
    /// The AccessKey pair just created, with its secret: shown once.
    new_access_key: Option<NewAccessKey>,
    /// Most AccessKey pairs an account may hold.
    access_key_limit: u64,
    notice: String,
    error: String,
}

async fn account_page(
    state: &AppState,
    session: &Session,
    created: Created,
    outcome: Result<String, Error>,
) -> Result<Response, PageError> {
    let (notice, error) = match outcome {
        Ok(notice) => (notice, String::new()),
        Err(e @ (Error::Invalid { .. } | Error::Login(_) | Error::Quota { .. })) => {
            (String::new(), PageError::from(e).message().to_string())
        }
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
    let access_keys = state
        .dispatcher
        .list_access_keys(&session.actor())
        .await?
        .into_iter()
        .map(|k| AccessKeyView {
            id: k.id,
            description: k.description,
            enabled: k.enabled,
            created: When::new(k.created_at),
            last_used: k.last_used_at.map(When::new),
        })
        .collect();
    let layout = session.layout(state.store.regions().await?, "account");
    Ok(render(&AccountPage {
        layout,
        tokens,
        new_token: created.token,
        access_keys,
        new_access_key: created.access_key,
        access_key_limit: ACCESS_KEYS_PER_USER,
        notice,
        error,
    }))
}

pub async fn account(State(state): State<AppState>, session: Session) -> Result<Response, PageError> {
    account_page(&state, &session, Created::default(), Ok(String::new())).await
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
        Err(e) => account_page(&state, &session, Created::default(), Err(e)).await,
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
        Ok((_, secret)) => {
            let created = Created {
                token: secret,
                ..Created::default()
            };
            account_page(&state, &session, created, Ok(String::new())).await
        }
        Err(e) => account_page(&state, &session, Created::default(), Err(e)).await,
    }
}

pub async fn revoke_token(
    State(state): State<AppState>,
    session: Session,
    Path(token_id): Path<String>,
) -> Result<Response, PageError> {
    state.dispatcher.revoke_token(&session.actor(), &token_id).await?;
    account_page(&state, &session, Created::default(), Ok("Token revoked.".into())).await
}

#[derive(Debug, Deserialize)]
pub struct AccessKeyForm {
    #[serde(default)]
    description: String,
}

pub async fn create_access_key(
    State(state): State<AppState>,
    session: Session,
    ConsoleForm(form): ConsoleForm<AccessKeyForm>,
) -> Result<Response, PageError> {
    let created = state
        .dispatcher
        .create_access_key(&session.actor(), Some(form.description))
        .await;
    match created {
        Ok((row, secret)) => {
            let created = Created {
                access_key: Some(NewAccessKey { id: row.id, secret }),
                ..Created::default()
            };
            let page = account_page(&state, &session, created, Ok(String::new())).await?;
            // The one page holding the secret: no cache along the way may keep a copy.
            Ok(([(header::CACHE_CONTROL, "no-store")], page).into_response())
        }
        Err(e) => account_page(&state, &session, Created::default(), Err(e)).await,
    }
}

#[derive(Debug, Deserialize)]
pub struct AccessKeyStatusForm {
    enabled: bool,
}

pub async fn access_key_status(
    State(state): State<AppState>,
    session: Session,
    Path(access_key_id): Path<String>,
    ConsoleForm(form): ConsoleForm<AccessKeyStatusForm>,
) -> Result<Response, PageError> {
    let row = state
        .dispatcher
        .set_access_key_enabled(&session.actor(), &access_key_id, form.enabled)
        .await?;
    let notice = if row.enabled {
        format!("AccessKey {} enabled.", row.id)
    } else {
        format!("AccessKey {} disabled: requests it signs are refused.", row.id)
    };
    account_page(&state, &session, Created::default(), Ok(notice)).await
}

pub async fn delete_access_key(
    State(state): State<AppState>,
    session: Session,
    Path(access_key_id): Path<String>,
) -> Result<Response, PageError> {
    state
        .dispatcher
        .delete_access_key(&session.actor(), &access_key_id)
        .await?;
    let notice = format!("AccessKey {access_key_id} deleted.");
    account_page(&state, &session, Created::default(), Ok(notice)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(access_keys: Vec<AccessKeyView>, new_access_key: Option<NewAccessKey>) -> String {
        let layout = Layout {
            username: "ann".into(),
            role: "viewer",
            csrf: "csrf".into(),
            region: String::new(),
            regions: Vec::new(),
            active: "account",
        };
        AccountPage {
            layout,
            tokens: Vec::new(),
            new_token: String::new(),
            access_keys,
            new_access_key,
            access_key_limit: ACCESS_KEYS_PER_USER,
            notice: String::new(),
            error: String::new(),
        }
        .render()
        .unwrap()
    }

    #[test]
    fn a_new_access_key_secret_is_shown_once_with_the_warning_and_descriptions_are_escaped() {
        let key = |id: &str, enabled| AccessKeyView {
            id: id.into(),
            description: "<script>alert(1)</script>".into(),
            enabled,
            created: When::new(0),
            last_used: None,
        };
        let created = NewAccessKey {
            id: "LTAIaaaaaaaaaaaaaaaaaaaa".into(),
            secret: "s3cretS3cretS3cretS3cretS3cre".into(),
        };

        let with_secret = page(vec![key("LTAIaaaaaaaaaaaaaaaaaaaa", true)], Some(created));
        let listed = page(
            vec![
                key("LTAIaaaaaaaaaaaaaaaaaaaa", true),
                key("LTAIbbbbbbbbbbbbbbbbbbbb", false),
            ],
            None,
        );

        assert!(with_secret.contains("AccessKey Secret — copy it now; it is not shown again."));
        assert!(with_secret.contains("s3cretS3cretS3cretS3cretS3cre"));
        assert!(!listed.contains("copy it now"));
        assert!(
            !listed.contains("<script>alert(1)</script>"),
            "descriptions are escaped"
        );
        assert!(listed.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
        assert!(listed.contains("/console/account/access-keys/LTAIaaaaaaaaaaaaaaaaaaaa/status"));
        assert!(listed.contains(">Disable</button>") && listed.contains(">Enable</button>"));
        assert!(listed.contains(">Enabled</span>") && listed.contains(">Disabled</span>"));
        assert!(listed.contains("you have 2"));
    }
}
