//! The catalog in PostgreSQL: the same reference data and alert store as the embedded
//! SQLite catalog, in a server every replica can share.
//!
//! Where it sits: behind the [`ReferenceStore`] and [`AlertStore`] seams, chosen with
//! `catalog = "postgres://…"`. Same tables and semantics as [`crate::catalog`] (the
//! contract suite in [`crate::store::contract`] runs against both): the outbox is the event
//! history, keyed by (alert id, event, time) so re-processed input records nothing twice;
//! the alert state row and the outbox row of an event are one transaction; notifier
//! cursors only move forward.
//!
//! The client is the blocking `postgres` crate: the store seams are blocking, and each
//! pipeline thread that writes owns its own connection.

use std::collections::HashMap;
use std::sync::Mutex;

use postgres::{Client, NoTls, Transaction};
use vitalwatch_core::alert::AlertEvent;
use vitalwatch_core::model::{Patient, PatientId, Spo2Scale, Timestamp};
use vitalwatch_core::reference::{ThresholdBand, ThresholdTable};

use crate::store::{
    AlertStore, AuditEntry, DeliveryAttempt, DeliveryOutcome, OutboxEntry, PatientImport,
    ReferenceStore, Silence, SourcePosition, StoreError, StoredAlert, ThresholdVersion,
    changed_fields, stored_band,
};

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Backend {
            backend: "postgres",
            source: Box::new(e),
        }
    }
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
    imported_at  BIGINT NOT NULL,
    source       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS threshold_bands (
    version          INTEGER NOT NULL REFERENCES threshold_versions(version),
    ref_id           INTEGER NOT NULL,
    attribute        TEXT NOT NULL,
    low_age_limit    INTEGER NOT NULL,
    high_age_limit   INTEGER NOT NULL,
    low_range_value  DOUBLE PRECISION NOT NULL,
    high_range_value DOUBLE PRECISION NOT NULL,
    alert_flag       BOOLEAN NOT NULL,
    alert_message    TEXT NOT NULL,
    priority         TEXT NOT NULL,
    patient_id       TEXT,
    PRIMARY KEY (version, ref_id)
);
CREATE TABLE IF NOT EXISTS audit_log (
    id       BIGSERIAL PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq       BIGSERIAL PRIMARY KEY,
    alert_id  TEXT NOT NULL,
    event     TEXT NOT NULL,
    at        BIGINT NOT NULL,
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
    opened_at    BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    latest_seq   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS notifier_cursors (
    consumer    TEXT NOT NULL,
    origin      TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (consumer, origin)
);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    id         BIGSERIAL PRIMARY KEY,
    consumer   TEXT NOT NULL,
    first_seq  BIGINT NOT NULL,
    last_seq   BIGINT NOT NULL,
    attempt    INTEGER NOT NULL,
    at         BIGINT NOT NULL,
    outcome    TEXT NOT NULL,
    error      TEXT
);
CREATE INDEX IF NOT EXISTS delivery_attempts_consumer ON delivery_attempts(consumer, id);
CREATE TABLE IF NOT EXISTS silences (
    id          BIGSERIAL PRIMARY KEY,
    patient_id  TEXT NOT NULL,
    starts_at   BIGINT NOT NULL,
    ends_at     BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_leases (
    origin  TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    until   TIMESTAMPTZ NOT NULL
);
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS origin TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS outbox_origin ON outbox(origin, seq);
ALTER TABLE delivery_attempts ADD COLUMN IF NOT EXISTS origin TEXT NOT NULL DEFAULT '';
DO $$ BEGIN
    -- Before origins, cursors were per notifier only (one replica per catalog).
    IF to_regclass('outbox_cursors') IS NOT NULL THEN
        INSERT INTO notifier_cursors (consumer, origin, seq, updated_at)
            SELECT consumer, '', seq, updated_at FROM outbox_cursors ON CONFLICT DO NOTHING;
        DROP TABLE outbox_cursors;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS source_positions (
    source       TEXT PRIMARY KEY,
    checkpoint   BIGINT NOT NULL,
    "offset"     BIGINT NOT NULL,
    fingerprint  TEXT NOT NULL,
    updated_at   BIGINT NOT NULL
);
"#;

/// Serializes schema creation across processes (`CREATE TABLE IF NOT EXISTS` races
/// between two replicas starting at once).
const SCHEMA_LOCK: i64 = 0x7669_7461_6c77;

/// Serializes threshold imports across processes.
const IMPORT_LOCK: i64 = SCHEMA_LOCK + 1;

/// Serializes the transactions that add audit rows ([`lock_audit`]).
const AUDIT_LOCK: i64 = SCHEMA_LOCK + 2;

/// The catalog in a PostgreSQL database.
///
/// Several replicas share one database. Reference data and alert state are common to all;
/// the **outbox is partitioned by origin**: each replica's handle is scoped to its origin
/// ([`PostgresStore::with_origin`], the replica's id), records its events under it, and
/// its notifiers read, deliver and move cursors for that origin only. So each event is
/// delivered by exactly one replica, and sequence numbers of one origin, having a single
/// writer, commit in order (a cursor never skips a row committed late by another writer).
pub struct PostgresStore {
    // The store seams read through `&self`; the client needs `&mut` for every query.
    client: Mutex<Client>,
    origin: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user[:password]@host:port/db`, or a libpq key=value
    /// string) and creates the tables if needed.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut client = Client::connect(url, NoTls)?;
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
        tx.batch_execute(SCHEMA)?;
        tx.commit()?;
        Ok(PostgresStore {
            client: Mutex::new(client),
            origin: String::new(),
        })
    }

    /// This handle records, reads and delivers the outbox of `origin` (a replica's id;
    /// `""`, the default, for a catalog only one replica uses).
    pub fn with_origin(mut self, origin: &str) -> Self {
        self.origin = origin.to_owned();
        self
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        // A panic while holding it cannot leave a half-done transaction behind (the
        // server rolls back an unfinished one), so the client stays usable.
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes (or renews) the right to deliver `origin`'s outbox for `ttl`, as this
    /// handle's replica: granted when nobody holds it, this replica holds it, or the
    /// holder let it lapse (the server's clock decides: replicas' clocks may differ).
    /// Each replica holds its own origin while it runs; when it dies, its lease lapses
    /// and another replica may deliver what it left undelivered.
    pub fn claim_outbox(&self, origin: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let secs = ttl.as_secs_f64();
        let row = self.client().query_opt(
            "INSERT INTO outbox_leases (origin, holder, until)
             VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (origin) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE outbox_leases.holder = excluded.holder OR outbox_leases.until <= now()
             RETURNING origin",
            &[&origin, &self.origin, &secs],
        )?;
        Ok(row.is_some())
    }

    /// Gives up the right to deliver `origin`'s outbox, if this replica holds it.
    pub fn release_outbox(&self, origin: &str) -> Result<(), StoreError> {
        self.client().execute(
            "UPDATE outbox_leases SET until = now() WHERE origin = $1 AND holder = $2",
            &[&origin, &self.origin],
        )?;
        Ok(())
    }

    /// Other replicas' origins whose lease lapsed and whose outbox holds entries past
    /// `consumer`'s cursor: alert events a dead replica recorded and did not deliver.
    pub fn orphaned_outboxes(&self, consumer: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.client().query(
            "SELECT l.origin FROM outbox_leases l
             WHERE l.origin <> $2 AND l.until <= now()
               AND EXISTS (SELECT 1 FROM outbox o WHERE o.origin = l.origin
                   AND o.seq > coalesce((SELECT c.seq FROM notifier_cursors c
                                         WHERE c.consumer = $1 AND c.origin = l.origin), 0))
             ORDER BY l.origin",
            &[&consumer, &self.origin],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Whether the catalog has no patients and no thresholds yet.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let n: i64 = self
            .client()
            .query_one(
                "SELECT (SELECT COUNT(*) FROM patients) + (SELECT COUNT(*) FROM threshold_versions)",
                &[],
            )?
            .get(0);
        Ok(n == 0)
    }
}

fn us(t: Timestamp) -> i64 {
    t.micros()
}

fn read_alert(body: &str) -> Result<AlertEvent, StoreError> {
    Ok(serde_json::from_str(body)?)
}

impl ReferenceStore for PostgresStore {
    fn import_patients(
        &mut self,
        patients: &[Patient],
        source: &str,
        at: Timestamp,
    ) -> Result<PatientImport, StoreError> {
        let existing: std::collections::HashMap<String, Patient> = self
            .patients()?
            .into_iter()
            .map(|p| (p.patient_id.0.to_string(), p))
            .collect();
        let mut report = PatientImport::default();
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let upsert = tx.prepare(
            "INSERT INTO patients (patient_id, name, address, phone, ward, age, spo2_scale, other_details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (patient_id) DO UPDATE SET name = excluded.name, address = excluded.address,
               phone = excluded.phone, ward = excluded.ward, age = excluded.age,
               spo2_scale = excluded.spo2_scale, other_details = excluded.other_details",
        )?;
        lock_audit(&mut tx)?;
        let audit = tx.prepare(
            "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
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
            let scale = i32::from(p.spo2_scale.number());
            tx.execute(
                &upsert,
                &[
                    &p.patient_id.as_str(),
                    &p.name,
                    &p.address,
                    &p.phone,
                    &p.ward,
                    &(p.age as i32),
                    &scale,
                    &p.other_details,
                ],
            )?;
            // The audit trail names the fields, never their values (no personal data).
            tx.execute(
                &audit,
                &[
                    &us(at),
                    &source,
                    &action,
                    &p.patient_id.as_str(),
                    &fields.join(","),
                ],
            )?;
            if fields.is_empty() {
                report.added += 1;
            } else {
                report.updated.push((p.patient_id.clone(), fields));
            }
        }
        tx.commit()?;
        Ok(report)
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self.client().query(
            "SELECT at, actor, action, subject, detail FROM audit_log ORDER BY id DESC LIMIT $1",
            &[&(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                at: Timestamp(r.get(0)),
                actor: r.get(1),
                action: r.get(2),
                subject: r.get(3),
                detail: r.get(4),
            })
            .collect())
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        let rows = self.client().query(
            "SELECT id, at, actor, action, subject, detail FROM audit_log
             WHERE id > $1 ORDER BY id LIMIT $2",
            &[&(after as i64), &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0) as u64,
                    AuditEntry {
                        at: Timestamp(r.get(1)),
                        actor: r.get(2),
                        action: r.get(3),
                        subject: r.get(4),
                        detail: r.get(5),
                    },
                )
            })
            .collect())
    }

    fn patients(&self) -> Result<Vec<Patient>, StoreError> {
        let rows = self.client().query(
            "SELECT patient_id, name, address, phone, ward, age, spo2_scale, other_details FROM patients
             ORDER BY CASE WHEN patient_id ~ '^[0-9]{1,18}$' THEN patient_id::BIGINT END, patient_id",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| Patient {
                patient_id: PatientId(r.get::<_, &str>(0).into()),
                name: r.get(1),
                address: r.get(2),
                phone: r.get(3),
                ward: r.get(4),
                age: r.get::<_, i32>(5) as u32,
                spo2_scale: if r.get::<_, i32>(6) == 2 {
                    Spo2Scale::Scale2
                } else {
                    Spo2Scale::Scale1
                },
                other_details: r.get(7),
            })
            .collect())
    }

    fn import_thresholds(
        &mut self,
        bands: &[ThresholdBand],
        source: &str,
        at: Timestamp,
    ) -> Result<u32, StoreError> {
        // Imports one at a time: two replicas seeding the same built-in table at start-up
        // make one version, not two.
        self.client()
            .execute("SELECT pg_advisory_lock($1)", &[&IMPORT_LOCK])?;
        let r = self.import_thresholds_locked(bands, source, at);
        let unlocked = self
            .client()
            .execute("SELECT pg_advisory_unlock($1)", &[&IMPORT_LOCK]);
        let version = r?;
        unlocked?;
        Ok(version)
    }

    fn threshold_versions(&self) -> Result<Vec<ThresholdVersion>, StoreError> {
        self.threshold_versions_impl()
    }

    fn thresholds(&self) -> Result<ThresholdTable, StoreError> {
        self.thresholds_impl()
    }

    fn thresholds_version(&self, version: u32) -> Result<ThresholdTable, StoreError> {
        self.thresholds_version_impl(version)
    }
}

impl PostgresStore {
    fn import_thresholds_locked(
        &self,
        bands: &[ThresholdBand],
        source: &str,
        at: Timestamp,
    ) -> Result<u32, StoreError> {
        // An identical table is not a new version: alerts keep naming the one they fired on.
        let current = self.thresholds_impl()?;
        if current.version > 0 && current.bands == bands {
            return Ok(current.version);
        }
        let mut client = self.client();
        let mut tx = client.transaction()?;
        // Two replicas importing at once get two versions, not one clash.
        tx.execute("LOCK TABLE threshold_versions IN EXCLUSIVE MODE", &[])?;
        let version: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM threshold_versions",
                &[],
            )?
            .get(0);
        tx.execute(
            "INSERT INTO threshold_versions (version, imported_at, source) VALUES ($1, $2, $3)",
            &[&version, &us(at), &source],
        )?;
        let ins = tx.prepare(
            "INSERT INTO threshold_bands (version, ref_id, attribute, low_age_limit, high_age_limit,
               low_range_value, high_range_value, alert_flag, alert_message, priority, patient_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )?;
        for b in bands {
            tx.execute(
                &ins,
                &[
                    &version,
                    &(b.ref_id as i32),
                    &b.attribute,
                    &(b.low_age_limit as i32),
                    &(b.high_age_limit as i32),
                    &b.low_range_value,
                    &b.high_range_value,
                    &b.alert_flag,
                    &b.alert_message,
                    &b.priority.as_str(),
                    &b.patient_id.as_ref().map(PatientId::as_str),
                ],
            )?;
        }
        tx.commit()?;
        Ok(version as u32)
    }

    fn thresholds_impl(&self) -> Result<ThresholdTable, StoreError> {
        let version: i32 = self
            .client()
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM threshold_versions",
                &[],
            )?
            .get(0);
        self.thresholds_version_impl(version as u32)
    }

    fn thresholds_version_impl(&self, version: u32) -> Result<ThresholdTable, StoreError> {
        let rows = self.client().query(
            "SELECT ref_id, attribute, low_age_limit, high_age_limit, low_range_value, high_range_value,
                    alert_flag, alert_message, priority, patient_id
             FROM threshold_bands WHERE version = $1 ORDER BY ref_id",
            &[&(version as i32)],
        )?;
        let mut bands = Vec::with_capacity(rows.len());
        for r in &rows {
            bands.push(stored_band(
                r.get::<_, i32>(0) as u32,
                r.get(1),
                r.get::<_, i32>(2) as u32,
                r.get::<_, i32>(3) as u32,
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
                r.get::<_, &str>(8),
                r.get(9),
            )?);
        }
        Ok(ThresholdTable { version, bands })
    }

    fn threshold_versions_impl(&self) -> Result<Vec<ThresholdVersion>, StoreError> {
        let rows = self.client().query(
            "SELECT v.version, v.imported_at, v.source, COUNT(b.ref_id)
             FROM threshold_versions v LEFT JOIN threshold_bands b ON b.version = v.version
             GROUP BY v.version ORDER BY v.version",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| ThresholdVersion {
                version: r.get::<_, i32>(0) as u32,
                imported_at: Timestamp(r.get(1)),
                source: r.get(2),
                bands: r.get::<_, i64>(3) as u32,
            })
            .collect())
    }
}

/// Records a burst of events and their state rows in `tx` with two statements (one
/// round trip each, whatever the burst's size: per event, an alert flood ran at 1,400
/// events/s); for each event its new outbox sequence number, or `None` if it was
/// recorded before (or earlier in the same burst).
fn record_events(
    tx: &mut Transaction<'_>,
    origin: &str,
    events: &[(&AlertEvent, &str)],
) -> Result<Vec<Option<u64>>, StoreError> {
    let n = events.len();
    let (mut ids, mut kinds, mut ats, mut prios, mut states, mut actors, mut bodies) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for &(e, body) in events {
        ids.push(e.alert_id.as_str());
        kinds.push(e.event.as_str());
        ats.push(us(e.identity_time()));
        prios.push(e.priority.as_str());
        states.push(e.state.as_str());
        actors.push(e.acknowledged_by.as_deref());
        bodies.push(body);
    }
    // The outbox is the history: an event already recorded is ignored by its identity.
    // Rows go in in the burst's order, so sequence numbers follow it.
    let inserted = tx.query(
        "INSERT INTO outbox (alert_id, event, at, priority, state, actor, body, origin)
         SELECT i, k, t, p, s, a, b, $8
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
              WITH ORDINALITY AS x(i, k, t, p, s, a, b, n)
         ORDER BY n
         ON CONFLICT (alert_id, event, at) DO NOTHING
         RETURNING seq, alert_id, event, at",
        &[&ids, &kinds, &ats, &prios, &states, &actors, &bodies, &origin],
    )?;
    let mut seqs: HashMap<(String, String, i64), i64> = inserted
        .iter()
        .map(|r| ((r.get(1), r.get(2), r.get(3)), r.get(0)))
        .collect();
    let mut fresh = Vec::with_capacity(n);
    // Each alert's state row follows its newest new event (time, then burst order), as
    // one upsert per event in order would leave it.
    let mut latest: HashMap<&str, (i64, i64, &AlertEvent)> = HashMap::new();
    for &(e, _) in events {
        let at = us(e.identity_time());
        let key = (
            e.alert_id.as_str().to_owned(),
            e.event.as_str().to_owned(),
            at,
        );
        match seqs.remove(&key) {
            Some(seq) => {
                fresh.push(Some(seq as u64));
                let slot = latest.entry(e.alert_id.as_str()).or_insert((at, seq, e));
                if (at, seq) >= (slot.0, slot.1) {
                    *slot = (at, seq, e);
                }
            }
            None => fresh.push(None),
        }
    }
    if !latest.is_empty() {
        let m = latest.len();
        let (
            mut ids,
            mut patients,
            mut rules,
            mut prios,
            mut states,
            mut opened,
            mut ats,
            mut seqs,
        ) = (
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
        );
        for (id, (at, seq, e)) in &latest {
            ids.push(*id);
            patients.push(e.patient_id.as_str());
            rules.push(&*e.rule_key);
            prios.push(e.priority.as_str());
            states.push(e.state.as_str());
            opened.push(us(e.episode_start));
            ats.push(*at);
            seqs.push(*seq);
        }
        tx.execute(
            "INSERT INTO alerts (alert_id, patient_id, rule_key, priority, state, opened_at, updated_at, latest_seq)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[])
             ON CONFLICT (alert_id) DO UPDATE SET priority = excluded.priority, state = excluded.state,
               updated_at = excluded.updated_at, latest_seq = excluded.latest_seq
             WHERE excluded.updated_at >= alerts.updated_at",
            &[&ids, &patients, &rules, &prios, &states, &opened, &ats, &seqs],
        )?;
    }
    Ok(fresh)
}

impl AlertStore for PostgresStore {
    fn record_alert_events(
        &mut self,
        events: &[(&AlertEvent, &str)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let mut tx = client.transaction()?;
        let fresh = record_events(&mut tx, &self.origin, events)?;
        tx.commit()?;
        Ok(fresh)
    }

    fn alerts(&self, only_open: bool, limit: usize) -> Result<Vec<StoredAlert>, StoreError> {
        let sql = format!(
            "SELECT o.body, (SELECT COUNT(*) FROM outbox e WHERE e.alert_id = a.alert_id)
             FROM alerts a JOIN outbox o ON o.seq = a.latest_seq {}
             ORDER BY a.updated_at DESC, a.alert_id LIMIT $1",
            if only_open {
                "WHERE a.state <> 'resolved'"
            } else {
                ""
            }
        );
        let rows = self.client().query(&sql, &[&(limit as i64)])?;
        rows.iter()
            .map(|r| {
                Ok(StoredAlert {
                    latest: read_alert(r.get(0))?,
                    events: r.get::<_, i64>(1) as u32,
                })
            })
            .collect()
    }

    fn open_alerts_to_restore(&self) -> Result<Vec<AlertEvent>, StoreError> {
        let rows = self.client().query(
            "SELECT o.body FROM alerts a JOIN outbox o ON o.seq = a.latest_seq
             WHERE a.alert_id IN (
                 SELECT max(alert_id) FROM alerts WHERE state <> 'resolved'
                 GROUP BY patient_id, rule_key)",
            &[],
        )?;
        rows.iter().map(|r| read_alert(r.get(0))).collect()
    }

    fn alert(&self, alert_id: &str) -> Result<Option<AlertEvent>, StoreError> {
        let row = self.client().query_opt(
            "SELECT o.body FROM alerts a JOIN outbox o ON o.seq = a.latest_seq
             WHERE a.alert_id = $1",
            &[&alert_id],
        )?;
        row.map(|r| read_alert(r.get(0))).transpose()
    }

    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = self.client().query(
            "SELECT seq, alert_id, event, at, body FROM outbox WHERE origin = $3 AND seq > $1
             ORDER BY seq LIMIT $2",
            &[&(after as i64), &(limit as i64), &self.origin],
        )?;
        Ok(rows
            .iter()
            .map(|r| OutboxEntry {
                seq: r.get::<_, i64>(0) as u64,
                key: format!(
                    "{}:{}:{}",
                    r.get::<_, &str>(1),
                    r.get::<_, &str>(2),
                    r.get::<_, i64>(3)
                ),
                body: r.get(4),
            })
            .collect())
    }

    fn outbox_seq(&self, event: &AlertEvent, after: u64) -> Result<Option<u64>, StoreError> {
        let row = self.client().query_opt(
            "SELECT seq FROM outbox WHERE alert_id = $1 AND event = $2 AND at = $3 AND seq > $4",
            &[
                &event.alert_id.as_str(),
                &event.event.as_str(),
                &us(event.identity_time()),
                &(after as i64),
            ],
        )?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    fn cursor(&self, consumer: &str) -> Result<u64, StoreError> {
        let row = self.client().query_opt(
            "SELECT seq FROM notifier_cursors WHERE consumer = $1 AND origin = $2",
            &[&consumer, &self.origin],
        )?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    fn record_deliveries(&mut self, attempts: &[DeliveryAttempt]) -> Result<(), StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        for a in attempts {
            tx.execute(
                "INSERT INTO delivery_attempts (consumer, first_seq, last_seq, attempt, at, outcome, error, origin)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &a.consumer,
                    &(a.first_seq as i64),
                    &(a.last_seq as i64),
                    &(a.attempt as i32),
                    &us(a.at),
                    &a.outcome.as_str(),
                    &a.error,
                    &self.origin,
                ],
            )?;
            if a.outcome != DeliveryOutcome::Retrying {
                // A cursor only moves forward.
                tx.execute(
                    "INSERT INTO notifier_cursors (consumer, origin, seq, updated_at) VALUES ($1, $4, $2, $3)
                     ON CONFLICT (consumer, origin) DO UPDATE
                       SET seq = GREATEST(notifier_cursors.seq, excluded.seq),
                       updated_at = excluded.updated_at",
                    &[&a.consumer, &(a.last_seq as i64), &us(a.at), &self.origin],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn deliveries(&self, consumer: &str, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let rows = self.client().query(
            "SELECT first_seq, last_seq, attempt, at, outcome, error FROM delivery_attempts
             WHERE consumer = $1 AND origin = $3 ORDER BY id DESC LIMIT $2",
            &[&consumer, &(limit as i64), &self.origin],
        )?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryAttempt {
                    consumer: consumer.to_owned(),
                    first_seq: r.get::<_, i64>(0) as u64,
                    last_seq: r.get::<_, i64>(1) as u64,
                    attempt: r.get::<_, i32>(2) as u32,
                    at: Timestamp(r.get(3)),
                    outcome: DeliveryOutcome::parse(r.get(4))?,
                    error: r.get(5),
                })
            })
            .collect()
    }

    fn source_position(&self, source: &str) -> Result<Option<SourcePosition>, StoreError> {
        let row = self.client().query_opt(
            "SELECT checkpoint, \"offset\", fingerprint, updated_at FROM source_positions WHERE source = $1",
            &[&source],
        )?;
        Ok(row.map(|r| SourcePosition {
            source: source.to_owned(),
            checkpoint: r.get::<_, i64>(0) as u64,
            offset: r.get::<_, i64>(1) as u64,
            fingerprint: r.get(2),
            at: Timestamp(r.get(3)),
        }))
    }

    fn commit_source_positions(&mut self, positions: &[SourcePosition]) -> Result<(), StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        for p in positions {
            tx.execute(
                "INSERT INTO source_positions (source, checkpoint, \"offset\", fingerprint, updated_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (source) DO UPDATE SET checkpoint = excluded.checkpoint,
                   \"offset\" = excluded.\"offset\", fingerprint = excluded.fingerprint,
                   updated_at = excluded.updated_at",
                &[
                    &p.source,
                    &(p.checkpoint as i64),
                    &(p.offset as i64),
                    &p.fingerprint,
                    &us(p.at),
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn forget_source_position(&mut self, source: &str) -> Result<(), StoreError> {
        self.client()
            .execute("DELETE FROM source_positions WHERE source = $1", &[&source])?;
        Ok(())
    }

    fn add_silence(&mut self, s: &Silence, audit: &AuditEntry) -> Result<u64, StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO silences (patient_id, starts_at, ends_at, created_by, reason)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[
                    &s.patient_id,
                    &us(s.starts_at),
                    &us(s.ends_at),
                    &s.by,
                    &s.reason,
                ],
            )?
            .get(0);
        insert_audit(&mut tx, audit)?;
        tx.commit()?;
        Ok(id as u64)
    }

    fn silences(&self, now: Option<Timestamp>) -> Result<Vec<Silence>, StoreError> {
        let now = now.map(us);
        let rows = self.client().query(
            "SELECT id, patient_id, starts_at, ends_at, created_by, reason FROM silences
             WHERE $1::BIGINT IS NULL OR (starts_at <= $1 AND $1 < ends_at) ORDER BY id DESC",
            &[&now],
        )?;
        Ok(rows
            .iter()
            .map(|r| Silence {
                id: r.get::<_, i64>(0) as u64,
                patient_id: r.get(1),
                starts_at: Timestamp(r.get(2)),
                ends_at: Timestamp(r.get(3)),
                by: r.get(4),
                reason: r.get(5),
            })
            .collect())
    }

    fn record_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        insert_audit(&mut tx, entry)?;
        tx.commit()?;
        Ok(())
    }
}

/// Serialises the transactions that add audit rows, so their ids commit in order: a
/// concurrent writer could otherwise commit id N after a reader saw N + 1, and a cursor
/// over the ids (the warehouse's `audit` table) would skip N. Audit rows are rare
/// (acknowledgements, silences, imports): the lock costs nothing.
fn lock_audit(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
    Ok(())
}

fn insert_audit(tx: &mut Transaction<'_>, a: &AuditEntry) -> Result<(), StoreError> {
    lock_audit(tx)?;
    tx.execute(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
        &[&us(a.at), &a.actor, &a.action, &a.subject, &a.detail],
    )?;
    Ok(())
}

/// A database of its own for a test or a benchmark, on the server named by
/// `VITALWATCH_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/postgres`, the
/// machine's PostgreSQL), dropped when this is dropped.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin: String,
    name: String,
    /// Its connection URL.
    pub url: String,
}

impl ScratchDatabase {
    /// Creates an empty database with a name no other process uses. Panics with what to
    /// do when the server is not there: a test that needs it must not pass without it.
    pub fn new() -> Self {
        let admin = std::env::var("VITALWATCH_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "vw_scratch_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut c = Client::connect(&admin, NoTls).unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin}: {e} (start it: bash scripts/services.sh)")
        });
        // One statement each: neither runs inside a transaction block.
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .expect("drop an old scratch database");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a scratch database");
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => format!("{admin}/{name}"),
        };
        ScratchDatabase { admin, name, url }
    }
}

impl Default for ScratchDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.admin, NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::sample_event;
    use crate::store::{DeliveryAttempt, DeliveryOutcome};

    /// Two replicas on one database: each records, reads and delivers only its own
    /// outbox; alert state and history are common.
    #[test]
    fn replicas_sharing_a_database_each_deliver_only_their_own_outbox() {
        let db = ScratchDatabase::new();
        let mut a = PostgresStore::connect(&db.url).unwrap().with_origin("a");
        let mut b = PostgresStore::connect(&db.url).unwrap().with_origin("b");
        let ea = sample_event();
        let mut eb = sample_event();
        eb.alert_id = vitalwatch_core::alert::AlertId(format!("{}-b", ea.alert_id.as_str()));
        let text = |e: &AlertEvent| serde_json::to_string(e).unwrap();
        let sa = a.record_alert_events(&[(&ea, &text(&ea))]).unwrap()[0].unwrap();
        let sb = b.record_alert_events(&[(&eb, &text(&eb))]).unwrap()[0].unwrap();
        // The same event from the other replica (a partition re-read after a take-over)
        // is not new: it is not delivered twice.
        assert_eq!(
            b.record_alert_events(&[(&ea, &text(&ea))]).unwrap(),
            vec![None]
        );
        let seqs = |s: &PostgresStore| -> Vec<u64> {
            s.outbox_after(0, 10)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(&a), vec![sa]);
        assert_eq!(seqs(&b), vec![sb]);
        assert_eq!(
            a.alerts(false, 10).unwrap().len(),
            2,
            "alert state is common"
        );
        a.record_delivery(&DeliveryAttempt {
            consumer: "jsonl".into(),
            first_seq: sa,
            last_seq: sa,
            attempt: 1,
            at: ea.alert_generated_time,
            outcome: DeliveryOutcome::Delivered,
            error: None,
        })
        .unwrap();
        assert_eq!(a.cursor("jsonl").unwrap(), sa);
        assert_eq!(b.cursor("jsonl").unwrap(), 0, "cursors are per origin");
        assert_eq!(a.deliveries("jsonl", 10).unwrap().len(), 1);
        assert!(b.deliveries("jsonl", 10).unwrap().is_empty());

        // Leases: each holds its own; a lapsed one with a backlog is another's to adopt.
        let long = std::time::Duration::from_secs(60);
        assert!(a.claim_outbox("a", long).unwrap());
        assert!(b.claim_outbox("b", long).unwrap());
        assert!(!b.claim_outbox("a", long).unwrap(), "a holds its own");
        assert!(b.orphaned_outboxes("jsonl").unwrap().is_empty());
        // b dies: its lease lapses. Its jsonl backlog (seq sb) is a's to deliver; a's own
        // outbox is never listed.
        assert!(b.claim_outbox("b", std::time::Duration::ZERO).unwrap());
        assert_eq!(a.orphaned_outboxes("jsonl").unwrap(), vec!["b".to_owned()]);
        assert!(
            b.orphaned_outboxes("jsonl").unwrap().is_empty(),
            "a is alive"
        );
        assert!(a.claim_outbox("b", long).unwrap());
        assert!(
            !b.claim_outbox("b", long).unwrap(),
            "back too early: a delivers its outbox"
        );
        a.release_outbox("b").unwrap();
        assert!(
            b.claim_outbox("b", long).unwrap(),
            "released: b takes it back"
        );
    }

    #[test]
    fn postgres_passes_the_alert_store_contract() {
        let db = ScratchDatabase::new();
        crate::store::contract::alert_store(|| PostgresStore::connect(&db.url).unwrap());
    }

    #[test]
    fn postgres_passes_the_reference_store_contract() {
        let db = ScratchDatabase::new();
        let fresh = PostgresStore::connect(&db.url).unwrap();
        assert!(fresh.is_empty().unwrap());
        drop(fresh);
        crate::store::contract::reference_store(|| PostgresStore::connect(&db.url).unwrap());
    }
}
