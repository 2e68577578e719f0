//! Webhook delivery against HTTP servers on loopback: each test runs its own receivers (a
//! plain HTTP/1.1 server that records every request and answers with the statuses it is
//! given, as a hospital system or a chat service would), so the requests vitalwatch
//! really sends are checked byte for byte.
//!
//! What it shows: an alert raised by `run` is posted once per webhook; a 500 (twice) is retried
//! with the same Idempotency-Key until accepted; a 400 is not retried, is recorded as
//! given up and goes to the fallback notifier at once; the Slack preset carries a
//! one-line message, the JSON preset the alert event, without personal data under
//! `privacy = "minimal"`; configured headers are sent; `/metrics` counts it all per
//! notifier.

mod common;

use std::time::{Duration, Instant};

use common::{os, receiver, spawn_run, vitalwatch, wait_for};

/// How long a test waits for what a running pipeline does next.
const PATIENCE: Duration = Duration::from_secs(20);

/// The classic table with its high heart-rate bands made high priority (the others
/// medium), written under `dir`.
fn high_heart_rate_table(dir: &std::path::Path) -> std::path::PathBuf {
    let table: String = std::fs::read_to_string("../../data/threshold_ref.csv")
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| match i {
            0 => format!("{l},priority\n"),
            _ if l.contains("Higher Heart Rate") => format!("{l},high\n"),
            _ => format!("{l},medium\n"),
        })
        .collect();
    let file = dir.join("table.csv");
    std::fs::write(&file, table).unwrap();
    file
}

/// `GET path` on the run at `port`: the body.
fn get(port: u16, path: &str) -> String {
    let (status, body) = common::http(port, "GET", path, "");
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn webhooks_retry_transient_answers_give_up_on_permanent_ones_and_keep_personal_data_in() {
    let (slack_port, slack) = receiver(vec![500, 500, 200]);
    let (audit_port, audit) = receiver(vec![400]);
    let (backup_port, backup) = receiver(vec![200]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hooks.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[rules]
profile = "classic"

[alerts]
console = false
fallback = "backup"

[[notifiers]]
type = "webhook"
name = "slack"
url = "http://127.0.0.1:{slack_port}/services/T0/B0/token"
preset = "slack"
headers = {{ Authorization = "Bearer s3cret" }}

[[notifiers]]
type = "webhook"
name = "audit"
url = "http://127.0.0.1:{audit_port}/alerts"
privacy = "minimal"

[[notifiers]]
type = "webhook"
name = "backup"
url = "http://127.0.0.1:{backup_port}/pager"
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (c, d) = (os(&config), os(&data));
    common::import_classic(&config, &data, false);

    let port = common::free_port();
    let mut run = spawn_run(&data, Some(&config), port);
    common::post_reading(port, "5", r#"{"heart_rate": 130}"#);
    wait_for("the retried Slack post", PATIENCE, || {
        slack.lock().unwrap().len() >= 3
    });
    wait_for("the audit post", PATIENCE, || {
        !audit.lock().unwrap().is_empty()
    });
    wait_for("the fallback post", PATIENCE, || {
        !backup.lock().unwrap().is_empty()
    });
    // Long enough for a wrong retry of the 400 (the first backoff is 200 ms).
    std::thread::sleep(Duration::from_secs(2));
    let metrics = get(port, "/metrics");
    run.kill().unwrap();
    run.wait().unwrap();

    let slack = slack.lock().unwrap().clone();
    assert_eq!(
        slack.len(),
        3,
        "500 twice, retried, then accepted: {slack:?}"
    );
    assert_eq!(
        slack[0].header("idempotency-key"),
        slack[2].header("idempotency-key")
    );
    assert!(slack[0].header("idempotency-key").contains(":triggered:"));
    assert_eq!(slack[2].header("authorization"), "Bearer s3cret");
    let v: serde_json::Value = serde_json::from_str(&slack[2].body).unwrap();
    let line = v["text"].as_str().unwrap();
    assert!(
        line.starts_with(
            "MEDIUM triggered: Higher Heart Rate than Normal — Pam (patient 5), ward 5, heart_rate 130"
        ),
        "{line}"
    );

    let audit = audit.lock().unwrap().clone();
    assert_eq!(audit.len(), 1, "a 400 is not retried");
    let event: serde_json::Value = serde_json::from_str(&audit[0].body).unwrap();
    assert_eq!(event["patient_id"], "5");
    assert_eq!(event["alert_message"], "Higher Heart Rate than Normal");
    for personal in ["Pam", "ABC test", "4982739282", "\"age\""] {
        assert!(
            !audit[0].body.contains(personal),
            "{personal} left: {}",
            audit[0].body
        );
    }

    // What audit gave up on went to the fallback at once, and nothing else did.
    let backup = backup.lock().unwrap().clone();
    assert_eq!(
        backup.len(),
        1,
        "only the event audit gave up on: {backup:?}"
    );
    assert_eq!(
        backup[0].header("idempotency-key"),
        slack[0].header("idempotency-key")
    );
    for (line, want) in [
        (
            "vitalwatch_notifier_deliveries_total{notifier=\"slack\"}",
            "1",
        ),
        ("vitalwatch_notifier_retries_total{notifier=\"slack\"}", "2"),
        (
            "vitalwatch_notifier_failures_total{notifier=\"audit\"}",
            "1",
        ),
        (
            "vitalwatch_notifier_deliveries_total{notifier=\"backup\"}",
            "1",
        ),
        (
            "vitalwatch_alert_delivery_latency_seconds_count{notifier=\"slack\"}",
            "1",
        ),
        ("vitalwatch_alerts_undeliverable_total", "0"),
    ] {
        assert!(
            metrics.lines().any(|l| l == format!("{line} {want}")),
            "{line} {want} not in:\n{metrics}"
        );
    }

    // Every attempt is on record: the audit hook's refusal with its answer.
    let o = vitalwatch(&[
        "alerts",
        "deliveries",
        "--notifier",
        "audit",
        "--config",
        &c,
        "--data",
        &d,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("gave_up") && out.contains("HTTP 400"), "{out}");
    let o = vitalwatch(&[
        "alerts",
        "deliveries",
        "--notifier",
        "slack",
        "--config",
        &c,
        "--data",
        &d,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("retrying") && out.contains("HTTP 500") && out.contains("delivered"),
        "{out}"
    );
    assert!(
        !out.contains("token"),
        "the URL's token stays out of the records: {out}"
    );
}

/// Routes send each ward its own alerts; an alert left unacknowledged escalates to the
/// next tier at a re-notification (every 10 s here, the shortest allowed), and everyone
/// called hears the acknowledgement.
#[test]
fn routes_send_each_ward_its_alerts_and_escalate_the_unacknowledged() {
    let (nurse_port, nurse) = receiver(vec![200]);
    let (charge_port, charge) = receiver(vec![200]);
    let (ward2_port, ward2) = receiver(vec![200]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[rules]
renotify_after = "10s"

[rules.thresholds]
persistence = "0s"

[alerts]
console = false

[[notifiers]]
type = "webhook"
name = "nurse-5"
url = "http://127.0.0.1:{nurse_port}/"

[[notifiers]]
type = "webhook"
name = "charge-5"
url = "http://127.0.0.1:{charge_port}/"

[[notifiers]]
type = "webhook"
name = "ward-2"
url = "http://127.0.0.1:{ward2_port}/"

[[routes]]
name = "ward-5"
wards = ["5"]
tiers = [
  {{ after = "0s", notify = ["nurse-5"] }},
  {{ after = "5s", notify = ["charge-5"] }},
]

[[routes]]
name = "ward-2"
wards = ["2"]
tiers = [{{ after = "0s", notify = ["ward-2"] }}]
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    common::import_classic(&config, &data, true);
    let port = common::free_port();
    let mut run = spawn_run(&data, Some(&config), port);
    for patient in ["5", "2"] {
        common::post_reading(port, patient, r#"{"heart_rate": 130}"#);
    }
    let events = |r: &std::sync::Mutex<Vec<common::Received>>| -> Vec<serde_json::Value> {
        r.lock()
            .unwrap()
            .iter()
            .map(|x| serde_json::from_str(&x.body).unwrap())
            .collect()
    };
    wait_for("the escalation to tier 2", PATIENCE, || {
        !charge.lock().unwrap().is_empty()
    });
    let alert_id = events(&nurse)[0]["alert_id"].as_str().unwrap().to_owned();
    let (status, text) = common::http(
        port,
        "POST",
        &format!("/v1/alerts/{alert_id}/ack"),
        r#"{"by": "nurse.jones"}"#,
    );
    assert_eq!(status, 200, "{text}");
    let acked = |r: &std::sync::Mutex<Vec<common::Received>>| {
        events(r).iter().any(|e| e["event"] == "acknowledged")
    };
    wait_for("the acknowledgement to both tiers", PATIENCE, || {
        acked(&nurse) && acked(&charge)
    });
    std::thread::sleep(Duration::from_secs(2));
    run.kill().unwrap();
    run.wait().unwrap();

    let (n, ch, w2) = (events(&nurse), events(&charge), events(&ward2));
    assert!(
        n.iter().chain(&ch).all(|e| e["patient_id"] == "5"),
        "ward 5 only"
    );
    assert!(
        !w2.is_empty() && w2.iter().all(|e| e["patient_id"] == "2"),
        "ward 2 only: {w2:?}"
    );
    assert_eq!(n[0]["event"], "triggered");
    assert!(
        n.iter().any(|e| e["event"] == "renotified"),
        "tier 1 is re-notified too while unacknowledged: {n:?}"
    );
    assert_eq!(
        ch[0]["event"], "renotified",
        "tier 2 is called, not told of the start: {ch:?}"
    );
    let kinds: Vec<&str> = ch.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.last(),
        Some(&"acknowledged"),
        "nothing after the acknowledgement: {kinds:?}"
    );
    assert_eq!(n.last().unwrap()["event"], "acknowledged", "{n:?}");
}

/// A silence set from the CLI holds back a patient's alerts from the notifiers, but not
/// a new high-priority alarm; other patients are not affected; the silence and an
/// acknowledgement made through the CLI are in the audit trail with who and from where.
#[test]
fn a_silence_holds_back_a_patients_alerts_but_never_a_new_high_priority_alarm() {
    let (port_hook, hook) = receiver(vec![200]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("silence.toml");
    std::fs::write(
        &config,
        format!(
            "[rules.thresholds]\npersistence = \"0s\"\n[alerts]\nconsole = false\n\
             [warehouse]\nroll_interval = \"1s\"\n\
             [[notifiers]]\ntype = \"webhook\"\nname = \"ward\"\nurl = \"http://127.0.0.1:{port_hook}/\"\n"
        ),
    )
    .unwrap();
    let table_file = high_heart_rate_table(dir.path());
    let data = dir.path().join("data");
    let (c, d) = (os(&config), os(&data));
    let cli = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--config", &c, "--data", &d]);
        let o = vitalwatch(&a);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    cli(&["patients", "import", "../../data/patients_information.csv"]);
    cli(&["thresholds", "import", &os(&table_file)]);
    let said = cli(&[
        "alerts",
        "silence",
        "--patient",
        "5",
        "--for",
        "10m",
        "--by",
        "nurse.jones",
        "--reason",
        "line change",
    ]);
    assert!(said.contains("silenced patient 5 until"), "{said}");

    let port = common::free_port();
    let mut run = spawn_run(&data, Some(&config), port);
    let send = |patient: &str, vitals: &str| common::post_reading(port, patient, vitals);
    // Patient 5: a medium alarm (blood pressure) and a high one (heart rate); patient 2:
    // a high one.
    send("5", r#"{"systolic": 200, "heart_rate": 130}"#);
    send("2", r#"{"heart_rate": 130}"#);
    wait_for("two alarms through", PATIENCE, || {
        hook.lock().unwrap().len() >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    let got: Vec<serde_json::Value> = hook
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|e| {
            (
                e["patient_id"].as_str().unwrap().into(),
                e["priority"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.contains(&("5".into(), "high".into())),
        "a new high alarm gets through: {seen:?}"
    );
    assert!(seen.contains(&("2".into(), "high".into())), "{seen:?}");
    let metrics = get(port, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "vitalwatch_notifications_silenced_total 1"),
        "the medium alarm was held back:\n{metrics}"
    );
    let high5 = got.iter().find(|e| e["patient_id"] == "5").unwrap()["alert_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = cli(&["alerts", "show", &high5]);
    assert!(
        shown.contains(&format!("\"alert_id\": \"{high5}\""))
            && shown.contains("\"priority\": \"high\""),
        "{shown}"
    );
    let acked = cli(&[
        "alerts",
        "ack",
        &high5,
        "--by",
        "dr.who",
        "--url",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert!(
        acked.contains(&format!("acknowledged alert {high5} by dr.who")),
        "{acked}"
    );
    // The running pipeline copies the audit trail into the warehouse as it grows.
    let acks_in_warehouse = || {
        common::sql(
            &data,
            "SELECT actor, subject FROM audit WHERE action = 'alert acknowledged'",
        )
    };
    wait_for("the acknowledgement in the warehouse", PATIENCE, || {
        !acks_in_warehouse().is_empty()
    });
    assert_eq!(acks_in_warehouse(), format!("dr.who,{high5}"));
    run.kill().unwrap();
    run.wait().unwrap();
    // A restart after the kill copies nothing twice: the warehouse's audit table is the
    // catalog's trail, row for row.
    let mut again = spawn_run(&data, Some(&config), port);
    std::thread::sleep(Duration::from_secs(2));
    again.kill().unwrap();
    again.wait().unwrap();

    let trail = cli(&["audit", "list", "--format", "csv"]);
    assert!(
        trail
            .lines()
            .any(|l| l.contains("nurse.jones,patient silenced,5,for 10m (line change) via cli")),
        "{trail}"
    );
    assert!(
        trail.lines().any(|l| l.contains(&format!(
            "dr.who,alert acknowledged,{high5},patient 5 via http from 127.0.0.1:"
        ))),
        "{trail}"
    );
    let mut catalog: Vec<String> = trail
        .lines()
        .skip(1)
        .map(|l| l.split_once(',').unwrap().1.to_owned())
        .collect();
    let mut warehouse: Vec<String> = common::sql(
        &data,
        "SELECT actor, action, subject, detail FROM audit ORDER BY id",
    )
    .lines()
    .map(str::to_owned)
    .collect();
    catalog.sort();
    warehouse.sort();
    assert!(
        catalog.len() >= 7,
        "imports, the silence, the ack: {catalog:?}"
    );
    assert_eq!(warehouse, catalog);
    // The daily report: the acknowledged high alarm, with its time to acknowledge, and
    // the day's alarms per ward (from the catalog) and priority.
    let report = cli(&["report", "daily", "--format", "csv"]);
    assert!(report.lines().any(|l| l.starts_with("high,1,")), "{report}");
    assert!(report.lines().any(|l| l == "5,high,1"), "{report}");
    assert!(report.lines().any(|l| l == "2,high,1"), "{report}");
    let silences = cli(&["alerts", "silences", "--format", "csv"]);
    assert!(
        silences.contains(",5,") && silences.contains("line change"),
        "{silences}"
    );
}

/// A medium alarm the server keeps refusing (retried with backoff) does not hold back a
/// high-priority alarm raised after it: each notifier delivers high-priority events in a
/// lane of their own.
#[test]
fn a_high_priority_alarm_never_waits_behind_a_failing_lower_one() {
    // Refuses medium events (transiently, so they are retried), takes high ones.
    let (port_hook, hook) = common::receiver_with(|_, r| {
        if r.body.contains("\"priority\":\"high\"") {
            200
        } else {
            503
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lanes.toml");
    std::fs::write(
        &config,
        format!(
            "[rules.thresholds]\npersistence = \"0s\"\n[alerts]\nconsole = false\n\
             [[notifiers]]\ntype = \"webhook\"\nname = \"ward\"\nurl = \"http://127.0.0.1:{port_hook}/\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    common::import_classic(&config, &data, false);
    let table = high_heart_rate_table(dir.path());
    let o = vitalwatch(&[
        "thresholds",
        "import",
        "--config",
        &os(&config),
        "--data",
        &os(&data),
        &os(&table),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = common::free_port();
    let mut run = spawn_run(&data, Some(&config), port);
    common::post_reading(port, "5", r#"{"systolic": 200}"#);
    wait_for("the medium alarm to be refused", PATIENCE, || {
        !hook.lock().unwrap().is_empty()
    });
    let refused = Instant::now();
    common::post_reading(port, "2", r#"{"heart_rate": 130}"#);
    wait_for("the high alarm", PATIENCE, || {
        hook.lock()
            .unwrap()
            .iter()
            .any(|r| r.body.contains("\"priority\":\"high\""))
    });
    let waited = refused.elapsed();
    // The receiver records a request before it answers, so the notifier counts the
    // delivery a moment after the body arrives: wait for the count, not just the body.
    let delivered = "vitalwatch_notifier_deliveries_total{notifier=\"ward/high\"} 1";
    let mut metrics = String::new();
    wait_for("the high lane to count its delivery", PATIENCE, || {
        metrics = get(port, "/metrics");
        metrics.lines().any(|l| l == delivered)
    });
    run.kill().unwrap();
    run.wait().unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "the high alarm waited {waited:?} behind the refused medium one"
    );
    assert!(
        metrics.lines().any(|l| l
            .starts_with("vitalwatch_notifier_retries_total{notifier=\"ward\"}")
            && !l.ends_with(" 0")),
        "the medium alarm is still being retried in its own lane:\n{metrics}"
    );
}
