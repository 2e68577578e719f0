//! Alerts: priority (IEC 60601-1-8), lifecycle state, and the events the engine emits.
//!
//! The engine turns rule findings into [`AlertEvent`]s; the pipeline stores them in the
//! catalog, appends them to the alert log and the warehouse, and hands them to notifiers.
//! An alert's id is derived from (patient, rule key, episode start), so replaying the same
//! input yields the same ids and downstream stores stay idempotent.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{DeviceId, PatientId, SmolStr, Timestamp, Vital};

/// Alarm priority after IEC 60601-1-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Awareness: minor or slowly developing harm.
    Low,
    /// Prompt response: delayed harm.
    Medium,
    /// Immediate response: death or irreversible injury may follow quickly.
    High,
}

impl Priority {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
        }
    }

    /// Parses `low`, `medium`, `high` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Some(Priority::Low),
            "medium" | "med" => Some(Priority::Medium),
            "high" => Some(Priority::High),
            _ => None,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an alert is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Raised, nobody has acknowledged it yet.
    Triggered,
    /// A clinician has taken responsibility; re-notification stops.
    Acknowledged,
    /// The condition is over.
    Resolved,
}

impl AlertState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Triggered => "triggered",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEventKind {
    /// A new alert (a new episode).
    Triggered,
    /// Still abnormal and still unacknowledged after the re-notify interval.
    Renotified,
    /// The same episode got worse: its priority went up.
    Escalated,
    /// A clinician acknowledged it.
    Acknowledged,
    /// The alert's inputs went stale (a NEWS2 parameter older than the observation age):
    /// it stays open, and asks for a full set of observations.
    InputsStale,
    /// The condition cleared.
    Resolved,
}

impl AlertEventKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEventKind::Triggered => "triggered",
            AlertEventKind::Renotified => "renotified",
            AlertEventKind::Escalated => "escalated",
            AlertEventKind::Acknowledged => "acknowledged",
            AlertEventKind::InputsStale => "inputs_stale",
            AlertEventKind::Resolved => "resolved",
        }
    }

    /// Whether this event should reach a person (as opposed to a state change to record).
    pub fn notifies(self) -> bool {
        matches!(
            self,
            AlertEventKind::Triggered
                | AlertEventKind::Renotified
                | AlertEventKind::Escalated
                | AlertEventKind::InputsStale
        )
    }
}

/// Deterministic alert id from (patient, rule key, episode start):
/// `{episode start, Unix seconds, 10 hex}-{FNV-1a 64 of all three, 16 hex}`.
///
/// Stable across builds and platforms (std's hasher is not), so a replay re-derives the
/// same id and the alert store's upsert makes it a no-op. The time prefix makes ids sort by
/// episode start, so the catalog's indexes grow at their right edge instead of taking a
/// random page write per alert (35× faster inserts when alerts come by the million).
pub fn alert_id(patient: &PatientId, rule_key: &str, episode_start: Timestamp) -> AlertId {
    alert_id_of(patient, &[rule_key.as_bytes()], episode_start)
}

/// The id of an alert whose identity is a reading's content (the classic profile: every
/// abnormal reading is its own alert): rule key, device and value, at the reading's time.
/// Two readings of one second with different values get two ids; the same record
/// delivered twice gets one.
pub fn reading_alert_id(
    patient: &PatientId,
    rule_key: &str,
    device: &str,
    value: f64,
    observed_at: Timestamp,
) -> AlertId {
    alert_id_of(
        patient,
        &[
            rule_key.as_bytes(),
            device.as_bytes(),
            &value.to_bits().to_le_bytes(),
        ],
        observed_at,
    )
}

/// A hash that is the same in every run, build and machine (64-bit FNV-1a over each
/// part, with a separator so `("ab","c")` and `("a","bc")` differ): for identities that
/// are stored, such as alert ids, stream names and file fingerprints.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .fold(StableHash::new(), |h, part| h.part(part))
        .0
}

/// [`stable_hash`] part by part.
struct StableHash(u64);

impl StableHash {
    fn new() -> Self {
        StableHash(0xcbf2_9ce4_8422_2325)
    }

    fn part(mut self, part: &[u8]) -> Self {
        for &b in part {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        self
    }
}

fn alert_id_of(patient: &PatientId, parts: &[&[u8]], episode_start: Timestamp) -> AlertId {
    // stable_hash([patient, parts.., start]), without gathering the parts in a Vec: one
    // id per event in an alert flood.
    let h = parts
        .iter()
        .fold(
            StableHash::new().part(patient.as_str().as_bytes()),
            |h, part| h.part(part),
        )
        .part(&episode_start.micros().to_le_bytes())
        .0;
    let secs = episode_start.micros().div_euclid(1_000_000).max(0) as u64;
    // `format!("{secs:010x}-{h:016x}")` without the formatter: one id per event in an
    // alert flood, and the formatting machinery cost more than the hash.
    let mut id = String::with_capacity(27);
    push_hex(&mut id, secs, 10);
    id.push('-');
    push_hex(&mut id, h, 16);
    AlertId(id)
}

/// Appends `v` in lower-case hex, zero-padded to at least `width` digits (as `{:0width$x}`).
fn push_hex(out: &mut String, v: u64, width: usize) {
    let digits = (16 - v.leading_zeros() as usize / 4).max(width).max(1);
    for i in (0..digits).rev() {
        let nibble = if i < 16 { (v >> (i * 4)) & 0xf } else { 0 };
        out.push(char::from(b"0123456789abcdef"[nibble as usize]));
    }
}

/// An alert's id: the episode start in seconds (hex, so ids sort by it) and a stable hash
/// of what identifies the episode. Made only by [`alert_id`] and [`reading_alert_id`], or
/// read back from the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AlertId(pub String);

impl AlertId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for AlertId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl AsRef<str> for AlertId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<String> for AlertId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<&str> for AlertId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The patient details an alert carries (the classic alert's personal fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AlertPatient {
    /// Classic `patientname`.
    pub patientname: String,
    /// Classic `age`.
    pub age: Option<u32>,
    /// Classic `patientaddress`.
    pub patientaddress: String,
    /// Classic `phone_number`.
    pub phone_number: String,
    /// Classic `admitted_ward`.
    pub admitted_ward: String,
}

/// One alert lifecycle event: the unit the alert log, the catalog and notifiers receive.
///
/// What events of one patient or rule have in common (patient details, rule key, message)
/// is shared (`Arc`), not copied per event: an alert flood builds an event for a third of
/// all classic readings on the engine thread and frees it on a notifier's.
/// Field names follow the classic alert JSON (`patientname`, `bp`, `heartBeat`,
/// `input_message_time`, `alert_generated_time`, `alert_message`) plus vitalwatch's own.
/// Serialized by hand (below), read by the derive.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlertEvent {
    /// Deterministic id of the alert (one per episode).
    pub alert_id: AlertId,
    /// What happened.
    pub event: AlertEventKind,
    /// The alert's state after this event.
    pub state: AlertState,
    /// Rule family: `threshold`, `limit`, `news2`, `device_stale`.
    pub rule: Cow<'static, str>,
    /// Full rule key (e.g. `threshold:heart_rate:3`); the dedup key together with the patient.
    /// Shared: every alert of one band carries the same text.
    pub rule_key: Arc<str>,
    /// Priority now.
    pub priority: Priority,
    /// Patient id.
    pub patient_id: PatientId,
    /// Classic patient fields. Shared: every alert of one patient carries the same.
    #[serde(flatten)]
    pub patient: Arc<AlertPatient>,
    /// The vital that fired (absent for NEWS2 and device alarms).
    pub vital: Option<Vital>,
    /// Its value.
    pub value: Option<f64>,
    /// Classic `bp`: the observation's systolic pressure, if it had one.
    pub bp: Option<f64>,
    /// Classic `heartBeat`: the observation's heart rate, if it had one.
    #[serde(rename = "heartBeat")]
    pub heart_beat: Option<f64>,
    /// NEWS2 aggregate score, for NEWS2 alerts.
    pub news2_score: Option<u32>,
    /// Threshold band id that fired (classic `ref_id`).
    pub ref_id: Option<u32>,
    /// Version of the threshold table that band belongs to.
    pub ref_version: Option<u32>,
    /// Human-readable message (the band's `alert_message` for threshold alerts).
    pub alert_message: Arc<str>,
    /// Observation time of the reading that caused this event (classic `input_message_time`).
    pub input_message_time: Timestamp,
    /// When this event was generated (classic `alert_generated_time`).
    pub alert_generated_time: Timestamp,
    /// When the episode began (part of the alert id).
    pub episode_start: Timestamp,
    /// Device that produced the reading.
    pub device_id: Option<SmolStr>,
    /// Who acknowledged it, for acknowledgement events.
    pub acknowledged_by: Option<String>,
}

/// Calls `$put!(key, &value)` for each of an alert patient's fields, in the order of
/// their JSON text (part of [`alert_event_fields`]'s list).
macro_rules! alert_patient_fields {
    ($p:expr, $put:ident) => {{
        let p = $p;
        $put!("patientname", &p.patientname);
        $put!("age", &p.age);
        $put!("patientaddress", &p.patientaddress);
        $put!("phone_number", &p.phone_number);
        $put!("admitted_ward", &p.admitted_ward);
    }};
}

/// Calls `$put!(key, &value)` for each field of an alert event, in the order of its JSON
/// text: the one list both writers below follow.
macro_rules! alert_event_fields {
    ($e:expr, $put:ident) => {{
        let e = $e;
        $put!("alert_id", &e.alert_id);
        $put!("event", &e.event);
        $put!("state", &e.state);
        $put!("rule", &e.rule);
        $put!("rule_key", &e.rule_key);
        $put!("priority", &e.priority);
        $put!("patient_id", &e.patient_id);
        alert_patient_fields!(&*e.patient, $put);
        $put!("vital", &e.vital);
        $put!("value", &e.value);
        $put!("bp", &e.bp);
        $put!("heartBeat", &e.heart_beat);
        $put!("news2_score", &e.news2_score);
        $put!("ref_id", &e.ref_id);
        $put!("ref_version", &e.ref_version);
        $put!("alert_message", &e.alert_message);
        $put!("input_message_time", &e.input_message_time);
        $put!("alert_generated_time", &e.alert_generated_time);
        $put!("episode_start", &e.episode_start);
        $put!("device_id", &e.device_id);
        $put!("acknowledged_by", &e.acknowledged_by);
    }};
}

// Written out instead of derived: the derive serializes a struct with a `flatten`ed field
// as a map, entry by entry through serde's generic map path, and an alert flood serializes
// every event (the classic profile: a third of all readings). Same fields, same order, same
// text as the derive; `alert_event_json_round_trips_every_field` keeps them in step.
impl Serialize for AlertEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("AlertEvent", 25)?;
        macro_rules! put {
            ($key:literal, $value:expr) => {
                m.serialize_field($key, $value)?
            };
        }
        alert_event_fields!(self, put);
        m.end()
    }
}

impl AlertEvent {
    /// Appends the event's JSON text to `out`: the same bytes as its `Serialize` through
    /// serde_json, written faster for a writer of many events (serializing was a fifth of
    /// the engine thread in a classic-profile alert flood). Keys are written as the
    /// literals they are instead of being escaped byte by byte, and what events share (a
    /// patient's details, a band's rule key and message, behind one `Arc` each) is
    /// escaped once into `shared` and copied from there afterwards.
    pub fn write_json_shared(
        &self,
        out: &mut Vec<u8>,
        shared: &mut JsonFragments,
    ) -> serde_json::Result<()> {
        let mut open = b'{';
        // Names and ids, written as they are when nothing in them needs escaping
        // (serde_json's generic path per field cost more than the rest of the event).
        macro_rules! text {
            ($key:literal, $text:expr) => {{
                out.push(std::mem::replace(&mut open, b','));
                out.extend_from_slice(concat!("\"", $key, "\":").as_bytes());
                write_json_str(out, $text)?;
            }};
        }
        macro_rules! put {
            // The patient's five fields are one fragment, written where the first is.
            ("patientname", $value:expr) => {
                out.extend_from_slice(shared.patient(&self.patient)?)
            };
            ("age", $value:expr) => {
                let _ = $value;
            };
            ("patientaddress", $value:expr) => {
                let _ = $value;
            };
            ("phone_number", $value:expr) => {
                let _ = $value;
            };
            ("admitted_ward", $value:expr) => {
                let _ = $value;
            };
            ("rule_key", $value:expr) => {{
                out.extend_from_slice(b",\"rule_key\":");
                out.extend_from_slice(shared.text($value)?);
            }};
            ("alert_message", $value:expr) => {{
                out.extend_from_slice(b",\"alert_message\":");
                out.extend_from_slice(shared.text($value)?);
            }};
            // An event's three times are mostly one instant, and a flood's events share
            // their second: the last one written is kept.
            ("input_message_time", $value:expr) => {{
                out.extend_from_slice(b",\"input_message_time\":");
                out.extend_from_slice(shared.time(*$value)?);
            }};
            ("alert_generated_time", $value:expr) => {{
                out.extend_from_slice(b",\"alert_generated_time\":");
                out.extend_from_slice(shared.time(*$value)?);
            }};
            ("episode_start", $value:expr) => {{
                out.extend_from_slice(b",\"episode_start\":");
                out.extend_from_slice(shared.time(*$value)?);
            }};
            ("alert_id", $value:expr) => {
                text!("alert_id", Some($value.as_str()))
            };
            ("event", $value:expr) => {
                text!("event", Some($value.as_str()))
            };
            ("state", $value:expr) => {
                text!("state", Some($value.as_str()))
            };
            ("rule", $value:expr) => {
                text!("rule", Some(&**$value))
            };
            ("priority", $value:expr) => {
                text!("priority", Some($value.as_str()))
            };
            ("patient_id", $value:expr) => {
                text!("patient_id", Some($value.as_str()))
            };
            ("vital", $value:expr) => {
                text!("vital", $value.map(|v| v.name()))
            };
            ("device_id", $value:expr) => {
                text!("device_id", $value.as_deref())
            };
            ($key:literal, $value:expr) => {{
                out.push(std::mem::replace(&mut open, b','));
                out.extend_from_slice(concat!("\"", $key, "\":").as_bytes());
                serde_json::to_writer(&mut *out, $value)?;
            }};
        }
        alert_event_fields!(self, put);
        out.push(b'}');
        Ok(())
    }
}

/// `s` as a JSON string (`null` for none), exactly as serde_json writes it: as it is when
/// it holds nothing serde_json escapes (a quote, a backslash, a control character), else
/// through serde_json.
fn write_json_str(out: &mut Vec<u8>, s: Option<&str>) -> serde_json::Result<()> {
    let Some(s) = s else {
        out.extend_from_slice(b"null");
        return Ok(());
    };
    // A fold without an early exit: the compiler checks many bytes at a time.
    let plain = !s.bytes().fold(false, |escape, b| {
        escape | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// Hashes the addresses of shared values (an `Arc`'s, a `&'static str`'s), which maps
/// of what alert events share are keyed by: [`JsonFragments`] here, the outbox chunks'
/// shared strings and patients in the SQLite store. They are distinct machine words, not
/// input anyone chooses: one multiply mixes them well enough, where std's SipHash was a
/// tenth of the alert thread in an alert flood and 7 % of writing an event's text.
#[derive(Debug, Default)]
pub struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by addresses (or address and length), hashed by [`AddressHasher`].
pub type ByAddress<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<AddressHasher>>;

/// JSON fragments of what alert events share, for [`AlertEvent::write_json_shared`]: a
/// patient's details and a band's texts are escaped once per `Arc`, not once per event
/// (escaping them was the engine's largest cost in an alert flood).
///
/// Keyed by the `Arc`'s address. Each entry keeps its `Arc`, so the address is never
/// reused and the value never changes while cached (`Arc::get_mut` and `make_mut` cannot
/// write through a shared `Arc`). Entries nobody else holds any more (a patient's details
/// after a reference reload) are swept once the cache doubles.
#[derive(Debug, Default)]
pub struct JsonFragments {
    patients: ByAddress<usize, (Arc<AlertPatient>, Box<[u8]>)>,
    texts: ByAddress<usize, (Arc<str>, Box<[u8]>)>,
    sweep_at: usize,
    /// The last timestamp written, and its JSON text.
    time: Option<(Timestamp, Vec<u8>)>,
}

impl JsonFragments {
    /// `,"patientname":…` through `"admitted_ward":…`, as the plain writer writes them.
    fn patient(&mut self, p: &Arc<AlertPatient>) -> serde_json::Result<&[u8]> {
        self.sweep();
        let (_, text) = match self.patients.entry(Arc::as_ptr(p) as usize) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let mut text = Vec::with_capacity(160);
                macro_rules! put {
                    ($key:literal, $value:expr) => {{
                        text.extend_from_slice(concat!(",\"", $key, "\":").as_bytes());
                        serde_json::to_writer(&mut text, $value)?;
                    }};
                }
                alert_patient_fields!(&**p, put);
                v.insert((p.clone(), text.into()))
            }
        };
        Ok(text)
    }

    /// A shared text as a JSON string.
    fn text(&mut self, s: &Arc<str>) -> serde_json::Result<&[u8]> {
        self.sweep();
        let (_, text) = match self.texts.entry(Arc::as_ptr(s).cast::<u8>() as usize) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert((s.clone(), serde_json::to_vec(&**s)?.into())),
        };
        Ok(text)
    }

    /// A timestamp as a JSON string.
    fn time(&mut self, t: Timestamp) -> serde_json::Result<&[u8]> {
        match &mut self.time {
            Some((last, text)) if *last == t => {}
            slot => {
                let text = serde_json::to_vec(&t)?;
                *slot = Some((t, text));
            }
        }
        Ok(self.time.as_ref().map_or(&[][..], |(_, t)| &t[..]))
    }

    /// Drops the entries only this cache still holds, once it has doubled since the last
    /// sweep.
    fn sweep(&mut self) {
        if self.patients.len() + self.texts.len() <= self.sweep_at {
            return;
        }
        self.patients.retain(|_, (p, _)| Arc::strong_count(p) > 1);
        self.texts.retain(|_, (s, _)| Arc::strong_count(s) > 1);
        self.sweep_at = (2 * (self.patients.len() + self.texts.len())).max(1024);
    }

    /// How many fragments are cached.
    pub fn len(&self) -> usize {
        self.patients.len() + self.texts.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which rule an alert is about, as `rule_key` spells it in alert events, the store and
/// the warehouse: `news2`, `threshold:<vital>:<ref_id>`, `limit:<name>`,
/// `device_stale:<device>`. This type is the one place that writes and reads that text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleKey {
    /// The NEWS2 aggregate score.
    News2,
    /// A band of the threshold table.
    Band {
        /// The vital.
        vital: Vital,
        /// The band's `ref_id`.
        ref_id: u32,
    },
    /// A configured limit rule, by name.
    Limit(String),
    /// A device that stopped reporting.
    DeviceStale(DeviceId),
}

impl RuleKey {
    /// The rule family: `news2`, `threshold`, `limit`, `device_stale`.
    pub fn family(&self) -> &'static str {
        match self {
            RuleKey::News2 => "news2",
            RuleKey::Band { .. } => "threshold",
            RuleKey::Limit(_) => "limit",
            RuleKey::DeviceStale(_) => "device_stale",
        }
    }
}

impl fmt::Display for RuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleKey::News2 => f.write_str("news2"),
            RuleKey::Band { vital, ref_id } => write!(f, "threshold:{}:{ref_id}", vital.name()),
            RuleKey::Limit(name) => write!(f, "limit:{name}"),
            RuleKey::DeviceStale(device) => write!(f, "device_stale:{device}"),
        }
    }
}

/// A `rule_key` that names no rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a rule key: {0:?}")]
pub struct BadRuleKey(pub String);

impl std::str::FromStr for RuleKey {
    type Err = BadRuleKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRuleKey(s.to_owned());
        if s == "news2" {
            return Ok(RuleKey::News2);
        }
        if let Some(device) = s.strip_prefix("device_stale:") {
            return Ok(RuleKey::DeviceStale(DeviceId(device.into())));
        }
        if let Some(name) = s.strip_prefix("limit:") {
            return Ok(RuleKey::Limit(name.to_owned()));
        }
        let (vital, ref_id) = s
            .strip_prefix("threshold:")
            .and_then(|r| r.rsplit_once(':'))
            .ok_or_else(bad)?;
        Ok(RuleKey::Band {
            // Canonical names only: keys are written by `Display`, never by hand.
            vital: Vital::from_name(vital)
                .filter(|v| v.name() == vital)
                .ok_or_else(bad)?,
            ref_id: ref_id.parse().map_err(|_| bad())?,
        })
    }
}

impl AlertEvent {
    /// The time that, with the alert id and the event kind, identifies this event: the
    /// reading time that caused it, or for events without a reading (acknowledgements,
    /// re-notifications) when it happened. Re-processing the same input gives the same.
    pub fn identity_time(&self) -> Timestamp {
        use AlertEventKind::*;
        match self.event {
            Triggered | Resolved | Escalated | InputsStale => self.input_message_time,
            Renotified | Acknowledged => self.alert_generated_time,
        }
    }

    /// The idempotency key of this event (`<alert id>:<event>:<identity time micros>`):
    /// the alert store records each key once, and notifiers pass it on so a receiver can
    /// drop a re-delivery.
    pub fn idempotency_key(&self) -> String {
        // Pieced together rather than through `fmt`: notifiers make one per delivered
        // event, and formatting cost more than the event's SQLite row.
        let mut digits = itoa::Buffer::new();
        let time = digits.format(self.identity_time().micros());
        let (id, event) = (self.alert_id.as_str(), self.event.as_str());
        let mut key = String::with_capacity(id.len() + event.len() + time.len() + 2);
        for part in [id, ":", event, ":", time] {
            key.push_str(part);
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alert ids are stored, and a replay must derive the same ones in every build: these
    /// were computed outside Rust from the documented FNV-1a (Python, the golden event's
    /// reading), so a change to the hashing shows here.
    #[test]
    fn alert_ids_are_the_same_in_every_build() {
        let patient = PatientId("46".into());
        let at = Timestamp(1_704_067_200_000_000);
        let rule = "threshold:systolic:7";
        assert_eq!(
            reading_alert_id(&patient, rule, "classic-46", 128.0, at).as_str(),
            "0065920080-3aff416715c5c8fa"
        );
        assert_eq!(
            alert_id(&patient, rule, at).as_str(),
            "0065920080-c348b9b44603b1cb"
        );
    }

    #[test]
    fn rule_keys_round_trip_through_their_text() {
        for key in [
            RuleKey::News2,
            RuleKey::Band {
                vital: Vital::HeartRate,
                ref_id: 9,
            },
            RuleKey::Limit("spo2_low:scale2".into()),
            RuleKey::DeviceStale(DeviceId("bed:3".into())),
        ] {
            let text = key.to_string();
            assert_eq!(text.parse::<RuleKey>(), Ok(key), "{text}");
        }
        assert_eq!(
            "threshold:heart_rate:9".parse(),
            Ok(RuleKey::Band {
                vital: Vital::HeartRate,
                ref_id: 9
            })
        );
        for bad in ["", "threshold:pulse:1", "threshold:heart_rate:x", "news"] {
            assert!(bad.parse::<RuleKey>().is_err(), "{bad}");
        }
    }

    /// The hand-written `Serialize` writes what the derive wrote (the line below is the
    /// first event of a classic flood's `alerts.jsonl` from the derived version), and
    /// every field survives a round trip (a field added to the struct but not to the
    /// writer would come back empty).
    /// An event's JSON text as the classic golden reading makes it.
    const GOLDEN: &str = r#"{"alert_id":"0065920080-3aff416715c5c8fa","event":"triggered","state":"triggered","rule":"threshold","rule_key":"threshold:systolic:7","priority":"medium","patient_id":"46","patientname":"Charles Khan","age":19,"patientaddress":"5265 Oak Street Fairview","phone_number":"555-368-1843","admitted_ward":"18","vital":"systolic","value":128.0,"bp":128.0,"heartBeat":85.0,"news2_score":null,"ref_id":7,"ref_version":1,"alert_message":"High blood pressure (hypertension) for age 0-20","input_message_time":"2024-01-01T00:00:00Z","alert_generated_time":"2024-01-01T00:00:00Z","episode_start":"2024-01-01T00:00:00Z","device_id":"classic-46","acknowledged_by":null}"#;

    /// Receivers drop re-deliveries by an event's idempotency key, and the outbox keeps
    /// them: the text must be the same in every build, for every kind of event.
    #[test]
    fn idempotency_keys_keep_their_text() {
        let e: AlertEvent = serde_json::from_str(GOLDEN).unwrap();
        assert_eq!(
            e.idempotency_key(),
            "0065920080-3aff416715c5c8fa:triggered:1704067200000000"
        );
        // Acknowledgements are identified by when they were made; times before 1970 too.
        let ack = AlertEvent {
            event: AlertEventKind::Acknowledged,
            alert_generated_time: Timestamp(-1_500_000),
            ..e
        };
        assert_eq!(
            ack.idempotency_key(),
            "0065920080-3aff416715c5c8fa:acknowledged:-1500000"
        );
    }

    #[test]
    fn alert_event_json_round_trips_every_field() {
        let golden = GOLDEN;
        let e: AlertEvent = serde_json::from_str(golden).unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), golden);
        let full = AlertEvent {
            news2_score: Some(7),
            acknowledged_by: Some("nurse \"J\"".into()),
            alert_generated_time: Timestamp(1_704_067_200_250_000),
            input_message_time: Timestamp(1_704_067_200_000_001),
            ..e
        };
        let text = serde_json::to_string(&full).unwrap();
        assert_eq!(serde_json::from_str::<AlertEvent>(&text).unwrap(), full);
        // The fast writer writes the same bytes, escapes and absent values included.
        let mut odd = full.clone();
        Arc::make_mut(&mut odd.patient).patientname = "Zoë \"Z\" \\ O'Brien\n\t\u{1}".into();
        odd.device_id = None;
        odd.value = None;
        odd.vital = None;
        // Ids and names that need escaping (and a DEL and a non-ASCII letter, which don't).
        let mut odd_ids = full.clone();
        odd_ids.alert_id = AlertId("a\"b\\c\u{7f}é".into());
        odd_ids.patient_id = PatientId("p\u{1f}\"".into());
        odd_ids.device_id = Some("d\\e\u{0}".into());
        odd_ids.rule = Cow::Owned("r\"\n".into());
        let golden_event: AlertEvent = serde_json::from_str(golden).unwrap();
        // Twice over: written, then copied from the cache.
        let mut shared = JsonFragments::default();
        for e in [
            &golden_event,
            &full,
            &odd,
            &odd_ids,
            &golden_event,
            &full,
            &odd,
            &odd_ids,
        ] {
            let mut fast = Vec::new();
            e.write_json_shared(&mut fast, &mut shared).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                serde_json::to_string(e).unwrap()
            );
        }
        let keys = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
            .unwrap()
            .len();
        assert_eq!(keys, 25, "{text}");
    }

    /// A cached fragment can never outlive what it was written from: changing a cached
    /// patient makes a new `Arc` (the cache holds the old one), and details nobody holds
    /// any more are swept instead of kept for the life of the engine.
    #[test]
    fn shared_fragments_follow_each_patient_and_let_go_of_dropped_ones() {
        let golden = r#"{"alert_id":"0065920080-3aff416715c5c8fa","event":"triggered","state":"triggered","rule":"threshold","rule_key":"threshold:systolic:7","priority":"medium","patient_id":"46","patientname":"Charles Khan","age":19,"patientaddress":"5265 Oak Street Fairview","phone_number":"555-368-1843","admitted_ward":"18","vital":"systolic","value":128.0,"bp":128.0,"heartBeat":85.0,"news2_score":null,"ref_id":7,"ref_version":1,"alert_message":"High blood pressure (hypertension) for age 0-20","input_message_time":"2024-01-01T00:00:00Z","alert_generated_time":"2024-01-01T00:00:00Z","episode_start":"2024-01-01T00:00:00Z","device_id":"classic-46","acknowledged_by":null}"#;
        let mut e: AlertEvent = serde_json::from_str(golden).unwrap();
        let mut shared = JsonFragments::default();
        let write = |e: &AlertEvent, shared: &mut JsonFragments| {
            let mut out = Vec::new();
            e.write_json_shared(&mut out, shared).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(write(&e, &mut shared), golden);
        // Moved to another ward after its details were cached.
        Arc::make_mut(&mut e.patient).admitted_ward = "ICU \"2\"".into();
        e.alert_message = Arc::from("new message");
        let text = write(&e, &mut shared);
        assert_eq!(text, serde_json::to_string(&e).unwrap());
        assert!(text.contains(r#""admitted_ward":"ICU \"2\"""#), "{text}");
        assert!(text.contains(r#""alert_message":"new message""#), "{text}");
        // Thousands of patients come and go (reference reloads): the cache stays small.
        for i in 0..5_000 {
            let mut other = e.clone();
            Arc::make_mut(&mut other.patient).patientname = format!("patient {i}");
            assert_eq!(
                write(&other, &mut shared),
                serde_json::to_string(&other).unwrap()
            );
        }
        assert!(shared.len() <= 2_100, "{} fragments kept", shared.len());
        assert_eq!(write(&e, &mut shared), serde_json::to_string(&e).unwrap());
    }

    #[test]
    fn hex_digits_are_written_as_the_formatter_writes_them() {
        for v in [
            0,
            1,
            0xf,
            0x10,
            0x6592_0080,
            0xff_ffff_ffff,
            0x100_0000_0000,
            u64::MAX,
        ] {
            for width in [0, 10, 16] {
                let mut s = String::new();
                push_hex(&mut s, v, width);
                assert_eq!(s, format!("{v:0width$x}"), "{v:#x} width {width}");
            }
        }
    }

    #[test]
    fn alert_ids_are_deterministic_and_distinct() {
        let p = PatientId("1".into());
        let t = Timestamp(1_000_000);
        let a = alert_id(&p, "news2", t);
        assert_eq!(a, alert_id(&p, "news2", t));
        assert_eq!(a.as_str().len(), 27);
        assert!(a.as_str().starts_with("0000000001-"), "{a}");
        let later = alert_id(&PatientId("0".into()), "a", Timestamp(2_000_000));
        assert!(later > a, "ids sort by episode start");
        assert_ne!(a, alert_id(&p, "news2", Timestamp(1_000_001)));
        assert_ne!(a, alert_id(&PatientId("2".into()), "news2", t));
        assert_ne!(
            alert_id(&PatientId("1a".into()), "b", t),
            alert_id(&PatientId("1".into()), "ab", t)
        );
    }
}
