//! The batching writer: agent reports are applied in batches, one transaction each (group
//! commit), then acknowledged to their agents and published to watchers. Acks and events
//! follow the commit, so an agent never forgets output the store does not have, and a watcher
//! that read the store before subscribing misses nothing.

use super::{Dispatcher, Outbound};
use crate::protocol::agent::{Ack, ServerMessage, StopTask};
use crate::protocol::api::StreamEvent;
use crate::protocol::parse_task_id;
use crate::protocol::{ErrorCode, ResultStatus};
use crate::store::{AgentWrite, Applied, ResultChange};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One report on its way to the store.
pub struct Item {
    pub write: AgentWrite,
    /// The task (invoke id) the report is about.
    pub task: String,
    pub instance_id: String,
    /// The reporting connection, for the ack.
    pub reply: mpsc::Sender<Outbound>,
}

/// Most reports applied in one transaction.
const MAX_BATCH: usize = 1024;

/// The first and the longest pause before a batch that failed for a passing reason (the disk
/// full, the database busy) is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

pub(super) async fn run(dispatcher: Dispatcher, mut rx: mpsc::Receiver<Item>, shutdown: CancellationToken) {
    let mut items = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut items, MAX_BATCH) => if n == 0 { break },
            _ = shutdown.cancelled() => {
                // Store what already arrived; agents re-send the rest after reconnecting.
                while let Ok(item) = rx.try_recv() {
                    items.push(item);
                }
                if !items.is_empty() {
                    dispatcher.apply(std::mem::take(&mut items), &shutdown).await;
                }
                break;
            }
        }
        dispatcher.apply(std::mem::take(&mut items), &shutdown).await;
    }
}

/// Acks to send after a batch, one per (connection, task).
#[derive(Default)]
struct Acks(HashMap<(String, String), (mpsc::Sender<Outbound>, Ack)>);

impl Acks {
    fn add(&mut self, item: &Item, next_seq: u64, finished: bool) {
        let key = (item.instance_id.clone(), item.task.clone());
        let ack = Ack {
            task: item.task.clone(),
            next_seq,
            finished: false,
        };
        let entry = self.0.entry(key).or_insert_with(|| (item.reply.clone(), ack));
        // The latest report's connection: after a reconnect the earlier one is closed.
        entry.0 = item.reply.clone();
        entry.1.next_seq = entry.1.next_seq.max(next_seq);
        entry.1.finished |= finished;
    }
}

impl Dispatcher {
    /// Applies a batch. A failure that passes (the disk full) is retried, with a growing pause,
    /// until it succeeds or the server stops: the agents keep every unacknowledged report in
    /// their spools meanwhile, and their connections stay up (they wait on the queue, which
    /// is back-pressure, not loss). Any other failure is tried report by report.
    async fn apply(&self, items: Vec<Item>, shutdown: &CancellationToken) {
        let writes: Vec<AgentWrite> = items.iter().map(|i| i.write.clone()).collect();
        let mut pause = RETRY_FIRST;
        let (result, order) = loop {
            let order = self.inner.status_order.lock().await;
            let started = std::time::Instant::now();
            match self
                .inner
                .store
                .apply_agent_writes(&writes, self.inner.settings.output)
                .await
            {
                Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                    drop(order);
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "could not store agent reports; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        // Not stored: the agents re-send after reconnecting to the next server.
                        _ = shutdown.cancelled() => return,
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
                result => {
                    self.inner.metrics.writer_batch(writes.len(), started.elapsed());
                    break (result, order);
                }
            }
        };
        let applied = match result {
            Ok(applied) => applied,
            Err(e) if items.len() > 1 => {
                drop(order);
                // Apply one by one, so that one bad report fails alone.
                tracing::warn!(error = ?e, "a batch of agent reports failed; retrying them one by one");
                for item in items {
                    Box::pin(self.apply(vec![item], shutdown)).await;
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = ?e, "could not store an agent report; closing its connection");
                let _ = items[0].reply.try_send(Outbound::Close("storage error"));
                return;
            }
        };
        let mut acks = Acks::default();
        let mut changes = Vec::new();
        for (item, applied) in items.iter().zip(applied) {
            match applied {
                Applied::Chunk { offset, next_seq } => {
                    acks.add(item, next_seq, false);
                    if let (Some(offset), AgentWrite::Chunk { seq, stream, data, .. }) = (offset, &item.write) {
                        let event = StreamEvent::Output {
                            instance_id: item.instance_id.clone(),
                            seq: Some(*seq),
                            offset,
                            stream: *stream,
                            data: data.clone(),
                        };
                        self.publish(parse_task_id(&item.task).0, event);
                    }
                }
                Applied::Started { status, changed } => {
                    if changed {
                        changes.push(change(item, status, None, None, None));
                    } else if status.is_terminal() || status == ResultStatus::Stopping {
                        // Cancelled, timed out or stopped while on its way: make the agent stop.
                        let stop = StopTask {
                            task: item.task.clone(),
                        };
                        let _ = item.reply.try_send(Outbound::Message(stop.into()));
                    }
                }
                Applied::Finished { changed, exit_code } => {
                    acks.add(item, 0, true);
                    if let Some((status, error_code, error_info)) = changed {
                        changes.push(change(item, status, exit_code, error_code, error_info));
                    }
                }
                Applied::Skipped { next_seq } => acks.add(item, next_seq, false),
                Applied::Refused { reason } => {
                    tracing::warn!(instance_id = %item.instance_id, task = %item.task, reason, "protocol violation; closing the agent's connection");
                    let _ = item.reply.try_send(Outbound::Close(reason));
                }
                Applied::Gap { .. } | Applied::Early { .. } => {
                    tracing::warn!(instance_id = %item.instance_id, task = %item.task, "output out of sequence; asking the agent to re-send");
                    let _ = item.reply.try_send(Outbound::Close("output out of sequence"));
                }
                Applied::Missing => acks.add(item, u64::MAX, true),
            }
        }
        for (tx, ack) in acks.0.into_values() {
            // Acks are cumulative: if this one is dropped on a full queue, the next covers it.
            let _ = tx.try_send(Outbound::Message(ServerMessage::Ack(ack)));
        }
        self.publish_changes(&changes).await;
        drop(order);
        // Rate control: results that ended free slots for held ones (`dispatch::rate`).
        self.release_held(&changes).await;
    }
}

fn change(
    item: &Item,
    status: ResultStatus,
    exit_code: Option<i32>,
    error_code: Option<ErrorCode>,
    error_info: Option<String>,
) -> ResultChange {
    let (invoke_id, repeats) = parse_task_id(&item.task);
    ResultChange {
        invocation_id: invoke_id.to_string(),
        repeats,
        instance_id: item.instance_id.clone(),
        status,
        exit_code,
        error_code,
        error_info,
    }
}
