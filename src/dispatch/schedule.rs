//! Starting the executions of `Period` plans when they are due, on every replica: each due
//! schedule is claimed in the store ([`crate::store::Store::start_execution`]), so exactly one
//! replica starts each execution, and delivered like a launch's tasks. Boot plans start in
//! `session::attach`, when an agent connects from a new boot.

use super::metrics::Trigger;
use super::plan::Frequency;
use super::{Dispatcher, task_for};
use crate::store::bus::Note;
use crate::store::{DueSchedule, InstanceRow};
use std::collections::HashMap;

/// Schedules claimed per look: more wait for the next tick.
const DUE_PER_LOOK: u64 = 64;

impl Dispatcher {
    /// Starts every execution due now (each once, however many of its slots passed while no
    /// server ran: the next one is the first slot after now, [`Frequency::next_after`]).
    pub(super) async fn start_due_executions(&self) {
        let now = self.now();
        let due = match self.inner.store.due_schedules(now, DUE_PER_LOOK).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for due schedules");
                return;
            }
        };
        for schedule in due {
            if let Err(e) = self.start_execution(&schedule, now).await {
                tracing::warn!(invoke_id = %schedule.id, error = %e, "could not start a scheduled execution");
            }
        }
    }

    async fn start_execution(&self, schedule: &DueSchedule, now: i64) -> Result<(), super::Error> {
        let store = &self.inner.store;
        // Stored only after Frequency::parse accepted it; a value that no longer parses (a later
        // build reading it differently) ends the schedule after this run rather than looping.
        let next = match Frequency::parse(&schedule.frequency) {
            Ok(frequency) => frequency.next_after(schedule.next_run_at, now),
            Err(message) => {
                tracing::warn!(invoke_id = %schedule.id, message, "a stored frequency does not parse; ending its schedule");
                None
            }
        };
        // An execution not delivered by the next one's start is aborted rather than kept: an
        // agent offline for a while would otherwise get a pile of them when it is back.
        let window = now + self.inner.settings.delivery_window.as_millis() as i64;
        let deliver_by = next.map_or(window, |next| window.min(next.max(now + 1)));
        // Held from before the commit until the tasks are queued, as a launch holds it: an
        // agent attaching meanwhile never reads this execution without finding it queued.
        let delivering = self.inner.delivering.lock().await;
        let Some(started) = store
            .start_execution(&schedule.id, schedule.next_run_at, next, deliver_by)
            .await?
        else {
            // Another replica (or a stop) came first.
            return Ok(());
        };
        tracing::info!(invoke_id = %schedule.id, repeats = started.repeats, "started a scheduled execution");
        self.inner.metrics.invocation_started(Trigger::Schedule);
        let invocation = store.invocation(&schedule.id).await?;
        let ids: Vec<String> = started.result_ids.keys().cloned().collect();
        let instances: HashMap<String, InstanceRow> = store
            .instances_by_ids(&ids)
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let tasks: Vec<_> = started
            .result_ids
            .iter()
            .filter_map(|(instance_id, result_id)| {
                let instance = instances.get(instance_id)?;
                Some((
                    instance_id.as_str(),
                    *result_id,
                    task_for(&invocation, instance, deliver_by, started.repeats),
                ))
            })
            .collect();
        self.send_runs(tasks).await;
        drop(delivering);
        self.inner.watchers.nudge(&schedule.id);
        self.tell(&[Note::Run {
            invoke_id: schedule.id.clone(),
        }])
        .await;
        Ok(())
    }
}
