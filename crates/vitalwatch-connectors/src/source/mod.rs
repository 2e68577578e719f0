//! The source seam: everything that brings readings into the pipeline.
//!
//! Where it sits: first. A source turns what it receives into [`Observation`]s and hands
//! them, with its dead letters and checkpoints, to one [`SourceHandle`], in its own
//! first-in-first-out order, to the engine thread. The handle does what every source
//! needs the same way: ingest stamps, event-time admission, dead letters (counted and
//! archived in order with the data), counters, and checkpoints ([`checkpoint`]) that tell
//! the source when what it sent is durable.
//!
//! Sources here: [`file`] (`replay`: resumable files), [`live`] (decoding request bodies:
//! the HTTP source; MQTT and MLLP bodies later), [`simulator`] (simulated patients in
//! real time), [`kafka`] (feature `kafka`: a consumer-group member with offsets committed
//! once durable).

pub mod checkpoint;
#[cfg(feature = "warehouse")]
pub mod file;
#[cfg(all(feature = "kafka", feature = "warehouse"))]
pub mod kafka;
pub mod live;
pub mod simulator;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};

use vitalwatch_core::alert::AlertEvent;
use vitalwatch_core::clock::{Reference, TimeConfig, TimeError};
use vitalwatch_core::engine::AckError;
use vitalwatch_core::model::{DeadLetter, Observation, Timestamp};

pub use checkpoint::{Checkpoint, Outcome, Tracker};

/// The wall clock, as the core's timestamp type.
pub fn wall_now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

/// A message to the engine thread, in a source's first-in-first-out order.
#[derive(Debug)]
pub enum IngestMsg {
    /// Observations to evaluate.
    Batch(Vec<Observation>),
    /// Records the source could not decode or admit: archived in order with its data, so
    /// a checkpoint covers them too.
    DeadLetters(Vec<DeadLetter>),
    /// Everything before this is to be made durable; both paths confirm.
    Checkpoint(Arc<Checkpoint>),
}

/// A control message to the engine thread: handled before any queued data batch.
#[derive(Debug)]
pub enum Control {
    /// Acknowledge an alert; the result comes back on `reply`.
    Ack {
        /// Alert id.
        alert_id: String,
        /// Who acknowledges.
        by: String,
        /// Where the result goes.
        reply: flume::Sender<Result<AlertEvent, AckError>>,
    },
    /// Partitions moved between replicas sharing the alert store: once every alert event
    /// emitted so far is recorded, the engine takes its open alerts from the store
    /// (`Engine::resync`). The reply says how many patients and devices changed.
    Resync {
        /// Where the result goes.
        reply: flume::Sender<Result<usize, String>>,
    },
    /// New reference data (patients, threshold table) from the catalog: applied between
    /// two batches; open alerts and per-patient state are kept.
    Reload {
        /// Every patient.
        patients: Vec<vitalwatch_core::model::Patient>,
        /// The threshold table now in force.
        table: vitalwatch_core::reference::ThresholdTable,
    },
}

/// The pipeline stopped taking input (shutdown).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the pipeline stopped taking input")]
pub struct Closed;

/// Counters every source moves through its handle.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Records received from all sources (before decoding).
    pub received: AtomicU64,
    /// Records rejected as dead letters.
    pub dead_letters: AtomicU64,
    /// Checkpoints made durable on both paths.
    pub checkpoints_committed: AtomicU64,
    /// Checkpoints that failed on either path.
    pub checkpoints_failed: AtomicU64,
}

/// Gives a record that carries no time of its own (a classic record without
/// `message_time`, decoded with `batch_now` standing in for it) its own ingest time from
/// `next`, so two such records are two readings. Records with a time keep the batch's
/// ingest time, which the warehouse stores in a few bytes per batch.
pub fn stamp_untimed(o: &mut Observation, batch_now: Timestamp, next: impl FnOnce() -> Timestamp) {
    if o.observed_at == batch_now && o.ingested_at == batch_now {
        let t = next();
        o.observed_at = t;
        o.ingested_at = t;
    }
}

/// Hands out ingest times: the wall clock, but strictly increasing, so two records that
/// carry no time of their own (classic records without `message_time`) never share one,
/// and stay two readings.
#[derive(Debug, Default)]
pub struct IngestStamps(AtomicI64);

impl IngestStamps {
    /// The next ingest time at wall time `wall`.
    pub fn next(&self, wall: Timestamp) -> Timestamp {
        let prev = self
            .0
            .fetch_update(Relaxed, Relaxed, |last| Some(wall.0.max(last + 1)))
            .unwrap_or(wall.0);
        Timestamp(wall.0.max(prev + 1))
    }
}

/// What a source feeds. Cheap to clone; the pipeline drains when every clone is dropped.
#[derive(Debug, Clone)]
pub struct SourceHandle {
    /// Observations, dead letters and checkpoints to the engine, in order.
    pub ingest: flume::Sender<IngestMsg>,
    /// Acknowledgements: never queued behind data.
    pub control: flume::Sender<Control>,
    /// Shared counters.
    pub counters: Arc<SourceCounters>,
    /// Event-time limits live sources apply to what they decode.
    pub time: TimeConfig,
    /// Ingest times for live sources.
    pub stamps: Arc<IngestStamps>,
}

impl SourceHandle {
    /// Admits a live reading: its observation time against its ingest time.
    pub fn admit_live(&self, o: &Observation) -> Result<(), TimeError> {
        self.time
            .admit(o.observed_at, o.ingested_at, Reference::IngestTime)
    }

    /// Counts received records.
    pub fn received(&self, n: usize) {
        self.counters.received.fetch_add(n as u64, Relaxed);
    }

    /// Counts and logs dead letters; `None` when there are none.
    fn dead_letter_msg(&self, dls: Vec<DeadLetter>) -> Option<IngestMsg> {
        if dls.is_empty() {
            return None;
        }
        self.counters
            .dead_letters
            .fetch_add(dls.len() as u64, Relaxed);
        for d in &dls {
            tracing::debug!(source = %d.source, reason = %d.reason, "dead letter");
        }
        Some(IngestMsg::DeadLetters(dls))
    }

    /// Records dead letters (counted, then archived in order with the source's data),
    /// from a thread that may block.
    pub fn dead_letters(&self, dls: Vec<DeadLetter>) -> Result<(), Closed> {
        match self.dead_letter_msg(dls) {
            Some(m) => self.ingest.send(m).map_err(|_| Closed),
            None => Ok(()),
        }
    }

    /// Records dead letters from async code: waits for queue space without blocking the
    /// runtime's worker thread.
    pub async fn dead_letters_async(&self, dls: Vec<DeadLetter>) -> Result<(), Closed> {
        match self.dead_letter_msg(dls) {
            Some(m) => self.ingest.send_async(m).await.map_err(|_| Closed),
            None => Ok(()),
        }
    }

    /// Sends a batch of observations (nothing for an empty one), waiting for queue space.
    pub fn send(&self, batch: Vec<Observation>) -> Result<(), Closed> {
        if batch.is_empty() {
            return Ok(());
        }
        self.ingest
            .send(IngestMsg::Batch(batch))
            .map_err(|_| Closed)
    }

    /// [`SourceHandle::send`] from async code.
    pub async fn send_async(&self, batch: Vec<Observation>) -> Result<(), Closed> {
        if batch.is_empty() {
            return Ok(());
        }
        self.ingest
            .send_async(IngestMsg::Batch(batch))
            .await
            .map_err(|_| Closed)
    }

    /// Counts a decided checkpoint.
    pub fn count_checkpoint(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Committed => &self.counters.checkpoints_committed,
            Outcome::Failed(_) => &self.counters.checkpoints_failed,
        }
        .fetch_add(1, Relaxed);
    }
}
