//! The status model of DESIGN.md §3: per-instance result statuses, the overall invocation
//! status derived from them, and the rule for how a finished task ends.

use super::{ErrorCode, ScheduleState, name_enum};
use serde::{Deserialize, Serialize};

name_enum! {
    /// Status of one instance's result within an invocation.
    pub enum ResultStatus {
        /// Being checked or delivered.
        Pending,
        /// The type or parameters are unusable on this instance.
        Invalid,
        /// Could not be delivered within the delivery window.
        Aborted,
        Running,
        /// Exit code 0.
        Success,
        /// Exit code other than 0.
        Failed,
        /// Could not start or run (bad directory, unknown user, exec failure, agent lost).
        Error,
        Timeout,
        /// Stopped before it started.
        Cancelled,
        Stopping,
        /// Stopped while running.
        Terminated,
    }
}

impl ResultStatus {
    /// A terminal status never changes again.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ResultStatus::Pending | ResultStatus::Running | ResultStatus::Stopping
        )
    }

    /// The statuses that are not terminal, for queries.
    pub const ACTIVE: &'static [ResultStatus] = &[ResultStatus::Pending, ResultStatus::Running, ResultStatus::Stopping];

    /// The group the overall-status rules count this status in.
    pub fn group(self) -> Group {
        match self {
            ResultStatus::Pending => Group::Pending,
            ResultStatus::Running => Group::Running,
            ResultStatus::Stopping => Group::Stopping,
            ResultStatus::Success => Group::Success,
            ResultStatus::Invalid
            | ResultStatus::Aborted
            | ResultStatus::Failed
            | ResultStatus::Error
            | ResultStatus::Timeout => Group::Failure,
            ResultStatus::Cancelled | ResultStatus::Terminated => Group::Stopped,
        }
    }
}

/// How the overall-status rules group result statuses (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Pending,
    Running,
    Stopping,
    Success,
    /// Invalid, Aborted, Failed, Error, Timeout.
    Failure,
    /// Cancelled, Terminated.
    Stopped,
}

name_enum! {
    /// Overall status of an invocation, always derived from its results (and, for a scheduled
    /// one, from where its schedule stands), never stored.
    pub enum InvocationStatus {
        Pending,
        /// Nothing waiting or running, and more executions to come (Alibaba's word).
        Scheduled,
        Running,
        Stopping,
        Success,
        Failed,
        Stopped,
        PartialFailed,
    }
}

impl InvocationStatus {
    /// The overall status rules, in precedence order (DESIGN.md §3): the first rule whose
    /// groups all have at least one result wins; an invocation without results is `Pending`.
    /// `from_counts` evaluates them in Rust and the store turns the same table into SQL, so
    /// listings filter by overall status in the database.
    pub const RULES: &'static [(InvocationStatus, &'static [Group])] = &[
        (InvocationStatus::Pending, &[Group::Pending]),
        (InvocationStatus::Running, &[Group::Running]),
        (InvocationStatus::Stopping, &[Group::Stopping]),
        (InvocationStatus::PartialFailed, &[Group::Success, Group::Failure]),
        (InvocationStatus::Success, &[Group::Success]),
        (InvocationStatus::Failed, &[Group::Failure]),
        (InvocationStatus::Stopped, &[Group::Stopped]),
    ];

    /// Derives the overall status from per-status result counts.
    pub fn from_counts<I>(counts: I) -> Self
    where
        I: IntoIterator<Item = (ResultStatus, u64)>,
    {
        let present: Vec<Group> = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(status, _)| status.group())
            .collect();
        InvocationStatus::RULES
            .iter()
            .find(|(_, needs)| needs.iter().all(|g| present.contains(g)))
            .map_or(InvocationStatus::Pending, |(status, _)| *status)
    }

    /// The overall status of an invocation with a plan: the counts' `Pending`, `Running` and
    /// `Stopping` first; then `Scheduled` while the schedule has executions to come, `Stopped`
    /// once a user stopped it; then the terminal rules over the results of every execution.
    /// Migration 0015 writes the same rules in SQL (a store test checks that they agree).
    pub fn of<I>(counts: I, schedule: Option<ScheduleState>) -> Self
    where
        I: IntoIterator<Item = (ResultStatus, u64)>,
    {
        let counts: Vec<(ResultStatus, u64)> = counts.into_iter().filter(|(_, n)| *n > 0).collect();
        let busy = counts.iter().any(|(s, _)| !s.is_terminal());
        match schedule {
            Some(ScheduleState::Scheduled) if !busy => InvocationStatus::Scheduled,
            Some(ScheduleState::Stopped) if !busy => InvocationStatus::Stopped,
            _ => InvocationStatus::from_counts(counts),
        }
    }

    /// Whether nothing of the invocation waits or runs now: its results are all terminal (a
    /// scheduled invocation is so between its executions). Live streams end here.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            InvocationStatus::Pending | InvocationStatus::Running | InvocationStatus::Stopping
        )
    }
}

/// How the agent says a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskEnd {
    /// The process exited by itself (or was killed by a signal nobody on our side sent).
    Exited,
    /// The agent killed the process tree because the timeout passed.
    TimedOut,
    /// The agent killed the process tree, or never started it, because of a stop request.
    Stopped,
    /// The task could not be started or run.
    Error { error_code: ErrorCode, error_info: String },
}

impl TaskEnd {
    /// The status and error code a result moves to when its task ends this way, given the
    /// result's current status. `None` when the result is already terminal: first word wins.
    pub fn outcome(&self, current: ResultStatus, exit_code: Option<i32>) -> Option<(ResultStatus, Option<ErrorCode>)> {
        if current.is_terminal() {
            return None;
        }
        Some(match self {
            // A user's stop: `Terminated`, with no error code (Alibaba's wording), whether the
            // process died of the signal or handled it and exited.
            TaskEnd::Exited if current == ResultStatus::Stopping => (ResultStatus::Terminated, None),
            TaskEnd::Exited if exit_code == Some(0) => (ResultStatus::Success, None),
            TaskEnd::Exited => (ResultStatus::Failed, Some(ErrorCode::ExitCodeNonzero)),
            TaskEnd::TimedOut => (ResultStatus::Timeout, Some(ErrorCode::ExecutionTimeout)),
            TaskEnd::Stopped if current == ResultStatus::Pending => (ResultStatus::Cancelled, None),
            TaskEnd::Stopped => (ResultStatus::Terminated, None),
            TaskEnd::Error {
                error_code: ErrorCode::CommandNotApplicable,
                ..
            } => (ResultStatus::Invalid, Some(ErrorCode::CommandNotApplicable)),
            // The agent read the task after its delivery deadline and refused it: never run.
            TaskEnd::Error {
                error_code: ErrorCode::DeliveryTimeout,
                ..
            } if current == ResultStatus::Pending => (ResultStatus::Aborted, Some(ErrorCode::DeliveryTimeout)),
            TaskEnd::Error { error_code, .. } => (ResultStatus::Error, Some(*error_code)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResultStatus::*;

    fn overall(statuses: &[ResultStatus]) -> InvocationStatus {
        InvocationStatus::from_counts(statuses.iter().map(|s| (*s, 1)))
    }

    #[test]
    fn overall_status_follows_the_documented_precedence() {
        assert_eq!(overall(&[Success, Pending, Running]), InvocationStatus::Pending);
        assert_eq!(overall(&[Success, Running, Stopping]), InvocationStatus::Running);
        assert_eq!(overall(&[Terminated, Stopping]), InvocationStatus::Stopping);
        assert_eq!(overall(&[Success, Success]), InvocationStatus::Success);
        assert_eq!(overall(&[Success, Cancelled]), InvocationStatus::Success);
        assert_eq!(overall(&[Failed, Timeout, Aborted]), InvocationStatus::Failed);
        assert_eq!(overall(&[Failed, Terminated]), InvocationStatus::Failed);
        assert_eq!(overall(&[Cancelled, Terminated]), InvocationStatus::Stopped);
        assert_eq!(overall(&[Success, Failed]), InvocationStatus::PartialFailed);
        assert_eq!(overall(&[Success, Invalid, Cancelled]), InvocationStatus::PartialFailed);
    }

    #[test]
    fn a_schedule_is_scheduled_between_executions_and_stopped_once_stopped() {
        use ScheduleState as S;
        let of = |statuses: &[ResultStatus], schedule| InvocationStatus::of(statuses.iter().map(|s| (*s, 1)), schedule);
        assert_eq!(
            of(&[], Some(S::Scheduled)),
            InvocationStatus::Scheduled,
            "before its first run"
        );
        assert_eq!(of(&[Success, Failed], Some(S::Scheduled)), InvocationStatus::Scheduled);
        assert_eq!(of(&[Success, Running], Some(S::Scheduled)), InvocationStatus::Running);
        assert_eq!(of(&[Success, Pending], Some(S::Scheduled)), InvocationStatus::Pending);
        assert_eq!(of(&[Success], Some(S::Stopped)), InvocationStatus::Stopped);
        assert_eq!(of(&[Success, Stopping], Some(S::Stopped)), InvocationStatus::Stopping);
        assert_eq!(of(&[Success, Failed], Some(S::Ended)), InvocationStatus::PartialFailed);
        assert_eq!(of(&[Success], None), InvocationStatus::Success);
    }

    #[test]
    fn a_finished_task_maps_to_the_documented_result_status() {
        let exited = TaskEnd::Exited;
        assert_eq!(exited.outcome(Running, Some(0)), Some((Success, None)));
        assert_eq!(
            exited.outcome(Running, Some(3)),
            Some((Failed, Some(ErrorCode::ExitCodeNonzero)))
        );
        assert_eq!(TaskEnd::Stopped.outcome(Pending, None), Some((Cancelled, None)));
        let refused = TaskEnd::Error {
            error_code: ErrorCode::DeliveryTimeout,
            error_info: "read after its delivery deadline".into(),
        };
        assert_eq!(
            refused.outcome(Pending, None),
            Some((Aborted, Some(ErrorCode::DeliveryTimeout))),
            "a task the agent refused never ran: it could not be delivered"
        );
        assert_eq!(TaskEnd::Stopped.outcome(Stopping, Some(143)), Some((Terminated, None)));
        assert_eq!(
            exited.outcome(Stopping, Some(5)),
            Some((Terminated, None)),
            "a command that traps TERM and exits was still stopped by its user"
        );
        assert_eq!(
            TaskEnd::TimedOut.outcome(Running, None),
            Some((Timeout, Some(ErrorCode::ExecutionTimeout)))
        );
        assert_eq!(
            exited.outcome(Cancelled, Some(0)),
            None,
            "terminal statuses never change"
        );
    }
}
