//! The warehouse's `audit` table: the catalog's audit trail (acknowledgements, silences,
//! imports: who, when, from where), copied in id order.
//!
//! Where it sits: beside the alert archiver, off the alert path. The audit trail is
//! written to the catalog by whoever acts (the CLI, the HTTP API, an import); `run` and
//! `replay` copy new rows into the warehouse every `warehouse.roll_interval` and when
//! they stop, so SQL over the warehouse can join who acknowledged what with the alerts.
//! Exactly once, like the alerts: each batch is published under the id of its first row
//! ([`position_tag`]) and the copy's cursor (`warehouse-audit`, kept with the notifier
//! cursors) moves after the file is in place; a crash in between leaves a file past the
//! cursor, which the next start removes and writes again.

use super::recovery::{position_tag, remove_uncommitted};
use super::{ParquetSink, WarehouseConfig, WarehouseError};
use crate::store::{AlertStore, DeliveryAttempt, DeliveryOutcome, ReferenceStore};
use vitalwatch_core::model::Timestamp;

/// The cursor (and delivery records) of the copy in the catalog.
pub const AUDIT_CONSUMER: &str = "warehouse-audit";

/// The stream name of the audit trail in warehouse file names.
const STREAM: &str = "audit";

/// Audit rows per file, at most.
const BATCH: usize = 50_000;

/// Copies the catalog's audit trail into the warehouse's `audit` table.
#[derive(Debug)]
pub struct AuditCopier {
    config: WarehouseConfig,
    /// Files a crashed copy published past its cursor are removed once, at the first copy.
    recovered: bool,
}

impl AuditCopier {
    /// A copier writing under `config.root`.
    pub fn new(config: WarehouseConfig) -> Self {
        AuditCopier {
            config,
            recovered: false,
        }
    }

    /// Copies every audit row past the cursor; returns how many it copied.
    pub fn copy<S>(&mut self, store: &mut S) -> Result<u64, WarehouseError>
    where
        S: ReferenceStore + AlertStore + ?Sized,
    {
        let mut cursor = store.cursor(AUDIT_CONSUMER)?;
        if !self.recovered {
            let removed = remove_uncommitted(&self.config.root, STREAM, Some(cursor))?;
            if removed.uncommitted > 0 {
                tracing::info!(
                    files = removed.uncommitted,
                    "removed audit files published after the copy's cursor; copying them again"
                );
            }
            self.recovered = true;
        }
        let mut copied = 0;
        loop {
            let rows = store.audit_after(cursor, BATCH)?;
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                return Ok(copied);
            };
            let (first, last) = (first.0, last.0);
            let mut sink = ParquetSink::new(self.config.clone())?.publish_only_at_checkpoints();
            sink.write_audit(&rows)?;
            sink.checkpoint(Some(&position_tag(STREAM, first)))?;
            store.record_delivery(&DeliveryAttempt {
                consumer: AUDIT_CONSUMER.into(),
                first_seq: first,
                last_seq: last,
                attempt: 1,
                at: Timestamp::from_datetime(chrono::Utc::now()),
                outcome: DeliveryOutcome::Delivered,
                error: None,
            })?;
            copied += rows.len() as u64;
            cursor = last;
        }
    }
}
