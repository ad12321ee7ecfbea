//! Who is calling the JSON API: the `Actor` extractor reads a bearer token or HTTP Basic and
//! asks the domain (`dispatch::accounts`), which holds the throttling and password rules.

use super::AppState;
use super::error::ApiError;
use crate::dispatch::{Actor, Via};
use crate::store::UserRow;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use base64::Engine as _;
use std::net::SocketAddr;

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

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The actor of an API request, from `Authorization: Bearer <token>` or HTTP Basic.
impl FromRequestParts<AppState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "Unauthorized",
                "this needs credentials: send `Authorization: Bearer <api token>` or HTTP Basic username:password",
            ));
        };
        let value = value.to_str().unwrap_or_default();
        let ip = source_ip(parts);
        let user: UserRow = if let Some(token) = value.strip_prefix("Bearer ") {
            state.dispatcher.authenticate_token(token).await?
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
            state.dispatcher.authenticate_basic(username, password, &ip).await?
        } else {
            return Err(unauthorized(
                "Unauthorized",
                "unsupported Authorization scheme: use Bearer or Basic",
            ));
        };
        Ok(Actor {
            user_id: user.id,
            username: user.username,
            role: user.role,
            source_ip: ip,
            via: Via::Api,
        })
    }
}
