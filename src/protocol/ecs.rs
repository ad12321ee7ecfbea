//! Response bodies of the Alibaba ECS API (2014-05-26) as the official SDKs' models parse them
//! (research/ecs-api-compat.md §8): PascalCase keys, numbers as numbers, booleans as booleans,
//! and the wrapper objects (`Commands.Command[]`) always present, empty when there is nothing.
//! A field fleetrun has no value for is left out, as Alibaba leaves out an unset field.
//! `RequestId` is added to every body by the endpoint.

use serde::Serialize;

/// `{ "Tag": [...] }`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tags {
    pub tag: Vec<Tag>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub tag_key: String,
    pub tag_value: String,
}

impl From<&super::Tag> for Tag {
    fn from(tag: &super::Tag) -> Self {
        Tag {
            tag_key: tag.key.clone(),
            tag_value: tag.value.clone(),
        }
    }
}

impl Tags {
    /// Alibaba's wrapper around a list of tags.
    pub fn of(tags: &[super::Tag]) -> Tags {
        Tags {
            tag: tags.iter().map(Tag::from).collect(),
        }
    }
}

/// The paging fields of a Describe action.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Paging {
    pub total_count: u64,
    pub page_number: u64,
    pub page_size: u64,
    /// Empty on the last page.
    pub next_token: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunCommandResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    pub invoke_id: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvokeCommandResponse {
    pub invoke_id: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateCommandResponse {
    pub command_id: String,
}

/// An action that answers nothing but its `RequestId`.
#[derive(Debug, Clone, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeCommandsResponse {
    #[serde(flatten)]
    pub paging: Paging,
    pub commands: Commands,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Commands {
    pub command: Vec<Command>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Command {
    pub command_id: String,
    pub name: String,
    pub description: String,
    #[serde(rename = "Type")]
    pub command_type: String,
    pub command_content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    pub timeout: u64,
    pub enable_parameter: bool,
    pub parameter_names: ParameterNames,
    pub invoke_times: u64,
    pub creation_time: String,
    pub version: u64,
    pub latest: bool,
    pub tags: Tags,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ParameterNames {
    pub parameter_name: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInvocationsResponse {
    #[serde(flatten)]
    pub paging: Paging,
    pub invocations: Invocations,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Invocations {
    pub invocation: Vec<Invocation>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Invocation {
    pub invoke_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    pub command_name: String,
    pub command_type: String,
    pub command_content: String,
    /// The parameters' values as a JSON object in a string.
    pub parameters: String,
    pub invocation_status: String,
    pub invoke_status: String,
    pub repeat_mode: String,
    /// The schedule of a `Period` invocation; empty otherwise.
    pub frequency: String,
    pub timed: bool,
    pub timeout: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    pub creation_time: String,
    /// The user who ran it.
    pub creator: String,
    pub tags: Tags,
    pub invoke_instances: InvokeInstances,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvokeInstances {
    pub invoke_instance: Vec<InvokeInstance>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvokeInstance {
    pub instance_id: String,
    pub invocation_status: String,
    pub instance_invoke_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub error_code: String,
    pub error_info: String,
    /// Only with `IncludeOutput=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub dropped: u64,
    pub repeats: u64,
    pub timed: bool,
    pub creation_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_time: Option<String>,
    pub update_time: String,
}

/// DescribeInvocationResults: paging sits inside `Invocation`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInvocationResultsResponse {
    pub invocation: InvocationResultsPage,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvocationResultsPage {
    #[serde(flatten)]
    pub paging: Paging,
    pub invocation_results: InvocationResults,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvocationResults {
    pub invocation_result: Vec<InvocationResult>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvocationResult {
    pub invoke_id: String,
    pub instance_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    pub invocation_status: String,
    pub invoke_record_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub error_code: String,
    pub error_info: String,
    pub output: String,
    pub dropped: u64,
    pub repeats: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub tags: Tags,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeCloudAssistantStatusResponse {
    #[serde(flatten)]
    pub paging: Paging,
    pub instance_cloud_assistant_status_set: CloudAssistantStatusSet,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CloudAssistantStatusSet {
    pub instance_cloud_assistant_status: Vec<CloudAssistantStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CloudAssistantStatus {
    pub instance_id: String,
    /// `"true"` or `"false"`: a string in Alibaba's model.
    pub cloud_assistant_status: String,
    pub cloud_assistant_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<String>,
    #[serde(rename = "OSType")]
    pub os_type: String,
    pub support_session_manager: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstancesResponse {
    #[serde(flatten)]
    pub paging: Paging,
    pub instances: Instances,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instances {
    pub instance: Vec<Instance>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    pub instance_id: String,
    pub instance_name: String,
    pub host_name: String,
    pub region_id: String,
    /// `Running` while the agent's heartbeat is fresh, else `Stopped`.
    pub status: String,
    #[serde(rename = "OSType")]
    pub os_type: String,
    #[serde(rename = "OSName")]
    pub os_name: String,
    pub creation_time: String,
    pub description: String,
    pub vpc_attributes: VpcAttributes,
    pub inner_ip_address: IpAddresses,
    pub public_ip_address: IpAddresses,
    pub tags: Tags,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VpcAttributes {
    pub private_ip_address: IpAddresses,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpAddresses {
    pub ip_address: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeRegionsResponse {
    pub regions: Regions,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Regions {
    pub region: Vec<Region>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Region {
    pub region_id: String,
    pub local_name: String,
    pub region_endpoint: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateActivationResponse {
    pub activation_id: String,
    pub activation_code: String,
}

/// DescribeActivations: plain arrays, no wrappers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeActivationsResponse {
    #[serde(flatten)]
    pub paging: Paging,
    pub activation_list: Vec<Activation>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Activation {
    pub activation_id: String,
    pub description: String,
    pub instance_count: u64,
    pub registered_count: u64,
    pub time_to_live_in_hours: u64,
    /// Only in DescribeActivations and DisableActivation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    pub creation_time: String,
    /// The fleetrun region its instances join (not an Alibaba field).
    pub region_id: String,
    pub tags: Vec<Tag>,
}

/// DisableActivation and DeleteActivation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivationResponse {
    pub activation: Activation,
}

/// DescribeManagedInstances: plain arrays, no wrappers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeManagedInstancesResponse {
    #[serde(flatten)]
    pub paging: Paging,
    pub instances: Vec<ManagedInstance>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManagedInstance {
    pub instance_id: String,
    pub instance_name: String,
    pub hostname: String,
    pub os_type: String,
    pub os_version: String,
    pub agent_version: String,
    pub activation_id: String,
    pub intranet_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    pub registration_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeregisterManagedInstanceResponse {
    pub instance: ManagedInstance,
}
