//! The two routes agents call: enrolment with an activation code, and the one WebSocket each
//! agent holds (DESIGN.md §5). The socket is split into a writer (queued messages and
//! heartbeats) and a reader that hands every frame to the dispatcher.

use super::AppState;
use super::auth::PeerIp;
use super::error::{ApiError, ApiJson};
use crate::dispatch::{Actor, Busy, Outbound, Outbox};
use crate::protocol::PROTOCOL_VERSIONS;
use crate::protocol::agent::{AgentMessage, Frame, MAX_FRAME_BYTES, Output, Refused, ServerMessage};
use crate::protocol::api::{RegisterRequest, RegisterResponse};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;

/// Most queued messages written to an agent before a flush.
const FLUSH_EVERY: usize = 64;

/// How long a new connection may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /agent/v1/register`: enrols an instance with an activation code.
pub async fn register(
    State(state): State<AppState>,
    PeerIp(source_ip): PeerIp,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, ApiJson<RegisterResponse>), ApiError> {
    let (instance, secret) = state.dispatcher.register(&Actor::agent(&source_ip), req).await?;
    let registered = RegisterResponse {
        instance_id: instance.id,
        instance_secret: secret,
    };
    Ok((StatusCode::CREATED, ApiJson(registered)))
}

/// `GET /agent/v1/connect`: the agent's WebSocket, authenticated at the upgrade with
/// `Authorization: Bearer <instance id>:<instance secret>`. While too many agents are being
/// attached already (a fleet coming back after a restart), 503 with `Retry-After`.
pub async fn connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // First, so that a storm is turned away before each connection costs a credential check.
    state.dispatcher.admit_agent().map_err(busy)?;
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let Some(instance_id) = state.dispatcher.authenticate_agent(credential).await? else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidInstanceCredential",
            "the instance credential is unknown or revoked: the instance may have been deregistered; enrol again with a new activation",
        ));
    };
    // tungstenite reads through a buffer of this size allocated per connection (128 KiB by
    // default): 8 KiB keeps 10,000 idle agents in tens, not thousands, of megabytes.
    Ok(ws
        .read_buffer_size(8 * 1024)
        // Frames queued together are written together, at the flush.
        .write_buffer_size(16 * 1024)
        .max_frame_size(MAX_FRAME_BYTES)
        .max_message_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| run(socket, state, instance_id)))
}

fn busy(busy: Busy) -> ApiError {
    let secs = busy.retry_after.as_secs().max(1);
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServerBusy",
        format!("the server is attaching many agents at once; try again in {secs} s"),
    );
    error.retry_after = Some(secs);
    error
}

fn text(message: ServerMessage) -> Message {
    match message.to_frame() {
        Frame::Text(text) => Message::Text(text.into()),
        Frame::Binary(bytes) => Message::Binary(bytes.into()),
    }
}

/// Answers an incompatible or malformed `Hello` with the reason, and closes.
async fn refuse(mut sink: SplitSink<WebSocket, Message>, instance_id: &str, reason: String) {
    tracing::warn!(%instance_id, %reason, "refused an agent");
    let _ = sink.send(text(Refused { reason }.into())).await;
    let _ = sink.close().await;
}

/// Drives one agent connection until it closes, the agent is replaced or the server stops.
async fn run(socket: WebSocket, state: AppState, instance_id: String) {
    let (mut sink, mut stream) = socket.split();
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(frame)))) => AgentMessage::decode(&frame),
        _ => return,
    };
    let (hello, version) = match hello {
        Ok(AgentMessage::Hello(hello)) => match (hello.negotiate(), hello.check()) {
            (Some(version), Ok(())) => (hello, version),
            (None, _) => {
                let reason = format!(
                    "agent protocol version {} is not supported; this server speaks versions {PROTOCOL_VERSIONS:?}: install a matching agent",
                    hello.protocol_version
                );
                return refuse(sink, &instance_id, reason).await;
            }
            (_, Err(reason)) => {
                return refuse(sink, &instance_id, format!("the Hello was refused: {reason}")).await;
            }
        },
        _ => {
            tracing::warn!(%instance_id, "agent connection did not start with Hello");
            return;
        }
    };
    let dispatcher = state.dispatcher.clone();
    let (mut session, outbox) = match dispatcher.attach(&instance_id, &hello, version).await {
        Ok(attached) => attached,
        Err(e) => {
            tracing::warn!(%instance_id, error = %e, "could not attach an agent");
            return;
        }
    };
    tracing::info!(%instance_id, version = %hello.agent_version, protocol = version, "agent connected");
    let heartbeat = dispatcher.settings().heartbeat;

    let Outbox { rx: mut out_rx, close } = outbox;
    let writer = async move {
        let closing = |reason: &str| {
            Message::Close(Some(CloseFrame {
                code: 1000,
                reason: reason.into(),
            }))
        };
        let mut tick = tokio::time::interval(heartbeat);
        tick.tick().await;
        loop {
            let first = tokio::select! {
                _ = close.cancelled() => {
                    let _ = sink.send(closing("closed by the server (replaced, deregistered or not reading)")).await;
                    return;
                }
                out = out_rx.recv() => match out {
                    Some(out) => out,
                    None => return,
                },
                _ = tick.tick() => Outbound::Message(ServerMessage::Heartbeat),
            };
            // Everything already queued goes out with one flush (one system call).
            let mut next = Some(first);
            let mut queued = 0;
            while let Some(out) = next.take() {
                match out {
                    Outbound::Message(message) => {
                        if sink.feed(text(message)).await.is_err() {
                            return;
                        }
                    }
                    Outbound::Close(reason) => {
                        let _ = sink.send(closing(reason)).await;
                        return;
                    }
                }
                queued += 1;
                if queued < FLUSH_EVERY {
                    next = out_rx.try_recv().ok();
                }
            }
            if sink.flush().await.is_err() {
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
                // Output under protocol version 2: a header and the raw bytes, decoded in place.
                Message::Binary(frame) if version >= 2 => Output::decode_binary(frame).map(AgentMessage::Output),
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
