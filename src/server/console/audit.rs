//! The Audit Log page: who did what, from where, newest first.

use super::{Layout, PageError, Pager, Session, render, when};
use crate::server::AppState;
use crate::store::{AuditFilter, AuditRow, Role};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

#[derive(Template)]
#[template(path = "audit/index.html")]
struct AuditPage {
    layout: Layout,
    entries: Vec<(String, AuditRow)>,
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
    session.require(Role::Admin)?;
    let mut pager = Pager::new(query.page, 100, 0);
    let filter = AuditFilter {
        username: Some(query.user.trim().to_string()).filter(|u| !u.is_empty()),
        action: Some(query.action.trim().to_string()).filter(|a| !a.is_empty()),
        since_ms: None,
        offset: pager.offset(),
        limit: pager.page_size,
    };
    let (rows, total) = state.store.list_audit(&filter).await?;
    pager.total = total;
    let entries = rows.into_iter().map(|r| (when(r.at), r)).collect();
    let layout = session.layout(state.store.regions().await?, "audit");
    Ok(render(&AuditPage {
        layout,
        entries,
        user: query.user,
        action: query.action,
        pager,
    }))
}
