//! Hostile console forms (Send Command, activations, users, tokens, retained-command edits,
//! the region picker, oversize bodies and logins), SQL in the console's filters, and script tags
//! in every field the console displays, which must all be shown escaped.

use super::agent::{attach, hello, next_message, text_of};
use super::{Fixture, MIB, truncate};
use crate::helpers::{Answer, Console, PASSWORD, enc, form, register, register_body};
use fleetrun::protocol::agent::{Output, ServerMessage, TaskFinished, TaskStarted};
use fleetrun::protocol::api::RunCommandRequest;
use fleetrun::protocol::{ErrorCode, OutputStream, TaskEnd};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::header::CONTENT_TYPE;
use reqwest::redirect::Policy;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest as _};

/// One hostile console request: the form sent, the status and a text the answer must show.
struct FormCase {
    what: &'static str,
    path: String,
    body: Vec<u8>,
    /// Sent to `/login` without a session rather than as a logged-in htmx request.
    login: bool,
    status: u16,
    shows: &'static str,
}

/// `base` with `changes` replacing (or adding) fields.
fn changed(base: &[(&'static str, &str)], changes: &[(&'static str, &str)]) -> Vec<u8> {
    let mut pairs: Vec<(&str, &str)> = base.to_vec();
    for &(key, value) in changes {
        pairs.retain(|(k, _)| *k != key);
        pairs.push((key, value));
    }
    form(&pairs)
}

fn form_case(what: &'static str, path: &str, body: Vec<u8>, status: u16, shows: &'static str) -> FormCase {
    FormCase {
        what,
        path: path.to_string(),
        body,
        login: false,
        status,
        shows,
    }
}

fn login_case(what: &'static str, body: Vec<u8>, status: u16, shows: &'static str) -> FormCase {
    FormCase {
        login: true,
        ..form_case(what, "/login", body, status, shows)
    }
}

#[rustfmt::skip]
fn console_cases(fx: &Fixture) -> Vec<FormCase> {
    let send_form = [("instance_ids", fx.instance_id.as_str()), ("type_linux", "RunShellScript"), ("content_linux", "echo hi")];
    let send = |changes: &[(&'static str, &str)]| changed(&send_form, changes);
    let edit_form = [("name", "kept"), ("description", ""), ("content", "uptime"), ("working_dir", ""), ("timeout", "60"), ("username", "")];
    let edit = |changes: &[(&'static str, &str)]| changed(&edit_form, changes);
    let activation_form = [("region_id", "local"), ("instance_count_limit", "1"), ("ttl_hours", "4")];
    let activation = |changes: &[(&'static str, &str)]| changed(&activation_form, changes);
    let user_form = [("username", "ann"), ("password", "long enough password"), ("role", "viewer")];
    let user = |changes: &[(&'static str, &str)]| changed(&user_form, changes);
    let twenty_one: String = (0..21).map(|n| format!("{{{{p{n}}}}} ")).collect();
    let many_ids: String = (0..20_000).map(|n| format!("instance_ids=i-{n}&")).collect();
    let cmd = format!("/console/commands/{}", fx.command_id);
    let (n129, t65, u100k, u2m) = ("n".repeat(129), "t".repeat(65), "u".repeat(100_000), "u".repeat(2 * MIB));
    vec![
        // Send Command.
        form_case("send with working_dir ../../etc", "/console/send", send(&[("working_dir", "../../etc")]), 200, "is not an absolute path"),
        form_case("send with timeout abc", "/console/send", send(&[("timeout", "abc")]), 200, "`timeout` must be a whole number"),
        form_case("send with timeout -5", "/console/send", send(&[("timeout", "-5")]), 200, "`timeout` must be a whole number"),
        form_case("send with timeout 0", "/console/send", send(&[("timeout", "0")]), 200, "must be between 1 and 604800"),
        form_case("send with timeout 10^12", "/console/send", send(&[("timeout", "1000000000000")]), 200, "must be between 1 and 604800"),
        form_case("send with a NUL byte in the content", "/console/send", send(&[("content_linux", "echo\0hi")]), 200, "NUL byte"),
        form_case("send with username root;reboot", "/console/send", send(&[("username", "root;reboot")]), 200, "not a valid account name"),
        form_case("send retaining a command without a name", "/console/send", send(&[("keep", "on")]), 200, "a retained command needs a name"),
        form_case("send with a name of 129 characters", "/console/send", send(&[("keep", "on"), ("name", &n129)]), 200, "at most 128"),
        form_case("send with 21 parameters", "/console/send", send(&[("content_linux", &twenty_one)]), 200, "at most 20"),
        form_case("send to an instance id with SQL", "/console/send", send(&[("instance_ids", "' OR '1'='1")]), 200, "role=\"alert\""),
        form_case("send to 20,000 unknown instance ids", "/console/send", [many_ids.as_bytes(), b"type_linux=RunShellScript&content_linux=true"].concat(), 200, "role=\"alert\""),
        // Activations.
        form_case("activation in region <script>", "/console/activations", activation(&[("region_id", "<script>r</script>")]), 200, "use lowercase letters, digits and dashes"),
        form_case("activation living -1 hours", "/console/activations", activation(&[("ttl_hours", "-1")]), 200, "`ttl_hours` must be a whole number"),
        form_case("activation for 1e9 instances", "/console/activations", activation(&[("instance_count_limit", "1e9")]), 200, "`instance_count_limit` must be a whole number"),
        form_case("activation form without ttl_hours", "/console/activations", form(&activation_form[..2]), 400, ""),
        // Users and tokens.
        form_case("user named <script>", "/console/users", user(&[("username", "<script>u</script>")]), 200, "a username is 1 to 64"),
        form_case("user with a password of 5 characters", "/console/users", user(&[("password", "short")]), 200, "a password needs 12"),
        form_case("user with role root", "/console/users", user(&[("role", "root")]), 200, "is not one of admin"),
        form_case("user form without a role", "/console/users", form(&user_form[..2]), 400, ""),
        form_case("token name of 65 characters", "/console/account/tokens", form(&[("name", &t65)]), 200, "1 to 64 characters"),
        form_case("token with a blank name", "/console/account/tokens", form(&[("name", "   ")]), 200, "1 to 64 characters"),
        form_case("token expiring in -1 days", "/console/account/tokens", form(&[("name", "t"), ("expires_in_days", "-1")]), 200, "`expires_in_days` must be a whole number"),
        // Editing a retained command: a refused edit changes nothing, not even its valid fields.
        form_case("command edit to timeout 0", &cmd, edit(&[("timeout", "0")]), 200, "must be between 1 and 604800"),
        form_case("command edit to timeout x", &cmd, edit(&[("timeout", "x")]), 200, "whole number"),
        form_case("command edit to working_dir ../etc", &cmd, edit(&[("working_dir", "../etc")]), 200, "is not an absolute path"),
        form_case("command edit with a NUL byte in the name", &cmd, edit(&[("name", "a\0b")]), 200, "control characters"),
        form_case("command edit with a valid name and timeout 0", &cmd, edit(&[("name", "renamed"), ("timeout", "0")]), 200, "must be between 1 and 604800"),
        // Region, oversize bodies, logins.
        form_case("region with SQL", "/console/region", form(&[("region_id", "' OR 1=1 --")]), 400, "is not valid"),
        form_case("a form body of 2 MiB", "/console/users", user(&[("username", &u2m)]), 413, ""),
        login_case("login with a username of 100,000 characters", form(&[("username", &u100k), ("password", "wrong")]), 401, "Wrong username or password."),
        login_case("login with a NUL byte in the username", form(&[("username", "admin\0"), ("password", PASSWORD)]), 401, "Wrong username or password."),
        login_case("login with invalid UTF-8", b"username=%FF%FE&password=%C3%28".to_vec(), 401, "Wrong username or password."),
        login_case("login without a password", form(&[("username", "admin")]), 400, ""),
    ]
}

#[tokio::test]
async fn console_forms_refuse_hostile_input_and_store_nothing() {
    let fx = Fixture::new().await;
    let console = Console::login(&fx.app).await;
    let id = fx.instance_id.as_str();
    let cases = console_cases(&fx);
    let mut baseline = fx.snapshot().await.expect("the fixture is healthy");
    let count = cases.len();
    let mut failures = Vec::new();
    for case in &cases {
        let answer = if case.login {
            let request = console.http.post(format!("{}{}", console.url, case.path));
            Answer::of(
                request
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(case.body.clone()),
            )
            .await
        } else {
            console.post_form(&case.path, case.body.clone()).await
        };
        let mut problems = Vec::new();
        match answer {
            Ok(Answer { status, text: html, .. }) => {
                if status != case.status {
                    problems.push(format!(
                        "answered {status} instead of {}: {}",
                        case.status,
                        truncate(&html, 300)
                    ));
                } else if !html.contains(case.shows) {
                    problems.push(format!(
                        "the answer does not say {:?}: {}",
                        case.shows,
                        truncate(&html, 300)
                    ));
                }
                if html.contains("<script>") {
                    problems.push("the answer has a raw <script>".into());
                }
            }
            Err(e) => problems.push(e),
        }
        problems.extend(fx.changed_since(&mut baseline).await);
        if !problems.is_empty() {
            failures.push(format!("- {} (POST {}): {}", case.what, case.path, problems.join("; ")));
        }
    }

    // Filters with SQL metacharacters match nothing; absurd page numbers answer an empty page.
    // (The audit page names RunCommand in a placeholder, so its rows are told by CreateToken.)
    #[rustfmt::skip]
    let filters = vec![
        ("instances q with SQL", format!("/console/instances?q={}", enc("' OR 1=1 --")), id),
        ("instances q of a lone %", "/console/instances?q=%25".to_string(), id),
        ("commands q with SQL", format!("/console/commands?q={}", enc("' OR ''='")), fx.command_id.as_str()),
        ("invocations instance_id with SQL", format!("/console/invocations?instance_id={}", enc("' OR 1=1 --")), fx.invoke_id.as_str()),
        ("invocations command_id with SQL", format!("/console/invocations?command_id={}", enc("x' UNION SELECT * FROM users --")), fx.invoke_id.as_str()),
        ("audit user with SQL", format!("/console/audit?user={}", enc("admin' OR '1'='1")), "CreateToken"),
        ("audit action with SQL", format!("/console/audit?action={}", enc("CreateToken' OR 1=1 --")), "<td>CreateToken"),
        ("instances page 2^64 - 1", "/console/instances?page=18446744073709551615".to_string(), id),
        ("invocations page 2^64 - 1", "/console/invocations?page=18446744073709551615".to_string(), fx.invoke_id.as_str()),
        ("commands page 2^64 - 1", "/console/commands?page=18446744073709551615".to_string(), fx.command_id.as_str()),
        ("audit page 2^64 - 1", "/console/audit?page=18446744073709551615".to_string(), "CreateToken"),
    ];
    for (what, path, absent) in &filters {
        let mut problems = Vec::new();
        match console.get(path).await {
            Ok(Answer { status: 200, text, .. }) if text.contains(absent) => {
                problems.push(format!("the page lists {absent}"))
            }
            Ok(Answer { status: 200, .. }) => {}
            Ok(Answer { status, text, .. }) => {
                problems.push(format!("answered {status} instead of 200: {}", truncate(&text, 300)))
            }
            Err(e) => problems.push(e),
        }
        problems.extend(fx.changed_since(&mut baseline).await);
        if !problems.is_empty() {
            failures.push(format!("- {what} (GET {path}): {}", problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile console cases failed:\n{}",
        failures.len(),
        count + filters.len(),
        failures.join("\n")
    );
}

/// `<script>{field}</script>`: a script tag naming the field it was stored in.
fn tag(field: &str) -> String {
    format!("<script>{field}</script>")
}

/// The tag of `field` as HTML shows text: escaped with named (`&lt;`, Rust-built fragments) or
/// numeric (`&#60;`, askama templates) character references.
fn escaped(field: &str) -> [String; 2] {
    [
        format!("&lt;script&gt;{field}&lt;/script&gt;"),
        format!("&#60;script&#62;{field}&#60;/script&#62;"),
    ]
}

fn shows_escaped(html: &str, field: &str) -> bool {
    escaped(field).iter().any(|e| html.contains(e.as_str()))
}

#[tokio::test]
async fn script_tags_in_every_displayed_field_are_escaped() {
    let fx = Fixture::new().await;
    let app = &fx.app;

    // Stored through the legitimate paths: enrolment, the API, a (hand-written) agent.
    let mut body = register_body(&fx.activation, &tag("instance_name"));
    body["hostname"] = json!(tag("hostname"));
    body["os_name"] = json!(tag("os_name"));
    let (id, secret) = register(app, &body).await;
    let command = json!({
        "region_id": "local", "name": tag("command_name"), "description": tag("command_description"),
        "type": "RunShellScript", "command_content": format!("echo '{}'", tag("command_content"))
    });
    let command = app.create("/commands", &command).await;
    let command_id = command["command_id"].as_str().unwrap().to_string();
    let activation =
        json!({"region_id": "local", "instance_count_limit": 1, "description": tag("activation_description")});
    app.create("/activations", &activation).await;
    app.create("/tokens", &json!({"name": tag("token_name")})).await;

    let mut agent_hello = hello();
    agent_hello.os_name = tag("agent_os_name");
    agent_hello.hostname = tag("agent_hostname");
    let mut socket = attach(app, &format!("{id}:{secret}"), agent_hello).await.unwrap();
    let mut run = RunCommandRequest::shell(vec![id.clone()], format!("echo '{}'", tag("invocation_content")));
    run.name = Some(tag("invocation_name"));
    run.description = Some(tag("invocation_description"));
    let invoke_id = app.client.run(&run).await.unwrap().invoke_id;
    let task = match next_message(&mut socket).await {
        Some(ServerMessage::RunTask(task)) => task.task,
        other => panic!("the agent got {other:?} instead of its task"),
    };
    let output = Output {
        task: task.clone(),
        seq: 0,
        stream: OutputStream::Stdout,
        data: bytes::Bytes::from(format!("{}\n", tag("output"))),
    };
    let finished = TaskFinished {
        task: task.clone(),
        chunks: 1,
        exit_code: None,
        end: TaskEnd::Error {
            error_code: ErrorCode::ExecutionException,
            error_info: tag("error_info"),
        },
    };
    for message in [
        text_of(TaskStarted { task: task.clone() }),
        text_of(output),
        text_of(finished),
    ] {
        socket.send(Message::text(message)).await.unwrap();
    }
    app.wait_done(&invoke_id, Duration::from_secs(10)).await;

    // A login attempt with a script tag as username is shown back escaped.
    let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
    let attempt = http
        .post(format!("{}/login", app.url))
        .form(&[("username", tag("username").as_str()), ("password", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(attempt.status(), 401);
    let mut pages = vec![(
        "/login (failed attempt)".to_string(),
        attempt.text().await.unwrap(),
        vec!["username"],
    )];

    let console = Console::login(app).await;
    let q = |field: &str| enc(&tag(field));
    let wanted: Vec<(String, Vec<&str>)> = vec![
        ("/console/instances".into(), vec!["instance_name", "agent_os_name"]),
        (
            format!("/console/instances/{id}"),
            vec!["instance_name", "agent_os_name", "invocation_name"],
        ),
        (format!("/console/send?instance_ids={id}"), vec!["instance_name"]),
        (
            format!("/console/send?command_id={command_id}"),
            vec!["command_name", "command_content"],
        ),
        ("/console/commands".into(), vec!["command_name", "command_description"]),
        (
            format!("/console/commands/{command_id}"),
            vec!["command_name", "command_description", "command_content"],
        ),
        ("/console/activations".into(), vec!["activation_description"]),
        ("/console/account".into(), vec!["token_name"]),
        ("/console/invocations".into(), vec!["invocation_name"]),
        (
            format!("/console/invocations/{invoke_id}"),
            vec!["invocation_name", "invocation_content", "error_info"],
        ),
        (
            format!("/console/invocations/{invoke_id}/panel?instance_id={id}"),
            vec!["invocation_name", "error_info"],
        ),
        ("/console/audit".into(), vec!["username", "token_name", "command_name"]),
        (format!("/console/instances?q={}", q("search")), vec!["search"]),
        (format!("/console/commands?q={}", q("search")), vec!["search"]),
        (
            format!("/console/audit?user={}&action={}", q("audit_user"), q("audit_action")),
            vec!["audit_user", "audit_action"],
        ),
        (
            format!(
                "/console/invocations?instance_id={}&command_id={}&status={}",
                q("filter_instance"),
                q("filter_command"),
                q("filter_status")
            ),
            vec!["filter_instance", "filter_command"],
        ),
        (
            format!("/login?next=/{}", enc(&format!("\">{}", tag("next")))),
            vec!["next"],
        ),
    ];
    let mut failures = Vec::new();
    for (path, fields) in wanted {
        match console.get(&path).await {
            Ok(Answer { status: 200, text, .. }) => pages.push((path, text, fields)),
            Ok(Answer { status, text, .. }) => {
                failures.push(format!("- GET {path} answered {status}: {}", truncate(&text, 300)))
            }
            Err(e) => failures.push(format!("- GET {path}: {e}")),
        }
    }

    // The live output panel: output is escaped before it becomes markup.
    let url = format!(
        "{}/console/invocations/{invoke_id}/live?instance_id={id}",
        app.url.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "cookie",
        tungstenite::http::HeaderValue::from_str(&console.cookie).unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut live, _)) => {
            let mut html = String::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !shows_escaped(&html, "output") && !html.contains(&tag("output")) {
                match tokio::time::timeout_at(deadline, live.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => html.push_str(&text),
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            pages.push(("the live output socket".into(), html, vec!["output"]));
        }
        Err(e) => failures.push(format!("- the live output socket: {e}")),
    }

    let mut count = 0;
    for (page, html, fields) in &pages {
        for field in fields {
            count += 1;
            if html.contains(&format!("<script>{field}")) {
                failures.push(format!("- {field} on {page}: shown as a raw <script> tag"));
            } else if !shows_escaped(html, field) {
                failures.push(format!(
                    "- {field} on {page}: not shown escaped as {}",
                    escaped(field)[0]
                ));
            }
        }
        if html.contains("<script>") {
            failures.push(format!("- {page}: has a raw <script>"));
        }
    }
    let health = reqwest::get(format!("{}/healthz", app.url)).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        failures.is_empty(),
        "{} of {count} displayed fields went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
