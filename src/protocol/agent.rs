//! Messages between the server and an agent over the agent's one WebSocket (DESIGN.md §5).
//!
//! Every frame is a JSON text frame holding one tagged message, except output under protocol
//! version 2, which travels as a binary frame: a small fixed header, then the raw bytes, with no
//! Base64 and no JSON escaping on the path that carries megabytes ([`Output::encode_binary`]).
//! A task is identified by the execution of the invocation it belongs to (`t-…` for the first,
//! `t-…-r2` and on for a schedule's later ones, [`super::task_id`]), and the server checks that
//! every frame names a task of the agent's own instance.

use super::{CommandType, Error, OsType, OutputStream, PROTOCOL_VERSIONS, TaskEnd};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Largest frame either side sends or accepts. Output chunks are far smaller (256 KiB of data).
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Largest piece of output the agent puts in one `Output` frame. A fast writer fills whole
/// chunks, so this sets the per-frame overhead of bulk output (acks, writer items, rows).
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;

/// A task id: the invoke id of the invocation the task belongs to, with the execution number
/// from the second on ([`super::task_id`]).
pub type TaskId = String;

/// Agent → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    Hello(Hello),
    Heartbeat,
    TaskStarted(TaskStarted),
    Output(Output),
    OutputSkipped(OutputSkipped),
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
    /// The oldest protocol version the agent speaks; a version-1 agent sends only this.
    pub protocol_version: u32,
    /// Every version the agent speaks (agents from version 2 on). The server answers with the
    /// newest it shares in `Welcome`; a server from before version 2 ignores this field and
    /// speaks version 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocol_versions: Vec<u32>,
    pub agent_version: String,
    pub hostname: String,
    pub os_type: OsType,
    pub os_name: String,
    pub ip_addresses: Vec<String>,
    pub supported_command_types: Vec<CommandType>,
    /// Tasks the agent still holds (running, or with output or an end not yet acknowledged).
    /// Anything the server thinks is running on this instance and is not listed was lost.
    pub held_tasks: Vec<TaskId>,
    /// The instance's boot id (Linux `/proc/sys/kernel/random/boot_id`): a new one starts the
    /// invocations planned for the next boot or every boot. Absent from agents of before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// Most tasks a `Hello` may list as held.
pub const MAX_HELD_TASKS: usize = 10_000;

impl Hello {
    /// The protocol version to use with this agent: the newest both sides speak, if any.
    pub fn negotiate(&self) -> Option<u32> {
        self.protocol_versions
            .iter()
            .chain([&self.protocol_version])
            .copied()
            .filter(|v| PROTOCOL_VERSIONS.contains(v))
            .max()
    }

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
        if let Some(boot_id) = &self.boot_id {
            if boot_id.is_empty() || boot_id.len() > 64 || !boot_id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("`boot_id` must be 1 to 64 printable ASCII characters".into());
            }
        }
        if self.held_tasks.len() > MAX_HELD_TASKS || !self.held_tasks.iter().all(plausible) {
            return Err(format!("`held_tasks` must be at most {MAX_HELD_TASKS} task ids"));
        }
        Ok(())
    }
}

/// The server's answer to a compatible `Hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version this connection speaks from now on (see [`Hello::negotiate`]).
    pub protocol_version: u32,
    pub instance_id: String,
    /// Both sides send a heartbeat this often and drop the connection after three missed.
    pub heartbeat_secs: u64,
    /// Largest frame the server accepts.
    pub max_frame_bytes: usize,
    /// The server's clock (milliseconds since the Unix epoch) when it sent this: the agent
    /// measures its own clock's offset from it to judge `RunTask::deliver_by`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time_ms: Option<i64>,
    /// After losing this server, the agent's first reconnect is spread uniformly over this
    /// many milliseconds (full jitter): the server sizes it to its fleet, so a restart is not
    /// met by every agent at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_window_ms: Option<u64>,
    /// The output the server keeps per result (head and tail bytes): an agent cut off during
    /// a flood spools no more than that and reports the rest with [`OutputSkipped`]. A server
    /// that sends this understands `OutputSkipped`; without it, the agent keeps everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_limits: Option<OutputKept>,
}

/// Bytes of a result's output the server keeps: the first `head` and the last `tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputKept {
    pub head: u64,
    pub tail: u64,
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
    /// The end of the delivery window, on the server's clock (milliseconds since the Unix
    /// epoch). An agent that reads the task later (it was frozen, or the frame sat in a dead
    /// socket) refuses it with `DeliveryTimeout` and never runs it: the server may already
    /// have reported it `Aborted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_by: Option<i64>,
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

/// Output chunks the agent did not keep, sent in their place and in their order: chunks
/// `seq..seq + chunks` began at byte `offset` of the task's output and carried `bytes` bytes,
/// all in the middle the server drops (at or past the head, ending before the last `tail`
/// bytes; see [`OutputKept`]). An agent sends it only to a server whose `Welcome` named its
/// `output_limits`; it is JSON on every protocol version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSkipped {
    pub task: TaskId,
    pub seq: u64,
    /// How many chunks were skipped (at least 1).
    pub chunks: u64,
    /// Where the first skipped chunk began in the task's output.
    pub offset: u64,
    /// How many bytes the skipped chunks carried (at least one per chunk).
    pub bytes: u64,
}

impl OutputSkipped {
    /// Whether the numbers can describe real chunks: at least one, none empty, no overflow.
    pub fn is_plausible(&self) -> bool {
        self.chunks >= 1
            && self.bytes >= self.chunks
            && self.seq.checked_add(self.chunks).is_some()
            && self.offset.checked_add(self.bytes).is_some()
    }
}

/// First byte of a binary frame holding [`Output`].
const BINARY_OUTPUT: u8 = 1;

/// Bytes before the task id in a binary output frame: kind, stream, seq, task id length.
const BINARY_HEADER: usize = 1 + 1 + 8 + 1;

impl Output {
    /// Encodes as one binary frame (protocol version 2):
    ///
    /// | bytes | field |
    /// |---|---|
    /// | 1 | kind: 1 (output) |
    /// | 1 | stream: 0 stdout, 1 stderr |
    /// | 8 | seq, unsigned, big-endian |
    /// | 1 | length n of the task id (1–64) |
    /// | n | task id, ASCII |
    /// | rest | the output bytes, as the process wrote them |
    pub fn encode_binary(&self) -> Vec<u8> {
        let task = self.task.as_bytes();
        let mut frame = Vec::with_capacity(BINARY_HEADER + task.len() + self.data.len());
        frame.push(BINARY_OUTPUT);
        frame.push(self.stream.code() as u8);
        frame.extend_from_slice(&self.seq.to_be_bytes());
        frame.push(task.len().min(255) as u8);
        frame.extend_from_slice(&task[..task.len().min(255)]);
        frame.extend_from_slice(&self.data);
        frame
    }

    /// Decodes a binary frame made by [`Output::encode_binary`]. The data is a view into
    /// `frame`, not a copy.
    pub fn decode_binary(frame: Bytes) -> Result<Output, Error> {
        let malformed = Error::MalformedBinary;
        if frame.len() < BINARY_HEADER {
            return Err(malformed("shorter than its header"));
        }
        if frame[0] != BINARY_OUTPUT {
            return Err(malformed("unknown frame kind"));
        }
        let stream = match frame[1] {
            0 => OutputStream::Stdout,
            1 => OutputStream::Stderr,
            _ => return Err(malformed("unknown stream")),
        };
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&frame[2..10]);
        let task_len = frame[10] as usize;
        let data_from = BINARY_HEADER + task_len;
        if !(1..=64).contains(&task_len) || frame.len() < data_from {
            return Err(malformed("bad task id length"));
        }
        let task = std::str::from_utf8(&frame[BINARY_HEADER..data_from])
            .map_err(|_| malformed("task id is not ASCII"))?
            .to_string();
        Ok(Output {
            task,
            seq: u64::from_be_bytes(seq),
            stream,
            data: frame.slice(data_from..),
        })
    }
}

/// One frame as it goes on the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
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
    OutputSkipped,
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

    /// Encodes as the frame `protocol_version` prescribes: output binary from version 2 on,
    /// everything else JSON text.
    pub fn to_frame(&self, protocol_version: u32) -> Frame {
        match self {
            AgentMessage::Output(output) if protocol_version >= 2 => Frame::Binary(output.encode_binary()),
            message => Frame::Text(message.encode()),
        }
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
    fn binary_output_round_trips_and_shares_the_frames_bytes() {
        let output = Output {
            task: "t-0123456789abcdef".into(),
            seq: 1 << 40,
            stream: OutputStream::Stderr,
            data: Bytes::from_static(b"\xff\x00\"json\" would escape this\n"),
        };

        let frame = Bytes::from(output.encode_binary());
        let decoded = Output::decode_binary(frame.clone()).unwrap();

        assert_eq!(decoded, output);
        assert_eq!(
            frame.len(),
            11 + output.task.len() + output.data.len(),
            "no padding, no Base64"
        );
        assert_eq!(
            decoded.data.as_ptr(),
            frame[11 + output.task.len()..].as_ptr(),
            "no copy"
        );
        assert_eq!(
            AgentMessage::from(output.clone()).to_frame(1),
            Frame::Text(AgentMessage::from(output).encode()),
            "version 1 keeps JSON text"
        );
    }

    #[test]
    fn malformed_binary_frames_are_errors_not_panics() {
        let good = Output {
            task: "t-1".into(),
            seq: 0,
            stream: OutputStream::Stdout,
            data: Bytes::from_static(b"x"),
        }
        .encode_binary();
        let mut bad_kind = good.clone();
        bad_kind[0] = 9;
        let mut bad_stream = good.clone();
        bad_stream[1] = 2;
        let mut long_task = good.clone();
        long_task[10] = 200;
        let mut no_task = good.clone();
        no_task[10] = 0;
        for bad in [vec![], good[..5].to_vec(), bad_kind, bad_stream, long_task, no_task] {
            assert!(Output::decode_binary(Bytes::from(bad.clone())).is_err(), "{bad:?}");
        }
        assert!(
            Output::decode_binary(Bytes::from(good[..14].to_vec())).is_ok(),
            "empty data decodes"
        );
    }

    #[test]
    fn the_newest_shared_version_is_chosen_and_a_version_1_hello_still_parses() {
        // A version-1 agent's Hello, byte for byte as agents before version 2 send it.
        let v1 = r#"{"type":"hello","protocol_version":1,"agent_version":"0.1.0","hostname":"h","os_type":"linux","os_name":"Debian","ip_addresses":["127.0.0.1"],"supported_command_types":["RunShellScript"],"held_tasks":[]}"#;
        let AgentMessage::Hello(mut hello) = AgentMessage::decode(v1).unwrap() else {
            panic!("not a Hello")
        };
        assert_eq!(hello.negotiate(), Some(1));
        hello.protocol_versions = vec![1, 2, 7];
        assert_eq!(hello.negotiate(), Some(2));
        hello.protocol_version = 7;
        hello.protocol_versions = vec![7, 8];
        assert_eq!(hello.negotiate(), None);
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
    fn a_skip_is_json_on_every_version_and_implausible_numbers_are_caught() {
        let skip = OutputSkipped {
            task: "t-1".into(),
            seq: 3,
            chunks: 2,
            offset: 600,
            bytes: 9,
        };
        let message = AgentMessage::from(skip.clone());

        for version in [1, 2] {
            let Frame::Text(text) = message.to_frame(version) else {
                panic!("a skip is a text frame")
            };
            assert!(text.contains(r#""type":"output_skipped""#), "{text}");
            assert_eq!(AgentMessage::decode(&text).unwrap(), message);
        }
        assert!(skip.is_plausible());
        for bad in [
            OutputSkipped {
                chunks: 0,
                ..skip.clone()
            },
            OutputSkipped {
                bytes: 1,
                ..skip.clone()
            },
            OutputSkipped {
                seq: u64::MAX,
                ..skip.clone()
            },
            OutputSkipped {
                offset: u64::MAX,
                ..skip.clone()
            },
        ] {
            assert!(!bad.is_plausible(), "{bad:?}");
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
