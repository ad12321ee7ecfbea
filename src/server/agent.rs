//! The two routes agents call: enrolment with an activation code, and the one WebSocket each
//! agent holds (DESIGN.md §5). The socket is split into a writer (queued messages and
//! heartbeats) and a reader that hands every frame to the dispatcher.

use super::AppState;
use super::auth::PeerIp;
use super::error::{ApiError, ApiJson};
use crate::dispatch::Outbound;
use crate::protocol::agent::{AgentMessage, MAX_FRAME_BYTES, Refused, ServerMessage};
use crate::protocol::api::{RegisterRequest, RegisterResponse};
use crate::protocol::{CommandType, OsType, PROTOCOL_VERSION};
use crate::store::{self, NewAudit, NewInstance, RegisterRefusal, ids};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;

/// How long a new connection may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

fn check_field(field: &'static str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "InvalidParameter.Register",
            format!("`{field}` must be at most {max} characters without control characters"),
        ));
    }
    Ok(())
}

/// `POST /agent/v1/register`: enrols an instance with an activation code.
pub async fn register(
    State(state): State<AppState>,
    PeerIp(source_ip): PeerIp,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, ApiJson<RegisterResponse>), ApiError> {
    check_field("hostname", &req.hostname, 255)?;
    check_field("os_name", &req.os_name, 255)?;
    check_field("agent_version", &req.agent_version, 64)?;
    let name = req.name.clone().unwrap_or_default();
    check_field("name", &name, 128)?;
    if req.ip_addresses.len() > 64
        || req
            .ip_addresses
            .iter()
            .any(|ip| ip.parse::<std::net::IpAddr>().is_err())
    {
        return Err(ApiError::bad_request(
            "InvalidParameter.Register",
            "`ip_addresses` must be at most 64 IP addresses",
        ));
    }
    let secret = ids::new_secret();
    let supported = match req.os_type {
        OsType::Linux => vec![CommandType::RunShellScript],
        OsType::Windows => vec![CommandType::RunBatScript, CommandType::RunPowerShellScript],
    };
    let new = NewInstance {
        name,
        hostname: req.hostname,
        os_type: req.os_type,
        os_name: req.os_name,
        ip_addresses: req.ip_addresses,
        agent_version: req.agent_version,
        supported_command_types: supported,
        secret_hash: ids::hash_secret(&secret),
    };
    let code_hash = ids::hash_secret(&req.activation_code);
    let instance = state
        .store
        .register_instance(&req.activation_id, &code_hash, &new)
        .await
        .map_err(|e| match e {
            store::Error::Register(refusal) => {
                // Never the code: logs are read by more people than activations are.
                tracing::warn!(activation_id = ?req.activation_id, %source_ip, reason = %refusal, "refused an enrolment");
                refusal_error(&req.activation_id, refusal)
            }
            other => other.into(),
        })?;
    let audit = NewAudit {
        username: "agent",
        source_ip: &source_ip,
        action: "RegisterInstance",
        target: &instance.id,
        detail: &format!("activation {} region {}", req.activation_id, instance.region_id),
    };
    if let Err(e) = state.store.audit(audit).await {
        tracing::warn!(error = %e, "could not record an audit entry");
    }
    Ok((
        StatusCode::CREATED,
        ApiJson(RegisterResponse {
            instance_id: instance.id,
            instance_secret: secret,
        }),
    ))
}

fn refusal_error(activation_id: &str, refusal: RegisterRefusal) -> ApiError {
    let (status, code, advice) = match refusal {
        RegisterRefusal::BadCode => (
            StatusCode::UNAUTHORIZED,
            "InvalidActivation.Code",
            "copy both from the activation you created",
        ),
        RegisterRefusal::Expired => (
            StatusCode::FORBIDDEN,
            "InvalidActivation.Expired",
            "create a new activation",
        ),
        RegisterRefusal::Disabled => (
            StatusCode::FORBIDDEN,
            "InvalidActivation.Disabled",
            "create a new activation",
        ),
        RegisterRefusal::UsedUp => (
            StatusCode::FORBIDDEN,
            "InvalidActivation.LimitExceeded",
            "create a new activation for more instances",
        ),
    };
    ApiError::new(
        status,
        code,
        format!("enrolment refused by activation {activation_id:?}: {refusal}; {advice}"),
    )
}

/// `GET /agent/v1/connect`: the agent's WebSocket, authenticated at the upgrade with
/// `Authorization: Bearer <instance id>:<instance secret>`.
pub async fn connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let instance_id = authenticate(&state, &headers).await?;
    // tungstenite reads through a buffer of this size allocated per connection (128 KiB by
    // default): 8 KiB keeps 10,000 idle agents in tens, not thousands, of megabytes.
    Ok(ws
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_frame_size(MAX_FRAME_BYTES)
        .max_message_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| run(socket, state, instance_id)))
}

async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let refused = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidInstanceCredential",
            "the instance credential is unknown or revoked: the instance may have been deregistered; enrol again with a new activation",
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (instance_id, secret) = value
        .strip_prefix("Bearer ")
        .and_then(|v| v.split_once(':'))
        .ok_or_else(refused)?;
    let stored = state
        .store
        .instance_secret_hash(instance_id)
        .await?
        .ok_or_else(refused)?;
    if !constant_time_eq(stored.as_bytes(), ids::hash_secret(secret).as_bytes()) {
        return Err(refused());
    }
    Ok(instance_id.to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(message: ServerMessage) -> Message {
    Message::Text(message.encode().into())
}

/// Drives one agent connection until it closes, the agent is replaced or the server stops.
async fn run(socket: WebSocket, state: AppState, instance_id: String) {
    let (mut sink, mut stream) = socket.split();
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(frame)))) => AgentMessage::decode(&frame),
        _ => return,
    };
    let hello = match hello {
        Ok(AgentMessage::Hello(hello)) if hello.protocol_version == PROTOCOL_VERSION => match hello.check() {
            Ok(()) => hello,
            Err(reason) => {
                tracing::warn!(%instance_id, %reason, "refused an agent's Hello");
                let reason = format!("the Hello was refused: {reason}");
                let _ = sink.send(text(Refused { reason }.into())).await;
                let _ = sink.close().await;
                return;
            }
        },
        Ok(AgentMessage::Hello(hello)) => {
            let reason = format!(
                "agent protocol version {} is not supported; this server speaks version {PROTOCOL_VERSION}: install a matching agent",
                hello.protocol_version
            );
            tracing::warn!(%instance_id, %reason, "refused an agent");
            let _ = sink.send(text(Refused { reason }.into())).await;
            let _ = sink.close().await;
            return;
        }
        _ => {
            tracing::warn!(%instance_id, "agent connection did not start with Hello");
            return;
        }
    };
    let dispatcher = state.dispatcher.clone();
    let (mut session, mut out_rx) = match dispatcher.attach(&instance_id, &hello).await {
        Ok(attached) => attached,
        Err(e) => {
            tracing::warn!(%instance_id, error = %e, "could not attach an agent");
            return;
        }
    };
    tracing::info!(%instance_id, version = %hello.agent_version, "agent connected");
    let heartbeat = dispatcher.settings().heartbeat;

    let writer = async move {
        let mut tick = tokio::time::interval(heartbeat);
        tick.tick().await;
        loop {
            let frame = tokio::select! {
                out = out_rx.recv() => match out {
                    Some(Outbound::Message(message)) => text(message),
                    Some(Outbound::Close(reason)) => {
                        let _ = sink.send(Message::Close(Some(CloseFrame { code: 1000, reason: reason.into() }))).await;
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => text(ServerMessage::Heartbeat),
            };
            if sink.send(frame).await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        let silence = dispatcher.settings().heartbeat_loss();
        loop {
            let frame = match tokio::time::timeout(silence, stream.next()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(_) => return,
                Err(_) => {
                    tracing::info!(%instance_id, "agent silent for three heartbeats; closing");
                    return;
                }
            };
            let message = match frame {
                Message::Text(text) => AgentMessage::decode(&text),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Binary(_) | Message::Close(_) => return,
            };
            let outcome = match message {
                Ok(message) => dispatcher
                    .handle(&mut session, message)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(reason) = outcome {
                tracing::warn!(%instance_id, %reason, "closing agent connection");
                return;
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = state.shutdown.cancelled() => {}
    }
    tracing::info!(%instance_id, "agent disconnected");
    dispatcher.detach(session).await;
}
