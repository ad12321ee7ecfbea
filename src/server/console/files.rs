//! The Send File dialog: the form (instances, target directory, name, owner, group, mode,
//! overwrite, timeout), the upload (posted by `static/console.js` with a progress bar, as the
//! JSON API's multipart form), and the per-instance results, refreshed until all are final.

use super::error::PageError;
use super::session::Session;
use super::view::render;
use crate::protocol::files::{FileSend, FileStatus};
use crate::server::AppState;
use crate::server::api::files::{file_send_dto, receive};
use askama::Template;
use axum::extract::{Form, Multipart, Path, Query, State};
use axum::response::{IntoResponse, Response};

#[derive(Template)]
#[template(path = "files/dialog.html")]
pub struct DialogFragment {
    instance_ids: String,
    names: Vec<String>,
    timeout: u64,
}

#[derive(Template)]
#[template(path = "files/results.html")]
pub struct ResultsFragment {
    send: FileSend,
    /// Why the send was refused, instead of results.
    error: Option<String>,
}

impl ResultsFragment {
    fn badge(status: &FileStatus) -> &'static str {
        match status {
            FileStatus::Success => "ok",
            FileStatus::Failed => "bad",
            _ => "busy",
        }
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct DialogQuery {
    #[serde(default)]
    instance_ids: String,
}

/// `GET /console/files/new?instance_ids=…`: the dialog for one instance (its page's button).
pub async fn dialog(
    State(state): State<AppState>,
    _session: Session,
    Query(query): Query<DialogQuery>,
) -> Result<Response, PageError> {
    dialog_fragment(&state, query).await
}

/// `POST /console/files/new` (form `instance_ids=…`): the dialog for the Instances page's
/// selection (**More → Send File**), posted because thousands of ids overflow a URL.
pub async fn dialog_for_selection(
    State(state): State<AppState>,
    _session: Session,
    Form(query): Form<DialogQuery>,
) -> Result<Response, PageError> {
    dialog_fragment(&state, query).await
}

async fn dialog_fragment(state: &AppState, query: DialogQuery) -> Result<Response, PageError> {
    let ids: Vec<String> = query
        .instance_ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let instances = state.dispatcher.store().instances_by_ids(&ids).await?;
    let names = instances.iter().map(|i| format!("{} ({})", i.name, i.id)).collect();
    Ok(render(&DialogFragment {
        instance_ids: ids.join(","),
        names,
        timeout: crate::dispatch::DEFAULT_FILE_TIMEOUT_SECS,
    }))
}

/// `POST /console/files`: the upload; answers the results fragment, or the refusal in it.
pub async fn create(State(state): State<AppState>, session: Session, form: Multipart) -> Result<Response, PageError> {
    match receive(&state, &session.actor(), form).await {
        Ok(send_id) => results_fragment(&state, &send_id).await,
        Err(e) => {
            let message = PageError::from(e).message().to_string();
            let mut response = render(&ResultsFragment {
                send: empty_send(),
                error: Some(message),
            });
            *response.status_mut() = axum::http::StatusCode::BAD_REQUEST;
            Ok(response)
        }
    }
}

/// `GET /console/files/{send_id}/results`: the per-instance results.
pub async fn results(
    State(state): State<AppState>,
    _session: Session,
    Path(send_id): Path<String>,
) -> Result<Response, PageError> {
    results_fragment(&state, &send_id).await
}

async fn results_fragment(state: &AppState, send_id: &str) -> Result<Response, PageError> {
    let (send, results) = state.dispatcher.file_send(send_id).await?;
    Ok(render(&ResultsFragment {
        send: file_send_dto(send, &results, true),
        error: None,
    })
    .into_response())
}

fn empty_send() -> FileSend {
    FileSend {
        send_id: String::new(),
        status: crate::protocol::files::FileSendStatus::Failed,
        name: String::new(),
        description: String::new(),
        target_dir: String::new(),
        mode: String::new(),
        owner: None,
        group: None,
        overwrite: false,
        timeout_secs: 0,
        size: 0,
        sha256: String::new(),
        creator: String::new(),
        created_time: String::new(),
        instance_count: 0,
        results: Some(Vec::new()),
    }
}
