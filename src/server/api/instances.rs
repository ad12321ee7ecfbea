//! Regions and instances.

use super::{rfc3339, window};
use crate::protocol::api::{AgentInfo, Instance, InstanceStatus, InstancesResponse, Region, RegionsResponse};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::store::{self, InstanceFilter, InstanceRow, Role, now_ms};
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

/// The instance as the API shows it. `lost_before`: heartbeats older than this are stale.
pub fn instance_dto(row: InstanceRow, lost_before: i64) -> Instance {
    let fresh = row.last_heartbeat_at.is_some_and(|t| t > lost_before);
    Instance {
        instance_id: row.id,
        name: row.name,
        hostname: row.hostname,
        region_id: row.region_id,
        os_type: row.os_type,
        os_name: row.os_name,
        ip_addresses: row.ip_addresses,
        status: if fresh {
            InstanceStatus::Running
        } else {
            InstanceStatus::Stopped
        },
        agent: AgentInfo {
            online: row.online,
            version: row.agent_version,
            last_heartbeat_time: row.last_heartbeat_at.map(rfc3339),
            supported_command_types: row.supported_command_types,
        },
        tags: row.tags,
        registered_time: rfc3339(row.registered_at),
    }
}

fn lost_before(state: &AppState) -> i64 {
    now_ms() - state.dispatcher.settings().heartbeat_loss().as_millis() as i64
}

pub async fn regions(_: Caller, State(state): State<AppState>) -> Result<ApiJson<RegionsResponse>, ApiError> {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    region_id: Option<String>,
    status: Option<String>,
    q: Option<String>,
    page: Option<u64>,
    page_size: Option<u64>,
}

pub async fn list(
    _: Caller,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<InstancesResponse>, ApiError> {
    let (offset, limit) = window(query.page, query.page_size)?;
    let running = match query.status.as_deref() {
        None | Some("") => None,
        Some("Running") => Some(true),
        Some("Stopped") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(
                "InvalidParameter.Status",
                format!("instance status {other:?} is not one of Running, Stopped"),
            ));
        }
    };
    let fresh_after = lost_before(&state);
    let filter = InstanceFilter {
        region_id: query.region_id.filter(|r| !r.is_empty()),
        running,
        fresh_after,
        query: query.q.filter(|q| !q.trim().is_empty()),
        offset,
        limit,
    };
    let (rows, total) = state.store.list_instances(&filter).await?;
    let instances = rows.into_iter().map(|r| instance_dto(r, fresh_after)).collect();
    Ok(ApiJson(InstancesResponse { instances, total }))
}

pub async fn show(
    _: Caller,
    State(state): State<AppState>,
    ApiPath(instance_id): ApiPath<String>,
) -> Result<ApiJson<Instance>, ApiError> {
    let row = state.store.instance(&instance_id).await.map_err(|e| match e {
        store::Error::NotFound => ApiError::not_found("instance", &instance_id),
        other => other.into(),
    })?;
    Ok(ApiJson(instance_dto(row, lost_before(&state))))
}

/// Deregisters an instance: revokes its credential and closes its connection at once.
pub async fn deregister(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(instance_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    state.store.delete_instance(&instance_id).await.map_err(|e| match e {
        store::Error::NotFound => ApiError::not_found("instance", &instance_id),
        other => other.into(),
    })?;
    state.dispatcher.disconnect(&instance_id);
    state.audit(&caller, "DeregisterInstance", &instance_id, "").await;
    Ok(StatusCode::NO_CONTENT)
}
