//! The agent's outbox: every task's output and end, kept on disk until the server
//! acknowledges them, and re-sent after a reconnect (or an agent restart).
//!
//! Per task, [`log`] keeps the output records (`<task>.out`, and more segments for a task that
//! prints fast), and `<task>.json` says whether it started and how it ended. Memory holds only
//! an index of the unacknowledged records, so a long disconnection costs disk, not memory.
//! Once a server has said what output it keeps (`Welcome.output_limits`, remembered in
//! `output-limits`), records it would drop are given up as they fall into the middle, so a task
//! flooding while cut off costs about head + tail + a few segments of disk, not all it printed.
//! Reads and writes hit the page cache and are small, so they are done inline rather than on a
//! blocking thread.

mod log;

use crate::protocol::agent::{AgentMessage, Output, OutputKept, OutputSkipped, TaskFinished, TaskId, TaskStarted};
use crate::protocol::{ErrorCode, OutputStream, TaskEnd};
use bytes::Bytes;
use log::{OutputLog, Record, Skip, Unacked};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// What `<task>.json` records.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    started: bool,
    finished: Option<Finish>,
    /// The task's process group and its leader's start time (clock ticks since boot), so that
    /// an agent restarted after a crash can kill what the task left running, and only that.
    #[serde(default)]
    process_group: Option<(i32, u64)>,
    /// The task's cgroup, where it ran in one: a crashed agent's task is killed whole through it.
    #[serde(default)]
    cgroup: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Finish {
    exit_code: Option<i32>,
    end: TaskEnd,
}

/// One step of re-sending a task after a reconnect.
#[derive(Debug, Clone, Copy)]
pub enum Resend {
    Started,
    Output(Record),
    /// Records given up, sent as one `OutputSkipped`.
    Skipped(Skip),
    Finished,
}

/// The file, in the spool directory, with the output limits the server last named (JSON). Not
/// `*.json`, so it is never taken for a task's.
const LIMITS_FILE: &str = "output-limits";

struct TaskSpool {
    log: OutputLog,
    meta: Meta,
}

/// All tasks the agent holds.
pub struct Spool {
    dir: PathBuf,
    tasks: BTreeMap<TaskId, TaskSpool>,
    /// What the server last said it keeps of each result's output; `None` (never told, or
    /// told by a server that does not say) keeps everything. Written by [`Spool::set_limits`].
    limits: Option<OutputKept>,
}

/// The start time of a process, from `/proc/<pid>/stat` (field 22), where there is a /proc.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    stat.rsplit_once(") ")?.1.split(' ').nth(19)?.parse().ok()
}

/// Kills what a crashed agent's task left running: its process group, if the leader is still
/// the same process (a reused pid has another start time), and everything in its cgroup.
fn kill_leftovers(meta: &Meta) {
    let leader = meta
        .process_group
        .filter(|&(pgid, start)| pgid > 0 && start_time(pgid) == Some(start));
    if let Some((pgid, _)) = leader {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(unix)]
    if let Some(cgroup) = &meta.cgroup {
        super::cgroup::kill_leftover(cgroup);
    }
}

/// Whether a task id is safe to use as a file name (ids are `t-` and base32).
pub fn is_task_id(task: &str) -> bool {
    task.len() <= 64
        && !task.is_empty()
        && task
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Spool {
    /// Opens the spool directory and reloads tasks left by a previous run. A task that had
    /// started but not ended was cut off by the agent stopping: it ends as interrupted.
    pub fn open(dir: &Path) -> anyhow::Result<Spool> {
        crate::files::create_private_dir(dir, &[])?;
        let limits = std::fs::read(dir.join(LIMITS_FILE))
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok());
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            tasks: BTreeMap::new(),
            limits,
        };
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(task) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if !is_task_id(task) {
                continue;
            }
            let mut meta: Meta = serde_json::from_slice(&std::fs::read(&path)?).unwrap_or_default();
            let log = OutputLog::reload(&spool.out_path(task))?;
            let interrupted = meta.started && meta.finished.is_none();
            if interrupted {
                kill_leftovers(&meta);
                meta.finished = Some(Finish {
                    exit_code: None,
                    end: TaskEnd::Error {
                        error_code: ErrorCode::ExecutionInterrupted,
                        error_info: "the agent stopped while the command ran".into(),
                    },
                });
            }
            spool.tasks.insert(task.to_string(), TaskSpool { log, meta });
            if interrupted {
                spool.save_meta(task)?;
            }
        }
        Ok(spool)
    }

    fn out_path(&self, task: &str) -> PathBuf {
        self.dir.join(format!("{task}.out"))
    }

    fn meta_path(&self, task: &str) -> PathBuf {
        self.dir.join(format!("{task}.json"))
    }

    fn save_meta(&self, task: &str) -> io::Result<()> {
        if let Some(t) = self.tasks.get(task) {
            let json = serde_json::to_vec(&t.meta).map_err(io::Error::other)?;
            std::fs::write(self.meta_path(task), json)?;
        }
        Ok(())
    }

    fn entry(&mut self, task: &str) -> io::Result<&mut TaskSpool> {
        if !self.tasks.contains_key(task) {
            let spool = TaskSpool {
                log: OutputLog::create(&self.out_path(task))?,
                meta: Meta::default(),
            };
            self.tasks.insert(task.to_string(), spool);
            self.save_meta(task)?;
        }
        self.tasks
            .get_mut(task)
            .ok_or_else(|| io::Error::other(format!("task {task} vanished from the spool")))
    }

    /// Remembers what the server keeps of each result's output (from its `Welcome`), for the
    /// output spooled from now on, across agent restarts too.
    pub fn set_limits(&mut self, limits: Option<OutputKept>) -> io::Result<()> {
        if limits == self.limits {
            return Ok(());
        }
        // In force at once, even should the file not be written (the disk full).
        self.limits = limits;
        let path = self.dir.join(LIMITS_FILE);
        match limits {
            Some(limits) => std::fs::write(path, serde_json::to_vec(&limits).map_err(io::Error::other)?),
            None => std::fs::remove_file(path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        }
    }

    /// Whether the spool holds the task.
    pub fn holds(&self, task: &str) -> bool {
        self.tasks.contains_key(task)
    }

    /// Every task held, for `Hello`.
    pub fn held(&self) -> Vec<TaskId> {
        self.tasks.keys().cloned().collect()
    }

    /// Records that the task's process started, leading process group `pgid`, in `cgroup`
    /// where it has one.
    pub fn started(&mut self, task: &str, pgid: i32, cgroup: Option<PathBuf>) -> io::Result<AgentMessage> {
        let meta = &mut self.entry(task)?.meta;
        meta.started = true;
        meta.process_group = start_time(pgid).map(|start| (pgid, start));
        meta.cgroup = cgroup;
        self.save_meta(task)?;
        Ok(TaskStarted { task: task.to_string() }.into())
    }

    /// Appends a piece of output and returns it numbered. Unacknowledged output the server
    /// would drop is given up meanwhile.
    pub fn append(&mut self, task: &str, stream: OutputStream, data: Bytes) -> io::Result<AgentMessage> {
        let limits = self.limits;
        let log = &mut self.entry(task)?.log;
        let seq = log.append(stream, &data)?;
        if let Some(limits) = limits {
            log.compact(limits);
        }
        Ok(Output {
            task: task.to_string(),
            seq,
            stream,
            data,
        }
        .into())
    }

    /// Records how the task ended.
    pub fn finished(&mut self, task: &str, exit_code: Option<i32>, end: TaskEnd) -> io::Result<AgentMessage> {
        let t = self.entry(task)?;
        t.meta.finished = Some(Finish {
            exit_code,
            end: end.clone(),
        });
        let chunks = t.log.next_seq();
        // Nothing is appended any more: the skip is saved now, so a restarted agent re-sends
        // exactly what this one would.
        t.log.save_skip()?;
        self.save_meta(task)?;
        Ok(TaskFinished {
            task: task.to_string(),
            chunks,
            exit_code,
            end,
        }
        .into())
    }

    /// Forgets what the server acknowledged; the whole task once its end is stored.
    pub fn ack(&mut self, task: &str, next_seq: u64, finished: bool) -> io::Result<()> {
        let Some(t) = self.tasks.get_mut(task) else {
            return Ok(());
        };
        t.log.ack(next_seq);
        if finished && t.meta.finished.is_some() {
            self.tasks.remove(task);
            log::remove_files(&self.out_path(task));
            let _ = std::fs::remove_file(self.meta_path(task));
        }
        Ok(())
    }

    /// What of a task the server has not acknowledged, in order: start, output, end. Only an
    /// index: [`Spool::message`] reads each piece when it is sent, so memory stays bounded.
    pub fn resend_plan(&self, task: &str) -> Vec<Resend> {
        let Some(t) = self.tasks.get(task) else {
            return Vec::new();
        };
        let started = t.meta.started.then_some(Resend::Started);
        let output = t.log.unacked().map(|u| match u {
            Unacked::Record(r) => Resend::Output(r),
            Unacked::Skip(s) => Resend::Skipped(s),
        });
        let finished = t.meta.finished.as_ref().map(|_| Resend::Finished);
        started.into_iter().chain(output).chain(finished).collect()
    }

    /// The message for one step of a [`Spool::resend_plan`].
    pub fn message(&self, task: &str, step: &Resend) -> io::Result<AgentMessage> {
        let t = self
            .tasks
            .get(task)
            .ok_or_else(|| io::Error::other("task no longer spooled"))?;
        Ok(match step {
            Resend::Started => TaskStarted { task: task.to_string() }.into(),
            Resend::Output(record) => Output {
                task: task.to_string(),
                seq: record.seq,
                stream: record.stream,
                data: t.log.read(record)?.into(),
            }
            .into(),
            Resend::Skipped(skip) => OutputSkipped {
                task: task.to_string(),
                seq: skip.seq,
                chunks: skip.chunks,
                offset: skip.offset,
                bytes: skip.bytes,
            }
            .into(),
            Resend::Finished => {
                let finish = t
                    .meta
                    .finished
                    .as_ref()
                    .ok_or_else(|| io::Error::other("task has not ended"))?;
                let end = finish.end.clone();
                TaskFinished {
                    task: task.to_string(),
                    chunks: t.log.next_seq(),
                    exit_code: finish.exit_code,
                    end,
                }
                .into()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unacknowledged(spool: &Spool, task: &str) -> Vec<AgentMessage> {
        spool
            .resend_plan(task)
            .iter()
            .map(|step| spool.message(task, step).unwrap())
            .collect()
    }

    fn seqs(messages: &[AgentMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match m {
                AgentMessage::TaskStarted(_) => "started".to_string(),
                AgentMessage::Output(o) => {
                    format!("{}:{}", o.seq, String::from_utf8_lossy(&o.data))
                }
                AgentMessage::TaskFinished(f) => format!("finished:{}", f.chunks),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn unacknowledged_output_is_resent_in_order_and_acks_forget_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.started("t-a", 0, None).unwrap();
        for piece in ["one", "two", "three"] {
            spool.append("t-a", OutputStream::Stdout, Bytes::from(piece)).unwrap();
        }

        spool.ack("t-a", 2, false).unwrap();
        spool.finished("t-a", Some(0), TaskEnd::Exited).unwrap();

        assert_eq!(
            seqs(&unacknowledged(&spool, "t-a")),
            ["started", "2:three", "finished:3"]
        );
        spool.ack("t-a", 3, true).unwrap();
        assert!(!spool.holds("t-a"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "files removed");
    }

    #[test]
    fn a_restarted_agent_reloads_its_spool_and_ends_cut_off_tasks_as_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path()).unwrap();
            spool.started("t-a", 0, None).unwrap();
            spool
                .append("t-a", OutputStream::Stderr, Bytes::from("partial"))
                .unwrap();
        }

        let spool = Spool::open(dir.path()).unwrap();
        let messages = unacknowledged(&spool, "t-a");

        assert_eq!(seqs(&messages), ["started", "0:partial", "finished:1"]);
        let AgentMessage::TaskFinished(finished) = &messages[2] else {
            panic!()
        };
        assert!(matches!(
            finished.end,
            TaskEnd::Error {
                error_code: ErrorCode::ExecutionInterrupted,
                ..
            }
        ));
    }

    const KEEP: OutputKept = OutputKept {
        head: 512 * 1024,
        tail: 512 * 1024,
    };

    /// Output as a process might print it: every byte known by its offset.
    fn printed(len: usize) -> Vec<u8> {
        (0..len).map(|k| (k % 251) as u8).collect()
    }

    fn disk_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    /// Appends `all` in chunks of uneven sizes (up to 256 KiB), acknowledging nothing, and
    /// returns the most bytes the spool directory held meanwhile.
    fn flood(spool: &mut Spool, dir: &Path, task: &str, all: &[u8]) -> u64 {
        let mut most = 0;
        let (mut at, mut n) = (0, 0usize);
        while at < all.len() {
            let len = (1 + (n * 7919) % (256 * 1024)).min(all.len() - at);
            let data = Bytes::copy_from_slice(&all[at..at + len]);
            spool.append(task, OutputStream::Stdout, data).unwrap();
            most = most.max(disk_bytes(dir));
            (at, n) = (at + len, n + 1);
        }
        most
    }

    /// Checks that a re-send is what the server keeps: output numbered from 0 without a gap,
    /// each piece at its place in `all`, the first `head` and last `tail` bytes as output, the
    /// rest in one skip. Returns the plan's shape, e.g. `["started", "output", "skipped",
    /// "output", "finished"]` (repeats merged).
    fn check_resend(messages: &[AgentMessage], all: &[u8], keep: OutputKept) -> Vec<&'static str> {
        let (mut seq, mut offset) = (0u64, 0u64);
        let mut shape: Vec<&'static str> = Vec::new();
        for message in messages {
            let kind = match message {
                AgentMessage::TaskStarted(_) => "started",
                AgentMessage::Output(o) => {
                    assert_eq!(o.seq, seq);
                    let end = offset + o.data.len() as u64;
                    assert_eq!(&o.data[..], &all[offset as usize..end as usize], "chunk {seq}");
                    (seq, offset) = (seq + 1, end);
                    "output"
                }
                AgentMessage::OutputSkipped(s) => {
                    assert_eq!((s.seq, s.offset), (seq, offset));
                    assert!(s.offset >= keep.head, "{s:?} skips into the head");
                    assert!(
                        s.offset + s.bytes <= all.len() as u64 - keep.tail,
                        "{s:?} skips into the tail"
                    );
                    (seq, offset) = (seq + s.chunks, offset + s.bytes);
                    "skipped"
                }
                AgentMessage::TaskFinished(f) => {
                    assert_eq!(f.chunks, seq, "every chunk accounted for");
                    "finished"
                }
                other => panic!("unexpected {other:?}"),
            };
            if shape.last() != Some(&kind) {
                shape.push(kind);
            }
        }
        assert_eq!(offset, all.len() as u64, "every byte accounted for");
        shape
    }

    #[test]
    fn a_flood_while_unacknowledged_keeps_only_what_the_server_keeps_on_bounded_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.set_limits(Some(KEEP)).unwrap();
        spool.started("t-a", 0, None).unwrap();
        let all = printed(48 << 20);

        let most = flood(&mut spool, dir.path(), "t-a", &all);
        spool.finished("t-a", Some(0), TaskEnd::Exited).unwrap();
        let messages = unacknowledged(&spool, "t-a");
        let reloaded = Spool::open(dir.path()).unwrap();

        let bound = KEEP.head + KEEP.tail + 3 * log::SEGMENT_BYTES;
        assert!(most <= bound, "{most} bytes on disk at most, over {bound}");
        assert_eq!(
            check_resend(&messages, &all, KEEP),
            ["started", "output", "skipped", "output", "finished"]
        );
        let skipped: u64 = messages
            .iter()
            .filter_map(|m| match m {
                AgentMessage::OutputSkipped(s) => Some(s.bytes),
                _ => None,
            })
            .sum();
        assert!(
            all.len() as u64 - skipped <= KEEP.head + KEEP.tail + 2 * 256 * 1024,
            "only head, tail and the records that straddle them are kept"
        );
        // Not `assert_eq!`: a failure must not print megabytes.
        assert!(
            unacknowledged(&reloaded, "t-a") == messages,
            "a restarted agent re-sends the same"
        );
    }

    #[test]
    fn an_agent_killed_mid_flood_reloads_its_skip_and_does_not_take_the_gap_for_an_ack() {
        let dir = tempfile::tempdir().unwrap();
        let all = printed(24 << 20);
        {
            let mut spool = Spool::open(dir.path()).unwrap();
            spool.set_limits(Some(KEEP)).unwrap();
            spool.started("t-a", 0, None).unwrap();
            flood(&mut spool, dir.path(), "t-a", &all);
        }

        let spool = Spool::open(dir.path()).unwrap();
        let messages = unacknowledged(&spool, "t-a");

        // The skip saved may be older than the one in memory was: records it does not cover
        // are still on disk and come back as output.
        assert_eq!(
            check_resend(&messages, &all, KEEP),
            ["started", "output", "skipped", "output", "finished"]
        );
        assert_eq!(spool.limits, Some(KEEP), "the limits are remembered");
    }

    #[test]
    fn acknowledgements_forget_the_head_then_the_skip() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.set_limits(Some(OutputKept { head: 4, tail: 4 })).unwrap();
        for piece in ["hea", "d", "mid", "dle", "tai", "l"] {
            spool.append("t-a", OutputStream::Stdout, Bytes::from(piece)).unwrap();
        }
        let plan = |spool: &Spool| {
            spool
                .resend_plan("t-a")
                .iter()
                .map(|step| match step {
                    Resend::Output(r) => format!("{}", r.seq),
                    Resend::Skipped(s) => format!("skip {}+{} @{} {}B", s.seq, s.chunks, s.offset, s.bytes),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };

        let before = plan(&spool);
        spool.ack("t-a", 3, false).unwrap();
        let inside = plan(&spool);
        spool.ack("t-a", 4, false).unwrap();

        assert_eq!(before, ["0", "1", "skip 2+2 @4 6B", "4", "5"]);
        assert_eq!(
            inside,
            ["skip 2+2 @4 6B", "4", "5"],
            "a skip partly stored is re-sent whole"
        );
        assert_eq!(plan(&spool), ["4", "5"]);
    }

    #[test]
    fn without_limits_everything_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.set_limits(Some(KEEP)).unwrap();
        spool.set_limits(None).unwrap();

        let all = printed(3 << 20);
        flood(&mut spool, dir.path(), "t-a", &all);

        assert_eq!(
            check_resend(&unacknowledged(&spool, "t-a"), &all, OutputKept { head: 0, tail: 0 }),
            ["output"]
        );
        assert!(Spool::open(dir.path()).unwrap().limits.is_none());
    }

    #[test]
    fn task_ids_that_are_not_plain_names_are_refused() {
        assert!(is_task_id("t-abc234"));
        assert!(!is_task_id("../etc/passwd"));
        assert!(!is_task_id(""));
    }
}
