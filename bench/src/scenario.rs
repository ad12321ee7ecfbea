//! The scenarios of issue 5, run in order against one server: virtual agents first (enrol and
//! connect 10,000, fan-outs, live latency, the console page, server memory), then real agent
//! processes (fan-out, 1 MB outputs, single-agent ingest). One idle real agent is measured over
//! its own window in parallel, from its own process accounting. Last, when asked for, the
//! fan-outs of issue 12 against several replicas sharing one PostgreSQL (the `pg` group).
//!
//! Every figure is taken from public surfaces: RunCommand and the invocation's live stream,
//! the console over HTTP, and `/proc` for memory and CPU.

use crate::api::{Api, Timed};
use crate::browser::Browser;
use crate::procfs::{self, CpuMeter, CpuMeters};
use crate::real::RealFleet;
use crate::records;
use crate::report::{Results, median, ms, percentile};
use crate::swarm::{self, Swarm, SwarmConfig};
use anyhow::{Context as _, bail};
use fleetrun::protocol::InvocationStatus;
use fleetrun::protocol::api::{RunCommandRequest, StreamEvent};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Options of `fleetrun-bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Server base URL (loopback only).
    #[arg(long, env = "FLEETRUN_SERVER")]
    pub server: String,
    /// Password of the server's `admin` account.
    #[arg(long, env = "FLEETRUN_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// Process id of the server, for its memory and CPU.
    #[arg(long)]
    pub server_pid: u32,
    /// The agent the real-agent scenarios start: `fleetrun-agent`, or a `fleetrun` binary
    /// (its `agent` mode, for A/B runs against builds from before the agent had its own file).
    #[arg(long, default_value = "target/release/fleetrun-agent")]
    pub agent: PathBuf,
    /// Directory for the real agents' state and logs.
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Where to write the figures (`details.json` goes next to it).
    #[arg(long, default_value = "target/bench/results.json")]
    pub out: PathBuf,
    /// Measured rounds per fan-out figure (after one warm-up round).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Virtual agents to enrol and connect.
    #[arg(long, default_value_t = 10_000)]
    pub virtual_agents: usize,
    /// Real agent processes for the fan-out figure.
    #[arg(long, default_value_t = 100)]
    pub real_agents: usize,
    /// Window over which the idle agent is measured, in seconds.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Output of the single-agent ingest run, in MiB.
    #[arg(long, default_value_t = 256)]
    pub ingest_mib: u64,
    /// Ingest runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub ingest_rounds: usize,
    /// Tasks streaming at once for the live latency figure.
    #[arg(long, default_value_t = 1000)]
    pub live_tasks: usize,
    /// Seconds between seeding a month of records and their retention falling due (the
    /// purge figure is taken when it does, while streams flow).
    #[arg(long, default_value_t = 150)]
    pub purge_lead_secs: u64,
    /// The server's retention (`--retention-days`), for when the seeded month falls due.
    #[arg(long, default_value_t = 30)]
    pub retention_days: u64,
    /// Groups to run: any of `virtual`, `records` (needs `virtual`), `real`, `ingest`, `idle`,
    /// and `pg` (needs `--replicas`).
    #[arg(long, value_delimiter = ',', default_value = "virtual,records,real,ingest,idle")]
    pub only: Vec<String>,
    /// Base URLs of the replicas for the `pg` group, comma-separated: servers sharing one
    /// PostgreSQL database (bench/run.sh starts three on a fresh one). Fan-outs go to the first.
    #[arg(long, value_delimiter = ',')]
    pub replicas: Vec<String>,
    /// Process ids of `--replicas`, in the same order, for their CPU and memory.
    #[arg(long, value_delimiter = ',')]
    pub replica_pids: Vec<u32>,
}

/// Longest any single RunCommand may take before the scenario counts as failed.
const ROUND_LIMIT: Duration = Duration::from_secs(120);

/// How a round learns that every result is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The `done` event of the live stream, watching the first instance only (for many
    /// instances with little output: one socket instead of polling thousands of results).
    Stream,
    /// Polling the invocation every 20 ms (for a few instances with much output, which a
    /// watcher would make the server re-encode and send).
    Poll,
}

struct Bench {
    /// The server the scenarios talk to: the SQLite server, or the first replica during the
    /// `pg` group.
    api: Api,
    /// The processes serving `api`, whose CPU the rounds meter and [`Bench::settle`] waits
    /// out: the SQLite server, or every replica.
    pids: Vec<u32>,
    /// The database's own processes, metered beside `pids` (PostgreSQL's; none for SQLite,
    /// which runs inside the server).
    database_pids: Vec<u32>,
    args: RunArgs,
    results: Results,
    failures: Vec<String>,
}

/// Runs every selected scenario, prints the table and writes the JSON files. Fails (after
/// writing what was measured) when any scenario failed.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let fds = swarm::raise_fd_limit();
    let api = Api::new(&args.server, &args.password);
    api.wait_healthy(Duration::from_secs(30)).await?;
    let mut bench = Bench {
        api,
        pids: vec![args.server_pid],
        database_pids: Vec::new(),
        args,
        results: Results::default(),
        failures: Vec::new(),
    };
    bench.results.detail("bench_fd_limit", json!(fds));
    bench.results.detail("machine", machine());
    let started = Instant::now();
    let wants = |group: &str| bench.args.only.iter().any(|g| g == group);
    let (run_virtual, run_real, run_idle) = (wants("virtual"), wants("real"), wants("idle"));
    let (run_ingest, run_pg) = (wants("ingest"), wants("pg"));

    let idle = if run_idle {
        match bench.start_idle().await {
            Ok(idle) => Some(idle),
            Err(e) => {
                bench.fail("agent_idle", e);
                None
            }
        }
    } else {
        None
    };
    if run_virtual {
        if let Err(e) = bench.virtual_phase().await {
            bench.fail("virtual", e);
        }
    }
    if run_real {
        if let Err(e) = bench.real_phase().await {
            bench.fail("real", e);
        }
    }
    if run_ingest {
        if let Err(e) = bench.ingest_phase().await {
            bench.fail("ingest_single_mb_per_s", e);
        }
    }
    if run_pg {
        if let Err(e) = bench.pg_phase().await {
            bench.fail("pg", e);
        }
    }
    if let Some(idle) = idle {
        if let Err(e) = bench.finish_idle(idle).await {
            bench.fail("agent_idle", e);
        }
    }
    bench
        .results
        .detail("bench_total_secs", json!(started.elapsed().as_secs()));
    if let Ok(peak) = procfs::peak_rss_mib(bench.args.server_pid) {
        bench.results.detail("server_peak_rss_mb", json!(peak.round()));
    }
    bench.results.detail("failures", json!(bench.failures));
    bench.results.write(&bench.args.out)?;
    println!("\n{}", bench.results.table());
    println!("figures: {}", bench.args.out.display());
    if !bench.failures.is_empty() {
        bail!(
            "{} scenario(s) failed: {}",
            bench.failures.len(),
            bench.failures.join("; ")
        );
    }
    Ok(())
}

/// What describes the machine in the report.
fn machine() -> serde_json::Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_mib": mem_kib / 1024,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        // Other work on the machine when the run started (1, 5 and 15 minute load averages).
        "loadavg_at_start": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>(),
    })
}

/// The idle agent and the start of its measurement window.
struct Idle {
    fleet: RealFleet,
    /// Ends with the reading taken `idle_secs` after the window opened.
    window: tokio::task::JoinHandle<anyhow::Result<IdleReading>>,
}

/// The idle agent's accounting at the end of its window.
struct IdleReading {
    cpu: Duration,
    wall: Duration,
    rss: f64,
    peak_rss: f64,
    /// Anonymous and file-backed MiB of `rss`.
    split: (f64, f64),
}

impl Bench {
    fn fail(&mut self, what: &str, e: anyhow::Error) {
        eprintln!("fleetrun-bench: {what} failed: {e:#}");
        self.failures.push(format!("{what}: {e:#}"));
    }

    fn log(&self, message: impl AsRef<str>) {
        eprintln!("fleetrun-bench: {}", message.as_ref());
    }

    /// Waits until every server process is quiet (see [`procfs::settle`]).
    async fn settle(&self) -> Duration {
        let waits = self
            .pids
            .iter()
            .map(|pid| procfs::settle(*pid, 0.2, Duration::from_secs(30)));
        futures_util::future::join_all(waits)
            .await
            .into_iter()
            .max()
            .unwrap_or_default()
    }

    /// Starts one real agent, runs one command on it (so it is warm, as a working agent is),
    /// and starts its measurement window.
    async fn start_idle(&mut self) -> anyhow::Result<Idle> {
        let dir = self.args.work_dir.join("agents");
        let fleet = RealFleet::start(&self.api, &self.args.agent, &dir, "bench-idle", 1, 1).await?;
        let req = RunCommandRequest::shell(fleet.instance_ids(), "echo hi");
        let timed = self.timed(&req, Wait::Stream).await?;
        check_status(&timed)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = fleet.agents[0].pid;
        let meter = CpuMeter::start(pid)?;
        let window = Duration::from_secs(self.args.idle_secs);
        self.log(format!("idle agent {pid} measured for {} s", window.as_secs()));
        // Its own accounting only, so the window may overlap the other scenarios.
        let window = tokio::spawn(async move {
            tokio::time::sleep(window).await;
            let (cpu, wall) = meter.read()?;
            Ok(IdleReading {
                cpu,
                wall,
                rss: procfs::rss_mib(pid)?,
                peak_rss: procfs::peak_rss_mib(pid)?,
                split: procfs::rss_split_mib(pid)?,
            })
        });
        Ok(Idle { fleet, window })
    }

    async fn finish_idle(&mut self, idle: Idle) -> anyhow::Result<()> {
        let reading = idle.window.await;
        idle.fleet.stop(Duration::from_secs(5)).await;
        let IdleReading {
            cpu,
            wall,
            rss,
            peak_rss,
            split: (anon, file),
        } = reading??;
        self.results.set("agent_idle_rss_mb", rss);
        let size = stripped_size(&self.args.agent, &self.args.work_dir)?;
        self.results.set("agent_binary_mb", size as f64 / (1024.0 * 1024.0));
        self.results
            .set("agent_idle_cpu_pct", cpu.as_secs_f64() / wall.as_secs_f64() * 100.0);
        self.results.detail(
            "agent_idle",
            json!({
                "window_secs": wall.as_secs_f64(),
                "cpu_ms": ms(cpu),
                "rss_mb": rss,
                "rss_anon_mb": anon,
                "rss_file_mb": file,
                "peak_rss_mb": peak_rss,
            }),
        );
        Ok(())
    }

    /// Runs a command and waits until every result is terminal, within [`ROUND_LIMIT`].
    async fn timed(&self, req: &RunCommandRequest, wait: Wait) -> anyhow::Result<Timed> {
        let run = async {
            match wait {
                Wait::Stream => self.api.run_until_done(req, Some(&req.instance_ids[0]), |_| {}).await,
                Wait::Poll => self.api.run_until_terminal(req, Duration::from_millis(20)).await,
            }
        };
        tokio::time::timeout(ROUND_LIMIT, run)
            .await
            .with_context(|| format!("not finished within {ROUND_LIMIT:?}"))?
    }

    /// One warm-up and `rounds` measured runs of `req`, each until `done`; returns the median
    /// and records every round with the server's, the database's and the bench's CPU time.
    async fn rounds(&mut self, key: &str, req: &RunCommandRequest, wait: Wait, rounds: usize) -> anyhow::Result<f64> {
        let mut times = Vec::new();
        let mut server_cpu = Vec::new();
        let mut database_cpu = Vec::new();
        let mut bench_cpu = Vec::new();
        for round in 0..=rounds {
            self.settle().await;
            let server = CpuMeters::start(&self.pids);
            let database = CpuMeters::start(&self.database_pids);
            let own = CpuMeter::start(std::process::id())?;
            let timed = self.timed(req, wait).await?;
            check_status(&timed)?;
            if round == 0 {
                self.api
                    .check_all_success(&timed.invoke_id, req.instance_ids.len())
                    .await?;
                continue;
            }
            times.push(ms(timed.elapsed));
            server_cpu.push(ms(server.read()));
            database_cpu.push(ms(database.read()));
            bench_cpu.push(ms(own.read()?.0));
        }
        let p50 = median(&times);
        self.log(format!("{key}: {p50:.0} ms (rounds {times:.0?})"));
        let phases = self.phases(req).await?;
        self.results.detail(
            key,
            json!({
                "p50_ms": p50,
                "phases_of_an_extra_watched_round": phases,
                "rounds_ms": times,
                "server_cpu_ms": server_cpu,
                "database_cpu_ms": (!self.database_pids.is_empty()).then_some(database_cpu),
                "bench_cpu_ms": bench_cpu,
                "instances": req.instance_ids.len(),
                "content": req.spec.content,
                "waited_by": format!("{wait:?}"),
            }),
        );
        Ok(p50)
    }

    /// One more run, watching every event, for a breakdown of where the time goes: when the
    /// POST answered, and when the first and last results were seen `Running` and terminal.
    /// Watching everything costs the server extra work, so this run is not a measured round.
    async fn phases(&self, req: &RunCommandRequest) -> anyhow::Result<serde_json::Value> {
        self.settle().await;
        let started = Instant::now();
        let (mut running, mut terminal) = (Vec::new(), Vec::new());
        let run = self.api.run_until_done(req, None, |event| {
            if let StreamEvent::Status { invocation_status, .. } = event {
                let at = ms(started.elapsed());
                if invocation_status.is_terminal() {
                    terminal.push(at);
                } else {
                    running.push(at);
                }
            }
        });
        let timed = tokio::time::timeout(ROUND_LIMIT, run).await??;
        check_status(&timed)?;
        let first_last = |v: &[f64]| json!([v.first(), v.last()]);
        Ok(json!({
            "post_answered_ms": ms(timed.posted),
            "running_seen_first_last_ms": first_last(&running),
            "terminal_seen_first_last_ms": first_last(&terminal),
            "done_ms": ms(timed.elapsed),
            "status_events": running.len() + terminal.len(),
        }))
    }

    async fn virtual_phase(&mut self) -> anyhow::Result<()> {
        let n = self.args.virtual_agents;
        let config = SwarmConfig::new(&self.args.server);

        let started = Instant::now();
        let identities = swarm::enrol(&self.api.client, &config, "bench-virtual", n, "vagent").await?;
        let enrol_ms = ms(started.elapsed());
        self.log(format!("enrolled {n} virtual agents in {enrol_ms:.0} ms"));
        self.settle().await;

        let started = Instant::now();
        let swarm = Swarm::connect(config, identities).await?;
        let connect_ms = ms(started.elapsed());
        self.log(format!("connected {n} virtual agents in {connect_ms:.0} ms"));
        self.settle().await;
        self.results.detail(
            "virtual_setup",
            json!({
                "agents": n,
                "enrol_ms": enrol_ms,
                "connect_ms": connect_ms,
                "server_rss_after_connect_mb": procfs::rss_mib(self.args.server_pid)?,
                "bench_rss_after_connect_mb": procfs::rss_mib(std::process::id())?,
            }),
        );

        let outcome = self.virtual_scenarios(&swarm).await;
        let counters = swarm.counters();
        self.results.detail(
            "swarm",
            json!({
                "disconnects": counters.disconnects.load(Ordering::Relaxed),
                "heartbeats_sent": counters.heartbeats_sent.load(Ordering::Relaxed),
                "tasks_finished": counters.tasks_finished.load(Ordering::Relaxed),
                "chunks_sent": counters.chunks_sent.load(Ordering::Relaxed),
            }),
        );
        let started = Instant::now();
        swarm.close(Duration::from_secs(30)).await;
        let settled = self.settle().await;
        self.results
            .detail("virtual_teardown_ms", json!(ms(started.elapsed() + settled)));
        outcome
    }

    async fn virtual_scenarios(&mut self, swarm: &Swarm) -> anyhow::Result<()> {
        let ids = swarm.instance_ids();
        let rounds = self.args.rounds;
        let content = "#bench out=3\necho hi";
        for count in [1000, 10_000] {
            if ids.len() < count {
                continue;
            }
            let key = format!("fanout_virtual_{count}_p50_ms");
            let req = RunCommandRequest::shell(ids[..count].to_vec(), content);
            match self.rounds(&key, &req, Wait::Stream, rounds).await {
                Ok(p50) => self.results.set(&key, p50),
                Err(e) => self.fail(&key, e),
            }
        }
        if let Err(e) = self.check_virtual_output(ids).await {
            self.fail("virtual output check", e);
        }
        if let Err(e) = self.live_latency(&ids[..self.args.live_tasks.min(ids.len())]).await {
            self.fail("live_latency_p99_ms", e);
        }
        if let Err(e) = self.console_page(ids.len()).await {
            self.fail("console_instances_page_p50_ms", e);
        }
        if let Err(e) = self.connections_rss(swarm).await {
            self.fail("connections_server_rss", e);
        }
        if let Err(e) = self.console_panel(ids.len()).await {
            self.fail("console_output_panel_10000_first_row_ms", e);
        }
        // Last: a million results in the store change what the figures above measure.
        if self.args.only.iter().any(|g| g == "records") {
            if let Err(e) = self.records(ids).await {
                self.fail("records", e);
            }
        }
        Ok(())
    }

    /// The records group: a month of records (1,010,000 results) written into the store, then
    /// the Execution Records page, `?status=Failed` and one invocation of 10,000 results, each
    /// timed over 20 requests; then the retention purge of the month while 100 streams flow.
    async fn records(&mut self, ids: &[String]) -> anyhow::Result<()> {
        let retention = Duration::from_secs(self.args.retention_days * 86_400);
        let lead = Duration::from_secs(self.args.purge_lead_secs);
        let created = fleetrun::store::now_ms() - retention.as_millis() as i64 + lead.as_millis() as i64;
        let db = self.args.work_dir.join("server").join("fleetrun.db");
        self.settle().await;
        let seeded = records::seed(&db, ids, created, retention).await?;
        self.log(format!(
            "seeded {} results in {:.1} s ({:.0} database bytes each)",
            seeded.results,
            seeded.took.as_secs_f64(),
            seeded.bytes_per_result
        ));
        self.results.set("db_bytes_per_result", seeded.bytes_per_result);
        self.results.detail(
            "records_seed",
            json!({ "results": seeded.results, "secs": seeded.took.as_secs_f64() }),
        );

        let cookie = self.api.console_cookie().await?;
        let page = self
            .time_gets(
                "records_page_1m_results_p50_ms",
                "/console/invocations",
                Some(&cookie),
                |body| body.contains(records::BIG_ID),
            )
            .await?;
        let filtered = self
            .time_gets(
                "api_invocations_filtered_1m_results_p50_ms",
                "/api/v1/invocations?status=Failed",
                None,
                |body| body.contains(&format!("\"total\":{}", records::INVOCATIONS / 50)),
            )
            .await?;
        let show = self
            .time_gets(
                "invocation_show_10000_results_p50_ms",
                &format!("/api/v1/invocations/{}", records::BIG_ID),
                None,
                |body| body.matches("\"instance_id\"").count() as u64 == records::BIG_RESULTS,
            )
            .await?;
        self.log(format!(
            "with a million results: Execution Records {page:.1} ms, ?status=Failed {filtered:.1} ms, \
             one invocation of 10,000 results {show:.1} ms"
        ));
        self.purge_latency(&ids[..ids.len().min(100)], seeded.due_at_ms).await
    }

    /// Times 20 GETs of `path` (after one warm-up whose body must satisfy `check`), as the
    /// console (`cookie`) or the API's admin, and records the median under `key`.
    async fn time_gets(
        &mut self,
        key: &str,
        path: &str,
        cookie: Option<&str>,
        check: impl Fn(&str) -> bool,
    ) -> anyhow::Result<f64> {
        let http = reqwest::Client::new();
        let url = format!("{}{path}", self.api.base);
        let mut times = Vec::new();
        self.settle().await;
        for round in 0..=20 {
            let request = match cookie {
                Some(cookie) => http.get(&url).header("cookie", cookie),
                None => http.get(&url).basic_auth("admin", Some(self.api.password())),
            };
            let started = Instant::now();
            let response = request.send().await?;
            let status = response.status();
            let body = response.text().await?;
            let elapsed = ms(started.elapsed());
            if !status.is_success() {
                bail!("GET {path} answered {status}");
            }
            if round == 0 {
                if !check(&body) {
                    bail!(
                        "GET {path} did not show what was seeded: {}",
                        &body[..body.len().min(300)]
                    );
                }
                continue;
            }
            times.push(elapsed);
        }
        let p50 = median(&times);
        self.results.set(key, p50);
        self.results.detail(key, json!({ "rounds_ms": times }));
        Ok(p50)
    }

    /// `live_latency_p99_during_purge_ms`: 100 virtual agents print a 100-byte line every 200 ms
    /// from before the seeded month falls due until the purge has deleted all of it; the figure
    /// is the p99 latency of the lines received while the purge ran (seen through the API: the
    /// count of seeded invocations falling from 100,000 to 0).
    async fn purge_latency(&mut self, ids: &[String], due_at_ms: i64) -> anyhow::Result<()> {
        let (every_ms, size) = (200u64, 100usize);
        let until_due = Duration::from_millis((due_at_ms - fleetrun::store::now_ms()).max(0) as u64);
        let lines = (until_due.as_millis() as u64 + 300_000) / every_ms;
        let content = format!("#bench stream={lines} every={every_ms} size={size}");
        let mut req = RunCommandRequest::shell(ids.to_vec(), content);
        req.spec.timeout_secs = lines * every_ms / 1000 + 60;
        let created = self.api.client.run(&req).await?;
        self.log(format!(
            "purge: streams started; the month falls due in {:.0} s",
            until_due.as_secs_f64()
        ));

        // Watches the seeded invocations go, and stops the streams once they are gone.
        let api = self.api.clone();
        let invoke_id = created.invoke_id.clone();
        let window = format!(
            "since={}&until={}&page_size=1",
            rfc3339_ms(
                due_at_ms
                    - self.args.retention_days as i64 * 86_400_000
                    - (records::INVOCATIONS / records::PER_MS) as i64
            ),
            rfc3339_ms(due_at_ms - self.args.retention_days as i64 * 86_400_000 + 1)
        );
        let watcher = tokio::spawn(async move {
            let limit = Instant::now() + until_due + Duration::from_secs(240);
            let (mut start, mut end) = (None, None);
            while end.is_none() && Instant::now() < limit {
                let left = api.client.invocations(&window).await?.total;
                let now = Instant::now();
                if left < records::INVOCATIONS && start.is_none() {
                    start = Some(now);
                }
                if left == 0 {
                    end = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            api.client.stop(&invoke_id, None).await?;
            match (start, end) {
                (Some(start), Some(end)) => anyhow::Ok((start, end)),
                _ => bail!("the seeded month was not purged within 240 s of falling due"),
            }
        });
        let server = CpuMeter::start(self.args.server_pid)?;
        let mut received: Vec<(Instant, f64)> = Vec::new();
        self.api
            .client
            .stream(&created.invoke_id, None, |event| {
                if let StreamEvent::Output { data, .. } = event {
                    let (at, now) = (Instant::now(), swarm::clock_micros());
                    for sent in swarm::stamps(data) {
                        received.push((at, now.saturating_sub(sent) as f64 / 1000.0));
                    }
                }
            })
            .await?;
        let (start, end) = watcher.await??;
        let during: Vec<f64> = received
            .iter()
            .filter(|(at, _)| *at >= start && *at <= end)
            .map(|(_, latency)| *latency)
            .collect();
        let p99 = percentile(&during, 99.0);
        let purge_secs = (end - start).as_secs_f64();
        self.log(format!(
            "purge of the month took {purge_secs:.1} s; {} lines meanwhile, p99 {p99:.1} ms",
            during.len()
        ));
        if during.is_empty() {
            bail!("no line arrived while the purge ran");
        }
        self.results.set("live_latency_p99_during_purge_ms", p99);
        self.results.detail(
            "live_latency_during_purge",
            json!({
                "streams": ids.len(),
                "purge_secs": purge_secs,
                "lines_during_purge": during.len(),
                "p50_ms": percentile(&during, 50.0),
                "p99_ms": p99,
                "max_ms": percentile(&during, 100.0),
                "server_cpu_ms": ms(server.read()?.0),
            }),
        );
        Ok(())
    }

    /// `console_output_panel_10000_first_row_ms`: in a headless Chromium, the Instances page,
    /// every instance selected (the page's box, then "Select all matching"), Send Command, a
    /// command typed, Run. Timed in the page from the click on Run until the Command Output
    /// panel's first row and its counts are in the document and a frame has been drawn. The
    /// median of `rounds` runs after a warm-up, each run waited out before the next.
    async fn console_panel(&mut self, instances: usize) -> anyhow::Result<()> {
        let cookie = self.api.console_cookie().await?;
        let (name, value) = cookie.split_once('=').context("a session cookie is name=value")?;
        let browser = Browser::start().await?;
        let outcome = self.console_panel_rounds(&browser, name, value, instances).await;
        browser.close().await;
        outcome
    }

    async fn console_panel_rounds(
        &mut self,
        browser: &Browser,
        cookie: &str,
        session: &str,
        instances: usize,
    ) -> anyhow::Result<()> {
        let login = format!("{}/login", self.api.base);
        browser.goto(&login).await.context("opening the login page")?;
        browser
            .cookie(cookie, session)
            .await
            .context("setting the session cookie")?;
        let mut times = Vec::new();
        for round in 0..=self.args.rounds {
            self.settle().await;
            let page = format!("{}/console/instances", self.api.base);
            browser.goto(&page).await.context("opening the Instances page")?;
            let select = SELECT_ALL_JS.replace("{N}", &instances.to_string());
            browser.run(&select).await.context("selecting every instance")?;
            let drawn = browser.run(SEND_AND_TIME_JS).await.context("sending the command")?;
            let invoke_id = drawn["panel"]
                .as_str()
                .and_then(|id| id.strip_prefix("panel-"))
                .context("the Command Output panel has no invocation id")?
                .to_string();
            let (rows, counts) = (
                drawn["rows"].as_u64().unwrap_or(0),
                drawn["counts"].as_str().unwrap_or(""),
            );
            if rows == 0 || !counts.starts_with(&format!("{instances} instances")) {
                bail!("the panel drew {rows} rows and counts {counts:?}");
            }
            let elapsed = drawn["ms"].as_f64().context("no time from the page")?;
            self.log(format!(
                "console panel round {round}: {elapsed:.0} ms ({rows} rows drawn; {counts})"
            ));
            if round > 0 {
                times.push(elapsed);
            }
            let until = Instant::now() + ROUND_LIMIT;
            while !self
                .api
                .client
                .invocation(&invoke_id)
                .await?
                .invocation_status
                .is_terminal()
            {
                if Instant::now() > until {
                    bail!("{invoke_id} did not finish");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let p50 = median(&times);
        self.results.set("console_output_panel_10000_first_row_ms", p50);
        self.results.detail(
            "console_output_panel",
            json!({ "instances": instances, "rounds_ms": times, "p50_ms": p50 }),
        );
        Ok(())
    }

    /// Checks, once, that stored output is exactly what the virtual agents sent, across several
    /// 64 KiB chunks.
    async fn check_virtual_output(&mut self, ids: &[String]) -> anyhow::Result<()> {
        let some = ids[..ids.len().min(20)].to_vec();
        let len = 200_000;
        let req = RunCommandRequest::shell(some.clone(), format!("#bench out={len}"));
        let timed = self.timed(&req, Wait::Stream).await?;
        check_status(&timed)?;
        for id in &some {
            let stored = self.api.client.output(&timed.invoke_id, id).await?;
            if stored != swarm::pattern(id, len) {
                bail!("stored output of {id} differs from what its virtual agent sent");
            }
        }
        Ok(())
    }

    /// `live_latency_p99_ms`: `tasks` virtual agents each print a 100-byte line every 200 ms
    /// for 5 s. Each line carries the time the agent read it (just before sending); one API
    /// stream subscriber watching the whole invocation compares it with the time it receives
    /// the line. Agent and subscriber share this process's monotonic clock.
    async fn live_latency(&mut self, ids: &[String]) -> anyhow::Result<()> {
        let (chunks, every_ms, size) = (25u64, 200u64, 100usize);
        let content = format!("#bench stream={chunks} every={every_ms} size={size}");
        let req = RunCommandRequest::shell(ids.to_vec(), content);
        let mut latencies = Vec::with_capacity(ids.len() * chunks as usize);
        let mut replayed = 0u64;
        self.settle().await;
        let server = CpuMeter::start(self.args.server_pid)?;
        let run = self.api.run_until_done(&req, None, |event| {
            if let StreamEvent::Output { seq, data, .. } = event {
                let now = swarm::clock_micros();
                // Output re-read from the store (after the watcher lagged) counts too: each
                // line reaches the subscriber exactly once, live or replayed.
                for sent in swarm::stamps(data) {
                    latencies.push(now.saturating_sub(sent) as f64 / 1000.0);
                    replayed += u64::from(seq.is_none());
                }
            }
        });
        let timed = tokio::time::timeout(ROUND_LIMIT, run).await??;
        check_status(&timed)?;
        let expected = ids.len() as u64 * chunks;
        let p99 = percentile(&latencies, 99.0);
        self.log(format!(
            "live latency over {} of {expected} lines: p50 {:.1} ms, p99 {p99:.1} ms",
            latencies.len(),
            percentile(&latencies, 50.0)
        ));
        self.results.detail(
            "live_latency",
            json!({
                "tasks": ids.len(),
                "lines_per_task": chunks,
                "every_ms": every_ms,
                "line_bytes": size,
                "samples": latencies.len(),
                "expected": expected,
                "replayed_lines": replayed,
                "p50_ms": percentile(&latencies, 50.0),
                "p90_ms": percentile(&latencies, 90.0),
                "p99_ms": p99,
                "max_ms": percentile(&latencies, 100.0),
                "run_ms": ms(timed.elapsed),
                "server_cpu_ms": ms(server.read()?.0),
            }),
        );
        if (latencies.len() as u64) != expected {
            bail!("{} of {expected} lines arrived", latencies.len());
        }
        self.results.set("live_latency_p99_ms", p99);
        Ok(())
    }

    /// `console_instances_page_p50_ms`: a signed-in GET of the Instances page (all regions,
    /// first page) with every virtual instance registered, body read in full.
    async fn console_page(&mut self, registered: usize) -> anyhow::Result<()> {
        let cookie = self.api.console_cookie().await?;
        // The page counts every instance the filter matches: all registered ones.
        let counts_all = |body: &str| {
            let total = body
                .split(" instances</span>")
                .next()
                .and_then(|head| head.rsplit(' ').next())
                .and_then(|n| n.parse::<usize>().ok());
            body.contains("<h1>Instances</h1>") && total.is_some_and(|n| n >= registered)
        };
        let p50 = self
            .time_gets(
                "console_instances_page_p50_ms",
                "/console/instances",
                Some(&cookie),
                counts_all,
            )
            .await?;
        self.log(format!("console Instances page: {p50:.1} ms"));
        Ok(())
    }

    /// `connections_10000_server_rss_mb`: the server's VmRSS once every agent has sent another
    /// heartbeat (a full interval of all of them connected and heartbeating).
    async fn connections_rss(&mut self, swarm: &Swarm) -> anyhow::Result<()> {
        let counters = swarm.counters();
        let n = swarm.instance_ids().len() as u64;
        let interval = Duration::from_secs(counters.heartbeat_secs.load(Ordering::Relaxed).max(1));
        let before = counters.heartbeats_sent.load(Ordering::Relaxed);
        let started = Instant::now();
        while counters.heartbeats_sent.load(Ordering::Relaxed) < before + n && started.elapsed() < interval * 2 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.settle().await;
        let connected = counters.connected.load(Ordering::Relaxed);
        let rss = procfs::rss_mib(self.args.server_pid)?;
        self.log(format!("server RSS with {connected} agents connected: {rss:.0} MB"));
        self.results.detail(
            "connections_rss",
            json!({
                "connected": connected,
                "heartbeats_in_window": counters.heartbeats_sent.load(Ordering::Relaxed) - before,
                "window_ms": ms(started.elapsed()),
                "server_rss_mb": rss,
                "server_peak_rss_mb": procfs::peak_rss_mib(self.args.server_pid)?,
            }),
        );
        if connected != n {
            bail!("only {connected} of {n} virtual agents connected");
        }
        if n == 10_000 {
            self.results.set("connections_10000_server_rss_mb", rss);
        }
        Ok(())
    }

    async fn real_phase(&mut self) -> anyhow::Result<()> {
        let n = self.args.real_agents;
        let dir = self.args.work_dir.join("agents");
        let started = Instant::now();
        let fleet = RealFleet::start(&self.api, &self.args.agent, &dir, "bench-real", n, 10).await?;
        let start_ms = ms(started.elapsed());
        self.log(format!("{n} real agents online in {start_ms:.0} ms"));
        self.results
            .detail("real_setup", json!({ "agents": n, "start_ms": start_ms }));
        let outcome = self.real_scenarios(&fleet).await;
        fleet.stop(Duration::from_secs(5)).await;
        outcome
    }

    async fn real_scenarios(&mut self, fleet: &RealFleet) -> anyhow::Result<()> {
        let ids = fleet.instance_ids();
        let rounds = self.args.rounds;
        let n = ids.len();
        let key = format!("fanout_real_{n}_p50_ms");
        let req = RunCommandRequest::shell(ids.clone(), "echo hi");
        match self.rounds(&key, &req, Wait::Stream, rounds).await {
            Ok(p50) => self.results.set(&key, p50),
            Err(e) => self.fail(&key, e),
        }
        if n > 10 {
            // Beside Salt's 10-minion figure.
            let req = RunCommandRequest::shell(ids[..10].to_vec(), "echo hi");
            if let Err(e) = self.rounds("fanout_real_10_p50_ms", &req, Wait::Stream, rounds).await {
                self.fail("fanout_real_10_p50_ms", e);
            }
        }
        if n >= 10 {
            let key = "output_real_10x1mb_p50_ms";
            let req = RunCommandRequest::shell(ids[..10].to_vec(), "head -c 1000000 /dev/urandom | base64");
            match self.rounds(key, &req, Wait::Poll, rounds).await {
                Ok(p50) => self.results.set(key, p50),
                Err(e) => self.fail(key, e),
            }
            let key = "send_file_100mb_10_agents_ms";
            match self.send_file(&ids[..10]).await {
                Ok(p50) => self.results.set(key, p50),
                Err(e) => self.fail(key, e),
            }
        }
        Ok(())
    }

    /// `send_file_100mb_10_agents_ms`: 100 MiB of random bytes uploaded once (POST /api/v1/files)
    /// and put in place by 10 real agents, each verifying the SHA-256; from the start of the
    /// upload until every result is final (polled every 50 ms). The agents share this machine, so
    /// each round goes to a directory of its own with overwrite on. Median of up to 3 rounds.
    async fn send_file(&mut self, ids: &[String]) -> anyhow::Result<f64> {
        use fleetrun::protocol::files::FileSendStatus;
        use rand::RngCore as _;
        let dir = self.args.work_dir.join("send-file");
        std::fs::create_dir_all(&dir)?;
        let source = dir.join("source.bin");
        let mut data = vec![0u8; 100 << 20];
        rand::thread_rng().fill_bytes(&mut data);
        std::fs::write(&source, &data)?;
        drop(data);
        let mut runs = Vec::new();
        for round in 0..self.args.rounds.clamp(1, 3) {
            self.settle().await;
            let target = dir.join(format!("round-{round}"));
            let fields = [
                ("instance_ids", ids.join(",")),
                ("target_dir", target.to_string_lossy().into_owned()),
                ("overwrite", "true".to_string()),
                ("timeout_secs", "300".to_string()),
            ];
            let started = Instant::now();
            let created = self.api.client.send_file(&source, &fields).await?;
            let send = loop {
                let send = self.api.client.file_send(&created.send_id).await?;
                if send.status.is_final() {
                    break send;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let elapsed = ms(started.elapsed());
            if send.status != FileSendStatus::Success {
                bail!("the send ended {}: {:?}", send.status, send.results);
            }
            runs.push(elapsed);
            let _ = std::fs::remove_dir_all(&target);
        }
        let _ = std::fs::remove_file(&source);
        let p50 = median(&runs);
        self.log(format!(
            "send file: 100 MiB to {} agents in {p50:.0} ms (runs {runs:.0?})",
            ids.len()
        ));
        self.results
            .detail("send_file", json!({ "mib": 100, "agents": ids.len(), "runs_ms": runs }));
        Ok(p50)
    }

    /// The ingest figure, on an agent of its own.
    async fn ingest_phase(&mut self) -> anyhow::Result<()> {
        let dir = self.args.work_dir.join("agents");
        let fleet = RealFleet::start(&self.api, &self.args.agent, &dir, "bench-ingest", 1, 1).await?;
        let outcome = self.ingest(&fleet.instance_ids()[0], fleet.agents[0].pid).await;
        fleet.stop(Duration::from_secs(5)).await;
        outcome
    }

    /// `ingest_single_mb_per_s`: one real agent prints `ingest_mib` MiB as fast as `yes` can;
    /// the figure is the bytes over the time from the POST until the API reports the result
    /// terminal (polled every 20 ms, so no watcher makes the server re-send the output). The
    /// server applies a task's end only after every output chunk is stored, and acks follow the
    /// commit, so this is bytes received, stored (or counted as dropped) and acknowledged per second.
    async fn ingest(&mut self, instance_id: &str, agent_pid: u32) -> anyhow::Result<()> {
        let bytes = self.args.ingest_mib << 20;
        let mut req = RunCommandRequest::shell(
            vec![instance_id.to_string()],
            format!("yes fleetrun-bench-ingest-line | head -c {bytes}"),
        );
        req.spec.timeout_secs = 600;
        let mut rates = Vec::new();
        let mut server_cpu = Vec::new();
        let mut agent_cpu = Vec::new();
        for _ in 0..self.args.ingest_rounds.max(1) {
            self.settle().await;
            let server = CpuMeter::start(self.args.server_pid)?;
            let agent = CpuMeter::start(agent_pid)?;
            let timed = self.timed(&req, Wait::Poll).await?;
            check_status(&timed)?;
            server_cpu.push(ms(server.read()?.0));
            agent_cpu.push(ms(agent.read()?.0));
            let inv = self.api.invocation_summary(&timed.invoke_id).await?;
            let result = inv.results.unwrap_or_default().pop().context("no result")?;
            let stored = self.api.client.output(&timed.invoke_id, instance_id).await?;
            if stored.len() as u64 + result.dropped != bytes {
                bail!(
                    "the server accounted for {} + {} dropped bytes, expected {bytes}",
                    stored.len(),
                    result.dropped
                );
            }
            rates.push(self.args.ingest_mib as f64 / timed.elapsed.as_secs_f64());
        }
        let rate = median(&rates);
        self.log(format!("ingest: {rate:.1} MiB/s (runs {rates:.1?})"));
        self.results.set("ingest_single_mb_per_s", rate);
        self.results.detail(
            "ingest",
            json!({
                "mib": self.args.ingest_mib,
                "runs_mib_per_s": rates,
                "server_cpu_ms": server_cpu,
                "agent_cpu_ms": agent_cpu,
            }),
        );
        Ok(())
    }

    /// The `pg` group (issue 12): `virtual_agents` virtual agents spread evenly over the
    /// replicas of `--replicas`, then the fan-outs of 1,000 and 10,000 sent through the first
    /// replica. The tasks of agents held by the others reach them through PostgreSQL (a NOTIFY
    /// naming the invocation, then its rows), and the first replica's stream hears of their
    /// results the same way. The clock runs as for `fanout_virtual_N_p50_ms`: from the POST
    /// until the stream's `done`.
    async fn pg_phase(&mut self) -> anyhow::Result<()> {
        let replicas = self.args.replicas.clone();
        if replicas.is_empty() || replicas.len() != self.args.replica_pids.len() {
            bail!("the pg group needs --replicas and as many --replica-pids");
        }
        for url in &replicas {
            Api::new(url, &self.args.password)
                .wait_healthy(Duration::from_secs(30))
                .await?;
        }
        let first = Api::new(&replicas[0], &self.args.password);
        let sqlite_api = std::mem::replace(&mut self.api, first);
        let sqlite_pids = std::mem::replace(&mut self.pids, self.args.replica_pids.clone());
        self.database_pids = procfs::pids_named("postgres");
        let outcome = self.pg_scenarios(&replicas).await;
        self.api = sqlite_api;
        self.pids = sqlite_pids;
        self.database_pids.clear();
        outcome
    }

    async fn pg_scenarios(&mut self, replicas: &[String]) -> anyhow::Result<()> {
        let n = self.args.virtual_agents;
        let config = SwarmConfig::new(&replicas[0]);
        let started = Instant::now();
        let identities = swarm::enrol(&self.api.client, &config, "bench-pg", n, "pgagent").await?;
        let enrol_ms = ms(started.elapsed());
        self.log(format!("pg: enrolled {n} virtual agents in {enrol_ms:.0} ms"));
        self.settle().await;

        // Agent n on replica n mod k, so the first 1,000 are spread as evenly as all of them.
        let ids: Vec<String> = identities.iter().map(|i| i.instance_id.clone()).collect();
        let mut shares = vec![Vec::new(); replicas.len()];
        for (n, identity) in identities.into_iter().enumerate() {
            shares[n % replicas.len()].push(identity);
        }
        let started = Instant::now();
        let mut swarms = Vec::new();
        for (url, share) in replicas.iter().zip(shares) {
            swarms.push(Swarm::connect(SwarmConfig::new(url), share).await?);
        }
        let connect_ms = ms(started.elapsed());
        self.log(format!(
            "pg: connected {n} virtual agents to {} replicas in {connect_ms:.0} ms",
            replicas.len()
        ));
        self.settle().await;
        let rss: Vec<f64> = self
            .pids
            .iter()
            .map(|pid| procfs::rss_mib(*pid).unwrap_or(0.0))
            .collect();
        self.results.detail(
            "pg_setup",
            json!({
                "agents": n,
                "replicas": replicas.len(),
                "agents_per_replica": swarms.iter().map(|s| s.instance_ids().len()).collect::<Vec<_>>(),
                "enrol_ms": enrol_ms,
                "connect_ms": connect_ms,
                "replica_rss_after_connect_mb": rss,
            }),
        );

        let outcome = self.pg_fanouts(&ids).await;
        let count = |f: fn(&swarm::Counters) -> u64| swarms.iter().map(|s| f(s.counters())).sum::<u64>();
        self.results.detail(
            "pg_swarm",
            json!({
                "disconnects": count(|c| c.disconnects.load(Ordering::Relaxed)),
                "tasks_finished": count(|c| c.tasks_finished.load(Ordering::Relaxed)),
            }),
        );
        for swarm in swarms {
            swarm.close(Duration::from_secs(30)).await;
        }
        outcome
    }

    async fn pg_fanouts(&mut self, ids: &[String]) -> anyhow::Result<()> {
        let content = "#bench out=3\necho hi";
        for count in [1000, 10_000] {
            if ids.len() < count {
                continue;
            }
            let key = format!("pg_fanout_virtual_{count}_p50_ms");
            let req = RunCommandRequest::shell(ids[..count].to_vec(), content);
            match self.rounds(&key, &req, Wait::Stream, self.args.rounds).await {
                Ok(p50) => self.results.set(&key, p50),
                Err(e) => self.fail(&key, e),
            }
        }
        Ok(())
    }
}

fn check_status(timed: &Timed) -> anyhow::Result<()> {
    if timed.status != InvocationStatus::Success {
        bail!("{} ended {}", timed.invoke_id, timed.status);
    }
    Ok(())
}

/// The size of `binary` once stripped of symbols and debug information, as users install it.
fn stripped_size(binary: &std::path::Path, work_dir: &std::path::Path) -> anyhow::Result<u64> {
    let stripped = work_dir.join("agent.stripped");
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(binary)
        .status()
        .context("cannot run `strip` (binutils) to measure the agent binary")?;
    anyhow::ensure!(status.success(), "strip {} failed", binary.display());
    Ok(std::fs::metadata(&stripped)?.len())
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds, for API time filters.
fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Selects every instance on the Instances page (its select-all box, then "Select all
/// matching") unless the tab's selection already holds `{N}`.
const SELECT_ALL_JS: &str = r##"
const want = "{N} selected";
const count = () => (document.getElementById("selected-count") || {}).textContent || "";
const click = (id) => {
  const element = document.getElementById(id);
  if (!element) throw new Error("no #" + id + " on " + location.pathname + " (" + document.title + ")");
  element.click();
};
if (!count().startsWith(want)) {
  click("select-all");
  click("select-matching");
}
return new Promise((resolve, reject) => {
  const start = Date.now();
  (function poll() {
    if (count().startsWith(want)) resolve(count());
    else if (Date.now() - start > 60000) reject(new Error("selection stuck at: " + count()));
    else setTimeout(poll, 50);
  })();
});
"##;

/// Opens Send Command with the selection, types a command and clicks Run; resolves with the
/// milliseconds until the panel's first row and counts are in the page and a frame is drawn.
const SEND_AND_TIME_JS: &str = r##"
return new Promise((resolve, reject) => {
  const until = (test, what, then) => {
    const start = Date.now();
    (function poll() {
      const found = test();
      if (found) then(found);
      else if (Date.now() - start > 60000) reject(new Error(what));
      else setTimeout(poll, 20);
    })();
  };
  const open = document.getElementById("send-command-open");
  if (!open) return reject(new Error("no Send Command button on " + location.pathname));
  open.click();
  // Ready once htmx has taken over the form (before that, Run would submit it natively).
  const ready = () => {
    const form = document.getElementById("send-form");
    return form && form["htmx-internal-data"] && document.getElementById("content-linux");
  };
  until(ready, "the Send Command dialog did not open", (content) => {
    content.value = "#bench out=100\necho hi";
    const result = document.getElementById("send-result");
    const drawn = () => {
      const row = result.querySelector("table.results tbody tr");
      const counts = result.querySelector(".summary .counts");
      return row && counts ? counts : null;
    };
    let started = 0;
    const observer = new MutationObserver(() => {
      const counts = drawn();
      if (!counts) return;
      observer.disconnect();
      const ms = performance.now() - started;
      // The next frame, where the page is visible (a hidden one draws none).
      const frame = document.visibilityState === "visible" ? requestAnimationFrame : (f) => setTimeout(f, 0);
      frame(() => setTimeout(() => resolve({
        ms: performance.now() - started,
        in_document_ms: ms,
        panel: result.querySelector(".output-panel").id,
        rows: result.querySelectorAll("table.results tbody tr").length,
        counts: counts.textContent.trim(),
        visibility: document.visibilityState,
      }), 0));
    });
    observer.observe(result, { childList: true, subtree: true });
    started = performance.now();
    document.getElementById("run-button").click();
    setTimeout(() => reject(new Error("no panel within 60 s: " + result.textContent.slice(0, 300))), 60000);
  });
});
"##;
