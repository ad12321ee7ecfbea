//! Command-line options, one clap struct per mode. Every option can also be set by an
//! environment variable `FLEETRUN_*`.

//!
//! This module depends on nothing else of fleetrun: modes take their struct from here, and
//! turn it into their own settings (`server::settings`, for instance).

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

mod file;
pub use file::{Error as LoadError, Loaded, load, try_load_from};

/// fleetrun: send commands to a fleet of machines and watch their output live.
#[derive(Debug, Parser)]
#[command(name = "fleetrun", version, about, long_about = None)]
pub struct Cli {
    /// Log filter, e.g. `info` or `fleetrun=debug`.
    #[arg(long, global = true, env = "FLEETRUN_LOG", default_value = "info")]
    pub log: String,
    /// Log lines as text, or as one JSON object a line (for a log shipper).
    #[arg(long, global = true, env = "FLEETRUN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub mode: Mode,
}

/// fleetrun-agent: the Cloud Assistant client. Enrols once with an activation, then holds one
/// outbound connection to the fleetrun server and runs the commands it is sent.
///
/// Without a subcommand it runs in the foreground (under a supervisor, or as the service that
/// `install` sets up); the subcommands manage that systemd service.
#[derive(Debug, Parser)]
#[command(
    name = "fleetrun-agent",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct AgentCli {
    /// Log filter, e.g. `info` or `fleetrun=debug`.
    #[arg(long, global = true, env = "FLEETRUN_LOG", default_value = "info")]
    pub log: String,
    /// Log lines as text, or as one JSON object a line (for a log shipper).
    #[arg(long, global = true, env = "FLEETRUN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

/// The agent's service lifecycle (systemd), as Alibaba's client and amazon-ssm-agent offer it.
// One value, parsed once at start: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Enrol this machine, then install the agent as a systemd service, enabled and started.
    Install(InstallArgs),
    /// Start the agent's service.
    Start(UnitArgs),
    /// Stop the agent's service (commands it started in the background keep running).
    Stop(UnitArgs),
    /// Restart the agent's service.
    Restart(UnitArgs),
    /// Show the state of the agent's service.
    Status(UnitArgs),
    /// Stop and disable the agent's service and remove its unit; --purge removes its state too.
    Uninstall(UninstallArgs),
}

#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// The agent's options: the service runs with those given here (by flag or environment),
    /// except the enrolment's (activation, name, tags); a --ca-file is copied into the state
    /// directory.
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Enrol and prepare the state directory only, without a service: prints the command line
    /// that runs the agent, for another supervisor.
    #[arg(long, env = "FLEETRUN_NO_SERVICE")]
    pub no_service: bool,
    #[command(flatten)]
    pub unit: UnitArgs,
}

/// Where the service's unit is, and how to tell that systemd runs (overridable for tests).
#[derive(Debug, Clone, Args)]
pub struct UnitArgs {
    /// Directory of the unit file `fleetrun-agent.service`.
    #[arg(long, env = "FLEETRUN_UNIT_DIR", default_value = "/etc/systemd/system", hide = true)]
    pub unit_dir: PathBuf,
    /// The directory that exists only while systemd runs the machine (sd_booted(3)).
    #[arg(
        long,
        env = "FLEETRUN_SYSTEMD_RUN_DIR",
        default_value = "/run/systemd/system",
        hide = true
    )]
    pub systemd_run_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    /// Also remove the state directory: the instance credential and unsent output. The instance
    /// stays registered on the server until it is deregistered there. (No environment variable:
    /// deleting takes a flag typed on purpose.)
    #[arg(long)]
    pub purge: bool,
    /// The state directory to purge (default: the one the installed unit names, else
    /// /var/lib/fleetrun-agent).
    #[arg(long, env = "FLEETRUN_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub unit: UnitArgs,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Run the server: console, API and the endpoint agents connect to.
    Serve(ServeArgs),
    /// Run the agent on an instance: enrol once, then hold one connection to the server.
    Agent(AgentArgs),
    /// Start a server and four local agents in two regions, to try fleetrun on one machine.
    Demo(DemoArgs),
    /// Run a shell command on instances and print their output (client).
    Run(RunArgs),
    /// List instances (client).
    Instances(InstancesArgs),
    /// List invocations, or show one (client).
    Invocations(InvocationsArgs),
    /// Stop an invocation (client).
    Stop(StopArgs),
    /// Send a file to instances and wait for each one's result (client).
    SendFile(SendFileArgs),
    /// Copy the SQLite database to a file while the server runs (for PostgreSQL: pg_dump).
    Backup(BackupArgs),
    /// Put a backup in place of the SQLite database, keeping the old one aside; the server
    /// must be stopped.
    Restore(RestoreArgs),
}

/// How log lines are written (on standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line: timestamp, level, target, fields.
    Json,
}

/// A secret option value; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML file of settings (keys: the long options, e.g. `data-dir = "/var/lib/fleetrun"`);
    /// flags and FLEETRUN_* variables override it.
    #[arg(long, env = "FLEETRUN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the merged settings (flags, environment, --config file, defaults) as TOML, secrets
    /// redacted, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Address to listen on.
    #[arg(long, env = "FLEETRUN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the database and the initial admin password.
    #[arg(long, env = "FLEETRUN_DATA_DIR", default_value = "./fleetrun-data")]
    pub data_dir: PathBuf,
    /// PEM certificate chain: serve HTTPS (and WSS to agents) with it. Needs --tls-key.
    #[arg(long, env = "FLEETRUN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FLEETRUN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The agent binary handed out at /download/fleetrun-agent for the one-line install
    /// (/install.sh). Default: `fleetrun-agent` next to this server's executable.
    #[arg(long, env = "FLEETRUN_AGENT_BINARY", value_name = "PATH")]
    pub agent_binary: Option<PathBuf>,
    /// Database URL; defaults to the SQLite file `<data-dir>/fleetrun.db`.
    #[arg(long, env = "FLEETRUN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Password for the `admin` account created on first start (generated when not given).
    #[arg(long, env = "FLEETRUN_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,
    /// File of the 32-byte key that seals AccessKey secrets in the database; created (mode
    /// 0600) when absent. Defaults to `<data-dir>/secret.key`. Replicas sharing a PostgreSQL
    /// database must all use the same file, and backups must include it.
    #[arg(long, env = "FLEETRUN_SECRET_KEY_FILE", value_name = "PATH")]
    pub secret_key_file: Option<PathBuf>,
    /// Heartbeat interval, in seconds; an agent is lost after three missed.
    #[arg(long, env = "FLEETRUN_HEARTBEAT_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,
    /// How long a command waits for an offline instance before it is Aborted, in seconds.
    #[arg(long, env = "FLEETRUN_DELIVERY_WINDOW_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub delivery_window_secs: u64,
    /// Time past a command's timeout before the server itself declares Timeout, in seconds.
    #[arg(long, env = "FLEETRUN_TIMEOUT_GRACE_SECS", default_value_t = 30)]
    pub timeout_grace_secs: u64,
    /// Output kept per instance, in bytes: the first and the last half of it.
    #[arg(long, env = "FLEETRUN_OUTPUT_LIMIT_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(2..))]
    pub output_limit_bytes: u64,
    /// Largest command content, in bytes after decoding.
    #[arg(long, env = "FLEETRUN_MAX_CONTENT_BYTES", default_value_t = 64 * 1024)]
    pub max_content_bytes: usize,
    /// Largest file Send File takes, in bytes (1 GiB by default). Uploads are staged under
    /// `<data-dir>/files` until every instance has its copy.
    #[arg(long, env = "FLEETRUN_MAX_FILE_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_file_bytes: u64,
    /// Most instances one invocation may target.
    #[arg(long, env = "FLEETRUN_MAX_INSTANCES", default_value_t = 10_000)]
    pub max_instances: usize,
    /// Retained commands allowed per region.
    #[arg(long, env = "FLEETRUN_RETAINED_COMMAND_QUOTA", default_value_t = 500)]
    pub retained_command_quota: u64,
    /// Seconds a client may take to send its request headers or finish a TLS handshake
    /// (slow clients are cut off).
    #[arg(long, env = "FLEETRUN_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_timeout_secs: u64,
    /// Agents per second the server means to take back after a restart: it tells each agent to
    /// spread its first reconnect over (recently seen instances / this rate) seconds, at least 1.
    #[arg(long, env = "FLEETRUN_RECONNECT_RATE", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub reconnect_rate: u64,
    /// Longest reconnect window the server announces to agents, in seconds.
    #[arg(long, env = "FLEETRUN_RECONNECT_WINDOW_MAX_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub reconnect_window_max_secs: u64,
    /// Agents being attached at once (from their Hello until their pending work is settled)
    /// beyond which new agent connections are answered 503 with `Retry-After`.
    #[arg(long, env = "FLEETRUN_MAX_ATTACHING", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_attaching: u64,
    /// Days invocations and their output are kept.
    #[arg(long, env = "FLEETRUN_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub retention_days: u64,
    /// Shortest interval of a schedule (`rate(…)`, and between two cron runs), in seconds.
    /// Alibaba's is 60; a test sets a few seconds so that it need not wait minutes.
    #[arg(long, env = "FLEETRUN_MIN_SCHEDULE_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub min_schedule_interval: u64,
    /// A reverse proxy in front of the server (CIDR such as 10.0.0.0/8, or one address); repeat,
    /// or separate with commas. Requests from these take the client's address from
    /// X-Forwarded-For (login throttling, audit log); from anyone else the header is ignored.
    #[arg(long = "trusted-proxy", value_name = "CIDR", env = "FLEETRUN_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<IpNet>,
    /// Serve Prometheus metrics at /metrics to requests with `Authorization: Bearer <token>`.
    /// Prefer the environment variable or --metrics-token-file: a command-line argument is
    /// visible to every local user in `ps`. Without a token or --metrics-open, /metrics is off.
    #[arg(long, env = "FLEETRUN_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<Secret>,
    /// File holding the metrics token (trailing whitespace is ignored).
    #[arg(long, env = "FLEETRUN_METRICS_TOKEN_FILE", value_name = "PATH")]
    pub metrics_token_file: Option<PathBuf>,
    /// Serve /metrics without a token, to anyone who reaches the listener: for a private network.
    #[arg(long, env = "FLEETRUN_METRICS_OPEN")]
    pub metrics_open: bool,
}

/// A network in CIDR notation, or one address (a /32 or /128). Host bits are cleared.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a network in CIDR notation (e.g. 10.0.0.0/8)"))
}

impl ServeArgs {
    /// The database URL, defaulting to the SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("fleetrun.db").display()))
    }

    /// The key file that seals AccessKey secrets, defaulting to `secret.key` in the data
    /// directory.
    pub fn secret_key_file(&self) -> PathBuf {
        self.secret_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secret.key"))
    }

    /// The SQLite database file that `database_url` names (as `Store::open` reads it), or
    /// `None` for another backend or an in-memory database.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        sqlite_file(&self.database_url())
    }
}

/// The SQLite file a database URL names, or `None` for PostgreSQL or an in-memory database.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    if url.starts_with("postgres") {
        return None;
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// The server's database, for `backup` and `restore`: as `serve` finds it.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// The server's configuration file: its `data-dir` and `database-url` are used (flags and
    /// FLEETRUN_* variables override them).
    #[arg(long, env = "FLEETRUN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The server's data directory.
    #[arg(long, env = "FLEETRUN_DATA_DIR", default_value = "./fleetrun-data")]
    pub data_dir: PathBuf,
    /// The server's database URL; defaults to the SQLite file `<data-dir>/fleetrun.db`.
    #[arg(long, env = "FLEETRUN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    /// The database URL, defaulting to the SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("fleetrun.db").display()))
    }

    /// The SQLite file, or `None` for PostgreSQL (or an in-memory database).
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        sqlite_file(&self.database_url())
    }
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The file to write (mode 0600). It must not exist, unless --force.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The backup to restore (a file `fleetrun backup` wrote).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// TOML file of settings (keys: the long options, e.g. `server = ["https://fleet.example"]`);
    /// flags and FLEETRUN_* variables override it.
    #[arg(long, env = "FLEETRUN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Server URL, e.g. https://fleet.example.com or http://127.0.0.1:8080; several replicas as
    /// a comma-separated list (or --server repeated): the agent holds one connection at a time
    /// and moves to the next URL when its server is gone.
    #[arg(
        long,
        env = "FLEETRUN_SERVER",
        value_name = "URL",
        value_delimiter = ',',
        required = true
    )]
    pub server: Vec<String>,
    /// Activation id, needed only to enrol (the first start with an empty state directory).
    #[arg(long, env = "FLEETRUN_ACTIVATION_ID")]
    pub activation_id: Option<String>,
    /// Activation code, needed only to enrol. Prefer the environment variable or
    /// --activation-code-file: a command-line argument is visible to every local user in `ps`.
    #[arg(long, env = "FLEETRUN_ACTIVATION_CODE", hide_env_values = true)]
    pub activation_code: Option<Secret>,
    /// File holding the activation code (`-` reads standard input); trailing whitespace is ignored.
    #[arg(long, env = "FLEETRUN_ACTIVATION_CODE_FILE")]
    pub activation_code_file: Option<PathBuf>,
    /// Directory for the agent's identity (mode 0600) and its output spool.
    #[arg(long, env = "FLEETRUN_STATE_DIR", default_value = "/var/lib/fleetrun-agent")]
    pub state_dir: PathBuf,
    /// Instance name shown in the console (defaults to the instance id).
    #[arg(long, env = "FLEETRUN_AGENT_NAME")]
    pub name: Option<String>,
    /// A tag the instance enrols with, `key=value` (or `key` for an empty value); repeat it for
    /// more (at most 20). Used only to enrol: change tags later in the console, the API or the
    /// CLI. From the environment, a comma-separated list.
    #[arg(
        long = "tag",
        env = "FLEETRUN_AGENT_TAGS",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub tags: Vec<String>,
    /// Longest backoff between failed reconnection attempts, in seconds. The first attempt
    /// after losing the server is spread over the window the server announced instead, and a
    /// 503's Retry-After is waited in full.
    #[arg(long, env = "FLEETRUN_RECONNECT_MAX_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reconnect_max_secs: u64,
    /// PEM file of the CA that signed the server's certificate, or of the server's self-signed
    /// certificate, trusted besides the system roots.
    #[arg(long, env = "FLEETRUN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow plain http:// to a server that is not on this machine (credentials and commands
    /// then cross the network unencrypted).
    #[arg(long, env = "FLEETRUN_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// Time between SIGTERM and SIGKILL when a command is stopped or times out, in seconds.
    #[arg(long, env = "FLEETRUN_KILL_GRACE_SECS", default_value_t = 3)]
    pub kill_grace_secs: u64,
    /// Time a command's output may stay open after its shell has exited, in milliseconds. A
    /// process started in the background (`&`) holds it; when the time is up the command ends
    /// with the shell's exit code, the background process keeps running, and what it writes
    /// later is not captured. Keep it well below the server's --timeout-grace-secs.
    #[arg(long, env = "FLEETRUN_OUTPUT_GRACE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub output_grace_ms: u64,
    /// Newest agent protocol version to offer the server: 3 takes Send File; 2 sends output as
    /// binary WebSocket frames; 1 sends every frame as JSON text (for a proxy that mishandles
    /// binary frames). Below 3, file sends to this instance fail with `ClientNeedUpgrade`.
    #[arg(long, env = "FLEETRUN_MAX_PROTOCOL_VERSION", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3))]
    pub max_protocol_version: u32,
    /// The file holding this machine's boot id, reported at each connection: a new one runs the
    /// commands planned for the next boot or every boot. Change it only to test those plans.
    #[arg(
        long,
        env = "FLEETRUN_BOOT_ID_FILE",
        default_value = "/proc/sys/kernel/random/boot_id"
    )]
    pub boot_id_file: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, env = "FLEETRUN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the database, the agents' state and the initial admin password.
    #[arg(long, env = "FLEETRUN_DATA_DIR", default_value = "./fleetrun-data")]
    pub data_dir: PathBuf,
    /// Password for the `admin` account created on first start (generated when not given).
    #[arg(long, env = "FLEETRUN_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,
}

/// Where the server is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Server URL.
    #[arg(long, env = "FLEETRUN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API token (preferred over username and password).
    #[arg(long, env = "FLEETRUN_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// Username for HTTP Basic, used with --password when no token is given.
    #[arg(long, env = "FLEETRUN_USER", default_value = "admin")]
    pub user: String,
    /// Password for HTTP Basic; prefer the environment variable, as other users of the
    /// machine can read a command line.
    #[arg(long, env = "FLEETRUN_PASSWORD", hide_env_values = true)]
    pub password: Option<Secret>,
    /// PEM file of the CA that signed the server's certificate, or of the server's self-signed
    /// certificate, trusted besides the system roots.
    #[arg(long, env = "FLEETRUN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Instance ids, comma-separated (or --all, or --tag).
    #[arg(
        long,
        short = 'i',
        value_delimiter = ',',
        required_unless_present_any = ["all", "tags"],
        conflicts_with = "all"
    )]
    pub instances: Vec<String>,
    /// Run on every instance of the region whose agent is online and whose status is Running.
    #[arg(long)]
    pub all: bool,
    /// Also run on every instance of --region having all these tags, `key=value`; repeat for
    /// each tag. The server resolves them when the run starts and records them.
    #[arg(long = "tag", value_name = "KEY=VALUE", conflicts_with = "all")]
    pub tags: Vec<String>,
    /// The region for --all and --tag (needed with --tag, and with --all when there is more than
    /// one region); with -i, every instance named must be in it.
    #[arg(long)]
    pub region: Option<String>,
    /// Idempotency token (at most 64 printable ASCII characters): running again with the same
    /// token within a day answers the first invocation and runs nothing.
    #[arg(long)]
    pub client_token: Option<String>,
    /// Check everything (instances, their agents, the type, parameters) and print what would
    /// run, without running anything; exit code 0 only if every instance would run now.
    #[arg(long, conflicts_with = "no_wait")]
    pub dry_run: bool,
    /// Command type.
    #[arg(long = "type", default_value = "RunShellScript", value_parser = ["RunShellScript", "RunBatScript", "RunPowerShellScript"])]
    pub command_type: String,
    /// Seconds the command may run before it is killed and ends as Timeout.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Absolute directory to run the command in (default: the user's home directory).
    #[arg(long)]
    pub working_dir: Option<String>,
    /// User to run the command as (default: the user the agent runs as).
    #[arg(long)]
    pub username: Option<String>,
    /// A value for a {{name}} placeholder, as name=value; repeat for each parameter.
    ///
    /// Parameters are on whenever the content has a placeholder, so built-ins such as
    /// {{fleetrun::instance_name}} need no --param.
    #[arg(long = "param", value_parser = parse_param, conflicts_with = "no_parameters")]
    pub params: Vec<(String, String)>,
    /// Send the content exactly as written, leaving {{…}} placeholders alone.
    #[arg(long)]
    pub no_parameters: bool,
    /// How many instances run at once: a count (5) or a percentage of the instances (10%).
    /// The others wait as Pending and start as these finish. Default: all at once.
    #[arg(long, value_name = "N|N%")]
    pub max_concurrency: Option<String>,
    /// Once more instances than this have failed (a count, or a percentage), the ones not
    /// started end Cancelled (ExceedMaxErrors); running ones finish. Exact with
    /// --max-concurrency 1. Default: no limit.
    #[arg(long, value_name = "N|N%")]
    pub max_errors: Option<String>,
    /// When it runs: Once (at once, the default), Period (on the --frequency schedule),
    /// NextRebootOnly (at each instance's next boot) or EveryReboot (at every boot, until
    /// stopped). A planned run prints the invoke id and returns.
    #[arg(long, value_parser = ["Once", "Period", "NextRebootOnly", "EveryReboot"])]
    pub repeat_mode: Option<String>,
    /// The schedule (implies --repeat-mode Period): rate(5m), at(2026-12-01 10:00:00 Asia/Shanghai),
    /// or a cron expression of 6 or 7 fields, seconds first, and a time zone ('0 */10 * * * ? UTC').
    #[arg(long)]
    pub frequency: Option<String>,
    /// Return after printing the invoke id instead of waiting for the output.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the finished invocation (results and output) as JSON on stdout, and nothing
    /// else there; live output and notes go to stderr.
    #[arg(long)]
    pub json: bool,
    /// The command content.
    pub content: String,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| "expected name=value".to_string())
}

#[derive(Debug, Clone, Args)]
pub struct InstancesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only the instances of this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Only the instances with this tag, `key` or `key=value`; repeat for several (all must
    /// match). With --set-tags: the tags to set.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Replace this instance's tags with the --tag values given (none clears them).
    #[arg(long, value_name = "INSTANCE_ID")]
    pub set_tags: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct InvocationsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Show this invocation with its results.
    pub invoke_id: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The invocation to stop (t-…).
    pub invoke_id: String,
    /// Only these instances (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub instances: Option<Vec<String>>,
}

#[derive(Debug, Clone, Args)]
pub struct SendFileArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Instance ids, comma-separated.
    #[arg(long, short = 'i', value_delimiter = ',', required = true)]
    pub instances: Vec<String>,
    /// Absolute directory on the instances to put the file in (created when missing).
    #[arg(long)]
    pub dir: String,
    /// The file's name there (default: the local file's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Permission bits, in octal.
    #[arg(long, default_value = "0644")]
    pub mode: String,
    /// Owner on the instances (default: the user the agent runs as).
    #[arg(long)]
    pub owner: Option<String>,
    /// Group on the instances (default: the owner's).
    #[arg(long)]
    pub group: Option<String>,
    /// Replace a file already there (without it, such an instance ends Failed/FileAlreadyExists).
    #[arg(long)]
    pub overwrite: bool,
    /// Seconds the whole send may take (at least 10).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Return after printing the send id instead of waiting for the results.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the finished send (with its results) as JSON.
    #[arg(long)]
    pub json: bool,
    /// The local file to send.
    pub file: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_file_is_the_path_in_the_database_url() {
        let serve = |extra: &[&str]| {
            let mut args = vec!["fleetrun", "serve", "--data-dir", "/srv/fleet"];
            args.extend(extra);
            let Mode::Serve(serve) = Cli::parse_from(args).mode else {
                panic!("not serve")
            };
            serve.sqlite_file()
        };

        assert_eq!(serve(&[]), Some(PathBuf::from("/srv/fleet/fleetrun.db")));
        assert_eq!(
            serve(&["--database-url", "sqlite:///db/f.db"]),
            Some(PathBuf::from("/db/f.db"))
        );
        assert_eq!(serve(&["--database-url", "sqlite::memory:"]), None);
        assert_eq!(serve(&["--database-url", "postgres://db/fleet"]), None);
    }

    #[test]
    fn the_secret_key_file_defaults_to_the_data_directory() {
        let key_file = |extra: &[&str]| {
            let args = [&["fleetrun", "serve", "--data-dir", "/srv/fleet"], extra].concat();
            let Mode::Serve(serve) = Cli::parse_from(args).mode else {
                panic!("not serve")
            };
            serve.secret_key_file()
        };

        assert_eq!(key_file(&[]), PathBuf::from("/srv/fleet/secret.key"));
        assert_eq!(
            key_file(&["--secret-key-file", "/etc/fleetrun/secret.key"]),
            PathBuf::from("/etc/fleetrun/secret.key")
        );
    }

    #[test]
    fn trusted_proxies_are_networks_or_addresses_repeated_or_comma_separated() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["fleetrun", "serve"], args].concat()).map(|cli| match cli.mode {
                Mode::Serve(serve) => serve.trusted_proxies,
                _ => panic!("not serve"),
            })
        };
        let nets = |list: &[&str]| list.iter().map(|n| n.parse::<IpNet>().unwrap()).collect::<Vec<_>>();

        assert_eq!(parse(&[]).unwrap(), nets(&[]));
        assert_eq!(
            parse(&["--trusted-proxy", "10.1.2.3/8", "--trusted-proxy", "192.0.2.7"]).unwrap(),
            nets(&["10.0.0.0/8", "192.0.2.7/32"])
        );
        assert_eq!(
            parse(&["--trusted-proxy", "fd00::/8,::1"]).unwrap(),
            nets(&["fd00::/8", "::1/128"])
        );
        assert!(parse(&["--trusted-proxy", "proxy.example"]).is_err());
        assert!(parse(&["--trusted-proxy", "10.0.0.0/33"]).is_err());
    }

    #[test]
    fn the_agent_takes_one_server_url_or_several_comma_separated_or_repeated() {
        let parse =
            |args: &[&str]| AgentCli::try_parse_from([&["fleetrun-agent"], args].concat()).map(|cli| cli.agent.server);

        assert_eq!(parse(&["--server", "https://a"]).unwrap(), ["https://a"]);
        assert_eq!(
            parse(&["--server", "https://a,https://b:8443"]).unwrap(),
            ["https://a", "https://b:8443"]
        );
        assert_eq!(
            parse(&["--server", "https://a", "--server", "https://b,https://c"]).unwrap(),
            ["https://a", "https://b", "https://c"]
        );
        assert_eq!(
            parse(&["--server", "https://a,,https://b"]).unwrap(),
            ["https://a", "", "https://b"],
            "an empty entry is kept, for the agent to name it"
        );
        assert!(parse(&[]).is_err(), "a server is required");
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }

    #[test]
    fn every_client_option_has_help() {
        use clap::CommandFactory as _;
        let cli = Cli::command();

        for name in ["run", "instances", "invocations", "stop"] {
            let Some(command) = cli.find_subcommand(name) else {
                panic!("no subcommand {name}");
            };
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{name} --{id} has no help text");
            }
        }
    }

    #[test]
    fn run_takes_instances_or_all_or_tags() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["fleetrun", "run"], args].concat());

        assert!(parse(&["-i", "i-1", "true"]).is_ok());
        assert!(parse(&["--all", "--region", "r", "true"]).is_ok());
        assert!(parse(&["--tag", "env=prod", "--region", "r", "true"]).is_ok());
        assert!(parse(&["-i", "i-1", "--tag", "env=prod", "--region", "r", "true"]).is_ok());
        // A region scopes the instances named, as RunCommand's `region_id` does.
        assert!(parse(&["-i", "i-1", "--region", "r", "true"]).is_ok());
        assert!(parse(&["-i", "i-1", "--all", "true"]).is_err());
        assert!(parse(&["--all", "--tag", "env=prod", "true"]).is_err());
        assert!(parse(&["true"]).is_err());
        assert!(parse(&["--region", "r", "true"]).is_err());
        assert!(parse(&["-i", "i-1", "--param", "a=b", "--no-parameters", "true"]).is_err());
    }
}
