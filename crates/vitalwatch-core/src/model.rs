//! The vocabulary of vitalwatch: vitals, identifiers, timestamps, observations and patients.
//!
//! Everything downstream of the codecs speaks these types. An [`Observation`] is one message
//! from one device (an observation set: one or more vitals measured at one instant); the
//! warehouse stores it as one [`Reading`] row per vital. Values are always in the vital's
//! canonical UCUM unit.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Ids' text: inline up to 23 bytes, shared beyond. Every reading carries a patient and a
/// device id, and alert events copy them: with `String` they were an allocation each, made on
/// the reader thread and freed on the archive's (4 % of a replay's instructions).
pub use smol_str::SmolStr;

/// Identifier of a patient, as the hospital's systems spell it (the classic `customerId`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PatientId(pub SmolStr);

impl PatientId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for PatientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Identifier of the device (monitor, gateway) that produced an observation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub SmolStr);

impl DeviceId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A UTC instant in microseconds since the Unix epoch: the warehouse's resolution
/// (Spark cannot read nanosecond Parquet timestamps).
///
/// In JSON it is an RFC 3339 string (`2026-11-28T14:03:11.250Z`); integers are read as
/// microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 27];
        match self.rfc3339_fast(&mut buf) {
            Some(text) => s.serialize_str(text),
            None => s.collect_str(
                &self
                    .to_datetime()
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ),
        }
    }
}

impl Timestamp {
    /// RFC 3339 as chrono's `AutoSi` with `Z` writes it (no fraction when there is none,
    /// else milliseconds or microseconds), for years 1970 to 9999, without allocating:
    /// every alert event carries three timestamps, and chrono's formatter was a tenth of
    /// serializing one. `None` outside that range (the caller falls back to chrono).
    fn rfc3339_fast(self, buf: &mut [u8; 27]) -> Option<&str> {
        // 9999-12-31T23:59:59.999999Z
        const MAX: i64 = 253_402_300_799_999_999;
        if !(0..=MAX).contains(&self.0) {
            return None;
        }
        let secs = self.0 / 1_000_000;
        let micros = (self.0 % 1_000_000) as u32;
        let (days, sod) = (secs / 86_400, (secs % 86_400) as u32);
        // Civil date from days since 1970-01-01 (H. Hinnant's algorithm), days >= 0.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        fn put(buf: &mut [u8], at: usize, mut v: u32, width: usize) {
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        put(buf, 0, year, 4);
        buf[4] = b'-';
        put(buf, 5, month, 2);
        buf[7] = b'-';
        put(buf, 8, day, 2);
        buf[10] = b'T';
        put(buf, 11, sod / 3600, 2);
        buf[13] = b':';
        put(buf, 14, sod / 60 % 60, 2);
        buf[16] = b':';
        put(buf, 17, sod % 60, 2);
        let end = if micros == 0 {
            19
        } else if micros.is_multiple_of(1000) {
            buf[19] = b'.';
            put(buf, 20, micros / 1000, 3);
            23
        } else {
            buf[19] = b'.';
            put(buf, 20, micros, 6);
            26
        };
        buf[end] = b'Z';
        std::str::from_utf8(&buf[..=end]).ok()
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Micros(i64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Micros(us) => Ok(Timestamp(us)),
            Repr::Text(s) => Timestamp::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A timestamp that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {0:?}: expected RFC 3339 or YYYY-MM-DD HH:MM:SS[.fff] (UTC)")]
pub struct TimestampError(pub String);

impl Timestamp {
    /// Microseconds since the epoch.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// From whole seconds since the epoch.
    pub fn from_secs(secs: i64) -> Self {
        Timestamp(secs * 1_000_000)
    }

    /// This instant plus a duration.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(d.0))
    }

    /// The time from `earlier` to `self` (negative if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }

    /// Parses RFC 3339 (`2026-11-28T14:03:11.250Z`) or the classic
    /// `YYYY-MM-DD HH:MM:SS[.fff]`, which is taken as UTC.
    pub fn parse(s: &str) -> Result<Self, TimestampError> {
        let s = s.trim();
        if let Some(t) = Self::parse_fast(s.as_bytes()) {
            return Ok(t);
        }
        if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
            return Ok(Self::from_datetime(dt.with_timezone(&Utc)));
        }
        for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
            if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
                return Ok(Self::from_datetime(Utc.from_utc_datetime(&naive)));
            }
        }
        Err(TimestampError(s.to_owned()))
    }

    /// The hot path of every replay: `YYYY-MM-DD[ T]HH:MM:SS[.f{1,9}][Z]` in UTC, parsed
    /// without chrono's format interpreter (10× faster). Anything else (offsets, leap
    /// seconds, odd widths) returns `None` and takes the general path.
    fn parse_fast(b: &[u8]) -> Option<Self> {
        fn num(b: &[u8]) -> Option<i64> {
            b.iter().try_fold(0i64, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
            })
        }
        if b.len() < 19
            || b[4] != b'-'
            || b[7] != b'-'
            || !(b[10] == b' ' || b[10] == b'T')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
        let (h, mi, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
        if !(1..=12).contains(&mo)
            || d < 1
            || d > days_in_month(y, mo)
            || h > 23
            || mi > 59
            || sec > 59
        {
            return None;
        }
        let mut rest = &b[19..];
        let mut micros = 0i64;
        if let Some((&b'.', frac)) = rest.split_first() {
            let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                return None;
            }
            let mut f = num(&frac[..digits])?;
            // Scale to microseconds, truncating below (as chrono does when cast to micros).
            for _ in digits..6 {
                f *= 10;
            }
            for _ in 6..digits {
                f /= 10;
            }
            micros = f;
            rest = &frac[digits..];
        }
        if !(rest.is_empty() || rest == b"Z" || rest == b"z") {
            return None;
        }
        let days = days_from_civil(y, mo, d);
        Some(Timestamp(
            ((days * 24 + h) * 60 + mi) * 60_000_000 + sec * 1_000_000 + micros,
        ))
    }

    /// From a chrono UTC date-time.
    pub fn from_datetime(dt: DateTime<Utc>) -> Self {
        Timestamp(dt.timestamp_micros())
    }

    /// As a chrono UTC date-time.
    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// RFC 3339 with millisecond precision and a `Z` suffix.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// A span of time in microseconds. Config files spell it `"15s"`, `"2m"`, `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Duration(pub i64);

/// A duration that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a number and a unit, e.g. 500ms, 15s, 2m, 1h")]
pub struct DurationError(pub String);

impl Duration {
    /// Zero: "no delay".
    pub const ZERO: Duration = Duration(0);

    /// From whole seconds.
    pub const fn from_secs(s: i64) -> Self {
        Duration(s * 1_000_000)
    }

    /// From milliseconds.
    pub const fn from_millis(ms: i64) -> Self {
        Duration(ms * 1_000)
    }

    /// Microseconds.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// As a std duration (negative spans become zero).
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.max(0) as u64)
    }

    /// For people: the two largest non-zero units, rounded down (`1d 3h`, `5m 12s`,
    /// `850ms`); negative spans print with a minus sign.
    pub fn human(self) -> String {
        const UNITS: [(i64, &str); 5] = [
            (86_400_000_000, "d"),
            (3_600_000_000, "h"),
            (60_000_000, "m"),
            (1_000_000, "s"),
            (1_000, "ms"),
        ];
        let sign = if self.0 < 0 { "-" } else { "" };
        let mut rest = self.0.unsigned_abs();
        let mut parts = Vec::with_capacity(2);
        for (size, unit) in UNITS {
            let size = size as u64;
            if rest >= size {
                parts.push(format!("{}{unit}", rest / size));
                rest %= size;
                if parts.len() == 2 {
                    break;
                }
            } else if !parts.is_empty() {
                break;
            }
        }
        if parts.is_empty() {
            return format!("{sign}{}us", rest);
        }
        format!("{sign}{}", parts.join(" "))
    }

    /// Parses `"250ms"`, `"15s"`, `"2m"`, `"1h"`, `"1d"`; a bare number is seconds.
    pub fn parse(s: &str) -> Result<Self, DurationError> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| DurationError(s.to_owned()))?;
        let scale = match unit.trim() {
            "us" => 1.0,
            "ms" => 1e3,
            "" | "s" | "sec" => 1e6,
            "m" | "min" => 60e6,
            "h" => 3600e6,
            "d" => 86_400e6,
            _ => return Err(DurationError(s.to_owned())),
        };
        if !n.is_finite() || n < 0.0 {
            return Err(DurationError(s.to_owned()));
        }
        Ok(Duration((n * scale).round() as i64))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us % 3_600_000_000 == 0 && us != 0 {
            write!(f, "{}h", us / 3_600_000_000)
        } else if us % 60_000_000 == 0 && us != 0 {
            write!(f, "{}m", us / 60_000_000)
        } else if us % 1_000_000 == 0 {
            write!(f, "{}s", us / 1_000_000)
        } else if us % 1_000 == 0 {
            write!(f, "{}ms", us / 1_000)
        } else {
            write!(f, "{us}us")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Level of consciousness on the ACVPU scale, stored as a reading value 0–4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Consciousness {
    /// Alert.
    A,
    /// New confusion.
    C,
    /// Responds to voice.
    V,
    /// Responds to pain.
    P,
    /// Unresponsive.
    U,
}

impl Consciousness {
    /// The reading value this level is stored as.
    pub fn code(self) -> f64 {
        match self {
            Consciousness::A => 0.0,
            Consciousness::C => 1.0,
            Consciousness::V => 2.0,
            Consciousness::P => 3.0,
            Consciousness::U => 4.0,
        }
    }

    /// From a stored reading value.
    pub fn from_code(v: f64) -> Option<Self> {
        Some(match v as i64 {
            0 => Consciousness::A,
            1 => Consciousness::C,
            2 => Consciousness::V,
            3 => Consciousness::P,
            4 => Consciousness::U,
            _ => return None,
        })
    }

    /// From its letter (`A`, `C`, `V`, `P`, `U`; case-insensitive).
    pub fn from_letter(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "A" | "ALERT" => Consciousness::A,
            "C" | "CONFUSED" | "CONFUSION" => Consciousness::C,
            "V" | "VOICE" => Consciousness::V,
            "P" | "PAIN" => Consciousness::P,
            "U" | "UNRESPONSIVE" => Consciousness::U,
            _ => return None,
        })
    }

    /// Its letter.
    pub fn letter(self) -> &'static str {
        match self {
            Consciousness::A => "A",
            Consciousness::C => "C",
            Consciousness::V => "V",
            Consciousness::P => "P",
            Consciousness::U => "U",
        }
    }
}

/// One kind of vital sign, with its codes, canonical unit and plausible range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vital {
    /// Heart rate (classic `heartBeat`), beats per minute.
    HeartRate,
    /// Respiratory rate, breaths per minute.
    RespRate,
    /// Peripheral oxygen saturation, percent.
    Spo2,
    /// Body temperature, degrees Celsius.
    TempC,
    /// Systolic blood pressure (classic `bp`), mmHg.
    Systolic,
    /// Diastolic blood pressure, mmHg.
    Diastolic,
    /// Level of consciousness, ACVPU coded 0 (A) to 4 (U).
    Consciousness,
    /// Supplemental oxygen: 1 on oxygen, 0 on air.
    OnOxygen,
}

/// How many kinds of vital there are.
pub const VITAL_COUNT: usize = 8;

impl Vital {
    /// Every vital, in index order.
    pub const ALL: [Vital; VITAL_COUNT] = [
        Vital::HeartRate,
        Vital::RespRate,
        Vital::Spo2,
        Vital::TempC,
        Vital::Systolic,
        Vital::Diastolic,
        Vital::Consciousness,
        Vital::OnOxygen,
    ];

    /// Dense index, for per-vital arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The canonical (snake_case) name used in JSON, config and the warehouse.
    pub fn name(self) -> &'static str {
        match self {
            Vital::HeartRate => "heart_rate",
            Vital::RespRate => "resp_rate",
            Vital::Spo2 => "spo2",
            Vital::TempC => "temp_c",
            Vital::Systolic => "systolic",
            Vital::Diastolic => "diastolic",
            Vital::Consciousness => "consciousness",
            Vital::OnOxygen => "on_oxygen",
        }
    }

    /// Resolves a canonical name or a classic threshold-table attribute
    /// (`heartBeat` is heart rate, `bp` is systolic pressure).
    pub fn from_name(s: &str) -> Option<Vital> {
        Some(match s {
            "heart_rate" | "heartBeat" | "heartbeat" | "hr" | "pulse" => Vital::HeartRate,
            "resp_rate" | "respiratory_rate" | "rr" => Vital::RespRate,
            "spo2" | "SpO2" => Vital::Spo2,
            "temp_c" | "temperature" | "temp" => Vital::TempC,
            "systolic" | "bp" | "sbp" => Vital::Systolic,
            "diastolic" | "dbp" => Vital::Diastolic,
            "consciousness" | "avpu" | "acvpu" => Vital::Consciousness,
            "on_oxygen" | "oxygen" => Vital::OnOxygen,
            _ => return None,
        })
    }

    /// The attribute name the classic threshold table and alert JSON use, where it has one.
    pub fn classic_name(self) -> Option<&'static str> {
        match self {
            Vital::HeartRate => Some("heartBeat"),
            Vital::Systolic => Some("bp"),
            _ => None,
        }
    }

    /// LOINC code.
    pub fn loinc(self) -> &'static str {
        match self {
            Vital::HeartRate => "8867-4",
            Vital::RespRate => "9279-1",
            Vital::Spo2 => "2708-6",
            Vital::TempC => "8310-5",
            Vital::Systolic => "8480-6",
            Vital::Diastolic => "8462-4",
            Vital::Consciousness => "67775-7",
            Vital::OnOxygen => "3150-0",
        }
    }

    /// Canonical UCUM unit.
    pub fn unit(self) -> &'static str {
        match self {
            Vital::HeartRate | Vital::RespRate => "/min",
            Vital::Spo2 => "%",
            Vital::TempC => "Cel",
            Vital::Systolic | Vital::Diastolic => "mm[Hg]",
            Vital::Consciousness | Vital::OnOxygen => "{code}",
        }
    }

    /// The physiologically plausible range, inclusive. A value outside it is a device or
    /// transmission error (a dead letter), never a clinical alarm.
    pub fn plausible_range(self) -> (f64, f64) {
        match self {
            Vital::HeartRate => (0.0, 350.0),
            Vital::RespRate => (0.0, 120.0),
            Vital::Spo2 => (0.0, 100.0),
            Vital::TempC => (20.0, 46.0),
            Vital::Systolic => (0.0, 350.0),
            Vital::Diastolic => (0.0, 300.0),
            Vital::Consciousness => (0.0, 4.0),
            Vital::OnOxygen => (0.0, 1.0),
        }
    }
}

impl fmt::Display for Vital {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The vitals of one observation set, one optional value per [`Vital`], without allocation.
#[derive(Clone, Copy)]
pub struct VitalSet {
    values: [f64; VITAL_COUNT],
}

impl Default for VitalSet {
    fn default() -> Self {
        VitalSet {
            values: [f64::NAN; VITAL_COUNT],
        }
    }
}

impl PartialEq for VitalSet {
    /// Absent equals absent (the NaN marker is not compared as a float).
    fn eq(&self, other: &Self) -> bool {
        Vital::ALL.iter().all(|&v| self.get(v) == other.get(v))
    }
}

impl fmt::Debug for VitalSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl VitalSet {
    /// Sets one vital.
    pub fn set(&mut self, vital: Vital, value: f64) {
        self.values[vital.index()] = value;
    }

    /// Builder form of [`VitalSet::set`].
    pub fn with(mut self, vital: Vital, value: f64) -> Self {
        self.set(vital, value);
        self
    }

    /// One vital's value, if present.
    pub fn get(&self, vital: Vital) -> Option<f64> {
        let v = self.values[vital.index()];
        (!v.is_nan()).then_some(v)
    }

    /// Removes one vital.
    pub fn clear(&mut self, vital: Vital) {
        self.values[vital.index()] = f64::NAN;
    }

    /// The present vitals, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Vital, f64)> + '_ {
        Vital::ALL
            .iter()
            .filter_map(|&v| self.get(v).map(|x| (v, x)))
    }

    /// How many vitals are present.
    pub fn len(&self) -> usize {
        self.values.iter().filter(|v| !v.is_nan()).count()
    }

    /// Whether no vital is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One message from one device: an observation set taken at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Whose vitals these are.
    pub patient_id: PatientId,
    /// Which device measured them.
    pub device_id: DeviceId,
    /// The device's own observation time.
    pub observed_at: Timestamp,
    /// When vitalwatch received the message.
    pub ingested_at: Timestamp,
    /// The measured values, canonical units.
    pub vitals: VitalSet,
}

impl Observation {
    /// The observation as one reading per vital.
    pub fn readings(&self) -> impl Iterator<Item = Reading<'_>> + '_ {
        self.vitals.iter().map(move |(vital, value)| Reading {
            patient_id: &self.patient_id,
            device_id: &self.device_id,
            vital,
            value,
            observed_at: self.observed_at,
            ingested_at: self.ingested_at,
        })
    }
}

/// One vital, one value: the warehouse's row. Its identity is (device, vital, observed_at).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading<'a> {
    /// Whose vital this is.
    pub patient_id: &'a PatientId,
    /// Which device measured it.
    pub device_id: &'a DeviceId,
    /// Which vital.
    pub vital: Vital,
    /// Value in the vital's canonical unit.
    pub value: f64,
    /// The device's observation time.
    pub observed_at: Timestamp,
    /// Ingest time.
    pub ingested_at: Timestamp,
}

/// Which SpO2 scale of NEWS2 applies to a patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Spo2Scale {
    /// Scale 1: the default.
    #[default]
    Scale1,
    /// Scale 2: only for a prescribed 88–92 % target (hypercapnic respiratory failure).
    Scale2,
}

impl Spo2Scale {
    /// The scale's number, 1 or 2, as the catalog, the warehouse and exports store it.
    pub fn number(self) -> u8 {
        match self {
            Spo2Scale::Scale1 => 1,
            Spo2Scale::Scale2 => 2,
        }
    }
}

/// A patient as the catalog knows them (the classic `patients_information` row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Patient {
    /// Identifier (classic `patientid`).
    pub patient_id: PatientId,
    /// Name (classic `patientname`). Never logged, never a metric label.
    pub name: String,
    /// Address (classic `patientaddress`).
    pub address: String,
    /// Phone number (classic `phone_number`).
    pub phone: String,
    /// Ward (classic `admitted_ward`).
    pub ward: String,
    /// Age in whole years (classic `age`); selects the threshold band.
    pub age: u32,
    /// NEWS2 SpO2 scale.
    pub spo2_scale: Spo2Scale,
    /// Free text (classic `other_details`).
    pub other_details: String,
}

/// A message that could not be decoded or validated, kept with the reason (never dropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When vitalwatch received it.
    pub received_at: Timestamp,
    /// Where it came from (`http`, `replay:FILE:LINE`, `simulator`, ...).
    pub source: String,
    /// Why it was rejected, in words an operator can act on.
    pub reason: String,
    /// The raw message (lossy UTF-8), truncated to 64 KiB.
    pub payload: String,
}

impl DeadLetter {
    /// Most payload bytes a dead letter keeps: enough to diagnose any real record,
    /// bounded so a hostile body cannot bloat the warehouse.
    pub const MAX_PAYLOAD: usize = 64 * 1024;

    /// A dead letter for a raw record, its payload cut to [`DeadLetter::MAX_PAYLOAD`] bytes
    /// (invalid UTF-8 replaced, never rejected).
    pub fn new(received_at: Timestamp, source: String, reason: String, payload: &[u8]) -> Self {
        let kept = &payload[..payload.len().min(Self::MAX_PAYLOAD)];
        DeadLetter {
            received_at,
            source,
            reason,
            payload: String::from_utf8_lossy(kept).into_owned(),
        }
    }
}

/// Why a valid reading could not be classified against the reference data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnclassifiedReason {
    /// The patient is not in the catalog, so no age band applies.
    UnknownPatient,
    /// The table has bands for this vital, but none covers this age and value.
    NoBand,
}

impl UnclassifiedReason {
    /// Snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            UnclassifiedReason::UnknownPatient => "unknown_patient",
            UnclassifiedReason::NoBand => "no_band",
        }
    }
}

/// A reading the classic design would have dropped silently: reported instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unclassified {
    /// Whose reading.
    pub patient_id: PatientId,
    /// Which device.
    pub device_id: DeviceId,
    /// Which vital (absent when the whole observation is of an unknown patient).
    pub vital: Option<Vital>,
    /// The value.
    pub value: Option<f64>,
    /// Observation time.
    pub observed_at: Timestamp,
    /// Why.
    pub reason: UnclassifiedReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_both_formats_as_utc() {
        let a = Timestamp::parse("2026-11-28T14:03:11.250Z").unwrap();
        let b = Timestamp::parse("2026-11-28 14:03:11.250").unwrap();
        let c = Timestamp::parse("2026-11-28T15:03:11.250+01:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.to_rfc3339(), "2026-11-28T14:03:11.250Z");
        assert!(Timestamp::parse("28/11/2026").is_err());
    }

    proptest::proptest! {
        /// The allocation-free writer gives chrono's `AutoSi` text for every instant,
        /// whole seconds, milliseconds and microseconds alike (and the year-range edges).
        #[test]
        fn fast_timestamp_writer_agrees_with_chrono(us in -1_000_000_000_000_000i64..260_000_000_000_000_000i64, unit in 0usize..3) {
            let us = match unit { 0 => us - us.rem_euclid(1_000_000), 1 => us - us.rem_euclid(1000), _ => us };
            for t in [us, 0, 253_402_300_799_999_999, 253_402_300_800_000_000, -1] {
                let want = format!("\"{}\"", Timestamp(t).to_datetime().to_rfc3339_opts(SecondsFormat::AutoSi, true));
                proptest::prop_assert_eq!(serde_json::to_string(&Timestamp(t)).unwrap(), want);
            }
        }
    }

    proptest::proptest! {
        /// The fast path agrees with chrono on every instant it accepts.
        #[test]
        fn fast_timestamp_parser_agrees_with_chrono(us in -2_000_000_000_000_000i64..8_000_000_000_000_000i64, sep in 0usize..2, digits in 0usize..4) {
            let dt = Timestamp(us).to_datetime();
            let frac = ["", "%.3f", "%.6f", "%.9f"][digits];
            let fmt = format!("%Y-%m-%d{}%H:%M:%S{frac}", [" ", "T"][sep]);
            let text = dt.format(&fmt).to_string();
            let want = Timestamp::from_datetime(Utc.from_utc_datetime(&NaiveDateTime::parse_from_str(&text, &fmt).unwrap()));
            proptest::prop_assert_eq!(Timestamp::parse_fast(text.as_bytes()), Some(want));
            proptest::prop_assert_eq!(Timestamp::parse(&format!("{text}Z")).unwrap(), want);
        }
    }

    #[test]
    fn fast_timestamp_parser_rejects_what_it_cannot_read() {
        for bad in [
            "2026-02-30 00:00:00",
            "2026-13-01 00:00:00",
            "2026-11-28 24:00:00",
            "2026-11-28 10:00:00.",
            "2026-11-28 10:00:00+01:00",
        ] {
            assert_eq!(Timestamp::parse_fast(bad.as_bytes()), None, "{bad}");
        }
        assert!(Timestamp::parse("2026-02-30 00:00:00").is_err());
        assert_eq!(
            Timestamp::parse("2024-02-29 12:00:00")
                .unwrap()
                .to_rfc3339(),
            "2024-02-29T12:00:00.000Z"
        );
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(Duration::parse("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(Duration::parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(
            Duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(Duration::from_secs(120).to_string(), "2m");
        assert_eq!(Duration::from_secs(90_061).human(), "1d 1h");
        assert_eq!(Duration::from_secs(312).human(), "5m 12s");
        assert_eq!(Duration::from_secs(3_600).human(), "1h");
        assert_eq!(Duration::from_millis(850).human(), "850ms");
        assert_eq!(Duration(-2_000_000).human(), "-2s");
        assert!(Duration::parse("soon").is_err());
        assert!(Duration::parse("-3s").is_err());
    }
}
