//! One agent's connection as the dispatcher sees it: attach on `Hello`, the reports it sends,
//! detach when the socket closes.

use super::error::{Conflict, Error, Kind, not_found};
use super::{AgentLink, Dispatcher, TaskIds, task_for, writer};
use crate::protocol::agent::{Ack, AgentMessage, Hello, MAX_CHUNK_BYTES, Welcome};
use crate::protocol::task_id;
use crate::store::AgentWrite;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the socket writer of an agent connection sends.
#[derive(Debug)]
pub enum Outbound {
    Message(crate::protocol::agent::ServerMessage),
    /// Close the connection; the agent reconnects and re-sends what was not acknowledged.
    Close(&'static str),
}

/// Why a connection should end.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("the store is unavailable")]
    Storage,
}

/// An attached agent connection. Owned by the connection's reader.
pub struct AgentSession {
    /// The instance the connection authenticated as; every frame speaks for it only.
    pub instance_id: String,
    id: u64,
    tx: mpsc::Sender<Outbound>,
    /// Result ids of this instance's tasks, by task id, so reports skip a lookup. Shared with
    /// the dispatcher, which adds each task it hands to this connection.
    tasks: TaskIds,
    last_heartbeat: i64,
}

impl AgentSession {
    fn known(&self, task: &str) -> Option<i64> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).get(task).copied()
    }

    fn forget(&self, task: &str) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).remove(task);
    }

    fn remember(&self, task: &str, result_id: i64) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.insert(task.to_string(), result_id);
    }
}

/// What the connection's writer sends: queued messages, in order, until `close` is cancelled.
pub struct Outbox {
    pub rx: mpsc::Receiver<Outbound>,
    /// Cancelled when the connection must close (deregistered, or not reading its messages).
    pub close: CancellationToken,
}

/// Messages queued per agent connection; a connection whose queue is full is closed.
const AGENT_QUEUE: usize = 1024;

impl Dispatcher {
    /// Registers a connection that sent a compatible `Hello` (speaking `protocol_version`, the
    /// newest both sides share): records the agent's facts, queues
    /// `Welcome`, settles tasks the agent no longer holds and delivers pending ones. A previous
    /// connection of the same instance is closed.
    pub async fn attach(
        &self,
        instance_id: &str,
        hello: &Hello,
        protocol_version: u32,
    ) -> Result<(AgentSession, Outbox), Error> {
        // When the Hello arrived: it orders this connection among the agent's others.
        let hello_at = self.now();
        // Counted until settled: while too many are, new connections are refused (`reconnect`).
        let _attaching = self.attaching();
        let store = &self.inner.store;
        let instance = store
            .instance(instance_id)
            .await
            .map_err(not_found(Kind::Instance, instance_id))?;
        let id = self
            .inner
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let taken = store
            .agent_connected(instance_id, &self.inner.replica, id, hello, protocol_version, hello_at)
            .await?;
        if !taken {
            return Err(Error::Conflict {
                conflict: Conflict::Superseded,
                message: "the agent has connected again since this connection's Hello; closing this one".into(),
            });
        }
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        let close = CancellationToken::new();
        let tasks = TaskIds::default();
        let welcome = Welcome {
            protocol_version,
            instance_id: instance_id.to_string(),
            heartbeat_secs: self.inner.settings.heartbeat.as_secs().max(1),
            max_frame_bytes: crate::protocol::agent::MAX_FRAME_BYTES,
            server_time_ms: Some(self.now()),
            reconnect_window_ms: Some(self.reconnect_window().as_millis() as u64),
            output_limits: Some(crate::protocol::agent::OutputKept {
                head: self.inner.settings.output.head,
                tail: self.inner.settings.output.tail,
            }),
        };
        let _ = tx.try_send(Outbound::Message(welcome.into()));
        let previous = self.lock_agents().insert(
            instance_id.to_string(),
            AgentLink {
                session: id,
                protocol_version,
                tasks: tasks.clone(),
                tx: tx.clone(),
                close: close.clone(),
            },
        );
        if let Some(previous) = previous {
            // Replaced by this newer connection.
            previous.close.cancel();
        }
        let mut session = AgentSession {
            instance_id: instance_id.to_string(),
            id,
            tx,
            tasks,
            last_heartbeat: self.now(),
        };

        // Should settling fail, the connection must not stay recorded as online.
        if let Err(e) = self.settle(&instance, hello, &mut session).await {
            self.detach(session).await;
            return Err(e);
        }
        let connection = super::files::Connection {
            instance_id: instance_id.to_string(),
            session: id,
            tx: session.tx.clone(),
            protocol_version,
        };
        self.offer_open_files(connection).await;
        Ok((session, Outbox { rx, close }))
    }

    /// Ends what the agent lost, starts what a new boot starts, and delivers pending tasks.
    async fn settle(
        &self,
        instance: &crate::store::InstanceRow,
        hello: &Hello,
        session: &mut AgentSession,
    ) -> Result<(), Error> {
        let store = &self.inner.store;
        let now = self.now();
        let lost = {
            let _order = self.inner.status_order.lock().await;
            let lost = store.interrupt_unheld(&instance.id, &hello.held_tasks, now).await?;
            self.publish_changes(&lost).await;
            lost
        };
        // A new boot starts the boot plans' executions first: they are delivered below.
        if let Some(boot_id) = &hello.boot_id {
            let deliver_by = now + self.inner.settings.delivery_window.as_millis() as i64;
            let started = store.start_boot_executions(&instance.id, boot_id, deliver_by).await?;
            for execution in &started {
                tracing::info!(instance_id = %instance.id, invoke_id = %execution.invoke_id, repeats = execution.repeats, "a new boot started an execution");
                self.inner.metrics.invocation_started(super::metrics::Trigger::Boot);
            }
        }
        // Under `delivering`, as a launch queues its fan-out: a task a launch already queued on
        // this connection (it is in the map since `attach`) is not queued twice, and one
        // committed but not yet queued is not read here. No report is handled before `attach`
        // returns, so nothing queued on this connection has left the map yet.
        let delivering = self.inner.delivering.lock().await;
        let mut runs = Vec::new();
        for delivery in store.deliveries(&instance.id, now).await? {
            let invocation = delivery.invocation;
            let task = task_id(&invocation.id, delivery.repeats);
            let queued = session.known(&task).is_some();
            session.remember(&task, delivery.result_id);
            if !queued && !hello.held_tasks.contains(&task) {
                runs.push((
                    instance.id.as_str(),
                    delivery.result_id,
                    task_for(&invocation, instance, delivery.deliver_by, delivery.repeats),
                ));
            }
        }
        self.send_runs(runs).await;
        drop(delivering);
        // After this agent's deliveries, so a result released now is not handed over twice.
        self.release_held(&lost).await;
        Ok(())
    }

    /// Handles one frame from an attached agent.
    pub async fn handle(&self, session: &mut AgentSession, message: AgentMessage) -> Result<(), SessionError> {
        let now = self.now();
        let grace_ms = self.inner.settings.timeout_grace.as_millis() as i64;
        let (task, write) = match message {
            AgentMessage::Hello(_) => return Err(SessionError::Protocol("a second Hello")),
            AgentMessage::Heartbeat => {
                session.last_heartbeat = now;
                let mut beats = self.inner.heartbeats.lock().unwrap_or_else(|e| e.into_inner());
                beats.insert(session.instance_id.clone(), now);
                return Ok(());
            }
            AgentMessage::TaskStarted(m) => (m.task, |id| AgentWrite::Started {
                result_id: id,
                at: now,
                grace_ms,
            }),
            AgentMessage::Output(m) if m.data.is_empty() => {
                return Err(SessionError::Protocol("an empty output chunk"));
            }
            AgentMessage::Output(m) if m.data.len() > MAX_CHUNK_BYTES => {
                return Err(SessionError::Protocol(
                    "an output chunk over the protocol's 256 KiB limit",
                ));
            }
            AgentMessage::Output(m) => {
                self.inner.metrics.output_received(m.data.len());
                let Some(result_id) = self.own_task(session, &m.task).await? else {
                    return Ok(());
                };
                let write = AgentWrite::Chunk {
                    result_id,
                    seq: m.seq,
                    stream: m.stream,
                    data: m.data,
                };
                return self.queue(session, m.task, write).await;
            }
            AgentMessage::OutputSkipped(m) if !m.is_plausible() => {
                return Err(SessionError::Protocol(
                    "an output skip of no chunks, of fewer bytes than chunks, or past the largest offset",
                ));
            }
            AgentMessage::OutputSkipped(m) => {
                let Some(result_id) = self.own_task(session, &m.task).await? else {
                    return Ok(());
                };
                // Whether it fits the output stored (past the head, continuing it) is the
                // store's rule, applied in order with the chunks around it.
                let write = AgentWrite::Skipped {
                    result_id,
                    seq: m.seq,
                    chunks: m.chunks,
                    offset: m.offset,
                    bytes: m.bytes,
                };
                return self.queue(session, m.task, write).await;
            }
            AgentMessage::FileAccept(m) => {
                let reply = super::files::Reply::Accept(m.offset);
                self.file_reply(&session.instance_id, session.id, &m.transfer, reply)
                    .await;
                return Ok(());
            }
            AgentMessage::FileAck(m) => {
                let reply = super::files::Reply::Ack(m.offset);
                self.file_reply(&session.instance_id, session.id, &m.transfer, reply)
                    .await;
                return Ok(());
            }
            AgentMessage::FileDone(m) => {
                let reply = super::files::Reply::Done(m.error_code, m.error_info);
                self.file_reply(&session.instance_id, session.id, &m.transfer, reply)
                    .await;
                return Ok(());
            }
            AgentMessage::TaskFinished(m) => {
                let Some(result_id) = self.own_task(session, &m.task).await? else {
                    return Ok(());
                };
                let write = AgentWrite::Finished {
                    result_id,
                    chunks: m.chunks,
                    exit_code: m.exit_code,
                    end: m.end,
                    at: now,
                };
                // The task is over: its entry goes (a late re-send looks the id up again).
                session.forget(&m.task);
                return self.queue(session, m.task, write).await;
            }
        };
        let Some(result_id) = self.own_task(session, &task).await? else {
            return Ok(());
        };
        self.queue(session, task, write(result_id)).await
    }

    async fn queue(&self, session: &AgentSession, task: String, write: AgentWrite) -> Result<(), SessionError> {
        let item = writer::Item {
            write,
            task,
            instance_id: session.instance_id.clone(),
            reply: session.tx.clone(),
        };
        self.inner
            .writer_tx
            .send(item)
            .await
            .map_err(|_| SessionError::ShuttingDown)
    }

    /// The result id of a task of the session's own instance. A task of another instance, or
    /// one that does not exist, is refused: logged and ignored, its result untouched.
    ///
    /// A refused task is acknowledged as finished, so the agent stops re-sending it; a store
    /// error ends the connection, so the agent re-sends after reconnecting.
    async fn own_task(&self, session: &mut AgentSession, task: &str) -> Result<Option<i64>, SessionError> {
        if let Some(id) = session.known(task) {
            return Ok(Some(id));
        }
        match self.inner.store.result_id(task, &session.instance_id).await {
            Ok(Some(id)) => {
                session.remember(task, id);
                Ok(Some(id))
            }
            Ok(None) => {
                tracing::warn!(instance_id = %session.instance_id, task, "refused a report about a task that is not this instance's");
                let forget = Ack {
                    task: task.to_string(),
                    next_seq: u64::MAX,
                    finished: true,
                };
                let _ = session.tx.try_send(Outbound::Message(forget.into()));
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not look up a task");
                Err(SessionError::Storage)
            }
        }
    }

    /// Unregisters a closed connection and records the instance offline.
    pub async fn detach(&self, session: AgentSession) {
        self.files_detached(&session.instance_id, session.id);
        let was_current = {
            let mut agents = self.lock_agents();
            let current = agents
                .get(&session.instance_id)
                .is_some_and(|l| l.session == session.id);
            if current {
                agents.remove(&session.instance_id);
            }
            current
        };
        if was_current {
            if let Err(e) = self
                .inner
                .store
                .agent_disconnected(
                    &session.instance_id,
                    &self.inner.replica,
                    session.id,
                    session.last_heartbeat,
                )
                .await
            {
                tracing::warn!(error = %e, "could not record an agent offline");
            }
        }
    }
}
