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

use crate::helpers::{PASSWORD, TestApp};
use base64::Engine as _;
use fleetrun::protocol::agent::{AgentMessage, Hello, Output, ServerMessage, TaskFinished, TaskStarted};
use fleetrun::protocol::api::{ActivationCreated, RunCommandRequest};
use fleetrun::protocol::{CommandType, ErrorCode, OsType, OutputStream, PROTOCOL_VERSION, TaskEnd};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderName, HeaderValue};
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest as _};

const JSON: &str = "application/json";
const MIB: usize = 1024 * 1024;

/// Percent-encodes every byte but the unreserved ones, to put hostile text into a URL.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

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

/// A valid RunCommand body for `instance_id`, with `extra` fields on top.
fn run_body(instance_id: &str, extra: Value) -> Value {
    let body = json!({"instance_ids": [instance_id], "type": "RunShellScript", "command_content": "echo hi"});
    merge(body, extra)
}

fn body(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

/// `body` as JSON text with `raw` (text that no `Value` can produce) in place of `"__RAW__"`.
fn splice(body: Value, raw: &str) -> Vec<u8> {
    serde_json::to_string(&body)
        .unwrap()
        .replace("\"__RAW__\"", raw)
        .into_bytes()
}

/// A valid enrolment body for the activation.
fn register_body(activation: &ActivationCreated, name: &str) -> Value {
    json!({
        "activation_id": activation.activation_id, "activation_code": activation.activation_code,
        "hostname": "fake-host", "name": name, "os_type": "linux", "os_name": "Debian GNU/Linux 12",
        "ip_addresses": ["10.0.0.7"], "agent_version": "0.1.0"
    })
}

/// Enrols an instance through `POST /agent/v1/register`: its id and secret.
async fn register(app: &TestApp, body: &Value) -> (String, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/agent/v1/register", app.url))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "enrolling {body}");
    let body: Value = response.json().await.unwrap();
    (
        body["instance_id"].as_str().unwrap().to_string(),
        body["instance_secret"].as_str().unwrap().to_string(),
    )
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
        let token: Value = app
            .client
            .raw(Method::POST, "/tokens", Some(&json!({"name": "hostile-suite"})))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = token["token"].as_str().unwrap().to_string();
        let activation = app.activation("local", 10).await;
        let (instance_id, instance_secret) = register(&app, &register_body(&activation, "fake-1")).await;
        let command =
            json!({"region_id": "local", "name": "kept", "type": "RunShellScript", "command_content": "uptime"});
        let command: Value = app
            .client
            .raw(Method::POST, "/commands", Some(&command))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
        let response = request.send().await.map_err(|e| format!("no answer ({e:?})"))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response
            .text()
            .await
            .map_err(|e| format!("the answer broke off ({e})"))?;
        Ok((status, content_type, text))
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
            match self.snapshot().await {
                Ok(after) if after == baseline => {}
                Ok(after) => {
                    // Blame this case only: later cases are compared with what is there now.
                    problems.push(format!("something was stored: {}", diff(&baseline, &after)));
                    baseline = after;
                }
                Err(e) => problems.push(format!("the server is not healthy afterwards: {e}")),
            }
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

/// RunCommand, CreateCommand, ModifyCommand, InvokeCommand and StopInvocation bodies.
#[rustfmt::skip]
fn command_cases(fx: &Fixture) -> Vec<Case> {
    let id = fx.instance_id.as_str();
    let inv = "/api/v1/invocations";
    let run = |extra: Value| run_body(id, extra);
    let params = |content: &str, values: Value| {
        run(json!({"command_content": content, "enable_parameter": true, "parameters": values}))
    };
    let mut invalid_utf8 = br#"{"instance_ids":[""#.to_vec();
    invalid_utf8.extend([0xff, 0xfe, 0xfd]);
    invalid_utf8.extend(br#""],"type":"RunShellScript","command_content":"echo hi"}"#);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_field = splice(run(json!({"instance_ids": "__RAW__"})), &deep);
    let many: Vec<String> = (0..10_001).map(|n| format!("i-{n}")).collect();
    let too_many_to_stop: Vec<String> = (0..40_000).map(|n| format!("i-{n}")).collect();
    let placeholders: Vec<String> = (0..21).map(|n| format!("{{{{p{n}}}}}")).collect();
    let values: serde_json::Map<String, Value> = (0..21).map(|n| (format!("p{n}"), json!("1"))).collect();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let cmd = format!("/api/v1/commands/{}", fx.command_id);
    let invoke = format!("{cmd}/invoke");
    let stop = format!("{inv}/{}/stop", fx.invoke_id);
    let create = |extra: Value| {
        let body = json!({"region_id": "local", "name": "n", "type": "RunShellScript", "command_content": "uptime"});
        merge(body, extra)
    };
    let sql = "' OR '1'='1";
    vec![
        // Sizes and encodings of the body.
        raw("RunCommand body of 2 MiB", inv, JSON, body(run(json!({"command_content": "x".repeat(2 * MIB)}))), Refused(413, "RequestTooLarge")).mentions(&["1 MiB", "1048576"]),
        post("content of multi-byte characters one byte over 64 KiB", inv, run(json!({"command_content": "é".repeat(32_769)})), bad("InvalidParameter.CommandContent")),
        raw("body sent as text/plain", inv, "text/plain", body(run(json!({}))), Refused(415, "UnsupportedMediaType")),
        raw("body without a content type", inv, "", body(run(json!({}))), Refused(415, "UnsupportedMediaType")),
        raw("invalid UTF-8 inside a JSON string", inv, JSON, invalid_utf8, bad("InvalidParameter.Body")),
        raw("empty JSON body", inv, JSON, "", bad("InvalidParameter.Body")),
        raw("JSON null", inv, JSON, "null", bad("InvalidParameter.Body")),
        raw("trailing garbage after the object", inv, JSON, [body(run(json!({}))), b" DROP TABLE users".to_vec()].concat(), bad("InvalidParameter.Body")),
        raw("100,000 nested arrays", inv, JSON, deep.clone(), bad("InvalidParameter.Body")),
        raw("100,000 nested arrays inside instance_ids", inv, JSON, deep_field, bad("InvalidParameter.Body")),
        raw("a key given twice", inv, JSON, body(run(json!({}))).replace_first(b"{", br#"{"type":"RunBatScript","#), bad("InvalidParameter.Body")),
        post("unknown field __proto__", inv, run(json!({"__proto__": {"admin": true}})), bad("InvalidParameter.Body")),
        post("unknown command type", inv, run(json!({"type": "RunEvilScript"})), bad("InvalidParameter.Body")),
        post("content_encoding Base32", inv, run(json!({"content_encoding": "Base32"})), bad("InvalidParameter.Body")),
        post("content_encoding in lower case", inv, run(json!({"content_encoding": "base64"})), bad("InvalidParameter.Body")),
        post("content that is not Base64", inv, run(json!({"content_encoding": "Base64", "command_content": "%%%not base64"})), bad("InvalidParameter.CommandContent")),
        post("Base64 of invalid UTF-8", inv, run(json!({"content_encoding": "Base64", "command_content": b64(&[0xff, 0xfe, 0xfd])})), bad("InvalidParameter.CommandContent")),
        post("Base64 of content with a NUL byte", inv, run(json!({"content_encoding": "Base64", "command_content": b64(b"echo\0hi")})), bad("InvalidParameter.CommandContent")),
        post("Base64 decoding to 64 KiB + 1", inv, run(json!({"content_encoding": "Base64", "command_content": b64(&[b'x'; 65_537])})), bad("InvalidParameter.CommandContent")),
        post("Base64 of whitespace only", inv, run(json!({"content_encoding": "Base64", "command_content": b64(b" \n\t ")})), bad("InvalidParameter.CommandContent")),
        // NUL bytes in every text field.
        post("NUL byte in command_content", inv, run(json!({"command_content": "echo\u{0}hi"})), bad("InvalidParameter.CommandContent")),
        post("NUL byte in name", inv, run(json!({"name": "a\u{0}b"})), bad("InvalidParameter.Name")),
        post("NUL byte in description", inv, run(json!({"description": "a\u{0}b"})), bad("InvalidParameter.Description")),
        post("NUL byte in working_dir", inv, run(json!({"working_dir": "/tmp\u{0}/etc"})), bad("InvalidParameter.WorkingDir")),
        post("NUL byte in username", inv, run(json!({"username": "root\u{0}"})), bad("InvalidParameter.Username")),
        post("NUL byte in a parameter value", inv, params("echo {{a}}", json!({"a": "x\u{0}y"})), bad("InvalidParameter.Parameters")),
        post("NUL byte in an instance id", inv, run(json!({"instance_ids": ["i-\u{0}"]})), Refused(404, "InvalidInstance.NotFound")),
        // Working directories that are not absolute paths.
        post("working_dir ../../etc", inv, run(json!({"working_dir": "../../etc"})), bad("InvalidParameter.WorkingDir")),
        post("working_dir etc/passwd", inv, run(json!({"working_dir": "etc/passwd"})), bad("InvalidParameter.WorkingDir")),
        post("working_dir ~root", inv, run(json!({"working_dir": "~root"})), bad("InvalidParameter.WorkingDir")),
        post("working_dir \\\\host\\share", inv, run(json!({"working_dir": "\\\\host\\share"})), bad("InvalidParameter.WorkingDir")),
        post("working_dir of 201 characters", inv, run(json!({"working_dir": format!("/{}", "a".repeat(200))})), bad("InvalidParameter.WorkingDir")),
        post("working_dir with a newline", inv, run(json!({"working_dir": "/tmp\n/etc"})), bad("InvalidParameter.WorkingDir")),
        // Absurd timeouts.
        post("timeout 0", inv, run(json!({"timeout_secs": 0})), bad("InvalidParameter.Timeout")),
        post("timeout 10^12", inv, run(json!({"timeout_secs": 1_000_000_000_000u64})), bad("InvalidParameter.Timeout")),
        post("timeout 7 days + 1 s", inv, run(json!({"timeout_secs": 604_801})), bad("InvalidParameter.Timeout")),
        post("negative timeout", inv, run(json!({"timeout_secs": -1})), bad("InvalidParameter.Body")),
        post("timeout as a string", inv, run(json!({"timeout_secs": "60"})), bad("InvalidParameter.Body")),
        post("fractional timeout", inv, run(json!({"timeout_secs": 1.5})), bad("InvalidParameter.Body")),
        post("timeout null", inv, run(json!({"timeout_secs": null})), bad("InvalidParameter.Body")),
        raw("timeout 2^64", inv, JSON, splice(run(json!({"timeout_secs": "__RAW__"})), "18446744073709551616"), bad("InvalidParameter.Body")),
        raw("timeout 1e400", inv, JSON, splice(run(json!({"timeout_secs": "__RAW__"})), "1e400"), bad("InvalidParameter.Body")),
        // Other fields.
        post("username with shell metacharacters", inv, run(json!({"username": "root; rm -rf /"})), bad("InvalidParameter.Username")),
        post("name of 129 characters", inv, run(json!({"name": "n".repeat(129)})), bad("InvalidParameter.Name")),
        post("description of 513 characters", inv, run(json!({"description": "d".repeat(513)})), bad("InvalidParameter.Description")),
        post("keep_command without a name", inv, run(json!({"keep_command": true})), bad("InvalidParameter.Name")),
        // Instance ids.
        post("duplicated instance ids", inv, run(json!({"instance_ids": [id, id]})), bad("InvalidParameter.InstanceIds")),
        post("no instance ids", inv, run(json!({"instance_ids": []})), bad("InvalidParameter.InstanceIds")),
        post("10,001 instance ids", inv, run(json!({"instance_ids": many})), bad("InvalidParameter.InstanceIds")),
        post("instance_ids as a string", inv, run(json!({"instance_ids": id})), bad("InvalidParameter.Body")),
        post("instance id with SQL", inv, run(json!({"instance_ids": [sql]})), Refused(404, "InvalidInstance.NotFound")),
        // Parameters.
        post("21 parameters (limit 20)", inv, params(&placeholders.join(" "), Value::Object(values)), bad("InvalidParameter.Parameters")),
        post("a parameter the content does not use", inv, params("echo {{a}}", json!({"a": "1", "nope": "2"})), bad("InvalidParameter.Parameters")),
        post("a parameter without its value", inv, params("echo {{a}}", json!({})), bad("InvalidParameter.Parameters")),
        post("parameters while enable_parameter is false", inv, run(json!({"parameters": {"a": "1"}})), bad("InvalidParameter.Parameters")),
        post("an unknown built-in parameter", inv, params("echo {{fleetrun::secret}}", json!({})), bad("InvalidParameter.Parameters")),
        post("a parameter value filling the content past 64 KiB", inv, params("echo {{a}}", json!({"a": "x".repeat(70_000)})), bad("InvalidParameter.Parameters")),
        post("a parameter value that is not a string", inv, params("echo {{a}}", json!({"a": 1})), bad("InvalidParameter.Body")),
        // CreateCommand.
        post("CreateCommand with an empty name", "/api/v1/commands", create(json!({"name": " "})), bad("InvalidParameter.Name")),
        post("CreateCommand in region ../../etc", "/api/v1/commands", create(json!({"region_id": "../../etc"})), bad("InvalidParameter.RegionId")),
        post("CreateCommand in a region with SQL", "/api/v1/commands", create(json!({"region_id": sql})), bad("InvalidParameter.RegionId")),
        post("CreateCommand with timeout 0", "/api/v1/commands", create(json!({"timeout_secs": 0})), bad("InvalidParameter.Timeout")),
        post("CreateCommand with an unknown field", "/api/v1/commands", create(json!({"owner": "root"})), bad("InvalidParameter.Body")),
        post("CreateCommand with content that is not Base64", "/api/v1/commands", create(json!({"content_encoding": "Base64", "command_content": "***"})), bad("InvalidParameter.CommandContent")),
        post("CreateCommand with a NUL byte in the name", "/api/v1/commands", create(json!({"name": "a\u{0}"})), bad("InvalidParameter.Name")),
        // ModifyCommand: a refused change changes nothing, not even its valid fields.
        patch("ModifyCommand to timeout 10^12", &cmd, json!({"timeout_secs": 1_000_000_000_000u64}), bad("InvalidParameter.Timeout")),
        patch("ModifyCommand with a valid name and timeout 0", &cmd, json!({"name": "renamed", "timeout_secs": 0}), bad("InvalidParameter.Timeout")),
        patch("ModifyCommand with a NUL byte in the content", &cmd, json!({"command_content": "a\u{0}b"}), bad("InvalidParameter.CommandContent")),
        patch("ModifyCommand to a relative working_dir", &cmd, json!({"working_dir": "../x"}), bad("InvalidParameter.WorkingDir")),
        patch("ModifyCommand to a blank name", &cmd, json!({"name": "  "}), bad("InvalidParameter.Name")),
        patch("ModifyCommand with an unknown field", &cmd, json!({"region_id": "other"}), bad("InvalidParameter.Body")),
        patch("ModifyCommand of an id with SQL", format!("/api/v1/commands/{}", enc(sql)), json!({"name": "x"}), Refused(404, "InvalidCommand.NotFound")),
        Case::new("DeleteCommand of an id with SQL", Method::DELETE, format!("/api/v1/commands/{}", enc("' OR 1=1 --")), Refused(404, "InvalidCommand.NotFound")),
        // InvokeCommand.
        post("InvokeCommand with duplicated instance ids", &invoke, json!({"instance_ids": [id, id]}), bad("InvalidParameter.InstanceIds")),
        post("InvokeCommand with timeout 0", &invoke, json!({"instance_ids": [id], "timeout_secs": 0}), bad("InvalidParameter.Timeout")),
        post("InvokeCommand with a relative working_dir", &invoke, json!({"instance_ids": [id], "working_dir": "tmp"}), bad("InvalidParameter.WorkingDir")),
        post("InvokeCommand with an unknown field", &invoke, json!({"instance_ids": [id], "content": "reboot"}), bad("InvalidParameter.Body")),
        post("InvokeCommand with parameters the command does not take", &invoke, json!({"instance_ids": [id], "parameters": {"a": "1"}}), bad("InvalidParameter.Parameters")),
        post("InvokeCommand of an id with SQL", format!("/api/v1/commands/{}/invoke", enc(sql)), json!({"instance_ids": [id]}), Refused(404, "InvalidCommand.NotFound")),
        // StopInvocation: a refused stop stops nothing.
        post("stop with instance_ids as a string", &stop, json!({"instance_ids": id}), bad("InvalidParameter.Body")),
        post("stop with an unknown field", &stop, json!({"instance_ids": [id], "force": true}), bad("InvalidParameter.Body")),
        raw("stop with a body that is not JSON", &stop, JSON, "{", bad("InvalidParameter.Body")),
        post("stop naming 40,000 instances", &stop, json!({"instance_ids": too_many_to_stop}), bad("InvalidParameter.InstanceIds")),
        post("stop of an invocation id with SQL", format!("{inv}/{}/stop", enc(sql)), json!({}), Refused(404, "InvalidInvocation.NotFound")),
    ]
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

/// Activations, tokens, users, filters, credentials, routes and enrolment.
#[rustfmt::skip]
fn other_cases(fx: &Fixture, used_up: &ActivationCreated) -> Vec<Case> {
    let id = fx.instance_id.as_str();
    let sql = "' OR '1'='1";
    let activation = |extra: Value| merge(json!({"region_id": "local", "instance_count_limit": 1}), extra);
    let reg = |extra: Value| merge(register_body(&fx.activation, "new"), extra);
    let basic = |bytes: &[u8]| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(bytes));
    let ips: Vec<String> = (0..65).map(|n| format!("10.0.1.{n}")).collect();
    let invalid_utf8 = body(reg(json!({"hostname": "__RAW__"}))).replace_first(b"__RAW__", &[0xc3, 0x28, 0xff]);
    let register = "/agent/v1/register";
    vec![
        // Activations.
        post("activation in region ../../etc", "/api/v1/activations", activation(json!({"region_id": "../../etc"})), bad("InvalidParameter.RegionId")),
        post("activation in a region with SQL", "/api/v1/activations", activation(json!({"region_id": sql})), bad("InvalidParameter.RegionId")),
        post("activation for 0 instances", "/api/v1/activations", activation(json!({"instance_count_limit": 0})), bad("InvalidParameter.InstanceCountLimit")),
        post("activation for -1 instances", "/api/v1/activations", activation(json!({"instance_count_limit": -1})), bad("InvalidParameter.Body")),
        post("activation for 10^12 instances", "/api/v1/activations", activation(json!({"instance_count_limit": 1_000_000_000_000u64})), bad("InvalidParameter.Body")),
        post("activation living 0 hours", "/api/v1/activations", activation(json!({"ttl_hours": 0})), bad("InvalidParameter.TtlHours")),
        post("activation living 10^6 hours", "/api/v1/activations", activation(json!({"ttl_hours": 1_000_000})), bad("InvalidParameter.TtlHours")),
        post("activation description of 101 characters", "/api/v1/activations", activation(json!({"description": "d".repeat(101)})), bad("InvalidParameter.Description")),
        post("activation description with a NUL byte", "/api/v1/activations", activation(json!({"description": "a\u{0}b"})), bad("InvalidParameter.Description")),
        post("activation with an unknown field", "/api/v1/activations", activation(json!({"activation_code": "chosen"})), bad("InvalidParameter.Body")),
        // Tokens.
        post("token with an empty name", "/api/v1/tokens", json!({"name": "   "}), bad("InvalidParameter.Name")),
        post("token name of 65 characters", "/api/v1/tokens", json!({"name": "t".repeat(65)}), bad("InvalidParameter.Name")),
        post("token name with a NUL byte", "/api/v1/tokens", json!({"name": "a\u{0}b"}), bad("InvalidParameter.Name")),
        post("token expiring in 0 days", "/api/v1/tokens", json!({"name": "t", "expires_in_days": 0}), bad("InvalidParameter.ExpiresInDays")),
        post("token expiring in -1 days", "/api/v1/tokens", json!({"name": "t", "expires_in_days": -1}), bad("InvalidParameter.Body")),
        post("token with an unknown field", "/api/v1/tokens", json!({"name": "t", "role": "admin"}), bad("InvalidParameter.Body")),
        // Users.
        post("username with a script tag", "/api/v1/users", json!({"username": "<script>u</script>", "password": "long enough password", "role": "viewer"}), bad("InvalidParameter.Username")),
        post("username with SQL", "/api/v1/users", json!({"username": "x' OR 1=1 --", "password": "long enough password", "role": "viewer"}), bad("InvalidParameter.Username")),
        post("username with a NUL byte", "/api/v1/users", json!({"username": "ann\u{0}", "password": "long enough password", "role": "viewer"}), bad("InvalidParameter.Username")),
        post("password of 5 characters", "/api/v1/users", json!({"username": "ann", "password": "short", "role": "viewer"}), bad("InvalidParameter.Password")),
        post("password of 300 characters", "/api/v1/users", json!({"username": "ann", "password": "p".repeat(300), "role": "viewer"}), bad("InvalidParameter.Password")),
        post("role root", "/api/v1/users", json!({"username": "ann", "password": "long enough password", "role": "root"}), bad("InvalidParameter.Role")),
        post("user with an unknown field", "/api/v1/users", json!({"username": "ann", "password": "long enough password", "role": "viewer", "is_admin": true}), bad("InvalidParameter.Body")),
        patch("demoting the last admin", "/api/v1/users/admin", json!({"role": "viewer"}), Refused(409, "LastAdmin")),
        patch("changing a user with an unknown field", "/api/v1/users/admin", json!({"admin": false}), bad("InvalidParameter.Body")),
        patch("changing a user named with SQL", format!("/api/v1/users/{}", enc(sql)), json!({"disabled": true}), Refused(404, "NotFound")),
        Case::new("deleting oneself", Method::DELETE, "/api/v1/users/admin", Refused(409, "DeleteSelf")),
        // SQL metacharacters in every filter.
        get("instances q with SQL", format!("/api/v1/instances?q={}", enc("' OR 1=1 --")), NoMatch("instances")),
        get("instances q of a lone %", "/api/v1/instances?q=%25", NoMatch("instances")),
        get("instances q of a NUL byte", "/api/v1/instances?q=%00", NoMatch("instances")),
        get("instances q of invalid UTF-8", "/api/v1/instances?q=%FF%FE", NoMatch("instances")),
        get("instances region_id with SQL", format!("/api/v1/instances?region_id={}", enc("local' OR '1'='1")), NoMatch("instances")),
        get("instances status with SQL", format!("/api/v1/instances?status={}", enc("Running' OR '1'='1")), bad("InvalidParameter.Status")),
        get("invocations status with SQL", format!("/api/v1/invocations?status={}", enc("Success' --")), bad("InvalidParameter.Status")),
        get("invocations instance_id with SQL", format!("/api/v1/invocations?instance_id={}", enc("' OR 1=1 --")), NoMatch("invocations")),
        get("invocations command_id with SQL", format!("/api/v1/invocations?command_id={}", enc("x' UNION SELECT * FROM users --")), NoMatch("invocations")),
        get("commands q with SQL", format!("/api/v1/commands?q={}", enc("' OR ''='")), NoMatch("commands")),
        get("commands region_id with SQL", format!("/api/v1/commands?region_id={}", enc("local'; DROP TABLE commands; --")), NoMatch("commands")),
        get("audit user with SQL", format!("/api/v1/audit?user={}", enc("admin' OR '1'='1")), NoMatch("entries")),
        get("audit action with SQL", format!("/api/v1/audit?action={}", enc("RunCommand' OR 1=1 --")), NoMatch("entries")),
        get("audit since with SQL", format!("/api/v1/audit?since={}", enc("' OR 1=1")), bad("InvalidParameter.Time")),
        get("audit since of an impossible date", "/api/v1/audit?since=2026-13-45T99:99:99Z", bad("InvalidParameter.Time")),
        // Paging and query parameters.
        get("page 0", "/api/v1/invocations?page=0", bad("InvalidParameter.Page")),
        get("page_size 100,000", "/api/v1/invocations?page_size=100000", bad("InvalidParameter.Page")),
        get("page -1", "/api/v1/invocations?page=-1", bad("InvalidParameter.Query")),
        get("page with SQL", format!("/api/v1/invocations?page={}", enc("1; DROP TABLE invocations")), bad("InvalidParameter.Query")),
        get("page 2^64", "/api/v1/invocations?page=18446744073709551616", bad("InvalidParameter.Query")),
        get("page 2^64 - 1 is out of range", "/api/v1/invocations?page=18446744073709551615&page_size=1000", bad("InvalidParameter.Page")),
        get("a page far past the end is empty", "/api/v1/invocations?page=1000000&page_size=1000", EmptyPage("invocations")),
        get("unknown query parameter", "/api/v1/invocations?sort=id;DROP", bad("InvalidParameter.Query")),
        get("status given twice", "/api/v1/invocations?status=Success&status=Failed", bad("InvalidParameter.Query")),
        get("include_output=maybe", format!("/api/v1/invocations/{}?include_output=maybe", fx.invoke_id), bad("InvalidParameter.Query")),
        // Credentials.
        get("no Authorization header", "/api/v1/instances", Refused(401, "Unauthorized")).anonymous(),
        get("Authorization: Bearer with no token", "/api/v1/instances", Refused(401, "Unauthorized")).header("authorization", "Bearer"),
        get("a 64 KiB bearer token", "/api/v1/instances", Refused(401, "InvalidToken")).header("authorization", format!("Bearer {}", "a".repeat(64 * 1024))),
        get("a bearer token with SQL", "/api/v1/instances", Refused(401, "InvalidToken")).header("authorization", format!("Bearer {sql}")),
        get("Basic that is not Base64", "/api/v1/instances", Refused(401, "InvalidCredentials")).header("authorization", "Basic !!!not-base64!!!"),
        get("Basic without a colon", "/api/v1/instances", Refused(401, "InvalidCredentials")).header("authorization", basic(b"admin")),
        get("Basic of invalid UTF-8", "/api/v1/instances", Refused(401, "InvalidCredentials")).header("authorization", basic(&[0xff, 0xfe, b':', b'x'])),
        get("Basic with SQL in the username", "/api/v1/instances", Refused(401, "InvalidCredentials")).header("authorization", basic(b"admin' --:x")),
        get("Digest scheme", "/api/v1/instances", Refused(401, "Unauthorized")).header("authorization", "Digest username=\"admin\""),
        get("Authorization of non-ASCII bytes", "/api/v1/instances", Refused(401, "Unauthorized")).header("authorization", b"Bearer \xff\xfe".to_vec()),
        get("an instance credential used as an API token", "/api/v1/instances", Refused(401, "InvalidToken")).header("authorization", format!("Bearer {id}:{}", fx.instance_secret)),
        // Headers and routes.
        (0..200).fold(get("200 request headers", "/api/v1/instances", Bare(431)), |case, n| {
            case.header(&format!("x-hostile-{n}"), "v")
        }),
        get("an unknown API route", "/api/v1/secrets", Refused(404, "NotFound")),
        Case::new("DELETE on the invocations list", Method::DELETE, "/api/v1/invocations", RefusedJson(405)),
        Case::new("PUT on a command", Method::PUT, format!("/api/v1/commands/{}", fx.command_id), RefusedJson(405)),
        get("an instance id of invalid UTF-8", "/api/v1/instances/%FF%FE", RefusedJson(400)),
        get("an instance id of a NUL byte", "/api/v1/instances/%00", Refused(404, "InvalidInstance.NotFound")),
        get("an instance id like ../../etc/passwd", format!("/api/v1/instances/{}", enc("../../etc/passwd")), Refused(404, "InvalidInstance.NotFound")),
        get("output of a result named ../../etc", format!("/api/v1/invocations/{}/results/{}/output", fx.invoke_id, enc("../../etc")), Refused(404, "InvalidResult.NotFound")),
        // Enrolment.
        post("enrol with a wrong activation code", register, reg(json!({"activation_code": "wrong"})), Refused(401, "InvalidActivation.Code")).anonymous(),
        post("enrol with SQL as the activation id", register, reg(json!({"activation_id": format!("act-x{sql}")})), Refused(401, "InvalidActivation.Code")).anonymous(),
        post("enrol with SQL as the activation code", register, reg(json!({"activation_code": sql})), Refused(401, "InvalidActivation.Code")).anonymous(),
        post("enrol with a used-up activation", register, register_body(used_up, "x"), Refused(403, "InvalidActivation.LimitExceeded")).anonymous(),
        post("enrol with a hostname of 256 characters", register, reg(json!({"hostname": "h".repeat(256)})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with a NUL byte in the hostname", register, reg(json!({"hostname": "h\u{0}"})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with a name of 129 characters", register, reg(json!({"name": "n".repeat(129)})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with a newline in the name", register, reg(json!({"name": "web\nadmin"})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with an escape sequence in os_name", register, reg(json!({"os_name": "\u{1b}[31mred"})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with an agent_version of 65 characters", register, reg(json!({"agent_version": "v".repeat(65)})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with the ip address 999.1.1.1", register, reg(json!({"ip_addresses": ["999.1.1.1"]})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with a script tag as ip address", register, reg(json!({"ip_addresses": ["<script>"]})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with 65 ip addresses", register, reg(json!({"ip_addresses": ips})), bad("InvalidParameter.Register")).anonymous(),
        post("enrol with ip_addresses as a string", register, reg(json!({"ip_addresses": "10.0.0.1"})), bad("InvalidParameter.Body")).anonymous(),
        post("enrol with os_type plan9", register, reg(json!({"os_type": "plan9"})), bad("InvalidParameter.Body")).anonymous(),
        post("enrol with an unknown field", register, reg(json!({"instance_id": "i-chosen"})), bad("InvalidParameter.Body")).anonymous(),
        raw("enrol with a body of 2 MiB", register, JSON, body(reg(json!({"os_name": "o".repeat(2 * MIB)}))), Refused(413, "RequestTooLarge")).anonymous().mentions(&["1 MiB", "1048576"]),
        raw("enrol with invalid UTF-8", register, JSON, invalid_utf8, bad("InvalidParameter.Body")).anonymous(),
        raw("enrol as text/plain", register, "text/plain", body(reg(json!({}))), Refused(415, "UnsupportedMediaType")).anonymous(),
        get("agent socket without a WebSocket upgrade", "/agent/v1/connect", Bare(400)).anonymous(),
        Case::new("POST to the agent socket", Method::POST, "/agent/v1/connect", Bare(405)).anonymous(),
        get("GET on enrolment", register, Bare(405)).anonymous(),
    ]
}

#[tokio::test]
async fn hostile_run_command_and_command_bodies_are_refused_and_store_nothing() {
    let fx = Fixture::new().await;
    let cases = command_cases(&fx);
    fx.run(cases).await;
}

#[tokio::test]
async fn hostile_requests_to_other_api_routes_and_enrolment_are_refused_and_store_nothing() {
    let fx = Fixture::new().await;
    let used_up = fx.app.activation("local", 1).await;
    register(&fx.app, &register_body(&used_up, "only")).await;
    let cases = other_cases(&fx, &used_up);
    fx.run(cases).await;
}

// ---------------------------------------------------------------------------------------------
// The agent socket.

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

fn hello() -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "0.1.0".into(),
        hostname: "fake-host".into(),
        os_type: OsType::Linux,
        os_name: "Debian GNU/Linux 12".into(),
        ip_addresses: vec!["10.0.0.7".into()],
        supported_command_types: vec![CommandType::RunShellScript],
        held_tasks: Vec::new(),
    }
}

fn text_of(message: impl Into<AgentMessage>) -> String {
    message.into().encode()
}

/// Opens the agent socket with this `Authorization` value; the server's refusal as an error.
async fn agent_socket(app: &TestApp, authorization: Option<&str>) -> Result<Socket, tungstenite::Error> {
    let url = format!("{}/agent/v1/connect", app.url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    if let Some(value) = authorization {
        let value = tungstenite::http::HeaderValue::from_str(value).unwrap();
        request.headers_mut().insert("authorization", value);
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next message from the server other than a heartbeat, within 5 s.
async fn next_message(socket: &mut Socket) -> Option<ServerMessage> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => match ServerMessage::decode(&text) {
                Ok(ServerMessage::Heartbeat) => continue,
                Ok(message) => return Some(message),
                Err(_) => return None,
            },
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// Connects as an agent with `hello`: the socket once `Welcome` arrived.
async fn attach(app: &TestApp, credential: &str, hello: Hello) -> Result<Socket, String> {
    let mut socket = agent_socket(app, Some(&format!("Bearer {credential}")))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    socket
        .send(Message::text(text_of(hello)))
        .await
        .map_err(|e| format!("cannot send Hello: {e}"))?;
    match next_message(&mut socket).await {
        Some(ServerMessage::Welcome(_)) => Ok(socket),
        other => Err(format!("no Welcome after Hello but {other:?}")),
    }
}

/// A client-to-server WebSocket frame: `first` is the FIN/RSV/opcode byte.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend(key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend(payload);
    }
    out
}

fn text_frame(text: &str) -> Vec<u8> {
    frame(0x81, text.as_bytes(), true)
}

/// The agent socket over a bare TCP stream, after a hand-made upgrade.
async fn raw_socket(app: &TestApp, credential: &str) -> Result<TcpStream, String> {
    let address = app.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET /agent/v1/connect HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {credential}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte)).await;
        read.map_err(|_| "no upgrade answer".to_string())?
            .map_err(|e| e.to_string())?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!("the upgrade was refused: {}", String::from_utf8_lossy(&head)));
    }
    Ok(stream)
}

/// Reads until the server closes the connection: what it sent, or `Err` if it was still open
/// 2.5 s later. (A silent agent is dropped after three 1 s heartbeats, so a longer wait would not
/// tell a refused frame from silence; the error says when it did close, if it did within 10 s.)
async fn read_until_closed(stream: &mut TcpStream) -> Result<String, String> {
    let started = Instant::now();
    let mut received = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await {
        Ok(_) if started.elapsed() < Duration::from_millis(2500) => Ok(String::from_utf8_lossy(&received).into_owned()),
        Ok(_) => Err(format!(
            "the connection was still open 2.5 s later (closed after {:.1} s)",
            started.elapsed().as_secs_f64()
        )),
        Err(_) => Err("the connection is still open 10 s later".into()),
    }
}

/// Hostile bytes for the agent socket, and when they are sent.
enum Frames {
    /// Sent right after the upgrade, without Hello.
    First(Vec<u8>),
    /// Sent after a valid Hello.
    AfterHello(Vec<u8>),
}

#[tokio::test]
async fn the_agent_socket_refuses_bad_credentials_and_garbage_frames() {
    let fx = Fixture::new().await;
    let app = &fx.app;
    let id = fx.instance_id.as_str();
    let secret = fx.instance_secret.as_str();
    let credential = format!("{id}:{secret}");
    let baseline_invocations = fx.api("/invocations?page_size=1000").await.unwrap();
    let facts = |i: &Value| {
        json!([
            i["name"],
            i["hostname"],
            i["os_name"],
            i["os_type"],
            i["ip_addresses"],
            i["agent"]["version"]
        ])
    };
    let baseline_facts = facts(&fx.api(&format!("/instances/{id}")).await.unwrap());
    let mut failures = Vec::new();
    let mut count = 0;

    // Upgrades with bad credentials: 401 with a JSON body, before any frame.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&credential)
    );
    let long = format!("Bearer {credential}{}", "x".repeat(64 * 1024));
    let refusals: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("an instance id without a secret", Some(format!("Bearer {id}"))),
        ("a wrong secret", Some(format!("Bearer {id}:wrong"))),
        (
            "an unknown instance",
            Some(format!("Bearer i-0000000000000000:{secret}")),
        ),
        ("SQL as the instance id", Some(format!("Bearer ' OR '1'='1:{secret}"))),
        ("an empty id and secret", Some("Bearer :".into())),
        ("Basic instead of Bearer", Some(basic)),
        ("a credential with 64 KiB appended", Some(long)),
        ("the admin's API token", Some(format!("Bearer {}", fx.token))),
    ];
    for (what, authorization) in refusals {
        count += 1;
        let problem = match agent_socket(app, authorization.as_deref()).await {
            Ok(_) => Some("the upgrade was accepted".to_string()),
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let code = serde_json::from_str::<Value>(&body).ok().map(|b| b["code"].clone());
                (response.status() != 401 || code != Some(json!("InvalidInstanceCredential")))
                    .then(|| format!("answered {}: {body}", response.status()))
            }
            Err(e) => Some(format!("failed without an answer: {e}")),
        };
        if let Some(problem) = problem {
            failures.push(format!("- upgrade with {what}: {problem}"));
        }
    }

    // Garbage once connected: the connection is closed, nothing is stored, the agent can connect again.
    let mut bad_version = hello();
    bad_version.protocol_version = 999;
    let mut fragments = frame(0x01, &[b'x'; 64 * 1024], true);
    for _ in 0..30 {
        fragments.extend(frame(0x00, &[b'x'; 64 * 1024], true));
    }
    fragments.extend(frame(0x80, b"x", true));
    let huge_header = [vec![0x81, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0], vec![1, 2, 3, 4]].concat();
    let output = |data: &str| format!(r#"{{"type":"output","task":"t-x","seq":0,"stream":"stdout","data":"{data}"}}"#);
    let hostile_hello = |change: fn(&mut Hello)| {
        let mut hello = hello();
        change(&mut hello);
        Frames::First(text_frame(&text_of(hello)))
    };
    #[rustfmt::skip]
    let frames: Vec<(&str, Frames)> = vec![
        ("a heartbeat before Hello", Frames::First(text_frame(r#"{"type":"heartbeat"}"#))),
        ("a binary frame before Hello", Frames::First(frame(0x82, b"\x00\x01garbage", true))),
        ("text that is not JSON before Hello", Frames::First(text_frame("hello?"))),
        ("Hello with protocol version 999", Frames::First(text_frame(&text_of(bad_version)))),
        ("Hello without its fields", Frames::First(text_frame(r#"{"type":"hello"}"#))),
        ("Hello holding 40,000 tasks", hostile_hello(|h| h.held_tasks = (0..40_000).map(|n| format!("t-{n}")).collect())),
        ("Hello with a hostname of 300,000 characters", hostile_hello(|h| h.hostname = "h".repeat(300_000))),
        ("Hello with the ip address not-an-ip", hostile_hello(|h| h.ip_addresses = vec!["not-an-ip".into()])),
        ("Hello with an escape sequence in os_name", hostile_hello(|h| h.os_name = "\u{1b}[2J\u{0}".into())),
        ("Hello with an agent_version of 10,000 characters", hostile_hello(|h| h.agent_version = "v".repeat(10_000))),
        ("a second Hello", Frames::AfterHello(text_frame(&text_of(hello())))),
        ("text that is not JSON", Frames::AfterHello(text_frame("{"))),
        ("an unknown message type", Frames::AfterHello(text_frame(r#"{"type":"rm -rf /"}"#))),
        ("output with invalid Base64", Frames::AfterHello(text_frame(&output("%%%")))),
        ("an empty output chunk", Frames::AfterHello(text_frame(&output("")))),
        ("output with a negative seq", Frames::AfterHello(text_frame(&output("eA==").replace("\"seq\":0", "\"seq\":-1")))),
        ("a binary frame", Frames::AfterHello(frame(0x82, b"\xde\xad\xbe\xef", true))),
        ("a 2 MiB text frame (limit 1 MiB)", Frames::AfterHello(frame(0x81, &vec![b'x'; 2 * MIB], true))),
        ("a frame header announcing 2^62 bytes", Frames::AfterHello(huge_header)),
        ("a 2 MiB message in 64 KiB fragments", Frames::AfterHello(fragments)),
        ("an unmasked frame", Frames::AfterHello(frame(0x81, br#"{"type":"heartbeat"}"#, false))),
        ("reserved opcode 0x3", Frames::AfterHello(frame(0x83, b"x", true))),
        ("reserved bits set", Frames::AfterHello(frame(0xf1, br#"{"type":"heartbeat"}"#, true))),
        ("a continuation with nothing to continue", Frames::AfterHello(frame(0x80, b"x", true))),
        ("a text frame of invalid UTF-8", Frames::AfterHello(frame(0x81, &[0xc3, 0x28, 0xff], true))),
        ("a ping of 200 bytes (limit 125)", Frames::AfterHello(frame(0x89, &[b'p'; 200], true))),
        ("random bytes instead of frames", Frames::AfterHello(b"\xde\xad\xbe\xef".repeat(16))),
    ];
    for (what, frames) in frames {
        count += 1;
        let mut problems = Vec::new();
        match raw_socket(app, &credential).await {
            Err(e) => problems.push(format!("cannot connect: {e}")),
            Ok(mut stream) => {
                let bytes = match frames {
                    Frames::First(bytes) => bytes,
                    Frames::AfterHello(bytes) => [text_frame(&text_of(hello())), bytes].concat(),
                };
                // The server may close before reading everything: a failed write is fine.
                let _ = stream.write_all(&bytes).await;
                match read_until_closed(&mut stream).await {
                    Ok(received) if what.contains("version 999") && !received.contains(r#""type":"refused""#) => {
                        problems.push(format!("closed without Refused: {}", truncate(&received, 200)))
                    }
                    Ok(_) => {}
                    Err(e) => problems.push(e),
                }
            }
        }
        if !fx.offline(id).await {
            problems.push("the instance is still shown online 5 s after its connection closed".into());
        }
        match fx.api(&format!("/instances/{id}")).await {
            Ok(instance) if facts(&instance) == baseline_facts => {}
            Ok(instance) => problems.push(format!(
                "the instance's facts changed to {}",
                truncate(&facts(&instance).to_string(), 300)
            )),
            Err(e) => problems.push(e),
        }
        if let Err(e) = fx.healthz().await {
            problems.push(format!("the server is not healthy afterwards: {e}"));
        }
        match fx.api("/invocations?page_size=1000").await {
            Ok(after) if after == baseline_invocations => {}
            Ok(after) => problems.push(format!("invocations changed: {}", truncate(&after.to_string(), 300))),
            Err(e) => problems.push(format!("the server is not healthy afterwards: {e}")),
        }
        match attach(app, &credential, hello()).await {
            Ok(mut socket) => {
                let _ = socket.close(None).await;
            }
            Err(e) => problems.push(format!("the agent cannot connect again: {e}")),
        }
        if !problems.is_empty() {
            failures.push(format!("- {what}: {}", problems.join("; ")));
        }
    }

    // A report about a task that is not the instance's: acknowledged as finished so the agent
    // forgets it, the connection stays, and nothing is stored.
    count += 1;
    let mut socket = attach(app, &credential, hello()).await.unwrap();
    let report = TaskStarted {
        task: fx.invoke_id.replace("t-", "t-0"),
    };
    socket.send(Message::text(text_of(report))).await.unwrap();
    // The fixture's pending task is delivered first.
    let answer = loop {
        match next_message(&mut socket).await {
            Some(ServerMessage::RunTask(_)) => continue,
            other => break other,
        }
    };
    if !matches!(&answer, Some(ServerMessage::Ack(ack)) if ack.finished) {
        failures.push(format!(
            "- a report about another task: answered {answer:?} instead of a finishing Ack"
        ));
    }
    let after = fx.api("/invocations?page_size=1000").await.unwrap();
    if after != baseline_invocations {
        failures.push("- a report about another task: invocations changed".into());
    }
    assert!(
        failures.is_empty(),
        "{} of {count} hostile agent-socket cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The console.

/// A logged-in console client: the session cookie and the page's CSRF token.
struct Console {
    http: reqwest::Client,
    url: String,
    cookie: String,
    csrf: String,
}

impl Console {
    async fn login(app: &TestApp) -> Console {
        let http = reqwest::Client::builder()
            .redirect(Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let (_, cookie, csrf) = crate::helpers::console_session(&http, &app.url, "admin", PASSWORD).await;
        Console {
            http,
            url: app.url.clone(),
            cookie,
            csrf,
        }
    }

    async fn answer(request: reqwest::RequestBuilder) -> Result<(u16, String), String> {
        let response = request.send().await.map_err(|e| format!("no answer ({e:?})"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| format!("the answer broke off ({e})"))?;
        Ok((status, text))
    }

    async fn get(&self, path: &str) -> Result<(u16, String), String> {
        Console::answer(
            self.http
                .get(format!("{}{path}", self.url))
                .header(COOKIE, &self.cookie),
        )
        .await
    }

    /// A state-changing htmx request with the session and its CSRF token.
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.url))
            .header(COOKIE, &self.cookie)
            .header("hx-request", "true")
            .header("x-csrf-token", &self.csrf)
    }
}

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

/// A form body from its fields.
fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
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
        let request = if case.login {
            console.http.post(format!("{}{}", console.url, case.path))
        } else {
            console.post(&case.path)
        };
        let request = request
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(case.body.clone());
        let mut problems = Vec::new();
        match Console::answer(request).await {
            Ok((status, html)) => {
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
        match fx.snapshot().await {
            Ok(after) if after == baseline => {}
            Ok(after) => {
                problems.push(format!("something was stored: {}", diff(&baseline, &after)));
                baseline = after;
            }
            Err(e) => problems.push(format!("the server is not healthy afterwards: {e}")),
        }
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
            Ok((200, html)) if html.contains(absent) => problems.push(format!("the page lists {absent}")),
            Ok((200, _)) => {}
            Ok((status, html)) => problems.push(format!("answered {status} instead of 200: {}", truncate(&html, 300))),
            Err(e) => problems.push(e),
        }
        match fx.snapshot().await {
            Ok(after) if after == baseline => {}
            Ok(after) => {
                problems.push(format!("something was stored: {}", diff(&baseline, &after)));
                baseline = after;
            }
            Err(e) => problems.push(format!("the server is not healthy afterwards: {e}")),
        }
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
    let command: Value = app
        .client
        .raw(Method::POST, "/commands", Some(&command))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let command_id = command["command_id"].as_str().unwrap().to_string();
    let activation =
        json!({"region_id": "local", "instance_count_limit": 1, "description": tag("activation_description")});
    let created = app
        .client
        .raw(Method::POST, "/activations", Some(&activation))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created = app
        .client
        .raw(Method::POST, "/tokens", Some(&json!({"name": tag("token_name")})))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

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
            Ok((200, html)) => pages.push((path, html, fields)),
            Ok((status, html)) => failures.push(format!("- GET {path} answered {status}: {}", truncate(&html, 300))),
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

// ---------------------------------------------------------------------------------------------
// The HTTP layer.

/// Sends `request` on a fresh connection and reads the answer until the server closes it.
async fn raw_http(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    // The server may answer and close before reading everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn oversize_headers_and_slow_clients_are_cut_off() {
    let app = TestApp::spawn().await;
    let address = app.url.trim_start_matches("http://").to_string();

    let mut many = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_string();
    for n in 0..200 {
        many.push_str(&format!("X-Hostile-{n}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_http(&address, many.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "200 headers: {}",
        truncate(&answer, 200)
    );

    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let answer = raw_http(&address, big.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a 512 KiB header: {}",
        truncate(&answer, 200)
    );

    let nul = raw_http(
        &address,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        nul.starts_with("HTTP/1.1 400"),
        "a NUL byte in a header: {}",
        truncate(&nul, 200)
    );

    // Slow loris: a client trickling its headers is cut off after the header deadline (10 s).
    let started = Instant::now();
    let stream = TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut received = Vec::new();
    let cut = {
        let read = reader.read_to_end(&mut received);
        tokio::pin!(read);
        let mut n = 0;
        loop {
            tokio::select! {
                _ = &mut read => break started.elapsed(),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    n += 1;
                    assert!(started.elapsed() < Duration::from_secs(20), "a slow client is still connected after 20 s");
                    if writer.write_all(format!("X-Slow-{n}: a\r\n").as_bytes()).await.is_err() {
                        break started.elapsed();
                    }
                }
            }
        }
    };
    assert!(
        cut < Duration::from_secs(15),
        "the slow client was cut off only after {cut:?}"
    );
    let received = String::from_utf8_lossy(&received);
    assert!(
        !received.starts_with("HTTP/1.1 200"),
        "the slow client got an answer: {received}"
    );

    let health = reqwest::get(format!("{}/healthz", app.url)).await.unwrap();
    assert_eq!(health.status(), 200, "healthy after oversize headers and a slow client");
    assert!(app.client.instances("").await.is_ok(), "a normal request still works");
}
