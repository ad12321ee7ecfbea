//! What a domain call can answer instead of doing what was asked. Typed, so each surface renders
//! it its own way (a JSON code, a message next to a form field, an ECS error) without matching
//! strings.

use crate::store::{self, RegisterRefusal, Role};
use std::time::Duration;

/// The input a validation error is about. Each surface names it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    InstanceIds,
    /// The command type.
    Type,
    CommandContent,
    /// A retained command's or a token's name.
    Name,
    Description,
    Timeout,
    WorkingDir,
    /// The account on the instance a command runs as, or a console account's name.
    Username,
    Parameters,
    RegionId,
    InstanceCountLimit,
    TtlHours,
    Password,
    Role,
    ExpiresInDays,
    /// An instance's display name.
    InstanceName,
    /// What an agent says about its host when it enrols.
    Register,
    /// A listing's page or page size.
    Page,
    /// A listing's status filter.
    Status,
    /// A listing's continuation token.
    NextToken,
    /// Rate control: instances running at once.
    MaxConcurrency,
    /// Rate control: failures allowed before the rest are not started.
    MaxErrors,
    /// Tags: an instance's, or a selector of instances.
    Tags,
    /// RunCommand's and InvokeCommand's idempotency token.
    ClientToken,
    /// RunCommand's and InvokeCommand's `repeat_mode`.
    RepeatMode,
    /// Send File: the directory, the file name, the mode, owner, group and the file itself.
    TargetDir,
    FileName,
    FileMode,
    FileOwner,
    FileGroup,
    FileContent,
    /// A schedule: `rate(…)`, `at(…)` or cron with a time zone.
    Frequency,
}

impl Field {
    /// The JSON API's error code for a bad value of this field.
    pub fn api_code(self) -> &'static str {
        match self {
            Field::InstanceIds => "InvalidParameter.InstanceIds",
            Field::Type => "InvalidParameter.Type",
            Field::CommandContent => "InvalidParameter.CommandContent",
            Field::Name => "InvalidParameter.Name",
            Field::Description => "InvalidParameter.Description",
            Field::Timeout => "InvalidParameter.Timeout",
            Field::WorkingDir => "InvalidParameter.WorkingDir",
            Field::Username => "InvalidParameter.Username",
            Field::Parameters => "InvalidParameter.Parameters",
            Field::RegionId => "InvalidParameter.RegionId",
            Field::InstanceCountLimit => "InvalidParameter.InstanceCountLimit",
            Field::TtlHours => "InvalidParameter.TtlHours",
            Field::Password => "InvalidParameter.Password",
            Field::Role => "InvalidParameter.Role",
            Field::ExpiresInDays => "InvalidParameter.ExpiresInDays",
            Field::InstanceName => "InvalidParameter.InstanceName",
            Field::Register => "InvalidParameter.Register",
            Field::Page => "InvalidParameter.Page",
            Field::Status => "InvalidParameter.Status",
            Field::NextToken => "InvalidParameter.NextToken",
            Field::MaxConcurrency => "InvalidParameter.MaxConcurrency",
            Field::MaxErrors => "InvalidParameter.MaxErrors",
            Field::Tags => "InvalidParameter.Tags",
            Field::ClientToken => "InvalidParameter.ClientToken",
            Field::RepeatMode => "InvalidParameter.RepeatMode",
            Field::Frequency => "InvalidParameter.Frequency",
            Field::TargetDir => "InvalidParameter.TargetDir",
            Field::FileName => "InvalidParameter.Name",
            Field::FileMode => "InvalidParameter.FileMode",
            Field::FileOwner => "InvalidParameter.FileOwner",
            Field::FileGroup => "InvalidParameter.FileGroup",
            Field::FileContent => "InvalidParameter.Content",
        }
    }

    /// The name of the console form field that takes this value.
    pub fn form_name(self) -> &'static str {
        match self {
            Field::InstanceIds => "instances",
            Field::Type => "type",
            Field::CommandContent => "content",
            Field::Name => "name",
            Field::Description => "description",
            Field::Timeout => "timeout",
            Field::WorkingDir => "working_dir",
            Field::Username => "username",
            Field::Parameters => "parameters",
            Field::RegionId => "region_id",
            Field::InstanceCountLimit => "instance_count_limit",
            Field::TtlHours => "ttl_hours",
            Field::Password => "password",
            Field::Role => "role",
            Field::ExpiresInDays => "expires_in_days",
            Field::InstanceName => "name",
            Field::Register => "register",
            Field::Page => "page",
            Field::Status => "status",
            Field::NextToken => "next_token",
            Field::MaxConcurrency => "max_concurrency",
            Field::MaxErrors => "max_errors",
            Field::Tags => "tags",
            Field::ClientToken => "client_token",
            Field::RepeatMode => "repeat_mode",
            Field::Frequency => "frequency",
            Field::TargetDir => "target_dir",
            Field::FileName => "name",
            Field::FileMode => "mode",
            Field::FileOwner => "owner",
            Field::FileGroup => "group",
            Field::FileContent => "file",
        }
    }
}

/// The kinds of things a domain call looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Instance,
    Invocation,
    Result,
    Command,
    Activation,
    User,
    Token,
    AccessKey,
    FileSend,
}

impl Kind {
    /// The word people read.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Instance => "instance",
            Kind::Invocation => "invocation",
            Kind::Result => "result",
            Kind::Command => "command",
            Kind::Activation => "activation",
            Kind::User => "user",
            Kind::Token => "token",
            Kind::AccessKey => "AccessKey",
            Kind::FileSend => "file send",
        }
    }
}

/// The quota a refusal is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaKind {
    /// Retained commands of a region (`--retained-command-quota`).
    RetainedCommands { region_id: String },
    /// AccessKey pairs of one account (`ACCESS_KEYS_PER_USER`, fixed).
    AccessKeys,
}

impl std::fmt::Display for QuotaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaKind::RetainedCommands { region_id } => write!(f, "quota retained_commands of region {region_id}"),
            QuotaKind::AccessKeys => f.write_str("quota access_keys of your account"),
        }
    }
}

/// A state that refuses the change asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// A console account with that name exists.
    UserExists,
    /// The change would leave no enabled admin.
    LastAdmin,
    /// An admin tried to delete their own account.
    DeleteSelf,
    /// Another retained command of the region has the name.
    CommandName,
    /// An agent connection attached after a newer connection of the same agent (`attach`).
    Superseded,
    /// A `client_token` already used within a day for a different request.
    ClientTokenReused,
}

/// Why a login (console, HTTP Basic or a password check) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Unknown user, wrong password or a disabled account; deliberately not told apart.
    /// `waited`: how long the attempt was held before its check because of failed logins for
    /// the username from other addresses (zero when it was not).
    WrongCredentials { waited: Duration },
    /// Too many recent failed logins from this address: it is refused, whatever the password,
    /// for this long.
    AddressThrottled(Duration),
    /// Logins for this username are slowed after failures from other addresses, and this
    /// attempt waited too long for its turn: try again after this.
    UserBusy(Duration),
    /// The current password given to change one's own password is wrong.
    WrongCurrentPassword,
    /// HTTP Basic is switched off on this server.
    BasicDisabled,
    /// The API token is unknown, revoked or expired.
    BadToken,
}

impl LoginRefusal {
    /// When to try again, for the refusals that are about time (`429`, `Retry-After`).
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            LoginRefusal::AddressThrottled(wait) | LoginRefusal::UserBusy(wait) => Some(wait),
            _ => None,
        }
    }

    /// The sentence shown to the person refused.
    pub fn message(self) -> String {
        let seconds = |wait: Duration| wait.as_secs_f64().ceil().max(1.0) as u64;
        match self {
            LoginRefusal::WrongCredentials { waited } if waited >= Duration::from_secs(1) => format!(
                "wrong username or password (this attempt was held {} s first: logins for this user are slowed \
                 after failed attempts from other addresses)",
                waited.as_secs()
            ),
            LoginRefusal::WrongCredentials { .. } => "wrong username or password".into(),
            LoginRefusal::AddressThrottled(wait) => format!(
                "too many failed logins from your address; try again in {} seconds",
                seconds(wait)
            ),
            LoginRefusal::UserBusy(wait) => format!(
                "logins for this user are slowed after many failed attempts from other addresses, and too many \
                 attempts are waiting their turn; try again in {} seconds",
                seconds(wait)
            ),
            LoginRefusal::WrongCurrentPassword => "the current password is wrong".into(),
            LoginRefusal::BasicDisabled => {
                "HTTP Basic is switched off on this server: send `Authorization: Bearer <api token>`".into()
            }
            LoginRefusal::BadToken => {
                "the API token is unknown, revoked or expired: create a new one with POST /api/v1/tokens".into()
            }
        }
    }
}

/// What went wrong in a domain call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value of the request is unusable; the message says why and how to fix it.
    #[error("{message}")]
    Invalid { field: Field, message: String },
    /// The named thing does not exist.
    #[error("{} {id:?} does not exist", kind.as_str())]
    NotFound { kind: Kind, id: String },
    /// Instance ids that are not registered.
    #[error("unknown instances: {0:?}")]
    UnknownInstances(Vec<String>),
    /// A quota is used up.
    #[error("{quota} is used up ({used} of {limit})")]
    Quota { quota: QuotaKind, used: u64, limit: u64 },
    /// The current state refuses the change.
    #[error("{message}")]
    Conflict { conflict: Conflict, message: String },
    /// The actor's role does not allow the action.
    #[error("this needs the {} role and user {username:?} has the {} role", needed.as_str(), has.as_str())]
    Forbidden { needed: Role, has: Role, username: String },
    /// A login or credential check failed.
    #[error("login refused: {0:?}")]
    Login(LoginRefusal),
    /// An activation refused an agent's enrolment.
    #[error("enrolment refused by activation {activation_id:?}: {refusal}")]
    Enrolment {
        activation_id: String,
        refusal: RegisterRefusal,
    },
    /// The server could not stage an upload on its own disk (not the caller's fault).
    #[error("{0}")]
    Upload(String),
    #[error(transparent)]
    Store(store::Error),
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        Error::Store(e)
    }
}

/// A validation error about `field`.
pub fn invalid(field: Field, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

/// Maps the store's `NotFound` to the domain's, naming what was missing.
pub fn not_found(kind: Kind, id: &str) -> impl FnOnce(store::Error) -> Error + '_ {
    move |e| match e {
        store::Error::NotFound => Error::NotFound {
            kind,
            id: id.to_string(),
        },
        other => Error::Store(other),
    }
}
