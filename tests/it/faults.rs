//! Faults of the server's side (issue 11): a disk that fills up under the database, an agent
//! frozen while a command is sent to it, watchers that stop reading. Each test injects the real
//! fault: a small tmpfs, SIGSTOP/SIGCONT, sockets nobody reads.

use crate::helpers::*;
use fleetrun::client::ApiClient;
use fleetrun::protocol::api::{InvocationResult, RunCommandRequest, StreamEvent};
use futures_util::StreamExt as _;
use reqwest::Method;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// A tmpfs of a few MiB mounted on a temporary directory: a disk that fills up on demand.
/// Unmounted on drop, even when the test fails.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (the CI machine runs as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The length of what `seq 1 n` prints.
fn seq_bytes(n: u64) -> u64 {
    let mut total = 0;
    let mut low = 1;
    while low <= n {
        let high = (low * 10 - 1).min(n);
        total += (high - low + 1) * (low.to_string().len() as u64 + 1);
        low *= 10;
    }
    total
}

/// The result of `instance_id` in an invocation.
async fn result_of(client: &ApiClient, invoke_id: &str, instance_id: &str) -> InvocationResult {
    let invocation = client.invocation(invoke_id).await.unwrap();
    invocation
        .results
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.instance_id == instance_id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_and_everything_recovers_without_a_restart() {
    let disk = SmallDisk::mount(20);
    let app = TestApp::spawn_in(tempfile::tempdir_in(disk.path()).unwrap(), &[]).await;
    let agent = app.agent("local").await;
    let id = agent.instance_id().await;

    // About 40 s of steady output, so the disk fills and empties while it streams.
    let script = "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo \"line $i of the stream\"; sleep 0.1; done";
    let mut req = RunCommandRequest::shell(vec![id.clone()], script);
    req.spec.timeout_secs = 120;
    let streaming = app.client.run(&req).await.unwrap().invoke_id;
    app.wait_result(&streaming, &id, "Running").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let filler = disk.fill();
    let full_at = Instant::now();
    // Writes fail once SQLite needs a page it cannot get: a 503 that says so, never a 500.
    let probe = RunCommandRequest::shell(vec![id.clone()], "echo probe");
    let refusal = eventually(
        Duration::from_secs(15),
        "a write to be refused as disk full",
        || async {
            let response = app
                .client
                .raw(
                    Method::POST,
                    "/invocations",
                    Some(&serde_json::to_value(&probe).unwrap()),
                )
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            assert_ne!(status, 500, "a full disk must not be an internal error: {body}");
            (status == 503).then_some(body)
        },
    )
    .await;
    assert_eq!(refusal["code"], "ServiceUnavailable.DiskFull", "{refusal}");
    assert!(
        refusal["message"].as_str().unwrap().contains("disk is full"),
        "{refusal}"
    );
    // Full for 15 s in all, while the command keeps printing.
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(full_at.elapsed())).await;
    std::fs::remove_file(filler).unwrap();
    let freed_at = Instant::now();

    // No restart: the writer's retries, the sweeper and new runs all recover by themselves.
    let created = eventually(Duration::from_secs(30), "a new run to be accepted", || async {
        app.client
            .run(&RunCommandRequest::shell(vec![id.clone()], "echo after"))
            .await
            .ok()
    })
    .await;
    let after = app.wait_done(&created.invoke_id, Duration::from_secs(30)).await;
    assert_eq!(after.invocation_status.as_str(), "Success");
    let done = app.wait_done(&streaming, Duration::from_secs(60)).await;
    assert_eq!(done.invocation_status.as_str(), "Success");
    let output = app.client.output(&streaming, &id).await.unwrap();
    let expected: String = (1..=400).map(|i| format!("line {i} of the stream\n")).collect();
    assert_eq!(String::from_utf8_lossy(&output), expected, "every line once, in order");
    println!(
        "disk full for 15 s; the stream ended {:.1} s after space returned",
        freed_at.elapsed().as_secs_f64()
    );
    drop(app);
    drop(agent);
}

fn signal(agent: &AgentProcess, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(agent.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
}

/// Freezes an agent (SIGSTOP) from before a command is sent to it until `frozen` has passed,
/// then resumes it. The command appends to a file, so running is seen whatever is reported.
async fn send_to_frozen_agent(app: &TestApp, agent: &AgentProcess, frozen: Duration) -> (String, PathBuf) {
    let id = agent.instance_id().await;
    let marks = tempfile::tempdir().unwrap().keep();
    let mark = marks.join("ran");
    signal(agent, nix::sys::signal::Signal::SIGSTOP);
    let script = format!("echo ran >> {}; echo ran", mark.display());
    let invoke_id = app
        .client
        .run(&RunCommandRequest::shell(vec![id], &script))
        .await
        .unwrap()
        .invoke_id;
    tokio::time::sleep(frozen).await;
    signal(agent, nix::sys::signal::Signal::SIGCONT);
    (invoke_id, mark)
}

fn runs(mark: &Path) -> usize {
    std::fs::read_to_string(mark).map_or(0, |text| text.lines().count())
}

/// Frozen past the delivery window (and the margin the server gives a sent task): the command
/// is `Aborted` as sent but never acknowledged, and it never runs, not even when the agent wakes
/// up and finds the task in its socket. (The case is 120 s with the default 60 s window
/// and 20 s heartbeats; here the same fault with every duration scaled down: 1 s heartbeats,
/// a 4 s window, a 20 s freeze.)
#[tokio::test(flavor = "multi_thread")]
async fn a_command_aborted_while_its_agent_was_frozen_never_runs() {
    let app = TestApp::spawn_with(&["--delivery-window-secs", "4"]).await;
    let agent = app.agent("local").await;
    let id = agent.instance_id().await;
    let (invoke_id, mark) = send_to_frozen_agent(&app, &agent, Duration::from_secs(20)).await;

    let result = result_of(&app.client, &invoke_id, &id).await;
    assert_eq!(result.invocation_status.as_str(), "Aborted");
    assert_eq!(
        result.error_code.map(|c| c.as_str()),
        Some("ClientNotResponse"),
        "sent but never acknowledged is not 'the agent is not running': {:?}",
        result.error_info
    );
    // Awake again and reconnected: it must not act on the task it finds.
    agent.wait_online(&app).await;
    let later = app
        .run_to_end(&RunCommandRequest::shell(vec![id.clone()], "echo awake"))
        .await;
    assert_eq!(later.invocation_status.as_str(), "Success");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs(&mark), 0, "an Aborted command ran");
    let result = result_of(&app.client, &invoke_id, &id).await;
    assert_eq!(
        result.invocation_status.as_str(),
        "Aborted",
        "the record stays as reported"
    );
}

/// Frozen long enough for the server to drop the connection, but inside the delivery window:
/// the agent does not trust what it finds in the dead socket; the task comes again on the new
/// connection and runs exactly once, reported with its real status.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_sent_to_a_briefly_frozen_agent_runs_once_and_is_reported() {
    let app = TestApp::spawn_with(&["--delivery-window-secs", "60"]).await;
    let agent = app.agent("local").await;
    let id = agent.instance_id().await;
    let (invoke_id, mark) = send_to_frozen_agent(&app, &agent, Duration::from_secs(6)).await;

    let done = app.wait_done(&invoke_id, Duration::from_secs(30)).await;
    assert_eq!(done.invocation_status.as_str(), "Success");
    let result = result_of(&app.client, &invoke_id, &id).await;
    assert_eq!(result.output, "ran\n");
    assert_eq!(runs(&mark), 1, "ran exactly once");
}

/// Opens a JSON live stream of an invocation as the admin.
async fn open_stream(
    url: &str,
    invoke_id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use base64::Engine as _;
    let ws = format!(
        "{}/api/v1/invocations/{invoke_id}/stream",
        url.replacen("http", "ws", 1)
    );
    let mut request = ws.into_client_request().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
    request
        .headers_mut()
        .insert("authorization", format!("Basic {auth}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// Whether `text` is `n` in decimal, without formatting `n` (17 million times in a debug build).
fn is_number(text: &[u8], mut n: u64) -> bool {
    for digit in text.iter().rev() {
        if n == 0 || u64::from(digit.wrapping_sub(b'0')) != n % 10 {
            return false;
        }
        n /= 10;
    }
    n == 0
}

/// Bytes each command prints: `seq` up to this many lines is about 150 MB.
const LINES: u64 = 17_400_000;

/// Four watchers that never read, on four invocations printing 150 MB each: the server's
/// memory stays bounded (each watcher's queue is bounded in bytes, and a watcher that cannot
/// be written to for long is dropped), while a fifth watcher that reads sees every byte.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_watchers_do_not_pin_memory_and_a_reading_watcher_sees_every_byte() {
    let server = ServerProcess::start(&["--heartbeat-secs", "1"]).await;
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
    let id = agent.instance_id().await;
    eventually(Duration::from_secs(20), "the agent to be online", || async {
        client.instance(&id).await.ok().filter(|i| i.agent.online)
    })
    .await;

    // Each command waits for its watchers, then prints ~150 MB in bursts of 0.9 MB, at a pace a
    // reading watcher (a debug build, on a busy 2-core machine) keeps up with: a watcher slower
    // than the output lags by design, and then catches up from the store's head and tail.
    let go = tempfile::tempdir().unwrap();
    let script = format!(
        "while [ ! -e {go}/go ]; do sleep 0.1; done; b=0; while [ $b -lt 174 ]; do \
         seq $((b*100000+1)) $((b*100000+100000)); b=$((b+1)); sleep 0.3; done",
        go = go.path().display()
    );
    let mut invocations = Vec::new();
    for _ in 0..4 {
        let mut req = RunCommandRequest::shell(vec![id.clone()], &script);
        req.spec.timeout_secs = 600;
        invocations.push(client.run(&req).await.unwrap().invoke_id);
    }
    // Four stalled watchers, one per invocation: connected, never read.
    let mut stalled = Vec::new();
    for invoke_id in &invocations {
        stalled.push(open_stream(&server.url, invoke_id).await);
    }
    // The fifth reads the first invocation's stream to the end and checks every byte.
    let reader = {
        let (url, invoke_id) = (server.url.clone(), invocations[0].clone());
        tokio::spawn(async move {
            let mut socket = open_stream(&url, &invoke_id).await;
            let mut next_line = 1u64;
            let mut partial = Vec::new();
            let mut offset = 0u64;
            while let Some(message) = socket.next().await {
                let tokio_tungstenite::tungstenite::Message::Text(text) = message.unwrap() else {
                    continue;
                };
                match serde_json::from_str::<StreamEvent>(&text).unwrap() {
                    StreamEvent::Output { offset: at, data, .. } => {
                        assert_eq!(at, offset, "a gap or a repeat in the live stream");
                        offset += data.len() as u64;
                        partial.extend_from_slice(&data);
                        let complete = partial.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                        for line in partial[..complete].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            assert!(is_number(line, next_line), "out of order at line {next_line}");
                            next_line += 1;
                        }
                        partial.drain(..complete);
                    }
                    StreamEvent::Done { .. } => break,
                    StreamEvent::Status { .. } => {}
                }
            }
            (next_line - 1, offset)
        })
    };
    std::fs::write(go.path().join("go"), b"").unwrap();

    let mut peak_rss = 0;
    let started = Instant::now();
    let mut done = false;
    while !done {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak_rss = peak_rss.max(server.memory_kib().0);
        done = reader.is_finished();
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the reading watcher never finished"
        );
    }
    let (lines, bytes) = reader.await.unwrap();
    assert_eq!(lines, LINES, "the reading watcher saw every line");
    assert_eq!(bytes, seq_bytes(LINES));
    for invoke_id in &invocations {
        let inv = eventually(Duration::from_secs(120), "every command to finish", || async {
            let inv = client.invocation(invoke_id).await.ok()?;
            inv.invocation_status.is_terminal().then_some(inv)
        })
        .await;
        assert_eq!(inv.invocation_status.as_str(), "Success");
    }
    let (_, hwm) = server.memory_kib();
    println!(
        "server memory with 4 stalled watchers on 4 x 150 MB: peak RSS {} MiB (sampled {} MiB)",
        hwm / 1024,
        peak_rss / 1024
    );
    assert!(
        hwm < 200 * 1024,
        "the server's peak RSS was {} MiB (limit 200 MiB)",
        hwm / 1024
    );
    drop(stalled);
    drop(agent);
}
