//! Agent failover (issue 12, item 3): a real agent given two server URLs moves to the second when
//! its server dies, and a command running across the move ends with its whole output, once.
//!
//! Without PostgreSQL there is one replica at a time: server A runs on a SQLite data directory;
//! B's port is reserved (bound, not listening, so connecting to it is refused); A is SIGKILLed
//! and a new server process, B, starts on the same data directory at B's port.

use crate::helpers::{AgentProcess, ServerProcess, agent_command, eventually};
use fleetrun::client::ApiClient;
use fleetrun::protocol::api::{CreateActivationRequest, Invocation, RunCommandRequest};
use fleetrun::protocol::{PROTOCOL_VERSION, ResultStatus};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::process::Command;

/// How the agent is given its list of servers.
enum ServerList {
    /// `--server A,B`.
    Flag,
    /// `FLEETRUN_SERVER=B,A`: B first, so enrolment has to pass over a server that refuses
    /// connections.
    Env,
}

/// Server A with an agent online on it that was given A and B; B's port held until B starts.
struct Replicas {
    server: ServerProcess,
    /// Holds B's port until [`Replicas::fail_over`] starts B there.
    b_port: Option<TcpSocket>,
    b_address: String,
    /// The agent, killed on drop.
    _agent: AgentProcess,
    instance_id: String,
    /// The agent's log (info), where it says which server it connected to.
    agent_log: PathBuf,
    _logs: tempfile::TempDir,
}

impl Replicas {
    async fn start(list: ServerList) -> Replicas {
        let server = ServerProcess::start(&[]).await;
        let b_port = TcpSocket::new_v4().unwrap();
        b_port.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b_address = b_port.local_addr().unwrap().to_string();
        let b_url = format!("http://{b_address}");
        let activation = server
            .client()
            .create_activation(&CreateActivationRequest {
                region_id: "failover".into(),
                instance_count_limit: 1,
                ttl_hours: None,
                description: None,
            })
            .await
            .unwrap();
        let logs = tempfile::tempdir().unwrap();
        let agent_log = logs.path().join("agent.log");
        let state = tempfile::tempdir().unwrap();
        let mut command = match list {
            ServerList::Flag => agent_command(&format!("{},{b_url}", server.url), Some(&activation), state.path()),
            ServerList::Env => {
                let mut command = Command::new(env!("CARGO_BIN_EXE_fleetrun-agent"));
                command
                    .env("FLEETRUN_SERVER", format!("{b_url},{}", server.url))
                    .args(["--reconnect-max-secs", "1", "--kill-grace-secs", "1"])
                    .args(["--activation-id", &activation.activation_id])
                    .args(["--activation-code", &activation.activation_code])
                    .arg("--state-dir")
                    .arg(state.path())
                    .kill_on_drop(true);
                command
            }
        };
        command
            .env("FLEETRUN_LOG", "warn,fleetrun::agent=info")
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&agent_log).unwrap());
        let agent = AgentProcess {
            child: command.spawn().expect("start fleetrun-agent"),
            state,
            protocol: PROTOCOL_VERSION,
        };
        let instance_id = agent.instance_id().await;
        let replicas = Replicas {
            server,
            b_port: Some(b_port),
            b_address,
            _agent: agent,
            instance_id,
            agent_log,
            _logs: logs,
        };
        replicas.wait_online().await;
        replicas
    }

    /// Waits until the server running now shows the agent online. A (re)started server marks
    /// every agent offline first, so this is the agent connected to it.
    async fn wait_online(&self) {
        let client = self.server.client();
        eventually(
            Duration::from_secs(90),
            &format!("the agent to be online on {}", self.server.url),
            || async {
                client
                    .instance(&self.instance_id)
                    .await
                    .ok()?
                    .agent
                    .online
                    .then_some(())
            },
        )
        .await;
    }

    /// SIGKILLs server A, then starts B on the same data directory at B's port.
    async fn fail_over(&mut self) {
        self.server.kill9().await;
        drop(self.b_port.take());
        let b_address = self.b_address.clone();
        self.server.restart_at(&b_address).await;
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.agent_log).unwrap_or_default()
    }
}

/// Whether a line of the agent's log says it connected to `url` (not to a URL it is a prefix of:
/// the fields follow the message after a space).
fn says_connected_to(line: &str, url: &str) -> bool {
    let said = format!("connected to {url}");
    line.ends_with(&said) || line.contains(&format!("{said} "))
}

/// Runs a shell command on the agent through `client` and waits until it ends.
async fn run_to_end(client: &ApiClient, instance_id: &str, content: &str) -> Invocation {
    let created = client
        .run(&RunCommandRequest::shell(vec![instance_id.into()], content))
        .await
        .unwrap();
    wait_end(client, &created.invoke_id).await
}

async fn wait_end(client: &ApiClient, invoke_id: &str) -> Invocation {
    eventually(Duration::from_secs(120), "the invocation to end", || async {
        let invocation = client.invocation(invoke_id).await.ok()?;
        invocation.invocation_status.is_terminal().then_some(invocation)
    })
    .await
}

/// The one result of an invocation to one instance: (status, exit code, output).
fn only_result(invocation: &Invocation) -> (ResultStatus, Option<i32>, String) {
    let results = invocation.results.as_ref().unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    let result = &results[0];
    (result.invocation_status, result.exit_code, result.output.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_given_two_servers_moves_to_the_second_when_the_first_is_killed() {
    let mut replicas = Replicas::start(ServerList::Flag).await;
    let a_url = replicas.server.url.clone();
    let on_a = run_to_end(&replicas.server.client(), &replicas.instance_id, "echo on A").await;

    replicas.fail_over().await;
    replicas.wait_online().await;
    let b_url = replicas.server.url.clone();
    let on_b = run_to_end(&replicas.server.client(), &replicas.instance_id, "echo on B").await;

    assert_eq!(only_result(&on_a), (ResultStatus::Success, Some(0), "on A\n".into()));
    assert_eq!(only_result(&on_b), (ResultStatus::Success, Some(0), "on B\n".into()));
    let log = replicas.agent_log();
    let connected: Vec<&str> = log.lines().filter(|l| l.contains("connected to ")).collect();
    assert!(
        connected.iter().any(|l| says_connected_to(l, &a_url)),
        "the agent names A when connected to it: {log}"
    );
    assert!(
        says_connected_to(connected.last().unwrap(), &b_url),
        "and then B: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_running_while_its_server_dies_ends_success_on_the_next_with_its_whole_output_once() {
    const LINES: u32 = 60;
    let mut replicas = Replicas::start(ServerList::Env).await;
    let client_a = replicas.server.client();
    let script = format!("for i in $(seq 1 {LINES}); do echo \"line $i\"; sleep 0.2; done");
    let mut request = RunCommandRequest::shell(vec![replicas.instance_id.clone()], script);
    request.spec.timeout_secs = 600;
    let created = client_a.run(&request).await.unwrap();
    eventually(Duration::from_secs(60), "A to have stored some output", || async {
        let invocation = client_a.invocation(&created.invoke_id).await.ok()?;
        let (_, _, output) = only_result(&invocation);
        output.contains("line 3\n").then_some(())
    })
    .await;

    replicas.fail_over().await;
    let client_b = replicas.server.client();
    let ended = wait_end(&client_b, &created.invoke_id).await;

    let expected: String = (1..=LINES).map(|i| format!("line {i}\n")).collect();
    assert_eq!(only_result(&ended), (ResultStatus::Success, Some(0), expected.clone()));
    let raw = client_b
        .output(&created.invoke_id, &replicas.instance_id)
        .await
        .unwrap();
    assert_eq!(String::from_utf8(raw).unwrap(), expected, "the stored bytes");
    assert!(
        client_b.instance(&replicas.instance_id).await.unwrap().agent.online,
        "the agent is connected to B: {}",
        replicas.agent_log()
    );
}
