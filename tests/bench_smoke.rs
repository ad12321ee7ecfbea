//! Smoke test of the benchmark's load tool (issue 5): the virtual-agent swarm of
//! `bench/src/swarm.rs`, compiled into this test, enrols 50 agents through a real activation,
//! connects them to a real server and answers real tasks. It asserts results and stored bytes,
//! never timings: the benchmark itself is not part of `cargo test` (see docs/PERFORMANCE.md).

// Test code: a panic is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../bench/src/swarm.rs"]
mod swarm;

use clap::Parser as _;
use fleetrun::client::{ApiClient, Credentials};
use fleetrun::config::{Cli, Mode};
use fleetrun::protocol::api::{RunCommandRequest, StreamEvent};
use fleetrun::protocol::{InvocationStatus, ResultStatus};
use std::time::Duration;
use swarm::{Swarm, SwarmConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "bench-smoke-password";
const AGENTS: usize = 50;

/// A real server on a loopback port, stopped on drop.
struct Server {
    url: String,
    client: ApiClient,
    shutdown: CancellationToken,
    _data: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let data = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let data_dir = data.path().display().to_string();
        let args = [
            "fleetrun",
            "serve",
            "--listen",
            &address,
            "--data-dir",
            &data_dir,
            "--admin-password",
            PASSWORD,
        ];
        let Mode::Serve(serve) = Cli::parse_from(args).mode else {
            unreachable!("serve parses as serve")
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(fleetrun::server::run(serve, listener, shutdown.clone()));
        let url = format!("http://{address}");
        let health = format!("{url}/healthz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) {
            assert!(tokio::time::Instant::now() < deadline, "the server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let credentials = Credentials::Basic {
            username: "admin".into(),
            password: PASSWORD.into(),
        };
        Server {
            client: ApiClient::new(&url, credentials),
            url,
            shutdown,
            _data: data,
        }
    }

    async fn swarm(&self, region: &str) -> Swarm {
        let config = SwarmConfig::new(&self.url);
        let identities = swarm::enrol(&self.client, &config, region, AGENTS, region)
            .await
            .unwrap();
        assert_eq!(identities.len(), AGENTS);
        Swarm::connect(config, identities).await.unwrap()
    }

    /// Runs a command, collecting every stream event until `done`.
    async fn run(&self, req: &RunCommandRequest) -> (String, Vec<StreamEvent>) {
        let created = self.client.run(req).await.unwrap();
        let mut events = Vec::new();
        let streaming = self.client.stream(&created.invoke_id, None, |e| events.push(e.clone()));
        tokio::time::timeout(Duration::from_secs(60), streaming)
            .await
            .expect("the invocation finishes within a minute")
            .unwrap();
        (created.invoke_id, events)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_virtual_agents_run_a_command_and_the_server_stores_their_exact_output() {
    let server = Server::start().await;
    let swarm = server.swarm("smoke").await;
    let ids = swarm.instance_ids().to_vec();
    // 100,000 bytes: two 64 KiB chunks per agent, so sequence numbers and merging are exercised.
    let req = RunCommandRequest::shell(ids.clone(), "#bench out=100000\necho hi");

    let (invoke_id, events) = server.run(&req).await;

    assert!(
        matches!(
            events.last(),
            Some(StreamEvent::Done {
                invocation_status: InvocationStatus::Success
            })
        ),
        "last event: {:?}",
        events.last()
    );
    let invocation = server.client.invocation(&invoke_id).await.unwrap();
    let results = invocation.results.unwrap();
    assert_eq!(results.len(), AGENTS);
    for result in &results {
        assert_eq!(result.invocation_status, ResultStatus::Success, "{result:?}");
        assert_eq!(result.exit_code, Some(0));
        assert_eq!(result.dropped, 0);
    }
    for id in &ids {
        let stored = server.client.output(&invoke_id, id).await.unwrap();
        assert!(stored == swarm::pattern(id, 100_000), "output of {id} differs");
    }
    assert_eq!(
        swarm.counters().disconnects.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    swarm.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_lines_of_virtual_agents_reach_a_stream_subscriber_with_their_time_stamps() {
    let server = Server::start().await;
    let swarm = server.swarm("smoke-live").await;
    let req = RunCommandRequest::shell(swarm.instance_ids().to_vec(), "#bench stream=3 every=50 size=64");

    let (_, events) = server.run(&req).await;

    let mut lines = 0;
    for event in &events {
        if let StreamEvent::Output { data, .. } = event {
            let now = swarm::clock_micros();
            for sent in swarm::stamps(data) {
                assert!(sent <= now, "a line stamped in the future");
                lines += 1;
            }
        }
    }
    assert_eq!(lines, AGENTS * 3, "every streamed line arrives once");
    assert!(matches!(
        events.last(),
        Some(StreamEvent::Done {
            invocation_status: InvocationStatus::Success
        })
    ));
    swarm.close(Duration::from_secs(5)).await;
}
