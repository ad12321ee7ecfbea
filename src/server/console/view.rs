//! What every console page shares: URLs, rendering a template, the pager, and how times,
//! durations and statuses read on screen.

use super::error::PageError;
use crate::protocol::InvocationStatus;
use askama::Template;
use axum::response::{Html, IntoResponse, Response};

/// Console URLs used in more than one place.
pub struct Url;

impl Url {
    pub const INSTANCES: &'static str = "/console/instances";
    pub const LOGIN: &'static str = "/login";
}

/// Renders a template into an HTML answer.
pub fn render<T: Template>(template: &T) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => PageError::from(e).into_response(),
    }
}

/// Pagination of a listing page. `link(page)` is the listing's URL for another page.
#[derive(Debug, Clone)]
pub struct Pager {
    pub page: u64,
    pub page_size: u64,
    pub total: u64,
    /// The listing's URL with its filters, ending in `page=` (the pager adds the number).
    pub base: String,
}

impl Pager {
    pub fn new(page: Option<u64>, page_size: u64) -> Pager {
        // Clamped, so that an absurd page number is just an empty page.
        Pager {
            page: page.unwrap_or(1).clamp(
                *crate::dispatch::check::PAGES.start(),
                *crate::dispatch::check::PAGES.end(),
            ),
            page_size,
            total: 0,
            base: String::new(),
        }
    }

    /// The pager of a listing at `path` with these filters.
    pub fn with(mut self, total: u64, path: &str, filters: &[(&str, &str)]) -> Pager {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(filters.iter().filter(|(_, v)| !v.is_empty()))
            .finish();
        self.total = total;
        self.base = if query.is_empty() {
            format!("{path}?page=")
        } else {
            format!("{path}?{query}&page=")
        };
        self
    }

    pub fn offset(&self) -> u64 {
        (self.page - 1) * self.page_size
    }

    pub fn pages(&self) -> u64 {
        self.total.div_ceil(self.page_size).max(1)
    }

    pub fn has_prev(&self) -> bool {
        self.page > 1
    }

    pub fn has_next(&self) -> bool {
        self.page < self.pages()
    }

    pub fn prev(&self) -> u64 {
        self.page.saturating_sub(1).max(1)
    }

    pub fn next(&self) -> u64 {
        self.page + 1
    }
}

/// A stored time for people: `<time>` text in UTC, which `console.js` turns into the reader's
/// own time zone (with UTC kept in the tooltip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct When {
    /// RFC 3339, for the `datetime` attribute.
    pub iso: String,
    /// `2026-11-27 21:05:03 UTC`, shown until the script localises it.
    pub text: String,
}

impl When {
    pub fn new(ms: i64) -> When {
        let time = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
        When {
            iso: time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            text: time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        }
    }
}

impl std::fmt::Display for When {
    /// As `<time>` markup; templates print it with `|safe` (our own text, no user input).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "<time datetime=\"{}\" title=\"{}\">{}</time>",
            self.iso, self.text, self.text
        )
    }
}

/// A duration in milliseconds for people: `850 ms`, `3.2 s`, `4 min 05 s`.
pub fn duration(ms: i64) -> String {
    match ms {
        ..=0 => "0 ms".into(),
        1..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The badge class of an overall status.
pub fn status_class(status: InvocationStatus) -> &'static str {
    match status {
        InvocationStatus::Success => "ok",
        InvocationStatus::Failed | InvocationStatus::PartialFailed => "bad",
        InvocationStatus::Stopped => "muted",
        _ => "busy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(3_200), "3.2 s");
        assert_eq!(duration(245_000), "4 min 05 s");
    }

    #[test]
    fn pager_counts_pages_and_keeps_filters_in_its_links() {
        let pager = Pager::new(Some(2), 50).with(120, "/console/instances", &[("q", "web 1"), ("status", "")]);
        assert_eq!((pager.offset(), pager.pages(), pager.has_next()), (50, 3, true));
        assert_eq!(pager.base, "/console/instances?q=web+1&page=");
    }

    #[test]
    fn times_say_they_are_utc() {
        let when = When::new(0);
        assert_eq!(when.text, "1970-01-01 00:00:00 UTC");
        assert_eq!(when.iso, "1970-01-01T00:00:00.000Z");
    }
}
