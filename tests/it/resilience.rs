//! Offline instances, lost agents, cut connections, restarts: every result still ends, and no
//! output is lost or doubled.

use crate::helpers::{AgentProcess, Proxy, TestApp, agent_command, eventually, live_processes, sha256, unique_seconds};
use fleetrun::protocol::api::{InstanceStatus, RunCommandRequest, StreamEvent};
use fleetrun::protocol::{ErrorCode, ResultStatus};
use std::path::Path;
use std::time::Duration;

#[tokio::test]
async fn an_offline_target_is_aborted_after_the_delivery_window() {
    let app = TestApp::spawn_with(&["--delivery-window-secs", "2"]).await;
    let mut agent = app.agent("local").await;
    let id = agent.instance_id().await;
    agent.kill9().await;

    let inv = app.run_to_end(&RunCommandRequest::shell(vec![id], "echo never")).await;

    let result = &inv.results.unwrap()[0];
    assert_eq!(result.invocation_status, ResultStatus::Aborted);
    assert!(
        matches!(
            result.error_code,
            Some(ErrorCode::DeliveryTimeout | ErrorCode::ClientNotRunning)
        ),
        "{:?}",
        result.error_code
    );
}

/// Each scenario runs once per agent protocol version: 1 (every frame JSON text, as agents from
/// before version 2 send) and 2 (output in binary frames).
macro_rules! with_each_protocol {
    ($($scenario:ident),+ $(,)?) => {
        mod protocol_1 {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(1).await
            })+
        }
        mod protocol_2 {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(2).await
            })+
        }
    };
}

with_each_protocol!(
    an_agent_that_comes_back_inside_the_window_runs_the_task,
    an_agent_killed_mid_run_ends_its_result_as_client_not_response,
    output_survives_a_cut_connection_without_loss_or_duplication,
    a_flood_while_cut_off_is_spooled_as_head_and_tail_and_ends_as_if_never_cut,
);

async fn an_agent_that_comes_back_inside_the_window_runs_the_task(protocol: u32) {
    let app = TestApp::spawn_with(&["--delivery-window-secs", "30"]).await;
    let mut agent = app.agent_speaking("local", protocol).await;
    let id = agent.instance_id().await;
    agent.kill9().await;
    let created = app
        .client
        .run(&RunCommandRequest::shell(vec![id.clone()], "echo delivered late"))
        .await
        .unwrap();

    agent.restart(&app.url);
    let inv = app.wait_done(&created.invoke_id, Duration::from_secs(20)).await;

    let result = &inv.results.unwrap()[0];
    assert_eq!(result.invocation_status, ResultStatus::Success);
    assert_eq!(result.output, "delivered late\n");
    assert_eq!(
        agent.instance_id().await,
        id,
        "the restarted agent reuses its credential"
    );
}

async fn an_agent_killed_mid_run_ends_its_result_as_client_not_response(protocol: u32) {
    let app = TestApp::spawn().await;
    let mut agent = app.agent_speaking("local", protocol).await;
    let id = agent.instance_id().await;
    let seconds = unique_seconds(30);
    let created = app
        .client
        .run(&RunCommandRequest::shell(vec![id.clone()], format!("sleep {seconds}")))
        .await
        .unwrap();
    app.wait_result(&created.invoke_id, &id, "Running").await;

    agent.kill9().await;
    let inv = app.wait_done(&created.invoke_id, Duration::from_secs(10)).await;

    let result = &inv.results.unwrap()[0];
    assert_eq!(result.invocation_status, ResultStatus::Error);
    assert_eq!(result.error_code, Some(ErrorCode::ClientNotResponse));
    assert_eq!(app.client.instance(&id).await.unwrap().status, InstanceStatus::Stopped);
    // The restarted agent kills what the crashed one left running.
    agent.restart(&app.url);
    let gone = || async { live_processes(&seconds).is_empty().then_some(()) };
    eventually(Duration::from_secs(15), "the orphaned command to be killed", gone).await;
}

async fn output_survives_a_cut_connection_without_loss_or_duplication(protocol: u32) {
    let app = TestApp::spawn().await;
    let proxy = Proxy::start(&app.url).await;
    let activation = app.activation("local", 1).await;
    let state = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start_speaking(&proxy.url, Some(&activation), state, protocol);
    agent.wait_online(&app).await;
    let id = agent.instance_id().await;
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i of the streamed output\"; i=$((i+1)); \
                  if [ $((i % 100)) -eq 0 ]; then sleep 0.05; fi; done";
    let expected: String = (0..3000)
        .map(|i| format!("line {i} of the streamed output\n"))
        .collect();

    let created = app
        .client
        .run(&RunCommandRequest::shell(vec![id.clone()], script))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "output to start streaming", || async {
        let inv = app.client.invocation(&created.invoke_id).await.ok()?;
        let output = &inv.results?[0].output;
        output.contains("line 300 ").then_some(())
    })
    .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    let inv = app.wait_done(&created.invoke_id, Duration::from_secs(30)).await;
    let raw = app.client.output(&created.invoke_id, &id).await.unwrap();

    assert_eq!(inv.results.unwrap()[0].invocation_status, ResultStatus::Success);
    assert_eq!(raw.len(), expected.len());
    assert_eq!(sha256(&raw), sha256(expected.as_bytes()));
}

/// Bytes in the files under `dir`, at any depth.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

async fn a_flood_while_cut_off_is_spooled_as_head_and_tail_and_ends_as_if_never_cut(protocol: u32) {
    // A 10 s heartbeat: the server gives the agent up after 30 s, longer than the cut lasts.
    let app = TestApp::spawn_with(&["--heartbeat-secs", "10"]).await;
    let proxy = Proxy::start(&app.url).await;
    let activation = app.activation("local", 1).await;
    let agent = AgentProcess::start_speaking(&proxy.url, Some(&activation), tempfile::tempdir().unwrap(), protocol);
    agent.wait_online(&app).await;
    let id = agent.instance_id().await;
    // About 47 MB of numbered lines, printed only once the connection is cut.
    let go = tempfile::tempdir().unwrap();
    let go_file = go.path().join("go");
    let lines = 6_000_000;
    let script = format!(
        "echo ready; while [ ! -e {} ]; do sleep 0.05; done; seq 1 {lines}",
        go_file.display()
    );
    let mut printed = b"ready\n".to_vec();
    for n in 1..=lines {
        printed.extend_from_slice(format!("{n}\n").as_bytes());
    }
    let (head, tail) = (512 * 1024, 512 * 1024);

    let created = app
        .client
        .run(&RunCommandRequest::shell(vec![id.clone()], script))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the command to start", || async {
        let inv = app.client.invocation(&created.invoke_id).await.ok()?;
        inv.results?[0].output.starts_with("ready").then_some(())
    })
    .await;
    // A watcher that stays connected throughout: (offset, bytes) of every output event.
    let watcher = tokio::spawn({
        let (client, invoke_id) = (app.client.clone(), created.invoke_id.clone());
        async move {
            let mut seen = Vec::new();
            client
                .stream(&invoke_id, None, |event| {
                    if let StreamEvent::Output { offset, data, .. } = event {
                        seen.push((*offset, data.clone()));
                    }
                })
                .await
                .unwrap();
            seen
        }
    });
    proxy.cut();
    std::fs::write(&go_file, b"").unwrap();
    // While cut, the whole flood goes through the agent's spool: its size is sampled until the
    // command's end is spooled too.
    let meta = agent.state.path().join(format!("spool/{}.json", created.invoke_id));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    loop {
        most = most.max(dir_bytes(agent.state.path()));
        let ended = std::fs::read(&meta)
            .ok()
            .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
            .is_some_and(|meta| meta["finished"].is_object());
        if ended {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the command did not end within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_end = dir_bytes(agent.state.path());
    proxy.restore();
    let inv = app.wait_done(&created.invoke_id, Duration::from_secs(30)).await;
    let kept = app.client.output(&created.invoke_id, &id).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("the watcher's stream ends with the invocation")
        .unwrap();

    eprintln!(
        "protocol {protocol}: {} bytes printed while cut off; the agent's state dir held at most {most} bytes ({at_end} at the end)",
        printed.len()
    );
    let bound = head + tail + (16 << 20);
    assert!(
        most.max(at_end) < bound,
        "{most} bytes in the agent's state dir, over {bound}"
    );
    let result = &inv.results.unwrap()[0];
    assert_eq!(result.invocation_status, ResultStatus::Success);
    assert_eq!(result.exit_code, Some(0));
    let expected = [&printed[..head as usize], &printed[printed.len() - tail as usize..]].concat();
    assert!(
        kept == expected,
        "the kept output is not the first and last 512 KiB printed"
    );
    assert_eq!(result.dropped, printed.len() as u64 - head - tail);
    // The watcher saw every byte it was shown at its place, in order, nothing twice, the head
    // and the tail whole, and the skipped middle as a jump in offsets.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (offset, data) in &seen {
        let shown = runs.last().map_or(0, |run| run.1);
        assert!(*offset >= shown, "offset {offset} shown again (up to {shown} already)");
        assert!(
            data[..] == printed[*offset as usize..*offset as usize + data.len()],
            "bytes at {offset}"
        );
        let end = offset + data.len() as u64;
        match runs.last_mut() {
            Some(run) if run.1 == *offset => run.1 = end,
            _ => runs.push((*offset, end)),
        }
    }
    let total = printed.len() as u64;
    let covered = |from: u64, to: u64| runs.iter().any(|run| run.0 <= from && run.1 >= to);
    assert!(covered(0, head) && covered(total - tail, total), "{runs:?}");
    assert!(runs.len() > 1, "the middle shows as a gap");
}

#[tokio::test]
async fn an_activation_refuses_agents_past_its_limit_with_a_clear_message() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 1).await;
    let first = AgentProcess::start(&app.url, Some(&activation), tempfile::tempdir().unwrap());
    first.wait_online(&app).await;

    let state = tempfile::tempdir().unwrap();
    let output = agent_command(&app.url, Some(&activation), state.path())
        .output()
        .await
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reached its instance limit"), "{stderr}");
}

#[tokio::test]
async fn a_deregistered_agent_is_disconnected_and_cannot_reconnect() {
    let app = TestApp::spawn().await;
    let mut agent = app.agent("local").await;
    let id = agent.instance_id().await;

    let response = app
        .client
        .raw(reqwest::Method::DELETE, &format!("/instances/{id}"), None)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), agent.child.wait())
        .await
        .expect("agent exits")
        .unwrap();

    assert_eq!(response.status(), 204);
    assert!(!status.success(), "the agent gives up with an error");
    let lookup = app
        .client
        .raw(reqwest::Method::GET, &format!("/instances/{id}"), None)
        .await
        .unwrap();
    assert_eq!(lookup.status(), 404);
}
