//! Instances as ECS and its hybrid-cloud "managed instances" show them (research §8.7–8.10):
//! every fleetrun instance is a machine with a Cloud Assistant, enrolled by an activation.

use super::{Call, Page, ecs_time, wildcard};
use crate::dispatch::{Kind, Liveness, error::not_found};
use crate::protocol::OsType;
use crate::protocol::ecs::{
    CloudAssistantStatus, CloudAssistantStatusSet, DeregisterManagedInstanceResponse,
    DescribeCloudAssistantStatusResponse, DescribeInstancesResponse, DescribeManagedInstancesResponse,
    DescribeRegionsResponse, Instance, Instances, IpAddresses, ManagedInstance, Region, Regions, Tag, Tags,
    VpcAttributes,
};
use crate::server::ecs::error::EcsError;
use crate::server::ecs::params::Params;
use crate::store::{InstanceFilter, InstanceRow};

/// The instances of the region named in `ids` (in their order), or all of the region when
/// `ids` is empty: the Describe actions filter on fields the store does not index (names with
/// wildcards, addresses), and a region's rows are few enough.
async fn instances(call: &Call<'_>, region_id: &str, ids: &[String]) -> Result<Vec<InstanceRow>, EcsError> {
    if !ids.is_empty() {
        let mut rows = call.state.store.instances_by_ids(ids).await?;
        rows.retain(|r| r.region_id == region_id);
        rows.sort_by_key(|r| ids.iter().position(|id| id == &r.id));
        return Ok(rows);
    }
    let filter = InstanceFilter {
        region_id: Some(region_id.to_string()),
        fresh_after: call.state.dispatcher.lost_before(),
        offset: 0,
        limit: u64::MAX >> 1,
        ..Default::default()
    };
    Ok(call.state.store.list_instances(&filter).await?.0)
}

fn tags(row: &InstanceRow) -> Vec<Tag> {
    row.tags
        .iter()
        .map(|(k, v)| Tag {
            tag_key: k.clone(),
            tag_value: v.clone(),
        })
        .collect()
}

/// Whether the instance has every tag of a `Tag.N` filter; a tag given without a value matches
/// any value of its key, as in Alibaba's Describe actions.
fn has_tags(row: &InstanceRow, wanted: &[crate::protocol::Tag]) -> bool {
    wanted.iter().all(|t| {
        row.tags
            .get(&t.key)
            .is_some_and(|v| t.value.is_empty() || v == &t.value)
    })
}

/// Alibaba writes `Linux` and `Windows` in Cloud Assistant's fields.
fn os_word(os: OsType) -> &'static str {
    match os {
        OsType::Linux => "Linux",
        OsType::Windows => "Windows",
    }
}

pub async fn describe_instances(call: Call<'_>, mut p: Params) -> Result<DescribeInstancesResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let ids = p.json_list("InstanceIds")?;
    let name = p.text("InstanceName");
    let status = p.text("Status");
    if let Some(s) = &status {
        if !["Pending", "Running", "Starting", "Stopping", "Stopped"].contains(&s.as_str()) {
            return Err(EcsError::invalid(
                "Status",
                format!("{s:?} is not one of Pending, Running, Starting, Stopping, Stopped"),
            ));
        }
    }
    let tagged = p.tags("Tag")?;
    let page = Page::read(&mut p, 10, 100)?;
    p.finish()?;

    let rows = instances(&call, &region_id, &ids).await?;
    let dispatcher = &call.state.dispatcher;
    let matching: Vec<(InstanceRow, Liveness)> = rows
        .into_iter()
        .map(|r| {
            let liveness = dispatcher.liveness(&r);
            (r, liveness)
        })
        .filter(|(r, _)| has_tags(r, &tagged))
        .filter(|(r, _)| name.as_deref().is_none_or(|n| wildcard(n, &r.name)))
        .filter(|(_, l)| status.as_deref().is_none_or(|s| s == running_word(l)))
        .collect();
    let total = matching.len() as u64;
    let shown: Vec<Instance> = page
        .of(matching)
        .into_iter()
        .map(|(r, liveness)| Instance {
            status: running_word(&liveness).into(),
            os_type: r.os_type.as_str().into(),
            tags: Tags { tag: tags(&r) },
            vpc_attributes: VpcAttributes {
                private_ip_address: IpAddresses {
                    ip_address: r.ip_addresses.clone(),
                },
            },
            inner_ip_address: IpAddresses::default(),
            public_ip_address: IpAddresses::default(),
            creation_time: ecs_time(r.registered_at),
            description: String::new(),
            instance_id: r.id,
            instance_name: r.name,
            host_name: r.hostname,
            region_id: r.region_id,
            os_name: r.os_name,
        })
        .collect();
    Ok(DescribeInstancesResponse {
        paging: page.paging(total, shown.len()),
        instances: Instances { instance: shown },
    })
}

/// An instance is `Running` while its agent's heartbeat is fresh (DESIGN §4).
fn running_word(liveness: &Liveness) -> &'static str {
    if liveness.running { "Running" } else { "Stopped" }
}

pub async fn describe_cloud_assistant_status(
    call: Call<'_>,
    mut p: Params,
) -> Result<DescribeCloudAssistantStatusResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let ids = p.list("InstanceId")?;
    let os = p.text("OSType").map(|o| o.to_ascii_lowercase());
    let page = Page::read(&mut p, 10, 50)?;
    p.finish()?;

    let rows = instances(&call, &region_id, &ids).await?;
    let matching: Vec<InstanceRow> = rows
        .into_iter()
        .filter(|r| os.as_deref().is_none_or(|o| o == r.os_type.as_str()))
        .collect();
    let total = matching.len() as u64;
    let dispatcher = &call.state.dispatcher;
    let shown: Vec<CloudAssistantStatus> = page
        .of(matching)
        .into_iter()
        .map(|r| CloudAssistantStatus {
            cloud_assistant_status: dispatcher.liveness(&r).online.to_string(),
            cloud_assistant_version: r.agent_version.clone(),
            last_heartbeat_time: r.last_heartbeat_at.map(ecs_time),
            os_type: os_word(r.os_type).into(),
            support_session_manager: false,
            instance_id: r.id,
        })
        .collect();
    Ok(DescribeCloudAssistantStatusResponse {
        paging: page.paging(total, shown.len()),
        instance_cloud_assistant_status_set: CloudAssistantStatusSet {
            instance_cloud_assistant_status: shown,
        },
    })
}

pub async fn describe_regions(call: Call<'_>, mut p: Params) -> Result<DescribeRegionsResponse, EcsError> {
    // Asked of every region list; fleetrun's regions are the same whatever they say.
    p.text("RegionId");
    p.text("AcceptLanguage");
    p.text("ResourceType");
    p.text("InstanceChargeType");
    p.finish()?;
    let regions = call.state.store.regions().await?;
    Ok(DescribeRegionsResponse {
        regions: Regions {
            region: regions
                .into_iter()
                .map(|(region_id, _)| Region {
                    local_name: region_id.clone(),
                    region_id,
                    region_endpoint: call.host.clone(),
                    status: "available".into(),
                })
                .collect(),
        },
    })
}

fn managed(row: InstanceRow, connected: Option<bool>) -> ManagedInstance {
    let tags = connected.is_some().then(|| tags(&row));
    ManagedInstance {
        intranet_ip: row.ip_addresses.first().cloned().unwrap_or_default(),
        os_type: row.os_type.as_str().into(),
        registration_time: ecs_time(row.registered_at),
        connected,
        tags,
        instance_id: row.id,
        instance_name: row.name,
        hostname: row.hostname,
        os_version: row.os_name,
        agent_version: row.agent_version,
        activation_id: row.activation_id,
    }
}

pub async fn describe_managed_instances(
    call: Call<'_>,
    mut p: Params,
) -> Result<DescribeManagedInstancesResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let ids = p.list("InstanceId")?;
    let name = p.text("InstanceName");
    let ip = p.text("InstanceIp");
    let activation_id = p.text("ActivationId");
    let os = p.text("OsType").map(|o| o.to_ascii_lowercase());
    let connected = p.bool("Connected")?;
    let tagged = p.tags("Tag")?;
    let page = Page::read(&mut p, 10, 50)?;
    p.finish()?;

    let rows = instances(&call, &region_id, &ids).await?;
    let dispatcher = &call.state.dispatcher;
    let matching: Vec<(InstanceRow, bool)> = rows
        .into_iter()
        .map(|r| {
            let online = dispatcher.liveness(&r).online;
            (r, online)
        })
        .filter(|(r, _)| name.as_deref().is_none_or(|n| wildcard(n, &r.name)))
        .filter(|(r, _)| ip.as_ref().is_none_or(|ip| r.ip_addresses.contains(ip)))
        .filter(|(r, _)| activation_id.as_ref().is_none_or(|a| &r.activation_id == a))
        .filter(|(r, _)| os.as_deref().is_none_or(|o| o == r.os_type.as_str()))
        .filter(|(_, online)| connected.is_none_or(|c| c == *online))
        .filter(|(r, _)| has_tags(r, &tagged))
        .collect();
    let total = matching.len() as u64;
    let shown: Vec<ManagedInstance> = page
        .of(matching)
        .into_iter()
        .map(|(r, online)| managed(r, Some(online)))
        .collect();
    Ok(DescribeManagedInstancesResponse {
        paging: page.paging(total, shown.len()),
        instances: shown,
    })
}

pub async fn deregister_managed_instance(
    call: Call<'_>,
    mut p: Params,
) -> Result<DeregisterManagedInstanceResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let instance_id = p.required("InstanceId")?;
    p.finish()?;
    let row = call
        .state
        .store
        .instance(&instance_id)
        .await
        .map_err(not_found(Kind::Instance, &instance_id))?;
    if row.region_id != region_id {
        return Err(crate::dispatch::Error::UnknownInstances(vec![instance_id]).into());
    }
    call.state.dispatcher.deregister(&call.actor, &instance_id).await?;
    Ok(DeregisterManagedInstanceResponse {
        instance: managed(row, None),
    })
}
