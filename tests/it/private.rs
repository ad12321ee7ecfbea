//! Private data on a shared machine: the server's data directory and database files are
//! readable by its user only, and an activation code given the documented way never shows in
//! `ps`.

use crate::helpers::{AgentProcess, PASSWORD, TestApp, agent_command, eventually, live_processes};
use clap::Parser as _;
use fleetrun::client::{ApiClient, Credentials};
use fleetrun::config::{Cli, Mode, ServeArgs};
use fleetrun::protocol::PROTOCOL_VERSION;
use fleetrun::protocol::api::CreateActivationRequest;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

fn mode(path: &Path) -> u32 {
    let metadata = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    metadata.permissions().mode() & 0o7777
}

fn serve_args(data_dir: &Path, listen: &str) -> ServeArgs {
    let data_dir = data_dir.display().to_string();
    let args = [
        "fleetrun",
        "serve",
        "--listen",
        listen,
        "--data-dir",
        &data_dir,
        "--admin-password",
        PASSWORD,
    ];
    let Mode::Serve(serve) = Cli::parse_from(args).mode else {
        unreachable!()
    };
    serve
}

/// Asserts the data directory is 0700 and the database with its WAL files 0600.
fn assert_private(data: &Path) {
    assert_eq!(mode(data), 0o700, "{}", data.display());
    for name in ["fleetrun.db", "fleetrun.db-wal", "fleetrun.db-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
}

#[tokio::test]
async fn a_new_data_directory_and_its_database_files_are_private() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("fleetrun-data");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(fleetrun::server::run(
        serve_args(&data, "127.0.0.1:0"),
        listener,
        shutdown,
    ));
    let credentials = Credentials::Basic {
        username: "admin".into(),
        password: PASSWORD.into(),
    };
    let client = ApiClient::new(&url, credentials);
    let request = CreateActivationRequest {
        region_id: "local".into(),
        instance_count_limit: 1,
        ttl_hours: None,
        description: None,
    };

    // Writing something once the server answers: the WAL is in use.
    eventually(
        Duration::from_secs(20),
        "the server to create an activation",
        || async { client.create_activation(&request).await.ok() },
    )
    .await;

    assert_private(&data);
}

#[tokio::test]
async fn loose_modes_left_from_before_are_tightened_at_start() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("fleetrun-data");
    let args = serve_args(&data, "127.0.0.1:0");
    fleetrun::server::open_store(&args).await.unwrap().close().await;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("fleetrun.db"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let store = fleetrun::server::open_store(&args).await.unwrap();
    let used = store.count_users().await.unwrap();

    assert_eq!(used, 1);
    assert_private(&data);
    store.close().await;
}

#[tokio::test]
async fn a_shared_directory_given_as_the_data_directory_keeps_its_mode() {
    let root = tempfile::tempdir().unwrap();
    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("notes.txt"), "someone else's").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();

    let store = fleetrun::server::open_store(&serve_args(&shared, "127.0.0.1:0"))
        .await
        .unwrap();
    store.close().await;

    assert_eq!(
        mode(&shared),
        0o755,
        "a directory that is not fleetrun's is not closed to its users"
    );
    assert_eq!(
        mode(&shared.join("fleetrun.db")),
        0o600,
        "fleetrun's own files are still private"
    );
}

/// Starts `fleetrun-agent` with an activation id, enrolling with the code however `prepare`
/// passes it.
fn enrolling_agent(
    app: &TestApp,
    activation_id: &str,
    prepare: impl FnOnce(&mut tokio::process::Command),
) -> AgentProcess {
    let state = tempfile::tempdir().unwrap();
    let mut command = agent_command(&app.url, None, state.path());
    command.args(["--activation-id", activation_id, "--name", "web-1"]);
    prepare(&mut command);
    AgentProcess {
        child: command.spawn().unwrap(),
        state,
        protocol: PROTOCOL_VERSION,
    }
}

#[tokio::test]
async fn the_documented_agent_line_keeps_the_activation_code_out_of_ps() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 1).await;

    let agent = enrolling_agent(&app, &activation.activation_id, |command| {
        command.env("FLEETRUN_ACTIVATION_CODE", &activation.activation_code);
    });
    agent.wait_online(&app).await;

    assert!(agent.child.id().is_some(), "the agent is still running");
    assert_eq!(live_processes(&activation.activation_code), Vec::<u32>::new());
}

#[tokio::test]
async fn an_agent_reads_its_activation_code_from_a_file_or_standard_input() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 2).await;
    let files = tempfile::tempdir().unwrap();
    let code_file = files.path().join("activation-code");
    std::fs::write(&code_file, format!("{}\n", activation.activation_code)).unwrap();

    let from_file = enrolling_agent(&app, &activation.activation_id, |command| {
        command.arg("--activation-code-file").arg(&code_file);
    });
    let mut from_stdin = enrolling_agent(&app, &activation.activation_id, |command| {
        command.args(["--activation-code-file", "-"]).stdin(Stdio::piped());
    });
    let mut stdin = from_stdin.child.stdin.take().unwrap();
    stdin
        .write_all(format!("{}\n", activation.activation_code).as_bytes())
        .await
        .unwrap();
    drop(stdin);

    from_file.wait_online(&app).await;
    from_stdin.wait_online(&app).await;
}

#[tokio::test]
async fn an_unreadable_activation_code_file_is_a_clear_error() {
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("no-such-file");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetrun-agent"))
        .args(["--server", "http://127.0.0.1:9", "--activation-id", "act-x"])
        .arg("--activation-code-file")
        .arg(&missing)
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .env_remove("FLEETRUN_ACTIVATION_CODE")
        .output()
        .await
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("cannot read --activation-code-file {}", missing.display())),
        "{stderr}"
    );
}
