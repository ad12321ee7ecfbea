//! The dispatcher: connected agents, the life of an invocation from RunCommand to the last
//! terminal result, the server's own deadlines, and live fan-out of output to watchers.
//!
//! It owns the in-memory state of this server (which agents are connected here, who watches
//! which invocation) and calls `store` for everything durable. It knows nothing of HTTP:
//! no axum, no SQL.

mod run;
mod session;
mod writer;

pub use run::{CommandChange, Run, check_region, check_run_command};
pub use session::{AgentSession, Outbound, SessionError};

use crate::protocol::agent::{RunTask, ServerMessage, StopTask};
use crate::protocol::api::StreamEvent;
use crate::protocol::{InvocationStatus, ResultStatus};
use crate::store::{self, OutputLimits, ResultChange, Store, now_ms};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tunables of the dispatcher; defaults are DESIGN.md §7.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Agents and server each send a heartbeat this often; three missed means lost.
    pub heartbeat: Duration,
    /// How long a command waits for an offline instance before it is `Aborted`.
    pub delivery_window: Duration,
    /// Extra time past a task's timeout before the server itself declares `Timeout`.
    pub timeout_grace: Duration,
    /// Output kept per result.
    pub output: OutputLimits,
    /// Largest command content, in bytes after decoding.
    pub max_content_bytes: usize,
    /// Most instances one invocation may target.
    pub max_instances: usize,
    /// Retained commands allowed per region.
    pub retained_command_quota: u64,
    /// Invocations older than this are deleted.
    pub retention: Duration,
    /// How often deadlines are checked.
    pub sweep_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat: Duration::from_secs(20),
            delivery_window: Duration::from_secs(60),
            timeout_grace: Duration::from_secs(30),
            output: OutputLimits {
                head: 512 * 1024,
                tail: 512 * 1024,
            },
            max_content_bytes: 64 * 1024,
            max_instances: 10_000,
            retained_command_quota: 500,
            retention: Duration::from_secs(30 * 24 * 3600),
            sweep_interval: Duration::from_secs(1),
        }
    }
}

impl Settings {
    /// An agent whose last heartbeat is older than this is lost.
    pub fn heartbeat_loss(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// What went wrong in a dispatcher call; `server` turns it into an HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the request is unusable. `code` is the API error code naming the field.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// Instance ids that are not registered.
    #[error("unknown instances: {0:?}")]
    UnknownInstances(Vec<String>),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A quota is used up.
    #[error("quota {name} exceeded")]
    Quota {
        name: &'static str,
        region_id: String,
        used: u64,
        limit: u64,
    },
    #[error(transparent)]
    Store(store::Error),
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        Error::Store(e)
    }
}

/// Handle to the dispatcher. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    settings: Settings,
    /// Agents connected to this server, by instance id. Written by `attach`/`detach`.
    agents: Mutex<HashMap<String, AgentLink>>,
    /// Live watchers by invoke id. An entry is removed once nobody listens.
    watchers: Mutex<HashMap<String, broadcast::Sender<Arc<StreamEvent>>>>,
    /// Heartbeats received since the last flush to the store, by instance id.
    heartbeats: Mutex<HashMap<String, i64>>,
    /// Reports from agents on their way to the batching writer.
    writer_tx: mpsc::Sender<writer::Item>,
    next_session: AtomicU64,
}

/// The way to one connected agent.
struct AgentLink {
    session: u64,
    tx: mpsc::Sender<Outbound>,
}

/// Events buffered per watcher before it counts as lagging.
const WATCH_BUFFER: usize = 4096;

impl Dispatcher {
    /// Starts the dispatcher and its background tasks (batching writer, deadlines, heartbeat
    /// flush, retention). They stop when `shutdown` is cancelled; await `tracker` after that.
    pub fn start(store: Store, settings: Settings, shutdown: CancellationToken, tracker: &TaskTracker) -> Dispatcher {
        let (writer_tx, writer_rx) = mpsc::channel(8192);
        let dispatcher = Dispatcher {
            inner: Arc::new(Inner {
                store,
                settings,
                agents: Mutex::default(),
                watchers: Mutex::default(),
                heartbeats: Mutex::default(),
                writer_tx,
                next_session: AtomicU64::new(1),
            }),
        };
        tracker.spawn(writer::run(dispatcher.clone(), writer_rx, shutdown.clone()));
        tracker.spawn(dispatcher.clone().run_housekeeping(shutdown));
        dispatcher
    }

    /// The store behind the dispatcher.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The dispatcher's settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Whether an agent for the instance is connected to this server.
    pub fn is_connected(&self, instance_id: &str) -> bool {
        self.lock_agents().contains_key(instance_id)
    }

    /// Subscribes to live events of an invocation. Subscribe before reading stored state, so
    /// nothing committed in between is missed (events are published after their commit).
    pub fn watch(&self, invoke_id: &str) -> broadcast::Receiver<Arc<StreamEvent>> {
        let mut watchers = self.inner.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers
            .entry(invoke_id.to_string())
            .or_insert_with(|| broadcast::channel(WATCH_BUFFER).0)
            .subscribe()
    }

    /// Forgets an invocation's live channel once its last watcher has gone.
    pub fn unwatch(&self, invoke_id: &str) {
        let mut watchers = self.inner.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if watchers.get(invoke_id).is_some_and(|tx| tx.receiver_count() == 0) {
            watchers.remove(invoke_id);
        }
    }

    /// Stops results of an invocation (all, or those of `instance_ids`). Returns how many changed.
    pub async fn stop(&self, invoke_id: &str, instance_ids: Option<&[String]>) -> Result<usize, Error> {
        if let Some(ids) = instance_ids {
            run::check_instance_ids(ids, self.inner.settings.max_instances)?;
        }
        self.inner
            .store
            .invocation(invoke_id)
            .await
            .map_err(not_found("invocation"))?;
        let changes = self.inner.store.stop_results(invoke_id, instance_ids).await?;
        for change in &changes {
            // Cancelled results may already be on their way to the agent: stop them there too.
            self.send_stop(&change.instance_id, invoke_id);
        }
        self.publish_changes(&changes).await;
        Ok(changes.len())
    }

    /// Drops an instance's connection, if any (after deregistration).
    pub fn disconnect(&self, instance_id: &str) {
        if let Some(link) = self.lock_agents().remove(instance_id) {
            let _ = link.tx.try_send(Outbound::Close("instance deregistered"));
        }
    }

    fn lock_agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentLink>> {
        self.inner.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message to a connected agent. Never waits: a full queue hands the message to a
    /// task so that one slow agent cannot hold up a fan-out to thousands.
    fn send_to(&self, instance_id: &str, message: ServerMessage) -> bool {
        let Some(tx) = self.lock_agents().get(instance_id).map(|l| l.tx.clone()) else {
            return false;
        };
        if let Err(mpsc::error::TrySendError::Full(message)) = tx.try_send(Outbound::Message(message)) {
            tokio::spawn(async move {
                let _ = tx.send(message).await;
            });
        }
        true
    }

    fn send_stop(&self, instance_id: &str, task: &str) {
        self.send_to(instance_id, StopTask { task: task.to_string() }.into());
    }

    fn send_run(&self, instance_id: &str, run: RunTask) -> bool {
        self.send_to(instance_id, run.into())
    }

    /// Publishes an event to the watchers of an invocation, if there are any.
    fn publish(&self, invoke_id: &str, event: StreamEvent) {
        let mut watchers = self.inner.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = watchers.get(invoke_id) {
            if tx.send(Arc::new(event)).is_err() {
                watchers.remove(invoke_id);
            }
        }
    }

    fn is_watched(&self, invoke_id: &str) -> bool {
        let watchers = self.inner.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.get(invoke_id).is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Tells watchers about status changes, and that an invocation is done when it is.
    async fn publish_changes(&self, changes: &[ResultChange]) {
        let mut touched = BTreeSet::new();
        for change in changes {
            self.publish(
                &change.invocation_id,
                StreamEvent::Status {
                    instance_id: change.instance_id.clone(),
                    invocation_status: change.status,
                    exit_code: change.exit_code,
                    error_code: change.error_code,
                },
            );
            if change.status.is_terminal() {
                touched.insert(change.invocation_id.as_str());
            }
        }
        for invoke_id in touched.into_iter().filter(|id| self.is_watched(id)) {
            match self.inner.store.invocation(invoke_id).await {
                Ok(inv) => {
                    let status = InvocationStatus::from_counts(inv.counts);
                    if status.is_terminal() {
                        self.publish(
                            invoke_id,
                            StreamEvent::Done {
                                invocation_status: status,
                            },
                        );
                    }
                }
                Err(e) => tracing::warn!(invoke_id, error = %e, "could not read invocation status"),
            }
        }
    }

    /// Deadlines, heartbeat flushes and retention, until shutdown.
    async fn run_housekeeping(self, shutdown: CancellationToken) {
        let settings = &self.inner.settings;
        let mut sweep = tokio::time::interval(settings.sweep_interval);
        let mut flush = tokio::time::interval(settings.heartbeat.min(Duration::from_secs(5)));
        let mut purge = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = flush.tick() => self.flush_heartbeats().await,
                _ = sweep.tick() => self.enforce_deadlines().await,
                _ = purge.tick() => {
                    let before = now_ms() - settings.retention.as_millis() as i64;
                    match self.inner.store.purge_invocations(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(invocations = n, "purged invocations past retention"),
                        Err(e) => tracing::warn!(error = %e, "retention purge failed"),
                    }
                }
            }
        }
        self.flush_heartbeats().await;
    }

    async fn flush_heartbeats(&self) {
        let beats: Vec<(String, i64)> = {
            let mut map = self.inner.heartbeats.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().collect()
        };
        if beats.is_empty() {
            return;
        }
        if let Err(e) = self.inner.store.record_heartbeats(&beats).await {
            tracing::warn!(error = %e, "could not record heartbeats");
        }
    }

    async fn enforce_deadlines(&self) {
        let now = now_ms();
        let lost_before = now - self.inner.settings.heartbeat_loss().as_millis() as i64;
        match self.inner.store.enforce_deadlines(now, lost_before).await {
            Ok(changes) => {
                for change in changes.iter().filter(|c| c.status == ResultStatus::Timeout) {
                    self.send_stop(&change.instance_id, &change.invocation_id);
                }
                self.publish_changes(&changes).await;
            }
            Err(e) => tracing::warn!(error = %e, "deadline check failed"),
        }
    }
}

/// Maps the store's `NotFound` to the dispatcher's, naming what was missing.
fn not_found(what: &'static str) -> impl Fn(store::Error) -> Error {
    move |e| match e {
        store::Error::NotFound => Error::NotFound(what),
        other => Error::Store(other),
    }
}

/// The built-in parameter values for one instance.
fn builtins<'a>(
    instance_id: &str,
    instance_name: &str,
    region_id: &str,
    invoke_id: &str,
    command_id: Option<&str>,
) -> BTreeMap<&'a str, String> {
    BTreeMap::from([
        ("instance_id", instance_id.to_string()),
        ("instance_name", instance_name.to_string()),
        ("region_id", region_id.to_string()),
        ("invoke_id", invoke_id.to_string()),
        ("command_id", command_id.unwrap_or_default().to_string()),
    ])
}
