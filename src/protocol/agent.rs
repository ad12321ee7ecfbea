//! Messages between the server and an agent over the agent's one WebSocket (DESIGN.md §5).
//!
//! Every frame is a JSON text frame holding one tagged message. A task is identified by the
//! invocation it belongs to (`t-…`): an agent only ever holds one task per invocation, and the
//! server checks that every frame names a task of the agent's own instance.

use super::{CommandType, Error, OsType, OutputStream, TaskEnd};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Largest frame either side sends or accepts. Output chunks are far smaller (64 KiB of data).
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Largest piece of output the agent puts in one `Output` frame.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// A task id: the invoke id of the invocation the task belongs to.
pub type TaskId = String;

/// Agent → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    Hello(Hello),
    Heartbeat,
    TaskStarted(TaskStarted),
    Output(Output),
    TaskFinished(TaskFinished),
}

/// Server → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome(Welcome),
    Refused(Refused),
    Heartbeat,
    RunTask(RunTask),
    StopTask(StopTask),
    Ack(Ack),
}

/// The agent's first frame on every connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub agent_version: String,
    pub hostname: String,
    pub os_type: OsType,
    pub os_name: String,
    pub ip_addresses: Vec<String>,
    pub supported_command_types: Vec<CommandType>,
    /// Tasks the agent still holds (running, or with output or an end not yet acknowledged).
    /// Anything the server thinks is running on this instance and is not listed was lost.
    pub held_tasks: Vec<TaskId>,
}

/// Most tasks a `Hello` may list as held.
pub const MAX_HELD_TASKS: usize = 10_000;

impl Hello {
    /// Checks the agent's facts before they are stored: lengths, no control characters, real IP
    /// addresses, plausible task ids. The error says what was wrong.
    pub fn check(&self) -> Result<(), String> {
        let text = |field: &str, value: &str, max: usize| {
            if value.chars().count() > max || value.chars().any(char::is_control) {
                Err(format!(
                    "`{field}` must be at most {max} characters without control characters"
                ))
            } else {
                Ok(())
            }
        };
        text("hostname", &self.hostname, 255)?;
        text("os_name", &self.os_name, 255)?;
        text("agent_version", &self.agent_version, 64)?;
        if self.ip_addresses.len() > 64
            || self
                .ip_addresses
                .iter()
                .any(|ip| ip.parse::<std::net::IpAddr>().is_err())
        {
            return Err("`ip_addresses` must be at most 64 IP addresses".into());
        }
        let plausible = |t: &TaskId| {
            (1..=64).contains(&t.len())
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if self.held_tasks.len() > MAX_HELD_TASKS || !self.held_tasks.iter().all(plausible) {
            return Err(format!("`held_tasks` must be at most {MAX_HELD_TASKS} task ids"));
        }
        Ok(())
    }
}

/// The server's answer to a compatible `Hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    pub instance_id: String,
    /// Both sides send a heartbeat this often and drop the connection after three missed.
    pub heartbeat_secs: u64,
    /// Largest frame the server accepts.
    pub max_frame_bytes: usize,
}

/// The server's answer to an incompatible `Hello`; the connection closes after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub reason: String,
}

/// Start a task. The content already has its parameters filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTask {
    pub task: TaskId,
    pub command_type: CommandType,
    pub content: String,
    pub working_dir: Option<String>,
    pub username: Option<String>,
    pub timeout_secs: u64,
}

/// Kill a task's whole process tree, or make sure it never starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopTask {
    pub task: TaskId,
}

/// What the server has durably stored for a task. Cumulative: a later ack covers earlier ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub task: TaskId,
    /// Every output chunk with a lower sequence number is stored.
    pub next_seq: u64,
    /// The task's end is stored: the agent may forget the task.
    pub finished: bool,
}

/// The process was spawned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStarted {
    pub task: TaskId,
}

/// A piece of output. Sequence numbers start at 0 and have no gaps within a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub task: TaskId,
    pub seq: u64,
    pub stream: OutputStream,
    #[serde(with = "super::base64_bytes")]
    pub data: Bytes,
}

/// The task is over. Sent after its last output chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFinished {
    pub task: TaskId,
    /// Number of output chunks the task produced, so the server knows it has them all.
    pub chunks: u64,
    pub exit_code: Option<i32>,
    pub end: TaskEnd,
}

macro_rules! impl_from {
    ($enum:ident { $($variant:ident),+ }) => {
        $(impl From<$variant> for $enum {
            fn from(m: $variant) -> Self { $enum::$variant(m) }
        })+
    };
}
impl_from!(AgentMessage {
    Hello,
    TaskStarted,
    Output,
    TaskFinished
});
impl_from!(ServerMessage {
    Welcome,
    Refused,
    RunTask,
    StopTask,
    Ack
});

impl AgentMessage {
    /// Decodes one text frame.
    pub fn decode(text: &str) -> Result<Self, Error> {
        Ok(serde_json::from_str(text)?)
    }

    /// Encodes as one text frame.
    #[allow(clippy::expect_used)] // Serialising these plain structs cannot fail: every map key is a string.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("agent message serialises")
    }
}

impl ServerMessage {
    /// Decodes one text frame.
    pub fn decode(text: &str) -> Result<Self, Error> {
        Ok(serde_json::from_str(text)?)
    }

    /// Encodes as one text frame.
    #[allow(clippy::expect_used)] // Serialising these plain structs cannot fail: every map key is a string.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("server message serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_round_trips_binary_data() {
        let msg: AgentMessage = Output {
            task: "t-1".into(),
            seq: 7,
            stream: OutputStream::Stderr,
            data: Bytes::from_static(b"\xff\x00ok\n"),
        }
        .into();

        let text = msg.encode();

        assert!(text.contains(r#""type":"output""#), "{text}");
        assert_eq!(AgentMessage::decode(&text).unwrap(), msg);
    }

    #[test]
    fn unit_messages_are_tagged_objects() {
        assert_eq!(ServerMessage::Heartbeat.encode(), r#"{"type":"heartbeat"}"#);
        assert_eq!(
            AgentMessage::decode(r#"{"type":"heartbeat"}"#).unwrap(),
            AgentMessage::Heartbeat
        );
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            "",
            "{",
            r#"{"type":"nope"}"#,
            r#"{"type":"output","task":"t","seq":-1}"#,
            "[]",
        ] {
            assert!(AgentMessage::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_end_is_tagged_by_kind() {
        let fin = TaskFinished {
            task: "t-1".into(),
            chunks: 2,
            exit_code: Some(1),
            end: TaskEnd::Exited,
        };
        let text = AgentMessage::from(fin.clone()).encode();
        assert!(text.contains(r#""end":{"kind":"exited"}"#), "{text}");
    }
}
