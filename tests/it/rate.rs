//! Rate control (issue 14) with real agents: `max_concurrency` holds instances beyond it until
//! others end, `max_errors` cancels the ones not started once failures pass it, on one server,
//! across replicas on PostgreSQL, from the CLI and from the console's dialog.

use crate::browser::Browser;
use crate::helpers::{Backend, Console, PASSWORD, TestApp, eventually};
use fleetrun::protocol::api::{Invocation, RunCommandRequest};
use fleetrun::protocol::{ErrorCode, InvocationStatus, RateLimit, ResultStatus};
use std::time::Duration;

/// Milliseconds since the epoch of an API time.
fn ms(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time).unwrap().timestamp_millis()
}

/// The most results running at one moment, from their start and finish times (a finish and a
/// start in the same millisecond do not overlap: the release follows the finish's commit).
fn peak_running(invocation: &Invocation) -> usize {
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for result in invocation.results.iter().flatten() {
        if let (Some(start), Some(finish)) = (&result.start_time, &result.finish_time) {
            edges.push((ms(start), 1));
            edges.push((ms(finish), -1));
        }
    }
    edges.sort_unstable();
    let (mut running, mut peak) = (0i32, 0i32);
    for (_, step) in edges {
        running += step;
        peak = peak.max(running);
    }
    peak as usize
}

#[tokio::test]
async fn twenty_instances_with_max_concurrency_five_never_run_more_than_five_at_once() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "rate", 20).await;
    let ids: Vec<String> = fleet.iter().map(|(_, id)| id.clone()).collect();
    let mut req = RunCommandRequest::shell(ids, "sleep 2");
    req.max_concurrency = Some(5.into());

    let created = app.client.run(&req).await.unwrap();
    let early = app.client.invocation(&created.invoke_id).await.unwrap();
    let done = app.wait_done(&created.invoke_id, Duration::from_secs(60)).await;

    assert_eq!(early.max_concurrency, Some(RateLimit::Count(5)));
    assert_eq!(early.held_count, 15, "15 wait their turn at first");
    assert_eq!(done.invocation_status, InvocationStatus::Success);
    assert_eq!(done.held_count, 0);
    let peak = peak_running(&done);
    assert!(peak <= 5, "at most 5 ran at once, but {peak} did");
    assert_eq!(peak, 5, "5 ran at once (each sleeps two seconds)");
}

#[tokio::test]
async fn max_errors_two_with_four_failing_stops_after_the_third_failure_and_cancels_the_rest() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "err", 20).await;
    let ids: Vec<String> = fleet.iter().map(|(_, id)| id.clone()).collect();
    // Exactly four fail, by name; one at a time, in the order given (err-01 first).
    let failing = ["err-03", "err-07", "err-12", "err-16"];
    let script = format!(
        "case {{{{fleetrun::instance_name}}}} in {}) exit 1;; esac",
        failing.join("|")
    );
    let mut req = RunCommandRequest::shell(ids.clone(), script);
    req.spec.enable_parameter = true;
    req.max_concurrency = Some(1.into());
    req.max_errors = Some(2.into());

    let done = app.run_to_end(&req).await;

    let results = done.results.clone().unwrap();
    let by_name = |n: usize| results.iter().find(|r| r.instance_id == ids[n - 1]).unwrap();
    let failed: Vec<usize> = (1..=20)
        .filter(|n| by_name(*n).invocation_status == ResultStatus::Failed)
        .collect();
    let cancelled: Vec<usize> = (1..=20)
        .filter(|n| by_name(*n).invocation_status == ResultStatus::Cancelled)
        .collect();
    assert_eq!(failed, vec![3, 7, 12], "the third failure is the last that ran");
    assert_eq!(cancelled, (13..=20).collect::<Vec<_>>(), "err-16 among them, never run");
    for n in &cancelled {
        let result = by_name(*n);
        assert_eq!(result.error_code, Some(ErrorCode::ExceedMaxErrors));
        assert_eq!(
            result.error_info.as_deref(),
            Some("Not started: 3 instances failed and max_errors is 2.")
        );
        assert_eq!(result.start_time, None, "never started");
    }
    let third_failure = ms(by_name(12).finish_time.as_deref().unwrap());
    assert!(
        results
            .iter()
            .filter_map(|r| r.start_time.as_deref())
            .all(|start| ms(start) <= third_failure),
        "nothing started after the third failure"
    );
    assert_eq!(peak_running(&done), 1);
    assert_eq!(done.invocation_status, InvocationStatus::PartialFailed);
}

#[tokio::test]
async fn held_results_are_released_across_replicas_on_postgresql_two_at_a_time() {
    let a = TestApp::spawn_on(Backend::Postgres, &[]).await;
    let b = a.replica(&[]).await;
    let mut agents = Vec::new();
    for replica in [&a, &b, &a, &b, &a, &b] {
        agents.push(replica.agent("local").await);
    }
    let mut ids = Vec::new();
    for agent in &agents {
        ids.push(agent.instance_id().await);
    }
    let mut req = RunCommandRequest::shell(ids, "sleep 0.5");
    req.max_concurrency = Some("34%".into());

    // Sent through B: results end on both replicas, and each releases into slots the other's
    // agents take.
    let created = b.client.run(&req).await.unwrap();
    let done = a.wait_done(&created.invoke_id, Duration::from_secs(60)).await;

    assert_eq!(done.max_concurrency, Some(RateLimit::Percent(34)));
    assert_eq!(done.invocation_status, InvocationStatus::Success, "{done:?}");
    let peak = peak_running(&done);
    assert!(peak <= 3, "34% of 6 is 3 at once (rounded up), but {peak} ran at once");
    assert!(peak >= 2, "they ran side by side: {peak}");
}

#[tokio::test]
async fn the_cli_takes_max_concurrency_and_max_errors_and_refuses_a_bad_one_naming_it() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "cli", 2).await;
    let ids = format!("{},{}", fleet[0].1, fleet[1].1);
    // The server runs in this test's runtime: the CLI is awaited, never waited for blocking.
    let cli = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetrun"));
        command
            .args(["run", "--server", &app.url, "--password", PASSWORD, "-i", &ids])
            .args(extra)
            .env_remove("FLEETRUN_TOKEN")
            .env_remove("FLEETRUN_USER")
            .env("FLEETRUN_LOG", "warn")
            .kill_on_drop(true);
        async move { command.output().await.unwrap() }
    };

    let ran = cli(&["--max-concurrency", "50%", "--max-errors", "0", "--json", "exit 3"]).await;
    let refused = cli(&["--max-concurrency", "0", "true"]).await;

    let invocation: Invocation = serde_json::from_slice(&ran.stdout).unwrap();
    assert_eq!(invocation.max_concurrency, Some(RateLimit::Percent(50)));
    assert_eq!(invocation.max_errors, Some(RateLimit::Count(0)));
    let statuses: Vec<ResultStatus> = invocation
        .results
        .unwrap()
        .iter()
        .map(|r| r.invocation_status)
        .collect();
    assert!(
        statuses.contains(&ResultStatus::Failed) && statuses.contains(&ResultStatus::Cancelled),
        "one failed, the other was not started: {statuses:?}"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        stderr.contains("InvalidParameter.MaxConcurrency") && stderr.contains("max_concurrency"),
        "{stderr}"
    );
}

#[tokio::test]
async fn max_concurrency_set_in_the_dialogs_advanced_section_is_honoured_and_shown() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "web", 3).await;
    let browser = Browser::signed_in(&app).await;

    browser.send_command_to_selection(&fleet).await;
    browser.type_into("#content-linux", "sleep 1").await;
    browser.click("details.advanced summary").await;
    browser.type_into("#max-concurrency", "1").await;
    browser.click("#run-button").await;
    let invoke_id = browser.panel_invoke_id().await;
    let waiting = browser
        .wait_text(&format!("#held-{invoke_id}"), "waiting their turn")
        .await;
    let rate = browser
        .wait_text(&format!("#rate-{invoke_id}"), "Max Concurrency 1")
        .await;
    browser.wait_text(&format!("#overall-{invoke_id}"), "Success").await;
    let record = eventually(Duration::from_secs(10), "the record page", || async {
        let page = app
            .client
            .raw(reqwest::Method::GET, &format!("/invocations/{invoke_id}"), None)
            .await
            .ok()?;
        page.json::<Invocation>().await.ok()
    })
    .await;

    assert!(waiting.contains('2') || waiting.contains('1'), "{waiting}");
    assert!(rate.contains("Max Concurrency 1"), "{rate}");
    assert_eq!(record.max_concurrency, Some(RateLimit::Count(1)));
    assert_eq!(peak_running(&record), 1, "one at a time");
    browser.close().await;
}

#[tokio::test]
async fn the_records_show_the_rate_control_and_how_many_wait_their_turn() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "rec", 3).await;
    let ids: Vec<String> = fleet.iter().map(|(_, id)| id.clone()).collect();
    // Long enough for the pages to be read while the first runs; the test stops it after.
    let mut req = RunCommandRequest::shell(ids, "sleep 30");
    req.max_concurrency = Some("1".into());
    req.max_errors = Some("50%".into());
    let created = app.client.run(&req).await.unwrap();
    app.wait_result(&created.invoke_id, &fleet[0].1, "Running").await;
    let console = Console::login(&app).await;

    let records = console.get("/console/invocations").await.unwrap();
    let record = console
        .get(&format!("/console/invocations/{}", created.invoke_id))
        .await
        .unwrap();
    app.client.stop(&created.invoke_id, None).await.unwrap();
    let stopped = app.wait_done(&created.invoke_id, Duration::from_secs(30)).await;

    assert!(
        records.text.contains("Pending 2 (2 waiting their turn)"),
        "{}",
        records.text
    );
    assert!(
        records.text.contains("Max Concurrency 1 · Max Errors 50%"),
        "{}",
        records.text
    );
    assert!(record.text.contains("(2 waiting their turn)"), "{}", record.text);
    assert!(record.text.contains("Rate Control"), "{}", record.text);
    assert!(
        record.text.contains("(the rest cancelled once more than 2 fail)"),
        "{}",
        record.text
    );
    assert_eq!(stopped.held_count, 0, "Stop cancels the waiting ones too");
    assert_eq!(stopped.status_counts.get(&ResultStatus::Cancelled), Some(&2));
}

#[tokio::test]
async fn invoke_command_takes_rate_control_as_a_number_or_a_string() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("local", "inv", 2).await;
    let command = app
        .create(
            "/commands",
            &serde_json::json!({"region_id": "local", "name": "fail", "type": "RunShellScript",
                "command_content": "ZXhpdCAx", "content_encoding": "Base64"}),
        )
        .await;
    let command_id = command["command_id"].as_str().unwrap();
    let body = serde_json::json!({
        "instance_ids": [fleet[0].1, fleet[1].1], "max_concurrency": 1, "max_errors": "0%"
    });

    let created = app.create(&format!("/commands/{command_id}/invoke"), &body).await;
    let invoke_id = created["invoke_id"].as_str().unwrap();
    let done = app.wait_done(invoke_id, Duration::from_secs(30)).await;

    assert_eq!(done.max_concurrency, Some(RateLimit::Count(1)));
    assert_eq!(done.max_errors, Some(RateLimit::Percent(0)));
    let statuses: Vec<ResultStatus> = done.results.unwrap().iter().map(|r| r.invocation_status).collect();
    assert!(
        statuses.contains(&ResultStatus::Failed) && statuses.contains(&ResultStatus::Cancelled),
        "the first failed and the second was not started: {statuses:?}"
    );
}
