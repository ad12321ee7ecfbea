//! The agent as a systemd service: `fleetrun-agent install`, `start`, `stop`, `restart`,
//! `status` and `uninstall`.
//!
//! The unit is `packaging/fleetrun-agent.service`, the file the .deb ships, with this machine's
//! binary path, state directory and options written into its ExecStart line. The same words,
//! quoted for a shell, are the foreground command printed for another supervisor where systemd
//! does not run the machine (no `/run/systemd/system`, as sd_booted(3) tells). Enrolment is the
//! agent's own (`super::enrol`); systemd is driven through `systemctl`. It uses `config` and
//! `files`, nothing of the server.

use crate::config::{InstallArgs, UninstallArgs, UnitArgs};
use anyhow::{Context as _, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The unit's name.
pub const UNIT: &str = "fleetrun-agent.service";
/// The canonical unit.
const TEMPLATE: &str = include_str!("../../packaging/fleetrun-agent.service");
/// The binary and state directory the canonical unit names, replaced by this machine's.
const DEFAULT_BINARY: &str = "/usr/bin/fleetrun-agent";
const DEFAULT_STATE_DIR: &str = "/var/lib/fleetrun-agent";
/// The copy of `--ca-file` in the state directory that the service uses, so that removing or
/// moving the file given to `install` does not break the agent.
const CA_COPY: &str = "ca.pem";

/// Options of `install` that are not the service's: the enrolment's, those that say how to
/// install, and those the unit sets itself (`--state-dir`, `--ca-file`).
const NOT_FOR_THE_SERVICE: &[&str] = &[
    "activation_id",
    "activation_code",
    "activation_code_file",
    "name",
    "tags",
    "state_dir",
    "ca_file",
    "no_service",
    "unit_dir",
    "systemd_run_dir",
    "log",
    "help",
    "version",
];

/// The options given to `install` (on its command line or in the environment) that the service
/// runs with, as arguments: `--server …` always, and any other agent option set explicitly
/// (`--kill-grace-secs 1`, `--insecure-plaintext`). Options left at their defaults are left out,
/// so that the service follows the defaults of the binary it runs.
pub fn service_options(install: &clap::Command, matches: &clap::ArgMatches) -> Vec<String> {
    use clap::parser::ValueSource;
    let mut options = Vec::new();
    for arg in install.get_arguments() {
        let id = arg.get_id().as_str();
        let (Some(long), false) = (arg.get_long(), NOT_FOR_THE_SERVICE.contains(&id)) else {
            continue;
        };
        if !matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        if arg.get_action().takes_values() {
            for value in matches.get_raw(id).into_iter().flatten() {
                options.push(format!("--{long}"));
                options.push(value.to_string_lossy().into_owned());
            }
        } else if matches.get_one::<bool>(id).copied().unwrap_or(false) {
            options.push(format!("--{long}"));
        }
    }
    options
}

/// `fleetrun-agent install`: enrols (or keeps the credential the state directory holds), then
/// writes the unit and has systemd enable and start it; with `--no-service`, or where systemd
/// does not run, prints the command line to run instead. `options` are the service's
/// ([`service_options`]).
pub async fn install(args: InstallArgs, options: Vec<String>) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("cannot tell where this fleetrun-agent binary is")?;
    let mut agent = args.agent;
    agent.state_dir = std::path::absolute(&agent.state_dir)
        .with_context(|| format!("cannot resolve --state-dir {}", agent.state_dir.display()))?;
    let state_dir = agent.state_dir.clone();
    let instance_id = super::enrol(&agent).await?;
    println!(
        "fleetrun-agent: this machine is instance {instance_id}; its credential is in {} (mode 0700)",
        state_dir.display()
    );
    let mut extra = Vec::new();
    if let Some(ca_file) = &agent.ca_file {
        let copy = state_dir.join(CA_COPY);
        let pem =
            std::fs::read_to_string(ca_file).with_context(|| format!("cannot read --ca-file {}", ca_file.display()))?;
        crate::files::write_private(&copy, &pem)?;
        extra.extend(["--ca-file".to_string(), path_text(&copy)?]);
    }
    extra.extend(options);
    let command = exec_start(&binary, &state_dir, &extra)?;
    if args.no_service {
        println!(
            "fleetrun-agent: no service installed (--no-service). Run the agent in the foreground, \
             under your supervisor, with:\n  {}",
            shell_line(&command)
        );
        return Ok(());
    }
    let unit_path = args.unit.unit_dir.join(UNIT);
    write_unit(&unit_path, &render_unit(&command)?)?;
    println!("fleetrun-agent: wrote {}", unit_path.display());
    if !systemd_runs(&args.unit) {
        println!(
            "{}",
            not_running(&args.unit, "the service is not enabled or started", Some(&command))
        );
        return Ok(());
    }
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", UNIT])?;
    // `restart` also starts a stopped service, and makes a running one (a reinstall) take the
    // new unit.
    systemctl(&["restart", UNIT])?;
    println!(
        "fleetrun-agent: the service {UNIT} is enabled and started; `fleetrun-agent status` shows it, \
         `journalctl -u fleetrun-agent` its log"
    );
    Ok(())
}

/// `start`, `stop`, `restart` and `status`: systemctl's, with its exit code. Where systemd does
/// not run the machine, an error that says so, with the command line to run instead.
pub fn lifecycle(verb: &str, unit: &UnitArgs) -> anyhow::Result<ExitCode> {
    if !systemd_runs(unit) {
        let installed = read_unit(unit)?.and_then(|text| installed_command(&text));
        let what = match verb {
            "status" => "there is no service whose state to show".to_string(),
            _ => format!("there is no service to {verb}"),
        };
        bail!("{}", not_running(unit, &what, installed.as_deref()));
    }
    let mut args = vec![verb, UNIT];
    if verb == "status" {
        args.push("--no-pager");
    }
    let status = std::process::Command::new("systemctl")
        .args(&args)
        .status()
        .context("cannot run systemctl")?;
    // systemctl has said what went wrong; its code (3: not running, for status) is passed on.
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// `uninstall`: stops and disables the service and removes its unit; with `--purge`, removes
/// the state directory too. Where systemd does not run, removes the files and says that the
/// agent's own supervisor must stop it.
pub fn uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    let unit_path = args.unit.unit_dir.join(UNIT);
    let installed = read_unit(&args.unit)?;
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| installed.as_deref().and_then(installed_state_dir))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let systemd = systemd_runs(&args.unit);
    match (&installed, systemd) {
        (Some(_), true) => {
            systemctl(&["disable", "--now", UNIT])?;
            println!("fleetrun-agent: stopped and disabled {UNIT}");
        }
        (_, false) => println!(
            "fleetrun-agent: systemd is not running on this machine ({} is missing), so no service is \
             stopped: stop an agent running under another supervisor there",
            args.unit.systemd_run_dir.display()
        ),
        (None, true) => {}
    }
    if installed.is_some() {
        std::fs::remove_file(&unit_path).with_context(|| format!("cannot remove {}", unit_path.display()))?;
        println!("fleetrun-agent: removed {}", unit_path.display());
        if systemd {
            systemctl(&["daemon-reload"])?;
        }
    } else {
        println!("fleetrun-agent: no unit at {}", unit_path.display());
    }
    if args.purge {
        purge(&state_dir)
    } else {
        println!(
            "fleetrun-agent: kept {} (the instance credential); `fleetrun-agent uninstall --purge` removes it",
            state_dir.display()
        );
        Ok(())
    }
}

/// Removes the state directory, if it is one: empty, or holding the agent's credential or spool
/// (so that a mistyped `--state-dir /` removes nothing).
fn purge(state_dir: &Path) -> anyhow::Result<()> {
    let Ok(mut entries) = std::fs::read_dir(state_dir) else {
        println!("fleetrun-agent: no state directory at {}", state_dir.display());
        return Ok(());
    };
    let is_agent_state =
        entries.next().is_none() || ["identity.json", "spool"].iter().any(|n| state_dir.join(n).exists());
    if !is_agent_state {
        bail!(
            "{} holds no identity.json or spool, so it is not the agent's state directory: nothing removed \
             (give the right one with --state-dir)",
            state_dir.display()
        );
    }
    std::fs::remove_dir_all(state_dir).with_context(|| format!("cannot remove {}", state_dir.display()))?;
    println!(
        "fleetrun-agent: removed {}; the instance stays registered on the server until it is deregistered there",
        state_dir.display()
    );
    Ok(())
}

/// The words of the service's command line: the canonical unit's ExecStart with this binary and
/// state directory, then `extra`.
fn exec_start(binary: &Path, state_dir: &Path, extra: &[String]) -> anyhow::Result<Vec<String>> {
    let line = TEMPLATE
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .ok_or_else(|| anyhow!("the unit template has no ExecStart line"))?;
    let (binary, state_dir) = (path_text(binary)?, path_text(state_dir)?);
    let mut words: Vec<String> = line
        .split_whitespace()
        .map(|word| match word {
            DEFAULT_BINARY => binary.clone(),
            DEFAULT_STATE_DIR => state_dir.clone(),
            word => word.to_string(),
        })
        .collect();
    words.extend(extra.iter().cloned());
    Ok(words)
}

/// The unit: the canonical one with `command` as its ExecStart.
fn render_unit(command: &[String]) -> anyhow::Result<String> {
    let exec_start = command
        .iter()
        .map(|word| systemd_word(word))
        .collect::<anyhow::Result<Vec<_>>>()?
        .join(" ");
    let mut unit = String::new();
    for line in TEMPLATE.lines() {
        if line.starts_with("ExecStart=") {
            unit.push_str("ExecStart=");
            unit.push_str(&exec_start);
        } else {
            unit.push_str(line);
        }
        unit.push('\n');
    }
    Ok(unit)
}

/// A word of an ExecStart line: `%` and `$` doubled (systemd expands specifiers and variables
/// there), and double-quoted with backslash escapes unless it needs no quoting.
fn systemd_word(word: &str) -> anyhow::Result<String> {
    if word.chars().any(char::is_control) {
        bail!("{word:?} has a control character, which a unit file cannot hold");
    }
    let escaped = word.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && escaped
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=,@+%$".contains(&b))
    {
        return Ok(escaped);
    }
    Ok(format!("\"{}\"", escaped.replace('\\', r"\\").replace('"', "\\\"")))
}

/// The words of a unit's ExecStart line, as [`render_unit`] wrote them.
fn installed_command(unit: &str) -> Option<Vec<String>> {
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart="))?;
    let mut words = Vec::new();
    let (mut word, mut in_word, mut quoted) = (String::new(), false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' => word.extend(chars.next()),
            '%' | '$' => {
                // Doubled on writing.
                chars.next();
                word.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
                continue;
            }
            c => word.push(c),
        }
        in_word = true;
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// The state directory an installed unit names.
fn installed_state_dir(unit: &str) -> Option<PathBuf> {
    let words = installed_command(unit)?;
    let at = words.iter().position(|w| w == "--state-dir")?;
    words.get(at + 1).map(PathBuf::from)
}

/// A command line for a POSIX shell.
fn shell_line(words: &[String]) -> String {
    words
        .iter()
        .map(|word| {
            if !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._-:=,@+%".contains(&b))
            {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sentence for a machine that systemd does not run, with the command line to run instead
/// (or how to get one).
fn not_running(unit: &UnitArgs, what: &str, command: Option<&[String]>) -> String {
    let instead = match command {
        Some(command) => format!(
            "Run the agent in the foreground under your supervisor (runit, s6, supervisord, a container's \
             init…), which should restart it when it exits, with:\n  {}",
            shell_line(command)
        ),
        None => format!(
            "No unit is installed in {}: enrol first with `fleetrun-agent install --server URL \
             --activation-id ID` (the code in FLEETRUN_ACTIVATION_CODE), which prints the command line to run.",
            unit.unit_dir.display()
        ),
    };
    format!(
        "systemd is not running on this machine ({} is missing), so {what}. {instead}",
        unit.systemd_run_dir.display()
    )
}

fn systemd_runs(unit: &UnitArgs) -> bool {
    unit.systemd_run_dir.is_dir()
}

fn read_unit(unit: &UnitArgs) -> anyhow::Result<Option<String>> {
    let path = unit.unit_dir.join(UNIT);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the unit (0644, as systemd's own) through a temporary file, so that systemd never
/// reads half of it.
fn write_unit(path: &Path, unit: &str) -> anyhow::Result<()> {
    let hint = "run install as root (sudo), or add --no-service to enrol without a service";
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {} ({hint})", dir.display()))?;
    let partial = path.with_extension("service.partial");
    std::fs::write(&partial, unit).with_context(|| format!("cannot write {} ({hint})", partial.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {} ({hint})", path.display()))
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .context("cannot run systemctl")?;
    if !status.success() {
        bail!(
            "`systemctl {}` failed ({status}); `journalctl -u fleetrun-agent` may say why",
            args.join(" ")
        );
    }
    Ok(())
}

fn path_text(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(String::from)
        .ok_or_else(|| anyhow!("{} is not UTF-8, which a unit file needs", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentCli, AgentCommand};
    use clap::{CommandFactory as _, FromArgMatches as _, Parser as _};

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_canonical_unit_runs_the_packaged_binary_on_the_packaged_state_directory() {
        let command = exec_start(Path::new(DEFAULT_BINARY), Path::new(DEFAULT_STATE_DIR), &[]).unwrap();

        assert_eq!(command, words(&[DEFAULT_BINARY, "--state-dir", DEFAULT_STATE_DIR]));
        assert_eq!(render_unit(&command).unwrap(), TEMPLATE);
        for line in [
            "KillMode=process",
            "Restart=on-failure",
            "Delegate=yes",
            "WantedBy=multi-user.target",
        ] {
            assert!(TEMPLATE.lines().any(|l| l == line), "the unit lacks {line}");
        }
    }

    #[test]
    fn the_unit_takes_this_machines_paths_and_options_quoted_for_systemd() {
        let extra = words(&["--server", "https://fleet.example:8443", "--name", "a \"b\" $HOME 100%"]);
        let command = exec_start(Path::new("/opt/fleet run/agent"), Path::new("/srv/state"), &extra).unwrap();

        let unit = render_unit(&command).unwrap();

        let line = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert_eq!(
            line,
            r#"ExecStart="/opt/fleet run/agent" --state-dir /srv/state --server https://fleet.example:8443 --name "a \"b\" $$HOME 100%%""#
        );
        assert_eq!(installed_command(&unit).unwrap(), command, "read back as written");
        assert_eq!(installed_state_dir(&unit), Some(PathBuf::from("/srv/state")));
        assert!(systemd_word("a\nExecStartPre=/bin/evil").is_err());
    }

    #[test]
    fn the_foreground_line_is_quoted_for_the_shell() {
        assert_eq!(
            shell_line(&words(&[
                "/usr/bin/fleetrun-agent",
                "--name",
                "it's web 1",
                "--server",
                "http://a:1"
            ])),
            r"/usr/bin/fleetrun-agent --name 'it'\''s web 1' --server http://a:1"
        );
    }

    #[test]
    fn the_service_keeps_the_options_given_to_install_but_not_the_enrolments() {
        let command = AgentCli::command();
        let matches = command.clone().get_matches_from([
            "fleetrun-agent",
            "install",
            "--server",
            "http://a:1,http://b:2",
            "--activation-id",
            "act-1",
            "--activation-code",
            "secret-code",
            "--name",
            "web-1",
            "--tag",
            "env=prod",
            "--kill-grace-secs",
            "7",
            "--insecure-plaintext",
            "--state-dir",
            "/srv/state",
        ]);
        let (_, install) = matches.subcommand().unwrap();

        let options = service_options(command.find_subcommand("install").unwrap(), install);

        assert_eq!(
            options,
            words(&[
                "--server",
                "http://a:1",
                "--server",
                "http://b:2",
                "--insecure-plaintext",
                "--kill-grace-secs",
                "7"
            ])
        );
        let cli = AgentCli::from_arg_matches(&matches).unwrap();
        assert!(matches!(cli.command, Some(AgentCommand::Install(_))));
    }

    #[test]
    fn the_agent_still_runs_in_the_foreground_without_a_subcommand() {
        let cli = AgentCli::try_parse_from(["fleetrun-agent", "--server", "http://a:1"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.agent.server, ["http://a:1"]);

        let cli = AgentCli::try_parse_from(["fleetrun-agent", "status"]).unwrap();
        assert!(matches!(cli.command, Some(AgentCommand::Status(_))));
        assert!(AgentCli::try_parse_from(["fleetrun-agent", "--server", "http://a:1", "status"]).is_err());
        assert!(
            AgentCli::try_parse_from(["fleetrun-agent"]).is_err(),
            "a server is required"
        );
    }
}
