//! The web console: server-rendered pages (askama) made interactive with htmx, in the style of
//! the ECS console's Send Command flow (DESIGN.md §11 lists the words on screen).
//!
//! One file per area, plus `session` (who is signed in, CSRF), `error` (toasts and error
//! pages) and `view` (rendering, pager, how times read). Handlers extract, make one call into
//! the domain (`dispatch`) for anything that changes state or needs a role, or into `store`
//! for a plain read, and render a `*Page` (full page) or `*Fragment` (an htmx swap). Command
//! output is untrusted text: templates escape it, and `fragment` escapes what is built in Rust.

mod activations;
mod audit;
mod commands;
mod error;
mod files;
mod fragment;
mod instances;
mod login;
pub(super) mod records;
mod send;
mod session;
mod static_files;
mod users;
mod view;

pub use error::{ConsoleForm, PageError, ToastNote};
pub use fragment::OutputRenderer;
pub use session::{Layout, Session};
pub use view::{Pager, Url, When, duration, render, status_class};

use super::AppState;
use axum::Router;
use axum::response::Redirect;
use axum::routing::{get, post};

/// Every console route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to(Url::INSTANCES) }))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/console/region", post(login::pick_region))
        .route("/console/instances", get(instances::index))
        .route("/console/instances/ids", get(instances::ids))
        .route("/console/instances/{instance_id}", get(instances::show))
        .route("/console/instances/tags", post(instances::add_tags))
        .route("/console/instances/{instance_id}/name", post(instances::rename))
        .route("/console/instances/{instance_id}/tags", post(instances::set_tags))
        .route(
            "/console/instances/{instance_id}/deregister",
            post(instances::deregister),
        )
        .route("/console/send", get(send::dialog).post(send::run))
        .route("/console/send/open", post(send::open))
        .route("/console/send/form", post(send::redraw))
        .route("/console/send/parameters", post(send::parameters))
        .route("/console/send/picker", post(send::picker))
        // The upload streams to disk under --max-file-bytes, not the 1 MiB body limit.
        .route(
            "/console/files/new",
            get(files::dialog).post(files::dialog_for_selection),
        )
        .route(
            "/console/files",
            post(files::create).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/console/files/{send_id}/results", get(files::results))
        .route("/console/invocations", get(records::index))
        .route("/console/invocations/{invoke_id}", get(records::show))
        .route("/console/invocations/{invoke_id}/panel", get(records::panel))
        .route("/console/invocations/{invoke_id}/live", get(records::live))
        .route("/console/invocations/{invoke_id}/stop", post(records::stop))
        .route(
            "/console/invocations/{invoke_id}/results/{instance_id}/output",
            get(records::download),
        )
        .route("/console/commands", get(commands::index))
        .route(
            "/console/commands/{command_id}",
            get(commands::show).post(commands::update),
        )
        .route("/console/commands/{command_id}/delete", post(commands::delete))
        .route(
            "/console/activations",
            get(activations::index).post(activations::create),
        )
        .route(
            "/console/activations/{activation_id}/disable",
            post(activations::disable),
        )
        .route("/console/audit", get(audit::index))
        .route("/console/users", get(users::index).post(users::create))
        .route("/console/users/{username}", post(users::change))
        .route("/console/settings", post(users::settings))
        .route("/console/account", get(users::account))
        .route("/console/account/password", post(users::password))
        .route("/console/account/tokens", post(users::create_token))
        .route("/console/account/tokens/{token_id}/revoke", post(users::revoke_token))
        .route("/console/account/access-keys", post(users::create_access_key))
        .route(
            "/console/account/access-keys/{access_key_id}/status",
            post(users::access_key_status),
        )
        .route(
            "/console/account/access-keys/{access_key_id}/delete",
            post(users::delete_access_key),
        )
        .route("/static/{*path}", get(static_files::serve))
        .route("/favicon.ico", get(static_files::favicon))
}
