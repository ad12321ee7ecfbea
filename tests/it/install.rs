//! The agent as a service and the one-line install (issue 16): `fleetrun-agent install` and the
//! lifecycle commands on a machine where systemd does not run (as here and in CI), the unit
//! checked by `systemd-analyze verify`, and the Activations page's `curl … | sh` line run against
//! a real server, then a damaged download refused.

use crate::helpers::*;
use fleetrun::protocol::PROTOCOL_VERSION;
use fleetrun::protocol::api::RunCommandRequest;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;
use tokio::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_fleetrun-agent");

/// `fleetrun-agent ARGS`, with its unit directory in `dir` and systemd's run directory (whose
/// presence says that systemd runs the machine) at `dir/run-systemd`, which a test creates or
/// not: nothing touches this machine's own systemd.
fn agent_cli(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(AGENT);
    command
        .args(args)
        .env("FLEETRUN_UNIT_DIR", dir.join("units"))
        .env("FLEETRUN_SYSTEMD_RUN_DIR", dir.join("run-systemd"))
        .env_remove("FLEETRUN_ACTIVATION_CODE")
        .env_remove("FLEETRUN_SERVER")
        .env_remove("FLEETRUN_STATE_DIR");
    command
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn install_writes_a_unit_systemd_accepts_a_private_state_and_the_lifecycle_says_systemd_is_not_running() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.display().to_string();

    let install = agent_cli(
        dir.path(),
        &[
            "install",
            "--server",
            &app.url,
            "--activation-id",
            &activation.activation_id,
        ],
    )
    .args(["--state-dir", &state_arg, "--name", "web-1", "--tag", "env=test"])
    .args(["--kill-grace-secs", "1"])
    .env("FLEETRUN_ACTIVATION_CODE", &activation.activation_code)
    .output()
    .await
    .unwrap();

    let (stdout, stderr) = text(&install);
    assert!(install.status.success(), "{stdout}{stderr}");
    let foreground = format!(
        "{AGENT} --state-dir {state_arg} --server {} --kill-grace-secs 1",
        app.url
    );
    assert!(stdout.contains("systemd is not running on this machine"), "{stdout}");
    assert!(stdout.contains(&format!("\n  {foreground}")), "{stdout}");
    let unit_path = dir.path().join("units/fleetrun-agent.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(unit.contains(&format!("\nExecStart={foreground}\n")), "{unit}");
    for line in ["KillMode=process", "Restart=on-failure", "Delegate=yes"] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    assert!(
        !unit.contains(&activation.activation_code),
        "the code stays out of the unit"
    );
    assert_eq!(mode(&unit_path), 0o644);
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze (Debian's `systemd` package; .ci/run installs it)");
    let (verified, complaints) = text(&verify);
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {verified}{complaints}"
    );
    assert!(
        !complaints.contains("fleetrun-agent"),
        "systemd-analyze verify complains: {complaints}"
    );
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("identity.json")), 0o600);
    let identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("identity.json")).unwrap()).unwrap();
    let instance = app
        .client
        .instance(identity["instance_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(instance.name, "web-1");

    for verb in ["start", "stop", "restart", "status"] {
        let output = agent_cli(dir.path(), &[verb]).output().await.unwrap();
        let (stdout, stderr) = text(&output);
        assert!(
            !output.status.success(),
            "{verb} without systemd fails: {stdout}{stderr}"
        );
        assert!(
            stderr.contains("systemd is not running on this machine"),
            "{verb}: {stderr}"
        );
        assert!(
            stderr.contains(&foreground),
            "{verb} prints the command to run: {stderr}"
        );
    }

    let uninstall = agent_cli(dir.path(), &["uninstall", "--purge"]).output().await.unwrap();
    let (stdout, stderr) = text(&uninstall);
    assert!(uninstall.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("systemd is not running on this machine"), "{stdout}");
    assert!(!unit_path.exists());
    assert!(!state.exists(), "--purge removes the state directory the unit named");
}

/// A `systemctl` stand-in in `dir/bin`, first on the returned `PATH`: it records each call in
/// `dir/calls` and answers `status` with 3 (inactive), as systemctl does for a stopped unit.
/// No test machine runs systemd; this checks what the agent asks of it.
fn fake_systemctl(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\n[ \"$1\" = status ] && exit 3\nexit 0\n",
        dir.join("calls").display()
    );
    std::fs::write(bin.join("systemctl"), script).unwrap();
    std::fs::set_permissions(bin.join("systemctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

fn calls(dir: &Path) -> Vec<String> {
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    let calls = calls.lines().map(String::from).collect();
    std::fs::remove_file(dir.join("calls")).ok();
    calls
}

#[tokio::test]
async fn where_systemd_runs_install_enables_and_restarts_the_unit_and_the_lifecycle_is_systemctls() {
    let app = TestApp::spawn().await;
    let activation = app.activation("local", 1).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run-systemd")).unwrap();
    let path = fake_systemctl(dir.path());
    let state = dir.path().join("state").display().to_string();

    let install = agent_cli(
        dir.path(),
        &[
            "install",
            "--server",
            &app.url,
            "--activation-id",
            &activation.activation_id,
        ],
    )
    .args(["--state-dir", &state])
    .env("FLEETRUN_ACTIVATION_CODE", &activation.activation_code)
    .env("PATH", &path)
    .output()
    .await
    .unwrap();

    let (stdout, stderr) = text(&install);
    assert!(install.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("is enabled and started"), "{stdout}");
    assert_eq!(
        calls(dir.path()),
        [
            "daemon-reload",
            "enable fleetrun-agent.service",
            "restart fleetrun-agent.service"
        ]
    );
    let status = agent_cli(dir.path(), &["status"])
        .env("PATH", &path)
        .output()
        .await
        .unwrap();
    assert_eq!(status.status.code(), Some(3), "systemctl's exit code is passed on");
    assert_eq!(calls(dir.path()), ["status fleetrun-agent.service --no-pager"]);
    for verb in ["start", "stop", "restart"] {
        let output = agent_cli(dir.path(), &[verb])
            .env("PATH", &path)
            .output()
            .await
            .unwrap();
        assert!(output.status.success());
        assert_eq!(calls(dir.path()), [format!("{verb} fleetrun-agent.service")]);
    }
    let uninstall = agent_cli(dir.path(), &["uninstall"])
        .env("PATH", &path)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&uninstall);
    assert!(uninstall.status.success(), "{stdout}{stderr}");
    assert_eq!(
        calls(dir.path()),
        ["disable --now fleetrun-agent.service", "daemon-reload"]
    );
    assert!(!dir.path().join("units/fleetrun-agent.service").exists());
    assert!(
        Path::new(&state).join("identity.json").exists(),
        "without --purge the credential stays"
    );
}

#[tokio::test]
async fn uninstall_purge_refuses_a_directory_that_is_not_the_agents_state() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("home");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();

    let output = agent_cli(dir.path(), &["uninstall", "--purge", "--state-dir"])
        .arg(&other)
        .output()
        .await
        .unwrap();

    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("is not the agent's state directory"), "{stderr}");
    assert!(other.join("notes.txt").exists());
}

/// The install line shown on the Activations page, from the page's HTML.
fn install_line(html: &str) -> String {
    let start = html
        .find("id=\"install-line\">")
        .expect("the page shows the install line")
        + "id=\"install-line\">".len();
    let end = start + html[start..].find("</pre>").unwrap();
    html[start..end]
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn the_activations_pages_install_line_installs_and_enrols_and_the_installed_agent_runs_a_command() {
    let app = TestApp::spawn_with(&["--agent-binary", AGENT]).await;
    let console = Console::login(&app).await;
    let created = console
        .post_form(
            "/console/activations",
            form(&[
                ("region_id", "local"),
                ("instance_count_limit", "1"),
                ("ttl_hours", "1"),
                ("instance_name", "installed-1"),
            ]),
        )
        .await
        .unwrap();
    let line = install_line(&created.text);
    assert!(
        line.starts_with(&format!(
            "curl -fsSL {}/install.sh | sh -s -- --activation-id act-",
            app.url
        )),
        "{line}"
    );
    let bin = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();

    let install = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{line} --bin-dir '{}' --state-dir '{}' --no-service",
            bin.path().display(),
            state.path().display()
        ))
        .env_remove("FLEETRUN_ACTIVATION_CODE")
        .output()
        .await
        .unwrap();

    let (stdout, stderr) = text(&install);
    assert!(install.status.success(), "{stdout}{stderr}");
    let installed = bin.path().join("fleetrun-agent");
    assert_eq!(
        sha256(&std::fs::read(&installed).unwrap()),
        sha256(&std::fs::read(AGENT).unwrap()),
        "the installed agent is the server's"
    );
    assert_eq!(mode(&installed), 0o755);
    assert_eq!(
        std::fs::read_dir(bin.path()).unwrap().count(),
        1,
        "nothing else is left in the bin directory"
    );
    let foreground = format!(
        "{} --state-dir {} --server {}",
        installed.display(),
        state.path().display(),
        app.url
    );
    assert!(stdout.contains(&foreground), "{stdout}");
    let agent = AgentProcess {
        child: Command::new(&installed)
            .args(["--server", &app.url, "--state-dir"])
            .arg(state.path())
            .env("FLEETRUN_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
        state,
        protocol: PROTOCOL_VERSION,
    };
    agent.wait_online(&app).await;
    let id = agent.instance_id().await;
    assert_eq!(app.client.instance(&id).await.unwrap().name, "installed-1");
    let invocation = app
        .run_to_end(&RunCommandRequest::shell(vec![id], "echo installed $((6 * 7))"))
        .await;
    assert_eq!(invocation.results.unwrap()[0].output, "installed 42\n");
}

#[tokio::test]
async fn the_binary_is_served_with_its_sha256_and_a_missing_one_is_a_404_that_says_how_to_provide_it() {
    let app = TestApp::spawn_with(&["--agent-binary", AGENT]).await;
    let missing = TestApp::spawn_with(&["--agent-binary", "/nonexistent/fleetrun-agent"]).await;
    let http = reqwest::Client::new();
    let expected = sha256(&std::fs::read(AGENT).unwrap());

    let binary = http
        .get(format!("{}/download/fleetrun-agent", app.url))
        .send()
        .await
        .unwrap();
    let checksum = http
        .get(format!("{}/download/fleetrun-agent.sha256", app.url))
        .send()
        .await
        .unwrap();
    let script = http.get(format!("{}/install.sh", app.url)).send().await.unwrap();
    let absent = http
        .get(format!("{}/download/fleetrun-agent", missing.url))
        .send()
        .await
        .unwrap();

    assert_eq!(binary.status(), 200);
    assert_eq!(binary.headers()["x-checksum-sha256"], expected.as_str());
    assert_eq!(sha256(&binary.bytes().await.unwrap()), expected);
    assert_eq!(checksum.text().await.unwrap(), format!("{expected}  fleetrun-agent\n"));
    assert_eq!(script.headers()["content-type"], "text/plain; charset=utf-8");
    let script = script.text().await.unwrap();
    assert!(script.starts_with("#!/bin/sh\n"));
    assert!(script.contains(&format!("\n    server='{}'\n", app.url)), "{script}");
    assert_eq!(absent.status(), 404);
    assert!(absent.text().await.unwrap().contains("--agent-binary PATH"));
    let dir = tempfile::tempdir().unwrap();
    let refused = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -fsSL {}/install.sh | sh -s -- --activation-id act-x --activation-code x --no-service \
             --bin-dir '{}/bin' --state-dir '{}/state'",
            missing.url,
            dir.path().display(),
            dir.path().display()
        ))
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&refused);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("/download/fleetrun-agent answered HTTP 404: This fleetrun server has no agent binary"),
        "the script passes on what the server lacks: {stderr}"
    );
}

/// A proxy to `upstream` that flips the last byte of the agent binary on its way through.
async fn damaging_proxy(upstream: String) -> String {
    use axum::http::{StatusCode, Uri};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let upstream = upstream.clone();
        async move {
            let response = reqwest::get(format!("{upstream}{uri}")).await.unwrap();
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let mut body = response.bytes().await.unwrap().to_vec();
            if uri.path() == "/download/fleetrun-agent" {
                *body.last_mut().unwrap() ^= 0xff;
            }
            (status, body)
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn a_damaged_download_fails_the_install_and_installs_nothing() {
    let app = TestApp::spawn_with(&["--agent-binary", AGENT]).await;
    let activation = app.activation("local", 1).await;
    let proxy = damaging_proxy(app.url.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (bin, state) = (dir.path().join("bin"), dir.path().join("state"));

    let install = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -fsSL {proxy}/install.sh | sh -s -- --server {proxy} --activation-id {} --activation-code {} \
             --bin-dir '{}' --state-dir '{}' --no-service",
            activation.activation_id,
            activation.activation_code,
            bin.display(),
            state.display()
        ))
        .output()
        .await
        .unwrap();

    let (stdout, stderr) = text(&install);
    assert!(!install.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("the download is damaged"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&bin).unwrap().count(),
        0,
        "nothing is left in the bin directory"
    );
    assert!(!state.exists(), "nothing enrolled");
    assert_eq!(app.client.instances("").await.unwrap().total, 0);
}

#[tokio::test]
async fn under_tls_the_install_line_trusts_the_ca_file_and_the_agent_keeps_a_copy_of_it() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, ca) = private_ca_certificate(certs.path());
    let app = TestApp::spawn_tls_with(&cert, &key, &ca, &["--agent-binary", AGENT]).await;
    let tls = fleetrun::tls::client_config(Some(&ca)).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let console = Console::login_with(&app, http, "admin", PASSWORD).await;
    let created = console
        .post_form(
            "/console/activations",
            form(&[
                ("region_id", "local"),
                ("instance_count_limit", "1"),
                ("ttl_hours", "1"),
            ]),
        )
        .await
        .unwrap();
    let line = install_line(&created.text);
    assert!(
        line.starts_with(&format!(
            "curl -fsSL --cacert fleetrun-ca.pem {}/install.sh | sh -s -- --ca-file fleetrun-ca.pem --activation-id act-",
            app.url
        )),
        "{line}"
    );
    let work = tempfile::tempdir().unwrap();
    std::fs::copy(&ca, work.path().join("fleetrun-ca.pem")).unwrap();
    let bin = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();

    let install = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{line} --bin-dir '{}' --state-dir '{}' --no-service",
            bin.path().display(),
            state.path().display()
        ))
        .current_dir(work.path())
        .output()
        .await
        .unwrap();

    let (stdout, stderr) = text(&install);
    assert!(install.status.success(), "{stdout}{stderr}");
    let copy = state.path().join("ca.pem");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&ca).unwrap());
    assert!(stdout.contains(&format!("--ca-file {}", copy.display())), "{stdout}");
    let agent = AgentProcess {
        child: Command::new(bin.path().join("fleetrun-agent"))
            .args(["--server", &app.url, "--state-dir"])
            .arg(state.path())
            .arg("--ca-file")
            .arg(&copy)
            .env("FLEETRUN_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
        state,
        protocol: PROTOCOL_VERSION,
    };
    agent.wait_online(&app).await;
}
