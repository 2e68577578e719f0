//! The Kafka alert notifier: each alert event onto a topic — the classic design's
//! "doctors' queue".
//!
//! Where it sits: an outbox consumer like every notifier. Each event is one record, keyed
//! by patient id (one patient's events stay in order on one partition), its value the
//! event's JSON as the alert log has it (the classic alert fields included), with the
//! event's idempotency key in the `vitalwatch-idempotency-key` header: a consumer that
//! sees the same key twice (after a crash between delivering and recording it) drops
//! the second. A batch counts as delivered only once the broker acknowledged every
//! record (`acks=all`, idempotent producer).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};

use super::{Notifier, NotifyError, OutboxItem};
use crate::source::kafka::{CountingContext, client_config, send};

/// `[[notifiers]] type = "kafka"`: alert events onto a Kafka topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaNotifierSettings {
    /// The notifier's name (its outbox cursor and delivery records are kept under it).
    pub name: String,
    /// Bootstrap brokers, comma-separated `HOST:PORT`.
    pub brokers: String,
    /// Topic the alert events go to.
    pub topic: String,
    /// librdkafka producer settings passed through (`compression.type`, `sasl.*`, ...).
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaNotifierSettings {
    fn default() -> Self {
        KafkaNotifierSettings {
            name: "kafka".into(),
            brokers: "127.0.0.1:9092".into(),
            topic: "alerts".into(),
            options: BTreeMap::new(),
        }
    }
}

/// How long a batch may take to be acknowledged before it counts as failed (and retried).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes alert events to a Kafka topic.
pub struct KafkaNotifier {
    settings: KafkaNotifierSettings,
    producer: BaseProducer<CountingContext>,
}

impl std::fmt::Debug for KafkaNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaNotifier")
            .field("name", &self.settings.name)
            .field("topic", &self.settings.topic)
            .finish()
    }
}

impl KafkaNotifier {
    /// A producer for `settings` (connects lazily: a broker that is down is a transient
    /// delivery error, retried, not a start-up failure).
    pub fn new(settings: KafkaNotifierSettings) -> Result<Self, rdkafka::error::KafkaError> {
        let mut c = client_config(&settings.brokers, &settings.options);
        for (k, v) in [
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "1"),
        ] {
            if !settings.options.contains_key(k) {
                c.set(k, v);
            }
        }
        let producer = c.create_with_context(CountingContext::default())?;
        Ok(KafkaNotifier { settings, producer })
    }
}

impl Notifier for KafkaNotifier {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn max_batch(&self) -> usize {
        1024
    }

    fn deliver(&mut self, batch: &[OutboxItem]) -> Result<(), NotifyError> {
        let ctx = self.producer.context();
        let failed_before = ctx.failed.load(Relaxed);
        for item in batch {
            let event = item.event()?;
            let key = event.idempotency_key();
            let headers = OwnedHeaders::new().insert(Header {
                key: "vitalwatch-idempotency-key",
                value: Some(key.as_str()),
            });
            let patient = event.patient_id.as_str();
            let rec = BaseRecord::to(&self.settings.topic)
                .key(patient)
                .payload(item.body.as_bytes())
                .headers(headers);
            send(&self.producer, rec).map_err(|e| {
                NotifyError::Permanent(format!("kafka topic {}: {e}", self.settings.topic))
            })?;
        }
        self.producer.flush(ACK_TIMEOUT).map_err(|e| {
            NotifyError::Transient(format!("kafka topic {}: {e}", self.settings.topic))
        })?;
        if ctx.failed.load(Relaxed) > failed_before {
            let why = ctx
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            return Err(NotifyError::Transient(format!(
                "kafka topic {}: {why}",
                self.settings.topic
            )));
        }
        Ok(())
    }
}
