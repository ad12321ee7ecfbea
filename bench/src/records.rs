//! A month of records, written straight into the server's SQLite file (not through agents):
//! 100,000 invocations of 10 results each, every result with 100 bytes of output, plus one
//! invocation of 10,000 results. The server reads them as its own (the same schema, the counts
//! its trigger would keep), so listings, the status filter and the retention purge work on a
//! database the size of 30 days of a 10,000-host fleet.

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// Invocations seeded (10 results each).
pub const INVOCATIONS: u64 = 100_000;
/// Results of each seeded invocation.
pub const RESULTS_EACH: u64 = 10;
/// Results of the one big invocation.
pub const BIG_RESULTS: u64 = 10_000;
/// The big invocation's id.
pub const BIG_ID: &str = "t-seedbig";
/// Invocations per transaction while seeding: about a second of the write lock each.
const PER_TRANSACTION: u64 = 10_000;
/// Seeded invocations share a creation millisecond this many at a time, so the whole month
/// falls due within `INVOCATIONS / PER_MS` ms and the purge meets it as one backlog.
pub const PER_MS: u64 = 100;

/// What seeding did.
pub struct Seeded {
    pub results: u64,
    pub took: Duration,
    /// Database bytes per seeded result (each with 100 bytes of output).
    pub bytes_per_result: f64,
    /// When the seeded invocations (all but the big one) pass retention and may be purged.
    pub due_at_ms: i64,
}

/// Seeds the database at `db` while the server runs. `created_ms` is the creation time of
/// the 100,000 invocations ([`PER_MS`] to a millisecond); the big one is created now. One in ten
/// invocations has two failed results (`PartialFailed`), one in fifty failed everywhere.
pub async fn seed(db: &Path, instance_ids: &[String], created_ms: i64, retention: Duration) -> anyhow::Result<Seeded> {
    let started = Instant::now();
    let options = SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open {}", db.display()))?;
    let before = size(&pool).await?;

    let mut tx = pool.begin().await?;
    sqlx::query("CREATE TEMP TABLE seed_instances (n INTEGER PRIMARY KEY, id TEXT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    for (n, id) in instance_ids.iter().enumerate() {
        sqlx::query("INSERT INTO seed_instances (n, id) VALUES ($1, $2)")
            .bind(n as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;

    let instances = instance_ids.len() as i64;
    for first in (0..INVOCATIONS).step_by(PER_TRANSACTION as usize) {
        let last = (first + PER_TRANSACTION).min(INVOCATIONS);
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $2) \
             INSERT INTO invocations (id, name, type, content, timeout_secs, enable_parameter, parameters, creator, \
             created_at, n_success, n_failed) \
             SELECT printf('t-seed%07d', i), 'seeded', 'RunShellScript', 'echo seeded', 60, 0, '{}', 'admin', $3 + i / $4, \
             CASE WHEN i % 50 = 0 THEN 0 WHEN i % 10 = 0 THEN 8 ELSE 10 END, \
             CASE WHEN i % 50 = 0 THEN 10 WHEN i % 10 = 0 THEN 2 ELSE 0 END FROM n",
        )
        .bind(first as i64)
        .bind(last as i64)
        .bind(created_ms)
        .bind(PER_MS as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $2), \
             k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j + 1 < $3) \
             INSERT INTO results (invocation_id, instance_id, status, exit_code, error_code, error_info, deliver_by, \
             next_seq, output_bytes, start_time, finish_time) \
             SELECT printf('t-seed%07d', i), s.id, \
             CASE WHEN i % 50 = 0 OR (i % 10 = 0 AND j < 2) THEN 'Failed' ELSE 'Success' END, \
             CASE WHEN i % 50 = 0 OR (i % 10 = 0 AND j < 2) THEN 1 ELSE 0 END, \
             CASE WHEN i % 50 = 0 OR (i % 10 = 0 AND j < 2) THEN 'ExitCodeNonzero' END, \
             CASE WHEN i % 50 = 0 OR (i % 10 = 0 AND j < 2) THEN 'The command exited with a non-zero exit code.' END, \
             $4 + i, 1, 100, $4 + i + 5, $4 + i + 25 \
             FROM n, k JOIN seed_instances s ON s.n = (i * $3 + j) % $5",
        )
        .bind(first as i64)
        .bind(last as i64)
        .bind(RESULTS_EACH as i64)
        .bind(created_ms)
        .bind(instances)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO output_chunks (result_id, pos, stream, data) \
             SELECT id, 0, 0, CAST(printf('%-99s', instance_id || ' seeded output line') || char(10) AS BLOB) \
             FROM results WHERE invocation_id >= printf('t-seed%07d', $1) AND invocation_id < printf('t-seed%07d', $2)",
        )
        .bind(first as i64)
        .bind(last as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }

    // One invocation of 10,000 results, created now (within retention).
    let now = fleetrun::store::now_ms();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(
        "INSERT INTO invocations (id, name, type, content, timeout_secs, enable_parameter, parameters, creator, \
         created_at, n_success) VALUES ($1, 'seeded big', 'RunShellScript', 'echo seeded', 60, 0, '{}', 'admin', $2, $3)",
    )
    .bind(BIG_ID)
    .bind(now)
    .bind(BIG_RESULTS.min(instances as u64) as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO results (invocation_id, instance_id, status, exit_code, deliver_by, next_seq, output_bytes, \
         start_time, finish_time) SELECT $1, id, 'Success', 0, $2, 1, 100, $2, $2 FROM seed_instances WHERE n < $3",
    )
    .bind(BIG_ID)
    .bind(now)
    .bind(BIG_RESULTS as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO output_chunks (result_id, pos, stream, data) \
         SELECT id, 0, 0, CAST(printf('%-99s', instance_id || ' seeded output line') || char(10) AS BLOB) \
         FROM results WHERE invocation_id = $1",
    )
    .bind(BIG_ID)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let results = INVOCATIONS * RESULTS_EACH + BIG_RESULTS.min(instances as u64);
    let after = size(&pool).await?;
    pool.close().await;
    Ok(Seeded {
        results,
        took: started.elapsed(),
        bytes_per_result: after.saturating_sub(before) as f64 / results as f64,
        due_at_ms: created_ms + (INVOCATIONS / PER_MS) as i64 + retention.as_millis() as i64,
    })
}

/// The database's size in bytes, as this connection sees it (WAL included).
async fn size(pool: &SqlitePool) -> anyhow::Result<u64> {
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(pool).await?;
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(pool).await?;
    Ok((pages * page_size) as u64)
}
