//! The Instances page of a region (selection across pages, "select all matching"), and one
//! instance's page with its Remote Commands tab, rename and deregistration.

use super::records::RecordView;
use super::{ConsoleForm, Layout, PageError, Pager, Session, ToastNote, Url, When, render};
use crate::dispatch::{Kind, Liveness, error::not_found};
use crate::protocol::Tag;
use crate::server::AppState;
use crate::store::{InstanceFilter, InstanceRow, InvocationFilter, TagMatch};
use askama::Template;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum_htmx::HxRedirect;
use serde::{Deserialize, Serialize};

/// An instance as a row of the console.
pub struct InstanceView {
    pub id: String,
    pub name: String,
    pub region: String,
    pub liveness: Liveness,
    pub os: &'static str,
    pub os_name: String,
    pub ips: String,
    pub version: String,
    pub tags: String,
    /// The tags one `key=value` a line, as the instance page's editor takes them.
    pub tag_lines: String,
    pub last_heartbeat: Option<When>,
    pub types: Vec<&'static str>,
}

impl InstanceView {
    pub fn new(row: InstanceRow, liveness: Liveness) -> Self {
        InstanceView {
            liveness,
            os: row.os_type.as_str(),
            ips: row.ip_addresses.join(", "),
            tags: row
                .tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            tag_lines: row.tags.iter().map(|(k, v)| format!("{k}={v}\n")).collect(),
            last_heartbeat: row.last_heartbeat_at.map(When::new),
            types: row.supported_command_types.iter().map(|t| t.label()).collect(),
            id: row.id,
            name: row.name,
            region: row.region_id,
            os_name: row.os_name,
            version: row.agent_version,
        }
    }

    /// Why the instance cannot take a command now; empty when it can.
    pub fn unavailable(&self) -> &'static str {
        match (self.liveness.running, self.liveness.online) {
            (true, true) => "",
            (_, false) => "Cloud Assistant is offline on this instance: its agent is not connected.",
            (false, true) => "Its agent has not sent a heartbeat recently.",
        }
    }

    /// The instance's status. The server knows the machine only through its agent, so a lost
    /// agent makes the status unknown, not "Stopped" (which in ECS means a stopped VM).
    pub fn status(&self) -> &'static str {
        if self.liveness.running { "Running" } else { "Unknown" }
    }

    /// Why the status is what it is, for the tooltip.
    pub fn status_note(&self) -> &'static str {
        if self.liveness.running {
            "Its agent reported moments ago."
        } else {
            "No heartbeat from its agent for over three intervals: the machine may be stopped or unreachable."
        }
    }
}

/// The Instances page's filters, as in its URL.
#[derive(Debug, Deserialize, Default)]
pub struct IndexQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    /// `key` or `key=value`.
    #[serde(default)]
    tag: String,
    page: Option<u64>,
    #[serde(default)]
    rows: bool,
}

impl IndexQuery {
    /// The tag filter, when one is given; a malformed one is shown as an error and filters
    /// nothing out.
    fn tag(&self) -> Result<Option<TagMatch>, String> {
        match self.tag.trim() {
            "" => Ok(None),
            tag => crate::dispatch::tag_filter(tag).map(Some).map_err(|e| e.to_string()),
        }
    }

    fn filter(&self, state: &AppState, session: &Session) -> InstanceFilter {
        InstanceFilter {
            tags: self.tag().ok().flatten().into_iter().collect(),
            region_id: session.region.clone().filter(|r| !r.is_empty()),
            // A crafted value is a filter that matches anything, as an unknown select option.
            running: crate::dispatch::check::instance_running(Some(&self.status)).unwrap_or(None),
            fresh_after: state.dispatcher.lost_before(),
            query: Some(self.q.trim().to_string()).filter(|q| !q.is_empty()),
            ..Default::default()
        }
    }
}

#[derive(Template)]
#[template(path = "instances/index.html")]
pub struct InstancesPage {
    layout: Layout,
    rows: Vec<InstanceView>,
    q: String,
    status: String,
    tag: String,
    /// Why the tag filter could not be used.
    tag_error: String,
    pager: Pager,
}

/// Just the table body, for the periodic refresh (console.js ticks the selected boxes again).
#[derive(Template)]
#[template(path = "instances/index.html", block = "rows")]
pub struct InstanceRowsFragment {
    rows: Vec<InstanceView>,
    q: String,
    status: String,
    tag: String,
    pager: Pager,
}

const PAGE_SIZE: u64 = 50;

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<IndexQuery>,
) -> Result<Response, PageError> {
    let pager = Pager::new(query.page, PAGE_SIZE);
    let filter = InstanceFilter {
        offset: pager.offset(),
        limit: PAGE_SIZE,
        ..query.filter(&state, &session)
    };
    let (found, total) = state.store.list_instances(&filter).await?;
    let pager = pager.with(
        total,
        Url::INSTANCES,
        &[("q", &query.q), ("status", &query.status), ("tag", &query.tag)],
    );
    let rows: Vec<InstanceView> = found
        .into_iter()
        .map(|r| {
            let liveness = state.dispatcher.liveness(&r);
            InstanceView::new(r, liveness)
        })
        .collect();
    if query.rows {
        return Ok(render(&InstanceRowsFragment {
            rows,
            q: query.q,
            status: query.status,
            tag: query.tag,
            pager,
        }));
    }
    let tag_error = query.tag().err().unwrap_or_default();
    let layout = session.layout(state.store.regions().await?, "instances");
    Ok(render(&InstancesPage {
        layout,
        rows,
        q: query.q,
        status: query.status,
        tag: query.tag,
        tag_error,
        pager,
    }))
}

/// The instances a "Select all N matching" selects: every one matching the filters that can
/// take a command now, up to the most one invocation may target.
#[derive(Debug, Serialize)]
pub struct MatchingIds {
    ids: Vec<String>,
    /// All matching, including those that cannot take a command now.
    matching: u64,
}

pub async fn ids(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<IndexQuery>,
) -> Result<Response, PageError> {
    let filter = query.filter(&state, &session);
    let (_, matching) = state
        .store
        .list_instances(&InstanceFilter {
            limit: 0,
            ..filter.clone()
        })
        .await?;
    let ids = state.dispatcher.runnable_instance_ids(filter).await?;
    Ok(Json(MatchingIds { ids, matching }).into_response())
}

#[derive(Template)]
#[template(path = "instances/show.html")]
pub struct InstancePage {
    layout: Layout,
    instance: InstanceView,
    records: Vec<RecordView>,
    filtered: bool,
    is_admin: bool,
    error: String,
}

async fn instance_page(
    state: &AppState,
    session: &Session,
    instance_id: &str,
    error: String,
) -> Result<Response, PageError> {
    let row = state
        .store
        .instance(instance_id)
        .await
        .map_err(not_found(Kind::Instance, instance_id))?;
    let filter = InvocationFilter {
        instance: Some(instance_id.to_string()),
        limit: 50,
        ..Default::default()
    };
    let invocations = state.store.list_invocations(&filter).await?.rows;
    let layout = session.layout(state.store.regions().await?, "instances");
    let liveness = state.dispatcher.liveness(&row);
    Ok(render(&InstancePage {
        layout,
        instance: InstanceView::new(row, liveness),
        records: invocations.into_iter().map(RecordView::new).collect(),
        filtered: false,
        is_admin: session.user.role == crate::store::Role::Admin,
        error,
    }))
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(instance_id): Path<String>,
) -> Result<Response, PageError> {
    instance_page(&state, &session, &instance_id, String::new()).await
}

#[derive(Debug, Deserialize)]
pub struct RenameForm {
    name: String,
}

pub async fn rename(
    State(state): State<AppState>,
    session: Session,
    Path(instance_id): Path<String>,
    ConsoleForm(form): ConsoleForm<RenameForm>,
) -> Result<Response, PageError> {
    match state
        .dispatcher
        .rename_instance(&session.actor(), &instance_id, &form.name)
        .await
    {
        Ok(_) => instance_page(&state, &session, &instance_id, String::new()).await,
        Err(e @ crate::dispatch::Error::Invalid { .. }) => {
            instance_page(&state, &session, &instance_id, e.to_string()).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Tags typed in a field: `key=value` items split at any of `separators` (a bare `key` has an
/// empty value); blank items are skipped.
pub fn tag_list(text: &str, separators: &[char]) -> Vec<Tag> {
    text.split(separators)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let tag = Tag::parse_pair(t);
            Tag::new(tag.key.trim(), tag.value.trim())
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct TagsForm {
    /// One `key=value` a line.
    tags: String,
}

/// The instance page's tag editor: the instance's tags become those typed.
pub async fn set_tags(
    State(state): State<AppState>,
    session: Session,
    Path(instance_id): Path<String>,
    ConsoleForm(form): ConsoleForm<TagsForm>,
) -> Result<Response, PageError> {
    let tags = tag_list(&form.tags, &['\n']);
    match state
        .dispatcher
        .set_instance_tags(&session.actor(), &instance_id, &tags)
        .await
    {
        Ok(_) => instance_page(&state, &session, &instance_id, String::new()).await,
        Err(e @ crate::dispatch::Error::Invalid { .. }) => {
            instance_page(&state, &session, &instance_id, e.to_string()).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct AddTagsForm {
    /// The selection, comma-separated.
    instance_ids: String,
    /// `key=value` items, comma-separated.
    tags: String,
}

/// The batch bar's Add Tags: adds the tags to every selected instance.
pub async fn add_tags(
    State(state): State<AppState>,
    session: Session,
    ConsoleForm(form): ConsoleForm<AddTagsForm>,
) -> Result<Response, PageError> {
    let ids: Vec<String> = form
        .instance_ids
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect();
    let tags = tag_list(&form.tags, &[',', '\n']);
    let tagged = state
        .dispatcher
        .add_instance_tags(&session.actor(), &ids, &tags)
        .await?;
    let message = format!("Tags added to {tagged} instances.");
    Ok(render(&ToastNote { message: &message }))
}

pub async fn deregister(
    State(state): State<AppState>,
    session: Session,
    Path(instance_id): Path<String>,
) -> Result<Response, PageError> {
    state.dispatcher.deregister(&session.actor(), &instance_id).await?;
    let note = render(&ToastNote {
        message: "Instance deregistered.",
    });
    Ok((HxRedirect(Url::INSTANCES.to_string()), note).into_response())
}
