//! `vitalwatch produce` and `vitalwatch simulate --kafka`: readings onto a Kafka topic.
//!
//! Where it sits: outside the pipeline, in the role of the classic design's IoT producer.
//! Each record is keyed by its patient id (one patient's readings stay in order on one
//! partition, which is what lets replicas split the work by partition). Records that do
//! not decode are sent as they are, without a key: a producer replays what it is given,
//! and the consumer's dead-letter handling is what deals with them. Delivery uses the
//! idempotent producer with `acks=all`; the command fails if the broker did not take
//! every record.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use vitalwatch_connectors::source::kafka::{CountingContext, client_config, send};
use vitalwatch_core::codec::{InputFormat, decode_record};
use vitalwatch_core::model::Timestamp;

use crate::commands::{confirm, open_input, progress_bar};

/// `vitalwatch produce`
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Bootstrap brokers, comma-separated `HOST:PORT`.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: String,
    /// Topic to write to.
    #[arg(long, default_value = "vitals")]
    pub topic: String,
    /// Records per second (the classic producer sent 1); unpaced without it.
    #[arg(long)]
    pub rate: Option<f64>,
    /// A librdkafka producer setting, `KEY=VALUE` (repeatable), e.g.
    /// `--option compression.type=zstd`.
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// JSON-lines files (classic or canonical records); `-` reads standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `KEY=VALUE` settings as a map.
pub fn parse_options(options: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => bail!("--option {o:?} is not KEY=VALUE"),
        })
        .collect()
}

/// Sends records to one topic, paced or not, and reports how it went.
pub struct KafkaOut {
    producer: BaseProducer<CountingContext>,
    topic: String,
    rate: Option<f64>,
    started: Instant,
    sent: u64,
}

impl std::fmt::Debug for KafkaOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaOut")
            .field("topic", &self.topic)
            .field("sent", &self.sent)
            .finish()
    }
}

impl KafkaOut {
    /// A producer for `brokers` with the pass-through `options`.
    pub fn new(
        brokers: &str,
        topic: &str,
        rate: Option<f64>,
        options: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        if let Some(r) = rate
            && !(r.is_finite() && r > 0.0)
        {
            bail!("--rate must be above 0");
        }
        let mut c = client_config(brokers, options);
        for (k, v) in [
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
        ] {
            if !options.contains_key(k) {
                c.set(k, v);
            }
        }
        let producer = c
            .create_with_context(CountingContext::default())
            .with_context(|| format!("cannot create a Kafka producer for {brokers}"))?;
        Ok(KafkaOut {
            producer,
            topic: topic.to_owned(),
            rate,
            started: Instant::now(),
            sent: 0,
        })
    }

    /// Sends one record (after its turn comes, when paced).
    pub fn send(&mut self, key: Option<&str>, payload: &[u8]) -> anyhow::Result<()> {
        if let Some(r) = self.rate {
            let due = self.started + Duration::from_secs_f64(self.sent as f64 / r);
            let now = Instant::now();
            if due > now {
                // Serve delivery reports while waiting.
                self.producer.poll(due - now);
            }
        }
        let mut rec = BaseRecord::to(&self.topic).payload(payload);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        send(&self.producer, rec)
            .with_context(|| format!("cannot send to topic {}", self.topic))?;
        self.sent += 1;
        if self.sent.is_multiple_of(1024) {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    /// Waits for every record to be acknowledged; a summary line.
    pub fn finish(self) -> anyhow::Result<String> {
        self.producer
            .flush(Duration::from_secs(60))
            .context("the broker did not acknowledge every record within a minute")?;
        let ctx = self.producer.context();
        let failed = ctx.failed.load(Relaxed);
        if failed > 0 {
            bail!(
                "{failed} of {} records were not delivered to topic {}: {}",
                self.sent,
                self.topic,
                ctx.last_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_default()
            );
        }
        let s = self.started.elapsed().as_secs_f64();
        Ok(format!(
            "sent {} records to topic {} in {s:.2}s = {:.0} records/s",
            self.sent,
            self.topic,
            self.sent as f64 / s.max(1e-9)
        ))
    }
}

/// The patient id of a record, if it decodes (its partition key).
pub fn patient_key(record: &[u8]) -> Option<String> {
    decode_record(record, InputFormat::Auto, Timestamp(0))
        .ok()
        .map(|o| o.patient_id.as_str().to_owned())
}

/// `vitalwatch produce`
pub fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let options = parse_options(&args.options)?;
    for f in &args.files {
        if f.as_os_str() != "-" && !f.is_file() {
            bail!("no such file: {}", f.display());
        }
    }
    let mut out = KafkaOut::new(&args.kafka, &args.topic, args.rate, &options)?;
    let total: u64 = args
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = progress_bar(total, "producing");
    let mut line = Vec::with_capacity(512);
    for f in &args.files {
        let (mut input, name, _) = open_input(f)?;
        loop {
            line.clear();
            let n = input
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read {name}"))?;
            if n == 0 {
                break;
            }
            bar.inc(n as u64);
            let rec = line.trim_ascii();
            if rec.is_empty() {
                continue;
            }
            out.send(patient_key(rec).as_deref(), rec)?;
        }
    }
    bar.finish_and_clear();
    confirm(out.finish()?);
    Ok(())
}
