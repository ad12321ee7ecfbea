//! HTML built in Rust rather than in a template: command output, escaped, with ANSI colours
//! turned into classes *after* escaping, so no byte of output can become markup.

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

/// Output bytes as HTML: escaped, invalid UTF-8 replaced, SGR colour codes (`ESC[…m`) as
/// `<span class="ansi-…">`, other escape sequences dropped.
pub fn output_html(data: &[u8], stream: OutputStream) -> String {
    let text = String::from_utf8_lossy(data);
    let mut out = String::with_capacity(text.len() + 64);
    out.push_str(match stream {
        OutputStream::Stdout => "<span class=\"stdout\">",
        OutputStream::Stderr => "<span class=\"stderr\">",
    });
    let mut open = 0;
    let mut rest: &str = &text;
    while let Some(esc) = rest.find('\u{1b}') {
        escape(&rest[..esc], &mut out);
        rest = &rest[esc + 1..];
        let Some(params) = rest.strip_prefix('[') else {
            continue;
        };
        // A CSI sequence: parameters, then one final byte in @..~.
        let Some(end) = params.find(|c: char| ('@'..='~').contains(&c)) else {
            rest = params;
            continue;
        };
        if params.as_bytes()[end] == b'm' {
            for code in params[..end].split(';') {
                match code.parse::<u8>().unwrap_or(0) {
                    0 => {
                        out.push_str(&"</span>".repeat(open));
                        open = 0;
                    }
                    code @ (1 | 30..=37 | 90..=97 | 40..=47) => {
                        out.push_str(&format!("<span class=\"ansi-{code}\">"));
                        open += 1;
                    }
                    _ => {}
                }
            }
        }
        rest = &params[end + 1..];
    }
    escape(rest, &mut out);
    out.push_str(&"</span>".repeat(open));
    out.push_str("</span>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_output_is_escaped() {
        let html = output_html(
            b"<script>alert(1)</script><img src=x onerror=alert(2)>",
            OutputStream::Stdout,
        );
        assert_eq!(
            html,
            "<span class=\"stdout\">&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;</span>"
        );
    }

    #[test]
    fn ansi_colours_become_classes_after_escaping() {
        let html = output_html(b"\x1b[31m<red>\x1b[0m plain \x1b[2Kx", OutputStream::Stderr);
        assert_eq!(
            html,
            "<span class=\"stderr\"><span class=\"ansi-31\">&lt;red&gt;</span> plain x</span>"
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        assert!(output_html(b"a\xffb", OutputStream::Stdout).contains("a\u{fffd}b"));
    }
}
