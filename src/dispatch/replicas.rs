//! Several servers on one PostgreSQL (DESIGN §9): this replica's heartbeat, reaping replicas
//! that died, and the notes replicas send each other through the store's bus. A note says
//! which invocation to look at, never what to do with it: the tables say that, so a note that
//! arrives twice, late, or not at all (a lost listener resynchronises) changes nothing that
//! the tables do not.

use super::{Dispatcher, Error, task_for};
use crate::protocol::task_id;
use crate::store::InstanceRow;
use crate::store::bus::{Heard, Note};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a replica says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica silent this long is dead: the others record its agents offline (they reconnect
/// elsewhere) and its work is picked up from the tables.
pub const REPLICA_EXPIRY: Duration = Duration::from_secs(10);
/// How often changes for other replicas' watchers are told, at most once per invocation.
const TELL_EVERY: Duration = Duration::from_millis(100);
/// How often a replica looks for tasks of its agents that nobody sent (a note lost with a
/// listener's connection, a replica that died between storing and sending).
const UNSENT_EVERY: Duration = Duration::from_secs(5);

impl Dispatcher {
    /// This server process's id among the replicas.
    pub fn replica_id(&self) -> &str {
        &self.inner.replica
    }

    /// Joins the replicas sharing the database: registers this process and records offline
    /// every agent held by a replica no longer alive (on SQLite, by an earlier run of this
    /// one). Call before serving agents.
    pub async fn join_replicas(&self) -> Result<(), Error> {
        let now = self.now();
        let store = &self.inner.store;
        store.register_replica(&self.inner.replica, now).await?;
        store.reap_replicas(now - REPLICA_EXPIRY.as_millis() as i64).await?;
        self.count_replicas().await;
        Ok(())
    }

    /// Sets the `replicas_alive` gauge from the replicas' rows.
    async fn count_replicas(&self) {
        match self.inner.store.replica_count().await {
            Ok(count) => {
                self.inner.metrics.replicas.set(count);
            }
            Err(e) => tracing::warn!(error = %e, "could not count the replicas"),
        }
    }

    /// Notes that an invocation changed here, for the other replicas' watchers.
    pub(super) fn changed(&self, invoke_id: &str) {
        let mut changed = self.inner.changed.lock().unwrap_or_else(|e| e.into_inner());
        if !changed.contains(invoke_id) {
            changed.insert(invoke_id.to_string());
        }
    }

    /// Tells the other replicas (nothing on SQLite).
    pub(super) async fn tell(&self, notes: &[Note]) {
        if let Err(e) = self.inner.store.notify(&self.inner.replica, notes).await {
            // They catch up from the tables: watchers when next told, tasks within UNSENT_EVERY.
            tracing::warn!(error = %e, "could not notify the other replicas");
        }
    }

    /// The replica's own loop until shutdown: heartbeat, reaping, notes in and out.
    pub(super) async fn run_replica(self, shutdown: CancellationToken) {
        let store = self.inner.store.clone();
        let mut heard = store.listen(&self.inner.replica, shutdown.clone());
        // The first beat after one period: `join_replicas` registered this replica just now.
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        let mut tell = tokio::time::interval(TELL_EVERY);
        let mut unsent = tokio::time::interval(UNSENT_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // On SQLite there is one process: nothing to keep alive or reap after the start.
                _ = beat.tick(), if store.is_shared() => self.beat().await,
                _ = tell.tick() => self.tell_changes().await,
                _ = unsent.tick(), if store.is_shared() => self.deliver_unsent_here().await,
                Some(heard) = async {
                    match heard.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.hear(heard).await,
            }
        }
        if let Err(e) = store.remove_replica(&self.inner.replica).await {
            tracing::warn!(error = %e, "could not leave the replicas");
        }
    }

    async fn beat(&self) {
        let store = &self.inner.store;
        let now = self.now();
        match store.replica_heartbeat(&self.inner.replica, now).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("this replica was silent too long and counted dead; its agents reconnect"),
            Err(e) => tracing::warn!(error = %e, "could not record this replica alive"),
        }
        match store.reap_replicas(now - REPLICA_EXPIRY.as_millis() as i64).await {
            Ok(reaped) => {
                for replica in reaped {
                    tracing::warn!(
                        replica,
                        "a replica stopped answering; its agents are offline until they reconnect"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not reap dead replicas"),
        }
        self.count_replicas().await;
    }

    async fn tell_changes(&self) {
        let changed = std::mem::take(&mut *self.inner.changed.lock().unwrap_or_else(|e| e.into_inner()));
        if changed.is_empty() {
            return;
        }
        let notes: Vec<Note> = changed
            .into_iter()
            .map(|invoke_id| Note::Changed { invoke_id })
            .collect();
        self.tell(&notes).await;
    }

    async fn hear(&self, heard: Heard) {
        match heard {
            Heard::Note(Note::Run { invoke_id }) => self.deliver_here(&invoke_id).await,
            Heard::Note(Note::Stop { invoke_id }) => self.stop_here(&invoke_id).await,
            Heard::Note(Note::Changed { invoke_id }) => self.inner.watchers.nudge(&invoke_id),
            Heard::Resync => {
                self.inner.watchers.nudge_all();
                self.deliver_unsent_here().await;
                self.stop_all_here().await;
            }
        }
    }

    /// Sends an invocation's unsent tasks to those of its agents connected here.
    async fn deliver_here(&self, invoke_id: &str) {
        if let Err(e) = self.try_deliver_here(invoke_id).await {
            tracing::warn!(invoke_id, error = %e, "could not deliver tasks another replica stored");
        }
    }

    async fn try_deliver_here(&self, invoke_id: &str) -> Result<(), Error> {
        let _delivering = self.inner.delivering.lock().await;
        self.send_unsent_here(invoke_id).await
    }

    /// [`Dispatcher::deliver_here`]'s work; the caller holds `delivering`.
    pub(super) async fn send_unsent_here(&self, invoke_id: &str) -> Result<(), Error> {
        let store = &self.inner.store;
        let unsent = store.unsent_results(invoke_id, self.now()).await?;
        // Connected here, and not already handed to that connection (at its attach, whose
        // record of it as sent may not be committed yet).
        let here: Vec<(i64, String, i64, i64)> = {
            let agents = self.lock_agents();
            unsent
                .into_iter()
                .filter(|(_, instance_id, _, repeats)| {
                    agents.get(instance_id).is_some_and(|link| {
                        !link
                            .tasks
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains_key(&task_id(invoke_id, *repeats as u32))
                    })
                })
                .collect()
        };
        if here.is_empty() {
            return Ok(());
        }
        let invocation = store.invocation(invoke_id).await?;
        let ids: Vec<String> = here.iter().map(|(_, id, _, _)| id.clone()).collect();
        let instances: HashMap<String, InstanceRow> = store
            .instances_by_ids(&ids)
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let tasks: Vec<_> = here
            .iter()
            .filter_map(|(result_id, instance_id, deliver_by, repeats)| {
                let instance = instances.get(instance_id)?;
                Some((
                    instance_id.as_str(),
                    *result_id,
                    task_for(&invocation, instance, *deliver_by, *repeats as u32),
                ))
            })
            .collect();
        self.send_runs(tasks).await;
        Ok(())
    }

    /// Sends every unsent task of the agents connected here, whichever replica stored it.
    async fn deliver_unsent_here(&self) {
        match self
            .inner
            .store
            .unsent_invocations_of(&self.inner.replica, self.now())
            .await
        {
            Ok(invocations) => {
                for invoke_id in invocations {
                    self.deliver_here(&invoke_id).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look for unsent tasks"),
        }
    }

    /// Tells the agents connected here to stop their tasks of an invocation that were stopped.
    async fn stop_here(&self, invoke_id: &str) {
        match self.inner.store.stopped_instances(invoke_id).await {
            Ok(instances) => {
                for (instance_id, repeats) in instances {
                    self.send_stop(&instance_id, &task_id(invoke_id, repeats as u32));
                }
            }
            Err(e) => tracing::warn!(invoke_id, error = %e, "could not read the stopped results"),
        }
    }

    /// After notes may have been missed: every stop of the agents connected here is told again
    /// (an agent ignores a stop for a task it no longer runs).
    async fn stop_all_here(&self) {
        match self.inner.store.stopping_of(&self.inner.replica).await {
            Ok(stops) => {
                for (invoke_id, instance_id, repeats) in stops {
                    self.send_stop(&instance_id, &task_id(&invoke_id, repeats as u32));
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the stopped results"),
        }
    }
}
