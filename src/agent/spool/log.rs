//! A task's output on disk until the server acknowledges it: numbered records in segment files
//! that are written over once everything in them is acknowledged.
//!
//! A task streaming gigabytes so keeps a few segments (`SEGMENT_BYTES` each) on disk rather than
//! all it ever printed, and its writes land on pages already in the page cache instead of
//! allocating new ones and freeing them again (measured in docs/PERFORMANCE.md).
//!
//! A record is `seq u64 LE, stream u8, len u32 LE`, then `len` bytes, written in one `pwritev`
//! together with an empty header (`len` 0) after it. A reader of a segment so stops exactly
//! where its newest record ends, even when older records of an earlier pass lie beyond it.
//! Files: `<task>.out`, `<task>.out.1`, `<task>.out.2`, …

use crate::protocol::OutputStream;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

const HEADER: usize = 13;

/// A segment is written over from the start once it holds this much and everything in it is
/// acknowledged. A single record may make it longer.
pub const SEGMENT_BYTES: u64 = 4 << 20;

/// An output record: where it is and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub stream: OutputStream,
    pub len: u32,
    segment: usize,
    pos: u64,
}

struct Segment {
    file: File,
    /// Where the next record of this pass goes.
    end: u64,
}

/// The records of one task not yet acknowledged, and the files that hold them.
pub struct OutputLog {
    base: PathBuf,
    segments: Vec<Segment>,
    current: usize,
    next_seq: u64,
    unacked: VecDeque<Record>,
}

fn header(seq: u64, stream: OutputStream, len: u32) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(&seq.to_le_bytes());
    header[8] = u8::from(stream == OutputStream::Stderr);
    header[9..].copy_from_slice(&len.to_le_bytes());
    header
}

fn segment_path(base: &Path, n: usize) -> PathBuf {
    match n {
        0 => base.to_path_buf(),
        n => {
            let mut path = base.as_os_str().to_owned();
            path.push(format!(".{n}"));
            PathBuf::from(path)
        }
    }
}

fn open(path: &Path, truncate: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .open(path)
}

impl OutputLog {
    /// An empty log at `base` (`<task>.out`), replacing whatever a file there held.
    pub fn create(base: &Path) -> io::Result<OutputLog> {
        remove_files(base);
        Ok(OutputLog {
            base: base.to_path_buf(),
            segments: vec![Segment {
                file: open(base, true)?,
                end: 0,
            }],
            current: 0,
            next_seq: 0,
            unacked: VecDeque::new(),
        })
    }

    /// Reopens the log a previous run of the agent left. Every record found counts as
    /// unacknowledged: re-sending one the server already has is harmless (it skips it). A record
    /// cut short by a crash, and anything not continuing the newest run of numbers, is ignored.
    pub fn reload(base: &Path) -> io::Result<OutputLog> {
        let mut segments = Vec::new();
        let mut found = Vec::new();
        while segments.is_empty() || segment_path(base, segments.len()).exists() {
            let file = open(&segment_path(base, segments.len()), false)?;
            let (records, end) = scan(&file, segments.len())?;
            found.extend(records);
            segments.push(Segment { file, end });
        }
        found.sort_by_key(|r| r.seq);
        found.dedup_by_key(|r| r.seq);
        // The newest run of consecutive numbers; anything before a gap was acknowledged.
        let run_start = found
            .windows(2)
            .rposition(|w| w[1].seq != w[0].seq + 1)
            .map_or(0, |i| i + 1);
        let unacked: VecDeque<Record> = found.drain(run_start..).collect();
        let (current, next_seq) = unacked.back().map_or((0, 0), |last| (last.segment, last.seq + 1));
        Ok(OutputLog {
            base: base.to_path_buf(),
            segments,
            current,
            next_seq,
            unacked,
        })
    }

    /// The number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends a record and returns its number.
    pub fn append(&mut self, stream: OutputStream, data: &[u8]) -> io::Result<u64> {
        let len = u32::try_from(data.len()).map_err(|_| io::Error::other("an output record over 4 GiB"))?;
        let need = (HEADER * 2 + data.len()) as u64;
        if self.segments[self.current].end > 0 && self.segments[self.current].end + need > SEGMENT_BYTES {
            self.current = self.free_segment()?;
            self.segments[self.current].end = 0;
        }
        let seq = self.next_seq;
        let segment = &mut self.segments[self.current];
        let head = header(seq, stream, len);
        let terminator = [0u8; HEADER];
        write_all_vectored_at(&segment.file, &[&head, data, &terminator], segment.end)?;
        self.unacked.push_back(Record {
            seq,
            stream,
            len,
            segment: self.current,
            pos: segment.end,
        });
        segment.end += (HEADER + data.len()) as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// A segment other than the current one holding nothing unacknowledged, or a new one.
    fn free_segment(&mut self) -> io::Result<usize> {
        let busy = |n: usize| self.unacked.iter().any(|r| r.segment == n);
        if let Some(n) = (0..self.segments.len()).find(|&n| n != self.current && !busy(n)) {
            return Ok(n);
        }
        let n = self.segments.len();
        self.segments.push(Segment {
            file: open(&segment_path(&self.base, n), true)?,
            end: 0,
        });
        Ok(n)
    }

    /// Forgets records numbered below `next_seq`.
    pub fn ack(&mut self, next_seq: u64) {
        while self.unacked.front().is_some_and(|r| r.seq < next_seq) {
            self.unacked.pop_front();
        }
    }

    /// The records not yet acknowledged, in order.
    pub fn unacked(&self) -> impl Iterator<Item = &Record> {
        self.unacked.iter()
    }

    /// The bytes of a record.
    pub fn read(&self, record: &Record) -> io::Result<Vec<u8>> {
        let mut data = vec![0u8; record.len as usize];
        self.segments[record.segment]
            .file
            .read_exact_at(&mut data, record.pos + HEADER as u64)?;
        Ok(data)
    }

    /// Bytes on disk, for tests and reports.
    #[cfg(test)]
    pub fn disk_bytes(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.file.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// Deletes every segment file of the log at `base`.
pub fn remove_files(base: &Path) {
    let _ = std::fs::remove_file(base);
    for n in 1.. {
        if std::fs::remove_file(segment_path(base, n)).is_err() {
            break;
        }
    }
}

/// The chain of records from the start of a segment: each numbered one above the one before,
/// up to the empty header after the newest, a record cut short, or the end of the file.
fn scan(file: &File, segment: usize) -> io::Result<(Vec<Record>, u64)> {
    let len = file.metadata()?.len();
    let mut records: Vec<Record> = Vec::new();
    let mut pos = 0u64;
    let mut raw = [0u8; HEADER];
    while pos + HEADER as u64 <= len {
        file.read_exact_at(&mut raw, pos)?;
        let seq = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
        let rec_len = u32::from_le_bytes(raw[9..].try_into().unwrap_or_default());
        let follows = records.last().is_none_or(|last| seq == last.seq + 1);
        if rec_len == 0 || !follows || pos + HEADER as u64 + u64::from(rec_len) > len {
            break;
        }
        records.push(Record {
            seq,
            stream: if raw[8] == 1 {
                OutputStream::Stderr
            } else {
                OutputStream::Stdout
            },
            len: rec_len,
            segment,
            pos,
        });
        pos += HEADER as u64 + u64::from(rec_len);
    }
    Ok((records, pos))
}

/// Writes every byte of `parts`, in order, at `offset`: one system call in the usual case.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let written = nix::sys::uio::pwritev(file, &slices, offset as i64).map_err(io::Error::from)?;
    if written < total {
        // A short write (rare on a regular file): write what is left piece by piece.
        let rest: Vec<u8> = parts.concat();
        file.write_all_at(&rest[written..], offset + written as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(log: &OutputLog) -> Vec<(u64, Vec<u8>)> {
        log.unacked().map(|r| (r.seq, log.read(r).unwrap())).collect()
    }

    #[test]
    fn streaming_far_more_than_a_segment_keeps_the_disk_use_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = OutputLog::create(&dir.path().join("t-a.out")).unwrap();
        let chunk = vec![b'x'; 256 * 1024];

        // 64 MiB through the log, acknowledged a few chunks behind, as a streaming task is.
        for n in 0..256u64 {
            log.append(OutputStream::Stdout, &chunk).unwrap();
            log.ack(n.saturating_sub(3));
        }

        assert!(
            log.disk_bytes() <= 3 * SEGMENT_BYTES,
            "{} bytes on disk",
            log.disk_bytes()
        );
        assert_eq!(log.unacked().map(|r| r.seq).collect::<Vec<_>>(), [252, 253, 254, 255]);
        assert!(contents(&log).iter().all(|(_, data)| *data == chunk));
    }

    #[test]
    fn a_reload_finds_exactly_the_unacknowledged_records_across_reused_segments() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("t-a.out");
        let mut log = OutputLog::create(&base).unwrap();
        let record = |n: u64| format!("record {n} ").repeat(30_000).into_bytes();
        for n in 0..40 {
            log.append(OutputStream::Stdout, &record(n)).unwrap();
            log.ack(n.saturating_sub(5));
        }
        let before = contents(&log);

        let reloaded = OutputLog::reload(&base).unwrap();

        assert_eq!(before.first().map(|r| r.0), Some(34));
        // Everything unacknowledged is back, in order; records acknowledged but not yet written
        // over may come back too, and re-sending them is harmless.
        let after = contents(&reloaded);
        assert!(
            after.ends_with(&before),
            "{:?}",
            after.iter().map(|r| r.0).collect::<Vec<_>>()
        );
        assert!(after.windows(2).all(|w| w[1].0 == w[0].0 + 1));
        assert!(after.iter().all(|(seq, data)| *data == record(*seq)));
        assert_eq!(reloaded.next_seq(), 40);
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_dropped_and_the_log_continues_after_the_last_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("t-a.out");
        let mut log = OutputLog::create(&base).unwrap();
        log.append(OutputStream::Stdout, b"whole").unwrap();
        log.append(OutputStream::Stderr, b"cut short").unwrap();
        let file = OpenOptions::new().write(true).open(&base).unwrap();
        file.set_len((HEADER + 5 + HEADER + 3) as u64).unwrap();

        let mut reloaded = OutputLog::reload(&base).unwrap();
        reloaded.append(OutputStream::Stdout, b"next").unwrap();

        assert_eq!(contents(&reloaded), [(0, b"whole".to_vec()), (1, b"next".to_vec())]);
    }
}
