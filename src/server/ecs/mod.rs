//! The Alibaba Cloud ECS API (version 2014-05-26) on the console's listener, so the official
//! SDKs and scripts written for Cloud Assistant work against fleetrun by changing their endpoint
//! (research/ecs-api-compat.md, docs/ECS-API.md).
//!
//! A request to `/` that carries `Action`, an `x-acs-action` header or an ACS3 signature is an
//! ECS call; anything else at `/` is the console's. A call is authenticated by its AccessKey
//! signature ([`sign`]), checked for replay by the domain, and served by an action
//! ([`actions`]) that reads Alibaba's parameters, calls the same domain functions as the JSON API
//! and the console, and answers in Alibaba's shapes (`protocol::ecs`).

mod actions;
mod error;
mod params;
mod sign;

use super::AppState;
use super::auth::PeerIp;
use crate::dispatch::{AccessKeyLookup, Actor, Freshness, Via};
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
pub use error::EcsError;
use params::Params;
use sign::Signed;

/// Sends ECS calls to the ECS API and everything else on.
pub async fn route(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.uri().path() != "/" {
        return next.run(req).await;
    }
    let query = query_pairs(req.uri());
    let req = if is_ecs_call(req.headers(), &query) {
        req
    } else if is_form(req.headers()) && req.method() == Method::POST {
        // The Go SDK and the CLI may send `Action` in a form body only: read the body to know.
        let (parts, body) = req.into_parts();
        let Ok(bytes) = to_bytes(body, super::MAX_BODY_BYTES).await else {
            return (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
        };
        let is_call = url::form_urlencoded::parse(&bytes).any(|(k, _)| k == "Action");
        let req = Request::from_parts(parts, Body::from(bytes));
        if !is_call {
            return next.run(req).await;
        }
        req
    } else {
        return next.run(req).await;
    };
    let request_id = new_request_id();
    let action = action_of(query.iter(), req.headers()).unwrap_or_default();
    let result = call(&state, req, query).await;
    let (status, mut body) = match result {
        Ok(body) => (axum::http::StatusCode::OK, body),
        Err(e) => {
            if let Some(source) = &e.source {
                tracing::error!(request_id, action, error = ?source, "ECS call failed");
            } else {
                tracing::debug!(request_id, action, code = %e.code, "ECS call refused");
            }
            let body = serde_json::json!({
                "HostId": "fleetrun",
                "Code": e.code,
                "Message": e.message,
                "Recommend": "https://github.com/fleetrun/fleetrun/blob/main/docs/ECS-API.md",
            });
            (e.status, body)
        }
    };
    if let Some(object) = body.as_object_mut() {
        object.insert("RequestId".into(), request_id.into());
    }
    let mut response = (status, body.to_string()).into_response();
    response.extensions_mut().insert(super::metrics::Route::ECS);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    response
}

/// `Action` in the query, the V3 header, or a V3 signature.
fn is_ecs_call(headers: &HeaderMap, query: &[(String, String)]) -> bool {
    headers.contains_key("x-acs-action")
        || headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("ACS3-"))
        || query.iter().any(|(k, _)| k == "Action")
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// The action a request names: an `Action` parameter (V1, query or form) or the `x-acs-action`
/// header (V3).
fn action_of<'a>(mut params: impl Iterator<Item = &'a (String, String)>, headers: &HeaderMap) -> Option<String> {
    params
        .find(|(k, v)| k == "Action" && !v.is_empty())
        .map(|(_, v)| v.clone())
        .or_else(|| {
            headers
                .get("x-acs-action")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
}

/// The query's pairs, decoded as a form (`+` is a space: the Python Tea SDK encodes so).
fn query_pairs(uri: &axum::http::Uri) -> Vec<(String, String)> {
    let query = uri.query().unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// Alibaba's request ids look like `473469C7-AA6F-4DC5-B3DB-A3DC0DE3C83E`.
fn new_request_id() -> String {
    let hex: String = (0..16).map(|_| format!("{:02X}", rand::random::<u8>())).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Authenticates the call and runs its action.
async fn call(state: &AppState, req: Request, query: Vec<(String, String)>) -> Result<serde_json::Value, EcsError> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::GET && parts.method != Method::POST {
        return Err(EcsError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "UnsupportedHTTPMethod",
            "ECS API calls are GET or POST",
        ));
    }
    let body = to_bytes(Body::new(body), super::MAX_BODY_BYTES).await.map_err(|_| {
        EcsError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "InvalidParameter.Body",
            format!("the request body is larger than {} bytes", super::MAX_BODY_BYTES),
        )
    })?;
    let form: Vec<(String, String)> = if is_form(&parts.headers) {
        url::form_urlencoded::parse(&body).into_owned().collect()
    } else {
        Vec::new()
    };
    let signed = Signed {
        method: parts.method.as_str(),
        query: &query,
        form: &form,
        headers: &parts.headers,
        body: &body,
    };
    let actor = authenticate(state, &signed, PeerIp::of(&parts, state)).await?;

    let action = action_of(query.iter().chain(&form), &parts.headers).ok_or_else(|| EcsError::missing("Action"))?;
    let params = Params::new(query.iter().chain(&form));
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let call = actions::Call { state, actor, host };
    actions::run(&action, call, params).await
}

/// Who signed the request, once the signature verifies and the request is fresh.
async fn authenticate(state: &AppState, signed: &Signed<'_>, peer: PeerIp) -> Result<Actor, EcsError> {
    let claim = sign::claim(signed)?;
    let dispatcher = &state.dispatcher;
    let (user, secret) = match dispatcher.access_key(&claim.access_key_id).await? {
        AccessKeyLookup::Found { user, secret } => (user, secret),
        AccessKeyLookup::NotFound => {
            return Err(EcsError::new(
                axum::http::StatusCode::NOT_FOUND,
                "InvalidAccessKeyId.NotFound",
                "Specified access key is not found.",
            ));
        }
        AccessKeyLookup::Disabled => {
            return Err(EcsError::bad_request(
                "InvalidAccessKeyId.Inactive",
                "Specified access key is disabled (or its user is): enable it under Account → AccessKeys.",
            ));
        }
    };
    sign::verify(&claim, signed, &secret)?;
    let signed_at = DateTime::parse_from_rfc3339(&claim.timestamp)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            EcsError::bad_request(
                "InvalidTimeStamp.Format",
                format!(
                    "the signing time {:?} is not in the format yyyy-MM-ddTHH:mm:ssZ (UTC)",
                    claim.timestamp
                ),
            )
        })?;
    match dispatcher
        .check_freshness(&claim.access_key_id, &claim.nonce, signed_at)
        .await?
    {
        Freshness::Fresh => {}
        Freshness::Expired => {
            return Err(EcsError::bad_request(
                "InvalidTimeStamp.Expired",
                format!(
                    "Specified time stamp or date value is expired: {} is more than 15 minutes from the server's time",
                    claim.timestamp
                ),
            ));
        }
        Freshness::NonceUsed => {
            return Err(EcsError::bad_request(
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            ));
        }
        Freshness::BadNonce => {
            return Err(EcsError::invalid("SignatureNonce", "must be 1 to 128 characters"));
        }
    }
    if let Err(e) = dispatcher.access_key_used(&claim.access_key_id).await {
        tracing::warn!(error = %e, "could not record an access key's use");
    }
    Ok(Actor {
        user_id: user.id,
        username: user.username,
        role: user.role,
        source_ip: peer.0,
        via: Via::Ecs,
    })
}
