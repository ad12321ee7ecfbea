//! Live sockets of an invocation: `GET /api/v1/invocations/{id}/stream` (JSON `StreamEvent`s)
//! and the console's `…/live` (HTML fragments for htmx). A watcher first gets what is stored
//! (statuses and kept output), then live events, with no gap and no repeat: it subscribes before
//! reading the store, and skips live bytes it already has by their offset.

use super::AppState;
use super::console::OutputRenderer;
use super::console::records as html;
use super::error::{ApiError, ApiPath, ApiQuery};
use crate::dispatch::watch::Live;
use crate::dispatch::{Actor, Kind, error::not_found};
use crate::protocol::api::StreamEvent;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use futures_util::SinkExt;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Results whose stored output one replay query reads (each keeps at most the output limit).
const REPLAY_BATCH: usize = 64;

/// Most events written to a watcher before a flush.
const FLUSH_EVERY: usize = 256;

/// Largest frame a watcher may send: watchers only listen, so anything big is hostile.
pub const WATCHER_FRAME: usize = 16 * 1024;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Only this instance's events.
    instance_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/invocations/{invoke_id}/stream",
    tag = "invocations",
    operation_id = "StreamInvocation",
    summary = "Watch an invocation's output and statuses live (WebSocket)",
    params(
        ("invoke_id" = String, Path, description = "The invocation's id (`t-…`)."),
        StreamQuery,
    ),
    responses(
        (
            status = 101,
            description = "A WebSocket: one JSON `StreamEvent` (see the schema) per text frame, first what is \
                           stored, then live events, until `done`.",
        ),
    ),
)]
pub async fn stream(
    _: Actor,
    State(state): State<AppState>,
    ApiPath(invoke_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    state
        .store
        .invocation(&invoke_id)
        .await
        .map_err(not_found(Kind::Invocation, &invoke_id))?;
    let watch = Watch::new(
        state,
        invoke_id,
        query.instance_id.clone(),
        query.instance_id,
        Format::Json,
    );
    Ok(ws
        .max_message_size(WATCHER_FRAME)
        .max_frame_size(WATCHER_FRAME)
        .on_upgrade(move |socket| watch.run(socket)))
}

/// How events are written to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON `StreamEvent` per text frame.
    Json,
    /// htmx out-of-band fragments for the console's Command Output panel.
    Html,
}

/// One watcher of one invocation.
pub struct Watch {
    state: AppState,
    invoke_id: String,
    /// Only this instance's output.
    output_of: Option<String>,
    /// Only this instance's statuses.
    status_of: Option<String>,
    format: Format,
    /// HTML: the instances whose rows the panel shows (one page of them), the only rows redrawn.
    rows: HashSet<String>,
    /// Per instance, the output offset up to which the watcher has everything.
    sent: HashMap<String, u64>,
    /// JSON: per instance, the last status sent: a replay (after a lag, or when another replica
    /// says the invocation changed) sends only statuses that moved, so each is sent once.
    statuses: HashMap<String, crate::protocol::ResultStatus>,
    /// HTML: the per-status counts need redrawing.
    counts_dirty: bool,
    /// HTML: decodes the watched instance's output as a stream (characters and escape
    /// sequences split across chunks).
    renderer: OutputRenderer,
}

impl Watch {
    pub fn new(
        state: AppState,
        invoke_id: String,
        output_of: Option<String>,
        status_of: Option<String>,
        format: Format,
    ) -> Self {
        Watch {
            state,
            invoke_id,
            output_of,
            status_of,
            format,
            rows: HashSet::new(),
            sent: HashMap::new(),
            statuses: HashMap::new(),
            counts_dirty: false,
            renderer: OutputRenderer::default(),
        }
    }

    /// HTML: redraws these instances' rows as their statuses change (the rest only count).
    pub fn redrawing(mut self, rows: impl IntoIterator<Item = String>) -> Self {
        self.rows = rows.into_iter().collect();
        self
    }

    /// Runs until the invocation is done, the client leaves or the server stops.
    pub async fn run(mut self, mut socket: WebSocket) {
        if let Err(e) = self.serve(&mut socket).await {
            tracing::debug!(error = %e, "live stream ended");
        }
        // A normal close: clients (htmx's ws extension) reconnect only after abnormal ones.
        let close = axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "done".into(),
        };
        let _ = tokio::time::timeout(WRITE_TIMEOUT, socket.send(Message::Close(Some(close)))).await;
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> anyhow::Result<()> {
        let mut rx = self.state.dispatcher.watch(&self.invoke_id);
        let done = self.replay(socket).await?;
        flush(socket).await?;
        if done {
            return Ok(());
        }
        // Counts are redrawn at most this often, however fast results change.
        let mut tick = tokio::time::interval(Duration::from_millis(400));
        loop {
            tokio::select! {
                live = rx.recv() => {
                    // What else is already waiting goes out with it, in one flush.
                    let mut next = live;
                    let mut queued = 0;
                    while let Some(live) = next.take() {
                        let done = match live {
                            // This replica stored the change that ended the invocation; changes
                            // other replicas stored just before may not have been told here yet
                            // (their notes come every 100 ms), so the end is read from the
                            // store, which has them all, and `Done` comes after them.
                            Live::Event(event)
                                if matches!(*event, StreamEvent::Done { .. }) && self.state.store.is_shared() =>
                            {
                                self.replay(socket).await?
                            }
                            Live::Event(event) => self.forward(socket, &event).await?,
                            // Events were left out while this watcher lagged: the store has them.
                            Live::Lagged => self.replay(socket).await?,
                        };
                        if done {
                            return flush(socket).await;
                        }
                        queued += 1;
                        if queued < FLUSH_EVERY {
                            next = rx.try_recv();
                        }
                    }
                    flush(socket).await?;
                }
                _ = tick.tick(), if self.counts_dirty => {
                    self.counts_dirty = false;
                    let fragment = html::summary_fragment(&self.state, &self.invoke_id).await?;
                    send_text(socket, fragment).await?;
                    flush(socket).await?;
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                    Some(Ok(_)) => {}
                },
                _ = self.state.shutdown.cancelled() => return Ok(()),
            }
        }
    }

    fn wants_output(&self, instance_id: &str) -> bool {
        self.output_of.as_deref().is_none_or(|only| only == instance_id)
    }

    fn wants_status(&self, instance_id: &str) -> bool {
        self.status_of.as_deref().is_none_or(|only| only == instance_id)
    }

    /// Sends what is stored past what was sent. Returns true when the invocation is done.
    async fn replay(&mut self, socket: &mut WebSocket) -> anyhow::Result<bool> {
        let store = self.state.store.clone();
        let invocation = store.invocation(&self.invoke_id).await?;
        // A watcher of one instance's output and nothing else's status (every console panel)
        // reads that one result, not all 10,000 of a big run.
        let results = match &self.output_of {
            Some(only) if self.format == Format::Html || self.status_of.as_ref() == Some(only) => {
                match store.result(&self.invoke_id, only).await {
                    Ok(result) => vec![result],
                    Err(crate::store::Error::NotFound) => Vec::new(),
                    Err(e) => return Err(e.into()),
                }
            }
            _ => store.results(&self.invoke_id).await?,
        };
        let sent = |watch: &Self, instance_id: &str| watch.sent.get(instance_id).copied().unwrap_or(0);
        // Only results with output not sent yet, read together, a batch of results at a time.
        let unsent: Vec<(i64, u64)> = results
            .iter()
            .filter(|r| self.wants_output(&r.instance_id) && r.output_bytes > sent(self, &r.instance_id))
            .map(|r| (r.id, sent(self, &r.instance_id)))
            .collect();
        let mut chunks = HashMap::new();
        for batch in unsent.chunks(REPLAY_BATCH) {
            chunks.extend(store.outputs_since(batch).await?);
        }
        for result in results {
            if self.wants_output(&result.instance_id) {
                if sent(self, &result.instance_id) == 0 && self.format == Format::Html {
                    // A reconnecting panel already shows some output: start it afresh.
                    self.renderer = OutputRenderer::default();
                    send_text(socket, html::clear_output_fragment(&self.invoke_id)).await?;
                }
                for chunk in chunks.remove(&result.id).unwrap_or_default() {
                    let event = StreamEvent::Output {
                        instance_id: result.instance_id.clone(),
                        seq: None,
                        offset: chunk.offset,
                        stream: chunk.stream,
                        data: Bytes::from(chunk.data),
                    };
                    self.forward(socket, &event).await?;
                }
            }
            // Of the console's rows, the watched instance's is redrawn here (with the end of its
            // output); the rest of the page's below, together.
            let redraw = match self.format {
                Format::Json => self.wants_status(&result.instance_id),
                Format::Html => self.output_of.as_deref() == Some(result.instance_id.as_str()),
            };
            if redraw {
                let status = StreamEvent::Status {
                    instance_id: result.instance_id,
                    invocation_status: result.status,
                    exit_code: result.exit_code,
                    error_code: result.error_code,
                    error_info: result.error_info,
                };
                self.forward(socket, &status).await?;
            }
        }
        let status = invocation.status();
        if self.format == Format::Html {
            // Rows of the page that changed between drawing the panel (or the lag) and now.
            let rows: Vec<String> = self
                .rows
                .iter()
                .filter(|id| self.output_of.as_deref() != Some(id.as_str()))
                .cloned()
                .collect();
            for row in store.results_of(&self.invoke_id, &rows).await? {
                send_text(socket, html::render_row(&row, self.output_of.as_deref())?).await?;
            }
            send_text(socket, html::summary_fragment(&self.state, &self.invoke_id).await?).await?;
            self.counts_dirty = false;
        }
        if status.is_terminal() {
            self.forward(
                socket,
                &StreamEvent::Done {
                    invocation_status: status,
                },
            )
            .await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Sends an event, trimming output already sent. Returns true after `Done`.
    async fn forward(&mut self, socket: &mut WebSocket, event: &StreamEvent) -> anyhow::Result<bool> {
        let text = match event {
            StreamEvent::Output {
                instance_id,
                seq,
                offset,
                stream,
                data,
            } => {
                if !self.wants_output(instance_id) {
                    return Ok(false);
                }
                let sent = self.sent.entry(instance_id.clone()).or_insert(0);
                let end = offset + data.len() as u64;
                if end <= *sent {
                    return Ok(false);
                }
                let skip = sent.saturating_sub(*offset) as usize;
                let skipped = offset.saturating_sub(*sent);
                *sent = end;
                let data = data.slice(skip..);
                match self.format {
                    Format::Json => serde_json::to_string(&StreamEvent::Output {
                        instance_id: instance_id.clone(),
                        seq: *seq,
                        offset: offset + skip as u64,
                        stream: *stream,
                        data,
                    })?,
                    Format::Html => {
                        let mut fragment = String::new();
                        if skipped > 0 {
                            fragment.push_str(&self.renderer.gap(skipped));
                        }
                        fragment.push_str(&self.renderer.render(&data, *stream));
                        html::output_fragment(&self.invoke_id, &fragment)
                    }
                }
            }
            StreamEvent::Status {
                instance_id,
                invocation_status,
                ..
            } => {
                if !self.wants_status(instance_id) {
                    return Ok(false);
                }
                match self.format {
                    Format::Json => {
                        if self.statuses.insert(instance_id.clone(), *invocation_status) == Some(*invocation_status) {
                            return Ok(false);
                        }
                        serde_json::to_string(event)?
                    }
                    Format::Html => {
                        self.counts_dirty = true;
                        // A row off the page only counts: no query, nothing sent.
                        let mut text = if self.rows.contains(instance_id) {
                            html::row_fragment(&self.state, &self.invoke_id, instance_id, self.output_of.as_deref())
                                .await?
                        } else {
                            String::new()
                        };
                        if invocation_status.is_terminal() && self.wants_output(instance_id) {
                            // Its output is complete: show what a cut-off last chunk held back.
                            let rest = self.renderer.flush();
                            if !rest.is_empty() {
                                text.push_str(&html::output_fragment(&self.invoke_id, &rest));
                            }
                        }
                        if text.is_empty() {
                            return Ok(false);
                        }
                        text
                    }
                }
            }
            StreamEvent::Done { .. } => {
                let text = match self.format {
                    Format::Json => serde_json::to_string(event)?,
                    Format::Html => html::summary_fragment(&self.state, &self.invoke_id).await?,
                };
                send_text(socket, text).await?;
                return Ok(true);
            }
        };
        send_text(socket, text).await?;
        Ok(false)
    }
}

/// How long a write to a watcher may wait for the client to read. A client that reads
/// nothing for this long (a sleeping laptop) is dropped; it replays from the store when it
/// reconnects.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Queues a text frame; it goes out at the next [`flush`] (or once the write buffer is full).
async fn send_text(socket: &mut WebSocket, text: String) -> anyhow::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, socket.feed(Message::Text(text.into())))
        .await
        .map_err(|_| anyhow::anyhow!("the watcher did not read for {WRITE_TIMEOUT:?}"))??;
    Ok(())
}

async fn flush(socket: &mut WebSocket) -> anyhow::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, SinkExt::flush(socket))
        .await
        .map_err(|_| anyhow::anyhow!("the watcher did not read for {WRITE_TIMEOUT:?}"))??;
    Ok(())
}
