//! RunCommand, execution records, their per-instance results and output, and stop.

use super::{rfc3339, window};
use crate::protocol::InvocationStatus;
use crate::protocol::api::{
    Invocation, InvocationCreated, InvocationResult, InvocationsResponse, RunCommandRequest, StopRequest,
};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::store::{self, InvocationFilter, InvocationRow, ResultRow, Role};
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// An invocation as the API shows it.
pub fn invocation_dto(row: InvocationRow, results: Option<Vec<InvocationResult>>) -> Invocation {
    Invocation {
        invocation_status: InvocationStatus::from_counts(row.counts.clone()),
        instance_count: row.counts.values().sum(),
        status_counts: row.counts,
        invoke_id: row.id,
        command_id: row.command_id,
        name: row.name,
        command_type: row.command_type,
        command_content: row.content,
        working_dir: row.working_dir,
        username: row.username,
        timeout_secs: row.timeout_secs,
        parameters: row.parameters,
        creator: row.creator,
        created_time: rfc3339(row.created_at),
        results,
    }
}

/// A result as the API shows it, with its kept output as text.
pub fn result_dto(row: ResultRow, output: &[u8]) -> InvocationResult {
    InvocationResult {
        instance_id: row.instance_id,
        invocation_status: row.status,
        exit_code: row.exit_code,
        error_code: row.error_code,
        error_info: row.error_info,
        output: String::from_utf8_lossy(output).into_owned(),
        dropped: row.dropped,
        start_time: row.start_time.map(rfc3339),
        finish_time: row.finish_time.map(rfc3339),
        stop_time: row.stop_time.map(rfc3339),
    }
}

fn not_found(invoke_id: &str) -> impl Fn(store::Error) -> ApiError + '_ {
    move |e| match e {
        store::Error::NotFound => ApiError::not_found("invocation", invoke_id),
        other => other.into(),
    }
}

/// RunCommand.
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RunCommandRequest>,
) -> Result<(StatusCode, ApiJson<InvocationCreated>), ApiError> {
    caller.require(Role::Operator)?;
    let count = req.instance_ids.len();
    let created = state.dispatcher.run_command(&caller.username, req).await?;
    state
        .audit(
            &caller,
            "RunCommand",
            &created.invoke_id,
            &format!("on {count} instances"),
        )
        .await;
    Ok((StatusCode::CREATED, ApiJson(created)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    instance_id: Option<String>,
    command_id: Option<String>,
    page: Option<u64>,
    page_size: Option<u64>,
}

pub async fn list(
    _: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<InvocationsResponse>, ApiError> {
    let (offset, limit) = window(query.page, query.page_size)?;
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        Some(text) => Some(text.parse::<InvocationStatus>().map_err(|_| {
            let all: Vec<&str> = InvocationStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(
                "InvalidParameter.Status",
                format!("status {text:?} is not one of {}", all.join(", ")),
            )
        })?),
        None => None,
    };
    let mut filter = InvocationFilter {
        instance_id: query.instance_id.filter(|s| !s.is_empty()),
        command_id: query.command_id.filter(|s| !s.is_empty()),
        offset,
        limit,
    };
    // The overall status is derived, not stored: filter on it after reading, then page.
    if status.is_some() {
        (filter.offset, filter.limit) = (0, i64::MAX as u64);
    }
    let (rows, total) = state.store.list_invocations(&filter).await?;
    let mut invocations: Vec<Invocation> = rows.into_iter().map(|r| invocation_dto(r, None)).collect();
    let total = match status {
        Some(status) => {
            invocations.retain(|i| i.invocation_status == status);
            let total = invocations.len() as u64;
            invocations = invocations
                .into_iter()
                .skip(offset as usize)
                .take(limit as usize)
                .collect();
            total
        }
        None => total,
    };
    Ok(ApiJson(InvocationsResponse { invocations, total }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// Leave out the output text of every result (default: include it).
    include_output: Option<bool>,
}

pub async fn show(
    _: Caller,
    State(state): State<AppState>,
    ApiPath(invoke_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ShowQuery>,
) -> Result<ApiJson<Invocation>, ApiError> {
    let row = state
        .store
        .invocation(&invoke_id)
        .await
        .map_err(not_found(&invoke_id))?;
    let mut results = Vec::new();
    for result in state.store.results(&invoke_id).await? {
        let output = if query.include_output.unwrap_or(true) {
            state.store.output(result.id).await?
        } else {
            Vec::new()
        };
        results.push(result_dto(result, &output));
    }
    Ok(ApiJson(invocation_dto(row, Some(results))))
}

/// The exact kept output bytes of one result.
pub async fn output(
    _: Caller,
    State(state): State<AppState>,
    ApiPath((invoke_id, instance_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let result = state
        .store
        .result(&invoke_id, &instance_id)
        .await
        .map_err(|e| match e {
            store::Error::NotFound => ApiError::not_found("result", &format!("{invoke_id}/{instance_id}")),
            other => other.into(),
        })?;
    let bytes = state.store.output(result.id).await?;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (
            header::HeaderName::from_static("x-fleetrun-dropped"),
            result.dropped.to_string(),
        ),
        (
            header::HeaderName::from_static("x-fleetrun-status"),
            result.status.to_string(),
        ),
    ];
    Ok((headers, Body::from(bytes)).into_response())
}

/// StopInvocation: all results, or those of the instances given.
pub async fn stop(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(invoke_id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    // The body is optional: no body stops every result.
    let req: StopRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StopRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("InvalidParameter.Body", format!("invalid stop body: {e}")))?
    };
    let stopped = state
        .dispatcher
        .stop(&invoke_id, req.instance_ids.as_deref())
        .await
        .map_err(|e| match e {
            crate::dispatch::Error::NotFound(_) => ApiError::not_found("invocation", &invoke_id),
            other => other.into(),
        })?;
    state
        .audit(
            &caller,
            "StopInvocation",
            &invoke_id,
            &format!("{stopped} results stopped"),
        )
        .await;
    Ok(StatusCode::ACCEPTED)
}
