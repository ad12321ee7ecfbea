//! The domain: every rule, limit and audit write of fleetrun, and the in-memory state of this
//! server. Every surface (the console, the JSON API, and those to come) extracts its input,
//! makes one call here and renders the answer; none holds a rule of its own.
//!
//! The rooms:
//! - [`check`]: pure validators, one per value, returning checked values or typed errors;
//! - [`error`]: the typed refusals (`Field`, `NotFound { kind, id }`, …) surfaces render;
//! - [`actor`]: who asks; every mutating call takes an `Actor`, checks its role and writes the
//!   one audit entry for the action;
//! - `accounts`: logins (throttled by the rules of `throttle`), sessions, users, tokens, settings;
//! - `access_keys`: AccessKey pairs for the ECS API, their secrets sealed by [`sealing`];
//! - `fleet`: activations, enrolment, instance names, deregistration, liveness;
//! - `commands`: retained commands and their quota; `run`: RunCommand, InvokeCommand, Stop;
//! - `rate`: rate control, the release of results held beyond an invocation's concurrency;
//! - `plan`: execution plans (`RepeatMode`, `Frequency`); `schedule`: starting due executions;
//! - `session`: one agent connection (attach, reports, detach); `writer`: the batching writer;
//! - [`metrics`]: what the dispatcher counts for Prometheus (`GET /metrics`).
//!
//! The dispatcher owns what is in memory (which agents are connected here, who watches which
//! invocation, whose turn it is among login attempts) and calls `store` for everything durable,
//! login failures included. It knows nothing of HTTP: no axum, no SQL.

mod access_keys;
mod accounts;
pub mod actor;
pub mod check;
mod commands;
pub mod error;
mod files;
mod fleet;
pub mod metrics;
pub mod plan;
mod rate;
mod reconnect;
mod replicas;
mod run;
mod schedule;
pub mod sealing;
mod session;
mod signing;
mod tags;
mod throttle;
pub mod watch;
mod writer;

pub use access_keys::{ACCESS_KEYS_PER_USER, AccessKeyLookup};
pub use accounts::{FirstAdmin, NewSession, SESSION_HOURS, UserChange, hash_password, verify_password};
pub use actor::{Actor, Via};
pub use commands::QuotaUse;
pub use error::{Conflict, Error, Field, Kind, LoginRefusal, QuotaKind};
pub use files::{DEFAULT_FILE_TIMEOUT_SECS, SendFile, Upload, WINDOW_CHUNKS, check_file_name, check_target_dir};
pub use fleet::{ActivationRequest, DEFAULT_ACTIVATION_INSTANCES, DEFAULT_TTL_HOURS, Liveness};
pub use reconnect::Busy;
pub use run::{CLIENT_TOKEN_HOURS, Run, Stopped, Submitted, check_run_command, task_for};
pub use session::{AgentSession, Outbound, Outbox, SessionError};
pub use signing::{Freshness, REPLAY_WINDOW};
pub use tags::{tag_filter, tag_filters};
pub use throttle::LoginPolicy;

use crate::protocol::ResultStatus;
use crate::protocol::agent::{RunTask, ServerMessage, StopTask};
use crate::protocol::api::StreamEvent;
use crate::store::bus::Note;
use crate::store::{OutputLimits, ResultChange, Store, now_ms};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
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
    /// Login throttling: per-address limit, per-username delay.
    pub login: LoginPolicy,
    /// Agents per second the server means to take back after a restart: sizes the reconnect
    /// window announced in `Welcome` (`reconnect`).
    pub reconnect_rate: u64,
    /// Longest reconnect window announced.
    pub reconnect_window_max: Duration,
    /// Agents being attached at once (`Hello` to settled) beyond which new connections are
    /// refused (503).
    pub max_attaching: usize,
    /// Shortest interval of a schedule: `rate(…)`, and between two runs of a cron expression
    /// (Alibaba's: 60 s).
    pub min_schedule_interval: Duration,
    /// Where uploads for Send File are staged (`<data-dir>/files`).
    pub files_dir: std::path::PathBuf,
    /// Largest file Send File takes.
    pub max_file_bytes: u64,
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
            login: LoginPolicy::default(),
            reconnect_rate: 500,
            reconnect_window_max: Duration::from_secs(30),
            max_attaching: 256,
            min_schedule_interval: Duration::from_secs(60),
            files_dir: std::env::temp_dir().join("fleetrun-files"),
            max_file_bytes: 1 << 30,
        }
    }
}

impl Settings {
    /// An agent whose last heartbeat is older than this is lost.
    pub fn heartbeat_loss(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// Where the domain's "now" comes from: the wall clock, or a clock tests move by hand, so
/// deadlines (delivery window, timeout, heartbeat loss) are tested without waiting for them.
/// (Tokio's paused clock does not serve here: while SQLite works on its own thread the runtime
/// looks idle, auto-advances, and fires sqlx's pool timeouts.)
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    Wall,
    /// Milliseconds since the Unix epoch, moved by [`Clock::advance`].
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at the current wall time.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(now_ms())))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        match self {
            Clock::Wall => now_ms(),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward; the wall clock moves by itself.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        }
    }
}

/// Handle to the dispatcher. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// This server process's id among the replicas sharing the database (`replicas`).
    replica: String,
    /// Invocations whose output or statuses changed here since other replicas were last told.
    changed: Mutex<BTreeSet<String>>,
    settings: Settings,
    clock: Clock,
    /// Login throttling, verified Basic-auth passwords, run-time settings.
    accounts: accounts::Accounts,
    /// Seals and opens AccessKey secrets. `None` in a dispatcher built without it (`offline`),
    /// which refuses AccessKeys.
    secret_key: Option<sealing::SecretKey>,
    /// Agents connected to this server, by instance id. Written by `attach`/`detach`.
    agents: Mutex<HashMap<String, AgentLink>>,
    /// Live watchers by invoke id, each with a queue bounded in bytes.
    watchers: Arc<watch::Watchers>,
    /// Heartbeats received since the last flush to the store, by instance id.
    heartbeats: Mutex<HashMap<String, i64>>,
    /// Reports from agents on their way to the batching writer.
    writer_tx: mpsc::Sender<writer::Item>,
    /// Held from a write that changes results' statuses until its events are published, so
    /// watchers see one result's statuses in the order they were committed (never `Stopping`
    /// after `Terminated`).
    status_order: tokio::sync::Mutex<()>,
    /// Held from reading which tasks are unsent until those handed out are recorded sent (a
    /// launch's own, or those another replica stored, `replicas`), so the periodic look for
    /// unsent tasks never hands out again a task that is on its way.
    delivering: tokio::sync::Mutex<()>,
    next_session: AtomicU64,
    /// Agents that may come back after a restart, which sizes the reconnect window. Counted
    /// from the store at start and every minute, and bumped by each enrolment.
    fleet_size: AtomicU64,
    /// Agents being attached now, from `Hello` until settled (`Settings::max_attaching`).
    attaching: std::sync::atomic::AtomicUsize,
    /// Refusals for being busy since the last warning about them, and when that was (ms).
    busy: reconnect::BusyLog,
    /// Send File transfers running on this server's agent connections.
    transfers: files::Transfers,
    /// Counters and gauges for `GET /metrics`; counters are bumped where things happen,
    /// gauges are read from the fields above at each scrape (`sample_metrics`).
    metrics: metrics::Metrics,
}

/// Result ids of a connection's tasks, by task id: filled as tasks are handed to the agent,
/// read by the connection's reports, so a report needs no lookup.
type TaskIds = Arc<Mutex<HashMap<String, i64>>>;

/// The way to one connected agent.
struct AgentLink {
    session: u64,
    /// The agent protocol version of the connection (Send File needs 3).
    protocol_version: u32,
    tasks: TaskIds,
    /// Messages in order. Bounded: an agent that stops reading has its connection closed
    /// rather than its messages piling up (it re-sends, and gets its work again, on reconnect).
    tx: mpsc::Sender<Outbound>,
    /// Cancelled to close the connection when its queue is full.
    close: CancellationToken,
}

impl AgentLink {
    /// The way a file transfer reaches this connection.
    fn connection(&self, instance_id: &str) -> files::Connection {
        files::Connection {
            instance_id: instance_id.to_string(),
            session: self.session,
            tx: self.tx.clone(),
            protocol_version: self.protocol_version,
        }
    }

    /// Queues a message, in order; false when it could not be. Never waits: an agent whose
    /// queue is full is disconnected. (Messages to agents not connected here are not sent at
    /// all; the store holds what they need when they connect.)
    fn push(&self, instance_id: &str, message: ServerMessage) -> bool {
        if self.tx.try_send(Outbound::Message(message)).is_ok() {
            return true;
        }
        if !self.close.is_cancelled() {
            tracing::warn!(instance_id, "agent is not reading its messages; closing its connection");
            self.close.cancel();
        }
        false
    }
}

/// How often the retention purge looks for invocations past retention.
const PURGE_EVERY: Duration = Duration::from_secs(10);
/// How long one purge transaction should hold the write lock: what live output may wait.
const PURGE_TXN: Duration = Duration::from_millis(15);

/// The pace of the retention purge. A batch's cost depends on the database (cold pages, how
/// scattered an index is), so the batch is sized from how long the last one took, aiming at
/// [`PURGE_TXN`]; after each one the purge pauses at least as long as it held the lock, so the
/// writer always gets half of it or more.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PurgePace {
    /// Results deleted in the next transaction (whole invocations; a bigger one alone).
    batch: u64,
}

impl PurgePace {
    const FIRST: u64 = 500;
    const MIN: u64 = 20;
    const MAX: u64 = 5_000;

    fn new() -> Self {
        PurgePace { batch: Self::FIRST }
    }

    /// The pause after a batch of `results` that took `took`; sizes the next batch.
    fn after(&mut self, results: u64, took: Duration) -> Duration {
        let took_us = took.as_micros().max(1) as u64;
        // Halfway to the size that would have taken PURGE_TXN, so one odd batch cannot swing it.
        let ideal = results.max(1).saturating_mul(PURGE_TXN.as_micros() as u64) / took_us;
        self.batch = ((self.batch + ideal) / 2).clamp(Self::MIN, Self::MAX);
        took.max(Duration::from_millis(5))
    }
}

impl Dispatcher {
    /// Starts the dispatcher and its background tasks (batching writer, deadlines, heartbeat
    /// flush, retention). They stop when `shutdown` is cancelled; await `tracker` after that.
    /// `secret_key` seals AccessKey secrets: every replica of a database needs the same one.
    pub fn start(
        store: Store,
        secret_key: sealing::SecretKey,
        settings: Settings,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Dispatcher {
        let (dispatcher, writer_rx) = Dispatcher::build(store, settings, Clock::Wall, Some(secret_key));
        tracker.spawn(writer::run(dispatcher.clone(), writer_rx, shutdown.clone()));
        tracker.spawn(dispatcher.clone().run_housekeeping(shutdown.clone()));
        tracker.spawn(dispatcher.clone().run_purge(shutdown.clone()));
        tracker.spawn(dispatcher.clone().run_files(shutdown.clone()));
        tracker.spawn(dispatcher.clone().run_replica(shutdown));
        dispatcher
    }

    /// A dispatcher without background tasks, for one-off domain calls before a server runs
    /// (the demo creating its activations). It has no secret key, so it refuses AccessKeys.
    pub fn offline(store: Store, settings: Settings) -> Dispatcher {
        Dispatcher::build(store, settings, Clock::Wall, None).0
    }

    fn build(
        store: Store,
        settings: Settings,
        clock: Clock,
        secret_key: Option<sealing::SecretKey>,
    ) -> (Dispatcher, mpsc::Receiver<writer::Item>) {
        let (writer_tx, writer_rx) = mpsc::channel(8192);
        let dispatcher = Dispatcher {
            inner: Arc::new(Inner {
                store,
                replica: crate::store::ids::new_id("r"),
                changed: Mutex::default(),
                clock,
                accounts: accounts::Accounts::default(),
                secret_key,
                agents: Mutex::default(),
                watchers: Arc::default(),
                heartbeats: Mutex::default(),
                writer_tx,
                status_order: tokio::sync::Mutex::new(()),
                delivering: tokio::sync::Mutex::new(()),
                next_session: AtomicU64::new(1),
                fleet_size: AtomicU64::new(0),
                attaching: Default::default(),
                busy: reconnect::BusyLog::default(),
                transfers: files::Transfers::default(),
                metrics: metrics::Metrics::default(),
                settings,
            }),
        };
        (dispatcher, writer_rx)
    }

    /// The domain's now, in milliseconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// The store behind the dispatcher.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The dispatcher's settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The dispatcher's metrics, for the server to register and expose.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// Reads the gauges of [`Dispatcher::metrics`] from the dispatcher's state: called before
    /// each scrape, so keeping them costs nothing between scrapes.
    pub fn sample_metrics(&self) {
        let metrics = &self.inner.metrics;
        metrics.connected_agents.set(self.lock_agents().len() as i64);
        let attaching = self.inner.attaching.load(Ordering::Relaxed);
        metrics.attaching_agents.set(attaching as i64);
        let queue = &self.inner.writer_tx;
        metrics
            .writer_queue
            .set(queue.max_capacity().saturating_sub(queue.capacity()) as i64);
        metrics.watchers.set(self.inner.watchers.count() as i64);
    }

    /// Subscribes to live events of an invocation. Subscribe before reading stored state, so
    /// nothing committed in between is missed (events are published after their commit).
    pub fn watch(&self, invoke_id: &str) -> watch::Subscription {
        self.inner.watchers.subscribe(invoke_id)
    }

    /// Drops an instance's connection, if any (after deregistration).
    fn disconnect(&self, instance_id: &str) {
        if let Some(link) = self.lock_agents().remove(instance_id) {
            link.close.cancel();
        }
    }

    fn lock_agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentLink>> {
        self.inner.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send_stop(&self, instance_id: &str, task: &str) {
        if let Some(link) = self.lock_agents().get(instance_id) {
            let _ = link.push(instance_id, StopTask { task: task.to_string() }.into());
        }
    }

    /// Hands tasks to their connected agents, with their result ids (`(instance id, result id,
    /// task)`), taking the registry lock once for the whole fan-out, and records which were
    /// sent: past the delivery window, "sent and never acknowledged" is not "never sent".
    async fn send_runs<'a>(&self, runs: impl IntoIterator<Item = (&'a str, i64, RunTask)>) {
        let mut sent = Vec::new();
        {
            let agents = self.lock_agents();
            for (instance_id, result_id, run) in runs {
                let Some(link) = agents.get(instance_id) else {
                    continue;
                };
                link.tasks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(run.task.clone(), result_id);
                if link.push(instance_id, run.into()) {
                    sent.push(result_id);
                }
            }
        }
        if let Err(e) = self.inner.store.mark_sent(&sent, self.now()).await {
            // Then they count as never sent; the agent still refuses them past their deadline.
            tracing::warn!(error = %e, "could not record tasks as sent");
        }
    }

    /// Publishes an event to the watchers of an invocation, here and (soon after, through the
    /// store) on the other replicas.
    fn publish(&self, invoke_id: &str, event: StreamEvent) {
        self.inner.watchers.publish(invoke_id, event);
        if self.inner.store.is_shared() {
            self.changed(invoke_id);
        }
    }

    fn is_watched(&self, invoke_id: &str) -> bool {
        self.inner.watchers.is_watched(invoke_id)
    }

    /// Tells watchers about status changes, and that an invocation is done when it is.
    async fn publish_changes(&self, changes: &[ResultChange]) {
        let mut touched = BTreeSet::new();
        for change in changes {
            self.inner.metrics.result_changed(change.status);
            self.publish(
                &change.invocation_id,
                StreamEvent::Status {
                    instance_id: change.instance_id.clone(),
                    invocation_status: change.status,
                    exit_code: change.exit_code,
                    error_code: change.error_code,
                    error_info: change.error_info.clone(),
                },
            );
            if change.status.is_terminal() {
                touched.insert(change.invocation_id.as_str());
            }
        }
        // With replicas, the invocation may be watched elsewhere: its end is told at once rather
        // than with the next round of notes (`TELL_EVERY`), since a watcher waits for nothing else.
        let shared = self.inner.store.is_shared();
        let mut ended = Vec::new();
        for invoke_id in touched.into_iter().filter(|id| shared || self.is_watched(id)) {
            match self.inner.store.invocation(invoke_id).await {
                Ok(inv) => {
                    let status = inv.status();
                    if status.is_terminal() {
                        self.publish(
                            invoke_id,
                            StreamEvent::Done {
                                invocation_status: status,
                            },
                        );
                        ended.push(Note::Changed {
                            invoke_id: invoke_id.to_string(),
                        });
                    }
                }
                Err(e) => tracing::warn!(invoke_id, error = %e, "could not read invocation status"),
            }
        }
        if shared && !ended.is_empty() {
            self.tell(&ended).await;
        }
    }

    /// Deadlines, heartbeat flushes and retention, until shutdown.
    async fn run_housekeeping(self, shutdown: CancellationToken) {
        let settings = &self.inner.settings;
        let mut sweep = tokio::time::interval(settings.sweep_interval);
        let mut flush = tokio::time::interval(settings.heartbeat.min(Duration::from_secs(5)));
        // The server counted the fleet before it listened (`server::run`).
        let every = reconnect::COUNT_FLEET_EVERY;
        let mut count_fleet = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut release = tokio::time::interval(rate::RELEASE_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = flush.tick() => self.flush_heartbeats().await,
                _ = sweep.tick() => {
                    self.enforce_deadlines().await;
                    self.start_due_executions().await;
                }
                _ = count_fleet.tick() => self.recount_fleet().await,
                _ = release.tick() => self.release_all_held().await,
            }
        }
        self.flush_heartbeats().await;
    }

    /// Deletes invocations past retention, every [`PURGE_EVERY`], until shutdown: in batches
    /// paced by [`PurgePace`], each its own short transaction with a pause after it, so the
    /// batching writer (and live output) never waits long for the write lock.
    async fn run_purge(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(PURGE_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.forget_login_records().await;
            let before = self.now() - self.inner.settings.retention.as_millis() as i64;
            let (mut invocations, mut results) = (0, 0);
            let mut pace = PurgePace::new();
            while !shutdown.is_cancelled() {
                let started = std::time::Instant::now();
                match self.inner.store.purge_batch(before, pace.batch).await {
                    Ok((0, _)) => break,
                    Ok((i, r)) => {
                        invocations += i;
                        results += r;
                        tokio::time::sleep(pace.after(r, started.elapsed())).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "retention purge failed");
                        break;
                    }
                }
            }
            if invocations > 0 {
                tracing::info!(invocations, results, "purged invocations past retention");
            }
        }
    }

    /// Deletes login failures past the throttle's window and known addresses past theirs.
    async fn forget_login_records(&self) {
        let (policy, now) = (&self.inner.settings.login, self.now());
        let forgotten = self
            .inner
            .store
            .forget_login_records(policy.since(now), policy.known_since(now))
            .await;
        if let Err(e) = forgotten {
            tracing::warn!(error = %e, "could not forget old login records");
        }
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
        let order = self.inner.status_order.lock().await;
        match self.inner.store.enforce_deadlines(self.now(), self.lost_before()).await {
            Ok(changes) => {
                let mut timed_out = BTreeSet::new();
                for change in changes.iter().filter(|c| c.status == ResultStatus::Timeout) {
                    self.send_stop(&change.instance_id, &change.task());
                    timed_out.insert(change.invocation_id.clone());
                }
                self.publish_changes(&changes).await;
                drop(order);
                // Agents held by other replicas are stopped from there.
                let notes: Vec<_> = timed_out
                    .into_iter()
                    .map(|invoke_id| crate::store::bus::Note::Stop { invoke_id })
                    .collect();
                self.tell(&notes).await;
                self.release_held(&changes).await;
            }
            Err(e) => tracing::warn!(error = %e, "deadline check failed"),
        }
    }
}

#[cfg(test)]
mod tests;
