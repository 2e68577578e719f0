//! Engine behaviour against the classic reference table and patients (`data/`), with time
//! as a parameter: classic band semantics at every edge, persistence, hysteresis,
//! deduplication, re-notification, acknowledgement, stale devices and determinism.

mod common;

use common::{at, full_set, obs, patients, table};
use proptest::prelude::*;
use vitalwatch_core::alert::{AlertEventKind, AlertState, Priority};
use vitalwatch_core::engine::{Engine, Findings};
use vitalwatch_core::model::{
    Consciousness, Duration, Observation, Patient, PatientId, Timestamp, UnclassifiedReason, Vital,
};
use vitalwatch_core::reference::{ThresholdBand, ThresholdTable};
use vitalwatch_core::rules::{Profile, RulesConfig};

fn patient(id: &str, age: u32) -> Patient {
    Patient {
        patient_id: PatientId(id.into()),
        name: format!("Test {id}"),
        address: String::new(),
        phone: String::new(),
        ward: "1".into(),
        age,
        spo2_scale: Default::default(),
        other_details: String::new(),
    }
}

fn classic_engine(extra: Vec<Patient>) -> Engine {
    let rules = RulesConfig {
        profile: Profile::Classic,
        ..RulesConfig::default()
    };
    let mut ps = patients();
    ps.extend(extra);
    Engine::new(rules, ps, table())
}

fn run(engine: &mut Engine, o: &Observation) -> Findings {
    let mut f = Findings::default();
    engine.process(o, o.observed_at, &mut f);
    f
}

/// (age, vital, value) → the classic ref_id that must fire, or None for a normal band.
#[test]
fn classic_bands_at_every_edge() {
    let cases: &[(u32, Vital, f64, Option<u32>)] = &[
        (40, Vital::HeartRate, 69.0, Some(1)),
        (40, Vital::HeartRate, 70.0, None),
        (40, Vital::HeartRate, 78.0, None),
        (40, Vital::HeartRate, 79.0, Some(3)),
        (40, Vital::HeartRate, 0.0, Some(1)),
        (0, Vital::HeartRate, 69.0, Some(1)),
        (41, Vital::HeartRate, 65.0, Some(7)),
        (41, Vital::HeartRate, 66.0, None),
        (41, Vital::HeartRate, 69.0, None),
        (41, Vital::HeartRate, 73.0, None),
        (41, Vital::HeartRate, 74.0, Some(9)),
        (100, Vital::HeartRate, 74.0, Some(9)),
        (100, Vital::HeartRate, 70.0, None),
        (40, Vital::Systolic, 160.0, Some(4)),
        (40, Vital::Systolic, 161.0, None),
        (40, Vital::Systolic, 220.0, None),
        (40, Vital::Systolic, 221.0, Some(6)),
        (41, Vital::Systolic, 150.0, Some(10)),
        (41, Vital::Systolic, 151.0, None),
        (41, Vital::Systolic, 180.0, None),
        (41, Vital::Systolic, 181.0, Some(12)),
    ];
    for (i, &(age, vital, value, want)) in cases.iter().enumerate() {
        let id = format!("edge-{i}");
        let mut e = classic_engine(vec![patient(&id, age)]);
        let f = run(&mut e, &obs(&id, at(0), &[(vital, value)]));
        let got: Vec<Option<u32>> = f.events.iter().map(|a| a.ref_id).collect();
        match want {
            Some(r) => assert_eq!(got, vec![Some(r)], "age {age} {vital} {value}"),
            None => assert!(got.is_empty(), "age {age} {vital} {value}: {got:?}"),
        }
        assert!(f.unclassified.is_empty(), "age {age} {vital} {value}");
    }
}

/// 9999 means "no upper limit": a value above it still matches the top band. (The
/// pipeline rejects such values as implausible before they get here; the band matcher
/// itself must still honour the table's semantics.)
#[test]
fn no_upper_limit_is_unbounded() {
    let bands = table().bands_for(Vital::HeartRate, &PatientId("x".into()), 30);
    for v in [79.0, 9999.0, 10_000.0, 1e9] {
        let b = vitalwatch_core::reference::match_band(&bands, v).unwrap();
        assert_eq!(b.ref_id, 3, "{v}");
    }
}

#[test]
fn unknown_patient_and_no_band_are_reported_not_dropped() {
    let mut e = classic_engine(vec![patient("old", 101)]);
    let f = run(&mut e, &obs("nobody", at(0), &[(Vital::HeartRate, 120.0)]));
    assert!(f.events.is_empty());
    assert_eq!(f.unclassified.len(), 1);
    assert_eq!(f.unclassified[0].reason, UnclassifiedReason::UnknownPatient);

    // Age 101 is above every band (41–100): no band, reported per vital.
    let f = run(
        &mut e,
        &obs(
            "old",
            at(0),
            &[(Vital::HeartRate, 120.0), (Vital::Systolic, 200.0)],
        ),
    );
    assert!(f.events.is_empty());
    let reasons: Vec<_> = f.unclassified.iter().map(|u| (u.vital, u.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            (Some(Vital::HeartRate), UnclassifiedReason::NoBand),
            (Some(Vital::Systolic), UnclassifiedReason::NoBand)
        ]
    );
}

/// The classic job's alerts for the classic patients, one for one, with the classic fields.
#[test]
fn reproduces_classic_alerts_for_the_classic_patients() {
    let mut e = classic_engine(vec![]);
    // Each patient sends {"heartBeat":74,"bp":202}.
    let mut got = Vec::new();
    for (i, id) in ["1", "2", "3", "4", "5"].iter().enumerate() {
        let o = obs(
            id,
            at(i as i64),
            &[(Vital::HeartRate, 74.0), (Vital::Systolic, 202.0)],
        );
        for a in run(&mut e, &o).events {
            got.push((
                a.patient.patientname.clone(),
                a.patient.age,
                a.alert_message.to_string(),
                a.ref_id,
                a.bp,
                a.heart_beat,
            ));
        }
    }
    let hi_hr = "Higher Heart Rate than Normal".to_owned();
    let hi_bp = "Higher BP than Normal".to_owned();
    let want = vec![
        // Alex S, 23: 74 is normal (70–78), 202 is normal (161–220).
        (
            "Sammy A".to_owned(),
            Some(45),
            hi_hr.clone(),
            Some(9),
            Some(202.0),
            Some(74.0),
        ),
        (
            "Sammy A".to_owned(),
            Some(45),
            hi_bp.clone(),
            Some(12),
            Some(202.0),
            Some(74.0),
        ),
        (
            "Karan C".to_owned(),
            Some(56),
            hi_hr.clone(),
            Some(9),
            Some(202.0),
            Some(74.0),
        ),
        (
            "Karan C".to_owned(),
            Some(56),
            hi_bp.clone(),
            Some(12),
            Some(202.0),
            Some(74.0),
        ),
        (
            "Dara M".to_owned(),
            Some(67),
            hi_hr.clone(),
            Some(9),
            Some(202.0),
            Some(74.0),
        ),
        (
            "Dara M".to_owned(),
            Some(67),
            hi_bp.clone(),
            Some(12),
            Some(202.0),
            Some(74.0),
        ),
        (
            "Pam".to_owned(),
            Some(72),
            hi_hr,
            Some(9),
            Some(202.0),
            Some(74.0),
        ),
        (
            "Pam".to_owned(),
            Some(72),
            hi_bp,
            Some(12),
            Some(202.0),
            Some(74.0),
        ),
    ];
    assert_eq!(got, want);

    // Classic: no dedup, every abnormal reading alerts again, and the JSON has the classic keys.
    let again = run(&mut e, &obs("5", at(60), &[(Vital::HeartRate, 60.0)]));
    assert_eq!(again.events.len(), 1);
    assert_eq!(
        &*again.events[0].alert_message,
        "Low Heart Rate than Normal"
    );
    assert_eq!(again.events[0].ref_version, Some(1));
    let json = serde_json::to_value(&again.events[0]).unwrap();
    for key in [
        "patientname",
        "age",
        "patientaddress",
        "phone_number",
        "admitted_ward",
        "bp",
        "heartBeat",
        "input_message_time",
        "alert_generated_time",
        "alert_message",
        "alert_id",
        "patient_id",
        "vital",
        "value",
        "ref_id",
        "ref_version",
        "priority",
        "rule",
        "state",
    ] {
        assert!(json.get(key).is_some(), "alert JSON lacks {key}: {json}");
    }
}

/// Events share their patient details and band texts (made once, not per event): a
/// reference reload that renames a band's message or moves a patient to another ward
/// reaches the very next event, and events raised before keep what they said.
#[test]
fn a_reload_reaches_the_next_event_and_leaves_earlier_ones_as_they_were() {
    let mut e = classic_engine(vec![]);
    let low_hr = obs("5", at(0), &[(Vital::HeartRate, 60.0)]);
    let before = run(&mut e, &low_hr).events.remove(0);
    let same = run(&mut e, &obs("5", at(1), &[(Vital::HeartRate, 60.0)])).events;
    assert_eq!(same[0].alert_message, before.alert_message);
    assert_eq!(same[0].patient, before.patient);

    let mut t = table();
    let band = t
        .bands
        .iter_mut()
        .find(|b| b.ref_id == before.ref_id.unwrap())
        .unwrap();
    band.alert_message = "Bradycardia".into();
    let mut ps = patients();
    let p = ps.iter_mut().find(|p| p.patient_id.0 == "5").unwrap();
    p.ward = "ICU-2".into();
    e.load_reference(ps, t);

    let after = run(&mut e, &obs("5", at(2), &[(Vital::HeartRate, 60.0)])).events;
    assert_eq!(&*after[0].alert_message, "Bradycardia");
    assert_eq!(after[0].patient.admitted_ward, "ICU-2");
    assert_eq!(&*before.alert_message, "Low Heart Rate than Normal");
    assert_ne!(before.patient.admitted_ward, "ICU-2");
}

fn standard(rules: impl FnOnce(&mut RulesConfig)) -> Engine {
    let mut r = RulesConfig::default();
    r.stale_device.enabled = false;
    r.news2.enabled = false;
    rules(&mut r);
    Engine::new(r, patients(), table())
}

#[test]
fn persistence_requires_the_condition_to_hold_without_a_break() {
    // Patient 5 (72): heart rate ≥ 74 is high. Persistence 10 s by default.
    let mut e = standard(|_| {});
    let hr =
        |e: &mut Engine, s: i64, v: f64| run(e, &obs("5", at(s), &[(Vital::HeartRate, v)])).events;
    assert!(hr(&mut e, 0, 90.0).is_empty());
    assert!(hr(&mut e, 9, 90.0).is_empty(), "9 s is not yet 10 s");
    assert!(
        hr(&mut e, 11, 70.0).is_empty(),
        "back to normal: the pending condition resets"
    );
    assert!(hr(&mut e, 12, 90.0).is_empty());
    assert!(hr(&mut e, 21, 90.0).is_empty());
    let fired = hr(&mut e, 22, 90.0);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].event, AlertEventKind::Triggered);
    assert_eq!(
        fired[0].episode_start,
        at(12),
        "the episode starts with its first abnormal reading"
    );
    assert_eq!(fired[0].input_message_time, at(22));
}

#[test]
fn dedup_hysteresis_and_resolution() {
    let mut e = standard(|r| r.thresholds.persistence = Duration::ZERO);
    let hr =
        |e: &mut Engine, s: i64, v: f64| run(e, &obs("5", at(s), &[(Vital::HeartRate, v)])).events;
    let first = hr(&mut e, 0, 90.0);
    assert_eq!(first.len(), 1);
    let id = first[0].alert_id.to_string();
    // Still high: one active alert per patient and rule, no repeats.
    for s in 1..30 {
        assert!(hr(&mut e, s, 95.0).is_empty());
    }
    // 72 is in the normal band (66–73) but within the 3 bpm margin of the high band (74):
    // the alert must not clear yet.
    assert!(hr(&mut e, 30, 72.0).is_empty());
    assert!(hr(&mut e, 31, 71.0).is_empty());
    // 70: 70+3 = 73 is still normal, 70-3 = 67 is normal: clears.
    let cleared = hr(&mut e, 32, 70.0);
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].event, AlertEventKind::Resolved);
    assert_eq!(cleared[0].alert_id, id);
    // A new episode gets a new id.
    let second = hr(&mut e, 40, 90.0);
    assert_eq!(second[0].event, AlertEventKind::Triggered);
    assert_ne!(second[0].alert_id, id);
}

#[test]
fn renotify_until_acknowledged_then_resolve() {
    let mut e = standard(|r| r.thresholds.persistence = Duration::ZERO);
    let f = run(&mut e, &obs("5", at(0), &[(Vital::HeartRate, 90.0)]));
    let id = f.events[0].alert_id.to_string();
    let mut out = Findings::default();
    e.tick(at(119), &mut out);
    assert!(out.events.is_empty(), "re-notify after 2 min, not before");
    e.tick(at(120), &mut out);
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].event, AlertEventKind::Renotified);
    out.clear();
    e.tick(at(200), &mut out);
    assert!(
        out.events.is_empty(),
        "the next re-notification is 2 min after the last"
    );

    let ack = e.acknowledge(&id, "nurse.jones", at(201)).unwrap();
    assert_eq!(ack.state, AlertState::Acknowledged);
    assert_eq!(ack.acknowledged_by.as_deref(), Some("nurse.jones"));
    assert!(e.acknowledge(&id, "nurse.jones", at(202)).is_err());
    e.tick(at(1000), &mut out);
    assert!(
        out.events.is_empty(),
        "acknowledged alerts are not re-notified"
    );
    let f = run(&mut e, &obs("5", at(1001), &[(Vital::HeartRate, 70.0)]));
    assert_eq!(f.events[0].event, AlertEventKind::Resolved);
    assert!(e.active_alerts().is_empty());
    assert!(e.acknowledge(&id, "x", at(1002)).is_err());
}

#[test]
fn spo2_limit_rules_ignore_a_short_dropout_but_not_a_desaturation() {
    let mut e = standard(|r| r.limits.push(common::desaturation_limit()));
    let spo2 =
        |e: &mut Engine, s: i64, v: f64| run(e, &obs("1", at(s), &[(Vital::Spo2, v)])).events;
    // A 5-second artifact to 85 %: below the 90 % limit, but shorter than its 15 s persistence.
    for s in 0..5 {
        assert!(spo2(&mut e, s, 85.0).is_empty());
    }
    assert!(spo2(&mut e, 5, 97.0).is_empty());
    // A real desaturation to 78 %: the 80 % rule fires at once with high priority.
    let f = spo2(&mut e, 10, 78.0);
    assert_eq!(f.len(), 1);
    assert_eq!(&*f[0].rule_key, "limit:spo2_desaturation");
    assert_eq!(f[0].priority, Priority::High);
    // Held for 15 s the 90 % rule fires too.
    for s in 11..25 {
        assert!(spo2(&mut e, s, 78.0).is_empty(), "second {s}");
    }
    let f = spo2(&mut e, 25, 78.0);
    assert_eq!(
        f.iter().map(|a| &*a.rule_key).collect::<Vec<_>>(),
        vec!["limit:spo2_low"]
    );
}

/// Alerts for patients the catalog does not list carry empty details, and all share one
/// value: the alert writer escapes a patient's details once per shared value, so a feed of
/// unknown ids must not make one copy per event.
#[test]
fn unlisted_patients_alert_with_one_shared_empty_details_value() {
    let mut e = standard(|r| {
        r.news2.enabled = true;
        r.news2.persistence = Duration::ZERO;
        r.thresholds.enabled = false;
        r.limits.clear();
    });
    let a = Consciousness::A;
    let mut events = Vec::new();
    for id in ["ghost-1", "ghost-2"] {
        // HR 115 (2) + RR 22 (2) + SpO2 95 (1) = 5.
        let f = run(
            &mut e,
            &obs(id, at(0), &full_set(115.0, 22.0, 95.0, 120.0, 37.0, a)),
        );
        assert_eq!(f.unclassified[0].reason, UnclassifiedReason::UnknownPatient);
        events.extend(f.events);
    }
    assert_eq!(events.len(), 2, "{events:?}");
    assert_ne!(events[0].patient_id, events[1].patient_id);
    assert_eq!(*events[0].patient, Default::default());
    assert!(std::sync::Arc::ptr_eq(
        &events[0].patient,
        &events[1].patient
    ));
}

#[test]
fn news2_alerts_escalate_and_resolve() {
    // Escalation and resolution themselves; persistence and the clear delay have their own
    // tests (tests/time.rs).
    let mut e = standard(|r| {
        r.news2.enabled = true;
        r.news2.persistence = Duration::ZERO;
        r.news2.clear_after = Duration::ZERO;
        r.thresholds.enabled = false;
        r.limits.clear();
    });
    let a = Consciousness::A;
    assert!(
        run(
            &mut e,
            &obs("2", at(0), &full_set(70.0, 16.0, 97.0, 120.0, 37.0, a))
        )
        .events
        .is_empty()
    );
    // HR 115 (2) + RR 22 (2) + SpO2 95 (1) = 5: urgent, medium.
    let f = run(
        &mut e,
        &obs("2", at(60), &full_set(115.0, 22.0, 95.0, 120.0, 37.0, a)),
    );
    assert_eq!(f.events.len(), 1);
    assert_eq!(
        (
            f.events[0].event,
            f.events[0].priority,
            f.events[0].news2_score
        ),
        (AlertEventKind::Triggered, Priority::Medium, Some(5))
    );
    let id = f.events[0].alert_id.to_string();
    // + SBP 95 (2) = 7: emergency, the same episode escalates to high.
    let f = run(
        &mut e,
        &obs("2", at(120), &full_set(115.0, 22.0, 95.0, 95.0, 37.0, a)),
    );
    assert_eq!(f.events.len(), 1);
    assert_eq!(
        (
            f.events[0].event,
            f.events[0].priority,
            f.events[0].alert_id.as_str()
        ),
        (AlertEventKind::Escalated, Priority::High, id.as_str())
    );
    // Back to 0: resolved.
    let f = run(
        &mut e,
        &obs("2", at(180), &full_set(70.0, 16.0, 97.0, 120.0, 37.0, a)),
    );
    assert_eq!(f.events[0].event, AlertEventKind::Resolved);
    // Incomplete set (no temperature ever): no score.
    let f = run(
        &mut e,
        &obs("3", at(0), &full_set(140.0, 30.0, 85.0, 80.0, 37.0, a)[..4]),
    );
    assert!(f.events.is_empty());
}

#[test]
fn stale_device_alarms_and_clears() {
    let mut e = standard(|r| r.stale_device.enabled = true);
    run(&mut e, &obs("1", at(0), &[(Vital::HeartRate, 75.0)]));
    let mut out = Findings::default();
    e.tick(at(60), &mut out);
    assert!(out.events.is_empty(), "exactly 60 s is not over 60 s");
    e.tick(at(61), &mut out);
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].rule, "device_stale");
    assert_eq!(out.events[0].device_id.as_deref(), Some("dev-1"));
    let f = run(&mut e, &obs("1", at(70), &[(Vital::HeartRate, 75.0)]));
    assert_eq!(f.events.len(), 1);
    assert_eq!(f.events[0].event, AlertEventKind::Resolved);
}

#[test]
fn per_patient_override_replaces_age_bands() {
    let mut t = table();
    t.bands.push(ThresholdBand {
        ref_id: 100,
        attribute: "heartBeat".into(),
        vital: Vital::HeartRate,
        low_age_limit: 0,
        high_age_limit: 200,
        low_range_value: 0.0,
        high_range_value: 110.0,
        alert_flag: false,
        alert_message: "Normal for this athlete".into(),
        priority: Priority::Low,
        patient_id: Some(PatientId("5".into())),
    });
    t.bands.push(ThresholdBand {
        ref_id: 101,
        alert_flag: true,
        low_range_value: 111.0,
        high_range_value: 9999.0,
        alert_message: "Above personal limit".into(),
        priority: Priority::High,
        ..t.bands.last().unwrap().clone()
    });
    let rules = RulesConfig {
        profile: Profile::Classic,
        ..RulesConfig::default()
    };
    let mut e = Engine::new(rules, patients(), t);
    assert!(
        run(&mut e, &obs("5", at(0), &[(Vital::HeartRate, 100.0)]))
            .events
            .is_empty()
    );
    let f = run(&mut e, &obs("5", at(1), &[(Vital::HeartRate, 120.0)]));
    assert_eq!(
        (f.events[0].ref_id, f.events[0].priority),
        (Some(101), Priority::High)
    );
    // Other patients keep the age bands.
    assert_eq!(
        run(&mut e, &obs("4", at(2), &[(Vital::HeartRate, 100.0)])).events[0].ref_id,
        Some(9)
    );
}

#[test]
fn replaying_the_same_input_yields_the_same_alert_ids() {
    // Five patients, one reading every 2 s each; patient 5's monitor stops halfway, so
    // stale-device alarms and re-notifications (both driven by tick()) are in the story.
    let input: Vec<Observation> = (0..2000)
        .filter(|i| i % 5 != 4 || *i < 1000)
        .map(|i| {
            obs(
                ["1", "2", "3", "4", "5"][i % 5],
                at(i as i64 * 2 / 5),
                &[
                    (Vital::HeartRate, 40.0 + (i % 90) as f64),
                    (Vital::Systolic, 100.0 + (i % 150) as f64),
                ],
            )
        })
        .collect();
    for profile in [Profile::Classic, Profile::Standard] {
        let story = |now_offset: i64| {
            let mut e = Engine::new(
                RulesConfig {
                    profile,
                    ..RulesConfig::default()
                },
                patients(),
                table(),
            );
            let mut f = Findings::default();
            let mut last_tick = Timestamp(i64::MIN);
            for o in &input {
                // The clock differs between runs (it reads a little later each time); the
                // alerts must not depend on it.
                let now = Timestamp(o.observed_at.0 + now_offset);
                e.process(o, now, &mut f);
                if now.since(last_tick) >= Duration::from_secs(1) {
                    e.tick(now, &mut f);
                    last_tick = now;
                }
            }
            f.events
                .iter()
                .map(|a| (a.alert_id.to_string(), a.event.as_str(), a.priority))
                .collect::<Vec<_>>()
        };
        let first = story(0);
        assert!(!first.is_empty());
        if profile == Profile::Standard {
            for kind in ["triggered", "renotified", "resolved"] {
                assert!(first.iter().any(|e| e.1 == kind), "{kind}: {first:?}");
            }
        }
        assert_eq!(first, story(400_000), "{profile:?}");
    }
}

/// The loose table with every normal band narrowed from both sides, by `narrow[i]` tenths
/// for band `i`, and the alerting bands next to it (same vital, ages and patient) widened to
/// meet it exactly: the low alerting band ends at the new normal low and the high one starts
/// at the new normal high. The shared edges leave no gap, even for decimal values; where two
/// bands share an edge the first in table order wins (the low alerting band below the normal
/// one, the normal band above it).
fn tighten(loose: &ThresholdTable, narrow: &[(u32, u32)]) -> ThresholdTable {
    let mut tight = loose.clone();
    for (i, normal) in loose
        .bands
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.alert_flag)
    {
        let (up, down) = narrow[i % narrow.len()];
        // In tenths, so an edge is the same double as a value with one decimal place.
        let lo = (normal.low_range_value * 10.0 + f64::from(up)) / 10.0;
        let hi = (normal.high_range_value * 10.0 - f64::from(down)) / 10.0;
        assert!(lo < hi, "narrowed band {}: {lo}–{hi}", normal.ref_id);
        tight.bands[i].low_range_value = lo;
        tight.bands[i].high_range_value = hi;
        for (j, b) in loose.bands.iter().enumerate() {
            let neighbour = b.alert_flag
                && b.vital == normal.vital
                && (b.low_age_limit, b.high_age_limit, &b.patient_id)
                    == (
                        normal.low_age_limit,
                        normal.high_age_limit,
                        &normal.patient_id,
                    );
            if neighbour && b.high_range_value < normal.low_range_value {
                tight.bands[j].high_range_value = lo;
            } else if neighbour && b.low_range_value > normal.high_range_value {
                tight.bands[j].low_range_value = hi;
            }
        }
    }
    tight
}

/// A value with one decimal place: mostly near the classic bands' edges, sometimes anywhere.
fn tenths(near: std::ops::RangeInclusive<u32>) -> impl Strategy<Value = f64> {
    prop_oneof![3 => near, 1 => 0u32..=3000].prop_map(|t| f64::from(t) / 10.0)
}

proptest! {
    /// Tightening the thresholds never removes an alert: with every normal band narrowed
    /// from both sides by 0.0–3.0 and the alerting bands widened to meet it, every vital
    /// that alerts with the loose (classic) table for a heart rate and systolic pressure
    /// with one decimal place still alerts with the tight table, and a value outside the
    /// narrowed normal band alerts.
    #[test]
    fn tightening_a_threshold_never_removes_an_alert(
        age in 0u32..=100,
        hr in tenths(600..=850),
        sbp in tenths(1400..=2300),
        narrow in proptest::collection::vec((0u32..=30, 0u32..=30), 12),
    ) {
        let loose = table();
        let tight = tighten(&loose, &narrow);
        let id = PatientId("p".into());
        // Only values inside a loose band: a decimal in the gap between two integer bands
        // (69.5 between 0–69 and 70–78) has no classic band at all.
        let vitals: Vec<(Vital, f64)> = [(Vital::HeartRate, hr), (Vital::Systolic, sbp)]
            .into_iter()
            .filter(|&(v, x)| loose.bands_for(v, &id, age).iter().any(|b| b.covers_value(x)))
            .collect();
        prop_assume!(!vitals.is_empty());
        for &(v, x) in &vitals {
            let bands = tight.bands_for(v, &id, age);
            prop_assert!(
                bands.iter().any(|b| b.covers_value(x)),
                "gap in the tight table at {} {}",
                v,
                x
            );
        }

        let p = patient("p", age);
        let rules = || RulesConfig { profile: Profile::Classic, ..RulesConfig::default() };
        let alerting = |t: ThresholdTable| {
            let mut e = Engine::new(rules(), vec![p.clone()], t);
            let mut got: Vec<Vital> = run(&mut e, &obs("p", at(0), &vitals))
                .events
                .iter()
                .map(|a| a.vital.expect("a threshold alert names its vital"))
                .collect();
            got.sort_unstable();
            got.dedup();
            got
        };
        let (by_loose, by_tight) = (alerting(loose), alerting(tight.clone()));
        for v in &by_loose {
            prop_assert!(
                by_tight.contains(v),
                "{} alerts with the loose table only ({:?})",
                v,
                vitals
            );
        }
        // The tightening is real: outside the narrowed normal band is an alert.
        for &(v, x) in &vitals {
            let bands = tight.bands_for(v, &id, age);
            let normal = bands.iter().find(|b| !b.alert_flag).unwrap();
            let (lo, hi) = (normal.low_range_value, normal.high_range_value);
            if x < lo || x > hi {
                prop_assert!(by_tight.contains(&v), "{} {} is outside {}–{}", v, x, lo, hi);
            }
        }
    }

    /// The band matcher agrees with a literal reading of the classic semantics.
    #[test]
    fn band_matcher_matches_the_classic_definition(age in 0u32..=100, value in 0u32..400) {
        let t = table();
        for vital in [Vital::HeartRate, Vital::Systolic] {
            let bands = t.bands_for(vital, &PatientId("p".into()), age);
            let got = vitalwatch_core::reference::match_band(&bands, f64::from(value)).map(|b| b.ref_id);
            let want = t.bands.iter().find(|b| {
                b.vital == vital
                    && b.low_age_limit <= age && age <= b.high_age_limit
                    && b.low_range_value <= f64::from(value)
                    && (b.high_range_value == 9999.0 || f64::from(value) <= b.high_range_value)
            }).map(|b| b.ref_id);
            prop_assert_eq!(got, want);
        }
    }
}

/// Partitions move between replicas that share one alert store: the engine taking a
/// patient over takes its open alert from the store (no second alert for the same
/// condition), and an alert another replica resolved no longer hides a new one.
#[test]
fn resync_takes_alerts_over_from_the_store_and_drops_ones_resolved_elsewhere() {
    let hr = |v: f64, s: i64| obs("5", at(s), &[(Vital::HeartRate, v)]);
    let mut a = standard(|r| r.thresholds.persistence = Duration::ZERO);
    let raised = run(&mut a, &hr(90.0, 0)).events;
    assert_eq!(raised[0].event, AlertEventKind::Triggered);

    // Replica b had an older state of the patient (it owned it before): normal readings.
    let mut b = standard(|r| r.thresholds.persistence = Duration::ZERO);
    assert!(run(&mut b, &hr(70.0, -10)).events.is_empty());
    // The store holds a's alert; b takes the patient over.
    assert_eq!(b.resync(raised.clone()), 1, "patient 5 differed");
    assert!(
        run(&mut b, &hr(95.0, 1)).events.is_empty(),
        "the same condition raises no second alert"
    );
    let resolved = run(&mut b, &hr(70.0, 2)).events;
    assert_eq!(resolved[0].event, AlertEventKind::Resolved);
    assert_eq!(resolved[0].alert_id, raised[0].alert_id);

    // Back on a, which still holds the alert b resolved: the store has none open.
    assert_eq!(a.resync(Vec::new()), 1);
    assert!(a.active_alerts().is_empty());
    let again = run(&mut a, &hr(92.0, 3)).events;
    assert_eq!(
        again.len(),
        1,
        "a new episode is not hidden by a stale alert"
    );
    assert_eq!(again[0].event, AlertEventKind::Triggered);
    assert_ne!(again[0].alert_id, raised[0].alert_id);
    // Agreeing with the store changes nothing.
    assert_eq!(a.resync(again.clone()), 0);
    assert_eq!(a.active_alerts().len(), 1);
}
