//! The notifier seam: where alert events leave vitalwatch for people and systems.
//!
//! Where it sits: after the alert store. The alert path records each new event and its
//! outbox row in one transaction; a worker per notifier takes outbox entries in order,
//! calls [`Notifier::deliver`], records every attempt and moves the notifier's cursor in
//! the store. A crash at any point re-delivers from the cursor: at least once, and with
//! the event's idempotency key (and [`Notifier::resume`], which lets a notifier tell where
//! it really got to) effectively once.
//!
//! Notifiers here: [`JsonlNotifier`] (the alert log), [`kafka`] (feature `kafka`: an alert
//! topic). The console printer lives in the binary; e-mail, SNS and webhooks join behind
//! cargo features.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use vitalwatch_core::alert::AlertEvent;

use crate::store::{AlertStore, StoreError};

#[cfg(any(feature = "webhook", feature = "sns"))]
mod http;
#[cfg(all(feature = "kafka", feature = "warehouse"))]
pub mod kafka;
#[cfg(feature = "smtp")]
pub mod smtp;
#[cfg(feature = "sns")]
pub mod sns;
#[cfg(any(feature = "smtp", feature = "webhook", feature = "sns"))]
pub mod template;
#[cfg(feature = "webhook")]
pub mod webhook;

/// An event's JSON text, possibly sharing one allocation with its neighbours: the engine
/// writes a whole burst of texts into one buffer (an alert flood made and freed one
/// allocation per event otherwise). Reads as a `str`; cheap to clone.
#[derive(Clone)]
pub struct SharedText {
    buf: Arc<str>,
    range: std::ops::Range<usize>,
}

impl SharedText {
    /// The texts `buf[r]` for each range `r` (each on character boundaries; a range that
    /// is not reads as empty), sharing `buf`.
    pub fn split(
        buf: Arc<str>,
        ranges: impl IntoIterator<Item = std::ops::Range<usize>>,
    ) -> impl Iterator<Item = SharedText> {
        ranges.into_iter().map(move |range| SharedText {
            buf: buf.clone(),
            range,
        })
    }
}

impl std::ops::Deref for SharedText {
    type Target = str;

    fn deref(&self) -> &str {
        self.buf.get(self.range.clone()).unwrap_or_default()
    }
}

impl std::fmt::Debug for SharedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl From<String> for SharedText {
    fn from(s: String) -> Self {
        let range = 0..s.len();
        SharedText {
            buf: s.into(),
            range,
        }
    }
}

/// One outbox entry on its way to a notifier. Cheap to clone: every notifier gets the
/// same event and text.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    /// Outbox sequence number.
    pub seq: u64,
    /// The event as JSON, as stored.
    pub body: SharedText,
    /// The event, when known; read back from `body` on first use otherwise (a notifier
    /// that only forwards the text never pays for parsing it).
    event: Arc<OnceLock<AlertEvent>>,
}

impl OutboxItem {
    /// A new entry, with its event.
    pub fn new(seq: u64, event: AlertEvent, body: impl Into<SharedText>) -> Self {
        OutboxItem {
            seq,
            body: body.into(),
            event: Arc::new(OnceLock::from(event)),
        }
    }

    /// An entry read back from the store (its event parsed when first asked for).
    pub fn from_entry(e: crate::store::OutboxEntry) -> Self {
        OutboxItem {
            seq: e.seq,
            body: e.body.into(),
            event: Arc::new(OnceLock::new()),
        }
    }

    /// The event's idempotency key ([`AlertEvent::idempotency_key`]), for notifiers that
    /// pass it on (made on demand: most notifiers never need it).
    pub fn key(&self) -> Result<String, NotifyError> {
        Ok(self.event()?.idempotency_key())
    }

    /// The event, if it is at hand without parsing the text.
    pub fn event_if_known(&self) -> Option<&AlertEvent> {
        self.event.get()
    }

    /// The event.
    pub fn event(&self) -> Result<&AlertEvent, NotifyError> {
        if let Some(e) = self.event.get() {
            return Ok(e);
        }
        let parsed: AlertEvent = serde_json::from_str(&self.body).map_err(|e| {
            NotifyError::Permanent(format!(
                "outbox entry {} is not an alert event: {e}",
                self.seq
            ))
        })?;
        Ok(self.event.get_or_init(|| parsed))
    }
}

/// What personal data a notifier's messages may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privacy {
    /// Every classic field: name, age, address, phone, ward (hospital-internal channels).
    Full,
    /// Ward and patient id only: no name, age, address or phone (channels that leave the
    /// hospital: SMS, a chat service).
    Minimal,
}

/// The classic alert fields that identify a person: left out under [`Privacy::Minimal`].
pub const PERSONAL_FIELDS: [&str; 4] = ["patientname", "age", "patientaddress", "phone_number"];

/// One line for people: priority, event, message, who, where, the value.
pub fn summary(e: &AlertEvent, privacy: Privacy) -> String {
    let who = match privacy {
        Privacy::Full if !e.patient.patientname.is_empty() => {
            format!("{} (patient {})", e.patient.patientname, e.patient_id)
        }
        _ => format!("patient {}", e.patient_id),
    };
    let ward = if e.patient.admitted_ward.is_empty() {
        String::new()
    } else {
        format!(", ward {}", e.patient.admitted_ward)
    };
    let value = match (e.vital, e.value) {
        (Some(v), Some(x)) => format!(", {v} {x}"),
        (None, Some(x)) if e.rule == "news2" => format!(", NEWS2 {x}"),
        _ => String::new(),
    };
    format!(
        "{} {}: {} — {who}{ward}{value} (alert {})",
        e.priority.as_str().to_uppercase(),
        e.event.as_str(),
        e.alert_message,
        e.alert_id
    )
}

/// The classic subject, `Health Alert: Patient- {name}` (the patient id when the name
/// may not leave, or is unknown).
pub fn subject(e: &AlertEvent, privacy: Privacy) -> String {
    let who = match privacy {
        Privacy::Full if !e.patient.patientname.is_empty() => e.patient.patientname.clone(),
        _ => e.patient_id.as_str().to_owned(),
    };
    format!("Health Alert: Patient- {who}")
}

/// The classic alert fields, one per line, then vitalwatch's own.
pub fn body(e: &AlertEvent, privacy: Privacy) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} alert {}: {}\n",
        e.priority.as_str().to_uppercase(),
        e.event.as_str(),
        e.alert_message
    );
    let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let mut field = |k: &str, v: &str| {
        let _ = writeln!(s, "{k}: {v}");
    };
    if privacy == Privacy::Full {
        field("patientname", &e.patient.patientname);
        field(
            "age",
            &e.patient.age.map(|a| a.to_string()).unwrap_or_default(),
        );
        field("patientaddress", &e.patient.patientaddress);
        field("phone_number", &e.patient.phone_number);
    }
    field("admitted_ward", &e.patient.admitted_ward);
    field("patient_id", e.patient_id.as_str());
    field("heartBeat", &num(e.heart_beat));
    field("bp", &num(e.bp));
    field("input_message_time", &e.input_message_time.to_string());
    field("alert_generated_time", &e.alert_generated_time.to_string());
    field("alert_message", &e.alert_message);
    field("alert_id", e.alert_id.as_str());
    field("rule", &e.rule);
    field("priority", e.priority.as_str());
    field("state", e.state.as_str());
    field("vital", &e.vital.map(|v| v.to_string()).unwrap_or_default());
    field("value", &num(e.value));
    s
}

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Worth retrying (a full disk, a server that answered 4xx-temporary or timed out).
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help (a rejected address, a malformed request).
    #[error("permanent: {0}")]
    Permanent(String),
    /// The store failed while the notifier looked up where it got to.
    #[error("alert store: {0}")]
    Store(#[from] StoreError),
}

/// A destination for alert events.
pub trait Notifier: Send {
    /// The notifier's name: its cursor and attempts are kept under it.
    fn name(&self) -> &str;

    /// Most entries per [`Notifier::deliver`] call.
    fn max_batch(&self) -> usize {
        4096
    }

    /// How long entries may wait to fill a batch (0: deliver at once). A warehouse
    /// archiver waits to write fewer, larger files; a pager never waits.
    fn linger(&self) -> Duration {
        Duration::ZERO
    }

    /// Called once before the first delivery with the cursor from the store. Returns the
    /// cursor to continue from: a notifier that can see what it already delivered (the
    /// alert log's last line) moves it past that, so a crash between delivering and
    /// recording the delivery does not deliver twice.
    fn resume(&mut self, cursor: u64, _store: &dyn AlertStore) -> Result<u64, NotifyError> {
        Ok(cursor)
    }

    /// Delivers a batch, in order, all or nothing as far as the notifier can tell.
    fn deliver(&mut self, batch: &[OutboxItem]) -> Result<(), NotifyError>;

    /// After a [`Notifier::deliver`] of `batch` failed: whether `item` went out all the
    /// same (a notifier that sends a batch's events separately, in parallel). Those are
    /// counted as delivered and not handed to the fallback; a retry of the batch must not
    /// send them again (the notifier remembers them).
    fn went_out(&self, _item: &OutboxItem) -> bool {
        false
    }

    /// Whether `item` is one this notifier sends (not one it skips by its lane, routes or
    /// silences): what its delivery counters and latency count.
    fn takes(&self, _item: &OutboxItem) -> bool {
        true
    }

    /// Delivers one (test) entry outside the outbox and says what the other side
    /// answered (`vitalwatch notify test`).
    fn send_test(&mut self, item: &OutboxItem) -> Result<String, NotifyError> {
        self.deliver(std::slice::from_ref(item))?;
        Ok("accepted".into())
    }
}

/// An alert event for `vitalwatch notify test`: clearly a test, for a patient id no
/// hospital uses.
pub fn test_event(now: vitalwatch_core::model::Timestamp) -> AlertEvent {
    let mut e = crate::store::contract::sample_event();
    e.patient_id = vitalwatch_core::model::PatientId("vitalwatch-test".into());
    e.alert_id = vitalwatch_core::alert::AlertId(format!("test-{}", now.micros()));
    e.alert_message = "vitalwatch test notification: no patient is affected".into();
    e.rule = "test".into();
    e.rule_key = "test".into();
    e.input_message_time = now;
    e.alert_generated_time = now;
    e.episode_start = now;
    let p = std::sync::Arc::make_mut(&mut e.patient);
    p.patientname = "Test Patient".into();
    p.admitted_ward = "test".into();
    e
}

/// Appends each event as one JSON line to `alerts.jsonl`.
#[derive(Debug)]
pub struct JsonlNotifier {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlNotifier {
    /// Opens (creating) the alert log for appending. A torn last line (the process died
    /// mid-write) is cut off: its event is still in the outbox and is written again.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        if let Some(end) = torn_line_start(&mut f)? {
            tracing::warn!(file = %path.display(), "cutting off a torn last line of the alert log");
            f.set_len(end)?;
        }
        Ok(JsonlNotifier {
            path: path.to_owned(),
            // 1 MiB: a flood's lines reach the kernel in whole pages (with 8 KiB writes,
            // ext4 zeroed the rest of each new page first: a fifth of this thread's time).
            out: BufWriter::with_capacity(1 << 20, f),
        })
    }

    /// The last complete line of the log, if any.
    fn last_complete_line(&self) -> std::io::Result<Option<String>> {
        let mut f = File::open(&self.path)?;
        let len = f.metadata()?.len();
        // Alert lines are well under 8 KiB; read back far enough to hold the last one.
        let start = len.saturating_sub(64 * 1024);
        f.seek(SeekFrom::Start(start))?;
        let mut tail = String::new();
        f.read_to_string(&mut tail)?;
        Ok(tail
            .trim_end_matches('\n')
            .rsplit('\n')
            .next()
            .filter(|l| !l.is_empty())
            .map(str::to_owned))
    }
}

/// Where the file's torn last line (one without its newline) starts, if it has one.
fn torn_line_start(f: &mut File) -> std::io::Result<Option<u64>> {
    let len = f.metadata()?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    if tail.is_empty() || tail.last() == Some(&b'\n') {
        return Ok(None);
    }
    Ok(Some(
        tail.iter()
            .rposition(|&b| b == b'\n')
            .map_or(start, |i| start + i as u64 + 1),
    ))
}

impl Notifier for JsonlNotifier {
    fn name(&self) -> &str {
        "jsonl"
    }

    fn resume(&mut self, cursor: u64, store: &dyn AlertStore) -> Result<u64, NotifyError> {
        let last = self
            .last_complete_line()
            .map_err(|e| NotifyError::Transient(format!("read {}: {e}", self.path.display())))?;
        let Some(line) = last else {
            return Ok(cursor);
        };
        let Ok(event) = serde_json::from_str::<AlertEvent>(&line) else {
            return Ok(cursor);
        };
        // Written but not recorded as delivered: continue after it.
        Ok(store.outbox_seq(&event, cursor)?.unwrap_or(cursor))
    }

    fn deliver(&mut self, batch: &[OutboxItem]) -> Result<(), NotifyError> {
        let io = |e: std::io::Error| {
            NotifyError::Transient(format!("write {}: {e}", self.path.display()))
        };
        for item in batch {
            self.out.write_all(item.body.as_bytes()).map_err(io)?;
            self.out.write_all(b"\n").map_err(io)?;
        }
        self.out.flush().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_sharing_one_buffer_each_read_as_their_own() {
        let texts = ["{\"a\":1}", "", "{\"patientname\":\"Zoë\"}", "{}"];
        let mut buf = String::new();
        let mut ranges = Vec::new();
        for t in texts {
            let start = buf.len();
            buf.push_str(t);
            ranges.push(start..buf.len());
        }
        ranges.push(3..1_000); // out of bounds: empty, not a panic
        let shared: Vec<SharedText> = SharedText::split(buf.into(), ranges).collect();
        let read: Vec<&str> = shared.iter().map(|t| &**t).collect();
        assert_eq!(read, [texts[0], texts[1], texts[2], texts[3], ""]);
        let item = OutboxItem::new(1, crate::store::contract::sample_event(), shared[2].clone());
        assert_eq!(item.body.as_bytes(), texts[2].as_bytes());
    }

    #[test]
    fn an_item_read_back_from_the_store_has_the_event_and_key_it_was_stored_with() {
        let event = crate::store::contract::sample_event();
        let entry = crate::store::OutboxEntry {
            seq: 9,
            key: event.idempotency_key(),
            body: serde_json::to_string(&event).unwrap(),
        };
        let item = OutboxItem::from_entry(entry.clone());
        assert_eq!(item.event().unwrap(), &event);
        assert_eq!(item.key().unwrap(), entry.key);
        let garbled = OutboxItem::from_entry(crate::store::OutboxEntry {
            body: "{".into(),
            ..entry
        });
        assert!(matches!(garbled.event(), Err(NotifyError::Permanent(_))));
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_complete_lines_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let n = JsonlNotifier::open(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        assert_eq!(
            n.last_complete_line().unwrap().as_deref(),
            Some("{\"b\":2}")
        );
    }
}
