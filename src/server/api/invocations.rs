//! RunCommand, execution records, their per-instance results and output, and stop.

use super::{parse_time, rfc3339, window};
use crate::dispatch::{Actor, Kind, Submitted, check, error::not_found};
use crate::protocol::api::{
    DryRunResponse, Execution, ExecutionsResponse, Invocation, InvocationCreated, InvocationResult,
    InvocationsResponse, RunCommandRequest, StopRequest,
};
use crate::server::AppState;
use crate::server::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::store::{InvocationFilter, InvocationRow, ResultRow};
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// An invocation as the API shows it.
pub fn invocation_dto(row: InvocationRow, results: Option<Vec<InvocationResult>>) -> Invocation {
    Invocation {
        invocation_status: row.status(),
        instance_count: row.counts.total(),
        status_counts: row.counts.0,
        invoke_id: row.id,
        command_id: row.command_id,
        name: row.name,
        spec: row.spec,
        parameters: row.parameters,
        creator: row.creator,
        created_time: rfc3339(row.created_at),
        max_concurrency: row.rate.max_concurrency,
        max_errors: row.rate.max_errors,
        held_count: row.rate.held,
        tags: row.target_tags,
        region_id: row.target_region,
        invocation_tags: row.invocation_tags,
        repeat_mode: row.plan.repeat_mode,
        frequency: row.plan.frequency,
        repeats: row.plan.repeats,
        next_run_time: row.plan.next_run_at.map(rfc3339),
        results,
    }
}

/// RunCommand's and InvokeCommand's answer: 201 with the new invocation; 200 with the first one
/// when its `client_token` was seen before; 200 with what would run for a dry run.
pub fn submitted(submitted: Submitted) -> Response {
    match submitted {
        Submitted::Created(created) if !created.replayed => (StatusCode::CREATED, ApiJson(created)).into_response(),
        Submitted::Created(created) => (StatusCode::OK, ApiJson(Resubmitted::Replayed(created))).into_response(),
        Submitted::DryRun(answer) => (StatusCode::OK, ApiJson(Resubmitted::DryRun(answer))).into_response(),
    }
}

/// RunCommand's and InvokeCommand's 200 answer: the invocation a `client_token` seen before made,
/// or what a dry run would run.
// Untagged, so each is written as it is; a type of its own so the OpenAPI document can name both.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Resubmitted {
    /// The invocation a `client_token` seen before made (`replayed` is true).
    Replayed(InvocationCreated),
    /// What a dry run would run.
    DryRun(DryRunResponse),
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
        repeats: row.repeats,
    }
}

/// RunCommand.
#[utoipa::path(
    post,
    path = "/invocations",
    tag = "invocations",
    operation_id = "RunCommand",
    summary = "Run a command on instances (RunCommand)",
    request_body = RunCommandRequest,
    responses(
        (status = 201, description = "Started (operator).", body = InvocationCreated),
        (
            status = 200,
            description = "A `client_token` seen before (the first invocation, `replayed`), or a dry run \
                           (what would run).",
            body = Resubmitted,
        ),
    ),
)]
pub async fn create(
    actor: Actor,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RunCommandRequest>,
) -> Result<Response, ApiError> {
    Ok(submitted(state.dispatcher.run_command(&actor, req).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    /// An instance id, an id prefix or an instance name.
    instance_id: Option<String>,
    command_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    page: Option<u64>,
    page_size: Option<u64>,
    /// The previous page's `next_token`.
    next_token: Option<String>,
}

#[utoipa::path(
    get,
    path = "/invocations",
    tag = "invocations",
    operation_id = "ListInvocations",
    summary = "List invocations (execution records)",
    params(ListQuery),
    responses(
        (
            status = 200,
            description = "A page of invocations, newest first, with their overall status and counts.",
            body = InvocationsResponse,
        ),
    ),
)]
pub async fn list(
    _: Actor,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<InvocationsResponse>, ApiError> {
    let (offset, limit) = window(query.page, query.page_size)?;
    let after = query
        .next_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(check::cursor)
        .transpose()?;
    if after.is_some() && query.page.is_some() {
        return Err(check::both_page_and_token().into());
    }
    let status = crate::dispatch::check::invocation_status(query.status.as_deref())?;
    let time = |field, text: Option<String>| {
        text.filter(|s| !s.is_empty())
            .map(|s| parse_time(field, &s))
            .transpose()
    };
    let filter = InvocationFilter {
        instance: query.instance_id.filter(|s| !s.is_empty()),
        command_id: query.command_id.filter(|s| !s.is_empty()),
        status,
        repeat_mode: None,
        since: time("since", query.since)?,
        until: time("until", query.until)?,
        after,
        offset,
        limit,
    };
    let page = state.store.list_invocations(&filter).await?;
    Ok(ApiJson(InvocationsResponse {
        next_token: page.next.as_ref().map(check::next_token),
        invocations: page.rows.into_iter().map(|r| invocation_dto(r, None)).collect(),
        total: page.total,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// Leave out the output text of every result (default: include it).
    include_output: Option<bool>,
}

#[utoipa::path(
    get,
    path = "/invocations/{invoke_id}",
    tag = "invocations",
    operation_id = "DescribeInvocation",
    summary = "Get an invocation and its results",
    params(
        ("invoke_id" = String, Path, description = "The invocation's id (`t-…`)."),
        ShowQuery,
    ),
    responses(
        (status = 200, description = "The invocation with the results of its latest execution.", body = Invocation),
    ),
)]
pub async fn show(
    _: Actor,
    State(state): State<AppState>,
    ApiPath(invoke_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ShowQuery>,
) -> Result<ApiJson<Invocation>, ApiError> {
    let row = state
        .store
        .invocation(&invoke_id)
        .await
        .map_err(not_found(Kind::Invocation, &invoke_id))?;
    let results = state.store.results(&invoke_id).await?;
    let mut outputs = if query.include_output.unwrap_or(true) {
        let ids: Vec<i64> = results.iter().map(|r| r.id).collect();
        state.store.outputs(&ids).await?
    } else {
        Default::default()
    };
    let results = results
        .into_iter()
        .map(|r| {
            let output = outputs.remove(&r.id).unwrap_or_default();
            result_dto(r, &output)
        })
        .collect();
    Ok(ApiJson(invocation_dto(row, Some(results))))
}

/// Every execution of an invocation, each with its results and their output.
#[utoipa::path(
    get,
    path = "/invocations/{invoke_id}/executions",
    tag = "invocations",
    operation_id = "ListExecutions",
    summary = "List every execution of an invocation",
    params(("invoke_id" = String, Path, description = "The invocation's id (`t-…`).")),
    responses(
        (
            status = 200,
            description = "Every execution, each with its results and their output.",
            body = ExecutionsResponse,
        ),
    ),
)]
pub async fn executions(
    _: Actor,
    State(state): State<AppState>,
    ApiPath(invoke_id): ApiPath<String>,
) -> Result<ApiJson<ExecutionsResponse>, ApiError> {
    state
        .store
        .invocation(&invoke_id)
        .await
        .map_err(not_found(Kind::Invocation, &invoke_id))?;
    let results = state.store.execution_results(&invoke_id).await?;
    let ids: Vec<i64> = results.iter().map(|r| r.id).collect();
    let mut outputs = state.store.outputs(&ids).await?;
    let mut executions: Vec<Execution> = Vec::new();
    for result in results {
        let output = outputs.remove(&result.id).unwrap_or_default();
        let dto = result_dto(result, &output);
        match executions.last_mut() {
            Some(last) if last.repeats == dto.repeats => last.results.push(dto),
            _ => executions.push(Execution {
                repeats: dto.repeats,
                results: vec![dto],
            }),
        }
    }
    Ok(ApiJson(ExecutionsResponse { invoke_id, executions }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    /// Which execution (from 1); the latest when left out.
    repeats: Option<u32>,
}

/// The exact kept output bytes of one result (of the latest execution, or of `?repeats=`).
#[utoipa::path(
    get,
    path = "/invocations/{invoke_id}/results/{instance_id}/output",
    tag = "invocations",
    operation_id = "GetResultOutput",
    summary = "Get one result's exact output bytes",
    params(
        ("invoke_id" = String, Path, description = "The invocation's id (`t-…`)."),
        ("instance_id" = String, Path, description = "The instance's id (`i-…`)."),
        OutputQuery,
    ),
    responses(
        (
            status = 200,
            description = "The exact kept output bytes.",
            content_type = "application/octet-stream",
            body = Vec<u8>,
            headers(
                ("x-fleetrun-status" = String, description = "The result's status."),
                ("x-fleetrun-dropped" = u64, description = "Bytes produced but not kept."),
                ("x-fleetrun-repeats" = u32, description = "Which execution this output is of."),
            ),
        ),
    ),
)]
pub async fn output(
    _: Actor,
    State(state): State<AppState>,
    ApiPath((invoke_id, instance_id)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OutputQuery>,
) -> Result<Response, ApiError> {
    let (result, bytes) = state
        .dispatcher
        .result_output(&invoke_id, &instance_id, query.repeats)
        .await?;
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
        (
            header::HeaderName::from_static("x-fleetrun-repeats"),
            result.repeats.to_string(),
        ),
    ];
    Ok((headers, Body::from(bytes)).into_response())
}

/// StopInvocation: all results, or those of the instances given.
#[utoipa::path(
    post,
    path = "/invocations/{invoke_id}/stop",
    tag = "invocations",
    operation_id = "StopInvocation",
    summary = "Stop an invocation, or some of its results",
    params(("invoke_id" = String, Path, description = "The invocation's id (`t-…`).")),
    request_body(
        content = Option<StopRequest>,
        description = "Optional: without a body (or without `instance_ids`) every result is stopped.",
    ),
    responses(
        (status = 202, description = "Stopping (operator)."),
    ),
)]
pub async fn stop(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(invoke_id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    // The body is optional: no body stops every result.
    let req: StopRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StopRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("InvalidParameter.Body", format!("invalid stop body: {e}")))?
    };
    state
        .dispatcher
        .stop(&actor, &invoke_id, req.instance_ids.as_deref())
        .await?;
    Ok(StatusCode::ACCEPTED)
}
