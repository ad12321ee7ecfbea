//! Execution Records: the list of invocations, one invocation's page, and the Command Output
//! panel (counts per status, a row per instance, the selected instance's output streaming live).

use super::{Layout, PageError, Pager, Session, When, duration, render, status_class};
use crate::dispatch::{Kind, error::not_found};
use crate::protocol::{InvocationStatus, RepeatMode, ResultStatus};
use crate::server::AppState;
use crate::server::live::{Format, Watch};
use crate::store::{InvocationFilter, InvocationRow, PlanState, Rate, ResultRow};
use askama::Template;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

/// Most result rows the panel draws at once; a status filter narrows them.
const PANEL_ROWS: u64 = 200;

/// An invocation as a row of a listing.
pub struct RecordView {
    pub id: String,
    pub name: String,
    pub command_type: &'static str,
    pub command_id: String,
    pub status: InvocationStatus,
    pub status_class: &'static str,
    pub counts: String,
    /// Rate control in words ("Max Concurrency 5 · Max Errors 2"); empty without.
    pub rate: String,
    pub creator: String,
    pub created: When,
    /// The execution plan in words: Immediate, the frequency, After next boot, On every boot.
    pub plan: String,
    /// When a schedule's next execution starts.
    pub next_run: Option<When>,
}

/// An execution plan the way the console says it.
pub fn plan_words(plan: &PlanState) -> String {
    match plan.repeat_mode {
        RepeatMode::Once | RepeatMode::DryRun => "Immediate".to_string(),
        RepeatMode::Period => plan.frequency.clone().unwrap_or_default(),
        RepeatMode::NextRebootOnly => "After next boot".to_string(),
        RepeatMode::EveryReboot => "On every boot".to_string(),
    }
}

impl RecordView {
    pub fn new(row: InvocationRow) -> Self {
        let status = row.status();
        let counts = row
            .counts
            .0
            .iter()
            .map(|(s, n)| count_text(*s, *n, row.rate.held))
            .collect::<Vec<_>>()
            .join(", ");
        RecordView {
            name: if row.name.is_empty() {
                first_line(&row.spec.content)
            } else {
                row.name
            },
            command_type: row.spec.command_type.label(),
            command_id: row.command_id.unwrap_or_default(),
            status_class: status_class(status),
            status,
            counts,
            rate: rate_text(&row.rate),
            creator: row.creator,
            created: When::new(row.created_at),
            plan: plan_words(&row.plan),
            next_run: row.plan.next_run_at.map(When::new),
            id: row.id,
        }
    }
}

/// A status's count, the Pending one saying how many wait their turn under rate control:
/// "Pending 15 (12 waiting their turn)".
fn count_text(status: ResultStatus, n: u64, held: u64) -> String {
    match status {
        ResultStatus::Pending if held > 0 => format!("{status} {n} ({held} waiting their turn)"),
        _ => format!("{status} {n}"),
    }
}

/// An invocation's rate control in the console's words; empty when none was given.
pub fn rate_text(rate: &Rate) -> String {
    let mut parts = Vec::new();
    if let Some(c) = rate.max_concurrency {
        parts.push(format!("Max Concurrency {c}"));
    }
    if let Some(e) = rate.max_errors {
        parts.push(format!("Max Errors {e}"));
    }
    parts.join(" · ")
}

fn first_line(content: &str) -> String {
    let line = content.lines().next().unwrap_or_default();
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(60).collect::<String>())
    } else {
        line.to_string()
    }
}

/// One instance's result as a row of the panel.
pub struct ResultView {
    pub instance_id: String,
    pub status: ResultStatus,
    pub status_class: &'static str,
    pub exit_code: String,
    pub error: String,
    pub duration: String,
    /// When it started, while it runs: console.js counts the duration up live.
    pub running_since: Option<When>,
    pub selected: bool,
}

impl ResultView {
    fn new(row: &ResultRow, selected: Option<&str>) -> Self {
        let status_class = match row.status {
            ResultStatus::Success => "ok",
            ResultStatus::Running | ResultStatus::Pending | ResultStatus::Stopping => "busy",
            ResultStatus::Cancelled | ResultStatus::Terminated => "muted",
            _ => "bad",
        };
        let error = match (&row.error_code, &row.error_info) {
            (Some(code), Some(info)) => format!("{code}: {info}"),
            (Some(code), None) => code.to_string(),
            (None, Some(info)) => info.clone(),
            (None, None) => String::new(),
        };
        let duration = match (row.start_time, row.finish_time) {
            (Some(start), Some(end)) => duration(end - start),
            _ => String::new(),
        };
        let running_since = match (row.start_time, row.status.is_terminal()) {
            (Some(start), false) => Some(When::new(start)),
            _ => None,
        };
        ResultView {
            instance_id: row.instance_id.clone(),
            status: row.status,
            status_class,
            exit_code: row.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            error,
            duration,
            running_since,
            selected: selected == Some(row.instance_id.as_str()),
        }
    }
}

/// The summary of the panel: counts per status and the actions.
pub struct Summary {
    pub status: InvocationStatus,
    pub status_class: &'static str,
    pub total: u64,
    pub counts: Vec<(ResultStatus, u64)>,
    /// Pending results waiting their turn under rate control.
    pub held: u64,
    /// Rate control in words; empty without.
    pub rate: String,
    pub active: bool,
}

impl Summary {
    fn new(row: &InvocationRow) -> Self {
        let status = row.status();
        Summary {
            status,
            status_class: status_class(status),
            total: row.counts.total(),
            counts: row.counts.0.iter().map(|(s, n)| (*s, *n)).collect(),
            held: row.rate.held,
            rate: rate_text(&row.rate),
            // A schedule is stopped (no execution starts again) as a running command is.
            active: !status.is_terminal() || status == InvocationStatus::Scheduled,
        }
    }
}

/// The Command Output panel of one invocation.
#[derive(Template)]
#[template(path = "records/panel.html")]
pub struct PanelFragment {
    pub invoke_id: String,
    pub name: String,
    pub summary: Summary,
    /// One page of the rows of the status filter (all statuses when blank).
    pub rows: Vec<ResultView>,
    /// Pages of rows; its `base` is the panel's query, ending in `page=`.
    pub pager: Pager,
    pub selected: String,
    pub status_filter: String,
    pub oob: bool,
}

impl PanelFragment {
    /// The URL of the panel's live socket: it redraws the rows this page shows.
    pub fn live_url(&self) -> String {
        format!(
            "/console/invocations/{}/live{}{}",
            self.invoke_id, self.pager.base, self.pager.page
        )
    }
}

/// What a panel shows: the selected instance, a status filter and a page of rows.
#[derive(Debug, Default, Deserialize)]
pub struct PanelQuery {
    pub instance_id: Option<String>,
    pub status: Option<String>,
    pub page: Option<u64>,
}

impl PanelQuery {
    fn status(&self) -> Option<ResultStatus> {
        self.status
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
    }

    /// The page of rows this query shows (the panel draws them; its live socket redraws them).
    async fn rows(&self, state: &AppState, invoke_id: &str) -> Result<Vec<ResultRow>, PageError> {
        let pager = Pager::new(self.page, PANEL_ROWS);
        Ok(state
            .store
            .results_page(invoke_id, self.status(), pager.offset(), PANEL_ROWS)
            .await?)
    }
}

/// Loads the panel of an invocation; the selected instance defaults to the first. Only the
/// page of rows shown is read, so a panel of 10,000 instances costs what one of 200 does; the
/// counts come with the invocation.
pub async fn load_panel(state: &AppState, invoke_id: &str, query: PanelQuery) -> Result<PanelFragment, PageError> {
    let store = &state.store;
    let invocation = store
        .invocation(invoke_id)
        .await
        .map_err(not_found(Kind::Invocation, invoke_id))?;
    let filter = query.status();
    let pager = Pager::new(query.page, PANEL_ROWS);
    let matching = match filter {
        Some(status) => invocation.counts.0.get(&status).copied().unwrap_or(0),
        None => invocation.counts.total(),
    };
    let rows = query.rows(state, invoke_id).await?;
    let selected = match query.instance_id.filter(|s| !s.is_empty()) {
        Some(id) if store.result(invoke_id, &id).await.is_ok() => id,
        _ if filter.is_none() && pager.page == 1 => rows.first().map(|r| r.instance_id.clone()).unwrap_or_default(),
        _ => store
            .results_page(invoke_id, None, 0, 1)
            .await?
            .first()
            .map(|r| r.instance_id.clone())
            .unwrap_or_default(),
    };
    let status_filter = filter.map(|s| s.as_str().to_string()).unwrap_or_default();
    let pager = pager.with(matching, "", &[("instance_id", &selected), ("status", &status_filter)]);
    Ok(PanelFragment {
        invoke_id: invocation.id.clone(),
        name: RecordView::new(invocation.clone()).name,
        summary: Summary::new(&invocation),
        rows: rows.iter().map(|r| ResultView::new(r, Some(&selected))).collect(),
        pager,
        selected,
        status_filter,
        oob: false,
    })
}

#[derive(Template)]
#[template(path = "records/index.html")]
struct RecordsPage {
    layout: Layout,
    records: Vec<RecordView>,
    filtered: bool,
    pager: Pager,
    query: IndexQuery,
}

/// Execution Records' filters, as in its URL.
#[derive(Debug, Default, Deserialize)]
pub struct IndexQuery {
    #[serde(default)]
    status: String,
    /// An instance id, an id prefix or an instance name.
    #[serde(default)]
    instance_id: String,
    #[serde(default)]
    command_id: String,
    /// Dates (`2026-11-30`, UTC): created on or after `since`, on or before `until`.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    page: Option<u64>,
}

/// The start of a `YYYY-MM-DD` day, UTC, in milliseconds.
fn day_start(date: &str) -> Option<i64> {
    let day = chrono::NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d").ok()?;
    Some(day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

const PAGE_SIZE: u64 = 50;

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<IndexQuery>,
) -> Result<Response, PageError> {
    let pager = Pager::new(query.page, PAGE_SIZE);
    let text = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let filter = InvocationFilter {
        instance: text(&query.instance_id),
        command_id: text(&query.command_id),
        status: crate::dispatch::check::invocation_status(Some(&query.status)).unwrap_or(None),
        repeat_mode: None,
        since: day_start(&query.since),
        until: day_start(&query.until).map(|start| start + 86_400_000),
        after: None,
        offset: pager.offset(),
        limit: PAGE_SIZE,
    };
    let filtered = filter.instance.is_some()
        || filter.command_id.is_some()
        || filter.status.is_some()
        || filter.since.is_some()
        || filter.until.is_some();
    let page = state.store.list_invocations(&filter).await?;
    let pager = pager.with(
        page.total,
        "/console/invocations",
        &[
            ("status", &query.status),
            ("instance_id", &query.instance_id),
            ("command_id", &query.command_id),
            ("since", &query.since),
            ("until", &query.until),
        ],
    );
    let layout = session.layout(state.store.regions().await?, "records");
    Ok(render(&RecordsPage {
        layout,
        records: page.rows.into_iter().map(RecordView::new).collect(),
        filtered,
        pager,
        query,
    }))
}

#[derive(Template)]
#[template(path = "records/show.html")]
struct RecordPage {
    layout: Layout,
    invocation: InvocationRow,
    created: When,
    plan: String,
    next_run: Option<When>,
    /// A scheduled invocation's executions, newest first, each with its own results and output.
    executions: Vec<ExecutionView>,
    /// Executions not shown (older than the last [`EXECUTIONS_SHOWN`]).
    older: u32,
    /// The rendered panel (our own markup).
    panel: String,
}

/// Executions the record page lists, each with its output.
const EXECUTIONS_SHOWN: u32 = 20;

/// One execution on the record page.
pub struct ExecutionView {
    pub repeats: u32,
    pub results: Vec<ExecutionResultView>,
}

/// One instance's result of one execution, with its output (shown escaped).
pub struct ExecutionResultView {
    pub row: ResultView,
    pub started: Option<When>,
    pub output: String,
}

/// The last [`EXECUTIONS_SHOWN`] executions of a scheduled invocation, newest first, and how
/// many older ones there are.
async fn executions(state: &AppState, invocation: &InvocationRow) -> Result<(Vec<ExecutionView>, u32), PageError> {
    if invocation.plan.repeat_mode == RepeatMode::Once {
        return Ok((Vec::new(), 0));
    }
    let oldest_shown = invocation.plan.repeats.saturating_sub(EXECUTIONS_SHOWN);
    let results: Vec<ResultRow> = state
        .store
        .execution_results(&invocation.id)
        .await?
        .into_iter()
        .filter(|r| r.repeats > oldest_shown)
        .collect();
    let ids: Vec<i64> = results.iter().map(|r| r.id).collect();
    let mut outputs = state.store.outputs(&ids).await?;
    let mut views: Vec<ExecutionView> = Vec::new();
    for result in results {
        let output = String::from_utf8_lossy(&outputs.remove(&result.id).unwrap_or_default()).into_owned();
        let view = ExecutionResultView {
            row: ResultView::new(&result, None),
            started: result.start_time.map(When::new),
            output,
        };
        match views.last_mut() {
            Some(last) if last.repeats == result.repeats => last.results.push(view),
            _ => views.push(ExecutionView {
                repeats: result.repeats,
                results: vec![view],
            }),
        }
    }
    views.reverse();
    Ok((views, oldest_shown))
}

/// Renders a panel to HTML for embedding in a page or a fragment.
pub fn render_panel(panel: PanelFragment) -> Result<String, PageError> {
    panel
        .render()
        .map_err(|e| PageError::from(crate::server::ApiError::internal(e)))
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(invoke_id): Path<String>,
    Query(query): Query<PanelQuery>,
) -> Result<Response, PageError> {
    let panel = load_panel(&state, &invoke_id, query).await?;
    let invocation = state.store.invocation(&invoke_id).await?;
    let layout = session.layout(state.store.regions().await?, "records");
    let (executions, older) = executions(&state, &invocation).await?;
    Ok(render(&RecordPage {
        layout,
        created: When::new(invocation.created_at),
        plan: plan_words(&invocation.plan),
        next_run: invocation.plan.next_run_at.map(When::new),
        executions,
        older,
        invocation,
        panel: render_panel(panel)?,
    }))
}

pub async fn panel(
    State(state): State<AppState>,
    _: Session,
    Path(invoke_id): Path<String>,
    Query(query): Query<PanelQuery>,
) -> Result<Response, PageError> {
    Ok(render(&load_panel(&state, &invoke_id, query).await?))
}

/// The panel's live socket: HTML fragments swapped in by htmx's ws extension.
pub async fn live(
    State(state): State<AppState>,
    _: Session,
    Path(invoke_id): Path<String>,
    Query(query): Query<PanelQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, PageError> {
    state
        .store
        .invocation(&invoke_id)
        .await
        .map_err(not_found(Kind::Invocation, &invoke_id))?;
    let rows = query.rows(&state, &invoke_id).await?.into_iter().map(|r| r.instance_id);
    let selected = query.instance_id.filter(|s| !s.is_empty());
    let watch = Watch::new(state, invoke_id, selected, None, Format::Html).redrawing(rows);
    Ok(ws
        .max_message_size(crate::server::live::WATCHER_FRAME)
        .max_frame_size(crate::server::live::WATCHER_FRAME)
        .on_upgrade(move |socket| watch.run(socket)))
}

pub async fn stop(
    State(state): State<AppState>,
    session: Session,
    Path(invoke_id): Path<String>,
) -> Result<Response, PageError> {
    state.dispatcher.stop(&session.actor(), &invoke_id, None).await?;
    Ok(Html(summary_fragment(&state, &invoke_id).await?).into_response())
}

/// Which execution's output to download (the latest when left out).
#[derive(Debug, Default, Deserialize)]
pub struct DownloadQuery {
    repeats: Option<u32>,
}

pub async fn download(
    State(state): State<AppState>,
    _: Session,
    Path((invoke_id, instance_id)): Path<(String, String)>,
    Query(query): Query<DownloadQuery>,
) -> Result<Response, PageError> {
    let (_, bytes) = state
        .dispatcher
        .result_output(&invoke_id, &instance_id, query.repeats)
        .await?;
    let disposition = format!("attachment; filename=\"{invoke_id}-{instance_id}.log\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from(bytes),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "records/summary.html")]
struct SummaryFragment<'a> {
    invoke_id: &'a str,
    summary: Summary,
    oob: bool,
}

#[derive(Template)]
#[template(path = "records/row.html")]
struct RowFragment<'a> {
    invoke_id: &'a str,
    r: ResultView,
    oob: bool,
}

/// Counts and actions of a panel, as out-of-band swaps.
pub async fn summary_fragment(state: &AppState, invoke_id: &str) -> Result<String, PageError> {
    let invocation = state.store.invocation(invoke_id).await?;
    Ok(SummaryFragment {
        invoke_id,
        summary: Summary::new(&invocation),
        oob: true,
    }
    .render()?)
}

/// One result row of a panel, as an out-of-band swap.
pub async fn row_fragment(
    state: &AppState,
    invoke_id: &str,
    instance_id: &str,
    selected: Option<&str>,
) -> Result<String, PageError> {
    let row = state.store.result(invoke_id, instance_id).await?;
    render_row(&row, selected)
}

/// A result row already read, as an out-of-band swap.
pub fn render_row(row: &ResultRow, selected: Option<&str>) -> Result<String, PageError> {
    Ok(RowFragment {
        invoke_id: &row.invocation_id,
        r: ResultView::new(row, selected),
        oob: true,
    }
    .render()?)
}

/// Rendered output of the selected instance (see `OutputRenderer`), appended to the panel's.
pub fn output_fragment(invoke_id: &str, html: &str) -> String {
    format!("<div hx-swap-oob=\"beforeend:#output-{invoke_id}\">{html}</div>")
}

/// Empties the panel's output before a replay.
pub fn clear_output_fragment(invoke_id: &str) -> String {
    format!("<div hx-swap-oob=\"innerHTML:#output-{invoke_id}\"></div>")
}
