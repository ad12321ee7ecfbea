//! The audit log (admin only). Entries are never edited or deleted through the product.

use super::{parse_time, rfc3339, window};
use crate::dispatch::Actor;
use crate::protocol::api::{AuditEntry, AuditResponse};
use crate::server::AppState;
use crate::server::error::{ApiError, ApiJson, ApiQuery};
use crate::store::AuditFilter;
use axum::extract::State;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    user: Option<String>,
    action: Option<String>,
    since: Option<String>,
    page: Option<u64>,
    page_size: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    operation_id = "ListAuditEntries",
    summary = "Read the audit log (admin)",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of entries, newest first (admin).", body = AuditResponse),
    ),
)]
pub async fn list(
    actor: Actor,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<AuditResponse>, ApiError> {
    let (offset, limit) = window(query.page, query.page_size)?;
    let filter = AuditFilter {
        username: query.user.filter(|u| !u.is_empty()),
        action: query.action.filter(|a| !a.is_empty()),
        since_ms: query
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| parse_time("since", s))
            .transpose()?,
        offset,
        limit,
    };
    let (rows, total) = state.dispatcher.list_audit(&actor, &filter).await?;
    let entries = rows
        .into_iter()
        .map(|r| AuditEntry {
            time: rfc3339(r.at),
            username: r.username,
            source_ip: r.source_ip,
            via: r.via,
            action: r.action,
            target: r.target,
            detail: r.detail,
        })
        .collect();
    Ok(ApiJson(AuditResponse { entries, total }))
}
