//! The agent's connection loop: connect, `Hello`/`Welcome`, re-send the spool, then serve tasks
//! and heartbeats; on loss, reconnect when [`Backoff`] says: spread over the window the server
//! announced, so a restarted server is not hit by its whole fleet at once.
//!
//! One connection to one server at a time. When it is lost, or an attempt fails, the next
//! attempt goes to the next server of [`Servers`] (the same one when there is one URL); the wait
//! before it is [`Backoff`]'s either way. Nothing here or in the spool is tied to a server: a
//! task keeps running across the move, and what the old server did not acknowledge is re-sent
//! by `seq` to the new one, as after any reconnect.

use super::backoff::{Backoff, STABLE_AFTER, ServerBusy, parse_retry_after};
use super::exec::{self, ExecConfig, TaskEvent};
use super::failover::Servers;
use super::host;
use super::identity::Identity;
use super::spool::{self, Spool};
use crate::config::AgentArgs;
use crate::protocol::agent::{AgentMessage, Frame, Hello, MAX_FRAME_BYTES, RunTask, ServerMessage};
use crate::protocol::{ErrorCode, OsType, PROTOCOL_VERSIONS, TaskEnd};
use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How a session ended.
enum End {
    Shutdown,
    /// The connection was lost; `stable` when it had lasted [`STABLE_AFTER`].
    Lost {
        stable: bool,
    },
}

pub struct Agent {
    args: AgentArgs,
    /// The servers to connect to, and the one to try next (or connected to now); moved on
    /// after every loss and failed attempt, in `run` only.
    servers: Servers,
    identity: Identity,
    spool: Spool,
    exec: Arc<ExecConfig>,
    /// Stop signals of the tasks running now.
    running: HashMap<String, CancellationToken>,
    events_tx: exec::Events,
    events_rx: mpsc::Receiver<(String, TaskEvent)>,
    /// TLS client configuration for `wss://` servers.
    tls: Arc<rustls::ClientConfig>,
    /// The server's clock minus this host's, in milliseconds, measured at `Welcome`: tasks'
    /// delivery deadlines are on the server's clock.
    clock_offset_ms: i64,
    /// When to try the server again; told of every `Welcome`, loss and failed attempt.
    backoff: Backoff,
}

impl Agent {
    pub fn new(
        args: AgentArgs,
        servers: Servers,
        identity: Identity,
        spool: Spool,
        exec: Arc<ExecConfig>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Agent {
        let (events_tx, events_rx) = mpsc::channel(256);
        let backoff = Backoff::new(Duration::from_secs(args.reconnect_max_secs));
        Agent {
            backoff,
            args,
            servers,
            identity,
            spool,
            exec,
            tls,
            running: HashMap::new(),
            clock_offset_ms: 0,
            events_tx,
            events_rx,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let result = loop {
            let delay = match self.connect_and_serve(&shutdown).await {
                Ok(End::Shutdown) => break Ok(()),
                Ok(End::Lost { stable }) => {
                    let delay = self.backoff.lost(Instant::now(), stable, &mut rand::thread_rng());
                    let next = self.servers.advance();
                    tracing::info!(
                        delay_ms = delay.as_millis() as u64,
                        window_ms = self.backoff.window().as_millis() as u64,
                        "reconnecting to {next}, spread over the server's window"
                    );
                    delay
                }
                Err(e) if is_fatal(&e) => break Err(e),
                Err(e) => {
                    let busy = e.downcast_ref::<ServerBusy>().copied();
                    let retry_after = busy.and_then(|b| b.retry_after);
                    let delay = self
                        .backoff
                        .failed(Instant::now(), retry_after, &mut rand::thread_rng());
                    let failed = self.servers.current().to_string();
                    let next = self.servers.advance();
                    let secs = delay.as_secs_f64();
                    match busy {
                        Some(busy) if next == failed => tracing::warn!("{busy}: trying {next} again in {secs:.1} s"),
                        Some(busy) => tracing::warn!("{failed}: {busy}; trying {next} in {secs:.1} s"),
                        None if next == failed => {
                            tracing::warn!("connection to {failed} failed: {e:#}; trying again in {secs:.1} s")
                        }
                        None => tracing::warn!("connection to {failed} failed: {e:#}; trying {next} in {secs:.1} s"),
                    }
                    delay
                }
            };
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    Some((task, event)) = self.events_rx.recv() => { self.record(&task, event)?; }
                    _ = shutdown.cancelled() => return self.stop_all().await,
                }
            }
            if shutdown.is_cancelled() {
                break Ok(());
            }
        };
        self.stop_all().await?;
        result
    }

    /// Stops running tasks on agent shutdown; their ends are spooled for the next start.
    async fn stop_all(&mut self) -> anyhow::Result<()> {
        self.exec
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for token in self.running.values() {
            token.cancel();
        }
        let deadline = tokio::time::Instant::now() + self.exec.kill_grace + Duration::from_secs(3);
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some((task, event))) => {
                    self.record(&task, event)?;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Spools a task event and returns the message to send for it.
    fn record(&mut self, task: &str, event: TaskEvent) -> anyhow::Result<AgentMessage> {
        let message = match event {
            TaskEvent::Started { pgid, cgroup } => self.spool.started(task, pgid, cgroup),
            TaskEvent::Output(stream, data) => self.spool.append(task, stream, data),
            TaskEvent::Finished { exit_code, end } => {
                self.running.remove(task);
                self.spool.finished(task, exit_code, end)
            }
        };
        message.with_context(|| format!("cannot write the spool in {}", self.args.state_dir.display()))
    }

    async fn connect_and_serve(&mut self, shutdown: &CancellationToken) -> anyhow::Result<End> {
        let (server, identity) = (self.servers.current().to_string(), self.identity.clone());
        let connecting = connect(&server, &identity, self.tls.clone());
        tokio::pin!(connecting);
        // Keep spooling task events while the connection is being made.
        let mut socket = loop {
            tokio::select! {
                socket = &mut connecting => break socket?,
                Some((task, event)) = self.events_rx.recv() => { self.record(&task, event)?; }
                _ = shutdown.cancelled() => return Ok(End::Shutdown),
            }
        };
        let connected_at = Instant::now();
        // Version 1 alone is today's Hello from before version 2, byte for byte.
        let offered: Vec<u32> = PROTOCOL_VERSIONS
            .into_iter()
            .filter(|v| *v <= self.args.max_protocol_version)
            .collect();
        let hello = Hello {
            protocol_version: PROTOCOL_VERSIONS[0],
            protocol_versions: if offered.len() > 1 { offered.clone() } else { Vec::new() },
            agent_version: crate::VERSION.to_string(),
            hostname: host::hostname(),
            os_type: OsType::current(),
            os_name: host::os_name(),
            ip_addresses: host::ip_addresses(),
            supported_command_types: host::supported_command_types(),
            held_tasks: self.spool.held(),
            boot_id: host::boot_id(&self.args.boot_id_file),
        };
        send(&mut socket, &hello.into(), PROTOCOL_VERSIONS[0]).await?;
        let (heartbeat, version) = match tokio::time::timeout(Duration::from_secs(10), next_message(&mut socket)).await
        {
            Ok(Ok(Some(ServerMessage::Welcome(welcome)))) if offered.contains(&welcome.protocol_version) => {
                if let Some(server_ms) = welcome.server_time_ms {
                    self.clock_offset_ms = server_ms - wall_ms();
                }
                if let Err(e) = self.spool.set_limits(welcome.output_limits) {
                    tracing::warn!("cannot remember the server's output limits: {e}");
                }
                self.backoff.welcomed(welcome.reconnect_window_ms);
                (
                    Duration::from_secs(welcome.heartbeat_secs.max(1)),
                    welcome.protocol_version,
                )
            }
            Ok(Ok(Some(ServerMessage::Welcome(welcome)))) => {
                bail!(Fatal(format!(
                    "the server chose protocol version {}, which this agent did not offer ({offered:?})",
                    welcome.protocol_version
                )))
            }
            Ok(Ok(Some(ServerMessage::Refused(refused)))) => {
                bail!(Fatal(format!("the server refused this agent: {}", refused.reason)))
            }
            Ok(Ok(_)) => bail!("the server did not answer Hello with Welcome"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("no Welcome from the server within 10 s"),
        };
        tracing::info!(instance_id = %self.identity.instance_id, protocol = version, "connected to {server}");
        for task in self.spool.held() {
            for step in self.spool.resend_plan(&task) {
                send(&mut socket, &self.spool.message(&task, &step)?, version).await?;
            }
        }

        let lost = |e: anyhow::Error| {
            tracing::warn!("connection to {server} lost: {e:#}");
            End::Lost {
                stable: connected_at.elapsed() >= STABLE_AFTER,
            }
        };
        let mut tick = tokio::time::interval(heartbeat);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                message = next_message(&mut socket) => match message {
                    Ok(Some(_)) if last_heard.elapsed() > heartbeat * 3 => {
                        // Nothing was read for longer than the server waits before dropping us
                        // (this process was frozen, or the host slept): what is buffered may be
                        // from a connection the server has given up on, so none of it is acted
                        // on. The server re-delivers what is still wanted after the reconnect.
                        return Ok(lost(anyhow::anyhow!(
                            "nothing read for {} s (frozen or suspended?): not trusting this connection",
                            last_heard.elapsed().as_secs()
                        )));
                    }
                    Ok(Some(message)) => {
                        last_heard = Instant::now();
                        self.handle(message)?;
                    }
                    Ok(None) => return Ok(lost(anyhow::anyhow!("closed by the server"))),
                    Err(e) => return Ok(lost(e)),
                },
                Some((task, event)) = self.events_rx.recv() => {
                    let message = self.record(&task, event)?;
                    if let Err(e) = send(&mut socket, &message, version).await {
                        return Ok(lost(e));
                    }
                }
                _ = tick.tick() => {
                    if last_heard.elapsed() > heartbeat * 3 {
                        return Ok(lost(anyhow::anyhow!("no heartbeat from the server for three intervals")));
                    }
                    if let Err(e) = send(&mut socket, &AgentMessage::Heartbeat, version).await {
                        return Ok(lost(e));
                    }
                }
                _ = shutdown.cancelled() => {
                    let _ = socket.close(None).await;
                    return Ok(End::Shutdown);
                }
            }
        }
    }

    fn handle(&mut self, message: ServerMessage) -> anyhow::Result<()> {
        match message {
            ServerMessage::RunTask(task) => self.start(task),
            ServerMessage::StopTask(stop) => {
                if let Some(token) = self.running.get(&stop.task) {
                    token.cancel();
                }
            }
            ServerMessage::Ack(ack) => self.spool.ack(&ack.task, ack.next_seq, ack.finished)?,
            ServerMessage::Heartbeat | ServerMessage::Welcome(_) => {}
            ServerMessage::Refused(refused) => {
                bail!(Fatal(format!("the server refused this agent: {}", refused.reason)))
            }
        }
        Ok(())
    }

    fn start(&mut self, task: RunTask) {
        // A task already held was delivered twice (the server re-delivers pending tasks on connect).
        if self.running.contains_key(&task.task) || self.spool.holds(&task.task) {
            return;
        }
        if !spool::is_task_id(&task.task) {
            tracing::warn!(task = %task.task, "refused a task with a malformed id");
            return;
        }
        if let Some((error_code, error_info)) = refusal(&task, wall_ms() + self.clock_offset_ms) {
            tracing::warn!(task = %task.task, %error_code, "refused a task: {error_info}");
            let end = TaskEnd::Error { error_code, error_info };
            let events = self.events_tx.clone();
            let id = task.task.clone();
            tokio::spawn(async move { events.send((id, TaskEvent::Finished { exit_code: None, end })).await });
            return;
        }
        let token = CancellationToken::new();
        self.running.insert(task.task.clone(), token.clone());
        tokio::spawn(exec::run(task, self.exec.clone(), self.events_tx.clone(), token));
    }
}

/// Why a task must not run, if it must not: a timeout of zero, or a task read after its
/// delivery deadline (`server_now` is the server's clock as this agent reckons it), which the
/// server may already have reported `Aborted`.
fn refusal(task: &RunTask, server_now: i64) -> Option<(ErrorCode, String)> {
    if task.timeout_secs == 0 {
        return Some((
            ErrorCode::ExecutionException,
            "timeout must be at least one second".into(),
        ));
    }
    let late_ms = server_now - task.deliver_by?;
    (late_ms > 0).then(|| {
        let info = format!(
            "The agent received the command {} s after its delivery deadline and did not run it.",
            (late_ms + 999) / 1000
        );
        (ErrorCode::DeliveryTimeout, info)
    })
}

/// This host's clock, in milliseconds since the Unix epoch.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An error after which reconnecting cannot help.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

fn is_fatal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Fatal>().is_some()
}

async fn connect(server: &str, identity: &Identity, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Socket> {
    // `server` is checked (http or https) and has no trailing `/` (`Servers::parse`).
    let url = format!("{}/agent/v1/connect", server.replacen("http", "ws", 1));
    let mut request = url.as_str().into_client_request()?;
    let credential = format!("Bearer {}:{}", identity.instance_id, identity.instance_secret);
    request.headers_mut().insert("authorization", credential.parse()?);
    // A small read buffer (128 KiB by default) keeps the idle agent small; frames still reach 1 MiB.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, Some(Connector::Rustls(tls)));
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((socket, _))) => Ok(socket),
        // Too many agents connecting at once (a restart): come back later, as the server asks.
        Ok(Err(tungstenite::Error::Http(response))) if response.status() == 503 => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            Err(ServerBusy { retry_after }.into())
        }
        Ok(Err(tungstenite::Error::Http(response))) if response.status() == 401 => {
            bail!(Fatal(format!(
                "the server refused this instance's credential ({}): it was deregistered or belongs to another server; \
             remove the state directory and enrol again with a new activation",
                identity.instance_id
            )))
        }
        Ok(Err(e)) => Err(crate::tls::explain(e.into()).context(format!("cannot connect to {url}"))),
        Err(_) => bail!("connecting to {url} timed out"),
    }
}

/// Sends one message in the frame `protocol_version` prescribes (binary output from 2 on).
async fn send(socket: &mut Socket, message: &AgentMessage, protocol_version: u32) -> anyhow::Result<()> {
    let frame = match message.to_frame(protocol_version) {
        Frame::Text(text) => Message::Text(text.into()),
        Frame::Binary(bytes) => Message::Binary(bytes.into()),
    };
    socket.send(frame).await?;
    Ok(())
}

/// The next server message; `None` when the connection closed.
async fn next_message(socket: &mut Socket) -> anyhow::Result<Option<ServerMessage>> {
    loop {
        match socket.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Text(text))) => return Ok(Some(ServerMessage::decode(&text)?)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::CommandType;

    fn task(deliver_by: Option<i64>) -> RunTask {
        RunTask {
            task: "t-1".into(),
            command_type: CommandType::RunShellScript,
            content: "true".into(),
            working_dir: None,
            username: None,
            timeout_secs: 60,
            deliver_by,
        }
    }

    #[test]
    fn a_task_read_after_its_delivery_deadline_is_refused_and_one_in_time_runs() {
        assert_eq!(refusal(&task(Some(10_000)), 9_999), None);
        assert_eq!(refusal(&task(Some(10_000)), 10_000), None);
        let (code, info) = refusal(&task(Some(10_000)), 12_500).unwrap();
        assert_eq!(code, ErrorCode::DeliveryTimeout);
        assert!(info.contains("3 s after"), "{info}");
        assert_eq!(refusal(&task(None), i64::MAX), None, "a server that sets no deadline");
        let zero = RunTask {
            timeout_secs: 0,
            ..task(None)
        };
        assert_eq!(refusal(&zero, 0).map(|r| r.0), Some(ErrorCode::ExecutionException));
    }
}
