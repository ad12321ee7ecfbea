//! Regions and instances.

use super::{rfc3339, window};
use crate::dispatch::{Actor, Kind, Liveness, error::not_found};
use crate::protocol::api::{
    AgentInfo, Instance, InstanceStatus, InstancesResponse, ModifyInstanceRequest, Region, RegionsResponse,
    SetTagsRequest,
};
use crate::server::AppState;
use crate::server::error::{ApiError, ApiJson, ApiMultiQuery, ApiPath};
use crate::store::{InstanceFilter, InstanceRow};
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

/// The instance as the API shows it.
pub fn instance_dto(row: InstanceRow, liveness: Liveness) -> Instance {
    Instance {
        instance_id: row.id,
        name: row.name,
        hostname: row.hostname,
        region_id: row.region_id,
        os_type: row.os_type,
        os_name: row.os_name,
        ip_addresses: row.ip_addresses,
        status: if liveness.running {
            InstanceStatus::Running
        } else {
            InstanceStatus::Stopped
        },
        agent: AgentInfo {
            online: liveness.online,
            version: row.agent_version,
            protocol_version: row.agent_protocol.map(|v| v as u32),
            last_heartbeat_time: row.last_heartbeat_at.map(rfc3339),
            supported_command_types: row.supported_command_types,
        },
        tags: row.tags,
        registered_time: rfc3339(row.registered_at),
    }
}

#[utoipa::path(
    get,
    path = "/regions",
    tag = "instances",
    operation_id = "ListRegions",
    summary = "List regions",
    responses(
        (status = 200, description = "Every region with its instance count.", body = RegionsResponse),
    ),
)]
pub async fn regions(_: Actor, State(state): State<AppState>) -> Result<ApiJson<RegionsResponse>, ApiError> {
    let regions = state.store.regions().await?;
    let regions = regions
        .into_iter()
        .map(|(region_id, instance_count)| Region {
            region_id,
            instance_count,
        })
        .collect();
    Ok(ApiJson(RegionsResponse { regions }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    region_id: Option<String>,
    status: Option<String>,
    q: Option<String>,
    /// `key` or `key=value`, repeatable: instances with every one of them.
    #[serde(default)]
    tag: Vec<String>,
    page: Option<u64>,
    page_size: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/instances",
    tag = "instances",
    operation_id = "ListInstances",
    summary = "List instances",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of instances and how many match.", body = InstancesResponse),
    ),
)]
pub async fn list(
    _: Actor,
    State(state): State<AppState>,
    ApiMultiQuery(query): ApiMultiQuery<ListQuery>,
) -> Result<ApiJson<InstancesResponse>, ApiError> {
    let (offset, limit) = window(query.page, query.page_size)?;
    let running = crate::dispatch::check::instance_running(query.status.as_deref())?;
    let filter = InstanceFilter {
        region_id: query.region_id.filter(|r| !r.is_empty()),
        running,
        fresh_after: state.dispatcher.lost_before(),
        query: query.q.filter(|q| !q.trim().is_empty()),
        tags: crate::dispatch::tag_filters(&query.tag)?,
        offset,
        limit,
        ..Default::default()
    };
    let (rows, total) = state.store.list_instances(&filter).await?;
    let instances = rows
        .into_iter()
        .map(|r| {
            let liveness = state.dispatcher.liveness(&r);
            instance_dto(r, liveness)
        })
        .collect();
    Ok(ApiJson(InstancesResponse { instances, total }))
}

#[utoipa::path(
    get,
    path = "/instances/{instance_id}",
    tag = "instances",
    operation_id = "DescribeInstance",
    summary = "Get an instance",
    params(("instance_id" = String, Path, description = "The instance's id (`i-…`).")),
    responses(
        (status = 200, description = "The instance.", body = Instance),
    ),
)]
pub async fn show(
    _: Actor,
    State(state): State<AppState>,
    ApiPath(instance_id): ApiPath<String>,
) -> Result<ApiJson<Instance>, ApiError> {
    let row = state
        .store
        .instance(&instance_id)
        .await
        .map_err(not_found(Kind::Instance, &instance_id))?;
    let liveness = state.dispatcher.liveness(&row);
    Ok(ApiJson(instance_dto(row, liveness)))
}

/// Renames an instance.
#[utoipa::path(
    patch,
    path = "/instances/{instance_id}",
    tag = "instances",
    operation_id = "ModifyInstance",
    summary = "Rename an instance",
    params(("instance_id" = String, Path, description = "The instance's id (`i-…`).")),
    request_body = ModifyInstanceRequest,
    responses(
        (status = 200, description = "The instance, renamed (operator).", body = Instance),
    ),
)]
pub async fn modify(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(instance_id): ApiPath<String>,
    ApiJson(req): ApiJson<ModifyInstanceRequest>,
) -> Result<ApiJson<Instance>, ApiError> {
    let row = match req.name {
        Some(name) => state.dispatcher.rename_instance(&actor, &instance_id, &name).await?,
        None => state
            .store
            .instance(&instance_id)
            .await
            .map_err(not_found(Kind::Instance, &instance_id))?,
    };
    let liveness = state.dispatcher.liveness(&row);
    Ok(ApiJson(instance_dto(row, liveness)))
}

/// Replaces an instance's tags.
#[utoipa::path(
    put,
    path = "/instances/{instance_id}/tags",
    tag = "instances",
    operation_id = "SetInstanceTags",
    summary = "Replace an instance's tags",
    params(("instance_id" = String, Path, description = "The instance's id (`i-…`).")),
    request_body = SetTagsRequest,
    responses(
        (status = 200, description = "The instance with its new tags (operator).", body = Instance),
    ),
)]
pub async fn set_tags(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(instance_id): ApiPath<String>,
    ApiJson(req): ApiJson<SetTagsRequest>,
) -> Result<ApiJson<Instance>, ApiError> {
    let row = state
        .dispatcher
        .set_instance_tags(&actor, &instance_id, &req.tags)
        .await?;
    let liveness = state.dispatcher.liveness(&row);
    Ok(ApiJson(instance_dto(row, liveness)))
}

/// Deregisters an instance: revokes its credential and closes its connection at once.
#[utoipa::path(
    delete,
    path = "/instances/{instance_id}",
    tag = "instances",
    operation_id = "DeregisterInstance",
    summary = "Deregister an instance (admin)",
    params(("instance_id" = String, Path, description = "The instance's id (`i-…`).")),
    responses(
        (status = 204, description = "Deregistered (admin): its credential is revoked and its connection closed."),
    ),
)]
pub async fn deregister(
    actor: Actor,
    State(state): State<AppState>,
    ApiPath(instance_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.dispatcher.deregister(&actor, &instance_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
