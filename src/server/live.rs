//! `GET /api/v1/invocations/{invoke_id}/stream`: a WebSocket of JSON `StreamEvent`s. A watcher
//! first gets what is stored (statuses and kept output), then live events, with no gap and no
//! repeat: it subscribes before reading the store, and skips live bytes it already has by
//! their offset.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiQuery};
use crate::protocol::InvocationStatus;
use crate::protocol::api::StreamEvent;
use crate::store;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use std::collections::HashMap;
use tokio::sync::broadcast::error::RecvError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Only this instance's events.
    instance_id: Option<String>,
}

pub async fn stream(
    _: Caller,
    State(state): State<AppState>,
    Path(invoke_id): Path<String>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    state
        .store
        .invocation(&invoke_id)
        .await
        .map_err(|e| match e {
            store::Error::NotFound => ApiError::not_found("invocation", &invoke_id),
            other => other.into(),
        })?;
    Ok(ws.on_upgrade(move |socket| async move {
        let mut watch = Watch {
            socket,
            state,
            invoke_id,
            only: query.instance_id,
            sent: HashMap::new(),
        };
        if let Err(e) = watch.run().await {
            tracing::debug!(error = %e, "live stream ended");
        }
    }))
}

struct Watch {
    socket: WebSocket,
    state: AppState,
    invoke_id: String,
    only: Option<String>,
    /// Per instance, the output offset up to which the watcher has everything.
    sent: HashMap<String, u64>,
}

impl Watch {
    async fn run(&mut self) -> anyhow::Result<()> {
        let mut rx = self.state.dispatcher.watch(&self.invoke_id);
        if self.replay().await? {
            return Ok(());
        }
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Ok(event) => if self.forward(&event).await? { return Ok(()) },
                    Err(RecvError::Lagged(_)) => if self.replay().await? { return Ok(()) },
                    Err(RecvError::Closed) => return Ok(()),
                },
                incoming = self.socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                    Some(Ok(_)) => {}
                },
                _ = self.state.shutdown.cancelled() => return Ok(()),
            }
        }
    }

    fn wanted(&self, instance_id: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == instance_id)
    }

    /// Sends what is stored past what was sent. Returns true when the invocation is done.
    async fn replay(&mut self) -> anyhow::Result<bool> {
        let store = self.state.store.clone();
        let invocation = store.invocation(&self.invoke_id).await?;
        for result in store.results(&self.invoke_id).await? {
            if !self.wanted(&result.instance_id) {
                continue;
            }
            let from = self.sent.get(&result.instance_id).copied().unwrap_or(0);
            for chunk in store.output_chunks(result.id, from).await? {
                let event = StreamEvent::Output {
                    instance_id: result.instance_id.clone(),
                    seq: None,
                    offset: chunk.offset,
                    stream: chunk.stream,
                    data: Bytes::from(chunk.data),
                };
                self.forward(&event).await?;
            }
            let status = StreamEvent::Status {
                instance_id: result.instance_id,
                invocation_status: result.status,
                exit_code: result.exit_code,
                error_code: result.error_code,
            };
            self.send(&status).await?;
        }
        let status = InvocationStatus::from_counts(invocation.counts);
        if status.is_terminal() {
            self.send(&StreamEvent::Done {
                invocation_status: status,
            })
            .await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Sends an event, trimming output already sent. Returns true after `Done`.
    async fn forward(&mut self, event: &StreamEvent) -> anyhow::Result<bool> {
        match event {
            StreamEvent::Output {
                instance_id,
                seq,
                offset,
                stream,
                data,
            } => {
                if !self.wanted(instance_id) {
                    return Ok(false);
                }
                let sent = self.sent.entry(instance_id.clone()).or_insert(0);
                let end = offset + data.len() as u64;
                if end <= *sent {
                    return Ok(false);
                }
                let skip = sent.saturating_sub(*offset) as usize;
                *sent = end;
                let event = StreamEvent::Output {
                    instance_id: instance_id.clone(),
                    seq: *seq,
                    offset: offset + skip as u64,
                    stream: *stream,
                    data: data.slice(skip..),
                };
                self.send(&event).await?;
                Ok(false)
            }
            StreamEvent::Status { instance_id, .. } => {
                if self.wanted(instance_id) {
                    self.send(event).await?;
                }
                Ok(false)
            }
            StreamEvent::Done { .. } => {
                self.send(event).await?;
                Ok(true)
            }
        }
    }

    async fn send(&mut self, event: &StreamEvent) -> anyhow::Result<()> {
        let text = serde_json::to_string(event)?;
        self.socket.send(Message::Text(text.into())).await?;
        Ok(())
    }
}
