//! Invocations and their per-instance results: creation, listing, stop, deadlines, delivery.

use super::commands::{NewCommand, insert_command};
use super::{Result, Store, now_ms, parse_name, placeholders};
use crate::protocol::{CommandType, ErrorCode, ResultStatus};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use std::collections::BTreeMap;

/// An invocation to create.
#[derive(Debug, Clone)]
pub struct NewInvocation {
    pub name: String,
    pub command_type: CommandType,
    /// As submitted: parameters are filled per instance at delivery.
    pub content: String,
    pub working_dir: Option<String>,
    pub timeout_secs: u64,
    pub username: Option<String>,
    pub enable_parameter: bool,
    pub parameters: BTreeMap<String, String>,
    pub creator: String,
    /// Run a retained command (`InvokeCommand`)…
    pub command_id: Option<String>,
    /// …or retain this one (`RunCommand` with `keep_command`), within the quota.
    pub keep: Option<(NewCommand, u64)>,
    pub instance_ids: Vec<String>,
    /// Pending results not started by then are aborted.
    pub deliver_by: i64,
}

/// A stored invocation with its per-status result counts.
#[derive(Debug, Clone)]
pub struct InvocationRow {
    pub id: String,
    pub command_id: Option<String>,
    pub name: String,
    pub command_type: CommandType,
    pub content: String,
    pub working_dir: Option<String>,
    pub timeout_secs: u64,
    pub username: Option<String>,
    pub enable_parameter: bool,
    pub parameters: BTreeMap<String, String>,
    pub creator: String,
    pub created_at: i64,
    pub counts: BTreeMap<ResultStatus, u64>,
}

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
}

/// A result whose status just changed, for live watchers and agents.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultChange {
    pub invocation_id: String,
    pub instance_id: String,
    pub status: ResultStatus,
    pub exit_code: Option<i32>,
    pub error_code: Option<ErrorCode>,
}

/// A pending result to hand to its agent, with what the agent needs to run it.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub result_id: i64,
    pub invocation: InvocationRow,
}

/// Filters of the invocation listing.
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    pub instance_id: Option<String>,
    pub command_id: Option<String>,
    pub offset: u64,
    pub limit: u64,
}

pub(super) fn result_from_row(row: &SqliteRow) -> Result<ResultRow> {
    let error_code: Option<String> = row.try_get("error_code")?;
    Ok(ResultRow {
        id: row.try_get("id")?,
        invocation_id: row.try_get("invocation_id")?,
        instance_id: row.try_get("instance_id")?,
        status: parse_name(row.try_get("status")?)?,
        exit_code: row.try_get("exit_code")?,
        error_code: error_code.as_deref().map(parse_name).transpose()?,
        error_info: row.try_get("error_info")?,
        output_bytes: row.try_get::<i64, _>("output_bytes")? as u64,
        dropped: row.try_get::<i64, _>("dropped")? as u64,
        start_time: row.try_get("start_time")?,
        finish_time: row.try_get("finish_time")?,
        stop_time: row.try_get("stop_time")?,
    })
}

fn change_from_row(row: &SqliteRow) -> Result<ResultChange> {
    let error_code: Option<String> = row.try_get("error_code")?;
    Ok(ResultChange {
        invocation_id: row.try_get("invocation_id")?,
        instance_id: row.try_get("instance_id")?,
        status: parse_name(row.try_get("status")?)?,
        exit_code: row.try_get("exit_code")?,
        error_code: error_code.as_deref().map(parse_name).transpose()?,
    })
}

fn invocation_from_row(row: &SqliteRow) -> Result<InvocationRow> {
    let parameters: String = row.try_get("parameters")?;
    Ok(InvocationRow {
        id: row.try_get("id")?,
        command_id: row.try_get("command_id")?,
        name: row.try_get("name")?,
        command_type: parse_name(row.try_get("type")?)?,
        content: row.try_get("content")?,
        working_dir: row.try_get("working_dir")?,
        timeout_secs: row.try_get::<i64, _>("timeout_secs")? as u64,
        username: row.try_get("username")?,
        enable_parameter: row.try_get("enable_parameter")?,
        parameters: serde_json::from_str(&parameters).map_err(|e| super::Error::Corrupt(e.to_string()))?,
        creator: row.try_get("creator")?,
        created_at: row.try_get("created_at")?,
        counts: BTreeMap::new(),
    })
}

const CHANGE_COLUMNS: &str = "invocation_id, instance_id, status, exit_code, error_code";

impl Store {
    /// Stores an invocation, one `Pending` result per instance and, when asked, the retained
    /// command, all in one transaction. Returns the invoke id and the command id.
    pub async fn create_invocation(&self, new: &NewInvocation) -> Result<(String, Option<String>)> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let command_id = match &new.keep {
            Some((command, quota)) => Some(insert_command(&mut tx, command, *quota).await?),
            None => new.command_id.clone(),
        };
        let id = super::ids::new_id("t");
        sqlx::query(
            "INSERT INTO invocations (id, command_id, name, type, content, working_dir, timeout_secs, username, \
             enable_parameter, parameters, creator, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&id)
        .bind(&command_id)
        .bind(&new.name)
        .bind(new.command_type.as_str())
        .bind(&new.content)
        .bind(&new.working_dir)
        .bind(new.timeout_secs as i64)
        .bind(&new.username)
        .bind(new.enable_parameter)
        .bind(serde_json::to_string(&new.parameters).unwrap_or_else(|_| "{}".into()))
        .bind(&new.creator)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Multi-row inserts: 10,000 targets cost 50 statements, not 10,000.
        for batch in new.instance_ids.chunks(200) {
            let values = (0..batch.len())
                .map(|i| format!("($1, ${}, 'Pending', $2)", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("INSERT INTO results (invocation_id, instance_id, status, deliver_by) VALUES {values}");
            let mut query = sqlx::query(&sql).bind(&id).bind(new.deliver_by);
            for instance_id in batch {
                query = query.bind(instance_id);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok((id, command_id))
    }

    /// One invocation with its counts.
    pub async fn invocation(&self, invoke_id: &str) -> Result<InvocationRow> {
        let row = sqlx::query("SELECT * FROM invocations WHERE id = $1")
            .bind(invoke_id)
            .fetch_one(&self.pool)
            .await?;
        let mut invocation = invocation_from_row(&row)?;
        self.fill_counts(std::slice::from_mut(&mut invocation)).await?;
        Ok(invocation)
    }

    async fn fill_counts(&self, invocations: &mut [InvocationRow]) -> Result<()> {
        // SQLite allows 32,766 variables per statement: count in batches.
        for batch in invocations.chunks_mut(500) {
            let sql = format!(
                "SELECT invocation_id, status, COUNT(*) AS n FROM results WHERE invocation_id IN ({}) \
                 GROUP BY invocation_id, status",
                placeholders(1, batch.len())
            );
            let mut query = sqlx::query(&sql);
            for inv in batch.iter() {
                query = query.bind(&inv.id);
            }
            let rows = query.fetch_all(&self.pool).await?;
            let positions: std::collections::HashMap<String, usize> =
                batch.iter().enumerate().map(|(i, inv)| (inv.id.clone(), i)).collect();
            for row in rows {
                let id: String = row.try_get("invocation_id")?;
                let status: ResultStatus = parse_name(row.try_get("status")?)?;
                let n: i64 = row.try_get("n")?;
                if let Some(&i) = positions.get(&id) {
                    batch[i].counts.insert(status, n as u64);
                }
            }
        }
        Ok(())
    }

    /// Invocations matching the filter, newest first, with counts, and the total matching.
    pub async fn list_invocations(&self, filter: &InvocationFilter) -> Result<(Vec<InvocationRow>, u64)> {
        const WHERE: &str = "WHERE ($1 IS NULL OR command_id = $1) \
            AND ($2 IS NULL OR id IN (SELECT invocation_id FROM results WHERE instance_id = $2))";
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM invocations {WHERE}"))
            .bind(&filter.command_id)
            .bind(&filter.instance_id)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT * FROM invocations {WHERE} ORDER BY created_at DESC, id LIMIT $3 OFFSET $4"
        ))
        .bind(&filter.command_id)
        .bind(&filter.instance_id)
        .bind(filter.limit as i64)
        .bind(filter.offset as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut invocations = rows.iter().map(invocation_from_row).collect::<Result<Vec<_>>>()?;
        self.fill_counts(&mut invocations).await?;
        Ok((invocations, total as u64))
    }

    /// The results of an invocation, ordered by instance id.
    pub async fn results(&self, invoke_id: &str) -> Result<Vec<ResultRow>> {
        let rows = sqlx::query("SELECT * FROM results WHERE invocation_id = $1 ORDER BY instance_id")
            .bind(invoke_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(result_from_row).collect()
    }

    /// One result.
    pub async fn result(&self, invoke_id: &str, instance_id: &str) -> Result<ResultRow> {
        let row = sqlx::query("SELECT * FROM results WHERE invocation_id = $1 AND instance_id = $2")
            .bind(invoke_id)
            .bind(instance_id)
            .fetch_one(&self.pool)
            .await?;
        result_from_row(&row)
    }

    /// Stops results of an invocation (all, or those of the given instances): `Pending` ones
    /// become `Cancelled`, `Running` ones `Stopping`. Returns the changed results.
    pub async fn stop_results(&self, invoke_id: &str, instance_ids: Option<&[String]>) -> Result<Vec<ResultChange>> {
        let now = now_ms();
        // All results, or the named instances in batches (SQLite caps variables per statement).
        let batches: Vec<Option<&[String]>> = match instance_ids {
            Some(ids) => ids.chunks(500).map(Some).collect(),
            None => vec![None],
        };
        let mut tx = self.write_tx().await?;
        let mut changes = Vec::new();
        for batch in batches {
            let only = batch
                .map(|ids| format!("AND instance_id IN ({})", placeholders(3, ids.len())))
                .unwrap_or_default();
            for sql in [
                format!(
                    "UPDATE results SET status = 'Cancelled', stop_time = $2, finish_time = $2 \
                     WHERE invocation_id = $1 AND status = 'Pending' {only} RETURNING {CHANGE_COLUMNS}"
                ),
                format!(
                    "UPDATE results SET status = 'Stopping', stop_time = $2 \
                     WHERE invocation_id = $1 AND status = 'Running' {only} RETURNING {CHANGE_COLUMNS}"
                ),
            ] {
                let mut query = sqlx::query(&sql).bind(invoke_id).bind(now);
                for id in batch.unwrap_or_default() {
                    query = query.bind(id);
                }
                for row in query.fetch_all(&mut *tx).await? {
                    changes.push(change_from_row(&row)?);
                }
            }
        }
        tx.commit().await?;
        Ok(changes)
    }

    /// Pending results of an instance that are still within their delivery window.
    pub async fn deliveries(&self, instance_id: &str) -> Result<Vec<DeliveryRow>> {
        let rows = sqlx::query(
            "SELECT r.id AS result_id, i.* FROM results r JOIN invocations i ON i.id = r.invocation_id \
             WHERE r.instance_id = $1 AND r.status = 'Pending' AND r.deliver_by > $2 ORDER BY i.created_at",
        )
        .bind(instance_id)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeliveryRow {
                    result_id: row.try_get("result_id")?,
                    invocation: invocation_from_row(row)?,
                })
            })
            .collect()
    }

    /// The result id of an instance's task, if the task is the instance's own.
    pub async fn result_id(&self, invoke_id: &str, instance_id: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM results WHERE invocation_id = $1 AND instance_id = $2")
                .bind(invoke_id)
                .bind(instance_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Results an agent lost: running on the server but not held by the agent that reconnected.
    /// They end as `Error` / `ExecutionInterrupted`.
    pub async fn interrupt_unheld(&self, instance_id: &str, held: &[String]) -> Result<Vec<ResultChange>> {
        let running: Vec<String> = sqlx::query_scalar(
            "SELECT invocation_id FROM results WHERE instance_id = $1 AND status IN ('Running', 'Stopping')",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        let lost: Vec<&String> = running.iter().filter(|task| !held.contains(task)).collect();
        let mut changes = Vec::new();
        for batch in lost.chunks(500) {
            let sql = format!(
                "UPDATE results SET status = 'Error', error_code = 'ExecutionInterrupted', error_info = $3, \
                 finish_time = $2 WHERE instance_id = $1 AND status IN ('Running', 'Stopping') \
                 AND invocation_id IN ({}) RETURNING {CHANGE_COLUMNS}",
                placeholders(4, batch.len())
            );
            let mut query = sqlx::query(&sql)
                .bind(instance_id)
                .bind(now_ms())
                .bind(ErrorCode::ExecutionInterrupted.default_info());
            for task in batch {
                query = query.bind(task);
            }
            for row in query.fetch_all(&self.pool).await? {
                changes.push(change_from_row(&row)?);
            }
        }
        Ok(changes)
    }

    /// Applies the server's own deadlines at time `now` and returns every result it ended:
    /// pending past the delivery window → `Aborted`; running past timeout + grace → `Timeout`;
    /// running on an instance whose heartbeat is older than `lost_before` → `Error`.
    pub async fn enforce_deadlines(&self, now: i64, lost_before: i64) -> Result<Vec<ResultChange>> {
        // Each statement: the code, the rule, the status it sets.
        let rules: [(ErrorCode, &str, &str); 6] = [
            (
                ErrorCode::InstanceNotExists,
                "status = 'Pending' AND deliver_by <= $1 AND NOT EXISTS (SELECT 1 FROM instances WHERE id = results.instance_id)",
                "Aborted",
            ),
            (
                ErrorCode::ClientNotRunning,
                "status = 'Pending' AND deliver_by <= $1 AND instance_id IN \
                 (SELECT id FROM instances WHERE online = 0 AND COALESCE(last_heartbeat_at, 0) <= $2)",
                "Aborted",
            ),
            (
                ErrorCode::DeliveryTimeout,
                "status = 'Pending' AND deliver_by <= $1",
                "Aborted",
            ),
            (
                ErrorCode::ExecutionTimeout,
                "status = 'Running' AND deadline <= $1",
                "Timeout",
            ),
            // A stop the agent never confirmed: the command counts as stopped all the same.
            (
                ErrorCode::ExecutionInterrupted,
                "status = 'Stopping' AND deadline <= $1",
                "Terminated",
            ),
            (
                ErrorCode::ClientNotResponse,
                "status IN ('Running', 'Stopping') AND (instance_id IN \
                 (SELECT id FROM instances WHERE online = 0 AND COALESCE(last_heartbeat_at, 0) <= $2) \
                 OR NOT EXISTS (SELECT 1 FROM instances WHERE id = results.instance_id))",
                "Error",
            ),
        ];
        let mut tx = self.write_tx().await?;
        let mut changes = Vec::new();
        for (code, rule, status) in rules {
            let sql = format!(
                "UPDATE results SET status = $3, error_code = $4, error_info = $5, finish_time = $1 \
                 WHERE {rule} RETURNING {CHANGE_COLUMNS}"
            );
            let rows = sqlx::query(&sql)
                .bind(now)
                .bind(lost_before)
                .bind(status)
                .bind(code.as_str())
                .bind(code.default_info())
                .fetch_all(&mut *tx)
                .await?;
            for row in rows {
                changes.push(change_from_row(&row)?);
            }
        }
        tx.commit().await?;
        Ok(changes)
    }

    /// Whether every result of the invocation is terminal.
    pub async fn is_finished(&self, invoke_id: &str) -> Result<bool> {
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM results WHERE invocation_id = $1 AND status IN ('Pending', 'Running', 'Stopping')",
        )
        .bind(invoke_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(active == 0)
    }

    /// Deletes invocations created before `before` with their results and output.
    pub async fn purge_invocations(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM invocations WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::test_store;

    pub(crate) fn new_invocation(instances: &[&str], deliver_by: i64) -> NewInvocation {
        NewInvocation {
            name: "test".into(),
            command_type: CommandType::RunShellScript,
            content: "echo hi".into(),
            working_dir: None,
            timeout_secs: 60,
            username: None,
            enable_parameter: false,
            parameters: BTreeMap::new(),
            creator: "admin".into(),
            command_id: None,
            keep: None,
            instance_ids: instances.iter().map(|s| s.to_string()).collect(),
            deliver_by,
        }
    }

    #[tokio::test]
    async fn an_invocation_starts_with_one_pending_result_per_instance() {
        let (store, _dir) = test_store().await;
        let ids: Vec<String> = (0..450).map(|i| format!("i-{i:03}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();

        let (invoke_id, command_id) = store
            .create_invocation(&new_invocation(&refs, now_ms() + 1000))
            .await
            .unwrap();
        let inv = store.invocation(&invoke_id).await.unwrap();

        assert!(command_id.is_none());
        assert_eq!(inv.counts.get(&ResultStatus::Pending), Some(&450));
    }

    #[tokio::test]
    async fn stop_cancels_pending_results_and_stops_running_ones() {
        let (store, _dir) = test_store().await;
        let (id, _) = store
            .create_invocation(&new_invocation(&["i-a", "i-b"], now_ms() + 60_000))
            .await
            .unwrap();
        sqlx::query("UPDATE results SET status = 'Running' WHERE instance_id = 'i-b'")
            .execute(&store.pool)
            .await
            .unwrap();

        let changes = store.stop_results(&id, None).await.unwrap();

        let statuses: Vec<_> = changes.iter().map(|c| (c.instance_id.as_str(), c.status)).collect();
        assert_eq!(
            statuses,
            vec![("i-a", ResultStatus::Cancelled), ("i-b", ResultStatus::Stopping)]
        );
        assert!(
            store.stop_results(&id, None).await.unwrap().is_empty(),
            "a second stop changes nothing"
        );
    }

    #[tokio::test]
    async fn undelivered_results_are_aborted_after_the_window() {
        let (store, _dir) = test_store().await;
        let (id, _) = store
            .create_invocation(&new_invocation(&["i-gone"], 1000))
            .await
            .unwrap();

        let early = store.enforce_deadlines(999, 0).await.unwrap();
        let late = store.enforce_deadlines(1000, 0).await.unwrap();

        assert!(early.is_empty());
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].status, ResultStatus::Aborted);
        assert_eq!(late[0].error_code, Some(ErrorCode::InstanceNotExists));
        assert!(store.is_finished(&id).await.unwrap());
    }
}
