//! The outbox's second chunk format: alert events as their fields, not their JSON texts.
//!
//! Sits under [`super::history`]: the alert thread encodes each burst's new events here
//! (one chunk per up to [`super::history::CHUNK`] sequence numbers), and the readers —
//! notifiers catching up, `alerts list`, the HTTP API, restart — decode them back into
//! [`AlertEvent`]s, and into their JSON texts where a notifier needs one.
//!
//! Why fields: the first format kept each event's JSON text (~650 bytes) and compressed
//! it, and in a classic-profile alert flood compressing those texts was 40 % of the alert
//! thread. A text is a function of its event's fields (the writer is serde's, byte for
//! byte: the golden test in `vitalwatch_core::alert`), so storing the fields loses
//! nothing. What events share is written once per chunk: a patient's details, a band's
//! rule key and message, the names of enums (as their JSON names, so a chunk reads back
//! the same whatever order the enums are declared in). Times are varints: each episode
//! start relative to the one before it in the chunk (a flood's events share their
//! second), the other two relative to their episode start. A value is a varint when it is
//! a whole number (vital signs mostly are), else its exact bits. In a classic flood an
//! event is ~65 bytes before compression, ~120 with its share of the chunk's patients and
//! strings, instead of ~650; zstd takes a chunk to ~45 %.
//!
//! A chunk is [`MAGIC`] and then one zstd frame of:
//!
//! ```text
//! strings:  count, then each as length + UTF-8 bytes
//! patients: count, then each as name, address, phone, ward (string numbers), age + 1 (0: none)
//! events:   count, then each as
//!           alert id (length + bytes), event, state, rule, rule key, priority (string
//!           numbers), patient id (length + bytes), patient (number), vital (string
//!           number + 1, 0: none), alert message (string number), a byte of flags for the
//!           optional fields that follow, value, bp, heartBeat (each a value, below),
//!           news2 score, ref id, ref version, episode start (minus the chunk's previous
//!           event's, the first minus 0), input message time and alert generated time
//!           (both minus the episode start), device id, acknowledged by
//! ```
//!
//! Every number is an unsigned LEB128 varint, every time a zigzag varint of microseconds.
//! A value is a varint n: a whole number w of magnitude at most 2^53 (not −0) is
//! n = 2 × zigzag(w); any other value is n = 1 followed by its 8-byte IEEE bits.
//! A chunk of the first format is a bare zstd frame: its magic number differs from this
//! one, so both are read wherever they are.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use vitalwatch_core::alert::{AlertEvent, AlertId, AlertPatient, ByAddress};
use vitalwatch_core::model::{PatientId, Timestamp};

/// The first bytes of a chunk of this format (a zstd frame starts `28 b5 2f fd`).
pub(super) const MAGIC: &[u8; 4] = b"vwE2";

const VALUE: u8 = 1;
const BP: u8 = 1 << 1;
const HEART_BEAT: u8 = 1 << 2;
const NEWS2: u8 = 1 << 3;
const REF_ID: u8 = 1 << 4;
const REF_VERSION: u8 = 1 << 5;
const DEVICE: u8 = 1 << 6;
const ACKNOWLEDGED_BY: u8 = 1 << 7;

/// A chunk that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct BadChunk(String);

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn put_time(out: &mut Vec<u8>, micros: i64) {
    put_varint(out, zigzag(micros));
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The largest whole value written as a varint. Any whole f64 below 2^63 would survive
/// `as i64` and back; this bound keeps zigzag and the tag bit within 56 bits, and vital
/// signs are nowhere near it (larger values keep their bits).
const WHOLE: f64 = (1u64 << 53) as f64;

fn put_value(out: &mut Vec<u8>, v: f64) {
    if v.fract() == 0.0 && v.abs() <= WHOLE && !(v == 0.0 && v.is_sign_negative()) {
        put_varint(out, zigzag(v as i64) << 1);
    } else {
        put_varint(out, 1);
        out.extend_from_slice(&v.to_bits().to_le_bytes());
    }
}

/// Gathers a chunk's shared strings and patients, each once, by address: every value a
/// chunk's events share is behind one `Arc` or is a `&'static str`, and all of them stay
/// borrowed while the chunk is encoded, so no address is reused meanwhile.
#[derive(Default)]
struct Shared<'a> {
    strings: Vec<&'a str>,
    by_address: ByAddress<(usize, usize), u32>,
    patients: Vec<&'a AlertPatient>,
    patient_numbers: ByAddress<usize, u32>,
}

impl<'a> Shared<'a> {
    fn string(&mut self, s: &'a str) -> u32 {
        match self.by_address.entry((s.as_ptr() as usize, s.len())) {
            Entry::Occupied(o) => *o.get(),
            Entry::Vacant(v) => {
                self.strings.push(s);
                *v.insert(self.strings.len() as u32 - 1)
            }
        }
    }

    fn patient(&mut self, p: &'a Arc<AlertPatient>) -> u32 {
        match self.patient_numbers.entry(Arc::as_ptr(p) as usize) {
            Entry::Occupied(o) => *o.get(),
            Entry::Vacant(v) => {
                self.patients.push(p);
                *v.insert(self.patients.len() as u32 - 1)
            }
        }
    }
}

/// Encodes `events` as one chunk (magic number, then the zstd frame).
pub(super) fn encode<'a>(
    compressor: &mut zstd::bulk::Compressor<'_>,
    events: &[&'a AlertEvent],
) -> std::io::Result<Vec<u8>> {
    let mut shared = Shared::default();
    let mut body = Vec::with_capacity(events.len() * 96);
    put_varint(&mut body, events.len() as u64);
    let mut previous_start = 0i64;
    for e in events {
        put_str(&mut body, e.alert_id.as_str());
        let e: &'a AlertEvent = e;
        for s in [
            e.event.as_str(),
            e.state.as_str(),
            &*e.rule,
            &*e.rule_key,
            e.priority.as_str(),
        ] {
            put_varint(&mut body, shared.string(s).into());
        }
        put_str(&mut body, e.patient_id.as_str());
        put_varint(&mut body, shared.patient(&e.patient).into());
        let vital = e.vital.map_or(0, |v| shared.string(v.name()) + 1);
        put_varint(&mut body, vital.into());
        put_varint(&mut body, shared.string(&e.alert_message).into());
        let flags = [
            (e.value.is_some(), VALUE),
            (e.bp.is_some(), BP),
            (e.heart_beat.is_some(), HEART_BEAT),
            (e.news2_score.is_some(), NEWS2),
            (e.ref_id.is_some(), REF_ID),
            (e.ref_version.is_some(), REF_VERSION),
            (e.device_id.is_some(), DEVICE),
            (e.acknowledged_by.is_some(), ACKNOWLEDGED_BY),
        ]
        .iter()
        .fold(0, |f, &(set, bit)| if set { f | bit } else { f });
        body.push(flags);
        for v in [e.value, e.bp, e.heart_beat].into_iter().flatten() {
            put_value(&mut body, v);
        }
        for n in [e.news2_score, e.ref_id, e.ref_version]
            .into_iter()
            .flatten()
        {
            put_varint(&mut body, n.into());
        }
        let start = e.episode_start.micros();
        put_time(&mut body, start.wrapping_sub(previous_start));
        previous_start = start;
        put_time(&mut body, e.input_message_time.micros().wrapping_sub(start));
        put_time(
            &mut body,
            e.alert_generated_time.micros().wrapping_sub(start),
        );
        for s in [e.device_id.as_deref(), e.acknowledged_by.as_deref()]
            .into_iter()
            .flatten()
        {
            put_str(&mut body, s);
        }
    }
    // The patients' fields join the string table after the events' own strings.
    let mut patients = Vec::with_capacity(shared.patients.len() * 8);
    put_varint(&mut patients, shared.patients.len() as u64);
    let mut strings = std::mem::take(&mut shared.strings);
    for p in &shared.patients {
        for s in [
            &p.patientname,
            &p.patientaddress,
            &p.phone_number,
            &p.admitted_ward,
        ] {
            strings.push(s);
            put_varint(&mut patients, strings.len() as u64 - 1);
        }
        put_varint(&mut patients, p.age.map_or(0, |a| u64::from(a) + 1));
    }
    let size: usize = strings.iter().map(|s| s.len() + 2).sum();
    let mut raw = Vec::with_capacity(size + patients.len() + body.len() + 8);
    put_varint(&mut raw, strings.len() as u64);
    for s in &strings {
        put_str(&mut raw, s);
    }
    raw.extend_from_slice(&patients);
    raw.extend_from_slice(&body);
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&compressor.compress(&raw)?);
    Ok(out)
}

/// Reads a chunk's fields back.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bad(why: &str) -> BadChunk {
        BadChunk(why.to_owned())
    }

    fn byte(&mut self) -> Result<u8, BadChunk> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| Self::bad("truncated"))?;
        self.rest = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, BadChunk> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err(Self::bad("a number is too long"))
    }

    fn number<T: TryFrom<u64>>(&mut self) -> Result<T, BadChunk> {
        T::try_from(self.varint()?).map_err(|_| Self::bad("a number is out of range"))
    }

    fn time(&mut self) -> Result<i64, BadChunk> {
        Ok(unzigzag(self.varint()?))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], BadChunk> {
        let (b, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or_else(|| Self::bad("truncated"))?;
        self.rest = rest;
        Ok(b)
    }

    fn str(&mut self) -> Result<&'a str, BadChunk> {
        let n = self.number()?;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| Self::bad("a text is not UTF-8"))
    }

    fn value(&mut self) -> Result<f64, BadChunk> {
        match self.varint()? {
            1 => {
                let b = self.bytes(8)?;
                let mut bits = [0; 8];
                bits.copy_from_slice(b);
                Ok(f64::from_bits(u64::from_le_bytes(bits)))
            }
            n if n & 1 == 0 => Ok(unzigzag(n >> 1) as f64),
            _ => Err(Self::bad("a value is neither whole nor bits")),
        }
    }
}

/// A chunk's string table, each string made an `Arc` once where events share it.
struct Strings<'a> {
    texts: Vec<&'a str>,
    shared: Vec<Option<Arc<str>>>,
}

impl<'a> Strings<'a> {
    fn get(&self, i: usize) -> Result<&'a str, BadChunk> {
        self.texts
            .get(i)
            .copied()
            .ok_or_else(|| BadChunk(format!("no string {i}")))
    }

    fn shared(&mut self, i: usize) -> Result<Arc<str>, BadChunk> {
        let text = self.get(i)?;
        Ok(self.shared[i].get_or_insert_with(|| text.into()).clone())
    }

    /// An enum by its JSON name.
    fn name<T: for<'de> Deserialize<'de>>(&self, i: usize) -> Result<T, BadChunk> {
        let name = self.get(i)?;
        let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            name.into_deserializer();
        T::deserialize(de).map_err(|e| BadChunk(format!("{name:?}: {e}")))
    }
}

/// The events of a chunk of this format (`blob` starts with [`MAGIC`]).
pub(super) fn decode(blob: &[u8]) -> Result<Vec<AlertEvent>, BadChunk> {
    let frame = blob
        .strip_prefix(MAGIC)
        .ok_or_else(|| BadChunk("not an event chunk".into()))?;
    let raw = zstd::stream::decode_all(frame).map_err(|e| BadChunk(e.to_string()))?;
    let mut r = Reader { rest: &raw };
    let n: usize = r.number()?;
    let mut texts = Vec::with_capacity(n.min(raw.len()));
    for _ in 0..n {
        texts.push(r.str()?);
    }
    let mut strings = Strings {
        shared: vec![None; texts.len()],
        texts,
    };
    let n: usize = r.number()?;
    let mut patients = Vec::with_capacity(n.min(raw.len()));
    for _ in 0..n {
        let field = |r: &mut Reader<'_>| -> Result<String, BadChunk> {
            Ok(strings.get(r.number()?)?.to_owned())
        };
        let patientname = field(&mut r)?;
        let patientaddress = field(&mut r)?;
        let phone_number = field(&mut r)?;
        let admitted_ward = field(&mut r)?;
        let age = match r.varint()? {
            0 => None,
            a => Some(u32::try_from(a - 1).map_err(|_| Reader::bad("an age is out of range"))?),
        };
        patients.push(Arc::new(AlertPatient {
            patientname,
            age,
            patientaddress,
            phone_number,
            admitted_ward,
        }));
    }
    let n: usize = r.number()?;
    let mut events = Vec::with_capacity(n.min(raw.len()));
    let mut previous_start = 0i64;
    for _ in 0..n {
        let alert_id = AlertId(r.str()?.to_owned());
        let event = strings.name(r.number()?)?;
        let state = strings.name(r.number()?)?;
        let rule = strings.get(r.number()?)?.to_owned().into();
        let rule_key = strings.shared(r.number()?)?;
        let priority = strings.name(r.number()?)?;
        let patient_id = PatientId(r.str()?.into());
        let patient = patients
            .get(r.number::<usize>()?)
            .cloned()
            .ok_or_else(|| Reader::bad("no such patient"))?;
        let vital = match r.number::<usize>()? {
            0 => None,
            v => Some(strings.name(v - 1)?),
        };
        let alert_message = strings.shared(r.number()?)?;
        let flags = r.byte()?;
        let mut f64_if = |bit: u8| (flags & bit != 0).then(|| r.value()).transpose();
        let (value, bp, heart_beat) = (f64_if(VALUE)?, f64_if(BP)?, f64_if(HEART_BEAT)?);
        let mut u32_if = |bit: u8| (flags & bit != 0).then(|| r.number()).transpose();
        let (news2_score, ref_id, ref_version) =
            (u32_if(NEWS2)?, u32_if(REF_ID)?, u32_if(REF_VERSION)?);
        let start = r.time()?.wrapping_add(previous_start);
        previous_start = start;
        let input = r.time()?.wrapping_add(start);
        let generated = r.time()?.wrapping_add(start);
        let mut str_if = |bit: u8| -> Result<Option<String>, BadChunk> {
            Ok((flags & bit != 0)
                .then(|| r.str())
                .transpose()?
                .map(str::to_owned))
        };
        let (device_id, acknowledged_by) = (str_if(DEVICE)?, str_if(ACKNOWLEDGED_BY)?);
        events.push(AlertEvent {
            alert_id,
            event,
            state,
            rule,
            rule_key,
            priority,
            patient_id,
            patient,
            vital,
            value,
            bp,
            heart_beat,
            news2_score,
            ref_id,
            ref_version,
            alert_message,
            input_message_time: Timestamp(input),
            alert_generated_time: Timestamp(generated),
            episode_start: Timestamp(start),
            device_id: device_id.map(Into::into),
            acknowledged_by,
        });
    }
    if !r.rest.is_empty() {
        return Err(Reader::bad("bytes after the last event"));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitalwatch_core::alert::{AlertEventKind, AlertState, JsonFragments, Priority};
    use vitalwatch_core::model::Vital;

    /// Events that between them set every field both ways, every name of every enum,
    /// texts that need escaping, times before 1970 and far apart, values no text holds
    /// exactly, and `Arc`s shared by some events and not by others.
    fn varied() -> Vec<AlertEvent> {
        let golden: AlertEvent = serde_json::from_str(
            r#"{"alert_id":"0065920080-3aff416715c5c8fa","event":"triggered","state":"triggered","rule":"threshold","rule_key":"threshold:systolic:7","priority":"medium","patient_id":"46","patientname":"Charles Khan","age":19,"patientaddress":"5265 Oak Street Fairview","phone_number":"555-368-1843","admitted_ward":"18","vital":"systolic","value":128.0,"bp":128.0,"heartBeat":85.0,"news2_score":null,"ref_id":7,"ref_version":1,"alert_message":"High blood pressure (hypertension) for age 0-20","input_message_time":"2024-01-01T00:00:00Z","alert_generated_time":"2024-01-01T00:00:00Z","episode_start":"2024-01-01T00:00:00Z","device_id":"classic-46","acknowledged_by":null}"#,
        )
        .unwrap();
        let kinds = [
            AlertEventKind::Triggered,
            AlertEventKind::Renotified,
            AlertEventKind::Escalated,
            AlertEventKind::Acknowledged,
            AlertEventKind::InputsStale,
            AlertEventKind::Resolved,
        ];
        let states = [
            AlertState::Triggered,
            AlertState::Acknowledged,
            AlertState::Resolved,
        ];
        let priorities = [Priority::Low, Priority::Medium, Priority::High];
        let odd = Arc::new(AlertPatient {
            patientname: "Zoë \"Quote\" O'Brien\\\n".into(),
            age: None,
            patientaddress: String::new(),
            phone_number: "\u{1}\u{7f}".into(),
            admitted_ward: "ICU ✓".into(),
        });
        let mut out = vec![golden.clone()];
        for i in 0..24usize {
            let mut e = golden.clone();
            e.alert_id = AlertId(format!("{i:010x}-id \"{i}\""));
            e.event = kinds[i % kinds.len()];
            e.state = states[i % states.len()];
            e.priority = priorities[i % priorities.len()];
            e.vital = (i % 9 != 8).then(|| Vital::ALL[i % Vital::ALL.len()]);
            e.rule = if i % 2 == 0 {
                "news2".into()
            } else {
                format!("limit {i}").into()
            };
            if i % 3 == 0 {
                e.patient = odd.clone();
                e.rule_key = format!("limit:ä{i}").into();
                e.alert_message = "tab\there".into();
            }
            // Whole numbers (varints) beside every kind of value that must keep its bits.
            let values = [
                120.0,
                0.1 * i as f64,
                -0.0,
                0.0,
                WHOLE,
                -WHOLE,
                WHOLE + 2.0,
                -37.0,
                f64::INFINITY,
                f64::MIN_POSITIVE,
                1e300,
            ];
            e.value = (i % 4 != 0).then_some(values[i % values.len()]);
            e.bp = (i % 5 != 0).then_some(-1e-300);
            e.heart_beat = (i % 6 != 0).then_some(f64::from_bits(0x7ff8_0000_dead_beef));
            e.news2_score = (i % 2 == 0).then_some(i as u32);
            e.ref_id = (i % 3 != 1).then_some(u32::MAX);
            e.ref_version = (i % 4 == 1).then_some(0);
            let start = if i % 2 == 0 {
                -86_400_000_001
            } else {
                i64::MAX / 3
            };
            e.episode_start = Timestamp(start);
            e.input_message_time = Timestamp(start - 5 * i as i64);
            e.alert_generated_time = Timestamp(if i == 7 { i64::MIN } else { start + 1 });
            e.device_id = (i % 5 != 2).then(|| format!("dev-{i}\u{0}").into());
            e.acknowledged_by = (i % 4 == 3).then(|| "nurse \"a\"".into());
            e.patient_id = PatientId(format!("p{i}").into());
            out.push(e);
        }
        out
    }

    fn text(e: &AlertEvent) -> String {
        let mut out = Vec::new();
        e.write_json_shared(&mut out, &mut JsonFragments::default())
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The varied events, encoded as one chunk, and the compressor that did it.
    fn varied_chunk() -> (Vec<AlertEvent>, Vec<u8>, zstd::bulk::Compressor<'static>) {
        let events = varied();
        let refs: Vec<&AlertEvent> = events.iter().collect();
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        let blob = encode(&mut c, &refs).unwrap();
        (events, blob, c)
    }

    #[test]
    fn every_field_reads_back_exactly_and_writes_the_same_text() {
        let (events, blob, _) = varied_chunk();
        assert!(blob.starts_with(MAGIC));
        let back = decode(&blob).unwrap();
        assert_eq!(back.len(), events.len());
        for (b, e) in back.iter().zip(&events) {
            // NaN is not equal to itself and -0 equals 0: compare the values' bits, the
            // rest as a whole.
            let bits = |e: &AlertEvent| [e.value, e.bp, e.heart_beat].map(|v| v.map(f64::to_bits));
            assert_eq!(bits(b), bits(e));
            let (mut b, mut e) = (b.clone(), e.clone());
            for x in [&mut b, &mut e] {
                (x.value, x.bp, x.heart_beat) = (None, None, None);
            }
            assert_eq!(b, e);
        }
        for (b, e) in back.iter().zip(&events) {
            assert_eq!(text(b), text(e));
            assert_eq!(b.idempotency_key(), e.idempotency_key());
        }
        // Shared once per chunk: decoded events share what the encoded ones shared.
        assert!(Arc::ptr_eq(&back[2].rule_key, &back[3].rule_key));
        assert!(Arc::ptr_eq(&back[1].patient, &back[4].patient));
        // A flood's events are far smaller than their texts.
        let raw = zstd::stream::decode_all(&blob[MAGIC.len()..]).unwrap();
        let texts: usize = events.iter().map(|e| text(e).len()).sum();
        assert!(raw.len() * 3 < texts, "{} vs {texts} bytes", raw.len());
    }

    #[test]
    fn a_damaged_chunk_is_an_error_not_a_panic() {
        let (_, blob, mut c) = varied_chunk();
        let raw = zstd::stream::decode_all(&blob[MAGIC.len()..]).unwrap();
        // Every cut of the contents, and every byte of it changed, compressed again so
        // that the parser (not zstd) meets the damage.
        for cut in 0..raw.len() {
            let mut b = MAGIC.to_vec();
            b.extend(c.compress(&raw[..cut]).unwrap());
            assert!(decode(&b).is_err(), "cut at {cut}");
        }
        for i in 0..raw.len() {
            let mut damaged = raw.clone();
            damaged[i] ^= 0xff;
            let mut b = MAGIC.to_vec();
            b.extend(c.compress(&damaged).unwrap());
            let _ = decode(&b);
        }
        assert!(decode(&blob[..blob.len() - 1]).is_err());
        assert!(decode(&blob[MAGIC.len()..]).is_err(), "no magic number");
    }
}
