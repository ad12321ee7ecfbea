//! The client subcommands. They print plain text for people; `--json` prints the API's JSON.

use super::{ApiClient, Credentials};
use crate::config::{ClientArgs, RunArgs};
use crate::protocol::CommandSpec;
use crate::protocol::InvocationStatus;
use crate::protocol::api::{RunCommandRequest, StreamEvent};
use std::collections::BTreeMap;
use std::io::Write as _;

impl ClientArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
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
pub async fn run_cli(mode: crate::config::Mode) -> anyhow::Result<i32> {
    use crate::config::Mode;
    match mode {
        Mode::Run(args) => run(args).await,
        Mode::Instances(args) => {
            let client = args.client.client()?;
            let query = args
                .region
                .map(|r| format!("region_id={r}&page_size=1000"))
                .unwrap_or_else(|| "page_size=1000".into());
            let list = client.instances(&query).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<24} {:<20} {:<14} {:<8} {:<8}",
                    "INSTANCE ID", "NAME", "REGION", "STATUS", "AGENT"
                );
                for i in list.instances {
                    let agent = if i.agent.online { "online" } else { "offline" };
                    println!(
                        "{:<24} {:<20} {:<14} {:<8?} {:<8}",
                        i.instance_id, i.name, i.region_id, i.status, agent
                    );
                }
            }
            Ok(0)
        }
        Mode::Invocations(args) => {
            let client = args.client.client()?;
            match args.invoke_id {
                Some(id) => {
                    let inv = client.invocation(&id).await?;
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&inv)?);
                    } else {
                        println!("{} {} ({})", inv.invoke_id, inv.invocation_status, inv.name);
                        for r in inv.results.unwrap_or_default() {
                            let code = r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                            println!("== {} {} exit {code}", r.instance_id, r.invocation_status);
                            print!("{}", r.output);
                        }
                    }
                }
                None => {
                    let list = client.invocations("page_size=50").await?;
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        for inv in list.invocations {
                            println!(
                                "{:<24} {:<14} {:>5} {} {}",
                                inv.invoke_id, inv.invocation_status, inv.instance_count, inv.created_time, inv.name
                            );
                        }
                    }
                }
            }
            Ok(0)
        }
        Mode::Stop(args) => {
            args.client.client()?.stop(&args.invoke_id, args.instances).await?;
            println!("stop requested for {}", args.invoke_id);
            Ok(0)
        }
        _ => unreachable!("only client modes reach run_cli"),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    let parameters: BTreeMap<String, String> = args.params.into_iter().collect();
    let spec = CommandSpec {
        command_type: args
            .command_type
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown --type {}", args.command_type))?,
        content: args.content,
        timeout_secs: args.timeout,
        working_dir: args.working_dir,
        username: args.username,
        enable_parameter: !parameters.is_empty(),
    };
    let req = RunCommandRequest {
        parameters,
        ..RunCommandRequest::new(Vec::new(), spec)
    };
    let req = RunCommandRequest {
        instance_ids: args.instances,
        ..req
    };

    let created = client.run(&req).await?;
    eprintln!("invocation {}", created.invoke_id);
    if args.no_wait {
        println!("{}", created.invoke_id);
        return Ok(0);
    }
    let mut overall = InvocationStatus::Pending;
    let mut ended = std::collections::HashSet::new();
    let mut stdout = std::io::stdout();
    client
        .stream(&created.invoke_id, None, |event| match event {
            StreamEvent::Output { instance_id, data, .. } => {
                for line in String::from_utf8_lossy(data).split_inclusive('\n') {
                    let _ = write!(stdout, "{instance_id}: {line}");
                }
                let _ = stdout.flush();
            }
            StreamEvent::Status {
                instance_id,
                invocation_status,
                exit_code,
                ..
            } if invocation_status.is_terminal() => {
                // The stream may repeat a status (stored, then live): report each end once.
                if ended.insert(instance_id.clone()) {
                    let code = exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                    eprintln!("{instance_id}: {invocation_status} (exit code {code})");
                }
            }
            StreamEvent::Status { .. } => {}
            StreamEvent::Done { invocation_status } => overall = *invocation_status,
        })
        .await?;
    eprintln!("{}: {overall}", created.invoke_id);
    Ok(if overall == InvocationStatus::Success { 0 } else { 1 })
}
