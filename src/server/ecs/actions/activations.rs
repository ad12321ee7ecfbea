//! Activation codes, which enrol agents (research §8.10): Alibaba's hybrid-cloud activations
//! are fleetrun's.

use super::{Call, Page, ecs_time};
use crate::dispatch::{ActivationRequest, DEFAULT_ACTIVATION_INSTANCES, DEFAULT_TTL_HOURS, Kind};
use crate::protocol::ecs::{Activation, ActivationResponse, CreateActivationResponse, DescribeActivationsResponse};
use crate::server::ecs::error::EcsError;
use crate::server::ecs::params::Params;
use crate::store::ActivationRow;

fn activation(row: ActivationRow, with_disabled: bool) -> Activation {
    Activation {
        // To the nearest hour: the expiry is computed a moment before the row's creation time.
        time_to_live_in_hours: ((row.expires_at - row.created_at).max(0) + 1_800_000) as u64 / 3_600_000,
        instance_count: row.instance_count_limit.max(0) as u64,
        registered_count: row.registered_count.max(0) as u64,
        disabled: with_disabled.then_some(row.disabled),
        creation_time: ecs_time(row.created_at),
        activation_id: row.id,
        description: row.description,
        region_id: row.region_id,
        tags: Vec::new(),
    }
}

pub async fn create_activation(call: Call<'_>, mut p: Params) -> Result<CreateActivationResponse, EcsError> {
    let req = ActivationRequest {
        region_id: p.required("RegionId")?,
        instance_count_limit: p.number("InstanceCount")?.unwrap_or(DEFAULT_ACTIVATION_INSTANCES),
        ttl_hours: Some(p.number("TimeToLiveInHours")?.unwrap_or(DEFAULT_TTL_HOURS)),
        description: p.text("Description"),
    };
    // Any address may enrol with the code; fleetrun keeps no address allow-list yet.
    p.only("IpAddressRange", "0.0.0.0/0")?;
    p.finish()?;
    let (row, code) = call.state.dispatcher.create_activation(&call.actor, req).await?;
    Ok(CreateActivationResponse {
        activation_id: row.id,
        activation_code: code,
    })
}

/// The activation, when it exists in the region the call names.
async fn activation_in(call: &Call<'_>, region_id: &str, activation_id: &str) -> Result<ActivationRow, EcsError> {
    call.state
        .dispatcher
        .list_activations(&call.actor)
        .await?
        .into_iter()
        .find(|a| a.id == activation_id && a.region_id == region_id)
        .ok_or_else(|| {
            crate::dispatch::Error::NotFound {
                kind: Kind::Activation,
                id: activation_id.to_string(),
            }
            .into()
        })
}

pub async fn describe_activations(call: Call<'_>, mut p: Params) -> Result<DescribeActivationsResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let activation_id = p.text("ActivationId");
    let page = Page::read(&mut p, 10, 50)?;
    p.finish()?;
    let matching: Vec<ActivationRow> = call
        .state
        .dispatcher
        .list_activations(&call.actor)
        .await?
        .into_iter()
        .filter(|a| a.region_id == region_id)
        .filter(|a| activation_id.as_ref().is_none_or(|id| &a.id == id))
        .collect();
    let total = matching.len() as u64;
    let shown: Vec<Activation> = page.of(matching).into_iter().map(|a| activation(a, true)).collect();
    Ok(DescribeActivationsResponse {
        paging: page.paging(total, shown.len()),
        activation_list: shown,
    })
}

pub async fn disable_activation(call: Call<'_>, mut p: Params) -> Result<ActivationResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let activation_id = p.required("ActivationId")?;
    p.finish()?;
    activation_in(&call, &region_id, &activation_id).await?;
    call.state
        .dispatcher
        .disable_activation(&call.actor, &activation_id)
        .await?;
    let row = activation_in(&call, &region_id, &activation_id).await?;
    Ok(ActivationResponse {
        activation: activation(row, true),
    })
}

pub async fn delete_activation(call: Call<'_>, mut p: Params) -> Result<ActivationResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let activation_id = p.required("ActivationId")?;
    p.finish()?;
    let row = activation_in(&call, &region_id, &activation_id).await?;
    call.state
        .dispatcher
        .delete_activation(&call.actor, &activation_id)
        .await?;
    Ok(ActivationResponse {
        activation: activation(row, false),
    })
}
