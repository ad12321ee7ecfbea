//! The Send Command dialog: the selected instances (or a picker with search and "select all
//! matching"), Command Type, Command Content with its Parameters, Retain Command, the advanced
//! options and Run. Run sends one invocation per OS group and answers with their Command Output
//! panels; the dialog stays open to run again.
//!
//! The dialog only shapes what the domain decides: the types offered are those every selected
//! instance reports, the type chosen is the one sent (a type the instances cannot run is
//! refused by RunCommand, never swapped for another), and every refusal is shown next to the
//! field the domain names.

use super::records::{load_panel, render_panel};
use super::{PageError, Session, render};
use crate::dispatch::{self, Field, Liveness, check};
use crate::protocol::api::{ContentEncoding, InvokeCommandRequest, RunCommandRequest};
use crate::protocol::params::{custom_names, has_placeholders};
use crate::protocol::{CommandSpec, CommandType, OsType, RateInput, RepeatMode};
use crate::server::AppState;
use crate::store::{InstanceFilter, InstanceRow};
use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::{Form, Query};
use axum_htmx::{HxReswap, HxRetarget, SwapOption};
use std::collections::BTreeMap;

/// Instances the picker lists at once; "select all matching" reaches the rest.
const PICKER_ROWS: u64 = 200;
/// Instances shown by name in the dialog; the rest are counted.
const CHIPS: usize = 20;

/// One OS group of the selection: its instances and the type and content asked for it.
pub struct Group {
    pub os: &'static str,
    /// The selected instances of this OS.
    pub instance_ids: Vec<String>,
    /// The types every instance of the group can run.
    pub types: Vec<CommandType>,
    /// The type chosen, which may be one the instances cannot run (RunCommand then refuses).
    pub command_type: CommandType,
    pub content: String,
    /// The content is a retained command's, unchanged, whose parameters are off: its `{{…}}`
    /// are text, not parameters.
    pub literal: bool,
}

impl Group {
    pub fn type_field(&self) -> String {
        format!("type_{}", self.os)
    }

    pub fn content_field(&self) -> String {
        format!("content_{}", self.os)
    }

    /// Whether the chosen type is one the group's instances cannot run.
    pub fn type_unavailable(&self) -> bool {
        !self.types.is_empty() && !self.types.contains(&self.command_type)
    }

    /// The types offered, as words.
    pub fn offered(&self) -> String {
        self.types.iter().map(|t| t.label()).collect::<Vec<_>>().join(", ")
    }
}

/// An instance as the dialog lists it.
pub struct Choice {
    pub id: String,
    pub name: String,
    pub unavailable: &'static str,
    pub checked: bool,
}

/// The picker's list: instances matching the search, by name.
#[derive(Template)]
#[template(path = "send/picker.html")]
pub struct PickerFragment {
    choices: Vec<Choice>,
    q: String,
    matching: u64,
}

/// Everything the dialog's form shows.
pub struct Dialog {
    groups: Vec<Group>,
    /// The picker, when the dialog opened without a selection.
    picker: Option<PickerFragment>,
    /// The selected instances shown by name (at most [`CHIPS`]), and how many there are.
    chips: Vec<Choice>,
    selected: usize,
    /// Selected instances that cannot take a command now, by name.
    offline: Vec<String>,
    /// Selected ids that are not registered (any more).
    missing: Vec<String>,
    /// Panels of the groups that ran when another group was refused.
    launched: Vec<String>,
    delivery_window_secs: u64,
    /// The region of the selection (or the one picked in the top bar).
    region: String,
    form: SendForm,
    errors: BTreeMap<String, String>,
    quota: String,
    max_content: usize,
    parameters: Vec<(String, String)>,
    /// What "Select by tags" matches now, or why it cannot be used.
    tag_note: String,
}

impl Dialog {
    fn error(&self, field: &str) -> Option<&String> {
        self.errors.get(field)
    }

    /// The selection as the hidden field carries it.
    fn instance_ids(&self) -> String {
        self.form.instance_ids.join(",")
    }
}

#[derive(Template)]
#[template(path = "send/dialog.html")]
pub struct DialogFragment {
    d: Dialog,
}

#[derive(Template)]
#[template(path = "send/dialog.html", block = "form")]
pub struct FormFragment {
    d: Dialog,
}

#[derive(Template)]
#[template(path = "send/result.html")]
pub struct ResultFragment {
    /// Rendered panels (our own markup).
    panels: Vec<String>,
    quota: String,
}

/// The dialog's fields as submitted (repeated keys allowed; `instance_ids` may also be one
/// comma-separated value, as the Instances page's selection sends it).
#[derive(Debug, Clone, Default)]
pub struct SendForm {
    pub instance_ids: Vec<String>,
    pub fields: BTreeMap<String, String>,
    pub command_id: String,
    /// The dialog lets people pick instances (it opened without a selection).
    pub picker: bool,
}

impl SendForm {
    fn parse(pairs: Vec<(String, String)>) -> SendForm {
        let mut form = SendForm::default();
        let mut seen = std::collections::HashSet::new();
        for (key, value) in pairs {
            match key.as_str() {
                "instance_ids" => {
                    for id in value.split(',').map(str::trim).filter(|id| !id.is_empty()) {
                        if seen.insert(id.to_string()) {
                            form.instance_ids.push(id.to_string());
                        }
                    }
                }
                "command_id" => form.command_id = value,
                "picker" => form.picker = value == "on",
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

    /// The Execution Plan chosen: `once` (the default), `schedule`, `next_boot` or `every_boot`.
    pub fn plan(&self) -> &str {
        match self.get("plan") {
            "" => "once",
            plan => plan,
        }
    }

    /// The plan as RunCommand takes it: the repeat mode and, on a schedule, the frequency made
    /// of the kind, the value and the time zone (`rate(5m)`, `at(… Asia/Shanghai)`, `0 0 * * * ? UTC`).
    fn repeat(&self) -> (Option<RepeatMode>, Option<String>) {
        let value = self.get("schedule_value").trim();
        let zone = self.get("time_zone").trim();
        let zoned = |text: &str| {
            if zone.is_empty() {
                text.to_string()
            } else {
                format!("{text} {zone}")
            }
        };
        match self.plan() {
            "schedule" => {
                let frequency = match (self.get("schedule_kind"), value) {
                    (_, "") => None,
                    ("at", v) => Some(format!("at({})", zoned(v))),
                    ("cron", v) => Some(zoned(v)),
                    (_, v) => Some(format!("rate({v})")),
                };
                (Some(RepeatMode::Period), frequency)
            }
            "next_boot" => (Some(RepeatMode::NextRebootOnly), None),
            "every_boot" => (Some(RepeatMode::EveryReboot), None),
            _ => (None, None),
        }
    }

    pub fn timeout(&self) -> &str {
        match self.get("timeout") {
            "" => "60",
            t => t,
        }
    }

    fn text(&self, key: &str) -> Option<String> {
        Some(self.get(key).trim().to_string()).filter(|v| !v.is_empty())
    }

    /// "Select by tags": `key=value` items, comma-separated.
    fn tags(&self) -> Vec<crate::protocol::Tag> {
        super::instances::tag_list(self.get("tags"), &[','])
    }
}

/// The instances "Select by tags" matches now in `region` (at run time RunCommand resolves them
/// again and records the selector), or why it cannot be used.
async fn tagged_instances(state: &AppState, region: Option<&str>, form: &SendForm) -> Result<Vec<String>, String> {
    let tags = form.tags();
    if tags.is_empty() {
        return Ok(Vec::new());
    }
    let Some(region) = region.filter(|r| !r.is_empty()) else {
        return Err(
            "Pick a region in the top bar to select instances by tags: tags are matched within one region.".into(),
        );
    };
    check::tags(&tags, "the tag selector").map_err(|e| e.to_string())?;
    let matches: Vec<crate::store::TagMatch> = tags.iter().map(crate::store::TagMatch::from).collect();
    let limit = state.dispatcher.settings().max_instances as u64;
    let ids = state
        .store
        .tagged_instance_ids(region, &matches, limit)
        .await
        .map_err(|e| PageError::from(dispatch::Error::from(e)).message().to_string())?;
    if ids.is_empty() {
        return Err(format!("No instance of region {region} has all these tags."));
    }
    Ok(ids)
}

/// Opens the dialog for the instances given (`instance_ids`), or with a picker; `command_id`
/// prefills it from a retained command.
pub async fn dialog(
    State(state): State<AppState>,
    session: Session,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    open_dialog(&state, &session, SendForm::parse(pairs)).await
}

/// Opens the dialog for a selection posted by the Instances page (too long for a URL).
pub async fn open(
    State(state): State<AppState>,
    session: Session,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    open_dialog(&state, &session, SendForm::parse(pairs)).await
}

async fn open_dialog(state: &AppState, session: &Session, mut form: SendForm) -> Result<Response, PageError> {
    form.picker = form.instance_ids.is_empty();
    if !form.command_id.is_empty() {
        // Type and content come from the command in `build`, for whichever OS group appears.
        let command = state.dispatcher.command(&form.command_id).await?;
        let spec = command.spec;
        let fields = [
            ("timeout".to_string(), spec.timeout_secs.to_string()),
            ("working_dir".into(), spec.working_dir.unwrap_or_default()),
            ("username".into(), spec.username.unwrap_or_default()),
            ("name".into(), command.name),
        ];
        form.fields.extend(fields);
    }
    let d = build(state, session, form, BTreeMap::new()).await?;
    Ok(render(&DialogFragment { d }))
}

/// Redraws the form from what is typed and picked: htmx swaps the part that changed (the
/// groups when the selection changes, the Parameters while the content is typed).
pub async fn redraw(
    State(state): State<AppState>,
    session: Session,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let d = build(&state, &session, SendForm::parse(pairs), BTreeMap::new()).await?;
    Ok(render(&FormFragment { d }))
}

/// The Parameters fields while the content is typed: computed from the contents alone (no
/// instance is loaded on a keystroke).
#[derive(Template)]
#[template(path = "send/parameters.html")]
pub struct ParametersFragment {
    d: ParameterFields,
}

/// What `send/parameters.html` draws.
pub struct ParameterFields {
    parameters: Vec<(String, String)>,
}

pub async fn parameters(
    State(state): State<AppState>,
    _: Session,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let form = SendForm::parse(pairs);
    let command = match form.command_id.as_str() {
        "" => None,
        id => state.dispatcher.command(id).await.ok(),
    };
    let groups: Vec<Group> = ["linux", "windows"]
        .into_iter()
        .map(|os| {
            let content = form.get(&format!("content_{os}")).to_string();
            Group {
                os,
                instance_ids: Vec::new(),
                types: Vec::new(),
                command_type: CommandType::RunShellScript,
                literal: command
                    .as_ref()
                    .is_some_and(|c| !c.spec.enable_parameter && c.spec.content == content),
                content,
            }
        })
        .collect();
    let d = ParameterFields {
        parameters: parameter_fields(&form, &groups),
    };
    Ok(render(&ParametersFragment { d }))
}

/// The picker's list for a search, keeping ticked what is selected (posted: a selection of
/// thousands is too long for a URL).
pub async fn picker(
    State(state): State<AppState>,
    session: Session,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let form = SendForm::parse(pairs);
    Ok(render(&picker_list(&state, &session, &form).await?))
}

async fn picker_list(state: &AppState, session: &Session, form: &SendForm) -> Result<PickerFragment, PageError> {
    let q = form.get("q").trim().to_string();
    let filter = InstanceFilter {
        region_id: session.region.clone().filter(|r| !r.is_empty()),
        fresh_after: state.dispatcher.lost_before(),
        query: Some(q.clone()).filter(|q| !q.is_empty()),
        limit: PICKER_ROWS,
        ..Default::default()
    };
    let (rows, matching) = state.store.list_instances(&filter).await?;
    let choices = rows
        .into_iter()
        .map(|row| {
            let liveness = state.dispatcher.liveness(&row);
            choice(row, liveness, &form.instance_ids)
        })
        .collect();
    Ok(PickerFragment { choices, q, matching })
}

fn choice(row: InstanceRow, liveness: Liveness, selected: &[String]) -> Choice {
    Choice {
        checked: selected.contains(&row.id),
        unavailable: super::instances::InstanceView::new(row.clone(), liveness).unavailable(),
        id: row.id,
        name: row.name,
    }
}

async fn build(
    state: &AppState,
    session: &Session,
    form: SendForm,
    errors: BTreeMap<String, String>,
) -> Result<Dialog, PageError> {
    let tagged = tagged_instances(state, session.region.as_deref(), &form).await;
    let tag_note = match &tagged {
        Ok(ids) if ids.is_empty() => String::new(),
        Ok(ids) => format!(
            "{} instances have all these tags now; the command runs on those that have them when it starts.",
            ids.len()
        ),
        Err(why) => why.clone(),
    };
    let mut targets = form.instance_ids.clone();
    for id in tagged.unwrap_or_default() {
        if !targets.contains(&id) {
            targets.push(id);
        }
    }
    let instances = state.store.instances_by_ids(&targets).await?;
    let found: std::collections::HashSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    let missing: Vec<String> = form
        .instance_ids
        .iter()
        .filter(|id| !found.contains(id.as_str()))
        .cloned()
        .collect();
    let command = match form.command_id.as_str() {
        "" => None,
        id => state.dispatcher.command(id).await.ok(),
    };
    let mut groups = Vec::new();
    for os in [OsType::Linux, OsType::Windows] {
        let members: Vec<&InstanceRow> = instances.iter().filter(|i| i.os_type == os).collect();
        if members.is_empty() && !(os == OsType::Linux && instances.is_empty()) {
            continue;
        }
        // The types every instance of the group reports it can run (none while none is picked).
        let mut types: Vec<CommandType> = CommandType::ALL.iter().copied().filter(|t| t.fits_os(os)).collect();
        types.retain(|t| !members.is_empty() && members.iter().all(|i| i.supported_command_types.contains(t)));
        let default = if os == OsType::Windows {
            CommandType::RunBatScript
        } else {
            CommandType::RunShellScript
        };
        // A retained command being run fills the group of an OS it fits, until edited.
        let from_command = command.as_ref().filter(|c| c.spec.command_type.fits_os(os));
        let chosen = form.fields.get(&format!("type_{}", os.as_str()));
        let command_type = match (chosen, from_command) {
            (Some(chosen), _) => chosen.parse().unwrap_or(default),
            (None, Some(c)) => c.spec.command_type,
            (None, None) => default,
        };
        let content = match (form.fields.get(&format!("content_{}", os.as_str())), from_command) {
            (Some(typed), _) => typed.clone(),
            (None, Some(c)) => c.spec.content.clone(),
            (None, None) => String::new(),
        };
        let literal = from_command.is_some_and(|c| !c.spec.enable_parameter && c.spec.content == content);
        groups.push(Group {
            os: os.as_str(),
            instance_ids: members.iter().map(|i| i.id.clone()).collect(),
            command_type,
            types,
            content,
            literal,
        });
    }
    let mut chips = Vec::new();
    let mut offline = Vec::new();
    for instance in &instances {
        let liveness = state.dispatcher.liveness(instance);
        if !liveness.can_run() {
            offline.push(instance.name.clone());
        }
        if chips.len() < CHIPS {
            chips.push(choice(instance.clone(), liveness, &[]));
        }
    }
    let picker = if form.picker {
        Some(picker_list(state, session, &form).await?)
    } else {
        None
    };
    let region = instances
        .first()
        .map(|i| i.region_id.clone())
        .or_else(|| session.region.clone())
        .unwrap_or_default();
    let parameters = parameter_fields(&form, &groups);
    Ok(Dialog {
        groups,
        picker,
        chips,
        selected: instances.len(),
        offline,
        missing,
        launched: Vec::new(),
        delivery_window_secs: state.dispatcher.settings().delivery_window.as_secs(),
        quota: quota_text(state, &region).await?,
        region,
        max_content: state.dispatcher.settings().max_content_bytes,
        parameters,
        form,
        errors,
        tag_note,
    })
}

/// The region's retained-command quota use, as the dialog says it.
async fn quota_text(state: &AppState, region: &str) -> Result<String, PageError> {
    if region.is_empty() {
        return Ok("Pick instances to see their region's quota of retained commands.".into());
    }
    let quota = state.dispatcher.command_quota(region).await?;
    Ok(format!(
        "{} of {} retained commands used in region {region}",
        quota.used, quota.limit
    ))
}

/// A field per `{{name}}` found in the contents, keeping values already typed.
fn parameter_fields(form: &SendForm, groups: &[Group]) -> Vec<(String, String)> {
    let mut names: Vec<String> = Vec::new();
    for group in groups.iter().filter(|g| !g.literal) {
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

/// Run: one invocation per OS group; answers with their panels, or with the form and its errors.
pub async fn run(
    State(state): State<AppState>,
    session: Session,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let form = SendForm::parse(pairs);
    let mut errors = BTreeMap::new();
    if form.instance_ids.is_empty() && form.tags().is_empty() {
        errors.insert(
            "instances".to_string(),
            "Select at least one instance, or select instances by tags.".to_string(),
        );
    }
    let timeout = check::whole_number(Field::Timeout, form.timeout());
    if let Err(e) = &timeout {
        errors.insert(Field::Timeout.form_name().to_string(), e.to_string());
    }
    let d = build(&state, &session, form.clone(), BTreeMap::new()).await?;
    if !d.missing.is_empty() {
        errors.insert(
            "instances".to_string(),
            format!(
                "{} selected instances are no longer registered ({}): clear the selection and pick again.",
                d.missing.len(),
                d.missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    if !form.tags().is_empty() && d.groups.len() > 1 {
        errors.insert(
            "tags".to_string(),
            "These instances mix Linux and Windows, and a command has one type: add a tag that picks one OS."
                .to_string(),
        );
    }
    if form.keep() && d.groups.len() > 1 {
        errors.insert(
            "keep".to_string(),
            "A retained command has one type: retain it from instances of one OS (this selection mixes Linux and Windows)."
                .to_string(),
        );
    }
    let mut panels = Vec::new();
    if errors.is_empty() {
        for group in &d.groups {
            let timeout = timeout.as_ref().map_or(0, |t| *t);
            match submit(&state, &session, &form, group, timeout).await {
                Ok(dispatch::Submitted::Created(created)) => {
                    let panel = load_panel(&state, &created.invoke_id, Default::default()).await?;
                    panels.push(render_panel(panel)?);
                }
                Ok(dispatch::Submitted::DryRun(answer)) => panels.push(render_html(&DryRunFragment { answer })?),
                Err(e) => {
                    let (field, message) = form_error(e, group)?;
                    errors.insert(field, message);
                }
            }
        }
    }
    if !errors.is_empty() {
        // Groups that did run show their panels beside the refusals, so nothing runs twice.
        let d = Dialog {
            errors,
            launched: panels,
            ..d
        };
        let place = (HxRetarget("#send-form".into()), HxReswap(SwapOption::OuterHtml));
        return Ok((place, render(&FormFragment { d })).into_response());
    }
    // The retained-command count may have changed: the fragment redraws it too.
    let quota = quota_text(&state, &d.region).await?;
    Ok(render(&ResultFragment { panels, quota }))
}

/// Where the dialog shows a refusal, and what it says; errors that belong to no field are
/// the page's (a toast).
fn form_error(e: dispatch::Error, group: &Group) -> Result<(String, String), PageError> {
    use dispatch::Error;
    let field = match &e {
        Error::Invalid {
            field: Field::CommandContent,
            ..
        } => group.content_field(),
        Error::Invalid { field: Field::Type, .. } => group.type_field(),
        Error::Invalid {
            field: Field::RegionId, ..
        } => Field::Tags.form_name().to_string(),
        Error::Invalid { field, .. } => field.form_name().to_string(),
        Error::Conflict { .. } => Field::Name.form_name().to_string(),
        Error::Quota { .. } => "keep".to_string(),
        Error::UnknownInstances(_) => Field::InstanceIds.form_name().to_string(),
        _ => return Err(e.into()),
    };
    Ok((field, PageError::from(e).message().to_string()))
}

async fn submit(
    state: &AppState,
    session: &Session,
    form: &SendForm,
    group: &Group,
    timeout: u64,
) -> Result<dispatch::Submitted, dispatch::Error> {
    let tags = form.tags();
    // By tags, the ids named are the selection alone; the domain resolves the tags and records them.
    let (instance_ids, region_id) = if tags.is_empty() {
        (group.instance_ids.clone(), None)
    } else {
        (form.instance_ids.clone(), session.region.clone())
    };
    // Values as typed (spaces are a value); an empty field is a missing value, which RunCommand
    // refuses by name.
    let names = custom_names(&group.content);
    let values: BTreeMap<String, String> = names
        .iter()
        .map(|n| (n.clone(), form.get(&format!("param_{n}")).to_string()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let actor = session.actor();
    // The **Dry Run** button: check everything, run nothing; otherwise the Execution Plan.
    let (repeat_mode, frequency) = match form.get("dry_run") == "on" {
        true => (Some(RepeatMode::DryRun), None),
        false => form.repeat(),
    };
    // A retained command run unchanged counts as a run of that command.
    if !form.command_id.is_empty() && !form.keep() {
        if let Ok(command) = state.dispatcher.command(&form.command_id).await {
            if command.spec.content == group.content && command.spec.command_type == group.command_type {
                let parameters = if command.spec.enable_parameter {
                    values
                } else {
                    BTreeMap::new()
                };
                let req = InvokeCommandRequest {
                    instance_ids,
                    parameters,
                    timeout_secs: Some(timeout),
                    working_dir: form.text("working_dir"),
                    username: form.text("username"),
                    max_concurrency: form.text("max_concurrency").map(RateInput),
                    max_errors: form.text("max_errors").map(RateInput),
                    tags,
                    region_id,
                    repeat_mode,
                    frequency,
                    ..Default::default()
                };
                let submitted = state.dispatcher.invoke_command(&actor, &command.id, req).await?;
                return Ok(submitted);
            }
        }
    }
    let req = RunCommandRequest {
        tags,
        repeat_mode,
        frequency,
        ..RunCommandRequest::new(instance_ids, CommandSpec::shell(""))
    };
    let req = RunCommandRequest {
        region_id,
        spec: CommandSpec {
            command_type: group.command_type,
            content: group.content.clone(),
            timeout_secs: timeout,
            working_dir: form.text("working_dir"),
            username: form.text("username"),
            // The console's rule (the CLI's too): parameters are on when the content has any.
            enable_parameter: has_placeholders(&group.content),
        },
        content_encoding: ContentEncoding::PlainText,
        keep_command: form.keep(),
        name: form.text("name"),
        description: form.text("description"),
        parameters: values,
        max_concurrency: form.text("max_concurrency").map(RateInput),
        max_errors: form.text("max_errors").map(RateInput),
        ..req
    };
    state.dispatcher.run_command(&actor, req).await
}

/// What the dialog's **Dry Run** would do, per instance (nothing was stored or run).
#[derive(Template)]
#[template(path = "send/dry_run.html")]
pub struct DryRunFragment {
    answer: crate::protocol::api::DryRunResponse,
}

fn render_html(fragment: &impl Template) -> Result<String, PageError> {
    fragment
        .render()
        .map_err(|e| PageError::from(crate::server::ApiError::internal(e)))
}
