//! Reference data: threshold bands and patients, and their classic CSV layouts.
//!
//! This is the role HBase played in the classic design. The catalog stores these rows; the
//! engine compiles them into per-patient band lists so a reading is matched with a handful
//! of comparisons. Parsing validates every row and reports every bad one with its line
//! number, so an import is all or nothing.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::alert::Priority;
use crate::model::{Patient, PatientId, Spo2Scale, Vital};

/// The classic table's "no upper limit" marker.
pub const NO_UPPER_LIMIT: f64 = 9999.0;

/// One row of the threshold reference table (classic `threshold_ref`), plus extensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdBand {
    /// Row id (classic `ref_id`); recorded in every alert the band fires.
    pub ref_id: u32,
    /// The attribute as written in the table (`heartBeat`, `bp`, or a canonical vital name).
    pub attribute: String,
    /// The vital the attribute names.
    pub vital: Vital,
    /// Youngest age the band applies to, inclusive.
    pub low_age_limit: u32,
    /// Oldest age the band applies to, inclusive.
    pub high_age_limit: u32,
    /// Lowest value in the band, inclusive.
    pub low_range_value: f64,
    /// Highest value in the band, inclusive; 9999 means no upper limit.
    pub high_range_value: f64,
    /// Whether a value in this band is abnormal (classic `alert_flag` = 1).
    pub alert_flag: bool,
    /// Message of the alert (classic `alert_message`).
    pub alert_message: String,
    /// Priority of the alert (extension; flagged bands default to medium).
    pub priority: Priority,
    /// When set, the band applies to this patient only and replaces the age bands
    /// for its vital (extension: per-patient overrides).
    pub patient_id: Option<PatientId>,
}

impl ThresholdBand {
    /// Whether the band covers this age (both ends inclusive).
    pub fn covers_age(&self, age: u32) -> bool {
        self.low_age_limit <= age && age <= self.high_age_limit
    }

    /// Whether the band covers this value: both ends inclusive, 9999 = no upper limit.
    pub fn covers_value(&self, value: f64) -> bool {
        value >= self.low_range_value
            && (self.high_range_value >= NO_UPPER_LIMIT || value <= self.high_range_value)
    }
}

/// A versioned set of threshold bands.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ThresholdTable {
    /// Version (1, 2, ...): every import creates a new one; alerts record it.
    pub version: u32,
    /// The bands, in `ref_id` order.
    pub bands: Vec<ThresholdBand>,
}

impl ThresholdTable {
    /// The bands that apply to one patient for one vital: the patient's own overrides if
    /// there are any, else the age bands for the patient's age.
    pub fn bands_for(&self, vital: Vital, patient: &PatientId, age: u32) -> Vec<ThresholdBand> {
        let own: Vec<ThresholdBand> = self
            .bands
            .iter()
            .filter(|b| b.vital == vital && b.patient_id.as_ref() == Some(patient))
            .cloned()
            .collect();
        if !own.is_empty() {
            return own;
        }
        self.bands
            .iter()
            .filter(|b| b.vital == vital && b.patient_id.is_none() && b.covers_age(age))
            .cloned()
            .collect()
    }

    /// Whether any band exists for a vital (else the vital is simply not band-checked).
    pub fn has_vital(&self, vital: Vital) -> bool {
        self.bands.iter().any(|b| b.vital == vital)
    }
}

/// Finds the band a value falls in among bands already filtered for vital and age
/// (the standard profile's rule).
///
/// Bounds are inclusive. A value between two integer bands (69.5 between 0–69 and 70–78)
/// is rounded to the table's resolution (the nearest integer, half away from zero) and
/// matched again, so no reading falls through a gap the table did not mean to leave.
pub fn match_band(bands: &[ThresholdBand], value: f64) -> Option<&ThresholdBand> {
    match_band_exact(bands, value).or_else(|| match_band_exact(bands, value.round()))
}

/// The classic rule: the first band whose inclusive range holds the value as it is, the
/// classic `value BETWEEN low_range_value AND high_range_value`. A value in a gap between
/// bands matches none.
pub fn match_band_exact(bands: &[ThresholdBand], value: f64) -> Option<&ThresholdBand> {
    bands.iter().find(|b| b.covers_value(value))
}

/// One bad row of a CSV import.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RowError {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

/// A CSV import that was rejected: every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s) in import:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ImportError(pub Vec<RowError>);

/// The classic threshold table's columns, in order.
pub const THRESHOLD_COLUMNS: [&str; 8] = [
    "ref_id",
    "attribute",
    "low_age_limit",
    "high_age_limit",
    "low_range_value",
    "high_range_value",
    "alert_flag",
    "alert_message",
];

/// The optional extension columns of a threshold file, in the order vitalwatch writes them.
pub const THRESHOLD_EXTRA_COLUMNS: [&str; 2] = ["priority", "patient_id"];

const PATIENT_COLUMNS: [&str; 6] = [
    "patientid",
    "patientname",
    "patientaddress",
    "phone_number",
    "admitted_ward",
    "age",
];

/// A CSV file's rows keyed by header name, each with its line number.
struct CsvRows {
    rows: Vec<(u64, HashMap<String, String>)>,
}

fn read_csv(data: &[u8], required: &[&str]) -> Result<CsvRows, ImportError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(data);
    let headers: Vec<String> = match rdr.headers() {
        Ok(h) => h
            .iter()
            .map(|s| s.trim_start_matches('\u{feff}').to_owned())
            .collect(),
        Err(e) => {
            return Err(ImportError(vec![RowError {
                line: 1,
                message: format!("unreadable header: {e}"),
            }]));
        }
    };
    let missing: Vec<&str> = required
        .iter()
        .filter(|c| !headers.iter().any(|h| h == *c))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Err(ImportError(vec![RowError {
            line: 1,
            message: format!(
                "missing column(s) {}; expected header {}",
                missing.join(", "),
                required.join(",")
            ),
        }]));
    }
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for rec in rdr.records() {
        match rec {
            Ok(r) => {
                let line = r.position().map(|p| p.line()).unwrap_or(0);
                let map = headers
                    .iter()
                    .cloned()
                    .zip(r.iter().map(str::to_owned))
                    .collect();
                rows.push((line, map));
            }
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                errors.push(RowError {
                    line,
                    message: format!("malformed row: {e}"),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(CsvRows { rows })
    } else {
        Err(ImportError(errors))
    }
}

fn field<'a>(row: &'a HashMap<String, String>, name: &str) -> &'a str {
    row.get(name).map(String::as_str).unwrap_or("")
}

fn parse_num<T: std::str::FromStr>(
    row: &HashMap<String, String>,
    name: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let raw = field(row, name);
    match raw.parse::<T>() {
        Ok(v) => Some(v),
        Err(_) => {
            problems.push(format!("{name} {raw:?} is not a valid number"));
            None
        }
    }
}

/// Parses a threshold table in the classic layout
/// (`ref_id,attribute,low_age_limit,high_age_limit,low_range_value,high_range_value,alert_flag,alert_message`)
/// with optional extra columns `priority` (low/medium/high) and `patient_id` (override).
///
/// Checks every row: numbers, known attribute, low ≤ high, flag 0/1, unique `ref_id`, and
/// that no two bands of one attribute overlap in both age and value.
pub fn parse_threshold_csv(data: &[u8]) -> Result<Vec<ThresholdBand>, ImportError> {
    let csv = read_csv(data, &THRESHOLD_COLUMNS)?;
    let mut bands: Vec<(u64, ThresholdBand)> = Vec::new();
    let mut errors = Vec::new();
    for (line, row) in &csv.rows {
        let mut p = Vec::new();
        let ref_id = parse_num::<u32>(row, "ref_id", &mut p);
        let attribute = field(row, "attribute").to_owned();
        let vital = Vital::from_name(&attribute);
        if vital.is_none() {
            p.push(format!(
                "unknown attribute {attribute:?} (expected heartBeat, bp or a vital name such as spo2)"
            ));
        }
        let low_age = parse_num::<u32>(row, "low_age_limit", &mut p);
        let high_age = parse_num::<u32>(row, "high_age_limit", &mut p);
        let low_v = parse_num::<f64>(row, "low_range_value", &mut p);
        let high_v = parse_num::<f64>(row, "high_range_value", &mut p);
        let flag = match field(row, "alert_flag") {
            "0" => Some(false),
            "1" => Some(true),
            other => {
                p.push(format!("alert_flag {other:?} must be 0 or 1"));
                None
            }
        };
        if let (Some(a), Some(b)) = (low_age, high_age)
            && a > b
        {
            p.push(format!("low_age_limit {a} is above high_age_limit {b}"));
        }
        if let (Some(a), Some(b)) = (low_v, high_v)
            && (a > b || !a.is_finite() || !b.is_finite())
        {
            p.push(format!("low_range_value {a} is above high_range_value {b}"));
        }
        let priority = match field(row, "priority") {
            "" => Some(if flag == Some(true) {
                Priority::Medium
            } else {
                Priority::Low
            }),
            s => {
                let pr = Priority::parse(s);
                if pr.is_none() {
                    p.push(format!("priority {s:?} must be low, medium or high"));
                }
                pr
            }
        };
        let patient_id = match field(row, "patient_id") {
            "" => None,
            s => Some(PatientId(s.into())),
        };
        if let Some(id) = ref_id
            && let Some((other_line, _)) = bands.iter().find(|(_, b)| b.ref_id == id)
        {
            p.push(format!("ref_id {id} repeats line {other_line}"));
        }
        if !p.is_empty() {
            errors.extend(p.into_iter().map(|message| RowError {
                line: *line,
                message,
            }));
            continue;
        }
        let (Some(ref_id), Some(vital), Some(la), Some(ha), Some(lv), Some(hv), Some(f), Some(pr)) = (
            ref_id, vital, low_age, high_age, low_v, high_v, flag, priority,
        ) else {
            continue;
        };
        let band = ThresholdBand {
            ref_id,
            attribute,
            vital,
            low_age_limit: la,
            high_age_limit: ha,
            low_range_value: lv,
            high_range_value: hv,
            alert_flag: f,
            alert_message: field(row, "alert_message").to_owned(),
            priority: pr,
            patient_id,
        };
        if let Some((other_line, other)) = bands.iter().find(|(_, b)| overlaps(b, &band)) {
            errors.push(RowError {
                line: *line,
                message: format!(
                    "band ref_id {} overlaps ref_id {} (line {other_line}) for {} in both age and value",
                    band.ref_id, other.ref_id, band.attribute
                ),
            });
            continue;
        }
        bands.push((*line, band));
    }
    if !errors.is_empty() {
        return Err(ImportError(errors));
    }
    if bands.is_empty() {
        return Err(ImportError(vec![RowError {
            line: 1,
            message: "no bands in file".into(),
        }]));
    }
    let mut out: Vec<ThresholdBand> = bands.into_iter().map(|(_, b)| b).collect();
    out.sort_by_key(|b| b.ref_id);
    Ok(out)
}

fn overlaps(a: &ThresholdBand, b: &ThresholdBand) -> bool {
    let top = |x: &ThresholdBand| {
        if x.high_range_value >= NO_UPPER_LIMIT {
            f64::INFINITY
        } else {
            x.high_range_value
        }
    };
    a.vital == b.vital
        && a.patient_id == b.patient_id
        && a.low_age_limit <= b.high_age_limit
        && b.low_age_limit <= a.high_age_limit
        && a.low_range_value <= top(b)
        && b.low_range_value <= top(a)
}

/// One patient from a row keyed by the classic column names (`patientid`, `patientname`,
/// `patientaddress`, `phone_number`, `admitted_ward`, `age`, plus `spo2_scale` and
/// `other_details`; a missing key reads as empty), or everything wrong with it. Shared by
/// the CSV import and the database import (`vitalwatch import`).
pub fn patient_from_row(row: &HashMap<String, String>) -> Result<Patient, Vec<String>> {
    let mut p = Vec::new();
    let id = field(row, "patientid");
    if id.is_empty() {
        p.push("patientid is empty".to_owned());
    }
    let age = parse_num::<u32>(row, "age", &mut p);
    if let Some(a) = age
        && a > 130
    {
        p.push(format!("age {a} is not plausible"));
    }
    let spo2_scale = match field(row, "spo2_scale") {
        "" | "1" => Spo2Scale::Scale1,
        "2" => Spo2Scale::Scale2,
        s => {
            p.push(format!("spo2_scale {s:?} must be 1 or 2"));
            Spo2Scale::Scale1
        }
    };
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Patient {
        patient_id: PatientId(id.into()),
        name: field(row, "patientname").to_owned(),
        address: field(row, "patientaddress").to_owned(),
        phone: field(row, "phone_number").to_owned(),
        ward: field(row, "admitted_ward").to_owned(),
        age: age.unwrap_or(0),
        spo2_scale,
        other_details: field(row, "other_details").to_owned(),
    })
}

/// Parses patients in the classic layout
/// (`patientid,patientname,patientaddress,phone_number,admitted_ward,age,other_details`)
/// with an optional `spo2_scale` column (1 or 2).
pub fn parse_patients_csv(data: &[u8]) -> Result<Vec<Patient>, ImportError> {
    let csv = read_csv(data, &PATIENT_COLUMNS)?;
    let mut out: Vec<(u64, Patient)> = Vec::new();
    let mut errors = Vec::new();
    for (line, row) in &csv.rows {
        let id = field(row, "patientid");
        let repeat = out
            .iter()
            .find(|(_, x)| x.patient_id.as_str() == id)
            .map(|(other_line, _)| format!("patientid {id} repeats line {other_line}"));
        match (patient_from_row(row), repeat) {
            (Ok(patient), None) => out.push((*line, patient)),
            (r, repeat) => {
                errors.extend(r.err().unwrap_or_default().into_iter().chain(repeat).map(
                    |message| RowError {
                        line: *line,
                        message,
                    },
                ))
            }
        }
    }
    if !errors.is_empty() {
        return Err(ImportError(errors));
    }
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// The classic reference table shipped with vitalwatch (`data/threshold_ref.csv`).
pub const CLASSIC_THRESHOLDS_CSV: &str = include_str!("../../../data/threshold_ref.csv");

/// The classic patients shipped with vitalwatch (`data/patients_information.csv`).
pub const CLASSIC_PATIENTS_CSV: &str = include_str!("../../../data/patients_information.csv");

/// The standard profile's default adult reference table (`data/standard_thresholds.csv`),
/// ages 16–130 (NEWS2 is for adults: a younger patient's readings match no band and are
/// reported as unclassified until a paediatric table is imported). Every limit and its
/// source; priorities follow IEC 60601-1-8 (medium: prompt response, delayed harm):
///
/// | vital | alarm | priority | source |
/// |---|---|---|---|
/// | heart rate | ≤ 40 /min | medium | NEWS2 pulse scores 3 |
/// | heart rate | 41–49 /min | low | below the usual monitor default low limit, 50 (LIFEPAK 15 default); NEWS2 41–50 scores 1 |
/// | heart rate | 121–130 /min | low | inside NEWS2's 2-point band (111–130), below monitor defaults (LIFEPAK 15: 150) |
/// | heart rate | ≥ 131 /min | medium | NEWS2 pulse scores 3 |
/// | respiration | ≤ 8 /min | medium | NEWS2 scores 3 (LIFEPAK 15 default low limit: 5) |
/// | respiration | ≥ 25 /min | medium | NEWS2 scores 3 (LIFEPAK 15 default high limit: 30) |
/// | SpO2 | < 80 % | high | desaturation: `shared/clinical.md` suggested default, Mindray TM70 factory "SpO2 Desat" 80 % high |
/// | temperature | ≤ 35.0 °C | medium | NEWS2 scores 3; LIFEPAK 15 default low limit 35 °C |
/// | temperature | ≥ 39.1 °C | low | NEWS2 scores 2; LIFEPAK 15 default high limit 39 °C |
/// | systolic | ≤ 90 mmHg | medium | NEWS2 scores 3; Mindray TM70 factory NIBP-S low limit 90 |
/// | systolic | 181–219 mmHg | low | severe hypertension (above 180 mmHg); between monitor defaults 160 (Mindray) and 200 (LIFEPAK 15) |
/// | systolic | ≥ 220 mmHg | medium | NEWS2 scores 3 |
///
/// SpO2 below 90 % (scale 1) or 86 % (scale 2) is not a band: bands cannot tell the
/// patient's SpO2 scale apart, so those alarms are the limit rules of `[rules]`. The
/// table has no diastolic bands (NEWS2 does not use diastolic pressure). Values between
/// two bands (35.05 °C) are rounded to whole numbers and matched again, like every table.
pub const STANDARD_THRESHOLDS_CSV: &str = include_str!("../../../data/standard_thresholds.csv");

/// A threshold table vitalwatch ships, and the source name the catalog records for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinTable {
    /// The table, in the threshold CSV layout.
    pub csv: &'static str,
    /// Its source in the catalog's version list.
    pub source: &'static str,
}

/// The classic table, the classic profile's default.
pub const CLASSIC_TABLE: BuiltinTable = BuiltinTable {
    csv: CLASSIC_THRESHOLDS_CSV,
    source: "built-in classic threshold_ref.csv",
};

/// The standard adult table, the standard profile's default.
pub const STANDARD_TABLE: BuiltinTable = BuiltinTable {
    csv: STANDARD_THRESHOLDS_CSV,
    source: "built-in standard_thresholds.csv",
};

impl BuiltinTable {
    /// The default table of a profile.
    pub fn of(profile: crate::rules::Profile) -> BuiltinTable {
        match profile {
            crate::rules::Profile::Classic => CLASSIC_TABLE,
            crate::rules::Profile::Standard => STANDARD_TABLE,
        }
    }

    /// The built-in table a data directory must load before starting under `profile`,
    /// given the source of its current table (`None`: no table yet): the profile's
    /// default when there is no table, or when the current one is the other profile's
    /// built-in default. A table someone imported is never replaced.
    pub fn needed(
        profile: crate::rules::Profile,
        current_source: Option<&str>,
    ) -> Option<BuiltinTable> {
        let want = BuiltinTable::of(profile);
        match current_source {
            None => Some(want),
            Some(s)
                if s != want.source
                    && [CLASSIC_TABLE, STANDARD_TABLE]
                        .iter()
                        .any(|b| b.source == s) =>
            {
                Some(want)
            }
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_files_parse() {
        let bands = parse_threshold_csv(CLASSIC_THRESHOLDS_CSV.as_bytes()).unwrap();
        assert_eq!(bands.len(), 12);
        assert_eq!(bands[2].vital, Vital::HeartRate);
        assert_eq!(bands[2].high_range_value, NO_UPPER_LIMIT);
        let patients = parse_patients_csv(CLASSIC_PATIENTS_CSV.as_bytes()).unwrap();
        assert_eq!(patients.len(), 5);
        assert_eq!(patients[4].name, "Pam");
        assert_eq!(patients[4].age, 72);
    }

    #[test]
    fn the_standard_table_covers_every_adult_value_without_a_gap() {
        let bands = parse_threshold_csv(STANDARD_THRESHOLDS_CSV.as_bytes()).unwrap();
        let table = ThresholdTable { version: 1, bands };
        let vitals = [
            Vital::HeartRate,
            Vital::RespRate,
            Vital::Spo2,
            Vital::TempC,
            Vital::Systolic,
        ];
        let id = PatientId("p".into());
        for age in [16, 18, 45, 95, 130] {
            for v in vitals {
                let bands = table.bands_for(v, &id, age);
                let (lo, hi) = v.plausible_range();
                // Every value at device resolution (0.1 °C, whole numbers) matches a band.
                let per_unit = if v == Vital::TempC { 10.0 } else { 1.0 };
                let (lo, hi) = ((lo * per_unit) as i64, (hi * per_unit) as i64);
                for k in lo..=hi {
                    let x = k as f64 / per_unit;
                    assert!(match_band_exact(&bands, x).is_some(), "{v} {x} age {age}");
                }
                assert!(bands.iter().any(|b| b.alert_flag), "{v} alarms somewhere");
            }
            assert!(table.bands_for(Vital::Diastolic, &id, age).is_empty());
        }
        assert!(
            table.bands_for(Vital::HeartRate, &id, 15).is_empty(),
            "adults only"
        );
        let hr = |x: f64| match_band(&table.bands_for(Vital::HeartRate, &id, 50), x).cloned();
        assert_eq!(hr(75.0).map(|b| b.alert_flag), Some(false));
        assert_eq!(hr(40.0).map(|b| b.priority), Some(Priority::Medium));
        assert_eq!(hr(125.0).map(|b| b.priority), Some(Priority::Low));
        let spo2 = table.bands_for(Vital::Spo2, &id, 50);
        assert_eq!(
            match_band(&spo2, 79.0).map(|b| b.priority),
            Some(Priority::High)
        );
        assert_eq!(match_band(&spo2, 85.0).map(|b| b.alert_flag), Some(false));
    }

    #[test]
    fn each_profile_starts_with_its_own_table_and_an_imported_one_stays() {
        use crate::rules::Profile::{Classic, Standard};
        assert_eq!(BuiltinTable::needed(Standard, None), Some(STANDARD_TABLE));
        assert_eq!(BuiltinTable::needed(Classic, None), Some(CLASSIC_TABLE));
        assert_eq!(
            BuiltinTable::needed(Classic, Some(CLASSIC_TABLE.source)),
            None
        );
        assert_eq!(
            BuiltinTable::needed(Classic, Some(STANDARD_TABLE.source)),
            Some(CLASSIC_TABLE)
        );
        assert_eq!(
            BuiltinTable::needed(Standard, Some(CLASSIC_TABLE.source)),
            Some(STANDARD_TABLE)
        );
        assert_eq!(
            BuiltinTable::needed(Standard, Some("data/threshold_ref.csv")),
            None
        );
        assert_eq!(BuiltinTable::needed(Classic, Some("mine.csv")), None);
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line() {
        let csv = "ref_id,attribute,low_age_limit,high_age_limit,low_range_value,high_range_value,alert_flag,alert_message\n\
                   1,heartBeat,0,40,0,69,1,Low\n\
                   2,pulseox,0,40,70,78,0,Normal\n\
                   3,heartBeat,50,40,79,9999,2,High\n\
                   1,bp,0,40,0,160,1,Low BP\n\
                   5,heartBeat,0,40,60,75,0,Overlap\n";
        let err = parse_threshold_csv(csv.as_bytes()).unwrap_err();
        let lines: Vec<u64> = err.0.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 4, 5, 6], "{err}");
        assert!(err.to_string().contains("unknown attribute \"pulseox\""));
        assert!(err.to_string().contains("overlaps ref_id 1"));
    }

    #[test]
    fn bad_patient_rows_are_reported() {
        let csv = "patientid,patientname,patientaddress,phone_number,admitted_ward,age,other_details\n\
                   1,A,x,1,1,forty,\n\
                   ,B,x,1,1,40,\n\
                   3,C,x,1,1,40,\n\
                   3,D,x,1,1,41,\n";
        let err = parse_patients_csv(csv.as_bytes()).unwrap_err();
        let lines: Vec<u64> = err.0.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 5]);
        let missing = parse_patients_csv(b"id,name\n1,x\n").unwrap_err();
        assert!(missing.to_string().contains("missing column(s) patientid"));
    }
}
