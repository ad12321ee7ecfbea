//! The `fleetrun` CLI as people and scripts use it: the real binary against a real server and
//! real agents, its stdout and stderr checked apart.

use crate::helpers::{AgentProcess, PASSWORD, TestApp, agent_command, eventually, unique_seconds};
use fleetrun::protocol::ResultStatus;
use fleetrun::protocol::api::{Invocation, InvocationsResponse, RunCommandRequest};
use std::time::Duration;
use tokio::process::Command;

/// What one run of the binary printed, and how it exited.
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `fleetrun <subcommand>` against the app with the admin's password, to its end.
async fn fleetrun(app: &TestApp, subcommand: &str, args: &[&str]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_fleetrun"))
        .arg(subcommand)
        .args(["--server", &app.url, "--password", PASSWORD])
        .args(args)
        // A token in the environment would win over --password.
        .env_remove("FLEETRUN_TOKEN")
        .env_remove("FLEETRUN_USER")
        .env("FLEETRUN_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("fleetrun ends within 60 s")
        .expect("fleetrun starts");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Enrols and starts an agent with a name of its own, and waits until it is online.
async fn named_agent(app: &TestApp, region: &str, name: &str) -> AgentProcess {
    let activation = app.activation(region, 1).await;
    let state = tempfile::tempdir().unwrap();
    let child = agent_command(&app.url, Some(&activation), state.path())
        .args(["--name", name])
        .spawn()
        .unwrap();
    let agent = AgentProcess {
        child,
        state,
        protocol: fleetrun::protocol::PROTOCOL_VERSION,
    };
    agent.wait_online(app).await;
    agent
}

/// Kills the agent and waits until the server sees it offline.
async fn take_offline(app: &TestApp, agent: &mut AgentProcess) {
    let id = agent.instance_id().await;
    agent.kill9().await;
    eventually(Duration::from_secs(10), "the agent to be offline", || async {
        (!app.client.instance(&id).await.ok()?.agent.online).then_some(())
    })
    .await;
}

fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.strip_prefix(prefix)).collect()
}

#[tokio::test]
async fn run_prefixes_whole_lines_and_keeps_stdout_and_stderr_apart() {
    let app = TestApp::spawn().await;
    let web = named_agent(&app, "r1", "web-1").await;
    let plain = app.agent("r1").await;
    let (web_id, plain_id) = (web.instance_id().await, plain.instance_id().await);
    let targets = format!("{web_id},{plain_id}");
    // Labels are padded to the longest one (the bare id) so the text lines up.
    let web_prefix = format!("{:<width$} ", "web-1:", width = plain_id.len() + 1);
    let plain_prefix = format!("{plain_id}: ");

    let out = fleetrun(
        &app,
        "run",
        &[
            "-i",
            &targets,
            r#"echo out1; echo err1 >&2; printf partial; sleep 1; echo " line"; ls /nonexistent"#,
        ],
    )
    .await;

    for prefix in [&web_prefix, &plain_prefix] {
        assert_eq!(
            lines_starting(&out.stdout, prefix),
            ["out1", "partial line"],
            "{}",
            out.stdout
        );
        let errors = lines_starting(&out.stderr, prefix);
        assert!(errors.contains(&"err1"), "{}", out.stderr);
        assert!(
            errors
                .iter()
                .any(|l| l.starts_with("ls: ") && l.contains("/nonexistent")),
            "{}",
            out.stderr
        );
        assert!(
            errors
                .iter()
                .any(|l| l.starts_with("Failed, exit code ") && l.contains(", ExitCodeNonzero: ")),
            "{}",
            out.stderr
        );
    }
    assert_eq!(out.stdout.lines().count(), 4, "{}", out.stdout);
    assert!(!out.stderr.contains("partial"), "{}", out.stderr);
    assert_eq!(out.code, 1);
}

#[tokio::test]
async fn a_character_split_across_two_writes_arrives_whole() {
    let app = TestApp::spawn().await;
    let agent = app.agent("r1").await;
    let id = agent.instance_id().await;

    let out = fleetrun(
        &app,
        "run",
        &["-i", &id, r"printf '\344'; sleep 0.5; printf '\270\255\n'"],
    )
    .await;

    assert_eq!(out.stdout, format!("{id}: 中\n"), "{}", out.stderr);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test]
async fn all_reaches_every_online_instance_of_the_region_and_no_other() {
    let app = TestApp::spawn().await;
    let web1 = app.agent("r-web").await;
    let web2 = app.agent("r-web").await;
    let mut offline = app.agent("r-web").await;
    let other = app.agent("r-db").await;
    take_offline(&app, &mut offline).await;
    let mut expected = vec![web1.instance_id().await, web2.instance_id().await];
    expected.sort();

    let out = fleetrun(&app, "run", &["--all", "--region", "r-web", "echo hi"]).await;
    let ambiguous = fleetrun(&app, "run", &["--all", "echo hi"]).await;

    let mut reached: Vec<&str> = out.stdout.lines().filter_map(|l| l.strip_suffix(": hi")).collect();
    reached.sort();
    assert_eq!(reached, expected, "{}", out.stderr);
    assert!(
        out.stderr.contains("2 instance(s) online and Running in region r-web"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&offline.instance_id().await));
    assert!(!out.stderr.contains(&other.instance_id().await));
    assert_eq!(out.code, 0);
    assert_ne!(ambiguous.code, 0);
    assert!(
        ambiguous.stderr.contains("--all needs --region"),
        "{}",
        ambiguous.stderr
    );
}

#[tokio::test]
async fn json_prints_only_json_on_stdout() {
    let app = TestApp::spawn().await;
    let agent = app.agent("only").await;
    let id = agent.instance_id().await;

    // With one region, --all needs no --region.
    let run = fleetrun(&app, "run", &["--all", "--json", "echo hi"]).await;
    let instances = fleetrun(&app, "instances", &["--json"]).await;
    let list = fleetrun(&app, "invocations", &["--json"]).await;

    let inv: Invocation = serde_json::from_str(&run.stdout).unwrap();
    let result = &inv.results.as_ref().unwrap()[0];
    assert_eq!(result.instance_id, id);
    assert_eq!(result.invocation_status, ResultStatus::Success);
    assert_eq!(result.output, "hi\n");
    assert!(run.stderr.contains(&format!("{id}: hi\n")), "{}", run.stderr);
    assert_eq!(run.code, 0);
    let instances: serde_json::Value = serde_json::from_str(&instances.stdout).unwrap();
    assert_eq!(instances["instances"][0]["instance_id"], id.as_str());
    let list: InvocationsResponse = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list.invocations[0].invoke_id, inv.invoke_id);
    let shown = fleetrun(&app, "invocations", &[&inv.invoke_id, "--json"]).await;
    assert_eq!(serde_json::from_str::<Invocation>(&shown.stdout).unwrap(), inv);
}

#[tokio::test]
async fn offline_targets_are_warned_about_and_every_reason_is_printed() {
    let app = TestApp::spawn_with(&["--delivery-window-secs", "2"]).await;
    let alive = app.agent("r1").await;
    let mut dead = app.agent("r1").await;
    take_offline(&app, &mut dead).await;
    let (alive_id, dead_id) = (alive.instance_id().await, dead.instance_id().await);

    let out = fleetrun(&app, "run", &["-i", &format!("{dead_id},{alive_id}"), "echo hi"]).await;
    let missing_dir = fleetrun(
        &app,
        "run",
        &["-i", &alive_id, "--working-dir", "/nonexistent-dir", "true"],
    )
    .await;
    let list = fleetrun(&app, "invocations", &[]).await;

    let about_dead = lines_starting(&out.stderr, &format!("{dead_id}: "));
    assert!(
        about_dead[0].starts_with("Cloud Assistant is offline"),
        "{}",
        out.stderr
    );
    let aborted = about_dead.iter().find(|l| l.starts_with("Aborted, exit code -, "));
    assert!(
        aborted.is_some_and(|l| l.contains("ClientNotRunning: The") || l.contains("DeliveryTimeout: The")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("{alive_id}: Success, exit code 0")),
        "{}",
        out.stderr
    );
    assert_eq!(out.code, 1);
    assert!(
        missing_dir.stderr.contains(&format!(
            "{alive_id}: Error, exit code -, DirectoryNotExists: the working directory /nonexistent-dir does not exist"
        )),
        "{}",
        missing_dir.stderr
    );
    let header = list.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("INVOCATION ID") && header.ends_with("STATUS"),
        "{header}"
    );
    assert!(
        list.stdout.contains("Failed (DirectoryNotExists ×1)"),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout.contains("PartialFailed (ClientNotRunning ×1)")
            || list.stdout.contains("PartialFailed (DeliveryTimeout ×1)"),
        "{}",
        list.stdout
    );
}

#[tokio::test]
async fn built_in_parameters_are_filled_without_param() {
    let app = TestApp::spawn().await;
    let agent = named_agent(&app, "r-params", "web-1").await;
    let id = agent.instance_id().await;

    let builtins = fleetrun(
        &app,
        "run",
        &["-i", &id, "echo {{fleetrun::instance_name}} in {{fleetrun::region_id}}"],
    )
    .await;
    let literal = fleetrun(
        &app,
        "run",
        &["-i", &id, "--no-parameters", "echo {{fleetrun::instance_name}}"],
    )
    .await;
    let missing = fleetrun(&app, "run", &["-i", &id, "echo {{greeting}}"]).await;
    let given = fleetrun(
        &app,
        "run",
        &["-i", &id, "--param", "greeting=hello", "echo {{greeting}}"],
    )
    .await;

    assert_eq!(builtins.stdout, "web-1: web-1 in r-params\n", "{}", builtins.stderr);
    assert_eq!(
        literal.stdout, "web-1: {{fleetrun::instance_name}}\n",
        "{}",
        literal.stderr
    );
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("\"greeting\"") && missing.stderr.contains("--param NAME=VALUE"),
        "{}",
        missing.stderr
    );
    assert_eq!(given.stdout, "web-1: hello\n", "{}", given.stderr);
}

#[tokio::test]
async fn stop_says_when_the_invocation_had_already_finished() {
    let app = TestApp::spawn().await;
    let agent = app.agent("r1").await;
    let id = agent.instance_id().await;
    let finished = app
        .run_to_end(&RunCommandRequest::shell(vec![id.clone()], "true"))
        .await;
    let sleep = format!("sleep {}", unique_seconds(600));
    let running = app
        .client
        .run(&RunCommandRequest::shell(vec![id.clone()], sleep))
        .await
        .unwrap();

    let late = fleetrun(&app, "stop", &[&finished.invoke_id]).await;
    let stopped = fleetrun(&app, "stop", &[&running.invoke_id]).await;

    assert_eq!(late.code, 0);
    assert_eq!(
        late.stdout,
        format!("{} had already finished: Success\n", finished.invoke_id)
    );
    assert_eq!(stopped.code, 0);
    assert_eq!(stopped.stdout, format!("stop requested for {}\n", running.invoke_id));
    let inv = app.wait_done(&running.invoke_id, Duration::from_secs(20)).await;
    let status = inv.results.unwrap()[0].invocation_status;
    assert!(
        matches!(status, ResultStatus::Cancelled | ResultStatus::Terminated),
        "{status}"
    );
}

#[tokio::test]
async fn tags_are_set_and_filtered_and_a_run_by_tags_dry_runs_then_runs_once_per_client_token() {
    let app = TestApp::spawn().await;
    let web_agent = named_agent(&app, "local", "web").await;
    let db_agent = named_agent(&app, "local", "db").await;
    let (web, db) = (web_agent.instance_id().await, db_agent.instance_id().await);

    let set = fleetrun(
        &app,
        "instances",
        &["--set-tags", &web, "--tag", "env=prod", "--tag", "role=web"],
    )
    .await;
    let listed = fleetrun(&app, "instances", &["--tag", "env=prod"]).await;
    let dry = fleetrun(
        &app,
        "run",
        &["--region", "local", "--tag", "env=prod", "--dry-run", "echo dry"],
    )
    .await;
    let after_dry = app.client.invocations("").await.unwrap().total;
    let args = [
        "--region",
        "local",
        "--tag",
        "env=prod",
        "--client-token",
        "cli-1",
        "echo tagged",
    ];
    let first = fleetrun(&app, "run", &args).await;
    let again = fleetrun(&app, "run", &args).await;
    let no_region = fleetrun(&app, "run", &["--tag", "env=prod", "echo x"]).await;

    assert_eq!(set.code, 0, "{}", set.stderr);
    assert!(set.stdout.contains("tags env=prod, role=web"), "{}", set.stdout);
    assert!(
        listed.stdout.contains(&web) && !listed.stdout.contains(&db),
        "{}",
        listed.stdout
    );
    assert!(listed.stdout.contains("env=prod,role=web"), "{}", listed.stdout);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains(&format!("{web}: would run")), "{}", dry.stdout);
    assert!(dry.stdout.contains("1 of 1 instance(s) would run"), "{}", dry.stdout);
    assert_eq!(after_dry, 0, "a dry run records nothing");
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        first.stdout.contains("tagged") && first.stderr.contains("on 1 instance(s)"),
        "{}",
        first.stderr
    );
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stderr.contains("client token seen before"), "{}", again.stderr);
    assert_eq!(app.client.invocations("").await.unwrap().total, 1);
    assert_ne!(no_region.code, 0);
    assert!(
        no_region.stderr.contains("--tag needs --region"),
        "{}",
        no_region.stderr
    );
}

#[tokio::test]
async fn a_scheduled_run_prints_its_invoke_id_and_next_run_and_stop_ends_it() {
    let app = TestApp::spawn().await;
    let agent = app.agent("local").await;
    let id = agent.instance_id().await;

    let scheduled = fleetrun(
        &app,
        "run",
        &["-i", &id, "--frequency", "rate(5m)", "--timeout", "10", "uptime"],
    )
    .await;
    let invoke_id = scheduled.stdout.trim().to_string();
    let stopped = fleetrun(&app, "stop", &[&invoke_id]).await;
    let refused = fleetrun(&app, "run", &["-i", &id, "--frequency", "rate(5)", "uptime"]).await;

    assert_eq!(scheduled.code, 0, "{}", scheduled.stderr);
    assert!(invoke_id.starts_with("t-"), "{}", scheduled.stdout);
    assert!(
        scheduled.stderr.contains("Scheduled") && scheduled.stderr.contains("next run at"),
        "{}",
        scheduled.stderr
    );
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    let invocation = app.client.invocation(&invoke_id).await.unwrap();
    assert_eq!(invocation.invocation_status.as_str(), "Stopped");
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("rate(<n><s|m|h|d>)"), "{}", refused.stderr);
}
