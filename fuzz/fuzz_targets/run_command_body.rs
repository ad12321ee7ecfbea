//! Fuzzes the RunCommand body: `serde_json::from_slice::<RunCommandRequest>` (what the API's
//! JSON extractor does with `POST /api/v1/invocations`) and then `check_run_command`, every
//! check of the request that needs no database (content decoding and size, names, timeout,
//! working directory, username, `{{parameters}}`, the shape of `instance_ids`).
//!
//! Any panic is a bug. Beyond that, a request the checks accept must have the properties the
//! rest of the dispatcher relies on, so those are asserted too; a refusal's message is
//! formatted, as the server does when it answers 400.

#![no_main]

use fleetrun::dispatch::{Settings, check_run_command};
use fleetrun::protocol::api::RunCommandRequest;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::sync::OnceLock;

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(Settings::default)
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<RunCommandRequest>(data) else {
        return;
    };
    let settings = settings();
    let ids = req.instance_ids.clone();
    let timeout = req.spec.timeout_secs;
    let params_given = !req.parameters.is_empty();
    let enabled = req.spec.enable_parameter;

    match check_run_command(req, settings) {
        Ok(_run) => {
            assert!(!ids.is_empty(), "accepted with no instance ids");
            assert!(ids.len() <= settings.max_instances, "accepted over the instance limit");
            let mut seen = HashSet::new();
            assert!(ids.iter().all(|id| seen.insert(id)), "accepted duplicate instance ids");
            assert!((1..=7 * 24 * 3600).contains(&timeout), "accepted timeout {timeout}");
            assert!(enabled || !params_given, "accepted parameters while they are disabled");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty(), "refusal without a message: {e:?}");
        }
    }
});
