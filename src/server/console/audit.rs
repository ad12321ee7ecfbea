//! The Audit Log page: who did what, from where, newest first.

use super::{Layout, PageError, Pager, Session, When, render};
use crate::server::AppState;
use crate::store::{AuditFilter, AuditRow};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

#[derive(Template)]
#[template(path = "audit/index.html")]
struct AuditPage {
    layout: Layout,
    entries: Vec<(When, AuditRow)>,
    user: String,
    action: String,
    pager: Pager,
}

#[derive(Debug, Deserialize)]
pub struct IndexQuery {
    #[serde(default)]
    user: String,
    #[serde(default)]
    action: String,
    page: Option<u64>,
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<IndexQuery>,
) -> Result<Response, PageError> {
    let pager = Pager::new(query.page, 100);
    let filter = AuditFilter {
        username: Some(query.user.trim().to_string()).filter(|u| !u.is_empty()),
        action: Some(query.action.trim().to_string()).filter(|a| !a.is_empty()),
        since_ms: None,
        offset: pager.offset(),
        limit: pager.page_size,
    };
    let (rows, total) = state.dispatcher.list_audit(&session.actor(), &filter).await?;
    let pager = pager.with(
        total,
        "/console/audit",
        &[("user", &query.user), ("action", &query.action)],
    );
    let entries = rows.into_iter().map(|r| (When::new(r.at), r)).collect();
    let layout = session.layout(state.store.regions().await?, "audit");
    Ok(render(&AuditPage {
        layout,
        entries,
        user: query.user,
        action: query.action,
        pager,
    }))
}
