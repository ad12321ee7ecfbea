//! The SQL of `fleetrun backup` and `restore` (SQLite only; PostgreSQL has pg_dump).
//!
//! Both work on connections of their own, never the server's pool: a backup runs beside a
//! serving process, a check on a file no server uses.

use super::Result;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, Row as _};
use std::path::Path;
use std::time::Duration;

/// What a check found in a database file that is fit to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Migrations applied to it.
    pub applied: usize,
    /// Migrations this build has that it lacks (applied when a server opens it).
    pub pending: usize,
}

/// Why a file is not fit to restore.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("SQLite cannot read it ({0}): is it a database file?")]
    Unreadable(String),
    #[error("it is damaged: PRAGMA integrity_check reports {0}")]
    Damaged(String),
    #[error("it is not a fleetrun database (it has no _sqlx_migrations table)")]
    NotFleetrun,
    #[error(
        "it holds migration {0} that this fleetrun does not have: it was made by a newer fleetrun, so restore it with that version"
    )]
    Newer(i64),
    #[error("its migration {0} differs from this fleetrun's: it is not a database of this project, or was edited")]
    Foreign(i64),
    #[error("its migration {0} failed and was never completed: it cannot be used")]
    Incomplete(i64),
}

/// Copies the live SQLite database `db` into `to` (which must not exist, or be empty) with
/// `VACUUM INTO`: one read transaction, so the copy is the database as of one instant, while
/// the server goes on writing in WAL mode.
pub async fn vacuum_into(db: &Path, to: &Path) -> Result<()> {
    // Read-only: the backup never writes the live database; busy waits out a checkpoint.
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    let target = to.to_string_lossy().into_owned();
    let copied = sqlx::query("VACUUM INTO ?").bind(target).execute(&mut conn).await;
    conn.close().await?;
    copied?;
    Ok(())
}

/// Checks that `file` is a sound fleetrun SQLite database this build can open: readable,
/// `PRAGMA integrity_check` ok, and its applied migrations this build's own.
pub async fn check_sqlite(file: &Path) -> std::result::Result<Checked, CheckError> {
    let unreadable = |e: sqlx::Error| CheckError::Unreadable(e.to_string());
    // Immutable: nobody writes a backup, and SQLite then makes no -wal or -shm file beside it.
    let mut conn = SqliteConnectOptions::new()
        .filename(file)
        .read_only(true)
        .immutable(true)
        .connect()
        .await
        .map_err(unreadable)?;
    let checked = check_connection(&mut conn).await;
    let _ = conn.close().await;
    checked
}

async fn check_connection(conn: &mut sqlx::SqliteConnection) -> std::result::Result<Checked, CheckError> {
    let unreadable = |e: sqlx::Error| CheckError::Unreadable(e.to_string());
    let report: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut *conn)
        .await
        .map_err(unreadable)?;
    if report != ["ok"] {
        return Err(CheckError::Damaged(report.join("; ")));
    }
    let has_migrations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '_sqlx_migrations'")
            .fetch_one(&mut *conn)
            .await
            .map_err(unreadable)?;
    if has_migrations == 0 {
        return Err(CheckError::NotFleetrun);
    }
    let rows = sqlx::query("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .map_err(unreadable)?;
    let ours = sqlx::migrate!("./migrations/sqlite");
    let mut applied = 0;
    for row in rows {
        let version: i64 = row.try_get("version").map_err(unreadable)?;
        let success: bool = row.try_get("success").map_err(unreadable)?;
        let checksum: Vec<u8> = row.try_get("checksum").map_err(unreadable)?;
        let Some(migration) = ours.iter().find(|m| m.version == version) else {
            return Err(CheckError::Newer(version));
        };
        if !success {
            return Err(CheckError::Incomplete(version));
        }
        if *migration.checksum != *checksum {
            return Err(CheckError::Foreign(version));
        }
        applied += 1;
    }
    if applied == 0 {
        return Err(CheckError::NotFleetrun);
    }
    let pending = ours.iter().count().saturating_sub(applied);
    Ok(Checked { applied, pending })
}
