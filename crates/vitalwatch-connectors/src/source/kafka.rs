//! The Kafka source: readings from a Kafka-protocol broker, in a consumer group, with
//! offsets committed only once what they cover is durable.
//!
//! Where it sits: a source like any other, feeding a [`SourceHandle`] from its own thread.
//! Each record is decoded (classic or canonical, decided per record unless the format is
//! fixed) with the broker's timestamp as its ingest time, so a backlog read after an
//! outage is judged by when it was produced, not when it is read, and a re-read after a
//! crash gives the same rows. A record that cannot be decoded or admitted becomes a dead
//! letter (in the warehouse's `dead_letters` table, and, if configured, on a dead-letter
//! topic with its reason in a header and its original bytes as payload); the records
//! around it are processed.
//!
//! Exactly-once into the warehouse, like the file source ([`super::file`]): every
//! `pipeline.checkpoint_interval` the source sends a checkpoint; once the alert store
//! committed and the warehouse published everything before it, the source commits each
//! partition's next offset *and* the checkpoint number to the alert store in one
//! transaction (the decision), then to the broker (for lag tools and other consumers). At
//! start it removes the warehouse files no committed checkpoint covers and skips records
//! below the stored offsets, so a crash at any point re-reads exactly what was not made
//! durable. Alert events re-derived from re-read records are recognised by the alert
//! store's idempotency key and not notified again.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::Message as _;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::{Deserialize, Serialize};
use vitalwatch_core::codec::InputFormat;
use vitalwatch_core::model::{DeadLetter, Observation, Timestamp};

use super::{Control, IngestMsg, Outcome, SourceHandle, Tracker, wall_now};
use crate::store::{AlertStore, SourcePosition, StoreError};
use crate::warehouse::WarehouseError;
use crate::warehouse::recovery::{position_tag, remove_uncommitted, stream_id};

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The oldest record the broker keeps.
    #[default]
    Earliest,
    /// Only records produced from now on.
    Latest,
}

/// `[[sources]] type = "kafka"`: the settings of one Kafka source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bootstrap brokers, comma-separated `HOST:PORT`.
    pub brokers: String,
    /// Topics to read.
    pub topics: Vec<String>,
    /// Consumer group: replicas with the same group share the topics' partitions.
    pub group: String,
    /// Record layout: `auto` (per record), `classic` or `canonical`.
    pub format: InputFormat,
    /// Where a group with no committed offsets starts: `earliest` or `latest`.
    pub start: StartAt,
    /// Topic that receives undecodable and implausible records (reason in the
    /// `vitalwatch-reason` header, original bytes as payload); empty: none (they are
    /// still dead letters in the warehouse).
    pub dead_letter_topic: String,
    /// librdkafka client settings passed through as they are (`security.protocol`,
    /// `sasl.*`, `ssl.*`, `compression.type`, timeouts). Values of keys that hold
    /// secrets are never printed.
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            topics: vec!["vitals".into()],
            group: "vitalwatch".into(),
            format: InputFormat::Auto,
            start: StartAt::Earliest,
            dead_letter_topic: "vitals-dead-letters".into(),
            options: BTreeMap::new(),
        }
    }
}

/// Settings vitalwatch sets itself: passing them through would break its guarantees.
const RESERVED: [&str; 6] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];

/// Whether a librdkafka setting holds a secret (its value is never printed).
pub fn is_secret(key: &str) -> bool {
    ["password", "secret", "key", "token", "jaas"]
        .iter()
        .any(|w| key.contains(w))
        && !key.ends_with(".location")
}

impl KafkaSettings {
    /// Every problem with these settings, each starting with `prefix` (the config key).
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.brokers.trim().is_empty() {
            p.push(format!(
                "{prefix}.brokers is empty: name at least one HOST:PORT"
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| !valid_topic(t)) {
            p.push(format!(
                "{prefix}.topics = {:?}: give one or more topic names (letters, digits, `.`, `_`, `-`)",
                self.topics
            ));
        }
        if self.group.trim().is_empty() {
            p.push(format!("{prefix}.group is empty"));
        }
        if !self.dead_letter_topic.is_empty() && !valid_topic(&self.dead_letter_topic) {
            p.push(format!(
                "{prefix}.dead_letter_topic = {:?} is not a topic name",
                self.dead_letter_topic
            ));
        }
        if self.topics.contains(&self.dead_letter_topic) {
            p.push(format!(
                "{prefix}.dead_letter_topic must not be one of the topics read"
            ));
        }
        for k in self.options.keys() {
            if RESERVED.contains(&k.as_str()) {
                p.push(format!(
                    "{prefix}.options.{k:?} is set by vitalwatch (use brokers, group, start): offsets are committed only once durable"
                ));
            }
        }
        p
    }

    /// The settings as one line for people, secrets masked.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "kafka {} topics {} group {}",
            self.brokers,
            self.topics.join(","),
            self.group
        );
        for (k, v) in &self.options {
            let v = if is_secret(k) { "***" } else { v.as_str() };
            let _ = write!(s, " {k}={v}");
        }
        s
    }

    /// The stream name of this source's warehouse files and positions.
    fn source_name(&self) -> String {
        format!("kafka:{}:{}", self.group, self.topics.join(","))
    }
}

fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A librdkafka client configuration: `brokers`, then the pass-through `options`.
pub fn client_config(brokers: &str, options: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in options {
        c.set(k, v);
    }
    c
}

/// What can stop the Kafka source.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    /// The client could not be created or subscribe.
    #[error("kafka client")]
    Client(#[from] rdkafka::error::KafkaError),
    /// The alert store (positions) failed.
    #[error("alert store")]
    Store(#[from] StoreError),
    /// Warehouse files of an interrupted run could not be removed.
    #[error("cannot remove warehouse files no committed checkpoint covers")]
    Warehouse(#[from] WarehouseError),
    /// The pipeline stopped taking input.
    #[error("the pipeline stopped")]
    Closed,
    /// A helper thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(String),
    /// The engine could not take the open alerts of new partitions from the alert store.
    #[error("cannot take open alerts over from the alert store: {0}")]
    TakeOver(String),
}

impl From<super::Closed> for KafkaSourceError {
    fn from(_: super::Closed) -> Self {
        KafkaSourceError::Closed
    }
}

/// One assigned partition, as the metrics see it.
#[derive(Debug, Default, Clone, Copy)]
pub struct PartitionState {
    /// Next offset to read (after the last record consumed).
    pub position: i64,
    /// Next offset committed as durable (-1: none yet).
    pub committed: i64,
    /// The broker's high watermark (next offset to be written), as last fetched.
    pub high: i64,
}

/// Counters of one Kafka source, rendered on `GET /metrics`.
#[derive(Debug, Default)]
pub struct KafkaMetrics {
    /// The source's name (`kafka:GROUP:TOPICS`): the `source` label.
    pub source: String,
    /// Records consumed.
    pub records: AtomicU64,
    /// Records that became dead letters.
    pub dead_letters: AtomicU64,
    /// Dead letters that could not be written to the dead-letter topic (they are still
    /// in the warehouse).
    pub dead_letter_topic_errors: AtomicU64,
    /// Rebalances (assignments and revocations).
    pub rebalances: AtomicU64,
    /// Offset commits after durable checkpoints.
    pub commits: AtomicU64,
    /// Sum of commit latencies (checkpoint sent → offsets committed), microseconds.
    pub commit_micros: AtomicU64,
    /// Partitions assigned to this replica, by (topic, partition).
    pub partitions: Mutex<BTreeMap<(String, i32), PartitionState>>,
}

impl KafkaMetrics {
    /// Appends the Prometheus text of these counters.
    pub fn render(&self, s: &mut String) {
        let src = &self.source;
        for (name, help, v) in [
            (
                "vitalwatch_kafka_records_total",
                "Records consumed from Kafka.",
                &self.records,
            ),
            (
                "vitalwatch_kafka_dead_letters_total",
                "Kafka records that became dead letters.",
                &self.dead_letters,
            ),
            (
                "vitalwatch_kafka_dead_letter_topic_errors_total",
                "Dead letters the dead-letter topic did not take (still in the warehouse).",
                &self.dead_letter_topic_errors,
            ),
            (
                "vitalwatch_kafka_rebalances_total",
                "Consumer-group rebalances seen (assignments and revocations).",
                &self.rebalances,
            ),
            (
                "vitalwatch_kafka_commits_total",
                "Offset commits after a durable checkpoint.",
                &self.commits,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{source=\"{src}\"}} {}",
                v.load(Relaxed)
            );
        }
        let n = self.commits.load(Relaxed);
        let _ = writeln!(
            s,
            "# HELP vitalwatch_kafka_commit_latency_seconds Checkpoint sent to offsets committed.\n# TYPE vitalwatch_kafka_commit_latency_seconds summary\nvitalwatch_kafka_commit_latency_seconds_sum{{source=\"{src}\"}} {}\nvitalwatch_kafka_commit_latency_seconds_count{{source=\"{src}\"}} {n}",
            self.commit_micros.load(Relaxed) as f64 / 1e6
        );
        let parts = self
            .partitions
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "# HELP vitalwatch_kafka_consumer_lag Records on the broker not yet committed as durable (high watermark minus committed offset).\n# TYPE vitalwatch_kafka_consumer_lag gauge"
        );
        for ((topic, partition), st) in &parts {
            let lag = (st.high - st.committed.max(0)).max(0);
            let _ = writeln!(
                s,
                "vitalwatch_kafka_consumer_lag{{source=\"{src}\",topic=\"{topic}\",partition=\"{partition}\"}} {lag}"
            );
        }
        for (name, help, get) in [
            (
                "vitalwatch_kafka_committed_offset",
                "Next offset committed as durable.",
                (|st: &PartitionState| st.committed) as fn(&PartitionState) -> i64,
            ),
            (
                "vitalwatch_kafka_high_watermark",
                "The broker's next offset to be written, as last fetched (every 5 s).",
                |st: &PartitionState| st.high,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
            for ((topic, partition), st) in &parts {
                let _ = writeln!(
                    s,
                    "{name}{{source=\"{src}\",topic=\"{topic}\",partition=\"{partition}\"}} {}",
                    get(st)
                );
            }
        }
    }
}

/// The consumer's context: the read loop's state lives here, so librdkafka's rebalance
/// callbacks (served inside `poll`, on the source's own thread) can make what was read
/// from a revoked partition durable and commit it before the partition goes to another
/// replica, and take a new partition's durable position from the store.
struct GroupContext {
    shared: Shared,
    state: Mutex<State>,
}

impl ClientContext for GroupContext {}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl GroupContext {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(l) = r {
            let list = partitions_of(l);
            tracing::info!(partitions = ?list, "kafka partitions revoked: committing what was read from them");
            self.shared.metrics.rebalances.fetch_add(1, Relaxed);
            let mut st = self.state();
            if let Err(e) = self.shared.hand_over(&mut st, consumer, &list) {
                // Not committed: the next owner reads them again (never lost).
                tracing::warn!(error = %e, "kafka: revoked partitions not committed");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(l) => {
                let list = partitions_of(l);
                tracing::info!(partitions = ?list, "kafka partitions assigned");
                self.shared.metrics.rebalances.fetch_add(1, Relaxed);
                let mut st = self.state();
                if let Err(e) = self.shared.take_over(&mut st, consumer, &list) {
                    st.failed = Some(e);
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }
}

/// Delivery reports of a producer that only needs to know whether records arrived.
#[derive(Debug, Default)]
pub struct CountingContext {
    /// Records delivered.
    pub delivered: AtomicU64,
    /// Records the broker did not take, and the last reason.
    pub failed: AtomicU64,
    /// The last delivery error, in words.
    pub last_error: Mutex<Option<String>>,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.delivered.fetch_add(1, Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Relaxed);
                if let Ok(mut l) = self.last_error.lock() {
                    *l = Some(e.to_string());
                }
            }
        }
    }
}

/// Where a checkpoint found the partitions: carried back to commit them.
#[derive(Debug)]
struct KafkaCheckpoint {
    number: u64,
    offsets: Vec<((String, i32), i64)>,
    sent: Instant,
}

/// Records per batch sent to the engine.
const BATCH: usize = 1024;
/// Longest a record waits in a part-filled batch.
const LINGER: Duration = Duration::from_millis(2);
/// Checkpoints in flight before the reader waits for the oldest.
const MAX_OUTSTANDING: usize = 4;
/// Longest a revocation waits for its checkpoint before the partitions go anyway (they
/// are then read again by their next owner: never lost).
const HAND_OVER_WAIT: Duration = Duration::from_secs(30);

/// The Kafka source: a consumer-group member feeding the pipeline until stopped.
pub struct KafkaSource {
    shared: Shared,
    store: Box<dyn AlertStore>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("settings", &self.shared.settings.describe())
            .finish()
    }
}

/// What the read loop and the rebalance callbacks share and never change.
struct Shared {
    settings: KafkaSettings,
    h: SourceHandle,
    warehouse: PathBuf,
    interval: Duration,
    metrics: Arc<KafkaMetrics>,
    /// `kafka:GROUP:TOPICS`: the decision row and the warehouse stream.
    source: String,
    stream: String,
}

/// The read loop's state.
struct State {
    store: Box<dyn AlertStore>,
    tracker: Tracker<KafkaCheckpoint>,
    dlq: Option<BaseProducer<CountingContext>>,
    /// The last checkpoint number handed out.
    number: u64,
    /// Next offset to read per assigned partition; records below it are skipped (they
    /// were made durable before a crash or a hand-over).
    next: HashMap<(String, i32), i64>,
    batch: Vec<Observation>,
    dead: Vec<DeadLetter>,
    batch_since: Option<Instant>,
    received: usize,
    /// Read since the last checkpoint.
    dirty: bool,
    last_checkpoint: Instant,
    /// An error a rebalance callback could not return: the loop stops with it.
    failed: Option<KafkaSourceError>,
}

impl KafkaSource {
    /// A Kafka source feeding `h`, keeping positions in `store`, removing uncommitted
    /// files under the warehouse root `warehouse`, checkpointing every `interval`.
    pub fn new(
        settings: KafkaSettings,
        h: SourceHandle,
        store: Box<dyn AlertStore>,
        warehouse: PathBuf,
        interval: Duration,
    ) -> Self {
        let source = settings.source_name();
        let metrics = Arc::new(KafkaMetrics {
            source: source.clone(),
            ..Default::default()
        });
        KafkaSource {
            shared: Shared {
                stream: stream_id(&source),
                source,
                settings,
                h,
                warehouse,
                interval,
                metrics,
            },
            store,
        }
    }

    /// Scopes the source's checkpoints to replica `id` (a data directory's id): its
    /// decision row and warehouse stream are its own, while the partitions' committed
    /// offsets stay common, so replicas sharing a catalog take partitions over from each
    /// other and each restart removes only its own uncommitted files.
    pub fn for_replica(mut self, id: &str) -> Self {
        if !id.is_empty() {
            self.shared.source = format!("{}@{id}", self.shared.settings.source_name());
            self.shared.stream = stream_id(&self.shared.source);
        }
        self
    }

    /// This source's counters (register them with the metrics before [`Self::run`]).
    pub fn metrics(&self) -> Arc<KafkaMetrics> {
        self.shared.metrics.clone()
    }

    /// Consumes until `stop()` says so, then makes what it read durable, commits it and
    /// leaves the group.
    pub fn run(self, stop: &dyn Fn() -> bool) -> Result<(), KafkaSourceError> {
        let KafkaSource { shared, store } = self;
        // The decision record: which checkpoint of this stream is durable. Files of later
        // checkpoints hold rows that will be read again.
        let stored = store.source_position(&shared.source)?;
        let number = stored.as_ref().map_or(0, |p| p.checkpoint);
        let removed = remove_uncommitted(
            &shared.warehouse,
            &shared.stream,
            stored.map(|p| p.checkpoint),
        )?;
        if removed.uncommitted > 0 {
            tracing::info!(
                files = removed.uncommitted,
                "removed warehouse files no committed Kafka checkpoint covers; their records are read again"
            );
        }
        let settings = &shared.settings;
        let mut cc = client_config(&settings.brokers, &settings.options);
        cc.set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                match settings.start {
                    StartAt::Earliest => "earliest",
                    StartAt::Latest => "latest",
                },
            );
        for (k, v, _why) in [
            (
                "session.timeout.ms",
                "6000",
                "a group's first join waits for half of it (seen with Tansu); 6 s keeps a hand-over after a crash short too",
            ),
            (
                "fetch.wait.max.ms",
                "10",
                "a broker may hold a fetch for this long when no record is waiting: at librdkafka's 500 ms default every alert could wait that long",
            ),
        ] {
            if !settings.options.contains_key(k) {
                cc.set(k, v);
            }
        }
        let dlq = if settings.dead_letter_topic.is_empty() {
            None
        } else {
            let mut pc = client_config(&settings.brokers, &settings.options);
            pc.set("message.max.bytes", "33554432")
                .set("linger.ms", "5");
            Some(pc.create_with_context::<_, BaseProducer<CountingContext>>(
                CountingContext::default(),
            )?)
        };
        let topics: Vec<String> = settings.topics.clone();
        let ctx = GroupContext {
            state: Mutex::new(State {
                store,
                tracker: Tracker::default(),
                dlq,
                number,
                next: HashMap::new(),
                batch: Vec::with_capacity(BATCH),
                dead: Vec::new(),
                batch_since: None,
                received: 0,
                dirty: false,
                last_checkpoint: Instant::now(),
                failed: None,
            }),
            shared,
        };
        let consumer: BaseConsumer<GroupContext> = cc.create_with_context(ctx)?;
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        // High watermarks (for the lag gauge) come from a client and thread of their own:
        // each is a request to the broker, which must not hold up the records.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watermarks = {
            let (done, metrics) = (done.clone(), consumer.context().shared.metrics.clone());
            let client: BaseConsumer = client_config(
                &consumer.context().shared.settings.brokers,
                &consumer.context().shared.settings.options,
            )
            .create()?;
            std::thread::Builder::new()
                .name("kafka-watermarks".into())
                .spawn(move || refresh_watermarks(&client, &metrics, &done))
                .map_err(|e| KafkaSourceError::Thread(e.to_string()))?
        };
        let result = Self::read(&consumer, stop);
        done.store(true, Relaxed);
        let _ = watermarks.join();
        result
    }

    /// The read loop, then the final checkpoint.
    fn read(
        consumer: &BaseConsumer<GroupContext>,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), KafkaSourceError> {
        // Records waiting in a part-filled batch: then `poll` only takes what librdkafka
        // already holds, and the batch goes to the engine as soon as that runs dry (a
        // fetch brings records in bursts; waiting for the next burst added its interval
        // to every alert).
        let mut pending = false;
        while !stop() {
            // No lock is held across `poll`: rebalance callbacks run inside it.
            let polled = consumer.poll(if pending {
                Duration::ZERO
            } else {
                Duration::from_millis(10)
            });
            let ctx = consumer.context();
            let sh = &ctx.shared;
            let mut st = ctx.state();
            if let Some(e) = st.failed.take() {
                return Err(e);
            }
            match polled {
                None => sh.flush(&mut st)?,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer");
                    sh.flush(&mut st)?;
                }
                Some(Ok(m)) => sh.take(&mut st, &m)?,
            }
            if let Some(p) = &st.dlq {
                p.poll(Duration::ZERO);
            }
            if st.dirty && st.last_checkpoint.elapsed() >= sh.interval {
                sh.checkpoint(&mut st)?;
            }
            let wait = if st.tracker.outstanding() > MAX_OUTSTANDING {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            let done = st.tracker.poll(wait);
            sh.settle(&mut st, consumer, done, CommitMode::Async)?;
            pending = !st.batch.is_empty() || !st.dead.is_empty();
        }
        // Stop: make what was read durable, commit it, leave the group.
        {
            let ctx = consumer.context();
            let sh = &ctx.shared;
            let mut st = ctx.state();
            sh.make_durable(&mut st, consumer, Duration::from_secs(60))?;
            if let Some(p) = &st.dlq {
                let _ = p.flush(Duration::from_secs(10));
            }
        }
        consumer.unsubscribe();
        Ok(())
    }
}

impl Shared {
    /// Decodes one record into the batch (or a dead letter), skipping what an earlier
    /// owner already made durable.
    fn take(
        &self,
        st: &mut State,
        m: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Result<(), KafkaSourceError> {
        let key = (m.topic().to_owned(), m.partition());
        let off = m.offset();
        if st.next.get(&key).is_some_and(|&n| off < n) {
            return Ok(());
        }
        st.next.insert(key, off + 1);
        st.dirty = true;
        st.received += 1;
        self.metrics.records.fetch_add(1, Relaxed);
        let ingested = match m.timestamp().to_millis() {
            Some(ms) if ms > 0 => Timestamp(ms * 1000),
            _ => wall_now(),
        };
        let payload = m.payload().unwrap_or_default();
        match self.h.decode_live(payload, self.settings.format, ingested) {
            Ok(o) => st.batch.push(o),
            Err(reason) => {
                let from = format!("kafka:{}/{}@{}", m.topic(), m.partition(), off);
                self.metrics.dead_letters.fetch_add(1, Relaxed);
                if let Some(p) = &st.dlq {
                    send_dead_letter(p, &self.settings.dead_letter_topic, m, &reason);
                }
                st.dead
                    .push(DeadLetter::new(ingested, from, reason, payload));
            }
        }
        st.batch_since.get_or_insert_with(Instant::now);
        if st.batch.len() >= BATCH || st.batch_since.is_some_and(|t| t.elapsed() >= LINGER) {
            self.flush(st)?;
        }
        Ok(())
    }

    /// Sends the batch and dead letters gathered so far.
    fn flush(&self, st: &mut State) -> Result<(), KafkaSourceError> {
        self.h.received(std::mem::take(&mut st.received));
        self.h.dead_letters(std::mem::take(&mut st.dead))?;
        if !st.batch.is_empty() {
            let batch = std::mem::replace(&mut st.batch, Vec::with_capacity(BATCH));
            self.h.send(batch)?;
        }
        st.batch_since = None;
        Ok(())
    }

    /// New partitions start after their stored durable offset, if the store has one
    /// (this replica's earlier run, or a replica that shares the catalog); otherwise at
    /// the broker's committed offset (a partition another replica gave up).
    fn take_over(
        &self,
        st: &mut State,
        consumer: &BaseConsumer<GroupContext>,
        list: &[(String, i32)],
    ) -> Result<(), KafkaSourceError> {
        let mut broker = HashMap::new();
        let mut ask = TopicPartitionList::new();
        for (topic, partition) in list {
            ask.add_partition(topic, *partition);
        }
        match consumer.committed_offsets(ask, Duration::from_secs(10)) {
            Ok(tpl) => {
                for e in tpl.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        broker.insert((e.topic().to_owned(), e.partition()), o);
                    }
                }
            }
            // Then the store's offsets only; librdkafka still starts at the broker's.
            Err(e) => tracing::warn!(error = %e, "kafka: committed offsets not fetched"),
        }
        let mut parts = self
            .metrics
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for k in list {
            let stored = st
                .store
                .source_position(&partition_name(&self.settings, k))?;
            // The later of the two: the store's is ahead after a crash between its commit
            // and the broker's; the broker's is ahead when another replica with its own
            // catalog read the partition since (going back would read records twice).
            let committed = stored
                .map(|p| p.offset as i64)
                .into_iter()
                .chain(broker.get(k).copied())
                .max()
                .unwrap_or(-1);
            if committed >= 0 {
                st.next.insert(k.clone(), committed);
            } else {
                st.next.remove(k);
            }
            parts.insert(
                k.clone(),
                PartitionState {
                    position: committed.max(0),
                    committed,
                    high: 0,
                },
            );
        }
        drop(parts);
        // The patients of these partitions may have had alerts raised or resolved by
        // their previous owner: the engine takes them from the shared store before the
        // first record is read.
        let (tx, rx) = flume::bounded(1);
        self.h
            .control
            .send(Control::Resync { reply: tx })
            .map_err(|_| KafkaSourceError::Closed)?;
        match rx.recv_timeout(HAND_OVER_WAIT) {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(patients = n, "open alerts taken over from the alert store")
            }
            Ok(Err(why)) => return Err(KafkaSourceError::TakeOver(why)),
            Err(_) => {
                return Err(KafkaSourceError::TakeOver(format!(
                    "no answer from the engine in {HAND_OVER_WAIT:?}"
                )));
            }
        }
        Ok(())
    }

    /// Partitions leave this replica: what was read from them is made durable and
    /// committed first (waiting up to [`HAND_OVER_WAIT`]), so their next owner starts
    /// exactly after it — nothing read twice, nothing skipped.
    fn hand_over(
        &self,
        st: &mut State,
        consumer: &BaseConsumer<GroupContext>,
        list: &[(String, i32)],
    ) -> Result<(), KafkaSourceError> {
        self.make_durable(st, consumer, HAND_OVER_WAIT)?;
        let mut parts = self
            .metrics
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for k in list {
            st.next.remove(k);
            parts.remove(k);
        }
        Ok(())
    }

    /// Makes everything read so far durable (a last checkpoint, waiting up to `wait` for
    /// every outstanding one) and commits it, synchronously: before partitions leave and
    /// before the source stops.
    fn make_durable(
        &self,
        st: &mut State,
        consumer: &BaseConsumer<GroupContext>,
        wait: Duration,
    ) -> Result<(), KafkaSourceError> {
        // Not dirty: nothing was read since the last checkpoint, which flushed the batch.
        if st.dirty {
            self.checkpoint(st)?;
        }
        let done = st.tracker.drain(wait);
        self.settle(st, consumer, done, CommitMode::Sync)
    }

    /// Sends a checkpoint covering everything read so far.
    fn checkpoint(&self, st: &mut State) -> Result<(), KafkaSourceError> {
        self.flush(st)?;
        if let Some(p) = &st.dlq {
            if let Err(e) = p.flush(Duration::from_secs(10)) {
                tracing::warn!(error = %e, "dead-letter topic: not every dead letter was delivered (they are in the warehouse)");
            }
            let failed = p.context().failed.swap(0, Relaxed);
            self.metrics
                .dead_letter_topic_errors
                .fetch_add(failed, Relaxed);
        }
        st.number += 1;
        let mut offsets: Vec<_> = st.next.iter().map(|(k, v)| (k.clone(), *v)).collect();
        offsets.sort();
        if let Ok(mut parts) = self.metrics.partitions.lock() {
            for (k, v) in &offsets {
                parts.entry(k.clone()).or_default().position = *v;
            }
        }
        let cp = st.tracker.mark(
            Some(position_tag(&self.stream, st.number)),
            KafkaCheckpoint {
                number: st.number,
                offsets,
                sent: Instant::now(),
            },
        );
        st.dirty = false;
        st.last_checkpoint = Instant::now();
        self.h
            .ingest
            .send(IngestMsg::Checkpoint(cp))
            .map_err(|_| KafkaSourceError::Closed)
    }

    /// Commits the offsets of durable checkpoints: to the alert store (the decision, in
    /// one transaction with the checkpoint number), then to the broker.
    fn settle(
        &self,
        st: &mut State,
        consumer: &BaseConsumer<GroupContext>,
        done: Vec<(KafkaCheckpoint, Outcome)>,
        mode: CommitMode,
    ) -> Result<(), KafkaSourceError> {
        for (cp, outcome) in done {
            self.h.count_checkpoint(&outcome);
            if let Outcome::Failed(why) = outcome {
                // The pipeline keeps what it could not write and retries at the next
                // checkpoint, which covers this one's records too.
                tracing::warn!(checkpoint = cp.number, %why, "kafka checkpoint failed; offsets not committed");
                continue;
            }
            let at = wall_now();
            let mut rows = vec![SourcePosition {
                source: self.source.clone(),
                checkpoint: cp.number,
                offset: 0,
                fingerprint: String::new(),
                at,
            }];
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), off) in &cp.offsets {
                rows.push(SourcePosition {
                    source: partition_name(&self.settings, &(topic.clone(), *partition)),
                    checkpoint: cp.number,
                    offset: *off as u64,
                    fingerprint: String::new(),
                    at,
                });
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*off))?;
            }
            st.store.commit_source_positions(&rows)?;
            if let Err(e) = consumer.commit(&tpl, mode) {
                // The store holds the decision; the broker's copy catches up next time.
                tracing::warn!(error = %e, "kafka offset commit");
            }
            self.metrics.commits.fetch_add(1, Relaxed);
            self.metrics
                .commit_micros
                .fetch_add(cp.sent.elapsed().as_micros() as u64, Relaxed);
            if let Ok(mut parts) = self.metrics.partitions.lock() {
                for (k, off) in &cp.offsets {
                    if let Some(p) = parts.get_mut(k) {
                        p.committed = *off;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Fetches each assigned partition's high watermark every 5 s (for the lag gauge) until
/// `done`.
fn refresh_watermarks(
    client: &BaseConsumer,
    metrics: &KafkaMetrics,
    done: &std::sync::atomic::AtomicBool,
) {
    let mut last = Instant::now() - Duration::from_secs(5);
    while !done.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < Duration::from_secs(5) {
            continue;
        }
        last = Instant::now();
        let keys: Vec<_> = match metrics.partitions.lock() {
            Ok(p) => p.keys().cloned().collect(),
            Err(_) => return,
        };
        for (topic, partition) in keys {
            if let Ok((_, high)) =
                client.fetch_watermarks(&topic, partition, Duration::from_secs(1))
                && let Ok(mut parts) = metrics.partitions.lock()
                && let Some(p) = parts.get_mut(&(topic, partition))
            {
                p.high = high;
            }
        }
    }
}

/// The position row of one partition.
fn partition_name(s: &KafkaSettings, (topic, partition): &(String, i32)) -> String {
    format!("kafka:{}:{topic}:{partition}", s.group)
}

/// Puts a dead record on the dead-letter topic: its key and bytes as they came, the
/// reason and origin in headers.
fn send_dead_letter(
    p: &BaseProducer<CountingContext>,
    topic: &str,
    m: &rdkafka::message::BorrowedMessage<'_>,
    reason: &str,
) {
    let origin = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "vitalwatch-reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "vitalwatch-origin",
            value: Some(origin.as_str()),
        });
    let payload = m.payload().unwrap_or_default();
    let mut rec = BaseRecord::to(topic).payload(payload).headers(headers);
    if let Some(k) = m.key() {
        rec = rec.key(k);
    }
    if let Err(e) = send(p, rec) {
        tracing::warn!(error = %e, "dead-letter topic: record not sent (it is in the warehouse)");
        p.context().failed.fetch_add(1, Relaxed);
    }
}

/// Queues a record, waiting (serving delivery reports) while the producer's queue is full.
pub fn send<K, P>(
    p: &BaseProducer<CountingContext>,
    mut rec: BaseRecord<'_, K, P, ()>,
) -> Result<(), rdkafka::error::KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                rec = back;
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
