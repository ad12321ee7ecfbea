//! Running commands: RunCommand and InvokeCommand check a request, store the invocation and
//! hand each connected target its task; Stop ends them. [`task_for`] is the one place a stored
//! invocation becomes an agent's `RunTask`, at launch and at delivery after a reconnect alike.

use super::actor::Actor;
use super::check;
use super::commands::{command_parameters, command_refusal};
use super::error::{Conflict, Error, Field, Kind, invalid, not_found};
use super::plan::Plan;
use super::{Dispatcher, Settings};
use crate::protocol::agent::RunTask;
use crate::protocol::api::{
    DryRunInstance, DryRunResponse, InvocationCreated, InvokeCommandRequest, RunCommandRequest,
};
use crate::protocol::{CommandSpec, ErrorCode, InvocationStatus, RepeatMode, Tag, params, task_id};
use crate::store::bus::Note;
use crate::store::{
    self, ClientToken, InstanceRow, InvocationRow, NewCommand, NewInvocation, NewPlan, Rate, ResultRow, Role, Target,
};
use std::collections::{BTreeMap, HashSet};

/// How long a `client_token` names its first invocation (Alibaba: a day).
pub const CLIENT_TOKEN_HOURS: i64 = 24;

/// A checked request to run content on instances, from RunCommand or InvokeCommand.
#[derive(Debug)]
pub struct Run {
    name: String,
    description: String,
    /// Content decoded.
    spec: CommandSpec,
    parameters: BTreeMap<String, String>,
    instance_ids: Vec<String>,
    /// The region every instance must be in, when the request names one; required with `tags`.
    region_id: Option<String>,
    /// How many run at once and how many may fail (issue 14).
    rate: check::RateControl,
    /// Also every instance of `region_id` with all these tags, resolved at launch.
    tags: Vec<Tag>,
    /// The invocation's own tags (they select nothing).
    invocation_tags: Vec<Tag>,
    /// `repeat_mode: DryRun`: check everything, store and run nothing.
    dry_run: bool,
    /// When it runs: at once, on a schedule, or at boots. Checked against the clock where the
    /// request is handled ([`Dispatcher::check_plan`]); `Once` until then.
    plan: Plan,
    /// Checked; with `request_hash`, what a repeated submission is recognised by.
    client_token: Option<String>,
    /// SHA-256 of the request as submitted: a retry has the same, another request reusing the
    /// token does not.
    request_hash: String,
}

/// What RunCommand and InvokeCommand answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// The invocation made, or (`replayed`) the one its `client_token` made before.
    Created(InvocationCreated),
    /// `repeat_mode: DryRun`: what would run; nothing was stored or run.
    DryRun(DryRunResponse),
}

impl Submitted {
    /// The invocation, unless this was a dry run.
    pub fn created(self) -> Option<InvocationCreated> {
        match self {
            Submitted::Created(created) => Some(created),
            Submitted::DryRun(_) => None,
        }
    }
}

/// What a stop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Results that changed (cancelled or asked to stop).
    pub changed: usize,
    /// The invocation's overall status after the stop.
    pub status: InvocationStatus,
}

/// The task an instance runs for execution `repeats` of an invocation: the content with its
/// parameters filled in for that instance (built-ins included), under the execution's task id.
pub fn task_for(invocation: &InvocationRow, instance: &InstanceRow, deliver_by: i64, repeats: u32) -> RunTask {
    let spec = &invocation.spec;
    let content = if spec.enable_parameter {
        let builtins = BTreeMap::from([
            ("instance_id", instance.id.clone()),
            ("instance_name", instance.name.clone()),
            ("region_id", instance.region_id.clone()),
            ("invoke_id", invocation.id.clone()),
            ("command_id", invocation.command_id.clone().unwrap_or_default()),
        ]);
        params::fill(&spec.content, &invocation.parameters, &builtins)
    } else {
        spec.content.clone()
    };
    RunTask {
        task: task_id(&invocation.id, repeats),
        command_type: spec.command_type,
        content,
        working_dir: spec.working_dir.clone(),
        username: spec.username.clone(),
        timeout_secs: spec.timeout_secs,
        deliver_by: Some(deliver_by),
    }
}

impl Dispatcher {
    /// RunCommand (operator): checks the request, stores the invocation (and the retained
    /// command when `keep_command`), and delivers the task to every connected target.
    pub async fn run_command(&self, actor: &Actor, req: RunCommandRequest) -> Result<Submitted, Error> {
        actor.require(Role::Operator)?;
        let keep = req.keep_command;
        let (mode, frequency) = (req.repeat_mode, req.frequency.clone());
        let mut run = check_run_command(req, &self.inner.settings)?;
        if !run.dry_run {
            // A retry answers its first invocation even when its plan no longer checks (an
            // `at(…)` time passed meanwhile).
            let claim = (run.client_token.as_ref(), run.request_hash.as_str());
            if let Some(replayed) = self.replay(actor, claim, "RunCommand").await? {
                return Ok(Submitted::Created(replayed));
            }
            run.plan = self.check_plan(mode, frequency.as_deref(), run.spec.timeout_secs)?;
        }
        let audit = ("RunCommand", String::new());
        self.launch(actor, run, keep, None, audit).await
    }

    /// InvokeCommand (operator): runs a retained command; options given override the
    /// command's own for this run only.
    pub async fn invoke_command(
        &self,
        actor: &Actor,
        command_id: &str,
        req: InvokeCommandRequest,
    ) -> Result<Submitted, Error> {
        actor.require(Role::Operator)?;
        let request_hash = request_hash(&(command_id, &req));
        let client_token = check::client_token(req.client_token.clone())?;
        // As RunCommand's: a retry answers its first invocation before anything that may have
        // changed since (the command, the plan's time) is checked.
        if req.repeat_mode != Some(RepeatMode::DryRun) {
            let claim = (client_token.as_ref(), request_hash.as_str());
            if let Some(replayed) = self.replay(actor, claim, "InvokeCommand").await? {
                return Ok(Submitted::Created(replayed));
            }
        }
        let command = self.command(command_id).await?;
        let spec = CommandSpec {
            timeout_secs: check::Timeout::parse(req.timeout_secs.unwrap_or(command.spec.timeout_secs))?.secs(),
            working_dir: check::WorkingDir::parse(req.working_dir)?
                .map(check::WorkingDir::into_inner)
                .or(command.spec.working_dir),
            username: check::Username::parse(req.username)?
                .map(check::Username::into_inner)
                .or(command.spec.username),
            ..command.spec
        };
        let rate = check::RateControl::parse(req.max_concurrency, req.max_errors, self.inner.settings.max_instances)?;
        // Tags are resolved in the command's region unless another is named (and then refused
        // by the region rule below, with the reason).
        let region_id = match req.region_id.filter(|r| !r.is_empty()) {
            None if !req.tags.is_empty() => Some(command.region_id.clone()),
            region => region,
        };
        let dry_run = req.repeat_mode == Some(RepeatMode::DryRun);
        let plan = match dry_run {
            true => Plan::Once,
            false => self.check_plan(req.repeat_mode, req.frequency.as_deref(), spec.timeout_secs)?,
        };
        let run = Run {
            name: command.name,
            description: command.description,
            spec,
            parameters: req.parameters,
            instance_ids: req.instance_ids,
            region_id,
            tags: req.tags,
            invocation_tags: req.invocation_tags,
            dry_run,
            plan,
            client_token,
            request_hash,
            rate,
        };
        check_parameters(&run, self.inner.settings.max_content_bytes)?;
        check_targeting(&run, self.inner.settings.max_instances)?;
        let region = command.region_id;
        let audit = ("InvokeCommand", format!("command {command_id} "));
        self.launch(actor, run, false, Some((command.id, region)), audit).await
    }

    /// Stores, audits and delivers a checked run; `command` is the retained command it runs,
    /// with its region, whose instances alone may run it. The audit entry (`action`, and
    /// `what` before the count of instances) is written before the tasks go out: once they do,
    /// the writer is busy with the reports. A dry run stops before anything is stored; a
    /// `client_token` claimed meanwhile by a concurrent submission answers that one's
    /// invocation (callers answer a token seen before without calling this).
    async fn launch(
        &self,
        actor: &Actor,
        mut run: Run,
        keep: bool,
        command: Option<(String, String)>,
        (action, what): (&str, String),
    ) -> Result<Submitted, Error> {
        let settings = &self.inner.settings;
        check_rate_with_plan(&run)?;
        let instances = self.resolve_targets(&mut run).await?;
        if let Some((command_id, region)) = &command {
            if let Some(other) = instances.iter().find(|i| &i.region_id != region) {
                return Err(invalid(
                    Field::InstanceIds,
                    format!(
                        "command {command_id} belongs to region {region}, and instance {} is in {}: \
                         run it on instances of {region}, or retain a copy in {}",
                        other.id, other.region_id, other.region_id
                    ),
                ));
            }
        }
        let command_id = command.map(|(id, _)| id);
        let region = instances.first().map(|i| i.region_id.clone()).unwrap_or_default();
        let keep = if keep {
            let command = NewCommand {
                region_id: single_region(&instances)?,
                name: run.name.clone(),
                description: run.description.clone(),
                parameter_names: command_parameters(&run.spec)?,
                spec: run.spec.clone(),
                creator: actor.username.clone(),
            };
            Some((command, settings.retained_command_quota))
        } else {
            None
        };
        if run.dry_run {
            return Ok(Submitted::DryRun(
                self.dry_run(&instances, keep.as_ref(), &region).await?,
            ));
        }
        let detail = format!(
            "{what}on {} instances{}{}{}",
            run.instance_ids.len(),
            selector_words(&run.tags, run.region_id.as_deref()),
            plan_words(&run.plan),
            run.rate.audit_text()
        );
        let (token, hash) = (run.client_token.clone(), run.request_hash.clone());
        let client_token = token.clone().map(|token| ClientToken {
            user_id: actor.user_id,
            token,
            request_hash: hash.clone(),
            expired_before: self.now() - CLIENT_TOKEN_HOURS * 3_600_000,
        });
        let plan = run.plan.clone();
        let new = NewInvocation {
            name: run.name.clone(),
            spec: run.spec,
            parameters: run.parameters,
            creator: actor.username.clone(),
            command_id,
            keep,
            instance_ids: run.instance_ids.clone(),
            deliver_by: self.now() + settings.delivery_window.as_millis() as i64,
            target: Target {
                tags: run.tags.clone(),
                region_id: run.region_id.clone(),
            },
            invocation_tags: run.invocation_tags.clone(),
            client_token,
            rate: rate_of(&run.rate, run.instance_ids.len()),
        };
        // Instances beyond the concurrency are stored held: they get their tasks as others end.
        let held: HashSet<&str> = new
            .rate
            .held_at_start(&new.instance_ids)
            .iter()
            .map(String::as_str)
            .collect();
        let deliver_by = new.deliver_by;
        // Held from before the commit until the tasks are queued: an agent attaching meanwhile
        // reads its pending tasks either before this invocation exists or after its task is
        // queued on the new connection (and skips it), never in between, so no task goes twice.
        let delivering = self.inner.delivering.lock().await;
        let stored = match &plan {
            Plan::Once => self.inner.store.create_invocation(&new).await,
            _ => {
                self.inner
                    .store
                    .create_scheduled_invocation(&new, &self.new_plan(&plan))
                    .await
            }
        };
        let created = match stored {
            Ok(created) => created,
            // Another submission with the token won the race to its claim.
            Err(store::Error::ClientTokenUsed {
                invocation_id,
                request_hash,
            }) => {
                drop(delivering);
                let claim = (invocation_id, request_hash);
                let token = token.unwrap_or_default();
                let replayed = self.replayed(actor, &token, &hash, action, claim).await;
                return replayed.map(Submitted::Created);
            }
            Err(e) => return Err(command_refusal(e, &region, &run.name)),
        };
        self.audit(actor, action, &created.id, &detail).await;
        if matches!(plan, Plan::Once) {
            self.inner.metrics.invocation_started(super::metrics::Trigger::Run);
        }
        let created_answer = InvocationCreated {
            invoke_id: created.id.clone(),
            command_id: created.command_id.clone(),
            replayed: false,
        };
        if !matches!(plan, Plan::Once) {
            // Nothing to deliver now: executions start when due (`dispatch::schedule`).
            return Ok(Submitted::Created(created_answer));
        }
        let invocation = self.inner.store.invocation(&created.id).await?;
        // Tasks are built first, then queued under one lock for the whole fan-out. Offline
        // targets stay Pending: they get the task when they connect, or are aborted when the
        // delivery window closes.
        let tasks: Vec<_> = instances
            .iter()
            .filter(|i| !held.contains(i.id.as_str()))
            .filter_map(|i| {
                let result_id = *created.result_ids.get(&i.id)?;
                Some((i.id.as_str(), result_id, task_for(&invocation, i, deliver_by, 1)))
            })
            .collect();
        self.send_runs(tasks).await;
        drop(delivering);
        // Targets held by other replicas get theirs from there.
        self.tell(&[Note::Run {
            invoke_id: created.id.clone(),
        }])
        .await;
        Ok(Submitted::Created(created_answer))
    }

    /// When the run's `client_token` names an invocation of this account from the last day:
    /// [`Dispatcher::replayed`]. `None` when the token is new (or absent).
    async fn replay(
        &self,
        actor: &Actor,
        (token, request_hash): (Option<&String>, &str),
        action: &str,
    ) -> Result<Option<InvocationCreated>, Error> {
        let Some(token) = token else {
            return Ok(None);
        };
        let since = self.now() - CLIENT_TOKEN_HOURS * 3_600_000;
        match self.inner.store.client_token_claim(actor.user_id, token, since).await? {
            Some(claim) => self.replayed(actor, token, request_hash, action, claim).await.map(Some),
            None => Ok(None),
        }
    }

    /// The answer to a run whose `client_token` is claimed (`(invoke id, request hash)`): for
    /// the same request, the invocation it made, audited as a replay; for a different one, a
    /// refusal.
    async fn replayed(
        &self,
        actor: &Actor,
        token: &str,
        request_hash: &str,
        action: &str,
        claim: (String, String),
    ) -> Result<InvocationCreated, Error> {
        let (invoke_id, hash) = claim;
        if hash != request_hash {
            return Err(Error::Conflict {
                conflict: Conflict::ClientTokenReused,
                message: format!(
                    "client_token {token:?} was used in the last {CLIENT_TOKEN_HOURS} hours for a different request \
                     (invocation {invoke_id}): use a new token for a new request, or resend that request unchanged"
                ),
            });
        }
        let invocation = self
            .inner
            .store
            .invocation(&invoke_id)
            .await
            .map_err(not_found(Kind::Invocation, &invoke_id))?;
        let detail = format!("client_token {token:?} seen before: answered with its invocation, ran nothing again");
        self.audit(actor, action, &invoke_id, &detail).await;
        Ok(InvocationCreated {
            invoke_id,
            command_id: invocation.command_id,
            replayed: true,
        })
    }

    /// The run's targets: the instances named, then those of its region having all its tags
    /// (each once), loaded and checked. `run.instance_ids` becomes that set: what is recorded.
    async fn resolve_targets(&self, run: &mut Run) -> Result<Vec<InstanceRow>, Error> {
        if let (false, Some(region)) = (run.tags.is_empty(), run.region_id.as_deref()) {
            let matches: Vec<store::TagMatch> = run.tags.iter().map(store::TagMatch::from).collect();
            // One more than allowed, so the limit's refusal counts past it.
            let limit = self.inner.settings.max_instances as u64 + 1;
            let tagged = self.inner.store.tagged_instance_ids(region, &matches, limit).await?;
            if tagged.is_empty() {
                return Err(invalid(
                    Field::Tags,
                    format!(
                        "no instance of region {region} has all the tags {}: check them with \
                         GET /api/v1/instances?region_id={region}&tag=key=value (or the Instances page's tag filter)",
                        tag_words(&run.tags)
                    ),
                ));
            }
            let mut seen: HashSet<String> = run.instance_ids.iter().cloned().collect();
            run.instance_ids
                .extend(tagged.into_iter().filter(|id| seen.insert(id.clone())));
        }
        self.targets(&run.instance_ids, &run.spec, run.region_id.as_deref())
            .await
    }

    /// What a dry run answers once every check of a real run has passed: whether each target
    /// would get its task at once, and the retained command's name and quota checked.
    async fn dry_run(
        &self,
        instances: &[InstanceRow],
        keep: Option<&(NewCommand, u64)>,
        region: &str,
    ) -> Result<DryRunResponse, Error> {
        if let Some((command, quota)) = keep {
            self.inner
                .store
                .check_command_fits(command, *quota)
                .await
                .map_err(|e| command_refusal(e, region, &command.name))?;
        }
        let window = self.inner.settings.delivery_window.as_secs();
        let mut answers: Vec<DryRunInstance> = instances
            .iter()
            .map(|i| {
                let runnable = self.liveness(i).can_run();
                DryRunInstance {
                    instance_id: i.id.clone(),
                    would_run: runnable,
                    error_code: (!runnable).then_some(ErrorCode::ClientNotRunning),
                    reason: (!runnable).then(|| {
                        format!(
                            "its agent is not connected: the command would wait up to {window} s for it, \
                             then end Aborted (ClientNotRunning)"
                        )
                    }),
                }
            })
            .collect();
        answers.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(DryRunResponse {
            dry_run: true,
            would_run: answers.iter().filter(|a| a.would_run).count() as u64,
            instances: answers,
        })
    }

    /// Loads and checks the target instances: all registered (in `region`, when given), no
    /// duplicates, within the limit, and able to run the command type.
    async fn targets(
        &self,
        ids: &[String],
        spec: &CommandSpec,
        region: Option<&str>,
    ) -> Result<Vec<InstanceRow>, Error> {
        check::instance_ids(ids, self.inner.settings.max_instances)?;
        let mut instances = self.inner.store.instances_by_ids(ids).await?;
        if let Some(region) = region {
            instances.retain(|i| i.region_id == region);
        }
        if instances.len() < ids.len() {
            let known: HashSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
            let unknown = ids.iter().filter(|id| !known.contains(id.as_str())).cloned().collect();
            return Err(Error::UnknownInstances(unknown));
        }
        let command_type = spec.command_type;
        if let Some(bad) = instances
            .iter()
            .find(|i| !command_type.fits_os(i.os_type) || !i.supported_command_types.contains(&command_type))
        {
            let supported: Vec<&str> = bad.supported_command_types.iter().map(|t| t.as_str()).collect();
            return Err(invalid(
                Field::Type,
                format!(
                    "instance {} ({}) cannot run {command_type}; it supports [{}]: choose one of those types or leave the instance out",
                    bad.id,
                    bad.os_type.as_str(),
                    supported.join(", ")
                ),
            ));
        }
        Ok(instances)
    }

    /// One instance's result of an invocation with its kept output bytes: of execution
    /// `repeats`, or the latest.
    pub async fn result_output(
        &self,
        invoke_id: &str,
        instance_id: &str,
        repeats: Option<u32>,
    ) -> Result<(ResultRow, Vec<u8>), Error> {
        let result = self
            .inner
            .store
            .result_of_execution(invoke_id, instance_id, repeats)
            .await
            .map_err(not_found(Kind::Result, &format!("{invoke_id}/{instance_id}")))?;
        let output = self.inner.store.output(result.id).await?;
        Ok((result, output))
    }

    /// StopInvocation (operator): all results, or those of `instance_ids`. `Pending` ones are
    /// cancelled at once, `Running` ones asked to stop.
    pub async fn stop(
        &self,
        actor: &Actor,
        invoke_id: &str,
        instance_ids: Option<&[String]>,
    ) -> Result<Stopped, Error> {
        actor.require(Role::Operator)?;
        if let Some(ids) = instance_ids {
            check::instance_ids(ids, self.inner.settings.max_instances)?;
        }
        let invocation = self
            .inner
            .store
            .invocation(invoke_id)
            .await
            .map_err(not_found(Kind::Invocation, invoke_id))?;
        if let Some(ids) = instance_ids {
            let mut targets: HashSet<String> = self
                .inner
                .store
                .results(invoke_id)
                .await?
                .into_iter()
                .map(|r| r.instance_id)
                .collect();
            if invocation.plan.schedule.is_some() {
                targets.extend(self.inner.store.plan_targets(invoke_id).await?);
            }
            let strangers: Vec<&str> = ids
                .iter()
                .filter(|id| !targets.contains(id.as_str()))
                .map(String::as_str)
                .collect();
            if !strangers.is_empty() {
                return Err(invalid(
                    Field::InstanceIds,
                    format!(
                        "invocation {invoke_id} did not run on {}: name instances it ran on, or leave \
                         `instance_ids` out to stop them all",
                        strangers.iter().take(10).copied().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        let order = self.inner.status_order.lock().await;
        let changes = self
            .inner
            .store
            .stop_results(invoke_id, instance_ids, self.now(), &actor.username)
            .await?;
        for change in &changes {
            // Cancelled results may already be on their way to the agent: stop them there too.
            self.send_stop(&change.instance_id, &change.task());
        }
        self.publish_changes(&changes).await;
        drop(order);
        self.tell(&[Note::Stop {
            invoke_id: invoke_id.to_string(),
        }])
        .await;
        // Stopping some instances frees their slots for held ones (rate control).
        self.release_held(&changes).await;
        let status = self.inner.store.invocation(invoke_id).await?.status();
        let detail = format!("{} results stopped", changes.len());
        self.audit(actor, "StopInvocation", invoke_id, &detail).await;
        Ok(Stopped {
            changed: changes.len(),
            status,
        })
    }
}

impl Dispatcher {
    /// Checks a request's `repeat_mode` and `frequency` (see [`Plan::check`]) against the
    /// minimum interval of the settings and the domain's clock.
    fn check_plan(&self, mode: Option<RepeatMode>, frequency: Option<&str>, timeout_secs: u64) -> Result<Plan, Error> {
        let min = self.inner.settings.min_schedule_interval;
        Plan::check(mode, frequency, timeout_secs, min, self.now())
    }

    /// What the store keeps of a schedule: its mode, frequency and first run time.
    fn new_plan(&self, plan: &Plan) -> NewPlan {
        let (frequency, first_run_at) = match plan {
            Plan::Period(frequency, text) => (Some(text.clone()), frequency.first(self.now())),
            _ => (None, None),
        };
        NewPlan {
            repeat_mode: plan.mode(),
            frequency,
            first_run_at,
        }
    }
}

/// The plan in an audit entry's detail: nothing for `Once`.
fn plan_words(plan: &Plan) -> String {
    match plan {
        Plan::Once => String::new(),
        Plan::Period(_, text) => format!(", {text}"),
        Plan::Boot(mode) => format!(", {mode}"),
    }
}

/// Checks a RunCommand request as far as that is possible without the database: content,
/// names, timeout, working directory, username, parameters and the shape of `instance_ids`.
/// Public so that the fuzz target can drive it.
pub fn check_run_command(req: RunCommandRequest, settings: &Settings) -> Result<Run, Error> {
    let request_hash = request_hash(&req);
    let spec = CommandSpec {
        content: check::content(&req.spec.content, req.content_encoding, settings.max_content_bytes)?,
        timeout_secs: check::Timeout::parse(req.spec.timeout_secs)?.secs(),
        working_dir: check::WorkingDir::parse(req.spec.working_dir)?.map(check::WorkingDir::into_inner),
        username: check::Username::parse(req.spec.username)?.map(check::Username::into_inner),
        ..req.spec
    };
    // A retained command's name follows CreateCommand's rule (trimmed, no control characters),
    // so the two ways of retaining cannot make "deploy" and "deploy " apart.
    let name = match (req.keep_command, req.name) {
        (true, Some(name)) if !name.trim().is_empty() => {
            check::required_name(Field::Name, "name", &name, check::MAX_NAME, "command")?
        }
        (_, name) => check::text(Field::Name, "name", name, check::MAX_NAME)?.unwrap_or_default(),
    };
    let run = Run {
        name,
        description: check::text(
            Field::Description,
            "description",
            req.description,
            check::MAX_DESCRIPTION,
        )?
        .unwrap_or_default(),
        spec,
        parameters: req.parameters,
        instance_ids: req.instance_ids,
        region_id: req.region_id.filter(|r| !r.is_empty()),
        rate: check::RateControl::parse(req.max_concurrency, req.max_errors, settings.max_instances)?,
        tags: req.tags,
        invocation_tags: req.invocation_tags,
        dry_run: req.repeat_mode == Some(RepeatMode::DryRun),
        plan: Plan::Once,
        client_token: check::client_token(req.client_token)?,
        request_hash,
    };
    if req.keep_command && run.name.trim().is_empty() {
        return Err(invalid(
            Field::Name,
            "`name` is required to retain the command (`keep_command`): a retained command needs a name",
        ));
    }
    check_parameters(&run, settings.max_content_bytes)?;
    check_targeting(&run, settings.max_instances)?;
    Ok(run)
}

/// How a run picks its instances and when it runs: `instance_ids`, or `tags` within
/// `region_id`, or both; the invocation's own tags.
/// Rate control holds back the instances of one execution started at once; a schedule or a
/// boot plan starts each execution on its instances without it, so limits with one are refused
/// rather than ignored.
fn check_rate_with_plan(run: &Run) -> Result<(), Error> {
    if matches!(run.plan, Plan::Once) {
        return Ok(());
    }
    let (field, name) = match (&run.rate.max_concurrency, &run.rate.max_errors) {
        (Some(_), _) => (Field::MaxConcurrency, "max_concurrency"),
        (None, Some(_)) => (Field::MaxErrors, "max_errors"),
        (None, None) => return Ok(()),
    };
    Err(invalid(
        field,
        format!(
            "{name} applies to a run that starts at once, and this one has an execution plan \
             (a schedule or boots), whose executions run on all their instances: leave it out, \
             or run without the plan"
        ),
    ))
}

fn check_targeting(run: &Run, max_instances: usize) -> Result<(), Error> {
    check::tags(&run.invocation_tags, "the invocation")?;
    if run.tags.is_empty() {
        return check::instance_ids(&run.instance_ids, max_instances);
    }
    check::tags(&run.tags, "the tag selector")?;
    if run.region_id.is_none() {
        return Err(invalid(
            Field::RegionId,
            "`region_id` is required when targeting by `tags`: tags are resolved within one region",
        ));
    }
    if !run.instance_ids.is_empty() {
        check::instance_ids(&run.instance_ids, max_instances)?;
    }
    Ok(())
}

/// SHA-256 of a request's JSON: equal for a retry of the same request.
fn request_hash(req: &impl serde::Serialize) -> String {
    crate::store::ids::hash_secret(&serde_json::to_string(req).unwrap_or_default())
}

/// `env=prod, role=web` for messages.
fn tag_words(tags: &[Tag]) -> String {
    tags.iter().map(Tag::to_string).collect::<Vec<_>>().join(", ")
}

/// ` (tags env=prod in cn-hangzhou)` for the audit detail of a run by tags; empty otherwise.
fn selector_words(tags: &[Tag], region: Option<&str>) -> String {
    match (tags.is_empty(), region) {
        (false, Some(region)) => format!(" (tags {} in {region})", tag_words(tags)),
        _ => String::new(),
    }
}

/// One rule for parameters on every surface: when they are on, built-ins are always filled,
/// every custom placeholder needs a value (the refusal names it), and no value may name a
/// placeholder the content lacks; when they are off, no values may be given.
fn check_parameters(run: &Run, max: usize) -> Result<(), Error> {
    if !run.spec.enable_parameter {
        if !run.parameters.is_empty() {
            return Err(invalid(
                Field::Parameters,
                "`parameters` are given but `enable_parameter` is false: set it to true to fill {{name}} placeholders",
            ));
        }
        return Ok(());
    }
    params::check(&run.spec.content, &run.parameters).map_err(|m| invalid(Field::Parameters, m))?;
    let filled = params::fill(&run.spec.content, &run.parameters, &BTreeMap::new());
    if filled.len() > max {
        return Err(invalid(
            Field::Parameters,
            format!(
                "with parameters filled in the content is {} bytes; the limit is {max}",
                filled.len()
            ),
        ));
    }
    Ok(())
}

/// The rate control an invocation of `instances` instances is stored with: as given, and
/// resolved against the count.
fn rate_of(rate: &check::RateControl, instances: usize) -> Rate {
    let (concurrency_limit, error_limit) = rate.limits(instances);
    Rate {
        max_concurrency: rate.max_concurrency,
        max_errors: rate.max_errors,
        concurrency_limit,
        error_limit,
        held: 0,
    }
}

fn single_region(instances: &[InstanceRow]) -> Result<String, Error> {
    let first = &instances[0].region_id;
    match instances.iter().find(|i| &i.region_id != first) {
        Some(other) => Err(invalid(
            Field::InstanceIds,
            format!(
                "a retained command belongs to one region, but the instances are in {first} and {}: \
                 run it per region, or set keep_command to false",
                other.region_id
            ),
        )),
        None => Ok(first.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CommandType, OsType};

    fn instance(name: &str) -> InstanceRow {
        InstanceRow {
            id: "i-1".into(),
            name: name.into(),
            hostname: "h".into(),
            region_id: "local".into(),
            os_type: OsType::Linux,
            os_name: "Debian".into(),
            ip_addresses: vec![],
            tags: BTreeMap::new(),
            agent_version: "0".into(),
            agent_protocol: None,
            supported_command_types: vec![CommandType::RunShellScript],
            registered_at: 0,
            activation_id: "act-1".into(),
            last_heartbeat_at: None,
            online: true,
        }
    }

    fn invocation(content: &str, enable_parameter: bool) -> InvocationRow {
        InvocationRow {
            id: "t-1".into(),
            command_id: None,
            name: String::new(),
            spec: CommandSpec {
                enable_parameter,
                ..CommandSpec::shell(content)
            },
            parameters: BTreeMap::from([("who".to_string(), "ann".to_string())]),
            creator: "admin".into(),
            created_at: 0,
            counts: Default::default(),
            target_tags: Vec::new(),
            target_region: None,
            invocation_tags: Vec::new(),
            rate: Default::default(),
            plan: Default::default(),
        }
    }

    #[test]
    fn a_task_has_custom_and_builtin_parameters_filled_for_its_instance() {
        let task = task_for(
            &invocation("hi {{who}} on {{fleetrun::instance_name}}", true),
            &instance("web-1"),
            7,
            1,
        );
        assert_eq!(task.content, "hi ann on web-1");
        assert_eq!(task.deliver_by, Some(7));
        assert_eq!(task.task, "t-1");
        let third = task_for(&invocation("hi", false), &instance("web-1"), 7, 3);
        assert_eq!(third.task, "t-1-r3", "each execution has a task id of its own");
        let raw = task_for(&invocation("hi {{who}}", false), &instance("web-1"), 7, 1);
        assert_eq!(raw.content, "hi {{who}}", "parameters off: content taken literally");
    }

    #[test]
    fn a_missing_custom_value_is_refused_by_name_and_builtins_need_none() {
        let mut req = RunCommandRequest::shell(vec!["i-1".into()], "echo {{who}} {{fleetrun::instance_id}}");
        req.spec.enable_parameter = true;
        let err = check_run_command(req.clone(), &Settings::default()).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { field: Field::Parameters, message } if message.contains("\"who\"")),
            "{err:?}"
        );

        req.spec.content = "echo {{fleetrun::instance_id}}".into();
        assert!(check_run_command(req, &Settings::default()).is_ok());
    }
}
