//! Wire types shared by the server, the agent and the client: the vocabulary of DESIGN.md §3,
//! the agent protocol (§5) and the JSON API bodies (§4).
//!
//! Serde and pure functions only. Nothing here does I/O or knows about axum or SQL, so every
//! other module may depend on it.

pub mod agent;
pub mod api;
#[cfg(feature = "server")]
pub mod ecs;
pub mod files;
pub mod params;
pub mod plan;
mod rate;
mod spec;
mod status;
mod targeting;

pub use plan::{RepeatMode, ScheduleState, parse_task_id, task_id};
pub use rate::{RateInput, RateLimit};
pub use spec::{CommandSpec, DEFAULT_TIMEOUT_SECS, NoUnknownFields};
pub use status::{Group, InvocationStatus, ResultStatus, TaskEnd};
pub use targeting::Tag;

/// Lowercase hex, as SHA-256 digests travel (`sha256` fields, checksum headers) and are stored.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

use serde::{Deserialize, Serialize};

/// The agent protocol versions this build speaks (DESIGN.md §5, docs/ARCHITECTURE.md):
/// version 1 sends every frame as JSON text; version 2 sends output as binary frames
/// ([`agent::Output::encode_binary`]) and everything else as before; version 3 adds Send File
/// ([`files`]), which the server offers only to agents speaking it. Each connection uses the
/// newest version both sides speak.
pub const PROTOCOL_VERSIONS: [u32; 3] = [1, 2, 3];

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 3;

/// A frame or body that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("malformed binary frame: {0}")]
    MalformedBinary(&'static str),
}

/// Defines a fieldless enum stored and sent by its variant name, with `as_str`, `FromStr`,
/// `Display` and a list of all variants.
macro_rules! name_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name used on the wire and in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::protocol::UnknownName;
            fn from_str(s: &str) -> Result<Self, $crate::protocol::UnknownName> {
                match s {
                    $(stringify!($variant) => Ok($name::$variant),)+
                    _ => Err($crate::protocol::UnknownName(s.chars().take(64).collect())),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::protocol::UnknownName;
            fn try_from(s: String) -> Result<Self, $crate::protocol::UnknownName> {
                s.parse()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use name_enum;

/// A name that is not one of an enum's variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownName(pub String);

name_enum! {
    /// The interpreter a command is written for.
    pub enum CommandType {
        /// `/bin/sh` on Linux and Unix; shown as **Shell**.
        RunShellScript,
        /// `cmd.exe` on Windows; shown as **Bat**.
        RunBatScript,
        /// `powershell.exe` on Windows, `pwsh` on Linux; shown as **PowerShell**.
        RunPowerShellScript,
    }
}

impl CommandType {
    /// The word the console shows for this type.
    pub fn label(self) -> &'static str {
        match self {
            CommandType::RunShellScript => "Shell",
            CommandType::RunBatScript => "Bat",
            CommandType::RunPowerShellScript => "PowerShell",
        }
    }

    /// Whether an instance of this OS can ever run the type (the agent may still lack `pwsh`).
    pub fn fits_os(self, os: OsType) -> bool {
        matches!(
            (self, os),
            (CommandType::RunShellScript, OsType::Linux)
                | (CommandType::RunBatScript, OsType::Windows)
                | (CommandType::RunPowerShellScript, _)
        )
    }
}

/// Operating system family of an instance.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsType {
    Linux,
    Windows,
}

impl OsType {
    /// The OS this binary was built for.
    pub fn current() -> Self {
        if cfg!(windows) { OsType::Windows } else { OsType::Linux }
    }

    /// The name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            OsType::Linux => "linux",
            OsType::Windows => "windows",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "linux" => Some(OsType::Linux),
            "windows" => Some(OsType::Windows),
            _ => None,
        }
    }
}

impl TryFrom<String> for OsType {
    type Error = UnknownName;
    fn try_from(s: String) -> Result<Self, UnknownName> {
        OsType::parse(&s).ok_or(UnknownName(s))
    }
}

name_enum! {
    /// Why a result did not end in `Success` (Alibaba Cloud Assistant's codes, kept exactly).
    pub enum ErrorCode {
        InstanceNotExists,
        CommandNotApplicable,
        AccountNotExists,
        DirectoryNotExists,
        ClientNotRunning,
        ClientNotResponse,
        DeliveryTimeout,
        ExecutionTimeout,
        ExecutionException,
        ExecutionInterrupted,
        ExitCodeNonzero,
        /// Not started: the invocation's failures passed its `max_errors` (rate control).
        ExceedMaxErrors,
    }
}

impl ErrorCode {
    /// The standard human sentence for the code, used when nothing more specific is known.
    pub fn default_info(self) -> &'static str {
        match self {
            ErrorCode::InstanceNotExists => "The specified instance does not exist.",
            ErrorCode::CommandNotApplicable => "The instance cannot run this command type (OS or interpreter missing).",
            ErrorCode::AccountNotExists => "The specified account does not exist on the instance.",
            ErrorCode::DirectoryNotExists => "The working directory does not exist on the instance.",
            ErrorCode::ClientNotRunning => {
                "The agent on the instance is not running, so the command could not be delivered."
            }
            ErrorCode::ClientNotResponse => {
                "The agent stopped responding while the command ran; its outcome is unknown."
            }
            ErrorCode::DeliveryTimeout => "The command could not be delivered within the delivery window.",
            ErrorCode::ExecutionTimeout => "The command ran past its timeout and was killed.",
            ErrorCode::ExecutionException => "The command could not be started or run.",
            ErrorCode::ExecutionInterrupted => "The command was interrupted (the agent restarted while it ran).",
            ErrorCode::ExitCodeNonzero => "The command exited with a non-zero exit code.",
            ErrorCode::ExceedMaxErrors => "Not started: the invocation's failures passed its max_errors.",
        }
    }
}

/// Which pipe a piece of output came from.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    /// Compact code used in the database (0 stdout, 1 stderr).
    pub fn code(self) -> i64 {
        match self {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
        }
    }

    /// Inverse of [`OutputStream::code`]; anything but 1 is stdout.
    pub fn from_code(code: i64) -> Self {
        if code == 1 {
            OutputStream::Stderr
        } else {
            OutputStream::Stdout
        }
    }
}

/// Serde helper: bytes as standard Base64 text, so output stays binary-safe inside JSON.
pub mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(*code));
        }
        assert!("RunPythonScript".parse::<CommandType>().is_err());
    }

    #[test]
    fn command_types_fit_their_operating_systems() {
        assert!(CommandType::RunShellScript.fits_os(OsType::Linux));
        assert!(!CommandType::RunShellScript.fits_os(OsType::Windows));
        assert!(!CommandType::RunBatScript.fits_os(OsType::Linux));
        assert!(CommandType::RunPowerShellScript.fits_os(OsType::Linux));
    }
}
