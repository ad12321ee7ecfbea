//! The Commands page: retained commands with their quota use; view and edit, delete, Run.

use super::{ConsoleForm, Layout, PageError, Pager, Session, render, when};
use crate::protocol::api::{ContentEncoding, ModifyCommandRequest};
use crate::server::AppState;
use crate::store::{CommandRow, Role};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use axum::response::Response;
use serde::Deserialize;

pub struct CommandView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub command_type: &'static str,
    pub content: String,
    pub working_dir: String,
    pub timeout: u64,
    pub username: String,
    pub region: String,
    pub created: String,
    pub invoke_times: u64,
    pub parameters: String,
}

impl From<CommandRow> for CommandView {
    fn from(c: CommandRow) -> Self {
        CommandView {
            command_type: c.command_type.label(),
            created: when(c.created_at),
            working_dir: c.working_dir.unwrap_or_default(),
            username: c.username.unwrap_or_default(),
            parameters: c.parameter_names.join(", "),
            id: c.id,
            name: c.name,
            description: c.description,
            content: c.content,
            timeout: c.timeout_secs,
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
    let mut pager = Pager::new(query.page, 50, 0);
    let search = Some(query.q.trim()).filter(|q| !q.is_empty());
    let (rows, total) = state
        .store
        .list_commands(region.as_deref(), search, pager.offset(), pager.page_size)
        .await?;
    pager.total = total;
    let limit = state.dispatcher.settings().retained_command_quota;
    let quota = match &region {
        Some(region) => {
            let used = state
                .store
                .command_counts()
                .await?
                .into_iter()
                .find(|(r, _)| r == region)
                .map(|(_, n)| n)
                .unwrap_or(0);
            format!("{used} of {limit} retained commands used in region {region}")
        }
        None => format!("Each region may retain {limit} commands; pick a region to see its use."),
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
    error: String,
    saved: bool,
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(command_id): Path<String>,
) -> Result<Response, PageError> {
    let command = state.store.command(&command_id).await?;
    let layout = session.layout(state.store.regions().await?, "commands");
    Ok(render(&CommandPage {
        layout,
        command: command.into(),
        error: String::new(),
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
    session.require(Role::Operator)?;
    let layout = session.layout(state.store.regions().await?, "commands");
    let timeout = form
        .timeout
        .trim()
        .parse::<u64>()
        .map_err(|_| "Timeout must be a whole number of seconds.".to_string());
    let outcome = match timeout {
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
            match state.dispatcher.check_command_change(&command_id, req).await {
                Ok(change) => state
                    .dispatcher
                    .modify_command(&command_id, change)
                    .await
                    .map_err(|e| PageError::from(e).message().to_string()),
                Err(e) => Err(PageError::from(e).message().to_string()),
            }
        }
        Err(message) => Err(message),
    };
    match outcome {
        Ok(command) => {
            state
                .audit(&session.caller(), "ModifyCommand", &command_id, &command.name)
                .await;
            Ok(render(&CommandPage {
                layout,
                command: command.into(),
                error: String::new(),
                saved: true,
            }))
        }
        Err(error) => {
            let mut command: CommandView = state.store.command(&command_id).await?.into();
            (command.name, command.description, command.content) = (form.name, form.description, form.content);
            (command.working_dir, command.username) = (form.working_dir, form.username);
            Ok(render(&CommandPage {
                layout,
                command,
                error,
                saved: false,
            }))
        }
    }
}

pub async fn delete(
    State(state): State<AppState>,
    session: Session,
    Path(command_id): Path<String>,
) -> Result<Response, PageError> {
    session.require(Role::Operator)?;
    state.store.delete_command(&command_id).await?;
    state.audit(&session.caller(), "DeleteCommand", &command_id, "").await;
    let mut response = render(&super::ToastNote {
        message: "Command deleted.",
    });
    response
        .headers_mut()
        .insert("hx-refresh", HeaderValue::from_static("true"));
    Ok(response)
}
