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
