//! Accounts (admin), one's own password, and server settings (admin).

use super::rfc3339;
use crate::protocol::api::{CreateUserRequest, ModifyUserRequest, ServerSettings, User, UsersResponse};
use crate::server::AppState;
use crate::server::auth::{Caller, hash_password, verify_password};
use crate::server::error::{ApiError, ApiJson, ApiPath};
use crate::store::{self, AccountRow, Role, UserUpdate};
use axum::extract::State;
use axum::http::StatusCode;

/// Shortest and longest password accepted.
pub const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 256;

/// Checks a new password: length, and not the username.
pub fn check_password(username: &str, password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&chars) {
        return Err(ApiError::bad_request(
            "InvalidParameter.Password",
            format!("a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters; a few random words make a good one"),
        ));
    }
    if password.eq_ignore_ascii_case(username) {
        return Err(ApiError::bad_request(
            "InvalidParameter.Password",
            "the password must not be the username",
        ));
    }
    Ok(())
}

/// Checks a username: 1–64 of lowercase letters, digits, `.`, `_`, `-`.
pub fn check_username(username: &str) -> Result<(), ApiError> {
    let valid = (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "InvalidParameter.Username",
            "a username is 1 to 64 lowercase letters, digits, '.', '_' or '-'",
        ))
    }
}

/// Parses a role name.
pub fn parse_role(role: &str) -> Result<Role, ApiError> {
    Role::parse(role).ok_or_else(|| {
        ApiError::bad_request(
            "InvalidParameter.Role",
            format!("role {role:?} is not one of admin, operator, viewer"),
        )
    })
}

fn user_dto(row: AccountRow) -> User {
    User {
        username: row.username,
        role: row.role.as_str().into(),
        disabled: row.disabled,
        created_time: rfc3339(row.created_at),
    }
}

fn last_admin() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "LastAdmin",
        "this is the last enabled admin: make another user admin first",
    )
}

/// Hashes a password off the async workers (argon2 takes tens of milliseconds).
pub async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(anyhow::anyhow!("password hashing failed: {e}")))
}

pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, ApiJson<User>), ApiError> {
    caller.require(Role::Admin)?;
    check_username(&req.username)?;
    check_password(&req.username, &req.password)?;
    let role = parse_role(&req.role)?;
    let hash = hash(req.password).await?;
    state
        .store
        .create_user(&req.username, &hash, role)
        .await
        .map_err(|e| match e {
            store::Error::Conflict => ApiError::new(
                StatusCode::CONFLICT,
                "UserExists",
                format!("user {:?} exists already", req.username),
            ),
            other => other.into(),
        })?;
    state.audit(&caller, "CreateUser", &req.username, role.as_str()).await;
    let user = User {
        username: req.username,
        role: role.as_str().into(),
        disabled: false,
        created_time: rfc3339(store::now_ms()),
    };
    Ok((StatusCode::CREATED, ApiJson(user)))
}

pub async fn list(caller: Caller, State(state): State<AppState>) -> Result<ApiJson<UsersResponse>, ApiError> {
    caller.require(Role::Admin)?;
    let users = state.store.list_users().await?.into_iter().map(user_dto).collect();
    Ok(ApiJson(UsersResponse { users }))
}

pub async fn modify(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(username): ApiPath<String>,
    ApiJson(req): ApiJson<ModifyUserRequest>,
) -> Result<ApiJson<User>, ApiError> {
    let own = caller.username == username;
    if caller.role < Role::Admin {
        // Anyone may change their own password, proving they know the current one.
        if !own || req.role.is_some() || req.disabled.is_some() || req.password.is_none() {
            caller.require(Role::Admin)?;
        }
        let current = req.current_password.clone().unwrap_or_default();
        let user = state
            .store
            .user_by_name(&username)
            .await?
            .ok_or_else(|| ApiError::not_found("user", &username))?;
        let hash = user.password_hash.clone();
        let matches = tokio::task::spawn_blocking(move || verify_password(&current, &hash))
            .await
            .unwrap_or(false);
        if !matches {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "InvalidCredentials",
                "the current password is wrong",
            ));
        }
    }
    let update = UserUpdate {
        role: req.role.as_deref().map(parse_role).transpose()?,
        disabled: req.disabled,
        password_hash: match req.password {
            Some(password) => {
                check_password(&username, &password)?;
                Some(hash(password).await?)
            }
            None => None,
        },
    };
    let user = state.store.update_user(&username, &update).await.map_err(|e| match e {
        store::Error::NotFound => ApiError::not_found("user", &username),
        store::Error::Conflict => last_admin(),
        other => other.into(),
    })?;
    // Verified Basic-auth passwords and the user's sessions no longer count.
    state.forget_logins();
    let detail = [
        update.role.map(|r| format!("role {}", r.as_str())),
        update
            .disabled
            .map(|d| if d { "disabled".into() } else { "enabled".into() }),
        update.password_hash.as_ref().map(|_| "password changed".into()),
    ];
    let detail: Vec<String> = detail.into_iter().flatten().collect();
    state.audit(&caller, "ModifyUser", &username, &detail.join(", ")).await;
    Ok(ApiJson(User {
        username: user.username,
        role: user.role.as_str().into(),
        disabled: user.disabled,
        created_time: String::new(),
    }))
}

pub async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    if caller.username == username {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "DeleteSelf",
            "you cannot delete your own account",
        ));
    }
    state.store.delete_user(&username).await.map_err(|e| match e {
        store::Error::NotFound => ApiError::not_found("user", &username),
        store::Error::Conflict => last_admin(),
        other => other.into(),
    })?;
    state.forget_logins();
    state.audit(&caller, "DeleteUser", &username, "").await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn settings(caller: Caller, State(state): State<AppState>) -> Result<ApiJson<ServerSettings>, ApiError> {
    caller.require(Role::Admin)?;
    Ok(ApiJson(ServerSettings {
        basic_auth_enabled: state.basic_auth_enabled(),
    }))
}

pub async fn modify_settings(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ServerSettings>,
) -> Result<ApiJson<ServerSettings>, ApiError> {
    caller.require(Role::Admin)?;
    state.set_basic_auth(req.basic_auth_enabled).await?;
    let detail = if req.basic_auth_enabled {
        "basic auth on"
    } else {
        "basic auth off"
    };
    state.audit(&caller, "ModifySettings", "server", detail).await;
    Ok(ApiJson(ServerSettings {
        basic_auth_enabled: state.basic_auth_enabled(),
    }))
}
