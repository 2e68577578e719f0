//! Codecs: message bytes in, [`Observation`]s out (and back, for the simulator).
//!
//! First stage of the data flow: every source (HTTP, files, the simulator) hands raw
//! records here. A record that cannot be decoded or fails validation becomes an error with
//! a reason an operator can act on; the caller turns it into a dead letter. Formats:
//!
//! - classic: `{"customerId":1,"heartBeat":74,"bp":202,"message_time":"2026-11-28 14:03:11"}`
//!   (`heartBeat` is heart rate, `bp` systolic pressure; no `message_time` means ingest time);
//! - canonical: `{"patient_id":"p-017","device_id":"bed-4-monitor","observed_at":"…Z",
//!   "vitals":{"heart_rate":88,"spo2":95,"consciousness":"A","on_oxygen":false,…}}`.
//!
//! A record with any value outside its vital's plausible range is rejected whole: a device
//! that reports a heart rate of 900 is not trusted for its other values either. Unknown
//! fields are refused in both layouts (a dead letter names them), so no value is ever
//! dropped silently.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;

use crate::model::{
    Consciousness, DeviceId, Observation, PatientId, SmolStr, Timestamp, Vital, VitalSet,
};
use smol_str::SmolStrBuilder;

/// Which JSON layout a record uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Decide per record: `customerId` means classic, else canonical.
    #[default]
    Auto,
    /// The classic producer's layout.
    Classic,
    /// vitalwatch's canonical layout.
    Canonical,
}

impl InputFormat {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Auto => "auto",
            InputFormat::Classic => "classic",
            InputFormat::Canonical => "canonical",
        }
    }
}

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON, or not the expected shape.
    #[error("invalid {format} record: {message}")]
    Malformed {
        /// The format that was tried.
        format: &'static str,
        /// serde's description, with line and column.
        message: String,
    },
    /// A value outside the physiologically plausible range.
    #[error("implausible value: {0}")]
    Implausible(String),
    /// A field with a bad value (timestamp, id, consciousness level).
    #[error("invalid field: {0}")]
    Invalid(String),
    /// No vital in the record.
    #[error("record has no vitals")]
    NoVitals,
    /// An observation time too far from the reference clock.
    #[error(transparent)]
    Time(#[from] crate::clock::TimeError),
}

/// A patient id as JSON writes it: a number (`"customerId":1`) or a string.
enum IdValue<'a> {
    Int(i64),
    Str(Cow<'a, str>),
}

// Hand-written instead of `#[serde(untagged)]`, which buffers every value into an
// intermediate tree before trying each variant: this is on every record's path.
impl<'de: 'a, 'a> Deserialize<'de> for IdValue<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = IdValue<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a patient id (string or integer)")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IdValue::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(IdValue::Int)
                    .map_err(|_| E::custom("patient id is too large"))
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(IdValue::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IdValue::Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A record's time text: as serde_json read it, or the bytes the classic scanner took
/// (ASCII: checked as it scanned). A flood's records share their second, so the bytes
/// are nearly always the previous record's and need no UTF-8 check at all.
enum TimeText<'a> {
    Text(Cow<'a, str>),
    Ascii(&'a [u8]),
}

impl<'de: 'a, 'a> Deserialize<'de> for TimeText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A string, borrowed from the input where it has no escapes.
        #[derive(Deserialize)]
        #[serde(transparent)]
        struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
        Text::deserialize(d).map(|t| TimeText::Text(t.0))
    }
}

impl TimeText<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            TimeText::Text(s) => s.as_bytes(),
            TimeText::Ascii(b) => b,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            TimeText::Text(s) => Some(s),
            TimeText::Ascii(b) => std::str::from_utf8(b).ok(),
        }
    }
}

impl IdValue<'_> {
    fn into_text(self) -> SmolStr {
        match self {
            IdValue::Int(i) => SmolStr::new(itoa::Buffer::new().format(i)),
            IdValue::Str(s) => SmolStr::from(s),
        }
    }
}

// Unknown fields are refused: a producer that sends `heartbeat` (lower case) or an extra
// `spo2` would otherwise lose that value without a trace.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassicRecord<'a> {
    #[serde(rename = "customerId", borrow)]
    customer_id: IdValue<'a>,
    #[serde(rename = "heartBeat", default)]
    heart_beat: Option<f64>,
    #[serde(default)]
    bp: Option<f64>,
    #[serde(default, borrow)]
    message_time: Option<TimeText<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanonicalRecord<'a> {
    #[serde(borrow)]
    patient_id: IdValue<'a>,
    #[serde(default, borrow)]
    device_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    observed_at: Option<TimeText<'a>>,
    vitals: CanonicalVitals<'a>,
    /// Label (the simulator marks episodes and artifacts); not stored, read by
    /// `vitalwatch evaluate` through [`decode_annotated`].
    #[serde(default, borrow)]
    annotation: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CanonicalVitals<'a> {
    heart_rate: Option<f64>,
    resp_rate: Option<f64>,
    spo2: Option<f64>,
    temp_c: Option<f64>,
    systolic: Option<f64>,
    diastolic: Option<f64>,
    #[serde(borrow)]
    consciousness: Option<Cow<'a, str>>,
    on_oxygen: Option<bool>,
}

/// Decodes one JSON record (a single object).
///
/// `ingested_at` stamps the record and stands in for a missing observation time.
pub fn decode_record(
    bytes: &[u8],
    format: InputFormat,
    ingested_at: Timestamp,
) -> Result<Observation, DecodeError> {
    let format = match format {
        InputFormat::Auto => sniff(bytes),
        f => f,
    };
    let obs = match format {
        InputFormat::Classic => decode_classic(bytes, ingested_at)?,
        _ => decode_canonical(bytes, ingested_at)?,
    };
    validate(&obs)?;
    Ok(obs)
}

/// Classic records are the only ones with `customerId`.
fn sniff(bytes: &[u8]) -> InputFormat {
    if memfind(bytes, b"\"customerId\"") {
        InputFormat::Classic
    } else {
        InputFormat::Canonical
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn malformed(format: &'static str, e: serde_json::Error) -> DecodeError {
    DecodeError::Malformed {
        format,
        message: e.to_string(),
    }
}

fn parse_time(
    raw: Option<TimeText<'_>>,
    ingested_at: Timestamp,
    field: &str,
) -> Result<Timestamp, DecodeError> {
    thread_local! {
        /// The last time text parsed on this thread and its value: a flood's records
        /// share their second, so most of them parse no time at all.
        static LAST: std::cell::RefCell<(String, Timestamp)> =
            const { std::cell::RefCell::new((String::new(), Timestamp(0))) };
    }
    let Some(raw) = raw else {
        return Ok(ingested_at);
    };
    let cached = LAST.with_borrow(|(text, t)| {
        (!text.is_empty() && text.as_bytes() == raw.as_bytes()).then_some(*t)
    });
    if let Some(t) = cached {
        return Ok(t);
    }
    // (Scanned text is ASCII: only serde_json's text could fail, and it is UTF-8.)
    let s = raw
        .as_str()
        .ok_or_else(|| DecodeError::Invalid(format!("{field}: not UTF-8")))?;
    let t = Timestamp::parse(s).map_err(|e| DecodeError::Invalid(format!("{field}: {e}")))?;
    LAST.with_borrow_mut(|(text, last)| {
        text.clear();
        text.push_str(s);
        *last = t;
    });
    Ok(t)
}

fn decode_classic(bytes: &[u8], ingested_at: Timestamp) -> Result<Observation, DecodeError> {
    let r: ClassicRecord<'_> = match scan_classic(bytes) {
        Some(r) => r,
        None => serde_json::from_slice(bytes).map_err(|e| malformed("classic", e))?,
    };
    let id = r.customer_id.into_text();
    if id.is_empty() {
        return Err(DecodeError::Invalid("customerId is empty".into()));
    }
    let observed_at = parse_time(r.message_time, ingested_at, "message_time")?;
    let mut vitals = VitalSet::default();
    if let Some(v) = r.heart_beat {
        vitals.set(Vital::HeartRate, v);
    }
    if let Some(v) = r.bp {
        vitals.set(Vital::Systolic, v);
    }
    // The classic producer names no device: one pseudo-device per patient.
    let mut device = SmolStrBuilder::new();
    device.push_str("classic-");
    device.push_str(&id);
    Ok(Observation {
        device_id: DeviceId(device.finish()),
        patient_id: PatientId(id),
        observed_at,
        ingested_at,
        vitals,
    })
}

/// The classic producer's line, read without serde: `{"customerId": 7, "heartBeat": 75,
/// "bp": 126, "message_time": "2024-01-01 00:00:00"}`, keys in any order, each at most
/// once. It takes only the plain cases, where it reads exactly what serde_json reads:
/// integer or string ids, numbers with at most 15 significant digits and no exponent
/// (both parsers round those exactly), strings without escapes, `null`. Anything else
/// (an escape, an unknown or repeated key, an exponent, a leading zero, trailing text)
/// returns `None` and goes to serde_json, which accepts it or names the error. Reading a
/// line this way is several times faster, and classic lines are most of a flood.
fn scan_classic(bytes: &[u8]) -> Option<ClassicRecord<'_>> {
    let mut c = Scan { b: bytes, i: 0 };
    c.ws();
    c.eat(b'{')?;
    let (mut id, mut hb, mut bp, mut time) = (None, None, None, None);
    loop {
        c.ws();
        let key = c.key()?;
        c.ws();
        c.eat(b':')?;
        c.ws();
        match key {
            ClassicKey::CustomerId if id.is_none() => {
                id = Some(match c.peek()? {
                    b'"' => IdValue::Str(Cow::Borrowed(c.string()?)),
                    // An integer's digits as written are its decimal text (no leading
                    // zero, no `-0`, at most 15 digits: `integer_text` declines the
                    // rest), so they are borrowed rather than parsed and printed again.
                    _ => IdValue::Str(Cow::Borrowed(c.integer_text()?)),
                })
            }
            ClassicKey::HeartBeat if hb.is_none() => hb = Some(c.number_or_null()?),
            ClassicKey::Bp if bp.is_none() => bp = Some(c.number_or_null()?),
            ClassicKey::MessageTime if time.is_none() => {
                time = Some(if c.null() {
                    None
                } else {
                    Some(TimeText::Ascii(c.ascii_string()?))
                })
            }
            _ => return None,
        }
        c.ws();
        match c.peek()? {
            b',' => c.i += 1,
            b'}' => {
                c.i += 1;
                break;
            }
            _ => return None,
        }
    }
    c.ws();
    if c.i != bytes.len() {
        return None;
    }
    Some(ClassicRecord {
        customer_id: id?,
        heart_beat: hb.flatten(),
        bp: bp.flatten(),
        message_time: time.flatten(),
    })
}

/// The keys of a classic line.
#[derive(Clone, Copy)]
enum ClassicKey {
    CustomerId,
    HeartBeat,
    Bp,
    MessageTime,
}

/// A cursor for [`scan_classic`].
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, ch: u8) -> Option<()> {
        (self.peek()? == ch).then(|| self.i += 1)
    }

    /// One of the four classic keys, quotes included, compared whole rather than read
    /// byte by byte: any other key (an escape in it included) declines.
    fn key(&mut self) -> Option<ClassicKey> {
        const KEYS: [(&[u8], ClassicKey); 4] = [
            (b"\"customerId\"", ClassicKey::CustomerId),
            (b"\"heartBeat\"", ClassicKey::HeartBeat),
            (b"\"bp\"", ClassicKey::Bp),
            (b"\"message_time\"", ClassicKey::MessageTime),
        ];
        let rest = &self.b[self.i..];
        let &(text, key) = KEYS.iter().find(|(text, _)| rest.starts_with(text))?;
        self.i += text.len();
        Some(key)
    }

    /// A string without escapes or control characters, as bytes.
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let s = &self.b[start..self.i];
        self.i += 1;
        Some(s)
    }

    /// A string of ASCII characters without escapes or control characters, as bytes.
    fn ascii_string(&mut self) -> Option<&'a [u8]> {
        self.raw_string().filter(|s| s.is_ascii())
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.raw_string()?).ok()
    }

    fn null(&mut self) -> bool {
        let yes = self.b[self.i..].starts_with(b"null");
        if yes {
            self.i += 4;
        }
        yes
    }

    /// Digits with an optional minus, no leading zero, at most 15 of them: whether there
    /// was a minus, and the digits.
    fn digit_run(&mut self) -> Option<(bool, &'a [u8])> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let first = self.i;
        while self.peek().is_some_and(|d| d.is_ascii_digit()) {
            self.i += 1;
        }
        let d = &self.b[first..self.i];
        if d.is_empty() || d.len() > 15 || (d.len() > 1 && d[0] == b'0') {
            return None;
        }
        Some((negative, d))
    }

    /// What [`Scan::digit_run`] takes, as text.
    fn digits(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.digit_run()?;
        std::str::from_utf8(&self.b[start..self.i]).ok()
    }

    /// An integer: what [`Scan::digit_run`] takes, not `-0` (serde_json reads it as a
    /// float) and not followed by a fraction or exponent. Returns where its text starts.
    fn integer_run(&mut self) -> Option<(usize, bool, &'a [u8])> {
        let start = self.i;
        let (negative, d) = self.digit_run()?;
        if (negative && d == b"0") || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some((start, negative, d))
    }

    /// An integer's text (see [`Scan::integer_run`]).
    fn integer_text(&mut self) -> Option<&'a str> {
        let (start, ..) = self.integer_run()?;
        std::str::from_utf8(&self.b[start..self.i]).ok()
    }

    fn number_or_null(&mut self) -> Option<Option<f64>> {
        if self.null() {
            return Some(None);
        }
        let start = self.i;
        // Integers of at most 15 digits are exact in an f64, as serde_json reads them,
        // so they skip the float parser; the rest (`-0`, a fraction) start over below.
        // Read straight from the digits (at most 15: no overflow), not through text.
        if let Some((_, negative, d)) = self.integer_run() {
            let v = d.iter().fold(0i64, |v, &c| v * 10 + i64::from(c - b'0'));
            let v = if negative { -v } else { v };
            return Some(Some(v as f64));
        }
        self.i = start;
        let int = self.digits()?;
        let mut significant = int.trim_start_matches('-').len();
        if self.peek() == Some(b'.') {
            self.i += 1;
            let frac = self.i;
            while self.peek().is_some_and(|d| d.is_ascii_digit()) {
                self.i += 1;
            }
            if self.i == frac {
                return None;
            }
            significant += self.i - frac;
        }
        if significant > 15 || matches!(self.peek(), Some(b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(&self.b[start..self.i])
            .ok()?
            .parse()
            .ok()
            .map(Some)
    }
}

/// Decodes one canonical record and its `annotation` field, the label `vitalwatch
/// evaluate` scores against (see `evaluate::Annotation`). Validated like [`decode_record`].
pub fn decode_annotated(
    bytes: &[u8],
    ingested_at: Timestamp,
) -> Result<(Observation, Option<String>), DecodeError> {
    let r: CanonicalRecord<'_> =
        serde_json::from_slice(bytes).map_err(|e| malformed("canonical", e))?;
    let annotation = r.annotation.as_deref().map(str::to_owned);
    let obs = canonical_observation(r, ingested_at)?;
    validate(&obs)?;
    Ok((obs, annotation))
}

fn decode_canonical(bytes: &[u8], ingested_at: Timestamp) -> Result<Observation, DecodeError> {
    let r: CanonicalRecord<'_> =
        serde_json::from_slice(bytes).map_err(|e| malformed("canonical", e))?;
    canonical_observation(r, ingested_at)
}

fn canonical_observation(
    r: CanonicalRecord<'_>,
    ingested_at: Timestamp,
) -> Result<Observation, DecodeError> {
    let id = r.patient_id.into_text();
    if id.is_empty() {
        return Err(DecodeError::Invalid("patient_id is empty".into()));
    }
    let observed_at = parse_time(r.observed_at, ingested_at, "observed_at")?;
    let v = r.vitals;
    let mut vitals = VitalSet::default();
    for (vital, value) in [
        (Vital::HeartRate, v.heart_rate),
        (Vital::RespRate, v.resp_rate),
        (Vital::Spo2, v.spo2),
        (Vital::TempC, v.temp_c),
        (Vital::Systolic, v.systolic),
        (Vital::Diastolic, v.diastolic),
    ] {
        if let Some(x) = value {
            vitals.set(vital, x);
        }
    }
    if let Some(c) = v.consciousness {
        let level = Consciousness::from_letter(&c).ok_or_else(|| {
            DecodeError::Invalid(format!("consciousness {c:?} is not one of A, C, V, P, U"))
        })?;
        vitals.set(Vital::Consciousness, level.code());
    }
    if let Some(o) = v.on_oxygen {
        vitals.set(Vital::OnOxygen, if o { 1.0 } else { 0.0 });
    }
    let device_id = match r.device_id {
        Some(d) if !d.is_empty() => DeviceId(SmolStr::from(d)),
        _ => DeviceId(format!("unknown-{id}").into()),
    };
    Ok(Observation {
        patient_id: PatientId(id),
        device_id,
        observed_at,
        ingested_at,
        vitals,
    })
}

/// Checks plausibility: every value finite and inside its vital's plausible range.
pub fn validate(obs: &Observation) -> Result<(), DecodeError> {
    if obs.vitals.is_empty() {
        return Err(DecodeError::NoVitals);
    }
    let mut bad = Vec::new();
    for (vital, value) in obs.vitals.iter() {
        let (lo, hi) = vital.plausible_range();
        if !(value.is_finite() && lo <= value && value <= hi) {
            bad.push(format!(
                "{} {} outside plausible range {}–{} {}",
                vital.name(),
                value,
                lo,
                hi,
                vital.unit()
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::Implausible(bad.join("; ")))
    }
}

/// A record of a multi-record body: its 1-based position and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// 1-based index of the record in the body (the line number for NDJSON).
    pub index: usize,
    /// The record's JSON text.
    pub bytes: &'a [u8],
}

/// Splits a request body into records: one JSON object, a JSON array of objects, or
/// newline-delimited JSON. A body that is none of these is one (bad) record.
pub fn split_body(body: &[u8]) -> Vec<RawRecord<'_>> {
    let trimmed = body.trim_ascii();
    if trimmed.first() == Some(&b'[') {
        if let Ok(items) = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(trimmed) {
            return items
                .into_iter()
                .enumerate()
                .map(|(i, raw)| RawRecord {
                    index: i + 1,
                    bytes: raw.get().as_bytes(),
                })
                .collect();
        }
        return vec![RawRecord {
            index: 1,
            bytes: trimmed,
        }];
    }
    let lines: Vec<RawRecord<'_>> = trimmed
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .map(|(i, l)| RawRecord {
            index: i + 1,
            bytes: l.trim_ascii(),
        })
        .collect();
    // A single pretty-printed object spans lines: if the first line is not a whole JSON
    // value but the body is, it is one record.
    if lines.len() > 1
        && serde_json::from_slice::<&serde_json::value::RawValue>(lines[0].bytes).is_err()
        && serde_json::from_slice::<&serde_json::value::RawValue>(trimmed).is_ok()
    {
        return vec![RawRecord {
            index: 1,
            bytes: trimmed,
        }];
    }
    lines
}

fn push_num(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Encodes an observation in the classic layout (heart rate and systolic pressure only).
/// `message_time` is written as `YYYY-MM-DD HH:MM:SS.fff`, UTC, as the classic producer did.
pub fn encode_classic(obs: &Observation, out: &mut String) {
    out.push_str("{\"customerId\":");
    match obs.patient_id.as_str().parse::<i64>() {
        Ok(n) => {
            let _ = write!(out, "{n}");
        }
        Err(_) => {
            let _ = write!(
                out,
                "{}",
                serde_json::Value::String(obs.patient_id.0.to_string())
            );
        }
    }
    if let Some(hr) = obs.vitals.get(Vital::HeartRate) {
        out.push_str(",\"heartBeat\":");
        push_num(out, hr);
    }
    if let Some(bp) = obs.vitals.get(Vital::Systolic) {
        out.push_str(",\"bp\":");
        push_num(out, bp);
    }
    let _ = write!(
        out,
        ",\"message_time\":\"{}\"}}",
        obs.observed_at
            .to_datetime()
            .format("%Y-%m-%d %H:%M:%S%.3f")
    );
}

/// Encodes an observation in the canonical layout, with an optional annotation.
pub fn encode_canonical(obs: &Observation, annotation: Option<&str>, out: &mut String) {
    let _ = write!(
        out,
        "{{\"patient_id\":{},\"device_id\":{},\"observed_at\":\"{}\",\"vitals\":{{",
        serde_json::Value::String(obs.patient_id.0.to_string()),
        serde_json::Value::String(obs.device_id.0.to_string()),
        obs.observed_at
            .to_datetime()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    let mut first = true;
    for (vital, value) in obs.vitals.iter() {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "\"{}\":", vital.name());
        match vital {
            Vital::Consciousness => {
                let letter = Consciousness::from_code(value)
                    .map(Consciousness::letter)
                    .unwrap_or("A");
                let _ = write!(out, "\"{letter}\"");
            }
            Vital::OnOxygen => out.push_str(if value >= 0.5 { "true" } else { "false" }),
            _ => push_num(out, value),
        }
    }
    out.push('}');
    if let Some(a) = annotation {
        let _ = write!(
            out,
            ",\"annotation\":{}",
            serde_json::Value::String(a.to_owned())
        );
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp(1_764_338_591_250_000);

    #[test]
    fn classic_record_becomes_two_readings() {
        let obs = decode_record(
            br#"{"customerId":1,"heartBeat":74,"bp":202}"#,
            InputFormat::Auto,
            T0,
        )
        .unwrap();
        assert_eq!(obs.patient_id.as_str(), "1");
        assert_eq!(obs.vitals.get(Vital::HeartRate), Some(74.0));
        assert_eq!(obs.vitals.get(Vital::Systolic), Some(202.0));
        assert_eq!(obs.readings().count(), 2);
        assert_eq!(obs.observed_at, T0, "no message_time means ingest time");
        let timed = decode_record(
            br#"{"customerId":"7","heartBeat":60,"message_time":"2026-11-28 14:03:11.250"}"#,
            InputFormat::Classic,
            Timestamp(0),
        )
        .unwrap();
        assert_eq!(
            timed.observed_at,
            Timestamp::parse("2026-11-28T14:03:11.250Z").unwrap()
        );
    }

    /// What a classic record reads as, to compare the two readers.
    fn fields(r: ClassicRecord<'_>) -> (String, Option<u64>, Option<u64>, Option<String>) {
        (
            r.customer_id.into_text().to_string(),
            r.heart_beat.map(f64::to_bits),
            r.bp.map(f64::to_bits),
            r.message_time.and_then(|t| t.as_str().map(str::to_owned)),
        )
    }

    /// Every line the scanner takes reads exactly as serde_json reads it (same id, same
    /// bits of every number, same time text); what it declines serde_json still decides.
    fn scanner_agrees(line: &str) -> bool {
        let serde = serde_json::from_slice::<ClassicRecord<'_>>(line.as_bytes());
        match scan_classic(line.as_bytes()) {
            Some(fast) => {
                assert_eq!(fields(fast), fields(serde.unwrap()), "{line}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn classic_scanner_reads_what_serde_reads_or_declines() {
        for taken in [
            r#"{"customerId": 872, "heartBeat": 75, "bp": 126, "message_time": "2024-01-01 00:00:00"}"#,
            r#"{"customerId":"p-7","heartBeat":75.25,"bp":null}"#,
            r#" { "bp" : -0 , "customerId" : -12 , "message_time" : null } "#,
            r#"{"customerId":1,"heartBeat":0.1,"bp":123456789012.345}"#,
            "{\"customerId\":1,\r\n\t\"heartBeat\":60}",
        ] {
            assert!(scanner_agrees(taken), "declined: {taken}");
        }
        for declined in [
            r#"{"customerId":1,"heartBeat":7e1}"#,
            r#"{"customerId":1,"heartBeat":075}"#,
            r#"{"customerId":1,"heartBeat":1.}"#,
            r#"{"customerId":"a\"b"}"#,
            r#"{"customerId":1,"customerId":2}"#,
            r#"{"customerId":1,"heartbeat":70}"#,
            r#"{"customerId":1} x"#,
            r#"{"customerId":-0}"#,
            r#"{"customerId":1.5}"#,
            r#"{"customerId":1,"heartBeat":1234567890123456}"#,
            r#"{"customerId":1,"heartBeat":true}"#,
            r#"{"heartBeat":70}"#,
            r#"{}"#,
            r#"{"customerId":1,}"#,
        ] {
            assert!(!scanner_agrees(declined), "taken: {declined}");
        }
    }

    proptest! {
        #[test]
        fn classic_scanner_agrees_with_serde_on_generated_lines(
            id in prop_oneof![any::<i32>().prop_map(|i| i.to_string()), "[a-z0-9-]{0,8}".prop_map(|s| format!("\"{s}\""))],
            hb in prop_oneof![Just("null".to_owned()), any::<i32>().prop_map(|i| i.to_string()), (-1e6f64..1e6).prop_map(|f| f.to_string()), "-?[0-9]{1,17}(\\.[0-9]{0,17})?([eE][0-9])?"],
            bp in proptest::option::of(-400.0f64..400.0),
            time in proptest::option::of("[0-9: -]{0,19}"),
            order in 0usize..3,
            space in prop_oneof![Just(""), Just(" "), Just("\n ")],
        ) {
            let mut parts = vec![format!("\"customerId\":{space}{id}"), format!("\"heartBeat\":{hb}")];
            if let Some(b) = bp { parts.push(format!("\"bp\":{b}")); }
            if let Some(t) = time { parts.push(format!("\"message_time\":\"{t}\"")); }
            let n = parts.len();
            parts.rotate_left(order % n);
            let line = format!("{{{}}}", parts.join(&format!(",{space}")));
            // A declined line is serde_json's to judge; a taken one must read the same.
            scanner_agrees(&line);
        }
    }

    #[test]
    fn canonical_record_from_the_issue() {
        let rec = br#"{"patient_id":"p-017","device_id":"bed-4-monitor","observed_at":"2026-11-28T14:03:11.250Z","vitals":{"heart_rate":88,"resp_rate":18,"spo2":95,"temp_c":37.2,"systolic":118,"diastolic":76,"consciousness":"A","on_oxygen":false}}"#;
        let obs = decode_record(rec, InputFormat::Auto, Timestamp(0)).unwrap();
        assert_eq!(obs.vitals.len(), 8);
        assert_eq!(obs.vitals.get(Vital::Consciousness), Some(0.0));
        assert_eq!(obs.device_id.as_str(), "bed-4-monitor");
    }

    #[test]
    fn rejects_with_reasons() {
        let cases: [(&[u8], &str); 6] = [
            (
                br#"{"customerId":1,"heartBeat":900,"bp":120}"#,
                "heart_rate 900 outside plausible range",
            ),
            (
                br#"{"patient_id":"x","vitals":{"spo2":130}}"#,
                "spo2 130 outside plausible range",
            ),
            (
                br#"{"patient_id":"x","vitals":{"pulse_ox":97}}"#,
                "unknown field `pulse_ox`",
            ),
            (br#"{"customerId":1}"#, "no vitals"),
            (
                br#"{"customerId":1,"heartBeat":70,"message_time":"yesterday"}"#,
                "message_time",
            ),
            (b"{not json", "invalid canonical record"),
        ];
        for (rec, want) in cases {
            let err = decode_record(rec, InputFormat::Auto, T0)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn bodies_split_into_records() {
        assert_eq!(split_body(br#"{"customerId":1,"bp":1}"#).len(), 1);
        let arr = split_body(br#"[{"customerId":1,"bp":1}, {"customerId":2,"bp":2}]"#);
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[1].bytes, br#"{"customerId":2,"bp":2}"#);
        let nd = split_body(b"{\"customerId\":1}\n\n{bad\n{\"customerId\":3}\n");
        assert_eq!(
            nd.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        let pretty = split_body(b"{\n  \"customerId\": 1,\n  \"bp\": 120\n}\n");
        assert_eq!(pretty.len(), 1);
    }

    fn observation() -> impl Strategy<Value = Observation> {
        (
            "[a-z0-9-]{1,12}",
            "[a-z0-9-]{1,12}",
            0i64..4_000_000_000_000_000,
            proptest::collection::vec(proptest::option::of(0u32..100), 8),
        )
            .prop_map(|(p, d, t, vals)| {
                let mut vitals = VitalSet::default();
                for (vital, v) in Vital::ALL.iter().zip(vals) {
                    if let Some(v) = v {
                        let (lo, hi) = vital.plausible_range();
                        let x = match vital {
                            Vital::TempC => {
                                ((lo + f64::from(v) * (hi - lo) / 100.0) * 10.0).round() / 10.0
                            }
                            Vital::OnOxygen => f64::from(v % 2),
                            Vital::Consciousness => f64::from(v % 5),
                            _ => (lo + f64::from(v) * (hi - lo) / 100.0).round(),
                        };
                        vitals.set(*vital, x);
                    }
                }
                if vitals.is_empty() {
                    vitals.set(Vital::HeartRate, 70.0);
                }
                Observation {
                    patient_id: PatientId(p.into()),
                    device_id: DeviceId(d.into()),
                    observed_at: Timestamp(t),
                    ingested_at: Timestamp(t),
                    vitals,
                }
            })
    }

    proptest! {
        #[test]
        fn canonical_round_trips(obs in observation()) {
            let mut s = String::new();
            encode_canonical(&obs, Some("label"), &mut s);
            let back = decode_record(s.as_bytes(), InputFormat::Auto, obs.ingested_at).unwrap();
            prop_assert_eq!(back, obs);
        }

        #[test]
        fn classic_round_trips(id in 1u32..1_000_000, hr in 0u32..350, bp in 0u32..350, ms in 0i64..4_000_000_000_000) {
            let obs = Observation {
                patient_id: PatientId(id.to_string().into()),
                device_id: DeviceId(format!("classic-{id}").into()),
                observed_at: Timestamp(ms * 1000),
                ingested_at: Timestamp(0),
                vitals: VitalSet::default().with(Vital::HeartRate, f64::from(hr)).with(Vital::Systolic, f64::from(bp)),
            };
            let mut s = String::new();
            encode_classic(&obs, &mut s);
            let back = decode_record(s.as_bytes(), InputFormat::Auto, Timestamp(0)).unwrap();
            prop_assert_eq!(back, obs);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes, InputFormat::Auto, T0);
            let _ = split_body(&bytes);
        }
    }

    // --- Near-valid records with hostile values ------------------------------------------
    //
    // `decoding_arbitrary_bytes_never_panics` rarely gets past the JSON parser. These
    // records are JSON objects in the classic and canonical layouts, with each field valid,
    // missing or hostile (wrong type, extreme number, odd string, bad timestamp), keys in
    // any order, and sometimes a duplicate or unknown key.

    /// JSON texts of hostile values: wrong types, extreme and odd numbers (including ones
    /// JSON does not allow), odd strings.
    const HOSTILE: &[&str] = &[
        "null",
        "true",
        "false",
        "[]",
        "[70]",
        "{}",
        r#"{"value":70}"#,
        r#""""#,
        r#""74""#,
        r#"" ""#,
        "1e308",
        "-1e308",
        "1e309",
        "1.7976931348623157e308",
        "-0.0",
        "-0",
        "1e-320",
        "4.9e-324",
        "-1",
        "0.1",
        "350.00000000001",
        "18446744073709551615",
        "18446744073709551616",
        "9223372036854775807",
        "-9223372036854775808",
        "NaN",
        "-Infinity",
        "1E2",
        "01",
        "+1",
        ".5",
        r#""\u0000""#,
        r#""\ud800""#,
        r#""患者 🫀""#,
        r#""\u202eA""#,
        r#""A\u0301""#,
    ];

    /// Timestamps that are wrong, odd or at the edge of what a timestamp can hold.
    const BAD_TIMES: &[&str] = &[
        r#""yesterday""#,
        r#""2026-13-45T25:61:61Z""#,
        r#""2026-02-29T00:00:00Z""#,
        r#""2026-11-28T14:03:60Z""#,
        r#""2026-11-28T14:03:11+99:00""#,
        r#""2026-11-28T14:03:11.1234567890123456789Z""#,
        r#""2026-11-28T14:03:11.Z""#,
        r#""2026-11-28T14:03:11.250z""#,
        r#""2026-11-28T14:03:11.250+14:00""#,
        r#"" 2026-11-28 14:03:11 ""#,
        r#""2026-11-28""#,
        r#""0000-01-01T00:00:00Z""#,
        r#""9999-12-31T23:59:59.999999999Z""#,
        r#""+275760-09-13T00:00:00Z""#,
        r#""262143-12-31T23:59:59Z""#,
        r#""-262144-01-01T00:00:00Z""#,
        r#""١٩٧٠-٠١-٠١T00:00:00Z""#,
        "1764338591",
    ];

    fn hostile_value() -> BoxedStrategy<String> {
        prop_oneof![
            4 => proptest::sample::select(HOSTILE).prop_map(str::to_owned),
            1 => any::<f64>().prop_map(|x| format!("{x:?}")),
            1 => any::<i64>().prop_map(|x| x.to_string()),
            1 => any::<String>().prop_map(|s| serde_json::Value::String(s).to_string()),
            1 => Just(format!("\"{}\"", "x".repeat(70_000))),
            1 => Just("9".repeat(400)),
        ]
        .boxed()
    }

    /// How hostile a record is: the weight of a hostile value (against 12 for a valid one
    /// and 1 for a missing one) for each field, and of an extra entry. Drawn per record, so
    /// some records are entirely valid and get as far as validation.
    fn hostility() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0), Just(1), Just(4)]
    }

    /// A field: missing (`None`), valid, or (with weight `hostile`) hostile, as JSON text.
    fn field(
        valid: impl Strategy<Value = String> + 'static,
        hostile: u32,
    ) -> BoxedStrategy<Option<String>> {
        if hostile == 0 {
            return prop_oneof![1 => Just(None), 12 => valid.prop_map(Some)].boxed();
        }
        prop_oneof![
            1 => Just(None),
            12 => valid.prop_map(Some),
            hostile => hostile_value().prop_map(Some),
        ]
        .boxed()
    }

    /// A number in `lo..=hi` with one decimal place, as JSON text.
    fn number(lo: u32, hi: u32) -> impl Strategy<Value = String> {
        (lo * 10..=hi * 10).prop_map(|t| format!("{}", f64::from(t) / 10.0))
    }

    fn patient_id() -> impl Strategy<Value = String> {
        prop_oneof![
            (0i64..100_000).prop_map(|n| n.to_string()),
            "[a-z0-9-]{1,12}".prop_map(|s| format!("\"{s}\"")),
        ]
    }

    fn timestamp(hostile: u32) -> BoxedStrategy<Option<String>> {
        let good = prop_oneof![
            (0i64..4_000_000_000_000_000).prop_map(|us| format!(
                "\"{}\"",
                Timestamp(us)
                    .to_datetime()
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            )),
            (0i64..4_000_000_000_000).prop_map(|ms| format!(
                "\"{}\"",
                Timestamp(ms * 1000)
                    .to_datetime()
                    .format("%Y-%m-%d %H:%M:%S%.3f")
            )),
        ];
        if hostile == 0 {
            return field(good, 0);
        }
        prop_oneof![
            12 => field(good, hostile),
            hostile => proptest::sample::select(BAD_TIMES).prop_map(|s| Some(s.to_owned())),
        ]
        .boxed()
    }

    /// A JSON object of the named fields (missing ones left out), keys in any order, with
    /// (weight `hostile` against 12) one or two extra entries: an unknown key or a duplicate
    /// of a known one.
    fn object(
        named: Vec<(&'static str, BoxedStrategy<Option<String>>)>,
        unknown: &'static [&'static str],
        hostile: u32,
    ) -> BoxedStrategy<String> {
        let keys: Vec<&'static str> = named.iter().map(|(k, _)| *k).collect();
        let values: Vec<BoxedStrategy<Option<String>>> =
            named.into_iter().map(|(_, v)| v).collect();
        let any_key: Vec<&'static str> = keys.iter().chain(unknown).copied().collect();
        let extras = prop_oneof![
            12 => Just(Vec::new()),
            hostile.max(1) => proptest::collection::vec(
                (proptest::sample::select(any_key), hostile_value()),
                1..=2
            ),
        ];
        (values, extras)
            .prop_map(move |(values, mut extras)| {
                if hostile == 0 {
                    extras.clear();
                }
                let mut pairs: Vec<(String, String)> = keys
                    .iter()
                    .zip(values)
                    .filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), v)))
                    .collect();
                pairs.extend(extras.into_iter().map(|(k, v)| (k.to_owned(), v)));
                pairs
            })
            .prop_shuffle()
            .prop_map(|pairs| {
                let body: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::Value::String(k.clone())))
                    .collect();
                format!("{{{}}}", body.join(","))
            })
            .boxed()
    }

    /// `{"customerId":…,"heartBeat":…,"bp":…,"message_time":…}`, near-valid.
    fn classic_record() -> BoxedStrategy<String> {
        hostility()
            .prop_flat_map(|h| {
                object(
                    vec![
                        ("customerId", field(patient_id(), h)),
                        ("heartBeat", field(number(0, 380), h)),
                        ("bp", field(number(0, 380), h)),
                        ("message_time", timestamp(h)),
                    ],
                    &["heartbeat", "BP", "customerid", "spo2"],
                    h,
                )
            })
            .boxed()
    }

    /// The canonical layout, near-valid.
    fn canonical_record() -> BoxedStrategy<String> {
        hostility().prop_flat_map(canonical_record_with).boxed()
    }

    fn canonical_record_with(h: u32) -> BoxedStrategy<String> {
        let letter = proptest::sample::select(&["A", "C", "V", "P", "U", "alert", "v", " P "][..]);
        let consciousness = if h == 0 {
            letter.boxed()
        } else {
            let bad = proptest::sample::select(&["X", "", "AVPU", "ａ", "Ü", "A\u{0}"][..]);
            prop_oneof![12 => letter, h => bad].boxed()
        }
        .prop_map(|c| serde_json::Value::String(c.to_owned()).to_string());
        let vitals = object(
            vec![
                ("heart_rate", field(number(0, 380), h)),
                ("resp_rate", field(number(0, 130), h)),
                ("spo2", field(number(0, 110), h)),
                ("temp_c", field(number(18, 48), h)),
                ("systolic", field(number(0, 380), h)),
                ("diastolic", field(number(0, 320), h)),
                ("consciousness", field(consciousness, h)),
                (
                    "on_oxygen",
                    field(
                        prop_oneof![Just("true".to_owned()), Just("false".to_owned())],
                        h,
                    ),
                ),
            ],
            &["pulse_ox", "heartRate", "HEART_RATE", "map"],
            h,
        );
        let device = prop_oneof![
            "[a-z0-9-]{0,16}".prop_map(|s| format!("\"{s}\"")),
            any::<String>().prop_map(|s| serde_json::Value::String(s).to_string()),
        ];
        object(
            vec![
                ("patient_id", field(patient_id(), h)),
                ("device_id", field(device, h)),
                ("observed_at", timestamp(h)),
                ("vitals", field(vitals, h)),
                (
                    "annotation",
                    field("[a-z:_]{0,24}".prop_map(|s| format!("\"{s}\"")), h),
                ),
            ],
            &["customer_id", "patientId", "vital", "ingested_at"],
            h,
        )
    }

    /// What the decoder may answer: an observation that passes `validate`, with a patient
    /// and finite, plausible values, or an error that says what is wrong.
    fn check_decoded(
        record: &str,
        result: Result<Observation, DecodeError>,
    ) -> Result<(), TestCaseError> {
        match result {
            Ok(obs) => {
                prop_assert!(validate(&obs).is_ok(), "{:?} from {}", obs, record);
                prop_assert!(!obs.patient_id.as_str().is_empty(), "{}", record);
                prop_assert!(!obs.vitals.is_empty(), "{}", record);
                for (vital, x) in obs.vitals.iter() {
                    let (lo, hi) = vital.plausible_range();
                    prop_assert!(
                        x.is_finite() && lo <= x && x <= hi,
                        "{} {} from {}",
                        vital,
                        x,
                        record
                    );
                }
            }
            Err(e) => {
                let detail = match &e {
                    DecodeError::Malformed { message, .. } => message.clone(),
                    DecodeError::Implausible(m) | DecodeError::Invalid(m) => m.clone(),
                    other => other.to_string(),
                };
                prop_assert!(!detail.trim().is_empty(), "{:?} for {}", e, record);
                prop_assert!(!e.to_string().trim().is_empty());
            }
        }
        Ok(())
    }

    /// The generators reach every outcome, valid records included, in both layouts.
    #[test]
    fn hostile_records_get_past_the_parser() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        for (layout, strategy) in [
            ("classic", classic_record()),
            ("canonical", canonical_record()),
        ] {
            let mut runner = TestRunner::deterministic();
            // Ok, Malformed, Implausible, Invalid, any other error.
            let mut outcomes = [0usize; 5];
            for _ in 0..1000 {
                let record = strategy.new_tree(&mut runner).unwrap().current();
                outcomes[match decode_record(record.as_bytes(), InputFormat::Auto, T0) {
                    Ok(_) => 0,
                    Err(DecodeError::Malformed { .. }) => 1,
                    Err(DecodeError::Implausible(_)) => 2,
                    Err(DecodeError::Invalid(_)) => 3,
                    Err(_) => 4,
                }] += 1;
            }
            assert!(outcomes[0] >= 100, "{layout}: outcomes {outcomes:?}");
            assert!(
                outcomes[1..4].iter().all(|&n| n >= 10),
                "{layout}: outcomes {outcomes:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn decoding_hostile_records_never_panics_and_keeps_only_plausible_values(
            record in prop_oneof![classic_record(), canonical_record()],
            format in prop_oneof![
                3 => Just(InputFormat::Auto),
                1 => Just(InputFormat::Classic),
                1 => Just(InputFormat::Canonical),
            ],
        ) {
            check_decoded(&record, decode_record(record.as_bytes(), format, T0))?;
            for raw in split_body(record.as_bytes()) {
                check_decoded(&record, decode_record(raw.bytes, format, T0))?;
            }
        }
    }
}
