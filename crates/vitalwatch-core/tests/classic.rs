//! The classic profile against a literal oracle of the classic job, on messy input:
//! decimal values (some between bands), records with one field missing, several records
//! of one patient in the same second, exact re-deliveries, and an unknown patient.
//!
//! The oracle is the classic job as written: for every record and every attribute it
//! carries, the band of that attribute whose age range holds the patient's age and whose
//! value range holds the value (`BETWEEN`, both ends inclusive, 9999 = no upper limit);
//! a flagged band is one alert carrying the record's own `heartBeat` and `bp`.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use vitalwatch_core::engine::{Engine, Findings};
use vitalwatch_core::model::{DeviceId, Observation, PatientId, Timestamp, Vital, VitalSet};
use vitalwatch_core::reference::{
    CLASSIC_PATIENTS_CSV, CLASSIC_THRESHOLDS_CSV, ThresholdTable, parse_patients_csv,
    parse_threshold_csv,
};
use vitalwatch_core::rules::{Profile, RulesConfig};

const T0: i64 = 1_764_338_400_000_000;

/// One classic record: patient, second, heartBeat, bp.
type Record = (u32, i64, Option<f64>, Option<f64>);

/// Values at the table's edges, in between them (x.5) and anywhere, in tenths.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u32..300).prop_map(f64::from),
        (0u32..300).prop_map(|v| f64::from(v) + 0.5),
        (0u32..3000).prop_map(|v| f64::from(v) / 10.0),
        prop::sample::select(vec![
            65.0, 65.5, 66.0, 69.0, 69.5, 70.0, 73.5, 74.0, 78.0, 78.5, 79.0, 150.0, 150.5, 151.0,
            160.0, 160.5, 161.0, 180.5, 181.0, 220.0, 220.5, 221.0
        ]),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        // Patients 1-5 are the classic ones (23, 45, 56, 67, 72); 9 is unknown.
        prop::sample::select(vec![1u32, 2, 3, 4, 5, 9]),
        // A few seconds only: same-second collisions are the point.
        0i64..3,
        proptest::option::of(value()),
        proptest::option::of(value()),
    )
        .prop_filter("a record carries a vital", |r| {
            r.2.is_some() || r.3.is_some()
        })
}

/// Records, some delivered twice.
fn records() -> impl Strategy<Value = Vec<Record>> {
    proptest::collection::vec((record(), any::<bool>()), 1..60).prop_map(|rs| {
        let mut out = Vec::new();
        for (r, twice) in rs {
            out.push(r);
            if twice {
                out.push(r);
            }
        }
        out
    })
}

/// One alert as compared: (patient, ref_id, value, heartBeat, bp), floats as bits.
type AlertRow = (u32, u32, u64, Option<u64>, Option<u64>);

/// What the classic job raises for one record.
fn oracle(table: &ThresholdTable, ages: &BTreeMap<u32, u32>, r: &Record) -> Vec<AlertRow> {
    let Some(&age) = ages.get(&r.0) else {
        return Vec::new();
    };
    let bits = |x: Option<f64>| x.map(f64::to_bits);
    let mut out = Vec::new();
    for (attribute, v) in [("heartBeat", r.2), ("bp", r.3)] {
        let Some(v) = v else { continue };
        let band = table.bands.iter().find(|b| {
            b.attribute == attribute
                && b.low_age_limit <= age
                && age <= b.high_age_limit
                && b.low_range_value <= v
                && (b.high_range_value == 9999.0 || v <= b.high_range_value)
        });
        if let Some(b) = band
            && b.alert_flag
        {
            out.push((r.0, b.ref_id, v.to_bits(), bits(r.2), bits(r.3)));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn classic_profile_matches_the_classic_job_one_for_one(rs in records()) {
        let table = ThresholdTable {
            version: 1,
            bands: parse_threshold_csv(CLASSIC_THRESHOLDS_CSV.as_bytes()).unwrap(),
        };
        let patients = parse_patients_csv(CLASSIC_PATIENTS_CSV.as_bytes()).unwrap();
        let ages: BTreeMap<u32, u32> = patients
            .iter()
            .map(|p| (p.patient_id.as_str().parse().unwrap(), p.age))
            .collect();
        let rules = RulesConfig { profile: Profile::Classic, ..RulesConfig::default() };
        let mut engine = Engine::new(rules, patients, table.clone());
        let mut got = Vec::new();
        let mut want = Vec::new();
        let mut ids: BTreeMap<String, BTreeSet<(u32, u32, u64, i64)>> = BTreeMap::new();
        for r in &rs {
            let t = Timestamp(T0 + r.1 * 1_000_000);
            let mut vitals = VitalSet::default();
            if let Some(hr) = r.2 { vitals.set(Vital::HeartRate, hr); }
            if let Some(bp) = r.3 { vitals.set(Vital::Systolic, bp); }
            let o = Observation {
                patient_id: PatientId(r.0.to_string().into()),
                device_id: DeviceId(format!("classic-{}", r.0).into()),
                observed_at: t,
                ingested_at: t,
                vitals,
            };
            let mut f = Findings::default();
            engine.process(&o, t, &mut f);
            for e in f.events {
                let v = e.value.unwrap();
                let row = (r.0, e.ref_id.unwrap(), v.to_bits(), e.heart_beat.map(f64::to_bits), e.bp.map(f64::to_bits));
                ids.entry(e.alert_id.to_string()).or_default().insert((row.0, row.1, row.2, r.1));
                got.push(row);
            }
            want.extend(oracle(&table, &ages, r));
        }
        got.sort_unstable();
        want.sort_unstable();
        prop_assert_eq!(&got, &want);
        // Identity is content: one id per distinct (patient, band, value, second), and an
        // exact re-delivery shares its original's id.
        for (id, contents) in &ids {
            prop_assert_eq!(contents.len(), 1, "{} names {:?}", id, contents);
        }
        let distinct: BTreeSet<(u32, u32, u64)> = got.iter().map(|g| (g.0, g.1, g.2)).collect();
        prop_assert!(ids.len() >= distinct.len());
    }
}
