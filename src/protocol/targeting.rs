//! Targeting words shared by every surface (DESIGN.md §10): a tag (key/value on an instance, or
//! a selector naming instances by their tags).

use serde::{Deserialize, Serialize};

/// One key/value pair: on an instance, in a tag selector, or on an invocation.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    /// May be empty (Alibaba's rule: a value is 0–128 characters).
    #[serde(default)]
    pub value: String,
}

impl Tag {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Tag {
        Tag {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Parses `key=value`, or `key` alone (an empty value), as the CLI and the agent's `--tag`
    /// take it. Only the first `=` splits: a value may hold more.
    pub fn parse_pair(text: &str) -> Tag {
        match text.split_once('=') {
            Some((key, value)) => Tag::new(key, value),
            None => Tag::new(text, ""),
        }
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RepeatMode;

    #[test]
    fn a_pair_splits_at_its_first_equals_sign_and_a_bare_key_has_an_empty_value() {
        assert_eq!(Tag::parse_pair("env=prod"), Tag::new("env", "prod"));
        assert_eq!(Tag::parse_pair("url=a=b"), Tag::new("url", "a=b"));
        assert_eq!(Tag::parse_pair("canary"), Tag::new("canary", ""));
    }

    #[test]
    fn repeat_mode_is_once_by_default_and_spelt_as_alibaba_spells_it() {
        assert_eq!(RepeatMode::default(), RepeatMode::Once);
        assert_eq!(serde_json::to_string(&RepeatMode::DryRun).unwrap(), "\"DryRun\"");
        assert_eq!("NextRebootOnly".parse::<RepeatMode>(), Ok(RepeatMode::NextRebootOnly));
    }
}
