//! Running one task: the script in a private temporary file, a child process in its own
//! process group with stdin at end-of-file, stdout and stderr read concurrently, the timeout
//! and stop requests enforced on the whole group (SIGTERM, a grace period, then SIGKILL).

use crate::protocol::agent::{MAX_CHUNK_BYTES, RunTask};
use crate::protocol::{OutputStream, TaskEnd};
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a running task tells the agent's session.
#[derive(Debug)]
pub enum TaskEvent {
    /// The process started as the leader of process group `pgid`.
    Started {
        pgid: i32,
    },
    Output(OutputStream, Bytes),
    Finished {
        exit_code: Option<i32>,
        end: TaskEnd,
    },
}

/// Settings shared by all tasks.
#[derive(Debug)]
pub struct ExecConfig {
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// `pwsh`, when installed.
    pub pwsh: Option<PathBuf>,
    /// Set when the agent itself stops: tasks cut short then end as interrupted, not stopped.
    pub shutting_down: std::sync::atomic::AtomicBool,
}

/// Events of all tasks go to the session through one channel.
pub type Events = mpsc::Sender<(String, TaskEvent)>;

/// Runs a task to its end, reporting through `events`. Never panics on bad input: every
/// failure becomes a `Finished` with an error code.
pub async fn run(task: RunTask, config: Arc<ExecConfig>, events: Events, stop: CancellationToken) {
    let id = task.task.clone();
    let (exit_code, end) = if stop.is_cancelled() {
        (None, TaskEnd::Stopped)
    } else {
        imp::run(&task, &config, &events, &stop).await
    };
    let _ = events.send((id, TaskEvent::Finished { exit_code, end })).await;
}

#[cfg(unix)]
mod imp {
    use super::*;
    use crate::agent::account::{self, Account};
    use crate::protocol::{CommandType, ErrorCode};
    use bytes::BytesMut;
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::process::ExitStatusExt as _;
    use std::path::Path;
    use std::process::Stdio;
    use tokio::io::AsyncReadExt as _;
    use tokio::process::{Child, Command};

    fn error(code: ErrorCode, info: impl Into<String>) -> (Option<i32>, TaskEnd) {
        (
            None,
            TaskEnd::Error {
                error_code: code,
                error_info: info.into(),
            },
        )
    }

    pub async fn run(
        task: &RunTask,
        config: &ExecConfig,
        events: &Events,
        stop: &CancellationToken,
    ) -> (Option<i32>, TaskEnd) {
        let (program, args, extension) = match task.command_type {
            CommandType::RunShellScript => (PathBuf::from("/bin/sh"), &[][..], "sh"),
            CommandType::RunPowerShellScript => match &config.pwsh {
                Some(pwsh) => (
                    pwsh.clone(),
                    &["-NoLogo", "-NoProfile", "-NonInteractive", "-File"][..],
                    "ps1",
                ),
                None => {
                    return error(
                        ErrorCode::CommandNotApplicable,
                        "PowerShell (pwsh) is not installed on this instance",
                    );
                }
            },
            CommandType::RunBatScript => {
                return error(
                    ErrorCode::CommandNotApplicable,
                    "Bat scripts run only on Windows instances",
                );
            }
        };
        let account = match Account::resolve(task.username.as_deref()) {
            Ok(account) => account,
            Err(e @ account::Error::NotExists(_)) => return error(ErrorCode::AccountNotExists, e.to_string()),
            Err(e @ account::Error::NotRoot(_)) => return error(ErrorCode::ExecutionException, e.to_string()),
        };
        let dir = match &task.working_dir {
            Some(dir) if Path::new(dir).is_dir() => PathBuf::from(dir),
            Some(dir) => {
                return error(
                    ErrorCode::DirectoryNotExists,
                    format!("the working directory {dir} does not exist on this instance"),
                );
            }
            None => account
                .home
                .clone()
                .filter(|h| h.is_dir())
                .unwrap_or_else(|| PathBuf::from("/")),
        };
        let script = match Script::create(&task.task, extension, &task.content, &account) {
            Ok(script) => script,
            Err(e) => {
                return error(
                    ErrorCode::ExecutionException,
                    format!("cannot write the script file: {e}"),
                );
            }
        };

        let mut command = Command::new(&program);
        command
            .args(args)
            .arg(&script.path)
            .current_dir(&dir)
            .env_clear()
            .envs(account.environment(&task.task))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(switch) = account.switch.clone() {
            // `pre_exec` is unsafe by contract: the closure runs in the forked child.
            #[allow(unsafe_code)]
            // SAFETY: the closure runs in the child before exec and only makes async-signal-safe
            // system calls (setgroups, setgid, setuid) on data prepared before the fork.
            unsafe {
                command.pre_exec(move || switch.apply());
            }
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return error(
                    ErrorCode::ExecutionException,
                    format!("cannot start {}: {e}", program.display()),
                );
            }
        };
        let pgid = child.id().map(|pid| pid as i32).unwrap_or_default();
        let _ = events.send((task.task.clone(), TaskEvent::Started { pgid })).await;

        // Readers hold `done_tx` clones: `done_rx` yields None once both pipes are closed.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let mut readers = Vec::new();
        for (pipe, stream) in [
            (child.stdout.take().map(Pipe::Out), OutputStream::Stdout),
            (child.stderr.take().map(Pipe::Err), OutputStream::Stderr),
        ] {
            if let Some(pipe) = pipe {
                readers.push(tokio::spawn(read_pipe(
                    pipe,
                    stream,
                    task.task.clone(),
                    events.clone(),
                    done_tx.clone(),
                )));
            }
        }
        drop(done_tx);

        let deadline = tokio::time::sleep(Duration::from_secs(task.timeout_secs));
        tokio::pin!(deadline);
        let mut status = None;
        let mut pipes_closed = false;
        let end = loop {
            tokio::select! {
                exited = child.wait(), if status.is_none() => status = Some(exited),
                _ = done_rx.recv(), if !pipes_closed => pipes_closed = true,
                _ = &mut deadline => break TaskEnd::TimedOut,
                _ = stop.cancelled() => break TaskEnd::Stopped,
            }
            if status.is_some() && pipes_closed {
                break TaskEnd::Exited;
            }
        };
        if end != TaskEnd::Exited {
            kill_group(pgid, &mut child, config.kill_grace).await;
            if status.is_none() {
                status = Some(child.wait().await);
            }
            // Output already produced is still delivered; a process that escaped the group
            // and holds a pipe open is not waited for.
            if tokio::time::timeout(Duration::from_secs(2), done_rx.recv())
                .await
                .is_err()
            {
                readers.iter().for_each(|r| r.abort());
            }
        }
        let end = match end {
            TaskEnd::Stopped if config.shutting_down.load(std::sync::atomic::Ordering::Relaxed) => TaskEnd::Error {
                error_code: ErrorCode::ExecutionInterrupted,
                error_info: "the agent was shut down while the command ran".into(),
            },
            end => end,
        };
        let exit_code = status
            .and_then(Result::ok)
            .and_then(|s| s.code().or_else(|| s.signal().map(|sig| 128 + sig)));
        (exit_code, end)
    }

    enum Pipe {
        Out(tokio::process::ChildStdout),
        Err(tokio::process::ChildStderr),
    }

    impl Pipe {
        /// Reads into the spare capacity of `buf`.
        async fn read(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
            match self {
                Pipe::Out(p) => p.read_buf(buf).await,
                Pipe::Err(p) => p.read_buf(buf).await,
            }
        }

        /// Grows the pipe's kernel buffer (64 KiB by default) to a whole chunk, so a fast
        /// writer fills a chunk before waking the agent: fewer wake-ups, frames and acks.
        /// Best effort: the limit (`/proc/sys/fs/pipe-max-size`) may be lower.
        fn enlarge(&self) {
            use nix::fcntl::{FcntlArg, fcntl};
            let _ = match self {
                Pipe::Out(p) => fcntl(p, FcntlArg::F_SETPIPE_SZ(MAX_CHUNK_BYTES as i32)),
                Pipe::Err(p) => fcntl(p, FcntlArg::F_SETPIPE_SZ(MAX_CHUNK_BYTES as i32)),
            };
        }
    }

    async fn read_pipe(mut pipe: Pipe, stream: OutputStream, task: String, events: Events, _done: mpsc::Sender<()>) {
        pipe.enlarge();
        let mut buf = BytesMut::with_capacity(MAX_CHUNK_BYTES);
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // A large read is handed over as it is; a small one is copied out, so a
                    // line of output does not pin a whole read buffer until it is sent.
                    let chunk = if n >= MAX_CHUNK_BYTES / 4 {
                        let chunk = buf.split().freeze();
                        buf.reserve(MAX_CHUNK_BYTES);
                        chunk
                    } else {
                        let chunk = Bytes::copy_from_slice(&buf);
                        buf.clear();
                        chunk
                    };
                    if events
                        .send((task.clone(), TaskEvent::Output(stream, chunk)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Signals process group `pgid` (`None`: only checks that a member is left).
    fn signal_group(pgid: i32, signal: Option<Signal>) -> bool {
        pgid > 0 && killpg(Pid::from_raw(pgid), signal).is_ok()
    }

    /// Kills the whole process group: SIGTERM, up to `grace` for it to go, then SIGKILL, and
    /// a short wait until no member is left.
    async fn kill_group(pgid: i32, child: &mut Child, grace: Duration) {
        signal_group(pgid, Some(Signal::SIGTERM));
        let gone = async {
            let _ = child.wait().await;
            while signal_group(pgid, None) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(grace, gone).await.is_ok() {
            return;
        }
        signal_group(pgid, Some(Signal::SIGKILL));
        let _ = child.wait().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while signal_group(pgid, None) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The script in a private temporary file, removed when dropped.
    struct Script {
        path: PathBuf,
    }

    impl Script {
        fn create(task: &str, extension: &str, content: &str, account: &Account) -> std::io::Result<Script> {
            use std::io::Write as _;
            let mut suffix = [0u8; 8];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
            let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
            let path = std::env::temp_dir().join(format!("fleetrun-{task}-{suffix}.{extension}"));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o700)
                .open(&path)?;
            let script = Script { path };
            file.write_all(content.as_bytes())?;
            if account.switch.is_some() {
                std::os::unix::fs::fchown(&file, Some(account.uid.as_raw()), Some(account.gid.as_raw()))?;
            }
            Ok(script)
        }
    }

    impl Drop for Script {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use super::*;
    use crate::protocol::ErrorCode;

    /// Windows (Bat, PowerShell with Job Objects) is not built yet; see README.md.
    pub async fn run(_: &RunTask, _: &ExecConfig, _: &Events, _: &CancellationToken) -> (Option<i32>, TaskEnd) {
        let info = "this agent build cannot run commands on this operating system yet".to_string();
        (
            None,
            TaskEnd::Error {
                error_code: ErrorCode::ExecutionException,
                error_info: info,
            },
        )
    }
}
