//! Who is calling: passwords (argon2id), API tokens, HTTP Basic, and the `Caller` extractor
//! every API handler takes. Roles are checked with `Caller::require`.

use super::AppState;
use super::error::ApiError;
use crate::store::{Role, UserRow, ids};
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Hashes a password with argon2id (OWASP parameters: 19 MiB, 2 passes, 1 lane).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Checks a password against an argon2 PHC string.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    /// Peer address, for the audit log.
    pub source_ip: String,
}

impl Caller {
    /// Refuses with 403 unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "this needs the {} role and user {:?} has the {} role: ask an admin to change it",
                role.as_str(),
                self.username,
                self.role.as_str()
            ),
        ))
    }
}

/// Basic-auth passwords verified recently, so a script calling in a loop does not pay an
/// argon2 hash per request. Keyed by SHA-256 of `username NUL password`.
#[derive(Default)]
pub struct Logins {
    verified: Mutex<HashMap<[u8; 32], (UserRow, Instant)>>,
}

/// How long a verified Basic-auth password is trusted without hashing it again.
const LOGIN_CACHE_TTL: Duration = Duration::from_secs(300);

impl Logins {
    async fn verify(&self, state: &AppState, username: &str, password: &str) -> Result<Option<UserRow>, ApiError> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(username.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if let Some((user, at)) = self.lock().get(&key) {
            if at.elapsed() < LOGIN_CACHE_TTL {
                return Ok(Some(user.clone()));
            }
        }
        let Some(user) = state.store.user_by_name(username).await? else {
            return Ok(None);
        };
        let (password, hash) = (password.to_string(), user.password_hash.clone());
        // argon2 takes tens of milliseconds of CPU: keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(ApiError::internal)?;
        if !ok || user.disabled {
            return Ok(None);
        }
        let mut verified = self.lock();
        if verified.len() > 10_000 {
            verified.retain(|_, (_, at)| at.elapsed() < LOGIN_CACHE_TTL);
        }
        verified.insert(key, (user.clone(), Instant::now()));
        Ok(Some(user))
    }

    /// Forgets every verified password (after a password change or a disabled account).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (UserRow, Instant)>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The peer address of a request, or `unknown` when the server was not started with it.
pub fn source_ip(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The peer IP of a request, for the audit log; never rejects.
pub struct PeerIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerIp(source_ip(parts)))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "Unauthorized",
                "this needs credentials: send `Authorization: Bearer <api token>` or HTTP Basic username:password",
            ));
        };
        let value = value.to_str().unwrap_or_default();
        let user = if let Some(token) = value.strip_prefix("Bearer ") {
            state
                .store
                .user_by_token(&ids::hash_secret(token.trim()))
                .await?
                .ok_or_else(|| {
                    unauthorized(
                        "InvalidToken",
                        "the API token is unknown, revoked or expired: create a new one with POST /api/v1/tokens",
                    )
                })?
        } else if let Some(encoded) = value.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    unauthorized(
                        "InvalidCredentials",
                        "the Basic credentials are not valid Base64 of username:password",
                    )
                })?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                unauthorized(
                    "InvalidCredentials",
                    "the Basic credentials have no ':' between username and password",
                )
            })?;
            if !state.basic_auth_enabled() {
                return Err(unauthorized(
                    "BasicAuthDisabled",
                    "HTTP Basic is switched off on this server: send `Authorization: Bearer <api token>`",
                ));
            }
            let keys = super::throttle::keys(&source_ip(parts), username);
            if let Err(wait) = state.throttle.check(&keys) {
                let refusal = super::throttle::refusal(wait);
                let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Throttling.Login", refusal);
                error.retry_after = Some(wait.as_secs().max(1));
                return Err(error);
            }
            match state.logins.verify(state, username, password).await? {
                Some(user) => {
                    state.throttle.succeeded(&keys);
                    user
                }
                None => {
                    state.throttle.failed(&keys);
                    return Err(unauthorized("InvalidCredentials", "wrong username or password"));
                }
            }
        } else {
            return Err(unauthorized(
                "Unauthorized",
                "unsupported Authorization scheme: use Bearer or Basic",
            ));
        };
        Ok(Caller {
            user_id: user.id,
            username: user.username,
            role: user.role,
            source_ip: source_ip(parts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn roles_are_ordered() {
        let caller = |role| Caller {
            user_id: 1,
            username: "u".into(),
            role,
            source_ip: "x".into(),
        };
        assert!(caller(Role::Admin).require(Role::Operator).is_ok());
        assert!(caller(Role::Operator).require(Role::Operator).is_ok());
        assert_eq!(
            caller(Role::Viewer).require(Role::Operator).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }
}
