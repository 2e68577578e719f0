//! Live bodies: what a source that receives batches over a connection (the HTTP source
//! now; MQTT, MLLP later) does with each one.
//!
//! Where it sits: between the transport and the [`SourceHandle`]. The transport reads a
//! body; [`SourceHandle::ingest_body`] splits it into records (one JSON object, an array,
//! or newline-delimited JSON), decodes each (classic or canonical), gives untimed records
//! their own ingest stamp, admits each against its ingest time, turns every rejected
//! record into a dead letter with its reason, counts, and sends the accepted ones on.
//! [`SourceHandle::wait_durable`] then waits, if the sender asked, for a checkpoint.

use std::time::Duration;

use serde::Serialize;
use vitalwatch_core::codec::{InputFormat, decode_record, split_body};
use vitalwatch_core::model::{DeadLetter, Observation, Timestamp};

use super::{Closed, IngestMsg, Outcome, SourceHandle, Tracker, stamp_untimed, wall_now};

/// A record that was not accepted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// 1-based position of the record in the body (0: the body as a whole).
    pub record: usize,
    /// Why, in words.
    pub reason: String,
}

/// What became of a body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestReply {
    /// Records accepted (sent on to the engine).
    pub accepted: usize,
    /// Records rejected (each one a dead letter too).
    pub rejected: Vec<Rejected>,
}

/// How long a durable wait may take before the source gives up on it.
const DURABLE_WAIT: Duration = Duration::from_secs(60);

impl SourceHandle {
    /// Decodes, admits and sends one body's records; `source` names the transport in dead
    /// letters (`http`).
    pub async fn ingest_body(
        &self,
        body: &[u8],
        format: InputFormat,
        source: &str,
    ) -> Result<IngestReply, Closed> {
        let wall = wall_now();
        let records = split_body(body);
        self.received(records.len());
        let mut accepted = Vec::with_capacity(records.len());
        let mut rejected = Vec::new();
        let mut dead = Vec::new();
        for r in &records {
            // Each record its own ingest time: two records without a time of their own
            // are two readings, not one.
            match self.decode_live(r.bytes, format, wall) {
                Ok(o) => accepted.push(o),
                Err(reason) => {
                    dead.push(DeadLetter::new(
                        wall,
                        format!("{source}:record {}", r.index),
                        reason.clone(),
                        r.bytes,
                    ));
                    rejected.push(Rejected {
                        record: r.index,
                        reason,
                    });
                }
            }
        }
        if records.is_empty() {
            rejected.push(Rejected {
                record: 0,
                reason: "empty body: send a JSON object, a JSON array or newline-delimited JSON"
                    .into(),
            });
            dead.push(DeadLetter::new(
                wall,
                source.into(),
                "empty body".into(),
                b"",
            ));
        }
        self.dead_letters_async(dead).await?;
        let n = accepted.len();
        self.send_async(accepted).await?;
        Ok(IngestReply {
            accepted: n,
            rejected,
        })
    }

    /// Decodes one live record received at `ingested` (wall time, or the time a broker
    /// stamped it), gives it its own ingest stamp if it carries no time, and admits it
    /// against its ingest time; `Err` is the dead letter's reason.
    pub fn decode_live(
        &self,
        bytes: &[u8],
        format: InputFormat,
        ingested: Timestamp,
    ) -> Result<Observation, String> {
        let mut o = decode_record(bytes, format, ingested).map_err(|e| e.to_string())?;
        stamp_untimed(&mut o, ingested, || self.stamps.next(ingested));
        self.admit_live(&o).map_err(|e| e.to_string())?;
        Ok(o)
    }

    /// A body too big to take: its head (up to a dead letter's payload bound) is kept as a
    /// dead letter with `reason`.
    pub async fn oversize_body(
        &self,
        head: &[u8],
        source: &str,
        reason: &str,
    ) -> Result<(), Closed> {
        self.dead_letters_async(vec![DeadLetter::new(
            wall_now(),
            source.into(),
            reason.into(),
            head,
        )])
        .await
    }

    /// Waits until everything this handle's source sent so far is durable (alert store
    /// committed, warehouse files published), and counts the outcome. Blocks: call it
    /// from a thread that may (`spawn_blocking` in async code). `Err` when the pipeline
    /// stopped, or did not answer within a minute.
    pub fn wait_durable(&self) -> Result<Outcome, Closed> {
        let mut tracker = Tracker::default();
        let cp = tracker.mark(None, ());
        self.ingest
            .send(IngestMsg::Checkpoint(cp))
            .map_err(|_| Closed)?;
        let (_, outcome) = tracker.drain(DURABLE_WAIT).pop().ok_or(Closed)?;
        self.count_checkpoint(&outcome);
        Ok(outcome)
    }
}
