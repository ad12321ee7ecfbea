//! Figures, their targets and Salt's, the printed table and `results.json`.

use serde_json::{Map, Value, json};
use std::path::Path;
use std::time::Duration;

/// Median of a sample (the mean of the two middle values for an even count).
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// Percentile by linear interpolation between closest ranks; 0 for an empty sample.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whether a figure must stay under its target or reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    AtMost,
    AtLeast,
    /// Recorded for reference, without a target.
    Recorded,
}

/// One row of the table: a key of `results.json`, its target and Salt's comparable figure.
pub struct Spec {
    pub key: &'static str,
    pub unit: &'static str,
    pub goal: Goal,
    pub target: f64,
    /// Salt 3008's figure for the same work on this machine, and which one it is.
    pub salt: Option<(f64, &'static str)>,
}

/// The targets of issue 10 (issue 5's, raised) and issue 12's (the `pg_` keys: three replicas
/// on one PostgreSQL), in table order, with Salt's figures from `research/bench-salt/RESULTS.md`
/// (medians of 7 runs).
pub const SPECS: &[Spec] = &[
    Spec {
        key: "fanout_virtual_1000_p50_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 150.0,
        salt: None,
    },
    Spec {
        key: "fanout_virtual_10000_p50_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 1500.0,
        salt: None,
    },
    Spec {
        key: "pg_fanout_virtual_1000_p50_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 300.0,
        salt: None,
    },
    Spec {
        key: "pg_fanout_virtual_10000_p50_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 3000.0,
        salt: None,
    },
    Spec {
        key: "connections_10000_server_rss_mb",
        unit: "MB",
        goal: Goal::AtMost,
        target: 300.0,
        salt: None,
    },
    Spec {
        key: "fanout_real_100_p50_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 150.0,
        salt: Some((17858.0, "salt CLI --static, 100 minions")),
    },
    Spec {
        key: "output_real_10x1mb_p50_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 300.0,
        salt: Some((26045.0, "salt CLI --static, 10 minions x 1 MB")),
    },
    Spec {
        key: "send_file_100mb_10_agents_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 5000.0,
        salt: None,
    },
    Spec {
        key: "ingest_single_mb_per_s",
        unit: "MB/s",
        goal: Goal::AtLeast,
        target: 400.0,
        salt: Some((0.35, "salt LocalClient, 1 minion, >100 KB")),
    },
    Spec {
        key: "live_latency_p99_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 50.0,
        salt: None,
    },
    Spec {
        key: "agent_idle_rss_mb",
        unit: "MB",
        goal: Goal::AtMost,
        target: 8.0,
        salt: Some((45.0, "salt-minion main process RSS")),
    },
    Spec {
        key: "agent_binary_mb",
        unit: "MB",
        goal: Goal::AtMost,
        target: 8.0,
        salt: None,
    },
    Spec {
        key: "agent_idle_cpu_pct",
        unit: "%",
        goal: Goal::AtMost,
        target: 0.1,
        salt: Some((0.61, "idle salt-minion, % of one core")),
    },
    Spec {
        key: "console_instances_page_p50_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 50.0,
        salt: None,
    },
    Spec {
        key: "records_page_1m_results_p50_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 50.0,
        salt: None,
    },
    Spec {
        key: "api_invocations_filtered_1m_results_p50_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 50.0,
        salt: None,
    },
    Spec {
        key: "invocation_show_10000_results_p50_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 200.0,
        salt: None,
    },
    Spec {
        key: "console_output_panel_10000_first_row_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 1000.0,
        salt: None,
    },
    Spec {
        key: "live_latency_p99_during_purge_ms",
        unit: "ms",
        goal: Goal::AtMost,
        target: 100.0,
        salt: None,
    },
    Spec {
        key: "db_bytes_per_result",
        unit: "B",
        goal: Goal::Recorded,
        target: 0.0,
        salt: None,
    },
];

/// Figures collected so far, plus details that explain them.
#[derive(Default)]
pub struct Results {
    pub figures: Map<String, Value>,
    pub details: Map<String, Value>,
}

impl Results {
    /// Records a figure, rounded to what the measurement can tell apart.
    pub fn set(&mut self, key: &str, value: f64) {
        let rounded = if value.abs() >= 100.0 {
            value.round()
        } else {
            (value * 10_000.0).round() / 10_000.0
        };
        self.figures.insert(key.into(), json!(rounded));
    }

    /// Records a detail that explains the figures (`details.json`).
    pub fn detail(&mut self, key: &str, value: Value) {
        self.details.insert(key.into(), value);
    }

    /// Writes `results.json` (figures only) and `details.json` next to it.
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, serde_json::to_string_pretty(&self.figures)? + "\n")?;
        let details = out.with_file_name("details.json");
        std::fs::write(details, serde_json::to_string_pretty(&self.details)? + "\n")?;
        Ok(())
    }

    /// The table of every figure against its target and Salt's, as Markdown.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| key | fleetrun | target | met | Salt 3008 (same kind of machine) | Salt / fleetrun |\n|---|---:|---:|:---:|---|---:|\n",
        );
        for spec in SPECS {
            let value = self.figures.get(spec.key).and_then(Value::as_f64);
            let target = match spec.goal {
                Goal::AtMost => format!("≤ {} {}", fmt(spec.target), spec.unit),
                Goal::AtLeast => format!("≥ {} {}", fmt(spec.target), spec.unit),
                Goal::Recorded => "recorded".into(),
            };
            let (shown, met) = match value {
                Some(v) => {
                    let met = match spec.goal {
                        Goal::AtMost => v <= spec.target,
                        Goal::AtLeast => v >= spec.target,
                        Goal::Recorded => true,
                    };
                    let met = match (spec.goal, met) {
                        (Goal::Recorded, _) => "–",
                        (_, true) => "yes",
                        (_, false) => "**no**",
                    };
                    (format!("{} {}", fmt(v), spec.unit), met)
                }
                None => ("not measured".into(), "–"),
            };
            let (salt, ratio) = match (spec.salt, value) {
                (Some((s, what)), Some(v)) if v > 0.0 => {
                    let ratio = match spec.goal {
                        Goal::AtLeast => v / s,
                        Goal::AtMost | Goal::Recorded => s / v,
                    };
                    (format!("{} {} ({what})", fmt(s), spec.unit), format!("{}×", fmt(ratio)))
                }
                (Some((s, what)), _) => (format!("{} {} ({what})", fmt(s), spec.unit), "–".into()),
                (None, _) => ("–".into(), "–".into()),
            };
            out.push_str(&format!(
                "| `{}` | {shown} | {target} | {met} | {salt} | {ratio} |\n",
                spec.key
            ));
        }
        out
    }
}

/// A figure with as many decimals as it needs.
fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else if v >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(percentile(&[1.0; 5], 99.0), 1.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }

    #[test]
    fn the_table_marks_misses() {
        let mut results = Results::default();
        results.set("fanout_virtual_1000_p50_ms", 120.0);
        results.set("ingest_single_mb_per_s", 50.0);
        results.set("pg_fanout_virtual_10000_p50_ms", 3200.0);
        let table = results.table();
        assert!(
            table.contains("| `fanout_virtual_1000_p50_ms` | 120 ms | ≤ 150 ms | yes |"),
            "{table}"
        );
        assert!(
            table.contains("| `pg_fanout_virtual_10000_p50_ms` | 3200 ms | ≤ 3000 ms | **no** |"),
            "{table}"
        );
        assert!(
            table.contains("| `ingest_single_mb_per_s` | 50.0 MB/s | ≥ 400 MB/s | **no** |"),
            "{table}"
        );
        assert!(table.contains("| `agent_idle_rss_mb` | not measured |"), "{table}");
    }
}
