//! The client subcommands. They print plain text for people; `--json` prints the API's JSON on
//! stdout and nothing else there. `run` lives in `run.rs`; the others are here.

use super::output::outcome;
use super::{ApiClient, Credentials};
use crate::config::{ClientArgs, InstancesArgs, InvocationsArgs, Mode, StopArgs};
use crate::protocol::api::{Invocation, InvocationResult};
use crate::protocol::{ErrorCode, InvocationStatus};
use futures_util::StreamExt as _;
use std::collections::BTreeMap;

/// Invocations whose results are fetched at once to explain their status.
const FETCH_CONCURRENCY: usize = 4;

/// Longest invocation name shown in the list; longer ones are cut.
const NAME_WIDTH: usize = 20;

impl ClientArgs {
    pub(super) fn client(&self) -> anyhow::Result<ApiClient> {
        let credentials = match (&self.token, &self.password) {
            (Some(token), _) => Credentials::Token(token.0.clone()),
            (None, Some(password)) => Credentials::Basic {
                username: self.user.clone(),
                password: password.0.clone(),
            },
            (None, None) => {
                anyhow::bail!("give --token (FLEETRUN_TOKEN) or --password (FLEETRUN_PASSWORD)")
            }
        };
        let tls = crate::tls::client_config(self.ca_file.as_deref())?;
        ApiClient::with_tls(&self.server, credentials, tls)
    }
}

/// Runs a client subcommand; returns the process exit code.
pub async fn run_cli(mode: Mode) -> anyhow::Result<i32> {
    match mode {
        Mode::Run(args) => super::run::run(args).await,
        Mode::Instances(args) => instances(args).await,
        Mode::Invocations(args) => match args.invoke_id.clone() {
            Some(invoke_id) => show_invocation(args, &invoke_id).await,
            None => list_invocations(args).await,
        },
        Mode::Stop(args) => stop(args).await,
        Mode::SendFile(args) => super::send_file::send_file(args).await,
        _ => unreachable!("only client modes reach run_cli"),
    }
}

async fn instances(args: InstancesArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    if let Some(instance_id) = &args.set_tags {
        let tags = args.tags.iter().map(|t| crate::protocol::Tag::parse_pair(t)).collect();
        let instance = client.set_tags(instance_id, tags).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&instance)?);
        } else {
            let tags: Vec<String> = instance.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{instance_id}: tags {}",
                if tags.is_empty() {
                    "cleared".into()
                } else {
                    tags.join(", ")
                }
            );
        }
        return Ok(0);
    }
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(region) = &args.region {
        query.append_pair("region_id", region);
    }
    for tag in &args.tags {
        query.append_pair("tag", tag);
    }
    let instances = client.all_instances(&query.finish()).await?;
    if args.json {
        let total = instances.len();
        let list = crate::protocol::api::InstancesResponse {
            instances,
            total: total as u64,
        };
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:<24} {:<20} {:<14} {:<8} {:<8} TAGS",
        "INSTANCE ID", "NAME", "REGION", "STATUS", "AGENT"
    );
    for i in instances {
        let agent = if i.agent.online { "online" } else { "offline" };
        let tags: Vec<String> = i.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<24} {:<20} {:<14} {:<8} {:<8} {}",
            i.instance_id,
            i.name,
            i.region_id,
            format!("{:?}", i.status),
            agent,
            tags.join(",")
        );
    }
    Ok(0)
}

async fn list_invocations(args: InvocationsArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    let list = client.invocations("page_size=50").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    // The list has no results; fetch them (without output) only where a reason is needed.
    let reasons: Vec<anyhow::Result<String>> = futures_util::stream::iter(&list.invocations)
        .map(|inv| async {
            if !needs_reason(inv.invocation_status) {
                return Ok(String::new());
            }
            let full = client.invocation_without_output(&inv.invoke_id).await?;
            Ok(reason(full.results.as_deref().unwrap_or_default()))
        })
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    println!(
        "{:<24} {:<24} {:>9}  {:<NAME_WIDTH$} STATUS",
        "INVOCATION ID", "CREATED", "INSTANCES", "NAME"
    );
    for (inv, reason) in list.invocations.iter().zip(reasons) {
        let reason = reason?;
        let status = if reason.is_empty() {
            inv.invocation_status.to_string()
        } else {
            format!("{} ({reason})", inv.invocation_status)
        };
        let name: String = inv.name.chars().take(NAME_WIDTH).collect();
        println!(
            "{:<24} {:<24} {:>9}  {name:<NAME_WIDTH$} {status}",
            inv.invoke_id, inv.created_time, inv.instance_count
        );
    }
    if list.total > list.invocations.len() as u64 {
        println!(
            "({} of {} invocations shown, newest first)",
            list.invocations.len(),
            list.total
        );
    }
    Ok(0)
}

/// Whether an invocation in this status ended with something to explain.
fn needs_reason(status: InvocationStatus) -> bool {
    status.is_terminal() && status != InvocationStatus::Success
}

/// Why results did not succeed: their error codes counted (`ExitCodeNonzero ×2`), or the first
/// error info when none has a code. Empty when there is nothing to say.
fn reason(results: &[InvocationResult]) -> String {
    let mut codes: BTreeMap<ErrorCode, u64> = BTreeMap::new();
    for code in results.iter().filter_map(|r| r.error_code) {
        *codes.entry(code).or_default() += 1;
    }
    if codes.is_empty() {
        let info = results.iter().find_map(|r| r.error_info.as_deref());
        return info.unwrap_or_default().to_string();
    }
    let counted: Vec<String> = codes.iter().map(|(code, n)| format!("{code} ×{n}")).collect();
    counted.join(", ")
}

async fn show_invocation(args: InvocationsArgs, invoke_id: &str) -> anyhow::Result<i32> {
    let inv = args.client.client()?.invocation(invoke_id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inv)?);
        return Ok(0);
    }
    print_invocation(&inv);
    Ok(0)
}

fn print_invocation(inv: &Invocation) {
    let name = if inv.name.is_empty() {
        String::new()
    } else {
        format!(" {:?}", inv.name)
    };
    println!(
        "{}{name}: {}, {} instance(s), created {} by {}",
        inv.invoke_id, inv.invocation_status, inv.instance_count, inv.created_time, inv.creator
    );
    if let Some(c) = inv.max_concurrency {
        println!("max concurrency {c}; {} instance(s) waiting their turn", inv.held_count);
    }
    if let Some(e) = inv.max_errors {
        println!("max errors {e}");
    }
    for result in inv.results.iter().flatten() {
        println!("\n== {}: {}", result.instance_id, outcome(result));
        print!("{}", result.output);
        if !result.output.is_empty() && !result.output.ends_with('\n') {
            println!();
        }
    }
}

async fn stop(args: StopArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    let invoke_id = &args.invoke_id;
    let inv = client.invocation_without_output(invoke_id).await?;
    let results = inv.results.unwrap_or_default();
    let chosen: Vec<&InvocationResult> = match &args.instances {
        Some(ids) => results.iter().filter(|r| ids.contains(&r.instance_id)).collect(),
        None => results.iter().collect(),
    };
    // Stopping what has ended changes nothing: say how it ended instead.
    if !chosen.is_empty() && chosen.iter().all(|r| r.invocation_status.is_terminal()) {
        match &args.instances {
            None => println!("{invoke_id} had already finished: {}", inv.invocation_status),
            Some(_) => {
                for result in chosen {
                    println!(
                        "{invoke_id}: {} had already finished: {}",
                        result.instance_id, result.invocation_status
                    );
                }
            }
        }
        return Ok(0);
    }
    client.stop(invoke_id, args.instances).await?;
    println!("stop requested for {invoke_id}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ResultStatus;

    fn result(status: ResultStatus, code: Option<ErrorCode>, info: Option<&str>) -> InvocationResult {
        InvocationResult {
            instance_id: "i-1".into(),
            invocation_status: status,
            exit_code: None,
            error_code: code,
            error_info: info.map(String::from),
            output: String::new(),
            dropped: 0,
            start_time: None,
            finish_time: None,
            stop_time: None,
            repeats: 1,
        }
    }

    #[test]
    fn reasons_count_error_codes_or_fall_back_to_the_first_info() {
        let failed = result(ResultStatus::Failed, Some(ErrorCode::ExitCodeNonzero), None);
        let aborted = result(ResultStatus::Aborted, Some(ErrorCode::DeliveryTimeout), None);
        let terminated = result(ResultStatus::Terminated, None, Some("stopped by admin"));
        let ok = result(ResultStatus::Success, None, None);

        assert_eq!(
            reason(&[failed.clone(), ok.clone(), aborted, failed]),
            "DeliveryTimeout ×1, ExitCodeNonzero ×2"
        );
        assert_eq!(reason(&[ok.clone(), terminated]), "stopped by admin");
        assert_eq!(reason(&[ok]), "");
    }
}
