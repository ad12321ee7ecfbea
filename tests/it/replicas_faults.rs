//! Replicas that die (issue 12, acceptance): `fleetrun serve` processes on one PostgreSQL
//! database, real agents each given its own replica's URL and then the others', and a replica
//! SIGKILLed mid-run, or frozen (SIGSTOP) and then killed before it could deliver. What must
//! hold: output exactly once across the move, no result left `Pending` or `Running` past its
//! deadlines, and the dead replica's row reaped by the others.
//!
//! The tables the API does not show (which replica holds an agent, the replicas' rows) are read
//! straight from the database.

use crate::helpers::{AgentProcess, ServerProcess, agent_command, eventually, sha256};
use fleetrun::agent::failover::Servers;
use fleetrun::client::ApiClient;
use fleetrun::protocol::api::{ActivationCreated, CreateActivationRequest, Invocation, RunCommandRequest};
use fleetrun::protocol::{ErrorCode, PROTOCOL_VERSION, ResultStatus};
use fleetrun::store::scratch::ScratchDatabase;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Replica indices, in the order the cluster starts them.
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

/// Replicas on one scratch database, and a connection pool of the test's own on it.
struct Cluster {
    servers: Vec<ServerProcess>,
    /// Each replica's id, as it logged it at start (index as `servers`).
    replica_ids: Vec<String>,
    db: sqlx::PgPool,
    /// Dropped last (fields drop in order): the database outlives every server on it.
    _database: ScratchDatabase,
}

/// Where an agent's connection is, as the `instances` table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    online: bool,
    /// The replica holding the connection; `None` while offline.
    replica: Option<String>,
}

/// A real agent and the replica it is at home on.
struct Placed {
    agent: AgentProcess,
    id: String,
    home: usize,
    /// Its `--server` list, turned so that its first connection goes home.
    servers: String,
}

impl Cluster {
    /// One replica per entry of `extras`, each started with those flags besides
    /// `--database-url`. They start at once, so their migrations race (and must not).
    async fn start(extras: &[&[&str]]) -> Cluster {
        let database = ScratchDatabase::create().await.unwrap_or_else(|e| panic!("{e}"));
        let starts = extras.iter().map(|extra| {
            let mut args = vec!["--database-url", database.url.as_str()];
            args.extend(extra.iter());
            async move { ServerProcess::start(&args).await }
        });
        let servers = futures_util::future::join_all(starts).await;
        let replica_ids = servers.iter().map(ServerProcess::replica_id).collect();
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&database.url)
            .await
            .unwrap();
        Cluster {
            servers,
            replica_ids,
            db,
            _database: database,
        }
    }

    fn client(&self, replica: usize) -> ApiClient {
        self.servers[replica].client()
    }

    async fn activation(&self, limit: u32) -> ActivationCreated {
        let request = CreateActivationRequest {
            region_id: "replicas".into(),
            instance_count_limit: limit,
            ttl_hours: None,
            description: None,
        };
        self.client(A).create_activation(&request).await.unwrap()
    }

    /// The server list of an agent at home on replica `home`, turned so that the agent's first
    /// connection goes there: it starts at the entry its instance id picks
    /// (`Servers::start_for`, which spreads a fleet over the list), and moves round-robin from
    /// there. With `start` 0, the list begins at `home` (enrolment tries the first entry).
    fn server_list(&self, home: usize, start: usize) -> String {
        let n = self.servers.len();
        (0..n)
            .map(|entry| self.servers[(home + n + entry - start) % n].url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Enrols `count` real agents at home on each replica of `homes` (its own replica's URL,
    /// then the others'), and waits until every one is online there.
    async fn fleet(&self, homes: &[usize], count: usize) -> Vec<Placed> {
        let activation = self.activation((homes.len() * count) as u32).await;
        let mut agents = Vec::new();
        for &home in homes {
            for n in 1..=count {
                let state = tempfile::tempdir().unwrap();
                let mut command = agent_command(&self.server_list(home, 0), Some(&activation), state.path());
                command.args(["--name", &format!("r{home}-{n:02}")]);
                let agent = AgentProcess {
                    child: command.spawn().expect("start fleetrun-agent"),
                    state,
                    protocol: PROTOCOL_VERSION,
                };
                agents.push((agent, home));
            }
        }
        let mut fleet = Vec::new();
        for (mut agent, home) in agents {
            let id = agent.enrolled_within(Duration::from_secs(120)).await;
            let start = start_index(&id, self.servers.len());
            let servers = self.server_list(home, start);
            if start != 0 {
                // Enrolled at home, but connecting elsewhere: again, with the list turned.
                agent.kill9().await;
                agent.restart(&servers);
            }
            fleet.push(Placed {
                agent,
                id,
                home,
                servers,
            });
        }
        self.settle(&mut fleet).await;
        fleet
    }

    /// Waits until every agent is online at home. One online elsewhere moved on down its list
    /// (its home was slow to welcome it, on a loaded machine) and is started again. On a
    /// timeout, says where those not at home are.
    async fn settle(&self, fleet: &mut [Placed]) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut restarted: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            let held = self.held().await;
            let mut away = Vec::new();
            for placed in fleet.iter_mut() {
                let now = held.get(&placed.id);
                if now == Some(&self.online_on(placed.home)) {
                    continue;
                }
                let lately = restarted
                    .get(&placed.id)
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(10));
                if now.is_some_and(|h| h.online) && !lately {
                    placed.agent.kill9().await;
                    placed.agent.restart(&placed.servers);
                    restarted.insert(placed.id.clone(), Instant::now());
                }
                away.push((placed.id.clone(), &self.replica_ids[placed.home], now.cloned()));
            }
            if away.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agents not online at home after 120 s (id, home, held): {away:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn online_on(&self, replica: usize) -> Held {
        Held {
            online: true,
            replica: Some(self.replica_ids[replica].clone()),
        }
    }

    /// Every instance's connection, by instance id.
    async fn held(&self) -> BTreeMap<String, Held> {
        let rows: Vec<(String, bool, Option<String>)> = sqlx::query_as("SELECT id, online, replica FROM instances")
            .fetch_all(&self.db)
            .await
            .unwrap();
        rows.into_iter()
            .map(|(id, online, replica)| (id, Held { online, replica }))
            .collect()
    }

    /// The replicas' rows: the ids of those not reaped.
    async fn replica_rows(&self) -> BTreeSet<String> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT id FROM replicas")
            .fetch_all(&self.db)
            .await
            .unwrap();
        rows.into_iter().collect()
    }

    /// Every live replica's log, for a failed assertion to show.
    fn logs(&self) -> String {
        self.servers
            .iter()
            .zip(&self.replica_ids)
            .map(|(server, id)| format!("--- {id} ({})\n{}", server.url, server.log()))
            .collect()
    }
}

/// The entry of a list of `len` servers an agent with this instance id connects to first.
fn start_index(instance_id: &str, len: usize) -> usize {
    let urls: Vec<String> = (1..=len).map(|n| format!("http://127.0.0.1:{n}")).collect();
    let mut servers = Servers::parse(&urls, false).unwrap();
    servers.start_for(instance_id);
    urls.iter().position(|url| url == servers.current()).unwrap()
}

async fn wait_end(client: &ApiClient, invoke_id: &str) -> Invocation {
    eventually(Duration::from_secs(180), "the invocation to end", || async {
        let invocation = client.invocation(invoke_id).await.ok()?;
        invocation.invocation_status.is_terminal().then_some(invocation)
    })
    .await
}

/// Where stored output first departs from `line 1` … `line {lines}`: a gap, a repeat, or a
/// broken line; for the message of a failed comparison.
fn first_departure(stored: &[u8], lines: u32) -> String {
    let text = String::from_utf8_lossy(stored);
    let mut next = 1;
    for line in text.split_terminator('\n') {
        if line != format!("line {next}") {
            return format!("expected \"line {next}\", found {line:?}");
        }
        next += 1;
    }
    if next <= lines {
        return format!("ends after line {} of {lines}", next - 1);
    }
    format!("{} bytes, the lines in order", stored.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_run_loses_no_output_its_agents_finish_on_the_others_each_line_once() {
    const PER_REPLICA: usize = 10;
    const LINES: u32 = 2_000;
    let mut cluster = Cluster::start(&[&[], &[], &[]]).await;
    let fleet = cluster.fleet(&[A, B, C], PER_REPLICA).await;
    let ids: Vec<String> = fleet.iter().map(|placed| placed.id.clone()).collect();
    let on_b: Vec<String> = fleet
        .iter()
        .filter(|placed| placed.home == B)
        .map(|placed| placed.id.clone())
        .collect();
    // A pause after every 200 lines: the run lasts ten seconds or more.
    let script =
        format!("for i in $(seq 1 {LINES}); do echo \"line $i\"; [ $((i % 200)) = 0 ] && sleep 1; done; exit 0");
    let mut request = RunCommandRequest::shell(ids.clone(), script);
    request.spec.timeout_secs = 600;
    let client_a = cluster.client(A);

    let created = client_a.run(&request).await.unwrap();
    // Until each of B's agents is past line 200; on a timeout, says where each one is.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::from("no answer from A");
    let mid_run = loop {
        if let Ok(Some(results)) = client_a.invocation(&created.invoke_id).await.map(|i| i.results) {
            let of_b: Vec<_> = results.iter().filter(|r| on_b.contains(&r.instance_id)).collect();
            if of_b.iter().all(|r| r.output.contains("line 200\n")) {
                break of_b
                    .iter()
                    .filter(|r| r.invocation_status == ResultStatus::Running)
                    .count();
            }
            let held = cluster.held().await;
            seen = of_b
                .iter()
                .map(|r| {
                    let held = held.get(&r.instance_id);
                    format!(
                        "{} {:?} {:?} {:?}, {} bytes, held {held:?}\n",
                        r.instance_id,
                        r.invocation_status,
                        r.error_code,
                        r.error_info,
                        r.output.len()
                    )
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "B's agents not all past line 200 after 120 s:\n{seen}{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    cluster.servers[B].kill9().await;
    let ended = wait_end(&client_a, &created.invoke_id).await;

    assert!(mid_run > 0, "B's agents were all done before B was killed");
    let expected: String = (1..=LINES).map(|i| format!("line {i}\n")).collect();
    let results = ended.results.unwrap();
    assert_eq!(results.len(), ids.len());
    for result in &results {
        assert_eq!(
            (result.invocation_status, result.exit_code),
            (ResultStatus::Success, Some(0)),
            "{result:?}\n{}",
            cluster.logs()
        );
        let stored = client_a.output(&created.invoke_id, &result.instance_id).await.unwrap();
        assert_eq!(
            sha256(&stored),
            sha256(expected.as_bytes()),
            "the output of {} (at home on {}): {}",
            result.instance_id,
            if on_b.contains(&result.instance_id) {
                "B"
            } else {
                "A or C"
            },
            first_departure(&stored, LINES)
        );
    }
    let held = cluster.held().await;
    let survivors = [cluster.online_on(A), cluster.online_on(C)];
    for id in &on_b {
        assert!(survivors.contains(&held[id]), "{id} moved to A or C: {:?}", held[id]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_while_its_agents_replica_is_frozen_and_then_killed_is_delivered_after_the_agent_moves() {
    let generous: &[&str] = &["--delivery-window-secs", "300"];
    let mut cluster = Cluster::start(&[generous, generous, generous]).await;
    let fleet = cluster.fleet(&[B], 1).await;
    let id = fleet[0].id.clone();
    let client_a = cluster.client(A);

    // Frozen, B holds the agent's connection but can deliver nothing.
    cluster.servers[B].freeze();
    let request = RunCommandRequest::shell(vec![id.clone()], "echo delivered after the move");
    let created = tokio::time::timeout(Duration::from_secs(60), client_a.run(&request))
        .await
        .expect("A takes a command while B is frozen")
        .unwrap();
    let before = client_a.invocation(&created.invoke_id).await.unwrap().results.unwrap();
    cluster.servers[B].kill9().await;
    let ended = wait_end(&client_a, &created.invoke_id).await;

    assert_eq!(before[0].invocation_status, ResultStatus::Pending, "{before:?}");
    let result = &ended.results.unwrap()[0];
    assert_eq!(
        (result.invocation_status, result.exit_code, result.output.as_str()),
        (ResultStatus::Success, Some(0), "delivered after the move\n"),
        "{result:?}\n{}",
        cluster.logs()
    );
    let held = &cluster.held().await[&id];
    assert!(
        [cluster.online_on(A), cluster.online_on(C)].contains(held),
        "the agent moved to A or C: {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_agents_replica_is_frozen_past_its_delivery_window_ends_aborted_and_never_runs() {
    // A gives its commands two seconds to be delivered; C, where the second command is sent,
    // a generous window.
    let generous: &[&str] = &["--delivery-window-secs", "300"];
    let mut cluster = Cluster::start(&[&["--delivery-window-secs", "2"], generous, generous]).await;
    let fleet = cluster.fleet(&[B], 1).await;
    let id = fleet[0].id.clone();
    let (client_a, client_c) = (cluster.client(A), cluster.client(C));

    cluster.servers[B].freeze();
    let request = RunCommandRequest::shell(vec![id.clone()], "echo too late");
    let created = tokio::time::timeout(Duration::from_secs(60), client_a.run(&request))
        .await
        .expect("A takes a command while B is frozen")
        .unwrap();
    let aborted = wait_end(&client_a, &created.invoke_id).await;
    cluster.servers[B].kill9().await;
    let moved = || async {
        let held = cluster.held().await.remove(&id)?;
        [cluster.online_on(A), cluster.online_on(C)]
            .contains(&held)
            .then_some(())
    };
    eventually(Duration::from_secs(60), "the agent to move to A or C", moved).await;
    let after = client_c
        .run(&RunCommandRequest::shell(vec![id.clone()], "echo after"))
        .await
        .unwrap();
    let after = wait_end(&client_c, &after.invoke_id).await;
    let late = client_a.invocation(&created.invoke_id).await.unwrap();

    let result = &aborted.results.unwrap()[0];
    assert_eq!(
        (result.invocation_status, result.error_code),
        (ResultStatus::Aborted, Some(ErrorCode::DeliveryTimeout)),
        "{result:?}"
    );
    assert_eq!(after.results.unwrap()[0].output, "after\n", "the agent is served again");
    let late = &late.results.unwrap()[0];
    assert_eq!(
        (late.invocation_status, late.output.as_str(), late.start_time.as_deref()),
        (ResultStatus::Aborted, "", None),
        "the aborted command never ran after the move: {late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_row_is_reaped_by_the_others_and_its_agents_are_offline_until_they_move() {
    let mut cluster = Cluster::start(&[&[], &[], &[]]).await;
    let fleet = cluster.fleet(&[B], 1).await;
    let mover = fleet[0].id.clone();
    // An agent that knows only B: nothing but the reaping can record it offline.
    let activation = cluster.activation(1).await;
    let state = tempfile::tempdir().unwrap();
    let servers = cluster.servers[B].url.clone();
    let agent = AgentProcess {
        child: agent_command(&servers, Some(&activation), state.path())
            .spawn()
            .unwrap(),
        state,
        protocol: PROTOCOL_VERSION,
    };
    let stayer_id = agent.enrolled_within(Duration::from_secs(60)).await;
    let mut stayer = [Placed {
        agent,
        id: stayer_id.clone(),
        home: B,
        servers,
    }];
    cluster.settle(&mut stayer).await;
    let rows_before = cluster.replica_rows().await;
    let b = cluster.replica_ids[B].clone();

    cluster.servers[B].kill9().await;
    let rows_after = eventually(Duration::from_secs(60), "B's row to be reaped", || async {
        let rows = cluster.replica_rows().await;
        (!rows.contains(&b)).then_some(rows)
    })
    .await;
    let offline = Held {
        online: false,
        replica: None,
    };
    let stayer_offline = || async { (cluster.held().await.get(&stayer_id) == Some(&offline)).then_some(()) };
    eventually(
        Duration::from_secs(30),
        "the agent that knows only B to be offline",
        stayer_offline,
    )
    .await;
    let held = cluster.held().await;

    let all: BTreeSet<String> = cluster.replica_ids.iter().cloned().collect();
    assert_eq!(rows_before, all);
    let survivors: BTreeSet<String> = [A, C].map(|r| cluster.replica_ids[r].clone()).into();
    assert_eq!(rows_after, survivors, "A and C keep their rows alive");
    assert!(
        [cluster.online_on(A), cluster.online_on(C)].contains(&held[&mover]),
        "the agent given every URL is online on A or C: {:?}",
        held[&mover]
    );
    let reaped_by = [A, C].map(|r| cluster.servers[r].log());
    assert!(
        reaped_by.iter().any(|log| log
            .lines()
            .any(|l| l.contains("a replica stopped answering") && l.contains(&b))),
        "A or C says it reaped {b}:\n{}",
        cluster.logs()
    );
}
