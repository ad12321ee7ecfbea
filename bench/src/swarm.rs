//! A swarm of virtual agents in one process. Each is a real WebSocket to `/agent/v1/connect`
//! speaking the real agent protocol (`Hello`/`Welcome`, heartbeats, `TaskStarted`, numbered
//! `Output`, `TaskFinished`), enrolled through a real activation code. Instead of spawning a
//! process, a virtual agent answers a task at once with output it makes up (see [`Directive`]).
//! It reconnects when the real agent's policy says (`fleetrun::agent::backoff`), so a reconnect
//! storm of virtual agents is the storm a real fleet would make.
//!
//! This file depends only on the `fleetrun` library and the crate's dependencies, so the smoke
//! test (`tests/bench_smoke.rs`) includes it as a module and drives the same code CI keeps working.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use fleetrun::agent::backoff::{Backoff, STABLE_AFTER, ServerBusy, parse_retry_after};
use fleetrun::client::ApiClient;
use fleetrun::protocol::agent::{
    AgentMessage, Frame, Hello, MAX_CHUNK_BYTES, MAX_FRAME_BYTES, Output, RunTask, ServerMessage, TaskFinished,
    TaskStarted,
};
use fleetrun::protocol::api::{CreateActivationRequest, RegisterRequest, RegisterResponse};
use fleetrun::protocol::{CommandType, OsType, OutputStream, PROTOCOL_VERSION, TaskEnd};
use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a connection may take from TCP connect to `Welcome`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Connection attempts before a virtual agent gives up during `Swarm::connect` (not counting
/// the server's 503s, which ask it to come back later).
const CONNECT_ATTEMPTS: u32 = 5;
/// Longest wait between failed attempts: a real agent's default `--reconnect-max-secs`.
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// The credential of one enrolled instance.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The enrolled instance (`i-…`).
    pub instance_id: String,
    secret: String,
}

/// How the swarm reaches the server and what its agents answer.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Server base URL, `http://127.0.0.1:port`.
    pub server: String,
    /// Enrolments and connection handshakes in flight at once.
    pub concurrency: usize,
    /// Output bytes of a task whose content has no `#bench` directive.
    pub default_output: usize,
    /// Largest output chunk sent (at most the protocol's 64 KiB).
    pub chunk_bytes: usize,
    /// Newest protocol version offered: 2 sends output as binary frames, 1 as JSON text.
    pub max_protocol_version: u32,
}

impl SwarmConfig {
    /// A swarm of `server` with 64 handshakes in flight and 3-byte answers in 64 KiB chunks.
    pub fn new(server: &str) -> Self {
        SwarmConfig {
            server: server.trim_end_matches('/').to_string(),
            concurrency: 64,
            default_output: 3,
            chunk_bytes: MAX_CHUNK_BYTES,
            max_protocol_version: PROTOCOL_VERSION,
        }
    }
}

/// Counters over the whole swarm, for reports.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections holding a `Welcome` right now.
    pub connected: AtomicU64,
    /// Connections lost after `Welcome` (each agent then reconnects).
    pub disconnects: AtomicU64,
    /// Heartbeats sent by all agents.
    pub heartbeats_sent: AtomicU64,
    /// `RunTask`s answered with `TaskStarted`.
    pub tasks_started: AtomicU64,
    /// `TaskFinished` sent.
    pub tasks_finished: AtomicU64,
    /// `Output` frames sent, and the bytes of output in them.
    pub chunks_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// The heartbeat interval the server announced in its last `Welcome`, in seconds.
    pub heartbeat_secs: AtomicU64,
    /// The reconnect window the server announced in its last `Welcome`, in milliseconds.
    pub reconnect_window_ms: AtomicU64,
    /// When every `Welcome` arrived (first connections and reconnections alike), in order.
    pub welcomes: Mutex<Vec<Instant>>,
    /// Connection attempts the server answered 503 (busy: come back after `Retry-After`).
    pub busy: AtomicU64,
}

/// Raises the soft limit of open files to the hard limit, so thousands of sockets fit.
/// Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft)
}

/// Creates one activation for `count` instances in `region` and enrols that many virtual
/// instances through `POST /agent/v1/register`, `concurrency` at a time.
pub async fn enrol(
    admin: &ApiClient,
    config: &SwarmConfig,
    region: &str,
    count: usize,
    name_prefix: &str,
) -> anyhow::Result<Vec<Identity>> {
    let activation = admin
        .create_activation(&CreateActivationRequest {
            region_id: region.to_string(),
            instance_count_limit: u32::try_from(count).context("too many instances for one activation")?,
            ttl_hours: Some(24),
            description: Some(format!("fleetrun-bench: {count} virtual agents")),
        })
        .await
        .context("cannot create the activation")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .build()?;
    let url = format!("{}/agent/v1/register", config.server);
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut set = JoinSet::new();
    for n in 0..count {
        let request = RegisterRequest {
            activation_id: activation.activation_id.clone(),
            activation_code: activation.activation_code.clone(),
            hostname: format!("{name_prefix}-{n:05}"),
            name: Some(format!("{name_prefix}-{n:05}")),
            os_type: OsType::Linux,
            os_name: "fleetrun-bench virtual agent".into(),
            ip_addresses: vec!["127.0.0.1".into()],
            agent_version: fleetrun::VERSION.into(),
            tags: Vec::new(),
        };
        let (http, url, permits) = (http.clone(), url.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let response = http.post(&url).json(&request).send().await?;
            if !response.status().is_success() {
                let status = response.status();
                bail!(
                    "register answered {status}: {}",
                    response.text().await.unwrap_or_default()
                );
            }
            let body: RegisterResponse = response.json().await?;
            Ok((
                n,
                Identity {
                    instance_id: body.instance_id,
                    secret: body.instance_secret,
                },
            ))
        });
    }
    let mut identities = vec![None; count];
    while let Some(joined) = set.join_next().await {
        let (n, identity) = joined?.context("cannot enrol a virtual agent")?;
        identities[n] = Some(identity);
    }
    Ok(identities.into_iter().flatten().collect())
}

/// A set of connected virtual agents. Dropping it without [`Swarm::close`] aborts them.
pub struct Swarm {
    /// Instance ids in enrolment order.
    instance_ids: Vec<String>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    agents: JoinSet<()>,
}

impl Swarm {
    /// Connects every identity (`config.concurrency` handshakes at a time) and returns once all
    /// of them hold a `Welcome`.
    pub async fn connect(config: SwarmConfig, identities: Vec<Identity>) -> anyhow::Result<Swarm> {
        let config = Arc::new(config);
        let counters = Arc::new(Counters::default());
        let shutdown = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let (ready_tx, mut ready_rx) = mpsc::channel(identities.len().max(1));
        let mut agents = JoinSet::new();
        let instance_ids = identities.iter().map(|i| i.instance_id.clone()).collect();
        for identity in identities {
            let agent = VirtualAgent {
                config: config.clone(),
                identity,
                counters: counters.clone(),
                shutdown: shutdown.clone(),
            };
            agents.spawn(agent.run(permits.clone(), ready_tx.clone()));
        }
        drop(ready_tx);
        let mut swarm = Swarm {
            instance_ids,
            counters,
            shutdown,
            agents,
        };
        for _ in 0..swarm.instance_ids.len() {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    swarm.shutdown.cancel();
                    return Err(e);
                }
                None => bail!("virtual agents ended before connecting"),
            }
        }
        // Later failures are counted as disconnects, not reported here.
        swarm.agents.detach_all();
        Ok(swarm)
    }

    /// Instance ids of the swarm's agents, in enrolment order.
    pub fn instance_ids(&self) -> &[String] {
        &self.instance_ids
    }

    /// The swarm's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Closes every connection and waits (up to `grace`) for the agents to finish.
    pub async fn close(self, grace: Duration) {
        self.shutdown.cancel();
        let deadline = Instant::now() + grace;
        while self.counters.connected.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What a virtual agent makes of a task's content: a line `#bench key=value …` anywhere in it.
///
/// - `out=N`: answer at once with N bytes of [`pattern`] output (default: the swarm's).
/// - `stream=K every=MS size=N`: send K chunks of N bytes, one every MS milliseconds; each chunk
///   starts with the time it was "read" ([`stamp`]), for latency measurements.
/// - `exit=C`: report exit code C (default 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directive {
    /// Bytes printed at once (`out=`).
    pub output: usize,
    /// Lines streamed instead: (count, interval, bytes per line).
    pub stream: Option<(u64, Duration, usize)>,
    /// Exit code reported.
    pub exit_code: i32,
}

impl Directive {
    /// The directive of a task's content; `default_output` bytes when it has none.
    pub fn parse(content: &str, default_output: usize) -> Directive {
        let mut directive = Directive {
            output: default_output,
            stream: None,
            exit_code: 0,
        };
        let Some(line) = content.lines().find_map(|l| l.trim().strip_prefix("#bench ")) else {
            return directive;
        };
        let (mut count, mut every, mut size) = (None, 1000, 64);
        for (key, value) in line.split_whitespace().filter_map(|kv| kv.split_once('=')) {
            let Ok(n) = value.parse::<u64>() else { continue };
            match key {
                "out" => directive.output = n as usize,
                "stream" => count = Some(n),
                "every" => every = n,
                "size" => size = n as usize,
                "exit" => directive.exit_code = n as i32,
                _ => {}
            }
        }
        directive.stream = count.map(|k| (k, Duration::from_millis(every), size.max(STAMP_BYTES + 1)));
        directive
    }
}

/// The output a virtual agent prints for `out=N`: the line `<instance id> hi\n` repeated and cut
/// at N bytes. Tests compare stored output with it.
pub fn pattern(instance_id: &str, len: usize) -> Vec<u8> {
    let line = format!("{instance_id} hi\n");
    line.bytes().cycle().take(len).collect()
}

/// Microseconds since the first call in this process: the clock of [`stamp`]s.
pub fn clock_micros() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Width of the time stamp that opens a streamed chunk.
const STAMP_BYTES: usize = 16;

/// A streamed chunk of `size` bytes: the 16-digit send time, the chunk number, padding, `\n`.
fn stamp(seq: u64, size: usize) -> Vec<u8> {
    let mut data = format!("{:016} {seq}", clock_micros()).into_bytes();
    data.resize(size - 1, b'.');
    data.push(b'\n');
    data
}

/// The send times of the streamed chunks in `data` (one per line), in [`clock_micros`].
pub fn stamps(data: &[u8]) -> impl Iterator<Item = u64> + '_ {
    data.split(|b| *b == b'\n')
        .filter_map(|line| std::str::from_utf8(line.get(..STAMP_BYTES)?).ok()?.parse().ok())
}

/// A streamed task still sending.
struct Paced {
    task: String,
    seq: u64,
    left: u64,
    every: Duration,
    size: usize,
    next_at: tokio::time::Instant,
    exit_code: i32,
}

/// What a virtual agent keeps of a `Welcome`.
struct Welcomed {
    heartbeat: Duration,
    protocol_version: u32,
    reconnect_window_ms: Option<u64>,
}

impl Counters {
    fn welcomed(&self, welcome: &Welcomed, at: Instant) {
        self.heartbeat_secs
            .store(welcome.heartbeat.as_secs(), Ordering::Relaxed);
        let window = welcome.reconnect_window_ms.unwrap_or_default();
        self.reconnect_window_ms.store(window, Ordering::Relaxed);
        self.welcomes.lock().unwrap_or_else(|e| e.into_inner()).push(at);
    }
}

struct VirtualAgent {
    config: Arc<SwarmConfig>,
    identity: Identity,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
}

impl VirtualAgent {
    /// Connects, serves, and reconnects when the real agent's policy ([`Backoff`]) says.
    async fn run(self, permits: Arc<Semaphore>, ready_tx: mpsc::Sender<anyhow::Result<()>>) {
        let mut ready_tx = Some(ready_tx);
        let mut backoff = Backoff::new(RECONNECT_MAX);
        let mut failures = 0u32;
        loop {
            let opened = {
                // Only first connections queue for the swarm's handshake slots: reconnects are
                // paced by the policy alone, as a real fleet's are.
                let _permit = match ready_tx {
                    Some(_) => Some(permits.acquire().await),
                    None => None,
                };
                tokio::select! {
                    opened = tokio::time::timeout(CONNECT_TIMEOUT, self.open()) => {
                        opened.unwrap_or_else(|_| Err(anyhow::anyhow!("no Welcome within {CONNECT_TIMEOUT:?}")))
                    }
                    _ = self.shutdown.cancelled() => return,
                }
            };
            let delay = match opened {
                Ok((socket, welcome)) => {
                    let arrived = Instant::now();
                    backoff.welcomed(welcome.reconnect_window_ms);
                    self.counters.welcomed(&welcome, arrived);
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(Ok(())).await;
                    }
                    self.counters.connected.fetch_add(1, Ordering::Relaxed);
                    let outcome = self.serve(socket, welcome.heartbeat, welcome.protocol_version).await;
                    self.counters.connected.fetch_sub(1, Ordering::Relaxed);
                    if outcome.is_ok() {
                        return;
                    }
                    self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    let stable = arrived.elapsed() >= STABLE_AFTER;
                    backoff.lost(Instant::now(), stable, &mut rand::thread_rng())
                }
                Err(e) => {
                    let busy = e.downcast_ref::<ServerBusy>().copied();
                    if busy.is_some() {
                        self.counters.busy.fetch_add(1, Ordering::Relaxed);
                    } else if ready_tx.is_some() {
                        failures += 1;
                        if failures >= CONNECT_ATTEMPTS {
                            if let Some(tx) = ready_tx.take() {
                                let message = format!("virtual agent {} cannot connect", self.identity.instance_id);
                                let _ = tx.send(Err(e.context(message))).await;
                            }
                            return;
                        }
                    }
                    let retry_after = busy.and_then(|b| b.retry_after);
                    backoff.failed(Instant::now(), retry_after, &mut rand::thread_rng())
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Connects, says `Hello` and waits for `Welcome`; returns the socket and what the
    /// `Welcome` said. A 503 is a [`ServerBusy`] error.
    async fn open(&self) -> anyhow::Result<(Socket, Welcomed)> {
        let url = format!("{}/agent/v1/connect", self.config.server.replacen("http", "ws", 1));
        let mut request = url.as_str().into_client_request()?;
        let credential = format!("Bearer {}:{}", self.identity.instance_id, self.identity.secret);
        request.headers_mut().insert("authorization", credential.parse()?);
        // Small eager read buffers: ten thousand idle sockets must not cost a gigabyte here.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(64 * 1024)
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let (mut socket, _) = match tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true).await {
            Ok(connected) => connected,
            Err(tungstenite::Error::Http(response)) if response.status() == 503 => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                return Err(ServerBusy { retry_after }.into());
            }
            Err(e) => return Err(e.into()),
        };
        let offered: Vec<u32> = (1..=self.config.max_protocol_version).collect();
        let hello = Hello {
            protocol_version: 1,
            protocol_versions: if offered.len() > 1 { offered } else { Vec::new() },
            agent_version: fleetrun::VERSION.into(),
            hostname: self.identity.instance_id.clone(),
            os_type: OsType::Linux,
            os_name: "fleetrun-bench virtual agent".into(),
            ip_addresses: vec!["127.0.0.1".into()],
            supported_command_types: vec![CommandType::RunShellScript],
            held_tasks: Vec::new(),
            boot_id: None,
        };
        socket.send(text(&hello.into())).await?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(frame))) => match ServerMessage::decode(&frame)? {
                    ServerMessage::Welcome(welcome) => {
                        let welcomed = Welcomed {
                            heartbeat: Duration::from_secs(welcome.heartbeat_secs.max(1)),
                            protocol_version: welcome.protocol_version,
                            reconnect_window_ms: welcome.reconnect_window_ms,
                        };
                        return Ok((socket, welcomed));
                    }
                    ServerMessage::Refused(refused) => bail!("refused: {}", refused.reason),
                    other => bail!("expected Welcome, got {other:?}"),
                },
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed before Welcome"),
            }
        }
    }

    /// Serves tasks and heartbeats until shutdown (`Ok`) or the connection is lost (`Err`).
    async fn serve(&self, mut socket: Socket, heartbeat: Duration, version: u32) -> anyhow::Result<()> {
        // Spread heartbeats over the interval instead of sending ten thousand at once.
        let offset = Duration::from_millis(rand::random::<u64>() % heartbeat.as_millis().max(1) as u64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
        let mut paced: Vec<Paced> = Vec::new();
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let next_chunk = paced.iter().map(|p| p.next_at).min().unwrap_or(far);
            tokio::select! {
                frame = socket.next() => {
                    let message = match frame {
                        Some(Ok(Message::Text(frame))) => ServerMessage::decode(&frame)?,
                        Some(Ok(Message::Close(_))) | None => bail!("closed by the server"),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(e.into()),
                    };
                    match message {
                        ServerMessage::RunTask(task) => self.start(&mut socket, task, &mut paced, version).await?,
                        ServerMessage::StopTask(stop) => {
                            if let Some(i) = paced.iter().position(|p| p.task == stop.task) {
                                let p = paced.swap_remove(i);
                                self.finish(&mut socket, &p.task, p.seq, None, TaskEnd::Stopped).await?;
                            }
                        }
                        ServerMessage::Refused(refused) => bail!("refused: {}", refused.reason),
                        ServerMessage::Ack(_) | ServerMessage::Heartbeat | ServerMessage::Welcome(_) => {}
                    }
                }
                _ = tick.tick() => {
                    socket.send(text(&AgentMessage::Heartbeat)).await?;
                    self.counters.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                }
                _ = tokio::time::sleep_until(next_chunk), if !paced.is_empty() => {
                    self.send_paced(&mut socket, &mut paced, version).await?;
                }
                _ = self.shutdown.cancelled() => {
                    let _ = socket.close(None).await;
                    return Ok(());
                }
            }
        }
    }

    async fn start(
        &self,
        socket: &mut Socket,
        task: RunTask,
        paced: &mut Vec<Paced>,
        version: u32,
    ) -> anyhow::Result<()> {
        let directive = Directive::parse(&task.content, self.config.default_output);
        self.counters.tasks_started.fetch_add(1, Ordering::Relaxed);
        socket
            .feed(text(
                &TaskStarted {
                    task: task.task.clone(),
                }
                .into(),
            ))
            .await?;
        if let Some((count, every, size)) = directive.stream {
            // Start at a random point of the interval, so a thousand tasks do not print in step.
            let first = Duration::from_micros(rand::random::<u64>() % every.as_micros().max(1) as u64);
            socket.flush().await?;
            paced.push(Paced {
                task: task.task,
                seq: 0,
                left: count,
                every,
                size,
                next_at: tokio::time::Instant::now() + first,
                exit_code: directive.exit_code,
            });
            return Ok(());
        }
        let data = Bytes::from(pattern(&self.identity.instance_id, directive.output));
        let chunk = self.config.chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
        let mut seq = 0;
        for start in (0..data.len()).step_by(chunk) {
            let piece = data.slice(start..(start + chunk).min(data.len()));
            self.counters
                .bytes_sent
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
            let output = Output {
                task: task.task.clone(),
                seq,
                stream: OutputStream::Stdout,
                data: piece,
            };
            socket.feed(frame(&output.into(), version)).await?;
            seq += 1;
        }
        self.counters.chunks_sent.fetch_add(seq, Ordering::Relaxed);
        self.finish(socket, &task.task, seq, Some(directive.exit_code), TaskEnd::Exited)
            .await
    }

    async fn send_paced(&self, socket: &mut Socket, paced: &mut Vec<Paced>, version: u32) -> anyhow::Result<()> {
        let now = tokio::time::Instant::now();
        let mut i = 0;
        while i < paced.len() {
            if paced[i].next_at > now {
                i += 1;
                continue;
            }
            let p = &mut paced[i];
            if p.left == 0 {
                let p = paced.swap_remove(i);
                self.finish(socket, &p.task, p.seq, Some(p.exit_code), TaskEnd::Exited)
                    .await?;
                continue;
            }
            let output = Output {
                task: p.task.clone(),
                seq: p.seq,
                stream: OutputStream::Stdout,
                data: Bytes::from(stamp(p.seq, p.size)),
            };
            socket.send(frame(&output.into(), version)).await?;
            self.counters.chunks_sent.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes_sent.fetch_add(p.size as u64, Ordering::Relaxed);
            p.seq += 1;
            p.left -= 1;
            p.next_at += p.every;
            i += 1;
        }
        Ok(())
    }

    async fn finish(
        &self,
        socket: &mut Socket,
        task: &str,
        chunks: u64,
        exit_code: Option<i32>,
        end: TaskEnd,
    ) -> anyhow::Result<()> {
        let finished = TaskFinished {
            task: task.to_string(),
            chunks,
            exit_code,
            end,
        };
        socket.feed(text(&finished.into())).await?;
        socket.flush().await?;
        self.counters.tasks_finished.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn text(message: &AgentMessage) -> Message {
    Message::Text(message.encode().into())
}

/// A message in the frame the connection's protocol version prescribes.
fn frame(message: &AgentMessage, version: u32) -> Message {
    match message.to_frame(version) {
        Frame::Text(text) => Message::Text(text.into()),
        Frame::Binary(bytes) => Message::Binary(bytes.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_read_from_a_bench_line() {
        let d = Directive::parse("echo hi\n#bench out=1000 exit=3\n", 7);
        assert_eq!(d.output, 1000);
        assert_eq!(d.exit_code, 3);
        assert_eq!(d.stream, None);

        let d = Directive::parse("#bench stream=5 every=200 size=100", 7);
        assert_eq!(d.stream, Some((5, Duration::from_millis(200), 100)));
        assert_eq!(Directive::parse("echo hi", 7).output, 7);
    }

    #[test]
    fn stamps_survive_a_round_trip() {
        let a = stamp(0, 64);
        let b = stamp(1, 40);
        assert_eq!(a.len(), 64);
        let joined = [a, b].concat();
        let times: Vec<u64> = stamps(&joined).collect();
        assert_eq!(times.len(), 2);
        assert!(times[0] <= times[1]);
    }

    #[test]
    fn pattern_repeats_the_line() {
        assert_eq!(pattern("i-x", 10), b"i-x hi\ni-x");
    }
}
