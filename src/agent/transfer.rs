//! Receiving files (Send File, agent protocol version 3): each transfer writes a temporary file
//! beside its target (`.<name>.<tag>.part`, the tag a hash of the transfer and this instance, so
//! agents sharing a file system never share one), acknowledges what it wrote, and at the end
//! checks the SHA-256, sets owner, group and mode, and moves the file into place in one step
//! (`rename`, or `link` when overwriting is off, so an existing file is never replaced).
//!
//! A transfer outlives its connection: when the server offers it again (after a reconnect, or
//! after this agent restarted and found the temporary file), the agent answers with the length
//! it holds, rounded down to a whole chunk, and the server sends only the rest. The verdict is
//! remembered in `<state-dir>/files/<transfer>.json`, so an offer repeated after the end gets
//! the same answer instead of a second copy.

use crate::protocol::agent::AgentMessage;
use crate::protocol::files::{FileAccept, FileAck, FileChunk, FileDone, FileErrorCode, FileOffer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// What a running transfer is told.
enum Input {
    Offer,
    Chunk(FileChunk),
    Cancel,
}

/// A transfer's failure: the code and the sentence for the result.
type Failure = (FileErrorCode, String);

/// The transfers of this agent.
pub struct Transfers {
    /// Where verdicts are remembered.
    done_dir: PathBuf,
    /// This agent's instance id, part of its temporary files' names.
    instance_id: String,
    running: HashMap<String, mpsc::Sender<Input>>,
    /// Messages for the server, sent by the session when connected (dropped otherwise: the
    /// server offers again after a reconnect, and is told the state then).
    out: mpsc::Sender<AgentMessage>,
}

impl Transfers {
    pub fn new(state_dir: &Path, instance_id: &str, out: mpsc::Sender<AgentMessage>) -> Transfers {
        forget_old_verdicts(&state_dir.join("files"));
        Transfers {
            done_dir: state_dir.join("files"),
            instance_id: instance_id.to_string(),
            running: HashMap::new(),
            out,
        }
    }

    /// An offer: a new transfer, one resumed, or one already over (its verdict again).
    pub fn offer(&mut self, offer: FileOffer) {
        self.running.retain(|_, tx| !tx.is_closed());
        if let Some(tx) = self.running.get(&offer.transfer) {
            if tx.try_send(Input::Offer).is_ok() {
                return;
            }
        }
        if !super::spool::is_task_id(&offer.transfer) {
            tracing::warn!(transfer = %offer.transfer, "refused a file offer with a malformed id");
            return;
        }
        if let Some(done) = remembered(&self.done_dir, &offer.transfer) {
            let _ = self.out.try_send(done.into());
            return;
        }
        // Room for a window of chunks and then some (the server keeps 16 in flight).
        let (tx, rx) = mpsc::channel(64);
        self.running.insert(offer.transfer.clone(), tx);
        let part_tag = part_tag(&offer.transfer, &self.instance_id);
        tokio::spawn(receive(offer, part_tag, rx, self.out.clone(), self.done_dir.clone()));
    }

    pub fn chunk(&mut self, chunk: FileChunk) {
        if let Some(tx) = self.running.get(&chunk.transfer) {
            let _ = tx.try_send(Input::Chunk(chunk));
        }
    }

    pub fn cancel(&mut self, transfer: &str) {
        if let Some(tx) = self.running.remove(transfer) {
            let _ = tx.try_send(Input::Cancel);
        }
    }
}

/// 12 hex digits naming a transfer's temporary file on this instance: the same after a restart.
fn part_tag(transfer: &str, instance_id: &str) -> String {
    let digest = Sha256::digest(format!("{transfer}/{instance_id}"));
    crate::protocol::hex(&digest[..6])
}

/// Verdicts older than a week are forgotten: no server offers a transfer that long after its
/// timeout (at most a day).
fn forget_old_verdicts(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let week = Duration::from_secs(7 * 24 * 3600);
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > week);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn remembered(dir: &Path, transfer: &str) -> Option<FileDone> {
    let text = std::fs::read(dir.join(format!("{transfer}.json"))).ok()?;
    serde_json::from_slice(&text).ok()
}

fn remember(dir: &Path, done: &FileDone) {
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let text = serde_json::to_vec(done).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(format!("{}.json", done.transfer)), text)
    };
    if let Err(e) = write() {
        tracing::warn!(transfer = %done.transfer, "cannot remember a file transfer's verdict: {e}");
    }
}

/// One transfer, from the first offer to the verdict.
async fn receive(
    offer: FileOffer,
    part_tag: String,
    mut inputs: mpsc::Receiver<Input>,
    out: mpsc::Sender<AgentMessage>,
    done_dir: PathBuf,
) {
    let transfer = offer.transfer.clone();
    let verdict = |error: Option<Failure>| {
        let done = FileDone {
            transfer: transfer.clone(),
            error_code: error.as_ref().map(|e| e.0),
            error_info: error.map(|e| e.1),
        };
        remember(&done_dir, &done);
        match &done.error_code {
            None => tracing::info!(transfer = %done.transfer, "file in place"),
            Some(code) => {
                tracing::warn!(transfer = %done.transfer, %code, "file transfer failed: {}", done.error_info.as_deref().unwrap_or_default())
            }
        }
        let _ = out.try_send(done.into());
    };
    let mut file = match Incoming::start(&offer, &part_tag).await {
        Ok(file) => file,
        Err(failure) => return verdict(Some(failure)),
    };
    let accept = |offset| FileAccept {
        transfer: transfer.clone(),
        offset,
    };
    let _ = out.try_send(accept(file.written).into());
    // Without a word from the server for this long the transfer is given up (the server has).
    let idle = Duration::from_secs(600);
    loop {
        if file.written == offer.size {
            let outcome = file.finish(&offer).await;
            return verdict(outcome.err());
        }
        let input = match tokio::time::timeout(idle, inputs.recv()).await {
            Ok(Some(input)) => input,
            // The agent is stopping: the temporary file stays for a resume.
            Ok(None) => return,
            Err(_) => return file.discard(),
        };
        match input {
            Input::Offer => {
                let _ = out.try_send(accept(file.written).into());
            }
            // A chunk of an earlier connection, or past where we are: the server resends.
            Input::Chunk(chunk) if chunk.offset != file.written => {}
            Input::Chunk(chunk) => {
                if chunk.data.len() as u64 > offer.size - file.written {
                    file.discard();
                    return verdict(Some((
                        FileErrorCode::ChecksumMismatch,
                        "the server sent more bytes than the file's size".into(),
                    )));
                }
                if let Err(e) = file.write(&chunk.data).await {
                    file.discard();
                    return verdict(Some(failure(e, &format!("cannot write {}", file.part.display()))));
                }
                let _ = out.try_send(
                    FileAck {
                        transfer: transfer.clone(),
                        offset: file.written,
                    }
                    .into(),
                );
            }
            Input::Cancel => return file.discard(),
        }
    }
}

/// The error code of an I/O error, and a sentence naming what failed.
fn failure(e: std::io::Error, what: &str) -> Failure {
    let code = match e.raw_os_error() {
        Some(libc_errno::ENOSPC | libc_errno::EDQUOT) => FileErrorCode::DiskFull,
        Some(libc_errno::EACCES | libc_errno::EPERM | libc_errno::EROFS) => FileErrorCode::PermissionDenied,
        Some(libc_errno::EEXIST) => FileErrorCode::FileAlreadyExists,
        Some(libc_errno::ENOENT | libc_errno::ENOTDIR | libc_errno::EISDIR) => FileErrorCode::InvalidPath,
        _ => FileErrorCode::FileCreateFail,
    };
    (code, format!("{what}: {e}"))
}

/// errno values (Linux), without a libc dependency in the agent.
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EDQUOT: i32 = 122;
}

/// The temporary file of a transfer.
struct Incoming {
    part: PathBuf,
    target: PathBuf,
    file: tokio::fs::File,
    /// Bytes written, all of them before any chunk not yet written.
    written: u64,
    owner: Option<u32>,
    group: Option<u32>,
}

impl Incoming {
    /// Checks the offer against this host (directory, existing target, owner, group) and
    /// opens the temporary file, keeping the whole chunks an earlier attempt wrote.
    async fn start(offer: &FileOffer, part_tag: &str) -> Result<Incoming, Failure> {
        let dir = Path::new(&offer.target_dir);
        let name_ok = !offer.name.is_empty() && offer.name != "." && offer.name != ".." && !offer.name.contains('/');
        if !dir.is_absolute() || dir.components().any(|c| c == std::path::Component::ParentDir) || !name_ok {
            return Err((
                FileErrorCode::InvalidPath,
                format!("{}/{} is not an absolute path to a file", offer.target_dir, offer.name),
            ));
        }
        let (owner, group) = accounts(offer)?;
        // Like Cloud Assistant, a missing target directory is created.
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| failure(e, &format!("cannot create the target directory {}", dir.display())))?;
        let target = dir.join(&offer.name);
        match tokio::fs::symlink_metadata(&target).await {
            Ok(meta) if meta.is_dir() => {
                return Err((
                    FileErrorCode::InvalidPath,
                    format!("{} is a directory", target.display()),
                ));
            }
            Ok(_) if !offer.overwrite => {
                return Err((
                    FileErrorCode::FileAlreadyExists,
                    format!(
                        "{} exists and overwrite is off; it was left untouched",
                        target.display()
                    ),
                ));
            }
            _ => {}
        }
        // Within the 255 bytes of a name, whatever the target's.
        let stem: String = offer.name.chars().take(200).collect();
        let part = dir.join(format!(".{stem}.{part_tag}.part"));
        let opened = async {
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&part)
                .await?;
            let held = file.metadata().await?.len().min(offer.size);
            let chunk = offer.chunk_bytes.max(1);
            let written = held / chunk * chunk;
            file.set_len(written).await?;
            Ok::<_, std::io::Error>((file, written))
        };
        let (mut file, written) = opened
            .await
            .map_err(|e| failure(e, &format!("cannot create {}", part.display())))?;
        if let Err(e) = tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(written)).await {
            let _ = std::fs::remove_file(&part);
            return Err(failure(e, &format!("cannot open {}", part.display())));
        }
        if written > 0 {
            tracing::info!(transfer = %offer.transfer, offset = written, "resuming a file transfer");
        }
        Ok(Incoming {
            part,
            target,
            file,
            written,
            owner,
            group,
        })
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data).await?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Removes the temporary file (the target is never touched before the final move).
    fn discard(&self) {
        let _ = std::fs::remove_file(&self.part);
    }

    /// Flushes, checks the SHA-256, sets owner, group and mode, and moves the file into place.
    async fn finish(mut self, offer: &FileOffer) -> Result<(), Failure> {
        let part = self.part.clone();
        let synced = async {
            self.file.flush().await?;
            self.file.sync_all().await
        };
        if let Err(e) = synced.await {
            self.discard();
            return Err(failure(e, &format!("cannot write {}", part.display())));
        }
        drop(self.file);
        let (target, owner, group) = (self.target.clone(), self.owner, self.group);
        let (sha256, mode, overwrite) = (offer.sha256.clone(), offer.mode, offer.overwrite);
        let placed = tokio::task::spawn_blocking(move || place(&part, &target, &sha256, mode, owner, group, overwrite))
            .await
            .unwrap_or_else(|e| {
                Err((
                    FileErrorCode::FileCreateFail,
                    format!("the agent's file task failed: {e}"),
                ))
            });
        if placed.is_err() {
            let _ = std::fs::remove_file(&self.part);
        }
        placed
    }
}

/// The owner's and group's ids on this host, or why they cannot be used.
fn accounts(offer: &FileOffer) -> Result<(Option<u32>, Option<u32>), Failure> {
    #[cfg(unix)]
    {
        use nix::unistd::{Group, User, geteuid};
        let unknown = |what: &str, name: &str| {
            (
                FileErrorCode::UserGroupNotExists,
                format!("the {what} {name:?} does not exist on this instance"),
            )
        };
        let owner = match offer.owner.as_deref() {
            None => None,
            Some(name) => Some(match name.parse::<u32>() {
                Ok(uid) => uid,
                Err(_) => User::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| unknown("user", name))?
                    .uid
                    .as_raw(),
            }),
        };
        let group = match offer.group.as_deref() {
            None => None,
            Some(name) => Some(match name.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => Group::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| unknown("group", name))?
                    .gid
                    .as_raw(),
            }),
        };
        let me = geteuid().as_raw();
        if let Some(uid) = owner.filter(|uid| me != 0 && *uid != me) {
            return Err((
                FileErrorCode::PermissionDenied,
                format!("the agent runs as uid {me}, not root, and cannot give the file to uid {uid}"),
            ));
        }
        Ok((owner, group))
    }
    #[cfg(not(unix))]
    {
        if offer.owner.is_some() || offer.group.is_some() {
            return Err((
                FileErrorCode::UserGroupNotExists,
                "owner and group are not supported on this OS".into(),
            ));
        }
        Ok((None, None))
    }
}

/// The blocking end of a transfer: hash, ownership, mode, and the move into place.
fn place(
    part: &Path,
    target: &Path,
    sha256: &str,
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
    overwrite: bool,
) -> Result<(), Failure> {
    let io = |what: String| move |e: std::io::Error| failure(e, &what);
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(part).map_err(io(format!("cannot read {}", part.display())))?;
    let mut buffer = vec![0; 256 * 1024];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(io(format!("cannot read {}", part.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let got = crate::protocol::hex(&hasher.finalize());
    if got != sha256 {
        return Err((
            FileErrorCode::ChecksumMismatch,
            format!("the received file hashes to {got}, not {sha256}; nothing was put in place"),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // Ownership first: changing it clears the set-id bits a mode may ask for.
        if owner.is_some() || group.is_some() {
            std::os::unix::fs::chown(part, owner, group)
                .map_err(io(format!("cannot set the owner and group of {}", part.display())))?;
        }
        std::fs::set_permissions(part, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("cannot set the mode of {}", part.display())))?;
    }
    #[cfg(not(unix))]
    let _ = (mode, owner, group);
    if overwrite {
        std::fs::rename(part, target).map_err(io(format!("cannot move the file to {}", target.display())))?;
    } else {
        // `link` fails when the target appeared meanwhile: an existing file is never replaced.
        std::fs::hard_link(part, target).map_err(io(format!("cannot put the file at {}", target.display())))?;
        let _ = std::fs::remove_file(part);
    }
    if let Some(dir) = target.parent() {
        // The new name survives a crash.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(dir: &Path, data: &[u8], overwrite: bool) -> FileOffer {
        FileOffer {
            transfer: "f-test".into(),
            target_dir: dir.to_string_lossy().into_owned(),
            name: "app.conf".into(),
            size: data.len() as u64,
            sha256: crate::protocol::hex(&Sha256::digest(data)),
            mode: 0o640,
            owner: None,
            group: None,
            overwrite,
            chunk_bytes: 4,
        }
    }

    #[tokio::test]
    async fn a_file_resumes_from_whole_chunks_and_lands_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"0123456789";
        let offer = offer(dir.path(), data, false);
        // An earlier attempt left 6 bytes: 4 are a whole chunk, kept; 2 are dropped.
        std::fs::write(dir.path().join(".app.conf.tag.part"), &data[..6]).unwrap();
        let mut incoming = Incoming::start(&offer, "tag").await.unwrap();
        assert_eq!(incoming.written, 4);
        incoming.write(&data[4..]).await.unwrap();
        incoming.finish(&offer).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("app.conf")).unwrap(), data);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("app.conf"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o640);
        }
        assert!(!dir.path().join(".app.conf.tag.part").exists());

        // Overwrite off: refused at the offer, the file untouched.
        let again = Incoming::start(&offer, "tag").await.err().unwrap();
        assert_eq!(again.0, FileErrorCode::FileAlreadyExists);
    }

    #[tokio::test]
    async fn a_corrupt_file_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut offer = offer(dir.path(), b"good", true);
        offer.sha256 = "00".repeat(32);
        let mut incoming = Incoming::start(&offer, "tag").await.unwrap();
        incoming.write(b"good").await.unwrap();
        assert_eq!(
            incoming.finish(&offer).await.err().unwrap().0,
            FileErrorCode::ChecksumMismatch
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn unknown_owners_and_relative_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = offer(dir.path(), b"x", false);
        bad.owner = Some("no-such-user-fleetrun".into());
        assert_eq!(
            Incoming::start(&bad, "tag").await.err().unwrap().0,
            FileErrorCode::UserGroupNotExists
        );
        let mut relative = offer(dir.path(), b"x", false);
        relative.target_dir = "opt/app".into();
        assert_eq!(
            Incoming::start(&relative, "tag").await.err().unwrap().0,
            FileErrorCode::InvalidPath
        );
    }
}
