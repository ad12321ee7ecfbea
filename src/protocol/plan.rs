//! Execution plans (Alibaba's `RepeatMode` and `Frequency`): the words on the wire, the state of a
//! schedule, and the agent task id of each execution of an invocation.

use super::name_enum;
use serde::{Deserialize, Serialize};

name_enum! {
    /// When an invocation runs (Alibaba's `RepeatMode`, names kept exactly).
    #[derive(Default)]
    pub enum RepeatMode {
        /// At once, one execution (the default without a `frequency`).
        #[default]
        Once,
        /// On a schedule: `rate(…)`, `at(…)` or cron with a time zone, given as `frequency`
        /// (the default when a `frequency` is given).
        Period,
        /// Once, at the first boot of each instance after the invocation is created.
        NextRebootOnly,
        /// At every boot of each instance, until stopped.
        EveryReboot,
        /// Checks everything and reports what would run, without running.
        DryRun,
    }
}

impl RepeatMode {
    /// Whether the invocation runs at boots rather than at times.
    pub fn is_boot(self) -> bool {
        matches!(self, RepeatMode::NextRebootOnly | RepeatMode::EveryReboot)
    }
}

name_enum! {
    /// Where a scheduled invocation's schedule stands (`NULL` in the store for `Once`).
    pub enum ScheduleState {
        /// More executions will start: the invocation is `Scheduled` between them.
        Scheduled,
        /// Stopped by a user: no execution starts again.
        Stopped,
        /// No execution is left to start (`at(…)` ran; every instance ran its next boot).
        Ended,
    }
}

/// The agent's task id for execution `repeats` (1-based) of an invocation: the invoke id itself
/// for the first, `<invoke id>-r<repeats>` for later ones. Each execution needs an id of its
/// own, because the agent's spool, its acknowledgements and the server's exactly-once output
/// are all keyed by task; the first keeps the invoke id, so one-time invocations and agents of
/// before schedules see no change, and the suffix stays within the characters every agent
/// accepts in a task id (`[a-z0-9-]`).
pub fn task_id(invoke_id: &str, repeats: u32) -> String {
    if repeats <= 1 {
        invoke_id.to_string()
    } else {
        format!("{invoke_id}-r{repeats}")
    }
}

/// The invoke id and execution number a task id names (the inverse of [`task_id`]).
pub fn parse_task_id(task: &str) -> (&str, u32) {
    // Invoke ids are `t-` and base32 (no further `-`), so a second `-` starts the suffix.
    if let Some((invoke_id, suffix)) = task.rsplit_once("-r") {
        if invoke_id.matches('-').count() >= 1 && invoke_id.len() > 2 {
            if let Ok(repeats) = suffix.parse::<u32>() {
                if repeats >= 2 && suffix == repeats.to_string() {
                    return (invoke_id, repeats);
                }
            }
        }
    }
    (task, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_execution_keeps_the_invoke_id_and_later_ones_get_a_suffix_that_parses_back() {
        assert_eq!(task_id("t-abc234", 1), "t-abc234");
        assert_eq!(task_id("t-abc234", 3), "t-abc234-r3");
        for (task, expected) in [
            ("t-abc234", ("t-abc234", 1)),
            ("t-abc234-r3", ("t-abc234", 3)),
            ("t-abc234-r12", ("t-abc234", 12)),
            // Not produced by `task_id`: taken whole, so they match no execution.
            ("t-abc234-r1", ("t-abc234-r1", 1)),
            ("t-abc234-r03", ("t-abc234-r03", 1)),
            ("t-r2", ("t-r2", 1)),
        ] {
            assert_eq!(parse_task_id(task), expected, "{task}");
        }
    }

    #[test]
    fn repeat_modes_travel_by_alibabas_names() {
        let modes: Vec<RepeatMode> =
            serde_json::from_str(r#"["Once","Period","NextRebootOnly","EveryReboot","DryRun"]"#).unwrap();
        assert_eq!(modes, RepeatMode::ALL);
    }
}
