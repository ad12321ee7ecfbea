//! Hostile input (issue 4): oversize bodies, headers and frames, deep JSON, invalid UTF-8, NUL
//! bytes, path-like working directories, absurd timeouts, unknown fields and parameters,
//! duplicated ids, bad Base64, malformed credentials, garbage WebSocket frames, script tags in
//! every displayed field and SQL metacharacters in every filter, against the JSON API, the
//! console forms and the agent endpoints.
//!
//! Every case checks the answer (the specific status and, where the server answers JSON, a body
//! with a `code` and a human `message`), that nothing was stored half-way (what the API lists is
//! unchanged) and that the server is healthy afterwards (`/healthz` and a normal request).
//! Cases are table-driven where that is natural; a table runs every case and then fails once,
//! listing each case that went wrong with its description.
//!
//! Decisions recorded here:
//! - A filter with SQL metacharacters in free text or an id (`q`, `instance_id`, `command_id`,
//!   `region_id`, audit `user` and `action`) is a legitimate search: it answers 200 and matches
//!   nothing. Only filters with a closed set of values (`status`, `since`, `page`) answer 400.
//! - Console forms answer 200 with the message next to the field (htmx swaps only 2xx answers);
//!   a console request whose body cannot be decoded at all answers 400, like the API.
//! - Errors of the JSON API are JSON, including a wrong method and an undecodable path.
//!
//! One file per surface: [`api`] (the JSON API), [`agent`] (enrolment and the agent socket),
//! [`console`] (console forms and the escaping of every displayed field) and [`http`] (the HTTP
//! layer below both). This file holds what they share: the table machinery ([`Case`],
//! [`Expect`], [`judge`]) and the [`Fixture`] that runs a table.

mod agent;
mod api;
mod console;
mod http;

use crate::helpers::{Answer, TestApp, register, register_body};
use fleetrun::protocol::api::{ActivationCreated, RunCommandRequest};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use std::time::Duration;

const JSON: &str = "application/json";
const MIB: usize = 1024 * 1024;

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    format!("{}… ({} bytes)", text.chars().take(max).collect::<String>(), text.len())
}

/// `base` with the fields of `extra` set on top.
fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
        base.extend(extra);
    }
    base
}

fn body(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

/// What a hostile request should get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status and a JSON error body with this code and a human message.
    Refused(u16, &'static str),
    /// This status and a JSON error body with a code of the server's choosing and a message.
    RefusedJson(u16),
    /// This status from the HTTP layer below the API; no body is required.
    Bare(u16),
    /// 200 and an empty list under this key with `total` 0: the filter is taken literally.
    NoMatch(&'static str),
    /// 200 and an empty list under this key: a page past the end.
    EmptyPage(&'static str),
}

use Expect::{Bare, EmptyPage, NoMatch, Refused, RefusedJson};

fn bad(code: &'static str) -> Expect {
    Refused(400, code)
}

/// One hostile request.
struct Case {
    what: String,
    method: Method,
    path: String,
    body: Option<(&'static str, Vec<u8>)>,
    headers: Vec<(HeaderName, Vec<u8>)>,
    /// Send the fixture's API token.
    token: bool,
    expect: Expect,
    /// The message must contain one of these (e.g. the limit that was exceeded).
    mentions: &'static [&'static str],
}

impl Case {
    fn new(what: impl Into<String>, method: Method, path: impl Into<String>, expect: Expect) -> Case {
        Case {
            what: what.into(),
            method,
            path: path.into(),
            body: None,
            headers: Vec::new(),
            token: true,
            expect,
            mentions: &[],
        }
    }

    fn raw(mut self, content_type: &'static str, bytes: impl Into<Vec<u8>>) -> Case {
        self.body = Some((content_type, bytes.into()));
        self
    }

    fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Case {
        if name.eq_ignore_ascii_case("authorization") {
            self.token = false;
        }
        self.headers
            .push((HeaderName::from_bytes(name.as_bytes()).unwrap(), value.into()));
        self
    }

    fn anonymous(mut self) -> Case {
        self.token = false;
        self
    }

    fn mentions(mut self, any_of: &'static [&'static str]) -> Case {
        self.mentions = any_of;
        self
    }
}

fn get(what: impl Into<String>, path: impl Into<String>, expect: Expect) -> Case {
    Case::new(what, Method::GET, path, expect)
}

fn post(what: impl Into<String>, path: impl Into<String>, body: Value, expect: Expect) -> Case {
    Case::new(what, Method::POST, path, expect).raw(JSON, serde_json::to_vec(&body).unwrap())
}

fn patch(what: impl Into<String>, path: impl Into<String>, body: Value, expect: Expect) -> Case {
    Case::new(what, Method::PATCH, path, expect).raw(JSON, serde_json::to_vec(&body).unwrap())
}

fn raw(
    what: impl Into<String>,
    path: impl Into<String>,
    content_type: &'static str,
    bytes: impl Into<Vec<u8>>,
    expect: Expect,
) -> Case {
    Case::new(what, Method::POST, path, expect).raw(content_type, bytes)
}

/// Judges one answer against what the case expects; the problems found.
fn judge(case: &Case, status: u16, content_type: &str, text: &str) -> Vec<String> {
    let shown = truncate(text, 300);
    let want = match case.expect {
        Refused(s, _) | RefusedJson(s) | Bare(s) => s,
        NoMatch(_) | EmptyPage(_) => 200,
    };
    if status != want {
        return vec![format!("answered {status} instead of {want}: {shown}")];
    }
    let mut problems = Vec::new();
    match case.expect {
        Refused(..) | RefusedJson(_) => {
            let Ok(body) = serde_json::from_str::<Value>(text) else {
                return vec![format!(
                    "the {status} has no JSON error body (content-type {content_type:?}): {shown}"
                )];
            };
            let code = body["code"].as_str().unwrap_or_default();
            let message = body["message"].as_str().unwrap_or_default();
            if let Refused(_, expected) = case.expect {
                if code != expected {
                    problems.push(format!("code {code:?} instead of {expected:?}: {shown}"));
                }
            }
            if code.is_empty() {
                problems.push(format!("no error code: {shown}"));
            }
            if message.split_whitespace().count() < 3 {
                problems.push(format!("no human message: {shown}"));
            }
            if !case.mentions.is_empty() && !case.mentions.iter().any(|m| message.contains(m)) {
                problems.push(format!(
                    "the message does not name the limit ({}): {message:?}",
                    case.mentions.join(" or ")
                ));
            }
        }
        NoMatch(key) | EmptyPage(key) => match serde_json::from_str::<Value>(text) {
            Ok(body) => {
                let listed = body[key].as_array().map_or(usize::MAX, Vec::len);
                let total = body["total"].as_u64();
                if listed != 0 || (matches!(case.expect, NoMatch(_)) && total != Some(0)) {
                    problems.push(format!(
                        "matched {listed} (total {total:?}) instead of nothing: {shown}"
                    ));
                }
            }
            Err(_) => problems.push(format!("not a JSON listing: {shown}")),
        },
        Bare(_) => {}
    }
    problems
}

/// Removes the fields that change by themselves (last use of a token, heartbeats).
fn strip(value: &mut Value, keys: &[&str]) {
    match value {
        Value::Object(map) => {
            for key in keys {
                map.remove(*key);
            }
            map.values_mut().for_each(|v| strip(v, keys));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| strip(v, keys)),
        _ => {}
    }
}

/// The parts of two snapshots that differ.
fn diff(before: &Value, after: &Value) -> String {
    let (Some(before), Some(after)) = (before.as_object(), after.as_object()) else {
        return truncate(&after.to_string(), 400);
    };
    before
        .iter()
        .filter(|(key, value)| after.get(*key) != Some(*value))
        .map(|(key, value)| {
            format!(
                "{key} was {} and is now {}",
                truncate(&value.to_string(), 300),
                truncate(&after.get(key).map(Value::to_string).unwrap_or_default(), 300)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A server with one enrolled (fake, offline) instance, a retained command, one invocation and
/// an API token for the checks.
struct Fixture {
    app: TestApp,
    http: reqwest::Client,
    token: String,
    activation: ActivationCreated,
    instance_id: String,
    instance_secret: String,
    command_id: String,
    invoke_id: String,
}

impl Fixture {
    async fn new() -> Fixture {
        let app = TestApp::spawn().await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(Policy::none())
            .build()
            .unwrap();
        let token = app.create("/tokens", &json!({"name": "hostile-suite"})).await;
        let token = token["token"].as_str().unwrap().to_string();
        let activation = app.activation("local", 10).await;
        let (instance_id, instance_secret) = register(&app, &register_body(&activation, "fake-1")).await;
        let command =
            json!({"region_id": "local", "name": "kept", "type": "RunShellScript", "command_content": "uptime"});
        let command = app.create("/commands", &command).await;
        let command_id = command["command_id"].as_str().unwrap().to_string();
        let created = app
            .client
            .run(&RunCommandRequest::shell(vec![instance_id.clone()], "true"))
            .await
            .unwrap();
        Fixture {
            app,
            http,
            token,
            activation,
            instance_id,
            instance_secret,
            command_id,
            invoke_id: created.invoke_id,
        }
    }

    /// Whether the instance is shown offline within 5 s.
    async fn offline(&self, instance_id: &str) -> bool {
        for _ in 0..100 {
            let instance = self.api(&format!("/instances/{instance_id}")).await;
            if instance.is_ok_and(|i| i["agent"]["online"] == json!(false)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn api(&self, path: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(format!("{}/api/v1{path}", self.app.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if response.status() != 200 {
            return Err(format!("GET {path} answered {}", response.status()));
        }
        response.json().await.map_err(|e| format!("GET {path}: {e}"))
    }

    async fn healthz(&self) -> Result<(), String> {
        let health = self
            .http
            .get(format!("{}/healthz", self.app.url))
            .send()
            .await
            .map_err(|e| format!("GET /healthz: {e}"))?;
        if health.status() != 200 {
            return Err(format!("GET /healthz answered {}", health.status()));
        }
        Ok(())
    }

    /// Everything the API lists, after checking `/healthz`.
    async fn snapshot(&self) -> Result<Value, String> {
        self.healthz().await?;
        let mut snapshot = json!({
            "invocations": self.api("/invocations?page_size=1000").await?,
            "commands": self.api("/commands?page_size=1000").await?,
            "instances": self.api("/instances?page_size=1000").await?,
            "activations": self.api("/activations").await?,
            "users": self.api("/users").await?,
            "tokens": self.api("/tokens").await?,
        });
        strip(&mut snapshot, &["last_used_time", "last_heartbeat_time"]);
        Ok(snapshot)
    }

    async fn send(&self, case: &Case) -> Result<(u16, String, String), String> {
        let mut request = self
            .http
            .request(case.method.clone(), format!("{}{}", self.app.url, case.path));
        if case.token {
            request = request.bearer_auth(&self.token);
        }
        for (name, value) in &case.headers {
            request = request.header(name.clone(), HeaderValue::from_bytes(value).unwrap());
        }
        if let Some((content_type, bytes)) = &case.body {
            if !content_type.is_empty() {
                request = request.header(CONTENT_TYPE, *content_type);
            }
            request = request.body(bytes.clone());
        }
        let answer = Answer::of(request).await?;
        let content_type = answer
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok((answer.status, content_type, answer.text))
    }

    /// What went wrong with what is stored now, if anything: it differs from `baseline`, or the
    /// server is not healthy. A change becomes the new `baseline`, so that each case is blamed
    /// only for its own.
    async fn changed_since(&self, baseline: &mut Value) -> Option<String> {
        match self.snapshot().await {
            Ok(after) if after == *baseline => None,
            Ok(after) => {
                let problem = format!("something was stored: {}", diff(baseline, &after));
                *baseline = after;
                Some(problem)
            }
            Err(e) => Some(format!("the server is not healthy afterwards: {e}")),
        }
    }

    /// Runs every case, each followed by the checks that nothing was stored and that the server
    /// is healthy, then fails once with every case that went wrong.
    async fn run(&self, cases: Vec<Case>) {
        let mut baseline = self.snapshot().await.expect("the fixture is healthy");
        let count = cases.len();
        let mut failures = Vec::new();
        for case in &cases {
            let mut problems = match self.send(case).await {
                Ok((status, content_type, text)) => judge(case, status, &content_type, &text),
                Err(e) => vec![e],
            };
            problems.extend(self.changed_since(&mut baseline).await);
            if !problems.is_empty() {
                let path = truncate(&case.path, 120);
                failures.push(format!(
                    "- {} ({} {path}): {}",
                    case.what,
                    case.method,
                    problems.join("; ")
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {count} hostile cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// Replaces the first occurrence of a byte string, to build bodies that no `Value` produces.
trait ReplaceFirst {
    fn replace_first(self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceFirst for Vec<u8> {
    fn replace_first(self, from: &[u8], to: &[u8]) -> Vec<u8> {
        match self.windows(from.len()).position(|w| w == from) {
            Some(at) => [&self[..at], to, &self[at + from.len()..]].concat(),
            None => self,
        }
    }
}
