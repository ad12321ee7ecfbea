//! The Instances page of a region and one instance's page with its Remote Commands tab.

use super::records::RecordView;
use super::{Layout, PageError, Pager, Session, render, when};
use crate::protocol::InvocationStatus;
use crate::server::AppState;
use crate::store::{InstanceFilter, InstanceRow, InvocationFilter, now_ms};
use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use axum_extra::extract::Query as MultiQuery;
use serde::Deserialize;

/// An instance as a row of the console.
pub struct InstanceView {
    pub id: String,
    pub name: String,
    pub region: String,
    pub running: bool,
    pub online: bool,
    pub os: &'static str,
    pub os_name: String,
    pub ips: String,
    pub version: String,
    pub tags: String,
    pub last_heartbeat: String,
    pub types: Vec<&'static str>,
    pub checked: bool,
}

impl InstanceView {
    pub fn new(row: InstanceRow, lost_before: i64, checked: bool) -> Self {
        InstanceView {
            running: row.last_heartbeat_at.is_some_and(|t| t > lost_before),
            online: row.online,
            os: row.os_type.as_str(),
            ips: row.ip_addresses.join(", "),
            tags: row
                .tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            last_heartbeat: row.last_heartbeat_at.map(when).unwrap_or_else(|| "never".into()),
            types: row.supported_command_types.iter().map(|t| t.label()).collect(),
            id: row.id,
            name: row.name,
            region: row.region_id,
            os_name: row.os_name,
            version: row.agent_version,
            checked,
        }
    }

    /// Why the instance cannot take a command now; empty when it can.
    pub fn unavailable(&self) -> &'static str {
        match (self.running, self.online) {
            (true, true) => "",
            (false, _) => "The instance is Stopped: its agent has not sent a heartbeat recently.",
            (true, false) => "Cloud Assistant is offline on this instance.",
        }
    }

    pub fn status(&self) -> &'static str {
        if self.running { "Running" } else { "Stopped" }
    }
}

pub fn lost_before(state: &AppState) -> i64 {
    now_ms() - state.dispatcher.settings().heartbeat_loss().as_millis() as i64
}

#[derive(Template)]
#[template(path = "instances/index.html")]
pub struct InstancesPage {
    layout: Layout,
    rows: Vec<InstanceView>,
    q: String,
    status: String,
    pager: Pager,
}

/// Just the table body, for the periodic refresh (checked boxes stay checked).
#[derive(Template)]
#[template(path = "instances/index.html", block = "rows")]
pub struct InstanceRowsFragment {
    rows: Vec<InstanceView>,
    q: String,
    status: String,
    pager: Pager,
}

#[derive(Debug, Deserialize, Default)]
pub struct IndexQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    page: Option<u64>,
    #[serde(default)]
    rows: bool,
    #[serde(default)]
    instance_ids: Vec<String>,
}

const PAGE_SIZE: u64 = 50;

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    MultiQuery(query): MultiQuery<IndexQuery>,
) -> Result<Response, PageError> {
    let lost = lost_before(&state);
    let running = match query.status.as_str() {
        "Running" => Some(true),
        "Stopped" => Some(false),
        _ => None,
    };
    let mut pager = Pager::new(query.page, PAGE_SIZE, 0);
    let filter = InstanceFilter {
        region_id: session.region.clone().filter(|r| !r.is_empty()),
        running,
        fresh_after: lost,
        query: Some(query.q.trim().to_string()).filter(|q| !q.is_empty()),
        offset: pager.offset(),
        limit: PAGE_SIZE,
    };
    let (found, total) = state.store.list_instances(&filter).await?;
    pager.total = total;
    let rows = found.into_iter().map(|r| {
        let checked = query.instance_ids.contains(&r.id);
        InstanceView::new(r, lost, checked)
    });
    let rows: Vec<InstanceView> = rows.collect();
    if query.rows {
        return Ok(render(&InstanceRowsFragment {
            rows,
            q: query.q,
            status: query.status,
            pager,
        }));
    }
    let layout = session.layout(state.store.regions().await?, "instances");
    Ok(render(&InstancesPage {
        layout,
        rows,
        q: query.q,
        status: query.status,
        pager,
    }))
}

#[derive(Template)]
#[template(path = "instances/show.html")]
pub struct InstancePage {
    layout: Layout,
    instance: InstanceView,
    records: Vec<RecordView>,
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(instance_id): Path<String>,
) -> Result<Response, PageError> {
    let row = state.store.instance(&instance_id).await.map_err(|e| match e {
        crate::store::Error::NotFound => PageError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("Instance {instance_id} does not exist."),
        ),
        other => other.into(),
    })?;
    let filter = InvocationFilter {
        instance_id: Some(instance_id),
        limit: 50,
        ..Default::default()
    };
    let (invocations, _) = state.store.list_invocations(&filter).await?;
    let records = invocations.into_iter().map(RecordView::new).collect();
    let layout = session.layout(state.store.regions().await?, "instances");
    Ok(render(&InstancePage {
        layout,
        instance: InstanceView::new(row, lost_before(&state), false),
        records,
    }))
}

/// Re-exported for templates that show an overall status.
pub fn status_class(status: InvocationStatus) -> &'static str {
    match status {
        InvocationStatus::Success => "ok",
        InvocationStatus::Failed | InvocationStatus::PartialFailed => "bad",
        InvocationStatus::Stopped => "muted",
        _ => "busy",
    }
}
