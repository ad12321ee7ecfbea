//! How the CLI prints command output and outcomes. Each instance's bytes are decoded as one
//! UTF-8 stream per pipe, cut into whole lines, and each line is printed with its instance's
//! label: stdout lines to stdout, stderr lines and notes to stderr.
//!
//! Pure apart from the writers it is handed, so it is tested here against byte buffers. It
//! uses only `protocol` types, never server code.

use crate::protocol::OutputStream;
use crate::protocol::api::InvocationResult;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};

/// Longest text held back while waiting for a newline. A longer run without one (binary
/// output, a progress bar) is printed in pieces of this size, so memory stays bounded.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Labels are padded to the longest one up to this width; a longer label is not padded, so
/// one long name does not push every line of every instance to the right.
const MAX_LABEL_WIDTH: usize = 32;

/// Decodes bytes that arrive in chunks as UTF-8. A character split across two chunks comes
/// out whole; only bytes that can never be valid become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// The first bytes of a character whose other bytes have not arrived yet (at most 3).
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Appends the text of `bytes` to `out`, keeping an incomplete last character for the
    /// next call.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        let joined;
        let bytes = if self.pending.is_empty() {
            bytes
        } else {
            self.pending.extend_from_slice(bytes);
            joined = std::mem::take(&mut self.pending);
            &joined[..]
        };
        let mut chunks = bytes.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            out.push_str(chunk.valid());
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            let is_last = chunks.peek().is_none();
            if is_last && is_incomplete(invalid) {
                self.pending = invalid.to_vec();
            } else {
                out.push(char::REPLACEMENT_CHARACTER);
            }
        }
    }

    /// Ends the stream: an incomplete character left over becomes U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            self.pending.clear();
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
}

/// Whether `bytes` (an invalid sequence as `Utf8Chunks` reports it) is the start of a valid
/// character rather than bytes that can never be one.
fn is_incomplete(bytes: &[u8]) -> bool {
    matches!(std::str::from_utf8(bytes), Err(e) if e.error_len().is_none())
}

/// Cuts the text of one pipe into whole lines, holding a partial line until its newline.
#[derive(Debug, Default)]
pub struct LineSplitter {
    decoder: Utf8Stream,
    /// Text after the last newline seen.
    partial: String,
}

impl LineSplitter {
    /// Feeds the next bytes; returns the lines they complete, without their newlines.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.decoder.push(bytes, &mut self.partial);
        let mut lines = Vec::new();
        if let Some(last) = self.partial.rfind('\n') {
            let rest = self.partial.split_off(last + 1);
            let done = std::mem::replace(&mut self.partial, rest);
            lines.extend(done[..last].split('\n').map(String::from));
        }
        while self.partial.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !self.partial.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = self.partial.split_off(cut);
            lines.push(std::mem::replace(&mut self.partial, rest));
        }
        lines
    }

    /// The partial line held back, if any (an incomplete character in it becomes U+FFFD):
    /// for when the output ends or bytes before the next ones were lost.
    pub fn flush(&mut self) -> Option<String> {
        self.decoder.finish(&mut self.partial);
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

/// The label of each instance in a run: its name when it has one of its own (not its id) that
/// no other target shares, else its id. Takes and returns `(instance id, name)` pairs.
pub fn labels(instances: &[(String, String)]) -> Vec<(String, String)> {
    let shared = |name: &str| instances.iter().filter(|(_, n)| n == name).count() > 1;
    instances
        .iter()
        .map(|(id, name)| {
            let label = if name.is_empty() || name == id || shared(name) {
                id.clone()
            } else {
                name.clone()
            };
            (id.clone(), label)
        })
        .collect()
}

/// One line describing how a result ended: status, exit code, and the error code and error
/// info when there are any, e.g. `Failed, exit code 2, ExitCodeNonzero`.
pub fn outcome(result: &InvocationResult) -> String {
    let exit_code = result.exit_code.map_or_else(|| "-".to_string(), |c| c.to_string());
    let mut line = format!("{}, exit code {exit_code}", result.invocation_status);
    let info = result.error_info.as_deref().filter(|i| !i.is_empty());
    match (result.error_code, info) {
        (Some(code), Some(info)) => _ = write!(line, ", {code}: {info}"),
        (Some(code), None) => _ = write!(line, ", {code}"),
        (None, Some(info)) => _ = write!(line, ", {info}"),
        (None, None) => {}
    }
    if result.dropped > 0 {
        _ = write!(line, " ({} bytes of output not kept)", result.dropped);
    }
    line
}

/// What is printed of one instance so far.
struct InstanceOutput {
    /// `label:` padded to the run's label width, and a space.
    prefix: String,
    /// Offset of the next byte expected in the instance's output (both pipes count); an
    /// event starting later means the server did not keep the bytes between.
    next_offset: u64,
    stdout: LineSplitter,
    stderr: LineSplitter,
}

impl InstanceOutput {
    fn new(label: &str, width: usize) -> Self {
        InstanceOutput {
            prefix: format!("{:<width$} ", format!("{label}:"), width = width + 1),
            next_offset: 0,
            stdout: LineSplitter::default(),
            stderr: LineSplitter::default(),
        }
    }
}

/// Prints the live output of the instances of one run: whole lines, each prefixed with its
/// instance's label so that the text of all instances lines up. Lines of the command's stdout
/// go to `out`; its stderr, and notes about instances, go to `err`.
pub struct Printer<O, E> {
    out: O,
    err: E,
    instances: HashMap<String, InstanceOutput>,
    /// Width the labels are padded to.
    width: usize,
}

impl<O: Write, E: Write> Printer<O, E> {
    /// A printer for instances given as `(instance id, label)` pairs (see [`labels`]).
    pub fn new(labels: &[(String, String)], out: O, err: E) -> Self {
        let width = labels
            .iter()
            .map(|(_, label)| label.chars().count())
            .max()
            .unwrap_or(0)
            .min(MAX_LABEL_WIDTH);
        let instances = labels
            .iter()
            .map(|(id, label)| (id.clone(), InstanceOutput::new(label, width)))
            .collect();
        Printer {
            out,
            err,
            instances,
            width,
        }
    }

    /// Prints the lines completed by a piece of output that starts at `offset` in the
    /// instance's output. Bytes already printed are skipped; a gap is reported on `err`.
    pub fn output(&mut self, instance_id: &str, offset: u64, stream: OutputStream, data: &[u8]) -> io::Result<()> {
        let width = self.width;
        let instance = self
            .instances
            .entry(instance_id.to_string())
            .or_insert_with(|| InstanceOutput::new(instance_id, width));
        if offset > instance.next_offset {
            let lost = offset - instance.next_offset;
            flush_partials(instance, &mut self.out, &mut self.err)?;
            writeln!(self.err, "{}… {lost} bytes not kept …", instance.prefix)?;
        }
        // The server never sends a byte twice, but a repeat must not be printed twice.
        let skip = instance.next_offset.saturating_sub(offset);
        let Some(data) = data.get(usize::try_from(skip).unwrap_or(usize::MAX)..) else {
            return Ok(());
        };
        instance.next_offset = offset.max(instance.next_offset) + data.len() as u64;
        let (splitter, writer): (_, &mut dyn Write) = match stream {
            OutputStream::Stdout => (&mut instance.stdout, &mut self.out),
            OutputStream::Stderr => (&mut instance.stderr, &mut self.err),
        };
        for line in splitter.push(data) {
            writeln!(writer, "{}{line}", instance.prefix)?;
        }
        self.flush()
    }

    /// The instance's output has ended: prints its partial lines, each with a newline.
    pub fn end(&mut self, instance_id: &str) -> io::Result<()> {
        if let Some(instance) = self.instances.get_mut(instance_id) {
            flush_partials(instance, &mut self.out, &mut self.err)?;
        }
        self.flush()
    }

    /// Every output has ended.
    pub fn finish(&mut self) -> io::Result<()> {
        for instance in self.instances.values_mut() {
            flush_partials(instance, &mut self.out, &mut self.err)?;
        }
        self.flush()
    }

    /// Prints a line about an instance on `err`, with the instance's prefix.
    pub fn note(&mut self, instance_id: &str, text: &str) -> io::Result<()> {
        let width = self.width;
        let instance = self
            .instances
            .entry(instance_id.to_string())
            .or_insert_with(|| InstanceOutput::new(instance_id, width));
        writeln!(self.err, "{}{text}", instance.prefix)?;
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.err.flush()
    }
}

fn flush_partials(instance: &mut InstanceOutput, out: &mut impl Write, err: &mut impl Write) -> io::Result<()> {
    if let Some(line) = instance.stdout.flush() {
        writeln!(out, "{}{line}", instance.prefix)?;
    }
    if let Some(line) = instance.stderr.flush() {
        writeln!(err, "{}{line}", instance.prefix)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, ResultStatus};

    fn decode(chunks: &[&[u8]]) -> String {
        let mut stream = Utf8Stream::default();
        let mut text = String::new();
        for chunk in chunks {
            stream.push(chunk, &mut text);
        }
        stream.finish(&mut text);
        text
    }

    #[test]
    fn a_character_split_across_chunks_comes_out_whole() {
        assert_eq!(decode(&[b"\xe4", b"\xb8\xad\n"]), "中\n");
        assert_eq!(decode(&[b"a\xe4\xb8", b"\xadb"]), "a中b");
        assert_eq!(decode(&[b"\xf0", b"\x9f", b"\x98", b"\x80"]), "😀");
    }

    #[test]
    fn only_truly_invalid_bytes_become_replacement_characters() {
        assert_eq!(decode(&[b"a\xffb"]), "a\u{fffd}b");
        assert_eq!(decode(&[b"\xe4", b"x"]), "\u{fffd}x");
        assert_eq!(decode(&[b"ok\xe4\xb8"]), "ok\u{fffd}");
    }

    #[test]
    fn lines_are_released_only_when_whole() {
        let mut lines = LineSplitter::default();

        assert_eq!(lines.push(b"out1\npart"), ["out1"]);
        assert!(lines.push(b"ial").is_empty());
        assert_eq!(lines.push(b" line\na\n\nb"), ["partial line", "a", ""]);
        assert_eq!(lines.flush().as_deref(), Some("b"));
        assert_eq!(lines.flush(), None);
    }

    #[test]
    fn a_line_without_newline_is_released_in_bounded_pieces() {
        let mut lines = LineSplitter::default();

        let pieces = lines.push("é".repeat(MAX_LINE_BYTES).as_bytes());

        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines.flush().map(|rest| rest.len()), Some(MAX_LINE_BYTES));
    }

    #[test]
    fn names_label_instances_unless_missing_or_shared() {
        let targets = [
            ("i-1".to_string(), "web-1".to_string()),
            ("i-2".to_string(), "i-2".to_string()),
            ("i-3".to_string(), "db".to_string()),
            ("i-4".to_string(), "db".to_string()),
        ];

        let labels: Vec<String> = labels(&targets).into_iter().map(|(_, l)| l).collect();

        assert_eq!(labels, ["web-1", "i-2", "i-3", "i-4"]);
    }

    fn printer() -> Printer<Vec<u8>, Vec<u8>> {
        let labels = [
            ("i-1".to_string(), "web-1".to_string()),
            ("i-22".to_string(), "i-22".to_string()),
        ];
        Printer::new(&labels, Vec::new(), Vec::new())
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn lines_are_prefixed_per_instance_and_pipes_stay_apart() {
        let mut p = printer();

        p.output("i-1", 0, OutputStream::Stdout, b"out1\npartial").unwrap();
        p.output("i-22", 0, OutputStream::Stdout, b"partial").unwrap();
        p.output("i-1", 12, OutputStream::Stderr, b"err1\n").unwrap();
        p.output("i-1", 17, OutputStream::Stdout, b" line\n").unwrap();
        p.output("i-22", 7, OutputStream::Stderr, b"no newline").unwrap();
        p.end("i-22").unwrap();

        assert_eq!(text(&p.out), "web-1: out1\nweb-1: partial line\ni-22:  partial\n");
        assert_eq!(text(&p.err), "web-1: err1\ni-22:  no newline\n");
    }

    #[test]
    fn a_gap_in_offsets_flushes_the_partial_line_and_says_so() {
        let mut p = printer();

        p.output("i-1", 0, OutputStream::Stdout, b"head").unwrap();
        p.output("i-1", 104, OutputStream::Stdout, b"tail\n").unwrap();
        p.output("i-1", 106, OutputStream::Stdout, b"il\nmore\n").unwrap();

        assert_eq!(text(&p.out), "web-1: head\nweb-1: tail\nweb-1: more\n");
        assert_eq!(text(&p.err), "web-1: … 100 bytes not kept …\n");
    }

    #[test]
    fn outcomes_name_status_exit_code_and_reason() {
        let mut result = InvocationResult {
            instance_id: "i-1".into(),
            invocation_status: ResultStatus::Success,
            exit_code: Some(0),
            error_code: None,
            error_info: None,
            output: String::new(),
            dropped: 0,
            start_time: None,
            finish_time: None,
            stop_time: None,
            repeats: 1,
        };
        assert_eq!(outcome(&result), "Success, exit code 0");

        result.invocation_status = ResultStatus::Aborted;
        result.exit_code = None;
        result.error_code = Some(ErrorCode::ClientNotRunning);
        result.error_info = Some("The agent is not running.".into());
        result.dropped = 7;
        assert_eq!(
            outcome(&result),
            "Aborted, exit code -, ClientNotRunning: The agent is not running. (7 bytes of output not kept)"
        );
    }
}
