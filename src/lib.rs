//! fleetrun: a self-hosted Cloud Assistant. People send commands to one or many machines
//! ("instances"); an agent on every instance holds one outbound connection to the server,
//! runs what it is sent and streams the output back.
//!
//! A tour of the modules, in the direction dependencies point (`server → dispatch → store`;
//! everything may use `protocol`; `config` depends on nothing; `agent` uses `config`,
//! `protocol`, `files` and `tls`; `client` uses `config`, `protocol` and `tls`):
//!
//! - [`protocol`]: wire types, `CommandSpec`, parameters and the status vocabulary. Serde only, no I/O.
//! - [`store`]: every SQL statement behind one `Store` (SQLite file, WAL).
//! - [`dispatch`]: the domain: every rule, limit, role check and audit write; connected
//!   agents, invocation lifecycle, deadlines, live fan-out.
//! - [`server`]: the HTTP surfaces: console, JSON API, agent endpoints, live streams.
//! - [`agent`]: the program on every instance: enrol, connect, execute, spool.
//! - [`client`]: the API client and the CLI subcommands.
//! - [`tls`]: the TLS client configuration of agent and CLI (`--ca-file`), and advice on refused certificates.
//! - [`demo`]: one command that starts a server and four local agents.
//! - [`backup`]: `fleetrun backup` and `restore` of the SQLite store.
//! - [`logging`]: text or JSON log lines, for both binaries.

pub mod agent;
#[cfg(feature = "server")]
pub mod backup;
#[cfg(feature = "server")]
pub mod client;
pub mod config;
#[cfg(feature = "server")]
pub mod demo;
#[cfg(feature = "server")]
pub mod dispatch;
mod files;
pub mod logging;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
pub mod signal;
#[cfg(feature = "server")]
pub mod store;
pub mod tls;

/// This build's version, reported by agents and shown in the console.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
