//! JSON bodies of the `/api/v1` routes and the agent enrolment route (DESIGN.md §4, §5).
//! Shared by `server::api` (which produces them) and `client` (which consumes them).
//!
//! Request bodies reject unknown fields, so a misspelt option is an error, not a silent default.

use super::CommandType;
use super::{
    CommandSpec, ErrorCode, InvocationStatus, NoUnknownFields, OsType, OutputStream, RateInput, RateLimit, RepeatMode,
    ResultStatus, Tag,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every error answer.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `InvalidParameter.CommandContent`.
    pub code: String,
    /// A sentence saying what was wrong and how to fix it.
    pub message: String,
    pub request_id: String,
}

/// `GET /api/v1/regions`.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionsResponse {
    pub regions: Vec<Region>,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub region_id: String,
    pub instance_count: u64,
}

/// Whether an instance's agent heartbeat is fresh.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceStatus {
    Running,
    Stopped,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub instance_id: String,
    pub name: String,
    pub hostname: String,
    pub region_id: String,
    pub os_type: OsType,
    pub os_name: String,
    pub ip_addresses: Vec<String>,
    pub status: InstanceStatus,
    pub agent: AgentInfo,
    pub tags: BTreeMap<String, String>,
    pub registered_time: String,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent holds a connection to the server right now.
    pub online: bool,
    pub version: String,
    /// The agent protocol version of its last connection (1 or 2); absent before it connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    pub last_heartbeat_time: Option<String>,
    pub supported_command_types: Vec<CommandType>,
}

/// `PATCH /api/v1/instances/{instance_id}`: fields left out keep their value.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModifyInstanceRequest {
    /// The name shown in the console (1–128 characters).
    #[serde(default)]
    pub name: Option<String>,
}

/// `PUT /api/v1/instances/{instance_id}/tags`: the instance's tags become these (at most 20,
/// keys unique).
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTagsRequest {
    pub tags: Vec<Tag>,
}

/// `GET /api/v1/instances`.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancesResponse {
    pub instances: Vec<Instance>,
    pub total: u64,
}

/// `POST /api/v1/activations`.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateActivationRequest {
    pub region_id: String,
    pub instance_count_limit: u32,
    #[serde(default)]
    pub ttl_hours: Option<u32>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Answer to `POST /api/v1/activations`: the only time the code is shown.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationCreated {
    pub activation_id: String,
    pub activation_code: String,
    pub region_id: String,
    pub expires_time: String,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub activation_id: String,
    pub region_id: String,
    pub description: String,
    pub instance_count_limit: u32,
    pub registered_count: u32,
    pub created_time: String,
    pub expires_time: String,
    pub disabled: bool,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationsResponse {
    pub activations: Vec<Activation>,
    pub total: u64,
}

/// `POST /agent/v1/register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub activation_id: String,
    pub activation_code: String,
    pub hostname: String,
    #[serde(default)]
    pub name: Option<String>,
    pub os_type: OsType,
    pub os_name: String,
    pub ip_addresses: Vec<String>,
    pub agent_version: String,
    /// Tags the instance starts with (`fleetrun-agent --tag key=value`). Sent only when there
    /// are some, so an agent without tags still enrols with a server that predates them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub instance_id: String,
    pub instance_secret: String,
}

/// How `command_content` is encoded in a request.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ContentEncoding {
    #[default]
    PlainText,
    Base64,
}

/// `POST /api/v1/invocations` (RunCommand).
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCommandRequest {
    /// The instances to run on; may be empty when `tags` name them.
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// When given, every instance must be in this region (an instance elsewhere is unknown
    /// here), as the ECS API's `RegionId` scopes a call. Required with `tags`.
    #[serde(default)]
    pub region_id: Option<String>,
    /// Also run on every instance of `region_id` that has all these tags (resolved when the run
    /// starts; the union with `instance_ids`, each instance once).
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Idempotency: the same token from the same account within a day answers the first
    /// invocation instead of running again (at most 64 printable ASCII characters).
    #[serde(default)]
    pub client_token: Option<String>,
    /// Tags of the invocation itself (the ECS API's `Tag.N`): shown, select nothing.
    #[serde(default)]
    pub invocation_tags: Vec<Tag>,
    /// What to run; `command_content` is encoded as `content_encoding` says.
    #[serde(flatten)]
    pub spec: CommandSpec,
    #[serde(default)]
    pub content_encoding: ContentEncoding,
    #[serde(default)]
    pub keep_command: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Rate control: how many instances run at once, a count or a percentage of the
    /// instances (`5` or `"10%"`); the rest wait `Pending` and start as others end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<RateInput>,
    /// Rate control: once more results than this (a count or a percentage) have failed, the
    /// ones not started end `Cancelled` (`ExceedMaxErrors`); running ones finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<RateInput>,
    /// When it runs (Alibaba's `RepeatMode`): `Once` by default, `Period` when `frequency` is
    /// given; `NextRebootOnly` and `EveryReboot` run at boots; `DryRun` checks everything and
    /// runs nothing.
    #[serde(default)]
    pub repeat_mode: Option<RepeatMode>,
    /// For `Period`: `rate(5m)`, `at(2026-12-01 10:00:00 Asia/Shanghai)`, or a 6/7-field cron
    /// expression and a time zone (`0 */10 * * * ? Asia/Shanghai`).
    #[serde(default)]
    pub frequency: Option<String>,
    #[serde(flatten)]
    #[cfg_attr(feature = "server", schema(ignore))]
    pub no_unknown_fields: NoUnknownFields,
}

impl RunCommandRequest {
    /// A plain-text shell command with every option at its default.
    pub fn shell(instance_ids: Vec<String>, content: impl Into<String>) -> Self {
        RunCommandRequest::new(instance_ids, CommandSpec::shell(content))
    }

    /// A plain-text command with the given spec and no other option.
    pub fn new(instance_ids: Vec<String>, spec: CommandSpec) -> Self {
        RunCommandRequest {
            instance_ids,
            region_id: None,
            tags: Vec::new(),
            client_token: None,
            invocation_tags: Vec::new(),
            spec,
            content_encoding: ContentEncoding::PlainText,
            keep_command: false,
            name: None,
            description: None,
            parameters: BTreeMap::new(),
            max_concurrency: None,
            max_errors: None,
            repeat_mode: None,
            frequency: None,
            no_unknown_fields: NoUnknownFields,
        }
    }
}

/// Answer to RunCommand and InvokeCommand with `repeat_mode: "DryRun"` (200): what would run,
/// with nothing stored and nothing run.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunResponse {
    /// Always true: nothing was stored or run.
    pub dry_run: bool,
    /// How many of `instances` would run now.
    pub would_run: u64,
    /// Every target (the explicit ids and those the tags resolved to), in id order.
    pub instances: Vec<DryRunInstance>,
}

/// One target of a dry run.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunInstance {
    pub instance_id: String,
    /// The agent is connected and can run the command type: it would get the task at once.
    pub would_run: bool,
    /// The code the result would most likely end with when it would not run now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    /// Why not, in a sentence, when `would_run` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Answer to RunCommand and InvokeCommand.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationCreated {
    pub invoke_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// True when the request's `client_token` was seen before: this is the invocation it made
    /// then, and nothing ran again (answered with 200 rather than 201).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// One invocation, as listed and as fetched (the latter with `results`).
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    pub invoke_id: String,
    pub command_id: Option<String>,
    pub name: String,
    #[serde(flatten)]
    pub spec: CommandSpec,
    pub parameters: BTreeMap<String, String>,
    pub invocation_status: InvocationStatus,
    /// Number of results in each status; statuses with none are left out.
    pub status_counts: BTreeMap<ResultStatus, u64>,
    pub instance_count: u64,
    pub creator: String,
    pub created_time: String,
    /// Rate control as given (a count, or a percentage as a string); absent when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<RateLimit>,
    /// `Pending` results waiting their turn under `max_concurrency` (not yet delivered).
    #[serde(default)]
    pub held_count: u64,
    /// The tag selector it targeted, as asked (the instances it resolved to are its results).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// The region the tags were resolved in (or that scoped `instance_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_id: Option<String>,
    /// Its own tags (the ECS API's `Tag.N`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invocation_tags: Vec<Tag>,
    /// When it runs: `Once`, `Period`, `NextRebootOnly` or `EveryReboot`.
    #[serde(default = "once")]
    pub repeat_mode: RepeatMode,
    /// The schedule of a `Period` invocation, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<String>,
    /// Executions started so far (1 for a one-time invocation; each boot-plan instance counts
    /// its own, and this is the highest). `GET …/executions` lists them.
    #[serde(default)]
    pub repeats: u32,
    /// When the next execution of a `Period` invocation starts, while it is `Scheduled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<String>,
    /// Each instance's result of its latest execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<InvocationResult>>,
}

fn once() -> RepeatMode {
    RepeatMode::Once
}

/// `GET /api/v1/invocations/{invoke_id}/executions`: every execution, each with the results of
/// its own run.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionsResponse {
    pub invoke_id: String,
    pub executions: Vec<Execution>,
}

/// One execution of an invocation: run number `repeats` (from 1), on each instance it reached.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub repeats: u32,
    pub results: Vec<InvocationResult>,
}

/// One instance's result within an invocation.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationResult {
    pub instance_id: String,
    pub invocation_status: ResultStatus,
    pub exit_code: Option<i32>,
    pub error_code: Option<ErrorCode>,
    pub error_info: Option<String>,
    /// The kept output as text (invalid UTF-8 replaced); the raw route has the exact bytes.
    pub output: String,
    /// Bytes of output that were produced but not kept.
    pub dropped: u64,
    pub start_time: Option<String>,
    pub finish_time: Option<String>,
    pub stop_time: Option<String>,
    /// Which execution this is (Alibaba's `Repeats`): 1 for a one-time invocation.
    #[serde(default = "first")]
    pub repeats: u32,
}

fn first() -> u32 {
    1
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationsResponse {
    pub invocations: Vec<Invocation>,
    pub total: u64,
    /// Present when more invocations follow: pass it as `?next_token=` for the next page,
    /// which costs the same however deep it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `POST /api/v1/invocations/{invoke_id}/stop`.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    #[serde(default)]
    pub instance_ids: Option<Vec<String>>,
}

/// One event of `GET /api/v1/invocations/{invoke_id}/stream`.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StreamEvent {
    /// Output of one instance. `offset` is the byte position in that instance's whole output
    /// (a jump in offsets is output that was not kept); `seq` is the agent's chunk number for
    /// live output and absent for output replayed from the store.
    Output {
        instance_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        offset: u64,
        stream: OutputStream,
        /// The bytes, Base64.
        #[serde(with = "super::base64_bytes")]
        #[cfg_attr(feature = "server", schema(value_type = String, format = Byte))]
        data: Bytes,
    },
    /// A result changed status.
    Status {
        instance_id: String,
        invocation_status: ResultStatus,
        exit_code: Option<i32>,
        error_code: Option<ErrorCode>,
        /// Why, in a sentence, when the result did not succeed or was stopped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_info: Option<String>,
    },
    /// Every result is terminal; the stream ends.
    Done { invocation_status: InvocationStatus },
}

/// `POST /api/v1/commands` (CreateCommand).
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateCommandRequest {
    pub region_id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// What to run; `command_content` is encoded as `content_encoding` says.
    #[serde(flatten)]
    pub spec: CommandSpec,
    #[serde(default)]
    pub content_encoding: ContentEncoding,
    #[serde(flatten)]
    #[cfg_attr(feature = "server", schema(ignore))]
    pub no_unknown_fields: NoUnknownFields,
}

/// `PATCH /api/v1/commands/{command_id}`: fields left out keep their value.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModifyCommandRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub command_content: Option<String>,
    #[serde(default)]
    pub content_encoding: ContentEncoding,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub username: Option<String>,
}

/// `POST /api/v1/commands/{command_id}/invoke` (InvokeCommand). Options override the
/// command's own for this run only.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeCommandRequest {
    /// May be empty when `tags` name the instances.
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// As RunCommand's: required with `tags`, and then the command's own region.
    #[serde(default)]
    pub region_id: Option<String>,
    /// As RunCommand's.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// As RunCommand's.
    #[serde(default)]
    pub client_token: Option<String>,
    /// As RunCommand's.
    #[serde(default)]
    pub invocation_tags: Vec<Tag>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Rate control: how many instances run at once, a count or a percentage of the
    /// instances (`5` or `"10%"`); the rest wait `Pending` and start as others end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<RateInput>,
    /// Rate control: once more results than this (a count or a percentage) have failed, the
    /// ones not started end `Cancelled` (`ExceedMaxErrors`); running ones finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<RateInput>,
    /// As in RunCommand.
    #[serde(default)]
    pub repeat_mode: Option<RepeatMode>,
    /// As in RunCommand.
    #[serde(default)]
    pub frequency: Option<String>,
}

/// A retained command.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub command_id: String,
    pub region_id: String,
    pub name: String,
    pub description: String,
    #[serde(flatten)]
    pub spec: CommandSpec,
    pub parameter_names: Vec<String>,
    pub invoke_times: u64,
    pub creator: String,
    pub created_time: String,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandsResponse {
    pub commands: Vec<Command>,
    pub total: u64,
}

/// `GET /api/v1/quotas`.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotasResponse {
    pub quotas: Vec<Quota>,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    /// e.g. `retained_commands`.
    pub name: String,
    /// The region the quota counts in, for per-region quotas.
    pub region_id: Option<String>,
    pub used: u64,
    pub limit: u64,
}

/// `POST /api/v1/tokens`.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// Answer to `POST /api/v1/tokens`: the only time the secret is shown.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token_id: String,
    pub name: String,
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_time: Option<String>,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub token_id: String,
    pub name: String,
    pub created_time: String,
    pub last_used_time: Option<String>,
    pub expires_time: Option<String>,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokensResponse {
    pub tokens: Vec<Token>,
}

/// `POST /api/v1/access-keys`.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccessKeyRequest {
    /// At most 128 characters on one line.
    #[serde(default)]
    pub description: Option<String>,
}

/// Answer to `POST /api/v1/access-keys`: the only time the secret is shown.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessKeyCreated {
    pub access_key_id: String,
    /// Signs requests to the ECS API; not retrievable again.
    pub access_key_secret: String,
    pub description: String,
    pub enabled: bool,
    pub created_time: String,
}

impl std::fmt::Debug for AccessKeyCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeyCreated")
            .field("access_key_id", &self.access_key_id)
            .field("description", &self.description)
            .field("enabled", &self.enabled)
            .field("created_time", &self.created_time)
            .finish_non_exhaustive()
    }
}

/// An AccessKey pair as listed: never its secret.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessKey {
    pub access_key_id: String,
    pub description: String,
    pub enabled: bool,
    pub created_time: String,
    /// The last request it signed that verified, to the minute.
    pub last_used_time: Option<String>,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessKeysResponse {
    pub access_keys: Vec<AccessKey>,
}

/// `PATCH /api/v1/access-keys/{access_key_id}`.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModifyAccessKeyRequest {
    /// False disables the key (requests it signs are refused); true enables it again.
    pub enabled: bool,
}

/// One audit log entry.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time: String,
    pub username: String,
    pub source_ip: String,
    /// The surface the action came through: `api`, `console`, `agent` or `server`.
    #[serde(default)]
    pub via: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditResponse {
    pub entries: Vec<AuditEntry>,
    pub total: u64,
}

/// `POST /api/v1/users` (admin).
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub username: String,
    pub password: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
}

/// `PATCH /api/v1/users/{username}`: an admin may change anything; a user may change only their
/// own password, giving the current one.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModifyUserRequest {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub current_password: Option<String>,
}

/// An account (never with its password).
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub role: String,
    pub disabled: bool,
    pub created_time: String,
}

#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsersResponse {
    pub users: Vec<User>,
}

/// `GET/PATCH /api/v1/settings` (admin): server settings changed at run time.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Whether the API accepts HTTP Basic (API tokens always work).
    pub basic_auth_enabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_command_defaults_match_the_design() {
        let req: RunCommandRequest =
            serde_json::from_str(r#"{"instance_ids":["i-1"],"type":"RunShellScript","command_content":"echo hi"}"#)
                .unwrap();

        assert_eq!(req, RunCommandRequest::shell(vec!["i-1".into()], "echo hi"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<RunCommandRequest>(
            r#"{"instance_ids":[],"type":"RunShellScript","command_content":"x","timeout":5}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
    }
}
