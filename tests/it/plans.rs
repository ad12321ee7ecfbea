//! Execution plans (issue 14): schedules run again and again, each execution's output kept
//! apart; Stop ends them; a server restart neither loses nor doubles an execution; boot plans
//! run once per boot of the agent's machine (a boot-id file the test changes).

use crate::helpers::*;
use fleetrun::protocol::api::{Execution, RunCommandRequest};
use fleetrun::protocol::{CommandSpec, InvocationStatus, PROTOCOL_VERSION, RepeatMode};
use std::path::Path;
use std::time::Duration;

/// A shell command that counts its runs in `counter` and prints `run <n>`: the output of each
/// execution differs, and the file says how many times it really ran.
fn counting(counter: &Path, timeout_secs: u64) -> CommandSpec {
    let file = counter.display();
    CommandSpec {
        timeout_secs,
        ..CommandSpec::shell(format!(
            "n=$(cat {file} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {file}; echo run $n"
        ))
    }
}

/// Executions whose command started (a stop may cancel the last before it starts).
fn started(executions: &[Execution]) -> usize {
    executions
        .iter()
        .filter(|e| e.results.iter().any(|r| r.start_time.is_some()))
        .count()
}

fn runs(counter: &Path) -> u32 {
    std::fs::read_to_string(counter)
        .map(|s| s.trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

/// Each execution's number and what it printed, for one instance.
fn outputs(executions: &[Execution]) -> Vec<(u32, String)> {
    executions
        .iter()
        .map(|e| {
            assert_eq!(
                e.results.len(),
                1,
                "execution {} has one result per instance",
                e.repeats
            );
            (e.repeats, e.results[0].output.trim().to_string())
        })
        .collect()
}

/// Waits until execution `n` exists and every result of it has ended.
async fn execution_done(
    client: &fleetrun::client::ApiClient,
    invoke_id: &str,
    n: u32,
    timeout: Duration,
) -> Vec<Execution> {
    eventually(timeout, &format!("execution {n} to end"), || async {
        let executions = client.executions(invoke_id).await.ok()?.executions;
        let done = executions
            .iter()
            .find(|e| e.repeats == n)?
            .results
            .iter()
            .all(|r| r.invocation_status.is_terminal());
        done.then_some(executions)
    })
    .await
}

#[tokio::test]
async fn a_rate_runs_three_executions_each_with_its_own_output_and_stop_ends_the_schedule() {
    let app = TestApp::spawn_with(&["--min-schedule-interval", "1"]).await;
    let agent = app.agent("local").await;
    let instance = agent.instance_id().await;
    let counter = agent.state.path().join("runs");
    let request = RunCommandRequest {
        // Long enough that the checks just after creation come before the first execution.
        frequency: Some("rate(5s)".into()),
        ..RunCommandRequest::new(vec![instance.clone()], counting(&counter, 2))
    };

    let invoke_id = app.client.run(&request).await.unwrap().invoke_id;
    let scheduled = app.client.invocation(&invoke_id).await.unwrap();
    assert_eq!(scheduled.invocation_status, InvocationStatus::Scheduled);
    assert_eq!((scheduled.repeat_mode, scheduled.repeats), (RepeatMode::Period, 0));
    assert_eq!(scheduled.frequency.as_deref(), Some("rate(5s)"));
    assert!(scheduled.next_run_time.is_some(), "the next run time is shown");
    assert!(scheduled.results.unwrap().is_empty(), "nothing ran at once");

    let executions = execution_done(&app.client, &invoke_id, 3, Duration::from_secs(60)).await;
    let latest = app.client.invocation(&invoke_id).await.unwrap();
    app.client.stop(&invoke_id, None).await.unwrap();

    assert_eq!(
        outputs(&executions[..3]),
        vec![(1, "run 1".into()), (2, "run 2".into()), (3, "run 3".into())],
        "each execution's output is its own"
    );
    assert!(latest.repeats >= 3);
    let result = &latest.results.unwrap()[0];
    assert_eq!(
        result.repeats, latest.repeats,
        "the record's results are the latest execution's"
    );
    let raw = app
        .client
        .raw(
            reqwest::Method::GET,
            &format!("/invocations/{invoke_id}/results/{instance}/output?repeats=2"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        raw.text().await.unwrap(),
        "run 2\n",
        "an earlier execution's output by its number"
    );

    let stopped = app.wait_done(&invoke_id, Duration::from_secs(15)).await;
    assert_eq!(stopped.invocation_status, InvocationStatus::Stopped);
    assert_eq!(stopped.next_run_time, None);
    let after_stop = app.client.executions(&invoke_id).await.unwrap().executions.len();
    // Two intervals: a schedule that still ran would start another execution meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = app.client.executions(&invoke_id).await.unwrap().executions;
    assert_eq!(later.len(), after_stop, "no execution starts after Stop");
    // A stop that lands while the next execution's task is on its way cancels that result
    // before its start is stored, though the agent may already have started the script.
    let (ran, started) = (runs(&counter) as usize, started(&later));
    assert!(
        ran == started || ran == started + 1,
        "every execution ran exactly once: {ran} runs, {started} started"
    );
}

#[tokio::test]
async fn a_server_restarted_between_two_executions_neither_loses_nor_doubles_one() {
    let mut server = ServerProcess::start(&["--min-schedule-interval", "1"]).await;
    let client = server.client();
    let activation = client
        .create_activation(&fleetrun::protocol::api::CreateActivationRequest {
            region_id: "local".into(),
            instance_count_limit: 1,
            ttl_hours: None,
            description: None,
        })
        .await
        .unwrap();
    let agent = AgentProcess::start(&server.url, Some(&activation), tempfile::tempdir().unwrap());
    let instance = agent.instance_id().await;
    eventually(Duration::from_secs(15), "the agent to be online", || async {
        client.instance(&instance).await.ok().filter(|i| i.agent.online)
    })
    .await;
    let counter = agent.state.path().join("runs");
    let request = RunCommandRequest {
        frequency: Some("rate(3s)".into()),
        ..RunCommandRequest::new(vec![instance.clone()], counting(&counter, 2))
    };
    let invoke_id = client.run(&request).await.unwrap().invoke_id;
    execution_done(&client, &invoke_id, 1, Duration::from_secs(20)).await;

    server.kill9().await;
    server.restart().await;
    let client = server.client();
    let executions = execution_done(&client, &invoke_id, 3, Duration::from_secs(40)).await;
    client.stop(&invoke_id, None).await.unwrap();

    let numbers: Vec<u32> = executions.iter().map(|e| e.repeats).collect();
    assert_eq!(
        &numbers[..3],
        &[1, 2, 3],
        "no execution number is skipped or repeated: {}",
        server.log()
    );
    assert_eq!(
        outputs(&executions[..3]),
        vec![(1, "run 1".into()), (2, "run 2".into()), (3, "run 3".into())],
    );
    eventually(Duration::from_secs(15), "the stop to end the schedule", || async {
        let inv = client.invocation(&invoke_id).await.ok()?;
        (inv.invocation_status == InvocationStatus::Stopped).then_some(())
    })
    .await;
    let all = client.executions(&invoke_id).await.unwrap().executions;
    let numbers: Vec<u32> = all.iter().map(|e| e.repeats).collect();
    let expected: Vec<u32> = (1..=all.len() as u32).collect();
    assert_eq!(numbers, expected);
    // As above: the execution the stop cancelled may have started on the agent.
    let (ran, started) = (runs(&counter) as usize, started(&all));
    assert!(
        ran == started || ran == started + 1,
        "the command ran once per execution: {ran} runs, {started} started"
    );
}

/// An agent reading its boot id from `boot_file`.
fn agent_booted(
    server: &str,
    activation: Option<&fleetrun::protocol::api::ActivationCreated>,
    state: tempfile::TempDir,
    boot_file: &Path,
) -> AgentProcess {
    let child = agent_command(server, activation, state.path())
        .arg("--boot-id-file")
        .arg(boot_file)
        .spawn()
        .unwrap();
    AgentProcess {
        child,
        state,
        protocol: PROTOCOL_VERSION,
    }
}

#[tokio::test]
async fn every_boot_runs_once_per_boot_and_next_boot_only_at_the_first() {
    let app = TestApp::spawn().await;
    let boots = tempfile::tempdir().unwrap();
    let boot_file = boots.path().join("boot_id");
    std::fs::write(&boot_file, "boot-1\n").unwrap();
    let activation = app.activation("local", 1).await;
    let mut agent = agent_booted(&app.url, Some(&activation), tempfile::tempdir().unwrap(), &boot_file);
    agent.wait_online(&app).await;
    let instance = agent.instance_id().await;
    let every_counter = boots.path().join("every");
    let next_counter = boots.path().join("next");
    let plan = |counter: &Path, mode| RunCommandRequest {
        repeat_mode: Some(mode),
        ..RunCommandRequest::new(vec![instance.clone()], counting(counter, 10))
    };
    let every = app
        .client
        .run(&plan(&every_counter, RepeatMode::EveryReboot))
        .await
        .unwrap()
        .invoke_id;
    let next = app
        .client
        .run(&plan(&next_counter, RepeatMode::NextRebootOnly))
        .await
        .unwrap()
        .invoke_id;
    assert_eq!(
        app.client.invocation(&every).await.unwrap().invocation_status,
        InvocationStatus::Scheduled
    );

    let reboot = |agent: &mut AgentProcess, boot: &str| {
        std::fs::write(&boot_file, boot).unwrap();
        agent.child = agent_command(&app.url, None, agent.state.path())
            .arg("--boot-id-file")
            .arg(&boot_file)
            .spawn()
            .unwrap();
    };
    // A restart of the agent alone (the same boot) runs nothing.
    agent.kill9().await;
    reboot(&mut agent, "boot-1\n");
    agent.wait_online(&app).await;
    // Then two boots.
    agent.kill9().await;
    reboot(&mut agent, "boot-2\n");
    let first = execution_done(&app.client, &every, 1, Duration::from_secs(20)).await;
    let next_run = execution_done(&app.client, &next, 1, Duration::from_secs(20)).await;
    agent.kill9().await;
    reboot(&mut agent, "boot-3\n");
    let second = execution_done(&app.client, &every, 2, Duration::from_secs(20)).await;
    app.client.stop(&every, None).await.unwrap();

    assert_eq!(outputs(&first), vec![(1, "run 1".into())]);
    assert_eq!(outputs(&second), vec![(1, "run 1".into()), (2, "run 2".into())]);
    assert_eq!(outputs(&next_run), vec![(1, "run 1".into())]);
    assert_eq!(runs(&every_counter), 2, "once per boot, not per connection");
    assert_eq!(runs(&next_counter), 1, "the next boot only");
    let next_done = app.client.invocation(&next).await.unwrap();
    assert_eq!(next_done.invocation_status, InvocationStatus::Success);
    assert_eq!(next_done.results.unwrap()[0].repeats, 1);
    let stopped = app.wait_done(&every, Duration::from_secs(10)).await;
    assert_eq!(stopped.invocation_status, InvocationStatus::Stopped);
}

#[tokio::test]
async fn plans_are_refused_with_a_reason_on_the_api() {
    let app = TestApp::spawn().await;
    let agent = app.agent("local").await;
    let instance = agent.instance_id().await;
    for (mode, frequency, code, words) in [
        (None, Some("rate(10s)"), "InvalidParameter.Frequency", "from 1 min"),
        (
            Some(RepeatMode::Period),
            None,
            "InvalidParameter.Frequency",
            "needs a frequency",
        ),
        (None, Some("every day"), "InvalidParameter.Frequency", "cron"),
        (
            Some(RepeatMode::EveryReboot),
            Some("rate(5m)"),
            "InvalidParameter.Frequency",
            "takes no frequency",
        ),
        (
            None,
            Some("at(2020-01-01 00:00:00)"),
            "InvalidParameter.Frequency",
            "has passed",
        ),
    ] {
        let request = RunCommandRequest {
            repeat_mode: mode,
            frequency: frequency.map(String::from),
            ..RunCommandRequest::shell(vec![instance.clone()], "echo hi")
        };
        let err = app.client.run(&request).await.unwrap_err();
        let failure = err.downcast_ref::<fleetrun::client::ApiFailure>().unwrap();
        assert_eq!(failure.body.code, code, "{mode:?} {frequency:?}");
        assert!(
            failure.body.message.contains(words),
            "{mode:?} {frequency:?}: {}",
            failure.body.message
        );
    }
    assert_eq!(app.client.invocations("").await.unwrap().total, 0, "nothing was stored");
}

#[tokio::test]
async fn the_dialogs_execution_plan_schedules_a_command_and_the_record_lists_each_execution() {
    use crate::browser::Browser;
    let app = TestApp::spawn_with(&["--min-schedule-interval", "1"]).await;
    let fleet = app.fleet("local", "web", 1).await;
    let instance = &fleet[0].1;
    let browser = Browser::signed_in(&app).await;

    browser.open_send_command(&app, instance).await;
    browser.type_into("#content-linux", "echo scheduled-hello").await;
    assert!(
        !browser.is_shown("#schedule-fields").await,
        "Immediate execution is the default"
    );
    browser.click("#execution-plan input[name=plan][value=schedule]").await;
    assert!(browser.is_shown("#schedule-fields").await);
    browser.type_into("#schedule-value", "3s").await;
    // A schedule's interval may not be shorter than the timeout (60 s unless changed).
    browser.click("details.advanced summary").await;
    browser.type_into("#timeout", "2").await;
    browser.click("#run-button").await;
    let invoke_id = browser.panel_invoke_id().await;
    browser.wait_text(&format!("#overall-{invoke_id}"), "Scheduled").await;

    let scheduled = app.client.invocation(&invoke_id).await.unwrap();
    assert_eq!(scheduled.repeat_mode, RepeatMode::Period);
    assert_eq!(scheduled.frequency.as_deref(), Some("rate(3s)"));
    browser
        .client
        .goto(&format!("{}/console/invocations", app.url))
        .await
        .unwrap();
    let row = browser.wait_text("#records tbody tr", &invoke_id).await;
    // Between executions it is Scheduled; during one, Pending or Running.
    assert!(
        row.contains("rate(3s)") && ["Scheduled", "Pending", "Running"].iter().any(|s| row.contains(s)),
        "{row}"
    );
    let next_run = browser
        .eval("return document.querySelector('#records tbody tr td:nth-child(5) time')?.getAttribute('datetime') || ''")
        .await;
    assert!(
        next_run.as_str().is_some_and(|t| t.starts_with("20")),
        "the Next Run column shows a time: {row}"
    );

    execution_done(&app.client, &invoke_id, 2, Duration::from_secs(30)).await;
    browser
        .client
        .goto(&format!("{}/console/invocations/{invoke_id}", app.url))
        .await
        .unwrap();
    browser.wait_text("#execution-plan", "rate(3s)").await;
    let first = browser.wait_text("#execution-1 summary", "Execution 1").await;
    assert_eq!(first, "Execution 1");
    let outputs = browser
        .eval("return [...document.querySelectorAll('.execution-output')].map(o => o.dataset.repeats + ':' + o.textContent.trim())")
        .await;
    let outputs: Vec<String> = serde_json::from_value(outputs).unwrap();
    assert!(outputs.contains(&"1:scheduled-hello".to_string()), "{outputs:?}");
    assert!(outputs.contains(&"2:scheduled-hello".to_string()), "{outputs:?}");
    browser.click(&format!("#stop-{invoke_id}")).await;
    browser.wait_text(&format!("#overall-{invoke_id}"), "Stopped").await;

    browser.open_send_command(&app, instance).await;
    browser.type_into("#content-linux", "echo at-boot").await;
    browser.click("#execution-plan input[name=plan][value=schedule]").await;
    browser
        .click("#execution-plan input[name=plan][value=every_boot]")
        .await;
    assert!(
        !browser.is_shown("#schedule-fields").await,
        "a boot plan takes no schedule"
    );
    browser.click("#run-button").await;
    let boot_id = eventually(Duration::from_secs(10), "the boot plan's panel", || async {
        let id = browser.panel_invoke_id().await;
        (id != invoke_id).then_some(id)
    })
    .await;
    browser.wait_text(&format!("#overall-{boot_id}"), "Scheduled").await;
    assert_eq!(
        app.client.invocation(&boot_id).await.unwrap().repeat_mode,
        RepeatMode::EveryReboot
    );
    browser.close().await;
}
