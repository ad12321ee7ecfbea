//! One agent's connection as the dispatcher sees it: attach on `Hello`, the reports it sends,
//! detach when the socket closes.

use super::{AgentLink, Dispatcher, builtins, writer};
use crate::protocol::agent::{Ack, AgentMessage, Hello, RunTask, Welcome};
use crate::protocol::params;
use crate::protocol::{PROTOCOL_VERSION, TaskEnd};
use crate::store::{AgentWrite, now_ms};
use std::collections::HashMap;
use tokio::sync::mpsc;

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
    /// Result ids of this instance's tasks, by task id, so reports skip a lookup.
    tasks: HashMap<String, i64>,
    last_heartbeat: i64,
}

/// Messages queued per agent connection before senders have to wait.
const AGENT_QUEUE: usize = 1024;

impl Dispatcher {
    /// Registers a connection that sent a compatible `Hello`: records the agent's facts, queues
    /// `Welcome`, settles tasks the agent no longer holds and delivers pending ones. A previous
    /// connection of the same instance is closed.
    pub async fn attach(
        &self,
        instance_id: &str,
        hello: &Hello,
    ) -> Result<(AgentSession, mpsc::Receiver<Outbound>), super::Error> {
        let store = &self.inner.store;
        let instance = store
            .instance(instance_id)
            .await
            .map_err(super::not_found("instance"))?;
        let id = self
            .inner
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        store.agent_connected(instance_id, id, hello).await?;
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        let welcome = Welcome {
            protocol_version: PROTOCOL_VERSION,
            instance_id: instance_id.to_string(),
            heartbeat_secs: self.inner.settings.heartbeat.as_secs().max(1),
            max_frame_bytes: crate::protocol::agent::MAX_FRAME_BYTES,
        };
        let _ = tx.try_send(Outbound::Message(welcome.into()));
        let previous = self.lock_agents().insert(
            instance_id.to_string(),
            AgentLink {
                session: id,
                tx: tx.clone(),
            },
        );
        if let Some(previous) = previous {
            let _ = previous.tx.try_send(Outbound::Close("replaced by a newer connection"));
        }
        let mut session = AgentSession {
            instance_id: instance_id.to_string(),
            id,
            tx,
            tasks: HashMap::new(),
            last_heartbeat: now_ms(),
        };

        // Should settling fail, the connection must not stay recorded as online.
        if let Err(e) = self.settle(&instance, hello, &mut session).await {
            self.detach(session).await;
            return Err(e);
        }
        Ok((session, rx))
    }

    /// Ends what the agent lost and delivers its pending tasks.
    async fn settle(
        &self,
        instance: &crate::store::InstanceRow,
        hello: &Hello,
        session: &mut AgentSession,
    ) -> Result<(), super::Error> {
        let store = &self.inner.store;
        let instance_id = instance.id.as_str();
        let lost = store.interrupt_unheld(instance_id, &hello.held_tasks).await?;
        self.publish_changes(&lost).await;
        for delivery in store.deliveries(instance_id).await? {
            let inv = delivery.invocation;
            session.tasks.insert(inv.id.clone(), delivery.result_id);
            if hello.held_tasks.contains(&inv.id) {
                continue;
            }
            let content = if inv.enable_parameter {
                let values = builtins(
                    &instance.id,
                    &instance.name,
                    &instance.region_id,
                    &inv.id,
                    inv.command_id.as_deref(),
                );
                params::fill(&inv.content, &inv.parameters, &values)
            } else {
                inv.content.clone()
            };
            self.send_run(
                instance_id,
                RunTask {
                    task: inv.id,
                    command_type: inv.command_type,
                    content,
                    working_dir: inv.working_dir,
                    username: inv.username,
                    timeout_secs: inv.timeout_secs,
                },
            );
        }
        Ok(())
    }

    /// Handles one frame from an attached agent.
    pub async fn handle(&self, session: &mut AgentSession, message: AgentMessage) -> Result<(), SessionError> {
        let now = now_ms();
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
            AgentMessage::Output(m) => {
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
            AgentMessage::TaskFinished(m) => {
                let Some(result_id) = self.own_task(session, &m.task).await? else {
                    return Ok(());
                };
                let end: TaskEnd = m.end;
                let write = AgentWrite::Finished {
                    result_id,
                    chunks: m.chunks,
                    exit_code: m.exit_code,
                    end,
                    at: now,
                };
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
        if let Some(id) = session.tasks.get(task) {
            return Ok(Some(*id));
        }
        match self.inner.store.result_id(task, &session.instance_id).await {
            Ok(Some(id)) => {
                session.tasks.insert(task.to_string(), id);
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
                .agent_disconnected(&session.instance_id, session.id, session.last_heartbeat)
                .await
            {
                tracing::warn!(error = %e, "could not record an agent offline");
            }
        }
    }
}
