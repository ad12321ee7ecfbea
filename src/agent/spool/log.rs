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
//!
//! Told what the server keeps ([`OutputLog::compact`]), the log gives up unacknowledged records
//! that lie wholly in the middle the server drops: at or past the head, ending at least `tail`
//! bytes before the output so far. They are contiguous, so one [`Skip`] (first seq, count,
//! offset, bytes) replaces them, and their segments are written over as if acknowledged. The
//! skip is kept in `<task>.out.skip` (`seq`, `chunks`, `offset`, `bytes`, u64 LE each), written
//! before any segment that held its records is written over or cut, so a reload sees the run of
//! numbers unbroken.

use crate::protocol::OutputStream;
use crate::protocol::agent::OutputKept;
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
    /// Where its bytes begin in the task's output (known while the log knows its total).
    offset: u64,
    segment: usize,
    pos: u64,
}

impl Record {
    fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }

    /// Where the record ends in its segment.
    fn segment_end(&self) -> u64 {
        self.pos + HEADER as u64 + u64::from(self.len)
    }
}

/// Records `seq..seq + chunks` given up: they began at byte `offset` of the output and held
/// `bytes` bytes, all in the middle the server drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    pub seq: u64,
    pub chunks: u64,
    pub offset: u64,
    pub bytes: u64,
}

impl Skip {
    fn end_seq(&self) -> u64 {
        self.seq + self.chunks
    }

    fn encode(&self) -> [u8; 32] {
        let mut raw = [0u8; 32];
        for (i, n) in [self.seq, self.chunks, self.offset, self.bytes].into_iter().enumerate() {
            raw[i * 8..i * 8 + 8].copy_from_slice(&n.to_le_bytes());
        }
        raw
    }

    fn decode(raw: &[u8]) -> Option<Skip> {
        let n = |i: usize| Some(u64::from_le_bytes(raw.get(i * 8..i * 8 + 8)?.try_into().ok()?));
        let skip = Skip {
            seq: n(0)?,
            chunks: n(1)?,
            offset: n(2)?,
            bytes: n(3)?,
        };
        let plausible = raw.len() == 32
            && skip.chunks > 0
            && skip.seq.checked_add(skip.chunks).is_some()
            && skip.offset.checked_add(skip.bytes).is_some();
        plausible.then_some(skip)
    }
}

/// One unacknowledged piece of the log, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unacked {
    Record(Record),
    Skip(Skip),
}

impl Unacked {
    fn seq(&self) -> u64 {
        match self {
            Unacked::Record(r) => r.seq,
            Unacked::Skip(s) => s.seq,
        }
    }

    fn end_seq(&self) -> u64 {
        match self {
            Unacked::Record(r) => r.seq + 1,
            Unacked::Skip(s) => s.end_seq(),
        }
    }
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
    /// Unacknowledged records before `skip` (the head); empty when there is no skip.
    head: VecDeque<Record>,
    /// Unacknowledged records given up (see [`OutputLog::compact`]).
    skip: Option<Skip>,
    /// Unacknowledged records after `skip`, or all of them when there is none.
    unacked: VecDeque<Record>,
    /// Bytes of output so far: the next record's offset. `None` after a reload that could not
    /// tell (the first records were acknowledged and no skip says where the rest begin); such a
    /// log gives nothing up.
    total: Option<u64>,
    /// Whether `<task>.out.skip` holds `skip` as it is now.
    is_skip_saved: bool,
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

fn skip_path(base: &Path) -> PathBuf {
    let mut path = base.as_os_str().to_owned();
    path.push(".skip");
    PathBuf::from(path)
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
            head: VecDeque::new(),
            skip: None,
            unacked: VecDeque::new(),
            total: Some(0),
            is_skip_saved: true,
        })
    }

    /// Reopens the log a previous run of the agent left. Every record found counts as
    /// unacknowledged: re-sending one the server already has is harmless (it skips it). A record
    /// cut short by a crash, and anything not continuing the newest run of numbers, is ignored.
    /// The saved skip fills its place in that run, so records given up are not taken for
    /// acknowledged ones.
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
        let saved = std::fs::read(skip_path(base)).ok().and_then(|raw| Skip::decode(&raw));
        let mut items: Vec<Unacked> = match saved {
            // Records the skip covers may still lie in segments not yet written over.
            Some(skip) => found
                .into_iter()
                .filter(|r| !(skip.seq..skip.end_seq()).contains(&r.seq))
                .map(Unacked::Record)
                .collect(),
            None => found.into_iter().map(Unacked::Record).collect(),
        };
        if let Some(skip) = saved {
            let at = items.partition_point(|i| i.seq() < skip.seq);
            items.insert(at, Unacked::Skip(skip));
        }
        // The newest run of consecutive numbers; anything before a gap was acknowledged (a
        // skip before the gap is one acknowledged since it was saved).
        let run_start = items
            .windows(2)
            .rposition(|w| w[1].seq() != w[0].end_seq())
            .map_or(0, |i| i + 1);
        let run = items.split_off(run_start);
        let next_seq = run.last().map_or(0, Unacked::end_seq);
        let current = run
            .iter()
            .rev()
            .find_map(|i| match i {
                Unacked::Record(r) => Some(r.segment),
                Unacked::Skip(_) => None,
            })
            .unwrap_or(0);
        let mut log = OutputLog {
            base: base.to_path_buf(),
            segments,
            current,
            next_seq,
            head: VecDeque::new(),
            skip: None,
            unacked: VecDeque::new(),
            total: None,
            is_skip_saved: true,
        };
        for item in run {
            match item {
                Unacked::Skip(skip) => {
                    log.head = std::mem::take(&mut log.unacked);
                    log.skip = Some(skip);
                }
                Unacked::Record(r) => log.unacked.push_back(r),
            }
        }
        log.total = log.place_records();
        Ok(log)
    }

    /// Sets the offsets of reloaded records from the skip, or from 0 when the first record is
    /// the task's first. Returns the total, or `None` when nothing tells where the records begin.
    fn place_records(&mut self) -> Option<u64> {
        let start = match (self.skip, self.head.front().or(self.unacked.front())) {
            (Some(skip), _) => {
                let head: u64 = self.head.iter().map(|r| u64::from(r.len)).sum();
                skip.offset.checked_sub(head)?
            }
            (None, Some(first)) if first.seq == 0 => 0,
            (None, Some(_)) => return None,
            (None, None) => 0,
        };
        let mut offset = start;
        for r in self.head.iter_mut() {
            r.offset = offset;
            offset += u64::from(r.len);
        }
        if let Some(skip) = self.skip {
            offset = skip.offset + skip.bytes;
        }
        for r in self.unacked.iter_mut() {
            r.offset = offset;
            offset += u64::from(r.len);
        }
        Some(offset)
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
        let offset = self.total.unwrap_or(0);
        self.unacked.push_back(Record {
            seq,
            stream,
            len,
            offset,
            segment: self.current,
            pos: segment.end,
        });
        segment.end += (HEADER + data.len()) as u64;
        self.next_seq += 1;
        self.total = self.total.map(|total| total + u64::from(len));
        Ok(seq)
    }

    /// Gives up the unacknowledged records the server would drop: those wholly at or past
    /// `keep.head` that end at least `keep.tail` bytes before the output so far (the final
    /// tail starts no earlier). They join the skip; their segments can be written over.
    pub fn compact(&mut self, keep: OutputKept) {
        let Some(middle_end) = self.total.and_then(|total| total.checked_sub(keep.tail)) else {
            return;
        };
        let in_middle = |r: &Record| r.offset >= keep.head && r.end() <= middle_end;
        let mut skip = match self.skip {
            Some(skip) => skip,
            None => {
                // Records are in offset order: the head's come first.
                let first = self.unacked.partition_point(|r| r.offset < keep.head);
                let Some(record) = self.unacked.get(first).copied().filter(in_middle) else {
                    return;
                };
                self.head = self.unacked.drain(..first).collect();
                Skip {
                    seq: record.seq,
                    chunks: 0,
                    offset: record.offset,
                    bytes: 0,
                }
            }
        };
        while let Some(record) = self.unacked.front().copied().filter(in_middle) {
            self.unacked.pop_front();
            skip.chunks += 1;
            skip.bytes += u64::from(record.len);
        }
        if self.skip != Some(skip) {
            self.skip = Some(skip);
            self.is_skip_saved = false;
        }
    }

    /// Writes the skip to `<task>.out.skip`, if it changed since it was last written.
    pub fn save_skip(&mut self) -> io::Result<()> {
        if let (Some(skip), false) = (self.skip, self.is_skip_saved) {
            // 32 bytes in one write: a crash leaves the old or the new, and the file is only
            // read back by a restarted agent (no fsync, as for the segments).
            open(&skip_path(&self.base), false)?.write_all_at(&skip.encode(), 0)?;
            self.is_skip_saved = true;
        }
        Ok(())
    }

    /// A segment other than the current one holding nothing unacknowledged, or a new one.
    /// Records given up are written over here, so the skip is saved first; and a segment
    /// kept only for its first records (the head's) is cut after them.
    fn free_segment(&mut self) -> io::Result<usize> {
        // Per segment, where its last record still unacknowledged ends.
        let mut kept_to: Vec<Option<u64>> = vec![None; self.segments.len()];
        for r in self.head.iter().chain(&self.unacked) {
            let end = r.segment_end();
            kept_to[r.segment] = Some(kept_to[r.segment].map_or(end, |e| e.max(end)));
        }
        if self.skip.is_some() {
            self.save_skip()?;
            for (n, to) in kept_to.iter().enumerate() {
                let segment = &self.segments[n];
                if let (Some(to), false) = (to, n == self.current) {
                    if segment.file.metadata()?.len() > *to {
                        segment.file.set_len(*to)?;
                    }
                }
            }
        }
        if let Some(n) = (0..self.segments.len()).find(|&n| n != self.current && kept_to[n].is_none()) {
            return Ok(n);
        }
        let n = self.segments.len();
        self.segments.push(Segment {
            file: open(&segment_path(&self.base, n), true)?,
            end: 0,
        });
        Ok(n)
    }

    /// Forgets records numbered below `next_seq`, and the skip once it is all below.
    pub fn ack(&mut self, next_seq: u64) {
        while self.head.front().is_some_and(|r| r.seq < next_seq) {
            self.head.pop_front();
        }
        if self.skip.is_some_and(|s| s.end_seq() <= next_seq) {
            // The saved copy stays until the next one replaces it: a reload finds it before a
            // gap, or before records it no longer covers, and a re-send of it is ignored.
            self.skip = None;
            self.is_skip_saved = true;
        }
        while self.unacked.front().is_some_and(|r| r.seq < next_seq) {
            self.unacked.pop_front();
        }
    }

    /// What is not yet acknowledged, in order: records before the skip, the skip, the rest.
    pub fn unacked(&self) -> impl Iterator<Item = Unacked> + '_ {
        let head = self.head.iter().copied().map(Unacked::Record);
        let rest = self.unacked.iter().copied().map(Unacked::Record);
        head.chain(self.skip.map(Unacked::Skip)).chain(rest)
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
        let skip = std::fs::metadata(skip_path(&self.base)).map_or(0, |m| m.len());
        self.segments
            .iter()
            .map(|s| s.file.metadata().map(|m| m.len()).unwrap_or(0))
            .sum::<u64>()
            + skip
    }
}

/// Deletes every file of the log at `base`.
pub fn remove_files(base: &Path) {
    let _ = std::fs::remove_file(skip_path(base));
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
            offset: 0,
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
        log.unacked()
            .map(|u| match u {
                Unacked::Record(r) => (r.seq, log.read(&r).unwrap()),
                Unacked::Skip(s) => panic!("unexpected {s:?}"),
            })
            .collect()
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
        assert_eq!(log.unacked().map(|u| u.seq()).collect::<Vec<_>>(), [252, 253, 254, 255]);
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
    fn a_reload_takes_an_acknowledged_skip_for_a_duplicate_and_keeps_every_record_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("t-a.out");
        let keep = OutputKept { head: 10, tail: 10 };
        let mut log = OutputLog::create(&base).unwrap();
        let append = |log: &mut OutputLog, n: u64| {
            log.append(OutputStream::Stdout, format!("record {n:02}\n").as_bytes())
                .unwrap();
            log.compact(keep);
        };
        // Ten records of 10 bytes: 1–8 lie in the middle. The skip is saved, then acknowledged.
        for n in 0..10 {
            append(&mut log, n);
        }
        log.save_skip().unwrap();
        log.ack(9);
        // A newer skip (9–10) is not saved before the agent dies.
        for n in 10..12 {
            append(&mut log, n);
        }
        let live: Vec<Unacked> = log.unacked().collect();

        let reloaded = OutputLog::reload(&base).unwrap();
        let after: Vec<Unacked> = reloaded.unacked().collect();

        let skip = |seq, chunks, offset, bytes| {
            Unacked::Skip(Skip {
                seq,
                chunks,
                offset,
                bytes,
            })
        };
        assert_eq!(live.iter().map(Unacked::seq).collect::<Vec<_>>(), [9, 11]);
        assert_eq!(live[0], skip(9, 2, 90, 20));
        // Record 0 and the old skip come back (the server ignores both as duplicates), then
        // records 9–11, which the old skip does not cover, from the segment.
        assert_eq!(
            after.iter().map(|u| (u.seq(), u.end_seq())).collect::<Vec<_>>(),
            [(0, 1), (1, 9), (9, 10), (10, 11), (11, 12)]
        );
        assert_eq!(after[1], skip(1, 8, 10, 80));
        let Unacked::Record(last) = after[4] else { panic!() };
        assert_eq!(reloaded.read(&last).unwrap(), b"record 11\n");
        assert_eq!(reloaded.next_seq(), 12);
        assert_eq!(reloaded.total, Some(120));
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
