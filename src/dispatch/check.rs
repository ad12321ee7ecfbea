//! Pure validators: each takes raw input and returns a checked value (a newtype where the value
//! travels on) or a typed [`Error::Invalid`] naming the field and saying how to fix it. Every
//! limit of DESIGN.md §7 that concerns one value lives here, once; no surface repeats one.

use super::error::{Error, Field, invalid};
use crate::protocol::api::ContentEncoding;
use crate::protocol::{InvocationStatus, RateInput, RateLimit};
use crate::store::{Cursor, Role};
use base64::Engine as _;
use std::collections::HashSet;

/// Longest retained-command name, description, working directory and username (Alibaba's).
pub const MAX_NAME: usize = 128;
pub const MAX_DESCRIPTION: usize = 512;
pub const MAX_WORKING_DIR: usize = 200;
pub const MAX_USERNAME: usize = 255;
/// Timeout range: one second to seven days.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=7 * 24 * 3600;
/// Most instances one activation may enrol (Alibaba: 1,000; we allow more) and its longest life.
pub const ACTIVATION_INSTANCES: std::ops::RangeInclusive<u64> = 1..=100_000;
pub const ACTIVATION_TTL_HOURS: std::ops::RangeInclusive<u64> = 1..=24 * 365;
/// Longest activation description (Alibaba's).
pub const MAX_ACTIVATION_DESCRIPTION: usize = 100;
/// Console account passwords.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 12..=256;
/// API token lifetimes.
pub const TOKEN_DAYS: std::ops::RangeInclusive<u64> = 1..=3650;
/// Longest API token name and instance name.
pub const MAX_TOKEN_NAME: usize = 64;
pub const MAX_INSTANCE_NAME: usize = 128;
/// Longest AccessKey description.
pub const MAX_ACCESS_KEY_DESCRIPTION: usize = 128;

/// Pages of a listing: `page` from 1, `page_size` up to 1,000 (default 100).
pub const PAGES: std::ops::RangeInclusive<u64> = 1..=1_000_000_000;
pub const PAGE_SIZES: std::ops::RangeInclusive<u64> = 1..=1000;

/// The offset and limit of a listing page; an absent page is the first, an absent size 100.
pub fn page_window(page: Option<u64>, page_size: Option<u64>) -> Result<(u64, u64), Error> {
    let (page, page_size) = (page.unwrap_or(1), page_size.unwrap_or(100));
    if !PAGES.contains(&page) || !PAGE_SIZES.contains(&page_size) {
        return Err(invalid(
            Field::Page,
            format!(
                "`page` must be between 1 and {} and `page_size` between 1 and {}",
                PAGES.end(),
                PAGE_SIZES.end()
            ),
        ));
    }
    Ok(((page - 1).saturating_mul(page_size), page_size))
}

/// The `next_token` of a listing page that has more after it: where the next page starts.
pub fn next_token(cursor: &Cursor) -> String {
    format!("{}.{}", cursor.created_at, cursor.id)
}

/// Reads a `next_token` back (one this server gave out).
pub fn cursor(token: &str) -> Result<Cursor, Error> {
    token
        .split_once('.')
        .and_then(|(at, id)| {
            let valid_id =
                !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            Some(Cursor {
                created_at: at.parse().ok()?,
                id: id.to_string(),
            })
            .filter(|_| valid_id)
        })
        .ok_or_else(|| {
            invalid(
                Field::NextToken,
                "`next_token` is not one this server gave out: pass the `next_token` of the previous \
                 page unchanged, or leave it out for the first page",
            )
        })
}

/// `page` and `next_token` together: a page number counts from the start, a token from a row.
pub fn both_page_and_token() -> Error {
    invalid(
        Field::NextToken,
        "`page` and `next_token` cannot be used together: follow `next_token` alone (with the same \
         filters and `page_size`), or use `page` alone",
    )
}

/// An overall-status filter of a listing; blank or absent means any.
pub fn invocation_status(text: Option<&str>) -> Result<Option<InvocationStatus>, Error> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            let all: Vec<&str> = InvocationStatus::ALL.iter().map(|s| s.as_str()).collect();
            invalid(
                Field::Status,
                format!("status {text:?} is not one of {}", all.join(", ")),
            )
        }),
    }
}

/// An instance-status filter (`Running`: heartbeat fresh; `Stopped`: not); blank means any.
pub fn instance_running(text: Option<&str>) -> Result<Option<bool>, Error> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some("Running") => Ok(Some(true)),
        Some("Stopped") => Ok(Some(false)),
        Some(other) => Err(invalid(
            Field::Status,
            format!("instance status {other:?} is not one of Running, Stopped"),
        )),
    }
}

/// A whole number typed into a form field; a surface that takes text calls this before the
/// domain checks the range, so both surfaces give the same refusal for a bad number.
pub fn whole_number(field: Field, text: &str) -> Result<u64, Error> {
    text.trim().parse().map_err(|_| {
        invalid(
            field,
            format!("`{}` must be a whole number, not {:?}", field.form_name(), text.trim()),
        )
    })
}

/// A number within a range.
fn in_range(field: Field, json_name: &str, value: u64, range: std::ops::RangeInclusive<u64>) -> Result<u64, Error> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!(
                "`{json_name}` is {value}; it must be between {} and {}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// A command timeout, 1 s to 7 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(u64);

impl Timeout {
    pub fn parse(secs: u64) -> Result<Timeout, Error> {
        if TIMEOUT_RANGE.contains(&secs) {
            Ok(Timeout(secs))
        } else {
            Err(invalid(
                Field::Timeout,
                format!("`timeout_secs` is {secs}; it must be between 1 and 604800 (7 days)"),
            ))
        }
    }

    pub fn secs(self) -> u64 {
        self.0
    }
}

/// An absolute working directory (Unix or Windows), at most 200 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingDir(String);

impl WorkingDir {
    /// Blank counts as absent; spaces around the path are never meant and are dropped.
    pub fn parse(value: Option<String>) -> Result<Option<WorkingDir>, Error> {
        let Some(dir) = value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        if dir.chars().count() > MAX_WORKING_DIR {
            return Err(invalid(
                Field::WorkingDir,
                format!("`working_dir` is longer than {MAX_WORKING_DIR} characters"),
            ));
        }
        if dir.chars().any(char::is_control) {
            return Err(invalid(Field::WorkingDir, "`working_dir` contains control characters"));
        }
        let windows_absolute = dir.len() >= 3 && dir.as_bytes()[1] == b':' && matches!(dir.as_bytes()[2], b'\\' | b'/');
        if !dir.starts_with('/') && !windows_absolute {
            return Err(invalid(
                Field::WorkingDir,
                format!("`working_dir` {dir:?} is not an absolute path: use one like /var/tmp or C:\\Temp"),
            ));
        }
        Ok(Some(WorkingDir(dir)))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The account on an instance a command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Blank counts as absent; spaces around the name are never meant and are dropped.
    pub fn parse(value: Option<String>) -> Result<Option<Username>, Error> {
        let Some(name) = value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let valid = name.len() <= MAX_USERNAME
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '$' | '\\' | '@'));
        if !valid {
            return Err(invalid(
                Field::Username,
                format!(
                    "`username` {name:?} is not a valid account name (letters, digits, . _ - $ \\ @; at most {MAX_USERNAME})"
                ),
            ));
        }
        Ok(Some(Username(name)))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A region id: lowercase letters, digits and dashes, 1–64 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionId(String);

impl RegionId {
    pub fn parse(region: &str) -> Result<RegionId, Error> {
        let valid = !region.is_empty()
            && region.len() <= 64
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(RegionId(region.to_string()))
        } else {
            Err(invalid(
                Field::RegionId,
                format!(
                    "region id {region:?} is not valid: use lowercase letters, digits and dashes, like cn-hangzhou"
                ),
            ))
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// An optional line of text: blank counts as absent; at most `max` characters; no control
/// characters but newlines and tabs.
pub fn text(field: Field, json_name: &str, value: Option<String>, max: usize) -> Result<Option<String>, Error> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let chars = value.chars().count();
    if chars > max {
        return Err(invalid(
            field,
            format!("`{json_name}` is {chars} characters; at most {max} are allowed"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid(field, format!("`{json_name}` contains control characters")));
    }
    Ok(Some(value))
}

/// A name that must be given (a retained command's, an instance's, a token's): at most `max`
/// characters, no control characters at all.
pub fn required_name(field: Field, json_name: &str, value: &str, max: usize, what: &str) -> Result<String, Error> {
    let name = value.trim();
    if name.is_empty() {
        return Err(invalid(
            field,
            format!("`{json_name}` is empty: give the {what} a name"),
        ));
    }
    let chars = name.chars().count();
    if chars > max {
        return Err(invalid(
            field,
            format!("`{json_name}` is {chars} characters; at most {max} are allowed"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(field, format!("`{json_name}` contains control characters")));
    }
    Ok(name.to_string())
}

/// Decodes command content and checks it: valid encoding, UTF-8, not empty, no NUL, within
/// `max` bytes after decoding.
pub fn content(text: &str, encoding: ContentEncoding, max: usize) -> Result<String, Error> {
    const FIELD: Field = Field::CommandContent;
    let content = match encoding {
        ContentEncoding::PlainText => text.to_string(),
        ContentEncoding::Base64 => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim().as_bytes())
                .map_err(|e| invalid(FIELD, format!("`command_content` is not valid Base64 ({e}): encode it again, or set content_encoding to PlainText")))?;
            String::from_utf8(bytes)
                .map_err(|_| invalid(FIELD, "`command_content` decodes to bytes that are not UTF-8 text"))?
        }
    };
    if content.trim().is_empty() {
        return Err(invalid(FIELD, "`command_content` is empty: write the command to run"));
    }
    if content.len() > max {
        return Err(invalid(
            FIELD,
            format!(
                "`command_content` is {} bytes; the limit is {max} bytes ({} KiB) after decoding: shorten it, or ship a script file and run that",
                content.len(),
                max / 1024
            ),
        ));
    }
    if content.contains('\0') {
        return Err(invalid(
            FIELD,
            "`command_content` contains a NUL byte, which no shell can run",
        ));
    }
    Ok(content)
}

/// Rate control of one run (issue 14), checked: the limits as given, resolved against the
/// instance count when the invocation is stored ([`RateControl::limits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateControl {
    /// Instances running at once; `None`: all at once.
    pub max_concurrency: Option<RateLimit>,
    /// Failed results allowed before the ones not started are cancelled; `None`: no limit.
    pub max_errors: Option<RateLimit>,
}

impl RateControl {
    /// Checks `max_concurrency` and `max_errors` as given (absent or blank: not set). A count
    /// may not exceed `max_instances`, the most one invocation targets; concurrency must allow
    /// at least one instance (1 or more, or 1% or more).
    pub fn parse(
        max_concurrency: Option<RateInput>,
        max_errors: Option<RateInput>,
        max_instances: usize,
    ) -> Result<RateControl, Error> {
        Ok(RateControl {
            max_concurrency: rate_limit(
                Field::MaxConcurrency,
                "max_concurrency",
                max_concurrency,
                1,
                max_instances,
            )?,
            max_errors: rate_limit(Field::MaxErrors, "max_errors", max_errors, 0, max_instances)?,
        })
    }

    /// The limits as the audit log records them: ", max_concurrency 5, max_errors 10%", or
    /// nothing without.
    pub fn audit_text(&self) -> String {
        let mut text = String::new();
        if let Some(c) = self.max_concurrency {
            text.push_str(&format!(", max_concurrency {c}"));
        }
        if let Some(e) = self.max_errors {
            text.push_str(&format!(", max_errors {e}"));
        }
        text
    }

    /// The limits for an invocation of `instances` instances, `(concurrency, errors)`: a
    /// percentage rounded up, concurrency at least 1.
    pub fn limits(&self, instances: usize) -> (Option<u64>, Option<u64>) {
        let n = instances as u64;
        (
            self.max_concurrency.map(|c| c.of(n).max(1)),
            self.max_errors.map(|e| e.of(n)),
        )
    }
}

fn rate_limit(
    field: Field,
    name: &str,
    input: Option<RateInput>,
    min: u64,
    max: usize,
) -> Result<Option<RateLimit>, Error> {
    let Some(RateInput(text)) = input.filter(|i| !i.0.trim().is_empty()) else {
        return Ok(None);
    };
    let limit = RateLimit::parse(&text).map_err(|m| invalid(field, format!("`{name}`: {m}")))?;
    let (low, high) = match limit {
        RateLimit::Count(n) => (n < min, n > max as u64),
        RateLimit::Percent(p) => (u64::from(p) < min, false),
    };
    if low {
        return Err(invalid(
            field,
            format!(
                "`{name}` is {limit}; at least {min} instance must run at a time: give {min} or more \
                 (or {min}% or more), or leave it out to run on all at once"
            ),
        ));
    }
    if high {
        return Err(invalid(
            field,
            format!("`{name}` is {limit}; a count is at most {max}, the most instances one invocation may target"),
        ));
    }
    Ok(Some(limit))
}

/// The shape of `instance_ids`: not empty, within the limit, no duplicates.
pub fn instance_ids(ids: &[String], max: usize) -> Result<(), Error> {
    if ids.is_empty() {
        return Err(invalid(
            Field::InstanceIds,
            "`instance_ids` is empty: name at least one instance",
        ));
    }
    if ids.len() > max {
        return Err(invalid(
            Field::InstanceIds,
            format!(
                "{} instances named; one invocation may target at most {max}: split the run",
                ids.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(ids.len());
    if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(invalid(
            Field::InstanceIds,
            format!("instance {dup:?} is named twice in `instance_ids`: name each instance once"),
        ));
    }
    Ok(())
}

/// Most tags an instance carries, and most tags a selector or an invocation names (Alibaba's).
pub const MAX_TAGS: usize = 20;
/// Longest tag key and value, in characters (Alibaba's).
pub const MAX_TAG_KEY: usize = 128;
pub const MAX_TAG_VALUE: usize = 128;
/// Longest `client_token` (Alibaba's `ClientToken`).
pub const MAX_CLIENT_TOKEN: usize = 64;

/// One tag by Alibaba's rules: a key of 1–128 characters, not starting with `aliyun` or `acs:`
/// (reserved for the cloud's own tags) and holding no `http://` or `https://`; a value of 0–128
/// characters without `http://` or `https://`. No control characters in either.
pub fn tag(tag: &crate::protocol::Tag) -> Result<(), Error> {
    let shown = |t: &str| t.chars().take(40).collect::<String>();
    let refuse = |why: String| Err(invalid(Field::Tags, why));
    let key = &tag.key;
    let key_chars = key.chars().count();
    if key.trim().is_empty() {
        return refuse(format!(
            "tag {:?}={:?} has an empty key: a key is 1–{MAX_TAG_KEY} characters, e.g. env=prod",
            shown(key),
            shown(&tag.value)
        ));
    }
    if key_chars > MAX_TAG_KEY {
        return refuse(format!(
            "tag key {:?}… is {key_chars} characters; the limit is {MAX_TAG_KEY}: shorten it",
            shown(key)
        ));
    }
    let lower = key.to_ascii_lowercase();
    if lower.starts_with("aliyun") || lower.starts_with("acs:") {
        return refuse(format!(
            "tag key {key:?} starts with `aliyun` or `acs:`, which are reserved for the cloud's own tags: choose another key"
        ));
    }
    let value_chars = tag.value.chars().count();
    if value_chars > MAX_TAG_VALUE {
        return refuse(format!(
            "the value of tag {key:?} is {value_chars} characters; the limit is {MAX_TAG_VALUE}: shorten it"
        ));
    }
    for (part, text) in [("key", key), ("value", &tag.value)] {
        let text_lower = text.to_ascii_lowercase();
        if text_lower.contains("http://") || text_lower.contains("https://") {
            return refuse(format!(
                "the {part} of tag {key:?} contains `http://` or `https://`, which tags may not hold: leave the scheme out"
            ));
        }
        if text.chars().any(char::is_control) {
            return refuse(format!(
                "the {part} of tag {key:?} contains a control character (a tab or a line break): remove it"
            ));
        }
    }
    Ok(())
}

/// A list of tags: each valid by [`tag`], each key once, at most [`MAX_TAGS`]. `what` names the
/// list in refusals ("instance i-…", "the tag selector").
pub fn tags(tags: &[crate::protocol::Tag], what: &str) -> Result<(), Error> {
    if tags.len() > MAX_TAGS {
        return Err(invalid(
            Field::Tags,
            format!(
                "{what} would have {} tags; at most {MAX_TAGS} are allowed: remove some",
                tags.len()
            ),
        ));
    }
    let mut keys = HashSet::with_capacity(tags.len());
    for t in tags {
        tag(t)?;
        if !keys.insert(t.key.as_str()) {
            return Err(invalid(
                Field::Tags,
                format!("tag key {:?} is given twice for {what}: give each key once", t.key),
            ));
        }
    }
    Ok(())
}

/// A `client_token`: 1–64 printable ASCII characters (Alibaba's `ClientToken`).
pub fn client_token(token: Option<String>) -> Result<Option<String>, Error> {
    let Some(token) = token else { return Ok(None) };
    let printable = token.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if token.is_empty() || token.len() > MAX_CLIENT_TOKEN || !printable {
        return Err(invalid(
            Field::ClientToken,
            format!(
                "`client_token` must be 1–{MAX_CLIENT_TOKEN} printable ASCII characters without spaces (a UUID does well); got {} characters",
                token.chars().count()
            ),
        ));
    }
    Ok(Some(token))
}

/// A console account name: 1–64 lowercase letters, digits, `.`, `_`, `-`.
pub fn account_name(username: &str) -> Result<(), Error> {
    let valid = (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(invalid(
            Field::Username,
            "a username is 1 to 64 lowercase letters, digits, '.', '_' or '-'",
        ))
    }
}

/// A new password: 12 to 256 characters, not the username.
pub fn password(username: &str, password: &str) -> Result<(), Error> {
    let chars = password.chars().count();
    if !PASSWORD_CHARS.contains(&chars) {
        return Err(invalid(
            Field::Password,
            format!(
                "a password needs {} to {} characters; a few random words make a good one",
                PASSWORD_CHARS.start(),
                PASSWORD_CHARS.end()
            ),
        ));
    }
    if password.eq_ignore_ascii_case(username) {
        return Err(invalid(Field::Password, "the password must not be the username"));
    }
    Ok(())
}

/// A role name.
pub fn role(role: &str) -> Result<Role, Error> {
    Role::parse(role).ok_or_else(|| {
        invalid(
            Field::Role,
            format!("role {role:?} is not one of admin, operator, viewer"),
        )
    })
}

/// An API token's name.
pub fn token_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_TOKEN_NAME || name.chars().any(char::is_control) {
        return Err(invalid(
            Field::Name,
            format!("a token needs a name of 1 to {MAX_TOKEN_NAME} characters"),
        ));
    }
    Ok(name.to_string())
}

/// An API token's lifetime in days, if it expires.
pub fn token_days(days: Option<u64>) -> Result<Option<u64>, Error> {
    days.map(|d| {
        if TOKEN_DAYS.contains(&d) {
            Ok(d)
        } else {
            Err(invalid(
                Field::ExpiresInDays,
                format!(
                    "`expires_in_days` must be between {} and {}",
                    TOKEN_DAYS.start(),
                    TOKEN_DAYS.end()
                ),
            ))
        }
    })
    .transpose()
}

/// An activation's instance limit.
pub fn activation_instances(n: u64) -> Result<u64, Error> {
    in_range(
        Field::InstanceCountLimit,
        "instance_count_limit",
        n,
        ACTIVATION_INSTANCES,
    )
}

/// An activation's life in hours.
pub fn activation_ttl_hours(hours: u64) -> Result<u64, Error> {
    in_range(Field::TtlHours, "ttl_hours", hours, ACTIVATION_TTL_HOURS)
}

/// An activation's description: at most 100 characters, no control characters.
pub fn activation_description(description: Option<String>) -> Result<String, Error> {
    let description = description.unwrap_or_default();
    if description.chars().count() > MAX_ACTIVATION_DESCRIPTION || description.chars().any(char::is_control) {
        return Err(invalid(
            Field::Description,
            format!("`description` must be at most {MAX_ACTIVATION_DESCRIPTION} characters without control characters"),
        ));
    }
    Ok(description)
}

/// An AccessKey's description: at most 128 characters on one line, spaces around it dropped;
/// none is an empty one.
pub fn access_key_description(description: Option<String>) -> Result<String, Error> {
    let description = description.as_deref().unwrap_or_default().trim();
    let chars = description.chars().count();
    if chars > MAX_ACCESS_KEY_DESCRIPTION {
        return Err(invalid(
            Field::Description,
            format!("`description` is {chars} characters; at most {MAX_ACCESS_KEY_DESCRIPTION} are allowed"),
        ));
    }
    if description.chars().any(char::is_control) {
        return Err(invalid(
            Field::Description,
            "`description` must be one line without control characters",
        ));
    }
    Ok(description.to_string())
}

/// A field an agent reports about its host: at most `max` characters, no control characters.
pub fn host_field(name: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(invalid(
            Field::Register,
            format!("`{name}` must be at most {max} characters without control characters"),
        ));
    }
    Ok(())
}

/// The IP addresses an agent reports: at most 64, each a real address.
pub fn ip_addresses(ips: &[String]) -> Result<(), Error> {
    if ips.len() > 64 || ips.iter().any(|ip| ip.parse::<std::net::IpAddr>().is_err()) {
        return Err(invalid(
            Field::Register,
            "`ip_addresses` must be at most 64 IP addresses",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_tag(key: &str, value: &str) -> String {
        match tag(&crate::protocol::Tag::new(key, value)) {
            Err(Error::Invalid {
                field: Field::Tags,
                message,
            }) => message,
            other => panic!("{key}={value}: {other:?}"),
        }
    }

    #[test]
    fn tags_follow_alibabas_rules_and_a_refusal_names_the_tag_and_the_fix() {
        assert!(
            tag(&crate::protocol::Tag::new("env", "")).is_ok(),
            "an empty value is allowed"
        );
        assert!(tag(&crate::protocol::Tag::new("k".repeat(128), "v".repeat(128))).is_ok());

        assert!(refused_tag("", "prod").contains("empty key"));
        assert!(refused_tag(&"k".repeat(129), "").contains("129 characters"));
        assert!(refused_tag("aliyun-env", "x").contains("\"aliyun-env\" starts with `aliyun`"));
        assert!(refused_tag("ACS:team", "x").contains("reserved"));
        assert!(refused_tag("site", "https://example.com").contains("value of tag \"site\""));
        assert!(refused_tag("env", &"v".repeat(129)).contains("the limit is 128"));
    }

    #[test]
    fn a_tag_list_has_at_most_twenty_tags_and_each_key_once() {
        let many: Vec<_> = (0..21)
            .map(|n| crate::protocol::Tag::new(format!("k{n}"), "v"))
            .collect();
        let twice = [
            crate::protocol::Tag::new("env", "a"),
            crate::protocol::Tag::new("env", "b"),
        ];

        let too_many = tags(&many, "instance i-1").unwrap_err().to_string();
        let duplicate = tags(&twice, "instance i-1").unwrap_err().to_string();

        assert!(
            too_many.contains("instance i-1 would have 21 tags; at most 20"),
            "{too_many}"
        );
        assert!(duplicate.contains("\"env\" is given twice"), "{duplicate}");
        assert!(tags(&many[..20], "instance i-1").is_ok());
    }

    #[test]
    fn a_client_token_is_at_most_64_printable_ascii_characters() {
        assert_eq!(client_token(None).unwrap(), None);
        assert!(client_token(Some("a".repeat(64))).unwrap().is_some());
        assert!(client_token(Some("a".repeat(65))).is_err());
        assert!(client_token(Some("has space".into())).is_err());
        assert!(client_token(Some("é".into())).is_err());
        assert!(client_token(Some(String::new())).is_err());
    }

    fn field(e: Error) -> Field {
        match e {
            Error::Invalid { field, .. } => field,
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn content_is_decoded_and_limited() {
        assert_eq!(
            content("ZWNobyBoaQ==", ContentEncoding::Base64, 100).unwrap(),
            "echo hi"
        );
        assert_eq!(
            field(content("%%%", ContentEncoding::Base64, 100).unwrap_err()),
            Field::CommandContent
        );
        let err = content(&"x".repeat(101), ContentEncoding::PlainText, 100).unwrap_err();
        assert!(err.to_string().contains("the limit is 100 bytes"), "{err}");
        assert!(content("  ", ContentEncoding::PlainText, 100).is_err());
    }

    #[test]
    fn timeouts_outside_one_second_to_seven_days_are_refused() {
        assert!(Timeout::parse(0).is_err());
        assert_eq!(Timeout::parse(1).unwrap().secs(), 1);
        assert!(Timeout::parse(604_800).is_ok());
        assert_eq!(field(Timeout::parse(604_801).unwrap_err()), Field::Timeout);
    }

    #[test]
    fn working_dirs_must_be_absolute() {
        assert!(WorkingDir::parse(Some("/tmp".into())).unwrap().is_some());
        assert!(WorkingDir::parse(Some("C:\\Temp".into())).unwrap().is_some());
        assert!(WorkingDir::parse(Some("../etc".into())).is_err());
        assert!(WorkingDir::parse(Some("".into())).unwrap().is_none());
        let spaced = WorkingDir::parse(Some(" /tmp ".into())).unwrap().unwrap();
        assert_eq!(spaced.into_inner(), "/tmp", "spaces around a path are dropped");
    }

    #[test]
    fn usernames_and_regions_are_checked() {
        assert!(Username::parse(Some("www-data".into())).is_ok());
        assert!(Username::parse(Some("root; rm -rf /".into())).is_err());
        assert!(RegionId::parse("cn-hangzhou").is_ok());
        assert!(RegionId::parse("CN Hangzhou").is_err());
    }

    #[test]
    fn numbers_typed_as_text_are_refused_with_the_field_name() {
        assert_eq!(whole_number(Field::TtlHours, " 12 ").unwrap(), 12);
        let err = whole_number(Field::TtlHours, "soon").unwrap_err();
        assert!(err.to_string().contains("ttl_hours"), "{err}");
        assert!(activation_instances(0).is_err());
        assert!(activation_description(Some("x".repeat(101))).is_err());
    }

    #[test]
    fn access_key_descriptions_are_one_line_of_at_most_128_characters() {
        assert_eq!(access_key_description(None).unwrap(), "");
        assert_eq!(access_key_description(Some("  ci  ".into())).unwrap(), "ci");
        assert!(access_key_description(Some("é".repeat(128))).is_ok());
        let long = access_key_description(Some("x".repeat(129))).unwrap_err();
        assert!(long.to_string().contains("129 characters"), "{long}");
        assert_eq!(
            field(access_key_description(Some("a\nb".into())).unwrap_err()),
            Field::Description
        );
    }
}
