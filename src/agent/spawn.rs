//! Starting a task's shell inside its cgroup from birth: `clone3` with `CLONE_INTO_CGROUP`
//! (Linux 5.7 and later).
//!
//! Why not fork and then join (write `0` to `cgroup.procs`, as `exec` does where this is not
//! available): joining takes the kernel's one global `cgroup_threadgroup_rwsem` for writing,
//! which waits for an RCU grace period (4–18 ms measured on the 2-core CI machine) and holds up
//! every fork and exit on the machine meanwhile. A hundred agents starting a command at once
//! queue behind each other for it. A child born in its cgroup takes that lock for reading only,
//! as any fork does.
//!
//! The child of a raw `clone3` is a copy of one thread of a multi-threaded process that libc
//! was not told about, so until `exec` it makes plain system calls only: no allocation, no
//! libc wrapper that keeps state (`setuid` and friends are made as raw system calls, because
//! glibc's would try to reach the parent's other threads).

use super::account::Switch;
use nix::libc::{self, c_char, c_int};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::unix::AsyncFd;

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` as of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Set once `clone3` with `CLONE_INTO_CGROUP` was refused: an older kernel, or a seccomp
/// filter (container runtimes' default profiles answer `ENOSYS`). Later tasks fork and join.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// What to start.
pub struct Spec<'a> {
    pub program: &'a Path,
    /// The arguments after the program's name.
    pub args: &'a [&'a OsStr],
    pub env: &'a [(String, String)],
    pub dir: &'a Path,
    pub switch: Option<&'a Switch>,
    /// The task cgroup's directory, opened.
    pub cgroup: BorrowedFd<'a>,
}

/// A started child: its pid, a pidfd to wait on, and the read ends of its stdout and stderr.
pub struct Spawned {
    pub child: Child,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Why a child was not started.
pub enum SpawnError {
    /// This kernel (or a seccomp filter) refuses `clone3` into a cgroup: start it another way.
    Unsupported,
    /// Starting it failed (the program could not be executed, a bad directory, …).
    Failed(io::Error),
}

/// Starts `spec` with `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)`. Stdin is `/dev/null`; the
/// child leads a process group of its own.
pub fn spawn(spec: &Spec) -> Result<Spawned, SpawnError> {
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return Err(SpawnError::Unsupported);
    }
    let failed = SpawnError::Failed;
    // Everything the child needs is prepared here, before the clone.
    let cstr = |bytes: &[u8]| CString::new(bytes).map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidInput, e)));
    let program = cstr(spec.program.as_os_str().as_bytes())?;
    let dir = cstr(spec.dir.as_os_str().as_bytes())?;
    let mut args = vec![program.clone()];
    for arg in spec.args {
        args.push(cstr(arg.as_bytes())?);
    }
    let env = spec
        .env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let envp: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).chain([std::ptr::null()]).collect();
    let null = std::fs::File::open("/dev/null").map_err(failed)?;
    let (out_r, out_w) = pipe().map_err(failed)?;
    let (err_r, err_w) = pipe().map_err(failed)?;
    // The child writes its errno here if it cannot exec; end of file means exec happened.
    let (report_r, report_w) = pipe().map_err(failed)?;
    let raw = Raw {
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        dir: dir.as_ptr(),
        stdin: null.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
        switch: spec.switch,
    };

    let mut pidfd: c_int = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: spec.cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // `clone3` has no libc wrapper; the child returns 0 from it, as from fork.
    #[allow(unsafe_code)]
    // SAFETY: without CLONE_VM the child gets a copy of the address space, as with fork; it runs
    // `raw.exec`, which only makes system calls on the data prepared above, and never returns.
    let pid = unsafe {
        let pid = libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        );
        if pid == 0 {
            raw.exec();
        }
        pid
    };
    if pid < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // What kernels without clone3 or CLONE_INTO_CGROUP, and seccomp filters, answer.
            // Others (EACCES, EBUSY on the cgroup) fail this task, as a failed join did.
            Some(libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP) => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
                tracing::info!(error = %e, "clone3 into a cgroup is not available; commands join their cgroup after fork");
                Err(SpawnError::Unsupported)
            }
            _ => Err(failed(e)),
        };
    }
    #[allow(unsafe_code)]
    // SAFETY: the kernel wrote a new pidfd, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((null, out_w, err_w, report_w));
    let report = read_report(&report_r);
    let pid = pid as libc::pid_t;
    let mut child = match Child::new(pid, pidfd) {
        Ok(child) => child,
        Err(e) => {
            // Untracked, it would run on unseen: end it and what it started (its process group).
            #[allow(unsafe_code)]
            // SAFETY: plain system calls on our own child.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(failed(e));
        }
    };
    match report {
        None => {}
        Some(errno) => {
            // The child has exited (127); reap it before answering.
            let _ = child.reap(true);
            return Err(failed(io::Error::from_raw_os_error(errno)));
        }
    }
    Ok(Spawned {
        child,
        stdout: out_r,
        stderr: err_r,
    })
}

/// A child started by [`spawn`]. Dropped before it was waited for, it is reaped in the
/// background once it exits.
pub struct Child {
    pid: libc::pid_t,
    /// Readable once the child has exited; `None` only while being dropped.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
}

impl Child {
    fn new(pid: libc::pid_t, pidfd: OwnedFd) -> io::Result<Child> {
        #[allow(unsafe_code)]
        // SAFETY: the AsyncFd owns the pidfd, which nothing else closes.
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)? };
        Ok(Child {
            pid,
            pidfd: Some(pidfd),
            status: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the child to exit (again: the same status). Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        if let Some(pidfd) = &self.pidfd {
            pidfd.readable().await?.retain_ready();
        }
        self.reap(true)
    }

    /// `waitpid`; `block` only once the pidfd said the child exited (it returns at once).
    fn reap(&mut self, block: bool) -> io::Result<ExitStatus> {
        let mut raw: c_int = 0;
        loop {
            #[allow(unsafe_code)]
            // SAFETY: a plain system call on our own child.
            let got = unsafe { libc::waitpid(self.pid, &mut raw, if block { 0 } else { libc::WNOHANG }) };
            match got {
                -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
                -1 => return Err(io::Error::last_os_error()),
                0 => return Err(io::Error::new(io::ErrorKind::WouldBlock, "still running")),
                _ => {
                    let status = ExitStatus::from_raw(raw);
                    self.status = Some(status);
                    return Ok(status);
                }
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_some() || self.reap(false).is_ok() {
            return;
        }
        let (Some(pidfd), Ok(runtime)) = (self.pidfd.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        // Not a `Child` again: a runtime shutting down drops new tasks at once, and a `Child`
        // dropped there would spawn another, without end. Dropped unfinished, this leaves the
        // zombie to the agent's exit.
        let pid = self.pid;
        runtime.spawn(async move {
            if pidfd.readable().await.is_ok() {
                #[allow(unsafe_code)]
                // SAFETY: a plain system call on our own child, which has exited.
                unsafe {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
        });
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// The child's errno if it could not exec, `None` once exec closed the report pipe.
fn read_report(report: &OwnedFd) -> Option<i32> {
    let mut bytes = [0u8; 4];
    let mut filled = 0;
    while filled < bytes.len() {
        match nix::unistd::read(report, &mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    (filled == bytes.len()).then(|| i32::from_ne_bytes(bytes))
}

/// The system calls that set ids with 32-bit ids: on 32-bit x86 and ARM the plain ones take
/// 16-bit ids (a uid of 65536 would become root).
mod ids {
    #[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
    pub use nix::libc::{SYS_setgroups as SETGROUPS, SYS_setresgid as SETRESGID, SYS_setresuid as SETRESUID};
    #[cfg(any(target_arch = "x86", target_arch = "arm"))]
    pub use nix::libc::{SYS_setgroups32 as SETGROUPS, SYS_setresgid32 as SETRESGID, SYS_setresuid32 as SETRESUID};
}

/// The calling thread's errno (without allocating: the child may not).
fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// What the child uses, as raw pointers and descriptors made before the clone.
struct Raw<'a> {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    dir: *const c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
    switch: Option<&'a Switch>,
}

impl Raw<'_> {
    /// In the child: set up and exec, or report errno and exit 127.
    #[allow(unsafe_code)]
    unsafe fn exec(&self) -> ! {
        // SAFETY: system calls only, on memory prepared before the clone and alive in this copy.
        unsafe {
            let failed = match self.prepare() {
                Ok(()) => {
                    libc::execve(self.program, self.argv, self.envp);
                    errno()
                }
                Err(failed) => failed,
            };
            let bytes = failed.to_ne_bytes();
            libc::write(self.report, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127);
        }
    }

    #[allow(unsafe_code)]
    unsafe fn prepare(&self) -> Result<(), i32> {
        let check = |ret: libc::c_long| if ret < 0 { Err(errno()) } else { Ok(()) };
        // SAFETY: system calls only, on memory prepared before the clone and alive in this copy.
        unsafe {
            // The agent's signal mask and its ignored SIGPIPE are not the command's.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) as _)?;
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            for (from, to) in [(self.stdin, 0), (self.stdout, 1), (self.stderr, 2)] {
                if from == to {
                    check(libc::fcntl(to, libc::F_SETFD, 0) as _)?;
                } else {
                    check(libc::dup2(from, to) as _)?;
                }
            }
            check(libc::chdir(self.dir) as _)?;
            check(libc::setpgid(0, 0) as _)?;
            if let Some(switch) = self.switch {
                let (uid, gid, groups) = switch.ids();
                check(libc::syscall(ids::SETGROUPS, groups.len(), groups.as_ptr()))?;
                check(libc::syscall(ids::SETRESGID, gid, gid, gid))?;
                check(libc::syscall(ids::SETRESUID, uid, uid, uid))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::cgroup::Cgroups;
    use std::io::Read as _;

    fn read_all(fd: OwnedFd) -> String {
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text).unwrap();
        text
    }

    #[tokio::test]
    async fn a_child_is_born_in_its_cgroup_with_its_environment_directory_and_process_group() {
        // Root with cgroup v2, as on CI; elsewhere only the error path below is tested.
        let cgroups = match Cgroups::setup("i-spawntest") {
            Ok(cgroups) => cgroups,
            Err(e) => return eprintln!("cgroup v2 is not available here ({e}); clone3 into a cgroup is not tested"),
        };
        let cgroup = cgroups.create("t-born").unwrap();
        let script = "echo $GREETING; pwd; grep '^0::' /proc/self/cgroup; cut -d' ' -f5 /proc/$$/stat; echo $$; echo oops >&2; exit 3";
        let args = [OsStr::new("-c"), OsStr::new(script)];
        let env = [("GREETING".to_string(), "hello".to_string())];
        let spec = Spec {
            program: Path::new("/bin/sh"),
            args: &args,
            env: &env,
            dir: Path::new("/tmp"),
            switch: None,
            cgroup: cgroup.dir(),
        };
        let mut spawned = match spawn(&spec) {
            Ok(spawned) => spawned,
            Err(SpawnError::Unsupported) => {
                // A seccomp filter or an old kernel: the agent joins after fork there, which
                // tests/it/faults_exec.rs covers.
                return eprintln!("clone3 into a cgroup is refused here; not tested");
            }
            Err(SpawnError::Failed(e)) => panic!("{e}"),
        };
        let status = spawned.child.wait().await.unwrap();
        let pid = spawned.child.id().to_string();
        let (stdout, stderr) = (read_all(spawned.stdout), read_all(spawned.stderr));
        let lines: Vec<&str> = stdout.lines().collect();

        assert_eq!(status.code(), Some(3));
        assert_eq!(&lines[..2], ["hello", "/tmp"], "{stdout}");
        assert!(
            lines[2].ends_with(&format!(
                "/fleetrun/{}",
                cgroup.path().file_name().unwrap().to_string_lossy()
            )),
            "born in its task's cgroup: {stdout}"
        );
        assert_eq!(lines[3], pid, "it leads its own process group");
        assert_eq!(lines[4], pid);
        assert_eq!(stderr, "oops\n");
        cgroups.release(cgroup);
    }

    #[tokio::test]
    async fn a_program_that_cannot_be_executed_is_an_error_not_a_child() {
        let cgroups = match Cgroups::setup("i-spawntest2") {
            Ok(cgroups) => cgroups,
            Err(e) => return eprintln!("cgroup v2 is not available here ({e}); clone3 into a cgroup is not tested"),
        };
        let cgroup = cgroups.create("t-missing").unwrap();
        let spec = Spec {
            program: Path::new("/nonexistent/shell"),
            args: &[],
            env: &[],
            dir: Path::new("/"),
            switch: None,
            cgroup: cgroup.dir(),
        };
        match spawn(&spec) {
            Err(SpawnError::Failed(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}"),
            Err(SpawnError::Unsupported) => eprintln!("clone3 into a cgroup is refused here; not tested"),
            Ok(_) => panic!("a child for a program that does not exist"),
        }
        assert!(!cgroup.is_populated(), "the failed child is reaped");
        cgroups.release(cgroup);
    }
}
