//! Rate control (issue 14, AWS Run Command's `MaxConcurrency` / `MaxErrors`): an invocation's
//! instances beyond its concurrency are stored held (`Pending`, not delivered); each time some
//! of its results end, [`Dispatcher::release_held`] takes the next step, in a write
//! transaction so that replicas never hand out one slot twice: the held results that fit are
//! released and delivered (here when this replica holds their agents, otherwise by the replica
//! that does, told by `Note::Run`), or, once failures pass `max_errors`, the ones not started
//! end `Cancelled` / `ExceedMaxErrors`.

use super::Dispatcher;
use crate::store::ResultChange;
use crate::store::bus::Note;
use std::collections::BTreeSet;
use std::time::Duration;

/// How often every invocation with held results is looked at, whatever ended: the safety net
/// for a release lost with a replica that died between a commit and its release.
pub(super) const RELEASE_EVERY: Duration = Duration::from_secs(5);

impl Dispatcher {
    /// Rate control's step after `changes` were committed: for each invocation that had a
    /// result end, releases held results into the slots freed, or cancels those not started
    /// once failures pass its `max_errors`. Invocations without rate control cost one read.
    /// Call it with neither `status_order` nor `delivering` held.
    pub(super) async fn release_held(&self, changes: &[ResultChange]) {
        let ended: BTreeSet<&str> = changes
            .iter()
            .filter(|c| c.status.is_terminal())
            .map(|c| c.invocation_id.as_str())
            .collect();
        if ended.is_empty() {
            return;
        }
        let ended: Vec<&str> = ended.into_iter().collect();
        match self.inner.store.rate_controlled(&ended).await {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => self.take_turns(&ids).await,
            Err(e) => tracing::warn!(error = %e, "could not look for held results to release; retrying within 5 s"),
        }
    }

    /// The safety net: the next step for every invocation with held results.
    pub(super) async fn release_all_held(&self) {
        match self.inner.store.invocations_holding().await {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => self.take_turns(&ids).await,
            Err(e) => tracing::warn!(error = %e, "could not look for held results to release"),
        }
    }

    async fn take_turns(&self, invoke_ids: &[String]) {
        // `delivering` first (as a launch takes it): nothing hands out the released results
        // before they are sent here; then `status_order`, for the cancellations' events.
        let delivering = self.inner.delivering.lock().await;
        let order = self.inner.status_order.lock().await;
        let window = self.inner.settings.delivery_window.as_millis() as i64;
        let turns = match self.inner.store.release_turns(invoke_ids, self.now(), window).await {
            Ok(turns) => turns,
            Err(e) => {
                tracing::warn!(error = %e, "could not release held results; retrying within 5 s");
                return;
            }
        };
        let cancelled: Vec<ResultChange> = turns.iter().flat_map(|t| t.cancelled.iter().cloned()).collect();
        for change in &cancelled {
            // Unsent, but possibly on its way from another replica: stop it there too.
            self.send_stop(&change.instance_id, &change.invocation_id);
        }
        self.publish_changes(&cancelled).await;
        drop(order);
        let mut notes = Vec::new();
        for turn in &turns {
            if !turn.released.is_empty() {
                if let Err(e) = self.send_unsent_here(&turn.invoke_id).await {
                    tracing::warn!(invoke_id = %turn.invoke_id, error = %e, "could not deliver released results");
                }
                notes.push(Note::Run {
                    invoke_id: turn.invoke_id.clone(),
                });
            }
            if !turn.cancelled.is_empty() {
                notes.push(Note::Stop {
                    invoke_id: turn.invoke_id.clone(),
                });
            }
        }
        drop(delivering);
        // Released results whose agents other replicas hold are delivered from there.
        self.tell(&notes).await;
    }
}
