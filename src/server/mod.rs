//! The HTTP side of `fleetrun serve`: the web console, the JSON API, the agent endpoints and
//! the live streams.
//!
//! Handlers are thin: they extract their input, make one call into the domain (`dispatch`)
//! for anything that changes state or needs a permission, or into `store` for a plain read,
//! and render the answer. No handler holds a rule, a limit or an audit write. Depends on
//! `dispatch` and `store`, never the other way round.

mod agent;
pub mod api;
mod auth;
mod console;
mod download;
mod ecs;
mod error;
mod headers;
mod listen;
mod live;
pub mod metrics;

pub use error::ApiError;

use crate::config::ServeArgs;
use crate::dispatch::sealing::SecretKey;
use crate::dispatch::{Dispatcher, FirstAdmin, Settings};
use crate::store::{OutputLimits, Store};
use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use ipnet::IpNet;
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
    /// Plain reads (listings, pages); everything else goes through the dispatcher.
    pub store: Store,
    /// The domain.
    pub dispatcher: Dispatcher,
    /// Cancelled when the server shuts down; long-lived sockets watch it.
    shutdown: CancellationToken,
    /// Served over TLS: cookies are `Secure`, answers carry HSTS, agent lines say https.
    pub(crate) tls: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`); read by
    /// the `PeerIp` extractor only.
    pub(crate) trusted_proxies: Arc<[IpNet]>,
    /// The agent binary of the one-line install (`--agent-binary`), with its cached SHA-256.
    pub(crate) agent_binary: Arc<download::AgentBinary>,
    /// The Prometheus registry and who may read it (`/metrics`); off unless configured.
    pub(crate) metrics: Arc<metrics::Exposition>,
}

impl AppState {
    /// State over a store and a started dispatcher.
    pub fn new(store: Store, dispatcher: Dispatcher, shutdown: CancellationToken) -> Self {
        let metrics = Arc::new(metrics::Exposition::new(&dispatcher, metrics::Access::Off));
        AppState {
            store,
            dispatcher,
            shutdown,
            tls: false,
            trusted_proxies: Arc::from([]),
            agent_binary: Arc::new(download::AgentBinary::new(None)),
            metrics,
        }
    }

    /// Serves `/metrics` to whom `access` admits (and times requests), or not at all (`Off`).
    pub fn with_metrics(mut self, access: metrics::Access) -> Self {
        self.metrics = Arc::new(metrics::Exposition::new(&self.dispatcher, access));
        self
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    let mut routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .nest("/api/v1", api::routes())
        .route("/api/docs", get(api::openapi::page))
        .route("/agent/v1/register", post(agent::register))
        .route("/agent/v1/connect", get(agent::connect))
        .route("/install.sh", get(download::script))
        .route("/download/fleetrun-agent", get(download::binary))
        .route("/download/fleetrun-agent.sha256", get(download::checksum))
        .merge(console::routes());
    let is_metered = state.metrics.access.is_on();
    if is_metered {
        // After every route: a route layer wraps the routes added before it.
        routes = routes
            .route("/metrics", get(metrics::scrape))
            .route_layer(axum::middleware::from_fn(metrics::matched_route));
    }
    let router = routes
        // The ECS API shares `/` with the console: its calls are told apart by their parameters.
        .layer(axum::middleware::from_fn_with_state(state.clone(), ecs::route))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), headers::security))
        .layer(axum::middleware::from_fn(error::request_id))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    let router = if is_metered {
        router.layer(axum::middleware::from_fn_with_state(state.clone(), metrics::record))
    } else {
        router
    };
    router.with_state(state)
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
        files_dir: args.data_dir.join("files"),
        max_file_bytes: args.max_file_bytes,
        max_instances: args.max_instances,
        retained_command_quota: args.retained_command_quota,
        retention: Duration::from_secs(args.retention_days * 24 * 3600),
        reconnect_rate: args.reconnect_rate,
        reconnect_window_max: Duration::from_secs(args.reconnect_window_max_secs),
        max_attaching: args.max_attaching as usize,
        min_schedule_interval: Duration::from_secs(args.min_schedule_interval),
        ..Settings::default()
    }
}

/// Runs `fleetrun serve` on a bound listener until `shutdown` is cancelled.
pub async fn run(args: ServeArgs, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Before anything is created: a wrong metrics option stops the start with nothing to undo.
    let access = metrics::Access::from_options(
        args.metrics_token.as_ref().map(|token| token.0.as_str()),
        args.metrics_token_file.as_deref(),
        args.metrics_open,
    )?;
    let store = open_store(&args).await?;
    // Held until the server stops: `fleetrun restore` refuses to swap the file under it.
    let _in_use = match args.sqlite_file() {
        Some(db) => Some(crate::files::lock_database(&db, false)?.with_context(|| {
            format!(
                "{} is being restored (fleetrun restore); start the server once it is done",
                db.display()
            )
        })?),
        None => None,
    };
    let key_file = args.secret_key_file();
    let secret_key = SecretKey::load_or_create(&key_file)
        .with_context(|| format!("cannot load the secret key (--secret-key-file {})", key_file.display()))?;
    let tracker = TaskTracker::new();
    let dispatcher = Dispatcher::start(store.clone(), secret_key, settings(&args), shutdown.clone(), &tracker);
    dispatcher.join_replicas().await?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(listen::tls_config(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("give both --tls-cert and --tls-key, or neither"),
    };
    dispatcher.load_settings().await?;
    // Before the first agent is welcomed: its reconnect window is sized to the whole fleet.
    dispatcher.count_fleet().await?;
    // Named at start so that an operator can tell which process a replica id in a later
    // warning ("a replica stopped answering") is.
    let replica = dispatcher.replica_id().to_string();
    let mut state = AppState::new(store.clone(), dispatcher, shutdown.clone()).with_metrics(access);
    state.tls = tls.is_some();
    state.trusted_proxies = args.trusted_proxies.clone().into();
    state.agent_binary = Arc::new(download::AgentBinary::new(args.agent_binary.clone()));
    match state.agent_binary.path() {
        Some(path) if path.is_file() => {
            tracing::info!(path = %path.display(), "/install.sh hands out this agent binary")
        }
        Some(path) => tracing::warn!(
            path = %path.display(),
            "no agent binary there, so /install.sh cannot install agents: place one, or give --agent-binary PATH"
        ),
        None => tracing::warn!("no agent binary to hand out at /download/fleetrun-agent: give --agent-binary PATH"),
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%replica, "fleetrun server listening on {scheme}://{}", listener.local_addr()?);
    let header_timeout = Duration::from_secs(args.header_timeout_secs);
    listen::serve(listener, router(state), tls, header_timeout, shutdown.clone()).await?;

    tracker.close();
    tracker.wait().await;
    store.close().await;
    Ok(())
}

/// Creates the data directory, opens the database (applying migrations) and, on an empty
/// database, creates the `admin` account. Both hold every command's output: they are made
/// readable by this user only (0700, 0600).
pub async fn open_store(args: &ServeArgs) -> anyhow::Result<Store> {
    crate::files::create_private_dir(
        &args.data_dir,
        &["fleetrun.db", "initial-admin-password", "agents", "secret.key"],
    )
    .context("cannot create the data directory")?;
    if let Some(db) = args.sqlite_file() {
        crate::files::create_private_database(&db)?;
    }
    let store = Store::open(&args.database_url())
        .await
        .context("cannot open the database")?;
    ensure_admin(&store, args).await?;
    Ok(store)
}

/// On an empty database, creates the `admin` account (DESIGN.md §8) and shows a generated
/// password once (and keeps it in `<data-dir>/initial-admin-password`, mode 0600).
async fn ensure_admin(store: &Store, args: &ServeArgs) -> anyhow::Result<()> {
    let domain = Dispatcher::offline(store.clone(), settings(args));
    let given = args.admin_password.as_ref().map(|secret| secret.0.as_str());
    match domain
        .ensure_first_admin(given)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the admin account (FLEETRUN_ADMIN_PASSWORD): {e}"))?
    {
        FirstAdmin::Existed => {}
        FirstAdmin::Created => tracing::info!("created user admin with the password from FLEETRUN_ADMIN_PASSWORD"),
        FirstAdmin::Generated(password) => {
            let file = args.data_dir.join("initial-admin-password");
            crate::files::write_private(&file, &format!("{password}\n"))?;
            println!("fleetrun: created user admin with password {password}");
            println!(
                "fleetrun: the password is also in {} (mode 0600); change it after logging in",
                file.display()
            );
        }
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
        let dispatch = Settings::default();
        assert_eq!(
            (
                settings.reconnect_rate,
                settings.reconnect_window_max,
                settings.max_attaching
            ),
            (
                dispatch.reconnect_rate,
                dispatch.reconnect_window_max,
                dispatch.max_attaching
            )
        );
        assert_eq!(settings.reconnect_window_max, Duration::from_secs(30));
        assert!(args.database_url().ends_with("fleetrun-data/fleetrun.db"));
        let token = args.metrics_token.as_ref().map(|token| token.0.as_str());
        let metrics =
            metrics::Access::from_options(token, args.metrics_token_file.as_deref(), args.metrics_open).unwrap();
        assert!(!metrics.is_on(), "/metrics is off unless asked for");
    }
}
