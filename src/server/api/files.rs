//! Send File: `POST /files` (multipart, the file streamed to the server's disk as it arrives),
//! `GET /files` and `GET /files/{send_id}` with per-instance results.

use super::{rfc3339, window};
use crate::dispatch::error::invalid;
use crate::dispatch::{Actor, Error, Field, SendFile};
use crate::protocol::files::{FileResult, FileSend, FileSendStatus, FileSendsResponse, SendFileCreated, format_mode};
use crate::server::AppState;
use crate::server::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::store::{FileResultRow, FileSendRow};
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use serde::Deserialize;

/// A send as the API shows it; `results` only when asked for.
pub fn file_send_dto(send: FileSendRow, results: &[FileResultRow], with_results: bool) -> FileSend {
    FileSend {
        status: FileSendStatus::of(results.iter().map(|r| r.status)),
        instance_count: results.len(),
        send_id: send.id,
        name: send.name,
        description: send.description,
        target_dir: send.target_dir,
        mode: format_mode(send.mode),
        owner: send.owner,
        group: send.group,
        overwrite: send.overwrite,
        timeout_secs: send.timeout_secs,
        size: send.size,
        sha256: send.sha256,
        creator: send.created_by,
        created_time: rfc3339(send.created_at),
        results: with_results.then(|| results.iter().map(file_result_dto).collect()),
    }
}

fn file_result_dto(row: &FileResultRow) -> FileResult {
    FileResult {
        instance_id: row.instance_id.clone(),
        status: row.status,
        error_code: row.error_code,
        error_info: row.error_info.clone(),
        start_time: row.start_time.map(rfc3339),
        finish_time: row.finish_time.map(rfc3339),
        bytes_sent: row.bytes_sent,
        resumed_from: row.resumed_from,
    }
}

fn bad_form(e: impl std::fmt::Display) -> Error {
    invalid(Field::FileContent, format!("the multipart body could not be read: {e}"))
}

/// Puts one text field of the form into the request.
fn set_field(request: &mut SendFile, name: &str, text: String) -> Result<(), Error> {
    match name {
        "instance_ids" | "instance_id" => request.instance_ids.extend(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        ),
        "target_dir" => request.target_dir = text,
        "name" => request.name = text,
        "mode" => request.mode = Some(text).filter(|t| !t.trim().is_empty()),
        "owner" => request.owner = Some(text),
        "group" => request.group = Some(text),
        "overwrite" => request.overwrite = matches!(text.trim(), "true" | "1" | "on" | "yes"),
        "timeout_secs" if text.trim().is_empty() => {}
        "timeout_secs" => {
            let secs = text
                .trim()
                .parse()
                .map_err(|_| invalid(Field::Timeout, "`timeout_secs` must be a whole number of seconds"))?;
            request.timeout_secs = Some(secs);
        }
        "description" => request.description = text,
        other => {
            return Err(invalid(
                Field::FileContent,
                format!("unknown form field {other:?}: see POST /api/v1/files in README.md"),
            ));
        }
    }
    Ok(())
}

/// Reads a Send File form (fields in any order; the `file` part written to disk as it
/// arrives) and makes the send; the console's upload posts the same form. Without `name`, the
/// uploaded file's own name is used.
pub async fn receive(state: &AppState, actor: &Actor, mut form: Multipart) -> Result<String, Error> {
    let (mut request, mut upload, mut file_name) = (SendFile::default(), None, None);
    while let Some(mut field) = form.next_field().await.map_err(bad_form)? {
        let name = field.name().unwrap_or_default().to_string();
        if name != "file" {
            set_field(&mut request, &name, field.text().await.map_err(bad_form)?)?;
            continue;
        }
        file_name = field
            .file_name()
            .and_then(|n| n.rsplit(['/', '\\']).next())
            .map(str::to_string);
        let mut staged = state.dispatcher.begin_upload(actor).await?;
        while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
            staged.write(&chunk).await?;
        }
        upload = Some(staged);
    }
    let upload = upload.ok_or_else(|| invalid(Field::FileContent, "the form has no `file` part: choose a file"))?;
    if request.name.is_empty() {
        request.name = file_name.unwrap_or_default();
    }
    state.dispatcher.send_file(actor, upload, request).await
}

/// The Send File form: the file and its text fields, in any order.
// For the OpenAPI document only: `receive` reads the parts one by one, nothing builds this.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SendFileForm {
    /// The file (streamed to the server's disk, at most `--max-file-bytes`).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Instance ids, comma-separated or the field repeated (`instance_id` is taken too).
    instance_ids: String,
    /// An absolute directory on the instances.
    target_dir: String,
    /// The file's name there; the upload's own name when left out.
    name: Option<String>,
    /// Octal permission bits, e.g. `0644`.
    mode: Option<String>,
    /// User name or id to own the file; the agent's own when left out.
    owner: Option<String>,
    group: Option<String>,
    /// `true` replaces a file already there; otherwise that instance fails `FileAlreadyExists`.
    overwrite: Option<bool>,
    /// Seconds the transfer may take.
    timeout_secs: Option<u64>,
    description: Option<String>,
}

/// SendFile.
#[utoipa::path(
    post,
    path = "/files",
    tag = "files",
    operation_id = "SendFile",
    summary = "Send a file to instances (SendFile)",
    request_body(content = SendFileForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored and being sent (operator).", body = SendFileCreated),
    ),
)]
pub async fn create(
    actor: Actor,
    State(state): State<AppState>,
    form: Multipart,
) -> Result<(StatusCode, ApiJson<SendFileCreated>), ApiError> {
    let send_id = receive(&state, &actor, form).await?;
    Ok((StatusCode::CREATED, ApiJson(SendFileCreated { send_id })))
}

/// DescribeSendFileResults, one send.
#[utoipa::path(
    get,
    path = "/files/{send_id}",
    tag = "files",
    operation_id = "DescribeSendFileResults",
    summary = "Get a file send and its per-instance results",
    params(("send_id" = String, Path, description = "The send's id (`f-…`).")),
    responses(
        (status = 200, description = "The send with its per-instance results.", body = FileSend),
    ),
)]
pub async fn show(
    _actor: Actor,
    State(state): State<AppState>,
    ApiPath(send_id): ApiPath<String>,
) -> Result<ApiJson<FileSend>, ApiError> {
    let (send, results) = state.dispatcher.file_send(&send_id).await?;
    Ok(ApiJson(file_send_dto(send, &results, true)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<u64>,
    page_size: Option<u64>,
}

/// The newest sends first, with their overall status.
#[utoipa::path(
    get,
    path = "/files",
    tag = "files",
    operation_id = "ListFileSends",
    summary = "List file sends",
    params(ListQuery),
    responses(
        (
            status = 200,
            description = "A page of sends, newest first, with their overall status.",
            body = FileSendsResponse,
        ),
    ),
)]
pub async fn list(
    _actor: Actor,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<FileSendsResponse>, ApiError> {
    let (offset, limit) = window(query.page, query.page_size)?;
    let (sends, total) = state.dispatcher.file_sends(offset, limit).await?;
    let mut files = Vec::with_capacity(sends.len());
    for send in sends {
        let (_, results) = state.dispatcher.file_send(&send.id).await?;
        files.push(file_send_dto(send, &results, false));
    }
    Ok(ApiJson(FileSendsResponse { files, total }))
}
