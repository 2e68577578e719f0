//! End to end through the real pipeline: a real HTTP server on a free loopback port, the
//! engine, the SQLite catalog, the alert log and the Parquet warehouse, queried back with
//! DataFusion. Also `replay` and `simulate` through the built binary.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio_util::sync::CancellationToken;
use vitalwatch::config::Config;
use vitalwatch::metrics::Metrics;
use vitalwatch::pipeline::{Clock, Pipeline, PipelineOptions, warehouse_root};
use vitalwatch_connectors::warehouse::{OutputFormat, format_batches, query};
use vitalwatch_core::rules::Profile;

/// Runs the built binary with these arguments.
fn vitalwatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vitalwatch"))
        .args(args)
        .output()
        .unwrap()
}

/// A path as a command-line argument (test paths are UTF-8).
fn os(p: impl AsRef<Path>) -> String {
    p.as_ref().to_str().expect("UTF-8 path").to_owned()
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
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
    };
    let pipeline = Pipeline::start(cfg, opts, metrics.clone()).unwrap();
    let cancel = CancellationToken::new();
    let (addr, server) = vitalwatch::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        pipeline.handle(),
        1 << 20,
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

    // One classic object: Karan C (56) with heartBeat 74 and bp 202 → two classic alerts.
    let (status, body) = request(
        addr,
        "POST",
        "/v1/readings",
        r#"{"customerId":3,"heartBeat":74,"bp":202,"message_time":"2026-11-28 14:03:11.250"}"#,
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
        r#"[{"patient_id":"1","device_id":"bed-1","observed_at":"2026-11-28T14:03:12Z","vitals":{"heart_rate":75,"spo2":97}},
            {"patient_id":"2","device_id":"bed-2","observed_at":"2026-11-28T14:03:12Z","vitals":{"heart_rate":60}}]"#,
    )
    .await;
    assert_eq!(status, 202);

    // NDJSON with a bad line, an implausible value and an unknown patient: 400 with a reason
    // per rejected record; the good records are still processed.
    let ndjson = "{\"customerId\":5,\"heartBeat\":60,\"bp\":170,\"message_time\":\"2026-11-28 14:03:13\"}\n\
                  {\"customerId\":5,\"heartBeat\":900}\n\
                  not json\n\
                  {\"customerId\":99,\"heartBeat\":80,\"bp\":120,\"message_time\":\"2026-11-28 14:03:14\"}\n";
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
    while metrics.alerts_total() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    assert_eq!(karan["input_message_time"], "2026-11-28T14:03:11.250Z");
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
        let body = format!(
            r#"{{"patient_id":"5","device_id":"m","observed_at":"2026-11-28T14:00:0{s}Z","vitals":{{"heart_rate":95}}}}"#
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
    let second = replay();
    assert!(second.contains("alerts: 0 triggered"), "{second}");
    assert_eq!(
        std::fs::read_to_string(data.join("alerts.jsonl"))
            .unwrap()
            .lines()
            .count(),
        alerts_after_first,
        "a replay sends no second notification"
    );
    // The warehouse is queryable through the CLI.
    let o = vitalwatch(&[
        "query",
        "--format",
        "csv",
        "--data",
        &os(&data),
        "SELECT count(*) AS n FROM vitals",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "n\n240000\n",
        "each replay archives its readings"
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
    let o = vitalwatch(&["patients", "list", "--format", "csv", "--data", &os(&data)]);
    assert_eq!(
        String::from_utf8(o.stdout).unwrap().lines().count(),
        1,
        "header only: nothing half-imported"
    );
}
