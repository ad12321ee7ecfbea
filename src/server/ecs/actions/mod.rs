//! The ECS actions fleetrun serves, one function each, grouped by what they act on. Each reads
//! Alibaba's parameters, calls the domain (the same calls as the JSON API and the console), and
//! answers with a `protocol::ecs` body.

mod activations;
mod commands;
mod files;
mod instances;
mod invocations;

use super::error::EcsError;
use super::params::Params;
use crate::dispatch::Actor;
use crate::protocol::ecs::Paging;
use crate::protocol::{ResultStatus, api::ContentEncoding};
use crate::server::AppState;
use axum::http::StatusCode;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat};
use serde::Serialize;

/// One authenticated call.
pub struct Call<'a> {
    pub state: &'a AppState,
    pub actor: Actor,
    /// The `Host` the client called, for DescribeRegions' endpoint.
    pub host: String,
}

/// The actions, by name.
pub async fn run(action: &str, call: Call<'_>, params: Params) -> Result<serde_json::Value, EcsError> {
    match action {
        "RunCommand" => answer(commands::run_command(call, params).await),
        "InvokeCommand" => answer(commands::invoke_command(call, params).await),
        "CreateCommand" => answer(commands::create_command(call, params).await),
        "DescribeCommands" => answer(commands::describe_commands(call, params).await),
        "ModifyCommand" => answer(commands::modify_command(call, params).await),
        "DeleteCommand" => answer(commands::delete_command(call, params).await),
        "DescribeInvocations" => answer(invocations::describe_invocations(call, params).await),
        "DescribeInvocationResults" => answer(invocations::describe_invocation_results(call, params).await),
        "StopInvocation" => answer(invocations::stop_invocation(call, params).await),
        "SendFile" => answer(files::send_file(call, params).await),
        "DescribeSendFileResults" => answer(files::describe_send_file_results(call, params).await),
        "DescribeCloudAssistantStatus" => answer(instances::describe_cloud_assistant_status(call, params).await),
        "DescribeInstances" => answer(instances::describe_instances(call, params).await),
        "DescribeRegions" => answer(instances::describe_regions(call, params).await),
        "DescribeManagedInstances" => answer(instances::describe_managed_instances(call, params).await),
        "DeregisterManagedInstance" => answer(instances::deregister_managed_instance(call, params).await),
        "CreateActivation" => answer(activations::create_activation(call, params).await),
        "DescribeActivations" => answer(activations::describe_activations(call, params).await),
        "DisableActivation" => answer(activations::disable_activation(call, params).await),
        "DeleteActivation" => answer(activations::delete_activation(call, params).await),
        _ => Err(EcsError::new(
            StatusCode::NOT_FOUND,
            "InvalidAction.NotFound",
            format!("Specified api {action:?} is not found: see docs/ECS-API.md for the actions fleetrun serves."),
        )),
    }
}

fn answer<T: Serialize>(result: Result<T, EcsError>) -> Result<serde_json::Value, EcsError> {
    serde_json::to_value(result?).map_err(EcsError::internal)
}

/// A Describe action's window, from either pagination style (research §10): `PageNumber` and
/// `PageSize`, or `NextToken` and `MaxResults`. The token is the offset of the next row.
struct Page {
    offset: u64,
    size: u64,
}

impl Page {
    /// Reads the paging parameters; sizes above `max` are lowered to it, as Alibaba does.
    fn read(params: &mut Params, default: u64, max: u64) -> Result<Page, EcsError> {
        let max_results = params.number("MaxResults")?;
        let token = params.text("NextToken");
        let page_number = params.number("PageNumber")?;
        let page_size = params.number("PageSize")?;
        if max_results.is_some() || token.is_some() {
            let offset = match token {
                Some(t) => t
                    .parse()
                    .map_err(|_| EcsError::invalid("NextToken", "is not a token this server gave"))?,
                None => 0,
            };
            let size = max_results.unwrap_or(default).clamp(1, max);
            return Ok(Page { offset, size });
        }
        let size = page_size.unwrap_or(default).clamp(1, max);
        let number = page_number.unwrap_or(1).max(1);
        Ok(Page {
            offset: (number - 1).saturating_mul(size),
            size,
        })
    }

    /// The paging fields of an answer with `shown` rows out of `total`.
    fn paging(&self, total: u64, shown: usize) -> Paging {
        let end = self.offset + shown as u64;
        Paging {
            total_count: total,
            page_number: self.offset / self.size + 1,
            page_size: self.size,
            next_token: if end < total { end.to_string() } else { String::new() },
        }
    }

    /// This page of rows already in memory.
    fn of<T>(&self, rows: Vec<T>) -> Vec<T> {
        rows.into_iter()
            .skip(self.offset as usize)
            .take(self.size as usize)
            .collect()
    }
}

/// How text goes out (`ContentEncoding`): Base64 unless PlainText is asked for. An unknown
/// value means the default, as Alibaba treats it.
fn content_encoding(params: &mut Params, default: ContentEncoding) -> ContentEncoding {
    match params
        .text("ContentEncoding")
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        Some("plaintext") => ContentEncoding::PlainText,
        Some("base64") => ContentEncoding::Base64,
        _ => default,
    }
}

/// Bytes as the encoding says; plain text replaces invalid UTF-8.
fn encode(bytes: &[u8], encoding: ContentEncoding) -> String {
    match encoding {
        ContentEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        ContentEncoding::PlainText => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Alibaba's time format: `2019-12-20T06:15:54Z`.
fn ecs_time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The per-instance word of the older status fields (`InvokeRecordStatus`,
/// `InstanceInvokeStatus`): Running, Finished, Failed, Stopped or Stopping.
fn legacy_result_status(status: ResultStatus) -> &'static str {
    match status {
        ResultStatus::Pending | ResultStatus::Running => "Running",
        ResultStatus::Success => "Finished",
        ResultStatus::Stopping => "Stopping",
        ResultStatus::Cancelled | ResultStatus::Terminated => "Stopped",
        ResultStatus::Invalid
        | ResultStatus::Aborted
        | ResultStatus::Failed
        | ResultStatus::Error
        | ResultStatus::Timeout => "Failed",
    }
}

/// `*` matches any run of characters (Alibaba's name filters); case-sensitive otherwise.
fn wildcard(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_alibabas_name_filters_do() {
        assert!(wildcard("web-*", "web-1"));
        assert!(wildcard("*-1", "web-1"));
        assert!(wildcard("w*b*1", "web-1"));
        assert!(wildcard("web-1", "web-1"));
        assert!(!wildcard("web-1", "web-12"));
        assert!(!wildcard("a*a", "a"));
    }

    #[test]
    fn both_paging_styles_give_the_next_token_until_the_end() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let by_page = pairs(&[("PageNumber", "2"), ("PageSize", "10")]);
        let page = Page::read(&mut Params::new(by_page.iter()), 10, 50).unwrap();
        assert_eq!((page.offset, page.size), (10, 10));
        let paging = page.paging(25, 10);
        assert_eq!((paging.page_number, paging.next_token.as_str()), (2, "20"));

        let by_token = pairs(&[("NextToken", "20"), ("MaxResults", "500")]);
        let page = Page::read(&mut Params::new(by_token.iter()), 10, 50).unwrap();
        assert_eq!((page.offset, page.size), (20, 50));
        assert_eq!(page.paging(25, 5).next_token, "");
    }
}
