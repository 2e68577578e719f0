//! The SQLite catalog's alert history: what the alert path writes per event, kept small.
//!
//! Sits under [`super::SqliteCatalog`]'s [`AlertStore`](crate::store::AlertStore)
//! methods: the alert thread records every burst of events here in one transaction, the
//! notifiers read the outbox back after a restart or a gap, and `alerts list` / the HTTP
//! API read each alert's latest event.
//!
//! Three tables, because an alert flood (a third of all classic readings alert) made the
//! store the pipeline's critical path when every event cost three B-tree inserts and its
//! 660-byte text written twice (WAL and checkpoint):
//!
//! - `alerts`: one row per alert, its current state, how many events it has had, and the
//!   identity (time, sequence number) of its `triggered` event. An alert is triggered once,
//!   so inserting its row *is* the replay check of its first event: one insert per event
//!   in a flood.
//! - `event_ids`: the identity (alert id, event, identity time) of every other event —
//!   acknowledgements, re-notifications, escalations, resolutions — and its sequence
//!   number: recording one again is a no-op.
//! - `outbox_texts`: the outbox itself, in zstd-compressed chunks of up to [`CHUNK`]
//!   consecutive sequence numbers (a chunk never spans two transactions). A chunk is
//!   small enough that reading one event back costs microseconds. New chunks hold the
//!   events' fields ([`super::events`]: ~120 bytes an event before compression, ~65
//!   after); chunks written before that, or copied from an older layout, hold the keys
//!   and JSON texts (~660 bytes). Both are read wherever they are: nothing is rewritten
//!   on upgrade.
//!
//! Sequence numbers are allocated here (the greatest recorded plus one, inside the
//! write transaction), strictly increasing in commit order and never reused.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use vitalwatch_core::alert::{AlertEvent, AlertEventKind, JsonFragments};

use super::events;
use crate::store::{OutboxEntry, StoreError};

/// Entries per compressed chunk: one alert looked up decompresses at most this many.
pub(super) const CHUNK: usize = 256;
/// zstd level −1, the first of the fast levels. Measured on the outbox chunks of a classic
/// flood (122 bytes an event before compression): level 1 made 53 bytes at 214 MB/s, −1
/// makes 65 bytes at 495 MB/s. The 12 bytes an event more are 5 % of the catalog (131 →
/// 137 MB after a 2 M-message flood), whose `alerts` rows take 124 bytes an event.
/// Decoding does not depend on the level.
const LEVEL: i32 = -1;

/// The zstd context the alert path compresses with, made once per connection: making
/// one per burst cost more than compressing a small burst.
pub(super) struct Compressor(Option<zstd::bulk::Compressor<'static>>);

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

impl Compressor {
    /// None made yet.
    pub(super) fn new() -> Self {
        Compressor(None)
    }

    fn get(&mut self) -> Result<&mut zstd::bulk::Compressor<'static>, StoreError> {
        if self.0.is_none() {
            self.0 =
                Some(zstd::bulk::Compressor::new(LEVEL).map_err(|e| {
                    StoreError::Corrupt(format!("cannot compress alert texts: {e}"))
                })?);
        }
        self.0
            .as_mut()
            .ok_or_else(|| StoreError::Corrupt("no compression context".into()))
    }
}

/// The tables of this layout (created if missing).
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS alerts (
    alert_id       TEXT PRIMARY KEY,
    patient_id     TEXT NOT NULL,
    rule_key       TEXT NOT NULL,
    priority       TEXT NOT NULL,
    state          TEXT NOT NULL,
    opened_at      INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    latest_seq     INTEGER NOT NULL,
    events         INTEGER NOT NULL DEFAULT 1,
    triggered_at   INTEGER,
    triggered_seq  INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_ids (
    alert_id  TEXT NOT NULL,
    event     TEXT NOT NULL,
    at        INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (alert_id, event, at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_texts (
    first_seq  INTEGER PRIMARY KEY,
    last_seq   INTEGER NOT NULL,
    texts      BLOB NOT NULL
);
"#;

/// Encodes entries (key, JSON text) as one chunk of the first format: per entry the
/// key's and the text's lengths (u32, little-endian) and bytes, the whole compressed.
/// Lengths rather than separators: a text may hold any character.
fn encode(
    compressor: &mut zstd::bulk::Compressor<'_>,
    entries: &[(&str, &str)],
) -> Result<Vec<u8>, StoreError> {
    let size: usize = entries.iter().map(|(k, t)| k.len() + t.len() + 8).sum();
    let mut raw = Vec::with_capacity(size);
    for (key, text) in entries {
        for s in [key, text] {
            raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
    }
    compressor
        .compress(&raw)
        .map_err(|e| StoreError::Corrupt(format!("cannot compress alert texts: {e}")))
}

/// One outbox entry as its chunk holds it.
#[allow(
    clippy::large_enum_variant,
    reason = "entries live only while a chunk is read back, and nearly all are events: \
              boxing them would add an allocation per event for the rare first-format text"
)]
enum Stored {
    /// The first format: the key and the JSON text as recorded.
    Text { key: String, body: String },
    /// The second: the event's fields.
    Event(AlertEvent),
}

impl Stored {
    /// The entry as notifiers take it; events get their JSON text written (through
    /// `json`, so what a chunk's events share is escaped once).
    fn into_outbox(self, seq: u64, json: &mut JsonFragments) -> Result<OutboxEntry, StoreError> {
        Ok(match self {
            Stored::Text { key, body } => OutboxEntry { seq, key, body },
            Stored::Event(e) => {
                let mut body = Vec::with_capacity(700);
                e.write_json_shared(&mut body, json)?;
                OutboxEntry {
                    seq,
                    key: e.idempotency_key(),
                    body: String::from_utf8(body).map_err(|_| {
                        StoreError::Corrupt(format!("outbox entry {seq}: not UTF-8"))
                    })?,
                }
            }
        })
    }

    /// The event.
    fn into_event(self) -> Result<AlertEvent, StoreError> {
        match self {
            Stored::Text { body, .. } => Ok(serde_json::from_str(&body)?),
            Stored::Event(e) => Ok(e),
        }
    }
}

/// The entries of the chunk starting at `first`, in either format; errors when it does
/// not hold exactly `first..=last`.
fn decode(first: u64, last: u64, blob: &[u8]) -> Result<Vec<Stored>, StoreError> {
    let bad = |why: &str| StoreError::Corrupt(format!("outbox chunk {first}..={last}: {why}"));
    let out: Vec<Stored> = if blob.starts_with(events::MAGIC) {
        events::decode(blob)
            .map_err(|e| bad(&e.to_string()))?
            .into_iter()
            .map(Stored::Event)
            .collect()
    } else {
        decode_texts(blob).map_err(|e| bad(&e))?
    };
    if out.len() as u64 != (last + 1).saturating_sub(first) {
        return Err(bad(&format!("holds {} entries", out.len())));
    }
    Ok(out)
}

/// The entries of a chunk of the first format (keys and texts, see [`encode`]).
fn decode_texts(blob: &[u8]) -> Result<Vec<Stored>, String> {
    let raw = zstd::stream::decode_all(blob).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut rest = &raw[..];
    let field = |rest: &mut &[u8]| -> Result<String, String> {
        let (len, tail) = rest.split_at_checked(4).ok_or("truncated")?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (s, tail) = tail.split_at_checked(len).ok_or("truncated")?;
        *rest = tail;
        String::from_utf8(s.to_vec()).map_err(|_| "not UTF-8".to_owned())
    };
    while !rest.is_empty() {
        let key = field(&mut rest)?;
        let body = field(&mut rest)?;
        out.push(Stored::Text { key, body });
    }
    Ok(out)
}

/// Records a burst in `tx` (see [`crate::store::AlertStore::record_alert_events`]).
pub(super) fn record(
    tx: &Transaction<'_>,
    compressor: &mut Compressor,
    events: &[(&AlertEvent, &str)],
) -> Result<Vec<Option<u64>>, StoreError> {
    // The newest chunk ends the outbox (found by the primary key, not a scan).
    let head: i64 = tx
        .query_row(
            "SELECT last_seq FROM outbox_texts ORDER BY first_seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let mut next = head as u64 + 1;
    let mut seqs = Vec::with_capacity(events.len());
    let mut fresh: Vec<&AlertEvent> = Vec::with_capacity(events.len());
    {
        // An alert's first `triggered` event: its row is new (one insert in a flood).
        let mut opened = tx.prepare_cached(
            "INSERT OR IGNORE INTO alerts (alert_id, patient_id, rule_key, priority, state,
               opened_at, updated_at, latest_seq, events, triggered_at, triggered_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?7, ?8)",
        )?;
        let mut triggered_at =
            tx.prepare_cached("SELECT triggered_at FROM alerts WHERE alert_id = ?1")?;
        let mut identity = tx.prepare_cached(
            "INSERT OR IGNORE INTO event_ids (alert_id, event, at, seq) VALUES (?1, ?2, ?3, ?4)",
        )?;
        // Any later event: counted; the state follows the newest (a late event recorded
        // after a newer one does not turn the state back).
        let mut later = tx.prepare_cached(
            "INSERT INTO alerts (alert_id, patient_id, rule_key, priority, state, opened_at,
               updated_at, latest_seq, events)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1)
             ON CONFLICT(alert_id) DO UPDATE SET events = events + 1,
               priority = CASE WHEN excluded.updated_at >= updated_at THEN excluded.priority ELSE priority END,
               state = CASE WHEN excluded.updated_at >= updated_at THEN excluded.state ELSE state END,
               latest_seq = CASE WHEN excluded.updated_at >= updated_at THEN excluded.latest_seq ELSE latest_seq END,
               updated_at = max(updated_at, excluded.updated_at)",
        )?;
        // The texts are not stored: an event's text is a function of its fields.
        for &(e, _) in events {
            let at = e.identity_time().micros();
            let seq = next as i64;
            let row = params![
                e.alert_id.as_str(),
                e.patient_id.as_str(),
                e.rule_key,
                e.priority.as_str(),
                e.state.as_str(),
                e.episode_start.micros(),
                at,
                seq
            ];
            let new = if e.event == AlertEventKind::Triggered && opened.execute(row)? == 1 {
                true
            } else if e.event == AlertEventKind::Triggered
                && triggered_at
                    .query_row([e.alert_id.as_str()], |r| r.get::<_, Option<i64>>(0))
                    .optional()?
                    .flatten()
                    == Some(at)
            {
                // Its first trigger, recorded before: re-processed input.
                false
            } else if identity.execute(params![e.alert_id.as_str(), e.event.as_str(), at, seq])?
                == 1
            {
                later.execute(row)?;
                true
            } else {
                false
            };
            if new {
                seqs.push(Some(next));
                fresh.push(e);
                next += 1;
            } else {
                seqs.push(None);
            }
        }
    }
    write_events(tx, compressor, head as u64 + 1, &fresh)?;
    Ok(seqs)
}

/// Appends the events of consecutive sequence numbers from `first`, in chunks of the
/// second format.
fn write_events(
    tx: &Transaction<'_>,
    compressor: &mut Compressor,
    first: u64,
    entries: &[&AlertEvent],
) -> Result<(), StoreError> {
    write_chunks(tx, first, entries, |chunk| {
        events::encode(compressor.get()?, chunk)
            .map_err(|e| StoreError::Corrupt(format!("cannot compress alert events: {e}")))
    })
}

/// Inserts `entries` as chunks of consecutive sequence numbers from `first`, each
/// encoded by `encode`.
fn write_chunks<T>(
    tx: &Transaction<'_>,
    first: u64,
    entries: &[T],
    mut encode: impl FnMut(&[T]) -> Result<Vec<u8>, StoreError>,
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO outbox_texts (first_seq, last_seq, texts) VALUES (?1, ?2, ?3)",
    )?;
    let mut seq = first;
    for chunk in entries.chunks(CHUNK) {
        let last = seq + chunk.len() as u64 - 1;
        insert.execute(params![seq as i64, last as i64, encode(chunk)?])?;
        seq = last + 1;
    }
    Ok(())
}

/// Appends keys and texts of consecutive sequence numbers from `first`, in chunks of the
/// first format (an older layout's texts are copied as they are, never re-read).
fn write_texts(
    tx: &Transaction<'_>,
    compressor: &mut Compressor,
    first: u64,
    entries: &[(&str, &str)],
) -> Result<(), StoreError> {
    write_chunks(tx, first, entries, |chunk| encode(compressor.get()?, chunk))
}

/// Up to `limit` entries after `after`, in order.
pub(super) fn outbox_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    // From the chunk holding `after + 1` (found by the primary key) onwards.
    let mut st = conn.prepare_cached(
        "SELECT first_seq, last_seq, texts FROM outbox_texts
         WHERE first_seq >= coalesce((SELECT max(first_seq) FROM outbox_texts WHERE first_seq <= ?1), 0)
         ORDER BY first_seq",
    )?;
    let mut rows = st.query([(after + 1) as i64])?;
    let mut out = Vec::new();
    let mut json = JsonFragments::default();
    while out.len() < limit
        && let Some(r) = rows.next()?
    {
        let (first, last) = (r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64);
        if last <= after {
            continue;
        }
        let blob = r
            .get_ref(2)?
            .as_blob()
            .map_err(|e| StoreError::Corrupt(format!("outbox chunk {first}: {e}")))?;
        for (seq, e) in (first..).zip(decode(first, last, blob)?) {
            if seq > after && out.len() < limit {
                out.push(e.into_outbox(seq, &mut json)?);
            }
        }
    }
    Ok(out)
}

/// The events of the given sequence numbers (each chunk read once).
fn events_at(conn: &Connection, seqs: &[u64]) -> Result<HashMap<u64, AlertEvent>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT first_seq, last_seq, texts FROM outbox_texts WHERE first_seq <= ?1
         ORDER BY first_seq DESC LIMIT 1",
    )?;
    let mut out = HashMap::with_capacity(seqs.len());
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    // The chunk read last: its first sequence number and its entries.
    let mut chunk: (u64, Vec<Option<Stored>>) = (0, Vec::new());
    for seq in sorted {
        if out.contains_key(&seq) {
            continue;
        }
        let (first, entries) = &chunk;
        if seq < *first || seq - first >= entries.len() as u64 {
            chunk = st
                .query_row([seq as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()?
                .filter(|(_, last, _)| *last >= seq)
                .map(|(first, last, blob)| {
                    decode(first, last, &blob)
                        .map(|entries| (first, entries.into_iter().map(Some).collect()))
                })
                .transpose()?
                .ok_or_else(|| StoreError::Corrupt(format!("outbox entry {seq} is missing")))?;
        }
        let stored = chunk.1[(seq - chunk.0) as usize]
            .take()
            .ok_or_else(|| StoreError::Corrupt(format!("outbox entry {seq} is missing")))?;
        out.insert(seq, stored.into_event()?);
    }
    Ok(out)
}

/// The latest events of the alerts a query selects (`latest_seq` first, then any other
/// columns `extra` reads), in the query's order.
pub(super) fn latest_events<T>(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    extra: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<(AlertEvent, T)>, StoreError> {
    let mut st = conn.prepare(sql)?;
    let rows: Vec<(u64, T)> = st
        .query_map(args, |r| Ok((r.get::<_, i64>(0)? as u64, extra(r)?)))?
        .collect::<Result<_, _>>()?;
    let seqs: Vec<u64> = rows.iter().map(|(s, _)| *s).collect();
    let mut events = events_at(conn, &seqs)?;
    rows.into_iter()
        .map(|(seq, x)| {
            let e = events
                .remove(&seq)
                .ok_or_else(|| StoreError::Corrupt(format!("outbox entry {seq} is missing")))?;
            Ok((e, x))
        })
        .collect()
}

/// The sequence number of `event`'s entry, if it comes after `after`.
pub(super) fn seq_of(
    conn: &Connection,
    event: &AlertEvent,
    after: u64,
) -> Result<Option<u64>, StoreError> {
    let at = event.identity_time().micros();
    let mut seq: Option<i64> = None;
    if event.event == AlertEventKind::Triggered {
        seq = conn
            .query_row(
                "SELECT triggered_seq FROM alerts WHERE alert_id = ?1 AND triggered_at = ?2",
                params![event.alert_id.as_str(), at],
                |r| r.get(0),
            )
            .optional()?;
    }
    if seq.is_none() {
        seq = conn
            .query_row(
                "SELECT seq FROM event_ids WHERE alert_id = ?1 AND event = ?2 AND at = ?3",
                params![event.alert_id.as_str(), event.event.as_str(), at],
                |r| r.get(0),
            )
            .optional()?;
    }
    Ok(seq.map(|s| s as u64).filter(|&s| s > after))
}

/// Brings a catalog with one outbox row per event (the layout before this one: `outbox`
/// with the JSON text, `alerts` without counts) to this layout, in the caller's
/// transaction. Sequence numbers, texts and delivery cursors are kept: nothing is
/// notified again and nothing is skipped.
pub(super) fn migrate_from_rows(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(&format!(
        "ALTER TABLE alerts ADD COLUMN events INTEGER NOT NULL DEFAULT 1;
         ALTER TABLE alerts ADD COLUMN triggered_at INTEGER;
         ALTER TABLE alerts ADD COLUMN triggered_seq INTEGER;
         {SCHEMA}
         UPDATE alerts SET
           events = (SELECT count(*) FROM outbox o WHERE o.alert_id = alerts.alert_id),
           triggered_seq = (SELECT min(seq) FROM outbox o
                            WHERE o.alert_id = alerts.alert_id AND o.event = 'triggered');
         UPDATE alerts SET triggered_at = (SELECT at FROM outbox o WHERE o.seq = alerts.triggered_seq)
           WHERE triggered_seq IS NOT NULL;
         INSERT INTO event_ids (alert_id, event, at, seq)
           SELECT o.alert_id, o.event, o.at, o.seq FROM outbox o
           WHERE NOT EXISTS (SELECT 1 FROM alerts a
                             WHERE a.alert_id = o.alert_id AND a.triggered_seq = o.seq);"
    ))?;
    // Streamed, a chunk at a time (a catalog's whole history need not fit in memory);
    // the key from the row's columns: an old text is copied, never re-read.
    let mut compressor = Compressor::new();
    let mut run: Vec<(u64, String, String)> = Vec::with_capacity(CHUNK);
    let mut flush = |run: &mut Vec<(u64, String, String)>| -> Result<(), StoreError> {
        if let Some(first) = run.first().map(|r| r.0) {
            let entries: Vec<(&str, &str)> = run
                .iter()
                .map(|(_, k, b)| (k.as_str(), b.as_str()))
                .collect();
            write_texts(tx, &mut compressor, first, &entries)?;
        }
        run.clear();
        Ok(())
    };
    let mut st = tx.prepare("SELECT seq, alert_id, event, at, body FROM outbox ORDER BY seq")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let seq = r.get::<_, i64>(0)? as u64;
        // A chunk holds consecutive sequence numbers only.
        if run.len() == CHUNK || run.last().is_some_and(|l| l.0 + 1 != seq) {
            flush(&mut run)?;
        }
        let key = format!(
            "{}:{}:{}",
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?
        );
        run.push((seq, key, r.get(4)?));
    }
    flush(&mut run)?;
    drop(rows);
    drop(st);
    tx.execute_batch("DROP TABLE outbox;")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SqliteCatalog;
    use crate::store::AlertStore;

    #[test]
    fn bursts_larger_than_a_chunk_read_back_in_order_across_chunks() {
        let mut c = SqliteCatalog::open_in_memory().unwrap();
        let base = crate::store::contract::sample_event();
        let events: Vec<AlertEvent> = (0..CHUNK as i64 * 2 + 100)
            .map(|i| {
                let start = vitalwatch_core::model::Timestamp(base.episode_start.micros() + i);
                AlertEvent {
                    alert_id: vitalwatch_core::alert::alert_id(&base.patient_id, "r", start),
                    episode_start: start,
                    input_message_time: start,
                    alert_message: format!("event {i}").into(),
                    ..base.clone()
                }
            })
            .collect();
        let texts: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        let pairs: Vec<(&AlertEvent, &str)> = events
            .iter()
            .zip(texts.iter().map(String::as_str))
            .collect();
        let (first, second) = pairs.split_at(CHUNK * 2 + 50);
        let mut seqs = c.record_alert_events(first).unwrap();
        seqs.extend(c.record_alert_events(second).unwrap());
        let seqs: Vec<u64> = seqs.into_iter().map(Option::unwrap).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
        // Across a chunk boundary and the boundary between two bursts.
        for after in [CHUNK as u64 - 3, CHUNK as u64 * 2 + 45] {
            let got = c.outbox_after(after, 10).unwrap();
            assert_eq!(got.len(), 10);
            for (k, entry) in got.iter().enumerate() {
                let i = (after as usize) + k;
                assert_eq!(entry.seq, after + 1 + k as u64);
                assert_eq!(entry.body, texts[i]);
                assert_eq!(entry.key, events[i].idempotency_key());
            }
        }
        assert_eq!(c.outbox_after(0, usize::MAX).unwrap().len(), events.len());
        let last = events.last().unwrap();
        assert_eq!(
            c.alert(last.alert_id.as_str()).unwrap().as_ref(),
            Some(last)
        );
        let all = c.alerts(false, usize::MAX >> 2).unwrap();
        assert_eq!(all.len(), events.len());
        assert!(all.iter().all(|a| a.events == 1));
        assert_eq!(
            c.outbox_seq(&events[CHUNK + 7], 0).unwrap(),
            Some(CHUNK as u64 + 8)
        );
        // All of it again (a replay of the input): nothing is new.
        assert!(
            c.record_alert_events(&pairs)
                .unwrap()
                .iter()
                .all(Option::is_none)
        );
    }

    #[test]
    fn a_chunk_of_texts_reads_back_every_entry_whatever_its_text_holds() {
        let e = crate::store::contract::sample_event();
        let key = e.idempotency_key();
        let texts = ["{\"a\":1}", "line\nbreak\tand tab", "", "é ✓"];
        let entries: Vec<(&str, &str)> = texts.iter().map(|t| (key.as_str(), *t)).collect();
        let mut c = zstd::bulk::Compressor::new(LEVEL).unwrap();
        let blob = encode(&mut c, &entries).unwrap();
        let back = decode(10, 13, &blob).unwrap();
        assert_eq!(back.len(), 4);
        let mut json = JsonFragments::default();
        for (i, (entry, text)) in back.into_iter().zip(texts).enumerate() {
            let entry = entry.into_outbox(10 + i as u64, &mut json).unwrap();
            assert_eq!(entry.seq, 10 + i as u64);
            assert_eq!(entry.body, text);
            assert_eq!(entry.key, key);
        }
        // A chunk that does not hold the range it is filed under is an error, not a gap,
        // in either format.
        let events = [&e, &e, &e, &e];
        let fields = events::encode(&mut c, &events).unwrap();
        for blob in [&blob, &fields] {
            assert!(decode(10, 13, blob).is_ok());
            assert!(matches!(decode(10, 14, blob), Err(StoreError::Corrupt(_))));
            assert!(matches!(decode(10, 12, blob), Err(StoreError::Corrupt(_))));
            assert!(matches!(
                decode(10, 13, &blob[..blob.len() / 2]),
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
