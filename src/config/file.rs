//! `--config FILE`: options from a TOML file (`/etc/fleetrun/server.toml`, `agent.toml`).
//!
//! The keys are the long option names, kebab-case as on the command line (`data-dir`,
//! `heartbeat-secs`, `trusted-proxy = ["10.0.0.0/8"]`); `log` and `log-format` too. A key that
//! is no option is an error naming the key and the file, so a typo is not silently ignored.
//!
//! Precedence: flag > `FLEETRUN_*` environment variable > file > built-in default. The file's
//! values become the options' defaults before clap parses the command line, so clap itself
//! applies the first two and validates every value the way it validates a flag.

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Ids that are not settings: they cannot appear in a file.
const NOT_SETTINGS: &[&str] = &["help", "version", "config", "print_config"];

/// Modes that read the server's file for the few options they share with `serve` (its data
/// directory and database), accepting (and ignoring) the rest of its keys.
const SHARES_FILE_WITH: &[(&str, &str)] = &[("backup", "serve"), ("restore", "serve")];

/// The parsed command line, and where its values came from.
#[derive(Debug)]
pub struct Loaded<T> {
    pub cli: T,
    command: Command,
    matches: ArgMatches,
    /// The file read and the keys it set.
    file: Option<(PathBuf, BTreeSet<String>)>,
}

/// A command line that cannot be used.
#[derive(Debug)]
pub enum Error {
    /// clap's own error (usage, `--help`, `--version`, an invalid flag).
    Clap(clap::Error),
    /// The configuration file: missing, not TOML, an unknown key or a bad value.
    File(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Clap(e) => write!(f, "{e}"),
            Error::File(e) => f.write_str(e),
        }
    }
}

/// Parses the process's command line with its `--config` file, or exits with the error, as
/// `Parser::parse` does.
pub fn load<T: CommandFactory + FromArgMatches>() -> Loaded<T> {
    match try_load_from(std::env::args_os()) {
        Ok(loaded) => loaded,
        Err(Error::Clap(e)) => e.exit(),
        Err(Error::File(e)) => {
            let name = T::command().get_name().to_string();
            eprintln!("{name}: {e}");
            std::process::exit(2)
        }
    }
}

/// Parses `args` (the program name first) with the `--config` file it names, if any (or
/// `FLEETRUN_CONFIG`).
pub fn try_load_from<T, I, A>(args: I) -> Result<Loaded<T>, Error>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = A>,
    A: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = T::command();
    // A first, lenient pass only to learn the mode and the file: a required option the file
    // provides must not fail it.
    let first = command.clone().ignore_errors(true).try_get_matches_from(&args).ok();
    let mode = first
        .as_ref()
        .and_then(|m| m.subcommand())
        .map(|(name, sub)| (name.to_string(), sub.clone()));
    let config = first.as_ref().and_then(|top| {
        let in_mode = mode.as_ref().and_then(|(_, sub)| config_arg(sub));
        in_mode.or_else(|| config_arg(top))
    });
    let mut file = None;
    if let Some(path) = config {
        let table = read(&path)?;
        let mode_name = mode.as_ref().map(|(name, _)| name.as_str());
        let keys = apply(&mut command, mode_name, &path, &table)?;
        file = Some((path, keys));
    }
    let matches = command.try_get_matches_from_mut(&args).map_err(Error::Clap)?;
    let cli = T::from_arg_matches(&matches).map_err(|e| Error::Clap(e.format(&mut command)))?;
    Ok(Loaded {
        cli,
        command,
        matches,
        file,
    })
}

fn config_arg(matches: &ArgMatches) -> Option<PathBuf> {
    matches.try_get_one::<PathBuf>("config").ok().flatten().cloned()
}

fn read(path: &Path) -> Result<toml::Table, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::File(format!("cannot read the configuration file {}: {e}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|e| Error::File(format!("{} is not valid TOML: {e}", path.display())))
}

/// Makes each of the file's values the default of its option (in the mode's subcommand, or
/// of the program itself); returns the keys set.
fn apply(
    command: &mut Command,
    mode: Option<&str>,
    path: &Path,
    table: &toml::Table,
) -> Result<BTreeSet<String>, Error> {
    let checked_as = mode.map(|m| {
        SHARES_FILE_WITH
            .iter()
            .find(|(from, _)| *from == m)
            .map_or(m, |(_, to)| to)
    });
    let mut keys = BTreeSet::new();
    for (key, value) in table {
        let find = |cmd: &Command, sub: Option<&str>| {
            let cmd = match sub {
                Some(sub) => cmd.find_subcommand(sub)?,
                None => cmd,
            };
            cmd.get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()) && !NOT_SETTINGS.contains(&a.get_id().as_str()))
                .cloned()
        };
        // The mode's own options first, then the program's (`log`, `log-format`).
        let (arg, sub) = match checked_as.and_then(|m| find(&*command, Some(m))) {
            Some(arg) => (arg, checked_as),
            None => match find(&*command, None) {
                Some(arg) => (arg, None),
                None => return Err(unknown_key(command, checked_as, path, key)),
            },
        };
        let values = values_of(&arg, path, key, value)?;
        keys.insert(key.clone());
        // Only the options the running mode has take the value (`backup` takes `data-dir`
        // from the server's file, not `listen`).
        let target = if sub.is_some() { mode } else { None };
        let id = arg.get_id().as_str().to_string();
        if target.is_some_and(|t| find(&*command, Some(t)).is_none()) {
            continue;
        }
        let set = move |a: clap::Arg| a.default_values(values).required(false);
        let taken = std::mem::take(command);
        *command = match target {
            Some(t) => taken.mut_subcommand(t, |s| s.mut_arg(&id, set)),
            None => taken.mut_arg(&id, set),
        };
    }
    Ok(keys)
}

fn unknown_key(command: &Command, mode: Option<&str>, path: &Path, key: &str) -> Error {
    let name = match mode {
        Some(mode) => format!("{} {mode}", command.get_name()),
        None => command.get_name().to_string(),
    };
    let hint = if key.contains('_') {
        format!(" (keys are kebab-case, as the options: `{}`)", key.replace('_', "-"))
    } else {
        String::new()
    };
    Error::File(format!(
        "{}: unknown key `{key}`{hint}; the keys are the long options of `{name}` (see `{name} --help`)",
        path.display()
    ))
}

/// The command-line values for one key, checked by the option's own parser.
fn values_of(arg: &clap::Arg, path: &Path, key: &str, value: &toml::Value) -> Result<Vec<String>, Error> {
    let bad = |why: String| Error::File(format!("{}: {key}: {why}", path.display()));
    let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    let many = matches!(arg.get_action(), ArgAction::Append);
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) if !flag => Ok(s.clone()),
        toml::Value::Integer(n) if !flag => Ok(n.to_string()),
        toml::Value::Boolean(b) if flag => Ok(b.to_string()),
        other if flag => Err(bad(format!("expected true or false, found {other}"))),
        other => Err(bad(format!("expected a string or a number, found {other}"))),
    };
    let values = match value {
        toml::Value::Array(items) if many => items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
        toml::Value::Array(_) => return Err(bad("takes one value, not a list".into())),
        one => vec![scalar(one)?],
    };
    if !flag {
        // Parse each value as the flag would be, so the error names the file and the key.
        let long = arg.get_long().unwrap_or(key);
        let probe = Command::new("probe").no_binary_name(true).arg(
            clap::Arg::new("value")
                .long(long.to_string())
                .value_parser(arg.get_value_parser().clone())
                .action(ArgAction::Set),
        );
        for value in &values {
            if let Err(e) = probe.clone().try_get_matches_from([format!("--{long}={value}")]) {
                let message = e.to_string();
                let first = message.lines().next().unwrap_or_default();
                return Err(bad(first.trim_start_matches("error: ").to_string()));
            }
        }
    }
    Ok(values)
}

impl<T> Loaded<T> {
    /// The command parsed, with the file's values as its defaults.
    pub fn command(&self) -> &Command {
        &self.command
    }

    /// Every value and where it came from (a file's value has the source `DefaultValue`).
    pub fn matches(&self) -> &ArgMatches {
        &self.matches
    }

    /// The merged settings of `mode` (and the program's own options) as TOML, each with where
    /// it came from; secrets redacted.
    pub fn print_config(&self, mode: &str) -> String {
        let Some(sub) = self.command.find_subcommand(mode) else {
            return String::new();
        };
        let sub_matches = self.matches.subcommand_matches(mode).unwrap_or(&self.matches);
        let mut out = format!(
            "# `{} {mode}`'s settings: flag > FLEETRUN_* variable > config file > default.\n",
            self.command.get_name()
        );
        let globals = self.command.get_arguments().filter(|a| a.is_global_set());
        for arg in globals.chain(sub.get_arguments()) {
            let id = arg.get_id().as_str();
            let (Some(long), false) = (arg.get_long(), NOT_SETTINGS.contains(&id)) else {
                continue;
            };
            if out.lines().any(|l| l.starts_with(&format!("{long} ="))) {
                continue;
            }
            let raw: Vec<String> = sub_matches
                .get_raw(id)
                .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let source = match sub_matches.value_source(id) {
                Some(ValueSource::CommandLine) => format!("--{long}"),
                Some(ValueSource::EnvVariable) => arg
                    .get_env()
                    .map_or("environment".into(), |e| e.to_string_lossy().into_owned()),
                Some(ValueSource::DefaultValue) => match &self.file {
                    Some((path, keys)) if keys.contains(long) => path.display().to_string(),
                    _ => "default".into(),
                },
                _ => {
                    out.push_str(&format!("# {long} = (not set)\n"));
                    continue;
                }
            };
            let secret = arg.is_hide_env_values_set();
            let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
            let value = |raw: &str| -> toml::Value {
                if secret {
                    toml::Value::String("(redacted)".into())
                } else if flag {
                    toml::Value::Boolean(raw == "true")
                } else if let Ok(n) = raw.parse::<i64>() {
                    toml::Value::Integer(n)
                } else {
                    toml::Value::String(redact_url(raw))
                }
            };
            let shown = if matches!(arg.get_action(), ArgAction::Append) {
                toml::Value::Array(raw.iter().map(|r| value(r)).collect())
            } else {
                match raw.first() {
                    Some(r) => value(r),
                    None => continue,
                }
            };
            out.push_str(&format!("{long} = {shown}  # {source}\n"));
        }
        out
    }
}

/// A URL with its password replaced (`postgres://fleet:***@db/fleet`); anything else as is.
fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentCli, Cli, LogFormat, Mode, ServeArgs};

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn serve(args: &[&str]) -> Result<(ServeArgs, Loaded<Cli>), Error> {
        let loaded = try_load_from::<Cli, _, _>([&["fleetrun"], args].concat())?;
        let Mode::Serve(serve) = &loaded.cli.mode else {
            panic!("not serve")
        };
        Ok((serve.clone(), loaded))
    }

    fn message(result: Result<impl std::fmt::Debug, Error>) -> String {
        match result {
            Err(Error::File(e)) => e,
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn a_flag_beats_the_file_which_beats_the_default() {
        let config = file(
            "data-dir = \"/srv/fleet\"\nheartbeat-secs = 7\nlisten = \"0.0.0.0:9000\"\n\
             trusted-proxy = [\"10.0.0.0/8\", \"192.0.2.1\"]\nlog-format = \"json\"\n",
        );
        let path = config.path().to_str().unwrap();

        let (args, loaded) = serve(&["serve", "--config", path, "--listen", "127.0.0.1:1"]).unwrap();
        assert_eq!(args.listen.to_string(), "127.0.0.1:1", "the flag wins");
        assert_eq!(args.data_dir, PathBuf::from("/srv/fleet"), "the file beats the default");
        assert_eq!(args.heartbeat_secs, 7);
        assert_eq!(args.trusted_proxies.len(), 2);
        assert_eq!(
            args.delivery_window_secs, 60,
            "what the file leaves out keeps its default"
        );
        assert_eq!(loaded.cli.log_format, LogFormat::Json, "program-wide options too");

        // The global option given after the mode still beats the file.
        let (_, loaded) = serve(&["serve", "--config", path, "--log-format", "text"]).unwrap();
        assert_eq!(loaded.cli.log_format, LogFormat::Text);

        // Without --config, nothing of the file.
        let (args, _) = serve(&["serve"]).unwrap();
        assert_eq!(args.data_dir, PathBuf::from("./fleetrun-data"));
    }

    #[test]
    fn the_agent_takes_its_required_server_and_flags_from_the_file() {
        let config = file("server = [\"https://a\", \"https://b\"]\ninsecure-plaintext = true\ntag = [\"env=prod\"]\n");
        let path = config.path().to_str().unwrap();
        let agent = try_load_from::<AgentCli, _, _>(["fleetrun-agent", "--config", path])
            .unwrap()
            .cli
            .agent;
        assert_eq!(agent.server, ["https://a", "https://b"]);
        assert!(agent.insecure_plaintext);
        assert_eq!(agent.tags, ["env=prod"]);

        let agent = try_load_from::<AgentCli, _, _>(["fleetrun-agent", "--config", path, "--server", "https://c"])
            .unwrap()
            .cli
            .agent;
        assert_eq!(agent.server, ["https://c"], "the flag replaces the file's list");

        // `fleetrun agent` reads the same file.
        let cli = try_load_from::<Cli, _, _>(["fleetrun", "agent", "--config", path])
            .unwrap()
            .cli;
        let Mode::Agent(agent) = cli.mode else {
            panic!("not agent")
        };
        assert_eq!(agent.server, ["https://a", "https://b"]);
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_key_and_the_file() {
        let config = file("listen = \"127.0.0.1:1\"\nheartbeat = 5\n");
        let path = config.path().to_str().unwrap();
        let error = message(serve(&["serve", "--config", path]));
        assert!(error.contains("unknown key `heartbeat`"), "{error}");
        assert!(error.contains(path), "{error}");

        let config = file("data_dir = \"/srv\"\n");
        let error = message(serve(&["serve", "--config", config.path().to_str().unwrap()]));
        assert!(error.contains("`data-dir`"), "the kebab-case key is suggested: {error}");

        // An agent key in the server's file, and the file's own options, are no settings.
        for text in ["state-dir = \"/x\"\n", "config = \"/y\"\n", "print-config = true\n"] {
            let config = file(text);
            let error = message(serve(&["serve", "--config", config.path().to_str().unwrap()]));
            assert!(error.contains("unknown key"), "{text}: {error}");
        }
    }

    #[test]
    fn a_bad_value_names_the_file_and_the_key() {
        for (text, key) in [
            ("heartbeat-secs = 0\n", "heartbeat-secs"),
            ("heartbeat-secs = \"soon\"\n", "heartbeat-secs"),
            ("listen = [\"127.0.0.1:1\"]\n", "listen"),
            ("trusted-proxy = [\"proxy.example\"]\n", "trusted-proxy"),
            ("log-format = \"xml\"\n", "log-format"),
        ] {
            let config = file(text);
            let path = config.path().to_str().unwrap();
            let error = message(serve(&["serve", "--config", path]));
            assert!(error.starts_with(&format!("{path}: {key}: ")), "{text}: {error}");
        }
        let config = file("insecure-plaintext = \"yes\"\n");
        let path = config.path().to_str().unwrap();
        let error = message(try_load_from::<AgentCli, _, _>([
            "fleetrun-agent",
            "--server",
            "https://a",
            "--config",
            path,
        ]));
        assert!(error.contains("expected true or false"), "{error}");

        let error = message(serve(&["serve", "--config", "/nonexistent/server.toml"]));
        assert!(
            error.contains("cannot read the configuration file /nonexistent/server.toml"),
            "{error}"
        );
        let config = file("listen = \n");
        let error = message(serve(&["serve", "--config", config.path().to_str().unwrap()]));
        assert!(error.contains("is not valid TOML"), "{error}");
    }

    #[test]
    fn backup_reads_the_database_of_the_servers_file_and_ignores_its_other_keys() {
        let config = file("data-dir = \"/srv/fleet\"\nlisten = \"0.0.0.0:9000\"\n");
        let path = config.path().to_str().unwrap();
        let cli = try_load_from::<Cli, _, _>(["fleetrun", "backup", "--config", path, "--to", "/b.db"])
            .unwrap()
            .cli;
        let Mode::Backup(backup) = cli.mode else {
            panic!("not backup")
        };
        assert_eq!(backup.database.data_dir, PathBuf::from("/srv/fleet"));

        let config = file("listn = \"0.0.0.0:9000\"\n");
        let path = config.path().to_str().unwrap();
        let error = message(try_load_from::<Cli, _, _>([
            "fleetrun", "backup", "--config", path, "--to", "/b.db",
        ]));
        assert!(
            error.contains("unknown key `listn`"),
            "a typo in the server's file is still one: {error}"
        );
    }

    #[test]
    fn print_config_says_where_each_value_came_from_and_hides_secrets() {
        let config = file(
            "admin-password = \"hunter2\"\ndatabase-url = \"postgres://fleet:s3cret@db/fleet\"\nretention-days = 9\n",
        );
        let path = config.path().to_str().unwrap();
        let (_, loaded) = serve(&["serve", "--config", path, "--heartbeat-secs", "5", "--print-config"]).unwrap();
        let printed = loaded.print_config("serve");
        assert!(!printed.contains("hunter2") && !printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("admin-password = \"(redacted)\""), "{printed}");
        assert!(printed.contains("postgres://fleet:***@db/fleet"), "{printed}");
        assert!(printed.contains(&format!("retention-days = 9  # {path}")), "{printed}");
        assert!(printed.contains("heartbeat-secs = 5  # --heartbeat-secs"), "{printed}");
        assert!(printed.contains("delivery-window-secs = 60  # default"), "{printed}");
        assert!(printed.contains("log-format = \"text\"  # default"), "{printed}");
        assert!(printed.contains("# tls-cert = (not set)"), "{printed}");
        assert!(!printed.contains("print-config ="), "{printed}");

        // What it prints is a file the server takes (secrets and unset values aside).
        let kept: String = printed
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("(redacted)"))
            .map(|l| format!("{l}\n"))
            .collect();
        let again = file(&kept);
        let (args, _) = serve(&["serve", "--config", again.path().to_str().unwrap()]).unwrap();
        assert_eq!(args.heartbeat_secs, 5);
        assert_eq!(args.retention_days, 9);
    }

    #[test]
    fn the_packaged_example_files_hold_only_keys_the_binaries_take() {
        // Every `# key = value` line of the examples, uncommented, as an operator would.
        let uncommented = |text: &str| -> String {
            text.lines()
                .filter_map(|l| l.strip_prefix("# ").or(Some(l)).filter(|l| !l.starts_with('#')))
                .filter(|l| {
                    l.split_once(" = ")
                        .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                })
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let server = file(&uncommented(include_str!("../../packaging/server.toml")));
        assert!(std::fs::read_to_string(server.path()).unwrap().contains("tls-cert"));
        serve(&["serve", "--config", server.path().to_str().unwrap()]).unwrap();
        let agent = file(&uncommented(include_str!("../../packaging/agent.toml")));
        assert!(std::fs::read_to_string(agent.path()).unwrap().contains("state-dir"));
        try_load_from::<AgentCli, _, _>(["fleetrun-agent", "--config", agent.path().to_str().unwrap()]).unwrap();
    }
}
