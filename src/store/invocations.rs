//! Invocations and their per-instance results: creation, listing, stop, deadlines, delivery.

use super::commands::{NewCommand, insert_command};
use super::db::parsed;
use super::db::{query, query_scalar};
use super::{Result, Store, bind_spec, now_ms, placeholders};
use crate::protocol::{
    CommandSpec, ErrorCode, InvocationStatus, RepeatMode, ResultStatus, ScheduleState, Tag, task_id,
};
use std::collections::BTreeMap;

/// An invocation to create.
#[derive(Debug, Clone)]
pub struct NewInvocation {
    pub name: String,
    /// Content as submitted (decoded): parameters are filled per instance at delivery.
    pub spec: CommandSpec,
    pub parameters: BTreeMap<String, String>,
    pub creator: String,
    /// Run a retained command (`InvokeCommand`)…
    pub command_id: Option<String>,
    /// …or retain this one (`RunCommand` with `keep_command`), within the quota.
    pub keep: Option<(NewCommand, u64)>,
    pub instance_ids: Vec<String>,
    /// Pending results not started by then are aborted.
    pub deliver_by: i64,
    /// Rate control: the instances beyond its concurrency are held (`store::rate`).
    pub rate: super::rate::Rate,
    /// How the targets were chosen, recorded beside the resolved set.
    pub target: Target,
    /// The invocation's own tags (they select nothing).
    pub invocation_tags: Vec<Tag>,
    /// Claims this `client_token`: when it is already claimed, nothing is stored and
    /// [`Error::ClientTokenUsed`](super::Error::ClientTokenUsed) names the invocation that holds it.
    pub client_token: Option<ClientToken>,
}

/// The tag selector of an invocation, as asked, and the region it was resolved in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub tags: Vec<Tag>,
    pub region_id: Option<String>,
}

/// A `client_token` to claim with a new invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientToken {
    /// The account submitting.
    pub user_id: i64,
    pub token: String,
    /// Identifies the request, so a retry is told from another request reusing the token.
    pub request_hash: String,
    /// A claim made before this (ms) has expired: the token is free again.
    pub expired_before: i64,
}

/// What [`Store::create_invocation`] made.
#[derive(Debug, Clone)]
pub struct CreatedInvocation {
    pub id: String,
    /// The retained command it runs or retained.
    pub command_id: Option<String>,
    /// The result id of each target, by instance id, so deliveries and reports need no lookup.
    pub result_ids: std::collections::HashMap<String, i64>,
}

/// A stored invocation with its per-status result counts.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InvocationRow {
    pub id: String,
    pub command_id: Option<String>,
    pub name: String,
    #[sqlx(flatten)]
    pub spec: CommandSpec,
    #[sqlx(json)]
    pub parameters: BTreeMap<String, String>,
    pub creator: String,
    pub created_at: i64,
    #[sqlx(flatten)]
    pub counts: StatusCounts,
    #[sqlx(flatten)]
    pub rate: super::rate::Rate,
    /// The tag selector it targeted (empty when it named instances only).
    #[sqlx(json)]
    pub target_tags: Vec<Tag>,
    /// The region its tags were resolved in, or that scoped its instance ids.
    pub target_region: Option<String>,
    /// Its own tags (the ECS API's `Tag.N`).
    #[sqlx(json)]
    pub invocation_tags: Vec<Tag>,
    #[sqlx(flatten)]
    pub plan: PlanState,
}

impl InvocationRow {
    /// The overall status, derived from the counts and the schedule.
    pub fn status(&self) -> InvocationStatus {
        InvocationStatus::of(self.counts.0.clone(), self.plan.schedule)
    }
}

/// An invocation's execution plan and where it stands (migration 0015).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanState {
    pub repeat_mode: RepeatMode,
    /// As given: `rate(…)`, `at(…)` or cron with a zone; `None` but for `Period`.
    pub frequency: Option<String>,
    /// `None` for `Once`.
    pub schedule: Option<ScheduleState>,
    /// When the next execution of a `Period` plan is due (ms), while it is `Scheduled`.
    pub next_run_at: Option<i64>,
    /// The highest execution number started (0 before a schedule's first).
    pub repeats: u32,
}

impl Default for PlanState {
    /// A one-time invocation's.
    fn default() -> Self {
        PlanState {
            repeat_mode: RepeatMode::Once,
            frequency: None,
            schedule: None,
            next_run_at: None,
            repeats: 1,
        }
    }
}

super::db::from_row!(PlanState, |row| {
    let schedule: Option<String> = row.try_get("schedule_state")?;
    Ok(PlanState {
        repeat_mode: parsed("repeat_mode", row.try_get("repeat_mode")?)?,
        frequency: row.try_get("frequency")?,
        schedule: schedule.map(|s| parsed("schedule_state", s)).transpose()?,
        next_run_at: row.try_get("next_run_at")?,
        repeats: row.try_get::<i64, _>("repeats")? as u32,
    })
});

/// How many of an invocation's results are in each status (statuses with none left out), from
/// the `n_<status>` columns: set by `create_invocation`, kept by the trigger of migration 0006.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusCounts(pub BTreeMap<ResultStatus, u64>);

impl StatusCounts {
    /// The number of results in all.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

super::db::from_row!(StatusCounts, |row| {
    let mut counts = BTreeMap::new();
    for status in ResultStatus::ALL {
        let n: i64 = row.try_get(format!("n_{}", status.as_str().to_lowercase()).as_str())?;
        if n > 0 {
            counts.insert(*status, n as u64);
        }
    }
    Ok(StatusCounts(counts))
});

/// A stored result.
#[derive(Debug, Clone)]
pub struct ResultRow {
    pub id: i64,
    pub invocation_id: String,
    pub instance_id: String,
    pub status: ResultStatus,
    pub exit_code: Option<i32>,
    pub error_code: Option<ErrorCode>,
    pub error_info: Option<String>,
    pub output_bytes: u64,
    pub dropped: u64,
    pub start_time: Option<i64>,
    pub finish_time: Option<i64>,
    pub stop_time: Option<i64>,
    /// Which execution of the invocation on this instance, from 1 (Alibaba's `Repeats`).
    pub repeats: u32,
}

/// A result whose status just changed, for live watchers and agents.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultChange {
    pub invocation_id: String,
    /// Which execution, from 1: with the invocation, it names the agent's task ([`Self::task`]).
    pub repeats: u32,
    pub instance_id: String,
    pub status: ResultStatus,
    pub exit_code: Option<i32>,
    pub error_code: Option<ErrorCode>,
    pub error_info: Option<String>,
}

impl ResultChange {
    /// The agent's task id of the result's execution.
    pub fn task(&self) -> String {
        task_id(&self.invocation_id, self.repeats)
    }
}

/// A pending result to hand to its agent, with what the agent needs to run it.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub result_id: i64,
    /// Which execution the result belongs to.
    pub repeats: u32,
    /// The end of the result's delivery window.
    pub deliver_by: i64,
    pub invocation: InvocationRow,
}

/// A task sent but never acknowledged stays `Pending` 10 s past its delivery window: the agent
/// judges the deadline by the server's clock (measured at `Welcome`), and a task it accepted
/// just in time needs a moment to say so.
const SENT_UNACKNOWLEDGED: &str = "status = 'Pending' AND sent_at IS NOT NULL AND deliver_by + 10000 <= $1";

/// The sentence of a result aborted because its agent never acknowledged the task.
pub const NEVER_ACKNOWLEDGED: &str = "The command was sent to the agent, which did not acknowledge it in the delivery \
     window (the instance may be frozen or cut off); it will not run.";

/// Filters of the invocation listing.
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    /// An instance id, an id prefix or an instance name (case-insensitive) that ran it.
    pub instance: Option<String>,
    pub command_id: Option<String>,
    /// The overall status (derived from the results, in SQL).
    pub status: Option<InvocationStatus>,
    /// Only invocations of this plan.
    pub repeat_mode: Option<RepeatMode>,
    /// Created at or after.
    pub since: Option<i64>,
    /// Created before.
    pub until: Option<i64>,
    /// Only those listed after this one (keyset pagination: no offset to skip over).
    pub after: Option<Cursor>,
    pub offset: u64,
    pub limit: u64,
}

/// A place in the listing of invocations (newest first): the last row a page showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

/// One page of a listing of invocations.
#[derive(Debug)]
pub struct InvocationPage {
    pub rows: Vec<InvocationRow>,
    /// All that match the filter (whatever the page).
    pub total: u64,
    /// Where the next page starts, when more rows follow this one.
    pub next: Option<Cursor>,
}

super::db::from_row!(ResultRow, |row| {
    let error_code: Option<String> = row.try_get("error_code")?;
    Ok(ResultRow {
        id: row.try_get("id")?,
        invocation_id: row.try_get("invocation_id")?,
        instance_id: row.try_get("instance_id")?,
        status: parsed("status", row.try_get("status")?)?,
        exit_code: row.try_get("exit_code")?,
        error_code: error_code.map(|c| parsed("error_code", c)).transpose()?,
        error_info: row.try_get("error_info")?,
        output_bytes: row.try_get::<i64, _>("output_bytes")? as u64,
        dropped: row.try_get::<i64, _>("dropped")? as u64,
        start_time: row.try_get("start_time")?,
        finish_time: row.try_get("finish_time")?,
        stop_time: row.try_get("stop_time")?,
        repeats: row.try_get::<i64, _>("repeats")? as u32,
    })
});

super::db::from_row!(ResultChange, |row| {
    let error_code: Option<String> = row.try_get("error_code")?;
    Ok(ResultChange {
        invocation_id: row.try_get("invocation_id")?,
        repeats: row.try_get::<i64, _>("repeats")? as u32,
        instance_id: row.try_get("instance_id")?,
        status: parsed("status", row.try_get("status")?)?,
        exit_code: row.try_get("exit_code")?,
        error_code: error_code.map(|c| parsed("error_code", c)).transpose()?,
        error_info: row.try_get("error_info")?,
    })
});

super::db::from_row!(DeliveryRow, |row| {
    Ok(DeliveryRow {
        result_id: row.try_get("result_id")?,
        repeats: row.try_get::<i64, _>("result_repeats")? as u32,
        deliver_by: row.try_get("result_deliver_by")?,
        invocation: sqlx::FromRow::from_row(row)?,
    })
});

const CHANGE_COLUMNS: &str = "invocation_id, repeats, instance_id, status, exit_code, error_code, error_info";

/// Keeps, of an invocation's results `r`, each instance's latest execution (the only one a
/// one-time invocation has): a lookup in the unique index per row.
pub(super) const LATEST: &str = "r.repeats = (SELECT MAX(l.repeats) FROM results l \
     WHERE l.invocation_id = r.invocation_id AND l.instance_id = r.instance_id)";

impl Store {
    /// Stores an invocation, one `Pending` result per instance and, when asked, the retained
    /// command, all in one transaction.
    pub async fn create_invocation(&self, new: &NewInvocation) -> Result<CreatedInvocation> {
        let now = now_ms();

        let mut tx = self.write_tx().await?;
        let command_id = match &new.keep {
            Some((command, quota)) => Some(insert_command(&mut tx, command, *quota).await?),
            None => new.command_id.clone(),
        };
        let id = super::ids::new_id("t");
        let insert = query(
            "INSERT INTO invocations (id, command_id, name, type, content, working_dir, timeout_secs, username, \
             enable_parameter, parameters, creator, created_at, n_pending) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&id)
        .bind(&command_id)
        .bind(&new.name);
        bind_spec(insert, &new.spec)
            .bind(sqlx::types::Json(&new.parameters))
            .bind(&new.creator)
            .bind(now)
            // Every result starts Pending (the trigger counts changes from there).
            .bind(new.instance_ids.len() as i64)
            .execute(&mut tx)
            .await?;
        // One statement for every target: the ids travel as one JSON array (binding thousands
        // of `$N` costs sqlx-sqlite a scan of the names per parameter).
        let result_ids = query(
            "INSERT INTO results (invocation_id, instance_id, status, deliver_by) \
             SELECT $1, value, 'Pending', $2 FROM json_each($3) RETURNING id, instance_id",
        )
        .bind(&id)
        .bind(new.deliver_by)
        .bind(sqlx::types::Json(&new.instance_ids))
        .fetch_all::<(i64, String)>(&mut tx)
        .await?
        .into_iter()
        .map(|(id, instance)| (instance, id))
        .collect();
        super::rate::hold_at_start(&mut tx, &id, &new.rate, &new.instance_ids).await?;
        record_target(&mut tx, &id, new).await?;
        if let Some(token) = &new.client_token {
            claim_client_token(&mut tx, &id, token).await?;
        }
        tx.commit().await?;
        Ok(CreatedInvocation {
            id,
            command_id,
            result_ids,
        })
    }

    /// The invocation a `client_token` of this account names, and the hash of the request that
    /// claimed it, unless the claim expired (made before `expired_before`).
    pub async fn client_token_claim(
        &self,
        user_id: i64,
        token: &str,
        expired_before: i64,
    ) -> Result<Option<(String, String)>> {
        query(
            "SELECT invocation_id, request_hash FROM client_tokens \
             WHERE user_id = $1 AND token = $2 AND created_at >= $3",
        )
        .bind(user_id)
        .bind(token)
        .bind(expired_before)
        .fetch_optional(&self.pool)
        .await
    }

    /// One invocation with its counts.
    pub async fn invocation(&self, invoke_id: &str) -> Result<InvocationRow> {
        query("SELECT * FROM invocations WHERE id = $1")
            .bind(invoke_id)
            .fetch_one(&self.pool)
            .await
    }

    /// Invocations matching the filter, newest first, with counts, and the total matching.
    pub async fn list_invocations(&self, filter: &InvocationFilter) -> Result<InvocationPage> {
        // The prefix is a range over the indexed `results.instance_id` (ids are [a-z0-9-], all
        // below '~'), so the filter is literal text, never a pattern, and needs no scan; a name
        // is looked up in `instances` first.
        let conditions = "WHERE ($1 IS NULL OR i.command_id = $1) \
             AND ($2 IS NULL OR i.id IN (SELECT r.invocation_id FROM results r \
                  WHERE (r.instance_id >= $2 AND r.instance_id < $2 || '~') \
                  OR r.instance_id IN (SELECT n.id FROM instances n WHERE lower(n.name) = lower($2)))) \
             AND ($3 IS NULL OR i.created_at >= $3) AND ($4 IS NULL OR i.created_at < $4) \
             AND ($5 IS NULL OR i.status = $5) AND ($6 IS NULL OR i.repeat_mode = $6)";
        let status = filter.status.map(|s| s.as_str());
        let repeat_mode = filter.repeat_mode.map(|m| m.as_str());
        let total: i64 = query_scalar(&format!("SELECT COUNT(*) FROM invocations i {conditions}"))
            .bind(&filter.command_id)
            .bind(&filter.instance)
            .bind(filter.since)
            .bind(filter.until)
            .bind(status)
            .bind(repeat_mode)
            .fetch_one(&self.pool)
            .await?;
        // After a cursor: an upper bound on `created_at` the indexes can seek to, then the
        // rows of the cursor's own millisecond that sort before it left out.
        let (after_at, after_id) = match &filter.after {
            Some(c) => (Some(c.created_at), Some(c.id.as_str())),
            None => (None, None),
        };
        let mut rows: Vec<InvocationRow> = query(&format!(
            "SELECT i.* FROM invocations i {conditions} \
             AND ($7 IS NULL OR (i.created_at <= $7 AND NOT (i.created_at = $7 AND i.id <= $8))) \
             ORDER BY i.created_at DESC, i.id LIMIT $9 OFFSET $10"
        ))
        .bind(&filter.command_id)
        .bind(&filter.instance)
        .bind(filter.since)
        .bind(filter.until)
        .bind(status)
        .bind(repeat_mode)
        .bind(after_at)
        .bind(after_id)
        .bind(filter.limit as i64 + 1)
        .bind(filter.offset as i64)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() as u64 > filter.limit;
        rows.truncate(filter.limit as usize);
        let next = rows.last().filter(|_| more).map(|last| Cursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        Ok(InvocationPage {
            rows,
            total: total as u64,
            next,
        })
    }

    /// The results of these instances in an invocation (those it has; each instance's latest
    /// execution), in instance id order.
    pub async fn results_of(&self, invoke_id: &str, instance_ids: &[String]) -> Result<Vec<ResultRow>> {
        let rows: Vec<ResultRow> = query(&format!(
            "SELECT * FROM results r WHERE invocation_id = $1 \
                 AND instance_id IN (SELECT value FROM json_each($2)) AND {LATEST} ORDER BY instance_id"
        ))
        .bind(invoke_id)
        .bind(sqlx::types::Json(instance_ids))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// A page of an invocation's results (each instance's latest execution) in instance id order,
    /// of one status or all.
    pub async fn results_page(
        &self,
        invoke_id: &str,
        status: Option<ResultStatus>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<ResultRow>> {
        let rows: Vec<ResultRow> = query(&format!(
            "SELECT * FROM results r WHERE invocation_id = $1 AND ($2 IS NULL OR status = $2) AND {LATEST} \
                 ORDER BY instance_id LIMIT $3 OFFSET $4"
        ))
        .bind(invoke_id)
        .bind(status.map(|s| s.as_str()))
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// The results of an invocation, each instance's latest execution, ordered by instance id.
    pub async fn results(&self, invoke_id: &str) -> Result<Vec<ResultRow>> {
        let rows: Vec<ResultRow> = query(&format!(
            "SELECT * FROM results r WHERE invocation_id = $1 AND {LATEST} ORDER BY instance_id"
        ))
        .bind(invoke_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Every result of every execution of an invocation, by execution, then instance id.
    pub async fn execution_results(&self, invoke_id: &str) -> Result<Vec<ResultRow>> {
        let rows: Vec<ResultRow> =
            query("SELECT * FROM results WHERE invocation_id = $1 ORDER BY repeats, instance_id")
                .bind(invoke_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows)
    }

    /// One instance's result of an invocation: of execution `repeats`, or the latest.
    pub async fn result(&self, invoke_id: &str, instance_id: &str) -> Result<ResultRow> {
        self.result_of_execution(invoke_id, instance_id, None).await
    }

    /// One instance's result of execution `repeats` of an invocation (the latest when `None`).
    pub async fn result_of_execution(
        &self,
        invoke_id: &str,
        instance_id: &str,
        repeats: Option<u32>,
    ) -> Result<ResultRow> {
        let row: ResultRow = query(
            "SELECT * FROM results WHERE invocation_id = $1 AND instance_id = $2 \
             AND ($3 IS NULL OR repeats = $3) ORDER BY repeats DESC LIMIT 1",
        )
        .bind(invoke_id)
        .bind(instance_id)
        .bind(repeats.map(i64::from))
        .fetch_one(&self.pool)
        .await?;
        Ok(row)
    }

    /// Stops results of an invocation (all, or those of the given instances) at `now`, on behalf
    /// of `by`: `Pending` ones become `Cancelled`, `Running` ones `Stopping`; a schedule starts
    /// no execution again (for those instances). Returns the changed results.
    pub async fn stop_results(
        &self,
        invoke_id: &str,
        instance_ids: Option<&[String]>,
        now: i64,
        by: &str,
    ) -> Result<Vec<ResultChange>> {
        // All results, or the named instances in batches (SQLite caps variables per statement).
        let batches: Vec<Option<&[String]>> = match instance_ids {
            Some(ids) => ids.chunks(500).map(Some).collect(),
            None => vec![None],
        };
        let cancelled = format!("Cancelled by {by} before it started.");
        let stopped = format!("Stopped by {by}.");
        let mut tx = self.write_tx().await?;
        let mut changes = Vec::new();
        for batch in batches {
            let only = batch
                .map(|ids| format!("AND instance_id IN ({})", placeholders(4, ids.len())))
                .unwrap_or_default();
            for (sql, info) in [
                (
                    format!(
                        "UPDATE results SET status = 'Cancelled', held = FALSE, stop_time = $2, finish_time = $2, \
                         error_info = $3 WHERE invocation_id = $1 AND status = 'Pending' {only} RETURNING {CHANGE_COLUMNS}"
                    ),
                    &cancelled,
                ),
                (
                    format!(
                        "UPDATE results SET status = 'Stopping', stop_time = $2, error_info = $3 \
                         WHERE invocation_id = $1 AND status = 'Running' {only} RETURNING {CHANGE_COLUMNS}"
                    ),
                    &stopped,
                ),
            ] {
                let mut statement = query(&sql).bind(invoke_id).bind(now).bind(info);
                for id in batch.unwrap_or_default() {
                    statement = statement.bind(id);
                }
                changes.extend(statement.fetch_all::<ResultChange>(&mut tx).await?);
            }
        }
        super::rate::recount_held(&mut tx, invoke_id).await?;
        super::plans::stop_schedule(&mut tx, invoke_id, instance_ids).await?;
        tx.commit().await?;
        Ok(changes)
    }

    /// Pending results of an instance that are still within their delivery window at `now`.
    pub async fn deliveries(&self, instance_id: &str, now: i64) -> Result<Vec<DeliveryRow>> {
        query(
            "SELECT r.id AS result_id, r.repeats AS result_repeats, r.deliver_by AS result_deliver_by, i.* \
             FROM results r \
             JOIN invocations i ON i.id = r.invocation_id \
             WHERE r.instance_id = $1 AND r.status = 'Pending' AND NOT r.held AND r.deliver_by > $2 \
             ORDER BY i.created_at, r.repeats",
        )
        .bind(instance_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await
    }

    /// Records that these results' tasks were handed to their agents' connections at `at`
    /// (the first time counts). A result whose agent already answered gets it too: that is
    /// true, and every reader of `sent_at` looks at `Pending` results only.
    ///
    /// The rows are found by id alone. With `status = 'Pending'` in the filter as well,
    /// PostgreSQL chose the `results_status` index whenever its statistics lagged a fan-out
    /// (a few pending results counted, tens of thousands there) and compared every pending
    /// result with every id given: seconds, holding the write lock.
    ///
    /// A write like any other, so it takes its turn ([`Store::write_tx`]): on PostgreSQL, an
    /// update of these rows outside the turn deadlocks with the batching writer, which locks
    /// the same rows (agents answer before this runs) in another order, and one of the two
    /// is cancelled after `deadlock_timeout` (a second).
    pub async fn mark_sent(&self, result_ids: &[i64], at: i64) -> Result<()> {
        if result_ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        query(
            "UPDATE results SET sent_at = $1 WHERE id IN (SELECT CAST(value AS BIGINT) FROM json_each($2)) \
             AND sent_at IS NULL",
        )
        .bind(at)
        .bind(sqlx::types::Json(result_ids))
        .execute(&mut tx)
        .await?;
        tx.commit().await
    }

    /// The result id of an instance's task (an execution of an invocation, named by its task
    /// id), if the task is the instance's own.
    pub async fn result_id(&self, task: &str, instance_id: &str) -> Result<Option<i64>> {
        let (invoke_id, repeats) = crate::protocol::parse_task_id(task);
        query_scalar("SELECT id FROM results WHERE invocation_id = $1 AND instance_id = $2 AND repeats = $3")
            .bind(invoke_id)
            .bind(instance_id)
            .bind(i64::from(repeats))
            .fetch_optional(&self.pool)
            .await
    }

    /// Results an agent lost: running on the server but not held by the agent that reconnected.
    /// They end as `Error` / `ExecutionInterrupted`.
    pub async fn interrupt_unheld(&self, instance_id: &str, held: &[String], now: i64) -> Result<Vec<ResultChange>> {
        let running: Vec<(i64, String, i64)> = query(
            "SELECT id, invocation_id, repeats FROM results WHERE instance_id = $1 AND status IN ('Running', 'Stopping')",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        let lost: Vec<i64> = running
            .into_iter()
            .filter(|(_, invoke_id, repeats)| !held.contains(&task_id(invoke_id, *repeats as u32)))
            .map(|(id, _, _)| id)
            .collect();
        let mut changes = Vec::new();
        if lost.is_empty() {
            return Ok(changes);
        }
        // In turn with the other writers (see `mark_sent`): the batching writer may be
        // writing these rows and their invocation's counts.
        let mut tx = self.write_tx().await?;
        for batch in lost.chunks(500) {
            let sql = format!(
                "UPDATE results SET status = 'Error', error_code = 'ExecutionInterrupted', error_info = $3, \
                 finish_time = $2 WHERE instance_id = $1 AND status IN ('Running', 'Stopping') \
                 AND id IN ({}) RETURNING {CHANGE_COLUMNS}",
                placeholders(4, batch.len())
            );
            let mut statement = query(&sql)
                .bind(instance_id)
                .bind(now)
                .bind(ErrorCode::ExecutionInterrupted.default_info());
            for id in batch {
                statement = statement.bind(*id);
            }
            changes.extend(statement.fetch_all::<ResultChange>(&mut tx).await?);
        }
        tx.commit().await?;
        Ok(changes)
    }

    /// Applies the server's own deadlines at time `now` and returns every result it ended:
    /// pending past the delivery window → `Aborted`; running past timeout + grace → `Timeout`;
    /// running on an instance whose heartbeat is older than `lost_before` → `Error`.
    pub async fn enforce_deadlines(&self, now: i64, lost_before: i64) -> Result<Vec<ResultChange>> {
        // Each statement: the rule, the status it sets, the error code and the sentence (added
        // to the one the result has, for a stop: "Stopped by ann." stays).
        let rules: [(&str, &str, Option<ErrorCode>, &str); 7] = [
            (
                "status = 'Pending' AND NOT held AND deliver_by <= $1 AND NOT EXISTS (SELECT 1 FROM instances WHERE id = results.instance_id)",
                "Aborted",
                Some(ErrorCode::InstanceNotExists),
                ErrorCode::InstanceNotExists.default_info(),
            ),
            (
                "status = 'Pending' AND sent_at IS NULL AND NOT held AND deliver_by <= $1 AND instance_id IN \
                 (SELECT id FROM instances WHERE online = FALSE AND COALESCE(last_heartbeat_at, 0) <= $2)",
                "Aborted",
                Some(ErrorCode::ClientNotRunning),
                ErrorCode::ClientNotRunning.default_info(),
            ),
            (
                "status = 'Pending' AND sent_at IS NULL AND NOT held AND deliver_by <= $1",
                "Aborted",
                Some(ErrorCode::DeliveryTimeout),
                ErrorCode::DeliveryTimeout.default_info(),
            ),
            // Sent, never acknowledged: the agent refuses the task once its deadline has passed,
            // so after a margin for clocks and frames in flight it will not run.
            (
                SENT_UNACKNOWLEDGED,
                "Aborted",
                Some(ErrorCode::ClientNotResponse),
                NEVER_ACKNOWLEDGED,
            ),
            (
                "status = 'Running' AND deadline <= $1",
                "Timeout",
                Some(ErrorCode::ExecutionTimeout),
                ErrorCode::ExecutionTimeout.default_info(),
            ),
            // A stop the agent never confirmed: the command counts as stopped all the same.
            (
                "status = 'Stopping' AND deadline <= $1",
                "Terminated",
                None,
                "The agent did not confirm that the command ended.",
            ),
            (
                "status IN ('Running', 'Stopping') AND (instance_id IN \
                 (SELECT id FROM instances WHERE online = FALSE AND COALESCE(last_heartbeat_at, 0) <= $2) \
                 OR NOT EXISTS (SELECT 1 FROM instances WHERE id = results.instance_id))",
                "Error",
                Some(ErrorCode::ClientNotResponse),
                ErrorCode::ClientNotResponse.default_info(),
            ),
        ];
        let mut tx = self.write_tx().await?;
        let mut changes = Vec::new();
        for (rule, status, code, info) in rules {
            let sql = format!(
                "UPDATE results SET status = $3, error_code = $4, \
                 error_info = CASE WHEN status = 'Stopping' THEN COALESCE(error_info || ' ', '') || $5 ELSE $5 END, \
                 finish_time = $1 WHERE {rule} RETURNING {CHANGE_COLUMNS}"
            );
            let ended: Vec<ResultChange> = query(&sql)
                .bind(now)
                .bind(lost_before)
                .bind(status)
                .bind(code.map(ErrorCode::as_str))
                .bind(info)
                .fetch_all(&mut tx)
                .await?;
            changes.extend(ended);
        }
        tx.commit().await?;
        Ok(changes)
    }

    /// Deletes the oldest invocations created before `before`, with their results and output:
    /// whole invocations adding up to about `max_results` results (at least one invocation),
    /// so that one purge transaction never holds the write lock for long. The batch is chosen
    /// and deleted in one write transaction, with one audit entry saying what went (by
    /// `retention`, via `server`): replicas purging at once never delete, or count, one
    /// invocation twice. Returns the invocations and results deleted; `(0, 0)` once nothing
    /// is left to purge. A schedule still running is kept, however old: deleting it would end it.
    pub async fn purge_batch(&self, before: i64, max_results: u64) -> Result<(u64, u64)> {
        let mut tx = self.write_tx().await?;
        let oldest: Vec<(String, i64)> = query(&format!(
            "SELECT id, {COUNT_ALL} FROM invocations WHERE created_at < $1 \
             AND (schedule_state IS NULL OR schedule_state <> 'Scheduled') ORDER BY created_at LIMIT 256"
        ))
        .bind(before)
        .fetch_all(&mut tx)
        .await?;
        let mut ids = Vec::new();
        let mut results = 0u64;
        for (id, n) in oldest {
            if !ids.is_empty() && results + n as u64 > max_results {
                break;
            }
            results += n as u64;
            ids.push(id);
        }
        if ids.is_empty() {
            // End the transaction: one dropped open would cost its connection (`left_in_transaction`).
            tx.commit().await?;
            return Ok((0, 0));
        }
        // Results and output go with them (ON DELETE CASCADE).
        query("DELETE FROM invocations WHERE id IN (SELECT value FROM json_each($1))")
            .bind(sqlx::types::Json(&ids))
            .execute(&mut tx)
            .await?;
        query(
            "INSERT INTO audit_log (at, username, source_ip, via, action, target, detail) \
             VALUES ($1, 'retention', 'local', 'server', 'PurgeInvocations', $2, $3)",
        )
        .bind(now_ms())
        .bind(format!("created before {before}"))
        .bind(format!("{} invocations, {results} results", ids.len()))
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok((ids.len() as u64, results))
    }
}

/// The number of an invocation's results, from its counts.
const COUNT_ALL: &str = "n_pending + n_invalid + n_aborted + n_running + n_success + n_failed + n_error + \
     n_timeout + n_cancelled + n_stopping + n_terminated";

/// Records how an invocation's targets were chosen (only when tags or a region say more than
/// its results do).
pub(super) async fn record_target(tx: &mut super::db::Tx, id: &str, new: &NewInvocation) -> Result<()> {
    if new.target == Target::default() && new.invocation_tags.is_empty() {
        return Ok(());
    }
    query("UPDATE invocations SET target_tags = $2, target_region = $3, invocation_tags = $4 WHERE id = $1")
        .bind(id)
        .bind(sqlx::types::Json(&new.target.tags))
        .bind(&new.target.region_id)
        .bind(sqlx::types::Json(&new.invocation_tags))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Claims a `client_token` for invocation `id`. The primary key `(user_id, token)` decides
/// between concurrent claims (even without the write lock): the loser's insert does nothing,
/// and its transaction is given up, naming the winner.
pub(super) async fn claim_client_token(tx: &mut super::db::Tx, id: &str, token: &ClientToken) -> Result<()> {
    query("DELETE FROM client_tokens WHERE user_id = $1 AND token = $2 AND created_at < $3")
        .bind(token.user_id)
        .bind(token.token.as_str())
        .bind(token.expired_before)
        .execute(&mut *tx)
        .await?;
    let claimed = query(
        "INSERT INTO client_tokens (user_id, token, invocation_id, request_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, token) DO NOTHING",
    )
    .bind(token.user_id)
    .bind(token.token.as_str())
    .bind(id)
    .bind(token.request_hash.as_str())
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    if claimed == 1 {
        return Ok(());
    }
    let (invocation_id, request_hash): (String, String) =
        query("SELECT invocation_id, request_hash FROM client_tokens WHERE user_id = $1 AND token = $2")
            .bind(token.user_id)
            .bind(token.token.as_str())
            .fetch_one(&mut *tx)
            .await?;
    Err(super::Error::ClientTokenUsed {
        invocation_id,
        request_hash,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn new_invocation(instances: &[&str], deliver_by: i64) -> NewInvocation {
        NewInvocation {
            name: "test".into(),
            spec: CommandSpec::shell("echo hi"),
            parameters: BTreeMap::new(),
            creator: "admin".into(),
            command_id: None,
            keep: None,
            instance_ids: instances.iter().map(|s| s.to_string()).collect(),
            deliver_by,
            rate: Default::default(),
            target: Target::default(),
            invocation_tags: Vec::new(),
            client_token: None,
        }
    }

    crate::store::both_backends! {
    async fn an_invocation_starts_with_one_pending_result_per_instance(store) {
        let ids: Vec<String> = (0..450).map(|i| format!("i-{i:03}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();

        let created = store
            .create_invocation(&new_invocation(&refs, now_ms() + 1000))
            .await
            .unwrap();
        let (invoke_id, command_id) = (created.id, created.command_id);
        let inv = store.invocation(&invoke_id).await.unwrap();

        assert!(command_id.is_none());
        assert_eq!(inv.counts.0.get(&ResultStatus::Pending), Some(&450));
    }
    }

    crate::store::both_backends! {
    async fn stop_cancels_pending_results_and_stops_running_ones(store) {
        let id = store
            .create_invocation(&new_invocation(&["i-a", "i-b"], now_ms() + 60_000))
            .await
            .unwrap()
            .id;
        query("UPDATE results SET status = 'Running' WHERE instance_id = 'i-b'")
            .execute(&store.pool)
            .await
            .unwrap();

        let changes = store.stop_results(&id, None, now_ms(), "ann").await.unwrap();

        let statuses: Vec<_> = changes.iter().map(|c| (c.instance_id.as_str(), c.status)).collect();
        assert_eq!(
            statuses,
            vec![("i-a", ResultStatus::Cancelled), ("i-b", ResultStatus::Stopping)]
        );
        assert_eq!(changes[1].error_info.as_deref(), Some("Stopped by ann."));
        assert_eq!(changes[1].error_code, None, "a user's stop is not an error");
        assert!(
            store.stop_results(&id, None, now_ms(), "ann").await.unwrap().is_empty(),
            "a second stop changes nothing"
        );
    }
    }

    crate::store::both_backends! {
    async fn listings_filter_by_overall_status_and_page_in_the_database(store) {
        let mut ids = Vec::new();
        for n in 0..5 {
            let id = store
                .create_invocation(&new_invocation(&[&format!("i-{n}")], now_ms() + 60_000))
                .await
                .unwrap()
                .id;
            ids.push(id);
        }
        for id in &ids[..3] {
            query("UPDATE results SET status = 'Success' WHERE invocation_id = $1")
                .bind(id)
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let filter = |status, offset| InvocationFilter {
            status: Some(status),
            offset,
            limit: 2,
            ..Default::default()
        };

        let page = store
            .list_invocations(&filter(InvocationStatus::Success, 0))
            .await
            .unwrap();
        let (first, total) = (page.rows, page.total);
        let second = store
            .list_invocations(&filter(InvocationStatus::Success, 2))
            .await
            .unwrap()
            .rows;
        let pending = store
            .list_invocations(&filter(InvocationStatus::Pending, 0))
            .await
            .unwrap();
        let (pending, pending_total) = (pending.rows, pending.total);

        assert_eq!((first.len(), second.len(), total), (2, 1, 3));
        assert!(
            first
                .iter()
                .chain(&second)
                .all(|i| i.status() == InvocationStatus::Success)
        );
        assert_eq!(pending_total, 2);
        assert!(pending.iter().all(|i| ids[3..].contains(&i.id)));
    }
    }

    crate::store::both_backends! {
    async fn a_cursor_pages_through_invocations_of_one_millisecond_without_a_repeat(store) {
        for _ in 0..7 {
            store
                .create_invocation(&new_invocation(&["i-a"], now_ms() + 60_000))
                .await
                .unwrap();
        }
        // Five share a millisecond, the page boundary falls inside it.
        query("UPDATE invocations SET created_at = 1000 WHERE id IN (SELECT id FROM invocations LIMIT 5)")
            .execute(&store.pool)
            .await
            .unwrap();
        let everything = store
            .list_invocations(&InvocationFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(everything.next, None);

        let (mut followed, mut after) = (Vec::new(), None);
        loop {
            let page = store
                .list_invocations(&InvocationFilter {
                    limit: 2,
                    after: after.take(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(page.total, 7);
            followed.extend(page.rows.into_iter().map(|r| r.id));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = everything.rows.into_iter().map(|r| r.id).collect();
        assert_eq!(followed, expected);
    }
    }

    crate::store::both_backends! {
    async fn records_are_found_by_instance_name_id_prefix_or_id_and_by_time(store) {
        query(
            "INSERT INTO instances (id, name, hostname, region_id, os_type, os_name, ip_addresses, \
             agent_version, supported_command_types, secret_hash, activation_id, registered_at) \
             VALUES ('i-webaaaa', 'Web-1', 'h', 'local', 'linux', 'x', '[]', '0', '[]', 'h', 'a', 0)",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let web = store
            .create_invocation(&new_invocation(&["i-webaaaa"], now_ms() + 60_000))
            .await
            .unwrap()
            .id;
        store
            .create_invocation(&new_invocation(&["i-dbbbbbb"], now_ms() + 60_000))
            .await
            .unwrap();
        let found = |instance: &str, since: Option<i64>| {
            let filter = InvocationFilter {
                instance: Some(instance.to_string()),
                since,
                limit: 10,
                ..Default::default()
            };
            let store = store.clone();
            async move {
                let rows = store.list_invocations(&filter).await.unwrap().rows;
                rows.into_iter().map(|r| r.id).collect::<Vec<_>>()
            }
        };

        assert_eq!(found("web-1", None).await, vec![web.clone()], "a name, any case");
        assert_eq!(found("i-web", None).await, vec![web.clone()], "an id prefix");
        assert_eq!(found("i-webaaaa", None).await, vec![web.clone()], "an id");
        assert!(
            found("%", None).await.is_empty(),
            "the filter is literal, not a pattern"
        );
        assert!(
            found("i-web", Some(now_ms() + 60_000)).await.is_empty(),
            "created before `since`"
        );
    }
    }

    crate::store::both_backends! {
    async fn undelivered_results_are_aborted_after_the_window(store) {
        let id = store
            .create_invocation(&new_invocation(&["i-gone"], 1000))
            .await
            .unwrap()
            .id;

        let early = store.enforce_deadlines(999, 0).await.unwrap();
        let late = store.enforce_deadlines(1000, 0).await.unwrap();

        assert!(early.is_empty());
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].status, ResultStatus::Aborted);
        assert_eq!(late[0].error_code, Some(ErrorCode::InstanceNotExists));
        assert!(store.invocation(&id).await.unwrap().status().is_terminal());
    }
    }
}

#[cfg(test)]
mod purge_tests {
    use super::*;
    use crate::store::{AgentWrite, OutputLimits};

    crate::store::both_backends! {
    async fn the_purge_deletes_whole_old_invocations_in_bounded_batches_with_their_output(store) {
        let mut ids = Vec::new();
        for n in 0..5 {
            let instances: Vec<String> = (0..3).map(|i| format!("i-{n}{i}")).collect();
            let refs: Vec<&str> = instances.iter().map(String::as_str).collect();
            let created = store
                .create_invocation(&tests::new_invocation(&refs, now_ms() + 60_000))
                .await
                .unwrap();
            for result_id in created.result_ids.values() {
                let chunk = AgentWrite::Chunk {
                    result_id: *result_id,
                    seq: 0,
                    stream: crate::protocol::OutputStream::Stdout,
                    data: bytes::Bytes::from_static(b"kept output"),
                };
                let limits = OutputLimits { head: 100, tail: 100 };
                store.apply_agent_writes(&[chunk], limits).await.unwrap();
            }
            // Oldest first: invocation n was created n days before the last.
            query("UPDATE invocations SET created_at = $2 WHERE id = $1")
                .bind(&created.id)
                .bind(1_000_000 + n)
                .execute(&store.pool)
                .await
                .unwrap();
            ids.push(created.id);
        }
        let count = |table: &'static str| {
            let store = store.clone();
            async move {
                query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one::<i64>(&store.pool)
                    .await
                    .unwrap()
            }
        };

        // Four of five are past retention; 4 results a batch takes one whole invocation (3).
        let first = store.purge_batch(1_000_004, 4).await.unwrap();
        let rest = store.purge_batch(1_000_004, 100).await.unwrap();
        let none = store.purge_batch(1_000_004, 100).await.unwrap();

        assert_eq!(first, (1, 3));
        assert_eq!(rest, (3, 9));
        assert_eq!(none, (0, 0));
        assert_eq!(count("invocations").await, 1);
        assert_eq!(count("results").await, 3);
        assert_eq!(count("output_chunks").await, 3, "output went with its results");
        assert!(store.invocation(&ids[4]).await.is_ok(), "the young one stays");
    }
    }
}

#[cfg(test)]
mod status_sql_tests {
    use super::*;

    // Every combination of result groups (with every status of a group taking its turn) gets
    // the same overall status from the migration's SQL as from `InvocationStatus::from_counts`,
    // and the counts follow every change.
    crate::store::both_backends! {
    async fn the_sql_overall_status_and_counts_agree_with_from_counts(store) {
        use ResultStatus::*;
        let groups: [&[ResultStatus]; 6] = [
            &[Pending],
            &[Running],
            &[Stopping],
            &[Success],
            &[Invalid, Aborted, Failed, Error, Timeout],
            &[Cancelled, Terminated],
        ];
        for mask in 1usize..(1 << groups.len()) {
            let statuses: Vec<ResultStatus> = (0..groups.len())
                .filter(|g| mask & (1 << g) != 0)
                .map(|g| groups[g][mask % groups[g].len()])
                .collect();
            let instances: Vec<String> = (0..statuses.len()).map(|i| format!("i-{i}")).collect();
            let refs: Vec<&str> = instances.iter().map(String::as_str).collect();
            let new = tests::new_invocation(&refs, now_ms() + 60_000);
            let id = store.create_invocation(&new).await.unwrap().id;
            for (instance, status) in instances.iter().zip(&statuses) {
                query("UPDATE results SET status = $3 WHERE invocation_id = $1 AND instance_id = $2")
                    .bind(&id)
                    .bind(instance)
                    .bind(status.as_str())
                    .execute(&store.pool)
                    .await
                    .unwrap();
            }

            let row = store.invocation(&id).await.unwrap();
            let from_sql: String = query_scalar("SELECT status FROM invocations WHERE id = $1")
                .bind(&id)
                .fetch_one(&store.pool)
                .await
                .unwrap();

            let expected = InvocationStatus::from_counts(statuses.iter().map(|s| (*s, 1)));
            assert_eq!(from_sql, expected.as_str(), "{statuses:?}");
            // And with each state of a schedule (migration 0015's rules, `InvocationStatus::of`).
            for schedule in crate::protocol::ScheduleState::ALL {
                query("UPDATE invocations SET schedule_state = $2 WHERE id = $1")
                    .bind(&id)
                    .bind(schedule.as_str())
                    .execute(&store.pool)
                    .await
                    .unwrap();
                let from_sql: String = query_scalar("SELECT status FROM invocations WHERE id = $1")
                    .bind(&id)
                    .fetch_one(&store.pool)
                    .await
                    .unwrap();
                let expected = InvocationStatus::of(statuses.iter().map(|s| (*s, 1)), Some(*schedule));
                assert_eq!(from_sql, expected.as_str(), "{statuses:?} {schedule}");
            }
            let counted: BTreeMap<ResultStatus, u64> = statuses.iter().map(|s| (*s, 1)).collect();
            assert_eq!(row.counts.0, counted, "{statuses:?}");
        }
    }

    async fn statements_moving_many_results_of_two_invocations_keep_both_counts(store) {
        let a = store
            .create_invocation(&tests::new_invocation(&["i-0", "i-1", "i-2", "i-3"], now_ms() + 60_000))
            .await
            .unwrap()
            .id;
        let b = store
            .create_invocation(&tests::new_invocation(&["i-0", "i-1", "i-2"], now_ms() + 60_000))
            .await
            .unwrap()
            .id;

        // Each statement moves some results, leaves others' statuses as they are (their rows
        // still change), and spans both invocations.
        for sql in [
            "UPDATE results SET sent_at = 1",
            "UPDATE results SET status = CASE WHEN instance_id IN ('i-0', 'i-1') THEN 'Running' ELSE status END, \
             sent_at = 2",
            "UPDATE results SET status = CASE instance_id WHEN 'i-0' THEN 'Success' WHEN 'i-2' THEN 'Cancelled' \
             ELSE status END",
            "UPDATE results SET status = 'Failed' WHERE instance_id = 'i-1'",
        ] {
            query(sql).execute(&store.pool).await.unwrap();
        }

        for id in [&a, &b] {
            let counted: BTreeMap<ResultStatus, u64> = store
                .results(id)
                .await
                .unwrap()
                .iter()
                .fold(BTreeMap::new(), |mut counts, r| {
                    *counts.entry(r.status).or_default() += 1;
                    counts
                });
            assert_eq!(store.invocation(id).await.unwrap().counts.0, counted, "{id}");
        }
        assert_eq!(store.invocation(&a).await.unwrap().status(), InvocationStatus::Pending);
        assert_eq!(store.invocation(&b).await.unwrap().status(), InvocationStatus::PartialFailed);
    }
    }
}
