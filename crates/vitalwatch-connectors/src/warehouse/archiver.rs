//! The warehouse's `alerts` table as an outbox consumer.
//!
//! Where it sits: a notifier like any other, so every alert event recorded in the alert
//! store reaches the warehouse exactly once, whatever crashes in between. Each batch is
//! published under the outbox position of its first entry ([`position_tag`]); a restart
//! removes files past the cursor the store recorded and writes them again.

use std::time::Duration;

use super::recovery::{position_tag, remove_uncommitted};
use super::{ParquetSink, WarehouseConfig};
use crate::notify::{Notifier, NotifyError, OutboxItem};
use crate::store::AlertStore;

/// The stream name of the outbox in warehouse file names.
const STREAM: &str = "outbox";

/// Writes alert events from the outbox to the warehouse's `alerts` table.
#[derive(Debug)]
pub struct AlertArchiver {
    config: WarehouseConfig,
    sink: ParquetSink,
}

impl AlertArchiver {
    /// An archiver writing under `config.root`.
    pub fn new(config: WarehouseConfig) -> Result<Self, super::WarehouseError> {
        let sink = ParquetSink::new(config.clone())?.publish_only_at_checkpoints();
        Ok(AlertArchiver { config, sink })
    }
}

impl Notifier for AlertArchiver {
    fn name(&self) -> &str {
        "warehouse"
    }

    fn max_batch(&self) -> usize {
        // Few, large files (a flood of alerts becomes a handful per hour), but bounded:
        // every waiting event is held in memory (about 1.5 KB each with its text).
        50_000
    }

    fn linger(&self) -> Duration {
        self.config.roll_interval
    }

    fn resume(&mut self, cursor: u64, _store: &dyn AlertStore) -> Result<u64, NotifyError> {
        let removed = remove_uncommitted(&self.config.root, STREAM, Some(cursor))
            .map_err(|e| NotifyError::Transient(e.to_string()))?;
        if removed.uncommitted > 0 {
            tracing::info!(
                files = removed.uncommitted,
                "removed alert files published after the last recorded delivery; writing them again"
            );
        }
        Ok(cursor)
    }

    fn deliver(&mut self, batch: &[OutboxItem]) -> Result<(), NotifyError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let events = batch
            .iter()
            .map(OutboxItem::event)
            .collect::<Result<Vec<_>, _>>()?;
        let tag = position_tag(STREAM, first.seq);
        let r = self
            .sink
            .write_alert_events(events)
            .and_then(|()| self.sink.checkpoint(Some(&tag)));
        if let Err(e) = r {
            // Start the batch afresh on the retry: remove what of it was published (one
            // partition may have made it), and a fresh sink holds none of its rows. (The
            // failed sink's hidden files are removed at the next start.)
            let _ = remove_uncommitted(&self.config.root, STREAM, Some(first.seq - 1));
            self.sink = ParquetSink::new(self.config.clone())
                .map_err(|e| NotifyError::Transient(e.to_string()))?
                .publish_only_at_checkpoints();
            return Err(NotifyError::Transient(e.to_string()));
        }
        Ok(())
    }
}
