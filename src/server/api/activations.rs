//! Activation codes that let agents enrol.

use super::rfc3339;
use crate::dispatch::{ActivationRequest, Actor};
use crate::protocol::api::{Activation, ActivationCreated, ActivationsResponse, CreateActivationRequest};
use crate::server::AppState;
use crate::server::error::{ApiError, ApiJson};
use crate::store::ActivationRow;
use axum::extract::State;
use axum::http::StatusCode;

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

#[utoipa::path(
    post,
    path = "/activations",
    tag = "activations",
    operation_id = "CreateActivation",
    summary = "Create an activation code (admin)",
    request_body = CreateActivationRequest,
    responses(
        (status = 201, description = "Created (admin); the only answer holding the code.", body = ActivationCreated),
    ),
)]
pub async fn create(
    actor: Actor,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateActivationRequest>,
) -> Result<(StatusCode, ApiJson<ActivationCreated>), ApiError> {
    let req = ActivationRequest {
        region_id: req.region_id,
        instance_count_limit: req.instance_count_limit.into(),
        ttl_hours: req.ttl_hours.map(u64::from),
        description: req.description,
    };
    let (row, code) = state.dispatcher.create_activation(&actor, req).await?;
    let created = ActivationCreated {
        activation_id: row.id,
        activation_code: code,
        region_id: row.region_id,
        expires_time: rfc3339(row.expires_at),
    };
    Ok((StatusCode::CREATED, ApiJson(created)))
}

#[utoipa::path(
    get,
    path = "/activations",
    tag = "activations",
    operation_id = "ListActivations",
    summary = "List activations",
    responses(
        (status = 200, description = "Every activation, never with its code.", body = ActivationsResponse),
    ),
)]
pub async fn list(actor: Actor, State(state): State<AppState>) -> Result<ApiJson<ActivationsResponse>, ApiError> {
    let activations: Vec<Activation> = state
        .dispatcher
        .list_activations(&actor)
        .await?
        .into_iter()
        .map(activation_dto)
        .collect();
    Ok(ApiJson(ActivationsResponse {
        total: activations.len() as u64,
        activations,
    }))
}
