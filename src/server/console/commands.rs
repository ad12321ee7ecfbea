//! The Commands page: retained commands with their quota use; view and edit, delete, Run.

use super::{ConsoleForm, Layout, PageError, Pager, Session, ToastNote, When, render};
use crate::dispatch::{Error, Field, Kind, check, error::not_found};
use crate::protocol::api::{ContentEncoding, ModifyCommandRequest};
use crate::server::AppState;
use crate::store::CommandRow;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum_htmx::HxRefresh;
use serde::Deserialize;
use std::collections::BTreeMap;

pub struct CommandView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub command_type: &'static str,
    pub content: String,
    pub working_dir: String,
    pub timeout: String,
    pub username: String,
    pub region: String,
    pub created: When,
    pub invoke_times: u64,
    pub parameters: String,
}

impl From<CommandRow> for CommandView {
    fn from(c: CommandRow) -> Self {
        CommandView {
            command_type: c.spec.command_type.label(),
            created: When::new(c.created_at),
            working_dir: c.spec.working_dir.unwrap_or_default(),
            username: c.spec.username.unwrap_or_default(),
            parameters: c.parameter_names.join(", "),
            timeout: c.spec.timeout_secs.to_string(),
            content: c.spec.content,
            id: c.id,
            name: c.name,
            description: c.description,
            region: c.region_id,
            invoke_times: c.invoke_times,
        }
    }
}

#[derive(Template)]
#[template(path = "commands/index.html")]
struct CommandsPage {
    layout: Layout,
    commands: Vec<CommandView>,
    q: String,
    pager: Pager,
    quota: String,
}

#[derive(Debug, Deserialize)]
pub struct IndexQuery {
    #[serde(default)]
    q: String,
    page: Option<u64>,
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<IndexQuery>,
) -> Result<Response, PageError> {
    let region = session.region.clone().filter(|r| !r.is_empty());
    let pager = Pager::new(query.page, 50);
    let search = Some(query.q.trim()).filter(|q| !q.is_empty());
    let (rows, total) = state
        .store
        .list_commands(region.as_deref(), search, pager.offset(), pager.page_size)
        .await?;
    let pager = pager.with(total, "/console/commands", &[("q", &query.q)]);
    let quota = match &region {
        Some(region) => {
            let quota = state.dispatcher.command_quota(region).await?;
            format!(
                "{} of {} retained commands used in region {region}",
                quota.used, quota.limit
            )
        }
        None => format!(
            "Each region may retain {} commands; pick a region to see its use.",
            state.dispatcher.settings().retained_command_quota
        ),
    };
    let layout = session.layout(state.store.regions().await?, "commands");
    Ok(render(&CommandsPage {
        layout,
        commands: rows.into_iter().map(Into::into).collect(),
        q: query.q,
        pager,
        quota,
    }))
}

#[derive(Template)]
#[template(path = "commands/show.html")]
struct CommandPage {
    layout: Layout,
    command: CommandView,
    errors: BTreeMap<&'static str, String>,
    saved: bool,
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(command_id): Path<String>,
) -> Result<Response, PageError> {
    let command = state
        .store
        .command(&command_id)
        .await
        .map_err(not_found(Kind::Command, &command_id))?;
    let layout = session.layout(state.store.regions().await?, "commands");
    Ok(render(&CommandPage {
        layout,
        command: command.into(),
        errors: BTreeMap::new(),
        saved: false,
    }))
}

#[derive(Debug, Deserialize)]
pub struct EditForm {
    name: String,
    description: String,
    content: String,
    working_dir: String,
    timeout: String,
    username: String,
}

pub async fn update(
    State(state): State<AppState>,
    session: Session,
    Path(command_id): Path<String>,
    ConsoleForm(form): ConsoleForm<EditForm>,
) -> Result<Response, PageError> {
    let layout = session.layout(state.store.regions().await?, "commands");
    let outcome = match check::whole_number(Field::Timeout, &form.timeout) {
        Ok(timeout) => {
            let req = ModifyCommandRequest {
                name: Some(form.name.clone()),
                description: Some(form.description.clone()),
                command_content: Some(form.content.clone()),
                content_encoding: ContentEncoding::PlainText,
                working_dir: Some(form.working_dir.clone()),
                timeout_secs: Some(timeout),
                username: Some(form.username.clone()),
            };
            state
                .dispatcher
                .modify_command(&session.actor(), &command_id, req)
                .await
        }
        Err(e) => Err(e),
    };
    let (command, errors, saved) = match outcome {
        Ok(command) => (command.into(), BTreeMap::new(), true),
        Err(e) => {
            let field = match &e {
                Error::Invalid { field, .. } => field.form_name(),
                Error::Conflict { .. } => Field::Name.form_name(),
                _ => return Err(e.into()),
            };
            let message = PageError::from(e).message().to_string();
            // Show what was typed, with the refusal next to its field.
            let mut command: CommandView = state
                .store
                .command(&command_id)
                .await
                .map_err(not_found(Kind::Command, &command_id))?
                .into();
            (command.name, command.description, command.content) = (form.name, form.description, form.content);
            (command.working_dir, command.username, command.timeout) = (form.working_dir, form.username, form.timeout);
            (command, BTreeMap::from([(field, message)]), false)
        }
    };
    Ok(render(&CommandPage {
        layout,
        command,
        errors,
        saved,
    }))
}

pub async fn delete(
    State(state): State<AppState>,
    session: Session,
    Path(command_id): Path<String>,
) -> Result<Response, PageError> {
    state.dispatcher.delete_command(&session.actor(), &command_id).await?;
    let note = render(&ToastNote {
        message: "Command deleted.",
    });
    Ok((HxRefresh(true), note).into_response())
}
