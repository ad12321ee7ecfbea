//! Send File: the rules of a send (target directory, name, mode, owner, group, timeout, who may
//! send), the upload staged on the server's disk, and each agent's transfer: an offer, chunks
//! read from the staged file with a window of unacknowledged ones, and the agent's verdict.
//!
//! The upload is written to `<data-dir>/files/<send id>` as it arrives, hashed on the way, and
//! never held whole in memory. Each transfer reads it back a chunk at a time; at most
//! [`WINDOW_CHUNKS`] chunks of one transfer are queued or in flight, so a large file to many
//! agents neither fills memory nor crowds out the command traffic sharing each connection.
//! The file is deleted once every result is final (or by retention), by [`Dispatcher::run_files`].

use super::actor::Actor;
use super::error::{Error, Field, Kind, invalid, not_found};
use super::{Dispatcher, Outbound};
use crate::protocol::agent::ServerMessage;
use crate::protocol::files::{
    FILE_CHUNK_BYTES, FILES_PROTOCOL_VERSION, FileCancel, FileChunk, FileErrorCode, FileOffer, format_mode, parse_mode,
};
use crate::protocol::hex;
use crate::store::{FileResultRow, FileSendRow, NewFileSend, Role};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Chunks of one transfer sent and not yet acknowledged by the agent (4 MiB of 256 KiB chunks).
pub const WINDOW_CHUNKS: u64 = 16;

/// Alibaba's default timeout of a send, in seconds; below the minimum it is raised to it.
pub const DEFAULT_FILE_TIMEOUT_SECS: u64 = 60;
const MIN_FILE_TIMEOUT_SECS: u64 = 10;
const MAX_FILE_TIMEOUT_SECS: u64 = 86_400;

/// What a send asks for, besides the upload.
#[derive(Debug, Clone, Default)]
pub struct SendFile {
    pub instance_ids: Vec<String>,
    /// When given (the ECS API), every instance must be in this region.
    pub region_id: Option<String>,
    pub target_dir: String,
    pub name: String,
    /// Octal, e.g. `0644`; `None` is `0644`.
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub overwrite: bool,
    pub timeout_secs: Option<u64>,
    pub description: String,
}

/// The target directory: absolute, no `..` component, no NUL, at most 4,096 bytes.
pub fn check_target_dir(dir: &str) -> Result<String, Error> {
    let bad = |why: &str| {
        invalid(
            Field::TargetDir,
            format!("`target_dir` {why}: give an absolute directory such as /opt/app"),
        )
    };
    if dir.is_empty() {
        return Err(bad("is empty"));
    }
    if !dir.starts_with('/') {
        return Err(bad(&format!("{dir:?} is relative")));
    }
    if dir.split('/').any(|part| part == "..") {
        return Err(bad(&format!("{dir:?} contains `..`")));
    }
    if dir.len() > 4096 || dir.contains('\0') {
        return Err(bad("is longer than 4,096 bytes or contains NUL"));
    }
    let trimmed = dir.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.to_string()
    })
}

/// The file name: one path component, not `.` or `..`, at most 255 bytes.
pub fn check_file_name(name: &str) -> Result<String, Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') || name.len() > 255 {
        return Err(invalid(
            Field::FileName,
            format!("`name` {name:?} must be a file name of 1 to 255 bytes without `/`, and not `.` or `..`"),
        ));
    }
    Ok(name.to_string())
}

/// The mode: octal permission bits (`0644`, `755`), at most `7777`.
pub fn check_mode(mode: Option<&str>) -> Result<u32, Error> {
    match mode {
        None => Ok(0o644),
        Some(text) => parse_mode(text).ok_or_else(|| {
            invalid(
                Field::FileMode,
                format!("`mode` {text:?} must be octal permission bits such as 0644 or 0755"),
            )
        }),
    }
}

/// An owner or group: a name of the instance's accounts or a number, resolved on the agent.
fn check_account(field: Field, what: &str, value: Option<&str>) -> Result<Option<String>, Error> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let fine = value.len() <= 32
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b))
        && !value.starts_with('-');
    if !fine {
        return Err(invalid(
            field,
            format!(
                "`{what}` {value:?} must be a user or group name of up to 32 letters, digits, `.`, `_` or `-`, or a number"
            ),
        ));
    }
    Ok(Some(value.to_string()))
}

/// The timeout: Alibaba's default of 60 s, raised to 10 s when below, at most a day.
pub fn check_file_timeout(secs: Option<u64>) -> Result<u64, Error> {
    let secs = secs.unwrap_or(DEFAULT_FILE_TIMEOUT_SECS).max(MIN_FILE_TIMEOUT_SECS);
    if secs > MAX_FILE_TIMEOUT_SECS {
        return Err(invalid(
            Field::Timeout,
            format!("`timeout_secs` must be at most {MAX_FILE_TIMEOUT_SECS}"),
        ));
    }
    Ok(secs)
}

/// An upload being written to the server's disk. Dropped before [`Dispatcher::send_file`]
/// took it, its file is deleted.
pub struct Upload {
    id: String,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl Upload {
    /// Appends data; refused past the server's limit (`--max-file-bytes`).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(invalid(
                Field::FileContent,
                format!(
                    "the file is larger than this server's limit of {} bytes (--max-file-bytes)",
                    self.limit
                ),
            ));
        }
        self.hasher.update(data);
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Upload("upload already closed".into()))?;
        file.write_all(data).await.map_err(|e| staging_error(&self.path, e))
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn staging_error(path: &std::path::Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(28) {
        // The same answer as a database write refused for a full disk: 503, try later.
        return Error::Store(crate::store::Error::DiskFull);
    }
    Error::Upload(format!("cannot stage the upload at {}: {e}", path.display()))
}

/// What an agent said about a transfer, handed to the task sending it.
#[derive(Debug)]
pub(super) enum Reply {
    Accept(u64),
    Ack(u64),
    Done(Option<FileErrorCode>, Option<String>),
}

/// The transfers running on this server, by (instance id, send id): the connection they use
/// and where the agent's replies go.
#[derive(Default)]
pub(super) struct Transfers {
    map: Mutex<TransferMap>,
}

/// (instance id, send id) → (the connection's session, where the agent's replies go, and the
/// transfer task's own number). The map holds the only sender: removing the entry (the
/// connection closed, or a newer transfer took over) ends the task's wait.
type TransferMap = HashMap<(String, String), (u64, mpsc::Sender<Reply>, u64)>;

/// Numbers transfer tasks, so one removes only its own entry.
static NEXT_TRANSFER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Transfers {
    fn lock(&self) -> std::sync::MutexGuard<'_, TransferMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection to hand a transfer to.
#[derive(Clone)]
pub(super) struct Connection {
    pub instance_id: String,
    pub session: u64,
    pub tx: mpsc::Sender<Outbound>,
    pub protocol_version: u32,
}

impl Dispatcher {
    /// Starts an upload (operator): a file under the data directory, removed again unless a
    /// send takes it. A viewer is refused before a byte is stored.
    pub async fn begin_upload(&self, actor: &Actor) -> Result<Upload, Error> {
        actor.require(Role::Operator)?;
        let dir = &self.inner.settings.files_dir;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| staging_error(dir, e))?;
        let id = crate::store::ids::new_id("f");
        let path = dir.join(&id);
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| staging_error(&path, e))?;
        Ok(Upload {
            id,
            path,
            file: Some(file),
            hasher: Sha256::new(),
            size: 0,
            limit: self.inner.settings.max_file_bytes,
        })
    }

    /// Sends an uploaded file to instances (operator): every rule checked before anything is
    /// stored or sent, one audit entry with the file's SHA-256 and size, then an offer to each
    /// target connected here (the others get theirs when they connect). Returns the send id.
    pub async fn send_file(&self, actor: &Actor, mut upload: Upload, request: SendFile) -> Result<String, Error> {
        actor.require(Role::Operator)?;
        let target_dir = check_target_dir(&request.target_dir)?;
        let name = check_file_name(&request.name)?;
        let mode = check_mode(request.mode.as_deref())?;
        let owner = check_account(Field::FileOwner, "owner", request.owner.as_deref())?;
        let group = check_account(Field::FileGroup, "group", request.group.as_deref())?;
        let timeout_secs = check_file_timeout(request.timeout_secs)?;
        super::check::instance_ids(&request.instance_ids, self.inner.settings.max_instances)?;
        let mut instances = self.inner.store.instances_by_ids(&request.instance_ids).await?;
        if let Some(region) = &request.region_id {
            instances.retain(|i| &i.region_id == region);
        }
        if instances.len() < request.instance_ids.len() {
            let known: HashSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
            let unknown = request
                .instance_ids
                .iter()
                .filter(|id| !known.contains(id.as_str()))
                .cloned()
                .collect();
            return Err(Error::UnknownInstances(unknown));
        }
        let Some(mut file) = upload.file.take() else {
            return Err(Error::Upload("upload already closed".into()));
        };
        // From here the send owns the staged file; removing it on failure is up to this call.
        let path = upload.path.clone();
        let staged = async {
            file.flush().await?;
            file.sync_all().await
        };
        if let Err(e) = staged.await {
            let _ = std::fs::remove_file(&path);
            return Err(staging_error(&path, e));
        }
        let sha256 = hex(&std::mem::take(&mut upload.hasher).finalize());
        let now = self.now();
        let region_id = instances.first().map(|i| i.region_id.clone()).unwrap_or_default();
        let send = NewFileSend {
            id: upload.id.clone(),
            region_id,
            name,
            description: request.description.chars().take(512).collect(),
            target_dir,
            mode,
            owner,
            group,
            overwrite: request.overwrite,
            timeout_secs,
            size: upload.size,
            sha256,
            content_path: path.to_string_lossy().into_owned(),
            created_by: actor.username.clone(),
            created_at: now,
            deliver_by: now + self.inner.settings.delivery_window.as_millis() as i64,
            deadline: now + (timeout_secs * 1000) as i64,
        };
        if let Err(e) = self.inner.store.create_file_send(&send, &request.instance_ids).await {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        let detail = format!(
            "{}/{} ({} bytes, sha256 {}, mode {}{}{}{}) to {} instance(s)",
            send.target_dir.trim_end_matches('/'),
            send.name,
            send.size,
            send.sha256,
            format_mode(send.mode),
            send.owner
                .as_deref()
                .map(|o| format!(", owner {o}"))
                .unwrap_or_default(),
            send.group
                .as_deref()
                .map(|g| format!(", group {g}"))
                .unwrap_or_default(),
            if send.overwrite { ", overwrite" } else { "" },
            request.instance_ids.len()
        );
        self.audit(actor, "SendFile", &send.id, &detail).await;
        self.inner.metrics.file_sent();
        let row = self.inner.store.file_send(&send.id).await?;
        let connections: Vec<Connection> = {
            let agents = self.lock_agents();
            request
                .instance_ids
                .iter()
                .filter_map(|id| agents.get(id).map(|link| link.connection(id)))
                .collect()
        };
        for connection in connections {
            self.offer_file(connection, row.clone());
        }
        Ok(send.id)
    }

    /// A send and its results.
    pub async fn file_send(&self, send_id: &str) -> Result<(FileSendRow, Vec<FileResultRow>), Error> {
        let send = self
            .inner
            .store
            .file_send(send_id)
            .await
            .map_err(not_found(Kind::FileSend, send_id))?;
        let results = self.inner.store.file_results(send_id).await?;
        Ok((send, results))
    }

    /// The newest sends first, with how many there are.
    pub async fn file_sends(&self, offset: u64, limit: u64) -> Result<(Vec<FileSendRow>, u64), Error> {
        Ok(self.inner.store.file_sends(offset, limit).await?)
    }

    /// Offers a newly connected agent every send it still waits for.
    pub(super) async fn offer_open_files(&self, connection: Connection) {
        match self
            .inner
            .store
            .open_file_sends(&connection.instance_id, self.now())
            .await
        {
            Ok(sends) => {
                // With several servers, only the one holding the upload sends it.
                for send in sends
                    .into_iter()
                    .filter(|s| std::path::Path::new(&s.content_path).exists())
                {
                    self.offer_file(connection.clone(), send);
                }
            }
            Err(e) => {
                tracing::warn!(instance_id = %connection.instance_id, error = %e, "could not look up files to send")
            }
        }
    }

    fn offer_file(&self, connection: Connection, send: FileSendRow) {
        tokio::spawn(self.clone().transfer(connection, send));
    }

    /// A reply from an agent about a transfer. One the server is not sending (finished here
    /// already, or the server restarted) still counts when it is the agent's verdict.
    pub(super) async fn file_reply(&self, instance_id: &str, session: u64, transfer: &str, reply: Reply) {
        let key = (instance_id.to_string(), transfer.to_string());
        let sender = self
            .inner
            .transfers
            .lock()
            .get(&key)
            .filter(|(s, ..)| *s == session)
            .map(|(_, tx, _)| tx.clone());
        match (sender, reply) {
            (Some(tx), reply) => {
                let _ = tx.send(reply).await;
            }
            (None, Reply::Done(code, info)) => self.finish_file(transfer, instance_id, code, info).await,
            (None, _) => {}
        }
    }

    /// Forgets the transfers of a closed connection: their tasks stop, and the agent is
    /// offered them again when it reconnects.
    pub(super) fn files_detached(&self, instance_id: &str, session: u64) {
        self.inner
            .transfers
            .lock()
            .retain(|(instance, _), (s, ..)| !(instance == instance_id && *s == session));
    }

    async fn finish_file(&self, send_id: &str, instance_id: &str, code: Option<FileErrorCode>, info: Option<String>) {
        let info = code.map(|c| info.unwrap_or_else(|| c.default_info().to_string()));
        let error = code.zip(info.as_deref());
        match self
            .inner
            .store
            .finish_file_result(send_id, instance_id, error, self.now())
            .await
        {
            Ok(true) => tracing::info!(send_id, instance_id, error_code = ?code, "file send result final"),
            Ok(false) => {}
            Err(e) => tracing::warn!(send_id, instance_id, error = %e, "could not record a file send result"),
        }
    }

    /// One file to one agent over one connection, until the agent's verdict, the deadline, or
    /// the connection's end (then the agent is offered it again when it reconnects, and
    /// resumes from what it holds).
    async fn transfer(self, connection: Connection, send: FileSendRow) {
        let Connection {
            instance_id,
            session,
            tx: out,
            protocol_version,
        } = connection;
        if protocol_version < FILES_PROTOCOL_VERSION {
            let info = format!(
                "the agent on {instance_id} speaks agent protocol {protocol_version}, and Send File needs {FILES_PROTOCOL_VERSION}: upgrade the agent to this server's version"
            );
            return self
                .finish_file(
                    &send.id,
                    &instance_id,
                    Some(FileErrorCode::ClientNeedUpgrade),
                    Some(info),
                )
                .await;
        }
        let key = (instance_id.clone(), send.id.clone());
        let (reply_tx, mut replies) = mpsc::channel(WINDOW_CHUNKS as usize * 2 + 8);
        let number = NEXT_TRANSFER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .transfers
            .lock()
            .insert(key.clone(), (session, reply_tx, number));
        let offer = FileOffer {
            transfer: send.id.clone(),
            target_dir: send.target_dir.clone(),
            name: send.name.clone(),
            size: send.size,
            sha256: send.sha256.clone(),
            mode: send.mode,
            owner: send.owner.clone(),
            group: send.group.clone(),
            overwrite: send.overwrite,
            chunk_bytes: FILE_CHUNK_BYTES as u64,
        };
        let store = &self.inner.store;
        let mut sent_bytes = 0u64;
        if out.send(Outbound::Message(offer.into())).await.is_ok() {
            if let Err(e) = store.file_offered(&send.id, &instance_id, self.now()).await {
                tracing::warn!(error = %e, "could not record a file offered");
            }
            let left = Duration::from_millis((send.deadline - self.now()).max(0) as u64);
            let deadline = tokio::time::Instant::now() + left;
            let mut stream = Stream::default();
            loop {
                if let Some(file) = stream.file.as_mut() {
                    while stream.next < send.size
                        && stream.next - stream.acked < WINDOW_CHUNKS * FILE_CHUNK_BYTES as u64
                    {
                        let len = (send.size - stream.next).min(FILE_CHUNK_BYTES as u64) as usize;
                        let mut data = vec![0; len];
                        if let Err(e) = file.read_exact(&mut data).await {
                            let info = format!("the server could not read the upload: {e}");
                            self.finish_file(&send.id, &instance_id, Some(FileErrorCode::FileCreateFail), Some(info))
                                .await;
                            let _ = out.try_send(Outbound::Message(
                                FileCancel {
                                    transfer: send.id.clone(),
                                }
                                .into(),
                            ));
                            stream.over = true;
                            break;
                        }
                        let chunk = FileChunk {
                            transfer: send.id.clone(),
                            offset: stream.next,
                            data: data.into(),
                        };
                        if out
                            .send(Outbound::Message(ServerMessage::FileChunk(chunk)))
                            .await
                            .is_err()
                        {
                            stream.over = true;
                            break;
                        }
                        stream.next += len as u64;
                        sent_bytes += len as u64;
                    }
                }
                if stream.over {
                    break;
                }
                tokio::select! {
                    reply = replies.recv() => match reply {
                        // The connection closed or a newer one took over the transfer.
                        None => break,
                        Some(Reply::Accept(offset)) => {
                            // Resume only at a chunk boundary the server sent from.
                            let offset = offset.min(send.size) / FILE_CHUNK_BYTES as u64 * FILE_CHUNK_BYTES as u64;
                            match store.file_started(&send.id, &instance_id, offset, self.now()).await {
                                Ok(true) => {}
                                Ok(false) => break,
                                Err(e) => tracing::warn!(error = %e, "could not record a file transfer started"),
                            }
                            match open_at(&send.content_path, offset).await {
                                Ok(file) => stream = Stream { file: Some(file), next: offset, acked: offset, over: false },
                                Err(e) => {
                                    let info = format!("the server could not read the upload: {e}");
                                    self.finish_file(&send.id, &instance_id, Some(FileErrorCode::FileCreateFail), Some(info)).await;
                                    let _ = out.try_send(Outbound::Message(FileCancel { transfer: send.id.clone() }.into()));
                                    break;
                                }
                            }
                        }
                        Some(Reply::Ack(offset)) => stream.acked = stream.acked.max(offset.min(stream.next)),
                        Some(Reply::Done(code, info)) => {
                            self.finish_file(&send.id, &instance_id, code, info).await;
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        let info = format!("the transfer did not finish within its timeout of {} s", send.timeout_secs);
                        self.finish_file(&send.id, &instance_id, Some(FileErrorCode::Timeout), Some(info)).await;
                        let _ = out.try_send(Outbound::Message(FileCancel { transfer: send.id.clone() }.into()));
                        break;
                    }
                }
            }
        }
        {
            let mut transfers = self.inner.transfers.lock();
            if transfers.get(&key).is_some_and(|(.., n)| *n == number) {
                transfers.remove(&key);
            }
        }
        if sent_bytes > 0 {
            if let Err(e) = store.file_bytes_sent(&send.id, &instance_id, sent_bytes).await {
                tracing::warn!(error = %e, "could not record file bytes sent");
            }
        }
    }

    /// Every second: fails results past their windows and deletes uploads no longer needed;
    /// every minute: deletes sends past retention. Until shutdown.
    pub(super) async fn run_files(self, shutdown: CancellationToken) {
        self.remove_orphan_uploads().await;
        let mut tick = tokio::time::interval(self.inner.settings.sweep_interval);
        let mut rounds = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let store = &self.inner.store;
            let now = self.now();
            if let Err(e) = store.expire_file_results(now).await {
                tracing::warn!(error = %e, "could not expire file sends");
            }
            let before = now - self.inner.settings.retention.as_millis() as i64;
            match store.file_contents_to_remove(before).await {
                Ok(done) => {
                    for (id, path) in done {
                        match std::fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                tracing::warn!(send_id = %id, path, error = %e, "could not delete an upload");
                                continue;
                            }
                        }
                        if let Err(e) = store.file_content_removed(&id, now).await {
                            tracing::warn!(error = %e, "could not record an upload deleted");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not look up uploads to delete"),
            }
            rounds += 1;
            if rounds.is_multiple_of(60) {
                if let Err(e) = store.purge_file_sends(before).await {
                    tracing::warn!(error = %e, "could not purge file sends past retention");
                }
            }
        }
    }
}

impl Dispatcher {
    /// At start: deletes staged files no send holds (an upload cut short by a crash of this
    /// server, or a send already deleted), so they do not fill the data directory.
    async fn remove_orphan_uploads(&self) {
        let Ok(entries) = std::fs::read_dir(&self.inner.settings.files_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let held = match self.inner.store.file_send(&name).await {
                Ok(send) => send.content_removed_at.is_none(),
                Err(crate::store::Error::NotFound) => false,
                // Unsure: keep it, and look again at the next start.
                Err(_) => true,
            };
            if !held {
                tracing::info!(file = %entry.path().display(), "removing an upload no send holds");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Where one transfer's sending stands on its connection.
#[derive(Default)]
struct Stream {
    /// The upload, positioned at `next`; `None` until the agent accepts.
    file: Option<tokio::fs::File>,
    next: u64,
    acked: u64,
    over: bool,
}

async fn open_at(path: &str, offset: u64) -> std::io::Result<tokio::fs::File> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn uploads_no_send_holds_are_removed_at_start_and_held_ones_kept() {
        let (store, _db) = crate::store::test_store().await;
        let files = tempfile::tempdir().unwrap();
        let settings = super::super::Settings {
            files_dir: files.path().to_path_buf(),
            ..Default::default()
        };
        let held = NewFileSend {
            id: "f-held".into(),
            region_id: "local".into(),
            name: "a".into(),
            description: String::new(),
            target_dir: "/tmp".into(),
            mode: 0o644,
            owner: None,
            group: None,
            overwrite: false,
            timeout_secs: 60,
            size: 1,
            sha256: "00".repeat(32),
            content_path: files.path().join("f-held").to_string_lossy().into_owned(),
            created_by: "ann".into(),
            created_at: 0,
            deliver_by: 0,
            deadline: 0,
        };
        store.create_file_send(&held, &[]).await.unwrap();
        std::fs::write(files.path().join("f-held"), b"x").unwrap();
        std::fs::write(files.path().join("f-stray"), b"x").unwrap();
        let d = Dispatcher::offline(store, settings);

        d.remove_orphan_uploads().await;

        assert!(files.path().join("f-held").exists());
        assert!(!files.path().join("f-stray").exists());
    }

    #[test]
    fn paths_names_modes_and_timeouts_are_checked() {
        assert_eq!(check_target_dir("/opt/app/").unwrap(), "/opt/app");
        assert_eq!(check_target_dir("/").unwrap(), "/");
        for bad in ["", "opt/app", "./x", "/opt/../etc", "/opt/..", "/a\0b"] {
            assert!(
                matches!(
                    check_target_dir(bad),
                    Err(Error::Invalid {
                        field: Field::TargetDir,
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(check_file_name("app.tar.gz").unwrap(), "app.tar.gz");
        assert_eq!(check_file_name("..hidden").unwrap(), "..hidden");
        for bad in ["", ".", "..", "a/b", "../x", &"x".repeat(256)] {
            assert!(
                matches!(
                    check_file_name(bad),
                    Err(Error::Invalid {
                        field: Field::FileName,
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(check_mode(None).unwrap(), 0o644);
        assert_eq!(check_mode(Some("0750")).unwrap(), 0o750);
        assert!(matches!(
            check_mode(Some("rwx")),
            Err(Error::Invalid {
                field: Field::FileMode,
                ..
            })
        ));
        assert_eq!(
            check_account(Field::FileOwner, "owner", Some(" www-data "))
                .unwrap()
                .as_deref(),
            Some("www-data")
        );
        assert_eq!(check_account(Field::FileOwner, "owner", Some("")).unwrap(), None);
        assert!(check_account(Field::FileOwner, "owner", Some("a b")).is_err());
        assert!(check_account(Field::FileGroup, "group", Some("-x")).is_err());
        assert_eq!(check_file_timeout(None).unwrap(), 60);
        assert_eq!(
            check_file_timeout(Some(3)).unwrap(),
            10,
            "raised to the minimum, as Alibaba does"
        );
        assert!(check_file_timeout(Some(86_401)).is_err());
    }
}
