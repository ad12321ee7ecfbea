//! The agent as users deploy it: the `fleetrun-agent` file, and the same agent inside the main
//! binary (`fleetrun agent`, which the demo starts).

use crate::helpers::{AgentProcess, TestApp, agent_command};
use fleetrun::protocol::PROTOCOL_VERSION;
use fleetrun::protocol::api::RunCommandRequest;
use tokio::process::Command;

#[tokio::test]
async fn fleetrun_agent_reports_its_version_and_options() {
    let version = Command::new(env!("CARGO_BIN_EXE_fleetrun-agent"))
        .arg("--version")
        .output()
        .await
        .unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_fleetrun-agent"))
        .arg("--help")
        .output()
        .await
        .unwrap();

    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("fleetrun-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let help = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--server",
        "--activation-id",
        "--activation-code-file",
        "--state-dir",
        "--ca-file",
    ] {
        assert!(help.contains(option), "{option} missing from --help: {help}");
    }
    // Without a subcommand it runs the agent; the subcommands manage its service (issue 16).
    for command in ["install", "start", "stop", "restart", "status", "uninstall"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from --help: {help}"
        );
    }
}

#[tokio::test]
async fn the_main_binarys_agent_mode_is_the_same_agent() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 1).await;
    let state = tempfile::tempdir().unwrap();
    // The helper's command line, given to `fleetrun agent` instead of `fleetrun-agent`.
    let helper = agent_command(&app.url, Some(&activation), state.path());
    let args: Vec<_> = helper.as_std().get_args().map(|a| a.to_owned()).collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetrun"));
    command
        .arg("agent")
        .args(args)
        .env("FLEETRUN_LOG", "warn")
        .kill_on_drop(true);
    let agent = AgentProcess {
        child: command.spawn().unwrap(),
        state,
        protocol: PROTOCOL_VERSION,
    };
    agent.wait_online(&app).await;

    let inv = app
        .run_to_end(&RunCommandRequest::shell(
            vec![agent.instance_id().await],
            "echo from the main binary",
        ))
        .await;

    assert_eq!(inv.results.unwrap()[0].output, "from the main binary\n");
}

#[tokio::test]
async fn a_version_1_agent_and_a_version_2_agent_work_side_by_side() {
    let app = TestApp::spawn().await;
    let old = app.agent_speaking("local", 1).await;
    let new = app.agent_speaking("local", 2).await;
    let ids = vec![old.instance_id().await, new.instance_id().await];
    // 300,000 bytes of every value: quotes, backslashes and control bytes JSON must escape,
    // invalid UTF-8, across several 64 KiB chunks.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bytes");
    let bytes: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &bytes).unwrap();

    let inv = app
        .run_to_end(&RunCommandRequest::shell(
            ids.clone(),
            format!("cat '{}'", file.display()),
        ))
        .await;

    assert!(inv.results.unwrap().iter().all(|r| r.exit_code == Some(0)));
    for (id, protocol) in ids.iter().zip([1, 2]) {
        let stored = app.client.output(&inv.invoke_id, id).await.unwrap();
        assert!(
            stored == bytes,
            "protocol {protocol}: {} bytes stored, not the 300,000 sent",
            stored.len()
        );
        let instance = app.client.instance(id).await.unwrap();
        assert_eq!(instance.agent.protocol_version, Some(protocol), "{id}");
    }
}
