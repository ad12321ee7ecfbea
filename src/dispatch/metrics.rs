//! The domain's Prometheus metrics: what the dispatcher counts as it works (results started and
//! ended, invocations started, output bytes in, writer batches, file sends) and the gauges read
//! from its state when `/metrics` is scraped (agents connected, the writer's queue, watchers).
//!
//! Updates on hot paths are single atomic operations: the counters of each status word and
//! trigger are created once, here, and kept, so an increment never looks a label set up. The
//! gauges cost nothing until a scrape, which reads them from the dispatcher's own state. The
//! histogram of batch latency takes one short, uncontended lock per batch (not per report).
//! Knows nothing of HTTP; the server registers these in its registry beside its own.

use crate::protocol::ResultStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// The `status` label: a result's terminal status word (`Success`, `Failed`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

/// The `trigger` label: what started an invocation's execution.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabel {
    pub trigger: &'static str,
}

/// What started an execution of an invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// RunCommand or InvokeCommand, run once now (any surface).
    Run,
    /// A due execution of a `Period` plan.
    Schedule,
    /// A boot plan (`NextRebootOnly`, `EveryReboot`) started by an agent's new boot.
    Boot,
}

impl Trigger {
    const ALL: [Trigger; 3] = [Trigger::Run, Trigger::Schedule, Trigger::Boot];

    fn word(self) -> &'static str {
        match self {
            Trigger::Run => "run",
            Trigger::Schedule => "schedule",
            Trigger::Boot => "boot",
        }
    }
}

/// Every terminal status, in the order of [`ended_index`].
const TERMINAL: [ResultStatus; 8] = [
    ResultStatus::Success,
    ResultStatus::Failed,
    ResultStatus::Error,
    ResultStatus::Timeout,
    ResultStatus::Cancelled,
    ResultStatus::Terminated,
    ResultStatus::Aborted,
    ResultStatus::Invalid,
];

fn ended_index(status: ResultStatus) -> Option<usize> {
    TERMINAL.iter().position(|s| *s == status)
}

/// The dispatcher's metrics. Cheap to clone: every metric is a shared atomic (or, for the
/// histogram, a shared cell).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Results that reached each terminal status, written wherever a status change is published
    /// (`Dispatcher::publish_changes`); one counter per status of [`TERMINAL`].
    results_ended: Family<StatusLabel, Counter>,
    ended: [Counter; TERMINAL.len()],
    /// Results that started running (the agent's `TaskStarted` stored).
    results_started: Counter,
    /// Executions started, by trigger; one counter per [`Trigger`].
    invocations_started: Family<TriggerLabel, Counter>,
    started: [Counter; Trigger::ALL.len()],
    /// Output bytes received from agents (re-sends after a reconnect included).
    output_bytes: Counter,
    /// Seconds the batching writer's store transaction took, per batch.
    writer_batch_seconds: Histogram,
    /// Reports per batch of the batching writer.
    writer_batch_reports: Histogram,
    /// Files sent (Send File), counted when the send is stored.
    file_sends: Counter,
    /// Sampled at each scrape by `Dispatcher::sample_metrics`.
    pub(super) connected_agents: Gauge,
    pub(super) attaching_agents: Gauge,
    pub(super) writer_queue: Gauge,
    pub(super) watchers: Gauge,
    pub(super) replicas: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let results_ended = Family::<StatusLabel, Counter>::default();
        let ended = TERMINAL.map(|status| {
            results_ended.get_or_create_owned(&StatusLabel {
                status: status.as_str(),
            })
        });
        let invocations_started = Family::<TriggerLabel, Counter>::default();
        let started = Trigger::ALL.map(|trigger| {
            invocations_started.get_or_create_owned(&TriggerLabel {
                trigger: trigger.word(),
            })
        });
        Metrics {
            results_ended,
            ended,
            results_started: Counter::default(),
            invocations_started,
            started,
            output_bytes: Counter::default(),
            // 1 ms to about 16 s: a batch of 1,024 reports on a slow disk takes tens of ms.
            writer_batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 1 to 1,024 (MAX_BATCH).
            writer_batch_reports: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            file_sends: Counter::default(),
            connected_agents: Gauge::default(),
            attaching_agents: Gauge::default(),
            writer_queue: Gauge::default(),
            watchers: Gauge::default(),
            replicas: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Adds every metric to `registry` (whose prefix, `fleetrun`, the names get).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "results_ended",
            "Results that reached a terminal status, by status",
            self.results_ended.clone(),
        );
        registry.register(
            "results_started",
            "Results whose command started running on its instance",
            self.results_started.clone(),
        );
        registry.register(
            "invocations_started",
            "Executions of invocations started, by trigger (run: RunCommand or InvokeCommand; \
             schedule: a Period plan's; boot: a boot plan's)",
            self.invocations_started.clone(),
        );
        registry.register_with_unit(
            "agent_output",
            "Command output received from agents (re-sends after a reconnect included)",
            Unit::Bytes,
            self.output_bytes.clone(),
        );
        registry.register_with_unit(
            "writer_batch_duration",
            "Time the batching writer's store transaction took, per batch of agent reports",
            Unit::Seconds,
            self.writer_batch_seconds.clone(),
        );
        registry.register(
            "writer_batch_reports",
            "Agent reports per batch of the batching writer",
            self.writer_batch_reports.clone(),
        );
        registry.register(
            "writer_queue_reports",
            "Agent reports waiting for the batching writer",
            self.writer_queue.clone(),
        );
        registry.register(
            "file_sends",
            "Files sent (Send File), counted when the send is stored",
            self.file_sends.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents connected to this server",
            self.connected_agents.clone(),
        );
        registry.register(
            "agents_attaching",
            "Agents being attached (from their Hello until their pending work is sent)",
            self.attaching_agents.clone(),
        );
        registry.register(
            "replicas_alive",
            "Servers on this database that are alive, this one included (1 on SQLite); \
             one silent for 10 s no longer counts",
            self.replicas.clone(),
        );
        registry.register(
            "live_watchers",
            "Live output streams open on this server (console and API)",
            self.watchers.clone(),
        );
    }

    /// A result's status changed to `status` (and this server made the change).
    pub(super) fn result_changed(&self, status: ResultStatus) {
        if status == ResultStatus::Running {
            self.results_started.inc();
        } else if let Some(i) = ended_index(status) {
            self.ended[i].inc();
        }
    }

    /// An execution started.
    pub(super) fn invocation_started(&self, trigger: Trigger) {
        let i = Trigger::ALL.iter().position(|t| *t == trigger).unwrap_or_default();
        self.started[i].inc();
    }

    /// Output received from an agent.
    pub(super) fn output_received(&self, bytes: usize) {
        self.output_bytes.inc_by(bytes as u64);
    }

    /// The writer stored a batch of `reports` in `took`.
    pub(super) fn writer_batch(&self, reports: usize, took: Duration) {
        self.writer_batch_seconds.observe(took.as_secs_f64());
        self.writer_batch_reports.observe(reports as f64);
    }

    /// A file send was stored.
    pub(super) fn file_sent(&self) {
        self.file_sends.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(metrics: &Metrics) -> String {
        let mut registry = Registry::with_prefix("fleetrun");
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn every_terminal_status_is_exported_from_zero_and_only_terminal_ones_count_as_ended() {
        let metrics = Metrics::default();

        metrics.result_changed(ResultStatus::Running);
        metrics.result_changed(ResultStatus::Success);
        metrics.result_changed(ResultStatus::Success);
        metrics.result_changed(ResultStatus::Stopping);
        metrics.result_changed(ResultStatus::Invalid);
        let text = text(&metrics);

        assert!(
            text.contains("fleetrun_results_ended_total{status=\"Success\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("fleetrun_results_ended_total{status=\"Invalid\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("fleetrun_results_ended_total{status=\"Timeout\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("status=\"Stopping\""), "{text}");
        assert!(!text.contains("status=\"Running\""), "{text}");
        assert!(text.contains("fleetrun_results_started_total 1\n"), "{text}");
        let terminal: Vec<_> = ResultStatus::ALL.iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal.len(), TERMINAL.len(), "every terminal status has its counter");
        assert!(terminal.iter().all(|s| ended_index(**s).is_some()));
    }

    #[test]
    fn triggers_bytes_and_batches_land_in_their_own_metrics() {
        let metrics = Metrics::default();

        metrics.invocation_started(Trigger::Boot);
        metrics.output_received(300);
        metrics.output_received(12);
        metrics.writer_batch(3, Duration::from_millis(4));
        let text = text(&metrics);

        assert!(
            text.contains("fleetrun_invocations_started_total{trigger=\"boot\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("fleetrun_invocations_started_total{trigger=\"run\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("fleetrun_agent_output_bytes_total 312\n"), "{text}");
        assert!(
            text.contains("fleetrun_writer_batch_duration_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("fleetrun_writer_batch_reports_sum 3\n")
                || text.contains("fleetrun_writer_batch_reports_sum 3.0\n"),
            "{text}"
        );
    }
}
