//! Execution plans (migration 0015): storing a scheduled invocation and its targets, finding the
//! schedules that are due, and starting an execution, on a schedule or at an instance's boot.
//!
//! Starting an execution claims it and inserts its results in one write transaction: the claim
//! is a conditional update (`next_run_at` still the value read, or the target's `boot_id` still
//! the old boot), made in turn with every other writer (SQLite's single writer, PostgreSQL's
//! write lock, [`Store::write_tx`]). So among replicas exactly one starts each execution, and one
//! that dies before its commit leaves the row due for the others: never twice, never skipped.

use super::commands::insert_command;
use super::db::{Tx, query, query_scalar};
use super::invocations::{CreatedInvocation, NewInvocation};
use super::{Result, Store, bind_spec, now_ms};
use crate::protocol::RepeatMode;
use std::collections::HashMap;

/// The plan of a scheduled invocation to create (`Once` goes through `create_invocation`).
#[derive(Debug, Clone)]
pub struct NewPlan {
    /// `Period`, `NextRebootOnly` or `EveryReboot`.
    pub repeat_mode: RepeatMode,
    /// As given, for `Period`.
    pub frequency: Option<String>,
    /// When a `Period` plan first runs.
    pub first_run_at: Option<i64>,
}

/// A schedule whose next execution is due.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DueSchedule {
    pub id: String,
    /// The due time read: the claim succeeds only if it is still this.
    pub next_run_at: i64,
    pub frequency: String,
}

/// An execution just started: its number and the result id of each target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedExecution {
    pub repeats: u32,
    pub result_ids: HashMap<String, i64>,
}

/// An execution started for one instance at its boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootExecution {
    pub invoke_id: String,
    pub repeats: u32,
    pub result_id: i64,
}

impl Store {
    /// Stores an invocation with a plan and its targets, `Scheduled`, with no results yet (and,
    /// when asked, the retained command), in one transaction. Boot plans remember the boot each
    /// target is on now: the next one runs it.
    pub async fn create_scheduled_invocation(&self, new: &NewInvocation, plan: &NewPlan) -> Result<CreatedInvocation> {
        let mut tx = self.write_tx().await?;
        let command_id = match &new.keep {
            Some((command, quota)) => Some(insert_command(&mut tx, command, *quota).await?),
            None => new.command_id.clone(),
        };
        let id = super::ids::new_id("t");
        let insert = query(
            "INSERT INTO invocations (id, command_id, name, type, content, working_dir, timeout_secs, username, \
             enable_parameter, parameters, creator, created_at, repeat_mode, frequency, schedule_state, next_run_at, \
             repeats) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'Scheduled', $15, 0)",
        )
        .bind(&id)
        .bind(&command_id)
        .bind(&new.name);
        bind_spec(insert, &new.spec)
            .bind(sqlx::types::Json(&new.parameters))
            .bind(&new.creator)
            .bind(now_ms())
            .bind(plan.repeat_mode.as_str())
            .bind(&plan.frequency)
            .bind(plan.first_run_at)
            .execute(&mut tx)
            .await?;
        query(
            "INSERT INTO plan_targets (invocation_id, instance_id, boot_id) \
             SELECT $1, value, (SELECT boot_id FROM instances WHERE id = value) FROM json_each($2)",
        )
        .bind(&id)
        .bind(sqlx::types::Json(&new.instance_ids))
        .execute(&mut tx)
        .await?;
        super::invocations::record_target(&mut tx, &id, new).await?;
        if let Some(token) = &new.client_token {
            super::invocations::claim_client_token(&mut tx, &id, token).await?;
        }
        tx.commit().await?;
        Ok(CreatedInvocation {
            id,
            command_id,
            result_ids: HashMap::new(),
        })
    }

    /// The instances a scheduled invocation runs on, in id order (none for a one-time one).
    pub async fn plan_targets(&self, invoke_id: &str) -> Result<Vec<String>> {
        query_scalar("SELECT instance_id FROM plan_targets WHERE invocation_id = $1 ORDER BY instance_id")
            .bind(invoke_id)
            .fetch_all(&self.pool)
            .await
    }

    /// Up to `limit` schedules due at `now`, the longest due first.
    pub async fn due_schedules(&self, now: i64, limit: u64) -> Result<Vec<DueSchedule>> {
        query(
            "SELECT id, next_run_at, frequency FROM invocations WHERE next_run_at <= $1 \
             AND schedule_state = 'Scheduled' AND frequency IS NOT NULL ORDER BY next_run_at LIMIT $2",
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
    }

    /// Starts the execution of a schedule due at `due`, if it is still due then (no other
    /// replica started it): moves the schedule on to `next` (`None`: none left, the schedule
    /// ends) and inserts one `Pending` result per target, deliverable until `deliver_by`.
    /// `None` when another replica, or a stop, came first.
    pub async fn start_execution(
        &self,
        invoke_id: &str,
        due: i64,
        next: Option<i64>,
        deliver_by: i64,
    ) -> Result<Option<StartedExecution>> {
        let mut tx = self.write_tx().await?;
        let claimed: Option<i64> = query_scalar(
            "UPDATE invocations SET next_run_at = $3, repeats = repeats + 1, \
             schedule_state = CASE WHEN $3 IS NULL THEN 'Ended' ELSE schedule_state END, \
             n_pending = n_pending + (SELECT COUNT(*) FROM plan_targets WHERE invocation_id = $1) \
             WHERE id = $1 AND next_run_at = $2 AND schedule_state = 'Scheduled' RETURNING repeats",
        )
        .bind(invoke_id)
        .bind(due)
        .bind(next)
        .fetch_optional(&mut tx)
        .await?;
        let Some(repeats) = claimed else {
            tx.commit().await?;
            return Ok(None);
        };
        let result_ids = query(
            "INSERT INTO results (invocation_id, instance_id, status, deliver_by, repeats) \
             SELECT $1, instance_id, 'Pending', $2, $3 FROM plan_targets WHERE invocation_id = $1 \
             RETURNING id, instance_id",
        )
        .bind(invoke_id)
        .bind(deliver_by)
        .bind(repeats)
        .fetch_all::<(i64, String)>(&mut tx)
        .await?
        .into_iter()
        .map(|(id, instance)| (instance, id))
        .collect();
        query("UPDATE plan_targets SET runs = runs + 1 WHERE invocation_id = $1")
            .bind(invoke_id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(Some(StartedExecution {
            repeats: repeats as u32,
            result_ids,
        }))
    }

    /// Records the boot an instance's agent connected from and starts, for that instance, the
    /// boot plans it has not run in this boot: every `EveryReboot` one, and each
    /// `NextRebootOnly` one it has not run yet. A target with no boot known (its agent had not
    /// said, or the plan is older than the instance's first report) takes this boot as the one
    /// it was created in, without running.
    pub async fn start_boot_executions(
        &self,
        instance_id: &str,
        boot_id: &str,
        deliver_by: i64,
    ) -> Result<Vec<BootExecution>> {
        let mut tx = self.write_tx().await?;
        query("UPDATE instances SET boot_id = $2 WHERE id = $1")
            .bind(instance_id)
            .bind(boot_id)
            .execute(&mut tx)
            .await?;
        let waiting: Vec<(String, Option<String>)> = query(
            "SELECT t.invocation_id, t.boot_id FROM plan_targets t JOIN invocations i ON i.id = t.invocation_id \
             WHERE t.instance_id = $1 AND i.schedule_state = 'Scheduled' \
             AND (i.repeat_mode = 'EveryReboot' OR (i.repeat_mode = 'NextRebootOnly' AND t.runs = 0)) \
             AND (t.boot_id IS NULL OR t.boot_id <> $2) ORDER BY i.created_at",
        )
        .bind(instance_id)
        .bind(boot_id)
        .fetch_all(&mut tx)
        .await?;
        let mut started = Vec::new();
        for (invoke_id, was) in waiting {
            if was.is_none() {
                query("UPDATE plan_targets SET boot_id = $3 WHERE invocation_id = $1 AND instance_id = $2")
                    .bind(&invoke_id)
                    .bind(instance_id)
                    .bind(boot_id)
                    .execute(&mut tx)
                    .await?;
                continue;
            }
            let runs: i64 = query_scalar(
                "UPDATE plan_targets SET boot_id = $3, runs = runs + 1 \
                 WHERE invocation_id = $1 AND instance_id = $2 RETURNING runs",
            )
            .bind(&invoke_id)
            .bind(instance_id)
            .bind(boot_id)
            .fetch_one(&mut tx)
            .await?;
            let result_id = start_one(&mut tx, &invoke_id, instance_id, runs, deliver_by).await?;
            started.push(BootExecution {
                invoke_id,
                repeats: runs as u32,
                result_id,
            });
        }
        // A next-boot plan every target has run is over.
        query(
            "UPDATE invocations SET schedule_state = 'Ended' WHERE schedule_state = 'Scheduled' \
             AND repeat_mode = 'NextRebootOnly' AND id IN (SELECT invocation_id FROM plan_targets WHERE instance_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM plan_targets t WHERE t.invocation_id = invocations.id AND t.runs = 0)",
        )
        .bind(instance_id)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(started)
    }
}

/// Inserts the `Pending` result of execution `repeats` of an invocation on one instance.
async fn start_one(tx: &mut Tx, invoke_id: &str, instance_id: &str, repeats: i64, deliver_by: i64) -> Result<i64> {
    let id: i64 = query_scalar(
        "INSERT INTO results (invocation_id, instance_id, status, deliver_by, repeats) \
         VALUES ($1, $2, 'Pending', $3, $4) RETURNING id",
    )
    .bind(invoke_id)
    .bind(instance_id)
    .bind(deliver_by)
    .bind(repeats)
    .fetch_one(&mut *tx)
    .await?;
    query("UPDATE invocations SET n_pending = n_pending + 1, repeats = CASE WHEN repeats < $2 THEN $2 ELSE repeats END WHERE id = $1")
        .bind(invoke_id)
        .bind(repeats)
        .execute(&mut *tx)
        .await?;
    Ok(id)
}

/// Ends a schedule as a user's stop does: all of it (no execution starts again), or, for some
/// instances, their part (the schedule stops once no target is left).
pub(super) async fn stop_schedule(tx: &mut Tx, invoke_id: &str, instance_ids: Option<&[String]>) -> Result<()> {
    if let Some(ids) = instance_ids {
        query("DELETE FROM plan_targets WHERE invocation_id = $1 AND instance_id IN (SELECT value FROM json_each($2))")
            .bind(invoke_id)
            .bind(sqlx::types::Json(ids))
            .execute(&mut *tx)
            .await?;
    }
    query(
        "UPDATE invocations SET schedule_state = 'Stopped', next_run_at = NULL \
         WHERE id = $1 AND schedule_state = 'Scheduled' \
         AND ($2 OR NOT EXISTS (SELECT 1 FROM plan_targets WHERE invocation_id = $1))",
    )
    .bind(invoke_id)
    .bind(instance_ids.is_none())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{InvocationStatus, ResultStatus, ScheduleState};
    use crate::store::invocations::tests::new_invocation;
    use crate::store::scratch::ScratchDatabase;

    fn rate_plan(first_run_at: i64) -> NewPlan {
        NewPlan {
            repeat_mode: RepeatMode::Period,
            frequency: Some("rate(1m)".into()),
            first_run_at: Some(first_run_at),
        }
    }

    async fn add_instance(store: &Store, id: &str, boot_id: Option<&str>) {
        query(
            "INSERT INTO instances (id, name, hostname, region_id, os_type, os_name, ip_addresses, \
             agent_version, supported_command_types, secret_hash, activation_id, registered_at, boot_id) \
             VALUES ($1, $1, 'h', 'local', 'linux', 'x', '[]', '0', '[]', 'h', 'a', 0, $2)",
        )
        .bind(id)
        .bind(boot_id)
        .execute(&store.pool)
        .await
        .unwrap();
    }

    crate::store::both_backends! {
    async fn two_claimers_of_one_due_execution_start_it_once(store) {
        let id = store
            .create_scheduled_invocation(&new_invocation(&["i-a", "i-b"], 0), &rate_plan(1000))
            .await
            .unwrap()
            .id;

        for round in 0..10i64 {
            let due = 1000 + round * 60_000;
            let (one, two) = tokio::join!(
                store.start_execution(&id, due, Some(due + 60_000), i64::MAX),
                store.start_execution(&id, due, Some(due + 60_000), i64::MAX),
            );
            let won: Vec<StartedExecution> = [one.unwrap(), two.unwrap()].into_iter().flatten().collect();
            assert_eq!(won.len(), 1, "round {round}: exactly one claimer starts the execution");
            assert_eq!(won[0].repeats, round as u32 + 1);
            assert_eq!(won[0].result_ids.len(), 2);
        }

        let row = store.invocation(&id).await.unwrap();
        assert_eq!(row.plan.repeats, 10);
        assert_eq!(row.counts.0.get(&ResultStatus::Pending), Some(&20), "{:?}", row.counts);
        assert_eq!(store.execution_results(&id).await.unwrap().len(), 20);
        assert_eq!(store.results(&id).await.unwrap().len(), 2, "the latest execution per instance");
        assert!(store.results(&id).await.unwrap().iter().all(|r| r.repeats == 10));
    }

    async fn a_schedule_is_scheduled_between_executions_and_a_stop_ends_it(store) {
        let id = store
            .create_scheduled_invocation(&new_invocation(&["i-a"], 0), &rate_plan(5_000))
            .await
            .unwrap()
            .id;
        let row = store.invocation(&id).await.unwrap();
        assert_eq!(row.status(), InvocationStatus::Scheduled);
        assert_eq!((row.plan.repeats, row.plan.next_run_at), (0, Some(5_000)));
        assert!(store.due_schedules(4_999, 10).await.unwrap().is_empty());
        assert_eq!(store.due_schedules(5_000, 10).await.unwrap().len(), 1);

        store.start_execution(&id, 5_000, Some(65_000), i64::MAX).await.unwrap().unwrap();
        assert_eq!(store.invocation(&id).await.unwrap().status(), InvocationStatus::Pending);
        query("UPDATE results SET status = 'Success' WHERE invocation_id = $1")
            .bind(&id)
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(store.invocation(&id).await.unwrap().status(), InvocationStatus::Scheduled);
        let sql: String = query_scalar("SELECT status FROM invocations WHERE id = $1")
            .bind(&id)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(sql, "Scheduled", "the SQL status agrees");

        store.stop_results(&id, None, 70_000, "ann").await.unwrap();

        let row = store.invocation(&id).await.unwrap();
        assert_eq!((row.plan.schedule, row.plan.next_run_at), (Some(ScheduleState::Stopped), None));
        assert_eq!(row.status(), InvocationStatus::Stopped);
        assert!(store.due_schedules(i64::MAX, 10).await.unwrap().is_empty());
        assert!(
            store.start_execution(&id, 65_000, Some(125_000), i64::MAX).await.unwrap().is_none(),
            "a stopped schedule starts nothing, even for a claimer that read it due before the stop"
        );
    }

    async fn a_deregistered_instance_leaves_its_schedules_and_one_left_empty_ends(store) {
        let (a, b) = (
            crate::store::tags::tests::enrol(&store, "local", "a", &[]).await,
            crate::store::tags::tests::enrol(&store, "local", "b", &[]).await,
        );
        let alone = store
            .create_scheduled_invocation(&new_invocation(&[a.as_str()], 0), &rate_plan(5_000))
            .await
            .unwrap()
            .id;
        let shared = store
            .create_scheduled_invocation(&new_invocation(&[a.as_str(), b.as_str()], 0), &rate_plan(5_000))
            .await
            .unwrap()
            .id;

        store.delete_instance(&a).await.unwrap();

        let ended = store.invocation(&alone).await.unwrap();
        assert_eq!(
            (ended.plan.schedule, ended.plan.next_run_at),
            (Some(ScheduleState::Ended), None)
        );
        assert_eq!(store.plan_targets(&shared).await.unwrap(), vec![b.clone()]);
        assert_eq!(store.invocation(&shared).await.unwrap().status(), InvocationStatus::Scheduled);
        let due: Vec<String> = store.due_schedules(i64::MAX, 10).await.unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(due, vec![shared], "only the schedule with an instance left runs");
    }

    async fn the_retention_purge_keeps_a_schedule_that_still_runs(store) {
        let live = store
            .create_scheduled_invocation(&new_invocation(&["i-a"], 0), &rate_plan(5_000))
            .await
            .unwrap()
            .id;
        let stopped = store
            .create_scheduled_invocation(&new_invocation(&["i-a"], 0), &rate_plan(5_000))
            .await
            .unwrap()
            .id;
        store.stop_results(&stopped, None, 1, "ann").await.unwrap();

        let purged = store.purge_batch(i64::MAX, 100).await.unwrap();

        assert_eq!(purged, (1, 0), "the stopped schedule goes, the running one stays");
        assert!(store.invocation(&live).await.is_ok());
        assert!(store.invocation(&stopped).await.is_err());
    }

    async fn a_new_boot_starts_boot_plans_once_per_boot(store) {
        add_instance(&store, "i-a", Some("boot-1")).await;
        add_instance(&store, "i-b", None).await;
        let plan = |mode| NewPlan { repeat_mode: mode, frequency: None, first_run_at: None };
        let every = store
            .create_scheduled_invocation(&new_invocation(&["i-a", "i-b"], 0), &plan(RepeatMode::EveryReboot))
            .await
            .unwrap()
            .id;
        let next = store
            .create_scheduled_invocation(&new_invocation(&["i-a"], 0), &plan(RepeatMode::NextRebootOnly))
            .await
            .unwrap()
            .id;
        let started = |v: Vec<BootExecution>| v.into_iter().map(|e| (e.invoke_id, e.repeats)).collect::<Vec<_>>();

        let same_boot = store.start_boot_executions("i-a", "boot-1", i64::MAX).await.unwrap();
        let new_boot = store.start_boot_executions("i-a", "boot-2", i64::MAX).await.unwrap();
        let reconnect = store.start_boot_executions("i-a", "boot-2", i64::MAX).await.unwrap();
        let third_boot = store.start_boot_executions("i-a", "boot-3", i64::MAX).await.unwrap();
        let unknown_first = store.start_boot_executions("i-b", "boot-x", i64::MAX).await.unwrap();

        assert!(same_boot.is_empty(), "the boot the plans were made in runs nothing");
        assert_eq!(started(new_boot), vec![(every.clone(), 1), (next.clone(), 1)]);
        assert!(reconnect.is_empty(), "a reconnect from the same boot runs nothing");
        assert_eq!(started(third_boot), vec![(every.clone(), 2)], "the next boot only once");
        assert!(unknown_first.is_empty(), "a boot first heard of is the baseline");
        let next_row = store.invocation(&next).await.unwrap();
        assert_eq!(next_row.plan.schedule, Some(ScheduleState::Ended));
        let every_row = store.invocation(&every).await.unwrap();
        assert_eq!((every_row.plan.schedule, every_row.plan.repeats), (Some(ScheduleState::Scheduled), 2));
        assert_eq!(every_row.counts.0.get(&ResultStatus::Pending), Some(&2));
        assert_eq!(every_row.status(), InvocationStatus::Pending);
    }
    }

    /// Two replicas (two stores on one PostgreSQL database) race for every execution of twenty
    /// due schedules: each execution starts exactly once.
    #[tokio::test]
    async fn two_replicas_on_postgres_start_each_due_execution_once() {
        let database = ScratchDatabase::create().await.unwrap_or_else(|e| panic!("{e}"));
        let (one, two) = (
            Store::open(&database.url).await.unwrap(),
            Store::open(&database.url).await.unwrap(),
        );
        let mut ids = Vec::new();
        for _ in 0..20 {
            let created = one
                .create_scheduled_invocation(&new_invocation(&["i-a"], 0), &rate_plan(1000))
                .await
                .unwrap();
            ids.push(created.id);
        }

        let claim = |store: Store| async move {
            let mut started = 0;
            for due in store.due_schedules(1000, 100).await.unwrap() {
                let next = Some(due.next_run_at + 60_000);
                if store
                    .start_execution(&due.id, due.next_run_at, next, i64::MAX)
                    .await
                    .unwrap()
                    .is_some()
                {
                    started += 1;
                }
            }
            started
        };
        let (a, b) = tokio::join!(claim(one.clone()), claim(two.clone()));

        assert_eq!(a + b, 20, "one execution per schedule between the two");
        let results: i64 = query_scalar("SELECT COUNT(*) FROM results")
            .fetch_one(&one.pool)
            .await
            .unwrap();
        assert_eq!(results, 20);
        for id in &ids {
            assert_eq!(one.invocation(id).await.unwrap().plan.repeats, 1);
        }
    }
}
