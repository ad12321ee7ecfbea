//! The Activations page: create an activation (the code is shown once, with the agent command
//! line to paste on a host), list them, disable one.

use super::{ConsoleForm, Layout, PageError, Session, render, when};
use crate::server::AppState;
use crate::store::{ActivationRow, NewActivation, Role, ids, now_ms};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use serde::Deserialize;

pub struct ActivationView {
    pub id: String,
    pub region: String,
    pub description: String,
    pub used: String,
    pub created: String,
    pub expires: String,
    pub state: &'static str,
}

impl From<ActivationRow> for ActivationView {
    fn from(a: ActivationRow) -> Self {
        let state = if a.disabled {
            "Disabled"
        } else if a.expires_at <= now_ms() {
            "Expired"
        } else if a.registered_count >= a.instance_count_limit {
            "Used up"
        } else {
            "Active"
        };
        ActivationView {
            used: format!("{} of {}", a.registered_count, a.instance_count_limit),
            created: when(a.created_at),
            expires: when(a.expires_at),
            id: a.id,
            region: a.region_id,
            description: a.description,
            state,
        }
    }
}

#[derive(Template)]
#[template(path = "activations/index.html")]
struct ActivationsPage {
    layout: Layout,
    activations: Vec<ActivationView>,
    /// Shown once after creation: the id, the code and the agent command line.
    created: Option<(String, String, String)>,
    error: String,
    region: String,
}

async fn page(
    state: &AppState,
    session: &Session,
    created: Option<(String, String, String)>,
    error: String,
) -> Result<Response, PageError> {
    let activations = state
        .store
        .list_activations()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    let layout = session.layout(state.store.regions().await?, "activations");
    let region = session
        .region
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "local".into());
    Ok(render(&ActivationsPage {
        layout,
        activations,
        created,
        error,
        region,
    }))
}

pub async fn index(State(state): State<AppState>, session: Session) -> Result<Response, PageError> {
    session.require(Role::Admin)?;
    page(&state, &session, None, String::new()).await
}

#[derive(Debug, Deserialize)]
pub struct CreateForm {
    region_id: String,
    instance_count_limit: String,
    ttl_hours: String,
    #[serde(default)]
    description: String,
}

pub async fn create(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    ConsoleForm(form): ConsoleForm<CreateForm>,
) -> Result<Response, PageError> {
    session.require(Role::Admin)?;
    let limit = form
        .instance_count_limit
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=100_000).contains(n));
    let ttl = form
        .ttl_hours
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|h| (1..=8760).contains(h));
    let region_ok =
        crate::dispatch::check_region(form.region_id.trim()).is_ok() && !form.description.chars().any(char::is_control);
    let (Some(limit), Some(ttl), true) = (limit, ttl, region_ok) else {
        let error = "Use a region like cn-hangzhou, an instance limit from 1 to 100000, an expiry from 1 to 8760 hours and a description without control characters.";
        return page(&state, &session, None, error.into()).await;
    };
    let code = ids::new_secret();
    let new = NewActivation {
        region_id: form.region_id.trim().to_string(),
        description: form.description.chars().take(100).collect(),
        instance_count_limit: limit,
        expires_at: now_ms() + ttl * 3_600_000,
        code_hash: ids::hash_secret(&code),
    };
    let row = state.store.create_activation(&new).await?;
    state
        .audit(
            &session.caller(),
            "CreateActivation",
            &row.id,
            &format!("region {} limit {limit}", row.region_id),
        )
        .await;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("SERVER:8080");
    let command = format!(
        "sudo fleetrun agent --server http://{host} --activation-id {} --activation-code {code} --state-dir /var/lib/fleetrun-agent",
        row.id
    );
    page(&state, &session, Some((row.id, code, command)), String::new()).await
}

pub async fn disable(
    State(state): State<AppState>,
    session: Session,
    Path(activation_id): Path<String>,
) -> Result<Response, PageError> {
    session.require(Role::Admin)?;
    state.store.disable_activation(&activation_id).await?;
    state
        .audit(&session.caller(), "DisableActivation", &activation_id, "")
        .await;
    let mut response = render(&super::ToastNote {
        message: "Activation disabled.",
    });
    response
        .headers_mut()
        .insert("hx-refresh", HeaderValue::from_static("true"));
    Ok(response)
}
