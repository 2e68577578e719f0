//! End to end through the real pipeline: a real HTTP server on a free loopback port, the
//! engine, the SQLite catalog, the alert log and the Parquet warehouse, queried back with
//! DataFusion. Also `replay` and `simulate` through the built binary.

mod common;

use common::{os, request, vitalwatch};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vitalwatch::config::Config;
use vitalwatch::metrics::Metrics;
use vitalwatch::pipeline::{Clock, Pipeline, PipelineOptions, warehouse_root};
use vitalwatch_connectors::warehouse::{OutputFormat, format_batches, query};
use vitalwatch_core::rules::Profile;

/// A time `secs` seconds before now: live sources refuse readings a day old or minutes in
/// the future, so test data is stamped relative to the clock. (`classic` layout, RFC 3339.)
fn recent(secs: i64) -> (String, String) {
    let t = chrono::Utc::now() - chrono::Duration::seconds(secs);
    let t = t - chrono::Duration::nanoseconds(i64::from(t.timestamp_subsec_nanos()));
    (
        t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

fn seed(data: &Path) {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
    for (what, file) in [
        ("patients", "patients_information.csv"),
        ("thresholds", "threshold_ref.csv"),
    ] {
        let out = vitalwatch(&[what, "import", "--data", &os(data), &os(shared.join(file))]);
        assert!(
            out.status.success(),
            "{what} import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A running pipeline with its HTTP server on a free loopback port.
struct Live {
    metrics: Arc<Metrics>,
    pipeline: Pipeline,
    cancel: CancellationToken,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(cfg: &Config) -> Live {
    let metrics = Arc::new(Metrics::default());
    let opts = PipelineOptions {
        clock: Clock::Wall,
        console: false,
        publish_at_checkpoints_only: false,
        reference_refresh: None,
    };
    let pipeline = Pipeline::start(cfg, opts, metrics.clone()).unwrap();
    let cancel = CancellationToken::new();
    let (addr, server) = vitalwatch::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        pipeline.handle(),
        Some(cfg.http.max_body_bytes),
        cancel.clone(),
    )
    .await
    .unwrap();
    Live {
        metrics,
        pipeline,
        cancel,
        addr,
        server,
    }
}

async fn sql(data: &Path, q: &str) -> String {
    let batches = query(&warehouse_root(data), q).await.unwrap();
    format_batches(&batches, OutputFormat::Csv).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_to_alerts_and_warehouse() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    seed(&data);
    let mut cfg = Config {
        data_dir: data.clone(),
        ..Config::default()
    };
    cfg.rules.profile = Profile::Classic;
    let Live {
        metrics,
        pipeline,
        cancel,
        addr,
        server,
    } = start(&cfg).await;

    assert_eq!(
        request(addr, "GET", "/healthz", "").await,
        (200, r#"{"status":"ok"}"#.to_owned())
    );

    let (t1, t1_rfc) = recent(60);
    let (_, t2_rfc) = recent(59);
    let (t3, _) = recent(58);
    let (t4, _) = recent(57);
    // One classic object: Karan C (56) with heartBeat 74 and bp 202 → two classic alerts.
    let (status, body) = request(
        addr,
        "POST",
        "/v1/readings",
        &format!(r#"{{"customerId":3,"heartBeat":74,"bp":202,"message_time":"{t1}"}}"#),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (202, r#"{"accepted":1,"rejected":[]}"#)
    );

    // An array in the canonical format.
    let (status, _) = request(
        addr,
        "POST",
        "/v1/readings",
        &format!(r#"[{{"patient_id":"1","device_id":"bed-1","observed_at":"{t2_rfc}","vitals":{{"heart_rate":75,"spo2":97}}}},
            {{"patient_id":"2","device_id":"bed-2","observed_at":"{t2_rfc}","vitals":{{"heart_rate":60}}}}]"#),
    )
    .await;
    assert_eq!(status, 202);

    // NDJSON with a bad line, an implausible value and an unknown patient: 400 with a reason
    // per rejected record; the good records are still processed.
    let ndjson = format!(
        "{{\"customerId\":5,\"heartBeat\":60,\"bp\":170,\"message_time\":\"{t3}\"}}\n\
         {{\"customerId\":5,\"heartBeat\":900}}\n\
         not json\n\
         {{\"customerId\":99,\"heartBeat\":80,\"bp\":120,\"message_time\":\"{t4}\"}}\n"
    );
    let ndjson = ndjson.as_str();
    let (status, body) = request(addr, "POST", "/v1/readings", ndjson).await;
    assert_eq!(status, 400, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["accepted"], 2);
    let rejected = reply["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["record"], 2);
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("heart_rate 900 outside plausible range")
    );
    assert_eq!(rejected[1]["record"], 3);
    assert!(
        rejected[1]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid canonical record")
    );

    // Wait until the alerts are written: 2 (patient 3) + 1 (patient 2, HR 60 < 66) + 1 (patient 5, HR 60).
    let deadline = Instant::now() + Duration::from_secs(10);
    let log_lines =
        || std::fs::read_to_string(data.join("alerts.jsonl")).map_or(0, |l| l.lines().count());
    // The alert log is a notifier on the outbox: written a moment after the store commit.
    // Its backlog is on /metrics: the outbox head and how far each notifier got.
    let caught_up = || {
        let m = metrics.render();
        let value = |prefix: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix(prefix)?.trim().parse::<u64>().ok())
        };
        let head = value("vitalwatch_outbox_head ");
        head.is_some_and(|h| h >= 4)
            && head == value("vitalwatch_notifier_delivered_seq{notifier=\"jsonl\"} ")
    };
    while (metrics.alerts_total() < 4 || log_lines() < 4 || !caught_up())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(caught_up(), "{}", metrics.render());
    let log = std::fs::read_to_string(data.join("alerts.jsonl")).unwrap();
    let alerts: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut summary: Vec<(String, String)> = alerts
        .iter()
        .map(|a| {
            (
                a["patientname"].as_str().unwrap().to_owned(),
                a["alert_message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        vec![
            ("Karan C".into(), "Higher BP than Normal".into()),
            ("Karan C".into(), "Higher Heart Rate than Normal".into()),
            ("Pam".into(), "Low Heart Rate than Normal".into()),
            ("Sammy A".into(), "Low Heart Rate than Normal".into()),
        ]
    );
    let karan = alerts
        .iter()
        .find(|a| a["patientname"] == "Karan C")
        .unwrap();
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    assert_eq!(
        parse(karan["input_message_time"].as_str().unwrap()),
        parse(&t1_rfc)
    );
    assert_eq!(karan["bp"], 202.0);
    assert_eq!(karan["heartBeat"], 74.0);
    assert_eq!(karan["ref_version"], 1);

    // The alert API: list, then acknowledgement. Classic alerts are not kept active by the
    // engine (every reading is its own alert), so acknowledging one is refused clearly.
    let (status, body) = request(addr, "GET", "/v1/alerts", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .unwrap()
            .len(),
        4
    );
    let id = karan["alert_id"].as_str().unwrap();
    let (status, body) = request(
        addr,
        "POST",
        &format!("/v1/alerts/{id}/ack"),
        r#"{"by":"nurse.jones"}"#,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = request(addr, "POST", &format!("/v1/alerts/{id}/ack"), "").await;
    assert_eq!(status, 400, "an acknowledgement must say who");

    let (status, metrics_text) = request(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        metrics_text.contains("vitalwatch_dead_letters_total 2\n"),
        "{metrics_text}"
    );
    assert!(!metrics_text.contains("Karan"), "no names in metrics");

    cancel.cancel();
    server.await.unwrap().unwrap();
    let summary = pipeline.shutdown().unwrap();
    assert_eq!(
        (summary.observations, summary.dead_letters, summary.alerts),
        (5, 2, 4)
    );
    assert_eq!(
        summary.unclassified, 1,
        "patient 99 is unknown: reported, not dropped"
    );

    // Everything is in the warehouse.
    assert_eq!(
        sql(
            &data,
            "SELECT vital, count(*) AS n FROM vitals GROUP BY vital ORDER BY vital"
        )
        .await,
        "vital,n\nheart_rate,5\nspo2,1\nsystolic,3\n"
    );
    assert_eq!(
        sql(&data, "SELECT reason FROM dead_letters ORDER BY source")
            .await
            .lines()
            .count(),
        3
    );
    assert_eq!(
        sql(&data, "SELECT patient_id, reason FROM unclassified").await,
        "patient_id,reason\n99,unknown_patient\n"
    );
    assert_eq!(
        sql(
            &data,
            "SELECT count(*) AS n, count(DISTINCT alert_id) AS ids FROM alerts"
        )
        .await,
        "n,ids\n4,4\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_profile_acknowledge_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    seed(&data);
    let mut cfg = Config {
        data_dir: data.clone(),
        ..Config::default()
    };
    cfg.rules.thresholds.persistence = vitalwatch_core::model::Duration::ZERO;
    cfg.rules.stale_device.enabled = false;
    let Live {
        metrics,
        pipeline,
        cancel,
        addr,
        server,
    } = start(&cfg).await;
    // Three high readings from Pam: one alert (dedup), not three.
    for s in 0..3 {
        let (_, t) = recent(10 - s);
        let body = format!(
            r#"{{"patient_id":"5","device_id":"m","observed_at":"{t}","vitals":{{"heart_rate":95}}}}"#
        );
        assert_eq!(request(addr, "POST", "/v1/readings", &body).await.0, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open = Vec::new();
    while open.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        open = serde_json::from_str::<Vec<serde_json::Value>>(
            &request(addr, "GET", "/v1/alerts", "").await.1,
        )
        .unwrap();
    }
    assert_eq!(open.len(), 1);
    let id = open[0]["alert_id"].as_str().unwrap().to_owned();
    let (status, body) = request(
        addr,
        "POST",
        &format!("/v1/alerts/{id}/ack"),
        r#"{"by":"nurse.jones"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ev: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (ev["state"].as_str(), ev["acknowledged_by"].as_str()),
        (Some("acknowledged"), Some("nurse.jones"))
    );
    assert_eq!(
        request(
            addr,
            "POST",
            &format!("/v1/alerts/{id}/ack"),
            r#"{"by":"x"}"#
        )
        .await
        .0,
        409
    );
    assert_eq!(
        request(addr, "POST", "/v1/alerts/nope/ack", r#"{"by":"x"}"#)
            .await
            .0,
        404
    );
    cancel.cancel();
    server.await.unwrap().unwrap();
    pipeline.shutdown().unwrap();
    assert_eq!(metrics.alerts_total(), 1);
}

/// What a live source must not trust becomes a dead letter with a reason, never engine
/// input and never silently dropped: a clock 40 years ahead, a reading two days old, a
/// classic field the codec does not know, a body over the size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_turns_untrustworthy_input_into_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    seed(&data);
    let mut cfg = Config {
        data_dir: data.clone(),
        ..Config::default()
    };
    cfg.http.max_body_bytes = 4096;
    let Live {
        metrics,
        pipeline,
        cancel,
        addr,
        server,
    } = start(&cfg).await;
    let (old, _) = recent(2 * 86_400);
    let (now, _) = recent(0);
    let body = format!(
        "{{\"customerId\":1,\"heartBeat\":80,\"message_time\":\"2066-01-01 00:00:00\"}}\n\
         {{\"customerId\":1,\"heartBeat\":80,\"message_time\":\"{old}\"}}\n\
         {{\"customerId\":1,\"heartbeat\":80,\"message_time\":\"{now}\"}}\n\
         {{\"customerId\":1,\"heartBeat\":80,\"spo2\":91,\"message_time\":\"{now}\"}}\n\
         {{\"customerId\":1,\"heartBeat\":80}}\n"
    );
    let (status, reply) = request(addr, "POST", "/v1/readings", &body).await;
    assert_eq!(status, 400, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["accepted"], 1);
    let reasons: Vec<&str> = reply["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons[0].contains("ahead of the ingest time") && reasons[0].contains("time.max_future"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("older than the ingest time") && reasons[1].contains("time.max_age"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("unknown field `heartbeat`"),
        "{}",
        reasons[2]
    );
    assert!(
        reasons[3].contains("unknown field `spo2`"),
        "{}",
        reasons[3]
    );

    // 5 KiB of readings against a 4 KiB limit: 413, and the head (up to 64 KiB) is kept.
    let big = "{\"customerId\":1,\"heartBeat\":80}\n".repeat(160);
    let (status, reply) = request(addr, "POST", "/v1/readings", &big).await;
    assert_eq!(status, 413, "{reply}");
    assert!(reply.contains("http.max_body_bytes"), "{reply}");

    cancel.cancel();
    server.await.unwrap().unwrap();
    let summary = pipeline.shutdown().unwrap();
    assert_eq!((summary.observations, summary.dead_letters), (1, 5));
    assert_eq!(
        metrics
            .sources
            .dead_letters
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    let dl = sql(
        &data,
        "SELECT source, length(payload) AS bytes FROM dead_letters WHERE reason LIKE '%max_body_bytes%'",
    )
    .await;
    assert_eq!(dl, "source,bytes\nhttp,5120\n");
}

/// A canonical record `secs` after 2025-03-01T08:00:00Z: replays judge time against the
/// recording's own clock, so an old recording replays as it happened.
fn canon(patient: &str, device: &str, secs: f64, vitals: &str) -> String {
    let t = chrono::DateTime::parse_from_rfc3339("2025-03-01T08:00:00Z").unwrap()
        + chrono::Duration::milliseconds((secs * 1000.0) as i64);
    format!(
        r#"{{"patient_id":"{patient}","device_id":"{device}","observed_at":"{}","vitals":{{{vitals}}}}}"#,
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

/// Imports the classic threshold table into `data` (created if needed), so a replay there
/// uses it whatever the profile's built-in table.
fn import_classic_thresholds(data: &Path) {
    let table = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/threshold_ref.csv");
    let o = vitalwatch(&["thresholds", "import", "--data", &os(data), &os(table)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Replays these lines into a fresh data directory holding the classic threshold table
/// (these tests are about time and order, and its heart-rate band 3 fires on the values
/// they use); returns the directory, the summary and the alert log.
fn replay_lines(
    lines: &[String],
    extra: &[&str],
) -> (tempfile::TempDir, String, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let data = dir.path().join("data");
    import_classic_thresholds(&data);
    let mut args = vec!["replay", "--data", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    let file = os(&file);
    args.push(&file);
    let o = vitalwatch(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(data.join("alerts.jsonl")).unwrap_or_default();
    let alerts = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (dir, String::from_utf8(o.stdout).unwrap(), alerts)
}

/// (event, rule_key) of every alert event, in log order.
fn events(alerts: &[serde_json::Value]) -> Vec<(String, String)> {
    alerts
        .iter()
        .map(|a| {
            (
                a["event"].as_str().unwrap().to_owned(),
                a["rule_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn count(evs: &[(String, String)], event: &str, key: &str) -> usize {
    evs.iter().filter(|(e, k)| e == event && k == key).count()
}

#[test]
fn replay_a_far_future_reading_is_a_dead_letter_and_alarms_go_on() {
    let mut lines: Vec<String> = (0..200)
        .map(|s| canon("1", "m1", f64::from(s), r#""heart_rate":125,"spo2":84"#))
        .collect();
    // The device's clock jumps 40 years for one reading.
    lines.insert(
        10,
        r#"{"patient_id":"1","device_id":"m1","observed_at":"2066-01-01T00:00:00Z","vitals":{"heart_rate":70,"spo2":98}}"#.into(),
    );
    let (dir, summary, alerts) = replay_lines(&lines, &[]);
    assert!(summary.contains("dead letters: 1"), "{summary}");
    let evs = events(&alerts);
    assert_eq!(
        count(&evs, "triggered", "threshold:heart_rate:3"),
        1,
        "{evs:?}"
    );
    assert_eq!(count(&evs, "triggered", "limit:spo2_low"), 1, "{evs:?}");
    assert!(
        !evs.iter().any(|(_, k)| k.starts_with("device_stale")),
        "no false stale alarm dated in the future: {evs:?}"
    );
    let o = vitalwatch(&[
        "query",
        "--format",
        "csv",
        "--data",
        &os(dir.path().join("data")),
        "SELECT reason FROM dead_letters",
    ]);
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("no reading after it confirmed the jump"),
        "{out}"
    );
}

#[test]
fn replay_judges_each_file_by_its_own_clock() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer.jsonl");
    let older = dir.path().join("older.jsonl");
    let lines = |offset: f64| -> String {
        (0..100)
            .map(|s| canon("1", "m1", offset + f64::from(s), r#""heart_rate":74"#) + "\n")
            .collect()
    };
    std::fs::write(&newer, lines(0.0)).unwrap();
    // Three days earlier: older than time.max_age against the first file's clock.
    std::fs::write(&older, lines(-3.0 * 86_400.0)).unwrap();
    let data = dir.path().join("data");
    let o = vitalwatch(&["replay", "--data", &os(&data), &os(&newer), &os(&older)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("readings: 200 (200 observation sets)"),
        "{out}"
    );
    assert!(out.contains("dead letters: 0"), "{out}");
}

#[test]
fn replay_a_late_normal_reading_neither_resolves_nor_duplicates() {
    let mut lines: Vec<String> = (0..60)
        .map(|s| canon("1", "m1", f64::from(s), r#""heart_rate":95"#))
        .collect();
    // A gateway re-sends a normal reading from second 5, after second 39.
    lines.insert(40, canon("1", "m1", 5.0, r#""heart_rate":74"#));
    lines.extend((60..80).map(|s| canon("1", "m1", f64::from(s), r#""heart_rate":74"#)));
    let (_dir, _, alerts) = replay_lines(&lines, &[]);
    let evs = events(&alerts);
    let key = "threshold:heart_rate:3";
    assert_eq!(
        (count(&evs, "triggered", key), count(&evs, "resolved", key)),
        (1, 1),
        "{evs:?}"
    );
    let resolved = alerts
        .iter()
        .find(|a| a["event"] == "resolved" && a["rule_key"] == key)
        .unwrap();
    assert_eq!(resolved["input_message_time"], "2025-03-01T08:01:00Z");
}

#[test]
fn replay_a_skewed_device_neither_floods_nor_hides_the_stale_alarm() {
    let mut lines = Vec::new();
    // Monitor a (patient 1) keeps time for 10 minutes; monitor b (patient 2) runs 90 s
    // behind, posts every 1.2 s, and stops after 5 minutes.
    for k in 0..500 {
        let t = f64::from(k) * 1.2;
        lines.push(canon("1", "a", t, r#""heart_rate":74"#));
        if t < 300.0 {
            lines.push(canon("2", "b", t - 90.0, r#""heart_rate":70"#));
        }
    }
    let (_dir, _, alerts) = replay_lines(&lines, &[]);
    let evs = events(&alerts);
    assert!(count(&evs, "triggered", "device_stale:a") == 0, "{evs:?}");
    assert_eq!(count(&evs, "triggered", "device_stale:b"), 1, "{evs:?}");
    assert_eq!(count(&evs, "resolved", "device_stale:b"), 0, "{evs:?}");
}

/// A full NEWS2 set for patient 2 (45) on air; the score comes from HR, RR and SpO2.
fn news2_set(secs: f64, hr: u32, rr: u32, spo2: u32) -> String {
    canon(
        "2",
        "m2",
        secs,
        &format!(
            r#""heart_rate":{hr},"resp_rate":{rr},"spo2":{spo2},"systolic":120,"temp_c":37.0,"consciousness":"A","on_oxygen":false"#
        ),
    )
}

#[test]
fn replay_news2_hovering_at_its_trigger_gives_one_alert() {
    let mut lines = Vec::new();
    // HR 115 (2) + RR 22 (2) = 4; with SpO2 95 (1) = 5. Heart rate 115 is in the classic
    // table's high band too, so the band and NEWS2 are told apart by rule key.
    let mut s = 0.0;
    for k in 0..700 {
        let spo2 = if (60..100).contains(&k) || k % 2 == 1 {
            95
        } else {
            97
        };
        lines.push(news2_set(s, 115, 22, spo2));
        s += 1.0;
    }
    let (_dir, _, alerts) = replay_lines(&lines, &[]);
    let evs = events(&alerts);
    assert_eq!(count(&evs, "triggered", "news2"), 1, "{evs:?}");
    assert_eq!(count(&evs, "resolved", "news2"), 0, "{evs:?}");
}

#[test]
fn replay_renotifies_on_the_recordings_clock() {
    // Fifteen minutes of heart rate 128, nobody acknowledges.
    let lines: Vec<String> = (0..900)
        .map(|s| canon("1", "m1", f64::from(s), r#""heart_rate":128"#))
        .collect();
    let (_dir, _, alerts) = replay_lines(&lines, &[]);
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = alerts
        .iter()
        .filter(|a| a["rule_key"] == "threshold:heart_rate:3")
        .map(|a| {
            chrono::DateTime::parse_from_rfc3339(a["alert_generated_time"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    // Triggered at 10 s (persistence), then every 2 minutes of the recording: 130 … 850.
    assert_eq!(times.len(), 8, "{alerts:?}");
    for w in times.windows(2) {
        assert_eq!((w[1] - w[0]).num_seconds(), 120);
    }
}

#[test]
fn replay_classic_same_second_readings_duplicates_decimals_and_unknown_fields() {
    let lines: Vec<String> = [
        // Patient 2 (45): heartBeat ≥ 74 high; three readings in one second, the second a
        // worse value, the third an exact re-delivery of the first.
        r#"{"customerId":2,"heartBeat":80,"bp":160,"message_time":"2025-03-01 08:00:00"}"#,
        r#"{"customerId":2,"heartBeat":120,"bp":160,"message_time":"2025-03-01 08:00:00"}"#,
        r#"{"customerId":2,"heartBeat":80,"bp":160,"message_time":"2025-03-01 08:00:00"}"#,
        // Patient 1 (23): 78.5 lies between the 70–78 and 79–9999 bands: no band.
        r#"{"customerId":1,"heartBeat":78.5,"message_time":"2025-03-01 08:00:01"}"#,
        // A field the classic layout does not have: a dead letter, not a lost value.
        r#"{"customerId":1,"heartbeat":130,"message_time":"2025-03-01 08:00:02"}"#,
        // Two records without a time of their own, in one batch: two readings, two alerts.
        r#"{"customerId":2,"heartBeat":90,"bp":160}"#,
        r#"{"customerId":2,"heartBeat":90,"bp":160}"#,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let (_dir, summary, alerts) =
        replay_lines(&lines, &["--profile", "classic", "--format", "classic"]);
    assert!(summary.contains("dead letters: 1"), "{summary}");
    assert!(summary.contains("unclassified: 1"), "{summary}");
    let hr: Vec<(f64, f64)> = alerts
        .iter()
        .map(|a| (a["heartBeat"].as_f64().unwrap(), a["bp"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        hr,
        vec![(80.0, 160.0), (120.0, 160.0), (90.0, 160.0), (90.0, 160.0)],
        "{alerts:?}"
    );
    assert_ne!(alerts[2]["alert_id"], alerts[3]["alert_id"]);
}

/// `simulate | replay` through the binary: same seed → same file; a second replay of the
/// same file adds no alert (ids are deterministic, the catalog makes it idempotent).
#[test]
fn simulate_then_replay_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sim.jsonl");
    let sim = |out: &Path| {
        let o = vitalwatch(&[
            "simulate",
            "--patients",
            "10",
            "--rate",
            "100",
            "--duration",
            "10m",
            "--seed",
            "7",
            "--format",
            "classic",
            "--output",
            &os(out),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    sim(&file);
    let again = dir.path().join("again.jsonl");
    sim(&again);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&again).unwrap()
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 60_000);
    assert!(
        text.starts_with("{\"customerId\":1,\"heartBeat\":"),
        "{}",
        &text[..80]
    );
    // Add a malformed line: it must become a dead letter, not stop the replay.
    std::fs::write(
        &again,
        format!("{text}{{\"customerId\":1,\"heartBeat\":\"fast\"}}\n"),
    )
    .unwrap();

    let data = dir.path().join("data");
    let replay = || {
        let o = vitalwatch(&[
            "replay",
            "--format",
            "classic",
            "--profile",
            "classic",
            "--data",
            &os(&data),
            &os(&again),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let first = replay();
    assert!(
        first.contains("readings: 120000 (60000 observation sets)"),
        "{first}"
    );
    assert!(first.contains("dead letters: 1"), "{first}");
    let alerts_after_first = std::fs::read_to_string(data.join("alerts.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(
        alerts_after_first > 1000,
        "the classic table flags most simulated readings"
    );
    // The replay path is deterministic: the same file into a fresh data directory, in
    // the standard profile too, gives the same alert events with the same ids.
    let story = |profile: &str, data: &Path| -> Vec<(String, String)> {
        // The classic table in both profiles: the standard profile's own table keeps
        // these stable simulated patients quiet, and this test needs alerts to compare.
        import_classic_thresholds(data);
        let o = vitalwatch(&[
            "replay",
            "--format",
            "classic",
            "--profile",
            profile,
            "--data",
            &os(data),
            &os(&file),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(data.join("alerts.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["alert_id"].as_str().unwrap().to_owned(),
                    v["event"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    for profile in ["classic", "standard"] {
        let a = story(profile, &dir.path().join(format!("{profile}-a")));
        assert!(!a.is_empty());
        assert_eq!(
            a,
            story(profile, &dir.path().join(format!("{profile}-b"))),
            "{profile}"
        );
    }
    // Every table, the catalog and the alert log, counted.
    let counts = || -> Vec<String> {
        let mut c: Vec<String> = ["vitals", "alerts", "dead_letters", "unclassified"]
            .iter()
            .map(|t| {
                let o = vitalwatch(&[
                    "query",
                    "--format",
                    "csv",
                    "--data",
                    &os(&data),
                    &format!("SELECT '{t}' AS t, count(*) AS n FROM {t}"),
                ]);
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                String::from_utf8(o.stdout).unwrap()
            })
            .collect();
        let o = vitalwatch(&[
            "alerts",
            "list",
            "--all",
            "--limit",
            "100000000",
            "--format",
            "csv",
            "--data",
            &os(&data),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        c.push(format!(
            "catalog alerts: {}",
            String::from_utf8_lossy(&o.stdout).lines().count()
        ));
        c.push(format!(
            "alerts.jsonl: {}",
            std::fs::read_to_string(data.join("alerts.jsonl"))
                .unwrap()
                .lines()
                .count()
        ));
        c
    };
    let once = counts();
    assert_eq!(once[0], "t,n\nvitals,120000\n");
    assert_eq!(once[2], "t,n\ndead_letters,1\n");
    assert_eq!(once[5], format!("alerts.jsonl: {alerts_after_first}"));

    // The same command again continues after the durable end of the file: nothing new
    // in any table, no second notification.
    let second = replay();
    assert!(second.contains("alerts: 0 triggered"), "{second}");
    assert!(second.contains("already replayed and durable"), "{second}");
    assert_eq!(counts(), once, "a second replay changes no table");
    // --from-start processes the file again and replaces what it archived before.
    let o = vitalwatch(&[
        "replay",
        "--from-start",
        "--format",
        "classic",
        "--profile",
        "classic",
        "--data",
        &os(&data),
        &os(&again),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("alerts: 0 triggered"));
    assert_eq!(
        counts(),
        once,
        "a replay from the start changes no table either"
    );
}

#[test]
fn config_check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let o = vitalwatch(&["config", "default"]);
    std::fs::write(&good, &o.stdout).unwrap();
    let o = vitalwatch(&["config", "check", &os(&good)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "colour = 1\n[http]\nlisten = \"nowhere\"\nport = 1\n").unwrap();
    let o = vitalwatch(&["config", "check", &os(&bad)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown key `colour`") && err.contains("unknown key `http.port`"),
        "{err}"
    );
}

#[test]
fn bad_csv_imports_report_lines_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let csv = dir.path().join("p.csv");
    std::fs::write(&csv, "patientid,patientname,patientaddress,phone_number,admitted_ward,age,other_details\n1,A,x,1,1,40,\n2,B,x,1,1,old,\n").unwrap();
    let o = vitalwatch(&["patients", "import", "--data", &os(&data), &os(&csv)]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("line 3: age \"old\" is not a valid number")
    );
    assert!(
        !data.exists(),
        "a rejected import writes nothing, not even the directory"
    );
}

/// Read commands never create a data directory; writing commands own theirs (and say
/// who holds it); imports say what changed; a closed pipe ends output quietly.
#[test]
fn data_directories_are_read_safely_and_owned_by_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
    for args in [
        vec!["patients", "list"],
        vec!["alerts", "list"],
        vec!["thresholds", "list"],
        vec!["query", "SELECT count(*) FROM vitals"],
    ] {
        let mut a = args.clone();
        let d = os(&data);
        a.extend(["--data", d.as_str()]);
        let o = vitalwatch(&a);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("no data directory") && err.contains(&d),
            "{err}"
        );
        assert!(!data.exists(), "{args:?} created the data directory");
    }
    let patients = os(shared.join("patients_information.csv"));
    let thresholds = os(shared.join("threshold_ref.csv"));
    let d = os(&data);
    let o = vitalwatch(&["patients", "import", "--data", &d, &patients]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("5 added, 0 updated, 0 unchanged"));
    let o = vitalwatch(&["patients", "import", "--data", &d, &patients]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 added, 0 updated, 5 unchanged"));
    vitalwatch(&["thresholds", "import", "--data", &d, &thresholds]);
    let o = vitalwatch(&["thresholds", "import", "--data", &d, &thresholds]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unchanged, still version 1"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = vitalwatch(&["-q", "thresholds", "import", "--data", &d, &thresholds]);
    assert!(o.stderr.is_empty(), "--quiet");
    let o = vitalwatch(&["thresholds", "list", "--version", "99", "--data", &d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no threshold table version 99 (versions: 1)")
    );
    let o = vitalwatch(&["patients", "list", "--format", "json", "--data", &d]);
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8(o.stdout).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["age"], 23, "numbers are numbers: {first}");

    // Another process holds the data directory: writers refuse and name it, readers read.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(data.join(".vitalwatch.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    std::fs::write(data.join(".vitalwatch.lock"), "`vitalwatch run` (pid 4242)").unwrap();
    let o = vitalwatch(&["patients", "import", "--data", &d, &patients]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is in use by `vitalwatch run` (pid 4242)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        vitalwatch(&["patients", "list", "--data", &d])
            .status
            .success()
    );
    drop(lock);

    // `| head` closed the pipe: no "Broken pipe" error, exit 0.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitalwatch"))
        .args(["patients", "list", "--data", &d])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Usage errors exit 2.
    assert_eq!(vitalwatch(&["patients", "lst"]).status.code(), Some(2));

    // A port in use fails `run` before it writes anything.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let fresh = dir.path().join("never-written");
    let o = vitalwatch(&[
        "run",
        "--duration",
        "1s",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data",
        &os(&fresh),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot listen on"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !fresh.exists(),
        "nothing written before the port was checked"
    );
}

/// `run` stopped cleanly leaves a tidy data directory: every thread's catalog connection
/// is closed before the process ends, so SQLite folds the WAL away (the reference
/// watcher's connection, never joined, used to keep `catalog.sqlite-wal` behind).
#[test]
fn run_stopped_cleanly_leaves_no_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    seed(&data);
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listen.local_addr().unwrap().port();
    drop(listen);
    let o = vitalwatch(&[
        "run",
        "--patients",
        "20",
        "--duration",
        "2s",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data",
        &os(&data),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let left: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("catalog.sqlite-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        vitalwatch(&["alerts", "list", "--data", &os(&data)])
            .status
            .success()
    );
}

/// Kill -9 `run` with open alerts and start it again: the alerts are listed, can be
/// acknowledged, a persisting condition raises no second alert, a cleared one resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_killed_with_open_alerts_carries_on_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    seed(&data);
    let config = dir.path().join("vw.toml");
    std::fs::write(
        &config,
        "[rules.thresholds]\npersistence = \"0s\"\n[rules.stale_device]\nenabled = false\n[rules.news2]\nenabled = false\n",
    )
    .unwrap();
    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let post = |patient: &'static str, hr: u32| async move {
        let (_, t) = recent(0);
        let body = format!(
            r#"{{"patient_id":"{patient}","device_id":"m{patient}","observed_at":"{t}","vitals":{{"heart_rate":{hr}}}}}"#
        );
        assert_eq!(request(addr, "POST", "/v1/readings", &body).await.0, 202);
    };
    let open = || async move {
        serde_json::from_str::<Vec<serde_json::Value>>(
            &request(addr, "GET", "/v1/alerts", "").await.1,
        )
        .unwrap()
    };
    let wait_for = |want: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = open().await;
            if list.len() == want || Instant::now() > deadline {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    let mut first = common::spawn_run(&data, Some(&config), port);
    post("5", 95).await; // Pam (72): heart rate ≥ 74 is high
    post("2", 60).await; // Sammy A (45): heart rate ≤ 65 is low
    let before = wait_for(2).await;
    assert_eq!(before.len(), 2, "{before:?}");
    first.kill().unwrap(); // SIGKILL: no drain, no goodbye
    first.wait().unwrap();

    let mut second = common::spawn_run(&data, Some(&config), port);
    let listed = open().await;
    assert_eq!(listed.len(), 2);
    let id_of = |patient: &str| {
        listed.iter().find(|a| a["patient_id"] == patient).unwrap()["alert_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (pam, sammy) = (id_of("5"), id_of("2"));
    let (status, body) = request(
        addr,
        "POST",
        &format!("/v1/alerts/{pam}/ack"),
        r#"{"by":"nurse.jones"}"#,
    )
    .await;
    assert_eq!(
        status, 200,
        "acknowledging an alert of the last run: {body}"
    );
    post("5", 96).await; // still high: the same episode
    post("2", 70).await; // back in range: resolves
    let after = wait_for(1).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["alert_id"], pam.as_str());
    assert_eq!(after[0]["state"], "acknowledged");
    // The alert log is written from the outbox, a moment after the store commit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(data.join("alerts.jsonl"))
        .unwrap()
        .contains(r#""event":"resolved""#)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let log = std::fs::read_to_string(data.join("alerts.jsonl")).unwrap();
    let triggered = log
        .lines()
        .filter(|l| l.contains(r#""event":"triggered""#))
        .count();
    assert_eq!(
        triggered, 2,
        "no second alert for a persisting condition:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(r#""event":"resolved""#) && l.contains(&sammy)),
        "{log}"
    );
}
