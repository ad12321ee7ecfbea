//! Whole-tree containment with cgroup v2: each task runs in a cgroup of its own, so Stop and
//! Timeout reach every process it started, even one that left its process group with `setsid`.
//! Where cgroup v2 is not available to the agent (another OS, no cgroup2 mount, not root and no
//! delegated subtree), tasks are contained by their process group alone (see `exec`).
//!
//! Task cgroups live in `<the agent's own cgroup>/fleetrun/`, named `<instance>.<task>`. The
//! layout is flat, so a killed agent leaves no directory of its own behind, and the instance id
//! keeps apart the agents that share a host. The child joins its cgroup before `exec` (it
//! writes `0` to a `cgroup.procs` opened before the fork), so nothing it starts is ever outside.
//! The agent's own cgroup may hold processes (the agent itself): that is allowed because the
//! agent enables no controller, and it is how systemd's `Delegate=yes` hands a service its
//! subtree.
//!
//! A task that ended normally but left a background process keeps its cgroup while that process
//! lives; empty task cgroups are removed at each task end and at agent start.
//!
//! It uses std, nix and tracing only, no other module of the agent.

use nix::sys::signal::{Signal, kill};
use nix::unistd::{AccessFlags, Pid, access};
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The directory, in the agent's own cgroup, that holds the task cgroups.
const PARENT: &str = "fleetrun";
/// How often emptiness is checked while waiting for killed processes to go.
const POLL: Duration = Duration::from_millis(20);

/// The task cgroups of this agent.
#[derive(Debug)]
pub struct Cgroups {
    /// `<the agent's own cgroup>/fleetrun`, on the cgroup v2 mount.
    parent: PathBuf,
    /// `<instance id>.`: how this agent's task cgroup names begin.
    prefix: String,
    /// Whether the kernel has `cgroup.kill` (Linux 5.14 and later); without it every process
    /// is sent SIGKILL one by one until none is left.
    has_kill: bool,
    /// Cgroups of tasks that ended but left a background process; removed once empty.
    lingering: Mutex<Vec<PathBuf>>,
}

impl Cgroups {
    /// Finds the agent's own cgroup v2, checks that the agent may create cgroups beneath it and
    /// move processes into them, and removes the empty ones a previous run left. The error says
    /// why cgroups cannot be used.
    pub fn setup(instance_id: &str) -> Result<Cgroups, String> {
        let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
        let (mount, mount_root) = cgroup2_mount(&read("/proc/self/mountinfo")?)
            .ok_or_else(|| "no cgroup v2 hierarchy is mounted".to_string())?;
        let proc_cgroup = read("/proc/self/cgroup")?;
        let own = own_cgroup(&proc_cgroup).ok_or_else(|| "the agent is in no cgroup v2 hierarchy".to_string())?;
        let dir = cgroup_dir(&mount, &mount_root, own).ok_or_else(|| {
            format!(
                "the agent's cgroup {own} is not visible under the cgroup v2 mount {}",
                mount.display()
            )
        })?;
        let parent = dir.join(PARENT);
        create_dir(&parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let has_kill = probe(&dir, &parent, instance_id)?;
        let cgroups = Cgroups {
            parent,
            prefix: format!("{instance_id}."),
            has_kill,
            lingering: Mutex::new(Vec::new()),
        };
        cgroups.remove_empty();
        Ok(cgroups)
    }

    /// Where the task cgroups are.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// Whether whole cgroups are killed with `cgroup.kill` (else process by process).
    pub fn has_kill(&self) -> bool {
        self.has_kill
    }

    /// Creates the cgroup of a task. A name still taken (the same task ran before and left a
    /// background process) gets a number.
    pub fn create(&self, task: &str) -> io::Result<TaskCgroup> {
        std::fs::create_dir_all(&self.parent)?;
        let base = format!("{}{task}", self.prefix);
        for n in 1..=64 {
            let path = if n == 1 {
                self.parent.join(&base)
            } else {
                self.parent.join(format!("{base}.{n}"))
            };
            match std::fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .open(path.join("cgroup.procs"))
                .and_then(|procs| Ok((procs, File::open(&path)?)));
            return match opened {
                Ok((procs, dir)) => Ok(TaskCgroup {
                    path,
                    procs: Some(procs),
                    dir,
                    has_kill: self.has_kill,
                }),
                Err(e) => {
                    let _ = std::fs::remove_dir(&path);
                    Err(e)
                }
            };
        }
        Err(io::Error::other(format!("every cgroup name for {base} is taken")))
    }

    /// Removes a task's cgroup at its end; one that still holds a background process lingers
    /// until a later task end (or agent start) finds it empty. Retries the lingering ones too.
    pub fn release(&self, cgroup: TaskCgroup) {
        let mut lingering = self.lingering.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lingering.push(cgroup.path);
        lingering.retain(|path| !remove(path));
    }

    /// Removes this agent's empty task cgroups (a crashed run's, or ones whose background
    /// process has ended since); ones in use are left (the kernel refuses to remove them).
    fn remove_empty(&self) {
        let Ok(entries) = std::fs::read_dir(&self.parent) else {
            return;
        };
        for entry in entries.flatten() {
            let is_ours = entry.file_name().to_str().is_some_and(|n| n.starts_with(&self.prefix));
            if is_ours && entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&entry.path());
            }
        }
    }
}

/// Checks with a throwaway cgroup that the agent may create task cgroups and move processes
/// into them (it needs write access to `cgroup.procs` of the new cgroup and of the agent's
/// own, their common ancestor). Answers whether the kernel has `cgroup.kill`.
fn probe(own: &Path, parent: &Path, instance_id: &str) -> Result<bool, String> {
    let probe = parent.join(format!("{instance_id}.probe"));
    create_dir(&probe).map_err(|e| format!("cannot create a cgroup in {}: {e}", parent.display()))?;
    let checked = (|| {
        for procs in [probe.join("cgroup.procs"), own.join("cgroup.procs")] {
            access(&procs, AccessFlags::W_OK)
                .map_err(|e| format!("may not move processes through {}: {e}", procs.display()))?;
        }
        // A threaded subtree cannot hold a task's processes as a domain of their own.
        match std::fs::read_to_string(probe.join("cgroup.type")) {
            Ok(kind) if kind.trim() != "domain" => {
                Err(format!("a new cgroup there is {:?}, not a domain", kind.trim()))
            }
            _ => Ok(probe.join("cgroup.kill").exists()),
        }
    })();
    let _ = std::fs::remove_dir(&probe);
    checked
}

/// The cgroup of one task, created before its process starts.
#[derive(Debug)]
pub struct TaskCgroup {
    path: PathBuf,
    /// Its `cgroup.procs`, opened for writing before the fork: the child joins through it.
    procs: Option<File>,
    /// Its directory, opened: a child can be born in it (`spawn`, `CLONE_INTO_CGROUP`).
    dir: File,
    has_kill: bool,
}

impl TaskCgroup {
    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its directory, opened, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn dir(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.dir)
    }

    /// The step that moves the child into this cgroup, for `pre_exec` (once). It makes one
    /// write(2) on a descriptor opened before the fork: async-signal-safe, no allocation.
    pub fn take_joiner(&mut self) -> Option<impl FnMut() -> io::Result<()> + Send + Sync + 'static> {
        let procs = self.procs.take()?;
        // "0" moves the writing process itself.
        Some(move || (&procs).write_all(b"0"))
    }

    /// Whether any process is left in it.
    pub fn is_populated(&self) -> bool {
        is_populated(&self.path)
    }

    /// Sends `signal` to every process in it.
    pub fn signal_all(&self, signal: Signal) {
        signal_all(&self.path, signal);
    }

    /// SIGKILL to every process in it: at once through `cgroup.kill`, else one by one (call
    /// again while [`TaskCgroup::is_populated`], for processes forked meanwhile).
    pub fn kill(&self) {
        kill_all(&self.path, self.has_kill);
    }
}

/// Kills what a task of a crashed agent left in its cgroup `path`, waits (up to 2 s) until it is
/// empty, and removes it. Does nothing unless `path` is a task cgroup: in a `fleetrun`
/// directory on a cgroup v2 file system.
pub fn kill_leftover(path: &Path) {
    if !is_task_cgroup(path) {
        return;
    }
    let has_kill = path.join("cgroup.kill").exists();
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_populated(path) && Instant::now() < deadline {
        kill_all(path, has_kill);
        std::thread::sleep(POLL);
    }
    remove(path);
}

fn is_task_cgroup(path: &Path) -> bool {
    let is_plain = path.is_absolute() && path.components().all(|c| c != std::path::Component::ParentDir);
    let is_in_parent = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|name| name == PARENT);
    is_plain && is_in_parent && is_cgroup2(path)
}

#[cfg(target_os = "linux")]
fn is_cgroup2(path: &Path) -> bool {
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

#[cfg(not(target_os = "linux"))]
fn is_cgroup2(_: &Path) -> bool {
    false
}

fn create_dir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Removes an empty cgroup; true when it is gone.
fn remove(path: &Path) -> bool {
    match std::fs::remove_dir(path) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// `populated 1` in `cgroup.events`: a process is left in the cgroup or beneath it.
fn is_populated(path: &Path) -> bool {
    std::fs::read_to_string(path.join("cgroup.events")).is_ok_and(|events| events.lines().any(|l| l == "populated 1"))
}

fn signal_all(path: &Path, signal: Signal) {
    let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

fn kill_all(path: &Path, has_kill: bool) {
    let killed = has_kill
        && std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.kill"))
            .and_then(|mut file| file.write_all(b"1"))
            .is_ok();
    if !killed {
        signal_all(path, Signal::SIGKILL);
    }
}

/// The mount point of the cgroup v2 hierarchy in `/proc/self/mountinfo`, and the path within
/// the hierarchy that is mounted there (`/` unless a subtree was bind-mounted).
fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options [optional fields] - type source …`
        let (mount, filesystem) = line.split_once(" - ")?;
        if filesystem.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split(' ');
        let root = unescape(fields.nth(3)?);
        let mount_point = unescape(fields.next()?);
        Some((PathBuf::from(mount_point), root))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The agent's cgroup v2 path from `/proc/self/cgroup` (its `0::` line).
fn own_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| line.strip_prefix("0::"))
}

/// The directory of cgroup `own` on the mount at `mount_point`, which shows the hierarchy from
/// `mount_root` down; `None` when `own` is outside what the mount shows (or was removed).
fn cgroup_dir(mount_point: &Path, mount_root: &str, own: &str) -> Option<PathBuf> {
    if !own.starts_with('/') || own.ends_with(" (deleted)") {
        return None;
    }
    let below = if mount_root == "/" {
        own
    } else {
        own.strip_prefix(mount_root.trim_end_matches('/'))
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
    };
    let below = below.trim_start_matches('/');
    if below.split('/').any(|part| part == "..") {
        return None;
    }
    Some(if below.is_empty() {
        mount_point.to_path_buf()
    } else {
        mount_point.join(below)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's layout: cgroup v1 controllers and the v2 hierarchy at /sys/fs/cgroup/unified.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_mounts() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_string()))
        );
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some((PathBuf::from("/sys/fs/cgroup"), "/".to_string()))
        );
        assert_eq!(cgroup2_mount("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
    }

    #[test]
    fn escaped_mount_points_and_bind_mounted_roots_are_read() {
        let line = "50 23 0:38 /kube/pod\\0401 /mnt/cg\\040two rw master:3 - cgroup2 none rw\n";

        let (mount, root) = cgroup2_mount(line).unwrap();

        assert_eq!(mount, PathBuf::from("/mnt/cg two"));
        assert_eq!(root, "/kube/pod 1");
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }

    #[test]
    fn the_agents_own_cgroup_is_the_v2_line() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/fb98\n0::/\n";
        let systemd = "0::/system.slice/fleetrun-agent.service\n";

        assert_eq!(own_cgroup(hybrid), Some("/"));
        assert_eq!(own_cgroup(systemd), Some("/system.slice/fleetrun-agent.service"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn the_cgroup_directory_joins_mount_and_path_below_the_mounted_root() {
        let mount = Path::new("/sys/fs/cgroup");

        assert_eq!(cgroup_dir(mount, "/", "/"), Some(mount.to_path_buf()));
        assert_eq!(
            cgroup_dir(mount, "/", "/system.slice/a.service"),
            Some(mount.join("system.slice/a.service"))
        );
        assert_eq!(
            cgroup_dir(mount, "/kube/pod1", "/kube/pod1/ctr"),
            Some(mount.join("ctr"))
        );
        assert_eq!(cgroup_dir(mount, "/kube/pod1", "/kube/pod1"), Some(mount.to_path_buf()));
        assert_eq!(
            cgroup_dir(mount, "/kube/pod1", "/kube/pod10"),
            None,
            "a sibling, not below"
        );
        assert_eq!(
            cgroup_dir(mount, "/", "/../../outside"),
            None,
            "outside a cgroup namespace"
        );
        assert_eq!(cgroup_dir(mount, "/", "/gone (deleted)"), None);
    }

    #[test]
    fn only_a_task_cgroup_on_a_cgroup2_file_system_is_a_leftover_to_kill() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join(PARENT).join("i-a.t-b");
        std::fs::create_dir_all(&fake).unwrap();

        assert!(!is_task_cgroup(&fake), "a plain directory is not a cgroup");
        assert!(!is_task_cgroup(Path::new("relative/fleetrun/x")));
        assert!(!is_task_cgroup(Path::new("/sys/fs/cgroup/unified/fleetrun/../x")));
        kill_leftover(&fake);
        assert!(fake.exists(), "left alone");
    }
}
