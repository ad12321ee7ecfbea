//! Execution plans (Alibaba's `RepeatMode` and `Frequency`): [`Plan::check`] turns a request's
//! `repeat_mode` and `frequency` into a checked plan, and [`Frequency`] says when a schedule's
//! executions are due. Pure: no store, no clock of its own (times are milliseconds since the Unix
//! epoch, passed in).
//!
//! Frequencies are Alibaba's three forms:
//! - `rate(<n><s|m|h|d>)`: every n seconds, minutes, hours or days, the first one interval after
//!   the invocation was created; at least `min_schedule_interval` (Alibaba: 60 s), at most 7 days;
//! - `at(yyyy-MM-dd HH:mm:ss [zone])`: once, at that time (UTC when no zone is given);
//! - `<sec> <min> <hour> <day of month> <month> <day of week> [<year>] [zone]`: Quartz-style cron
//!   (`?`, `L`, `W`, `#`; days of the week 1 = Sunday … 7 = Saturday, or SUN … SAT), evaluated in
//!   the zone (UTC when none), across daylight-saving changes by `croner`.
//!
//! Zones are IANA names (`Asia/Shanghai`, `Europe/Berlin`), `UTC`, or fixed offsets in Alibaba's
//! form `GMT+8:00` / `GMT-5:30`.

use super::error::{Error, Field, invalid};
use crate::protocol::RepeatMode;
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use std::time::Duration;

/// Longest interval of `rate(…)` (Alibaba's: 7 days).
const MAX_RATE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest gap between two cron runs (Alibaba's: 10 s), unless the settings allow less.
const MIN_CRON_GAP: Duration = Duration::from_secs(10);
/// Cron runs looked at to find the shortest gap of an expression.
const CRON_GAPS_CHECKED: usize = 64;

/// A checked execution plan.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Run at once, one execution (today's behaviour).
    Once,
    /// Run on a schedule: the frequency, and its text as given (trimmed), which is stored.
    Period(Frequency, String),
    /// Run at the next boot of each instance (`NextRebootOnly`) or at every boot (`EveryReboot`).
    Boot(RepeatMode),
}

impl Plan {
    /// Checks `repeat_mode` and `frequency` as Alibaba reads them: the mode defaults to `Once`,
    /// or `Period` when a frequency is given; `Period` needs a frequency and the other modes
    /// take none. A schedule's interval must be at least `min_interval` (cron: the smaller of
    /// it and 10 s) and at least the command's timeout, so runs do not pile up; `at(…)` must
    /// be in the future.
    pub fn check(
        mode: Option<RepeatMode>,
        frequency: Option<&str>,
        timeout_secs: u64,
        min_interval: Duration,
        now: i64,
    ) -> Result<Plan, Error> {
        let frequency = frequency.map(str::trim).filter(|f| !f.is_empty());
        let mode = mode.unwrap_or(if frequency.is_some() {
            RepeatMode::Period
        } else {
            RepeatMode::Once
        });
        match (mode, frequency) {
            (RepeatMode::Period, None) => Err(invalid(
                Field::Frequency,
                "repeat_mode Period needs a frequency: rate(5m), at(2026-12-01 10:00:00 Asia/Shanghai), \
                 or a cron expression such as `0 */10 * * * ? Asia/Shanghai`",
            )),
            (RepeatMode::Period, Some(text)) => {
                let frequency = Frequency::parse(text).map_err(|m| invalid(Field::Frequency, m))?;
                frequency.check(timeout_secs, min_interval, now)?;
                Ok(Plan::Period(frequency, text.to_string()))
            }
            (RepeatMode::DryRun, _) => Err(invalid(
                Field::RepeatMode,
                "repeat_mode DryRun is a check, not a plan: it is answered before anything is scheduled",
            )),
            (mode, Some(_)) => Err(invalid(
                Field::Frequency,
                format!("repeat_mode {mode} takes no frequency: leave it out, or use repeat_mode Period"),
            )),
            (RepeatMode::Once, None) => Ok(Plan::Once),
            (mode, None) => Ok(Plan::Boot(mode)),
        }
    }

    /// The repeat mode this plan is.
    pub fn mode(&self) -> RepeatMode {
        match self {
            Plan::Once => RepeatMode::Once,
            Plan::Period(..) => RepeatMode::Period,
            Plan::Boot(mode) => *mode,
        }
    }
}

/// When a `Period` plan's executions are due.
#[derive(Debug, Clone)]
pub enum Frequency {
    /// Every interval, the first one interval after creation.
    Rate(Duration),
    /// Once, at this time (milliseconds since the Unix epoch).
    At(i64),
    /// At the times a cron expression matches in a zone.
    Cron(Box<croner::Cron>, Zone),
}

/// The time zone of an `at(…)` or a cron expression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    Named(chrono_tz::Tz),
    Fixed(FixedOffset),
}

impl Zone {
    /// `Asia/Shanghai`, `UTC`, `GMT`, `GMT+8:00`, `GMT-05:30`, `GMT+8`.
    pub fn parse(text: &str) -> Option<Zone> {
        if let Some(offset) = text.strip_prefix("GMT").or_else(|| text.strip_prefix("UTC")) {
            if offset.is_empty() {
                return Some(Zone::Named(chrono_tz::UTC));
            }
            let (sign, rest) = match offset.as_bytes()[0] {
                b'+' => (1, &offset[1..]),
                b'-' => (-1, &offset[1..]),
                _ => return None,
            };
            let (hours, minutes) = rest.split_once(':').unwrap_or((rest, "0"));
            let all_digits = |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
            if !all_digits(hours) || !all_digits(minutes) {
                return None;
            }
            let (hours, minutes): (i32, i32) = (hours.parse().ok()?, minutes.parse().ok()?);
            if hours > 14 || minutes > 59 {
                return None;
            }
            return FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)).map(Zone::Fixed);
        }
        text.parse::<chrono_tz::Tz>().ok().map(Zone::Named)
    }

    /// The instant of a wall-clock time in this zone; in a daylight-saving gap, the first
    /// instant after it; in an overlap, the earlier one.
    fn instant(self, local: NaiveDateTime) -> Option<i64> {
        fn first<Tz: TimeZone>(zone: &Tz, local: NaiveDateTime) -> Option<i64> {
            let mut probe = local;
            // A gap is at most a few hours; step a minute at a time past it.
            for _ in 0..(24 * 60) {
                if let Some(at) = zone.from_local_datetime(&probe).earliest() {
                    return Some(at.timestamp_millis());
                }
                probe += chrono::Duration::minutes(1);
            }
            None
        }
        match self {
            Zone::Named(tz) => first(&tz, local),
            Zone::Fixed(offset) => first(&offset, local),
        }
    }

    /// The first time strictly after `after` (ms) that `cron` matches in this zone.
    fn next_cron(self, cron: &croner::Cron, after: i64) -> Option<i64> {
        fn next<Tz: TimeZone>(cron: &croner::Cron, zone: &Tz, after: DateTime<Utc>) -> Option<i64> {
            let start = after.with_timezone(zone);
            cron.find_next_occurrence(&start, false)
                .ok()
                .map(|at| at.timestamp_millis())
        }
        let after = Utc.timestamp_millis_opt(after).single()?;
        match self {
            Zone::Named(tz) => next(cron, &tz, after),
            Zone::Fixed(offset) => next(cron, &offset, after),
        }
    }
}

impl Frequency {
    /// Parses Alibaba's three forms (see the module's documentation); the error says what was
    /// wrong and what is expected.
    pub fn parse(text: &str) -> Result<Frequency, String> {
        let text = text.trim();
        if let Some(inner) = text.strip_prefix("rate(").and_then(|t| t.strip_suffix(')')) {
            return parse_rate(inner.trim())
                .map(Frequency::Rate)
                .ok_or_else(|| format!("`{text}` is not a rate: write rate(<n><s|m|h|d>), e.g. rate(5m) or rate(2h)"));
        }
        if let Some(inner) = text.strip_prefix("at(").and_then(|t| t.strip_suffix(')')) {
            return parse_at(inner.trim()).map(Frequency::At).ok_or_else(|| {
                format!(
                    "`{text}` is not a time: write at(yyyy-MM-dd HH:mm:ss [zone]), \
                     e.g. at(2026-12-01 10:00:00 Asia/Shanghai)"
                )
            });
        }
        parse_cron(text)
    }

    /// When a schedule created at `now` first runs.
    pub fn first(&self, now: i64) -> Option<i64> {
        match self {
            Frequency::Rate(every) => Some(now + every.as_millis() as i64),
            Frequency::At(at) => Some(*at),
            Frequency::Cron(cron, zone) => zone.next_cron(cron, now),
        }
    }

    /// When the execution after the one due at `due` runs, the execution having started at `now`
    /// (at or after `due`): the first slot after `now`. So a server that was down over several
    /// slots starts one execution when it comes back, not one per missed slot. `None` when the
    /// schedule has no more (`at`).
    pub fn next_after(&self, due: i64, now: i64) -> Option<i64> {
        match self {
            Frequency::Rate(every) => {
                // Keep the phase of the schedule: due + k·interval, the first past `now`.
                let every = (every.as_millis() as i64).max(1);
                let missed = (now - due).max(0) / every;
                Some(due + (missed + 1) * every)
            }
            Frequency::At(_) => None,
            Frequency::Cron(cron, zone) => zone.next_cron(cron, now.max(due)),
        }
    }

    /// Checks the interval (see [`Plan::check`]).
    fn check(&self, timeout_secs: u64, min_interval: Duration, now: i64) -> Result<(), Error> {
        let timeout = Duration::from_secs(timeout_secs);
        match self {
            Frequency::Rate(every) => {
                if *every < min_interval || *every > MAX_RATE {
                    return Err(invalid(
                        Field::Frequency,
                        format!(
                            "a rate must be from {} to 7 days; rate({}) is not",
                            describe(min_interval),
                            describe(*every)
                        ),
                    ));
                }
                if *every < timeout {
                    return Err(invalid(
                        Field::Frequency,
                        format!(
                            "the rate ({}) is shorter than the timeout ({timeout_secs} s): runs would pile up; \
                             lengthen the rate or shorten the timeout",
                            describe(*every)
                        ),
                    ));
                }
            }
            Frequency::At(at) => {
                if *at <= now {
                    return Err(invalid(
                        Field::Frequency,
                        "the time given to at(…) has passed: give a time in the future (the zone is UTC unless named)",
                    ));
                }
            }
            Frequency::Cron(cron, zone) => {
                let mut runs = Vec::with_capacity(CRON_GAPS_CHECKED);
                let mut after = now;
                while runs.len() < CRON_GAPS_CHECKED {
                    match zone.next_cron(cron, after) {
                        Some(at) => {
                            runs.push(at);
                            after = at;
                        }
                        None => break,
                    }
                }
                if runs.is_empty() {
                    return Err(invalid(
                        Field::Frequency,
                        "the cron expression never matches from now on: check its fields (and year)",
                    ));
                }
                let least = min_interval.min(MIN_CRON_GAP).max(timeout);
                if let Some(gap) = runs.windows(2).map(|w| w[1] - w[0]).min() {
                    if gap < least.as_millis() as i64 {
                        return Err(invalid(
                            Field::Frequency,
                            format!(
                                "the cron expression runs {} apart; the least is {} (and no less than the timeout)",
                                describe(Duration::from_millis(gap as u64)),
                                describe(least)
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `5m`, `90s`, `2h`, `1d`.
fn parse_rate(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let number: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    if number == 0 {
        return None;
    }
    Some(Duration::from_secs(number.checked_mul(secs)?))
}

/// `2026-12-01 10:00:00 Asia/Shanghai` (the zone optional, UTC without one).
fn parse_at(text: &str) -> Option<i64> {
    let mut parts = text.split_whitespace();
    let (date, time) = (parts.next()?, parts.next()?);
    let zone = match parts.next() {
        Some(zone) => Zone::parse(zone)?,
        None => Zone::Named(chrono_tz::UTC),
    };
    if parts.next().is_some() {
        return None;
    }
    let local = NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S").ok()?;
    zone.instant(local)
}

/// Six or seven cron fields, then an optional zone.
fn parse_cron(text: &str) -> Result<Frequency, String> {
    let usage = "write rate(5m), at(2026-12-01 10:00:00 Asia/Shanghai), or a cron expression of 6 or 7 fields \
                 (seconds first) and a time zone, e.g. `0 */10 * * * ? Asia/Shanghai`";
    let mut fields: Vec<&str> = text.split_whitespace().collect();
    let zone = match fields.last().and_then(|last| Zone::parse(last)) {
        Some(zone) if fields.len() > 6 => {
            fields.pop();
            zone
        }
        _ => Zone::Named(chrono_tz::UTC),
    };
    if !(6..=7).contains(&fields.len()) {
        return Err(format!("`{text}` is not a frequency: {usage}"));
    }
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .year(croner::parser::Year::Optional)
        .alternative_weekdays(true)
        .sloppy_ranges(true)
        .build()
        .parse(&fields.join(" "))
        .map_err(|e| format!("`{text}` is not a valid cron expression ({e}): {usage}"))?;
    Ok(Frequency::Cron(Box::new(cron), zone))
}

/// A duration the way a person writes it: `90 s`, `5 min`, `2 h`.
fn describe(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 86_400 == 0 && s > 0 => format!("{} d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
    }

    fn at(ms: i64) -> String {
        Utc.timestamp_millis_opt(ms).unwrap().to_rfc3339()
    }

    fn check(mode: Option<RepeatMode>, frequency: Option<&str>) -> Result<Plan, Error> {
        Plan::check(mode, frequency, 60, MIN, ms("2026-03-01T00:00:00Z"))
    }

    #[test]
    fn the_mode_defaults_to_once_or_to_period_when_a_frequency_is_given() {
        assert!(matches!(check(None, None), Ok(Plan::Once)));
        assert!(
            matches!(check(None, Some("rate(5m)")), Ok(Plan::Period(Frequency::Rate(d), _)) if d == Duration::from_secs(300))
        );
        assert!(matches!(
            check(Some(RepeatMode::EveryReboot), None),
            Ok(Plan::Boot(RepeatMode::EveryReboot))
        ));
        for (mode, frequency, field) in [
            (Some(RepeatMode::Period), None, Field::Frequency),
            (Some(RepeatMode::Once), Some("rate(5m)"), Field::Frequency),
            (Some(RepeatMode::NextRebootOnly), Some("rate(5m)"), Field::Frequency),
            (Some(RepeatMode::DryRun), None, Field::RepeatMode),
        ] {
            let err = check(mode, frequency).unwrap_err();
            assert!(
                matches!(err, Error::Invalid { field: f, .. } if f == field),
                "{mode:?} {frequency:?}: {err:?}"
            );
        }
    }

    #[test]
    fn rates_take_four_units_within_the_minimum_and_seven_days() {
        for (text, secs) in [
            ("rate(90s)", 90),
            ("rate(5m)", 300),
            ("rate(2h)", 7200),
            ("rate(7d)", 604_800),
        ] {
            assert!(
                matches!(check(None, Some(text)), Ok(Plan::Period(Frequency::Rate(d), _)) if d.as_secs() == secs),
                "{text}"
            );
        }
        for text in ["rate(30s)", "rate(8d)", "rate(0m)", "rate(5w)", "rate(m)", "rate(-5m)"] {
            assert!(check(None, Some(text)).is_err(), "{text}");
        }
        let short = Plan::check(None, Some("rate(2s)"), 1, Duration::from_secs(1), 0);
        assert!(short.is_ok(), "a test's shorter minimum admits seconds");
        let piling = Plan::check(None, Some("rate(2m)"), 600, MIN, 0).unwrap_err();
        assert!(
            matches!(&piling, Error::Invalid { message, .. } if message.contains("timeout")),
            "{piling:?}"
        );
    }

    #[test]
    fn a_rate_runs_one_interval_after_creation_and_a_late_claim_skips_to_the_next_slot() {
        let rate = Frequency::parse("rate(10m)").unwrap();
        let t0 = ms("2026-03-01T00:00:00Z");
        let minute = 60_000;

        assert_eq!(rate.first(t0), Some(t0 + 10 * minute));
        assert_eq!(
            rate.next_after(t0 + 10 * minute, t0 + 10 * minute),
            Some(t0 + 20 * minute)
        );
        // Down for 35 minutes past a slot: one run now, the next on the schedule's phase.
        assert_eq!(
            rate.next_after(t0 + 10 * minute, t0 + 45 * minute),
            Some(t0 + 50 * minute)
        );
    }

    #[test]
    fn at_takes_a_zone_and_runs_once() {
        let now = ms("2026-03-01T00:00:00Z");
        let Ok(Plan::Period(plan, _)) = check(None, Some("at(2026-12-01 10:00:00 Asia/Shanghai)")) else {
            panic!("at() refused");
        };
        assert_eq!(plan.first(now).map(at), Some(at(ms("2026-12-01T02:00:00Z"))));
        assert_eq!(
            plan.next_after(ms("2026-12-01T02:00:00Z"), ms("2026-12-01T02:00:01Z")),
            None
        );
        let utc = Frequency::parse("at(2026-12-01 10:00:00)").unwrap();
        assert_eq!(utc.first(now), Some(ms("2026-12-01T10:00:00Z")));
        let fixed = Frequency::parse("at(2026-12-01 10:00:00 GMT+8:00)").unwrap();
        assert_eq!(fixed.first(now), Some(ms("2026-12-01T02:00:00Z")));
        assert!(check(None, Some("at(2020-01-01 00:00:00)")).is_err(), "in the past");
        assert!(check(None, Some("at(2026-12-01 10:00)")).is_err(), "seconds missing");
        assert!(check(None, Some("at(2026-12-01 10:00:00 Mars/Olympus)")).is_err());
    }

    #[test]
    fn a_cron_with_a_zone_runs_at_local_times_across_daylight_saving_changes() {
        // Every day at 02:30 in New York: on 2026-03-08 clocks jump from 02:00 to 03:00, so
        // that day has no 02:30 and croner runs at the first instant after the gap (03:00 EDT).
        let daily = Frequency::parse("0 30 2 * * ? America/New_York").unwrap();
        let before = ms("2026-03-07T00:00:00Z");
        let first = daily.first(before).unwrap();
        assert_eq!(at(first), at(ms("2026-03-07T07:30:00Z")), "02:30 EST is 07:30 UTC");
        let second = daily.next_after(first, first).unwrap();
        assert_eq!(at(second), at(ms("2026-03-08T07:00:00Z")), "the gap: 03:00 EDT");
        let third = daily.next_after(second, second).unwrap();
        assert_eq!(at(third), at(ms("2026-03-09T06:30:00Z")), "02:30 EDT is 06:30 UTC");

        // Every day at 09:00 in Berlin, across the change back to winter time (25 October 2026).
        let berlin = Frequency::parse("0 0 9 * * ? Europe/Berlin").unwrap();
        let saturday = berlin.first(ms("2026-10-24T00:00:00Z")).unwrap();
        let sunday = berlin.next_after(saturday, saturday).unwrap();
        assert_eq!(at(saturday), at(ms("2026-10-24T07:00:00Z")), "09:00 CEST");
        assert_eq!(at(sunday), at(ms("2026-10-25T08:00:00Z")), "09:00 CET");
        assert_eq!(sunday - saturday, 25 * 3600 * 1000, "that day is 25 hours long");
    }

    #[test]
    fn cron_takes_alibabas_forms_and_refuses_what_runs_too_often() {
        let every_ten = Frequency::parse("0 */10 * * * ? Asia/Shanghai").unwrap();
        let t = ms("2026-03-01T00:01:00Z");
        assert_eq!(every_ten.first(t), Some(ms("2026-03-01T00:10:00Z")));
        let with_year = Frequency::parse("0 0 12 ? * WED 2027").unwrap();
        assert_eq!(with_year.first(t).map(at), Some(at(ms("2027-01-06T12:00:00Z"))));
        // Quartz days of the week: 1 is Sunday.
        let sundays = Frequency::parse("0 0 0 ? * 1 UTC").unwrap();
        assert_eq!(sundays.first(t).map(at), Some(at(ms("2026-03-08T00:00:00Z"))));
        assert!(check(None, Some("*/5 * * * * ?")).is_err(), "every 5 s is under 10 s");
        assert!(
            check(None, Some("0 */10 * * *")).is_err(),
            "five fields: the seconds are missing"
        );
        assert!(check(None, Some("0 0 12 ? * WED 2020")).is_err(), "never again");
        assert!(check(None, Some("every day")).is_err());
    }
}
