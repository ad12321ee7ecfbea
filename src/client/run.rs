//! `fleetrun run`: choose the targets and warn about offline ones, send the command, print its
//! live output line by line, then how each instance ended and why.

use super::output::{Printer, labels, outcome};
use super::{ApiClient, ApiFailure};
use crate::config::RunArgs;
use crate::protocol::api::{Instance, InvocationCreated, RunCommandRequest, StreamEvent};
use crate::protocol::{CommandSpec, InvocationStatus, RateInput, RepeatMode, params};
use anyhow::Context as _;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use std::collections::BTreeMap;
use std::io::{self, Write};

/// Instances whose details are fetched at once before a run.
const FETCH_CONCURRENCY: usize = 8;

/// Exit code after Ctrl-C, as shells report an interrupted program.
const INTERRUPTED: i32 = 130;

/// Runs `fleetrun run`; returns the process exit code: 0 only if every instance succeeded.
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    let (instance_ids, mut known) = targets(&client, &args).await?;
    let request = request(&args, instance_ids)?;
    if args.dry_run {
        return dry_run(&client, &request, args.json).await;
    }
    let created = client.run(&request).await.map_err(explain_parameters)?;
    if created.replayed {
        eprintln!(
            "client token seen before: {} is the invocation it made, and nothing ran again",
            created.invoke_id
        );
    }
    let planned = !matches!(request.repeat_mode, None | Some(RepeatMode::Once)) || request.frequency.is_some();
    if planned && !args.no_wait {
        // Nothing runs now: say when it will, and return.
        let invocation = client.invocation_without_output(&created.invoke_id).await?;
        let when = match (&invocation.next_run_time, invocation.repeat_mode) {
            (Some(next), _) => format!("next run at {next}"),
            (None, RepeatMode::NextRebootOnly) => "runs at each instance's next boot".to_string(),
            (None, RepeatMode::EveryReboot) => "runs at every boot of each instance".to_string(),
            (None, _) => "no run left".to_string(),
        };
        eprintln!(
            "{}: {} ({when}); `fleetrun stop {}` ends it",
            created.invoke_id, invocation.invocation_status, created.invoke_id
        );
        if args.json {
            println!("{}", serde_json::to_string_pretty(&invocation)?);
        } else {
            println!("{}", created.invoke_id);
        }
        return Ok(0);
    }
    if args.no_wait {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&created)?);
        } else {
            println!("{}", created.invoke_id);
        }
        return Ok(0);
    }
    // By tags (or replayed), the server decided the instances: its results name them.
    let instance_ids: Vec<String> = if request.tags.is_empty() && !created.replayed {
        request.instance_ids.clone()
    } else {
        let results = client.invocation_without_output(&created.invoke_id).await?.results;
        let ids: Vec<String> = results.into_iter().flatten().map(|r| r.instance_id).collect();
        known = lookup(&client, &ids).await?;
        ids
    };
    let names: Vec<(String, String)> = instance_ids
        .iter()
        .map(|id| {
            let name = known.iter().find(|i| &i.instance_id == id).map(|i| i.name.clone());
            (id.clone(), name.unwrap_or_default())
        })
        .collect();
    // With --json, stdout holds only the final document, so live output goes to stderr.
    let out: Box<dyn Write> = if args.json {
        Box::new(io::stderr())
    } else {
        Box::new(io::BufWriter::new(io::stdout()))
    };
    let mut printer = Printer::new(&labels(&names), out, io::stderr());
    for instance in known.iter().filter(|i| !i.agent.online) {
        printer.note(
            &instance.instance_id,
            "Cloud Assistant is offline; the command waits for it to reconnect (up to the \
             server's delivery window, --delivery-window-secs, 60 s unless changed), then ends Aborted",
        )?;
    }
    let invoke_id = &created.invoke_id;
    eprintln!("invocation {invoke_id} on {} instance(s)", instance_ids.len());

    let Some(overall) = watch(&client, &created, &mut printer).await? else {
        eprintln!("\ninterrupted: {invoke_id} goes on running; `fleetrun stop {invoke_id}` stops it");
        return Ok(INTERRUPTED);
    };
    let invocation = if args.json {
        client.invocation(invoke_id).await?
    } else {
        client.invocation_without_output(invoke_id).await?
    };
    for result in invocation.results.iter().flatten() {
        printer.note(&result.instance_id, &outcome(result))?;
    }
    if invocation.instance_count > 1 {
        let counts: Vec<String> = invocation
            .status_counts
            .iter()
            .map(|(status, count)| format!("{status} {count}"))
            .collect();
        eprintln!("{invoke_id}: {overall} ({})", counts.join(", "));
    } else {
        eprintln!("{invoke_id}: {overall}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&invocation)?);
    }
    Ok(if overall == InvocationStatus::Success { 0 } else { 1 })
}

/// The instance ids to run on, and the details of those the server knows. An id it does not
/// know is kept: RunCommand then refuses the run naming it.
async fn targets(client: &ApiClient, args: &RunArgs) -> anyhow::Result<(Vec<String>, Vec<Instance>)> {
    if !args.all {
        let known = lookup(client, &args.instances).await?;
        return Ok((args.instances.clone(), known));
    }
    let region = match &args.region {
        Some(region) => region.clone(),
        None => only_region(client).await?,
    };
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("region_id", &region)
        .append_pair("status", "Running")
        .finish();
    let mut instances = client.all_instances(&query).await?;
    instances.retain(|i| i.agent.online);
    if instances.is_empty() {
        anyhow::bail!("--all: no instance in region {region} is online and Running");
    }
    eprintln!(
        "--all: {} instance(s) online and Running in region {region}",
        instances.len()
    );
    let ids = instances.iter().map(|i| i.instance_id.clone()).collect();
    Ok((ids, instances))
}

/// The details of the instances the server knows among `ids`.
async fn lookup(client: &ApiClient, ids: &[String]) -> anyhow::Result<Vec<Instance>> {
    let fetched: Vec<anyhow::Result<Instance>> = futures_util::stream::iter(ids)
        .map(|id| client.instance(id))
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    let mut known = Vec::new();
    for instance in fetched {
        match instance {
            Ok(instance) => known.push(instance),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.context("cannot look up the instances")),
        }
    }
    Ok(known)
}

/// `--dry-run`: prints what would run; 0 only if every instance would run now.
async fn dry_run(client: &ApiClient, request: &RunCommandRequest, json: bool) -> anyhow::Result<i32> {
    let answer = client.dry_run(request).await.map_err(explain_parameters)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        for instance in &answer.instances {
            match &instance.reason {
                None => println!("{}: would run", instance.instance_id),
                Some(reason) => println!("{}: would not run now: {reason}", instance.instance_id),
            }
        }
        println!(
            "dry run: {} of {} instance(s) would run; nothing was run or recorded",
            answer.would_run,
            answer.instances.len()
        );
    }
    Ok(if answer.would_run == answer.instances.len() as u64 {
        0
    } else {
        1
    })
}

/// The region `--all` means when none is given: the only one there is.
async fn only_region(client: &ApiClient) -> anyhow::Result<String> {
    let regions = client.regions().await?.regions;
    match regions.as_slice() {
        [only] => Ok(only.region_id.clone()),
        [] => anyhow::bail!("--all: no instance is registered yet"),
        many => {
            let names: Vec<&str> = many.iter().map(|r| r.region_id.as_str()).collect();
            anyhow::bail!(
                "--all needs --region: there are {} regions ({})",
                many.len(),
                names.join(", ")
            )
        }
    }
}

fn request(args: &RunArgs, instance_ids: Vec<String>) -> anyhow::Result<RunCommandRequest> {
    let parameters: BTreeMap<String, String> = args.params.iter().cloned().collect();
    // The same rule as the console: placeholders in the content turn parameters on, so the
    // server fills the built-ins and names any custom value that is missing.
    let enable_parameter = !args.no_parameters && (!parameters.is_empty() || params::has_placeholders(&args.content));
    let spec = CommandSpec {
        command_type: args
            .command_type
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown --type {}", args.command_type))?,
        content: args.content.clone(),
        timeout_secs: args.timeout,
        working_dir: args.working_dir.clone(),
        username: args.username.clone(),
        enable_parameter,
    };
    let region_id = match (&args.region, args.tags.is_empty()) {
        (Some(region), _) => Some(region.clone()),
        (None, true) => None,
        (None, false) => anyhow::bail!("--tag needs --region: tags are matched within one region"),
    };
    let repeat_mode = args
        .repeat_mode
        .as_deref()
        .map(|m| m.parse::<RepeatMode>())
        .transpose()
        .map_err(|_| anyhow::anyhow!("unknown --repeat-mode"))?;
    Ok(RunCommandRequest {
        parameters,
        // Checked by the server, whose refusal names the flag's field and what would do.
        max_concurrency: args.max_concurrency.as_deref().map(RateInput::from),
        max_errors: args.max_errors.as_deref().map(RateInput::from),
        region_id,
        tags: args.tags.iter().map(|t| crate::protocol::Tag::parse_pair(t)).collect(),
        client_token: args.client_token.clone(),
        repeat_mode,
        frequency: args.frequency.clone(),
        ..RunCommandRequest::new(instance_ids, spec)
    })
}

/// Adds the CLI's way out to the server's refusal of the parameters.
fn explain_parameters(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<ApiFailure>() {
        Some(failure) if failure.body.code == "InvalidParameter.Parameters" => e.context(
            "the parameters do not fit the content (give each one with --param NAME=VALUE, or \
             --no-parameters to send the content as written)",
        ),
        _ => e,
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>()
        .is_some_and(|f| f.status == StatusCode::NOT_FOUND)
}

/// Prints the live output until the invocation is done, and returns its overall status;
/// `None` after Ctrl-C. Stops early when the output cannot be written (e.g. a closed pipe).
async fn watch<O: Write, E: Write>(
    client: &ApiClient,
    created: &InvocationCreated,
    printer: &mut Printer<O, E>,
) -> anyhow::Result<Option<InvocationStatus>> {
    let mut done = None;
    let mut write_error = None;
    let write_failed = tokio::sync::Notify::new();
    let streaming = client.stream(&created.invoke_id, None, |event| {
        if write_error.is_some() {
            return;
        }
        let written = match event {
            StreamEvent::Output {
                instance_id,
                offset,
                stream,
                data,
                ..
            } => printer.output(instance_id, *offset, *stream, data),
            StreamEvent::Status {
                instance_id,
                invocation_status,
                ..
            } if invocation_status.is_terminal() => printer.end(instance_id),
            StreamEvent::Status { .. } => Ok(()),
            StreamEvent::Done { invocation_status } => {
                done = Some(*invocation_status);
                Ok(())
            }
        };
        if let Err(e) = written {
            write_error = Some(e);
            write_failed.notify_one();
        }
    });
    let interrupted = tokio::select! {
        streamed = streaming => {
            streamed?;
            false
        }
        _ = write_failed.notified() => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if let Some(e) = write_error {
        return Err(e).context("cannot write the output");
    }
    printer.finish()?;
    if interrupted {
        return Ok(None);
    }
    let invoke_id = &created.invoke_id;
    done.map(Some).with_context(|| {
        format!("the live stream closed before {invoke_id} finished; `fleetrun invocations {invoke_id}` shows it")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Mode};
    use clap::Parser as _;

    fn run_args(args: &[&str]) -> RunArgs {
        let Mode::Run(run) = Cli::parse_from([&["fleetrun", "run", "-i", "i-1"], args].concat()).mode else {
            unreachable!()
        };
        run
    }

    #[test]
    fn placeholders_turn_parameters_on_unless_told_not_to() {
        let enabled = |args: &[&str]| request(&run_args(args), vec![]).unwrap().spec.enable_parameter;

        assert!(enabled(&["echo {{fleetrun::instance_name}}"]));
        assert!(enabled(&["--param", "a=b", "echo {{a}}"]));
        assert!(!enabled(&["echo plain"]));
        assert!(!enabled(&["--no-parameters", "echo {{fleetrun::instance_name}}"]));
    }

    #[test]
    fn repeat_mode_and_frequency_go_into_the_request_as_given() {
        let plan = |args: &[&str]| {
            let req = request(&run_args(args), vec![]).unwrap();
            (req.repeat_mode, req.frequency)
        };

        assert_eq!(plan(&["true"]), (None, None));
        assert_eq!(
            plan(&["--frequency", "rate(5m)", "true"]),
            (None, Some("rate(5m)".into()))
        );
        assert_eq!(
            plan(&["--repeat-mode", "EveryReboot", "true"]),
            (Some(RepeatMode::EveryReboot), None)
        );
        let bad = Cli::try_parse_from(["fleetrun", "run", "-i", "i-1", "--repeat-mode", "Daily", "true"]);
        assert!(bad.is_err(), "clap names the modes");
    }
}
