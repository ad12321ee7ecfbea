//! `GET /metrics` (issue 16): off by default, behind a token when one is given, accepted by
//! Prometheus's own parser (`promtool`), and moving when a real agent runs a command.

use crate::helpers::{Backend, TestApp, eventually};
use fleetrun::protocol::api::RunCommandRequest;
use reqwest::StatusCode;
use std::time::Duration;

const TOKEN: &str = "metrics-0123456789abcdef0123456789";

/// A server whose `/metrics` asks for [`TOKEN`], read from a file as an operator would give it.
async fn metered() -> (TestApp, tempfile::TempDir) {
    let (file, dir) = token_file();
    let app = TestApp::spawn_with(&["--metrics-token-file", file.to_str().unwrap()]).await;
    (app, dir)
}

/// A file holding [`TOKEN`], in a directory that lives as long as it is needed.
fn token_file() -> (std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    (file, dir)
}

async fn get(app: &TestApp, authorization: Option<&str>) -> (StatusCode, String, String) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", app.url));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// Prometheus's own parser and linter: `promtool check metrics` exits 1 on a text it cannot
/// parse and 3 on one it would warn about (a counter without `_total`, a histogram without its
/// `+Inf` bucket, …). `.ci/run` installs it.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install it as .ci/run does (Debian's `prometheus` package has it)")
        });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One sample line: its name, labels and value.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A scrape: the text, which promtool accepted, and its samples.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

/// Reads a sample line that promtool accepted: `name{key="value",…} number`, with label values
/// escaped as the format says (`\\`, `\"`, `\n`).
fn sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap();
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        while let Some(after_key) = rest.find("=\"") {
            let key = rest[..after_key].to_string();
            let mut value = String::new();
            let mut chars = rest[after_key + 2..].char_indices();
            let end = loop {
                match chars.next().unwrap() {
                    (_, '\\') => value.push(match chars.next().unwrap().1 {
                        'n' => '\n',
                        other => other,
                    }),
                    (i, '"') => break after_key + 2 + i + 1,
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &rest[end..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
        }
    }
    let value = match rest.split_whitespace().next().unwrap() {
        "+Inf" => f64::INFINITY,
        number => number.parse().unwrap_or_else(|e| panic!("{e} in {line:?}")),
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// Scrapes with the token; the answer must pass `promtool check metrics`.
async fn scrape(app: &TestApp) -> Scrape {
    let (status, content_type, text) = get(app, Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    promtool_check(&text);
    let samples = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(sample)
        .collect();
    Scrape { text, samples }
}

/// The value of the sample named `name` with (at least) `labels`; 0 when absent.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(l, w)| l == k && w == v))
        })
        .map_or(0.0, |s| s.value)
}

#[test]
fn sample_lines_are_read_with_their_escapes() {
    let line = r#"fleetrun_x_bucket{route="/a/{id}",note="say \"hi\"\\\n",le="+Inf"} 3"#;

    let read = sample(line);

    assert_eq!(read.name, "fleetrun_x_bucket");
    let labels: Vec<(&str, &str)> = read.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        labels,
        [("route", "/a/{id}"), ("note", "say \"hi\"\\\n"), ("le", "+Inf")]
    );
    assert_eq!(read.value, 3.0);
    assert_eq!(sample("up 1").value, 1.0);
}

#[tokio::test]
async fn metrics_are_off_by_default_and_the_route_does_not_exist() {
    let app = TestApp::spawn().await;

    let (status, _, body) = get(&app, None).await;

    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!body.contains("fleetrun_"), "{body}");
}

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401_and_no_metric() {
    let (app, _dir) = metered().await;

    let answers = [
        get(&app, None).await,
        get(&app, Some("Bearer metrics-0123456789abcdef012345678")).await,
        get(&app, Some(&format!("Basic {TOKEN}"))).await,
        get(&app, Some(TOKEN)).await,
    ];

    for (status, _, body) in answers {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(!body.contains("fleetrun_"), "{body}");
        assert!(body.contains("Authorization: Bearer"), "says what to send: {body}");
    }
}

#[tokio::test]
async fn metrics_parse_and_their_counters_move_when_a_command_runs() {
    let (app, _dir) = metered().await;
    let agent = app.agent("local").await;
    let id = agent.instance_id().await;
    // The agent is online in the store once attached; wait for the gauge too.
    let before = eventually(Duration::from_secs(10), "one agent connected", || async {
        let scrape = scrape(&app).await;
        (value(&scrape, "fleetrun_agents_connected", &[]) == 1.0).then_some(scrape)
    })
    .await;
    let success = [("status", "Success")];
    let run_route = [("route", "/api/v1/invocations"), ("method", "POST")];
    let scrape_route = [("route", "/metrics"), ("method", "GET")];
    let requests = "fleetrun_http_request_duration_seconds_count";

    let inv = app
        .run_to_end(&RunCommandRequest::shell(vec![id.clone()], "echo metered"))
        .await;
    assert_eq!(inv.results.unwrap()[0].output, "metered\n");
    // The result's end is counted when its change is published, just after the commit that
    // the API read: wait for it rather than race it.
    let after = eventually(Duration::from_secs(10), "the Success to be counted", || async {
        let scrape = scrape(&app).await;
        let ended = value(&scrape, "fleetrun_results_ended_total", &success);
        (ended > value(&before, "fleetrun_results_ended_total", &success)).then_some(scrape)
    })
    .await;

    let counted = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    assert_eq!(counted("fleetrun_results_ended_total", &success), 1.0);
    assert_eq!(counted("fleetrun_results_ended_total", &[("status", "Failed")]), 0.0);
    assert_eq!(counted("fleetrun_results_started_total", &[]), 1.0);
    assert_eq!(
        counted("fleetrun_invocations_started_total", &[("trigger", "run")]),
        1.0
    );
    assert!(counted("fleetrun_agent_output_bytes_total", &[]) >= "metered\n".len() as f64);
    assert_eq!(value(&before, requests, &run_route), 0.0);
    assert_eq!(value(&after, requests, &run_route), 1.0);
    assert!(counted(requests, &scrape_route) >= 1.0);
    assert!(counted("fleetrun_writer_batch_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(value(&after, "fleetrun_agents_connected", &[]), 1.0);
    assert_eq!(
        value(&after, "fleetrun_replicas_alive", &[]),
        1.0,
        "SQLite: this server alone"
    );
    assert!(after.text.contains("# HELP fleetrun_results_ended_total "));
    // Routes are patterns, never raw paths: the invocation read by its id is counted under
    // `{invoke_id}`, and its id is in no label.
    assert!(value(&after, requests, &[("route", "/api/v1/invocations/{invoke_id}")]) >= 1.0);
    assert!(!after.text.contains(&inv.invoke_id), "a raw path became a label");
}

#[tokio::test]
async fn replicas_alive_counts_the_servers_sharing_a_postgresql_database() {
    let (file, _dir) = token_file();
    let flags = ["--metrics-token-file", file.to_str().unwrap()];
    let first = TestApp::spawn_on(Backend::Postgres, &flags).await;
    let second = first.replica(&flags).await;
    let alive = |want: f64| {
        let first = &first;
        move || async move {
            let scrape = scrape(first).await;
            (value(&scrape, "fleetrun_replicas_alive", &[]) == want).then_some(())
        }
    };

    // Each replica counts at its start and at every heartbeat (2 s).
    eventually(Duration::from_secs(10), "the first server to count two", alive(2.0)).await;
    let second_counts = scrape(&second).await;
    drop(second);
    eventually(
        Duration::from_secs(10),
        "the first server to count one again",
        alive(1.0),
    )
    .await;

    assert_eq!(value(&second_counts, "fleetrun_replicas_alive", &[]), 2.0);
}
