//! Pipeline counters and the alert-latency histogram, rendered as Prometheus text.
//!
//! Every stage increments these lock-free counters; `GET /metrics` renders them and the
//! end-of-run summary reads them. Labels never carry patient ids or names: only priority,
//! rule family and reason.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use vitalwatch_connectors::source::SourceCounters;
use vitalwatch_connectors::source::kafka::KafkaMetrics;
use vitalwatch_core::alert::Priority;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one value, in microseconds.
    pub fn observe(&self, us: u64) {
        let secs = us as f64 / 1e6;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Its samples as Prometheus lines of `name` (seconds) with `labels` (`""` or
    /// `key="value",`).
    fn render(&self, s: &mut String, name: &str, labels: &str) {
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}_bucket{{{labels}le=\"{b}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(s, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let labels = labels.trim_end_matches(',');
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(
            s,
            "{name}_sum{} {}",
            braces(labels),
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "{name}_count{} {count}", braces(labels));
    }
}

/// One notifier's counters (`GET /metrics`, label `notifier`).
#[derive(Debug, Default)]
pub struct NotifierStats {
    /// The last outbox sequence number delivered (or given up).
    pub delivered_seq: AtomicU64,
    /// Events delivered.
    pub delivered: AtomicU64,
    /// Events given up on (permanent errors).
    pub failed: AtomicU64,
    /// Attempts that failed transiently and were retried.
    pub retries: AtomicU64,
    /// Observation time → delivery confirmed.
    pub latency: Histogram,
}

/// All counters of one pipeline.
#[derive(Debug, Default)]
pub struct Metrics {
    /// What sources count through their handle: records received, dead letters,
    /// checkpoints.
    pub sources: Arc<SourceCounters>,
    /// Observation sets that passed decoding and validation.
    pub observations: AtomicU64,
    /// Readings (one vital each) in those observations.
    pub readings: AtomicU64,
    /// Readings reported as unclassified (unknown patient, no band).
    pub unclassified: AtomicU64,
    /// Readings older than their device's newest by more than `time.lateness`: archived,
    /// not evaluated.
    pub late_readings: AtomicU64,
    /// Alerts triggered (new episodes), by priority low/medium/high.
    pub alerts_triggered: [AtomicU64; 3],
    /// All alert events delivered to the outputs (triggered, renotified, ...).
    pub alert_events: AtomicU64,
    /// Alert events skipped because the catalog had already recorded them (replays).
    pub alert_events_replayed: AtomicU64,
    /// Errors writing alerts to the catalog or the alert log.
    pub alert_output_errors: AtomicU64,
    /// Rows written to the warehouse.
    pub archived_rows: AtomicU64,
    /// Errors writing the warehouse.
    pub archive_errors: AtomicU64,
    /// Outbox entries delivered by notifiers (each notifier counts its own).
    pub notifications_delivered: AtomicU64,
    /// Delivery attempts that failed and will be retried.
    pub notification_retries: AtomicU64,
    /// Outbox entries a notifier gave up on (permanent errors).
    pub notifications_failed: AtomicU64,
    /// The newest outbox sequence number recorded.
    pub outbox_head: AtomicU64,
    /// The threshold table version the engine applies.
    pub threshold_version: AtomicU64,
    /// Reference data reloaded from the catalog while running.
    pub reference_reloads: AtomicU64,
    /// Alert events of other (dead) replicas this one delivered to external notifiers.
    pub outbox_adopted: AtomicU64,
    /// Times this replica found its own outbox lease taken (it stalled past the lease).
    pub outbox_lease_lost: AtomicU64,
    /// Alert events held back from an external notifier by a silence.
    pub notifications_silenced: AtomicU64,
    /// Alert events no notifier (nor the fallback) could deliver: the technical alarm.
    pub alerts_undeliverable: AtomicU64,
    /// Each notifier's counters, by name.
    notifiers: Mutex<Vec<(String, Arc<NotifierStats>)>>,
    /// Observation time → alert event recorded.
    latency: Histogram,
    /// Each Kafka source's own counters (consumed, lag per partition, commits).
    kafka: Mutex<Vec<Arc<KafkaMetrics>>>,
    /// When set, every latency sample is kept too (benchmarks compute exact percentiles).
    samples: Mutex<Option<Vec<u64>>>,
}

impl Metrics {
    /// Counts one triggered alert.
    pub fn alert_triggered(&self, p: Priority) {
        let i = match p {
            Priority::Low => 0,
            Priority::Medium => 1,
            Priority::High => 2,
        };
        self.alerts_triggered[i].fetch_add(1, Relaxed);
    }

    /// Total alerts triggered.
    pub fn alerts_total(&self) -> u64 {
        self.alerts_triggered.iter().map(|a| a.load(Relaxed)).sum()
    }

    /// Records one observation-to-alert latency.
    pub fn observe_latency(&self, micros: i64) {
        let us = micros.max(0) as u64;
        self.latency.observe(us);
        if let Ok(mut g) = self.samples.lock()
            && let Some(v) = g.as_mut()
        {
            v.push(us);
        }
    }

    /// Starts keeping every latency sample.
    pub fn keep_latency_samples(&self) {
        if let Ok(mut g) = self.samples.lock() {
            *g = Some(Vec::new());
        }
    }

    /// A notifier's counters (created on first use). `vitalwatch_outbox_head` minus its
    /// delivered sequence number is its backlog.
    pub fn notifier(&self, name: &str) -> Arc<NotifierStats> {
        let mut g = self
            .notifiers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, c)) = g.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let c = Arc::new(NotifierStats::default());
        g.push((name.to_owned(), c.clone()));
        c
    }

    /// Takes the kept latency samples (microseconds).
    pub fn take_latency_samples(&self) -> Vec<u64> {
        self.samples
            .lock()
            .ok()
            .and_then(|mut g| g.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "vitalwatch_records_received_total",
            "Records received from all sources.",
            self.sources.received.load(Relaxed),
        );
        counter(
            "vitalwatch_observations_total",
            "Observation sets accepted.",
            self.observations.load(Relaxed),
        );
        counter(
            "vitalwatch_readings_total",
            "Readings (one vital each) accepted.",
            self.readings.load(Relaxed),
        );
        counter(
            "vitalwatch_dead_letters_total",
            "Records rejected as dead letters.",
            self.sources.dead_letters.load(Relaxed),
        );
        counter(
            "vitalwatch_unclassified_total",
            "Readings with an unknown patient or no band.",
            self.unclassified.load(Relaxed),
        );
        counter(
            "vitalwatch_late_readings_total",
            "Readings later than the lateness window: archived, not evaluated.",
            self.late_readings.load(Relaxed),
        );
        counter(
            "vitalwatch_alert_events_total",
            "Alert events delivered to the outputs.",
            self.alert_events.load(Relaxed),
        );
        counter(
            "vitalwatch_alert_events_replayed_total",
            "Alert events already recorded (replays), not delivered again.",
            self.alert_events_replayed.load(Relaxed),
        );
        counter(
            "vitalwatch_alert_output_errors_total",
            "Errors writing alert outputs.",
            self.alert_output_errors.load(Relaxed),
        );
        counter(
            "vitalwatch_archived_rows_total",
            "Rows written to the warehouse.",
            self.archived_rows.load(Relaxed),
        );
        counter(
            "vitalwatch_archive_errors_total",
            "Errors writing the warehouse.",
            self.archive_errors.load(Relaxed),
        );
        counter(
            "vitalwatch_checkpoints_committed_total",
            "Checkpoints durable in the alert store and the warehouse.",
            self.sources.checkpoints_committed.load(Relaxed),
        );
        counter(
            "vitalwatch_checkpoints_failed_total",
            "Checkpoints that failed (the source retries or stops).",
            self.sources.checkpoints_failed.load(Relaxed),
        );
        counter(
            "vitalwatch_notifications_delivered_total",
            "Outbox entries delivered, summed over notifiers.",
            self.notifications_delivered.load(Relaxed),
        );
        counter(
            "vitalwatch_notification_retries_total",
            "Failed delivery attempts that will be retried.",
            self.notification_retries.load(Relaxed),
        );
        counter(
            "vitalwatch_notifications_failed_total",
            "Outbox entries a notifier gave up on.",
            self.notifications_failed.load(Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP vitalwatch_outbox_head The newest alert event's outbox sequence number.\n# TYPE vitalwatch_outbox_head gauge\nvitalwatch_outbox_head {}",
            self.outbox_head.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP vitalwatch_threshold_version The threshold table version the engine applies.\n# TYPE vitalwatch_threshold_version gauge\nvitalwatch_threshold_version {}\n# HELP vitalwatch_reference_reloads_total Reference data reloaded from the catalog while running.\n# TYPE vitalwatch_reference_reloads_total counter\nvitalwatch_reference_reloads_total {}",
            self.threshold_version.load(Relaxed),
            self.reference_reloads.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP vitalwatch_outbox_adopted_total Alert events of dead replicas (lapsed outbox lease) this replica delivered to external notifiers.\n# TYPE vitalwatch_outbox_adopted_total counter\nvitalwatch_outbox_adopted_total {}\n# HELP vitalwatch_outbox_lease_lost_total Times this replica found its own outbox lease held by another (it stalled longer than pipeline.outbox_lease).\n# TYPE vitalwatch_outbox_lease_lost_total counter\nvitalwatch_outbox_lease_lost_total {}",
            self.outbox_adopted.load(Relaxed),
            self.outbox_lease_lost.load(Relaxed)
        );
        self.render_notifiers(&mut s);
        let _ = writeln!(
            s,
            "# HELP vitalwatch_notifications_silenced_total Alert events held back from an external notifier by a silence.\n# TYPE vitalwatch_notifications_silenced_total counter\nvitalwatch_notifications_silenced_total {}",
            self.notifications_silenced.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP vitalwatch_alerts_undeliverable_total Alert events a notifier gave up on that the fallback could not deliver either (or no fallback is configured): the technical alarm.\n# TYPE vitalwatch_alerts_undeliverable_total counter\nvitalwatch_alerts_undeliverable_total {}",
            self.alerts_undeliverable.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP vitalwatch_alerts_triggered_total Alerts triggered, by priority.\n# TYPE vitalwatch_alerts_triggered_total counter"
        );
        for (i, p) in ["low", "medium", "high"].iter().enumerate() {
            let _ = writeln!(
                s,
                "vitalwatch_alerts_triggered_total{{priority=\"{p}\"}} {}",
                self.alerts_triggered[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP vitalwatch_alert_latency_seconds From a reading's observation time to its alert being written.\n# TYPE vitalwatch_alert_latency_seconds histogram"
        );
        self.latency
            .render(&mut s, "vitalwatch_alert_latency_seconds", "");
        if let Ok(k) = self.kafka.lock() {
            for m in k.iter() {
                m.render(&mut s);
            }
        }
        s
    }

    /// Each notifier's counters, backlog and delivery latency.
    fn render_notifiers(&self, s: &mut String) {
        let Ok(g) = self.notifiers.lock() else {
            return;
        };
        let head = self.outbox_head.load(Relaxed);
        for (metric, kind, help, value) in [
            (
                "vitalwatch_notifier_delivered_seq",
                "gauge",
                "The outbox sequence number each notifier has delivered up to.",
                (|n: &NotifierStats, _| n.delivered_seq.load(Relaxed))
                    as fn(&NotifierStats, u64) -> u64,
            ),
            (
                "vitalwatch_notifier_backlog",
                "gauge",
                "Outbox entries recorded but not yet delivered, per notifier (with a shared catalog, up to the head of every replica's entries).",
                |n, head| head.saturating_sub(n.delivered_seq.load(Relaxed)),
            ),
            (
                "vitalwatch_notifier_deliveries_total",
                "counter",
                "Alert events delivered, per notifier.",
                |n, _| n.delivered.load(Relaxed),
            ),
            (
                "vitalwatch_notifier_failures_total",
                "counter",
                "Alert events a notifier gave up on (permanent errors): nobody was told through it.",
                |n, _| n.failed.load(Relaxed),
            ),
            (
                "vitalwatch_notifier_retries_total",
                "counter",
                "Delivery attempts that failed transiently and were retried, per notifier.",
                |n, _| n.retries.load(Relaxed),
            ),
        ] {
            let _ = writeln!(s, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for (name, n) in g.iter() {
                let _ = writeln!(s, "{metric}{{notifier=\"{name}\"}} {}", value(n, head));
            }
        }
        let _ = writeln!(
            s,
            "# HELP vitalwatch_alert_delivery_latency_seconds From a reading's observation time to its alert event's confirmed delivery, per notifier.\n# TYPE vitalwatch_alert_delivery_latency_seconds histogram"
        );
        for (name, n) in g.iter() {
            n.latency.render(
                s,
                "vitalwatch_alert_delivery_latency_seconds",
                &format!("notifier=\"{name}\","),
            );
        }
    }

    /// Adds a Kafka source's counters to what `GET /metrics` shows.
    pub fn add_kafka(&self, m: Arc<KafkaMetrics>) {
        if let Ok(mut k) = self.kafka.lock() {
            k.push(m);
        }
    }
}

/// The value at quantile `q` (0–1) of sorted samples, nearest-rank.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_latency(400); // 0.4 ms
        m.observe_latency(3_000); // 3 ms
        m.observe_latency(20_000_000); // 20 s, beyond the last bucket
        let text = m.render();
        assert!(text.contains("vitalwatch_alert_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("vitalwatch_alert_latency_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("vitalwatch_alert_latency_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("vitalwatch_alert_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert_eq!(percentile(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.5), 5);
        assert_eq!(percentile(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.99), 10);
    }
}
