//! Send File on the wire: the agent protocol's file messages (version 3) and the words of a
//! file send's results (Alibaba's `SendFile` / `DescribeSendFileResults` vocabulary).
//!
//! A transfer is one file to one agent, named by the send's id (`f-…`). The server offers it
//! ([`FileOffer`]); the agent answers with the offset it already holds ([`FileAccept`], 0 for a
//! fresh start, the verified length of its temporary file after a reconnect) or refuses at once
//! ([`FileDone`] with an error). The server then sends [`FileChunk`]s as binary frames, at most
//! a window of them unacknowledged ([`FileAck`] is cumulative), and the agent ends with
//! [`FileDone`] after the SHA-256 check and the rename. [`FileCancel`] tells it the server gave
//! up (timeout): it removes its temporary file.

use super::{Error, name_enum};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The agent protocol version from which an agent takes files.
pub const FILES_PROTOCOL_VERSION: u32 = 3;

/// Bytes of file data in one chunk frame.
pub const FILE_CHUNK_BYTES: usize = 256 * 1024;

name_enum! {
    /// Where one instance's copy of a sent file stands (Alibaba's words).
    pub enum FileStatus {
        /// Not yet taken by the agent (offline, or the offer is on its way).
        Pending,
        /// The agent accepted the offer and is receiving the file.
        Running,
        /// The file is in place with the SHA-256, owner, group and mode asked for.
        Success,
        /// See the error code.
        Failed,
    }
}

impl FileStatus {
    /// Whether the status can still change.
    pub fn is_final(self) -> bool {
        matches!(self, FileStatus::Success | FileStatus::Failed)
    }
}

name_enum! {
    /// Why a file send failed on an instance.
    pub enum FileErrorCode {
        /// The target exists and overwrite is off; it was left untouched.
        FileAlreadyExists,
        /// The target directory is missing or not a directory, or the target is a directory.
        InvalidPath,
        /// The agent may not write the target directory or set the owner asked for.
        PermissionDenied,
        /// The owner or group does not exist on the instance (Alibaba's `UserGroupNotExists`).
        UserGroupNotExists,
        /// No space left on the instance's disk; no partial file is left at the target.
        DiskFull,
        /// What arrived does not hash to the file's SHA-256.
        ChecksumMismatch,
        /// The agent was not connected within the delivery window.
        ClientNotRunning,
        /// The agent was offered the file but did not take it within the delivery window.
        DeliveryTimeout,
        /// The transfer did not finish within the send's timeout.
        Timeout,
        /// The agent speaks a protocol before files (an older fleetrun agent).
        ClientNeedUpgrade,
        /// Anything else the agent could not do (the message says what).
        FileCreateFail,
    }
}

impl FileErrorCode {
    /// The standard sentence for the code, when nothing more specific is known.
    pub fn default_info(self) -> &'static str {
        match self {
            FileErrorCode::FileAlreadyExists => "The target file exists and overwrite is off; it was not changed.",
            FileErrorCode::InvalidPath => "The target directory does not exist or is not a directory.",
            FileErrorCode::PermissionDenied => "The agent may not write the target or set its owner.",
            FileErrorCode::UserGroupNotExists => "The owner or group does not exist on the instance.",
            FileErrorCode::DiskFull => "No space left on the instance's disk.",
            FileErrorCode::ChecksumMismatch => "The received file does not match the SHA-256 of the upload.",
            FileErrorCode::ClientNotRunning => "The agent was not connected within the delivery window.",
            FileErrorCode::DeliveryTimeout => "The agent did not take the file within the delivery window.",
            FileErrorCode::Timeout => "The transfer did not finish within the timeout.",
            FileErrorCode::ClientNeedUpgrade => {
                "The agent on the instance is too old to receive files: upgrade it to this server's version."
            }
            FileErrorCode::FileCreateFail => "The agent could not create the file.",
        }
    }
}

/// Server → agent: a file to put in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileOffer {
    /// The send's id; one transfer per send and instance.
    pub transfer: String,
    /// An absolute directory (checked by the server; the agent checks again).
    pub target_dir: String,
    /// A file name: no `/`, not `.` or `..`.
    pub name: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
    /// User name or numeric id; `None` keeps the agent's own.
    pub owner: Option<String>,
    pub group: Option<String>,
    pub overwrite: bool,
    /// Data bytes in every chunk but the last: offsets of a resume are multiples of it.
    pub chunk_bytes: u64,
}

/// Agent → server: send from `offset` on (bytes the agent already holds, verified).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileAccept {
    pub transfer: String,
    pub offset: u64,
}

/// Agent → server: every byte below `offset` is written to the temporary file. Cumulative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileAck {
    pub transfer: String,
    pub offset: u64,
}

/// Agent → server: the transfer is over, in place (no error) or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDone {
    pub transfer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<FileErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_info: Option<String>,
}

/// Server → agent: the server gave up on the transfer; drop what was received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileCancel {
    pub transfer: String,
}

/// Server → agent, as a binary frame: `data` goes at `offset` of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileChunk {
    pub transfer: String,
    pub offset: u64,
    pub data: Bytes,
}

/// First byte of a binary frame holding a [`FileChunk`] (output frames are 1).
pub const BINARY_FILE_CHUNK: u8 = 2;

impl FileChunk {
    /// The frame: kind (2), offset (8 bytes, big-endian), transfer id length n (1), the id, data.
    pub fn encode_binary(transfer: &str, offset: u64, data: &[u8]) -> Vec<u8> {
        let id = &transfer.as_bytes()[..transfer.len().min(255)];
        let mut frame = Vec::with_capacity(10 + id.len() + data.len());
        frame.push(BINARY_FILE_CHUNK);
        frame.extend_from_slice(&offset.to_be_bytes());
        frame.push(id.len() as u8);
        frame.extend_from_slice(id);
        frame.extend_from_slice(data);
        frame
    }

    /// Decodes a frame made by [`FileChunk::encode_binary`]; the data is a view, not a copy.
    pub fn decode_binary(frame: Bytes) -> Result<FileChunk, Error> {
        let malformed = Error::MalformedBinary;
        if frame.len() < 10 || frame[0] != BINARY_FILE_CHUNK {
            return Err(malformed("not a file chunk"));
        }
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&frame[1..9]);
        let id_len = frame[9] as usize;
        let data_from = 10 + id_len;
        if !(1..=64).contains(&id_len) || frame.len() < data_from {
            return Err(malformed("bad transfer id length"));
        }
        let transfer = std::str::from_utf8(&frame[10..data_from])
            .map_err(|_| malformed("transfer id is not ASCII"))?
            .to_string();
        Ok(FileChunk {
            transfer,
            offset: u64::from_be_bytes(offset),
            data: frame.slice(data_from..),
        })
    }
}

/// Parses a mode written in octal (`0644`, `644`, `0o755`): at most `0o7777`.
pub fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.trim().trim_start_matches("0o");
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

/// The mode as people write it: four octal digits.
pub fn format_mode(mode: u32) -> String {
    format!("{mode:04o}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips_and_bad_frames_are_errors() {
        let frame = Bytes::from(FileChunk::encode_binary("f-abc", 1 << 33, b"\x00data"));
        let chunk = FileChunk::decode_binary(frame.clone()).unwrap();
        assert_eq!(
            chunk,
            FileChunk {
                transfer: "f-abc".into(),
                offset: 1 << 33,
                data: Bytes::from_static(b"\x00data")
            }
        );
        for bad in [
            vec![],
            frame[..9].to_vec(),
            {
                let mut f = frame.to_vec();
                f[0] = 1;
                f
            },
            {
                let mut f = frame.to_vec();
                f[9] = 0;
                f
            },
        ] {
            assert!(FileChunk::decode_binary(Bytes::from(bad.clone())).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn modes_are_octal_and_bounded() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("0o4755"), Some(0o4755));
        for bad in ["", "0888", "rw-r--r--", "07777 7", "12345", "-1"] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
        assert_eq!(format_mode(0o644), "0644");
    }
}

name_enum! {
    /// A whole send's status, from its results (Alibaba's `InvocationStatus` of SendFile).
    pub enum FileSendStatus {
        Pending,
        Running,
        Success,
        Failed,
        PartialFailed,
    }
}

impl FileSendStatus {
    /// Pending while any result is; Running while any is; then Success (all), Failed (all)
    /// or PartialFailed.
    pub fn of(statuses: impl IntoIterator<Item = FileStatus>) -> FileSendStatus {
        let (mut pending, mut running, mut success, mut failed) = (false, false, false, false);
        for status in statuses {
            match status {
                FileStatus::Pending => pending = true,
                FileStatus::Running => running = true,
                FileStatus::Success => success = true,
                FileStatus::Failed => failed = true,
            }
        }
        match (pending, running, success, failed) {
            (true, ..) => FileSendStatus::Pending,
            (_, true, ..) => FileSendStatus::Running,
            (_, _, true, true) => FileSendStatus::PartialFailed,
            (_, _, _, true) => FileSendStatus::Failed,
            _ => FileSendStatus::Success,
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, FileSendStatus::Pending | FileSendStatus::Running)
    }
}

/// `POST /api/v1/files` answer.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendFileCreated {
    pub send_id: String,
}

/// A send as the API shows it (`GET /api/v1/files/{send_id}`).
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSend {
    pub send_id: String,
    pub status: FileSendStatus,
    pub name: String,
    pub description: String,
    pub target_dir: String,
    /// Octal, e.g. `0644`.
    pub mode: String,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub overwrite: bool,
    pub timeout_secs: u64,
    pub size: u64,
    pub sha256: String,
    pub creator: String,
    pub created_time: String,
    pub instance_count: usize,
    /// Per instance; absent from listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<FileResult>>,
}

/// One instance's result of a send.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileResult {
    pub instance_id: String,
    pub status: FileStatus,
    pub error_code: Option<FileErrorCode>,
    pub error_info: Option<String>,
    pub start_time: Option<String>,
    pub finish_time: Option<String>,
    /// File bytes the server sent this instance, over every connection.
    pub bytes_sent: u64,
    /// Where the last (re)start began: above 0 when the agent resumed a cut transfer.
    pub resumed_from: u64,
}

/// `GET /api/v1/files` answer.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSendsResponse {
    pub files: Vec<FileSend>,
    pub total: u64,
}
