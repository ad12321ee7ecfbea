//! Parity of the two surfaces: every rule lives once in `dispatch/`, so the same bad input sent
//! through the JSON API and through the console form that does the same thing must get the same
//! refusal (the same sentence; the API adds its JSON `code`), and neither may store anything.
//!
//! Each case is one input, written once by its API field names; the console form gets the same
//! values under its own field names, numbers typed as their digits. (A number typed as text is
//! refused by the console as "must be a whole number" before any domain check: only numbers
//! reach the same check on both surfaces.)
//!
//! Left out, because only one surface can express them:
//! - the activation form's `instance_name`: it only shapes the agent line the console shows,
//!   and the API has no such field;
//! - numbers that are negative, fractional, text, or beyond the API's integer types: the API
//!   refuses them as a malformed body (`InvalidParameter.Body`), the console as not a whole
//!   number (the hostile tables cover both);
//! - unknown fields: the API refuses them, a form has no way to send a field that means nothing;
//! - an instance named twice in RunCommand: the Send dialog merges repeated instances;
//! - `enable_parameter`: the console turns parameters on whenever the content has a
//!   placeholder, so the API cases set it on (with no placeholder it changes nothing).

use crate::helpers::{Console, TestApp, form, register, register_body};
use reqwest::Method;
use serde_json::{Value, json};

/// One thing both surfaces do: the API call, the console form that does the same, a valid input
/// by API field names, and the form field that carries each API field.
struct Action {
    method: Method,
    /// Under `/api/v1`.
    api_path: String,
    console_path: String,
    valid: Value,
    /// (API field, form field); an API field not listed is one the console sets itself.
    fields: &'static [(&'static str, &'static str)],
}

impl Action {
    /// The valid input with `changes` on top: the one input sent both ways.
    fn input(&self, changes: Value) -> Value {
        let mut input = self.valid.clone();
        if let (Value::Object(input), Value::Object(changes)) = (&mut input, changes) {
            input.extend(changes);
        }
        input
    }

    /// `input` as the console form carries it: text as typed, numbers as their digits, a list
    /// as its field repeated, a map as one field per key (the form field is then a prefix).
    fn form(&self, input: &Value) -> Vec<u8> {
        let text = |value: &Value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (api, field) in self.fields {
            match &input[api] {
                Value::Null => {}
                Value::Array(items) => pairs.extend(items.iter().map(|item| (field.to_string(), text(item)))),
                Value::Object(map) => {
                    pairs.extend(map.iter().map(|(key, value)| (format!("{field}{key}"), text(value))))
                }
                value => pairs.push((field.to_string(), text(value))),
            }
        }
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        form(&pairs)
    }
}

/// The six actions, against a server with one (fake, offline) instance and two retained
/// commands, `kept` (the one edited) and `other`, in region `local`.
struct Actions {
    activation: Action,
    user: Action,
    token: Action,
    access_key: Action,
    edit: Action,
    run: Action,
}

impl Actions {
    fn new(instance_id: &str, command_id: &str) -> Actions {
        Actions {
            activation: Action {
                method: Method::POST,
                api_path: "/activations".into(),
                console_path: "/console/activations".into(),
                valid: json!({"region_id": "local", "instance_count_limit": 1, "ttl_hours": 4, "description": ""}),
                fields: &[
                    ("region_id", "region_id"),
                    ("instance_count_limit", "instance_count_limit"),
                    ("ttl_hours", "ttl_hours"),
                    ("description", "description"),
                ],
            },
            user: Action {
                method: Method::POST,
                api_path: "/users".into(),
                console_path: "/console/users".into(),
                valid: json!({"username": "ann", "password": "long enough password", "role": "viewer"}),
                fields: &[("username", "username"), ("password", "password"), ("role", "role")],
            },
            token: Action {
                method: Method::POST,
                api_path: "/tokens".into(),
                console_path: "/console/account/tokens".into(),
                valid: json!({"name": "ci"}),
                fields: &[("name", "name"), ("expires_in_days", "expires_in_days")],
            },
            access_key: Action {
                method: Method::POST,
                api_path: "/access-keys".into(),
                console_path: "/console/account/access-keys".into(),
                valid: json!({"description": "ci"}),
                fields: &[("description", "description")],
            },
            // The console's edit form always sends every field, so the API gets them all too.
            edit: Action {
                method: Method::PATCH,
                api_path: format!("/commands/{command_id}"),
                console_path: format!("/console/commands/{command_id}"),
                valid: json!({
                    "name": "kept", "description": "", "command_content": "uptime", "working_dir": "",
                    "timeout_secs": 60, "username": ""
                }),
                fields: &[
                    ("name", "name"),
                    ("description", "description"),
                    ("command_content", "content"),
                    ("working_dir", "working_dir"),
                    ("timeout_secs", "timeout"),
                    ("username", "username"),
                ],
            },
            run: Action {
                method: Method::POST,
                api_path: "/invocations".into(),
                console_path: "/console/send".into(),
                valid: json!({
                    "instance_ids": [instance_id], "type": "RunShellScript", "command_content": "echo hi",
                    "enable_parameter": true, "timeout_secs": 60
                }),
                fields: &[
                    ("instance_ids", "instance_ids"),
                    ("type", "type_linux"),
                    ("command_content", "content_linux"),
                    ("timeout_secs", "timeout"),
                    ("working_dir", "working_dir"),
                    ("username", "username"),
                    ("name", "name"),
                    ("description", "description"),
                    ("parameters", "param_"),
                ],
            },
        }
    }
}

/// One bad input and the code of the API's refusal.
struct Case<'a> {
    what: &'static str,
    action: &'a Action,
    input: Value,
    code: &'static str,
}

fn case<'a>(what: &'static str, action: &'a Action, changes: Value, code: &'static str) -> Case<'a> {
    Case {
        what,
        input: action.input(changes),
        action,
        code,
    }
}

#[rustfmt::skip]
fn cases(a: &Actions) -> Vec<Case<'_>> {
    let (activation, user, token, edit, run) = (&a.activation, &a.user, &a.token, &a.edit, &a.run);
    let access_key = &a.access_key;
    vec![
        // Activations.
        case("activation in region CN Hangzhou", activation, json!({"region_id": "CN Hangzhou"}), "InvalidParameter.RegionId"),
        case("activation in an empty region", activation, json!({"region_id": ""}), "InvalidParameter.RegionId"),
        case("activation for 0 instances", activation, json!({"instance_count_limit": 0}), "InvalidParameter.InstanceCountLimit"),
        case("activation for 100,001 instances", activation, json!({"instance_count_limit": 100_001}), "InvalidParameter.InstanceCountLimit"),
        case("activation living 0 hours", activation, json!({"ttl_hours": 0}), "InvalidParameter.TtlHours"),
        case("activation living 8761 hours", activation, json!({"ttl_hours": 8761}), "InvalidParameter.TtlHours"),
        case("activation description of 101 characters", activation, json!({"description": "d".repeat(101)}), "InvalidParameter.Description"),
        case("activation description with a control character", activation, json!({"description": "a\u{7}b"}), "InvalidParameter.Description"),
        // Users.
        case("user with a password of 5 characters", user, json!({"password": "short"}), "InvalidParameter.Password"),
        case("user whose password is the username", user, json!({"username": "longusername", "password": "LongUserName"}), "InvalidParameter.Password"),
        case("user named Bad Name", user, json!({"username": "Bad Name"}), "InvalidParameter.Username"),
        case("user with role root", user, json!({"role": "root"}), "InvalidParameter.Role"),
        case("user with a taken name", user, json!({"username": "admin"}), "UserExists"),
        // Tokens.
        case("token with a blank name", token, json!({"name": "   "}), "InvalidParameter.Name"),
        case("token name of 65 characters", token, json!({"name": "t".repeat(65)}), "InvalidParameter.Name"),
        case("token name with a control character", token, json!({"name": "a\u{7}b"}), "InvalidParameter.Name"),
        case("token expiring in 0 days", token, json!({"expires_in_days": 0}), "InvalidParameter.ExpiresInDays"),
        case("token expiring in 3651 days", token, json!({"expires_in_days": 3651}), "InvalidParameter.ExpiresInDays"),
        // AccessKeys.
        case("AccessKey description of 129 characters", access_key, json!({"description": "d".repeat(129)}), "InvalidParameter.Description"),
        case("AccessKey description on two lines", access_key, json!({"description": "a\nb"}), "InvalidParameter.Description"),
        // Editing a retained command.
        case("command edit to timeout 0", edit, json!({"timeout_secs": 0}), "InvalidParameter.Timeout"),
        case("command edit to working_dir ../etc", edit, json!({"working_dir": "../etc"}), "InvalidParameter.WorkingDir"),
        case("command edit to username root;reboot", edit, json!({"username": "root;reboot"}), "InvalidParameter.Username"),
        case("command edit to an empty name", edit, json!({"name": ""}), "InvalidParameter.Name"),
        case("command edit to the name of another retained command", edit, json!({"name": "other"}), "InvalidCommandName.Duplicate"),
        case("command edit to a description of 513 characters", edit, json!({"description": "d".repeat(513)}), "InvalidParameter.Description"),
        case("command edit to a NUL byte in the content", edit, json!({"command_content": "echo\u{0}hi"}), "InvalidParameter.CommandContent"),
        // RunCommand.
        case("run with content of 64 KiB + 1", run, json!({"command_content": "x".repeat(64 * 1024 + 1)}), "InvalidParameter.CommandContent"),
        case("run with timeout 604801", run, json!({"timeout_secs": 604_801}), "InvalidParameter.Timeout"),
        case("run with timeout 0", run, json!({"timeout_secs": 0}), "InvalidParameter.Timeout"),
        case("run with working_dir rel/dir", run, json!({"working_dir": "rel/dir"}), "InvalidParameter.WorkingDir"),
        case("run as username root;reboot", run, json!({"username": "root;reboot"}), "InvalidParameter.Username"),
        case("run with a name of 129 characters", run, json!({"name": "n".repeat(129)}), "InvalidParameter.Name"),
        case("run with a parameter that has no value", run, json!({"command_content": "echo {{who}}"}), "InvalidParameter.Parameters"),
    ]
}

/// Everything the two surfaces could have stored.
async fn stored(app: &TestApp) -> Value {
    let mut stored = serde_json::Map::new();
    for path in [
        "/activations",
        "/users",
        "/tokens",
        "/access-keys",
        "/commands?page_size=1000",
        "/invocations?page_size=1000",
    ] {
        let response = app.client.raw(Method::GET, path, None).await.unwrap();
        stored.insert(path.into(), response.json().await.unwrap());
    }
    Value::Object(stored)
}

/// A problem if `surface` stored something since `baseline`, which then becomes what is stored
/// now (so that each case is blamed only for its own change).
async fn stored_nothing(app: &TestApp, baseline: &mut Value, surface: &str) -> Option<String> {
    let now = stored(app).await;
    if now == *baseline {
        return None;
    }
    *baseline = now;
    Some(format!("{surface} stored something"))
}

/// `text` as the console's templates show it, escaped by askama itself (which writes `"` `'` as
/// `&#34;` `&#39;`, and `&` `<` `>` as `&#38;` `&#60;` `&#62;`).
fn as_html(text: &str) -> String {
    askama::filters::escape(text, askama::filters::Html)
        .unwrap()
        .to_string()
}

/// The refusals a console page shows (its `role="alert"` elements), to name a discrepancy.
fn alerts(html: &str) -> Vec<&str> {
    html.split(r#"role="alert""#)
        .skip(1)
        .filter_map(|rest| rest.split_once('>')?.1.split('<').next())
        .collect()
}

/// Sends the case through the API, then through the console: what went wrong.
async fn refused_alike(app: &TestApp, console: &Console, case: &Case<'_>, baseline: &mut Value) -> Vec<String> {
    let mut problems = Vec::new();
    let action = case.action;

    let response = app
        .client
        .raw(action.method.clone(), &action.api_path, Some(&case.input))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    let message = body["message"].as_str().unwrap_or_default().to_string();
    if !(400..500).contains(&status) || body["code"] != case.code || message.is_empty() {
        problems.push(format!(
            "the API answered {status} {body} instead of a 4xx with code {} and a message",
            case.code
        ));
    }
    problems.extend(stored_nothing(app, baseline, "the API").await);

    match console.post_form(&action.console_path, action.form(&case.input)).await {
        Ok(answer) if answer.status != 200 && !(400..500).contains(&answer.status) => {
            problems.push(format!("the console answered {}", answer.status));
        }
        Ok(answer) if !answer.text.contains(&as_html(&message)) || message.is_empty() => {
            let api = if message.is_empty() {
                format!("accepted it ({status})")
            } else {
                format!("says {message:?}")
            };
            let console = match alerts(&answer.text) {
                shown if shown.is_empty() => "accepted it".to_string(),
                shown => format!("says {shown:?}"),
            };
            problems.push(format!(
                "DISCREPANCY: the API {api}, the console ({}) {console}",
                answer.status
            ));
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("the console: {e}")),
    }
    problems.extend(stored_nothing(app, baseline, "the console").await);
    problems
}

#[tokio::test]
async fn the_api_and_the_console_refuse_the_same_bad_input_with_the_same_sentence_and_store_nothing() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 10).await;
    let (instance_id, _) = register(&app, &register_body(&activation, "fake-1")).await;
    let command =
        |name: &str| json!({"region_id": "local", "name": name, "type": "RunShellScript", "command_content": "uptime"});
    let kept = app.create("/commands", &command("kept")).await;
    app.create("/commands", &command("other")).await;
    let actions = Actions::new(&instance_id, kept["command_id"].as_str().unwrap());
    let cases = cases(&actions);
    let console = Console::login(&app).await;
    let mut baseline = stored(&app).await;

    let mut failures = Vec::new();
    for case in &cases {
        let problems = refused_alike(&app, &console, case, &mut baseline).await;
        if !problems.is_empty() {
            failures.push(format!("- {}: {}", case.what, problems.join("; ")));
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} parity cases failed (DISCREPANCY: the same input is treated differently by the two \
         surfaces, so a rule lives outside the domain layer):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The other half of parity: input both surfaces accept is taken the same way. Spaces around a
/// working directory or a username are dropped (never meant), a parameter value is taken as
/// typed, spaces and all (the console treats only an empty field as no value).
#[tokio::test]
async fn the_api_and_the_console_take_spaces_around_a_path_a_username_and_in_a_value_alike() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 10).await;
    let (instance_id, _) = register(&app, &register_body(&activation, "fake-1")).await;
    let actions = Actions::new(&instance_id, "c-unused");
    let input = actions.run.input(json!({
        "command_content": "echo {{who}}", "parameters": {"who": " "},
        "working_dir": " /tmp ", "username": " root "
    }));
    let console = Console::login(&app).await;

    let api = app
        .client
        .raw(Method::POST, "/invocations", Some(&input))
        .await
        .unwrap();
    let answer = console
        .post_form("/console/send", actions.run.form(&input))
        .await
        .unwrap();
    let listed = app.client.invocations("").await.unwrap();

    assert_eq!(api.status(), 201);
    assert!(
        answer.text.contains("Command Output"),
        "the console ran it: {}",
        answer.text
    );
    assert_eq!(listed.total, 2);
    for inv in listed.invocations {
        assert_eq!(inv.spec.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(inv.spec.username.as_deref(), Some("root"));
        assert_eq!(inv.parameters.get("who").map(String::as_str), Some(" "));
    }
}
