//! `CommandSpec`: what to run and how. The one value for the fields a command carries wherever
//! it travels: in RunCommand and CreateCommand bodies, in a retained command, in an invocation,
//! and in the rows that store them.
//!
//! Parameter *values* are not part of it: a retained command declares parameter names, and each
//! run gives its own values. The agent's `RunTask` stays flat (its field names are the wire
//! protocol, which does not change) and is built from a spec in one place, `dispatch::task_for`.

use super::CommandType;
use serde::de::{Deserializer, Error as _, IgnoredAny};
use serde::ser::{SerializeMap as _, Serializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The default timeout, in seconds (Alibaba's default).
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

/// What to run and how.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// The interpreter.
    #[serde(rename = "type")]
    pub command_type: CommandType,
    /// The script. In a request body it is encoded as the body's `content_encoding` says;
    /// everywhere else (stored, shown, sent to agents) it is plain text.
    #[serde(rename = "command_content")]
    pub content: String,
    /// Seconds before the agent kills the command.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Absolute directory to run in; the user's home directory when absent.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Account on the instance to run as; the agent's own when absent.
    #[serde(default)]
    pub username: Option<String>,
    /// Whether `{{name}}` placeholders are filled in (custom values and built-ins).
    #[serde(default)]
    pub enable_parameter: bool,
}

impl CommandSpec {
    /// A shell script with every option at its default.
    pub fn shell(content: impl Into<String>) -> Self {
        CommandSpec {
            command_type: CommandType::RunShellScript,
            content: content.into(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            working_dir: None,
            username: None,
            enable_parameter: false,
        }
    }
}

/// Refuses unknown fields in a body whose struct flattens another: serde's
/// `deny_unknown_fields` does not work together with `flatten`, so the last flattened field of
/// such a body is a `NoUnknownFields`, which receives exactly the keys no other field took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoUnknownFields;

impl<'de> Deserialize<'de> for NoUnknownFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rest = BTreeMap::<String, IgnoredAny>::deserialize(deserializer)?;
        match rest.keys().next() {
            Some(key) => Err(D::Error::custom(format_args!("unknown field `{key}`"))),
            None => Ok(NoUnknownFields),
        }
    }
}

impl Serialize for NoUnknownFields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_map(Some(0))?.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Body {
        ids: Vec<String>,
        #[serde(flatten)]
        spec: CommandSpec,
        #[serde(flatten)]
        strict: NoUnknownFields,
    }

    #[test]
    fn a_flattened_spec_keeps_the_flat_wire_shape_and_refuses_unknown_fields() {
        let body: Body =
            serde_json::from_str(r#"{"ids":["i-1"],"type":"RunShellScript","command_content":"echo hi"}"#).unwrap();
        assert_eq!(body.spec, CommandSpec::shell("echo hi"));
        let text = serde_json::to_string(&body).unwrap();
        assert!(
            text.contains(r#""type":"RunShellScript","command_content":"echo hi""#),
            "{text}"
        );

        let err =
            serde_json::from_str::<Body>(r#"{"ids":[],"type":"RunShellScript","command_content":"x","timeout":5}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
    }
}
