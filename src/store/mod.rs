//! The `Store`: every SQL statement of fleetrun, the row types they return and the migrations.
//!
//! Callers get plain Rust types and a `store::Error`; no sqlx type leaves this module. Every
//! transaction begins and ends here. This module must not depend on axum, `server` or `dispatch`.
//!
//! Two backends: one SQLite file in WAL mode (the default), or PostgreSQL shared by several
//! replicas. Statements are written once, with `$N` placeholders, and run on either (`db`).

mod access_keys;
mod audit;
pub mod backup;
pub mod bus;
mod commands;
mod db;
mod files;
mod fleet;
pub mod ids;
mod invocations;
mod logins;
mod nonces;
mod output;
mod plans;
mod rate;
mod replicas;
pub mod scratch;
mod sessions;
mod settings;
mod tags;
mod tokens;
mod users;

pub use access_keys::{AccessKeyRow, SealedAccessKey};
pub use audit::{AuditFilter, AuditRow, NewAudit};
pub use commands::{CommandRow, CommandUpdate, NewCommand};
pub use files::{FileResultRow, FileSendRow, NewFileSend};
pub use fleet::{ActivationRow, InstanceFilter, InstanceRow, NewActivation, NewInstance, RegisterRefusal};
pub use invocations::{ClientToken, Target};
pub use invocations::{
    Cursor, DeliveryRow, InvocationFilter, InvocationPage, InvocationRow, NewInvocation, PlanState, ResultChange,
    ResultRow,
};
pub use output::{AgentWrite, Applied, ChunkRow, OutputLimits};
pub use plans::{BootExecution, DueSchedule, NewPlan, StartedExecution};
pub use rate::{Rate, Turns};
pub use sessions::SessionRow;
pub use tags::TagMatch;
pub use tokens::TokenRow;
pub use users::{Role, UserRow, UserUpdate};

use db::{Pool, Tx, query};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the row (e.g. a username that exists).
    #[error("already exists")]
    Conflict,
    /// Another retained command of the region has that name; its id.
    #[error("the name is taken by {0}")]
    NameTaken(String),
    /// A quota would be exceeded.
    #[error("quota {name} exceeded ({used} of {limit} used)")]
    Quota { name: &'static str, used: u64, limit: u64 },
    /// A `client_token` is already claimed by this invocation (made from the request whose
    /// hash is `request_hash`); nothing was stored.
    #[error("the client token is used by {invocation_id}")]
    ClientTokenUsed {
        invocation_id: String,
        request_hash: String,
    },
    /// Enrolment refused by its activation.
    #[error("registration refused: {0}")]
    Register(RegisterRefusal),
    /// The disk holding the database is full: nothing can be written until space is freed.
    /// Transient: the same write succeeds once there is room again.
    #[error("the database's disk is full")]
    DiskFull,
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be decoded (a bug or a hand-edited database).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Error::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict,
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some(SQLITE_FULL | PG_DISK_FULL)) => {
                Error::DiskFull
            }
            _ => Error::Database(e),
        }
    }
}

/// SQLite's result code, and PostgreSQL's SQLSTATE, for a write that found no room on the disk.
const SQLITE_FULL: &str = "13";
const PG_DISK_FULL: &str = "53100";

impl Error {
    /// Whether the same call may succeed if retried later (the disk full, the database busy or
    /// unreachable), as opposed to a refusal or a bug that retrying cannot fix.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::DiskFull => true,
            Error::Database(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                match code.parse::<i32>() {
                    // SQLite's primary result codes (the low byte of an extended one): BUSY,
                    // LOCKED, IOERR, CANTOPEN. A constraint or a bad statement is not transient.
                    Ok(n) if code.len() < 5 => matches!(n & 0xff, 5 | 6 | 10 | 14),
                    // PostgreSQL's SQLSTATEs: a lost connection (08…), a serialization failure
                    // or deadlock (40001, 40P01), too few resources (53…), a shutdown or a
                    // server starting (57P…).
                    _ => ["08", "40001", "40P01", "53", "57P"]
                        .iter()
                        .any(|prefix| code.starts_with(prefix)),
                }
            }
            Error::Database(e) => matches!(
                e,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed
            ),
            _ => false,
        }
    }
}

/// Store result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
}

impl Store {
    /// Opens (creating if needed) the SQLite database file and applies pending migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Agents forget output once it is acknowledged, and acks follow commits, so a commit
            // must survive a power cut: FULL syncs the WAL on every commit. Group commit keeps
            // that to one sync per batch, not one per chunk.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Statement journals (a multi-row statement's undo within a transaction) and sorts in
            // memory, not in temporary files: they were a tenth of the writer's time.
            .pragma("temp_store", "MEMORY")
            // 8 MiB of page cache per connection (2 MiB by default): the pages a fan-out
            // touches stay cached between batches.
            .pragma("cache_size", "-8192");
        // Migrations run on a connection of their own with foreign keys off: a migration that
        // rebuilds a table (0015, `results`) must drop the old one, and with them on, dropping
        // it would delete every row that references it (output). Nothing else runs meanwhile.
        let mut migrating = options.clone().foreign_keys(false).connect().await?;
        let migrated = sqlx::migrate!("./migrations/sqlite").run_direct(&mut migrating).await;
        migrating.close().await?;
        migrated?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .after_release(|conn, _| Box::pin(async move { Ok(!left_in_transaction(conn)) }))
            .connect_with(options)
            .await?;
        Ok(Store {
            pool: Pool::Sqlite(pool),
        })
    }

    /// Connects to a PostgreSQL database (`postgres://…`) and applies pending migrations.
    ///
    /// Replicas starting together take turns: sqlx's migrator holds an advisory lock while it
    /// migrates. It runs on a connection of its own, closed afterwards, so a failed migration
    /// cannot leave the lock held by a connection idling in the pool.
    pub async fn open_postgres(url: &str) -> Result<Store> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("fleetrun")
            .options([
                ("idle_in_transaction_session_timeout", PG_IDLE_IN_TRANSACTION),
                // Plans made for each statement's values, never a cached generic plan: with the
                // statistics of a table that just grew by a fan-out, a generic plan compared
                // every pending result with every id (seconds, holding the write lock).
                ("plan_cache_mode", "force_custom_plan"),
            ])
            .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(1));
        let mut migrating = options.connect().await?;
        let migrated = sqlx::migrate!("./migrations/postgres").run_direct(&mut migrating).await;
        migrating.close().await?;
        migrated?;
        let pool = PgPoolOptions::new()
            .max_connections(PG_POOL_SIZE)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Store {
            pool: Pool::Postgres(pool),
        })
    }

    /// Opens the database named by a URL: `postgres://…`, `sqlite:<path>` or a plain file path.
    pub async fn open(url: &str) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Store::open_postgres(url).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        Store::open_sqlite(Path::new(path)).await
    }

    /// Whether this store is PostgreSQL, shared with other replicas, rather than a SQLite file
    /// only this process writes.
    pub fn is_shared(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Begins a write transaction. Writes take turns, on both backends, so a check and the
    /// write it guards (a quota, a name, an activation's limit, a result's status) see no
    /// other writer in between.
    ///
    /// SQLite: `BEGIN IMMEDIATE` takes the write lock up front (a deferred transaction that
    /// reads first and writes later fails with "database is locked" when another writer
    /// commits in between, instead of waiting its turn). PostgreSQL: a transaction-level
    /// advisory lock, released by the commit, so every replica's writers queue the same way.
    async fn write_tx(&self) -> Result<Tx> {
        Ok(match &self.pool {
            Pool::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(pool) => {
                let mut tx = Tx::Postgres(pool.begin().await?);
                query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(&mut tx)
                    .await?;
                tx
            }
        })
    }

    /// Closes every connection, waiting for running statements.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether a connection going back to the pool still counts itself inside a transaction. That
/// happens when SQLite rolled a transaction back by itself (a write that found the disk full):
/// sqlx's `ROLLBACK` then fails, its transaction depth stays at one, and every later `BEGIN` on
/// the connection would fail. Such a connection is closed rather than reused. (A connection
/// whose rollback is merely still queued is closed too: a rare, cheap loss.)
fn left_in_transaction(conn: &sqlx::SqliteConnection) -> bool {
    use sqlx::TransactionManager as _;
    let depth = sqlx::sqlite::SqliteTransactionManager::get_transaction_depth(conn);
    if depth > 0 {
        tracing::warn!("closing a database connection left inside a failed transaction");
    }
    depth > 0
}

/// Connections each replica keeps to PostgreSQL (its `max_connections` is 100 by default).
const PG_POOL_SIZE: u32 = 10;

/// How long PostgreSQL lets a session of ours sit idle inside a transaction before it ends the
/// session (`idle_in_transaction_session_timeout`). A replica frozen inside a write transaction
/// (stopped, its VM paused, cut off from the database) holds the write lock every replica takes
/// turns on: without this, every replica's writes would wait until the frozen one died or TCP
/// gave up on it, hours later. As long as the other replicas wait before counting a silent one
/// dead (`dispatch::replicas`). Our transactions begin and end inside `store` and wait on
/// nothing but the database between their statements, so none of them comes near it.
const PG_IDLE_IN_TRANSACTION: &str = "10s";

/// The advisory lock key writers take turns on (PostgreSQL): "fleetrun" in ASCII.
const WRITE_LOCK: i64 = 0x666c_6565_7472_756e;

/// Milliseconds since the Unix epoch, the time format of every stored timestamp.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `NotFound` unless a statement changed a row: for updates and deletes of one row by id.
fn changed_one(rows_affected: u64) -> Result<()> {
    if rows_affected == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// Binds a `CommandSpec` to the six placeholders that follow, in the column order every
/// statement lists them: `type, content, working_dir, timeout_secs, username, enable_parameter`.
fn bind_spec<'q>(query: db::Query<'q>, spec: &'q crate::protocol::CommandSpec) -> db::Query<'q> {
    query
        .bind(spec.command_type.as_str())
        .bind(&spec.content)
        .bind(&spec.working_dir)
        .bind(spec.timeout_secs as i64)
        .bind(&spec.username)
        .bind(spec.enable_parameter)
}

/// Builds `$first, $first+1, …` for `n` placeholders.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Most rows one multi-row statement carries on SQLite (a power of two). sqlx-sqlite resolves
/// every `$N` by a linear scan, so the cost of binding grows with the square of a statement's
/// parameters: about a hundred parameters keeps it small (docs/PERFORMANCE.md).
const SQLITE_ROWS_PER_STATEMENT: usize = 16;

/// Most rows one multi-row statement carries on PostgreSQL (a power of two). Binding is linear
/// there, and each statement is a round trip to another process while the write lock is held:
/// a fan-out of 10,000 results writes in 40 statements, not 625.
const PG_ROWS_PER_STATEMENT: usize = 256;

/// Splits `items` into statements of `max` rows (a power of two) and then powers of two, so a
/// statement has one of a few shapes and its prepared form is reused from the cache.
fn statement_chunks<T>(mut items: &[T], max: usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    while !items.is_empty() {
        let n = if items.len() >= max {
            max
        } else {
            1 << items.len().ilog2()
        };
        let (chunk, rest) = items.split_at(n);
        chunks.push(chunk);
        items = rest;
    }
    chunks
}

/// A multi-row statement, `{head}($1, …), (…), …{tail}` with `width` placeholders a row. Its
/// text for each size [`statement_chunks`] makes is built once, not per batch.
pub(crate) struct MultiRow {
    head: &'static str,
    width: usize,
    tail: &'static str,
    texts: std::sync::OnceLock<Vec<String>>,
}

impl MultiRow {
    pub(crate) const fn new(head: &'static str, width: usize, tail: &'static str) -> MultiRow {
        MultiRow {
            head,
            width,
            tail,
            texts: std::sync::OnceLock::new(),
        }
    }

    /// The statement for `rows` rows, a size [`statement_chunks`] makes (a power of two up to
    /// the larger backend's most rows a statement).
    pub(crate) fn sql(&self, rows: usize) -> &str {
        let texts = self.texts.get_or_init(|| {
            (0..=SQLITE_ROWS_PER_STATEMENT.max(PG_ROWS_PER_STATEMENT).ilog2())
                .map(|k| format!("{}{}{}", self.head, value_rows(1 << k, self.width), self.tail))
                .collect()
        });
        &texts[rows.max(1).ilog2() as usize]
    }
}

/// `($1, $2, …), ($k+1, …), …`: `rows` tuples of `width` placeholders.
fn value_rows(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(r * width + 1, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) async fn test_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("test.db")).await.unwrap();
    (store, dir)
}

/// The backend a store test runs on ([`both_backends!`] runs it on each).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum TestBackend {
    Sqlite,
    Postgres,
}

/// What keeps a test store's data alive: its directory or its PostgreSQL database.
#[cfg(test)]
#[allow(dead_code)]
pub(crate) enum TestData {
    Dir(tempfile::TempDir),
    Postgres(scratch::ScratchDatabase),
}

/// A fresh store on `backend`. On PostgreSQL, a database of its own on the test server (see
/// [`scratch`]); the test fails with one line saying how to start PostgreSQL when none answers.
#[cfg(test)]
pub(crate) async fn test_store_on(backend: TestBackend) -> (Store, TestData) {
    match backend {
        TestBackend::Sqlite => {
            let (store, dir) = test_store().await;
            (store, TestData::Dir(dir))
        }
        TestBackend::Postgres => {
            let database = scratch::ScratchDatabase::create()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let store = Store::open(&database.url).await.unwrap();
            (store, TestData::Postgres(database))
        }
    }
}

/// Store tests that run on both backends: each `async fn name(store) { … }` becomes a module
/// `name` with the tests `sqlite` and `postgres`, `store` a fresh store of that backend.
#[cfg(test)]
macro_rules! both_backends {
    ($(async fn $name:ident($store:ident) $body:block)*) => {
        $(mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                #[allow(unused_variables)]
                let ($store, _data) = $crate::store::test_store_on($crate::store::TestBackend::Sqlite).await;
                $body
            }

            #[tokio::test]
            async fn postgres() {
                #[allow(unused_variables)]
                let ($store, _data) = $crate::store::test_store_on($crate::store::TestBackend::Postgres).await;
                $body
            }
        })*
    };
}
#[cfg(test)]
pub(crate) use both_backends;

#[cfg(test)]
mod tests {
    use super::*;

    crate::store::both_backends! {
    async fn a_transaction_sqlite_ended_by_itself_does_not_poison_the_pool(store) {
        {
            let mut tx = store.write_tx().await.unwrap();
            // What SQLite does by itself when a write finds the disk full: the transaction is
            // rolled back under sqlx's feet, and sqlx's own ROLLBACK on drop then fails.
            query("ROLLBACK").execute(&mut tx).await.unwrap();
        }
        for _ in 0..16 {
            let tx = store.write_tx().await.expect("a later transaction begins");
            tx.commit().await.unwrap();
        }
    }
    }

    #[tokio::test]
    async fn a_write_transaction_left_open_by_a_frozen_replica_is_ended_and_the_others_write_again() {
        let (frozen, data) = test_store_on(TestBackend::Postgres).await;
        let TestData::Postgres(database) = &data else {
            unreachable!("a PostgreSQL store")
        };
        let other = Store::open(&database.url).await.unwrap();
        // The frozen replica: it holds the write lock and sends nothing more.
        let held = frozen.write_tx().await.unwrap();

        let next = tokio::time::timeout(Duration::from_secs(120), async {
            let tx = other.write_tx().await?;
            tx.commit().await
        })
        .await;

        assert!(matches!(next, Ok(Ok(()))), "the other replica writes again: {next:?}");
        drop(held);
    }

    #[test]
    fn a_full_disk_is_transient_and_a_bad_row_is_not() {
        assert!(Error::DiskFull.is_transient());
        assert!(Error::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!Error::Database(sqlx::Error::RowNotFound).is_transient());
        assert!(!Error::Conflict.is_transient());
    }
}
