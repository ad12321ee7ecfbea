//! Integration tests: a real server on loopback, real agent processes, real child processes.

mod api;
mod engine;
mod helpers;
mod resilience;
