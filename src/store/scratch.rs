//! Throwaway PostgreSQL databases for the tests and benchmarks that run on PostgreSQL: each
//! gets a fresh database on the server `FLEETRUN_TEST_POSTGRES` names (the machine's own by
//! default), dropped when it goes out of scope.

use sqlx::{ConnectOptions as _, Connection as _, Executor as _};
use std::str::FromStr as _;

/// The PostgreSQL server tests use unless `FLEETRUN_TEST_POSTGRES` names another: the one CI
/// and the development machines run (trust authentication, database `test`).
pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server tests create their databases on.
pub fn postgres_server() -> String {
    std::env::var("FLEETRUN_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_string())
}

/// A database created for one test or benchmark run, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct ScratchDatabase {
    /// Its URL, for `--database-url` or [`super::Store::open`].
    pub url: String,
    name: String,
    server: String,
}

impl ScratchDatabase {
    /// Creates an empty database on [`postgres_server`]. When no PostgreSQL answers, the error
    /// is one line that says how to start one.
    pub async fn create() -> Result<ScratchDatabase, String> {
        ScratchDatabase::create_on(&postgres_server()).await
    }

    /// [`ScratchDatabase::create`] on the server `server` names.
    pub async fn create_on(server: &str) -> Result<ScratchDatabase, String> {
        let server = server.to_string();
        let options = sqlx::postgres::PgConnectOptions::from_str(&server)
            .map_err(|e| format!("FLEETRUN_TEST_POSTGRES={server:?} is not a PostgreSQL URL: {e}"))?;
        let connected = tokio::time::timeout(std::time::Duration::from_secs(10), options.connect()).await;
        let mut admin = match connected {
            Ok(Ok(admin)) => admin,
            Ok(Err(e)) => return Err(no_postgres(&server, &e.to_string())),
            Err(_) => return Err(no_postgres(&server, "no answer in 10 s")),
        };
        let name = format!("fleetrun_test_{}_{:08x}", std::process::id(), rand::random::<u32>());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .map_err(|e| format!("cannot create a test database on {server}: {e}"))?;
        let _ = admin.close().await;
        let url = options.database(&name).to_url_lossy().to_string();
        Ok(ScratchDatabase { url, name, server })
    }
}

/// The one line a test prints when there is no PostgreSQL to run on.
fn no_postgres(server: &str, why: &str) -> String {
    format!(
        "no PostgreSQL answers at {server} ({why}); start one (`pg_ctlcluster 15 main start`, or `.ci/run` \
         starts it) or point FLEETRUN_TEST_POSTGRES at one"
    )
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // Drop runs outside async code: a thread of its own with a small runtime, so this
        // works from a test's runtime too. `WITH (FORCE)` ends the connections still open.
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&server).await.ok()?;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the test database {}; drop it by hand", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_postgresql_the_error_is_one_line_saying_how_to_start_it() {
        let error = ScratchDatabase::create_on("postgres://postgres@127.0.0.1:1/test")
            .await
            .unwrap_err();

        assert!(
            error.starts_with("no PostgreSQL answers at postgres://postgres@127.0.0.1:1/test"),
            "{error}"
        );
        assert!(error.contains("pg_ctlcluster") && !error.contains('\n'), "{error}");
    }
}
