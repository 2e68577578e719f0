//! The catalog in PostgreSQL, with the real server on 127.0.0.1:5432 (or
//! `VITALWATCH_POSTGRES`): a database of its own per test, dropped afterwards.
//!
//! What it shows: `run` with `catalog = "postgres://…"` records its alerts there, where
//! another vitalwatch (another data directory: another machine) reads them; a threshold
//! import by that other vitalwatch takes effect in the running one within seconds, without
//! a restart, and the alerts after it carry the new table version.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_port, http, os, spawn_run, vitalwatch, wait_for};
use vitalwatch_connectors::postgres::ScratchDatabase;

fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, text) = http(port, "GET", "/metrics", "");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
}

/// The open alerts the run on `port` reports, as JSON.
fn alerts(port: u16) -> Vec<serde_json::Value> {
    let (status, body) = http(port, "GET", "/v1/alerts", "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A heart rate of 130 for `patient`, observed now: "Higher Heart Rate than Normal" at
/// every age of the classic table.
fn reading(patient: u32) -> String {
    format!(
        r#"{{"patient_id": "{patient}", "observed_at": "{}", "vitals": {{"heart_rate": 130}}}}"#,
        chrono::Utc::now().to_rfc3339()
    )
}

#[test]
fn a_shared_postgres_catalog_carries_alerts_and_threshold_changes_between_instances() {
    let db = ScratchDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vw.toml");
    std::fs::write(
        &config,
        format!(
            "catalog = \"{}\"\n[rules]\nprofile = \"classic\"\n[alerts]\nconsole = false\n[[sources]]\ntype = \"http\"\n",
            db.url
        ),
    )
    .unwrap();
    let here = dir.path().join("here");
    let other = dir.path().join("other");
    let with = |data: &Path, args: &[&str]| {
        let mut a = args.to_vec();
        let (c, d) = (os(&config), os(data));
        a.extend(["--config", &c, "--data", &d]);
        let o = vitalwatch(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    with(
        &here,
        &["patients", "import", "../../data/patients_information.csv"],
    );

    let port = free_port();
    let mut run = spawn_run(&here, Some(&config), port);
    let (status, body) = http(port, "POST", "/v1/readings", &reading(1));
    assert_eq!(status, 202, "{body}");
    wait_for("the first alert", Duration::from_secs(10), || {
        !alerts(port).is_empty()
    });
    let first = alerts(port).remove(0);
    assert_eq!(first["ref_version"], 1, "{first}");
    assert_eq!(first["alert_message"], "Higher Heart Rate than Normal");

    // Another instance (its own data directory) sees the alert in the shared catalog...
    let listed = with(&other, &["alerts", "list", "--format", "csv"]);
    assert!(
        listed.contains(first["alert_id"].as_str().unwrap()),
        "{listed}"
    );
    // ...and imports a changed threshold table there.
    let table = std::fs::read_to_string("../../data/threshold_ref.csv")
        .unwrap()
        .replace("Higher Heart Rate than Normal", "Tachycardia (table v2)");
    let file = dir.path().join("v2.csv");
    std::fs::write(&file, table).unwrap();
    with(&other, &["thresholds", "import", &os(&file)]);

    // The running instance applies it within the refresh interval (2 s), no restart.
    wait_for("the new threshold version", Duration::from_secs(5), || {
        metric(port, "vitalwatch_threshold_version") == Some(2.0)
    });
    let (status, body) = http(port, "POST", "/v1/readings", &reading(2));
    assert_eq!(status, 202, "{body}");
    wait_for("the second alert", Duration::from_secs(10), || {
        alerts(port).len() == 2
    });
    let second = alerts(port)
        .into_iter()
        .find(|a| a["patient_id"] == "2")
        .unwrap();
    assert_eq!(second["ref_version"], 2, "{second}");
    assert_eq!(second["alert_message"], "Tachycardia (table v2)");
    assert_eq!(
        metric(port, "vitalwatch_reference_reloads_total"),
        Some(1.0)
    );
    run.kill().unwrap();
    run.wait().unwrap();
}
