//! Rate control values (issue 14, AWS Run Command's `MaxConcurrency` and `MaxErrors`): a limit
//! given as a count of instances (`5`) or a percentage of an invocation's instances (`"10%"`).
//!
//! Two types: [`RateInput`] is what a request carried (a JSON number or string, kept as text so
//! the domain can refuse a bad one naming its field), [`RateLimit`] the parsed value, sent back
//! in records the way it is written (a count as a number, a percentage as a string).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A rate-control value as a request gave it, unchecked: a JSON number or string, or a
/// form's text. [`RateLimit::parse`] checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateInput(pub String);

impl From<&str> for RateInput {
    fn from(text: &str) -> Self {
        RateInput(text.to_string())
    }
}

impl From<u64> for RateInput {
    fn from(count: u64) -> Self {
        RateInput(count.to_string())
    }
}

impl Serialize for RateInput {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.parse::<u64>() {
            Ok(count) => s.serialize_u64(count),
            Err(_) => s.serialize_str(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for RateInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Any number or string is taken as text; whether it is a usable limit is the domain's
        // call, so the refusal can name the field and say what would do.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(serde_json::Number),
            Text(String),
        }
        Ok(RateInput(match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        }))
    }
}

/// A checked rate-control limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// This many instances.
    Count(u64),
    /// This percentage (0–100) of the invocation's instances, rounded up.
    Percent(u8),
}

impl RateLimit {
    /// Parses `5` or `10%` (spaces around are ignored). The error says what was wrong, not
    /// which field it was in.
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let text = text.trim();
        let shape = || format!("got {text:?}; give a whole number of instances like 5, or a percentage like \"10%\"");
        if let Some(percent) = text.strip_suffix('%') {
            let percent: u64 = percent.trim().parse().map_err(|_| shape())?;
            if percent > 100 {
                return Err(format!("got {text:?}; a percentage is at most 100%"));
            }
            return Ok(RateLimit::Percent(percent as u8));
        }
        text.parse().map(RateLimit::Count).map_err(|_| shape())
    }

    /// The number of instances this limit allows among `instances`: a percentage rounded up.
    pub fn of(self, instances: u64) -> u64 {
        match self {
            RateLimit::Count(n) => n,
            RateLimit::Percent(p) => (instances * u64::from(p)).div_ceil(100),
        }
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimit::Count(n) => write!(f, "{n}"),
            RateLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RateLimit::parse(s)
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RateLimit::Count(n) => s.serialize_u64(*n),
            RateLimit::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let input = RateInput::deserialize(d)?;
        RateLimit::parse(&input.0).map_err(serde::de::Error::custom)
    }
}

/// Both types in the OpenAPI document: a JSON number or string, as they are read and written.
#[cfg(feature = "server")]
mod schema {
    use super::{RateInput, RateLimit};
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

    /// A whole number, or a string matching `text`.
    fn count_or_percentage(text: &str) -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
            .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(text)))
            .description(Some(
                "A number of instances (`5`) or a percentage of the invocation's instances (`\"10%\"`, rounded up).",
            ))
            .examples([serde_json::json!(5), serde_json::json!("10%")])
            .into()
    }

    impl utoipa::PartialSchema for RateInput {
        fn schema() -> RefOr<Schema> {
            // A request may also give a count as a string (`"5"`).
            count_or_percentage(r"^\s*[0-9]+\s*%?\s*$")
        }
    }

    impl utoipa::ToSchema for RateInput {}

    impl utoipa::PartialSchema for RateLimit {
        fn schema() -> RefOr<Schema> {
            count_or_percentage(r"^[0-9]+%$")
        }
    }

    impl utoipa::ToSchema for RateLimit {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentages_parse_and_print_as_written() {
        assert_eq!(RateLimit::parse("5"), Ok(RateLimit::Count(5)));
        assert_eq!(RateLimit::parse(" 10% "), Ok(RateLimit::Percent(10)));
        assert_eq!(RateLimit::parse("0"), Ok(RateLimit::Count(0)));
        assert_eq!(RateLimit::parse("100%"), Ok(RateLimit::Percent(100)));
        assert_eq!(RateLimit::Percent(10).to_string(), "10%");
        assert_eq!(RateLimit::Count(5).to_string(), "5");
    }

    #[test]
    fn anything_else_is_refused_saying_what_would_do() {
        for bad in ["", "-1", "2.5", "ten", "10%%", "%", "101%", "5 instances"] {
            let err = RateLimit::parse(bad).unwrap_err();
            assert!(err.contains(&format!("{:?}", bad.trim())), "{bad}: {err}");
        }
        assert!(RateLimit::parse("101%").unwrap_err().contains("at most 100%"));
        assert!(RateLimit::parse("x").unwrap_err().contains("like \"10%\""));
    }

    #[test]
    fn a_percentage_is_rounded_up() {
        assert_eq!(RateLimit::Percent(10).of(20), 2);
        assert_eq!(RateLimit::Percent(10).of(21), 3);
        assert_eq!(RateLimit::Percent(1).of(3), 1);
        assert_eq!(RateLimit::Percent(0).of(50), 0);
        assert_eq!(RateLimit::Count(7).of(3), 7);
    }

    #[test]
    fn json_takes_a_number_or_a_string_and_records_write_each_as_given() {
        let n: RateInput = serde_json::from_str("5").unwrap();
        let s: RateInput = serde_json::from_str("\"10%\"").unwrap();
        let f: RateInput = serde_json::from_str("2.5").unwrap();
        assert_eq!((n.0.as_str(), s.0.as_str(), f.0.as_str()), ("5", "10%", "2.5"));
        assert!(serde_json::from_str::<RateInput>("true").is_err());

        assert_eq!(serde_json::to_string(&RateLimit::Count(5)).unwrap(), "5");
        assert_eq!(serde_json::to_string(&RateLimit::Percent(10)).unwrap(), "\"10%\"");
        assert_eq!(
            serde_json::from_str::<RateLimit>("\"10%\"").unwrap(),
            RateLimit::Percent(10)
        );
    }
}
