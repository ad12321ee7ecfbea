//! Integration tests: a real server on loopback, real agent processes, real child processes.

// Test code: a panic is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access_keys;
mod agents;
mod api;
mod browser;
mod cli;
mod console;
mod console_flows;
mod console_http;
mod engine;
mod failover;
mod faults;
mod faults_exec;
mod files;
mod helpers;
mod hostile;
mod install;
mod metrics;
mod netlab;
mod netns;
mod openapi;
mod ops;
mod parity;
mod plans;
mod private;
mod rate;
mod reconnect;
mod replicas;
mod replicas_faults;
mod resilience;
mod security;
mod serving;
mod targeting;
mod throttle;
mod tls;
// The bench's virtual agents (`bench/src/swarm.rs`, also driven by `tests/bench_smoke.rs`), for
// the reconnect storm of `reconnect`.
#[allow(dead_code)]
#[path = "../../bench/src/swarm.rs"]
mod swarm;
