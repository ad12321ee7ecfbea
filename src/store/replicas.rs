//! Server processes sharing the database, and which of them holds each agent's connection.

use super::db::{query, query_scalar};
use super::{Result, Store};

impl Store {
    /// Registers this server process, `replica`, alive at `now`. On SQLite the process is the
    /// only one: every other row is an earlier run of it, and goes.
    pub async fn register_replica(&self, replica: &str, now: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        if !self.is_shared() {
            query("DELETE FROM replicas").execute(&mut tx).await?;
        }
        query("INSERT INTO replicas (id, started_at, heartbeat_at) VALUES ($1, $2, $2)")
            .bind(replica)
            .bind(now)
            .execute(&mut tx)
            .await?;
        tx.commit().await
    }

    /// Keeps this replica's row alive. Returns false when it was reaped meanwhile (this
    /// process was frozen for longer than the others wait): its row is written again, and its
    /// agents, recorded offline by the others, must reconnect to be recorded online again.
    pub async fn replica_heartbeat(&self, replica: &str, now: i64) -> Result<bool> {
        let kept = query("UPDATE replicas SET heartbeat_at = $2 WHERE id = $1")
            .bind(replica)
            .bind(now)
            .execute(&self.pool)
            .await?;
        if kept == 0 {
            self.register_replica(replica, now).await?;
        }
        Ok(kept > 0)
    }

    /// Reaps replicas silent since `expired_before` and records offline every agent a replica
    /// no longer alive held (an earlier run of this process too). Returns the replicas reaped.
    pub async fn reap_replicas(&self, expired_before: i64) -> Result<Vec<String>> {
        let mut tx = self.write_tx().await?;
        let reaped: Vec<String> = query_scalar("DELETE FROM replicas WHERE heartbeat_at < $1 RETURNING id")
            .bind(expired_before)
            .fetch_all(&mut tx)
            .await?;
        query(
            "UPDATE instances SET online = FALSE, connection = NULL, replica = NULL \
             WHERE online = TRUE AND (replica IS NULL OR replica NOT IN (SELECT id FROM replicas))",
        )
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(reaped)
    }

    /// How many replicas have a row: those alive, as of the last reaping.
    pub async fn replica_count(&self) -> Result<i64> {
        query_scalar("SELECT COUNT(*) FROM replicas")
            .fetch_one(&self.pool)
            .await
    }

    /// A replica shutting down: its row goes and its agents are offline until they reconnect.
    pub async fn remove_replica(&self, replica: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        query("DELETE FROM replicas WHERE id = $1")
            .bind(replica)
            .execute(&mut tx)
            .await?;
        query("UPDATE instances SET online = FALSE, connection = NULL, replica = NULL WHERE replica = $1")
            .bind(replica)
            .execute(&mut tx)
            .await?;
        tx.commit().await
    }

    /// The replicas alive now (heartbeat at or after `alive_since`), by id.
    pub async fn replicas(&self, alive_since: i64) -> Result<Vec<String>> {
        query_scalar("SELECT id FROM replicas WHERE heartbeat_at >= $1 ORDER BY id")
            .bind(alive_since)
            .fetch_all(&self.pool)
            .await
    }

    /// The pending results of an invocation not yet handed to an agent (nor held, waiting
    /// their turn) and still within their delivery window: `(result id, instance id, end of the
    /// window, execution)`.
    pub async fn unsent_results(&self, invoke_id: &str, now: i64) -> Result<Vec<(i64, String, i64, i64)>> {
        query(
            "SELECT id, instance_id, deliver_by, repeats FROM results WHERE invocation_id = $1 AND status = 'Pending' \
             AND sent_at IS NULL AND NOT held AND deliver_by > $2",
        )
        .bind(invoke_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await
    }

    /// The instances of an invocation whose task is being stopped (or was cancelled before it
    /// started), whose agents must be told: `(instance id, execution)`.
    pub async fn stopped_instances(&self, invoke_id: &str) -> Result<Vec<(String, i64)>> {
        query(
            "SELECT instance_id, repeats FROM results WHERE invocation_id = $1 AND status IN ('Stopping', 'Cancelled')",
        )
        .bind(invoke_id)
        .fetch_all(&self.pool)
        .await
    }

    /// The invocations with unsent tasks, within their window, for agents `replica` holds.
    pub async fn unsent_invocations_of(&self, replica: &str, now: i64) -> Result<Vec<String>> {
        query_scalar(
            "SELECT DISTINCT r.invocation_id FROM results r JOIN instances i ON i.id = r.instance_id \
             WHERE r.status = 'Pending' AND r.sent_at IS NULL AND NOT r.held AND r.deliver_by > $2 AND i.replica = $1",
        )
        .bind(replica)
        .bind(now)
        .fetch_all(&self.pool)
        .await
    }

    /// The tasks being stopped on agents `replica` holds: `(invoke id, instance id, execution)`.
    pub async fn stopping_of(&self, replica: &str) -> Result<Vec<(String, String, i64)>> {
        query(
            "SELECT r.invocation_id, r.instance_id, r.repeats FROM results r JOIN instances i ON i.id = r.instance_id \
             WHERE r.status = 'Stopping' AND i.replica = $1",
        )
        .bind(replica)
        .fetch_all(&self.pool)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::db::{query, query_scalar};
    use super::super::scratch::ScratchDatabase;
    use super::super::{Store, now_ms};
    use crate::store::invocations::tests::new_invocation;

    /// Two replicas (two stores on one PostgreSQL database) run the deadline sweeper and then
    /// the purge at the same moment, again and again: a trigger the test adds logs every status
    /// transition, and the audit log says what each purge deleted.
    #[tokio::test]
    async fn two_replicas_sweeping_and_purging_at_once_never_apply_a_rule_twice() {
        let database = ScratchDatabase::create().await.unwrap_or_else(|e| panic!("{e}"));
        let (one, two) = (
            Store::open(&database.url).await.unwrap(),
            Store::open(&database.url).await.unwrap(),
        );
        for statement in [
            "CREATE TABLE transitions (result_id BIGINT NOT NULL, was TEXT NOT NULL, now TEXT NOT NULL)",
            "CREATE FUNCTION log_transition() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO transitions VALUES (NEW.id, OLD.status, NEW.status); RETURN NULL; END $$",
            "CREATE TRIGGER logged AFTER UPDATE ON results FOR EACH ROW \
             WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION log_transition()",
        ] {
            query(statement).execute(&one.pool).await.unwrap();
        }
        // 30 invocations of 5 results each, past their delivery window on instances that do
        // not exist: each result is due to be aborted once.
        let targets = ["i-a", "i-b", "i-c", "i-d", "i-e"];
        for _ in 0..30 {
            one.create_invocation(&new_invocation(&targets, now_ms() - 1))
                .await
                .unwrap();
        }

        let sweep = |store: Store| async move {
            let mut ended = 0;
            for _ in 0..20 {
                ended += store.enforce_deadlines(now_ms(), now_ms()).await.unwrap().len();
            }
            ended
        };
        let (a, b) = tokio::join!(sweep(one.clone()), sweep(two.clone()));

        let transitions: Vec<(i64, String, String)> = query("SELECT result_id, was, now FROM transitions")
            .fetch_all(&one.pool)
            .await
            .unwrap();
        let mut results: Vec<i64> = transitions.iter().map(|(id, _, _)| *id).collect();
        results.sort_unstable();
        results.dedup();
        assert_eq!(a + b, 150, "the two sweeps ended each result once between them");
        assert_eq!(transitions.len(), 150, "one transition per result");
        assert_eq!(results.len(), 150);
        assert!(
            transitions
                .iter()
                .all(|(_, was, now)| was == "Pending" && now == "Aborted")
        );
        let aborted: i64 = query_scalar("SELECT SUM(n_aborted)::BIGINT FROM invocations")
            .fetch_one(&one.pool)
            .await
            .unwrap();
        assert_eq!(aborted, 150, "the counts moved once per result");

        let purge = |store: Store| async move {
            let mut purged = 0;
            loop {
                match store.purge_batch(now_ms() + 1, 12).await.unwrap() {
                    (0, _) => return purged,
                    (n, _) => purged += n,
                }
            }
        };
        let (a, b) = tokio::join!(purge(one.clone()), purge(two.clone()));

        let details: Vec<String> = query_scalar("SELECT detail FROM audit_log WHERE action = 'PurgeInvocations'")
            .fetch_all(&one.pool)
            .await
            .unwrap();
        let audited: u64 = details
            .iter()
            .map(|d| d.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        let left: i64 = query_scalar("SELECT COUNT(*) FROM invocations")
            .fetch_one(&one.pool)
            .await
            .unwrap();
        assert_eq!(a + b, 30, "the two purges deleted each invocation once between them");
        assert_eq!(
            audited, 30,
            "the audit log counts each deleted invocation once: {details:?}"
        );
        assert_eq!(left, 0);
    }
}
