//! Guarantees across crashes and failing dependencies, with real processes and files:
//! `kill -9` in the middle of a replay, and a warehouse that stops being writable while
//! `run` takes readings over HTTP.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{alert_log, os, outcome, request, sql, vitalwatch};
use vitalwatch_connectors::catalog::SqliteCatalog;
use vitalwatch_connectors::store::AlertStore;

/// Kill -9 in the middle of replaying a million readings, then the same command again:
/// every reading is in the warehouse once, every alert event once in the catalog, the
/// alert log and the warehouse — exactly what one clean replay leaves.
#[test]
fn replay_killed_mid_file_resumes_with_nothing_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sim.jsonl");
    // 200,000 observation sets of five vitals: a million readings. The classic profile
    // makes alerts a function of each reading alone, so the two runs must agree exactly.
    let o = vitalwatch(&[
        "simulate",
        "--patients",
        "50",
        "--rate",
        "100",
        "--duration",
        "2000s",
        "--seed",
        "11",
        "--output",
        &os(&file),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let size = std::fs::metadata(&file).unwrap().len();
    // A malformed line in the middle: a dead letter, once.
    let mut text = std::fs::read_to_string(&file).unwrap();
    let mid = text[..text.len() / 2].rfind('\n').unwrap() + 1;
    text.insert_str(mid, "{\"patient_id\":\"1\",\"vitals\":\"garbled\"}\n");
    std::fs::write(&file, &text).unwrap();
    let config = dir.path().join("vw.toml");
    std::fs::write(&config, "[pipeline]\ncheckpoint_interval = \"200ms\"\n").unwrap();
    let args = |data: &Path| -> Vec<String> {
        [
            "replay",
            "--profile",
            "classic",
            "--demo-patients",
            "50",
            "--config",
            &os(&config),
            "--data",
            &os(data),
            &os(&file),
        ]
        .map(str::to_owned)
        .to_vec()
    };

    let clean = dir.path().join("clean");
    let o = Command::new(env!("CARGO_BIN_EXE_vitalwatch"))
        .args(args(&clean))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = outcome(&clean);
    assert_eq!(want.vitals, want.distinct_vitals);
    assert!(want.vitals.parse::<u64>().unwrap() >= 990_000, "{want:?}");
    assert_eq!(want.dead_letters, "1");
    assert!(
        want.log.len() > 10_000,
        "alerts to lose: {}",
        want.log.len()
    );

    // The same replay, killed once a few checkpoints are committed and well before the end.
    let crashed = dir.path().join("crashed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitalwatch"))
        .args(args(&crashed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let catalog = crashed.join("catalog.sqlite");
    let source = format!("file:{}", file.canonicalize().unwrap().display());
    let deadline = Instant::now() + Duration::from_secs(300);
    let killed_at = loop {
        assert!(Instant::now() < deadline, "no checkpoint was committed");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay finished before it could be killed"
        );
        let at = catalog
            .exists()
            .then(|| SqliteCatalog::open(&catalog).ok())
            .flatten()
            .and_then(|c| c.source_position(&source).ok().flatten())
            .map_or(0, |p| p.offset);
        if at > size / 4 {
            break at;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(killed_at < size, "killed at byte {killed_at} of {size}");

    let o = Command::new(env!("CARGO_BIN_EXE_vitalwatch"))
        .args(args(&crashed))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("continuing from there"), "{stdout}");
    let got = outcome(&crashed);
    assert_eq!(got, want, "killed at byte {killed_at} of {size}");
}

/// The window the old pipeline lost notifications in: alert events committed to the store,
/// the process gone before the alert log had them all (one line torn half-way, the last
/// lines written but not yet recorded as delivered). The next start delivers the missing
/// events from the outbox, once each, and no event twice.
#[test]
fn a_crash_between_the_store_commit_and_the_alert_log_loses_no_notification() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sim.jsonl");
    let o = vitalwatch(&[
        "simulate",
        "--patients",
        "5",
        "--rate",
        "5",
        "--duration",
        "2m",
        "--format",
        "classic",
        "--output",
        &os(&file),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data = dir.path().join("data");
    let replay = || {
        let o = vitalwatch(&[
            "replay",
            "--profile",
            "classic",
            "--format",
            "classic",
            "--data",
            &os(&data),
            &os(&file),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    replay();
    let log_path = data.join("alerts.jsonl");
    let full = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    assert!(lines.len() > 100, "{}", lines.len());

    // The crash: 60 lines written, the 61st torn; the store says only 50 were delivered.
    let mut torn = lines[..60].join("\n");
    torn.push('\n');
    torn.push_str(&lines[60][..lines[60].len() / 2]);
    std::fs::write(&log_path, torn).unwrap();
    let seq_50 = SqliteCatalog::open(&data.join("catalog.sqlite"))
        .unwrap()
        .outbox_after(0, 50)
        .unwrap()[49]
        .seq as i64;
    let db = rusqlite::Connection::open(data.join("catalog.sqlite")).unwrap();
    db.execute(
        "UPDATE outbox_cursors SET seq = ?1 WHERE consumer = 'jsonl'",
        [seq_50],
    )
    .unwrap();
    drop(db);

    // Any start of the pipeline delivers the rest (here: the same replay, nothing new to read).
    replay();
    let after = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(after, full, "every event once, in order, none twice");
    assert_eq!(alert_log(&data).len(), lines.len());
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// The warehouse stops being writable mid-run: a durable write fails visibly (503, log,
/// metric) and the readings are kept; once it is writable again they are all archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_warehouse_fails_checkpoints_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = common::spawn_run(&data, None, port);
    let batch = |patient: u32, n: i64| {
        let now = chrono::Utc::now();
        (0..n)
            .map(|i| {
                let t = now - chrono::Duration::seconds(n - i);
                format!(
                    r#"{{"patient_id":"{patient}","device_id":"m{patient}","observed_at":"{}","vitals":{{"heart_rate":{}}}}}"#,
                    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    60 + i % 20
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let durable = "/v1/readings?wait=durable";
    let (status, body) = request(addr, "POST", durable, &batch(1, 10)).await;
    assert_eq!(status, 202, "{body}");

    // The warehouse directory is replaced by a file: nothing under it can be created
    // (chmod would not stop root).
    let warehouse = data.join("warehouse");
    let away = data.join("warehouse.away");
    std::fs::rename(&warehouse, &away).unwrap();
    std::fs::write(&warehouse, b"not a directory").unwrap();
    let (status, body) = request(addr, "POST", durable, &batch(2, 20)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not_durable"), "{body}");
    let (_, m) = request(addr, "GET", "/metrics", "").await;
    assert!(
        metric(&m, "vitalwatch_checkpoints_failed_total") >= 1,
        "{m}"
    );
    assert!(metric(&m, "vitalwatch_archive_errors_total") >= 1, "{m}");

    // Writable again: the next checkpoint archives the kept readings with the new ones.
    std::fs::remove_file(&warehouse).unwrap();
    std::fs::rename(&away, &warehouse).unwrap();
    let (status, body) = request(addr, "POST", durable, &batch(3, 5)).await;
    assert_eq!(status, 202, "{body}");
    let (_, m) = request(addr, "GET", "/metrics", "").await;
    assert!(
        metric(&m, "vitalwatch_checkpoints_committed_total") >= 2,
        "{m}"
    );
    assert_eq!(
        sql(
            &data,
            "SELECT patient_id, count(*) FROM vitals GROUP BY patient_id ORDER BY patient_id"
        ),
        "1,10\n2,20\n3,5",
        "every reading archived once"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
