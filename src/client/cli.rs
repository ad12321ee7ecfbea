//! The client subcommands. They print plain text for people; `--json` prints the API's JSON.
//! `run` lives in `run.rs`; the others are here.

use super::{ApiClient, Credentials};
use crate::config::ClientArgs;

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
        Ok(ApiClient::new(&self.server, credentials))
    }
}

/// Runs a client subcommand; returns the process exit code.
pub async fn run_cli(mode: crate::config::Mode) -> anyhow::Result<i32> {
    use crate::config::Mode;
    match mode {
        Mode::Run(args) => super::run::run(args).await,
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
