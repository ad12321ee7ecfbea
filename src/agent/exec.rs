//! Running one task: the script in a private file, a child process in its own process group
//! (and, where cgroup v2 is available, its own cgroup) with stdin at end-of-file, stdout and
//! stderr read concurrently, the timeout and stop requests enforced on everything the task
//! started (SIGTERM, a grace period, then SIGKILL).
//!
//! A task ends when its shell has exited and its output is closed. A background process (`&`)
//! that keeps the output open gets `output_grace` after the shell's exit; then the task ends
//! with the shell's exit code and the background process keeps running, what it writes later
//! no longer captured. Timeout and Stop kill only while the shell still runs.

#[cfg(unix)]
use super::cgroup::Cgroups;
#[cfg(unix)]
use super::script::ScriptDir;
use crate::protocol::agent::{MAX_CHUNK_BYTES, RunTask};
use crate::protocol::{OutputStream, TaskEnd};
use bytes::Bytes;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a running task tells the agent's session.
#[derive(Debug)]
pub enum TaskEvent {
    /// The process started as the leader of process group `pgid`, in `cgroup` where there is one.
    Started {
        pgid: i32,
        cgroup: Option<PathBuf>,
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
    /// How long a task's output may stay open after its shell exited (a background process
    /// holds it) before the task ends without waiting for it.
    pub output_grace: Duration,
    /// `pwsh`, when installed.
    pub pwsh: Option<PathBuf>,
    /// Task cgroups, when cgroup v2 is available to the agent; else a task is contained by its
    /// process group alone.
    #[cfg(unix)]
    pub cgroups: Option<Cgroups>,
    /// Where task scripts are written.
    #[cfg(unix)]
    pub scripts: ScriptDir,
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

/// How waiting for a task's shell ended.
#[derive(Debug, PartialEq)]
enum Waited<S> {
    /// The shell exited (before any timeout or stop). `is_detached`: its output was still
    /// open when the output grace ran out, held by a background process.
    Exited { status: S, is_detached: bool },
    /// The timeout or a stop came while the shell ran: `TimedOut` or `Stopped`.
    Cut(TaskEnd),
}

/// Waits for the shell to exit (`exited`) and its output to close (`closed`), within
/// `timeout` and until `stop`. Once the shell has exited, neither the timeout nor a stop cuts
/// the task: the output gets `output_grace` to close, and the task ends either way.
#[cfg_attr(not(unix), allow(dead_code))]
async fn wait_for<S>(
    exited: impl Future<Output = S>,
    closed: impl Future<Output = ()>,
    timeout: Duration,
    output_grace: Duration,
    stop: &CancellationToken,
) -> Waited<S> {
    tokio::pin!(exited, closed);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut is_closed = false;
    let status = loop {
        tokio::select! {
            // A shell that has exited is not cut by a deadline or stop that comes at the same moment.
            biased;
            status = &mut exited => break status,
            () = &mut closed, if !is_closed => is_closed = true,
            () = &mut deadline => return Waited::Cut(TaskEnd::TimedOut),
            () = stop.cancelled() => return Waited::Cut(TaskEnd::Stopped),
        }
    };
    let is_detached = !is_closed && tokio::time::timeout(output_grace, closed).await.is_err();
    Waited::Exited { status, is_detached }
}

#[cfg(unix)]
mod imp {
    use super::*;
    use crate::agent::account::{self, Account};
    use crate::agent::cgroup::TaskCgroup;
    use crate::protocol::{CommandType, ErrorCode};
    use bytes::BytesMut;
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    use std::ffi::OsStr;
    use std::os::fd::{AsFd as _, OwnedFd};
    use std::os::unix::process::ExitStatusExt as _;
    use std::path::Path;
    use std::process::Stdio;
    use tokio::io::AsyncReadExt as _;
    use tokio::process::Command;

    /// How long killed processes get to be gone.
    const KILL_WAIT: Duration = Duration::from_secs(5);
    /// How long a killed task's pipes get to reach end of file.
    const PIPE_WAIT: Duration = Duration::from_secs(2);

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
        let script = match config.scripts.create(&task.task, extension, &task.content, &account) {
            Ok(script) => script,
            Err(e) => {
                return error(
                    ErrorCode::ExecutionException,
                    format!("cannot write the script file: {e}"),
                );
            }
        };
        let mut cgroup = config.cgroups.as_ref().and_then(|cgroups| match cgroups.create(&task.task) {
            Ok(cgroup) => Some(cgroup),
            Err(e) => {
                tracing::warn!(task = %task.task, "cannot create the task's cgroup, so its process group alone contains it: {e}");
                None
            }
        });

        let launch = Launch {
            program: &program,
            args: args.iter().map(OsStr::new).chain([script.path().as_os_str()]).collect(),
            env: account.environment(&task.task),
            dir: &dir,
            account: &account,
        };
        let spawned = match born_in_cgroup(&launch, cgroup.as_mut()) {
            Some(spawned) => spawned,
            None => fork_and_join(&launch, cgroup.as_mut()),
        };
        let Proc {
            mut child,
            stdout,
            stderr,
        } = match spawned {
            Ok(proc) => proc,
            Err(e) => {
                release(config, cgroup);
                return error(
                    ErrorCode::ExecutionException,
                    format!("cannot start {}: {e}", program.display()),
                );
            }
        };
        let pgid = child.id() as i32;
        let started = TaskEvent::Started {
            pgid,
            cgroup: cgroup.as_ref().map(|c| c.path().to_path_buf()),
        };
        let _ = events.send((task.task.clone(), started)).await;

        // Readers hold `done_tx` clones: `done_rx` yields None once both pipes are closed.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let detach = CancellationToken::new();
        let mut readers = Vec::new();
        for (pipe, stream) in [(stdout, OutputStream::Stdout), (stderr, OutputStream::Stderr)] {
            readers.push(tokio::spawn(capture(
                pipe,
                stream,
                task.task.clone(),
                events.clone(),
                detach.clone(),
                done_tx.clone(),
            )));
        }
        drop(done_tx);

        let waited = wait_for(
            child.wait(),
            async {
                done_rx.recv().await;
            },
            Duration::from_secs(task.timeout_secs),
            config.output_grace,
            stop,
        )
        .await;
        let (status, end, is_detached) = match waited {
            Waited::Exited { status, is_detached } => {
                if is_detached {
                    tracing::info!(task = %task.task, "the shell exited and left a background process running; its later output is not captured");
                }
                (status, TaskEnd::Exited, is_detached)
            }
            Waited::Cut(end) => {
                kill_tree(pgid, cgroup.as_ref(), &mut child, config.kill_grace).await;
                let status = child.wait().await;
                // Output already produced is still delivered; a process that escaped the kill
                // (one that left the process group, where there is no cgroup) and holds a pipe
                // open is not waited for.
                let is_detached = tokio::time::timeout(PIPE_WAIT, done_rx.recv()).await.is_err();
                (status, end, is_detached)
            }
        };
        if is_detached {
            detach.cancel();
        }
        // Every reader is done before the task reports its end, so no output follows it.
        for reader in readers {
            let pipe = reader.await.ok().flatten();
            if let Some(pipe) = pipe.filter(|_| end == TaskEnd::Exited) {
                tokio::spawn(discard(pipe));
            }
        }
        release(config, cgroup);

        let end = match end {
            TaskEnd::Stopped if config.shutting_down.load(std::sync::atomic::Ordering::Relaxed) => TaskEnd::Error {
                error_code: ErrorCode::ExecutionInterrupted,
                error_info: "the agent was shut down while the command ran".into(),
            },
            end => end,
        };
        let exit_code = status
            .ok()
            .and_then(|s| s.code().or_else(|| s.signal().map(|sig| 128 + sig)));
        (exit_code, end)
    }

    /// Removes the task's cgroup, or keeps it while a background process of the task lives.
    fn release(config: &ExecConfig, cgroup: Option<TaskCgroup>) {
        if let (Some(cgroups), Some(cgroup)) = (&config.cgroups, cgroup) {
            cgroups.release(cgroup);
        }
    }

    /// The read end of a task's stdout or stderr.
    struct Pipe(tokio::net::unix::pipe::Receiver);

    impl Pipe {
        fn new(fd: OwnedFd) -> std::io::Result<Pipe> {
            Ok(Pipe(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?))
        }

        /// Reads into the spare capacity of `buf`.
        async fn read(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
            self.0.read_buf(buf).await
        }

        /// Reads what the pipe holds right now, without waiting: one read(2) on the
        /// (non-blocking) descriptor, so nothing already written is missed for want of a
        /// readiness event. `Ok(None)` when the pipe is empty.
        fn read_now(&self, buf: &mut BytesMut) -> std::io::Result<Option<usize>> {
            let start = buf.len();
            buf.resize(start + MAX_CHUNK_BYTES, 0);
            let read = nix::unistd::read(self.0.as_fd(), &mut buf[start..]);
            buf.truncate(start + read.unwrap_or(0));
            match read {
                Ok(n) => Ok(Some(n)),
                Err(nix::errno::Errno::EAGAIN) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }

        /// Grows the pipe's kernel buffer (64 KiB by default) to a whole chunk, so a fast
        /// writer fills a chunk before waking the agent: fewer wake-ups, frames and acks.
        /// Best effort: the limit (`/proc/sys/fs/pipe-max-size`) may be lower.
        fn enlarge(&self) {
            use nix::fcntl::{FcntlArg, fcntl};
            let _ = fcntl(&self.0, FcntlArg::F_SETPIPE_SZ(MAX_CHUNK_BYTES as i32));
        }
    }

    /// A started shell and the read ends of its output.
    struct Proc {
        child: Child,
        stdout: Pipe,
        stderr: Pipe,
    }

    /// The shell's process, however it was started.
    enum Child {
        Forked(tokio::process::Child),
        #[cfg(target_os = "linux")]
        Born(crate::agent::spawn::Child),
    }

    impl Child {
        fn id(&self) -> u32 {
            match self {
                Child::Forked(child) => child.id().unwrap_or_default(),
                #[cfg(target_os = "linux")]
                Child::Born(child) => child.id(),
            }
        }

        async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
            match self {
                Child::Forked(child) => child.wait().await,
                #[cfg(target_os = "linux")]
                Child::Born(child) => child.wait().await,
            }
        }
    }

    /// What to start: the shell, its arguments (the script last), environment, directory and
    /// account.
    struct Launch<'a> {
        program: &'a Path,
        args: Vec<&'a OsStr>,
        env: Vec<(String, String)>,
        dir: &'a Path,
        account: &'a Account,
    }

    /// Starts the shell inside its cgroup from birth (`spawn`), where the kernel allows it;
    /// `None` to start it the other way.
    #[cfg(target_os = "linux")]
    fn born_in_cgroup(launch: &Launch, cgroup: Option<&mut TaskCgroup>) -> Option<std::io::Result<Proc>> {
        use crate::agent::spawn::{self, SpawnError};
        let cgroup = cgroup?;
        let spec = spawn::Spec {
            program: launch.program,
            args: &launch.args,
            env: &launch.env,
            dir: launch.dir,
            switch: launch.account.switch.as_ref(),
            cgroup: cgroup.dir(),
        };
        let spawned = spawn::spawn(&spec);
        match spawned {
            Ok(spawned) => {
                // Born inside, it never joins: the `cgroup.procs` kept open for that can go.
                drop(cgroup.take_joiner());
                let pid = spawned.child.id() as i32;
                let pipes = Pipe::new(spawned.stdout).and_then(|out| Ok((out, Pipe::new(spawned.stderr)?)));
                Some(
                    pipes
                        .map(|(stdout, stderr)| Proc {
                            child: Child::Born(spawned.child),
                            stdout,
                            stderr,
                        })
                        .inspect_err(|_| {
                            // Unwatched, it must not run on.
                            signal_group(pid, Some(Signal::SIGKILL));
                        }),
                )
            }
            Err(SpawnError::Failed(e)) => Some(Err(e)),
            Err(SpawnError::Unsupported) => None,
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn born_in_cgroup(_: &Launch, _: Option<&mut TaskCgroup>) -> Option<std::io::Result<Proc>> {
        None
    }

    /// Starts the shell with fork and exec; with a cgroup, the child joins it before exec.
    fn fork_and_join(launch: &Launch, cgroup: Option<&mut TaskCgroup>) -> std::io::Result<Proc> {
        let mut command = Command::new(launch.program);
        command
            .args(&launch.args)
            .current_dir(launch.dir)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // Joining the cgroup comes first, while the child still has the agent's privileges.
        if let Some(join) = cgroup.and_then(TaskCgroup::take_joiner) {
            // `pre_exec` is unsafe by contract: the closure runs in the forked child.
            #[allow(unsafe_code)]
            // SAFETY: the closure runs in the child before exec and makes one write(2) on a
            // descriptor opened before the fork: async-signal-safe, no allocation.
            unsafe {
                command.pre_exec(join);
            }
        }
        if let Some(switch) = launch.account.switch.clone() {
            // `pre_exec` is unsafe by contract: the closure runs in the forked child.
            #[allow(unsafe_code)]
            // SAFETY: the closure runs in the child before exec and only makes async-signal-safe
            // system calls (setgroups, setgid, setuid) on data prepared before the fork.
            unsafe {
                command.pre_exec(move || switch.apply());
            }
        }
        let mut child = command.spawn()?;
        let pipe = |fd: Option<OwnedFd>| Pipe::new(fd.ok_or_else(|| std::io::Error::other("no pipe"))?);
        let stdout = pipe(child.stdout.take().map(|p| p.into_owned_fd()).transpose()?)?;
        let stderr = pipe(child.stderr.take().map(|p| p.into_owned_fd()).transpose()?)?;
        Ok(Proc {
            child: Child::Forked(child),
            stdout,
            stderr,
        })
    }

    /// Reads a pipe into `Output` events until end of file (then `None`), or until `detach`:
    /// then what the pipe already holds is still read, and the pipe is handed back open.
    async fn capture(
        mut pipe: Pipe,
        stream: OutputStream,
        task: String,
        events: Events,
        detach: CancellationToken,
        _done: mpsc::Sender<()>,
    ) -> Option<Pipe> {
        pipe.enlarge();
        let mut buf = BytesMut::with_capacity(MAX_CHUNK_BYTES);
        loop {
            let read = tokio::select! {
                // Detach first: a background process that writes without pause keeps the pipe
                // always readable.
                biased;
                () = detach.cancelled() => break,
                read = pipe.read(&mut buf) => read,
            };
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {
                    if !emit(&mut buf, stream, &task, &events).await {
                        return None;
                    }
                }
            }
        }
        // What the shell wrote before it exited is in the pipe already; a background process
        // still writing is read for at most one more pipe's worth.
        for _ in 0..2 {
            match pipe.read_now(&mut buf) {
                Ok(Some(0)) | Err(_) => return None,
                Ok(None) => break,
                Ok(Some(_)) => {
                    if !emit(&mut buf, stream, &task, &events).await {
                        return None;
                    }
                }
            }
        }
        Some(pipe)
    }

    /// Sends what `buf` holds as one `Output` event; false when the session is gone.
    async fn emit(buf: &mut BytesMut, stream: OutputStream, task: &str, events: &Events) -> bool {
        // A large read is handed over as it is; a small one is copied out, so a line of output
        // does not pin a whole read buffer until it is sent.
        let chunk = if buf.len() >= MAX_CHUNK_BYTES / 4 {
            let chunk = buf.split().freeze();
            buf.reserve(MAX_CHUNK_BYTES);
            chunk
        } else {
            let chunk = Bytes::copy_from_slice(buf);
            buf.clear();
            chunk
        };
        events
            .send((task.to_string(), TaskEvent::Output(stream, chunk)))
            .await
            .is_ok()
    }

    /// Reads and drops what a background process writes to a task's pipe after the task
    /// ended, until it closes it: with no reader left it would die of SIGPIPE at its next write.
    async fn discard(mut pipe: Pipe) {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        while let Ok(1..) = pipe.read(&mut buf).await {
            buf.clear();
        }
    }

    /// Signals process group `pgid` (`None`: only checks that a member is left).
    fn signal_group(pgid: i32, signal: Option<Signal>) -> bool {
        pgid > 0 && killpg(Pid::from_raw(pgid), signal).is_ok()
    }

    /// Kills everything the task started: SIGTERM to its process group and to every process of
    /// its cgroup, up to `grace` for them to go, then SIGKILL to the group and the whole cgroup,
    /// and a short wait until nothing is left. Without a cgroup, a process that left the group
    /// (`setsid`) is out of reach.
    async fn kill_tree(pgid: i32, cgroup: Option<&TaskCgroup>, child: &mut Child, grace: Duration) {
        let is_left = || signal_group(pgid, None) || cgroup.is_some_and(TaskCgroup::is_populated);
        signal_group(pgid, Some(Signal::SIGTERM));
        if let Some(cgroup) = cgroup {
            cgroup.signal_all(Signal::SIGTERM);
        }
        let gone = async {
            let _ = child.wait().await;
            while is_left() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(grace, gone).await.is_ok() {
            return;
        }
        signal_group(pgid, Some(Signal::SIGKILL));
        if let Some(cgroup) = cgroup {
            cgroup.kill();
        }
        let _ = child.wait().await;
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        while is_left() && tokio::time::Instant::now() < deadline {
            // Without `cgroup.kill`, processes forked since the last pass need their own signal.
            if let Some(cgroup) = cgroup {
                cgroup.kill();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{pending, ready};

    const LONG: Duration = Duration::from_secs(3600);

    async fn after(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await
    }

    #[tokio::test]
    async fn a_shell_that_exits_with_its_output_closed_ends_the_task() {
        let stop = CancellationToken::new();

        let waited = wait_for(ready(0), ready(()), LONG, LONG, &stop).await;

        assert_eq!(
            waited,
            Waited::Exited {
                status: 0,
                is_detached: false
            }
        );
    }

    #[tokio::test]
    async fn output_held_open_past_the_grace_detaches_and_the_task_still_exits() {
        let stop = CancellationToken::new();

        let waited = wait_for(ready(3), pending(), LONG, Duration::from_millis(20), &stop).await;

        assert_eq!(
            waited,
            Waited::Exited {
                status: 3,
                is_detached: true
            }
        );
    }

    #[tokio::test]
    async fn output_that_closes_within_the_grace_is_waited_for_even_past_the_timeout() {
        let stop = CancellationToken::new();

        let waited = wait_for(ready(0), after(30), Duration::from_millis(1), LONG, &stop).await;

        assert_eq!(
            waited,
            Waited::Exited {
                status: 0,
                is_detached: false
            }
        );
    }

    #[tokio::test]
    async fn a_stop_after_the_shell_exited_does_not_cut_the_task() {
        let stop = CancellationToken::new();
        stop.cancel();

        let waited = wait_for(ready(0), after(10), LONG, LONG, &stop).await;

        assert_eq!(
            waited,
            Waited::Exited {
                status: 0,
                is_detached: false
            }
        );
    }

    #[tokio::test]
    async fn the_timeout_or_a_stop_cuts_a_shell_that_still_runs() {
        let (running, stopped) = (CancellationToken::new(), CancellationToken::new());
        stopped.cancel();

        let timed_out = wait_for(pending::<i32>(), ready(()), Duration::from_millis(10), LONG, &running).await;
        let cut = wait_for(pending::<i32>(), pending(), LONG, LONG, &stopped).await;

        assert_eq!(timed_out, Waited::Cut(TaskEnd::TimedOut));
        assert_eq!(cut, Waited::Cut(TaskEnd::Stopped));
    }
}
