//! The HTTP side of `fleetrun serve`: the JSON API, the agent endpoints and the live stream.
//!
//! Handlers are thin: they extract and check input, make one call into `dispatch` or `store`,
//! and shape the answer. Depends on `dispatch` and `store`, never the other way round.

mod agent;
pub mod api;
mod auth;
mod console;
mod error;
mod listen;
mod live;
pub(crate) mod throttle;

pub use auth::{hash_password, verify_password};
pub use error::ApiError;

use crate::config::ServeArgs;
use crate::dispatch::{Dispatcher, Settings};
use crate::store::{NewAudit, OutputLimits, Role, Store, ids};
use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request body (the content limit is 64 KiB; Base64 and JSON add a third).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Shared state of every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub dispatcher: Dispatcher,
    /// Recently verified Basic-auth passwords.
    logins: Arc<auth::Logins>,
    /// Recent failed logins, per address and per username.
    pub(crate) throttle: Arc<throttle::LoginThrottle>,
    /// Whether HTTP Basic is accepted on the API (an admin can switch it off).
    basic_auth: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled when the server shuts down; long-lived sockets watch it.
    shutdown: CancellationToken,
    /// Served over TLS: cookies are `Secure` and answers carry HSTS.
    pub(crate) tls: bool,
}

impl AppState {
    /// State over a store and a started dispatcher.
    pub fn new(store: Store, dispatcher: Dispatcher, shutdown: CancellationToken) -> Self {
        AppState {
            store,
            dispatcher,
            logins: Arc::default(),
            throttle: Arc::default(),
            basic_auth: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            shutdown,
            tls: false,
        }
    }

    /// Forgets verified Basic-auth passwords (after an account changed).
    pub(crate) fn forget_logins(&self) {
        self.logins.clear();
    }

    /// Whether the API accepts HTTP Basic.
    pub(crate) fn basic_auth_enabled(&self) -> bool {
        self.basic_auth.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Switches HTTP Basic on the API on or off, and remembers it.
    pub(crate) async fn set_basic_auth(&self, enabled: bool) -> Result<(), crate::store::Error> {
        self.store
            .set_setting("basic_auth", if enabled { "on" } else { "off" })
            .await?;
        self.basic_auth.store(enabled, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Records an audit entry. A failure to record is logged, not returned: the action is done.
    pub(crate) async fn audit(&self, caller: &auth::Caller, action: &str, target: &str, detail: &str) {
        let entry = NewAudit {
            username: &caller.username,
            source_ip: &caller.source_ip,
            action,
            target,
            detail,
        };
        if let Err(e) = self.store.audit(entry).await {
            tracing::warn!(error = %e, action, "could not record an audit entry");
        }
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .nest("/api/v1", api::routes())
        .route("/agent/v1/register", post(agent::register))
        .route("/agent/v1/connect", get(agent::connect))
        .merge(console::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            console::security_headers,
        ))
        .layer(axum::middleware::from_fn(error::request_id))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The dispatcher settings that `fleetrun serve`'s options describe.
pub fn settings(args: &ServeArgs) -> Settings {
    let output = args.output_limit_bytes;
    Settings {
        heartbeat: Duration::from_secs(args.heartbeat_secs),
        delivery_window: Duration::from_secs(args.delivery_window_secs),
        timeout_grace: Duration::from_secs(args.timeout_grace_secs),
        output: OutputLimits {
            head: output / 2,
            tail: output - output / 2,
        },
        max_content_bytes: args.max_content_bytes,
        max_instances: args.max_instances,
        retained_command_quota: args.retained_command_quota,
        retention: Duration::from_secs(args.retention_days * 24 * 3600),
        ..Settings::default()
    }
}

/// Runs `fleetrun serve` on a bound listener until `shutdown` is cancelled.
pub async fn run(args: ServeArgs, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = open_store(&args).await?;
    store.mark_all_offline().await?;

    let tracker = TaskTracker::new();
    let dispatcher = Dispatcher::start(store.clone(), settings(&args), shutdown.clone(), &tracker);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(listen::tls_config(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("give both --tls-cert and --tls-key, or neither"),
    };
    let mut state = AppState::new(store.clone(), dispatcher, shutdown.clone());
    state.tls = tls.is_some();
    let basic_auth = store.setting("basic_auth").await?.is_none_or(|v| v != "off");
    state.basic_auth.store(basic_auth, std::sync::atomic::Ordering::Relaxed);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("fleetrun server listening on {scheme}://{}", listener.local_addr()?);
    listen::serve(listener, router(state), tls, shutdown.clone()).await?;

    tracker.close();
    tracker.wait().await;
    store.close().await;
    Ok(())
}

/// Creates the data directory, opens the database (applying migrations) and, on an empty
/// database, creates the `admin` account. Both hold every command's output: they are made
/// readable by this user only (0700, 0600).
pub async fn open_store(args: &ServeArgs) -> anyhow::Result<Store> {
    crate::files::create_private_dir(&args.data_dir).context("cannot create the data directory")?;
    if let Some(db) = args.sqlite_file() {
        crate::files::create_private_database(&db)?;
    }
    let store = Store::open(&args.database_url())
        .await
        .context("cannot open the database")?;
    ensure_admin(&store, args).await?;
    Ok(store)
}

/// On an empty database, creates the `admin` account (DESIGN.md §8).
async fn ensure_admin(store: &Store, args: &ServeArgs) -> anyhow::Result<()> {
    if store.count_users().await? > 0 {
        return Ok(());
    }
    let (password, generated) = match &args.admin_password {
        Some(secret) if secret.0.chars().count() < api::users::MIN_PASSWORD => anyhow::bail!(
            "FLEETRUN_ADMIN_PASSWORD is too short: use at least {} characters",
            api::users::MIN_PASSWORD
        ),
        Some(secret) => (secret.0.clone(), false),
        None => (ids::new_secret()[..24].to_string(), true),
    };
    let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("cannot hash the admin password: {e}"))?;
    store.create_user("admin", &hash, Role::Admin).await?;
    if generated {
        let file = args.data_dir.join("initial-admin-password");
        crate::files::write_private(&file, &format!("{password}\n"))?;
        println!("fleetrun: created user admin with password {password}");
        println!(
            "fleetrun: the password is also in {} (mode 0600); change it after logging in",
            file.display()
        );
    } else {
        tracing::info!("created user admin with the password from FLEETRUN_ADMIN_PASSWORD");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Mode};
    use clap::Parser as _;

    #[test]
    fn serve_defaults_match_the_design() {
        let Mode::Serve(args) = Cli::parse_from(["fleetrun", "serve"]).mode else {
            panic!("not serve")
        };
        let settings = settings(&args);

        assert_eq!(
            settings.output,
            OutputLimits {
                head: 512 * 1024,
                tail: 512 * 1024
            }
        );
        assert_eq!(settings.heartbeat, Duration::from_secs(20));
        assert_eq!(settings.retained_command_quota, 500);
        assert!(args.database_url().ends_with("fleetrun-data/fleetrun.db"));
    }
}
