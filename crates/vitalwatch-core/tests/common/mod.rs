//! Fixtures the engine test files share: a fixed instant, the classic reference table and
//! patients of `data/` (compiled into the crate), and observations built from pairs.

#![allow(dead_code, unreachable_pub)]

use vitalwatch_core::alert::Priority;
use vitalwatch_core::model::{
    Consciousness, DeviceId, Observation, Patient, PatientId, Timestamp, Vital, VitalSet,
};
use vitalwatch_core::reference::{
    CLASSIC_PATIENTS_CSV, CLASSIC_THRESHOLDS_CSV, ThresholdTable, parse_patients_csv,
    parse_threshold_csv,
};

/// 2025-11-28T14:00:00Z.
pub const T0: i64 = 1_764_338_400_000_000;

/// `secs` seconds after [`T0`].
pub fn at(secs: i64) -> Timestamp {
    Timestamp(T0 + secs * 1_000_000)
}

/// The classic threshold table, as version 1.
pub fn table() -> ThresholdTable {
    ThresholdTable {
        version: 1,
        bands: parse_threshold_csv(CLASSIC_THRESHOLDS_CSV.as_bytes()).unwrap(),
    }
}

/// The classic patients 1-5.
pub fn patients() -> Vec<Patient> {
    parse_patients_csv(CLASSIC_PATIENTS_CSV.as_bytes()).unwrap()
}

/// One observation set of `patient` from `device` at `t`.
pub fn obs_from(patient: &str, device: &str, t: Timestamp, vitals: &[(Vital, f64)]) -> Observation {
    let mut set = VitalSet::default();
    for &(v, x) in vitals {
        set.set(v, x);
    }
    Observation {
        patient_id: PatientId(patient.into()),
        device_id: DeviceId(device.into()),
        observed_at: t,
        ingested_at: t,
        vitals: set,
    }
}

/// One observation set of `patient` from its own device `dev-{patient}`.
pub fn obs(patient: &str, t: Timestamp, vitals: &[(Vital, f64)]) -> Observation {
    obs_from(patient, &format!("dev-{patient}"), t, vitals)
}

/// An SpO2 < 80 % limit rule that fires at once (high): the tests of rules without
/// persistence use it. (vitalwatch's default desaturation alarm is a band of the standard
/// reference table, with the bands' persistence.)
pub fn desaturation_limit() -> vitalwatch_core::rules::LimitRule {
    vitalwatch_core::rules::LimitRule {
        name: "spo2_desaturation".into(),
        vital: Vital::Spo2,
        below: Some(80.0),
        above: None,
        priority: Priority::High,
        persistence: vitalwatch_core::model::Duration::ZERO,
        hysteresis: 2.0,
        message: "SpO2 desaturation below 80%".into(),
        scale: None,
    }
}

/// A complete NEWS2 observation set on air.
pub fn full_set(
    hr: f64,
    rr: f64,
    spo2: f64,
    sbp: f64,
    temp: f64,
    c: Consciousness,
) -> Vec<(Vital, f64)> {
    vec![
        (Vital::HeartRate, hr),
        (Vital::RespRate, rr),
        (Vital::Spo2, spo2),
        (Vital::Systolic, sbp),
        (Vital::TempC, temp),
        (Vital::Consciousness, c.code()),
        (Vital::OnOxygen, 0.0),
    ]
}
