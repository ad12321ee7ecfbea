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
    use crate::protocol::{CommandType, ErrorCode};
    use std::ffi::{CStr, CString};
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
            Err(end) => return end,
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
            // SAFETY: the closure runs in the forked child before exec and only calls
            // async-signal-safe functions (initgroups, setgid, setuid) on prepared data.
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
        async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self {
                Pipe::Out(p) => p.read(buf).await,
                Pipe::Err(p) => p.read(buf).await,
            }
        }
    }

    async fn read_pipe(mut pipe: Pipe, stream: OutputStream, task: String, events: Events, _done: mpsc::Sender<()>) {
        let mut buf = vec![0u8; MAX_CHUNK_BYTES];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
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

    fn signal_group(pgid: i32, signal: i32) -> bool {
        // SAFETY: kill(2) with a negative pid signals a process group; it has no memory effects.
        pgid > 0 && unsafe { libc::kill(-pgid, signal) } == 0
    }

    /// Kills the whole process group: SIGTERM, up to `grace` for it to go, then SIGKILL, and
    /// a short wait until no member is left.
    async fn kill_group(pgid: i32, child: &mut Child, grace: Duration) {
        signal_group(pgid, libc::SIGTERM);
        let gone = async {
            let _ = child.wait().await;
            while signal_group(pgid, 0) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(grace, gone).await.is_ok() {
            return;
        }
        signal_group(pgid, libc::SIGKILL);
        let _ = child.wait().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while signal_group(pgid, 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The account a task runs as.
    struct Account {
        name: String,
        home: Option<PathBuf>,
        shell: String,
        /// Set when the agent (as root) must switch to another user.
        switch: Option<Switch>,
        uid: u32,
        gid: u32,
    }

    #[derive(Clone)]
    struct Switch {
        uid: libc::uid_t,
        gid: libc::gid_t,
        /// The user's groups, looked up before forking: the lookup (NSS, files) is not safe
        /// between fork and exec in a multithreaded process.
        groups: Vec<libc::gid_t>,
    }

    impl Switch {
        fn new(name: &str, uid: u32, gid: u32) -> Switch {
            let mut groups = vec![0 as libc::gid_t; 256];
            let mut count = groups.len() as libc::c_int;
            let name = CString::new(name).unwrap_or_default();
            // SAFETY: `groups` has room for `count` entries; getgrouplist writes at most that.
            let ok = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) } >= 0;
            groups.truncate(if ok { count.max(0) as usize } else { 0 });
            if groups.is_empty() {
                groups.push(gid);
            }
            Switch { uid, gid, groups }
        }

        /// Runs in the child between fork and exec: only async-signal-safe calls.
        fn apply(&self) -> std::io::Result<()> {
            // SAFETY: plain system calls on values owned by `self`.
            let ok = unsafe {
                libc::setgroups(self.groups.len() as _, self.groups.as_ptr()) == 0
                    && libc::setgid(self.gid) == 0
                    && libc::setuid(self.uid) == 0
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
    }

    struct Passwd {
        name: String,
        uid: u32,
        gid: u32,
        home: String,
        shell: String,
    }

    fn lookup(user: Option<&str>) -> Option<Passwd> {
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: zeroed passwd is a valid out-parameter for getpw*_r.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = match user {
            Some(name) => {
                let name = CString::new(name).ok()?;
                // SAFETY: all pointers are valid for the call; buf outlives the result.
                unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) }
            }
            // SAFETY: as above.
            None => unsafe { libc::getpwuid_r(libc::geteuid(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) },
        };
        if rc != 0 || found.is_null() {
            return None;
        }
        // SAFETY: on success the string fields point into `buf`, which is alive here.
        let text = |p: *const libc::c_char| {
            if p.is_null() {
                String::new()
            } else {
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        };
        Some(Passwd {
            name: text(pwd.pw_name),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home: text(pwd.pw_dir),
            shell: text(pwd.pw_shell),
        })
    }

    impl Account {
        fn resolve(username: Option<&str>) -> Result<Account, (Option<i32>, TaskEnd)> {
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            let me = lookup(None);
            let Some(name) = username else {
                let me = me.unwrap_or(Passwd {
                    name: String::new(),
                    uid: euid,
                    gid: 0,
                    home: "/".into(),
                    shell: "/bin/sh".into(),
                });
                return Ok(Account::from_passwd(me, None));
            };
            let Some(user) = lookup(Some(name)) else {
                return Err(error(
                    ErrorCode::AccountNotExists,
                    format!("the user {name} does not exist on this instance"),
                ));
            };
            if user.uid == euid {
                return Ok(Account::from_passwd(user, None));
            }
            if euid != 0 {
                return Err(error(
                    ErrorCode::ExecutionException,
                    format!(
                        "the agent does not run as root, so it cannot run commands as {name}: run the agent as root or leave Username empty"
                    ),
                ));
            }
            let switch = Switch::new(&user.name, user.uid, user.gid);
            Ok(Account::from_passwd(user, Some(switch)))
        }

        fn from_passwd(p: Passwd, switch: Option<Switch>) -> Account {
            let home = (!p.home.is_empty()).then(|| PathBuf::from(&p.home));
            let shell = if p.shell.is_empty() { "/bin/sh".into() } else { p.shell };
            Account {
                name: p.name,
                home,
                shell,
                switch,
                uid: p.uid,
                gid: p.gid,
            }
        }

        /// The explicit environment of a task: nothing of the agent's leaks in but the locale.
        fn environment(&self, task: &str) -> Vec<(String, String)> {
            let lang = std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into());
            let home = self
                .home
                .as_ref()
                .map(|h| h.display().to_string())
                .unwrap_or_else(|| "/".into());
            vec![
                (
                    "PATH".into(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ),
                ("HOME".into(), home),
                ("USER".into(), self.name.clone()),
                ("LOGNAME".into(), self.name.clone()),
                ("SHELL".into(), self.shell.clone()),
                ("LANG".into(), lang),
                ("FLEETRUN_INVOKE_ID".into(), task.into()),
            ]
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
                std::os::unix::fs::fchown(&file, Some(account.uid), Some(account.gid))?;
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
