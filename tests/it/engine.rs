//! The engine's acceptance list: enrolment, statuses, output, timeout, stop, input.

use crate::helpers::{Backend, TestApp, eventually, live_processes, unique_seconds};
use fleetrun::protocol::api::{InstanceStatus, RunCommandRequest};
use fleetrun::protocol::{ErrorCode, InvocationStatus, ResultStatus};
use std::collections::BTreeMap;
use std::time::Duration;

/// Each test runs twice: on SQLite and on PostgreSQL (a module per test, `sqlite` and
/// `postgres` in it), with `app` a server on that backend.
macro_rules! on_both_backends {
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        $(mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let $app = TestApp::spawn_on(Backend::Sqlite, &[]).await;
                $body
            }

            #[tokio::test]
            async fn postgres() {
                let $app = TestApp::spawn_on(Backend::Postgres, &[]).await;
                $body
            }
        })*
    };
}

on_both_backends! {
async fn two_agents_enrol_and_are_running_within_seconds(app) {

    // `agent()` waits (with a deadline) until each agent is online and Running.
    let a = app.agent("cn-hangzhou").await;
    let b = app.agent("cn-hangzhou").await;

    let list = app.client.instances("region_id=cn-hangzhou").await.unwrap();
    assert_eq!(list.total, 2);
    assert!(
        list.instances
            .iter()
            .all(|i| i.status == InstanceStatus::Running && i.agent.online)
    );
    let ids: Vec<String> = list.instances.iter().map(|i| i.instance_id.clone()).collect();
    assert!(ids.contains(&a.instance_id().await) && ids.contains(&b.instance_id().await));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&a.state.path().join("identity.json")),
        0o600,
        "the credential is private"
    );
    assert_eq!(mode(a.state.path()), 0o700, "the state directory is private");
}
}

on_both_backends! {
async fn exit_codes_decide_failed_success_and_partial_failed(app) {
    let (a, b) = (app.agent("local").await, app.agent("local").await);
    let ids = vec![a.instance_id().await, b.instance_id().await];

    let failed = app
        .run_to_end(&RunCommandRequest::shell(
            ids.clone(),
            "echo hello; echo oops >&2; exit 3",
        ))
        .await;
    let success = app.run_to_end(&RunCommandRequest::shell(ids.clone(), "exit 0")).await;
    let mut mixed = RunCommandRequest::shell(ids.clone(), format!("[ {{{{fleetrun::instance_id}}}} = {} ]", ids[0]));
    mixed.spec.enable_parameter = true;
    let mixed = app.run_to_end(&mixed).await;

    assert_eq!(failed.invocation_status, InvocationStatus::Failed);
    for result in failed.results.unwrap() {
        assert_eq!(result.invocation_status, ResultStatus::Failed);
        assert_eq!(result.exit_code, Some(3));
        assert_eq!(result.error_code, Some(ErrorCode::ExitCodeNonzero));
        assert!(
            result.output.contains("hello\n") && result.output.contains("oops\n"),
            "{:?}",
            result.output
        );
        assert!(result.start_time.is_some() && result.finish_time.is_some());
    }
    assert_eq!(success.invocation_status, InvocationStatus::Success);
    assert_eq!(mixed.invocation_status, InvocationStatus::PartialFailed);
    assert_eq!(mixed.status_counts.get(&ResultStatus::Success), Some(&1));
    assert_eq!(mixed.status_counts.get(&ResultStatus::Failed), Some(&1));
}
}

on_both_backends! {
async fn five_mib_of_output_keeps_exactly_the_first_and_last_512_kib_byte_for_byte(app) {
    let agent = app.agent("local").await;
    let id = agent.instance_id().await;
    // Every byte value, so most of it is not valid UTF-8.
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = app.data.path().join("five-mib.bin");
    std::fs::write(&file, &data).unwrap();

    let inv = app
        .run_to_end(&RunCommandRequest::shell(
            vec![id.clone()],
            format!("cat {}", file.display()),
        ))
        .await;
    let raw = app.client.output(&inv.invoke_id, &id).await.unwrap();

    let result = &inv.results.unwrap()[0];
    assert_eq!(result.invocation_status, ResultStatus::Success);
    let kept = [&data[..512 * 1024], &data[data.len() - 512 * 1024..]].concat();
    assert_eq!(raw.len(), kept.len());
    assert!(raw == kept, "kept bytes differ from the first and last 512 KiB");
    assert_eq!(result.dropped, (data.len() - kept.len()) as u64);
}
}

on_both_backends! {
async fn a_command_past_its_timeout_is_killed_with_its_whole_tree(app) {
    let agent = app.agent("local").await;
    let (a, b) = (unique_seconds(60), unique_seconds(60));
    let mut req = RunCommandRequest::shell(vec![agent.instance_id().await], format!("sleep {a} & sleep {b}"));
    req.spec.timeout_secs = 2;

    let inv = app.run_to_end(&req).await;

    let result = &inv.results.unwrap()[0];
    assert_eq!(result.invocation_status, ResultStatus::Timeout);
    assert_eq!(result.error_code, Some(ErrorCode::ExecutionTimeout));
    assert!(
        live_processes(&a).is_empty() && live_processes(&b).is_empty(),
        "a process of the command survived"
    );
}
}

on_both_backends! {
async fn stop_terminates_a_running_tree_and_cancels_what_has_not_started(app) {
    let mut agent = app.agent("local").await;
    let id = agent.instance_id().await;
    let (first, second) = (unique_seconds(1000), unique_seconds(1000));
    let script = format!("sh -c 'sleep {first} & sleep {second}'");
    let created = app
        .client
        .run(&RunCommandRequest::shell(vec![id.clone()], script))
        .await
        .unwrap();
    app.wait_result(&created.invoke_id, &id, "Running").await;
    let both_running =
        || async { (!live_processes(&first).is_empty() && !live_processes(&second).is_empty()).then_some(()) };
    eventually(Duration::from_secs(5), "both sleeps to start", both_running).await;

    app.client.stop(&created.invoke_id, None).await.unwrap();
    let stopped = app.wait_done(&created.invoke_id, Duration::from_secs(15)).await;

    assert_eq!(stopped.results.unwrap()[0].invocation_status, ResultStatus::Terminated);
    assert_eq!(stopped.invocation_status, InvocationStatus::Stopped);
    assert!(
        live_processes(&first).is_empty() && live_processes(&second).is_empty(),
        "a sleep survived the stop"
    );

    agent.kill9().await;
    let pending = app
        .client
        .run(&RunCommandRequest::shell(vec![id.clone()], "echo never"))
        .await
        .unwrap();
    app.client.stop(&pending.invoke_id, None).await.unwrap();
    let cancelled = app.wait_done(&pending.invoke_id, Duration::from_secs(5)).await;
    assert_eq!(cancelled.results.unwrap()[0].invocation_status, ResultStatus::Cancelled);
}
}

on_both_backends! {
async fn a_command_reading_stdin_gets_end_of_file_at_once(app) {
    let agent = app.agent("local").await;
    // Were stdin left open, `read` would block until this timeout ended the command.
    let mut req = RunCommandRequest::shell(vec![agent.instance_id().await], "read x; echo \"got[$x]\"");
    req.spec.timeout_secs = 30;

    let inv = app.run_to_end(&req).await;

    let result = &inv.results.unwrap()[0];
    assert_eq!(result.invocation_status, ResultStatus::Success);
    assert_eq!(result.output, "got[]\n");
}
}

on_both_backends! {
async fn working_dir_username_and_parameters_reach_the_process(app) {
    let agent = app.agent("local").await;
    let id = agent.instance_id().await;
    let mut req = RunCommandRequest::shell(vec![id.clone()], "pwd; echo {{greeting}} {{ fleetrun::instance_id }}");
    req.spec.working_dir = Some("/tmp".into());
    req.spec.enable_parameter = true;
    req.parameters = BTreeMap::from([("greeting".to_string(), "hi there".to_string())]);
    let mut missing_dir = RunCommandRequest::shell(vec![id.clone()], "true");
    missing_dir.spec.working_dir = Some("/no/such/dir".into());
    let mut missing_user = RunCommandRequest::shell(vec![id.clone()], "true");
    missing_user.spec.username = Some("no-such-user-42".into());

    let ok = app.run_to_end(&req).await;
    let bad_dir = app.run_to_end(&missing_dir).await;
    let bad_user = app.run_to_end(&missing_user).await;

    assert_eq!(ok.results.unwrap()[0].output, format!("/tmp\nhi there {id}\n"));
    let dir_result = &bad_dir.results.unwrap()[0];
    assert_eq!(
        (dir_result.invocation_status, dir_result.error_code),
        (ResultStatus::Error, Some(ErrorCode::DirectoryNotExists))
    );
    let user_result = &bad_user.results.unwrap()[0];
    assert_eq!(
        (user_result.invocation_status, user_result.error_code),
        (ResultStatus::Error, Some(ErrorCode::AccountNotExists))
    );
}
}

on_both_backends! {
async fn a_retained_command_is_listed_and_runs_again_by_id(app) {
    let agent = app.agent("cn-hangzhou").await;
    let id = agent.instance_id().await;
    let mut req = RunCommandRequest::shell(vec![id.clone()], "echo {{word}}");
    req.keep_command = true;
    req.name = Some("say".into());
    req.spec.enable_parameter = true;
    req.parameters = BTreeMap::from([("word".to_string(), "first".to_string())]);

    let first = app.run_to_end(&req).await;
    let command_id = first.command_id.clone().expect("a retained command id");
    let body = serde_json::json!({"instance_ids": [id], "parameters": {"word": "second"}});
    let response = app
        .client
        .raw(
            reqwest::Method::POST,
            &format!("/commands/{command_id}/invoke"),
            Some(&body),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let invoke_id = response.json::<serde_json::Value>().await.unwrap()["invoke_id"]
        .as_str()
        .unwrap()
        .to_string();
    let second = app.wait_done(&invoke_id, Duration::from_secs(30)).await;
    let listed: serde_json::Value = app
        .client
        .raw(reqwest::Method::GET, "/commands?region_id=cn-hangzhou", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(first.results.unwrap()[0].output, "first\n");
    assert_eq!(second.results.unwrap()[0].output, "second\n");
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["commands"][0]["name"], "say");
    assert_eq!(listed["commands"][0]["invoke_times"], 2);
    assert_eq!(listed["commands"][0]["parameter_names"], serde_json::json!(["word"]));
}
}
