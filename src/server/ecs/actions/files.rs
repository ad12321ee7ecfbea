//! SendFile and DescribeSendFileResults (research §8.11): the content travels inline, at most
//! 32 KB after Base64, as Alibaba limits it; fleetrun's own API takes files up to
//! `--max-file-bytes` as a multipart upload. Both go through the same domain call.

use super::{Call, Page, ecs_time};
use crate::dispatch::SendFile;
use crate::protocol::ecs::{
    DescribeSendFileResultsResponse, FileInvocation, FileInvocations, FileInvokeInstance, FileInvokeInstances,
    SendFileResponse, Tags,
};
use crate::protocol::files::{FileSendStatus, format_mode};
use crate::server::ecs::error::EcsError;
use crate::server::ecs::params::Params;
use base64::Engine as _;

/// Alibaba's limit on `Content`, as sent (after Base64 when it is Base64).
const MAX_CONTENT: usize = 32 * 1024;

/// Sends DescribeSendFileResults looks through: the newest.
const SCAN: u64 = 1000;

pub async fn send_file(call: Call<'_>, mut p: Params) -> Result<SendFileResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let content = p.required("Content")?;
    if content.len() > MAX_CONTENT {
        return Err(EcsError::invalid(
            "Content",
            format!(
                "is {} bytes; SendFile takes at most 32 KB: send larger files with POST /api/v1/files",
                content.len()
            ),
        ));
    }
    let bytes = match p.text("ContentType").unwrap_or_default().to_ascii_lowercase().as_str() {
        "" | "plaintext" => content.into_bytes(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|_| EcsError::invalid("Content", "is not valid Base64 (ContentType is Base64)"))?,
        other => {
            return Err(EcsError::invalid(
                "ContentType",
                format!("{other:?} is not PlainText or Base64"),
            ));
        }
    };
    let request = SendFile {
        instance_ids: p.list("InstanceId")?,
        region_id: Some(region_id),
        name: p.required("Name")?,
        target_dir: p.required("TargetDir")?,
        mode: p.text("FileMode"),
        owner: p.text("FileOwner"),
        group: p.text("FileGroup"),
        overwrite: p.bool("Overwrite")?.unwrap_or(false),
        timeout_secs: p.number("Timeout")?,
        description: p.text("Description").unwrap_or_default(),
    };
    p.finish()?;
    let mut upload = call.state.dispatcher.begin_upload(&call.actor).await?;
    upload.write(&bytes).await?;
    let invoke_id = call.state.dispatcher.send_file(&call.actor, upload, request).await?;
    Ok(SendFileResponse { invoke_id })
}

pub async fn describe_send_file_results(
    call: Call<'_>,
    mut p: Params,
) -> Result<DescribeSendFileResultsResponse, EcsError> {
    let region_id = p.required("RegionId")?;
    let invoke_id = p.text("InvokeId");
    let instance_id = p.text("InstanceId");
    let name = p.text("Name");
    let status = p.text("InvocationStatus");
    let page = Page::read(&mut p, 10, 50)?;
    p.finish()?;
    let dispatcher = &call.state.dispatcher;
    let sends = match &invoke_id {
        Some(id) => match dispatcher.file_send(id).await {
            Ok((send, _)) => vec![send],
            Err(crate::dispatch::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        },
        None => dispatcher.file_sends(0, SCAN).await?.0,
    };
    let mut rows = Vec::new();
    for send in sends.into_iter().filter(|s| s.region_id == region_id) {
        if name.as_deref().is_some_and(|n| n != send.name) {
            continue;
        }
        let (_, results) = dispatcher.file_send(&send.id).await?;
        if instance_id
            .as_deref()
            .is_some_and(|id| !results.iter().any(|r| r.instance_id == id))
        {
            continue;
        }
        let overall = FileSendStatus::of(results.iter().map(|r| r.status));
        if status.as_deref().is_some_and(|s| s != overall.as_str()) {
            continue;
        }
        let created = ecs_time(send.created_at);
        let instances = results
            .iter()
            .filter(|r| instance_id.as_deref().is_none_or(|id| r.instance_id == id))
            .map(|r| FileInvokeInstance {
                instance_id: r.instance_id.clone(),
                invocation_status: r.status.as_str().to_string(),
                error_code: r.error_code.map(|c| c.as_str().to_string()).unwrap_or_default(),
                error_info: r.error_info.clone().unwrap_or_default(),
                creation_time: created.clone(),
                start_time: r.start_time.map(ecs_time),
                finish_time: r.finish_time.map(ecs_time),
                update_time: ecs_time(
                    r.finish_time
                        .or(r.start_time)
                        .or(r.offered_at)
                        .unwrap_or(send.created_at),
                ),
            })
            .collect();
        rows.push(FileInvocation {
            invoke_id: send.id,
            name: send.name,
            description: send.description,
            file_mode: format_mode(send.mode),
            file_owner: send.owner.unwrap_or_else(|| "root".into()),
            file_group: send.group.unwrap_or_else(|| "root".into()),
            target_dir: send.target_dir,
            overwrite: send.overwrite.to_string(),
            vm_count: results.len() as u64,
            creation_time: created,
            invocation_status: overall.as_str().to_string(),
            tags: Tags::default(),
            invoke_instances: FileInvokeInstances {
                invoke_instance: instances,
            },
        });
    }
    let total = rows.len() as u64;
    let shown = page.of(rows);
    Ok(DescribeSendFileResultsResponse {
        paging: page.paging(total, shown.len()),
        invocations: FileInvocations { invocation: shown },
    })
}
