//! Real-world time and order, at the engine level with time as a parameter: far-future,
//! late, duplicated and clock-skewed readings; NEWS2 hovering at its trigger; oxygen
//! status that outlives the observation age; escalation after acknowledgement; SpO2
//! scales; classic one-for-one semantics on messy input; bounded state. Each test is
//! named after the failure it guards against.

mod common;

use std::collections::BTreeSet;

use common::{at, full_set, obs, obs_from, table};
use proptest::prelude::*;
use vitalwatch_core::alert::{AlertEvent, AlertEventKind, AlertState, Priority};
use vitalwatch_core::clock::{Reference, TimeConfig};
use vitalwatch_core::engine::{Engine, Findings, Processed};
use vitalwatch_core::model::{
    Consciousness, Duration, Observation, Patient, PatientId, Spo2Scale, Timestamp,
    UnclassifiedReason, Vital,
};
use vitalwatch_core::rules::{Profile, RulesConfig, UnknownOxygen};

/// The classic patients, and "copd" (23, on SpO2 scale 2).
fn patients() -> Vec<Patient> {
    let mut ps = common::patients();
    let mut copd = ps[0].clone();
    copd.patient_id = PatientId("copd".into());
    copd.spo2_scale = Spo2Scale::Scale2;
    ps.push(copd);
    ps
}

fn engine(profile: Profile, rules: impl FnOnce(&mut RulesConfig)) -> Engine {
    let mut r = RulesConfig {
        profile,
        ..RulesConfig::default()
    };
    rules(&mut r);
    Engine::new(r, patients(), table())
}

/// Processes `o` arriving at `now`, returns its events.
fn feed(e: &mut Engine, o: &Observation, now: Timestamp) -> Vec<AlertEvent> {
    let mut f = Findings::default();
    e.process(o, now, &mut f);
    f.events
}

fn tick(e: &mut Engine, now: Timestamp) -> Vec<AlertEvent> {
    let mut f = Findings::default();
    e.tick(now, &mut f);
    f.events
}

fn kinds(evs: &[AlertEvent]) -> Vec<(AlertEventKind, String)> {
    evs.iter()
        .map(|e| (e.event, e.rule_key.to_string()))
        .collect()
}

#[test]
fn a_far_future_reading_is_a_dead_letter_and_cannot_silence_the_patient() {
    // 40 years ahead: refused at the door, with a reason naming the clock and the limit.
    let time = TimeConfig::default();
    let err = time
        .admit(at(40 * 365 * 86_400), at(0), Reference::IngestTime)
        .unwrap_err();
    assert!(err.to_string().contains("time.max_future"), "{err}");

    // 4 minutes ahead is within max_future and reaches the engine: it must not stop
    // persistence, freeze the latest vitals or hide the device's silence.
    let mut e = engine(Profile::Standard, |_| {});
    let ahead = obs(
        "1",
        at(240),
        &[(Vital::HeartRate, 75.0), (Vital::Spo2, 97.0)],
    );
    assert!(feed(&mut e, &ahead, at(0)).is_empty());
    let mut fired = Vec::new();
    for s in 1..=120 {
        let o = obs(
            "1",
            at(s),
            &[(Vital::HeartRate, 125.0), (Vital::Spo2, 84.0)],
        );
        fired.extend(feed(&mut e, &o, at(s)));
        fired.extend(tick(&mut e, at(s)));
    }
    let keys: BTreeSet<String> = fired
        .iter()
        .filter(|e| e.event == AlertEventKind::Triggered)
        .map(|e| e.rule_key.to_string())
        .collect();
    assert!(keys.contains("threshold:heart_rate:3"), "{keys:?}");
    assert!(keys.contains("limit:spo2_low"), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.starts_with("device_stale")),
        "a device that reports every second is not stale: {keys:?}"
    );
    // And when it does stop, the stale alarm comes 60 s after its last arrival.
    let stale = |evs: Vec<AlertEvent>| -> Vec<String> {
        evs.into_iter()
            .filter(|e| e.rule == "device_stale")
            .map(|e| e.rule_key.to_string())
            .collect()
    };
    assert!(stale(tick(&mut e, at(180))).is_empty());
    assert_eq!(stale(tick(&mut e, at(181))), ["device_stale:dev-1"]);
}

#[test]
fn a_late_normal_reading_cannot_resolve_or_duplicate_an_episode() {
    let mut e = engine(Profile::Standard, |r| {
        r.news2.enabled = false;
        r.limits.push(common::desaturation_limit());
    });
    let hr = |s: i64, v: f64| obs("1", at(s), &[(Vital::HeartRate, v)]);
    let mut evs = Vec::new();
    for s in 0..=30 {
        evs.extend(feed(&mut e, &hr(s, 95.0), at(s)));
    }
    assert_eq!(evs.len(), 1, "{:?}", kinds(&evs));
    let id = evs[0].alert_id.to_string();
    assert_eq!(evs[0].episode_start, at(0));
    // A gateway re-sends a normal reading from second 5.
    assert!(
        feed(&mut e, &hr(5, 74.0), at(31)).is_empty(),
        "late: no resolve"
    );
    assert!(
        feed(&mut e, &hr(32, 96.0), at(32)).is_empty(),
        "no second alert"
    );
    let resolved = feed(&mut e, &hr(40, 74.0), at(40));
    assert_eq!(
        kinds(&resolved),
        [(AlertEventKind::Resolved, "threshold:heart_rate:3".into())]
    );
    assert_eq!(resolved[0].alert_id, id);
    // A late abnormal reading from before the resolution cannot restart the episode,
    // even for a rule without persistence.
    assert!(feed(&mut e, &hr(38, 96.0), at(41)).is_empty());
    let sp = |s: i64, v: f64| obs("1", at(s), &[(Vital::Spo2, v)]);
    assert_eq!(feed(&mut e, &sp(100, 78.0), at(100)).len(), 1);
    assert_eq!(
        feed(&mut e, &sp(105, 97.0), at(105))[0].event,
        AlertEventKind::Resolved
    );
    assert!(
        feed(&mut e, &sp(103, 78.0), at(106)).is_empty(),
        "no restart"
    );
    assert!(e.active_alerts().is_empty());
}

#[test]
fn readings_later_than_the_window_are_not_evaluated() {
    let mut e = engine(Profile::Standard, |r| {
        r.news2.enabled = false;
        r.limits.push(common::desaturation_limit());
    })
    .with_lateness(Duration::from_secs(60));
    let mut f = Findings::default();
    let now = obs("1", at(600), &[(Vital::HeartRate, 74.0)]);
    assert_eq!(e.process(&now, at(600), &mut f), Processed::Evaluated);
    let old = obs("1", at(500), &[(Vital::Spo2, 70.0)]);
    assert_eq!(e.process(&old, at(601), &mut f), Processed::Late);
    assert!(
        f.events.is_empty(),
        "a 100 s old desaturation is history, not an alarm"
    );
    let within = obs("1", at(570), &[(Vital::Spo2, 70.0)]);
    assert_eq!(e.process(&within, at(602), &mut f), Processed::Evaluated);
    assert_eq!(f.events.len(), 1, "late within the window still raises");
}

#[test]
fn a_late_reading_cannot_end_a_stale_device_alarm_and_a_new_silence_is_a_new_alert() {
    let mut e = engine(Profile::Standard, |r| r.news2.enabled = false);
    let hr = |s: i64| obs("1", at(s), &[(Vital::HeartRate, 74.0)]);
    feed(&mut e, &hr(0), at(0));
    let first = tick(&mut e, at(61));
    assert_eq!(first.len(), 1);
    // A buffered reading from before the silence proves nothing about the device now.
    assert!(feed(&mut e, &hr(-10), at(70)).is_empty());
    assert_eq!(e.active_alerts().len(), 1);
    let back = feed(&mut e, &hr(80), at(80));
    assert_eq!(back[0].event, AlertEventKind::Resolved);
    assert_eq!(back[0].alert_id, first[0].alert_id);
    let again = tick(&mut e, at(150));
    assert_eq!(again[0].event, AlertEventKind::Triggered);
    assert_ne!(
        again[0].alert_id, first[0].alert_id,
        "a new episode, a new id"
    );
}

#[test]
fn clock_skew_neither_floods_nor_hides_the_stale_alarm() {
    let mut e = engine(Profile::Standard, |r| r.news2.enabled = false);
    // Monitor A runs 90 s behind, B 90 s ahead; both post every 1.2 s for 7 s.
    let mut evs = Vec::new();
    for k in 0..6 {
        let now = Timestamp(at(0).0 + k * 1_200_000);
        let behind = Timestamp(now.0 - 90_000_000);
        let ahead = Timestamp(now.0 + 90_000_000);
        evs.extend(feed(
            &mut e,
            &obs_from("1", "a", behind, &[(Vital::HeartRate, 74.0)]),
            now,
        ));
        evs.extend(feed(
            &mut e,
            &obs_from("2", "b", ahead, &[(Vital::HeartRate, 74.0)]),
            now,
        ));
        evs.extend(tick(&mut e, now));
    }
    assert!(evs.is_empty(), "{:?}", kinds(&evs));
    // Both stop: each alarms once, 60 s after its last arrival (6 s), not earlier.
    assert!(tick(&mut e, at(66)).is_empty());
    let stale = tick(&mut e, at(67));
    let keys: BTreeSet<String> = stale.iter().map(|e| e.rule_key.to_string()).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["device_stale:a".to_owned(), "device_stale:b".to_owned()])
    );
}

/// A complete NEWS2 set, alert and on air: 0 points at normal values.
fn set(hr: f64, rr: f64, spo2: f64, sbp: f64, temp: f64) -> Vec<(Vital, f64)> {
    full_set(hr, rr, spo2, sbp, temp, Consciousness::A)
}

fn news2_only(rules: impl FnOnce(&mut RulesConfig)) -> Engine {
    engine(Profile::Standard, |r| {
        r.thresholds.enabled = false;
        r.limits.clear();
        r.stale_device.enabled = false;
        rules(r);
    })
}

#[test]
fn news2_hovering_at_its_trigger_gives_one_alert_not_thirty() {
    let mut e = news2_only(|_| {});
    // By the RCP chart: HR 115 → 2, RR 22 → 2: total 4 (no alarm); SpO2 95 → +1: 5.
    let four = set(115.0, 22.0, 97.0, 120.0, 37.0);
    let five = set(115.0, 22.0, 95.0, 120.0, 37.0);
    let three = set(100.0, 22.0, 97.0, 120.0, 37.0); // HR 100 → 1, RR 22 → 2
    let mut evs = Vec::new();
    let mut s = 0;
    let mut send = |e: &mut Engine, v: &[(Vital, f64)], n: i64, evs: &mut Vec<AlertEvent>| {
        for _ in 0..n {
            evs.extend(feed(e, &obs("2", at(s), v), at(s)));
            s += 1;
        }
    };
    // Eleven minutes alternating 4/5, then 40 s at 5: one urgent alert in all that time
    // (once the score has held at the alarm level for `news2.persistence`), never closed
    // and reopened by the crossings.
    for _ in 0..330 {
        send(&mut e, &four, 1, &mut evs);
        send(&mut e, &five, 1, &mut evs);
    }
    send(&mut e, &five, 40, &mut evs);
    assert_eq!(kinds(&evs), [(AlertEventKind::Triggered, "news2".into())]);
    assert_eq!(evs[0].priority, Priority::Medium);
    assert_eq!(evs[0].news2_score, Some(5));
    assert!(
        evs[0].input_message_time <= at(700),
        "{}",
        evs[0].input_message_time
    );
    // Six minutes at 3: resolves once, five minutes after the score fell.
    send(&mut e, &three, 360, &mut evs);
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[1].event, AlertEventKind::Resolved);
    assert_eq!(evs[1].alert_id, evs[0].alert_id);
    assert_eq!(evs[1].input_message_time, at(700 + 300));
}

#[test]
fn oxygen_status_outlives_the_observation_age_and_unknown_is_never_silent() {
    let mut e = news2_only(|r| r.news2.persistence = Duration::ZERO);
    // On oxygen (2) + HR 115 (2) + SpO2 95 (1) = 5; the same on air would be 3.
    let mut on = set(115.0, 18.0, 95.0, 120.0, 37.0);
    on.retain(|(v, _)| *v != Vital::OnOxygen);
    on.push((Vital::OnOxygen, 1.0));
    assert!(feed(&mut e, &obs("2", at(0), &[(Vital::OnOxygen, 1.0)]), at(0)).is_empty());
    // 90 minutes later the monitor streams a full set without oxygen status: the
    // 90-minute-old "on oxygen" still holds (it is a therapy, not a measurement).
    let mut streamed = on.clone();
    streamed.retain(|(v, _)| *v != Vital::OnOxygen);
    let evs = feed(&mut e, &obs("2", at(5400), &streamed), at(5400));
    assert_eq!(evs.len(), 1, "scored with oxygen: 5");
    assert_eq!(evs[0].news2_score, Some(5));
    assert!(
        !evs[0].alert_message.contains("unknown"),
        "{}",
        evs[0].alert_message
    );

    // Never reported: scored as air, and the alert says so.
    let mut e = news2_only(|r| r.news2.persistence = Duration::ZERO);
    let evs = feed(
        &mut e,
        &obs("3", at(0), &set(115.0, 22.0, 95.0, 120.0, 37.0)[..6]),
        at(0),
    );
    assert_eq!(evs.len(), 1);
    assert!(
        evs[0]
            .alert_message
            .contains("oxygen status unknown, scored as air"),
        "{}",
        evs[0].alert_message
    );
    // unknown_oxygen = incomplete: no score until someone reports it.
    let mut e = news2_only(|r| {
        r.news2.persistence = Duration::ZERO;
        r.news2.unknown_oxygen = UnknownOxygen::Incomplete;
    });
    assert!(
        feed(
            &mut e,
            &obs("3", at(0), &set(115.0, 22.0, 95.0, 120.0, 37.0)[..6]),
            at(0)
        )
        .is_empty()
    );
}

#[test]
fn an_active_news2_alert_whose_inputs_go_stale_is_marked_not_frozen() {
    let mut e = news2_only(|r| {
        r.news2.persistence = Duration::ZERO;
        r.news2.clear_after = Duration::ZERO;
    });
    let five = set(115.0, 22.0, 95.0, 120.0, 37.0);
    let evs = feed(&mut e, &obs("2", at(0), &five), at(0));
    assert_eq!(evs[0].event, AlertEventKind::Triggered);
    // Monitors keep streaming, nobody charts temperature again.
    let streamed: Vec<(Vital, f64)> = five
        .iter()
        .copied()
        .filter(|(v, _)| *v != Vital::TempC)
        .collect();
    let mut marks = Vec::new();
    for s in (60..=4200).step_by(60) {
        marks.extend(feed(&mut e, &obs("2", at(s), &streamed), at(s)));
    }
    assert_eq!(
        kinds(&marks),
        [(AlertEventKind::InputsStale, "news2".into())]
    );
    assert!(
        marks[0].alert_message.contains("temp_c"),
        "{}",
        marks[0].alert_message
    );
    assert!(AlertEventKind::InputsStale.notifies());
    assert_eq!(
        e.active_alerts().len(),
        1,
        "still open: no alarm silenced for want of data"
    );
    // A nurse charts a full, normal set: it resolves.
    let evs = feed(
        &mut e,
        &obs("2", at(4300), &set(70.0, 16.0, 97.0, 120.0, 37.0)),
        at(4300),
    );
    assert_eq!(evs[0].event, AlertEventKind::Resolved);
}

#[test]
fn escalation_un_acknowledges_and_notifies_again() {
    let mut e = news2_only(|r| r.news2.persistence = Duration::ZERO);
    let evs = feed(
        &mut e,
        &obs("2", at(0), &set(115.0, 22.0, 95.0, 120.0, 37.0)),
        at(0),
    );
    let id = evs[0].alert_id.to_string();
    e.acknowledge(&id, "nurse", at(10)).unwrap();
    // + SBP 95 (2): 7, an emergency.
    let evs = feed(
        &mut e,
        &obs("2", at(20), &set(115.0, 22.0, 95.0, 95.0, 37.0)),
        at(20),
    );
    assert_eq!(evs.len(), 1);
    assert_eq!(
        (evs[0].event, evs[0].priority, evs[0].state),
        (
            AlertEventKind::Escalated,
            Priority::High,
            AlertState::Triggered
        )
    );
    assert!(evs[0].event.notifies());
    assert_eq!(evs[0].news2_score, Some(7));
    // Unacknowledged again: re-notified until someone acknowledges the high alarm.
    let re = tick(&mut e, at(140));
    assert_eq!(kinds(&re), [(AlertEventKind::Renotified, "news2".into())]);
    assert!(e.acknowledge(&id, "doctor", at(150)).is_ok());
}

#[test]
fn spo2_limits_respect_the_patients_spo2_scale() {
    let mut e = engine(Profile::Standard, |r| {
        r.thresholds.enabled = false;
        r.news2.enabled = false;
    });
    let mut fired = |p: &str, v: f64| -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for s in 0..=20 {
            for ev in feed(&mut e, &obs(p, at(s), &[(Vital::Spo2, v)]), at(s)) {
                keys.insert(ev.rule_key.to_string());
            }
        }
        keys
    };
    assert!(
        fired("copd", 88.0).is_empty(),
        "88 % is on target for scale 2"
    );
    assert_eq!(
        fired("1", 88.0),
        BTreeSet::from(["limit:spo2_low".to_owned()])
    );
    assert_eq!(
        fired("copd", 85.0),
        BTreeSet::from(["limit:spo2_low_scale2".to_owned()])
    );
}

#[test]
fn classic_same_second_readings_each_alert_and_exact_duplicates_collapse() {
    let mut e = engine(Profile::Classic, |_| {});
    // Patient 2 (45): heart rate ≥ 74 is high. Three readings in one second.
    // Systolic 160 is normal (151–180) at that age.
    let a = feed(
        &mut e,
        &obs(
            "2",
            at(0),
            &[(Vital::HeartRate, 80.0), (Vital::Systolic, 160.0)],
        ),
        at(0),
    );
    let b = feed(
        &mut e,
        &obs("2", at(0), &[(Vital::HeartRate, 120.0)]),
        at(0),
    );
    let dup = feed(
        &mut e,
        &obs(
            "2",
            at(0),
            &[(Vital::HeartRate, 80.0), (Vital::Systolic, 160.0)],
        ),
        at(1),
    );
    assert_eq!((a.len(), b.len(), dup.len()), (1, 1, 1));
    assert_ne!(a[0].alert_id, b[0].alert_id, "a worse value is a new alert");
    assert_eq!(
        a[0].alert_id, dup[0].alert_id,
        "the same record twice is one alert"
    );
    // heartBeat and bp are the reading's own, not the patient's latest.
    assert_eq!((a[0].heart_beat, a[0].bp), (Some(80.0), Some(160.0)));
    assert_eq!((b[0].heart_beat, b[0].bp), (Some(120.0), None));
}

#[test]
fn classic_decimals_between_bands_match_no_band_standard_rounds() {
    // Patient 1 (23): bands 70–78 normal, 79–9999 high. 78.5 is in neither.
    let mut c = engine(Profile::Classic, |_| {});
    let mut f = Findings::default();
    c.process(&obs("1", at(0), &[(Vital::HeartRate, 78.5)]), at(0), &mut f);
    assert!(f.events.is_empty());
    assert_eq!(f.unclassified.len(), 1);
    assert_eq!(f.unclassified[0].reason, UnclassifiedReason::NoBand);
    // The standard profile rounds to the table's resolution: 78.5 → 79, high.
    let mut s = engine(Profile::Standard, |r| {
        r.thresholds.persistence = Duration::ZERO;
        r.news2.enabled = false;
    });
    let evs = feed(&mut s, &obs("1", at(0), &[(Vital::HeartRate, 78.5)]), at(0));
    assert_eq!(evs[0].ref_id, Some(3));
    assert_eq!(evs[0].value, Some(78.5));
}

#[test]
fn idle_patients_and_devices_are_evicted_and_their_open_alerts_come_back() {
    let mut e = engine(Profile::Standard, |r| {
        r.news2.enabled = false;
        r.thresholds.persistence = Duration::ZERO;
    });
    let trig = feed(&mut e, &obs("1", at(0), &[(Vital::HeartRate, 95.0)]), at(0));
    let id = trig[0].alert_id.to_string();
    let stale = tick(&mut e, at(61));
    assert_eq!(stale.len(), 1);
    assert_eq!(e.tracked(), (1, 1));
    // Two hours of silence: evicted; the re-notifications stop with it.
    tick(&mut e, at(2 * 3600));
    assert_eq!(e.tracked(), (0, 0));
    assert!(
        tick(&mut e, at(2 * 3600 + 600)).is_empty(),
        "evicted: no more re-notification"
    );
    assert_eq!(e.active_alerts().len(), 2, "open alerts are kept");
    assert!(e.acknowledge(&id, "nurse", at(7300)).is_ok());
    // The patient is back, still tachycardic: the same episode, then it resolves.
    let back = feed(
        &mut e,
        &obs("1", at(7400), &[(Vital::HeartRate, 96.0)]),
        at(7400),
    );
    assert_eq!(
        kinds(&back),
        [(AlertEventKind::Resolved, "device_stale:dev-1".to_owned())]
    );
    let end = feed(
        &mut e,
        &obs("1", at(7401), &[(Vital::HeartRate, 74.0)]),
        at(7401),
    );
    assert_eq!(end[0].alert_id, id);
    assert_eq!(end[0].event, AlertEventKind::Resolved);
}

#[test]
fn a_cap_on_tracked_devices_turns_excess_into_rejections() {
    let mut e = engine(Profile::Standard, |r| r.state.max_devices = 2);
    let mut f = Findings::default();
    for d in ["a", "b"] {
        let o = obs_from("1", d, at(0), &[(Vital::HeartRate, 74.0)]);
        assert_eq!(e.process(&o, at(0), &mut f), Processed::Evaluated);
    }
    let o = obs_from("1", "c", at(0), &[(Vital::HeartRate, 74.0)]);
    match e.process(&o, at(0), &mut f) {
        Processed::Rejected(why) => assert!(why.contains("rules.state.max_devices"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.tracked().1, 2);
}

/// Heart-rate runs for patient 1 (23): normal 73–75 (clear of the 3 bpm margins of the
/// 70–78 band), high 85–110. Each run lasts 20–60 s, one reading a second.
fn runs() -> impl Strategy<Value = Vec<(i64, f64)>> {
    proptest::collection::vec((any::<bool>(), 20i64..60, any::<u64>()), 2..8).prop_map(|runs| {
        let mut out = Vec::new();
        let mut s = 0;
        for (high, len, seed) in runs {
            for k in 0..len {
                let noise = ((seed >> (k % 32)) & 0xff) as f64 / 255.0;
                let v = if high {
                    85.0 + (noise * 25.0).round()
                } else {
                    73.0 + (noise * 2.0).round()
                };
                out.push((s, v));
                s += 1;
            }
        }
        out
    })
}

fn alert_story(readings: &[(i64, f64)]) -> Vec<(String, &'static str)> {
    let mut e = engine(Profile::Standard, |r| {
        r.news2.enabled = false;
        r.stale_device.enabled = false;
    });
    let mut now = at(-1);
    let mut story = Vec::new();
    for &(s, v) in readings {
        now = now.max(at(s));
        for ev in feed(&mut e, &obs("1", at(s), &[(Vital::HeartRate, v)]), now) {
            story.push((ev.alert_id.to_string(), ev.event.as_str()));
        }
    }
    story.sort();
    story
}

proptest! {
    /// Readings shuffled within the lateness window, some delivered twice, raise and
    /// resolve the same alerts, with the same ids, as the same readings once and in order.
    #[test]
    fn shuffling_and_redelivery_within_the_window_change_no_alert(readings in runs(), jitter in proptest::collection::vec(0i64..5_000, 500)) {
        let in_order = alert_story(&readings);
        // Arrival order: each reading delayed by up to 5 s; every fourth one re-delivered
        // up to 2.5 s after that.
        let mut arrivals: Vec<(i64, (i64, f64))> = Vec::new();
        for (i, &r) in readings.iter().enumerate() {
            let j = jitter[i % jitter.len()];
            arrivals.push((r.0 * 1000 + j, r));
            if j % 4 == 0 {
                arrivals.push((r.0 * 1000 + j + 2500, r));
            }
        }
        arrivals.sort_by_key(|a| a.0);
        let shuffled: Vec<(i64, f64)> = arrivals.into_iter().map(|a| a.1).collect();
        prop_assert_eq!(alert_story(&shuffled), in_order);
    }
}

#[test]
fn a_restarted_engine_takes_back_its_open_alerts() {
    let rules = |r: &mut RulesConfig| {
        r.news2.enabled = false;
        r.thresholds.persistence = Duration::ZERO;
        for l in &mut r.limits {
            l.persistence = Duration::ZERO;
        }
    };
    let mut before = engine(Profile::Standard, rules);
    let hr = |s: i64, v: f64| obs("1", at(s), &[(Vital::HeartRate, v)]);
    let sp = |s: i64, v: f64| obs("2", at(s), &[(Vital::Spo2, v)]);
    let mut log = feed(&mut before, &hr(0, 95.0), at(0));
    log.extend(feed(&mut before, &sp(0, 78.0), at(0)));
    log.extend(tick(&mut before, at(61)));
    // The band alarm, the SpO2 alarm, two silent devices.
    assert_eq!(log.len(), 4, "{:?}", kinds(&log));
    let hr_alert = log[0].alert_id.to_string();
    let spo2_alert = log[1].alert_id.to_string();
    // The process dies; a new one reads the latest event of each open alert back.
    let mut after = engine(Profile::Standard, rules);
    assert_eq!(after.restore(log.clone()), 4);
    assert_eq!(after.active_alerts().len(), 4);
    assert!(
        after.acknowledge(&hr_alert, "nurse", at(100)).is_ok(),
        "acknowledgeable"
    );
    // Still tachycardic: no second alert. Back in range: the same alert resolves.
    assert!(
        !feed(&mut after, &hr(101, 96.0), at(101))
            .iter()
            .any(|e| e.event == AlertEventKind::Triggered)
    );
    let end = feed(&mut after, &sp(102, 97.0), at(102));
    let resolved: Vec<&str> = end
        .iter()
        .filter(|e| e.event == AlertEventKind::Resolved)
        .map(|e| e.alert_id.as_str())
        .collect();
    assert!(resolved.contains(&spo2_alert.as_str()), "{:?}", kinds(&end));
    // The classic profile keeps no alert open, so it restores none.
    assert_eq!(engine(Profile::Classic, |_| {}).restore(log), 0);
}

/// The warehouse's `scores` table gets one NEWS2 result per in-order complete set, with
/// its points: a late or duplicated reading adds none (it would be a second score for an
/// instant already scored, or one out of order), and an incomplete set none.
#[test]
fn scores_come_from_in_order_complete_sets_only() {
    let mut e = news2_only(|_| {});
    let five = set(115.0, 22.0, 95.0, 120.0, 37.0); // 2 + 2 + 1 = 5, "medium"
    let mut f = Findings::default();
    e.process(&obs("2", at(10), &five), at(10), &mut f);
    assert_eq!(f.scores.len(), 1);
    let s = &f.scores[0];
    assert_eq!((s.patient_id.as_str(), s.observed_at), ("2", at(10)));
    assert_eq!(s.score.total, 5);
    assert_eq!(s.score.response.as_str(), "medium");
    assert_eq!(s.score.parts, [2, 1, 0, 0, 2, 0, 0]);
    assert_eq!(s.scale, Spo2Scale::Scale1);
    // A late reading (older than the newest) and the same reading again: no score.
    f.clear();
    e.process(&obs("2", at(5), &five), at(11), &mut f);
    e.process(&obs("2", at(10), &five), at(11), &mut f);
    assert!(f.scores.is_empty(), "{:?}", f.scores);
    // A set without a respiration rate, long after the last: incomplete, no score.
    let partial: Vec<(Vital, f64)> = five
        .iter()
        .copied()
        .filter(|(v, _)| *v != Vital::RespRate)
        .collect();
    e.process(&obs("2", at(10_000), &partial), at(10_000), &mut f);
    assert!(f.scores.is_empty(), "{:?}", f.scores);
}
