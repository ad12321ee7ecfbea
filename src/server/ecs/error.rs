//! ECS errors as the SDKs parse them: JSON `{RequestId, HostId, Code, Message, Recommend}` with
//! Alibaba's HTTP statuses and codes (research/ecs-api-compat.md §7). The domain's typed errors
//! are rendered here, so no rule is restated: only its words change.

use crate::dispatch::{self, Conflict, Field, Kind, QuotaKind};
use crate::store;
use axum::http::StatusCode;
use std::borrow::Cow;

#[derive(Debug)]
pub struct EcsError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// The cause of a 5xx, logged once and never shown.
    pub source: Option<anyhow::Error>,
}

impl EcsError {
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        EcsError {
            status,
            code: code.into(),
            message: message.into(),
            source: None,
        }
    }

    pub fn bad_request(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        EcsError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A required parameter (or header) is absent.
    pub fn missing(name: &str) -> Self {
        EcsError::bad_request(
            "MissingParameter",
            format!("The input parameter \"{name}\" that is mandatory for processing this request is not supplied."),
        )
    }

    /// A value the action cannot use; `name` is the parameter.
    pub fn invalid(name: &str, why: impl std::fmt::Display) -> Self {
        EcsError::bad_request(format!("InvalidParameter.{name}"), format!("{name}: {why}"))
    }

    /// The signature does not match. The legacy Python SDK splits this message on `:` and
    /// compares the part after it with its own string to sign, so the message carries ours.
    pub fn signature_mismatch(string_to_sign: &str) -> Self {
        EcsError::bad_request(
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
            ),
        )
    }

    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        EcsError {
            source: Some(source.into()),
            ..EcsError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "The request processing has failed due to some unknown error; it has been logged with this RequestId.",
            )
        }
    }
}

/// The ECS parameter that carries a domain field.
fn parameter(field: Field) -> &'static str {
    match field {
        Field::InstanceIds => "InstanceId",
        Field::Type => "Type",
        Field::CommandContent => "CommandContent",
        Field::Name => "Name",
        Field::Description => "Description",
        Field::Timeout => "Timeout",
        Field::WorkingDir => "WorkingDir",
        Field::Username => "Username",
        Field::Parameters => "Parameters",
        Field::RegionId => "RegionId",
        Field::InstanceCountLimit => "InstanceCount",
        Field::TtlHours => "TimeToLiveInHours",
        Field::InstanceName => "InstanceName",
        Field::Page => "PageSize",
        Field::Status => "InvokeStatus",
        Field::NextToken => "NextToken",
        Field::Tags => "ResourceTag",
        Field::ClientToken => "ClientToken",
        Field::RepeatMode => "RepeatMode",
        Field::Frequency => "Frequency",
        Field::TargetDir => "TargetDir",
        Field::FileName => "Name",
        Field::FileMode => "FileMode",
        Field::FileOwner => "FileOwner",
        Field::FileGroup => "FileGroup",
        Field::FileContent => "Content",
        // Not parameters of any ECS action (Alibaba has no rate control: the ECS actions never
        // set max_concurrency or max_errors).
        Field::Password
        | Field::Role
        | Field::ExpiresInDays
        | Field::Register
        | Field::MaxConcurrency
        | Field::MaxErrors => "Parameter",
    }
}

impl From<dispatch::Error> for EcsError {
    fn from(e: dispatch::Error) -> Self {
        use dispatch::Error;
        match e {
            Error::Invalid { field, message } => EcsError::invalid(parameter(field), message),
            Error::NotFound { kind, id } => {
                let code = match kind {
                    Kind::Instance => "InvalidInstance.NotFound",
                    Kind::Invocation => "InvalidInvokeId.NotFound",
                    Kind::Result => "InvalidInvokeId.NotFound",
                    Kind::Command => "InvalidCommandId.NotFound",
                    Kind::Activation => "InvalidActivationId.NotFound",
                    Kind::User | Kind::Token | Kind::AccessKey => "InvalidParameter.NotFound",
                    Kind::FileSend => "InvalidInvokeId.NotFound",
                };
                EcsError::new(
                    StatusCode::NOT_FOUND,
                    code,
                    format!("The specified {} {id:?} does not exist.", kind.as_str()),
                )
            }
            Error::UnknownInstances(ids) => EcsError::new(
                StatusCode::NOT_FOUND,
                "InvalidInstance.NotFound",
                format!(
                    "The specified instances do not exist in this region: {}",
                    ids.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            Error::Quota { ref quota, .. } => {
                let code = match quota {
                    QuotaKind::RetainedCommands { .. } => "CmdCount.ExceedQuota",
                    QuotaKind::AccessKeys => "QuotaExceed.AccessKey",
                };
                EcsError::new(StatusCode::FORBIDDEN, code, e.to_string())
            }
            Error::Conflict { conflict, message } => {
                let code = match conflict {
                    Conflict::CommandName => "InvalidCommandName.Duplicate",
                    Conflict::ClientTokenReused => "IdempotentParameterMismatch",
                    _ => "OperationDenied",
                };
                EcsError::new(StatusCode::CONFLICT, code, message)
            }
            e @ Error::Forbidden { .. } => EcsError::new(
                StatusCode::FORBIDDEN,
                "Forbidden.RAM",
                format!("User not authorized to operate on the specified resource: {e}."),
            ),
            e @ (Error::Login(_) | Error::Enrolment { .. }) => {
                EcsError::new(StatusCode::FORBIDDEN, "Forbidden", e.to_string())
            }
            Error::Upload(message) => EcsError::internal(anyhow::anyhow!(message)),
            Error::Store(e) => e.into(),
        }
    }
}

impl From<store::Error> for EcsError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::DiskFull => EcsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The server's disk is full; nothing was stored. Try again later.",
            ),
            store::Error::NotFound => EcsError::new(
                StatusCode::NOT_FOUND,
                "InvalidParameter.NotFound",
                "The resource does not exist.",
            ),
            other => EcsError::internal(other),
        }
    }
}
