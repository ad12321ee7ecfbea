//! Activation codes that let agents enrol.

use super::rfc3339;
use crate::protocol::api::{Activation, ActivationCreated, ActivationsResponse, CreateActivationRequest};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiJson};
use crate::store::{ActivationRow, NewActivation, Role, ids, now_ms};
use axum::extract::State;
use axum::http::StatusCode;

/// Most instances one activation may enrol, and its longest life (Alibaba: 1,000; we allow more).
const MAX_INSTANCE_COUNT: u32 = 100_000;
const MAX_TTL_HOURS: u32 = 24 * 365;
const DEFAULT_TTL_HOURS: u32 = 4;

fn activation_dto(row: ActivationRow) -> Activation {
    Activation {
        activation_id: row.id,
        region_id: row.region_id,
        description: row.description,
        instance_count_limit: row.instance_count_limit as u32,
        registered_count: row.registered_count as u32,
        created_time: rfc3339(row.created_at),
        expires_time: rfc3339(row.expires_at),
        disabled: row.disabled,
    }
}

pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateActivationRequest>,
) -> Result<(StatusCode, ApiJson<ActivationCreated>), ApiError> {
    caller.require(Role::Admin)?;
    crate::dispatch::check_region(&req.region_id)?;
    if !(1..=MAX_INSTANCE_COUNT).contains(&req.instance_count_limit) {
        return Err(ApiError::bad_request(
            "InvalidParameter.InstanceCountLimit",
            format!("`instance_count_limit` must be between 1 and {MAX_INSTANCE_COUNT}"),
        ));
    }
    let ttl_hours = req.ttl_hours.unwrap_or(DEFAULT_TTL_HOURS);
    if !(1..=MAX_TTL_HOURS).contains(&ttl_hours) {
        return Err(ApiError::bad_request(
            "InvalidParameter.TtlHours",
            format!("`ttl_hours` must be between 1 and {MAX_TTL_HOURS} (one year)"),
        ));
    }
    let description = req.description.unwrap_or_default();
    if description.chars().count() > 100 || description.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "InvalidParameter.Description",
            "`description` must be at most 100 characters without control characters",
        ));
    }
    let code = ids::new_secret();
    let new = NewActivation {
        region_id: req.region_id,
        description,
        instance_count_limit: req.instance_count_limit,
        expires_at: now_ms() + i64::from(ttl_hours) * 3_600_000,
        code_hash: ids::hash_secret(&code),
    };
    let row = state.store.create_activation(&new).await?;
    state
        .audit(
            &caller,
            "CreateActivation",
            &row.id,
            &format!("region {} limit {}", row.region_id, row.instance_count_limit),
        )
        .await;
    let created = ActivationCreated {
        activation_id: row.id,
        activation_code: code,
        region_id: row.region_id,
        expires_time: rfc3339(row.expires_at),
    };
    Ok((StatusCode::CREATED, ApiJson(created)))
}

pub async fn list(caller: Caller, State(state): State<AppState>) -> Result<ApiJson<ActivationsResponse>, ApiError> {
    caller.require(Role::Admin)?;
    let activations: Vec<Activation> = state
        .store
        .list_activations()
        .await?
        .into_iter()
        .map(activation_dto)
        .collect();
    Ok(ApiJson(ActivationsResponse {
        total: activations.len() as u64,
        activations,
    }))
}
