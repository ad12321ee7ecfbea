//! Test harness: a real server on a loopback port (in this process, or a `fleetrun serve`
//! process that can be killed), real `fleetrun-agent` processes, a TCP proxy that can cut
//! connections, and polling with deadlines (no fixed sleeps).

use clap::Parser as _;
use fleetrun::client::{ApiClient, Credentials};
use fleetrun::config::{Cli, Mode};
use fleetrun::protocol::PROTOCOL_VERSION;
use fleetrun::protocol::api::{ActivationCreated, CreateActivationRequest, Invocation, RunCommandRequest};
use fleetrun::store::scratch::ScratchDatabase;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap};
use serde_json::{Value, json};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const PASSWORD: &str = "test-admin-password";

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The database a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the server's data directory (the default).
    Sqlite,
    /// A fresh database of its own on the test PostgreSQL (`fleetrun::store::scratch`).
    Postgres,
}

/// A server running in this process on a loopback port, stopped on drop.
pub struct TestApp {
    pub url: String,
    pub client: ApiClient,
    pub data: tempfile::TempDir,
    /// The PostgreSQL database, shared with its replicas and dropped after the last of them.
    pub database: Option<Arc<ScratchDatabase>>,
    shutdown: CancellationToken,
}

impl TestApp {
    /// A server with a 1 s heartbeat (agents are lost after 3 s) and the given extra flags,
    /// which may set `--heartbeat-secs` or `--timeout-grace-secs` otherwise.
    pub async fn spawn_with(extra: &[&str]) -> TestApp {
        TestApp::start(tempfile::tempdir().unwrap(), extra, None).await
    }

    /// [`TestApp::spawn_with`] on the given backend.
    pub async fn spawn_on(backend: Backend, extra: &[&str]) -> TestApp {
        match backend {
            Backend::Sqlite => TestApp::spawn_with(extra).await,
            Backend::Postgres => {
                let database = ScratchDatabase::create().await.unwrap_or_else(|e| panic!("{e}"));
                TestApp::replica_on(Arc::new(database), extra).await
            }
        }
    }

    /// Another server (a replica) on this one's PostgreSQL database, sharing its secret key
    /// file as replicas must (unless `extra` names another).
    pub async fn replica(&self, extra: &[&str]) -> TestApp {
        let database = self.database.clone().expect("replicas share a PostgreSQL database");
        let key_file = self.data.path().join("secret.key").display().to_string();
        let mut args = Vec::from(extra);
        if !extra.contains(&"--secret-key-file") {
            args.extend(["--secret-key-file", &key_file]);
        }
        TestApp::replica_on(database, &args).await
    }

    async fn replica_on(database: Arc<ScratchDatabase>, extra: &[&str]) -> TestApp {
        let mut args = vec!["--database-url", database.url.as_str()];
        args.extend(extra);
        let mut app = TestApp::start(tempfile::tempdir().unwrap(), &args, None).await;
        app.database = Some(database);
        app
    }

    /// [`TestApp::spawn_with`] keeping its data (the database) in `data`.
    pub async fn spawn_in(data: tempfile::TempDir, extra: &[&str]) -> TestApp {
        TestApp::start(data, extra, None).await
    }

    /// A server on HTTPS with the given certificate and key, trusted through `ca_file` as
    /// `--ca-file` trusts it.
    pub async fn spawn_tls(cert: &Path, key: &Path, ca_file: &Path) -> TestApp {
        TestApp::spawn_tls_with(cert, key, ca_file, &[]).await
    }

    /// [`TestApp::spawn_tls`] with extra flags.
    pub async fn spawn_tls_with(cert: &Path, key: &Path, ca_file: &Path, extra: &[&str]) -> TestApp {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let data = tempfile::tempdir().unwrap();
        let args = [&["--tls-cert", cert.as_str(), "--tls-key", key.as_str()], extra].concat();
        TestApp::start(data, &args, Some(ca_file)).await
    }

    async fn start(data: tempfile::TempDir, extra: &[&str], ca_file: Option<&Path>) -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let data_dir = data.path().display().to_string();
        let mut args = vec!["fleetrun", "serve", "--listen", &address, "--data-dir", &data_dir];
        args.extend(["--admin-password", PASSWORD]);
        // Short defaults, unless the test passes the flag itself.
        for (flag, value) in [("--heartbeat-secs", "1"), ("--timeout-grace-secs", "5")] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend(extra);
        let Mode::Serve(serve) = Cli::parse_from(args).mode else {
            unreachable!()
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(fleetrun::server::run(serve, listener, shutdown.clone()));
        let credentials = Credentials::Basic {
            username: "admin".into(),
            password: PASSWORD.into(),
        };
        let (url, http, client) = match ca_file {
            Some(ca_file) => {
                let tls = fleetrun::tls::client_config(Some(ca_file)).unwrap();
                let http = reqwest::Client::builder()
                    .use_preconfigured_tls((*tls).clone())
                    .build()
                    .unwrap();
                let url = format!("https://localhost:{}", address.rsplit(':').next().unwrap());
                let client = ApiClient::with_tls(&url, credentials, tls).unwrap();
                (url, http, client)
            }
            None => {
                let url = format!("http://{address}");
                let http = reqwest::Client::new();
                let client = ApiClient::with_http(&url, credentials, http.clone());
                (url, http, client)
            }
        };
        let health = format!("{url}/healthz");
        eventually(Duration::from_secs(10), "the server to answer", || async {
            http.get(&health).send().await.ok().filter(|r| r.status().is_success())
        })
        .await;
        TestApp {
            url,
            client,
            data,
            database: None,
            shutdown,
        }
    }

    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(&[]).await
    }

    pub async fn activation(&self, region: &str, limit: u32) -> ActivationCreated {
        let req = CreateActivationRequest {
            region_id: region.into(),
            instance_count_limit: limit,
            ttl_hours: None,
            description: None,
        };
        self.client.create_activation(&req).await.unwrap()
    }

    /// `POST /api/v1{path}` with `body` as the admin, which must create something (201): the
    /// answer, e.g. a retained command or a token with its secret.
    pub async fn create(&self, path: &str, body: &Value) -> Value {
        let response = self.client.raw(Method::POST, path, Some(body)).await.unwrap();
        let status = response.status();
        let answer = response.text().await.unwrap();
        assert_eq!(status, 201, "POST {path} {body}: {answer}");
        serde_json::from_str(&answer).unwrap()
    }

    /// Enrols a real agent process in `local` that trusts `ca_file` (`--ca-file`); not waited for.
    pub async fn agent_trusting(&self, ca_file: &Path) -> AgentProcess {
        let activation = self.activation("local", 1).await;
        let state = tempfile::tempdir().unwrap();
        let mut command = agent_command(&self.url, Some(&activation), state.path());
        command.arg("--ca-file").arg(ca_file);
        AgentProcess {
            child: command.spawn().unwrap(),
            state,
            protocol: PROTOCOL_VERSION,
        }
    }

    /// Enrols and starts a real agent process in `region`, and waits until it is online.
    pub async fn agent(&self, region: &str) -> AgentProcess {
        self.agent_speaking(region, PROTOCOL_VERSION).await
    }

    /// [`TestApp::agent`] offering protocol versions up to `protocol` only.
    pub async fn agent_speaking(&self, region: &str, protocol: u32) -> AgentProcess {
        let activation = self.activation(region, 1).await;
        let state = tempfile::tempdir().unwrap();
        let agent = AgentProcess::start_speaking(&self.url, Some(&activation), state, protocol);
        agent.wait_online(self).await;
        agent
    }

    /// Enrols `n` real agents in `region` at once, named `{prefix}-01`…, and waits until all are
    /// online. Returns them with their instance ids, in name order.
    pub async fn fleet(&self, region: &str, prefix: &str, n: u32) -> Vec<(AgentProcess, String)> {
        let activation = self.activation(region, n).await;
        let mut agents = Vec::new();
        for i in 1..=n {
            let state = tempfile::tempdir().unwrap();
            let mut command = agent_command(&self.url, Some(&activation), state.path());
            command.args(["--name", &format!("{prefix}-{i:02}")]);
            let child = command.spawn().expect("start fleetrun-agent");
            agents.push(AgentProcess {
                child,
                state,
                protocol: PROTOCOL_VERSION,
            });
        }
        let mut fleet = Vec::new();
        for agent in agents {
            let id = agent.instance_id().await;
            fleet.push((agent, id));
        }
        let query = format!("region_id={region}&status=Running&page_size=1000");
        eventually(Duration::from_secs(60), "the whole fleet to be online", || async {
            let list = self.client.instances(&query).await.ok()?;
            let online = list.instances.iter().filter(|i| i.agent.online).count();
            (online == n as usize).then_some(())
        })
        .await;
        fleet
    }

    /// Runs a command and waits until every result is terminal.
    pub async fn run_to_end(&self, req: &RunCommandRequest) -> Invocation {
        let created = self.client.run(req).await.unwrap();
        self.wait_done(&created.invoke_id, Duration::from_secs(30)).await
    }

    pub async fn wait_done(&self, invoke_id: &str, timeout: Duration) -> Invocation {
        eventually(timeout, "the invocation to finish", || async {
            let inv = self.client.invocation(invoke_id).await.unwrap();
            inv.invocation_status.is_terminal().then_some(inv)
        })
        .await
    }

    /// Waits until the instance's result in the invocation has the given status.
    pub async fn wait_result(&self, invoke_id: &str, instance_id: &str, status: &str) -> Invocation {
        eventually(
            Duration::from_secs(30),
            &format!("{instance_id} to be {status}"),
            || async {
                let inv = self.client.invocation(invoke_id).await.unwrap();
                let result = inv.results.as_ref()?.iter().find(|r| r.instance_id == instance_id)?;
                (result.invocation_status.as_str() == status).then_some(inv.clone())
            },
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A real `fleetrun-agent` process, killed on drop.
pub struct AgentProcess {
    pub child: Child,
    pub state: tempfile::TempDir,
    /// The newest protocol version it offers (`--max-protocol-version`), kept on restart.
    pub protocol: u32,
}

impl AgentProcess {
    pub fn start(server: &str, activation: Option<&ActivationCreated>, state: tempfile::TempDir) -> AgentProcess {
        AgentProcess::start_speaking(server, activation, state, PROTOCOL_VERSION)
    }

    /// Starts an agent that offers protocol versions up to `protocol` only: 1 makes it send
    /// every frame as JSON text, as agents from before version 2 do.
    pub fn start_speaking(
        server: &str,
        activation: Option<&ActivationCreated>,
        state: tempfile::TempDir,
        protocol: u32,
    ) -> AgentProcess {
        let child = agent_command(server, activation, state.path())
            .arg(format!("--max-protocol-version={protocol}"))
            .spawn()
            .expect("start fleetrun-agent");
        AgentProcess { child, state, protocol }
    }

    /// The instance id the agent stored after enrolling.
    pub async fn instance_id(&self) -> String {
        self.enrolled_within(Duration::from_secs(10)).await
    }

    /// [`AgentProcess::instance_id`], waiting up to `timeout` for the enrolment (many agents
    /// enrolling at once take their time on a loaded machine).
    pub async fn enrolled_within(&self, timeout: Duration) -> String {
        let path = self.state.path().join("identity.json");
        eventually(timeout, "the agent to enrol", || async {
            let text = std::fs::read_to_string(&path).ok()?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            value["instance_id"].as_str().map(String::from)
        })
        .await
    }

    pub async fn wait_online(&self, app: &TestApp) {
        let id = self.instance_id().await;
        eventually(Duration::from_secs(10), "the agent to be online", || async {
            let instance = app.client.instance(&id).await.ok()?;
            (instance.agent.online && format!("{:?}", instance.status) == "Running").then_some(())
        })
        .await;
    }

    /// Kills the agent with SIGKILL, as a crash would.
    pub async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Starts the agent again on the same state directory (no activation needed).
    pub fn restart(&mut self, server: &str) {
        self.child = agent_command(server, None, self.state.path())
            .arg(format!("--max-protocol-version={}", self.protocol))
            .spawn()
            .expect("restart fleetrun-agent");
    }
}

impl Drop for AgentProcess {
    /// Kills the agent, and removes what it keeps across restarts and so would leave behind:
    /// its script directory in the temp dir, and the cgroups of its tasks with what still runs
    /// in them (a command cut off by the kill, a background process).
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let identity = std::fs::read_to_string(self.state.path().join("identity.json")).unwrap_or_default();
        let id = serde_json::from_str::<Value>(&identity)
            .ok()
            .and_then(|v| v["instance_id"].as_str().map(String::from));
        if let Some(id) = id {
            let _ = std::fs::remove_dir_all(script_dir(&id));
            remove_task_cgroups(&id);
        }
    }
}

/// Where the agent with this instance id keeps its scripts.
pub fn script_dir(instance_id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fleetrun-agent-{instance_id}"))
}

/// The cgroup v2 mount and the cgroup of this process (which the agents it starts are in), as
/// `/proc/self/mountinfo` and `/proc/self/cgroup` tell them; `None` without cgroup v2.
pub fn cgroup_v2() -> Option<(PathBuf, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        filesystem
            .starts_with("cgroup2 ")
            .then(|| mount.split(' ').nth(4).map(PathBuf::from))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
    Some((mount, own))
}

/// Kills what is left in the task cgroups of agent `instance_id` and removes them.
fn remove_task_cgroups(instance_id: &str) {
    let Some((mount, own)) = cgroup_v2() else {
        return;
    };
    let parent = mount.join(own.trim_start_matches('/')).join("fleetrun");
    let prefix = format!("{instance_id}.");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let cgroup = entry.path();
        let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
        for _ in 0..100 {
            let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
            if !events.contains("populated 1") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&cgroup);
    }
}

pub fn agent_command(server: &str, activation: Option<&ActivationCreated>, state: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetrun-agent"));
    command
        .args([
            "--server",
            server,
            "--reconnect-max-secs",
            "1",
            "--kill-grace-secs",
            "1",
        ])
        .arg("--state-dir")
        .arg(state)
        // `FLEETRUN_TEST_AGENT_LOG=debug cargo test …` shows what the agents did.
        .env(
            "FLEETRUN_LOG",
            std::env::var("FLEETRUN_TEST_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true);
    if let Some(a) = activation {
        command.args([
            "--activation-id",
            &a.activation_id,
            "--activation-code",
            &a.activation_code,
        ]);
    }
    command
}

/// `fleetrun serve` as a child process, killed on drop, for tests that kill a server as a crash
/// would (`reconnect`, `failover`, `replicas_faults`). Its data directory and logs outlive
/// restarts (one log file per start, for a failed test to show).
pub struct ServerProcess {
    child: Child,
    /// `127.0.0.1:port`, the same across restarts (unless restarted elsewhere with
    /// [`ServerProcess::restart_at`]).
    address: String,
    pub url: String,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    starts: u32,
}

impl ServerProcess {
    /// Starts a server on a port the kernel picks, with `extra` flags (kept on restart).
    pub async fn start(extra: &[&str]) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, address) = spawn_server(dir.path(), "127.0.0.1:0", &extra, 1).await;
        ServerProcess {
            child,
            url: format!("http://{address}"),
            address,
            dir,
            extra,
            starts: 1,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    pub fn client(&self) -> ApiClient {
        let credentials = Credentials::Basic {
            username: "admin".into(),
            password: PASSWORD.into(),
        };
        ApiClient::new(&self.url, credentials)
    }

    /// The log of the running start (stderr), for a failed test to show.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("server-{}.log", self.starts))).unwrap_or_default()
    }

    /// This start's id among the replicas sharing a database, as it logged it at start.
    pub fn replica_id(&self) -> String {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("listening on")).unwrap();
        let after = line
            .split("replica=")
            .nth(1)
            .expect("the replica id on the listening line");
        after.split_whitespace().next().unwrap().to_string()
    }

    /// SIGKILL, as a crash would: the kernel closes every agent's socket at once. Returns when
    /// the process is gone.
    pub async fn kill9(&mut self) -> Instant {
        self.child.kill().await.unwrap();
        Instant::now()
    }

    /// SIGSTOP: the process is frozen with every socket open, so its agents stay connected to
    /// a server that neither reads nor writes, and its heartbeat stops. Undone only by
    /// [`ServerProcess::kill9`] (or the drop).
    pub fn freeze(&self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGSTOP).unwrap();
    }

    /// Starts the server again on the same address and data directory; returns once it
    /// answers `/healthz`.
    pub async fn restart(&mut self) {
        let address = self.address.clone();
        self.restart_at(&address).await;
    }

    /// Starts the server again on the same data directory but listening on `address`, as
    /// another replica taking over would; `url` and `client` then point there. Returns once it
    /// answers `/healthz`.
    pub async fn restart_at(&mut self, address: &str) {
        self.starts += 1;
        let (child, bound) = spawn_server(self.dir.path(), address, &self.extra, self.starts).await;
        assert_eq!(bound, address);
        self.child = child;
        self.url = format!("http://{bound}");
        self.address = bound;
    }

    /// Peak resident memory of the running server, in MiB (`VmHWM`).
    pub fn peak_rss_mib(&self) -> f64 {
        self.memory_kib().1 as f64 / 1024.0
    }

    /// (resident now, peak resident) of the running server, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// Spawns `fleetrun serve` on `listen`; returns it with the address it bound, once it answers.
async fn spawn_server(dir: &Path, listen: &str, extra: &[String], start: u32) -> (Child, String) {
    let log_path = dir.join(format!("server-{start}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetrun"))
        .args(["serve", "--listen", listen, "--admin-password", PASSWORD, "--data-dir"])
        .arg(dir.join("data"))
        .args(extra)
        // The address line, and warnings; not a line per agent connection.
        .env(
            "FLEETRUN_LOG",
            "warn,fleetrun::server=info,fleetrun::server::agent=warn",
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start fleetrun serve");
    // Generous: a loaded machine starts several servers at once in some tests.
    let deadline = Instant::now() + Duration::from_secs(60);
    let address = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(after) = log.split("listening on http://").nth(1) {
            let address: String = after
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            break address;
        }
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "the server did not start listening ({exited:?}); its log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let health = format!("http://{address}/healthz");
    eventually(Duration::from_secs(60), "the server to answer", || async {
        reqwest::get(&health).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    (child, address)
}

/// A `sleep` argument unique to this test run, e.g. `600.0123405`, so that process checks
/// cannot see processes of other tests or earlier runs.
pub fn unique_seconds(whole: u32) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{whole}.{:05}{n:02}", std::process::id() % 100_000)
}

/// Live (not zombie) processes whose command line contains `needle`.
pub fn live_processes(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let dir: PathBuf = entry.path();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        if cmdline.contains(needle) && state != Some('Z') {
            pids.push(pid);
        }
    }
    pids
}

/// A TCP proxy in front of the server whose connections can be cut and refused.
pub struct Proxy {
    pub url: String,
    generation: watch::Sender<u64>,
    refusing: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let (generation, _) = watch::channel(0u64);
        let refusing = Arc::new(AtomicBool::new(false));
        let (gen_tx, refuse) = (generation.clone(), refusing.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    continue; // dropped at once
                }
                let upstream = upstream.clone();
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            url,
            generation,
            refusing,
        }
    }

    /// Drops every open connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes every byte but the unreserved ones, to put any text into a URL or a form.
pub fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A form body (`application/x-www-form-urlencoded`) from its fields, in order; a key may repeat.
pub fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// A valid enrolment body for the activation: a Linux host that no agent process stands behind.
pub fn register_body(activation: &ActivationCreated, name: &str) -> Value {
    json!({
        "activation_id": activation.activation_id, "activation_code": activation.activation_code,
        "hostname": "fake-host", "name": name, "os_type": "linux", "os_name": "Debian GNU/Linux 12",
        "ip_addresses": ["10.0.0.7"], "agent_version": "0.1.0"
    })
}

/// Enrols an instance through `POST /agent/v1/register`: its id and secret.
pub async fn register(app: &TestApp, body: &Value) -> (String, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/agent/v1/register", app.url))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "enrolling {body}");
    let body: Value = response.json().await.unwrap();
    (
        body["instance_id"].as_str().unwrap().to_string(),
        body["instance_secret"].as_str().unwrap().to_string(),
    )
}

/// What the server answered, read whole.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    /// Sends `request` and reads the answer; a request that got no (whole) answer is an `Err`
    /// saying so, for tests that list what went wrong rather than stop at it.
    pub async fn of(request: reqwest::RequestBuilder) -> Result<Answer, String> {
        let response = request.send().await.map_err(|e| format!("no answer ({e:?})"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .map_err(|e| format!("the answer broke off ({e})"))?;
        Ok(Answer { status, headers, text })
    }
}

/// The one console client of the tests: a user logged in through `/login`, sending the session
/// cookie on every request and the page's CSRF token with every form, as htmx does. Redirects
/// are not followed, so a test sees them.
pub struct Console {
    pub http: reqwest::Client,
    pub url: String,
    /// The login's whole `Set-Cookie` header, for tests of its attributes.
    pub set_cookie: String,
    /// The session cookie as sent back (`name=value`).
    pub cookie: String,
    pub csrf: String,
}

impl Console {
    /// Logs in as `admin`.
    pub async fn login(app: &TestApp) -> Console {
        Console::login_as(app, "admin", PASSWORD).await
    }

    /// Logs in as `username`, then reads the CSRF token from a page.
    pub async fn login_as(app: &TestApp, username: &str, password: &str) -> Console {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Console::login_with(app, http, username, password).await
    }

    /// Logs in through `http`, a client that must not follow redirects (one trusting a test
    /// CA, say).
    pub async fn login_with(app: &TestApp, http: reqwest::Client, username: &str, password: &str) -> Console {
        let form = [
            ("username", username),
            ("password", password),
            ("next", "/console/instances"),
        ];
        let response = http
            .post(format!("{}/login", app.url))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "{username} logs in");
        let set_cookie = response.headers()["set-cookie"].to_str().unwrap().to_string();
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        let mut console = Console {
            http,
            url: app.url.clone(),
            set_cookie,
            cookie,
            csrf: String::new(),
        };
        let html = console.get("/console/instances").await.unwrap().text;
        console.csrf = html
            .split("X-CSRF-Token&#34;:&#34;")
            .nth(1)
            .unwrap()
            .split("&#34;")
            .next()
            .unwrap()
            .to_string();
        console
    }

    /// `GET path` with the session.
    pub async fn get(&self, path: &str) -> Result<Answer, String> {
        let request = self.http.get(format!("{}{path}", self.url));
        Answer::of(request.header(COOKIE, &self.cookie)).await
    }

    /// Posts a form body (see [`form`]) as htmx does: with the session, the CSRF token and
    /// `HX-Request`.
    pub async fn post_form(&self, path: &str, body: Vec<u8>) -> Result<Answer, String> {
        let request = self
            .http
            .post(format!("{}{path}", self.url))
            .header(COOKIE, &self.cookie)
            .header("hx-request", "true")
            .header("x-csrf-token", &self.csrf)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        Answer::of(request).await
    }
}

/// A certificate for `localhost` signed by a private CA, written to `dir`: the certificate's,
/// its key's and the CA's paths.
pub fn private_ca_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleetrun test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("ca.pem"));
    std::fs::write(&paths.0, cert.pem()).unwrap();
    std::fs::write(&paths.1, key.serialize_pem()).unwrap();
    std::fs::write(&paths.2, ca.pem()).unwrap();
    paths
}
