//! Rate control's bookkeeping (issue 14): results held beyond an invocation's concurrency, their
//! release as others end, and the cancellation of those not started once failures pass
//! `max_errors`. Every change happens in a write transaction, in turn with every other writer,
//! so replicas releasing at once never hand out one slot twice.

use super::db::{Tx, parsed, query, query_scalar};
use super::invocations::ResultChange;
use super::{Result, Store};
use crate::protocol::{ErrorCode, RateLimit};

/// An invocation's rate control: the limits as given and as resolved against its instance
/// count, and how many of its results wait their turn.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rate {
    /// As given, for the records; `None`: all at once.
    pub max_concurrency: Option<RateLimit>,
    /// As given; `None`: no limit.
    pub max_errors: Option<RateLimit>,
    /// `max_concurrency` resolved: results delivered or running at once.
    pub concurrency_limit: Option<u64>,
    /// `max_errors` resolved: once more results than this have failed, those not started
    /// are cancelled.
    pub error_limit: Option<u64>,
    /// Results waiting their turn (`n_held`). Ignored in a new invocation: the instances
    /// beyond the concurrency are held.
    pub held: u64,
}

impl Rate {
    /// The instances (of an invocation's, in the order given) held at the start: those beyond
    /// the concurrency. The others are delivered at once.
    pub fn held_at_start<'a>(&self, instance_ids: &'a [String]) -> &'a [String] {
        match self.concurrency_limit {
            Some(limit) => instance_ids.get(limit as usize..).unwrap_or_default(),
            None => &[],
        }
    }

    /// Whether either limit was given.
    pub fn is_set(&self) -> bool {
        self.max_concurrency.is_some() || self.max_errors.is_some()
    }
}

super::db::from_row!(Rate, |row| {
    let text = |column: &str| -> sqlx::Result<Option<RateLimit>> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|t| parsed(column, t)).transpose()
    };
    let count =
        |column: &str| -> sqlx::Result<Option<u64>> { Ok(row.try_get::<Option<i64>, _>(column)?.map(|n| n as u64)) };
    Ok(Rate {
        max_concurrency: text("max_concurrency")?,
        max_errors: text("max_errors")?,
        concurrency_limit: count("concurrency_limit")?,
        error_limit: count("error_limit")?,
        held: row.try_get::<i64, _>("n_held")? as u64,
    })
});

/// What releasing turns did for one invocation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Turns {
    pub invoke_id: String,
    /// Results released: `(result id, instance id, end of their delivery window)`. Pending,
    /// unsent, to be delivered now.
    pub released: Vec<(i64, String, i64)>,
    /// Results not started that ended `Cancelled` / `ExceedMaxErrors`.
    pub cancelled: Vec<ResultChange>,
}

/// An invocation as a release reads it: `(concurrency_limit, error_limit, max_errors as given,
/// results pending, running or stopping, failed-like)`.
type TurnState = (Option<i64>, Option<i64>, Option<String>, i64, i64, i64);

/// The failed-like statuses, the ones `max_errors` counts.
const FAILURES: &str = "n_failed + n_error + n_timeout + n_invalid + n_aborted";

/// Records an invocation's rate control and holds its instances beyond the concurrency, in
/// the transaction that creates it (after its results are inserted).
pub(super) async fn hold_at_start(tx: &mut Tx, invoke_id: &str, rate: &Rate, instance_ids: &[String]) -> Result<()> {
    if !rate.is_set() {
        return Ok(());
    }
    let held = rate.held_at_start(instance_ids);
    query(
        "UPDATE invocations SET max_concurrency = $2, max_errors = $3, concurrency_limit = $4, error_limit = $5, \
         n_held = $6 WHERE id = $1",
    )
    .bind(invoke_id)
    .bind(rate.max_concurrency.map(|r| r.to_string()))
    .bind(rate.max_errors.map(|r| r.to_string()))
    .bind(rate.concurrency_limit.map(|n| n as i64))
    .bind(rate.error_limit.map(|n| n as i64))
    .bind(held.len() as i64)
    .execute(&mut *tx)
    .await?;
    if !held.is_empty() {
        query(
            "UPDATE results SET held = TRUE WHERE invocation_id = $1 \
             AND instance_id IN (SELECT value FROM json_each($2))",
        )
        .bind(invoke_id)
        .bind(sqlx::types::Json(held))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Recounts an invocation's held results after a statement that may have ended some (a stop).
pub(super) async fn recount_held(tx: &mut Tx, invoke_id: &str) -> Result<()> {
    query(
        "UPDATE invocations SET n_held = (SELECT COUNT(*) FROM results WHERE invocation_id = $1 AND held) \
         WHERE id = $1 AND n_held > 0",
    )
    .bind(invoke_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Store {
    /// Of these invocations, those rate control may have something to do for: results held,
    /// or an error limit with results not started. A read, so that a batch of ends of
    /// invocations without rate control costs no write transaction.
    pub async fn rate_controlled(&self, invoke_ids: &[&str]) -> Result<Vec<String>> {
        if invoke_ids.is_empty() {
            return Ok(Vec::new());
        }
        query_scalar(
            "SELECT id FROM invocations WHERE id IN (SELECT value FROM json_each($1)) \
             AND (n_held > 0 OR (error_limit IS NOT NULL AND n_pending > 0))",
        )
        .bind(sqlx::types::Json(invoke_ids))
        .fetch_all(&self.pool)
        .await
    }

    /// Every invocation with results waiting their turn: the safety net's list, should a
    /// release have been lost with the replica that was to make it.
    pub async fn invocations_holding(&self) -> Result<Vec<String>> {
        query_scalar("SELECT id FROM invocations WHERE n_held > 0")
            .fetch_all(&self.pool)
            .await
    }

    /// Takes rate control's next step for each invocation at `now`, in one write transaction:
    /// once more results have failed than its error limit, every result not started (held,
    /// or pending and never sent) ends `Cancelled` / `ExceedMaxErrors`; otherwise held results
    /// are released, oldest first, into the slots free under its concurrency (results pending
    /// unheld, running or stopping take one each), each with a delivery window from now
    /// (`window_ms`). Running results are never touched: they finish.
    pub async fn release_turns(&self, invoke_ids: &[String], now: i64, window_ms: i64) -> Result<Vec<Turns>> {
        let mut tx = self.write_tx().await?;
        let mut all = Vec::new();
        for invoke_id in invoke_ids {
            let state: Option<TurnState> = query(&format!(
                "SELECT concurrency_limit, error_limit, max_errors, n_pending, n_running + n_stopping, {FAILURES} \
                 FROM invocations WHERE id = $1"
            ))
            .bind(invoke_id)
            .fetch_optional(&mut tx)
            .await?;
            // Purged meanwhile.
            let Some((concurrency, error_limit, max_errors, pending, running, failures)) = state else {
                continue;
            };
            let held: i64 = query_scalar("SELECT COUNT(*) FROM results WHERE invocation_id = $1 AND held")
                .bind(invoke_id)
                .fetch_one(&mut tx)
                .await?;
            let mut turns = Turns {
                invoke_id: invoke_id.clone(),
                ..Turns::default()
            };
            match (error_limit, concurrency) {
                (Some(limit), _) if failures > limit => {
                    let info = exceeded_info(failures, limit, max_errors.as_deref());
                    turns.cancelled = query(
                        "UPDATE results SET status = 'Cancelled', held = FALSE, error_code = $3, error_info = $4, \
                         finish_time = $2 WHERE invocation_id = $1 AND status = 'Pending' \
                         AND (held OR sent_at IS NULL) \
                         RETURNING invocation_id, repeats, instance_id, status, exit_code, error_code, error_info",
                    )
                    .bind(invoke_id)
                    .bind(now)
                    .bind(ErrorCode::ExceedMaxErrors.as_str())
                    .bind(&info)
                    .fetch_all(&mut tx)
                    .await?;
                }
                (_, Some(limit)) if held > 0 => {
                    let busy = running + (pending - held);
                    let free = (limit - busy).clamp(0, held);
                    if free > 0 {
                        turns.released = query(
                            "UPDATE results SET held = FALSE, deliver_by = $2 WHERE id IN \
                             (SELECT id FROM results WHERE invocation_id = $1 AND held ORDER BY id LIMIT $3) \
                             RETURNING id, instance_id, deliver_by",
                        )
                        .bind(invoke_id)
                        .bind(now + window_ms)
                        .bind(free)
                        .fetch_all(&mut tx)
                        .await?;
                    }
                }
                _ => {}
            }
            let held_now: i64 = query_scalar("SELECT COUNT(*) FROM results WHERE invocation_id = $1 AND held")
                .bind(invoke_id)
                .fetch_one(&mut tx)
                .await?;
            query("UPDATE invocations SET n_held = $2 WHERE id = $1 AND n_held <> $2")
                .bind(invoke_id)
                .bind(held_now)
                .execute(&mut tx)
                .await?;
            if !turns.released.is_empty() || !turns.cancelled.is_empty() {
                all.push(turns);
            }
        }
        tx.commit().await?;
        Ok(all)
    }
}

/// Why results were not started: "Not started: 3 instances failed and max_errors is 2."
fn exceeded_info(failures: i64, limit: i64, given: Option<&str>) -> String {
    let failed = if failures == 1 {
        "1 instance failed".to_string()
    } else {
        format!("{failures} instances failed")
    };
    match given {
        Some(given) if given.ends_with('%') => {
            format!("Not started: {failed} and max_errors is {given} ({limit} of the invocation's instances).")
        }
        _ => format!("Not started: {failed} and max_errors is {limit}."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ResultStatus;
    use crate::store::invocations::tests::new_invocation;
    use crate::store::now_ms;

    fn instances(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i-{i:02}")).collect()
    }

    fn rated(ids: &[String], concurrency: Option<u64>, errors: Option<u64>) -> crate::store::NewInvocation {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut new = new_invocation(&refs, now_ms() + 60_000);
        new.rate = Rate {
            max_concurrency: concurrency.map(RateLimit::Count),
            max_errors: errors.map(RateLimit::Count),
            concurrency_limit: concurrency,
            error_limit: errors,
            held: 0,
        };
        new
    }

    async fn set_status(store: &Store, invoke_id: &str, instance_id: &str, status: &str) {
        query("UPDATE results SET status = $3 WHERE invocation_id = $1 AND instance_id = $2")
            .bind(invoke_id)
            .bind(instance_id)
            .bind(status)
            .execute(&store.pool)
            .await
            .unwrap();
    }

    async fn held(store: &Store, invoke_id: &str) -> Vec<String> {
        query_scalar("SELECT instance_id FROM results WHERE invocation_id = $1 AND held ORDER BY instance_id")
            .bind(invoke_id)
            .fetch_all(&store.pool)
            .await
            .unwrap()
    }

    crate::store::both_backends! {
    async fn instances_beyond_the_concurrency_are_held_and_released_one_for_each_that_ends(store) {
        let ids = instances(5);
        let id = store.create_invocation(&rated(&ids, Some(2), None)).await.unwrap().id;
        let row = store.invocation(&id).await.unwrap();
        assert_eq!(row.rate.held, 3);
        assert_eq!(row.rate.max_concurrency, Some(RateLimit::Count(2)));
        assert_eq!(held(&store, &id).await, ids[2..].to_vec());
        assert!(
            store.deliveries("i-02", now_ms()).await.unwrap().is_empty(),
            "a held result is not delivered"
        );
        assert!(store.unsent_results(&id, now_ms()).await.unwrap().iter().all(|(_, i, _, _)| i == "i-00" || i == "i-01"));

        // Nothing has ended: no slot is free.
        assert!(store.release_turns(std::slice::from_ref(&id), now_ms(), 60_000).await.unwrap().is_empty());
        set_status(&store, &id, "i-00", "Running").await;
        set_status(&store, &id, "i-01", "Success").await;
        let at = now_ms();
        let turns = store.release_turns(std::slice::from_ref(&id), at, 60_000).await.unwrap();

        assert_eq!(turns.len(), 1);
        let released: Vec<(&str, i64)> = turns[0].released.iter().map(|(_, i, by)| (i.as_str(), *by)).collect();
        assert_eq!(released, vec![("i-02", at + 60_000)], "one slot, a fresh delivery window");
        assert_eq!(store.invocation(&id).await.unwrap().rate.held, 2);
        assert_eq!(store.deliveries("i-02", at).await.unwrap().len(), 1, "released: delivered on connect");
        assert!(
            store.release_turns(std::slice::from_ref(&id), at, 60_000).await.unwrap().is_empty(),
            "the slot is taken by the released result until it ends"
        );
    }
    }

    crate::store::both_backends! {
    async fn a_held_result_is_not_aborted_while_it_waits_past_the_delivery_window(store) {
        let ids = instances(2);
        let id = store.create_invocation(&rated(&ids, Some(1), None)).await.unwrap().id;

        // Both instances are unknown, so the first is aborted at the end of its window.
        let ended = store.enforce_deadlines(now_ms() + 120_000, 0).await.unwrap();

        let ended: Vec<&str> = ended.iter().map(|c| c.instance_id.as_str()).collect();
        assert_eq!(ended, vec!["i-00"]);
        assert_eq!(store.result(&id, "i-01").await.unwrap().status, ResultStatus::Pending);
        let at = now_ms() + 120_000;
        let turns = store.release_turns(std::slice::from_ref(&id), at, 60_000).await.unwrap();
        assert_eq!(turns[0].released.len(), 1);
        assert!(store.enforce_deadlines(at + 59_000, 0).await.unwrap().is_empty(), "its own window now");
        assert_eq!(store.enforce_deadlines(at + 60_000, 0).await.unwrap().len(), 1);
    }
    }

    crate::store::both_backends! {
    async fn past_max_errors_the_results_not_started_are_cancelled_and_running_ones_left(store) {
        let ids = instances(6);
        let id = store.create_invocation(&rated(&ids, Some(3), Some(1))).await.unwrap().id;
        set_status(&store, &id, "i-00", "Failed").await;
        set_status(&store, &id, "i-01", "Running").await;
        assert!(
            store.release_turns(std::slice::from_ref(&id), now_ms(), 60_000).await.unwrap()[0].cancelled.is_empty(),
            "one failure is within max_errors 1: a held one is released instead"
        );
        set_status(&store, &id, "i-03", "Error").await;

        let turns = store.release_turns(std::slice::from_ref(&id), now_ms(), 60_000).await.unwrap();

        let mut cancelled: Vec<&str> = turns[0].cancelled.iter().map(|c| c.instance_id.as_str()).collect();
        cancelled.sort_unstable();
        assert_eq!(cancelled, vec!["i-02", "i-04", "i-05"], "held and unsent pending ones");
        let change = &turns[0].cancelled[0];
        assert_eq!(change.status, ResultStatus::Cancelled);
        assert_eq!(change.error_code, Some(ErrorCode::ExceedMaxErrors));
        assert_eq!(
            change.error_info.as_deref(),
            Some("Not started: 2 instances failed and max_errors is 1.")
        );
        assert_eq!(store.result(&id, "i-01").await.unwrap().status, ResultStatus::Running);
        let row = store.invocation(&id).await.unwrap();
        assert_eq!(row.rate.held, 0);
        assert_eq!(row.counts.0.get(&ResultStatus::Cancelled), Some(&3));
    }
    }

    crate::store::both_backends! {
    async fn stop_cancels_held_results_and_the_held_count_follows(store) {
        let ids = instances(4);
        let id = store.create_invocation(&rated(&ids, Some(1), None)).await.unwrap().id;

        let changes = store.stop_results(&id, None, now_ms(), "ann").await.unwrap();

        assert_eq!(changes.len(), 4);
        assert!(held(&store, &id).await.is_empty());
        assert_eq!(store.invocation(&id).await.unwrap().rate.held, 0);
        assert!(store.invocations_holding().await.unwrap().is_empty());
    }
    }

    crate::store::both_backends! {
    async fn only_invocations_with_rate_control_left_to_do_are_looked_at(store) {
        let ids = instances(3);
        let plain = store.create_invocation(&rated(&ids, None, None)).await.unwrap().id;
        let holding = store.create_invocation(&rated(&ids, Some(1), None)).await.unwrap().id;
        let limited = store.create_invocation(&rated(&ids, None, Some(0))).await.unwrap().id;

        let mut found = store.rate_controlled(&[&plain, &holding, &limited]).await.unwrap();
        found.sort_unstable();
        let mut expected = vec![holding.clone(), limited];
        expected.sort_unstable();

        assert_eq!(found, expected);
        assert_eq!(store.invocations_holding().await.unwrap(), vec![holding]);
    }
    }

    /// Two replicas (two stores on one PostgreSQL database) release turns of one invocation at
    /// the same moment, round after round: between them they fill each freed slot once.
    #[tokio::test]
    async fn two_replicas_releasing_at_once_never_fill_a_slot_twice() {
        let database = crate::store::scratch::ScratchDatabase::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (one, two) = (
            Store::open(&database.url).await.unwrap(),
            Store::open(&database.url).await.unwrap(),
        );
        let ids = instances(40);
        let id = one.create_invocation(&rated(&ids, Some(4), None)).await.unwrap().id;

        let mut released = Vec::new();
        for _ in 0..9 {
            // The four in their turn end; both replicas hear of it at once.
            query("UPDATE results SET status = 'Success' WHERE invocation_id = $1 AND status = 'Pending' AND NOT held")
                .bind(&id)
                .execute(&one.pool)
                .await
                .unwrap();
            let (a, b) = tokio::join!(
                one.release_turns(std::slice::from_ref(&id), now_ms(), 60_000),
                two.release_turns(std::slice::from_ref(&id), now_ms(), 60_000)
            );
            let round: Vec<String> = a
                .unwrap()
                .into_iter()
                .chain(b.unwrap())
                .flat_map(|t| t.released.into_iter().map(|(_, instance, _)| instance))
                .collect();
            assert_eq!(round.len(), 4, "four slots freed, four released: {round:?}");
            released.extend(round);
        }

        let mut unique = released.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 36, "each held result released once");
        assert_eq!(one.invocation(&id).await.unwrap().rate.held, 0);
    }
}
