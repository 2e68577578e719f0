//! The store seams: what the pipeline keeps outside its own memory, as two traits every
//! backend implements (SQLite now, the embedded default; PostgreSQL next).
//!
//! - [`ReferenceStore`]: patients and versioned threshold tables — the role HBase played
//!   in the classic design. Read once at start-up and compiled into the engine's index;
//!   never queried per reading.
//! - [`AlertStore`]: what must survive a crash — every alert event (keyed by its
//!   idempotency key, so re-processing records nothing twice), the open alerts a restart
//!   takes back, the **outbox** (written in the same transaction as the events, one row
//!   per new event, with a sequence number), each notifier's delivery cursor and attempts,
//!   and the committed positions of resumable sources.
//!
//! [`contract`] is the test suite every backend must pass.

pub mod contract;

use vitalwatch_core::alert::AlertEvent;
use vitalwatch_core::model::{Patient, Timestamp};
use vitalwatch_core::reference::{ThresholdBand, ThresholdTable};

/// The fields (catalog column names) in which two records of one patient differ.
pub(crate) fn changed_fields(old: &Patient, new: &Patient) -> Vec<&'static str> {
    let mut f = Vec::new();
    for (name, differs) in [
        ("patientname", old.name != new.name),
        ("patientaddress", old.address != new.address),
        ("phone_number", old.phone != new.phone),
        ("admitted_ward", old.ward != new.ward),
        ("age", old.age != new.age),
        ("spo2_scale", old.spo2_scale != new.spo2_scale),
        ("other_details", old.other_details != new.other_details),
    ] {
        if differs {
            f.push(name);
        }
    }
    f
}

/// A threshold band from its stored columns (the layout is the same in every backend).
#[allow(clippy::too_many_arguments)]
pub(crate) fn stored_band(
    ref_id: u32,
    attribute: String,
    low_age_limit: u32,
    high_age_limit: u32,
    low_range_value: f64,
    high_range_value: f64,
    alert_flag: bool,
    alert_message: String,
    priority: &str,
    patient_id: Option<String>,
) -> Result<ThresholdBand, StoreError> {
    let vital = vitalwatch_core::model::Vital::from_name(&attribute).ok_or_else(|| {
        StoreError::Corrupt(format!("band {ref_id}: unknown attribute {attribute}"))
    })?;
    let priority = vitalwatch_core::alert::Priority::parse(priority)
        .ok_or_else(|| StoreError::Corrupt(format!("band {ref_id}: priority {priority}")))?;
    Ok(ThresholdBand {
        ref_id,
        attribute,
        vital,
        low_age_limit,
        high_age_limit,
        low_range_value,
        high_range_value,
        alert_flag,
        alert_message,
        priority,
        patient_id: patient_id.map(|p| vitalwatch_core::model::PatientId(p.into())),
    })
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("{backend} database error")]
    Backend {
        /// Which backend (`sqlite`, `postgres`).
        backend: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored row could not be understood (written by a newer version?).
    #[error("stored row is invalid: {0}")]
    Corrupt(String),
    /// An alert event could not be (de)serialized.
    #[error("cannot read or write an alert event as JSON")]
    Json(#[from] serde_json::Error),
}

/// A summary row of `thresholds list --versions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdVersion {
    /// Version number.
    pub version: u32,
    /// When it was imported.
    pub imported_at: Timestamp,
    /// Where it came from (file name).
    pub source: String,
    /// How many bands it has.
    pub bands: u32,
}

/// An alert as the store keeps it: the latest event, plus counts.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAlert {
    /// The latest event of the alert.
    pub latest: AlertEvent,
    /// How many events it has had.
    pub events: u32,
}

/// One row of the audit trail: who did what to which record, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When.
    pub at: Timestamp,
    /// Who or what (a person, or the import and its file).
    pub actor: String,
    /// What (`patient added`, `patient updated`, ...).
    pub action: String,
    /// Which record (a patient id, an alert id).
    pub subject: String,
    /// Details: for updates, the changed fields (names only, never values).
    pub detail: String,
}

/// What a patient import changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PatientImport {
    /// New patients.
    pub added: usize,
    /// Existing patients whose record changed, with the fields that changed.
    pub updated: Vec<(vitalwatch_core::model::PatientId, Vec<&'static str>)>,
    /// Patients already in the store exactly as imported.
    pub unchanged: usize,
}

/// One outbox row: an alert event waiting for (or past) its notifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Position in the outbox: strictly increasing in commit order.
    pub seq: u64,
    /// The event's idempotency key ([`AlertEvent::idempotency_key`]).
    pub key: String,
    /// The event as JSON (the alert-log line).
    pub body: String,
}

/// How one delivery attempt of a notifier ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Delivered: the cursor moves past the batch.
    Delivered,
    /// A transient failure: the batch will be tried again.
    Retrying,
    /// A permanent failure (or retries exhausted): recorded, and the cursor moves on.
    GaveUp,
}

impl DeliveryOutcome {
    /// From its stored (lower-case) name.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "delivered" => Ok(DeliveryOutcome::Delivered),
            "retrying" => Ok(DeliveryOutcome::Retrying),
            "gave_up" => Ok(DeliveryOutcome::GaveUp),
            other => Err(StoreError::Corrupt(format!("delivery outcome {other:?}"))),
        }
    }

    /// Lower-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retrying => "retrying",
            DeliveryOutcome::GaveUp => "gave_up",
        }
    }
}

/// One attempt of one notifier at a run of outbox entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The notifier (its config name).
    pub consumer: String,
    /// First outbox sequence number of the batch.
    pub first_seq: u64,
    /// Last outbox sequence number of the batch.
    pub last_seq: u64,
    /// 1 for the first try of this batch.
    pub attempt: u32,
    /// When.
    pub at: Timestamp,
    /// How it ended.
    pub outcome: DeliveryOutcome,
    /// The error, for failures.
    pub error: Option<String>,
}

/// A silence: a patient's alert notifications held back for a while (a procedure, a
/// known artefact). It never holds back a new or escalated high-priority alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    /// Its number (0 before it is stored).
    pub id: u64,
    /// The patient.
    pub patient_id: String,
    /// From when.
    pub starts_at: Timestamp,
    /// Until when.
    pub ends_at: Timestamp,
    /// Who set it.
    pub by: String,
    /// Why.
    pub reason: String,
}

impl Silence {
    /// Whether it holds back `e` at `now`: an event of its patient while it lasts, except
    /// a new or escalated high-priority alarm.
    pub fn holds_back(&self, e: &AlertEvent, now: Timestamp) -> bool {
        use vitalwatch_core::alert::{AlertEventKind, Priority};
        self.patient_id == e.patient_id.as_str()
            && self.starts_at <= now
            && now < self.ends_at
            && !(e.priority == Priority::High
                && matches!(
                    e.event,
                    AlertEventKind::Triggered | AlertEventKind::Escalated
                ))
    }
}

/// Where a resumable source stands: everything before `offset` is durable downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// The source (`file:<absolute path>`).
    pub source: String,
    /// The number of its last committed checkpoint (names its warehouse files).
    pub checkpoint: u64,
    /// Where to resume (a byte offset for files).
    pub offset: u64,
    /// What identifies the input (for files, a hash of its first bytes): a different
    /// input under the same name starts from the beginning.
    pub fingerprint: String,
    /// When it was committed.
    pub at: Timestamp,
}

/// Patients and versioned threshold tables.
pub trait ReferenceStore {
    /// Every patient, ordered by id (numerically where ids are numbers).
    fn patients(&self) -> Result<Vec<Patient>, StoreError>;
    /// Inserts or updates patients in one transaction, with an audit row per change.
    fn import_patients(
        &mut self,
        patients: &[Patient],
        source: &str,
        at: Timestamp,
    ) -> Result<PatientImport, StoreError>;
    /// The newest threshold table (version 0 and no bands when none was imported).
    fn thresholds(&self) -> Result<ThresholdTable, StoreError>;
    /// One version of the threshold table.
    fn thresholds_version(&self, version: u32) -> Result<ThresholdTable, StoreError>;
    /// Stores bands as a new version (an identical table keeps the current one) and
    /// returns its number.
    fn import_thresholds(
        &mut self,
        bands: &[ThresholdBand],
        source: &str,
        at: Timestamp,
    ) -> Result<u32, StoreError>;
    /// Every version, oldest first.
    fn threshold_versions(&self) -> Result<Vec<ThresholdVersion>, StoreError>;
    /// The audit trail, newest first.
    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Up to `limit` audit rows with an id above `after`, oldest first, with their ids.
    /// Ids grow in commit order (a reader that saw id N never later finds a new row below
    /// it), so a cursor over them misses nothing.
    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError>;
}

/// Alert events and everything that must survive a crash with them.
pub trait AlertStore: Send {
    /// Records alert events, each with its JSON encoding, in one transaction, and for each
    /// new one an outbox row. Returns, per event, its outbox sequence number, or `None`
    /// when the event was already recorded (re-processed input): notify only on `Some`.
    fn record_alert_events(
        &mut self,
        events: &[(&AlertEvent, &str)],
    ) -> Result<Vec<Option<u64>>, StoreError>;
    /// Alerts, newest first: all, or only those not resolved.
    fn alerts(&self, only_open: bool, limit: usize) -> Result<Vec<StoredAlert>, StoreError>;
    /// One alert's latest event, if it exists.
    fn alert(&self, alert_id: &str) -> Result<Option<AlertEvent>, StoreError>;
    /// The latest event of the newest open alert of each patient and rule key: what a
    /// restarted engine takes back.
    fn open_alerts_to_restore(&self) -> Result<Vec<AlertEvent>, StoreError>;
    /// Up to `limit` outbox entries after sequence number `after`, in order.
    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;
    /// The sequence number of `event`'s entry (by its identity: alert id, event kind,
    /// identity time), if it comes after `after`.
    fn outbox_seq(&self, event: &AlertEvent, after: u64) -> Result<Option<u64>, StoreError>;
    /// The last sequence number a notifier has finished with (0 for a new one).
    fn cursor(&self, consumer: &str) -> Result<u64, StoreError>;
    /// Records delivery attempts in one transaction; each that is not `Retrying` moves its
    /// notifier's cursor to its `last_seq` (never backwards).
    fn record_deliveries(&mut self, attempts: &[DeliveryAttempt]) -> Result<(), StoreError>;

    /// Records one delivery attempt (see [`AlertStore::record_deliveries`]).
    fn record_delivery(&mut self, attempt: &DeliveryAttempt) -> Result<(), StoreError> {
        self.record_deliveries(std::slice::from_ref(attempt))
    }
    /// A notifier's attempts, newest first.
    fn deliveries(&self, consumer: &str, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError>;
    /// Where a resumable source stands, if it ever committed.
    fn source_position(&self, source: &str) -> Result<Option<SourcePosition>, StoreError>;
    /// Commits source positions, all or none (one transaction): a source that reads
    /// several partitions records them with its checkpoint number as one decision.
    fn commit_source_positions(&mut self, positions: &[SourcePosition]) -> Result<(), StoreError>;
    /// Commits a source's position (replacing the previous one).
    fn commit_source_position(&mut self, position: &SourcePosition) -> Result<(), StoreError> {
        self.commit_source_positions(std::slice::from_ref(position))
    }
    /// Forgets a source's position (it starts over).
    fn forget_source_position(&mut self, source: &str) -> Result<(), StoreError>;

    /// Stores a silence and its audit row (`audit`) in one transaction; returns its id.
    fn add_silence(&mut self, silence: &Silence, audit: &AuditEntry) -> Result<u64, StoreError>;
    /// Silences still in force at `now` (every silence with `None`), newest first.
    fn silences(&self, now: Option<Timestamp>) -> Result<Vec<Silence>, StoreError>;
    /// Appends one row to the audit trail (an acknowledgement, a silence).
    fn record_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError>;
}
