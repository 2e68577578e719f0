//! The catalog: reference data and alert state in SQLite (the embedded default).
//!
//! Fills the role HBase played in the classic design (thresholds and patients for quick
//! lookups) and keeps what must survive a restart: every alert and each of its lifecycle
//! events. The engine never queries it per reading: the pipeline loads patients and the
//! current threshold version once and compiles them into the engine's in-memory index.
//!
//! Threshold bands are versioned: each import adds a version and keeps the old ones, so
//! the `ref_id` + `ref_version` an alert records always names the row that fired it.
//! Alert events live in the outbox, which is their history too: each is keyed by (alert
//! id, event, time), so recording a re-processed event is a no-op and queues no second
//! notification, and its fields are stored once, compressed ([`history`] has the layout
//! and why, [`events`] the encoding). `alerts` holds each alert's current state and points at its latest event.
//! Notifiers read the outbox from their own cursor (`outbox_cursors`,
//! `delivery_attempts`); resumable sources keep `source_positions`.

mod events;
mod history;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use vitalwatch_core::alert::AlertEvent;

use crate::store::{
    AlertStore, DeliveryAttempt, DeliveryOutcome, OutboxEntry, ReferenceStore, Silence,
    SourcePosition, StoreError, changed_fields, stored_band,
};
pub use crate::store::{AuditEntry, PatientImport, StoredAlert, ThresholdVersion};
use vitalwatch_core::model::{Patient, PatientId, Spo2Scale, Timestamp};
use vitalwatch_core::reference::{ThresholdBand, ThresholdTable};

/// A catalog operation that failed: the store error (kept under its old name).
pub type CatalogError = StoreError;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend {
            backend: "sqlite",
            source: Box::new(e),
        }
    }
}

/// The SQLite catalog.
#[derive(Debug)]
pub struct SqliteCatalog {
    conn: Connection,
    texts: history::Compressor,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS patients (
    patient_id     TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    address        TEXT NOT NULL,
    phone          TEXT NOT NULL,
    ward           TEXT NOT NULL,
    age            INTEGER NOT NULL,
    spo2_scale     INTEGER NOT NULL DEFAULT 1,
    other_details  TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS threshold_versions (
    version      INTEGER PRIMARY KEY,
    imported_at  INTEGER NOT NULL,
    source       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS threshold_bands (
    version          INTEGER NOT NULL REFERENCES threshold_versions(version),
    ref_id           INTEGER NOT NULL,
    attribute        TEXT NOT NULL,
    low_age_limit    INTEGER NOT NULL,
    high_age_limit   INTEGER NOT NULL,
    low_range_value  REAL NOT NULL,
    high_range_value REAL NOT NULL,
    alert_flag       INTEGER NOT NULL,
    alert_message    TEXT NOT NULL,
    priority         TEXT NOT NULL,
    patient_id       TEXT,
    PRIMARY KEY (version, ref_id)
);
CREATE TABLE IF NOT EXISTS audit_log (
    at       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_cursors (
    consumer    TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    consumer   TEXT NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    outcome    TEXT NOT NULL,
    error      TEXT
);
CREATE INDEX IF NOT EXISTS delivery_attempts_consumer ON delivery_attempts(consumer);
CREATE TABLE IF NOT EXISTS silences (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id  TEXT NOT NULL,
    starts_at   INTEGER NOT NULL,
    ends_at     INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS source_positions (
    source       TEXT PRIMARY KEY,
    checkpoint   INTEGER NOT NULL,
    offset       INTEGER NOT NULL,
    fingerprint  TEXT NOT NULL,
    updated_at   INTEGER NOT NULL
);
"#;

/// The alert tables of the second layout (one outbox row per event, with its text): what
/// the first release's catalog is upgraded to before [`history::migrate_from_rows`] takes
/// it on. Kept as that release wrote them: they are what the upgrade reads.
const ROWS_LAYOUT: &str = r#"
CREATE TABLE IF NOT EXISTS outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id  TEXT NOT NULL,
    event     TEXT NOT NULL,
    at        INTEGER NOT NULL,
    priority  TEXT NOT NULL,
    state     TEXT NOT NULL,
    actor     TEXT,
    body      TEXT NOT NULL,
    UNIQUE (alert_id, event, at)
);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id     TEXT PRIMARY KEY,
    patient_id   TEXT NOT NULL,
    rule_key     TEXT NOT NULL,
    priority     TEXT NOT NULL,
    state        TEXT NOT NULL,
    opened_at    INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    latest_seq   INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Brings a catalog of the first release (alert history in `alert_events`, each alert's
/// latest event as text in `alerts.latest_event`) to this layout, in one transaction: the
/// outbox becomes the history (the first release kept only each alert's latest event in
/// full), and every notifier's cursor is set past it, because the first release had
/// already delivered it. A no-op on a new or current catalog.
fn migrate_v1(conn: &Connection) -> Result<(), StoreError> {
    let old: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('alerts') WHERE name = 'latest_event'",
        [],
        |r| r.get(0),
    )?;
    if !old {
        return Ok(());
    }
    tracing::info!("upgrading the catalog: alert history moves into the outbox");
    conn.execute_batch(&format!(
        "BEGIN;
         ALTER TABLE alerts RENAME TO alerts_v1;
         DROP INDEX IF EXISTS alerts_state;
         {ROWS_LAYOUT}
         {SCHEMA}
         INSERT INTO outbox (alert_id, event, at, priority, state, actor, body)
           SELECT alert_id, json_extract(latest_event, '$.event'), updated_at, priority, state,
                  json_extract(latest_event, '$.acknowledged_by'), latest_event
           FROM alerts_v1 ORDER BY updated_at, alert_id;
         INSERT INTO alerts (alert_id, patient_id, rule_key, priority, state, opened_at, updated_at, latest_seq)
           SELECT a.alert_id, a.patient_id, a.rule_key, a.priority, a.state, a.opened_at, a.updated_at,
                  (SELECT max(seq) FROM outbox o WHERE o.alert_id = a.alert_id)
           FROM alerts_v1 a;
         INSERT OR REPLACE INTO outbox_cursors (consumer, seq, updated_at)
           SELECT c.consumer, (SELECT coalesce(max(seq), 0) FROM outbox), 0
           FROM (SELECT 'jsonl' AS consumer UNION ALL SELECT 'console' UNION ALL SELECT 'warehouse') c;
         DROP TABLE alerts_v1;
         DROP TABLE IF EXISTS alert_events;
         COMMIT;"
    ))?;
    Ok(())
}

/// Brings a catalog with one outbox row per event to the compact layout ([`history`]), in
/// one transaction. A no-op on a new or current catalog.
fn migrate_rows(conn: &Connection) -> Result<(), StoreError> {
    let rows = |conn: &Connection| -> Result<bool, StoreError> {
        Ok(conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
            [],
            |r| r.get(0),
        )?)
    };
    if !rows(conn)? {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    // Asked again under the write lock: another process may have upgraded it meanwhile.
    if !rows(&tx)? {
        return Ok(());
    }
    tracing::info!("upgrading the catalog: the outbox is stored compressed (once)");
    history::migrate_from_rows(&tx)?;
    tx.commit()?;
    // The old texts' pages are free now; give them back to the file system. Not needed
    // for anything to work (SQLite reuses free pages), so a busy catalog just says so.
    if let Err(e) = conn.execute_batch("VACUUM") {
        tracing::warn!(error = %e, "catalog upgraded; its freed pages stay in the file and are reused by new alerts");
    }
    Ok(())
}

/// A descriptor of the database file at `path`, opened once per process and never
/// closed. Never closed because POSIX advisory locks belong to the process and the file,
/// not to a descriptor: closing any descriptor of the file would drop the locks every
/// SQLite connection of this process holds on it (SQLite's "How To Corrupt An SQLite
/// Database File", §2.2). One descriptor per catalog path for the process's life.
fn database_file(path: &Path) -> std::io::Result<std::sync::Arc<std::fs::File>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static FILES: OnceLock<Mutex<HashMap<std::path::PathBuf, Arc<std::fs::File>>>> =
        OnceLock::new();
    let mut files = FILES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(f) = files.get(path) {
        return Ok(f.clone());
    }
    let f = Arc::new(std::fs::File::open(path)?);
    files.insert(path.to_path_buf(), f.clone());
    Ok(f)
}

impl SqliteCatalog {
    /// Opens (creating if needed) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        Self::init(Connection::open(path)?)
    }

    /// A throw-away in-memory catalog.
    pub fn open_in_memory() -> Result<Self, CatalogError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, CatalogError> {
        // WAL: the alert writer and a `patients list` from another process do not block
        // each other; NORMAL sync is durable across process crashes, which is the
        // guarantee the pipeline relies on.
        // 16 KiB pages for a new catalog (an existing one keeps its own): an alert event's
        // text and its neighbours share a page, fewer pages per insert.
        conn.pragma_update(None, "page_size", 16_384)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // 32 MiB of page cache: the alert indexes stay in memory for a busy ward.
        conn.pragma_update(None, "cache_size", -32_768)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate_v1(&conn)?;
        migrate_rows(&conn)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(history::SCHEMA)?;
        Ok(SqliteCatalog {
            conn,
            texts: history::Compressor::new(),
        })
    }

    /// Stops SQLite from checkpointing the WAL inside commits. A checkpoint writes and
    /// fsyncs the database file; inside the alert writer's commit that stalled alert
    /// delivery for milliseconds once a second. Pair it with [`SqliteCatalog::checkpoint`]
    /// on another connection.
    pub fn disable_autocheckpoint(&self) -> Result<(), CatalogError> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Copies committed WAL pages into the database without blocking writers (PASSIVE),
    /// and flushes what it copied to the disk.
    ///
    /// SQLite fsyncs the database file only when a checkpoint, once done, finds nothing
    /// committed after the frames it copied, which a PASSIVE one under a writer that never
    /// pauses never does: in an alert flood every copied page (140 MB after 2 M messages)
    /// stayed unwritten until the last connection closed, whose fsync then took 0.2 s
    /// after all other work had ended. Synced here (fdatasync, no SQLite lock taken), the
    /// writes overlap the work and the last fsync finds only the last interval's pages.
    /// (The pragma's counts cannot tell whether SQLite synced: they are taken before the
    /// copy. Syncing a file SQLite has just synced costs a system call.) Durability is
    /// unchanged: a committed transaction is in the synced WAL either way.
    pub fn checkpoint(&self) -> Result<(), CatalogError> {
        // Frames checkpointed (the third column): 0 with nothing to copy, -1 when the
        // database is not in WAL mode (in memory).
        let copied: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(2))?;
        match self.conn.path().filter(|p| !p.is_empty()) {
            Some(path) if copied > 0 => database_file(Path::new(path))
                .and_then(|f| f.sync_data())
                .map_err(|e| StoreError::Backend {
                    backend: "sqlite",
                    source: Box::new(std::io::Error::new(
                        e.kind(),
                        format!("cannot sync {path}: {e}"),
                    )),
                }),
            _ => Ok(()),
        }
    }

    /// Whether the catalog has no patients and no thresholds yet (a fresh data directory).
    pub fn is_empty(&self) -> Result<bool, CatalogError> {
        let n: i64 = self.conn.query_row(
            "SELECT (SELECT COUNT(*) FROM patients) + (SELECT COUNT(*) FROM threshold_versions)",
            [],
            |r| r.get(0),
        )?;
        Ok(n == 0)
    }
}

impl ReferenceStore for SqliteCatalog {
    /// Inserts or replaces patients, all in one transaction.
    fn import_patients(
        &mut self,
        patients: &[Patient],
        source: &str,
        at: Timestamp,
    ) -> Result<PatientImport, CatalogError> {
        let existing: std::collections::HashMap<String, Patient> = self
            .patients()?
            .into_iter()
            .map(|p| (p.patient_id.0.to_string(), p))
            .collect();
        let mut report = PatientImport::default();
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare(
                "INSERT OR REPLACE INTO patients (patient_id, name, address, phone, ward, age, spo2_scale, other_details)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut audit = tx.prepare(
                "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for p in patients {
                let (action, fields) = match existing.get(p.patient_id.as_str()) {
                    None => ("patient added", Vec::new()),
                    Some(old) => {
                        let changed = changed_fields(old, p);
                        if changed.is_empty() {
                            report.unchanged += 1;
                            continue;
                        }
                        ("patient updated", changed)
                    }
                };
                st.execute(params![
                    p.patient_id.as_str(),
                    p.name,
                    p.address,
                    p.phone,
                    p.ward,
                    p.age,
                    p.spo2_scale.number(),
                    p.other_details
                ])?;
                // The audit trail names the fields, never their values (no personal data).
                audit.execute(params![
                    at.micros(),
                    source,
                    action,
                    p.patient_id.as_str(),
                    fields.join(",")
                ])?;
                if fields.is_empty() {
                    report.added += 1;
                } else {
                    report.updated.push((p.patient_id.clone(), fields));
                }
            }
        }
        tx.commit()?;
        Ok(report)
    }

    /// The audit trail, newest first.
    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT at, actor, action, subject, detail FROM audit_log ORDER BY rowid DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok(AuditEntry {
                at: Timestamp(r.get(0)?),
                actor: r.get(1)?,
                action: r.get(2)?,
                subject: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, AuditEntry)>, CatalogError> {
        // SQLite has one writer at a time and audit rows are never deleted: rowids grow
        // in commit order.
        let mut st = self.conn.prepare(
            "SELECT rowid, at, actor, action, subject, detail FROM audit_log
             WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )?;
        let rows = st.query_map([after as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                AuditEntry {
                    at: Timestamp(r.get(1)?),
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    subject: r.get(4)?,
                    detail: r.get(5)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every patient, ordered by id (numerically where ids are numbers).
    fn patients(&self) -> Result<Vec<Patient>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT patient_id, name, address, phone, ward, age, spo2_scale, other_details FROM patients
             ORDER BY CAST(patient_id AS INTEGER), patient_id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(Patient {
                patient_id: PatientId(r.get::<_, String>(0)?.into()),
                name: r.get(1)?,
                address: r.get(2)?,
                phone: r.get(3)?,
                ward: r.get(4)?,
                age: r.get(5)?,
                spo2_scale: if r.get::<_, i64>(6)? == 2 {
                    Spo2Scale::Scale2
                } else {
                    Spo2Scale::Scale1
                },
                other_details: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores bands as a new version and returns its number.
    fn import_thresholds(
        &mut self,
        bands: &[ThresholdBand],
        source: &str,
        at: Timestamp,
    ) -> Result<u32, CatalogError> {
        // An identical table is not a new version: alerts keep naming the one they fired on.
        let current = self.thresholds()?;
        if current.version > 0 && current.bands == bands {
            return Ok(current.version);
        }
        let tx = self.conn.transaction()?;
        let version: u32 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM threshold_versions",
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO threshold_versions (version, imported_at, source) VALUES (?1, ?2, ?3)",
            params![version, at.micros(), source],
        )?;
        {
            let mut st = tx.prepare(
                "INSERT INTO threshold_bands (version, ref_id, attribute, low_age_limit, high_age_limit,
                   low_range_value, high_range_value, alert_flag, alert_message, priority, patient_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for b in bands {
                st.execute(params![
                    version,
                    b.ref_id,
                    b.attribute,
                    b.low_age_limit,
                    b.high_age_limit,
                    b.low_range_value,
                    b.high_range_value,
                    b.alert_flag,
                    b.alert_message,
                    b.priority.as_str(),
                    b.patient_id.as_ref().map(PatientId::as_str)
                ])?;
            }
        }
        tx.commit()?;
        Ok(version)
    }

    /// The current (latest) threshold table; version 0 and no bands if none was imported.
    fn thresholds(&self) -> Result<ThresholdTable, CatalogError> {
        let version: u32 = self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM threshold_versions",
            [],
            |r| r.get(0),
        )?;
        self.thresholds_version(version)
    }

    /// One stored version of the threshold table.
    fn thresholds_version(&self, version: u32) -> Result<ThresholdTable, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT ref_id, attribute, low_age_limit, high_age_limit, low_range_value, high_range_value,
                    alert_flag, alert_message, priority, patient_id
             FROM threshold_bands WHERE version = ?1 ORDER BY ref_id",
        )?;
        let rows = st.query_map([version], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, f64>(4)?,
                r.get::<_, f64>(5)?,
                r.get::<_, bool>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })?;
        let mut bands = Vec::new();
        for row in rows {
            let (ref_id, attribute, la, ha, lv, hv, flag, msg, prio, pid) = row?;
            bands.push(stored_band(
                ref_id, attribute, la, ha, lv, hv, flag, msg, &prio, pid,
            )?);
        }
        Ok(ThresholdTable { version, bands })
    }

    /// Every stored threshold version, oldest first.
    fn threshold_versions(&self) -> Result<Vec<ThresholdVersion>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT v.version, v.imported_at, v.source, COUNT(b.ref_id)
             FROM threshold_versions v LEFT JOIN threshold_bands b ON b.version = v.version
             GROUP BY v.version ORDER BY v.version",
        )?;
        let rows = st.query_map([], |r| {
            Ok(ThresholdVersion {
                version: r.get(0)?,
                imported_at: Timestamp(r.get(1)?),
                source: r.get(2)?,
                bands: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl AlertStore for SqliteCatalog {
    fn record_alert_events(
        &mut self,
        events: &[(&AlertEvent, &str)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        // Immediate: the next sequence number is read and used in one write transaction.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seqs = history::record(&tx, &mut self.texts, events)?;
        tx.commit()?;
        Ok(seqs)
    }

    fn alerts(&self, only_open: bool, limit: usize) -> Result<Vec<StoredAlert>, CatalogError> {
        let sql = format!(
            "SELECT latest_seq, events FROM alerts {} ORDER BY updated_at DESC, alert_id LIMIT ?1",
            if only_open {
                "WHERE state <> 'resolved'"
            } else {
                ""
            }
        );
        Ok(
            history::latest_events(&self.conn, &sql, [limit as i64], |r| r.get::<_, u32>(1))?
                .into_iter()
                .map(|(latest, events)| StoredAlert { latest, events })
                .collect(),
        )
    }

    /// One per (patient, rule key), however many open alerts the store holds (a
    /// classic-profile run leaves every alert open), so start-up stays fast and small.
    /// Alert ids begin with their episode start, so the greatest id is the newest episode.
    fn open_alerts_to_restore(&self) -> Result<Vec<AlertEvent>, CatalogError> {
        Ok(history::latest_events(
            &self.conn,
            "SELECT latest_seq FROM alerts WHERE alert_id IN (
                 SELECT max(alert_id) FROM alerts WHERE state <> 'resolved'
                 GROUP BY patient_id, rule_key)",
            [],
            |_| Ok(()),
        )?
        .into_iter()
        .map(|(e, ())| e)
        .collect())
    }

    fn alert(&self, alert_id: &str) -> Result<Option<AlertEvent>, CatalogError> {
        Ok(history::latest_events(
            &self.conn,
            "SELECT latest_seq FROM alerts WHERE alert_id = ?1",
            [alert_id],
            |_| Ok(()),
        )?
        .pop()
        .map(|(e, ())| e))
    }

    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        history::outbox_after(&self.conn, after, limit)
    }

    fn outbox_seq(&self, event: &AlertEvent, after: u64) -> Result<Option<u64>, StoreError> {
        history::seq_of(&self.conn, event, after)
    }

    fn cursor(&self, consumer: &str) -> Result<u64, StoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM outbox_cursors WHERE consumer = ?1",
                [consumer],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seq.map_or(0, |s| s as u64))
    }

    fn record_deliveries(&mut self, attempts: &[DeliveryAttempt]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO delivery_attempts (consumer, first_seq, last_seq, attempt, at, outcome, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut cursor = tx.prepare_cached(
                "INSERT INTO outbox_cursors (consumer, seq, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(consumer) DO UPDATE SET seq = max(seq, excluded.seq),
                   updated_at = excluded.updated_at",
            )?;
            for a in attempts {
                ins.execute(params![
                    a.consumer,
                    a.first_seq as i64,
                    a.last_seq as i64,
                    a.attempt,
                    a.at.micros(),
                    a.outcome.as_str(),
                    a.error
                ])?;
                if a.outcome != DeliveryOutcome::Retrying {
                    cursor.execute(params![a.consumer, a.last_seq as i64, a.at.micros()])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn deliveries(&self, consumer: &str, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT first_seq, last_seq, attempt, at, outcome, error FROM delivery_attempts
             WHERE consumer = ?1 ORDER BY rowid DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![consumer, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (first, last, attempt, at, outcome, error) = row?;
            let outcome = DeliveryOutcome::parse(&outcome)?;
            out.push(DeliveryAttempt {
                consumer: consumer.to_owned(),
                first_seq: first as u64,
                last_seq: last as u64,
                attempt,
                at: Timestamp(at),
                outcome,
                error,
            });
        }
        Ok(out)
    }

    fn source_position(&self, source: &str) -> Result<Option<SourcePosition>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT checkpoint, offset, fingerprint, updated_at FROM source_positions WHERE source = ?1",
                [source],
                |r| {
                    Ok(SourcePosition {
                        source: source.to_owned(),
                        checkpoint: r.get::<_, i64>(0)? as u64,
                        offset: r.get::<_, i64>(1)? as u64,
                        fingerprint: r.get(2)?,
                        at: Timestamp(r.get(3)?),
                    })
                },
            )
            .optional()?)
    }

    fn commit_source_positions(&mut self, positions: &[SourcePosition]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO source_positions (source, checkpoint, offset, fingerprint, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(source) DO UPDATE SET checkpoint = excluded.checkpoint,
                   offset = excluded.offset, fingerprint = excluded.fingerprint,
                   updated_at = excluded.updated_at",
            )?;
            for p in positions {
                st.execute(params![
                    p.source,
                    p.checkpoint as i64,
                    p.offset as i64,
                    p.fingerprint,
                    p.at.micros()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn forget_source_position(&mut self, source: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM source_positions WHERE source = ?1", [source])?;
        Ok(())
    }

    fn add_silence(&mut self, s: &Silence, audit: &AuditEntry) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO silences (patient_id, starts_at, ends_at, created_by, reason)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                s.patient_id,
                s.starts_at.micros(),
                s.ends_at.micros(),
                s.by,
                s.reason
            ],
        )?;
        let id = tx.last_insert_rowid() as u64;
        insert_audit(&tx, audit)?;
        tx.commit()?;
        Ok(id)
    }

    fn silences(&self, now: Option<Timestamp>) -> Result<Vec<Silence>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, patient_id, starts_at, ends_at, created_by, reason FROM silences
             WHERE ?1 IS NULL OR (starts_at <= ?1 AND ?1 < ends_at) ORDER BY id DESC",
        )?;
        let rows = st.query_map([now.map(|t| t.micros())], |r| {
            Ok(Silence {
                id: r.get::<_, i64>(0)? as u64,
                patient_id: r.get(1)?,
                starts_at: Timestamp(r.get(2)?),
                ends_at: Timestamp(r.get(3)?),
                by: r.get(4)?,
                reason: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn record_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        insert_audit(&self.conn, entry)
    }
}

fn insert_audit(conn: &Connection, a: &AuditEntry) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![a.at.micros(), a.actor, a.action, a.subject, a.detail],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_held_short_by_a_reader_syncs_the_file_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        let mut writer = SqliteCatalog::open(&path).unwrap();
        writer.disable_autocheckpoint().unwrap();
        let checkpointer = SqliteCatalog::open(&path).unwrap();
        let e = crate::store::contract::sample_event();
        assert_eq!(record(&mut writer, std::slice::from_ref(&e)), [true]);
        // A reader on the first snapshot keeps the checkpoint from the WAL's end, as a
        // busy writer does in a flood: the catalog syncs the copied pages itself.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM outbox_texts", [], |r| r.get(0))
            .unwrap();
        let mut again = e.clone();
        again.event = vitalwatch_core::alert::AlertEventKind::Resolved;
        assert_eq!(record(&mut writer, std::slice::from_ref(&again)), [true]);
        let (log, copied): (i64, i64) = checkpointer
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert!(0 < copied && copied < log, "held short: {copied} of {log}");
        checkpointer.checkpoint().unwrap();
        checkpointer.checkpoint().unwrap();
        drop(checkpointer);
        reader.execute_batch("COMMIT").unwrap();
        // The writer carries on after the other connection synced the file and closed.
        let mut third = again;
        third.event = vitalwatch_core::alert::AlertEventKind::Acknowledged;
        assert_eq!(record(&mut writer, &[third]), [true]);
        let reopened = SqliteCatalog::open(&path).unwrap();
        assert_eq!(reopened.outbox_after(0, 10).unwrap().len(), 3);
        // In memory there is no file and no WAL: nothing to do, no error.
        SqliteCatalog::open_in_memory()
            .unwrap()
            .checkpoint()
            .unwrap();
    }

    #[test]
    fn a_first_release_catalog_is_upgraded_without_notifying_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        let e = crate::store::contract::sample_event();
        let body = serde_json::to_string(&e).unwrap();
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE alerts (alert_id TEXT PRIMARY KEY, patient_id TEXT NOT NULL,
                   rule_key TEXT NOT NULL, priority TEXT NOT NULL, state TEXT NOT NULL,
                   opened_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, latest_event TEXT NOT NULL);
                 CREATE INDEX alerts_state ON alerts(state);
                 CREATE TABLE alert_events (alert_id TEXT NOT NULL, event TEXT NOT NULL,
                   at INTEGER NOT NULL, priority TEXT NOT NULL, state TEXT NOT NULL, actor TEXT,
                   PRIMARY KEY (alert_id, event, at));",
            )
            .unwrap();
            old.execute(
                "INSERT INTO alerts VALUES (?1, ?2, ?3, 'high', 'triggered', 1, ?4, ?5)",
                params![
                    e.alert_id.as_str(),
                    e.patient_id.as_str(),
                    e.rule_key,
                    e.identity_time().micros(),
                    body
                ],
            )
            .unwrap();
        }
        let c = SqliteCatalog::open(&path).unwrap();
        assert_eq!(c.alert(e.alert_id.as_str()).unwrap(), Some(e.clone()));
        assert_eq!(c.open_alerts_to_restore().unwrap(), vec![e.clone()]);
        let head = c.outbox_after(0, 10).unwrap();
        assert_eq!(head.len(), 1);
        for n in ["jsonl", "console", "warehouse"] {
            assert_eq!(c.cursor(n).unwrap(), head[0].seq, "{n}: already delivered");
        }
        drop(c);
        // Opening again changes nothing.
        let c = SqliteCatalog::open(&path).unwrap();
        assert_eq!(c.outbox_after(0, 10).unwrap().len(), 1);
    }

    /// Three events (a trigger, its acknowledgement, another alert's trigger) as the
    /// layout with one outbox row per event wrote them, with a gap in the numbering before
    /// the third (that layout left one for each re-processed event: an ignored insert
    /// still took its number), and the alert log's cursor at the second.
    fn rows_layout_catalog(path: &Path) -> [AlertEvent; 3] {
        use vitalwatch_core::alert::{AlertEventKind, AlertState};
        let a = crate::store::contract::sample_event();
        let ack = AlertEvent {
            event: AlertEventKind::Acknowledged,
            state: AlertState::Acknowledged,
            alert_generated_time: Timestamp(a.alert_generated_time.micros() + 30_000_000),
            acknowledged_by: Some("nurse".into()),
            ..a.clone()
        };
        let b = AlertEvent {
            alert_id: vitalwatch_core::alert::alert_id(&a.patient_id, "hr_high", a.episode_start),
            rule_key: "hr_high".into(),
            ..a.clone()
        };
        let events = [a, ack, b];
        let old = Connection::open(path).unwrap();
        old.execute_batch(ROWS_LAYOUT).unwrap();
        old.execute_batch(SCHEMA).unwrap();
        for (i, e) in events.iter().enumerate() {
            if i == 2 {
                old.execute(
                    "UPDATE sqlite_sequence SET seq = seq + 5 WHERE name = 'outbox'",
                    [],
                )
                .unwrap();
            }
            let at = e.identity_time().micros();
            old.execute(
                "INSERT INTO outbox (alert_id, event, at, priority, state, actor, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    e.alert_id.as_str(),
                    e.event.as_str(),
                    at,
                    e.priority.as_str(),
                    e.state.as_str(),
                    e.acknowledged_by,
                    serde_json::to_string(e).unwrap()
                ],
            )
            .unwrap();
            let seq = old.last_insert_rowid();
            old.execute(
                "INSERT INTO alerts VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(alert_id) DO UPDATE SET state = excluded.state,
                   updated_at = excluded.updated_at, latest_seq = excluded.latest_seq",
                params![
                    e.alert_id.as_str(),
                    e.patient_id.as_str(),
                    e.rule_key,
                    e.priority.as_str(),
                    e.state.as_str(),
                    e.episode_start.micros(),
                    at,
                    seq
                ],
            )
            .unwrap();
        }
        old.execute("INSERT INTO outbox_cursors VALUES ('jsonl', 2, 0)", [])
            .unwrap();
        events
    }

    /// A table's columns as SQLite describes them (name, type, not null, default, key).
    fn columns(conn: &Connection, table: &str) -> Vec<(String, String, bool, Option<String>, u32)> {
        let mut st = conn
            .prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)")
            .unwrap();
        st.query_map([table], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn a_catalog_with_one_outbox_row_per_event_is_compacted_without_loss() {
        use vitalwatch_core::alert::{AlertEventKind, AlertState};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        let events = rows_layout_catalog(&path);
        let [a, ack, b] = events.clone();
        let mut c = SqliteCatalog::open(&path).unwrap();
        // The upgraded tables are the ones a new catalog gets.
        let new = SqliteCatalog::open_in_memory().unwrap();
        for table in ["alerts", "event_ids", "outbox_texts"] {
            assert_eq!(
                columns(&c.conn, table),
                columns(&new.conn, table),
                "{table}"
            );
        }
        let outbox = c.outbox_after(0, 10).unwrap();
        assert_eq!(outbox.iter().map(|o| o.seq).collect::<Vec<_>>(), [1, 2, 8]);
        for (o, e) in outbox.iter().zip(&events) {
            assert_eq!(o.key, e.idempotency_key());
            assert_eq!(serde_json::from_str::<AlertEvent>(&o.body).unwrap(), *e);
        }
        assert_eq!(c.cursor("jsonl").unwrap(), 2, "nothing is delivered again");
        assert_eq!(c.alert(a.alert_id.as_str()).unwrap(), Some(ack.clone()));
        let listed = c.alerts(false, 10).unwrap();
        let counts: Vec<(String, u32)> = listed
            .iter()
            .map(|s| (s.latest.alert_id.to_string(), s.events))
            .collect();
        assert!(counts.contains(&(a.alert_id.to_string(), 2)), "{counts:?}");
        assert!(counts.contains(&(b.alert_id.to_string(), 1)), "{counts:?}");
        assert_eq!(c.outbox_seq(&ack, 0).unwrap(), Some(2));
        assert_eq!(c.outbox_seq(&b, 0).unwrap(), Some(8));
        assert_eq!(c.outbox_after(2, 10).unwrap()[0].seq, 8, "across the gap");
        // Every event it held is still known: recording them again records nothing.
        assert_eq!(record(&mut c, &events), vec![false, false, false]);
        let later = AlertEvent {
            event: AlertEventKind::Resolved,
            state: AlertState::Resolved,
            input_message_time: Timestamp(a.input_message_time.micros() + 60_000_000),
            ..ack.clone()
        };
        assert_eq!(record(&mut c, std::slice::from_ref(&later)), vec![true]);
        assert_eq!(
            c.outbox_after(8, 10).unwrap()[0].seq,
            9,
            "numbering carries on"
        );
        drop(c);
        // Opening again changes nothing. The copied texts and the new event (stored as
        // its fields) read back side by side, the new one with the text serde writes.
        let c = SqliteCatalog::open(&path).unwrap();
        let all = c.outbox_after(0, 10).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].body, serde_json::to_string(&later).unwrap());
        assert_eq!(all[3].key, later.idempotency_key());
        assert_eq!(c.alert(a.alert_id.as_str()).unwrap(), Some(later));
        assert_eq!(c.alert(b.alert_id.as_str()).unwrap(), Some(b));
    }

    #[test]
    fn an_upgrade_that_fails_half_way_leaves_the_catalog_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        rows_layout_catalog(&path);
        // A chunk already where the upgrade writes its first one: it fails at that insert,
        // after altering `alerts` and filling `event_ids`.
        let block = |on: bool| {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(history::SCHEMA).unwrap();
            if on {
                db.execute("INSERT INTO outbox_texts VALUES (1, 1, x'00')", [])
                    .unwrap();
            } else {
                db.execute("DELETE FROM outbox_texts", []).unwrap();
            }
        };
        block(true);
        let before = columns(&Connection::open(&path).unwrap(), "alerts");
        assert!(SqliteCatalog::open(&path).is_err(), "the upgrade fails");
        let db = Connection::open(&path).unwrap();
        assert_eq!(columns(&db, "alerts"), before, "not altered");
        let rows: (i64, i64) = db
            .query_row(
                "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM event_ids)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(rows, (3, 0), "the old outbox is whole, nothing half-copied");
        drop(db);
        block(false);
        let c = SqliteCatalog::open(&path).unwrap();
        let seqs: Vec<u64> = c
            .outbox_after(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 8], "the next open upgrades it");
    }

    #[test]
    fn sqlite_passes_the_alert_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        crate::store::contract::alert_store(|| SqliteCatalog::open(&path).unwrap());
    }
    use vitalwatch_core::engine::{Engine, Findings};
    use vitalwatch_core::model::{DeviceId, Observation, Vital, VitalSet};
    use vitalwatch_core::reference::{
        CLASSIC_PATIENTS_CSV, CLASSIC_THRESHOLDS_CSV, parse_patients_csv, parse_threshold_csv,
    };
    use vitalwatch_core::rules::{Profile, RulesConfig};

    #[test]
    fn sqlite_passes_the_reference_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        assert!(SqliteCatalog::open(&path).unwrap().is_empty().unwrap());
        crate::store::contract::reference_store(|| SqliteCatalog::open(&path).unwrap());
    }

    fn record(c: &mut SqliteCatalog, events: &[AlertEvent]) -> Vec<bool> {
        let json: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        let pairs: Vec<(&AlertEvent, &str)> =
            events.iter().zip(json.iter().map(String::as_str)).collect();
        c.record_alert_events(&pairs)
            .unwrap()
            .into_iter()
            .map(|s| s.is_some())
            .collect()
    }

    #[test]
    fn replayed_alert_events_are_not_new() {
        let mut c = SqliteCatalog::open_in_memory().unwrap();
        let patients = parse_patients_csv(CLASSIC_PATIENTS_CSV.as_bytes()).unwrap();
        let table = ThresholdTable {
            version: 1,
            bands: parse_threshold_csv(CLASSIC_THRESHOLDS_CSV.as_bytes()).unwrap(),
        };
        let events = |now: i64| {
            let mut e = Engine::new(
                RulesConfig {
                    profile: Profile::Classic,
                    ..RulesConfig::default()
                },
                patients.clone(),
                table.clone(),
            );
            let mut f = Findings::default();
            let o = Observation {
                patient_id: PatientId("5".into()),
                device_id: DeviceId("d".into()),
                observed_at: Timestamp(1_000_000),
                ingested_at: Timestamp(1_000_000),
                vitals: VitalSet::default()
                    .with(Vital::HeartRate, 90.0)
                    .with(Vital::Systolic, 200.0),
            };
            e.process(&o, Timestamp(now), &mut f);
            f.events
        };
        let first = events(2_000_000);
        assert_eq!(first.len(), 2);
        assert_eq!(record(&mut c, &first), vec![true, true]);
        // A replay generates the same alerts at a later wall-clock time: nothing new.
        assert_eq!(record(&mut c, &events(9_000_000)), vec![false, false]);
        let stored = c.alerts(true, 10).unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[0].events, 1);
        assert_eq!(
            c.alert(first[0].alert_id.as_str())
                .unwrap()
                .unwrap()
                .alert_message,
            first[0].alert_message
        );
        // Classic alerts stay open; a restart takes back the newest per patient and rule.
        let mut later = events(9_000_000);
        for e in &mut later {
            e.episode_start = Timestamp(5_000_000);
            e.alert_id =
                vitalwatch_core::alert::alert_id(&e.patient_id, &e.rule_key, e.episode_start);
        }
        record(&mut c, &later);
        assert_eq!(c.alerts(true, 10).unwrap().len(), 4);
        let mut restore: Vec<String> = c
            .open_alerts_to_restore()
            .unwrap()
            .into_iter()
            .map(|e| e.alert_id.to_string())
            .collect();
        restore.sort();
        let mut want: Vec<String> = later.iter().map(|e| e.alert_id.to_string()).collect();
        want.sort();
        assert_eq!(restore, want);
    }
}
