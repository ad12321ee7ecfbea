//! RunCommand, InvokeCommand and retained-command changes: checking a request field by field,
//! storing the invocation, and handing each instance its task.

use super::{Dispatcher, Error, builtins, not_found};
use crate::protocol::CommandType;
use crate::protocol::agent::RunTask;
use crate::protocol::api::{
    ContentEncoding, CreateCommandRequest, InvocationCreated, InvokeCommandRequest, ModifyCommandRequest,
    RunCommandRequest,
};
use crate::protocol::params;
use crate::store::{self, CommandRow, CommandUpdate, InstanceRow, NewCommand, NewInvocation, now_ms};
use base64::Engine as _;
use std::collections::{BTreeMap, HashSet};

/// Longest name, description, working directory and username (Alibaba's limits).
const MAX_NAME: usize = 128;
const MAX_DESCRIPTION: usize = 512;
const MAX_WORKING_DIR: usize = 200;
const MAX_USERNAME: usize = 255;
/// Timeout range: one second to seven days.
const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=7 * 24 * 3600;

fn invalid(code: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        code,
        message: message.into(),
    }
}

/// A checked request to run content on instances, from RunCommand or InvokeCommand.
pub struct Run {
    name: String,
    description: String,
    command_type: CommandType,
    content: String,
    working_dir: Option<String>,
    timeout_secs: u64,
    username: Option<String>,
    enable_parameter: bool,
    parameters: BTreeMap<String, String>,
    instance_ids: Vec<String>,
}

/// A checked change to a retained command.
pub struct CommandChange(CommandUpdate);

impl Dispatcher {
    /// RunCommand: checks the request, stores the invocation (and the retained command when
    /// `keep_command`), and delivers the task to every connected target.
    pub async fn run_command(&self, creator: &str, req: RunCommandRequest) -> Result<InvocationCreated, Error> {
        let keep = req.keep_command;
        let run = check_run_command(req, &self.inner.settings)?;
        self.launch(creator, run, keep, None).await
    }

    /// InvokeCommand: runs a retained command; options given override the command's own for
    /// this run only.
    pub async fn invoke_command(
        &self,
        creator: &str,
        command_id: &str,
        req: InvokeCommandRequest,
    ) -> Result<InvocationCreated, Error> {
        let command = self
            .inner
            .store
            .command(command_id)
            .await
            .map_err(not_found("command"))?;
        let run = Run {
            name: command.name,
            description: command.description,
            command_type: command.command_type,
            content: command.content,
            working_dir: check_working_dir(req.working_dir)?.or(command.working_dir),
            timeout_secs: check_timeout(req.timeout_secs.unwrap_or(command.timeout_secs))?,
            username: check_username(req.username)?.or(command.username),
            enable_parameter: command.enable_parameter,
            parameters: req.parameters,
            instance_ids: req.instance_ids,
        };
        check_parameters(&run, self.inner.settings.max_content_bytes)?;
        self.launch(creator, run, false, Some(command.id)).await
    }

    async fn launch(
        &self,
        creator: &str,
        run: Run,
        keep: bool,
        command_id: Option<String>,
    ) -> Result<InvocationCreated, Error> {
        let settings = &self.inner.settings;
        let instances = self.targets(&run.instance_ids, run.command_type).await?;
        let keep = if keep {
            let region_id = single_region(&instances)?;
            let new = NewCommand {
                region_id,
                name: run.name.clone(),
                description: run.description.clone(),
                command_type: run.command_type,
                content: run.content.clone(),
                working_dir: run.working_dir.clone(),
                timeout_secs: run.timeout_secs,
                username: run.username.clone(),
                enable_parameter: run.enable_parameter,
                parameter_names: params::custom_names(&run.content),
                creator: creator.to_string(),
            };
            Some((new, settings.retained_command_quota))
        } else {
            None
        };
        let new = NewInvocation {
            name: run.name,
            command_type: run.command_type,
            content: run.content,
            working_dir: run.working_dir,
            timeout_secs: run.timeout_secs,
            username: run.username,
            enable_parameter: run.enable_parameter,
            parameters: run.parameters,
            creator: creator.to_string(),
            command_id,
            keep,
            instance_ids: run.instance_ids,
            deliver_by: now_ms() + settings.delivery_window.as_millis() as i64,
        };
        let (invoke_id, command_id) = self
            .inner
            .store
            .create_invocation(&new)
            .await
            .map_err(quota_error(&instances))?;
        for instance in &instances {
            let content = if new.enable_parameter {
                let values = builtins(
                    &instance.id,
                    &instance.name,
                    &instance.region_id,
                    &invoke_id,
                    command_id.as_deref(),
                );
                params::fill(&new.content, &new.parameters, &values)
            } else {
                new.content.clone()
            };
            let task = RunTask {
                task: invoke_id.clone(),
                command_type: new.command_type,
                content,
                working_dir: new.working_dir.clone(),
                username: new.username.clone(),
                timeout_secs: new.timeout_secs,
            };
            // Offline targets stay Pending: they get the task when they connect, or are
            // aborted when the delivery window closes.
            self.send_run(&instance.id, task);
        }
        Ok(InvocationCreated { invoke_id, command_id })
    }

    /// Loads and checks the target instances: all registered, no duplicates, within the limit,
    /// and able to run the command type.
    async fn targets(&self, ids: &[String], command_type: CommandType) -> Result<Vec<InstanceRow>, Error> {
        check_instance_ids(ids, self.inner.settings.max_instances)?;
        let instances = self.inner.store.instances_by_ids(ids).await?;
        if instances.len() < ids.len() {
            let known: HashSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
            let unknown = ids.iter().filter(|id| !known.contains(id.as_str())).cloned().collect();
            return Err(Error::UnknownInstances(unknown));
        }
        if let Some(bad) = instances
            .iter()
            .find(|i| !command_type.fits_os(i.os_type) || !i.supported_command_types.contains(&command_type))
        {
            let supported: Vec<&str> = bad.supported_command_types.iter().map(|t| t.as_str()).collect();
            return Err(invalid(
                "InvalidParameter.Type",
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

    /// CreateCommand: stores a retained command within its region's quota.
    pub async fn create_command(&self, creator: &str, req: CreateCommandRequest) -> Result<CommandRow, Error> {
        let settings = &self.inner.settings;
        let content = decode_content(&req.command_content, req.content_encoding, settings.max_content_bytes)?;
        let name = check_text("Name", Some(req.name), MAX_NAME)?.unwrap_or_default();
        if name.trim().is_empty() {
            return Err(invalid(
                "InvalidParameter.Name",
                "`name` is empty: give the command a name",
            ));
        }
        check_region(&req.region_id)?;
        let new = NewCommand {
            region_id: req.region_id.clone(),
            name,
            description: check_text("Description", req.description, MAX_DESCRIPTION)?.unwrap_or_default(),
            command_type: req.command_type,
            parameter_names: command_parameters(&content, req.enable_parameter)?,
            content,
            working_dir: check_working_dir(req.working_dir)?,
            timeout_secs: check_timeout(req.timeout_secs)?,
            username: check_username(req.username)?,
            enable_parameter: req.enable_parameter,
            creator: creator.to_string(),
        };
        let quota = settings.retained_command_quota;
        self.inner.store.create_command(&new, quota).await.map_err(|e| match e {
            store::Error::Quota { name, used, limit } => Error::Quota {
                name,
                region_id: req.region_id,
                used,
                limit,
            },
            other => Error::Store(other),
        })
    }

    /// Checks a ModifyCommand request against the command it changes.
    pub async fn check_command_change(
        &self,
        command_id: &str,
        req: ModifyCommandRequest,
    ) -> Result<CommandChange, Error> {
        let command = self
            .inner
            .store
            .command(command_id)
            .await
            .map_err(not_found("command"))?;
        let content = match req.command_content {
            Some(text) => {
                let content = decode_content(&text, req.content_encoding, self.inner.settings.max_content_bytes)?;
                let names = command_parameters(&content, command.enable_parameter)?;
                Some((content, names))
            }
            None => None,
        };
        if req.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(invalid(
                "InvalidParameter.Name",
                "`name` is empty: give the command a name",
            ));
        }
        let name = check_text("Name", req.name, MAX_NAME)?;
        if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(invalid(
                "InvalidParameter.Name",
                "`name` is empty: give the command a name",
            ));
        }
        Ok(CommandChange(CommandUpdate {
            name,
            description: check_text("Description", req.description, MAX_DESCRIPTION)?,
            content,
            working_dir: req.working_dir.map(|d| check_working_dir(Some(d))).transpose()?,
            timeout_secs: req.timeout_secs.map(check_timeout).transpose()?,
            username: req.username.map(|u| check_username(Some(u))).transpose()?,
        }))
    }

    /// Applies a checked ModifyCommand.
    pub async fn modify_command(&self, command_id: &str, change: CommandChange) -> Result<CommandRow, Error> {
        self.inner
            .store
            .update_command(command_id, &change.0)
            .await
            .map_err(not_found("command"))
    }
}

/// Checks a RunCommand request as far as that is possible without the database: content,
/// names, timeout, working directory, username, parameters and the shape of `instance_ids`.
/// Public so that the fuzz target can drive it.
pub fn check_run_command(req: RunCommandRequest, settings: &super::Settings) -> Result<Run, Error> {
    let content = decode_content(&req.command_content, req.content_encoding, settings.max_content_bytes)?;
    let run = Run {
        name: check_text("Name", req.name, MAX_NAME)?.unwrap_or_default(),
        description: check_text("Description", req.description, MAX_DESCRIPTION)?.unwrap_or_default(),
        command_type: req.command_type,
        content,
        working_dir: check_working_dir(req.working_dir)?,
        timeout_secs: check_timeout(req.timeout_secs)?,
        username: check_username(req.username)?,
        enable_parameter: req.enable_parameter,
        parameters: req.parameters,
        instance_ids: req.instance_ids,
    };
    if req.keep_command && run.name.trim().is_empty() {
        return Err(invalid(
            "InvalidParameter.Name",
            "`name` is required when `keep_command` is true: a retained command needs a name",
        ));
    }
    check_parameters(&run, settings.max_content_bytes)?;
    check_instance_ids(&run.instance_ids, settings.max_instances)?;
    Ok(run)
}

/// Checks the shape of `instance_ids`: not empty, within the limit, no duplicates.
pub(super) fn check_instance_ids(ids: &[String], max: usize) -> Result<(), Error> {
    if ids.is_empty() {
        return Err(invalid(
            "InvalidParameter.InstanceIds",
            "`instance_ids` is empty: name at least one instance",
        ));
    }
    if ids.len() > max {
        return Err(invalid(
            "InvalidParameter.InstanceIds",
            format!(
                "{} instances named; one invocation may target at most {max}: split the run",
                ids.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(ids.len());
    if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(invalid(
            "InvalidParameter.InstanceIds",
            format!("instance {dup:?} is named twice in `instance_ids`: name each instance once"),
        ));
    }
    Ok(())
}

fn quota_error(instances: &[InstanceRow]) -> impl Fn(store::Error) -> Error + '_ {
    move |e| match e {
        store::Error::Quota { name, used, limit } => Error::Quota {
            name,
            region_id: instances.first().map(|i| i.region_id.clone()).unwrap_or_default(),
            used,
            limit,
        },
        other => Error::Store(other),
    }
}

fn single_region(instances: &[InstanceRow]) -> Result<String, Error> {
    let first = &instances[0].region_id;
    match instances.iter().find(|i| &i.region_id != first) {
        Some(other) => Err(invalid(
            "InvalidParameter.InstanceIds",
            format!(
                "a retained command belongs to one region, but the instances are in {first} and {}: \
                 run it per region, or set keep_command to false",
                other.region_id
            ),
        )),
        None => Ok(first.clone()),
    }
}

/// Decodes and checks command content: valid encoding, UTF-8, not empty, within the limit.
fn decode_content(text: &str, encoding: ContentEncoding, max: usize) -> Result<String, Error> {
    const CODE: &str = "InvalidParameter.CommandContent";
    let content = match encoding {
        ContentEncoding::PlainText => text.to_string(),
        ContentEncoding::Base64 => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim().as_bytes())
                .map_err(|e| invalid(CODE, format!("`command_content` is not valid Base64 ({e}): encode it again, or set content_encoding to PlainText")))?;
            String::from_utf8(bytes)
                .map_err(|_| invalid(CODE, "`command_content` decodes to bytes that are not UTF-8 text"))?
        }
    };
    if content.trim().is_empty() {
        return Err(invalid(CODE, "`command_content` is empty: write the command to run"));
    }
    if content.len() > max {
        return Err(invalid(
            CODE,
            format!(
                "`command_content` is {} bytes; the limit is {max} bytes ({} KiB) after decoding: shorten it, or ship a script file and run that",
                content.len(),
                max / 1024
            ),
        ));
    }
    if content.contains('\0') {
        return Err(invalid(
            CODE,
            "`command_content` contains a NUL byte, which no shell can run",
        ));
    }
    Ok(content)
}

/// Checks parameters against the content (or that none are given when disabled), and that the
/// filled-in content stays within the limit.
fn check_parameters(run: &Run, max: usize) -> Result<(), Error> {
    const CODE: &str = "InvalidParameter.Parameters";
    if !run.enable_parameter {
        if !run.parameters.is_empty() {
            return Err(invalid(
                CODE,
                "`parameters` are given but `enable_parameter` is false: set it to true to fill {{name}} placeholders",
            ));
        }
        return Ok(());
    }
    params::check(&run.content, &run.parameters).map_err(|m| invalid(CODE, m))?;
    let filled = params::fill(&run.content, &run.parameters, &BTreeMap::new());
    if filled.len() > max {
        return Err(invalid(
            CODE,
            format!(
                "with parameters filled in the content is {} bytes; the limit is {max}",
                filled.len()
            ),
        ));
    }
    Ok(())
}

fn command_parameters(content: &str, enabled: bool) -> Result<Vec<String>, Error> {
    if !enabled {
        return Ok(Vec::new());
    }
    let names = params::custom_names(content);
    if names.len() > params::MAX_PARAMETERS {
        return Err(invalid(
            "InvalidParameter.Parameters",
            format!(
                "the content declares {} parameters; at most {} are allowed",
                names.len(),
                params::MAX_PARAMETERS
            ),
        ));
    }
    Ok(names)
}

fn check_timeout(secs: u64) -> Result<u64, Error> {
    if TIMEOUT_RANGE.contains(&secs) {
        Ok(secs)
    } else {
        Err(invalid(
            "InvalidParameter.Timeout",
            format!("`timeout_secs` is {secs}; it must be between 1 and 604800 (7 days)"),
        ))
    }
}

/// Checks an optional text field; blank counts as absent.
fn check_text(field: &'static str, value: Option<String>, max: usize) -> Result<Option<String>, Error> {
    let code = match field {
        "Name" => "InvalidParameter.Name",
        _ => "InvalidParameter.Description",
    };
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let chars = value.chars().count();
    if chars > max {
        return Err(invalid(
            code,
            format!(
                "`{}` is {chars} characters; at most {max} are allowed",
                field.to_lowercase()
            ),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid(
            code,
            format!("`{}` contains control characters", field.to_lowercase()),
        ));
    }
    Ok(Some(value))
}

fn check_working_dir(value: Option<String>) -> Result<Option<String>, Error> {
    const CODE: &str = "InvalidParameter.WorkingDir";
    let Some(dir) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    if dir.chars().count() > MAX_WORKING_DIR {
        return Err(invalid(
            CODE,
            format!("`working_dir` is longer than {MAX_WORKING_DIR} characters"),
        ));
    }
    if dir.chars().any(char::is_control) {
        return Err(invalid(CODE, "`working_dir` contains control characters"));
    }
    let windows_absolute = dir.len() >= 3 && dir.as_bytes()[1] == b':' && matches!(dir.as_bytes()[2], b'\\' | b'/');
    if !dir.starts_with('/') && !windows_absolute {
        return Err(invalid(
            CODE,
            format!("`working_dir` {dir:?} is not an absolute path: use one like /var/tmp or C:\\Temp"),
        ));
    }
    Ok(Some(dir))
}

fn check_username(value: Option<String>) -> Result<Option<String>, Error> {
    let Some(name) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let valid = name.len() <= MAX_USERNAME
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '$' | '\\' | '@'));
    if !valid {
        return Err(invalid(
            "InvalidParameter.Username",
            format!(
                "`username` {name:?} is not a valid account name (letters, digits, . _ - $ \\ @; at most {MAX_USERNAME})"
            ),
        ));
    }
    Ok(Some(name))
}

/// Checks a region id: lowercase letters, digits and dashes, 1–64 characters.
pub fn check_region(region: &str) -> Result<(), Error> {
    let valid = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            "InvalidParameter.RegionId",
            format!("region id {region:?} is not valid: use lowercase letters, digits and dashes, like cn-hangzhou"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: Error) -> &'static str {
        match e {
            Error::Invalid { code, .. } => code,
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn content_is_decoded_and_limited() {
        assert_eq!(
            decode_content("ZWNobyBoaQ==", ContentEncoding::Base64, 100).unwrap(),
            "echo hi"
        );
        assert_eq!(
            code(decode_content("%%%", ContentEncoding::Base64, 100).unwrap_err()),
            "InvalidParameter.CommandContent"
        );
        let err = decode_content(&"x".repeat(101), ContentEncoding::PlainText, 100).unwrap_err();
        assert!(err.to_string().contains("the limit is 100 bytes"), "{err}");
        assert!(decode_content("  ", ContentEncoding::PlainText, 100).is_err());
    }

    #[test]
    fn timeouts_outside_one_second_to_seven_days_are_refused() {
        assert!(check_timeout(0).is_err());
        assert!(check_timeout(1).is_ok());
        assert!(check_timeout(604_800).is_ok());
        assert_eq!(code(check_timeout(604_801).unwrap_err()), "InvalidParameter.Timeout");
    }

    #[test]
    fn working_dirs_must_be_absolute() {
        assert!(check_working_dir(Some("/tmp".into())).unwrap().is_some());
        assert!(check_working_dir(Some("C:\\Temp".into())).unwrap().is_some());
        assert!(check_working_dir(Some("../etc".into())).is_err());
        assert!(check_working_dir(Some("".into())).unwrap().is_none());
    }

    #[test]
    fn usernames_and_regions_are_checked() {
        assert!(check_username(Some("www-data".into())).is_ok());
        assert!(check_username(Some("root; rm -rf /".into())).is_err());
        assert!(check_region("cn-hangzhou").is_ok());
        assert!(check_region("CN Hangzhou").is_err());
    }
}
