//! Execution records: DescribeInvocations, DescribeInvocationResults and StopInvocation
//! (research §8.4–8.6, the status words of §9).

use super::{Call, Page, content_encoding, ecs_time, encode, legacy_result_status};
use crate::dispatch::{Kind, error::not_found};
use crate::protocol::api::ContentEncoding;
use crate::protocol::ecs::{
    DescribeInvocationResultsResponse, DescribeInvocationsResponse, Empty, Invocation, InvocationResult,
    InvocationResults, InvocationResultsPage, Invocations, InvokeInstance, InvokeInstances, Tags,
};
use crate::protocol::{InvocationStatus, RepeatMode};
use crate::server::ecs::error::EcsError;
use crate::server::ecs::params::Params;
use crate::store::{InvocationFilter, InvocationRow, ResultRow};
use std::collections::HashMap;

/// Most invocations DescribeInvocationResults looks through when no `InvokeId` narrows it to
/// one: the newest, as Alibaba's console shows the newest first.
const RESULTS_SCAN: u64 = 1000;

/// The most output DescribeInvocations answers per instance: its end, as Alibaba answers at most
/// 24 KB there. One call may list 50 invocations of thousands of instances each; the whole kept
/// output of one result is DescribeInvocationResults' (paged by result).
const INVOCATIONS_OUTPUT: u64 = 24 * 1024;

/// The last [`INVOCATIONS_OUTPUT`] bytes of each result's output, read from there on only.
async fn output_ends(store: &crate::store::Store, results: &[ResultRow]) -> Result<HashMap<i64, Vec<u8>>, EcsError> {
    let since: Vec<(i64, u64)> = results
        .iter()
        .map(|r| (r.id, r.output_bytes.saturating_sub(INVOCATIONS_OUTPUT)))
        .collect();
    let from: HashMap<i64, u64> = since.iter().copied().collect();
    let mut chunks = HashMap::new();
    for batch in since.chunks(500) {
        chunks.extend(store.outputs_since(batch).await?);
    }
    Ok(chunks
        .into_iter()
        .map(|(id, chunks)| {
            let start = from.get(&id).copied().unwrap_or(0);
            let mut bytes = Vec::new();
            for chunk in chunks {
                // The first chunk may begin before `start`: its rows are read whole.
                let skip = (start.saturating_sub(chunk.offset) as usize).min(chunk.data.len());
                bytes.extend_from_slice(&chunk.data[skip..]);
            }
            (id, bytes)
        })
        .collect())
}

/// The legacy overall word (`InvokeStatus`): Running, Finished, Failed, PartialFailed, Stopped
/// or Stopping.
fn legacy_status(status: InvocationStatus) -> &'static str {
    match status {
        // Alibaba's scheduled tasks stay Running until stopped.
        InvocationStatus::Pending | InvocationStatus::Scheduled | InvocationStatus::Running => "Running",
        InvocationStatus::Success => "Finished",
        InvocationStatus::Failed => "Failed",
        InvocationStatus::PartialFailed => "PartialFailed",
        InvocationStatus::Stopped => "Stopped",
        InvocationStatus::Stopping => "Stopping",
    }
}

/// `InvokeStatus` as a filter: the overall status it means (`Finished` is `Success`).
fn status_filter(text: &str) -> Result<Option<InvocationStatus>, EcsError> {
    Ok(Some(match text {
        "Running" => InvocationStatus::Running,
        "Finished" | "Success" => InvocationStatus::Success,
        "Failed" => InvocationStatus::Failed,
        "PartialFailed" => InvocationStatus::PartialFailed,
        "Stopped" => InvocationStatus::Stopped,
        "Stopping" => InvocationStatus::Stopping,
        "Pending" => InvocationStatus::Pending,
        "Scheduled" => InvocationStatus::Scheduled,
        _ => {
            return Err(EcsError::invalid(
                "InvokeStatus",
                format!(
                    "{text:?} is not one of Running, Finished, Success, Failed, PartialFailed, Stopped, Stopping, Pending, Scheduled"
                ),
            ));
        }
    }))
}

/// Alibaba's `Repeats`: 0 or 1 for a one-time run (whether it started), the execution's number
/// for a scheduled one.
fn repeats(invocation: &InvocationRow, result: &ResultRow) -> u64 {
    if invocation.plan.repeat_mode == RepeatMode::Once {
        u64::from(result.start_time.is_some())
    } else {
        u64::from(result.repeats)
    }
}

fn exit_code(result: &ResultRow) -> Option<i64> {
    result.exit_code.map(i64::from)
}

/// The most recent moment a result changed.
fn updated(result: &ResultRow, created_at: i64) -> i64 {
    [result.start_time, result.finish_time, result.stop_time]
        .into_iter()
        .flatten()
        .fold(created_at, i64::max)
}

pub async fn describe_invocations(call: Call<'_>, mut p: Params) -> Result<DescribeInvocationsResponse, EcsError> {
    p.required("RegionId")?;
    let invoke_id = p.text("InvokeId");
    let command_id = p.text("CommandId");
    let instance_id = p.text("InstanceId");
    let status = p.text("InvokeStatus").map(|s| status_filter(&s)).transpose()?;
    let include_output = p.bool("IncludeOutput")?.unwrap_or(false);
    let encoding = content_encoding(&mut p, ContentEncoding::Base64);
    let repeat_mode = p
        .text("RepeatMode")
        .map(|text| {
            text.parse::<RepeatMode>().map_err(|_| {
                EcsError::invalid(
                    "RepeatMode",
                    format!("{text:?} is not one of Once, Period, NextRebootOnly, EveryReboot"),
                )
            })
        })
        .transpose()?;
    p.only("Timed", "false")?;
    let page = Page::read(&mut p, 10, 50)?;
    p.finish()?;

    let store = &call.state.store;
    let (rows, total) = if let Some(id) = &invoke_id {
        match store.invocation(id).await {
            Ok(row)
                if command_id.as_ref().is_none_or(|c| row.command_id.as_ref() == Some(c))
                    && status.flatten().is_none_or(|s| row.status() == s)
                    && repeat_mode.is_none_or(|m| row.plan.repeat_mode == m) =>
            {
                (page.of(vec![row]), 1)
            }
            Ok(_) | Err(crate::store::Error::NotFound) => (Vec::new(), 0),
            Err(e) => return Err(e.into()),
        }
    } else {
        let filter = InvocationFilter {
            instance: instance_id.clone(),
            command_id,
            status: status.flatten(),
            repeat_mode,
            since: None,
            until: None,
            after: None,
            offset: page.offset,
            limit: page.size,
        };
        let found = store.list_invocations(&filter).await?;
        (found.rows, found.total)
    };

    let mut invocations = Vec::with_capacity(rows.len());
    for row in rows {
        let mut results = store.results(&row.id).await?;
        if let Some(instance) = &instance_id {
            results.retain(|r| &r.instance_id == instance);
        }
        let mut outputs = if include_output {
            output_ends(store, &results).await?
        } else {
            HashMap::new()
        };
        let instances = results
            .into_iter()
            .map(|r| {
                let output = include_output.then(|| outputs.remove(&r.id).unwrap_or_default());
                // Bytes produced but not in this answer: not kept, or before its 24 KB.
                let dropped = match &output {
                    Some(bytes) => r.output_bytes.saturating_sub(bytes.len() as u64),
                    None => r.dropped,
                };
                InvokeInstance {
                    output: output.map(|bytes| encode(&bytes, encoding)),
                    dropped,
                    exit_code: exit_code(&r),
                    invocation_status: r.status.as_str().into(),
                    instance_invoke_status: legacy_result_status(r.status).into(),
                    error_code: r.error_code.map(|c| c.as_str().to_string()).unwrap_or_default(),
                    error_info: r.error_info.clone().unwrap_or_default(),
                    repeats: repeats(&row, &r),
                    timed: false,
                    creation_time: ecs_time(row.created_at),
                    start_time: r.start_time.map(ecs_time),
                    finish_time: r.finish_time.map(ecs_time),
                    stop_time: r.stop_time.map(ecs_time),
                    update_time: ecs_time(updated(&r, row.created_at)),
                    instance_id: r.instance_id,
                }
            })
            .collect();
        invocations.push(invocation(row, encoding, instances));
    }
    Ok(DescribeInvocationsResponse {
        paging: page.paging(total, invocations.len()),
        invocations: Invocations {
            invocation: invocations,
        },
    })
}

fn invocation(row: InvocationRow, encoding: ContentEncoding, instances: Vec<InvokeInstance>) -> Invocation {
    let status = row.status();
    Invocation {
        invocation_status: status.as_str().into(),
        invoke_status: legacy_status(status).into(),
        command_type: row.spec.command_type.as_str().into(),
        command_content: encode(row.spec.content.as_bytes(), encoding),
        parameters: serde_json::to_string(&row.parameters).unwrap_or_default(),
        repeat_mode: row.plan.repeat_mode.as_str().into(),
        frequency: row.plan.frequency.clone().unwrap_or_default(),
        timed: false,
        timeout: row.spec.timeout_secs,
        username: row.spec.username,
        working_dir: row.spec.working_dir,
        creation_time: ecs_time(row.created_at),
        creator: row.creator,
        tags: Tags::of(&row.invocation_tags),
        invoke_instances: InvokeInstances {
            invoke_instance: instances,
        },
        invoke_id: row.id,
        command_id: row.command_id,
        command_name: row.name,
    }
}

pub async fn describe_invocation_results(
    call: Call<'_>,
    mut p: Params,
) -> Result<DescribeInvocationResultsResponse, EcsError> {
    p.required("RegionId")?;
    let invoke_id = p.text("InvokeId");
    let instance_id = p.text("InstanceId");
    let command_id = p.text("CommandId");
    let record_status = p.text("InvokeRecordStatus");
    if let Some(s) = &record_status {
        if !["Running", "Finished", "Failed", "PartialFailed", "Stopped", "Stopping"].contains(&s.as_str()) {
            return Err(EcsError::invalid(
                "InvokeRecordStatus",
                format!("{s:?} is not one of Running, Finished, Failed, PartialFailed, Stopped, Stopping"),
            ));
        }
    }
    // Every execution of scheduled invocations, or (by default) each instance's latest.
    let history = p.bool("IncludeHistory")?.unwrap_or(false);
    let encoding = content_encoding(&mut p, ContentEncoding::Base64);
    let page = Page::read(&mut p, 10, 50)?;
    p.finish()?;

    let store = &call.state.store;
    let invocations: Vec<InvocationRow> = match &invoke_id {
        Some(id) => vec![store.invocation(id).await.map_err(not_found(Kind::Invocation, id))?],
        None => {
            let filter = InvocationFilter {
                instance: instance_id.clone(),
                command_id: command_id.clone(),
                status: None,
                repeat_mode: None,
                since: None,
                until: None,
                after: None,
                offset: 0,
                limit: RESULTS_SCAN,
            };
            store.list_invocations(&filter).await?.rows
        }
    };
    let mut rows: Vec<(&InvocationRow, ResultRow)> = Vec::new();
    for invocation in &invocations {
        if command_id
            .as_ref()
            .is_some_and(|c| invocation.command_id.as_ref() != Some(c))
        {
            continue;
        }
        let results = if history {
            store.execution_results(&invocation.id).await?
        } else {
            store.results(&invocation.id).await?
        };
        for result in results {
            let wanted_instance = instance_id.as_ref().is_none_or(|i| &result.instance_id == i);
            let wanted_status = record_status
                .as_deref()
                .is_none_or(|s| s == legacy_result_status(result.status));
            if wanted_instance && wanted_status {
                rows.push((invocation, result));
            }
        }
    }
    let total = rows.len() as u64;
    let shown = page.of(rows);
    let ids: Vec<i64> = shown.iter().map(|(_, r)| r.id).collect();
    let mut outputs = store.outputs(&ids).await?;
    let results: Vec<InvocationResult> = shown
        .into_iter()
        .map(|(invocation, r)| InvocationResult {
            invoke_id: invocation.id.clone(),
            command_id: invocation.command_id.clone(),
            output: encode(&outputs.remove(&r.id).unwrap_or_default(), encoding),
            exit_code: exit_code(&r),
            invocation_status: r.status.as_str().into(),
            invoke_record_status: legacy_result_status(r.status).into(),
            error_code: r.error_code.map(|c| c.as_str().to_string()).unwrap_or_default(),
            error_info: r.error_info.clone().unwrap_or_default(),
            dropped: r.dropped,
            repeats: repeats(invocation, &r),
            start_time: r.start_time.map(ecs_time),
            finished_time: r.finish_time.map(ecs_time),
            stop_time: r.stop_time.map(ecs_time),
            username: invocation.spec.username.clone(),
            tags: Tags::of(&invocation.invocation_tags),
            instance_id: r.instance_id,
        })
        .collect();
    Ok(DescribeInvocationResultsResponse {
        invocation: InvocationResultsPage {
            paging: page.paging(total, results.len()),
            invocation_results: InvocationResults {
                invocation_result: results,
            },
        },
    })
}

pub async fn stop_invocation(call: Call<'_>, mut p: Params) -> Result<Empty, EcsError> {
    p.required("RegionId")?;
    let invoke_id = p.required("InvokeId")?;
    let instance_ids = p.list("InstanceId")?;
    p.finish()?;
    let only = (!instance_ids.is_empty()).then_some(instance_ids.as_slice());
    call.state.dispatcher.stop(&call.actor, &invoke_id, only).await?;
    Ok(Empty {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_overall_status_has_a_legacy_word_and_filters_back() {
        for status in InvocationStatus::ALL {
            let word = legacy_status(*status);
            assert!(["Running", "Finished", "Failed", "PartialFailed", "Stopped", "Stopping"].contains(&word));
        }
        assert_eq!(status_filter("Finished").unwrap(), Some(InvocationStatus::Success));
        assert_eq!(status_filter("Scheduled").unwrap(), Some(InvocationStatus::Scheduled));
        assert!(status_filter("Done").is_err());
    }
}
