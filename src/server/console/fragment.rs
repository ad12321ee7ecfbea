//! Command output as HTML, built in Rust rather than in a template: escaped, with ANSI colours
//! turned into classes *after* escaping, so no byte of output can become markup.
//!
//! Output arrives in chunks that split characters and escape sequences anywhere, so it is
//! decoded as a stream: [`OutputRenderer`] keeps, per pipe, the incomplete tail of the last
//! chunk (a partial UTF-8 character or `ESC[…` sequence) and the colours in effect, and every
//! fragment it returns is balanced HTML on its own.

use crate::protocol::OutputStream;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Longest escape sequence held back for the next chunk.
const MAX_SEQUENCE: usize = 64;

/// Decoding state of one pipe.
#[derive(Debug, Default)]
struct Pipe {
    /// Bytes of the last chunk that do not make a whole character or escape sequence yet.
    pending: Vec<u8>,
    /// The SGR attributes in effect, re-opened at the start of each fragment.
    colours: Colours,
}

/// The SGR attributes in effect: at most one of each kind, so the state stays small however
/// many codes the output sends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Colours {
    bold: bool,
    /// 30–37, 90–97.
    foreground: Option<u8>,
    /// 40–47.
    background: Option<u8>,
}

impl Colours {
    /// Applies one SGR parameter; returns whether anything changed.
    fn apply(&mut self, code: u8) -> bool {
        let before = *self;
        match code {
            0 => *self = Colours::default(),
            1 => self.bold = true,
            22 => self.bold = false,
            30..=37 | 90..=97 => self.foreground = Some(code),
            39 => self.foreground = None,
            40..=47 => self.background = Some(code),
            49 => self.background = None,
            _ => {}
        }
        *self != before
    }

    /// The classes in effect, outermost first.
    fn classes(self) -> impl Iterator<Item = u8> {
        [self.bold.then_some(1), self.foreground, self.background]
            .into_iter()
            .flatten()
    }
}

/// Turns one instance's output chunks into HTML fragments, decoding each pipe as a stream.
#[derive(Debug, Default)]
pub struct OutputRenderer {
    stdout: Pipe,
    stderr: Pipe,
}

impl OutputRenderer {
    fn pipe(&mut self, stream: OutputStream) -> &mut Pipe {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        }
    }

    /// The HTML of the next chunk of `stream`. May hold back a few trailing bytes until the
    /// chunk that completes them.
    pub fn render(&mut self, data: &[u8], stream: OutputStream) -> String {
        let pipe = self.pipe(stream);
        let mut bytes = std::mem::take(&mut pipe.pending);
        bytes.extend_from_slice(data);
        let (text, rest) = decode_utf8(&bytes);
        let mut out = String::with_capacity(text.len() + 64);
        open(&mut out, stream, pipe.colours);
        let unfinished = colourise(&text, &mut pipe.colours, &mut out);
        close(&mut out, pipe.colours);
        pipe.pending = [unfinished.as_bytes(), rest].concat();
        out
    }

    /// Output was skipped (the middle of a long output that was not kept): what is pending can
    /// never be completed, so it is shown as replacement characters, with a marker.
    pub fn gap(&mut self, skipped: u64) -> String {
        let mut out = self.flush();
        out.push_str(&format!("<span class=\"gap\">\n… {skipped} bytes not kept …\n</span>"));
        out
    }

    /// Shows what is pending as it is (invalid bytes replaced): the output has ended.
    pub fn flush(&mut self) -> String {
        let mut out = String::new();
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let pipe = self.pipe(stream);
            if pipe.pending.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(&std::mem::take(&mut pipe.pending)).into_owned();
            open(&mut out, stream, pipe.colours);
            escape(&text, &mut out);
            close(&mut out, pipe.colours);
        }
        out
    }
}

/// Decodes as much of `bytes` as possible: invalid bytes become U+FFFD, an incomplete
/// character at the very end is returned undecoded.
fn decode_utf8(bytes: &[u8]) -> (String, &[u8]) {
    let mut text = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                return (text, &[]);
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(&String::from_utf8_lossy(valid));
                match e.error_len() {
                    Some(bad) => {
                        text.push('\u{fffd}');
                        rest = &after[bad..];
                    }
                    None => return (text, after),
                }
            }
        }
    }
}

fn open(out: &mut String, stream: OutputStream, colours: Colours) {
    out.push_str(match stream {
        OutputStream::Stdout => "<span class=\"stdout\">",
        OutputStream::Stderr => "<span class=\"stderr\">",
    });
    open_colours(out, colours);
}

fn open_colours(out: &mut String, colours: Colours) {
    for code in colours.classes() {
        out.push_str(&format!("<span class=\"ansi-{code}\">"));
    }
}

fn close_colours(out: &mut String, colours: Colours) {
    out.push_str(&"</span>".repeat(colours.classes().count()));
}

fn close(out: &mut String, colours: Colours) {
    close_colours(out, colours);
    out.push_str("</span>");
}

/// Escapes `text` into `out`, turning SGR colour codes (`ESC[…m`) into spans and dropping other
/// escape sequences. Returns an escape sequence cut off at the end, to complete next time.
fn colourise<'a>(text: &'a str, colours: &mut Colours, out: &mut String) -> &'a str {
    let mut rest = text;
    while let Some(esc) = rest.find('\u{1b}') {
        escape(&rest[..esc], out);
        let sequence = &rest[esc..];
        let Some(params) = sequence[1..].strip_prefix('[') else {
            if sequence.len() == 1 {
                return sequence;
            }
            rest = &sequence[1..];
            continue;
        };
        // A CSI sequence: parameters, then one final byte in @..~. One cut off at the end waits
        // for the next chunk, unless it is too long to be real (then it is shown as text).
        let Some(end) = params.find(|c: char| ('@'..='~').contains(&c)) else {
            if sequence.len() <= MAX_SEQUENCE {
                return sequence;
            }
            rest = &sequence[1..];
            continue;
        };
        if params.as_bytes()[end] == b'm' {
            // The spans follow the state: closed and re-opened when a code changes it.
            let mut next = *colours;
            let changed = params[..end]
                .split(';')
                .fold(false, |changed, code| next.apply(code.parse().unwrap_or(0)) | changed);
            if changed {
                close_colours(out, *colours);
                open_colours(out, next);
                *colours = next;
            }
        }
        rest = &params[end + 1..];
    }
    escape(rest, out);
    ""
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html(chunks: &[&[u8]]) -> String {
        let mut renderer = OutputRenderer::default();
        let mut out: String = chunks
            .iter()
            .map(|c| renderer.render(c, OutputStream::Stdout))
            .collect();
        out.push_str(&renderer.flush());
        out
    }

    /// The text a browser shows for `html`: tags removed, entities decoded.
    fn shown(html: &str) -> String {
        let mut text = String::new();
        let mut in_tag = false;
        for c in html.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    }

    #[test]
    fn markup_in_output_is_escaped() {
        let out = html(&[b"<script>alert(1)</script><img src=x onerror=alert(2)>"]);
        assert_eq!(
            out,
            "<span class=\"stdout\">&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;</span>"
        );
    }

    #[test]
    fn ansi_colours_become_classes_after_escaping() {
        let mut renderer = OutputRenderer::default();
        let out = renderer.render(b"\x1b[31m<red>\x1b[0m plain \x1b[2Kx", OutputStream::Stderr);
        assert_eq!(
            out,
            "<span class=\"stderr\"><span class=\"ansi-31\">&lt;red&gt;</span> plain x</span>"
        );
    }

    #[test]
    fn a_character_split_across_chunks_is_shown_whole() {
        let zhong = "中".as_bytes();
        let out = html(&[b"a", &zhong[..1], &zhong[1..2], &zhong[2..], b"b\n"]);
        assert_eq!(shown(&out), "a中b\n");
        assert!(!out.contains('\u{fffd}'), "{out}");
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped_and_a_cut_tail_shows_at_the_end() {
        assert_eq!(shown(&html(&[b"a\xffb"])), "a\u{fffd}b");
        assert_eq!(shown(&html(&[b"a\xe4\xb8"])), "a\u{fffd}");
    }

    #[test]
    fn colours_and_escape_sequences_carry_across_chunks() {
        let out = html(&[b"\x1b[3", b"2mgreen", b" still\x1b[0m plain"]);
        assert_eq!(shown(&out), "green still plain");
        assert_eq!(
            out.matches("ansi-32").count(),
            2,
            "re-opened in the next fragment: {out}"
        );
    }

    #[test]
    fn colours_replace_one_another_and_reset_by_kind() {
        let mut out = String::new();
        let mut renderer = OutputRenderer::default();
        for word in 0..1000 {
            out = renderer.render(format!("\x1b[32mPASS {word}\x1b[39m ").as_bytes(), OutputStream::Stdout);
        }
        assert_eq!(
            out, "<span class=\"stdout\"><span class=\"ansi-32\">PASS 999</span> </span>",
            "the state does not grow"
        );
        let bold = renderer.render(b"\x1b[1;31mA\x1b[22mB\x1b[0mC", OutputStream::Stdout);
        assert_eq!(
            bold,
            "<span class=\"stdout\"><span class=\"ansi-1\"><span class=\"ansi-31\">A</span></span><span class=\"ansi-31\">B</span>C</span>"
        );
    }

    #[test]
    fn an_endless_escape_sequence_is_not_held_back_forever() {
        let long = format!("\x1b[{}", "1;".repeat(100));
        let mut renderer = OutputRenderer::default();
        let out = renderer.render(long.as_bytes(), OutputStream::Stdout);
        assert!(shown(&out).starts_with("[1;1;"), "{out}");
    }

    #[test]
    fn a_gap_flushes_and_marks_the_skipped_bytes() {
        let mut renderer = OutputRenderer::default();
        renderer.render(&"中".as_bytes()[..2], OutputStream::Stdout);
        let out = renderer.gap(1000);
        assert!(
            shown(&out).contains("\u{fffd}") && shown(&out).contains("1000 bytes not kept"),
            "{out}"
        );
    }
}
