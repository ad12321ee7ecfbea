//! TLS as a newcomer sets it up: the self-signed certificate README.md's `openssl` line makes,
//! trusted by the agent and the CLI through `--ca-file`, and one clear sentence when it is not.

use crate::helpers::{PASSWORD, TestApp, agent_command};
use fleetrun::protocol::api::RunCommandRequest;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;

/// The command README.md tells a newcomer to run; the test checks README still shows it.
const README_OPENSSL: &str = r#"openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 365 -subj "/CN=fleet.example" -addext "subjectAltName=DNS:fleet.example,DNS:localhost,IP:127.0.0.1""#;

/// Runs README's `openssl` line in `dir`; returns (cert.pem, key.pem).
async fn readme_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    assert!(
        include_str!("../../README.md").contains(README_OPENSSL),
        "README.md no longer shows the openssl line this test runs"
    );
    let made = Command::new("sh")
        .args(["-c", README_OPENSSL])
        .current_dir(dir)
        .output()
        .await
        .expect("run openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Runs a client subcommand of the real binary; `ca_file` is passed as `--ca-file` if given.
async fn cli(app: &TestApp, ca_file: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetrun"));
    command
        .args(args)
        .args(["--server", &app.url])
        .env("FLEETRUN_PASSWORD", PASSWORD)
        .env_remove("FLEETRUN_TOKEN")
        .env_remove("FLEETRUN_CA_FILE");
    if let Some(ca_file) = ca_file {
        command.arg("--ca-file").arg(ca_file);
    }
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the CLI to finish")
        .unwrap()
}

#[tokio::test]
async fn an_agent_given_the_readme_self_signed_certificate_enrols_and_runs_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = readme_certificate(dir.path()).await;
    let app = TestApp::spawn_tls(&cert, &key, &cert).await;

    let agent = app.agent_trusting(&cert).await;
    agent.wait_online(&app).await;
    let inv = app
        .run_to_end(&RunCommandRequest::shell(
            vec![agent.instance_id().await],
            "echo over tls",
        ))
        .await;

    assert!(app.url.starts_with("https://localhost:"), "{}", app.url);
    assert_eq!(inv.results.unwrap()[0].output, "over tls\n");
}

#[tokio::test]
async fn the_cli_with_ca_file_lists_instances_and_streams_output_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = readme_certificate(dir.path()).await;
    let app = TestApp::spawn_tls(&cert, &key, &cert).await;
    let agent = app.agent_trusting(&cert).await;
    agent.wait_online(&app).await;
    let id = agent.instance_id().await;

    let listed = cli(&app, Some(&cert), &["instances"]).await;
    let ran = cli(&app, Some(&cert), &["run", "-i", &id, "echo streamed over wss"]).await;

    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert!(stdout.contains(&id) && stdout.contains("online"), "{stdout}");
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    assert!(stdout.contains(&format!("{id}: streamed over wss")), "{stdout}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_one_sentence_naming_ca_file() {
    let (server_dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (cert, key) = readme_certificate(server_dir.path()).await;
    // The same command again: same names, another key, so not the server's certificate.
    let (wrong, _) = readme_certificate(other_dir.path()).await;
    let app = TestApp::spawn_tls(&cert, &key, &cert).await;

    let activation = app.activation("local", 1).await;
    let state = tempfile::tempdir().unwrap();
    let mut agent = agent_command(&app.url, Some(&activation), state.path());
    agent.arg("--ca-file").arg(&wrong);
    let refused = tokio::time::timeout(Duration::from_secs(30), agent.output())
        .await
        .expect("the agent to give up")
        .unwrap();
    let cli_without = cli(&app, None, &["instances"]).await;

    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("the server's certificate is not trusted") && stderr.contains("--ca-file FILE"),
        "{stderr}"
    );
    let stderr = String::from_utf8_lossy(&cli_without.stderr);
    assert!(!cli_without.status.success());
    assert!(
        stderr.contains("the server's certificate is not trusted") && stderr.contains("--ca-file FILE"),
        "{stderr}"
    );
}
