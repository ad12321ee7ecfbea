//! The Activations page: create an activation (the code is shown once, with the lines to paste
//! on a host), list them, disable one.

use super::{ConsoleForm, Layout, PageError, Session, ToastNote, When, render};
use crate::dispatch::{ActivationRequest, Error, Field, check};
use crate::server::AppState;
use crate::server::download::public_url;
use crate::store::ActivationRow;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum_htmx::HxRefresh;
use serde::Deserialize;
use std::collections::BTreeMap;

pub struct ActivationView {
    pub id: String,
    pub region: String,
    pub description: String,
    pub used: String,
    pub created: When,
    pub expires: When,
    pub state: &'static str,
}

impl ActivationView {
    fn new(a: ActivationRow, now: i64) -> Self {
        let state = if a.disabled {
            "Disabled"
        } else if a.expires_at <= now {
            "Expired"
        } else if a.registered_count >= a.instance_count_limit {
            "Used up"
        } else {
            "Active"
        };
        ActivationView {
            used: format!("{} of {}", a.registered_count, a.instance_count_limit),
            created: When::new(a.created_at),
            expires: When::new(a.expires_at),
            id: a.id,
            region: a.region_id,
            description: a.description,
            state,
        }
    }
}

/// An activation just created: shown once, with the lines that enrol a host.
pub struct Created {
    pub id: String,
    pub code: String,
    /// Sets the code in the environment, where `ps` does not show it.
    pub export_line: String,
    pub agent_line: String,
    /// The one-line install (`/install.sh`): downloads, checks and installs the agent, enrols
    /// and starts the service.
    pub install_line: String,
    /// Served over TLS: the install line trusts `CA_FILE`, which the page says how to provide.
    pub tls: bool,
}

/// The file the TLS install line trusts, copied to the machine first.
const CA_FILE: &str = "fleetrun-ca.pem";

#[derive(Template)]
#[template(path = "activations/index.html")]
struct ActivationsPage {
    layout: Layout,
    activations: Vec<ActivationView>,
    created: Option<Created>,
    errors: BTreeMap<&'static str, String>,
    form: CreateForm,
}

async fn page(
    state: &AppState,
    session: &Session,
    created: Option<Created>,
    errors: BTreeMap<&'static str, String>,
    form: CreateForm,
) -> Result<Response, PageError> {
    let now = state.dispatcher.now();
    let activations = state
        .dispatcher
        .list_activations(&session.actor())
        .await?
        .into_iter()
        .map(|a| ActivationView::new(a, now))
        .collect();
    let layout = session.layout(state.store.regions().await?, "activations");
    Ok(render(&ActivationsPage {
        layout,
        activations,
        created,
        errors,
        form,
    }))
}

pub async fn index(State(state): State<AppState>, session: Session) -> Result<Response, PageError> {
    let form = CreateForm {
        region_id: session.region.clone().unwrap_or_default(),
        instance_count_limit: crate::dispatch::DEFAULT_ACTIVATION_INSTANCES.to_string(),
        ttl_hours: crate::dispatch::DEFAULT_TTL_HOURS.to_string(),
        ..Default::default()
    };
    page(&state, &session, None, BTreeMap::new(), form).await
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateForm {
    region_id: String,
    instance_count_limit: String,
    ttl_hours: String,
    #[serde(default)]
    description: String,
    /// The instance name the agent line sets (optional).
    #[serde(default)]
    instance_name: String,
}

pub async fn create(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    ConsoleForm(form): ConsoleForm<CreateForm>,
) -> Result<Response, PageError> {
    let request = (|| {
        if !form.instance_name.trim().is_empty() {
            check::required_name(
                Field::InstanceName,
                "name",
                &form.instance_name,
                check::MAX_INSTANCE_NAME,
                "instance",
            )?;
        }
        Ok::<_, Error>(ActivationRequest {
            region_id: form.region_id.clone(),
            instance_count_limit: check::whole_number(Field::InstanceCountLimit, &form.instance_count_limit)?,
            ttl_hours: Some(check::whole_number(Field::TtlHours, &form.ttl_hours)?),
            description: Some(form.description.clone()).filter(|d| !d.is_empty()),
        })
    })();
    let created = match request {
        Ok(req) => state.dispatcher.create_activation(&session.actor(), req).await,
        Err(e) => Err(e),
    };
    match created {
        Ok((row, code)) => {
            let scheme = if state.tls { "https" } else { "http" };
            let server = public_url(state.tls, &headers).unwrap_or_else(|| format!("{scheme}://SERVER:8080"));
            let name = match form.instance_name.trim() {
                "" => String::new(),
                name => format!(" --name {}", shell_quote(name)),
            };
            let (cacert, ca_file) = match state.tls {
                true => (format!(" --cacert {CA_FILE}"), format!(" --ca-file {CA_FILE}")),
                false => Default::default(),
            };
            let created = Created {
                export_line: format!("export FLEETRUN_ACTIVATION_CODE={}", shell_quote(&code)),
                agent_line: format!(
                    "sudo --preserve-env=FLEETRUN_ACTIVATION_CODE fleetrun-agent --server {server} \
                     --activation-id {}{name} --state-dir /var/lib/fleetrun-agent",
                    shell_quote(&row.id)
                ),
                install_line: format!(
                    "curl -fsSL{cacert} {server}/install.sh | sh -s --{ca_file} --activation-id {} \
                     --activation-code {}{name}",
                    shell_quote(&row.id),
                    shell_quote(&code)
                ),
                tls: state.tls,
                id: row.id,
                code,
            };
            page(&state, &session, Some(created), BTreeMap::new(), CreateForm::default()).await
        }
        Err(Error::Invalid { field, message }) => {
            let errors = BTreeMap::from([(field.form_name(), message)]);
            page(&state, &session, None, errors, form).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Quotes a word for a POSIX shell line, unless it needs none.
fn shell_quote(word: &str) -> String {
    if word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

pub async fn disable(
    State(state): State<AppState>,
    session: Session,
    Path(activation_id): Path<String>,
) -> Result<Response, PageError> {
    state
        .dispatcher
        .disable_activation(&session.actor(), &activation_id)
        .await?;
    let note = render(&ToastNote {
        message: "Activation disabled.",
    });
    Ok((HxRefresh(true), note).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(shell_quote("web-1"), "web-1");
        assert_eq!(shell_quote("db 1; rm"), "'db 1; rm'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
