//! The Send Command dialog: the selected instances (or a picker), Command Type, Retain Command,
//! Command Content, the advanced options and Run. Run sends one invocation per OS group and
//! answers with their Command Output panels; the dialog stays open to run again.

use super::records::{load_panel, render_panel};
use super::{PageError, Session, render};
use crate::dispatch;
use crate::protocol::api::{ContentEncoding, InvokeCommandRequest, RunCommandRequest};
use crate::protocol::params::{self, custom_names};
use crate::protocol::{CommandType, OsType};
use crate::server::AppState;
use crate::store::{InstanceFilter, InstanceRow, Role};
use askama::Template;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::{Form, Query};
use std::collections::BTreeMap;

/// Most instances the picker offers when the dialog opens without a selection.
const PICKER_LIMIT: u64 = 500;

/// One OS group of the selection: its instances and the type and content asked for it.
pub struct Group {
    pub os: &'static str,
    pub instances: Vec<(String, String)>,
    pub types: Vec<CommandType>,
    pub command_type: CommandType,
    pub content: String,
}

impl Group {
    pub fn type_field(&self) -> String {
        format!("type_{}", self.os)
    }

    pub fn content_field(&self) -> String {
        format!("content_{}", self.os)
    }
}

#[derive(Template)]
#[template(path = "send/dialog.html")]
pub struct DialogFragment {
    groups: Vec<Group>,
    /// Instances to choose from when none were selected.
    picker: Vec<(String, String)>,
    form: SendForm,
    errors: BTreeMap<&'static str, String>,
    quota: String,
    max_content: usize,
    parameters: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "send/dialog.html", block = "form")]
pub struct FormFragment {
    groups: Vec<Group>,
    picker: Vec<(String, String)>,
    form: SendForm,
    errors: BTreeMap<&'static str, String>,
    quota: String,
    max_content: usize,
    parameters: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "send/parameters.html")]
pub struct ParametersFragment {
    parameters: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "send/result.html")]
pub struct ResultFragment {
    /// Rendered panels (our own markup).
    panels: Vec<String>,
}

/// The dialog's fields as submitted (repeated keys allowed).
#[derive(Debug, Clone, Default)]
pub struct SendForm {
    pub instance_ids: Vec<String>,
    pub fields: BTreeMap<String, String>,
    pub command_id: String,
}

impl SendForm {
    fn parse(pairs: Vec<(String, String)>) -> SendForm {
        let mut form = SendForm::default();
        for (key, value) in pairs {
            match key.as_str() {
                "instance_ids" => {
                    if !value.is_empty() && !form.instance_ids.contains(&value) {
                        form.instance_ids.push(value);
                    }
                }
                "command_id" => form.command_id = value,
                _ => {
                    form.fields.insert(key, value);
                }
            }
        }
        form
    }

    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or_default()
    }

    pub fn keep(&self) -> bool {
        self.get("keep") == "on"
    }

    pub fn timeout(&self) -> &str {
        match self.get("timeout") {
            "" => "60",
            t => t,
        }
    }
}

/// Opens the dialog for the instances given (`instance_ids`), or with a picker; `command_id`
/// prefills it from a retained command.
pub async fn dialog(
    State(state): State<AppState>,
    session: Session,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let mut form = SendForm::parse(pairs);
    if !form.command_id.is_empty() {
        let command = state.store.command(&form.command_id).await?;
        let os = if command.command_type == CommandType::RunBatScript {
            "windows"
        } else {
            "linux"
        };
        form.fields
            .insert(format!("type_{os}"), command.command_type.to_string());
        form.fields.insert(format!("content_{os}"), command.content.clone());
        form.fields.insert("timeout".into(), command.timeout_secs.to_string());
        form.fields
            .insert("working_dir".into(), command.working_dir.unwrap_or_default());
        form.fields
            .insert("username".into(), command.username.unwrap_or_default());
        form.fields.insert("name".into(), command.name);
    }
    let dialog = build(&state, &session, form, BTreeMap::new()).await?;
    Ok(render(&dialog))
}

async fn build(
    state: &AppState,
    session: &Session,
    form: SendForm,
    errors: BTreeMap<&'static str, String>,
) -> Result<DialogFragment, PageError> {
    let instances = state.store.instances_by_ids(&form.instance_ids).await?;
    let mut groups = Vec::new();
    for os in [OsType::Linux, OsType::Windows] {
        let members: Vec<&InstanceRow> = instances.iter().filter(|i| i.os_type == os).collect();
        if members.is_empty() && !(os == OsType::Linux && instances.is_empty()) {
            continue;
        }
        // The types every instance of the group supports.
        let mut types: Vec<CommandType> = CommandType::ALL.iter().copied().filter(|t| t.fits_os(os)).collect();
        types.retain(|t| members.iter().all(|i| i.supported_command_types.contains(t)));
        let default = if os == OsType::Windows {
            CommandType::RunBatScript
        } else {
            CommandType::RunShellScript
        };
        let field = format!("type_{}", os.as_str());
        let command_type = form
            .get(&field)
            .parse()
            .ok()
            .filter(|t| types.contains(t))
            .unwrap_or(default);
        groups.push(Group {
            os: os.as_str(),
            instances: members.iter().map(|i| (i.id.clone(), i.name.clone())).collect(),
            types,
            command_type,
            content: form.get(&format!("content_{}", os.as_str())).to_string(),
        });
    }
    let picker = if form.instance_ids.is_empty() {
        let filter = InstanceFilter {
            region_id: session.region.clone().filter(|r| !r.is_empty()),
            running: Some(true),
            fresh_after: super::instances::lost_before(state),
            limit: PICKER_LIMIT,
            ..Default::default()
        };
        state
            .store
            .list_instances(&filter)
            .await?
            .0
            .into_iter()
            .filter(|i| i.online)
            .map(|i| (i.id, i.name))
            .collect()
    } else {
        Vec::new()
    };
    let region = instances
        .first()
        .map(|i| i.region_id.clone())
        .or_else(|| session.region.clone())
        .unwrap_or_default();
    let used = state
        .store
        .command_counts()
        .await?
        .into_iter()
        .find(|(r, _)| *r == region)
        .map(|(_, n)| n)
        .unwrap_or(0);
    let limit = state.dispatcher.settings().retained_command_quota;
    let quota = format!("{used} of {limit} retained commands used in region {region}");
    let parameters = parameter_fields(&form, &groups);
    Ok(DialogFragment {
        groups,
        picker,
        form,
        errors,
        quota,
        max_content: state.dispatcher.settings().max_content_bytes,
        parameters,
    })
}

/// A field per `{{name}}` found in the contents, keeping values already typed.
fn parameter_fields(form: &SendForm, groups: &[Group]) -> Vec<(String, String)> {
    let mut names: Vec<String> = Vec::new();
    for group in groups {
        for name in custom_names(&group.content) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
        .into_iter()
        .map(|n| {
            let value = form.get(&format!("param_{n}")).to_string();
            (n, value)
        })
        .collect()
}

/// Redraws the Parameters fields while the content is typed.
pub async fn parameters(_: Session, Form(pairs): Form<Vec<(String, String)>>) -> Response {
    let form = SendForm::parse(pairs);
    let groups: Vec<Group> = ["linux", "windows"]
        .into_iter()
        .map(|os| Group {
            os,
            instances: Vec::new(),
            types: Vec::new(),
            command_type: CommandType::RunShellScript,
            content: form.get(&format!("content_{os}")).to_string(),
        })
        .collect();
    render(&ParametersFragment {
        parameters: parameter_fields(&form, &groups),
    })
}

/// Run: one invocation per OS group; answers with their panels, or with the form and its errors.
pub async fn run(
    State(state): State<AppState>,
    session: Session,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    session.require(Role::Operator)?;
    let form = SendForm::parse(pairs);
    let dialog = build(&state, &session, form.clone(), BTreeMap::new()).await?;
    let mut errors = BTreeMap::new();
    if form.instance_ids.is_empty() {
        errors.insert("instances", "Select at least one instance.".to_string());
    }
    let timeout = form.timeout().trim().parse::<u64>();
    if timeout.is_err() {
        errors.insert(
            "timeout",
            "Timeout must be a whole number of seconds, from 1 to 604800.".to_string(),
        );
    }
    if form.keep() && form.get("name").trim().is_empty() {
        errors.insert("name", "A retained command needs a Command Name.".to_string());
    }
    let mut panels = Vec::new();
    if errors.is_empty() {
        for group in &dialog.groups {
            match submit(
                &state,
                &session,
                &form,
                group,
                timeout.clone().unwrap_or(60),
                &dialog.parameters,
            )
            .await
            {
                Ok(invoke_id) => panels.push(render_panel(load_panel(&state, &invoke_id, None, None).await?)?),
                Err(dispatch::Error::Invalid { code, message }) => {
                    errors.insert(field_of(code, group.os), message);
                }
                Err(e @ (dispatch::Error::Quota { .. } | dispatch::Error::UnknownInstances(_))) => {
                    let field = if matches!(e, dispatch::Error::Quota { .. }) {
                        "keep"
                    } else {
                        "instances"
                    };
                    errors.insert(field, PageError::from(e).message().to_string());
                }
                Err(other) => return Err(other.into()),
            }
        }
    }
    if !errors.is_empty() {
        let DialogFragment {
            groups,
            picker,
            form,
            quota,
            max_content,
            parameters,
            ..
        } = dialog;
        let mut response = render(&FormFragment {
            groups,
            picker,
            form,
            errors,
            quota,
            max_content,
            parameters,
        });
        let headers = response.headers_mut();
        headers.insert("hx-retarget", HeaderValue::from_static("#send-form"));
        headers.insert("hx-reswap", HeaderValue::from_static("outerHTML"));
        return Ok(response);
    }
    Ok(render(&ResultFragment { panels }).into_response())
}

async fn submit(
    state: &AppState,
    session: &Session,
    form: &SendForm,
    group: &Group,
    timeout: u64,
    parameters: &[(String, String)],
) -> Result<String, dispatch::Error> {
    let instance_ids: Vec<String> = group.instances.iter().map(|(id, _)| id.clone()).collect();
    let names = custom_names(&group.content);
    let values: BTreeMap<String, String> = parameters.iter().filter(|(n, _)| names.contains(n)).cloned().collect();
    let text = |key: &str| Some(form.get(key).trim().to_string()).filter(|v| !v.is_empty());
    let caller = session.caller();
    // A retained command run unchanged counts as a run of that command.
    if !form.command_id.is_empty() && !form.keep() {
        if let Ok(command) = state.store.command(&form.command_id).await {
            if command.content == group.content && command.command_type == group.command_type {
                let req = InvokeCommandRequest {
                    instance_ids: instance_ids.clone(),
                    parameters: values.clone(),
                    timeout_secs: Some(timeout),
                    working_dir: text("working_dir"),
                    username: text("username"),
                };
                let created = state
                    .dispatcher
                    .invoke_command(&caller.username, &command.id, req)
                    .await?;
                state
                    .audit(
                        &caller,
                        "InvokeCommand",
                        &created.invoke_id,
                        &format!("command {} on {} instances", command.id, instance_ids.len()),
                    )
                    .await;
                return Ok(created.invoke_id);
            }
        }
    }
    let req = RunCommandRequest {
        instance_ids,
        command_type: group.command_type,
        command_content: group.content.clone(),
        content_encoding: ContentEncoding::PlainText,
        keep_command: form.keep(),
        name: text("name"),
        description: text("description"),
        timeout_secs: timeout,
        working_dir: text("working_dir"),
        username: text("username"),
        // Parameters are on when the content has custom values or uses a built-in.
        enable_parameter: !values.is_empty() || group.content.contains(&format!("{{{{{}", params::BUILTIN_PREFIX)),
        parameters: values,
    };
    let count = req.instance_ids.len();
    let created = state.dispatcher.run_command(&caller.username, req).await?;
    state
        .audit(
            &caller,
            "RunCommand",
            &created.invoke_id,
            &format!("on {count} instances"),
        )
        .await;
    Ok(created.invoke_id)
}

/// The dialog field an API error code is about.
fn field_of(code: &str, os: &str) -> &'static str {
    match (code, os) {
        ("InvalidParameter.CommandContent", "windows") => "content_windows",
        ("InvalidParameter.CommandContent", _) => "content_linux",
        ("InvalidParameter.Type", "windows") => "type_windows",
        ("InvalidParameter.Type", _) => "type_linux",
        ("InvalidParameter.Timeout", _) => "timeout",
        ("InvalidParameter.WorkingDir", _) => "working_dir",
        ("InvalidParameter.Username", _) => "username",
        ("InvalidParameter.Parameters", _) => "parameters",
        ("InvalidParameter.Name", _) => "name",
        ("InvalidParameter.Description", _) => "description",
        ("InvalidParameter.InstanceIds", _) => "instances",
        _ => "general",
    }
}
