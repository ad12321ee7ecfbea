//! Running it for real (issue 16): the --config file of the real binaries, JSON log lines, and
//! `fleetrun backup` / `restore` of a server that serves while its agents stream output.

use crate::helpers::{PASSWORD, ServerProcess, TestApp, eventually};
use fleetrun::protocol::api::{Invocation, RunCommandRequest};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

fn fleetrun(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetrun"));
    command
        .args(args)
        .env_remove("FLEETRUN_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_server_runs_on_its_config_file_with_the_environment_and_flags_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nheartbeat-secs = 7\nretention-days = 9\n\
             admin-password = \"{PASSWORD}\"\nlog = \"info\"\n",
            data.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // --print-config: what the file says, unless the environment or a flag says otherwise.
    let printed = fleetrun(&["serve", "--config", config, "--retention-days", "3", "--print-config"])
        .env("FLEETRUN_HEARTBEAT_SECS", "5")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&printed);
    assert!(printed.status.success(), "{stderr}");
    assert!(
        stdout.contains("heartbeat-secs = 5  # FLEETRUN_HEARTBEAT_SECS"),
        "{stdout}"
    );
    assert!(stdout.contains("retention-days = 3  # --retention-days"), "{stdout}");
    assert!(
        stdout.contains(&format!("listen = \"127.0.0.1:0\"  # {config}")),
        "{stdout}"
    );
    assert!(stdout.contains("admin-password = \"(redacted)\""), "{stdout}");
    assert!(!stdout.contains(PASSWORD), "the secret is not printed: {stdout}");
    assert!(!data.exists(), "--print-config only prints");

    // The real server: listens where the file says, keeps its data where the file says.
    let log = dir.path().join("server.log");
    let mut server = fleetrun(&["serve", "--config", config])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let address = eventually(Duration::from_secs(60), "the server to listen", || async {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let after = log.split("listening on http://").nth(1)?;
        Some(after.split_whitespace().next()?.to_string())
    })
    .await;
    let health = reqwest::get(format!("http://{address}/healthz")).await.unwrap();
    assert!(health.status().is_success());
    assert!(
        data.join("fleetrun.db").is_file(),
        "the database is in the file's data-dir"
    );
    let login = reqwest::Client::new()
        .get(format!("http://{address}/api/v1/instances"))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200, "the admin password came from the file");
    server.kill().await.unwrap();
}

#[tokio::test]
async fn an_unknown_key_stops_both_binaries_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nretention = 9\n").unwrap();
    let config = config.to_str().unwrap();

    let served = fleetrun(&["serve", "--config", config]).output().await.unwrap();
    let (_, stderr) = text(&served);
    assert_eq!(served.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{config}: unknown key `retention`")),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("fleet.toml"),
        "server = [\"http://127.0.0.1:1\"]\nstate_dir = \"/x\"\n",
    )
    .unwrap();
    let agent = Command::new(env!("CARGO_BIN_EXE_fleetrun-agent"))
        .args(["--config", config])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&agent);
    assert_eq!(agent.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{config}: unknown key `state_dir`")),
        "{stderr}"
    );
    assert!(stderr.contains("`state-dir`"), "{stderr}");
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_a_line() {
    let server = ServerProcess::start(&["--log-format", "json"]).await;
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let listening = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("listening on http://"))
        })
        .unwrap_or_else(|| panic!("no listening line in {log}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["target"], "fleetrun::server");
    assert!(
        listening["replica"].is_string(),
        "fields are keys of their own: {listening}"
    );
    assert!(listening["timestamp"].is_string(), "{listening}");
}

/// The finished invocations as the API shows them, by id: status, and each result's status,
/// exit code and output.
async fn finished(client: &fleetrun::client::ApiClient, ids: &[String]) -> BTreeMap<String, String> {
    let mut shown = BTreeMap::new();
    for id in ids {
        let invocation: Invocation = client.invocation(id).await.unwrap();
        let mut results = invocation.results.clone().unwrap_or_default();
        results.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        let results: Vec<String> = results
            .iter()
            .map(|r| {
                format!(
                    "{} {:?} {:?} {:?}",
                    r.instance_id, r.invocation_status, r.exit_code, r.output
                )
            })
            .collect();
        shown.insert(id.clone(), format!("{:?} {results:?}", invocation.invocation_status));
    }
    shown
}

#[tokio::test]
async fn a_backup_taken_while_ten_agents_stream_holds_every_finished_result_and_restores() {
    let app = TestApp::spawn().await;
    let fleet = app.fleet("backup", "b", 10).await;
    let ids: Vec<String> = fleet.iter().map(|(_, id)| id.clone()).collect();

    // Ten agents streaming output the whole time the backup runs: stopped only after it.
    let mut stream = RunCommandRequest::shell(
        ids.clone(),
        "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.02; done",
    );
    stream.spec.timeout_secs = 300;
    let stream_id = app.client.run(&stream).await.unwrap().invoke_id;
    eventually(Duration::from_secs(60), "every agent to stream", || async {
        let invocation = app.client.invocation(&stream_id).await.ok()?;
        let results = invocation.results?;
        results.iter().all(|r| r.output.contains("tick 3")).then_some(())
    })
    .await;
    // Finished while the stream runs: they share the writer with it.
    let mut done = Vec::new();
    for n in 0..4 {
        let invocation = app
            .run_to_end(&RunCommandRequest::shell(
                ids.clone(),
                format!("echo finished {n}; exit {n}"),
            ))
            .await;
        done.push(invocation.invoke_id);
    }
    let before = finished(&app.client, &done).await;

    let backup_dir = tempfile::tempdir().unwrap();
    let file = backup_dir.path().join("fleetrun-backup.db");
    let data_dir = app.data.path().to_str().unwrap().to_string();
    let backup = fleetrun(&["backup", "--data-dir", &data_dir, "--to", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&backup);
    assert!(backup.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("integrity ok"), "{stdout}");

    // The stream was still running: the backup was taken under load.
    let streaming = app.client.invocation(&stream_id).await.unwrap();
    assert!(
        !streaming.invocation_status.is_terminal(),
        "{:?}",
        streaming.invocation_status
    );
    app.client.stop(&stream_id, None).await.unwrap();

    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds every command's output");
    let integrity = integrity_check(&file).await;
    assert_eq!(integrity, ["ok"]);

    // Without --force an existing file is kept.
    let again = fleetrun(&["backup", "--data-dir", &data_dir, "--to", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&again);
    assert!(!again.status.success());
    assert!(stderr.contains("exists") && stderr.contains("--force"), "{stderr}");

    // Restore into the running server's data directory: refused.
    let refused = fleetrun(&["restore", "--data-dir", &data_dir, "--from", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&refused);
    assert!(!refused.status.success());
    assert!(stderr.contains("a fleetrun server is using"), "{stderr}");

    // Restored elsewhere, a server shows every finished result as the live one did.
    let restored = tempfile::tempdir().unwrap();
    let restored_dir = restored.path().to_str().unwrap().to_string();
    let restore = fleetrun(&["restore", "--data-dir", &restored_dir, "--from", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&restore);
    assert!(restore.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("there was no database there before"), "{stdout}");
    let second = TestApp::spawn_in(restored, &[]).await;
    assert_eq!(finished(&second.client, &done).await, before);
    let partial = second.client.invocation(&stream_id).await.unwrap();
    let outputs = partial.results.unwrap_or_default();
    assert_eq!(outputs.len(), 10, "the streaming invocation is there too");
    assert!(
        outputs.iter().all(|r| r.output.contains("tick 3")),
        "with its output so far"
    );
    drop(fleet);
}

async fn integrity_check(file: &Path) -> Vec<String> {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}?mode=ro", file.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let report: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    report
}

#[tokio::test]
async fn restore_checks_the_file_and_keeps_the_old_database_aside() {
    let mut app = TestApp::spawn().await;
    let agent = app.agent("r").await;
    let id = agent.instance_id().await;
    let first = app
        .run_to_end(&RunCommandRequest::shell(vec![id.clone()], "echo before the backup"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.db");
    let data_dir = app.data.path().to_str().unwrap().to_string();
    let backup = fleetrun(&["backup", "--data-dir", &data_dir, "--to", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(backup.status.success(), "{:?}", text(&backup));
    let after = app
        .run_to_end(&RunCommandRequest::shell(vec![id.clone()], "echo after the backup"))
        .await;

    // Not a database, and not fleetrun's: refused before anything is touched.
    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        "not a database at all, just some text that is long enough\n".repeat(100),
    )
    .unwrap();
    let foreign = dir.path().join("foreign.db");
    {
        use sqlx::Connection as _;
        let url = format!("sqlite://{}?mode=rwc", foreign.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE t (x)").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
    for (bad, why) in [(&junk, "SQLite cannot read it"), (&foreign, "not a fleetrun database")] {
        let refused = fleetrun(&["restore", "--data-dir", &data_dir, "--from", bad.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        let (_, stderr) = text(&refused);
        assert!(!refused.status.success());
        assert!(stderr.contains(why), "{why}: {stderr}");
    }

    // With the server stopped, the backup goes back in and the old database is kept aside.
    let data = std::mem::replace(&mut app.data, tempfile::tempdir().unwrap());
    drop(agent);
    drop(app);
    let restore = eventually(Duration::from_secs(30), "the stopped server to let go", || async {
        let out = fleetrun(&["restore", "--data-dir", &data_dir, "--from", file.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        out.status.success().then_some(out)
    })
    .await;
    let (stdout, _) = text(&restore);
    let aside = stdout
        .split("the previous database is now ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(Path::new(aside).is_file(), "{aside}");
    // A second restore at once keeps the first one's aside too.
    let twice = fleetrun(&["restore", "--data-dir", &data_dir, "--from", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&twice);
    assert!(twice.status.success(), "{stderr}");
    let second_aside = stdout
        .split("the previous database is now ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_ne!(second_aside, aside);
    assert!(Path::new(aside).is_file() && Path::new(second_aside).is_file());
    let mode = std::fs::metadata(data.path().join("fleetrun.db"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let restored = TestApp::spawn_in(data, &[]).await;
    let shown = restored.client.invocation(&first.invoke_id).await.unwrap();
    assert_eq!(shown.results.unwrap()[0].output, "before the backup\n");
    assert!(
        restored.client.invocation(&after.invoke_id).await.is_err(),
        "what came after the backup is gone"
    );
}

#[tokio::test]
async fn backup_and_restore_of_postgresql_print_the_pg_dump_and_pg_restore_commands() {
    let url = "postgres://fleet:s3cret@db.example:5432/fleet";
    let backup = fleetrun(&["backup", "--database-url", url, "--to", "/tmp/fleet.dump"])
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&backup);
    assert_eq!(backup.status.code(), Some(2), "nothing was backed up: {stderr}");
    assert!(
        stderr.contains("pg_dump --format=custom --file=/tmp/fleet.dump 'postgres://fleet@db.example:5432/fleet'"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    let restore = fleetrun(&["restore", "--database-url", url, "--from", "/tmp/fleet.dump"])
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&restore);
    assert_eq!(restore.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pg_restore --clean --if-exists --no-owner --dbname='postgres://fleet@db.example:5432/fleet' /tmp/fleet.dump"),
        "{stderr}"
    );
}
