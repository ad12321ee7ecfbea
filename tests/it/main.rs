//! Integration tests: a real server on loopback, real agent processes, real child processes.

mod api;
mod console;
mod engine;
mod helpers;
mod resilience;
