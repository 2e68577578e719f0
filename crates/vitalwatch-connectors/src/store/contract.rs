//! The store contracts: one suite per seam every backend must pass ([`alert_store`],
//! [`reference_store`]; SQLite and PostgreSQL run the same). Each check states a guarantee the
//! pipeline relies on; a backend that fails one would lose, silence or duplicate alarms.

use vitalwatch_core::alert::{AlertEvent, AlertEventKind, AlertState, Priority, alert_id};
use vitalwatch_core::model::{PatientId, Timestamp};

use vitalwatch_core::reference::{
    CLASSIC_PATIENTS_CSV, CLASSIC_THRESHOLDS_CSV, parse_patients_csv, parse_threshold_csv,
};

use super::{
    AlertStore, AuditEntry, DeliveryAttempt, DeliveryOutcome, ReferenceStore, SourcePosition,
};

/// An alert event of patient `patient`, rule `rule`, episode starting at second `start`.
fn event(patient: &str, rule: &str, start: i64, kind: AlertEventKind, at: i64) -> AlertEvent {
    let patient_id = PatientId(patient.into());
    let episode_start = Timestamp(start * 1_000_000);
    AlertEvent {
        alert_id: alert_id(&patient_id, rule, episode_start),
        event: kind,
        state: match kind {
            AlertEventKind::Acknowledged => AlertState::Acknowledged,
            AlertEventKind::Resolved => AlertState::Resolved,
            _ => AlertState::Triggered,
        },
        rule: rule.to_owned().into(),
        rule_key: rule.into(),
        priority: Priority::High,
        patient_id,
        patient: Default::default(),
        vital: None,
        value: Some(7.0),
        bp: None,
        heart_beat: None,
        news2_score: Some(7),
        ref_id: None,
        ref_version: None,
        alert_message: format!("{rule} {kind:?}").into(),
        input_message_time: Timestamp(at * 1_000_000),
        alert_generated_time: Timestamp(at * 1_000_000 + 1),
        episode_start,
        device_id: None,
        acknowledged_by: (kind == AlertEventKind::Acknowledged).then(|| "nurse".into()),
    }
}

/// An alert event for tests of a backend.
pub fn sample_event() -> AlertEvent {
    event("7", "news2", 100, AlertEventKind::Triggered, 100)
}

fn record<S: AlertStore>(store: &mut S, events: &[AlertEvent]) -> Vec<Option<u64>> {
    let json: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("serializes"))
        .collect();
    let pairs: Vec<(&AlertEvent, &str)> =
        events.iter().zip(json.iter().map(String::as_str)).collect();
    store.record_alert_events(&pairs).expect("record")
}

fn attempt(
    consumer: &str,
    first: u64,
    last: u64,
    n: u32,
    outcome: DeliveryOutcome,
) -> DeliveryAttempt {
    DeliveryAttempt {
        consumer: consumer.into(),
        first_seq: first,
        last_seq: last,
        attempt: n,
        at: Timestamp(1_000 + i64::from(n)),
        outcome,
        error: (outcome != DeliveryOutcome::Delivered).then(|| "smtp 451".into()),
    }
}

/// Runs the whole contract. `open` opens the same, initially empty, store each time it is
/// called (a reopen must see everything committed before).
///
/// # Panics
/// On the first broken guarantee, with what broke.
pub fn alert_store<S: AlertStore>(open: impl Fn() -> S) {
    let mut s = open();
    assert_eq!(s.cursor("jsonl").unwrap(), 0, "a new notifier starts at 0");
    assert!(s.outbox_after(0, 10).unwrap().is_empty());
    assert!(s.alerts(false, 10).unwrap().is_empty());
    assert_eq!(s.source_position("file:/a").unwrap(), None);

    // Every new event gets an outbox row, in commit order.
    let a_trig = event("1", "news2", 100, AlertEventKind::Triggered, 100);
    let a_ack = event("1", "news2", 100, AlertEventKind::Acknowledged, 130);
    let b_trig = event("2", "hr_high", 110, AlertEventKind::Triggered, 110);
    let seqs = record(&mut s, &[a_trig.clone(), a_ack.clone(), b_trig.clone()]);
    assert!(
        seqs.iter().all(Option::is_some),
        "new events are fresh: {seqs:?}"
    );
    let seqs: Vec<u64> = seqs.into_iter().flatten().collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing: {seqs:?}");

    // Re-processed input records nothing and queues no second notification, also when
    // mixed with a new event in one batch.
    let a_later = event("1", "news2", 300, AlertEventKind::Triggered, 300);
    let again = record(&mut s, &[a_trig.clone(), a_later.clone()]);
    assert_eq!(again[0], None, "a recorded event is not new again");
    let later_seq = again[1].expect("a new event in the same batch is recorded");
    assert!(later_seq > seqs[2]);
    // The same event twice in one batch (a re-sent reading): recorded once.
    let twice = record(&mut s, &[a_later.clone(), a_later.clone()]);
    assert_eq!(twice, vec![None, None], "already recorded, both times");

    // The outbox hands out each entry once, in order, with its key and body.
    let all = s.outbox_after(0, 100).unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [seqs.clone(), vec![later_seq]].concat()
    );
    assert_eq!(all[1].key, a_ack.idempotency_key());
    let body: AlertEvent = serde_json::from_str(&all[1].body).unwrap();
    assert_eq!(body, a_ack);
    assert_eq!(s.outbox_after(seqs[0], 2).unwrap().len(), 2, "limit");
    assert_eq!(s.outbox_after(later_seq, 10).unwrap().len(), 0);
    assert_eq!(s.outbox_seq(&b_trig, 0).unwrap(), Some(seqs[2]));
    assert_eq!(
        s.outbox_seq(&b_trig, seqs[2]).unwrap(),
        None,
        "only entries after the given sequence number"
    );

    // Alerts: the latest event per alert, open ones, and the newest per patient and rule
    // for a restart.
    let a = s.alert(a_trig.alert_id.as_str()).unwrap().expect("stored");
    assert_eq!(a.event, AlertEventKind::Acknowledged);
    assert_eq!(a.acknowledged_by.as_deref(), Some("nurse"));
    assert_eq!(s.alert("no-such-alert").unwrap(), None);
    assert_eq!(s.alerts(true, 10).unwrap().len(), 3);
    let counts: Vec<(String, u32)> = s
        .alerts(false, 10)
        .unwrap()
        .into_iter()
        .map(|a| (a.latest.alert_id.to_string(), a.events))
        .collect();
    assert!(
        counts.contains(&(a_trig.alert_id.to_string(), 2)),
        "{counts:?}"
    );
    let resolved = event("2", "hr_high", 110, AlertEventKind::Resolved, 150);
    record(&mut s, &[resolved]);
    let mut restore: Vec<String> = s
        .open_alerts_to_restore()
        .unwrap()
        .into_iter()
        .map(|e| e.alert_id.to_string())
        .collect();
    restore.sort();
    assert_eq!(
        restore,
        vec![a_later.alert_id.to_string()],
        "the newest open alert per patient and rule; resolved ones stay closed"
    );

    // Cursors move on delivery or giving up, never on a retry, never backwards.
    s.record_delivery(&attempt(
        "jsonl",
        seqs[0],
        seqs[1],
        1,
        DeliveryOutcome::Retrying,
    ))
    .unwrap();
    assert_eq!(s.cursor("jsonl").unwrap(), 0);
    s.record_delivery(&attempt(
        "jsonl",
        seqs[0],
        seqs[1],
        2,
        DeliveryOutcome::Delivered,
    ))
    .unwrap();
    assert_eq!(s.cursor("jsonl").unwrap(), seqs[1]);
    s.record_delivery(&attempt(
        "jsonl",
        seqs[0],
        seqs[0],
        1,
        DeliveryOutcome::Delivered,
    ))
    .unwrap();
    assert_eq!(s.cursor("jsonl").unwrap(), seqs[1], "never backwards");
    s.record_delivery(&attempt(
        "sns",
        seqs[0],
        later_seq,
        5,
        DeliveryOutcome::GaveUp,
    ))
    .unwrap();
    assert_eq!(s.cursor("sns").unwrap(), later_seq);
    assert_eq!(
        s.cursor("jsonl").unwrap(),
        seqs[1],
        "cursors are per notifier"
    );
    let tries = s.deliveries("jsonl", 10).unwrap();
    assert_eq!(
        tries
            .iter()
            .map(|t| (t.attempt, t.outcome))
            .collect::<Vec<_>>(),
        vec![
            (1, DeliveryOutcome::Delivered),
            (2, DeliveryOutcome::Delivered),
            (1, DeliveryOutcome::Retrying)
        ],
        "every attempt, newest first"
    );
    assert_eq!(tries[2].error.as_deref(), Some("smtp 451"));

    // Source positions: commit, replace, forget.
    let mut pos = SourcePosition {
        source: "file:/a".into(),
        checkpoint: 1,
        offset: 4096,
        fingerprint: "abc".into(),
        at: Timestamp(5),
    };
    s.commit_source_position(&pos).unwrap();
    pos.checkpoint = 2;
    pos.offset = 8192;
    s.commit_source_position(&pos).unwrap();
    assert_eq!(s.source_position("file:/a").unwrap(), Some(pos.clone()));
    s.commit_source_position(&SourcePosition {
        source: "file:/b".into(),
        ..pos.clone()
    })
    .unwrap();
    s.forget_source_position("file:/b").unwrap();
    assert_eq!(s.source_position("file:/b").unwrap(), None);
    // Several positions as one decision (a Kafka checkpoint: the stream's checkpoint
    // number and each partition's offset), all readable afterwards.
    let parts: Vec<SourcePosition> = ["kafka:g:t", "kafka:g:t:0", "kafka:g:t:1"]
        .iter()
        .enumerate()
        .map(|(i, name)| SourcePosition {
            source: (*name).into(),
            checkpoint: 7,
            offset: 100 * i as u64,
            fingerprint: String::new(),
            at: Timestamp(9),
        })
        .collect();
    s.commit_source_positions(&parts).unwrap();
    for p in &parts {
        assert_eq!(s.source_position(&p.source).unwrap().as_ref(), Some(p));
    }

    // Everything committed survives a reopen (a restart after a crash).
    drop(s);
    let s = open();
    assert_eq!(s.cursor("jsonl").unwrap(), seqs[1]);
    assert_eq!(s.outbox_after(0, 100).unwrap().len(), 5);
    assert_eq!(s.source_position("file:/a").unwrap(), Some(pos));
    assert_eq!(
        s.alert(a_trig.alert_id.as_str()).unwrap().map(|e| e.event),
        Some(AlertEventKind::Acknowledged)
    );
    // A new event twice in one batch: recorded once.
    let mut s = s;
    let c_trig = event("3", "spo2_low", 400, AlertEventKind::Triggered, 400);
    let twice = record(&mut s, &[c_trig.clone(), c_trig.clone()]);
    assert!(twice[0].is_some() && twice[1].is_none(), "once: {twice:?}");

    // An alert flood's burst: new alerts' first triggers, in descending id order (ids begin
    // with the episode's second). Numbered in the burst's order and read back in it.
    let head = twice[0].expect("recorded");
    let flood: Vec<AlertEvent> = (0..40)
        .map(|i| {
            let start = 1_000 - i;
            event(
                &format!("flood-{i}"),
                "hr_high",
                start,
                AlertEventKind::Triggered,
                start,
            )
        })
        .collect();
    let seqs = record(&mut s, &flood);
    let numbered: Vec<u64> = seqs.iter().map(|q| q.expect("all new")).collect();
    assert!(
        head < numbered[0] && numbered.windows(2).all(|w| w[0] < w[1]),
        "in the burst's order: {numbered:?}"
    );
    let back = s.outbox_after(head, 100).unwrap();
    assert_eq!(back.iter().map(|e| e.seq).collect::<Vec<_>>(), numbered);
    let bodies: Vec<AlertEvent> = back
        .iter()
        .map(|e| serde_json::from_str(&e.body).unwrap())
        .collect();
    assert_eq!(bodies, flood, "each entry is its event");
    for (e, seq) in flood.iter().zip(&seqs) {
        assert_eq!(s.outbox_seq(e, 0).unwrap(), *seq);
    }
    // The next burst re-sends one of them among new triggers, one new one twice: only the
    // new ones are recorded, once each, numbered after the flood without a gap in order.
    let (x, y) = (
        event(
            "flood-x",
            "hr_high",
            2_000,
            AlertEventKind::Triggered,
            2_000,
        ),
        event(
            "flood-y",
            "hr_high",
            1_500,
            AlertEventKind::Triggered,
            1_500,
        ),
    );
    let mixed = record(&mut s, &[x.clone(), flood[3].clone(), y.clone(), x.clone()]);
    assert!(
        matches!(mixed[..], [Some(a), None, Some(b), None] if numbered[39] < a && a < b),
        "{mixed:?}"
    );
    let tail = s.outbox_after(numbered[39], 10).unwrap();
    let tail: Vec<AlertEvent> = tail
        .iter()
        .map(|e| serde_json::from_str(&e.body).unwrap())
        .collect();
    assert_eq!(tail, vec![x, y]);

    // Silences: in force between their times, stored with their audit row; a new
    // high-priority alarm is never held back.
    let silence = crate::store::Silence {
        id: 0,
        patient_id: "1".into(),
        starts_at: Timestamp(1_000),
        ends_at: Timestamp(2_000),
        by: "nurse.jones".into(),
        reason: "line change".into(),
    };
    let audit = crate::store::AuditEntry {
        at: Timestamp(1_000),
        actor: "nurse.jones".into(),
        action: "silence".into(),
        subject: "patient 1".into(),
        detail: "10m: line change".into(),
    };
    let id = s.add_silence(&silence, &audit).unwrap();
    assert!(id > 0);
    let stored = s.silences(Some(Timestamp(1_500))).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0],
        crate::store::Silence {
            id,
            ..silence.clone()
        }
    );
    assert!(
        s.silences(Some(Timestamp(2_000))).unwrap().is_empty(),
        "ended"
    );
    assert_eq!(s.silences(None).unwrap().len(), 1, "kept for the record");
    s.record_audit(&crate::store::AuditEntry {
        action: "acknowledge".into(),
        ..audit.clone()
    })
    .unwrap();
    let mut low = event("1", "hr_high", 1, AlertEventKind::Renotified, 1);
    low.priority = vitalwatch_core::alert::Priority::Medium;
    assert!(silence.holds_back(&low, Timestamp(1_500)));
    assert!(!silence.holds_back(&low, Timestamp(2_500)));
    let mut high = event("1", "news2", 1, AlertEventKind::Triggered, 1);
    high.priority = vitalwatch_core::alert::Priority::High;
    assert!(
        !silence.holds_back(&high, Timestamp(1_500)),
        "a new high alarm gets through"
    );
}

/// Runs the reference-store contract against the store `open` opens (the same data each
/// time: a fresh store first, then reopened as after a restart).
pub fn reference_store<S: ReferenceStore>(open: impl Fn() -> S) {
    let mut c = open();
    let patients = parse_patients_csv(CLASSIC_PATIENTS_CSV.as_bytes()).unwrap();
    let first = c.import_patients(&patients, "a.csv", Timestamp(1)).unwrap();
    assert_eq!((first.added, first.unchanged), (patients.len(), 0));
    // Again, with one phone number changed: one update naming the field, the rest
    // unchanged, and an audit row per change.
    let mut moved = patients.clone();
    moved[2].phone = "0000".into();
    let again = c.import_patients(&moved, "b.csv", Timestamp(2)).unwrap();
    assert_eq!(again.added, 0);
    assert_eq!(again.unchanged, patients.len() - 1);
    assert_eq!(
        again.updated,
        vec![(patients[2].patient_id.clone(), vec!["phone_number"])]
    );
    let audit = c.audit_log(10).unwrap();
    assert_eq!(audit.len(), patients.len() + 1);
    assert_eq!(
        (
            audit[0].actor.as_str(),
            audit[0].action.as_str(),
            audit[0].detail.as_str()
        ),
        ("b.csv", "patient updated", "phone_number")
    );
    // Read forward from a cursor: the same rows, oldest first, with growing ids, and
    // nothing past the last one.
    let all = c.audit_after(0, 100).unwrap();
    let mut newest_first: Vec<AuditEntry> = all.iter().map(|(_, a)| a.clone()).collect();
    newest_first.reverse();
    assert_eq!(newest_first, audit);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ids grow");
    let (mid, last) = (all[2].0, all[all.len() - 1].0);
    assert_eq!(c.audit_after(mid, 2).unwrap(), all[3..5].to_vec());
    assert!(c.audit_after(last, 10).unwrap().is_empty());
    c.import_patients(&patients, "c.csv", Timestamp(3)).unwrap();
    let bands = parse_threshold_csv(CLASSIC_THRESHOLDS_CSV.as_bytes()).unwrap();
    assert_eq!(
        c.import_thresholds(&bands, "a.csv", Timestamp(1)).unwrap(),
        1
    );
    assert_eq!(
        c.import_thresholds(&bands, "again.csv", Timestamp(1))
            .unwrap(),
        1,
        "an identical table is not a new version"
    );
    let mut changed = bands.clone();
    changed[0].alert_message = "Bradycardia".into();
    assert_eq!(
        c.import_thresholds(&changed, "b.csv", Timestamp(2))
            .unwrap(),
        2
    );
    drop(c);

    let c = open();
    assert_eq!(c.patients().unwrap(), patients);
    let t = c.thresholds().unwrap();
    assert_eq!(t.version, 2);
    assert_eq!(t.bands, changed);
    assert_eq!(c.thresholds_version(1).unwrap().bands, bands);
    let versions = c.threshold_versions().unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version, v.bands))
            .collect::<Vec<_>>(),
        vec![(1, 12), (2, 12)]
    );
}
